//! Terminals (`ctr run -t`, `docker run -t`): runc creates the pty and sends its master over a
//! console socket; the shim copies between the master and containerd's stdin/stdout fifos and
//! resizes it on ResizePty.

// Receiving a descriptor over SCM_RIGHTS and the TIOCSWINSZ ioctl have no safe wrappers.
#![allow(unsafe_code)]

use std::fs::File;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr};
use tokio::io::Interest;
use tokio::net::UnixListener;

use crate::os::runc::RuncError;

/// The socket runc sends the pty master to, in a private directory of its own (socket paths
/// must be short, which a bundle path may not be).
pub struct ConsoleSocket {
    dir: tempfile::TempDir,
    listener: UnixListener,
}

impl ConsoleSocket {
    pub fn new() -> io::Result<ConsoleSocket> {
        let dir = tempfile::Builder::new().prefix("lcs-pty-").tempdir()?;
        let listener = UnixListener::bind(dir.path().join("s"))?;
        Ok(ConsoleSocket { dir, listener })
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("s")
    }

    /// Waits for runc to connect and send the master.
    pub async fn receive(&self) -> io::Result<OwnedFd> {
        let (stream, _) = self.listener.accept().await?;
        loop {
            stream.readable().await?;
            match stream.try_io(Interest::READABLE, || receive_fd(stream.as_raw_fd())) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                result => return result,
            }
        }
    }
}

fn receive_fd(socket: RawFd) -> io::Result<OwnedFd> {
    let mut name = [0u8; 4096];
    let mut iov = [IoSliceMut::new(&mut name)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<UnixAddr>(socket, &mut iov, Some(&mut space), MsgFlags::MSG_DONTWAIT)?;
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            if let Some(&fd) = fds.first() {
                // SAFETY: the kernel just installed this descriptor in our table for us
                // (SCM_RIGHTS); nothing else owns it.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    Err(io::Error::other(
        "runc sent no terminal on the console socket",
    ))
}

/// Receiving or attaching a terminal failed.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct ConsoleError {
    what: &'static str,
    source: std::io::Error,
}

fn console_error(what: &'static str) -> impl FnOnce(std::io::Error) -> ConsoleError {
    move |source| ConsoleError { what, source }
}

/// A terminal still to be received from runc, and the streams to attach it to.
pub struct PendingConsole {
    pub socket: ConsoleSocket,
    pub stdin: Option<File>,
    pub stdout: Option<File>,
}

impl PendingConsole {
    /// Runs `call`, the runc call that makes the process (create, exec); when the process has
    /// a terminal, receives the master runc sends meanwhile and attaches it.
    pub async fn attach_during<E: From<ConsoleError> + From<RuncError>>(
        pending: Option<PendingConsole>,
        call: impl Future<Output = Result<(), RuncError>>,
    ) -> Result<Option<Console>, E> {
        let Some(pending) = pending else {
            call.await?;
            return Ok(None);
        };
        let receive = pending.socket.receive();
        tokio::pin!(call, receive);
        let mut master = None;
        loop {
            tokio::select! {
                result = &mut call => break result?,
                fd = &mut receive, if master.is_none() => {
                    master = Some(fd.map_err(console_error("receiving the terminal from runc"))?);
                }
            }
        }
        // runc sends the master before `call` returns.
        let master = match master {
            Some(master) => master,
            None => receive
                .await
                .map_err(console_error("receiving the terminal from runc"))?,
        };
        let console = Console::attach(master, pending.stdin, pending.stdout)
            .map_err(console_error("attaching the terminal"))?;
        Ok(Some(console))
    }
}

/// A container's terminal, attached to its stdio.
pub struct Console {
    master: File,
}

impl Console {
    /// Copies `stdin` into the terminal and the terminal into `stdout`, on two threads that end
    /// with the streams (the master reads EIO once the container's side is closed).
    pub fn attach(
        master: OwnedFd,
        stdin: Option<File>,
        stdout: Option<File>,
    ) -> io::Result<Console> {
        let master = File::from(master);
        if let Some(mut stdout) = stdout {
            let mut from = master.try_clone()?;
            std::thread::Builder::new()
                .name("pty-out".into())
                .spawn(move || io::copy(&mut from, &mut stdout))?;
        }
        if let Some(mut stdin) = stdin {
            let mut to = master.try_clone()?;
            std::thread::Builder::new()
                .name("pty-in".into())
                .spawn(move || io::copy(&mut stdin, &mut to))?;
        }
        Ok(Console { master })
    }

    pub fn resize(&self, width: u16, height: u16) -> io::Result<()> {
        let size = libc::winsize {
            ws_row: height,
            ws_col: width,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer, which is valid for the call.
        let rc = unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}
