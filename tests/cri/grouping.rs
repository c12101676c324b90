//! One shim per pod, as runc's shim groups containers under their sandbox: the sandbox and its
//! app containers are served by one shim process, each container with its own hooks and stop;
//! a hung PreStop, a flood of output or a stuck runtime call in one does not delay another's
//! hooks or stop; a containerd restart reconnects to the shared shim with every task; the shim
//! exits once the sandbox is removed.

use serde_json::json;

use crate::cri::Cri;
use crate::support::{processes_with_args, wait_for_line, wait_until};
use crate::{spec_key, Env, LIFECYCLE};

fn spec(name: &str, pre_stop: &str) -> serde_json::Value {
    json!({
        "postStart": {"exec": {"command": ["sh", "-c", format!("echo poststart >> /markers/{name}")]}},
        "preStop": {"exec": {"command": ["sh", "-c", pre_stop]}},
        "terminationGracePeriodSeconds": 30
    })
}

fn script(name: &str) -> String {
    format!(
        "trap 'echo term >> /markers/{name}; exit 0' TERM; while :; do sleep 1000 & wait $!; done"
    )
}

#[test]
fn a_pods_containers_share_one_shim_and_stop_apart() {
    let Some(mut env) = Env::new() else { return };
    env.reset_markers();
    let specs = [
        (
            spec_key("fast"),
            spec("fast", "echo prestop >> /markers/fast"),
        ),
        (
            spec_key("other"),
            spec("other", "echo prestop >> /markers/other"),
        ),
        (
            spec_key("hung"),
            spec("hung", "echo prestop >> /markers/hung; sleep 600"),
        ),
    ];
    let specs: Vec<(&str, serde_json::Value)> =
        specs.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let pod = env.pod("grouped", LIFECYCLE, &specs);
    let names = ["fast", "other", "hung"];
    let scripts: Vec<String> = names.iter().map(|n| script(n)).collect();
    let containers: Vec<(&str, &str)> = names
        .iter()
        .zip(&scripts)
        .map(|(n, s)| (*n, s.as_str()))
        .collect();
    let (pod_id, ids) = env.start(&pod, &containers);
    for name in names {
        wait_for_line(&env.markers().join(name), Some("poststart"));
    }
    let shims = env.containerd.shim_processes();
    assert_eq!(
        shims.len(),
        1,
        "the sandbox and its three containers: {shims:?}"
    );

    // A containerd restart: the shared shim is found again, with every task.
    env.containerd.restart();
    env.cri = Cri::connect(&env.containerd.cri_socket());
    wait_until("the CRI plugin answers again", || env.cri.answers());
    let mut listed = env.cri.list_containers(&pod_id);
    listed.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(listed, expected);

    // The hung PreStop runs (until StopContainer's timeout) while another container stops.
    let socket = env.containerd.cri_socket();
    let hung = ids[2].clone();
    let stopping = std::thread::spawn(move || Cri::connect(&socket).stop_container(&hung, 4));
    wait_for_line(&env.markers().join("hung"), Some("prestop"));
    env.cri.stop_container(&ids[0], 10);
    assert_eq!(env.lines("fast"), ["poststart", "prestop", "term"]);
    assert_eq!(
        env.lines("hung"),
        ["poststart", "prestop"],
        "still in its PreStop"
    );
    assert_eq!(env.lines("other"), ["poststart"], "untouched");
    stopping.join().unwrap();
    // SIGKILL at StopContainer's timeout cut the hung PreStop: no TERM trap.
    assert_eq!(env.lines("hung"), ["poststart", "prestop"]);

    // Removing the pod stops the last one (its PreStop first) and ends the shim.
    env.remove(&pod_id, &ids);
    assert_eq!(env.lines("other"), ["poststart", "prestop", "term"]);
}

