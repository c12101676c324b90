//! postStop runs: each handler is a fresh container from the same bundle, started after the
//! entrypoint has exited (its namespaces are gone). The bundle is never changed: the run gets
//! a derived copy of its config in the shim's state directory, with the handler's command, the
//! same rootfs, mounts and user, a cgroup of its own, and no OCI hooks (networking hooks such
//! as Docker's are for the container, not for its cleanup).

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};

use lifecycle_hooks::{run_phase, Container, ExecOutput, ExecRequest, HookReport, Phase, Stages};
use nix::sys::signal::Signal;
use serde_json::Value;

use crate::container::{supervise_hook, ContainerError};
use crate::output::Sink;
use crate::runc::{ProcessIo, Runc};

pub struct PostStopContainer<'a> {
    runc: &'a Runc,
    id: String,
    bundle: PathBuf,
    config: Value,
    state: PathBuf,
    runs: AtomicU64,
    sink: Sink,
}

/// Runs the post-stop phase for container `id`; returns its failure, if any.
pub async fn run_post_stop(
    runc: &Runc,
    id: &str,
    bundle: &Path,
    state: &Path,
    stages: &Stages,
    sink: Sink,
) -> Option<HookReport> {
    let config = match std::fs::read(bundle.join("config.json"))
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).map_err(io::Error::from))
    {
        Ok(config) => config,
        Err(error) => {
            tracing::warn!(%error, "postStop skipped: the bundle's config.json cannot be read");
            return None;
        }
    };
    let c = PostStopContainer {
        runc,
        id: id.to_owned(),
        bundle: bundle.to_owned(),
        config,
        state: state.to_owned(),
        runs: AtomicU64::new(0),
        sink,
    };
    run_phase(&c, Phase::PostStop, stages, None).await
}

impl PostStopContainer<'_> {
    /// Writes the derived bundle for one run and returns its directory.
    fn derive(&self, n: u64, request: &ExecRequest<'_>) -> io::Result<PathBuf> {
        let mut config = self.config.clone();
        let process = &mut config["process"];
        process["args"] = request.argv.into();
        process["terminal"] = false.into();
        if let Some(dir) = request.working_dir {
            process["cwd"] = dir.into();
        }
        let env = process["env"].as_array().cloned().unwrap_or_default();
        let extra = request
            .env
            .iter()
            .map(|(k, v)| Value::from(format!("{k}={v}")));
        process["env"] = env.into_iter().chain(extra).collect::<Vec<_>>().into();
        let root = config["root"]["path"].as_str().unwrap_or("rootfs");
        config["root"]["path"] = self.bundle.join(root).to_string_lossy().into_owned().into();
        if let Some(path) = config["linux"]["cgroupsPath"].as_str() {
            config["linux"]["cgroupsPath"] = format!("{path}-poststop-{n}").into();
        }
        if let Some(object) = config.as_object_mut() {
            object.remove("hooks");
        }
        let dir = self.state.join(format!("poststop-{n}"));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("config.json"), serde_json::to_vec(&config)?)?;
        Ok(dir)
    }
}

impl Container for PostStopContainer<'_> {
    type Error = ContainerError;

    fn id(&self) -> &str {
        &self.id
    }

    async fn exec(&self, request: ExecRequest<'_>) -> Result<ExecOutput, ContainerError> {
        let n = self.runs.fetch_add(1, Ordering::Relaxed) + 1;
        let dir = self.derive(n, &request).map_err(ContainerError::Output)?;
        let run_id = format!("{}-poststop-{n}", self.id);
        let result = supervise_hook(&request, &self.sink, dir.join("pid"), |writer, pid_file| {
            let stderr = writer.try_clone().map_err(ContainerError::Output)?;
            let io = ProcessIo {
                stdin: Stdio::null(),
                stdout: Stdio::from(writer),
                stderr: Stdio::from(stderr),
                console_socket: None,
            };
            Ok(self
                .runc
                .run(&run_id, &dir, pid_file, &dir.join("runc.log"), io)?)
        })
        .await;
        // runc run deletes its container unless it was killed (at a timeout).
        let _ = self.runc.delete(&run_id).await;
        let _ = std::fs::remove_dir_all(&dir);
        result
    }

    async fn connect(&self, _addr: SocketAddr) -> io::Result<tokio::net::TcpStream> {
        // Validation refuses httpGet in postStop.
        Err(io::Error::other(
            "a postStop run has no network to connect in",
        ))
    }

    fn has_exited(&self) -> bool {
        false
    }

    async fn signal(&self, _signal: Signal) -> Result<(), ContainerError> {
        Ok(())
    }
}
