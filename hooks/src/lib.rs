//! Kubernetes-style lifecycle hooks for any container: the spec users write, the validated plan it
//! becomes, and the engine that runs the plan's phases against a [`Container`].
//!
//! Nothing here knows about containerd or runc: the shim supplies a [`Container`].

pub mod container;
mod describe;
pub mod engine;
pub mod health;
pub mod http;
pub mod plan;
pub mod reconfigure;
pub mod seconds;
pub mod spec;
pub mod supervisor;

pub use container::{Container, ExecOutput, ExecRequest, ExitStatus, Phase};
pub use engine::{
    run_hook, run_init_containers, run_phase, terminate, HookFailure, HookReport, InitFailure,
};
pub use plan::{Defaults, InvalidSpec, Plan, Stages};
