//! The demo page in a real headless Chromium (Debian's `chromium`), driven over the DevTools
//! protocol: the page mirrors a node through the relay; a change at the root appears in the
//! page; a click in the page reaches the root; state names that look like markup stay text;
//! the relay's refusals reach the page with their reasons.
//!
//! scripts/test.sh installs Chromium when missing and sets AM_REQUIRE_BROWSER=1, so CI always
//! runs this. Without Chromium and without that variable (a developer's machine), the test says
//! so and does nothing.

mod common;

use std::sync::Arc;

use asyncmachine::machine::{Args, Machine, Schema, SchemaDef, StateDef, StateSource};
use asyncmachine::relay::{Relay, RelayConfig, Target};
use asyncmachine::server::ServerConfig;
use common::chromium::{Chromium, chromium_or_skip};
use common::*;
use serde_json::json;

/// A relay (with `config`'s limits and token) in front of a server of `machine`.
async fn relay_for(
    machine: &Machine,
    config: RelayConfig,
) -> (Relay, asyncmachine::server::Server) {
    relay_for_server(machine, ServerConfig::default(), config).await
}

/// A relay in front of a server of `machine` configured as `server` says (its ACL).
async fn relay_for_server(
    machine: &Machine,
    server: ServerConfig,
    config: RelayConfig,
) -> (Relay, asyncmachine::server::Server) {
    let (server, endpoint) = serve(Arc::new(machine.clone()), server, "tcp").await;
    let relay = Relay::start(RelayConfig {
        listen: any_port("ws"),
        targets: vec![Target {
            name: "demo".into(),
            endpoint,
        }],
        ..config
    })
    .await
    .expect("relay starts");
    (relay, server)
}

