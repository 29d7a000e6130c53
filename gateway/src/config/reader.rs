//! A small path-tracking reader over a parsed YAML tree.
//!
//! `serde` stops at the first problem; `gateway -t` must list every problem with the key path it
//! concerns (`routes[0].limit_req[1].zone: ...`). So the document is parsed once into a
//! [`serde_norway::Value`] and read field by field here: each getter marks its key as known,
//! converts the value, and records a [`ConfigError`] naming the full path when the value is wrong.
//! [`Map::finish`] then reports every key nobody asked for as unknown.

use serde_norway::{Mapping, Value};

use super::ConfigError;

/// Collected problems, in document order.
#[derive(Debug, Default)]
pub(crate) struct Problems(pub(crate) Vec<ConfigError>);

impl Problems {
    /// Records one problem at `path`.
    pub(crate) fn push(&mut self, path: &str, message: impl Into<String>) {
        self.0.push(ConfigError {
            path: path.to_string(),
            message: message.into(),
        });
    }
}

/// `parent.key`, or `key` at the top level.
pub(crate) fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// `parent[index]`.
pub(crate) fn index(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}

/// A short rendering of a value for error messages.
pub(crate) fn show(v: &Value) -> String {
    match v {
        Value::Null => "null".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("{s:?}"),
        Value::Sequence(_) => "a list".to_string(),
        Value::Mapping(_) => "a mapping".to_string(),
        Value::Tagged(t) => format!("a value tagged {}", t.tag),
    }
}

/// A YAML mapping being read; remembers which keys were asked for.
pub(crate) struct Map<'a> {
    path: String,
    entries: Option<&'a Mapping>,
    known: Vec<&'static str>,
}

impl<'a> Map<'a> {
    /// Opens `value` (absent or `null` reads as an empty mapping) at `path`.
    pub(crate) fn open(value: Option<&'a Value>, path: &str, p: &mut Problems) -> Self {
        let entries = match value {
            None | Some(Value::Null) => None,
            Some(Value::Mapping(m)) => Some(m),
            Some(other) => {
                p.push(path, format!("expected a mapping, got {}", show(other)));
                None
            }
        };
        Map {
            path: path.to_string(),
            entries,
            known: Vec::new(),
        }
    }

    /// The path of one of its keys.
    pub(crate) fn key_path(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// The value of `key` (treating an explicit `null` as absent), marking the key as known.
    pub(crate) fn get(&mut self, key: &'static str) -> Option<&'a Value> {
        self.known.push(key);
        match self.entries?.get(key) {
            None | Some(Value::Null) => None,
            Some(v) => Some(v),
        }
    }

    /// Like [`Map::get`], but reports a missing key as a problem.
    pub(crate) fn required(&mut self, key: &'static str, p: &mut Problems) -> Option<&'a Value> {
        let v = self.get(key);
        if v.is_none() {
            p.push(&self.key_path(key), "required key is missing");
        }
        v
    }

    /// Reports every key that was never asked for.
    pub(crate) fn finish(self, p: &mut Problems) {
        let Some(entries) = self.entries else { return };
        for k in entries.keys() {
            match k.as_str() {
                Some(name) if self.known.contains(&name) => {}
                Some(name) => p.push(&join(&self.path, name), "unknown key"),
                None => p.push(&self.path, format!("keys must be strings, got {}", show(k))),
            }
        }
    }

    /// An unsigned integer in `min..=max`, or `default` when absent.
    pub(crate) fn uint(
        &mut self,
        key: &'static str,
        default: u64,
        min: u64,
        max: u64,
        p: &mut Problems,
    ) -> u64 {
        let path = self.key_path(key);
        match self.get(key) {
            None => default,
            Some(v) => match v.as_u64() {
                Some(n) if (min..=max).contains(&n) => n,
                Some(n) => {
                    p.push(&path, range_message(n, min, max));
                    default
                }
                None if v.as_i64().is_some() => {
                    p.push(&path, format!("must be at least {min}, got {}", show(v)));
                    default
                }
                None => {
                    p.push(&path, format!("expected an integer, got {}", show(v)));
                    default
                }
            },
        }
    }

    /// A boolean, or `default` when absent.
    pub(crate) fn boolean(&mut self, key: &'static str, default: bool, p: &mut Problems) -> bool {
        let path = self.key_path(key);
        match self.get(key) {
            None => default,
            Some(Value::Bool(b)) => *b,
            Some(v) => {
                p.push(&path, format!("expected true or false, got {}", show(v)));
                default
            }
        }
    }

    /// A string, or `None` (with a problem) when it is not a string.
    pub(crate) fn string(&mut self, key: &'static str, p: &mut Problems) -> Option<&'a str> {
        let path = self.key_path(key);
        let v = self.get(key)?;
        as_str(v, &path, p)
    }

    /// A required string.
    pub(crate) fn required_string(
        &mut self,
        key: &'static str,
        p: &mut Problems,
    ) -> Option<&'a str> {
        let path = self.key_path(key);
        let v = self.required(key, p)?;
        as_str(v, &path, p)
    }

    /// A floating point number, or `default` when absent.
    pub(crate) fn float(&mut self, key: &'static str, default: f64, p: &mut Problems) -> f64 {
        let path = self.key_path(key);
        match self.get(key) {
            None => default,
            Some(v) => match v.as_f64() {
                Some(f) => f,
                None => {
                    p.push(&path, format!("expected a number, got {}", show(v)));
                    default
                }
            },
        }
    }

    /// A list (absent reads as empty), with the path of each item.
    pub(crate) fn list(&mut self, key: &'static str, p: &mut Problems) -> Vec<(String, &'a Value)> {
        let path = self.key_path(key);
        match self.get(key) {
            None => Vec::new(),
            Some(Value::Sequence(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| (index(&path, i), v))
                .collect(),
            Some(v) => {
                p.push(&path, format!("expected a list, got {}", show(v)));
                Vec::new()
            }
        }
    }

    /// A mapping of names to values (absent reads as empty), with the path of each entry.
    pub(crate) fn named(
        &mut self,
        key: &'static str,
        p: &mut Problems,
    ) -> Vec<(String, String, &'a Value)> {
        let path = self.key_path(key);
        match self.get(key) {
            None => Vec::new(),
            Some(Value::Mapping(m)) => {
                let mut out = Vec::with_capacity(m.len());
                for (k, v) in m {
                    match k.as_str() {
                        Some(name) => out.push((name.to_string(), join(&path, name), v)),
                        None => p.push(&path, format!("names must be strings, got {}", show(k))),
                    }
                }
                out
            }
            Some(v) => {
                p.push(
                    &path,
                    format!("expected a mapping of names, got {}", show(v)),
                );
                Vec::new()
            }
        }
    }
}

/// The string inside `v`, or a problem at `path`.
pub(crate) fn as_str<'a>(v: &'a Value, path: &str, p: &mut Problems) -> Option<&'a str> {
    match v {
        Value::String(s) => Some(s.as_str()),
        other => {
            p.push(path, format!("expected a string, got {}", show(other)));
            None
        }
    }
}

fn range_message(n: u64, min: u64, max: u64) -> String {
    if max == u64::MAX {
        format!("must be at least {min}, got {n}")
    } else {
        format!("must be between {min} and {max}, got {n}")
    }
}
