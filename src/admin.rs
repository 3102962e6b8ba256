//! The admin listener: `/healthz` (alive), `/readyz` (a config is loaded and every remote JWKS
//! provider has been fetched at least once), `/metrics` (Prometheus text). Plain HTTP/1.1,
//! meant for loopback or a private network.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::gateway::Gateway;
use crate::proxy::Body;

fn text(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = crate::response::full(status, content_type, body);
    resp.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    resp
}

fn answer(gateway: &Gateway, req: &Request<Incoming>) -> Response<Body> {
    if req.method() != http::Method::GET && req.method() != http::Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n");
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "text/plain", "ok\n"),
        "/readyz" => readiness(gateway),
        "/metrics" => text(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            gateway.metrics().render(),
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /healthz, /readyz or /metrics\n",
        ),
    }
}

/// Ready when a config is loaded, every remote JWKS provider has been fetched once, and the
/// revocation mirror has been filled from a reachable state store (a replica must not serve
/// without knowing what was revoked).
fn readiness(gateway: &Gateway) -> Response<Body> {
    let snap = gateway.snapshot();
    let mut waiting: Vec<String> = snap
        .verifier
        .providers()
        .iter()
        .filter(|p| !p.is_ready())
        .map(|p| format!("the first JWKS fetch from {}", p.settings.url))
        .collect();
    let mirror = &gateway.state().mirror;
    let store = gateway.state().store.kind();
    if !mirror.is_synced() {
        waiting.push(format!("the first sync with the {store} state store"));
    } else if !mirror.store_up() {
        waiting.push(format!("the {store} state store (unreachable)"));
    }
    if waiting.is_empty() {
        text(StatusCode::OK, "text/plain", "ready\n")
    } else {
        let body = format!("waiting for {}\n", waiting.join("; "));
        text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", body)
    }
}

/// Serves the admin endpoints on `listener` until the task is dropped.
pub async fn serve(gateway: Arc<Gateway>, listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let gw = gateway.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let resp = answer(&gw, &req);
                async move { Ok::<_, std::convert::Infallible>(resp) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
