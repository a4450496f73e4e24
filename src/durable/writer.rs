//! The task that saves a durable machine's state: it takes the newest unsaved change, writes
//! it (`file::replace`, on a blocking thread: the flushes block), then tells the machine's
//! observers the saved clock and answers the mutations that waited for it, in that order, so
//! that a server's reply carries a clock that holds the mutation. Whatever changed while a save
//! was under way goes into the next one (group commit). A failed save is counted, logged,
//! answered, and tried again after a growing pause.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tracing::{debug, error, info};

use super::Shared;
use super::file;
use super::progress::Change;
use crate::machine::ExportedState;

/// The first pause after a failed save; it doubles up to [`RETRY_MAX`] while saves keep failing.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Saves changes until the machine is closed and nothing is left to save.
pub(super) async fn run(shared: Arc<Shared>) {
    let mut retry = RETRY_MIN;
    loop {
        let (next, closed) = {
            let mut progress = shared.progress();
            (progress.take(), progress.is_closed())
        };
        let Some(change) = next else {
            if closed {
                break;
            }
            shared.wake.notified().await;
            continue;
        };
        match save(&shared, &change).await {
            Ok(()) => {
                retry = RETRY_MIN;
                shared.stats.saves.fetch_add(1, Ordering::Relaxed);
                debug!(machine = %shared.id, seq = change.seq, queue_tick = change.queue_tick, "state saved");
                // Observers first: a reply released below must find the saved clock served.
                shared.tell(&change);
                shared.progress().saved(change.seq);
                shared.publish();
            }
            Err(e) => {
                let message = e.to_string();
                shared.stats.failures.fetch_add(1, Ordering::Relaxed);
                *shared.stats.last_error() = Some(message.clone());
                error!(
                    machine = %shared.id,
                    path = %shared.path.display(),
                    error = %message,
                    retry_in = ?retry,
                    "saving the machine's state failed; the mutations waiting for it are answered with an error, and the save is tried again"
                );
                let closed = {
                    let mut progress = shared.progress();
                    progress.failed(change, &message);
                    progress.is_closed()
                };
                shared.publish();
                if closed {
                    break;
                }
                tokio::select! {
                    () = tokio::time::sleep(retry) => {}
                    () = shared.closing.notified() => {}
                }
                retry = (retry * 2).min(RETRY_MAX);
            }
        }
    }
    shared.progress().end();
    shared.publish();
    info!(machine = %shared.id, path = %shared.path.display(), "state writer stopped");
}

/// Writes one change to the machine's file.
async fn save(shared: &Shared, change: &Change) -> io::Result<()> {
    let state = ExportedState::new(
        &shared.id,
        &shared.schema,
        change.ticks.clone(),
        change.queue_tick,
    );
    let path = shared.path.clone();
    tokio::task::spawn_blocking(move || file::replace(&path, &state.to_json()))
        .await
        .unwrap_or_else(|e| Err(io::Error::other(format!("the save's thread failed: {e}"))))
}
