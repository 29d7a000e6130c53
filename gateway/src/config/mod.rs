//! Gateway configuration: YAML → validated model (SPEC §7).
//!
//! [`load`] reads a file, [`parse`] a string. Every problem is collected (not just the first) and
//! names the key path it concerns, e.g. `routes[0].limit_req[1].zone: unknown zone "foo"`, so
//! `gateway -t` can print one line per problem like `nginx -t`.
//!
//! Before the YAML parser sees a file it must pass the cheap checks of `limits.rs` (size, nesting
//! depth) and while the tree is built the number of values is bounded (alias expansion), so a
//! hostile file is refused in milliseconds by `gateway -t`, at start-up and on SIGHUP.

mod limits;
pub mod model;
mod parse;
mod reader;

use std::cell::Cell;
use std::fmt;
use std::io::Read;
use std::path::Path;
use std::time::SystemTime;

use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor,
};
use serde_norway::value::{Tag, TaggedValue};
use serde_norway::{Mapping, Value};
use sha2::{Digest, Sha256};

pub use limits::{check_nesting, TooDeep, MAX_CONFIG_BYTES, MAX_NESTING_DEPTH, MAX_NODES};
pub use model::*;
pub use parse::parse_rate;

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    /// Key path, e.g. `upstreams.reservations.servers[1]` (empty for the whole document).
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// Every problem found in a configuration file (never empty).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", render(.0))]
pub struct ConfigErrors(pub Vec<ConfigError>);

