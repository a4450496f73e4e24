//! The page's side of the library: the machines and mirrors a page holds, by handle, and the
//! commands the glue sends them as JSON (`{"op": ...}`), answered in JSON.
//!
//! Local machines and mirrors answer the same commands (reads, waits, mutations, observers),
//! as both are a [`StateSource`] in Rust. Handlers are JavaScript functions, called through the
//! [`Host`]. Waits and mutations that do not resolve at once become *tasks*: futures kept here
//! and polled when woken, their results handed to the glue by `poll`. A mirror's connection is
//! the glue's WebSocket: it hands bytes and time in and takes what is to be sent.
//!
//! Reentrancy: a handler may call back in (mutate, read) while a transition runs. No lock of
//! this module is held while a machine runs or the host is called.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use asyncmachine::driven::{DrivenMirror, DrivenServer, MirrorEvent, ServerDrive};
use asyncmachine::machine::{
    ClockChange, Event, Machine, MutationError, MutationKind, Outcome, Schema, SchemaDef,
    StateSource, WaitError,
};
use asyncmachine::proto::Compression;
use asyncmachine::proto::frame::DEFAULT_MAX_FRAME;
use asyncmachine::proto::message::RefusalKind;
use asyncmachine::proto::session::{ClientConfig, HandshakeError, Moment, ServerSessionConfig};
use serde_json::{Value as Json, json};

use crate::error::WebError;
use crate::values::{args_from_json, args_to_json, value_to_json};

/// What the page (the glue) does for the library.
pub trait Host: Send + Sync {
    /// Runs JavaScript handler `func` with `event`: `Ok(false)` cancels (negotiation
    /// handlers), `Err` is the handler's error.
    fn handler(&self, func: u32, event: &Json) -> Result<bool, String>;
    /// Tells the page of a change of a machine it observes.
    fn changed(&self, note: &Json);
    /// Tasks were woken or a mirror has bytes to send: the glue polls and flushes soon (not
    /// from inside this call).
    fn wake(&self);
    /// Wall time, microseconds since the Unix epoch: what telemetry records are stamped with.
    fn now_us(&self) -> u64;
}

type Task = Pin<Box<dyn Future<Output = Result<Json, WebError>> + Send>>;

/// A machine or a mirror held by the page.
#[derive(Clone)]
struct Entry {
    source: Arc<dyn StateSource>,
    /// Set for a local machine (handlers are bound on it).
    machine: Option<Machine>,
    /// Set for a mirror (the glue drives its connection).
    mirror: Option<DrivenMirror>,
}

#[derive(Default)]
struct Registry {
    next: u32,
    entries: HashMap<u32, Entry>,
    /// Machines the page serves (the relay's listen route), by handle.
    servers: HashMap<u32, Arc<DrivenServer>>,
    tasks: HashMap<u32, Task>,
    /// A disposed mirror's last words (its bye), until the glue takes them to send.
    farewells: HashMap<u32, Vec<u8>>,
}

/// Task ids woken since the last poll.
#[derive(Default)]
struct Woken {
    ids: Mutex<Vec<u32>>,
}

struct TaskWaker {
    id: u32,
    woken: Arc<Woken>,
    host: Arc<dyn Host>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        lock(&self.woken.ids).push(self.id);
        self.host.wake();
    }
}

/// The machines, mirrors and tasks of one page.
pub struct Page {
    host: Arc<dyn Host>,
    registry: Mutex<Registry>,
    woken: Arc<Woken>,
    /// The page's telemetry, once started (`debug`).
    telemetry: Mutex<Option<PageTelemetry>>,
}

impl std::fmt::Debug for Page {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let registry = lock(&self.registry);
        f.debug_struct("Page")
            .field("sources", &registry.entries.len())
            .field("tasks", &registry.tasks.len())
            .finish()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn field<'a>(command: &'a Json, name: &str) -> Result<&'a Json, WebError> {
    command
        .get(name)
        .ok_or_else(|| WebError::bad_request(format!("missing \"{name}\"")))
}

