//! The drivers' work, between two moments: deliver what arrived, fire the timers that came
//! due, dial for mirrors whose backoff ended, then pump until nothing more follows: hellos
//! answered, mutations run at roots or forwarded upstream, remote waits and last-error
//! requests run or forwarded (`remote`), mirror events taken (clocks published, answers and
//! the ends of waits sent down, lost connections redialed), roots' waiters polled, clients
//! caught up through the pusher or the writer, bytes put on the wire, and ended connections
//! told to the other side (their waits withdrawn).

use asyncmachine::machine::{Mutation, Outcome, Value};
use asyncmachine::mirror::backoff::delay;
use asyncmachine::proto::dedup::Begin;
use asyncmachine::proto::handshake::Offer;
use asyncmachine::proto::message::{Hello, Refusal, RefusalKind, Snapshot};
use asyncmachine::proto::session::{
    CatchUp, ClientEvent, CloseReason, DiffCache, NoSource, Phase, ServerEvent, ServerSession,
};

use super::net::{Link, Pipe};
use super::source::{Feed, Kind, Pending, as_reply, lock};
use super::{Answer, BACKOFF_INITIAL, BACKOFF_MAX, Executed, Sim, SourceAt};

impl Sim {
    /// Connection ids in the order this round serves them.
    fn link_order(&mut self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.links.keys().copied().collect();
        if self.knobs.reorder {
            self.rng.shuffle(&mut ids);
        }
        ids
    }

    /// Delivers every chunk that has arrived, connection by connection. Across a partition
    /// nothing arrives, and nothing is lost either: a byte stream holds its bytes until the
    /// partition heals or a session gives up on the connection.
    pub(super) fn deliver(&mut self) {
        let now = self.now;
        for id in self.link_order() {
            while let Some(link) = self.links.get_mut(&id) {
                let (a, b) = (link.client.node, link.server);
                if self.cut.contains(&(a.min(b), a.max(b))) {
                    break;
                }
                if let Some(bytes) = link.up.take_due(now) {
                    if link.server_closed {
                        continue;
                    }
                    let node = &self.nodes[link.server];
                    match link.served {
                        Some(s) => {
                            let feed = Feed {
                                node: &node.name,
                                source: &node.sources[s],
                            };
                            link.session.handle_bytes(&bytes, now, &feed);
                        }
                        None => link.session.handle_bytes(&bytes, now, &NoSource),
                    }
                } else if let Some(bytes) = link.down.take_due(now) {
                    if link.client_gone {
                        continue;
                    }
                    let client = link.client;
                    if let Some(side) = self.nodes[client.node].sources[client.source].mirror_side()
                        && side.link == Some(id)
                    {
                        side.session.handle_bytes(&bytes, now);
                    }
                } else {
                    break;
                }
                self.pump();
            }
        }
    }

    /// Session timers that came due.
    pub(super) fn timeouts(&mut self) {
        let now = self.now;
        for link in self.links.values_mut() {
            if link.session.poll_timeout().is_none_or(|due| due > now) {
                continue;
            }
            let node = &self.nodes[link.server];
            match link.served {
                Some(s) => {
                    let source = &node.sources[s];
                    let feed = Feed {
                        node: &node.name,
                        source,
                    };
                    link.session.handle_timeout(now, &feed, &source.cache);
                }
                None => link
                    .session
                    .handle_timeout(now, &NoSource, &DiffCache::default()),
            }
        }
        for node in &mut self.nodes {
            for source in &mut node.sources {
                if let Some(side) = source.mirror_side()
                    && side.session.poll_timeout().is_some_and(|due| due <= now)
                {
                    side.session.handle_timeout(now);
                }
            }
        }
    }

    /// Mirrors whose backoff ended dial again.
    pub(super) fn reconnects(&mut self) {
        let now = self.now;
        let due: Vec<SourceAt> = self
            .sources()
            .filter(|&at| {
                matches!(&self.source(at).kind, Kind::Mirror(side) if side.reconnect_at.is_some_and(|t| t <= now))
            })
            .collect();
        for at in due {
            self.dial(at);
        }
    }

