//! The OCI runtime driver: runc's command line (create, start, exec, delete), each invocation
//! spawned through the [`Reaper`] in its own process group, so a terminal's Ctrl-C reaches only
//! the shim and a timed-out exec can be killed as a group.

use std::future::Future;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use lifecycle_hooks::{ExecRequest, ExitStatus};
use nix::sys::signal::Signal;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;

use crate::os::pidfile::read_pid;
use crate::os::reaper::{Exit, Reaper};

/// How much of runc's stderr is kept for an error message.
const MAX_MESSAGE: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum RuncError {
    #[error("cannot run the OCI runtime {binary:?}: {source}")]
    Spawn { binary: PathBuf, source: io::Error },
    #[error("{binary:?} {action} {id} failed with {status}: {message}")]
    Failed {
        binary: PathBuf,
        action: &'static str,
        id: String,
        status: ExitStatus,
        message: String,
    },
    #[error("the OCI runtime wrote no pid to {path:?}")]
    NoPid { path: PathBuf },
}

impl RuncError {
    /// True when runc refused to create the container because the id is taken: that container
    /// is someone else's and must not be cleaned up.
    pub fn id_taken(&self) -> bool {
        matches!(self, RuncError::Failed { message, .. } if message.contains("already exists") || message.contains("id exists"))
    }
}

impl RuncError {
    /// True when runc could not signal a container because it, or its process, is gone.
    pub fn process_gone(&self) -> bool {
        matches!(self, RuncError::Failed { message, .. } if ["not running", "process already finished", "no such process"].iter().any(|m| message.contains(m)))
    }
}

/// The stdio a container process gets from runc, and where runc sends a terminal's master.
pub struct ProcessIo {
    pub stdin: Stdio,
    pub stdout: Stdio,
    pub stderr: Stdio,
    pub console_socket: Option<PathBuf>,
}

impl ProcessIo {
    /// The shim's own stdio, as `runc run` passes it through.
    pub fn inherit() -> ProcessIo {
        ProcessIo {
            stdin: Stdio::inherit(),
            stdout: Stdio::inherit(),
            stderr: Stdio::inherit(),
            console_socket: None,
        }
    }

    fn apply(self, cmd: &mut Command) {
        if let Some(socket) = &self.console_socket {
            cmd.arg("--console-socket").arg(socket);
        }
        cmd.stdin(self.stdin)
            .stdout(self.stdout)
            .stderr(self.stderr);
    }
}

/// A process runc left running in a container: its host pid and its exit.
pub struct Launched {
    pub pid: i32,
    pub exit: Exit,
}

/// How far [`Runc::create`] takes a container.
#[derive(Debug, Clone, Copy)]
pub enum Until {
    Created,
    Started,
}

/// How runc is invoked: the binary, its global flags, and the flags every create takes. The
/// order of the flags is go-runc's, so a container without hooks sees the same command lines
/// as under containerd's `io.containerd.runc.v2`.
#[derive(Debug, Clone, Default)]
pub struct RuncConfig {
    pub binary: PathBuf,
    /// runc's `--root`.
    pub root: Option<PathBuf>,
    /// runc's `--log` (JSON) for calls that do not name their own.
    pub log: Option<PathBuf>,
    pub systemd_cgroup: bool,
    /// `create --no-pivot`.
    pub no_pivot: bool,
    /// `create --no-new-keyring`.
    pub no_new_keyring: bool,
}

impl RuncConfig {
    pub fn new(binary: PathBuf, root: Option<PathBuf>) -> RuncConfig {
        RuncConfig {
            binary,
            root,
            ..RuncConfig::default()
        }
    }
}

#[derive(Clone)]
pub struct Runc {
    config: RuncConfig,
    reaper: Reaper,
}

impl Runc {
    pub fn new(config: RuncConfig, reaper: Reaper) -> Runc {
        Runc { config, reaper }
    }

    pub fn reaper(&self) -> &Reaper {
        &self.reaper
    }

    /// Runs `action`, a runc call that leaves a process running and writes its pid to
    /// `pid_file` (create, run --detach, exec --detach), and returns its result with that
    /// process. The exit is claimed from before the action began: if the process ends at once,
    /// before its pid is known, the reaper keeps its status for this watch instead of losing it.
    pub async fn launched<T, E: From<RuncError>>(
        &self,
        pid_file: &Path,
        action: impl Future<Output = Result<T, E>>,
    ) -> Result<(T, Launched), E> {
        let since = self.reaper.generation();
        let value = action.await?;
        let pid = read_pid(pid_file).ok_or_else(|| RuncError::NoPid {
            path: pid_file.to_owned(),
        })?;
        let exit = self.reaper.watch(pid, since);
        Ok((value, Launched { pid, exit }))
    }

