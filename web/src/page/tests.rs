//! The page's commands natively, with a host that records what the glue would be told and
//! runs "JavaScript" handlers as Rust closures (calling back into the page as JS would).

use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use asyncmachine::proto::message::{Granted, MutateReply, Snapshot, Welcome};
use asyncmachine::proto::{FrameConfig, FrameReader, Message, encode_frame};
use serde_json::{Value as Json, json};

use super::{Host, Page};

type Handler = Box<dyn Fn(&Page, &Json) -> Result<bool, String> + Send + Sync>;

#[derive(Default)]
struct TestHost {
    page: OnceLock<Weak<Page>>,
    handlers: Mutex<Vec<Arc<Handler>>>,
    changes: Mutex<Vec<Json>>,
    wakes: Mutex<usize>,
}

impl Host for TestHost {
    fn handler(&self, func: u32, event: &Json) -> Result<bool, String> {
        let handler = self.handlers.lock().expect("lock")[func as usize].clone();
        let page = self.page.get().and_then(Weak::upgrade).expect("page");
        handler(&page, event)
    }

    fn changed(&self, note: &Json) {
        self.changes.lock().expect("lock").push(note.clone());
    }

    fn wake(&self) {
        *self.wakes.lock().expect("lock") += 1;
    }

    fn now_us(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64)
    }
}

fn page() -> (Arc<Page>, Arc<TestHost>) {
    let host = Arc::new(TestHost::default());
    let page = Arc::new(Page::new(host.clone()));
    host.page.set(Arc::downgrade(&page)).ok();
    (page, host)
}

fn handler(
    host: &TestHost,
    f: impl Fn(&Page, &Json) -> Result<bool, String> + Send + Sync + 'static,
) -> usize {
    let mut handlers = host.handlers.lock().expect("lock");
    handlers.push(Arc::new(Box::new(f)));
    handlers.len() - 1
}

const TOML: &str = r#"
[[states]]
name = "A"

[[states]]
name = "B"
require = ["A"]

[[states]]
name = "C"
"#;

fn machine(page: &Page) -> u64 {
    let made = page
        .call(&json!({ "op": "machine", "id": "bar", "toml": TOML }))
        .expect("made");
    assert_eq!(made["id"], "bar");
    made["h"].as_u64().expect("handle")
}

fn clock(page: &Page, h: u64) -> Json {
    page.call(&json!({ "op": "read", "h": h })).expect("read")["clock"].clone()
}

#[test]
fn a_machine_from_toml_mutates_reads_and_waits() {
    let (page, host) = page();
    let h = machine(&page);
    let schema = page
        .call(&json!({ "op": "schema", "h": h }))
        .expect("schema");
    assert_eq!(schema["states"][1]["require"], json!(["A"]));
    let added = page
        .call(
            &json!({ "op": "mutate", "h": h, "kind": "add", "states": ["A"], "args": { "n": 1 } }),
        )
        .expect("mutated");
    assert_eq!(added, json!({ "done": "Executed" }));
    assert_eq!(clock(&page, h), json!([1, 0, 0, 0]));
    // B requires A: fine now; C waited for, then added.
    let wait = page
        .call(&json!({ "op": "when", "h": h, "kind": "active", "states": ["C"] }))
        .expect("waits");
    let task = wait["task"].as_u64().expect("pending");
    assert_eq!(
        page.call(&json!({ "op": "poll" })).expect("polled"),
        json!([])
    );
    page.call(&json!({ "op": "mutate", "h": h, "kind": "add", "states": "C" }))
        .expect("mutated");
    assert!(*host.wakes.lock().expect("lock") > 0, "the glue was woken");
    assert_eq!(
        page.call(&json!({ "op": "poll" })).expect("polled"),
        json!([{ "task": task, "ok": null }])
    );
    // Already true: answered at once.
    let now = page
        .call(&json!({ "op": "when", "h": h, "kind": "inactive", "states": ["B"] }))
        .expect("waits");
    assert_eq!(now, json!({ "done": null }));
    let e = page
        .call(&json!({ "op": "mutate", "h": h, "kind": "add", "states": ["Nope"] }))
        .expect_err("unknown");
    assert_eq!(e.code, "unknown_state");
    let e = page
        .call(&json!({ "op": "machine", "schema": { "states": [{ "name": "X", "require": ["Y"] }] } }))
        .expect_err("bad schema");
    assert_eq!(e.code, "schema");
    assert!(e.message.contains('Y'), "{e}");
}

