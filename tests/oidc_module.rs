//! `authgate::oidc` end to end against a real, certified OpenID Provider: panva's
//! `oidc-provider`, run by tests/node/oidc-provider.js on loopback (installed in tests/node by
//! ./scripts/test.sh; without node or it these tests fail, they never skip). A small HTTP
//! "browser" (reqwest, no automatic redirects, a cookie jar of its own) follows the
//! authorization redirect, fills in the provider's login form and stops at the redirect to
//! our callback URL, whose query goes to `finish` with the cookies the gateway would have set.
//! The provider harness and the browser live in tests/common/oidc.rs (tests/sso.rs uses them
//! too).

mod common;

use std::time::Duration;

use authgate::clock::unix_now;
use authgate::oidc::{ClientAuth, OidcClient, OidcError, OidcSettings, StartLogin};
use http::HeaderMap;
use reqwest::Url;
use serde_json::{Value, json};

use common::oidc::{Browser, Op, Step, form_action, hidden_inputs, query_param, with_param};

const GATEWAY: &str = "https://gw.test";
const SECRET: &str = "s3cret-for-tests";
const SEALING_KEY: [u8; 32] = [42; 32];
const POST_LOGOUT: &str = "https://gw.test/signed-out";

fn callback(name: &str) -> String {
    format!("{GATEWAY}/auth/oidc/{name}/callback")
}

fn users() -> Value {
    json!({
        "alice": {"password": "alice-pw", "claims": {
            "email": "alice@example.test", "email_verified": true,
            "groups": ["admins", "dev"], "name": "Alice Liddell"}},
        "bob": {"password": "bob-pw", "claims": {
            "email": "bob@example.test", "email_verified": false, "groups": []}}
    })
}

fn client(id: &str, method: &str) -> Value {
    json!({
        "client_id": id,
        "client_secret": SECRET,
        "redirect_uris": [callback("corp"), callback("other")],
        "post_logout_redirect_uris": [POST_LOGOUT],
        "token_endpoint_auth_method": method,
    })
}

/// A provider with `authgate` (client_secret_basic) and `authgate-post` (client_secret_post).
fn provider() -> Op {
    Op::start(json!({
        "clients": [client("authgate", "client_secret_basic"),
                    client("authgate-post", "client_secret_post")],
        "users": users(),
    }))
}

fn settings(op: &Op, name: &str, client_id: &str) -> OidcSettings {
    let mut s = OidcSettings::new(name, &op.issuer, client_id, SECRET, &callback(name));
    s.timeout = Duration::from_secs(10);
    s
}

fn rp(op: &Op) -> OidcClient {
    OidcClient::new(settings(op, "corp", "authgate")).expect("valid settings")
}

/// The `Cookie` header a browser sends to the callback after these starts.
fn cookies(starts: &[&StartLogin]) -> HeaderMap {
    let pairs: Vec<String> = starts
        .iter()
        .map(|s| format!("{}={}", s.cookie_name, s.cookie_value))
        .collect();
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::COOKIE,
        pairs.join("; ").parse().expect("cookie"),
    );
    headers
}

/// Start, log in as alice, return the start and the callback query.
async fn log_in(rp: &OidcClient, next: &str) -> (StartLogin, String) {
    log_in_as(rp, next, "alice", "alice-pw").await
}

async fn log_in_as(
    rp: &OidcClient,
    next: &str,
    user: &str,
    password: &str,
) -> (StartLogin, String) {
    let start = rp
        .start(next, &SEALING_KEY, unix_now())
        .await
        .expect("start");
    let query = Browser::new()
        .login(
            &start.authorize_url,
            user,
            password,
            &rp.settings().redirect_url,
        )
        .await;
    (start, query)
}

async fn finish(
    rp: &OidcClient,
    start: &StartLogin,
    query: &str,
) -> Result<authgate::oidc::FinishedLogin, OidcError> {
    rp.finish(query, &cookies(&[start]), &SEALING_KEY, unix_now())
        .await
}

