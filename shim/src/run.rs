//! `lifecycle-shim run`: one container in the foreground, like `runc run`, with its hooks.
//!
//! create → init containers → start → PostStart beside the entrypoint → wait; SIGTERM or SIGINT
//! to the shim runs the stop sequence. The container is deleted on every path once created.

use std::path::{Path, PathBuf};

use lifecycle_hooks::supervisor::{supervise, Ended, Outcome, Request};
use lifecycle_hooks::{ExitStatus, Plan};
use nix::sys::signal::Signal;
use tokio::signal::unix::{signal, Signal as SignalStream, SignalKind};
use tokio::sync::{mpsc, oneshot};

use crate::bundle::{Bundle, BundleError};
use crate::lifecycle::container::{ContainerError, RuncContainer, SignalRoute};
use crate::lifecycle::output::Sink;
use crate::lifecycle::sidecar::{SidecarHost, Sidecars};
use crate::lifecycle::status::{status_path, StatusFile};
use crate::lifecycle::RuncLife;
use crate::os::pidfile::{PidFileWatch, Started};
use crate::os::reaper::Reaper;
use crate::os::runc::{Launched, ProcessIo, Runc, RuncConfig, RuncError, Until};

/// Exit status for a failure of the shim or the runtime rather than the container (as Docker's
/// 125), so that it is not mistaken for the container's own.
pub const EXIT_RUNTIME_FAILURE: i32 = 125;
/// Exit status for bad input: a missing bundle, a bad config.json or spec.
pub const EXIT_BAD_INPUT: i32 = 2;

pub struct RunOptions {
    pub bundle: PathBuf,
    pub id: Option<String>,
    pub runtime: PathBuf,
    pub root: Option<PathBuf>,
    pub spec_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Runc(#[from] RuncError),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("the container's init process ended with {0} before it was started")]
    DiedBeforeStart(ExitStatus),
}

impl RunError {
    pub fn exit_code(&self) -> i32 {
        match self {
            RunError::Bundle(_) => EXIT_BAD_INPUT,
            _ => EXIT_RUNTIME_FAILURE,
        }
    }

    fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> RunError {
        move |source| RunError::Io { what, source }
    }
}

/// Runs the bundle and returns the status `run` should exit with.
pub async fn run(options: RunOptions) -> Result<i32, RunError> {
    let bundle = Bundle::load(&options.bundle)?;
    bundle.refuse_terminal()?;
    let (origin, plan) = bundle.plan(options.spec_file.as_deref())?;
    tracing::debug!(%origin, "lifecycle plan loaded");
    let id = options.id.unwrap_or_else(|| default_id(&bundle.path));

    let reaper = Reaper::start().map_err(RunError::io("cannot become a child subreaper"))?;
    // Listening from here on: a stop requested while the container is being created is kept.
    let mut stops = StopRequests::listen().map_err(RunError::io("cannot handle signals"))?;
    let state = tempfile::Builder::new()
        .prefix("lifecycle-shim-")
        .tempdir()
        .map_err(RunError::io("cannot create a state directory"))?;
    let launch = Launch {
        runc: Runc::new(RuncConfig::new(options.runtime, options.root), reaper),
        id,
        binds: bundle.binds,
        bundle: bundle.path,
        state: state.path().to_owned(),
    };
    let (requests, mut received) = mpsc::unbounded_channel();
    // Start first: a stop requested meanwhile comes after it, and is kept.
    // Nobody waits for the answer.
    let _ = requests.send(Request::Start {
        reply: oneshot::channel().0,
        wait: std::time::Duration::ZERO,
    });
    tokio::spawn(async move {
        loop {
            let signal = stops.recv().await;
            if requests.send(Request::Stop(signal)).is_err() {
                break;
            }
        }
    });
    let outcome = if plan.init_containers.is_empty() {
        launch.foreground(&plan, &mut received).await?
    } else {
        launch.created(&plan, &mut received).await?
    };
    match outcome.ended {
        Ended::DiedBeforeStart(status) => Err(RunError::DiedBeforeStart(status)),
        // Reported already, by the supervisor.
        Ended::StartFailed => Ok(EXIT_RUNTIME_FAILURE),
        _ => Ok(outcome.code()),
    }
}

struct Launch {
    runc: Runc,
    id: String,
    binds: Vec<crate::lifecycle::once::Bind>,
    bundle: PathBuf,
    /// Private directory for pid files and runc's log.
    state: PathBuf,
}

type Requests = mpsc::UnboundedReceiver<Request<ContainerError>>;

impl Launch {
    /// Without init containers: one `runc run` in the foreground, which creates, starts, waits
    /// for and deletes the container, as fast as plain `runc run`.
    async fn foreground(&self, plan: &Plan, requests: &mut Requests) -> Result<Outcome, RunError> {
        let pid_file = self.state.join("init.pid");
        let log = self.state.join("runc.log");
        let mut watch = PidFileWatch::new(&self.state)
            .map_err(RunError::io("cannot watch for runc's pid file"))?;
        let (child, mut exit) = self.runc.run(
            &self.id,
            &self.bundle,
            &pid_file,
            &log,
            ProcessIo::inherit(),
        )?;
        let route = SignalRoute::Runc {
            pid: child.id() as i32,
        };
        let outcome = match watch.wait(&pid_file, &mut exit).await {
            Started::Exited(status) => Outcome {
                ended: Ended::Exited(status),
                hook_failed: false,
                stopped_by: None,
            },
            Started::Running(pid) => {
                let sidecars = self.sidecars(plan, pid);
                let life = self.life(pid, route, &sidecars, true);
                supervise(&life, plan, exit, requests, || {}).await
            }
        };
        if let Ended::Exited(status) = outcome.ended {
            if let ExitStatus::Signaled(_) = status {
                // runc itself was killed and could not clean up.
                self.delete().await;
            }
            if let Some(error) = self.runc.logged_failure("run", &self.id, status, &log) {
                return Err(error.into());
            }
        }
        Ok(outcome)
    }

