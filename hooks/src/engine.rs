//! Runs a plan's phases against a [`Container`]: one handler, the init containers in order, and
//! the termination sequence (PreStop, stop signal, SIGKILL at the end of the grace period).

use std::fmt;
use std::time::Duration;

use futures_util::future::join_all;
use nix::sys::signal::Signal;
use tokio::time::{sleep_until, Instant};

use crate::container::{Container, ExecRequest, ExitStatus, InitHost, Phase};
use crate::http::{self, HttpError};
use crate::plan::{Action, Hook, InitContainer, Plan, Stages};
use crate::seconds::Seconds;

/// Kubernetes leaves at least this long between the stop signal and SIGKILL, however much of the
/// grace period PreStop used.
pub const MIN_STOP_GRACE: Duration = Duration::from_secs(2);

/// Why a handler failed.
#[derive(Debug, thiserror::Error)]
pub enum HookFailure {
    #[error("exited with {0}")]
    Exited(ExitStatus),
    #[error("timed out after {}", Seconds(*.0))]
    TimedOut(Duration),
    #[error("HTTP status {0} (200-399 is success)")]
    HttpStatus(u16),
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("could not be started: {0}")]
    Runtime(Box<dyn std::error::Error + Send + Sync>),
    #[error("cut short: the container exited while it ran")]
    ContainerExited,
}

/// The outcome of one handler run: what the engine logs and callers show.
#[derive(Debug)]
pub struct HookReport {
    pub phase: Phase,
    /// The init container's name, for [`Phase::Init`].
    pub name: Option<String>,
    pub handler: &'static str,
    /// What a reconfigure run was for: the changed paths, as the container sees them.
    pub changed: Option<String>,
    pub elapsed: Duration,
    pub exit_code: Option<i32>,
    pub http_status: Option<u16>,
    /// Bounded tail of the process's output, or of the HTTP body.
    pub output: String,
    pub result: Result<(), HookFailure>,
}

impl HookReport {
    /// True when the handler failed; false when it succeeded or was cut short by the container
    /// exiting, which calls for no action.
    pub fn failed(&self) -> bool {
        !matches!(self.result, Ok(()) | Err(HookFailure::ContainerExited))
    }

    /// The failure as the user is told of it: its reason, then the report.
    pub fn message(&self) -> String {
        format!("{}: {self}", self.reason())
    }

    /// The Kubernetes event reason for this failure, e.g. `FailedPostStartHook`.
    pub fn reason(&self) -> &'static str {
        match self.phase {
            Phase::PostStart => "FailedPostStartHook",
            Phase::PreStop => "FailedPreStopHook",
            Phase::Init => "FailedInitContainer",
            Phase::PostStop => "FailedPostStopHook",
            Phase::HealthCheck => "FailedHealthCheck",
            Phase::Reconfigure => "FailedReconfigureHook",
        }
    }

    fn log(&self) {
        let phase = self.phase.as_str();
        // Milliseconds with microsecond precision: most hooks take well under a millisecond.
        let duration_ms = (self.elapsed.as_secs_f64() * 1e6).round() / 1e3;
        let name = self.name.as_deref();
        let changed = self.changed.as_deref();
        match &self.result {
            Err(HookFailure::ContainerExited) => tracing::info!(
                phase,
                name,
                changed,
                handler = self.handler,
                duration_ms,
                outcome = "cancelled",
                "hook cut short by the container's exit"
            ),
            Ok(()) => tracing::info!(
                phase,
                name,
                changed,
                handler = self.handler,
                duration_ms,
                outcome = "ok",
                exit_code = self.exit_code,
                http_status = self.http_status,
                "hook finished"
            ),
            Err(error) => tracing::warn!(
                phase,
                name,
                changed,
                handler = self.handler,
                duration_ms,
                outcome = "failed",
                reason = self.reason(),
                exit_code = self.exit_code,
                http_status = self.http_status,
                %error,
                output = self.output.trim_end(),
                "hook failed"
            ),
        }
    }
}

impl fmt::Display for HookReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.phase, self.handler)?;
        if let Some(name) = &self.name {
            write!(f, " {name:?}")?;
        }
        if let Some(changed) = &self.changed {
            write!(f, " (changed: {changed})")?;
        }
        match &self.result {
            Ok(()) => write!(f, " succeeded")?,
            Err(error) => write!(f, " failed: {error}")?,
        }
        write!(f, " ({})", Seconds(self.elapsed))?;
        let output = self.output.trim_end();
        if !output.is_empty() {
            write!(f, "; output:\n{output}")?;
        }
        Ok(())
    }
}