    /// Creates the container (`runc create`), or creates and starts it (`runc run --detach`),
    /// and returns once runc has; the container's init is then a child of the shim (as
    /// subreaper), its pid in `pid_file`. Its stdio is `io`; runc's own errors are logged as
    /// JSON to `log` so they can be reported.
    pub async fn create(
        &self,
        until: Until,
        id: &str,
        bundle: &Path,
        pid_file: &Path,
        log: &Path,
        io: ProcessIo,
    ) -> Result<(), RuncError> {
        let (action, args): (_, &[&str]) = match until {
            Until::Created => ("create", &["create"]),
            Until::Started => ("run", &["run", "--detach"]),
        };
        let (_, exit) = self.launch(args, id, bundle, pid_file, log, io)?;
        self.succeeded(action, id, exit, log).await
    }

    /// Starts `runc run` in the foreground: it creates and starts the container, forwards the
    /// signals it receives to it, exits with its status and deletes it.
    pub fn run(
        &self,
        id: &str,
        bundle: &Path,
        pid_file: &Path,
        log: &Path,
        io: ProcessIo,
    ) -> Result<(Child, Exit), RuncError> {
        self.launch(&["run"], id, bundle, pid_file, log, io)
    }

    /// `runc create` or `runc run`, which take the same arguments.
    fn launch(
        &self,
        action: &[&str],
        id: &str,
        bundle: &Path,
        pid_file: &Path,
        log: &Path,
        io: ProcessIo,
    ) -> Result<(Child, Exit), RuncError> {
        let mut cmd = self.command(Some(log));
        cmd.args(action)
            .arg("--bundle")
            .arg(bundle)
            .arg("--pid-file")
            .arg(pid_file);
        io.apply(&mut cmd);
        if self.config.no_pivot {
            cmd.arg("--no-pivot");
        }
        if self.config.no_new_keyring {
            cmd.arg("--no-new-keyring");
        }
        cmd.arg(id);
        self.spawn(&mut cmd)
    }

    /// Starts a process described by an OCI process JSON file in the container and returns once
    /// it runs; it is then a child of the shim (as subreaper), its pid in `pid_file`.
    pub async fn exec_process(
        &self,
        id: &str,
        process: &Path,
        pid_file: &Path,
        log: &Path,
        io: ProcessIo,
    ) -> Result<(), RuncError> {
        let mut cmd = self.command(Some(log));
        cmd.args(["exec", "--process"]).arg(process);
        io.apply(&mut cmd);
        cmd.arg("--detach").arg("--pid-file").arg(pid_file).arg(id);
        let (_, exit) = self.spawn(&mut cmd)?;
        self.succeeded("exec", id, exit, log).await
    }

    /// Waits for a runc that logs to `log`; a failure carries runc's logged error.
    async fn succeeded(
        &self,
        action: &'static str,
        id: &str,
        exit: Exit,
        log: &Path,
    ) -> Result<(), RuncError> {
        let status = exit.await;
        if status.success() {
            return Ok(());
        }
        Err(self
            .logged_failure(action, id, status, log)
            .unwrap_or_else(|| self.failed(action, id, status, "runc logged no error".into())))
    }

    /// runc's own error from a `--log` file, if it logged one.
    pub fn logged_failure(
        &self,
        action: &'static str,
        id: &str,
        status: ExitStatus,
        log: &Path,
    ) -> Option<RuncError> {
        let text = std::fs::read_to_string(log).ok()?;
        Some(self.failed(action, id, status, logged_error(&text)?))
    }

    pub async fn start(&self, id: &str) -> Result<(), RuncError> {
        self.simple("start", id, &["start", id]).await
    }

    /// Sends `signal` to the container's init, or with `all` to every process in it.
    pub async fn kill(&self, id: &str, signal: Signal, all: bool) -> Result<(), RuncError> {
        let number = (signal as i32).to_string();
        let args: &[&str] = if all {
            &["kill", "--all", id, &number]
        } else {
            &["kill", id, &number]
        };
        self.simple("kill", id, args).await
    }

    pub async fn pause(&self, id: &str) -> Result<(), RuncError> {
        self.simple("pause", id, &["pause", id]).await
    }

    pub async fn resume(&self, id: &str) -> Result<(), RuncError> {
        self.simple("resume", id, &["resume", id]).await
    }

    /// Applies an OCI `LinuxResources` JSON file to the running container.
    pub async fn update(&self, id: &str, resources: &Path) -> Result<(), RuncError> {
        let resources = resources.to_string_lossy();
        self.simple("update", id, &["update", "--resources", &resources, id])
            .await
    }

    /// The host pids of the container's processes.
    pub async fn ps(&self, id: &str) -> Result<Vec<i32>, RuncError> {
        let out = self
            .output("ps", id, &["ps", "--format", "json", id])
            .await?;
        serde_json::from_slice::<Option<Vec<i32>>>(&out)
            .map(Option::unwrap_or_default)
            .map_err(|e| {
                self.failed(
                    "ps",
                    id,
                    ExitStatus::Exited(0),
                    format!("unreadable output: {e}"),
                )
            })
    }

