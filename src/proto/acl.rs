//! A server's access rules ([`Acl`], the one type a topology file, the server and the handshake
//! share) and what they decide for one peer: whether it is let in at all (token, allow-list),
//! whether it may read the node's status, and which mutations it may send (its `mutate` list,
//! granted in the handshake). Pure: the server's connection driver asks, this decides.
//!
//! **Admission** comes before anything else a server tells a peer: a peer without the token or
//! off the allow-list learns nothing of what the node serves (not even its source names).
//!
//! **Status** shows every state of every source and every client of the node, so it is
//! answered only to a peer that would be let in and would see everything: the token when one
//! is set, an identity on the allow-list when there is one (only a client certificate proves
//! an identity: a status request names none), and no `see` rule narrowing what it sees.
//!
//! **Mutations**: a client whose `mutate` list is restricted may change the activity of a
//! state outside its list only through the schema's own relations of the states it calls
//! (their `add`, `remove` and `require`, and auto states). So:
//! - `add(L)` and `remove(L)` need every state of `L` on the list;
//! - `set(L)` also deactivates every active state not in `L`, by its own semantics rather than
//!   through a relation. It is refused unless the list covers every state of the schema that
//!   `set` could deactivate: with `L` on the list, that is the whole schema. `Exception` is a
//!   state like any other here: a `set` that does not name it clears it, which is a mutation of
//!   `Exception` the list must allow.
//!
//! The mutation decision depends on the list and the schema only, never on which states are
//! active now: the clock may change between this check and the mutation (other clients,
//! handlers, the queue), so a rule that read it would race.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::message::{Refusal, RefusalKind};
use crate::machine::{MutationKind, Schema};

/// The access rules of a server, as a topology file's `acl` table writes them.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Acl {
    /// A token every client must present, if set.
    pub token: Option<String>,
    /// The only client ids let in, if set.
    #[serde(rename = "allow")]
    pub allow_ids: Option<Vec<String>>,
    /// Per client id (`"*"` for clients not listed): the only states it sees. A client matched
    /// by no entry sees everything.
    pub see: BTreeMap<String, Vec<String>>,
    /// Per client id (`"*"` for clients not listed): the only states it may mutate. A client
    /// matched by no entry may mutate every state.
    pub mutate: BTreeMap<String, Vec<String>>,
}

impl Acl {
    /// The states `client` sees: its own `see` entry, else the `"*"` entry; `None` for all.
    pub fn seen_by(&self, client: &str) -> Option<&Vec<String>> {
        rule(&self.see, client)
    }

    /// The states `client` may mutate: its own `mutate` entry, else the `"*"` entry; `None`
    /// for all.
    pub fn mutable_by(&self, client: &str) -> Option<&Vec<String>> {
        rule(&self.mutate, client)
    }
}

/// The list that applies to a client: its own entry, else the `"*"` entry.
fn rule<'a>(rules: &'a BTreeMap<String, Vec<String>>, client: &str) -> Option<&'a Vec<String>> {
    rules.get(client).or_else(|| rules.get("*"))
}

/// How many state names a refusal lists before it says how many more there are: a schema may
/// have thousands of states, and a reason is read by a person.
const NAMES_SHOWN: usize = 8;

/// Why a client's mutation is not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MutationDenied {
    /// The request names a position the schema does not have (a peer bug, not an ACL matter).
    #[error("state {state} is outside the schema of {states} states")]
    OutsideSchema {
        /// The position asked for.
        state: u32,
        /// How many states the schema has.
        states: usize,
    },
    /// The request calls a state that is not on the client's list.
    #[error("client {client:?} may not mutate {state}; it may mutate: {allowed}")]
    Forbidden {
        /// The client's id.
        client: String,
        /// The state it may not mutate.
        state: String,
        /// The states it may mutate, as a list for a person (cut after a few).
        allowed: String,
    },
    /// A `set` from a client whose list does not cover the states it would deactivate.
    #[error(
        "client {client:?} may not set: a set deactivates every state it does not name, and the client may not mutate {untouchable}; use add and remove instead; it may mutate: {allowed}"
    )]
    SetForbidden {
        /// The client's id.
        client: String,
        /// States the set would deactivate that the client may not mutate.
        untouchable: String,
        /// The states it may mutate, as a list for a person (cut after a few).
        allowed: String,
    },
}

impl MutationDenied {
    /// Whether the access rules refused it (counted as a refusal), rather than a bad request.
    pub fn by_acl(&self) -> bool {
        !matches!(self, MutationDenied::OutsideSchema { .. })
    }
}

