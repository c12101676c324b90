//! `lifecycle-shim run` against real runc and busybox bundles: hooks, init containers, the stop
//! sequence, bad input, and that nothing is left behind.

#[path = "../support/mod.rs"]
mod support;

mod hardening;

use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::json;
use support::sidecars::{sidecars_spec, AWAIT_LOGGER, LOGGER_SIDECAR, PROXY_CLIENT};
use support::{container_pid, https_server, prerequisites, wait_for_line, TestBundle, SHIM};

/// The entrypoint most stop tests use: records the stop signal, says it is up, then idles.
const WAIT_FOR_TERM: &str =
    "trap 'echo term >> /markers/order; exit 0' TERM; echo up > /markers/up; while :; do sleep 1000 & wait $!; done";

/// An init container that leaves busybox httpd listening on the container's loopback, so an
/// httpGet hook has a server without racing the entrypoint. It binds before it daemonizes.
fn http_server_init() -> serde_json::Value {
    json!({"name": "server", "command": ["httpd", "-p", "127.0.0.1:8080", "-h", "/www"]})
}

/// A CGI script for busybox httpd: appends `marker` (and the X-Reason header) to
/// /markers/order, then answers with `status`.
fn cgi(bundle: &TestBundle, name: &str, marker: &str, status: &str) {
    bundle.add_script(
        &format!("/www/cgi-bin/{name}"),
        &format!(
            "#!/bin/sh\necho \"{marker} $HTTP_X_REASON\" >> /markers/order\nprintf 'HTTP/1.0 {status}\\r\\nContent-Type: text/plain\\r\\n\\r\\nhello from {name}\\n'\n"
        ),
    );
}

#[test]
fn poststart_exec_runs_inside_the_container_beside_the_entrypoint() {
    if !prerequisites() {
        return;
    }
    // The entrypoint only finishes once the hook's file appears in its own /tmp: the hook ran
    // concurrently with it, in its mount namespace.
    let bundle = TestBundle::new(
        "while [ ! -f /tmp/ready ]; do sleep 0.05; done; echo entrypoint saw ready >> /markers/order",
    )
    .with_spec(json!({"postStart": {"exec": {"command": ["sh", "-c",
        "echo \"$LIFECYCLE_PHASE $LIFECYCLE_CONTAINER_ID $(id -u)\" >> /markers/env; echo hook says hi; touch /tmp/ready"]}}}));
    let done = bundle.run();
    done.assert_code(0);
    assert_eq!(bundle.lines("order"), ["entrypoint saw ready"]);
    assert_eq!(bundle.lines("env"), [format!("postStart {} 0", bundle.id)]);
    assert!(bundle.rootfs().join("tmp/ready").exists());
    done.assert_stderr_has("[postStart] hook says hi");
    // Logged as finished, or as cut short when the entrypoint's exit beat the hook's own.
    done.assert_stderr_has("phase=\"postStart\" handler=\"exec\"");
    bundle.assert_clean();
}

#[test]
fn poststart_http_get_reaches_a_server_on_the_container_loopback() {
    if !prerequisites() {
        return;
    }
    // The entrypoint lives until the test has seen the hook's report.
    let bundle =
        TestBundle::new("while [ ! -e /markers/release ]; do sleep 0.05; done").with_spec(json!({
            "initContainers": [http_server_init()],
            "postStart": {"httpGet": {"port": 8080, "path": "/cgi-bin/start",
                          "httpHeaders": [{"name": "X-Reason", "value": "boot"}]}}
        }));
    cgi(&bundle, "start", "poststart-http", "200 OK");
    let shim = bundle.spawn(&[]);
    let stderr = bundle.dir.path().join("shim.stderr");
    support::wait_until("PostStart is reported", || {
        std::fs::read_to_string(&stderr)
            .unwrap_or_default()
            .contains("phase=\"postStart\" handler=\"httpGet\"")
    });
    std::fs::write(bundle.marker("release"), "").unwrap();
    let done = shim.wait();
    done.assert_code(0);
    assert_eq!(bundle.lines("order"), ["poststart-http boot"]);
    done.assert_stderr_has("http_status=200");
    bundle.assert_clean();
}