#[test]
fn handlers_cancel_fail_and_mutate_from_inside_a_transition() {
    let (page, host) = page();
    let h = machine(&page);
    let refuse = handler(&host, |_, event| {
        assert_eq!(event["args"], json!({ "why": "test" }));
        Ok(false)
    });
    page.call(&json!({ "op": "on", "h": h, "handler": "enter", "state": "C", "fn": refuse }))
        .expect("bound");
    let canceled = page
        .call(&json!({ "op": "mutate", "h": h, "kind": "add", "states": ["C"], "args": { "why": "test" } }))
        .expect("taken");
    assert_eq!(canceled, json!({ "done": "Canceled" }));

    // A's state handler adds B from inside the transition, as a JS handler calls back in.
    let chain = handler(&host, move |page, event| {
        assert_eq!(event["handler"], "AState");
        let queued = page
            .call(&json!({ "op": "mutate", "h": h, "kind": "add", "states": ["B"] }))
            .map_err(|e| e.to_string())?;
        // Queued behind the running transition: a task that resolves once it ran.
        assert!(queued["task"].is_u64(), "{queued}");
        Ok(true)
    });
    page.call(&json!({ "op": "on", "h": h, "handler": "state", "state": "A", "fn": chain }))
        .expect("bound");
    page.call(&json!({ "op": "mutate", "h": h, "kind": "add", "states": ["A"] }))
        .expect("taken");
    assert_eq!(clock(&page, h), json!([1, 1, 0, 0]));
    let polled = page.call(&json!({ "op": "poll" })).expect("polled");
    assert_eq!(polled[0]["ok"], "Executed", "{polled}");

    // A failing handler activates Exception with its message.
    let fail = handler(&host, |_, _| Err("boom".into()));
    page.call(&json!({ "op": "on", "h": h, "handler": "end", "state": "B", "fn": fail }))
        .expect("bound");
    page.call(&json!({ "op": "mutate", "h": h, "kind": "remove", "states": ["B"] }))
        .expect("taken");
    assert_eq!(clock(&page, h)[3], json!(1), "Exception is active");
    let e = page
        .call(&json!({ "op": "on", "h": h, "handler": "enter", "state": "Nope", "fn": fail }))
        .expect_err("unknown state");
    assert_eq!(e.code, "unknown_state");
}

#[test]
fn observers_hear_changes_by_name() {
    let (page, host) = page();
    let h = machine(&page);
    page.call(&json!({ "op": "observe", "h": h }))
        .expect("observed");
    page.call(&json!({ "op": "mutate", "h": h, "kind": "add", "states": ["A", "C"] }))
        .expect("taken");
    let changes = host.changes.lock().expect("lock");
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0]["changed"], json!(["A", "C"]));
    assert_eq!(changes[0]["clock"], json!([1, 0, 1, 0]));
}

fn frame(message: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(&FrameConfig::default(), message, &mut out);
    out
}

fn messages(bytes: &[u8]) -> Vec<Message> {
    let mut reader = FrameReader::new(FrameConfig::default());
    reader.push(bytes);
    std::iter::from_fn(|| reader.next_message().expect("valid")).collect()
}

