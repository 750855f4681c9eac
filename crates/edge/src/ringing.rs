//! The INVITEs cores sent to phones through this edge that have no final answer yet.
//! The edge forwards them statelessly; it keeps them only so that a core's death does
//! not leave phones ringing for a call nobody holds any more. When a core is lost, the
//! edge CANCELs each of its INVITEs (RFC 3261 §9.1: one Via, the INVITE's top one, which
//! is ours) and answers the phone's final answer in the dead core's place: the ACK of a
//! failure (§17.1.1.3), or, when the phone answered anyway, an ACK and a BYE.
//!
//! Sans-I/O: the shell reports what it forwarded and what came back, and sends what
//! this returns to the target it names.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use switchyard_sip::build::RequestBuilder;
use switchyard_sip::{HeaderName, Message, Method};

/// How long an INVITE may wait for a final answer: the longest ringing a core allows.
const RINGING_AT_MOST: Duration = Duration::from_secs(660);

/// How long the final answer to a CANCELled INVITE is waited for (64*T1).
const CANCELLED_FOR: Duration = Duration::from_secs(32);

#[derive(Debug)]
struct Pending<T> {
    core: SocketAddr,
    /// The INVITE as forwarded, our Via on top: parsed only should its core die.
    invite: Bytes,
    target: T,
    until: Instant,
}

#[derive(Debug)]
struct Cancelled<T> {
    invite: Message,
    target: T,
    until: Instant,
}

/// What to do with a phone's response to a request a core sent through this edge.
#[derive(Debug, PartialEq, Eq)]
pub enum Fate<T> {
    /// On to the core, as any response.
    Forward,
    /// Its core is gone: the edge answers it with these requests (ACK, and BYE for a
    /// 2xx), sent to the phone's target; the response goes no further.
    Absorb(Vec<(Bytes, T)>),
}

/// The INVITEs of cores still ringing phones through this edge.
#[derive(Debug)]
pub struct Ringing<T> {
    pending: HashMap<String, Pending<T>>,
    /// Those CANCELled for a lost core, until their final answer.
    cancelled: HashMap<String, Cancelled<T>>,
}

impl<T> Default for Ringing<T> {
    fn default() -> Self {
        Ringing {
            pending: HashMap::new(),
            cancelled: HashMap::new(),
        }
    }
}

impl<T: Clone> Ringing<T> {
    pub fn len(&self) -> usize {
        self.pending.len() + self.cancelled.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `core` sent `invite` (as forwarded, with our Via on top, of branch `branch`) to
    /// `target`.
    pub fn sent(
        &mut self,
        core: SocketAddr,
        branch: String,
        invite: Bytes,
        target: T,
        now: Instant,
    ) {
        self.pending.insert(
            branch,
            Pending {
                core,
                invite,
                target,
                until: now + RINGING_AT_MOST,
            },
        );
    }

    /// A response from a phone, on its way to a core.
    pub fn on_response(&mut self, msg: &Message) -> Fate<T> {
        let (Some(status), Ok(cseq)) = (msg.status(), msg.cseq()) else {
            return Fate::Forward;
        };
        if cseq.method != Method::Invite || status < 200 {
            return Fate::Forward;
        }
        let Some(branch) = top_branch(msg) else {
            return Fate::Forward;
        };
        if self.pending.remove(&branch).is_some() {
            return Fate::Forward;
        }
        let Some(cancelled) = self.cancelled.remove(&branch) else {
            return Fate::Forward;
        };
        let answers = if (200..300).contains(&status) {
            answered_anyway(&cancelled.invite, msg)
        } else {
            ack_of_failure(&cancelled.invite, msg).into_iter().collect()
        };
        Fate::Absorb(
            answers
                .into_iter()
                .map(|bytes| (bytes, cancelled.target.clone()))
                .collect(),
        )
    }

    /// `core` is gone: the CANCELs of the INVITEs it still had ringing, each with the
    /// target to send it to.
    pub fn on_core_lost(&mut self, core: SocketAddr, now: Instant) -> Vec<(Bytes, T)> {
        let lost: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, p)| p.core == core)
            .map(|(branch, _)| branch.clone())
            .collect();
        let mut cancels = Vec::new();
        for branch in lost {
            let Some(p) = self.pending.remove(&branch) else {
                continue;
            };
            let Ok(invite) = Message::parse_datagram(p.invite) else {
                continue;
            };
            if let Some(cancel) = cancel_of(&invite) {
                cancels.push((cancel, p.target.clone()));
            }
            let until = now + CANCELLED_FOR;
            let target = p.target;
            self.cancelled.insert(
                branch,
                Cancelled {
                    invite,
                    target,
                    until,
                },
            );
        }
        cancels
    }

    /// Forgets INVITEs whose answer never came.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.pending.retain(|_, p| p.until > now);
        self.cancelled.retain(|_, p| p.until > now);
    }
}

fn top_branch(msg: &Message) -> Option<String> {
    let via = msg.top_via().ok()?;
    via.params.get("branch").flatten().map(str::to_owned)
}

