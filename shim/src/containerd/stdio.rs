//! A task's stdio as containerd describes it: fifo paths (what `ctr`, Docker and the CRI plugin
//! create), `file://` and `binary://` log URIs, a terminal, or nothing. The container gets the fifos themselves, so its
//! output reaches containerd without passing through the shim; the shim writes hook output
//! into the same stderr stream through a description of its own that never blocks (a
//! [`Stream`]).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;

use super::console::{ConsoleSocket, PendingConsole};
use super::logbinary;
use crate::lifecycle::output::Sink;
use crate::lifecycle::stream::Stream;
use crate::os::reaper::Reaper;
use crate::os::runc::ProcessIo;

#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    #[error("{stream} {path:?}: {source}")]
    Open {
        stream: &'static str,
        path: String,
        source: io::Error,
    },
    #[error("{0}")]
    Unsupported(String),
}

impl From<logbinary::LogBinaryError> for StdioError {
    fn from(error: logbinary::LogBinaryError) -> StdioError {
        match error {
            logbinary::LogBinaryError::NoBinary(_) => StdioError::Unsupported(error.to_string()),
            logbinary::LogBinaryError::Start { path, source } => StdioError::Open {
                stream: "logging binary",
                path,
                source,
            },
        }
    }
}

/// The paths containerd gave for a process.
pub struct StdioPaths<'a> {
    pub stdin: &'a str,
    pub stdout: &'a str,
    pub stderr: &'a str,
    pub terminal: bool,
    /// The runtime options' `IoUid`/`IoGid`: the owner of the fifos and pipes the process gets,
    /// so that a process of that user can reopen them (`/dev/stdout`).
    pub owner: Option<IoOwner>,
}

/// A uid and gid for a process's stdio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoOwner {
    pub uid: u32,
    pub gid: u32,
}

/// What a process is started with, and where hook output for it goes.
pub struct OpenedStdio {
    pub io: ProcessIo,
    pub hook_sink: Option<Sink>,
    /// For a terminal: the console socket runc sends the pty to, and the streams it joins.
    pub console: Option<PendingConsole>,
}

/// Opens a process's stdio. A `binary://` logger is started first and awaited until ready.
pub async fn open(
    paths: &StdioPaths<'_>,
    logger: &LoggerContext<'_>,
) -> Result<OpenedStdio, StdioError> {
    if paths.terminal {
        return open_terminal(paths);
    }
    if paths.stdout.starts_with("binary://") {
        let pipes = logbinary::start(
            paths.stdout,
            logger.container_id,
            logger.namespace,
            logger.reaper,
        )
        .await?;
        for pipe in [&pipes.stdout, &pipes.stderr] {
            chown(pipe, paths.owner).map_err(|e| open_error("stdout", paths.stdout, e))?;
        }
        let sink = hook_sink("stderr", paths.stdout, &pipes.stderr)?;
        return Ok(OpenedStdio {
            io: ProcessIo {
                stdin: open_stdin(paths)?,
                stdout: Stdio::from(pipes.stdout),
                stderr: Stdio::from(pipes.stderr),
                console_socket: None,
            },
            hook_sink: Some(sink),
            console: None,
        });
    }
    let stdin = open_stdin(paths)?;
    let (stdout, stderr, sink) = match (log_file(paths.stdout), log_file(paths.stderr)) {
        (Some(path), _) | (_, Some(path)) => {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| open_error("log file", path, source))?;
            let sink = Sink::File(Arc::new(
                file.try_clone()
                    .map_err(|e| open_error("log file", path, e))?,
            ));
            let stderr = file
                .try_clone()
                .map_err(|e| open_error("log file", path, e))?;
            (Stdio::from(file), Stdio::from(stderr), Some(sink))
        }
        _ => {
            if paths.stdout.contains("://") || paths.stderr.contains("://") {
                return Err(StdioError::Unsupported(format!(
                    "log URI {:?} is not supported (fifos, file:// and binary:// are)",
                    paths.stdout
                )));
            }
            let stdout = match paths.stdout {
                "" => Stdio::null(),
                path => Stdio::from(open_fifo("stdout", path, Direction::Write, paths.owner)?),
            };
            let (stderr, sink) = match paths.stderr {
                "" => (Stdio::null(), None),
                path => {
                    let fifo = open_fifo("stderr", path, Direction::Write, paths.owner)?;
                    let sink = hook_sink("stderr", path, &fifo)?;
                    (Stdio::from(fifo), Some(sink))
                }
            };
            (stdout, stderr, sink)
        }
    };
    Ok(OpenedStdio {
        io: ProcessIo {
            stdin,
            stdout,
            stderr,
            console_socket: None,
        },
        hook_sink: sink,
        console: None,
    })
}