    /// With init containers: `runc create`, the init containers through `runc exec` in the
    /// created container, then `runc start`; the container is deleted on every path.
    async fn created(&self, plan: &Plan, requests: &mut Requests) -> Result<Outcome, RunError> {
        let pid_file = self.state.join("init.pid");
        let log = self.state.join("runc.log");
        let create = self.runc.create(
            Until::Created,
            &self.id,
            &self.bundle,
            &pid_file,
            &log,
            ProcessIo::inherit(),
        );
        let Launched { pid, exit } = match self.runc.launched(&pid_file, create).await {
            Ok(((), launched)) => launched,
            Err(error) => {
                // runc may have got part of the way; never touch a container that was already
                // there.
                if !error.id_taken() {
                    self.delete().await;
                }
                return Err(error.into());
            }
        };
        let sidecars = self.sidecars(plan, pid);
        let life = self.life(pid, SignalRoute::Init, &sidecars, false);
        let outcome = supervise(&life, plan, exit, requests, || {}).await;
        drop(life);
        self.delete().await;
        Ok(outcome)
    }

    fn sidecars(&self, plan: &Plan, pid: i32) -> Sidecars {
        let host = SidecarHost {
            runc: self.runc.clone(),
            base_id: self.id.clone(),
            bundle: self.bundle.clone(),
            state: self.state.clone(),
            pid,
            stop_signal: plan.stop_signal,
        };
        Sidecars::new(host, Sink::Stderr)
    }

    /// The container as the supervisor acts on it.
    fn life<'a>(
        &'a self,
        pid: i32,
        route: SignalRoute,
        sidecars: &'a Sidecars,
        started_with_the_container: bool,
    ) -> RuncLife<'a> {
        RuncLife {
            container: RuncContainer::new(
                &self.runc,
                &self.id,
                pid,
                route,
                &self.state,
                Sink::Stderr,
            ),
            sidecars,
            binds: &self.binds,
            sandbox: None,
            started_with_the_container,
            bundle: self.bundle.clone(),
            post_stop_base: self.id.clone(),
            state: self.state.clone(),
            health: StatusFile::new(status_path(None, &self.id)),
            sink: Sink::Stderr,
            gate: None,
        }
    }

    async fn delete(&self) {
        if let Err(error) = self.runc.delete(&self.id).await {
            tracing::warn!(%error, "could not delete the container");
        }
    }
}

/// SIGTERM and SIGINT to the shim, the requests for a graceful stop.
struct StopRequests {
    term: SignalStream,
    int: SignalStream,
}

impl StopRequests {
    fn listen() -> std::io::Result<StopRequests> {
        Ok(StopRequests {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn recv(&mut self) -> Signal {
        tokio::select! {
            Some(()) = self.term.recv() => Signal::SIGTERM,
            Some(()) = self.int.recv() => Signal::SIGINT,
        }
    }
}

/// The bundle directory's name and the shim's pid: unique on this host, recognisable in
/// `runc list`.
fn default_id(bundle: &Path) -> String {
    let name: String = bundle
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    let name = if name.is_empty() {
        "container".to_owned()
    } else {
        name
    };
    format!("{name}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_ids_are_safe_for_runc() {
        let pid = std::process::id();
        assert_eq!(
            default_id(Path::new("/x/my bundle!")),
            format!("my-bundle--{pid}")
        );
        assert_eq!(default_id(Path::new("/")), format!("container-{pid}"));
    }
}
