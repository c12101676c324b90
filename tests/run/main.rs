//! `lifecycle-shim run` against real runc and busybox bundles: hooks, init containers, the stop
//! sequence, bad input, and that nothing is left behind.

#[path = "../support/configmap.rs"]
mod configmap;
#[path = "../support/mod.rs"]
mod support;

mod beyond;
mod hardening;
mod input;
mod reconfigure;

use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::json;
use support::{container_pid, https_server, prerequisites, wait_for_line, TestBundle};

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
    // Logged as finished, as cut short, or as cancelled when the entrypoint's exit beat the
    // hook's own (the supervisor then drops it).
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
    // before the 2 s that follow. The upper bound is the grace + 2 s, plus slack for a
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
    // The PostStart dropped at the exit still has its event.
    done.assert_stderr_has("phase=\"postStart\" handler=\"exec\"");
    done.assert_stderr_has("outcome=\"cancelled\"");
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
