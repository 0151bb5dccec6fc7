//! Cache-key derivation: a plan (and its key) for any target and caller directives, never a
//! panic; a key never holds the token the call is made with.
#![no_main]

use graphgate::cache::Lookup;
use graphgate::target::Target;
use http::{HeaderMap, HeaderValue, Method};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let p = graphgate_fuzz::parts(data, 0, 3);
    let target = graphgate_fuzz::text(p[0]);
    let (path, query) = match target.split_once('?') {
        Some((a, b)) => (a, Some(b)),
        None => (&*target, None),
    };
    let Ok(t) = Target::parse(path, query) else {
        return;
    };
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_bytes(p[1]) {
        headers.insert(http::header::CACHE_CONTROL, v);
    }
    let host = graphgate_fuzz::text(p[2]);
    let gw = graphgate_fuzz::gateway();
    let token = gw.directory().token_for(0, t.root());
    for method in [Method::GET, Method::HEAD, Method::POST] {
        let plan = gw.cache().plan(&Lookup {
            app: 0,
            method: &method,
            headers: &headers,
            target: &t,
            token_owner: gw.directory().token_owner(0, t.root()),
            token,
            link_host: &host,
            allow_no_cache: true,
        });
        if let Some(k) = plan.key() {
            let _ = k.path();
            // The key holds only what the caller sent: the token the call uses never gets in
            // (unless the caller wrote that text itself, in the target or the Host).
            let echoed =
                target.contains(graphgate_fuzz::TOKEN) || host.contains(graphgate_fuzz::TOKEN);
            assert!(echoed || !k.text().contains(graphgate_fuzz::TOKEN));
        }
    }
});