fn render(errors: &[ConfigError]) -> String {
    errors
        .iter()
        .map(|e| {
            if e.path.is_empty() {
                e.message.clone()
            } else {
                e.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

impl ConfigErrors {
    /// One line per problem, as `gateway -t` prints them.
    pub fn lines(&self) -> Vec<String> {
        render(&self.0).lines().map(str::to_string).collect()
    }

    fn single(path: &str, message: impl Into<String>) -> Self {
        ConfigErrors(vec![ConfigError {
            path: path.to_string(),
            message: message.into(),
        }])
    }
}

/// Reads, parses and validates the file at `path`. Files larger than [`MAX_CONFIG_BYTES`] are
/// refused without reading them whole.
pub fn load(path: impl AsRef<Path>) -> Result<GatewayConfig, ConfigErrors> {
    let path = path.as_ref();
    let shown = path.display();
    let cannot_read =
        |e: std::io::Error| ConfigErrors::single("", format!("cannot read {shown}: {e}"));
    let file = std::fs::File::open(path).map_err(cannot_read)?;
    // Read one byte more than the limit: a file growing meanwhile (or a device) is still bounded.
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(cannot_read)?;
    if bytes.len() > MAX_CONFIG_BYTES {
        let size = std::fs::metadata(path).map_or(bytes.len() as u64, |m| m.len());
        return Err(ConfigErrors::single(
            "",
            too_large(&format!("{shown} is"), size),
        ));
    }
    let text = String::from_utf8(bytes)
        .map_err(|_| ConfigErrors::single("", format!("{shown} is not UTF-8")))?;
    parse(&text, &shown.to_string())
}

fn too_large(what: &str, size: u64) -> String {
    let more = if size > MAX_CONFIG_BYTES as u64 + 1 {
        format!("{size} bytes")
    } else {
        "more than that".to_string()
    };
    format!("{what} larger than the limit of {MAX_CONFIG_BYTES} bytes ({more}); not parsed")
}

/// Checks the size and nesting limits and builds the YAML tree (one problem on failure).
fn yaml_tree(text: &str) -> Result<Value, ConfigErrors> {
    if text.len() > MAX_CONFIG_BYTES {
        return Err(ConfigErrors::single(
            "",
            too_large("the configuration is", text.len() as u64),
        ));
    }
    if let Err(at) = check_nesting(text, MAX_NESTING_DEPTH) {
        return Err(ConfigErrors::single(
            "",
            format!(
                "line {}, column {}: nested deeper than {MAX_NESTING_DEPTH} levels \
                 (brackets, braces and indentation); not parsed",
                at.line, at.column
            ),
        ));
    }
    value_with_budget(text, MAX_NODES).map_err(|e| match e {
        TreeError::TooManyNodes => ConfigErrors::single(
            "",
            format!(
                "the document expands to more than {MAX_NODES} YAML values \
                 (anchors and aliases?); not parsed"
            ),
        ),
        TreeError::Yaml(e) => ConfigErrors::single("", format!("invalid YAML: {e}")),
    })
}

/// Parses and validates `text`; `path` is recorded as the config's source.
pub fn parse(text: &str, path: &str) -> Result<GatewayConfig, ConfigErrors> {
    let root = yaml_tree(text)?;
    let source = ConfigSource {
        path: path.to_string(),
        sha256: hex::encode(Sha256::digest(text.as_bytes())),
        loaded_at: SystemTime::now(),
    };
    let mut problems = reader::Problems::default();
    match parse::document(&root, source, &mut problems) {
        Some(config) if problems.0.is_empty() => Ok(config),
        _ => {
            if problems.0.is_empty() {
                problems.push("", "invalid configuration");
            }
            Err(ConfigErrors(problems.0))
        }
    }
}

/// Why [`value_with_budget`] built no tree.
#[derive(Debug)]
pub enum TreeError {
    /// More values than the budget (aliases expanded).
    TooManyNodes,
    /// Not YAML (or beyond `serde_norway`'s own limits).
    Yaml(serde_norway::Error),
}

/// Parses one YAML document into a [`Value`] like `serde_norway::from_str`, but stops as soon
/// as more than `budget` values (scalars, sequences, mappings, keys; an alias counts every value
/// it expands to) were built. `serde_norway` bounds the number of alias jumps, not their
/// expansion: a few hundred bytes of nested anchors would otherwise build hundreds of millions
/// of values. Only call it on text that passed [`check_nesting`] (libyaml itself is quadratic
/// in flow depth).
pub fn value_with_budget(text: &str, budget: usize) -> Result<Value, TreeError> {
    let left = Cell::new(budget);
    let exceeded = Cell::new(false);
    let seed = Counting {
        left: &left,
        exceeded: &exceeded,
    };
    match seed.deserialize(serde_norway::Deserializer::from_str(text)) {
        Ok(v) => Ok(v),
        Err(_) if exceeded.get() => Err(TreeError::TooManyNodes),
        Err(e) => Err(TreeError::Yaml(e)),
    }
}

/// A [`Value`] seed that counts every value it builds against a shared budget.
#[derive(Clone, Copy)]
struct Counting<'b> {
    left: &'b Cell<usize>,
    exceeded: &'b Cell<bool>,
}

impl Counting<'_> {
    fn take<E: de::Error>(self) -> Result<(), E> {
        match self.left.get().checked_sub(1) {
            Some(n) => {
                self.left.set(n);
                Ok(())
            }
            None => {
                self.exceeded.set(true);
                Err(E::custom("too many YAML values"))
            }
        }
    }
}

impl<'de> DeserializeSeed<'de> for Counting<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Counting<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Value, E> {
        self.take()?;
        Ok(Value::Bool(b))
    }

    fn visit_i64<E: de::Error>(self, i: i64) -> Result<Value, E> {
        self.take()?;
        Ok(Value::Number(i.into()))
    }

    fn visit_u64<E: de::Error>(self, u: u64) -> Result<Value, E> {
        self.take()?;
        Ok(Value::Number(u.into()))
    }

    fn visit_f64<E: de::Error>(self, f: f64) -> Result<Value, E> {
        self.take()?;
        Ok(Value::Number(f.into()))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Value, E> {
        self.take()?;
        Ok(Value::String(s.to_owned()))
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<Value, E> {
        self.take()?;
        Ok(Value::String(s))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        self.take()?;
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        self.take()?;
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.take()?;
        let mut items = Vec::new();
        while let Some(v) = seq.next_element_seed(self)? {
            items.push(v);
        }
        Ok(Value::Sequence(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.take()?;
        let mut mapping = Mapping::new();
        while let Some(key) = map.next_key_seed(self)? {
            if mapping.contains_key(&key) {
                return Err(de::Error::custom(format_args!(
                    "duplicate entry with key {}",
                    reader::show(&key)
                )));
            }
            let value = map.next_value_seed(self)?;
            mapping.insert(key, value);
        }
        Ok(Value::Mapping(mapping))
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Value, A::Error> {
        self.take()?;
        let (tag, contents) = data.variant::<String>()?;
        if tag.is_empty() {
            return Err(de::Error::custom("empty YAML tag is not allowed"));
        }
        let value = contents.newtype_variant_seed(self)?;
        Ok(Value::Tagged(Box::new(TaggedValue {
            tag: Tag::new(tag),
            value,
        })))
    }
}
