//! hyper-minimal LISTEN UPSTREAM: forwards every request to UPSTREAM (http://host:port) with
//! hyper-util's pooled legacy client and answers with what it got. No auth, no header
//! rewriting: the floor of a proxy built the obvious way on authgate's stack.

use std::convert::Infallible;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

type Body = http_body_util::combinators::BoxBody<hyper::body::Bytes, hyper::Error>;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (listen, upstream) = match (args.next(), args.next()) {
        (Some(l), Some(u)) => (l, u),
        _ => return Err("usage: hyper-minimal LISTEN UPSTREAM".into()),
    };
    let upstream: &'static str = Box::leak(upstream.into_boxed_str());
    let client: Client<HttpConnector, Incoming> =
        Client::builder(TokioExecutor::new()).build_http();
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let client = client.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| forward(client.clone(), upstream, req));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn forward(
    client: Client<HttpConnector, Incoming>,
    upstream: &'static str,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    use http_body_util::BodyExt;
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let uri: Uri = match format!("{upstream}{target}").parse() {
        Ok(uri) => uri,
        Err(_) => return Ok(status(400)),
    };
    *req.uri_mut() = uri;
    match client.request(req).await {
        Ok(resp) => Ok(resp.map(|b| b.boxed())),
        Err(_) => Ok(status(502)),
    }
}

fn status(code: u16) -> Response<Body> {
    use http_body_util::{BodyExt, Empty};
    let mut resp = Response::new(Empty::new().map_err(|never| match never {}).boxed());
    *resp.status_mut() = hyper::StatusCode::from_u16(code).unwrap_or(hyper::StatusCode::BAD_GATEWAY);
    resp
}
