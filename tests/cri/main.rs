//! Kubernetes' lifecycle-hook scenarios (test/e2e/common/node/lifecycle_hook.go) through
//! containerd's CRI plugin, with no kubelet: this client makes the kubelet's calls, and the
//! hooks come from the pod annotation `lifecycle-shim/spec.<container>`. Each scenario also
//! runs under the stock `runc` handler, where a hook's effect must be absent: the assertions
//! can fail.

#[path = "../support/configmap.rs"]
mod configmap;
#[path = "../support/containerd.rs"]
mod containerd;
#[path = "../support/cri.rs"]
mod cri;
#[path = "../support/image.rs"]
mod image;
#[path = "../support/recorder.rs"]
mod recorder;
#[path = "../support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::path::PathBuf;

use containerd::{containerd_prerequisites, Containerd};
use cri::{Cri, Pod};
use k8s_cri::v1::NamespaceMode;
use serde_json::json;
use support::sidecars::{AWAIT_LOGGER, LOGGER_SIDECAR};
use support::{make_busybox_rootfs, prerequisites, read_lines, wait_until, write_executable};

mod grouping;
mod reconfigure;
mod restarts;
mod runcv2;
mod termination;

const BUSYBOX: &str = "docker.io/library/lcs-busybox:test";
const PAUSE: &str = "docker.io/library/lcs-pause:test";
const LIFECYCLE: &str = "lifecycle";
const RUNC: &str = "runc";

/// A private containerd with the CRI plugin, its images, a client, and a host directory every
/// container mounts at `/markers`.
struct Env {
    containerd: Containerd,
    cri: Cri,
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Option<Env> {
        Env::with_runtimes(|_| String::new())
    }

