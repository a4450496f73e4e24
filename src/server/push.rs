//! Clock pushes without waking every connection: a hub's pushers (one per runtime worker)
//! write each change's diff straight to the sockets of the connections in their share, with
//! writes that do not wait. Whether a plain diff is all a client needs is its session's
//! decision ([`ServerSession::push`]); when it needs more, or its socket is full, or its own
//! writer is writing, the connection is nudged instead, and its writer sends it.
//!
//! With thousands of clients this is one wake-up and one pass per change and worker, where a
//! writer task per client would be woken, scheduled and polled for each.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncWrite, WriteHalf};
use tokio::sync::{Notify, watch};

use super::Inner;
use crate::proto::session::{CatchUp, DiffCache, ServerSession, Versioned};
use crate::transport::BoxStream;

/// What a connection's reader, its writer and its source's pusher share.
pub(crate) struct Outlet {
    state: Mutex<OutletState>,
    /// Told when there is something for the writer: bytes the pusher or the reader left, a
    /// catch-up the pusher declined, the end of the session.
    pub nudge: Notify,
    /// Told after each write: a reader held back by a backlog reads on.
    pub drained: Notify,
}

/// The part of an [`Outlet`] behind its lock.
pub(crate) struct OutletState {
    /// The write half; `None` while the writer has it out for a write of its own.
    pub wr: Option<WriteHalf<BoxStream>>,
    pub session: ServerSession,
    /// The stream took bytes it has not flushed: a TLS or WebSocket stream buffers what the
    /// socket could not take, and a write that does not wait cannot flush it later. The
    /// writer, nudged, flushes it even with nothing new to send.
    pub unflushed: bool,
}

