//! What a machine runs and who watches it: binding handlers (one at a time or as a set) and
//! tracers, and the machine's own log.

use super::*;

impl Machine {
    // ----- handlers -----

    /// Binds a set of handlers at once (Go's `BindHandlers`); nothing is bound when a state
    /// name is unknown. The [`Binding`] unbinds the set again.
    ///
    /// Handlers run in the call that mutates: on a served machine, on the server's runtime
    /// worker that read the mutation. A handler that blocks holds that worker and the tasks
    /// queued on it; blocking work belongs on `tokio::task::spawn_blocking` or a thread of its
    /// own (or, briefly, inside `tokio::task::block_in_place`).
    pub fn bind(&self, handlers: Handlers) -> Result<Binding, UnknownState> {
        let binding = self.shared.next_binding.fetch_add(1, Ordering::Relaxed);
        let mut core = self.core();
        let core = &mut *core;
        // Built aside, so that a set with an unknown state leaves the table as it was.
        let mut next = (*core.handlers).clone();
        next.bind(&core.schema, binding, handlers)?;
        core.handlers = Arc::new(next);
        Ok(Binding(binding))
    }

    /// Unbinds a set bound with [`Machine::bind`] (Go's `DetachHandlers`); whether it was
    /// bound. A transition that is running finishes with the handlers it started with.
    pub fn unbind(&self, binding: Binding) -> bool {
        Arc::make_mut(&mut self.core().handlers).unbind(binding.0)
    }

    /// Handlers bound, of every kind.
    pub fn handler_count(&self) -> usize {
        self.core().handlers.len()
    }

    /// Negotiation handler of a state that is about to become active (or, for a multi state,
    /// active again). Return `false` (or an error) to cancel the transition.
    pub fn on_enter<F, R>(&self, state: &str, f: F) -> Result<(), UnknownState>
    where
        F: Fn(&Event<'_>) -> R + Send + Sync + 'static,
        R: Verdict,
    {
        self.bind(Handlers::new().on_enter(state, f)).map(drop)
    }

    /// Negotiation handler of a state that is about to become inactive.
    pub fn on_exit<F, R>(&self, state: &str, f: F) -> Result<(), UnknownState>
    where
        F: Fn(&Event<'_>) -> R + Send + Sync + 'static,
        R: Verdict,
    {
        self.bind(Handlers::new().on_exit(state, f)).map(drop)
    }

    /// Negotiation handler of an active state that is a target again (Go's `AA`); see
    /// [`Handlers::on_self`].
    pub fn on_self<F, R>(&self, state: &str, f: F) -> Result<(), UnknownState>
    where
        F: Fn(&Event<'_>) -> R + Send + Sync + 'static,
        R: Verdict,
    {
        self.bind(Handlers::new().on_self(state, f)).map(drop)
    }

    /// Negotiation handler of a state active before a transition that targets `to` (Go's
    /// `AB`); see [`Handlers::on_from_to`].
    pub fn on_from_to<F, R>(&self, from: &str, to: &str, f: F) -> Result<(), UnknownState>
    where
        F: Fn(&Event<'_>) -> R + Send + Sync + 'static,
        R: Verdict,
    {
        self.bind(Handlers::new().on_from_to(from, to, f)).map(drop)
    }

    /// Final handler of a state that became active.
    pub fn on_state<F, R>(&self, state: &str, f: F) -> Result<(), UnknownState>
    where
        F: Fn(&Event<'_>) -> R + Send + Sync + 'static,
        R: Completion,
    {
        self.bind(Handlers::new().on_state(state, f)).map(drop)
    }

    /// Final handler of a state that became inactive.
    pub fn on_end<F, R>(&self, state: &str, f: F) -> Result<(), UnknownState>
    where
        F: Fn(&Event<'_>) -> R + Send + Sync + 'static,
        R: Completion,
    {
        self.bind(Handlers::new().on_end(state, f)).map(drop)
    }

    /// Negotiation handler of every transition; runs after the per-state negotiation handlers,
    /// and only when none of them refused.
    pub fn on_any_enter<F, R>(&self, f: F)
    where
        F: Fn(&Event<'_>) -> R + Send + Sync + 'static,
        R: Verdict,
    {
        // A set without state names always binds.
        let _ = self.bind(Handlers::new().on_any_enter(f));
    }

    /// Final handler of every accepted transition; runs after the per-state ones.
    pub fn on_any_state<F, R>(&self, f: F)
    where
        F: Fn(&Event<'_>) -> R + Send + Sync + 'static,
        R: Completion,
    {
        let _ = self.bind(Handlers::new().on_any_state(f));
    }

    // ----- tracers -----

    /// Binds a tracer (Go's `BindTracer`); its `machine_init` runs now.
    pub fn bind_tracer(&self, tracer: Arc<dyn Tracer>) -> TracerId {
        let id = self.shared.next_binding.fetch_add(1, Ordering::Relaxed);
        Arc::make_mut(&mut self.core().handlers).bind_tracer(id, tracer.clone());
        tracer.machine_init(self);
        TracerId(id)
    }

    /// Detaches a tracer (Go's `DetachTracer`); whether it was bound.
    pub fn detach_tracer(&self, id: TracerId) -> bool {
        Arc::make_mut(&mut self.core().handlers).detach_tracer(id.0)
    }

    /// The tracers bound (Go's `Tracers`).
    pub fn tracers(&self) -> Vec<Arc<dyn Tracer>> {
        let table = self.core().handlers.clone();
        table.tracers().iter().map(|(_, t)| t.clone()).collect()
    }

    // ----- the machine's log -----

    /// How much the machine logs now (Go's `GetLogLevel`).
    pub fn log_level(&self) -> LogLevel {
        self.shared.log.level()
    }

    /// How much the machine logs from now on (Go's `SetLogLevel`).
    pub fn set_log_level(&self, level: LogLevel) {
        self.shared.log.set_level(level);
    }

    /// Where the log goes: a function of the level and the line (Go's `SetLogger`); `None`
    /// goes back to `tracing`.
    pub fn set_logger(&self, logger: Option<Logger>) {
        self.shared.log.set_logger(logger);
    }

    /// Which arguments mutation lines show (Go's log-args mapper); `None` shows none.
    pub fn set_log_args(&self, log_args: Option<LogArgs>) {
        self.shared.log.set_args(log_args);
    }

    /// A line of the user's in the machine's log, at [`LogLevel::External`] (Go's `Log`).
    /// Lines are single: line breaks become spaces.
    pub fn log(&self, message: &str) {
        if !self.is_disposed() {
            self.shared.log.external(&self.shared.id, message);
        }
    }

    pub(super) fn emit_log(&self, level: LogLevel, line: &str) {
        self.shared.log.emit(&self.shared.id, level, line);
    }
}
