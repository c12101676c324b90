//! The containerd runtime v2 shim: installed as `containerd-shim-lifecycle-v2` and selected
//! with runtime type `io.containerd.lifecycle.v2`. It serves containerd's task v2 API (which
//! containerd 1.6, 1.7 and 2.x accept) over ttrpc, built on containerd's `containerd-shim`
//! crate, with runc underneath and the lifecycle hooks of the bundle's annotation.

mod console;
mod error;
mod events;
mod exec;
mod info;
mod leftovers;
mod logbinary;
mod options;
mod service;
mod shim;
mod start;
mod state;
mod stdio;
mod task;

use std::process::ExitCode;

use containerd_shim::Config;

pub const RUNTIME_ID: &str = "io.containerd.lifecycle.v2";
pub const BINARY_NAME: &str = "containerd-shim-lifecycle-v2";

/// Whether the process was started by containerd (as `containerd-shim-lifecycle-v2`) or by
/// the containerd-shim crate re-executing itself; both pass Go-style flags, `-namespace`
/// first.
pub fn invoked_as_shim(args: &[std::ffi::OsString]) -> bool {
    let name = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .is_some_and(|n| n == BINARY_NAME);
    name || args.get(1).is_some_and(|a| a == "-namespace")
}

/// The shim's entry point: `-info`, `-v`, the `start` action here; the `delete` action and
/// the long-running shim through the containerd-shim crate.
pub fn main() -> ExitCode {
    let args: Vec<_> = std::env::args_os().collect();
    let flags = match containerd_shim::parse(&args[1..]) {
        Ok(flags) => flags,
        Err(error) => return fail(&error),
    };
    if flags.info {
        return match info::info() {
            Ok(bytes) => print(&bytes),
            Err(error) => fail(&error),
        };
    }
    if flags.version {
        println!(
            "{BINARY_NAME}:\n  Runtime: {RUNTIME_ID}\n  Version: {}",
            env!("CARGO_PKG_VERSION")
        );
        return ExitCode::SUCCESS;
    }
    serve(flags)
}

/// Writes an answer for containerd on stdout.
fn print(bytes: &[u8]) -> ExitCode {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => fail(&error),
    }
}

/// containerd shows a failed action's output: the error goes there.
fn fail(error: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("{RUNTIME_ID}: {error}");
    ExitCode::FAILURE
}

fn serve(flags: containerd_shim::Flags) -> ExitCode {
    // The crate's socket setup runs on tokio's blocking pool: see one_thread_runtime.
    let runtime = match crate::os::one_thread_runtime() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("{BINARY_NAME}: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    if flags.action == "start" {
        return match runtime.block_on(start::start(&flags)) {
            Ok(reply) => print(&reply),
            Err(error) => fail(&error),
        };
    }
    let config = Config {
        // The shim's own reaper is the only one (see crate::os::reaper); its logging goes to
        // containerd's log fifo through tracing.
        no_reaper: true,
        no_setup_logger: true,
        ..Config::default()
    };
    runtime.block_on(containerd_shim::asynchronous::run::<shim::LifecycleShim>(
        RUNTIME_ID,
        Some(config),
    ));
    ExitCode::SUCCESS
}
