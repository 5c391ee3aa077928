//! The patch formats: JSON merge patch (RFC 7386), what `application/merge-patch+json` means
//! and what the simulator also does for strategic merge patches and server-side apply (a
//! subset: lists are replaced whole, nothing is removed by omission); and JSON patch
//! (RFC 6902, `application/json-patch+json`).

use serde_json::Value;

/// Applies `patch` to `target`: objects merge key by key, `null` removes a key, anything
/// else replaces.
pub fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    if let Value::Object(target) = target {
        for (key, value) in patch {
            if value.is_null() {
                target.remove(key);
            } else {
                merge(target.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

/// Splits a JSON pointer into its unescaped tokens.
fn tokens(pointer: &str) -> Result<Vec<String>, String> {
    if pointer.is_empty() {
        return Ok(Vec::new());
    }
    let rest = pointer
        .strip_prefix('/')
        .ok_or_else(|| format!("invalid JSON pointer {pointer:?}"))?;
    Ok(rest
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect())
}

fn parent<'a>(
    document: &'a mut Value,
    tokens: &[String],
    path: &str,
) -> Result<&'a mut Value, String> {
    let mut at = document;
    for token in tokens {
        at = match at {
            Value::Object(map) => map.get_mut(token),
            Value::Array(items) => token.parse::<usize>().ok().and_then(|i| items.get_mut(i)),
            _ => None,
        }
        .ok_or_else(|| format!("path {path:?} does not exist"))?;
    }
    Ok(at)
}

fn add(document: &mut Value, path: &str, value: Value) -> Result<(), String> {
    let mut tokens = tokens(path)?;
    let Some(last) = tokens.pop() else {
        *document = value;
        return Ok(());
    };
    match parent(document, &tokens, path)? {
        Value::Object(map) => {
            map.insert(last, value);
        }
        Value::Array(items) => {
            let index = if last == "-" {
                items.len()
            } else {
                last.parse::<usize>()
                    .ok()
                    .filter(|i| *i <= items.len())
                    .ok_or_else(|| format!("index {last:?} of {path:?} is out of bounds"))?
            };
            items.insert(index, value);
        }
        _ => return Err(format!("the parent of {path:?} is not a container")),
    }
    Ok(())
}

fn remove(document: &mut Value, path: &str) -> Result<Value, String> {
    let mut tokens = tokens(path)?;
    let last = tokens.pop().ok_or("cannot remove the whole document")?;
    let missing = || format!("path {path:?} does not exist");
    match parent(document, &tokens, path)? {
        Value::Object(map) => map.remove(&last).ok_or_else(missing),
        Value::Array(items) => {
            let index = last
                .parse::<usize>()
                .ok()
                .filter(|i| *i < items.len())
                .ok_or_else(missing)?;
            Ok(items.remove(index))
        }
        _ => Err(missing()),
    }
}

/// Applies a JSON patch (a list of operations) to `document`, all or nothing; the error
/// says which operation failed.
pub fn json_patch(document: &mut Value, operations: &Value) -> Result<(), String> {
    let operations = operations
        .as_array()
        .ok_or("a JSON patch must be a list of operations")?;
    let mut result = document.clone();
    for operation in operations {
        let field = |name: &str| {
            operation
                .get(name)
                .and_then(Value::as_str)
                .ok_or_else(|| format!("operation {operation} has no {name:?}"))
        };
        let value = || {
            operation
                .get("value")
                .cloned()
                .ok_or_else(|| format!("operation {operation} has no \"value\""))
        };
        let path = field("path")?;
        match field("op")? {
            "add" => add(&mut result, path, value()?)?,
            "remove" => {
                remove(&mut result, path)?;
            }
            "replace" => {
                remove(&mut result, path)?;
                add(&mut result, path, value()?)?;
            }
            "move" => {
                let moved = remove(&mut result, field("from")?)?;
                add(&mut result, path, moved)?;
            }
            "copy" => {
                let copied = result.pointer(field("from")?).cloned().ok_or_else(|| {
                    format!(
                        "path {:?} does not exist",
                        field("from").unwrap_or_default()
                    )
                })?;
                add(&mut result, path, copied)?;
            }
            "test" => {
                if result.pointer(path) != Some(&value()?) {
                    return Err(format!("test of {path:?} failed"));
                }
            }
            other => return Err(format!("unknown operation {other:?}")),
        }
    }
    *document = result;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_rfc_7386_examples() {
        let cases = [
            (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
            (
                json!({"a": "b"}),
                json!({"b": "c"}),
                json!({"a": "b", "b": "c"}),
            ),
            (json!({"a": "b"}), json!({"a": null}), json!({})),
            (json!({"a": ["b"]}), json!({"a": "c"}), json!({"a": "c"})),
            (json!({"a": "c"}), json!({"a": ["b"]}), json!({"a": ["b"]})),
            (
                json!({"a": {"b": "c"}}),
                json!({"a": {"b": "d", "c": null}}),
                json!({"a": {"b": "d"}}),
            ),
            (
                json!({"e": null}),
                json!({"a": 1}),
                json!({"e": null, "a": 1}),
            ),
            (
                json!([1, 2]),
                json!({"a": "b", "c": null}),
                json!({"a": "b"}),
            ),
            (
                json!({}),
                json!({"a": {"bb": {"ccc": null}}}),
                json!({"a": {"bb": {}}}),
            ),
        ];
        for (mut target, patch, expected) in cases {
            merge(&mut target, &patch);
            assert_eq!(target, expected, "patch {patch}");
        }
    }

    #[test]
    fn json_patch_operations() {
        let mut document = json!({"metadata": {"labels": {"a/b": "1"}}, "list": [1, 2]});
        let operations = json!([
            {"op": "test", "path": "/metadata/labels/a~1b", "value": "1"},
            {"op": "replace", "path": "/metadata/labels/a~1b", "value": "2"},
            {"op": "add", "path": "/list/-", "value": 3},
            {"op": "add", "path": "/list/0", "value": 0},
            {"op": "remove", "path": "/list/1"},
            {"op": "copy", "from": "/list", "path": "/copy"},
            {"op": "move", "from": "/copy", "path": "/moved"},
        ]);
        json_patch(&mut document, &operations).unwrap();
        assert_eq!(
            document,
            json!({"metadata": {"labels": {"a/b": "2"}}, "list": [0, 2, 3], "moved": [0, 2, 3]})
        );
        let failing = json!([{"op": "add", "path": "/x", "value": 1}, {"op": "test", "path": "/x", "value": 2}]);
        assert!(json_patch(&mut document, &failing).is_err());
        assert!(
            document.get("x").is_none(),
            "a failed patch changes nothing"
        );
    }
}
