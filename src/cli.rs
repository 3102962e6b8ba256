//! Command line (clap): `run` (default), `check`, `hash-password`, `token`, `explain`,
//! `healthcheck`, `revoke`, `schema`.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{Map, Value};

use crate::config::parse_duration;
use crate::proxy::upstream::Target;
use crate::routes::PathMatch;
use crate::snapshot::Snapshot;

#[derive(Debug, Parser)]
#[command(
    name = "authgate",
    version,
    about = "Auth gateway reverse proxy: verifies JWTs per route and forwards claims as headers"
)]
pub struct Cli {
    /// Config file.
    #[arg(
        long,
        short = 'c',
        global = true,
        env = "AUTHGATE_CONFIG",
        default_value = "gateway.yaml"
    )]
    pub config: PathBuf,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log level or filter (e.g. `info`, `debug`, `authgate=debug`); RUST_LOG when not given.
    #[arg(long, global = true)]
    pub log_level: Option<String>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Output of `authgate explain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExplainFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve (the default).
    Run,
    /// Parse, validate and compile the config; print the route table; exit 1 on errors.
    Check,
    /// Read one password line from stdin (no echo on a terminal) and print its argon2id hash.
    HashPassword,
    /// Print a token signed with the config's signing key (the first key).
    Token {
        /// Subject (`sub`).
        #[arg(long)]
        sub: String,
        /// Extra claim `key=value`; `a,b` makes an array, JSON values are taken as JSON;
        /// repeating a key makes an array.
        #[arg(long = "claim", value_name = "KEY=VALUE")]
        claims: Vec<String>,
        /// Lifetime (e.g. `15m`); defaults to `tokens.ttl`.
        #[arg(long)]
        ttl: Option<String>,
    },
    /// Explain how the gateway would answer one request, without sending anything anywhere:
    /// the normalized path, each route tried, the token checks, the `allow` rules, the headers
    /// and path the upstream would receive, and where it would go.
    ///
    /// Exit 0 when the request would be forwarded (or answered by a gateway endpoint such as
    /// the login page), 1 when the gateway would refuse it, 2 on bad input (config, URL,
    /// header, claims). Revocation is not checked (the state store is not contacted); a remote
    /// JWKS is fetched as the gateway would when the request carries a token.
    Explain {
        /// Method, as sent (methods are case-sensitive).
        method: String,
        /// `https://host/path?query`, or `/path?query` with a `Host` header.
        url: String,
        /// A request header, `Name: value` (repeatable), e.g. `-H 'X-User-Id: root'`.
        #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
        headers: Vec<String>,
        /// A JWT sent as `Authorization: Bearer`, verified as the gateway would.
        #[arg(long, value_name = "JWT", conflicts_with = "claims")]
        token: Option<String>,
        /// Pretend a valid token with these claims (a JSON object with `sub`) was sent: it is
        /// signed here with the config's first key, so only its signature proves nothing.
        #[arg(long, value_name = "JSON")]
        claims: Option<String>,
        /// Output format; `json` is a stable object documented in the README.
        #[arg(long, value_enum, default_value_t = ExplainFormat::Text)]
        format: ExplainFormat,
    },
    /// Exit 0 when the running gateway's admin `/healthz` answers 200 (Docker's HEALTHCHECK).
    ///
    /// Otherwise exit 1 with the reason on stderr. Only `admin.listen` is read from the config,
    /// leniently: a config the gateway would refuse, or no config file at all, is no failure
    /// (the default admin address 127.0.0.1:9090 is asked then).
    Healthcheck {
        /// Admin listener to ask (`IP:PORT`), instead of `admin.listen` from the config.
        #[arg(long, value_name = "IP:PORT")]
        admin_addr: Option<String>,
    },
    /// Print the JSON Schema of the config file (draft 7), for editors and linters.
    ///
    /// The config is not read. `docs/gateway.schema.json` in the repository holds the output.
    Schema,
    /// Revoke a user's tokens, a session or one token, through the configured state store;
    /// running gateways enforce it within a second.
    #[command(group(clap::ArgGroup::new("what").required(true).args(["sub", "sid", "jti"])))]
    Revoke {
        /// Every token and session of this user (`sub`).
        #[arg(long)]
        sub: Option<String>,
        /// Every token of this session (`sid`) and its refresh tokens.
        #[arg(long)]
        sid: Option<String>,
        /// One token (`jti`).
        #[arg(long)]
        jti: Option<String>,
    },
}

/// What `authgate revoke` revokes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeTarget {
    User(String),
    Session(String),
    Token(String),
}

impl RevokeTarget {
    pub fn from_args(sub: Option<&str>, sid: Option<&str>, jti: Option<&str>) -> Option<Self> {
        match (sub, sid, jti) {
            (Some(s), None, None) => Some(RevokeTarget::User(s.to_owned())),
            (None, Some(s), None) => Some(RevokeTarget::Session(s.to_owned())),
            (None, None, Some(j)) => Some(RevokeTarget::Token(j.to_owned())),
            _ => None,
        }
    }
}

