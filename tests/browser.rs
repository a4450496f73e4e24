//! The demo page in a real headless Chromium (Debian's `chromium`), driven over the DevTools
//! protocol: the page mirrors a node through the relay; a change at the root appears in the
//! page; a click in the page reaches the root; state names that look like markup stay text;
//! the relay's refusals reach the page with their reasons.
//!
//! scripts/test.sh installs Chromium when missing and sets AM_REQUIRE_BROWSER=1, so CI always
//! runs this. Without Chromium and without that variable (a developer's machine), the test says
//! so and does nothing.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use asyncmachine::machine::{Args, Machine, Schema, SchemaDef, StateDef, StateSource};
use asyncmachine::relay::{Relay, RelayConfig, Target};
use asyncmachine::server::ServerConfig;
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as WsMessage;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A headless Chromium and one page of it, over the DevTools protocol.
struct Chromium {
    child: Child,
    profile: std::path::PathBuf,
    ws: Ws,
    next_id: u64,
    session: Option<String>,
}

fn chromium_path() -> Option<std::path::PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.exists())
}

impl Chromium {
    async fn launch(path: &std::path::Path) -> Chromium {
        // One profile per browser: the tests of this binary run at once.
        static LAUNCHED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = LAUNCHED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let profile = std::env::temp_dir().join(format!("am-chromium-{}-{n}", std::process::id()));
        let mut child = Command::new(path)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-port=0",
                &format!("--user-data-dir={}", profile.display()),
                "about:blank",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chromium starts");
        let stderr = child.stderr.take().expect("piped");
        // Chromium prints its DevTools address on stderr; read it on a thread (a blocking pipe).
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.split("DevTools listening on ").nth(1)
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(url.trim().to_owned());
                }
            }
        });
        let url = within("chromium's DevTools address", rx)
            .await
            .expect("chromium printed it");
        let (ws, _) = within("DevTools connect", tokio_tungstenite::connect_async(url))
            .await
            .expect("connects");
        Chromium {
            child,
            profile,
            ws,
            next_id: 1,
            session: None,
        }
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut request = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = &self.session {
            request["sessionId"] = json!(session);
        }
        within(
            "devtools send",
            self.ws.send(WsMessage::text(request.to_string())),
        )
        .await
        .expect("sends");
        within(method, async {
            loop {
                let Some(Ok(WsMessage::Text(text))) = self.ws.next().await else {
                    continue;
                };
                let reply: Value = serde_json::from_str(&text).expect("DevTools speaks JSON");
                if reply["id"] == json!(id) {
                    assert!(reply.get("error").is_none(), "{method} failed: {reply}");
                    return reply["result"].clone();
                }
            }
        })
        .await
    }

    async fn open(&mut self, url: &str) {
        let target = self
            .call("Target.createTarget", json!({ "url": url }))
            .await;
        let attached = self
            .call(
                "Target.attachToTarget",
                json!({ "targetId": target["targetId"], "flatten": true }),
            )
            .await;
        self.session = attached["sessionId"].as_str().map(str::to_owned);
    }

    async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
            )
            .await;
        result["result"]["value"].clone()
    }

    /// Evaluates until the expression is true.
    async fn until(&mut self, what: &str, expression: &str) {
        within(what, async {
            while self.eval(expression).await != json!(true) {
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
        .await;
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Chromium's path, or `None` (and a note) on a machine without it unless CI requires it.
fn chromium_or_skip() -> Option<std::path::PathBuf> {
    let path = chromium_path();
    if path.is_none() {
        assert!(
            std::env::var_os("AM_REQUIRE_BROWSER").is_none(),
            "Chromium is required (AM_REQUIRE_BROWSER) but missing: apt-get install chromium, or run scripts/test.sh"
        );
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            b"chromium not installed: browser test not run\n",
        );
    }
    path
}

/// A relay (with `config`'s limits and token) in front of a server of `machine`.
async fn relay_for(
    machine: &Machine,
    config: RelayConfig,
) -> (Relay, asyncmachine::server::Server) {
    let (server, endpoint) = serve(Arc::new(machine.clone()), ServerConfig::default(), "tcp").await;
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
