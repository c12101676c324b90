//! Issue 5's additions with `run`: stages and retries, the shutdown delay, postStop, run-once
//! steps, health checks and sidecars.

use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::json;

use crate::support;
use crate::support::sidecars::{sidecars_spec, AWAIT_LOGGER, LOGGER_SIDECAR, PROXY_CLIENT};
use crate::support::{prerequisites, wait_for_line, TestBundle};
use crate::{stop_after_up, WAIT_FOR_TERM};

/// Stages run in order, a stage's handlers at once; a flaky handler succeeds on retry.
#[test]
fn poststart_stages_run_in_order_and_a_flaky_handler_succeeds_on_retry() {
    if !prerequisites() {
        return;
    }
    let bundle = TestBundle::new("while [ ! -f /markers/stage2 ]; do sleep 0.05; done; echo main >> /markers/order")
        .with_spec(json!({"postStart": [
            [
                {"exec": {"command": ["sh", "-c", "while [ ! -f /markers/b ]; do sleep 0.05; done; echo a >> /markers/order"]}},
                {"exec": {"command": ["sh", "-c", "echo b >> /markers/order; touch /markers/b"]}},
                {"exec": {"command": ["sh", "-c",
                    "if [ -f /tmp/tried ]; then echo flaky-ok >> /markers/flaky; else touch /tmp/tried; exit 1; fi"]},
                 "retries": 2, "backoffSeconds": 0}
            ],
            [{"exec": {"command": ["sh", "-c", "echo stage2 >> /markers/order; touch /markers/stage2"]}}]
        ]}));
    let done = bundle.run();
    done.assert_code(0);
    // `a` waits for `b` of the same stage, so they ran at once; stage 2 came after both.
    assert_eq!(bundle.lines("order"), ["b", "a", "stage2", "main"]);
    assert_eq!(bundle.lines("flaky"), ["flaky-ok"]);
    // The failed attempt is logged as such; no failure of the phase is reported.
    done.assert_stderr_has("retrying hook");
    assert!(
        !done.stderr.contains("lifecycle-shim: FailedPostStartHook"),
        "{}",
        done.stderr
    );
    bundle.assert_clean();
}

#[test]
fn the_shutdown_delay_comes_before_prestop() {
    if !prerequisites() {
        return;
    }
    let bundle = TestBundle::new(WAIT_FOR_TERM).with_spec(json!({
        "shutdownDelaySeconds": 2,
        "preStop": {"exec": {"command": ["sh", "-c", "echo prestop >> /markers/order"]}}
    }));
    let shim = bundle.spawn(&[]);
    wait_for_line(&bundle.marker("up"), Some("up"));
    let asked = std::time::Instant::now();
    shim.signal(Signal::SIGTERM);
    let prestop = wait_for_line(&bundle.marker("order"), Some("prestop"));
    let done = shim.wait();
    done.assert_code(0);
    assert_eq!(bundle.lines("order"), ["prestop", "term"]);
    // A lower bound only: PreStop cannot start before the delay has passed.
    assert!(
        prestop - asked >= Duration::from_millis(1900),
        "PreStop after {:?}",
        prestop - asked
    );
    bundle.assert_clean();
}

/// postStop (Nomad's poststop) after a crash: a fresh container from the same bundle, so its
/// command is PID 1 of a new PID namespace; the container's status stands.
#[test]
fn poststop_runs_in_a_fresh_container_after_a_crash() {
    if !prerequisites() {
        return;
    }
    let bundle = TestBundle::new("echo main >> /markers/order; exit 3").with_spec(json!({
        "postStop": [
            [{"exec": {"command": ["sh", "-c", "echo \"poststop pid=$$ $LIFECYCLE_PHASE\" >> /markers/order"]}}],
            [{"exec": {"command": ["sh", "-c", "echo cleanup failed; exit 5"]}}]
        ]
    }));
    let done = bundle.run();
    done.assert_code(3);
    assert_eq!(bundle.lines("order"), ["main", "poststop pid=1 postStop"]);
    done.assert_stderr_has(
        "lifecycle-shim: FailedPostStopHook: postStop exec failed: exited with exit code 5",
    );
    done.assert_stderr_has("[postStop] cleanup failed");
    bundle.assert_clean();
}

