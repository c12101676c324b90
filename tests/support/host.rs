//! What the Podman and Docker harnesses share on the host: CLI calls bounded in time with their
//! output in files, processes found by what their command line mentions, unmounting what an
//! engine left under a harness directory, and stopping a daemon.

#![allow(dead_code)] // each suite uses its own part of the helpers

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::support::{make_busybox_rootfs, write_executable, PATIENCE};

/// The name the engine harnesses give the runtime under test (containers.conf
/// `[engine.runtimes]`, daemon.json `runtimes`).
pub const RUNTIME_NAME: &str = "lifecycle";
/// The busybox image each engine harness imports: `PATH=/bin`, command `/pause`, no entrypoint.
pub const IMAGE: &str = "localhost/busybox:lifecycle";

/// runc's absolute path (an engine's runtime must be given as a path).
pub fn runc_path() -> PathBuf {
    let out = Command::new("sh")
        .args(["-c", "command -v runc"])
        .output()
        .expect("cannot run sh");
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(path.starts_with('/'), "runc is not on PATH");
    PathBuf::from(path)
}

/// Runs `command` to completion with stdin from /dev/null and its output in files under
/// `scratch` (not pipes: a detached container's monitor that kept a pipe open would hang the
/// read, while here only the command's own exit is awaited). Fails the test after [`PATIENCE`].
#[track_caller]
pub fn run_bounded(command: &mut Command, scratch: &Path) -> Output {
    let what = format!("{command:?}");
    match try_run_bounded(command, scratch, PATIENCE) {
        Ok(output) => output,
        Err(partial) => panic!(
            "{what} did not finish within {PATIENCE:?}; stdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&partial.stdout),
            String::from_utf8_lossy(&partial.stderr)
        ),
    }
}

/// The same without panicking, for cleanup on drop: `Err` holds what the command wrote before
/// it was killed at `limit`.
pub fn try_run_bounded(
    command: &mut Command,
    scratch: &Path,
    limit: Duration,
) -> Result<Output, Output> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let out_dir = scratch.join("out");
    let _ = fs::create_dir_all(&out_dir);
    let stdout = out_dir.join(format!("{n}.stdout"));
    let stderr = out_dir.join(format!("{n}.stderr"));
    let read = |status| Output {
        status,
        stdout: fs::read(&stdout).unwrap_or_default(),
        stderr: fs::read(&stderr).unwrap_or_default(),
    };
    let spawned = File::create(&stdout)
        .and_then(|out| Ok((out, File::create(&stderr)?)))
        .and_then(|(out, err)| command.stdin(Stdio::null()).stdout(out).stderr(err).spawn());
    let mut child = match spawned {
        Ok(child) => child,
        Err(error) => {
            let _ = fs::write(&stderr, format!("cannot run {command:?}: {error}"));
            return Err(read(failed_status()));
        }
    };
    match wait_within(&mut child, limit) {
        Some(status) => Ok(read(status)),
        None => {
            let _ = child.kill();
            let status = child.wait().unwrap_or_else(|_| failed_status());
            Err(read(status))
        }
    }
}

/// A status for a command that could not be run or waited for.
fn failed_status() -> ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    ExitStatus::from_raw(127 << 8)
}

/// Waits for `child` for at most `limit`; `None` if it is still running.
pub fn wait_within(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => return None,
        }
    }
}

/// SIGTERM, then SIGKILL if the daemon has not exited within [`PATIENCE`]; never panics, since
/// it runs on drop. Returns how long the daemon took to exit.
pub fn stop_daemon(child: &mut Child, name: &str) -> Duration {
    let started = Instant::now();
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    if wait_within(child, PATIENCE).is_none() {
        eprintln!("{name} ignored SIGTERM for {PATIENCE:?}; killing it");
        let _ = child.kill();
        let _ = child.wait();
    }
    started.elapsed()
}

/// A process on the host: its pid and its command line, arguments joined by spaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub pid: i32,
    pub cmdline: String,
}

