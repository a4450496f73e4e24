//! Remote waits and last-error requests between the two sessions: answered once, withdrawn,
//! refused by the access rules and the limit, kept across a reconnect, ended by a schema that
//! moves positions.

use super::*;
use crate::machine::WaitError;
use crate::proto::message::{ErrResult, WaitResult, WhenArgsRequest};

/// A pair whose server allows `max_remote_waits` waits per client.
fn pair_with_limit(max_remote_waits: usize) -> Pair {
    let mut pair = Pair::new(Acl::default(), "leaf");
    let config = ServerSessionConfig {
        limits: Limits {
            max_remote_waits,
            ..server_config(Acl::default()).limits.clone()
        },
        ..ServerSessionConfig::default()
    };
    pair.server = ServerSession::new(Arc::new(config), pair.stats.clone(), None, ms(0));
    pair.client.connect(ms(0));
    pair.send_up(ms(0));
    pair.answer_hello(ms(0));
    pair.send_down(ms(0));
    pair.client_events();
    pair
}

/// The wait the server handed out next: (id, key, state, args).
fn handed_out(server: &mut ServerSession) -> (u64, u64, String, Args) {
    match server.poll_event() {
        Some(ServerEvent::WhenArgs {
            id,
            wait,
            state,
            args,
        }) => (id, wait, state, args),
        other => panic!("expected a wait, got {other:?}"),
    }
}

/// The ends of remote waits among the client's events.
fn ended(events: &[ClientEvent<u32>]) -> Vec<(u32, Result<(), WaitError>)> {
    events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::WaitEnded { pending, result } => Some((*pending, result.clone())),
            _ => None,
        })
        .collect()
}

fn frame(message: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(&FrameConfig::default(), message, &mut out);
    out
}

#[test]
fn a_remote_wait_is_handed_out_and_answered_once() {
    let mut pair = Pair::connect(Acl::default(), "leaf");
    pair.client_events();
    let args = Args::new().with("n", 1);
    let id = pair
        .client
        .when_args(1, args.clone(), 7)
        .expect("registered");
    pair.send_up(ms(1));
    let (got, wait, state, got_args) = handed_out(&mut pair.server);
    assert_eq!((got, state.as_str(), got_args), (id, "B", args));
    assert_eq!(pair.server.waits(), 1);

    // A wait does not hold up what the client sends after it, unlike a mutation.
    pair.client
        .mutate(
            Mutation::new(MutationKind::Add, vec![0], Args::new()),
            Some(1),
            Moment::ZERO,
        )
        .expect("ready");
    pair.send_up(ms(1));
    assert!(matches!(
        pair.server.poll_event(),
        Some(ServerEvent::Mutate { .. })
    ));

    pair.server.handle_wait_result(id, wait, Ok(()));
    pair.send_down(ms(2));
    assert_eq!(ended(&pair.client_events()), [(7, Ok(()))]);
    assert_eq!((pair.client.waits(), pair.server.waits()), (0, 0));
    // A second result for the same wait says nothing.
    pair.server.handle_wait_result(id, wait, Ok(()));
    assert!(pair.server.transmit().is_empty());
}

#[test]
fn a_withdrawn_wait_ends_upstream_and_keeps_its_id_until_confirmed() {
    let mut pair = Pair::connect(Acl::default(), "leaf");
    pair.client_events();
    let id = pair
        .client
        .when_args(0, Args::new(), 1)
        .expect("registered");
    pair.send_up(ms(1));
    let (_, wait, _, _) = handed_out(&mut pair.server);

    pair.client.cancel_wait(id);
    assert_eq!(
        pair.client.waits(),
        1,
        "the id stays taken until the answer"
    );
    let other = pair
        .client
        .when_args(0, Args::new(), 2)
        .expect("registered");
    assert_ne!(
        other, id,
        "a withdrawn wait's id is not reused before its answer"
    );
    pair.send_up(ms(1));
    assert_eq!(
        pair.server.poll_event(),
        Some(ServerEvent::CancelWait { wait })
    );
    let (second, ..) = handed_out(&mut pair.server);
    assert_eq!(second, other);
    assert!(matches!(
        messages(pair.server.transmit()).as_slice(),
        [Message::WhenArgsDone { id: done, result: WaitResult::Canceled }] if *done == id
    ));
    // The driver's result of the withdrawn wait comes late: nothing more is sent.
    pair.server.handle_wait_result(id, wait, Ok(()));
    assert_eq!(messages(pair.server.transmit()).len(), 1);
    pair.send_down(ms(2));
    assert!(
        ended(&pair.client_events()).is_empty(),
        "nobody waits for it"
    );
    assert_eq!((pair.client.waits(), pair.server.waits()), (1, 1));

    // Withdrawn before it went out, a wait is gone at once.
    pair.client.handle_lost("gone".into());
    let unsent = pair
        .client
        .when_args(0, Args::new(), 3)
        .expect("registered");
    pair.client.cancel_wait(unsent);
    assert_eq!(pair.client.waits(), 1, "only the other wait is left");
}

