// SPDX-License-Identifier: GPL-2.0
// Switchyard's kernel fast path for latched RTP streams (see crates/media/src/kernel.rs).
//
// At tc ingress of the media node's interface, each IPv4 UDP packet is looked up by
// (destination = a relay socket, source = the address that socket's leg latched to).
// A hit that looks like the stream's own RTP (version 2, the latched SSRC, an expected
// payload type) is rewritten to leave from the other leg's relay socket towards the
// other leg's latched address, counted, and redirected; anything else goes up to the
// socket unchanged, where the userspace relay decides it as before. What userspace would
// drop without counting (RTCP on the RTP port, not version 2) is dropped here.
//
// A miss returns TC_ACT_UNSPEC (TCX_NEXT): another media node's program on the same
// interface still sees the packet.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define LOOPBACK_IFINDEX 1
#define NO_PAYLOAD_TYPE 0xff
#define FORWARDED_TTL 64
#define PASS TC_ACT_UNSPEC

// Must match `ForwardKey` in kernel.rs. Addresses and ports in network order.
struct forward_key {
	__u32 local_ip;
	__u32 peer_ip;
	__u16 local_port;
	__u16 peer_port;
};

// Must match `ForwardEntry` in kernel.rs. Userspace writes the first part and the
// sequence state it had counted; the program updates the counters.
struct forward_entry {
	__u32 out_local_ip;
	__u32 out_peer_ip;
	__u16 out_local_port;
	__u16 out_peer_port;
	__u8 audio_in;
	__u8 audio_out;
	__u8 event_in;
	__u8 event_out;
	__u32 ssrc;
	// RFC 3550 A.1 sequence state, continued from userspace's.
	__u32 cycles;
	__u16 max_seq;
	__u16 transit_valid;
	__s32 transit;
	__s64 jitter16;
	// Since the entry was written.
	__u64 packets;
	__u64 bytes;
	__u64 events;
	__u64 last_ns;
	// Where it leaves: loopback (a local address) or the interface towards the peer,
	// whose route and neighbour the kernel resolves (bpf_redirect_neigh; bpf_fib_lookup
	// would need IP forwarding on, which a media host need not have).
	__u32 out_ifindex;
	__u32 reserved;
};

// The node's RTP port range (first, last), written once at attach: packets to other
// ports (SIP, anything else on the interface) leave after one comparison, without a
// hash lookup.
struct port_range {
	__u16 first;
	__u16 last;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct port_range);
} PORTS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct forward_key);
	__type(value, struct forward_entry);
} FORWARDS SEC(".maps");

static __always_inline int replace_u32(struct __sk_buff *skb, __u32 csum_off, __u32 off,
				       __u32 old, __u32 new, int pseudo)
{
	if (old == new)
		return 0;
	if (bpf_l4_csum_replace(skb, csum_off, old, new,
				sizeof(new) | BPF_F_MARK_MANGLED_0 | (pseudo ? BPF_F_PSEUDO_HDR : 0)))
		return -1;
	return bpf_skb_store_bytes(skb, off, &new, sizeof(new), 0);
}

static __always_inline int replace_u16(struct __sk_buff *skb, __u32 csum_off, __u32 off,
				       __u16 old, __u16 new)
{
	if (old == new)
		return 0;
	if (bpf_l4_csum_replace(skb, csum_off, old, new, sizeof(new) | BPF_F_MARK_MANGLED_0))
		return -1;
	return bpf_skb_store_bytes(skb, off, &new, sizeof(new), 0);
}

