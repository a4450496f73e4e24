//! Durable machines: a local [`Machine`] whose state is saved to a file on every change and
//! restored from it when it is opened again, so that a restarted root continues its clock and
//! every mirror of it sees a continuation instead of a reset. `am-node` makes the root
//! machines of a node with a `state_dir` durable (topologies/README.md).
//!
//! - `progress`: which changes are heard, saved or failed, and what a waiting mutation is
//!   answered (pure, tested without files or a runtime);
//! - `file`: reading a state file with its size capped, replacing it atomically and durably;
//! - `writer`: the task that saves, tells observers and answers mutations;
//! - this file: [`DurableMachine`], the [`StateSource`] served in place of the bare machine.
//!
//! The file is an [`ExportedState`] in JSON (`machine::export` documents it).
//!
//! # What is durable when (the fsync policy)
//!
//! Every clock change of the machine is saved: written to a temporary file, flushed to the
//! disk (fsync), renamed over the state file, and the directory flushed. One save runs at a
//! time; the changes made while it runs are saved together by the next one (group commit), so
//! a busy machine costs one save per flush time, not one per mutation.
//!
//! - A mutation through [`DurableMachine`] (a server's clients, a node's drivers) resolves only
//!   once a save that includes it has finished: a server's `MutateReply` acknowledges only
//!   what a crash cannot take back. When that save fails (a full disk), the mutation is
//!   answered with an error ([`MutationError::Refused`], "not acknowledged"): it ran in memory
//!   and a later save may still keep it, but the caller must not count on it. Failures are
//!   logged, counted ([`DurableStats`]) and tried again after a pause (0.1 s doubling to 5 s).
//! - Observers of the [`DurableMachine`] (a server's hubs) hear only saved clocks, after the
//!   save, with no transition: mirrors never see a tick that a crash could take back, so a
//!   restarted root's clock is at or past every mirror's and they continue from it.
//! - Reads and waits answer the machine's live clock, which may run ahead of the saved one by
//!   the save under way; so does the bare [`Machine`] (its handlers, mutations made on it
//!   directly: those are saved too, nobody waits for it).
//! - The queue tick is saved with each clock change: mutations that changed no tick since the
//!   last change are not counted in a restored queue tick.

mod file;
mod progress;
mod writer;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::machine::observers::Observers;
use crate::machine::{
    Args, ClockChange, Condition, DisposeHook, ErrFuture, ExportedState, ImportError, LogArgs,
    LogLevel, Logger, Machine, Mutation, MutationError, MutationFuture, Observer, ObserverId,
    Schema, StateSource, Tracer, TracerId, When,
};

use progress::{Change, Progress, Status, Verdict};

/// Why a durable machine could not be opened; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum DurableError {
    /// The state directory could not be created.
    #[error(
        "cannot create the state directory {}: {error}; make its parent writable or pick another state_dir",
        .path.display()
    )]
    Directory {
        /// The directory.
        path: PathBuf,
        /// The operating system's error.
        error: std::io::Error,
    },
    /// The state file exists but could not be read.
    #[error("cannot read the state file {}: {error}; check its permissions", .path.display())]
    Read {
        /// The state file.
        path: PathBuf,
        /// The operating system's error.
        error: std::io::Error,
    },
    /// The state file was read but does not hold a state this machine can take (corrupt, another
    /// machine's, another schema).
    #[error(
        "the state file {} cannot be restored: {error}; to start the machine from zero instead, move the file away",
        .path.display()
    )]
    Restore {
        /// The state file.
        path: PathBuf,
        /// Why the import refused it.
        error: ImportError,
    },
    /// Another process (or another machine of this one) saves to the state file.
    #[error(
        "the state file {} is in use: another process holds its lock ({}); stop that process, or give this machine another state_dir",
        .path.display(),
        file::lock_path(.path).display()
    )]
    Locked {
        /// The state file.
        path: PathBuf,
    },
    /// The trial write at opening failed: changes could not be saved.
    #[error(
        "cannot save the state file {}: {error}; the directory must be writable and have free space",
        .path.display()
    )]
    Write {
        /// The state file.
        path: PathBuf,
        /// The operating system's error.
        error: std::io::Error,
    },
}

