//! Active health checks: every `interval`, each server of an upstream with a `health_check`
//! gets a `GET {path}` on a fresh connection, bounded by `timeout`. A 2xx or 3xx answer is a
//! success. `unhealthy_after` failures in a row take the server out of rotation;
//! `healthy_after` successes in a row bring it back. The checker stops by itself once its
//! upstream is dropped (replaced by a reload that changed it).

use std::sync::{Arc, Weak};

use http::header::{HOST, HeaderValue, USER_AGENT};
use http::{Request, Uri};
use http_body_util::BodyExt;

use super::body::Body;
use super::pool::{Pool, Sent};
use super::upstream::{Server, Target, Upstream};
use crate::config::RawHealthCheck;

/// Starts the checker of `upstream` when it has a `health_check` (once per upstream).
pub fn spawn(upstream: &Arc<Upstream>) {
    let Target::Servers(servers) = &upstream.target else {
        return;
    };
    let Some(check) = servers.health_check.clone() else {
        return;
    };
    if !upstream.claim_health_checker() {
        return;
    }
    let weak = Arc::downgrade(upstream);
    let streaks = vec![0i64; servers.list.len()];
    tokio::spawn(run(weak, check, streaks));
}

async fn run(weak: Weak<Upstream>, check: RawHealthCheck, mut streaks: Vec<i64>) {
    let mut tick = tokio::time::interval(check.interval.0);
    // A slow round is not made up for with checks back to back.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(upstream) = weak.upgrade() else {
            return;
        };
        let Target::Servers(servers) = &upstream.target else {
            return;
        };
        // Every server at once: a hanging one does not delay the others' checks.
        let probes = servers
            .list
            .iter()
            .map(|server| probe(&upstream, server, &check));
        let results = futures_util::future::join_all(probes).await;
        for ((server, streak), healthy) in servers.list.iter().zip(streaks.iter_mut()).zip(results)
        {
            judge(&upstream.name, server, streak, healthy, &check);
        }
    }
}

/// Counts successes (positive) or failures (negative) in a row, and flips the server's state
/// when a threshold is reached.
fn judge(name: &str, server: &Server, streak: &mut i64, healthy: bool, check: &RawHealthCheck) {
    *streak = match (healthy, *streak) {
        (true, s) if s > 0 => s + 1,
        (true, _) => 1,
        (false, s) if s < 0 => s - 1,
        (false, _) => -1,
    };
    if server.healthy() && -*streak >= i64::from(check.unhealthy_after) {
        tracing::warn!(upstream = name, server = %server.label, "health check failing: server out of rotation");
        server.set_down(true);
    } else if !server.healthy() && *streak >= i64::from(check.healthy_after) {
        tracing::info!(upstream = name, server = %server.label, "health check passing: server back in rotation");
        server.set_down(false);
    }
}

/// One `GET {path}` on a fresh connection.
async fn probe(upstream: &Upstream, server: &Server, check: &RawHealthCheck) -> bool {
    let Target::Servers(servers) = &upstream.target else {
        return false;
    };
    let attempt = async {
        let conn = servers
            .connector
            .connect(&server.host, server.port)
            .await
            .ok()?;
        let path = format!("{}{}", servers.base_path, check.path.as_str());
        let uri: Uri = match &conn {
            super::pool::Conn::Http1(_) => path.parse().ok()?,
            super::pool::Conn::Http2(_) => {
                let scheme = if servers.https { "https" } else { "http" };
                format!("{scheme}://{}{path}", server.authority)
                    .parse()
                    .ok()?
            }
        };
        let req = Request::get(uri)
            .header(HOST, HeaderValue::from_str(server.authority.as_str()).ok()?)
            .header(USER_AGENT, "authgate-health-check")
            .body(Body::default())
            .ok()?;
        match Pool::send(conn, req).await {
            Sent::Answered(resp, _) => {
                let ok = resp.status().is_success() || resp.status().is_redirection();
                let _ = resp.into_body().collect().await;
                Some(ok)
            }
            _ => None,
        }
    };
    matches!(
        tokio::time::timeout(check.timeout.0, attempt).await,
        Ok(Some(true))
    )
}
