//! The hooks under each engine with `lifecycle-runc` as its runtime: PostStart and PreStop
//! (exec and httpGet), the engine's stop timeout cutting PreStop short, init containers in
//! order and a failing one, a failing PostStart stopping the container, `rm -f` leaving
//! nothing; and without a spec, the engine shows exactly what it shows with plain runc.
//!
//! The spec reaches the container as each engine allows: Podman writes `--annotation` into
//! config.json; Docker 20.10 writes no annotations, so the spec is a file bind-mounted at
//! `/etc/lifecycle-shim/spec.json`.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{json, Value};

use crate::host::{processes_mentioning, runc_path, OutputExt};
use crate::podman::Podman;
use crate::scenarios::{
    exec_in_detached, logs_after_exit, observe, run_rm, stop_with_timeout, Engine, TERM_IGNORED,
    TERM_TRAP,
};
use crate::support::{read_lines, wait_for_line, wait_until, SHIM};

/// `lifecycle-runc`: a link of that name to the binary under test.
pub fn lifecycle_runc() -> PathBuf {
    static LINK: OnceLock<PathBuf> = OnceLock::new();
    LINK.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("lcs-runtime-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let link = dir.join("lifecycle-runc");
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(SHIM, &link).unwrap();
        link
    })
    .clone()
}

/// Declares `<name>::podman` and `<name>::docker`, each running `check` on that engine with
/// `lifecycle-runc` as its runtime.
macro_rules! with_lifecycle_runc {
    ($name:ident, $check:ident) => {
        mod $name {
            #[test]
            fn podman() {
                if crate::podman_ready() {
                    let runtime = super::lifecycle_runc();
                    super::$check(&crate::podman::Podman::new(&runtime));
                }
            }

            #[test]
            fn docker() {
                if crate::docker_ready() {
                    let runtime = super::lifecycle_runc();
                    super::$check(&crate::docker::Docker::start(&runtime));
                }
            }
        }
    };
}

/// The `run` flags that give a container `spec`, as the engine allows, and a host directory
/// at `/markers`.
fn spec_flags<E: Engine>(engine: &E, spec: &Value, markers: &Path) -> Vec<String> {
    let mut flags = vec!["-v".to_owned(), format!("{}:/markers", markers.display())];
    if engine.name() == "podman" {
        // podman CSV-parses the flag: the JSON is quoted, its quotes doubled.
        let text = format!("lifecycle-shim/spec={spec}");
        flags.push("--annotation".to_owned());
        flags.push(format!("\"{}\"", text.replace('"', "\"\"")));
    } else {
        let file = markers.with_extension("spec.json");
        fs::write(&file, spec.to_string()).unwrap();
        flags.push("-v".to_owned());
        flags.push(format!(
            "{}:/etc/lifecycle-shim/spec.json:ro",
            file.display()
        ));
    }
    flags
}

fn run_with_spec<E: Engine>(engine: &E, spec: &Value, markers: &Path, script: &str) -> String {
    let flags = spec_flags(engine, spec, markers);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    engine.run_detached(&flags, script)
}

/// A CGI script for busybox httpd that appends its query string to /markers/order.
const MARK_CGI: &str = "#!/bin/sh\necho \"$QUERY_STRING\" >> /markers/order\nprintf 'Content-Type: text/plain\\r\\n\\r\\nok\\n'\n";

/// An init container that serves [`MARK_CGI`] on the container's loopback, port 8080 (an
/// init container's daemon stays in the container).
fn web_init(markers: &Path) -> Value {
    fs::write(markers.join("mark"), MARK_CGI).unwrap();
    json!({"name": "web", "command": ["sh", "-c",
        "mkdir -p /www/cgi-bin && cp /markers/mark /www/cgi-bin/mark && chmod +x /www/cgi-bin/mark \
         && httpd -p 127.0.0.1:8080 -h /www && echo init-web >> /markers/order"]})
}

fn http(query: &str) -> Value {
    json!({"httpGet": {"path": format!("/cgi-bin/mark?{query}"), "port": 8080}})
}

fn exec(line: &str) -> Value {
    json!({"exec": {"command": ["sh", "-c", format!("echo {line} >> /markers/order")]}})
}

/// The container's life as /markers/order records it, the entrypoint writing `main`.
const MAIN: &str = "trap 'echo term >> /markers/order; exit 0' TERM; echo main >> /markers/order; \
                    while :; do sleep 1000 & wait $!; done";

