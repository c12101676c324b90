//! `-info`: containerd 2.x runs `containerd-shim-lifecycle-v2 -info` (the runtime options, a
//! protobuf `Any`, on stdin, or nothing) and decodes a `containerd.types.RuntimeInfo` from
//! stdout. It reads the OCI runtime's features from it, which it needs for user-namespaced pods
//! (idmapped mounts) and recursive read-only mounts; the features are those of the runc the
//! options name, as `runc features` prints them (containerd's `core/runtime/v2/task_manager.go`).

use std::io::Read;
use std::process::{Command, Stdio};

use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{Message, MessageField};
use containerd_shim::protos::types::introspection::{RuntimeInfo, RuntimeVersion};

use super::options::{OptionsError, RuntimeOptions};
use super::RUNTIME_ID;

/// The type containerd registers the OCI runtime features under; the value is their JSON.
pub const FEATURES_TYPE_URL: &str =
    "types.containerd.io/opencontainers/runtime-spec/1/features/Features";

#[derive(Debug, thiserror::Error)]
pub enum InfoError {
    #[error("-info: reading the options on stdin: {0}")]
    Stdin(std::io::Error),
    #[error("-info: the options on stdin are not a protobuf Any: {0}")]
    NotAny(String),
    #[error("-info: {0}")]
    Options(#[from] OptionsError),
    #[error("-info: cannot run the OCI runtime {binary:?}: {source}")]
    Runtime {
        binary: String,
        source: std::io::Error,
    },
    #[error("-info: encoding the answer: {0}")]
    Encode(String),
}

/// The encoded `RuntimeInfo` for the options on stdin.
pub fn info() -> Result<Vec<u8>, InfoError> {
    let mut bytes = Vec::new();
    std::io::stdin()
        .read_to_end(&mut bytes)
        .map_err(InfoError::Stdin)?;
    let given = if bytes.is_empty() {
        None
    } else {
        Some(Any::parse_from_bytes(&bytes).map_err(|e| InfoError::NotAny(e.to_string()))?)
    };
    let options = RuntimeOptions::from_any(given.as_ref())?;
    let binary = options.runc_binary().to_owned();
    let output = Command::new(&binary)
        .arg("features")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map_err(|source| InfoError::Runtime {
            binary: binary.clone(),
            source,
        })?;
    // A runtime without `features` (runc before 1.1) has none to report, as with runc's shim.
    let features = output.status.success().then(|| Any {
        type_url: FEATURES_TYPE_URL.to_owned(),
        value: output.stdout,
        ..Default::default()
    });
    let info = RuntimeInfo {
        name: RUNTIME_ID.to_owned(),
        version: MessageField::some(RuntimeVersion {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            ..Default::default()
        }),
        options: given.into(),
        features: features.into(),
        ..Default::default()
    };
    info.write_to_bytes()
        .map_err(|e| InfoError::Encode(e.to_string()))
}
