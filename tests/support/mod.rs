//! Helpers for the suites: busybox bundles, the shim under test, waiting on marker files, and
//! checks that nothing was left behind.

#![allow(dead_code)] // each suite uses its own part of the helpers

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const SHIM: &str = env!("CARGO_BIN_EXE_lifecycle-shim");
const BUSYBOX: &str = "/bin/busybox";

/// Whether the machine can run containers; under `CI=true` a missing prerequisite fails the
/// test instead of skipping it.
pub fn prerequisites() -> bool {
    let mut missing = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        missing.push("root".to_owned());
    }
    require(missing, &["runc", BUSYBOX])
}

/// True when nothing is `missing` and every tool is on PATH; otherwise says what is missing
/// and skips, or under `CI=true` fails.
pub fn require(mut missing: Vec<String>, tools: &[&str]) -> bool {
    for tool in tools {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            missing.push(tool.to_string());
        }
    }
    if missing.is_empty() {
        return true;
    }
    let message = format!("needs {} (scripts/test installs them)", missing.join(", "));
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{message}");
    }
    eprintln!("skipping: {message}");
    false
}

/// Lines of a file, none if it does not exist.
pub fn read_lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Writes an executable file under `root`, e.g. a CGI script for busybox httpd in a rootfs.
pub fn write_executable(root: &Path, path: &str, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    let file = root.join(path.trim_start_matches('/'));
    fs::create_dir_all(file.parent().unwrap()).unwrap();
    fs::write(&file, body).unwrap();
    fs::set_permissions(&file, fs::Permissions::from_mode(0o755)).unwrap();
}

/// A busybox bundle in a temporary directory, with a host directory bind-mounted at
/// `/markers` so the test can see what the container and its hooks wrote.
pub struct TestBundle {
    pub dir: tempfile::TempDir,
    pub id: String,
    pub config: Value,
}

impl TestBundle {
    /// `script` is the entrypoint, run by `sh -c`.
    pub fn new(script: &str) -> TestBundle {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = tempfile::Builder::new()
            .prefix("lcs-test-")
            .tempdir()
            .unwrap();
        let id = format!(
            "lcs-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let rootfs = dir.path().join("bundle/rootfs");
        make_busybox_rootfs(&rootfs);
        fs::create_dir_all(dir.path().join("markers")).unwrap();
        fs::create_dir_all(dir.path().join("root")).unwrap();
        let status = Command::new("runc")
            .args(["spec", "--bundle"])
            .arg(dir.path().join("bundle"))
            .status()
            .unwrap();
        assert!(status.success(), "runc spec failed");
        let mut config: Value =
            serde_json::from_slice(&fs::read(dir.path().join("bundle/config.json")).unwrap())
                .unwrap();
        config["process"]["terminal"] = json!(false);
        config["process"]["args"] = json!(["sh", "-c", script]);
        config["root"]["readonly"] = json!(false);
        config["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/markers",
            "type": "bind",
            "source": dir.path().join("markers"),
            "options": ["rbind", "rw"]
        }));
        let bundle = TestBundle { dir, id, config };
        bundle.save();
        bundle
    }

    pub fn with_spec(mut self, spec: Value) -> TestBundle {
        self.annotate("lifecycle-shim/spec", &spec.to_string());
        self
    }

    pub fn annotate(&mut self, key: &str, value: &str) {
        if self.config["annotations"].is_null() {
            self.config["annotations"] = json!({});
        }
        self.config["annotations"][key] = json!(value);
        self.save();
    }

    /// Writes an executable file into the rootfs, e.g. a CGI script for busybox httpd.
    pub fn add_script(&self, path: &str, body: &str) {
        write_executable(&self.rootfs(), path, body);
    }

    pub fn save(&self) {
        fs::write(
            self.path().join("config.json"),
            serde_json::to_vec_pretty(&self.config).unwrap(),
        )
        .unwrap();
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("bundle")
    }

    pub fn rootfs(&self) -> PathBuf {
        self.path().join("rootfs")
    }

    pub fn runc_root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// The shim's `LIFECYCLE_SHIM_STATE` for this bundle (health status files).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// `lifecycle-shim status` of this bundle's container: its output, if it has a status.
    pub fn status(&self) -> Option<String> {
        let out = Command::new(SHIM)
            .env("LIFECYCLE_SHIM_STATE", self.state_dir())
            .args(["status", &self.id])
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn marker(&self, name: &str) -> PathBuf {
        self.dir.path().join("markers").join(name)
    }

    /// Lines of a marker file, empty if it does not exist.
    pub fn lines(&self, name: &str) -> Vec<String> {
        read_lines(&self.marker(name))
    }

    /// Starts `lifecycle-shim run` on this bundle, with a private runc root.
    pub fn spawn(&self, extra: &[&str]) -> Shim {
        let stderr = self.dir.path().join("shim.stderr");
        let stdout = self.dir.path().join("shim.stdout");
        let child = Command::new(SHIM)
            .env("LIFECYCLE_SHIM_STATE", self.state_dir())
            .arg("run")
            .arg("--root")
            .arg(self.runc_root())
            .args(["--id", &self.id])
            .args(extra)
            .arg(self.path())
            .stdin(Stdio::null())
            .stdout(fs::File::create(&stdout).unwrap())
            .stderr(fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        Shim {
            child,
            stderr,
            stdout,
            started: Instant::now(),
        }
    }

    /// Runs the shim to completion.
    pub fn run(&self) -> Finished {
        self.spawn(&[]).wait()
    }

    /// Nothing of the container is left: no runc container under its root, and no process
    /// whose root directory is the bundle's rootfs.
    pub fn assert_clean(&self) {
        let out = Command::new("runc")
            .arg("--root")
            .arg(self.runc_root())
            .args(["list", "-q"])
            .output()
            .unwrap();
        let list = String::from_utf8_lossy(&out.stdout);
        assert!(
            list.trim().is_empty(),
            "runc containers left behind: {list}"
        );
        let leftovers = processes_rooted_at(&self.rootfs());
        assert!(
            leftovers.is_empty(),
            "processes left in the container: {leftovers:?}"
        );
    }
}

/// A test that failed half-way must not leave its container running (and polling a marker
/// directory that is gone): whatever runc still has under the bundle's root is deleted.
impl Drop for TestBundle {
    fn drop(&mut self) {
        let runc = |args: &[&str]| {
            Command::new("runc")
                .arg("--root")
                .arg(self.runc_root())
                .args(args)
                .stderr(Stdio::null())
                .output()
        };
        if let Ok(out) = runc(&["list", "-q"]) {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = runc(&["delete", "--force", id]);
            }
        }
    }
}

