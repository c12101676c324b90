//! `lifecycle-shim run`: one container in the foreground, like `runc run`, with its hooks.
//!
//! create → init containers → start → PostStart beside the entrypoint → wait; SIGTERM or SIGINT
//! to the shim runs the stop sequence. The container is deleted on every path once created.

use std::path::{Path, PathBuf};
use std::pin::pin;

use lifecycle_hooks::engine::kill_deadline;
use lifecycle_hooks::health::{splay, watch_health};
use lifecycle_hooks::{run_phase, terminate, Container, ExitStatus, HookReport, Phase, Plan};
use nix::sys::signal::Signal;
use tokio::signal::unix::{signal, Signal as SignalStream, SignalKind};
use tokio::time::Instant;

use crate::bundle::{Bundle, BundleError};
use crate::container::{RuncContainer, SignalRoute};
use crate::inits::run_inits;
use crate::output::Sink;
use crate::pidfile::{PidFileWatch, Started};
use crate::poststop::run_post_stop;
use crate::reaper::{Exit, Reaper};
use crate::runc::{Launched, ProcessIo, Runc, RuncConfig, RuncError, Until};
use crate::sidecar::{SidecarHost, Sidecars};
use crate::status::{status_path, StatusFile};

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
    let ran = if plan.init_containers.is_empty() {
        launch.foreground(&plan, &mut stops).await?
    } else {
        launch.created(&plan, &mut stops).await?
    };
    if ran.started && !plan.post_stop.is_empty() {
        let failure = run_post_stop(
            &launch.runc,
            &launch.id,
            &launch.bundle,
            &launch.state,
            &plan.post_stop,
            Sink::Stderr,
        )
        .await;
        // Reported; the container's own status stands.
        if let Some(report) = failure {
            eprintln!("lifecycle-shim: {}: {report}", report.reason());
        }
    }
    Ok(ran.code)
}

/// What a launch ended with, and whether the entrypoint ever started (postStop runs only then).
struct Ran {
    code: i32,
    started: bool,
}

impl Ran {
    fn started(code: i32) -> Ran {
        Ran {
            code,
            started: true,
        }
    }

    fn not_started(code: i32) -> Ran {
        Ran {
            code,
            started: false,
        }
    }
}

struct Launch {
    runc: Runc,
    id: String,
    binds: Vec<crate::once::Bind>,
    bundle: PathBuf,
    /// Private directory for pid files and runc's log.
    state: PathBuf,
}

impl Launch {
    /// Without init containers: one `runc run` in the foreground, which creates, starts, waits
    /// for and deletes the container, as fast as plain `runc run`.
    async fn foreground(&self, plan: &Plan, stops: &mut StopRequests) -> Result<Ran, RunError> {
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
            Started::Exited(status) => Outcome::plain(status),
            Started::Running(pid) => {
                let container =
                    RuncContainer::new(&self.runc, &self.id, pid, route, &self.state, Sink::Stderr);
                supervise(&container, plan, exit, stops).await
            }
        };
        if let ExitStatus::Signaled(_) = outcome.status {
            // runc itself was killed and could not clean up.
            self.delete().await;
        }
        if let Some(error) = self
            .runc
            .logged_failure("run", &self.id, outcome.status, &log)
        {
            return Err(error.into());
        }
        Ok(Ran::started(outcome.code()))
    }

    /// With init containers: `runc create`, the init containers through `runc exec` in the
    /// created container, then `runc start`; the container is deleted on every path.
    async fn created(&self, plan: &Plan, stops: &mut StopRequests) -> Result<Ran, RunError> {
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
        let Launched { pid, mut exit } = match self.runc.launched(&pid_file, create).await {
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
        let result = async {
            let container = RuncContainer::new(
                &self.runc,
                &self.id,
                pid,
                SignalRoute::Init,
                &self.state,
                Sink::Stderr,
            );
            let sidecars = Sidecars::new(
                SidecarHost {
                    runc: self.runc.clone(),
                    base_id: self.id.clone(),
                    bundle: self.bundle.clone(),
                    state: self.state.clone(),
                    pid,
                    stop_signal: plan.stop_signal,
                },
                Sink::Stderr,
            );
            let result = async {
                tokio::select! {
                    biased;
                    signal = stops.recv() => {
                        tracing::info!(%signal, "stop requested before the entrypoint started");
                        return Ok((Ran::not_started(128 + signal as i32), Instant::now()));
                    }
                    status = &mut exit => return Err(RunError::DiedBeforeStart(status)),
                    result = run_inits(&container, &plan.init_containers, &self.binds, &sidecars) => {
                        if let Err(failure) = result {
                            eprintln!("lifecycle-shim: {failure}");
                            eprintln!("lifecycle-shim: the entrypoint was not started");
                            return Ok((Ran::not_started(failure.exit_code()), Instant::now()));
                        }
                    }
                }
                container.start().await?;
                let outcome = supervise(&container, plan, exit, stops).await;
                let stop_began = outcome.stop_began.unwrap_or_else(Instant::now);
                Ok((Ran::started(outcome.code()), stop_began))
            }
            .await;
            // The entrypoint is gone (or never ran): then the sidecars, within the grace period.
            let stop_began = result.as_ref().map_or_else(|_| Instant::now(), |(_, t)| *t);
            sidecars.stop(kill_deadline(stop_began, plan.grace)).await;
            result.map(|(ran, _)| ran)
        }
        .await;
        self.delete().await;
        result
    }

    async fn delete(&self) {
        if let Err(error) = self.runc.delete(&self.id).await {
            tracing::warn!(%error, "could not delete the container");
        }
    }
}