/// Runs a phase: its stages in order, the handlers of a stage concurrently, each with its
/// retries. Returns the first failure; a failed stage ends the phase (later stages do not run),
/// and so does `outer` passing (no stage starts once the grace period has run out).
pub async fn run_phase<C: Container>(
    c: &C,
    phase: Phase,
    stages: &Stages,
    outer: Option<Instant>,
) -> Option<HookReport> {
    for stage in stages {
        if outer.is_some_and(|at| Instant::now() >= at) {
            tracing::warn!(%phase, "no time left in the grace period; remaining stages skipped");
            break;
        }
        let reports = join_all(
            stage
                .iter()
                .map(|hook| run_with_retries(c, phase, hook, outer)),
        )
        .await;
        if let Some(failed) = reports.into_iter().find(HookReport::failed) {
            return Some(failed);
        }
    }
    None
}

/// Runs a handler until it succeeds or its retries are spent, pausing `backoff` between
/// attempts; no attempt starts past `outer`.
async fn run_with_retries<C: Container>(
    c: &C,
    phase: Phase,
    hook: &Hook,
    outer: Option<Instant>,
) -> HookReport {
    let mut report = run_hook(c, phase, hook, outer).await;
    for attempt in 1..=hook.retries {
        if !report.failed() {
            break;
        }
        let next = Instant::now() + hook.backoff;
        if outer.is_some_and(|at| next >= at) {
            break;
        }
        tracing::info!(%phase, attempt, of = hook.retries, "retrying hook");
        sleep_until(next).await;
        report = run_hook(c, phase, hook, outer).await;
    }
    report
}

/// Runs one handler, bounded by its own timeout and by `outer` (the grace deadline for PreStop).
pub async fn run_hook<C: Container>(
    c: &C,
    phase: Phase,
    hook: &Hook,
    outer: Option<Instant>,
) -> HookReport {
    run_hook_for(c, phase, hook, outer, None).await
}

/// [`run_hook`], for the `changed` paths (a reconfigure run), which its report names.
pub async fn run_hook_for<C: Container>(
    c: &C,
    phase: Phase,
    hook: &Hook,
    outer: Option<Instant>,
    changed: Option<String>,
) -> HookReport {
    let start = Instant::now();
    let deadline = earliest(hook.timeout.map(|t| start + t), outer);
    let mut cancelled = Cancelled {
        phase,
        handler: hook.action.name(),
        changed,
        start,
        armed: true,
    };
    let report = match &hook.action {
        Action::Exec { command } => {
            let request = ExecRequest {
                label: phase.as_str(),
                argv: command,
                env: &[],
                working_dir: None,
                deadline,
            };
            exec(c, phase, None, request).await
        }
        Action::HttpGet(get) => {
            let mut report = report(phase, None, hook.action.name(), start);
            match http::get(c, get, deadline).await {
                Err(error) => report.result = Err(error.into()),
                Ok(response) => {
                    report.http_status = Some(response.status);
                    report.output = response.body;
                    if !(200..400).contains(&response.status) {
                        report.result = Err(HookFailure::HttpStatus(response.status));
                    }
                }
            }
            report
        }
        Action::Signal(signal) => {
            let report = report(phase, None, hook.action.name(), start);
            match c.signal(*signal).await {
                Ok(()) => report,
                Err(error) => failed(report, error),
            }
        }
        Action::Sleep(duration) => {
            let wake = start + *duration;
            let mut report = report(phase, None, hook.action.name(), start);
            match outer.filter(|&at| at < wake) {
                Some(at) => {
                    sleep_until(at).await;
                    report.result = Err(HookFailure::TimedOut(start.elapsed()));
                }
                None => sleep_until(wake).await,
            }
            report
        }
    };
    cancelled.armed = false;
    let changed = cancelled.changed.take();
    finish(c, HookReport { changed, ..report }, start)
}

/// Logs a handler whose future was dropped before it finished (the container exited, or SIGKILL
/// cut PreStop short), so that every hook run has its event.
struct Cancelled {
    phase: Phase,
    handler: &'static str,
    changed: Option<String>,
    start: Instant,
    armed: bool,
}

impl Drop for Cancelled {
    fn drop(&mut self) {
        if self.armed {
            let duration_ms = (self.start.elapsed().as_secs_f64() * 1e6).round() / 1e3;
            tracing::info!(
                phase = self.phase.as_str(),
                changed = self.changed.as_deref(),
                handler = self.handler,
                duration_ms,
                outcome = "cancelled",
                "hook cancelled before it finished"
            );
        }
    }
}

/// Why the init containers did not all succeed.
#[derive(Debug)]
pub struct InitFailure {
    pub report: HookReport,
}

impl InitFailure {
    /// The status the task should end with: the init's own, or 1 if it never ran.
    pub fn exit_code(&self) -> i32 {
        self.report.exit_code.unwrap_or(1)
    }
}

impl fmt::Display for InitFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "init container {}", self.report)
    }
}

