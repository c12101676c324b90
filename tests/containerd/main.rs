//! `lifecycle-shim` as a containerd runtime v2 shim, driven by `ctr` against a private
//! containerd the harness starts. The first tests check the harness itself with containerd's
//! stock runc shim.

#[path = "../support/configmap.rs"]
mod configmap;
#[path = "../support/containerd.rs"]
mod containerd;
#[path = "../support/image.rs"]
mod image;
#[path = "../support/recorder.rs"]
mod recorder;
#[path = "../support/mod.rs"]
mod support;

mod api;
mod grouping;
mod hardening;
mod lifecycle;
mod reconfigure;
mod runcv2;
mod start;

use std::fs;
use std::path::Path;

use containerd::{containerd_prerequisites, Containerd, LIFECYCLE_RUNTIME, PATH_ENV, RUNC_RUNTIME};
use support::{make_busybox_rootfs, prerequisites, wait_until};

fn ready() -> bool {
    prerequisites() && containerd_prerequisites()
}

/// A busybox rootfs in its own temporary directory.
fn busybox() -> (tempfile::TempDir, String) {
    let dir = tempfile::Builder::new()
        .prefix("lcs-rootfs-")
        .tempdir()
        .unwrap();
    let rootfs = dir.path().join("rootfs");
    make_busybox_rootfs(&rootfs);
    let rootfs = rootfs.to_str().unwrap().to_owned();
    (dir, rootfs)
}

/// Nothing of the namespace is left in containerd, and its shims have exited and removed
/// their sockets.
#[track_caller]
fn assert_nothing_left(containerd: &Containerd, ids: &[&str]) {
    for what in ["containers", "tasks"] {
        let out = containerd.ctr(&[what, "ls", "-q"]);
        assert!(out.status.success(), "ctr {what} ls failed");
        let list = String::from_utf8_lossy(&out.stdout);
        assert!(list.trim().is_empty(), "{what} left behind: {list}");
    }
    wait_until("the shims have exited", || {
        containerd.shim_processes().is_empty()
    });
    for id in ids {
        let socket = containerd.shim_socket(id);
        assert!(!socket.exists(), "the shim of {id} left {socket:?}");
    }
}

#[test]
fn harness_runs_a_container_with_the_stock_runc_shim() {
    if !ready() {
        return;
    }
    let containerd = Containerd::start();
    let (_dir, rootfs) = busybox();
    let out = containerd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNC_RUNTIME,
        "--env",
        PATH_ENV,
        "--rootfs",
        &rootfs,
        "hello",
        "sh",
        "-c",
        "echo hello; exit 3",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains("hello"),
        "stdout: {stdout}\nstderr: {stderr}\ncontainerd log:\n{}",
        containerd.log()
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "stderr: {stderr}\ncontainerd log:\n{}",
        containerd.log()
    );
    assert_nothing_left(&containerd, &["hello"]);
}

#[test]
fn harness_bind_mounts_a_host_directory() {
    if !ready() {
        return;
    }
    let containerd = Containerd::start();
    let (dir, rootfs) = busybox();
    let markers = dir.path().join("markers");
    fs::create_dir(&markers).unwrap();
    let mount = format!(
        "type=bind,src={},dst=/markers,options=rbind:rw",
        markers.display()
    );
    let out = containerd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNC_RUNTIME,
        "--env",
        PATH_ENV,
        "--mount",
        &mount,
        "--rootfs",
        &rootfs,
        "marker",
        "sh",
        "-c",
        "echo written > /markers/hello",
    ]);
    assert!(
        out.status.success(),
        "stderr: {}\ncontainerd log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        containerd.log()
    );
    assert_eq!(
        fs::read_to_string(markers.join("hello")).unwrap_or_default(),
        "written\n"
    );
    assert_nothing_left(&containerd, &["marker"]);
}

#[test]
fn harness_keeps_containers_across_a_restart_and_cleans_up_on_drop() {
    if !ready() {
        return;
    }
    let mut containerd = Containerd::start();
    let (_dir, rootfs) = busybox();
    let run = containerd.spawn_ctr(&[
        "run",
        "--runtime",
        RUNC_RUNTIME,
        "--env",
        PATH_ENV,
        "--rootfs",
        &rootfs,
        "sleeper",
        "sh",
        "-c",
        "echo up; while :; do sleep 1; done",
    ]);
    wait_until("the container is up", || run.stdout().contains("up"));
    // It may print before the shim has seen `runc start` return.
    wait_until("the task is running", || {
        containerd.task_status("sleeper").as_deref() == Some("RUNNING")
    });
    let socket = containerd.shim_socket("sleeper");
    assert!(socket.exists(), "no shim socket at {socket:?}");
    containerd.restart();
    assert_eq!(
        containerd.task_status("sleeper").as_deref(),
        Some("RUNNING"),
        "the task did not survive the restart; containerd log:\n{}",
        containerd.log()
    );
    let namespace = containerd.namespace().to_owned();
    assert!(Path::new("/run/containerd/runc").join(&namespace).exists());
    // ctr itself does not survive the restart: it exits with "transport is closing".
    run.wait();
    drop(containerd);
    assert!(!Path::new("/run/containerd/runc").join(&namespace).exists());
    let cgroups: Vec<_> = fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .flatten()
        .map(|h| h.path().join(&namespace))
        .filter(|p| p.exists())
        .collect();
    assert!(cgroups.is_empty(), "cgroups left behind: {cgroups:?}");
    wait_until("the shim has exited", || {
        containerd::shim_processes(&namespace).is_empty()
    });
    assert!(!socket.exists(), "the shim left {socket:?}");
}

