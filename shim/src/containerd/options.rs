//! runc's runtime options, taken as `io.containerd.runc.v2` takes them, in every form containerd
//! delivers them: runc's own `containerd.runc.v1.Options` (what `ctr --runc-binary` and most
//! clients send), or the CRI plugin's `runtimeoptions.v1.Options`, which carries the runtime's
//! `[...runtimes.<name>.options]` table as TOML (`ConfigBody`, containerd 1.7 and 2.x) or names a
//! TOML file (`ConfigPath`, every version). They are kept in the bundle, so that the `delete`
//! action, a fresh process after a lost shim, drives the same runc with the same root.

use std::path::{Path, PathBuf};

use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::Message;
use containerd_shim::protos::shim::oci::Options as RuncOptions;
use serde::{Deserialize, Serialize};

use super::stdio::IoOwner;
use crate::os::files::read_at_most;
use crate::os::reaper::Reaper;
use crate::os::runc::{Runc, RuncConfig};

/// Where runc keeps a namespace's containers when `Root` is not set.
pub const DEFAULT_ROOT: &str = "/run/containerd/lifecycle";
/// The file in the bundle that holds the options for the `delete` action.
const SAVED: &str = "options.json";
/// The most of a `ConfigPath` file that is read.
const MAX_CONFIG_BYTES: usize = 64 * 1024;

const RUNC_OPTIONS_TYPE: &str = "containerd.runc.v1.Options";
/// What containerd 1.6 and 1.7's client sends a runtime not named `io.containerd.runc*` for
/// `WithNoPivotRoot`, `WithUIDOwner` and the like (`ctr run --uidmap`).
const CREATE_OPTIONS_TYPE: &str = "containerd.linux.runc.CreateOptions";
const RUNTIME_OPTIONS_TYPE: &str = "runtimeoptions.v1.Options";

#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    #[error("runtime options of type {0:?} are not understood (containerd.runc.v1.Options, runtimeoptions.v1.Options and containerd.linux.runc.CreateOptions are)")]
    UnknownType(String),
    #[error("runtime options of type {type_url}: {message}")]
    Undecodable { type_url: String, message: String },
    #[error("runtime option {0} is not supported by this shim")]
    Unsupported(&'static str),
    #[error("runtime options: unknown field number {0} in containerd.runc.v1.Options")]
    UnknownField(u32),
    #[error("runtime options {origin}: unknown key {key:?} (known: {known})")]
    UnknownKey {
        origin: String,
        key: String,
        known: String,
    },
    #[error("runtime options {origin}: {key} must be {expected}")]
    BadValue {
        origin: String,
        key: &'static str,
        expected: &'static str,
    },
    #[error("runtime options {origin}: {message}")]
    Toml { origin: String, message: String },
    #[error("runtime options file {path:?}: {source}")]
    ConfigPath {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("runtime options saved in {path:?}: {message}")]
    Saved { path: PathBuf, message: String },
}

/// The CRI plugin's message for a runtime that is not runc's (`pkg/runtimeoptions/v1`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct CriRuntimeOptions {
    #[prost(string, tag = "1")]
    pub type_url: String,
    #[prost(string, tag = "2")]
    pub config_path: String,
    #[prost(bytes = "vec", tag = "3")]
    pub config_body: Vec<u8>,
}

/// containerd's `runtime/linux/runctypes` `CreateOptions` (1.6, 1.7).
#[derive(Clone, PartialEq, prost::Message)]
pub struct CreateOptions {
    #[prost(bool, tag = "1")]
    pub no_pivot_root: bool,
    #[prost(bool, tag = "2")]
    pub open_tcp: bool,
    #[prost(bool, tag = "3")]
    pub external_unix_sockets: bool,
    #[prost(bool, tag = "4")]
    pub terminal: bool,
    #[prost(bool, tag = "5")]
    pub file_locks: bool,
    #[prost(string, repeated, tag = "6")]
    pub empty_namespaces: Vec<String>,
    #[prost(string, tag = "7")]
    pub cgroups_mode: String,
    #[prost(bool, tag = "8")]
    pub no_new_keyring: bool,
    #[prost(string, tag = "9")]
    pub shim_cgroup: String,
    #[prost(uint32, tag = "10")]
    pub io_uid: u32,
    #[prost(uint32, tag = "11")]
    pub io_gid: u32,
    #[prost(string, tag = "12")]
    pub criu_work_path: String,
    #[prost(string, tag = "13")]
    pub criu_image_path: String,
}