#[tokio::test]
async fn full_flow_returns_the_users_claims_and_next_with_pkce_and_basic_auth() {
    let op = provider();
    let rp = rp(&op);
    let (start, query) = log_in(&rp, "/app/reports?week=3").await;

    // What the start endpoint hands the gateway.
    let url = Url::parse(&start.authorize_url).unwrap();
    let param = |n: &str| {
        url.query_pairs()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.into_owned())
    };
    assert!(
        start
            .authorize_url
            .starts_with(&format!("{}/auth?", op.issuer))
    );
    assert_eq!(param("response_type").as_deref(), Some("code"));
    assert_eq!(param("client_id").as_deref(), Some("authgate"));
    assert_eq!(param("redirect_uri"), Some(callback("corp")));
    assert_eq!(param("scope").as_deref(), Some("openid email profile"));
    assert_eq!(param("code_challenge_method").as_deref(), Some("S256"));
    assert_eq!(param("code_challenge").map(|c| c.len()), Some(43));
    assert_eq!(param("nonce").map(|c| c.len()), Some(43));
    let state = param("state").unwrap();
    assert_eq!(start.cookie_name, format!("authgate_oidc_{}", &state[..16]));
    assert!(!start.cookie_value.contains(&state), "the cookie is sealed");
    assert_eq!(
        start.set_cookie,
        format!(
            "{}={}; Path=/auth/oidc/corp/callback; Max-Age=600; HttpOnly; SameSite=Lax; Secure",
            start.cookie_name, start.cookie_value
        )
    );
    assert_eq!(query_param(&query, "state"), Some(state));
    assert_eq!(query_param(&query, "iss"), Some(op.issuer.clone()));

    let done = finish(&rp, &start, &query).await.expect("login succeeds");
    assert_eq!(done.next, "/app/reports?week=3");
    assert_eq!(done.claims["sub"], "alice");
    assert_eq!(done.claims["email"], "alice@example.test");
    assert_eq!(done.claims["email_verified"], true);
    assert_eq!(done.claims["groups"], json!(["admins", "dev"]));
    assert_eq!(done.claims["name"], "Alice Liddell");
    assert_eq!(done.claims["iss"], op.issuer.as_str());
    assert_eq!(done.claims["aud"], "authgate");
    assert_eq!(done.id_token.split('.').count(), 3);
    assert_eq!(
        done.clear_cookie,
        format!(
            "{}=; Path=/auth/oidc/corp/callback; Max-Age=0; HttpOnly; SameSite=Lax; Secure",
            start.cookie_name
        )
    );
    // The provider saw Basic client authentication and a PKCE verifier (it requires one).
    assert_eq!(
        op.last_token_request().await,
        json!({"client_auth": "basic", "code_verifier": true, "status": 200, "id_token_alg": "RS256"})
    );
}

#[tokio::test]
async fn unsafe_next_becomes_root_and_bob_gets_his_own_claims() {
    let op = provider();
    let rp = rp(&op);
    let (start, query) = log_in_as(&rp, "//evil.example/x", "bob", "bob-pw").await;
    let done = finish(&rp, &start, &query).await.expect("login succeeds");
    assert_eq!(done.next, "/");
    assert_eq!(done.claims["sub"], "bob");
    assert_eq!(done.claims["email_verified"], false);
    assert_eq!(done.claims["groups"], json!([]));
}

#[tokio::test]
async fn the_state_cookie_is_secure_when_the_logins_own_callback_is_https() {
    // Configured with an http callback; the gateway derives an https one per request (its
    // listener speaks TLS): that login's cookie is Secure, and so is its removal.
    let op = provider();
    let mut s = settings(&op, "corp", "authgate");
    s.redirect_url = "http://gw.test/auth/oidc/corp/callback".into();
    let rp = OidcClient::new(s).unwrap();
    let start = rp
        .start_at("/", Some(&callback("corp")), &SEALING_KEY, unix_now())
        .await
        .unwrap();
    assert!(
        start.set_cookie.ends_with("; SameSite=Lax; Secure"),
        "{}",
        start.set_cookie
    );
    let query = Browser::new()
        .login(&start.authorize_url, "alice", "alice-pw", &callback("corp"))
        .await;
    let done = finish(&rp, &start, &query).await.expect("login succeeds");
    assert!(
        done.clear_cookie
            .ends_with("; Max-Age=0; HttpOnly; SameSite=Lax; Secure"),
        "{}",
        done.clear_cookie
    );

    // And the other way round: a login started with an http callback is not.
    let rp = OidcClient::new(settings(&op, "corp", "authgate")).unwrap();
    let plain = rp
        .start_at(
            "/",
            Some("http://127.0.0.1:8080/auth/oidc/corp/callback"),
            &SEALING_KEY,
            unix_now(),
        )
        .await
        .unwrap();
    assert!(
        plain.set_cookie.ends_with("; SameSite=Lax"),
        "{}",
        plain.set_cookie
    );
}

