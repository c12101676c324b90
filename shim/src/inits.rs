//! The init containers, in order: each run to completion in the created container (a `once`
//! step skipped when its volume says it already succeeded), or, for a sidecar, started beside
//! it; the next one begins only when the previous one succeeded or, for a sidecar, runs.

use lifecycle_hooks::plan::InitContainer;
use lifecycle_hooks::{
    run_init_containers, Container, HookFailure, HookReport, InitFailure, Phase,
};

use crate::once::{begin, Bind};
use crate::sidecar::Sidecars;

pub async fn run_inits<C: Container>(
    c: &C,
    inits: &[InitContainer],
    binds: &[Bind],
    sidecars: &Sidecars,
) -> Result<(), InitFailure> {
    for init in inits {
        if init.sidecar {
            if let Err(error) = sidecars.start(init).await {
                return Err(failure(init, "sidecar", error));
            }
            tracing::info!(name = %init.name, "sidecar started");
            continue;
        }
        let ticket = match &init.once {
            None => None,
            Some(once) => match begin(binds, once).await {
                Ok(None) => {
                    tracing::info!(name = %init.name, key = %once.key, "init container already succeeded for this key; skipped");
                    continue;
                }
                Ok(Some(ticket)) => Some(ticket),
                Err(error) => return Err(failure(init, "once", error)),
            },
        };
        let result = run_init_containers(c, std::slice::from_ref(init)).await;
        if let Some(ticket) = ticket {
            if let Err(error) = ticket.finish(result.is_ok()) {
                tracing::warn!(name = %init.name, %error, "could not record the once step's outcome");
            }
        }
        result?;
    }
    Ok(())
}

/// An init container that failed before its process ran.
fn failure(
    init: &InitContainer,
    handler: &'static str,
    error: impl std::error::Error + Send + Sync + 'static,
) -> InitFailure {
    InitFailure {
        report: HookReport {
            phase: Phase::Init,
            name: Some(init.name.clone()),
            handler,
            elapsed: std::time::Duration::ZERO,
            exit_code: None,
            http_status: None,
            output: String::new(),
            result: Err(HookFailure::Runtime(Box::new(error))),
        },
    }
}