#[test]
fn the_access_rules_refuse_waits_and_errors_the_client_may_not_see() {
    let acl = Acl {
        see: [("leaf".to_owned(), vec!["A".to_owned()])].into(),
        ..Acl::default()
    };
    let mut pair = Pair::connect(acl, "leaf");
    pair.client_events();
    pair.client
        .when_args(1, Args::new(), 1)
        .expect("registered");
    pair.client.err(2).expect("ready");
    pair.send_up(ms(1));
    assert!(pair.server.poll_event().is_none(), "nothing to run");
    assert_eq!(pair.stats.refusals.load(Ordering::Relaxed), 2);
    pair.send_down(ms(1));
    let events = pair.client_events();
    assert!(
        matches!(ended(&events).as_slice(), [(1, Err(WaitError::Refused(r)))] if r.contains("may not see state B")),
        "{events:?}"
    );
    assert!(
        events.iter().any(|e| matches!(e, ClientEvent::ErrAnswered { pending: 2, result: Err(MutationError::Refused(r)) } if r.contains("may not see Exception"))),
        "{events:?}"
    );
}

#[test]
fn waits_past_the_limit_are_refused_and_a_client_that_goes_on_is_dropped() {
    let mut pair = pair_with_limit(2);
    for n in 0..3 {
        pair.client
            .when_args(0, Args::new(), n)
            .expect("registered");
    }
    pair.send_up(ms(1));
    let (first, wait, ..) = handed_out(&mut pair.server);
    handed_out(&mut pair.server);
    assert!(pair.server.poll_event().is_none());
    pair.send_down(ms(1));
    assert!(matches!(
        ended(&pair.client_events()).as_slice(),
        [(2, Err(WaitError::Refused(r)))] if r.contains("2 waits of this client are pending")
    ));
    assert_eq!(pair.server.closed(), None, "a refusal is not a disconnect");

    // A wait that ends makes room again.
    pair.server.handle_wait_result(first, wait, Ok(()));
    pair.client
        .when_args(0, Args::new(), 10)
        .expect("registered");
    pair.send_up(ms(2));
    handed_out(&mut pair.server);
    pair.send_down(ms(2));
    pair.client_events();

    // A client that asks as many times again as the limit, with none of its waits ending,
    // is taken as hostile.
    for n in 0..3 {
        pair.client
            .when_args(0, Args::new(), 20 + n)
            .expect("registered");
    }
    pair.send_up(ms(3));
    assert!(
        matches!(pair.server.closed(), Some(CloseReason::Protocol(m)) if m.contains("refused for the limit of 2")),
        "{:?}",
        pair.server.closed()
    );
    assert!(matches!(
        messages(pair.server.transmit()).last(),
        Some(Message::Error { .. })
    ));
}

#[test]
fn a_wait_outlives_a_link_flap_and_is_sent_again() {
    let mut pair = Pair::connect(Acl::default(), "leaf");
    pair.client_events();
    let id = pair
        .client
        .when_args(1, Args::new().with("k", "v"), 5)
        .expect("registered");
    pair.send_up(ms(1));
    handed_out(&mut pair.server);
    pair.client.handle_lost("gone".into());
    assert!(ended(&pair.client_events()).is_empty(), "the wait lives on");
    assert_eq!(pair.client.waits(), 1);
    // Registered while disconnected: sent with the others.
    let later = pair
        .client
        .when_args(0, Args::new(), 6)
        .expect("registered");

    pair.server = ServerSession::new(
        server_config(Acl::default()),
        pair.stats.clone(),
        None,
        ms(10),
    );
    pair.client.connect(ms(10));
    pair.send_up(ms(10));
    pair.answer_hello(ms(10));
    pair.send_down(ms(10));
    pair.send_up(ms(11));
    let (again, wait, state, args) = handed_out(&mut pair.server);
    assert_eq!(
        (again, state.as_str(), args),
        (id, "B", Args::new().with("k", "v"))
    );
    let (second, ..) = handed_out(&mut pair.server);
    assert_eq!(second, later);
    pair.server.handle_wait_result(again, wait, Ok(()));
    pair.send_down(ms(12));
    assert_eq!(ended(&pair.client_events()), [(5, Ok(()))]);
}

