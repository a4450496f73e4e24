//! Waiters: futures and state contexts that resolve from the clock alone.
//!
//! A `WaiterSet` lives beside a clock (in a machine or a mirror) under the same lock, so a
//! waiter is checked against exactly the clocks that clock goes through and never misses one.
//! Waiters are indexed by the states they watch: a transition only looks at the waiters of the
//! states whose ticks it changed, so thousands of idle waiters cost nothing per transition.
//! Wakers are plain `std::task::Waker`s: any executor can poll these futures.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll, Waker};

use super::resolve::is_active;
use super::value::Args;

/// Why a wait ended without its condition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WaitError {
    /// A state named in the wait is not in the schema.
    #[error("unknown state {0:?}; check the name against the schema")]
    UnknownState(String),
    /// The machine (or mirror) was disposed before the condition held.
    #[error("the machine was disposed while waiting")]
    Disposed,
    /// The cancellation the wait was bound to (see [`When::until`]) fired first.
    #[error("the wait was canceled before its condition held")]
    Canceled,
    /// The source (or a node on the way to it) refused a wait it answers itself, such as a
    /// mirror's `when_args`: the state is not one this client may see, or too many of its
    /// waits are pending there.
    #[error("the source refused the wait: {0}")]
    Refused(String),
}

/// What a waiter waits for, by state position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// All of these states are active.
    Active(Vec<usize>),
    /// None of these states is active.
    Inactive(Vec<usize>),
    /// Each state's tick has reached at least the given tick.
    TicksAtLeast(Vec<(usize, u64)>),
    /// The state's tick differs from the given one (a state context).
    TickChanged(usize, u64),
    /// The machine is disposed: never holds for a clock; the waiter resolves (with `Ok`)
    /// when its waiter set is closed.
    Disposed,
}

impl Condition {
    /// Whether the condition holds for this clock (one tick per state position; the positions
    /// must be within it).
    pub fn holds(&self, ticks: &[u64]) -> bool {
        match self {
            Condition::Active(states) => states.iter().all(|&s| is_active(ticks[s])),
            Condition::Inactive(states) => states.iter().all(|&s| !is_active(ticks[s])),
            Condition::TicksAtLeast(pairs) => pairs.iter().all(|&(s, t)| ticks[s] >= t),
            Condition::TickChanged(s, t) => ticks[*s] != *t,
            Condition::Disposed => false,
        }
    }

    fn states(&self) -> Vec<usize> {
        match self {
            Condition::Active(states) | Condition::Inactive(states) => states.clone(),
            Condition::TicksAtLeast(pairs) => pairs.iter().map(|&(s, _)| s).collect(),
            Condition::TickChanged(s, _) => vec![*s],
            Condition::Disposed => Vec::new(),
        }
    }
}

const PENDING: u8 = 0;
const FIRED: u8 = 1;
const CLOSED: u8 = 2;
/// Ended with the error in the signal's `error`.
const FAILED: u8 = 3;

/// A one-shot signal shared by a waiter's entry and its future(s).
#[derive(Debug)]
pub(crate) struct Signal {
    state: AtomicU8,
    wakers: Mutex<Vec<Waker>>,
    /// Why a remote wait failed, set before the state becomes [`FAILED`].
    error: Mutex<Option<WaitError>>,
}

impl Signal {
    fn new(state: u8) -> Arc<Self> {
        Arc::new(Signal {
            state: AtomicU8::new(state),
            wakers: Mutex::new(Vec::new()),
            error: Mutex::new(None),
        })
    }

    /// Ends the wait with `error` (unless it ended already).
    fn fail(&self, error: WaitError) {
        if self.state() == PENDING {
            *self.error.lock().unwrap_or_else(PoisonError::into_inner) = Some(error);
            self.fire(FAILED);
        }
    }

    /// What a waiter's future answers for an ended state.
    fn outcome(&self, state: u8) -> Result<(), WaitError> {
        match state {
            FIRED => Ok(()),
            FAILED => Err(self
                .error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
                .unwrap_or(WaitError::Disposed)),
            _ => Err(WaitError::Disposed),
        }
    }

