//! The runc calls each engine makes, captured with the containerd suites' recording wrapper as
//! the engine's runtime: the command lines `lifecycle-runc` must accept, pinned here so that
//! an engine that changes them fails a test. `--nocapture` prints them.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use crate::docker::Docker;
use crate::host::IMAGE;
use crate::podman::Podman;
use crate::recorder::{normalize, Recorder};
use crate::scenarios::{
    exec_in_detached, rm_force, run_rm, stop_with_timeout, Engine, TERM_IGNORED, TERM_TRAP,
};
use crate::{docker_ready, podman_ready};

/// Every smoke scenario: run, exec, stop (TERM trap, then TERM ignored until SIGKILL), rm -f.
fn all_scenarios<E: Engine>(engine: &E) {
    run_rm(engine);
    exec_in_detached(engine);
    stop_with_timeout(engine, TERM_TRAP, Duration::from_secs(2));
    stop_with_timeout(engine, TERM_IGNORED, Duration::from_secs(1));
    rm_force(engine);
}

/// Starts an engine with the recorder as its runtime, runs `scenario`, and returns the distinct
/// calls with ids as `<id>`, files the engine chose as `<file>`, and the harness directory as
/// `<dir>`.
fn record<E: Engine>(
    start: impl FnOnce(&Path) -> E,
    scenario: impl FnOnce(&E),
) -> BTreeSet<String> {
    let dir = tempfile::Builder::new()
        .prefix("lcs-recorder-")
        .tempdir()
        .unwrap();
    let recorder = Recorder::new(dir.path());
    let harness = {
        let engine = start(&recorder.binary());
        scenario(&engine);
        engine.dir().display().to_string()
    };
    let calls = recorder.calls();
    assert!(!calls.is_empty(), "the engine made no runtime call");
    calls
        .iter()
        .map(|call| {
            eprintln!("{}", call.args.join(" "));
            normalize(&call.args, &[])
                .join(" ")
                .replace(&harness, "<dir>")
        })
        .collect()
}

fn set(lines: &[&str]) -> BTreeSet<String> {
    lines.iter().map(|l| (*l).to_owned()).collect()
}

#[test]
fn podman_calls_runc_without_global_flags() {
    if !podman_ready() {
        return;
    }
    let calls = record(Podman::new, all_scenarios);
    assert_eq!(
        calls,
        set(&[
            "create --bundle <file> --pid-file <file> <id>",
            "start <id>",
            "exec --pid-file <file> --process <file> --detach <id>",
            "kill <id> 15",
            "kill <id> 9",
            "delete --force <id>",
        ])
    );
}

/// Registered under a name in `runtime_supports_json`, the runtime gets runc's JSON log flags
/// (spelled `--log-format=json`) on `create` and `exec`.
#[test]
fn podman_adds_json_log_flags_for_a_runtime_named_runc() {
    if !podman_ready() {
        return;
    }
    let calls = record(
        |runtime| Podman::named(runtime, "runc"),
        |podman| {
            run_rm(podman);
            exec_in_detached(podman);
        },
    );
    assert_eq!(
        calls,
        set(&[
            "--log-format=json --log <file> create --bundle <file> --pid-file <file> <id>",
            "start <id>",
            "--log-format=json --log <file> exec --pid-file <file> --process <file> --detach <id>",
            "kill <id> 15",
            "delete --force <id>",
        ])
    );
}

/// `kube play` copies every pod annotation, same key, to each app container's config.json and
/// none to the infra container (issue 13): where a spec in pod annotations reaches the runtime.
#[test]
fn podman_kube_play_copies_pod_annotations_to_app_containers() {
    if !podman_ready() {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("lcs-recorder-")
        .tempdir()
        .unwrap();
    let recorder = Recorder::new(dir.path());
    let podman = Podman::new(&recorder.binary());
    let sleeper = crate::scenarios::SLEEPER;
    podman.kube_play(&format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: two
  annotations:
    lifecycle-shim/spec: '{{"postStart": {{"exec": {{"command": ["true"]}}}}}}'
spec:
  containers:
  - name: first
    image: {IMAGE}
    command: ["sh", "-c", "{sleeper}"]
  - name: second
    image: {IMAGE}
    command: ["sh", "-c", "{sleeper}"]
"#
    ));
    podman.remove_pod("two");
    let annotations: Vec<Option<String>> = recorder
        .calls()
        .iter()
        .filter(|call| call.args.iter().any(|a| a == "create"))
        .map(|call| {
            let config = call
                .config
                .as_ref()
                .expect("create without a bundle config");
            config["annotations"]["lifecycle-shim/spec"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    let spec = r#"{"postStart": {"exec": {"command": ["true"]}}}"#.to_owned();
    assert_eq!(annotations, vec![None, Some(spec.clone()), Some(spec)]);
}

#[test]
fn docker_calls_runc_with_root_and_json_log() {
    if !docker_ready() {
        return;
    }
    let calls = record(Docker::start, all_scenarios);
    let global = "--root <dir>/exec/runtime-runc/moby --log <file> --log-format json";
    assert_eq!(
        calls,
        set(&[
            &format!("{global} create --bundle <file> --pid-file <file> <id>"),
            &format!("{global} start <id>"),
            &format!("{global} exec --process <file> --detach --pid-file <file> <id>"),
            &format!("{global} kill <id> 15"),
            &format!("{global} kill <id> 9"),
            &format!("{global} delete <id>"),
            &format!("{global} delete --force <id>"),
        ])
    );
}
