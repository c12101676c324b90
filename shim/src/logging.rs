//! Log events to stderr; `LIFECYCLE_SHIM_LOG` sets the level (error, warn, info, debug, trace).

use std::io::IsTerminal;

use tracing::level_filters::LevelFilter;

pub fn init() {
    let level = std::env::var("LIFECYCLE_SHIM_LOG")
        .ok()
        .and_then(|l| l.parse::<LevelFilter>().ok())
        .unwrap_or(LevelFilter::INFO);
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// Under `lifecycle-runc`, the supervisor logs to a file in its state directory.
pub fn init_file(path: &std::path::Path) {
    let Ok(file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    else {
        return;
    };
    init_writer(file);
}

/// Under containerd: log to the `log` fifo containerd opened in the bundle directory (the
/// shim's working directory), so events reach containerd's own log.
pub fn init_shim_log() {
    let Ok(fifo) = std::fs::OpenOptions::new().write(true).open("log") else {
        return;
    };
    init_writer(fifo);
}

fn init_writer(file: std::fs::File) {
    let level = std::env::var("LIFECYCLE_SHIM_LOG")
        .ok()
        .and_then(|l| l.parse::<LevelFilter>().ok())
        .unwrap_or(LevelFilter::INFO);
    tracing_subscriber::fmt()
        .with_writer(std::sync::Mutex::new(file))
        .with_max_level(level)
        .with_target(false)
        .with_ansi(false)
        .init();
}