    /// A mirror dials its upstream: a new connection and a fresh server session, or (cut off)
    /// a failed attempt and a longer backoff.
    fn dial(&mut self, at: SourceAt) {
        let now = self.now;
        let latency = self
            .rng
            .duration(self.knobs.latency.0, self.knobs.latency.1);
        let reachable = {
            let side = self.nodes[at.node].sources[at.source]
                .mirror_side()
                .expect("a mirror dials");
            side.upstream
        };
        let cut = self.is_cut(at.node, reachable);
        let server = &self.nodes[reachable];
        let session = ServerSession::new(server.config.clone(), server.stats.clone(), None, now);
        let side = self.nodes[at.node].sources[at.source]
            .mirror_side()
            .expect("a mirror dials");
        side.reconnect_at = None;
        if cut {
            let n = side.attempt.map_or(0, |n| n.saturating_add(1));
            side.attempt = Some(n);
            side.reconnect_at =
                Some(now + delay(n, BACKOFF_INITIAL, BACKOFF_MAX, side.jitter.draw()));
            return;
        }
        let id = self.next_link;
        self.next_link += 1;
        side.link = Some(id);
        side.session.connect(now);
        self.links.insert(
            id,
            Link {
                client: at,
                server: reachable,
                served: None,
                session,
                up: Pipe::default(),
                down: Pipe::default(),
                latency,
                server_closed: false,
                client_gone: false,
            },
        );
    }

    /// Everything that follows from what happened, until nothing more does: the drivers' work
    /// between two moments.
    pub(super) fn pump(&mut self) {
        loop {
            let mut progress = self.serve_events();
            progress |= self.mirror_events();
            progress |= self.poll_waits();
            progress |= self.catch_up();
            self.flush();
            progress |= self.reap();
            if !progress {
                return;
            }
        }
    }

    /// Server sessions' work: hellos to answer, mutations to run, waits and last-error requests
    /// to run or forward.
    fn serve_events(&mut self) -> bool {
        let mut progress = false;
        for id in self.link_order() {
            while let Some(event) = self.links.get_mut(&id).and_then(|l| l.session.poll_event()) {
                progress = true;
                match event {
                    ServerEvent::Hello(hello) => self.answer_hello(id, &hello),
                    ServerEvent::StatusRequest { .. } => {
                        panic!("the simulator's mirrors send no status requests")
                    }
                    ServerEvent::Mutate {
                        id: request,
                        mutation,
                    } => self.run_mutation(id, request, mutation),
                    ServerEvent::WhenArgs {
                        id: request,
                        wait,
                        state,
                        args,
                    } => self.start_wait(id, (request, wait), &state, args),
                    ServerEvent::CancelWait { wait } => self.drop_served_wait(id, wait),
                    ServerEvent::Err { id: request } => self.answer_err(id, request),
                }
            }
        }
        progress
    }

    /// Answers a hello as the server's connection does: the source it names, welcomed with
    /// its clock of now, or a refusal.
    fn answer_hello(&mut self, id: u64, hello: &Hello) {
        let now = self.now;
        let Some(link) = self.links.get_mut(&id) else {
            return;
        };
        let node = &self.nodes[link.server];
        let found = if hello.source.is_empty() && node.sources.len() == 1 {
            Some(0)
        } else {
            node.sources.iter().position(|s| s.name == hello.source)
        };
        let Some(s) = found else {
            link.session.refuse(Refusal {
                kind: RefusalKind::UnknownSource,
                reason: format!("no source named {:?} at {}", hello.source, node.name),
            });
            return;
        };
        let source = &node.sources[s];
        let schema = source.schema();
        let start = source.start_clock(schema.hash());
        let ancestry = source.ancestry(&node.name);
        let (parent_id, tags) = source.identity();
        let offer = Offer {
            schema: &schema,
            ancestry: &ancestry,
            snapshot: Snapshot {
                ticks: start.ticks.to_vec(),
                queue_tick: start.queue_tick,
            },
            parent_id,
            tags,
        };
        let Some(accepted) = link.session.accept(offer) else {
            return;
        };
        link.served = Some(s);
        let feed = Feed {
            node: &node.name,
            source,
        };
        link.session.welcome(accepted, schema, start, now, &feed);
    }

