//! The text form of an explanation, for an operator at a terminal: one labelled section per
//! step, in the order the gateway runs them, values aligned.

use std::fmt::Write;

use serde_json::Value;

use super::report::{AuthReport, Decision, HeadersReport, Report};

/// Width of the section labels.
const LABEL: usize = 18;

/// Renders `report` as aligned text.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    section(&mut out, "Request", &request(report));
    section(&mut out, "Path", &path(report));
    section(&mut out, "Routes", &routes(report));
    if let Some(auth) = &report.auth {
        section(&mut out, "Auth", &auth_lines(report, auth));
    }
    if report.route.is_some() {
        section(&mut out, "Allow", &allow(report));
    }
    if let (Some(up), Some(headers)) = (&report.upstream, &report.headers) {
        let mut lines = vec![format!(
            "{} ({}) receives {} {}",
            up.name,
            up.servers.join(", ") + &up.balance.map_or(String::new(), |b| format!("; {b}")),
            report.request.method,
            up.path
        )];
        lines.extend(header_lines(headers));
        section(&mut out, "Upstream request", &lines);
    }
    section(&mut out, "Decision", &[decision(report)]);
    if !report.notes.is_empty() {
        section(&mut out, "Notes", &report.notes);
    }
    out
}

fn section(out: &mut String, label: &str, lines: &[String]) {
    for (i, line) in lines.iter().enumerate() {
        let label = if i == 0 { label } else { "" };
        // Writing to a String cannot fail.
        let _ = writeln!(out, "{label:<LABEL$}{line}");
    }
}

fn request(report: &Report) -> Vec<String> {
    let r = &report.request;
    let mut lines = vec![
        format!("{} {}", r.method, r.url),
        format!(
            "host {}, scheme {}, client {} (assumed)",
            r.host.as_deref().unwrap_or("-"),
            r.scheme,
            r.client
        ),
    ];
    lines.extend(r.headers.iter().map(|h| format!("{}: {}", h.name, h.value)));
    lines
}

fn path(report: &Report) -> Vec<String> {
    let p = &report.path;
    let line = match (&p.normalized, &p.refused) {
        (_, Some(why)) => format!("{}  REFUSED: {why}", p.raw),
        (Some(n), None) if *n == p.raw => n.clone(),
        (Some(n), None) => format!("{n}  (sent as {}; routing and the upstream use {n})", p.raw),
        (None, None) => format!("{}  (not read: the request was refused before)", p.raw),
    };
    vec![line]
}

fn routes(report: &Report) -> Vec<String> {
    if report.routes.is_empty() {
        return vec!["(not consulted)".into()];
    }
    let width = report
        .routes
        .iter()
        .map(|r| r.name.len())
        .max()
        .unwrap_or(0);
    let mut lines: Vec<String> = report
        .routes
        .iter()
        .map(|r| {
            let verdict = match (r.chosen, r.matched) {
                (true, _) => "CHOSEN",
                (false, true) => "matches",
                (false, false) => "no",
            };
            format!("#{} {:<width$}  {verdict:<7}  {}", r.index, r.name, r.why)
        })
        .collect();
    if report.endpoint.is_none() && report.route.is_none() && report.path.normalized.is_some() {
        lines.push("no route takes this request: deny by default".into());
    }
    lines
}

fn auth_lines(report: &Report, auth: &AuthReport) -> Vec<String> {
    let place = |c: &str| match c {
        "cookie" => "the session cookie",
        _ => "the Authorization header",
    };
    let token = match (&auth.token, auth.credential) {
        _ if auth.mode == "none" => "the token is not looked at".to_owned(),
        (Some(t), Some(c)) => format!("token from {} (in {})", t.given, place(c)),
        (None, None) => "no token".to_owned(),
        (None, Some(c)) => format!("token in {}", place(c)),
        (Some(t), None) => format!("token from {}", t.given),
    };
    let route = report.route.as_deref().unwrap_or("-");
    let mut lines = vec![format!("route `{route}`: auth {}; {token}", auth.mode)];
    if let Some(t) = &auth.token {
        for c in &t.checks {
            let verdict = match c.passed {
                Some(true) => "passed",
                Some(false) => "FAILED",
                None => "-",
            };
            lines.push(format!("{:<14}{verdict:<8}{}", c.check, c.detail));
        }
        lines.push(format!("{:<14}{:<8}{}", "revocation", "-", auth.revocation));
        if let Some(claims) = &t.claims {
            let label = if t.claims_verified {
                "claims"
            } else {
                "claims (unverified)"
            };
            lines.push(format!("{label}: {}", Value::Object(claims.clone())));
        }
    }
    lines
}

fn allow(report: &Report) -> Vec<String> {
    if report.allow.is_empty() {
        return vec!["(no allow rules on this route)".into()];
    }
    report
        .allow
        .iter()
        .map(|a| {
            let want = Value::Array(a.want.clone());
            let (saw, verdict) = match a.passed {
                None => (
                    "-".to_owned(),
                    "not evaluated (the request was refused before this rule)",
                ),
                Some(passed) => (
                    a.saw.as_ref().map_or("absent".to_owned(), Value::to_string),
                    if passed { "passed" } else { "FAILED" },
                ),
            };
            format!("{}: want any of {want}, saw {saw}: {verdict}", a.claim)
        })
        .collect()
}

fn header_lines(h: &HeadersReport) -> Vec<String> {
    let mut lines = Vec::new();
    if !h.stripped.is_empty() {
        lines.push(format!("stripped  {}", h.stripped.join(", ")));
    }
    for (name, value) in &h.set {
        let why = match (h.identity.contains_key(name), h.replaced.contains(name)) {
            (true, true) => "  (identity; the client's value is dropped)",
            (true, false) => "  (identity)",
            (false, true) => "  (rewritten: the client sent one)",
            (false, false) => "",
        };
        lines.push(format!("set       {name}: {value}{why}"));
    }
    let kept: Vec<&str> = h
        .upstream
        .iter()
        .filter(|l| !h.set.contains_key(&l.name))
        .map(|l| l.name.as_str())
        .collect();
    if !kept.is_empty() {
        lines.push(format!("kept      {}", kept.join(", ")));
    }
    lines
}

fn decision(report: &Report) -> String {
    match report.decision {
        Decision::Allow => format!("ALLOW: {}", report.reason),
        Decision::Endpoint => format!("ENDPOINT: {}", report.reason),
        Decision::Deny => format!(
            "DENY {} {}: {}",
            report.status.map_or("-".into(), |s| s.to_string()),
            report.error.unwrap_or("-"),
            report.reason
        ),
    }
}