    fn fire(&self, state: u8) {
        if self
            .state
            .compare_exchange(PENDING, state, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            let wakers =
                std::mem::take(&mut *self.wakers.lock().unwrap_or_else(PoisonError::into_inner));
            for w in wakers {
                w.wake();
            }
        }
    }

    fn state(&self) -> u8 {
        self.state.load(Ordering::Acquire)
    }

    fn poll(&self, cx: &mut Context<'_>) -> Poll<u8> {
        let state = self.state();
        if state != PENDING {
            return Poll::Ready(state);
        }
        {
            let mut wakers = self.wakers.lock().unwrap_or_else(PoisonError::into_inner);
            if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
                wakers.push(cx.waker().clone());
            }
        }
        // Re-check: a fire between the first load and the push would otherwise be missed.
        match self.state() {
            PENDING => Poll::Pending,
            state => Poll::Ready(state),
        }
    }
}

/// The owner of a waiter set, told when a waiter is dropped before it fired.
pub(crate) trait WaiterHost: Send + Sync {
    fn cancel_waiter(&self, id: u64);
}

/// What a registered waiter watches: the clock, or (on a local machine only) the arguments
/// of activations and the queue.
#[derive(Debug)]
enum Watch {
    Clock(Condition),
    /// The state is activated by a mutation whose arguments include all of these.
    Args(usize, Args),
    /// The queue tick has reached this one.
    QueueTick(u64),
    /// The queue runs empty.
    QueueEnds,
    /// Answered by someone else (a mirror's source, for `when_args`) through
    /// [`WaiterSet::finish`].
    Remote,
}

#[derive(Debug)]
struct Entry {
    watch: Watch,
    signal: Arc<Signal>,
}

/// The registered waiters of one clock.
#[derive(Debug)]
pub(crate) struct WaiterSet {
    next_id: u64,
    entries: HashMap<u64, Entry>,
    /// Ids of waiters watching each state; may hold ids already gone (pruned lazily).
    by_state: Vec<Vec<u64>>,
    /// Ids of waiters on the queue (queue ticks and queue ends); may hold ids already gone.
    queue: Vec<u64>,
    closed: bool,
}

/// The result of registering a waiter.
pub(crate) enum Registration {
    /// The condition already holds (or the set is closed): nothing was registered.
    Done(u8),
    Pending(u64, Arc<Signal>),
    /// The condition names a state the clock does not have.
    OutOfSchema(Condition),
}

