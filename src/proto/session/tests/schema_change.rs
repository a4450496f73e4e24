//! A source's schema that grows under a session: passed on with `SchemaChanged`, and the
//! session goes on with the client's diffs, mutations, waits and view as they were.

use super::*;
use crate::machine::{EXCEPTION, WaitError};

/// The test schema with `D` after its states (`Exception` kept at its position).
fn grown() -> Arc<Schema> {
    Arc::new(
        Schema::builder()
            .state(StateDef::new("A").multi())
            .state(StateDef::new("B").multi())
            .state(StateDef::new("C"))
            .state(StateDef::new(EXCEPTION).multi())
            .state(StateDef::new("D"))
            .build()
            .expect("schema"),
    )
}

/// The source's schema grows and its clock gets a version of the new schema.
fn grow(pair: &mut Pair, ticks: &[u64]) {
    pair.source.schema = grown();
    pair.source.clock.schema = pair.source.schema.hash();
    pair.source.tick(ticks);
}

#[test]
fn a_schema_that_grows_is_passed_on_and_the_session_goes_on() {
    let mut pair = Pair::connect(Acl::default(), "leaf");
    pair.client_events();
    pair.client
        .when_args(1, Args::new().with("k", 1), 9)
        .expect("registered");
    pair.send_up(ms(1));
    let Some(ServerEvent::WhenArgs { id, wait, .. }) = pair.server.poll_event() else {
        panic!("expected the wait");
    };

    grow(&mut pair, &[1, 0, 0, 0, 1]);
    assert_eq!(
        pair.server.push(&pair.source.latest(), &pair.cache),
        CatchUp::Writer,
        "a schema change is the writer's"
    );
    pair.server.catch_up(ms(2), &pair.source, &pair.cache);
    assert_eq!(pair.server.closed(), None);
    assert!(matches!(
        messages(pair.server.transmit()).as_slice(),
        [Message::SchemaChanged { schema, snapshot }]
            if schema.states.len() == 5 && snapshot.ticks == [1, 0, 0, 0, 1]
    ));
    pair.send_down(ms(2));
    let events = pair.client_events();
    assert!(
        matches!(
            events.as_slice(),
            [ClientEvent::ClockChanged {
                schema_changed: true,
                ..
            }]
        ),
        "{events:?}"
    );
    assert_eq!(pair.client.schema().map(|s| s.len()), Some(5));
    assert_eq!(pair.client.ticks(), [1, 0, 0, 0, 1]);

    // Diffs go on, of the new schema, with matching checksums.
    pair.source.tick(&[1, 0, 0, 0, 2]);
    assert!(matches!(
        pair.server.push(&pair.source.latest(), &pair.cache),
        CatchUp::Sent { .. }
    ));
    pair.send_down(ms(3));
    let events = pair.client_events();
    assert!(
        !events.iter().any(|e| matches!(e, ClientEvent::Resync)),
        "{events:?}"
    );
    assert_eq!(pair.client.ticks(), [1, 0, 0, 0, 2]);

    // The wait sent before the change is still answered, and a new state can be mutated.
    pair.server.handle_wait_result(id, wait, Ok(()));
    pair.client
        .mutate(
            Mutation::new(MutationKind::Add, vec![4], Args::new()),
            Some(1),
            Moment::ZERO,
        )
        .expect("a state of the new schema");
    pair.send_up(ms(4));
    pair.run_mutations(ms(4));
    pair.send_down(ms(4));
    let events = pair.client_events();
    assert!(
        events.iter().any(|e| matches!(
            e,
            ClientEvent::WaitEnded {
                pending: 9,
                result: Ok(())
            }
        )),
        "{events:?}"
    );
    assert!(
        events.iter().any(|e| matches!(
            e,
            ClientEvent::Answered {
                pending: 1,
                result: Ok(Outcome::Executed)
            }
        )),
        "{events:?}"
    );
    assert_eq!(pair.client.ticks(), [1, 0, 0, 0, 3]);
}

