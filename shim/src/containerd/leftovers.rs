//! The processes a container leaves when its init exits and it has no PID namespace of its own
//! (a pod's shared one, another container's, the host's): they are killed before the exit is
//! published, as containerd's runc shim does (runc's `ShouldKillAllOnExit`), so nothing of the
//! container outlives its task and its output streams end. With a private PID namespace the
//! kernel has already killed them with the init.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::time::Instant;

use crate::os::runc::Runc;

/// How long the killed processes may take to be gone before the exit is published anyway.
const PATIENCE: Duration = Duration::from_secs(5);
/// How often the container's cgroup is read meanwhile.
const INTERVAL: Duration = Duration::from_millis(5);

/// The container's cgroup, found through its init while it runs.
#[derive(Debug, Clone)]
pub struct Leftovers {
    /// `cgroup.procs` of the container's cgroup, if the init's cgroup could be read.
    procs: Option<PathBuf>,
}

impl Leftovers {
    /// Call while the container's init is alive (after `runc create`).
    pub fn of(pid: i32) -> Leftovers {
        let procs = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .ok()
            .and_then(|text| procs_file(&text, Path::new("/sys/fs/cgroup")));
        Leftovers { procs }
    }

    /// `runc kill --all <id> 9`, then waits until the container's cgroup holds no process.
    pub async fn kill(&self, runc: &Runc, id: &str) {
        if let Err(error) = runc.kill(id, Signal::SIGKILL, true).await {
            tracing::warn!(container = id, %error, "killing the processes left in the container");
            return;
        }
        let Some(procs) = &self.procs else { return };
        let deadline = Instant::now() + PATIENCE;
        while std::fs::read_to_string(procs).is_ok_and(|pids| !pids.trim().is_empty()) {
            if Instant::now() >= deadline {
                tracing::warn!(
                    container = id,
                    "processes left in the container outlived SIGKILL"
                );
                return;
            }
            tokio::time::sleep(INTERVAL).await;
        }
    }
}

/// The `cgroup.procs` file for a process's `/proc/PID/cgroup` text: the freezer hierarchy that
/// `runc kill --all` itself uses on cgroup v1, or the unified hierarchy.
fn procs_file(cgroup: &str, mount: &Path) -> Option<PathBuf> {
    let entries: Vec<(&str, &str)> = cgroup
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let _id = parts.next()?;
            Some((parts.next()?, parts.next()?))
        })
        .collect();
    let v1 = entries
        .iter()
        .find(|(controllers, _)| controllers.split(',').any(|c| c == "freezer"))
        .map(|(_, path)| mount.join("freezer").join(path.trim_start_matches('/')));
    let v2 = || {
        entries
            .iter()
            .find(|(controllers, _)| controllers.is_empty())
            .map(|(_, path)| mount.join(path.trim_start_matches('/')))
    };
    Some(v1.or_else(v2)?.join("cgroup.procs"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_freezer_hierarchy_is_chosen_on_cgroup_v1_and_the_unified_one_on_v2() {
        let hybrid = "9:name=systemd:/\n6:freezer:/ns/ctr\n4:memory:/ns/ctr\n0::/\n";
        assert_eq!(
            procs_file(hybrid, Path::new("/sys/fs/cgroup")),
            Some(PathBuf::from("/sys/fs/cgroup/freezer/ns/ctr/cgroup.procs"))
        );
        let unified = "0::/kubepods/pod1/ctr\n";
        assert_eq!(
            procs_file(unified, Path::new("/sys/fs/cgroup")),
            Some(PathBuf::from(
                "/sys/fs/cgroup/kubepods/pod1/ctr/cgroup.procs"
            ))
        );
        assert_eq!(procs_file("", Path::new("/sys/fs/cgroup")), None);
    }
}
