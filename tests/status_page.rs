//! The admin status page in a real browser: Debian's headless Chromium loads `/admin` from a real
//! proxy's admin listener after scripted traffic, the page's own script fetches the admin JSON, and
//! the rendered DOM and a screenshot show the bars. Without Chromium the test fails (it never skips):
//! `.ci/run` installs the `chromium` package.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use support::spawned::Spawned;
use support::*;

/// The status page's colours (src/admin/status.html): budget used, a full or blocked bucket, the
/// cache hit ratio, and the empty track behind every bar.
const USED: [u8; 3] = [0x25, 0x63, 0xeb];
const FULL: [u8; 3] = [0xdc, 0x26, 0x26];
const HIT: [u8; 3] = [0x16, 0xa3, 0x4a];
const TRACK: [u8; 3] = [0xe5, 0xe7, 0xeb];

fn chromium() -> PathBuf {
    let candidates = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .into_iter()
        .chain(["chromium", "/usr/bin/chromium"].map(PathBuf::from));
    for c in candidates {
        let ok = std::process::Command::new(&c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return c;
        }
    }
    panic!(
        "Chromium not found: this test needs Debian's `chromium` package \
         (`apt-get install -y chromium`, as .ci/run does) or CHROMIUM=/path/to/chromium"
    );
}

/// Runs headless Chromium on `url` with `mode` (`--dump-dom` or `--screenshot=<file>`), giving the
/// page's script five seconds of virtual time to fetch and render. Returns stdout.
async fn headless(url: &str, mode: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    // The flags from the machine notes: without the background-networking ones Chromium keeps
    // trying hosts this sandbox cannot reach.
    let out = tokio::time::timeout(
        Duration::from_secs(90),
        tokio::process::Command::new(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                "--window-size=1200,800",
                "--virtual-time-budget=5000",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(mode)
            .arg(url)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("Chromium did not finish within 90 s")
    .expect("Chromium could not be started");
    assert!(
        out.status.success(),
        "Chromium failed ({:?}): {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Image {
    width: usize,
    height: usize,
    rgb: Vec<[u8; 3]>,
}

/// Fails, showing the whole DOM, unless the rendered page holds every one of `wants`.
fn assert_rendered(dom: &str, wants: &[&str]) {
    for want in wants {
        assert!(
            dom.contains(want),
            "the rendered page lacks {want:?}:\n{dom}"
        );
    }
}

fn decode(path: &Path) -> Image {
    let file = std::io::BufReader::new(std::fs::File::open(path).unwrap());
    let mut decoder = png::Decoder::new(file);
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = match info.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => panic!("unexpected PNG colour type {other:?}"),
    };
    let rgb = buf[..info.buffer_size()]
        .chunks_exact(channels)
        .map(|p| [p[0], p[1], p[2]])
        .collect();
    Image {
        width: info.width as usize,
        height: info.height as usize,
        rgb,
    }
}

fn near(a: [u8; 3], b: [u8; 3]) -> bool {
    a.iter().zip(b).all(|(x, y)| x.abs_diff(y) <= 4)
}

impl Image {
    fn count(&self, colour: [u8; 3]) -> usize {
        self.rgb.iter().filter(|p| near(**p, colour)).count()
    }

    /// The row with the most `colour` pixels, and on it the share of the bar (colour plus track)
    /// that the colour fills.
    fn fill_ratio(&self, colour: [u8; 3]) -> f64 {
        let row = (0..self.height)
            .max_by_key(|y| self.row(*y).filter(|p| near(*p, colour)).count())
            .unwrap();
        let filled = self.row(row).filter(|p| near(*p, colour)).count();
        let track = self.row(row).filter(|p| near(*p, TRACK)).count();
        filled as f64 / (filled + track) as f64
    }

    fn row(&self, y: usize) -> impl Iterator<Item = [u8; 3]> + '_ {
        self.rgb[y * self.width..(y + 1) * self.width]
            .iter()
            .copied()
    }
}

// After scripted traffic (6 of the active WABA's 10 calls used; 6 hits and 8 misses, the refused
// read not counted as one; the other WABA's budget of 2 spent and a third call refused), headless
// Chromium renders /admin: the DOM lists both buckets, the hit ratio, health (ready, Redis not used,
// Meta answering, 0% upstream errors, version and uptime), who was refused (client, app, bucket,
// reason, count, dated); the screenshot shows a blue bar filled to 60%, a red full bar and a green
// hit-ratio bar.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_renders_budget_bars_in_headless_chromium() {
    let sim = start_sim(sim_config()).await;
    let proxy = TestProxy::builder(&sim.url)
        .waba_limit(WABA, 10)
        .waba_limit(OTHER_WABA, 2)
        .admin()
        .start()
        .await;
    let admin = proxy.admin_url();
    let get = |path: String| get_status(format!("{}{path}", proxy.url));
    let fields = [
        "id",
        "name",
        "currency",
        "timezone_id",
        "ownership_type",
        "account_review_status",
    ];
    for _ in 0..2 {
        for f in fields {
            assert_eq!(get(format!("/v19.0/{WABA}?fields={f}")).await, 200);
        }
    }
    for f in ["id", "name"] {
        assert_eq!(get(format!("/v19.0/{OTHER_WABA}?fields={f}")).await, 200);
    }
    assert_eq!(
        get(format!("/v19.0/{OTHER_WABA}?fields=currency")).await,
        429
    );

    let page = format!("{admin}/admin");
    let dom = headless(&page, "--dump-dom").await;
    for want in [
        format!("waba:{WABA}"),
        format!("waba:{OTHER_WABA}"),
        "6 / 10".to_string(),
        "2 / 2".to_string(),
        "43%".to_string(),
        "full, retry after".to_string(),
        "updated ".to_string(),
        // Health: ready, no Redis, Meta answering, no upstream error, version and uptime.
        "id=\"h-ready\" class=\"ok\">ready<".to_string(),
        "not used (memory)".to_string(),
        "answering, last call 20".to_string(),
        "0.0% of ".to_string(),
        format!("v{} (", env!("CARGO_PKG_VERSION")),
        " since 20".to_string(),
        // Who was refused: the client, its app and bucket, why, how often, when (with the date).
        format!("<td>alpha</td><td>main</td><td>waba:{OTHER_WABA}</td><td>full</td><td class=\"num\">1</td>"),
        " UTC — alpha (main) waba:".to_string(),
    ] {
        assert_rendered(&dom, &[&want]);
    }

    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("status_page.png");
    let _ = std::fs::remove_file(&shot);
    headless(&page, &format!("--screenshot={}", shot.display())).await;
    let img = decode(&shot);
    eprintln!(
        "screenshot: {} ({}x{})",
        shot.display(),
        img.width,
        img.height
    );
    assert_eq!((img.width, img.height), (1200, 800));
    let (used, full, hit) = (img.count(USED), img.count(FULL), img.count(HIT));
    assert!(used > 1500, "{used} pixels of the budget bar colour");
    assert!(full > 1500, "{full} pixels of the full-bucket colour");
    assert!(hit > 1500, "{hit} pixels of the hit-ratio colour");
    let ratio = img.fill_ratio(USED);
    assert!(
        (0.55..=0.65).contains(&ratio),
        "the 6-of-10 bar is filled {ratio:.2}"
    );
    proxy.shutdown().await;
}

