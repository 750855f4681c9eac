//! A scripted SIP phone over UDP for end-to-end tests: registers with digest auth, places
//! and answers calls, sends and receives RTP. Blocking, one socket for SIP and one for RTP.
#![allow(dead_code)]

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use bytes::Bytes;
use switchyard_sip::HeaderName;
use switchyard_sip::Message;
use switchyard_sip::digest::{Algorithm, Credentials, expected_response, ha1};

pub struct Phone {
    pub sip: UdpSocket,
    pub rtp: UdpSocket,
    pub server: SocketAddr,
    pub domain: String,
    pub user: String,
    pub password: String,
    cseq: u32,
    /// Requests that arrived while waiting for something else.
    pub inbox: Vec<(Message, SocketAddr)>,
    /// Responses that arrived while waiting for another one.
    pub responses: Vec<Message>,
    /// Header lines (each ending in CRLF) added to every INVITE.
    pub invite_extra: String,
    /// Header lines added to every REGISTER, and parameters after its Contact's `>`.
    pub register_extra: String,
    pub contact_params: String,
    /// REGISTER with `Contact: *` (remove every binding; needs expires 0).
    pub contact_star: bool,
    /// Call-IDs for the next calls (the last first), else random ones.
    pub call_ids: Vec<String>,
}

/// A call we placed or answered: what is needed for ACK, BYE and re-INVITE.
#[derive(Debug, Clone)]
pub struct CallLeg {
    pub call_id: String,
    pub from: String,
    pub to: String,
    pub route: Vec<String>,
    pub target: String,
    pub cseq: u32,
    /// Where the other side's RTP goes (from its SDP).
    pub remote_rtp: Option<SocketAddr>,
}

impl CallLeg {
    /// A Refer-To header line for an attended transfer to `target` (a SIP URI) that
    /// replaces this dialog (RFC 3891: its Call-ID, the far end's tag as to-tag, ours as
    /// from-tag).
    pub fn refer_to_replacing(&self, target: &str) -> String {
        let tag = |header: &str| {
            header
                .split(";tag=")
                .nth(1)
                .and_then(|t| t.split(';').next())
                .unwrap_or_default()
                .to_owned()
        };
        format!(
            "Refer-To: <{target}?Replaces={}%3Bto-tag%3D{}%3Bfrom-tag%3D{}>\r\n",
            self.call_id,
            tag(&self.to),
            tag(&self.from)
        )
    }
}

fn token() -> String {
    format!("{:016x}", rand::random::<u64>())
}

pub fn sdp(port: u16, codecs: &[u8]) -> String {
    let fmts: Vec<String> = codecs.iter().map(|c| c.to_string()).collect();
    let mut s = format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {port} RTP/AVP {}\r\n",
        fmts.join(" ")
    );
    for c in codecs {
        match c {
            0 => s.push_str("a=rtpmap:0 PCMU/8000\r\n"),
            8 => s.push_str("a=rtpmap:8 PCMA/8000\r\n"),
            101 => s.push_str("a=rtpmap:101 telephone-event/8000\r\n"),
            _ => {}
        }
    }
    s.push_str("a=sendrecv\r\n");
    s
}

/// The RTP address an SDP body names.
pub fn sdp_addr(body: &[u8]) -> Option<SocketAddr> {
    let text = std::str::from_utf8(body).ok()?;
    let ip = text
        .lines()
        .find_map(|l| l.strip_prefix("c=IN IP4 "))?
        .trim()
        .parse()
        .ok()?;
    let port = text
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(SocketAddr::new(ip, port))
}

impl Phone {
    pub fn new(server: SocketAddr, domain: &str, user: &str, password: &str) -> Phone {
        Phone::new_at("127.0.0.1", server, domain, user, password)
    }

