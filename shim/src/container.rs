//! A runc container as the hook engine sees it: exec through `runc exec`, connections from its
//! network namespace, signals to its init process.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use lifecycle_hooks::{Container, ExecOutput, ExecRequest};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::time::sleep_until;

use crate::netns;
use crate::output::{HookOutput, Sink};
use crate::reaper::Exit;
use crate::runc::{Runc, RuncError};

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error(transparent)]
    Runc(#[from] RuncError),
    #[error("cannot capture the hook's output: {0}")]
    Output(#[source] io::Error),
    #[error("cannot signal the container's init process: {0}")]
    Signal(#[source] nix::Error),
    #[error(transparent)]
    Sidecar(#[from] crate::sidecar::SidecarError),
    #[error(transparent)]
    Once(io::Error),
}

/// Where the container's signals are sent, which depends on how it was started.
#[derive(Debug, Clone, Copy)]
pub enum SignalRoute {
    /// After `runc create` we are the init process's parent (as subreaper): signal it directly.
    Init,
    /// `runc run` is our child and the init's parent. It forwards the signals it gets; SIGKILL,
    /// which it cannot catch, goes through `runc kill`.
    Runc { pid: i32 },
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
            Ok(self.runc.exec(&self.id, &request, pid_file, writer)?)
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
        }
        .map_err(ContainerError::Signal)
    }
}

/// Starts a hook's process with `start` (given the write end of its output pipe and the pid
/// file runc is to write), streams its output to `sink`, and kills its process group at the
/// request's deadline or when this future is dropped.
pub async fn supervise_hook(
    request: &ExecRequest<'_>,
    sink: &Sink,
    pid_file: PathBuf,
    start: impl FnOnce(
        std::os::fd::OwnedFd,
        &Path,
    ) -> Result<(std::process::Child, Exit), ContainerError>,
) -> Result<ExecOutput, ContainerError> {
    let (reader, writer) = nix::unistd::pipe().map_err(|e| ContainerError::Output(e.into()))?;
    let mut output =
        HookOutput::new(reader, request.label, sink.clone()).map_err(ContainerError::Output)?;
    let (child, mut exit) = start(writer, &pid_file)?;
    let mut guard = KillOnDrop {
        runc: Some(child.id() as i32),
        pid_file,
    };
    let mut timed_out = false;
    let deadline = request.deadline;
    let status = loop {
        tokio::select! {
            status = &mut exit => break status,
            () = output.read_some(), if !output.is_eof() => {}
            () = sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() && !timed_out => {
                timed_out = true;
                guard.kill();
            }
        }
    };
    guard.runc = None;
    output.drain();
    Ok(ExecOutput {
        status,
        timed_out,
        output: output.finish(),
    })
}

/// The kernel's PF_EXITING task flag (include/linux/sched.h), set as soon as a process begins to
/// exit and before a PID namespace's other processes are killed.
const PF_EXITING: u64 = 0x4;

/// Whether `pid` is exiting, a zombie, or gone, from `/proc/PID/stat`.
fn init_is_exiting(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    // Fields after the command name, which is in parentheses and may contain anything.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    let state = fields.first().copied().unwrap_or("X");
    let flags: u64 = fields.get(6).and_then(|f| f.parse().ok()).unwrap_or(0);
    matches!(state, "Z" | "X" | "x") || flags & PF_EXITING != 0
}

/// Kills a hook's process group (and the `runc exec` that started it) when the hook times out
/// or its future is dropped before it finished.
struct KillOnDrop {
    /// The `runc exec` process while it runs.
    runc: Option<i32>,
    pid_file: PathBuf,
}

impl KillOnDrop {
    fn kill(&mut self) {
        // runc makes the exec'd process a session leader, so its group holds the hook and the
        // children it did not move elsewhere; those that did (setsid) are found as its
        // descendants, before anything is killed and they are reparented.
        if let Some(hook) = std::fs::read_to_string(&self.pid_file)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
            .filter(|&pid| pid > 1)
        {
            let escaped = descendants(hook);
            let _ = kill(Pid::from_raw(-hook), Signal::SIGKILL);
            for pid in escaped {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        // Before runc wrote the pid file, the process is still in runc's own group.
        if let Some(runc) = self.runc.filter(|&pid| pid > 1) {
            let _ = kill(Pid::from_raw(-runc), Signal::SIGKILL);
        }
    }
}

/// The processes below `pid`, from `/proc/PID/task/TID/children`.
fn descendants(pid: i32) -> Vec<i32> {
    let mut found = Vec::new();
    let mut todo = vec![pid];
    while let Some(parent) = todo.pop() {
        let tasks = std::fs::read_dir(format!("/proc/{parent}/task"));
        for task in tasks.into_iter().flatten().flatten() {
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
                if child > 1 && !found.contains(&child) {
                    found.push(child);
                    todo.push(child);
                }
            }
        }
    }
    found
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.runc.is_some() {
            self.kill();
        }
        let _ = std::fs::remove_file(&self.pid_file);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descendants_are_found_through_proc() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 1000 & wait"])
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        while descendants(pid).is_empty() {
            std::thread::yield_now();
        }
        let below = descendants(pid);
        assert_eq!(below.len(), 1, "{below:?}");
        let _ = kill(Pid::from_raw(below[0]), Signal::SIGKILL);
        child.wait().unwrap();
        assert!(descendants(std::process::id() as i32)
            .iter()
            .all(|&p| p != pid));
    }

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
