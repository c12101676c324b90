//! One container's whole life, decided in one place for every front end: the init sequence
//! (init containers, sidecars, `once` steps), the entrypoint's start, PostStart, health checks,
//! reconfigure runs, the stop sequence, the sidecars' stop, postStop, and the [`Outcome`]. A
//! front end (`run`, the containerd task) turns what it is asked into [`Request`]s and the
//! outcome into its exit status; what the supervisor acts on is a [`Supervised`] container.

use std::future::Future;
use std::pin::{pin, Pin};
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{sleep_until, Instant};

use crate::container::{ExitStatus, InitHost, Phase};
use crate::engine::{kill_deadline, run_init_containers, run_phase, terminate};
use crate::engine::{HookReport, InitFailure};
use crate::health::{splay, watch_health, HealthResult};
use crate::plan::{Plan, Reconfigure, Stages};
use crate::reconfigure::{watch_reconfigure, Changes};

/// What the supervisor acts on besides hook processes and the init sequence.
pub trait Supervised: InitHost {
    /// Starts the created container's entrypoint (`runc start`).
    fn start_entrypoint(&self) -> impl Future<Output = Result<(), Self::Error>>;

    /// The entrypoint will never start: the created container ends, with `code` (a failed init
    /// container's status) where the front end can give it that, else killed.
    fn end_unstarted(&self, code: i32) -> impl Future<Output = Result<(), Self::Error>>;

    /// Stops the sidecars, last started first: their stop signal, SIGKILL at `deadline`.
    fn stop_sidecars(&self, deadline: Instant) -> impl Future<Output = ()>;

    /// SIGKILL to every sidecar, at once.
    fn kill_sidecars(&self);

    /// Runs the postStop stages, each handler in a run of its own; returns the failure, if any.
    fn post_stop(&self, stages: &Stages) -> impl Future<Output = Option<HookReport>>;

    /// The latest health-check result, for whoever asks for the container's health.
    fn record_health(&self, result: &HealthResult);

    /// What tells of changes to the reconfigure entry's files.
    type Changes: Changes;

    /// Starts watching `paths` (inside the container) for changes; they are watched until the
    /// returned value is dropped.
    fn watch(&self, paths: &[String]) -> Result<Self::Changes, Self::Error>;

    /// A lifecycle message for the user, where the container's output goes.
    fn report(&self, message: &str);
}

/// What a front end asks of the supervisor.
#[derive(Debug)]
pub enum Request<E> {
    /// Run the init sequence, then start the entrypoint. The answer comes once the entrypoint
    /// runs (an error means it could not start); with init containers, at the latest after
    /// `wait`, and the rest goes on in the background (they may take longer than a caller
    /// waits).
    Start {
        reply: oneshot::Sender<Result<(), E>>,
        wait: Duration,
    },
    /// A graceful stop (the stop signal or SIGTERM): the shutdown delay and PreStop within the
    /// grace period, the stop signal, SIGKILL at the deadline. Before the entrypoint started,
    /// the init sequence ends and the container is killed.
    Stop(Signal),
    /// The front end sent SIGKILL to the container: a stop sequence still running is cut
    /// short (a PreStop with it), the sidecars are killed too, and before the entrypoint
    /// started the init sequence ends.
    Kill,
}

/// How the container ended.
#[derive(Debug)]
pub enum Ended {
    /// The entrypoint ran, however briefly, and exited with this status.
    Exited(ExitStatus),
    /// An init container failed (or a sidecar or `once` step could not start).
    InitFailed(InitFailure),
    /// A stop was requested before the entrypoint started.
    StoppedBeforeStart(Signal),
    /// `runc start` failed (the error went to the Start request, or was reported).
    StartFailed,
    /// The container's init ended before its entrypoint was started (e.g. it was killed).
    DiedBeforeStart(ExitStatus),
}

/// The one verdict on a container's life.
#[derive(Debug)]
pub struct Outcome {
    pub ended: Ended,
    /// PostStart failed (and stopped the container).
    pub hook_failed: bool,
    /// Why a hook stopped the container (a failed PostStart, an unhealthy health check), as
    /// reported.
    pub stopped_by: Option<String>,
}

impl Outcome {
    /// The exit status to report: the entrypoint's, but never success after a failed PostStart;
    /// a failed init container's; 128+N for a stop with signal N before the entrypoint started.
    pub fn code(&self) -> i32 {
        match &self.ended {
            Ended::Exited(status) if self.hook_failed && status.success() => 1,
            Ended::Exited(status) | Ended::DiedBeforeStart(status) => status.code(),
            Ended::InitFailed(failure) => failure.exit_code(),
            Ended::StoppedBeforeStart(signal) => 128 + *signal as i32,
            Ended::StartFailed => 128 + Signal::SIGKILL as i32,
        }
    }

    /// Why a hook failure ended the container, for its termination message: the failed init
    /// container, PostStart or health check, with the hook's output.
    pub fn failure(&self) -> Option<String> {
        match &self.ended {
            Ended::InitFailed(failure) => Some(format!("{}: {failure}", failure.report.reason())),
            _ => self.stopped_by.clone(),
        }
    }

