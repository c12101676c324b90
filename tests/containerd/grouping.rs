//! One shim per group, as runc's shim groups: containers with the same
//! `io.containerd.runc.v2.group` annotation share one shim process, each with its own hooks,
//! stdio and exit; a container without one has its own; the shared shim exits with its last task;
//! a flood of output in one container delays no other.

use serde_json::json;

use crate::support::{wait_for_line, wait_until};
use crate::{Env, LIFECYCLE};

/// Says it is up (`/markers/up-<name>`), runs PreStop's marker before its TERM trap's.
fn run(env: &Env, id: &str, group: Option<&str>) {
    let spec = json!({"preStop": {"exec": {"command": ["sh", "-c", format!("echo prestop >> /markers/{id}")]}}});
    let script = format!(
        "trap 'echo term >> /markers/{id}; exit 0' TERM; echo up > /markers/up-{id}; while :; do sleep 1000 & wait $!; done"
    );
    let annotation = group.map(|g| format!("io.containerd.runc.v2.group={g}"));
    let mut flags = vec!["-d"];
    if let Some(annotation) = &annotation {
        flags.extend(["--annotation", annotation]);
    }
    let args = env.run_args(LIFECYCLE, id, Some(&spec), &flags, &script);
    env.ctr_ok(&crate::lifecycle::args_ref(&args));
    wait_for_line(&env.marker(&format!("up-{id}")), Some("up"));
    env.wait_for_status(id, "RUNNING");
}

fn stop(env: &Env, id: &str) {
    env.stop(id);
    assert_eq!(env.lines(id), ["prestop", "term"], "{id}");
}

#[test]
fn containers_of_one_group_share_a_shim_and_others_have_their_own() {
    let Some(env) = Env::new() else { return };
    run(&env, "grouped-a", Some("pod-1"));
    run(&env, "grouped-b", Some("pod-1"));
    run(&env, "alone", None);
    let shims = env.containerd.shim_processes();
    assert_eq!(
        shims.len(),
        2,
        "one shim for the group, one for the other: {shims:?}"
    );
    let group_socket = env.containerd.shim_socket("pod-1");
    assert!(
        group_socket.exists(),
        "the group's shim listens at {group_socket:?}"
    );

    // The group's first task goes; its shim stays for the second.
    stop(&env, "grouped-a");
    assert!(group_socket.exists());
    assert_eq!(env.containerd.shim_processes().len(), 2);
    stop(&env, "alone");
    stop(&env, "grouped-b");
    env.assert_clean(&["grouped-a", "grouped-b", "alone", "pod-1"]);
}

/// A flood of output in one container of a group (its stdout and stderr, and a PostStart that
/// prints without end) while nobody reads its streams (`ctr run -d` has gone): the shim's one
/// thread serves the whole group, so a write into that full stream must never wait. Another
/// container of the group is created, runs its PostStart, and stops with its PreStop before
/// its TERM trap, while the flood goes on.
#[test]
fn a_flood_of_output_in_one_container_delays_no_other_of_its_group() {
    let Some(env) = Env::new() else { return };
    let group = "io.containerd.runc.v2.group=flooded";
    let flood = json!({"postStart": {"exec": {"command": ["sh", "-c",
        "echo hook >> /markers/flood; yes hook-line"]}}});
    let args = env.run_args(
        LIFECYCLE,
        "flood",
        Some(&flood),
        &["-d", "--annotation", group],
        "yes err >&2 & echo up >> /markers/flood; yes out",
    );
    env.ctr_ok(&crate::lifecycle::args_ref(&args));
    wait_until("the flood and its hook run", || {
        let lines = env.lines("flood");
        lines.contains(&"up".to_owned()) && lines.contains(&"hook".to_owned())
    });

    let calm = json!({
        "postStart": {"exec": {"command": ["sh", "-c", "echo poststart >> /markers/calm"]}},
        "preStop": {"exec": {"command": ["sh", "-c", "echo prestop >> /markers/calm"]}}
    });
    let args = env.run_args(
        LIFECYCLE,
        "calm",
        Some(&calm),
        &["-d", "--annotation", group],
        "trap 'echo term >> /markers/calm; exit 0' TERM; while :; do sleep 1000 & wait $!; done",
    );
    env.ctr_ok(&crate::lifecycle::args_ref(&args));
    wait_for_line(&env.marker("calm"), Some("poststart"));
    let shims = env.containerd.shim_processes();
    assert_eq!(shims.len(), 1, "one shim for the group: {shims:?}");

    env.ctr_ok(&["task", "kill", "calm"]);
    env.wait_for_status("calm", "STOPPED");
    assert_eq!(env.lines("calm"), ["poststart", "prestop", "term"]);
    assert_eq!(
        env.containerd.task_status("flood").as_deref(),
        Some("RUNNING"),
        "the flood goes on"
    );
    env.remove("calm");
    env.ctr_ok(&["task", "kill", "-s", "SIGKILL", "flood"]);
    env.wait_for_status("flood", "STOPPED");
    env.remove("flood");
    env.assert_clean(&["flood", "calm", "flooded"]);
}
