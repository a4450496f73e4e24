//! One transition of a local machine: resolve, negotiate, apply, finalize, notify; with the
//! machine's log, its tracers and its handler timeout watching each step.

use std::time::Duration;

use super::*;
use crate::machine::handlers::HandlerCall;
use crate::machine::log::LogLevel;
use crate::machine::tracer::{Step, StepKind, TransitionTrace, wanted};

/// The schema and the handler table a processing turn works with: taken once and kept while
/// the core still holds the same ones, so that a turn of many transitions does not count
/// references for each (set_schema is refused while a turn runs; binding replaces the table,
/// which the pointer comparison notices).
pub(super) struct Turn {
    schema: Arc<Schema>,
    handlers: Arc<HandlerTable>,
}

/// What a transition shares with its handlers, its log and its tracers.
struct Tx<'a> {
    machine: &'a Machine,
    schema: &'a Schema,
    mutation: &'a Mutation,
    handlers: &'a HandlerTable,
    before: &'a [u64],
    queue_tick: u64,
    level: LogLevel,
    /// Recorded only when a bound tracer follows this transition.
    steps: Option<Vec<Step>>,
}

impl Tx<'_> {
    fn step(&mut self, kind: StepKind, from: Option<usize>, to: Option<usize>) {
        if let Some(steps) = &mut self.steps {
            steps.push(Step { kind, from, to });
        }
    }

    fn trace<'t>(&'t self, after: &'t [u64], outcome: Option<Outcome>) -> TransitionTrace<'t> {
        TransitionTrace {
            machine: &self.machine.shared.id,
            schema: self.schema,
            mutation: Some(self.mutation),
            queue_tick: self.queue_tick,
            before: self.before,
            after,
            steps: self.steps.as_deref().unwrap_or(&[]),
            outcome,
        }
    }

    fn tracers(&self) -> impl Iterator<Item = &Arc<dyn Tracer>> {
        self.handlers.tracers().iter().map(|(_, t)| t)
    }

    fn log(&self, level: LogLevel, line: impl FnOnce() -> String) {
        if self.level >= level {
            self.machine.emit_log(level, &line());
        }
    }

    /// Runs one handler: tracers and the log around it, its panic caught, its time checked.
    fn call(
        &mut self,
        kind: HandlerKind,
        state: Option<usize>,
        to: Option<usize>,
        run: impl FnOnce() -> Result<bool, String>,
    ) -> Result<bool, String> {
        let call = HandlerCall::new(self.schema, kind, state, to);
        self.step(StepKind::Handler(kind), state, to);
        self.log(LogLevel::Everything, || format!("[handler] {call}"));
        if self.steps.is_some() {
            let trace = self.trace(self.before, None);
            self.tracers().for_each(|t| t.handler_start(&trace, &call));
        }
        let started = self.machine.shared.timing.as_ref().map(|t| (t.now)());
        let mut result = match catch_unwind(AssertUnwindSafe(run)) {
            Ok(result) => result,
            Err(panic) => Err(panic_message(panic.as_ref())),
        };
        if let (Some(timing), Some(started)) = (&self.machine.shared.timing, started) {
            let took = (timing.now)().saturating_sub(started);
            if took > timing.limit && result.is_ok() {
                result = Err(timeout_message(&call, took, timing.limit));
            }
        }
        if self.steps.is_some() {
            let trace = self.trace(self.before, None);
            let failure = result.as_ref().err().map(String::as_str);
            self.tracers()
                .for_each(|t| t.handler_end(&trace, &call, failure));
        }
        result
    }

    fn end(&self, after: &[u64], outcome: Outcome) -> Outcome {
        if self.steps.is_some() {
            let trace = self.trace(after, Some(outcome));
            self.tracers().for_each(|t| t.transition_end(&trace));
        }
        outcome
    }
}

fn timeout_message(call: &HandlerCall<'_>, took: Duration, limit: Duration) -> String {
    format!(
        "handler timeout: {call} ran for {took:?}, longer than the machine's handler timeout of \
         {limit:?}; move long work out of the handler (spawn it, bound to a state context)"
    )
}

