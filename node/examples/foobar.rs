//! The foo/bar example's node: serves the machine foo (topologies/foobar.toml), mirrors the
//! page's bar through the relay's listen route, and runs the relay in front of both. foo's
//! handler answers a message with a reply to bar; the page's handler answers a message to bar
//! with a reply to foo. Run it, then open the page it prints:
//!
//! ```sh
//! scripts/build-wasm.sh
//! cargo run --release -p am-node --example foobar
//! ```

use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use asyncmachine::machine::{Args, Machine, StateSource, Value};
use asyncmachine::mirror::{Mirror, MirrorConfig};
use asyncmachine::relay::Relay;
use asyncmachine::server::{Server, ServerConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter("info")
        .with_writer(std::io::stderr)
        .init();
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../topologies/foobar.toml");
    let topology = asyncmachine::topology::load(&file).map_err(|e| anyhow::anyhow!("{e}"))?;
    let node = topology.node("foo").context("the file has no node foo")?;
    let plan = node
        .machines
        .iter()
        .find(|m| m.name == "foo")
        .context("node foo has no machine foo")?;
    let schema = plan.schema.clone();
    let relay_config = asyncmachine::relay::config::load(&file).map_err(anyhow::Error::msg)?;

    let foo_machine = Machine::builder(schema.clone()).id("foo").build();
    let server = Server::new(ServerConfig::default());
    server.add_source("foo", Arc::new(foo_machine.clone()))?;
    for endpoint in &node.listen {
        server.listen(endpoint).await?;
    }
    let relay = Relay::start(relay_config).await?;
    let bar_at = format!("ws://{}/listen/bar", relay.local_endpoint().address);
    let bar_mirror = Mirror::start(
        &bar_at.parse()?,
        MirrorConfig {
            client_id: "foo".into(),
            schema: Some(schema),
            ..MirrorConfig::default()
        },
    )?;
    // foo's handler: a message to foo is answered with a reply to bar.
    let to_bar = bar_mirror.clone();
    foo_machine.on_state("Msg", move |e| {
        let n = e.arg("n").cloned().unwrap_or(Value::Int(0));
        let reply = to_bar.add(&["Reply"], Args::new().with("from", "foo").with("n", n));
        tokio::spawn(async move {
            if let Err(e) = reply.await {
                tracing::warn!(error = %e, "the reply to bar failed (is the page open?)");
            }
        });
    })?;
    let mut out = std::io::stdout();
    writeln!(
        out,
        "node foo serves foo; open http://{}/foobar.html (it hosts bar); Ctrl-C to stop",
        relay.local_endpoint().address
    )?;
    asyncmachine::node::shutdown_signal().await;
    relay.shutdown();
    server.shutdown(std::time::Duration::from_secs(1)).await;
    writeln!(out, "stopped")?;
    Ok(())
}
