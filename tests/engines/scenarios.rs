//! Scenarios written once for both engines: each drives the engine's CLI and returns what it
//! observed (output, exit codes, what was left), so that the same scenario run with runtime =
//! runc and runtime = `lifecycle-runc` can be compared with `assert_eq!`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::docker::Docker;
use crate::host::{OutputExt, Process, IMAGE, RUNTIME_NAME};
use crate::podman::Podman;
use crate::support::{read_lines, wait_for_line};

/// A container engine the scenarios can drive; its CLI accepts the same `run`, `exec`,
/// `stop`, `wait`, `logs`, `inspect` and `rm` arguments.
pub trait Engine: Sized {
    /// Starts a private engine whose OCI runtime is the binary at `runtime`.
    fn start(runtime: &Path) -> Self;
    /// `podman` or `docker`, for messages.
    fn name(&self) -> &'static str;
    /// Runs the CLI with `args` to completion.
    fn cli(&self, args: &[&str]) -> Output;
    /// What every `run` passes before the image: the runtime under test and no network.
    fn run_flags(&self) -> &'static [&'static str];
    /// Where runc keeps container `id`'s state.
    fn runc_state(&self, id: &str) -> PathBuf;
    /// The per-container monitor of `id` (conmon, or the Go shim) while it runs.
    fn monitors(&self, id: &str) -> Vec<Process>;
    /// The harness directory, for the test's host-side files.
    fn dir(&self) -> &Path;

    /// Runs the CLI and fails the test unless it succeeds; returns its stdout.
    #[track_caller]
    fn ok(&self, args: &[&str]) -> String {
        crate::host::succeeded(self.name(), args, self.cli(args))
    }

    /// `run <run_flags> <extra> IMAGE sh -c <script>`, returning the CLI's result.
    fn run(&self, extra: &[&str], script: &str) -> Output {
        let mut args = vec!["run"];
        args.extend_from_slice(self.run_flags());
        args.extend_from_slice(extra);
        args.extend_from_slice(&[IMAGE, "sh", "-c", script]);
        self.cli(&args)
    }

    /// Starts a detached container and returns its full id.
    #[track_caller]
    fn run_detached(&self, extra: &[&str], script: &str) -> String {
        let out = self.run(&[&["-d"], extra].concat(), script);
        assert!(
            out.status.success(),
            "{} run -d exited with {}\nstderr:\n{}",
            self.name(),
            out.status,
            out.stderr_text()
        );
        out.stdout_text().trim().to_owned()
    }

    /// A fresh host directory for bind mounts.
    fn host_dir(&self, name: &str) -> PathBuf {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = self
            .dir()
            .join(format!("{name}-{}", NEXT.fetch_add(1, Ordering::Relaxed)));
        fs::create_dir_all(&dir).unwrap();
        dir
    }
}

impl Engine for Podman {
    fn start(runtime: &Path) -> Self {
        Podman::new(runtime)
    }

    fn name(&self) -> &'static str {
        "podman"
    }

    fn cli(&self, args: &[&str]) -> Output {
        self.podman(args)
    }

    /// The default runtime is already `lifecycle` (containers.conf), as is `netns = "none"`;
    /// the flag says it where a reader looks.
    fn run_flags(&self) -> &'static [&'static str] {
        &["--network", "none"]
    }

    fn runc_state(&self, id: &str) -> PathBuf {
        Podman::runc_state(self, id)
    }

    fn monitors(&self, id: &str) -> Vec<Process> {
        self.conmon_of(id)
    }

    fn dir(&self) -> &Path {
        Podman::dir(self)
    }
}

impl Engine for Docker {
    fn start(runtime: &Path) -> Self {
        Docker::start(runtime)
    }

    fn name(&self) -> &'static str {
        "docker"
    }

    fn cli(&self, args: &[&str]) -> Output {
        self.docker(args)
    }

    /// As a Docker 20.10 user would: the runtime named in daemon.json, chosen per container.
    fn run_flags(&self) -> &'static [&'static str] {
        const FLAGS: &[&str] = &["--runtime", RUNTIME_NAME, "--network", "none"];
        FLAGS
    }

    fn runc_state(&self, id: &str) -> PathBuf {
        Docker::runc_state(self, id)
    }

    fn monitors(&self, id: &str) -> Vec<Process> {
        self.shim_of(id)
    }

    fn dir(&self) -> &Path {
        Docker::dir(self)
    }
}

/// Starts a fresh engine of kind `E` with `runtime` and runs `scenario` on it: the unit to
/// compare, e.g. `observe::<Podman, _>(&runc, run_rm)` against the same with
/// `lifecycle-runc`. The engine is stopped and cleaned before this returns.
pub fn observe<E: Engine, T>(runtime: &Path, scenario: impl FnOnce(&E) -> T) -> T {
    let engine = E::start(runtime);
    scenario(&engine)
}

/// A CLI call's output and exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: String,
    pub stderr: String,
    pub code: i32,
}

impl From<Output> for Outcome {
    fn from(out: Output) -> Outcome {
        Outcome {
            stdout: out.stdout_text(),
            stderr: out.stderr_text(),
            code: out.code(),
        }
    }
}

/// Prints a line on each stream and exits 3.
pub const PRINT_AND_EXIT_3: &str = "echo to-stdout; echo to-stderr >&2; exit 3";

