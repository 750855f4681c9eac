//! Media protocol core for Switchyard: codecs now; RTP/RTCP packets, RFC 4733 events and
//! quality statistics as the media issue needs them. No I/O, no clock.

#![forbid(unsafe_code)]

pub mod g711;
pub mod packet;
pub mod stats;
