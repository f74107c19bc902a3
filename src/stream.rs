//! A connection on either side of cachet: plain TCP, TLS over TCP, or a Unix socket.
//!
//! Plain TCP and Unix sockets keep their zero-cost split (`into_split`: two handles on
//! one socket); only TLS goes through `tokio::io::split`, whose halves share the TLS
//! state behind a lock.
//! The halves are enums, so the plain path costs one branch per read or write.
//!
//! A TLS write may leave encrypted bytes inside rustls when the socket is full, and
//! nothing sends them until the next write or a flush. Writers that stop writing must
//! therefore flush: [`WriteHalf::write_all_flushed`] for request/response writers,
//! [`WriteHalf::write_or_flush`] with [`WriteHalf::needs_flush`] for a select loop.
//! For plain TCP, flushing is never needed and costs nothing.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpStream, UnixStream, unix};
use tokio_rustls::TlsStream;

type Tls = TlsStream<TcpStream>;

/// One connection, before it is split.
#[derive(Debug)]
pub enum Stream {
    Plain(TcpStream),
    /// Boxed: the TLS state is large, and plain connections should not carry its size.
    Tls(Box<Tls>),
    Unix(UnixStream),
}

/// Who a client is, for the log: its address, or a Unix socket's client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Tcp(std::net::SocketAddr),
    Unix,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Tcp(a) => a.fmt(f),
            Peer::Unix => f.write_str("unix"),
        }
    }
}

impl From<TcpStream> for Stream {
    fn from(s: TcpStream) -> Stream {
        Stream::Plain(s)
    }
}

impl From<tokio_rustls::server::TlsStream<TcpStream>> for Stream {
    fn from(s: tokio_rustls::server::TlsStream<TcpStream>) -> Stream {
        Stream::Tls(Box::new(TlsStream::Server(s)))
    }
}

impl From<tokio_rustls::client::TlsStream<TcpStream>> for Stream {
    fn from(s: tokio_rustls::client::TlsStream<TcpStream>) -> Stream {
        Stream::Tls(Box::new(TlsStream::Client(s)))
    }
}

impl Stream {
    fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Stream::Plain(s) => Some(s),
            Stream::Tls(s) => Some(s.get_ref().0),
            Stream::Unix(_) => None,
        }
    }

    /// Whether the connection is TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    /// Nagle off or on; nothing to do on a Unix socket.
    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        self.tcp().map_or(Ok(()), |s| s.set_nodelay(nodelay))
    }

    /// This end's address (an upstream connection's, as Redis lists it in `CLIENT LIST`);
    /// `None` on a Unix socket.
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.tcp()?.local_addr().ok()
    }

    /// Whether an idle connection is still usable: nothing to read (a closed one
    /// reads EOF; one with unexpected bytes waiting is not idle). Never waits, and reads
    /// nothing, so a TLS record stays intact.
    pub fn idle_and_open(&self) -> bool {
        let mut probe = [0u8; 1];
        let mut buf = ReadBuf::new(&mut probe);
        let mut cx = Context::from_waker(Waker::noop());
        match self {
            Stream::Plain(s) => matches!(s.poll_peek(&mut cx, &mut buf), Poll::Pending),
            Stream::Tls(s) => matches!(s.get_ref().0.poll_peek(&mut cx, &mut buf), Poll::Pending),
            // The socket is non-blocking: an idle one has nothing to peek.
            Stream::Unix(s) => {
                let mut probe = [std::mem::MaybeUninit::<u8>::uninit()];
                matches!(
                    socket2::SockRef::from(s).peek(&mut probe),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock
                )
            }
        }
    }

    /// A read half and a write half that can be used from one task concurrently.
    pub fn split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Stream::Plain(s) => {
                let (rd, wr) = s.into_split();
                (ReadHalf::Plain(rd), WriteHalf::new(WriteInner::Plain(wr)))
            }
            Stream::Tls(s) => {
                let (rd, wr) = tokio::io::split(*s);
                (ReadHalf::Tls(rd), WriteHalf::new(WriteInner::Tls(wr)))
            }
            Stream::Unix(s) => {
                let (rd, wr) = s.into_split();
                (ReadHalf::Unix(rd), WriteHalf::new(WriteInner::Unix(wr)))
            }
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// The reading half of a split [`Stream`].
pub enum ReadHalf {
    Plain(OwnedReadHalf),
    Tls(tokio::io::ReadHalf<Tls>),
    Unix(unix::OwnedReadHalf),
}

impl std::fmt::Debug for ReadHalf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ReadHalf::Plain(_) => "ReadHalf::Plain",
            ReadHalf::Tls(_) => "ReadHalf::Tls",
            ReadHalf::Unix(_) => "ReadHalf::Unix",
        })
    }
}

impl ReadHalf {
    /// The whole stream again; `None` if the halves are not from one split.
    pub fn unsplit(self, wr: WriteHalf) -> Option<Stream> {
        match (self, wr.inner) {
            (ReadHalf::Plain(rd), WriteInner::Plain(wr)) => rd.reunite(wr).ok().map(Stream::Plain),
            (ReadHalf::Tls(rd), WriteInner::Tls(wr)) if rd.is_pair_of(&wr) => {
                Some(Stream::Tls(Box::new(rd.unsplit(wr))))
            }
            (ReadHalf::Unix(rd), WriteInner::Unix(wr)) => rd.reunite(wr).ok().map(Stream::Unix),
            _ => None,
        }
    }
}

