//! A private Docker 20.10 for the engine suite: its own containerd and dockerd, with roots,
//! state, sockets, pid file, trust key and daemon.json in a temporary directory, the OCI runtime
//! under test registered as runtime `lifecycle` (daemon.json `runtimes.lifecycle.path`), and a
//! busybox image imported without a registry.
//!
//! dockerd always uses containerd namespace `moby`; the harness's own containerd keeps harnesses
//! apart. What is not private: the Go shim's socket (`/run/containerd/s/<sha256 of
//! "<containerd address>/moby/<id>">`, removed by the shim when it exits), the empty
//! `/run/docker/plugins` dockerd creates, and the `docker` cgroups runc makes per container.
//! runc's state is private: dockerd gives the shim `Root = <exec-root>/runtime-runc` (for
//! every runtime), to which the shim appends the namespace; the shim writes an exec's process
//! file to `/tmp/runc-process<N>` and removes it. Several harnesses run side by side.

#![allow(dead_code)] // each suite uses its own part of the harness

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::host::{
    busybox_tar, processes_where, reap_processes_mentioning, run_bounded, sha256_hex, stop_daemon,
    try_run_bounded, unmount_under, OutputExt, Process, IMAGE, IMAGE_CHANGES, RUNTIME_NAME,
};
use crate::support::{require, wait_until, PATIENCE};

/// Debian's docker.io client; `/usr/local/bin/docker` may be an unrelated newer client that
/// comes first on PATH.
pub const DOCKER: &str = "/usr/bin/docker";
pub const DOCKERD: &str = "/usr/sbin/dockerd";
/// The containerd namespace dockerd uses; not configurable.
pub const NAMESPACE: &str = "moby";

/// Plugins the harness's containerd does without: dockerd brings its own image store
/// (overlay2) and needs no CRI; the `opt` plugin would create `/opt/containerd` on the host.
const DISABLED_PLUGINS: &[&str] = &[
    "io.containerd.grpc.v1.cri",
    "io.containerd.internal.v1.opt",
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
];

/// How many lines of each daemon's log a failing test prints.
const LOG_TAIL: usize = 60;
/// How long the drop waits for processes naming the harness directory after the daemons
/// stopped, before killing them.
const CLEANUP_GRACE: Duration = Duration::from_secs(10);

/// Whether Debian's docker.io (client and daemon), containerd and its runc shim are
/// installed; under `CI=true` a missing one fails the test. Complements
/// [`crate::support::prerequisites`].
pub fn docker_prerequisites() -> bool {
    require(
        Vec::new(),
        &[
            DOCKER,
            DOCKERD,
            "containerd",
            "containerd-shim-runc-v2",
            "tar",
        ],
    )
}

/// A running private containerd and dockerd; dropping it removes every container and stops
/// both daemons.
pub struct Docker {
    dir: tempfile::TempDir,
    runtime: PathBuf,
    containerd: Option<Child>,
    dockerd: Option<Child>,
}

impl Docker {
    /// Starts containerd and dockerd, waits until dockerd answers, and imports the busybox
    /// [`IMAGE`]. `runtime` is what the Go shim runs for `--runtime lifecycle`: runc, a
    /// recording wrapper, or `lifecycle-runc`.
    pub fn start(runtime: &Path) -> Docker {
        // Short: dockerd puts unix sockets under the exec root.
        let dir = tempfile::Builder::new()
            .prefix("lcs-docker-")
            .tempdir()
            .unwrap();
        let mut docker = Docker {
            dir,
            runtime: runtime.to_owned(),
            containerd: None,
            dockerd: None,
        };
        docker.write_config();
        docker.launch_containerd();
        docker.launch_dockerd();
        let tar = docker.path("busybox.tar");
        busybox_tar(docker.dir(), &tar);
        docker.import(&tar, IMAGE);
        fs::remove_file(&tar).unwrap();
        docker
    }

    fn write_config(&self) {
        let disabled: Vec<String> = DISABLED_PLUGINS.iter().map(|p| format!("{p:?}")).collect();
        fs::write(
            self.path("containerd.toml"),
            format!(
                r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = [{disabled}]

[grpc]
  address = "{grpc}"

[ttrpc]
  address = "{grpc}.ttrpc"
"#,
                root = self.path("containerd/root").display(),
                state = self.path("containerd/state").display(),
                grpc = self.containerd_socket().display(),
                disabled = disabled.join(", "),
            ),
        )
        .unwrap();
        let daemon = serde_json::json!({
            "runtimes": {RUNTIME_NAME: {"path": self.runtime}},
            // Else dockerd 20.10 writes its trust key to /etc/docker/key.json.
            "deprecated-key-path": self.path("key.json"),
            "userland-proxy": false,
        });
        fs::write(
            self.path("daemon.json"),
            serde_json::to_vec_pretty(&daemon).unwrap(),
        )
        .unwrap();
    }

