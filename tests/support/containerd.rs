//! A private containerd for the integration suites: its own root, state, sockets and config in
//! a temporary directory, the shim under test on its PATH as `containerd-shim-lifecycle-v2`
//! (runtime `io.containerd.lifecycle.v2`), and a containerd namespace of its own.
//!
//! containerd 1.6 is not fully private: shim sockets still go under `/run/containerd/s/`, the
//! runc shim keeps its state under `/run/containerd/runc/<namespace>/` and runc creates
//! cgroups named after the namespace. A unique namespace per harness keeps parallel tests
//! apart, and dropping the harness removes what was left for that namespace.

#![allow(dead_code)] // each suite uses its own part of the harness

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::support::{wait_until, PATIENCE, SHIM};

/// The runtime name under which containerd finds the shim under test.
pub const LIFECYCLE_RUNTIME: &str = "io.containerd.lifecycle.v2";
/// containerd's stock runc shim.
pub const RUNC_RUNTIME: &str = "io.containerd.runc.v2";
/// `ctr run --rootfs` without an image gives the process no environment at all, so `sh` is
/// not found unless a `ctr run` passes `--env` with this.
pub const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How much of containerd's log a failing test prints when the harness is dropped.
const LOG_TAIL: usize = 200;

/// How long each `ctr` call of the cleanup on drop may take.
const CLEANUP_TIMEOUT: &str = "30s";

/// Plugins that only cost startup time here: no CRI, no images, and no snapshotters but the
/// default ones. The `opt` plugin would create `/opt/containerd` on the host.
const CRI_PLUGIN: &str = "io.containerd.grpc.v1.cri";
const DISABLED_PLUGINS: &[&str] = &[
    CRI_PLUGIN,
    "io.containerd.internal.v1.opt",
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
];

/// Whether containerd, ctr and the stock runc shim are installed; under `CI=true` a missing
/// one fails the test instead of skipping it. Complements [`crate::support::prerequisites`].
pub fn containerd_prerequisites() -> bool {
    crate::support::require(
        Vec::new(),
        &["containerd", "ctr", "containerd-shim-runc-v2"],
    )
}

/// A running private containerd; dropping it cleans up its namespace and stops it.
pub struct Containerd {
    dir: tempfile::TempDir,
    namespace: String,
    /// With the CRI plugin, whose namespace (`k8s.io`) other harnesses share.
    cri: bool,
    child: Option<Child>,
    /// Counts spawned `ctr` processes, to name their output files.
    spawned: AtomicU32,
}

impl Containerd {
    /// Writes the config, starts containerd and waits until it answers.
    pub fn start() -> Containerd {
        Containerd::start_with(None, "")
    }

    /// With containerd's CRI plugin, serving a `lifecycle` runtime handler (this shim, with
    /// `pod_annotations = ["lifecycle-shim/*"]`) beside the default `runc`; pods use the host
    /// network, so no CNI plugin is needed. Its namespace is the CRI plugin's `k8s.io`.
    pub fn start_cri(sandbox_image: &str) -> Containerd {
        Containerd::start_with(Some(sandbox_image), "")
    }

    /// The same, with more runtime handlers: `runtimes` is TOML of
    /// `[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.<name>]` tables.
    pub fn start_cri_with(sandbox_image: &str, runtimes: &str) -> Containerd {
        Containerd::start_with(Some(sandbox_image), runtimes)
    }

    /// The CRI socket (the same grpc socket).
    pub fn cri_socket(&self) -> PathBuf {
        self.address()
    }

