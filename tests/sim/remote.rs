//! Remote waits (`WhenArgs`) and last-error requests (`ErrRequest`), as the drivers run them:
//! a root's server waits on its machine (`src/server/waits.rs` runs one task per wait), a
//! mirror's server forwards a wait or a request upstream through the mirror's own session and
//! answers when the mirror hears back (`src/mirror`). A connection that ends withdraws its
//! waits: at a root the machine's waiter is dropped, at a mirror the wait is withdrawn upstream
//! too, as an aborted task drops the mirror's future. The test asks too, at any source.
//!
//! A root's waiters are futures; the simulator polls them (with a waker that does nothing)
//! whenever it pumps, since its transitions run synchronously there.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use asyncmachine::machine::{Args, MutationError, StateSource, WaitError, When};

use super::source::{Feed, Kind, Pending, reason};
use super::{Sim, SourceAt};

/// A wait a node's server runs for one of its clients.
#[derive(Debug)]
pub(super) enum ServedWait {
    /// At a root: the machine's waiter, answered to the client's wait `id`.
    Root { id: u64, when: When },
    /// At a mirror: forwarded upstream, under the mirror session's wait id `upstream`.
    Forwarded { at: SourceAt, upstream: u64 },
}

/// A wait the test made.
#[derive(Debug)]
pub(super) enum TestWait {
    Root { at: SourceAt, when: When },
    Mirror { at: SourceAt, wait: u64 },
}

/// Polls a waiter once: its result when it ended.
fn poll_once(when: &mut When) -> Option<Result<(), WaitError>> {
    match Pin::new(when).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(result) => Some(result),
        Poll::Pending => None,
    }
}

impl Sim {
    // The test's side.

    /// A wait from the test at `at` for an activation of `state` with `args`: a root waits on
    /// its machine, a mirror asks its source. Its end is found by the returned tag.
    pub fn when_args(&mut self, at: SourceAt, state: &str, args: Args) -> u64 {
        let tag = self.next_tag;
        self.next_tag += 1;
        let source = &mut self.nodes[at.node].sources[at.source];
        match &mut source.kind {
            Kind::Root(root) => {
                let when = root.machine.when_args(state, args);
                self.test_waits.insert(tag, TestWait::Root { at, when });
            }
            Kind::Mirror(side) => {
                let asked = match side.schema.index(state) {
                    Some(idx) => side.session.when_args(idx, args, Pending::LocalWait(tag)),
                    None => Err(WaitError::UnknownState(state.to_owned())),
                };
                match asked {
                    Ok(wait) => {
                        self.test_waits.insert(tag, TestWait::Mirror { at, wait });
                    }
                    Err(e) => {
                        self.wait_results.insert(tag, Err(e));
                    }
                }
            }
        }
        self.pump();
        tag
    }

    /// Withdraws the test's wait: nothing more is heard of it, and the sources above drop it.
    pub fn cancel_wait(&mut self, tag: u64) {
        match self.test_waits.remove(&tag) {
            Some(TestWait::Mirror { at, wait }) => {
                if let Some(side) = self.nodes[at.node].sources[at.source].mirror_side() {
                    side.session.cancel_wait(wait);
                }
            }
            Some(TestWait::Root { .. }) | None => {}
        }
        self.pump();
    }

    /// How the test's wait ended, once it did.
    pub fn wait_result(&self, tag: u64) -> Option<&Result<(), WaitError>> {
        self.wait_results.get(&tag)
    }

    /// The test asks `at` for its source's last error: a root answers at once, a mirror asks
    /// upstream (and fails at once while disconnected). The answer is found by the tag.
    pub fn err(&mut self, at: SourceAt) -> Result<u64, MutationError> {
        let tag = self.next_tag;
        self.next_tag += 1;
        let source = &mut self.nodes[at.node].sources[at.source];
        match &mut source.kind {
            Kind::Root(root) => {
                self.err_answers.insert(tag, Ok(root.machine.last_error()));
            }
            Kind::Mirror(side) => side.session.err(Pending::LocalErr(tag))?,
        }
        self.pump();
        Ok(tag)
    }

    /// The answer to the test's last-error request, once it came.
    pub fn err_answer(&self, tag: u64) -> Option<&Result<Option<String>, MutationError>> {
        self.err_answers.get(&tag)
    }

    /// Waits a node's server runs for its clients on the source at `at`.
    pub fn served_waits(&self, at: SourceAt) -> usize {
        self.served_waits
            .iter()
            .filter(|((link, _), _)| {
                self.links
                    .get(link)
                    .is_some_and(|l| l.server == at.node && l.served == Some(at.source))
            })
            .count()
    }

    // The drivers' side.

