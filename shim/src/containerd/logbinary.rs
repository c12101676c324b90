//! `binary://` log URIs (nerdctl's logging, `ctr run --log-uri binary:///...`): containerd's
//! protocol starts the binary with the container's stdout on fd 3, its stderr on fd 4 and a
//! pipe on fd 5 that it writes to or closes once it is ready; `CONTAINER_ID` and `CONTAINER_NAMESPACE` are
//! in its environment, and the URI's query becomes its arguments.

// Placing descriptors at fixed numbers in the child needs dup2 between fork and exec.
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use nix::fcntl::OFlag;
use nix::unistd::pipe2;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;

use crate::os::reaper::Reaper;

#[derive(Debug, thiserror::Error)]
pub enum LogBinaryError {
    #[error("log URI {0:?} names no binary")]
    NoBinary(String),
    #[error("logging binary {path:?}: {source}")]
    Start {
        path: String,
        source: std::io::Error,
    },
}

/// The write ends the container gets, once the logging binary is ready.
pub struct LogPipes {
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// The binary's path and arguments from `binary:///path?key=value&flag`.
pub fn parse(uri: &str) -> Option<(String, Vec<String>)> {
    let rest = uri.strip_prefix("binary://")?;
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path.is_empty() {
        return None;
    }
    let mut args = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        args.push(percent_decode(key));
        if !value.is_empty() {
            args.push(percent_decode(value));
        }
    }
    Some((percent_decode(path), args))
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).and_then(|&b| hex(b)),
            bytes.get(i + 2).and_then(|&b| hex(b)),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Starts the logging binary and waits until it says it is ready.
pub async fn start(
    uri: &str,
    container_id: &str,
    namespace: &str,
    reaper: &Reaper,
) -> Result<LogPipes, LogBinaryError> {
    let (path, args) = parse(uri).ok_or_else(|| LogBinaryError::NoBinary(uri.to_owned()))?;
    let error = |source: std::io::Error| LogBinaryError::Start {
        path: path.clone(),
        source,
    };
    let flags = OFlag::O_CLOEXEC;
    let (out_r, out_w) = pipe2(flags).map_err(|e| error(e.into()))?;
    let (err_r, err_w) = pipe2(flags).map_err(|e| error(e.into()))?;
    let (ready_r, ready_w) = pipe2(flags).map_err(|e| error(e.into()))?;
    let mut cmd = Command::new(&path);
    cmd.args(&args)
        .env("CONTAINER_ID", container_id)
        .env("CONTAINER_NAMESPACE", namespace)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let fds = [out_r.as_raw_fd(), err_r.as_raw_fd(), ready_w.as_raw_fd()];
    // SAFETY: between fork and exec only fcntl and dup2 run, both async-signal-safe. The
    // three descriptors (open in the parent until after spawn) are first copied above 10, so
    // none is overwritten before it is placed, then to 3, 4 and 5, where dup2 leaves them
    // without CLOEXEC.
    unsafe {
        cmd.pre_exec(move || {
            let mut high = [0; 3];
            for (slot, fd) in high.iter_mut().zip(fds) {
                *slot = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10);
                if *slot < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (target, fd) in (3..).zip(high) {
                if libc::dup2(fd, target) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    reaper.spawn(&mut cmd).map_err(error)?;
    drop((out_r, err_r, ready_w));
    // Ready is one byte or the end of the pipe, as containerd's own shims read it (a logger's
    // children may keep fd 5 open).
    let mut ready = pipe::Receiver::from_owned_fd(ready_r).map_err(error)?;
    ready.read(&mut [0u8; 1]).await.map_err(error)?;
    Ok(LogPipes {
        stdout: out_w,
        stderr: err_w,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_become_a_path_and_arguments() {
        assert_eq!(
            parse("binary:///usr/bin/logger?dir=%2Fvar%2Flog&verbose"),
            Some((
                "/usr/bin/logger".to_owned(),
                vec!["dir".into(), "/var/log".into(), "verbose".into()]
            ))
        );
        assert_eq!(
            parse("binary:///bin/x"),
            Some(("/bin/x".to_owned(), vec![]))
        );
        assert_eq!(parse("binary://"), None);
        assert_eq!(parse("file:///x"), None);
    }
}