    /// Whether the entrypoint ever ran (postStop runs only then).
    pub fn entrypoint_started(&self) -> bool {
        matches!(self.ended, Ended::Exited(_))
    }
}

/// Supervises one container from its creation: waits for [`Request::Start`] (or its exit),
/// runs its life, and returns once it has exited and everything that follows (the sidecars'
/// stop, postStop) is done. `exit` resolves when the container's init has exited; `started` is
/// called once the entrypoint runs.
pub async fn supervise<S: Supervised>(
    c: &S,
    plan: &Plan,
    exit: impl Future<Output = ExitStatus>,
    requests: &mut mpsc::UnboundedReceiver<Request<S::Error>>,
    started: impl FnOnce(),
) -> Outcome {
    let mut exit = pin!(exit);
    let mut stop_began = None;
    let outcome = match before_start(c, plan, exit.as_mut(), requests).await {
        Some(ended) => Outcome {
            ended,
            hook_failed: false,
            stopped_by: None,
        },
        None => {
            started();
            running(c, plan, exit, requests, &mut stop_began).await
        }
    };
    // The entrypoint is gone (or never ran): then the sidecars, within the grace period.
    let deadline = kill_deadline(stop_began.unwrap_or_else(Instant::now), plan.grace);
    let mut stopping = pin!(c.stop_sidecars(deadline));
    loop {
        tokio::select! {
            () = &mut stopping => break,
            Some(request) = requests.recv() => match request {
                Request::Kill => c.kill_sidecars(),
                // It has ended: a Start is answered by the sender's end closing.
                Request::Start { .. } | Request::Stop(_) => {}
            },
        }
    }
    if outcome.entrypoint_started() && !plan.post_stop.is_empty() {
        // A failure is reported and leaves the status as it is.
        if let Some(report) = c.post_stop(&plan.post_stop).await {
            c.report(&report.message());
        }
    }
    outcome
}

/// Until the entrypoint runs: `None` once it does, or how the container ended before.
async fn before_start<S: Supervised>(
    c: &S,
    plan: &Plan,
    mut exit: Pin<&mut impl Future<Output = ExitStatus>>,
    requests: &mut mpsc::UnboundedReceiver<Request<S::Error>>,
) -> Option<Ended> {
    let (reply, wait) = loop {
        tokio::select! {
            status = exit.as_mut() => return Some(Ended::DiedBeforeStart(status)),
            Some(request) = requests.recv() => match request {
                Request::Start { reply, wait } => break (reply, wait),
                // Before Start the front end signals the container itself.
                Request::Stop(_) | Request::Kill => {}
            },
        }
    };
    let ended = if plan.init_containers.is_empty() {
        match c.start_entrypoint().await {
            Ok(()) => {
                let _ = reply.send(Ok(()));
                return None;
            }
            Err(error) => {
                let _ = reply.send(Err(error));
                Ended::StartFailed
            }
        }
    } else {
        // Init containers may take longer than the caller waits for Start: it is answered
        // once they are done, or at `wait`.
        let answer_by = Instant::now() + wait;
        let mut reply = Some(reply);
        let answer = |reply: &mut Option<oneshot::Sender<Result<(), S::Error>>>| {
            if let Some(reply) = reply.take() {
                let _ = reply.send(Ok(()));
            }
        };
        if wait.is_zero() {
            answer(&mut reply);
        }
        let mut inits = pin!(run_init_containers(c, &plan.init_containers));
        let ended = loop {
            tokio::select! {
                biased;
                Some(signal) = stop_requested(requests) => {
                    tracing::info!(%signal, "stop requested before the entrypoint started");
                    break Ended::StoppedBeforeStart(signal);
                }
                status = exit.as_mut() => {
                    answer(&mut reply);
                    return Some(Ended::DiedBeforeStart(status));
                }
                () = sleep_until(answer_by), if reply.is_some() => {
                    tracing::info!("init containers still running; Start answered");
                    answer(&mut reply);
                }
                result = &mut inits => break match result {
                    Err(failure) => {
                        c.report(&format!("{failure}; the entrypoint was not started"));
                        Ended::InitFailed(failure)
                    }
                    Ok(()) => match c.start_entrypoint().await {
                        Ok(()) => {
                            answer(&mut reply);
                            return None;
                        }
                        Err(error) => {
                            c.report(&format!("starting the entrypoint failed: {error}"));
                            Ended::StartFailed
                        }
                    },
                },
            }
        };
        answer(&mut reply);
        ended
    };
    // It never ran: the container goes.
    let ended_by = match &ended {
        Ended::InitFailed(failure) => c.end_unstarted(failure.exit_code()).await,
        _ => c.signal(Signal::SIGKILL).await,
    };
    if let Err(error) = ended_by {
        tracing::warn!(container = c.id(), %error, "could not end the container");
    }
    exit.await;
    Some(ended)
}

