//! Fuzz target: messages built from the input with `arbitrary` rather than raw bytes, shaped to
//! reach the decoder's limits: arguments nested to the depth limit and past it, lists, names,
//! tokens, tags, a schema's groups and argument maps at their limits, one past them, or
//! anywhere in between. Each is encoded and decoded as a body and as frames; see
//! `asyncmachine::proto::checks::structured` for what must hold.
//!
//! The byte-level targets (`frames`, `message`, `handshake`) cannot get here: a random byte
//! string almost never encodes a well-formed 33-deep list or a 4097-item clock.
#![no_main]

use std::collections::BTreeMap;

use arbitrary::{Result, Unstructured};
use asyncmachine::machine::{Args, GroupDef, MutationKind, SchemaDef, StateDef, Value};
use asyncmachine::proto::Message;
use asyncmachine::proto::checks;
use asyncmachine::proto::limits::{
    MAX_ANCESTRY, MAX_ARGS, MAX_DEPTH, MAX_GROUPS, MAX_KEY_LEN, MAX_NAME_LEN, MAX_STATES,
    MAX_TAGS, MAX_TOKEN_LEN,
};
use asyncmachine::proto::message::{
    ClientStatus, ClockDiff, ErrResult, Granted, Hello, MutateReply, MutateRequest, MutateResult,
    NodeStatus, Payload, Refusal, RefusalKind, Snapshot, SourceStatus, WaitResult, WantedOptions,
    Welcome, WhenArgsRequest,
};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(knobs) = u.arbitrary::<u8>() else {
        return;
    };
    if let Ok(message) = message(&mut u) {
        checks::structured(&message, knobs);
    }
});

/// A count for a field limited to `limit`: most often a handful, else the limit, one past it, or
/// anything up to that. An exhausted input picks a handful (arbitrary then reads zeros). Long
/// lists are the slow inputs (kilobytes to encode and decode twice), so they come one time in
/// four: often enough that every field is tried at its limit within seconds.
fn count(u: &mut Unstructured<'_>, limit: usize) -> Result<usize> {
    Ok(match u.int_in_range(0..=15u8)? {
        0..=11 => u.int_in_range(0..=8)?,
        12 => limit,
        13 => limit + 1,
        _ => u.int_in_range(0..=limit + 1)?,
    })
}

/// A string for a field limited to `limit` bytes: an arbitrary short one, or one of exactly
/// `count` bytes.
fn text(u: &mut Unstructured<'_>, limit: usize) -> Result<String> {
    if u.arbitrary()? {
        return u.arbitrary();
    }
    let len = count(u, limit)?;
    let fill = char::from(u.int_in_range(b' '..=b'~')?);
    Ok(fill.to_string().repeat(len))
}

/// A list of `count(limit)` short names, one of them possibly up to the name limit.
fn names(u: &mut Unstructured<'_>, limit: usize) -> Result<Vec<String>> {
    let n = count(u, limit)?;
    let mut names: Vec<String> = (0..n).map(|i| format!("s{i}")).collect();
    if let Some(one) = names.first_mut() {
        *one = text(u, MAX_NAME_LEN)?;
    }
    Ok(names)
}

fn states(u: &mut Unstructured<'_>) -> Result<Vec<u32>> {
    let n = count(u, MAX_STATES)?;
    (0..n).map(|_| u.arbitrary()).collect()
}

fn optional_states(u: &mut Unstructured<'_>) -> Result<Option<Vec<u32>>> {
    Ok(if u.arbitrary()? {
        Some(states(u)?)
    } else {
        None
    })
}

fn snapshot(u: &mut Unstructured<'_>) -> Result<Snapshot> {
    let n = count(u, MAX_STATES)?;
    Ok(Snapshot {
        ticks: (0..n).map(|_| u.arbitrary()).collect::<Result<_>>()?,
        queue_tick: u.arbitrary()?,
    })
}

fn diff(u: &mut Unstructured<'_>) -> Result<ClockDiff> {
    let n = count(u, MAX_STATES)?;
    Ok(ClockDiff {
        changes: (0..n).map(|_| u.arbitrary()).collect::<Result<_>>()?,
        queue_delta: u.arbitrary()?,
        checksum: u.arbitrary()?,
    })
}

fn scalar(u: &mut Unstructured<'_>) -> Result<Value> {
    Ok(match u.int_in_range(0..=5u8)? {
        0 => Value::Null,
        1 => Value::Bool(u.arbitrary()?),
        2 => Value::Int(u.arbitrary()?),
        3 => Value::Float(u.arbitrary()?),
        4 => Value::Str(u.arbitrary()?),
        _ => Value::Bytes(u.arbitrary()?),
    })
}

