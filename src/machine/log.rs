//! A machine's own log (Go's semantic logger): what it does, at a level set per machine.
//!
//! Off by default ([`LogLevel::Nothing`]), or the level of the `AM_LOG` environment
//! variable (a number from 0 to 5, or a level's name) when a machine is built. Each level adds to the one before: `External`
//! shows the messages of [`Machine::log`](super::Machine::log); `Changes` the states that
//! became active or inactive; `Ops` each mutation (with the arguments the log-args filter
//! lets through) and each cancellation; `Decisions` the auto mutations and the states implied
//! or removed by relations; `Everything` each handler that runs. Lines go to the machine's
//! logger, by default `tracing` events (target `asyncmachine::machine`, field `machine`), or
//! to a function set with [`Machine::set_logger`](super::Machine::set_logger).
//!
//! A mirror keeps a log of its own with the same levels and lines (`MachineLog` holds
//! both kinds'): `External` for its [`log`](super::StateSource::log), `Changes` for the states
//! each update from its source activated or deactivated, `Ops` for the mutations it sends.
//!
//! This log is separate from the library's operational `tracing` events (a failing handler,
//! a full queue), which are always emitted.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::resolve::is_active;
use super::schema::Schema;
use super::source::Mutation;
use super::value::Args;

/// How much a machine logs; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(u8)]
pub enum LogLevel {
    /// Logs nothing (the default).
    #[default]
    Nothing = 0,
    /// The messages of [`Machine::log`](super::Machine::log) only.
    External = 1,
    /// Also the states each transition activated or deactivated.
    Changes = 2,
    /// Also each mutation (with the arguments [`LogArgs`] lets through) and each cancellation.
    Ops = 3,
    /// Also auto mutations and the states relations implied or removed.
    Decisions = 4,
    /// Also each handler that runs.
    Everything = 5,
}

impl LogLevel {
    pub(crate) fn from_u8(level: u8) -> Self {
        match level {
            0 => LogLevel::Nothing,
            1 => LogLevel::External,
            2 => LogLevel::Changes,
            3 => LogLevel::Ops,
            4 => LogLevel::Decisions,
            _ => LogLevel::Everything,
        }
    }

    /// The level an environment variable sets (Go's `EnvLogLevel`): a number from 0
    /// (nothing) to 5 (everything), read from `AM_LOG` when `name` is empty. Unset or not a
    /// number is nothing; above 5 is everything.
    pub fn from_env(name: &str) -> Self {
        let name = if name.is_empty() { ENV_LOG } else { name };
        std::env::var(name)
            .ok()
            .and_then(|value| Self::parse(&value))
            .unwrap_or_default()
    }

    /// A level from its number (`"3"` is ops) or its name (`"ops"`).
    pub fn parse(value: &str) -> Option<Self> {
        let value = value.trim();
        if let Ok(n) = value.parse::<u64>() {
            return Some(Self::from_u8(n.min(5) as u8));
        }
        (0..=5)
            .map(Self::from_u8)
            .find(|level| level.name().eq_ignore_ascii_case(value))
    }

    /// The level's name in lower case (`"ops"`), as [`parse`](Self::parse) reads it.
    pub fn name(self) -> &'static str {
        match self {
            LogLevel::Nothing => "nothing",
            LogLevel::External => "external",
            LogLevel::Changes => "changes",
            LogLevel::Ops => "ops",
            LogLevel::Decisions => "decisions",
            LogLevel::Everything => "everything",
        }
    }
}

impl std::fmt::Display for LogLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The environment variable that sets the log level of machines built without one (Go's
/// `AM_LOG`).
pub const ENV_LOG: &str = "AM_LOG";

/// Where a machine's log lines go: the level of the line and the line.
pub type Logger = Arc<dyn Fn(LogLevel, &str) + Send + Sync>;

/// Which arguments a mutation's log line shows, and how much of each (Go's log-args mapper).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogArgs {
    /// The argument keys shown, in this order; others are left out.
    pub keys: Vec<String>,
    /// The longest value shown; longer ones are cut and end with `...`.
    pub max_len: usize,
}