    /// A phone whose sockets are bound to `ip` (any 127.0.0.0/8 address: each is its own
    /// source to the server).
    pub fn new_at(ip: &str, server: SocketAddr, domain: &str, user: &str, password: &str) -> Phone {
        let sip = UdpSocket::bind((ip, 0)).unwrap();
        let rtp = UdpSocket::bind((ip, 0)).unwrap();
        Phone {
            sip,
            rtp,
            server,
            domain: domain.to_owned(),
            user: user.to_owned(),
            password: password.to_owned(),
            cseq: 0,
            inbox: Vec::new(),
            responses: Vec::new(),
            invite_extra: String::new(),
            register_extra: String::new(),
            contact_params: String::new(),
            contact_star: false,
            call_ids: Vec::new(),
        }
    }

    fn next_call_id(&mut self) -> String {
        self.call_ids
            .pop()
            .unwrap_or_else(|| format!("call-{}", token()))
    }

    pub fn local(&self) -> SocketAddr {
        self.sip.local_addr().unwrap()
    }

    pub fn rtp_port(&self) -> u16 {
        self.rtp.local_addr().unwrap().port()
    }

    pub fn send_raw(&self, bytes: &[u8]) {
        self.sip.send_to(bytes, self.server).unwrap();
    }

    fn send_to(&self, bytes: &[u8], dest: SocketAddr) {
        self.sip.send_to(bytes, dest).unwrap();
    }

