//! The foo/bar example (asyncmachine-go's WASM example, re-created) in headless Chromium: a
//! node serves `foo` and mirrors the page's `bar` through the relay's listen route; the page
//! (relay/web/foobar.html) hosts `bar`, offers it, and mirrors `foo`. foo's handler answers a
//! message with a reply to bar, bar's handler (JavaScript, in the page) answers one with a
//! reply to foo: a mutation started in the page reaches foo and comes back as a mutation of
//! bar, and the reverse. A node started from a topology that names `ws://relay/listen/bar` as
//! its upstream mirrors the page's bar too. A second tab that offers bar too is refused with
//! the reason. With a collector behind the relay, the page's machines report to it beside the
//! node's, and a mutation the page sends is linked to the transition it led to.

mod common;

use std::sync::Arc;

use asyncmachine::machine::{Args, Machine, Schema, SchemaDef, StateDef, StateSource};
use asyncmachine::mirror::{ConnState, Mirror, MirrorConfig};
use asyncmachine::relay::{Relay, RelayConfig, Target};
use asyncmachine::server::ServerConfig;
use asyncmachine::telemetry::{Record, Telemetry, TelemetryConfig};
use common::chromium::{Chromium, chromium_or_skip};
use common::*;
use serde_json::json;

/// foo's and bar's schema, as relay/web/foobar.js has it.
fn schema() -> Arc<Schema> {
    Arc::new(
        Schema::new(SchemaDef::of_states(vec![
            StateDef::new("Msg").multi(),
            StateDef::new("Reply").multi(),
        ]))
        .expect("valid"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foo_and_bar_mutate_each_other_through_the_relay() {
    let Some(path) = chromium_or_skip() else {
        return;
    };
    // The node: foo served over tcp, behind the relay as the target "foo".
    let foo_machine = Machine::builder(schema()).id("foo").build();
    let (_server, endpoint) = serve(
        Arc::new(foo_machine.clone()),
        ServerConfig::default(),
        "tcp",
    )
    .await;
    let relay = Relay::start(RelayConfig {
        listen: any_port("ws"),
        targets: vec![Target {
            name: "foo".into(),
            endpoint,
        }],
        offers: vec!["bar".into()],
        ..RelayConfig::default()
    })
    .await
    .expect("relay starts");
    let address = relay.local_endpoint().address.clone();
    // foo mirrors the page's bar; it retries until the page offers it.
    let bar_mirror = Mirror::start(
        &format!("ws://{address}/listen/bar")
            .parse()
            .expect("endpoint"),
        MirrorConfig {
            client_id: "foo".into(),
            schema: Some(schema()),
            ..MirrorConfig::default()
        },
    )
    .expect("mirror starts");
    // foo's handler: a message to foo is answered with a reply to bar.
    let to_bar = bar_mirror.clone();
    foo_machine
        .on_state("Msg", move |e| {
            let n = e
                .arg("n")
                .cloned()
                .unwrap_or(asyncmachine::machine::Value::Int(0));
            let reply = to_bar.add(&["Reply"], Args::new().with("from", "foo").with("n", n));
            tokio::spawn(reply);
        })
        .expect("bound");

    // A node run from a topology file that names the page's machine as its upstream, as a
    // deployment would: it mirrors bar through the relay's listen route, then serves it.
    let topology = format!(
        "[schemas.foobar]\nfile = \"{schemas}/foobar.toml\"\n\n[[nodes]]\nname = \"watcher\"\nlisten = [\"tcp://127.0.0.1:0\"]\nmachines = [{{ name = \"bar\", schema = \"foobar\", upstream = \"ws://{address}/listen/bar\" }}]\n",
        schemas = concat!(env!("CARGO_MANIFEST_DIR"), "/topologies/schemas"),
    );
    let plan = asyncmachine::topology::parse(std::path::Path::new("inline.toml"), &topology)
        .expect("a valid topology");
    let watcher = within(
        "the watcher node",
        asyncmachine::node::start_node(plan.node("watcher").expect("planned")),
    )
    .await
    .expect("starts");
    let watched_bar = watcher.machine("bar").expect("the node's mirror of bar");

    let mut chromium = Chromium::launch(&path).await;
    let page = format!("http://{address}/foobar.html");
    chromium.open(&page).await;
    chromium
        .until(
            "the page to offer bar and mirror foo",
            "window.foobar?.offer.state === 'offering' && window.foobar?.foo.state === 'ready'",
        )
        .await;
    within(
        "foo's mirror of bar",
        bar_mirror.wait_connection(ConnState::Ready),
    )
    .await;
    assert_eq!(relay.offered(), ["bar"]);
    assert_eq!(
        bar_mirror.ancestry(),
        ["foo", "bar"],
        "bar is the page's machine"
    );

    // Page -> foo -> bar: the page messages foo; foo's handler replies to the page's bar.
    chromium
        .eval("window.foobar.foo.add('Msg', { n: 1 })")
        .await;
    within(
        "foo got the message",
        foo_machine.when_tick_reaches("Msg", 1),
    )
    .await
    .expect("waits");
    chromium
        .until(
            "bar's reply from foo, in the page",
            "window.foobar.bar.tick('Reply') === 1 && document.getElementById('bar-Reply').textContent === '1'",
        )
        .await;
    within(
        "the reply at foo's mirror of bar",
        bar_mirror.when(&["Reply"]),
    )
    .await
    .expect("waits");

    // foo -> bar -> foo: the node messages bar; bar's handler (JS) replies to foo.
    bar_mirror
        .add(&["Msg"], Args::new().with("n", 2))
        .await
        .expect("taken in by the page");
    within("foo's reply from bar", foo_machine.when(&["Reply"]))
        .await
        .expect("waits");
    assert_eq!(foo_machine.tick("Reply"), 1);
    within(
        "the topology node's mirror of bar follows the page",
        watched_bar.when_tick_reaches("Msg", 1),
    )
    .await
    .expect("waits");
    assert_eq!(watched_bar.ancestry(), ["watcher", "bar"]);
    chromium
        .until(
            "the page's mirror of foo shows it",
            "document.getElementById('foo-Reply').textContent === '1'",
        )
        .await;
    chromium.screenshots("foobar").await;

    // A second tab: bar is offered already, so its offer is refused with the reason; it still
    // mirrors foo.
    chromium.open(&page).await;
    chromium
        .until(
            "the second tab's offer refused, foo mirrored",
            "window.foobar?.offer.state === 'refused' && window.foobar?.foo.state === 'ready'",
        )
        .await;
    let reason = chromium
        .eval("document.getElementById('reason').textContent")
        .await;
    assert!(
        reason
            .as_str()
            .is_some_and(|r| r.contains("offered by another page")),
        "{reason}"
    );
    chromium.screenshots("foobar-second-tab").await;
    assert_eq!(relay.offered(), ["bar"], "the first tab keeps it");
    assert_eq!(json!(foo_machine.tick("Msg")), json!(1));
}

/// The page's bar and its mirror of foo report to the collector the relay bridges to (target
/// "dbg"), as the node's foo does: one history for the page and the node; the page's mutation
/// of foo is recorded where it was sent (the page's mirror) and where it ran (foo), linked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_reports_its_machines_to_the_collector_through_the_relay() {
    let Some(path) = chromium_or_skip() else {
        return;
    };
    let collector = collector().await;
    let foo_machine = Machine::builder(schema()).id("foo").build();
    let (server, endpoint) = serve(
        Arc::new(foo_machine.clone()),
        ServerConfig::default(),
        "tcp",
    )
    .await;
    let telemetry = Telemetry::start(
        "foo-node",
        TelemetryConfig::new(&format!("tcp://{}", collector.telemetry_addr())).expect("address"),
    );
    // The server's status names its clients: the console links the page's mirror by it.
    let listen = vec![endpoint.without_machine().to_string()];
    telemetry.set_status(Arc::new(move || server.status()), listen);
    // Under the name its server serves it as (as a node attaches its machines).
    telemetry.attach("worker", Arc::new(foo_machine.clone()));
    let relay = Relay::start(RelayConfig {
        listen: any_port("ws"),
        targets: vec![
            Target {
                name: "foo".into(),
                endpoint,
            },
            Target {
                name: "dbg".into(),
                endpoint: format!("tcp://{}", collector.telemetry_addr())
                    .parse()
                    .expect("endpoint"),
            },
        ],
        offers: vec!["bar".into()],
        ..RelayConfig::default()
    })
    .await
    .expect("relay starts");
    let address = relay.local_endpoint().address.clone();

    let mut chromium = Chromium::launch(&path).await;
    chromium
        .open(&format!("http://{address}/foobar.html"))
        .await;
    chromium
        .until(
            "the page to mirror foo and send telemetry",
            "window.foobar?.foo.state === 'ready' && window.foobar?.debugging?.state === 'sending'",
        )
        .await;
    let node = chromium.eval("window.foobar.debugging.node").await;
    let node = node.as_str().expect("the page's node name").to_owned();
    let (page_bar, page_foo) = (format!("{node}/bar"), format!("{node}/foo"));
    eventually("the page's machines and foo known to the collector", || {
        collector.with_history(|h| {
            [page_bar.as_str(), page_foo.as_str(), "foo-node/worker"]
                .iter()
                .all(|k| h.machine(k).is_some_and(|m| m.info.is_some()))
        })
    })
    .await;

    // The page hosts bar: a transition of it, made by the page's JavaScript.
    chromium
        .eval("window.foobar.bar.add('Reply', { n: 7 })")
        .await;
    // The page's mirror sends Msg to foo: sent in the page, run at the node, linked.
    chromium
        .eval("window.foobar.foo.add('Msg', { n: 1 })")
        .await;
    eventually(
        "bar's transition, the page's sent Msg and foo's Msg",
        || {
            collector.with_history(|h| {
                let mut bar_reply = false;
                let mut sent = false;
                let mut ran = None;
                for e in h.entries() {
                    match &e.record {
                        Record::Transition(t)
                            if t.at.key() == page_bar && t.called == ["Reply"] =>
                        {
                            bar_reply = t.args.iter().any(|(k, v)| k == "n" && v == "7");
                        }
                        Record::Sent(s) if s.at.key() == page_foo && s.called == ["Msg"] => {
                            sent = true;
                        }
                        Record::Transition(t)
                            if t.at.key() == "foo-node/worker" && t.called == ["Msg"] =>
                        {
                            ran = Some(e.seq);
                        }
                        _ => {}
                    }
                }
                bar_reply && sent && ran.is_some_and(|seq| !h.hops(seq).is_empty())
            })
        },
    )
    .await;
    assert!(
        chromium
            .eval("window.foobar.debugging.dropped")
            .await
            .as_u64()
            == Some(0)
    );

    // The console (in a browser of its own: the page stays open, its mirror a client of foo)
    // draws the page as a node below foo's, linked through the relay, the link ready (from the
    // page's status).
    let mut console = Chromium::launch(&path).await;
    console.open(&collector.console_url()).await;
    console
        .until(
            "the page's node linked to foo-node in the console's tree",
            &format!(
                "[...document.querySelectorAll('#tree .node .title')].some(t => t.textContent === '{node}') && document.querySelector('#tree path.edge.ready') !== null"
            ),
        )
        .await;
    console.screenshots("console-with-page").await;
    telemetry.shutdown().await;
}
