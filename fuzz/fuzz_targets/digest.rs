//! The digest header parsers (Authorization and challenges) and verification.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_sip::digest::{AuthHeader, Credentials, Nonces};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(h) = AuthHeader::parse(text) {
        let _ = (h.is_digest(), h.param("realm"), h.param("nonce"));
    }
    if let Ok(c) = Credentials::parse(text) {
        let _ = c.verify("REGISTER", "0123456789abcdef0123456789abcdef");
        let _ = c.nonce_count();
        let _ = Nonces::new(b"k", 300).check(&c.nonce, &c.realm, 1_000_000);
    }
});
