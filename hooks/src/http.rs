//! The httpGet handler: one GET from inside the container's network namespace, HTTP or HTTPS
//! (certificates not verified, as in Kubernetes), same-origin redirects followed up to
//! [`MAX_REDIRECTS`], and at most [`MAX_BODY`] bytes of the body read. A timeout says how far
//! the exchange got.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{HeaderName, HeaderValue, ACCEPT, HOST, LOCATION, USER_AGENT};
use http::{Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{timeout_at, Instant};
use tokio_rustls::TlsConnector;

use crate::container::Container;
use crate::plan::{HttpGet, Scheme};
use crate::seconds::Seconds;

/// Kubernetes follows at most 10 redirects for hooks and probes.
pub const MAX_REDIRECTS: usize = 10;
/// Kubernetes reads at most 10 KiB of a hook's or probe's response body.
pub const MAX_BODY: usize = 10 * 1024;

const AGENT: &str = concat!("lifecycle-shim/", env!("CARGO_PKG_VERSION"));

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("connecting to {addr} inside the container: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS handshake with {addr}: {source}")]
    Tls {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP exchange with {addr}: {source}")]
    Protocol {
        addr: SocketAddr,
        source: hyper::Error,
    },
    #[error("more than {MAX_REDIRECTS} redirects")]
    TooManyRedirects,
    #[error("timed out after {} {progress}", Seconds(*.elapsed))]
    TimedOut {
        elapsed: Duration,
        progress: Progress,
    },
}

/// How far an exchange had got when its deadline passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub addr: SocketAddr,
    pub stage: Stage,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Connecting,
    TlsHandshake,
    /// The request was sent; `received` bytes of the response had arrived.
    AwaitingResponse {
        received: u64,
    },
    /// The status and headers had arrived, and `received` bytes of the body.
    ReadingBody {
        received: u64,
    },
}

impl fmt::Display for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let addr = self.addr;
        match self.stage {
            Stage::Connecting => write!(f, "connecting to {addr}"),
            Stage::TlsHandshake => write!(f, "in the TLS handshake with {addr}"),
            Stage::AwaitingResponse { received: 0 } => {
                write!(f, "waiting for a response from {addr} (nothing received)")
            }
            Stage::AwaitingResponse { received } => write!(
                f,
                "waiting for the response head from {addr} (only {} received)",
                ByteCount(received)
            ),
            Stage::ReadingBody { received } => write!(
                f,
                "reading the response body from {addr} ({} of it received)",
                ByteCount(received)
            ),
        }
    }
}

/// A byte count as a phrase: `1 byte`, `7 bytes`.
struct ByteCount(u64);

impl fmt::Display for ByteCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            1 => f.write_str("1 byte"),
            n => write!(f, "{n} bytes"),
        }
    }
}

/// Where a GET is, shared with the exchange it watches: the stage, and the bytes read from the
/// connection (counted by [`Counted`], which hyper owns).
struct Tracker {
    addr: SocketAddr,
    /// A mutex rather than a cell: the shim runs hooks in tasks that may move between threads.
    stage: Mutex<Stage>,
    read: Arc<AtomicU64>,
}

impl Tracker {
    fn set(&self, stage: Stage) {
        *self.stage.lock().unwrap_or_else(|e| e.into_inner()) = stage;
    }

    fn progress(&self) -> Progress {
        let stage = *self.stage.lock().unwrap_or_else(|e| e.into_inner());
        let stage = match stage {
            Stage::AwaitingResponse { .. } => Stage::AwaitingResponse {
                received: self.read.load(Ordering::Relaxed),
            },
            stage => stage,
        };
        Progress {
            addr: self.addr,
            stage,
        }
    }
}

/// The final response: its status and the first [`MAX_BODY`] bytes of its body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

struct Exchange {
    status: u16,
    location: Option<String>,
    body: Vec<u8>,
}

