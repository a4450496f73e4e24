//! The REPL's connected machines and the commands run on them: the I/O around the pure
//! `command` and `complete`. Each endpoint is a [`Mirror`] under a short name; commands act
//! on the selected machine (`use NAME`, or `@NAME` before one command). Output goes to the
//! writer given, every peer-supplied string through `printable`.

use std::future::Future;
use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use asyncmachine::machine::{MutationKind, Outcome, StateSource};
use asyncmachine::mirror::{ConnState, Mirror, MirrorConfig};
use asyncmachine::printable::printable;
use asyncmachine::transport::{Endpoint, Scheme, TransportConfig};

use super::command::{Command, Line, check_states};
use super::complete::{Completion, Context, MachineInfo, complete};
use super::views::{active_line, clock_time, conn_name, help, inspect, seconds, watch};

/// The error of a wait that Ctrl-C ended.
pub const INTERRUPTED: &str = "interrupted (Ctrl-C)";

/// Longest machine name the REPL gives (names come from endpoints).
pub(super) const MAX_NAME: usize = 32;

/// Makes the transport (TLS material) for an endpoint; an error says what is missing.
pub type TransportFor = Box<dyn Fn(&Endpoint) -> anyhow::Result<TransportConfig> + Send + Sync>;

/// How the REPL connects: what it presents, the transport for an endpoint.
pub struct ConnectOptions {
    pub client_id: String,
    pub token: Option<String>,
    /// The transport (TLS material) for an endpoint; an error says what is missing.
    pub transport: TransportFor,
}

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

/// How a command ended, for the exit status of a one-shot command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ran {
    Done,
    /// A mutation the machine canceled (relations, a negotiation handler).
    Canceled,
    /// `exit`.
    Exit,
}

#[derive(Debug, Clone)]
struct Entry {
    name: String,
    mirror: Mirror,
}

#[derive(Debug, Default)]
struct Machines {
    entries: Vec<Entry>,
    current: Option<String>,
}

/// The connected machines; cheap to clone (the completer holds one).
#[derive(Debug, Clone)]
pub struct Session {
    machines: Arc<Mutex<Machines>>,
    options: Arc<ConnectOptions>,
    default_timeout: Duration,
}

