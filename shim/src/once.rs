//! Run-once init containers (`once`): install and upgrade steps that the containers sharing a
//! volume run once per key. The sentinel lives in the volume, seen from the host through the
//! bundle's bind mount; an exclusive `flock` on a lock file beside it makes the containers
//! that share the volume take turns, so exactly one runs the step and the others then skip it.
//! The sentinel is replaced atomically (write, then rename) and records failures too, so a
//! failed step runs again next time.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use lifecycle_hooks::plan::Once;
use nix::fcntl::{Flock, FlockArg};

/// A bind mount of the bundle: where it appears in the container, and its host source.
pub type Bind = (PathBuf, PathBuf);

/// The host path of `path` (inside the container), through the bind mount that holds it.
pub fn host_path(binds: &[Bind], path: &str) -> Option<PathBuf> {
    let path = Path::new(path);
    binds
        .iter()
        .filter_map(|(inside, host)| {
            let rest = path.strip_prefix(inside).ok()?;
            // The mount point itself is the volume, not a file in it.
            (!rest.as_os_str().is_empty()).then(|| (inside, host.join(rest)))
        })
        .max_by_key(|(inside, _)| inside.components().count())
        .map(|(_, host)| host)
}

/// The turn to run a once step, holding the volume's lock until `finish`.
pub struct Ticket {
    _lock: Flock<File>,
    sentinel: PathBuf,
    key: String,
}

impl Ticket {
    pub fn finish(self, succeeded: bool) -> io::Result<()> {
        let status = if succeeded { "succeeded" } else { "failed" };
        let record = serde_json::json!({"key": self.key, "status": status});
        crate::output::write_atomically(&self.sentinel, record.to_string().as_bytes())
    }
}

/// Waits for the volume's lock; `None` when the step already succeeded for this key.
pub async fn begin(binds: &[Bind], once: &Once) -> io::Result<Option<Ticket>> {
    let sentinel = host_path(binds, &once.path)
        .ok_or_else(|| io::Error::other(format!("{} is in no bind-mounted volume", once.path)))?;
    let key = once.key.clone();
    // flock blocks, and the shim's runtime has one thread: wait on the blocking pool.
    tokio::task::spawn_blocking(move || {
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(sentinel.with_extension("lifecycle-lock"))?;
        let lock = Flock::lock(lock, FlockArg::LockExclusive)
            .map_err(|(_, errno)| io::Error::from(errno))?;
        let done = std::fs::read(&sentinel)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
            .is_some_and(|record| record["status"] == "succeeded" && record["key"] == key.as_str());
        Ok((!done).then_some(Ticket {
            _lock: lock,
            sentinel,
            key,
        }))
    })
    .await
    .map_err(io::Error::other)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinels_map_through_the_innermost_bind_mount() {
        let binds = vec![
            (PathBuf::from("/data"), PathBuf::from("/srv/volume")),
            (PathBuf::from("/data/cache"), PathBuf::from("/srv/cache")),
        ];
        assert_eq!(
            host_path(&binds, "/data/.installed"),
            Some(PathBuf::from("/srv/volume/.installed"))
        );
        assert_eq!(
            host_path(&binds, "/data/cache/x"),
            Some(PathBuf::from("/srv/cache/x"))
        );
        assert_eq!(host_path(&binds, "/datadir/x"), None);
        assert_eq!(
            host_path(&binds, "/data"),
            None,
            "the mount point is not a file in it"
        );
    }
}
