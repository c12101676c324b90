//! A container's supervisor under `lifecycle-runc`: started by `create` before runc creates the
//! container, told its init's pid once it has, then the same lifecycle as under the other
//! front ends (`lifecycle_hooks::supervisor`), asked for by the `start`, `kill` and `delete`
//! calls on its socket. The init is the engine's child, not ours: its exit is learnt from its
//! pidfd and it is signalled through it. Hook output and lifecycle messages go to the
//! container's own stderr, so the engine's logs show them; the supervisor's log is
//! `supervisor.log` in its state directory.

// Unsafe: the listener is handed over as a raw fd across exec.
#![allow(unsafe_code)]

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use lifecycle_hooks::supervisor::{supervise, Request};
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use super::gate::Gate;
use super::protocol::{socket_path, Answer, Ask};
use crate::bundle::Bundle;
use crate::lifecycle::container::{ContainerError, RuncContainer, SignalRoute};
use crate::lifecycle::output::Sink;
use crate::lifecycle::sidecar::{SidecarHost, Sidecars};
use crate::lifecycle::status::{status_path, StatusFile};
use crate::lifecycle::stream::Stream;
use crate::lifecycle::{start_wait, RuncLife};
use crate::os::pidfd;
use crate::os::reaper::Reaper;
use crate::os::runc::{Runc, RuncConfig};

/// The supervisor's listening socket arrives as this fd.
const LISTENER_FD: RawFd = 3;
/// `close_range`'s flag: mark the fds close-on-exec instead of closing them.
const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;

/// What `create` tells the supervisor it starts.
#[derive(Debug, Serialize, Deserialize)]
pub struct SupervisorArgs {
    pub id: String,
    pub bundle: PathBuf,
    pub runtime: PathBuf,
    pub root: Option<PathBuf>,
    /// Its state directory, holding its socket.
    pub dir: PathBuf,
}