/// Init containers in order, then the entrypoint with PostStart httpGet beside it; `stop`
/// runs PreStop exec before the TERM trap. Then PostStart exec and PreStop httpGet.
fn hooks_run_in_order<E: Engine>(engine: &E) {
    let markers = engine.host_dir("markers");
    let spec = json!({
        "initContainers": [
            {"name": "first", "command": ["sh", "-c", "echo init-first >> /markers/order"]},
            web_init(&markers),
        ],
        "postStart": http("post-http"),
        "preStop": exec("pre-exec"),
    });
    let id = run_with_spec(engine, &spec, &markers, MAIN);
    let order = markers.join("order");
    wait_for_line(&order, Some("post-http"));
    wait_for_line(&order, Some("main"));
    engine.ok(&["stop", "-t", "30", &id]);
    let lines = read_lines(&order);
    assert_eq!(lines[..2], ["init-first", "init-web"], "{lines:?}");
    assert_eq!(lines[lines.len() - 2..], ["pre-exec", "term"], "{lines:?}");
    assert_eq!(exit_code(engine, &id), "0");
    engine.ok(&["rm", &id]);

    let markers = engine.host_dir("markers");
    let spec = json!({
        "initContainers": [web_init(&markers)],
        "postStart": exec("post-exec"),
        "preStop": http("pre-http"),
    });
    let id = run_with_spec(engine, &spec, &markers, MAIN);
    let order = markers.join("order");
    wait_for_line(&order, Some("post-exec"));
    wait_for_line(&order, Some("main"));
    engine.ok(&["stop", "-t", "30", &id]);
    let lines = read_lines(&order);
    assert_eq!(lines[lines.len() - 2..], ["pre-http", "term"], "{lines:?}");
    engine.ok(&["rm", &id]);
    assert_nothing_left(engine, &id);
}
with_lifecycle_runc!(hooks_in_order, hooks_run_in_order);

/// The engine's SIGKILL at its stop timeout cuts a PreStop short: the container dies without
/// its TERM trap, however long the spec's grace period.
fn the_stop_timeout_cuts_prestop_short<E: Engine>(engine: &E) {
    let markers = engine.host_dir("markers");
    let spec = json!({
        "preStop": {"exec": {"command": ["sh", "-c",
            "echo pre-begin >> /markers/order; sleep 1000; echo pre-end >> /markers/order"]}},
        "terminationGracePeriodSeconds": 600,
    });
    let id = run_with_spec(engine, &spec, &markers, MAIN);
    let order = markers.join("order");
    wait_for_line(&order, Some("main"));
    engine.ok(&["stop", "-t", "1", &id]);
    assert_eq!(read_lines(&order), ["main", "pre-begin"]);
    assert_eq!(exit_code(engine, &id), "137");
    engine.ok(&["rm", &id]);
    assert_nothing_left(engine, &id);
}
with_lifecycle_runc!(stop_timeout, the_stop_timeout_cuts_prestop_short);

/// A failing init container: the entrypoint never runs and the container exits with the init
/// container's status.
fn a_failing_init_container_gives_the_container_its_status<E: Engine>(engine: &E) {
    let markers = engine.host_dir("markers");
    let spec = json!({"initContainers": [
        {"name": "ok", "command": ["sh", "-c", "echo init-ok >> /markers/order"]},
        {"name": "broken", "command": ["sh", "-c", "echo init-broken >> /markers/order; exit 3"]},
        {"name": "never", "command": ["sh", "-c", "echo init-never >> /markers/order"]},
    ]});
    let flags = spec_flags(engine, &spec, &markers);
    let mut args: Vec<&str> = vec!["--name", "failing"];
    args.extend(flags.iter().map(String::as_str));
    let run = engine.run(&args, MAIN);
    assert_eq!(run.code(), 3, "{}", run.stderr_text());
    assert_eq!(
        read_lines(&markers.join("order")),
        ["init-ok", "init-broken"]
    );
    let logs = engine.ok(&["logs", "failing"]) + &engine.cli(&["logs", "failing"]).stderr_text();
    assert!(
        logs.contains("init container") && logs.contains("\"broken\""),
        "{logs}"
    );
    engine.ok(&["rm", "failing"]);
}
with_lifecycle_runc!(
    failing_init,
    a_failing_init_container_gives_the_container_its_status
);

