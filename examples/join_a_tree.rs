//! A program of yours in a tree that am-node runs: the program's own machine (with its
//! handlers) is the root, a topology file names it as the upstream of the nodes am-node runs,
//! and a second part of the program mirrors the leaf of that tree and works through it.
//!
//! ```sh
//! cargo run --example join_a_tree                      # the nodes in this process
//! AM_NODE=target/debug/am-node cargo run --example join_a_tree   # the nodes as `am-node run`
//! ```
//!
//! The topology it writes (and prints) has two nodes: `hub` mirrors this program's machine at
//! its TCP endpoint, `edge` mirrors `hub`. Deployed, each would run on its own host with
//! `am-node run FILE --node NAME`.

// A program that shows what it does: printing is its output, not a library's side effect.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use asyncmachine::mirror::{Mirror, MirrorConfig};
use asyncmachine::prelude::*;
use asyncmachine::server::{Server, ServerConfig};
use asyncmachine::transport::Endpoint;

type Error = Box<dyn std::error::Error + Send + Sync>;

const WITHIN: Duration = Duration::from_secs(15);

/// A free TCP port on loopback for a node of the topology (am-node binds what the file says).
fn free_port() -> Result<u16, Error> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The nodes, as am-node processes or in this process.
enum Nodes {
    Processes(KillOnDrop),
    InProcess(asyncmachine::node::RunningTopology),
}

/// am-node stops with the example, also when the example fails half-way.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    // 1. The program's machine, with a handler, served over TCP.
    let schema = Schema::builder()
        .state(StateDef::new("Job").multi())
        .state(StateDef::new("Done").multi())
        .build()?;
    let root = Machine::builder(schema).id("app").build();
    root.on_state("Job", |e| {
        let n = e.arg("n").cloned().unwrap_or(Value::Int(0));
        e.machine()
            .add(&["Done"], Args::new().with("n", n))
            .map(drop)
    })?;
    let server = Server::new(ServerConfig::default());
    server.add_source("app", Arc::new(root.clone()))?;
    let root_at = server
        .listen(&"tcp://127.0.0.1:0".parse()?)
        .await?
        .with_machine("app");

    // 2. A topology whose nodes mirror it: hub <- the program, edge <- hub.
    let (hub_port, edge_port) = (free_port()?, free_port()?);
    let topology = format!(
        r#"# Written by examples/join_a_tree.rs: nodes in front of a program's own machine.
[schemas.app]
states = [{{ name = "Job", multi = true }}, {{ name = "Done", multi = true }}]

[[nodes]]
name = "hub"
listen = ["tcp://127.0.0.1:{hub_port}"]
machines = [{{ name = "app", schema = "app", upstream = "{root_at}" }}]

[[nodes]]
name = "edge"
listen = ["tcp://127.0.0.1:{edge_port}"]
machines = [{{ name = "app", upstream = "hub" }}]
"#
    );
    let dir = std::env::temp_dir().join(format!("join-a-tree-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("tree.toml");
    std::fs::write(&file, &topology)?;
    println!(
        "the program serves {root_at}; topology written to {}",
        file.display()
    );

    let nodes = match std::env::var_os("AM_NODE") {
        Some(am_node) => {
            println!(
                "running: {} run {}",
                am_node.to_string_lossy(),
                file.display()
            );
            Nodes::Processes(KillOnDrop(
                Command::new(am_node)
                    .arg("run")
                    .arg(&file)
                    .stdout(Stdio::null())
                    .spawn()?,
            ))
        }
        None => {
            println!(
                "running the nodes in this process; `am-node run {}` does the same",
                file.display()
            );
            let plan = asyncmachine::topology::load(&file)?;
            Nodes::InProcess(asyncmachine::node::start_topology(&plan, &[]).await?)
        }
    };

    // 3. Another part of the program mirrors the leaf and works through it: the mutation
    // travels edge -> hub -> the program's machine, whose handler runs here.
    let edge_at: Endpoint = format!("tcp://127.0.0.1:{edge_port}/app").parse()?;
    let leaf = tokio::time::timeout(WITHIN, async {
        loop {
            let config = MirrorConfig {
                client_id: "worker".into(),
                ..MirrorConfig::default()
            };
            // The nodes may still be starting: retry until the edge answers.
            match Mirror::connect(&edge_at, config).await {
                Ok(mirror) => break mirror,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await?;
    // The edge takes clients before its own upstream is ready; until the whole chain is up a
    // mutation would be refused as not connected. The ancestry says when it reaches the root.
    tokio::time::timeout(WITHIN, async {
        while leaf.ancestry().last().map(String::as_str) != Some("app") {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await?;
    println!("mirroring the leaf: its ancestry is {:?}", leaf.ancestry());
    let done = leaf.when_tick_reaches("Done", 1);
    let outcome = leaf.add(&["Job"], Args::new().with("n", 7)).await?;
    tokio::time::timeout(WITHIN, done).await??;
    println!(
        "add Job at the leaf: {outcome:?}; the leaf sees Done (tick {}), the program's machine ran its handler (Job tick {})",
        leaf.tick("Done"),
        root.tick("Job")
    );

    leaf.close().await;
    match nodes {
        Nodes::Processes(child) => drop(child),
        Nodes::InProcess(running) => running.shutdown().await,
    }
    server.shutdown(Duration::from_secs(1)).await;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
