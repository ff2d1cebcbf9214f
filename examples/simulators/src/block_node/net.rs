//! The node's sockets: a listener it can close at once, and accepted
//! connections it can cut (for [`kill`](super::BlockNode::kill) and
//! [`Action::Disconnect`](super::Action::Disconnect)).

use std::collections::HashMap;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_stream::Stream;
use tonic::transport::server::Connected;

use super::{Shared, lock};

/// The node's listener and live connections.
#[derive(Default)]
pub(super) struct Net {
    /// The listener of the running server (taken to close it).
    pub listener: Option<Arc<Mutex<Option<TcpListener>>>>,
    /// The running server.
    pub server: Option<tokio::task::JoinHandle<()>>,
    /// A second handle on each accepted socket, to shut it down.
    pub conns: HashMap<u64, std::net::TcpStream>,
    next_conn: u64,
}

impl Net {
    /// Cut connection `id`.
    pub fn cut(&mut self, id: u64) {
        if let Some(conn) = self.conns.remove(&id) {
            let _ = conn.shutdown(Shutdown::Both);
        }
    }
}

/// Bind `addr` with `SO_REUSEADDR` (so a killed node's port can be bound again at once).
pub(super) fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Which connection a call came on (a request extension).
#[derive(Debug, Clone, Copy)]
pub(super) struct ConnInfo {
    /// The connection's number.
    pub id: u64,
    /// The publisher's address.
    pub peer: Option<SocketAddr>,
}

/// Accepted connections, registered with the node; ends once the listener is taken.
pub(super) struct Incoming {
    pub listener: Arc<Mutex<Option<TcpListener>>>,
    pub shared: Arc<Shared>,
}

impl Stream for Incoming {
    type Item = io::Result<Conn>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        // The slot's lock is not held while registering (kill takes the two locks the other way).
        let accepted = match lock(&self.listener).as_ref() {
            None => return Poll::Ready(None),
            Some(listener) => listener.poll_accept(cx),
        };
        match accepted {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Ready(Ok((stream, peer))) => Poll::Ready(Some(register(&self.shared, &self.listener, stream, peer))),
        }
    }
}

/// Keep a second handle on `stream` so the node can cut it; refuse it if the
/// node was killed since it was accepted.
fn register(
    shared: &Arc<Shared>,
    slot: &Arc<Mutex<Option<TcpListener>>>,
    stream: TcpStream,
    peer: SocketAddr,
) -> io::Result<Conn> {
    stream.set_nodelay(true)?;
    let std = stream.into_std()?;
    let handle = std.try_clone()?;
    let io = TcpStream::from_std(std)?;
    let mut net = lock(&shared.net);
    if !net.listener.as_ref().is_some_and(|live| Arc::ptr_eq(live, slot)) {
        return Err(io::Error::other("the block node was killed"));
    }
    let id = net.next_conn;
    net.next_conn += 1;
    net.conns.insert(id, handle);
    Ok(Conn { io, info: ConnInfo { id, peer: Some(peer) }, shared: Arc::downgrade(shared) })
}

/// An accepted connection; forgets its second handle when dropped (so the
/// socket really closes).
pub(super) struct Conn {
    io: TcpStream,
    info: ConnInfo,
    shared: Weak<Shared>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.upgrade() {
            lock(&shared.net).conns.remove(&self.info.id);
        }
    }
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info
    }
}

impl AsyncRead for Conn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
