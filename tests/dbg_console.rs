//! am-dbg's web console in headless Chromium: a tree of depth three reports to a collector;
//! the console shows a leaf's mutation in its log within 100 ms, and stepped back it shows
//! the earlier clock on every machine; a deep link opens a machine at a transition; text
//! from nodes stays text. Chromium is required (scripts/test.sh installs it).

mod common;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use asyncmachine::machine::{Args, Machine, StateSource};
use asyncmachine::server::{Server, ServerConfig};
use asyncmachine::telemetry::collector::{Collector, CollectorConfig};
use asyncmachine::telemetry::{History, Telemetry, TelemetryConfig};
use asyncmachine::transport::Endpoint;
use common::chromium::{Chromium, chromium_path};
use common::*;
use serde_json::json;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Telemetry of one "node" (named as its mirror's client id) serving `source` as `worker`.
fn report(
    collector: &Collector,
    node: &str,
    source: Arc<dyn StateSource>,
    server: &Server,
    at: &Endpoint,
) -> Telemetry {
    let config = TelemetryConfig::new(&format!("tcp://{}", collector.telemetry_addr()))
        .expect("valid address");
    let telemetry = Telemetry::start(node, config);
    let status = server.clone();
    telemetry.set_status(
        Arc::new(move || status.status()),
        vec![at.without_machine().to_string()],
    );
    telemetry.attach("worker", source);
    telemetry
}

/// With `AM_SCREENSHOTS=DIR`, the page at 1280 and 390 px wide, as DIR/NAME-desktop.png and
/// DIR/NAME-mobile.png (for a person to look at).
async fn screenshots(chromium: &mut Chromium, name: &str) {
    use base64::Engine as _;
    let Some(dir) = std::env::var_os("AM_SCREENSHOTS") else {
        return;
    };
    for (label, width) in [("desktop", 1280), ("mobile", 390)] {
        chromium
            .call(
                "Emulation.setDeviceMetricsOverride",
                json!({"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": width < 500}),
            )
            .await;
        // Two frames: the console redraws on the next animation frame after a resize.
        chromium
            .eval("new Promise(r => requestAnimationFrame(() => { window.dispatchEvent(new Event('resize')); requestAnimationFrame(() => setTimeout(r, 300)); }))")
            .await;
        let shot = chromium
            .call(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true}),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("image data"))
            .expect("base64");
        let path = std::path::Path::new(&dir).join(format!("{name}-{label}.png"));
        std::fs::write(&path, png).expect("screenshot written");
    }
    chromium
        .call("Emulation.clearDeviceMetricsOverride", json!({}))
        .await;
}

