//! Cost of the token redactor on an answer that holds no token (almost every answer), by how many
//! secrets are configured: a token and a 32-hex app secret per app, or a token per WABA in a larger
//! deployment. Beside it, in the same run, its two searchers used alone: one `memmem` pass per
//! secret, and one Aho-Corasick pass for all (`src/rewrite/redact.rs` picks by count). The
//! redactor's rows include a `Bytes` clone (a reference count) that the others do not.
//!
//! Last run: docs/benchmarks.md, "Issue #17, 2026-12-08 (morning)".

use std::hint::black_box;

use aho_corasick::{AhoCorasick, AhoCorasickKind};
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use graphgate::rewrite::Redactor;

/// A message-template listing of about 2 KB (the peer benchmark's answer size), and one of 64 KiB.
fn bodies() -> [(&'static str, Bytes); 2] {
    let listing = |size: usize| {
        let mut s = String::from("{\"data\":[");
        let mut i = 0;
        while s.len() < size - 200 {
            s.push_str(&format!(
                "{{\"name\":\"order_update_{i}\",\"language\":\"en_US\",\"status\":\"APPROVED\",\
                 \"category\":\"UTILITY\",\"components\":[{{\"type\":\"BODY\",\"text\":\"Your order \
                 {{{{1}}}} has shipped.\"}}],\"id\":\"{}\"}},",
                1_000_000_000_000_000u64 + i
            ));
            i += 1;
        }
        s.pop();
        s.push_str("],\"paging\":{\"cursors\":{\"before\":\"QVFIUjRt\",\"after\":\"QVFIUnBt\"}}}");
        Bytes::from(s)
    };
    [("2KB", listing(2048)), ("64KiB", listing(64 * 1024))]
}

fn secrets(n: usize) -> Vec<String> {
    // Shaped like system-user tokens: `EAA` and about 200 pseudo-random letters and digits.
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..n)
        .map(|_| {
            let tail: String = (0..200)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    ALPHABET[(x % ALPHABET.len() as u64) as usize] as char
                })
                .collect();
            format!("EAA{tail}")
        })
        .collect()
}

/// App secrets: 32 hex digits, as Meta issues them.
fn app_secrets(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                "{:032x}",
                0x5eed_0000_0000_0000_0000_0000_0000_0000u128 + i as u128 * 7919
            )
        })
        .collect()
}

fn redact(c: &mut Criterion) {
    let mut g = c.benchmark_group("redact");
    // (tokens, app secrets)
    for (label, body) in bodies() {
        for (tokens, apps) in [
            (1usize, 1usize),
            (5, 1),
            (10, 1),
            (50, 5),
            (100, 10),
            (1000, 10),
        ] {
            let owned: Vec<String> = secrets(tokens)
                .into_iter()
                .chain(app_secrets(apps))
                .collect();
            let list: Vec<&[u8]> = owned.iter().map(|s| s.as_bytes()).collect();
            let n = list.len();
            let redactor = Redactor::of(list.clone());
            g.bench_with_input(
                BenchmarkId::new(format!("redactor/{label}"), n),
                &n,
                |b, _| b.iter(|| black_box(redactor.redact(body.clone()))),
            );
            let finders: Vec<memchr::memmem::Finder<'_>> =
                list.iter().map(memchr::memmem::Finder::new).collect();
            g.bench_with_input(
                BenchmarkId::new(format!("memmem each/{label}"), n),
                &n,
                |b, _| b.iter(|| black_box(finders.iter().any(|f| f.find(&body).is_some()))),
            );
            let automaton = AhoCorasick::builder()
                .kind(Some(AhoCorasickKind::ContiguousNFA))
                .build(&list)
                .unwrap();
            g.bench_with_input(
                BenchmarkId::new(format!("automaton/{label}"), n),
                &n,
                |b, _| b.iter(|| black_box(automaton.is_match(&body[..]))),
            );
        }
    }
    g.finish();
}

criterion_group!(benches, redact);
criterion_main!(benches);
