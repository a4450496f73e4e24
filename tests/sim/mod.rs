//! A deterministic tree simulator: nodes wired in memory through their protocol sessions, a
//! stepped clock, and a seeded network with knobs for latency, connection loss, reorder of whole
//! connections and partition. Used as `mod sim;` by the tree tests.
//!
//! It plays the drivers' part (`src/server/conn.rs`, `push.rs`, `hub.rs`, `src/mirror`) without
//! sockets or a runtime: a node serves its sources to any number of connections through
//! [`ServerSession`]s; a mirror is a [`ClientSession`] that lives across connections, forwards
//! its clients' mutations upstream, and reconnects with backoff after a connection ends. Time
//! only moves when [`Sim::step`] jumps it to the next thing due (a delivery, a session timer, a
//! reconnect), so a tree's minutes run in milliseconds and the same seed gives the same run.
//!
//! - `net`: connections (two byte pipes), the knobs and the random numbers;
//! - `source`: roots and mirrors, and the versioned clock their server sessions read;
//! - this file: the simulator, its faults and its clock.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of the simulator"
)]

mod net;
mod source;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use asyncmachine::machine::{
    Args, Machine, Mutation, MutationError, MutationKind, Outcome, Schema, StateSource, Value,
};
use asyncmachine::mirror::backoff::{Jitter, delay};
use asyncmachine::proto::Compression;
use asyncmachine::proto::frame::DEFAULT_MAX_FRAME;
use asyncmachine::proto::handshake::{Offer, Policy};
use asyncmachine::proto::message::{Hello, Refusal, RefusalKind, Snapshot};
use asyncmachine::proto::session::{
    CatchUp, ClientConfig, ClientEvent, ClientSession, CloseReason, DiffCache, Moment, Phase,
    ServerEvent, ServerSession, ServerSessionConfig, ServerStats,
};

pub use net::{Knobs, SourceAt};
use net::{Link, Pipe, Rng};
use source::{Feed, NoSource, Pending, as_reply, empty_schema, lock};
pub use source::{Kind, MirrorSide, Source};

/// The drivers' defaults (`ServerConfig`, `MirrorConfig`).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const KEEPALIVE: Duration = Duration::from_secs(10);
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
const BACKOFF_INITIAL: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// How long `run_until_quiet` may take, in simulated time, before it gives up.
const QUIET_LIMIT: Duration = Duration::from_secs(600);
/// Steps without time moving forward that mean something spins.
const SPIN_LIMIT: u32 = 100_000;

/// A node: the sources it hosts, served to its clients under one access policy.
#[derive(Debug)]
pub struct Node {
    pub name: String,
    pub sources: Vec<Source>,
    config: Arc<ServerSessionConfig>,
    stats: Arc<ServerStats>,
}

/// How a mirror is set up.
#[derive(Debug, Clone, Default)]
pub struct MirrorOptions {
    /// The schema the source must serve; `None` takes the source's (and follows its changes).
    pub schema: Option<Arc<Schema>>,
    pub compression: bool,
    pub track: Option<Vec<String>>,
}

/// The answer to a mutation the test made at a mirror, with the mirror's clock when it came.
#[derive(Debug, Clone)]
pub struct Answer {
    pub tag: u64,
    pub uid: String,
    pub at: SourceAt,
    pub result: Result<Outcome, MutationError>,
    pub ticks: Vec<u64>,
    pub queue_tick: u64,
}

/// A mutation a root ran, with its `uid` argument.
#[derive(Debug, Clone)]
pub struct Executed {
    pub at: SourceAt,
    pub uid: Option<String>,
    pub result: Result<Outcome, MutationError>,
}

/// The simulator.
#[derive(Debug)]
pub struct Sim {
    now: Moment,
    pub knobs: Knobs,
    rng: Rng,
    nodes: Vec<Node>,
    links: BTreeMap<u64, Link>,
    next_link: u64,
    /// Node pairs (lower index first) that cannot reach each other.
    cut: BTreeSet<(usize, usize)>,
    executed: Vec<Executed>,
    answers: Vec<Answer>,
    next_tag: u64,
    /// The `uid` of each tag's mutation.
    uids: BTreeMap<u64, String>,
}

