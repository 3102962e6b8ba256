//! examples/grafana/authgate-dashboard.json against a live gateway's /metrics: every metric
//! and label its PromQL reads is one the gateway exports, every family the gateway exports
//! has a panel, and the file imports as a dashboard (one `${DS_PROMETHEUS}` input, panels that
//! do not overlap).
mod common;
use common::*;

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

fn dashboard() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/grafana/authgate-dashboard.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Every PromQL text in the dashboard: panel targets' `expr`, template variables' queries.
fn queries(node: &Value, out: &mut Vec<String>) {
    match node {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr" | "definition" | "query", Value::String(q)) => out.push(q.clone()),
                    _ => queries(value, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| queries(v, out)),
        _ => {}
    }
}

/// One `authgate_*` metric read by an expression, with its `label op "value"` matchers.
#[derive(Debug)]
struct Selector {
    metric: String,
    matchers: Vec<(String, String, String)>,
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The `authgate_*` selectors of a PromQL expression.
fn selectors(expr: &str) -> Vec<Selector> {
    let mut out = Vec::new();
    for (at, _) in expr.match_indices("authgate_") {
        if expr[..at].chars().next_back().is_some_and(is_ident) {
            continue;
        }
        let rest = &expr[at..];
        let end = rest.find(|c: char| !is_ident(c)).unwrap_or(rest.len());
        let mut matchers = Vec::new();
        if let Some(body) = rest[end..].strip_prefix('{') {
            let body = &body[..body.find('}').expect("unclosed {")];
            for matcher in split_outside_quotes(body) {
                let op_at = matcher.find(['=', '!']).expect("label matcher");
                let (label, tail) = matcher.split_at(op_at);
                let op_len = if tail.starts_with('=') && !tail.starts_with("=~") {
                    1
                } else {
                    2
                };
                let (op, value) = tail.split_at(op_len);
                matchers.push((
                    label.trim().to_owned(),
                    op.to_owned(),
                    value.trim().trim_matches('"').to_owned(),
                ));
            }
        }
        out.push(Selector {
            metric: rest[..end].to_owned(),
            matchers,
        });
    }
    out
}

fn split_outside_quotes(text: &str) -> Vec<&str> {
    let (mut parts, mut start, mut quoted) = (Vec::new(), 0, false);
    for (i, c) in text.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts.into_iter().filter(|p| !p.trim().is_empty()).collect()
}

/// The labels of `by (...)` clauses, and the label asked by `label_values(..., label)`.
fn grouping_labels(expr: &str) -> Vec<String> {
    let mut labels = Vec::new();
    for (at, by) in expr.match_indices("by (") {
        let inner = &expr[at + by.len()..];
        let inner = &inner[..inner.find(')').expect("unclosed by (")];
        labels.extend(inner.split(',').map(|l| l.trim().to_owned()));
    }
    if let Some(args) = expr.strip_prefix("label_values(") {
        let args = args.trim_end().trim_end_matches(')');
        labels.push(args.rsplit(',').next().unwrap_or("").trim().to_owned());
    }
    labels
}

/// Sample name → label name → values seen, from a Prometheus text exposition.
fn scrape_index(text: &str) -> BTreeMap<String, BTreeMap<String, BTreeSet<String>>> {
    let mut index: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = index.entry(line[..name_end].to_owned()).or_default();
        if let Some(body) = line[name_end..].strip_prefix('{') {
            let body = &body[..body.rfind('}').unwrap()];
            for pair in split_outside_quotes(body) {
                let (k, v) = pair.split_once('=').unwrap();
                labels
                    .entry(k.to_owned())
                    .or_default()
                    .insert(v.trim_matches('"').to_owned());
            }
        }
    }
    index
}

/// A gateway with a real upstream, a login user and some traffic of every kind the dashboard
/// shows (forwarded, refused, logged in, failed login); its /metrics text.
async fn live_scrape() -> String {
    let up = Upstream::start().await;
    let yaml = format!(
        "{STANDARD}login:\n  users:\n    - {{ username: alice, password_hash: \"{}\" }}\n",
        user_hashes().0
    );
    let gw = Gateway::start(&yaml, &up.url()).await;
    assert_eq!(gw.get("/public/x", &[]).await.status, 200);
    let t = token("alice", serde_json::json!({"roles": ["admin"]}));
    assert_eq!(gw.get_with_token("/admin/x", &t).await.status, 200);
    assert_eq!(gw.get_with_token("/admin/x", &t).await.status, 200);
    assert_eq!(gw.get("/app/x", &[]).await.status, 401);
    assert_eq!(gw.get("/nowhere", &[]).await.status, 404);
    assert_eq!(
        json_login(&gw, "alice", ALICE_PASSWORD, &[]).await.status,
        200
    );
    assert_eq!(json_login(&gw, "alice", "wrong", &[]).await.status, 401);
    let r = admin(&gw, "/metrics").await;
    assert_eq!(r.status, 200);
    r.text()
}