#[test]
fn a_mirror_is_driven_by_the_glue_and_answers_like_a_machine() {
    let (page, host) = page();
    let made = page
        .call(&json!({ "op": "mirror", "id": "page", "source": "demo", "endpoint": "ws://relay/arpc/demo", "compression": false }))
        .expect("made");
    let h = made["h"].as_u64().expect("handle");
    // Not connected: mutations fail with their code, reads are empty.
    let e = page
        .call(&json!({ "op": "mutate", "h": h, "kind": "add", "states": ["A"] }))
        .expect_err("not connected");
    assert_eq!(e.code, "unknown_state", "no schema yet: no such state");
    let connected = page
        .call(&json!({ "op": "connected", "h": h, "now": 0.0 }))
        .expect("connected");
    assert_eq!(
        connected["timeout"],
        json!(5000.0),
        "the handshake deadline"
    );
    assert!(matches!(
        messages(&page.take(h as u32))[..],
        [Message::Hello(_)]
    ));

    let welcome = root_welcome();
    let reply = page
        .bytes(h as u32, &frame(&Message::Welcome(welcome)), 10.0)
        .expect("read");
    assert_eq!(
        reply["events"],
        json!([{ "type": "ready", "reconnect": false }])
    );
    let wakes = *host.wakes.lock().expect("lock");
    let pending = page
        .call(&json!({ "op": "mutate", "h": h, "kind": "add", "states": ["A"] }))
        .expect("sent");
    let task = pending["task"].as_u64().expect("waits for the source");
    assert!(*host.wakes.lock().expect("lock") > wakes, "told to flush");
    let [Message::Mutate(request)] = &messages(&page.take(h as u32))[..] else {
        panic!("one mutation");
    };
    let diff = asyncmachine::proto::diff::diff(
        asyncmachine::proto::diff::ClockRef {
            ticks: &[0, 0],
            queue_tick: 0,
        },
        asyncmachine::proto::diff::ClockRef {
            ticks: &[1, 0],
            queue_tick: 1,
        },
        &asyncmachine::proto::Tracked::All,
    );
    let answer = Message::MutateReply(MutateReply {
        id: request.id,
        result: Ok(asyncmachine::machine::Outcome::Executed).into(),
        diff,
    });
    page.bytes(h as u32, &frame(&answer), 20.0).expect("read");
    assert_eq!(
        page.call(&json!({ "op": "poll" })).expect("polled"),
        json!([{ "task": task, "ok": "Executed" }])
    );
    assert_eq!(clock(&page, h), json!([1, 0]));
    let read = page.call(&json!({ "op": "read", "h": h })).expect("read");
    assert_eq!(read["connection"], "ready");

    // Handlers belong to the source, not to a mirror.
    let e = page
        .call(&json!({ "op": "on", "h": h, "handler": "enter", "state": "A", "fn": 0 }))
        .expect_err("not here");
    assert_eq!(e.code, "bad_request");

    let lost = page
        .call(&json!({ "op": "lost", "h": h, "reason": "closed (1006)" }))
        .expect("lost");
    assert_eq!(lost["events"][0]["type"], "closed");
    assert_eq!(lost["timeout"], Json::Null);
    let _ = Duration::ZERO;
}

/// A mirror disposed while connected says goodbye: its bye is kept for the glue's next take,
/// though the handle is gone (the glue sends it, then closes the socket).
#[test]
fn a_disposed_mirror_leaves_its_bye_for_the_glue() {
    let (page, _host) = page();
    let made = page
        .call(&json!({ "op": "mirror", "id": "page", "source": "demo", "endpoint": "ws://relay/arpc/demo", "compression": false }))
        .expect("made");
    let h = made["h"].as_u64().expect("handle");
    page.call(&json!({ "op": "connected", "h": h, "now": 0.0 }))
        .expect("connected");
    let _ = page.take(h as u32);
    let welcome = root_welcome();
    page.bytes(h as u32, &frame(&Message::Welcome(welcome)), 10.0)
        .expect("read");
    page.call(&json!({ "op": "dispose", "h": h }))
        .expect("disposed");
    assert!(
        matches!(messages(&page.take(h as u32))[..], [Message::Bye { .. }]),
        "the bye, once"
    );
    assert!(page.take(h as u32).is_empty(), "taken once");
    let e = page
        .call(&json!({ "op": "read", "h": h }))
        .expect_err("the handle is gone");
    assert_eq!(e.code, "disposed");
}

