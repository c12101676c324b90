//! Issue 7 under containerd: what the shim leaves on disk is private, and faults (a killed
//! shim, a restarted containerd) lose nothing and leak nothing.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::support::wait_for_line;
use crate::Env;

/// Every file and directory under `dir`, with its mode.
fn modes(dir: &Path) -> Vec<(PathBuf, u32, std::fs::FileType)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let Ok(meta) = std::fs::symlink_metadata(entry.path()) else {
                continue;
            };
            if meta.is_dir() && entry.file_name() != "rootfs" {
                todo.push(entry.path());
            }
            out.push((
                entry.path(),
                meta.permissions().mode() & 0o7777,
                meta.file_type(),
            ));
        }
    }
    out
}

/// The shim's ttrpc socket is root's alone; nothing the shim (or runc for it) writes in the
/// bundle, the runc root or the status directory is writable by others.
#[test]
fn the_shim_socket_is_root_only_and_its_files_are_not_world_writable() {
    let Some(env) = Env::new() else { return };
    let spec = json!({
        "initContainers": [{"name": "idler", "command": ["sleep", "1000"], "restartPolicy": "Always"}],
        "healthCheck": {"exec": {"command": ["true"]}, "periodSeconds": 1}
    });
    env.run_detached("private", &spec, "echo up > /markers/up; exec sleep 1000");
    crate::support::wait_until("the health status is written", || {
        modes(&env.containerd.shim_state())
            .iter()
            .any(|(p, _, _)| p.extension().is_some_and(|e| e == "json"))
    });
    let socket = env.containerd.shim_socket("private");
    let meta = std::fs::metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    let mode = meta.permissions().mode() & 0o777;
    assert_eq!(mode & 0o077, 0, "socket {socket:?} has mode {mode:o}");
    let written = [
        modes(&env.containerd.bundle("private")),
        modes(&Path::new("/run/containerd/lifecycle").join(env.containerd.namespace())),
        modes(&env.containerd.shim_state()),
    ]
    .concat();
    // Sidecar bundles, runc's state and the health status are among them.
    assert!(written.len() >= 10, "{written:?}");
    let open: Vec<_> = written
        .iter()
        .filter(|(_, mode, kind)| !kind.is_symlink() && mode & 0o002 != 0)
        .collect();
    assert!(open.is_empty(), "world-writable: {open:?}");
    env.ctr_ok(&["task", "kill", "-s", "SIGKILL", "private"]);
    env.wait_for_status("private", "STOPPED");
    env.remove("private");
    env.assert_clean(&["private"]);
}

/// A spec whose `phase` (init, postStart or preStop) announces itself in /markers/order and
/// then waits for /markers/release-<id>; and the entrypoint that goes with it, which says it is
/// up (after PostStart, when that is the phase) and exits 7 on SIGTERM.
fn blocking(phase: &str, id: &str) -> (serde_json::Value, String) {
    let wait = |name: &str| {
        format!(
            "echo {name} >> /markers/{id}; until [ -e /markers/release-{id} ]; do sleep 0.05; done; echo {name}-done >> /markers/{id}"
        )
    };
    let handler = |name: &str| json!({"exec": {"command": ["sh", "-c", wait(name)]}});
    let spec = match phase {
        "init" => {
            json!({"initContainers": [{"name": "slow", "command": ["sh", "-c", wait("init")]}]})
        }
        "postStart" => json!({"postStart": handler("postStart")}),
        _ => json!({"preStop": handler("preStop")}),
    };
    let up = if phase == "postStart" {
        format!("until grep -q postStart-done /markers/{id}; do sleep 0.05; done; ")
    } else {
        String::new()
    };
    let script = format!(
        "{up}trap 'echo term >> /markers/{id}; exit 7' TERM; echo main >> /markers/{id}; echo up > /markers/up-{id}; while :; do sleep 1000 & wait $!; done"
    );
    (spec, script)
}

/// Starts the blocking container `id` and returns once its `phase` is running (for preStop,
/// after the stop was asked for).
fn start_blocked(env: &Env, phase: &str, id: &str) {
    let (spec, script) = blocking(phase, id);
    let args = env.run_args(crate::LIFECYCLE, id, Some(&spec), &["-d"], &script);
    env.ctr_ok(&crate::lifecycle::args_ref(&args));
    if phase == "preStop" {
        wait_for_line(&env.marker(&format!("up-{id}")), Some("up"));
        env.wait_for_status(id, "RUNNING");
        env.ctr_ok(&["task", "kill", id]);
    }
    wait_for_line(&env.marker(id), Some(phase));
}