    /// Runs a client's mutation: a root runs it now; a mirror sends it upstream and answers
    /// when its upstream does.
    fn run_mutation(&mut self, id: u64, request: u64, mutation: Mutation) {
        let now = self.now;
        let Some(link) = self.links.get_mut(&id) else {
            return;
        };
        let Some(s) = link.served else {
            return;
        };
        let at = SourceAt {
            node: link.server,
            source: s,
        };
        let node = &mut self.nodes[link.server];
        // A keyed mutation runs once per source, as the server's `run_once` does it.
        let client = link.session.client_id().unwrap_or_default().to_owned();
        let mut recorded = None;
        if let Some(key) = mutation.key.clone() {
            match node.sources[s]
                .dedup
                .begin(&client, key.clone(), now, (id, request))
            {
                Begin::Done(answer) => {
                    let feed = Feed {
                        node: &node.name,
                        source: &node.sources[s],
                    };
                    link.session
                        .handle_mutation_result(request, answer, now, &feed);
                    self.deduplicated += 1;
                    return;
                }
                Begin::Joined => {
                    self.deduplicated += 1;
                    return;
                }
                Begin::Unrecorded(_) => {}
                Begin::Run => recorded = Some((client, key)),
            }
        }
        let result = match &mut node.sources[s].kind {
            Kind::Root(root) => {
                let uid = uid_of(&mutation);
                let result = root.machine.mutate_now(mutation);
                self.executed.push(Executed {
                    at,
                    uid,
                    result: result.clone(),
                });
                Some(result)
            }
            Kind::Mirror(side) => side
                .session
                .mutate(
                    mutation,
                    Some(Pending::Forward {
                        link: id,
                        id: request,
                        recorded: recorded.clone(),
                    }),
                    now,
                )
                .err()
                .map(Err),
        };
        if let Some(result) = result {
            let answer = as_reply(result);
            let waiters = match recorded {
                Some((client, key)) => node.sources[s].dedup.finish(&client, key, &answer, now),
                None => Vec::new(),
            };
            let feed = Feed {
                node: &node.name,
                source: &node.sources[s],
            };
            link.session
                .handle_mutation_result(request, answer.clone(), now, &feed);
            let server = link.server;
            self.answer_waiters(server, s, waiters, &answer);
        }
    }

    /// Answers the duplicates that waited for a keyed mutation's first run.
    fn answer_waiters(
        &mut self,
        node: usize,
        source: usize,
        waiters: Vec<(u64, u64)>,
        answer: &Result<Outcome, String>,
    ) {
        let now = self.now;
        let node = &self.nodes[node];
        for (link, request) in waiters {
            if let Some(link) = self.links.get_mut(&link) {
                let feed = Feed {
                    node: &node.name,
                    source: &node.sources[source],
                };
                link.session
                    .handle_mutation_result(request, answer.clone(), now, &feed);
            }
        }
    }

    /// Mirror sessions' events, as the mirror's replica and connection task take them.
    fn mirror_events(&mut self) -> bool {
        let now = self.now;
        let mut progress = false;
        for at in self.sources().collect::<Vec<_>>() {
            let node = &mut self.nodes[at.node];
            let source = &mut node.sources[at.source];
            let clock = source.clock.clone();
            let Kind::Mirror(side) = &mut source.kind else {
                continue;
            };
            let mut failed = false;
            let mut replies = Vec::new();
            let mut waits_ended = Vec::new();
            let mut errs = Vec::new();
            while let Some(event) = side.session.poll_event() {
                progress = true;
                match event {
                    ClientEvent::Ready { .. } => side.sessions += 1,
                    ClientEvent::HandshakeFailed(e) => {
                        failed = true;
                        side.failures.push(e);
                    }
                    ClientEvent::ClockChanged {
                        changed,
                        schema_changed,
                        ..
                    } => side.publish(&clock, !changed.is_empty(), schema_changed),
                    ClientEvent::Answered {
                        pending: Pending::Forward { link, id, recorded },
                        result,
                    } => replies.push((link, id, recorded, result)),
                    ClientEvent::Answered {
                        pending: Pending::Local(tag),
                        result,
                    } => self.answers.push(Answer {
                        tag,
                        uid: self.uids.remove(&tag).unwrap_or_default(),
                        at,
                        result,
                        ticks: side.session.ticks().to_vec(),
                        queue_tick: side.session.queue_tick(),
                    }),
                    // The session hands each kind of request back as the event of its kind.
                    ClientEvent::Answered { .. } => {}
                    ClientEvent::WaitEnded { pending, result } => {
                        waits_ended.push((pending, result))
                    }
                    ClientEvent::ErrAnswered { pending, result } => errs.push((pending, result)),
                    ClientEvent::Payload(_) => {}
                    ClientEvent::Ancestry(_) => lock(&clock).ancestry += 1,
                    ClientEvent::Resync => side.resyncs += 1,
                    ClientEvent::Closed(reason) => side.closes.push(reason),
                }
            }
            if side.session.phase() == Phase::Idle
                && let Some(id) = side.link.take()
            {
                // The connection task drops the connection and waits out its backoff.
                if let Some(link) = self.links.get_mut(&id) {
                    link.client_gone = true;
                    link.down.clear();
                }
                let n = if failed {
                    side.attempt.map_or(0, |n| n.saturating_add(1))
                } else {
                    0
                };
                side.attempt = Some(n);
                side.reconnect_at =
                    Some(now + delay(n, BACKOFF_INITIAL, BACKOFF_MAX, side.jitter.draw()));
                progress = true;
            }
            // Answers go down after the clock they carry was published, as the mirror's
            // observers run before its callers are answered.
            let mut answered_waiters = Vec::new();
            for (id, request, recorded, result) in replies {
                let answer = as_reply(result);
                if let Some((client, key)) = recorded {
                    let waiters = node.sources[at.source]
                        .dedup
                        .finish(&client, key, &answer, now);
                    answered_waiters.push((waiters, answer.clone()));
                }
                if let Some(link) = self.links.get_mut(&id) {
                    let feed = Feed {
                        node: &node.name,
                        source: &node.sources[at.source],
                    };
                    link.session
                        .handle_mutation_result(request, answer, now, &feed);
                }
            }
            for (waiters, answer) in answered_waiters {
                self.answer_waiters(at.node, at.source, waiters, &answer);
            }
            // Waits and last errors, after the clock too.
            for (pending, result) in waits_ended {
                match pending {
                    Pending::ForwardWait { link, id, wait } => {
                        self.forwarded_wait_ended((link, id, wait), result);
                    }
                    Pending::LocalWait(tag) => self.test_wait_ended(tag, result),
                    _ => {}
                }
            }
            for (pending, result) in errs {
                match pending {
                    Pending::ForwardErr { link, id } => {
                        self.forwarded_err_answered(at, (link, id), result);
                    }
                    Pending::LocalErr(tag) => {
                        self.err_answers.insert(tag, result);
                    }
                    _ => {}
                }
            }
        }
        progress
    }