fn string<'a>(command: &'a Json, name: &str) -> Result<&'a str, WebError> {
    field(command, name)?
        .as_str()
        .ok_or_else(|| WebError::bad_request(format!("\"{name}\" must be a string")))
}

fn names(command: &Json, name: &str) -> Result<Vec<String>, WebError> {
    let list = match field(command, name)? {
        Json::String(one) => return Ok(vec![one.clone()]),
        Json::Array(list) => list,
        _ => {
            return Err(WebError::bad_request(format!(
                "\"{name}\" must be state names"
            )));
        }
    };
    list.iter()
        .map(|n| n.as_str().map(str::to_owned))
        .collect::<Option<_>>()
        .ok_or_else(|| WebError::bad_request(format!("\"{name}\" must be state names")))
}

/// Milliseconds from the page's clock (`performance.now()`) as a session's moment.
pub fn moment(ms: f64) -> Moment {
    Moment::since_epoch(Duration::from_secs_f64(ms.max(0.0) / 1000.0))
}

impl Page {
    pub fn new(host: Arc<dyn Host>) -> Page {
        Page {
            host,
            registry: Mutex::default(),
            woken: Arc::default(),
            telemetry: Mutex::default(),
        }
    }

    /// Runs one command.
    pub fn call(&self, command: &Json) -> Result<Json, WebError> {
        let op = string(command, "op")?;
        match op {
            "machine" => self.create_machine(command),
            "mirror" => self.create_mirror(command),
            "poll" => Ok(self.poll()),
            "serverOpen" | "serverTimeout" | "serverLost" | "serverPump" | "unserve" => {
                self.on_server(op, command)
            }
            "debug" => {
                let host = self.host.clone();
                let telemetry = PageTelemetry::start(command, Arc::new(move || host.now_us()))?;
                // The one before (if any) unbinds its tracers as it drops.
                *lock(&self.telemetry) = Some(telemetry);
                Ok(Json::Null)
            }
            "debugTake" => lock(&self.telemetry)
                .as_mut()
                .ok_or_else(|| {
                    WebError::bad_request("telemetry is not started: send \"debug\" first")
                })?
                .take(command),
            "debugStop" => {
                lock(&self.telemetry).take();
                Ok(Json::Null)
            }
            "cancel" => {
                let task = field(command, "task")?.as_u64().unwrap_or(0) as u32;
                lock(&self.registry).tasks.remove(&task);
                Ok(Json::Null)
            }
            _ => {
                let handle = field(command, "h")?
                    .as_u64()
                    .ok_or_else(|| WebError::bad_request("\"h\" must be a handle"))?
                    as u32;
                let entry = lock(&self.registry)
                    .entries
                    .get(&handle)
                    .cloned()
                    .ok_or_else(|| {
                        WebError::disposed(format!("no machine with handle {handle}"))
                    })?;
                self.on_entry(op, handle, &entry, command)
            }
        }
    }

