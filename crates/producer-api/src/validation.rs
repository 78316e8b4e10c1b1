//! Event schema validation (`--event-schema`): every event payload is
//! checked against one JSON Schema (2020-12) before it is produced, so a
//! malformed event is refused at the door with a 422 that says where it is
//! wrong, instead of failing later in a consumer.
//!
//! The schema is compiled once at start-up; `$ref`s must resolve inside the
//! file (the validator is built without network or file resolvers).

use std::path::Path;

use anyhow::Context;
use serde_json::Value;

use crate::error::{AppError, SchemaViolation};

/// Most mismatches reported for one event: enough to fix it, and a bound
/// on the reply for an event that is wrong everywhere.
pub const MAX_REPORTED: usize = 10;

/// A compiled event schema.
pub struct EventSchema {
    validator: jsonschema::Validator,
}

impl std::fmt::Debug for EventSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventSchema")
    }
}

impl EventSchema {
    /// Reads and compiles the schema at `path`; the error says which file
    /// and what is wrong with it.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read(path).with_context(|| format!("reading the event schema {}", path.display()))?;
        let schema: Value = serde_json::from_slice(&text)
            .with_context(|| format!("the event schema {} is not JSON", path.display()))?;
        Self::new(&schema).map_err(|why| {
            anyhow::anyhow!("the event schema {} is not a valid JSON Schema (2020-12): {why}", path.display())
        })
    }

    /// Compiles `schema`.
    pub fn new(schema: &Value) -> Result<Self, String> {
        let validator = jsonschema::draft202012::new(schema).map_err(|e| e.to_string())?;
        Ok(Self { validator })
    }

    /// `Ok` if `event` matches; otherwise a 422 listing up to
    /// [`MAX_REPORTED`] mismatches.
    pub fn check(&self, event: &Value) -> Result<(), AppError> {
        // The common case, a valid event, takes the fast path that stops
        // early and builds no error values.
        if self.validator.is_valid(event) {
            return Ok(());
        }
        metrics::counter!("schema_rejections_total").increment(1);
        let errors = self
            .validator
            .iter_errors(event)
            .take(MAX_REPORTED)
            .map(|error| SchemaViolation {
                path: error.instance_path().as_str().to_owned(),
                // Masked: the message names the rule, not the client's value
                // (which may be large, or sensitive in a log).
                message: error.masked().to_string(),
            })
            .collect();
        Err(AppError::SchemaMismatch(errors))
    }

    /// [`Self::check`] for an event given as JSON text (`/publish` keeps the
    /// message as raw bytes). Text that is well-formed but has no JSON value
    /// to check (a number beyond f64's range, a lone UTF-16 surrogate) is
    /// refused as malformed, as the routes that parse their events refuse it.
    pub fn check_raw(&self, event: &serde_json::value::RawValue) -> Result<(), AppError> {
        let value: Value =
            serde_json::from_str(event.get()).map_err(|e| AppError::MalformedJson(format!("message: {e}")))?;
        self.check(&value)
    }
}

/// Checks a `/publish` message, kept as the client's JSON text: against
/// `schema` if there is one, else only that it is a JSON value the rest of
/// the system can read ([`stream_core::json::check`], as the consumer
/// checks it). Text serde_json skims as well-formed may still hold no
/// value (a number beyond f64's range, a lone UTF-16 surrogate, nesting of
/// 128 levels or more, serde_json's recursion limit): the consumer would
/// dead-letter it, and the routes that parse their events refuse it as
/// malformed, so this does too.
pub fn check_message(schema: Option<&EventSchema>, message: &serde_json::value::RawValue) -> Result<(), AppError> {
    match schema {
        Some(schema) => schema.check_raw(message),
        None => stream_core::json::check(message.get().as_bytes())
            .map(drop)
            .map_err(|e| AppError::MalformedJson(format!("message: {e}"))),
    }
}