/// A failing PostStart stops the container as a stop would (its PreStop, then its TERM trap)
/// and says why in its logs.
fn a_failing_poststart_stops_the_container<E: Engine>(engine: &E) {
    let markers = engine.host_dir("markers");
    let spec = json!({
        "postStart": {"exec": {"command": ["sh", "-c", "echo cannot-start; exit 1"]}},
        "preStop": exec("pre-exec"),
    });
    let id = run_with_spec(engine, &spec, &markers, MAIN);
    let order = markers.join("order");
    wait_for_line(&order, Some("term"));
    engine.ok(&["wait", &id]);
    let lines = read_lines(&order);
    assert_eq!(lines[lines.len() - 2..], ["pre-exec", "term"], "{lines:?}");
    let logs = engine.cli(&["logs", &id]);
    let logs = logs.stdout_text() + &logs.stderr_text();
    assert!(logs.contains("FailedPostStartHook"), "{logs}");
    assert!(logs.contains("cannot-start"), "the hook's output: {logs}");
    engine.ok(&["rm", &id]);
    assert_nothing_left(engine, &id);
}
with_lifecycle_runc!(failing_poststart, a_failing_poststart_stops_the_container);

/// A sidecar (an init container with `restartPolicy: Always`) runs beside the entrypoint and
/// is stopped after it, then postStop runs: the engine's cleanup (`delete`, right after the
/// exit it sees) waits for both instead of cutting them short.
fn sidecars_and_poststop_follow_the_stop<E: Engine>(engine: &E) {
    let markers = engine.host_dir("markers");
    let spec = json!({
        "initContainers": [{"name": "side", "restartPolicy": "Always", "command": ["sh", "-c",
            "trap 'echo side-term >> /markers/order; exit 0' TERM; echo side-up >> /markers/order; \
             while :; do sleep 1000 & wait $!; done"]}],
        "postStop": exec("post-stop"),
    });
    let id = run_with_spec(engine, &spec, &markers, MAIN);
    let order = markers.join("order");
    wait_for_line(&order, Some("main"));
    engine.ok(&["stop", "-t", "30", &id]);
    engine.ok(&["rm", &id]);
    assert_eq!(
        read_lines(&order),
        ["side-up", "main", "term", "side-term", "post-stop"]
    );
    assert_nothing_left(engine, &id);
}
with_lifecycle_runc!(sidecars, sidecars_and_poststop_follow_the_stop);

/// `rm -f` of a running supervised container leaves no supervisor, no state, no runc
/// container and no process of the container.
fn rm_force_leaves_nothing<E: Engine>(engine: &E) {
    let markers = engine.host_dir("markers");
    let spec = json!({"preStop": exec("pre-exec"), "postStart": exec("post-exec")});
    let id = run_with_spec(engine, &spec, &markers, MAIN);
    wait_for_line(&markers.join("order"), Some("post-exec"));
    assert_eq!(supervisors_of(&id).len(), 1, "one supervisor while it runs");
    assert!(supervisor_state(engine, &id).exists());
    let init: i32 = engine
        .ok(&["inspect", "--format", "{{.State.Pid}}", &id])
        .trim()
        .parse()
        .unwrap();
    let inside = processes_rooted_like(init);
    assert!(inside.contains(&init), "{inside:?}");
    let monitors: Vec<i32> = engine.monitors(&id).iter().map(|p| p.pid).collect();
    assert!(
        monitors.contains(&parent_of(init)),
        "the container's init stays the child of the engine's monitor {monitors:?}"
    );
    engine.ok(&["rm", "-f", &id]);
    assert!(!engine.runc_state(&id).exists(), "runc state left");
    assert_nothing_left(engine, &id);
    // Zombies are not processes left: they wait for a late reaper (the machine's PID 1).
    let running = |pid: &i32| {
        fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| !rest.starts_with('Z'))
        })
    };
    let alive: Vec<i32> = inside.into_iter().filter(running).collect();
    assert_eq!(alive, Vec::<i32>::new(), "processes of the container left");
}

fn parent_of(pid: i32) -> i32 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
    fields[1].parse().unwrap()
}