impl LogArgs {
    /// The default of asyncmachine's mapper for a `max_len` of 0.
    pub const DEFAULT_MAX_LEN: usize = 20;

    /// Show these keys, each value cut at `max_len` characters (0 means
    /// [`DEFAULT_MAX_LEN`](Self::DEFAULT_MAX_LEN)).
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(max_len: usize, keys: I) -> Self {
        LogArgs {
            keys: keys.into_iter().map(Into::into).collect(),
            max_len: if max_len == 0 {
                Self::DEFAULT_MAX_LEN
            } else {
                max_len
            },
        }
    }

    /// The arguments shown, by key, each cut to `max_len` (Go's mapper function).
    pub fn shown(&self, args: &Args) -> Vec<(String, String)> {
        self.keys
            .iter()
            .filter_map(|key| {
                // Strings as they are (Go's `%v`), everything else in its display form.
                let value = args.get(key)?;
                let value = value
                    .as_str()
                    .map_or_else(|| value.to_string(), str::to_owned);
                Some((key.clone(), truncate(&value, self.max_len)))
            })
            .collect()
    }

    /// ` (key=value key2=value2)` for the keys present, or nothing.
    pub(crate) fn render(&self, args: &Args) -> String {
        let shown: Vec<String> = self
            .shown(args)
            .into_iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect();
        if shown.is_empty() {
            String::new()
        } else {
            format!(" ({})", shown.join(" "))
        }
    }
}

/// Cuts `value` to `max` characters, the last three of them `...` when there is room for
/// more than two others (as asyncmachine cuts them).
fn truncate(value: &str, max: usize) -> String {
    if value.chars().count() <= max {
        return value.to_owned();
    }
    if max < 5 {
        return value.chars().take(max).collect();
    }
    let kept: String = value.chars().take(max - 3).collect();
    format!("{kept}...")
}

