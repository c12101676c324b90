//! Sidecars: init containers with `restartPolicy: Always` (Kubernetes' sidecar containers,
//! Nomad's `sidecar = true`). Each is a container of its own from a derived bundle (see
//! [`crate::bundle::derived`]) that shares the container's network, IPC and UTS namespaces but has its
//! own PID namespace, so it keeps running while the entrypoint stops and is stopped after it.
//! Started in init-container order (the next init container starts once it runs), restarted
//! with backoff whenever it exits, stopped in reverse order within the grace period.

use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use lifecycle_hooks::plan::InitContainer;
use lifecycle_hooks::seconds::Seconds;
use lifecycle_hooks::{ExecRequest, ExitStatus};
use nix::sys::signal::Signal;
use tokio::sync::{oneshot, watch};
use tokio::time::{sleep, sleep_until, Instant};

use crate::bundle::derived::BaseBundle;
use crate::lifecycle::output::{HookOutput, Sink};
use crate::os::reaper::Exit;
use crate::os::runc::{Launched, ProcessIo, Runc, RuncError, Until};

/// The pause before a sidecar that exited is started again. It doubles with each restart up to
/// [`MAX_BACKOFF`], and starts over after a run that lasted at least that long.
pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    #[error(transparent)]
    Runc(#[from] RuncError),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: io::Error,
    },
    #[error("the container is stopping")]
    Stopping,
}

fn io_error(what: &'static str) -> impl FnOnce(io::Error) -> SidecarError {
    move |source| SidecarError::Io { what, source }
}

/// What a sidecar's supervisor is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Control {
    Run,
    /// The stop signal now, SIGKILL at the deadline.
    Stop(Instant),
    Kill,
}

/// The sidecars of one container.
pub struct Sidecars {
    host: Arc<SidecarHost>,
    inner: Mutex<Inner>,
}

struct Inner {
    /// One per sidecar started, in order; a supervisor ends by dropping its receiver.
    started: Vec<Arc<watch::Sender<Control>>>,
    /// Where sidecar output and restarts are shown; `None` once stopping has begun, when no
    /// further sidecar starts (and the stream is released as soon as the sidecars are gone).
    sink: Option<Sink>,
}

/// The container the sidecars belong to.
pub struct SidecarHost {
    pub runc: Runc,
    /// Run ids are `<base_id>-sidecar-<name>`.
    pub base_id: String,
    pub bundle: PathBuf,
    /// Private directory for the derived bundles.
    pub state: PathBuf,
    /// The container's init, whose namespaces sidecars join.
    pub pid: i32,
    pub stop_signal: Signal,
}

impl Sidecars {
    /// Sidecar output and restarts are shown in `sink`.
    pub fn new(host: SidecarHost, sink: Sink) -> Sidecars {
        Sidecars {
            host: Arc::new(host),
            inner: Mutex::new(Inner {
                started: Vec::new(),
                sink: Some(sink),
            }),
        }
    }

    /// Starts `init` as a sidecar and returns once it runs. Its supervisor is registered before
    /// runc is called, so a sidecar whose start is abandoned is still stopped with the others.
    pub async fn start(&self, init: &InitContainer) -> Result<(), SidecarError> {
        let sink = self.lock().sink.clone().ok_or(SidecarError::Stopping)?;
        let sidecar = Sidecar::prepare(&self.host, init, sink)?;
        let (control, receiver) = watch::channel(Control::Run);
        {
            let mut inner = self.lock();
            if inner.sink.is_none() {
                return Err(SidecarError::Stopping);
            }
            inner.started.push(Arc::new(control));
        }
        let (ready, started) = oneshot::channel();
        tokio::spawn(sidecar.supervise(receiver, ready));
        started.await.unwrap_or(Err(SidecarError::Stopping))
    }

    /// Stops the sidecars in reverse order: the stop signal, then SIGKILL at `deadline`.
    pub async fn stop(&self, deadline: Instant) {
        let started = {
            let mut inner = self.lock();
            inner.sink = None;
            inner.started.clone()
        };
        for control in started.iter().rev() {
            control.send_if_modified(|c| {
                let run = *c == Control::Run;
                if run {
                    *c = Control::Stop(deadline);
                }
                run
            });
            control.closed().await;
        }
    }

