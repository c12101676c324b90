//! Builds the gate (`gate/gate.rs`): a static program without std or libc that runs in any
//! container rootfs, embedded in the binary with `include_bytes!`. It speaks the system calls
//! of x86_64 and aarch64; on other targets the gate is empty, and `lifecycle-runc` does
//! without it (a failed init container's container is killed instead of exiting with its
//! status).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=gate/gate.rs");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let target = std::env::var("TARGET").expect("TARGET");
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").expect("CARGO_CFG_TARGET_ARCH");
    if arch != "x86_64" && arch != "aarch64" {
        std::fs::write(out.join("gate"), b"").expect("cannot write the empty gate");
        return;
    }
    let status = Command::new(rustc)
        .args([
            "--edition",
            "2021",
            "--crate-type",
            "bin",
            "--target",
            &target,
        ])
        .args([
            "-C",
            "panic=abort",
            "-C",
            "opt-level=s",
            "-C",
            "relocation-model=static",
        ])
        .args(["-C", "link-arg=-nostartfiles", "-C", "link-arg=-nostdlib"])
        .args(["-C", "link-arg=-static", "-C", "strip=symbols"])
        .arg("gate/gate.rs")
        .arg("-o")
        .arg(out.join("gate"))
        .status()
        .expect("cannot run rustc for the gate");
    assert!(status.success(), "building the gate failed");
}