/// Idles until TERM, then exits 0 at once (so `podman rm -f`, which sends TERM first, is quick).
pub const SLEEPER: &str = "trap 'exit 0' TERM; while :; do sleep 1000 & wait $!; done";

/// `run --rm` of [`PRINT_AND_EXIT_3`], attached: what the CLI prints and its exit code.
pub fn run_rm<E: Engine>(engine: &E) -> Outcome {
    engine.run(&["--rm"], PRINT_AND_EXIT_3).into()
}

/// What a detached container that exited left to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exited {
    /// `wait ID`: prints the exit code.
    pub wait: Outcome,
    /// `logs ID`.
    pub logs: Outcome,
    /// `inspect --format {{.State.ExitCode}} ID`.
    pub exit_code: String,
}

/// `run -d` of [`PRINT_AND_EXIT_3`], then `wait`, `logs` and `inspect` of the exited container.
pub fn logs_after_exit<E: Engine>(engine: &E) -> Exited {
    let id = engine.run_detached(&[], PRINT_AND_EXIT_3);
    let wait = engine.cli(&["wait", &id]).into();
    let logs = engine.cli(&["logs", &id]).into();
    let exit_code = engine
        .ok(&["inspect", "--format", "{{.State.ExitCode}}", &id])
        .trim()
        .to_owned();
    engine.ok(&["rm", &id]);
    Exited {
        wait,
        logs,
        exit_code,
    }
}

/// `exec` into a detached container: output on both streams and an exit code of 5.
pub fn exec_in_detached<E: Engine>(engine: &E) -> Outcome {
    let id = engine.run_detached(&[], SLEEPER);
    let exec = engine
        .cli(&[
            "exec",
            &id,
            "sh",
            "-c",
            "echo exec-out; echo exec-err >&2; exit 5",
        ])
        .into();
    engine.ok(&["rm", "-f", &id]);
    exec
}

/// What a `stop -t` observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stopped {
    /// Lines the container wrote to /markers/order.
    pub order: Vec<String>,
    /// `stop`'s own exit code.
    pub stop_code: i32,
    /// `inspect --format {{.State.ExitCode}}` afterwards.
    pub exit_code: String,
    /// Whether `stop` returned before its timeout ran out.
    pub before_timeout: bool,
}

/// A container that records TERM in /markers/order and exits 0.
pub const TERM_TRAP: &str = "trap 'echo term >> /markers/order; exit 0' TERM; echo up > /markers/up; while :; do sleep 1000 & wait $!; done";

/// A container that ignores TERM, so `stop` must SIGKILL it at the timeout.
pub const TERM_IGNORED: &str =
    "trap 'echo term >> /markers/order' TERM; echo up > /markers/up; while :; do sleep 0.1; done";

/// `stop -t <timeout>` of a detached container running `script` with a host directory at
/// /markers, once it wrote /markers/up.
pub fn stop_with_timeout<E: Engine>(engine: &E, script: &str, timeout: Duration) -> Stopped {
    let markers = engine.host_dir("markers");
    let volume = format!("{}:/markers", markers.display());
    let id = engine.run_detached(&["-v", &volume], script);
    wait_for_line(&markers.join("up"), Some("up"));
    let seconds = timeout.as_secs().to_string();
    let started = Instant::now();
    let stop = engine.cli(&["stop", "-t", &seconds, &id]);
    let elapsed = started.elapsed();
    let exit_code = engine
        .ok(&["inspect", "--format", "{{.State.ExitCode}}", &id])
        .trim()
        .to_owned();
    engine.ok(&["rm", "-f", &id]);
    Stopped {
        order: read_lines(&markers.join("order")),
        stop_code: stop.code(),
        exit_code,
        before_timeout: elapsed < timeout,
    }
}

/// What `rm -f` of a running container left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    pub rm_code: i32,
    /// Whether `ps -a` still lists it.
    pub listed: bool,
    /// Whether runc still has state for it.
    pub runc_state: bool,
    /// Its monitor (conmon or the Go shim) still running after [`MONITOR_GRACE`].
    pub monitors: Vec<Process>,
}

/// How long a container's monitor may take to exit after `rm -f` returned.
pub const MONITOR_GRACE: Duration = Duration::from_secs(10);

/// `rm -f` of a running container, then what is left of it.
pub fn rm_force<E: Engine>(engine: &E) -> Removed {
    let id = engine.run_detached(&[], SLEEPER);
    assert!(
        engine.runc_state(&id).exists(),
        "{}: runc state of a running container is not at {:?}",
        engine.name(),
        engine.runc_state(&id)
    );
    assert!(
        !engine.monitors(&id).is_empty(),
        "{}: no monitor process found for {id}",
        engine.name()
    );
    let rm_code = engine.cli(&["rm", "-f", &id]).code();
    let listed = engine
        .ok(&["ps", "--all", "--quiet", "--no-trunc"])
        .split_whitespace()
        .any(|x| x == id);
    let deadline = Instant::now() + MONITOR_GRACE;
    while Instant::now() < deadline && !engine.monitors(&id).is_empty() {
        std::thread::sleep(Duration::from_millis(20));
    }
    Removed {
        rm_code,
        listed,
        runc_state: engine.runc_state(&id).exists(),
        monitors: engine.monitors(&id),
    }
}
