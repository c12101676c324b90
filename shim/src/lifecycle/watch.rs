//! The files a reconfigure entry watches, found on the host through the bundle's bind mounts,
//! and one inotify instance that tells of their changes: no polling, no thread.
//!
//! A watched path is a directory (any file created, renamed into it or written and closed in
//! it counts; subdirectories are not watched) or a file (the same, for that name only). A
//! Kubernetes ConfigMap or Secret volume is updated by the kubelet's atomic writer: a new
//! `..<timestamp>` directory, then its `..data` symlink renamed over the old one; the files are
//! symlinks through `..data`. So in a directory, a new `..data` counts as a change of every
//! file watched there.
//!
//! As with `once`, the shim works in the volume as root while the container may have planted
//! symlinks there: below the bind mount's source nothing is followed. A watched file may be a
//! symlink that stays in its directory (the kubelet's); its target is not watched, the name
//! is.

// Unsafe: tokio's registration of a file descriptor for readiness (its safe form is deprecated).
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::{Component, Path, PathBuf};

use lifecycle_hooks::reconfigure::Changes;
use nix::fcntl::{readlinkat, AtFlags};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, InotifyEvent, WatchDescriptor};
use nix::sys::stat::{fstatat, SFlag};
use tokio::io::unix::AsyncFd;

use crate::lifecycle::once::{names, open_below, open_dir_in, volume_path, Bind};

/// The symlink the kubelet's atomic writer renames into place for each update.
const ATOMIC_DATA_LINK: &str = "..data";

/// What counts as a change in a watched directory.
fn change_events() -> AddWatchFlags {
    AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_ONLYDIR
}

/// A watched path, found on the host.
pub struct WatchedPath {
    /// As the spec gives it, inside the container.
    pub path: String,
    /// The directory watched, on the host (for messages and `check`).
    pub host: PathBuf,
    /// The file watched in it; `None`: the whole directory.
    pub name: Option<String>,
    /// The directory, opened without following a symlink.
    dir: OwnedFd,
}

impl fmt::Display for WatchedPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            None => write!(f, "{}: the directory {}", self.path, self.host.display()),
            Some(name) => write!(
                f,
                "{}: {name} in {} (and a kubelet's {ATOMIC_DATA_LINK} swap)",
                self.path,
                self.host.display()
            ),
        }
    }
}

/// Finds each of `paths`, as [`resolve`] does.
pub fn resolve_all(binds: &[Bind], paths: &[String]) -> io::Result<Vec<WatchedPath>> {
    paths.iter().map(|path| resolve(binds, path)).collect()
}

/// Finds `path` on the host: in a bind-mounted volume, reached without following a symlink.
pub fn resolve(binds: &[Bind], path: &str) -> io::Result<WatchedPath> {
    let refuse =
        |why: String| io::Error::new(io::ErrorKind::InvalidInput, format!("{path}: {why}"));
    let (source, rest) = volume_path(binds, path)
        .ok_or_else(|| refuse("is in no bind-mounted volume of the bundle".to_owned()))?;
    let mut names = names(&rest).map_err(|error| refuse(error.to_string()))?;
    let in_volume =
        |error: io::Error| refuse(format!("{error} (in the volume {})", source.display()));
    // The directory to watch, and the file watched in it (`None`: all of it).
    let (dir, name) = match names.pop() {
        None => {
            // The mount point: the whole volume.
            let dir = open_below(&source, &[]).map_err(in_volume)?;
            let stat = nix::sys::stat::fstat(&dir).map_err(|errno| in_volume(errno.into()))?;
            if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFDIR {
                return Err(refuse(
                    "is a file bind mount, which keeps the file it was made with: a file replaced on the host is never seen through it; bind-mount its directory and watch the file there".to_owned(),
                ));
            }
            (dir, None)
        }
        Some(last) => {
            let parent = open_below(&source, &names).map_err(in_volume)?;
            let kind = match fstatat(&parent, last, AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(stat) => Some(SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT),
                Err(nix::Error::ENOENT) => None,
                Err(errno) => return Err(in_volume(errno.into())),
            };
            match kind {
                // A file that does not exist yet: its creation will count.
                None | Some(SFlag::S_IFREG) => (parent, Some(last)),
                Some(SFlag::S_IFDIR) => (open_dir_in(&parent, last).map_err(in_volume)?, None),
                Some(SFlag::S_IFLNK) => {
                    let target =
                        readlinkat(&parent, last).map_err(|errno| in_volume(errno.into()))?;
                    let target = Path::new(&target);
                    let stays = target
                        .components()
                        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
                    if !stays {
                        return Err(refuse(format!(
                            "is a symlink to {}, which leaves its directory (symlinks are not followed)",
                            target.display()
                        )));
                    }
                    (parent, Some(last))
                }
                Some(_) => return Err(refuse("is neither a file nor a directory".to_owned())),
            }
        }
    };
    let watched_dir = match name {
        None => rest.as_path(),
        Some(_) => rest.parent().unwrap_or(Path::new("")),
    };
    let host = match watched_dir.as_os_str().is_empty() {
        true => source.clone(),
        false => source.join(watched_dir),
    };
    Ok(WatchedPath {
        path: path.to_owned(),
        host,
        name: name.map(str::to_owned),
        dir,
    })
}

