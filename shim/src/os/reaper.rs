//! The one place that waits for children. The shim is a child subreaper, so the container's init
//! (whose parent, `runc create`, exits) and any process orphaned below us end up here.
//!
//! Every spawn registers its pid under the same lock the reaping loop holds, so no exit status
//! can be taken before someone is listening for it; statuses nobody asked for yet are kept for a
//! while, because the container's pid is only known after `runc create` has exited.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use lifecycle_hooks::ExitStatus;
use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;

/// How many unclaimed exit statuses are kept; older ones are dropped.
const MAX_ORPHANS: usize = 1024;

#[derive(Clone)]
pub struct Reaper {
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    waiting: HashMap<i32, oneshot::Sender<ExitStatus>>,
    /// Exits nobody was waiting for, with the generation they were reaped in.
    orphans: HashMap<i32, (u64, ExitStatus)>,
    generation: u64,
}

/// A point in the reaper's history; see [`Reaper::watch`].
#[derive(Debug, Clone, Copy)]
pub struct Generation(u64);

impl Reaper {
    /// Makes this process a child subreaper and starts reaping on SIGCHLD. Must be called inside
    /// the tokio runtime, before anything is spawned.
    pub fn start() -> io::Result<Reaper> {
        nix::sys::prctl::set_child_subreaper(true)?;
        let mut sigchld = signal(SignalKind::child())?;
        let reaper = Reaper {
            state: Arc::default(),
        };
        let task = reaper.clone();
        tokio::spawn(async move {
            loop {
                task.reap();
                if sigchld.recv().await.is_none() {
                    break;
                }
            }
        });
        Ok(reaper)
    }

    /// Spawns `command` and returns its exit, registered before the child can be reaped.
    pub fn spawn(&self, command: &mut Command) -> io::Result<(Child, Exit)> {
        let mut state = self.lock();
        let child = command.spawn()?;
        let pid = child.id() as i32;
        // A status kept for an earlier process with this pid is stale now.
        state.orphans.remove(&pid);
        let (tx, rx) = oneshot::channel();
        state.waiting.insert(pid, tx);
        Ok((child, Exit(rx)))
    }

    /// Now, for a later [`Reaper::watch`].
    pub fn generation(&self) -> Generation {
        Generation(self.lock().generation)
    }

    /// The exit of a process we did not spawn but will reap (a grandchild that is reparented to
    /// us). Only statuses reaped after `since` count, so a stale one for a reused pid cannot.
    pub fn watch(&self, pid: i32, since: Generation) -> Exit {
        let mut state = self.lock();
        let (tx, rx) = oneshot::channel();
        match state.orphans.remove(&pid) {
            Some((generation, status)) if generation > since.0 => {
                let _ = tx.send(status);
            }
            _ => {
                state.waiting.insert(pid, tx);
            }
        }
        Exit(rx)
    }

    /// Signals a process we are waiting for. Under the reaping lock, so the pid cannot have been
    /// reaped and reused in between: once it has exited this is `ESRCH`.
    pub fn kill(&self, pid: i32, signal: Signal) -> nix::Result<()> {
        let state = self.lock();
        if !state.waiting.contains_key(&pid) {
            return Err(Errno::ESRCH);
        }
        kill(Pid::from_raw(pid), signal)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn reap(&self) {
        let mut state = self.lock();
        loop {
            let (pid, status) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, ExitStatus::Exited(code)),
                Ok(WaitStatus::Signaled(pid, signal, _)) => (pid, ExitStatus::Signaled(signal)),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(error) => {
                    tracing::warn!(%error, "waitpid failed");
                    return;
                }
            };
            state.deliver(pid.as_raw(), status);
        }
    }
}

impl State {
    fn deliver(&mut self, pid: i32, status: ExitStatus) {
        self.generation += 1;
        if let Some(tx) = self.waiting.remove(&pid) {
            let _ = tx.send(status);
            return;
        }
        tracing::debug!(pid, %status, "reaped an orphan");
        if self.orphans.len() >= MAX_ORPHANS {
            let oldest = self.generation.saturating_sub(MAX_ORPHANS as u64 / 2);
            self.orphans
                .retain(|_, (generation, _)| *generation > oldest);
        }
        self.orphans.insert(pid, (self.generation, status));
    }
}

/// Resolves to a process's exit status once it has been reaped.
#[derive(Debug)]
pub struct Exit(oneshot::Receiver<ExitStatus>);

impl Future for Exit {
    type Output = ExitStatus;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<ExitStatus> {
        // The sender lives in the reaper until delivery; it is only dropped when the runtime is
        // shutting down, and then nobody is left to care about the status.
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(ExitStatus::Signaled(Signal::SIGKILL)))
    }
}