/// Saves and failures of a durable machine so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DurableStats {
    /// Saves that completed (each may hold many changes).
    pub saves: u64,
    /// Saves that failed.
    pub failures: u64,
    /// The error of the last failed save.
    pub last_error: Option<String>,
}

/// A machine whose state is saved on every change and restored when opened; serve it in place
/// of the machine (the module docs say what waits for what).
pub struct DurableMachine {
    machine: Machine,
    shared: Arc<Shared>,
    restored: bool,
    /// The machine's observer that hears its changes for the writer.
    feed: ObserverId,
    writer: Mutex<Option<JoinHandle<()>>>,
}

/// What the machine's thread, the writer task and waiting mutations share.
struct Shared {
    id: String,
    /// The machine, for observers to reach (it holds this only weakly, through its feed).
    machine: Machine,
    schema: Arc<Schema>,
    path: PathBuf,
    progress: Mutex<Progress>,
    /// The progress as acknowledgements wait on it.
    status: watch::Sender<Status>,
    /// Wakes the writer: a change was heard, or the machine is closing.
    wake: Notify,
    /// Cuts the writer's pause after a failed save short: the machine is closing.
    closing: Notify,
    told: Mutex<Told>,
    stats: Stats,
    /// The state file's lock, held until the machine is closed (or dropped).
    lock: Mutex<Option<File>>,
}

/// The observers of the saved clock, and the last saved clock they were told.
struct Told {
    observers: Observers,
    ticks: Vec<u64>,
}

#[derive(Default)]
struct Stats {
    saves: AtomicU64,
    failures: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl Stats {
    fn last_error(&self) -> MutexGuard<'_, Option<String>> {
        lock(&self.last_error)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while these locks are held; the data stays consistent.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl DurableMachine {
    /// Makes `machine` durable with its state in `path`: restores the file when there is one
    /// (its parent directory is created when missing), checks that the directory takes a save
    /// (so one that cannot be written is found now, not at the first mutation), and starts
    /// the writer task. The file is written with the first change; until then a machine
    /// opened without one has nothing to lose (its restart starts it from zero again). Needs a
    /// tokio runtime. Open a machine before it is used: the import is refused while a
    /// transition runs.
    pub async fn open(machine: Machine, path: impl Into<PathBuf>) -> Result<Self, DurableError> {
        let path = path.into();
        let (restored, lock) = {
            let (machine, at) = (machine.clone(), path.clone());
            tokio::task::spawn_blocking(move || restore(&machine, &at))
                .await
                .map_err(|e| DurableError::Write {
                    path: path.clone(),
                    error: std::io::Error::other(format!("the opening thread failed: {e}")),
                })??
        };
        // What a restart would start from: the file's clock, or zero without one.
        let saved = restored
            .clone()
            .unwrap_or_else(|| vec![0; machine.schema().len()]);
        let shared = Arc::new(Shared {
            id: machine.id().to_owned(),
            machine: machine.clone(),
            schema: machine.schema(),
            path,
            progress: Mutex::new(Progress::new()),
            status: watch::channel(Status::default()).0,
            wake: Notify::new(),
            closing: Notify::new(),
            told: Mutex::new(Told {
                observers: Observers::default(),
                ticks: saved.clone(),
            }),
            stats: Stats::default(),
            lock: Mutex::new(Some(lock)),
        });
        let (feed, now) = machine.observe(Arc::new(Feed(Arc::downgrade(&shared))));
        if now != saved {
            // A machine used before it was opened, or changed since its import: its mirrors
            // must not hear of that clock before it is saved.
            shared.progress().hear(&now, machine.queue_tick());
        }
        let writer = tokio::spawn(writer::run(shared.clone()));
        Ok(DurableMachine {
            machine,
            shared,
            restored: restored.is_some(),
            feed,
            writer: Mutex::new(Some(writer)),
        })
    }

    /// The machine itself: for handlers, and reads and mutations that need not wait for saves.
    pub fn machine(&self) -> &Machine {
        &self.machine
    }

    /// Whether the state was restored from the file (or the file was new).
    pub fn restored(&self) -> bool {
        self.restored
    }

    /// The state file (`STATE_DIR/MACHINE.json`).
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Saves and failures so far.
    pub fn stats(&self) -> DurableStats {
        let stats = &self.shared.stats;
        DurableStats {
            saves: stats.saves.load(Ordering::Relaxed),
            failures: stats.failures.load(Ordering::Relaxed),
            last_error: stats.last_error().clone(),
        }
    }

    /// Saves what is not saved yet and stops the writer; returns when it has stopped. From
    /// then on mutations through this handle are refused ([`MutationError::Disposed`]); the
    /// machine itself goes on, unsaved.
    pub async fn close(&self) {
        self.shared.close();
        let writer = lock(&self.writer).take();
        if let Some(writer) = writer {
            let _ = writer.await;
        }
        // Nothing is saved from here on: another may take the file.
        lock(&self.shared.lock).take();
    }
}

/// Restores `path` into `machine` when the file exists (returning the restored clock), and
/// checks that its directory takes a save.
fn restore(machine: &Machine, path: &Path) -> Result<(Option<Vec<u64>>, File), DurableError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|error| DurableError::Directory {
            path: parent.to_path_buf(),
            error,
        })?;
    }
    // Before anything is read or written: the probe below writes the temporary file a
    // running save of another process would be writing.
    let lock = file::lock(path)
        .map_err(|error| DurableError::Write {
            path: path.to_path_buf(),
            error,
        })?
        .ok_or_else(|| DurableError::Locked {
            path: path.to_path_buf(),
        })?;
    let refused = |error| DurableError::Restore {
        path: path.to_path_buf(),
        error,
    };
    let restored = match file::read(path).map_err(|error| DurableError::Read {
        path: path.to_path_buf(),
        error,
    })? {
        Some(bytes) => {
            let state = ExportedState::from_json(&bytes).map_err(refused)?;
            machine.import(state).map_err(refused)?;
            Some(machine.clock())
        }
        None => None,
    };
    file::probe(path).map_err(|error| DurableError::Write {
        path: path.to_path_buf(),
        error,
    })?;
    Ok((restored, lock))
}

