//! Config files: arbitrary UTF-8 as `gateway.yaml` through `Source::parse` and
//! `Runtime::from_source` (parse, validate, compile: what `authgate check` and every reload
//! run) must never panic; errors must come out as located diagnostics.
//!
//! Configs naming an absolute file (key files, `users_file`, `page_template`) are skipped: the
//! config is trusted, and reading `/dev/zero` or a FIFO would hang the fuzzer, not authgate's
//! parser. Relative files resolve under a directory that does not exist.
#![no_main]

use std::path::Path;

use authgate::config::Source;
use authgate::runtime::Runtime;
use http::Method;
use libfuzzer_sys::fuzz_target;

const CONFIG_PATH: &str = "/nonexistent-authgate-fuzz/gateway.yaml";

fn absolute(file: Option<&authgate::config::Text>) -> bool {
    file.is_some_and(|f| Path::new(f.as_str()).is_absolute())
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let source = Source::from_text(Path::new(CONFIG_PATH), text.to_owned());
    let raw = match source.parse() {
        Ok(raw) => raw,
        Err(e) => {
            let diagnostics = e.diagnostics();
            assert!(!diagnostics.is_empty());
            assert!(diagnostics.iter().all(|d| d.starts_with(CONFIG_PATH)));
            return;
        }
    };
    let names_absolute_file = raw.tokens.keys.iter().any(|k| {
        absolute(k.secret_file.as_ref())
            || absolute(k.private_key_file.as_ref())
            || absolute(k.public_key_file.as_ref())
    }) || raw
        .login
        .as_ref()
        .is_some_and(|l| absolute(l.users_file.as_ref()) || absolute(l.page_template.as_ref()));
    if names_absolute_file {
        return;
    }
    match Runtime::from_source(&source) {
        Ok(rt) => {
            assert!(!rt.routes.is_empty(), "a runtime without routes");
            for path in ["/", "/admin", "/a/b;x/c"] {
                let _ = rt.routes.find(&Method::GET, Some("example.com"), path);
            }
        }
        Err(e) => {
            let diagnostics = e.diagnostics();
            assert!(!diagnostics.is_empty(), "an error without a diagnostic");
        }
    }
});
