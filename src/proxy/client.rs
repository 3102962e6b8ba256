//! The pooled upstream client (hyper-util, keep-alive) and the call with its connect and
//! response timeouts.

use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::body::Body;
use crate::error::GatewayError;

/// A keep-alive connection pool to one upstream.
#[derive(Clone, Debug)]
pub struct UpstreamClient {
    client: Client<HttpConnector, Body>,
    timeout: Duration,
}

impl UpstreamClient {
    pub fn new(connect_timeout: Duration, timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        UpstreamClient { client, timeout }
    }

    /// Sends the request; 502 when the upstream cannot be reached or breaks the exchange,
    /// 504 when its response headers do not arrive within the timeout.
    pub async fn send(&self, req: Request<Body>) -> Result<Response<Incoming>, GatewayError> {
        match tokio::time::timeout(self.timeout, self.client.request(req)).await {
            Err(_) => Err(GatewayError::UpstreamTimeout),
            Ok(Err(e)) if e.is_connect() => Err(GatewayError::UpstreamUnreachable),
            Ok(Err(_)) => Err(GatewayError::UpstreamFailed),
            Ok(Ok(resp)) => Ok(resp),
        }
    }
}
