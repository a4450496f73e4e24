//! `am-node repl`: a prompt over mirrors of running machines (the Go original's `arpc` REPL).
//!
//! - `command`: the language, a line into a command, pure and bounded;
//! - `complete`: completion of commands, machines and states, pure;
//! - `session`: the connected machines and what each command does to them;
//! - `views`: what `inspect`, `watch` and `help` print;
//! - here: the line editor (rustyline: editing, bounded history in a file, Tab through
//!   [`ReplHelper`]) and the two ways to run: a prompt, or one command and exit.

pub mod command;
pub mod complete;
pub mod session;
mod views;

use std::io::Write as _;
use std::path::{Path, PathBuf};

use rustyline::completion::Completer;
use rustyline::config::{CompletionType, Config};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::FileHistory;
use rustyline::validate::Validator;
use rustyline::{Editor, Helper};

pub use session::{ConnectOptions, Ran, Session};
pub use views::clock_time;

/// Lines kept in the history file.
pub const HISTORY_LINES: usize = 1000;

/// What rustyline asks of a line as it is edited: here, only completion, from the session's
/// machines as they are at the moment Tab is pressed.
#[derive(Debug, Clone)]
pub struct ReplHelper {
    session: Session,
}

impl ReplHelper {
    pub fn new(session: Session) -> ReplHelper {
        ReplHelper { session }
    }
}

impl Completer for ReplHelper {
    type Candidate = String;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &rustyline::Context<'_>,
    ) -> rustyline::Result<(usize, Vec<String>)> {
        let completion = self.session.complete(line, pos);
        // A single candidate is finished with a space, so the next word can follow; a state
        // for `when-time` ends in `=`, where the tick follows.
        let candidates = match completion.candidates.as_slice() {
            [one] if !one.ends_with('=') => vec![format!("{one} ")],
            _ => completion.candidates,
        };
        Ok((completion.start, candidates))
    }
}

impl Hinter for ReplHelper {
    type Hint = String;
}
impl Highlighter for ReplHelper {}
impl Validator for ReplHelper {}
impl Helper for ReplHelper {}

/// Where history is kept without `--history`: `$XDG_DATA_HOME/am-node/repl_history`, or
/// `~/.local/share/am-node/repl_history`; `None` when neither is known.
pub fn default_history() -> Option<PathBuf> {
    let data = std::env::var_os("XDG_DATA_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|h| !h.is_empty())
                .map(|h| PathBuf::from(h).join(".local/share"))
        })?;
    Some(data.join("am-node").join("repl_history"))
}

/// Runs Ctrl-C as the end of a wait: resolves at the next SIGINT.
async fn interrupted() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The prompt: reads lines until `exit` or Ctrl-D, runs each on `runtime` (a multi-thread
/// one, so the mirrors keep their connections while the prompt waits), prints errors and
/// goes on. History is read from and saved to `history`.
pub fn run_interactive(
    session: &Session,
    runtime: &tokio::runtime::Runtime,
    history: Option<&Path>,
) -> anyhow::Result<()> {
    let config = Config::builder()
        .max_history_size(HISTORY_LINES)?
        .history_ignore_dups(true)?
        .history_ignore_space(true)
        .auto_add_history(true)
        .completion_type(CompletionType::List)
        .build();
    let mut editor: Editor<ReplHelper, FileHistory> = Editor::with_config(config)?;
    editor.set_helper(Some(ReplHelper::new(session.clone())));
    if let Some(path) = history {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        match editor.load_history(path) {
            Ok(()) => {}
            Err(ReadlineError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot read the history"),
        }
    }
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    writeln!(
        stdout,
        "connected: {}. `help` lists commands, Tab completes, Ctrl-D leaves.",
        session.names().join(", ")
    )?;
    loop {
        let line = match editor.readline(&session.prompt()) {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e.into()),
        };
        if let Some(path) = history
            && let Err(e) = editor.save_history(path)
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot save the history");
        }
        let parsed = match command::parse_line(&line) {
            Ok(parsed) => parsed,
            Err(e) => {
                writeln!(stderr, "error: {e}")?;
                continue;
            }
        };
        match runtime.block_on(session.run(parsed, &mut stdout, interrupted())) {
            Ok(Ran::Exit) => break,
            Ok(_) => {}
            // The terminal echoed ^C on the prompt's line: the message starts on its own.
            Err(e) if e.to_string() == session::INTERRUPTED => writeln!(stderr, "\n{e}")?,
            Err(e) => writeln!(stderr, "error: {}", printable_error(&e))?,
        }
        stdout.flush()?;
    }
    Ok(())
}

/// Runs one command given as words (`am-node repl ENDPOINT -- add Foo n=1`).
pub async fn run_one_shot(session: &Session, words: &[String]) -> anyhow::Result<Ran> {
    // One word is a whole line in quotes (`-- "add Foo n=1"`); several are as the shell
    // split them.
    let line = match words {
        [one] => command::parse_line(one)?,
        _ => command::parse_words(words.iter().map(|w| command::Word::from_arg(w)).collect())?,
    };
    let mut stdout = std::io::stdout();
    let ran = session.run(line, &mut stdout, interrupted()).await;
    stdout.flush()?;
    ran
}

/// An error's chain on one line per cause, each through `printable` (peers wrote some).
pub fn printable_error(e: &anyhow::Error) -> String {
    let text = format!("{e:#}");
    text.split('\n')
        .map(asyncmachine::printable::printable)
        .collect::<Vec<_>>()
        .join("\n")
}