impl Session {
    /// A session with no machine yet; `default_timeout` bounds waits without `--timeout`.
    pub fn new(options: ConnectOptions, default_timeout: Duration) -> Session {
        Session {
            machines: Arc::default(),
            options: Arc::new(options),
            default_timeout,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Machines> {
        self.machines.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Mirrors the machine at `endpoint` and names it after the endpoint's machine (`-2`,
    /// `-3` for a name already taken); the first one connected is selected.
    pub async fn connect(&self, text: &str) -> anyhow::Result<String> {
        let mut endpoint: Endpoint = text.parse().with_context(|| {
            format!(
                "bad endpoint {:?}; write e.g. tcp://127.0.0.1:7400/demo",
                printable(text)
            )
        })?;
        if endpoint.upgrade_token.is_none() && matches!(endpoint.scheme, Scheme::Ws | Scheme::Wss) {
            endpoint.upgrade_token = self.options.token.as_deref().map(Into::into);
        }
        let config = MirrorConfig {
            client_id: self.options.client_id.clone(),
            token: self.options.token.clone(),
            transport: (self.options.transport)(&endpoint)?,
            ..MirrorConfig::default()
        };
        let mirror = Mirror::connect(&endpoint, config)
            .await
            .with_context(|| format!("cannot mirror {endpoint}"))?;
        let mut machines = self.lock();
        let base = base_name(&endpoint);
        let name = (1..)
            .map(|i| {
                if i == 1 {
                    base.clone()
                } else {
                    format!("{base}-{i}")
                }
            })
            .find(|n| machines.entries.iter().all(|e| e.name != *n))
            .unwrap_or(base);
        machines.entries.push(Entry {
            name: name.clone(),
            mirror,
        });
        if machines.current.is_none() {
            machines.current = Some(name.clone());
        }
        Ok(name)
    }

    /// Names of the connected machines, in the order connected.
    pub fn names(&self) -> Vec<String> {
        self.lock().entries.iter().map(|e| e.name.clone()).collect()
    }

    /// The selected machine's name.
    pub fn current(&self) -> Option<String> {
        self.lock().current.clone()
    }

    /// What the prompt shows: the selected machine.
    pub fn prompt(&self) -> String {
        match self.current() {
            Some(name) => format!("{name}> "),
            None => "am> ".to_owned(),
        }
    }

    /// Completion candidates for `line` with the cursor at `pos`, from the machines as they
    /// are now (a schema that grew completes its new states).
    pub fn complete(&self, line: &str, pos: usize) -> Completion {
        let (infos, current) = {
            let machines = self.lock();
            let infos: Vec<MachineInfo> = machines
                .entries
                .iter()
                .map(|e| MachineInfo {
                    name: e.name.clone(),
                    states: e.mirror.schema().names().map(str::to_owned).collect(),
                })
                .collect();
            (infos, machines.current.clone())
        };
        complete(
            line,
            pos,
            Context {
                machines: &infos,
                current: current.as_deref(),
            },
        )
    }

    fn entry(&self, name: Option<&str>) -> anyhow::Result<Entry> {
        let machines = self.lock();
        let wanted = name.map(str::to_owned).or_else(|| machines.current.clone());
        let Some(wanted) = wanted else {
            bail!("no machine connected; `connect ENDPOINT` first");
        };
        machines
            .entries
            .iter()
            .find(|e| e.name == wanted)
            .cloned()
            .ok_or_else(|| {
                anyhow!(
                    "no machine named {:?}; connected: {}",
                    printable(&wanted),
                    machines
                        .entries
                        .iter()
                        .map(|e| e.name.as_str())
                        .collect::<Vec<_>>()
                        .join(" ")
                )
            })
    }

    /// Runs one command, writing what it says to `out`. `interrupt` (Ctrl-C) ends a wait or a
    /// watch early.
    pub async fn run(
        &self,
        line: Line,
        out: &mut dyn Write,
        interrupt: impl Future<Output = ()>,
    ) -> anyhow::Result<Ran> {
        let selector = line.machine.as_deref();
        if let Some(name) = selector {
            // `@NAME` names a connected machine, whatever the command.
            self.entry(Some(name))?;
        }
        match &line.command {
            Command::Nothing => Ok(Ran::Done),
            Command::Exit => Ok(Ran::Exit),
            Command::Help(topic) => help(topic.as_deref(), out).map(|()| Ran::Done),
            Command::List => self.list(out).map(|()| Ran::Done),
            Command::Use(name) => {
                let entry = self.entry(Some(name))?;
                self.lock().current = Some(entry.name.clone());
                writeln!(out, "using {}", entry.name)?;
                Ok(Ran::Done)
            }
            Command::Connect(endpoint) => {
                let name = self.connect(endpoint).await?;
                let entry = self.entry(Some(&name))?;
                writeln!(out, "connected {name}: {}", entry.mirror.endpoint())?;
                Ok(Ran::Done)
            }
            Command::Inspect(name) => {
                let entry = self.entry(name.as_deref().or(selector))?;
                inspect(&entry.name, &entry.mirror, out).map(|()| Ran::Done)
            }
            Command::Status => {
                let entry = self.entry(selector)?;
                self.status(&entry, out).await.map(|()| Ran::Done)
            }
            command => {
                let entry = self.entry(selector)?;
                let schema = entry.mirror.schema();
                let known: Vec<&str> = schema.names().collect();
                check_states(command, &known).map_err(|e| anyhow!("{}: {e}", entry.name))?;
                tokio::select! {
                    ran = self.run_on(&entry, command, out) => ran,
                    () = interrupt => {
                        if matches!(command, Command::Watch { .. }) {
                            writeln!(out, "\n{}  stopped watching", clock_time())?;
                            Ok(Ran::Done)
                        } else {
                            bail!(INTERRUPTED)
                        }
                    }
                }
            }
        }
    }

    /// The commands that act on one machine's states.
    async fn run_on(
        &self,
        entry: &Entry,
        command: &Command,
        out: &mut dyn Write,
    ) -> anyhow::Result<Ran> {
        let mirror = &entry.mirror;
        let started = Instant::now();
        let limit = |t: &Option<Duration>| t.unwrap_or(self.default_timeout);
        let wait = |what: String, timeout: Duration, when: asyncmachine::machine::When| async move {
            match tokio::time::timeout(timeout, when).await {
                Ok(result) => result.with_context(|| format!("{what} failed")),
                Err(_) => Err(anyhow!(
                    "timed out after {} waiting for {what}; active now: {}",
                    seconds(timeout),
                    active_line(mirror)
                )),
            }
        };
        match command {
            Command::Mutate { kind, states, args } => {
                let names: Vec<&str> = states.iter().map(String::as_str).collect();
                let outcome = mirror
                    .mutate_named(*kind, &names, args.clone())
                    .await
                    .with_context(|| {
                        format!(
                            "{} {} failed",
                            kind_name(*kind),
                            printable(&names.join(" "))
                        )
                    })?;
                writeln!(out, "{outcome:?}  now: {}", active_line(mirror))?;
                Ok(match outcome {
                    Outcome::Executed | Outcome::Queued => Ran::Done,
                    Outcome::Canceled => Ran::Canceled,
                })
            }
            Command::When { states, timeout } => {
                let names: Vec<&str> = states.iter().map(String::as_str).collect();
                let what = format!("{} to be active", printable(&names.join(" ")));
                wait(what, limit(timeout), mirror.when(&names)).await?;
                writeln!(
                    out,
                    "active: {} (after {})",
                    printable(&names.join(" ")),
                    seconds(started.elapsed())
                )?;
                Ok(Ran::Done)
            }
            Command::WhenNot { states, timeout } => {
                let names: Vec<&str> = states.iter().map(String::as_str).collect();
                let what = format!("{} to be inactive", printable(&names.join(" ")));
                wait(what, limit(timeout), mirror.when_not(&names)).await?;
                writeln!(
                    out,
                    "inactive: {} (after {})",
                    printable(&names.join(" ")),
                    seconds(started.elapsed())
                )?;
                Ok(Ran::Done)
            }
            Command::WhenTime { ticks, timeout } => {
                let names: Vec<&str> = ticks.iter().map(|(s, _)| s.as_str()).collect();
                let times: Vec<u64> = ticks.iter().map(|(_, t)| *t).collect();
                let what = format!(
                    "ticks {}",
                    printable(
                        &ticks
                            .iter()
                            .map(|(s, t)| format!("{s}>={t}"))
                            .collect::<Vec<_>>()
                            .join(" ")
                    )
                );
                wait(what, limit(timeout), mirror.when_time(&names, &times)).await?;
                let now: Vec<String> = names
                    .iter()
                    .map(|s| format!("{}={}", printable(s), mirror.tick(s)))
                    .collect();
                writeln!(
                    out,
                    "reached: {} (after {})",
                    now.join(" "),
                    seconds(started.elapsed())
                )?;
                Ok(Ran::Done)
            }
            Command::Watch {
                ticks,
                until,
                timeout,
            } => {
                // Waiting for a state is bounded as the other waits are; watching alone is not.
                let timeout = timeout.or(until.as_ref().map(|_| self.default_timeout));
                watch(
                    &entry.name,
                    &entry.mirror,
                    *ticks,
                    until.as_deref(),
                    timeout,
                    out,
                )
                .await?;
                Ok(Ran::Done)
            }
            _ => Ok(Ran::Done),
        }
    }

    fn list(&self, out: &mut dyn Write) -> anyhow::Result<()> {
        let machines = self.lock();
        if machines.entries.is_empty() {
            writeln!(out, "no machine connected; `connect ENDPOINT` to add one")?;
            return Ok(());
        }
        let width = machines
            .entries
            .iter()
            .map(|e| e.name.len())
            .max()
            .unwrap_or(0);
        for e in &machines.entries {
            let mark = if machines.current.as_deref() == Some(&e.name) {
                '*'
            } else {
                ' '
            };
            let schema = e.mirror.schema();
            let active = e.mirror.active_states().len();
            let error = match (e.mirror.connection(), e.mirror.last_error()) {
                (ConnState::Ready, _) | (_, None) => String::new(),
                (_, Some(error)) => format!("  ({})", printable(&error)),
            };
            writeln!(
                out,
                "{mark} {:<width$}  {:<12}  {:>3}/{:<3} active  {}{error}",
                e.name,
                conn_name(e.mirror.connection()),
                active,
                schema.len(),
                e.mirror.endpoint(),
            )?;
        }
        Ok(())
    }

    async fn status(&self, entry: &Entry, out: &mut dyn Write) -> anyhow::Result<()> {
        let endpoint = entry.mirror.endpoint().without_machine();
        let status = asyncmachine::client::fetch_status(
            &endpoint,
            &(self.options.transport)(&endpoint)?,
            self.options.token.clone(),
            Duration::from_secs(5),
        )
        .await
        .with_context(|| format!("cannot fetch the status of {endpoint}"))?;
        writeln!(out, "node {} at {endpoint}", printable(&status.node))?;
        let width = status
            .sources
            .iter()
            .map(|s| s.name.len())
            .max()
            .unwrap_or(0)
            .min(MAX_NAME);
        for s in &status.sources {
            let upstream = match (&s.upstream, &s.connection) {
                (Some(up), Some(state)) => {
                    format!("  mirrors {} ({})", printable(up), printable(state))
                }
                _ => "  root".to_owned(),
            };
            writeln!(
                out,
                "  {:<width$}  clients={:<3} queue={:<6} [{}]{upstream}",
                printable(&s.name),
                s.clients,
                s.queue_tick,
                printable(&s.active.join(" ")),
            )?;
        }
        writeln!(out, "  {} client(s) connected", status.clients.len())?;
        Ok(())
    }

    /// Disposes every mirror (says goodbye to the servers).
    pub async fn close(&self) {
        let entries: Vec<Entry> = std::mem::take(&mut self.lock().entries);
        for e in entries {
            e.mirror.close().await;
        }
    }
}

/// A machine's name from its endpoint: the machine part (or the address), in letters,
/// digits and `-_.` only, cut to [`MAX_NAME`].
fn base_name(endpoint: &Endpoint) -> String {
    let raw = endpoint
        .machine
        .clone()
        .unwrap_or_else(|| endpoint.address.clone());
    let name: String = raw
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(MAX_NAME)
        .collect();
    if name.is_empty() {
        "machine".to_owned()
    } else {
        name
    }
}

fn kind_name(kind: MutationKind) -> &'static str {
    match kind {
        MutationKind::Add => "add",
        MutationKind::Remove => "remove",
        _ => "set",
    }
}