impl AsyncRead for ReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadHalf::Plain(r) => Pin::new(r).poll_read(cx, buf),
            ReadHalf::Tls(r) => Pin::new(r).poll_read(cx, buf),
            ReadHalf::Unix(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

enum WriteInner {
    Plain(OwnedWriteHalf),
    Tls(tokio::io::WriteHalf<Tls>),
    Unix(unix::OwnedWriteHalf),
}

/// The writing half of a split [`Stream`].
pub struct WriteHalf {
    inner: WriteInner,
    /// TLS bytes may be waiting inside rustls since the last write (never for plain).
    unflushed: bool,
}

impl std::fmt::Debug for WriteHalf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.inner {
            WriteInner::Plain(_) => "WriteHalf::Plain",
            WriteInner::Tls(_) => "WriteHalf::Tls",
            WriteInner::Unix(_) => "WriteHalf::Unix",
        })
    }
}

impl WriteHalf {
    fn new(inner: WriteInner) -> WriteHalf {
        WriteHalf {
            inner,
            unflushed: false,
        }
    }

    /// Whether a write since the last flush may have left bytes unsent.
    pub fn needs_flush(&self) -> bool {
        self.unflushed
    }

    /// Writes all of `buf` and, for TLS, pushes it out of rustls: for writers that
    /// then wait for an answer.
    pub async fn write_all_flushed(&mut self, buf: &[u8]) -> io::Result<()> {
        self.write_all(buf).await?;
        if self.unflushed {
            self.flush().await?;
        }
        Ok(())
    }

    /// Writes what the socket takes now without waiting (`WouldBlock` when it takes
    /// nothing). Plain TCP only: a TLS stream always answers `WouldBlock`, and its
    /// writer goes through [`WriteHalf::write_or_flush`].
    pub fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match &self.inner {
            WriteInner::Plain(w) => w.try_write(buf),
            WriteInner::Unix(w) => w.try_write(buf),
            WriteInner::Tls(_) => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    /// Writes some of `buf`; with nothing to write, flushes. For a writer that polls
    /// this in a loop (`if !buf.is_empty() || needs_flush()`): dropping it midway
    /// loses nothing, since a flush can simply be started again.
    pub async fn write_or_flush(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            self.flush().await.map(|()| 0)
        } else {
            self.write(buf).await
        }
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match &mut this.inner {
            WriteInner::Plain(w) => Pin::new(w).poll_write(cx, buf),
            WriteInner::Unix(w) => Pin::new(w).poll_write(cx, buf),
            WriteInner::Tls(w) => {
                let r = Pin::new(w).poll_write(cx, buf);
                if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
                    this.unflushed = true;
                }
                r
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match &mut this.inner {
            WriteInner::Plain(w) => Pin::new(w).poll_flush(cx),
            WriteInner::Unix(w) => Pin::new(w).poll_flush(cx),
            WriteInner::Tls(w) => {
                let r = Pin::new(w).poll_flush(cx);
                if matches!(r, Poll::Ready(Ok(()))) {
                    this.unflushed = false;
                }
                r
            }
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            WriteInner::Plain(w) => Pin::new(w).poll_shutdown(cx),
            WriteInner::Unix(w) => Pin::new(w).poll_shutdown(cx),
            WriteInner::Tls(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use rustls::{ClientConfig, RootCertStore, ServerConfig};
    use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpSocket};
    use tokio::time::timeout;
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    use super::Stream;

    /// Reads until nothing arrives for `quiet`; returns how many bytes came.
    async fn drain(rd: &mut (impl AsyncReadExt + Unpin), quiet: Duration) -> usize {
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0;
        while let Ok(Ok(n)) = timeout(quiet, rd.read(&mut buf)).await {
            if n == 0 {
                break;
            }
            total += n;
        }
        total
    }

    /// Why writers must flush a TLS stream: once the socket is full, bytes a write has
    /// accepted can wait inside rustls until the next write or a flush, and a reader
    /// never sees them otherwise. `needs_flush` says so, and a flush delivers them.
    #[tokio::test]
    async fn accepted_tls_bytes_need_a_flush_once_the_socket_is_full() {
        let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let cert = generated.cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            generated.signing_key.serialize_der(),
        ));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(cert).unwrap();
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_send_buffer_size(4096).unwrap();
        let (tcp, accepted) = tokio::join!(
            socket.connect(listener.local_addr().unwrap()),
            listener.accept()
        );
        let name = ServerName::try_from("localhost").unwrap();
        let (client_tls, server_tls) = tokio::join!(
            TlsConnector::from(Arc::new(client)).connect(name, tcp.unwrap()),
            TlsAcceptor::from(Arc::new(server)).accept(accepted.unwrap().0)
        );
        let (_rd, mut wr) = Stream::from(client_tls.unwrap()).split();
        let mut reader = server_tls.unwrap();
        assert!(!wr.needs_flush());

        // Write, without the peer reading, until a write cannot proceed.
        let chunk = vec![7u8; 16 * 1024];
        let mut accepted = 0;
        while let Ok(written) = timeout(Duration::from_millis(200), wr.write(&chunk)).await {
            accepted += written.unwrap();
        }
        assert!(wr.needs_flush());
        let received = drain(&mut reader, Duration::from_millis(300)).await;
        assert!(
            received < accepted,
            "{received} of {accepted} without a flush"
        );

        let (flushed, rest) = tokio::join!(
            timeout(Duration::from_secs(5), wr.flush()),
            drain(&mut reader, Duration::from_millis(500))
        );
        flushed.unwrap().unwrap();
        assert_eq!(received + rest, accepted);
        assert!(!wr.needs_flush());
    }
}
