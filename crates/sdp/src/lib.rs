//! SDP offer/answer as a media relay needs it.
//!
//! rtc-sdp parses and prints (it keeps unknown attributes, which a B2BUA must pass on);
//! the rules are ours:
//!
//! - Anchoring: every `c=` (session and media level), the audio `m=` port and `a=rtcp`
//!   are rewritten to the relay's address and ports; the `o=` address too.
//! - Transcoding: when an offer carries PCMU but not PCMA (or the reverse), the relayed
//!   offer adds the other one after the offered codecs, so a PCMA-only phone can answer
//!   a PCMU-only caller and the relay converts between them.
//! - Answering: the answer sent back to the offerer uses the offerer's payload numbers
//!   and the codec the answerer chose when the offerer had it, else the offerer's G.711
//!   (the relay transcodes). Telephone-events (RFC 4733) stay when both sides have them.
//! - Direction attributes (`sendonly` for hold, ...) pass through untouched.

#![forbid(unsafe_code)]

use std::io::Cursor;
use std::net::IpAddr;

use rtc_sdp::description::common::{Address, Attribute, ConnectionInformation};
use rtc_sdp::description::session::SessionDescription;

/// Static payload types of G.711.
pub const PCMU: u8 = 0;
pub const PCMA: u8 = 8;

/// Why SDP was refused (the SIP answer is `488`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SdpError {
    #[error("unparsable SDP: {0}")]
    Syntax(String),
    #[error("no audio stream in the SDP")]
    NoAudio,
    #[error("bad audio stream: {0}")]
    BadAudio(String),
    #[error("no codec in common and none that can be transcoded")]
    NoCommonCodec,
}

/// A codec of an audio stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Format {
    pub payload_type: u8,
    /// Upper-case encoding name (`PCMU`, `PCMA`, `TELEPHONE-EVENT`, `OPUS`...).
    pub name: String,
    pub clock_rate: u32,
}

/// The media direction of a stream (RFC 3264 §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

/// What the relay needs to know about the first audio stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audio {
    /// Where the endpoint receives RTP (None for `0.0.0.0` or a missing `c=`: on hold
    /// the RFC 2543 way, or not yet known).
    pub addr: Option<IpAddr>,
    pub port: u16,
    /// Explicit RTCP port from `a=rtcp`, else RTP port + 1.
    pub rtcp_port: u16,
    /// In `m=` order (the first is the preferred one).
    pub formats: Vec<Format>,
    pub direction: Direction,
}

impl Audio {
    /// The first format that is not telephone-event or comfort noise.
    pub fn main_codec(&self) -> Option<&Format> {
        self.formats.iter().find(|f| !is_auxiliary(&f.name))
    }

    /// The telephone-event payload type, if offered.
    pub fn telephone_event(&self) -> Option<u8> {
        self.formats
            .iter()
            .find(|f| f.name == "TELEPHONE-EVENT")
            .map(|f| f.payload_type)
    }
}

fn is_auxiliary(name: &str) -> bool {
    matches!(name, "TELEPHONE-EVENT" | "CN")
}

/// A parsed session description.
#[derive(Debug, Clone)]
pub struct Sdp {
    inner: SessionDescription,
    audio_index: usize,
}

impl Sdp {
    pub fn parse(bytes: &[u8]) -> Result<Sdp, SdpError> {
        let text = std::str::from_utf8(bytes).map_err(|_| SdpError::Syntax("not UTF-8".into()))?;
        // rtc-sdp wants CRLF or LF lines; a trailing garbage line is an error, as it should be.
        let inner = SessionDescription::unmarshal(&mut Cursor::new(text.as_bytes()))
            .map_err(|e| SdpError::Syntax(e.to_string()))?;
        let audio_index = inner
            .media_descriptions
            .iter()
            .position(|m| m.media_name.media == "audio")
            .ok_or(SdpError::NoAudio)?;
        let sdp = Sdp { inner, audio_index };
        sdp.audio()?;
        Ok(sdp)
    }

