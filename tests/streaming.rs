//! Large bodies stream through the proxy in bounded memory (alone in its own test binary, so the
//! process's peak memory belongs to this test).

mod support;

use futures_util::StreamExt;
use support::*;

const SIZE: u64 = 100 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

// A 100 MB upload and a 100 MB download pass through whole while the process's peak memory grows by
// far less than either body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_megabyte_bodies_stream_in_bounded_memory() {
    let sim = start_sim(sim_config()).await;
    let proxy = TestProxy::builder(&sim.url).start().await;
    let c = client();
    // Warm up connections and allocator pools before taking the baseline.
    let r = c
        .get(format!("{}/__sim/blob?bytes=1048576", proxy.url))
        .bearer_auth(CLIENT_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().len(), 1 << 20);
    let baseline = peak_rss_kib();

    let chunks = futures_util::stream::iter(
        (0..SIZE / CHUNK as u64).map(|_| Ok::<_, std::io::Error>(vec![b'z'; CHUNK])),
    );
    let r = c
        .post(format!("{}/__sim/sink", proxy.url))
        .bearer_auth(CLIENT_KEY)
        .header("content-type", "application/octet-stream")
        .header("content-length", SIZE.to_string())
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["bytes"], SIZE);

    let r = c
        .get(format!("{}/__sim/blob?bytes={SIZE}", proxy.url))
        .bearer_auth(CLIENT_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut got = 0u64;
    let mut stream = r.bytes_stream();
    while let Some(chunk) = stream.next().await {
        got += chunk.unwrap().len() as u64;
    }
    assert_eq!(got, SIZE);

    let growth_mib = peak_rss_kib().saturating_sub(baseline) / 1024;
    assert!(
        growth_mib < 40,
        "peak memory grew by {growth_mib} MiB for 100 MiB bodies"
    );
}
