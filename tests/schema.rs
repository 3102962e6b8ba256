//! The JSON Schema of gateway.yaml (`authgate schema`, committed as docs/gateway.schema.json):
//! the committed file is what the binary prints, every shipped config passes it and points
//! editors at it, and it refuses what the parser refuses (a misspelled key first of all) and
//! takes what the parser takes.

mod common;

use std::path::{Path, PathBuf};

use serde_json::Value;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

const COMMITTED: &str = "docs/gateway.schema.json";

/// What `authgate schema` prints, parsed.
fn printed_schema() -> (String, Value) {
    let out = common::authgate_cli().arg("schema").output().unwrap();
    common::assert_success(&out);
    let text = String::from_utf8(out.stdout).unwrap();
    let schema = serde_json::from_str(&text).expect("authgate schema prints JSON");
    (text, schema)
}

fn validator() -> jsonschema::Validator {
    let (_, schema) = printed_schema();
    jsonschema::draft7::new(&schema).expect("the schema is a valid draft 7 schema")
}

/// Every schema error in `yaml`, one line each (empty when it passes).
fn schema_errors(validator: &jsonschema::Validator, yaml: &str) -> Vec<String> {
    let instance: Value = yaml_serde::from_str(yaml).expect("YAML");
    validator
        .iter_errors(&instance)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

#[test]
fn committed_schema_is_what_the_binary_prints() {
    let (printed, _) = printed_schema();
    let committed = std::fs::read_to_string(repo().join(COMMITTED)).unwrap_or_default();
    assert!(
        committed == printed,
        "{COMMITTED} is stale (the config structs changed): regenerate it with\n\n    cargo run -- schema > {COMMITTED}\n\nand commit it"
    );
}

/// Every property, at every level, says what it is for: editors show it on hover.
#[test]
fn every_property_has_a_description_and_closed_objects_refuse_unknown_keys() {
    let (_, schema) = printed_schema();
    let mut objects = vec![("(root)".to_owned(), &schema)];
    for (name, def) in schema["definitions"].as_object().unwrap() {
        objects.push((name.clone(), def));
    }
    let mut closed = 0;
    for (name, object) in objects {
        let Some(properties) = object["properties"].as_object() else {
            continue;
        };
        for (key, property) in properties {
            let description = property["description"].as_str().unwrap_or("");
            assert!(
                description.len() > 10,
                "{name}.{key} has no description: write a doc comment on the field"
            );
        }
        assert_eq!(
            object["additionalProperties"],
            Value::Bool(false),
            "{name} takes unknown keys: its struct needs #[serde(deny_unknown_fields)]"
        );
        closed += 1;
    }
    assert!(closed >= 20, "only {closed} objects with properties");
}

/// Every YAML file under examples/ (and the shipped gateway.yaml) that is an authgate config
/// (a mapping with `tokens:`), with its text. The others must be docker-compose files.
fn shipped_configs() -> Vec<(PathBuf, String)> {
    let mut files = vec![repo().join("gateway.yaml")];
    let mut dirs = vec![repo().join("examples")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            ) {
                files.push(path);
            }
        }
    }
    let mut configs = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let value: Value = yaml_serde::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: not YAML: {e}", path.display()));
        if value.get("tokens").is_some() {
            configs.push((path, text));
        } else {
            assert!(
                value.get("services").is_some(),
                "{}: neither an authgate config nor a compose file",
                path.display()
            );
        }
    }
    configs
}