    /// SIGKILL to every sidecar now, also to those a [`Sidecars::stop`] is waiting for.
    pub fn kill(&self) {
        let mut inner = self.lock();
        inner.sink = None;
        for control in &inner.started {
            control.send_replace(Control::Kill);
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One sidecar and its supervisor's state.
struct Sidecar {
    host: Arc<SidecarHost>,
    name: String,
    run_id: String,
    /// The derived bundle, written once and run again at each restart.
    dir: PathBuf,
    output: HookOutput,
    /// The write end of the output pipe, handed to each run.
    writer: OwnedFd,
    sink: Sink,
}

impl Sidecar {
    fn prepare(
        host: &Arc<SidecarHost>,
        init: &InitContainer,
        sink: Sink,
    ) -> Result<Sidecar, SidecarError> {
        let dir = host.state.join(format!("sidecar-{}", init.name));
        let label = format!("sidecar:{}", init.name);
        let request = ExecRequest::init(init, &label, None);
        BaseBundle::read(&host.bundle)
            .and_then(|base| {
                base.derive(
                    &dir,
                    &format!("sidecar-{}", init.name),
                    &request,
                    Some(host.pid),
                )
            })
            .map_err(io_error("cannot derive the sidecar's bundle"))?;
        let (reader, writer) = nix::unistd::pipe()
            .map_err(|e| io_error("cannot capture the sidecar's output")(e.into()))?;
        let output = HookOutput::new(reader, &label, sink.clone())
            .map_err(io_error("cannot capture the sidecar's output"))?;
        Ok(Sidecar {
            run_id: format!("{}-sidecar-{}", host.base_id, init.name),
            host: host.clone(),
            name: init.name.clone(),
            dir,
            output,
            writer,
            sink,
        })
    }

    /// `runc run --detach`; returns the sidecar's init and its exit.
    async fn launch(&self) -> Result<(i32, Exit), SidecarError> {
        let runc = &self.host.runc;
        let pid_file = self.dir.join("pid");
        let stdout = self
            .writer
            .try_clone()
            .map_err(io_error("cannot capture the sidecar's output"))?;
        let stderr = self
            .writer
            .try_clone()
            .map_err(io_error("cannot capture the sidecar's output"))?;
        let io = ProcessIo {
            stdin: Stdio::null(),
            stdout: Stdio::from(stdout),
            stderr: Stdio::from(stderr),
            console_socket: None,
        };
        let log = self.dir.join("runc.log");
        let run = runc.create(Until::Started, &self.run_id, &self.dir, &pid_file, &log, io);
        match runc.launched(&pid_file, run).await {
            Ok(((), Launched { pid, exit })) => Ok((pid, exit)),
            Err(error) => {
                if !error.id_taken() {
                    self.delete().await;
                }
                Err(error.into())
            }
        }
    }

    /// Runs the sidecar until it is stopped, restarting it with backoff when it exits. The
    /// first start's outcome goes to `ready`.
    async fn supervise(
        mut self,
        mut control: watch::Receiver<Control>,
        ready: oneshot::Sender<Result<(), SidecarError>>,
    ) {
        let mut next = match self.launch().await {
            Ok(running) => {
                let _ = ready.send(Ok(()));
                Some(running)
            }
            Err(error) => {
                let _ = ready.send(Err(error));
                return;
            }
        };
        let mut backoff = INITIAL_BACKOFF;
        loop {
            if let Some((pid, exit)) = next.take() {
                let began = Instant::now();
                let Some(status) = self.watch(pid, exit, &mut control).await else {
                    self.delete().await;
                    break;
                };
                self.delete().await;
                if began.elapsed() >= MAX_BACKOFF {
                    backoff = INITIAL_BACKOFF;
                }
                self.report(&format!(
                    "sidecar {} exited with {status}; restarting in {}",
                    self.name,
                    Seconds(backoff)
                ));
            }
            tokio::select! {
                () = sleep(backoff) => {}
                _ = requested(&mut control, |c| *c != Control::Run) => break,
            }
            match self.launch().await {
                Ok(running) => next = Some(running),
                Err(error) => self.report(&format!(
                    "sidecar {} could not be restarted: {error}; trying again in {}",
                    self.name,
                    Seconds((backoff * 2).min(MAX_BACKOFF))
                )),
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        self.output.drain();
        self.output.finish();
    }

    /// Shows the sidecar's output until it exits (`Some`) or has been stopped on request
    /// (`None`).
    async fn watch(
        &mut self,
        pid: i32,
        mut exit: Exit,
        control: &mut watch::Receiver<Control>,
    ) -> Option<ExitStatus> {
        let request = loop {
            tokio::select! {
                status = &mut exit => return Some(status),
                request = requested(control, |c| *c != Control::Run) => break request,
                () = self.output.read_some(), if !self.output.is_eof() => {}
            }
        };
        let reaper = self.host.runc.reaper();
        if let Control::Stop(deadline) = request {
            tracing::info!(sidecar = %self.name, "stopping the sidecar");
            let _ = reaper.kill(pid, self.host.stop_signal);
            loop {
                tokio::select! {
                    _ = &mut exit => return None,
                    () = sleep_until(deadline) => break,
                    _ = requested(control, |c| *c == Control::Kill) => break,
                    () = self.output.read_some(), if !self.output.is_eof() => {}
                }
            }
        }
        let _ = reaper.kill(pid, Signal::SIGKILL);
        loop {
            tokio::select! {
                _ = &mut exit => return None,
                () = self.output.read_some(), if !self.output.is_eof() => {}
            }
        }
    }

    async fn delete(&self) {
        if let Err(error) = self.host.runc.delete(&self.run_id).await {
            tracing::warn!(sidecar = %self.name, %error, "could not delete the sidecar");
        }
    }

    fn report(&self, message: &str) {
        tracing::warn!(sidecar = %self.name, "{message}");
        self.sink
            .write_line(&format!("lifecycle-shim: {message}\n"));
    }
}

/// The first request matching `wanted`; a dropped [`Sidecars`] counts as a kill.
async fn requested(
    control: &mut watch::Receiver<Control>,
    wanted: impl FnMut(&Control) -> bool,
) -> Control {
    match control.wait_for(wanted).await {
        Ok(request) => *request,
        Err(_) => Control::Kill,
    }
}
