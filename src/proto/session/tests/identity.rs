//! What a welcome says of the source besides its clock: its groups (in its schema), its parent
//! id and its tags; and a schema whose groups change, passed on like one that grows.

use super::*;
use crate::machine::WaitError;

/// The test schema with a group over `C` and `A`.
fn grouped() -> Arc<Schema> {
    Arc::new(
        Schema::clone(&schema())
            .with_group("Pair", &["C", "A"])
            .expect("known states"),
    )
}

#[test]
fn the_welcome_carries_the_sources_groups_parent_id_and_tags() {
    let mut pair = Pair::new(Acl::default(), "leaf");
    pair.source.schema = grouped();
    pair.source.clock.schema = pair.source.schema.hash();
    pair.source.parent_id = Some("owner".into());
    pair.source.tags = vec!["worker".into(), "eu".into()];
    assert_eq!(pair.client.parent_id(), None);
    assert!(pair.client.tags().is_empty());
    pair.client.connect(ms(0));
    pair.send_up(ms(0));
    pair.answer_hello(ms(0));
    pair.send_down(ms(0));
    let schema = pair.client.schema().expect("welcomed").clone();
    assert_eq!(schema.group("Pair"), Some(&[2, 0][..]));
    assert_eq!(schema.hash(), pair.source.schema.hash());
    assert_eq!(pair.client.parent_id(), Some("owner"));
    assert_eq!(pair.client.tags(), ["worker", "eu"]);

    // They stay while disconnected, and the next welcome replaces them.
    pair.client.handle_lost("cut".into());
    assert_eq!(pair.client.tags(), ["worker", "eu"]);
    pair.source.parent_id = None;
    pair.source.tags = vec!["moved".into()];
    pair.server = ServerSession::new(
        server_config(Acl::default()),
        pair.stats.clone(),
        None,
        ms(1),
    );
    pair.client.connect(ms(1));
    pair.send_up(ms(1));
    pair.answer_hello(ms(1));
    pair.send_down(ms(1));
    assert_eq!(pair.client.parent_id(), None);
    assert_eq!(pair.client.tags(), ["moved"]);
}

/// Groups are in the schema's hash, so a mirror that expects the same states with other
/// groups (or none) is sent the source's schema and takes its groups; one whose schema is the
/// source's, groups and all, is sent none.
#[test]
fn a_mirror_with_the_states_but_not_the_groups_is_sent_the_schema() {
    for (expected, sent) in [(schema(), true), (grouped(), false)] {
        let mut pair = Pair::new(Acl::default(), "leaf");
        pair.source.schema = grouped();
        pair.source.clock.schema = pair.source.schema.hash();
        pair.client = ClientSession::new(client_config("leaf"), Some(expected));
        pair.client.connect(ms(0));
        pair.send_up(ms(0));
        pair.answer_hello(ms(0));
        match messages(pair.server.transmit()).as_slice() {
            [Message::Welcome(welcome)] => {
                assert_eq!(welcome.schema.is_some(), sent);
                if let Some(def) = &welcome.schema {
                    assert_eq!(def.groups, pair.source.schema.def().groups);
                }
            }
            other => panic!("expected a welcome, got {other:?}"),
        }
        pair.send_down(ms(0));
        assert_eq!(pair.client.phase(), Phase::Ready);
        let schema = pair.client.schema().expect("a schema");
        assert_eq!(schema.group("Pair"), Some(&[2, 0][..]), "sent: {sent}");
    }
}

/// A source whose schema keeps its states but changes its groups (a served mirror whose own
/// source came back with other groups) passes the schema on without ending the session, and
/// the client's waits stay.
#[test]
fn a_schema_whose_groups_change_is_passed_on_and_the_waits_stay() {
    let mut pair = Pair::connect(Acl::default(), "leaf");
    pair.client_events();
    assert_eq!(pair.client.schema().and_then(|s| s.group("Pair")), None);
    pair.client
        .when_args(1, Args::new().with("k", 1), 9)
        .expect("registered");
    pair.send_up(ms(1));
    assert!(matches!(
        pair.server.poll_event(),
        Some(ServerEvent::WhenArgs { .. })
    ));

    pair.source.schema = grouped();
    pair.source.clock.schema = pair.source.schema.hash();
    pair.source.tick(&[1, 0, 0]);
    assert_eq!(
        pair.server.push(&pair.source.latest(), &pair.cache),
        CatchUp::Writer
    );
    pair.server.catch_up(ms(2), &pair.source, &pair.cache);
    assert_eq!(pair.server.closed(), None);
    assert!(matches!(
        messages(pair.server.transmit()).as_slice(),
        [Message::SchemaChanged { schema, snapshot }]
            if schema.groups.len() == 1 && snapshot.ticks == [1, 0, 0, 0]
    ));
    pair.send_down(ms(2));
    let events = pair.client_events();
    assert!(
        !events.iter().any(|e| matches!(
            e,
            ClientEvent::WaitEnded {
                result: Err(WaitError::Disposed),
                ..
            }
        )),
        "{events:?}"
    );
    let schema = pair.client.schema().expect("a schema");
    assert_eq!(schema.group("Pair"), Some(&[2, 0][..]));
    assert_eq!(pair.client.ticks(), [1, 0, 0, 0]);

    // The session goes on: diffs of the same positions, checked.
    pair.source.tick(&[1, 2, 0]);
    assert!(matches!(
        pair.server.push(&pair.source.latest(), &pair.cache),
        CatchUp::Sent { .. }
    ));
    pair.send_down(ms(3));
    assert!(
        !pair
            .client_events()
            .iter()
            .any(|e| matches!(e, ClientEvent::Resync))
    );
    assert_eq!(pair.client.ticks(), [1, 2, 0, 0]);
}