#[test]
fn shipped_configs_pass_the_schema_and_point_editors_at_it() {
    let validator = validator();
    let configs = shipped_configs();
    assert!(configs.len() >= 5, "found {configs:?}");
    for (path, text) in configs {
        let errors = schema_errors(&validator, &text);
        assert!(
            errors.is_empty(),
            "{}:\n{}",
            path.display(),
            errors.join("\n")
        );
        let first = text.lines().next().unwrap_or("");
        let target = first
            .strip_prefix("# yaml-language-server: $schema=")
            .unwrap_or_else(|| {
                panic!(
                    "{}: the first line must be `# yaml-language-server: $schema=<relative path to {COMMITTED}>`",
                    path.display()
                )
            });
        let resolved = path.parent().unwrap().join(target);
        assert_eq!(
            resolved.canonicalize().ok(),
            repo().join(COMMITTED).canonicalize().ok(),
            "{}: $schema={target} is not {COMMITTED}",
            path.display()
        );
    }
}

/// `authgate check` on `yaml` (secrets and the store from no environment).
fn check(yaml: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = common::authgate_cli()
        .args(["check", "--config"])
        .arg(&path)
        .env("AUTHGATE_STORE", "memory:")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The shipped gateway.yaml with `from` replaced by `to` (which must occur exactly once).
fn edited(from: &str, to: &str) -> String {
    let shipped = std::fs::read_to_string(repo().join("gateway.yaml")).unwrap();
    assert_eq!(shipped.matches(from).count(), 1, "{from:?}");
    shipped.replace(from, to)
}

/// The hostile case first: a misspelled key is refused by the schema (what an editor
/// underlines) exactly as `authgate check` refuses it, and the message names the key.
#[test]
fn a_misspelled_key_fails_the_schema_as_it_fails_check() {
    let validator = validator();
    for (from, to, key) in [
        (
            "match: { path_prefix: \"/admin\" }",
            "match: { path_prefx: \"/admin\" }",
            "path_prefx",
        ),
        ("upstreams:\n", "upstream:\n", "upstream"),
        ("  leeway: \"30s\"", "  leway: \"30s\"", "leway"),
    ] {
        let yaml = edited(from, to);
        let errors = schema_errors(&validator, &yaml);
        assert!(
            errors.iter().any(|e| e.contains(key)),
            "{key}: the schema let it through or did not name it: {errors:?}"
        );
        let (ok, stderr) = check(&yaml);
        assert!(!ok && stderr.contains(key), "{key}: check said {stderr}");
    }
}

/// Beyond key names, the schema and the parser agree on the forms that need a hand-written
/// schema: durations, `${VAR}`, scalars read as text, allow values, the two upstream forms,
/// enum spellings.
#[test]
fn the_schema_takes_what_check_takes_and_refuses_what_it_refuses() {
    let validator = validator();
    let cases: [(&str, &str, bool); 12] = [
        ("ttl: \"1h\"", "ttl: \"1h30m\"", true),
        ("ttl: \"1h\"", "ttl: 3600", false),
        ("ttl: \"1h\"", "ttl: \"1 hour\"", false),
        (
            "ttl: \"1h\"",
            "ttl: \"${AUTHGATE_TEST_UNSET_TTL:-2h}\"",
            true,
        ),
        ("id: \"k1\"", "id: 1", true),
        ("roles: \"admin\" ", "roles: [admin, ops] ", true),
        ("roles: \"admin\" ", "roles: [] ", false),
        (
            "demo: \"builtin:echo\"",
            "demo: { url: \"builtin:echo\", timeout: 5s }",
            true,
        ),
        (
            "demo: \"builtin:echo\"",
            "demo: { url: \"builtin:echo\", servers: [\"builtin:echo\"] }",
            false,
        ),
        ("demo: \"builtin:echo\"", "demo: 9000", false),
        ("max_entries: 100000", "max_entries: -1", false),
        ("auth: none", "auth: None", false),
    ];
    for (from, to, valid) in cases {
        let yaml = edited(from, to);
        let errors = schema_errors(&validator, &yaml);
        let (ok, stderr) = check(&yaml);
        assert_eq!(ok, valid, "`{to}`: check said {stderr}");
        assert_eq!(errors.is_empty(), valid, "`{to}`: schema said {errors:?}");
    }
}
