//! pidfds: a handle on a process that is not our child (under `lifecycle-runc`, the container's
//! init is the engine's), to learn of its exit without polling and to signal it without
//! reaching another process that took its pid.

// Unsafe: pidfd_open and pidfd_send_signal have no safe wrapper in nix.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use lifecycle_hooks::ExitStatus;
use nix::sys::signal::Signal;
use tokio::io::unix::AsyncFd;

/// A process's pidfd; `None` if the process is gone.
pub fn open(pid: i32) -> io::Result<Option<OwnedFd>> {
    // SAFETY: pidfd_open takes two integers and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        let error = io::Error::last_os_error();
        return match error.raw_os_error() {
            Some(libc::ESRCH) => Ok(None),
            _ => Err(error),
        };
    }
    // SAFETY: a new fd that nothing else owns.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(fd as RawFd) }))
}

pub fn send_signal(fd: RawFd, signal: Signal) -> nix::Result<()> {
    // SAFETY: pidfd_send_signal with no siginfo reads nothing but its integer arguments.
    let result = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd,
            signal as i32,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if result < 0 {
        return Err(nix::Error::last());
    }
    Ok(())
}

/// Watches for the process's exit: its pidfd becomes readable.
pub fn watch(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the OwnedFd is moved in and stays open, the same fd, for the AsyncFd's life.
    unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(io::Error::from)
}

/// Resolves when the process has exited, with its status if it could still be read (its
/// parent may have reaped it already: then it is reported as 0).
pub async fn exited(watch: AsyncFd<OwnedFd>, pid: i32) -> ExitStatus {
    let _ = watch.readable().await;
    zombie_status(pid).unwrap_or(ExitStatus::Exited(0))
}

/// The wait status of an exited process that its parent has not reaped yet (field 52 of
/// `/proc/PID/stat`).
fn zombie_status(pid: i32) -> Option<ExitStatus> {
    let fields = crate::os::proc_stat(pid)?;
    if fields.first().map(String::as_str) != Some("Z") {
        return None;
    }
    let status: i32 = fields.get(49)?.parse().ok()?;
    if libc::WIFSIGNALED(status) {
        return Signal::try_from(libc::WTERMSIG(status))
            .ok()
            .map(ExitStatus::Signaled);
    }
    Some(ExitStatus::Exited(libc::WEXITSTATUS(status)))
}