impl WaiterSet {
    pub fn new(states: usize) -> Self {
        WaiterSet {
            next_id: 0,
            entries: HashMap::new(),
            by_state: vec![Vec::new(); states],
            queue: Vec::new(),
            closed: false,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Registers a waiter unless its condition already holds for `ticks`.
    pub fn register(&mut self, ticks: &[u64], condition: Condition) -> Registration {
        if condition.states().iter().any(|&s| s >= ticks.len()) {
            return Registration::OutOfSchema(condition);
        }
        if self.closed {
            // A wait for the disposal is answered by it.
            let state = if condition == Condition::Disposed {
                FIRED
            } else {
                CLOSED
            };
            return Registration::Done(state);
        }
        if condition.holds(ticks) {
            return Registration::Done(FIRED);
        }
        let states = condition.states();
        self.insert(Watch::Clock(condition), &states)
    }

    /// Registers a wait for an activation of `state` whose arguments include all of `args`
    /// (compared by value). Only a machine that runs the transitions can answer it.
    pub fn register_args(&mut self, state: usize, args: Args) -> Registration {
        if state >= self.by_state.len() {
            return Registration::OutOfSchema(Condition::Active(vec![state]));
        }
        if self.closed {
            return Registration::Done(CLOSED);
        }
        self.insert(Watch::Args(state, args), &[state])
    }

    /// Registers a wait for the queue tick to reach `tick`, given the queue tick `now`.
    pub fn register_queue_tick(&mut self, now: u64, tick: u64) -> Registration {
        if self.closed {
            return Registration::Done(CLOSED);
        }
        if now >= tick {
            return Registration::Done(FIRED);
        }
        self.insert(Watch::QueueTick(tick), &[])
    }

    /// Registers a wait for the end of the running queue; done at once when none runs.
    pub fn register_queue_ends(&mut self, running: bool) -> Registration {
        if self.closed {
            return Registration::Done(CLOSED);
        }
        if !running {
            return Registration::Done(FIRED);
        }
        self.insert(Watch::QueueEnds, &[])
    }

    /// Registers a wait that only [`WaiterSet::finish`] ends (or the set's closing): a
    /// mirror's wait that its source answers. Indexed under no state.
    pub fn register_remote(&mut self) -> Registration {
        if self.closed {
            return Registration::Done(CLOSED);
        }
        self.insert(Watch::Remote, &[])
    }

    /// Ends a wait registered with [`WaiterSet::register_remote`] with its answer; nothing
    /// when it is gone (dropped, or ended by the set's closing).
    pub fn finish(&mut self, id: u64, result: Result<(), WaitError>) {
        if let Some(entry) = self.entries.remove(&id) {
            match result {
                Ok(()) => entry.signal.fire(FIRED),
                Err(error) => entry.signal.fail(error),
            }
        }
    }

    fn insert(&mut self, watch: Watch, states: &[usize]) -> Registration {
        let id = self.next_id;
        self.next_id += 1;
        let entries = &self.entries;
        let index = |list: &mut Vec<u64>| {
            // Keep lists of dropped waiters from growing without bound on quiet states.
            if list.len() >= 32 && list.len().is_power_of_two() {
                list.retain(|id| entries.contains_key(id));
            }
            list.push(id);
        };
        match watch {
            Watch::QueueTick(_) | Watch::QueueEnds => index(&mut self.queue),
            Watch::Remote => {}
            _ => states.iter().for_each(|&s| index(&mut self.by_state[s])),
        }
        let signal = Signal::new(PENDING);
        self.entries.insert(
            id,
            Entry {
                watch,
                signal: signal.clone(),
            },
        );
        Registration::Pending(id, signal)
    }

    /// Fires the waiters of activations of `states` whose arguments `args` include.
    pub fn activated(&mut self, states: impl IntoIterator<Item = usize>, args: &Args) {
        if self.entries.is_empty() {
            return;
        }
        for s in states {
            self.fire_where(Some(s), |watch| match watch {
                Watch::Args(state, want) => {
                    *state == s && want.iter().all(|(k, v)| args.get(k) == Some(v))
                }
                _ => false,
            });
        }
    }

    /// Fires the waiters of queue ticks up to `now`.
    pub fn queue_advanced(&mut self, now: u64) {
        if !self.queue.is_empty() {
            self.fire_where(
                None,
                |watch| matches!(watch, Watch::QueueTick(t) if *t <= now),
            );
        }
    }

    /// Fires the waiters of the end of the queue.
    pub fn queue_ended(&mut self) {
        if !self.queue.is_empty() {
            self.fire_where(None, |watch| matches!(watch, Watch::QueueEnds));
        }
    }

    /// Fires and removes the waiters listed for a state (`None`: on the queue) whose watch
    /// `done` accepts; prunes ids already gone.
    fn fire_where(&mut self, state: Option<usize>, done: impl Fn(&Watch) -> bool) {
        let entries = &mut self.entries;
        let list = match state {
            Some(s) => &mut self.by_state[s],
            None => &mut self.queue,
        };
        list.retain(|id| {
            let Some(entry) = entries.get(id) else {
                return false;
            };
            if done(&entry.watch) {
                if let Some(entry) = entries.remove(id) {
                    entry.signal.fire(FIRED);
                }
                return false;
            }
            true
        });
    }

    /// Fires the waiters of the changed states whose conditions now hold.
    pub fn clock_changed(&mut self, ticks: &[u64], changed: impl IntoIterator<Item = usize>) {
        if self.entries.is_empty() {
            return;
        }
        for s in changed {
            // Waiters on arguments share the state's list and stay: activations fire them.
            self.fire_where(Some(s), |watch| match watch {
                Watch::Clock(condition) => condition.holds(ticks),
                _ => false,
            });
        }
    }

    pub fn remove(&mut self, id: u64) {
        self.entries.remove(&id);
    }

    /// For a clock whose schema changed (a mirror's): ends every waiter on states with
    /// [`WaitError::Disposed`], as their positions mean other states now, and keeps the waits
    /// that do not depend on the schema (for the disposal, the queue) and the remote ones
    /// (whoever answers them decides), sized for `states`. [`WaiterSet::close`] would also
    /// answer the waits for the disposal, wrongly.
    pub fn reset(&mut self, states: usize) {
        self.entries.retain(|_, entry| {
            let keep = matches!(
                entry.watch,
                Watch::Clock(Condition::Disposed)
                    | Watch::QueueTick(_)
                    | Watch::QueueEnds
                    | Watch::Remote
            );
            if !keep {
                entry.signal.fire(CLOSED);
            }
            keep
        });
        self.by_state = vec![Vec::new(); states];
    }

    /// For a schema enlarged at its end (positions keep their states): room for the new
    /// states; every waiter stays.
    pub fn grow(&mut self, states: usize) {
        if states > self.by_state.len() {
            self.by_state.resize(states, Vec::new());
        }
    }

    /// Ends every waiter with [`WaitError::Disposed`]; later registrations end at once.
    pub fn close(&mut self) {
        self.closed = true;
        for (_, entry) in self.entries.drain() {
            let state = match entry.watch {
                Watch::Clock(Condition::Disposed) => FIRED,
                _ => CLOSED,
            };
            entry.signal.fire(state);
        }
        self.by_state.iter_mut().for_each(Vec::clear);
        self.queue.clear();
    }
}

impl Drop for WaiterSet {
    fn drop(&mut self) {
        self.close();
    }
}

/// Registers a condition on a host's waiter set and wraps the outcome.
pub(crate) fn make_when(host: Weak<dyn WaiterHost>, registration: Registration) -> When {
    match registration {
        Registration::Done(state) => When {
            signal: Signal::new(state),
            registration: None,
            error: None,
        },
        Registration::Pending(id, signal) => When {
            signal,
            registration: Some((host, id)),
            error: None,
        },
        Registration::OutOfSchema(condition) => {
            When::failed(WaitError::UnknownState(format!("{condition:?}")))
        }
    }
}

/// A future that resolves when a clock condition holds.
///
/// Dropping it deregisters the waiter. It resolves to an error when the state names were wrong
/// or the machine was disposed while waiting.
#[must_use = "a When does nothing unless awaited"]
pub struct When {
    signal: Arc<Signal>,
    registration: Option<(Weak<dyn WaiterHost>, u64)>,
    error: Option<WaitError>,
}

impl std::fmt::Debug for When {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("When")
            .field("state", &self.signal.state())
            .field("error", &self.error)
            .finish()
    }
}

impl When {
    /// A waiter that fails at once, for names the schema does not know.
    pub(crate) fn failed(error: WaitError) -> Self {
        When {
            signal: Signal::new(CLOSED),
            registration: None,
            error: Some(error),
        }
    }

