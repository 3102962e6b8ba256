mod common;
use common::*;
use serde_json::json;

#[tokio::test]
async fn harness_round_trip() {
    let up = Upstream::start().await;
    let gw = Gateway::start(STANDARD, &up.url()).await;
    let r = gw
        .get_with_token("/app/x", &token("alice", json!({"roles": ["dev"]})))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.only().headers["x-user-id"], "alice");
}
