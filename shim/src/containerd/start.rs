//! The `start` action: containerd runs the binary with `start`; it launches the long-running
//! shim that serves the task API, and prints where that shim listens. What containerd writes on
//! stdin, and the answer it expects, changed over its releases (containerd's
//! `runtime/v2/shim/util.go` in 1.6 and 1.7, `pkg/shim/util.go` in 2.x):
//!
//! - 1.6 to 2.2: stdin holds a protobuf `Any` with the runtime options, or nothing; the answer is
//!   the socket's address as text.
//! - 2.3 and later: stdin holds `containerd.runtime.bootstrap.v1.BootstrapParams` (options in its
//!   extensions); the answer is a `BootstrapResult`.
//!
//! Either way the shim serves the task v2 API over ttrpc, which every version accepts. A start
//! that fails leaves no shim process and no socket behind.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::Message;
use containerd_shim::Flags;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

use super::options::RuntimeOptions;
use super::BINARY_NAME;

/// How long the new shim may take to listen before the start is given up.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Where shim sockets go unless containerd 2.3+ says otherwise.
const DEFAULT_SOCKET_DIR: &str = "/run/containerd/s";
/// The task API version this shim serves (`containerd.task.v2.Task`).
const TASK_API_VERSION: i32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("start: stdin holds neither containerd's BootstrapParams nor a protobuf Any ({0})")]
    Input(String),
    #[error("start: {what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("start: the shim did not listen within {READY_TIMEOUT:?}")]
    NotReady,
    #[error("start: the shim exited before it listened ({0})")]
    Exited(std::process::ExitStatus),
    #[error("start: {what}: {message}")]
    Shim { what: &'static str, message: String },
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> StartError {
    move |source| StartError::Io { what, source }
}

/// containerd 2.3's `BootstrapParams` (`api/runtime/bootstrap/v1/bootstrap.proto`), the fields
/// the shim uses.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BootstrapParams {
    #[prost(string, tag = "1")]
    pub instance_id: String,
    #[prost(string, tag = "2")]
    pub namespace: String,
    #[prost(string, tag = "5")]
    pub containerd_ttrpc_address: String,
    #[prost(message, repeated, tag = "8")]
    pub extensions: Vec<Extension>,
    #[prost(string, optional, tag = "9")]
    pub socket_dir: Option<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Extension {
    #[prost(message, optional, tag = "1")]
    pub value: Option<WireAny>,
}

/// `google.protobuf.Any`, as prost reads it inside a `BootstrapParams`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WireAny {
    #[prost(string, tag = "1")]
    pub type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// containerd 2.3's answer to a bootstrap (`BootstrapResult`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct BootstrapResult {
    #[prost(int32, tag = "1")]
    pub version: i32,
    #[prost(string, tag = "2")]
    pub address: String,
    #[prost(string, tag = "3")]
    pub protocol: String,
}

/// What containerd wrote on the start action's stdin.
#[derive(Debug, PartialEq)]
pub enum StartInput {
    /// 1.6 to 2.2: the runtime options, if any.
    Legacy(Option<Any>),
    /// 2.3 and later.
    Bootstrap {
        options: Option<Any>,
        socket_dir: Option<String>,
        ttrpc_address: String,
    },
}

impl StartInput {
    /// Tells the formats apart. Either can decode as the other, so a `BootstrapParams` counts
    /// only when it names this very task, as containerd's own shim library checks.
    pub fn parse(bytes: &[u8], flags: &Flags) -> Result<StartInput, StartError> {
        if bytes.is_empty() {
            return Ok(StartInput::Legacy(None));
        }
        if let Ok(params) = <BootstrapParams as prost::Message>::decode(bytes) {
            if params.instance_id == flags.id && params.namespace == flags.namespace {
                let options = params
                    .extensions
                    .into_iter()
                    .filter_map(|e| e.value)
                    .map(|v| Any {
                        type_url: v.type_url,
                        value: v.value,
                        ..Default::default()
                    })
                    .next();
                return Ok(StartInput::Bootstrap {
                    options,
                    socket_dir: params.socket_dir.filter(|d| !d.is_empty()),
                    ttrpc_address: params.containerd_ttrpc_address,
                });
            }
        }
        Any::parse_from_bytes(bytes)
            .map(|any| StartInput::Legacy(Some(any)))
            .map_err(|e| StartError::Input(e.to_string()))
    }

    fn options(&self) -> Option<&Any> {
        match self {
            StartInput::Legacy(options) | StartInput::Bootstrap { options, .. } => options.as_ref(),
        }
    }

