//! Pod template merging: a node type's `node_config` (a Pod template, as Ray's) is merged
//! over the default one miniray builds.
//!
//! Rules (those of a strategic merge patch for the fields Pod templates use): objects merge
//! key by key; a `null` removes the key; a list whose items are all objects with a `name`
//! (containers, env, volumes, volumeMounts, ports) merges item by item on `name`, new items
//! appended; any other value replaces the default.

use serde_json::Value;

/// Merges `overlay` into `base`.
pub fn merge(base: &mut Value, overlay: &Value) {
    match (base, overlay) {
        (Value::Object(base), Value::Object(overlay)) => {
            for (key, value) in overlay {
                if value.is_null() {
                    base.remove(key);
                } else if let Some(existing) = base.get_mut(key) {
                    merge(existing, value);
                } else {
                    base.insert(key.clone(), value.clone());
                }
            }
        }
        (Value::Array(base), Value::Array(overlay))
            if named_items(base) && named_items(overlay) =>
        {
            for item in overlay {
                let name = &item["name"];
                match base.iter_mut().find(|b| &b["name"] == name) {
                    Some(existing) => merge(existing, item),
                    None => base.push(item.clone()),
                }
            }
        }
        (base, overlay) => *base = overlay.clone(),
    }
}

fn named_items(list: &[Value]) -> bool {
    list.iter()
        .all(|item| item.get("name").is_some_and(Value::is_string))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn containers_merge_by_name_and_other_values_replace() {
        let mut base = json!({
            "metadata": {"labels": {"a": "1"}},
            "spec": {
                "restartPolicy": "Never",
                "containers": [{
                    "name": "miniray",
                    "image": "miniray:1",
                    "env": [{"name": "X", "value": "1"}],
                    "args": ["start", "--block"],
                }],
            },
        });
        let overlay = json!({
            "metadata": {"labels": {"b": "2"}},
            "spec": {
                "nodeSelector": {"pool": "cpu"},
                "containers": [
                    {"name": "miniray", "resources": {"limits": {"cpu": "2"}},
                     "env": [{"name": "Y", "value": "2"}], "args": ["other"]},
                    {"name": "sidecar", "image": "busybox"},
                ],
            },
        });
        merge(&mut base, &overlay);
        assert_eq!(base["metadata"]["labels"], json!({"a": "1", "b": "2"}));
        assert_eq!(base["spec"]["nodeSelector"], json!({"pool": "cpu"}));
        let containers = base["spec"]["containers"].as_array().unwrap();
        assert_eq!(containers.len(), 2);
        assert_eq!(containers[0]["image"], "miniray:1");
        assert_eq!(containers[0]["resources"]["limits"]["cpu"], "2");
        assert_eq!(containers[0]["env"].as_array().unwrap().len(), 2);
        // Plain lists (args) replace.
        assert_eq!(containers[0]["args"], json!(["other"]));
    }

    #[test]
    fn null_removes_a_default() {
        let mut base = json!({"spec": {"restartPolicy": "Never", "hostNetwork": false}});
        merge(&mut base, &json!({"spec": {"hostNetwork": null}}));
        assert_eq!(base, json!({"spec": {"restartPolicy": "Never"}}));
    }
}
