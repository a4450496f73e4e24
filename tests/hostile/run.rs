//! Runs the table against one node: each case in turn, then the checks every case gets
//! (the connection closed as expected, a fresh client is served, memory stayed bounded);
//! failures are collected so that one run lists them all.

use std::time::Duration;

use asyncmachine::proto::Message;
use asyncmachine::proto::message::{MutateResult, RefusalKind, WaitResult};
use tokio::io::AsyncWriteExt;

use crate::bodies::frame;
use crate::cases::{self, Answer, Case, Expect, Input};
use crate::common::raw::{self, Link, PeakRss, RawWs, Received, WsEvent, rss_kib};
use crate::node::{Kind, Node, significant};
use crate::peers;

/// How long the node may take to do what a case expects of it: its own timeouts are at most
/// 500 ms, so this is generous.
pub const CLOSE_BOUND: Duration = Duration::from_secs(3);
/// A whole case, including what the client sends.
const CASE_LIMIT: Duration = Duration::from_secs(20);
/// No single input may raise the process's peak RSS by this much over what it was before it.
const CASE_MEMORY_KIB: u64 = 16 * 1024;
/// Nor may the peak, at any input, be this much over the process's RSS before the suite.
const SUITE_MEMORY_KIB: u64 = 64 * 1024;
/// Cases whose names start with one of these (comma-separated) are skipped: for inputs that
/// abort the whole test process on a node without the fix, so the rest can run meanwhile.
pub const SKIP_VAR: &str = "AM_HOSTILE_SKIP";
/// When set, only cases whose names start with one of these run (to work on a few).
pub const ONLY_VAR: &str = "AM_HOSTILE_ONLY";

/// The comma-separated name prefixes in an environment variable.
fn prefixes(var: &str) -> Vec<String> {
    std::env::var(var)
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// One suite at a time in the whole process: memory is measured for the process, so two
/// inputs at once would blur whose memory it was (and a failing suite's panic, symbolizing
/// its backtrace, takes a hundred megabytes of its own).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs every case of the table that reaches this kind of listener; panics listing every
/// case that failed.
#[allow(
    clippy::print_stderr,
    reason = "the suite prints what it covered, as the issue asks"
)]
pub async fn suite(kind: Kind) {
    let table = cases::table();
    let skip = prefixes(SKIP_VAR);
    let only = prefixes(ONLY_VAR);
    // Held to the end, the panic included.
    let _alone = ONE_AT_A_TIME.lock().await;
    let started = std::time::Instant::now();
    let mut node = Node::start(kind).await;
    let probe = PeakRss::get();
    let baseline = rss_kib();
    let mut failures = Vec::new();
    let mut skipped = Vec::new();
    let mut ran = 0;
    let mut worst = (0u64, String::new());
    let mut took = Vec::new();
    for case in table.iter().filter(|c| c.applies(kind)) {
        let named =
            |prefixes: &[String]| prefixes.iter().any(|p| case.name.starts_with(p.as_str()));
        if named(&skip) || (!only.is_empty() && !named(&only)) {
            skipped.push(case.name.clone());
            continue;
        }
        let before = rss_kib();
        let case_started = std::time::Instant::now();
        probe.reset();
        // On the heap: the futures of a case hold read buffers, too much for a test's stack.
        let outcome = tokio::time::timeout(CASE_LIMIT, Box::pin(run_case(&node, case)))
            .await
            .unwrap_or_else(|_| Err(format!("the case took over {CASE_LIMIT:?}")));
        let peak = probe.peak_kib();
        if let Err(why) = outcome {
            failures.push(format!("{}: {why}", case.name));
        }
        let grew = peak.saturating_sub(before);
        if grew > worst.0 {
            worst = (grew, case.name.clone());
        }
        if grew > CASE_MEMORY_KIB {
            failures.push(format!(
                "{}: peak RSS grew by {} MiB during the input (bound {} MiB)",
                case.name,
                grew / 1024,
                CASE_MEMORY_KIB / 1024
            ));
        }
        if peak.saturating_sub(baseline) > SUITE_MEMORY_KIB {
            failures.push(format!(
                "{}: peak RSS {} MiB over the suite's start (bound {} MiB)",
                case.name,
                peak.saturating_sub(baseline) / 1024,
                SUITE_MEMORY_KIB / 1024
            ));
        }
        if let Err(why) = Box::pin(node.serves_a_fresh_client()).await {
            failures.push(format!("{}: afterwards, {why}", case.name));
        }
        ran += 1;
        took.push((case_started.elapsed(), case.name.as_str()));
    }
    took.sort_unstable_by(|a, b| b.cmp(a));
    let slowest: Vec<String> = took
        .iter()
        .take(8)
        .map(|(t, name)| format!("{name} {} ms", t.as_millis()))
        .collect();
    if let Err(why) = node.watcher_went_on().await {
        failures.push(format!("after the suite: {why}"));
    }
    eprintln!(
        "hostile {}: {ran} inputs run, {} skipped ({SKIP_VAR}, {ONLY_VAR}), {} failed in {:.1?}; \
         RSS {} MiB at the start, {} MiB now; the largest peak growth of one input: \
         {} KiB ({}); memory by {}",
        kind.name(),
        skipped.len(),
        failures.len(),
        started.elapsed(),
        baseline / 1024,
        rss_kib() / 1024,
        worst.0,
        worst.1,
        probe.method(),
    );
    eprintln!(
        "hostile {}: slowest inputs: {}",
        kind.name(),
        slowest.join(", ")
    );
    if !skipped.is_empty() {
        eprintln!("hostile {}: skipped {}", kind.name(), skipped.join(", "));
    }
    assert!(
        failures.is_empty(),
        "{} of {ran} hostile inputs on {} failed:\n  {}",
        failures.len(),
        kind.name(),
        failures.join("\n  ")
    );
}

