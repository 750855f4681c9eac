//! Stream framing for TCP, TLS and other byte streams (RFC 3261 §18.3): every message
//! needs a Content-Length; CRLF keep-alives (RFC 5626 §3.5.1) are recognised between
//! messages; a message larger than the configured maximum is an error before it is
//! buffered whole, so a peer cannot make us hold unbounded memory.

use bytes::{Buf, BytesMut};

use crate::error::ParseError;
use crate::message::{Message, parse_head};

/// What the framer found at the front of the stream.
#[derive(Debug)]
pub enum Frame {
    /// A complete message.
    Message(Message),
    /// A double-CRLF keep-alive ping; the peer expects a single CRLF pong.
    Ping,
    /// A single CRLF (a pong, or a stray line end between messages).
    Pong,
}

/// Accumulates bytes of one stream and cuts them into frames.
#[derive(Debug)]
pub struct StreamFramer {
    buf: BytesMut,
    max_message: usize,
}

/// The default largest message accepted on a stream.
pub const DEFAULT_MAX_MESSAGE: usize = 64 * 1024;

impl StreamFramer {
    pub fn new(max_message: usize) -> StreamFramer {
        StreamFramer {
            buf: BytesMut::with_capacity(4096),
            max_message,
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes held but not yet framed.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The start of what is buffered (at most the first 8 KiB): after a framing error,
    /// enough to find the rows a `400` needs.
    pub fn head_bytes(&self) -> &[u8] {
        &self.buf[..self.buf.len().min(8192)]
    }

    /// The next frame, `Ok(None)` when more bytes are needed. After an error the stream
    /// cannot be resynchronised and should be closed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, ParseError> {
        if self.buf.starts_with(b"\r\n\r\n") {
            self.buf.advance(4);
            return Ok(Some(Frame::Ping));
        }
        if self.buf.starts_with(b"\r\n") {
            if self.buf.len() < 4 && b"\r\n\r\n".starts_with(&self.buf) {
                return Ok(None);
            }
            self.buf.advance(2);
            return Ok(Some(Frame::Pong));
        }
        let Some(blank) = memchr::memmem::find(&self.buf, b"\r\n\r\n") else {
            if self.buf.len() > self.max_message {
                return Err(ParseError::TooLarge {
                    size: self.buf.len(),
                    limit: self.max_message,
                });
            }
            return Ok(None);
        };
        let head_len = blank + 4;
        let head = parse_head(&self.buf[..head_len])?;
        let declared =
            Message::head_content_length(&head).ok_or(ParseError::MissingContentLength)?;
        debug_assert_eq!(Message::head_body_start(&head), head_len);
        let total = head_len + declared;
        if total > self.max_message {
            return Err(ParseError::TooLarge {
                size: total,
                limit: self.max_message,
            });
        }
        if self.buf.len() < total {
            return Ok(None);
        }
        let raw = self.buf.split_to(total).freeze();
        Message::from_head(raw, head, declared).map(|m| Some(Frame::Message(m)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\nContent-Length: 5\r\n\r\nhello";

    #[test]
    fn frames_split_across_reads_and_back_to_back() {
        let mut f = StreamFramer::new(DEFAULT_MAX_MESSAGE);
        let mut stream = Vec::new();
        stream.extend_from_slice(b"\r\n\r\n");
        stream.extend_from_slice(MSG);
        stream.extend_from_slice(b"\r\n");
        stream.extend_from_slice(MSG);
        let mut frames = Vec::new();
        for chunk in stream.chunks(7) {
            f.push(chunk);
            while let Some(frame) = f.next_frame().unwrap() {
                frames.push(frame);
            }
        }
        assert!(matches!(frames[0], Frame::Ping));
        assert!(matches!(&frames[1], Frame::Message(m) if m.body() == b"hello"));
        assert!(matches!(frames[2], Frame::Pong));
        assert!(matches!(&frames[3], Frame::Message(m) if m.body() == b"hello"));
        assert_eq!(frames.len(), 4);
        assert_eq!(f.buffered(), 0);
    }

    #[test]
    fn stream_messages_need_content_length() {
        let mut f = StreamFramer::new(DEFAULT_MAX_MESSAGE);
        f.push(b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h\r\n\r\n");
        assert_eq!(
            f.next_frame().unwrap_err(),
            ParseError::MissingContentLength
        );
    }

    #[test]
    fn oversized_heads_and_bodies_fail_early() {
        let mut f = StreamFramer::new(1024);
        f.push(b"OPTIONS sip:a@b SIP/2.0\r\nX: ");
        f.push(&vec![b'a'; 2000]);
        assert!(matches!(f.next_frame(), Err(ParseError::TooLarge { .. })));
        let mut f = StreamFramer::new(1024);
        f.push(b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 999999\r\n\r\n");
        assert!(matches!(
            f.next_frame(),
            Err(ParseError::TooLarge {
                size: _,
                limit: 1024
            })
        ));
    }
}