#[test]
fn poststart_https_get_skips_certificate_checks() {
    if !prerequisites() {
        return;
    }
    // The init container holds the start until the test's HTTPS server listens inside the
    // container's network namespace.
    let bundle = TestBundle::new("while [ ! -s /markers/order ]; do sleep 0.05; done").with_spec(json!({
        "initContainers": [{"name": "hold", "command": ["sh", "-c",
            "echo waiting > /markers/waiting; while [ ! -f /markers/go ]; do sleep 0.05; done"]}],
        "postStart": {"httpGet": {"port": 8443, "scheme": "HTTPS", "path": "/started"}}
    }));
    let shim = bundle.spawn(&[]);
    wait_for_line(&bundle.marker("waiting"), Some("waiting"));
    let server = https_server(
        Some(container_pid(&bundle)),
        8443,
        "poststart-https",
        bundle.marker("order"),
    );
    std::fs::write(bundle.marker("go"), "").unwrap();
    let head = server.join().unwrap();
    let done = shim.wait();
    done.assert_code(0);
    assert!(head.starts_with("GET /started HTTP/1.1\r\n"), "{head}");
    assert_eq!(bundle.lines("order"), ["poststart-https"]);
    done.assert_stderr_has("http_status=200");
    bundle.assert_clean();
}

