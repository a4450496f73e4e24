//! The sessions against each other, with no runtime and no socket: bytes are handed from one
//! to the other, time is a number.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::*;
use crate::machine::{Args, Mutation, MutationError, MutationKind, Outcome, Schema, StateDef};
use crate::proto::acl::Acl;
use crate::proto::config::Limits;
use crate::proto::handshake::Offer;
use crate::proto::message::{Message, RefusalKind, Snapshot};
use crate::proto::{FrameConfig, FrameReader, encode_frame};

mod identity;
mod remote;
mod retry;
mod schema_change;

fn schema() -> Arc<Schema> {
    Arc::new(
        Schema::builder()
            .state(StateDef::new("A").multi())
            .state(StateDef::new("B").multi())
            .state(StateDef::new("C"))
            .build()
            .expect("schema"),
    )
}

fn ms(n: u64) -> Moment {
    Moment::since_epoch(Duration::from_millis(n))
}

/// A source as a session reads it: a clock whose versions the test moves.
struct Source {
    schema: Arc<Schema>,
    clock: Versioned,
    ancestry: Vec<String>,
    parent_id: Option<String>,
    tags: Vec<String>,
}

impl Source {
    fn new() -> Source {
        let schema = schema();
        Source {
            clock: Versioned {
                version: 1,
                ticks: Arc::from(vec![0; schema.len()]),
                queue_tick: 0,
                ancestry: 0,
                schema: schema.hash(),
            },
            schema,
            ancestry: vec!["root".into()],
            parent_id: None,
            tags: Vec::new(),
        }
    }

    /// A new version with these ticks (the rest of the schema's states at 0).
    fn tick(&mut self, ticks: &[u64]) {
        let mut all = vec![0; self.schema.len()];
        all[..ticks.len()].copy_from_slice(ticks);
        self.clock.version += 1;
        self.clock.queue_tick += 1;
        self.clock.ticks = Arc::from(all);
    }
}

impl ClockFeed for Source {
    fn latest(&self) -> Versioned {
        self.clock.clone()
    }

    fn schema_hash(&self) -> u64 {
        self.schema.hash()
    }

    fn schema(&self) -> Option<Arc<Schema>> {
        Some(self.schema.clone())
    }

    fn ancestry(&self) -> Vec<String> {
        self.ancestry.clone()
    }
}

fn server_config(acl: Acl) -> Arc<ServerSessionConfig> {
    Arc::new(ServerSessionConfig {
        limits: Limits {
            max_frame: 1 << 20,
            handshake_timeout: Duration::from_millis(100),
            idle_timeout: Duration::from_millis(300),
            keepalive: Duration::from_millis(100),
            ..Limits::default()
        },
        compression: None,
        acl,
    })
}

fn client_config(id: &str) -> ClientConfig {
    ClientConfig {
        client_id: id.into(),
        source: String::new(),
        compression: false,
        track: None,
        token: None,
        max_frame: 1 << 20,
        handshake_timeout: Duration::from_millis(100),
        keepalive: Duration::from_millis(100),
        idle_timeout: Duration::from_millis(300),
        retry: crate::proto::session::RetryPolicy::NONE,
        key_epoch: 1,
    }
}

/// A server session and a client session with bytes handed between them.
struct Pair {
    source: Source,
    cache: DiffCache,
    stats: Arc<ServerStats>,
    server: ServerSession,
    client: ClientSession<u32>,
}

impl Pair {
    fn new(acl: Acl, id: &str) -> Pair {
        Pair::with_client(acl, client_config(id))
    }

    fn with_client(acl: Acl, config: ClientConfig) -> Pair {
        let stats = Arc::new(ServerStats::default());
        Pair {
            source: Source::new(),
            cache: DiffCache::default(),
            server: ServerSession::new(server_config(acl), stats.clone(), None, ms(0)),
            client: ClientSession::new(config, None),
            stats,
        }
    }