#[tokio::test]
async fn the_provider_requires_pkce() {
    let op = provider();
    let rp = rp(&op);
    let start = rp.start("/", &SEALING_KEY, unix_now()).await.unwrap();
    let mut url = Url::parse(&start.authorize_url).unwrap();
    let kept: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| !k.starts_with("code_challenge"))
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    url.query_pairs_mut().clear().extend_pairs(kept);
    let query = Browser::new()
        .login(url.as_str(), "alice", "alice-pw", &callback("corp"))
        .await;
    assert_eq!(
        query_param(&query, "error").as_deref(),
        Some("invalid_request")
    );
    let err = finish(&rp, &start, &query).await.unwrap_err();
    assert!(
        matches!(err, OidcError::Provider(ref m) if m.contains("PKCE")),
        "{err}"
    );
}

#[tokio::test]
async fn client_secret_post_is_used_when_configured_and_a_wrong_secret_is_refused() {
    let op = provider();
    let mut s = settings(&op, "corp", "authgate-post");
    s.auth_method = ClientAuth::Post;
    let rp = OidcClient::new(s).unwrap();
    let (start, query) = log_in(&rp, "/").await;
    let done = finish(&rp, &start, &query).await.expect("login succeeds");
    assert_eq!(done.claims["aud"], "authgate-post");
    assert_eq!(
        op.last_token_request().await,
        json!({"client_auth": "post", "code_verifier": true, "status": 200, "id_token_alg": "RS256"})
    );

    // oidc-provider takes either secret method for a secret client, so a wrong secret shows
    // that the exchange is authenticated: invalid_client.
    let mut s = settings(&op, "corp", "authgate-post");
    s.auth_method = ClientAuth::Post;
    s.client_secret = "wrong".into();
    let rp = OidcClient::new(s).unwrap();
    let (start, query) = log_in(&rp, "/").await;
    let err = finish(&rp, &start, &query).await.unwrap_err();
    assert!(
        matches!(err, OidcError::Exchange(ref m) if m.starts_with("invalid_client")),
        "{err}"
    );
    assert!(
        !err.to_string().contains("wrong"),
        "the secret is not in the error"
    );
}

#[tokio::test]
async fn the_state_cookie_must_be_present_intact_fresh_and_match() {
    let op = provider();
    let rp = rp(&op);

    // No cookie (another browser, or it expired in the browser).
    let (_, query) = log_in(&rp, "/").await;
    let err = rp
        .finish(&query, &HeaderMap::new(), &SEALING_KEY, unix_now())
        .await;
    assert_eq!(err.unwrap_err(), OidcError::StateMissing);

    // A state changed after its first 16 characters: the cookie is found but does not match.
    let (start, query) = log_in(&rp, "/").await;
    let state = query_param(&query, "state").unwrap();
    let last = if state.ends_with('A') { "B" } else { "A" };
    let changed = with_param(&query, "state", &format!("{}{last}", &state[..42]));
    assert_eq!(
        finish(&rp, &start, &changed).await.unwrap_err(),
        OidcError::StateMismatch
    );
    // A state that could not be ours at all.
    let garbage = with_param(&query, "state", "x");
    assert_eq!(
        finish(&rp, &start, &garbage).await.unwrap_err(),
        OidcError::StateMismatch
    );

    // Tampered: one character of the sealed value changed.
    let mut tampered = start.clone();
    let mut bytes = tampered.cookie_value.into_bytes();
    bytes[20] = if bytes[20] == b'A' { b'B' } else { b'A' };
    tampered.cookie_value = String::from_utf8(bytes).unwrap();
    assert_eq!(
        finish(&rp, &tampered, &query).await.unwrap_err(),
        OidcError::StateInvalid
    );
    // Sealed with another key (another gateway, or the key was rotated).
    let other_key = rp
        .finish(&query, &cookies(&[&start]), &[1; 32], unix_now())
        .await;
    assert_eq!(other_key.unwrap_err(), OidcError::StateInvalid);

    // Expired: the callback comes more than ten minutes after the start.
    let late = unix_now() + 601;
    let err = rp
        .finish(&query, &cookies(&[&start]), &SEALING_KEY, late)
        .await;
    assert_eq!(err.unwrap_err(), OidcError::StateExpired);

    // None of the refusals used the state up: the real callback still works.
    assert!(finish(&rp, &start, &query).await.is_ok());
}

