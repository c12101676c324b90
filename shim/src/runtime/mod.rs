//! `lifecycle-runc`: the hooks for engines that drive a runc command line (Podman and conmon,
//! Docker 20.10, CRI-O). Every call is passed on to the real runtime as written; a container
//! with a lifecycle spec also gets a supervisor, started by `create` (detached, in a session of
//! its own, stdio closed), that `start`, `kill` and `delete` reach over its socket:
//!
//! - `start` asks the supervisor, which runs the init containers and starts the entrypoint;
//! - `kill ID <SIGTERM or the stop signal>` asks for a stop and returns at once (engines time
//!   the stop only once `kill` has returned); `kill ID 9` tells the supervisor and is passed on;
//! - `delete` is passed on, then waits until the supervisor has finished and exited.
//!
//! A container without a spec never has a supervisor: each call is runc's own.

// Unsafe: the supervisor is set up between fork and exec (pre_exec).
#![allow(unsafe_code)]

mod args;
pub mod gate;
mod protocol;
mod supervisor;

use std::ffi::OsString;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};

use nix::sys::signal::Signal;

use crate::bundle::{Bundle, SpecOrigin};
use args::{CommandArgs, Invocation, CREATE_VALUE_FLAGS};
use gate::Gate;
pub use protocol::state_dir;
use protocol::{socket_path, Answer, Ask, Connection};
use supervisor::SupervisorArgs;

pub const BINARY_NAME: &str = "lifecycle-runc";
/// The supervisor is this binary with this first argument.
const SUPERVISE: &str = "--lifecycle-supervise";
/// The runtime delegated to, unless `--lifecycle-runtime` names one.
const RUNTIME_ENV: &str = "LIFECYCLE_RUNC_RUNTIME";

/// Whether the binary was invoked as `lifecycle-runc`.
pub fn invoked_as_runtime(args: &[OsString]) -> bool {
    args.first()
        .and_then(|a| Path::new(a).file_name())
        .is_some_and(|n| n == BINARY_NAME)
}

pub fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    if args.first().is_some_and(|a| a == SUPERVISE) {
        return supervisor::main(args.get(1));
    }
    let front = Front {
        call: Invocation::parse(&args),
    };
    match front.call.command.as_deref() {
        Some("create") => front.create(),
        Some("start") => front.start(),
        Some("kill") => front.kill(),
        Some("delete") => front.delete(),
        _ => front.pass_on(),
    }
}

struct Front {
    call: Invocation,
}

impl Front {
    fn runtime(&self) -> PathBuf {
        self.call
            .runtime
            .clone()
            .or_else(|| std::env::var_os(RUNTIME_ENV).map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("runc"))
    }

    /// The runtime with the call's global flags and command, then `args`; stdio inherited.
    fn runtime_command(&self, args: &[OsString]) -> Command {
        let mut cmd = Command::new(self.runtime());
        cmd.args(&self.call.globals)
            .args(self.call.command.iter())
            .args(args);
        cmd
    }

    /// Becomes the runtime, for a call that is runc's alone.
    fn pass_on(&self) -> ExitCode {
        let error = self.runtime_command(&self.call.args).exec();
        self.fail(&format!(
            "cannot run the OCI runtime {:?}: {error}",
            self.runtime()
        ))
    }

    /// Runs the call's command with `args` in the runtime and returns its exit status.
    fn run_runtime(&self, args: &[OsString]) -> Result<std::process::ExitStatus, ExitCode> {
        self.runtime_command(args).status().map_err(|error| {
            self.fail(&format!(
                "cannot run the OCI runtime {:?}: {error}",
                self.runtime()
            ))
        })
    }

    /// An error of ours, where each engine looks: stderr, and runc's `--log` in its format.
    fn fail(&self, message: &str) -> ExitCode {
        eprintln!("{BINARY_NAME}: {message}");
        if let Some(log) = &self.call.log {
            let line = log_line(self.call.log_format.as_deref(), message);
            let appended = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .and_then(|mut f| f.write_all(line.as_bytes()));
            if let Err(error) = appended {
                eprintln!("{BINARY_NAME}: cannot write to the log {log:?}: {error}");
            }
        }
        ExitCode::FAILURE
    }

