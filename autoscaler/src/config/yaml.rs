//! A YAML document as a tree whose every key and value knows its line, so that a config
//! check can name the line of what it refuses (serde's derive drops locations).

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// A value with the 1-based line it starts on (0 when the parser could not tell).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Located<T> {
    pub value: T,
    pub line: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Located<Value>>),
    /// Entries in document order; keys are scalars read as strings.
    Map(Vec<(Located<String>, Located<Value>)>),
}

impl Value {
    /// What a message calls this kind of value.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "nothing",
            Value::Bool(_) => "a boolean",
            Value::Int(_) | Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    /// The same data as JSON, for provider-specific sections kept as given.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Null => serde_json::Value::Null,
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Int(i) => serde_json::Value::from(*i),
            // JSON has no NaN or infinity: such a float becomes null.
            Value::Float(f) => serde_json::Number::from_f64(*f)
                .map(serde_json::Value::Number)
                .unwrap_or(serde_json::Value::Null),
            Value::Str(s) => serde_json::Value::String(s.clone()),
            Value::Seq(items) => items.iter().map(|i| i.value.to_json()).collect(),
            Value::Map(entries) => serde_json::Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.value.clone(), v.value.to_json()))
                    .collect(),
            ),
        }
    }
}

/// A parse failure with the line the parser stopped on (0 when unknown).
#[derive(Debug)]
pub(super) struct ParseError {
    pub line: u64,
    pub message: String,
}

/// Parses one YAML document; an empty document is `Null`.
pub(super) fn parse(input: &str) -> Result<Located<Value>, ParseError> {
    if input.trim().is_empty() {
        return Ok(Located {
            value: Value::Null,
            line: 1,
        });
    }
    let options = serde_saphyr::options! {
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::Error,
        with_snippet: false,
    };
    match serde_saphyr::from_str_with_options::<Spanned<Value>>(input, options) {
        Ok(doc) => Ok(located(doc)),
        Err(e) => Err(ParseError {
            line: e.location().map(|l| l.line()).unwrap_or(0),
            message: first_line(&e.to_string()),
        }),
    }
}

/// The parser's messages may carry a rendered snippet below the first line; the caller
/// names the line itself.
fn first_line(message: &str) -> String {
    message.lines().next().unwrap_or(message).trim().to_string()
}

fn located<T>(s: Spanned<T>) -> Located<T> {
    Located {
        line: s.referenced.line(),
        value: s.value,
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a YAML value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(i64::try_from(v)
            .map(Value::Int)
            .unwrap_or(Value::Float(v as f64)))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_string()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Value>>()? {
            items.push(located(item));
        }
        Ok(Value::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<String>>()? {
            let value = map.next_value::<Spanned<Value>>()?;
            entries.push((located(key), located(value)));
        }
        Ok(Value::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_and_value_knows_its_line() {
        let doc = parse("a: 1\nb:\n  c: [x, 2.5]\n  d: { e: true }\n").unwrap();
        let Value::Map(top) = doc.value else {
            panic!("expected a mapping, got {:?}", doc.value)
        };
        assert_eq!(top[0].0.value, "a");
        assert_eq!(top[0].0.line, 1);
        assert_eq!(top[0].1.value, Value::Int(1));
        assert_eq!(top[1].0.line, 2);
        let Value::Map(inner) = &top[1].1.value else {
            panic!("expected a mapping")
        };
        assert_eq!(inner[0].0.line, 3);
        assert_eq!(inner[1].0.line, 4);
        assert_eq!(
            inner[0].1.value.to_json(),
            serde_json::json!(["x", 2.5]),
            "lists convert to JSON as given"
        );
    }

    #[test]
    fn broken_yaml_reports_its_line() {
        let err = parse("a: 1\nb: [1, 2\nc: 3\n").unwrap_err();
        assert!(err.line >= 2, "line {} for {}", err.line, err.message);
        let dup = parse("a: 1\na: 2\n").unwrap_err();
        assert_eq!(dup.line, 2, "{}", dup.message);
    }
}