impl Shared {
    fn progress(&self) -> MutexGuard<'_, Progress> {
        lock(&self.progress)
    }

    fn publish(&self) {
        let status = self.progress().status();
        self.status.send_replace(status);
    }

    fn close(&self) {
        self.progress().close();
        self.wake.notify_one();
        self.closing.notify_one();
    }

    /// Tells the observers a saved change.
    fn tell(&self, change: &Change) {
        let (before, observers) = {
            let mut told = lock(&self.told);
            let before = std::mem::replace(&mut told.ticks, change.ticks.clone());
            (before, told.observers.snapshot())
        };
        let changed: Vec<usize> = (0..change.ticks.len())
            .filter(|&s| before.get(s) != change.ticks.get(s))
            .collect();
        observers.clock_changed(&ClockChange {
            source: &self.machine,
            schema: &self.schema,
            before: &before,
            after: &change.ticks,
            changed: &changed,
            queue_tick: change.queue_tick,
            transition: None,
        });
    }

    /// Resolves once the changes up to `target` are saved, or with why they will not be.
    async fn saved(&self, target: u64) -> Result<(), MutationError> {
        let mut status = self.status.subscribe();
        let verdict = match status.wait_for(|s| s.verdict(target).is_some()).await {
            Ok(status) => status.verdict(target),
            // The sender lives in `self`: not while this runs.
            Err(_) => Some(Verdict::Ended),
        };
        match verdict {
            Some(Verdict::Saved) => Ok(()),
            Some(Verdict::Failed(error)) => Err(not_saved(&format!("saving failed: {error}"))),
            Some(Verdict::Ended) | None => Err(not_saved("the machine was closed first")),
        }
    }
}

/// The answer to a mutation that ran but whose state was not saved.
fn not_saved(why: &str) -> MutationError {
    MutationError::Refused(format!(
        "not acknowledged: the mutation ran, but the state after it was not saved ({why}); it is lost if the root restarts before a later save"
    ))
}