/// Revokes through `state`: the revocation (kept until every token it covers has expired:
/// `tokens.ttl` and the leeway from now) and, for a user or a session, their refresh tokens.
pub async fn revoke(
    state: &dyn crate::state::Store,
    snap: &Snapshot,
    target: &RevokeTarget,
) -> Result<String, crate::state::StoreError> {
    use crate::state::Revocation;
    let until = snap.issuer.session_end_from_now();
    let now = crate::clock::unix_now();
    match target {
        RevokeTarget::User(sub) => {
            let before = now + 1;
            state
                .revoke(Revocation::User {
                    sub: sub.clone(),
                    before,
                    until,
                })
                .await?;
            let ended = state.end_user_sessions(sub).await?;
            Ok(format!(
                "revoked every token of user `{sub}` issued until now, and {} refresh session(s)",
                ended.len()
            ))
        }
        RevokeTarget::Session(sid) => {
            state
                .revoke(Revocation::Session {
                    sid: sid.clone(),
                    until,
                })
                .await?;
            let ended = state.end_session(sid).await?;
            Ok(format!(
                "revoked session `{sid}`{}",
                if ended.is_some() {
                    " and its refresh tokens"
                } else {
                    ""
                }
            ))
        }
        RevokeTarget::Token(jti) => {
            state
                .revoke(Revocation::Token {
                    jti: jti.clone(),
                    until,
                })
                .await?;
            Ok(format!("revoked token `{jti}`"))
        }
    }
}

/// Reads the password for `hash-password`: from the terminal without echo, or the first line
/// of stdin when it is a pipe. Only the line ending is removed.
pub fn read_password() -> Result<String, String> {
    use std::io::{BufRead, IsTerminal};
    let line = if std::io::stdin().is_terminal() {
        rpassword::prompt_password("Password: ").map_err(|e| e.to_string())?
    } else {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| format!("cannot read stdin: {e}"))?;
        line
    };
    let password = line
        .strip_suffix('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .unwrap_or(&line);
    if password.is_empty() {
        return Err("empty password".into());
    }
    if password.len() > crate::login::MAX_PASSWORD {
        return Err(format!(
            "password longer than {} bytes (the login route would refuse it)",
            crate::login::MAX_PASSWORD
        ));
    }
    Ok(password.to_owned())
}

/// Parses `--claim` arguments into a claims object.
pub fn parse_claims(args: &[String]) -> Result<Map<String, Value>, String> {
    let mut claims = Map::new();
    for arg in args {
        let (key, raw) = arg
            .split_once('=')
            .ok_or_else(|| format!("`{arg}`: write claims as key=value"))?;
        if key.is_empty() {
            return Err(format!("`{arg}`: empty claim name"));
        }
        let value = match serde_json::from_str::<Value>(raw) {
            Ok(v) if !v.is_string() => v,
            _ if raw.contains(',') => Value::Array(
                raw.split(',')
                    .map(|s| Value::String(s.trim().to_owned()))
                    .collect(),
            ),
            _ => Value::String(raw.to_owned()),
        };
        match claims.get_mut(key) {
            None => {
                claims.insert(key.to_owned(), value);
            }
            Some(Value::Array(items)) => match value {
                Value::Array(more) => items.extend(more),
                v => items.push(v),
            },
            Some(existing) => {
                let first = existing.take();
                let mut items = vec![first];
                match value {
                    Value::Array(more) => items.extend(more),
                    v => items.push(v),
                }
                *existing = Value::Array(items);
            }
        }
    }
    Ok(claims)
}

/// Signs a token as `authgate token` does.
pub fn token(
    rt: &Snapshot,
    sub: &str,
    claims: &[String],
    ttl: Option<&str>,
) -> Result<String, String> {
    let extra = parse_claims(claims)?;
    let ttl = match ttl {
        Some(t) => parse_duration(t)?,
        None => rt.issuer.ttl(),
    };
    rt.issuer
        .issue_for(sub, extra, None, ttl)
        .map(|issued| issued.token)
        .map_err(|e| e.to_string())
}

/// The route table as `authgate check` prints it.
pub fn route_table(rt: &Snapshot) -> String {
    let mut rows = vec![[
        "#".to_string(),
        "route".into(),
        "match".into(),
        "methods".into(),
        "host".into(),
        "auth".into(),
        "upstream".into(),
        "injects".into(),
    ]];
    for (i, (m, route)) in rt.routes.iter().enumerate() {
        let path = match &m.path {
            PathMatch::Any => "/*".to_string(),
            PathMatch::Exact(p) => p.clone(),
            PathMatch::Prefix(p) => format!("{p}/*"),
        };
        let methods = m.methods.as_ref().map_or("*".into(), |ms| {
            ms.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(",")
        });
        let target = match rt.upstream(route) {
            None => "- (forward-auth only)".to_owned(),
            Some(upstream) => match &upstream.target {
                Target::Echo => format!("{} (builtin:echo)", upstream.name),
                Target::Servers(servers) => {
                    let list: Vec<&str> = servers.list.iter().map(|s| &*s.label).collect();
                    format!("{} ({})", upstream.name, list.join(" "))
                }
            },
        };
        let injects = route
            .headers
            .iter()
            .map(|(h, _)| h.as_str())
            .collect::<Vec<_>>()
            .join(",");
        rows.push([
            i.to_string(),
            route.name.to_string(),
            path,
            methods,
            m.host.clone().unwrap_or_else(|| "*".into()),
            format!("{:?}", route.auth).to_lowercase(),
            target,
            if injects.is_empty() {
                "-".into()
            } else {
                injects
            },
        ]);
    }
    let widths: Vec<usize> = (0..8)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn claims_parse_scalars_lists_json_and_repeats() {
        let args: Vec<String> = [
            "roles=admin,dev",
            "tenant=acme",
            "level=3",
            "ok=true",
            "g=x",
            "g=y",
            "obj={\"a\":1}",
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        let c = parse_claims(&args).unwrap();
        assert_eq!(c["roles"], json!(["admin", "dev"]));
        assert_eq!(c["tenant"], json!("acme"));
        assert_eq!(c["level"], json!(3));
        assert_eq!(c["ok"], json!(true));
        assert_eq!(c["g"], json!(["x", "y"]));
        assert_eq!(c["obj"], json!({"a": 1}));
        assert!(parse_claims(&["novalue".to_string()]).is_err());
    }
}
