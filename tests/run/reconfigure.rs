//! Reconfigure hooks under `run`: a bind-mounted directory laid out and updated as the
//! kubelet's atomic writer does, in-place writes, unwatched files, signal and httpGet
//! handlers, and watch paths refused before anything runs; and a signal handler in preStop.
//!
//! That a change did *not* run the handler is seen with [`wait_out_debounce`].

use std::fs;
use std::os::unix::fs::symlink;

use nix::sys::signal::Signal;
use serde_json::json;

use crate::configmap::{wait_out_debounce, ConfigMapDir};
use crate::support::{self, prerequisites, wait_for_line, wait_until, TestBundle};
use crate::{cgi, http_server_init, WAIT_FOR_TERM};

/// Appends the watched file's content to /markers/runs: one line per run.
const RECORD_RUN: &str = "cat /etc/config/app.conf >> /markers/runs; echo >> /markers/runs";

/// A bundle running `script` with `volume` bind-mounted read-only (as the kubelet mounts a
/// ConfigMap) at `at`.
fn mounted(script: &str, volume: &std::path::Path, at: &str) -> TestBundle {
    let mut bundle = TestBundle::new(script);
    bundle.config["mounts"].as_array_mut().unwrap().push(json!({
        "destination": at, "type": "bind", "source": volume, "options": ["rbind", "ro"]
    }));
    bundle.save();
    bundle
}

/// [`WAIT_FOR_TERM`] with `volume` at /etc/config and `reconfigure` as its spec's entry.
fn bundle_with(volume: &std::path::Path, reconfigure: serde_json::Value) -> TestBundle {
    mounted(WAIT_FOR_TERM, volume, "/etc/config").with_spec(json!({"reconfigure": reconfigure}))
}

/// Starts the shim and waits until its container is up and the watch began.
fn start_watching(bundle: &TestBundle) -> support::Shim {
    let shim = bundle.spawn(&[]);
    wait_for_line(&bundle.marker("up"), Some("up"));
    wait_until("the shim watches for changes", || {
        shim.stderr().contains("watching for configuration changes")
    });
    shim
}

/// Stops the container (SIGTERM to the shim) and checks that nothing is left.
fn stop(bundle: &TestBundle, shim: support::Shim) {
    shim.signal(Signal::SIGTERM);
    shim.wait().assert_code(0);
    bundle.assert_clean();
}

#[test]
fn an_atomic_update_runs_the_handler_exactly_once_with_the_new_content() {
    if !prerequisites() {
        return;
    }
    let mut volume = ConfigMapDir::new(&[("app.conf", "v1"), ("other.conf", "x")]);
    let bundle = bundle_with(
        volume.path(),
        json!({"paths": ["/etc/config/app.conf"], "exec": {"command": ["sh", "-c", RECORD_RUN]},
               "debounceSeconds": 1}),
    );
    let shim = start_watching(&bundle);
    volume.update(&[("app.conf", "v2"), ("other.conf", "x")]);
    wait_for_line(&bundle.marker("runs"), Some("v2"));
    wait_out_debounce(1);
    volume.update(&[("app.conf", "v3"), ("other.conf", "x")]);
    wait_for_line(&bundle.marker("runs"), Some("v3"));
    assert_eq!(bundle.lines("runs"), ["v2", "v3"]);
    let stderr = shim.stderr();
    assert!(
        stderr.contains("phase=\"reconfigure\" changed=\"/etc/config/..data\""),
        "{stderr}"
    );
    stop(&bundle, shim);
}

#[test]
fn five_updates_within_the_debounce_period_run_the_handler_once() {
    if !prerequisites() {
        return;
    }
    let mut volume = ConfigMapDir::new(&[("app.conf", "v1")]);
    let bundle = bundle_with(
        volume.path(),
        json!({"paths": ["/etc/config"], "exec": {"command": ["sh", "-c", RECORD_RUN]},
               "debounceSeconds": 2}),
    );
    let shim = start_watching(&bundle);
    for version in 2..=6 {
        volume.update(&[("app.conf", &format!("v{version}"))]);
    }
    wait_for_line(&bundle.marker("runs"), Some("v6"));
    wait_out_debounce(2);
    volume.update(&[("app.conf", "v7")]);
    wait_for_line(&bundle.marker("runs"), Some("v7"));
    assert_eq!(bundle.lines("runs"), ["v6", "v7"]);
    stop(&bundle, shim);
}

