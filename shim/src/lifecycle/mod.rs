//! A runc container as the lifecycle supervisor acts on it, for every front end: hook
//! processes through [`RuncContainer`], sidecars, `once` records in the bundle's volumes, the
//! entrypoint's start, postStop runs, the health status file, and messages for the user.

pub mod container;
pub mod hook_process;
pub mod once;
pub mod output;
pub mod poststop;
pub mod sandbox;
pub mod sidecar;
pub mod status;
pub mod stream;
pub mod termination;
pub mod watch;

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

use lifecycle_hooks::container::{InitHost, InitTicket};
use lifecycle_hooks::health::HealthResult;
use lifecycle_hooks::plan::InitContainer;
use lifecycle_hooks::supervisor::Supervised;
use lifecycle_hooks::{Container, ExecOutput, ExecRequest, HookReport, Stages};
use nix::sys::signal::Signal;
use tokio::time::Instant;

use crate::lifecycle::container::{ContainerError, RuncContainer};
use crate::lifecycle::once::{begin, Bind, Ticket};
use crate::lifecycle::output::Sink;
use crate::lifecycle::poststop::run_post_stop;
use crate::lifecycle::sandbox::SandboxRecord;
use crate::lifecycle::sidecar::Sidecars;
use crate::lifecycle::status::StatusFile;

/// How long a start waits for the init containers before it leaves them to the background:
/// safely below the kubelet's 2-minute runtime request timeout, so that the kubelet sees the
/// container running (and probes it) only once they are done; `LIFECYCLE_SHIM_START_WAIT`
/// (seconds) sets it.
pub fn start_wait() -> std::time::Duration {
    let seconds = std::env::var("LIFECYCLE_SHIM_START_WAIT")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(DEFAULT_START_WAIT_SECONDS);
    std::time::Duration::from_secs(seconds)
}

/// The default of [`start_wait`].
const DEFAULT_START_WAIT_SECONDS: u64 = 90;

pub struct RuncLife<'a> {
    pub container: RuncContainer<'a>,
    pub sidecars: &'a Sidecars,
    pub binds: &'a [Bind],
    /// Under CRI: the pod sandbox's record of the init containers that already succeeded.
    pub sandbox: Option<SandboxRecord>,
    /// `runc run` started the entrypoint with the container: there is nothing to start.
    pub started_with_the_container: bool,
    /// postStop runs are derived from this bundle, keep their state under `state`, and are
    /// named `<post_stop_base>-poststop-N`.
    pub bundle: PathBuf,
    pub post_stop_base: String,
    pub state: PathBuf,
    /// The health check's latest result; removed when this is dropped.
    pub health: StatusFile,
    pub sink: Sink,
    /// Under `lifecycle-runc`, with init containers: the gate the entrypoint starts through.
    pub gate: Option<crate::runtime::gate::Gate>,
}

/// The outcome of an init container for its `once` volume and its pod sandbox's record.
struct Recording {
    name: String,
    once: Option<Ticket>,
    sandbox: Option<SandboxRecord>,
}

impl InitTicket for Recording {
    fn finish(self: Box<Self>, succeeded: bool) -> io::Result<()> {
        if let Some(once) = self.once {
            once.finish(succeeded)?;
        }
        match &self.sandbox {
            Some(sandbox) if succeeded => sandbox.record(&self.name),
            _ => Ok(()),
        }
    }
}

impl Container for RuncLife<'_> {
    type Error = ContainerError;

    fn id(&self) -> &str {
        self.container.id()
    }

    async fn exec(&self, request: ExecRequest<'_>) -> Result<ExecOutput, ContainerError> {
        self.container.exec(request).await
    }

    async fn connect(&self, addr: SocketAddr) -> io::Result<tokio::net::TcpStream> {
        self.container.connect(addr).await
    }

    fn has_exited(&self) -> bool {
        self.container.has_exited()
    }

    async fn signal(&self, signal: Signal) -> Result<(), ContainerError> {
        self.container.signal(signal).await
    }
}

impl InitHost for RuncLife<'_> {
    async fn start_sidecar(&self, init: &InitContainer) -> Result<(), ContainerError> {
        Ok(self.sidecars.start(init).await?)
    }

    /// Skipped when the pod sandbox's record, or the `once` step's volume, says it succeeded.
    async fn begin_init(
        &self,
        init: &InitContainer,
    ) -> Result<Option<Box<dyn InitTicket>>, ContainerError> {
        if self
            .sandbox
            .as_ref()
            .is_some_and(|s| s.succeeded(&init.name))
        {
            return Ok(None);
        }
        let once = match &init.once {
            None => None,
            Some(once) => match begin(self.binds, once)
                .await
                .map_err(ContainerError::Once)?
            {
                None => return Ok(None),
                ticket => ticket,
            },
        };
        Ok(Some(Box::new(Recording {
            name: init.name.clone(),
            once,
            sandbox: self.sandbox.clone(),
        })))
    }
}

impl Supervised for RuncLife<'_> {
    async fn start_entrypoint(&self) -> Result<(), ContainerError> {
        if self.started_with_the_container {
            return Ok(());
        }
        if let Some(gate) = &self.gate {
            gate.open()?;
        }
        Ok(self.container.start().await?)
    }

    /// Through the gate, the container exits with `code`; without one, it is killed.
    async fn end_unstarted(&self, code: i32) -> Result<(), ContainerError> {
        match &self.gate {
            Some(gate) => {
                gate.exit_with(code)?;
                Ok(self.container.start().await?)
            }
            None => self.container.signal(Signal::SIGKILL).await,
        }
    }

    async fn stop_sidecars(&self, deadline: Instant) {
        self.sidecars.stop(deadline).await;
    }

    fn kill_sidecars(&self) {
        self.sidecars.kill();
    }

    async fn post_stop(&self, stages: &Stages) -> Option<HookReport> {
        let runc = self.container.runc();
        let sink = self.sink.clone();
        run_post_stop(
            runc,
            &self.post_stop_base,
            &self.bundle,
            &self.state,
            stages,
            sink,
        )
        .await
    }

    fn record_health(&self, result: &HealthResult) {
        self.health.record(result);
    }

    type Changes = watch::Watcher;

    /// Found on the host again: the volume may have changed since the plan was checked.
    fn watch(&self, paths: &[String]) -> Result<watch::Watcher, ContainerError> {
        let found = watch::resolve_all(self.binds, paths).map_err(ContainerError::Watch)?;
        watch::Watcher::new(found).map_err(ContainerError::Watch)
    }

    fn report(&self, message: &str) {
        // On stderr the message is already where the log goes.
        if !matches!(self.sink, Sink::Stderr) {
            tracing::warn!(container = %self.container.id(), "{message}");
        }
        self.sink
            .write_line(&format!("lifecycle-shim: {message}\n"));
    }
}
