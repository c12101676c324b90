//! The command line: `run` and `check`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::bundle::Bundle;
use crate::run::{run, RunOptions, EXIT_BAD_INPUT, EXIT_RUNTIME_FAILURE};

#[derive(Parser)]
#[command(
    name = "lifecycle-shim",
    version,
    about = "Kubernetes-style lifecycle hooks for OCI containers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a bundle in the foreground with its lifecycle hooks, like `runc run`.
    Run {
        /// The OCI runtime binary.
        #[arg(long, default_value = "runc")]
        runtime: PathBuf,
        /// The runtime's state directory (runc's --root).
        #[arg(long)]
        root: Option<PathBuf>,
        /// Container id [default: the bundle directory's name and the shim's pid].
        #[arg(long)]
        id: Option<String>,
        /// Read the lifecycle spec from this file instead of the bundle's annotations.
        #[arg(long)]
        spec: Option<PathBuf>,
        bundle: PathBuf,
    },
    /// Print a running container's latest health-check status.
    Status {
        /// The containerd namespace, for a container run by the containerd shim.
        #[arg(long)]
        namespace: Option<String>,
        id: String,
    },
    /// Validate a bundle's lifecycle spec and print the resolved plan; nothing runs.
    Check {
        /// Read the lifecycle spec from this file instead of the bundle's annotations.
        #[arg(long)]
        spec: Option<PathBuf>,
        /// Look where `lifecycle-runc` looks: also /etc/lifecycle-shim/spec.json as the
        /// container would see it.
        #[arg(long, conflicts_with = "spec")]
        lifecycle_runc: bool,
        bundle: PathBuf,
    },
}

pub fn main() -> ExitCode {
    let args: Vec<_> = std::env::args_os().collect();
    if crate::containerd::invoked_as_shim(&args) {
        return crate::containerd::main();
    }
    if crate::runtime::invoked_as_runtime(&args) {
        return crate::runtime::main();
    }
    let cli = Cli::parse_from(args);
    crate::logging::init();
    let code = match cli.command {
        Command::Check {
            spec,
            lifecycle_runc,
            bundle,
        } => check(&bundle, spec.as_deref(), lifecycle_runc),
        Command::Status { namespace, id } => {
            crate::lifecycle::status::show(namespace.as_deref(), &id)
        }
        Command::Run {
            runtime,
            root,
            id,
            spec,
            bundle,
        } => {
            let options = RunOptions {
                bundle,
                id,
                runtime,
                root,
                spec_file: spec,
            };
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime.block_on(run(options)).unwrap_or_else(|error| {
                    eprintln!("lifecycle-shim: error: {error}");
                    error.exit_code()
                }),
                Err(error) => {
                    eprintln!("lifecycle-shim: error: cannot start the async runtime: {error}");
                    EXIT_RUNTIME_FAILURE
                }
            }
        }
    };
    ExitCode::from(code.clamp(0, 255) as u8)
}

fn check(bundle: &std::path::Path, spec: Option<&std::path::Path>, lifecycle_runc: bool) -> i32 {
    let plan_of = |b: &Bundle| match lifecycle_runc {
        true => b.runtime_plan(),
        false => b.plan(spec),
    };
    let planned = Bundle::load(bundle).and_then(|b| {
        let (origin, plan) = plan_of(&b)?;
        // Found already, in the plan's validation.
        let watched = b.watched(&plan).unwrap_or_default();
        Ok((origin, plan, watched))
    });
    match planned {
        Ok((origin, plan, watched)) => {
            println!("source: {origin}");
            print!("{plan}");
            for path in watched {
                println!("  watching {path}");
            }
            0
        }
        Err(error) => {
            eprintln!("lifecycle-shim: error: {error}");
            EXIT_BAD_INPUT
        }
    }
}
