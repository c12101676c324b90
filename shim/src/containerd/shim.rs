//! The containerd-shim crate's `Shim`: the `start` action (spawn the long-running shim and
//! print its address), the `delete` action (clean up after a shim that is gone), and the task
//! service the long-running shim serves.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::util::write_str_to_file;
use containerd_shim::asynchronous::{spawn, ExitSignal, Shim};
use containerd_shim::{Config, DeleteResponse, Error, Flags, StartOpts};

use super::events::timestamp;
use super::options::RuntimeOptions;
use super::service::Service;
use crate::reaper::Reaper;

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

    /// One shim per container: the container id is the grouping. The address also goes into
    /// the bundle's `address` file, which is how containerd finds the shim again after it
    /// restarts.
    async fn start_shim(&mut self, opts: StartOpts) -> Result<String, Error> {
        let grouping = opts.id.clone();
        let address = spawn(opts, &grouping, Vec::new()).await?;
        // Whoever can connect controls the container: root's alone, whatever the umask.
        let socket = address.trim_start_matches("unix://");
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::Other(format!("securing the socket {socket}: {e}")))?;
        write_str_to_file("address", &address).await?;
        Ok(address)
    }

    /// Runs as a fresh process in the bundle directory after the shim is gone: whatever runc
    /// still has of the container and of its sidecars and postStop runs (`<id>-lifecycle-*`)
    /// is deleted, the rootfs unmounted, and the dead shim's socket removed.
    async fn delete_shim(&mut self) -> Result<DeleteResponse, Error> {
        let reaper = Reaper::start().map_err(|e| Error::Other(e.to_string()))?;
        let bundle = std::env::current_dir().map_err(|e| Error::Other(e.to_string()))?;
        // The binary and root the task was created with.
        let options = RuntimeOptions::load(&bundle).map_err(|e| Error::Other(e.to_string()))?;
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
        remove_socket(&containerd_shim::socket_address(
            &self.address,
            &self.namespace,
            &self.id,
        ));
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

fn remove_socket(address: &str) {
    let path = address.trim_start_matches("unix://");
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => tracing::warn!(%error, socket = path, "could not remove the shim's socket"),
    }
}