#[tokio::test]
async fn a_cookie_renamed_to_another_logins_name_does_not_open() {
    let op = provider();
    let rp = rp(&op);
    let (a, _) = log_in(&rp, "/a").await;
    let (b, query_b) = log_in(&rp, "/b").await;
    // Login A's sealed value sent under login B's cookie name.
    let mut swapped = b.clone();
    swapped.cookie_value = a.cookie_value.clone();
    assert_eq!(
        finish(&rp, &swapped, &query_b).await.unwrap_err(),
        OidcError::StateInvalid
    );
}

#[tokio::test]
async fn a_replayed_callback_and_a_reused_code_are_refused() {
    let op = provider();
    let first = rp(&op);
    let (start, query) = log_in(&first, "/").await;
    finish(&first, &start, &query).await.expect("first use");
    assert_eq!(
        finish(&first, &start, &query).await.unwrap_err(),
        OidcError::StateReplayed
    );

    // Another gateway instance (no memory of used states): the provider refuses the code.
    let other = rp(&op);
    let err = finish(&other, &start, &query).await.unwrap_err();
    assert!(
        matches!(err, OidcError::Exchange(ref m) if m.starts_with("invalid_grant")),
        "{err}"
    );
}

#[tokio::test]
async fn access_denied_at_the_provider_is_reported_and_yields_nothing() {
    let op = provider();
    let rp = rp(&op);
    op.deny_next().await;
    let (start, query) = log_in(&rp, "/").await;
    assert_eq!(
        query_param(&query, "error").as_deref(),
        Some("access_denied")
    );
    let err = finish(&rp, &start, &query).await.unwrap_err();
    assert!(
        matches!(err, OidcError::Denied(ref m) if m.contains("denied this login")),
        "{err}"
    );
    assert_eq!(err.reason(), "denied");
}

#[tokio::test]
async fn a_response_naming_another_issuer_is_refused_before_the_code_is_sent() {
    let op = provider();
    let rp = rp(&op);
    let (start, query) = log_in(&rp, "/").await;
    let mixed_up = with_param(&query, "iss", "https://attacker.example");
    assert_eq!(
        finish(&rp, &start, &mixed_up).await.unwrap_err(),
        OidcError::WrongIssuer
    );
    assert_eq!(
        op.last_token_request().await,
        Value::Null,
        "no code was sent"
    );
}

/// Logs in with the provider told to change the next ID token; returns the error.
async fn refused_id_token(change: Value) -> OidcError {
    let op = provider();
    let rp = rp(&op);
    op.next_id_token(change).await;
    let (start, query) = log_in(&rp, "/").await;
    let err = finish(&rp, &start, &query).await.unwrap_err();
    assert_eq!(err.reason(), "id_token", "{err}");
    err
}

#[tokio::test]
async fn an_id_token_for_another_audience_is_refused() {
    let err = refused_id_token(json!({"set": {"aud": "someone-else"}})).await;
    assert!(err.to_string().contains("audience"), "{err}");
}

#[tokio::test]
async fn an_id_token_with_several_audiences_needs_our_azp() {
    let err = refused_id_token(json!({"set": {"aud": ["authgate", "api"]}})).await;
    assert!(err.to_string().contains("azp"), "{err}");
    let err = refused_id_token(json!({"set": {"aud": ["authgate", "api"], "azp": "api"}})).await;
    assert!(err.to_string().contains("azp"), "{err}");

    // With our azp it passes.
    let op = provider();
    let rp = rp(&op);
    op.next_id_token(json!({"set": {"aud": ["authgate", "api"], "azp": "authgate"}}))
        .await;
    let (start, query) = log_in(&rp, "/").await;
    let done = finish(&rp, &start, &query).await.expect("our azp passes");
    assert_eq!(done.claims["azp"], "authgate");
}

#[tokio::test]
async fn an_expired_id_token_is_refused() {
    let now = unix_now();
    let err = refused_id_token(json!({"set": {"exp": now - 3600, "iat": now - 7200}})).await;
    assert!(err.to_string().contains("expired"), "{err}");
}

#[tokio::test]
async fn an_id_token_from_another_issuer_is_refused() {
    let err = refused_id_token(json!({"set": {"iss": "https://attacker.example"}})).await;
    assert!(err.to_string().contains("issuer"), "{err}");
}