/// Between fork and exec: the listener becomes [`LISTENER_FD`], and every other fd the engine
/// passed to the runtime is closed at exec (the supervisor must not keep its pipes open).
pub fn hand_over_listener(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl, dup2 and close_range are async-signal-safe and take integers.
    let moved = unsafe {
        if fd == LISTENER_FD {
            libc::fcntl(fd, libc::F_SETFD, 0)
        } else {
            libc::dup2(fd, LISTENER_FD)
        }
    };
    if moved < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    let marked = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            LISTENER_FD + 1,
            libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        )
    };
    if marked < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub fn main(arg: Option<&OsString>) -> ExitCode {
    let Some(args) = arg.and_then(|a| serde_json::from_str::<SupervisorArgs>(a.to_str()?).ok())
    else {
        return ExitCode::FAILURE;
    };
    crate::logging::init_file(&args.dir.join("supervisor.log"));
    let runtime = match crate::os::one_thread_runtime() {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    let served = runtime.block_on(serve(&args));
    let _ = std::fs::remove_file(socket_path(&args.dir));
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(container = %args.id, %error, "the lifecycle supervisor failed");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: &SupervisorArgs) -> io::Result<()> {
    // SAFETY: fd 3 is the listener `create` handed over, owned by nothing else.
    let listener = unsafe { std::os::unix::net::UnixListener::from_raw_fd(LISTENER_FD) };
    // SAFETY: sets a flag on an fd we own.
    unsafe { libc::fcntl(LISTENER_FD, libc::F_SETFD, libc::FD_CLOEXEC) };
    listener.set_nonblocking(true)?;
    let listener = UnixListener::from_std(listener)?;
    // `create` reports on the first connection; it closes it without a pid if runc failed.
    let (mut first, _) = listener.accept().await?;
    let Some(Ask::Created(pid)) = read_ask(&mut first).await else {
        return Ok(());
    };
    let bundle = Bundle::load(&args.bundle).map_err(io::Error::other)?;
    let (origin, plan) = bundle.runtime_plan().map_err(io::Error::other)?;
    let Some(fd) = pidfd::open(pid)? else {
        // Gone already: there is nothing to supervise.
        write_answer(&mut first, &Answer::Done).await;
        return Ok(());
    };
    let watch = pidfd::watch(fd)?;
    let route = SignalRoute::Pidfd(watch.as_raw_fd());
    tracing::info!(container = %args.id, pid, %origin, "supervising");
    let reaper = Reaper::start()?;
    let runc = Runc::new(
        RuncConfig::new(args.runtime.clone(), args.root.clone()),
        reaper,
    );
    let sink = container_stderr(pid);
    let sidecars = Sidecars::new(
        SidecarHost {
            runc: runc.clone(),
            base_id: format!("{}-lifecycle", args.id),
            bundle: bundle.path.clone(),
            state: args.dir.clone(),
            pid,
            stop_signal: plan.stop_signal,
        },
        sink.clone(),
    );
    let life = RuncLife {
        container: RuncContainer::new(&runc, &args.id, pid, route, &args.dir, sink.clone()),
        sidecars: &sidecars,
        binds: &bundle.binds,
        sandbox: None,
        started_with_the_container: false,
        bundle: bundle.path.clone(),
        post_stop_base: args.id.clone(),
        state: args.dir.clone(),
        health: StatusFile::new(status_path(Some(super::BINARY_NAME), &args.id)),
        sink,
        gate: Gate::find(&args.dir),
    };
    let (requests, mut received) = mpsc::unbounded_channel();
    let calls = Calls {
        requests,
        stop_signal: plan.stop_signal,
        started: Arc::default(),
    };
    tokio::spawn(calls.accept(listener));
    write_answer(&mut first, &Answer::Done).await;
    drop(first);
    let outcome = supervise(
        &life,
        &plan,
        pidfd::exited(watch, pid),
        &mut received,
        || {},
    )
    .await;
    tracing::info!(container = %args.id, ended = ?outcome.ended, "the container's lifecycle ended");
    Ok(())
}

/// The container's stderr, as the engine set it up, for hook output and lifecycle messages: a
/// pipe (conmon's, the Go shim's fifo) is written without ever waiting for its reader (see
/// [`Stream`]); a terminal or a file directly.
fn container_stderr(pid: i32) -> Sink {
    use std::os::unix::fs::FileTypeExt;
    let opened = std::fs::OpenOptions::new()
        .append(true)
        .open(format!("/proc/{pid}/fd/2"))
        .and_then(|file| {
            if file.metadata()?.file_type().is_fifo() {
                return Stream::open(&file).map(Sink::Stream);
            }
            Ok(Sink::File(Arc::new(file)))
        });
    opened.unwrap_or_else(|error| {
        tracing::warn!(%error, "cannot write to the container's stderr; hook output goes to the log");
        Sink::Stderr
    })
}

/// The calls of the `lifecycle-runc` commands, turned into requests to the supervisor.
#[derive(Clone)]
struct Calls {
    requests: mpsc::UnboundedSender<Request<ContainerError>>,
    stop_signal: Signal,
    /// `start` was called: from then on a stop is the supervisor's.
    started: Arc<AtomicBool>,
}

impl Calls {
    async fn accept(self, listener: UnixListener) {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(self.clone().answer(stream));
        }
    }

    async fn answer(self, mut stream: UnixStream) {
        let Some(ask) = read_ask(&mut stream).await else {
            return;
        };
        let answer = match ask {
            Ask::Created(_) => Answer::Failed("the container was created already".into()),
            Ask::Start => self.start().await,
            Ask::Stop(number) => self.stop(number),
            Ask::Kill => {
                let _ = self.requests.send(Request::Kill);
                Answer::Done
            }
            Ask::Delete => {
                // The container is gone: the supervisor finishes by itself (the sidecars'
                // stop within the grace period, postStop) and exits, closing the connection.
                // Engines delete right after the exit they see, even after a graceful stop
                // (Podman with --force): this must not cut the sidecars' stop short; `kill 9`
                // (`rm -f`) does.
                std::future::pending::<()>().await;
                return;
            }
        };
        write_answer(&mut stream, &answer).await;
    }

    async fn start(&self) -> Answer {
        self.started.store(true, Ordering::SeqCst);
        let (reply, answer) = oneshot::channel();
        let wait = start_wait();
        if self.requests.send(Request::Start { reply, wait }).is_err() {
            return Answer::Failed("the container has exited".into());
        }
        match answer.await {
            Ok(Ok(())) => Answer::Done,
            Ok(Err(error)) => Answer::Failed(error.to_string()),
            Err(_) => Answer::Failed("the container exited before its entrypoint started".into()),
        }
    }

    /// SIGTERM or the stop signal, once started, is a stop request; anything else, or before
    /// `start`, is passed on.
    fn stop(&self, number: i32) -> Answer {
        let signal = Signal::try_from(number).ok();
        let ours = signal.filter(|s| *s == Signal::SIGTERM || *s == self.stop_signal);
        match ours {
            Some(signal) if self.started.load(Ordering::SeqCst) => {
                match self.requests.send(Request::Stop(signal)) {
                    Ok(()) => Answer::Done,
                    Err(_) => Answer::PassOn,
                }
            }
            _ => Answer::PassOn,
        }
    }
}

async fn read_ask(stream: &mut UnixStream) -> Option<Ask> {
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).await.ok()?;
    serde_json::from_str(&line).ok()
}

async fn write_answer(stream: &mut UnixStream, answer: &Answer) {
    let Ok(mut line) = serde_json::to_vec(answer) else {
        return;
    };
    line.push(b'\n');
    let _ = stream.write_all(&line).await;
}