    /// Whether the condition has held (without waiting).
    pub fn is_ready(&self) -> bool {
        self.signal.state() == FIRED
    }

    /// Binds the wait to a cancellation (asyncmachine's `ctx` argument of its waits): it ends
    /// with [`WaitError::Canceled`] when `cancel` resolves first, and its registration is
    /// dropped at that moment rather than when the future is. `cancel` is any future, e.g.
    /// [`StateCtx::canceled`] to end the wait with a state, or a runtime's cancellation token.
    /// Go closes the channel on a canceled context, the same as on success; here the two are
    /// told apart.
    pub fn until<C: Future<Output = ()>>(self, cancel: C) -> Until<C> {
        Until {
            when: Some(self),
            cancel: Box::pin(cancel),
        }
    }
}

/// A [`When`] bound to a cancellation; see [`When::until`].
#[must_use = "a wait does nothing unless awaited"]
pub struct Until<C> {
    when: Option<When>,
    cancel: Pin<Box<C>>,
}

impl<C> std::fmt::Debug for Until<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Until")
            .field("when", &self.when)
            .finish_non_exhaustive()
    }
}

impl<C: Future<Output = ()>> Future for Until<C> {
    type Output = Result<(), WaitError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(when) = self.when.as_mut() else {
            return Poll::Ready(Err(WaitError::Canceled));
        };
        if let Poll::Ready(result) = Pin::new(when).poll(cx) {
            self.when = None;
            return Poll::Ready(result);
        }
        if self.cancel.as_mut().poll(cx).is_ready() {
            // Dropping the When deregisters its waiter now.
            self.when = None;
            return Poll::Ready(Err(WaitError::Canceled));
        }
        Poll::Pending
    }
}

