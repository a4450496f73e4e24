//! TLS and transport mismatches a person can act on: each gives a clear error on both sides,
//! and the listener keeps serving the others.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use asyncmachine::certs::{DevCa, PemPair};
use asyncmachine::machine::{Args, Machine, Outcome, StateSource};
use asyncmachine::mirror::{Mirror, MirrorConfig, MirrorError};
use asyncmachine::server::{Server, ServerConfig};
use asyncmachine::transport::{Endpoint, TlsConfig, TransportConfig};
use common::*;

fn tls(pair: Option<&PemPair>, ca: Option<&DevCa>, client_auth: bool) -> TransportConfig {
    let config = TlsConfig::from_pem(
        pair.map(|p| p.cert.as_bytes()),
        pair.map(|p| p.key.as_bytes()),
        ca.map(|c| c.pem().cert.as_bytes()),
        client_auth,
    )
    .expect("usable TLS material");
    TransportConfig::with_tls(config)
}

async fn server(scheme: &str, transport: TransportConfig) -> (Server, Endpoint) {
    let server = Server::new(ServerConfig {
        transport,
        ..ServerConfig::default()
    });
    let machine = Machine::builder(abc_schema()).id("worker").build();
    server
        .add_source("worker", Arc::new(machine))
        .expect("first source");
    let endpoint = server.listen(&any_port(scheme)).await.expect("binds");
    (server, endpoint.with_machine("worker"))
}

async fn connect(
    endpoint: &Endpoint,
    id: &str,
    transport: TransportConfig,
) -> Result<Mirror, MirrorError> {
    within(
        "connect",
        Mirror::connect(
            endpoint,
            MirrorConfig {
                transport,
                ..mirror_config(id)
            },
        ),
    )
    .await
}

/// The error's whole text, for matching on hints.
fn text(result: Result<Mirror, MirrorError>) -> String {
    match result {
        Ok(_) => panic!("the connection must be refused"),
        Err(e) => e.to_string(),
    }
}

/// Waits until the server counted a failed transport or protocol handshake.
async fn server_noticed(server: &Server) {
    within("the server to notice", async {
        let stats = server.stats();
        while stats.transport_errors.load(Ordering::Relaxed)
            + stats.protocol_errors.load(Ordering::Relaxed)
            == 0
        {
            tokio::task::yield_now().await;
        }
    })
    .await;
}

