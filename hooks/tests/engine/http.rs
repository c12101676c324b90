//! The httpGet handler against real servers on 127.0.0.1: headers, redirects, status, body
//! bound, and the faults of issue 7 (a server that never answers, drips, floods, loops or
//! speaks TLS badly). The clock is real here: sockets cannot be driven by a paused one, so
//! timeouts are short and the tests assert the failure's reason, not its timing.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use lifecycle_hooks::http::{HttpError, Stage, MAX_BODY};
use lifecycle_hooks::{HookFailure, HookReport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;

use crate::{post_start, Fake};

/// Serves each connection with the next canned response, recording request heads.
async fn server(
    responses: Vec<&'static str>,
) -> (SocketAddr, tokio::task::JoinHandle<Vec<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut heads = Vec::new();
        for response in responses {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut buf = vec![0; 4096];
            let n = conn.read(&mut buf).await.unwrap();
            heads.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            conn.write_all(response.as_bytes()).await.unwrap();
        }
        heads
    });
    (addr, task)
}

#[tokio::test]
async fn http_get_follows_a_same_origin_redirect_and_sends_headers() {
    let (addr, server) = server(vec![
        "HTTP/1.1 302 Found\r\nLocation: /final\r\nContent-Length: 0\r\n\r\n",
        "HTTP/1.1 204 No Content\r\n\r\n",
    ])
    .await;
    let fake = Fake {
        server: Some(addr),
        ..Fake::new()
    };
    let report = post_start(
        r#"{"postStart": {"httpGet": {"port": 8080, "path": "/start",
            "httpHeaders": [{"name": "X-Reason", "value": "boot"}]}}}"#,
        &fake,
    )
    .await;
    assert!(report.result.is_ok(), "{report}");
    assert_eq!(report.http_status, Some(204));
    let heads = server.await.unwrap();
    assert!(
        heads[0].starts_with("GET /start HTTP/1.1\r\n"),
        "{}",
        heads[0]
    );
    assert!(
        heads[0].to_ascii_lowercase().contains("x-reason: boot"),
        "{}",
        heads[0]
    );
    assert!(
        heads[0]
            .to_ascii_lowercase()
            .contains("host: 127.0.0.1:8080"),
        "{}",
        heads[0]
    );
    assert!(
        heads[1].starts_with("GET /final HTTP/1.1\r\n"),
        "{}",
        heads[1]
    );
}

#[tokio::test]
async fn http_500_fails_with_the_status_and_body() {
    let (addr, _server) = server(vec![
        "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\nbad!",
    ])
    .await;
    let fake = Fake {
        server: Some(addr),
        ..Fake::new()
    };
    let report = post_start(r#"{"postStart": {"httpGet": {"port": 1}}}"#, &fake).await;
    assert!(
        matches!(report.result, Err(HookFailure::HttpStatus(500))),
        "{report}"
    );
    assert_eq!(report.output, "bad!");
}

#[tokio::test]
async fn redirect_loops_fail_after_ten() {
    let loop_response = "HTTP/1.1 301 Moved\r\nLocation: /again\r\nContent-Length: 0\r\n\r\n";
    let (addr, server) = server(vec![loop_response; 11]).await;
    let fake = Fake {
        server: Some(addr),
        ..Fake::new()
    };
    let report = post_start(r#"{"postStart": {"httpGet": {"port": 1}}}"#, &fake).await;
    let error = report.result.unwrap_err().to_string();
    assert_eq!(error, "more than 10 redirects");
    assert_eq!(server.await.unwrap().len(), 11);
}

#[tokio::test]
async fn large_bodies_are_read_only_to_the_bound() {
    let body = "x".repeat(64 * 1024);
    let response: &'static str = Box::leak(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_boxed_str(),
    );
    let (addr, _server) = server(vec![response]).await;
    let fake = Fake {
        server: Some(addr),
        ..Fake::new()
    };
    let report = post_start(r#"{"postStart": {"httpGet": {"port": 1}}}"#, &fake).await;
    assert!(report.result.is_ok(), "{report}");
    assert_eq!(report.output.len(), lifecycle_hooks::http::MAX_BODY);
}

#[tokio::test]
async fn a_refused_connection_fails() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let fake = Fake {
        server: Some(addr),
        ..Fake::new()
    };
    let report = post_start(r#"{"postStart": {"httpGet": {"port": 1}}}"#, &fake).await;
    let error = report.result.unwrap_err().to_string();
    assert!(
        error.starts_with("connecting to 127.0.0.1:1 inside the container"),
        "{error}"
    );
}

/// Accepts one connection, reads the start of the request, and hands the connection to `then`.
/// The listening socket's small send buffer (inherited by the connection) keeps the kernel from
/// absorbing much of what `then` writes.
async fn serve_one<F, Fut, T>(then: F) -> (SocketAddr, JoinHandle<T>)
where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = T> + Send,
    T: Send + 'static,
{
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_send_buffer_size(16 * 1024).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut request = [0; 4096];
        let n = conn.read(&mut request).await.unwrap();
        assert!(n > 0, "the client sent nothing");
        then(conn).await
    });
    (addr, task)
}