/// A value: a small random tree (a list or map of up to 257 items, three levels at most), or a
/// chain of lists and maps nested to the depth limit, one past it, or anywhere up to 8 past.
fn value(u: &mut Unstructured<'_>) -> Result<Value> {
    if u.ratio(1u8, 4)? {
        let depth = match u.int_in_range(0..=2u8)? {
            0 => MAX_DEPTH,
            1 => MAX_DEPTH + 1,
            _ => u.int_in_range(0..=MAX_DEPTH + 8)?,
        };
        let mut nested = scalar(u)?;
        for _ in 0..depth {
            nested = if u.arbitrary()? {
                Value::List(vec![nested])
            } else {
                Value::Map(BTreeMap::from([(u.arbitrary()?, nested)]))
            };
        }
        return Ok(nested);
    }
    tree(u, 3)
}

fn tree(u: &mut Unstructured<'_>, levels: usize) -> Result<Value> {
    if levels == 0 || u.ratio(1u8, 2)? {
        return scalar(u);
    }
    // Long lists and many keys at the top; a few items below, so a tree stays small.
    let n = if levels == 3 {
        count(u, 256)?
    } else {
        u.int_in_range(0..=4)?
    };
    Ok(if u.arbitrary()? {
        Value::List((0..n).map(|_| tree(u, levels - 1)).collect::<Result<_>>()?)
    } else {
        Value::Map(
            (0..n)
                .map(|i| Ok((format!("k{i}"), tree(u, levels - 1)?)))
                .collect::<Result<_>>()?,
        )
    })
}

/// Arguments: `count(MAX_ARGS)` of them with distinct names; the first one's name possibly
/// long and its value a deep chain or a wide tree, the others scalars. (A wide tree in every
/// argument made messages of megabytes and the target ten times slower, without reaching any
/// limit the first argument does not reach already.)
fn args(u: &mut Unstructured<'_>) -> Result<Args> {
    let n = count(u, MAX_ARGS)?;
    let mut args = Args::new();
    for i in 0..n {
        if i == 0 {
            args.insert(text(u, MAX_KEY_LEN)?, value(u)?);
        } else {
            args.insert(format!("a{i}"), scalar(u)?);
        }
    }
    Ok(args)
}

fn kind(u: &mut Unstructured<'_>) -> Result<MutationKind> {
    Ok(*u.choose(&[MutationKind::Add, MutationKind::Remove, MutationKind::Set])?)
}

/// A schema of a few states and groups: the groups' count, one group's name and one group's
/// states at their limits, one past them, or anywhere in between (states are not bounded while
/// decoding; a decoded schema is validated after).
fn schema(u: &mut Unstructured<'_>) -> Result<SchemaDef> {
    let n = u.int_in_range(0..=4)?;
    let states = (0..n)
        .map(|i| {
            let mut def = StateDef::new(format!("S{i}"));
            def.require = u.arbitrary()?;
            def.auto = u.arbitrary()?;
            def.multi = u.arbitrary()?;
            Ok(def)
        })
        .collect::<Result<_>>()?;
    let mut groups: Vec<GroupDef> = (0..count(u, MAX_GROUPS)?)
        .map(|i| GroupDef::new(format!("g{i}"), ["S0"]))
        .collect();
    if let Some(first) = groups.first_mut() {
        first.name = text(u, MAX_NAME_LEN)?;
        first.states = names(u, MAX_STATES)?;
    }
    Ok(SchemaDef { states, groups })
}

fn status(u: &mut Unstructured<'_>) -> Result<NodeStatus> {
    let sources = (0..u.int_in_range(0..=3)?)
        .map(|_| {
            Ok(SourceStatus {
                name: u.arbitrary()?,
                id: u.arbitrary()?,
                upstream: u.arbitrary()?,
                connection: u.arbitrary()?,
                last_error: u.arbitrary()?,
                active: u.arbitrary()?,
                queue_tick: u.arbitrary()?,
                clients: u.arbitrary()?,
                reconnects: u.arbitrary()?,
                ticks: u.arbitrary()?,
            })
        })
        .collect::<Result<_>>()?;
    let clients = (0..u.int_in_range(0..=3)?)
        .map(|_| {
            Ok(ClientStatus {
                id: u.arbitrary()?,
                source: u.arbitrary()?,
                peer: u.arbitrary()?,
            })
        })
        .collect::<Result<_>>()?;
    Ok(NodeStatus {
        node: u.arbitrary()?,
        sources,
        clients,
        counters: u.arbitrary()?,
    })
}

