//! Two programs, each serving its own machine and mirroring the other's, mutations both ways:
//! asyncmachine-go's foo/bar example between processes. `foo` starts `bar` as a second process
//! (this same binary), and each one's handler answers a message with a reply on the other's
//! machine:
//!
//! - foo sends `Msg` to bar (through its mirror of bar); bar's handler adds `Reply` to foo;
//! - bar sends `Msg` to foo; foo's handler adds `Reply` to bar.
//!
//! ```sh
//! cargo run --example duplex
//! ```

// A program that shows what it does: printing is its output, not a library's side effect.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use asyncmachine::mirror::{Mirror, MirrorConfig};
use asyncmachine::prelude::*;
use asyncmachine::server::{Server, ServerConfig};
use asyncmachine::transport::Endpoint;

type Error = Box<dyn std::error::Error + Send + Sync>;

const WITHIN: Duration = Duration::from_secs(10);

/// foo's and bar's schema: a message and a reply, each counted (multi).
fn schema() -> Result<Schema, asyncmachine::machine::SchemaError> {
    Schema::builder()
        .state(StateDef::new("Msg").multi())
        .state(StateDef::new("Reply").multi())
        .build()
}

/// Serves `name`'s machine, mirrors `other` at `other_at` (retrying until it is up), and
/// answers each `Msg` with a `Reply` on the other machine.
async fn peer(name: &str) -> Result<(Machine, Server, Endpoint), Error> {
    let machine = Machine::builder(schema()?).id(name).build();
    let server = Server::new(ServerConfig::default());
    server.add_source(name, Arc::new(machine.clone()))?;
    let endpoint = server
        .listen(&"tcp://127.0.0.1:0".parse()?)
        .await?
        .with_machine(name);
    Ok((machine, server, endpoint))
}

/// A mirror of the other machine, and the handler that replies to it.
async fn link(machine: &Machine, other_at: &Endpoint) -> Result<Mirror, Error> {
    let other = Mirror::connect(
        other_at,
        MirrorConfig {
            client_id: machine.id().to_owned(),
            ..MirrorConfig::default()
        },
    )
    .await?;
    let reply_to = other.clone();
    machine.on_state("Msg", move |e| {
        let from = e.machine().id().to_owned();
        let reply = reply_to.add(&["Reply"], Args::new().with("from", from.as_str()));
        // A handler must not block the machine: the reply travels on its own task.
        tokio::spawn(async move {
            if let Err(e) = reply.await {
                eprintln!("{from}: the reply failed: {e}");
            }
        });
    })?;
    Ok(other)
}

/// The second process: serves bar, mirrors foo, says where it serves on stdout, sends foo a
/// message, and runs until foo closes its stdin.
async fn bar(foo_at: Endpoint) -> Result<(), Error> {
    let (machine, server, endpoint) = peer("bar").await?;
    // Linked (its handler bound) before foo hears where bar is: foo's first message must find
    // the handler that answers it.
    let foo_mirror = link(&machine, &foo_at).await?;
    println!("{endpoint}");
    std::io::stdout().flush()?;
    tokio::time::timeout(WITHIN, machine.when_tick_reaches("Msg", 1)).await??;
    foo_mirror.add(&["Msg"], Args::new()).await?;
    tokio::time::timeout(WITHIN, machine.when(&["Reply"])).await??;
    // Until foo is done with us.
    tokio::task::spawn_blocking(|| std::io::stdin().lines().count()).await?;
    foo_mirror.close().await;
    server.shutdown(Duration::from_secs(1)).await;
    Ok(())
}

/// The first process: serves foo, starts bar, mirrors it, and both exchange messages.
async fn foo() -> Result<(), Error> {
    let (machine, server, endpoint) = peer("foo").await?;
    let mut child = Command::new(std::env::current_exe()?)
        .arg(endpoint.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout from bar")?;
    let bar_at: Endpoint = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    })
    .await??
    .trim()
    .parse()?;
    println!(
        "foo serves {endpoint}; bar (pid {}) serves {bar_at}",
        child.id()
    );
    let bar_mirror = link(&machine, &bar_at).await?;

    // foo -> bar: bar's handler replies to foo.
    bar_mirror.add(&["Msg"], Args::new()).await?;
    tokio::time::timeout(WITHIN, machine.when(&["Reply"])).await??;
    println!(
        "foo: bar replied (foo's Reply tick {})",
        machine.tick("Reply")
    );
    // bar -> foo (bar sends once it saw foo's message): foo's handler replies to bar.
    tokio::time::timeout(WITHIN, bar_mirror.when(&["Reply"])).await??;
    println!(
        "foo: bar sent a message (foo's Msg tick {}) and got foo's reply (bar's Reply tick {})",
        machine.tick("Msg"),
        bar_mirror.tick("Reply")
    );

    drop(child.stdin.take());
    let status = child.wait()?;
    println!("bar exited: {status}");
    bar_mirror.close().await;
    server.shutdown(Duration::from_secs(1)).await;
    if !status.success() {
        return Err("bar failed".into());
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    match std::env::args().nth(1) {
        Some(foo_at) => bar(foo_at.parse()?).await,
        None => foo().await,
    }
}