#[tokio::test]
async fn an_id_token_with_another_nonce_or_none_is_refused() {
    let err = refused_id_token(json!({"set": {"nonce": "replayed-from-elsewhere"}})).await;
    assert!(err.to_string().contains("nonce"), "{err}");
    let err = refused_id_token(json!({"unset": ["nonce"]})).await;
    assert!(err.to_string().contains("nonce"), "{err}");
}

#[tokio::test]
async fn an_hmac_signed_id_token_is_refused() {
    // The provider signs this client's ID tokens with HS256 keyed by the client secret: a
    // remote party's HMAC is never accepted (its JWKS offers no such key).
    let mut hs = client("authgate", "client_secret_basic");
    hs["id_token_signed_response_alg"] = json!("HS256");
    let op = Op::start(json!({
        "clients": [hs],
        "users": users(),
        "provider": {"enabledJWA": {"idTokenSigningAlgValues": ["RS256", "HS256"]}},
    }));
    let rp = rp(&op);
    let (start, query) = log_in(&rp, "/").await;
    let err = finish(&rp, &start, &query).await.unwrap_err();
    assert_eq!(err.reason(), "id_token", "{err}");
    assert_eq!(op.last_token_request().await["id_token_alg"], "HS256");
}

#[tokio::test]
async fn discovery_must_name_the_configured_issuer() {
    let op = provider();
    // The provider's issuer has no trailing slash; a configured one with it is another issuer.
    let mut s = settings(&op, "corp", "authgate");
    s.issuer = format!("{}/", op.issuer);
    let rp = OidcClient::new(s).unwrap();
    let err = rp.discover().await.unwrap_err();
    assert!(
        matches!(err, OidcError::Discovery(ref m) if m.contains("issuer")),
        "{err}"
    );
    let err = rp.start("/", &SEALING_KEY, unix_now()).await.unwrap_err();
    assert_eq!(err.reason(), "discovery");
    assert!(!rp.is_discovered());

    // Nothing listening: a discovery error, not a panic or a hang.
    let gone = OidcSettings::new("x", "http://127.0.0.1:9", "a", "b", &callback("x"));
    let err = OidcClient::new(gone).unwrap().discover().await.unwrap_err();
    assert_eq!(err.reason(), "discovery");

    // Plain http to a non-loopback host is refused before any request.
    let plain = OidcSettings::new("x", "http://idp.example", "a", "b", &callback("x"));
    assert!(OidcClient::new(plain).is_err());
}

#[tokio::test]
async fn logins_after_a_key_rotation_verify_through_the_unknown_kid_refetch() {
    let op = provider();
    let rp = rp(&op);
    rp.discover().await.unwrap();
    let (start, query) = log_in(&rp, "/").await;
    finish(&rp, &start, &query).await.expect("before rotation");
    let fetches = op.jwks_fetches().await;

    let rotated = op.rotate().await;
    assert_eq!(
        op.kids().await,
        vec![rotated["kid"].as_str().unwrap().to_owned()]
    );
    assert_ne!(rotated["kid"], rotated["previous"]);

    let (start, query) = log_in(&rp, "/after").await;
    let done = finish(&rp, &start, &query).await.expect("after rotation");
    assert_eq!(done.next, "/after");
    assert!(
        op.jwks_fetches().await > fetches,
        "the new kid made the RP fetch the JWKS again"
    );
}

#[tokio::test]
async fn parallel_logins_at_one_provider_keep_their_own_cookies() {
    let op = provider();
    let rp = rp(&op);
    let (a, query_a) = log_in(&rp, "/tab-a").await;
    let (b, query_b) = log_in_as(&rp, "/tab-b", "bob", "bob-pw").await;
    assert_ne!(a.cookie_name, b.cookie_name);
    // The browser sends both cookies to both callbacks; the second finishes first.
    let both = cookies(&[&a, &b]);
    let done_b = rp
        .finish(&query_b, &both, &SEALING_KEY, unix_now())
        .await
        .unwrap();
    let done_a = rp
        .finish(&query_a, &both, &SEALING_KEY, unix_now())
        .await
        .unwrap();
    assert_eq!(
        (done_a.next.as_str(), &done_a.claims["sub"]),
        ("/tab-a", &json!("alice"))
    );
    assert_eq!(
        (done_b.next.as_str(), &done_b.claims["sub"]),
        ("/tab-b", &json!("bob"))
    );
}

