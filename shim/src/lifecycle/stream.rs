//! A container's output stream (its stderr fifo, a logging binary's pipe, a terminal's stdout
//! fifo) as the sink of hook output. Lines are queued and written by a task of their own when
//! the stream takes them: a stream nobody reads (`ctr run -d` has gone, containerd is
//! restarting) fills up, and a write into it would stop the shim's one thread, which serves
//! every container of a pod (issue 15). What waits is bounded; lines past that are dropped and
//! a note says how many.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot};

/// How many bytes of lines may wait for the stream: twice what a pipe holds by default.
const MAX_QUEUED: usize = 128 * 1024;

/// How long the lines still queued when the container is done may wait for a reader before
/// the stream is closed without them.
const FLUSH_GRACE: Duration = Duration::from_secs(10);

/// A clonable handle on the queue; the stream closes once every handle is gone and the queue
/// is written out (or [`FLUSH_GRACE`] has passed).
#[derive(Clone)]
pub struct Stream(Arc<Handle>);

struct Handle {
    lines: mpsc::UnboundedSender<String>,
    counts: Arc<Counts>,
    /// Dropped with the last handle: the writer's grace period starts.
    _gone: oneshot::Sender<()>,
}

#[derive(Default)]
struct Counts {
    queued: AtomicUsize,
    dropped: AtomicU64,
}

impl Stream {
    /// A stream writing into the pipe or fifo `fd` through a file description of its own, so
    /// that making it non-blocking leaves the container's (the same pipe) as it is. Must be
    /// called inside the tokio runtime.
    pub fn open(fd: &impl AsFd) -> io::Result<Stream> {
        let file = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd()))?;
        let pipe = pipe::Sender::from_file(file)?;
        let (lines, queue) = mpsc::unbounded_channel();
        let (gone, abandoned) = oneshot::channel();
        let counts = Arc::new(Counts::default());
        tokio::spawn(write_out(pipe, queue, counts.clone(), abandoned));
        Ok(Stream(Arc::new(Handle {
            lines,
            counts,
            _gone: gone,
        })))
    }

    /// Queues `line`, or drops it if too much is waiting already.
    pub fn write_line(&self, line: &str) {
        let counts = &self.0.counts;
        let size = line.len();
        if counts.queued.fetch_add(size, Ordering::Relaxed) + size > MAX_QUEUED {
            counts.queued.fetch_sub(size, Ordering::Relaxed);
            counts.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let dropped = counts.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            let note = format!(
                "lifecycle-shim: {dropped} lines of hook output dropped: the stream was full\n"
            );
            counts.queued.fetch_add(note.len(), Ordering::Relaxed);
            let _ = self.0.lines.send(note);
        }
        let _ = self.0.lines.send(line.to_owned());
    }
}

/// Writes the queued lines as the stream takes them, until every handle is gone and the queue
/// is empty, or [`FLUSH_GRACE`] after the handles are gone.
async fn write_out(
    mut pipe: pipe::Sender,
    mut queue: mpsc::UnboundedReceiver<String>,
    counts: Arc<Counts>,
    abandoned: oneshot::Receiver<()>,
) {
    let write = async {
        while let Some(line) = queue.recv().await {
            counts.queued.fetch_sub(line.len(), Ordering::Relaxed);
            // Lines up to PIPE_BUF go in whole: they do not interleave with the container's.
            if pipe.write_all(line.as_bytes()).await.is_err() {
                return;
            }
        }
    };
    let grace = async {
        let _ = abandoned.await;
        tokio::time::sleep(FLUSH_GRACE).await;
    };
    tokio::select! {
        () = write => {}
        () = grace => {}
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::io::Read;

    use super::*;

    /// A pipe whose read end does not block.
    fn pipe_pair() -> (File, File) {
        let (reader, writer) = nix::unistd::pipe().unwrap();
        let flags = nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(&reader, nix::fcntl::FcntlArg::F_SETFL(flags)).unwrap();
        (File::from(reader), File::from(writer))
    }

    /// Reads what is there; `None` at the end of the stream (every writer gone).
    fn read_ready(reader: &mut File, text: &mut Vec<u8>) -> Option<()> {
        let mut buf = [0u8; 65536];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => return None,
                Ok(n) => text.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Some(()),
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// A full pipe that nobody reads: lines queue up to the bound and the rest are dropped,
    /// without the caller ever waiting; once it is read, the queue arrives, then a note on the
    /// drops before the next line.
    #[tokio::test]
    async fn a_full_stream_never_blocks_and_drops_past_the_bound() {
        let (mut reader, writer) = pipe_pair();
        let stream = Stream::open(&writer).unwrap();
        // The caller's own description of the pipe stays blocking.
        let flags = nix::fcntl::fcntl(&writer, nix::fcntl::FcntlArg::F_GETFL).unwrap();
        assert_eq!(flags & libc::O_NONBLOCK, 0);
        let line = format!("{}\n", "x".repeat(1023));
        for _ in 0..1024 {
            stream.write_line(&line);
        }
        let mut text = Vec::new();
        while stream.0.counts.queued.load(Ordering::Relaxed) > 0 {
            read_ready(&mut reader, &mut text);
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        stream.write_line("last\n");
        drop(stream);
        drop(writer);
        while read_ready(&mut reader, &mut text).is_some() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let text = String::from_utf8(text).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), MAX_QUEUED / 1024 + 2, "{} lines", lines.len());
        assert!(lines[..MAX_QUEUED / 1024].iter().all(|l| l.len() == 1023));
        assert_eq!(
            lines[MAX_QUEUED / 1024],
            format!(
                "lifecycle-shim: {} lines of hook output dropped: the stream was full",
                1024 - MAX_QUEUED / 1024
            )
        );
        assert_eq!(lines[MAX_QUEUED / 1024 + 1], "last");
    }

    /// Whether every writer of a pipe that holds data is gone, without reading it.
    async fn hung_up(reader: &pipe::Receiver) -> bool {
        let ready = reader.ready(tokio::io::Interest::READABLE).await.unwrap();
        ready.is_read_closed()
    }

    /// Nobody ever reads: once every handle is gone, the writer gives the stream up after the
    /// grace period, so the pipe ends.
    #[tokio::test(start_paused = true)]
    async fn an_abandoned_stream_is_closed_after_the_grace_period() {
        let (reader, writer) = pipe_pair();
        let reader = pipe::Receiver::from_file(reader).unwrap();
        let stream = Stream::open(&writer).unwrap();
        drop(writer);
        let line = format!("{}\n", "x".repeat(4095));
        for _ in 0..32 {
            stream.write_line(&line);
        }
        drop(stream);
        tokio::time::sleep(FLUSH_GRACE - Duration::from_secs(1)).await;
        assert!(!hung_up(&reader).await, "closed before the grace period");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(hung_up(&reader).await, "still open after the grace period");
    }
}