    /// Brings every ready client up to its source's clock, through the pusher or the writer.
    fn catch_up(&mut self) -> bool {
        let now = self.now;
        let mut progress = false;
        for id in self.link_order() {
            let writer = self.rng.percent(self.knobs.writer_share);
            let Some(link) = self.links.get_mut(&id) else {
                continue;
            };
            let Some(s) = link.served.filter(|_| link.session.is_ready()) else {
                continue;
            };
            let node = &self.nodes[link.server];
            let source = &node.sources[s];
            let feed = Feed {
                node: &node.name,
                source,
            };
            let outcome = match writer {
                true => link.session.catch_up(now, &feed, &source.cache),
                false => match link.session.push(&source.published(), &source.cache) {
                    CatchUp::Writer => link.session.catch_up(now, &feed, &source.cache),
                    other => other,
                },
            };
            progress |= matches!(outcome, CatchUp::Sent { .. } | CatchUp::Closed);
        }
        progress
    }

    /// Moves what sessions queued onto the wire.
    fn flush(&mut self) {
        let now = self.now;
        for link in self.links.values_mut() {
            let mut bytes = Vec::new();
            link.session.take_transmit(&mut bytes);
            if !bytes.is_empty() && !link.client_gone && !link.server_closed {
                link.down.send(bytes, now + link.latency);
            }
        }
        for node in &mut self.nodes {
            for source in &mut node.sources {
                let Some(side) = source.mirror_side() else {
                    continue;
                };
                let mut bytes = Vec::new();
                side.session.take_transmit(&mut bytes);
                let link = side.link.and_then(|id| self.links.get_mut(&id));
                if let Some(link) = link
                    && !bytes.is_empty()
                    && !link.server_closed
                {
                    link.up.send(bytes, now + link.latency);
                }
            }
        }
    }

    /// Connections whose end was reached: the other side hears of it.
    fn reap(&mut self) -> bool {
        let mut progress = false;
        let ids: Vec<u64> = self.links.keys().copied().collect();
        for id in ids {
            let Some(link) = self.links.get_mut(&id) else {
                continue;
            };
            if !link.server_closed && link.session.closed().is_some() {
                // The server's connection drops once its last words are out.
                link.server_closed = true;
                link.up.clear();
                progress = true;
            }
            if link.client_gone && link.up.is_empty() && link.session.closed().is_none() {
                link.session.close(CloseReason::PeerClosed);
                progress = true;
            }
            if link.finished() {
                progress = true;
                let (client, notify) = (link.client, link.server_closed && !link.client_gone);
                self.links.remove(&id);
                self.drop_waits_of(id);
                if notify {
                    self.client_lost(client, id, "the server closed the connection");
                }
            }
        }
        progress
    }
}

fn uid_of(mutation: &Mutation) -> Option<String> {
    match mutation.args.get("uid") {
        Some(Value::Str(uid)) => Some(uid.clone()),
        _ => None,
    }
}
