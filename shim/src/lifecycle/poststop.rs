//! postStop runs: each handler is a fresh container from a bundle derived from the
//! container's (see [`crate::bundle::derived`]), started after the entrypoint has exited (its
//! namespaces are gone).

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};

use lifecycle_hooks::{run_phase, Container, ExecOutput, ExecRequest, HookReport, Phase, Stages};
use nix::sys::signal::Signal;

use crate::bundle::derived::BaseBundle;
use crate::lifecycle::container::ContainerError;
use crate::lifecycle::hook_process::supervise_hook;
use crate::lifecycle::output::Sink;
use crate::os::runc::{ProcessIo, Runc};

pub struct PostStopContainer<'a> {
    runc: &'a Runc,
    id: String,
    base: BaseBundle,
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
    let base = match BaseBundle::read(bundle) {
        Ok(base) => base,
        Err(error) => {
            tracing::warn!(%error, "postStop skipped: the bundle's config.json cannot be read");
            return None;
        }
    };
    let c = PostStopContainer {
        runc,
        id: id.to_owned(),
        base,
        state: state.to_owned(),
        runs: AtomicU64::new(0),
        sink,
    };
    run_phase(&c, Phase::PostStop, stages, None).await
}

impl Container for PostStopContainer<'_> {
    type Error = ContainerError;

    fn id(&self) -> &str {
        &self.id
    }

    async fn exec(&self, request: ExecRequest<'_>) -> Result<ExecOutput, ContainerError> {
        let n = self.runs.fetch_add(1, Ordering::Relaxed) + 1;
        let dir = self.state.join(format!("poststop-{n}"));
        self.base
            .derive(&dir, &format!("poststop-{n}"), &request, None)
            .map_err(ContainerError::Output)?;
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
