//! Time, injected: the limiter asks a [`Clock`] for "now", so tests run simulated hours in
//! milliseconds with [`ManualClock`] and production uses [`SystemClock`].
//!
//! Times are microseconds since the Unix epoch, so persisted limiter state means the same thing
//! after a restart. [`SystemClock`] never goes backwards within a process, whatever the wall clock
//! does.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch.
pub type Micros = u64;

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Micros;
}

pub type SharedClock = Arc<dyn Clock>;

/// Wall time at start-up plus monotonic time since.
pub struct SystemClock {
    wall_at_start: Micros,
    start: Instant,
}

impl SystemClock {
    pub fn new() -> SystemClock {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        SystemClock {
            wall_at_start: wall.as_micros() as Micros,
            start: Instant::now(),
        }
    }

    pub fn shared() -> SharedClock {
        Arc::new(SystemClock::new())
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Micros {
        self.wall_at_start + self.start.elapsed().as_micros() as Micros
    }
}

/// A clock that moves only when told to.
#[derive(Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn new(start: Micros) -> Arc<ManualClock> {
        Arc::new(ManualClock(AtomicU64::new(start)))
    }

    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_micros() as u64, Ordering::SeqCst);
    }

    pub fn set(&self, to: Micros) {
        self.0.store(to, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Micros {
        self.0.load(Ordering::SeqCst)
    }
}

pub fn micros(d: Duration) -> Micros {
    d.as_micros() as Micros
}
