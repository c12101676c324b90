//! The seam between the engine and a real container: "run this in it", "connect inside its
//! network", "signal it". The shim implements it over runc; tests implement it in memory.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;

use nix::sys::signal::Signal;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::plan::InitContainer;

/// Which part of the lifecycle a process belongs to; also its `LIFECYCLE_PHASE` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    PostStart,
    PreStop,
    Init,
    PostStop,
    HealthCheck,
    Reconfigure,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::PostStart => "postStart",
            Phase::PreStop => "preStop",
            Phase::Init => "init",
            Phase::PostStop => "postStop",
            Phase::HealthCheck => "healthCheck",
            Phase::Reconfigure => "reconfigure",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Exited(i32),
    Signaled(Signal),
}

impl ExitStatus {
    /// The shell's convention: the exit code, or 128+N for signal N.
    pub fn code(self) -> i32 {
        match self {
            ExitStatus::Exited(code) => code,
            ExitStatus::Signaled(signal) => 128 + signal as i32,
        }
    }

    pub fn success(self) -> bool {
        self == ExitStatus::Exited(0)
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Exited(code) => write!(f, "exit code {code}"),
            ExitStatus::Signaled(signal) => write!(f, "signal {signal}"),
        }
    }
}

/// A process to run inside the container, sharing its rootfs, namespaces, cgroup and user.
#[derive(Debug, Clone)]
pub struct ExecRequest<'a> {
    /// Prefix for the process's output where it is shown, e.g. `postStart` or `init:migrate`.
    pub label: &'a str,
    pub argv: &'a [String],
    /// Added to the container's own environment.
    pub env: &'a [(String, String)],
    pub working_dir: Option<&'a str>,
    /// When to kill it; `None` lets it run until it exits (or the future is dropped).
    pub deadline: Option<Instant>,
}

impl<'a> ExecRequest<'a> {
    /// An init container's process (or a sidecar's), shown under `label`.
    pub fn init(
        init: &'a InitContainer,
        label: &'a str,
        deadline: Option<Instant>,
    ) -> ExecRequest<'a> {
        ExecRequest {
            label,
            argv: &init.argv,
            env: &init.env,
            working_dir: init.working_dir.as_deref(),
            deadline,
        }
    }
}

/// What an exec left behind. `output` is the bounded tail of its stdout and stderr.
#[derive(Debug, Clone)]
pub struct ExecOutput {
    pub status: ExitStatus,
    pub timed_out: bool,
    pub output: String,
}

/// A running (or created) container the engine can act on.
///
/// Dropping a future returned by [`Container::exec`] must kill the process it started: that is
/// how the engine cancels a PostStart when the container exits, or a PreStop cut short.
pub trait Container {
    type Error: std::error::Error + Send + Sync + 'static;

    fn id(&self) -> &str;

    fn exec(
        &self,
        request: ExecRequest<'_>,
    ) -> impl Future<Output = Result<ExecOutput, Self::Error>>;

    /// Opens a TCP connection from inside the container's network namespace.
    fn connect(&self, addr: SocketAddr) -> impl Future<Output = io::Result<TcpStream>>;

    /// True once the container's init process has begun to exit. A hook that fails after this
    /// was cut short by the container's end (the kernel kills every process of a PID namespace
    /// whose init exits), which is not a hook failure.
    fn has_exited(&self) -> bool;

    /// Sends a signal to the container's init process.
    fn signal(&self, signal: Signal) -> impl Future<Output = Result<(), Self::Error>>;
}

/// A container that takes the whole init sequence: besides runs to completion, sidecars
/// started beside it, and init containers skipped when a record says they already succeeded
/// (a `once` step's volume, a pod sandbox's record of its containers' init containers).
pub trait InitHost: Container {
    /// Starts a sidecar (an init container with `restartPolicy: Always`) beside the container;
    /// returns once it runs.
    fn start_sidecar(&self, init: &InitContainer) -> impl Future<Output = Result<(), Self::Error>>;

    /// Opens an init container's run: `None` when it already succeeded and is skipped;
    /// otherwise a ticket that records its outcome.
    fn begin_init(
        &self,
        init: &InitContainer,
    ) -> impl Future<Output = Result<Option<Box<dyn InitTicket>>, Self::Error>>;
}

/// Records whether an init container succeeded, so that it is skipped next time.
pub trait InitTicket: Send {
    fn finish(self: Box<Self>, succeeded: bool) -> io::Result<()>;
}