    fn state_dir(&self, id: &str) -> PathBuf {
        state_dir(self.call.root.as_deref(), id)
    }

    /// The container's supervisor, if it has one.
    fn supervisor(&self, id: &str) -> Option<Connection> {
        valid_id(id).then(|| Connection::open(&self.state_dir(id)))?
    }

    fn create(&self) -> ExitCode {
        let args = CommandArgs::parse(&self.call.args, &CREATE_VALUE_FLAGS);
        let Some(id) = args.positional.last().filter(|id| valid_id(id)) else {
            return self.pass_on();
        };
        let bundle_dir = args
            .value(&["bundle", "b"])
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."));
        // A config.json we cannot read is runc's to refuse.
        let Ok(bundle) = Bundle::load(&bundle_dir) else {
            return self.pass_on();
        };
        let plan = match bundle.runtime_plan() {
            Ok((SpecOrigin::None | SpecOrigin::Sandbox, _)) => return self.pass_on(),
            Ok((_, plan)) => plan,
            Err(error) => return self.fail(&format!("container {id}: {error}")),
        };
        let dir = self.state_dir(id);
        let supervised = SupervisorArgs {
            id: id.clone(),
            bundle: bundle.path.clone(),
            runtime: self.runtime(),
            root: self.call.root.clone(),
            dir: dir.clone(),
        };
        let (mut connection, supervisor) = match self.start_supervisor(&supervised) {
            Ok(started) => started,
            Err(message) => return self.fail(&format!("container {id}: {message}")),
        };
        // Before runc created anything: the supervisor sees the connection close and exits.
        let abandon = |connection: Connection, mut supervisor: Child| {
            drop(connection);
            let _ = supervisor.wait();
            let _ = std::fs::remove_dir_all(&dir);
        };
        let mut create_args = self.call.args.clone();
        if !plan.init_containers.is_empty() && Gate::available() {
            match Gate::prepare(&dir, &bundle.path) {
                Ok(derived) => create_args = with_bundle(&create_args, &derived),
                Err(error) => {
                    abandon(connection, supervisor);
                    return self.fail(&format!("container {id}: cannot prepare its gate: {error}"));
                }
            }
        }
        match self.run_runtime(&create_args) {
            Ok(status) if status.success() => {}
            Ok(status) => {
                abandon(connection, supervisor);
                return exit_code(status);
            }
            Err(code) => {
                abandon(connection, supervisor);
                return code;
            }
        }
        let pid = args
            .value(&["pid-file"])
            .and_then(|p| crate::os::pidfile::read_pid(Path::new(p)))
            .or_else(|| self.state_pid(id));
        let answer = match pid {
            Some(pid) => connection
                .send(&Ask::Created(pid))
                .and_then(|()| connection.answer()),
            None => Ok(Answer::Failed("runc wrote no pid for the container".into())),
        };
        match answer {
            Ok(Answer::Done) => ExitCode::SUCCESS,
            Ok(Answer::Failed(message)) => self.undo_create(id, &message),
            other => self.undo_create(id, &format!("{other:?}")),
        }
    }

    /// A supervisor that failed after runc created the container: the container goes too.
    fn undo_create(&self, id: &str, message: &str) -> ExitCode {
        let mut delete = Command::new(self.runtime());
        delete
            .args(&self.call.globals)
            .args(["delete", "--force", id]);
        let _ = delete.stdout(Stdio::null()).stderr(Stdio::null()).status();
        let _ = std::fs::remove_dir_all(self.state_dir(id));
        self.fail(&format!(
            "container {id}: its lifecycle supervisor failed: {message}"
        ))
    }

    /// The container's init pid from `runc state`, when the engine asked for no pid file.
    fn state_pid(&self, id: &str) -> Option<i32> {
        let output = Command::new(self.runtime())
            .args(&self.call.globals)
            .args(["state", id])
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let state: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
        state["pid"].as_i64().and_then(|p| i32::try_from(p).ok())
    }