impl Machine {
    /// Runs one transition: resolve, negotiate, apply, finalize, notify; taking a queue tick
    /// when `ticked` (see the module docs of `machine::local`). Returns the outcome and the
    /// queue tick after it.
    ///
    /// The core's lock is taken three times: to start (queue tick, schema, handlers, resolution,
    /// the clock before), to apply the plan, and to close (what final handlers undid, the auto
    /// mutation, the queue tick's waiters); handlers, observers and tracers run outside it.
    ///
    /// `held` is the core's lock when the caller holds it already (it took the mutation in).
    pub(super) fn transition(
        &self,
        turn: &mut Option<Turn>,
        mutation: &Mutation,
        ticked: bool,
        held: Option<MutexGuard<'_, Core>>,
    ) -> (Outcome, u64) {
        let (current, before, before_order, queue_tick, resolved) = {
            let mut core = held.unwrap_or_else(|| self.core());
            let core = &mut *core;
            let current: &Turn = match turn {
                Some(t)
                    if Arc::ptr_eq(&t.schema, &core.schema)
                        && Arc::ptr_eq(&t.handlers, &core.handlers) =>
                {
                    t
                }
                _ => turn.insert(Turn {
                    schema: core.schema.clone(),
                    handlers: core.handlers.clone(),
                }),
            };
            if ticked {
                // As in asyncmachine, the tick is taken when the mutation leaves the queue, so
                // the handlers of the transition already see it.
                core.queue_tick += 1;
            }
            // Resolved under the lock: a pure function of the clock and the last order,
            // cheaper than copying the order out for every transition.
            let order = Order {
                ticks: &core.ticks,
                active_order: &core.order,
                kind: mutation.kind,
                called: &mutation.states,
            };
            let buffers = core.spare_plan.take().unwrap_or_default();
            let resolved = resolve_in(
                &mut core.scratch,
                buffers,
                &core.schema,
                &order,
                mutation.auto,
            );
            let mut before = std::mem::take(&mut core.spare_ticks);
            before.clear();
            before.extend_from_slice(&core.ticks);
            // The active states in their order, for the from-to handlers only.
            let before_order = if core.handlers.has_from_to() {
                core.order.clone()
            } else {
                Vec::new()
            };
            (current, before, before_order, core.queue_tick, resolved)
        };
        let schema: &Schema = &current.schema;
        let handlers: &HandlerTable = &current.handlers;
        let mut tx = Tx {
            machine: self,
            schema,
            mutation,
            handlers,
            before: &before,
            queue_tick,
            level: self.log_level(),
            steps: wanted(handlers.tracers()).then(Vec::new),
        };
        self.log_mutation(&tx);
        for &s in &mutation.states {
            tx.step(StepKind::Requested, None, Some(s));
        }
        let mut plan = match resolved {
            Ok(plan) => plan,
            Err(reason) => {
                tx.step(StepKind::Cancel, None, None);
                self.trace_init(&tx);
                return self.canceled(&tx, ticked, &reason);
            }
        };
        self.record_plan(&mut tx, &plan);
        self.trace_init(&tx);
        if !plan.changes_clock() && !handlers.runs_unchanged() {
            let outcome = tx.end(&before, Outcome::Executed);
            let (_, tick) = self.close(ticked, |core| {
                std::mem::swap(&mut core.order, &mut plan.targets);
                core.spare_plan = Some(plan);
                core.spare_ticks = before;
            });
            return (outcome, tick);
        }
        if tx.steps.is_some() {
            let trace = tx.trace(&before, None);
            tx.tracers().for_each(|t| t.transition_start(&trace));
        }

        let rejected = match self.negotiate(&mut tx, &plan, &before_order) {
            Ok(rejected) => rejected,
            Err(reason) => return self.canceled(&tx, ticked, &reason),
        };
        // Partial acceptance of an auto mutation: resolve again without the refused states, so
        // that what they would have implied or removed goes too. Handlers do not run again.
        let plan = if rejected.is_empty() {
            plan
        } else {
            let called: Vec<usize> = mutation
                .states
                .iter()
                .copied()
                .filter(|s| !rejected.contains(s))
                .collect();
            let again = {
                let mut core = self.core();
                let core = &mut *core;
                let order = Order {
                    ticks: &before,
                    active_order: &core.order,
                    kind: mutation.kind,
                    called: &called,
                };
                resolve_in(&mut core.scratch, plan, schema, &order, true)
            };
            match again {
                Ok(plan) if plan.changes_clock() => plan,
                _ => {
                    let reason = CancelReason::Refused {
                        state: None,
                        handler: HandlerKind::Enter.name(),
                    };
                    return self.canceled(&tx, ticked, &reason);
                }
            }
        };
        let arriving = plan.arriving_states();
        let changes = plan.changes_clock();

        let observers = {
            let mut core = self.core();
            let core = &mut *core;
            if changes {
                plan.apply(&mut core.ticks);
                core.waiters.clock_changed(&core.ticks, plan.changed());
                core.waiters
                    .activated(arriving.iter().copied(), &mutation.args);
            }
            core.order.clone_from(&plan.targets);
            // No reference counted when nobody observes.
            (!core.observers.is_empty()).then(|| core.observers.snapshot())
        };

        let (stopped, unfinished) = self.finalize(&mut tx, &plan, arriving);
        // Copied out (rarely more than none) so that the plan's buffers can go back.
        let unfinished = unfinished.to_vec();
        let outcome = if stopped {
            Outcome::Canceled
        } else {
            Outcome::Executed
        };
        // The clock after and what changed, for whoever looks: observers, the log, tracers.
        let watched = observers.is_some() || tx.level >= LogLevel::Changes || tx.steps.is_some();
        let undo_and_follow = |core: &mut Core| {
            for &s in &unfinished {
                // Arrived states are active (odd ticks): one more tick deactivates them.
                core.ticks[s] += 1;
            }
            if !unfinished.is_empty() {
                core.order.retain(|s| !unfinished.contains(s));
                core.waiters
                    .clock_changed(&core.ticks, unfinished.iter().copied());
            }
            if changes && !stopped && !mutation.auto {
                queue_auto(core);
            }
        };
        if !watched {
            // Nobody looks at the clock after: the buffers go back in the closing turn.
            let outcome = tx.end(&[], outcome);
            let ((), tick) = self.close(ticked, |core| {
                undo_and_follow(core);
                core.spare_plan = Some(plan);
                core.spare_ticks = before;
            });
            return (outcome, tick);
        }
        let (after, tick) = self.close(ticked, |core| {
            undo_and_follow(core);
            core.spare_plan = Some(plan);
            core.ticks.clone()
        });
        let changed: Vec<usize> = (0..after.len())
            .filter(|&s| after[s] != before[s])
            .collect();
        self.log_changes(&tx, &after, &changed);
        if let Some(observers) = observers.filter(|_| !changed.is_empty()) {
            let transition = Transition {
                kind: mutation.kind,
                called: &mutation.states,
                args: &mutation.args,
                auto: mutation.auto,
            };
            observers.clock_changed(&ClockChange {
                source: self,
                schema,
                before: &before,
                after: &after,
                changed: &changed,
                queue_tick,
                transition: Some(&transition),
            });
        }
        (tx.end(&after, outcome), tick)
    }

