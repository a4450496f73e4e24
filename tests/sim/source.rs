//! A simulated source: a root (a local [`Machine`]) or a mirror (a [`ClientSession`] that lives
//! across connections), with the versioned clock its server sessions read, as the server's hub
//! keeps it: every clock change is a new version, every ancestry change bumps the ancestry
//! count.

use std::sync::{Arc, Mutex, PoisonError};

use asyncmachine::machine::MutationKey;
use asyncmachine::machine::{
    ClockChange, Machine, MutationError, Observer, ObserverId, Outcome, Schema, SchemaDef,
    StateSource,
};
use asyncmachine::mirror::backoff::Jitter;
use asyncmachine::proto::dedup::Dedup;
use asyncmachine::proto::session::{
    ClientSession, ClockFeed, DiffCache, HandshakeError, Moment, Versioned,
};

/// Who waits for what a mirror asked upstream: a mutation's answer, a remote wait's end, the
/// last error.
#[derive(Debug)]
pub enum Pending {
    /// A client of this node, on this connection, under this request id; with the client's id
    /// and the mutation's key when this node recorded it (the answer finishes the record).
    Forward {
        link: u64,
        id: u64,
        recorded: Option<(String, MutationKey)>,
    },
    /// The test, under this tag (see [`super::Answer`]).
    Local(u64),
    /// A client's remote wait, forwarded: its connection, its id and the server session's key.
    ForwardWait { link: u64, id: u64, wait: u64 },
    /// The test's remote wait, under this tag.
    LocalWait(u64),
    /// A client's last-error request, forwarded: its connection and request id.
    ForwardErr { link: u64, id: u64 },
    /// The test's last-error request, under this tag.
    LocalErr(u64),
}

/// A source a node serves.
#[derive(Debug)]
pub struct Source {
    pub name: String,
    pub kind: Kind,
    /// The clock as its server sessions read it, by version.
    pub clock: Arc<Mutex<Versioned>>,
    pub cache: DiffCache,
    /// The keyed mutations it ran for clients, as a server's hub keeps them; a duplicate that
    /// arrives while the first copy runs waits as (its connection, its request id).
    pub dedup: Dedup<(u64, u64)>,
}

#[derive(Debug)]
pub enum Kind {
    Root(Root),
    Mirror(Box<MirrorSide>),
}

#[derive(Debug)]
pub struct Root {
    pub machine: Machine,
    observer: ObserverId,
}

/// A mirror: its session and what its connection task would keep.
#[derive(Debug)]
pub struct MirrorSide {
    pub session: ClientSession<Pending>,
    /// The replica's schema: the expected one, else empty until a welcome brings one.
    pub schema: Arc<Schema>,
    /// The schema the source must serve, if set.
    pub expected: Option<Arc<Schema>>,
    /// The node it dials.
    pub upstream: usize,
    /// Its connection, while it has one.
    pub link: Option<u64>,
    /// The backoff step of the next reconnect (`None`: the next attempt goes at once).
    pub attempt: Option<u32>,
    pub reconnect_at: Option<Moment>,
    pub jitter: Jitter,
    /// Every failed handshake, in order.
    pub failures: Vec<HandshakeError>,
    /// Every reason the server gave for ending a session, in order.
    pub closes: Vec<String>,
    /// Sessions established.
    pub sessions: u32,
    pub resyncs: u32,
}

/// Publishes a root's transitions as versions, as the server's hub does.
struct Publisher {
    clock: Arc<Mutex<Versioned>>,
    schema: u64,
}

impl Observer for Publisher {
    fn clock_changed(&self, change: &ClockChange<'_>) {
        let mut v = lock(&self.clock);
        v.version += 1;
        v.ticks = Arc::from(change.after);
        v.queue_tick = change.queue_tick;
        v.schema = self.schema;
    }
}

