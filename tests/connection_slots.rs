//! Connections that never finish a request head cannot hold connection slots: every slot of
//! `server.max_connections` taken by a silent socket (no byte, one byte, half an HTTP/2
//! preface) is freed after `header_read_timeout`, and the descriptors go back to baseline.
//! Its own test binary: it counts the process's open file descriptors.
mod common;
use common::*;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

async fn open_connections(gw: &Gateway) -> f64 {
    metric(
        &admin(gw, "/metrics").await.text(),
        "authgate_open_connections",
    )
}

#[tokio::test]
async fn silent_connections_time_out_and_give_their_slots_back() {
    let up = Upstream::start().await;
    let yaml = format!("server: {{ max_connections: 3, header_read_timeout: 1s }}\n{STANDARD}");
    let gw = Gateway::start(&yaml, &up.url()).await;
    let baseline = open_fds();
    for opening in [&b""[..], b"P", b"PRI * HTTP/2.0\r\n"] {
        let shown = String::from_utf8_lossy(opening).into_owned();
        let mut silent = Vec::new();
        for _ in 0..3 {
            let mut s = TcpStream::connect(gw.addr()).await.unwrap();
            s.write_all(opening).await.unwrap();
            silent.push(s);
        }
        // Every slot is taken: a new client waits in the backlog, and is served once the
        // silent connections have been closed for idling.
        let started = Instant::now();
        let served = tokio::time::timeout(Duration::from_secs(6), gw.get("/public/x", &[]))
            .await
            .unwrap_or_else(|_| panic!("{shown:?}: silent connections kept every slot"));
        assert_eq!(served.status, 200, "{shown:?}");
        assert!(
            started.elapsed() >= Duration::from_millis(700),
            "{shown:?}: served after {:?}: the slots were not all taken",
            started.elapsed()
        );
        for mut s in silent {
            let mut buf = [0u8; 64];
            let read = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await;
            assert!(
                matches!(read, Ok(Ok(0)) | Ok(Err(_))),
                "{shown:?}: a silent connection is still open"
            );
        }
    }
    eventually("no connection open", || async {
        open_connections(&gw).await == 0.0
    })
    .await;
    eventually("descriptors back to baseline", || async {
        open_fds() <= baseline
    })
    .await;
}

#[tokio::test]
async fn idle_http2_connections_are_closed_too() {
    let up = Upstream::start().await;
    let yaml = format!("server: {{ header_read_timeout: 1s }}\n{STANDARD}");
    let gw = Gateway::start(&yaml, &up.url()).await;
    let stream = TcpStream::connect(gw.addr()).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    let closed = tokio::spawn(conn);
    let req = http::Request::get(format!("http://{}/public/x", gw.addr()))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    assert_eq!(sender.send_request(req).await.unwrap().status(), 200);
    // Idle from now on: the gateway ends the connection (GOAWAY) after the timeout.
    tokio::time::timeout(Duration::from_secs(4), closed)
        .await
        .expect("an idle HTTP/2 connection stays open forever")
        .unwrap()
        .unwrap();
}