/// Reads until the client hangs up: the server neither answers nor closes first.
async fn hold(mut conn: TcpStream) {
    let mut sink = [0; 4096];
    while conn.read(&mut sink).await.is_ok_and(|n| n > 0) {}
}

async fn http_get_against(addr: SocketAddr, handler: &str) -> HookReport {
    let fake = Fake {
        server: Some(addr),
        ..Fake::new()
    };
    post_start(&format!(r#"{{"postStart": {handler}}}"#), &fake).await
}

/// The stage a timed-out GET had reached, and its message.
fn timed_out_at(report: &HookReport) -> (Stage, String) {
    match &report.result {
        Err(HookFailure::Http(error @ HttpError::TimedOut { progress, .. })) => {
            (progress.stage, error.to_string())
        }
        _ => panic!("expected an HTTP timeout: {report}"),
    }
}

#[tokio::test]
async fn a_server_that_accepts_and_never_answers_times_out_waiting_for_a_response() {
    let (addr, server) = serve_one(hold).await;
    let report = http_get_against(addr, r#"{"httpGet": {"port": 1}, "timeoutSeconds": 1}"#).await;
    let (stage, message) = timed_out_at(&report);
    assert_eq!(stage, Stage::AwaitingResponse { received: 0 });
    assert!(
        message.starts_with("timed out after 1.")
            && message.ends_with("waiting for a response from 127.0.0.1:1 (nothing received)"),
        "{message}"
    );
    // The client hung up at its deadline (hold returns at the end of the connection).
    server.await.unwrap();
}

/// Writes `bytes` one per second, then holds the connection.
async fn drip(mut conn: TcpStream, bytes: &'static [u8]) {
    for byte in bytes {
        if conn.write_all(&[*byte]).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    hold(conn).await;
}

#[tokio::test]
async fn a_server_answering_one_byte_per_second_times_out_naming_what_it_got() {
    // The head itself drips: the deadline falls within it.
    let (addr, server) =
        serve_one(|c| drip(c, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")).await;
    let report = http_get_against(addr, r#"{"httpGet": {"port": 1}, "timeoutSeconds": 1}"#).await;
    let (stage, message) = timed_out_at(&report);
    assert!(
        matches!(stage, Stage::AwaitingResponse { received } if received >= 1),
        "{message}"
    );
    assert!(
        message.contains("waiting for the response head from 127.0.0.1:1 (only"),
        "{message}"
    );
    server.await.unwrap();

    // The head arrives at once and the body drips.
    let (addr, server) = serve_one(|mut c| async move {
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n";
        c.write_all(head).await.unwrap();
        drip(c, &[b'x'; 100]).await;
    })
    .await;
    let report = http_get_against(addr, r#"{"httpGet": {"port": 1}, "timeoutSeconds": 1}"#).await;
    let (stage, message) = timed_out_at(&report);
    assert!(
        matches!(stage, Stage::ReadingBody { received } if received >= 1),
        "{message}"
    );
    assert!(
        message.contains("reading the response body from 127.0.0.1:1 ("),
        "{message}"
    );
    server.await.unwrap();
}

#[tokio::test]
async fn a_one_gib_body_is_read_only_to_the_bound_and_the_connection_dropped() {
    const GIB: u64 = 1 << 30;
    // Streams 1 GiB from one 64 KiB buffer and counts what the kernel accepted before the client
    // closed the connection. A client that read (or buffered) the whole body would take it all.
    let (addr, server) = serve_one(|mut conn| async move {
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {GIB}\r\n\r\n");
        conn.write_all(head.as_bytes()).await.unwrap();
        let chunk = vec![b'x'; 64 * 1024];
        let mut written = 0u64;
        while written < GIB {
            let left = (GIB - written).min(chunk.len() as u64) as usize;
            match conn.write(&chunk[..left]).await {
                Ok(n) => written += n as u64,
                Err(_) => break,
            }
        }
        written
    })
    .await;
    // The timeout only turns a client that reads on into a failure rather than a long wait.
    let report = http_get_against(addr, r#"{"httpGet": {"port": 1}, "timeoutSeconds": 30}"#).await;
    assert!(report.result.is_ok(), "{report}");
    assert_eq!(report.http_status, Some(200));
    assert_eq!(report.output.len(), MAX_BODY);
    let written = server.await.unwrap();
    // Socket buffers (the client's may grow to tcp_rmem's maximum, 32 MiB on these machines)
    // and hyper's read buffer hold the rest: far from 1 GiB.
    assert!(written < 64 << 20, "the server got {written} bytes out");
}

#[tokio::test]
async fn a_redirect_elsewhere_is_not_followed_and_its_status_is_the_answer() {
    // Only one response: a second request would find no server and fail.
    let (addr, server) = server(vec![
        "HTTP/1.1 302 Found\r\nLocation: http://169.254.169.254/latest/meta-data\r\nContent-Length: 0\r\n\r\n",
    ])
    .await;
    let report = http_get_against(addr, r#"{"httpGet": {"port": 1}}"#).await;
    assert!(report.result.is_ok(), "{report}");
    assert_eq!(report.http_status, Some(302));
    assert_eq!(server.await.unwrap().len(), 1);
}

fn tls_error(report: &HookReport) -> String {
    match &report.result {
        Err(HookFailure::Http(error @ HttpError::Tls { .. })) => error.to_string(),
        _ => panic!("expected a TLS error: {report}"),
    }
}

#[tokio::test]
async fn plain_http_on_an_https_handler_is_a_tls_error() {
    let (addr, _server) = server(vec![
        "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n",
    ])
    .await;
    let report = http_get_against(
        addr,
        r#"{"httpGet": {"port": 1, "scheme": "HTTPS"}, "timeoutSeconds": 5}"#,
    )
    .await;
    let message = tls_error(&report);
    assert!(
        message.starts_with("TLS handshake with 127.0.0.1:1: "),
        "{message}"
    );
}

#[tokio::test]
async fn a_garbage_tls_handshake_is_a_tls_error() {
    // A TLS 1.2 handshake record whose one message is of no known type and cut short.
    let (addr, server) = serve_one(|mut conn| async move {
        conn.write_all(&[0x16, 0x03, 0x03, 0x00, 0x05, 0xfe, 0xff, 0xff, 0xff, 0x00])
            .await
            .unwrap();
        hold(conn).await;
    })
    .await;
    let report = http_get_against(
        addr,
        r#"{"httpGet": {"port": 1, "scheme": "HTTPS"}, "timeoutSeconds": 5}"#,
    )
    .await;
    let message = tls_error(&report);
    assert!(
        message.starts_with("TLS handshake with 127.0.0.1:1: "),
        "{message}"
    );
    server.await.unwrap();
}

#[tokio::test]
async fn a_tls_server_that_never_finishes_the_handshake_times_out_in_it() {
    let (addr, server) = serve_one(hold).await;
    let report = http_get_against(
        addr,
        r#"{"httpGet": {"port": 1, "scheme": "HTTPS"}, "timeoutSeconds": 1}"#,
    )
    .await;
    let (stage, message) = timed_out_at(&report);
    assert_eq!(stage, Stage::TlsHandshake);
    assert!(
        message.ends_with("in the TLS handshake with 127.0.0.1:1"),
        "{message}"
    );
    server.await.unwrap();
}
