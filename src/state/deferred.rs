//! A store still connecting: every call fails with [`StoreError`] until the backend answers,
//! then goes to it. A replica that starts while Redis is down therefore starts, reports not
//! ready (its revocation mirror has never synced) and refuses logins with 503, and becomes
//! ready by itself once Redis is back — instead of exiting, or serving without revocations.

use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

use super::Quota;
use super::store::{Exchange, NewSession, Revocation, Rotation, SessionInfo, Store, StoreError};

/// Longest wait between connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The backend, once connected.
struct Connected(Arc<dyn Store>);

pub struct Deferred {
    kind: &'static str,
    inner: ArcSwapOption<Connected>,
    changes: broadcast::Sender<Revocation>,
}

impl Deferred {
    /// Connects in the background with `connect`, retrying with backoff until it succeeds.
    pub fn start<F, Fut>(kind: &'static str, connect: F) -> Arc<Deferred>
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Arc<dyn Store>, StoreError>> + Send,
    {
        let deferred = Arc::new(Deferred {
            kind,
            inner: ArcSwapOption::empty(),
            changes: broadcast::channel(1024).0,
        });
        let weak = Arc::downgrade(&deferred);
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(200);
            loop {
                if weak.strong_count() == 0 {
                    return;
                }
                match connect().await {
                    Ok(store) => return forward(weak, store).await,
                    Err(e) => {
                        tracing::warn!(store = kind, error = %e, "state store still unreachable; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
        });
        deferred
    }

    fn store(&self) -> Result<Arc<dyn Store>, StoreError> {
        match self.inner.load_full() {
            Some(c) => Ok(c.0.clone()),
            None => Err(StoreError(format!("{}: not connected yet", self.kind))),
        }
    }
}

/// Installs the connected backend and passes its change feed on until the `Deferred` is gone.
async fn forward(weak: Weak<Deferred>, store: Arc<dyn Store>) {
    let mut feed = store.subscribe();
    let Some(deferred) = weak.upgrade() else {
        return;
    };
    tracing::info!(store = deferred.kind, "state store connected");
    deferred.inner.store(Some(Arc::new(Connected(store))));
    let changes = deferred.changes.clone();
    drop(deferred);
    loop {
        match feed.recv().await {
            Ok(r) => {
                let _ = changes.send(r);
            }
            // Missed messages: the mirrors' periodic resync heals them.
            Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => return,
        }
        if weak.strong_count() == 0 {
            return;
        }
    }
}

#[async_trait::async_trait]
impl Store for Deferred {
    fn kind(&self) -> &'static str {
        self.kind
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.store()?.ping().await
    }
    async fn revoke(&self, revocation: Revocation) -> Result<(), StoreError> {
        self.store()?.revoke(revocation).await
    }
    async fn revocations(&self, now: u64) -> Result<Vec<Revocation>, StoreError> {
        self.store()?.revocations(now).await
    }
    fn subscribe(&self) -> broadcast::Receiver<Revocation> {
        self.changes.subscribe()
    }
    async fn create_session(&self, session: NewSession) -> Result<(), StoreError> {
        self.store()?.create_session(session).await
    }
    async fn rotate(&self, exchange: Exchange) -> Result<Rotation, StoreError> {
        self.store()?.rotate(exchange).await
    }
    async fn end_session(&self, sid: &str) -> Result<Option<SessionInfo>, StoreError> {
        self.store()?.end_session(sid).await
    }
    async fn end_user_sessions(&self, sub: &str) -> Result<Vec<String>, StoreError> {
        self.store()?.end_user_sessions(sub).await
    }
    async fn take(&self, key: &str, quota: Quota) -> Result<Result<(), Duration>, StoreError> {
        self.store()?.take(key, quota).await
    }
}