/// The longest client id a server takes, in bytes: ids are keys of the access rules and are
/// shown in logs and `status`, never data.
pub const MAX_CLIENT_ID_BYTES: usize = 256;

/// Compares a presented token with the expected one without stopping at the first difference,
/// so the time taken does not tell how much of a guess was right. It walks the expected token's
/// length whatever the guess's length (a shorter guess is read round again), so the time does
/// not tell the token's length either.
pub fn token_matches(presented: &str, expected: &str) -> bool {
    let (a, b) = (presented.as_bytes(), expected.as_bytes());
    let differ = b.iter().enumerate().fold(a.len() ^ b.len(), |acc, (i, y)| {
        let x = if a.is_empty() { 0 } else { a[i % a.len()] };
        acc | usize::from(x ^ y)
    });
    differ == 0
}

/// Whether a client that says it is `client` and presents `token` is let in: the server's
/// token, then the id's form, then the allow-list.
pub fn admit(acl: &Acl, client: &str, token: Option<&str>) -> Result<(), Refusal> {
    if let Some(expected) = &acl.token
        && !token.is_some_and(|token| token_matches(token, expected))
    {
        let reason = if token.is_some() {
            "the token is wrong"
        } else {
            "a token is required"
        };
        return Err(Refusal {
            kind: RefusalKind::Auth,
            reason: format!("{reason}; configure the client with the server's token"),
        });
    }
    // A control character in an id would forge lines in logs and in `status` output.
    if client.len() > MAX_CLIENT_ID_BYTES || client.chars().any(char::is_control) {
        return Err(Refusal {
            kind: RefusalKind::BadHello,
            reason: format!(
                "client id {:?} is not usable: ids are at most {MAX_CLIENT_ID_BYTES} bytes \
                 without control characters; configure another id",
                client.chars().take(64).collect::<String>()
            ),
        });
    }
    if let Some(allowed) = &acl.allow_ids
        && !allowed.iter().any(|id| id == client)
    {
        return Err(Refusal {
            kind: RefusalKind::Acl,
            reason: format!("client id {client:?} is not on this server's allow-list"),
        });
    }
    Ok(())
}

/// Whether a status request may be answered: `identity` is what the peer's client certificate
/// proves (`None` without mutual TLS), `token` what the request presents, `schemas` those of
/// every source the status would show.
pub fn admit_status<'a>(
    acl: &Acl,
    schemas: impl IntoIterator<Item = &'a Schema>,
    identity: Option<&str>,
    token: Option<&str>,
) -> Result<(), Refusal> {
    let refused = |reason: String| Refusal {
        kind: RefusalKind::Acl,
        reason,
    };
    if acl
        .token
        .as_ref()
        .is_some_and(|expected| !token.is_some_and(|token| token_matches(token, expected)))
    {
        return Err(Refusal {
            kind: RefusalKind::Auth,
            reason: "status needs the server's token; pass it with --token".to_owned(),
        });
    }
    if let Some(allowed) = &acl.allow_ids {
        match identity {
            Some(id) if allowed.iter().any(|a| a == id) => {}
            Some(id) => {
                return Err(refused(format!(
                    "client id {id:?} is not on this server's allow-list"
                )));
            }
            None => {
                return Err(refused(
                    "status shows every client and state of this node, and this server lets in \
                     only the clients on its allow-list; ask with a client certificate (mutual \
                     TLS) whose identity is on the list"
                        .to_owned(),
                ));
            }
        }
    }
    // Without a certificate the peer is a client no rule names: the "*" rule applies.
    let narrowed = match identity {
        Some(id) => acl.seen_by(id),
        None => acl.see.get("*"),
    };
    // A list that names every state of every source narrows nothing.
    let hidden = |see: &Vec<String>| {
        let mut schemas = schemas.into_iter();
        schemas.any(|schema| schema.names().any(|name| !see.iter().any(|s| s == name)))
    };
    if narrowed.is_some_and(hidden) {
        let who = identity.map_or_else(
            || "clients without a certificate".to_owned(),
            |id| format!("client {id:?}"),
        );
        return Err(refused(format!(
            "status shows every state of this node, and this server narrows what {who} may \
             see (acl see); ask with a client certificate whose identity no see rule narrows"
        )));
    }
    Ok(())
}

