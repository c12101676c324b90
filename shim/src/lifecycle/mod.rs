//! A runc container as the lifecycle supervisor acts on it, for every front end: hook
//! processes through [`RuncContainer`], sidecars, `once` records in the bundle's volumes, the
//! entrypoint's start, postStop runs, the health status file, and messages for the user.

pub mod container;
pub mod hook_process;
pub mod once;
pub mod output;
pub mod poststop;
pub mod sidecar;
pub mod status;

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

use lifecycle_hooks::container::{InitHost, OnceTicket};
use lifecycle_hooks::health::HealthResult;
use lifecycle_hooks::plan::{InitContainer, Once};
use lifecycle_hooks::supervisor::Supervised;
use lifecycle_hooks::{Container, ExecOutput, ExecRequest, HookReport, Stages};
use nix::sys::signal::Signal;
use tokio::time::Instant;

use crate::lifecycle::container::{ContainerError, RuncContainer};
use crate::lifecycle::once::{begin, Bind, Ticket};
use crate::lifecycle::output::Sink;
use crate::lifecycle::poststop::run_post_stop;
use crate::lifecycle::sidecar::Sidecars;
use crate::lifecycle::status::StatusFile;

pub struct RuncLife<'a> {
    pub container: RuncContainer<'a>,
    pub sidecars: &'a Sidecars,
    pub binds: &'a [Bind],
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
}

impl OnceTicket for Ticket {
    fn finish(self: Box<Self>, succeeded: bool) -> io::Result<()> {
        Ticket::finish(*self, succeeded)
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

    async fn begin_once(&self, once: &Once) -> Result<Option<Box<dyn OnceTicket>>, ContainerError> {
        let ticket = begin(self.binds, once)
            .await
            .map_err(ContainerError::Once)?;
        Ok(ticket.map(|t| Box::new(t) as Box<dyn OnceTicket>))
    }
}

impl Supervised for RuncLife<'_> {
    async fn start_entrypoint(&self) -> Result<(), ContainerError> {
        if self.started_with_the_container {
            return Ok(());
        }
        Ok(self.container.start().await?)
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

    fn report(&self, message: &str) {
        // On stderr the message is already where the log goes.
        if !matches!(self.sink, Sink::Stderr) {
            tracing::warn!(container = %self.container.id(), "{message}");
        }
        self.sink
            .write_line(&format!("lifecycle-shim: {message}\n"));
    }
}
