//! Paging-link rewriting and token redaction of any body, in the order the respond step runs
//! them: never a panic, and the answer never carries the token the call was made with.
#![no_main]

use bytes::Bytes;
use graphgate::rewrite::{Redactor, Rewriter};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let rw = Rewriter::new("https://graph.facebook.com", "");
    let body = rw
        .paging(data, || "http://graphgate.internal".to_string())
        .unwrap_or_else(|| Bytes::copy_from_slice(data));
    let red = Redactor::new(graphgate_fuzz::config());
    let out = red.redact(body);
    let token = graphgate_fuzz::TOKEN.as_bytes();
    assert!(
        !out.windows(token.len()).any(|w| w == token),
        "the token survived: {}",
        String::from_utf8_lossy(&out)
    );
});