#[test]
fn prestop_https_get_finishes_before_the_container_gets_sigterm() {
    if !prerequisites() {
        return;
    }
    let bundle = TestBundle::new(WAIT_FOR_TERM).with_spec(json!({
        "preStop": {"httpGet": {"port": 8443, "scheme": "HTTPS", "path": "/drain",
                    "httpHeaders": [{"name": "X-Reason", "value": "stop"}]}}
    }));
    let shim = bundle.spawn(&[]);
    wait_for_line(&bundle.marker("up"), Some("up"));
    let server = https_server(
        Some(container_pid(&bundle)),
        8443,
        "prestop-https",
        bundle.marker("order"),
    );
    shim.signal(Signal::SIGTERM);
    let head = server.join().unwrap();
    let done = shim.wait();
    done.assert_code(0);
    assert!(head.starts_with("GET /drain HTTP/1.1\r\n"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("x-reason: stop"),
        "{head}"
    );
    assert_eq!(bundle.lines("order"), ["prestop-https", "term"]);
    bundle.assert_clean();
}

/// A PostStart httpGet that fails must kill the container: PreStop still runs, the stop signal
/// arrives, `run` reports FailedPostStartHook and exits non-zero.
fn assert_failed_poststart_http(http_get: serde_json::Value, reason: &str, status: Option<&str>) {
    let bundle = TestBundle::new(WAIT_FOR_TERM).with_spec(json!({
        "initContainers": [http_server_init()],
        "postStart": http_get,
        "preStop": {"exec": {"command": ["sh", "-c", "echo prestop >> /markers/order"]}},
        "terminationGracePeriodSeconds": 10
    }));
    if let Some(status) = status {
        cgi(&bundle, "hook", "poststart-http", status);
    }
    let done = bundle.run();
    done.assert_stderr_has("FailedPostStartHook");
    done.assert_stderr_has(reason);
    // The TERM trap exits 0, but a failed PostStart must not look like success.
    done.assert_code(1);
    let order = bundle.lines("order");
    assert_eq!(&order[order.len() - 2..], ["prestop", "term"], "{order:?}");
    bundle.assert_clean();
}

#[test]
fn poststart_http_500_kills_the_container() {
    if !prerequisites() {
        return;
    }
    assert_failed_poststart_http(
        json!({"httpGet": {"port": 8080, "path": "/cgi-bin/hook"}}),
        "HTTP status 500",
        Some("500 Internal Server Error"),
    );
}

#[test]
fn poststart_http_refused_port_kills_the_container() {
    if !prerequisites() {
        return;
    }
    assert_failed_poststart_http(
        json!({"httpGet": {"port": 8081}}),
        "connecting to 127.0.0.1:8081 inside the container: Connection refused",
        None,
    );
}

#[test]
fn poststart_http_timeout_kills_the_container() {
    if !prerequisites() {
        return;
    }
    let bundle_script = "#!/bin/sh\nsleep 600\n";
    let bundle = TestBundle::new(WAIT_FOR_TERM).with_spec(json!({
        "initContainers": [http_server_init()],
        "postStart": {"httpGet": {"port": 8080, "path": "/cgi-bin/slow"}, "timeoutSeconds": 1},
        "terminationGracePeriodSeconds": 10
    }));
    bundle.add_script("/www/cgi-bin/slow", bundle_script);
    let done = bundle.run();
    done.assert_stderr_has("FailedPostStartHook: postStart httpGet failed: timed out after 1.");
    done.assert_code(1);
    assert_eq!(bundle.lines("order"), ["term"]);
    bundle.assert_clean();
}

#[test]
fn poststart_exec_failure_reports_its_output_and_kills_the_container() {
    if !prerequisites() {
        return;
    }
    let bundle = TestBundle::new(WAIT_FOR_TERM).with_spec(json!({
        "postStart": {"exec": {"command": ["sh", "-c", "echo migration went wrong; exit 4"]}}
    }));
    let done = bundle.run();
    done.assert_stderr_has("FailedPostStartHook: postStart exec failed: exited with exit code 4");
    done.assert_stderr_has("output:\nmigration went wrong");
    done.assert_code(1);
    assert_eq!(bundle.lines("order"), ["term"]);
    bundle.assert_clean();
}

/// Sends SIGTERM once the entrypoint is up and returns the marker lines once `run` has exited.
fn stop_after_up(bundle: &TestBundle) -> (support::Finished, Vec<String>) {
    let shim = bundle.spawn(&[]);
    wait_for_line(&bundle.marker("up"), Some("up"));
    shim.signal(Signal::SIGTERM);
    let done = shim.wait();
    let order = bundle.lines("order");
    (done, order)
}

#[test]
fn prestop_exec_finishes_before_the_container_gets_sigterm() {
    if !prerequisites() {
        return;
    }
    let bundle = TestBundle::new(WAIT_FOR_TERM).with_spec(json!({"preStop": {"exec": {"command": ["sh", "-c",
        "echo prestop-begin >> /markers/order; sleep 1; echo \"prestop-end $LIFECYCLE_PHASE\" >> /markers/order"]}}}));
    let (done, order) = stop_after_up(&bundle);
    done.assert_code(0);
    assert_eq!(order, ["prestop-begin", "prestop-end preStop", "term"]);
    done.assert_stderr_has("hook finished phase=\"preStop\" handler=\"exec\"");
    bundle.assert_clean();
}

#[test]
fn prestop_http_get_finishes_before_the_container_gets_sigterm() {
    if !prerequisites() {
        return;
    }
    let bundle = TestBundle::new(WAIT_FOR_TERM).with_spec(json!({
        "initContainers": [http_server_init()],
        "preStop": {"httpGet": {"port": 8080, "path": "/cgi-bin/drain",
                    "httpHeaders": [{"name": "X-Reason", "value": "stop"}]}}
    }));
    cgi(&bundle, "drain", "prestop-http", "200 OK");
    let (done, order) = stop_after_up(&bundle);
    done.assert_code(0);
    assert_eq!(order, ["prestop-http stop", "term"]);
    bundle.assert_clean();
}

#[test]
fn failing_prestop_is_reported_and_termination_continues() {
    if !prerequisites() {
        return;
    }
    let bundle = TestBundle::new(WAIT_FOR_TERM).with_spec(json!({
        "preStop": {"exec": {"command": ["sh", "-c", "echo cannot drain; exit 9"]}}
    }));
    let (done, order) = stop_after_up(&bundle);
    done.assert_code(0);
    assert_eq!(order, ["term"]);
    done.assert_stderr_has("reason=\"FailedPreStopHook\"");
    done.assert_stderr_has("[preStop] cannot drain");
    bundle.assert_clean();
}

#[test]
fn prestop_outliving_grace_gets_the_stop_signal_at_the_deadline_then_sigkill() {
    if !prerequisites() {
        return;
    }
    // The entrypoint notes SIGQUIT (the stop signal here) and keeps running, so only SIGKILL
    // ends it; PreStop would take a minute.
    let bundle = TestBundle::new(
        "trap 'echo quit >> /markers/order' QUIT; echo up > /markers/up; while :; do sleep 1000 & wait $!; done",
    )
    .with_spec(json!({
        "preStop": {"exec": {"command": ["sh", "-c", "echo prestop >> /markers/order; sleep 60"]}},
        "stopSignal": "SIGQUIT",
        "terminationGracePeriodSeconds": 3
    }));
    let shim = bundle.spawn(&[]);
    wait_for_line(&bundle.marker("up"), Some("up"));
    let asked = std::time::Instant::now();
    shim.signal(Signal::SIGTERM);
    let signalled = wait_for_line(&bundle.marker("order"), Some("quit"));
    let done = shim.wait();
    let ended = std::time::Instant::now();
    done.assert_code(137);
    assert_eq!(bundle.lines("order"), ["prestop", "quit"]);
    // Lower bounds only: the stop signal cannot come before the grace deadline, SIGKILL not
    // before the 2 s that follow. The upper bound is the issue's grace + 2 s, plus slack for a
    // loaded machine.
    assert!(
        signalled - asked >= Duration::from_millis(2900),
        "stop signal after {:?}",
        signalled - asked
    );
    assert!(
        ended - signalled >= Duration::from_millis(1500),
        "SIGKILL {:?} after the stop signal",
        ended - signalled
    );
    assert!(
        ended - asked < Duration::from_secs(3 + 2 + 10),
        "run ended after {:?}",
        ended - asked
    );
    bundle.assert_clean();
}

#[test]
fn a_timed_out_hook_is_killed_while_the_container_lives_on() {
    if !prerequisites() {
        return;
    }
    // PreStop hangs with a 1 s timeout inside a 30 s grace period. When the TERM trap runs, the
    // hook's process must already be gone from the container.
    let bundle = TestBundle::new(
        "trap 'if ps | grep -q \"[s]leep 601\"; then echo hook-alive; else echo hook-gone; fi >> /markers/order; exit 0' TERM; \
         echo up > /markers/up; while :; do sleep 1000 & wait $!; done",
    )
    .with_spec(json!({
        "preStop": {"exec": {"command": ["sh", "-c", "echo prestop >> /markers/order; sleep 601"]}, "timeoutSeconds": 1},
        "terminationGracePeriodSeconds": 30
    }));
    let (done, order) = stop_after_up(&bundle);
    done.assert_code(0);
    assert_eq!(order, ["prestop", "hook-gone"]);
    done.assert_stderr_has("reason=\"FailedPreStopHook\"");
    done.assert_stderr_has("error=timed out after 1.");
    bundle.assert_clean();
}

#[test]
fn the_shim_leaves_no_zombies() {
    if !prerequisites() {
        return;
    }
    // With an init container the shim is the container init's parent (subreaper); every runc
    // it ran must be reaped once PostStart has finished.
    let bundle = TestBundle::new(WAIT_FOR_TERM).with_spec(json!({
        "initContainers": [{"name": "init", "command": ["true"]}],
        "postStart": {"exec": {"command": ["sh", "-c", "echo done > /markers/poststart"]}}
    }));
    let shim = bundle.spawn(&[]);
    wait_for_line(&bundle.marker("up"), Some("up"));
    wait_for_line(&bundle.marker("poststart"), Some("done"));
    let stderr = bundle.dir.path().join("shim.stderr");
    support::wait_until("PostStart is reported", || {
        std::fs::read_to_string(&stderr)
            .unwrap_or_default()
            .contains("phase=\"postStart\"")
    });
    let shim_pid = shim.child.id() as i32;
    support::wait_until("the shim's children are reaped", || {
        support::zombie_children(shim_pid).is_empty()
    });
    shim.signal(Signal::SIGTERM);
    shim.wait().assert_code(0);
    bundle.assert_clean();
}

#[test]
fn a_missing_runtime_is_a_clear_error_and_nothing_is_left() {
    if !prerequisites() {
        return;
    }
    let bundle = TestBundle::new("echo main >> /markers/order");
    for spec in [
        json!({}),
        json!({"initContainers": [{"name": "a", "command": ["true"]}]}),
    ] {
        let mut bundle_with_spec = TestBundle::new("echo main >> /markers/order");
        bundle_with_spec.annotate("lifecycle-shim/spec", &spec.to_string());
        let done = bundle_with_spec
            .spawn(&["--runtime", "/nonexistent/runc"])
            .wait();
        done.assert_code(125);
        done.assert_stderr_has(
            "cannot run the OCI runtime \"/nonexistent/runc\": No such file or directory",
        );
        assert!(bundle_with_spec.lines("order").is_empty());
        bundle_with_spec.assert_clean();
    }
    bundle.assert_clean();
}

#[test]
fn a_second_stop_request_does_not_restart_prestop() {
    if !prerequisites() {
        return;
    }
    let bundle = TestBundle::new(WAIT_FOR_TERM)
        .with_spec(json!({"preStop": {"exec": {"command": ["sh", "-c",
        "echo prestop >> /markers/order; while [ ! -f /markers/go ]; do sleep 0.05; done"]}}}));
    let shim = bundle.spawn(&[]);
    wait_for_line(&bundle.marker("up"), Some("up"));
    shim.signal(Signal::SIGTERM);
    wait_for_line(&bundle.marker("order"), Some("prestop"));
    shim.signal(Signal::SIGINT);
    shim.signal(Signal::SIGTERM);
    // Let PreStop finish only after the shim has seen both repeats.
    let stderr = bundle.dir.path().join("shim.stderr");
    support::wait_until("the shim logs ignoring both repeats", || {
        std::fs::read_to_string(&stderr)
            .unwrap_or_default()
            .matches("already stopping; signal ignored")
            .count()
            == 2
    });
    std::fs::write(bundle.marker("go"), "").unwrap();
    let done = shim.wait();
    done.assert_code(0);
    assert_eq!(bundle.lines("order"), ["prestop", "term"]);
    bundle.assert_clean();
}

#[test]
fn prestop_never_runs_when_the_entrypoint_exits_by_itself_and_poststart_is_cancelled() {
    if !prerequisites() {
        return;
    }
    // PostStart is still running (it never ends by itself) when the entrypoint exits.
    let bundle = TestBundle::new("while [ ! -f /markers/poststart ]; do sleep 0.05; done; exit 7").with_spec(json!({
        "postStart": {"exec": {"command": ["sh", "-c", "echo started > /markers/poststart; sleep 600"]}},
        "preStop": {"exec": {"command": ["sh", "-c", "echo prestop >> /markers/order"]}}
    }));
    let done = bundle.run();
    done.assert_code(7);
    assert!(
        bundle.lines("order").is_empty(),
        "PreStop ran: {:?}",
        bundle.lines("order")
    );
    assert!(!done.stderr.contains("preStop"), "{}", done.stderr);
    bundle.assert_clean();
}

#[test]
fn init_containers_run_in_order_with_their_own_env_and_working_dir() {
    if !prerequisites() {
        return;
    }
    let bundle = TestBundle::new("echo main >> /markers/order").with_spec(json!({"initContainers": [
        {"name": "first", "command": ["sh", "-c", "echo first >> /markers/order"]},
        {"name": "second", "command": ["sh", "-c"], "args": ["echo \"second $GREETING $(pwd) $LIFECYCLE_PHASE\" >> /markers/order"],
         "env": [{"name": "GREETING", "value": "hello"}], "workingDir": "/tmp"}
    ]}));
    let done = bundle.run();
    done.assert_code(0);
    assert_eq!(
        bundle.lines("order"),
        ["first", "second hello /tmp init", "main"]
    );
    bundle.assert_clean();
}

#[test]
fn a_failing_init_container_keeps_the_entrypoint_from_starting() {
    if !prerequisites() {
        return;
    }
    let bundle =
        TestBundle::new("echo main >> /markers/order").with_spec(json!({"initContainers": [
            {"name": "ok", "command": ["sh", "-c", "echo ok >> /markers/order"]},
            {"name": "migrate", "command": ["sh", "-c", "echo schema is locked; exit 3"]},
            {"name": "never", "command": ["sh", "-c", "echo never >> /markers/order"]}
        ]}));
    let done = bundle.run();
    done.assert_code(3);
    assert_eq!(bundle.lines("order"), ["ok"]);
    done.assert_stderr_has("init container init exec \"migrate\" failed: exited with exit code 3");
    done.assert_stderr_has("schema is locked");
    done.assert_stderr_has("the entrypoint was not started");
    bundle.assert_clean();
}

#[test]
fn a_hung_init_container_is_killed_at_its_timeout() {
    if !prerequisites() {
        return;
    }
    let bundle = TestBundle::new("echo main >> /markers/order").with_spec(json!({"initContainers": [
        {"name": "hang", "command": ["sh", "-c", "echo hanging > /markers/hang; sleep 600"], "timeoutSeconds": 1}
    ]}));
    let done = bundle.run();
    done.assert_stderr_has("\"hang\" failed: timed out after 1.");
    assert_ne!(done.code(), 0);
    assert_eq!(bundle.lines("hang"), ["hanging"]);
    assert!(bundle.lines("order").is_empty());
    bundle.assert_clean();
}

#[test]
fn sigterm_during_init_containers_stops_without_starting_the_entrypoint() {
    if !prerequisites() {
        return;
    }
    let bundle =
        TestBundle::new("echo main >> /markers/order").with_spec(json!({"initContainers": [
            {"name": "slow", "command": ["sh", "-c", "echo up > /markers/up; sleep 600"]}
        ]}));
    let shim = bundle.spawn(&[]);
    wait_for_line(&bundle.marker("up"), Some("up"));
    shim.signal(Signal::SIGTERM);
    let done = shim.wait();
    done.assert_code(128 + 15);
    assert!(bundle.lines("order").is_empty());
    bundle.assert_clean();
}

#[test]
fn the_container_exit_status_is_passed_through_without_hooks() {
    if !prerequisites() {
        return;
    }
    let bundle = TestBundle::new("echo to stdout; echo to stderr >&2; exit 42");
    let done = bundle.run();
    done.assert_code(42);
    assert_eq!(done.stdout, "to stdout\n");
    done.assert_stderr_has("to stderr");
    bundle.assert_clean();
}

/// The bundle reaches runc as it is: an OCI hook in config.json (how Docker and nerdctl set
/// up networking) runs beside the lifecycle hooks.
#[test]
fn oci_hooks_in_config_json_still_run() {
    if !prerequisites() {
        return;
    }
    let mut bundle = TestBundle::new("echo main >> /markers/order")
        .with_spec(json!({"initContainers": [{"name": "init", "command": ["sh", "-c", "echo init >> /markers/order"]}]}));
    let record = format!("echo oci-hook >> {}", bundle.marker("oci").display());
    bundle.config["hooks"] =
        json!({"createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", record]}]});
    bundle.save();
    let done = bundle.run();
    done.assert_code(0);
    assert_eq!(bundle.lines("oci"), ["oci-hook"]);
    assert_eq!(bundle.lines("order"), ["init", "main"]);
    bundle.assert_clean();
}

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

