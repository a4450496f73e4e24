//! The server's handshake decision: from a client's hello and what the server offers, to a
//! welcome with the options granted, or a refusal a person can act on. Pure: the driver looks
//! up the source and takes the snapshot; this decides.

use tracing::warn;

use super::acl::Acl;
use super::diff::Tracked;
use super::limits::{MAX_NAME_LEN, MAX_TAGS};
use super::message::{Granted, Hello, PROTOCOL_VERSION, Refusal, RefusalKind, Snapshot, Welcome};
use crate::machine::Schema;

/// State names to sorted positions; names the schema lacks are skipped (they are validated
/// where the ACL is configured).
fn positions(schema: &Schema, names: &[String]) -> Vec<u32> {
    let mut out: Vec<u32> = names
        .iter()
        .filter_map(|n| schema.index(n))
        .map(|i| i as u32)
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// What the server offers for the source the client asked for.
#[derive(Debug)]
pub struct Offer<'a> {
    /// The source's schema.
    pub schema: &'a Schema,
    /// The source's id and its upstream sources' ids, nearest first.
    pub ancestry: &'a [String],
    /// The source's clock now.
    pub snapshot: Snapshot,
    /// The source's parent id (Go's `ParentId`).
    pub parent_id: Option<String>,
    /// The source's tags (Go's `Tags`).
    pub tags: Vec<String>,
}

/// An accepted handshake: what to send, and the connection's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    /// The `Welcome` to send.
    pub welcome: Welcome,
    /// The states the connection tracks (granted from the hello's `track`).
    pub tracked: Tracked,
    /// Whether the connection compresses its frames.
    pub compression: bool,
    /// Positions the client may mutate; `None` for all.
    pub mutable: Option<Vec<u32>>,
}

fn refuse(kind: RefusalKind, reason: String) -> Refusal {
    Refusal { kind, reason }
}

/// Decides a handshake under the server's access rules; compression is granted when the client
/// asks and `compression_offered`. The snapshot in the welcome is masked to the tracked states.
pub fn decide(
    hello: &Hello,
    offer: Offer<'_>,
    acl: &Acl,
    compression_offered: bool,
) -> Result<Accepted, Refusal> {
    if hello.version != PROTOCOL_VERSION {
        return Err(refuse(
            RefusalKind::Version,
            format!(
                "protocol version {} is not supported; this server speaks version {PROTOCOL_VERSION}: upgrade the older side",
                hello.version
            ),
        ));
    }
    super::acl::admit(acl, &hello.client_id, hello.token.as_deref())?;
    if let Some(pos) = offer.ancestry.iter().position(|id| *id == hello.client_id) {
        let what = if pos == 0 {
            "itself"
        } else {
            "one of its descendants"
        };
        return Err(refuse(
            RefusalKind::Loop,
            format!(
                "client {:?} would mirror {what} (source chain {}); a node never connects to itself or its descendants",
                hello.client_id,
                offer.ancestry.join(" <- ")
            ),
        ));
    }
    let tracked = match &hello.options.track {
        None => Tracked::All,
        Some(names) => {
            let mut positions = Vec::with_capacity(names.len());
            for name in names {
                let Some(i) = offer.schema.index(name) else {
                    return Err(refuse(
                        RefusalKind::BadHello,
                        format!(
                            "cannot track unknown state {name:?}; the source's states are {}",
                            offer.schema.names().collect::<Vec<_>>().join(", ")
                        ),
                    ));
                };
                positions.push(i as u32);
            }
            Tracked::from_granted(Some(&positions))
        }
    };
    // What the client may see narrows what it asked to track.
    let tracked = match (tracked, acl.seen_by(&hello.client_id)) {
        (tracked, None) => tracked,
        (Tracked::All, Some(see)) => Tracked::Only(positions(offer.schema, see)),
        (Tracked::Only(wanted), Some(see)) => {
            let allowed = positions(offer.schema, see);
            Tracked::Only(wanted.into_iter().filter(|s| allowed.contains(s)).collect())
        }
    };
    let mutable = acl
        .mutable_by(&hello.client_id)
        .map(|names| positions(offer.schema, names));
    let compression = hello.options.compression && compression_offered;
    let schema = (hello.schema_hash != offer.schema.hash()).then(|| offer.schema.def().clone());
    let snapshot = Snapshot {
        ticks: tracked.mask(&offer.snapshot.ticks),
        queue_tick: offer.snapshot.queue_tick,
    };
    let granted = Granted {
        compression,
        tracked: match &tracked {
            Tracked::All => None,
            Tracked::Only(states) => Some(states.clone()),
        },
        mutable: mutable.clone(),
    };
    let (parent_id, tags) = sendable_identity(offer.parent_id, offer.tags);
    Ok(Accepted {
        welcome: Welcome {
            ancestry: offer.ancestry.to_vec(),
            schema,
            snapshot,
            granted,
            parent_id,
            tags,
        },
        tracked,
        compression,
        mutable,
    })
}