    fn on_entry(
        &self,
        op: &str,
        handle: u32,
        entry: &Entry,
        command: &Json,
    ) -> Result<Json, WebError> {
        let source = &entry.source;
        match op {
            "schema" => Ok(schema_json(&source.schema())),
            "read" => {
                let mut read = read_json(source.as_ref());
                if let Some(mirror) = &entry.mirror {
                    let (hidden, read_only) = mirror.acl();
                    read["hidden"] = json!(hidden);
                    read["readOnly"] = json!(read_only);
                }
                Ok(read)
            }
            "mutate" => self.mutate(source, command),
            "when" => self.wait(source, command),
            "err" => {
                let err = source.err();
                self.start(Box::pin(async move {
                    err.await.map(|e| json!(e)).map_err(WebError::from)
                }))
            }
            "on" => {
                let machine = entry.machine.as_ref().ok_or_else(|| {
                    WebError::bad_request("handlers run on the machine that owns the states: bind them at the source, not on a mirror")
                })?;
                self.bind(machine, command)
            }
            "observe" => {
                let host = self.host.clone();
                let observed = source.clone();
                source.observe(Arc::new(move |change: &ClockChange<'_>| {
                    let schema = observed.schema();
                    let changed: Vec<&str> = change
                        .changed
                        .iter()
                        .filter(|&&i| i < schema.len())
                        .map(|&i| schema.name(i))
                        .collect();
                    host.changed(&json!({
                        "h": handle,
                        "changed": changed,
                        "clock": change.after,
                        "queueTick": change.queue_tick,
                        "schemaHash": schema.hash().to_string(),
                    }));
                }));
                Ok(Json::Null)
            }
            "serve" => {
                let name = string(command, "name")?;
                let host = self.host.clone();
                // A hello names the machine as offered, or as the relay's path to it.
                let names = vec![name.to_owned(), format!("listen/{name}")];
                // Nodes that ask for compression get it (ruzstd in this build).
                let config = ServerSessionConfig {
                    compression: Some(Compression::default()),
                    ..ServerSessionConfig::default()
                };
                let server = DrivenServer::new(names, source.clone(), config, move || host.wake());
                let mut registry = lock(&self.registry);
                registry.next += 1;
                let s = registry.next;
                registry.servers.insert(s, Arc::new(server));
                Ok(json!({ "s": s }))
            }
            "debugAttach" => {
                let name = string(command, "name")?;
                lock(&self.telemetry)
                    .as_mut()
                    .ok_or_else(|| {
                        WebError::bad_request("telemetry is not started: send \"debug\" first")
                    })?
                    .attach(name, source.clone())?;
                Ok(Json::Null)
            }
            "dispose" => {
                if let Some(machine) = &entry.machine {
                    machine.dispose();
                }
                let mut farewell = Vec::new();
                let events = entry.mirror.as_ref().map(|mirror| {
                    let events = mirror.close();
                    mirror.take_transmit(&mut farewell);
                    events
                });
                let mut registry = lock(&self.registry);
                registry.entries.remove(&handle);
                // Kept for the glue's next `take` of this handle, which sends it.
                if !farewell.is_empty() {
                    registry.farewells.insert(handle, farewell);
                }
                Ok(json!({ "events": events.map(|e| events_json(&e)) }))
            }
            // The mirror's connection, driven by the glue.
            "connected" | "timeout" | "lost" => {
                let mirror = entry
                    .mirror
                    .as_ref()
                    .ok_or_else(|| WebError::bad_request("only a mirror has a connection"))?;
                let events = match op {
                    "connected" => mirror.connected(moment(now(command)?)),
                    "timeout" => mirror.handle_timeout(moment(now(command)?)),
                    _ => mirror.handle_lost(string(command, "reason")?.to_owned()),
                };
                Ok(self.mirror_reply(mirror, &events))
            }
            _ => Err(WebError::bad_request(format!("unknown op {op:?}"))),
        }
    }

    fn server(&self, command: &Json) -> Result<(u32, Arc<DrivenServer>), WebError> {
        let s = field(command, "s")?
            .as_u64()
            .ok_or_else(|| WebError::bad_request("\"s\" must be a server handle"))?
            as u32;
        lock(&self.registry)
            .servers
            .get(&s)
            .cloned()
            .map(|server| (s, server))
            .ok_or_else(|| WebError::disposed(format!("no server with handle {s}")))
    }

    /// A served machine's connections, driven by the glue.
    fn on_server(&self, op: &str, command: &Json) -> Result<Json, WebError> {
        let (s, server) = self.server(command)?;
        let conn = || {
            field(command, "conn")?
                .as_u64()
                .map(|c| c as u32)
                .ok_or_else(|| WebError::bad_request("\"conn\" must be a connection number"))
        };
        let drives = match op {
            "serverOpen" => {
                server.open(conn()?, moment(now(command)?));
                Vec::new()
            }
            "serverTimeout" => server.handle_timeout(conn()?, moment(now(command)?)),
            "serverLost" => {
                server.handle_lost(conn()?);
                Vec::new()
            }
            "unserve" => {
                lock(&self.registry).servers.remove(&s);
                return Ok(Json::Null);
            }
            _ => server.pump(moment(now(command)?)),
        };
        Ok(server_reply(&server, &drives))
    }

    /// Bytes from a served machine's connection `conn`.
    pub fn server_bytes(
        &self,
        s: u32,
        conn: u32,
        bytes: &[u8],
        now_ms: f64,
    ) -> Result<Json, WebError> {
        let (_, server) = self.server(&json!({ "s": s }))?;
        let drives = server.handle_bytes(conn, bytes, moment(now_ms));
        Ok(server_reply(&server, &drives))
    }

    /// What a served machine's connection `conn` has to send.
    pub fn server_take(&self, s: u32, conn: u32) -> Vec<u8> {
        let mut out = Vec::new();
        if let Ok((_, server)) = self.server(&json!({ "s": s })) {
            server.take_transmit(conn, &mut out);
        }
        out
    }

    /// Bytes from a mirror's WebSocket.
    pub fn bytes(&self, handle: u32, bytes: &[u8], now_ms: f64) -> Result<Json, WebError> {
        let mirror = self.mirror(handle)?;
        let events = mirror.handle_bytes(bytes, moment(now_ms));
        Ok(self.mirror_reply(&mirror, &events))
    }

    /// What a mirror has to send (empty when nothing).
    pub fn take(&self, handle: u32) -> Vec<u8> {
        if let Some(farewell) = lock(&self.registry).farewells.remove(&handle) {
            return farewell;
        }
        let mut out = Vec::new();
        if let Ok(mirror) = self.mirror(handle) {
            mirror.take_transmit(&mut out);
        }
        out
    }

    fn mirror(&self, handle: u32) -> Result<DrivenMirror, WebError> {
        lock(&self.registry)
            .entries
            .get(&handle)
            .and_then(|e| e.mirror.clone())
            .ok_or_else(|| WebError::disposed(format!("no mirror with handle {handle}")))
    }

    fn mirror_reply(&self, mirror: &DrivenMirror, events: &[MirrorEvent]) -> Json {
        let timeout = mirror
            .poll_timeout()
            .map(|m| m.elapsed().as_secs_f64() * 1000.0);
        json!({ "events": events_json(events), "timeout": timeout })
    }

    fn insert(&self, entry: Entry) -> u32 {
        let mut registry = lock(&self.registry);
        registry.next += 1;
        let handle = registry.next;
        registry.entries.insert(handle, entry);
        handle
    }

    fn create_machine(&self, command: &Json) -> Result<Json, WebError> {
        let def: SchemaDef = match (command.get("schema"), command.get("toml")) {
            (Some(schema), None) => serde_json::from_value(schema.clone())
                .map_err(|e| WebError::schema(format!("the schema does not read: {e}")))?,
            (None, Some(Json::String(text))) => toml::from_str(text)
                .map_err(|e| WebError::schema(format!("the TOML schema does not read: {e}")))?,
            _ => {
                return Err(WebError::bad_request(
                    "give \"schema\" (an object) or \"toml\" (text)",
                ));
            }
        };
        let schema = Schema::new(def).map_err(|e| WebError::schema(e.to_string()))?;
        let mut builder = Machine::builder(schema);
        if let Some(id) = command.get("id").and_then(Json::as_str) {
            builder = builder.id(id);
        }
        let machine = builder.build();
        let id = machine.id().to_owned();
        let handle = self.insert(Entry {
            source: Arc::new(machine.clone()),
            machine: Some(machine),
            mirror: None,
        });
        Ok(json!({ "h": handle, "id": id }))
    }

    fn create_mirror(&self, command: &Json) -> Result<Json, WebError> {
        let opt_str = |name| command.get(name).and_then(Json::as_str).map(str::to_owned);
        let ms = |name, default: u64| {
            Duration::from_millis(command.get(name).and_then(Json::as_u64).unwrap_or(default))
        };
        let config = ClientConfig {
            client_id: opt_str("clientId").unwrap_or_else(|| "browser".into()),
            source: opt_str("source").unwrap_or_default(),
            compression: command
                .get("compression")
                .and_then(Json::as_bool)
                .unwrap_or(true),
            track: match command.get("track") {
                None | Some(Json::Null) => None,
                Some(_) => Some(names(command, "track")?),
            },
            token: opt_str("token"),
            max_frame: DEFAULT_MAX_FRAME,
            handshake_timeout: ms("handshakeTimeoutMs", 5_000),
            keepalive: ms("keepaliveMs", 10_000),
            idle_timeout: ms("idleTimeoutMs", 30_000),
            retry: asyncmachine::proto::session::RetryPolicy::NONE,
            // A page retries nothing itself (its glue has its own timeouts), so its
            // mutations carry no key and the epoch is unused.
            key_epoch: 0,
        };
        let id = opt_str("id").unwrap_or_else(|| config.client_id.clone());
        let endpoint = opt_str("endpoint").unwrap_or_default();
        let host = self.host.clone();
        let mirror = DrivenMirror::new(id.clone(), endpoint, config, None, move || host.wake());
        let handle = self.insert(Entry {
            source: Arc::new(mirror.clone()),
            machine: None,
            mirror: Some(mirror),
        });
        Ok(json!({ "h": handle, "id": id }))
    }

    fn mutate(&self, source: &Arc<dyn StateSource>, command: &Json) -> Result<Json, WebError> {
        let kind = match string(command, "kind")? {
            "add" => MutationKind::Add,
            "remove" => MutationKind::Remove,
            "set" => MutationKind::Set,
            other => {
                return Err(WebError::bad_request(format!(
                    "unknown mutation {other:?}; add, remove or set"
                )));
            }
        };
        let states = names(command, "states")?;
        let args = args_from_json(command.get("args").unwrap_or(&Json::Null))
            .map_err(|e| WebError::bad_request(e.0))?;
        let refs: Vec<&str> = states.iter().map(String::as_str).collect();
        let future = source.mutate_named(kind, &refs, args);
        self.start(Box::pin(async move {
            future
                .await
                .map(|outcome| json!(outcome_name(outcome)))
                .map_err(WebError::from)
        }))
    }

    fn wait(&self, source: &Arc<dyn StateSource>, command: &Json) -> Result<Json, WebError> {
        let states = names(command, "states")?;
        let refs: Vec<&str> = states.iter().map(String::as_str).collect();
        let when = match string(command, "kind")? {
            "active" => source.when(&refs),
            "inactive" => source.when_not(&refs),
            "ticks" => {
                let [state] = &refs[..] else {
                    return Err(WebError::bad_request("whenTicks takes one state"));
                };
                let n = field(command, "n")?
                    .as_u64()
                    .ok_or_else(|| WebError::bad_request("\"n\" must be a count"))?;
                source.when_ticks(state, n)
            }
            "time" => {
                let ticks: Vec<u64> = field(command, "ticks")?
                    .as_array()
                    .and_then(|t| t.iter().map(Json::as_u64).collect())
                    .ok_or_else(|| WebError::bad_request("\"ticks\" must be ticks"))?;
                source.when_time(&refs, &ticks)
            }
            "args" => {
                let [state] = &refs[..] else {
                    return Err(WebError::bad_request("whenArgs takes one state"));
                };
                let args = args_from_json(command.get("args").unwrap_or(&Json::Null))
                    .map_err(|e| WebError::bad_request(e.0))?;
                source.when_args(state, args)
            }
            other => return Err(WebError::bad_request(format!("unknown wait {other:?}"))),
        };
        self.start(Box::pin(async move {
            when.await.map(|()| Json::Null).map_err(WebError::from)
        }))
    }

    fn bind(&self, machine: &Machine, command: &Json) -> Result<Json, WebError> {
        let func = field(command, "fn")?
            .as_u64()
            .ok_or_else(|| WebError::bad_request("\"fn\" must be a function id"))?
            as u32;
        let host = self.host.clone();
        let negotiation = move |e: &Event<'_>| host.handler(func, &event_json(e));
        let host = self.host.clone();
        let final_ = move |e: &Event<'_>| host.handler(func, &event_json(e)).map(drop);
        let state = || string(command, "state");
        let unknown =
            |e: asyncmachine::machine::UnknownState| WebError::unknown_state(e.to_string());
        match string(command, "handler")? {
            "enter" => machine.on_enter(state()?, negotiation).map_err(unknown)?,
            "exit" => machine.on_exit(state()?, negotiation).map_err(unknown)?,
            "state" => machine.on_state(state()?, final_).map_err(unknown)?,
            "end" => machine.on_end(state()?, final_).map_err(unknown)?,
            "anyEnter" => machine.on_any_enter(negotiation),
            "anyState" => machine.on_any_state(final_),
            other => {
                return Err(WebError::bad_request(format!(
                    "unknown handler {other:?}; enter, exit, state, end, anyEnter or anyState"
                )));
            }
        }
        Ok(Json::Null)
    }

    /// Polls a new task once: its result when ready at once, else its id for `poll`.
    fn start(&self, mut task: Task) -> Result<Json, WebError> {
        let id = {
            let mut registry = lock(&self.registry);
            registry.next += 1;
            registry.next
        };
        match task
            .as_mut()
            .poll(&mut Context::from_waker(&self.waker(id)))
        {
            Poll::Ready(result) => result.map(|value| json!({ "done": value })),
            Poll::Pending => {
                lock(&self.registry).tasks.insert(id, task);
                Ok(json!({ "task": id }))
            }
        }
    }

    fn waker(&self, id: u32) -> Waker {
        Waker::from(Arc::new(TaskWaker {
            id,
            woken: self.woken.clone(),
            host: self.host.clone(),
        }))
    }

    /// Polls the woken tasks: the results of those that finished.
    fn poll(&self) -> Json {
        let mut done = Vec::new();
        loop {
            let ids = std::mem::take(&mut *lock(&self.woken.ids));
            if ids.is_empty() {
                break;
            }
            for id in ids {
                // Out of the registry while it runs: it may call back in.
                let Some(mut task) = lock(&self.registry).tasks.remove(&id) else {
                    continue;
                };
                match task
                    .as_mut()
                    .poll(&mut Context::from_waker(&self.waker(id)))
                {
                    Poll::Ready(Ok(value)) => done.push(json!({ "task": id, "ok": value })),
                    Poll::Ready(Err(e)) => done.push(json!({ "task": id, "error": e.to_json() })),
                    Poll::Pending => {
                        lock(&self.registry).tasks.insert(id, task);
                    }
                }
            }
        }
        Json::Array(done)
    }
}

