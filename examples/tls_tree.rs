//! A tree over mutual TLS with its access rules written in code, not in a topology file: a
//! development CA issues a certificate per program, the root serves its machine to `mid` only,
//! `mid` mirrors the root and serves its mirror again to `ops`, which may mutate one state. A
//! certificate from the same CA with a name on no allow-list gets in nowhere.
//!
//! ```sh
//! cargo run --example tls_tree
//! ```
//!
//! The CA here lives in memory; `am-node certs DIR NAME...` writes one to files, and
//! `TlsConfig::from_pem_files` reads them.

// A program that shows what it does: printing is its output, not a library's side effect.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use asyncmachine::certs::DevCa;
use asyncmachine::mirror::{Mirror, MirrorConfig};
use asyncmachine::prelude::*;
use asyncmachine::proto::acl::Acl;
use asyncmachine::server::{Server, ServerConfig};
use asyncmachine::transport::{Endpoint, TlsConfig, TransportConfig};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// TLS for the program named `name`: its certificate (the name is its identity), the CA to
/// verify peers with, and client certificates required of whoever connects to it.
fn tls(ca: &DevCa, name: &str) -> Result<TransportConfig, Error> {
    let pair = ca.issue(name)?;
    let tls = TlsConfig::from_pem(
        Some(pair.cert.as_bytes()),
        Some(pair.key.as_bytes()),
        Some(ca.pem().cert.as_bytes()),
        true,
    )?;
    Ok(TransportConfig::with_tls(tls))
}

/// Serves `source` as `name` over TLS with `acl`.
async fn serve(
    ca: &DevCa,
    node: &str,
    name: &str,
    source: Arc<dyn StateSource>,
    acl: Acl,
) -> Result<(Server, Endpoint), Error> {
    let server = Server::new(ServerConfig {
        name: node.into(),
        transport: tls(ca, node)?,
        acl,
        ..ServerConfig::default()
    });
    server.add_source(name, source)?;
    let endpoint = server.listen(&"tls://127.0.0.1:0".parse()?).await?;
    Ok((server, endpoint.with_machine(name)))
}

async fn mirror(ca: &DevCa, id: &str, endpoint: &Endpoint) -> Result<Mirror, Error> {
    let config = MirrorConfig {
        client_id: id.into(),
        transport: tls(ca, id)?,
        ..MirrorConfig::default()
    };
    Ok(Mirror::connect(endpoint, config).await?)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let ca = DevCa::new("example CA")?;
    let schema = Schema::builder()
        .state(StateDef::new("Running"))
        .state(StateDef::new("Flag").require(["Running"]))
        .build()?;
    let root = Machine::builder(schema).id("root").build();
    root.add(&["Running"], Args::new())?;

    // The root lets in `mid` only.
    let (root_server, root_at) = serve(
        &ca,
        "root",
        "app",
        Arc::new(root.clone()),
        Acl {
            allow_ids: Some(vec!["mid".into()]),
            ..Acl::default()
        },
    )
    .await?;
    // mid mirrors the root and serves its mirror to `ops`, who may mutate Flag only.
    let mid = mirror(&ca, "mid", &root_at).await?;
    let (mid_server, mid_at) = serve(
        &ca,
        "mid",
        "app",
        Arc::new(mid.clone()),
        Acl {
            allow_ids: Some(vec!["ops".into()]),
            mutate: BTreeMap::from([("ops".into(), vec!["Flag".into()])]),
            ..Acl::default()
        },
    )
    .await?;
    println!("root serves {root_at} to mid; mid serves {mid_at} to ops");

    let ops = mirror(&ca, "ops", &mid_at).await?;
    println!("ops sees {:?} through mid", ops.active_states());
    let outcome = ops.add(&["Flag"], Args::new()).await?;
    println!(
        "ops adds Flag: {outcome:?}; the root has {:?}",
        root.active_states()
    );
    assert!(root.is(&["Flag"]));
    match ops.remove(&["Running"], Args::new()).await {
        Err(e) => println!("ops removes Running: refused: {e}"),
        Ok(outcome) => return Err(format!("ops removed Running: {outcome:?}").into()),
    }

    // A valid certificate whose name is on no allow-list.
    match mirror(&ca, "mallory", &mid_at).await {
        Err(e) => println!("mallory connects to mid: refused: {e}"),
        Ok(_) => return Err("mallory got in".into()),
    }
    // ops may not skip a level either: the root lets in mid only.
    match mirror(&ca, "ops", &root_at).await {
        Err(e) => println!("ops connects to the root: refused: {e}"),
        Ok(_) => return Err("ops got in at the root".into()),
    }

    ops.close().await;
    mid_server.shutdown(Duration::from_secs(1)).await;
    mid.close().await;
    root_server.shutdown(Duration::from_secs(1)).await;
    Ok(())
}
