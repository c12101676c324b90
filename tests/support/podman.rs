//! A private Podman for the engine suite: root, runroot, tmpdir, containers.conf, storage.conf,
//! registries.conf, network config, file locks and events log all in a temporary directory,
//! with the OCI runtime under test registered and made the default as `lifecycle`, and a
//! busybox image.
//!
//! Podman 4.3 has no daemon: every call is a `podman` process with the same flags and
//! environment. What is not private: runc's state (`/run/runc/<id>`: podman passes runc no
//! `--root`) and the `libpod_parent` cgroups; container ids are unique, and dropping the harness
//! removes its containers. Nothing touches the host's network: the CNI backend with a private
//! config directory (the netavark backend always creates `/run/containers/networks` for root),
//! `netns = "none"` for containers and `--network none` for `kube play`. Nothing is written
//! under `/var/lib/containers` either (see [`Podman::import`] and `infra_image`).

#![allow(dead_code)] // each suite uses its own part of the harness

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::host::{
    busybox_tar, processes_where, reap_processes_mentioning, run_bounded, try_run_bounded,
    unmount_under, OutputExt, Process, IMAGE, IMAGE_CHANGES, RUNTIME_NAME,
};
use crate::support::{require, PATIENCE};

/// runc's default root, which podman leaves runc to use.
pub const RUNC_DEFAULT_ROOT: &str = "/run/runc";

/// How long the drop waits for conmon and podman's cleanup processes to exit by themselves.
const CLEANUP_GRACE: Duration = Duration::from_secs(10);
/// How many lines of the events log a failing test prints.
const LOG_TAIL: usize = 50;

/// Whether podman and conmon (and `unshare`, for [`Podman::import`]) are installed; under
/// `CI=true` a missing one fails the test.
/// Complements [`crate::support::prerequisites`].
pub fn podman_prerequisites() -> bool {
    require(Vec::new(), &["podman", "conmon", "tar", "unshare"])
}

/// A private Podman whose default OCI runtime is the binary given to [`Podman::new`].
pub struct Podman {
    dir: tempfile::TempDir,
    runtime: PathBuf,
    runtime_name: String,
}

impl Podman {
    /// Writes the configuration and imports the busybox [`IMAGE`]. `runtime` is what conmon
    /// runs as the OCI runtime (runc, a recording wrapper, or `lifecycle-runc`), registered
    /// and made the default as [`RUNTIME_NAME`].
    pub fn new(runtime: &Path) -> Podman {
        Podman::named(runtime, RUNTIME_NAME)
    }

    /// The same with the runtime registered under `name`. The name matters: podman passes
    /// `--log-format=json --log <file>` to `create` and `exec` only for the names in
    /// containers.conf's `runtime_supports_json` (crun, runc, kata, runsc, krun).
    pub fn named(runtime: &Path, name: &str) -> Podman {
        let dir = tempfile::Builder::new()
            .prefix("lcs-podman-")
            .tempdir()
            .unwrap();
        let podman = Podman {
            dir,
            runtime: runtime.to_owned(),
            runtime_name: name.to_owned(),
        };
        for sub in ["root", "runroot", "tmp", "networks", "hooks.d"] {
            fs::create_dir_all(podman.path(sub)).unwrap();
        }
        fs::write(podman.path("containers.conf"), podman.containers_conf()).unwrap();
        fs::write(
            podman.path("storage.conf"),
            format!(
                "[storage]\ndriver = \"overlay\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                podman.path("root").display(),
                podman.path("runroot").display()
            ),
        )
        .unwrap();
        // No registry: nothing is ever pulled, a typo in an image name fails at once.
        fs::write(
            podman.path("registries.conf"),
            "unqualified-search-registries = []\n",
        )
        .unwrap();
        let tar = podman.path("busybox.tar");
        busybox_tar(podman.dir(), &tar);
        podman.import(&tar, IMAGE);
        fs::remove_file(&tar).unwrap();
        podman
    }

    fn containers_conf(&self) -> String {
        format!(
            r#"[containers]
# root here lacks CAP_SYS_RESOURCE: podman's default nofile=1048576 makes runc fail every
# create with "error setting rlimit type 7" (MACHINE-NOTES).
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
netns = "none"
log_driver = "k8s-file"

[network]
network_backend = "cni"
network_config_dir = "{networks}"

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{events}"
# The default shm lock is /dev/shm/libpod_lock, shared by every podman on the machine.
lock_type = "file"
hooks_dir = ["{hooks}"]
image_copy_tmp_dir = "{tmp}"
# Else podman builds localhost/podman-pause with buildah, which writes the blob info cache in
# /var/lib/containers/cache (see import).
infra_image = "{image}"
runtime = "{name}"

[engine.runtimes]
{name} = ["{runtime}"]
"#,
            networks = self.path("networks").display(),
            events = self.path("events.log").display(),
            hooks = self.path("hooks.d").display(),
            tmp = self.path("tmp").display(),
            image = IMAGE,
            name = self.runtime_name,
            runtime = self.runtime.display(),
        )
    }

    /// The harness directory; tests may put their own files there.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The OCI runtime binary podman uses.
    pub fn runtime(&self) -> &Path {
        &self.runtime
    }

