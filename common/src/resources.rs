//! Resource quantities ("CPU", "GPU", custom names) and their arithmetic.

use std::collections::BTreeMap;
use std::fmt;

use miniray_proto::ResourceSet;
use serde::{Deserialize, Serialize};

/// Quantities below this are treated as zero (float noise from fractional requests).
const EPSILON: f64 = 1e-9;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResourceError {
    #[error("resource {name:?} has invalid amount {amount}: amounts must be finite and >= 0")]
    InvalidAmount { name: String, amount: String },
    #[error("resource name must not be empty")]
    EmptyName,
    #[error("cannot parse resources {input:?}: {reason}")]
    Parse { input: String, reason: String },
}

/// A map from resource name to amount; zero amounts are never stored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Resources(BTreeMap<String, f64>);

impl Resources {
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a validated set: names non-empty, amounts finite and non-negative.
    pub fn from_pairs<I, S>(pairs: I) -> Result<Self, ResourceError>
    where
        I: IntoIterator<Item = (S, f64)>,
        S: Into<String>,
    {
        let mut r = Resources::new();
        for (name, amount) in pairs {
            r.set(name, amount)?;
        }
        Ok(r)
    }

    /// Parses a JSON object such as `{"GPU": 1, "custom": 2.5}`.
    pub fn from_json(input: &str) -> Result<Self, ResourceError> {
        let map: BTreeMap<String, f64> =
            serde_json::from_str(input).map_err(|e| ResourceError::Parse {
                input: input.to_string(),
                reason: e.to_string(),
            })?;
        Self::from_pairs(map)
    }

    pub fn set(&mut self, name: impl Into<String>, amount: f64) -> Result<(), ResourceError> {
        let name = name.into();
        if name.is_empty() {
            return Err(ResourceError::EmptyName);
        }
        if !amount.is_finite() || amount < 0.0 {
            return Err(ResourceError::InvalidAmount {
                name,
                amount: amount.to_string(),
            });
        }
        if amount <= EPSILON {
            self.0.remove(&name);
        } else {
            self.0.insert(name, amount);
        }
        Ok(())
    }

    pub fn get(&self, name: &str) -> f64 {
        self.0.get(name).copied().unwrap_or(0.0)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, f64)> {
        self.0.iter().map(|(k, v)| (k.as_str(), *v))
    }

    /// Whether `self` has at least `req` of every resource.
    pub fn contains(&self, req: &Resources) -> bool {
        req.0.iter().all(|(k, v)| self.get(k) + EPSILON >= *v)
    }

    /// `self - req`; callers check `contains` first. Never goes below zero.
    pub fn subtract(&mut self, req: &Resources) {
        for (k, v) in &req.0 {
            let left = (self.get(k) - v).max(0.0);
            if left <= EPSILON {
                self.0.remove(k);
            } else {
                self.0.insert(k.clone(), left);
            }
        }
    }

    /// `self + other`, capped at `cap` where given.
    pub fn add(&mut self, other: &Resources, cap: Option<&Resources>) {
        for (k, v) in &other.0 {
            let mut sum = self.get(k) + v;
            if let Some(cap) = cap {
                sum = sum.min(cap.get(k));
            }
            if sum > EPSILON {
                self.0.insert(k.clone(), sum);
            }
        }
    }

    /// A canonical string key for grouping demands of the same shape.
    pub fn shape_key(&self) -> String {
        self.to_string()
    }

    pub fn to_proto(&self) -> ResourceSet {
        ResourceSet {
            amounts: self.0.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        }
    }

    /// Validates a set that came over the wire.
    pub fn from_proto(set: &ResourceSet) -> Result<Self, ResourceError> {
        Self::from_pairs(set.amounts.iter().map(|(k, v)| (k.clone(), *v)))
    }
}

impl fmt::Display for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{k}: {v}")?;
        }
        f.write_str("}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_and_validation() {
        let mut avail = Resources::from_pairs([("CPU", 4.0), ("GPU", 1.0)]).unwrap();
        let req = Resources::from_pairs([("CPU", 2.0)]).unwrap();
        assert!(avail.contains(&req));
        avail.subtract(&req);
        assert_eq!(avail.get("CPU"), 2.0);
        let total = Resources::from_pairs([("CPU", 4.0), ("GPU", 1.0)]).unwrap();
        avail.add(
            &Resources::from_pairs([("CPU", 5.0)]).unwrap(),
            Some(&total),
        );
        assert_eq!(avail.get("CPU"), 4.0);
        assert!(Resources::from_pairs([("CPU", -1.0)]).is_err());
        assert!(Resources::from_pairs([("CPU", f64::NAN)]).is_err());
        assert!(!avail.contains(&Resources::from_pairs([("TPU", 1.0)]).unwrap()));
    }

    #[test]
    fn parses_json_objects() {
        let r = Resources::from_json(r#"{"GPU": 1, "custom": 2.5}"#).unwrap();
        assert_eq!(r.get("GPU"), 1.0);
        assert_eq!(r.get("custom"), 2.5);
        assert!(Resources::from_json("GPU=1").is_err());
        assert!(Resources::from_json(r#"{"GPU": x}"#).is_err());
        assert!(Resources::from_json("{}").unwrap().is_empty());
    }
}
