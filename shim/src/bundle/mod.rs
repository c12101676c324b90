//! An OCI bundle and the hook plan it asks for: `config.json` is read (never written: runc gets
//! the bundle untouched, OCI `hooks` included) and the spec is taken from, in order of
//! precedence, `--spec FILE`, the `lifecycle-shim/spec.<container-name>` annotation, the
//! `lifecycle-shim/spec` annotation, and for `lifecycle-runc` (whose engines may write no
//! annotations) the file [`CONTAINER_SPEC_PATH`] as the container would see it: from a bind
//! mount, else from its rootfs (an image that ships its own hooks).

pub mod derived;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use lifecycle_hooks::plan::parse_signal;
use lifecycle_hooks::{Defaults, InvalidSpec, Plan};

use crate::os::files::{read_at_most, read_in_root};

pub const SPEC_ANNOTATION: &str = "lifecycle-shim/spec";
/// The largest spec accepted, in bytes, from an annotation or a file: an annotation is no place
/// for more, and a `--spec` file is never read further than this.
pub const MAX_SPEC_BYTES: usize = 64 * 1024;
/// containerd's CRI plugin names the container of a pod here.
pub const CONTAINER_NAME_ANNOTATION: &str = "io.kubernetes.cri.container-name";
/// containerd's CRI plugin marks the pause container `sandbox` here.
pub const CONTAINER_TYPE_ANNOTATION: &str = "io.kubernetes.cri.container-type";
/// CRI-O names the container of a pod in this JSON annotation's `name`.
pub const CRIO_METADATA_ANNOTATION: &str = "io.kubernetes.cri-o.Metadata";
/// CRI-O marks the pod's infra container `sandbox` here.
pub const CRIO_CONTAINER_TYPE_ANNOTATION: &str = "io.kubernetes.cri-o.ContainerType";
/// Where no annotation names the container (`podman kube play`), its environment can.
pub const CONTAINER_NAME_ENV: &str = "LIFECYCLE_CONTAINER_NAME";
/// The spec file `lifecycle-runc` reads when no annotation holds a spec, as the container sees
/// it.
pub const CONTAINER_SPEC_PATH: &str = "/etc/lifecycle-shim/spec.json";
/// The image's stop signal, as Docker, nerdctl and the CRI plugin record it.
pub const IMAGE_STOP_SIGNAL_ANNOTATION: &str = "org.opencontainers.image.stopSignal";

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("bundle {path:?}: {source}")]
    Missing {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bundle {path:?} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("{path:?}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("{origin}: {source}")]
    SpecFile {
        origin: SpecOrigin,
        source: std::io::Error,
    },
    #[error(
        "{origin} is larger than the {MAX_SPEC_BYTES}-byte (64 KiB) limit for a lifecycle spec"
    )]
    SpecTooLarge { origin: SpecOrigin },
    #[error("{origin} is not UTF-8 text (invalid byte at offset {offset})")]
    SpecNotUtf8 { origin: SpecOrigin, offset: usize },
    #[error("{origin}: invalid lifecycle spec:\n{errors}")]
    Spec {
        origin: SpecOrigin,
        errors: InvalidSpec,
    },
    #[error("{origin}: initContainers: {name:?}: once.path {path:?} is in no bind-mounted volume of the bundle")]
    OnceOutsideVolume {
        origin: SpecOrigin,
        name: String,
        path: String,
    },
    #[error("{origin}: reconfigure.paths: {source}")]
    Reconfigure {
        origin: SpecOrigin,
        source: std::io::Error,
    },
    #[error("{path:?}: process.terminal is true, but `run` passes its own stdio through; set it to false")]
    Terminal { path: PathBuf },
}

/// Where a plan came from, for messages and for `check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpecOrigin {
    File(PathBuf),
    /// [`CONTAINER_SPEC_PATH`], found on the host here.
    ContainerFile(PathBuf),
    Annotation(String),
    /// No spec anywhere: the container runs without hooks.
    None,
    /// A pod's pause container, which never runs hooks.
    Sandbox,
}

