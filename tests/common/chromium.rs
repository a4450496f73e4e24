//! Headless Chromium (Debian's `chromium`) driven over the DevTools protocol, for the browser
//! tests: launch, open a page, evaluate, wait for a condition.
//!
//! scripts/test.sh installs Chromium when missing and sets AM_REQUIRE_BROWSER=1, so CI always
//! runs the browser tests. Without Chromium and without that variable (a developer's
//! machine), a test says so and does nothing.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::within;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A headless Chromium and one page of it, over the DevTools protocol.
pub struct Chromium {
    child: Child,
    profile: std::path::PathBuf,
    ws: Ws,
    next_id: u64,
    session: Option<String>,
}

pub fn chromium_path() -> Option<std::path::PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.exists())
}

impl Chromium {
    pub async fn launch(path: &std::path::Path) -> Chromium {
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

    pub async fn call(&mut self, method: &str, params: Value) -> Value {
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

    pub async fn open(&mut self, url: &str) {
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

    pub async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
            )
            .await;
        result["result"]["value"].clone()
    }

    /// With `AM_SCREENSHOTS=DIR` set, saves the page as DIR/NAME-1280.png and DIR/NAME-390.png
    /// (a desktop and a phone width) for a person to look at; without it, does nothing.
    pub async fn screenshots(&mut self, name: &str) {
        use base64::Engine as _;
        let Some(dir) = std::env::var_os("AM_SCREENSHOTS") else {
            return;
        };
        std::fs::create_dir_all(&dir).expect("the screenshot directory is writable");
        for (width, height, mobile) in [(1280, 800, false), (390, 844, true)] {
            self.call(
                "Emulation.setDeviceMetricsOverride",
                json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile }),
            )
            .await;
            let shot = self
                .call("Page.captureScreenshot", json!({ "format": "png" }))
                .await;
            let png = base64::engine::general_purpose::STANDARD
                .decode(shot["data"].as_str().expect("a screenshot"))
                .expect("base64 from DevTools");
            let path = std::path::Path::new(&dir).join(format!("{name}-{width}.png"));
            std::fs::write(&path, png).expect("the screenshot is written");
        }
        self.call("Emulation.clearDeviceMetricsOverride", json!({}))
            .await;
    }

    /// Evaluates until the expression is true.
    pub async fn until(&mut self, what: &str, expression: &str) {
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
pub fn chromium_or_skip() -> Option<std::path::PathBuf> {
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