    /// A `podman` command with the harness's global flags and environment, for arguments of
    /// the test's own (`podman --runtime PATH ...` also works: a later flag wins).
    pub fn command(&self) -> Command {
        let mut command = Command::new("podman");
        command
            .arg("--root")
            .arg(self.path("root"))
            .arg("--runroot")
            .arg(self.path("runroot"))
            .arg("--tmpdir")
            .arg(self.path("tmp"))
            .env("CONTAINERS_CONF", self.path("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.path("storage.conf"))
            .env("CONTAINERS_REGISTRIES_CONF", self.path("registries.conf"))
            .env("TMPDIR", self.path("tmp"));
        command
    }

    /// Runs `podman <args>` to completion (stdin /dev/null), failing the test after
    /// [`PATIENCE`].
    #[track_caller]
    pub fn podman(&self, args: &[&str]) -> Output {
        run_bounded(self.command().args(args), self.dir())
    }

    /// Runs `podman <args>`, fails the test unless it succeeds, and returns its stdout.
    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> String {
        crate::host::succeeded("podman", args, self.podman(args))
    }

    /// Imports a rootfs tar as image `name` (see [`IMAGE_CHANGES`]). containers/image records
    /// every copy in a blob info cache that root's podman 4.3 always keeps at
    /// `/var/lib/containers/cache`, so the import runs in a mount namespace of its own with a
    /// tmpfs over `/var/lib`: the layers still land in the harness's storage, the cache in a
    /// tmpfs that vanishes with the command.
    #[track_caller]
    pub fn import(&self, tar: &Path, name: &str) {
        let podman = self.command();
        let mut command = Command::new("unshare");
        command
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg("mount -t tmpfs -o size=64m lcs-var-lib /var/lib && exec \"$@\"")
            .arg("sh")
            .arg(podman.get_program())
            .args(podman.get_args())
            .arg("import")
            .arg("--quiet")
            .args(IMAGE_CHANGES)
            .arg(tar)
            .arg(name);
        for (key, value) in podman.get_envs() {
            if let Some(value) = value {
                command.env(key, value);
            }
        }
        let out = run_bounded(&mut command, self.dir());
        assert!(
            out.status.success(),
            "podman import exited with {}\nstderr:\n{}",
            out.status,
            out.stderr_text()
        );
    }

    /// `podman kube play --network none` of `yaml` (a Pod; images must be local, e.g.
    /// [`IMAGE`]); returns podman's output (the pod's and containers' ids). Without the flag kube
    /// play ignores `netns = "none"` and joins the pod to a `podman-default-kube-network`
    /// bridge: a host interface, iptables chains and `/var/lib/cni` state. The infra container
    /// runs [`IMAGE`]'s `/pause` (containers.conf `infra_image`).
    #[track_caller]
    pub fn kube_play(&self, yaml: &str) -> String {
        let file = tempfile::Builder::new()
            .prefix("kube-")
            .suffix(".yaml")
            .tempfile_in(self.dir())
            .unwrap();
        fs::write(file.path(), yaml).unwrap();
        self.ok(&[
            "kube",
            "play",
            "--network",
            "none",
            file.path().to_str().unwrap(),
        ])
    }

    /// Stops and removes pod `name`. `pod stop -t 0` then `pod rm -f` takes half a second where
    /// podman 4.3's `pod rm -f -t 0` takes about four.
    #[track_caller]
    pub fn remove_pod(&self, name: &str) {
        self.ok(&["pod", "stop", "--time", "0", name]);
        self.ok(&["pod", "rm", "--force", name]);
    }

    /// Full ids of every container, running or not, pods' infra containers included.
    pub fn container_ids(&self) -> Vec<String> {
        self.ok(&["ps", "--all", "--quiet", "--no-trunc"])
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }

    /// Where runc keeps container `id`'s state: podman gives runc no `--root`.
    pub fn runc_state(&self, id: &str) -> PathBuf {
        Path::new(RUNC_DEFAULT_ROOT).join(id)
    }

    /// The conmon processes of this harness (each names the harness directory).
    pub fn conmon_processes(&self) -> Vec<Process> {
        let dir = self.dir().display().to_string();
        processes_where(|args| args[0].ends_with("conmon") && args.iter().any(|a| a.contains(&dir)))
    }

    /// The conmon of container `id` (`conmon ... -c <id> ...`), if it still runs.
    pub fn conmon_of(&self, id: &str) -> Vec<Process> {
        processes_where(|args| {
            args[0].ends_with("conmon") && args.windows(2).any(|w| w[0] == "-c" && w[1] == id)
        })
    }

    /// Podman's events log (`events_logger = "file"`).
    pub fn events(&self) -> String {
        fs::read_to_string(self.path("events.log")).unwrap_or_default()
    }
}

/// Removes every pod and container, waits for conmon and podman's cleanup processes (they name
/// the harness directory in their arguments and would otherwise recreate files in it), deletes
/// what runc still has of the harness's containers, and unmounts the storage.
impl Drop for Podman {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let events = self.events();
            let lines: Vec<&str> = events.lines().collect();
            eprintln!(
                "last {LOG_TAIL} podman events:\n{}",
                lines[lines.len().saturating_sub(LOG_TAIL)..].join("\n")
            );
        }
        let started = Instant::now();
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
            // Faster than `pod rm --force --time 0` (see remove_pod).
            let _ = quietly(&["pod", "stop", "--all", "--time", "0"]);
            let _ = quietly(&["pod", "rm", "--all", "--force"]);
            let _ = quietly(&["rm", "--all", "--force", "--time", "0"]);
        }
        let killed = reap_processes_mentioning(&self.dir().display().to_string(), CLEANUP_GRACE);
        if !killed.is_empty() {
            eprintln!("podman harness: killed leftover processes {killed:?}");
        }
        for id in &ids {
            if self.runc_state(id).exists() {
                eprintln!("podman harness: runc still had {id}; deleting it");
                let _ = Command::new("runc")
                    .args(["delete", "--force", id])
                    .output();
            }
        }
        unmount_under(self.dir());
        let elapsed = started.elapsed();
        if elapsed > Duration::from_secs(5) {
            eprintln!("podman harness: cleanup took {elapsed:?}");
        }
    }
}