#[test]
fn a_refusal_says_whether_to_retry() {
    let (page, _host) = page();
    let h = page
        .call(&json!({ "op": "mirror", "source": "demo" }))
        .expect("made")["h"]
        .as_u64()
        .expect("handle") as u32;
    page.call(&json!({ "op": "connected", "h": h, "now": 0.0 }))
        .expect("connected");
    let refusal = asyncmachine::proto::message::Refusal {
        kind: asyncmachine::proto::message::RefusalKind::Auth,
        reason: "wrong token".into(),
    };
    let reply = page
        .bytes(h, &frame(&Message::Refused(refusal)), 1.0)
        .expect("read");
    let event = &reply["events"][0];
    assert_eq!(event["type"], "failed");
    assert_eq!(event["code"], "auth");
    assert_eq!(event["permanent"], true);
}

#[test]
fn a_served_machine_is_mirrored_through_the_glue_commands() {
    let (page, _host) = page();
    let h = machine(&page);
    let s = page
        .call(&json!({ "op": "serve", "h": h, "name": "bar" }))
        .expect("served")["s"]
        .as_u64()
        .expect("server") as u32;
    // A mirror in the same page stands for a node; the test carries the bytes.
    let m = page
        .call(&json!({ "op": "mirror", "id": "node", "source": "listen/bar", "compression": true }))
        .expect("made")["h"]
        .as_u64()
        .expect("handle") as u32;
    page.call(&json!({ "op": "serverOpen", "s": s, "conn": 1, "now": 0.0 }))
        .expect("open");
    page.call(&json!({ "op": "connected", "h": m, "now": 0.0 }))
        .expect("connected");
    let settle = || {
        for _ in 0..50 {
            let pumped = page
                .call(&json!({ "op": "serverPump", "s": s, "now": 1.0 }))
                .expect("pumped");
            assert_eq!(pumped["closed"], json!([]));
            let down = page.server_take(s, 1);
            let up = page.take(m);
            if down.is_empty() && up.is_empty() {
                return;
            }
            if !down.is_empty() {
                page.bytes(m, &down, 1.0).expect("read");
            }
            if !up.is_empty() {
                let reply = page.server_bytes(s, 1, &up, 1.0).expect("read");
                assert_eq!(reply["timeouts"][0][0], json!(1));
            }
        }
        panic!("never quiet");
    };
    settle();
    assert_eq!(
        page.call(&json!({ "op": "read", "h": m })).expect("read")["connection"],
        "ready"
    );
    // The node's mutation runs on the page's machine; the page's own change reaches the node.
    let task = page
        .call(&json!({ "op": "mutate", "h": m, "kind": "add", "states": ["A"] }))
        .expect("sent")["task"]
        .as_u64()
        .expect("pending");
    settle();
    assert_eq!(
        page.call(&json!({ "op": "poll" })).expect("polled"),
        json!([{ "task": task, "ok": "Executed" }])
    );
    assert_eq!(clock(&page, h), json!([1, 0, 0, 0]));
    page.call(&json!({ "op": "mutate", "h": h, "kind": "add", "states": ["C"] }))
        .expect("taken");
    settle();
    assert_eq!(clock(&page, u64::from(m)), json!([1, 0, 1, 0]));
    page.call(&json!({ "op": "serverLost", "s": s, "conn": 1 }))
        .expect("lost");
    let pumped = page
        .call(&json!({ "op": "serverPump", "s": s, "now": 2.0 }))
        .expect("pumped");
    assert_eq!(pumped["timeouts"], json!([]), "no connection left");
}