/// Decides whether `client`, which may mutate `mutable` (positions as the handshake granted
/// them; `None` for every state), may send a `kind` mutation of the `called` positions.
pub fn check_mutation(
    schema: &Schema,
    client: &str,
    mutable: Option<&[u32]>,
    kind: MutationKind,
    called: &[u32],
) -> Result<(), MutationDenied> {
    let states = schema.len();
    if let Some(&state) = called.iter().find(|&&s| s as usize >= states) {
        return Err(MutationDenied::OutsideSchema { state, states });
    }
    let Some(mutable) = mutable else {
        return Ok(());
    };
    let mut allowed = vec![false; states];
    for &s in mutable {
        if let Some(slot) = allowed.get_mut(s as usize) {
            *slot = true;
        }
    }
    let allowed_names = || {
        let names: Vec<&str> = (0..states)
            .filter(|&s| allowed[s])
            .map(|s| schema.name(s))
            .collect();
        if names.is_empty() {
            "nothing".to_owned()
        } else {
            names.join(", ")
        }
    };
    if let Some(&bad) = called.iter().find(|&&s| !allowed[s as usize]) {
        return Err(MutationDenied::Forbidden {
            client: client.to_owned(),
            state: schema.name(bad as usize).to_owned(),
            allowed: allowed_names(),
        });
    }
    if kind == MutationKind::Set {
        // Every called state is allowed by now, so what a set could deactivate without
        // permission is every state off the list.
        let untouchable: Vec<&str> = (0..states)
            .filter(|&s| !allowed[s])
            .map(|s| schema.name(s))
            .collect();
        if !untouchable.is_empty() {
            return Err(MutationDenied::SetForbidden {
                client: client.to_owned(),
                untouchable: shortened(&untouchable),
                allowed: allowed_names(),
            });
        }
    }
    Ok(())
}