    /// The client connects again, to a new server session (a new connection), at `now`.
    fn reconnect(&mut self, now: Moment) {
        self.server =
            ServerSession::new(server_config(Acl::default()), self.stats.clone(), None, now);
        self.client.connect(now);
        self.send_up(now);
        self.answer_hello(now);
        self.send_down(now);
    }

    /// Connects and runs the handshake as a server driver would.
    fn connect(acl: Acl, id: &str) -> Pair {
        let mut pair = Pair::new(acl, id);
        pair.client.connect(ms(0));
        pair.send_up(ms(0));
        pair.answer_hello(ms(0));
        pair.send_down(ms(0));
        pair
    }

    fn answer_hello(&mut self, now: Moment) {
        while let Some(event) = self.server.poll_event() {
            if let ServerEvent::Hello(_) = event {
                let offer = Offer {
                    schema: &self.source.schema,
                    ancestry: &self.source.ancestry,
                    snapshot: Snapshot {
                        ticks: self.source.clock.ticks.to_vec(),
                        queue_tick: self.source.clock.queue_tick,
                    },
                    parent_id: self.source.parent_id.clone(),
                    tags: self.source.tags.clone(),
                };
                if let Some(accepted) = self.server.accept(offer) {
                    let start = self.source.clock.clone();
                    self.server.welcome(
                        accepted,
                        self.source.schema.clone(),
                        start,
                        now,
                        &self.source,
                    );
                }
            }
        }
    }

    fn send_up(&mut self, now: Moment) {
        let mut bytes = Vec::new();
        self.client.take_transmit(&mut bytes);
        self.server.handle_bytes(&bytes, now, &self.source);
    }

    fn send_down(&mut self, now: Moment) {
        let mut bytes = Vec::new();
        self.server.take_transmit(&mut bytes);
        self.client.handle_bytes(&bytes, now);
    }

    fn client_events(&mut self) -> Vec<ClientEvent<u32>> {
        std::iter::from_fn(|| self.client.poll_event()).collect()
    }

    /// Runs the mutations the server handed out on the source, as the root would.
    fn run_mutations(&mut self, now: Moment) {
        while let Some(event) = self.server.poll_event() {
            if let ServerEvent::Mutate { id, mutation } = event {
                let mut ticks = self.source.clock.ticks.to_vec();
                for s in mutation.states {
                    ticks[s] += 1;
                }
                self.source.tick(&ticks);
                self.server
                    .handle_mutation_result(id, Ok(Outcome::Executed), now, &self.source);
            }
        }
    }
}

/// The messages in a buffer of frames.
fn messages(bytes: &[u8]) -> Vec<Message> {
    let mut reader = FrameReader::new(FrameConfig::default());
    reader.push(bytes);
    std::iter::from_fn(|| reader.next_message().expect("valid frames")).collect()
}

#[test]
fn a_welcome_makes_the_client_ready_with_the_sources_clock_and_schema() {
    let mut pair = Pair::new(Acl::default(), "leaf");
    pair.source.tick(&[2, 0, 1]);
    pair.client.connect(ms(0));
    pair.send_up(ms(0));
    pair.answer_hello(ms(0));
    assert!(pair.server.is_ready());
    pair.send_down(ms(1));
    let events = pair.client_events();
    assert!(matches!(events[0], ClientEvent::Ready { reconnect: false }));
    assert!(events.iter().any(|e| matches!(
        e,
        ClientEvent::ClockChanged {
            schema_changed: true,
            ..
        }
    )));
    assert_eq!(pair.client.ticks(), [2, 0, 1, 0]);
    assert_eq!(pair.client.upstream(), ["root"]);
    assert_eq!(pair.client.phase(), Phase::Ready);
}

