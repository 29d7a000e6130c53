//! Whole configuration text → `gateway::config::parse` (size, nesting and alias limits, YAML,
//! validation). Must never panic and never take long (libFuzzer's `-timeout` catches slowness).
//!
//! Also checks the nesting pre-scan against the tree libyaml actually builds: for a text without
//! aliases (which add depth the text does not show), the pre-scan must count at least the real
//! depth less one (a flow collection used as a block mapping key, `[a]: b`, is only known to
//! open a mapping once its `: ` is seen). Counting less means it mistook structure for text (a
//! comment, a quote, a block scalar, a line break it did not know...), which is how a deeply
//! nested file could slip past it to libyaml, whose parsing is quadratic in nesting depth.
#![no_main]

use gateway::config::{check_nesting, value_with_budget, MAX_NODES};
use libfuzzer_sys::fuzz_target;
use serde_norway::Value;

/// Nesting depth of sequences and mappings (tags add none).
fn depth(v: &Value) -> usize {
    match v {
        Value::Sequence(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Mapping(m) => {
            1 + m
                .iter()
                .map(|(k, v)| depth(k).max(depth(v)))
                .max()
                .unwrap_or(0)
        }
        Value::Tagged(t) => depth(&t.value),
        _ => 0,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = gateway::config::parse(text, "fuzz.yaml");

    if text.contains('*') {
        return;
    }
    let Ok(tree) = value_with_budget(text, MAX_NODES) else {
        return;
    };
    let d = depth(&tree);
    if d >= 2 {
        assert!(
            check_nesting(text, d - 2).is_err(),
            "the pre-scan counts at most {} levels, libyaml built {d}",
            d - 2
        );
    }
});
