//! Run-once init containers (`once`): install and upgrade steps that the containers sharing a
//! volume run once per key. The sentinel lives in the volume, seen from the host through the
//! bundle's bind mount; an exclusive `flock` on a lock file beside it makes the containers
//! that share the volume take turns, so exactly one runs the step and the others then skip it.
//! The sentinel is replaced atomically (write, then rename) and records failures too, so a
//! failed step runs again next time.
//!
//! The shim works in the volume as root on the host, while the container may have put
//! symlinks there: below the bind mount's source, the path is walked one directory at a time
//! and nothing is followed, so the shim never touches a file outside the volume.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use lifecycle_hooks::plan::Once;
use nix::fcntl::{openat, Flock, FlockArg, OFlag};
use nix::sys::stat::Mode;

/// A bind mount of the bundle: where it appears in the container, and its host source.
pub type Bind = (PathBuf, PathBuf);

/// Where `path` (inside the container) is on the host: the source of the bind mount that
/// holds it, and the path below that source.
pub fn host_path(binds: &[Bind], path: &str) -> Option<(PathBuf, PathBuf)> {
    // The mount point itself is the volume, not a file in it.
    volume_path(binds, path).filter(|(_, rest)| !rest.as_os_str().is_empty())
}

/// [`host_path`], the mount point itself included (its path below the source is empty).
pub fn volume_path(binds: &[Bind], path: &str) -> Option<(PathBuf, PathBuf)> {
    let path = Path::new(path);
    binds
        .iter()
        .filter_map(|(inside, host)| {
            let rest = path.strip_prefix(inside).ok()?;
            Some((inside, (host.clone(), rest.to_owned())))
        })
        .max_by_key(|(inside, _)| inside.components().count())
        .map(|(_, found)| found)
}

/// The names of `rest`'s components, refusing any that could leave the volume.
pub fn names(rest: &Path) -> io::Result<Vec<&str>> {
    let refuse = |why: &str| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: {why}", rest.display()),
        )
    };
    let mut names = Vec::new();
    for component in rest.components() {
        match component {
            Component::Normal(name) => {
                names.push(name.to_str().ok_or_else(|| refuse("not UTF-8"))?)
            }
            Component::CurDir => {}
            _ => return Err(refuse("must not leave the volume")),
        }
    }
    Ok(names)
}

/// Opens the directory `names` below `source`, one component at a time, following no
/// symlink.
pub fn open_below(source: &Path, names: &[&str]) -> io::Result<OwnedFd> {
    let mut dir: OwnedFd = File::open(source)?.into();
    for step in names {
        dir = open_dir_in(&dir, step)?;
    }
    Ok(dir)
}

/// Opens the directory `name` in `dir`, not following a symlink.
pub fn open_dir_in(dir: &OwnedFd, name: &str) -> io::Result<OwnedFd> {
    let directory = OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_RDONLY;
    openat(dir, name, directory, Mode::empty()).map_err(|errno| {
        io::Error::new(
            io::Error::from(errno).kind(),
            format!("{name}: {errno} (symlinks are not followed)"),
        )
    })
}

/// The directory holding the sentinel, opened without following any symlink below the
/// volume's source, and the sentinel's name in it.
fn sentinel_dir(source: &Path, rest: &Path) -> io::Result<(OwnedFd, String)> {
    let mut names = names(rest)?;
    let name = names.pop().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: names no file", rest.display()),
        )
    })?;
    let dir = open_below(source, &names)
        .map_err(|error| io::Error::new(error.kind(), format!("{}: {error}", rest.display())))?;
    Ok((dir, name.to_owned()))
}

/// Opens `name` in `dir` without following a symlink.
fn open_in(dir: &OwnedFd, name: &str, flags: OFlag) -> io::Result<File> {
    let flags = flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = openat(dir, name, flags, Mode::from_bits_truncate(0o644)).map_err(|errno| {
        io::Error::new(
            io::Error::from(errno).kind(),
            format!("{name}: {errno} (symlinks are not followed)"),
        )
    })?;
    Ok(File::from(fd))
}

/// The turn to run a once step, holding the volume's lock until `finish`.
pub struct Ticket {
    _lock: Flock<File>,
    dir: OwnedFd,
    sentinel: String,
    key: String,
}

impl Ticket {
    /// Records the outcome: written beside the sentinel, then renamed over it.
    pub fn finish(self, succeeded: bool) -> io::Result<()> {
        let status = if succeeded { "succeeded" } else { "failed" };
        let record = serde_json::json!({"key": self.key, "status": status});
        crate::os::files::replace_in(&self.dir, &self.sentinel, record.to_string().as_bytes())
    }
}

/// Waits for the volume's lock; `None` when the step already succeeded for this key.
pub async fn begin(binds: &[Bind], once: &Once) -> io::Result<Option<Ticket>> {
    let (source, rest) = host_path(binds, &once.path)
        .ok_or_else(|| io::Error::other(format!("{} is in no bind-mounted volume", once.path)))?;
    let key = once.key.clone();
    // flock blocks, and the shim's runtime has one thread: wait on the blocking pool.
    tokio::task::spawn_blocking(move || {
        let (dir, sentinel) = sentinel_dir(&source, &rest)?;
        let lock = open_in(
            &dir,
            &format!("{sentinel}.lifecycle-lock"),
            OFlag::O_WRONLY | OFlag::O_CREAT,
        )?;
        let lock = Flock::lock(lock, FlockArg::LockExclusive)
            .map_err(|(_, errno)| io::Error::from(errno))?;
        let mut bytes = Vec::new();
        match open_in(&dir, &sentinel, OFlag::O_RDONLY) {
            Ok(mut file) => {
                file.read_to_end(&mut bytes)?;
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
        let done = serde_json::from_slice::<serde_json::Value>(&bytes)
            .is_ok_and(|record| record["status"] == "succeeded" && record["key"] == key.as_str());
        Ok((!done).then_some(Ticket {
            _lock: lock,
            dir,
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
            Some((PathBuf::from("/srv/volume"), PathBuf::from(".installed")))
        );
        assert_eq!(
            host_path(&binds, "/data/cache/x"),
            Some((PathBuf::from("/srv/cache"), PathBuf::from("x")))
        );
        assert_eq!(host_path(&binds, "/datadir/x"), None);
        assert_eq!(
            host_path(&binds, "/data"),
            None,
            "the mount point is not a file in it"
        );
    }

    #[test]
    fn symlinks_below_the_volume_are_not_followed() {
        let volume = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), volume.path().join("link")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("f"), volume.path().join("file")).unwrap();
        std::fs::create_dir(volume.path().join("sub")).unwrap();
        let error = sentinel_dir(volume.path(), Path::new("link/.installed")).unwrap_err();
        assert!(
            error.to_string().contains("symlinks are not followed"),
            "{error}"
        );
        let error = sentinel_dir(volume.path(), Path::new("sub/../../x")).unwrap_err();
        assert!(
            error.to_string().contains("must not leave the volume"),
            "{error}"
        );
        let (dir, name) = sentinel_dir(volume.path(), Path::new("file")).unwrap();
        let error = open_in(&dir, &name, OFlag::O_RDONLY).unwrap_err();
        assert!(
            error.to_string().contains("symlinks are not followed"),
            "{error}"
        );
        let (dir, name) = sentinel_dir(volume.path(), Path::new("sub/.installed")).unwrap();
        assert_eq!(name, ".installed");
        open_in(&dir, &name, OFlag::O_WRONLY | OFlag::O_CREAT).unwrap();
        assert!(volume.path().join("sub/.installed").exists());
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }
}
