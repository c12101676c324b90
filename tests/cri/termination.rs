//! A hook failure that ends a container shows in its termination message (the file the kubelet
//! bind-mounts at `/dev/termination-log` and reads into `lastState.terminated.message`), unless
//! the container wrote its own; the message is bounded as the kubelet bounds it.

use std::path::PathBuf;

use k8s_cri::v1::ContainerState;
use serde_json::json;

use crate::support::wait_until;
use crate::{spec_key, Env, LIFECYCLE};

const WAITS_FOR_TERM: &str = "trap 'exit 0' TERM; while :; do sleep 1000 & wait $!; done";

/// Runs a one-container pod with `spec` and a termination-message file, until the container
/// has exited; returns what the file holds then.
fn termination_message(env: &Env, name: &str, spec: serde_json::Value, script: &str) -> String {
    let file: PathBuf = env.dir.path().join(format!("{name}.termination-log"));
    std::fs::write(&file, "").unwrap();
    let pod = env.pod(name, LIFECYCLE, &[(&spec_key("app"), spec)]);
    let pod_id = env.cri.run_pod(&pod);
    let id = env.run_container(
        &pod_id,
        &pod,
        "app",
        script,
        &[("/dev/termination-log", file.as_path())],
    );
    wait_until("the container has exited", || {
        env.cri.container_status(&id).state == ContainerState::ContainerExited as i32
    });
    let message = std::fs::read_to_string(&file).unwrap();
    env.remove(&pod_id, &[id]);
    message
}

#[test]
fn a_failed_poststart_or_init_container_is_the_termination_message() {
    let Some(env) = Env::new() else { return };
    let spec =
        json!({"postStart": {"exec": {"command": ["sh", "-c", "echo cannot warm up; exit 3"]}}});
    let message = termination_message(&env, "poststart", spec, WAITS_FOR_TERM);
    assert!(
        message.starts_with("FailedPostStartHook: postStart exec failed"),
        "{message}"
    );
    assert!(message.contains("cannot warm up"), "{message}");

    let spec = json!({"initContainers": [{"name": "migrate", "command": ["sh", "-c", "echo schema is locked; exit 4"]}]});
    let message = termination_message(&env, "init", spec, WAITS_FOR_TERM);
    assert!(
        message.starts_with("FailedInitContainer: init container"),
        "{message}"
    );
    assert!(message.contains("schema is locked"), "{message}");
}

#[test]
fn the_containers_own_termination_message_is_kept() {
    let Some(env) = Env::new() else { return };
    // PostStart fails only once the container has written its message.
    let spec = json!({"postStart": {"exec": {"command": ["sh", "-c",
        "while [ ! -s /dev/termination-log ]; do sleep 0.05; done; exit 3"]}}});
    let script = format!("echo mine > /dev/termination-log; {WAITS_FOR_TERM}");
    assert_eq!(termination_message(&env, "own", spec, &script), "mine\n");
}

#[test]
fn the_termination_message_is_bounded_as_the_kubelet_reads_it() {
    let Some(env) = Env::new() else { return };
    let spec = json!({"postStart": {"exec": {"command": ["sh", "-c",
        "i=0; while [ $i -lt 3000 ]; do echo \"line $i\"; i=$((i+1)); done; exit 3"]}}});
    let message = termination_message(&env, "long", spec, WAITS_FOR_TERM);
    assert!(message.len() <= 4096, "{} bytes", message.len());
    assert!(message.starts_with("FailedPostStartHook"), "{message}");
    assert!(message.trim_end().ends_with("line 2999"), "{message}");
}
