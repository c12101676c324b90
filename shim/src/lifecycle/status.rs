//! The latest health-check result of a container, in a JSON file that `lifecycle-shim status`
//! reads: `$LIFECYCLE_SHIM_STATE` (default `/run/lifecycle-shim`)`/<id>.json` for `run`,
//! `.../<namespace>/<id>.json` under containerd. The file goes when the container does.

use std::path::PathBuf;
use std::time::SystemTime;

use lifecycle_hooks::health::HealthResult;

pub fn status_path(namespace: Option<&str>, id: &str) -> PathBuf {
    let root = std::env::var_os("LIFECYCLE_SHIM_STATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/lifecycle-shim"));
    root.join(namespace.unwrap_or(""))
        .join(format!("{id}.json"))
}

/// Where a container's status is written; removed when dropped.
pub struct StatusFile {
    path: PathBuf,
}

impl StatusFile {
    pub fn new(path: PathBuf) -> StatusFile {
        StatusFile { path }
    }

    pub fn record(&self, result: &HealthResult) {
        let checked_at = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let record = serde_json::json!({
            "status": result.health.as_str(),
            "output": result.output,
            "checkedAt": checked_at,
        });
        let written = self
            .path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| {
                let bytes = serde_json::to_vec_pretty(&record).unwrap_or_default();
                crate::os::files::write_atomically(&self.path, &bytes)
            });
        if let Err(error) = written {
            tracing::warn!(%error, path = %self.path.display(), "could not write the health status");
        }
    }
}

impl Drop for StatusFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// `lifecycle-shim status`: prints the status file; 1 if there is none.
pub fn show(namespace: Option<&str>, id: &str) -> i32 {
    let path = status_path(namespace, id);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            println!("{text}");
            0
        }
        Err(_) => {
            eprintln!("lifecycle-shim: no health status for {id} (no health check, or it is not running): {path:?}");
            1
        }
    }
}
