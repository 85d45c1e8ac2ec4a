//! Typed access to one JSON object of a config: each getter applies the default or the
//! check its field needs, and every error names the file and the (prefixed) key.

use std::path::Path;

use serde_json::{Map, Value};

use super::ConfigError;

/// Typed access to one JSON object with errors naming the file and key.
pub(super) struct Fields<'a> {
    pub(super) path: &'a Path,
    pub(super) map: &'a Map<String, Value>,
    pub(super) prefix: &'a str,
}

impl Fields<'_> {
    pub(super) fn invalid(&self, key: &str, v: &Value, expected: &str) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            key: format!("{}{key}", self.prefix),
            found: v.to_string(),
            expected: expected.into(),
        }
    }
    pub(super) fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }
    pub(super) fn usize_or(&self, key: &str, default: Option<usize>) -> Result<usize, ConfigError> {
        match self.get(key) {
            None => default.ok_or_else(|| ConfigError::Missing {
                path: self.path.to_path_buf(),
                key: format!("{}{key}", self.prefix),
            }),
            Some(v) => v
                .as_u64()
                .filter(|n| *n > 0)
                .map(|n| n as usize)
                .ok_or_else(|| self.invalid(key, v, "a positive integer")),
        }
    }
    pub(super) fn i64_req(&self, key: &str) -> Result<i64, ConfigError> {
        match self.get(key) {
            None => Err(ConfigError::Missing {
                path: self.path.to_path_buf(),
                key: format!("{}{key}", self.prefix),
            }),
            Some(v) => v.as_i64().ok_or_else(|| self.invalid(key, v, "an integer")),
        }
    }
    pub(super) fn f64_or(&self, key: &str, default: f64) -> Result<f64, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .filter(|f| f.is_finite() && *f > 0.0)
                .ok_or_else(|| self.invalid(key, v, "a positive number")),
        }
    }
    pub(super) fn str_or(&self, key: &str, default: &str) -> Result<String, ConfigError> {
        match self.get(key) {
            None => Ok(default.to_string()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(v) => Err(self.invalid(key, v, "a string")),
        }
    }
    pub(super) fn bool_or(&self, key: &str, default: bool) -> Result<bool, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(self.invalid(key, v, "true or false")),
        }
    }
    pub(super) fn u32_opt(&self, key: &str) -> Option<u32> {
        self.get(key)
            .and_then(Value::as_u64)
            .and_then(|n| u32::try_from(n).ok())
    }
    /// A field that must equal `expected` (or be absent when `absent_ok`).
    pub(super) fn require_str(
        &self,
        key: &str,
        allowed: &[&str],
        absent_ok: bool,
    ) -> Result<(), ConfigError> {
        match self.get(key) {
            None if absent_ok => Ok(()),
            Some(Value::String(s)) if allowed.contains(&s.as_str()) => Ok(()),
            other => Err(ConfigError::Invalid {
                path: self.path.to_path_buf(),
                key: format!("{}{key}", self.prefix),
                found: other.map_or("absent".into(), Value::to_string),
                expected: format!("one of {allowed:?}"),
            }),
        }
    }
}
