//! Reconfigure hooks under containerd: the same files as under `run` (a directory laid out and
//! updated as the kubelet's atomic writer does, in-place writes, unwatched files), a signal
//! handler, and watch paths refused at Create with InvalidArgument.
//!
//! That a change did *not* run the handler is seen with [`wait_out_debounce`].

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use serde_json::json;

use crate::configmap::{wait_out_debounce, ConfigMapDir};
use crate::lifecycle::args_ref;
use crate::support::{wait_for_line, wait_until};
use crate::{Env, LIFECYCLE};

/// Appends the watched file's content to /markers/runs: one line per run.
const RECORD_RUN: &str = "cat /etc/config/app.conf >> /markers/runs; echo >> /markers/runs";

/// Says it is up, then idles until SIGTERM.
const IDLE: &str =
    "trap 'exit 0' TERM; echo up > /markers/up; while :; do sleep 1000 & wait $!; done";

/// `ctr run -d` of `script` with `volume` bind-mounted read-only (as the kubelet mounts a
/// ConfigMap) at `at` and `reconfigure` as its spec's entry; returns once it runs and its
/// shim watches.
fn run_watching(
    env: &Env,
    id: &str,
    volume: &Path,
    at: &str,
    reconfigure: serde_json::Value,
    script: &str,
) {
    let mount = format!(
        "type=bind,src={},dst={at},options=rbind:ro",
        volume.display()
    );
    let spec = json!({"reconfigure": reconfigure});
    let args = env.run_args(
        LIFECYCLE,
        id,
        Some(&spec),
        &["-d", "--mount", &mount],
        script,
    );
    env.ctr_ok(&args_ref(&args));
    wait_for_line(&env.marker("up"), Some("up"));
    env.wait_for_status(id, "RUNNING");
    wait_until("the shim watches for changes", || {
        env.containerd
            .log()
            .lines()
            .any(|l| l.contains("watching for configuration changes") && l.contains(id))
    });
}

/// Stops the task (SIGTERM), removes it and checks that nothing is left.
fn stop(env: &Env, id: &str) {
    env.stop(id);
    env.assert_clean(&[id]);
}

#[test]
fn atomic_updates_run_the_handler_once_each_and_a_burst_of_five_once() {
    let Some(env) = Env::new() else { return };
    let mut volume = ConfigMapDir::new(&[("app.conf", "v1"), ("other.conf", "x")]);
    let source = volume.path().to_owned();
    let mut update = |v: &str| volume.update(&[("app.conf", v), ("other.conf", "x")]);
    let reconfigure = json!({"paths": ["/etc/config/app.conf"],
        "exec": {"command": ["sh", "-c", RECORD_RUN]}, "debounceSeconds": 2});
    run_watching(&env, "reconf", &source, "/etc/config", reconfigure, IDLE);
    update("v2");
    wait_for_line(&env.marker("runs"), Some("v2"));
    wait_out_debounce(2);
    for version in 3..=7 {
        update(&format!("v{version}"));
    }
    wait_for_line(&env.marker("runs"), Some("v7"));
    wait_out_debounce(2);
    update("v8");
    wait_for_line(&env.marker("runs"), Some("v8"));
    assert_eq!(env.lines("runs"), ["v2", "v7", "v8"]);
    let log = env.containerd.log();
    assert!(
        log.contains("phase=\"reconfigure\" changed=\"/etc/config/..data\""),
        "{log}"
    );
    stop(&env, "reconf");
}

#[test]
fn an_in_place_write_runs_the_handler_and_touching_an_unwatched_file_does_not() {
    let Some(env) = Env::new() else { return };
    let volume = env.dir().join("config");
    fs::create_dir(&volume).unwrap();
    let file = volume.join("app.conf");
    fs::write(&file, "v1").unwrap();
    fs::write(volume.join("other.conf"), "x").unwrap();
    let reconfigure = json!({"paths": ["/etc/config/app.conf"],
        "exec": {"command": ["sh", "-c", RECORD_RUN]}, "debounceSeconds": 1});
    run_watching(&env, "inplace", &volume, "/etc/config", reconfigure, IDLE);
    fs::OpenOptions::new()
        .append(true)
        .open(volume.join("other.conf"))
        .unwrap();
    fs::write(volume.join("new.conf"), "y").unwrap();
    wait_out_debounce(1);
    let inode = |path: &Path| std::os::unix::fs::MetadataExt::ino(&fs::metadata(path).unwrap());
    let before = inode(&file);
    fs::write(&file, "v2").unwrap();
    assert_eq!(inode(&file), before, "written in place");
    wait_for_line(&env.marker("runs"), Some("v2"));
    assert_eq!(env.lines("runs"), ["v2"]);
    stop(&env, "inplace");
}

#[test]
fn a_signal_handler_s_sighup_reaches_the_entrypoint_s_trap() {
    let Some(env) = Env::new() else { return };
    let mut volume = ConfigMapDir::new(&[("nginx.conf", "v1")]);
    let reconfigure = json!({"paths": ["/etc/nginx"], "signal": {"name": "SIGHUP"}});
    let script = "trap 'echo hup >> /markers/hups' HUP; trap 'exit 0' TERM; echo up > /markers/up; while :; do sleep 1000 & wait $!; done";
    run_watching(
        &env,
        "hup",
        volume.path(),
        "/etc/nginx",
        reconfigure,
        script,
    );
    assert!(env.lines("hups").is_empty());
    volume.update(&[("nginx.conf", "v2")]);
    wait_for_line(&env.marker("hups"), Some("hup"));
    stop(&env, "hup");
    assert_eq!(env.lines("hups"), ["hup"], "one update, one signal");
}

#[test]
fn watch_paths_outside_a_volume_or_through_a_planted_symlink_fail_create_and_leave_nothing() {
    let Some(env) = Env::new() else { return };
    let volume = env.dir().join("config");
    fs::create_dir(&volume).unwrap();
    symlink("/etc", volume.join("sub")).unwrap();
    symlink("/etc/passwd", volume.join("passwd")).unwrap();
    let mount = format!(
        "type=bind,src={},dst=/etc/config,options=rbind:ro",
        volume.display()
    );
    let cases = [
        (
            "outside",
            "/etc/app.conf",
            "/etc/app.conf: is in no bind-mounted volume of the bundle",
        ),
        (
            "through",
            "/etc/config/sub/passwd",
            "/etc/config/sub/passwd: sub: ENOTDIR: Not a directory (symlinks are not followed)",
        ),
        (
            "planted",
            "/etc/config/passwd",
            "/etc/config/passwd: is a symlink to /etc/passwd, which leaves its directory",
        ),
    ];
    for (id, path, error) in cases {
        let spec = json!({"reconfigure": {"paths": [path], "exec": {"command": ["true"]}}});
        let args = env.run_args(
            LIFECYCLE,
            id,
            Some(&spec),
            &["--rm", "--mount", &mount],
            "echo up > /markers/up",
        );
        let out = env.ctr(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(stderr.contains("reconfigure.paths: "), "stderr: {stderr}");
        assert!(stderr.contains(error), "stderr: {stderr}");
        assert!(stderr.contains("invalid argument"), "stderr: {stderr}");
        assert!(env.lines("up").is_empty(), "the entrypoint never ran");
        // ctr keeps the container record when task creation fails; remove it, then check.
        let _ = env.containerd.ctr(&["containers", "rm", id]);
        env.assert_clean(&[id]);
    }
}