impl fmt::Display for SpecOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpecOrigin::File(path) => write!(f, "spec file {path:?}"),
            SpecOrigin::ContainerFile(host) => {
                write!(f, "spec file {CONTAINER_SPEC_PATH} (on the host: {host:?})")
            }
            SpecOrigin::Annotation(key) => write!(f, "annotation {key}"),
            SpecOrigin::None => write!(f, "no lifecycle spec (no hooks)"),
            SpecOrigin::Sandbox => write!(f, "sandbox container (never runs hooks)"),
        }
    }
}

pub struct Bundle {
    /// Absolute path of the bundle directory.
    pub path: PathBuf,
    config_path: PathBuf,
    annotations: HashMap<String, String>,
    /// The container's name from its environment ([`CONTAINER_NAME_ENV`]).
    env_name: Option<String>,
    /// The root filesystem, absolute.
    rootfs: PathBuf,
    terminal: bool,
    /// Bind mounts: where they appear in the container and their host sources.
    pub binds: Vec<crate::lifecycle::once::Bind>,
    /// The container has no PID namespace of its own (it shares the host's, a pod's or another
    /// container's), so its processes outlive its init: runc's `ShouldKillAllOnExit`.
    pub shares_pid_namespace: bool,
}

impl Bundle {
    pub fn load(path: &Path) -> Result<Bundle, BundleError> {
        let path = std::fs::canonicalize(path).map_err(|source| BundleError::Missing {
            path: path.to_owned(),
            source,
        })?;
        if !path.is_dir() {
            return Err(BundleError::NotADirectory { path });
        }
        let config_path = path.join("config.json");
        let config_error = |message: String| BundleError::Config {
            path: config_path.clone(),
            message,
        };
        let text =
            std::fs::read_to_string(&config_path).map_err(|e| config_error(e.to_string()))?;
        // Read with oci-spec's types so a config runc would reject is refused before anything
        // is created, with serde's line and column.
        let config: oci_spec::runtime::Spec =
            serde_json::from_str(&text).map_err(|e| config_error(e.to_string()))?;
        let binds = config
            .mounts()
            .iter()
            .flatten()
            .filter(|m| {
                m.typ().as_deref() == Some("bind")
                    || m.options()
                        .iter()
                        .flatten()
                        .any(|o| o == "bind" || o == "rbind")
            })
            .filter_map(|m| Some((m.destination().clone(), m.source().clone()?)))
            .collect();
        let private_pid_namespace = config
            .linux()
            .as_ref()
            .and_then(|linux| linux.namespaces().as_ref())
            .is_some_and(|namespaces| {
                namespaces.iter().any(|ns| {
                    ns.typ() == oci_spec::runtime::LinuxNamespaceType::Pid
                        && ns.path().as_ref().is_none_or(|p| p.as_os_str().is_empty())
                })
            });
        let process_env = config.process().as_ref().and_then(|p| p.env().clone());
        let env_name = process_env.iter().flatten().find_map(|entry| {
            let (name, value) = entry.split_once('=')?;
            (name == CONTAINER_NAME_ENV).then(|| value.to_owned())
        });
        let rootfs = path.join(
            config
                .root()
                .as_ref()
                .map_or(Path::new("rootfs"), |r| r.path()),
        );
        Ok(Bundle {
            binds,
            env_name,
            rootfs,
            shares_pid_namespace: !private_pid_namespace,
            annotations: config.annotations().clone().unwrap_or_default(),
            terminal: config
                .process()
                .as_ref()
                .and_then(|p| p.terminal())
                .unwrap_or(false),
            path,
            config_path,
        })
    }