impl Sim {
    pub fn new(seed: u64) -> Sim {
        Sim {
            // Not zero: sessions read a zero moment as "never".
            now: Moment::since_epoch(Duration::from_secs(1)),
            knobs: Knobs::default(),
            rng: Rng::new(seed),
            nodes: Vec::new(),
            links: BTreeMap::new(),
            next_link: 1,
            cut: BTreeSet::new(),
            executed: Vec::new(),
            answers: Vec::new(),
            next_tag: 1,
            uids: BTreeMap::new(),
        }
    }

    // Building.

    /// The node with this name, made with an open policy when it does not exist yet.
    pub fn node(&mut self, name: &str) -> usize {
        if let Some(n) = self.nodes.iter().position(|node| node.name == name) {
            return n;
        }
        self.nodes.push(Node {
            name: name.to_owned(),
            sources: Vec::new(),
            config: server_config(Policy::default()),
            stats: Arc::default(),
        });
        self.nodes.len() - 1
    }

    /// Sets a node's access policy, for connections made after.
    pub fn set_policy(&mut self, node: &str, policy: Policy) {
        let n = self.node(node);
        let config = Arc::make_mut(&mut self.nodes[n].config);
        config.acl = Policy {
            compression: true,
            ..policy
        };
    }

    /// Paces a node's pushes: at most one per interval per client, for connections made after.
    pub fn set_push_interval(&mut self, node: &str, interval: Option<Duration>) {
        let n = self.node(node);
        Arc::make_mut(&mut self.nodes[n].config).min_push_interval = interval;
    }

    /// A root: a local machine with the node's name as its id, `start` activated.
    pub fn add_root(
        &mut self,
        node: &str,
        source: &str,
        schema: Arc<Schema>,
        start: &[&str],
    ) -> SourceAt {
        let n = self.node(node);
        let root = Source::root(source, start_machine(node, schema, start));
        self.nodes[n].sources.push(root);
        SourceAt {
            node: n,
            source: self.nodes[n].sources.len() - 1,
        }
    }

    /// A mirror at `node` of `upstream_source` at `upstream`; it dials at once.
    pub fn add_mirror(
        &mut self,
        node: &str,
        source: &str,
        upstream: &str,
        upstream_source: &str,
        options: MirrorOptions,
    ) -> SourceAt {
        let n = self.node(node);
        let up = self.node(upstream);
        let config = ClientConfig {
            client_id: node.to_owned(),
            source: upstream_source.to_owned(),
            compression: options.compression,
            track: options.track,
            token: None,
            max_frame: DEFAULT_MAX_FRAME,
            handshake_timeout: HANDSHAKE_TIMEOUT,
            keepalive: KEEPALIVE,
            idle_timeout: IDLE_TIMEOUT,
        };
        let side = self.fresh_mirror(up, config, options.schema);
        self.nodes[n].sources.push(Source::mirror(source, side));
        SourceAt {
            node: n,
            source: self.nodes[n].sources.len() - 1,
        }
    }

    /// A mirror as it starts: an all-zero clock, dialing at once.
    fn fresh_mirror(
        &mut self,
        upstream: usize,
        config: ClientConfig,
        expected: Option<Arc<Schema>>,
    ) -> MirrorSide {
        MirrorSide {
            session: ClientSession::new(config, expected.clone()),
            schema: expected.clone().unwrap_or_else(empty_schema),
            expected,
            upstream,
            link: None,
            attempt: None,
            reconnect_at: Some(self.now),
            jitter: Jitter::new(self.rng.next_u64()),
            failures: Vec::new(),
            closes: Vec::new(),
            sessions: 0,
            resyncs: 0,
        }
    }

    // Getters.

    pub fn now(&self) -> Moment {
        self.now
    }

    pub fn name(&self, node: usize) -> &str {
        &self.nodes[node].name
    }

