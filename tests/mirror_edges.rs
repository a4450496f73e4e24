//! Mirror behaviour that a well-behaved server never triggers, driven by a scripted server
//! written with the protocol primitives: checksum mismatch and resync, schema change, a server
//! that answers garbage. Also the reads and checks a mirror answers from its own clock, over a
//! real server on the `mem://` transport.

mod common;

use asyncmachine::machine::{Args, Outcome, StateSource};
use asyncmachine::mirror::{Mirror, MirrorError};
use asyncmachine::proto::message::{
    ClockDiff, Granted, MutateReply, MutateResult, Snapshot, Welcome,
};
use asyncmachine::proto::{FrameConfig, FrameReader, Message, encode_frame};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One scripted connection on the server side.
struct Scripted {
    stream: TcpStream,
    reader: FrameReader,
}

impl Scripted {
    async fn accept(listener: &TcpListener) -> Scripted {
        let (stream, _) = within("accept", listener.accept()).await.expect("accepts");
        Scripted {
            stream,
            reader: FrameReader::new(FrameConfig::default()),
        }
    }

    async fn send(&mut self, message: Message) {
        let mut out = Vec::new();
        encode_frame(&FrameConfig::default(), &message, &mut out);
        within("send", self.stream.write_all(&out))
            .await
            .expect("sends");
    }

    async fn recv(&mut self) -> Message {
        within("recv", async {
            loop {
                if let Some(m) = self
                    .reader
                    .next_message()
                    .expect("the mirror speaks protocol")
                {
                    return m;
                }
                let mut buf = [0u8; 4096];
                let n = self.stream.read(&mut buf).await.expect("reads");
                assert!(n > 0, "the mirror closed the connection");
                self.reader.push(&buf[..n]);
            }
        })
        .await
    }

    /// Reads the hello and welcomes the mirror with `ticks` for the abc schema.
    async fn welcome(&mut self, ticks: Vec<u64>) {
        assert!(matches!(self.recv().await, Message::Hello(_)));
        self.send(Message::Welcome(Welcome {
            ancestry: vec!["scripted".into()],
            schema: Some(abc_schema().def().clone()),
            snapshot: Snapshot {
                ticks,
                queue_tick: 1,
            },
            granted: Granted::default(),
            parent_id: None,
            tags: Vec::new(),
        }))
        .await;
    }
}

async fn listen() -> (TcpListener, asyncmachine::transport::Endpoint) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let endpoint = format!("tcp://{}", listener.local_addr().expect("bound"))
        .parse()
        .expect("valid");
    (listener, endpoint)
}

