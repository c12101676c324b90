//! A runc-compatible wrapper that records every call (its arguments, and the `config.json` of
//! each bundle it is handed) and then runs the real runc: given as `BinaryName`, it shows which
//! runtime calls a shim makes, so that this shim can be compared with containerd's runc shim.

#![allow(dead_code)] // each suite uses its own part of the helpers

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

pub struct Recorder {
    dir: PathBuf,
}

/// One runtime call: its arguments, and for a call with `--bundle` the bundle's config.
#[derive(Debug, Clone)]
pub struct Call {
    pub args: Vec<String>,
    pub config: Option<Value>,
}

impl Recorder {
    /// Writes the wrapper as `<dir>/runc-recorder`; the calls go to `<dir>/calls`.
    pub fn new(dir: &Path) -> Recorder {
        fs::create_dir_all(dir).unwrap();
        let runc = Command::new("sh")
            .args(["-c", "command -v runc"])
            .output()
            .unwrap();
        let runc = String::from_utf8_lossy(&runc.stdout).trim().to_owned();
        assert!(!runc.is_empty(), "runc is not on PATH");
        let script = format!(
            r#"#!/bin/sh
# Each call: one line, arguments separated by tabs; a bundle's config is copied beside it.
dir='{dir}'
config=
prev=
for arg in "$@"; do
  if [ "$prev" = --bundle ]; then config="$dir/config-$$.json"; cp "$arg/config.json" "$config"; fi
  prev=$arg
done
line=$(printf '%s\t' "$@")
printf '%s@%s\n' "$line" "$config" >> "$dir/calls"
exec '{runc}' "$@"
"#,
            dir = dir.display()
        );
        crate::support::write_executable(dir, "runc-recorder", &script);
        Recorder {
            dir: dir.to_owned(),
        }
    }

    /// The wrapper's path, for `BinaryName`.
    pub fn binary(&self) -> PathBuf {
        self.dir.join("runc-recorder")
    }

    /// The calls so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        let text = fs::read_to_string(self.dir.join("calls")).unwrap_or_default();
        text.lines()
            .map(|line| {
                let mut fields: Vec<&str> = line.split('\t').collect();
                let config = fields
                    .pop()
                    .and_then(|c| c.strip_prefix('@'))
                    .filter(|c| !c.is_empty())
                    .map(|c| serde_json::from_str(&fs::read_to_string(c).unwrap()).unwrap());
                Call {
                    args: fields.into_iter().map(str::to_owned).collect(),
                    config,
                }
            })
            .collect()
    }

    /// Forgets the calls so far.
    pub fn clear(&self) {
        let _ = fs::remove_file(self.dir.join("calls"));
    }
}

/// A call's arguments with what legitimately differs between two shims made alike: container
/// ids (`ids`, and CRI's 64-hex ids) become `<id>`, and the files a shim picks for itself (the
/// values of `--log`, `--pid-file`, `--process`, `--console-socket`, `--bundle`) become `<file>`.
pub fn normalize(args: &[String], ids: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    let mut previous = "";
    for arg in args {
        let value = if [
            "--log",
            "--pid-file",
            "--process",
            "--console-socket",
            "--bundle",
        ]
        .contains(&previous)
        {
            "<file>".to_owned()
        } else {
            normalize_text(arg, ids)
        };
        out.push(value);
        previous = arg;
    }
    out
}

/// A bundle's config with ids, and the pids in paths to other containers' namespaces
/// (`/proc/<pid>/ns/...`), replaced.
pub fn normalize_config(config: &Value, ids: &[&str]) -> Value {
    match config {
        Value::String(s) => Value::String(normalize_text(s, ids)),
        Value::Array(items) => {
            Value::Array(items.iter().map(|v| normalize_config(v, ids)).collect())
        }
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (normalize_text(k, ids), normalize_config(v, ids)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn normalize_text(text: &str, ids: &[&str]) -> String {
    let mut text = text.to_owned();
    for id in ids {
        text = text.replace(id, "<id>");
    }
    replace_proc_pids(&replace_hex_ids(&text))
}

/// `/proc/1234/ns/pid` becomes `/proc/<pid>/ns/pid`.
fn replace_proc_pids(text: &str) -> String {
    let Some(rest) = text.strip_prefix("/proc/") else {
        return text.to_owned();
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return text.to_owned();
    }
    format!("/proc/<pid>{}", &rest[digits..])
}

/// Replaces every run of exactly 64 lowercase hex digits (CRI's ids) with `<id>`.
fn replace_hex_ids(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < bytes.len() {
        let run = bytes[i..]
            .iter()
            .take_while(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
            .count();
        if run == 64 {
            out.push_str("<id>");
            i += run;
        } else if run > 0 {
            out.push_str(&text[i..i + run]);
            i += run;
        } else {
            let c = text[i..].chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}