    pub fn source(&self, at: SourceAt) -> &Source {
        &self.nodes[at.node].sources[at.source]
    }

    /// Every source of every node.
    pub fn sources(&self) -> impl Iterator<Item = SourceAt> + '_ {
        self.nodes
            .iter()
            .enumerate()
            .flat_map(|(node, n)| (0..n.sources.len()).map(move |source| SourceAt { node, source }))
    }

    pub fn machine(&self, at: SourceAt) -> &Machine {
        self.source(at).machine().expect("a root")
    }

    pub fn mirror(&self, at: SourceAt) -> &MirrorSide {
        match &self.source(at).kind {
            Kind::Mirror(side) => side,
            Kind::Root(_) => panic!("{at:?} is a root"),
        }
    }

    /// The source's clock: ticks and queue tick.
    pub fn clock(&self, at: SourceAt) -> (Vec<u64>, u64) {
        let source = self.source(at);
        (source.ticks(), source.queue_tick())
    }

    /// The tick of a named state at a source (0 for a state its schema lacks).
    pub fn tick(&self, at: SourceAt, state: &str) -> u64 {
        let source = self.source(at);
        source
            .schema()
            .index(state)
            .map_or(0, |i| source.ticks()[i])
    }

    /// The source a mirror dials, as of its config (`None` for a root).
    pub fn upstream_of(&self, at: SourceAt) -> Option<SourceAt> {
        let Kind::Mirror(side) = &self.source(at).kind else {
            return None;
        };
        let node = &self.nodes[side.upstream];
        let wanted = &side.session.config().source;
        let source = if wanted.is_empty() && node.sources.len() == 1 {
            0
        } else {
            node.sources.iter().position(|s| s.name == *wanted)?
        };
        Some(SourceAt {
            node: side.upstream,
            source,
        })
    }

    /// The root a source's chain of upstreams ends at (itself for a root).
    pub fn root_of(&self, at: SourceAt) -> Option<SourceAt> {
        let mut at = at;
        for _ in 0..=self.nodes.len() * 4 {
            match self.upstream_of(at) {
                Some(up) => at = up,
                None => return self.source(at).machine().map(|_| at),
            }
        }
        None
    }

    /// Every answer to the test's mutations so far, in arrival order.
    pub fn answers(&self) -> &[Answer] {
        &self.answers
    }

    pub fn answer(&self, tag: u64) -> Option<&Answer> {
        self.answers.iter().find(|a| a.tag == tag)
    }

    /// Every mutation the roots ran for a client, in order.
    pub fn executed(&self) -> &[Executed] {
        &self.executed
    }

    /// Mirrors downstream of `root` whose clock (ticks and queue tick) is not the root
    /// machine's. The queue tick travels with tick changes: after a mutation that changed no
    /// tick (a no-op, a cancel) mirrors have it only once a later one does.
    pub fn divergent(&self, root: SourceAt) -> Vec<String> {
        let machine = self.machine(root);
        self.differing(root, (machine.clock(), machine.queue_tick()), |clock| clock)
    }

    /// Mirrors downstream of `root` whose ticks are not the root machine's.
    pub fn divergent_ticks(&self, root: SourceAt) -> Vec<String> {
        let machine = self.machine(root);
        self.differing(root, (machine.clock(), 0), |(ticks, _)| (ticks, 0))
    }

    fn differing(
        &self,
        root: SourceAt,
        want: (Vec<u64>, u64),
        compared: impl Fn((Vec<u64>, u64)) -> (Vec<u64>, u64),
    ) -> Vec<String> {
        self.sources()
            .filter(|&at| at != root && self.root_of(at) == Some(root))
            .filter_map(|at| {
                let have = compared(self.clock(at));
                (have != want).then(|| {
                    format!(
                        "{}/{}: {have:?}, root {want:?}",
                        self.nodes[at.node].name,
                        self.source(at).name
                    )
                })
            })
            .collect()
    }

    /// What every source and connection is doing, for a failing test's message.
    pub fn describe(&self) -> String {
        let mut out = format!("at {:?}:\n", self.now.elapsed());
        for at in self.sources() {
            let source = self.source(at);
            let (ticks, queue_tick) = self.clock(at);
            let _ = write!(
                out,
                "  {}/{}: {ticks:?} q{queue_tick}",
                self.nodes[at.node].name, source.name
            );
            if let Kind::Mirror(side) = &source.kind {
                let _ = write!(
                    out,
                    " {:?} link {:?} timer {:?} retry {:?} sessions {} in flight {} last failure {:?}",
                    side.session.phase(),
                    side.link,
                    side.session.poll_timeout().map(Moment::elapsed),
                    side.reconnect_at.map(Moment::elapsed),
                    side.sessions,
                    side.session.in_flight(),
                    side.failures.last().map(ToString::to_string),
                );
            }
            out.push('\n');
        }
        for (id, link) in &self.links {
            let _ = writeln!(
                out,
                "  link {id}: {} -> {} ready {} closed {:?} gone {} timer {:?} due up {:?} down {:?}",
                self.nodes[link.client.node].name,
                self.nodes[link.server].name,
                link.session.is_ready(),
                link.session.closed(),
                link.client_gone,
                link.session.poll_timeout().map(Moment::elapsed),
                link.up.due().map(Moment::elapsed),
                link.down.due().map(Moment::elapsed),
            );
        }
        let _ = writeln!(out, "  cut: {:?}", self.cut);
        out
    }

    // Mutations.

    /// A mutation from the test at `at`, with a `uid` argument to recognize it by: a root
    /// runs it now, a mirror sends it upstream. The answer is found by the returned tag.
    pub fn mutate(
        &mut self,
        at: SourceAt,
        kind: MutationKind,
        states: &[&str],
        uid: &str,
    ) -> Result<u64, MutationError> {
        let source = &mut self.nodes[at.node].sources[at.source];
        let positions = source
            .schema()
            .indices(states)
            .map_err(|name| MutationError::UnknownState(name.to_owned()))?;
        let mutation = Mutation::new(kind, positions, Args::new().with("uid", uid));
        let tag = self.next_tag;
        self.next_tag += 1;
        match &mut source.kind {
            Kind::Root(root) => {
                let result = root.machine.mutate_now(mutation);
                self.executed.push(Executed {
                    at,
                    uid: Some(uid.to_owned()),
                    result: result.clone(),
                });
                self.answers.push(Answer {
                    tag,
                    uid: uid.to_owned(),
                    at,
                    result,
                    ticks: root.machine.clock(),
                    queue_tick: root.machine.queue_tick(),
                });
            }
            Kind::Mirror(side) => {
                side.session.mutate(mutation, Some(Pending::Local(tag)))?;
                self.uids.insert(tag, uid.to_owned());
            }
        }
        self.pump();
        Ok(tag)
    }

    // Faults.

    /// Breaks the mirror's connection: both ends see it lost at once, bytes in flight vanish.
    pub fn break_link(&mut self, at: SourceAt) {
        if let Some(id) = self.mirror(at).link {
            self.break_link_id(id);
        }
        self.pump();
    }

    /// Cuts two nodes apart until healed: bytes between them are held (a byte stream loses
    /// nothing; it stalls) and dials fail. Sessions notice through their idle timers.
    pub fn partition(&mut self, a: usize, b: usize) {
        self.cut.insert((a.min(b), a.max(b)));
    }

    pub fn heal(&mut self, a: usize, b: usize) {
        self.cut.remove(&(a.min(b), a.max(b)));
    }

    pub fn heal_all(&mut self) {
        self.cut.clear();
    }

    /// Restarts a root's node with a fresh machine (`start` activated): every connection the
    /// node serves breaks, and its clock starts over (possibly with another schema).
    pub fn restart_root(&mut self, at: SourceAt, schema: Arc<Schema>, start: &[&str]) {
        let served: Vec<u64> = self
            .links
            .iter()
            .filter(|(_, link)| link.server == at.node)
            .map(|(id, _)| *id)
            .collect();
        for id in served {
            self.break_link_id(id);
        }
        let node = &mut self.nodes[at.node];
        let source = &mut node.sources[at.source];
        assert!(source.machine().is_some(), "only a root restarts");
        *source = Source::root(&source.name, start_machine(&node.name, schema, start));
        self.pump();
    }

    /// Restarts a mirror's node: every connection the node serves breaks, and so does the
    /// mirror's own; the mirror starts over from an all-zero clock and dials again.
    pub fn restart_mirror(&mut self, at: SourceAt) {
        let ended: Vec<u64> = self
            .links
            .iter()
            .filter(|(_, link)| link.server == at.node || link.client == at)
            .map(|(id, _)| *id)
            .collect();
        for id in ended {
            self.break_link_id(id);
        }
        let (upstream, config, expected) = {
            let side = self.mirror(at);
            let config = side.session.config().clone();
            (side.upstream, config, side.expected.clone())
        };
        let side = self.fresh_mirror(upstream, config, expected);
        let source = &mut self.nodes[at.node].sources[at.source];
        *source = Source::mirror(&source.name, side);
        self.pump();
    }

    fn break_link_id(&mut self, id: u64) {
        let Some(mut link) = self.links.remove(&id) else {
            return;
        };
        link.session
            .close(CloseReason::Io("the connection broke".into()));
        if !link.client_gone {
            self.client_lost(link.client, id, "the connection broke");
        }
    }

    /// The mirror's connection `id` ended under it.
    fn client_lost(&mut self, at: SourceAt, id: u64, reason: &str) {
        if let Some(side) = self.nodes[at.node].sources[at.source].mirror_side()
            && side.link == Some(id)
        {
            side.session.handle_lost(reason.to_owned());
        }
    }

    // Time.

    /// Moves the clock to the next thing due and does it; `false` when nothing is due.
    pub fn step(&mut self) -> bool {
        self.pump();
        let Some(next) = self.next_due() else {
            return false;
        };
        self.advance(next);
        true
    }

    /// Runs for `span` of simulated time.
    pub fn run_for(&mut self, span: Duration) {
        let end = self.now + span;
        let mut spins = 0;
        loop {
            self.pump();
            match self.next_due().filter(|&due| due <= end) {
                Some(due) => {
                    spins = if due > self.now { 0 } else { spins + 1 };
                    assert!(
                        spins < SPIN_LIMIT,
                        "time stands still at {:?}: {}",
                        due.elapsed(),
                        self.describe()
                    );
                    self.advance(due);
                }
                None => {
                    self.now = end;
                    return;
                }
            }
        }
    }

    /// Runs until `done` holds; panics with the simulator's state after `limit`.
    pub fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Sim) -> bool) {
        let end = self.now + limit;
        let mut spins = 0;
        self.pump();
        while !done(self) {
            let due = self.next_due().unwrap_or(end);
            assert!(due <= end, "not done within {limit:?}: {}", self.describe());
            spins = if due > self.now { 0 } else { spins + 1 };
            assert!(spins < SPIN_LIMIT, "time stands still: {}", self.describe());
            self.advance(due);
            self.pump();
        }
    }

    /// Runs until the tree is [quiet](Sim::quiet).
    pub fn run_until_quiet(&mut self) {
        self.run_until(QUIET_LIMIT, Sim::quiet);
    }

    /// Nothing in flight, no push held back by pacing (every client has its source's
    /// published clock), and every mirror that can reach its upstream connected with no
    /// request waiting.
    pub fn quiet(&self) -> bool {
        let links = self.links.values().all(|link| {
            link.up.is_empty()
                && link.down.is_empty()
                && !link.server_closed
                && !link.client_gone
                && link.session.is_ready()
                && link.served.is_some_and(|s| {
                    let published = self.nodes[link.server].sources[s].published();
                    let client = self.source(link.client);
                    *published.ticks == *client.ticks()
                        && published.queue_tick == client.queue_tick()
                })
        });
        links
            && self.sources().all(|at| match &self.source(at).kind {
                Kind::Root(_) => true,
                Kind::Mirror(side) => {
                    side.session.in_flight() == 0
                        && (side.session.phase() == Phase::Ready
                            || self.is_cut(at.node, side.upstream))
                }
            })
    }

    fn is_cut(&self, a: usize, b: usize) -> bool {
        self.cut.contains(&(a.min(b), a.max(b)))
    }

    /// The earliest delivery, session timer or reconnect.
    fn next_due(&self) -> Option<Moment> {
        let links = self.links.values().flat_map(|link| {
            // Bytes held by a partition are due when it heals.
            let held = self.is_cut(link.client.node, link.server);
            let due = |pipe: &Pipe| pipe.due().filter(|_| !held);
            [due(&link.up), due(&link.down), link.session.poll_timeout()]
        });
        let mirrors = self.nodes.iter().flat_map(|node| {
            node.sources.iter().flat_map(|source| match &source.kind {
                Kind::Mirror(side) => [side.session.poll_timeout(), side.reconnect_at],
                Kind::Root(_) => [None, None],
            })
        });
        links.chain(mirrors).flatten().min()
    }

    fn advance(&mut self, to: Moment) {
        self.now = self.now.max(to);
        self.deliver();
        self.timeouts();
        self.reconnects();
        self.pump();
    }

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
    fn deliver(&mut self) {
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
    fn timeouts(&mut self) {
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
    fn reconnects(&mut self) {
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
    fn pump(&mut self) {
        loop {
            let mut progress = self.serve_events();
            progress |= self.mirror_events();
            progress |= self.catch_up();
            self.flush();
            progress |= self.reap();
            if !progress {
                return;
            }
        }
    }

    /// Server sessions' work: hellos to answer, mutations to run.
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
        let offer = Offer {
            schema: &schema,
            ancestry: &ancestry,
            snapshot: Snapshot {
                ticks: start.ticks.to_vec(),
                queue_tick: start.queue_tick,
            },
        };
        let Ok(accepted) = link.session.accept(offer) else {
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
                    }),
                )
                .err()
                .map(Err),
        };
        if let Some(result) = result {
            let feed = Feed {
                node: &node.name,
                source: &node.sources[s],
            };
            link.session
                .handle_mutation_result(request, as_reply(result), now, &feed);
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
                        pending: Pending::Forward { link, id },
                        result,
                    } => replies.push((link, id, result)),
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
            let source = &node.sources[at.source];
            for (id, request, result) in replies {
                if let Some(link) = self.links.get_mut(&id) {
                    let feed = Feed {
                        node: &node.name,
                        source,
                    };
                    link.session
                        .handle_mutation_result(request, as_reply(result), now, &feed);
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
                if notify {
                    self.client_lost(client, id, "the server closed the connection");
                }
            }
        }
        progress
    }
}

fn server_config(policy: Policy) -> Arc<ServerSessionConfig> {
    Arc::new(ServerSessionConfig {
        max_frame: DEFAULT_MAX_FRAME,
        handshake_timeout: HANDSHAKE_TIMEOUT,
        idle_timeout: IDLE_TIMEOUT,
        keepalive: KEEPALIVE,
        min_push_interval: None,
        compression: Some(Compression::default()),
        acl: Policy {
            compression: true,
            ..policy
        },
    })
}

/// A root machine with its node's name as its id, as `am-node` makes them.
fn start_machine(node: &str, schema: Arc<Schema>, start: &[&str]) -> Machine {
    let machine = Machine::builder(schema).id(node).build();
    if !start.is_empty() {
        let outcome = machine.add(start, Args::new()).expect("start states exist");
        assert_eq!(outcome, Outcome::Executed, "start states are activated");
    }
    machine
}

fn uid_of(mutation: &Mutation) -> Option<String> {
    match mutation.args.get("uid") {
        Some(Value::Str(uid)) => Some(uid.clone()),
        _ => None,
    }
}