    /// Deletes the container, killing whatever is left in it.
    pub async fn delete(&self, id: &str) -> Result<(), RuncError> {
        self.simple("delete", id, &["delete", "--force", id]).await
    }

    /// Deletes a container that is stopped or only created, as containerd's runc shim deletes
    /// a task; a running one is refused.
    pub async fn delete_stopped(&self, id: &str) -> Result<(), RuncError> {
        self.simple("delete", id, &["delete", id]).await
    }

    /// Starts `runc exec` for a hook; its stdout and stderr (and runc's errors) go to `output`.
    pub fn exec_hook(
        &self,
        id: &str,
        request: &ExecRequest<'_>,
        pid_file: &Path,
        output: OwnedFd,
    ) -> Result<(Child, Exit), RuncError> {
        let mut cmd = self.command(None);
        cmd.arg("exec").arg("--pid-file").arg(pid_file);
        if let Some(dir) = request.working_dir {
            cmd.args(["--cwd", dir]);
        }
        for (name, value) in request.env {
            cmd.arg("--env").arg(format!("{name}={value}"));
        }
        cmd.arg(id).args(request.argv);
        let stderr = output
            .try_clone()
            .map_err(|source| self.spawn_error(source))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(output))
            .stderr(Stdio::from(stderr));
        // `cmd` holds the write ends until it is dropped at the end of this function, so the
        // reader sees EOF once the hook and its children are done.
        self.spawn(&mut cmd)
    }

    async fn simple(&self, action: &'static str, id: &str, args: &[&str]) -> Result<(), RuncError> {
        self.output(action, id, args).await.map(drop)
    }

    /// Runs runc to completion and returns its stdout; on failure, its stderr is the message.
    async fn output(
        &self,
        action: &'static str,
        id: &str,
        args: &[&str],
    ) -> Result<Vec<u8>, RuncError> {
        let mut cmd = self.command(None);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let (mut child, exit) = self.spawn(&mut cmd)?;
        let (stdout, stderr) = tokio::join!(
            read_pipe(child.stdout.take()),
            read_pipe(child.stderr.take())
        );
        let status = exit.await;
        if status.success() {
            return Ok(stdout);
        }
        let message = String::from_utf8_lossy(&stderr).trim().to_owned();
        Err(self.failed(action, id, status, message))
    }

    /// runc with its global flags; `log` (or the configured log) receives runc's errors.
    fn command(&self, log: Option<&Path>) -> Command {
        let config = &self.config;
        let mut cmd = Command::new(&config.binary);
        if let Some(root) = &config.root {
            cmd.arg("--root").arg(root);
        }
        if let Some(log) = log.or(config.log.as_deref()) {
            cmd.arg("--log").arg(log).args(["--log-format", "json"]);
        }
        if config.systemd_cgroup {
            cmd.arg("--systemd-cgroup");
        }
        cmd.process_group(0);
        cmd
    }

    fn spawn(&self, cmd: &mut Command) -> Result<(Child, Exit), RuncError> {
        self.reaper
            .spawn(cmd)
            .map_err(|source| self.spawn_error(source))
    }

    fn spawn_error(&self, source: io::Error) -> RuncError {
        RuncError::Spawn {
            binary: self.config.binary.clone(),
            source,
        }
    }

    fn failed(
        &self,
        action: &'static str,
        id: &str,
        status: ExitStatus,
        message: String,
    ) -> RuncError {
        RuncError::Failed {
            binary: self.config.binary.clone(),
            action,
            id: id.to_owned(),
            status,
            message,
        }
    }
}

/// Reads a child's pipe to its end, keeping at most 1 MiB.
async fn read_pipe(pipe: Option<impl Into<OwnedFd>>) -> Vec<u8> {
    let mut bytes = Vec::new();
    if let Some(fd) = pipe {
        if let Ok(rx) = pipe::Receiver::from_owned_fd(fd.into()) {
            let _ = rx.take(1 << 20).read_to_end(&mut bytes).await;
        }
    }
    bytes
}

/// The first error message in runc's JSON log.
fn logged_error(log: &str) -> Option<String> {
    log.lines().find_map(|line| {
        let entry: serde_json::Value = serde_json::from_str(line).ok()?;
        let level = entry["level"].as_str()?;
        (level == "error" || level == "fatal")
            .then(|| entry["msg"].as_str().map(trim))
            .flatten()
    })
}

fn trim(message: &str) -> String {
    let message = message.trim();
    let end = message.floor_char_boundary(MAX_MESSAGE);
    message[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runc_log_errors_are_found() {
        let log = r#"{"level":"warning","msg":"something","time":"x"}
{"level":"error","msg":"runc create failed: unable to start container process: exec: \"nope\": executable file not found in $PATH","time":"x"}
"#;
        assert_eq!(
            logged_error(log).as_deref(),
            Some("runc create failed: unable to start container process: exec: \"nope\": executable file not found in $PATH")
        );
        assert_eq!(
            logged_error("{\"level\":\"warning\",\"msg\":\"x\"}\nplain text\n"),
            None
        );
    }
}