impl Future for When {
    type Output = Result<(), WaitError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(error) = self.error.take() {
            return Poll::Ready(Err(error));
        }
        match self.signal.poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(state) => {
                self.registration = None;
                Poll::Ready(self.signal.outcome(state))
            }
        }
    }
}

impl Drop for When {
    fn drop(&mut self) {
        if let Some((host, id)) = self.registration.take()
            && self.signal.state() == PENDING
            && let Some(host) = host.upgrade()
        {
            host.cancel_waiter(id);
        }
    }
}

/// A cancellation bound to one tick of a state: it fires when that state's tick changes (the
/// state leaves, or a multi state is activated again; for an inactive state, it is activated),
/// as asyncmachine's state contexts do. Clones share one registration.
#[derive(Clone, Debug)]
pub struct StateCtx {
    inner: Arc<When>,
}

impl StateCtx {
    pub(crate) fn new(when: When) -> Self {
        StateCtx {
            inner: Arc::new(when),
        }
    }

    /// A context that is canceled from the start (its state is not active).
    pub(crate) fn canceled_from_start() -> Self {
        StateCtx::new(When {
            signal: Signal::new(CLOSED),
            registration: None,
            error: None,
        })
    }

    /// Whether the context is canceled: its state's tick has changed (the state was deactivated
    /// or, for a multi state, activated again) or the machine was disposed.
    pub fn is_canceled(&self) -> bool {
        self.inner.signal.state() != PENDING
    }

    /// A future that resolves when the context is canceled.
    pub fn canceled(&self) -> Canceled {
        Canceled { ctx: self.clone() }
    }

    /// Runs `fut` until it finishes (`Some(output)`) or the context is canceled (`None`).
    /// Spawn the result to tie long work to a state: `tokio::spawn(ctx.bind(work))`.
    pub fn bind<F: Future>(&self, fut: F) -> Bound<F> {
        Bound {
            ctx: self.clone(),
            fut: Box::pin(fut),
        }
    }
}

/// Resolves when its [`StateCtx`] is canceled.
#[derive(Debug)]
#[must_use = "futures do nothing unless awaited"]
pub struct Canceled {
    ctx: StateCtx,
}

impl Future for Canceled {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.ctx.inner.signal.poll(cx).map(|_| ())
    }
}

/// A future bound to a [`StateCtx`]; see [`StateCtx::bind`].
#[must_use = "futures do nothing unless awaited"]
pub struct Bound<F> {
    ctx: StateCtx,
    fut: Pin<Box<F>>,
}

impl<F> std::fmt::Debug for Bound<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bound")
            .field("ctx", &self.ctx)
            .finish_non_exhaustive()
    }
}

impl<F: Future> Future for Bound<F> {
    type Output = Option<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.ctx.inner.signal.poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        self.fut.as_mut().poll(cx).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poll_once<F: Future + Unpin>(fut: &mut F) -> Poll<F::Output> {
        let mut cx = Context::from_waker(Waker::noop());
        Pin::new(fut).poll(&mut cx)
    }

