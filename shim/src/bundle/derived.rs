//! Bundles derived from the container's, for the fresh containers of postStop runs and
//! sidecars. The container's bundle is never changed: each derived bundle is a copy of its
//! config with another process, the same rootfs (by absolute path), mounts and user, a cgroup
//! of its own beside the container's, and no OCI hooks (networking hooks such as Docker's are
//! for the container itself).

use std::io;
use std::path::{Path, PathBuf};

use lifecycle_hooks::ExecRequest;
use serde_json::Value;

/// The namespaces a sidecar shares with the container, as a pod's containers do: not the PID
/// namespace (so it outlives the entrypoint and is stopped on its own), nor the mount
/// namespace (runc sets up its own view of the same rootfs and mounts).
const SHARED_NAMESPACES: [(&str, &str); 3] = [("network", "net"), ("ipc", "ipc"), ("uts", "uts")];

/// The container's bundle and its config.
pub struct BaseBundle {
    bundle: PathBuf,
    config: Value,
}

impl BaseBundle {
    pub fn read(bundle: &Path) -> io::Result<BaseBundle> {
        let bytes = std::fs::read(bundle.join("config.json"))?;
        Ok(BaseBundle {
            bundle: bundle.to_owned(),
            config: serde_json::from_slice(&bytes)?,
        })
    }

    /// Writes a bundle in `dir` that runs `request`'s process in cgroup `<cgroupsPath>-<suffix>`;
    /// with `join`, in the network, IPC and UTS namespaces of process `join` (those the
    /// container has of its own).
    pub fn derive(
        &self,
        dir: &Path,
        suffix: &str,
        request: &ExecRequest<'_>,
        join: Option<i32>,
    ) -> io::Result<()> {
        let mut config = self.config.clone();
        let process = &mut config["process"];
        process["args"] = request.argv.into();
        process["terminal"] = false.into();
        if let Some(dir) = request.working_dir {
            process["cwd"] = dir.into();
        }
        let env = process["env"].as_array().cloned().unwrap_or_default();
        let extra = request
            .env
            .iter()
            .map(|(k, v)| Value::from(format!("{k}={v}")));
        process["env"] = env.into_iter().chain(extra).collect::<Vec<_>>().into();
        absolute_root(&mut config, &self.bundle);
        if let Some(path) = config["linux"]["cgroupsPath"].as_str() {
            config["linux"]["cgroupsPath"] = format!("{path}-{suffix}").into();
        }
        if let Some(object) = config.as_object_mut() {
            object.remove("hooks");
        }
        if let (Some(pid), Some(namespaces)) = (join, config["linux"]["namespaces"].as_array_mut())
        {
            for namespace in namespaces {
                let kind = namespace["type"].as_str().unwrap_or_default();
                if let Some((_, proc_name)) = SHARED_NAMESPACES.iter().find(|(k, _)| *k == kind) {
                    namespace["path"] = format!("/proc/{pid}/ns/{proc_name}").into();
                }
            }
        }
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("config.json"), serde_json::to_vec(&config)?)
    }
}

/// Makes a config's `root.path` absolute, for a bundle written elsewhere than `bundle` (the
/// same rootfs, by path).
pub fn absolute_root(config: &mut Value, bundle: &Path) {
    let root = config["root"]["path"].as_str().unwrap_or("rootfs");
    config["root"]["path"] = bundle.join(root).to_string_lossy().into_owned().into();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_derived_bundle_joins_only_the_shared_namespaces_the_container_has() {
        let tmp = tempfile::tempdir().unwrap();
        let bundle = tmp.path().join("b");
        std::fs::create_dir(&bundle).unwrap();
        let config = serde_json::json!({
            "process": {"args": ["app"], "env": ["A=1"], "terminal": true, "cwd": "/"},
            "root": {"path": "rootfs"},
            "hooks": {"createRuntime": []},
            "linux": {"cgroupsPath": "/pods/app", "namespaces": [
                {"type": "pid"}, {"type": "network"}, {"type": "mount"}, {"type": "uts"}]}
        });
        std::fs::write(bundle.join("config.json"), config.to_string()).unwrap();
        let base = BaseBundle::read(&bundle).unwrap();
        let argv = ["proxy".to_owned()];
        let env = [("B".to_owned(), "2".to_owned())];
        let request = ExecRequest {
            label: "sidecar:proxy",
            argv: &argv,
            env: &env,
            working_dir: Some("/srv"),
            deadline: None,
        };
        let dir = tmp.path().join("d");
        base.derive(&dir, "sidecar-proxy", &request, Some(42))
            .unwrap();
        let derived: Value =
            serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
        assert_eq!(derived["process"]["args"], serde_json::json!(["proxy"]));
        assert_eq!(derived["process"]["env"], serde_json::json!(["A=1", "B=2"]));
        assert_eq!(derived["process"]["terminal"], false);
        assert_eq!(derived["process"]["cwd"], "/srv");
        assert_eq!(
            derived["root"]["path"],
            bundle.join("rootfs").to_str().unwrap()
        );
        assert_eq!(derived["linux"]["cgroupsPath"], "/pods/app-sidecar-proxy");
        assert!(derived.get("hooks").is_none());
        assert_eq!(
            derived["linux"]["namespaces"],
            serde_json::json!([{"type": "pid"}, {"type": "network", "path": "/proc/42/ns/net"},
                {"type": "mount"}, {"type": "uts", "path": "/proc/42/ns/uts"}])
        );
    }
}
