//! The demo page in a real headless Chromium (Debian's `chromium`), driven over the DevTools
//! protocol: the page mirrors a node through the relay; a change at the root appears in the
//! page; a click in the page reaches the root.
//!
//! scripts/test.sh installs Chromium when missing and sets AM_REQUIRE_BROWSER=1, so CI always
//! runs this. Without Chromium and without that variable (a developer's machine), the test says
//! so and does nothing.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use asyncmachine::machine::{Args, Machine, StateSource};
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
        let profile = std::env::temp_dir().join(format!("am-chromium-{}", std::process::id()));
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

fn pressed(state: &str) -> String {
    format!(
        "document.querySelector('button[data-state=\"{state}\"]')?.getAttribute('aria-pressed') === 'true'"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_page_mirrors_a_node_and_mutates_it() {
    let Some(path) = chromium_path() else {
        assert!(
            std::env::var_os("AM_REQUIRE_BROWSER").is_none(),
            "Chromium is required (AM_REQUIRE_BROWSER) but missing: apt-get install chromium, or run scripts/test.sh"
        );
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            b"chromium not installed: browser test not run\n",
        );
        return;
    };
    let machine = Machine::builder(abc_schema()).id("root").build();
    machine.add(&["A"], Args::new()).expect("taken in");
    let (_server, endpoint) =
        serve(Arc::new(machine.clone()), ServerConfig::default(), "tcp").await;
    let relay = Relay::start(RelayConfig {
        listen: any_port("ws"),
        targets: vec![Target {
            name: "demo".into(),
            endpoint,
        }],
        ..RelayConfig::default()
    })
    .await
    .expect("relay starts");

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
