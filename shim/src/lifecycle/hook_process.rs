//! A hook's process: its output streamed to a sink, killed with everything it started (its
//! process group and any daemon it left) at its deadline or when its future is dropped.

use std::path::{Path, PathBuf};

use lifecycle_hooks::{ExecOutput, ExecRequest};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::time::sleep_until;

use super::output::{HookOutput, Sink};
use crate::os::reaper::Exit;

/// Starts a hook's process with `start` (given the write end of its output pipe and the pid
/// file runc is to write), streams its output to `sink`, and kills its process group at the
/// request's deadline or when this future is dropped. A failure to capture its output is an
/// `io::Error` for the caller's error type.
pub async fn supervise_hook<E: From<std::io::Error>>(
    request: &ExecRequest<'_>,
    sink: &Sink,
    pid_file: PathBuf,
    start: impl FnOnce(std::os::fd::OwnedFd, &Path) -> Result<(std::process::Child, Exit), E>,
) -> Result<ExecOutput, E> {
    let (reader, writer) = nix::unistd::pipe().map_err(std::io::Error::from)?;
    let mut output = HookOutput::new(reader, request.label, sink.clone())?;
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
}