/// Where a watch's events go: the directory as the container sees it, and the file watched in
/// it (`None`: every entry).
struct Target {
    dir: String,
    name: Option<String>,
}

impl Target {
    /// The changed path, if `name`'s change concerns this target.
    fn changed(&self, name: &str) -> Option<String> {
        let counts = match &self.name {
            None => true,
            Some(watched) => watched == name || name == ATOMIC_DATA_LINK,
        };
        counts.then(|| self.join(name))
    }

    /// Every path it watches, for an overflow of the event queue.
    fn all(&self) -> String {
        match &self.name {
            None => self.dir.clone(),
            Some(name) => self.join(name),
        }
    }

    fn join(&self, name: &str) -> String {
        format!("{}/{name}", self.dir.trim_end_matches('/'))
    }
}

/// An inotify instance with a watch per watched directory.
pub struct Watcher {
    fd: AsyncFd<InotifyFd>,
    watches: HashMap<WatchDescriptor, Vec<Target>>,
}

/// [`Inotify`] as [`AsyncFd`] takes it.
struct InotifyFd(Inotify);

impl AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

impl Watcher {
    /// Starts watching the paths. The watch is on the directory opened by [`resolve`]
    /// (through `/proc/self/fd`), not on a path that could have been swapped since.
    pub fn new(paths: Vec<WatchedPath>) -> io::Result<Watcher> {
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)?;
        let mut watches: HashMap<WatchDescriptor, Vec<Target>> = HashMap::new();
        for watched in paths {
            let by_fd = format!("/proc/self/fd/{}", watched.dir.as_raw_fd());
            let wd = inotify
                .add_watch(by_fd.as_str(), change_events())
                .map_err(|errno| {
                    io::Error::new(
                        io::Error::from(errno).kind(),
                        format!("{}: cannot watch: {errno}", watched.path),
                    )
                })?;
            let dir = match &watched.name {
                None => watched.path.clone(),
                Some(_) => Path::new(&watched.path)
                    .parent()
                    .map_or_else(|| "/".to_owned(), |p| p.display().to_string()),
            };
            watches.entry(wd).or_default().push(Target {
                dir,
                name: watched.name,
            });
        }
        // SAFETY: the Inotify is moved in and keeps its fd open, the same fd, for the
        // AsyncFd's life.
        let fd = unsafe {
            AsyncFd::register_with_interest(InotifyFd(inotify), tokio::io::Interest::READABLE)
        }
        .map_err(io::Error::from)?;
        Ok(Watcher { fd, watches })
    }

    /// The changed paths among `events`; watches the kernel ended are forgotten.
    fn changed(&mut self, events: Vec<InotifyEvent>) -> Vec<String> {
        let mut changed = Vec::new();
        for event in events {
            if event.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                tracing::warn!("too many changes to tell apart; counting every watched path");
                changed.extend(self.watches.values().flatten().map(Target::all));
                continue;
            }
            if event.mask.contains(AddWatchFlags::IN_IGNORED) {
                if let Some(targets) = self.watches.remove(&event.wd) {
                    for target in targets {
                        tracing::warn!(dir = %target.dir, "watched directory gone; no longer watched");
                    }
                }
                continue;
            }
            let (Some(targets), Some(name)) = (self.watches.get(&event.wd), &event.name) else {
                continue;
            };
            let name = name.to_string_lossy();
            changed.extend(targets.iter().filter_map(|t| t.changed(&name)));
        }
        changed
    }
}