    #[test]
    fn fires_only_waiters_whose_condition_holds() {
        let mut set = WaiterSet::new(3);
        let mut ticks = vec![0, 0, 0];
        let Registration::Pending(_, both) = set.register(&ticks, Condition::Active(vec![0, 1]))
        else {
            panic!("must wait");
        };
        let Registration::Pending(_, second) = set.register(&ticks, Condition::Active(vec![1]))
        else {
            panic!("must wait");
        };
        ticks[1] = 1;
        set.clock_changed(&ticks, [1]);
        assert_eq!(second.state(), FIRED);
        assert_eq!(both.state(), PENDING);
        assert_eq!(set.len(), 1);
        ticks[0] = 1;
        set.clock_changed(&ticks, [0]);
        assert_eq!(both.state(), FIRED);
        assert_eq!(set.len(), 0);
    }

    #[test]
    fn a_condition_that_holds_registers_nothing() {
        let mut set = WaiterSet::new(1);
        assert!(matches!(
            set.register(&[1], Condition::Active(vec![0])),
            Registration::Done(FIRED)
        ));
        assert!(matches!(
            set.register(&[1], Condition::Inactive(vec![0])),
            Registration::Pending(..)
        ));
        assert!(matches!(
            set.register(&[4], Condition::TicksAtLeast(vec![(0, 4)])),
            Registration::Done(FIRED)
        ));
    }

    #[test]
    fn close_ends_waiters_with_disposed() {
        let mut set = WaiterSet::new(1);
        let host: Weak<dyn WaiterHost> = Weak::<NoHost>::new();
        let mut when = make_when(host, set.register(&[0], Condition::Active(vec![0])));
        assert!(poll_once(&mut when).is_pending());
        set.close();
        assert_eq!(poll_once(&mut when), Poll::Ready(Err(WaitError::Disposed)));
    }

    #[test]
    fn lists_of_dropped_waiters_are_pruned() {
        let mut set = WaiterSet::new(1);
        for _ in 0..10_000 {
            if let Registration::Pending(id, _) = set.register(&[0], Condition::Active(vec![0])) {
                set.remove(id);
            }
        }
        assert!(
            set.by_state[0].len() < 64,
            "list grew to {}",
            set.by_state[0].len()
        );
    }

    #[test]
    fn args_waiters_fire_on_matching_activations_only() {
        let mut set = WaiterSet::new(2);
        let want = Args::new().with("foo", "bar");
        let Registration::Pending(_, signal) = set.register_args(1, want.clone()) else {
            panic!("must wait");
        };
        // A clock change alone does not fire it, nor an activation of another state.
        set.clock_changed(&[0, 1], [1]);
        set.activated([0], &want);
        set.activated([1], &Args::new().with("foo", "foo"));
        assert_eq!(signal.state(), PENDING);
        set.activated([1], &want.clone().with("more", 1));
        assert_eq!(signal.state(), FIRED);
        assert_eq!(set.len(), 0);
    }

    #[test]
    fn queue_waiters_fire_on_their_tick_and_at_the_queue_end() {
        let mut set = WaiterSet::new(1);
        assert!(matches!(
            set.register_queue_tick(3, 3),
            Registration::Done(FIRED)
        ));
        assert!(matches!(
            set.register_queue_ends(false),
            Registration::Done(FIRED)
        ));
        let Registration::Pending(_, tick) = set.register_queue_tick(3, 5) else {
            panic!("must wait");
        };
        let Registration::Pending(_, ends) = set.register_queue_ends(true) else {
            panic!("must wait");
        };
        set.queue_advanced(4);
        assert_eq!((tick.state(), ends.state()), (PENDING, PENDING));
        set.queue_advanced(5);
        assert_eq!((tick.state(), ends.state()), (FIRED, PENDING));
        set.queue_ended();
        assert_eq!(ends.state(), FIRED);
    }

