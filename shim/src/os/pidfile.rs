//! Waiting for runc's `--pid-file`: `runc run` writes it (by a rename) once the entrypoint has
//! started, which is the moment PostStart fires.
//!
//! The directory is watched with dnotify, which reports changes as SIGIO. inotify would do, but
//! closing an inotify instance waits for the kernel's SRCU grace period (10-20 ms here), which
//! every `run` would pay; dnotify marks belong to one global group that is never torn down.

// fcntl(F_NOTIFY) has no safe wrapper.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use lifecycle_hooks::ExitStatus;
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::os::reaper::Exit;

// include/uapi/linux/fcntl.h
const DN_MODIFY: libc::c_int = 0x2;
const DN_CREATE: libc::c_int = 0x4;
const DN_RENAME: libc::c_int = 0x10;
const DN_MULTISHOT: libc::c_int = 0x8000_0000_u32 as libc::c_int;

/// What became of a container whose start was awaited.
pub enum Started {
    /// Running, with the host pid of its init process.
    Running(i32),
    /// The runtime exited before the pid file appeared (a container that ended at once, or a
    /// failure).
    Exited(ExitStatus),
}

/// A watch on the directory that will hold the pid file; set it up before starting runc.
pub struct PidFileWatch {
    /// Open for as long as the watch lasts; closing it removes the watch.
    _dir: File,
    sigio: Signal,
}

impl PidFileWatch {
    pub fn new(dir: &Path) -> io::Result<PidFileWatch> {
        // The handler first: SIGIO's default action would end the shim.
        let sigio = signal(SignalKind::io())?;
        let dir = File::open(dir)?;
        // SAFETY: a plain fcntl on a descriptor we own, with an int argument as F_NOTIFY takes.
        let rc = unsafe {
            libc::fcntl(
                dir.as_raw_fd(),
                libc::F_NOTIFY,
                DN_CREATE | DN_RENAME | DN_MODIFY | DN_MULTISHOT,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(PidFileWatch { _dir: dir, sigio })
    }

    /// Waits until `path` holds a pid, or `exit` (the runtime's exit) resolves first.
    pub async fn wait(&mut self, path: &Path, exit: &mut Exit) -> Started {
        loop {
            if let Some(pid) = read_pid(path) {
                return Started::Running(pid);
            }
            tokio::select! {
                status = &mut *exit => {
                    // The file may have landed just before runc exited.
                    return read_pid(path).map_or(Started::Exited(status), Started::Running);
                }
                _ = self.sigio.recv() => {}
            }
        }
    }
}

pub fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path)
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|&pid| pid > 0)
}