/// What the glue acts on after a served machine's input: connections to close, connections
/// with bytes to send, and each connection's next timeout (milliseconds, or null).
fn server_reply(server: &DrivenServer, drives: &[ServerDrive]) -> Json {
    let closed: Vec<Json> = drives
        .iter()
        .map(|ServerDrive::Closed { conn, reason }| json!({ "conn": conn, "reason": reason }))
        .collect();
    let timeouts: Vec<Json> = server
        .conns()
        .into_iter()
        .map(|conn| {
            let at = server
                .poll_timeout(conn)
                .map(|m| m.elapsed().as_secs_f64() * 1000.0);
            json!([conn, at])
        })
        .collect();
    json!({ "closed": closed, "pending": server.pending(), "timeouts": timeouts })
}

fn now(command: &Json) -> Result<f64, WebError> {
    field(command, "now")?
        .as_f64()
        .ok_or_else(|| WebError::bad_request("\"now\" must be milliseconds"))
}

fn outcome_name(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Executed => "Executed",
        Outcome::Canceled => "Canceled",
        Outcome::Queued => "Queued",
    }
}

fn schema_json(schema: &Schema) -> Json {
    json!({
        "states": serde_json::to_value(schema.def()).map(|d| d["states"].clone()).unwrap_or(Json::Null),
        "hash": schema.hash().to_string(),
    })
}