SEC("classifier")
int switchyard_forward(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	const __u32 ip_off = sizeof(struct ethhdr);
	const __u32 udp_off = ip_off + sizeof(struct iphdr);
	const __u32 rtp_off = udp_off + sizeof(struct udphdr);

	// Ethernet, IPv4 without options, UDP, and the 12 bytes of an RTP header.
	if (data + rtp_off + 12 > data_end)
		return PASS;
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return PASS;
	struct iphdr *ip = data + ip_off;
	if (ip->ihl != 5 || ip->protocol != IPPROTO_UDP)
		return PASS;
	// Fragments go up: only a whole datagram can be rewritten here.
	if (ip->frag_off & bpf_htons(0x3fff))
		return PASS;
	struct udphdr *udp = data + udp_off;
	__u32 zero = 0;
	struct port_range *ports = bpf_map_lookup_elem(&PORTS, &zero);
	__u16 dest_port = bpf_ntohs(udp->dest);
	if (!ports || dest_port < ports->first || dest_port > ports->last)
		return PASS;
	struct forward_key key = {
		.local_ip = ip->daddr,
		.peer_ip = ip->saddr,
		.local_port = udp->dest,
		.peer_port = udp->source,
	};
	struct forward_entry *entry = bpf_map_lookup_elem(&FORWARDS, &key);
	if (!entry)
		return PASS;

	__u8 *rtp = data + rtp_off;
	if ((rtp[0] & 0xc0) != 0x80 || (rtp[1] >= 200 && rtp[1] <= 204))
		return TC_ACT_SHOT; // not RTP, or RTCP without rtcp-mux: userspace drops it too
	// Padding, an extension or CSRCs: userspace parses those.
	if (rtp[0] & 0x3f)
		return PASS;
	__u8 payload_type = rtp[1] & 0x7f;
	__u8 out_type = payload_type; // another payload passes unchanged, as in userspace
	int is_event = 0;
	if (payload_type == entry->audio_in && entry->audio_in != NO_PAYLOAD_TYPE) {
		out_type = entry->audio_out;
	} else if (payload_type == entry->event_in && entry->event_in != NO_PAYLOAD_TYPE) {
		out_type = entry->event_out;
		is_event = 1;
	}
	__u32 ssrc = ((__u32)rtp[8] << 24) | ((__u32)rtp[9] << 16) | ((__u32)rtp[10] << 8) | rtp[11];
	if (ssrc != entry->ssrc)
		return PASS; // a new source: userspace starts its counts afresh
	__u16 seq = ((__u16)rtp[2] << 8) | rtp[3];
	__u32 timestamp = ((__u32)rtp[4] << 24) | ((__u32)rtp[5] << 16) | ((__u32)rtp[6] << 8) | rtp[7];
	__u16 ip_len = bpf_ntohs(ip->tot_len);

	// Counted as userspace's ReceiverStats::record counts (RFC 3550 A.1 and A.8).
	__u64 now = bpf_ktime_get_ns();
	__u16 delta = seq - entry->max_seq;
	if (delta != 0 && delta < 0x8000) {
		if (seq < entry->max_seq)
			entry->cycles += 1 << 16;
		entry->max_seq = seq;
	}
	__s32 arrival = (__s32)(now / 125000); // 8 kHz units
	__s32 transit = arrival - (__s32)timestamp;
	if (entry->transit_valid) {
		__s64 d = (__s64)transit - (__s64)entry->transit;
		if (d < 0)
			d = -d;
		entry->jitter16 += d - ((entry->jitter16 + 8) >> 4);
	}
	entry->transit = transit;
	entry->transit_valid = 1;
	__sync_fetch_and_add(&entry->packets, 1);
	__sync_fetch_and_add(&entry->bytes, ip_len - sizeof(struct iphdr) - sizeof(struct udphdr));
	entry->last_ns = now;
	// Events for a leg that agreed none: counted as received, not relayed.
	if (out_type == NO_PAYLOAD_TYPE)
		return TC_ACT_SHOT;
	if (is_event)
		__sync_fetch_and_add(&entry->events, 1);

	__u32 old_saddr = ip->saddr, old_daddr = ip->daddr;
	__u16 old_sport = udp->source, old_dport = udp->dest;
	__u16 old_word = ((__u16)rtp[0] << 8) | rtp[1];
	__u16 new_word = (old_word & 0xff80) | out_type;
	__u8 old_ttl = ip->ttl;
	__u32 new_saddr = entry->out_local_ip, new_daddr = entry->out_peer_ip;
	__u16 new_sport = entry->out_local_port, new_dport = entry->out_peer_port;
	const __u32 csum_off = udp_off + offsetof(struct udphdr, check);
	const __u32 ip_csum_off = ip_off + offsetof(struct iphdr, check);

	// The UDP checksum covers the addresses (pseudo-header), the ports and the payload.
	if (replace_u32(skb, csum_off, ip_off + offsetof(struct iphdr, saddr), old_saddr, new_saddr, 1) ||
	    replace_u32(skb, csum_off, ip_off + offsetof(struct iphdr, daddr), old_daddr, new_daddr, 1) ||
	    replace_u16(skb, csum_off, udp_off + offsetof(struct udphdr, source), old_sport, new_sport) ||
	    replace_u16(skb, csum_off, udp_off + offsetof(struct udphdr, dest), old_dport, new_dport) ||
	    replace_u16(skb, csum_off, rtp_off, bpf_htons(old_word), bpf_htons(new_word)))
		return TC_ACT_SHOT;
	// The IP header checksum covers the addresses and the TTL.
	if (bpf_l3_csum_replace(skb, ip_csum_off, old_saddr, new_saddr, 4) ||
	    bpf_l3_csum_replace(skb, ip_csum_off, old_daddr, new_daddr, 4))
		return TC_ACT_SHOT;
	if (old_ttl != FORWARDED_TTL) {
		// TTL shares a 16-bit word with the protocol.
		__u16 old_ttl_word = bpf_htons(((__u16)old_ttl << 8) | IPPROTO_UDP);
		__u16 new_ttl_word = bpf_htons(((__u16)FORWARDED_TTL << 8) | IPPROTO_UDP);
		__u8 ttl = FORWARDED_TTL;
		if (bpf_l3_csum_replace(skb, ip_csum_off, old_ttl_word, new_ttl_word, 2) ||
		    bpf_skb_store_bytes(skb, ip_off + offsetof(struct iphdr, ttl), &ttl, 1, 0))
			return TC_ACT_SHOT;
	}

	// To a local address through loopback, whose Ethernet addresses are all zero;
	// otherwise out of the interface towards the peer, its neighbour's address filled in.
	__u32 out_ifindex = entry->out_ifindex;
	if (out_ifindex == LOOPBACK_IFINDEX) {
		__u8 zero_macs[12] = {0};
		if (bpf_skb_store_bytes(skb, 0, zero_macs, sizeof(zero_macs), 0))
			return TC_ACT_SHOT;
		return bpf_redirect(LOOPBACK_IFINDEX, 0);
	}
	return bpf_redirect_neigh(out_ifindex, 0, 0, 0);
}

char LICENSE[] SEC("license") = "GPL";