    fn start_with(sandbox_image: Option<&str>, runtimes: &str) -> Containerd {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let namespace = match sandbox_image {
            Some(_) => "k8s.io".to_owned(),
            None => format!(
                "lcs-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ),
        };
        let dir = tempfile::Builder::new()
            .prefix("lcs-containerd-")
            .tempdir()
            .unwrap();
        let bin = dir.path().join("bin");
        fs::create_dir(&bin).unwrap();
        symlink(SHIM, bin.join("containerd-shim-lifecycle-v2")).unwrap();
        fs::create_dir(dir.path().join("ctr")).unwrap();
        let disabled: Vec<&str> = DISABLED_PLUGINS
            .iter()
            .copied()
            .filter(|p| sandbox_image.is_none() || *p != CRI_PLUGIN)
            .collect();
        let mut config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = [{disabled}]

[grpc]
  address = "{grpc}"

[ttrpc]
  address = "{grpc}.ttrpc"

[debug]
  level = "debug"
"#,
            root = dir.path().join("root").display(),
            state = dir.path().join("state").display(),
            grpc = dir.path().join("containerd.sock").display(),
            disabled = disabled
                .iter()
                .map(|p| format!("{p:?}"))
                .collect::<Vec<_>>()
                .join(", "),
        );
        if let Some(image) = sandbox_image {
            let cni = dir.path().join("cni");
            fs::create_dir(&cni).unwrap();
            config.push_str(&format!(
                r#"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{image}"
  # root here lacks CAP_SYS_RESOURCE: runc must not lower a pod's OOM score (MACHINE-NOTES).
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.lifecycle]
      runtime_type = "io.containerd.lifecycle.v2"
      pod_annotations = ["lifecycle-shim/*"]
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
"#,
                cni = cni.display()
            ));
            config.push_str(runtimes);
        }
        fs::write(dir.path().join("config.toml"), config).unwrap();
        let mut containerd = Containerd {
            dir,
            namespace,
            cri: sandbox_image.is_some(),
            child: None,
            spawned: AtomicU32::new(0),
        };
        containerd.launch();
        containerd
    }

    /// Stops containerd and starts it again on the same config and state; shims and their
    /// containers keep running meanwhile.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    /// The grpc socket, for `ctr -a`.
    pub fn address(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    /// The containerd namespace every `ctr` call of this harness uses.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The `LIFECYCLE_SHIM_STATE` of this containerd's shims.
    pub fn shim_state(&self) -> PathBuf {
        self.dir.path().join("shim-state")
    }

    /// The bundle directory containerd made for task `id`, where its shim runs.
    pub fn bundle(&self, id: &str) -> PathBuf {
        self.dir
            .path()
            .join("state/io.containerd.runtime.v2.task")
            .join(&self.namespace)
            .join(id)
    }

    /// The temporary directory holding containerd's files; tests may put their own there.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// containerd's log, including what shims log to it.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Runs `ctr -a <socket> -n <namespace> <args>` to completion, failing the test if it
    /// takes longer than [`PATIENCE`].
    pub fn ctr(&self, args: &[&str]) -> Output {
        self.spawn_ctr(args).wait()
    }

    /// Starts `ctr -a <socket> -n <namespace> <args>` without waiting, e.g. a `ctr run` whose
    /// container runs until the test stops it. Output goes to files in the harness directory.
    pub fn spawn_ctr(&self, args: &[&str]) -> Ctr {
        let n = self.spawned.fetch_add(1, Ordering::Relaxed);
        let stdout = self.dir.path().join(format!("ctr/{n}.stdout"));
        let stderr = self.dir.path().join(format!("ctr/{n}.stderr"));
        let child = self
            .ctr_command(args)
            .stdout(File::create(&stdout).unwrap())
            .stderr(File::create(&stderr).unwrap())
            .spawn()
            .expect("cannot run ctr");
        Ctr {
            child,
            stdout,
            stderr,
            args: args.join(" "),
        }
    }

    /// The status `ctr task ls` reports for a task (`CREATED`, `RUNNING`, `STOPPED`, ...), or
    /// `None` if there is no such task. ctr 1.6 has no `task wait`: poll this instead.
    pub fn task_status(&self, id: &str) -> Option<String> {
        let out = self.ctr(&["task", "ls"]);
        assert!(
            out.status.success(),
            "ctr task ls: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .map(|line| line.split_whitespace().collect::<Vec<_>>())
            .find(|fields| fields.first() == Some(&id))
            .and_then(|fields| fields.last().map(|s| (*s).to_owned()))
    }

    /// Where a shim for container `id` of this harness listens: containerd 1.6 puts it at
    /// `/run/containerd/s/<sha256 of "<address>/<namespace>/<id>">`, outside the temp dir. A
    /// shim should remove it when its task is deleted.
    pub fn shim_socket(&self, id: &str) -> PathBuf {
        let key = self.address().join(&self.namespace).join(id);
        let out = Command::new("sh")
            .args(["-c", "printf %s \"$1\" | sha256sum", "sh"])
            .arg(&key)
            .output()
            .expect("cannot run sha256sum");
        let digest = String::from_utf8_lossy(&out.stdout);
        let digest = digest
            .split_whitespace()
            .next()
            .expect("no sha256sum output");
        Path::new("/run/containerd/s").join(digest)
    }

    /// SIGKILLs the one shim this harness's containerd runs, failing the test if there is not
    /// exactly one.
    #[track_caller]
    pub fn kill_the_shim(&self) {
        let shims = self.shim_processes();
        assert_eq!(shims.len(), 1, "{shims:?}");
        let pid: i32 = shims[0].split(':').next().unwrap().parse().unwrap();
        kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    }

    /// The shims this harness's containerd started, running or not yet reaped.
    pub fn shim_processes(&self) -> Vec<String> {
        let address = self.address().display().to_string();
        shim_processes(&self.namespace)
            .into_iter()
            .filter(|p| p.contains(&format!("-address {address} ")))
            .collect()
    }

    fn ctr_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("ctr");
        command
            .arg("-a")
            .arg(self.address())
            .args(["-n", &self.namespace])
            .args(args)
            .stdin(Stdio::null());
        command
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("containerd.log")
    }

    /// Starts containerd with the shim's directory first on its PATH, and waits until it
    /// answers on its socket.
    fn launch(&mut self) {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let path = format!(
            "{}:{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            self.dir.path().join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let child = Command::new("containerd")
            .arg("--config")
            .arg(self.dir.path().join("config.toml"))
            .env("PATH", path)
            // The shims inherit it: their health status files stay in the harness directory.
            .env("LIFECYCLE_SHIM_STATE", self.shim_state())
            // `ctr run -d` of a task whose init containers wait for the test returns after 1 s
            // (the CRI harness keeps the default, which its tests of Start rely on).
            .env(
                "LIFECYCLE_SHIM_START_WAIT",
                if self.cri { "90" } else { "1" },
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("cannot start containerd");
        self.child = Some(child);
        wait_until("containerd answers", || {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("containerd exited with {status}; log:\n{}", self.log());
            }
            Command::new("ctr")
                .arg("-a")
                .arg(self.address())
                .arg("version")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
    }

    /// SIGTERM, then SIGKILL if containerd has not exited within [`PATIENCE`]; never panics,
    /// since it also runs on drop.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + PATIENCE;
        while child.try_wait().is_ok_and(|s| s.is_none()) {
            if Instant::now() > deadline {
                eprintln!("containerd ignored SIGTERM; killing it");
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.wait();
    }

    /// A ctr command for cleanup: bounded by ctr's own timeout, so that a stuck shim cannot
    /// hang the drop, and with its output discarded.
    fn cleanup_command(&self, args: &[&str]) -> Command {
        let mut command = self.ctr_command(&[&["--timeout", CLEANUP_TIMEOUT][..], args].concat());
        command.stdout(Stdio::null()).stderr(Stdio::null());
        command
    }

    /// Ids listed by `ctr <what> ls -q`, empty if ctr fails.
    fn list(&self, what: &str) -> Vec<String> {
        self.cleanup_command(&[what, "ls", "-q"])
            .stdout(Stdio::piped())
            .output()
            .map(|out| {
                String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Runs a ctr command for cleanup, ignoring its result.
    fn quietly(&self, args: &[&str]) {
        let _ = self.cleanup_command(args).status();
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(LOG_TAIL)..].join("\n");
            eprintln!("last {LOG_TAIL} lines of the containerd log:\n{tail}");
        }
        let running = self
            .child
            .as_mut()
            .is_some_and(|child| child.try_wait().is_ok_and(|status| status.is_none()));
        if running {
            for task in self.list("tasks") {
                self.quietly(&["task", "kill", "-s", "SIGKILL", &task]);
                // -f waits for the killed task to stop before deleting it.
                self.quietly(&["task", "delete", "-f", &task]);
            }
            for container in self.list("containers") {
                self.quietly(&["container", "delete", &container]);
            }
        }
        self.stop();
        if self.cri {
            // k8s.io is shared with other harnesses; the tasks above were this one's.
            return;
        }
        for state in ["runc", "lifecycle"] {
            let _ = fs::remove_dir_all(
                Path::new("/run/containerd")
                    .join(state)
                    .join(&self.namespace),
            );
        }
        remove_cgroups(&self.namespace);
    }
}

/// Processes whose command line has `-namespace <namespace>`, as containerd starts shims;
/// usable after the harness is dropped.
pub fn shim_processes(namespace: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args
            .windows(2)
            .any(|w| w[0] == "-namespace" && w[1] == namespace)
        {
            found.push(format!(
                "{}: {}",
                entry.file_name().to_string_lossy(),
                args.join(" ")
            ));
        }
    }
    found
}

/// Removes the cgroups runc made for a namespace (`<hierarchy>/<namespace>/<container>`),
/// deepest first. `rmdir` fails on a cgroup that still has processes, which is left alone.
fn remove_cgroups(namespace: &str) {
    let mut roots = vec![Path::new("/sys/fs/cgroup").join(namespace)];
    if let Ok(hierarchies) = fs::read_dir("/sys/fs/cgroup") {
        roots.extend(hierarchies.flatten().map(|h| h.path().join(namespace)));
    }
    for root in roots {
        remove_dirs_deepest_first(&root);
    }
}

fn remove_dirs_deepest_first(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_dirs_deepest_first(&entry.path());
        }
    }
    let _ = fs::remove_dir(dir);
}

/// A `ctr` process started by [`Containerd::spawn_ctr`], with its output in files.
pub struct Ctr {
    pub child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    args: String,
}

impl Ctr {
    /// What ctr has written to stdout so far (the container's output for `ctr run`).
    pub fn stdout(&self) -> String {
        fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits for ctr to exit, killing it and failing the test after [`PATIENCE`].
    pub fn wait(mut self) -> Output {
        let (args, stdout, stderr) = (self.args.clone(), self.stdout.clone(), self.stderr.clone());
        let status = crate::support::wait_child(&mut self.child, || {
            format!(
                "`ctr {args}` did not finish within {PATIENCE:?}; stdout:\n{}\nstderr:\n{}",
                fs::read_to_string(&stdout).unwrap_or_default(),
                fs::read_to_string(&stderr).unwrap_or_default()
            )
        });
        Output {
            status,
            stdout: fs::read(&self.stdout).unwrap_or_default(),
            stderr: fs::read(&self.stderr).unwrap_or_default(),
        }
    }
}