#[tokio::test]
async fn two_providers_side_by_side() {
    let (op1, op2) = (provider(), provider());
    let corp = OidcClient::new(settings(&op1, "corp", "authgate")).unwrap();
    let other = OidcClient::new(settings(&op2, "other", "authgate")).unwrap();
    let (sa, sb) = tokio::join!(
        corp.start("/corp", &SEALING_KEY, unix_now()),
        other.start("/other", &SEALING_KEY, unix_now())
    );
    let (sa, sb) = (sa.unwrap(), sb.unwrap());
    assert_ne!(sa.cookie_name, sb.cookie_name);
    assert!(sb.set_cookie.contains("Path=/auth/oidc/other/callback"));
    let (mut browser_a, mut browser_b) = (Browser::new(), Browser::new());
    let (cb_corp, cb_other) = (callback("corp"), callback("other"));
    let (qa, qb) = tokio::join!(
        browser_a.login(&sa.authorize_url, "alice", "alice-pw", &cb_corp),
        browser_b.login(&sb.authorize_url, "bob", "bob-pw", &cb_other)
    );
    let jar = cookies(&[&sa, &sb]);
    // A response from one provider fed to the other's callback is refused.
    let crossed = other
        .finish(&qa, &jar, &SEALING_KEY, unix_now())
        .await
        .unwrap_err();
    assert!(
        matches!(crossed, OidcError::WrongIssuer | OidcError::StateMismatch),
        "{crossed}"
    );
    let (da, db) = tokio::join!(
        corp.finish(&qa, &jar, &SEALING_KEY, unix_now()),
        other.finish(&qb, &jar, &SEALING_KEY, unix_now())
    );
    let (da, db) = (da.unwrap(), db.unwrap());
    assert_eq!(
        (da.next.as_str(), &da.claims["iss"]),
        ("/corp", &json!(op1.issuer))
    );
    assert_eq!(
        (db.next.as_str(), &db.claims["iss"]),
        ("/other", &json!(op2.issuer))
    );
    assert_eq!(da.claims["sub"], "alice");
    assert_eq!(db.claims["sub"], "bob");
}

#[tokio::test]
async fn logout_url_points_at_the_end_session_endpoint_and_is_accepted() {
    let op = provider();
    let rp = rp(&op);
    assert_eq!(rp.logout_url(None, POST_LOGOUT), None, "not discovered yet");
    let (start, query) = log_in(&rp, "/").await;
    let done = finish(&rp, &start, &query).await.unwrap();

    let logout = rp
        .logout_url(Some(&done.id_token), POST_LOGOUT)
        .expect("a logout URL");
    let url = Url::parse(&logout).unwrap();
    assert_eq!(
        format!("{}://{}{}", url.scheme(), url.authority(), url.path()),
        format!("{}/session/end", op.issuer)
    );
    let params: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    assert_eq!(
        params,
        vec![
            ("id_token_hint".to_owned(), done.id_token.clone()),
            ("client_id".to_owned(), "authgate".to_owned()),
            (
                "post_logout_redirect_uri".to_owned(),
                POST_LOGOUT.to_owned()
            ),
        ]
    );
    let bare = rp.logout_url(None, "").unwrap();
    assert_eq!(
        bare,
        format!("{}/session/end?client_id=authgate", op.issuer)
    );

    // The provider takes it: a confirmation form, which sends the user back to us.
    let mut browser = Browser::new();
    let (status, _, _, body) = browser.request(Step::Get(url.clone())).await;
    assert_eq!(status, 200, "{body}");
    let mut form = hidden_inputs(&body);
    // "Yes, sign me out" (the form may carry it already).
    if !form.iter().any(|(k, _)| k == "logout") {
        form.push(("logout".into(), "yes".into()));
    }
    let action = url.join(&form_action(&body)).unwrap();
    let (status, _, location, body) = browser.request(Step::Post(action, form.clone())).await;
    assert_eq!(status, 303, "{form:?} {body}");
    assert_eq!(location.map(String::from).as_deref(), Some(POST_LOGOUT));
}

#[tokio::test]
async fn the_harness_exits_when_its_stdin_closes() {
    let mut op = provider();
    drop(op.child.stdin.take());
    let mut waited = 0;
    while op.child.try_wait().unwrap().is_none() {
        assert!(
            waited < 50,
            "oidc-provider.js still running 5 s after stdin closed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += 1;
    }
}
