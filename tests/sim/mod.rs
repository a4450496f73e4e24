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
//! - `drive`: the drivers' work between two moments;
//! - `remote`: remote waits and last-error requests, run at roots and forwarded by mirrors;
//! - this file: building a tree, reading it, mutations, faults and the clock.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of the simulator"
)]

mod drive;
mod net;
mod remote;
mod source;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use asyncmachine::machine::{
    Args, Machine, Mutation, MutationError, MutationKind, Outcome, Schema, SchemaDef, StateDef,
    StateSource, WaitError,
};
use asyncmachine::mirror::backoff::Jitter;
use asyncmachine::proto::Compression;
use asyncmachine::proto::acl::Acl;
use asyncmachine::proto::config::Limits;
use asyncmachine::proto::frame::DEFAULT_MAX_FRAME;
use asyncmachine::proto::session::{
    ClientConfig, ClientSession, CloseReason, Moment, Phase, ServerSessionConfig, ServerStats,
};

pub use net::{Knobs, SourceAt};
use net::{Link, Pipe, Rng};
use remote::{ServedWait, TestWait};
pub use source::{Kind, MirrorSide, Source};
use source::{Pending, empty_schema};

/// The schema the simulated trees run: a start state, one that requires it, a multi state and
/// two that remove each other.
pub fn schema() -> Arc<Schema> {
    Arc::new(
        Schema::new(SchemaDef::of_states(vec![
            StateDef::new("Start"),
            StateDef::new("Flag").require(["Start"]),
            StateDef::new("Tick").multi(),
            StateDef::new("Green").remove(["Red"]),
            StateDef::new("Red").remove(["Green"]),
        ]))
        .expect("valid schema"),
    )
}

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
    /// How its mutations outlive a broken link; `None`: no retries.
    pub retry: Option<asyncmachine::proto::session::RetryPolicy>,
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
    /// Keyed mutations a source answered from its record or joined to a running first copy.
    deduplicated: u64,
    answers: Vec<Answer>,
    next_tag: u64,
    /// The `uid` of each tag's mutation.
    uids: BTreeMap<u64, String>,
    /// Waits nodes' servers run for their clients, by connection and the session's key.
    served_waits: BTreeMap<(u64, u64), ServedWait>,
    /// The test's waits not ended yet, and the ends of the others, by tag.
    test_waits: BTreeMap<u64, TestWait>,
    wait_results: BTreeMap<u64, Result<(), WaitError>>,
    /// Answers to the test's last-error requests, by tag.
    err_answers: BTreeMap<u64, Result<Option<String>, MutationError>>,
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
            deduplicated: 0,
            answers: Vec::new(),
            next_tag: 1,
            uids: BTreeMap::new(),
            served_waits: BTreeMap::new(),
            test_waits: BTreeMap::new(),
            wait_results: BTreeMap::new(),
            err_answers: BTreeMap::new(),
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
            config: server_config(Acl::default()),
            stats: Arc::default(),
        });
        self.nodes.len() - 1
    }

    /// Sets a node's access rules, for connections made after.
    pub fn set_acl(&mut self, node: &str, acl: Acl) {
        let n = self.node(node);
        Arc::make_mut(&mut self.nodes[n].config).acl = acl;
    }

    /// Paces a node's pushes: at most one per interval per client, for connections made after.
    pub fn set_push_interval(&mut self, node: &str, interval: Option<Duration>) {
        let n = self.node(node);
        Arc::make_mut(&mut self.nodes[n].config)
            .limits
            .min_push_interval = interval;
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
            retry: options
                .retry
                .unwrap_or(asyncmachine::proto::session::RetryPolicy::NONE),
            key_epoch: self.rng.next_u64(),
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
    /// Keyed mutations a source answered from its record (or joined to a running first copy)
    /// instead of running them again.
    pub fn deduplicated(&self) -> u64 {
        self.deduplicated
    }

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
                side.session
                    .mutate(mutation, Some(Pending::Local(tag)), self.now)?;
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
        self.dispose_test_waits_at(at);
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
        self.dispose_test_waits_at(at);
        let side = self.fresh_mirror(upstream, config, expected);
        let source = &mut self.nodes[at.node].sources[at.source];
        *source = Source::mirror(&source.name, side);
        self.pump();
    }

    fn break_link_id(&mut self, id: u64) {
        let Some(mut link) = self.links.remove(&id) else {
            return;
        };
        self.drop_waits_of(id);
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
}

fn server_config(acl: Acl) -> Arc<ServerSessionConfig> {
    Arc::new(ServerSessionConfig {
        limits: Limits {
            max_frame: DEFAULT_MAX_FRAME,
            handshake_timeout: HANDSHAKE_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
            keepalive: KEEPALIVE,
            min_push_interval: None,
            ..Limits::default()
        },
        compression: Some(Compression::default()),
        acl,
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