/// A private containerd, a busybox rootfs and a host directory mounted at `/markers` in every
/// container run through [`Env::run_args`].
pub struct Env {
    pub containerd: Containerd,
    dir: tempfile::TempDir,
    pub rootfs: String,
}

impl Env {
    pub fn new() -> Option<Env> {
        if !ready() {
            return None;
        }
        let (dir, rootfs) = busybox();
        fs::create_dir(dir.path().join("markers")).unwrap();
        Some(Env {
            containerd: Containerd::start(),
            dir,
            rootfs,
        })
    }

    /// `ctr run` arguments for `sh -c script` in container `id`, with the lifecycle spec (if
    /// any) in the annotation and `flags` before the rootfs.
    pub fn run_args(
        &self,
        runtime: &str,
        id: &str,
        spec: Option<&serde_json::Value>,
        flags: &[&str],
        script: &str,
    ) -> Vec<String> {
        let mut args: Vec<String> = ["run", "--runtime", runtime, "--env", PATH_ENV, "--mount"]
            .map(String::from)
            .into();
        args.push(format!(
            "type=bind,src={},dst=/markers,options=rbind:rw",
            self.markers().display()
        ));
        if let Some(spec) = spec {
            args.push("--annotation".into());
            args.push(format!("lifecycle-shim/spec={spec}"));
        }
        args.extend(flags.iter().map(|f| f.to_string()));
        args.extend(["--rootfs".into(), self.rootfs.clone(), id.into()]);
        args.extend(["sh".into(), "-c".into(), script.into()]);
        args
    }

    pub fn ctr(&self, args: &[String]) -> std::process::Output {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.containerd.ctr(&args)
    }

    /// Runs ctr and fails the test, with containerd's log, unless it succeeds.
    #[track_caller]
    pub fn ctr_ok(&self, args: &[&str]) -> String {
        let out = self.containerd.ctr(args);
        assert!(
            out.status.success(),
            "ctr {args:?} failed: {}\ncontainerd log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.containerd.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The test's own directory, beside the rootfs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn markers(&self) -> std::path::PathBuf {
        self.dir.path().join("markers")
    }

    pub fn marker(&self, name: &str) -> std::path::PathBuf {
        self.markers().join(name)
    }

    pub fn lines(&self, name: &str) -> Vec<String> {
        support::read_lines(&self.marker(name))
    }

    /// Writes an executable file into the rootfs (e.g. a CGI script for busybox httpd).
    pub fn add_script(&self, path: &str, body: &str) {
        support::write_executable(Path::new(&self.rootfs), path, body);
    }

    /// `ctr run -d` of a script that writes `/markers/up` when it is ready; returns once it has
    /// and the task is RUNNING.
    #[track_caller]
    pub fn run_detached(&self, id: &str, spec: &serde_json::Value, script: &str) {
        let args = self.run_args(LIFECYCLE, id, Some(spec), &["-d"], script);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.ctr_ok(&args);
        support::wait_for_line(&self.marker("up"), Some("up"));
        self.wait_for_status(id, "RUNNING");
    }

    #[track_caller]
    pub fn wait_for_status(&self, id: &str, status: &str) {
        wait_until(&format!("task {id} is {status}"), || {
            self.containerd.task_status(id).as_deref() == Some(status)
        });
    }

    /// Stops the task with SIGTERM, waits until it has stopped, and deletes it as [`Env::remove`]
    /// does.
    #[track_caller]
    pub fn stop(&self, id: &str) -> String {
        self.ctr_ok(&["task", "kill", id]);
        self.wait_for_status(id, "STOPPED");
        self.remove(id)
    }

    /// Deletes a stopped task and its container; returns ctr's stderr, which names a non-zero
    /// exit status.
    #[track_caller]
    pub fn remove(&self, id: &str) -> String {
        let out = self.containerd.ctr(&["task", "rm", id]);
        assert!(
            out.status.success(),
            "ctr task rm: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.ctr_ok(&["containers", "rm", id]);
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Nothing is left: no container or task, no shim or its socket, nothing in runc's state
    /// for the namespace, no process in the rootfs.
    #[track_caller]
    pub fn assert_clean(&self, ids: &[&str]) {
        assert_nothing_left(&self.containerd, ids);
        let root = Path::new("/run/containerd/lifecycle").join(self.containerd.namespace());
        if root.exists() {
            let out = std::process::Command::new("runc")
                .arg("--root")
                .arg(&root)
                .args(["list", "-q"])
                .output()
                .unwrap();
            let list = String::from_utf8_lossy(&out.stdout);
            assert!(list.trim().is_empty(), "runc containers left: {list}");
        }
        let left = support::processes_rooted_at(Path::new(&self.rootfs));
        assert!(left.is_empty(), "processes left in the rootfs: {left:?}");
    }
}

/// The lifecycle runtime, for the suites' brevity.
pub const LIFECYCLE: &str = LIFECYCLE_RUNTIME;