/// The options this shim honours; everything else is refused when it is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeOptions {
    /// The runc-compatible binary, for every runtime call; `runc` from PATH when empty.
    pub binary_name: String,
    /// runc's root; the namespace is appended, as runc's shim does.
    pub root: String,
    pub systemd_cgroup: bool,
    pub no_pivot_root: bool,
    pub no_new_keyring: bool,
    /// The cgroup the shim itself moves into at start.
    pub shim_cgroup: String,
    /// The owner given to the container's stdio pipes and fifos.
    pub io_uid: u32,
    pub io_gid: u32,
}

/// The TOML keys, as containerd's runc options table spells them. The checkpoint and
/// task-API keys are recognised so that they are refused by name, not as unknown.
const TOML_KEYS: &[&str] = &[
    "BinaryName",
    "Root",
    "SystemdCgroup",
    "NoPivotRoot",
    "NoNewKeyring",
    "ShimCgroup",
    "IoUid",
    "IoGid",
    "CriuPath",
    "CriuImagePath",
    "CriuWorkPath",
    "TaskApiAddress",
    "TaskApiVersion",
    "TypeUrl",
];

impl RuntimeOptions {
    /// The options of a Create request or of a `start` action's input; none gives the defaults.
    pub fn from_any(any: Option<&Any>) -> Result<RuntimeOptions, OptionsError> {
        let Some(any) = any.filter(|a| !a.type_url.is_empty()) else {
            return Ok(RuntimeOptions::default());
        };
        // Clients write the bare name or prefix it (`type.googleapis.com/...`).
        let name = any.type_url.rsplit('/').next().unwrap_or_default();
        let undecodable = |message: String| OptionsError::Undecodable {
            type_url: any.type_url.clone(),
            message,
        };
        match name {
            RUNC_OPTIONS_TYPE => {
                let options = RuncOptions::parse_from_bytes(&any.value)
                    .map_err(|e| undecodable(e.to_string()))?;
                RuntimeOptions::from_runc(&options)
            }
            CREATE_OPTIONS_TYPE => {
                let options = <CreateOptions as prost::Message>::decode(any.value.as_slice())
                    .map_err(|e| undecodable(e.to_string()))?;
                RuntimeOptions::from_create(&options)
            }
            RUNTIME_OPTIONS_TYPE => {
                let options = <CriRuntimeOptions as prost::Message>::decode(any.value.as_slice())
                    .map_err(|e| undecodable(e.to_string()))?;
                RuntimeOptions::from_cri(&options)
            }
            _ => Err(OptionsError::UnknownType(any.type_url.clone())),
        }
    }

    fn from_runc(options: &RuncOptions) -> Result<RuntimeOptions, OptionsError> {
        if let Some(field) = options.special_fields.unknown_fields().iter().next() {
            return Err(OptionsError::UnknownField(field.0));
        }
        for (set, name) in [
            (!options.criu_image_path.is_empty(), "CriuImagePath"),
            (!options.criu_work_path.is_empty(), "CriuWorkPath"),
            (!options.task_api_address.is_empty(), "TaskApiAddress"),
            (options.task_api_version != 0, "TaskApiVersion"),
        ] {
            if set {
                return Err(OptionsError::Unsupported(name));
            }
        }
        Ok(RuntimeOptions {
            binary_name: options.binary_name.clone(),
            root: options.root.clone(),
            systemd_cgroup: options.systemd_cgroup,
            no_pivot_root: options.no_pivot_root,
            no_new_keyring: options.no_new_keyring,
            shim_cgroup: options.shim_cgroup.clone(),
            io_uid: options.io_uid,
            io_gid: options.io_gid,
        })
    }