/// The parent id and tags as the protocol can carry them: a machine's own may be longer or more
/// than a peer decodes ([`MAX_NAME_LEN`], [`MAX_TAGS`]), and a welcome past a limit would fail
/// every client. What does not fit is left out, and said so.
fn sendable_identity(
    parent_id: Option<String>,
    tags: Vec<String>,
) -> (Option<String>, Vec<String>) {
    let parent_id = parent_id.filter(|id| {
        let fits = id.len() <= MAX_NAME_LEN;
        if !fits {
            warn!(
                bytes = id.len(),
                limit = MAX_NAME_LEN,
                "the source's parent id is too long for the protocol; not sent"
            );
        }
        fits
    });
    let count = tags.len();
    let sent: Vec<String> = tags
        .into_iter()
        .filter(|tag| tag.len() <= MAX_NAME_LEN)
        .take(MAX_TAGS)
        .collect();
    if sent.len() < count {
        warn!(
            tags = count,
            sent = sent.len(),
            limit = MAX_TAGS,
            name_limit = MAX_NAME_LEN,
            "the source has tags the protocol cannot carry (too many, or too long); not all sent"
        );
    }
    (parent_id, sent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::message::WantedOptions;

    /// The sgp benchmark's schema, as shipped: six states and `Exception`.
    fn sgp_schema() -> Schema {
        let def = toml::from_str(include_str!("../../topologies/schemas/sgp.toml"))
            .expect("the shipped schema parses");
        Schema::new(def).expect("the shipped schema is valid")
    }

    fn hello() -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            client_id: "leaf".into(),
            source: String::new(),
            schema_hash: 0,
            options: WantedOptions::default(),
            token: None,
        }
    }

    fn offer(schema: &Schema) -> Offer<'_> {
        Offer {
            schema,
            ancestry: &[],
            snapshot: Snapshot {
                ticks: vec![1, 2, 0, 0, 0, 3, 0],
                queue_tick: 4,
            },
            parent_id: None,
            tags: Vec::new(),
        }
    }

    #[test]
    fn the_welcome_carries_the_parent_id_and_tags_within_the_limits() {
        let schema = sgp_schema();
        let accepted = decide(
            &hello(),
            Offer {
                parent_id: Some("root".into()),
                tags: vec!["worker".into(), "eu".into()],
                ..offer(&schema)
            },
            &Acl::default(),
            false,
        )
        .expect("accepted");
        assert_eq!(accepted.welcome.parent_id.as_deref(), Some("root"));
        assert_eq!(accepted.welcome.tags, ["worker", "eu"]);

        // What a client could not decode is left out, and the rest still goes.
        let long = "x".repeat(MAX_NAME_LEN + 1);
        let mut tags = vec![long.clone()];
        tags.extend((0..MAX_TAGS + 5).map(|i| format!("t{i}")));
        let accepted = decide(
            &hello(),
            Offer {
                parent_id: Some(long),
                tags,
                ..offer(&schema)
            },
            &Acl::default(),
            false,
        )
        .expect("accepted");
        assert_eq!(accepted.welcome.parent_id, None);
        assert_eq!(accepted.welcome.tags.len(), MAX_TAGS);
        assert_eq!(accepted.welcome.tags[0], "t0");
        let body =
            crate::proto::message::encode_to_vec(&crate::proto::Message::Welcome(accepted.welcome));
        assert!(
            crate::proto::message::decode(&body).is_ok(),
            "a client decodes it"
        );
    }

    #[test]
    fn accepts_and_sends_the_schema_only_when_the_hash_differs() {
        let schema = sgp_schema();
        let accepted = decide(&hello(), offer(&schema), &Acl::default(), false).expect("accepted");
        assert_eq!(accepted.welcome.schema.as_ref(), Some(schema.def()));
        assert_eq!(accepted.welcome.snapshot.queue_tick, 4);
        let same = Hello {
            schema_hash: schema.hash(),
            ..hello()
        };
        let accepted = decide(&same, offer(&schema), &Acl::default(), false).expect("accepted");
        assert_eq!(accepted.welcome.schema, None);
    }

    #[test]
    fn every_refusal_says_why() {
        let schema = sgp_schema();
        let cases: Vec<(Hello, Acl, &[String], RefusalKind, &str)> = vec![
            (
                Hello {
                    version: 99,
                    ..hello()
                },
                Acl::default(),
                &[],
                RefusalKind::Version,
                "version 99",
            ),
            (
                hello(),
                Acl {
                    token: Some("s3cret".into()),
                    ..Acl::default()
                },
                &[],
                RefusalKind::Auth,
                "token is required",
            ),
            (
                Hello {
                    token: Some("guess".into()),
                    ..hello()
                },
                Acl {
                    token: Some("s3cret".into()),
                    ..Acl::default()
                },
                &[],
                RefusalKind::Auth,
                "token is wrong",
            ),
            (
                hello(),
                Acl {
                    allow_ids: Some(vec!["other".into()]),
                    ..Acl::default()
                },
                &[],
                RefusalKind::Acl,
                "allow-list",
            ),
            (
                Hello {
                    options: WantedOptions {
                        track: Some(vec!["Nope".into()]),
                        ..WantedOptions::default()
                    },
                    ..hello()
                },
                Acl::default(),
                &[],
                RefusalKind::BadHello,
                "unknown state \"Nope\"",
            ),
        ];
        for (hello, acl, ancestry, kind, needle) in cases {
            let offer = Offer {
                ancestry,
                ..offer(&schema)
            };
            let refusal = decide(&hello, offer, &acl, false).expect_err("refused");
            assert_eq!(refusal.kind, kind);
            assert!(
                refusal.reason.contains(needle),
                "{:?} lacks {needle:?}",
                refusal.reason
            );
        }
    }

    #[test]
    fn loops_are_refused() {
        let schema = sgp_schema();
        let ancestry = ["mid".to_owned(), "leaf".to_owned(), "root".to_owned()];
        let refusal = decide(
            &hello(),
            Offer {
                ancestry: &ancestry,
                ..offer(&schema)
            },
            &Acl::default(),
            false,
        )
        .expect_err("leaf is upstream of mid");
        assert_eq!(refusal.kind, RefusalKind::Loop);
        assert!(refusal.reason.contains("descendants"), "{}", refusal.reason);
        let itself = Hello {
            client_id: "mid".into(),
            ..hello()
        };
        let refusal = decide(
            &itself,
            Offer {
                ancestry: &ancestry,
                ..offer(&schema)
            },
            &Acl::default(),
            false,
        )
        .expect_err("a node cannot mirror itself");
        assert!(refusal.reason.contains("itself"), "{}", refusal.reason);
    }

    #[test]
    fn per_client_rules_narrow_what_is_seen_and_what_may_change() {
        let schema = sgp_schema();
        let rules = |pairs: &[(&str, &[&str])]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
                .collect()
        };
        let acl = Acl {
            see: rules(&[("leaf", &["Start", "CallOp"]), ("*", &["Start"])]),
            mutate: rules(&[("leaf", &["CallOp"])]),
            ..Acl::default()
        };
        let accepted = decide(&hello(), offer(&schema), &acl, false).expect("accepted");
        assert_eq!(accepted.tracked, Tracked::Only(vec![0, 5]));
        assert_eq!(
            accepted.welcome.snapshot.ticks,
            [1, 0, 0, 0, 0, 3, 0],
            "unseen states read 0"
        );
        assert_eq!(
            (
                accepted.mutable.as_deref(),
                accepted.welcome.granted.mutable.as_deref()
            ),
            (Some(&[5u32][..]), Some(&[5u32][..]))
        );
        // Asking to track more than may be seen gets the intersection.
        let wants = Hello {
            options: WantedOptions {
                track: Some(vec!["Event".into(), "CallOp".into()]),
                ..WantedOptions::default()
            },
            ..hello()
        };
        assert_eq!(
            decide(&wants, offer(&schema), &acl, false)
                .expect("accepted")
                .tracked,
            Tracked::Only(vec![5])
        );
        // Another client falls under "*": sees Start only, may mutate everything.
        let other = Hello {
            client_id: "other".into(),
            ..hello()
        };
        let accepted = decide(&other, offer(&schema), &acl, false).expect("accepted");
        assert_eq!(
            (accepted.tracked, accepted.mutable),
            (Tracked::Only(vec![0]), None)
        );
    }

    #[test]
    fn tracking_a_subset_masks_the_snapshot_and_compression_needs_both_sides() {
        let schema = sgp_schema();
        let wanted = WantedOptions {
            compression: true,
            track: Some(vec!["CallOp".into(), "Start".into()]),
        };
        let h = Hello {
            options: wanted,
            ..hello()
        };
        let accepted = decide(&h, offer(&schema), &Acl::default(), false).expect("accepted");
        assert_eq!(accepted.tracked, Tracked::Only(vec![0, 5]));
        assert_eq!(accepted.welcome.snapshot.ticks, [1, 0, 0, 0, 0, 3, 0]);
        assert!(
            !accepted.compression,
            "the server did not allow compression"
        );
        let accepted = decide(&h, offer(&schema), &Acl::default(), true).expect("accepted");
        assert!(accepted.compression && accepted.welcome.granted.compression);
    }
}
