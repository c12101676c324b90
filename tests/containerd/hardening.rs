//! Issue 7 under containerd: what the shim leaves on disk is private, and faults (a killed
//! shim, a restarted containerd) lose nothing and leak nothing.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::Env;

/// Every file and directory under `dir`, with its mode.
fn modes(dir: &Path) -> Vec<(PathBuf, u32, std::fs::FileType)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let Ok(meta) = std::fs::symlink_metadata(entry.path()) else {
                continue;
            };
            if meta.is_dir() && entry.file_name() != "rootfs" {
                todo.push(entry.path());
            }
            out.push((
                entry.path(),
                meta.permissions().mode() & 0o7777,
                meta.file_type(),
            ));
        }
    }
    out
}

/// The shim's ttrpc socket is root's alone; nothing the shim (or runc for it) writes in the
/// bundle, the runc root or the status directory is writable by others.
#[test]
fn the_shim_socket_is_root_only_and_its_files_are_not_world_writable() {
    let Some(env) = Env::new() else { return };
    let spec = json!({
        "initContainers": [{"name": "idler", "command": ["sleep", "1000"], "restartPolicy": "Always"}],
        "healthCheck": {"exec": {"command": ["true"]}, "periodSeconds": 1}
    });
    env.run_detached("private", &spec, "echo up > /markers/up; exec sleep 1000");
    crate::support::wait_until("the health status is written", || {
        modes(&env.containerd.shim_state())
            .iter()
            .any(|(p, _, _)| p.extension().is_some_and(|e| e == "json"))
    });
    let socket = env.containerd.shim_socket("private");
    let meta = std::fs::metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    let mode = meta.permissions().mode() & 0o777;
    assert_eq!(mode & 0o077, 0, "socket {socket:?} has mode {mode:o}");
    let written = [
        modes(&env.containerd.bundle("private")),
        modes(&Path::new("/run/containerd/lifecycle").join(env.containerd.namespace())),
        modes(&env.containerd.shim_state()),
    ]
    .concat();
    // Sidecar bundles, runc's state and the health status are among them.
    assert!(written.len() >= 10, "{written:?}");
    let open: Vec<_> = written
        .iter()
        .filter(|(_, mode, kind)| !kind.is_symlink() && mode & 0o002 != 0)
        .collect();
    assert!(open.is_empty(), "world-writable: {open:?}");
    env.ctr_ok(&["task", "kill", "-s", "SIGKILL", "private"]);
    env.wait_for_status("private", "STOPPED");
    env.remove("private");
    env.assert_clean(&["private"]);
}