    /// The value of an annotation of the bundle's config.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.get(key).map(String::as_str)
    }

    /// Fails if the bundle asks for a terminal, which `run` does not allocate.
    pub fn refuse_terminal(&self) -> Result<(), BundleError> {
        if self.terminal {
            return Err(BundleError::Terminal {
                path: self.config_path.clone(),
            });
        }
        Ok(())
    }

    /// The validated plan and where it came from.
    pub fn plan(&self, spec_file: Option<&Path>) -> Result<(SpecOrigin, Plan), BundleError> {
        self.plan_from(spec_file, false)
    }

    /// The plan for `lifecycle-runc`: also from [`CONTAINER_SPEC_PATH`].
    pub fn runtime_plan(&self) -> Result<(SpecOrigin, Plan), BundleError> {
        self.plan_from(None, true)
    }

    fn plan_from(
        &self,
        spec_file: Option<&Path>,
        in_container: bool,
    ) -> Result<(SpecOrigin, Plan), BundleError> {
        let defaults = Defaults {
            stop_signal: self
                .annotations
                .get(IMAGE_STOP_SIGNAL_ANNOTATION)
                .and_then(|name| parse_signal(name))
                .unwrap_or(Defaults::default().stop_signal),
        };
        let (origin, json) = self.spec_source(spec_file, in_container)?;
        let Some(json) = json else {
            let plan = Plan {
                stop_signal: defaults.stop_signal,
                ..Plan::default()
            };
            return Ok((origin, plan));
        };
        let plan = Plan::from_json(&json, &defaults).map_err(|errors| BundleError::Spec {
            origin: origin.clone(),
            errors,
        })?;
        for init in &plan.init_containers {
            if let Some(once) = init.once.as_ref() {
                if crate::lifecycle::once::host_path(&self.binds, &once.path).is_none() {
                    return Err(BundleError::OnceOutsideVolume {
                        origin,
                        name: init.name.clone(),
                        path: once.path.clone(),
                    });
                }
            }
        }
        self.watched(&plan)
            .map_err(|source| BundleError::Reconfigure {
                origin: origin.clone(),
                source,
            })?;
        Ok((origin, plan))
    }

    /// The reconfigure entry's paths, found on the host through the bind mounts.
    pub fn watched(
        &self,
        plan: &Plan,
    ) -> std::io::Result<Vec<crate::lifecycle::watch::WatchedPath>> {
        let paths = plan.reconfigure.as_ref().map_or(&[][..], |r| &r.paths);
        crate::lifecycle::watch::resolve_all(&self.binds, paths)
    }

    /// The container's name in its pod: from containerd's CRI annotation, CRI-O's metadata, or
    /// the container's environment.
    fn container_name(&self) -> Option<String> {
        let crio = || {
            let metadata = self.annotations.get(CRIO_METADATA_ANNOTATION)?;
            let metadata: serde_json::Value = serde_json::from_str(metadata).ok()?;
            metadata["name"].as_str().map(str::to_owned)
        };
        self.annotations
            .get(CONTAINER_NAME_ANNOTATION)
            .cloned()
            .or_else(crio)
            .or_else(|| self.env_name.clone())
    }

    fn is_sandbox(&self) -> bool {
        [CONTAINER_TYPE_ANNOTATION, CRIO_CONTAINER_TYPE_ANNOTATION]
            .iter()
            .any(|key| self.annotation(key) == Some("sandbox"))
    }

    fn spec_source(
        &self,
        spec_file: Option<&Path>,
        in_container: bool,
    ) -> Result<(SpecOrigin, Option<String>), BundleError> {
        if let Some(path) = spec_file {
            let origin = SpecOrigin::File(path.to_owned());
            let json = spec_text(read_at_most(path, MAX_SPEC_BYTES), origin.clone())?;
            return Ok((origin, Some(json)));
        }
        if self.is_sandbox() {
            return Ok((SpecOrigin::Sandbox, None));
        }
        let per_container = self
            .container_name()
            .map(|name| format!("{SPEC_ANNOTATION}.{name}"));
        for key in per_container
            .iter()
            .map(String::as_str)
            .chain([SPEC_ANNOTATION])
        {
            if let Some(json) = self.annotations.get(key) {
                let origin = SpecOrigin::Annotation(key.to_owned());
                if json.len() > MAX_SPEC_BYTES {
                    return Err(BundleError::SpecTooLarge { origin });
                }
                return Ok((origin, Some(json.clone())));
            }
        }
        if in_container {
            if let Some((host, bytes)) = self.read_container_spec() {
                let origin = SpecOrigin::ContainerFile(host);
                return Ok((origin.clone(), Some(spec_text(bytes, origin)?)));
            }
        }
        Ok((SpecOrigin::None, None))
    }

    /// [`CONTAINER_SPEC_PATH`] as the container will see it: the source of a bind mount onto
    /// it, a file in a bind-mounted volume, or a file of the rootfs; below the volume or the
    /// rootfs, a symlink never leads out of it. `None` if there is no such file.
    fn read_container_spec(&self) -> Option<(PathBuf, std::io::Result<Vec<u8>>)> {
        let exact = self
            .binds
            .iter()
            .rev()
            .find(|(inside, _)| inside == Path::new(CONTAINER_SPEC_PATH));
        if let Some((_, source)) = exact {
            return Some((source.clone(), read_at_most(source, MAX_SPEC_BYTES)));
        }
        let (root, rest) = crate::lifecycle::once::host_path(&self.binds, CONTAINER_SPEC_PATH)
            .unwrap_or_else(|| {
                let rest = CONTAINER_SPEC_PATH.trim_start_matches('/');
                (self.rootfs.clone(), PathBuf::from(rest))
            });
        let read = read_in_root(&root, &rest, MAX_SPEC_BYTES);
        if read
            .as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
        {
            return None;
        }
        Some((root.join(rest), read))
    }
}