fn read_json(source: &dyn StateSource) -> Json {
    let schema = source.schema();
    let clock: Vec<u64> = (0..schema.len()).map(|i| source.tick_at(i)).collect();
    let upstream = source.upstream();
    json!({
        "id": source.id(),
        "clock": clock,
        "queueTick": source.queue_tick(),
        "schemaHash": schema.hash().to_string(),
        "connection": upstream.as_ref().map(|u| u.state),
        "lastError": upstream.and_then(|u| u.last_error),
    })
}

fn event_json(e: &Event<'_>) -> Json {
    json!({
        "machine": e.machine().id(),
        "handler": e.handler_name(),
        "kind": match e.kind() {
            MutationKind::Add => "add",
            MutationKind::Remove => "remove",
            MutationKind::Set => "set",
        },
        "state": e.state(),
        "called": e.called().collect::<Vec<_>>(),
        "entering": e.entering().collect::<Vec<_>>(),
        "exiting": e.exiting().collect::<Vec<_>>(),
        "auto": e.is_auto(),
        "args": args_to_json(e.args()),
    })
}

fn events_json(events: &[MirrorEvent]) -> Json {
    Json::Array(
        events
            .iter()
            .map(|event| match event {
                MirrorEvent::Ready { reconnect } => {
                    json!({ "type": "ready", "reconnect": reconnect })
                }
                MirrorEvent::HandshakeFailed(e) => json!({
                    "type": "failed",
                    "reason": e.to_string(),
                    "code": handshake_code(e),
                    "permanent": permanent(e),
                }),
                MirrorEvent::Closed(reason) => json!({ "type": "closed", "reason": reason }),
                MirrorEvent::Payload(p) => json!({
                    "type": "payload",
                    "name": p.name,
                    "data": value_to_json(&asyncmachine::machine::Value::Bytes(p.data.clone())),
                }),
            })
            .collect(),
    )
}