    /// The first audio stream.
    pub fn audio(&self) -> Result<Audio, SdpError> {
        let m = &self.inner.media_descriptions[self.audio_index];
        let port = u16::try_from(m.media_name.port.value)
            .map_err(|_| SdpError::BadAudio(format!("port {}", m.media_name.port.value)))?;
        let conn = m
            .connection_information
            .as_ref()
            .or(self.inner.connection_information.as_ref());
        let addr = conn
            .and_then(|c| c.address.as_ref())
            .and_then(|a| a.address.parse::<IpAddr>().ok())
            .filter(|ip| !ip.is_unspecified());
        let codecs = m.codecs();
        let mut formats = Vec::new();
        for f in &m.media_name.formats {
            let pt: u8 = f
                .parse()
                .ok()
                .filter(|pt| *pt < 128)
                .ok_or_else(|| SdpError::BadAudio(format!("payload type {f:?}")))?;
            let (name, clock_rate) = match codecs.get(&pt) {
                Some(c) => (c.name.to_ascii_uppercase(), c.clock_rate),
                None => match pt {
                    PCMU => ("PCMU".to_owned(), 8000),
                    PCMA => ("PCMA".to_owned(), 8000),
                    3 => ("GSM".to_owned(), 8000),
                    9 => ("G722".to_owned(), 8000),
                    13 => ("CN".to_owned(), 8000),
                    18 => ("G729".to_owned(), 8000),
                    _ => (format!("PT{pt}"), 8000),
                },
            };
            formats.push(Format {
                payload_type: pt,
                name,
                clock_rate,
            });
        }
        if port != 0 && formats.is_empty() {
            return Err(SdpError::BadAudio("no formats".into()));
        }
        let rtcp_port = m
            .attribute("rtcp")
            .flatten()
            .and_then(|v| v.split_whitespace().next())
            .and_then(|p| p.parse().ok())
            .unwrap_or(port.wrapping_add(1));
        let direction = [
            ("sendonly", Direction::SendOnly),
            ("recvonly", Direction::RecvOnly),
            ("inactive", Direction::Inactive),
            ("sendrecv", Direction::SendRecv),
        ]
        .into_iter()
        .find(|(k, _)| m.has_attribute(k) || self.inner.has_attribute(k))
        .map_or(Direction::SendRecv, |(_, d)| d);
        Ok(Audio {
            addr,
            port,
            rtcp_port,
            formats,
            direction,
        })
    }

    /// Points every address and the audio ports at the relay.
    pub fn anchor(&mut self, addr: IpAddr, rtp_port: u16) {
        let addr_type = if addr.is_ipv4() { "IP4" } else { "IP6" };
        let conn = || ConnectionInformation {
            network_type: "IN".into(),
            address_type: addr_type.into(),
            address: Some(Address {
                address: addr.to_string(),
                ttl: None,
                range: None,
            }),
        };
        let on_hold_old_style = self.audio().is_ok_and(|a| a.addr.is_none());
        let held =
            |c: &ConnectionInformation| c.address.as_ref().is_some_and(|a| a.address == "0.0.0.0");
        self.inner.origin.unicast_address = addr.to_string();
        self.inner.origin.address_type = addr_type.into();
        if let Some(c) = &mut self.inner.connection_information
            && !held(c)
        {
            *c = conn();
        }
        for m in &mut self.inner.media_descriptions {
            if let Some(c) = &mut m.connection_information
                && !held(c)
            {
                *c = conn();
            }
        }
        if self.inner.connection_information.is_none()
            && self.inner.media_descriptions[self.audio_index]
                .connection_information
                .is_none()
            && !on_hold_old_style
        {
            self.inner.connection_information = Some(conn());
        }
        let m = &mut self.inner.media_descriptions[self.audio_index];
        if m.media_name.port.value != 0 {
            m.media_name.port.value = rtp_port as isize;
        }
        for a in &mut m.attributes {
            if a.key == "rtcp" {
                a.value = Some(format!(
                    "{} IN {addr_type} {addr}",
                    rtp_port.wrapping_add(1)
                ));
            }
        }
        // Other streams (video...) are not relayed yet: refuse them with port 0.
        for (i, m) in self.inner.media_descriptions.iter_mut().enumerate() {
            if i != self.audio_index {
                m.media_name.port.value = 0;
            }
        }
    }