    /// The next message, or None after `within`.
    pub fn recv(&self, within: Duration) -> Option<(Message, SocketAddr)> {
        let deadline = Instant::now() + within;
        let mut buf = vec![0u8; 65536];
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            self.sip
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            let Ok((n, from)) = self.sip.recv_from(&mut buf) else {
                return None;
            };
            if let Ok(m) = Message::parse_datagram(Bytes::copy_from_slice(&buf[..n])) {
                return Some((m, from));
            }
        }
    }

    /// Waits for a final response to the request with this Call-ID and CSeq, answering
    /// nothing else (requests are kept in `inbox`).
    pub fn final_response(
        &mut self,
        call_id: &str,
        cseq: u32,
        within: Duration,
    ) -> Option<Message> {
        let is_it = |m: &Message| {
            m.call_id().ok() == Some(call_id)
                && m.cseq().map(|c| c.seq).ok() == Some(cseq)
                && m.status().unwrap_or(0) >= 200
                && m.cseq().map(|c| c.method.to_string()).ok().as_deref() != Some("CANCEL")
        };
        if let Some(i) = self.responses.iter().position(is_it) {
            return Some(self.responses.remove(i));
        }
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let (m, from) = self.recv(left)?;
            if m.is_request() {
                self.inbox.push((m, from));
                continue;
            }
            if is_it(&m) {
                return Some(m);
            }
        }
    }

    fn authorization(
        &self,
        challenge: &Message,
        header: HeaderName,
        method: &str,
        uri: &str,
        password: &str,
    ) -> String {
        let c = challenge.header(header).expect("a challenge");
        let param = |name: &str| {
            let start = c.find(&format!("{name}=\""))? + name.len() + 2;
            Some(c[start..start + c[start..].find('"')?].to_owned())
        };
        let realm = param("realm").unwrap();
        let nonce = param("nonce").unwrap();
        let h = ha1(Algorithm::Md5, &self.user, &realm, password);
        let cnonce = token();
        let response = expected_response(
            Algorithm::Md5,
            &h,
            &nonce,
            method,
            uri,
            Some(("00000001", &cnonce, "auth")),
        );
        let _ = Credentials::parse; // the same module parses what we build here
        format!(
            "Digest username=\"{}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{response}\", algorithm=MD5, cnonce=\"{cnonce}\", qop=auth, nc=00000001",
            self.user
        )
    }

    pub fn register_request(
        &mut self,
        call_id: &str,
        to_user: &str,
        expires: u32,
        auth: Option<&str>,
    ) -> (String, u32) {
        self.cseq += 1;
        let local = self.local();
        let auth = auth
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        let text = format!(
            "REGISTER sip:{d} SIP/2.0\r\nVia: SIP/2.0/UDP {local};rport;branch=z9hG4bK{b}\r\nMax-Forwards: 70\r\nTo: <sip:{to_user}@{d}>\r\nFrom: <sip:{to_user}@{d}>;tag={t}\r\nCall-ID: {call_id}\r\nCSeq: {c} REGISTER\r\nContact: {contact}\r\nExpires: {expires}\r\n{auth}{extra}Content-Length: 0\r\n\r\n",
            d = self.domain,
            b = token(),
            t = token(),
            c = self.cseq,
            contact = if self.contact_star {
                "*".to_owned()
            } else {
                format!("<sip:{}@{local}>{}", self.user, self.contact_params)
            },
            extra = self.register_extra,
        );
        (text, self.cseq)
    }

    /// REGISTER as `to_user` (normally our own user) with `password`; the final status.
    pub fn register_as(&mut self, to_user: &str, password: &str, expires: u32) -> Message {
        let call_id = format!("reg-{}", token());
        let (text, seq) = self.register_request(&call_id, to_user, expires, None);
        self.send_raw(text.as_bytes());
        let r = self
            .final_response(&call_id, seq, Duration::from_secs(5))
            .expect("an answer to REGISTER");
        if r.status() != Some(401) {
            return r;
        }
        let uri = format!("sip:{}", self.domain);
        let auth = self.authorization(&r, HeaderName::WwwAuthenticate, "REGISTER", &uri, password);
        let (text, seq) = self.register_request(&call_id, to_user, expires, Some(&auth));
        self.send_raw(text.as_bytes());
        self.final_response(&call_id, seq, Duration::from_secs(5))
            .expect("an answer to REGISTER")
    }

    pub fn register(&mut self) -> u16 {
        let (user, pw) = (self.user.clone(), self.password.clone());
        self.register_as(&user, &pw, 600).status().unwrap()
    }

    fn invite_text(
        &mut self,
        call_id: &str,
        from_tag: &str,
        dialled: &str,
        body: &str,
        auth: Option<&str>,
    ) -> (String, u32) {
        self.cseq += 1;
        let local = self.local();
        let auth = auth
            .map(|a| format!("Proxy-Authorization: {a}\r\n"))
            .unwrap_or_default();
        let text = format!(
            "INVITE sip:{dialled}@{d} SIP/2.0\r\nVia: SIP/2.0/UDP {local};rport;branch=z9hG4bK{b}\r\nMax-Forwards: 70\r\nTo: <sip:{dialled}@{d}>\r\nFrom: <sip:{u}@{d}>;tag={from_tag}\r\nCall-ID: {call_id}\r\nCSeq: {c} INVITE\r\nContact: <sip:{u}@{local}>\r\n{auth}{extra}Content-Type: application/sdp\r\nContent-Length: {len}\r\n\r\n{body}",
            d = self.domain,
            b = token(),
            c = self.cseq,
            u = self.user,
            len = body.len(),
            extra = self.invite_extra,
        );
        (text, self.cseq)
    }

    pub fn ack_for(&self, invite_text: &str, response: &Message) {
        // ACK for a non-2xx: same branch, To with the response's tag (RFC 3261 §17.1.1.3).
        let invite = Message::parse_datagram(Bytes::from(invite_text.to_owned())).unwrap();
        let mut text = format!("ACK {} SIP/2.0\r\n", invite.request_uri_str().unwrap());
        text += &format!("Via: {}\r\n", invite.header(HeaderName::Via).unwrap());
        text += "Max-Forwards: 70\r\n";
        text += &format!("To: {}\r\n", response.header(HeaderName::To).unwrap());
        text += &format!("From: {}\r\n", invite.header(HeaderName::From).unwrap());
        text += &format!("Call-ID: {}\r\n", invite.call_id().unwrap());
        text += &format!(
            "CSeq: {} ACK\r\nContent-Length: 0\r\n\r\n",
            invite.cseq().unwrap().seq
        );
        self.send_raw(text.as_bytes());
    }

    /// Calls `dialled`, authenticating when challenged. Returns the final response and, for
    /// a 2xx, the dialog (already ACKed).
    pub fn call(&mut self, dialled: &str, codecs: &[u8]) -> (Message, Option<CallLeg>) {
        let body = sdp(self.rtp_port(), codecs);
        self.call_with_body(dialled, &body)
    }

    /// Sends an authenticated INVITE and returns it with its final response, without
    /// acknowledging that response (to watch retransmissions).
    pub fn invite_unacknowledged(&mut self, dialled: &str) -> (String, Message) {
        let (text, call_id, seq) = self.start_call(dialled);
        let r = self
            .final_response(&call_id, seq, Duration::from_secs(5))
            .expect("a final answer");
        (text, r)
    }

    /// Sends an authenticated INVITE and returns at once: (its text, Call-ID, CSeq).
    pub fn start_call(&mut self, dialled: &str) -> (String, String, u32) {
        let call_id = self.next_call_id();
        let from_tag = token();
        let body = sdp(self.rtp_port(), &[0]);
        let (text, seq) = self.invite_text(&call_id, &from_tag, dialled, &body, None);
        self.send_raw(text.as_bytes());
        let r = self
            .final_response(&call_id, seq, Duration::from_secs(5))
            .expect("a 407");
        assert_eq!(r.status(), Some(407));
        self.ack_for(&text, &r);
        let uri = format!("sip:{dialled}@{}", self.domain);
        let pw = self.password.clone();
        let auth = self.authorization(&r, HeaderName::ProxyAuthenticate, "INVITE", &uri, &pw);
        let (text, seq) = self.invite_text(&call_id, &from_tag, dialled, &body, Some(&auth));
        self.send_raw(text.as_bytes());
        (text, call_id, seq)
    }

    /// CANCELs an INVITE sent by [`Phone::start_call`] (same Request-URI, Via and CSeq
    /// number, RFC 3261 §9.1); returns the status of the CANCEL.
    pub fn cancel(&mut self, invite_text: &str) -> Option<u16> {
        let invite = Message::parse_datagram(Bytes::from(invite_text.to_owned())).unwrap();
        let seq = invite.cseq().unwrap().seq;
        let mut text = format!("CANCEL {} SIP/2.0\r\n", invite.request_uri_str().unwrap());
        text += &format!(
            "Via: {}\r\nMax-Forwards: 70\r\n",
            invite.header(HeaderName::Via).unwrap()
        );
        for name in [HeaderName::To, HeaderName::From, HeaderName::CallId] {
            text += &format!(
                "{}: {}\r\n",
                name.canonical().unwrap(),
                invite.header(name).unwrap()
            );
        }
        text += &format!("CSeq: {seq} CANCEL\r\nContent-Length: 0\r\n\r\n");
        self.send_raw(text.as_bytes());
        let call_id = invite.call_id().unwrap().to_owned();
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let (m, from) = self.recv(left)?;
            if m.is_request() {
                self.inbox.push((m, from));
                continue;
            }
            let is_cancel =
                m.cseq().map(|c| c.method.to_string()).ok().as_deref() == Some("CANCEL");
            if m.call_id().ok() == Some(call_id.as_str()) && is_cancel {
                return m.status();
            }
            // Other responses (the INVITE's 180/487) are kept for the caller to read.
            self.responses.push(m);
        }
        None
    }

    /// Like [`Phone::call`] with any body as the offer.
    pub fn call_with_body(&mut self, dialled: &str, body: &str) -> (Message, Option<CallLeg>) {
        let call_id = self.next_call_id();
        let from_tag = token();
        let body = body.to_owned();
        let (text, seq) = self.invite_text(&call_id, &from_tag, dialled, &body, None);
        self.send_raw(text.as_bytes());
        let mut r = self
            .final_response(&call_id, seq, Duration::from_secs(30))
            .expect("an answer to INVITE");
        if r.status() == Some(407) {
            self.ack_for(&text, &r);
            let uri = format!("sip:{dialled}@{}", self.domain);
            let pw = self.password.clone();
            let auth = self.authorization(&r, HeaderName::ProxyAuthenticate, "INVITE", &uri, &pw);
            let (text2, seq2) = self.invite_text(&call_id, &from_tag, dialled, &body, Some(&auth));
            self.send_raw(text2.as_bytes());
            r = self
                .final_response(&call_id, seq2, Duration::from_secs(40))
                .expect("an answer to INVITE");
            if r.status().unwrap_or(0) >= 300 {
                self.ack_for(&text2, &r);
                return (r, None);
            }
            let leg = self.confirm(&r, seq2);
            return (r, Some(leg));
        }
        if r.status().unwrap_or(0) >= 300 {
            self.ack_for(&text, &r);
            return (r, None);
        }
        let leg = self.confirm(&r, seq);
        (r, Some(leg))
    }

    /// Builds the dialog from a 2xx and sends the ACK.
    fn confirm(&mut self, ok: &Message, seq: u32) -> CallLeg {
        let mut route: Vec<String> = ok
            .values(HeaderName::RecordRoute)
            .map(str::to_owned)
            .collect();
        route.reverse();
        let leg = CallLeg {
            call_id: ok.call_id().unwrap().to_owned(),
            from: ok.header(HeaderName::From).unwrap().to_owned(),
            to: ok.header(HeaderName::To).unwrap().to_owned(),
            route,
            target: ok.contacts().next().unwrap().unwrap().uri_str.to_owned(),
            cseq: seq,
            remote_rtp: sdp_addr(ok.body()),
        };
        let ack = self.in_dialog_text(&leg, "ACK", seq, "");
        self.send_raw(ack.as_bytes());
        leg
    }

    fn in_dialog_text(&self, leg: &CallLeg, method: &str, seq: u32, body: &str) -> String {
        self.in_dialog_text_with(leg, method, seq, "", body)
    }

    fn in_dialog_text_with(
        &self,
        leg: &CallLeg,
        method: &str,
        seq: u32,
        extra: &str,
        body: &str,
    ) -> String {
        let local = self.local();
        let mut text = format!(
            "{method} {} SIP/2.0\r\nVia: SIP/2.0/UDP {local};rport;branch=z9hG4bK{}\r\nMax-Forwards: 70\r\n",
            leg.target,
            token()
        );
        for r in &leg.route {
            text += &format!("Route: {r}\r\n");
        }
        text += &format!(
            "From: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {seq} {method}\r\nContact: <sip:{}@{local}>\r\n",
            leg.from, leg.to, leg.call_id, self.user
        );
        text += extra;
        if !body.is_empty() {
            text += "Content-Type: application/sdp\r\n";
        }
        text += &format!("Content-Length: {}\r\n\r\n{body}", body.len());
        text
    }

    /// Sends a request in the dialog (to the first route, i.e. the edge) and waits for
    /// its final response; an INVITE's 2xx is ACKed.
    pub fn request(&mut self, leg: &mut CallLeg, method: &str, body: &str) -> Message {
        self.request_with(leg, method, "", body)
    }

    /// [`Self::request`] with extra header lines (each ending in CRLF).
    pub fn request_with(
        &mut self,
        leg: &mut CallLeg,
        method: &str,
        extra: &str,
        body: &str,
    ) -> Message {
        leg.cseq += 1;
        let text = self.in_dialog_text_with(leg, method, leg.cseq, extra, body);
        self.send_raw(text.as_bytes());
        let r = self
            .final_response(&leg.call_id, leg.cseq, Duration::from_secs(10))
            .expect("a final response");
        if method == "INVITE" && r.status().unwrap_or(0) < 300 {
            let ack = self.in_dialog_text(leg, "ACK", leg.cseq, "");
            self.send_raw(ack.as_bytes());
            leg.remote_rtp = sdp_addr(r.body()).or(leg.remote_rtp);
        }
        r
    }

    /// Waits for a re-INVITE: an INVITE inside one of our dialogs (its To has our tag).
    pub fn wait_reinvite(&mut self, within: Duration) -> (Message, SocketAddr) {
        let (reinvite, from) = self.wait_request("INVITE", within).expect("a re-INVITE");
        assert!(
            reinvite
                .header(HeaderName::To)
                .is_some_and(|to| to.contains("tag=")),
            "an INVITE inside a dialog: {reinvite:?}"
        );
        (reinvite, from)
    }

    /// Waits for a request of `method` (from the inbox first).
    pub fn wait_request(
        &mut self,
        method: &str,
        within: Duration,
    ) -> Option<(Message, SocketAddr)> {
        if let Some(i) = self
            .inbox
            .iter()
            .position(|(m, _)| m.method().map(|x| x.as_str()) == Some(method))
        {
            return Some(self.inbox.remove(i));
        }
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let (m, from) = self.recv(left)?;
            if m.method().map(|x| x.as_str()) == Some(method) {
                return Some((m, from));
            }
            if m.is_request() {
                self.inbox.push((m, from));
            }
        }
    }

    /// Answers a request with `status` (a 2xx to an INVITE carries our SDP). Returns the
    /// dialog as seen from this side.
    /// Waits for a `method` request and answers it `200` (with an SDP answer for `codecs`,
    /// none when empty); the request.
    pub fn answer_next(&mut self, method: &str, within: Duration, codecs: &[u8]) -> Message {
        let (req, from) = self
            .wait_request(method, within)
            .unwrap_or_else(|| panic!("no {method} within {within:?}"));
        self.answer(&req, from, 200, codecs);
        req
    }

    pub fn answer(&self, req: &Message, from: SocketAddr, status: u16, codecs: &[u8]) -> CallLeg {
        let tag = token();
        let local = self.local();
        let mut text = format!("SIP/2.0 {status} Whatever\r\n");
        for v in req.header_rows(HeaderName::Via) {
            text += &format!("Via: {v}\r\n");
        }
        for v in req.header_rows(HeaderName::RecordRoute) {
            text += &format!("Record-Route: {v}\r\n");
        }
        let to = req.header(HeaderName::To).unwrap();
        let to = if to.contains("tag=") || status == 100 {
            to.to_owned()
        } else {
            format!("{to};tag={tag}")
        };
        text += &format!(
            "From: {}\r\nTo: {to}\r\nCall-ID: {}\r\nCSeq: {}\r\nContact: <sip:{}@{local}>\r\n",
            req.header(HeaderName::From).unwrap(),
            req.call_id().unwrap(),
            req.header(HeaderName::CSeq).unwrap(),
            self.user
        );
        let body =
            if (200..300).contains(&status) && req.method().map(|m| m.as_str()) == Some("INVITE") {
                sdp(self.rtp_port(), codecs)
            } else {
                String::new()
            };
        if !body.is_empty() {
            text += "Content-Type: application/sdp\r\n";
        }
        text += &format!("Content-Length: {}\r\n\r\n{body}", body.len());
        self.send_to(text.as_bytes(), from);
        CallLeg {
            call_id: req.call_id().unwrap().to_owned(),
            from: to,
            to: req.header(HeaderName::From).unwrap().to_owned(),
            route: req
                .values(HeaderName::RecordRoute)
                .map(str::to_owned)
                .collect(),
            target: req
                .contacts()
                .next()
                .and_then(|c| c.ok())
                .map(|c| c.uri_str.to_owned())
                .unwrap_or_default(),
            cseq: 100,
            remote_rtp: sdp_addr(req.body()),
        }
    }

    /// Sends one 20 ms G.711 packet to the other side's anchored address.
    pub fn send_rtp(&self, leg: &CallLeg, pt: u8, seq: u16) {
        let mut p = vec![0x80, pt];
        p.extend(seq.to_be_bytes());
        p.extend((u32::from(seq) * 160).to_be_bytes());
        p.extend(0x5eed_u32.to_be_bytes());
        p.extend([0xd5u8; 160]);
        self.rtp
            .send_to(&p, leg.remote_rtp.expect("the other side's SDP"))
            .unwrap();
    }

    /// Counts RTP packets arriving within `within`, returning as soon as `n` came.
    pub fn count_rtp_up_to(&self, n: usize, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        let mut buf = [0u8; 2048];
        let mut got = 0;
        while got < n
            && let Some(left) = deadline.checked_duration_since(Instant::now())
        {
            self.rtp
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            if self.rtp.recv_from(&mut buf).is_ok() {
                got += 1;
            }
        }
        got
    }

    /// Counts RTP packets arriving within `within`.
    pub fn count_rtp(&self, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        let mut buf = [0u8; 2048];
        let mut n = 0;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            self.rtp
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            if self.rtp.recv_from(&mut buf).is_ok() {
                n += 1;
            }
        }
        n
    }
}