fn message(u: &mut Unstructured<'_>) -> Result<Message> {
    Ok(match u.int_in_range(0..=21u8)? {
        0 => Message::Hello(Hello {
            version: u.arbitrary()?,
            client_id: text(u, MAX_NAME_LEN)?,
            source: text(u, MAX_NAME_LEN)?,
            schema_hash: u.arbitrary()?,
            options: WantedOptions {
                compression: u.arbitrary()?,
                track: if u.arbitrary()? {
                    Some(names(u, MAX_STATES)?)
                } else {
                    None
                },
            },
            token: if u.arbitrary()? {
                Some(text(u, MAX_TOKEN_LEN)?)
            } else {
                None
            },
        }),
        1 => Message::Welcome(Welcome {
            ancestry: names(u, MAX_ANCESTRY)?,
            schema: if u.arbitrary()? {
                Some(schema(u)?)
            } else {
                None
            },
            snapshot: snapshot(u)?,
            granted: Granted {
                compression: u.arbitrary()?,
                tracked: optional_states(u)?,
                mutable: optional_states(u)?,
            },
            parent_id: if u.arbitrary()? {
                Some(text(u, MAX_NAME_LEN)?)
            } else {
                None
            },
            tags: names(u, MAX_TAGS)?,
        }),
        2 => Message::Refused(Refusal {
            kind: *u.choose(&[
                RefusalKind::Version,
                RefusalKind::UnknownSource,
                RefusalKind::Auth,
                RefusalKind::Acl,
                RefusalKind::Loop,
                RefusalKind::Full,
                RefusalKind::BadHello,
                RefusalKind::Timeout,
            ])?,
            reason: u.arbitrary()?,
        }),
        3 => Message::Diff(diff(u)?),
        4 => Message::Mutate(MutateRequest {
            id: u.arbitrary()?,
            kind: kind(u)?,
            states: states(u)?,
            args: args(u)?,
            key: None,
        }),
        5 => Message::MutateReply(MutateReply {
            id: u.arbitrary()?,
            result: match u.int_in_range(0..=3u8)? {
                0 => MutateResult::Executed,
                1 => MutateResult::Canceled,
                2 => MutateResult::Queued,
                _ => MutateResult::Refused(u.arbitrary()?),
            },
            diff: diff(u)?,
        }),
        6 => Message::Sync { id: u.arbitrary()? },
        7 => Message::Snapshot {
            id: u.arbitrary()?,
            snapshot: snapshot(u)?,
        },
        8 => Message::Payload(Payload {
            name: text(u, MAX_NAME_LEN)?,
            data: u.arbitrary()?,
        }),
        9 => Message::SchemaChanged {
            schema: schema(u)?,
            snapshot: snapshot(u)?,
        },
        10 => Message::Ping(u.arbitrary()?),
        11 => Message::Pong(u.arbitrary()?),
        12 => Message::Bye {
            reason: u.arbitrary()?,
        },
        13 => Message::Error {
            message: u.arbitrary()?,
        },
        14 => Message::StatusRequest {
            token: if u.arbitrary()? {
                Some(text(u, MAX_TOKEN_LEN)?)
            } else {
                None
            },
        },
        15 => Message::Status(status(u)?),
        16 => Message::Ancestry(names(u, MAX_ANCESTRY)?),
        17 => Message::WhenArgs(WhenArgsRequest {
            id: u.arbitrary()?,
            state: u.arbitrary()?,
            args: args(u)?,
        }),
        18 => Message::WhenArgsDone {
            id: u.arbitrary()?,
            result: match u.int_in_range(0..=3u8)? {
                0 => WaitResult::Done,
                1 => WaitResult::Disposed,
                2 => WaitResult::Canceled,
                _ => WaitResult::Refused(u.arbitrary()?),
            },
        },
        19 => Message::WhenArgsCancel { id: u.arbitrary()? },
        20 => Message::ErrRequest { id: u.arbitrary()? },
        _ => Message::ErrReply {
            id: u.arbitrary()?,
            result: match u.int_in_range(0..=2u8)? {
                0 => ErrResult::NoError,
                1 => ErrResult::Error(u.arbitrary()?),
                _ => ErrResult::Refused(u.arbitrary()?),
            },
        },
    })
}
