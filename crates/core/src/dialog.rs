//! One side of a call as a dialog (RFC 3261 §12): what the core needs to send requests in
//! it, built from the request or response that created it.

use std::net::SocketAddr;

use bytes::Bytes;
use switchyard_sip::HeaderName;
use switchyard_sip::Message;
use switchyard_sip::Method;
use switchyard_sip::build::RequestBuilder;
use switchyard_sip::headers::NameAddr;
use switchyard_sip_net::{Peer, Target, Transport};

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Dialog {
    pub call_id: String,
    /// Our party with our tag (From of our requests).
    pub local: String,
    /// The other party with its tag (To of our requests).
    pub remote: String,
    pub remote_target: String,
    /// Route headers of our requests, in order.
    pub route: Vec<String>,
    pub cseq: u32,
    /// The next hop (the first route).
    pub next_hop: SocketAddr,
}

/// A fresh tag or branch suffix.
pub fn random_token() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// The address a route or target URI names (IP literals only: the core talks to edges).
pub fn uri_addr(value: &str) -> Option<SocketAddr> {
    let na = NameAddr::parse_header(value, "Route").ok()?;
    let uri = na.uri().ok()?;
    let sip = uri.as_sip()?;
    let ip = sip
        .host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()?;
    Some(SocketAddr::new(ip, sip.port.unwrap_or(5060)))
}

impl Dialog {
    /// Whether `msg`, a request received in this dialog, carries both of its tags: ours
    /// in To and the peer's in From. A Call-ID alone is no proof: anyone who learns it
    /// could otherwise end or re-route someone else's call.
    pub fn matches_request(&self, msg: &Message) -> bool {
        let (Some(ours), Some(theirs)) = (
            switchyard_sip::headers::tag_of(&self.local),
            switchyard_sip::headers::tag_of(&self.remote),
        ) else {
            return false;
        };
        let to = msg
            .header(HeaderName::To)
            .and_then(switchyard_sip::headers::tag_of);
        let from = msg
            .header(HeaderName::From)
            .and_then(switchyard_sip::headers::tag_of);
        to == Some(ours) && from == Some(theirs)
    }

    /// Our UAS side of a dialog created by `invite` (we answer it with `local_tag`).
    pub fn as_uas(invite: &Message, local_tag: &str) -> Option<Dialog> {
        let to = invite.header(HeaderName::To)?;
        let route: Vec<String> = invite
            .values(HeaderName::RecordRoute)
            .map(str::to_owned)
            .collect();
        let remote_target = invite.contacts().next()?.ok()?.uri_str.to_owned();
        let next_hop = route
            .first()
            .and_then(|r| uri_addr(r))
            .or_else(|| uri_addr(&remote_target))?;
        Some(Dialog {
            call_id: invite.call_id().ok()?.to_owned(),
            local: format!("{to};tag={local_tag}"),
            remote: invite.header(HeaderName::From)?.to_owned(),
            remote_target,
            route,
            cseq: 0,
            next_hop,
        })
    }

    /// Our UAC side of a dialog confirmed by `response` to `request`.
    pub fn as_uac(request: &Message, response: &Message, cseq: u32) -> Option<Dialog> {
        let mut route: Vec<String> = response
            .values(HeaderName::RecordRoute)
            .map(str::to_owned)
            .collect();
        route.reverse();
        if route.is_empty() {
            route = request
                .values(HeaderName::Route)
                .map(str::to_owned)
                .collect();
        }
        let remote_target = response.contacts().next()?.ok()?.uri_str.to_owned();
        let next_hop = route
            .first()
            .and_then(|r| uri_addr(r))
            .or_else(|| uri_addr(&remote_target))?;
        Some(Dialog {
            call_id: request.call_id().ok()?.to_owned(),
            local: request.header(HeaderName::From)?.to_owned(),
            remote: response.header(HeaderName::To)?.to_owned(),
            remote_target,
            route,
            cseq,
            next_hop,
        })
    }

    /// Where to send what goes out in this dialog, from our socket `local`.
    pub fn peer(&self, local: SocketAddr) -> Peer {
        Peer {
            target: Target::Datagram {
                local,
                dest: self.next_hop,
            },
            source: self.next_hop,
            transport: Transport::Udp,
            local,
        }
    }

    /// A new request in the dialog (takes the next CSeq; ACK reuses `ack_cseq`).
    pub fn request(
        &mut self,
        method: Method,
        local: SocketAddr,
        body: Option<&str>,
        ack_cseq: Option<u32>,
    ) -> Message {
        self.request_with(
            method,
            local,
            &[],
            body.map(|sdp| ("application/sdp", sdp)),
            ack_cseq,
        )
    }

    /// A request in the dialog with extra headers and a body of any type.
    pub fn request_with(
        &mut self,
        method: Method,
        local: SocketAddr,
        headers: &[(&str, String)],
        body: Option<(&str, &str)>,
        ack_cseq: Option<u32>,
    ) -> Message {
        let cseq = match ack_cseq {
            Some(n) => n,
            None => {
                self.cseq += 1;
                self.cseq
            }
        };
        let mut b = RequestBuilder::new(method.clone(), self.remote_target.clone())
            .header(
                "Via",
                format!("SIP/2.0/UDP {local};branch=z9hG4bK{};rport", random_token()),
            )
            .header("Max-Forwards", "70");
        for r in &self.route {
            b = b.header("Route", r.clone());
        }
        b = b
            .header("From", self.local.clone())
            .header("To", self.remote.clone())
            .header("Call-ID", self.call_id.clone())
            .header("CSeq", format!("{cseq} {method}"))
            .header("Contact", format!("<sip:sy@{local}>"));
        for (name, value) in headers {
            b = b.header(name, value.clone());
        }
        if let Some((content_type, text)) = body {
            b = b.body(content_type, Bytes::from(text.to_owned()));
        }
        Message::parse_datagram(b.build()).expect("requests we build parse")
    }
}