#[test]
fn poststop_runs_after_a_stop_and_after_prestop() {
    if !prerequisites() {
        return;
    }
    let bundle = TestBundle::new(WAIT_FOR_TERM).with_spec(json!({
        "initContainers": [{"name": "init", "command": ["true"]}],
        "preStop": {"exec": {"command": ["sh", "-c", "echo prestop >> /markers/order"]}},
        "postStop": {"exec": {"command": ["sh", "-c", "echo poststop >> /markers/order"]}}
    }));
    let (done, order) = stop_after_up(&bundle);
    done.assert_code(0);
    assert_eq!(order, ["prestop", "term", "poststop"]);
    bundle.assert_clean();
}

/// `once` install steps: containers sharing a volume, started together, run the step exactly
/// once per key; a failed step is remembered and runs again.
#[test]
fn a_once_step_runs_once_per_key_for_containers_sharing_a_volume() {
    if !prerequisites() {
        return;
    }
    let volume = tempfile::Builder::new()
        .prefix("lcs-volume-")
        .tempdir()
        .unwrap();
    let bundle_for = |key: &str, script: &str| {
        let mut bundle = TestBundle::new("echo main >> /data/main");
        bundle.config["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/data", "type": "bind", "source": volume.path(), "options": ["rbind", "rw"]
        }));
        let spec = json!({"initContainers": [{"name": "install", "command": ["sh", "-c", script],
            "env": [{"name": "KEY", "value": key}], "once": {"path": "/data/.installed", "key": key}}]});
        bundle.annotate("lifecycle-shim/spec", &spec.to_string());
        bundle
    };
    // The step takes a moment, so without the lock the three would overlap.
    let install = "echo install-$KEY >> /data/installs; sleep 0.3";
    let run_three = |key: &str| {
        let bundles: Vec<TestBundle> = (0..3).map(|_| bundle_for(key, install)).collect();
        let shims: Vec<_> = bundles.iter().map(|b| b.spawn(&[])).collect();
        for shim in shims {
            shim.wait().assert_code(0);
        }
        for bundle in &bundles {
            bundle.assert_clean();
        }
    };
    let installs = || support::read_lines(&volume.path().join("installs"));
    run_three("v1");
    assert_eq!(installs(), ["install-v1"]);
    assert_eq!(support::read_lines(&volume.path().join("main")).len(), 3);
    run_three("v1");
    assert_eq!(installs(), ["install-v1"]);
    run_three("v2");
    assert_eq!(installs(), ["install-v1", "install-v2"]);
    // A failed step is remembered as failed, so it runs again next time.
    let failing = bundle_for("v3", "echo install-$KEY >> /data/installs; exit 1");
    let done = failing.run();
    done.assert_code(1);
    failing.assert_clean();
    run_three("v3");
    assert_eq!(
        installs(),
        ["install-v1", "install-v2", "install-v3", "install-v3"]
    );
}

#[test]
fn a_once_sentinel_outside_any_volume_is_refused_before_anything_runs() {
    if !prerequisites() {
        return;
    }
    let bundle = TestBundle::new("echo main >> /markers/order").with_spec(json!({"initContainers": [
        {"name": "install", "command": ["true"], "once": {"path": "/opt/.installed", "key": "v1"}}
    ]}));
    let done = bundle.run();
    done.assert_code(2);
    done.assert_stderr_has(
        "\"install\": once.path \"/opt/.installed\" is in no bind-mounted volume",
    );
    assert!(bundle.lines("order").is_empty());
    bundle.assert_clean();
}

/// Health checks (Habitat's): ok → critical → ok, seen with `lifecycle-shim status`; the
/// status goes with the container.
#[test]
fn health_status_follows_the_check_and_the_status_command_shows_it() {
    if !prerequisites() {
        return;
    }
    let bundle = TestBundle::new(WAIT_FOR_TERM).with_spec(json!({"healthCheck": {
        "exec": {"command": ["sh", "-c", "cat /markers/say; exit $(cat /markers/code)"]}, "periodSeconds": 1}}));
    let set = |code: &str, say: &str| {
        std::fs::write(bundle.marker("say"), say).unwrap();
        std::fs::write(bundle.marker("code"), code).unwrap();
    };
    set("0", "all good");
    let shim = bundle.spawn(&[]);
    let wait_status = |status: &str, say: &str| {
        support::wait_until(&format!("the status is {status}"), || {
            bundle.status().is_some_and(|s| {
                s.contains(&format!("\"status\": \"{status}\"")) && s.contains(say)
            })
        });
    };
    wait_status("ok", "all good");
    set("2", "disk full");
    wait_status("critical", "disk full");
    set("0", "recovered");
    wait_status("ok", "recovered");
    shim.signal(Signal::SIGTERM);
    let done = shim.wait();
    done.assert_code(0);
    done.assert_stderr_has("health changed");
    assert_eq!(
        bundle.status(),
        None,
        "the status file outlived the container"
    );
    bundle.assert_clean();
}

