//! Init containers once per pod sandbox, as Kubernetes runs them: when the kubelet restarts a
//! container in the same sandbox, the init containers that already succeeded for the same spec
//! are not run again; a new sandbox, or a changed spec, runs them again. The record lives in the
//! sandbox's own bundle directory (`<bundles>/<sandbox-id>/lifecycle-inits/<container>.json`),
//! so it survives a shim or containerd restart and goes when containerd removes the sandbox.

use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::bundle::{Bundle, CONTAINER_NAME_ANNOTATION, CONTAINER_TYPE_ANNOTATION};
use crate::os::files::write_atomically;

/// containerd's CRI plugin names the pod sandbox a container belongs to here.
pub const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";
const RECORDS: &str = "lifecycle-inits";

/// Where one container of a pod records its init containers' successes.
#[derive(Debug, Clone)]
pub struct SandboxRecord {
    file: PathBuf,
    /// The init containers as specified; another spec starts a new record.
    spec: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Recorded {
    spec: String,
    succeeded: Vec<String>,
}

impl SandboxRecord {
    /// The record of a CRI pod's app container; `None` outside CRI, for the sandbox itself, or
    /// when the sandbox's bundle is not beside this one.
    pub fn of(bundle: &Bundle, spec: String) -> Option<SandboxRecord> {
        if bundle.annotation(CONTAINER_TYPE_ANNOTATION) != Some("container") {
            return None;
        }
        let sandbox = bundle
            .annotation(SANDBOX_ID_ANNOTATION)
            .filter(|s| is_name(s))?;
        let name = bundle
            .annotation(CONTAINER_NAME_ANNOTATION)
            .filter(|s| is_name(s))?;
        let sandbox_bundle = bundle.path.parent()?.join(sandbox);
        if !sandbox_bundle.is_dir() {
            return None;
        }
        Some(SandboxRecord {
            file: sandbox_bundle.join(RECORDS).join(format!("{name}.json")),
            spec,
        })
    }

    /// Whether `init` already succeeded in this sandbox, for this spec.
    pub fn succeeded(&self, init: &str) -> bool {
        self.read().succeeded.iter().any(|name| name == init)
    }

    /// Records that `init` succeeded.
    pub fn record(&self, init: &str) -> io::Result<()> {
        let mut recorded = self.read();
        recorded.spec.clone_from(&self.spec);
        recorded.succeeded.push(init.to_owned());
        if let Some(dir) = self.file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let json = serde_json::to_vec(&recorded).map_err(io::Error::other)?;
        write_atomically(&self.file, &json)
    }

    /// The record for this spec; an empty one if there is none, it is unreadable, or it was
    /// made for another spec.
    fn read(&self) -> Recorded {
        std::fs::read(&self.file)
            .ok()
            .and_then(|json| serde_json::from_slice::<Recorded>(&json).ok())
            .filter(|recorded| recorded.spec == self.spec)
            .unwrap_or_default()
    }

    #[cfg(test)]
    fn file(&self) -> &std::path::Path {
        &self.file
    }
}

/// A sandbox id or container name that is one plain path component.
fn is_name(text: &str) -> bool {
    !text.is_empty()
        && text != "."
        && text != ".."
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// Bundles `<dir>/<sandbox>` and `<dir>/<app>` as containerd lays them out.
    fn app_bundle(dir: &Path, annotations: &[(&str, &str)]) -> Bundle {
        std::fs::create_dir_all(dir.join("sandbox1")).unwrap();
        let app = dir.join("app1");
        std::fs::create_dir_all(&app).unwrap();
        let annotations: serde_json::Map<String, serde_json::Value> = annotations
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
            .collect();
        let config = serde_json::json!({"ociVersion": "1.0.2", "root": {"path": "rootfs"}, "annotations": annotations});
        std::fs::write(app.join("config.json"), config.to_string()).unwrap();
        Bundle::load(&app).unwrap()
    }

    const CRI: [(&str, &str); 3] = [
        (CONTAINER_TYPE_ANNOTATION, "container"),
        (SANDBOX_ID_ANNOTATION, "sandbox1"),
        (CONTAINER_NAME_ANNOTATION, "web"),
    ];

    #[test]
    fn successes_are_kept_per_spec_in_the_sandbox_bundle() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = app_bundle(dir.path(), &CRI);
        let record = SandboxRecord::of(&bundle, "spec-1".into()).unwrap();
        assert_eq!(
            record.file(),
            dir.path().join("sandbox1/lifecycle-inits/web.json")
        );
        assert!(!record.succeeded("migrate"));
        record.record("migrate").unwrap();
        assert!(record.succeeded("migrate"));
        assert!(!record.succeeded("seed"));
        // Another spec for the same container starts over.
        let changed = SandboxRecord::of(&bundle, "spec-2".into()).unwrap();
        assert!(!changed.succeeded("migrate"));
        changed.record("seed").unwrap();
        assert!(!changed.succeeded("migrate") && changed.succeeded("seed"));
    }

    #[test]
    fn only_a_cri_app_container_beside_its_sandbox_has_a_record() {
        let dir = tempfile::tempdir().unwrap();
        let sandbox = [(CONTAINER_TYPE_ANNOTATION, "sandbox"), CRI[1], CRI[2]];
        assert!(SandboxRecord::of(&app_bundle(dir.path(), &sandbox), "s".into()).is_none());
        assert!(SandboxRecord::of(&app_bundle(dir.path(), &[]), "s".into()).is_none());
        let elsewhere = [CRI[0], (SANDBOX_ID_ANNOTATION, "no-such-sandbox"), CRI[2]];
        assert!(SandboxRecord::of(&app_bundle(dir.path(), &elsewhere), "s".into()).is_none());
        let escape = [CRI[0], (SANDBOX_ID_ANNOTATION, ".."), CRI[2]];
        assert!(SandboxRecord::of(&app_bundle(dir.path(), &escape), "s".into()).is_none());
        let slash = [CRI[0], CRI[1], (CONTAINER_NAME_ANNOTATION, "../web")];
        assert!(SandboxRecord::of(&app_bundle(dir.path(), &slash), "s".into()).is_none());
    }
}