    /// Starts the container's supervisor, listening on its socket, in a session of its own
    /// with its stdio closed (the engine waits for the end of the container's output, and
    /// must not wait for ours); returns the connection `create` reports on.
    fn start_supervisor(&self, args: &SupervisorArgs) -> Result<(Connection, Child), String> {
        let dir = &args.dir;
        if Connection::open(dir).is_some() {
            return Err("a container with this id already has a lifecycle supervisor".into());
        }
        // Left by a supervisor that was killed: nothing answers there.
        let _ = std::fs::remove_dir_all(dir);
        make_private_dir(dir).map_err(|e| format!("cannot create {dir:?}: {e}"))?;
        self.spawn_supervisor(args).inspect_err(|_| {
            let _ = std::fs::remove_dir_all(dir);
        })
    }

    /// [`Front::start_supervisor`] once its directory is there.
    fn spawn_supervisor(&self, args: &SupervisorArgs) -> Result<(Connection, Child), String> {
        let dir = &args.dir;
        let listener = UnixListener::bind(socket_path(dir))
            .map_err(|e| format!("cannot listen in {dir:?}: {e}"))?;
        let listening = listener.as_raw_fd();
        let exe = std::env::current_exe().map_err(|e| format!("cannot find itself: {e}"))?;
        let mut cmd = Command::new(exe);
        cmd.arg0(BINARY_NAME)
            .arg(SUPERVISE)
            .arg(serde_json::to_string(args).map_err(|e| e.to_string())?)
            // Nowhere near the bundle, whose mounts the engine will unmount.
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                nix::unistd::setsid()?;
                supervisor::hand_over_listener(listening)
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start the lifecycle supervisor: {e}"))?;
        let connection = Connection::open(dir)
            .ok_or_else(|| String::from("the lifecycle supervisor does not answer"))?;
        Ok((connection, child))
    }

    fn start(&self) -> ExitCode {
        let args = CommandArgs::parse(&self.call.args, &[]);
        let Some(id) = args.positional.first() else {
            return self.pass_on();
        };
        let Some(supervisor) = self.supervisor(id) else {
            return self.pass_on();
        };
        match supervisor.ask(&Ask::Start) {
            Ok(Answer::Done) => ExitCode::SUCCESS,
            Ok(Answer::PassOn) => self.pass_on(),
            Ok(Answer::Failed(message)) => self.fail(&message),
            Err(error) => self.fail(&format!("container {id}: {error}")),
        }
    }

    fn kill(&self) -> ExitCode {
        let args = CommandArgs::parse(&self.call.args, &[]);
        let (Some(id), signal) = (args.positional.first(), args.positional.get(1)) else {
            return self.pass_on();
        };
        let signal = match signal {
            None => Some(Signal::SIGTERM),
            Some(signal) => parse_signal(signal),
        };
        let (Some(signal), Some(supervisor)) = (signal, self.supervisor(id)) else {
            return self.pass_on();
        };
        if signal == Signal::SIGKILL {
            // Cut the stop sequence short, then SIGKILL as asked.
            if let Err(error) = supervisor.ask(&Ask::Kill) {
                tracing::warn!(%error, "could not tell the lifecycle supervisor");
            }
            return self.pass_on();
        }
        if args.has(&["all", "a"]) {
            return self.pass_on();
        }
        match supervisor.ask(&Ask::Stop(signal as i32)) {
            Ok(Answer::Done) => ExitCode::SUCCESS,
            Ok(Answer::PassOn) => self.pass_on(),
            Ok(Answer::Failed(message)) => self.fail(&message),
            Err(error) => self.fail(&format!("container {id}: {error}")),
        }
    }

    fn delete(&self) -> ExitCode {
        let args = CommandArgs::parse(&self.call.args, &[]);
        let Some(id) = args.positional.first().filter(|id| valid_id(id)) else {
            return self.pass_on();
        };
        let supervisor = self.supervisor(id);
        let status = match self.run_runtime(&self.call.args) {
            Ok(status) => status,
            Err(code) => return code,
        };
        if !status.success() {
            return exit_code(status);
        }
        if let Some(mut supervisor) = supervisor {
            // Its postStop may still run; the connection closes when it has exited.
            if supervisor.send(&Ask::Delete).is_ok() {
                supervisor.wait_closed();
            }
        }
        match std::fs::remove_dir_all(self.state_dir(id)) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                self.fail(&format!("container {id}: {error}"))
            }
            _ => ExitCode::SUCCESS,
        }
    }
}