impl Outlet {
    pub fn new(wr: WriteHalf<BoxStream>, session: ServerSession) -> Outlet {
        Outlet {
            state: Mutex::new(OutletState {
                wr: Some(wr),
                session,
                unflushed: false,
            }),
            nudge: Notify::new(),
            drained: Notify::new(),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, OutletState> {
        // Nothing under this lock calls user code or panics on peer input.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes what the session queued now, as far as the socket takes it without waiting,
    /// and nudges the writer for the rest (or when it has the write half out: the bytes wait
    /// in the session for it). Returns the bytes written. `state` is this outlet's, locked.
    pub fn send_now(&self, state: &mut OutletState) -> usize {
        if state.session.transmit().is_empty() {
            return 0;
        }
        let Some(wr) = state.wr.as_mut() else {
            self.nudge.notify_one();
            return 0;
        };
        let (written, flushed) = write_now(wr, state.session.transmit());
        state.session.advance(written);
        state.unflushed = !flushed;
        if !state.session.transmit().is_empty() || !flushed {
            self.nudge.notify_one();
        }
        written
    }
}

/// The connections of one pusher, in the order a pass serves them: those pushed to first (the
/// nodes below this one, `ServerConfig::push_first`), then the others. On a busy CPU the
/// order decides who waits: a client written to first may run before the writer's next write.
struct Clients<T = Arc<Outlet>> {
    first: Vec<T>,
    rest: Vec<T>,
}

impl<T> Default for Clients<T> {
    fn default() -> Self {
        Clients {
            first: Vec::new(),
            rest: Vec::new(),
        }
    }
}

impl<T> Clients<T> {
    fn tier(&mut self, first: bool) -> &mut Vec<T> {
        if first {
            &mut self.first
        } else {
            &mut self.rest
        }
    }

    fn add(&mut self, client: T, first: bool) {
        self.tier(first).push(client);
    }

    /// Removes the client `is` picks, keeping the order of the others in its tier.
    fn remove(&mut self, first: bool, is: impl Fn(&T) -> bool) {
        let tier = self.tier(first);
        if let Some(at) = tier.iter().position(is) {
            tier.remove(at);
        }
    }

    /// Every client, in the order a pass serves them.
    fn in_order(&self) -> impl Iterator<Item = &T> {
        self.first.iter().chain(&self.rest)
    }
}

/// The connections of one pusher.
type Share = Mutex<Clients>;

/// A hub's pushers: started with the first client, ended with the hub's clock (or their
/// runtime).
pub(crate) struct Pushers {
    shares: Vec<Arc<Share>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    next: AtomicUsize,
}

impl Pushers {
    /// One pusher per runtime worker, following `clock`. Must run inside the runtime.
    pub fn start(
        clock: &watch::Receiver<Versioned>,
        cache: &Arc<DiffCache>,
        inner: &Arc<Inner>,
    ) -> Pushers {
        let workers = tokio::runtime::Handle::current()
            .metrics()
            .num_workers()
            .max(1);
        let shares: Vec<Arc<Share>> = (0..workers).map(|_| Arc::default()).collect();
        let mut tasks = Vec::with_capacity(workers);
        for share in &shares {
            let mut clock = clock.clone();
            clock.mark_unchanged();
            // Unconstrained: the pass's writes go to sockets directly, and tokio's per-task I/O
            // budget would refuse them after a hundred; the pass yields after itself instead.
            let pusher = run(clock, share.clone(), cache.clone(), Arc::downgrade(inner));
            tasks.push(tokio::spawn(tokio::task::unconstrained(pusher)));
        }
        Pushers {
            shares,
            tasks,
            next: AtomicUsize::new(0),
        }
    }

    /// Whether they still run: not when the runtime they were started in has ended (a server
    /// can outlive one).
    pub fn running(&self) -> bool {
        self.tasks.iter().all(|task| !task.is_finished())
    }

    /// Adds a connection to a share (round robin), among those pushed to first or not; it
    /// leaves when the guard drops. "First" orders a pass of one pusher: with more than one
    /// worker, the pushers run side by side, each over its own share.
    pub fn attach(&self, outlet: Arc<Outlet>, first: bool) -> Attached {
        let at = self.next.fetch_add(1, Ordering::Relaxed) % self.shares.len();
        let share = self.shares[at].clone();
        share
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .add(outlet.clone(), first);
        Attached {
            share,
            outlet,
            first,
        }
    }
}

/// A connection's place in a pusher's share.
pub(crate) struct Attached {
    share: Arc<Share>,
    outlet: Arc<Outlet>,
    first: bool,
}

impl Drop for Attached {
    fn drop(&mut self) {
        self.share
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(self.first, |o| Arc::ptr_eq(o, &self.outlet));
    }
}

/// How many clients a pass serves between looks at the clock.
const REFRESH_EVERY: usize = 64;

/// Counts of one pass, added to the server's counters once.
#[derive(Default)]
struct Tally {
    frames: u64,
    bytes: u64,
    merged: u64,
}

/// One pusher: on every change of the clock, one pass over its share.
async fn run(
    mut clock: watch::Receiver<Versioned>,
    share: Arc<Share>,
    cache: Arc<DiffCache>,
    inner: Weak<Inner>,
) {
    let mut outlets: Vec<Arc<Outlet>> = Vec::new();
    // Set when a pass took a newer clock on its way: the clients before that point need
    // another pass, whether or not the clock changes again.
    let mut behind = false;
    loop {
        if !behind && clock.changed().await.is_err() {
            return;
        }
        let mut latest = clock.borrow_and_update().clone();
        behind = false;
        outlets.extend(
            share
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .in_order()
                .cloned(),
        );
        let mut tally = Tally::default();
        for (i, outlet) in outlets.drain(..).enumerate() {
            // A long pass under a fast source would send its end stale clocks: it takes the
            // latest as it goes (each step's diff is encoded once, for the clients it reaches).
            if i % REFRESH_EVERY == REFRESH_EVERY - 1 && clock.has_changed().unwrap_or(false) {
                latest = clock.borrow_and_update().clone();
                behind = true;
            }
            push_one(&outlet, &latest, &cache, &mut tally);
        }
        let Some(inner) = inner.upgrade() else { return };
        let stats = &inner.stats;
        stats.frames_out.fetch_add(tally.frames, Ordering::Relaxed);
        stats.diffs_sent.fetch_add(tally.frames, Ordering::Relaxed);
        stats.bytes_out.fetch_add(tally.bytes, Ordering::Relaxed);
        if tally.merged > 0 {
            stats
                .diffs_merged
                .fetch_add(tally.merged, Ordering::Relaxed);
        }
        drop(inner);
        // Another pass comes at once when the clock moved meanwhile (a source on another
        // thread): the worker's other tasks, readers among them, get their turns first.
        // Otherwise the wait for the next change yields by itself, and a yield here would only
        // cost the runtime a look at its sockets (an `epoll_wait`) per change.
        if behind || clock.has_changed().unwrap_or(false) {
            tokio::task::yield_now().await;
        }
    }
}

/// Writes the diff that takes one client to `latest` now, or leaves it to its writer.
fn push_one(outlet: &Outlet, latest: &Versioned, cache: &DiffCache, tally: &mut Tally) {
    let mut state = outlet.lock();
    let state = &mut *state;
    match state.session.push(latest, cache) {
        CatchUp::Nothing => return,
        CatchUp::Writer | CatchUp::Closed => {
            outlet.nudge.notify_one();
            return;
        }
        CatchUp::Sent { merged } => {
            tally.frames += 1;
            tally.merged += merged;
        }
    }
    tally.bytes += outlet.send_now(state) as u64;
}

/// Writes what the stream takes now: how many bytes, and whether they left its buffers. A
/// stream that cannot take them (full, or failed: its writer meets the error) takes none.
fn write_now(wr: &mut WriteHalf<BoxStream>, bytes: &[u8]) -> (usize, bool) {
    // Nobody waits on this context: whatever the stream could not do now, the writer, nudged,
    // does with a context of its own.
    let mut cx = Context::from_waker(Waker::noop());
    let mut written = 0;
    while written < bytes.len() {
        match Pin::new(&mut *wr).poll_write(&mut cx, &bytes[written..]) {
            Poll::Ready(Ok(n)) if n > 0 => written += n,
            _ => return (written, false),
        }
    }
    let flushed = matches!(Pin::new(wr).poll_flush(&mut cx), Poll::Ready(Ok(())));
    (written, flushed)
}

#[cfg(test)]
mod tests {
    use super::Clients;

    #[test]
    fn a_pass_serves_the_clients_pushed_to_first_before_the_others_each_in_the_order_they_came() {
        let mut clients = Clients::default();
        clients.add("observer", false);
        clients.add("node-b", true);
        clients.add("leaf", false);
        clients.add("node-c", true);
        fn order(c: &Clients<&'static str>) -> Vec<&'static str> {
            c.in_order().copied().collect()
        }
        assert_eq!(order(&clients), ["node-b", "node-c", "observer", "leaf"]);
        clients.remove(true, |c| *c == "node-b");
        clients.remove(false, |c| *c == "observer");
        assert_eq!(order(&clients), ["node-c", "leaf"]);
        clients.remove(false, |c| *c == "node-c");
        assert_eq!(
            order(&clients),
            ["node-c", "leaf"],
            "removed from its own tier only"
        );
    }
}
