//! The containerd-shim crate's `Shim`: the `start` action (spawn the long-running shim and
//! print its address), the `delete` action (clean up after a shim that is gone), and the task
//! service the long-running shim serves.

use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::{ExitSignal, Shim};
use containerd_shim::{Config, DeleteResponse, Error, Flags, StartOpts};

use super::events::timestamp;
use super::options::RuntimeOptions;
use super::service::Service;
use super::start::{answers, remove_socket};
use crate::os::reaper::Reaper;

pub struct LifecycleShim {
    id: String,
    namespace: String,
    /// containerd's address, from which the shim's socket path is derived.
    address: String,
    /// The ttrpc socket this shim serves (`unix://...`), removed when it exits.
    socket: String,
    exit: Arc<ExitSignal>,
}

#[async_trait]
impl Shim for LifecycleShim {
    type T = Service;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        LifecycleShim {
            id: args.id.clone(),
            namespace: args.namespace.clone(),
            address: args.address.clone(),
            socket: args.socket.clone(),
            exit: Arc::default(),
        }
    }

    /// The start action never reaches the crate: containerd 2.3 changed its input, which the
    /// crate cannot read (see [`super::start`]).
    async fn start_shim(&mut self, _opts: StartOpts) -> Result<String, Error> {
        Err(Error::Unimplemented(
            "the start action is handled by containerd::start".into(),
        ))
    }

    /// Runs as a fresh process in the bundle directory after the shim is gone: whatever runc
    /// still has of the container and of its sidecars and postStop runs (`<id>-lifecycle-*`)
    /// is deleted, the rootfs unmounted, and the dead shim's socket removed.
    async fn delete_shim(&mut self) -> Result<DeleteResponse, Error> {
        let reaper = Reaper::start().map_err(|e| Error::Other(e.to_string()))?;
        let bundle = std::env::current_dir().map_err(|e| Error::Other(e.to_string()))?;
        // The binary and root the task was created with; like runc's shim, this delete does
        // without the systemd cgroup manager.
        let options = RuntimeOptions {
            systemd_cgroup: false,
            ..RuntimeOptions::load(&bundle).map_err(|e| Error::Other(e.to_string()))?
        };
        let root = options.runc_root(&self.namespace);
        let helpers = format!("{}-lifecycle-", self.id);
        let mut ids: Vec<String> = std::fs::read_dir(&root)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| entry.file_name().into_string().ok())
            .filter(|name| name.starts_with(&helpers))
            .collect();
        ids.push(self.id.clone());
        let runc = options.runc(&self.namespace, &bundle, reaper);
        for id in &ids {
            if let Err(error) = runc.delete(id).await {
                tracing::warn!(%error, "runc delete during cleanup");
            }
        }
        let rootfs = bundle.join("rootfs");
        if let Err(error) = containerd_shim::mount::umount_recursive(rootfs.to_str(), 0) {
            tracing::warn!(%error, "unmounting the rootfs during cleanup");
        }
        // The address the start action recorded; the default place if it recorded none.
        let address = std::fs::read_to_string(bundle.join("address")).unwrap_or_else(|_| {
            containerd_shim::socket_address(&self.address, &self.namespace, &self.id)
        });
        // Another task of the group may still be served there.
        if !answers(&address) {
            remove_socket(&address);
        }
        Ok(DeleteResponse {
            exit_status: 128 + libc::SIGKILL as u32,
            exited_at: Some(timestamp(std::time::SystemTime::now())).into(),
            ..Default::default()
        })
    }

    /// Returns once Shutdown was called after the task's deletion. The socket goes with the
    /// shim: the crate removes it only when the bundle has an `address` file, which
    /// containerd 1.6 does not leave there.
    async fn wait(&mut self) {
        self.exit.wait().await;
        remove_socket(&self.socket);
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> Service {
        crate::logging::init_shim_log();
        let reaper = Reaper::start().expect("the shim must be able to reap its children");
        Service::new(&self.namespace, self.exit.clone(), publisher, reaper)
    }
}