    fn from_create(options: &CreateOptions) -> Result<RuntimeOptions, OptionsError> {
        // Checkpoint and restore settings: this shim does neither.
        for (set, name) in [
            (options.open_tcp, "OpenTcp"),
            (options.external_unix_sockets, "ExternalUnixSockets"),
            (options.terminal, "Terminal"),
            (options.file_locks, "FileLocks"),
            (!options.empty_namespaces.is_empty(), "EmptyNamespaces"),
            (!options.cgroups_mode.is_empty(), "CgroupsMode"),
            (!options.criu_work_path.is_empty(), "CriuWorkPath"),
            (!options.criu_image_path.is_empty(), "CriuImagePath"),
        ] {
            if set {
                return Err(OptionsError::Unsupported(name));
            }
        }
        Ok(RuntimeOptions {
            no_pivot_root: options.no_pivot_root,
            no_new_keyring: options.no_new_keyring,
            shim_cgroup: options.shim_cgroup.clone(),
            io_uid: options.io_uid,
            io_gid: options.io_gid,
            ..RuntimeOptions::default()
        })
    }

    fn from_cri(options: &CriRuntimeOptions) -> Result<RuntimeOptions, OptionsError> {
        if !options.config_path.is_empty() {
            let path = PathBuf::from(&options.config_path);
            let text = read_config(&path)?;
            return RuntimeOptions::from_toml(&text, &format!("file {path:?}"));
        }
        let text =
            String::from_utf8(options.config_body.clone()).map_err(|e| OptionsError::Toml {
                origin: "ConfigBody".into(),
                message: e.to_string(),
            })?;
        RuntimeOptions::from_toml(&text, "table (ConfigBody)")
    }

    /// A TOML table with the keys of containerd's runc options table; like containerd's TOML
    /// decoding, a key matches whatever its case.
    pub fn from_toml(text: &str, origin: &str) -> Result<RuntimeOptions, OptionsError> {
        let table: toml::Table = toml::from_str(text).map_err(|e| OptionsError::Toml {
            origin: origin.to_owned(),
            message: e.message().to_owned(),
        })?;
        let mut options = RuntimeOptions::default();
        for (key, value) in &table {
            let Some(name) = TOML_KEYS.iter().find(|k| k.eq_ignore_ascii_case(key)) else {
                return Err(OptionsError::UnknownKey {
                    origin: origin.to_owned(),
                    key: key.clone(),
                    known: TOML_KEYS.join(", "),
                });
            };
            let bad = |expected| OptionsError::BadValue {
                origin: origin.to_owned(),
                key: name,
                expected,
            };
            let string = || value.as_str().map(str::to_owned).ok_or(bad("a string"));
            let flag = || value.as_bool().ok_or(bad("true or false"));
            let id = || {
                value
                    .as_integer()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or(bad("an integer from 0 to 4294967295"))
            };
            match *name {
                "BinaryName" => options.binary_name = string()?,
                "Root" => options.root = string()?,
                "SystemdCgroup" => options.systemd_cgroup = flag()?,
                "NoPivotRoot" => options.no_pivot_root = flag()?,
                "NoNewKeyring" => options.no_new_keyring = flag()?,
                "ShimCgroup" => options.shim_cgroup = string()?,
                "IoUid" => options.io_uid = id()?,
                "IoGid" => options.io_gid = id()?,
                // The type of a runtimeoptions table, when the table is the body itself.
                "TypeUrl" => {}
                // Checkpoint/restore and a separate task API are not implemented.
                _ => return Err(OptionsError::Unsupported(name)),
            }
        }
        Ok(options)
    }

    /// Keeps the options in the bundle for the `delete` action.
    pub fn save(&self, bundle: &Path) -> std::io::Result<()> {
        let json = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        std::fs::write(bundle.join(SAVED), json)
    }

    /// The options a Create kept in the bundle; the defaults if it kept none.
    pub fn load(bundle: &Path) -> Result<RuntimeOptions, OptionsError> {
        let path = bundle.join(SAVED);
        match std::fs::read(&path) {
            Ok(json) => serde_json::from_slice(&json).map_err(|e| OptionsError::Saved {
                path,
                message: e.to_string(),
            }),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                Ok(RuntimeOptions::default())
            }
            Err(error) => Err(OptionsError::Saved {
                path,
                message: error.to_string(),
            }),
        }
    }

    /// The owner of the container's stdio, when `IoUid` or `IoGid` is set.
    pub fn io_owner(&self) -> Option<IoOwner> {
        (self.io_uid != 0 || self.io_gid != 0).then_some(IoOwner {
            uid: self.io_uid,
            gid: self.io_gid,
        })
    }

    /// `BinaryName`, or `runc` from PATH.
    pub fn runc_binary(&self) -> &str {
        match self.binary_name.as_str() {
            "" => "runc",
            name => name,
        }
    }

    /// runc's root for a namespace: `<Root or the default>/<namespace>`.
    pub fn runc_root(&self, namespace: &str) -> PathBuf {
        let root = match self.root.as_str() {
            "" => DEFAULT_ROOT,
            root => root,
        };
        Path::new(root).join(namespace)
    }

    /// The runtime driver these options describe, logging to the bundle's `log.json` as
    /// runc's shim does.
    pub fn runc(&self, namespace: &str, bundle: &Path, reaper: Reaper) -> Runc {
        let config = RuncConfig {
            binary: self.runc_binary().into(),
            root: Some(self.runc_root(namespace)),
            log: Some(bundle.join("log.json")),
            systemd_cgroup: self.systemd_cgroup,
            no_pivot: self.no_pivot_root,
            no_new_keyring: self.no_new_keyring,
        };
        Runc::new(config, reaper)
    }
}