#[test]
fn an_in_place_write_runs_the_handler_and_touching_an_unwatched_file_does_not() {
    if !prerequisites() {
        return;
    }
    let volume = tempfile::Builder::new()
        .prefix("lcs-config-")
        .tempdir()
        .unwrap();
    let file = volume.path().join("app.conf");
    fs::write(&file, "v1").unwrap();
    fs::write(volume.path().join("other.conf"), "x").unwrap();
    let bundle = bundle_with(
        volume.path(),
        json!({"paths": ["/etc/config/app.conf"], "exec": {"command": ["sh", "-c", RECORD_RUN]},
               "debounceSeconds": 1}),
    );
    let shim = start_watching(&bundle);
    // Unwatched: another file touched, a new one written.
    fs::OpenOptions::new()
        .append(true)
        .open(volume.path().join("other.conf"))
        .unwrap();
    fs::write(volume.path().join("new.conf"), "y").unwrap();
    wait_out_debounce(1);
    // In place: the same inode, written and closed.
    let inode =
        |path: &std::path::Path| std::os::unix::fs::MetadataExt::ino(&fs::metadata(path).unwrap());
    let before = inode(&file);
    fs::write(&file, "v2").unwrap();
    assert_eq!(inode(&file), before, "written in place");
    wait_for_line(&bundle.marker("runs"), Some("v2"));
    assert_eq!(bundle.lines("runs"), ["v2"]);
    stop(&bundle, shim);
}

#[test]
fn a_signal_handler_s_sighup_reaches_the_entrypoint_s_trap() {
    if !prerequisites() {
        return;
    }
    let mut volume = ConfigMapDir::new(&[("nginx.conf", "v1")]);
    let bundle = mounted(
        "trap 'echo hup >> /markers/hups' HUP; trap 'exit 0' TERM; echo up > /markers/up; while :; do sleep 1000 & wait $!; done",
        volume.path(),
        "/etc/nginx",
    );
    let bundle = bundle.with_spec(json!({"reconfigure": {
        "paths": ["/etc/nginx"], "signal": {"name": "SIGHUP"}}}));
    let shim = start_watching(&bundle);
    assert!(bundle.lines("hups").is_empty());
    volume.update(&[("nginx.conf", "v2")]);
    wait_for_line(&bundle.marker("hups"), Some("hup"));
    assert_eq!(bundle.lines("hups"), ["hup"], "one update, one signal");
    stop(&bundle, shim);
}

#[test]
fn an_http_get_handler_is_called_from_inside_the_container() {
    if !prerequisites() {
        return;
    }
    let mut volume = ConfigMapDir::new(&[("app.conf", "v1")]);
    let bundle = mounted(WAIT_FOR_TERM, volume.path(), "/etc/config");
    cgi(&bundle, "reload", "reloaded", "200 OK");
    let bundle = bundle.with_spec(json!({"initContainers": [http_server_init()],
        "reconfigure": {"paths": ["/etc/config"], "httpGet": {"port": 8080, "path": "/cgi-bin/reload",
            "httpHeaders": [{"name": "X-Reason", "value": "config"}]}}}));
    let shim = start_watching(&bundle);
    volume.update(&[("app.conf", "v2")]);
    wait_for_line(&bundle.marker("order"), Some("reloaded config"));
    stop(&bundle, shim);
    assert_eq!(bundle.lines("order"), ["reloaded config", "term"]);
}

