//! What a running machine answers beyond its clock: errors, waits on arguments and the queue,
//! and dry runs of the queue and the relations.

use super::*;
use crate::machine::source::{ERROR_ARG, err_mutation};

impl Machine {
    // ----- errors -----

    /// Activates `Exception` with the error as its `error` argument (merged into `args`), as a
    /// failing handler does (Go's `AddErr`). Like any mutation, it is queued when the machine
    /// is busy. The error becomes [`Machine::last_error`]. The synchronous form of
    /// [`StateSource::add_err`], which a mirror sends to its source.
    pub fn add_err(
        &self,
        error: impl std::fmt::Display,
        args: Args,
    ) -> Result<Outcome, MutationError> {
        self.add_err_state(EXCEPTION, error, args)
    }

    /// Activates an error state together with `Exception` (Go's `AddErrState`), the error as the
    /// `error` argument: `state` is typically one that requires `Exception`, such as a
    /// network-error state, so that handlers can tell kinds of failure apart. The synchronous
    /// form of [`StateSource::add_err_state`].
    pub fn add_err_state(
        &self,
        state: &str,
        error: impl std::fmt::Display,
        args: Args,
    ) -> Result<Outcome, MutationError> {
        self.mutate_now(err_mutation(
            &self.schema_ref(),
            state,
            error.to_string(),
            args,
        )?)
    }

    /// The last error: of [`Machine::add_err`] or a failing handler (Go's `Err()`). It stays
    /// after `Exception` is removed, until the next error. [`StateSource::err`] answers it,
    /// to a mirror's caller too.
    pub fn last_error(&self) -> Option<String> {
        self.core().last_error.clone()
    }

    // ----- waits only a running machine can answer -----

    /// The local side of [`StateSource::when_args`]: a waiter on the arguments of the state's
    /// activations.
    pub(super) fn wait_for_args(&self, state: &str, args: Args) -> When {
        let Some(s) = self.schema_ref().index(state) else {
            return When::failed(WaitError::UnknownState(state.to_owned()));
        };
        let registration = self.core().waiters.register_args(s, args);
        make_when(self.waiter_host(), registration)
    }

    /// Resolves when the queue tick reaches `tick`: the mutation of that [`Receipt`] has been
    /// processed (Go's `WhenQueue`). At once when it already has.
    pub fn when_queue(&self, tick: u64) -> When {
        let mut core = self.core();
        let core = &mut *core;
        let registration = core.waiters.register_queue_tick(core.queue_tick, tick);
        make_when(self.waiter_host(), registration)
    }

    /// Resolves when the running queue is empty (Go's `WhenQueueEnds`); at once when no
    /// mutation is running.
    pub fn when_queue_ends(&self) -> When {
        let mut core = self.core();
        let core = &mut *core;
        let registration = core.waiters.register_queue_ends(core.processing);
        make_when(self.waiter_host(), registration)
    }

    pub(super) fn waiter_host(&self) -> Weak<dyn WaiterHost> {
        Arc::downgrade(&self.shared) as Weak<dyn WaiterHost>
    }

    // ----- the queue -----

    /// The position in the queue of the first waiting mutation of `kind` whose called states
    /// include all of `states` (Go's `IsQueued` with its defaults: arguments and extra
    /// states allowed); `None` when there is none, or a name is unknown.
    pub fn find_queued(&self, kind: MutationKind, states: &[&str]) -> Option<usize> {
        let idx = self.schema_ref().indices(states).ok()?;
        let core = self.core();
        core.queue.iter().position(|q| {
            q.mutation()
                .is_some_and(|m| m.kind == kind && idx.iter().all(|s| m.states.contains(s)))
        })
    }

    /// Whether a waiting mutation will activate all of `states` (called, not implied ones;
    /// Go's `WillBe`).
    pub fn will_be(&self, states: &[&str]) -> bool {
        self.find_queued(MutationKind::Add, states).is_some()
    }

    /// Whether a waiting mutation will deactivate all of `states` (called ones; Go's
    /// `WillBeRemoved`).
    pub fn will_be_removed(&self, states: &[&str]) -> bool {
        self.find_queued(MutationKind::Remove, states).is_some()
    }

    /// A dry run of [`Machine::add`]: `Executed` when the relations would let it through
    /// from the current clock, `Canceled` when not; nothing is applied and no handler runs
    /// (see the module docs for how this differs from Go's `CanAdd`).
    pub fn can_add(&self, states: &[&str]) -> Result<Outcome, MutationError> {
        self.dry_run(MutationKind::Add, states)
    }

    /// A dry run of [`Machine::remove`]; see [`Machine::can_add`].
    pub fn can_remove(&self, states: &[&str]) -> Result<Outcome, MutationError> {
        self.dry_run(MutationKind::Remove, states)
    }

    fn dry_run(&self, kind: MutationKind, states: &[&str]) -> Result<Outcome, MutationError> {
        let mutation = self.named(kind, states, Args::new())?;
        let core = self.core();
        if core.disposed {
            return Err(MutationError::Disposed);
        }
        Ok(
            match resolve(
                &core.schema,
                &core.ticks,
                &core.order,
                kind,
                &mutation.states,
                false,
            ) {
                Ok(_) => Outcome::Executed,
                Err(_) => Outcome::Canceled,
            },
        )
    }
}

/// Keeps the error of a mutation that activates `Exception` with an `error` argument as the
/// last error, when it is taken in (as Go's `AddErrState` keeps it before adding):
/// [`StateSource::add_err`] is such a mutation, wherever it comes from (a mirror's too), so
/// the root of a tree knows the errors added through its mirrors.
pub(super) fn note_error(core: &mut Core, mutation: &Mutation) {
    let exception = core.schema.exception();
    if mutation.kind == MutationKind::Remove || !mutation.states.contains(&exception) {
        return;
    }
    if let Some(error) = mutation.args.get(ERROR_ARG) {
        core.last_error = Some(match error.as_str() {
            Some(text) => text.to_owned(),
            None => error.to_string(),
        });
    }
}