// Degraded and draining read as such on the page, never as a plain "ready": with Meta unreachable
// (a closed port) and the cache on, the replica stays ready but degraded; after a SIGTERM it is
// draining for `server.drain_delay`, and a second SIGTERM ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_shows_degraded_and_draining_in_headless_chromium() {
    // A port held but not listening: connections are refused, and no other process can take it.
    let held = tokio::net::TcpSocket::new_v4().unwrap();
    held.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let closed = held.local_addr().unwrap();
    let builder = TestProxy::builder(&format!("http://{closed}")).set("server.drain_delay", "60s");
    let p = tokio::task::spawn_blocking(move || Spawned::start(builder, None))
        .await
        .unwrap();
    let page = format!("{}/admin", p.admin);
    let dom = headless(&page, "--dump-dom").await;
    assert_rendered(
        &dom,
        &[
            "id=\"h-ready\" class=\"warn\">ready, degraded: Meta unreachable<",
            "serving cached and stale answers only",
        ],
    );

    p.term_until_draining().await;
    let dom = headless(&page, "--dump-dom").await;
    assert_rendered(
        &dom,
        &[
            "id=\"h-ready\" class=\"bad\">draining (shutting down)<",
            "draining: shutting down (stop requested",
        ],
    );

    p.signal("TERM");
    p.exits_cleanly(Duration::from_secs(20)).await;
}
