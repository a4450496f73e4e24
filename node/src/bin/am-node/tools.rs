//! The commands a person runs against a tree: run nodes, watch, mutate, status, certificates,
//! the fault proxy.

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use asyncmachine::machine::{
    Args as MutationArgs, ClockChange, MutationKind, Outcome, StateSource,
};
use asyncmachine::mirror::{ConnState, Mirror, MirrorConfig, MirrorError};
use asyncmachine::printable::printable;
use asyncmachine::proto::session::RetryPolicy;
use asyncmachine::transport::{Endpoint, Scheme};

use am_node::repl::clock_time;

use crate::args::*;

/// Exit code of a mutation that was canceled.
pub(crate) const EXIT_CANCELED: u8 = 3;

/// What to try in a second shell, with this run's real endpoints: watch and mutate the
/// deepest mirror the run serves (a change travels up to its root and back), a REPL over it
/// and its root, a node's status. Nothing when the run serves no machine.
fn try_next(
    topology: &asyncmachine::topology::Topology,
    running: &asyncmachine::node::RunningTopology,
) -> Vec<String> {
    use asyncmachine::topology::MachineKind;
    // (endpoint of the machine, its schema's last state but Exception, is it a mirror)
    let mut served = Vec::new();
    for node in running.nodes() {
        let (Some(listener), Some(plan)) = (node.endpoints().first(), topology.node(node.name()))
        else {
            continue;
        };
        let mut listener = listener.clone();
        if listener.address.starts_with("0.0.0.0:") {
            // A wildcard bind is reached on loopback from this host.
            listener.address = listener.address.replacen("0.0.0.0", "127.0.0.1", 1);
        }
        for machine in &plan.machines {
            let state = machine
                .schema
                .names()
                .filter(|&n| n != asyncmachine::machine::EXCEPTION)
                .last()
                .map(str::to_owned);
            let mirror = matches!(machine.kind, MachineKind::Mirror { .. });
            served.push((listener.clone().with_machine(&machine.name), state, mirror));
        }
    }
    // The last mirror listed is usually the deepest; the first root is where changes run.
    let leaf = served
        .iter()
        .rev()
        .find(|(_, _, mirror)| *mirror)
        .or(served.last());
    let root = served.iter().find(|(_, _, mirror)| !*mirror);
    let Some((leaf_at, state, _)) = leaf else {
        return Vec::new();
    };
    // As this program was started (target/release/am-node under `cargo run`), so the lines run
    // as they are from the same directory.
    let me = std::env::args()
        .next()
        .filter(|p| !p.contains(char::is_whitespace))
        .unwrap_or_else(|| "am-node".to_owned());
    let mut lines = vec!["try, in a second shell:".to_owned()];
    lines.push(format!("  {me} watch {leaf_at}"));
    if let Some(state) = state {
        lines.push(format!("  {me} add {leaf_at} {state}"));
    }
    let repl = match root {
        Some((root_at, _, _)) if root_at != leaf_at => format!("  {me} repl {leaf_at} {root_at}"),
        _ => format!("  {me} repl {leaf_at}"),
    };
    lines.push(repl);
    lines.push(format!("  {me} status {}", leaf_at.without_machine()));
    lines
}

pub(crate) async fn run(args: &RunArgs) -> anyhow::Result<ExitCode> {
    let mut topology = asyncmachine::topology::load(&args.file)?;
    if let Some(address) = &args.debug {
        asyncmachine::telemetry::TelemetryConfig::new(address).context("--debug")?;
        for node in &mut topology.nodes {
            node.debug = Some(address.clone());
        }
    }
    let running = asyncmachine::node::start_topology(&topology, &args.nodes).await?;
    let mut out = std::io::stdout();
    for node in running.nodes() {
        let listeners: Vec<String> = node.endpoints().iter().map(ToString::to_string).collect();
        let machines: Vec<&str> = node.machines().map(|(name, _)| name).collect();
        writeln!(
            out,
            "node {:<10} machines: {:<20} listening: {}",
            node.name(),
            machines.join(", "),
            if listeners.is_empty() {
                "-".into()
            } else {
                listeners.join(", ")
            }
        )?;
    }
    writeln!(
        out,
        "running {} node(s) from {}; Ctrl-C to stop",
        running.nodes().len(),
        args.file.display()
    )?;
    for line in try_next(&topology, &running) {
        writeln!(out, "{line}")?;
    }
    let report = async {
        if args.report_ms == 0 {
            return std::future::pending().await;
        }
        let mut every = tokio::time::interval(Duration::from_millis(args.report_ms));
        let mut last = Vec::new();
        loop {
            every.tick().await;
            let lines = running.report();
            if lines != last {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "--- {}", clock_time());
                for line in &lines {
                    let _ = writeln!(out, "{line}");
                }
                last = lines;
            }
        }
    };
    tokio::select! {
        _ = asyncmachine::node::shutdown_signal() => {}
        () = report => {}
    }
    writeln!(out, "shutting down")?;
    running.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn endpoint(text: &str) -> anyhow::Result<Endpoint> {
    text.parse()
        .with_context(|| format!("bad endpoint {text:?}"))
}

