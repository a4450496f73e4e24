//! A retrying client session: mutations made while the link is down wait and go out in order
//! when it is back, one in flight when its connection ended goes out again with the same key,
//! the deadline and the bound fail them with reasons, and a forwarded key is kept.

use std::time::Duration;

use super::*;
use crate::machine::MutationKey;
use crate::proto::session::RetryPolicy;

fn retrying(deadline_ms: u64, max_waiting: usize) -> Pair {
    let config = ClientConfig {
        retry: RetryPolicy {
            deadline: Duration::from_millis(deadline_ms),
            max_waiting,
        },
        key_epoch: 42,
        ..client_config("leaf")
    };
    let mut pair = Pair::with_client(Acl::default(), config);
    pair.client.connect(ms(0));
    pair.send_up(ms(0));
    pair.answer_hello(ms(0));
    pair.send_down(ms(0));
    pair.client_events();
    pair
}

fn add(state: usize) -> Mutation {
    Mutation::new(MutationKind::Add, vec![state], Args::new())
}

/// The keys (their sequence numbers) and states of the mutations the server hands out,
/// answered as executed.
fn run(pair: &mut Pair, now: Moment) -> Vec<(Option<u64>, Vec<usize>)> {
    let mut seen = Vec::new();
    while let Some(event) = pair.server.poll_event() {
        if let ServerEvent::Mutate { id, mutation } = event {
            assert_eq!(
                mutation
                    .key
                    .as_ref()
                    .map(|k| (k.origin.as_str(), k.epoch))
                    .unwrap_or(("leaf", 42)),
                ("leaf", 42)
            );
            seen.push((
                mutation.key.as_ref().map(|k| k.seq),
                mutation.states.clone(),
            ));
            pair.server
                .handle_mutation_result(id, Ok(Outcome::Executed), now, &pair.source);
        }
    }
    seen
}

fn answered(pair: &mut Pair) -> Vec<(u32, Result<Outcome, MutationError>)> {
    pair.client_events()
        .into_iter()
        .filter_map(|e| match e {
            ClientEvent::Answered { pending, result } => Some((pending, result)),
            _ => None,
        })
        .collect()
}

#[test]
fn mutations_made_while_the_link_is_down_go_out_in_order_when_it_is_back() {
    let mut pair = retrying(5_000, 16);
    pair.client.handle_lost("gone".into());
    pair.client_events();
    for (n, state) in [(1, 0), (2, 1), (3, 0)] {
        pair.client
            .mutate(add(state), Some(n), ms(10))
            .expect("waits for the link");
    }
    assert!(
        pair.client.transmit().is_empty(),
        "nothing goes out while down"
    );
    assert_eq!(pair.client.waiting_mutations(), 3);
    assert_eq!(
        pair.client.poll_timeout(),
        Some(ms(5_010)),
        "the first deadline"
    );

    pair.reconnect(ms(20));
    pair.send_up(ms(20));
    assert_eq!(
        run(&mut pair, ms(21)),
        [(Some(1), vec![0]), (Some(2), vec![1]), (Some(3), vec![0])]
    );
    pair.send_down(ms(21));
    let answers = answered(&mut pair);
    assert_eq!(
        answers,
        [
            (1, Ok(Outcome::Executed)),
            (2, Ok(Outcome::Executed)),
            (3, Ok(Outcome::Executed))
        ]
    );
    let stats = pair.client.retry_stats();
    assert_eq!((stats.delayed, stats.retried, stats.expired), (3, 0, 0));
}

#[test]
fn a_mutation_in_flight_when_the_link_breaks_goes_out_again_with_the_same_key() {
    let mut pair = retrying(5_000, 16);
    pair.client.mutate(add(0), Some(1), ms(1)).expect("sent");
    pair.send_up(ms(1));
    let first: Vec<MutationKey> = std::iter::from_fn(|| pair.server.poll_event())
        .filter_map(|e| match e {
            ServerEvent::Mutate { mutation, .. } => mutation.key,
            _ => None,
        })
        .collect();
    assert_eq!(first.len(), 1);
    // The connection ends before the reply: the caller is not answered, the mutation waits.
    pair.client.handle_lost("reset".into());
    assert!(answered(&mut pair).is_empty());
    assert_eq!(pair.client.waiting_mutations(), 1);
    // A mutation made meanwhile goes after it.
    pair.client.mutate(add(1), Some(2), ms(2)).expect("waits");

    pair.reconnect(ms(30));
    pair.send_up(ms(30));
    let again = run(&mut pair, ms(31));
    assert_eq!(again, [(Some(first[0].seq), vec![0]), (Some(2), vec![1])]);
    pair.send_down(ms(31));
    assert_eq!(answered(&mut pair).len(), 2);
    let stats = pair.client.retry_stats();
    assert_eq!((stats.retried, stats.delayed), (1, 1));
}

#[test]
fn a_mutation_still_waiting_at_its_deadline_fails_as_unreachable() {
    let mut pair = retrying(5_000, 16);
    pair.client.handle_lost("gone".into());
    pair.client_events();
    pair.client.mutate(add(0), Some(7), ms(100)).expect("waits");
    pair.client.handle_timeout(ms(5_099));
    assert!(answered(&mut pair).is_empty(), "not yet");
    pair.client.handle_timeout(ms(5_100));
    let answers = answered(&mut pair);
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].0, 7);
    let Err(error) = &answers[0].1 else {
        panic!("expected a failure: {answers:?}")
    };
    assert_eq!(*error, MutationError::Unreachable(Duration::from_secs(5)));
    assert!(
        error.to_string().contains("could not be reached within 5s"),
        "{error}"
    );
    assert_eq!(pair.client.retry_stats().expired, 1);
    assert_eq!(pair.client.poll_timeout(), None, "nothing left to wait for");
}

