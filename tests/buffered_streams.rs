//! A stream that keeps what its socket cannot take yet, as TLS and WebSocket streams do (rustls,
//! tungstenite): a write succeeds into the stream's buffer, and only a flush moves it on. The
//! server writes answers and pushes with writes that do not wait; what such a write leaves in
//! the buffer must still reach the client once the socket takes bytes again, with nothing more
//! to send and no keepalive to carry it (both are a minute away here).

mod common;

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use asyncmachine::machine::{Args, Machine, Outcome, StateSource};
use asyncmachine::mirror::{Mirror, MirrorConfig};
use asyncmachine::proto::config::Limits;
use asyncmachine::server::{Server, ServerConfig};
use asyncmachine::transport::{
    self, BoxFuture, BoxStream, Endpoint, Handshake, Listener, TransportConfig,
};
use common::*;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Whether the sockets behind every [`Buffering`] stream take bytes, and who waits for them to.
#[derive(Default)]
struct Gate {
    shut: AtomicBool,
    waiting: Mutex<Option<Waker>>,
    /// Bytes written into the streams' buffers and not yet passed on.
    held: AtomicUsize,
}

impl Gate {
    fn shut(&self) {
        self.shut.store(true, Ordering::SeqCst);
    }

    /// The sockets take bytes again: whoever's flush waits is woken, as a socket's
    /// "writable" wakes the last task that polled it.
    fn open(&self) {
        self.shut.store(false, Ordering::SeqCst);
        if let Some(waker) = self.waiting.lock().expect("not poisoned").take() {
            waker.wake();
        }
    }
}

/// Takes every write into its own buffer and passes the buffer on when the gate is open.
struct Buffering {
    inner: BoxStream,
    buffer: Vec<u8>,
    gate: Arc<Gate>,
}

impl Buffering {
    /// Passes the buffer on as far as the inner stream takes it; pending while the gate is
    /// shut, remembering who asked.
    fn pass_on(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.buffer.is_empty() {
            if self.gate.shut.load(Ordering::SeqCst) {
                *self.gate.waiting.lock().expect("not poisoned") = Some(cx.waker().clone());
                return Poll::Pending;
            }
            let n = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buffer))?;
            self.buffer.drain(..n);
            self.gate.held.fetch_sub(n, Ordering::SeqCst);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Buffering {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.buffer.extend_from_slice(bytes);
        self.gate.held.fetch_add(bytes.len(), Ordering::SeqCst);
        // As rustls does: the bytes are taken whether or not the socket takes them now.
        if let Poll::Ready(Err(e)) = self.pass_on(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(bytes.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.pass_on(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.pass_on(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl AsyncRead for Buffering {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

/// A mem:// listener whose streams are [`Buffering`] behind one gate.
struct GatedListener {
    inner: Box<dyn Listener>,
    gate: Arc<Gate>,
}

impl Listener for GatedListener {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<Handshake>> {
        let gate = self.gate.clone();
        Box::pin(async move {
            let handshake = self.inner.accept().await?;
            let gated: Handshake = Box::pin(async move {
                let (inner, peer) = handshake.await?;
                let stream: BoxStream = Box::new(Buffering {
                    inner,
                    buffer: Vec::new(),
                    gate,
                });
                Ok((stream, peer))
            });
            Ok(gated)
        })
    }

    fn local_endpoint(&self) -> Endpoint {
        self.inner.local_endpoint()
    }
}

/// Pings a minute apart at both ends: none comes to flush a buffer during the test.
fn quiet() -> Limits {
    Limits {
        keepalive: Duration::from_secs(60),
        idle_timeout: Duration::from_secs(120),
        ..Limits::default()
    }
}

async fn served(machine: &Machine) -> (Server, Arc<Gate>, Mirror) {
    let limits = quiet();
    let server = Server::new(ServerConfig {
        limits: limits.clone(),
        ..ServerConfig::default()
    });
    server
        .add_source("worker", Arc::new(machine.clone()))
        .expect("first source");
    let listener = transport::bind(
        &"mem://0".parse().expect("an endpoint"),
        &TransportConfig::default(),
        limits.max_frame,
    )
    .await
    .expect("binds");
    let gate = Arc::new(Gate::default());
    let endpoint = server
        .serve(Box::new(GatedListener {
            inner: listener,
            gate: gate.clone(),
        }))
        .expect("serves");
    let mirror = within(
        "the mirror to connect",
        Mirror::connect(
            &endpoint.with_machine("worker"),
            MirrorConfig {
                keepalive: limits.keepalive,
                idle_timeout: limits.idle_timeout,
                ..mirror_config("leaf")
            },
        ),
    )
    .await
    .expect("connects");
    (server, gate, mirror)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_left_in_the_streams_buffer_reaches_the_client_when_the_socket_drains() {
    let machine = Machine::builder(abc_schema()).id("root").build();
    let (_server, gate, mirror) = served(&machine).await;
    gate.shut();
    let add = mirror.add(&["A"], Args::new());
    within("A at the root", machine.when(&["A"]))
        .await
        .expect("waits");
    eventually("the answer in the stream's buffer", || {
        gate.held.load(Ordering::SeqCst) > 0
    })
    .await;
    gate.open();
    assert_eq!(within("the answer", add).await, Ok(Outcome::Executed));
    assert_eq!(gate.held.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_left_in_the_streams_buffer_reaches_the_client_when_the_socket_drains() {
    let machine = Machine::builder(abc_schema()).id("root").build();
    let (_server, gate, mirror) = served(&machine).await;
    gate.shut();
    machine.add(&["B"], Args::new()).expect("taken in");
    eventually("the push in the stream's buffer", || {
        gate.held.load(Ordering::SeqCst) > 0
    })
    .await;
    gate.open();
    converged(&mirror, &machine.clock()).await;
}