/// Copies busybox and links its applets, skipping `busybox` itself so the link does not
/// overwrite the binary.
pub fn make_busybox_rootfs(rootfs: &Path) {
    let bin = rootfs.join("bin");
    fs::create_dir_all(&bin).unwrap();
    for dir in ["proc", "dev", "sys", "tmp", "etc", "www/cgi-bin"] {
        fs::create_dir_all(rootfs.join(dir)).unwrap();
    }
    fs::copy(BUSYBOX, bin.join("busybox")).unwrap();
    let list = Command::new(BUSYBOX).arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            symlink("busybox", bin.join(applet)).unwrap();
        }
    }
    fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n").unwrap();
}

pub fn processes_rooted_at(rootfs: &Path) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    // By identity, not by name: after pivot_root, /proc/PID/root reads as "/".
    let Ok(root) = fs::metadata(rootfs) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let same = fs::metadata(entry.path().join("root"))
            .is_ok_and(|r| (r.dev(), r.ino()) == (root.dev(), root.ino()));
        if same {
            let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
            found.push(format!(
                "{name}: {}",
                String::from_utf8_lossy(&cmdline).replace('\0', " ")
            ));
        }
    }
    found
}

pub struct Shim {
    pub child: Child,
    stderr: PathBuf,
    stdout: PathBuf,
    pub started: Instant,
}

/// How long any test waits for anything before failing: generous, since a slow machine must
/// not fail a correct shim, and a hang must still end.
pub const PATIENCE: Duration = Duration::from_secs(60);

impl Shim {
    /// What the shim wrote to stderr so far (its log, under `run`).
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }

    pub fn wait(mut self) -> Finished {
        let stderr = self.stderr.clone();
        let status = wait_child(&mut self.child, || {
            format!(
                "the shim did not finish within {PATIENCE:?}; stderr:\n{}",
                fs::read_to_string(&stderr).unwrap_or_default()
            )
        });
        Finished {
            status,
            elapsed: self.started.elapsed(),
            stderr: fs::read_to_string(&self.stderr).unwrap_or_default(),
            stdout: fs::read_to_string(&self.stdout).unwrap_or_default(),
        }
    }
}

pub struct Finished {
    pub status: ExitStatus,
    pub elapsed: Duration,
    pub stderr: String,
    pub stdout: String,
}

impl Finished {
    pub fn code(&self) -> i32 {
        self.status.code().expect("the shim was killed by a signal")
    }

    #[track_caller]
    pub fn assert_code(&self, code: i32) {
        assert_eq!(self.status.code(), Some(code), "stderr:\n{}", self.stderr);
    }

    #[track_caller]
    pub fn assert_stderr_has(&self, text: &str) {
        assert!(
            self.stderr.contains(text),
            "stderr lacks {text:?}:\n{}",
            self.stderr
        );
    }
}

