//! Accepting connections: plain HTTP or HTTPS, each connection's peer (network address and,
//! with mutual TLS, the client certificate's subject) attached to its requests, a cap on open
//! connections, handshake, header and body timeouts against slow clients, and a graceful
//! shutdown that lets requests in flight finish.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::tls::{certificate_subject, Tls};

/// What clients may hold of the server (slow-loris protection among others).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Connections served at once; more wait in the listen backlog until one closes.
    pub max_connections: usize,
    /// Time to complete the TLS handshake and then to send each request's headers (also how
    /// long an idle keep-alive connection stays open); slower clients are disconnected.
    pub header_timeout: Duration,
    /// Time to send a request body, from its headers on; a slower client gets 408 and the
    /// connection is closed.
    pub body_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl ConnectionLimits {
    /// The defaults, which the configuration's flags share.
    pub const DEFAULT: Self =
        Self { max_connections: 1024, header_timeout: Duration::from_secs(30), body_timeout: Duration::from_secs(30) };

    pub fn from_config(config: &crate::Config) -> Self {
        Self {
            max_connections: config.max_connections as usize,
            header_timeout: Duration::from_secs(config.header_timeout_seconds),
            body_timeout: Duration::from_secs(config.body_timeout_seconds),
        }
    }
}

/// Who is on the other end of a request's connection; every request carries one as an
/// extension.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The subject of the verified client certificate (mutual TLS), as `CN=…,O=…`.
    pub client_subject: Option<String>,
}

/// Serves `app` on `listener` (over TLS when `tls` is given) within `limits` until `shutdown`
/// completes, then stops accepting and waits for the requests in flight.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<Tls>>,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (tcp, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let (app, tls, watcher) = (app.clone(), tls.clone(), graceful.watcher());
        tokio::spawn(async move {
            let _slot = slot;
            let Some(tls) = tls else {
                let peer = Peer { addr, client_subject: None };
                return connection(TokioIo::new(tcp), app, peer, limits, watcher).await;
            };
            let acceptor = TlsAcceptor::from(tls.current());
            let stream = match tokio::time::timeout(limits.header_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return tracing::debug!(peer = %addr, error = %e, "TLS handshake refused"),
                Err(_) => return tracing::debug!(peer = %addr, "TLS handshake timed out"),
            };
            let client_subject =
                stream.get_ref().1.peer_certificates().and_then(|chain| chain.first()).and_then(certificate_subject);
            connection(TokioIo::new(stream), app, Peer { addr, client_subject }, limits, watcher).await;
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

async fn connection<I>(io: I, app: Router, peer: Peer, limits: ConnectionLimits, watcher: Watcher)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let mut request = request.map(|body| axum::body::Body::new(DeadlineBody::new(body, limits.body_timeout)));
        request.extensions_mut().insert(peer.clone());
        app.clone().oneshot(request)
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .serve_connection(io, service);
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(error = %e, "connection closed with an error");
    }
}

/// A request body that fails with [`BodyTimedOut`] once its deadline passes before its end.
struct DeadlineBody {
    inner: Incoming,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl DeadlineBody {
    fn new(inner: Incoming, within: Duration) -> Self {
        Self { inner, deadline: Box::pin(tokio::time::sleep(within)) }
    }
}

impl hyper::body::Body for DeadlineBody {
    type Data = hyper::body::Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(BodyTimedOut.into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// The client did not send its request body within the body timeout.
#[derive(Debug)]
pub struct BodyTimedOut;

impl std::fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request body did not arrive in time")
    }
}

impl std::error::Error for BodyTimedOut {}

impl BodyTimedOut {
    /// Whether `error` or one of its sources is a body timeout.
    pub fn caused(error: &(dyn std::error::Error + 'static)) -> bool {
        let mut next = Some(error);
        while let Some(e) = next {
            if e.is::<Self>() {
                return true;
            }
            next = e.source();
        }
        false
    }
}
