//! Config parsing and validation: any text (and a token value from the input) gives a config or
//! a list of problems, never a panic, and no problem ever echoes the token.
#![no_main]

use std::path::Path;

use graphgate::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let p = graphgate_fuzz::parts(data, 0, 2);
    let text = graphgate_fuzz::text(p[0]);
    let mut env = graphgate_fuzz::env();
    let token = format!("EAAGsecretFUZZ{}", graphgate_fuzz::text(p[1]));
    env.insert("FUZZ_TOKEN".into(), token);
    if let Err(e) = Config::from_toml(&text, "fuzz.toml", Path::new("/nonexistent"), &env) {
        let shown = e.to_string();
        assert!(!shown.contains("EAAGsecretFUZZ"), "{shown}");
    }
});
