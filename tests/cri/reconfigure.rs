//! Reconfigure hooks through the CRI: a pod whose container mounts a hostPath volume laid out
//! as a ConfigMap volume, updated atomically (as the kubelet updates one) while it runs.

use serde_json::json;

use crate::configmap::ConfigMapDir;
use crate::support::{wait_for_line, wait_until};
use crate::{spec_key, Env, LIFECYCLE};

#[test]
fn an_atomic_configmap_update_runs_the_reconfigure_hook_with_the_new_content() {
    let Some(env) = Env::new() else { return };
    let mut volume = ConfigMapDir::new(&[("app.conf", "v1")]);
    let spec = json!({"reconfigure": {"paths": ["/etc/config"], "exec": {"command": ["sh", "-c",
        "cat /etc/config/app.conf >> /markers/runs; echo >> /markers/runs; echo reloaded $(cat /etc/config/app.conf)"]}}});
    let pod = env.pod("reconfigure", LIFECYCLE, &[(&spec_key("app"), spec)]);
    let pod_id = env.cri.run_pod(&pod);
    let markers = env.markers();
    let id = env.run_container(
        &pod_id,
        &pod,
        "app",
        "echo up > /markers/up; while :; do sleep 1000 & wait $!; done",
        &[("/etc/config", volume.path())],
    );
    wait_for_line(&markers.join("up"), Some("up"));
    wait_until("the shim watches for changes", || {
        env.containerd
            .log()
            .lines()
            .any(|l| l.contains("watching for configuration changes") && l.contains(&id))
    });
    assert!(env.lines("runs").is_empty(), "no change, no run");
    volume.update(&[("app.conf", "v2")]);
    wait_for_line(&markers.join("runs"), Some("v2"));
    // The hook's output is in the container's log, as other hooks' is.
    wait_until("the hook's output is logged", || {
        env.container_log(&pod, "app")
            .contains("[reconfigure] reloaded v2")
    });
    assert_eq!(env.lines("runs"), ["v2"]);
    env.remove(&pod_id, &[id]);
}
