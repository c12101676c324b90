//! The `lifecycle-shim` binary's code: the CLI, the runc driver, the reaper and the foreground
//! supervisor that runs a plan from the `lifecycle-hooks` library against a real container.

pub mod bundle;
pub mod cli;
mod container;
pub mod containerd;
mod derived;
mod logging;
mod netns;
mod once;
mod output;
mod pidfile;
mod poststop;
pub mod reaper;
pub mod run;
pub mod runc;
mod sidecar;
mod status;
mod supervised;
