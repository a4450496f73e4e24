//! Per-client permissions: which states a client sees, which it may mutate; refusals say who
//! may do what.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use asyncmachine::certs::DevCa;
use asyncmachine::client::{ClientError, fetch_status};
use asyncmachine::machine::{
    Args, Machine, MutationError, MutationKind, Outcome, Schema, SchemaDef, StateDef, StateSource,
};
use asyncmachine::mirror::{ConnState, Mirror, MirrorConfig, MirrorError};
use asyncmachine::proto::Message;
use asyncmachine::proto::acl::Acl;
use asyncmachine::proto::message::{Hello, MutateRequest, NodeStatus, RefusalKind};
use asyncmachine::server::{Server, ServerConfig};
use asyncmachine::transport::{Endpoint, TlsConfig, TransportConfig};
use common::*;

fn rules(pairs: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_see_and_change_only_what_they_may() {
    let machine = Machine::builder(abc_schema()).id("root").build();
    let config = ServerConfig {
        acl: Acl {
            see: rules(&[("*", &["A", "B"]), ("writer", &["B"])]),
            mutate: rules(&[("*", &[]), ("writer", &["B"])]),
            ..Acl::default()
        },
        ..ServerConfig::default()
    };
    let (server, endpoint) = serve(Arc::new(machine.clone()), config, "tcp").await;
    let writer = mirror(&endpoint, "writer").await;
    let reader = mirror(&endpoint, "reader").await;

    // The writer may change B, and only B.
    assert_eq!(
        within("writer B", writer.add(&["B"], Args::new())).await,
        Ok(Outcome::Executed)
    );
    match within("writer A", writer.add(&["A"], Args::new())).await {
        Err(MutationError::Refused(reason)) => {
            assert_eq!(
                reason,
                "client \"writer\" may not mutate A; it may mutate: B"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(machine.not(&["A"]), "a refused mutation does not run");
    // The reader falls under "*": may change nothing.
    match within("reader A", reader.add(&["A"], Args::new())).await {
        Err(MutationError::Refused(reason)) => {
            assert!(reason.ends_with("it may mutate: nothing"), "{reason}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    // What each sees: the writer only B, the reader A and B, nobody C.
    machine.add(&["A", "C"], Args::new()).expect("taken in");
    within("reader sees A", reader.when(&["A", "B"]))
        .await
        .expect("waits");
    assert!(!reader.is1("C"), "C is not visible to the reader");
    assert!(writer.is1("B"));
    assert!(
        !writer.is1("A") && !writer.is1("C"),
        "the writer sees only B"
    );
    assert!(
        server
            .stats()
            .refusals
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_clients_on_the_allow_list_get_in() {
    let machine = Machine::builder(abc_schema()).id("root").build();
    let config = ServerConfig {
        acl: Acl {
            allow_ids: Some(vec!["listed".into()]),
            ..Acl::default()
        },
        ..ServerConfig::default()
    };
    let (server, endpoint) = serve(Arc::new(machine), config, "tcp").await;
    let stranger = within(
        "stranger",
        Mirror::connect(&endpoint, mirror_config("stranger")),
    )
    .await;
    match stranger {
        Err(MirrorError::Refused { kind, reason, .. }) => {
            assert_eq!(kind, RefusalKind::Acl);
            assert!(
                reason.contains("\"stranger\"") && reason.contains("allow-list"),
                "{reason}"
            );
        }
        Err(other) => panic!("expected an ACL refusal, got {other}"),
        Ok(_) => panic!("a client off the allow-list got in"),
    }
    let listed = mirror(&endpoint, "listed").await;
    assert_eq!(listed.connection(), ConnState::Ready);
    let ids: Vec<String> = server.clients().into_iter().map(|c| c.id).collect();
    assert_eq!(ids, ["listed"]);
}

/// The issue's schema: `Start`; `Flag` adds `Extra` and removes `Other`; `Extra`; `Other`.
fn flag_schema() -> Schema {
    Schema::new(SchemaDef::of_states(vec![
        StateDef::new("Start"),
        StateDef::new("Flag").add(["Extra"]).remove(["Other"]),
        StateDef::new("Extra"),
        StateDef::new("Other"),
    ]))
    .expect("valid")
}

/// A root with `Start` and `Other` active.
fn started_root() -> Machine {
    let machine = Machine::builder(flag_schema()).id("root").build();
    machine
        .add(&["Start", "Other"], Args::new())
        .expect("taken in");
    machine
}

fn expect_set_refused(result: Result<Outcome, MutationError>, client: &str) {
    match result {
        Err(MutationError::Refused(reason)) => {
            assert!(
                reason.contains(&format!("client {client:?} may not set"))
                    && reason.contains("use add and remove instead")
                    && reason.ends_with("it may mutate: Flag"),
                "{reason}"
            );
        }
        other => panic!("expected the set to be refused, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restricted_client_cannot_set_but_adds_with_the_schemas_relations() {
    let machine = started_root();
    let config = ServerConfig {
        acl: Acl {
            mutate: rules(&[("mirA", &["Flag"])]),
            ..Acl::default()
        },
        ..ServerConfig::default()
    };
    let (server, endpoint) = serve(Arc::new(machine.clone()), config, "tcp").await;
    let mir_a = mirror(&endpoint, "mirA").await;

    // A set would deactivate Start and Other, which mirA may not touch.
    expect_set_refused(
        within("set Flag", mir_a.set(&["Flag"], Args::new())).await,
        "mirA",
    );
    assert!(
        machine.is(&["Start", "Other"]),
        "a refused set does not run"
    );
    assert!(machine.not(&["Flag"]));
    expect_set_refused(
        within("set nothing", mir_a.set(&[], Args::new())).await,
        "mirA",
    );
    assert!(
        machine.is(&["Start", "Other"]),
        "an empty set is refused too"
    );
    assert!(
        server
            .stats()
            .refusals
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 2
    );

    // add Flag works, and Flag's own relations apply: Extra comes, Other goes, Start stays.
    assert_eq!(
        within("add Flag", mir_a.add(&["Flag"], Args::new())).await,
        Ok(Outcome::Executed)
    );
    assert!(machine.is(&["Start", "Flag", "Extra"]));
    assert!(machine.not(&["Other"]));
    assert_eq!(
        within("remove Flag", mir_a.remove(&["Flag"], Args::new())).await,
        Ok(Outcome::Executed)
    );
    assert!(machine.is(&["Start", "Extra"]) && machine.not(&["Flag"]));
    // A client the list does not restrict may still set.
    let free = mirror(&endpoint, "free").await;
    assert_eq!(
        within("free set", free.set(&["Flag"], Args::new())).await,
        Ok(Outcome::Executed)
    );
    assert!(machine.not(&["Start"]) && machine.is(&["Flag", "Extra"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restricted_leaf_cannot_set_through_a_served_mirror() {
    // root <- mid <- leaf; the mid node restricts the leaf, the root does not restrict mid.
    let machine = started_root();
    let (_root, root_endpoint) =
        serve(Arc::new(machine.clone()), ServerConfig::default(), "tcp").await;
    let mid = mirror(&root_endpoint, "mid").await;
    let config = ServerConfig {
        acl: Acl {
            mutate: rules(&[("leaf", &["Flag"])]),
            ..Acl::default()
        },
        ..ServerConfig::default()
    };
    let (_mid_server, mid_endpoint) = serve(Arc::new(mid), config, "tcp").await;
    let leaf = mirror(&mid_endpoint, "leaf").await;

    expect_set_refused(
        within("leaf set", leaf.set(&["Flag"], Args::new())).await,
        "leaf",
    );
    assert!(machine.is(&["Start", "Other"]) && machine.not(&["Flag"]));
    assert_eq!(
        within("leaf add", leaf.add(&["Flag"], Args::new())).await,
        Ok(Outcome::Executed)
    );
    assert!(machine.is(&["Start", "Flag", "Extra"]) && machine.not(&["Other"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_root_judges_a_served_mirror_by_its_own_id() {
    // root <- mid <- leaf; the root restricts mid, the mid node does not restrict the leaf:
    // what the leaf asks for reaches the root as mid's, and is judged by mid's list.
    let machine = started_root();
    let config = ServerConfig {
        acl: Acl {
            mutate: rules(&[("mid", &["Flag"])]),
            ..Acl::default()
        },
        ..ServerConfig::default()
    };
    let (_root, root_endpoint) = serve(Arc::new(machine.clone()), config, "tcp").await;
    let mid = mirror(&root_endpoint, "mid").await;
    let (_mid_server, mid_endpoint) = serve(Arc::new(mid), ServerConfig::default(), "tcp").await;
    let leaf = mirror(&mid_endpoint, "leaf").await;

    match within("leaf set", leaf.set(&["Flag"], Args::new())).await {
        Err(MutationError::Refused(reason)) => {
            assert!(reason.contains("client \"mid\" may not set"), "{reason}");
        }
        other => panic!("expected the root to refuse, got {other:?}"),
    }
    assert!(machine.is(&["Start", "Other"]) && machine.not(&["Flag"]));
    assert_eq!(
        within("leaf add", leaf.add(&["Flag"], Args::new())).await,
        Ok(Outcome::Executed)
    );
    assert!(machine.is(&["Start", "Flag", "Extra"]));
}

async fn status_of(
    endpoint: &Endpoint,
    transport: &TransportConfig,
    token: Option<&str>,
) -> Result<NodeStatus, ClientError> {
    within(
        "status",
        fetch_status(endpoint, transport, token.map(str::to_owned), LIMIT),
    )
    .await
}

fn expect_status_refused(result: Result<NodeStatus, ClientError>, needle: &str) {
    match result {
        Err(ClientError::Refused { reason, .. }) => {
            assert!(reason.contains(needle), "{reason:?} lacks {needle:?}")
        }
        Err(other) => panic!("expected a refusal, got {other}"),
        Ok(status) => panic!("status leaked to a narrowed peer: {status:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_is_refused_to_peers_the_rules_narrow() {
    let machine = Machine::builder(abc_schema()).id("root").build();
    machine.add(&["C"], Args::new()).expect("taken in");
    // Every client sees A only: status (every tick of every state) must not reach them.
    let narrowed = ServerConfig {
        acl: Acl {
            see: rules(&[("*", &["A"])]),
            ..Acl::default()
        },
        ..ServerConfig::default()
    };
    let (_narrowed, endpoint) = serve(Arc::new(machine.clone()), narrowed, "tcp").await;
    expect_status_refused(
        status_of(&endpoint, &transport(), None).await,
        "narrows what clients without a certificate may see",
    );
    // Only listed clients get in: an anonymous status request is not one of them.
    let listed = ServerConfig {
        acl: Acl {
            allow_ids: Some(vec!["ops".into()]),
            ..Acl::default()
        },
        ..ServerConfig::default()
    };
    let (_listed, endpoint) = serve(Arc::new(machine.clone()), listed, "tcp").await;
    expect_status_refused(status_of(&endpoint, &transport(), None).await, "allow-list");
    // A node with no such rules answers as before; one with a token wants it.
    let (_open, endpoint) = serve(Arc::new(machine.clone()), ServerConfig::default(), "tcp").await;
    let status = status_of(&endpoint, &transport(), None)
        .await
        .expect("an open node answers");
    assert_eq!(status.sources[0].active, ["C"]);
    let token = ServerConfig {
        acl: Acl {
            token: Some("t".into()),
            ..Acl::default()
        },
        ..ServerConfig::default()
    };
    let (_token, endpoint) = serve(Arc::new(machine), token, "tcp").await;
    expect_status_refused(status_of(&endpoint, &transport(), None).await, "token");
    assert!(status_of(&endpoint, &transport(), Some("t")).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_mutual_tls_status_follows_the_certificates_identity() {
    let ca = DevCa::new("acl CA").expect("a CA");
    let mutual = |name: &str| {
        let pair = ca.issue(name).expect("a certificate");
        let tls = TlsConfig::from_pem(
            Some(pair.cert.as_bytes()),
            Some(pair.key.as_bytes()),
            Some(ca.pem().cert.as_bytes()),
            true,
        )
        .expect("usable TLS material");
        TransportConfig::with_tls(tls)
    };
    let machine = Machine::builder(abc_schema()).id("root").build();
    let server = Server::new(ServerConfig {
        transport: mutual("node"),
        acl: Acl {
            allow_ids: Some(vec!["ops".into(), "eve".into()]),
            see: rules(&[("*", &["A"]), ("ops", &["A", "B", "C", "Exception"])]),
            ..Acl::default()
        },
        ..ServerConfig::default()
    });
    server
        .add_source("worker", Arc::new(machine))
        .expect("first source");
    let endpoint = server.listen(&any_port("tls")).await.expect("binds");
    // ops is listed and sees every state: it gets the status.
    let status = status_of(&endpoint, &mutual("ops"), None)
        .await
        .expect("ops may read the status");
    assert_eq!(status.sources.len(), 1);
    // eve is listed but sees A only.
    expect_status_refused(
        status_of(&endpoint, &mutual("eve"), None).await,
        "narrows what client \"eve\" may see",
    );
    // mallory has a certificate from the CA but is not listed.
    expect_status_refused(
        status_of(&endpoint, &mutual("mallory"), None).await,
        "\"mallory\" is not on this server's allow-list",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_is_not_let_in_learns_no_source_names() {
    let server = Server::new(ServerConfig {
        transport: transport(),
        acl: Acl {
            token: Some("t".into()),
            ..Acl::default()
        },
        ..ServerConfig::default()
    });
    for name in ["worker", "secret-payroll"] {
        let machine = Machine::builder(abc_schema()).id(name).build();
        server
            .add_source(name, Arc::new(machine))
            .expect("a new source");
    }
    let endpoint = server
        .listen(&any_port("tcp"))
        .await
        .expect("binds")
        .with_machine("nope");
    let mut client = RawClient::connect(&endpoint).await;
    client.send(&RawClient::hello(&endpoint, "eve")).await;
    match client.recv().await {
        Some(Message::Refused(refusal)) => {
            assert_eq!(refusal.kind, RefusalKind::Auth, "{}", refusal.reason);
            assert!(!refusal.reason.contains("secret"), "{}", refusal.reason);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // With the token, the unknown name is answered with what is served.
    let mut client = RawClient::connect(&endpoint).await;
    let hello = match RawClient::hello(&endpoint, "ops") {
        Message::Hello(hello) => Message::Hello(Hello {
            token: Some("t".into()),
            ..hello
        }),
        other => panic!("a hello, not {other:?}"),
    };
    client.send(&hello).await;
    match client.recv().await {
        Some(Message::Refused(refusal)) => {
            assert_eq!(refusal.kind, RefusalKind::UnknownSource);
            assert!(
                refusal.reason.contains("secret-payroll"),
                "{}",
                refusal.reason
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// A CA, a server certificate for 127.0.0.1 (identity `node`), and a client certificate from
/// the same CA that names no DNS identity: common CN = `ops`, and an IP address only.
fn certificates_without_a_dns_identity() -> (TransportConfig, TransportConfig) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        SanType,
    };
    let ca_key = KeyPair::generate().expect("a key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "org CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).expect("a CA");
    let issuer = Issuer::new(ca_params, ca_key);
    let issue = |params: CertificateParams| {
        let key = KeyPair::generate().expect("a key");
        let cert = params.signed_by(&key, &issuer).expect("signed");
        (cert.pem(), key.serialize_pem())
    };
    let server =
        issue(CertificateParams::new(vec!["node".into(), "127.0.0.1".into()]).expect("params"));
    let mut client = CertificateParams::new(Vec::<String>::new()).expect("params");
    client.distinguished_name.push(DnType::CommonName, "ops");
    client.subject_alt_names = vec![SanType::IpAddress([127, 0, 0, 1].into())];
    let client = issue(client);
    let config = |(cert, key): &(String, String)| {
        let tls = TlsConfig::from_pem(
            Some(cert.as_bytes()),
            Some(key.as_bytes()),
            Some(ca_cert.pem().as_bytes()),
            true,
        )
        .expect("usable TLS material");
        TransportConfig::with_tls(tls)
    };
    (config(&server), config(&client))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_mutual_tls_a_certificate_without_an_identity_cannot_claim_one() {
    let (server_tls, client_tls) = certificates_without_a_dns_identity();
    for scheme in ["tls", "wss", "quic"] {
        let machine = Machine::builder(abc_schema()).id("root").build();
        let server = Server::new(ServerConfig {
            transport: server_tls.clone(),
            acl: Acl {
                allow_ids: Some(vec!["ops".into()]),
                ..Acl::default()
            },
            ..ServerConfig::default()
        });
        server
            .add_source("worker", Arc::new(machine))
            .expect("first source");
        let endpoint = server
            .listen(&any_port(scheme))
            .await
            .expect("binds")
            .with_machine("worker");
        // The certificate is the CA's, but it proves no id: claiming "ops" must not get in.
        let config = MirrorConfig {
            transport: client_tls.clone(),
            ..mirror_config("ops")
        };
        let connected = within("connect", Mirror::connect(&endpoint, config)).await;
        assert!(
            connected.is_err(),
            "{scheme}: a certificate without an identity got in as the id it claimed"
        );
        assert!(
            server.clients().is_empty(),
            "{scheme}: {:?}",
            server.clients()
        );
        within("the transport error is counted", async {
            while server
                .stats()
                .transport_errors
                .load(std::sync::atomic::Ordering::Relaxed)
                == 0
            {
                tokio::task::yield_now().await;
            }
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_with_control_characters_is_refused_at_the_hello() {
    let machine = Machine::builder(abc_schema()).id("root").build();
    let (server, endpoint) = serve(Arc::new(machine), ServerConfig::default(), "tcp").await;
    let mut client = RawClient::connect(&endpoint).await;
    client
        .send(&RawClient::hello(
            &endpoint,
            "ops\n2026 INFO client ready client=admin",
        ))
        .await;
    match client.recv().await {
        Some(Message::Refused(refusal)) => {
            assert_eq!(refusal.kind, RefusalKind::BadHello, "{}", refusal.reason);
            assert!(
                refusal.reason.contains("control characters"),
                "{}",
                refusal.reason
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(server.clients().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_no_reply_set_from_a_restricted_client_does_not_run_either() {
    let machine = started_root();
    let config = ServerConfig {
        acl: Acl {
            mutate: rules(&[("mirA", &["Flag"])]),
            ..Acl::default()
        },
        ..ServerConfig::default()
    };
    let (server, endpoint) = serve(Arc::new(machine.clone()), config, "tcp").await;
    let (mut client, _welcome) = RawClient::handshake(&endpoint, "mirA").await;
    let flag = flag_schema().index("Flag").expect("a state") as u32;
    // Id 0 asks for no reply; the Sync after it is answered once the set was handled.
    client
        .send(&Message::Mutate(MutateRequest {
            id: 0,
            kind: MutationKind::Set,
            states: vec![flag],
            args: Args::new(),
            key: None,
        }))
        .await;
    client.send(&Message::Sync { id: 9 }).await;
    loop {
        match client.recv().await {
            Some(Message::Snapshot { id: 9, .. }) => break,
            Some(_) => {}
            None => panic!("the server closed the connection"),
        }
    }
    assert!(machine.is(&["Start", "Other"]) && machine.not(&["Flag"]));
    assert_eq!(
        server
            .stats()
            .refusals
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

/// `Start`, `Flag`, `Other` in the given order.
fn ordered_schema(order: [&str; 3]) -> Schema {
    Schema::new(SchemaDef::of_states(order.map(StateDef::new).to_vec())).expect("valid")
}

/// An upstream written by hand: welcomes with `Start, Flag, Other` (Start active), changes its
/// schema to `Flag, Start, Other` with the clock `after` when told, answers mutations as
/// executed and reports their positions.
async fn scripted_upstream(
    listener: tokio::net::TcpListener,
    change: tokio::sync::oneshot::Receiver<()>,
    after: Vec<u64>,
    mutated: tokio::sync::mpsc::UnboundedSender<Vec<u32>>,
) {
    use asyncmachine::proto::message::{ClockDiff, Granted, MutateReply, Snapshot, Welcome};
    use asyncmachine::proto::{FrameConfig, FrameReader, encode_frame};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let (mut stream, _) = listener.accept().await.expect("accepts");
    let mut reader = FrameReader::new(FrameConfig::default());
    let frame = |message: Message| {
        let mut out = Vec::new();
        encode_frame(&FrameConfig::default(), &message, &mut out);
        out
    };
    let snapshot = |ticks: Vec<u64>| Snapshot {
        ticks,
        queue_tick: 1,
    };
    let mut changed = false;
    let mut change = Some(change);
    let mut buf = vec![0u8; 4096];
    loop {
        while let Some(message) = reader.next_message().expect("the mirror speaks protocol") {
            let answer = match message {
                Message::Hello(_) => Message::Welcome(Welcome {
                    ancestry: vec!["scripted".into()],
                    schema: Some(ordered_schema(["Start", "Flag", "Other"]).def().clone()),
                    snapshot: snapshot(vec![1, 0, 0, 0]),
                    granted: Granted::default(),
                    parent_id: None,
                    tags: Vec::new(),
                }),
                Message::Mutate(request) => {
                    let _ = mutated.send(request.states.clone());
                    Message::MutateReply(MutateReply {
                        id: request.id,
                        result: asyncmachine::proto::message::MutateResult::Executed,
                        diff: ClockDiff {
                            changes: vec![],
                            queue_delta: 0,
                            checksum: 0,
                        },
                    })
                }
                Message::Sync { id } => Message::Snapshot {
                    id,
                    snapshot: snapshot(if changed {
                        after.clone()
                    } else {
                        vec![1, 0, 0, 0]
                    }),
                },
                Message::Ping(nonce) => Message::Pong(nonce),
                _ => continue,
            };
            let out = frame(answer);
            stream.write_all(&out).await.expect("writes");
        }
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => reader.push(&buf[..n]),
            },
            Ok(()) = async { change.as_mut().expect("not yet").await }, if change.is_some() => {
                change = None;
                changed = true;
                let out = frame(Message::SchemaChanged {
                    schema: ordered_schema(["Flag", "Start", "Other"]).def().clone(),
                    snapshot: snapshot(after.clone()),
                });
                stream.write_all(&out).await.expect("writes");
            }
        }
    }
}

/// A mid node (a served mirror with no fixed schema) of a scripted upstream that changes its
/// schema when told to, then has the clock `after`.
struct ScriptedMid {
    mid: Mirror,
    change: tokio::sync::oneshot::Sender<()>,
    /// The states of each mutation the upstream was asked to run.
    mutated: tokio::sync::mpsc::UnboundedReceiver<Vec<u32>>,
}

async fn mid_of_a_scripted_upstream(after: Vec<u64>) -> ScriptedMid {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let upstream: Endpoint = format!("tcp://{}", listener.local_addr().expect("bound"))
        .parse()
        .expect("valid");
    let (change, change_rx) = tokio::sync::oneshot::channel();
    let (mutated_tx, mutated) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(scripted_upstream(listener, change_rx, after, mutated_tx));
    ScriptedMid {
        mid: mirror(&upstream, "mid").await,
        change,
        mutated,
    }
}

/// Tells the upstream to change its schema and waits until the mid has the new one.
async fn change_schema(mid: &Mirror, change: tokio::sync::oneshot::Sender<()>) {
    change.send(()).expect("the upstream waits");
    within("the mid's schema changes", async {
        while mid.schema().index("Flag") != Some(0) {
            tokio::task::yield_now().await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_change_under_a_served_mirror_ends_its_clients_sessions() {
    // upstream (scripted) <- mid (served mirror, no fixed schema) <- leaf, which may mutate
    // Flag only. Flag is position 1 of the schema the leaf was given; after the upstream's
    // schema change, position 1 is Start.
    let ScriptedMid {
        mid,
        change: change_tx,
        mutated: mut mutated_rx,
    } = mid_of_a_scripted_upstream(vec![0, 1, 0, 0]).await;
    let config = ServerConfig {
        acl: Acl {
            mutate: rules(&[("leaf", &["Flag"])]),
            ..Acl::default()
        },
        ..ServerConfig::default()
    };
    let (_mid_server, mid_endpoint) = serve(Arc::new(mid.clone()), config, "tcp").await;
    let (mut leaf, welcome) = RawClient::handshake(&mid_endpoint, "leaf").await;
    assert_eq!(welcome.granted.mutable.as_deref(), Some(&[1u32][..]));

    change_schema(&mid, change_tx).await;
    // "add 1" meant Flag when the leaf was welcomed; now it would be Start. The send may
    // fail: the server may have closed the session already.
    let mut out = Vec::new();
    asyncmachine::proto::encode_frame(
        &asyncmachine::proto::FrameConfig::default(),
        &Message::Mutate(MutateRequest {
            id: 1,
            kind: MutationKind::Add,
            states: vec![1],
            args: Args::new(),
            key: None,
        }),
        &mut out,
    );
    {
        use tokio::io::AsyncWriteExt;
        let _ = leaf.stream.write_all(&out).await;
        let _ = leaf.stream.flush().await;
    }
    let mut last = None;
    while let Some(message) = leaf.recv().await {
        match message {
            Message::MutateReply(reply) => {
                panic!("the mutation ran against the new schema's state: {reply:?}")
            }
            Message::Bye { reason } => last = Some(reason),
            _ => {}
        }
    }
    let reason = last.expect("a bye before the close");
    assert!(reason.contains("schema changed"), "{reason}");
    assert!(
        mutated_rx.try_recv().is_err(),
        "nothing was forwarded upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_and_replies_carry_only_what_a_client_sees() {
    let machine = Machine::builder(abc_schema()).id("root").build();
    machine.add(&["B", "C"], Args::new()).expect("taken in");
    let config = ServerConfig {
        acl: Acl {
            see: rules(&[("*", &["A"])]),
            ..Acl::default()
        },
        ..ServerConfig::default()
    };
    let (_server, endpoint) = serve(Arc::new(machine.clone()), config, "tcp").await;
    let (mut client, welcome) = RawClient::handshake(&endpoint, "narrow").await;
    assert_eq!(welcome.snapshot.ticks, [0, 0, 0, 0]);
    assert_eq!(welcome.granted.tracked.as_deref(), Some(&[0u32][..]));
    // Asking to track more than it may see changes nothing.
    let wider = {
        let mut client = RawClient::connect(&endpoint).await;
        let hello = match RawClient::hello(&endpoint, "narrow") {
            Message::Hello(hello) => Hello {
                options: asyncmachine::proto::message::WantedOptions {
                    track: Some(vec!["B".into(), "C".into()]),
                    ..hello.options
                },
                ..hello
            },
            other => panic!("a hello, not {other:?}"),
        };
        client.send(&Message::Hello(hello)).await;
        match client.recv().await {
            Some(Message::Welcome(welcome)) => welcome,
            other => panic!("expected a welcome, got {other:?}"),
        }
    };
    assert_eq!(wider.snapshot.ticks, [0, 0, 0, 0]);
    assert_eq!(wider.granted.tracked.as_deref(), Some(&[][..]));

    // A mutation of states it does not see: the reply's diff names only what it sees.
    machine.remove(&["B"], Args::new()).expect("taken in");
    client
        .send(&Message::Mutate(MutateRequest {
            id: 4,
            kind: MutationKind::Add,
            states: vec![0, 1],
            args: Args::new(),
            key: None,
        }))
        .await;
    client.send(&Message::Sync { id: 5 }).await;
    let mut replied = false;
    loop {
        match client.recv().await {
            Some(Message::MutateReply(reply)) => {
                assert_eq!(reply.id, 4);
                assert!(reply.diff.changes.iter().all(|&(s, _)| s == 0), "{reply:?}");
                replied = true;
            }
            Some(Message::Diff(diff)) => {
                assert!(diff.changes.iter().all(|&(s, _)| s == 0), "{diff:?}")
            }
            Some(Message::Snapshot { id: 5, snapshot }) => {
                assert_eq!(snapshot.ticks[1..], [0, 0, 0], "{snapshot:?}");
                assert_eq!(snapshot.ticks[0] % 2, 1, "A is active: {snapshot:?}");
                break;
            }
            Some(_) => {}
            None => panic!("the server closed the connection"),
        }
    }
    assert!(replied, "the reply came before the snapshot");
    assert!(machine.is(&["A", "B", "C"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_change_without_a_transition_lets_new_clients_stay() {
    // The new schema comes with a clock of zeros: the mirror's clock does not change, so no
    // transition tells the server. A client welcomed after it has the new schema, and must
    // not be sent away for a change it already has.
    let ScriptedMid {
        mid,
        change: change_tx,
        ..
    } = mid_of_a_scripted_upstream(vec![0, 0, 0, 0]).await;
    let (_mid_server, mid_endpoint) =
        serve(Arc::new(mid.clone()), ServerConfig::default(), "tcp").await;
    change_schema(&mid, change_tx).await;
    let (mut leaf, welcome) = RawClient::handshake(&mid_endpoint, "leaf").await;
    let schema = Schema::new(welcome.schema.expect("a schema")).expect("valid");
    assert_eq!(schema.index("Flag"), Some(0), "the new schema");
    assert_eq!(
        welcome.snapshot.ticks,
        [0, 0, 0, 0],
        "the new schema's clock"
    );
    leaf.send(&Message::Sync { id: 3 }).await;
    loop {
        match leaf.recv().await {
            Some(Message::Snapshot { id: 3, snapshot }) => {
                assert_eq!(snapshot.ticks, [0, 0, 0, 0]);
                break;
            }
            Some(Message::Bye { reason }) => panic!("sent away: {reason}"),
            Some(_) => {}
            None => panic!("the server closed the connection"),
        }
    }
}