    /// Keeps only these payload types in the audio stream (and their rtpmap/fmtp lines).
    fn restrict(&mut self, keep: &[u8]) {
        let m = &mut self.inner.media_descriptions[self.audio_index];
        m.media_name
            .formats
            .retain(|f| f.parse::<u8>().is_ok_and(|pt| keep.contains(&pt)));
        m.attributes.retain(|a| match a.key.as_str() {
            "rtpmap" | "fmtp" => a
                .value
                .as_deref()
                .and_then(|v| v.split_whitespace().next())
                .and_then(|pt| pt.parse::<u8>().ok())
                .is_none_or(|pt| keep.contains(&pt)),
            _ => true,
        });
    }

    fn add_g711(&mut self, pt: u8) {
        let name = if pt == PCMU { "PCMU" } else { "PCMA" };
        let m = &mut self.inner.media_descriptions[self.audio_index];
        // After the last real codec, before telephone-event/CN, so it is a fallback.
        m.media_name.formats.push(pt.to_string());
        m.attributes.push(Attribute::new(
            "rtpmap".into(),
            Some(format!("{pt} {name}/8000")),
        ));
    }

    pub fn to_text(&self) -> String {
        self.inner.marshal()
    }
}

/// The offer to relay to the other side: anchored, with the G.711 the offerer lacks added
/// so the relay can transcode.
pub fn relay_offer(offer: &Sdp, addr: IpAddr, rtp_port: u16) -> Result<Sdp, SdpError> {
    let audio = offer.audio()?;
    let mut out = offer.clone();
    let has = |pt| audio.formats.iter().any(|f| f.payload_type == pt);
    if audio.port != 0 {
        if has(PCMU) && !has(PCMA) {
            out.add_g711(PCMA);
        } else if has(PCMA) && !has(PCMU) {
            out.add_g711(PCMU);
        }
    }
    out.anchor(addr, rtp_port);
    Ok(out)
}

/// How the relay must treat the two sides once the answer is known.
#[derive(Debug, Clone)]
pub struct Negotiated {
    /// The answer to send to the offerer.
    pub answer: Sdp,
    /// The codec the offerer sends and receives (its payload number).
    pub offerer_codec: Format,
    /// The codec the answerer sends and receives.
    pub answerer_codec: Format,
    pub offerer_telephone_event: Option<u8>,
    pub answerer_telephone_event: Option<u8>,
}

/// From the original `offer` and the other side's `answer` (to our relayed offer), the
/// answer for the offerer, anchored at the relay.
pub fn relay_answer(
    offer: &Sdp,
    answer: &Sdp,
    addr: IpAddr,
    rtp_port: u16,
) -> Result<Negotiated, SdpError> {
    let offered = offer.audio()?;
    let answered = answer.audio()?;
    let answerer_codec = answered
        .main_codec()
        .cloned()
        .ok_or(SdpError::NoCommonCodec)?;
    let same =
        |f: &Format| f.name == answerer_codec.name && f.clock_rate == answerer_codec.clock_rate;
    let offerer_codec = match offered.formats.iter().find(|f| same(f)) {
        Some(f) => f.clone(),
        None if is_g711(&answerer_codec) => offered
            .formats
            .iter()
            .find(|f| is_g711(f))
            .cloned()
            .ok_or(SdpError::NoCommonCodec)?,
        None => return Err(SdpError::NoCommonCodec),
    };
    let te = offered
        .telephone_event()
        .filter(|_| answered.telephone_event().is_some());
    let mut keep = vec![offerer_codec.payload_type];
    keep.extend(te);
    let mut out = offer.clone();
    out.restrict(&keep);
    // Direction: the answer's attribute replaces the offer's.
    {
        let dir = match answered.direction {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        };
        out.inner.attributes.retain(|a| !is_direction(&a.key));
        let m = &mut out.inner.media_descriptions[out.audio_index];
        m.attributes.retain(|a| !is_direction(&a.key));
        m.attributes.push(Attribute::new(dir.into(), None));
        if answered.port == 0 {
            m.media_name.port.value = 0;
        }
    }
    out.anchor(addr, rtp_port);
    Ok(Negotiated {
        answer: out,
        offerer_codec,
        answerer_codec,
        offerer_telephone_event: te,
        answerer_telephone_event: answered.telephone_event().filter(|_| te.is_some()),
    })
}

fn is_direction(key: &str) -> bool {
    matches!(key, "sendrecv" | "sendonly" | "recvonly" | "inactive")
}

pub fn is_g711(f: &Format) -> bool {
    f.name == "PCMU" || f.name == "PCMA"
}

