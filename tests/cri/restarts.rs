//! Init containers as the kubelet sees them: StartContainer returns once they are done (so the
//! kubelet's probes, which start then, never see a container still in its init containers);
//! and a container restarted in the same pod sandbox does not run them again (a new sandbox
//! does), as in Kubernetes; PostStart and sidecars run again with every restart.

use k8s_cri::v1::ContainerState;
use serde_json::json;

use crate::cri::{Cri, Pod};
use crate::support::wait_until;
use crate::{spec_key, Env, BUSYBOX, LIFECYCLE};

/// Waits until its sidecar has said it runs (as many lines as /markers/attempt says), then
/// exits 0 when the test creates /markers/go (at once if it is there), or on SIGTERM.
const APP: &str = "trap 'exit 0' TERM; \
    while [ \"$(wc -l < /markers/sidecars)\" -lt \"$(cat /markers/attempt)\" ]; do sleep 0.05; done; \
    while [ ! -f /markers/go ]; do sleep 0.05; done";

fn spec() -> serde_json::Value {
    json!({
        "initContainers": [
            {"name": "setup", "command": ["sh", "-c", "echo setup >> /markers/inits"]},
            {"name": "logger", "command": ["sh", "-c", "echo logger >> /markers/sidecars; while :; do sleep 1000 & wait $!; done"],
             "restartPolicy": "Always"}
        ],
        "postStart": {"exec": {"command": ["sh", "-c", "echo poststart >> /markers/poststart; [ ! -f /markers/fail ]"]}}
    })
}

/// Creates and starts attempt `attempt` of container `app`, and waits until it has exited.
fn run_attempt(env: &Env, pod_id: &str, pod: &Pod, attempt: u32) -> (String, i32) {
    let markers = env.markers();
    std::fs::write(markers.join("attempt"), (attempt + 1).to_string()).unwrap();
    let id = env.cri.create_container_attempt(
        pod_id,
        pod,
        ("app", attempt),
        BUSYBOX,
        &["sh", "-c", APP],
        &[("/markers", markers.as_path())],
    );
    env.cri.start_container(&id);
    wait_until(&format!("attempt {attempt} has exited"), || {
        env.cri.container_status(&id).state == ContainerState::ContainerExited as i32
    });
    (id.clone(), env.cri.container_status(&id).exit_code)
}

#[test]
fn init_containers_run_once_per_sandbox_across_restarts_and_a_containerd_restart() {
    let Some(mut env) = Env::new() else { return };
    env.reset_markers();
    let pod = env.pod("restarts", LIFECYCLE, &[(&spec_key("app"), spec())]);
    let pod_id = env.cri.run_pod(&pod);
    let record = env
        .containerd
        .bundle(&pod_id)
        .join("lifecycle-inits/app.json");

    // Attempt 0: PostStart fails, the container is stopped (code 1).
    std::fs::write(env.markers().join("fail"), "").unwrap();
    let (first, code) = run_attempt(&env, &pod_id, &pod, 0);
    assert_eq!(code, 1, "a failed PostStart");
    assert!(record.exists(), "no record at {record:?}");

    // The record survives containerd restarting.
    env.containerd.restart();
    env.cri = Cri::connect(&env.containerd.cri_socket());
    wait_until("the CRI plugin answers again", || env.cri.answers());

    // Attempt 1, after the failed PostStart: init containers skipped, PostStart again.
    std::fs::remove_file(env.markers().join("fail")).unwrap();
    let markers = env.markers();
    let go = markers.join("go");
    let released = std::thread::spawn(move || {
        crate::support::wait_for_line(&markers.join("poststart"), Some("poststart"));
        while crate::support::read_lines(&markers.join("poststart")).len() < 2 {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        std::fs::write(go, "").unwrap();
    });
    let (second, code) = run_attempt(&env, &pod_id, &pod, 1);
    released.join().unwrap();
    assert_eq!(code, 0);
    // Attempt 2, after a plain exit: init containers skipped again.
    let (third, _) = run_attempt(&env, &pod_id, &pod, 2);

    assert_eq!(env.lines("inits"), ["setup"], "the init container ran once");
    assert!(
        env.lines("poststart").len() >= 2,
        "PostStart ran with each start"
    );
    assert_eq!(
        env.lines("sidecars"),
        ["logger", "logger", "logger"],
        "the sidecar starts with every restart (not as in Kubernetes)"
    );

    // A new sandbox runs them again.
    let other = env.pod("restarts-2", LIFECYCLE, &[(&spec_key("app"), spec())]);
    let other_id = env.cri.run_pod(&other);
    // (Its first attempt waits for a fourth sidecar line.)
    let (fourth, _) = run_attempt(&env, &other_id, &other, 3);
    assert_eq!(env.lines("inits"), ["setup", "setup"]);

    // The record goes with its sandbox.
    for id in [first, second, third] {
        env.cri.remove_container(&id);
    }
    env.cri.remove_pod(&pod_id);
    assert!(!record.exists(), "{record:?} outlived its sandbox");
    env.remove(&other_id, &[fourth]);
}

/// The kubelet probes (ExecSync) right after StartContainer: by then the init containers,
/// here of a few seconds, are done and the entrypoint runs.
#[test]
fn start_container_returns_once_the_init_containers_are_done() {
    let Some(env) = Env::new() else { return };
    env.reset_markers();
    let spec = json!({"initContainers": [{"name": "slow", "command": ["sh", "-c",
        "sleep 3; echo done > /markers/init-done"]}]});
    let pod = env.pod("probed", LIFECYCLE, &[(&spec_key("app"), spec)]);
    let (pod_id, ids) = env.start(
        &pod,
        &[(
            "app",
            "echo up >> /markers/up; while :; do sleep 1000 & wait $!; done",
        )],
    );
    let (stdout, _, code) = env.cri.exec_sync(&ids[0], &["cat", "/markers/init-done"]);
    assert_eq!(
        (stdout.as_str(), code),
        ("done\n", 0),
        "the probe ran before the init container ended"
    );
    env.remove(&pod_id, &ids);
}
