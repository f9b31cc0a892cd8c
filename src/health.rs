//! Liveness shared by every thread: the [`Heartbeat`] that each socket thread and the model
//! worker beat (the systemd watchdog and `/healthz` count on them being fresh), and the
//! [`Fatal`] flag a thread raises when the daemon cannot serve on. Imports nothing of the
//! crate.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// How long a socket thread blocks at most before it looks at its stop condition again.
pub const POLL_MS: i64 = 100;

/// A liveness stamp: the owning thread beats it; the watchdog reads its age.
#[derive(Clone)]
pub struct Heartbeat {
    name: &'static str,
    epoch: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Heartbeat {
    /// A new heartbeat, fresh now.
    pub fn new(name: &'static str) -> Self {
        Heartbeat {
            name,
            epoch: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Record that the owner is alive.
    pub fn beat(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Time since the last beat.
    pub fn age(&self) -> Duration {
        let now = self.epoch.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }

    /// The owner's name.
    pub fn name(&self) -> &'static str {
        self.name
    }
}

/// A fault the daemon cannot serve through (the model worker died or keeps failing): the
/// first reason raised wins, and `run` drains and exits non-zero on it.
#[derive(Clone, Default)]
pub struct Fatal {
    token: CancellationToken,
    reason: Arc<std::sync::OnceLock<String>>,
}

impl Fatal {
    /// Raise it (from any thread); later reasons are ignored.
    pub fn raise(&self, reason: String) {
        let _ = self.reason.set(reason);
        self.token.cancel();
    }

    /// Wait until it is raised; the first reason.
    pub async fn raised(&self) -> String {
        self.token.cancelled().await;
        self.reason.get().cloned().unwrap_or_default()
    }
}
