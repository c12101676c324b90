//! The gate (`shim/gate/gate.rs`) of a container with init containers: runc creates the
//! container with the gate as its process, from a bundle derived in the supervisor's state
//! directory (the engine's bundle is never changed), so that once the init containers are done
//! the supervisor decides how the container's init goes on: the entrypoint, or the failed init
//! container's exit status, which the engine then sees as the container's.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::bundle::derived::absolute_root;
use crate::os::files::write_atomically;

static PROGRAM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/gate"));
/// Where the gate's directory is mounted in the container (read-only).
const MOUNT_POINT: &str = "/.lifecycle-runc";

pub struct Gate {
    dir: PathBuf,
}

impl Gate {
    /// Whether this build has a gate (see `build.rs`).
    pub fn available() -> bool {
        !PROGRAM.is_empty()
    }

    /// Writes the gate and a bundle derived from `bundle` that runs the container's process
    /// through it; returns the derived bundle's path.
    pub fn prepare(state: &Path, bundle: &Path) -> io::Result<PathBuf> {
        let gate = Gate::dir(state);
        std::fs::create_dir_all(&gate)?;
        let program = gate.join("gate");
        std::fs::write(&program, PROGRAM)?;
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755))?;
        let mut config: Value =
            serde_json::from_slice(&std::fs::read(bundle.join("config.json"))?)?;
        let args = config["process"]["args"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let gated = std::iter::once(Value::from(format!("{MOUNT_POINT}/gate"))).chain(args);
        config["process"]["args"] = gated.collect::<Vec<_>>().into();
        absolute_root(&mut config, bundle);
        let mount = json!({
            "destination": MOUNT_POINT,
            "type": "bind",
            "source": gate,
            "options": ["bind", "ro", "nosuid", "nodev"],
        });
        match config["mounts"].as_array_mut() {
            Some(mounts) => mounts.push(mount),
            None => config["mounts"] = json!([mount]),
        }
        let derived = state.join("bundle");
        std::fs::create_dir_all(&derived)?;
        std::fs::write(derived.join("config.json"), serde_json::to_vec(&config)?)?;
        Ok(derived)
    }

    /// The gate of the container whose supervisor keeps its state in `state`, if it has one.
    pub fn find(state: &Path) -> Option<Gate> {
        let dir = Gate::dir(state);
        dir.is_dir().then_some(Gate { dir })
    }

    fn dir(state: &Path) -> PathBuf {
        state.join("gate")
    }

    /// Before `runc start`: the entrypoint runs.
    pub fn open(&self) -> io::Result<()> {
        self.decide("go")
    }

    /// Before `runc start`: the container exits with `code` at once.
    pub fn exit_with(&self, code: i32) -> io::Result<()> {
        self.decide(&format!("exit {}", code & 0xff))
    }

    fn decide(&self, verdict: &str) -> io::Result<()> {
        write_atomically(&self.dir.join("verdict"), verdict.as_bytes())
    }
}
