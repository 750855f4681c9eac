//! URI parse and RFC 3261 §19.1.4 equivalence: reflexive and symmetric on whatever parses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_sip::Uri;
use switchyard_sip::uri::sip_host;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (a, b) = text.split_once('\n').unwrap_or((text, text));
    let _ = sip_host(a);
    let (Ok(ua), Ok(ub)) = (Uri::parse(a), Uri::parse(b)) else {
        return;
    };
    assert!(ua.equivalent(&ua), "not reflexive: {a}");
    assert_eq!(
        ua.equivalent(&ub),
        ub.equivalent(&ua),
        "not symmetric: {a} / {b}"
    );
    if let Some(h) = ua.host() {
        assert_eq!(sip_host(a), Some(h), "structural host differs for {a}");
    }
});