/// A `ConfigPath` file, refused when it is larger than [`MAX_CONFIG_BYTES`] rather than read in
/// part (a truncated table could drop keys and still parse).
fn read_config(path: &Path) -> Result<String, OptionsError> {
    let error = |source| OptionsError::ConfigPath {
        path: path.to_owned(),
        source,
    };
    let bytes = read_at_most(path, MAX_CONFIG_BYTES).map_err(error)?;
    if bytes.len() > MAX_CONFIG_BYTES {
        let message = format!("larger than {MAX_CONFIG_BYTES} bytes");
        return Err(error(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            message,
        )));
    }
    String::from_utf8(bytes)
        .map_err(|e| error(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(type_url: &str, value: Vec<u8>) -> Any {
        Any {
            type_url: type_url.into(),
            value,
            ..Default::default()
        }
    }

    fn cri_body(body: &str) -> Any {
        let options = CriRuntimeOptions {
            type_url: String::new(),
            config_path: String::new(),
            config_body: body.as_bytes().to_vec(),
        };
        any(
            RUNTIME_OPTIONS_TYPE,
            prost::Message::encode_to_vec(&options),
        )
    }

    #[test]
    fn runc_options_are_taken_with_or_without_a_type_prefix() {
        let runc = RuncOptions {
            binary_name: "/usr/local/bin/crun".into(),
            root: "/run/x".into(),
            systemd_cgroup: true,
            no_pivot_root: true,
            io_uid: 1000,
            ..Default::default()
        };
        let bytes = runc.write_to_bytes().unwrap();
        for url in [
            RUNC_OPTIONS_TYPE,
            "type.googleapis.com/containerd.runc.v1.Options",
        ] {
            let options = RuntimeOptions::from_any(Some(&any(url, bytes.clone()))).unwrap();
            assert_eq!(options.binary_name, "/usr/local/bin/crun");
            assert_eq!(options.runc_root("k8s.io"), Path::new("/run/x/k8s.io"));
            assert!(options.systemd_cgroup && options.no_pivot_root && !options.no_new_keyring);
            assert_eq!(options.io_uid, 1000);
        }
    }

    #[test]
    fn options_that_cannot_be_honoured_are_refused_by_name() {
        let runc = RuncOptions {
            criu_image_path: "/images".into(),
            ..Default::default()
        };
        let any = any(RUNC_OPTIONS_TYPE, runc.write_to_bytes().unwrap());
        let error = RuntimeOptions::from_any(Some(&any)).unwrap_err();
        assert_eq!(
            error.to_string(),
            "runtime option CriuImagePath is not supported by this shim"
        );
        // Field 8 (the removed CriuPath) is unknown to the message: named by number.
        let unknown = self::any(RUNC_OPTIONS_TYPE, vec![0x42, 1, b'x']);
        let error = RuntimeOptions::from_any(Some(&unknown)).unwrap_err();
        assert!(error.to_string().contains("field number 8"), "{error}");
        let error =
            RuntimeOptions::from_any(Some(&cri_body("CriuWorkPath = \"/w\"\n"))).unwrap_err();
        assert!(error.to_string().contains("CriuWorkPath"), "{error}");
    }

    #[test]
    fn the_create_options_of_containerd_1_6_clients_are_taken() {
        let create = CreateOptions {
            no_new_keyring: true,
            io_uid: 100000,
            io_gid: 100001,
            ..Default::default()
        };
        let any = any(CREATE_OPTIONS_TYPE, prost::Message::encode_to_vec(&create));
        let options = RuntimeOptions::from_any(Some(&any)).unwrap();
        assert!(options.no_new_keyring && !options.no_pivot_root);
        assert_eq!(
            options.io_owner(),
            Some(IoOwner {
                uid: 100000,
                gid: 100001
            })
        );
        assert_eq!(options.runc_binary(), "runc");
        let checkpointing = CreateOptions {
            file_locks: true,
            ..Default::default()
        };
        let any = self::any(
            CREATE_OPTIONS_TYPE,
            prost::Message::encode_to_vec(&checkpointing),
        );
        let error = RuntimeOptions::from_any(Some(&any)).unwrap_err();
        assert!(error.to_string().contains("FileLocks"), "{error}");
    }

    #[test]
    fn a_cri_table_is_read_from_its_body_or_its_file() {
        let body = "BinaryName = \"/opt/runc\"\nroot = \"/run/r\"\nSystemdCgroup = true\nNoNewKeyring = true\nIoGid = 7\n";
        let from_body = RuntimeOptions::from_any(Some(&cri_body(body))).unwrap();
        assert_eq!(from_body.binary_name, "/opt/runc");
        assert_eq!(from_body.root, "/run/r");
        assert!(from_body.systemd_cgroup && from_body.no_new_keyring);
        assert_eq!(from_body.io_gid, 7);

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("options.toml");
        std::fs::write(&file, body).unwrap();
        let options = CriRuntimeOptions {
            type_url: "x".into(),
            config_path: file.display().to_string(),
            config_body: b"ignored = 1".to_vec(),
        };
        let any = any(
            RUNTIME_OPTIONS_TYPE,
            prost::Message::encode_to_vec(&options),
        );
        assert_eq!(RuntimeOptions::from_any(Some(&any)).unwrap(), from_body);
    }

    #[test]
    fn unknown_keys_bad_values_and_types_are_named() {
        let error = RuntimeOptions::from_any(Some(&cri_body("BinaryNmae = \"x\""))).unwrap_err();
        assert!(
            error.to_string().contains("unknown key \"BinaryNmae\""),
            "{error}"
        );
        let error =
            RuntimeOptions::from_any(Some(&cri_body("SystemdCgroup = \"yes\""))).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("SystemdCgroup must be true or false"),
            "{error}"
        );
        let error = RuntimeOptions::from_any(Some(&cri_body("IoUid = -1"))).unwrap_err();
        assert!(
            error.to_string().contains("IoUid must be an integer"),
            "{error}"
        );
        let error = RuntimeOptions::from_any(Some(&any("example.Other", vec![]))).unwrap_err();
        assert!(error.to_string().contains("\"example.Other\""), "{error}");
        let missing = CriRuntimeOptions {
            config_path: "/nonexistent/options.toml".into(),
            ..Default::default()
        };
        let any = any(
            RUNTIME_OPTIONS_TYPE,
            prost::Message::encode_to_vec(&missing),
        );
        let error = RuntimeOptions::from_any(Some(&any)).unwrap_err();
        assert!(
            error.to_string().contains("/nonexistent/options.toml"),
            "{error}"
        );
    }

    #[test]
    fn a_config_file_over_the_limit_is_refused_not_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("options.toml");
        let padding = format!("# {}\n", "x".repeat(MAX_CONFIG_BYTES));
        std::fs::write(&file, format!("{padding}BinaryName = \"/opt/runc\"\n")).unwrap();
        let error = read_config(&file).unwrap_err();
        assert!(
            error.to_string().contains("larger than 65536 bytes"),
            "{error}"
        );
        std::fs::write(&file, "Root = \"/r\"\n").unwrap();
        assert_eq!(read_config(&file).unwrap(), "Root = \"/r\"\n");
    }

    #[test]
    fn saved_options_come_back_and_default_when_absent() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            RuntimeOptions::load(dir.path()).unwrap(),
            RuntimeOptions::default()
        );
        let options = RuntimeOptions {
            binary_name: "/opt/runc".into(),
            root: "/run/r".into(),
            ..Default::default()
        };
        options.save(dir.path()).unwrap();
        assert_eq!(RuntimeOptions::load(dir.path()).unwrap(), options);
        assert_eq!(
            RuntimeOptions::default().runc_root("ns"),
            Path::new("/run/containerd/lifecycle/ns")
        );
    }
}