fn ticks_of(state: &str) -> String {
    format!(
        "[...document.querySelectorAll('#machines .card')].map(c => c.querySelector('li[data-state=\"{state}\"]')?.dataset.tick).join(',')"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_a_leafs_mutation_live_and_steps_back_across_machines() {
    let path = chromium_path().expect(
        "Chromium is required for this test: apt-get install chromium (scripts/test.sh does)",
    );
    let collector = collector().await;

    // root <- a <- b <- c over TCP, each "node" reporting.
    let root = Machine::builder(abc_schema()).id("root").build();
    let (root_server, root_at) =
        serve(Arc::new(root.clone()), ServerConfig::default(), "tcp").await;
    let a = mirror(&root_at, "a").await;
    let (a_server, a_at) = serve(Arc::new(a.clone()), ServerConfig::default(), "tcp").await;
    let b = mirror(&a_at, "b").await;
    let (b_server, b_at) = serve(Arc::new(b.clone()), ServerConfig::default(), "tcp").await;
    let c = mirror(&b_at, "c").await;
    let (c_server, c_at) = serve(Arc::new(c.clone()), ServerConfig::default(), "tcp").await;
    let senders = [
        report(
            &collector,
            "root",
            Arc::new(root.clone()),
            &root_server,
            &root_at,
        ),
        report(&collector, "a", Arc::new(a.clone()), &a_server, &a_at),
        report(&collector, "b", Arc::new(b.clone()), &b_server, &b_at),
        report(&collector, "c", Arc::new(c.clone()), &c_server, &c_at),
    ];
    eventually("every machine's first record", || {
        collector.with_history(|h| h.machines().filter(|m| m.info.is_some()).count() == 4)
    })
    .await;
    root.add(&["A"], Args::new()).expect("taken in");
    converged(&c, &root.clock()).await;

    let mut chromium = Chromium::launch(&path).await;
    chromium.open(&collector.console_url()).await;
    chromium
        .until(
            "the console to be live",
            "document.getElementById('conn')?.dataset.state === 'live'",
        )
        .await;
    chromium
        .until(
            "four machine cards with A active",
            &format!("{} === '1,1,1,1'", ticks_of("A")),
        )
        .await;
    chromium
        .until(
            "the tree drawn with three links",
            "document.querySelectorAll('#tree .edge').length === 3",
        )
        .await;

    // The leaf's mutation, live: its row appears within 100 ms of the call.
    let asked = now_ms();
    within(
        "the leaf's mutation",
        c.add(&["B"], Args::new().with("note", "<b>bold</b>")),
    )
    .await
    .expect("runs at the root");
    let sent_row =
        "document.querySelector('#log tr[data-machine=\"c/worker\"][data-kind=\"sent\"]')";
    chromium
        .until("the leaf's mutation in the log", &format!("!!{sent_row}"))
        .await;
    let shown = chromium
        .eval(&format!("Number({sent_row}.dataset.shownMs)"))
        .await
        .as_u64()
        .expect("a time");
    assert!(
        shown.saturating_sub(asked) <= 100,
        "the leaf's mutation took {} ms to reach the console's log",
        shown.saturating_sub(asked)
    );
    chromium
        .until(
            "B on every machine",
            &format!("{} === '1,1,1,1'", ticks_of("B")),
        )
        .await;
    // The argument is text, not markup; the root's row names the hops.
    assert_eq!(
        chromium
            .eval("document.querySelector('#log b') === null")
            .await,
        json!(true)
    );
    let root_row = "[...document.querySelectorAll('#log tr[data-machine=\"root/worker\"][data-kind=\"add\"]')].find(r => r.children[4].firstChild.textContent === 'B')";
    chromium
        .until(
            "the hops of the leaf's mutation",
            &format!("({root_row})?.lastElementChild.textContent === 'a ← b ← c'"),
        )
        .await;

    // Time travel: at the root's transition, then one step back (across machines): every
    // machine shows the clock before B.
    let root_seq = chromium
        .eval(&format!("Number(({root_row}).dataset.seq)"))
        .await
        .as_u64()
        .expect("a sequence");
    chromium.eval(&format!("({root_row}).click()")).await;
    chromium
        .until(
            "at the root's transition",
            &format!("document.getElementById('position').textContent === 'at #{root_seq}'"),
        )
        .await;
    chromium
        .eval("document.getElementById('back').click()")
        .await;
    chromium
        .until("one step back", &format!("document.getElementById('position').textContent !== 'at #{root_seq}' && document.body.classList.contains('past')"))
        .await;
    chromium
        .until(
            "B inactive on every machine",
            &format!("{} === '0,0,0,0'", ticks_of("B")),
        )
        .await;
    assert_eq!(chromium.eval(&ticks_of("A")).await, json!("1,1,1,1"));
    screenshots(&mut chromium, "console-past").await;
    // Live again: the present clock.
    chromium
        .eval("document.getElementById('live').click()")
        .await;
    chromium
        .until(
            "B again on every machine",
            &format!("{} === '1,1,1,1'", ticks_of("B")),
        )
        .await;
    screenshots(&mut chromium, "console-live").await;

    // A deep link names a machine and a transition.
    let mut linked = Chromium::launch(&path).await;
    linked
        .open(&format!(
            "{}#m=c/worker&at={root_seq}",
            collector.console_url()
        ))
        .await;
    linked
        .until(
            "the linked transition",
            &format!("document.getElementById('position').textContent === 'at #{root_seq}'"),
        )
        .await;
    linked
        .until(
            "the linked machine selected",
            "document.querySelector('#machines .card.sel')?.dataset.key === 'c/worker'",
        )
        .await;
    // At the root's transition the leaf had not heard of B yet; the root had.
    linked
        .until(
            "each machine's clock at that moment",
            &format!("{} === '1,0,0,0'", ticks_of("B")),
        )
        .await;

    for s in &senders {
        s.shutdown().await;
    }
    collector.shutdown();
}

/// The console reconnects by itself to a collector that restarted (here from an export of the
/// first one's history), catches up what it missed, and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_reconnects_and_shows_what_it_missed() {
    let path = chromium_path().expect(
        "Chromium is required for this test: apt-get install chromium (scripts/test.sh does)",
    );
    let config = |console: String| CollectorConfig {
        telemetry: "127.0.0.1:0".into(),
        console,
        max_entries: 10_000,
    };
    let first = Collector::start(config("127.0.0.1:0".into()), History::default())
        .await
        .expect("collector starts");
    let root = Machine::builder(abc_schema()).id("root").build();
    let (server, at) = serve(Arc::new(root.clone()), ServerConfig::default(), "tcp").await;
    let sender = report(&first, "root", Arc::new(root.clone()), &server, &at);
    root.add(&["A"], Args::new()).expect("taken in");
    let mut chromium = Chromium::launch(&path).await;
    chromium.open(&first.console_url()).await;
    chromium
        .until("A in the console", &format!("{} === '1'", ticks_of("A")))
        .await;

    // The collector goes away; the console says so.
    let dir = std::env::temp_dir().join(format!("am-dbg-console-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a directory");
    let dump = dir.join("history.amdbg");
    first.export(&dump).expect("exports");
    first.shutdown();
    sender.shutdown().await;
    chromium
        .until(
            "the console to notice",
            "document.getElementById('conn').dataset.state === 'reconnecting'",
        )
        .await;

    // While the console cannot reach it (its port held by a listener that answers nothing),
    // a collector with that history hears more: C.
    let holder = tokio::net::TcpListener::bind(first.console_addr())
        .await
        .expect("the console's port, held");
    let hold = tokio::spawn(async move {
        while let Ok((socket, _)) = holder.accept().await {
            drop(socket);
        }
    });
    let imported = asyncmachine::telemetry::collector::import(&dump, 10_000).expect("imports");
    let meanwhile = Collector::start(config("127.0.0.1:0".into()), imported)
        .await
        .expect("collector starts");
    let imported_entries = meanwhile.with_history(|h| h.entries().len());
    let sender = report(&meanwhile, "root", Arc::new(root.clone()), &server, &at);
    // The new sender is connected once something of it arrives: a change made before that
    // could be dropped with the sender's unsent buffer, not a thing this test is about.
    eventually("the new sender at the collector", || {
        meanwhile.with_history(|h| h.entries().len() > imported_entries)
    })
    .await;
    root.add(&["C"], Args::new()).expect("taken in");
    eventually("C at the collector", || {
        meanwhile.with_history(|h| {
            h.machine("root/worker")
                .is_some_and(|m| m.clock.get(2) == Some(&1))
        })
    })
    .await;
    sender.shutdown().await;
    meanwhile.export(&dump).expect("exports");
    meanwhile.shutdown();
    // Back on the console's address with all of it.
    hold.abort();
    let _ = hold.await;
    let imported = asyncmachine::telemetry::collector::import(&dump, 10_000).expect("imports");
    let second = within("the console's port free again", async {
        loop {
            match Collector::start(config(first.console_addr().to_string()), imported.clone()).await
            {
                Ok(collector) => return collector,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        }
    })
    .await;
    chromium
        .until(
            "live again",
            "document.getElementById('conn').dataset.state === 'live'",
        )
        .await;
    chromium
        .until(
            "C, which happened while it was away",
            &format!("{} === '1'", ticks_of("C")),
        )
        .await;
    chromium
        .until("the banner saying what was caught up", "/reconnected: [1-9]\\d* entries caught up/.test(document.getElementById('banner').textContent)")
        .await;
    // Nothing shown twice: sequences in the log are strictly increasing.
    assert_eq!(
        chromium
            .eval("[...document.querySelectorAll('#log tbody tr')].map(r => Number(r.dataset.seq)).every((s, i, a) => i === 0 || s > a[i - 1])")
            .await,
        json!(true)
    );
    second.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}