/// The shared shim SIGKILLed: containerd reports every task of the pod exited and its `delete`
/// calls leave no runc container and no process in the containers' cgroups.
#[test]
fn a_killed_shared_shim_is_cleaned_up_for_every_task() {
    let Some(env) = Env::new() else { return };
    env.reset_markers();
    let pod = env.pod("killed", LIFECYCLE, &[]);
    let idle = "echo up >> /markers/up; while :; do sleep 1000 & wait $!; done";
    let (pod_id, ids) = env.start(&pod, &[("one", idle), ("two", idle)]);
    wait_until("both run", || env.lines("up").len() == 2);
    env.containerd.kill_the_shim();
    for id in &ids {
        wait_until(&format!("{id} is reported exited"), || {
            env.cri.container_status(id).state
                == k8s_cri::v1::ContainerState::ContainerExited as i32
        });
    }
    env.remove(&pod_id, &ids);
    let root = std::path::Path::new("/run/containerd/lifecycle/k8s.io");
    for id in ids.iter().chain([&pod_id]) {
        assert!(!root.join(id).exists(), "runc still has {id}");
        for hierarchy in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
            let procs = hierarchy
                .path()
                .join("k8s.io")
                .join(id)
                .join("cgroup.procs");
            let left = std::fs::read_to_string(&procs).unwrap_or_default();
            assert!(left.trim().is_empty(), "{procs:?} holds {left}");
        }
    }
}

/// A flood of output in one container of a pod, its entrypoint's and a PostStart's that prints
/// without end, also while containerd restarts and nobody reads the streams: the shim serves
/// the whole pod on one thread, so a write into a full stream must never wait. Another
/// container of the pod runs its PostStart and stops with its PreStop before its TERM trap;
/// the flood goes on, and CRI logs it.
#[test]
fn a_flood_of_output_in_one_container_delays_no_other_of_its_pod() {
    let Some(mut env) = Env::new() else { return };
    env.reset_markers();
    let flood = json!({"postStart": {"exec": {"command": ["sh", "-c",
        "echo hook >> /markers/flood; yes hook-line"]}}});
    let specs = [
        (spec_key("flood"), flood),
        (
            spec_key("calm"),
            spec("calm", "echo prestop >> /markers/calm"),
        ),
    ];
    let specs: Vec<(&str, serde_json::Value)> =
        specs.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let pod = env.pod("flood", LIFECYCLE, &specs);
    let flooding = "yes err >&2 & echo up >> /markers/flood; yes out";
    let calm = script("calm");
    let (pod_id, ids) = env.start(&pod, &[("flood", flooding), ("calm", &calm)]);
    wait_until("the flood and its hook run", || {
        let lines = env.lines("flood");
        lines.contains(&"up".to_owned()) && lines.contains(&"hook".to_owned())
    });
    wait_for_line(&env.markers().join("calm"), Some("poststart"));
    let shims = env.containerd.shim_processes();
    assert_eq!(shims.len(), 1, "the sandbox and both containers: {shims:?}");

    env.containerd.restart();
    env.cri = Cri::connect(&env.containerd.cri_socket());
    wait_until("the CRI plugin answers again", || env.cri.answers());
    env.cri.stop_container(&ids[1], 10);
    assert_eq!(env.lines("calm"), ["poststart", "prestop", "term"]);
    let flood = env.cri.container_status(&ids[0]);
    assert_eq!(
        flood.state,
        k8s_cri::v1::ContainerState::ContainerRunning as i32,
        "the flood goes on"
    );
    let log = env.container_log(&pod, "flood");
    assert!(log.contains(" out"), "the flood's own output is logged");
    // Whether the hook's own lines got into the log is not asserted: they compete with the
    // entrypoint's flood for the same stream, and a writer blocked in write(2) (`yes`) is woken
    // before the shim's non-blocking one, which can go without a turn (seen: 14 MB of the
    // flood, no hook line). What matters is that the shim never waited for it.
    env.remove(&pod_id, &ids);
}

/// The argument that makes the wrapper of [`stuck_runtime`] hang.
const STUCK: &str = "stuck-hook";
/// What the hung runtime call runs: `sleep` with this, until it is killed.
const STUCK_SLEEP: &str = "8765";
const STUCK_HANDLER: &str = "lifecycle-stuck";