/// A request on the INVITE's transaction: its Request-URI, top Via, Route, From,
/// Call-ID and CSeq number, with `to` as its To.
fn on_transaction(invite: &Message, method: Method, to: &str) -> Option<Bytes> {
    let seq = invite.cseq().ok()?.seq;
    let mut b = RequestBuilder::new(method.clone(), invite.request_uri_str()?.to_owned())
        .header("Via", invite.header(HeaderName::Via)?.to_owned());
    for route in invite.header_rows(HeaderName::Route) {
        b = b.header("Route", route.to_owned());
    }
    let b = b
        .header("Max-Forwards", "70")
        .header("From", invite.header(HeaderName::From)?.to_owned())
        .header("To", to.to_owned())
        .header("Call-ID", invite.header(HeaderName::CallId)?.to_owned())
        .header("CSeq", format!("{seq} {}", method.as_str()));
    Some(b.build())
}

fn cancel_of(invite: &Message) -> Option<Bytes> {
    on_transaction(invite, Method::Cancel, invite.header(HeaderName::To)?)
}

/// The ACK of a failure: on the INVITE's transaction, with the response's To (its tag).
fn ack_of_failure(invite: &Message, response: &Message) -> Option<Bytes> {
    on_transaction(invite, Method::Ack, response.header(HeaderName::To)?)
}

