//! A machine with relations and handlers, served over TCP, and a mirror of it in the same
//! program: the mirror reads and waits on its own copy of the clock, and its mutations run on
//! the machine, where the handlers are.
//!
//! ```sh
//! cargo run --example source_and_mirror
//! ```

// A program that shows what it does: printing is its output, not a library's side effect.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::sync::Arc;
use std::time::Duration;

use asyncmachine::mirror::{Mirror, MirrorConfig};
use asyncmachine::prelude::*;
use asyncmachine::server::{Server, ServerConfig};

/// A download: `Downloading` needs `Connected`, `Done` ends `Downloading`, `Failed` and `Done`
/// exclude each other.
fn schema() -> Result<Schema, asyncmachine::machine::SchemaError> {
    Schema::builder()
        .state(StateDef::new("Connected"))
        .state(StateDef::new("Downloading").require(["Connected"]))
        .state(StateDef::new("Done").remove(["Downloading", "Failed"]))
        .state(StateDef::new("Failed").remove(["Downloading", "Done"]))
        .build()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let machine = Machine::builder(schema()?).id("download").build();
    // A negotiation handler may refuse: no download of an empty URL.
    machine.on_enter("Downloading", |e| {
        e.arg("url")
            .is_some_and(|url| !matches!(url, Value::Str(s) if s.is_empty()))
    })?;
    // A final handler: the work. Mutations from handlers run after this transition.
    machine.on_state("Downloading", |e| {
        let bytes = 1024_i64;
        e.machine()
            .add(&["Done"], Args::new().with("bytes", bytes))
            .map(drop)
    })?;

    let server = Server::new(ServerConfig::default());
    server.add_source("download", Arc::new(machine.clone()))?;
    let local = server.listen(&"tcp://127.0.0.1:0".parse()?).await?;
    let endpoint = local.with_machine("download");
    println!("serving the machine at {endpoint}");

    let mirror = Mirror::connect(
        &endpoint,
        MirrorConfig {
            client_id: "example".into(),
            ..MirrorConfig::default()
        },
    )
    .await?;
    println!(
        "mirror ready; its states: {:?}",
        mirror.schema().names().collect::<Vec<_>>()
    );

    // Refused by the relations: Downloading requires Connected.
    let outcome = mirror
        .add(
            &["Downloading"],
            Args::new().with("url", "https://example.invalid/a"),
        )
        .await?;
    println!("add Downloading without Connected: {outcome:?}");

    mirror.add(&["Connected"], Args::new()).await?;
    // Refused by the enter handler on the machine: the URL is empty.
    let outcome = mirror
        .add(&["Downloading"], Args::new().with("url", ""))
        .await?;
    println!("add Downloading with an empty URL: {outcome:?}");

    // Accepted; the machine's final handler adds Done, which removes Downloading.
    let done = mirror.when(&["Done"]);
    let outcome = mirror
        .add(
            &["Downloading"],
            Args::new().with("url", "https://example.invalid/a"),
        )
        .await?;
    println!("add Downloading: {outcome:?}");
    tokio::time::timeout(Duration::from_secs(5), done).await??;
    println!(
        "the mirror sees {:?} (tick of Done: {})",
        mirror.active_states(),
        mirror.tick("Done")
    );
    assert!(mirror.is(&["Connected", "Done"]) && mirror.not(&["Downloading"]));

    mirror.close().await;
    server.shutdown(Duration::from_secs(1)).await;
    Ok(())
}