/// A terminal's stdio: runc gets none, only the console socket; the shim later joins the pty
/// to the stdin and stdout fifos (a terminal has no separate stderr).
fn open_terminal(paths: &StdioPaths<'_>) -> Result<OpenedStdio, StdioError> {
    let socket = ConsoleSocket::new().map_err(|e| open_error("console socket", "", e))?;
    // The process gets the pty, not these: they stay the shim's.
    let stdin = match paths.stdin {
        "" => None,
        path => Some(open_fifo("stdin", path, Direction::Read, None)?),
    };
    let stdout = match paths.stdout {
        "" => None,
        path => Some(open_fifo("stdout", path, Direction::Write, None)?),
    };
    let hook_sink = match &stdout {
        Some(file) => Some(hook_sink("stdout", paths.stdout, file)?),
        None => None,
    };
    Ok(OpenedStdio {
        io: ProcessIo {
            stdin: Stdio::null(),
            stdout: Stdio::null(),
            stderr: Stdio::null(),
            console_socket: Some(socket.path()),
        },
        hook_sink,
        console: Some(PendingConsole {
            socket,
            stdin,
            stdout,
        }),
    })
}

/// Who a `binary://` logger logs for.
pub struct LoggerContext<'a> {
    pub container_id: &'a str,
    pub namespace: &'a str,
    pub reaper: &'a Reaper,
}

fn open_stdin(paths: &StdioPaths<'_>) -> Result<Stdio, StdioError> {
    Ok(match paths.stdin {
        "" => Stdio::null(),
        path => Stdio::from(open_fifo("stdin", path, Direction::Read, paths.owner)?),
    })
}

/// Gives a fifo or pipe to the options' `IoUid`/`IoGid`, as runc's shim does with its pipes.
/// Regular log files (`file://`) keep their owner.
fn chown(fd: &impl std::os::fd::AsFd, owner: Option<IoOwner>) -> io::Result<()> {
    let Some(IoOwner { uid, gid }) = owner else {
        return Ok(());
    };
    nix::unistd::fchown(
        fd,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
    )
    .map_err(io::Error::from)
}

fn log_file(uri: &str) -> Option<&str> {
    uri.strip_prefix("file://")
}

enum Direction {
    Read,
    Write,
}

/// Opens a fifo without blocking on the other end: containerd may open its side later (or, for
/// stdin, never write). Read-write keeps a write open from failing when no reader is there yet.
fn open_fifo(
    stream: &'static str,
    path: &str,
    direction: Direction,
    owner: Option<IoOwner>,
) -> Result<File, StdioError> {
    let mut options = OpenOptions::new();
    match direction {
        Direction::Read => options.read(true).custom_flags(libc::O_NONBLOCK),
        Direction::Write => options.read(true).write(true),
    };
    let file = options
        .open(Path::new(path))
        .map_err(|source| open_error(stream, path, source))?;
    if let Direction::Read = direction {
        // The container reads with ordinary blocking reads.
        let flags = nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_GETFL)
            .map_err(|e| open_error(stream, path, e.into()))?;
        let flags = nix::fcntl::OFlag::from_bits_truncate(flags) & !nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_SETFL(flags))
            .map_err(|e| open_error(stream, path, e.into()))?;
    }
    chown(&file, owner).map_err(|e| open_error(stream, path, e))?;
    Ok(file)
}

/// Hook output's sink on a pipe or fifo the process writes to: a [`Stream`], so that the shim,
/// which serves every container of a pod on one thread, never waits for the stream's reader.
fn hook_sink(
    stream: &'static str,
    path: &str,
    pipe: &impl std::os::fd::AsFd,
) -> Result<Sink, StdioError> {
    Stream::open(pipe)
        .map(Sink::Stream)
        .map_err(|e| open_error(stream, path, e))
}

fn open_error(stream: &'static str, path: &str, source: io::Error) -> StdioError {
    StdioError::Open {
        stream,
        path: path.to_owned(),
        source,
    }
}
