//! The edge's stateless answers (RFC 3261 §8.2.7) for what neither the registrar nor
//! the proxy takes: OPTIONS, rejections of malformed requests, methods we do not serve.
//!
//! - `OPTIONS` gets `200` with Allow, Accept and Supported (also with Max-Forwards 0: it
//!   is addressed to us).
//! - `REGISTER` gets a digest challenge (SHA-256 and MD5, `qop="auth"`, stateless nonce,
//!   `stale=true` for an expired one). No accounts exist yet, so valid credentials are
//!   refused with `403`.
//! - `ACK` is absorbed; `CANCEL` and in-dialog requests get `481`; other known methods
//!   `405` with Allow; unknown methods `501`; other hop-limited requests `483`.
//! - Requests that failed the element checks get the rejection's status and reason.
//! - Responses are dropped: no client transaction is waiting for them.
//!
//! The To tag is derived from the request (a keyed hash of Call-ID, From tag and branch),
//! so a retransmitted request gets a byte-identical answer without any state.

use std::net::SocketAddr;

use bytes::Bytes;
use sha2::{Digest, Sha256};

use switchyard_sip::HeaderName;
use switchyard_sip::Message;
use switchyard_sip::Method;
use switchyard_sip::build::{ResponseBuilder, default_reason};
use switchyard_sip::digest::{Algorithm, Challenge, Credentials, NonceCheck, Nonces};
use switchyard_sip::inspect::{Capabilities, Inbound};

/// What to do with one inbound item.
#[derive(Debug)]
pub enum Decision {
    /// Send this response.
    Answer {
        status: u16,
        reason: String,
        bytes: Bytes,
    },
    /// Nothing to send; the reason is logged.
    Silent(String),
}

/// Methods this element answers with something other than 405/501.
pub const ALLOW: &str = "OPTIONS, REGISTER, ACK, CANCEL";

/// Stateless answering logic; no I/O, time passed in.
#[derive(Debug)]
pub struct Responder {
    nonces: Nonces,
    tag_key: [u8; 32],
}

impl Responder {
    pub fn new(nonce_secret: &[u8], nonce_lifetime_secs: u64) -> Responder {
        let tag_key: [u8; 32] =
            Sha256::digest([b"to-tag:".as_slice(), nonce_secret].concat()).into();
        Responder {
            nonces: Nonces::new(nonce_secret, nonce_lifetime_secs),
            tag_key,
        }
    }

    /// Decides what to answer; `now_secs` is Unix time.
    pub fn decide(&self, inbound: &Inbound, source: SocketAddr, now_secs: u64) -> Decision {
        match inbound {
            Inbound::Request(msg) => self.answer_request(msg, source, now_secs),
            Inbound::Reject { rejection, rows } => {
                let tag = self.tag_from_rows(rows);
                let mut b = ResponseBuilder::from_rows(
                    rejection.status,
                    &rejection.reason,
                    rows.clone(),
                    &tag,
                );
                for (name, value) in &rejection.headers {
                    b = b.header(name, value.clone());
                }
                let b = b.stamp_top_via(source);
                Decision::Answer {
                    status: rejection.status,
                    reason: rejection.reason.clone(),
                    bytes: b.build(),
                }
            }
            Inbound::Response(msg) => Decision::Silent(format!(
                "response {} with no matching client transaction",
                msg.status().unwrap_or(0)
            )),
            Inbound::Drop(why) => Decision::Silent(why.clone()),
            Inbound::KeepAlive => Decision::Silent("keep-alive".into()),
        }
    }

    fn tag_from_rows(&self, rows: &[(HeaderName, String)]) -> String {
        let key: Vec<&str> = rows
            .iter()
            .filter(|(n, _)| matches!(n, HeaderName::CallId | HeaderName::From | HeaderName::Via))
            .map(|(_, v)| v.as_str())
            .collect();
        self.tag(&key.join("\n"))
    }

