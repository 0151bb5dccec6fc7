//! Meta's usage headers (`X-Business-Use-Case-Usage`, `X-App-Usage`): any value is parsed or
//! ignored by the limiter, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let p = graphgate_fuzz::parts(data, 0, 2);
    let (buc, app) = (graphgate_fuzz::text(p[0]), graphgate_fuzz::text(p[1]));
    let gw = graphgate_fuzz::gateway();
    gw.limiter().observe_usage(0, Some(&buc), Some(&app));
});