/// Processes whose command line has `text` in one of its arguments, e.g. the harness
/// directory: the engine's monitors (conmon, the Go shim) and cleanup processes all name it.
pub fn processes_mentioning(text: &str) -> Vec<Process> {
    processes_where(|args| args.iter().any(|a| a.contains(text)))
}

/// Processes whose arguments satisfy `matches`; zombies (no command line) are not listed.
pub fn processes_where(mut matches: impl FnMut(&[String]) -> bool) -> Vec<Process> {
    let me = std::process::id() as i32;
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if pid != me && !args.is_empty() && matches(&args) {
            found.push(Process {
                pid,
                cmdline: args.join(" "),
            });
        }
    }
    found
}

/// Waits up to `limit` for the processes mentioning `text` to exit, then SIGKILLs the rest;
/// returns those it had to kill.
pub fn reap_processes_mentioning(text: &str, limit: Duration) -> Vec<Process> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if processes_mentioning(text).is_empty() {
            return Vec::new();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let left = processes_mentioning(text);
    for process in &left {
        // Never a process group or pid 1: only the exact pids found.
        if process.pid > 1 {
            let _ = kill(Pid::from_raw(process.pid), Signal::SIGKILL);
        }
    }
    left
}

/// Mount points at or under `dir` in this mount namespace, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = text
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_mount_path)
        .filter(|point| point.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// mountinfo escapes spaces, tabs, newlines and backslashes as octal (`\040`).
fn unescape_mount_path(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    PathBuf::from(String::from_utf8_lossy(&out).into_owned())
}

/// Lazily unmounts everything at or under `dir`, deepest first (an engine's storage home is
/// often a bind mount of itself, with overlay and shm mounts below it); returns what it
/// unmounted. Never panics.
pub fn unmount_under(dir: &Path) -> Vec<PathBuf> {
    let mounts = mounts_under(dir);
    for point in &mounts {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(point)
            .stderr(Stdio::null())
            .status();
    }
    mounts
}

/// Writes a busybox rootfs (see [`make_busybox_rootfs`]) with a `/pause` script (idles until
/// TERM or INT, then exits 0: a pod's infra process) as a tar file at `tar`, for `podman
/// import` / `docker import`.
pub fn busybox_tar(scratch: &Path, tar: &Path) {
    let rootfs = scratch.join("busybox-rootfs");
    make_busybox_rootfs(&rootfs);
    write_executable(
        &rootfs,
        "pause",
        "#!/bin/sh\ntrap 'exit 0' TERM INT\nwhile :; do sleep 1000 & wait $!; done\n",
    );
    let out = Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(tar)
        .arg(".")
        .output()
        .expect("cannot run tar");
    assert!(
        out.status.success(),
        "tar of the busybox rootfs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::remove_dir_all(&rootfs).unwrap();
}

/// The `--change` instructions of both engines' imports of [`busybox_tar`]: applets on PATH,
/// and `/pause` as the default command (the infra container of a Podman pod runs it).
pub const IMAGE_CHANGES: [&str; 4] = ["--change", "ENV PATH=/bin", "--change", "CMD [\"/pause\"]"];

/// `sha256sum` of `text`, as lowercase hex.
pub fn sha256_hex(text: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", "printf %s \"$1\" | sha256sum", "sh", text])
        .output()
        .expect("cannot run sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// The stdout of a CLI call that must have succeeded; else fails the test with what `what`
/// printed.
#[track_caller]
pub fn succeeded(what: &str, args: &[&str], out: Output) -> String {
    assert!(
        out.status.success(),
        "{what} {args:?} exited with {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        out.stdout_text(),
        out.stderr_text()
    );
    out.stdout_text()
}

/// An engine CLI's result, with helpers for assertions.
pub trait OutputExt {
    fn stdout_text(&self) -> String;
    fn stderr_text(&self) -> String;
    /// The exit code; a CLI killed by a signal fails the test.
    fn code(&self) -> i32;
}

impl OutputExt for Output {
    fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    fn code(&self) -> i32 {
        self.status
            .code()
            .unwrap_or_else(|| panic!("killed by a signal: {}", self.status))
    }
}
