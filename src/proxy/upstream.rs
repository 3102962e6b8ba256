//! Upstreams: where a route's requests go. The forwarding step asks an upstream for its
//! target and client and does not know how many servers there are or how they are reached.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use http::uri::{Authority, Scheme};

use super::client::UpstreamClient;
use crate::config::{Diagnostics, KeyPath, RawUpstream};

/// Where an upstream's requests go.
#[derive(Debug, Clone)]
pub enum Target {
    /// The built-in demo upstream: answers with the request it received, as JSON.
    Echo,
    /// An HTTP server; `base_path` (no trailing `/`) is put in front of every forwarded path.
    Http {
        scheme: Scheme,
        authority: Authority,
        base_path: String,
        /// Keep-alive pool to this upstream, with its timeouts.
        client: Box<UpstreamClient>,
    },
}

#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: Arc<str>,
    pub target: Target,
    pub connect_timeout: Duration,
    pub timeout: Duration,
}

impl Upstream {
    /// The path prefix every forwarded path goes under (`""` for none).
    pub fn base_path(&self) -> &str {
        match &self.target {
            Target::Http { base_path, .. } => base_path,
            Target::Echo => "",
        }
    }

    /// Whether `other` reaches the same server with the same timeouts (its pool can be kept).
    fn same_server(&self, other: &Upstream) -> bool {
        match (&self.target, &other.target) {
            (
                Target::Http {
                    scheme, authority, ..
                },
                Target::Http {
                    scheme: s,
                    authority: a,
                    ..
                },
            ) => {
                scheme == s
                    && authority == a
                    && self.connect_timeout == other.connect_timeout
                    && self.timeout == other.timeout
            }
            _ => false,
        }
    }

    /// Takes over `previous`'s connection pool when it reaches the same server, so a reload
    /// keeps warm connections.
    pub fn adopt_pool(&mut self, previous: &[Upstream]) {
        let Some(old) = previous.iter().find(|old| old.same_server(self)) else {
            return;
        };
        if let (Target::Http { client, .. }, Target::Http { client: pool, .. }) =
            (&mut self.target, &old.target)
        {
            *client = pool.clone();
        }
    }
}

/// Compiles `upstreams:`: the upstreams that are valid, and their index by name.
pub fn compile(
    raw: &BTreeMap<String, RawUpstream>,
    diags: &mut Diagnostics,
) -> (Vec<Upstream>, HashMap<String, usize>) {
    let mut index = HashMap::new();
    let mut upstreams = Vec::new();
    for (name, up) in raw {
        match compile_one(name, up) {
            Ok(u) => {
                index.insert(name.clone(), upstreams.len());
                upstreams.push(u);
            }
            Err(msg) => diags.at(&KeyPath::root().key("upstreams").key(name), msg),
        }
    }
    (upstreams, index)
}

fn compile_one(name: &str, raw: &RawUpstream) -> Result<Upstream, String> {
    let url = raw.url.as_str();
    let target = if url == "builtin:echo" {
        Target::Echo
    } else {
        let uri: Uri = url
            .parse()
            .map_err(|_| format!("`{url}` is not a URL (e.g. http://127.0.0.1:9000)"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(
                    "https upstreams are not supported yet: use http:// on a trusted network"
                        .into(),
                );
            }
            _ => {
                return Err(format!(
                    "`{url}` must start with http:// (or be `builtin:echo`)"
                ));
            }
        }
        if uri.query().is_some() {
            return Err("an upstream URL cannot have a query string".into());
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("`{url}` has no host"))?;
        if authority.as_str().contains('@') {
            return Err("credentials in upstream URLs are not supported".into());
        }
        Target::Http {
            scheme: Scheme::HTTP,
            authority,
            base_path: uri.path().trim_end_matches('/').to_owned(),
            client: Box::new(UpstreamClient::new(raw.connect_timeout.0, raw.timeout.0)),
        }
    };
    Ok(Upstream {
        name: name.into(),
        target,
        connect_timeout: raw.connect_timeout.0,
        timeout: raw.timeout.0,
    })
}