#[test]
fn a_schema_that_moves_positions_ends_the_waits_one_that_grows_keeps_them() {
    let mut pair = Pair::connect(Acl::default(), "leaf");
    pair.client_events();
    pair.client
        .when_args(1, Args::new(), 1)
        .expect("registered");
    pair.client.handle_lost("gone".into());
    let reconnect = |pair: &mut Pair, schema: Schema| {
        pair.source.schema = Arc::new(schema);
        pair.source.clock.schema = pair.source.schema.hash();
        pair.source.clock.ticks = Arc::from(vec![0; pair.source.schema.len()]);
        pair.server = ServerSession::new(
            server_config(Acl::default()),
            pair.stats.clone(),
            None,
            ms(10),
        );
        pair.client.connect(ms(10));
        pair.send_up(ms(10));
        pair.answer_hello(ms(10));
        pair.send_down(ms(10));
        pair.client_events()
    };

    // A, B, C and Exception keep their positions; D comes after them.
    let grown = Schema::builder()
        .state(StateDef::new("A").multi())
        .state(StateDef::new("B").multi())
        .state(StateDef::new("C"))
        .state(StateDef::new(crate::machine::EXCEPTION).multi())
        .state(StateDef::new("D"))
        .build()
        .expect("schema");
    assert!(ended(&reconnect(&mut pair, grown)).is_empty());
    pair.send_up(ms(11));
    assert_eq!(handed_out(&mut pair.server).2, "B");
    pair.client.handle_lost("gone".into());

    // B's position names another state now.
    let moved = Schema::builder()
        .state(StateDef::new("B"))
        .state(StateDef::new("A"))
        .build()
        .expect("schema");
    let events = reconnect(&mut pair, moved);
    assert_eq!(ended(&events), [(1, Err(WaitError::Disposed))]);
    assert_eq!(pair.client.waits(), 0);
}

#[test]
fn the_last_error_is_answered_in_order_and_fails_with_the_connection() {
    let mut pair = Pair::connect(Acl::default(), "leaf");
    pair.client_events();
    pair.client.err(4).expect("ready");
    pair.client.sync(5).expect("ready");
    pair.send_up(ms(1));
    let Some(ServerEvent::Err { id }) = pair.server.poll_event() else {
        panic!("expected an error request");
    };
    assert!(
        pair.server.transmit().is_empty(),
        "the sync waits for the answer before it"
    );
    pair.server
        .handle_err_result(id, Ok(Some("boom".into())), ms(1), &pair.source);
    assert!(matches!(
        messages(pair.server.transmit()).as_slice(),
        [
            Message::ErrReply { result: ErrResult::Error(e), .. },
            Message::Snapshot { .. }
        ] if e == "boom"
    ));
    pair.send_down(ms(1));
    let answers: Vec<String> = pair
        .client_events()
        .into_iter()
        .filter_map(|e| match e {
            ClientEvent::ErrAnswered { pending, result } => Some(format!("{pending} {result:?}")),
            ClientEvent::Answered { pending, result } => Some(format!("{pending} {result:?}")),
            _ => None,
        })
        .collect();
    assert_eq!(answers, ["4 Ok(Some(\"boom\"))", "5 Ok(Executed)"]);

    pair.client.err(6).expect("ready");
    pair.client.handle_lost("gone".into());
    assert!(pair.client_events().iter().any(|e| matches!(
        e,
        ClientEvent::ErrAnswered {
            pending: 6,
            result: Err(MutationError::Disconnected)
        }
    )));
    assert_eq!(pair.client.err(7), Err(MutationError::Disconnected));
}

#[test]
fn a_wait_without_an_id_or_with_a_taken_one_breaks_the_protocol() {
    let wait = |id| {
        frame(&Message::WhenArgs(WhenArgsRequest {
            id,
            state: 0,
            args: Args::new(),
        }))
    };
    let mut pair = Pair::connect(Acl::default(), "leaf");
    pair.server.handle_bytes(&wait(0), ms(1), &pair.source);
    assert!(
        matches!(pair.server.closed(), Some(CloseReason::Protocol(m)) if m.contains("id 0")),
        "{:?}",
        pair.server.closed()
    );

    let mut pair = Pair::connect(Acl::default(), "leaf");
    let twice = [wait(3), wait(3)].concat();
    pair.server.handle_bytes(&twice, ms(1), &pair.source);
    assert!(
        matches!(pair.server.closed(), Some(CloseReason::Protocol(m)) if m.contains("already waiting")),
        "{:?}",
        pair.server.closed()
    );
}

#[test]
fn closing_the_mirror_ends_its_waits_as_disposed() {
    let mut pair = Pair::connect(Acl::default(), "leaf");
    pair.client_events();
    pair.client
        .when_args(2, Args::new(), 1)
        .expect("registered");
    pair.client.close();
    assert_eq!(
        ended(&pair.client_events()),
        [(1, Err(WaitError::Disposed))]
    );
    assert_eq!(
        pair.client.when_args(2, Args::new(), 2),
        Err(WaitError::Disposed)
    );
}

#[test]
fn an_answer_of_the_wrong_kind_ends_the_session() {
    let mut pair = Pair::connect(Acl::default(), "leaf");
    pair.client_events();
    pair.client
        .mutate(
            Mutation::new(MutationKind::Add, vec![0], Args::new()),
            Some(1),
            Moment::ZERO,
        )
        .expect("ready");
    let reply = frame(&Message::ErrReply {
        id: 1,
        result: ErrResult::NoError,
    });
    pair.client.handle_bytes(&reply, ms(1));
    let events = pair.client_events();
    assert!(
        matches!(
            events.as_slice(),
            [
                ClientEvent::Answered { pending: 1, result: Err(MutationError::Disconnected) },
                ClientEvent::Closed(reason)
            ] if reason.contains("ErrReply")
        ),
        "{events:?}"
    );
}