/// Labels Prometheus adds at scrape time, and the histogram bucket bound.
const SCRAPE_LABELS: [&str; 2] = ["instance", "job"];

#[tokio::test]
async fn every_metric_and_label_the_dashboard_reads_is_exported() {
    let index = scrape_index(&live_scrape().await);
    let mut exprs = Vec::new();
    queries(&dashboard(), &mut exprs);
    assert!(exprs.len() >= 15, "{exprs:#?}");
    let mut read = BTreeSet::new();
    for expr in &exprs {
        let found = selectors(expr);
        assert!(!found.is_empty(), "no authgate metric in {expr}");
        for Selector { metric, matchers } in &found {
            let labels = index.get(metric).unwrap_or_else(|| {
                panic!(
                    "`{metric}` is not in /metrics (read by {expr}); exported: {:?}",
                    index.keys()
                )
            });
            for (label, op, value) in matchers {
                if SCRAPE_LABELS.contains(&label.as_str()) {
                    continue;
                }
                let values = labels
                    .get(label)
                    .unwrap_or_else(|| panic!("`{metric}` has no label `{label}` ({expr})"));
                if op == "=" && !value.contains('$') {
                    assert!(
                        values.contains(value),
                        "{metric}{{{label}=\"{value}\"}} never exported"
                    );
                }
            }
            read.insert(metric.clone());
        }
        for label in grouping_labels(expr) {
            let on_some_metric = found.iter().any(|s| index[&s.metric].contains_key(&label));
            assert!(
                on_some_metric || SCRAPE_LABELS.contains(&label.as_str()),
                "`by ({label})` in {expr}: no metric there has that label"
            );
        }
    }
    // Every family the gateway exports has a panel: a new metric asks for one.
    for sample in index.keys() {
        let family = ["_bucket", "_sum", "_count", "_total"]
            .iter()
            .find_map(|s| sample.strip_suffix(s))
            .unwrap_or(sample);
        assert!(
            read.iter().any(|m| m.starts_with(family)),
            "`{sample}` is exported but no panel reads it"
        );
    }
}

#[test]
fn the_dashboard_imports_with_one_prometheus_input_and_panels_that_do_not_overlap() {
    let dash = dashboard();
    assert_eq!(dash["schemaVersion"], 39);
    let inputs = dash["__inputs"].as_array().unwrap();
    assert_eq!(inputs.len(), 1);
    assert_eq!(inputs[0]["name"], "DS_PROMETHEUS");
    assert_eq!(inputs[0]["pluginId"], "prometheus");
    let mut datasources = Vec::new();
    collect_datasources(&dash, &mut datasources);
    assert!(datasources.len() > 20);
    for ds in datasources {
        assert_eq!(ds["uid"], "${DS_PROMETHEUS}", "{ds}");
        assert_eq!(ds["type"], "prometheus", "{ds}");
    }
    let panels = dash["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    let mut cells = BTreeSet::new();
    for panel in panels {
        assert!(ids.insert(panel["id"].as_u64().unwrap()), "duplicate id");
        if panel["type"] != "row" {
            assert!(panel["description"].as_str().is_some_and(|d| !d.is_empty()));
        }
        let g = &panel["gridPos"];
        let n = |k: &str| g[k].as_u64().unwrap();
        assert!(n("x") + n("w") <= 24, "{}", panel["title"]);
        for x in n("x")..n("x") + n("w") {
            for y in n("y")..n("y") + n("h") {
                assert!(cells.insert((x, y)), "{} overlaps", panel["title"]);
            }
        }
    }
}

fn collect_datasources<'a>(node: &'a Value, out: &mut Vec<&'a Value>) {
    match node {
        Value::Object(map) => {
            for (key, value) in map {
                if key == "datasource" {
                    out.push(value);
                } else {
                    collect_datasources(value, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_datasources(v, out)),
        _ => {}
    }
}

/// The scanner finds what the checks above rely on (so a silent parse miss cannot pass them).
#[test]
fn promql_scanner_reads_selectors_matchers_and_groupings() {
    let expr = r#"sum by (route, status) (rate(authgate_requests_total{instance=~"$instance", route=~"[(](a|b)[)]", status="5xx"}[5m])) / authgate_x"#;
    let found = selectors(expr);
    assert_eq!(found.len(), 2);
    assert_eq!(found[0].metric, "authgate_requests_total");
    assert_eq!(
        found[0].matchers[2],
        ("status".into(), "=".into(), "5xx".into())
    );
    assert_eq!(found[0].matchers[1].1, "=~");
    assert_eq!(found[1].metric, "authgate_x");
    assert_eq!(grouping_labels(expr), ["route", "status"]);
    assert_eq!(
        grouping_labels(r#"label_values(authgate_requests_total{instance=~"$instance"}, route)"#),
        ["route"]
    );
}
