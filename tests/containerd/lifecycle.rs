//! Lifecycle hooks through containerd: the `run` suite's observable checks (marker files,
//! ordering, exit statuses) with `ctr` and the `io.containerd.lifecycle.v2` runtime.

use serde_json::json;

use crate::support::sidecars::{sidecars_spec, PROXY_CLIENT};
use crate::support::wait_for_line;
use crate::{Env, LIFECYCLE};

/// Records the stop signal, says it is up, then idles.
const WAIT_FOR_TERM: &str =
    "trap 'echo term >> /markers/order; exit 0' TERM; echo up > /markers/up; while :; do sleep 1000 & wait $!; done";

/// An init container that leaves busybox httpd on the container's loopback; it binds before
/// it daemonizes, so hooks never race it.
fn http_server_init() -> serde_json::Value {
    json!({"name": "server", "command": ["httpd", "-p", "127.0.0.1:8080", "-h", "/www"]})
}

/// A CGI script that appends `marker` to /markers/order and answers 200.
fn cgi(env: &Env, name: &str, marker: &str) {
    env.add_script(
        &format!("/www/cgi-bin/{name}"),
        &format!("#!/bin/sh\necho {marker} >> /markers/order\nprintf 'HTTP/1.0 200 OK\\r\\n\\r\\nok\\n'\n"),
    );
}

#[test]
fn poststart_and_init_containers_run_in_order_under_ctr() {
    let Some(env) = Env::new() else { return };
    let spec = json!({
        "initContainers": [
            {"name": "first", "command": ["sh", "-c", "echo first >> /markers/order"]},
            {"name": "second", "command": ["sh", "-c", "echo second-$GREETING >> /markers/order"],
             "env": [{"name": "GREETING", "value": "hi"}]}
        ],
        "postStart": {"exec": {"command": ["sh", "-c",
            "echo \"$LIFECYCLE_PHASE $LIFECYCLE_CONTAINER_ID\" > /markers/env; echo hook says hi; touch /tmp/ready"]}}
    });
    let args = env.run_args(
        LIFECYCLE,
        "hooked",
        Some(&spec),
        &["--rm"],
        "while [ ! -f /tmp/ready ]; do sleep 0.05; done; echo main >> /markers/order; exit 7",
    );
    let out = env.ctr(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(7),
        "stderr: {stderr}\n{}",
        env.containerd.log()
    );
    assert_eq!(env.lines("order"), ["first", "second-hi", "main"]);
    assert_eq!(env.lines("env"), ["postStart hooked"]);
    // Hook output is part of the container's stderr stream.
    assert!(
        stderr.contains("[postStart] hook says hi"),
        "stderr: {stderr}"
    );
    env.assert_clean(&["hooked"]);
}