/// The next stop request; Start requests meanwhile are answered (it is starting already).
async fn stop_requested<E>(requests: &mut mpsc::UnboundedReceiver<Request<E>>) -> Option<Signal> {
    loop {
        match requests.recv().await? {
            Request::Stop(signal) => return Some(signal),
            Request::Kill => return Some(Signal::SIGKILL),
            Request::Start { reply, .. } => drop(reply.send(Ok(()))),
        }
    }
}

/// Why a running container's lifecycle called for a stop.
enum Alarm {
    PostStartFailed(HookReport),
    Unhealthy,
    /// The reconfigure handler failed (or its files could not be watched), and the spec asks
    /// that this stop the container.
    ReconfigureFailed(String),
}

/// Reconfigure runs from now until a stop begins (`stopping` turns true), when the watch
/// ends. Returns only when a failure is to stop the container.
async fn reconfigure<S: Supervised>(
    c: &S,
    r: &Reconfigure,
    mut stopping: watch::Receiver<bool>,
) -> Alarm {
    let failure = match c.watch(&r.paths) {
        Err(error) => {
            let message = format!("FailedReconfigureHook: cannot watch {:?}: {error}", r.paths);
            c.report(&message);
            Some(message)
        }
        Ok(mut changes) => {
            tracing::info!(container = c.id(), paths = ?r.paths, "watching for configuration changes");
            let observe = |report: &HookReport| {
                if report.failed() {
                    c.report(&report.message());
                }
            };
            tokio::select! {
                failed = watch_reconfigure(c, r, &mut changes, observe) => {
                    failed.map(|report| report.message())
                }
                _ = stopping.wait_for(|stopping| *stopping) => None,
            }
        }
    };
    match failure {
        Some(message) if r.stop_on_failure => Alarm::ReconfigureFailed(message),
        _ => std::future::pending().await,
    }
}

/// The started container's life: PostStart beside the entrypoint, then health checks and
/// reconfigure runs (until a stop begins), the stop sequence on request or when one fails,
/// until the entrypoint exits (which cancels any hook still running).
async fn running<S: Supervised>(
    c: &S,
    plan: &Plan,
    mut exit: Pin<&mut impl Future<Output = ExitStatus>>,
    requests: &mut mpsc::UnboundedReceiver<Request<S::Error>>,
    stop_began: &mut Option<Instant>,
) -> Outcome {
    let (stop_begun, stop_begun_seen) = watch::channel(false);
    let mut lifecycle = pin!(async {
        if let Some(report) = run_phase(c, Phase::PostStart, &plan.post_start, None).await {
            return Alarm::PostStartFailed(report);
        }
        let health = async {
            match &plan.health_check {
                Some(check) => {
                    watch_health(c, check, splay(check.period), |r| c.record_health(r)).await;
                    Alarm::Unhealthy
                }
                None => std::future::pending().await,
            }
        };
        let reconfigure = async {
            match &plan.reconfigure {
                Some(r) => reconfigure(c, r, stop_begun_seen).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            alarm = health => alarm,
            alarm = reconfigure => alarm,
        }
    });
    // Dropped when SIGKILL cuts it short, which kills a PreStop still running.
    let mut stop = Some(Box::pin(terminate(c, plan)));
    let (mut lifecycle_done, mut hook_failed, mut stopped_by) = (false, false, None);
    loop {
        if stop_began.is_some() {
            stop_begun.send_if_modified(|begun| !std::mem::replace(begun, true));
        }
        let stopping = stop_began.is_some() && stop.is_some();
        tokio::select! {
            status = exit.as_mut() => return Outcome { ended: Ended::Exited(status), hook_failed, stopped_by },
            ended = &mut lifecycle, if !lifecycle_done => {
                lifecycle_done = true;
                stop_began.get_or_insert_with(Instant::now);
                match ended {
                    Alarm::PostStartFailed(report) => {
                        let message = report.message();
                        c.report(&message);
                        stopped_by = Some(message);
                        hook_failed = true;
                    }
                    Alarm::Unhealthy => {
                        let message = "health check critical too many times in a row; stopping";
                        c.report(message);
                        stopped_by = Some(message.to_owned());
                    }
                    Alarm::ReconfigureFailed(message) => {
                        c.report("the reconfigure hook failed; stopping");
                        stopped_by = Some(message);
                    }
                }
            }
            Some(request) = requests.recv() => match request {
                Request::Stop(signal) if stop_began.is_some() => {
                    tracing::info!(%signal, "already stopping; signal ignored");
                }
                Request::Stop(signal) => {
                    tracing::info!(%signal, "stop requested");
                    *stop_began = Some(Instant::now());
                }
                Request::Kill => {
                    stop = None;
                    stop_began.get_or_insert_with(Instant::now);
                    c.kill_sidecars();
                }
                Request::Start { reply, .. } => drop(reply.send(Ok(()))),
            },
            () = async { stop.as_mut().expect("polled only while stopping").await }, if stopping => {
                stop = None;
            }
        }
    }
}
