//! The built-in demo upstream (`builtin:echo`): answers with the request exactly as it would
//! have been forwarded, so a newcomer sees the injected identity headers without a backend.

use http::{Request, Response, StatusCode};
use serde_json::{Map, Value, json};

use super::body::Body;

pub fn respond(req: &Request<Body>) -> Response<Body> {
    let mut headers = Map::new();
    for name in req.headers().keys() {
        let values: Vec<Value> = req
            .headers()
            .get_all(name)
            .iter()
            .map(|v| Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        let value = match <[Value; 1]>::try_from(values) {
            Ok([single]) => single,
            Err(many) => Value::Array(many),
        };
        headers.insert(name.as_str().to_owned(), value);
    }
    let body = json!({
        "upstream": "builtin:echo",
        "method": req.method().as_str(),
        "path": req.uri().path(),
        "query": req.uri().query(),
        "headers": headers,
    });
    let text = serde_json::to_vec_pretty(&body).unwrap_or_default();
    crate::response::full(StatusCode::OK, "application/json", text)
}