pub fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Source {
    pub fn root(name: &str, machine: Machine) -> Source {
        let schema = machine.schema().hash();
        let clock = Arc::new(Mutex::new(Versioned {
            version: 0,
            ticks: Arc::from(Vec::new()),
            queue_tick: 0,
            ancestry: 0,
            schema,
        }));
        let publisher = Publisher {
            clock: clock.clone(),
            schema,
        };
        let (observer, start) = machine.observe(Arc::new(publisher));
        {
            let mut v = lock(&clock);
            v.ticks = Arc::from(start);
            v.queue_tick = machine.queue_tick();
        }
        Source {
            name: name.to_owned(),
            kind: Kind::Root(Root { machine, observer }),
            clock,
            cache: DiffCache::default(),
            dedup: Dedup::default(),
        }
    }

    pub fn mirror(name: &str, side: MirrorSide) -> Source {
        let clock = Arc::new(Mutex::new(Versioned {
            version: 0,
            ticks: Arc::from(side.session.ticks()),
            queue_tick: side.session.queue_tick(),
            ancestry: 0,
            schema: side.schema.hash(),
        }));
        Source {
            name: name.to_owned(),
            kind: Kind::Mirror(Box::new(side)),
            clock,
            cache: DiffCache::default(),
            dedup: Dedup::default(),
        }
    }

    pub fn schema(&self) -> Arc<Schema> {
        match &self.kind {
            Kind::Root(root) => root.machine.schema(),
            Kind::Mirror(side) => side.schema.clone(),
        }
    }

    /// The source's own clock (not the published version).
    pub fn ticks(&self) -> Vec<u64> {
        match &self.kind {
            Kind::Root(root) => root.machine.clock(),
            Kind::Mirror(side) => side.session.ticks().to_vec(),
        }
    }

    pub fn queue_tick(&self) -> u64 {
        match &self.kind {
            Kind::Root(root) => root.machine.queue_tick(),
            Kind::Mirror(side) => side.session.queue_tick(),
        }
    }

    /// The source's id (its node's) and its upstreams' ids, nearest first.
    pub fn ancestry(&self, node: &str) -> Vec<String> {
        match &self.kind {
            Kind::Root(root) => root.machine.ancestry(),
            Kind::Mirror(side) => std::iter::once(node.to_owned())
                .chain(side.session.upstream().iter().cloned())
                .collect(),
        }
    }

    /// The source's parent id and tags, as a welcome carries them: a root's own, a mirror's
    /// source's (from its last welcome).
    pub fn identity(&self) -> (Option<String>, Vec<String>) {
        match &self.kind {
            Kind::Root(root) => (root.machine.parent_id(), root.machine.tags()),
            Kind::Mirror(side) => (
                side.session.parent_id().map(str::to_owned),
                side.session.tags().to_vec(),
            ),
        }
    }

    pub fn published(&self) -> Versioned {
        lock(&self.clock).clone()
    }

    /// The clock a welcome carries, of the source's schema now (the hub's `start_clock`).
    pub fn start_clock(&self, schema: u64) -> Versioned {
        let latest = self.published();
        if latest.schema == schema {
            return latest;
        }
        Versioned {
            ticks: Arc::from(self.ticks()),
            queue_tick: self.queue_tick(),
            schema,
            ..latest
        }
    }

    pub fn mirror_side(&mut self) -> Option<&mut MirrorSide> {
        match &mut self.kind {
            Kind::Mirror(side) => Some(side),
            Kind::Root(_) => None,
        }
    }

    pub fn machine(&self) -> Option<&Machine> {
        match &self.kind {
            Kind::Root(root) => Some(&root.machine),
            Kind::Mirror(_) => None,
        }
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        self.machine.unobserve(self.observer);
    }
}

impl MirrorSide {
    /// After a session event: publishes the replica's clock as a new version when its ticks
    /// changed or its queue tick went back, as the mirror's observers make the hub do.
    pub fn publish(&mut self, clock: &Mutex<Versioned>, changed: bool, schema_changed: bool) {
        if schema_changed && let Some(schema) = self.session.schema() {
            self.schema = schema.clone();
        }
        let mut v = lock(clock);
        if !changed && self.session.queue_tick() >= v.queue_tick {
            return;
        }
        v.version += 1;
        v.ticks = Arc::from(self.session.ticks());
        v.queue_tick = self.session.queue_tick();
        v.schema = self.schema.hash();
    }
}

/// The schema of a mirror that has none yet (as `Mirror::connect` starts).
pub fn empty_schema() -> Arc<Schema> {
    Arc::new(Schema::new(SchemaDef::of_states(Vec::new())).expect("an empty schema is valid"))
}

/// A source as its server sessions read it.
pub struct Feed<'a> {
    pub node: &'a str,
    pub source: &'a Source,
}

impl ClockFeed for Feed<'_> {
    fn latest(&self) -> Versioned {
        self.source.published()
    }

    fn schema_hash(&self) -> u64 {
        self.source.schema().hash()
    }

    fn schema(&self) -> Option<Arc<Schema>> {
        Some(self.source.schema())
    }

    fn ancestry(&self) -> Vec<String> {
        self.source.ancestry(self.node)
    }
}

/// A mutation's result as a server hands it to its session: a refusal from further up passes
/// down as its reason alone (as the server's connection does).
pub fn as_reply(result: Result<Outcome, MutationError>) -> Result<Outcome, String> {
    result.map_err(reason)
}

/// A request's failure as a server hands it to its session (the server's connection's
/// `reason`).
pub fn reason(error: MutationError) -> String {
    match error {
        MutationError::Refused(reason) => reason,
        other => other.to_string(),
    }
}
