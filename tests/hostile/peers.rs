//! Misbehaving peers whose input is a behaviour rather than bytes: peers that never read,
//! messages that never end, requests trickled a byte at a time, QUIC connections that misuse
//! their stream, datagrams that are not QUIC. Each checks what the node does about it.

use std::sync::atomic::Ordering;
use std::time::Duration;

use asyncmachine::machine::{Args, StateSource};
use asyncmachine::proto::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::bodies::hello;
use crate::cases::{Expect, Peer};
use crate::common::raw::{self, Link, OP_CONTINUATION, OP_PING, Received, WsFrame};
use crate::node::{Kind, MAX_FRAME, Node, significant};
use crate::run::{CLOSE_BOUND, bounded, closes, judge, welcomed};

pub async fn run(node: &Node, peer: Peer) -> Result<(), String> {
    match peer {
        Peer::NeverReadsPongs => never_reads_pongs(node).await,
        Peer::NeverReadsPushes => never_reads_pushes(node).await,
        Peer::PingsButNeverReads => pings_but_never_reads(node).await,
        Peer::EndlessContinuation => endless_continuation(node).await,
        Peer::MessageOverMaxFrame => message_over_max_frame(node).await,
        Peer::WsPingFlood => ws_ping_flood(node).await,
        Peer::HttpTrickle => {
            let io = node.http_stream().await?;
            let request = raw::upgrade_request(&node.address(), "/worker", &[]);
            trickle_until_closed(io, &request).await
        }
        Peer::TlsTrickle => {
            let io = raw::tcp(&node.address()).await.map_err(|e| e.to_string())?;
            trickle_until_closed(io, &raw::client_hello()).await
        }
        Peer::QuicSilentStream
        | Peer::QuicNoStream
        | Peer::QuicEmptyStream
        | Peer::QuicResetMidHello
        | Peer::QuicStopSending
        | Peer::QuicAlpn(_) => quic(node, peer).await,
    }
}

/// Reads everything until the link ends; what was read does not matter.
async fn drained(link: &mut Link) -> Result<(), String> {
    bounded(link.until_ended()).await.map(drop)
}

/// How long a node may take to work through what a peer that never reads left in its
/// buffers before its writes back up.
const BACKLOG_BOUND: Duration = Duration::from_secs(10);