/// Checks `event` against `schema` if there is one.
pub fn check(schema: Option<&EventSchema>, event: &Value) -> Result<(), AppError> {
    match schema {
        Some(schema) => schema.check(event),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn schema() -> EventSchema {
        EventSchema::new(&json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "required": ["sensor", "temperature"],
            "properties": {
                "sensor": { "type": "string" },
                "temperature": { "type": "number", "minimum": -90, "maximum": 60 }
            }
        }))
        .unwrap()
    }

    #[test]
    fn mismatches_name_their_place() {
        let schema = schema();
        schema.check(&json!({"sensor": "s1", "temperature": 21.5})).unwrap();
        let error = schema.check(&json!({"sensor": "s1", "temperature": "hot"})).unwrap_err();
        let AppError::SchemaMismatch(errors) = &error else { panic!("{error:?}") };
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].path, "/temperature");
        assert!(errors[0].message.contains("number"), "{errors:?}");
        assert!(!errors[0].message.contains("hot"), "the value is masked: {errors:?}");
        let AppError::SchemaMismatch(errors) = schema.check(&json!({"temperature": 1})).unwrap_err() else { panic!() };
        assert_eq!(errors[0].message, "\"sensor\" is a required property", "property names are not masked");
        let AppError::SchemaMismatch(errors) = schema.check(&json!([1])).unwrap_err() else { panic!() };
        assert_eq!(errors[0].path, "");
        let raw = serde_json::value::RawValue::from_string(r#"{"sensor": 1, "temperature": 99}"#.into()).unwrap();
        let AppError::SchemaMismatch(errors) = schema.check_raw(&raw).unwrap_err() else { panic!() };
        let mut paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        paths.sort();
        assert_eq!(paths, ["/sensor", "/temperature"]);
    }

    #[test]
    fn without_a_schema_a_message_is_checked_to_hold_a_json_value() {
        let check = |text: String| check_message(None, &serde_json::value::RawValue::from_string(text).unwrap());
        for good in ["1", r#"{"a": [1, "\ud83d\ude00", null]}"#, &format!("{}{}", "[".repeat(127), "]".repeat(127))] {
            check(good.to_owned()).unwrap_or_else(|e| panic!("{good}: {e:?}"));
        }
        let reserved = r#"{"$serde_json::private::RawValue": 1}"#;
        for bad in [
            r#"{"t": 1e400}"#,
            r#""\ud800""#,
            r#"{"\udc00": 1}"#,
            &format!("{}{}", "[".repeat(128), "]".repeat(128)),
            reserved,
        ] {
            let error = check(bad.to_owned()).unwrap_err();
            assert!(
                matches!(&error, AppError::MalformedJson(detail) if detail.starts_with("message: ")),
                "{bad}: {error:?}"
            );
        }
    }

    #[test]
    fn raw_text_without_a_json_value_is_malformed_not_an_internal_error() {
        let schema = schema();
        for text in [r#"{"sensor": "s1", "temperature": 1e400}"#, r#"{"sensor": "\ud800", "temperature": 1}"#, "1e400"]
        {
            let raw = serde_json::value::RawValue::from_string(text.into()).unwrap();
            let error = schema.check_raw(&raw).unwrap_err();
            assert!(
                matches!(&error, AppError::MalformedJson(detail) if detail.starts_with("message: ")),
                "{text}: {error:?}"
            );
        }
    }

    #[test]
    fn invalid_schemas_are_refused() {
        assert!(EventSchema::new(&json!({"type": "no-such-type"})).is_err());
        assert!(EventSchema::new(&json!({"$ref": "https://example.com/remote.json"})).is_err());
        let dir = stream_core::testing::ScratchDir::new("schemas");
        let missing = dir.join("no-schema.json");
        let err = format!("{:#}", EventSchema::load(&missing).unwrap_err());
        assert!(err.contains("reading the event schema"), "{err}");
        let bad = dir.join("bad-schema.json");
        std::fs::write(&bad, "{\"type\": 5}").unwrap();
        let err = format!("{:#}", EventSchema::load(&bad).unwrap_err());
        assert!(err.contains("not a valid JSON Schema"), "{err}");
    }
}
