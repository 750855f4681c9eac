//! Benchmark inputs shared by the criterion benches in `benches/`: a typical REGISTER
//! with Authorization and a 1 KB INVITE with SDP, as phones send them.

/// A REGISTER refresh with digest credentials (what an edge sees most).
pub const REGISTER: &str = "REGISTER sip:acme.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK1a2b3c4d5e6f;rport\r\n\
Max-Forwards: 70\r\n\
From: \"Alice\" <sip:1001@acme.example.com>;tag=8d3f2a7b\r\n\
To: \"Alice\" <sip:1001@acme.example.com>\r\n\
Call-ID: 5c1e8a3f9b2d4e6f@192.0.2.10\r\n\
CSeq: 4712 REGISTER\r\n\
Contact: <sip:1001@192.0.2.10:5060;transport=udp>;expires=3600\r\n\
Authorization: Digest username=\"1001\", realm=\"acme.example.com\", nonce=\"65a1b2c3.4f5e6d7c8b9a0f1e2d3c4b5a69788796\", uri=\"sip:acme.example.com\", response=\"0a4f113b7c2d9e8f6a5b4c3d2e1f0a9b\", algorithm=MD5, cnonce=\"0a4f113b\", qop=auth, nc=00000002\r\n\
User-Agent: Yealink SIP-T46S 66.86.0.15\r\n\
Expires: 3600\r\n\
Content-Length: 0\r\n\r\n";

/// An initial INVITE of about 1 KB with an SDP offer.
pub const INVITE: &str = "INVITE sip:1002@acme.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK74bf9a8c2e1d;rport\r\n\
Max-Forwards: 70\r\n\
From: \"Alice\" <sip:1001@acme.example.com>;tag=9fxced76sl\r\n\
To: <sip:1002@acme.example.com>\r\n\
Call-ID: 3848276298220188511@192.0.2.10\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:1001@192.0.2.10:5060;transport=udp>\r\n\
Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, REFER, NOTIFY\r\n\
Supported: replaces, timer, 100rel\r\n\
Session-Expires: 1800\r\n\
User-Agent: Yealink SIP-T46S 66.86.0.15\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 379\r\n\r\n\
v=0\r\n\
o=1001 20518 20518 IN IP4 192.0.2.10\r\n\
s=SIP Call\r\n\
c=IN IP4 192.0.2.10\r\n\
t=0 0\r\n\
m=audio 11796 RTP/AVP 0 8 9 18 101\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:9 G722/8000\r\n\
a=rtpmap:18 G729/8000\r\n\
a=fmtp:18 annexb=no\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-15\r\n\
a=ptime:20\r\n\
a=sendrecv\r\n\
a=rtcp:11797 IN IP4 192.0.2.10\r\n\
a=ssrc:1819224337 cname:1001@acme\r\n\
a=label:0\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_are_valid_and_the_invite_is_about_1_kb() {
        for text in [REGISTER, INVITE] {
            let m =
                switchyard_sip::Message::parse_datagram(bytes::Bytes::from_static(text.as_bytes()))
                    .unwrap();
            assert_eq!(m.content_length(), Some(m.body().len()));
            assert!(
                switchyard_sip::inspect::check_request(
                    &m,
                    &switchyard_sip::inspect::Capabilities::SWITCHYARD
                )
                .is_ok()
            );
        }
        assert!((900..1150).contains(&INVITE.len()), "{}", INVITE.len());
    }
}
