//! A machine's own log (Go's semantic logger): what it does, at a level set per machine.
//!
//! Off by default ([`LogLevel::Nothing`]). Each level adds to the one before: `External`
//! shows the messages of [`Machine::log`](super::Machine::log); `Changes` the states that
//! became active or inactive; `Ops` each mutation (with the arguments the log-args filter
//! lets through) and each cancellation; `Decisions` the auto mutations and the states implied
//! or removed by relations; `Everything` each handler that runs. Lines go to the machine's
//! logger, by default `tracing` events (target `asyncmachine::machine`, field `machine`), or
//! to a function set with [`Machine::set_logger`](super::Machine::set_logger).
//!
//! This log is separate from the library's operational `tracing` events (a failing handler,
//! a full queue), which are always emitted.

use std::sync::Arc;

use super::value::Args;

/// How much a machine logs; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(u8)]
pub enum LogLevel {
    #[default]
    Nothing = 0,
    External = 1,
    Changes = 2,
    Ops = 3,
    Decisions = 4,
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

/// Where a machine's log lines go: the level of the line and the line.
pub type Logger = Arc<dyn Fn(LogLevel, &str) + Send + Sync>;

/// Which arguments a mutation's log line shows, and how much of each (Go's log-args mapper).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogArgs {
    pub keys: Vec<String>,
    /// The longest value shown; longer ones are cut and end with `...`.
    pub max_len: usize,
}

impl LogArgs {
    /// The default of asyncmachine's mapper for a `max_len` of 0.
    pub const DEFAULT_MAX_LEN: usize = 20;

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

    /// ` (key=value key2=value2)` for the keys present, or nothing.
    pub(crate) fn render(&self, args: &Args) -> String {
        let shown: Vec<String> = self
            .keys
            .iter()
            .filter_map(|key| {
                // Strings as they are (Go's `%v`), everything else in its display form.
                let value = args.get(key)?;
                Some((
                    key,
                    value
                        .as_str()
                        .map_or_else(|| value.to_string(), str::to_owned),
                ))
            })
            .map(|(key, value)| format!("{key}={}", truncate(&value, self.max_len)))
            .collect();
        if shown.is_empty() {
            String::new()
        } else {
            format!(" ({})", shown.join(" "))
        }
    }
}

/// Cuts `value` to `max` characters, the last three of them `...`.
fn truncate(value: &str, max: usize) -> String {
    if value.chars().count() <= max {
        return value.to_owned();
    }
    let kept: String = value.chars().take(max.saturating_sub(3)).collect();
    format!("{kept}...")
}

/// The default logger: a `tracing` event per line.
pub(crate) fn to_tracing(machine: &str, level: LogLevel, line: &str) {
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