#[test]
fn past_the_bound_a_mutation_fails_at_once_and_closing_fails_the_waiting_ones() {
    let mut pair = retrying(5_000, 2);
    pair.client.handle_lost("gone".into());
    pair.client_events();
    pair.client.mutate(add(0), Some(1), ms(1)).expect("waits");
    pair.client.mutate(add(0), Some(2), ms(1)).expect("waits");
    assert_eq!(
        pair.client.mutate(add(0), Some(3), ms(1)),
        Err(MutationError::RetryQueueFull { waiting: 2 })
    );
    pair.client.close();
    let answers = answered(&mut pair);
    assert_eq!(
        answers,
        [
            (1, Err(MutationError::Disposed)),
            (2, Err(MutationError::Disposed))
        ]
    );
}

#[test]
fn a_forwarded_mutation_keeps_its_first_mirrors_key() {
    let mut pair = retrying(5_000, 16);
    let key = MutationKey {
        origin: "far-leaf".into(),
        epoch: 9,
        seq: 77,
    };
    pair.client
        .mutate(add(0).with_key(Some(key.clone())), Some(1), ms(1))
        .expect("sent");
    pair.client.mutate(add(1), Some(2), ms(1)).expect("sent");
    pair.send_up(ms(1));
    let mut keys: Vec<MutationKey> = Vec::new();
    while let Some(event) = pair.server.poll_event() {
        if let ServerEvent::Mutate { id, mutation } = event {
            pair.server
                .handle_mutation_result(id, Ok(Outcome::Executed), ms(1), &pair.source);
            keys.extend(mutation.key);
        }
    }
    assert_eq!(keys[0], key, "kept as it came");
    assert_eq!(
        (keys[1].origin.as_str(), keys[1].seq),
        ("leaf", 1),
        "its own numbering untouched"
    );
}

#[test]
fn without_retries_a_mutation_fails_at_once_and_carries_no_key() {
    let mut pair = Pair::connect(Acl::default(), "leaf");
    pair.client.mutate(add(0), Some(1), ms(1)).expect("sent");
    pair.send_up(ms(1));
    let keyed = std::iter::from_fn(|| pair.server.poll_event())
        .any(|e| matches!(e, ServerEvent::Mutate { mutation, .. } if mutation.key.is_some()));
    assert!(!keyed);
    pair.client.handle_lost("gone".into());
    assert!(matches!(
        answered(&mut pair)[..],
        [(1, Err(MutationError::Disconnected))]
    ));
    assert_eq!(
        pair.client.mutate(add(0), Some(2), ms(2)),
        Err(MutationError::Disconnected)
    );
}

/// Mutations hold state positions. A source that comes back with a schema that moved its
/// states would read them as other states: none of the waiting mutations is sent, each fails
/// and says whether it may have run. A schema that only grew keeps every position: they go out.
#[test]
fn waiting_mutations_fail_when_the_source_comes_back_with_its_states_moved() {
    let mut pair = retrying(5_000, 16);
    pair.client.mutate(add(0), Some(1), ms(1)).expect("sent");
    pair.send_up(ms(1));
    pair.client.handle_lost("reset".into());
    pair.client.mutate(add(1), Some(2), ms(2)).expect("waits");
    assert_eq!(pair.client.waiting_mutations(), 2);
    let reordered = Schema::builder()
        .state(StateDef::new("B"))
        .state(StateDef::new("A"))
        .build()
        .expect("valid");
    assert!(!reordered.extends(&pair.source.schema));
    pair.source.schema = Arc::new(reordered);
    pair.source.clock.schema = pair.source.schema.hash();

    pair.reconnect(ms(30));
    pair.send_up(ms(30));
    assert!(
        run(&mut pair, ms(31)).is_empty(),
        "no old position reaches the source"
    );
    let answers = answered(&mut pair);
    assert_eq!(
        answers,
        [
            (1, Err(MutationError::SchemaMoved { sent_before: true })),
            (2, Err(MutationError::SchemaMoved { sent_before: false })),
        ]
    );
    let Err(error) = &answers[0].1 else {
        unreachable!()
    };
    assert!(error.to_string().contains("may have run"), "{error}");
    assert_eq!(pair.client.waiting_mutations(), 0);
}

#[test]
fn waiting_mutations_go_out_when_the_source_comes_back_with_its_schema_grown() {
    let mut pair = retrying(5_000, 16);
    pair.client.handle_lost("gone".into());
    pair.client.mutate(add(1), Some(1), ms(2)).expect("waits");
    let mut def = pair.source.schema.def().clone();
    def.states.push(StateDef::new("Later"));
    let grown = Schema::new(def).expect("valid");
    assert!(grown.extends(&pair.source.schema));
    pair.source.schema = Arc::new(grown);
    pair.source.clock.schema = pair.source.schema.hash();
    pair.source.clock.ticks = Arc::from(vec![0; pair.source.schema.len()]);

    pair.reconnect(ms(30));
    pair.send_up(ms(30));
    assert_eq!(run(&mut pair, ms(31)), [(Some(1), vec![1])]);
}