async fn run_case(node: &Node, case: &Case) -> Result<(), String> {
    match &case.input {
        Input::Stream {
            hello,
            bytes,
            finish,
        } => {
            let mut link = node.dial().await?;
            if let Some(hello) = hello {
                welcomed(&mut link, &frame(&hello.body())).await?;
            }
            if !bytes.is_empty() {
                // The node may close while the rest is on its way.
                let _ = tokio::time::timeout(CLOSE_BOUND, link.send(bytes)).await;
            }
            if *finish {
                let _ = link.finish().await;
            }
            let first = bounded(significant(&mut link)).await?;
            judge(&mut link, first, &case.expect, node.kind).await
        }
        Input::Trickle { bytes, every } => {
            let mut link = node.dial().await?;
            for byte in bytes {
                if link.send(&[*byte]).await.is_err() {
                    break;
                }
                if let Ok(first) = tokio::time::timeout(*every, significant(&mut link)).await {
                    return judge(&mut link, first, &case.expect, node.kind).await;
                }
            }
            let first = bounded(significant(&mut link)).await?;
            judge(&mut link, first, &case.expect, node.kind).await
        }
        Input::WsFrames { hello, bytes } => {
            let mut link = Link::ws(node.ws().await?);
            if *hello {
                welcomed(&mut link, &crate::bodies::hello("hostile")).await?;
            }
            let _ = tokio::time::timeout(CLOSE_BOUND, link.send_ws_raw(bytes)).await;
            let first = bounded(significant(&mut link)).await?;
            judge(&mut link, first, &case.expect, node.kind).await
        }
        Input::Http(bytes) | Input::RelayHttp(bytes) => http(node, bytes, &case.expect).await,
        Input::Tls(bytes) => {
            let mut io = raw::tcp(&node.address()).await.map_err(|e| e.to_string())?;
            let _ = tokio::time::timeout(CLOSE_BOUND, io.write_all(bytes)).await;
            bounded(raw::drain(&mut io)).await
        }
        Input::Datagrams(datagrams) => peers::datagrams(node, datagrams).await,
        Input::Peer(peer) => peers::run(node, *peer).await,
    }
}

