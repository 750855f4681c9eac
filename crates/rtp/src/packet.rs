//! Just enough of an RTP header (RFC 3550 §5.1) for a relay: read the payload type,
//! sequence number and timestamp, find the payload, rewrite the payload type in place.

/// A view of a received RTP packet; no copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpHeader {
    pub payload_type: u8,
    pub marker: bool,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    /// Where the payload starts (after CSRCs and the header extension).
    pub payload_offset: usize,
    /// Where the payload ends (before padding).
    pub payload_end: usize,
}

impl RtpHeader {
    /// Parses the header; `None` for anything that is not RTP version 2 or is truncated.
    pub fn parse(p: &[u8]) -> Option<RtpHeader> {
        if p.len() < 12 || p[0] >> 6 != 2 {
            return None;
        }
        let cc = usize::from(p[0] & 0x0f);
        let mut offset = 12 + 4 * cc;
        if p[0] & 0x10 != 0 {
            let ext = p.get(offset + 2..offset + 4)?;
            offset += 4 + 4 * usize::from(u16::from_be_bytes([ext[0], ext[1]]));
        }
        let mut end = p.len();
        if p[0] & 0x20 != 0 {
            let pad = usize::from(*p.last()?);
            end = end.checked_sub(pad)?;
        }
        if offset > end {
            return None;
        }
        Some(RtpHeader {
            payload_type: p[1] & 0x7f,
            marker: p[1] & 0x80 != 0,
            sequence: u16::from_be_bytes([p[2], p[3]]),
            timestamp: u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
            ssrc: u32::from_be_bytes([p[8], p[9], p[10], p[11]]),
            payload_offset: offset,
            payload_end: end,
        })
    }
}

/// Rewrites the payload type of a packet, keeping the marker bit.
pub fn set_payload_type(p: &mut [u8], pt: u8) {
    if p.len() > 1 {
        p[1] = (p[1] & 0x80) | (pt & 0x7f);
    }
}

/// RTCP packet types are 200-204 in the second octet; RTP payload types there are < 128
/// (with the marker, 72-76 would collide, which RFC 5761 §4 rules out for muxing).
pub fn looks_like_rtcp(p: &[u8]) -> bool {
    p.len() >= 8 && p[0] >> 6 == 2 && (200..=204).contains(&p[1])
}

/// The sender SSRC of a compound RTCP packet (RFC 3550 §6.1), or `None` when it is not
/// one: every packet in it version 2, of an RTCP type (SR, RR, SDES, BYE, APP, and the
/// RFC 4585 feedback types), its length field (32-bit words minus one) ending exactly at
/// the next packet or at the datagram's end.
pub fn rtcp_sender_ssrc(p: &[u8]) -> Option<u32> {
    let mut at = 0;
    while at < p.len() {
        let head = p.get(at..at + 4)?;
        if head[0] >> 6 != 2 || !(200..=206).contains(&head[1]) {
            return None;
        }
        let words = usize::from(u16::from_be_bytes([head[2], head[3]])) + 1;
        at = at.checked_add(words * 4)?;
        if at > p.len() {
            return None;
        }
    }
    let ssrc = p.get(4..8)?;
    Some(u32::from_be_bytes([ssrc[0], ssrc[1], ssrc[2], ssrc[3]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An RR with no report block from `ssrc`, then an SDES chunk header of 2 words.
    fn compound(ssrc: u32) -> Vec<u8> {
        let mut p = vec![0x80, 201, 0, 1];
        p.extend(ssrc.to_be_bytes());
        p.extend([0x81, 202, 0, 2]);
        p.extend(ssrc.to_be_bytes());
        p.extend([1, 2, b'a', 0]);
        p
    }

    #[test]
    fn rtcp_is_accepted_only_when_every_packet_of_it_is_well_formed() {
        assert_eq!(rtcp_sender_ssrc(&compound(0x1234_5678)), Some(0x1234_5678));
        let mut truncated = compound(7);
        truncated.pop();
        assert_eq!(rtcp_sender_ssrc(&truncated), None, "a length past the end");
        let mut trailing = compound(7);
        trailing.extend([0, 0]);
        assert_eq!(
            rtcp_sender_ssrc(&trailing),
            None,
            "bytes after the last packet"
        );
        let mut version = compound(7);
        version[8] = 0x41;
        assert_eq!(
            rtcp_sender_ssrc(&version),
            None,
            "a second packet not version 2"
        );
        let mut kind = compound(7);
        kind[1] = 96;
        assert_eq!(
            rtcp_sender_ssrc(&kind),
            None,
            "an RTP payload type, not RTCP"
        );
        assert_eq!(rtcp_sender_ssrc(&[]), None);
        assert_eq!(rtcp_sender_ssrc(&[0x80, 201, 0, 0]), None, "no SSRC");
    }

    fn packet(pt: u8, seq: u16, extra_first: u8) -> Vec<u8> {
        let mut p = vec![0x80 | extra_first, 0x80 | pt];
        p.extend(seq.to_be_bytes());
        p.extend(160u32.to_be_bytes());
        p.extend(0xdead_beefu32.to_be_bytes());
        p
    }

    #[test]
    fn header_fields_and_payload_bounds() {
        let mut p = packet(0, 7, 0);
        p.extend([1, 2, 3]);
        let h = RtpHeader::parse(&p).unwrap();
        assert_eq!((h.payload_type, h.sequence, h.timestamp), (0, 7, 160));
        assert!(h.marker);
        assert_eq!(&p[h.payload_offset..h.payload_end], &[1, 2, 3]);
        set_payload_type(&mut p, 8);
        assert_eq!(RtpHeader::parse(&p).unwrap().payload_type, 8);
        assert!(RtpHeader::parse(&p).unwrap().marker);
    }

    #[test]
    fn csrcs_extension_and_padding_are_skipped() {
        // One CSRC, a one-word extension, 2 octets of padding.
        let mut p = packet(0, 1, 0x01 | 0x10 | 0x20);
        p.extend([0, 0, 0, 9]); // CSRC
        p.extend([0xbe, 0xde, 0, 1, 0xaa, 0xbb, 0xcc, 0xdd]); // extension header + 1 word
        p.extend([5, 6, 7, 0, 2]);
        let h = RtpHeader::parse(&p).unwrap();
        assert_eq!(&p[h.payload_offset..h.payload_end], &[5, 6, 7]);
    }

    #[test]
    fn truncated_or_foreign_packets_are_refused() {
        assert_eq!(RtpHeader::parse(&[0x80, 0, 0]), None);
        assert_eq!(RtpHeader::parse(&[0u8; 20]), None, "version 0");
        let mut p = packet(0, 1, 0x0f); // 15 CSRCs announced, none present
        p.extend([0; 4]);
        assert_eq!(RtpHeader::parse(&p), None);
        let mut pad = packet(0, 1, 0x20);
        pad.push(200);
        assert_eq!(
            RtpHeader::parse(&pad),
            None,
            "padding longer than the packet"
        );
        assert!(looks_like_rtcp(&[0x80, 200, 0, 6, 0, 0, 0, 1]));
        assert!(!looks_like_rtcp(&packet(0, 1, 0)));
    }
}
