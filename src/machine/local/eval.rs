//! Running a closure in the machine's turn (Go's `Eval`): between transitions, never beside
//! one, so the closure sees no transition half done and needs no lock of its own.
//!
//! When the machine is idle, the closure runs at once on the caller's thread. When another
//! thread is running transitions, it goes to the head of the queue (asyncmachine prepends
//! evals; they take no queue tick) and the caller's [`EvalFuture`] resolves once it ran.
//! Dropping the future before then cancels it (asyncmachine's eval context). From the thread
//! that runs the transitions it cannot wait for its own turn: from inside another eval it
//! answers `false` (a nested eval), and from inside a handler it answers `false` and raises
//! an error in `Exception`, as asyncmachine does.

use std::sync::atomic::AtomicBool;

use super::*;

/// A closure waiting in the queue, and where its caller waits.
pub(super) struct EvalJob {
    source: String,
    run: Box<dyn FnOnce() + Send>,
    slot: Arc<EvalSlot>,
}

impl EvalJob {
    /// The machine went away before the closure's turn.
    pub(super) fn abandon(self) {
        self.slot.complete(false);
    }
}

#[derive(Default)]
struct EvalSlot {
    ran: Mutex<Option<bool>>,
    waker: Mutex<Option<Waker>>,
    canceled: AtomicBool,
}

impl EvalSlot {
    fn complete(&self, ran: bool) {
        *lock(&self.ran) = Some(ran);
        if let Some(waker) = lock(&self.waker).take() {
            waker.wake();
        }
    }
}

/// Resolves with whether the closure ran; dropping it first cancels the closure.
pub struct EvalFuture {
    slot: Arc<EvalSlot>,
}

impl EvalFuture {
    fn ready(ran: bool) -> Self {
        let slot = EvalSlot::default();
        *lock(&slot.ran) = Some(ran);
        EvalFuture {
            slot: Arc::new(slot),
        }
    }
}

impl Future for EvalFuture {
    type Output = bool;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<bool> {
        if let Some(ran) = *lock(&self.slot.ran) {
            return Poll::Ready(ran);
        }
        *lock(&self.slot.waker) = Some(cx.waker().clone());
        match *lock(&self.slot.ran) {
            Some(ran) => Poll::Ready(ran),
            None => Poll::Pending,
        }
    }
}

impl Drop for EvalFuture {
    fn drop(&mut self) {
        if lock(&self.slot.ran).is_none() {
            self.slot.canceled.store(true, Ordering::Relaxed);
        }
    }
}

impl std::fmt::Debug for EvalFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EvalFuture")
            .field("ran", &*lock(&self.slot.ran))
            .finish()
    }
}

impl Machine {
    /// Runs `f` in the machine's turn (Go's `Eval`); see the module docs of
    /// `machine::local::eval`. `source` names the caller in the log and in errors.
    pub fn eval(&self, source: &str, f: impl FnOnce() + Send + 'static) -> EvalFuture {
        let me = std::thread::current().id();
        {
            let mut core = self.core();
            if core.disposed {
                return EvalFuture::ready(false);
            }
            if core.processing && core.processing_thread == Some(me) {
                let in_eval = core.in_eval;
                drop(core);
                if !in_eval {
                    let message = format!(
                        "eval {source:?} called from a handler: a handler runs in the machine's \
                         turn already; do the work in the handler, or spawn it"
                    );
                    self.add_err(&message, Args::new()).ok();
                }
                debug!(machine = %self.shared.id, source, "nested eval refused");
                return EvalFuture::ready(false);
            }
            if core.processing {
                let slot = Arc::new(EvalSlot::default());
                core.queue.push_front(Queued {
                    item: Item::Eval(EvalJob {
                        source: source.to_owned(),
                        run: Box::new(f),
                        slot: slot.clone(),
                    }),
                    done: Vec::new(),
                    tick: None,
                });
                return EvalFuture { slot };
            }
            core.start_processing();
        }
        let slot = Arc::new(EvalSlot::default());
        self.process(|_| {
            self.run_eval(EvalJob {
                source: source.to_owned(),
                run: Box::new(f),
                slot: slot.clone(),
            })
        });
        EvalFuture { slot }
    }

    /// Runs a closure in the processing thread's turn, unless its caller went away.
    pub(super) fn run_eval(&self, job: EvalJob) {
        if job.slot.canceled.load(Ordering::Relaxed) {
            return;
        }
        self.core().in_eval = true;
        let outcome = catch_unwind(AssertUnwindSafe(job.run));
        self.core().in_eval = false;
        if self.log_level() >= LogLevel::Ops {
            self.emit_log(LogLevel::Ops, &format!("[eval] {}", job.source));
        }
        match outcome {
            Ok(()) => job.slot.complete(true),
            Err(panic) => {
                let message = format!(
                    "eval {:?} failed: {}",
                    job.source,
                    panic_message(panic.as_ref())
                );
                error!(machine = %self.shared.id, source = %job.source, error = %message, "eval failed");
                // The error goes to Exception, queued first like a failing handler's.
                self.core().last_error = Some(message.clone());
                let exception = self.schema_ref().exception();
                let args = Args::new().with("error", message).with("handler", "eval");
                self.core()
                    .queue
                    .push_front(Mutation::new(MutationKind::Add, vec![exception], args).into());
                job.slot.complete(false);
            }
        }
    }
}
