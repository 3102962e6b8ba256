//! The JSON Schema of `gateway.yaml` (`authgate schema`), derived with schemars from the raw
//! structs, so the schema cannot drift from what the parser takes. The types that deserialize
//! by hand describe here what they really accept.
//!
//! Draft 7, not 2020-12: editors (yaml-language-server, behind VS Code's and most other YAML
//! plugins) fully support draft 7 and only part of the newer drafts.

use std::borrow::Cow;

use schemars::generate::SchemaSettings;
use schemars::transform::RecursiveTransform;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Serialize, Serializer};
use serde_json::Value;

use super::duration::format_duration;
use super::{ClaimMatch, DurationValue, RawConfig, RawUpstream, RawUpstreamLong, Secret, Text};

/// The schema of the whole config file.
pub fn schema() -> Schema {
    SchemaSettings::draft07()
        .with_transform(RecursiveTransform(unwrap_description))
        .into_generator()
        .into_root_schema_for::<RawConfig>()
}

/// Doc comments are wrapped at 100 columns; an editor's hover wraps on its own, so each
/// paragraph becomes one line (blank lines between paragraphs stay).
fn unwrap_description(schema: &mut Schema) {
    if let Some(Value::String(text)) = schema.get_mut("description") {
        *text = text
            .split("\n\n")
            .map(|paragraph| {
                paragraph
                    .split('\n')
                    .map(str::trim)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect::<Vec<_>>()
            .join("\n\n");
    }
}

/// The schema as `authgate schema` prints it (and `docs/gateway.schema.json` holds it).
pub fn schema_json() -> String {
    // A Schema is a serde_json::Value inside: serializing it cannot fail.
    let mut out = serde_json::to_string_pretty(&schema()).unwrap_or_default();
    out.push('\n');
    out
}

/// Matches what `parse_duration` accepts (`90s`, `1h30m`, ` 2d `), or any value holding a
/// `${VAR}` reference, whose text is known only once the environment is.
const DURATION_PATTERN: &str = r"^(\s*([0-9]+(ms|s|m|h|d))+\s*|.*\$\{.*)$";

/// YAML reads `8080`, `1.5` or `true` as numbers or booleans; a [`Text`] takes their text, so
/// the schema accepts every scalar rather than flag values that work. (`~` is taken as text
/// too, but it is left out: as a value it is surely a slip.)
fn scalar() -> Schema {
    json_schema!({ "type": ["string", "number", "boolean"] })
}

impl JsonSchema for Text {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        "Text".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        scalar()
    }
}

/// Serialized only to show defaults in the schema.
impl Serialize for Text {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl JsonSchema for Secret {
    fn schema_name() -> Cow<'static, str> {
        "Secret".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": ["string", "number", "boolean"],
            "description": "A secret. Write `${VAR}` to take it from the environment and keep it out of the file.",
            "examples": ["${JWT_SECRET}"]
        })
    }
}

impl JsonSchema for DurationValue {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            "description": "A duration with its unit: `250ms`, `90s`, `15m`, `1h`, `2d`, or combined, `1h30m`. A bare number is refused (`60` could mean seconds or minutes).",
            "examples": ["90s", "15m", "1h30m"]
        })
    }
}

/// Serialized only to show defaults in the schema, as they would be written.
impl Serialize for DurationValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(self.0))
    }
}

impl JsonSchema for ClaimMatch {
    fn schema_name() -> Cow<'static, str> {
        "ClaimMatch".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "The value the claim must have, or a list of values of which it must have one. An array claim matches when it contains a wanted value. Values compare by type: `\"3\"` is not `3`.",
            "anyOf": [
                scalar(),
                { "type": "array", "items": scalar(), "minItems": 1 }
            ]
        })
    }
}

impl JsonSchema for RawUpstream {
    fn schema_name() -> Cow<'static, str> {
        "Upstream".into()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let long = generator.subschema_for::<RawUpstreamLong>();
        json_schema!({
            "description": "An upstream: its URL (`http[s]://host:port[/base/path]` or `builtin:echo`, the demo upstream that answers with the request it received), or a mapping with `url` or `servers` and how to reach them.",
            "anyOf": [
                {
                    "type": "string",
                    "description": "The one server's base URL, with the default timeouts.",
                    "examples": ["http://127.0.0.1:9000", "builtin:echo"]
                },
                long
            ]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pattern agrees with the parser on what is a duration, as a schema validator
    /// (regex dialect included) reads it.
    #[test]
    fn duration_pattern_takes_what_the_parser_takes() {
        let schema = serde_json::json!({ "type": "string", "pattern": DURATION_PATTERN });
        let validator = jsonschema::validator_for(&schema).unwrap();
        for ok in [
            "90s",
            "15m",
            "1h30m",
            "250ms",
            " 2d ",
            "0s",
            "${TTL}",
            "${TTL:-1h}",
        ] {
            assert!(validator.is_valid(&ok.into()), "{ok}");
        }
        for bad in ["60", "5y", "", "h", "-5s", "1.5h", "1 h", "15 m"] {
            assert!(super::super::parse_duration(bad).is_err(), "{bad}");
            assert!(!validator.is_valid(&bad.into()), "{bad}");
        }
    }

    #[test]
    fn descriptions_are_unwrapped_into_paragraphs() {
        let mut schema = json_schema!({ "description": "one\ntwo\n\nthree\n four" });
        unwrap_description(&mut schema);
        assert_eq!(schema.get("description").unwrap(), "one two\n\nthree four");
    }

    /// Defaults are shown as they would be written.
    #[test]
    fn defaults_serialize_as_written() {
        let d = DurationValue(std::time::Duration::from_secs(5400));
        assert_eq!(serde_json::to_value(d).unwrap(), "1h30m");
        assert_eq!(serde_json::to_value(Text("x".into())).unwrap(), "x");
    }
}