/// Performs the GET, following same-origin redirects, and gives up at `deadline`. A redirect
/// elsewhere is not followed and its 3xx response is the result, as with the kubelet.
pub async fn get<C: Container>(
    c: &C,
    get: &HttpGet,
    deadline: Option<Instant>,
) -> Result<Response, HttpError> {
    let start = Instant::now();
    let tracker = Tracker {
        addr: SocketAddr::new(get.host, get.port),
        stage: Mutex::new(Stage::Connecting),
        read: Arc::default(),
    };
    let attempt = follow(c, get, &tracker);
    let Some(deadline) = deadline else {
        return attempt.await;
    };
    timeout_at(deadline, attempt).await.unwrap_or_else(|_| {
        Err(HttpError::TimedOut {
            elapsed: start.elapsed(),
            progress: tracker.progress(),
        })
    })
}

async fn follow<C: Container>(
    c: &C,
    get: &HttpGet,
    tracker: &Tracker,
) -> Result<Response, HttpError> {
    let mut path = get.path.clone();
    for _ in 0..=MAX_REDIRECTS {
        let exchange = request(c, get, &path, tracker).await?;
        let next = match (exchange.status, &exchange.location) {
            (301 | 302 | 303 | 307 | 308, Some(location)) => {
                let next = same_origin(get, &path, location);
                if next.is_none() {
                    tracing::warn!(
                        status = exchange.status,
                        location,
                        "redirect to another scheme, host or port not followed; its status is the answer"
                    );
                }
                next
            }
            _ => None,
        };
        match next {
            Some(next) => path = next,
            None => {
                return Ok(Response {
                    status: exchange.status,
                    body: String::from_utf8_lossy(&exchange.body).into_owned(),
                })
            }
        }
    }
    Err(HttpError::TooManyRedirects)
}

async fn request<C: Container>(
    c: &C,
    get: &HttpGet,
    path: &str,
    tracker: &Tracker,
) -> Result<Exchange, HttpError> {
    let addr = tracker.addr;
    tracker.set(Stage::Connecting);
    let tcp = c
        .connect(addr)
        .await
        .map_err(|source| HttpError::Connect { addr, source })?;
    match get.scheme {
        Scheme::Http => exchange(tcp, get, path, tracker).await,
        Scheme::Https => {
            tracker.set(Stage::TlsHandshake);
            let tls = tls_connector()
                .connect(ServerName::IpAddress(get.host.into()), tcp)
                .await
                .map_err(|source| HttpError::Tls { addr, source })?;
            exchange(tls, get, path, tracker).await
        }
    }
}

async fn exchange<S>(
    io: S,
    get: &HttpGet,
    path: &str,
    tracker: &Tracker,
) -> Result<Exchange, HttpError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let addr = tracker.addr;
    let protocol = |source| HttpError::Protocol { addr, source };
    tracker.read.store(0, Ordering::Relaxed);
    tracker.set(Stage::AwaitingResponse { received: 0 });
    let io = Counted {
        inner: io,
        read: tracker.read.clone(),
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(protocol)?;
    let request = build_request(addr, get, path);
    let exchange = async {
        let response = sender.send_request(request).await?;
        tracker.set(Stage::ReadingBody { received: 0 });
        let status = response.status().as_u16();
        let location = response
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut body = response.into_body();
        let mut bytes = Vec::new();
        while bytes.len() < MAX_BODY {
            let Some(frame) = body.frame().await else {
                break;
            };
            if let Ok(data) = frame?.into_data() {
                let room = MAX_BODY - bytes.len();
                bytes.extend_from_slice(&data[..data.len().min(room)]);
                tracker.set(Stage::ReadingBody {
                    received: bytes.len() as u64,
                });
            }
        }
        Ok(Exchange {
            status,
            location,
            body: bytes,
        })
    };
    tokio::pin!(conn, exchange);
    // The connection must be driven while the request runs; once it ends (the server closed it),
    // the response is already buffered and only the exchange is left to finish.
    let mut conn_open = true;
    loop {
        tokio::select! {
            result = &mut exchange => return result.map_err(protocol),
            result = &mut conn, if conn_open => {
                result.map_err(protocol)?;
                conn_open = false;
            }
        }
    }
}