/// The init sequence: the init containers one after another, each run to completion, a sidecar
/// started beside the container instead, one skipped when its record says it already succeeded
/// (see [`InitHost::begin_init`]). It stops at the first that does not succeed (or, for a sidecar, does not start).
pub async fn run_init_containers<C: InitHost>(
    c: &C,
    inits: &[InitContainer],
) -> Result<(), InitFailure> {
    for init in inits {
        let start = Instant::now();
        let name = Some(init.name.as_str());
        if init.sidecar {
            if let Err(error) = c.start_sidecar(init).await {
                let report = failed(report(Phase::Init, name, "sidecar", start), error);
                return Err(InitFailure {
                    report: finish(c, report, start),
                });
            }
            tracing::info!(name = %init.name, "sidecar started");
            continue;
        }
        let ticket = match c.begin_init(init).await {
            Ok(Some(ticket)) => ticket,
            Ok(None) => {
                tracing::info!(name = %init.name, "init container already succeeded; skipped");
                continue;
            }
            Err(error) => {
                let report = failed(report(Phase::Init, name, "record", start), error);
                return Err(InitFailure {
                    report: finish(c, report, start),
                });
            }
        };
        let label = format!("init:{}", init.name);
        let request = ExecRequest::init(init, &label, init.timeout.map(|t| start + t));
        let report = finish(c, exec(c, Phase::Init, name, request).await, start);
        let succeeded = report.result.is_ok();
        if let Err(error) = ticket.finish(succeeded) {
            tracing::warn!(name = %init.name, %error, "could not record the init container's outcome");
        }
        if !succeeded {
            return Err(InitFailure { report });
        }
    }
    Ok(())
}

/// A handler that could not be run at all.
fn failed(
    mut report: HookReport,
    error: impl std::error::Error + Send + Sync + 'static,
) -> HookReport {
    report.result = Err(HookFailure::Runtime(Box::new(error)));
    report
}

/// The stop sequence: the shutdown delay, PreStop (both bounded by the grace period), the stop
/// signal, then SIGKILL once the rest of the grace period, and at least [`MIN_STOP_GRACE`], has
/// passed.
///
/// It returns after sending SIGKILL; callers race it against the container's exit and drop it
/// when the container is gone, which also cancels a PreStop still running.
pub async fn terminate<C: Container>(c: &C, plan: &Plan) {
    let start = Instant::now();
    let grace_end = start + plan.grace;
    if !plan.shutdown_delay.is_zero() {
        tracing::info!(
            container = c.id(),
            delay_ms = plan.shutdown_delay.as_millis() as u64,
            "shutdown delay"
        );
        sleep_until((start + plan.shutdown_delay).min(grace_end)).await;
    }
    run_phase(c, Phase::PreStop, &plan.pre_stop, Some(grace_end)).await;
    let kill_at = kill_deadline(start, plan.grace);
    send(c, plan.stop_signal).await;
    sleep_until(kill_at).await;
    send(c, Signal::SIGKILL).await;
}

/// When SIGKILL follows a stop signal sent now, for a stop that began at `began`: at the end
/// of the grace period, but never less than [`MIN_STOP_GRACE`] after the signal (the
/// kubelet's minimum). The container's and its sidecars' alike.
pub fn kill_deadline(began: Instant, grace: Duration) -> Instant {
    (began + grace).max(Instant::now() + MIN_STOP_GRACE)
}

async fn send<C: Container>(c: &C, signal: Signal) {
    tracing::info!(container = c.id(), %signal, "signalling container");
    if let Err(error) = c.signal(signal).await {
        tracing::warn!(container = c.id(), %signal, %error, "could not signal container");
    }
}

async fn exec<C: Container>(
    c: &C,
    phase: Phase,
    name: Option<&str>,
    mut request: ExecRequest<'_>,
) -> HookReport {
    let start = Instant::now();
    let mut env = vec![
        ("LIFECYCLE_PHASE".to_owned(), phase.as_str().to_owned()),
        ("LIFECYCLE_CONTAINER_ID".to_owned(), c.id().to_owned()),
    ];
    env.extend_from_slice(request.env);
    request.env = &env;
    let mut report = report(phase, name, "exec", start);
    match c.exec(request).await {
        Err(error) => report = failed(report, error),
        Ok(out) => {
            report.exit_code = Some(out.status.code());
            report.output = out.output;
            if out.timed_out {
                report.result = Err(HookFailure::TimedOut(start.elapsed()));
            } else if !out.status.success() {
                report.result = Err(HookFailure::Exited(out.status));
            }
        }
    }
    report
}

fn report(phase: Phase, name: Option<&str>, handler: &'static str, start: Instant) -> HookReport {
    HookReport {
        phase,
        name: name.map(str::to_owned),
        handler,
        changed: None,
        elapsed: start.elapsed(),
        exit_code: None,
        http_status: None,
        output: String::new(),
        result: Ok(()),
    }
}

fn finish<C: Container>(c: &C, mut report: HookReport, start: Instant) -> HookReport {
    report.elapsed = start.elapsed();
    if report.result.is_err() && c.has_exited() {
        report.result = Err(HookFailure::ContainerExited);
    }
    report.log();
    report
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
