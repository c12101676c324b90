//! The `start` and `delete` actions and `-info`, run exactly as each containerd release runs
//! them: the same flags, environment, working directory and stdin bytes. Taken from
//! containerd's source at each tag:
//!
//! - v1.6.20, `runtime/v2/shim/util.go` `Command()`: `-namespace NS -address A -publish-binary
//!   P -id ID [-debug] start`, env `GOMAXPROCS=2 TTRPC_ADDRESS=...`, stdin the runtime options
//!   as a marshalled `google.protobuf.Any`, or nothing; the reply is read as an address
//!   (`runtime/v2/binary.go`).
//! - v1.7.34 (`runtime/v2/shim/util.go`) and v2.2.7 (`pkg/shim/util.go`): the same, with
//!   `MAX_SHIM_VERSION=2 GRPC_ADDRESS=... NAMESPACE=...` added.
//! - v2.3.4, `pkg/shim/util.go`: stdin is a `BootstrapParams`
//!   (`api/runtime/bootstrap/v1/bootstrap.proto`: instance_id 1, namespace 2, log_level 3,
//!   containerd_version 4, containerd_ttrpc_address 5, containerd_grpc_address 6,
//!   containerd_binary 7, extensions 8 (each `{ Any value = 1 }`), socket_dir 9); the reply is
//!   tried as a `BootstrapResult` (version 1, address 2, protocol 3) first
//!   (`core/runtime/v2/shim.go` `parseStartResponse`).
//! - `-info` (v2.2.7 and v2.3.4, `core/runtime/v2/task_manager.go` `getRuntimeInfo`): argv
//!   `[shim, "-info"]`, stdin the options `Any` or nothing, stdout a `containerd.types.RuntimeInfo`
//!   (`api/types/introspection.proto`: name 1, version 2, options 3, features 4).
//!
//! The messages are encoded and decoded here by hand from those definitions, independently
//! of the shim's own types. A real containerd answers the shim's event connection.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use containerd_shim::protos::shim_async::TaskClient;
use containerd_shim::protos::ttrpc::context;
use containerd_shim::protos::ttrpc::r#async::Client;

use crate::containerd::Containerd;
use crate::recorder::Recorder;
use crate::support::{wait_until, SHIM};
use crate::{ready, Env};

/// The shim as containerd finds it: a link named `containerd-shim-lifecycle-v2`.
fn shim_link(dir: &Path) -> std::path::PathBuf {
    let link = dir.join("containerd-shim-lifecycle-v2");
    if !link.exists() {
        std::os::unix::fs::symlink(SHIM, &link).unwrap();
    }
    link
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Release {
    V1_6,
    V1_7,
    V2_2,
    V2_3,
}

const RELEASES: [Release; 4] = [Release::V1_6, Release::V1_7, Release::V2_2, Release::V2_3];

fn varint(mut value: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// A length-delimited protobuf field.
fn field(number: u64, bytes: &[u8]) -> Vec<u8> {
    [
        varint(number << 3 | 2),
        varint(bytes.len() as u64),
        bytes.to_vec(),
    ]
    .concat()
}

fn any(type_url: &str, value: &[u8]) -> Vec<u8> {
    [field(1, type_url.as_bytes()), field(2, value)].concat()
}

/// `containerd.runc.v1.Options` with `shim_cgroup` (3) and `binary_name` (6).
fn runc_options(shim_cgroup: &str, binary_name: &str) -> Vec<u8> {
    let mut value = Vec::new();
    if !shim_cgroup.is_empty() {
        value.extend(field(3, shim_cgroup.as_bytes()));
    }
    if !binary_name.is_empty() {
        value.extend(field(6, binary_name.as_bytes()));
    }
    any("containerd.runc.v1.Options", &value)
}

/// A message's fields: (number, length-delimited bytes or a varint's value as bytes).
fn decode(mut bytes: &[u8]) -> Vec<(u64, Vec<u8>)> {
    fn read_varint(bytes: &mut &[u8]) -> u64 {
        let mut value = 0;
        for shift in (0..64).step_by(7) {
            let byte = bytes[0];
            *bytes = &bytes[1..];
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                break;
            }
        }
        value
    }
    let mut fields = Vec::new();
    while !bytes.is_empty() {
        let key = read_varint(&mut bytes);
        match key & 7 {
            0 => fields.push((key >> 3, read_varint(&mut bytes).to_le_bytes().to_vec())),
            2 => {
                let len = read_varint(&mut bytes) as usize;
                fields.push((key >> 3, bytes[..len].to_vec()));
                bytes = &bytes[len..];
            }
            wire => panic!("unexpected wire type {wire}"),
        }
    }
    fields
}

fn string_field(fields: &[(u64, Vec<u8>)], number: u64) -> String {
    fields
        .iter()
        .find(|(n, _)| *n == number)
        .map(|(_, v)| String::from_utf8(v.clone()).unwrap())
        .unwrap_or_default()
}

/// One start of the shim as `release` runs it, with its bundle and the options `Any`.
struct Start<'a> {
    containerd: &'a Containerd,
    link: std::path::PathBuf,
    bundle: std::path::PathBuf,
    namespace: &'a str,
    id: String,
}