/// The page's telemetry: a machine's record first, its transitions as lines the collector
/// reads, arguments redacted, a full buffer dropped and counted, and bad commands refused.
#[test]
fn a_page_machine_streams_its_transitions_as_collector_lines() {
    use asyncmachine::telemetry::Record;

    let (page, _host) = page();
    let h = machine(&page);
    let take = |command: Json| {
        let taken = page.call(&command).expect("taken");
        let lines = taken["lines"].as_str().expect("lines").to_owned();
        let records: Vec<Record> = lines
            .lines()
            .map(|l| Record::from_line(l.as_bytes()).expect("a collector reads it"))
            .collect();
        (records, taken["dropped"].as_u64().expect("dropped"))
    };
    assert!(
        page.call(&json!({ "op": "debugTake" })).is_err(),
        "not started"
    );
    for bad in [
        json!({ "op": "debug", "node": "" }),
        json!({ "op": "debug", "capacity": 0 }),
    ] {
        assert!(page.call(&bad).is_err(), "{bad} refused");
    }
    page.call(&json!({ "op": "debug", "node": "tab-1", "capacity": 3 }))
        .expect("started");
    page.call(&json!({ "op": "debugAttach", "h": h, "name": "bar" }))
        .expect("attached");
    page.call(&json!({ "op": "mutate", "h": h, "kind": "add", "states": ["A"], "args": { "token": "s3cret", "n": 1 } }))
        .expect("mutated");

    let (records, dropped) = take(json!({ "op": "debugTake" }));
    assert_eq!(dropped, 0);
    assert_eq!(records.len(), 2, "{records:?}");
    let Record::Machine(m) = &records[0] else {
        panic!("the machine's record first: {records:?}")
    };
    assert_eq!(
        (m.at.node.as_str(), m.at.machine.as_str()),
        ("tab-1", "bar")
    );
    let Record::Transition(t) = &records[1] else {
        panic!("then its transition: {records:?}")
    };
    assert_eq!(t.called, vec!["A".to_owned()]);
    assert_eq!(t.clock, vec![1, 0, 0, 0]);
    assert!(t.time_us > 0);
    let token = t
        .args
        .iter()
        .find(|(k, _)| k == "token")
        .expect("token sent");
    assert_eq!(token.1, "<redacted>");

    // More than the buffer holds before a take: three kept, the rest counted.
    for _ in 0..5 {
        page.call(&json!({ "op": "mutate", "h": h, "kind": "add", "states": ["C"] }))
            .expect("mutated");
    }
    let (records, dropped) = take(json!({ "op": "debugTake" }));
    assert_eq!((records.len(), dropped), (3, 2), "{records:?}");
    // A new connection starts with every machine's record, at its clock now.
    let (records, _) = take(json!({ "op": "debugTake", "hello": true }));
    let Some(Record::Machine(m)) = records.first() else {
        panic!("hello: {records:?}")
    };
    assert_eq!(m.clock, vec![1, 0, 1, 0]);
    // The page's status: its machines as sources (a server-less node), for the console.
    let (records, _) = take(json!({ "op": "debugTake", "status": true }));
    let Some(Record::Status(status)) = records.last() else {
        panic!("status: {records:?}")
    };
    assert_eq!(status.node, "tab-1");
    assert_eq!(status.status.sources.len(), 1);
    assert_eq!(status.status.sources[0].name, "bar");
    assert_eq!(
        status.status.sources[0].active,
        vec!["A".to_owned(), "C".to_owned()]
    );
    page.call(&json!({ "op": "debugStop" })).expect("stopped");
    assert!(page.call(&json!({ "op": "debugTake" })).is_err(), "stopped");
}

/// A root's welcome of a one-state schema [A], nothing active.
fn root_welcome() -> Welcome {
    Welcome {
        ancestry: vec!["root".into()],
        schema: Some(asyncmachine::machine::SchemaDef::of_states(vec![
            asyncmachine::machine::StateDef::new("A"),
        ])),
        snapshot: Snapshot {
            ticks: vec![0, 0],
            queue_tick: 0,
        },
        granted: Granted::default(),
        parent_id: None,
        tags: Vec::new(),
    }
}