/// The error code a failed handshake maps to.
fn handshake_code(e: &HandshakeError) -> &'static str {
    match e {
        HandshakeError::Refused {
            kind: RefusalKind::Auth | RefusalKind::Acl,
            ..
        } => "auth",
        HandshakeError::Refused { .. } => "refused",
        HandshakeError::Timeout(_) => "timeout",
        HandshakeError::Failed(_)
        | HandshakeError::BadSchema(_)
        | HandshakeError::SchemaMismatch { .. } => "protocol",
    }
}

/// Whether no retry can change the outcome.
fn permanent(e: &HandshakeError) -> bool {
    match e {
        HandshakeError::Refused { kind, .. } => matches!(
            kind,
            RefusalKind::Version
                | RefusalKind::UnknownSource
                | RefusalKind::Auth
                | RefusalKind::Acl
                | RefusalKind::BadHello
        ),
        HandshakeError::BadSchema(_) | HandshakeError::SchemaMismatch { .. } => true,
        HandshakeError::Timeout(_) | HandshakeError::Failed(_) => false,
    }
}

impl From<MutationError> for WebError {
    fn from(e: MutationError) -> Self {
        let code = match &e {
            MutationError::UnknownState(_) | MutationError::BadIndex(_) => "unknown_state",
            MutationError::QueueFull { .. } => "queue_full",
            MutationError::Disposed => "disposed",
            MutationError::Disconnected | MutationError::Unreachable(_) => "not_connected",
            MutationError::RetryQueueFull { .. } => "queue_full",
            MutationError::Refused(_) | MutationError::SchemaMoved { .. } => "refused",
            MutationError::Timeout(_) => "timeout",
        };
        WebError::new(code, e.to_string())
    }
}

impl From<WaitError> for WebError {
    fn from(e: WaitError) -> Self {
        let code = match &e {
            WaitError::UnknownState(_) => "unknown_state",
            WaitError::Disposed => "disposed",
            WaitError::Canceled => "canceled",
            WaitError::Refused(_) => "refused",
        };
        WebError::new(code, e.to_string())
    }
}

mod debug;
#[cfg(test)]
mod tests;

use debug::PageTelemetry;