/// The machine's observer that hands each change to the writer.
struct Feed(Weak<Shared>);

impl Observer for Feed {
    fn clock_changed(&self, change: &ClockChange<'_>) {
        if let Some(shared) = self.0.upgrade() {
            shared.progress().hear(change.after, change.queue_tick);
            shared.wake.notify_one();
        }
    }
}

impl Drop for DurableMachine {
    fn drop(&mut self) {
        self.machine.unobserve(self.feed);
        // The writer saves what is pending and ends on its own.
        self.shared.close();
    }
}

impl std::fmt::Debug for DurableMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableMachine")
            .field("machine", &self.machine)
            .field("path", &self.shared.path)
            .field("restored", &self.restored)
            .finish()
    }
}

impl StateSource for DurableMachine {
    fn id(&self) -> &str {
        self.machine.id()
    }

    fn schema(&self) -> Arc<Schema> {
        self.machine.schema()
    }

    fn clock(&self) -> Vec<u64> {
        self.machine.clock()
    }

    fn tick_at(&self, idx: usize) -> u64 {
        self.machine.tick_at(idx)
    }

    fn queue_tick(&self) -> u64 {
        self.machine.queue_tick()
    }

    fn wait(&self, condition: Condition) -> When {
        self.machine.wait(condition)
    }

    fn parent_id(&self) -> Option<String> {
        self.machine.parent_id()
    }

    fn tags(&self) -> Vec<String> {
        self.machine.tags()
    }

    fn when_args(&self, state: &str, args: Args) -> When {
        self.machine.when_args(state, args)
    }

    fn err(&self) -> ErrFuture {
        self.machine.err()
    }

    /// Runs the mutation, then resolves once a save includes it (see the module docs).
    fn mutate(&self, mutation: Mutation) -> MutationFuture {
        if self.shared.progress().is_closed() {
            return Box::pin(std::future::ready(Err(MutationError::Disposed)));
        }
        let ran = self.machine.mutate(mutation);
        let shared = self.shared.clone();
        Box::pin(async move {
            let outcome = ran.await?;
            // The machine told its observers before the mutation's outcome came out: every
            // change it made, and those queued behind it, are heard by now.
            let target = shared.progress().heard();
            shared.saved(target).await.map(|()| outcome)
        })
    }

    /// Observers hear saved clocks only, with no transition; they start from the last one.
    fn observe(&self, observer: Arc<dyn Observer>) -> (ObserverId, Vec<u64>) {
        let mut told = lock(&self.shared.told);
        let id = told.observers.add(observer);
        (id, told.ticks.clone())
    }

    fn unobserve(&self, id: ObserverId) -> bool {
        lock(&self.shared.told).observers.remove(id)
    }

    /// Bound to the machine: tracers see its transitions, saved or not yet.
    fn bind_tracer(&self, tracer: Arc<dyn Tracer>) -> TracerId {
        self.machine.bind_tracer(tracer)
    }

    fn detach_tracer(&self, id: TracerId) -> bool {
        self.machine.detach_tracer(id)
    }

    fn tracers(&self) -> Vec<Arc<dyn Tracer>> {
        self.machine.tracers()
    }

    fn log_level(&self) -> LogLevel {
        self.machine.log_level()
    }

    fn set_log_level(&self, level: LogLevel) {
        self.machine.set_log_level(level);
    }

    fn set_logger(&self, logger: Option<Logger>) {
        self.machine.set_logger(logger);
    }

    fn set_log_args(&self, log_args: Option<LogArgs>) {
        self.machine.set_log_args(log_args);
    }

    fn log(&self, message: &str) {
        self.machine.log(message);
    }

    /// Disposes the machine and stops the writer once it has saved what is pending (as
    /// [`DurableMachine::close`] does, without waiting for it).
    fn dispose(&self) {
        self.machine.dispose();
        lock(&self.shared.told).observers.clear();
        self.shared.close();
    }

    fn on_dispose(&self, hook: DisposeHook) {
        self.machine.on_dispose(hook);
    }

    fn is_disposed(&self) -> bool {
        self.machine.is_disposed()
    }
}

#[cfg(test)]
mod tests;
