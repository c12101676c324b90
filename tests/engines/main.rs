//! The engines `lifecycle-runc` serves, real and private: Podman 4.3 (with conmon) and Docker
//! 20.10 (dockerd, its own containerd and the Go runc shim), each started by a harness with its
//! roots, sockets and state in a temporary directory. The scenarios are written once for both
//! engines; these tests prove the harnesses and the scenarios with plain runc as the runtime,
//! and record the runc calls each engine makes.

#[path = "../support/configmap.rs"]
mod configmap;
#[path = "../support/docker.rs"]
mod docker;
#[path = "../support/host.rs"]
mod host;
#[path = "../support/podman.rs"]
mod podman;
#[path = "../support/recorder.rs"]
mod recorder;
#[path = "../support/mod.rs"]
mod support;

mod cli;
mod hooks;
mod recording;
mod scenarios;
mod smoke;

use docker::docker_prerequisites;
use podman::podman_prerequisites;
use support::prerequisites;

fn podman_ready() -> bool {
    prerequisites() && podman_prerequisites()
}

fn docker_ready() -> bool {
    prerequisites() && docker_prerequisites()
}

/// Declares `<name>::podman` and `<name>::docker`: each starts that engine with plain runc as
/// its runtime and runs `check` (generic over [`scenarios::Engine`]) on it.
macro_rules! on_both_engines {
    ($name:ident, $check:ident) => {
        mod $name {
            use crate::scenarios::observe;

            #[test]
            fn podman() {
                if crate::podman_ready() {
                    observe::<crate::podman::Podman, _>(&crate::host::runc_path(), super::$check);
                }
            }

            #[test]
            fn docker() {
                if crate::docker_ready() {
                    observe::<crate::docker::Docker, _>(&crate::host::runc_path(), super::$check);
                }
            }
        }
    };
}
pub(crate) use on_both_engines;
