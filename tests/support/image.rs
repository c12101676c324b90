//! A one-layer OCI image made from a busybox rootfs and imported into a private containerd,
//! so containers get their rootfs as snapshotter mounts (as with any real image) without a
//! registry.

#![allow(dead_code)] // each suite uses its own part of the helpers

use std::fs;
use std::path::Path;
use std::process::Command;

use serde_json::json;

use crate::containerd::Containerd;

/// Writes `bytes` as a blob of the OCI layout at `layout` and returns its descriptor fields.
fn blob(layout: &Path, bytes: &[u8]) -> (String, usize) {
    let tmp = layout.join("blob.tmp");
    fs::write(&tmp, bytes).unwrap();
    let digest = sha256(&tmp);
    fs::rename(&tmp, layout.join("blobs/sha256").join(&digest)).unwrap();
    (format!("sha256:{digest}"), bytes.len())
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success(), "sha256sum failed");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// Builds an image named `name` whose single layer is `rootfs` and whose command is `cmd`,
/// and imports it into the harness's namespace.
pub fn import(containerd: &Containerd, name: &str, rootfs: &Path, cmd: &[&str]) {
    let work = tempfile::Builder::new()
        .prefix("lcs-image-")
        .tempdir()
        .unwrap();
    let layout = work.path().join("layout");
    fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    let layer_tar = work.path().join("layer.tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(rootfs)
        .arg("-cf")
        .arg(&layer_tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success(), "tar of the rootfs failed");
    let (layer, layer_size) = blob(&layout, &fs::read(&layer_tar).unwrap());
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": cmd},
        "rootfs": {"type": "layers", "diff_ids": [layer]}
    });
    let (config, config_size) = blob(&layout, config.to_string().as_bytes());
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": layer_size}]
    });
    let (manifest, manifest_size) = blob(&layout, manifest.to_string().as_bytes());
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest,
            "size": manifest_size,
            "annotations": {"io.containerd.image.name": name}
        }]
    });
    fs::write(layout.join("index.json"), index.to_string()).unwrap();
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion": "1.0.0"}"#,
    )
    .unwrap();
    let archive = work.path().join("image.tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&archive)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success(), "tar of the image layout failed");
    let out = containerd.ctr(&["images", "import", archive.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "ctr images import: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Mount points under `dir` in this machine's mount table.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|line| line.split_whitespace().nth(4))
        .filter(|point| point.starts_with(&*dir))
        .map(str::to_owned)
        .collect()
}