/// containerd restarted while an init container, PostStart or PreStop runs: the hook
/// completes, the task goes on, and its exit status is there after the reconnection.
#[test]
fn a_containerd_restart_during_a_hook_loses_nothing() {
    let Some(mut env) = Env::new() else { return };
    for (phase, id) in [
        ("init", "r-init"),
        ("postStart", "r-post"),
        ("preStop", "r-pre"),
    ] {
        start_blocked(&env, phase, id);
        env.containerd.restart();
        std::fs::write(env.marker(&format!("release-{id}")), "").unwrap();
        if phase != "preStop" {
            wait_for_line(&env.marker(&format!("up-{id}")), Some("up"));
            env.wait_for_status(id, "RUNNING");
            env.ctr_ok(&["task", "kill", id]);
        }
        env.wait_for_status(id, "STOPPED");
        let expected = match phase {
            "init" => ["init", "init-done", "main", "term"],
            "postStart" => ["postStart", "postStart-done", "main", "term"],
            _ => ["main", "preStop", "preStop-done", "term"],
        };
        assert_eq!(env.lines(id), expected, "{phase}");
        let removed = env.remove(id);
        assert!(removed.contains("exit code 7"), "{phase}: {removed}");
    }
    env.assert_clean(&["r-init", "r-post", "r-pre"]);
}

/// The shim SIGKILLed while an init container, PostStart or PreStop runs: containerd's
/// `delete` cleanup leaves no runc container, no process of the container, and an empty
/// cgroup.
#[test]
fn a_shim_killed_during_a_hook_leaves_nothing() {
    let Some(env) = Env::new() else { return };
    for (phase, id) in [
        ("init", "k-init"),
        ("postStart", "k-post"),
        ("preStop", "k-pre"),
    ] {
        start_blocked(&env, phase, id);
        let cgroup_procs = |id: &str| -> String {
            std::fs::read_dir("/sys/fs/cgroup")
                .unwrap()
                .flatten()
                .map(|h| {
                    h.path()
                        .join(env.containerd.namespace())
                        .join(id)
                        .join("cgroup.procs")
                })
                .map(|procs| std::fs::read_to_string(procs).unwrap_or_default())
                .collect()
        };
        assert!(
            !cgroup_procs(id).trim().is_empty(),
            "{phase}: no cgroup found"
        );
        env.containerd.kill_the_shim();
        crate::support::wait_until("containerd has dropped the task", || {
            env.containerd.task_status(id).is_none()
        });
        let _ = env.containerd.ctr(&["task", "rm", "-f", id]);
        env.ctr_ok(&["containers", "rm", id]);
        env.assert_clean(&[id]);
        let left = cgroup_procs(id);
        assert!(left.trim().is_empty(), "{phase}: the cgroup holds {left}");
    }
}

/// The fewest open fds of `pid` over a short window, so a hook that happens to be running
/// (its pipes open) does not count.
fn settled_fds(pid: i32) -> usize {
    (0..30)
        .map(|_| {
            std::thread::sleep(std::time::Duration::from_millis(10));
            std::fs::read_dir(format!("/proc/{pid}/fd"))
                .unwrap()
                .count()
        })
        .min()
        .unwrap()
}

/// A long-lived shim leaks no fds and leaves no zombies over health checks and exec processes.
#[test]
fn a_long_lived_shim_keeps_its_fds() {
    let Some(env) = Env::new() else { return };
    let spec = json!({"healthCheck": {"exec": {"command": ["sh", "-c", "echo check >> /markers/checks"]}, "periodSeconds": 1}});
    env.run_detached("long", &spec, "echo up > /markers/up; exec sleep 1000");
    let shims = env.containerd.shim_processes();
    let pid: i32 = shims[0].split(':').next().unwrap().parse().unwrap();
    crate::support::wait_until("a first health check", || !env.lines("checks").is_empty());
    let before = settled_fds(pid);
    for _ in 0..10 {
        env.ctr_ok(&["task", "exec", "--exec-id", "probe", "long", "true"]);
    }
    let checks = env.lines("checks").len();
    crate::support::wait_until("five more health checks", || {
        env.lines("checks").len() >= checks + 5
    });
    let after = settled_fds(pid);
    assert!(after <= before, "fds grew from {before} to {after}");
    // Every hook's and exec's runc and process was reaped.
    crate::support::wait_until("the shim has reaped its children", || {
        crate::support::zombie_children(pid).is_empty()
    });
    env.ctr_ok(&["task", "kill", "-s", "SIGKILL", "long"]);
    env.wait_for_status("long", "STOPPED");
    env.remove("long");
    env.assert_clean(&["long"]);
}