#[test]
fn spec_file_overrides_the_annotation() {
    if !prerequisites() {
        return;
    }
    let bundle = TestBundle::new("echo main >> /markers/order")
        .with_spec(json!({"initContainers": [{"name": "annotation", "command": ["sh", "-c", "echo annotation >> /markers/order"]}]}));
    let file = bundle.dir.path().join("spec.json");
    let spec = json!({"initContainers": [{"name": "file", "command": ["sh", "-c", "echo file >> /markers/order"]}]});
    std::fs::write(&file, spec.to_string()).unwrap();
    let done = bundle.spawn(&["--spec", file.to_str().unwrap()]).wait();
    done.assert_code(0);
    assert_eq!(bundle.lines("order"), ["file", "main"]);
    bundle.assert_clean();
}

#[test]
fn bad_input_is_refused_with_the_field_named_and_nothing_created() {
    if !prerequisites() {
        return;
    }
    let specs = [
        ("{", "EOF while parsing"),
        (
            r#"{"preStop": {"exec": {"command": "echo"}}}"#,
            "preStop.exec.command: invalid type: string",
        ),
        (
            r#"{"postStart": {"exec": {"command": ["x"]}, "onFailure": 3}}"#,
            "postStart.onFailure: unknown field `onFailure`",
        ),
        (
            r#"{"postStart": {"exec": {"command": ["x"]}, "httpGet": {"port": 80}}}"#,
            "postStart: must set exactly one of exec, httpGet, sleep (found exec, httpGet)",
        ),
        (
            r#"{"preStop": {"httpGet": {"port": 0}}}"#,
            "preStop.httpGet.port: must be 1..65535",
        ),
        (
            r#"{"preStop": {"tcpSocket": {"port": 80}}}"#,
            "preStop.tcpSocket: is not supported",
        ),
        (
            r#"{"terminationGracePeriodSeconds": -1}"#,
            "terminationGracePeriodSeconds: must be 0..",
        ),
    ];
    for (spec, expected) in specs {
        let mut bundle = TestBundle::new("echo main >> /markers/order");
        bundle.annotate("lifecycle-shim/spec", spec);
        assert_refused(
            &bundle,
            &[],
            "annotation lifecycle-shim/spec: invalid lifecycle spec",
        );
        assert_refused(&bundle, &[], expected);
    }

    // A bundle that is not there, and a config.json that is not JSON.
    let bundle = TestBundle::new("true");
    let missing = bundle.dir.path().join("nowhere");
    std::fs::write(bundle.path().join("config.json"), "{ not json").unwrap();
    for (path, expected) in [
        (missing, "nowhere\": No such file or directory"),
        (bundle.path(), "config.json\": key must be a string"),
    ] {
        let out = std::process::Command::new(SHIM)
            .args(["run", "--root"])
            .arg(bundle.runc_root())
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains(expected),
            "expected {expected:?} in {stderr}"
        );
    }
    bundle.assert_clean();
}