#[tokio::test]
async fn a_checksum_mismatch_triggers_a_full_sync() {
    let (listener, endpoint) = listen().await;
    let server = tokio::spawn(async move {
        let mut conn = Scripted::accept(&listener).await;
        conn.welcome(vec![1, 0, 0, 0]).await;
        // A diff whose checksum does not match what the mirror will hold.
        conn.send(Message::Diff(ClockDiff {
            changes: vec![(1, 1)],
            queue_delta: 1,
            checksum: 12345,
        }))
        .await;
        let id = loop {
            match conn.recv().await {
                Message::Sync { id } => break id,
                Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("expected a sync request, got {other:?}"),
            }
        };
        conn.send(Message::Snapshot {
            id,
            snapshot: Snapshot {
                ticks: vec![1, 3, 2, 0],
                queue_tick: 5,
            },
        })
        .await;
        conn
    });
    let mirror = mirror(&endpoint, "m").await;
    within("resynced", mirror.when_time(&["B", "C"], &[3, 2]))
        .await
        .expect("waits");
    assert_eq!(
        mirror.clock(),
        [1, 3, 2, 0],
        "the snapshot replaced the suspect clock"
    );
    assert_eq!(mirror.queue_tick(), 5);
    assert_eq!(
        mirror
            .stats()
            .resyncs
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    drop(within("server script", server).await.expect("script ran"));
}

#[tokio::test]
async fn a_schema_change_replaces_schema_and_clock_and_ends_old_waiters() {
    let new = sgp_schema();
    let mut new_ticks = vec![0; new.len()];
    new_ticks[0] = 1; // Start
    let (listener, endpoint) = listen().await;
    let (script_schema, script_ticks) = (new.def().clone(), new_ticks.clone());
    let server = tokio::spawn(async move {
        let mut conn = Scripted::accept(&listener).await;
        conn.welcome(vec![0, 0, 0, 0]).await;
        // Wait for the mirror's cue (a mutation), then change the schema under it.
        let Message::Mutate(cue) = conn.recv().await else {
            panic!("expected the cue")
        };
        let snapshot = Snapshot {
            ticks: script_ticks.clone(),
            queue_tick: 9,
        };
        conn.send(Message::SchemaChanged {
            schema: script_schema,
            snapshot,
        })
        .await;
        let checksum =
            asyncmachine::proto::diff::checksum(&script_ticks, &asyncmachine::proto::Tracked::All);
        let diff = ClockDiff {
            changes: vec![],
            queue_delta: 1,
            checksum,
        };
        conn.send(Message::MutateReply(MutateReply {
            id: cue.id,
            result: MutateResult::Canceled,
            diff,
        }))
        .await;
        conn
    });
    let mirror = mirror(&endpoint, "m").await;
    let old_waiter = mirror.when(&["C"]);
    let disposal = mirror.when_disposed();
    // The reply comes after the schema change, so it is answered in the new schema.
    let out = within("cue", mirror.add(&["A"], Args::new())).await;
    assert_eq!(out, Ok(Outcome::Canceled));
    assert_eq!(mirror.schema().hash(), new.hash());
    assert_eq!(mirror.clock(), new_ticks);
    assert!(mirror.is1("Start"));
    assert_eq!(mirror.queue_tick(), 10);
    assert_eq!(
        within("old waiter", old_waiter).await,
        Err(asyncmachine::machine::WaitError::Disposed)
    );
    // A wait for the disposal does not depend on the schema: it outlives the change.
    assert!(!disposal.is_ready(), "a schema change is not a disposal");
    drop(within("server script", server).await.expect("script ran"));
}

#[tokio::test]
async fn a_server_that_answers_garbage_is_a_clear_error() {
    let (listener, endpoint) = listen().await;
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accepts");
        let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
    });
    match within("connect", Mirror::connect(&endpoint, mirror_config("m"))).await {
        Err(MirrorError::Handshake { reason, .. }) => {
            assert!(reason.contains("not an aRPC server"), "{reason}");
        }
        other => panic!("expected a handshake error, got {other:?}"),
    }
    within("server", server).await.expect("ran");
}

/// A server whose welcome holds more than the protocol's limits (too many tags, a parent id too
/// long, too many groups in its schema) is refused by the mirror with the limit named, not
/// taken in.
#[tokio::test]
async fn a_welcome_past_the_identity_limits_is_a_clear_error() {
    use asyncmachine::machine::{GroupDef, SchemaDef};
    use asyncmachine::proto::limits::{MAX_GROUPS, MAX_NAME_LEN, MAX_TAGS};

    let mut grouped = abc_schema().def().clone();
    grouped.groups = (0..=MAX_GROUPS)
        .map(|i| GroupDef::new(format!("g{i}"), ["A"]))
        .collect::<Vec<_>>();
    let cases: [(Option<String>, Vec<String>, SchemaDef, &str); 3] = [
        (
            None,
            vec!["t".into(); MAX_TAGS + 1],
            abc_schema().def().clone(),
            "a list of tags of 257 items is over the protocol's limit of 256",
        ),
        (
            Some("p".repeat(MAX_NAME_LEN + 1)),
            Vec::new(),
            abc_schema().def().clone(),
            "a parent id of 1025 bytes is over the protocol's limit of 1024",
        ),
        (
            None,
            Vec::new(),
            grouped,
            "a schema's groups of 1025 items is over the protocol's limit of 1024",
        ),
    ];
    for (parent_id, tags, schema, expected) in cases {
        let (listener, endpoint) = listen().await;
        let server = tokio::spawn(async move {
            let mut script = Scripted::accept(&listener).await;
            assert!(matches!(script.recv().await, Message::Hello(_)));
            script
                .send(Message::Welcome(Welcome {
                    ancestry: vec!["scripted".into()],
                    schema: Some(schema),
                    snapshot: Snapshot {
                        ticks: vec![0, 0, 0, 0],
                        queue_tick: 1,
                    },
                    granted: Granted::default(),
                    parent_id,
                    tags,
                }))
                .await;
            script
        });
        match within("connect", Mirror::connect(&endpoint, mirror_config("m"))).await {
            Err(MirrorError::Handshake { reason, .. }) => {
                assert!(reason.contains(expected), "{reason}");
            }
            other => panic!("expected a handshake error, got {other:?}"),
        }
        drop(within("server script", server).await.expect("script ran"));
    }
}