    /// The socket the shim serves: the Go shim's name (a hash of containerd's address, the
    /// namespace and the group) in the directory containerd asks for.
    pub fn socket(&self, flags: &Flags, group: &str) -> String {
        let address = containerd_shim::socket_address(&flags.address, &flags.namespace, group);
        let dir = match self {
            StartInput::Bootstrap {
                socket_dir: Some(dir),
                ..
            } => dir.as_str(),
            _ => DEFAULT_SOCKET_DIR,
        };
        let hash = address.rsplit('/').next().unwrap_or_default();
        format!("unix://{}/{hash}", dir.trim_end_matches('/'))
    }

    /// The answer containerd expects on stdout.
    pub fn reply(&self, address: &str) -> Vec<u8> {
        match self {
            StartInput::Legacy(_) => address.as_bytes().to_vec(),
            StartInput::Bootstrap { .. } => prost::Message::encode_to_vec(&BootstrapResult {
                version: TASK_API_VERSION,
                address: address.to_owned(),
                protocol: "ttrpc".to_owned(),
            }),
        }
    }
}

/// Runs the start action and returns what to print.
pub async fn start(flags: &Flags) -> Result<Vec<u8>, StartError> {
    let mut bytes = Vec::new();
    tokio::io::stdin()
        .read_to_end(&mut bytes)
        .await
        .map_err(io("reading stdin"))?;
    let input = StartInput::parse(&bytes, flags)?;
    // Only ShimCgroup matters here; Create gets the same options and refuses bad ones by name.
    let options = RuntimeOptions::from_any(input.options()).unwrap_or_default();
    let address = input.socket(flags, &group(flags)?);
    // A shim already serves this task's group (or this task, asked again): its address is the
    // answer, as runc's shim answers; its socket must not be touched.
    if answers(&address) {
        std::fs::write("address", &address).map_err(io("writing the bundle's address file"))?;
        return Ok(input.reply(&address));
    }
    let mut child = spawn(flags, &input, &address)?;
    match finish(&mut child, &address, &options).await {
        Ok(()) => Ok(input.reply(&address)),
        Err(error) => {
            let _ = child.kill().await;
            remove_socket(&address);
            let _ = std::fs::remove_file("address");
            Err(error)
        }
    }
}

/// The annotations that group containers into one shim, as runc's shim reads them: a pod's
/// containers share their sandbox's shim (the sandbox groups under its own id).
const GROUP_ANNOTATIONS: [&str; 2] = [
    "io.containerd.runc.v2.group",
    "io.kubernetes.cri.sandbox-id",
];

/// The group of the task in the bundle (the working directory): its first group annotation,
/// or its own id.
fn group(flags: &Flags) -> Result<String, StartError> {
    let config = match std::fs::read("config.json") {
        Ok(config) => config,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(flags.id.clone()),
        Err(error) => return Err(io("reading the bundle's config.json")(error)),
    };
    let config: serde_json::Value = serde_json::from_slice(&config)
        .map_err(|e| io("reading the bundle's config.json")(std::io::Error::other(e)))?;
    let annotations = &config["annotations"];
    Ok(GROUP_ANNOTATIONS
        .iter()
        .find_map(|key| annotations[key].as_str())
        .filter(|group| !group.is_empty())
        .unwrap_or(&flags.id)
        .to_owned())
}

/// Launches the serving shim under the name containerd ran (`containerd-shim-lifecycle-v2`,
/// which `ps` and `pgrep containerd-shim` show), in its own process group, in the bundle.
fn spawn(flags: &Flags, input: &StartInput, address: &str) -> Result<Child, StartError> {
    let (program, arg0) = invoked_program().map_err(io("finding the shim's binary"))?;
    let mut command = Command::new(program);
    command
        .arg0(arg0)
        .args(["-namespace", &flags.namespace, "-id", &flags.id])
        .args(["-address", &flags.address, "-socket", address])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(false);
    if flags.debug {
        command.arg("-debug");
    }
    if let StartInput::Bootstrap { ttrpc_address, .. } = input {
        if !ttrpc_address.is_empty() {
            command.env("TTRPC_ADDRESS", ttrpc_address);
        }
    }
    command.spawn().map_err(io("spawning the shim"))
}

/// The path and name containerd ran this binary as; the executable itself if that path does
/// not lead back to it.
fn invoked_program() -> std::io::Result<(PathBuf, OsString)> {
    let exe = std::env::current_exe()?;
    let arg0 = std::env::args_os()
        .next()
        .unwrap_or_else(|| BINARY_NAME.into());
    let invoked = Path::new(&arg0);
    let same = invoked.is_absolute()
        && std::fs::canonicalize(invoked).ok() == std::fs::canonicalize(&exe).ok();
    Ok((if same { invoked.to_owned() } else { exe }, arg0))
}