fn pressed(state: &str) -> String {
    format!(
        "document.querySelector('button[data-state=\"{state}\"]')?.getAttribute('aria-pressed') === 'true'"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_page_mirrors_a_node_and_mutates_it() {
    let Some(path) = chromium_or_skip() else {
        return;
    };
    let machine = Machine::builder(abc_schema()).id("root").build();
    machine.add(&["A"], Args::new()).expect("taken in");
    let (relay, _server) = relay_for(&machine, RelayConfig::default()).await;

    let mut chromium = Chromium::launch(&path).await;
    chromium.open(&relay.page_url()).await;
    chromium
        .until(
            "the page to connect",
            "document.getElementById('status')?.dataset.state === 'ready'",
        )
        .await;
    chromium.until("A active in the page", &pressed("A")).await;
    assert_eq!(
        chromium
            .eval("document.querySelectorAll('#states button').length")
            .await,
        json!(4)
    );

    // A change at the root appears in the page.
    machine.add(&["B"], Args::new()).expect("taken in");
    chromium.until("B active in the page", &pressed("B")).await;
    machine.remove(&["A"], Args::new()).expect("taken in");
    chromium
        .until("A inactive in the page", &format!("!({})", pressed("A")))
        .await;

    // A click in the page reaches the root, and the result comes back.
    chromium
        .eval("document.querySelector('button[data-state=\"C\"]').click()")
        .await;
    within("C at the root", machine.when(&["C"]))
        .await
        .expect("waits");
    chromium
        .until(
            "the page reports the outcome",
            "document.getElementById('log').textContent === 'add C: Executed'",
        )
        .await;
    chromium.until("C active in the page", &pressed("C")).await;
    assert_eq!(machine.active_states(), ["B", "C"]);
    chromium.screenshots("demo").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_names_that_look_like_markup_stay_text() {
    let Some(path) = chromium_or_skip() else {
        return;
    };
    let hostile = r#"<img src=x onerror="window.pwned=1">"#;
    let schema = Schema::new(SchemaDef::of_states(
        [hostile, "<b>bold</b>", "Plain"]
            .map(StateDef::new)
            .to_vec(),
    ))
    .expect("any name is a name");
    let machine = Machine::builder(schema).id("root").build();
    machine.add(&[hostile], Args::new()).expect("taken in");
    let (relay, _server) = relay_for(&machine, RelayConfig::default()).await;
    let mut chromium = Chromium::launch(&path).await;
    chromium.open(&relay.page_url()).await;
    chromium
        .until(
            "the states in the page",
            "document.querySelectorAll('#states button').length === 4",
        )
        .await;
    let names = chromium
        .eval("[...document.querySelectorAll('#states button span')].map((s) => s.textContent)")
        .await;
    assert_eq!(names, json!([hostile, "<b>bold</b>", "Plain", "Exception"]));
    assert_eq!(
        chromium
            .eval("document.querySelectorAll('#states img, #states b').length")
            .await,
        json!(0),
        "no element was made from a name"
    );
    chromium
        .until(
            "the hostile state shown active",
            "document.querySelector('#states button').getAttribute('aria-pressed') === 'true'",
        )
        .await;
    assert_eq!(
        chromium.eval("typeof window.pwned").await,
        json!("undefined")
    );
}

/// The source's ACL in the page: a state it hides is shown as hidden, one it may not mutate
/// as read-only, both disabled; the others stay toggleable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn states_the_acl_hides_or_keeps_from_the_page_are_shown_as_such() {
    let Some(path) = chromium_or_skip() else {
        return;
    };
    let machine = Machine::builder(abc_schema()).id("root").build();
    machine.add(&["B", "C"], Args::new()).expect("taken in");
    let acl = asyncmachine::proto::acl::Acl {
        see: [("*".to_owned(), vec!["A".to_owned(), "B".to_owned()])].into(),
        mutate: [("*".to_owned(), vec!["A".to_owned()])].into(),
        ..Default::default()
    };
    let (relay, _server) = relay_for_server(
        &machine,
        ServerConfig {
            acl,
            ..ServerConfig::default()
        },
        RelayConfig::default(),
    )
    .await;
    let mut chromium = Chromium::launch(&path).await;
    chromium.open(&relay.page_url()).await;
    chromium
        .until(
            "the page to connect",
            "document.getElementById('status')?.dataset.state === 'ready'",
        )
        .await;
    chromium.until("B active in the page", &pressed("B")).await;
    let shown = chromium
        .eval(
            "[...document.querySelectorAll('#states li')].map((li) => { \
               const b = li.querySelector('button'); \
               return [b.dataset.state, li.dataset.access ?? '', b.disabled, b.textContent]; })",
        )
        .await;
    assert_eq!(
        shown,
        json!([
            ["A", "", false, "Atick 0"],
            ["B", "read-only", true, "Btick 1 · read-only"],
            ["C", "hidden", true, "Chidden by ACL"],
            ["Exception", "hidden", true, "Exceptionhidden by ACL"],
        ]),
        "C is active at the root, yet hidden here"
    );
    chromium.screenshots("demo-acl").await;
    // The toggleable one still works.
    chromium
        .eval("document.querySelector('button[data-state=\"A\"]').click()")
        .await;
    within("A at the root", machine.when(&["A"]))
        .await
        .expect("waits");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_reach_the_page_with_their_reasons() {
    let Some(path) = chromium_or_skip() else {
        return;
    };
    let machine = Machine::builder(abc_schema()).id("root").build();
    let (relay, _server) = relay_for(
        &machine,
        RelayConfig {
            token: Some("s3cret".into()),
            ..RelayConfig::default()
        },
    )
    .await;
    let mut chromium = Chromium::launch(&path).await;
    // A wrong token in the page's address: the page says so and does not go on.
    chromium
        .open(&format!("{}?token=wrong", relay.page_url()))
        .await;
    chromium
        .until(
            "the page to show the refusal",
            "document.getElementById('status')?.dataset.state === 'refused'",
        )
        .await;
    let shown = chromium
        .eval("document.getElementById('reason').textContent")
        .await;
    assert!(
        shown
            .as_str()
            .is_some_and(|s| s.contains("401") && s.contains("not this relay's token")),
        "{shown}"
    );
    // The WebSocket route: Chromium reads the close code and reason, and am.js stops there.
    let ws = relay.local_endpoint().address.clone();
    let outcome = chromium
        .eval(&format!(
            r#"(async () => {{
                const {{ Mirror }} = await import("/am.js");
                const mirror = new Mirror("ws://{ws}/arpc/demo?token=wrong");
                const seen = [];
                const refused = new Promise((resolve) => mirror.addEventListener("status", (e) => {{
                    seen.push(e.detail.state);
                    if (e.detail.state === "refused") resolve(e.detail);
                }}));
                mirror.start();
                const detail = await refused;
                return {{ code: detail.code, reason: detail.reason, seen }};
            }})()"#
        ))
        .await;
    assert_eq!(outcome["code"], json!(4401), "{outcome}");
    assert!(
        outcome["reason"]
            .as_str()
            .is_some_and(|r| r.contains("not this relay's token")),
        "{outcome}"
    );
    assert_eq!(
        outcome["seen"],
        json!(["connecting", "refused"]),
        "no retry"
    );

    // A transient refusal (the relay is full) is shown and retried.
    let (full, _server) = relay_for(
        &machine,
        RelayConfig {
            max_connections: 0,
            ..RelayConfig::default()
        },
    )
    .await;
    chromium.open(&full.page_url()).await;
    chromium
        .until(
            "the page to show the relay is full",
            "/^Disconnected \\(4503\\); retrying\\.the relay is full/.test(document.getElementById('reason')?.textContent)",
        )
        .await;
}
