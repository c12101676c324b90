//! A hook's output: streamed line by line to a [`Sink`] (the shim's stderr under `run`, the
//! container's stderr stream under containerd) with its phase as a prefix, and the last
//! [`MAX_TAIL`] bytes kept for the report.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::sync::Arc;

use tokio::net::unix::pipe;

use super::stream::Stream;

/// How much of a hook's output is kept for its report.
pub const MAX_TAIL: usize = 4096;
/// Longer lines are shown in pieces of this size.
const MAX_LINE: usize = 4096;

/// Where hook output lines are shown.
#[derive(Clone)]
pub enum Sink {
    Stderr,
    /// A regular file of the container's (a `file://` log), so the lines are where its
    /// output is; whole lines are written at once so they do not interleave with the
    /// container's.
    File(Arc<File>),
    /// A pipe or fifo of the container's, e.g. its stderr fifo, so `ctr` or `docker logs` show
    /// the lines; written without ever making the shim wait for a reader.
    Stream(Stream),
}

impl Sink {
    pub fn write_line(&self, line: &str) {
        match self {
            Sink::Stderr => drop(io::stderr().lock().write_all(line.as_bytes())),
            Sink::File(file) => drop((&**file).write_all(line.as_bytes())),
            Sink::Stream(stream) => stream.write_line(line),
        }
    }
}

pub struct HookOutput {
    pipe: pipe::Receiver,
    sink: Sink,
    label: String,
    line: Vec<u8>,
    tail: Vec<u8>,
    eof: bool,
}

impl HookOutput {
    pub fn new(fd: OwnedFd, label: &str, sink: Sink) -> io::Result<HookOutput> {
        Ok(HookOutput {
            pipe: pipe::Receiver::from_owned_fd(fd)?,
            sink,
            label: label.to_owned(),
            line: Vec::new(),
            tail: Vec::new(),
            eof: false,
        })
    }

    pub fn is_eof(&self) -> bool {
        self.eof
    }

    /// Waits for output and handles what is there. Cancel-safe: nothing is lost if dropped.
    pub async fn read_some(&mut self) {
        if self.pipe.readable().await.is_err() {
            self.eof = true;
            return;
        }
        self.read_ready();
    }

    /// Handles what can be read without waiting: the rest of the output once the process has
    /// exited. Children it left behind may hold the pipe open, so EOF is not awaited.
    pub fn drain(&mut self) {
        while !self.eof && self.read_ready() {}
    }

    /// Returns false when nothing more is ready.
    fn read_ready(&mut self) -> bool {
        let mut buf = [0u8; 8192];
        match self.pipe.try_read(&mut buf) {
            Ok(0) => self.eof = true,
            Ok(n) => self.take(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => self.eof = true,
        }
        !self.eof
    }

    fn take(&mut self, bytes: &[u8]) {
        self.tail.extend_from_slice(bytes);
        if self.tail.len() > 2 * MAX_TAIL {
            self.tail.drain(..self.tail.len() - MAX_TAIL);
        }
        for &b in bytes {
            if b == b'\n' || self.line.len() >= MAX_LINE {
                self.show_line();
            }
            if b != b'\n' {
                self.line.push(b);
            }
        }
    }

    fn show_line(&mut self) {
        let line = format!("[{}] {}\n", self.label, String::from_utf8_lossy(&self.line));
        self.sink.write_line(&line);
        self.line.clear();
    }

    /// Shows a last unterminated line and returns the kept tail.
    pub fn finish(mut self) -> String {
        if !self.line.is_empty() {
            self.show_line();
        }
        let start = self.tail.len().saturating_sub(MAX_TAIL);
        String::from_utf8_lossy(&self.tail[start..]).into_owned()
    }
}
