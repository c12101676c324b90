//! The `lifecycle-shim` binary's code, by room:
//!
//! - front ends: [`cli`] (the command line), [`run`] (a container in the foreground),
//!   [`containerd`] (the runtime v2 shim) and [`runtime`] (`lifecycle-runc`, a runc-compatible
//!   runtime); each turns what it is asked into requests to the
//!   container's lifecycle supervisor (`lifecycle_hooks::supervisor`) and its outcome into an
//!   exit status;
//! - [`lifecycle`]: the runc container as that supervisor acts on it, and what it drives:
//!   hook processes, sidecars, postStop runs, `once` records, the health status file;
//! - [`bundle`]: OCI bundles, their hook spec, and the bundles derived from them;
//! - [`os`]: the OS layer: the reaper, the runc driver, network namespaces, pid files, files
//!   replaced atomically.

pub mod bundle;
pub mod cli;
pub mod containerd;
mod lifecycle;
mod logging;
pub mod os;
pub mod run;
pub mod runtime;