#[test]
fn a_prestop_signal_stage_reaches_the_entrypoint_before_the_stop_signal() {
    if !prerequisites() {
        return;
    }
    let bundle = TestBundle::new(
        "trap 'echo usr1 >> /markers/order' USR1; trap 'echo term >> /markers/order; exit 0' TERM; \
         echo up > /markers/up; while :; do sleep 1000 & wait $!; done",
    )
    .with_spec(json!({"preStop": [[{"signal": {"name": "SIGUSR1"}}],
        [{"exec": {"command": ["sh", "-c", "until grep -q usr1 /markers/order; do sleep 0.05; done"]}}]]}));
    let shim = bundle.spawn(&[]);
    wait_for_line(&bundle.marker("up"), Some("up"));
    stop(&bundle, shim);
    assert_eq!(bundle.lines("order"), ["usr1", "term"]);
}

#[test]
fn a_failed_run_is_reported_with_its_output_and_on_failure_stop_stops_the_container() {
    if !prerequisites() {
        return;
    }
    let mut volume = ConfigMapDir::new(&[("app.conf", "v1")]);
    let bundle = bundle_with(
        volume.path(),
        json!({"paths": ["/etc/config"], "onFailure": "stop", "debounceSeconds": 0,
               "exec": {"command": ["sh", "-c", "echo bad config $(cat /etc/config/app.conf); exit 3"]}}),
    );
    let shim = start_watching(&bundle);
    volume.update(&[("app.conf", "v2")]);
    // The stop sequence, as for a stop request: the entrypoint's TERM trap.
    let done = shim.wait();
    assert_eq!(bundle.lines("order"), ["term"]);
    done.assert_code(0);
    done.assert_stderr_has("[reconfigure] bad config v2");
    done.assert_stderr_has("FailedReconfigureHook: reconfigure exec (changed: /etc/config/");
    done.assert_stderr_has("failed: exited with exit code 3");
    done.assert_stderr_has("the reconfigure hook failed; stopping");
    bundle.assert_clean();
}

#[test]
fn a_watch_path_outside_any_volume_or_through_a_planted_symlink_is_refused_before_anything_runs() {
    if !prerequisites() {
        return;
    }
    let volume = tempfile::Builder::new()
        .prefix("lcs-config-")
        .tempdir()
        .unwrap();
    // Planted by the container: links out of the volume to the host's /etc.
    symlink("/etc", volume.path().join("sub")).unwrap();
    symlink("/etc/passwd", volume.path().join("passwd")).unwrap();
    let cases = [
        ("/etc/app.conf", "reconfigure.paths: /etc/app.conf: is in no bind-mounted volume of the bundle"),
        ("/etc/config/sub/passwd", "reconfigure.paths: /etc/config/sub/passwd: sub: ENOTDIR: Not a directory (symlinks are not followed)"),
        ("/etc/config/passwd", "reconfigure.paths: /etc/config/passwd: is a symlink to /etc/passwd, which leaves its directory"),
    ];
    for (path, error) in cases {
        let bundle = bundle_with(
            volume.path(),
            json!({"paths": [path], "exec": {"command": ["true"]}}),
        );
        let done = bundle.run();
        done.assert_code(2);
        done.assert_stderr_has(error);
        assert!(bundle.lines("up").is_empty(), "the entrypoint never ran");
        bundle.assert_clean();
    }
}

#[test]
fn check_prints_the_watched_paths_on_the_host() {
    if !prerequisites() {
        return;
    }
    let volume = ConfigMapDir::new(&[("app.conf", "v1")]);
    let bundle = bundle_with(
        volume.path(),
        json!({"paths": ["/etc/config", "/etc/config/app.conf"],
               "exec": {"command": ["nginx", "-s", "reload"]}, "timeoutSeconds": 10}),
    );
    let out = std::process::Command::new(support::SHIM)
        .arg("check")
        .arg(bundle.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let host = volume.path().display();
    let expected = format!(
        "reconfigure: after 1.0s without changes to /etc/config, /etc/config/app.conf, once at a time; a failure is reported
  then exec [\"nginx\", \"-s\", \"reload\"], timeout 10.0s
  watching /etc/config: the directory {host}
  watching /etc/config/app.conf: app.conf in {host} (and a kubelet's ..data swap)
"
    );
    assert!(text.ends_with(&expected), "{text}");
}