/// Counts the bytes read through it, so a timeout can say whether anything arrived.
struct Counted<S> {
    inner: S,
    read: Arc<AtomicU64>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = (buf.filled().len() - before) as u64;
        self.read.fetch_add(read, Ordering::Relaxed);
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn build_request(addr: SocketAddr, get: &HttpGet, path: &str) -> Request<Empty<Bytes>> {
    let mut request = Request::get(path)
        .body(Empty::new())
        .expect("the path was validated in the plan");
    let headers = request.headers_mut();
    let defaults = [
        (HOST, addr.to_string()),
        (USER_AGENT, AGENT.to_owned()),
        (ACCEPT, "*/*".to_owned()),
    ];
    for (name, value) in defaults {
        let overridden = get
            .headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name.as_str()));
        if !overridden {
            headers.insert(name, HeaderValue::from_str(&value).expect("ASCII"));
        }
    }
    for (name, value) in &get.headers {
        // Both were validated in the plan.
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.append(name, value);
        }
    }
    request
}

/// The path to follow for `location`, if it stays on the same scheme, host and port.
fn same_origin(get: &HttpGet, current: &str, location: &str) -> Option<String> {
    if location.starts_with('/') && !location.starts_with("//") {
        return Some(location.to_owned());
    }
    if !location.contains("://") {
        if location.starts_with("//") {
            return None; // another host, same scheme
        }
        // A relative reference such as `next` or `x?y`: resolve against the current path.
        let base = current.split('?').next().unwrap_or("/");
        let dir = &base[..=base.rfind('/').unwrap_or(0)];
        return Some(format!("{dir}{location}"));
    }
    let uri: Uri = location.parse().ok()?;
    match uri.scheme_str() {
        None => None,
        Some(scheme) => {
            let expected = match get.scheme {
                Scheme::Http => "http",
                Scheme::Https => "https",
            };
            let default_port = if expected == "https" { 443 } else { 80 };
            let host = uri.host()?.trim_matches(['[', ']']);
            let same = scheme.eq_ignore_ascii_case(expected)
                && host.parse::<std::net::IpAddr>().ok() == Some(get.host)
                && uri.port_u16().unwrap_or(default_port) == get.port;
            same.then(|| {
                uri.path_and_query()
                    .map_or("/".to_owned(), |p| p.as_str().to_owned())
            })
        }
    }
}

fn tls_connector() -> TlsConnector {
    static CONNECTOR: OnceLock<TlsConnector> = OnceLock::new();
    CONNECTOR
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .expect("ring supports the default protocol versions")
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
                .with_no_client_auth();
            TlsConnector::from(Arc::new(config))
        })
        .clone()
}

/// Kubernetes does not verify hook and probe certificates; neither do we (documented in the
/// README). Handshake signatures are still checked, so the peer holds the key it presents.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    fn target(scheme: Scheme, port: u16) -> HttpGet {
        HttpGet {
            scheme,
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port,
            path: "/a/b?x=1".to_owned(),
            headers: vec![("Host".to_owned(), "app.local".to_owned())],
        }
    }

    #[test]
    fn redirects_are_followed_only_within_the_origin() {
        let get = target(Scheme::Http, 8080);
        let follow = |loc| same_origin(&get, "/a/b?x=1", loc);
        assert_eq!(follow("/c").as_deref(), Some("/c"));
        assert_eq!(follow("c?d").as_deref(), Some("/a/c?d"));
        assert_eq!(follow("http://127.0.0.1:8080/z").as_deref(), Some("/z"));
        assert_eq!(follow("http://127.0.0.1:8081/z"), None);
        assert_eq!(follow("https://127.0.0.1:8080/z"), None);
        assert_eq!(follow("http://example.com:8080/z"), None);
        assert_eq!(follow("//example.com/z"), None);
        let tls = target(Scheme::Https, 443);
        assert_eq!(
            same_origin(&tls, "/", "https://127.0.0.1/ok").as_deref(),
            Some("/ok")
        );
    }

    #[test]
    fn user_headers_replace_defaults_and_keep_repeats() {
        let mut get = target(Scheme::Http, 80);
        get.headers.push(("X-A".to_owned(), "1".to_owned()));
        get.headers.push(("X-A".to_owned(), "2".to_owned()));
        let request = build_request(SocketAddr::new(get.host, get.port), &get, &get.path);
        let headers = request.headers();
        assert_eq!(
            headers.get_all(HOST).iter().collect::<Vec<_>>(),
            ["app.local"]
        );
        assert_eq!(headers.get_all("x-a").iter().count(), 2);
        assert_eq!(headers[USER_AGENT], AGENT);
        assert_eq!(request.uri(), "/a/b?x=1");
    }
}