    /// The transition's last turn under the core's lock: `last`, then the queue tick's waiters
    /// when the transition took a tick. Returns what `last` returned and the queue tick.
    fn close<T>(&self, ticked: bool, last: impl FnOnce(&mut Core) -> T) -> (T, u64) {
        let mut core = self.core();
        let out = last(&mut core);
        if ticked {
            let now = core.queue_tick;
            core.waiters.queue_advanced(now);
        }
        (out, core.queue_tick)
    }

    fn canceled(&self, tx: &Tx<'_>, ticked: bool, reason: &CancelReason) -> (Outcome, u64) {
        if !tx.mutation.auto {
            debug!(machine = %self.shared.id, kind = %tx.mutation.kind, %reason, "mutation canceled");
        }
        tx.log(LogLevel::Ops, || {
            let called: Vec<&str> = tx
                .mutation
                .states
                .iter()
                .map(|&s| tx.schema.name(s))
                .collect();
            format!("[cancel] ({}) {reason}", called.join(" "))
        });
        let ((), tick) = self.close(ticked, |_| ());
        (tx.end(tx.before, Outcome::Canceled), tick)
    }

    /// Runs the negotiation handlers in asyncmachine's order (see [`crate::machine::handlers`]).
    /// Returns the auto states refused in an auto mutation (asyncmachine accepts the rest of
    /// it), or why the transition is canceled.
    fn negotiate(
        &self,
        tx: &mut Tx<'_>,
        plan: &Plan,
        before_order: &[usize],
    ) -> Result<Vec<usize>, CancelReason> {
        let schema = tx.schema;
        let handlers = tx.handlers;
        let mutation = tx.mutation;
        let mut rejected = Vec::new();
        // Self handlers: the targets active before, except in a remove.
        let self_kind = handlers.has_self() && mutation.kind != MutationKind::Remove;
        let before = tx.before;
        let candidates = if self_kind { &plan.targets[..] } else { &[] };
        let selves = candidates
            .iter()
            .filter(move |&&s| is_active(before[s]))
            .map(|&s| (HandlerKind::SelfEnter, Some(s), None));
        let pairs = before_order.iter().flat_map(|&from| {
            let to = if handlers.has_from(from) {
                &plan.targets[..]
            } else {
                &[]
            };
            to.iter()
                .filter(move |&&to| to != from)
                .map(move |&to| (HandlerKind::FromTo, Some(from), Some(to)))
        });
        let steps = plan
            .exiting
            .iter()
            .map(|&s| (HandlerKind::Exit, Some(s), None))
            .chain(plan.arriving().map(|s| (HandlerKind::Enter, Some(s), None)))
            .chain(selves)
            .chain(pairs)
            .chain(std::iter::once((HandlerKind::AnyEnter, None, None)));
        for (kind, state, to) in steps {
            // The state whose arrival a refusal would drop from an auto mutation.
            let target = if kind == HandlerKind::FromTo {
                to
            } else {
                state
            };
            if target.is_some_and(|s| rejected.contains(&s)) {
                continue;
            }
            if kind == HandlerKind::AnyEnter && !rejected.is_empty() {
                let mut accepted = plan.targets.iter().filter(|s| !rejected.contains(s));
                if !accepted.any(|s| mutation.states.contains(s)) {
                    return Err(CancelReason::Refused {
                        state: None,
                        handler: HandlerKind::Enter.name(),
                    });
                }
            }
            for f in handlers.negotiation(kind, state, to) {
                let event = self.event(tx, plan, kind, state, to);
                match tx.call(kind, state, to, || f(&event)) {
                    Ok(true) => continue,
                    outcome => {
                        let failure = outcome.err();
                        if let Some(message) = &failure {
                            self.raise(&event, kind, message.clone());
                        }
                        let refusing = matches!(
                            kind,
                            HandlerKind::Enter | HandlerKind::SelfEnter | HandlerKind::FromTo
                        );
                        if let Some(s) =
                            target.filter(|&s| refusing && mutation.auto && schema.resolved(s).auto)
                        {
                            rejected.push(s);
                            break;
                        }
                        tx.step(StepKind::Cancel, state, to);
                        let handler = kind.name();
                        let state = state.map(|s| schema.name(s).to_owned());
                        tx.log(LogLevel::Ops, || {
                            let call = HandlerCall::new(schema, kind, event.state, event.to);
                            format!("[cancel] by {call}")
                        });
                        return Err(match failure {
                            None => CancelReason::Refused { state, handler },
                            Some(_) => CancelReason::HandlerFailed { state, handler },
                        });
                    }
                }
            }
        }
        Ok(rejected)
    }

