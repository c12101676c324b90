//! Through containerd's CRI plugin, as the kubelet drives it: this shim (no hook spec) makes
//! the same runtime calls with the same configs as the Go runc shim given the same options
//! (`BinaryName`, `Root`, `NoPivotRoot`, `NoNewKeyring`; containerd 1.6 hands a runtime that
//! is not runc's only a `ConfigPath`, so ours reads them from that file), and a pod whose
//! containers share its PID namespace leaves nothing running and loses no output.

use std::path::Path;

use k8s_cri::v1::{ContainerState, NamespaceMode};

use crate::recorder::{normalize, normalize_config, Recorder};
use crate::support::{processes_with_args, wait_until};
use crate::{Env, LIFECYCLE, RUNC};

const GO_RECORDED: &str = "runc-recorded";
const OUR_RECORDED: &str = "lifecycle-recorded";

/// Two more handlers, each with runc's options and a recording `BinaryName`. containerd 1.6
/// hands ours only a `ConfigPath`; 1.7 and later also the table itself (`ConfigBody`), which
/// is then what is tested (when this suite runs against such a containerd).
fn recorded_runtimes(dir: &Path) -> String {
    let root = dir.join("runc-root").display().to_string();
    let options = |recorder: &Recorder| {
        format!(
            "BinaryName = {:?}\nRoot = {root:?}\nNoPivotRoot = true\nNoNewKeyring = true\n",
            recorder.binary().display().to_string()
        )
    };
    let go = Recorder::new(&dir.join(GO_RECORDED));
    let ours = Recorder::new(&dir.join(OUR_RECORDED));
    let our_options = if containerd_version() < (1, 7) {
        let config_path = dir.join("lifecycle-options.toml");
        std::fs::write(&config_path, options(&ours)).unwrap();
        format!("ConfigPath = {:?}\n", config_path.display().to_string())
    } else {
        options(&ours)
    };
    let table = "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes";
    format!(
        "{table}.{GO_RECORDED}]\n  runtime_type = \"io.containerd.runc.v2\"\n{table}.{GO_RECORDED}.options]\n{}\
         {table}.{OUR_RECORDED}]\n  runtime_type = \"io.containerd.lifecycle.v2\"\n{table}.{OUR_RECORDED}.options]\n{our_options}",
        options(&go),
    )
}

/// The major and minor version of the `containerd` on PATH.
pub(crate) fn containerd_version() -> (u32, u32) {
    let out = std::process::Command::new("containerd")
        .arg("--version")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.split_whitespace().nth(2).unwrap_or_default();
    let mut parts = version.split(|c: char| !c.is_ascii_digit());
    let mut next = || parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (next(), next())
}

/// A pod's life as the kubelet drives it: run, create, start, exec, stop, remove.
fn kubelet_scenario(env: &Env, handler: &str) {
    env.reset_markers();
    let pod = env.pod("parity", handler, &[]);
    let script =
        "trap 'exit 0' TERM; echo up >> /markers/up; while :; do sleep 1000 & wait $!; done";
    let (pod_id, ids) = env.start(&pod, &[("app", script)]);
    wait_until("the container is up", || !env.lines("up").is_empty());
    let (stdout, _, code) = env.cri.exec_sync(&ids[0], &["echo", "hi"]);
    assert_eq!((stdout.as_str(), code), ("hi\n", 0), "{handler}");
    env.remove(&pod_id, &ids);
}

#[test]
fn runtime_calls_and_configs_match_the_go_shim_under_cri() {
    let Some(env) = Env::with_runtimes(recorded_runtimes) else {
        return;
    };
    kubelet_scenario(&env, GO_RECORDED);
    kubelet_scenario(&env, OUR_RECORDED);
    let calls = |name| Recorder::new(&env.dir.path().join(name)).calls();
    let (go, ours) = (calls(GO_RECORDED), calls(OUR_RECORDED));
    let args = |calls: &[crate::recorder::Call]| -> Vec<Vec<String>> {
        calls.iter().map(|c| normalize(&c.args, &[])).collect()
    };
    assert!(!go.is_empty());
    assert_eq!(
        args(&ours),
        args(&go),
        "runtime calls differ from the Go shim's"
    );
    let configs = |calls: &[crate::recorder::Call]| -> Vec<serde_json::Value> {
        calls
            .iter()
            .filter_map(|c| c.config.as_ref().map(|v| normalize_config(v, &[])))
            .collect()
    };
    assert_eq!(configs(&ours), configs(&go), "create's configs differ");
    // The options arrived: both creates (sandbox and container) without pivot_root and keyring.
    let creates: Vec<_> = ours
        .iter()
        .filter(|c| c.args.contains(&"create".to_owned()))
        .collect();
    assert_eq!(creates.len(), 2, "{ours:?}");
    for create in creates {
        assert!(create.args.contains(&"--no-pivot".to_owned()), "{create:?}");
        assert!(
            create.args.contains(&"--no-new-keyring".to_owned()),
            "{create:?}"
        );
    }
}

/// Runs a container that leaves a background process behind and exits 3, in a pod whose PID
/// namespace is `pid`; returns once CRI reports it exited: the exit code, the container's log,
/// and whether the background process was still there at that moment.
fn leaves_a_process(env: &Env, handler: &str, pid: NamespaceMode) -> (i32, String, bool) {
    env.reset_markers();
    let mut pod = env.pod(&format!("pid-{handler}-{}", pid as i32), handler, &[]);
    pod.pid = pid;
    let script = "echo before; sleep 4343 & echo started; sleep 1; echo last; exit 3";
    let (pod_id, ids) = env.start(&pod, &[("app", script)]);
    wait_until("the container has exited", || {
        env.cri.container_status(&ids[0]).state == ContainerState::ContainerExited as i32
    });
    let left = !processes_with_args(&["sleep", "4343"]).is_empty();
    let code = env.cri.container_status(&ids[0]).exit_code;
    if handler == RUNC {
        // The Go shim sends the SIGKILL and does not wait for it to take effect.
        wait_until("the Go shim's SIGKILL took effect", || {
            processes_with_args(&["sleep", "4343"]).is_empty()
        });
    }
    let log = env.container_log(&pod, "app");
    env.remove(&pod_id, &ids);
    (code, log, left && handler != RUNC)
}

#[test]
fn a_pod_sharing_its_pid_namespace_leaves_nothing_and_loses_no_output() {
    let Some(env) = Env::new() else { return };
    for handler in [LIFECYCLE, RUNC] {
        for pid in [NamespaceMode::Pod, NamespaceMode::Container] {
            let (code, log, left) = leaves_a_process(&env, handler, pid);
            let what = format!("{handler} {pid:?}");
            assert_eq!(code, 3, "{what}");
            assert!(!left, "{what}: sleep 4343 outlived the container's exit");
            let lines: Vec<&str> = log
                .lines()
                .filter_map(|l| l.splitn(4, ' ').nth(3))
                .collect();
            assert_eq!(lines, ["before", "started", "last"], "{what}: {log}");
        }
    }
    let log = env.containerd.log();
    assert!(!log.contains("Failed to pipe"), "containerd lost output");
}