/// `create`'s arguments with the bundle replaced by `bundle`.
fn with_bundle(args: &[OsString], bundle: &Path) -> Vec<OsString> {
    let mut replaced = Vec::with_capacity(args.len() + 2);
    let mut found = false;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let text = arg.to_string_lossy();
        let flag = text.trim_start_matches('-');
        if text.starts_with('-') && (flag == "bundle" || flag == "b") {
            rest.next();
        } else if !(text.starts_with('-')
            && (flag.starts_with("bundle=") || flag.starts_with("b=")))
        {
            replaced.push(arg.clone());
            continue;
        }
        replaced.push("--bundle".into());
        replaced.push(bundle.into());
        found = true;
    }
    if !found {
        replaced.splice(0..0, ["--bundle".into(), bundle.into()]);
    }
    replaced
}

/// runc's container ids (`^[\w+-\.]+$`); anything else is runc's to refuse, and never a path.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_+-.".contains(c))
}

/// A signal as runc's `kill` takes it: a number, or a name with or without `SIG`.
fn parse_signal(text: &str) -> Option<Signal> {
    if let Ok(number) = text.parse::<i32>() {
        return Signal::try_from(number).ok();
    }
    lifecycle_hooks::plan::parse_signal(text)
}

fn make_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

fn exit_code(status: std::process::ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    let code = status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1);
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// An error line as runc logs it: logrus' JSON, or its text format.
fn log_line(format: Option<&str>, message: &str) -> String {
    let time = rfc3339(std::time::SystemTime::now());
    if format == Some("json") {
        let line = serde_json::json!({"level": "error", "msg": message, "time": time});
        return format!("{line}\n");
    }
    let quoted = serde_json::Value::from(message).to_string();
    format!("time=\"{time}\" level=error msg={quoted}\n")
}

/// A UTC time as RFC 3339, to the second.
fn rfc3339(time: std::time::SystemTime) -> String {
    let secs = time
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Days to a civil date (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_logged_as_runc_logs_them() {
        let json = log_line(Some("json"), "bad \"spec\"");
        let entry: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(entry["level"], "error");
        assert_eq!(entry["msg"], "bad \"spec\"");
        assert!(json.ends_with('\n'));
        let text = log_line(None, "bad");
        assert!(text.contains(" level=error msg=\"bad\"\n"), "{text}");
    }

    #[test]
    fn times_are_rfc3339_utc() {
        let at = |secs| rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_796_169_600 + 3_723), "2026-12-02T01:02:03Z");
    }

    #[test]
    fn the_bundle_is_replaced_in_every_spelling() {
        let os = |args: &[&str]| args.iter().map(OsString::from).collect::<Vec<_>>();
        let derived = Path::new("/d");
        for args in [
            &["--bundle", "/b", "--pid-file", "/p", "id"][..],
            &["--bundle=/b", "--pid-file", "/p", "id"],
            &["-b", "/b", "--pid-file", "/p", "id"],
        ] {
            assert_eq!(
                with_bundle(&os(args), derived),
                os(&["--bundle", "/d", "--pid-file", "/p", "id"])
            );
        }
        assert_eq!(
            with_bundle(&os(&["id"]), derived),
            os(&["--bundle", "/d", "id"])
        );
    }

    #[test]
    fn ids_are_runc_ids() {
        assert!(valid_id("abc-1.2_x+y"));
        for bad in ["", ".", "..", "a/b", "a b"] {
            assert!(!valid_id(bad), "{bad}");
        }
        assert_eq!(parse_signal("9"), Some(Signal::SIGKILL));
        assert_eq!(parse_signal("KILL"), Some(Signal::SIGKILL));
        assert_eq!(parse_signal("SIGTERM"), Some(Signal::SIGTERM));
        assert_eq!(parse_signal("nope"), None);
    }
}
