//! A runc container as the hook engine sees it: exec through `runc exec`, connections from its
//! network namespace, signals to its init process.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use lifecycle_hooks::{Container, ExecOutput, ExecRequest};
use nix::sys::signal::Signal;

use crate::lifecycle::hook_process::supervise_hook;
use crate::lifecycle::output::Sink;
use crate::os::netns;
use crate::os::runc::{Runc, RuncError};

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error(transparent)]
    Runc(#[from] RuncError),
    #[error("cannot capture the hook's output: {0}")]
    Output(#[from] io::Error),
    #[error("cannot signal the container's init process: {0}")]
    Signal(#[source] nix::Error),
    #[error(transparent)]
    Sidecar(#[from] crate::lifecycle::sidecar::SidecarError),
    #[error(transparent)]
    Once(io::Error),
    #[error(transparent)]
    Watch(io::Error),
}

/// Where the container's signals are sent, which depends on how it was started.
#[derive(Debug, Clone, Copy)]
pub enum SignalRoute {
    /// After `runc create` we are the init process's parent (as subreaper): signal it directly.
    Init,
    /// `runc run` is our child and the init's parent. It forwards the signals it gets; SIGKILL,
    /// which it cannot catch, goes through `runc kill`.
    Runc { pid: i32 },
    /// The init is someone else's child (an engine's, under `lifecycle-runc`): signal it
    /// through this pidfd, which cannot reach another process that took its pid.
    Pidfd(std::os::fd::RawFd),
}

pub struct RuncContainer<'a> {
    runc: &'a Runc,
    id: String,
    /// Host pid of the container's init process.
    pid: i32,
    route: SignalRoute,
    /// Private directory for exec pid files.
    state: PathBuf,
    execs: AtomicU64,
    sink: Sink,
}

impl<'a> RuncContainer<'a> {
    pub fn new(
        runc: &'a Runc,
        id: &str,
        pid: i32,
        route: SignalRoute,
        state: &Path,
        sink: Sink,
    ) -> RuncContainer<'a> {
        RuncContainer {
            runc,
            id: id.to_owned(),
            pid,
            route,
            state: state.to_owned(),
            execs: AtomicU64::new(0),
            sink,
        }
    }

    pub fn runc(&self) -> &Runc {
        self.runc
    }

    /// Starts the entrypoint of the created container.
    pub async fn start(&self) -> Result<(), RuncError> {
        self.runc.start(&self.id).await
    }
}

impl Container for RuncContainer<'_> {
    type Error = ContainerError;

    fn id(&self) -> &str {
        &self.id
    }

    async fn exec(&self, request: ExecRequest<'_>) -> Result<ExecOutput, ContainerError> {
        let n = self.execs.fetch_add(1, Ordering::Relaxed) + 1;
        let pid_file = self.state.join(format!("exec-{n}.pid"));
        supervise_hook(&request, &self.sink, pid_file, |writer, pid_file| {
            Ok(self.runc.exec_hook(&self.id, &request, pid_file, writer)?)
        })
        .await
    }

    async fn connect(&self, addr: SocketAddr) -> io::Result<tokio::net::TcpStream> {
        netns::connect(self.pid, addr).await
    }

    fn has_exited(&self) -> bool {
        init_is_exiting(self.pid)
    }

    async fn signal(&self, signal: Signal) -> Result<(), ContainerError> {
        let reaper = self.runc.reaper();
        match self.route {
            SignalRoute::Init => reaper.kill(self.pid, signal),
            SignalRoute::Runc { .. } if signal == Signal::SIGKILL => {
                return Ok(self.runc.kill(&self.id, signal, false).await?);
            }
            SignalRoute::Runc { pid } => reaper.kill(pid, signal),
            SignalRoute::Pidfd(fd) => crate::os::pidfd::send_signal(fd, signal),
        }
        .map_err(ContainerError::Signal)
    }
}

/// The kernel's PF_EXITING task flag (include/linux/sched.h), set as soon as a process begins to
/// exit and before a PID namespace's other processes are killed.
const PF_EXITING: u64 = 0x4;

/// Whether `pid` is exiting, a zombie, or gone, from `/proc/PID/stat`.
fn init_is_exiting(pid: i32) -> bool {
    let Some(fields) = crate::os::proc_stat(pid) else {
        return true;
    };
    let state = fields.first().map_or("X", String::as_str);
    let flags: u64 = fields.get(6).and_then(|f| f.parse().ok()).unwrap_or(0);
    matches!(state, "Z" | "X" | "x") || flags & PF_EXITING != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exiting_is_read_from_proc() {
        assert!(!init_is_exiting(std::process::id() as i32));
        assert!(init_is_exiting(i32::MAX));
        // A child that has exited but is not reaped yet is a zombie.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        while !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap()
            .contains(") Z")
        {
            std::thread::yield_now();
        }
        assert!(init_is_exiting(pid));
        child.wait().unwrap();
    }
}
