//! Payloads: named data a source sends alongside its clock, to one mirror (by client id) or to
//! all of a source's mirrors; a consumer on the mirror's side reacts to them. A payload is not
//! state: it is not replayed to a mirror that connects later (use states and arguments for
//! that).
//!
//! ```sh
//! cargo run --example payloads
//! ```

// A program that shows what it does: printing is its output, not a library's side effect.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::sync::Arc;
use std::time::Duration;

use asyncmachine::mirror::{Mirror, MirrorConfig};
use asyncmachine::prelude::*;
use asyncmachine::server::{Server, ServerConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let schema = Schema::builder()
        .state(StateDef::new("Reporting"))
        .build()?;
    let machine = Machine::builder(schema).id("reports").build();
    let server = Server::new(ServerConfig::default());
    server.add_source("reports", Arc::new(machine.clone()))?;
    let endpoint = server
        .listen(&"tcp://127.0.0.1:0".parse()?)
        .await?
        .with_machine("reports");

    let connect = |id: &str| {
        let config = MirrorConfig {
            client_id: id.into(),
            ..MirrorConfig::default()
        };
        let endpoint = endpoint.clone();
        async move { Mirror::connect(&endpoint, config).await }
    };
    let alice = connect("alice").await?;
    let bob = connect("bob").await?;

    // Each consumer takes payloads until it has seen `want` of them.
    let consume = |mirror: &Mirror, want: usize| {
        let mut payloads = mirror.payloads();
        let id = mirror.id().to_owned();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while seen.len() < want {
                let payload = payloads.recv().await?;
                let text = String::from_utf8_lossy(&payload.data).into_owned();
                println!("{id} got {:?}: {text}", payload.name);
                seen.push(payload.name);
            }
            Ok::<_, tokio::sync::broadcast::error::RecvError>(seen)
        })
    };
    let alice_seen = consume(&alice, 2);
    let bob_seen = consume(&bob, 1);

    // To one client, by its id; then to every client of the source.
    let sent = server.send_payload(
        "reports",
        Some("alice"),
        "report",
        b"for alice only".to_vec(),
    )?;
    println!("sent 'report' to {sent} client(s)");
    let sent = server.send_payload("reports", None, "notice", b"for everyone".to_vec())?;
    println!("sent 'notice' to {sent} client(s)");

    let within = Duration::from_secs(5);
    let alice_seen = tokio::time::timeout(within, alice_seen).await???;
    let bob_seen = tokio::time::timeout(within, bob_seen).await???;
    assert_eq!(alice_seen, ["report", "notice"]);
    assert_eq!(bob_seen, ["notice"]);

    alice.close().await;
    bob.close().await;
    server.shutdown(Duration::from_secs(1)).await;
    Ok(())
}