/// Waits until `path` exists and holds a line equal to `line` (any line if `None`); returns
/// when it was seen.
#[track_caller]
pub fn wait_for_line(path: &Path, line: Option<&str>) -> Instant {
    wait_until(&format!("{path:?} holds {line:?}"), || {
        fs::read_to_string(path)
            .is_ok_and(|text| line.map_or(!text.is_empty(), |l| text.lines().any(|x| x == l)))
    });
    Instant::now()
}

/// Waits for `child` to exit; after [`PATIENCE`] kills it and fails with `why()`.
#[track_caller]
pub fn wait_child(child: &mut Child, why: impl FnOnce() -> String) -> ExitStatus {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{}", why());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Polls `condition` until it holds, failing after [`PATIENCE`].
#[track_caller]
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Processes whose command line is exactly `args`.
pub fn processes_with_args(args: &[&str]) -> Vec<String> {
    let wanted: Vec<u8> = args
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c == wanted))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Children of `pid` that have exited and not been reaped.
pub fn zombie_children(pid: i32) -> Vec<String> {
    let mut zombies = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some((name, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.first() == Some(&"Z") && fields.get(1) == Some(&pid.to_string().as_str()) {
            zombies.push(format!("{}{name})", entry.file_name().to_string_lossy()));
        }
    }
    zombies
}

/// A TCP port nobody listens on right now, for a test's server on a shared loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Host pid of a container's init process, from `runc state`.
pub fn container_pid(bundle: &TestBundle) -> i32 {
    let out = Command::new("runc")
        .arg("--root")
        .arg(bundle.runc_root())
        .args(["state", &bundle.id])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "runc state: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let state: Value = serde_json::from_slice(&out.stdout).unwrap();
    state["pid"].as_i64().unwrap() as i32
}

/// Serves one HTTPS request with a self-signed certificate on 127.0.0.1:`port`, inside the
/// network namespace of process `netns_of` if given (a container's loopback, unreachable from
/// the host), else on the host's. Before answering 200 it appends `marker` to the file
/// `order`. Returns once listening; the handle yields the request head.
pub fn https_server(
    netns_of: Option<i32>,
    port: u16,
    marker: &str,
    order: PathBuf,
) -> std::thread::JoinHandle<String> {
    use std::io::{Read, Write};
    let marker = marker.to_owned();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        if let Some(pid) = netns_of {
            let ns = fs::File::open(format!("/proc/{pid}/ns/net")).unwrap();
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        }
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        ready_tx.send(()).unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
        let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
        let (tcp, _) = listener.accept().unwrap();
        let conn = rustls::ServerConnection::new(std::sync::Arc::new(config)).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            tls.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        let mut file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(order)
            .unwrap();
        writeln!(file, "{marker}").unwrap();
        tls.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            .unwrap();
        tls.conn.send_close_notify();
        let _ = tls.flush();
        String::from_utf8_lossy(&head).into_owned()
    });
    ready_rx
        .recv()
        .expect("the HTTPS server thread failed before listening");
    handle
}

/// The sidecar scenario the `run` and containerd suites share: entrypoint and sidecars record
/// their stops in /markers/order.
pub mod sidecars {
    use serde_json::json;

    /// A sidecar that crashes on its first run and then serves HTTP on the container's loopback.
    pub const PROXY_SIDECAR: &str = "echo start >> /markers/proxy
    [ -e /markers/proxy-crashed ] || { touch /markers/proxy-crashed; exit 3; }
    trap 'echo proxy-stop >> /markers/order; exit 0' TERM
    mkdir -p /www && echo proxied > /www/index.html
    httpd -f -p 127.0.0.1:8080 -h /www &
    while :; do sleep 1000 & wait $!; done";

    /// A sidecar that records its stop; /markers/logger-up says its trap is set.
    pub const LOGGER_SIDECAR: &str =
        "trap 'echo logger-stop >> /markers/order; exit 0' TERM; echo up > /markers/logger-up; while :; do sleep 1000 & wait $!; done";

    /// Waits until the logger sidecar is ready for its stop signal.
    pub const AWAIT_LOGGER: &str = "until [ -e /markers/logger-up ]; do sleep 0.05; done";

    /// An entrypoint that is up once it fetched a page from the proxy sidecar.
    pub const PROXY_CLIENT: &str = "trap 'echo main-stop >> /markers/order; exit 0' TERM
    until wget -q -O /markers/fetched http://127.0.0.1:8080/index.html; do sleep 0.1; done
    echo up > /markers/up
    while :; do sleep 1000 & wait $!; done";

    pub fn sidecars_spec() -> serde_json::Value {
        json!({"initContainers": [
            {"name": "proxy", "command": ["sh", "-c", PROXY_SIDECAR], "restartPolicy": "Always"},
            {"name": "logger", "command": ["sh", "-c", LOGGER_SIDECAR], "restartPolicy": "Always"}
        ]})
    }
}