/// A handler whose `BinaryName` is a runc wrapper that hangs any call with the argument
/// [`STUCK`] (one container's PostStart exec: `runc exec` never returns) after writing
/// `stuck` to /markers/runtime, and runs runc for every other call.
fn stuck_runtime(dir: &std::path::Path) -> String {
    let runc = std::process::Command::new("sh")
        .args(["-c", "command -v runc"])
        .output()
        .unwrap();
    let runc = String::from_utf8_lossy(&runc.stdout).trim().to_owned();
    let wrapper = format!(
        "#!/bin/sh\nfor arg in \"$@\"; do\n  if [ \"$arg\" = {STUCK} ]; then\n    echo stuck >> '{markers}/runtime'\n    exec sleep {STUCK_SLEEP}\n  fi\ndone\nexec '{runc}' \"$@\"\n",
        markers = dir.join("markers").display()
    );
    crate::support::write_executable(dir, "runc-stuck", &wrapper);
    let options = format!(
        "BinaryName = {:?}\n",
        dir.join("runc-stuck").display().to_string()
    );
    // containerd 1.6 hands a runtime that is not runc's only a ConfigPath.
    let options = if crate::runcv2::containerd_version() < (1, 7) {
        let path = dir.join("stuck-options.toml");
        std::fs::write(&path, options).unwrap();
        format!("ConfigPath = {:?}\n", path.display().to_string())
    } else {
        options
    };
    let table = "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes";
    format!(
        "{table}.{STUCK_HANDLER}]\n  runtime_type = \"io.containerd.lifecycle.v2\"\n  pod_annotations = [\"lifecycle-shim/*\"]\n{table}.{STUCK_HANDLER}.options]\n{options}"
    )
}

/// A stuck runtime call in one container of a pod (its PostStart's `runc exec` never
/// returns): another container of the pod, served by the same shim, runs its PostStart and
/// stops with its PreStop before its TERM trap. The stuck one is then stopped; its hung call
/// is killed with it, and nothing of the pod is left.
#[test]
fn a_stuck_runtime_call_in_one_container_delays_no_other_of_its_pod() {
    let Some(env) = Env::with_runtimes(stuck_runtime) else {
        return;
    };
    let stuck = json!({"postStart": {"exec": {"command": ["sh", "-c", "echo ran >> /markers/stuck", STUCK]}}});
    let specs = [
        (spec_key("stuck"), stuck),
        (
            spec_key("calm"),
            spec("calm", "echo prestop >> /markers/calm"),
        ),
    ];
    let specs: Vec<(&str, serde_json::Value)> =
        specs.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let pod = env.pod("stuck", STUCK_HANDLER, &specs);
    let (stuck, calm) = (script("stuck"), script("calm"));
    let (pod_id, ids) = env.start(&pod, &[("stuck", &stuck), ("calm", &calm)]);
    wait_for_line(&env.markers().join("runtime"), Some("stuck"));
    wait_for_line(&env.markers().join("calm"), Some("poststart"));
    let shims = env.containerd.shim_processes();
    assert_eq!(shims.len(), 1, "the sandbox and both containers: {shims:?}");

    env.cri.stop_container(&ids[1], 10);
    assert_eq!(env.lines("calm"), ["poststart", "prestop", "term"]);
    assert_eq!(
        processes_with_args(&["sleep", STUCK_SLEEP]).len(),
        1,
        "the stuck call still hangs"
    );

    // The stuck container's stop ends its PostStart, and the hung call with it.
    env.cri.stop_container(&ids[0], 2);
    assert_eq!(
        env.cri.container_status(&ids[0]).state,
        k8s_cri::v1::ContainerState::ContainerExited as i32
    );
    assert!(
        env.lines("stuck").iter().all(|l| l != "ran"),
        "the hook never ran"
    );
    env.remove(&pod_id, &ids);
    assert!(
        processes_with_args(&["sleep", STUCK_SLEEP]).is_empty(),
        "the hung runtime call is left"
    );
    let root = std::path::Path::new("/run/containerd/lifecycle/k8s.io");
    for id in ids.iter().chain([&pod_id]) {
        assert!(!root.join(id).exists(), "runc still has {id}");
    }
}