/// Sends a hello and requires the welcome.
pub async fn welcomed(link: &mut Link, hello: &[u8]) -> Result<(), String> {
    link.send(hello)
        .await
        .map_err(|e| format!("sending the hello: {e}"))?;
    match bounded(significant(link)).await? {
        Received::Message(Message::Welcome(_)) => Ok(()),
        other => Err(format!(
            "the valid hello got {other:?} instead of a welcome"
        )),
    }
}

/// `Err` when the future does not finish within [`CLOSE_BOUND`].
pub async fn bounded<F: std::future::Future>(f: F) -> Result<F::Output, String> {
    tokio::time::timeout(CLOSE_BOUND, f)
        .await
        .map_err(|_| format!("nothing within {CLOSE_BOUND:?}"))
}

/// Whether what came first, and what followed, is what the case expects.
pub async fn judge(
    link: &mut Link,
    first: Received,
    expect: &Expect,
    kind: Kind,
) -> Result<(), String> {
    use Received::{Ended, Message as M};
    match (expect, first) {
        (Expect::Refused(want), M(Message::Refused(r))) if r.kind == *want => closes(link).await,
        (Expect::RefusedAs(kinds), M(Message::Refused(r))) if kinds.contains(&r.kind) => {
            closes(link).await
        }
        (Expect::TimedOut, M(Message::Refused(r))) if r.kind == RefusalKind::Timeout => {
            closes(link).await
        }
        // A QUIC client that never sent a byte has no stream for a refusal to travel on.
        (Expect::TimedOut, Ended(_)) if kind == Kind::Quic => Ok(()),
        (Expect::Error, M(Message::Error { .. })) => closes(link).await,
        (Expect::Bye(want), M(Message::Bye { reason })) if reason.contains(want) => {
            closes(link).await
        }
        (Expect::Closed | Expect::Cut, Ended(_)) => Ok(()),
        (Expect::Cut, M(Message::Bye { reason })) if reason.contains("idle") => Err(format!(
            "kept until the idle timeout (Bye {reason:?}) instead of closed at once"
        )),
        (Expect::Closed | Expect::Cut, M(Message::Error { .. } | Message::Refused(_))) => {
            closes(link).await
        }
        (Expect::Closed, M(Message::Bye { .. })) => closes(link).await,
        (Expect::Welcome, M(Message::Welcome(_))) => Ok(()),
        (Expect::Reply(answer), M(Message::MutateReply(reply))) => {
            let fits = match answer {
                Answer::Executed => reply.result == MutateResult::Executed,
                Answer::Refused => matches!(reply.result, MutateResult::Refused(_)),
            };
            if !fits {
                return Err(format!("expected {answer:?}, got {:?}", reply.result));
            }
            still_open(link).await
        }
        (Expect::WaitRefused, M(Message::WhenArgsDone { result, .. })) => {
            if !matches!(result, WaitResult::Refused(_)) {
                return Err(format!("expected a refused wait, got {result:?}"));
            }
            still_open(link).await
        }
        (
            Expect::WaitsRefusedThenError,
            M(Message::WhenArgsDone {
                result: WaitResult::Refused(_),
                ..
            }),
        ) => {
            // Refusals until the node has had enough.
            loop {
                match bounded(significant(link)).await? {
                    Received::Message(Message::WhenArgsDone {
                        result: WaitResult::Refused(_),
                        ..
                    }) => {}
                    Received::Message(Message::Error { .. }) => return closes(link).await,
                    other => {
                        return Err(format!(
                            "expected refusals then an Error, got {}",
                            describe(&other)
                        ));
                    }
                }
            }
        }
        (expect, got) => Err(format!("expected {expect:?}, got {}", describe(&got))),
    }
}