/// A source's log: its level, where lines go and which arguments they show. Shared by the
/// local machine and the mirror, so both write the same lines.
pub(crate) struct MachineLog {
    level: AtomicU8,
    logger: Mutex<Option<Logger>>,
    args: Mutex<Option<LogArgs>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while these locks are held (loggers are called after they are released).
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl MachineLog {
    pub fn new(level: LogLevel) -> Self {
        MachineLog {
            level: AtomicU8::new(level as u8),
            logger: Mutex::new(None),
            args: Mutex::new(None),
        }
    }

    pub fn level(&self) -> LogLevel {
        LogLevel::from_u8(self.level.load(Ordering::Relaxed))
    }

    pub fn set_level(&self, level: LogLevel) {
        self.level.store(level as u8, Ordering::Relaxed);
    }

    pub fn set_logger(&self, logger: Option<Logger>) {
        *lock(&self.logger) = logger;
    }

    pub fn set_args(&self, args: Option<LogArgs>) {
        *lock(&self.args) = args;
    }

    /// Whether lines of `level` are written.
    pub fn shows(&self, level: LogLevel) -> bool {
        level != LogLevel::Nothing && self.level() >= level
    }

    /// Writes a line to the logger, or to `tracing` without one.
    pub fn emit(&self, id: &str, level: LogLevel, line: &str) {
        let logger = lock(&self.logger).clone();
        match logger {
            Some(logger) => logger(level, line),
            None => to_tracing(id, level, line),
        }
    }

    /// A line of the user's (`[extern] ...`), single: line breaks become spaces.
    pub fn external(&self, id: &str, message: &str) {
        if self.shows(LogLevel::External) {
            let line = format!("[extern] {}", message.replace(['\n', '\r'], " "));
            self.emit(id, LogLevel::External, &line);
        }
    }

    /// `[add] A B (key=value)`: a mutation (`:auto` for the machine's own), at `level`, with
    /// the arguments the log-args filter lets through.
    pub fn mutation(&self, id: &str, level: LogLevel, schema: &Schema, mutation: &Mutation) {
        if !self.shows(level) {
            return;
        }
        let called: Vec<&str> = mutation.states.iter().map(|&s| schema.name(s)).collect();
        let auto = if mutation.auto { ":auto" } else { "" };
        let args = lock(&self.args)
            .as_ref()
            .map(|log_args| log_args.render(&mutation.args))
            .unwrap_or_default();
        let line = format!("[{}{auto}] {}{args}", mutation.kind, called.join(" "));
        self.emit(id, level, &line);
    }

    /// `[state] +A -B`: the states whose tick changed, `+` when active after, at `Changes`.
    pub fn changes(&self, id: &str, schema: &Schema, after: &[u64], changed: &[usize]) {
        if changed.is_empty() || !self.shows(LogLevel::Changes) {
            return;
        }
        let marks: Vec<String> = changed
            .iter()
            .filter(|&&s| s < schema.len())
            .map(|&s| {
                let active = after.get(s).copied().is_some_and(is_active);
                let sign = if active { '+' } else { '-' };
                format!("{sign}{}", schema.name(s))
            })
            .collect();
        self.emit(
            id,
            LogLevel::Changes,
            &format!("[state] {}", marks.join(" ")),
        );
    }
}

/// The default logger: a `tracing` event per line.
fn to_tracing(machine: &str, level: LogLevel, line: &str) {
    match level {
        LogLevel::Nothing => {}
        LogLevel::External | LogLevel::Changes => {
            tracing::info!(target: "asyncmachine::machine", machine, "{line}")
        }
        LogLevel::Ops | LogLevel::Decisions => {
            tracing::debug!(target: "asyncmachine::machine", machine, "{line}")
        }
        LogLevel::Everything => {
            tracing::trace!(target: "asyncmachine::machine", machine, "{line}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::MutationKind;

    #[test]
    fn a_log_writes_the_lines_of_its_level_to_its_logger() {
        let schema = Schema::new(crate::machine::SchemaDef::of_states(vec![
            crate::machine::StateDef::new("A"),
            crate::machine::StateDef::new("B"),
        ]))
        .expect("valid");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let log = MachineLog::new(LogLevel::Nothing);
        log.set_logger(Some(Arc::new(move |level: LogLevel, line: &str| {
            sink.lock().expect("lock").push(format!("{level}: {line}"));
        })));
        log.external("m", "unseen");
        log.set_level(LogLevel::Changes);
        log.external("m", "two\nlines");
        log.changes("m", &schema, &[1, 2, 0], &[0, 1]);
        let add = |states: Vec<usize>, args| Mutation::new(MutationKind::Add, states, args);
        log.mutation("m", LogLevel::Ops, &schema, &add(vec![0], Args::new()));
        log.set_level(LogLevel::Ops);
        log.set_args(Some(LogArgs::new(0, ["n"])));
        let args = Args::new().with("n", 3);
        log.mutation("m", LogLevel::Ops, &schema, &add(vec![0, 1], args));
        assert_eq!(
            *lines.lock().expect("lock"),
            [
                "external: [extern] two lines",
                "changes: [state] +A -B",
                "ops: [add] A B (n=3)",
            ]
        );
    }

    #[test]
    fn long_values_are_cut_as_asyncmachine_cuts_them() {
        let args = Args::new().with("arg", "foofoofoo").with("other", "x");
        assert_eq!(
            LogArgs::new(5, ["arg", "arg2"]).render(&args),
            " (arg=fo...)"
        );
        assert_eq!(LogArgs::new(0, ["other"]).render(&args), " (other=x)");
        assert_eq!(LogArgs::new(5, ["none"]).render(&args), "");
    }
}