pub(crate) async fn connect_mirror(connect: &Connect, role: &str) -> anyhow::Result<Mirror> {
    connect_mirror_with(connect, role, RetryPolicy::default()).await
}

/// Connects as [`connect_mirror`] does, trying again until `timeout` while the machine is
/// unreachable (saying so once on stderr), and with mutations that wait for a broken link up
/// to what is left of it. A refusal (token, ACL, version, schema) ends it at once.
pub(crate) async fn connect_mirror_waiting(
    connect: &Connect,
    role: &str,
    timeout: Duration,
) -> anyhow::Result<Mirror> {
    let deadline = std::time::Instant::now() + timeout;
    let mut said = false;
    let mut pause = Duration::from_millis(50);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let retry = RetryPolicy {
            deadline: left.max(Duration::from_millis(1)),
            ..RetryPolicy::default()
        };
        let error = match connect_mirror_with(connect, role, retry).await {
            Ok(mirror) => return Ok(mirror),
            Err(e) => e,
        };
        let permanent = error.downcast_ref::<MirrorError>().is_some_and(|e| {
            !matches!(
                e,
                MirrorError::Transport(_) | MirrorError::HandshakeTimeout { .. }
            )
        });
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if permanent || left.is_zero() {
            if permanent {
                return Err(error);
            }
            return Err(error.context(format!(
                "gave up after --timeout {timeout:?}; is the node running?"
            )));
        }
        if !said {
            said = true;
            let mut err = std::io::stderr();
            let _ = writeln!(
                err,
                "waiting for {} to be reachable (up to {timeout:?}): {error:#}",
                connect.endpoint
            );
        }
        tokio::time::sleep(pause.min(left)).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

async fn connect_mirror_with(
    connect: &Connect,
    role: &str,
    retry: RetryPolicy,
) -> anyhow::Result<Mirror> {
    let mut endpoint = endpoint(&connect.endpoint)?;
    if endpoint.upgrade_token.is_none() && matches!(endpoint.scheme, Scheme::Ws | Scheme::Wss) {
        // A relay checks its token at the upgrade, before any hello.
        endpoint.upgrade_token = connect.token.as_deref().map(Into::into);
    }
    let config = MirrorConfig {
        client_id: connect
            .id
            .clone()
            .unwrap_or_else(|| format!("am-node-{role}-{}", std::process::id())),
        token: connect.token.clone(),
        transport: connect.tls.transport(&endpoint)?,
        retry,
        ..MirrorConfig::default()
    };
    let mirror = Mirror::connect(&endpoint, config).await;
    mirror.map_err(|e| {
        // am-relay refuses a missing or wrong token at the WebSocket upgrade, before any hello:
        // with close code 4401 (or, from an older relay, an HTTP 401).
        let text = e.to_string();
        let refused_upgrade = text.contains("(4401)") || text.contains("401 Unauthorized");
        let e = anyhow::Error::new(e).context(format!("cannot mirror {endpoint}"));
        if refused_upgrade {
            e.context(
                "the WebSocket upgrade was refused for its token (am-relay checks one): pass \
                 --token T, or write the relay's token in the endpoint as ?token=T",
            )
        } else {
            e
        }
    })
}

pub(crate) fn states_line(source: &dyn StateSource, ticks: bool) -> String {
    if ticks {
        let schema = source.schema();
        let clock = source.clock();
        schema
            .names()
            .zip(clock)
            .map(|(n, t)| format!("{}={t}", printable(n)))
            .collect::<Vec<_>>()
            .join(" ")
    } else {
        let active = source.active_states();
        if active.is_empty() {
            "(none active)".to_owned()
        } else {
            printable(&active.join(" ")).into_owned()
        }
    }
}

pub(crate) async fn watch(args: &WatchArgs) -> anyhow::Result<ExitCode> {
    let mirror = connect_mirror(&args.connect, "watch").await?;
    if let Some(until) = &args.until
        && mirror.schema().index(until).is_none()
    {
        bail!(
            "unknown state {until:?}; the machine has: {}",
            printable(&mirror.schema().names().collect::<Vec<_>>().join(", "))
        );
    }
    let mut out = std::io::stdout();
    writeln!(
        out,
        "{}  {}",
        clock_time(),
        states_line(&mirror, args.ticks)
    )?;
    if args.once {
        mirror.close().await;
        return Ok(ExitCode::SUCCESS);
    }
    let changed = Arc::new(tokio::sync::Notify::new());
    let notify = changed.clone();
    mirror.observe(Arc::new(move |_: &ClockChange<'_>| notify.notify_one()));
    let mut connection = mirror.connection_changes();
    let mut last_line = states_line(&mirror, args.ticks);
    let follow = async {
        loop {
            if let Some(until) = &args.until
                && mirror.is1(until)
            {
                return;
            }
            tokio::select! {
                () = changed.notified() => {
                    // A change of ticks alone (a multi state again) shows with --ticks.
                    let line = states_line(&mirror, args.ticks);
                    if line != last_line {
                        let _ = writeln!(std::io::stdout(), "{}  {line}", clock_time());
                        last_line = line;
                    }
                }
                Ok(()) = connection.changed() => {
                    let state = *connection.borrow_and_update();
                    let note = match state {
                        ConnState::Ready => "connected".to_owned(),
                        ConnState::Connecting => "connecting".to_owned(),
                        ConnState::Disconnected => format!("disconnected: {}", printable(&mirror.last_error().unwrap_or_default())),
                    };
                    let _ = writeln!(std::io::stdout(), "{}  ({note})", clock_time());
                }
            }
        }
    };
    let limit = args.timeout;
    let code = tokio::select! {
        () = follow => ExitCode::SUCCESS,
        _ = asyncmachine::node::shutdown_signal() => ExitCode::SUCCESS,
        () = async { match limit { Some(l) => tokio::time::sleep(l).await, None => std::future::pending().await } } => {
            let _ = writeln!(std::io::stderr(), "error: gave up after {:?}", limit.unwrap_or_default());
            ExitCode::FAILURE
        }
    };
    mirror.close().await;
    Ok(code)
}

pub(crate) async fn mutate(kind: MutationKind, args: &MutateArgs) -> anyhow::Result<ExitCode> {
    let mut mutation_args = MutationArgs::new();
    for arg in &args.args {
        let (key, value) = asyncmachine::machine::value::parse_arg(arg)?;
        mutation_args.insert(key, value);
    }
    let mirror = connect_mirror_waiting(&args.connect, "mutate", args.timeout).await?;
    let states: Vec<&str> = args.states.iter().map(String::as_str).collect();
    let result = mirror.mutate_named(kind, &states, mutation_args).await;
    let line = states_line(&mirror, false);
    mirror.close().await;
    let outcome = result.with_context(|| format!("{kind} {} failed", states.join(" ")))?;
    let mut out = std::io::stdout();
    writeln!(out, "{outcome:?}  now: {line}")?;
    Ok(match outcome {
        Outcome::Executed | Outcome::Queued => ExitCode::SUCCESS,
        Outcome::Canceled => ExitCode::from(EXIT_CANCELED),
    })
}

pub(crate) async fn status(args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let endpoint = endpoint(&args.endpoint)?;
    let status = asyncmachine::client::fetch_status(
        &endpoint,
        &args.tls.transport(&endpoint)?,
        args.token.clone(),
        Duration::from_secs(5),
    )
    .await?;
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(
            out,
            "{}",
            serde_json::to_string(&status).context("encoding the status")?
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    // Every string here came from the node, and the client ids from its clients.
    writeln!(out, "node {}", printable(&status.node))?;
    writeln!(out, "machines:")?;
    for s in &status.sources {
        writeln!(
            out,
            "  {:<12} clients={:<4} queue={:<8} [{}]",
            printable(&s.name),
            s.clients,
            s.queue_tick,
            printable(&s.active.join(" "))
        )?;
        if let (Some(up), Some(state)) = (&s.upstream, &s.connection) {
            writeln!(
                out,
                "  {:<12} upstream {} ({}){}",
                "",
                printable(up),
                printable(state),
                s.last_error
                    .as_ref()
                    .map(|e| format!(": {}", printable(e)))
                    .unwrap_or_default()
            )?;
        }
    }
    writeln!(out, "clients:")?;
    if status.clients.is_empty() {
        writeln!(out, "  (none)")?;
    }
    for c in &status.clients {
        writeln!(
            out,
            "  {:<24} {:<12} {}",
            printable(&c.id),
            printable(&c.source),
            printable(&c.peer)
        )?;
    }
    writeln!(out, "counters:")?;
    for (name, value) in &status.counters {
        writeln!(out, "  {:<16} {value}", printable(name))?;
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn fault_proxy(args: &FaultProxyArgs) -> anyhow::Result<ExitCode> {
    use am_node::fault::{Fault, FaultProxy};
    use tokio::io::AsyncBufReadExt as _;

    let proxy = FaultProxy::start(args.target)
        .await
        .context("starting the proxy on 127.0.0.1")?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", proxy.addr)?;
    out.flush()?;
    drop(out);
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await.context("reading commands")? {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["pass"] => proxy.set(Fault::Pass),
            ["cut"] => proxy.set(Fault::Cut),
            ["stall"] => proxy.set(Fault::Stall),
            ["reset"] => proxy.reset_all(),
            ["delay", ms] => {
                let ms: u64 = ms
                    .parse()
                    .with_context(|| format!("delay {ms:?}: not milliseconds"))?;
                proxy.set(Fault::Delay(Duration::from_millis(ms)));
            }
            [] => {}
            _ => bail!("unknown command {line:?}; use pass, cut, stall, delay MS or reset"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn diagram(args: &DiagramArgs) -> anyhow::Result<ExitCode> {
    use am_node::diagram::{Diagram, Format, Scope};
    let topology = asyncmachine::topology::load(&args.file)?;
    let scope = Scope {
        machine: args.machine.clone(),
        tree_only: args.tree,
    };
    let format = match args.format {
        DiagramFormat::Svg => Format::Svg,
        DiagramFormat::Mermaid => Format::Mermaid,
        DiagramFormat::Dot => Format::Dot,
    };
    let text = Diagram::of_topology(&topology, &scope)?.render(format)?;
    match &args.output {
        Some(path) => std::fs::write(path, text)
            .with_context(|| format!("cannot write the diagram to {}", path.display()))?,
        None => std::io::stdout().lock().write_all(text.as_bytes())?,
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn repl(args: &ReplArgs) -> anyhow::Result<ExitCode> {
    use am_node::repl::{ConnectOptions, Ran, Session};
    let tls = TlsArgs {
        ca: args.tls.ca.clone(),
        cert: args.tls.cert.clone(),
        key: args.tls.key.clone(),
    };
    let options = ConnectOptions {
        client_id: args
            .id
            .clone()
            .unwrap_or_else(|| format!("am-node-repl-{}", std::process::id())),
        token: args.token.clone(),
        transport: Box::new(move |endpoint| tls.transport(endpoint)),
    };
    let session = Session::new(options, args.timeout);
    // Two threads: the mirrors keep their connections while the prompt waits for a line.
    let runtime = crate::runtime(2)?;
    let mut connected = 0;
    for endpoint in &args.endpoints {
        match runtime.block_on(session.connect(endpoint)) {
            Ok(_) => connected += 1,
            // A one-shot command needs every machine it was given; a prompt can go on
            // with the others and `connect` later.
            Err(e) if args.command.is_empty() => {
                let _ = writeln!(
                    std::io::stderr(),
                    "error: {}",
                    am_node::repl::printable_error(&e)
                );
            }
            Err(e) => return Err(e),
        }
    }
    if args.command.is_empty() {
        if connected == 0 {
            bail!("could not connect to any of the endpoints given");
        }
        let history = args.history.clone().or_else(am_node::repl::default_history);
        am_node::repl::run_interactive(&session, &runtime, history.as_deref())?;
        runtime.block_on(session.close());
        return Ok(ExitCode::SUCCESS);
    }
    let ran = runtime.block_on(am_node::repl::run_one_shot(&session, &args.command));
    runtime.block_on(session.close());
    Ok(match ran? {
        Ran::Done | Ran::Exit => ExitCode::SUCCESS,
        Ran::Canceled => ExitCode::from(EXIT_CANCELED),
    })
}

pub(crate) fn certs(args: &CertsArgs) -> anyhow::Result<ExitCode> {
    use asyncmachine::certs::{CaOrigin, CaPolicy};
    let policy = if args.new_ca {
        CaPolicy::Replace
    } else {
        CaPolicy::Reuse
    };
    let certs = asyncmachine::certs::write_dev_certs(&args.dir, &args.names, policy).map_err(
        |e| match e.hint() {
            Some(hint) => anyhow::anyhow!("{e}\n  hint: {hint}"),
            None => anyhow::Error::new(e),
        },
    )?;
    let ca = args.dir.join("ca.pem");
    let note = match certs.ca {
        CaOrigin::Created => format!("made a new CA: {}", ca.display()),
        CaOrigin::Reused => format!(
            "signed with the CA already in {} (pass --new-ca to replace it)",
            ca.display()
        ),
        CaOrigin::Replaced => format!(
            "replaced the CA {}: certificates it signed before no longer verify",
            ca.display()
        ),
    };
    writeln!(std::io::stderr(), "{note}")?;
    let mut out = std::io::stdout().lock();
    for path in certs.written {
        writeln!(out, "wrote {}", path.display())?;
    }
    writeln!(
        out,
        "use them in a topology: tls = {{ cert = \"NAME.pem\", key = \"NAME.key\", ca = \"ca.pem\" }}"
    )?;
    Ok(ExitCode::SUCCESS)
}

/// `am-node dbg`: the collector and its console until Ctrl-C; with --export, the history is
/// written every --export-every seconds and when stopped.
pub(crate) async fn dbg_command(args: &DbgArgs) -> anyhow::Result<ExitCode> {
    use asyncmachine::telemetry::History;
    use asyncmachine::telemetry::collector::{self, Collector, CollectorConfig};
    let history = match &args.import {
        Some(path) => collector::import(path, args.max_entries)
            .context("--import: the file must be a dump written by `am-node dbg --export`")?,
        None => History::new(args.max_entries),
    };
    let imported = history.entries().len();
    let collector = Collector::start(
        CollectorConfig {
            telemetry: args.listen.clone(),
            console: args.console.clone(),
            max_entries: args.max_entries,
        },
        history,
    )
    .await?;
    let mut out = std::io::stdout();
    writeln!(
        out,
        "am-dbg: telemetry on tcp://{} (a node's debug address), console at {}{}",
        collector.telemetry_addr(),
        collector.console_url(),
        if imported > 0 {
            format!("; {imported} entries imported")
        } else {
            String::new()
        }
    )?;
    let export = |collector: &Collector| -> anyhow::Result<()> {
        if let Some(path) = &args.export {
            collector
                .export(path)
                .with_context(|| format!("--export {}", path.display()))?;
        }
        Ok(())
    };
    let saving = async {
        let mut every = tokio::time::interval(Duration::from_secs(args.export_every.max(1)));
        every.tick().await;
        loop {
            every.tick().await;
            if let Err(e) = export(&collector) {
                tracing::warn!(error = %format!("{e:#}"), "cannot write the history");
            }
        }
    };
    tokio::select! {
        _ = asyncmachine::node::shutdown_signal() => {}
        () = saving, if args.export.is_some() => {}
    }
    collector.shutdown();
    export(&collector)?;
    if let Some(path) = &args.export {
        writeln!(out, "history written to {}", path.display())?;
    }
    Ok(ExitCode::SUCCESS)
}
