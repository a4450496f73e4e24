//! Plain TCP. Nagle is off on every socket: frames are small and latency matters more than
//! packet count (the writers batch what is ready into one write already).

use std::io;

use tokio::net::{TcpListener, TcpStream};

use super::{BoxFuture, BoxStream, Endpoint, Handshake, Listener, PeerInfo, Scheme};

pub(super) struct TcpTransportListener {
    listener: TcpListener,
    local: Endpoint,
}

pub(super) async fn bind(address: &str) -> io::Result<TcpTransportListener> {
    let listener = TcpListener::bind(address).await?;
    let local = Endpoint::new(Scheme::Tcp, listener.local_addr()?.to_string());
    Ok(TcpTransportListener { listener, local })
}

pub(super) async fn connect(address: &str) -> io::Result<BoxStream> {
    let stream = TcpStream::connect(address).await?;
    stream.set_nodelay(true)?;
    Ok(Box::new(stream))
}

impl Listener for TcpTransportListener {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<Handshake>> {
        Box::pin(async move {
            let (stream, peer) = self.listener.accept().await?;
            let handshake: Handshake = Box::pin(async move {
                stream.set_nodelay(true)?;
                let stream: BoxStream = Box::new(stream);
                Ok((
                    stream,
                    PeerInfo {
                        address: peer.to_string(),
                        identity: None,
                    },
                ))
            });
            Ok(handshake)
        })
    }

    fn local_endpoint(&self) -> Endpoint {
        self.local.clone()
    }
}