impl<'a> Start<'a> {
    /// A start of a new task, with its own bundle directory under `dir`.
    fn new(containerd: &'a Containerd, dir: &Path, namespace: &'a str) -> Start<'a> {
        let id = unique_id();
        let bundle = dir.join(&id);
        std::fs::create_dir(&bundle).unwrap();
        Start {
            containerd,
            link: shim_link(dir),
            bundle,
            namespace,
            id,
        }
    }

    fn command(&self, release: Release) -> Command {
        let mut command = Command::new(&self.link);
        command
            .current_dir(&self.bundle)
            .args(["-namespace", self.namespace, "-address"])
            .arg(self.containerd.address())
            .args(["-publish-binary", "/usr/bin/containerd", "-id", &self.id])
            .env("GOMAXPROCS", "2")
            .env("TTRPC_ADDRESS", self.ttrpc_address());
        if release != Release::V1_6 {
            command
                .env("MAX_SHIM_VERSION", "2")
                .env("GRPC_ADDRESS", self.containerd.address())
                .env("NAMESPACE", self.namespace);
        }
        command
    }

    fn ttrpc_address(&self) -> String {
        format!("{}.ttrpc", self.containerd.address().display())
    }

    /// The stdin bytes `release` writes for the options `Any` (or none).
    fn stdin(&self, release: Release, options: Option<&[u8]>) -> Vec<u8> {
        if release != Release::V2_3 {
            return options.map(<[u8]>::to_vec).unwrap_or_default();
        }
        let address = self.containerd.address().display().to_string();
        let mut params = [
            field(1, self.id.as_bytes()),
            field(2, self.namespace.as_bytes()),
            // log_level 3: debug (-4), a negative enum takes ten bytes.
            [varint(3 << 3), varint(-4i64 as u64)].concat(),
            field(4, b"v2.3.4"),
            field(5, self.ttrpc_address().as_bytes()),
            field(6, address.as_bytes()),
            field(7, b"/usr/bin/containerd"),
        ]
        .concat();
        if let Some(options) = options {
            params.extend(field(8, &field(1, options)));
        }
        params.extend(field(9, b"/run/containerd/s"));
        params
    }

    fn run(&self, release: Release, options: Option<&[u8]>) -> Output {
        let mut command = self.command(release);
        command.arg("start");
        run_with_stdin(command, &self.stdin(release, options))
    }

    /// The address in the reply, read as `release` reads it.
    fn address(&self, release: Release, reply: &[u8]) -> String {
        if release == Release::V2_3 {
            let fields = decode(reply);
            let version = fields.iter().find(|(n, _)| *n == 1).map(|(_, v)| v[0]);
            assert_eq!(version, Some(2), "BootstrapResult.version");
            assert_eq!(string_field(&fields, 3), "ttrpc");
            return string_field(&fields, 2);
        }
        String::from_utf8(reply.to_vec()).unwrap().trim().to_owned()
    }

    fn delete(&self, release: Release) -> Output {
        let mut command = self.command(release);
        command.arg("-bundle").arg(&self.bundle).arg("delete");
        run_with_stdin(command, b"")
    }

    /// Processes started for this id (the serving shim).
    fn processes(&self) -> Vec<String> {
        crate::containerd::shim_processes(self.namespace)
            .into_iter()
            .filter(|p| p.contains(&format!("-id {} ", self.id)))
            .collect()
    }
}