/// A spec's text from at most one byte past [`MAX_SPEC_BYTES`], so a huge file (or
/// `/dev/zero`) is refused without being read; JSON is UTF-8, so other bytes are refused with
/// where they start.
fn spec_text(bytes: std::io::Result<Vec<u8>>, origin: SpecOrigin) -> Result<String, BundleError> {
    let bytes = bytes.map_err(|source| BundleError::SpecFile {
        origin: origin.clone(),
        source,
    })?;
    if bytes.len() > MAX_SPEC_BYTES {
        return Err(BundleError::SpecTooLarge { origin });
    }
    String::from_utf8(bytes).map_err(|error| BundleError::SpecNotUtf8 {
        origin,
        offset: error.utf8_error().valid_up_to(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(annotations: &[(&str, &str)]) -> Bundle {
        Bundle {
            path: PathBuf::from("/b"),
            config_path: PathBuf::from("/b/config.json"),
            annotations: annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            terminal: false,
            env_name: None,
            rootfs: PathBuf::from("/b/rootfs"),
            binds: Vec::new(),
            shares_pid_namespace: false,
        }
    }

    #[test]
    fn a_pid_namespace_is_private_only_when_the_spec_creates_one() {
        let dir = tempfile::tempdir().unwrap();
        let shares = |linux: &str| {
            let config =
                format!(r#"{{"ociVersion": "1.0.2", "root": {{"path": "rootfs"}}{linux}}}"#);
            std::fs::write(dir.path().join("config.json"), config).unwrap();
            Bundle::load(dir.path()).unwrap().shares_pid_namespace
        };
        assert!(shares(""), "no linux section: the host's PID namespace");
        assert!(shares(r#", "linux": {"namespaces": [{"type": "mount"}]}"#));
        assert!(!shares(r#", "linux": {"namespaces": [{"type": "pid"}]}"#));
        assert!(!shares(
            r#", "linux": {"namespaces": [{"type": "pid", "path": ""}]}"#
        ));
        assert!(shares(
            r#", "linux": {"namespaces": [{"type": "pid", "path": "/proc/1/ns/pid"}]}"#
        ));
    }

    #[test]
    fn per_container_annotation_wins_over_the_plain_one() {
        let b = bundle(&[
            (SPEC_ANNOTATION, r#"{"terminationGracePeriodSeconds": 1}"#),
            (
                "lifecycle-shim/spec.app",
                r#"{"terminationGracePeriodSeconds": 2}"#,
            ),
            (CONTAINER_NAME_ANNOTATION, "app"),
        ]);
        let (origin, plan) = b.plan(None).unwrap();
        assert_eq!(
            origin,
            SpecOrigin::Annotation("lifecycle-shim/spec.app".into())
        );
        assert_eq!(plan.grace.as_secs(), 2);

        let other = bundle(&[
            (SPEC_ANNOTATION, r#"{"terminationGracePeriodSeconds": 1}"#),
            (
                "lifecycle-shim/spec.app",
                r#"{"terminationGracePeriodSeconds": 2}"#,
            ),
            (CONTAINER_NAME_ANNOTATION, "sidecar"),
        ]);
        assert_eq!(other.plan(None).unwrap().1.grace.as_secs(), 1);
    }

    /// A bundle with `mounts` and the given files in its rootfs.
    fn bundle_on_disk(mounts: serde_json::Value, files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let file = dir.path().join("rootfs").join(path);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(file, text).unwrap();
        }
        let config = serde_json::json!({"ociVersion": "1.0.2", "root": {"path": "rootfs"},
                                        "mounts": mounts});
        std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
        dir
    }

    #[test]
    fn lifecycle_runc_reads_the_spec_file_from_a_bind_mount_or_the_rootfs() {
        let spec = r#"{"terminationGracePeriodSeconds": 7}"#;
        let image = bundle_on_disk(
            serde_json::json!([]),
            &[("etc/lifecycle-shim/spec.json", spec)],
        );
        let b = Bundle::load(image.path()).unwrap();
        let (origin, plan) = b.runtime_plan().unwrap();
        assert_eq!(plan.grace.as_secs(), 7);
        assert!(matches!(origin, SpecOrigin::ContainerFile(_)), "{origin}");
        assert_eq!(
            b.plan(None).unwrap().0,
            SpecOrigin::None,
            "only for lifecycle-runc"
        );

        let host = tempfile::tempdir().unwrap();
        std::fs::write(
            host.path().join("spec.json"),
            r#"{"terminationGracePeriodSeconds": 8}"#,
        )
        .unwrap();
        let file_bind = serde_json::json!([{"destination": CONTAINER_SPEC_PATH, "type": "bind",
            "source": host.path().join("spec.json"), "options": ["rbind", "ro"]}]);
        let mounted = bundle_on_disk(file_bind, &[("etc/lifecycle-shim/spec.json", spec)]);
        let plan = Bundle::load(mounted.path())
            .unwrap()
            .runtime_plan()
            .unwrap()
            .1;
        assert_eq!(
            plan.grace.as_secs(),
            8,
            "the bind mount hides the image's file"
        );

        let dir_bind = serde_json::json!([{"destination": "/etc/lifecycle-shim", "type": "bind",
            "source": host.path(), "options": ["rbind"]}]);
        let volume = bundle_on_disk(dir_bind, &[]);
        let plan = Bundle::load(volume.path())
            .unwrap()
            .runtime_plan()
            .unwrap()
            .1;
        assert_eq!(plan.grace.as_secs(), 8);

        let annotated = bundle(&[(SPEC_ANNOTATION, r#"{"terminationGracePeriodSeconds": 9}"#)]);
        assert_eq!(annotated.runtime_plan().unwrap().1.grace.as_secs(), 9);
    }

    #[test]
    fn a_symlink_in_the_rootfs_never_leads_to_a_host_file() {
        let host = tempfile::tempdir().unwrap();
        let secret = host.path().join("spec.json");
        std::fs::write(&secret, r#"{"terminationGracePeriodSeconds": 5}"#).unwrap();
        let image = bundle_on_disk(serde_json::json!([]), &[]);
        let dir = image.path().join("rootfs/etc/lifecycle-shim");
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink(&secret, dir.join("spec.json")).unwrap();
        let (origin, _) = Bundle::load(image.path()).unwrap().runtime_plan().unwrap();
        assert_eq!(
            origin,
            SpecOrigin::None,
            "resolved inside the rootfs, where it is missing"
        );
    }

    #[test]
    fn the_container_name_comes_from_cri_crio_or_the_environment() {
        let mut b = bundle(&[(CRIO_METADATA_ANNOTATION, r#"{"name": "app", "attempt": 1}"#)]);
        assert_eq!(b.container_name().as_deref(), Some("app"));
        b.annotations.clear();
        b.env_name = Some("web".into());
        assert_eq!(b.container_name().as_deref(), Some("web"));
        let infra = bundle(&[
            (CRIO_CONTAINER_TYPE_ANNOTATION, "sandbox"),
            (SPEC_ANNOTATION, "{}"),
        ]);
        assert_eq!(infra.runtime_plan().unwrap().0, SpecOrigin::Sandbox);
    }

    #[test]
    fn sandbox_containers_never_get_hooks() {
        let b = bundle(&[
            (
                SPEC_ANNOTATION,
                r#"{"postStart": {"exec": {"command": ["x"]}}}"#,
            ),
            (CONTAINER_TYPE_ANNOTATION, "sandbox"),
        ]);
        let (origin, plan) = b.plan(None).unwrap();
        assert_eq!(origin, SpecOrigin::Sandbox);
        assert!(plan.is_empty());
    }

    #[test]
    fn image_stop_signal_is_used_unless_the_spec_names_one() {
        let b = bundle(&[(IMAGE_STOP_SIGNAL_ANNOTATION, "SIGQUIT")]);
        assert_eq!(
            b.plan(None).unwrap().1.stop_signal,
            nix::sys::signal::Signal::SIGQUIT
        );
        let b = bundle(&[
            (IMAGE_STOP_SIGNAL_ANNOTATION, "SIGQUIT"),
            (SPEC_ANNOTATION, r#"{"stopSignal": "SIGINT"}"#),
        ]);
        assert_eq!(
            b.plan(None).unwrap().1.stop_signal,
            nix::sys::signal::Signal::SIGINT
        );
    }

    #[test]
    fn spec_errors_name_their_origin_and_field() {
        let b = bundle(&[(SPEC_ANNOTATION, r#"{"preStop": {"httpGet": {"port": 0}}}"#)]);
        let message = b.plan(None).unwrap_err().to_string();
        assert_eq!(
            message,
            "annotation lifecycle-shim/spec: invalid lifecycle spec:\npreStop.httpGet.port: must be 1..65535"
        );
    }

    #[test]
    fn a_spec_over_64_kib_is_refused_naming_the_annotation_and_the_limit() {
        // The biggest spec that is still accepted is exactly the limit.
        let spec_of = |len: usize| format!("{{{}}}", " ".repeat(len - 2));
        let (at_limit, over_limit) = (spec_of(MAX_SPEC_BYTES), spec_of(MAX_SPEC_BYTES + 1));
        let key = format!("{SPEC_ANNOTATION}.app");
        let with = |spec: &str| bundle(&[(CONTAINER_NAME_ANNOTATION, "app"), (&key, spec)]);
        assert!(with(&at_limit).plan(None).is_ok());
        let over = with(&over_limit);
        let error = over.plan(None).unwrap_err();
        assert!(matches!(error, BundleError::SpecTooLarge { .. }), "{error}");
        assert_eq!(
            error.to_string(),
            "annotation lifecycle-shim/spec.app is larger than the 65536-byte (64 KiB) limit for a lifecycle spec"
        );
    }

    #[test]
    fn a_spec_file_is_read_only_up_to_the_limit() {
        let b = bundle(&[]);
        // An endless file: refused after 64 KiB + 1 bytes instead of being read to the end.
        let error = b.plan(Some(Path::new("/dev/zero"))).unwrap_err();
        assert_eq!(
            error.to_string(),
            "spec file \"/dev/zero\" is larger than the 65536-byte (64 KiB) limit for a lifecycle spec"
        );
    }

    #[test]
    fn a_spec_file_that_is_not_utf8_is_refused_with_the_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spec.json");
        std::fs::write(&path, b"{\"stopSignal\": \"TERM\xff\"}").unwrap();
        let error = bundle(&[]).plan(Some(&path)).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!("spec file {path:?} is not UTF-8 text (invalid byte at offset 20)")
        );
    }
}
