//! Log events to stderr; `LIFECYCLE_SHIM_LOG` sets the level (error, warn, info, debug, trace).

use std::io::IsTerminal;

use tracing::level_filters::LevelFilter;

/// `LIFECYCLE_SHIM_LOG`, default `info`.
fn level() -> LevelFilter {
    std::env::var("LIFECYCLE_SHIM_LOG")
        .ok()
        .and_then(|l| l.parse::<LevelFilter>().ok())
        .unwrap_or(LevelFilter::INFO)
}

pub fn init() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level())
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// Under `lifecycle-runc`, the supervisor logs to a file in its state directory, which is on
/// tmpfs and lives as long as the container: it is bounded (see [`BoundedLog`]).
pub fn init_file(path: &std::path::Path) {
    let Ok(log) = BoundedLog::open(path.to_owned(), MAX_LOG_BYTES) else {
        return;
    };
    init_writer(log);
}

/// The size at which a supervisor's log is rotated (one previous file is kept).
const MAX_LOG_BYTES: u64 = 1 << 20;

/// A log file that never grows past `max` bytes: beyond it, it becomes `<name>.1` (replacing
/// the one before) and a new file starts. A health check every second logs a line a second;
/// a container may run for months.
pub struct BoundedLog {
    path: std::path::PathBuf,
    file: std::fs::File,
    written: u64,
    max: u64,
}

impl BoundedLog {
    pub fn open(path: std::path::PathBuf, max: u64) -> std::io::Result<BoundedLog> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        let written = file.metadata()?.len();
        Ok(BoundedLog {
            path,
            file,
            written,
            max,
        })
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let mut old = self.path.clone().into_os_string();
        old.push(".1");
        std::fs::rename(&self.path, old)?;
        *self = BoundedLog::open(self.path.clone(), self.max)?;
        Ok(())
    }
}

impl std::io::Write for BoundedLog {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if self.written > 0 && self.written + bytes.len() as u64 > self.max {
            self.rotate()?;
        }
        let n = self.file.write(bytes)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Under containerd: log to the `log` fifo containerd opened in the bundle directory (the
/// shim's working directory), so events reach containerd's own log.
pub fn init_shim_log() {
    let Ok(fifo) = std::fs::OpenOptions::new().write(true).open("log") else {
        return;
    };
    init_writer(fifo);
}

fn init_writer(file: impl std::io::Write + Send + 'static) {
    tracing_subscriber::fmt()
        .with_writer(std::sync::Mutex::new(file))
        .with_max_level(level())
        .with_target(false)
        .with_ansi(false)
        .init();
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn a_bounded_log_keeps_at_most_two_files_of_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("supervisor.log");
        let mut log = BoundedLog::open(path.clone(), 100).unwrap();
        for n in 0..50 {
            writeln!(log, "line {n:02} of the log").unwrap();
        }
        let size = |p: &std::path::Path| std::fs::metadata(p).unwrap().len();
        let previous = dir.path().join("supervisor.log.1");
        assert!(size(&path) <= 100 && size(&previous) <= 100);
        let last = std::fs::read_to_string(&path).unwrap();
        assert!(last.ends_with("line 49 of the log\n"), "{last}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }
}