/// The reads and checks of `StateSource` (Go's local Api: Has, Index, Not1, Any, CountActive,
/// IsClock, IsTime, TimeSum, String, StringAll, Inspect, relation lookups) answer on a mirror
/// exactly as on its source, from the replicated clock; `toggle` goes to the source. Groups,
/// tags and the parent id are the source's, from the welcome.
#[tokio::test]
async fn a_mirror_answers_the_reads_from_its_own_clock() {
    use std::sync::Arc;

    use asyncmachine::machine::{Machine, Relation, Schema, StateDef};
    use asyncmachine::server::ServerConfig;

    let schema = Schema::builder()
        .state(StateDef::new("A").auto().require(["C"]))
        .state(StateDef::new("B").multi().add(["C"]))
        .state(StateDef::new("C").after(["D"]))
        .state(StateDef::new("D").add(["C", "B"]))
        .build()
        .expect("valid")
        .with_group("Pair", &["B", "D"])
        .expect("known states");
    let source = Machine::builder(schema)
        .parent("root")
        .tags(["worker"])
        .build();
    source.set(&["A", "C"], Args::new()).expect("known states");
    let (_server, endpoint) = serve(Arc::new(source.clone()), ServerConfig::default(), "mem").await;
    let mirror = mirror(&endpoint, "reader").await;
    converged(&mirror, &source.clock()).await;

    let names = ["A", "B", "C", "D", "Exception"];
    assert!(mirror.has(&["A", "D"]) && !mirror.has1("Nope"));
    assert_eq!(mirror.index("D"), Some(3));
    assert!(mirror.not1("B") && !mirror.not1("A"));
    assert!(mirror.any_of(&[&["B"], &["A", "C"]]));
    assert_eq!(mirror.count_active(&names), 2);
    assert!(mirror.is_clock(&[("A", 1), ("C", 1)]));
    assert!(mirror.is_time(&source.clock(), &names));
    assert_eq!(mirror.time_sum(&names), 2);
    assert_eq!(mirror.summary(), "(A:1 C:1)");
    assert_eq!(mirror.summary_all(), source.summary_all());
    assert_eq!(mirror.inspect(&[]), source.inspect(&[]));
    assert_eq!(
        mirror.schema().relations_between("D", "B"),
        Ok(vec![Relation::Add])
    );
    assert_eq!(
        mirror.schema().inbound_relations_of("C"),
        Ok(vec!["A", "B", "D"])
    );

    // Toggle decides on the mirror's clock and mutates the source.
    let outcome = within("toggle", mirror.toggle(&["D"], Args::new())).await;
    assert_eq!(outcome, Ok(Outcome::Executed));
    assert!(source.is1("D"));
    converged(&mirror, &source.clock()).await;
    assert_eq!(mirror.summary(), source.summary());
    assert!(mirror.is1("D"));
    assert!(mirror.is_clock(&[("D", 1)]));

    // The source's groups (in its schema), tags and parent id came with the welcome.
    assert_eq!(source.switch_group("Pair").as_deref(), Some("B"));
    assert_eq!(mirror.switch_group("Pair").as_deref(), Some("B"));
    assert_eq!(
        mirror.schema().groups().collect::<Vec<_>>(),
        source.schema().groups().collect::<Vec<_>>()
    );
    assert_eq!(source.parent_id().as_deref(), Some("root"));
    assert_eq!(mirror.parent_id().as_deref(), Some("root"));
    assert_eq!(source.tags(), ["worker"]);
    assert_eq!(mirror.tags(), ["worker"]);
}