impl Changes for Watcher {
    async fn next(&mut self) -> Option<Vec<String>> {
        while !self.watches.is_empty() {
            let mut ready = match self.fd.readable().await {
                Ok(ready) => ready,
                Err(error) => {
                    tracing::warn!(%error, "cannot wait for changes; no longer watching");
                    return None;
                }
            };
            match ready.try_io(|fd| fd.get_ref().0.read_events().map_err(io::Error::from)) {
                Err(_would_block) => {}
                Ok(Err(error)) => {
                    tracing::warn!(%error, "cannot read changes; no longer watching");
                    return None;
                }
                Ok(Ok(events)) => {
                    let changed = self.changed(events);
                    if !changed.is_empty() {
                        return Some(changed);
                    }
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn binds(volume: &Path) -> Vec<Bind> {
        vec![(PathBuf::from("/etc/config"), volume.to_owned())]
    }

    #[test]
    fn paths_resolve_through_the_bind_mount_without_following_symlinks() {
        let volume = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let v = volume.path();
        std::fs::create_dir(v.join("..2026_12_02")).unwrap();
        std::fs::write(v.join("..2026_12_02/app.conf"), "x").unwrap();
        symlink("..2026_12_02", v.join("..data")).unwrap();
        symlink("..data/app.conf", v.join("app.conf")).unwrap();
        std::fs::create_dir(v.join("sub")).unwrap();
        symlink(outside.path(), v.join("escape")).unwrap();
        symlink("../../etc/passwd", v.join("up")).unwrap();
        let binds = binds(v);

        let whole = resolve(&binds, "/etc/config").unwrap();
        assert_eq!((whole.host.as_path(), whole.name.as_deref()), (v, None));
        let file = resolve(&binds, "/etc/config/app.conf").unwrap();
        assert_eq!(
            (file.host.as_path(), file.name.as_deref()),
            (v, Some("app.conf"))
        );
        let sub = resolve(&binds, "/etc/config/sub").unwrap();
        assert_eq!(sub.name, None);
        let later = resolve(&binds, "/etc/config/sub/not-yet").unwrap();
        assert_eq!(later.name.as_deref(), Some("not-yet"));

        let message = |path: &str| resolve(&binds, path).err().unwrap().to_string();
        assert!(
            message("/etc/other").contains("is in no bind-mounted volume"),
            "{}",
            message("/etc/other")
        );
        let through = message("/etc/config/escape/app.conf");
        assert!(through.contains("symlinks are not followed"), "{through}");
        let to_dir = message("/etc/config/escape");
        assert!(to_dir.contains("leaves its directory"), "{to_dir}");
        let up = message("/etc/config/up");
        assert!(up.contains("leaves its directory"), "{up}");
        let missing = message("/etc/config/nowhere/app.conf");
        assert!(missing.contains("nowhere"), "{missing}");
    }

    #[test]
    fn the_atomic_swap_counts_for_every_watched_file_and_other_names_only_for_the_directory() {
        let file = Target {
            dir: "/etc/config".to_owned(),
            name: Some("app.conf".to_owned()),
        };
        let whole = Target {
            dir: "/etc/config/".to_owned(),
            name: None,
        };
        assert_eq!(
            file.changed("..data").as_deref(),
            Some("/etc/config/..data")
        );
        assert_eq!(
            file.changed("app.conf").as_deref(),
            Some("/etc/config/app.conf")
        );
        assert_eq!(file.changed("other.conf"), None);
        assert_eq!(
            whole.changed("other.conf").as_deref(),
            Some("/etc/config/other.conf")
        );
    }
}
