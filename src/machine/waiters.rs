//! Waiters: futures and state contexts that resolve from the clock alone.
//!
//! A [`WaiterSet`] lives beside a clock (in a machine or a mirror) under the same lock, so a
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

/// Why a wait ended without its condition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WaitError {
    #[error("unknown state {0:?}; check the name against the schema")]
    UnknownState(String),
    #[error("the machine was disposed while waiting")]
    Disposed,
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
}

impl Condition {
    pub fn holds(&self, ticks: &[u64]) -> bool {
        match self {
            Condition::Active(states) => states.iter().all(|&s| is_active(ticks[s])),
            Condition::Inactive(states) => states.iter().all(|&s| !is_active(ticks[s])),
            Condition::TicksAtLeast(pairs) => pairs.iter().all(|&(s, t)| ticks[s] >= t),
            Condition::TickChanged(s, t) => ticks[*s] != *t,
        }
    }

    fn states(&self) -> Vec<usize> {
        match self {
            Condition::Active(states) | Condition::Inactive(states) => states.clone(),
            Condition::TicksAtLeast(pairs) => pairs.iter().map(|&(s, _)| s).collect(),
            Condition::TickChanged(s, _) => vec![*s],
        }
    }
}

const PENDING: u8 = 0;
const FIRED: u8 = 1;
const CLOSED: u8 = 2;

/// A one-shot signal shared by a waiter's entry and its future(s).
#[derive(Debug)]
pub(crate) struct Signal {
    state: AtomicU8,
    wakers: Mutex<Vec<Waker>>,
}

impl Signal {
    fn new(state: u8) -> Arc<Self> {
        Arc::new(Signal {
            state: AtomicU8::new(state),
            wakers: Mutex::new(Vec::new()),
        })
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

#[derive(Debug)]
struct Entry {
    condition: Condition,
    signal: Arc<Signal>,
}

/// The registered waiters of one clock.
#[derive(Debug)]
pub(crate) struct WaiterSet {
    next_id: u64,
    entries: HashMap<u64, Entry>,
    /// Ids of waiters watching each state; may hold ids already gone (pruned lazily).
    by_state: Vec<Vec<u64>>,
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
            return Registration::Done(CLOSED);
        }
        if condition.holds(ticks) {
            return Registration::Done(FIRED);
        }
        let id = self.next_id;
        self.next_id += 1;
        for s in condition.states() {
            let list = &mut self.by_state[s];
            // Keep lists of dropped waiters from growing without bound on quiet states.
            if list.len() >= 32 && list.len().is_power_of_two() {
                list.retain(|id| self.entries.contains_key(id));
            }
            list.push(id);
        }
        let signal = Signal::new(PENDING);
        self.entries.insert(
            id,
            Entry {
                condition,
                signal: signal.clone(),
            },
        );
        Registration::Pending(id, signal)
    }

    /// Fires the waiters of the changed states whose conditions now hold.
    pub fn clock_changed(&mut self, ticks: &[u64], changed: impl IntoIterator<Item = usize>) {
        if self.entries.is_empty() {
            return;
        }
        for s in changed {
            let entries = &mut self.entries;
            self.by_state[s].retain(|id| {
                let Some(entry) = entries.get(id) else {
                    return false;
                };
                if entry.condition.holds(ticks) {
                    if let Some(entry) = entries.remove(id) {
                        entry.signal.fire(FIRED);
                    }
                    return false;
                }
                true
            });
        }
    }

    pub fn remove(&mut self, id: u64) {
        self.entries.remove(&id);
    }

    /// Ends every waiter with [`WaitError::Disposed`]; later registrations end at once.
    pub fn close(&mut self) {
        self.closed = true;
        for (_, entry) in self.entries.drain() {
            entry.signal.fire(CLOSED);
        }
        self.by_state.iter_mut().for_each(Vec::clear);
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
                Poll::Ready(if state == FIRED {
                    Ok(())
                } else {
                    Err(WaitError::Disposed)
                })
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

    struct NoHost;
    impl WaiterHost for NoHost {
        fn cancel_waiter(&self, _: u64) {}
    }
}