    fn tag(&self, key: &str) -> String {
        let mut h = Sha256::new();
        h.update(self.tag_key);
        h.update(key.as_bytes());
        let d = h.finalize();
        d[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    fn answer_request(&self, msg: &Message, source: SocketAddr, now_secs: u64) -> Decision {
        let method = msg.method().cloned().unwrap_or(Method::Ack);
        if method == Method::Ack {
            return Decision::Silent("ACK absorbed".into());
        }
        let key = format!(
            "{}\n{}\n{}",
            msg.call_id().unwrap_or_default(),
            msg.from_header()
                .ok()
                .and_then(|f| f.tag())
                .unwrap_or_default(),
            msg.top_via()
                .ok()
                .and_then(|v| v.branch())
                .unwrap_or_default()
        );
        let tag = self.tag(&key);
        let respond = |status: u16, reason: &str| {
            ResponseBuilder::for_request(msg, status, reason, &tag).stamp_top_via(source)
        };
        let in_dialog = msg.to_header().ok().and_then(|t| t.tag()).is_some();
        let max_forwards = msg.max_forwards().ok().flatten();
        let builder = match method {
            Method::Options => respond(200, "OK")
                .header("Allow", ALLOW)
                .header("Accept", Capabilities::SWITCHYARD.accept.join(", "))
                .header("Supported", Capabilities::SWITCHYARD.supported.join(", ")),
            _ if max_forwards == Some(0) => respond(483, "Too Many Hops"),
            Method::Cancel => respond(481, "Call/Transaction Does Not Exist"),
            Method::Register => self.challenge_register(msg, now_secs, respond),
            _ if in_dialog => respond(481, "Call/Transaction Does Not Exist"),
            Method::Extension(_) => respond(501, "Not Implemented").header("Allow", ALLOW),
            _ => respond(405, "Method Not Allowed").header("Allow", ALLOW),
        };
        let status = builder.status();
        Decision::Answer {
            status,
            reason: default_reason(status).to_owned(),
            bytes: builder.build(),
        }
    }

    /// Until the registrar exists no account can authenticate: a request without valid
    /// Digest credentials is challenged; valid ones are refused (no such account).
    fn challenge_register(
        &self,
        msg: &Message,
        now_secs: u64,
        respond: impl Fn(u16, &str) -> ResponseBuilder,
    ) -> ResponseBuilder {
        let realm = msg
            .to_header()
            .ok()
            .and_then(|t| t.uri().ok())
            .and_then(|u| u.host().map(str::to_owned))
            .unwrap_or_else(|| "switchyard".to_owned());
        let mut stale = false;
        for value in msg.header_rows(HeaderName::Authorization) {
            let Ok(creds) = Credentials::parse(value) else {
                continue;
            };
            match self.nonces.check(&creds.nonce, &realm, now_secs) {
                NonceCheck::Valid => return respond(403, "Forbidden"),
                NonceCheck::Stale => stale = true,
                NonceCheck::Invalid => {}
            }
        }
        let nonce = self.nonces.issue(&realm, now_secs);
        let mut b = respond(401, "Unauthorized");
        for algorithm in [Algorithm::Sha256, Algorithm::Md5] {
            let c = Challenge {
                realm: realm.clone(),
                nonce: nonce.clone(),
                algorithm,
                stale,
                opaque: None,
            };
            b = b.header("WWW-Authenticate", c.header_value());
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_sip::inspect::inspect_datagram;

    fn decide(text: &str) -> (u16, Message) {
        let r = Responder::new(b"secret", 300);
        let inbound = inspect_datagram(
            Bytes::copy_from_slice(text.as_bytes()),
            &Capabilities::SWITCHYARD,
        );
        match r.decide(&inbound, "127.0.0.1:5099".parse().unwrap(), 1_000_000) {
            Decision::Answer { status, bytes, .. } => {
                (status, Message::parse_datagram(bytes).unwrap())
            }
            Decision::Silent(why) => panic!("silent: {why}"),
        }
    }

    fn request(method: &str, extra: &str) -> String {
        format!(
            "{method} sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP pc.example.com:5099;branch=z9hG4bKa1\r\nMax-Forwards: 70\r\nTo: <sip:bob@example.com>\r\nFrom: <sip:alice@example.com>;tag=f1\r\nCall-ID: c1@x\r\nCSeq: 1 {method}\r\n{extra}Content-Length: 0\r\n\r\n"
        )
    }

    #[test]
    fn options_gets_200_with_capabilities() {
        let (status, m) = decide(&request("OPTIONS", ""));
        assert_eq!(status, 200);
        assert_eq!(m.header(HeaderName::Allow), Some(ALLOW));
        assert!(
            m.header(HeaderName::Accept)
                .unwrap()
                .contains("application/sdp")
        );
        assert!(m.header(HeaderName::Supported).is_some());
        assert_eq!(m.to_header().unwrap().tag().map(str::len), Some(16));
        assert_eq!(m.top_via().unwrap().received(), Some("127.0.0.1"));
    }

    #[test]
    fn methods_it_cannot_handle_get_405_or_501() {
        assert_eq!(decide(&request("INVITE", "")).0, 405);
        assert_eq!(decide(&request("MESSAGE", "")).0, 405);
        assert_eq!(decide(&request("FOO", "")).0, 501);
        assert_eq!(decide(&request("CANCEL", "")).0, 481);
        assert_eq!(
            decide(&request("INVITE", "").replace("Max-Forwards: 70", "Max-Forwards: 0")).0,
            483
        );
        assert_eq!(
            decide(&request("BYE", "").replace(
                "<sip:bob@example.com>\r\n",
                "<sip:bob@example.com>;tag=9\r\n"
            ))
            .0,
            481
        );
    }

    #[test]
    fn retransmissions_get_identical_answers() {
        let r = Responder::new(b"secret", 300);
        let raw = Bytes::from(request("INVITE", "").into_bytes());
        let src = "127.0.0.1:5099".parse().unwrap();
        let answer = |now| match r.decide(
            &inspect_datagram(raw.clone(), &Capabilities::SWITCHYARD),
            src,
            now,
        ) {
            Decision::Answer { bytes, .. } => bytes,
            Decision::Silent(w) => panic!("{w}"),
        };
        assert_eq!(answer(1), answer(2));
    }

    #[test]
    fn register_is_challenged_with_both_algorithms_and_stale_nonces_are_flagged() {
        let (status, m) = decide(&request("REGISTER", ""));
        assert_eq!(status, 401);
        let challenges: Vec<_> = m.header_rows(HeaderName::WwwAuthenticate).collect();
        assert_eq!(challenges.len(), 2);
        assert!(challenges[0].contains("algorithm=SHA-256"));
        assert!(challenges[1].contains("algorithm=MD5"));
        assert!(
            challenges
                .iter()
                .all(|c| c.contains("realm=\"example.com\"") && c.contains("qop=\"auth\""))
        );

        let old = Nonces::new(b"secret", 300).issue("example.com", 1_000_000 - 301);
        let auth = format!(
            "Authorization: Digest username=\"bob\", realm=\"example.com\", nonce=\"{old}\", uri=\"sip:example.com\", response=\"00\"\r\n"
        );
        let (status, m) = decide(&request("REGISTER", &auth));
        assert_eq!(status, 401);
        assert!(
            m.header(HeaderName::WwwAuthenticate)
                .unwrap()
                .contains("stale=true")
        );

        let fresh = Nonces::new(b"secret", 300).issue("example.com", 1_000_000);
        let auth = auth.replace(&old, &fresh);
        assert_eq!(decide(&request("REGISTER", &auth)).0, 403);
        let unknown_scheme = "Authorization: NoOneKnowsThisScheme opaque-data=here\r\n";
        assert_eq!(decide(&request("REGISTER", unknown_scheme)).0, 401);
    }
}