    /// Starts containerd and waits until its socket accepts connections.
    fn launch_containerd(&mut self) {
        let child = Command::new("containerd")
            .arg("--config")
            .arg(self.path("containerd.toml"))
            .stdin(Stdio::null())
            .stdout(self.log_file("containerd.log"))
            .stderr(self.log_file("containerd.log"))
            .spawn()
            .expect("cannot start containerd");
        let (socket, log) = (self.containerd_socket(), self.path("containerd.log"));
        // Kept before waiting, so that a failed start still stops it on drop.
        let child = self.containerd.insert(child);
        wait_for_daemon(child, "containerd", &log, || {
            UnixStream::connect(&socket).is_ok()
        });
    }

    /// Starts dockerd on the harness's containerd and waits until it answers `/_ping`.
    fn launch_dockerd(&mut self) {
        let child = Command::new(DOCKERD)
            .arg("--data-root")
            .arg(self.path("data"))
            .arg("--exec-root")
            .arg(self.exec_root())
            .arg("-H")
            .arg(format!("unix://{}", self.socket().display()))
            .arg("--pidfile")
            .arg(self.path("dockerd.pid"))
            // Nothing on the host's network: no iptables rules, no bridge, no ip_forward sysctl.
            .args([
                "--iptables=false",
                "--ip-masq=false",
                "--ip-forward=false",
                "--bridge=none",
            ])
            .arg("--containerd")
            .arg(self.containerd_socket())
            .arg("--config-file")
            .arg(self.path("daemon.json"))
            .stdin(Stdio::null())
            .stdout(self.log_file("dockerd.log"))
            .stderr(self.log_file("dockerd.log"))
            .spawn()
            .expect("cannot start dockerd");
        let (socket, log) = (self.socket(), self.path("dockerd.log"));
        let child = self.dockerd.insert(child);
        wait_for_daemon(child, "dockerd", &log, || ping(&socket));
    }

    fn log_file(&self, name: &str) -> fs::File {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(name))
            .unwrap()
    }

    /// The harness directory; tests may put their own files there.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The OCI runtime binary registered as `lifecycle`.
    pub fn runtime(&self) -> &Path {
        &self.runtime
    }

    /// dockerd's API socket, for `docker -H unix://...`.
    pub fn socket(&self) -> PathBuf {
        self.path("docker.sock")
    }

    /// The harness containerd's grpc socket.
    pub fn containerd_socket(&self) -> PathBuf {
        self.path("containerd.sock")
    }

    /// dockerd's `--exec-root`.
    pub fn exec_root(&self) -> PathBuf {
        self.path("exec")
    }

    /// The runc root the Go shim uses for every runtime of this dockerd: dockerd 20.10 gives
    /// the shim `Root = <exec-root>/runtime-runc` whatever the runtime's name, and the shim
    /// appends the namespace.
    pub fn runc_root(&self) -> PathBuf {
        self.exec_root().join("runtime-runc").join(NAMESPACE)
    }

    /// Where runc keeps the state of container `id`.
    pub fn runc_state(&self, id: &str) -> PathBuf {
        self.runc_root().join(id)
    }

    /// A `/usr/bin/docker -H unix://<socket>` command, for arguments of the test's own.
    pub fn command(&self) -> Command {
        let mut command = Command::new(DOCKER);
        command
            .arg("-H")
            .arg(format!("unix://{}", self.socket().display()))
            // The client's own config (~/.docker) stays out of it.
            .env("DOCKER_CONFIG", self.path("client"));
        command
    }

    /// Runs `docker <args>` to completion (stdin /dev/null), failing the test after
    /// [`PATIENCE`].
    #[track_caller]
    pub fn docker(&self, args: &[&str]) -> Output {
        run_bounded(self.command().args(args), self.dir())
    }

    /// Runs `docker <args>`, fails the test unless it succeeds, and returns its stdout.
    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> String {
        crate::host::succeeded("docker", args, self.docker(args))
    }

    /// Imports a rootfs tar as image `name` (see [`IMAGE_CHANGES`]).
    #[track_caller]
    pub fn import(&self, tar: &Path, name: &str) {
        let mut args = vec!["import"];
        args.extend(IMAGE_CHANGES);
        args.extend([tar.to_str().unwrap(), name]);
        self.ok(&args);
    }

    /// Full ids of every container, running or not.
    pub fn container_ids(&self) -> Vec<String> {
        self.ok(&["ps", "--all", "--quiet", "--no-trunc"])
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }

    /// The Go shims the harness's containerd started (`containerd-shim-runc-v2 -namespace moby
    /// -id <id> -address <socket>`).
    pub fn shim_processes(&self) -> Vec<Process> {
        let address = self.containerd_socket().display().to_string();
        processes_where(|args| {
            args[0].contains("containerd-shim")
                && args
                    .windows(2)
                    .any(|w| w[0] == "-address" && w[1] == address)
        })
    }

    /// The shim of container `id`, if it still runs.
    pub fn shim_of(&self, id: &str) -> Vec<Process> {
        self.shim_processes()
            .into_iter()
            .filter(|p| p.cmdline.contains(&format!(" -id {id} ")))
            .collect()
    }

    /// Where the Go shim of container `id` listens: containerd 1.6 hashes the containerd
    /// address, namespace and id into `/run/containerd/s/`, outside the harness directory.
    pub fn shim_socket(&self, id: &str) -> PathBuf {
        let key = self.containerd_socket().join(NAMESPACE).join(id);
        Path::new("/run/containerd/s").join(sha256_hex(&key.display().to_string()))
    }

    /// The shim's bundle for container `id` in the harness's containerd state.
    pub fn bundle(&self, id: &str) -> PathBuf {
        self.path("containerd/state/io.containerd.runtime.v2.task")
            .join(NAMESPACE)
            .join(id)
    }

    pub fn dockerd_log(&self) -> String {
        fs::read_to_string(self.path("dockerd.log")).unwrap_or_default()
    }

    pub fn containerd_log(&self) -> String {
        fs::read_to_string(self.path("containerd.log")).unwrap_or_default()
    }

    fn running(child: &mut Option<Child>) -> bool {
        child
            .as_mut()
            .is_some_and(|c| c.try_wait().is_ok_and(|s| s.is_none()))
    }
}