/// A server that sends and never reads (here pings, each of which the mirror answers) cannot
/// grow what the mirror keeps queued for it without bound: past its backlog the mirror stops
/// reading, so the server's writes stall once the sockets between them are full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_reads_stalls_instead_of_growing_the_mirrors_queue() {
    const SENT: usize = 64 << 20;
    let (listener, endpoint) = listen().await;
    let (stalled_tx, stalled_rx) = tokio::sync::oneshot::channel();
    let server = tokio::spawn(async move {
        let mut conn = Scripted::accept(&listener).await;
        conn.welcome(vec![0, 0, 0, 0]).await;
        let mut chunk = Vec::new();
        for nonce in 0..4096u64 {
            encode_frame(&FrameConfig::default(), &Message::Ping(nonce), &mut chunk);
        }
        let mut sent = 0;
        // A write that makes no progress for this long means the mirror stopped reading.
        let stall = std::time::Duration::from_millis(500);
        while sent < SENT {
            match tokio::time::timeout(stall, conn.stream.write_all(&chunk)).await {
                Ok(written) => written.expect("the mirror stays connected"),
                Err(_) => break,
            }
            sent += chunk.len();
        }
        let _ = stalled_tx.send(sent);
        conn
    });
    let mirror = mirror(&endpoint, "m").await;
    let sent = within("the server's writes to stall or end", stalled_rx)
        .await
        .expect("the script reports");
    let read = mirror
        .stats()
        .bytes_in
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        sent < SENT,
        "the mirror read all {sent} bytes of pings ({read} counted) and queued a pong for each"
    );
    mirror.dispose();
    drop(server);
}

/// Every timeout of both ends set to `Duration::MAX` means "never", not an overflow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_of_duration_max_mean_never() {
    use asyncmachine::machine::Machine;
    use asyncmachine::mirror::MirrorConfig;
    use asyncmachine::proto::config::Limits;
    use asyncmachine::proto::session::RetryPolicy;
    use asyncmachine::server::ServerConfig;
    use std::time::Duration;
    let root = Machine::builder(abc_schema()).id("root").build();
    let (_server, endpoint) = serve(
        std::sync::Arc::new(root.clone()),
        ServerConfig {
            limits: Limits {
                handshake_timeout: Duration::MAX,
                idle_timeout: Duration::MAX,
                keepalive: Duration::MAX,
                ..Limits::default()
            },
            ..ServerConfig::default()
        },
        "tcp",
    )
    .await;
    let mirror = within(
        "the mirror to connect",
        Mirror::connect(
            &endpoint,
            MirrorConfig {
                connect_timeout: Duration::MAX,
                handshake_timeout: Duration::MAX,
                keepalive: Duration::MAX,
                idle_timeout: Duration::MAX,
                mutation_timeout: Duration::MAX,
                retry: RetryPolicy {
                    deadline: Duration::MAX,
                    max_waiting: 16,
                },
                ..mirror_config("leaf")
            },
        ),
    )
    .await
    .expect("connects");
    assert_eq!(
        within("the answer", mirror.add(&["A"], Args::new())).await,
        Ok(Outcome::Executed)
    );
    assert_eq!(root.active_states(), ["A"]);
}

/// A mirror sends a mutation in the call, as a machine runs one in the call: a future dropped
/// unpolled sent it all the same, and the source sees the calls in the order they were made,
/// whichever future is awaited first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirrors_mutation_is_sent_in_the_call() {
    use asyncmachine::machine::Machine;
    use asyncmachine::server::ServerConfig;
    let root = Machine::builder(abc_schema()).id("root").build();
    let (_server, endpoint) = serve(
        std::sync::Arc::new(root.clone()),
        ServerConfig::default(),
        "tcp",
    )
    .await;
    let mirror = mirror(&endpoint, "m").await;
    drop(mirror.add(&["A"], Args::new()));
    within("A at the root", root.when(&["A"]))
        .await
        .expect("waits");

    let first = mirror.add(&["B"], Args::new());
    let second = mirror.remove(&["B"], Args::new());
    assert_eq!(within("the second", second).await, Ok(Outcome::Executed));
    assert_eq!(within("the first", first).await, Ok(Outcome::Executed));
    assert_eq!(root.active_states(), ["A"], "B added, then removed");
    assert_eq!(root.tick("B"), 2);
}