fn run_with_stdin(mut command: Command, stdin: &[u8]) -> Output {
    use std::io::Write;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn unique_id() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "start-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Connects to the shim and asks for its pid (a task API call); then shuts it down. Returns
/// the shim's name as `ps` showed it meanwhile.
fn connect_and_shut_down(address: &str, id: &str) -> String {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = TaskClient::new(Client::connect(address).await.unwrap());
        let request = containerd_shim::api::ConnectRequest {
            id: id.to_owned(),
            ..Default::default()
        };
        let reply = client
            .connect(context::with_timeout(10_000_000_000), &request)
            .await
            .expect("the Connect call");
        let comm = std::fs::read_to_string(format!("/proc/{}/comm", reply.shim_pid)).unwrap();
        let shutdown = containerd_shim::api::ShutdownRequest {
            id: id.to_owned(),
            ..Default::default()
        };
        let _ = client
            .shutdown(context::with_timeout(10_000_000_000), &shutdown)
            .await;
        comm
    })
}

#[test]
fn every_release_starts_serves_and_deletes_the_shim() {
    if !ready() {
        return;
    }
    let containerd = Containerd::start();
    let dir = tempfile::tempdir().unwrap();
    let options = runc_options("", "");
    for release in RELEASES {
        for namespace in ["default", "k8s.io", "team-a"] {
            for stdin in [None, Some(options.as_slice())] {
                let start = Start::new(&containerd, dir.path(), namespace);
                let what = format!("{release:?} {namespace} options: {}", stdin.is_some());
                let out = start.run(release, stdin);
                assert!(
                    out.status.success() && out.stderr.is_empty(),
                    "{what}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let address = start.address(release, &out.stdout);
                assert!(
                    address.starts_with("unix:///run/containerd/s/"),
                    "{what}: {address:?}"
                );
                let recorded = std::fs::read_to_string(start.bundle.join("address")).unwrap();
                assert_eq!(recorded, address, "{what}: the bundle's address file");
                let comm = connect_and_shut_down(&address, &start.id);
                assert_eq!(comm.trim(), "containerd-shim", "{what}");
                let deleted = start.delete(release);
                assert!(
                    deleted.status.success(),
                    "{what}: delete: {}",
                    String::from_utf8_lossy(&deleted.stderr)
                );
                // DeleteResponse: exit_status (2) is 137, as runc's shim reports a lost task.
                let fields = decode(&deleted.stdout);
                let status = fields.iter().find(|(n, _)| *n == 2).map(|(_, v)| v[0]);
                assert_eq!(status, Some(137), "{what}: {fields:?}");
                wait_until(&format!("{what}: the shim has exited"), || {
                    start.processes().is_empty()
                });
                let socket = address.trim_start_matches("unix://");
                assert!(!Path::new(socket).exists(), "{what}: {socket} left");
                // The delete action's runc made the namespace's (empty) root: leave none behind.
                let _ = std::fs::remove_dir(Path::new("/run/containerd/lifecycle").join(namespace));
            }
        }
    }
}

/// A start that fails after the shim was spawned (here: `ShimCgroup` names no cgroup) kills
/// it and removes its socket, under every release's protocol.
#[test]
fn a_failed_start_leaves_no_process_and_no_socket() {
    if !ready() {
        return;
    }
    let containerd = Containerd::start();
    let dir = tempfile::tempdir().unwrap();
    let options = runc_options(&format!("/lcs-no-such-cgroup-{}", std::process::id()), "");
    for release in RELEASES {
        let start = Start::new(&containerd, dir.path(), "default");
        let out = start.run(release, Some(&options));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{release:?}: the start succeeded");
        assert!(stderr.contains("ShimCgroup"), "{release:?}: {stderr}");
        assert!(
            start.processes().is_empty(),
            "{release:?}: {:?}",
            start.processes()
        );
        let socket = containerd_shim::socket_address(
            &containerd.address().display().to_string(),
            "default",
            &start.id,
        );
        let socket = socket.trim_start_matches("unix://");
        assert!(!Path::new(socket).exists(), "{release:?}: {socket} left");
        assert!(!start.bundle.join("address").exists());
    }
}

/// `-info` answers a RuntimeInfo: this runtime's name, and the features of the runc the
/// options name (exactly the type URL containerd decodes them with), the options echoed.
#[test]
fn info_reports_the_runtime_and_the_features_of_its_runc() {
    let Some(env) = Env::new() else { return };
    let link = shim_link(env.dir());
    let recorder = Recorder::new(&env.dir().join("recorder"));
    let info = |stdin: &[u8]| {
        let mut command = Command::new(&link);
        command.arg("-info");
        run_with_stdin(command, stdin)
    };
    let options = runc_options("", &recorder.binary().display().to_string());
    for stdin in [&[][..], &options[..]] {
        let out = info(stdin);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let fields = decode(&out.stdout);
        assert_eq!(string_field(&fields, 1), "io.containerd.lifecycle.v2");
        let version = decode(&fields.iter().find(|(n, _)| *n == 2).unwrap().1);
        assert_eq!(string_field(&version, 1), env!("CARGO_PKG_VERSION"));
        let features = decode(&fields.iter().find(|(n, _)| *n == 4).expect("features").1);
        assert_eq!(
            string_field(&features, 1),
            "types.containerd.io/opencontainers/runtime-spec/1/features/Features"
        );
        let json: serde_json::Value = serde_json::from_str(&string_field(&features, 2)).unwrap();
        assert!(
            json["linux"].is_object() && json["ociVersionMax"].is_string(),
            "{json}"
        );
        let echoed = fields
            .iter()
            .find(|(n, _)| *n == 3)
            .map(|(_, v)| v.as_slice());
        assert_eq!(echoed, (!stdin.is_empty()).then_some(stdin));
    }
    let calls = recorder.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].args, ["features"]);
    let missing = info(&runc_options("", "/nonexistent/runc"));
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/runc"));
}

/// containerd asking again for a task whose shim serves gets that shim's address, and the
/// shim goes on serving (as runc's shim answers).
#[test]
fn a_second_start_of_a_served_task_answers_with_the_same_shim() {
    if !ready() {
        return;
    }
    let containerd = Containerd::start();
    let dir = tempfile::tempdir().unwrap();
    let start = Start::new(&containerd, dir.path(), "default");
    let first = start.run(Release::V1_6, None);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let address = start.address(Release::V1_6, &first.stdout);
    let processes = start.processes();
    assert_eq!(processes.len(), 1, "{processes:?}");
    for release in RELEASES {
        let again = start.run(release, None);
        assert!(
            again.status.success(),
            "{release:?}: {}",
            String::from_utf8_lossy(&again.stderr)
        );
        assert_eq!(
            start.address(release, &again.stdout),
            address,
            "{release:?}"
        );
        assert_eq!(start.processes(), processes, "{release:?}");
    }
    assert_eq!(
        connect_and_shut_down(&address, &start.id).trim(),
        "containerd-shim"
    );
    assert!(start.delete(Release::V1_6).status.success());
    wait_until("the shim has exited", || start.processes().is_empty());
    assert!(!Path::new(address.trim_start_matches("unix://")).exists());
}