    /// Runs the final handlers: `end` of left states, `state` of arrived ones, `any_state`.
    /// As in asyncmachine, a failing one stops the transition there: later final handlers and
    /// the auto mutation do not run, and when it was the `state` handler of an arriving state,
    /// that state and the ones arriving after it are deactivated again (their handlers never
    /// completed). Returns whether it stopped, and those states.
    fn finalize<'p>(
        &self,
        tx: &mut Tx<'_>,
        plan: &Plan,
        arriving: &'p [usize],
    ) -> (bool, &'p [usize]) {
        let steps = plan
            .exiting
            .iter()
            .map(|&s| (HandlerKind::End, Some(s)))
            .chain(arriving.iter().map(|&s| (HandlerKind::State, Some(s))))
            .chain(std::iter::once((HandlerKind::AnyState, None)));
        let handlers = tx.handlers;
        for (kind, state) in steps {
            for f in handlers.finals(kind, state) {
                let event = self.event(tx, plan, kind, state, None);
                let Err(message) = tx.call(kind, state, None, || f(&event).map(|()| true)) else {
                    continue;
                };
                self.raise(&event, kind, message);
                let unfinished = match (kind, state) {
                    (HandlerKind::State, Some(s)) => {
                        let at = arriving
                            .iter()
                            .position(|&a| a == s)
                            .unwrap_or(arriving.len());
                        &arriving[at..]
                    }
                    _ => &[],
                };
                return (true, unfinished);
            }
        }
        (false, &[])
    }

    fn event<'e>(
        &'e self,
        tx: &Tx<'e>,
        plan: &'e Plan,
        handler: HandlerKind,
        state: Option<usize>,
        to: Option<usize>,
    ) -> Event<'e> {
        Event {
            machine: self,
            schema: tx.schema,
            mutation: tx.mutation,
            plan,
            before: tx.before,
            handler,
            state,
            to,
        }
    }

    /// Queues the activation of `Exception` for a failed handler, with the error as argument,
    /// at the head of the queue (as asyncmachine does), so it runs next. Failures while
    /// handling an `Exception` mutation are only logged, so a failing exception handler cannot
    /// loop.
    pub(super) fn raise(&self, event: &Event<'_>, kind: HandlerKind, message: String) {
        let schema = event.schema;
        let exception = schema.exception();
        let state = event.state.map(|s| schema.name(s));
        error!(machine = %self.shared.id, state, handler = kind.name(), error = %message, "handler failed");
        self.core().last_error = Some(message.clone());
        if event.mutation.kind != MutationKind::Remove && event.mutation.states.contains(&exception)
        {
            return;
        }
        let mut args = Args::new()
            .with("error", message)
            .with("handler", kind.name());
        if let Some(state) = state {
            args.insert("state", state);
        }
        // Errors bypass the queue limit: losing one would hide the failure.
        self.core()
            .queue
            .push_front(Mutation::new(MutationKind::Add, vec![exception], args).into());
    }

    // ----- what the log and the tracers see -----

    fn log_mutation(&self, tx: &Tx<'_>) {
        let level = if tx.mutation.auto {
            LogLevel::Decisions
        } else {
            LogLevel::Ops
        };
        if tx.level >= level {
            let log = &self.shared.log;
            log.mutation(&self.shared.id, level, tx.schema, tx.mutation);
        }
    }

    /// The steps the resolution decided, and the states relations implied (logged).
    fn record_plan(&self, tx: &mut Tx<'_>, plan: &Plan) {
        if tx.level >= LogLevel::Decisions {
            let implied: Vec<&str> = plan
                .entering
                .iter()
                .filter(|s| !tx.mutation.states.contains(s))
                .map(|&s| tx.schema.name(s))
                .collect();
            if !implied.is_empty() {
                tx.log(LogLevel::Decisions, || {
                    format!("[implied] {}", implied.join(" "))
                });
            }
        }
        if tx.steps.is_none() {
            return;
        }
        if tx.mutation.kind == MutationKind::Remove {
            for &s in &tx.mutation.states {
                if !is_active(tx.before[s]) {
                    tx.step(StepKind::RemoveNotActive, None, Some(s));
                }
            }
        }
        for &s in &plan.exiting {
            tx.step(StepKind::Remove, None, Some(s));
        }
        for s in plan.arriving() {
            tx.step(StepKind::Set, None, Some(s));
        }
    }

    fn trace_init(&self, tx: &Tx<'_>) {
        if tx.steps.is_some() {
            let trace = tx.trace(tx.before, None);
            tx.tracers().for_each(|t| t.transition_init(&trace));
        }
    }

    fn log_changes(&self, tx: &Tx<'_>, after: &[u64], changed: &[usize]) {
        if tx.level >= LogLevel::Changes {
            self.shared
                .log
                .changes(&self.shared.id, tx.schema, after, changed);
        }
    }
}

/// Prepends an auto mutation of every inactive auto state, when there are any.
fn queue_auto(core: &mut Core) {
    let schema = &core.schema;
    let states: Vec<usize> = (0..schema.len())
        .filter(|&s| schema.resolved(s).auto && !is_active(core.ticks[s]))
        .collect();
    if !states.is_empty() {
        let mut auto = Mutation::new(MutationKind::Add, states, Args::new());
        auto.auto = true;
        core.queue.push_front(auto.into());
    }
}
