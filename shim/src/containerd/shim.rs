//! The containerd-shim crate's `Shim`: the `start` action (spawn the long-running shim and
//! print its address), the `delete` action (clean up after a shim that is gone), and the task
//! service the long-running shim serves.

use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::{spawn, ExitSignal, Shim};
use containerd_shim::{Config, DeleteResponse, Error, Flags, StartOpts};

use super::events::timestamp;
use super::service::{runc_root, Service};
use crate::reaper::Reaper;
use crate::runc::Runc;

pub struct LifecycleShim {
    id: String,
    namespace: String,
    exit: Arc<ExitSignal>,
}

#[async_trait]
impl Shim for LifecycleShim {
    type T = Service;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        LifecycleShim {
            id: args.id.clone(),
            namespace: args.namespace.clone(),
            exit: Arc::default(),
        }
    }

    /// One shim per container: the container id is the grouping.
    async fn start_shim(&mut self, opts: StartOpts) -> Result<String, Error> {
        let grouping = opts.id.clone();
        spawn(opts, &grouping, Vec::new()).await
    }

    /// Runs as a fresh process in the bundle directory after the shim is gone: whatever runc
    /// still has of the container is deleted and the rootfs unmounted.
    async fn delete_shim(&mut self) -> Result<DeleteResponse, Error> {
        let reaper = Reaper::start().map_err(|e| Error::Other(e.to_string()))?;
        let runc = Runc::new("runc".into(), Some(runc_root(&self.namespace)), reaper);
        if let Err(error) = runc.delete(&self.id).await {
            tracing::warn!(%error, "runc delete during cleanup");
        }
        let rootfs = std::env::current_dir()
            .map_err(|e| Error::Other(e.to_string()))?
            .join("rootfs");
        if let Err(error) = containerd_shim::mount::umount_recursive(rootfs.to_str(), 0) {
            tracing::warn!(%error, "unmounting the rootfs during cleanup");
        }
        Ok(DeleteResponse {
            exit_status: 128 + libc::SIGKILL as u32,
            exited_at: Some(timestamp(std::time::SystemTime::now())).into(),
            ..Default::default()
        })
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> Service {
        crate::logging::init_shim_log();
        let reaper = Reaper::start().expect("the shim must be able to reap its children");
        Service::new(&self.namespace, self.exit.clone(), publisher, reaper)
    }
}