fn describe(received: &Received) -> String {
    match received {
        Received::Message(Message::Refused(r)) => format!("Refused({:?}, {:?})", r.kind, r.reason),
        Received::Message(Message::Error { message }) => format!("Error({message:?})"),
        Received::Message(Message::Bye { reason }) => format!("Bye({reason:?})"),
        Received::Message(m) => m.name().to_owned(),
        other => format!("{other:?}"),
    }
}

/// After the last word: the node closes, sending nothing more of note.
pub async fn closes(link: &mut Link) -> Result<(), String> {
    match bounded(significant(link)).await? {
        Received::Ended(_) => Ok(()),
        other => Err(format!(
            "not closed after its last word: then {}",
            describe(&other)
        )),
    }
}

/// The connection still works: a ping is answered.
async fn still_open(link: &mut Link) -> Result<(), String> {
    link.send(&frame(&[10, 42]))
        .await
        .map_err(|e| format!("the connection is gone: {e}"))?;
    loop {
        match bounded(link.next()).await? {
            Received::Message(Message::Pong(42)) => return Ok(()),
            Received::Message(Message::Ping(_) | Message::Diff(_)) => {}
            other => {
                return Err(format!(
                    "no pong on a connection that should live: {other:?}"
                ));
            }
        }
    }
}

/// An HTTP request where an upgrade is expected; judged by the response (if any) and the
/// close.
async fn http(node: &Node, bytes: &[u8], expect: &Expect) -> Result<(), String> {
    let bytes = &with_host(bytes, &node.address());
    let mut io = node.http_stream().await?;
    if !bytes.is_empty() {
        let _ = tokio::time::timeout(CLOSE_BOUND, io.write_all(bytes)).await;
    }
    let response = bounded(raw::read_response(&mut io)).await??;
    match (expect, response) {
        (Expect::Status(want), Some(r)) if r.status == *want => bounded(raw::drain(&mut io)).await,
        (Expect::Closed | Expect::UpgradeOrRefusal, None) => Ok(()),
        (Expect::UpgradeOrRefusal, Some(r)) if r.status >= 400 => {
            bounded(raw::drain(&mut io)).await
        }
        // Upgraded: then the WebSocket must work.
        (Expect::UpgradeOrRefusal, Some(r)) if r.status == 101 => {
            let mut link = Link::ws(RawWs::from_parts(io, r.rest));
            welcomed(&mut link, &crate::bodies::hello("odd-request")).await
        }
        (Expect::Closed, Some(r)) if r.status >= 400 => bounded(raw::drain(&mut io)).await,
        (Expect::Refusal { status, .. }, Some(r)) if r.status == *status => {
            bounded(raw::drain(&mut io)).await
        }
        (Expect::Refusal { close, .. }, Some(r)) if r.status == 101 => {
            let mut ws = RawWs::from_parts(io, r.rest);
            loop {
                match bounded(ws.next()).await? {
                    WsEvent::Close {
                        code: Some(code), ..
                    } if code == *close => return Ok(()),
                    WsEvent::Control => {}
                    WsEvent::Data(data) => {
                        return Err(format!(
                            "upgraded and bridged ({} bytes came through) instead of closed \
                             with {close}",
                            data.len()
                        ));
                    }
                    other => {
                        return Err(format!(
                            "upgraded, then {other:?} instead of a close with {close}"
                        ));
                    }
                }
            }
        }
        (expect, Some(r)) => Err(format!("expected {expect:?}, got {:?}", r.head)),
        (expect, None) => Err(format!(
            "expected {expect:?}, got no response (the connection closed)"
        )),
    }
}

/// The request with the node's address in place of [`cases::HOST`] (its first occurrence).
fn with_host(bytes: &[u8], address: &str) -> Vec<u8> {
    let placeholder = cases::HOST.as_bytes();
    match bytes
        .windows(placeholder.len())
        .position(|w| w == placeholder)
    {
        Some(at) => [
            &bytes[..at],
            address.as_bytes(),
            &bytes[at + placeholder.len()..],
        ]
        .concat(),
        None => bytes.to_vec(),
    }
}