/// The phone answered an INVITE whose core is gone: its dialog is acknowledged and
/// ended at once. Both requests go to the phone's Contact, on a new transaction each,
/// with no Route (the only route set entries are this edge's own).
fn answered_anyway(invite: &Message, response: &Message) -> Vec<Bytes> {
    let Some(Ok(contact)) = response.contacts().next() else {
        return Vec::new();
    };
    let contact = contact.uri_str;
    let (Some(via), Some(from), Some(to), Some(call_id), Ok(cseq)) = (
        invite.header(HeaderName::Via),
        invite.header(HeaderName::From),
        response.header(HeaderName::To),
        invite.header(HeaderName::CallId),
        invite.cseq(),
    ) else {
        return Vec::new();
    };
    [
        (Method::Ack, cseq.seq, "ack"),
        (Method::Bye, cseq.seq + 1, "bye"),
    ]
    .into_iter()
    .map(|(method, seq, suffix)| {
        // Our Via with a branch of its own for each new transaction.
        let via = match via.split_once(";branch=") {
            Some((head, rest)) => {
                let (branch, tail) = rest.split_once(';').unwrap_or((rest, ""));
                let tail = if tail.is_empty() {
                    String::new()
                } else {
                    format!(";{tail}")
                };
                format!("{head};branch={branch}.{suffix}{tail}")
            }
            None => via.to_owned(),
        };
        RequestBuilder::new(method.clone(), contact.to_owned())
            .header("Via", via)
            .header("Max-Forwards", "70")
            .header("From", from.to_owned())
            .header("To", to.to_owned())
            .header("Call-ID", call_id.to_owned())
            .header("CSeq", format!("{seq} {}", method.as_str()))
            .header("Reason", "SIP;cause=503;text=\"Core lost\"")
            .build()
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CORE: &str = "127.0.0.1:7101";

    fn invite(branch: &str) -> Bytes {
        Bytes::from(format!(
            "INVITE sip:1002@192.0.2.7:5062 SIP/2.0\r\n\
             Via: SIP/2.0/UDP 198.51.100.1:5060;branch={branch};sy=tok\r\n\
             Via: SIP/2.0/UDP 10.0.0.5:7101;branch=z9hG4bKcore\r\n\
             Record-Route: <sip:tok@198.51.100.1;lr>\r\n\
             Max-Forwards: 69\r\n\
             From: <sip:1001@acme.example>;tag=core-b\r\n\
             To: <sip:1002@acme.example>\r\n\
             Call-ID: b-leg-1\r\n\
             CSeq: 1 INVITE\r\n\
             Contact: <sip:sy@198.51.100.1>\r\n\
             Content-Length: 0\r\n\r\n"
        ))
    }

    fn response(branch: &str, status: u16) -> Message {
        Message::parse_datagram(Bytes::from(format!(
            "SIP/2.0 {status} X\r\n\
             Via: SIP/2.0/UDP 198.51.100.1:5060;branch={branch};sy=tok\r\n\
             Via: SIP/2.0/UDP 10.0.0.5:7101;branch=z9hG4bKcore\r\n\
             From: <sip:1001@acme.example>;tag=core-b\r\n\
             To: <sip:1002@acme.example>;tag=phone\r\n\
             Call-ID: b-leg-1\r\n\
             CSeq: 1 INVITE\r\n\
             Contact: <sip:1002@192.0.2.7:5062;transport=udp>\r\n\
             Content-Length: 0\r\n\r\n"
        )))
        .unwrap()
    }

    /// `core` rings `target` with an INVITE of branch `branch`.
    fn ring(
        r: &mut Ringing<&'static str>,
        core: &str,
        branch: &str,
        target: &'static str,
        now: Instant,
    ) {
        r.sent(
            core.parse().unwrap(),
            branch.into(),
            invite(branch),
            target,
            now,
        );
    }

    fn parse(bytes: &Bytes) -> Message {
        Message::parse_datagram(bytes.clone()).unwrap()
    }

    #[test]
    fn a_lost_cores_ringing_invites_are_cancelled_and_their_failures_acknowledged() {
        let (mut r, now) = (Ringing::default(), Instant::now());
        ring(&mut r, CORE, "z9hG4bKa", "phone-a", now);
        ring(&mut r, "127.0.0.1:7102", "z9hG4bKb", "phone-b", now);

        let cancels = r.on_core_lost(CORE.parse().unwrap(), now);
        assert_eq!(cancels.len(), 1, "only the lost core's INVITE");
        let (cancel, target) = &cancels[0];
        assert_eq!(*target, "phone-a");
        let cancel = parse(cancel);
        assert_eq!(cancel.method(), Some(&Method::Cancel));
        assert_eq!(cancel.request_uri_str(), Some("sip:1002@192.0.2.7:5062"));
        // One Via, the INVITE's top one: the phone matches the CANCEL by it.
        let vias: Vec<&str> = cancel.header_rows(HeaderName::Via).collect();
        assert_eq!(
            vias,
            ["SIP/2.0/UDP 198.51.100.1:5060;branch=z9hG4bKa;sy=tok"]
        );
        assert_eq!(
            cancel.header(HeaderName::To),
            Some("<sip:1002@acme.example>")
        );
        assert_eq!(cancel.header(HeaderName::CSeq), Some("1 CANCEL"));

        // The phone's 487: acknowledged here, never forwarded to the dead core.
        let Fate::Absorb(acks) = r.on_response(&response("z9hG4bKa", 487)) else {
            panic!("the 487 of a cancelled INVITE is the edge's to answer");
        };
        let ack = parse(&acks[0].0);
        assert_eq!(ack.method(), Some(&Method::Ack));
        assert_eq!(
            ack.header(HeaderName::To),
            Some("<sip:1002@acme.example>;tag=phone")
        );
        assert_eq!(ack.header(HeaderName::CSeq), Some("1 ACK"));
        assert_eq!(
            ack.header(HeaderName::Via),
            Some("SIP/2.0/UDP 198.51.100.1:5060;branch=z9hG4bKa;sy=tok")
        );
        // A retransmission of it is the phone's business with the ACK sent: forwarded
        // as any response (to a core that is gone).
        assert_eq!(r.on_response(&response("z9hG4bKa", 487)), Fate::Forward);

        // The live core's INVITE is untouched; its answer goes on to that core.
        assert_eq!(r.on_response(&response("z9hG4bKb", 180)), Fate::Forward);
        assert_eq!(r.on_response(&response("z9hG4bKb", 200)), Fate::Forward);
        assert!(r.is_empty());
    }

    #[test]
    fn a_phone_that_answers_a_cancelled_invite_gets_an_ack_and_a_bye() {
        let (mut r, now) = (Ringing::default(), Instant::now());
        ring(&mut r, CORE, "z9hG4bKa", "phone-a", now);
        r.on_core_lost(CORE.parse().unwrap(), now);
        let Fate::Absorb(sent) = r.on_response(&response("z9hG4bKa", 200)) else {
            panic!("the 200 of a cancelled INVITE is the edge's to answer");
        };
        let sent: Vec<Message> = sent.iter().map(|(b, _)| parse(b)).collect();
        assert_eq!(
            sent.iter().map(|m| m.method().cloned()).collect::<Vec<_>>(),
            [Some(Method::Ack), Some(Method::Bye)]
        );
        for m in &sent {
            assert_eq!(
                m.request_uri_str(),
                Some("sip:1002@192.0.2.7:5062;transport=udp")
            );
            assert_eq!(
                m.header(HeaderName::To),
                Some("<sip:1002@acme.example>;tag=phone")
            );
            assert_eq!(m.header_rows(HeaderName::Route).count(), 0);
        }
        assert_eq!(sent[0].header(HeaderName::CSeq), Some("1 ACK"));
        assert_eq!(sent[1].header(HeaderName::CSeq), Some("2 BYE"));
        let branches: Vec<String> = sent.iter().map(|m| top_branch(m).unwrap()).collect();
        assert_ne!(branches[0], branches[1]);
        assert!(branches.iter().all(|b| b.starts_with("z9hG4bKa.")));
    }

    #[test]
    fn invites_answered_or_forgotten_are_not_cancelled() {
        let (mut r, now) = (Ringing::default(), Instant::now());
        ring(&mut r, CORE, "z9hG4bKa", "phone-a", now);
        ring(&mut r, CORE, "z9hG4bKb", "phone-b", now);
        assert_eq!(r.on_response(&response("z9hG4bKa", 486)), Fate::Forward);
        r.handle_timeout(now + RINGING_AT_MOST + Duration::from_secs(1));
        assert!(r.on_core_lost(CORE.parse().unwrap(), now).is_empty());
        assert!(r.is_empty());
    }
}
