//! A directory laid out as the kubelet's atomic writer keeps a ConfigMap or Secret volume, and
//! updated the way it updates one: the payload in a new `..<timestamp>` directory, a
//! `..data_tmp` symlink to it renamed over `..data`, a symlink through `..data` for each file,
//! the old directory removed.

#![allow(dead_code)] // each suite uses its own part of the support code

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::Duration;

/// Waits twice a reconfigure entry's debounce period. That a change did *not* run the handler
/// can only be seen after a while: a test waits this long after it, then makes a change that
/// does run it, and compares every run.
pub fn wait_out_debounce(debounce_seconds: u64) {
    std::thread::sleep(Duration::from_secs(2 * debounce_seconds));
}

pub struct ConfigMapDir {
    dir: tempfile::TempDir,
    generation: u32,
}

impl ConfigMapDir {
    /// A volume holding `files` (name, content).
    pub fn new(files: &[(&str, &str)]) -> ConfigMapDir {
        let dir = tempfile::Builder::new()
            .prefix("lcs-configmap-")
            .tempdir()
            .unwrap();
        let mut volume = ConfigMapDir { dir, generation: 0 };
        volume.update(files);
        volume
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// One atomic update to `files`, as the kubelet makes it.
    pub fn update(&mut self, files: &[(&str, &str)]) {
        let root = self.dir.path();
        let old = fs::read_link(root.join("..data")).ok();
        self.generation += 1;
        let name = format!("..2026_12_02_00_00_00.{:09}", self.generation);
        fs::create_dir(root.join(&name)).unwrap();
        for (file, content) in files {
            fs::write(root.join(&name).join(file), content).unwrap();
        }
        symlink(&name, root.join("..data_tmp")).unwrap();
        fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
        for (file, _) in files {
            if fs::symlink_metadata(root.join(file)).is_err() {
                symlink(Path::new("..data").join(file), root.join(file)).unwrap();
            }
        }
        if let Some(old) = old {
            fs::remove_dir_all(root.join(old)).unwrap();
        }
    }
}
