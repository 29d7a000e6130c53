//! The ARCHITECTURE rule, checked: every state change in Redis is a Lua script with a typed
//! wrapper. No Rust source outside the Lua files sends a Redis write command, no Lua is inlined
//! in Rust, and every script in `reservations/inventory/` is wrapped.

use std::path::{Path, PathBuf};

/// Redis commands that change data.
const WRITES: &[&str] = &[
    "SET",
    "DEL",
    "HSET",
    "HDEL",
    "HINCRBY",
    "HINCRBYFLOAT",
    "ZADD",
    "ZREM",
    "SADD",
    "SREM",
    "RPUSH",
    "LPUSH",
    "EXPIRE",
    "PEXPIRE",
    "XADD",
    "INCR",
    "DECR",
    "FLUSHALL",
    "FLUSHDB",
    "EVAL",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn no_rust_source_writes_to_redis_outside_a_lua_script() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut offences = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).expect("read");
        // Only the code, not the tests at the bottom of a file.
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        for w in WRITES {
            for form in [format!("cmd(\"{w}\")"), format!(".cmd(\"{w}\")")] {
                if code.contains(&form) {
                    offences.push(format!("{}: {form}", f.display()));
                }
            }
        }
        if code.contains("redis.call(") {
            offences.push(format!("{}: inline Lua", f.display()));
        }
    }
    assert!(
        offences.is_empty(),
        "Redis writes outside Lua scripts: {offences:#?}"
    );
}

#[test]
fn every_inventory_script_has_a_typed_wrapper() {
    let dir = src().join("reservations/inventory");
    let wrappers = std::fs::read_to_string(dir.join("mod.rs")).expect("mod.rs");
    for entry in std::fs::read_dir(&dir).expect("dir").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".lua") && name != "prelude.lua" {
            assert!(
                wrappers.contains(&format!("lua!(\"{name}\")")),
                "{name} is not loaded by inventory/mod.rs"
            );
        }
    }
}