/// Names joined with commas, the first [`NAMES_SHOWN`] of them and a count of the rest.
fn shortened(names: &[&str]) -> String {
    if names.len() <= NAMES_SHOWN {
        return names.join(", ");
    }
    format!(
        "{} and {} more",
        names[..NAMES_SHOWN].join(", "),
        names.len() - NAMES_SHOWN
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::{SchemaDef, StateDef};

    /// Start, Flag, Other, and the Exception every schema has (position 3).
    fn schema() -> Schema {
        Schema::new(SchemaDef::of_states(vec![
            StateDef::new("Start"),
            StateDef::new("Flag").require(["Start"]),
            StateDef::new("Other").remove(["Flag"]),
        ]))
        .expect("valid")
    }

    fn positions(schema: &Schema, names: &[&str]) -> Vec<u32> {
        schema
            .indices(names)
            .expect("known names")
            .into_iter()
            .map(|s| s as u32)
            .collect()
    }

    /// A client's list (`None`: unrestricted), the states called, and the expected outcome of
    /// add, remove and set.
    type Case = (
        Option<&'static [&'static str]>,
        &'static [&'static str],
        &'static str,
    );

    /// Every list against every call: `y` runs, `n` is refused, for add, remove and set in
    /// that order. The expectations are written out, not derived from the rule.
    #[test]
    fn add_remove_and_set_for_every_mix_of_allowed_and_forbidden_states() {
        let schema = schema();
        let all: &[&str] = &["Start", "Flag", "Other", "Exception"];
        #[rustfmt::skip]
        let table: &[Case] = &[
            // Unrestricted: anything goes.
            (None, &["Flag"], "yyy"),
            (None, &["Start", "Flag"], "yyy"),
            (None, &[], "yyy"),
            (None, &["Exception"], "yyy"),
            // The client: may mutate Flag only.
            (Some(&["Flag"]), &["Flag"], "yyn"),
            (Some(&["Flag"]), &["Flag", "Flag"], "yyn"),
            (Some(&["Flag"]), &["Start"], "nnn"),
            (Some(&["Flag"]), &["Flag", "Start"], "nnn"),
            (Some(&["Flag"]), &["Start", "Flag"], "nnn"),
            (Some(&["Flag"]), &[], "yyn"),
            (Some(&["Flag"]), &["Exception"], "nnn"),
            // Two of four states.
            (Some(&["Flag", "Other"]), &["Flag", "Other"], "yyn"),
            (Some(&["Flag", "Other"]), &["Other"], "yyn"),
            (Some(&["Flag", "Other"]), &["Other", "Start"], "nnn"),
            // An empty list: nothing, not even an empty set (it would deactivate everything).
            (Some(&[]), &[], "yyn"),
            (Some(&[]), &["Flag"], "nnn"),
            (Some(&[]), &["Exception"], "nnn"),
            // Every state but Exception: a set would clear Exception, which it may not touch.
            (Some(&["Start", "Flag", "Other"]), &["Start", "Flag", "Other"], "yyn"),
            (Some(&["Start", "Flag", "Other"]), &["Flag"], "yyn"),
            (Some(&["Start", "Flag", "Other"]), &[], "yyn"),
            (Some(&["Start", "Flag", "Other"]), &["Exception"], "nnn"),
            // The whole schema: a set can do nothing add and remove could not.
            (Some(all), &["Flag"], "yyy"),
            (Some(all), &[], "yyy"),
            (Some(all), &["Exception"], "yyy"),
            (Some(all), &["Start", "Flag", "Other", "Exception"], "yyy"),
            // Exception alone.
            (Some(&["Exception"]), &["Exception"], "yyn"),
            (Some(&["Exception"]), &["Flag"], "nnn"),
        ];
        let kinds = [MutationKind::Add, MutationKind::Remove, MutationKind::Set];
        for (list, called, expected) in table {
            let mutable = list.map(|names| positions(&schema, names));
            let called = positions(&schema, called);
            for (kind, want) in kinds.iter().zip(expected.chars()) {
                let got = check_mutation(&schema, "mirA", mutable.as_deref(), *kind, &called);
                assert_eq!(
                    got.is_ok(),
                    want == 'y',
                    "{kind} {called:?} with list {list:?}: {got:?}"
                );
                if let Err(denied) = got {
                    assert!(denied.by_acl(), "{denied}");
                }
            }
        }
    }

    #[test]
    fn refusals_name_the_rule_and_what_the_client_may_do() {
        let schema = schema();
        let flag = positions(&schema, &["Flag"]);
        let start = positions(&schema, &["Start"]);
        let denied = check_mutation(&schema, "mirA", Some(&flag), MutationKind::Set, &flag)
            .expect_err("set from a restricted client");
        assert_eq!(
            denied.to_string(),
            "client \"mirA\" may not set: a set deactivates every state it does not name, and \
             the client may not mutate Start, Other, Exception; use add and remove instead; it \
             may mutate: Flag"
        );
        let denied = check_mutation(&schema, "mirA", Some(&flag), MutationKind::Add, &start)
            .expect_err("a state off the list");
        assert_eq!(
            denied.to_string(),
            "client \"mirA\" may not mutate Start; it may mutate: Flag"
        );
        let denied = check_mutation(&schema, "mirA", Some(&[]), MutationKind::Remove, &start)
            .expect_err("an empty list");
        assert_eq!(
            denied.to_string(),
            "client \"mirA\" may not mutate Start; it may mutate: nothing"
        );
    }

    #[test]
    fn positions_outside_the_schema_are_a_bad_request_for_everyone() {
        let schema = schema();
        for mutable in [None, Some(&[0u32, 1, 2, 3][..])] {
            let denied = check_mutation(&schema, "mirA", mutable, MutationKind::Add, &[1, 4])
                .expect_err("position 4 of 4 states");
            assert_eq!(
                denied,
                MutationDenied::OutsideSchema {
                    state: 4,
                    states: 4
                }
            );
            assert!(!denied.by_acl());
        }
        // A granted list with a position past the schema grants nothing more.
        let denied = check_mutation(
            &schema,
            "mirA",
            Some(&[1, u32::MAX]),
            MutationKind::Set,
            &[1],
        )
        .expect_err("still restricted");
        assert!(matches!(denied, MutationDenied::SetForbidden { .. }));
    }

    fn names(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn rules(pairs: &[(&str, &[&str])]) -> std::collections::BTreeMap<String, Vec<String>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), names(v)))
            .collect()
    }

    #[test]
    fn admission_checks_the_token_then_the_allow_list() {
        let acl = Acl {
            token: Some("t".into()),
            allow_ids: Some(names(&["ops"])),
            ..Acl::default()
        };
        let cases = [
            ("ops", Some("t"), None),
            (
                "ops",
                None,
                Some((RefusalKind::Auth, "a token is required")),
            ),
            (
                "ops",
                Some("x"),
                Some((RefusalKind::Auth, "the token is wrong")),
            ),
            (
                "eve",
                Some("t"),
                Some((RefusalKind::Acl, "\"eve\" is not on")),
            ),
            (
                "eve",
                None,
                Some((RefusalKind::Auth, "a token is required")),
            ),
        ];
        for (client, token, expected) in cases {
            match (admit(&acl, client, token), expected) {
                (Ok(()), None) => {}
                (Err(refusal), Some((kind, needle))) => {
                    assert_eq!(refusal.kind, kind, "{client} {token:?}");
                    assert!(refusal.reason.contains(needle), "{}", refusal.reason);
                }
                (got, want) => panic!("{client} {token:?}: got {got:?}, expected {want:?}"),
            }
        }
        assert_eq!(admit(&Acl::default(), "anyone", None), Ok(()));
    }

    #[test]
    fn ids_that_would_forge_output_are_refused() {
        let long = "x".repeat(MAX_CLIENT_ID_BYTES + 1);
        for id in [
            "evil\n2026 INFO forged line",
            "red\u{1b}[31m",
            "tab\there",
            &long,
        ] {
            let refusal = admit(&Acl::default(), id, None).expect_err(id);
            assert_eq!(refusal.kind, RefusalKind::BadHello);
            assert!(
                !refusal.reason.chars().any(char::is_control),
                "{:?}",
                refusal.reason
            );
        }
        for id in ["mirA", "am-node-watch-42", "browser-1x2y", "ünïcode id", ""] {
            assert_eq!(admit(&Acl::default(), id, None), Ok(()), "{id:?}");
        }
        assert!(admit(&Acl::default(), &"x".repeat(MAX_CLIENT_ID_BYTES), None).is_ok());
    }

    /// An ACL's name, the certificate's identity, the token presented, the refusal expected.
    type StatusCase = (
        &'static str,
        Option<&'static str>,
        Option<&'static str>,
        Option<RefusalKind>,
    );

    /// Status shows everything: only a peer that would be let in and sees everything gets it.
    #[test]
    fn status_goes_only_to_a_peer_that_could_see_everything() {
        let schema = schema();
        let all: &[&str] = &["Start", "Flag", "Other", "Exception"];
        let acls = [
            ("open", Acl::default()),
            (
                "token",
                Acl {
                    token: Some("t".into()),
                    ..Acl::default()
                },
            ),
            (
                "allow",
                Acl {
                    allow_ids: Some(names(&["ops"])),
                    ..Acl::default()
                },
            ),
            (
                "see star",
                Acl {
                    see: rules(&[("*", &["Start"])]),
                    ..Acl::default()
                },
            ),
            (
                "see star, ops all",
                Acl {
                    see: rules(&[("*", &["Start"]), ("ops", all)]),
                    ..Acl::default()
                },
            ),
            (
                "see mirA",
                Acl {
                    see: rules(&[("mirA", &["Flag"])]),
                    ..Acl::default()
                },
            ),
        ];
        use RefusalKind::Auth;
        let refused = Some(RefusalKind::Acl);
        #[rustfmt::skip]
        let table: &[StatusCase] = &[
            ("open", None, None, None),
            ("open", Some("anyone"), None, None),
            ("token", None, None, Some(Auth)),
            ("token", None, Some("x"), Some(Auth)),
            ("token", None, Some("t"), None),
            ("allow", None, None, refused),
            ("allow", Some("eve"), None, refused),
            ("allow", Some("ops"), None, None),
            ("see star", None, None, refused),
            ("see star", Some("ops"), None, refused),
            ("see star, ops all", Some("ops"), None, None),
            ("see star, ops all", Some("eve"), None, refused),
            ("see star, ops all", None, None, refused),
            ("see mirA", None, None, None),
            ("see mirA", Some("ops"), None, None),
            ("see mirA", Some("mirA"), None, refused),
        ];
        for &(name, identity, token, expected) in table {
            let (_, acl) = acls.iter().find(|(n, _)| *n == name).expect("an acl");
            let got = admit_status(acl, [&schema], identity, token);
            assert_eq!(
                got.as_ref().err().map(|r| r.kind),
                expected,
                "{name} {identity:?} {token:?}: {got:?}"
            );
        }
    }

    #[test]
    fn long_lists_of_untouchable_states_are_shortened() {
        let states: Vec<StateDef> = (0..20).map(|i| StateDef::new(format!("S{i}"))).collect();
        let schema = Schema::new(SchemaDef::of_states(states)).expect("valid");
        let denied = check_mutation(&schema, "c", Some(&[0]), MutationKind::Set, &[0])
            .expect_err("restricted set");
        let MutationDenied::SetForbidden { untouchable, .. } = denied else {
            panic!("expected a set refusal, got {denied:?}");
        };
        assert_eq!(untouchable, "S1, S2, S3, S4, S5, S6, S7, S8 and 12 more");
    }
}