#[test]
fn a_request_of_the_old_schema_still_runs_and_its_reply_follows_the_new_schema() {
    let mut pair = Pair::connect(Acl::default(), "leaf");
    pair.client_events();
    grow(&mut pair, &[0, 0, 0, 0, 1]);
    // Sent before the client heard of the change: its positions still name the same states.
    pair.client
        .mutate(
            Mutation::new(MutationKind::Add, vec![0], Args::new()),
            Some(1),
            Moment::ZERO,
        )
        .expect("ready");
    pair.client
        .when_args(2, Args::new(), 2)
        .expect("registered");
    pair.send_up(ms(1));
    pair.run_mutations(ms(1));
    assert_eq!(pair.server.closed(), None);
    assert!(matches!(
        messages(pair.server.transmit()).as_slice(),
        [Message::SchemaChanged { .. }, Message::MutateReply(_)]
    ));
    pair.send_down(ms(1));
    assert_eq!(pair.client.ticks(), [1, 0, 0, 0, 1]);
    assert_eq!(pair.server.waits(), 1, "the wait was taken too");
}

#[test]
fn a_narrowed_view_stays_narrowed_after_the_schema_grows() {
    let acl = Acl {
        see: [("leaf".to_owned(), vec!["A".to_owned(), "D".to_owned()])].into(),
        ..Acl::default()
    };
    let mut pair = Pair::connect(acl, "leaf");
    pair.client_events();
    grow(&mut pair, &[1, 0, 0, 0, 1]);
    pair.server.catch_up(ms(1), &pair.source, &pair.cache);
    assert!(matches!(
        messages(pair.server.transmit()).as_slice(),
        [Message::SchemaChanged { snapshot, .. }] if snapshot.ticks == [1, 0, 0, 0, 0]
    ));
    pair.send_down(ms(1));
    // D is not seen until the client reconnects: its changes make no diff.
    pair.source.tick(&[1, 0, 0, 0, 2]);
    assert_eq!(
        pair.server.push(&pair.source.latest(), &pair.cache),
        CatchUp::Nothing
    );
    assert_eq!(pair.client.ticks(), [1, 0, 0, 0, 0]);
    // A wait on it is refused for the same reason.
    pair.client
        .when_args(4, Args::new(), 3)
        .expect("registered");
    pair.send_up(ms(2));
    pair.send_down(ms(2));
    assert!(pair.client_events().iter().any(|e| matches!(
        e,
        ClientEvent::WaitEnded { pending: 3, result: Err(WaitError::Refused(r)) } if r.contains("may not see state D")
    )));
}

#[test]
fn a_mirror_that_expects_a_schema_takes_one_grown_from_it() {
    let mut pair = Pair::new(Acl::default(), "leaf");
    grow(&mut pair, &[0, 0, 0, 0, 1]);
    pair.client = ClientSession::new(client_config("leaf"), Some(schema()));
    pair.client.connect(ms(0));
    pair.send_up(ms(0));
    pair.answer_hello(ms(0));
    pair.send_down(ms(0));
    assert_eq!(pair.client.phase(), Phase::Ready);
    assert_eq!(pair.client.schema().map(|s| s.len()), Some(5));

    // Not one that moved its states.
    let mut pair = Pair::new(Acl::default(), "leaf");
    pair.source.schema = Arc::new(
        Schema::builder()
            .state(StateDef::new("B").multi())
            .state(StateDef::new("A").multi())
            .state(StateDef::new("C"))
            .build()
            .expect("schema"),
    );
    pair.source.clock.schema = pair.source.schema.hash();
    pair.client = ClientSession::new(client_config("leaf"), Some(schema()));
    pair.client.connect(ms(0));
    pair.send_up(ms(0));
    pair.answer_hello(ms(0));
    pair.send_down(ms(0));
    assert!(pair.client_events().iter().any(|e| matches!(
        e,
        ClientEvent::HandshakeFailed(HandshakeError::SchemaMismatch { .. })
    )));
}