    /// With more runtime handlers: `runtimes` gives their TOML, given the test's directory.
    fn with_runtimes(runtimes: impl FnOnce(&std::path::Path) -> String) -> Option<Env> {
        if !(prerequisites() && containerd_prerequisites()) {
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("lcs-cri-")
            .tempdir()
            .unwrap();
        let rootfs = dir.path().join("rootfs");
        make_busybox_rootfs(&rootfs);
        // The sandbox's process: sleeps, reaps, and ends on SIGTERM.
        write_executable(
            &rootfs,
            "/pause",
            "#!/bin/sh\ntrap 'exit 0' TERM INT\nwhile :; do sleep 3600 & wait $!; done\n",
        );
        std::fs::create_dir(dir.path().join("markers")).unwrap();
        let containerd = Containerd::start_cri_with(PAUSE, &runtimes(dir.path()));
        image::import(&containerd, BUSYBOX, &rootfs, &["sh"]);
        image::import(&containerd, PAUSE, &rootfs, &["/pause"]);
        let cri = Cri::connect(&containerd.cri_socket());
        Some(Env {
            containerd,
            cri,
            dir,
        })
    }

    fn markers(&self) -> PathBuf {
        self.dir.path().join("markers")
    }

    fn lines(&self, name: &str) -> Vec<String> {
        read_lines(&self.markers().join(name))
    }

    fn reset_markers(&self) {
        std::fs::remove_dir_all(self.markers()).unwrap();
        std::fs::create_dir(self.markers()).unwrap();
    }

    /// A pod under `handler` whose annotations hold each container's spec.
    fn pod(&self, name: &str, handler: &str, specs: &[(&str, serde_json::Value)]) -> Pod {
        let log_directory = self.dir.path().join("logs").join(name);
        std::fs::create_dir_all(&log_directory).unwrap();
        Pod {
            name: name.into(),
            handler: handler.into(),
            annotations: specs
                .iter()
                .map(|(key, spec)| (key.to_string(), spec.to_string()))
                .collect::<HashMap<_, _>>(),
            log_directory,
            pid: NamespaceMode::Pod,
        }
    }

    /// Runs the pod with one container per (name, script) and returns the sandbox and
    /// container ids, once every container runs.
    fn start(&self, pod: &Pod, containers: &[(&str, &str)]) -> (String, Vec<String>) {
        let pod_id = self.cri.run_pod(pod);
        let ids: Vec<String> = containers
            .iter()
            .map(|(name, script)| self.run_container(&pod_id, pod, name, script, &[]))
            .collect();
        (pod_id, ids)
    }

    /// Creates and starts container `name` of the pod, running `script`, with `mounts`
    /// besides `/markers`; returns its id.
    fn run_container(
        &self,
        pod_id: &str,
        pod: &Pod,
        name: &str,
        script: &str,
        mounts: &[(&str, &std::path::Path)],
    ) -> String {
        let markers = self.markers();
        let mut all = vec![("/markers", markers.as_path())];
        all.extend_from_slice(mounts);
        let id = self
            .cri
            .create_container(pod_id, pod, name, BUSYBOX, &["sh", "-c", script], &all);
        self.cri.start_container(&id);
        id
    }

    /// Tears the pod down as the kubelet does and checks nothing of it is left running.
    fn remove(&self, pod_id: &str, ids: &[String]) {
        let mut listed = self.cri.list_containers(pod_id);
        listed.sort();
        let mut expected = ids.to_vec();
        expected.sort();
        assert_eq!(listed, expected, "ListContainers of the pod");
        for id in ids {
            self.cri.stop_container(id, 2);
            self.cri.remove_container(id);
        }
        assert!(self.cri.list_containers(pod_id).is_empty());
        self.cri.remove_pod(pod_id);
        wait_until("the pod's shims have exited", || {
            self.containerd.shim_processes().is_empty()
        });
    }

    fn container_log(&self, pod: &Pod, name: &str) -> String {
        std::fs::read_to_string(pod.log_directory.join(format!("{name}.0.log"))).unwrap_or_default()
    }
}

fn spec_key(container: &str) -> String {
    format!("lifecycle-shim/spec.{container}")
}

/// Waits for the TERM trap's marker, which every stop scenario's container writes.
const WAIT_FOR_TERM: &str =
    "trap 'echo term >> /markers/order; exit 0' TERM; echo up >> /markers/up; while :; do sleep 1000 & wait $!; done";

/// lifecycle_hook.go: "should execute poststart exec hook properly".
fn poststart_exec_hook(env: &Env, handler: &str) -> Vec<String> {
    env.reset_markers();
    let spec = json!({"postStart": {"exec": {"command": ["sh", "-c", "echo poststart >> /markers/hook"]}}});
    let pod = env.pod(
        &format!("poststart-{handler}"),
        handler,
        &[(&spec_key("app"), spec)],
    );
    let (pod_id, ids) = env.start(
        &pod,
        &[(
            "app",
            "echo main >> /markers/main; while :; do sleep 1000 & wait $!; done",
        )],
    );
    wait_until("the container runs", || !env.lines("main").is_empty());
    if handler == LIFECYCLE {
        wait_until("the hook has run", || !env.lines("hook").is_empty());
    }
    let seen = env.lines("hook");
    env.remove(&pod_id, &ids);
    seen
}

#[test]
fn should_execute_poststart_exec_hook_properly() {
    let Some(env) = Env::new() else { return };
    assert_eq!(poststart_exec_hook(&env, LIFECYCLE), ["poststart"]);
    // Under runc the container ran (it wrote its own marker) but no hook did.
    assert!(poststart_exec_hook(&env, RUNC).is_empty());
}

/// lifecycle_hook.go: "should execute prestop exec hook properly" (StopContainer, 15 s).
fn prestop_exec_hook(env: &Env, handler: &str) -> Vec<String> {
    env.reset_markers();
    let spec =
        json!({"preStop": {"exec": {"command": ["sh", "-c", "echo prestop >> /markers/order"]}}});
    let pod = env.pod(
        &format!("prestop-{handler}"),
        handler,
        &[(&spec_key("app"), spec)],
    );
    let (pod_id, ids) = env.start(&pod, &[("app", WAIT_FOR_TERM)]);
    wait_until("the container is up", || !env.lines("up").is_empty());
    env.cri.stop_container(&ids[0], 15);
    let status = env.cri.container_status(&ids[0]);
    assert_eq!(status.exit_code, 0, "the TERM trap exits 0");
    let order = env.lines("order");
    env.remove(&pod_id, &ids);
    order
}

#[test]
fn should_execute_prestop_exec_hook_properly() {
    let Some(env) = Env::new() else { return };
    assert_eq!(prestop_exec_hook(&env, LIFECYCLE), ["prestop", "term"]);
    assert_eq!(prestop_exec_hook(&env, RUNC), ["term"]);
}

/// Two containers of one pod, each with its own `spec.<name>`, get only their own hooks; a
/// plain `lifecycle-shim/spec` would also reach the sandbox, which must never run hooks.
fn own_hooks_only(env: &Env, handler: &str) -> (Vec<String>, usize) {
    env.reset_markers();
    let hook = |name: &str| json!({"postStart": {"exec": {"command": ["sh", "-c", format!("echo {name}-hook >> /markers/hooks")]}}});
    let pod = env.pod(
        &format!("two-{handler}"),
        handler,
        &[
            (&spec_key("first"), hook("first")),
            (&spec_key("second"), hook("second")),
        ],
    );
    let idle = "while :; do sleep 1000 & wait $!; done";
    let (pod_id, ids) = env.start(&pod, &[("first", idle), ("second", idle)]);
    let events = || env.containerd.log().matches("phase=\"postStart\"").count();
    if handler == LIFECYCLE {
        wait_until("both hooks have run and been logged", || {
            env.lines("hooks").len() >= 2 && events() >= 2
        });
    }
    let events = events();
    let mut hooks = env.lines("hooks");
    hooks.sort();
    env.remove(&pod_id, &ids);
    (hooks, events)
}

#[test]
fn two_containers_get_only_their_own_hooks_and_the_sandbox_none() {
    let Some(env) = Env::new() else { return };
    let (hooks, events) = own_hooks_only(&env, LIFECYCLE);
    assert_eq!(hooks, ["first-hook", "second-hook"]);
    assert_eq!(events, 2, "exactly the two containers' PostStart hooks ran");
    let (hooks, _) = own_hooks_only(&env, RUNC);
    assert!(hooks.is_empty());
}

#[test]
fn a_failed_poststart_kills_the_container_and_says_why() {
    let Some(env) = Env::new() else { return };
    let spec = json!({
        "postStart": {"exec": {"command": ["sh", "-c", "echo cannot start; exit 3"]}},
        "terminationGracePeriodSeconds": 5
    });
    let pod = env.pod("failing", LIFECYCLE, &[(&spec_key("app"), spec)]);
    let (pod_id, ids) = env.start(&pod, &[("app", WAIT_FOR_TERM)]);
    wait_until("the container has exited", || {
        env.cri.container_status(&ids[0]).state
            == k8s_cri::v1::ContainerState::ContainerExited as i32
    });
    let status = env.cri.container_status(&ids[0]);
    // Its TERM trap exits 0; a failed PostStart never looks like success.
    assert_eq!(status.exit_code, 1);
    let log = env.container_log(&pod, "app");
    assert!(log.contains("FailedPostStartHook"), "container log: {log}");
    assert!(log.contains("cannot start"), "container log: {log}");
    env.remove(&pod_id, &ids);
}

/// The harness's own check, under both handlers: exec and a container's output work.
#[test]
fn exec_sync_works_under_both_handlers() {
    let Some(env) = Env::new() else { return };
    for handler in [LIFECYCLE, RUNC] {
        env.reset_markers();
        let pod = env.pod(&format!("exec-{handler}"), handler, &[]);
        let (pod_id, ids) = env.start(&pod, &[("app", WAIT_FOR_TERM)]);
        wait_until("the container is up", || !env.lines("up").is_empty());
        let (stdout, _, code) = env
            .cri
            .exec_sync(&ids[0], &["sh", "-c", "echo hello; exit 4"]);
        assert_eq!((stdout.as_str(), code), ("hello\n", 4), "{handler}");
        env.remove(&pod_id, &ids);
    }
}

/// An init container that leaves busybox httpd on 127.0.0.1:`port` (the node's loopback: pods
/// here use the host network), with CGI scripts `start` and `drain` that append their name to
/// /markers/order.
fn http_server(env: &Env, port: u16) -> serde_json::Value {
    for name in ["start", "drain"] {
        write_executable(
            &env.markers(),
            &format!("www/cgi-bin/{name}"),
            &format!("#!/bin/sh\necho {name} >> /markers/order\nprintf 'HTTP/1.0 200 OK\\r\\n\\r\\nok\\n'\n"),
        );
    }
    json!({"name": "server", "command": ["httpd", "-p", format!("127.0.0.1:{port}"), "-h", "/markers/www"]})
}

/// lifecycle_hook.go: "should execute poststart http hook properly" and "should execute
/// prestop http hook properly", over HTTP, or over HTTPS with a self-signed certificate. Over
/// HTTP, busybox httpd (started by an init container) serves both hooks; over HTTPS the test
/// serves each request itself, one at a time, so that variant only runs where hooks do.
fn http_hooks(env: &Env, handler: &str, https: bool) -> Vec<String> {
    env.reset_markers();
    let port = support::free_port();
    let order = env.markers().join("order");
    let (scheme, inits) = if https {
        ("HTTPS", vec![])
    } else {
        ("HTTP", vec![http_server(env, port)])
    };
    let spec = json!({
        "initContainers": inits,
        "postStart": {"httpGet": {"port": port, "path": "/cgi-bin/start", "scheme": scheme}},
        "preStop": {"httpGet": {"port": port, "path": "/cgi-bin/drain", "scheme": scheme}}
    });
    let pod = env.pod(
        &format!("http-{handler}-{scheme}"),
        handler,
        &[(&spec_key("app"), spec)],
    );
    let poststart = https.then(|| support::https_server(None, port, "start", order.clone()));
    let (pod_id, ids) = env.start(&pod, &[("app", WAIT_FOR_TERM)]);
    wait_until("the container is up", || !env.lines("up").is_empty());
    if let Some(server) = poststart {
        server.join().unwrap();
    }
    if handler == LIFECYCLE {
        wait_until("PostStart has run", || env.lines("order") == ["start"]);
    }
    let prestop = https.then(|| support::https_server(None, port, "drain", order.clone()));
    env.cri.stop_container(&ids[0], 15);
    if let Some(server) = prestop {
        server.join().unwrap();
    }
    let order = env.lines("order");
    env.remove(&pod_id, &ids);
    order
}

#[test]
fn should_execute_poststart_and_prestop_http_hooks_properly() {
    let Some(env) = Env::new() else { return };
    assert_eq!(
        http_hooks(&env, LIFECYCLE, false),
        ["start", "drain", "term"]
    );
    assert_eq!(http_hooks(&env, RUNC, false), ["term"]);
}

#[test]
fn should_execute_poststart_and_prestop_https_hooks_properly() {
    let Some(env) = Env::new() else { return };
    assert_eq!(
        http_hooks(&env, LIFECYCLE, true),
        ["start", "drain", "term"]
    );
}

/// Stops a container whose PreStop sleeps `sleep` seconds, with a grace period of `grace`
/// seconds in its spec and StopContainer's `timeout`, and returns how long StopContainer took,
/// the container's exit code and whether its TERM trap ran.
fn stop_with_sleep(
    env: &Env,
    handler: &str,
    sleep: i64,
    grace: i64,
    timeout: i64,
) -> (std::time::Duration, i32, Vec<String>) {
    env.reset_markers();
    let spec =
        json!({"preStop": {"sleep": {"seconds": sleep}}, "terminationGracePeriodSeconds": grace});
    let pod = env.pod(
        &format!("sleep-{handler}-{sleep}-{grace}-{timeout}"),
        handler,
        &[(&spec_key("app"), spec)],
    );
    let (pod_id, ids) = env.start(&pod, &[("app", WAIT_FOR_TERM)]);
    wait_until("the container is up", || !env.lines("up").is_empty());
    let asked = std::time::Instant::now();
    env.cri.stop_container(&ids[0], timeout);
    let took = asked.elapsed();
    let code = env.cri.container_status(&ids[0]).exit_code;
    let order = env.lines("order");
    env.remove(&pod_id, &ids);
    (took, code, order)
}

/// lifecycle_hook.go: "should run prestop basic with the sleep action": the stop waits for the
/// sleep, then the stop signal. Only lower bounds are timed, so a slow machine cannot fail it;
/// the upper bound is the grace period, with room to spare.
#[test]
fn prestop_sleep_delays_the_stop_within_the_grace_period() {
    let Some(env) = Env::new() else { return };
    let (took, code, order) = stop_with_sleep(&env, LIFECYCLE, 3, 20, 20);
    assert!(
        took >= std::time::Duration::from_millis(2900),
        "StopContainer took {took:?}"
    );
    assert!(
        took < std::time::Duration::from_secs(20),
        "StopContainer took {took:?}"
    );
    assert_eq!((code, order), (0, vec!["term".to_owned()]));
    // Under runc there is no sleep: the TERM trap ends the container at once.
    let (took, code, order) = stop_with_sleep(&env, RUNC, 3, 20, 20);
    assert!(
        took < std::time::Duration::from_secs(3),
        "StopContainer took {took:?} under runc"
    );
    assert_eq!((code, order), (0, vec!["term".to_owned()]));
}

/// lifecycle_hook.go: "should respect termination grace period seconds": a StopContainer
/// timeout shorter than the sleep (and than the spec's grace period) ends it with containerd's
/// SIGKILL at the timeout; the stop signal never comes.
#[test]
fn a_stop_timeout_shorter_than_the_sleep_cuts_it() {
    let Some(env) = Env::new() else { return };
    let (took, code, order) = stop_with_sleep(&env, LIFECYCLE, 600, 600, 2);
    assert!(
        took >= std::time::Duration::from_millis(1900),
        "StopContainer took {took:?}"
    );
    assert!(
        took < std::time::Duration::from_secs(60),
        "StopContainer took {took:?}"
    );
    assert_eq!(code, 137);
    assert!(order.is_empty(), "the TERM trap ran: {order:?}");
}

/// lifecycle_hook.go: "should run prestop basic with the sleep action" with zero seconds: it
/// returns at once, long before the 30 s timeout.
#[test]
fn prestop_sleep_zero_returns_at_once() {
    let Some(env) = Env::new() else { return };
    let (took, code, order) = stop_with_sleep(&env, LIFECYCLE, 0, 30, 30);
    assert!(
        took < std::time::Duration::from_secs(15),
        "StopContainer took {took:?}"
    );
    assert_eq!((code, order), (0, vec!["term".to_owned()]));
}

#[test]
fn prestop_does_not_run_when_the_container_exits_by_itself() {
    let Some(env) = Env::new() else { return };
    let spec =
        json!({"preStop": {"exec": {"command": ["sh", "-c", "echo prestop >> /markers/order"]}}});
    let pod = env.pod("exits", LIFECYCLE, &[(&spec_key("app"), spec)]);
    let (pod_id, ids) = env.start(&pod, &[("app", "echo main >> /markers/main; exit 5")]);
    wait_until("the container has exited", || {
        env.cri.container_status(&ids[0]).state
            == k8s_cri::v1::ContainerState::ContainerExited as i32
    });
    assert_eq!(env.cri.container_status(&ids[0]).exit_code, 5);
    assert_eq!(env.lines("main"), ["main"]);
    assert!(
        env.lines("order").is_empty(),
        "PreStop ran: {:?}",
        env.lines("order")
    );
    env.remove(&pod_id, &ids);
}

/// init_container.go: "should invoke init containers on a RestartNever pod" and "should not
/// start app containers if init containers fail on a RestartAlways pod".
fn init_containers(env: &Env, handler: &str, fail: bool) -> (i32, Vec<String>) {
    env.reset_markers();
    let second = if fail {
        "echo two >> /markers/order; exit 3"
    } else {
        "echo two >> /markers/order"
    };
    let spec = json!({"initContainers": [
        {"name": "one", "command": ["sh", "-c", "echo one >> /markers/order"]},
        {"name": "two", "command": ["sh", "-c", second]}
    ]});
    let pod = env.pod(
        &format!("init-{handler}-{fail}"),
        handler,
        &[(&spec_key("app"), spec)],
    );
    let (pod_id, ids) = env.start(&pod, &[("app", "echo app >> /markers/order")]);
    wait_until("the container has exited", || {
        env.cri.container_status(&ids[0]).state
            == k8s_cri::v1::ContainerState::ContainerExited as i32
    });
    let code = env.cri.container_status(&ids[0]).exit_code;
    let order = env.lines("order");
    env.remove(&pod_id, &ids);
    (code, order)
}

#[test]
fn init_containers_run_in_order_before_the_app() {
    let Some(env) = Env::new() else { return };
    assert_eq!(
        init_containers(&env, LIFECYCLE, false),
        (0, vec!["one".into(), "two".into(), "app".into()])
    );
    assert_eq!(init_containers(&env, RUNC, false), (0, vec!["app".into()]));
}

#[test]
fn a_failing_init_container_keeps_the_app_from_running() {
    let Some(env) = Env::new() else { return };
    assert_eq!(
        init_containers(&env, LIFECYCLE, true),
        (3, vec!["one".into(), "two".into()])
    );
    assert_eq!(init_containers(&env, RUNC, true), (0, vec!["app".into()]));
}

/// A sidecar under the CRI plugin (its cgroup path derived from the kubelet-style one): when
/// the app exits by itself, the sidecar is stopped before the container's exit is published.
#[test]
fn a_sidecar_is_stopped_before_the_app_container_is_reported_exited() {
    let Some(env) = Env::new() else { return };
    let spec = json!({"initContainers": [
        {"name": "logger", "command": ["sh", "-c", LOGGER_SIDECAR], "restartPolicy": "Always"}
    ]});
    let pod = env.pod("sidecar", LIFECYCLE, &[(&spec_key("app"), spec)]);
    let app = format!("{AWAIT_LOGGER}; echo app >> /markers/order; exit 4");
    let (pod_id, ids) = env.start(&pod, &[("app", &app)]);
    wait_until("the container has exited", || {
        env.cri.container_status(&ids[0]).state
            == k8s_cri::v1::ContainerState::ContainerExited as i32
    });
    assert_eq!(env.cri.container_status(&ids[0]).exit_code, 4);
    assert_eq!(env.lines("order"), ["app", "logger-stop"]);
    env.remove(&pod_id, &ids);
}