/// How the entrypoint ended, whether a failed PostStart ended it, and when a stop began.
struct Outcome {
    status: ExitStatus,
    hook_failed: bool,
    stop_began: Option<Instant>,
}

impl Outcome {
    fn plain(status: ExitStatus) -> Outcome {
        Outcome {
            status,
            hook_failed: false,
            stop_began: None,
        }
    }

    /// A failed PostStart never looks like success, even if the container's stop handler
    /// exits 0.
    fn code(&self) -> i32 {
        match self.status.code() {
            0 if self.hook_failed => 1,
            code => code,
        }
    }
}

/// The started container's life: PostStart beside the entrypoint, the stop sequence on request
/// or when PostStart fails, until the entrypoint exits (which cancels any hook still running).
async fn supervise(
    c: &RuncContainer<'_>,
    plan: &Plan,
    mut exit: Exit,
    stops: &mut StopRequests,
) -> Outcome {
    // PostStart, then the health checks; this ends only when one of them calls for a stop.
    let mut lifecycle = pin!(async {
        if let Some(report) = run_phase(c, Phase::PostStart, &plan.post_start, None).await {
            return Ended::PostStartFailed(report);
        }
        match &plan.health_check {
            Some(check) => {
                let file = StatusFile::new(status_path(None, Container::id(c)));
                watch_health(c, check, splay(check.period), |r| file.record(r)).await;
                Ended::Unhealthy
            }
            None => std::future::pending().await,
        }
    });
    let mut stop = pin!(terminate(c, plan));
    let (mut lifecycle_done, mut killed, mut hook_failed) = (false, false, false);
    let mut stop_began = None;
    loop {
        let stopping = stop_began.is_some();
        tokio::select! {
            status = &mut exit => return Outcome { status, hook_failed, stop_began },
            ended = &mut lifecycle, if !lifecycle_done => {
                lifecycle_done = true;
                stop_began.get_or_insert_with(Instant::now);
                match ended {
                    Ended::PostStartFailed(report) => {
                        eprintln!("lifecycle-shim: {}: {report}", report.reason());
                        hook_failed = true;
                    }
                    Ended::Unhealthy => eprintln!("lifecycle-shim: health check critical too many times in a row; stopping"),
                }
            }
            signal = stops.recv() => {
                if stopping {
                    tracing::info!(%signal, "already stopping; signal ignored");
                } else {
                    tracing::info!(%signal, "stop requested");
                    stop_began = Some(Instant::now());
                }
            }
            () = &mut stop, if stopping && !killed => killed = true,
        }
    }
}

/// Why the lifecycle of a running container called for a stop.
enum Ended {
    PostStartFailed(HookReport),
    Unhealthy,
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