/// Waits until the shim listens (it closes its stdout then), secures its socket, moves it into
/// the options' `ShimCgroup`, sets its OOM score as runc's shim does, and records the address in
/// the bundle (how containerd 1.6 and 1.7 find the shim after a restart).
async fn finish(
    child: &mut Child,
    address: &str,
    options: &RuntimeOptions,
) -> Result<(), StartError> {
    let mut stdout = child.stdout.take().ok_or(StartError::NotReady)?;
    let mut sink = Vec::new();
    tokio::time::timeout(READY_TIMEOUT, stdout.read_to_end(&mut sink))
        .await
        .map_err(|_| StartError::NotReady)?
        .map_err(io("waiting for the shim to listen"))?;
    if let Some(status) = child.try_wait().map_err(io("checking on the shim"))? {
        return Err(StartError::Exited(status));
    }
    let pid = child.id().ok_or(StartError::NotReady)?;
    // Whoever can connect controls the container: root's alone, whatever the umask.
    let socket = address.trim_start_matches("unix://");
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
        .map_err(io("securing the shim's socket"))?;
    if !options.shim_cgroup.is_empty() {
        containerd_shim::cgroup::add_task_to_cgroup(&options.shim_cgroup, pid).map_err(|e| {
            StartError::Shim {
                what: "moving the shim into ShimCgroup",
                message: e.to_string(),
            }
        })?;
    }
    containerd_shim::cgroup::adjust_oom_score(pid).map_err(|e| StartError::Shim {
        what: "setting the shim's OOM score",
        message: e.to_string(),
    })?;
    std::fs::write("address", address).map_err(io("writing the bundle's address file"))
}

/// Whether a shim serves at `address` (`unix://...`).
pub fn answers(address: &str) -> bool {
    std::os::unix::net::UnixStream::connect(address.trim_start_matches("unix://")).is_ok()
}

pub fn remove_socket(address: &str) {
    let path = address.trim_start_matches("unix://");
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => tracing::warn!(%error, socket = path, "could not remove the shim's socket"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(namespace: &str, id: &str) -> Flags {
        Flags {
            namespace: namespace.into(),
            id: id.into(),
            address: "/run/containerd/containerd.sock".into(),
            ..Flags::default()
        }
    }

    fn options_any() -> Any {
        Any {
            type_url: "runtimeoptions.v1.Options".into(),
            value: b"\x12\x0c/etc/opts.tm".to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn nothing_on_stdin_is_the_legacy_start_without_options() {
        let flags = flags("default", "c1");
        let input = StartInput::parse(b"", &flags).unwrap();
        assert_eq!(input, StartInput::Legacy(None));
        let address = input.socket(&flags, &flags.id);
        assert!(
            address.starts_with("unix:///run/containerd/s/"),
            "{address}"
        );
        assert_eq!(input.reply(&address), address.as_bytes());
    }

    #[test]
    fn an_any_is_the_legacy_start_with_options() {
        let flags = flags("k8s.io", "c1");
        let any = options_any();
        let input = StartInput::parse(&any.write_to_bytes().unwrap(), &flags).unwrap();
        assert_eq!(input, StartInput::Legacy(Some(any)));
    }

    #[test]
    fn bootstrap_params_naming_the_task_are_containerd_2_3() {
        for namespace in [
            "default",
            "k8s.io",
            "a",
            "team-namespace-with-a-long-name-0123456789",
        ] {
            let flags = flags(namespace, "0123abcd");
            let params = BootstrapParams {
                instance_id: "0123abcd".into(),
                namespace: namespace.into(),
                containerd_ttrpc_address: "/run/c.sock.ttrpc".into(),
                extensions: vec![Extension {
                    value: Some(WireAny {
                        type_url: "runtimeoptions.v1.Options".into(),
                        value: options_any().value,
                    }),
                }],
                socket_dir: Some("/run/other/s".into()),
            };
            let input = StartInput::parse(&prost::Message::encode_to_vec(&params), &flags).unwrap();
            let StartInput::Bootstrap { options, .. } = &input else {
                panic!("{namespace}: {input:?}");
            };
            assert_eq!(options.as_ref(), Some(&options_any()));
            let address = input.socket(&flags, &flags.id);
            assert!(address.starts_with("unix:///run/other/s/"), "{address}");
            let reply: BootstrapResult =
                prost::Message::decode(input.reply(&address).as_slice()).unwrap();
            assert_eq!((reply.version, reply.protocol.as_str()), (2, "ttrpc"));
            assert_eq!(reply.address, address);
        }
    }

    #[test]
    fn bootstrap_params_for_another_task_are_not_taken_as_such() {
        let flags = flags("default", "c1");
        let params = BootstrapParams {
            instance_id: "c2".into(),
            namespace: "default".into(),
            ..Default::default()
        };
        let input = StartInput::parse(&prost::Message::encode_to_vec(&params), &flags).unwrap();
        assert!(matches!(input, StartInput::Legacy(_)), "{input:?}");
        assert!(StartInput::parse(b"\xff\xff\xff", &flags).is_err());
    }
}