/// Sends pings and never reads the pongs: the node stops reading once its writes back up,
/// and drops the client at its write deadline.
async fn never_reads_pongs(node: &Node) -> Result<(), String> {
    let id = "deaf";
    let mut link = node.dial().await?;
    welcomed(&mut link, &hello(id)).await?;
    // 64 KiB of pings, each with the widest nonce: the pongs (11 bytes each) fill the
    // client's buffers with the fewest pings for the node to work through.
    let ping = crate::bodies::message_frame(&Message::Ping(u64::MAX));
    let pings: Vec<u8> = ping.repeat(64 * 1024 / ping.len());
    let mut sent = 0usize;
    loop {
        match tokio::time::timeout(Duration::from_millis(300), link.send(&pings)).await {
            Ok(Ok(())) => sent += pings.len(),
            // Closed, or blocked: the node stopped reading.
            Ok(Err(_)) | Err(_) => break,
        }
        if sent > 256 << 20 {
            return Err("the node read 256 MiB of pings whose pongs nobody read".into());
        }
    }
    // Reading now would unblock the node: the client list says when it gave up instead (the
    // server has no event for a client leaving, so it is polled, within a bound).
    let gone = async {
        while node.server.clients().iter().any(|c| c.id == id) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    // The node first works through the megabytes of pings its buffers hold (seconds, in a
    // debug build), then its writes back up and the write deadline drops the client.
    tokio::time::timeout(BACKLOG_BOUND, gone)
        .await
        .map_err(|_| {
            format!("not dropped within {BACKLOG_BOUND:?} of its {sent} bytes of pings")
        })?;
    drained(&mut link)
        .await
        .map_err(|_| "the node dropped the client but its connection stayed open".into())
}

/// Handshakes, then never reads while the node sends it payloads and diffs: dropped at the
/// write deadline.
async fn never_reads_pushes(node: &Node) -> Result<(), String> {
    let id = "never-reads";
    let mut link = node.dial().await?;
    welcomed(&mut link, &hello(id)).await?;
    let mut pace = tokio::time::interval(Duration::from_millis(20));
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let dropped = tokio::time::timeout(Duration::from_secs(10), async {
        while node.server.clients().iter().any(|c| c.id == id) {
            // Fewer payloads than the client's queue holds before the deadline passes, so the
            // write deadline (not the full queue) is what drops it.
            let _ = node
                .server
                .send_payload("worker", Some(id), "bulk", vec![7; 32 * 1024]);
            let flip = if node.source.is1("B") {
                node.source.remove(&["B"], Args::new())
            } else {
                node.source.add(&["B"], Args::new())
            };
            flip.map_err(|e| e.to_string())?;
            pace.tick().await;
        }
        Ok::<(), String>(())
    })
    .await;
    match dropped {
        Ok(result) => result?,
        Err(_) => return Err("the node kept a client that reads nothing for 10 s".into()),
    }
    drained(&mut link)
        .await
        .map_err(|_| "the node dropped the client but its connection stayed open".into())
}

/// Through the relay: a browser that pings (so it is never idle) but never reads while the
/// node pushes megabytes. The relay stops reading the node once its writes to the browser
/// back up, so only the relay's own write deadline can free the bridge and its slot.
async fn pings_but_never_reads(node: &Node) -> Result<(), String> {
    let relay = node
        .relay
        .as_ref()
        .ok_or("no relay in front of this node")?;
    let id = "pings-but-deaf";
    // Earlier inputs' connections end first, so that the count below is this one's alone.
    let settled = async {
        while relay.open_connections() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(CLOSE_BOUND, settled)
        .await
        .map_err(|_| "earlier connections through the relay did not end".to_owned())?;
    let mut link = Link::ws(node.ws().await?);
    welcomed(&mut link, &hello(id)).await?;
    let ping = WsFrame::new(OP_PING, vec![1; 4])
        .mask(Some([9; 4]))
        .encode();
    let mut pace = tokio::time::interval(Duration::from_millis(20));
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let freed = tokio::time::timeout(Duration::from_secs(30), async {
        let mut tick = 0u32;
        while relay.open_connections() > 0 {
            // Payloads while the node still has the relay as a client, fast enough to fill
            // the buffers on the way before the node drops the relay; pings every 200 ms.
            for _ in 0..2 {
                let _ = node
                    .server
                    .send_payload("worker", Some(id), "bulk", vec![7; 48 * 1024]);
            }
            if tick.is_multiple_of(10) {
                // A ping that cannot be written means the relay already gave up.
                if tokio::time::timeout(Duration::from_millis(50), link.send_ws_raw(&ping))
                    .await
                    .is_err()
                {
                    tokio::task::yield_now().await;
                }
            }
            tick += 1;
            pace.tick().await;
        }
    })
    .await;
    if freed.is_err() {
        return Err(
            "the relay kept a bridge whose browser pings but reads nothing for 30 s".into(),
        );
    }
    drained(&mut link)
        .await
        .map_err(|_| "the relay freed the slot but the connection stayed open".into())
}

/// A WebSocket message that never ends: the node must cut it long before it holds megabytes.
async fn endless_continuation(node: &Node) -> Result<(), String> {
    let mut link = Link::ws(node.ws().await?);
    // After the hello: before it, the handshake timeout would cut the message short anyway.
    welcomed(&mut link, &hello("endless")).await?;
    let zero_key = Some([0u8; 4]);
    let first = WsFrame::binary(vec![0u8; 1024])
        .fin(false)
        .mask(zero_key)
        .encode();
    let more = WsFrame::new(OP_CONTINUATION, vec![0u8; 64 * 1024])
        .fin(false)
        .mask(zero_key)
        .encode();
    let _ = link.send_ws_raw(&first).await;
    let mut sent = 1024usize;
    while sent < 80 << 20 {
        match tokio::time::timeout(Duration::from_secs(1), link.send_ws_raw(&more)).await {
            Ok(Ok(())) => sent += 64 * 1024,
            Ok(Err(_)) | Err(_) => break,
        }
    }
    let first = bounded(significant(&mut link)).await?;
    judge(&mut link, first, &Expect::Cut, node.kind)
        .await
        .map_err(|e| format!("after {} KiB of one message: {e}", sent / 1024))
}

/// One binary message of twice max_frame, every byte of it valid pings: a node that takes it
/// answers pongs; one whose WebSocket limits follow max_frame closes the connection.
async fn message_over_max_frame(node: &Node) -> Result<(), String> {
    let mut link = Link::ws(node.ws().await?);
    welcomed(&mut link, &hello("big-message")).await?;
    // 3-byte pings, and one 5-byte ping (nonce 251 takes 3 bytes) to land on the size.
    let size = 2 * MAX_FRAME;
    let mut payload = [0x04, 0x0a, 0x00].repeat((size - 5) / 3);
    payload.extend_from_slice(&[0x08, 0x0a, 0xfb, 0xfb, 0x00]);
    assert_eq!(payload.len(), size, "max_frame changed: adjust the padding");
    let _ = link.send_ws_raw(&WsFrame::binary(payload).encode()).await;
    loop {
        match bounded(link.next()).await? {
            Received::Ended(_) => return Ok(()),
            Received::Message(Message::Pong(_)) => {
                return Err(format!(
                    "the node took a WebSocket message of {size} bytes (max_frame {MAX_FRAME}) \
                     and answered the pings in it"
                ));
            }
            Received::Message(Message::Bye { reason }) if reason.contains("idle") => {
                return Err(format!("closed only by the idle timeout ({reason:?})"));
            }
            Received::Message(_) => {}
            Received::Garbled(e) => return Err(format!("the node sent garbage: {e}")),
        }
    }
}

/// Thousands of WebSocket pings the client never reads the pongs of: the node keeps at most
/// a pong's worth of memory for them, and the connection still serves the protocol.
async fn ws_ping_flood(node: &Node) -> Result<(), String> {
    let mut link = Link::ws(node.ws().await?);
    welcomed(&mut link, &hello("pinger")).await?;
    let ping = WsFrame::new(OP_PING, vec![0x55; 125]).encode();
    let flood = ping.repeat(10_000);
    let _ = tokio::time::timeout(CLOSE_BOUND, link.send_ws_raw(&flood)).await;
    // Either the connection still serves the protocol (a ping of ours is answered), or the
    // node dropped a peer that would not read its pongs; memory is checked either way.
    if link
        .send(&crate::bodies::message_frame(&Message::Ping(7)))
        .await
        .is_err()
    {
        return Ok(());
    }
    loop {
        match bounded(link.next()).await? {
            Received::Message(Message::Pong(7)) | Received::Ended(_) => return Ok(()),
            Received::Message(Message::Ping(_) | Message::Diff(_) | Message::Pong(_)) => {}
            other => return Err(format!("after the flood, {other:?} instead of a pong")),
        }
    }
}

/// Sends `bytes` one per 100 ms until the node closes; the node's handshake timeout must
/// close it long before the last byte.
async fn trickle_until_closed(
    mut io: asyncmachine::transport::BoxStream,
    bytes: &[u8],
) -> Result<(), String> {
    let mut chunk = vec![0u8; 4096];
    for (i, byte) in bytes.iter().enumerate() {
        if io.write_all(&[*byte]).await.is_err() {
            return Ok(());
        }
        if i * 100 > CLOSE_BOUND.as_millis() as usize {
            return Err(format!(
                "still open after {i} bytes trickled over {} ms",
                i * 100
            ));
        }
        match tokio::time::timeout(Duration::from_millis(100), io.read(&mut chunk)).await {
            Ok(Ok(0) | Err(_)) => return Ok(()),
            // A response (an HTTP error, a TLS alert): then the close.
            Ok(Ok(_)) => return bounded(raw::drain(&mut io)).await,
            Err(_) => {}
        }
    }
    Err("the whole trickle was taken".into())
}

/// QUIC connections that misuse their one stream, or never open it.
async fn quic(node: &Node, peer: Peer) -> Result<(), String> {
    let address = node.address();
    let alpn: &[u8] = match peer {
        Peer::QuicAlpn(alpn) => alpn,
        _ => b"arpc/1",
    };
    let offered: Vec<&[u8]> = if alpn.is_empty() { vec![] } else { vec![alpn] };
    let (_endpoint, connection) = match raw::quic(&address, &offered).await {
        Ok(connected) => connected,
        Err(e) if matches!(peer, Peer::QuicAlpn(_)) => {
            return if e.contains("application protocol") || e.contains("120") {
                Ok(())
            } else {
                Err(format!("refused, but not for its ALPN: {e}"))
            };
        }
        Err(e) => return Err(format!("cannot connect: {e}")),
    };
    let mut streams = None;
    match peer {
        Peer::QuicAlpn(_) => {
            return Err(format!(
                "a handshake offering ALPN {:?} was accepted",
                String::from_utf8_lossy(alpn)
            ));
        }
        Peer::QuicNoStream => {}
        Peer::QuicSilentStream => {
            streams = Some(connection.open_bi().await.map_err(|e| e.to_string())?);
        }
        Peer::QuicEmptyStream => {
            let (mut send, recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
            send.finish().map_err(|e| e.to_string())?;
            streams = Some((send, recv));
        }
        Peer::QuicResetMidHello => {
            let (mut send, recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
            send.write_all(&hello("reset")[..5])
                .await
                .map_err(|e| e.to_string())?;
            send.reset(0u8.into()).map_err(|e| e.to_string())?;
            streams = Some((send, recv));
        }
        Peer::QuicStopSending => {
            let (mut send, mut recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
            recv.stop(0u8.into()).map_err(|e| e.to_string())?;
            send.write_all(&hello("stopper"))
                .await
                .map_err(|e| e.to_string())?;
            streams = Some((send, recv));
        }
        _ => unreachable!("only QUIC peers come here"),
    }
    let why = bounded(connection.closed()).await?;
    drop(streams);
    if matches!(peer, Peer::QuicNoStream | Peer::QuicSilentStream)
        && !why.to_string().contains("hello")
    {
        return Err(format!("closed without saying why: {why}"));
    }
    Ok(())
}

/// Datagrams that are not (valid) QUIC: no connection comes of them.
pub async fn datagrams(node: &Node, datagrams: &[Vec<u8>]) -> Result<(), String> {
    assert_eq!(node.kind, Kind::Quic, "datagrams go to QUIC listeners");
    let before = node.server.stats().connections.load(Ordering::Relaxed);
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    for datagram in datagrams {
        socket
            .send_to(datagram, node.address())
            .await
            .map_err(|e| format!("sending a datagram: {e}"))?;
    }
    // A connection after them, on the same path: once it is served, the datagrams were seen.
    let mut link = node.dial().await?;
    welcomed(&mut link, &hello("after-datagrams")).await?;
    let after = node.server.stats().connections.load(Ordering::Relaxed);
    let _ = link
        .send(&crate::bodies::message_frame(&Message::Bye {
            reason: "done".into(),
        }))
        .await;
    let _ = closes(&mut link).await;
    if after != before + 1 {
        return Err(format!(
            "the node counted {} connections for the datagrams and one client",
            after - before
        ));
    }
    Ok(())
}