    /// A client's wait, handed out by its server session (`ServerEvent::WhenArgs`).
    pub(super) fn start_wait(
        &mut self,
        link: u64,
        (id, wait): (u64, u64),
        state: &str,
        args: Args,
    ) {
        let Some(l) = self.links.get_mut(&link) else {
            return;
        };
        let Some(s) = l.served else {
            return;
        };
        let at = SourceAt {
            node: l.server,
            source: s,
        };
        let served = match &mut self.nodes[at.node].sources[s].kind {
            Kind::Root(root) => Ok(ServedWait::Root {
                id,
                when: root.machine.when_args(state, args),
            }),
            Kind::Mirror(side) => {
                let asked = match side.schema.index(state) {
                    Some(idx) => {
                        side.session
                            .when_args(idx, args, Pending::ForwardWait { link, id, wait })
                    }
                    None => Err(WaitError::UnknownState(state.to_owned())),
                };
                asked.map(|upstream| ServedWait::Forwarded { at, upstream })
            }
        };
        match served {
            Ok(served) => {
                self.served_waits.insert((link, wait), served);
            }
            Err(e) => l.session.handle_wait_result(id, wait, Err(e)),
        }
    }

    /// A wait its client withdrew (`ServerEvent::CancelWait`), or whose connection ended: a
    /// root drops its waiter, a mirror withdraws the wait upstream.
    pub(super) fn drop_served_wait(&mut self, link: u64, wait: u64) {
        if let Some(ServedWait::Forwarded { at, upstream }) =
            self.served_waits.remove(&(link, wait))
            && let Some(side) = self.nodes[at.node].sources[at.source].mirror_side()
        {
            side.session.cancel_wait(upstream);
        }
    }

    /// Every wait of a connection that ended.
    pub(super) fn drop_waits_of(&mut self, link: u64) {
        let waits: Vec<u64> = self
            .served_waits
            .range((link, 0)..=(link, u64::MAX))
            .map(|(&(_, wait), _)| wait)
            .collect();
        for wait in waits {
            self.drop_served_wait(link, wait);
        }
    }

    /// A forwarded wait ended upstream: its client hears how.
    pub(super) fn forwarded_wait_ended(
        &mut self,
        (link, id, wait): (u64, u64, u64),
        result: Result<(), WaitError>,
    ) {
        if self.served_waits.remove(&(link, wait)).is_none() {
            return;
        }
        if let Some(l) = self.links.get_mut(&link) {
            l.session.handle_wait_result(id, wait, result);
        }
    }

    /// The test's wait at a mirror ended.
    pub(super) fn test_wait_ended(&mut self, tag: u64, result: Result<(), WaitError>) {
        if self.test_waits.remove(&tag).is_some() {
            self.wait_results.insert(tag, result);
        }
    }

    /// Roots' waiters that ended since the last look: answered to their clients, or to the
    /// test.
    pub(super) fn poll_waits(&mut self) -> bool {
        let mut ended = Vec::new();
        for (&key, served) in &mut self.served_waits {
            if let ServedWait::Root { id, when } = served
                && let Some(result) = poll_once(when)
            {
                ended.push((key, *id, result));
            }
        }
        let mut progress = !ended.is_empty();
        for ((link, wait), id, result) in ended {
            self.served_waits.remove(&(link, wait));
            if let Some(l) = self.links.get_mut(&link) {
                l.session.handle_wait_result(id, wait, result);
            }
        }
        let mut done = Vec::new();
        for (&tag, test) in &mut self.test_waits {
            if let TestWait::Root { when, .. } = test
                && let Some(result) = poll_once(when)
            {
                done.push((tag, result));
            }
        }
        progress |= !done.is_empty();
        for (tag, result) in done {
            self.test_waits.remove(&tag);
            self.wait_results.insert(tag, result);
        }
        progress
    }

    /// A client's last-error request (`ServerEvent::Err`): a root answers from its machine, a
    /// mirror asks upstream and answers when it hears back.
    pub(super) fn answer_err(&mut self, link: u64, id: u64) {
        let now = self.now;
        let Some(l) = self.links.get_mut(&link) else {
            return;
        };
        let Some(s) = l.served else {
            return;
        };
        let node = &mut self.nodes[l.server];
        let result = match &mut node.sources[s].kind {
            Kind::Root(root) => Ok(root.machine.last_error()),
            Kind::Mirror(side) => match side.session.err(Pending::ForwardErr { link, id }) {
                Ok(()) => return,
                Err(e) => Err(reason(e)),
            },
        };
        let feed = Feed {
            node: &node.name,
            source: &node.sources[s],
        };
        l.session.handle_err_result(id, result, now, &feed);
    }

    /// A forwarded last-error request was answered upstream: its client hears the answer.
    pub(super) fn forwarded_err_answered(
        &mut self,
        at: SourceAt,
        (link, id): (u64, u64),
        result: Result<Option<String>, MutationError>,
    ) {
        let now = self.now;
        let Some(l) = self.links.get_mut(&link) else {
            return;
        };
        let node = &self.nodes[at.node];
        let feed = Feed {
            node: &node.name,
            source: &node.sources[at.source],
        };
        l.session
            .handle_err_result(id, result.map_err(reason), now, &feed);
    }

    /// A restarted source's process takes the test's waits there with it: they end as
    /// disposed.
    pub(super) fn dispose_test_waits_at(&mut self, at: SourceAt) {
        let gone: Vec<u64> = self
            .test_waits
            .iter()
            .filter(|(_, w)| matches!(w, TestWait::Root { at: a, .. } | TestWait::Mirror { at: a, .. } if *a == at))
            .map(|(&tag, _)| tag)
            .collect();
        for tag in gone {
            self.test_waits.remove(&tag);
            self.wait_results.insert(tag, Err(WaitError::Disposed));
        }
    }
}