/// A bad spec fails the engine's `run`, naming the field, and nothing is left of it.
fn a_bad_spec_fails_run_naming_the_field<E: Engine>(engine: &E) {
    let markers = engine.host_dir("markers");
    let spec = json!({"preStop": {"httpGet": {"path": "/", "port": 70000}}});
    let flags = spec_flags(engine, &spec, &markers);
    let mut args: Vec<&str> = vec!["--name", "bad"];
    args.extend(flags.iter().map(String::as_str));
    let run = engine.run(&args, MAIN);
    assert_ne!(run.code(), 0);
    let stderr = run.stderr_text();
    assert!(
        stderr.contains("preStop.httpGet.port: must be 1..65535"),
        "{stderr}"
    );
    assert!(
        read_lines(&markers.join("order")).is_empty(),
        "the entrypoint never ran"
    );
    let id = engine.ok(&["inspect", "--format", "{{.Id}}", "bad"]);
    let id = id.trim();
    assert!(!engine.runc_state(id).exists(), "runc state left");
    assert_nothing_left(engine, id);
    engine.ok(&["rm", "-f", "bad"]);
}
with_lifecycle_runc!(bad_spec, a_bad_spec_fails_run_naming_the_field);

/// The processes whose root directory is that of process `pid` (the container's rootfs).
fn processes_rooted_like(pid: i32) -> Vec<i32> {
    use std::os::unix::fs::MetadataExt;
    let identity = |pid: &str| {
        fs::metadata(format!("/proc/{pid}/root"))
            .ok()
            .map(|m| (m.dev(), m.ino()))
    };
    let root = identity(&pid.to_string()).expect("the container's init is alive");
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| identity(&p.to_string()) == Some(root))
        .collect()
}
with_lifecycle_runc!(rm_force, rm_force_leaves_nothing);

/// Without a spec, what the engine shows (output, exit codes, logs, exec, stop) is exactly
/// what it shows with plain runc, compared in the same test.
fn without_a_spec_as_with_runc<E: Engine>() {
    let runc = runc_path();
    let ours = lifecycle_runc();
    assert_eq!(
        observe::<E, _>(&ours, run_rm),
        observe::<E, _>(&runc, run_rm)
    );
    assert_eq!(
        observe::<E, _>(&ours, logs_after_exit),
        observe::<E, _>(&runc, logs_after_exit)
    );
    assert_eq!(
        observe::<E, _>(&ours, exec_in_detached),
        observe::<E, _>(&runc, exec_in_detached)
    );
    for script in [TERM_TRAP, TERM_IGNORED] {
        let stop = |e: &E| stop_with_timeout(e, script, Duration::from_secs(2));
        assert_eq!(observe::<E, _>(&ours, stop), observe::<E, _>(&runc, stop));
    }
}

mod without_a_spec {
    #[test]
    fn podman() {
        if crate::podman_ready() {
            super::without_a_spec_as_with_runc::<crate::podman::Podman>();
        }
    }

    #[test]
    fn docker() {
        if crate::docker_ready() {
            super::without_a_spec_as_with_runc::<crate::docker::Docker>();
        }
    }
}

/// `podman kube play` of a pod whose annotations hold a spec per container, matched by the
/// containers' `LIFECYCLE_CONTAINER_NAME` (kube play names no container in config.json).
/// Podman 4.3 refuses annotation values over 63 characters, so each spec is one handler
/// running a script; a third container has a longer spec in a file mounted from a `hostPath`
/// at `/etc/lifecycle-shim/spec.json`.
#[test]
fn kube_play_gives_each_container_its_own_spec() {
    if !crate::podman_ready() {
        return;
    }
    let podman = Podman::new(&lifecycle_runc());
    let markers = podman.host_dir("markers");
    let names = ["web", "worker"];
    for name in names {
        crate::support::write_executable(
            &markers,
            &format!("pre-{name}"),
            &format!("#!/bin/sh\necho pre-$LIFECYCLE_CONTAINER_NAME-{name} >> /markers/order\n"),
        );
    }
    let spec = |name: &str| {
        json!({"preStop": {"exec": {"command": [format!("/markers/pre-{name}")]}}}).to_string()
    };
    let container = |name: &str| {
        json!({
            "name": name,
            "image": crate::host::IMAGE,
            "command": ["sh", "-c", format!(
                "trap 'echo term-{name} >> /markers/order; exit 0' TERM; \
                 echo up-{name} >> /markers/order; while :; do sleep 1000 & wait $!; done")],
            "env": [{"name": "LIFECYCLE_CONTAINER_NAME", "value": name}],
            "volumeMounts": [{"name": "markers", "mountPath": "/markers"}],
        })
    };
    let spec_file = podman.dir().join("batch-spec.json");
    let batch_spec = json!({"postStart": exec("post-batch"), "preStop": exec("pre-batch")});
    fs::write(&spec_file, batch_spec.to_string()).unwrap();
    let mut batch = container("batch");
    batch["env"] = json!([]);
    batch["volumeMounts"].as_array_mut().unwrap().push(
        json!({"name": "spec", "mountPath": "/etc/lifecycle-shim/spec.json", "readOnly": true}),
    );
    let mut containers = names.map(container).to_vec();
    containers.push(batch);
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "hooked", "annotations": {
            "lifecycle-shim/spec.web": spec("web"),
            "lifecycle-shim/spec.worker": spec("worker"),
        }},
        "spec": {
            "containers": containers,
            "volumes": [
                {"name": "markers", "hostPath": {"path": markers, "type": "Directory"}},
                {"name": "spec", "hostPath": {"path": spec_file, "type": "File"}},
            ],
        },
    });
    // kube play reads YAML, of which JSON is a part.
    podman.kube_play(&pod.to_string());
    let order = markers.join("order");
    wait_for_line(&order, Some("up-web"));
    wait_for_line(&order, Some("up-worker"));
    wait_for_line(&order, Some("post-batch"));
    podman.ok(&["pod", "stop", "-t", "30", "hooked"]);
    let lines = read_lines(&order);
    for name in names {
        // Each container ran its own PreStop (the script names it twice), before its trap.
        let at = |what: &str| lines.iter().position(|l| *l == what);
        let (pre, term) = (
            at(&format!("pre-{name}-{name}")),
            at(&format!("term-{name}")),
        );
        assert!(pre.is_some() && pre < term, "{name}: {lines:?}");
    }
    let at = |what: &str| lines.iter().position(|l| l == what);
    assert!(
        at("pre-batch").is_some() && at("pre-batch") < at("term-batch"),
        "{lines:?}"
    );
    assert_eq!(lines.len(), 10, "each hook once: {lines:?}");
    podman.ok(&["pod", "rm", "hooked"]);
}

