//! A small CRI client (Kubernetes' runtime service, v1, over containerd's socket) making the
//! calls the kubelet makes, blocking so tests read in order.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, ContainerFilter, ContainerMetadata, ContainerStatus, ContainerStatusRequest,
    CreateContainerRequest, ExecSyncRequest, ImageSpec, LinuxContainerConfig,
    LinuxContainerSecurityContext, LinuxPodSandboxConfig, LinuxSandboxSecurityContext,
    ListContainersRequest, Mount, NamespaceMode, NamespaceOption, PodSandboxConfig,
    PodSandboxMetadata, RemoveContainerRequest, RemovePodSandboxRequest, RunPodSandboxRequest,
    StartContainerRequest, StopContainerRequest, StopPodSandboxRequest,
};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};
use tower::service_fn;

pub struct Cri {
    runtime: tokio::runtime::Runtime,
    client: RuntimeServiceClient<Channel>,
}

/// A pod as the tests describe it.
pub struct Pod {
    pub name: String,
    pub handler: String,
    pub annotations: HashMap<String, String>,
    pub log_directory: PathBuf,
    /// The PID namespace of its containers: the pod's (shared, critest's default) or each
    /// container's own (the kubelet's default).
    pub pid: NamespaceMode,
}

impl Pod {
    /// The sandbox config the kubelet would send: host network (no CNI needed here).
    pub fn config(&self) -> PodSandboxConfig {
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: self.name.clone(),
                uid: format!("uid-{}", self.name),
                namespace: "default".into(),
                attempt: 0,
            }),
            // Host-network pods share the node's UTS namespace: no hostname of their own.
            hostname: String::new(),
            log_directory: self.log_directory.display().to_string(),
            annotations: self.annotations.clone(),
            linux: Some(LinuxPodSandboxConfig {
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(self.namespaces()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// The namespaces of the sandbox and of each container, as the kubelet sends them.
    fn namespaces(&self) -> NamespaceOption {
        NamespaceOption {
            network: NamespaceMode::Node as i32,
            pid: self.pid as i32,
            ..Default::default()
        }
    }
}

impl Cri {
    pub fn connect(socket: &Path) -> Cri {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let socket = socket.to_owned();
        let channel = runtime
            .block_on(
                Endpoint::try_from("http://[::]:50051")
                    .unwrap()
                    .connect_with_connector(service_fn(move |_: Uri| {
                        let socket = socket.clone();
                        async move {
                            Ok::<_, std::io::Error>(TokioIo::new(
                                UnixStream::connect(socket).await?,
                            ))
                        }
                    })),
            )
            .expect("cannot connect to the CRI socket");
        Cri {
            runtime,
            client: RuntimeServiceClient::new(channel),
        }
    }

    /// Whether the CRI plugin answers (after a containerd restart it takes a moment).
    pub fn answers(&self) -> bool {
        let mut client = self.client.clone();
        let request = ListContainersRequest::default();
        self.runtime
            .block_on(client.list_containers(request))
            .is_ok()
    }

    pub fn run_pod(&self, pod: &Pod) -> String {
        let request = RunPodSandboxRequest {
            config: Some(pod.config()),
            runtime_handler: pod.handler.clone(),
        };
        let mut client = self.client.clone();
        self.runtime
            .block_on(client.run_pod_sandbox(request))
            .expect("RunPodSandbox")
            .into_inner()
            .pod_sandbox_id
    }

    /// CreateContainer of `command` in `image`, with host directories mounted as given.
    pub fn create_container(
        &self,
        pod_id: &str,
        pod: &Pod,
        name: &str,
        image: &str,
        command: &[&str],
        mounts: &[(&str, &Path)],
    ) -> String {
        self.create_container_attempt(pod_id, pod, (name, 0), image, command, mounts)
    }

    /// The same, as the kubelet creates a container again after it exited: the same name in
    /// the same sandbox, its restart count as the attempt.
    pub fn create_container_attempt(
        &self,
        pod_id: &str,
        pod: &Pod,
        (name, attempt): (&str, u32),
        image: &str,
        command: &[&str],
        mounts: &[(&str, &Path)],
    ) -> String {
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: name.into(),
                attempt,
            }),
            image: Some(ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            command: command.iter().map(|s| s.to_string()).collect(),
            mounts: mounts
                .iter()
                .map(|(inside, host)| Mount {
                    container_path: inside.to_string(),
                    host_path: host.display().to_string(),
                    ..Default::default()
                })
                .collect(),
            log_path: format!("{name}.{attempt}.log"),
            linux: Some(LinuxContainerConfig {
                security_context: Some(LinuxContainerSecurityContext {
                    namespace_options: Some(pod.namespaces()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let request = CreateContainerRequest {
            pod_sandbox_id: pod_id.into(),
            config: Some(config),
            sandbox_config: Some(pod.config()),
        };
        let mut client = self.client.clone();
        self.runtime
            .block_on(client.create_container(request))
            .expect("CreateContainer")
            .into_inner()
            .container_id
    }

    pub fn start_container(&self, id: &str) {
        let mut client = self.client.clone();
        let request = StartContainerRequest {
            container_id: id.into(),
        };
        self.runtime
            .block_on(client.start_container(request))
            .expect("StartContainer");
    }

    /// StopContainer with the kubelet's timeout: the stop signal, SIGKILL after `timeout`
    /// seconds.
    pub fn stop_container(&self, id: &str, timeout: i64) {
        let mut client = self.client.clone();
        let request = StopContainerRequest {
            container_id: id.into(),
            timeout,
        };
        self.runtime
            .block_on(client.stop_container(request))
            .expect("StopContainer");
    }

    pub fn remove_container(&self, id: &str) {
        let mut client = self.client.clone();
        let request = RemoveContainerRequest {
            container_id: id.into(),
        };
        self.runtime
            .block_on(client.remove_container(request))
            .expect("RemoveContainer");
    }

    pub fn container_status(&self, id: &str) -> ContainerStatus {
        let mut client = self.client.clone();
        let request = ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        };
        self.runtime
            .block_on(client.container_status(request))
            .expect("ContainerStatus")
            .into_inner()
            .status
            .expect("no status")
    }

    /// ExecSync: stdout, stderr and the exit code.
    pub fn exec_sync(&self, id: &str, cmd: &[&str]) -> (String, String, i32) {
        let mut client = self.client.clone();
        let request = ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: 30,
        };
        let out = self
            .runtime
            .block_on(client.exec_sync(request))
            .expect("ExecSync")
            .into_inner();
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            out.exit_code,
        )
    }

    /// ListContainers of one pod: the ids.
    pub fn list_containers(&self, pod_id: &str) -> Vec<String> {
        let mut client = self.client.clone();
        let request = ListContainersRequest {
            filter: Some(ContainerFilter {
                pod_sandbox_id: pod_id.into(),
                ..Default::default()
            }),
        };
        self.runtime
            .block_on(client.list_containers(request))
            .expect("ListContainers")
            .into_inner()
            .containers
            .into_iter()
            .map(|c| c.id)
            .collect()
    }

    /// StopPodSandbox and RemovePodSandbox, as the kubelet tears a pod down.
    pub fn remove_pod(&self, pod_id: &str) {
        let mut client = self.client.clone();
        self.runtime
            .block_on(client.stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: pod_id.into(),
            }))
            .expect("StopPodSandbox");
        self.runtime
            .block_on(client.remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: pod_id.into(),
            }))
            .expect("RemovePodSandbox");
    }
}
