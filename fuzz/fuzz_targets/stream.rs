//! Stream framing: any byte sequence, cut into any chunks, frames without panicking, and
//! never holds more than the configured maximum.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_sip::framing::{Frame, StreamFramer};

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(cut).max(1);
    let mut framer = StreamFramer::new(4096);
    for piece in rest.chunks(chunk) {
        framer.push(piece);
        loop {
            match framer.next_frame() {
                Ok(Some(Frame::Message(m))) => {
                    let _ = m.routing_keys();
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(
            framer.buffered() <= 4096 + chunk,
            "framer holds {} bytes",
            framer.buffered()
        );
    }
});