#[test]
fn poststart_http_get_reaches_the_container_loopback_under_ctr() {
    let Some(env) = Env::new() else { return };
    let spec = json!({
        "initContainers": [http_server_init()],
        "postStart": {"httpGet": {"port": 8080, "path": "/cgi-bin/start"}}
    });
    cgi(&env, "start", "poststart-http");
    let args = env.run_args(
        LIFECYCLE,
        "http",
        Some(&spec),
        &["--rm"],
        "while [ ! -s /markers/order ]; do sleep 0.05; done",
    );
    let out = env.ctr(&args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(env.lines("order"), ["poststart-http"]);
    env.assert_clean(&["http"]);
}

#[test]
fn a_failed_poststart_kills_the_task_with_prestop_and_says_why() {
    let Some(env) = Env::new() else { return };
    let spec = json!({
        "postStart": {"exec": {"command": ["sh", "-c", "echo cannot warm up; exit 4"]}},
        "preStop": {"exec": {"command": ["sh", "-c", "echo prestop >> /markers/order"]}}
    });
    let args = env.run_args(LIFECYCLE, "failing", Some(&spec), &["--rm"], WAIT_FOR_TERM);
    let out = env.ctr(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("FailedPostStartHook"), "stderr: {stderr}");
    assert!(stderr.contains("cannot warm up"), "stderr: {stderr}");
    // The TERM trap exits 0, but a failed PostStart never looks like success.
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert_eq!(env.lines("order"), ["prestop", "term"]);
    env.assert_clean(&["failing"]);
}

/// `ctr task kill` returns while PreStop still runs: PreStop here waits for a file the test
/// writes only after the kill returned.
#[test]
fn task_kill_returns_at_once_and_prestop_finishes_before_sigterm() {
    let Some(env) = Env::new() else { return };
    let spec = json!({"preStop": {"exec": {"command": ["sh", "-c",
        "echo prestop >> /markers/order; while [ ! -f /markers/release ]; do sleep 0.05; done; echo prestop-done >> /markers/order"]}}});
    env.run_detached("stopper", &spec, WAIT_FOR_TERM);
    env.ctr_ok(&["task", "kill", "stopper"]);
    wait_for_line(&env.marker("order"), Some("prestop"));
    assert_eq!(
        env.lines("order"),
        ["prestop"],
        "the container was signalled during PreStop"
    );
    std::fs::write(env.marker("release"), "").unwrap();
    env.wait_for_status("stopper", "STOPPED");
    assert_eq!(env.lines("order"), ["prestop", "prestop-done", "term"]);
    env.remove("stopper");
    env.assert_clean(&["stopper"]);
}

#[test]
fn prestop_http_get_runs_before_sigterm_under_ctr() {
    let Some(env) = Env::new() else { return };
    let spec = json!({
        "initContainers": [http_server_init()],
        "preStop": {"httpGet": {"port": 8080, "path": "/cgi-bin/drain"}}
    });
    cgi(&env, "drain", "prestop-http");
    env.run_detached("drainer", &spec, WAIT_FOR_TERM);
    env.ctr_ok(&["task", "kill", "drainer"]);
    env.wait_for_status("drainer", "STOPPED");
    assert_eq!(env.lines("order"), ["prestop-http", "term"]);
    env.remove("drainer");
    env.assert_clean(&["drainer"]);
}

#[test]
fn sigkill_during_prestop_kills_at_once() {
    let Some(env) = Env::new() else { return };
    let spec = json!({
        "preStop": {"exec": {"command": ["sh", "-c", "echo prestop >> /markers/order; sleep 600"]}},
        "terminationGracePeriodSeconds": 600
    });
    env.run_detached("victim", &spec, WAIT_FOR_TERM);
    env.ctr_ok(&["task", "kill", "victim"]);
    wait_for_line(&env.marker("order"), Some("prestop"));
    env.ctr_ok(&["task", "kill", "-s", "SIGKILL", "victim"]);
    env.wait_for_status("victim", "STOPPED");
    // Killed: the TERM trap never ran.
    assert_eq!(env.lines("order"), ["prestop"]);
    let stderr = env.remove("victim");
    assert!(stderr.contains("exit code 137"), "ctr task rm: {stderr}");
    env.assert_clean(&["victim"]);
}

/// Start returns while an init container still runs, once its wait is over (1 s in this
/// harness): here one that waits for the test, so it would outlast any deadline containerd or
/// the CRI plugin puts on Start.
#[test]
fn start_returns_while_init_containers_run() {
    let Some(env) = Env::new() else { return };
    let spec = json!({"initContainers": [{"name": "slow", "command": ["sh", "-c",
        "echo waiting > /markers/init; while [ ! -f /markers/release ]; do sleep 0.05; done"]}]});
    env.ctr_ok(&args_ref(&env.run_args(
        LIFECYCLE,
        "slow",
        Some(&spec),
        &["-d"],
        "echo main >> /markers/order",
    )));
    wait_for_line(&env.marker("init"), Some("waiting"));
    assert_eq!(
        env.containerd.task_status("slow").as_deref(),
        Some("RUNNING")
    );
    assert!(
        env.lines("order").is_empty(),
        "the entrypoint ran before its init container ended"
    );
    std::fs::write(env.marker("release"), "").unwrap();
    env.wait_for_status("slow", "STOPPED");
    assert_eq!(env.lines("order"), ["main"]);
    env.remove("slow");
    env.assert_clean(&["slow"]);
}

#[test]
fn a_failing_init_container_ends_the_task_with_its_status() {
    let Some(env) = Env::new() else { return };
    let spec = json!({"initContainers": [
        {"name": "migrate", "command": ["sh", "-c", "echo schema is locked; exit 3"]},
        {"name": "never", "command": ["sh", "-c", "echo never >> /markers/order"]}
    ]});
    let args = env.run_args(
        LIFECYCLE,
        "initfail",
        Some(&spec),
        &["--rm"],
        "echo main >> /markers/order",
    );
    let out = env.ctr(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "stderr: {stderr}");
    assert!(
        env.lines("order").is_empty(),
        "ran: {:?}",
        env.lines("order")
    );
    assert!(
        stderr.contains("\"migrate\" failed: exited with exit code 3"),
        "stderr: {stderr}"
    );
    assert!(
        stderr.contains("the entrypoint was not started"),
        "stderr: {stderr}"
    );
    env.assert_clean(&["initfail"]);
}

#[test]
fn a_bad_spec_fails_create_with_invalid_argument_and_leaves_nothing() {
    let Some(env) = Env::new() else { return };
    let spec = json!({"preStop": {"httpGet": {"port": 0}}});
    let args = env.run_args(
        LIFECYCLE,
        "bad",
        Some(&spec),
        &["--rm"],
        "echo main >> /markers/order",
    );
    let out = env.ctr(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("preStop.httpGet.port: must be 1..65535"),
        "stderr: {stderr}"
    );
    assert!(stderr.contains("invalid argument"), "stderr: {stderr}");
    assert!(env.lines("order").is_empty());
    // ctr keeps the container record when task creation fails; remove it, then check.
    let _ = env.containerd.ctr(&["containers", "rm", "bad"]);
    env.assert_clean(&["bad"]);
}

pub fn args_ref(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// Stages, retries and the shutdown delay through containerd: the engine is the `run`
/// command's, the triggers are containerd's.
#[test]
fn stages_retries_and_the_shutdown_delay_under_ctr() {
    let Some(env) = Env::new() else { return };
    let spec = json!({
        "postStart": [
            [
                {"exec": {"command": ["sh", "-c", "echo first-a >> /markers/stages"]}},
                {"exec": {"command": ["sh", "-c",
                    "if [ -f /tmp/tried ]; then echo first-flaky >> /markers/stages; else touch /tmp/tried; exit 1; fi"]},
                 "retries": 1, "backoffSeconds": 0}
            ],
            [{"exec": {"command": ["sh", "-c", "echo second >> /markers/stages"]}}]
        ],
        "shutdownDelaySeconds": 2,
        "preStop": {"exec": {"command": ["sh", "-c", "echo prestop >> /markers/order"]}}
    });
    env.run_detached("staged", &spec, WAIT_FOR_TERM);
    wait_for_line(&env.marker("stages"), Some("second"));
    let mut stages = env.lines("stages");
    assert_eq!(stages.pop().as_deref(), Some("second"), "stage 2 ran last");
    stages.sort();
    assert_eq!(stages, ["first-a", "first-flaky"]);
    let asked = std::time::Instant::now();
    env.ctr_ok(&["task", "kill", "staged"]);
    let prestop = wait_for_line(&env.marker("order"), Some("prestop"));
    assert!(
        prestop - asked >= std::time::Duration::from_millis(1900),
        "PreStop after {:?}, before the 2 s shutdown delay",
        prestop - asked
    );
    env.wait_for_status("staged", "STOPPED");
    assert_eq!(env.lines("order"), ["prestop", "term"]);
    env.remove("staged");
    env.assert_clean(&["staged"]);
}

/// postStop finishes before the task's exit is published: when `ctr run` returns, it has run.
#[test]
fn poststop_runs_before_the_exit_is_published_under_ctr() {
    let Some(env) = Env::new() else { return };
    let spec = json!({"postStop": {"exec": {"command": ["sh", "-c", "echo \"poststop pid=$$\" >> /markers/order; echo cleaned"]}}});
    let args = env.run_args(
        LIFECYCLE,
        "post",
        Some(&spec),
        &["--rm"],
        "echo main >> /markers/order; exit 4",
    );
    let out = env.ctr(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "stderr: {stderr}");
    assert_eq!(env.lines("order"), ["main", "poststop pid=1"]);
    assert!(stderr.contains("[postStop] cleaned"), "stderr: {stderr}");
    env.assert_clean(&["post"]);
}

/// `once` under containerd: two tasks sharing a volume run the install step once.
#[test]
fn a_once_step_runs_once_for_tasks_sharing_a_volume() {
    let Some(env) = Env::new() else { return };
    let volume = tempfile::Builder::new()
        .prefix("lcs-volume-")
        .tempdir()
        .unwrap();
    let mount = format!(
        "type=bind,src={},dst=/data,options=rbind:rw",
        volume.path().display()
    );
    let spec = json!({"initContainers": [{"name": "install",
        "command": ["sh", "-c", "echo installed >> /data/installs; sleep 0.3"],
        "once": {"path": "/data/.installed", "key": "v1"}}]});
    let ctrs: Vec<_> = ["vol-a", "vol-b"]
        .iter()
        .map(|id| {
            let args = env.run_args(
                LIFECYCLE,
                id,
                Some(&spec),
                &["--rm", "--mount", &mount],
                "echo main >> /data/main",
            );
            env.containerd.spawn_ctr(&args_ref(&args))
        })
        .collect();
    for ctr in ctrs {
        assert_eq!(ctr.wait().status.code(), Some(0));
    }
    assert_eq!(
        crate::support::read_lines(&volume.path().join("installs")),
        ["installed"]
    );
    assert_eq!(
        crate::support::read_lines(&volume.path().join("main")).len(),
        2
    );
    env.assert_clean(&["vol-a", "vol-b"]);
}

/// Health checks under containerd: `lifecycle-shim status --namespace` shows the status.
#[test]
fn health_status_is_shown_for_a_task() {
    let Some(env) = Env::new() else { return };
    std::fs::write(env.marker("code"), "1").unwrap();
    let spec = json!({"healthCheck": {"exec": {"command": ["sh", "-c", "echo slow disk; exit $(cat /markers/code)"]}, "periodSeconds": 1}});
    env.run_detached("healthy", &spec, WAIT_FOR_TERM);
    let status = || {
        let out = std::process::Command::new(crate::support::SHIM)
            .env("LIFECYCLE_SHIM_STATE", env.containerd.shim_state())
            .args([
                "status",
                "--namespace",
                env.containerd.namespace(),
                "healthy",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    crate::support::wait_until("the status is warning", || {
        status().contains("\"status\": \"warning\"")
    });
    std::fs::write(env.marker("code"), "0").unwrap();
    crate::support::wait_until("the status is ok", || {
        status().contains("\"status\": \"ok\"")
    });
    env.stop("healthy");
    assert_eq!(status(), "", "the status file outlived the task");
    env.assert_clean(&["healthy"]);
}

/// Sidecars under containerd: restarted when they exit, in the container's network namespace,
/// and stopped after the entrypoint in reverse order before the task's exit is published.
#[test]
fn sidecars_are_restarted_and_stopped_after_the_entrypoint_under_ctr() {
    let Some(env) = Env::new() else { return };
    env.run_detached("sidecars", &sidecars_spec(), PROXY_CLIENT);
    assert_eq!(env.lines("proxy"), ["start", "start"]);
    assert_eq!(env.lines("fetched"), ["proxied"]);
    env.ctr_ok(&["task", "kill", "sidecars"]);
    env.wait_for_status("sidecars", "STOPPED");
    assert_eq!(
        env.lines("order"),
        ["main-stop", "logger-stop", "proxy-stop"]
    );
    env.remove("sidecars");
    env.assert_clean(&["sidecars"]);
}
