//! What the REPL prints of a machine: `inspect`'s table, `watch`'s lines, `help`, and the
//! small formats they share. Every peer-supplied string goes through `printable`.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail};
use asyncmachine::machine::{ClockChange, StateSource, is_active};
use asyncmachine::mirror::{ConnState, Mirror};
use asyncmachine::printable::printable;

use super::command::COMMANDS;
use super::session::MAX_NAME;

pub(super) fn conn_name(state: ConnState) -> &'static str {
    match state {
        ConnState::Ready => "connected",
        ConnState::Connecting => "connecting",
        ConnState::Disconnected => "disconnected",
    }
}

pub(super) fn seconds(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

pub(super) fn active_line(source: &dyn StateSource) -> String {
    let active = source.active_states();
    if active.is_empty() {
        "(none active)".to_owned()
    } else {
        printable(&active.join(" ")).into_owned()
    }
}

pub(super) fn help(topic: Option<&str>, out: &mut dyn Write) -> anyhow::Result<()> {
    let shown: Vec<_> = COMMANDS
        .iter()
        .filter(|(name, ..)| topic.is_none_or(|t| t == *name))
        .collect();
    if shown.is_empty() {
        bail!(
            "no command {:?}; `help` lists them",
            printable(topic.unwrap_or_default())
        );
    }
    let width = shown
        .iter()
        .map(|(n, u, _)| n.len() + u.len() + 1)
        .max()
        .unwrap_or(0);
    for (name, usage, what) in shown {
        writeln!(out, "  {:<width$}  {what}", format!("{name} {usage}"))?;
    }
    if topic.is_none() {
        writeln!(
            out,
            "\n  @NAME COMMAND runs one command on machine NAME; `use NAME` selects it for the rest.\n  \
             Tab completes commands, machines and states. Timeouts: 5, 2.5s, 500ms."
        )?;
    }
    Ok(())
}

/// Every state with its tick, whether it is active, its flags and relations.
pub(super) fn inspect(name: &str, mirror: &Mirror, out: &mut dyn Write) -> anyhow::Result<()> {
    let schema = mirror.schema();
    let clock = mirror.clock();
    writeln!(
        out,
        "{}  {}  {}  queue tick {}",
        name,
        mirror.endpoint(),
        conn_name(mirror.connection()),
        mirror.queue_tick(),
    )?;
    let width = schema
        .names()
        .map(|n| printable(n).chars().count())
        .max()
        .unwrap_or(0)
        .min(MAX_NAME);
    let tick_width = clock
        .iter()
        .map(|t| t.to_string().len())
        .max()
        .unwrap_or(1)
        .max(4);
    writeln!(
        out,
        "  {:<width$}  {:>tick_width$}  relations",
        "state", "tick"
    )?;
    for i in 0..schema.len() {
        let tick = clock.get(i).copied().unwrap_or(0);
        let mark = if is_active(tick) { '*' } else { ' ' };
        let mut notes = Vec::new();
        if let Some(def) = schema.state(i) {
            if def.multi {
                notes.push("multi".to_owned());
            }
            if def.auto {
                notes.push("auto".to_owned());
            }
            for (what, names) in [
                ("require", &def.require),
                ("add", &def.add),
                ("remove", &def.remove),
                ("after", &def.after),
            ] {
                if !names.is_empty() {
                    notes.push(format!("{what} {}", printable(&names.join(","))));
                }
            }
        }
        let row = format!(
            "{mark} {:<width$}  {tick:>tick_width$}  {}",
            printable(schema.name(i)),
            notes.join("; ")
        );
        writeln!(out, "{}", row.trim_end())?;
    }
    writeln!(
        out,
        "  (* active; tick odd = active, each activation and deactivation adds 1)"
    )?;
    Ok(())
}

/// Prints each change of the machine's states (`+State`, `-State`, or every tick with
/// `ticks`) and of its connection, until `until` is active, `timeout` passes, or the caller
/// stops polling (Ctrl-C).
pub(super) async fn watch(
    name: &str,
    mirror: &Mirror,
    ticks: bool,
    until: Option<&str>,
    timeout: Option<Duration>,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let changed = Arc::new(tokio::sync::Notify::new());
    let notify = changed.clone();
    let (observer, _) = mirror.observe(Arc::new(move |_: &ClockChange<'_>| notify.notify_one()));
    let mut connection = mirror.connection_changes();
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    writeln!(
        out,
        "{}  watching {}: {}  (Ctrl-C to stop)",
        clock_time(),
        name,
        active_line(mirror)
    )?;
    out.flush()?;
    let mut last = mirror.clock();
    let result = loop {
        if let Some(state) = until
            && mirror.is1(state)
        {
            writeln!(out, "{}  {} is active", clock_time(), printable(state))?;
            break Ok(());
        }
        let expired = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = changed.notified() => {
                let schema = mirror.schema();
                let now = mirror.clock();
                let parts: Vec<String> = (0..schema.len().min(now.len()))
                    .filter(|&i| last.get(i) != now.get(i))
                    .map(|i| {
                        let name = printable(schema.name(i));
                        if ticks {
                            format!("{name}={}", now[i])
                        } else if is_active(now[i]) {
                            format!("+{name}")
                        } else {
                            format!("-{name}")
                        }
                    })
                    .collect();
                if !parts.is_empty() {
                    writeln!(out, "{}  {:<32}  [{}]", clock_time(), parts.join(" "), active_line(mirror))?;
                    out.flush()?;
                }
                last = now;
            }
            Ok(()) = connection.changed() => {
                let state = *connection.borrow_and_update();
                let why = mirror.last_error().filter(|_| state != ConnState::Ready).map(|e| format!(": {}", printable(&e))).unwrap_or_default();
                writeln!(out, "{}  ({}{why})", clock_time(), conn_name(state))?;
                out.flush()?;
            }
            () = expired => break if until.is_some() {
                Err(anyhow!("timed out waiting for {} to be active", printable(until.unwrap_or_default())))
            } else {
                Ok(())
            },
        }
    };
    mirror.unobserve(observer);
    result
}

/// Wall-clock time of day (UTC), for watch lines.
pub fn clock_time() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        now.subsec_millis()
    )
}
