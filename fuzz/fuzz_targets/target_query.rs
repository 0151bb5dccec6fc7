//! Request-target and query parsing: `Target::parse` never panics, and what it accepts is
//! consistent (a forwarded query never carries an auth parameter).
#![no_main]

use graphgate::target::{is_auth_param, Target};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    let (path, query) = match s.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (&*s, None),
    };
    if let Ok(t) = Target::parse(path, query) {
        let _ = t.root();
        let _ = t.param("access_token");
        let fwd = t.forward_query();
        for pair in fwd.split('&').filter(|p| !p.is_empty()) {
            let key = pair.split('=').next().unwrap_or("");
            let key: String = percent_decode(key);
            assert!(!is_auth_param(&key), "forwarded an auth parameter: {fwd}");
        }
    }
});

fn percent_decode(s: &str) -> String {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz");
            if let Ok(v) = u8::from_str_radix(hex, 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