async fn still_serves(endpoint: &Endpoint, transport: TransportConfig) {
    let mirror = connect(endpoint, "good", transport)
        .await
        .expect("the listener still serves");
    assert_eq!(
        within("add", mirror.add(&["A"], Args::new())).await,
        Ok(Outcome::Executed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_is_refused_on_every_tls_transport() {
    let (ca, other_ca) = (
        DevCa::new("ca").expect("ca"),
        DevCa::new("other").expect("ca"),
    );
    let node = ca.issue("server-node").expect("cert");
    for scheme in ["tls", "quic", "wss"] {
        let (server, endpoint) = server(scheme, tls(Some(&node), Some(&ca), false)).await;
        let err = text(connect(&endpoint, "stranger", tls(None, Some(&other_ca), false)).await);
        assert!(
            err.contains("UnknownIssuer") && err.contains("not signed by the CA this side"),
            "{scheme}: {err}"
        );
        server_noticed(&server).await;
        still_serves(&endpoint, tls(None, Some(&ca), false)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_is_refused() {
    let ca = DevCa::new("ca").expect("ca");
    let expired = ca.issue_expired("server-node").expect("cert");
    let (server, endpoint) = server("tls", tls(Some(&expired), Some(&ca), false)).await;
    let err = text(connect(&endpoint, "client", tls(None, Some(&ca), false)).await);
    assert!(
        err.contains("expired") && err.contains("issue a new one"),
        "{err}"
    );
    server_noticed(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_requires_a_client_certificate_and_takes_the_identity_from_it() {
    let ca = DevCa::new("ca").expect("ca");
    let node = ca.issue("server-node").expect("cert");
    let client = ca.issue("client-a").expect("cert");
    for scheme in ["tls", "quic", "wss"] {
        let (server, endpoint) = server(scheme, tls(Some(&node), Some(&ca), true)).await;
        let err = text(connect(&endpoint, "anonymous", tls(None, Some(&ca), false)).await);
        assert!(err.contains("client certificate"), "{scheme}: {err}");
        assert!(err.contains("--cert and --key"), "{scheme}: {err}");
        server_noticed(&server).await;

        // With a certificate: accepted, and the server knows the client by it, not by its hello.
        let mirror = connect(
            &endpoint,
            "claims-to-be-someone-else",
            tls(Some(&client), Some(&ca), false),
        )
        .await
        .expect("a client with a certificate is let in");
        assert_eq!(
            within("add", mirror.add(&["B"], Args::new())).await,
            Ok(Outcome::Executed)
        );
        let ids: Vec<String> = server.clients().into_iter().map(|c| c.id).collect();
        assert_eq!(ids, ["client-a"], "{scheme}");
        mirror.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_client_on_a_tls_port_is_told_to_use_tls() {
    let ca = DevCa::new("ca").expect("ca");
    let node = ca.issue("server-node").expect("cert");
    let (server, endpoint) = server("tls", tls(Some(&node), Some(&ca), false)).await;
    let plain = Endpoint {
        scheme: asyncmachine::transport::Scheme::Tcp,
        ..endpoint.clone()
    };
    let err = text(connect(&plain, "plain", TransportConfig::default()).await);
    assert!(err.contains("tls://"), "{err}");
    server_noticed(&server).await;
    still_serves(&endpoint, tls(None, Some(&ca), false)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_client_on_a_raw_tcp_port_is_told_what_to_use() {
    let (server, endpoint) = server("tcp", TransportConfig::default()).await;
    let ws = Endpoint {
        scheme: asyncmachine::transport::Scheme::Ws,
        ..endpoint.clone()
    };
    let err = text(connect(&ws, "browserish", TransportConfig::default()).await);
    assert!(
        err.contains("WebSocket handshake failed") && err.contains("ws://"),
        "{err}"
    );
    server_noticed(&server).await;
    assert!(
        server.stats().refusals.load(Ordering::Relaxed) >= 1,
        "the server refused the HTTP request with a reason"
    );
    still_serves(&endpoint, TransportConfig::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_scheme_without_material_says_what_is_missing() {
    let err = text(
        connect(
            &"tls://127.0.0.1:1/worker".parse().expect("valid"),
            "x",
            TransportConfig::default(),
        )
        .await,
    );
    // The library serves `am-node run` and the client commands alike: it names no flag
    // (`run` has no --ca); each caller says what to set.
    assert!(
        err.contains("needs TLS material") && err.contains("am-node certs") && !err.contains("--"),
        "{err}"
    );
    let _ = StateSource::id(&Machine::new(abc_schema()));
}

/// Two `am-node certs` runs make two CAs of the same name: a certificate of one fails the
/// other's signature check, which TLS reports to the other side as `DecryptError`. Both sides
/// must hear that the certificate is not signed by the configured CA, and which side to fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_of_the_same_name_says_which_side_to_fix() {
    let (ca, twin) = (
        DevCa::new("asyncmachine development CA").expect("ca"),
        DevCa::new("asyncmachine development CA").expect("ca"),
    );
    let node = ca.issue("server-node").expect("cert");
    for scheme in ["tls", "quic", "wss"] {
        // The client trusts the twin: the server's certificate is the one to fix, or the CA.
        let (server, endpoint) = server(scheme, tls(Some(&node), Some(&ca), false)).await;
        let err = text(connect(&endpoint, "c", tls(None, Some(&twin), false)).await);
        assert!(
            err.contains("not signed by the CA this side is configured with"),
            "{scheme}: {err}"
        );
        assert!(!err.ends_with("DecryptError"), "{scheme}: {err}");
        server_noticed(&server).await;
    }
    for scheme in ["tls", "quic", "wss"] {
        // Mutual TLS, the client's certificate from the twin: the client hears only an alert.
        let (server, endpoint) = server(scheme, tls(Some(&node), Some(&ca), true)).await;
        let client = twin.issue("client-a").expect("cert");
        let err = text(connect(&endpoint, "c", tls(Some(&client), Some(&ca), false)).await);
        assert!(
            err.contains("the peer refused this side's certificate"),
            "{scheme}: {err}"
        );
        server_noticed(&server).await;
        still_serves(
            &endpoint,
            tls(Some(&ca.issue("good").expect("cert")), Some(&ca), false),
        )
        .await;
    }
}
