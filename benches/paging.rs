//! Cost of the paging rewrite on a 2 KB message-template listing whose `paging.next` points at
//! Meta (what every paged read from Meta carries), and on one whose links point elsewhere (what
//! the peer benchmark's upstream sends, so `bench/run-peers.sh` never measures the rewrite).
//!
//! Last run: see docs/benchmarks.md ("The paging rewrite").

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use graphgate::rewrite::Rewriter;

/// A listing of about 2 KB with Meta's paging object (escaped slashes, as Graph sends them).
fn listing() -> Vec<u8> {
    let mut s = String::from("{\"data\":[");
    for i in 0..10 {
        s.push_str(&format!(
            "{{\"name\":\"order_update_{i}\",\"language\":\"en_US\",\"status\":\"APPROVED\",\
             \"category\":\"UTILITY\",\"components\":[{{\"type\":\"BODY\",\"text\":\"Your order \
             {{{{1}}}} has shipped.\"}}],\"id\":\"{}\"}},",
            1_000_000_000_000_000u64 + i
        ));
    }
    s.pop();
    s.push_str(
        "],\"paging\":{\"cursors\":{\"before\":\"QVFIUjRtc2F1cGRh\",\"after\":\"QVFIUnBtdDBlTm5R\"},\
         \"next\":\"https:\\/\\/graph.facebook.com\\/v19.0\\/102290129340398\\/message_templates?\
         limit=10&after=QVFIUnBtdDBlTm5R\"}}",
    );
    s.into_bytes()
}

fn paging(c: &mut Criterion) {
    let body = listing();
    let meta = Rewriter::new("https://graph.facebook.com", "");
    let elsewhere = Rewriter::new("http://127.0.0.1:18081", "");
    let public = || "http://graphgate:8080".to_string();
    assert!(meta.paging(&body, public).is_some());
    assert!(elsewhere.paging(&body, public).is_none());
    c.bench_function("paging/link to Meta", |b| {
        b.iter(|| black_box(meta.paging(&body, public)))
    });
    c.bench_function("paging/no link to rewrite", |b| {
        b.iter(|| black_box(elsewhere.paging(&body, public)))
    });
}

criterion_group!(benches, paging);
criterion_main!(benches);