/// Waits until `answers`, failing with the daemon's log if it exits first.
fn wait_for_daemon(child: &mut Child, name: &str, log: &Path, mut answers: impl FnMut() -> bool) {
    wait_until(&format!("{name} answers"), || {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{name} exited with {status}; log:\n{}",
                fs::read_to_string(log).unwrap_or_default()
            );
        }
        answers()
    });
}

/// Whether dockerd answers `GET /_ping` on `socket`.
fn ping(socket: &Path) -> bool {
    let Ok(mut stream) = UnixStream::connect(socket) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    if stream
        .write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200")
}

/// Removes every container, stops dockerd and containerd, kills any shim they left (and
/// removes its socket), deletes what runc still has under the exec root, and unmounts what
/// dockerd left under the harness directory.
impl Drop for Docker {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (name, log) in [
                ("dockerd", self.dockerd_log()),
                ("containerd", self.containerd_log()),
            ] {
                let lines: Vec<&str> = log.lines().collect();
                eprintln!(
                    "last {LOG_TAIL} lines of the {name} log:\n{}",
                    lines[lines.len().saturating_sub(LOG_TAIL)..].join("\n")
                );
            }
        }
        let started = Instant::now();
        if Docker::running(&mut self.dockerd) {
            let quietly =
                |args: &[&str]| try_run_bounded(self.command().args(args), self.dir(), PATIENCE);
            let ids: Vec<String> = quietly(&["ps", "--all", "--quiet", "--no-trunc"])
                .map(|out| {
                    out.stdout_text()
                        .split_whitespace()
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            if !ids.is_empty() {
                let args: Vec<&str> = ["rm", "--force"]
                    .into_iter()
                    .chain(ids.iter().map(String::as_str))
                    .collect();
                let _ = quietly(&args);
            }
        }
        if let Some(mut dockerd) = self.dockerd.take() {
            stop_daemon(&mut dockerd, "dockerd");
        }
        if let Some(mut containerd) = self.containerd.take() {
            stop_daemon(&mut containerd, "containerd");
        }
        for shim in self.shim_processes() {
            eprintln!("docker harness: killing leftover shim {}", shim.cmdline);
            let _ = kill(Pid::from_raw(shim.pid), Signal::SIGKILL);
            let id = shim.cmdline.split(" -id ").nth(1).unwrap_or_default();
            let id = id.split_whitespace().next().unwrap_or_default();
            let _ = fs::remove_file(self.shim_socket(id));
        }
        let killed = reap_processes_mentioning(&self.dir().display().to_string(), CLEANUP_GRACE);
        if !killed.is_empty() {
            eprintln!("docker harness: killed leftover processes {killed:?}");
        }
        let runc_roots = fs::read_dir(self.exec_root())
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("runtime-"))
            .map(|e| e.path().join(NAMESPACE));
        for root in runc_roots {
            let runc = |args: &[&str]| {
                Command::new("runc")
                    .arg("--root")
                    .arg(&root)
                    .args(args)
                    .stderr(Stdio::null())
                    .output()
            };
            if let Ok(out) = runc(&["list", "-q"]) {
                for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    eprintln!("docker harness: runc still had {id}; deleting it");
                    let _ = runc(&["delete", "--force", id]);
                }
            }
        }
        unmount_under(self.dir());
        let elapsed = started.elapsed();
        if elapsed > Duration::from_secs(8) {
            eprintln!("docker harness: cleanup took {elapsed:?}");
        }
    }
}
