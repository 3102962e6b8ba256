//! Remote JWKS: a real fake identity provider on loopback serves a JWK Set; tokens it signs
//! pass, wrong issuers and audiences do not, rotation is picked up through the unknown-kid
//! path, random kids cause no fetch storm, and an outage keeps the last good keys.
mod common;
use common::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};

const ISSUER: &str = "https://idp.test/";

/// A fake IdP: serves whatever JWK Set (and status) the test sets, counting requests.
struct Idp {
    addr: std::net::SocketAddr,
    state: Arc<Mutex<(u16, String)>>,
    fetches: Arc<AtomicUsize>,
}

impl Idp {
    async fn start(status: u16, body: String) -> Idp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new((status, body)));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (s, f) = (state.clone(), fetches.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (s, f) = (s.clone(), f.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |_req| {
                        f.fetch_add(1, Ordering::SeqCst);
                        let (status, body) = s.lock().unwrap().clone();
                        let mut resp = http::Response::new(Full::new(Bytes::from(body)));
                        *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                        async move { Ok::<_, std::convert::Infallible>(resp) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Idp {
            addr,
            state,
            fetches,
        }
    }

    fn set(&self, status: u16, body: String) {
        *self.state.lock().unwrap() = (status, body);
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    fn url(&self) -> String {
        format!("http://{}/jwks.json", self.addr)
    }
}

/// An IdP signing key (test-only, generated here).
struct IdpKey {
    kid: String,
    private: String,
}

impl IdpKey {
    fn new(kid: &str) -> IdpKey {
        IdpKey {
            kid: kid.into(),
            private: keypair("RS256").0,
        }
    }
    fn jwk(&self) -> Jwk {
        let enc = EncodingKey::from_rsa_pem(self.private.as_bytes()).unwrap();
        let mut jwk = Jwk::from_encoding_key(&enc, Algorithm::RS256).unwrap();
        jwk.common.key_id = Some(self.kid.clone());
        jwk
    }
    fn sign(&self, claims: &Value) -> String {
        sign_pem(Algorithm::RS256, &self.private, Some(&self.kid), claims)
    }
}

fn jwks(keys: &[&IdpKey]) -> String {
    serde_json::to_string(&JwkSet {
        keys: keys.iter().map(|k| k.jwk()).collect(),
    })
    .unwrap()
}

fn idp_claims(sub: &str) -> Value {
    json!({"sub": sub, "iss": ISSUER, "aud": "apps", "exp": now() + 600, "roles": ["staff"]})
}

fn config(idp: &Idp, cooldown: &str, refresh: &str) -> String {
    format!(
        r#"
tokens:
  issuer: authgate
  audience: apps
  keys:
    - {{ id: k1, algorithm: HS256, secret: "{{SECRET}}" }}
  jwks:
    - url: "{url}"
      issuer: "{ISSUER}"
      audience: apps
      unknown_kid_cooldown: {cooldown}
      refresh_interval: {refresh}
      timeout: 2s
upstreams:
  app: "{{UPSTREAM}}"
routes:
  - name: app
    upstream: app
    headers: {{ X-User-Id: sub, X-Roles: roles }}
"#,
        url = idp.url()
    )
}

/// Polls until the gateway has fetched the IdP's keys once (a readiness poll, not a sleep).
async fn wait_ready(gw: &Gateway) {
    for _ in 0..200 {
        if gw
            .handle
            .gateway
            .snapshot()
            .verifier
            .providers()
            .iter()
            .all(|p| p.is_ready())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the gateway never fetched the JWKS");
}

#[tokio::test]
async fn idp_tokens_pass_with_issuer_and_audience_enforced() {
    let key = IdpKey::new("idp-1");
    let idp = Idp::start(200, jwks(&[&key])).await;
    let up = Upstream::start().await;
    let gw = Gateway::start(&config(&idp, "30s", "15m"), &up.url()).await;
    wait_ready(&gw).await;

    let r = gw.get_with_token("/x", &key.sign(&idp_claims("zoe"))).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.only();
    assert_eq!(seen.headers["x-user-id"], "zoe");
    assert_eq!(seen.headers["x-roles"], "staff");

    let mut wrong_aud = idp_claims("zoe");
    wrong_aud["aud"] = json!("other-app");
    gw.get_with_token("/x", &key.sign(&wrong_aud))
        .await
        .assert_error(401, "invalid_token", "audience");
    let mut no_aud = idp_claims("zoe");
    no_aud.as_object_mut().unwrap().remove("aud");
    gw.get_with_token("/x", &key.sign(&no_aud))
        .await
        .assert_error(401, "invalid_token", "aud");

    // An IdP key does not vouch for another issuer (not even authgate's own).
    let mut own_iss = idp_claims("zoe");
    own_iss["iss"] = json!("authgate");
    assert_eq!(
        gw.get_with_token("/x", &key.sign(&own_iss)).await.status,
        401
    );
    let mut other_iss = idp_claims("zoe");
    other_iss["iss"] = json!("https://evil.test/");
    assert_eq!(
        gw.get_with_token("/x", &key.sign(&other_iss)).await.status,
        401
    );

    // A token naming the IdP but signed with authgate's own HMAC key is refused.
    let forged = hs256(SECRET, Some("idp-1"), &idp_claims("root"));
    assert_eq!(gw.get_with_token("/x", &forged).await.status, 401);
    let forged = hs256(SECRET, None, &idp_claims("root"));
    assert_eq!(gw.get_with_token("/x", &forged).await.status, 401);

    // An attacker's key under the IdP's kid is refused.
    let attacker = IdpKey {
        kid: "idp-1".into(),
        private: keypair("RS256").0,
    };
    gw.get_with_token("/x", &attacker.sign(&idp_claims("root")))
        .await
        .assert_error(401, "invalid_token", "signature");
    assert_eq!(up.seen().len(), 1);

    // authgate's own tokens still pass alongside.
    assert_eq!(
        gw.get_with_token("/x", &token("local", json!({})))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn key_rotation_at_the_idp_is_picked_up_through_the_unknown_kid_path() {
    let old = IdpKey::new("old");
    let idp = Idp::start(200, jwks(&[&old])).await;
    let up = Upstream::start().await;
    let gw = Gateway::start(&config(&idp, "30s", "15m"), &up.url()).await;
    wait_ready(&gw).await;
    let before = idp.fetches();

    let new = IdpKey::new("new");
    idp.set(200, jwks(&[&new, &old]));
    let r = gw.get_with_token("/x", &new.sign(&idp_claims("ann"))).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        idp.fetches(),
        before + 1,
        "exactly one fetch for the new kid"
    );
    assert_eq!(
        gw.get_with_token("/x", &old.sign(&idp_claims("ann")))
            .await
            .status,
        200
    );
    assert_eq!(up.seen().len(), 2);
}

#[tokio::test]
async fn a_flood_of_random_kids_causes_no_fetch_storm_and_evicts_nothing() {
    let key = IdpKey::new("real");
    let idp = Idp::start(200, jwks(&[&key])).await;
    let up = Upstream::start().await;
    let gw = Gateway::start(&config(&idp, "60s", "15m"), &up.url()).await;
    wait_ready(&gw).await;
    let before = idp.fetches();
    for i in 0..50 {
        let junk = IdpKey {
            kid: format!("random-{i}"),
            private: key.private.clone(),
        };
        let r = gw.get_with_token("/x", &junk.sign(&idp_claims("x"))).await;
        r.assert_error(401, "invalid_token", "key id");
    }
    assert!(
        idp.fetches() <= before + 1,
        "{} fetches for 50 unknown kids",
        idp.fetches() - before
    );
    assert_eq!(
        gw.get_with_token("/x", &key.sign(&idp_claims("ok")))
            .await
            .status,
        200
    );
    assert_eq!(up.only().headers["x-user-id"], "ok");
}

#[tokio::test]
async fn an_idp_outage_keeps_the_last_good_keys() {
    let key = IdpKey::new("k");
    let idp = Idp::start(200, jwks(&[&key])).await;
    let up = Upstream::start().await;
    let gw = Gateway::start(&config(&idp, "0s", "1s"), &up.url()).await;
    wait_ready(&gw).await;
    idp.set(500, "down".into());
    let before = idp.fetches();
    // An unknown kid forces a fetch, which fails...
    let unknown = IdpKey {
        kid: "nope".into(),
        private: key.private.clone(),
    };
    assert_eq!(
        gw.get_with_token("/x", &unknown.sign(&idp_claims("x")))
            .await
            .status,
        401
    );
    assert!(idp.fetches() > before, "the unknown kid triggered a fetch");
    // ...and a garbage document too; the known key still verifies.
    idp.set(200, "{\"keys\": \"garbage\"}".into());
    let before = idp.fetches();
    while idp.fetches() == before {
        tokio::time::sleep(Duration::from_millis(50)).await; // the 1 s refresh runs against it
    }
    let r = gw
        .get_with_token("/x", &key.sign(&idp_claims("still")))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.only().headers["x-user-id"], "still");
}

#[tokio::test]
async fn the_gateway_starts_while_the_idp_is_down_and_catches_up() {
    let key = IdpKey::new("k");
    let idp = Idp::start(503, "starting".into()).await;
    let up = Upstream::start().await;
    let gw = Gateway::start(&config(&idp, "30s", "15m"), &up.url()).await;
    // Serving already: local tokens pass, IdP tokens cannot be checked yet.
    assert_eq!(
        gw.get_with_token("/x", &token("local", json!({})))
            .await
            .status,
        200
    );
    assert_eq!(
        gw.get_with_token("/x", &key.sign(&idp_claims("early")))
            .await
            .status,
        401
    );
    assert!(!gw.handle.gateway.snapshot().verifier.providers()[0].is_ready());
    idp.set(200, jwks(&[&key]));
    wait_ready(&gw).await; // the background fetch retries with backoff
    assert_eq!(
        gw.get_with_token("/x", &key.sign(&idp_claims("late")))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn embedded_key_urls_never_cause_an_outbound_request() {
    let key = IdpKey::new("k");
    let idp = Idp::start(200, jwks(&[&key])).await;
    let up = Upstream::start().await;
    let gw = Gateway::start(&config(&idp, "0s", "15m"), &up.url()).await;
    wait_ready(&gw).await;
    let before = idp.fetches();
    for field in ["jku", "x5u"] {
        let forged = forge(
            &json!({"alg": "HS256", "kid": "k", field: idp.url()}),
            &idp_claims("x").to_string(),
            SECRET.as_bytes(),
        );
        gw.get_with_token("/x", &forged)
            .await
            .assert_error(401, "invalid_token", field);
    }
    assert_eq!(idp.fetches(), before);
    assert!(up.seen().is_empty());
}

/// A key the IdP withdrew takes every verification it made with it: the claims cache and the
/// per-connection memo must not keep serving a token verified before the withdrawal.
#[tokio::test]
async fn a_withdrawn_idp_key_voids_cached_verifications() {
    let keep = IdpKey::new("a");
    let old = IdpKey::new("b-old");
    let idp = Idp::start(200, jwks(&[&keep, &old])).await;
    let up = Upstream::start().await;
    let gw = Gateway::start(&config(&idp, "0s", "15m"), &up.url()).await;
    wait_ready(&gw).await;
    let old_token = old.sign(&idp_claims("ann"));
    let kept_token = keep.sign(&idp_claims("bob"));

    // A keep-alive connection verifies the token once (memo), a fresh one hits the cache.
    let stream = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    let (mut conn, driver) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(driver);
    let on_conn = |token: &str| {
        http::Request::get("/x")
            .header("host", "gw")
            .header("authorization", format!("Bearer {token}"))
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let r = conn.send_request(on_conn(&old_token)).await.unwrap();
    assert_eq!(r.status(), 200);
    let _ = http_body_util::BodyExt::collect(r.into_body()).await;
    assert_eq!(gw.get_with_token("/x", &old_token).await.status, 200);

    // The IdP drops b-old; a token naming an unknown kid makes the gateway fetch again.
    idp.set(200, jwks(&[&keep]));
    let fetched = idp.fetches();
    let unknown = IdpKey::new("c").sign(&idp_claims("x"));
    assert_eq!(gw.get_with_token("/x", &unknown).await.status, 401);
    assert_eq!(idp.fetches(), fetched + 1);

    gw.get_with_token("/x", &old_token)
        .await
        .assert_error(401, "invalid_token", "key id");
    let r = conn.send_request(on_conn(&old_token)).await.unwrap();
    assert_eq!(
        r.status(),
        401,
        "the connection memo kept a withdrawn key's token"
    );
    let _ = http_body_util::BodyExt::collect(r.into_body()).await;
    // The key still published keeps its cached verifications.
    assert_eq!(gw.get_with_token("/x", &kept_token).await.status, 200);
}
