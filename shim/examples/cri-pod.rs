//! `scripts/bench`'s CRI client: runs a pod with its containers, or removes one, through
//! containerd's CRI socket as the kubelet would, with the CRI suite's own client
//! (`tests/support/cri.rs`), so the bench needs no CRI client of its own.
//!
//! ```text
//! cri-pod SOCKET up JSON      runs the pod JSON describes and prints {"pod": ID, "containers": [IDS]}
//! cri-pod SOCKET down POD_ID  stops and removes the pod's containers, then the pod
//! ```
//!
//! JSON: `{"name", "handler", "image", "log_directory", "annotations": {..},
//! "containers": [{"name", "command": [..]}]}`; pods use the host network, each container its
//! own PID namespace (the kubelet's default).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use k8s_cri::v1::NamespaceMode;
use serde::Deserialize;

#[allow(dead_code)] // the suites' client: the bench uses part of it
#[path = "../../tests/support/cri.rs"]
mod cri;

/// How long a container's stop may take before containerd's SIGKILL.
const STOP_TIMEOUT_SECONDS: i64 = 10;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PodRequest {
    name: String,
    handler: String,
    image: String,
    log_directory: PathBuf,
    #[serde(default)]
    annotations: HashMap<String, String>,
    containers: Vec<ContainerRequest>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ContainerRequest {
    name: String,
    command: Vec<String>,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        [socket, "up", json] => up(Path::new(socket), json),
        [socket, "down", pod_id] => {
            down(Path::new(socket), pod_id);
            Ok(())
        }
        _ => Err("usage: cri-pod SOCKET up JSON | cri-pod SOCKET down POD_ID".to_owned()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("cri-pod: {message}");
            ExitCode::FAILURE
        }
    }
}

fn up(socket: &Path, json: &str) -> Result<(), String> {
    let request: PodRequest =
        serde_json::from_str(json).map_err(|e| format!("the pod's JSON: {e}"))?;
    let client = cri::Cri::connect(socket);
    let pod = cri::Pod {
        name: request.name,
        handler: request.handler,
        annotations: request.annotations,
        log_directory: request.log_directory,
        pid: NamespaceMode::Container,
    };
    let pod_id = client.run_pod(&pod);
    let containers: Vec<String> = request
        .containers
        .iter()
        .map(|c| {
            let command: Vec<&str> = c.command.iter().map(String::as_str).collect();
            let id = client.create_container(&pod_id, &pod, &c.name, &request.image, &command, &[]);
            client.start_container(&id);
            id
        })
        .collect();
    println!(
        "{}",
        serde_json::json!({"pod": pod_id, "containers": containers})
    );
    Ok(())
}

fn down(socket: &Path, pod_id: &str) {
    let client = cri::Cri::connect(socket);
    for id in client.list_containers(pod_id) {
        client.stop_container(&id, STOP_TIMEOUT_SECONDS);
        client.remove_container(&id);
    }
    client.remove_pod(pod_id);
}