#[test]
fn a_refusal_reaches_the_client_as_a_failed_handshake_with_its_reason() {
    let acl = Acl {
        token: Some("s3cret".into()),
        ..Acl::default()
    };
    let mut pair = Pair::new(acl, "leaf");
    pair.client.connect(ms(0));
    pair.send_up(ms(0));
    assert!(
        pair.server.poll_event().is_none(),
        "refused before the source is looked up"
    );
    assert_eq!(pair.server.closed(), Some(&CloseReason::Handshake));
    pair.send_down(ms(1));
    match pair.client_events().as_slice() {
        [ClientEvent::HandshakeFailed(HandshakeError::Refused { kind, reason })] => {
            assert_eq!(*kind, RefusalKind::Auth);
            assert!(reason.contains("token is required"), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(pair.client.phase(), Phase::Idle);
}

#[test]
fn a_hello_that_never_comes_is_refused_at_the_handshake_deadline() {
    let mut pair = Pair::new(Acl::default(), "leaf");
    assert_eq!(pair.server.poll_timeout(), Some(ms(100)));
    pair.server
        .handle_timeout(ms(99), &pair.source, &pair.cache);
    assert!(pair.server.closed().is_none());
    pair.server
        .handle_timeout(ms(100), &pair.source, &pair.cache);
    match messages(pair.server.transmit()).as_slice() {
        [Message::Refused(refusal)] => assert_eq!(refusal.kind, RefusalKind::Timeout),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn another_protocol_is_named_on_both_sides() {
    let mut pair = Pair::new(Acl::default(), "leaf");
    pair.server
        .handle_bytes(b"GET / HTTP/1.1\r\n\r\n", ms(0), &pair.source);
    match messages(pair.server.transmit()).as_slice() {
        [Message::Refused(refusal)] => {
            assert!(refusal.reason.contains("use ws://"), "{}", refusal.reason);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    pair.client.connect(ms(0));
    pair.client
        .handle_bytes(&[0x16, 0x03, 0x01, 0x02, 0x00], ms(0));
    pair.client.handle_lost("closed".into());
    match pair.client_events().as_slice() {
        [ClientEvent::HandshakeFailed(HandshakeError::Failed(reason))] => {
            assert!(reason.contains("TLS handshake"), "{reason}");
        }
        other => panic!("expected a failed handshake, got {other:?}"),
    }
}

#[test]
fn a_plain_diff_goes_out_on_the_pushers_path_and_merges_what_came_between() {
    let mut pair = Pair::connect(Acl::default(), "leaf");
    pair.client_events();
    pair.source.tick(&[1, 0, 0]);
    pair.source.tick(&[2, 0, 0]);
    pair.source.tick(&[2, 1, 0]);
    let latest = pair.source.latest();
    assert_eq!(
        pair.server.push(&latest, &pair.cache),
        CatchUp::Sent { merged: 2 }
    );
    assert_eq!(pair.server.push(&latest, &pair.cache), CatchUp::Nothing);
    pair.send_down(ms(1));
    assert_eq!(pair.client.ticks(), [2, 1, 0, 0]);
    match pair.client_events().as_slice() {
        [ClientEvent::ClockChanged { changed, diffs, .. }] => {
            assert_eq!((changed.as_slice(), *diffs), (&[0, 1][..], 1));
        }
        other => panic!("expected one change, got {other:?}"),
    }
}

#[test]
fn the_pusher_leaves_to_the_writer_what_is_more_than_a_diff() {
    // A reply in flight: the reply will carry the diff.
    let mut pair = Pair::connect(Acl::default(), "leaf");
    pair.client
        .mutate(
            Mutation::new(MutationKind::Add, vec![2], Args::new()),
            Some(7),
            Moment::ZERO,
        )
        .expect("ready");
    pair.send_up(ms(1));
    pair.source.tick(&[1, 0, 0]);
    assert_eq!(
        pair.server.push(&pair.source.latest(), &pair.cache),
        CatchUp::Writer
    );
    pair.run_mutations(ms(2));
    pair.send_down(ms(2));
    let events = pair.client_events();
    assert!(
        matches!(
            events.last(),
            Some(ClientEvent::Answered {
                pending: 7,
                result: Ok(Outcome::Executed)
            })
        ),
        "{events:?}"
    );
    assert_eq!(
        pair.client.ticks(),
        [1, 0, 1, 0],
        "the reply carried both changes"
    );

    // The ancestry changed: the writer sends it before the diff.
    pair.source.ancestry = vec!["root".into(), "new-upstream".into()];
    pair.source.clock.ancestry += 1;
    pair.source.tick(&[2, 0, 1]);
    assert_eq!(
        pair.server.push(&pair.source.latest(), &pair.cache),
        CatchUp::Writer
    );
    assert_eq!(
        pair.server.catch_up(ms(3), &pair.source, &pair.cache),
        CatchUp::Sent { merged: 0 }
    );
    pair.send_down(ms(3));
    assert_eq!(pair.client.upstream(), ["root", "new-upstream"]);
    assert_eq!(pair.client.ticks(), [2, 0, 1, 0]);
}

#[test]
fn a_clock_that_went_back_is_sent_whole() {
    let mut pair = Pair::connect(Acl::default(), "leaf");
    pair.source.tick(&[5, 5, 1]);
    pair.server.catch_up(ms(1), &pair.source, &pair.cache);
    pair.send_down(ms(1));
    // The source restarted: its ticks are lower.
    pair.source.tick(&[1, 0, 0]);
    assert_eq!(
        pair.server.push(&pair.source.latest(), &pair.cache),
        CatchUp::Writer
    );
    pair.server.catch_up(ms(2), &pair.source, &pair.cache);
    assert!(matches!(
        messages(pair.server.transmit()).as_slice(),
        [Message::Snapshot { id: 0, .. }]
    ));
    pair.send_down(ms(2));
    assert_eq!(pair.client.ticks(), [1, 0, 0, 0]);
}

#[test]
fn a_checksum_mismatch_asks_for_a_snapshot_and_the_snapshot_heals_it() {
    let mut pair = Pair::connect(Acl::default(), "leaf");
    pair.client_events();
    pair.source.tick(&[1, 0, 0]);
    let mut diff = Vec::new();
    let wrong = Message::Diff(crate::proto::message::ClockDiff {
        changes: vec![(0, 1)],
        queue_delta: 1,
        checksum: 0xdead_beef,
    });
    encode_frame(&FrameConfig::default(), &wrong, &mut diff);
    pair.client.handle_bytes(&diff, ms(1));
    let events = pair.client_events();
    assert!(
        events.iter().any(|e| matches!(e, ClientEvent::Resync)),
        "{events:?}"
    );
    assert!(matches!(
        messages(pair.client.transmit()).as_slice(),
        [Message::Sync { id: 0 }]
    ));
    pair.source.tick(&[3, 0, 1]);
    pair.send_up(ms(2));
    pair.send_down(ms(2));
    assert_eq!(pair.client.ticks(), [3, 0, 1, 0]);
}

#[test]
fn diffs_that_arrive_together_are_one_change() {
    let mut pair = Pair::connect(Acl::default(), "leaf");
    pair.client_events();
    // Three pushes the socket took one by one, read by the client in one go.
    let mut wire = Vec::new();
    for ticks in [[2, 0, 0], [2, 2, 0], [4, 2, 0]] {
        pair.source.tick(&ticks);
        let latest = pair.source.latest();
        assert!(matches!(
            pair.server.push(&latest, &pair.cache),
            CatchUp::Sent { .. }
        ));
        let mut bytes = Vec::new();
        pair.server.take_transmit(&mut bytes);
        wire.extend(bytes);
    }
    pair.client.handle_bytes(&wire, ms(1));
    match pair.client_events().as_slice() {
        [
            ClientEvent::ClockChanged {
                before,
                changed,
                diffs: 3,
                ..
            },
        ] => {
            assert_eq!(before, &[0, 0, 0, 0]);
            assert_eq!(changed, &[0, 1], "each changed state once");
        }
        other => panic!("expected one change, got {other:?}"),
    }
    assert_eq!(pair.client.queue_tick(), 3);
}

#[test]
fn a_diff_naming_a_state_outside_the_schema_ends_the_session() {
    let mut pair = Pair::connect(Acl::default(), "leaf");
    pair.client
        .mutate(
            Mutation::new(MutationKind::Add, vec![0], Args::new()),
            Some(1),
            Moment::ZERO,
        )
        .expect("ready");
    pair.client_events();
    let mut bad = Vec::new();
    let diff = Message::Diff(crate::proto::message::ClockDiff {
        changes: vec![(9, 1)],
        queue_delta: 0,
        checksum: 0,
    });
    encode_frame(&FrameConfig::default(), &diff, &mut bad);
    pair.client.handle_bytes(&bad, ms(1));
    let events = pair.client_events();
    assert!(
        events.iter().any(|e| matches!(
            e,
            ClientEvent::Answered {
                pending: 1,
                result: Err(MutationError::Disconnected)
            }
        )),
        "{events:?}"
    );
    assert!(
        matches!(events.last(), Some(ClientEvent::Closed(reason)) if reason.contains("state 9"))
    );
    assert_eq!(pair.client.phase(), Phase::Idle);
}

#[test]
fn a_mutation_off_the_clients_list_is_answered_with_the_reason_and_not_run() {
    let acl = Acl {
        mutate: [("leaf".to_owned(), vec!["A".to_owned()])].into(),
        ..Acl::default()
    };
    let mut pair = Pair::connect(acl, "leaf");
    pair.client
        .mutate(
            Mutation::new(MutationKind::Add, vec![1], Args::new()),
            Some(3),
            Moment::ZERO,
        )
        .expect("ready");
    pair.send_up(ms(1));
    assert!(pair.server.poll_event().is_none(), "nothing to run");
    assert_eq!(pair.stats.refusals.load(Ordering::Relaxed), 1);
    pair.send_down(ms(1));
    let events = pair.client_events();
    assert!(
        matches!(events.last(), Some(ClientEvent::Answered { pending: 3, result: Err(MutationError::Refused(reason)) }) if reason.contains("may not mutate B")),
        "{events:?}"
    );
}

#[test]
fn request_ids_are_reused_and_end_with_the_connection() {
    let mut pair = Pair::connect(Acl::default(), "leaf");
    let add = || Mutation::new(MutationKind::Add, vec![0], Args::new());
    for n in 0..3 {
        pair.client
            .mutate(add(), Some(n), Moment::ZERO)
            .expect("ready");
    }
    pair.send_up(ms(1));
    // The server hands out one mutation at a time, the next once the last one's result is in.
    let mut ids = Vec::new();
    while let Some(event) = pair.server.poll_event() {
        let ServerEvent::Mutate { id, .. } = event else {
            panic!("{event:?}")
        };
        ids.push(id);
        pair.server
            .handle_mutation_result(id, Ok(Outcome::Executed), ms(1), &pair.source);
    }
    assert_eq!(ids, [1, 2, 3]);
    pair.client_events();
    // Answers are still on their way when the connection ends.
    pair.client.handle_lost("gone".into());
    let failed: Vec<u32> = pair
        .client_events()
        .into_iter()
        .filter_map(|e| match e {
            ClientEvent::Answered {
                pending,
                result: Err(MutationError::Disconnected),
            } => Some(pending),
            _ => None,
        })
        .collect();
    assert_eq!(failed, [0, 1, 2]);
    assert_eq!(pair.client.in_flight(), 0);
    assert_eq!(
        pair.client.mutate(add(), Some(9), Moment::ZERO),
        Err(MutationError::Disconnected)
    );
}

#[test]
fn keepalive_pings_are_answered_and_silence_ends_both_sides() {
    let mut pair = Pair::connect(Acl::default(), "leaf");
    // Pings both ways at the keepalive, pongs back.
    pair.server
        .handle_timeout(ms(100), &pair.source, &pair.cache);
    pair.client.handle_timeout(ms(100));
    assert!(matches!(
        messages(pair.server.transmit()).as_slice(),
        [Message::Ping(1)]
    ));
    pair.send_down(ms(101));
    pair.send_up(ms(101));
    pair.send_down(ms(101));
    assert_eq!(pair.server.closed(), None);
    assert_eq!(pair.client.phase(), Phase::Ready);
    // Then nothing: the server drops the client at its idle limit, with a bye.
    pair.server
        .handle_timeout(ms(401), &pair.source, &pair.cache);
    assert_eq!(
        pair.server.closed(),
        Some(&CloseReason::Idle(Duration::from_millis(300)))
    );
    assert!(matches!(
        messages(pair.server.transmit()).last(),
        Some(Message::Bye { .. })
    ));
    pair.client.handle_timeout(ms(401));
    assert!(matches!(
        pair.client_events().last(),
        Some(ClientEvent::Closed(reason)) if reason.contains("silent")
    ));
}

#[test]
fn a_source_with_another_schema_ends_the_session_with_a_bye() {
    let mut pair = Pair::connect(Acl::default(), "leaf");
    pair.source.schema = Arc::new(
        Schema::builder()
            .state(StateDef::new("Other"))
            .build()
            .expect("schema"),
    );
    pair.source.clock.schema = pair.source.schema.hash();
    pair.source.tick(&[1, 0]);
    assert_eq!(
        pair.server.push(&pair.source.latest(), &pair.cache),
        CatchUp::Writer
    );
    assert_eq!(
        pair.server.catch_up(ms(1), &pair.source, &pair.cache),
        CatchUp::Closed
    );
    assert_eq!(pair.server.closed(), Some(&CloseReason::SchemaChanged));
    pair.send_down(ms(1));
    assert!(matches!(
        pair.client_events().last(),
        Some(ClientEvent::Closed(reason)) if reason.contains("schema changed")
    ));
}

#[test]
fn a_push_interval_holds_pushes_until_it_passes() {
    let mut pair = Pair::new(Acl::default(), "leaf");
    pair.server = ServerSession::new(
        Arc::new({
            let mut config = (*server_config(Acl::default())).clone();
            config.limits.min_push_interval = Some(Duration::from_millis(50));
            config
        }),
        pair.stats.clone(),
        None,
        ms(0),
    );
    pair.client.connect(ms(0));
    pair.send_up(ms(0));
    pair.answer_hello(ms(0));
    pair.send_down(ms(0));
    pair.source.tick(&[1, 0, 0]);
    assert_eq!(
        pair.server.push(&pair.source.latest(), &pair.cache),
        CatchUp::Writer
    );
    assert_eq!(
        pair.server.catch_up(ms(10), &pair.source, &pair.cache),
        CatchUp::Sent { merged: 0 }
    );
    pair.source.tick(&[2, 0, 0]);
    assert_eq!(
        pair.server.catch_up(ms(20), &pair.source, &pair.cache),
        CatchUp::Nothing
    );
    assert_eq!(pair.server.poll_timeout(), Some(ms(60)));
    pair.source.tick(&[3, 0, 0]);
    pair.server
        .handle_timeout(ms(60), &pair.source, &pair.cache);
    pair.send_down(ms(60));
    assert_eq!(
        pair.client.ticks(),
        [3, 0, 0, 0],
        "one merged push at the interval"
    );
}

#[test]
fn payloads_past_the_backlog_are_refused() {
    let mut pair = Pair::connect(Acl::default(), "leaf");
    let payload = crate::proto::message::Payload {
        name: "bulk".into(),
        data: vec![0; 1 << 20],
    };
    let mut queued = 0;
    while pair.server.send_payload(&payload).is_ok() {
        queued += 1;
        assert!(queued < 10, "the backlog is bounded");
    }
    // The backlog holds up to four frames of the largest size, with what waits already.
    assert_eq!(queued, 3);
}

#[test]
fn a_peers_words_cannot_forge_a_log_line() {
    let end = CloseReason::PeerError("oops\n2026-12-02T04:00:00Z INFO forged\u{1b}[0m".into());
    let shown = end.to_string();
    assert!(!shown.chars().any(char::is_control), "{shown:?}");
    assert!(shown.contains("oops"), "{shown}");
}