#[test]
fn critical_health_stops_the_container_when_asked() {
    if !prerequisites() {
        return;
    }
    let bundle = TestBundle::new(WAIT_FOR_TERM).with_spec(json!({
        "healthCheck": {"exec": {"command": ["sh", "-c", "echo down; exit 2"]}, "periodSeconds": 1,
                        "onCritical": "kill", "criticalThreshold": 2},
        "preStop": {"exec": {"command": ["sh", "-c", "echo prestop >> /markers/order"]}}
    }));
    let done = bundle.run();
    done.assert_code(0);
    assert_eq!(bundle.lines("order"), ["prestop", "term"]);
    done.assert_stderr_has("health check critical too many times in a row; stopping");
    bundle.assert_clean();
}

/// Sidecars (`restartPolicy: Always`): kept running beside the entrypoint in its network
/// namespace, restarted when they exit, and stopped after the entrypoint, in reverse order.
#[test]
fn sidecars_are_restarted_and_stopped_after_the_entrypoint_in_reverse_order() {
    if !prerequisites() {
        return;
    }
    let bundle = TestBundle::new(PROXY_CLIENT).with_spec(sidecars_spec());
    let (done, order) = stop_after_up(&bundle);
    done.assert_code(0);
    // The proxy crashed once and was started again; the entrypoint reached its second run.
    assert_eq!(bundle.lines("proxy"), ["start", "start"]);
    assert_eq!(bundle.lines("fetched"), ["proxied"]);
    done.assert_stderr_has("sidecar proxy exited with exit code 3; restarting in 1.0s");
    assert_eq!(order, ["main-stop", "logger-stop", "proxy-stop"]);
    bundle.assert_clean();
}

/// A sidecar that ignores the stop signal is killed when the grace period is over.
#[test]
fn a_sidecar_that_ignores_sigterm_is_killed_at_the_end_of_the_grace_period() {
    if !prerequisites() {
        return;
    }
    let stubborn = "trap '' TERM; while :; do sleep 1; done";
    let bundle = TestBundle::new(WAIT_FOR_TERM).with_spec(json!({
        "terminationGracePeriodSeconds": 2,
        "initContainers": [{"name": "stubborn", "command": ["sh", "-c", stubborn], "restartPolicy": "Always"}]
    }));
    let (done, order) = stop_after_up(&bundle);
    done.assert_code(0);
    assert_eq!(order, ["term"]);
    bundle.assert_clean();
}

/// The next init container and the entrypoint wait for a sidecar to run; one that cannot start
/// stops the sequence.
#[test]
fn a_sidecar_that_cannot_start_keeps_the_entrypoint_from_starting() {
    if !prerequisites() {
        return;
    }
    let bundle =
        TestBundle::new("echo main >> /markers/order").with_spec(json!({"initContainers": [
            {"name": "logger", "command": ["sh", "-c", LOGGER_SIDECAR], "restartPolicy": "Always"},
            {"name": "wait", "command": ["sh", "-c", AWAIT_LOGGER]},
            {"name": "broken", "command": ["/no/such/program"], "restartPolicy": "Always"},
            {"name": "after", "command": ["sh", "-c", "echo after >> /markers/order"]}
        ]}));
    let done = bundle.run();
    done.assert_code(1);
    done.assert_stderr_has("sidecar \"broken\" failed: could not be started");
    done.assert_stderr_has("/no/such/program: no such file or directory");
    done.assert_stderr_has("the entrypoint was not started");
    // The sidecar that did start was stopped.
    assert_eq!(bundle.lines("order"), ["logger-stop"]);
    bundle.assert_clean();
}
