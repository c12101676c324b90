//! The OS layer: the one reaper of child processes, the runc command line, entering a
//! container's network namespace, runc's pid files, pidfds for processes that are not our
//! children, and files replaced atomically.

pub mod files;
pub mod netns;
pub mod pidfd;
pub mod pidfile;
pub mod reaper;
pub mod runc;

/// The async runtime of a long-running process (shim, supervisor): one thread; the blocking
/// pool's threads, if any are ever needed, go soon after (tokio's default keeps one 10 s).
pub fn one_thread_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_keep_alive(std::time::Duration::from_millis(100))
        .build()
}

/// The fields of `/proc/PID/stat` after the command name (which is in parentheses and may
/// contain anything): the state (field 3) first. `None` if the process is gone.
pub fn proc_stat(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}
