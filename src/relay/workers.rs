//! The threads a relay's connections run on when it is given threads of its own
//! ([`super::RelayConfig::bridge_threads`]): each a single-thread runtime, connections dealt to
//! them in turn. A bridge then reads, writes and is woken on one thread. On a work-stealing
//! runtime every message that wakes a bridge also wakes an idle worker to look for work, which
//! costs the relay more CPU than moving the message (BENCHMARKS.md, `bench relay --compare`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::watch;
use tracing::warn;

/// Single-thread runtimes on threads of their own; they stop once the relay shuts down and
/// their connections have ended (or `grace` has passed).
pub(super) struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
}

impl Workers {
    /// Starts `threads` workers (at least one).
    pub(super) fn start(
        threads: usize,
        shutdown: &watch::Sender<bool>,
        grace: Duration,
    ) -> std::io::Result<Workers> {
        let mut handles = Vec::new();
        for i in 0..threads.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(runtime.handle().clone());
            let mut stop = shutdown.subscribe();
            std::thread::Builder::new()
                .name(format!("am-relay-{i}"))
                .spawn(move || {
                    runtime.block_on(async move {
                        // A dropped sender is a relay that is gone: stop as for a shutdown.
                        let _ = stop.wait_for(|s| *s).await;
                        // The bridges close their browsers on shutdown; let them.
                        let metrics = Handle::current().metrics();
                        let deadline = tokio::time::Instant::now() + grace;
                        while metrics.num_alive_tasks() > 0
                            && tokio::time::Instant::now() < deadline
                        {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    });
                })
                .inspect_err(|e| warn!(error = %e, "cannot start a relay thread"))?;
        }
        Ok(Workers {
            handles,
            next: AtomicUsize::new(0),
        })
    }

    /// The runtime the next connection goes to.
    pub(super) fn next(&self) -> &Handle {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        &self.handles[i]
    }
}
