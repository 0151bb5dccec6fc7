//! Classification: any method and parsed target gets a bucket, never a panic.
#![no_main]

use graphgate::classify::classify;
use graphgate::limits::Known;
use graphgate::target::Target;
use http::Method;
use libfuzzer_sys::fuzz_target;

const METHODS: [Method; 5] = [
    Method::GET,
    Method::POST,
    Method::DELETE,
    Method::HEAD,
    Method::PUT,
];

fuzz_target!(|data: &[u8]| {
    let Some((&m, rest)) = data.split_first() else {
        return;
    };
    let s = String::from_utf8_lossy(rest);
    let (path, query) = match s.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (&*s, None),
    };
    let Ok(t) = Target::parse(path, query) else {
        return;
    };
    let mut known = Known::default();
    known.wabas.insert(graphgate_fuzz::WABA.to_string());
    known
        .status_ids
        .insert("555".to_string(), graphgate_fuzz::WABA.to_string());
    known.allocation_configs.insert("777".to_string());
    let scope = classify(&METHODS[m as usize % METHODS.len()], &t, &known);
    let _ = scope.kind();
    let _ = scope.label();
});