#[cfg(test)]
mod tests {
    use super::*;

    const BARESIP_OFFER: &str = "v=0\r\no=- 1508707342 3290893446 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 10462 RTP/AVP 0 101\r\nb=AS:96\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=x-unknown:kept\r\na=sendrecv\r\na=ptime:20\r\n";
    const PCMA_ANSWER: &str = "v=0\r\no=- 7 7 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\nm=audio 20000 RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n";
    const RELAY: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));

    #[test]
    fn audio_of_a_real_offer() {
        let sdp = Sdp::parse(BARESIP_OFFER.as_bytes()).unwrap();
        let a = sdp.audio().unwrap();
        assert_eq!(a.port, 10462);
        assert_eq!(a.rtcp_port, 10463);
        assert_eq!(a.addr, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(a.main_codec().unwrap().name, "PCMU");
        assert_eq!(a.telephone_event(), Some(101));
        assert_eq!(a.direction, Direction::SendRecv);
    }

    #[test]
    fn relayed_offer_is_anchored_keeps_unknown_attributes_and_adds_pcma() {
        let sdp = Sdp::parse(BARESIP_OFFER.as_bytes()).unwrap();
        let out = relay_offer(&sdp, "127.0.0.9".parse().unwrap(), 30000).unwrap();
        let text = out.to_text();
        assert!(text.contains("c=IN IP4 127.0.0.9\r\n"), "{text}");
        assert!(text.contains("m=audio 30000 RTP/AVP 0 101 8\r\n"), "{text}");
        assert!(text.contains("a=rtpmap:8 PCMA/8000"), "{text}");
        assert!(text.contains("a=x-unknown:kept"), "{text}");
        assert!(
            text.contains("o=- 1508707342 3290893446 IN IP4 127.0.0.9"),
            "{text}"
        );
        assert!(!text.contains("10462"));
    }

    #[test]
    fn answer_keeps_the_offerers_codec_when_the_answerer_picked_another_g711() {
        let offer = Sdp::parse(BARESIP_OFFER.as_bytes()).unwrap();
        let answer = Sdp::parse(PCMA_ANSWER.as_bytes()).unwrap();
        let n = relay_answer(&offer, &answer, RELAY, 31000).unwrap();
        assert_eq!(n.offerer_codec.name, "PCMU");
        assert_eq!(n.answerer_codec.name, "PCMA");
        assert_eq!(n.offerer_telephone_event, Some(101));
        let text = n.answer.to_text();
        assert!(text.contains("m=audio 31000 RTP/AVP 0 101\r\n"), "{text}");
        assert!(!text.contains("PCMA"), "{text}");
        assert_eq!(text.matches("a=sendrecv").count(), 1, "{text}");
    }

    #[test]
    fn hold_direction_and_the_same_codec_pass_through() {
        let offer = Sdp::parse(BARESIP_OFFER.replace("sendrecv", "sendonly").as_bytes()).unwrap();
        assert_eq!(offer.audio().unwrap().direction, Direction::SendOnly);
        let answer = Sdp::parse(
            PCMA_ANSWER
                .replace("8 101", "0 101")
                .replace("a=rtpmap:8 PCMA/8000", "a=rtpmap:0 PCMU/8000")
                .replace("sendrecv", "recvonly")
                .as_bytes(),
        )
        .unwrap();
        let n = relay_answer(&offer, &answer, RELAY, 31000).unwrap();
        assert_eq!(n.offerer_codec, n.answerer_codec);
        assert!(n.answer.to_text().contains("a=recvonly"));
    }

    #[test]
    fn broken_or_codecless_sdp_is_refused() {
        assert!(matches!(Sdp::parse(b"garbage"), Err(SdpError::Syntax(_))));
        assert!(
            Sdp::parse(
                b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nt=0 0\r\nm=video 5000 RTP/AVP 96\r\n"
            )
            .is_err()
        );
        let offer = Sdp::parse(BARESIP_OFFER.as_bytes()).unwrap();
        let opus = Sdp::parse(
            PCMA_ANSWER
                .replace("8 101", "96")
                .replace("a=rtpmap:8 PCMA/8000", "a=rtpmap:96 opus/48000/2")
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(
            relay_answer(&offer, &opus, RELAY, 1).unwrap_err(),
            SdpError::NoCommonCodec
        );
    }
}