/// Both `run` and `check` refuse the bundle with exit status 2 and `expected` in their error;
/// the entrypoint never ran and nothing is left.
fn assert_refused(bundle: &TestBundle, extra: &[&std::ffi::OsStr], expected: &str) {
    for command in ["run", "check"] {
        let mut shim = std::process::Command::new(SHIM);
        shim.arg(command);
        if command == "run" {
            shim.arg("--root").arg(bundle.runc_root());
            shim.args(["--id", &bundle.id]);
        }
        let out = shim.args(extra).arg(bundle.path()).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{command}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{command}: expected {expected:?} in {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    assert!(bundle.lines("order").is_empty());
    bundle.assert_clean();
}

/// Issue 7: an oversized annotation or `--spec` file, a NUL in a command, numbers no field can
/// hold and a file that is not UTF-8 are refused by name before anything is created.
#[test]
fn hostile_input_is_refused_with_exit_2_and_nothing_created() {
    if !prerequisites() {
        return;
    }
    let mut bundle = TestBundle::new("echo main >> /markers/order");
    let oversized = format!(r#"{{"stopSignal": "TERM"{}}}"#, " ".repeat(64 * 1024));
    bundle.annotate("lifecycle-shim/spec", &oversized);
    assert_refused(
        &bundle,
        &[],
        "annotation lifecycle-shim/spec is larger than the 65536-byte (64 KiB) limit",
    );

    let cases = [
        (
            r#"{"postStart": {"exec": {"command": ["sh", "-c", "echo hi\u0000; touch /markers/ran"]}}}"#,
            "postStart.exec.command[2]: must not contain a NUL byte",
        ),
        (
            r#"{"preStop": {"exec": {"command": ["x"]}, "timeoutSeconds": 1e300}}"#,
            "preStop.timeoutSeconds: invalid type: floating point `1e+300`",
        ),
        (
            r#"{"terminationGracePeriodSeconds": 18446744073709551616}"#,
            "terminationGracePeriodSeconds: invalid type: floating point",
        ),
        (
            r#"{"preStop": {"sleep": {"seconds": -5}}}"#,
            "preStop.sleep.seconds: must be 0..31536000 seconds",
        ),
    ];
    for (spec, expected) in cases {
        bundle.annotate("lifecycle-shim/spec", spec);
        assert_refused(&bundle, &[], expected);
    }

    // `--spec FILE`: not UTF-8; endless (read only to the limit).
    let file = bundle.dir.path().join("spec.json");
    std::fs::write(&file, b"{\"stopSignal\": \"\xff\"}").unwrap();
    let flag = std::ffi::OsStr::new("--spec");
    assert_refused(
        &bundle,
        &[flag, file.as_os_str()],
        "is not UTF-8 text (invalid byte at offset 16)",
    );
    assert_refused(
        &bundle,
        &[flag, std::ffi::OsStr::new("/dev/zero")],
        "spec file \"/dev/zero\" is larger than the 65536-byte (64 KiB) limit",
    );
}

#[test]
fn check_prints_the_resolved_plan() {
    if !prerequisites() {
        return;
    }
    let bundle = TestBundle::new("true").with_spec(json!({
        "postStart": {"exec": {"command": ["touch", "/ready"]}},
        "initContainers": [{"name": "migrate", "command": ["/migrate"], "timeoutSeconds": 60}]
    }));
    let out = std::process::Command::new(SHIM)
        .arg("check")
        .arg(bundle.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("source: annotation lifecycle-shim/spec\nstop signal: SIGTERM\ntermination grace period: 30.0s\n"), "{stdout}");
    assert!(
        stdout.contains("  1. migrate: [\"/migrate\"], timeout 60.0s\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("postStart: exec [\"touch\", \"/ready\"], no timeout\n"),
        "{stdout}"
    );
    assert!(stdout.contains("preStop: none\n"), "{stdout}");
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