/// A reconfigure entry under the engine: a volume laid out as a ConfigMap, updated
/// atomically, runs the handler with the new content.
fn reconfigure_runs_on_an_atomic_update<E: Engine>(engine: &E) {
    let markers = engine.host_dir("markers");
    let mut volume = crate::configmap::ConfigMapDir::new(&[("app.conf", "v1")]);
    let spec = json!({"reconfigure": {"paths": ["/etc/config"], "exec": {"command": ["sh", "-c",
        "cat /etc/config/app.conf >> /markers/runs; echo >> /markers/runs"]}}});
    let mut flags = spec_flags(engine, &spec, &markers);
    flags.push("-v".to_owned());
    flags.push(format!("{}:/etc/config:ro", volume.path().display()));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let script =
        "trap 'exit 0' TERM; echo up > /markers/up; while :; do sleep 1000 & wait $!; done";
    let id = engine.run_detached(&flags, script);
    wait_for_line(&markers.join("up"), Some("up"));
    let log = supervisor_state(engine, &id).join("supervisor.log");
    wait_until("the supervisor watches for changes", || {
        fs::read_to_string(&log).is_ok_and(|l| l.contains("watching for configuration changes"))
    });
    volume.update(&[("app.conf", "v2")]);
    wait_for_line(&markers.join("runs"), Some("v2"));
    assert_eq!(read_lines(&markers.join("runs")), ["v2"]);
    engine.ok(&["stop", "-t", "30", &id]);
    assert_eq!(exit_code(engine, &id), "0");
    engine.ok(&["rm", &id]);
    assert_nothing_left(engine, &id);
}
with_lifecycle_runc!(reconfigure, reconfigure_runs_on_an_atomic_update);

fn exit_code<E: Engine>(engine: &E, id: &str) -> String {
    engine
        .ok(&["inspect", "--format", "{{.State.ExitCode}}", id])
        .trim()
        .to_owned()
}

/// Supervisor processes of container `id`.
fn supervisors_of(id: &str) -> Vec<crate::host::Process> {
    processes_mentioning(id)
        .into_iter()
        .filter(|p| p.cmdline.contains("--lifecycle-supervise"))
        .collect()
}

/// The supervisor's state directory of container `id`, as `lifecycle-runc` names it from the
/// engine's runc root.
fn supervisor_state<E: Engine>(engine: &E, id: &str) -> PathBuf {
    let state = engine.runc_state(id);
    lifecycle_shim::runtime::state_dir(state.parent(), id)
}

#[track_caller]
fn assert_nothing_left<E: Engine>(engine: &E, id: &str) {
    wait_until("the supervisor has exited", || {
        supervisors_of(id).is_empty()
    });
    assert!(
        !supervisor_state(engine, id).exists(),
        "supervisor state left at {:?}",
        supervisor_state(engine, id)
    );
}
