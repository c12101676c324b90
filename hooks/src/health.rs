//! Health checks (Habitat's health-check hook): a handler run every period, the first run at a
//! random splay within it, its result mapped to a status; optionally the container is stopped
//! after a number of critical results in a row.

use std::fmt;
use std::time::Duration;

use tokio::time::{sleep_until, Instant};

use crate::container::{Container, ExitStatus, Phase};
use crate::engine::{run_hook, HookFailure, HookReport};
use crate::plan::HealthCheck;

/// Habitat's statuses, from an exec check's exit code: 0 ok, 1 warning, 2 critical, 3 unknown,
/// anything else failed. An httpGet check is ok or critical; a timeout is critical.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Ok,
    Warning,
    Critical,
    Unknown,
    Failed,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Ok => "ok",
            Health::Warning => "warning",
            Health::Critical => "critical",
            Health::Unknown => "unknown",
            Health::Failed => "failed",
        }
    }

    fn of(report: &HookReport) -> Health {
        match &report.result {
            Ok(()) => Health::Ok,
            Err(HookFailure::Exited(ExitStatus::Exited(1))) => Health::Warning,
            Err(HookFailure::Exited(ExitStatus::Exited(2))) => Health::Critical,
            Err(HookFailure::Exited(ExitStatus::Exited(3))) => Health::Unknown,
            Err(HookFailure::Exited(_)) => Health::Failed,
            Err(HookFailure::TimedOut(_) | HookFailure::HttpStatus(_) | HookFailure::Http(_)) => {
                Health::Critical
            }
            Err(HookFailure::Runtime(_) | HookFailure::ContainerExited) => Health::Unknown,
        }
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One check's result.
#[derive(Debug, Clone)]
pub struct HealthResult {
    pub health: Health,
    pub output: String,
}

/// Runs the check every period, the first time after `splay`, and hands each result to
/// `observe`. Returns only when the container should be stopped (its kill policy's number of
/// critical results in a row); callers drop it when the container ends.
pub async fn watch_health<C: Container>(
    c: &C,
    check: &HealthCheck,
    splay: Duration,
    mut observe: impl FnMut(&HealthResult),
) {
    let mut next = Instant::now() + splay;
    let mut previous = None;
    let mut criticals = 0;
    loop {
        sleep_until(next).await;
        let report = run_hook(c, Phase::HealthCheck, &check.hook, None).await;
        let health = Health::of(&report);
        if previous != Some(health) {
            match health {
                Health::Ok => tracing::info!(container = c.id(), %health, "health changed"),
                _ => {
                    tracing::warn!(container = c.id(), %health, output = report.output.trim_end(), "health changed")
                }
            }
        }
        previous = Some(health);
        observe(&HealthResult {
            health,
            output: report.output,
        });
        criticals = if health == Health::Critical {
            criticals + 1
        } else {
            0
        };
        if check.kill_after.is_some_and(|n| criticals >= n) {
            tracing::warn!(
                container = c.id(),
                criticals,
                "health critical too many times in a row; stopping the container"
            );
            return;
        }
        // Fixed rate, but a check slower than its period does not cause a burst.
        next = (next + check.period).max(Instant::now());
    }
}

/// A random delay within `period`, so that checks of containers started together spread out.
pub fn splay(period: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    let fraction = (hasher.finish() % 10_000) as f64 / 10_000.0;
    period.mul_f64(fraction)
}