    #[test]
    fn a_disposal_wait_succeeds_when_the_set_closes() {
        let mut set = WaiterSet::new(1);
        let host: Weak<dyn WaiterHost> = Weak::<NoHost>::new();
        let mut disposed = make_when(host.clone(), set.register(&[0], Condition::Disposed));
        let mut other = make_when(host.clone(), set.register(&[0], Condition::Active(vec![0])));
        set.clock_changed(&[2], [0]);
        assert!(poll_once(&mut disposed).is_pending());
        assert!(poll_once(&mut other).is_pending());
        set.close();
        assert_eq!(poll_once(&mut disposed), Poll::Ready(Ok(())));
        assert_eq!(poll_once(&mut other), Poll::Ready(Err(WaitError::Disposed)));
        let mut late = make_when(host, set.register(&[0], Condition::Disposed));
        assert_eq!(poll_once(&mut late), Poll::Ready(Ok(())));
    }

    #[test]
    fn a_reset_ends_the_waits_on_states_and_keeps_the_disposal_wait() {
        let mut set = WaiterSet::new(1);
        let host: Weak<dyn WaiterHost> = Weak::<NoHost>::new();
        let mut disposed = make_when(host.clone(), set.register(&[0], Condition::Disposed));
        let mut active = make_when(host, set.register(&[0], Condition::Active(vec![0])));
        set.reset(2);
        assert_eq!(
            poll_once(&mut active),
            Poll::Ready(Err(WaitError::Disposed))
        );
        assert!(poll_once(&mut disposed).is_pending());
        assert_eq!(set.len(), 1);
        set.close();
        assert_eq!(poll_once(&mut disposed), Poll::Ready(Ok(())));
    }

    #[test]
    fn a_remote_wait_ends_only_with_its_answer() {
        let mut set = WaiterSet::new(1);
        let host: Weak<dyn WaiterHost> = Weak::<NoHost>::new();
        let registration = set.register_remote();
        let Registration::Pending(refused, _) = &registration else {
            panic!("must wait");
        };
        let refused = *refused;
        let mut when = make_when(host.clone(), registration);
        set.clock_changed(&[1], [0]);
        set.activated([0], &Args::new());
        set.reset(2);
        assert!(poll_once(&mut when).is_pending(), "only its answer ends it");
        set.finish(refused, Err(WaitError::Refused("not seen".into())));
        assert_eq!(
            poll_once(&mut when),
            Poll::Ready(Err(WaitError::Refused("not seen".into())))
        );
        let registration = set.register_remote();
        let Registration::Pending(done, _) = &registration else {
            panic!("must wait");
        };
        let done = *done;
        let mut when = make_when(host, registration);
        set.finish(done, Ok(()));
        set.finish(done, Err(WaitError::Disposed));
        assert_eq!(
            poll_once(&mut when),
            Poll::Ready(Ok(())),
            "the first answer wins"
        );
        assert_eq!(set.len(), 0);
    }

    #[test]
    fn until_ends_a_wait_with_canceled_and_drops_its_waiter() {
        let host = Arc::new(TestHost(Mutex::new(WaiterSet::new(1))));
        let weak: Weak<dyn WaiterHost> = Arc::downgrade(&host) as Weak<dyn WaiterHost>;
        let when = make_when(
            weak,
            host.0
                .lock()
                .expect("lock")
                .register(&[0], Condition::Active(vec![0])),
        );
        assert_eq!(host.0.lock().expect("lock").len(), 1);
        let mut until = when.until(std::future::ready(()));
        assert_eq!(poll_once(&mut until), Poll::Ready(Err(WaitError::Canceled)));
        assert_eq!(host.0.lock().expect("lock").len(), 0);
    }

    struct TestHost(Mutex<WaiterSet>);
    impl WaiterHost for TestHost {
        fn cancel_waiter(&self, id: u64) {
            self.0.lock().expect("lock").remove(id);
        }
    }

    struct NoHost;
    impl WaiterHost for NoHost {
        fn cancel_waiter(&self, _: u64) {}
    }
}
