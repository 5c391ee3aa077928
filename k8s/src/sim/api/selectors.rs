//! Label and field selectors, as the real server parses and applies them to lists and
//! watches.

use serde_json::Value;

use super::resources::ResourceType;

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq)]
enum LabelRequirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed `labelSelector`: every requirement must hold (an empty one matches everything).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelSelector(Vec<LabelRequirement>);

/// Splits on commas outside parentheses.
fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 316
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
}

fn parse_set(key: &str, rest: &str, text: &str) -> Result<Vec<String>, String> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| {
            format!("unable to parse requirement: {text}: expected ( values ) after {key}")
        })?;
    Ok(inner
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect())
}

impl LabelSelector {
    /// Parses `a=b,c!=d,e in (x,y),f notin (z),g,!h`; the error is the message of a 400.
    pub fn parse(text: &str) -> Result<LabelSelector, String> {
        let mut requirements = Vec::new();
        if text.trim().is_empty() {
            return Ok(LabelSelector(requirements));
        }
        for part in split_top_level(text) {
            let part = part.trim();
            let invalid = || format!("unable to parse requirement: found '{part}', expected: key");
            let requirement = if let Some(key) = part.strip_prefix('!') {
                LabelRequirement::NotExists(key.trim().to_string())
            } else if let Some((key, value)) = part.split_once("!=") {
                LabelRequirement::NotEquals(key.trim().to_string(), value.trim().to_string())
            } else if let Some((key, value)) = part.split_once("==") {
                LabelRequirement::Equals(key.trim().to_string(), value.trim().to_string())
            } else if let Some((key, value)) = part.split_once('=') {
                LabelRequirement::Equals(key.trim().to_string(), value.trim().to_string())
            } else if let Some((key, rest)) = part.split_once(" notin ") {
                let key = key.trim();
                LabelRequirement::NotIn(key.to_string(), parse_set(key, rest, part)?)
            } else if let Some((key, rest)) = part.split_once(" in ") {
                let key = key.trim();
                LabelRequirement::In(key.to_string(), parse_set(key, rest, part)?)
            } else {
                LabelRequirement::Exists(part.to_string())
            };
            let key = match &requirement {
                LabelRequirement::Equals(k, _)
                | LabelRequirement::NotEquals(k, _)
                | LabelRequirement::In(k, _)
                | LabelRequirement::NotIn(k, _)
                | LabelRequirement::Exists(k)
                | LabelRequirement::NotExists(k) => k,
            };
            if !valid_key(key) {
                return Err(invalid());
            }
            requirements.push(requirement);
        }
        Ok(LabelSelector(requirements))
    }

    /// Whether `object`'s `metadata.labels` satisfy every requirement.
    pub fn matches(&self, object: &Value) -> bool {
        let labels = object.pointer("/metadata/labels");
        let label = |key: &str| labels.and_then(|l| l.get(key)).and_then(Value::as_str);
        self.0.iter().all(|requirement| match requirement {
            LabelRequirement::Equals(k, v) => label(k) == Some(v.as_str()),
            LabelRequirement::NotEquals(k, v) => label(k) != Some(v.as_str()),
            LabelRequirement::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            LabelRequirement::NotIn(k, vs) => label(k).is_none_or(|l| vs.iter().all(|v| v != l)),
            LabelRequirement::Exists(k) => label(k).is_some(),
            LabelRequirement::NotExists(k) => label(k).is_none(),
        })
    }
}

/// A parsed `fieldSelector`: `field=value`, `field==value` or `field!=value`, comma-joined.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    /// Parses against the fields `resource` supports (`metadata.name`, `metadata.namespace`
    /// and its own); the error is the message of a 400.
    pub fn parse(text: &str, resource: &ResourceType) -> Result<FieldSelector, String> {
        let mut requirements = Vec::new();
        if text.trim().is_empty() {
            return Ok(FieldSelector(requirements));
        }
        for part in text.split(',') {
            let (field, equal, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, true, v)
            } else {
                return Err(format!(
                    "invalid selector: '{text}'; can't understand '{part}'"
                ));
            };
            let field = field.trim();
            if !matches!(field, "metadata.name" | "metadata.namespace")
                && !resource.field_labels.contains(&field)
            {
                return Err(format!("field label not supported: {field}"));
            }
            requirements.push((field.to_string(), equal, value.trim().to_string()));
        }
        Ok(FieldSelector(requirements))
    }

    /// Whether `object` satisfies every requirement; a missing field compares as `""`.
    pub fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|(field, equal, value)| {
            let pointer = format!("/{}", field.replace('.', "/"));
            let actual = match object.pointer(&pointer) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Bool(b)) => b.to_string(),
                Some(Value::Number(n)) => n.to_string(),
                _ => String::new(),
            };
            (actual == *value) == *equal
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::api::resources::PODS;
    use serde_json::json;

    fn pod(labels: Value, phase: &str) -> Value {
        json!({"metadata": {"name": "p", "namespace": "ns", "labels": labels}, "status": {"phase": phase}})
    }

    #[test]
    fn label_selectors_of_every_form() {
        let object = pod(json!({"a": "1", "b": "2"}), "Running");
        let matches = |s: &str| LabelSelector::parse(s).unwrap().matches(&object);
        assert!(matches(""));
        assert!(matches("a=1"));
        assert!(matches("a==1,b=2"));
        assert!(!matches("a=2"));
        assert!(matches("a!=2"));
        assert!(matches("c!=2"));
        assert!(matches("a in (1, 3)"));
        assert!(!matches("a in (3)"));
        assert!(matches("a notin (3),b"));
        assert!(!matches("a notin (1)"));
        assert!(matches("c notin (1)"));
        assert!(matches("!c"));
        assert!(!matches("!a"));
        assert!(!matches("c"));
        assert!(LabelSelector::parse("a b").is_err());
    }

    #[test]
    fn field_selectors_compare_as_strings_and_refuse_unknown_fields() {
        let running = pod(json!({}), "Running");
        let failed = pod(json!({}), "Failed");
        let selector = FieldSelector::parse("status.phase!=Failed,metadata.name=p", PODS).unwrap();
        assert!(selector.matches(&running));
        assert!(!selector.matches(&failed));
        let unbound = FieldSelector::parse("spec.nodeName=", PODS).unwrap();
        assert!(unbound.matches(&running));
        assert!(FieldSelector::parse("spec.containers=x", PODS).is_err());
    }
}
