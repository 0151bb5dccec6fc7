//! The process's own figures under the names every Prometheus client uses (`process_*`): CPU time,
//! resident and virtual memory, open and maximum file descriptors, start time. Read from Linux's
//! `/proc/self` at scrape time.
//!
//! It owns those series and their refresh. It must never fail a scrape: where `/proc` is missing
//! (another OS, a chroot without it) the series keep their last value.

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Clock ticks per second in `/proc/<pid>/stat`: the kernel's USER_HZ, 100 on every Linux ABI
/// (`sysconf(_SC_CLK_TCK)` would need libc, and this crate forbids `unsafe`).
const USER_HZ: f64 = 100.0;

pub(super) struct ProcessMetrics {
    cpu_seconds: Counter<f64, AtomicU64>,
    resident: Gauge,
    virtual_bytes: Gauge,
    open_fds: Gauge,
    max_fds: Gauge,
    start_time: Gauge<f64, AtomicU64>,
}

impl ProcessMetrics {
    pub(super) fn register(r: &mut Registry) -> ProcessMetrics {
        let p = ProcessMetrics {
            cpu_seconds: Counter::default(),
            resident: Gauge::default(),
            virtual_bytes: Gauge::default(),
            open_fds: Gauge::default(),
            max_fds: Gauge::default(),
            start_time: Gauge::default(),
        };
        r.register(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            p.cpu_seconds.clone(),
        );
        r.register(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            p.resident.clone(),
        );
        r.register(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes",
            p.virtual_bytes.clone(),
        );
        r.register(
            "process_open_fds",
            "Number of open file descriptors",
            p.open_fds.clone(),
        );
        r.register(
            "process_max_fds",
            "Maximum number of open file descriptors",
            p.max_fds.clone(),
        );
        r.register(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds",
            p.start_time.clone(),
        );
        p.refresh();
        p
    }

    /// Reads `/proc/self` again (a scrape).
    pub(super) fn refresh(&self) {
        if let Some(stat) = read("/proc/self/stat").as_deref().and_then(Stat::parse) {
            let cpu = (stat.utime + stat.stime) as f64 / USER_HZ;
            let seen = self.cpu_seconds.get();
            if cpu > seen {
                self.cpu_seconds.inc_by(cpu - seen);
            }
            if let Some(boot) = read("/proc/stat").as_deref().and_then(boot_time) {
                self.start_time
                    .set(boot as f64 + stat.starttime as f64 / USER_HZ);
            }
        }
        if let Some(status) = read("/proc/self/status") {
            if let Some(kb) = status_kb(&status, "VmRSS:") {
                self.resident.set(kb.saturating_mul(1024));
            }
            if let Some(kb) = status_kb(&status, "VmSize:") {
                self.virtual_bytes.set(kb.saturating_mul(1024));
            }
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            // The directory handle itself is one of the entries counted.
            self.open_fds.set(dir.count() as i64 - 1);
        }
        if let Some(n) = read("/proc/self/limits")
            .as_deref()
            .and_then(max_open_files)
        {
            self.max_fds.set(n);
        }
    }
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

struct Stat {
    utime: u64,
    stime: u64,
    starttime: u64,
}

impl Stat {
    /// Fields 14, 15 and 22 of `/proc/self/stat`, counted after the `(comm)` field, which may
    /// itself hold spaces and parentheses.
    fn parse(text: &str) -> Option<Stat> {
        let rest = &text[text.rfind(')')? + 1..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        // `rest` starts at field 3 (state).
        let field = |n: usize| f.get(n - 3)?.parse::<u64>().ok();
        Some(Stat {
            utime: field(14)?,
            stime: field(15)?,
            starttime: field(22)?,
        })
    }
}

fn boot_time(proc_stat: &str) -> Option<u64> {
    proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

fn status_kb(status: &str, key: &str) -> Option<i64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn max_open_files(limits: &str) -> Option<i64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    // "Max open files  <soft>  <hard>  files": the soft limit is the one that applies.
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    // A command name with spaces and parentheses does not shift the fields.
    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let line =
            "42 (graph gate) (x)) S 1 42 42 0 -1 4194560 1 0 0 0 250 50 0 0 20 0 9 0 12345 1 2";
        let s = Stat::parse(line).unwrap();
        assert_eq!((s.utime, s.stime, s.starttime), (250, 50, 12345));
    }

    // This process's own figures are read and plausible.
    #[test]
    fn this_process_reports_memory_fds_and_start_time() {
        let mut r = Registry::default();
        let p = ProcessMetrics::register(&mut r);
        assert!(p.resident.get() > 1 << 20, "{}", p.resident.get());
        assert!(p.open_fds.get() >= 3);
        assert!(p.max_fds.get() >= p.open_fds.get());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let start = p.start_time.get();
        assert!(
            start > now - 86_400.0 * 30.0 && start <= now + 1.0,
            "{start}"
        );
    }
}
