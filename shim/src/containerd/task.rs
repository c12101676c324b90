//! The task's init process under containerd: created by Create, started by Start (init
//! containers first, in the background, so Start returns at once), stopped with PreStop on a
//! graceful Kill, and its exit recorded and published exactly once.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use containerd_shim::api::{CreateTaskRequest, ExecProcessRequest};
use containerd_shim::protos::events::task::{TaskCreate, TaskExit, TaskIO, TaskStart};
use containerd_shim::protos::topics;
use lifecycle_hooks::engine::kill_deadline;
use lifecycle_hooks::health::{splay, watch_health};
use lifecycle_hooks::{run_phase, terminate, ExitStatus, Phase, Plan};
use nix::sys::signal::Signal;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::console::Console;
use super::error::TaskError;
use super::events::{Events, ExitCell, Exited};
use super::exec::ExecProcess;
use super::leftovers::Leftovers;
use super::state::{IllegalMove, State};
use super::stdio::{self, IoOwner, LoggerContext, StdioPaths};
use crate::bundle::{Bundle, SpecOrigin};
use crate::container::{RuncContainer, SignalRoute};
use crate::inits::run_inits;
use crate::output::Sink;
use crate::poststop::run_post_stop;
use crate::runc::{Launched, Runc, RuncError, Until};
use crate::sidecar::{SidecarHost, Sidecars};
use crate::status::{status_path, StatusFile};

pub struct Task {
    pub id: String,
    pub bundle: PathBuf,
    pub pid: i32,
    pub stdio: (String, String, String, bool),
    pub runc: Runc,
    pub events: Events,
    pub exit: ExitCell,
    /// The terminal, for a task created with one.
    pub console: Option<Console>,
    /// The owner of its processes' stdio (runtime options `IoUid`/`IoGid`).
    pub io_owner: Option<IoOwner>,
    plan: Plan,
    /// The container has a lifecycle spec; without one it behaves exactly as with runc's shim.
    hooks: bool,
    binds: Vec<crate::once::Bind>,
    /// Without a PID namespace of its own, what is left at exit is killed first.
    leftovers: Option<Leftovers>,
    sidecars: Sidecars,
    rootfs_mounted: bool,
    inner: Mutex<Inner>,
    execs: Mutex<HashMap<String, Arc<ExecProcess>>>,
}

struct Inner {
    state: State,
    /// Init containers and PostStart, while they run.
    lifecycle: Option<AbortHandle>,
    /// The stop sequence, while it runs.
    stop: Option<AbortHandle>,
    /// Where hook output goes; dropped at exit so containerd sees the stream end.
    sink: Option<Sink>,
    /// The status to report instead of the init process's own (a failed init container's).
    exit_override: Option<i32>,
    /// PostStart failed; the task then never reports success, as with `run`.
    hook_failed: bool,
    /// `runc start` was asked for (and did not fail): the entrypoint ran, however briefly.
    /// Recorded before runc returns, since a quick entrypoint may exit before it does.
    entrypoint_started: bool,
    /// When the stop sequence began; the sidecars' grace period counts from here.
    stop_began: Option<Instant>,
}

impl Task {
    pub async fn create(
        req: &CreateTaskRequest,
        runc: Runc,
        io_owner: Option<IoOwner>,
        events: Events,
    ) -> Result<Arc<Task>, TaskError> {
        let bundle_path = PathBuf::from(&req.bundle);
        let bundle = Bundle::load(&bundle_path)?;
        let (origin, plan) = bundle.plan(None)?;
        let hooks = matches!(origin, SpecOrigin::Annotation(_) | SpecOrigin::File(_));
        let rootfs = bundle_path.join("rootfs");
        for mount in &req.rootfs {
            if let Err(error) =
                containerd_shim::asynchronous::util::mount_rootfs(mount, &rootfs).await
            {
                unmount(&rootfs);
                return Err(TaskError::shim("mounting the rootfs")(error));
            }
        }
        let rootfs_mounted = !req.rootfs.is_empty();
        let paths = StdioPaths {
            stdin: &req.stdin,
            stdout: &req.stdout,
            stderr: &req.stderr,
            terminal: req.terminal,
            owner: io_owner,
        };
        let created = async {
            let logger = LoggerContext {
                container_id: &req.id,
                namespace: &events.namespace,
                reaper: runc.reaper(),
            };
            let opened = stdio::open(&paths, &logger).await?;
            let pid_file = bundle_path.join("init.pid");
            let log = bundle_path.join("log.json");
            let create = async {
                Ok(runc
                    .create(
                        Until::Created,
                        &req.id,
                        &bundle_path,
                        &pid_file,
                        &log,
                        opened.io,
                    )
                    .await?)
            };
            let attached = async {
                match opened.console {
                    None => create.await.map(|()| None),
                    Some(pending) => pending.attach_during(create).await.map(|((), c)| Some(c)),
                }
            };
            // What a failed runc create leaves, containerd's `delete` action removes, as with
            // runc's shim.
            let (console, Launched { pid, exit }) = runc.launched(&pid_file, attached).await?;
            Ok((pid, exit, opened.hook_sink, console))
        }
        .await;
        let (pid, exit, sink, console) = match created {
            Ok(created) => created,
            Err(error) => {
                if rootfs_mounted {
                    unmount(&rootfs);
                }
                return Err(error);
            }
        };
        let sidecars = Sidecars::new(
            SidecarHost {
                runc: runc.clone(),
                base_id: format!("{}-lifecycle", req.id),
                bundle: bundle_path.clone(),
                state: bundle_path.clone(),
                pid,
                stop_signal: plan.stop_signal,
            },
            sink.clone().unwrap_or(Sink::Stderr),
        );
        let task = Arc::new(Task {
            id: req.id.clone(),
            bundle: bundle_path,
            pid,
            stdio: (
                req.stdin.clone(),
                req.stdout.clone(),
                req.stderr.clone(),
                req.terminal,
            ),
            runc,
            events,
            exit: ExitCell::new(),
            console,
            io_owner,
            plan,
            hooks,
            binds: bundle.binds.clone(),
            leftovers: bundle.shares_pid_namespace.then(|| Leftovers::of(pid)),
            sidecars,
            rootfs_mounted,
            inner: Mutex::new(Inner {
                state: State::Created,
                lifecycle: None,
                stop: None,
                sink,
                exit_override: None,
                hook_failed: false,
                entrypoint_started: false,
                stop_began: None,
            }),
            execs: Mutex::new(HashMap::new()),
        });
        let monitor = task.clone();
        tokio::spawn(async move {
            let status = exit.await;
            monitor.exited(status).await;
        });
        let event = TaskCreate {
            container_id: task.id.clone(),
            bundle: req.bundle.clone(),
            rootfs: req.rootfs.clone(),
            io: Some(TaskIO {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
                ..Default::default()
            })
            .into(),
            pid: pid as u32,
            ..Default::default()
        };
        task.events
            .publish(topics::TASK_CREATE_EVENT_TOPIC, event)
            .await;
        Ok(task)
    }

    pub fn state(&self) -> State {
        self.lock().state
    }

    /// Starts the entrypoint, after the init containers if there are any. Returns at once in
    /// that case: the init containers run in the background and may take longer than
    /// containerd's Start deadline.
    pub async fn start(self: &Arc<Self>) -> Result<(), TaskError> {
        self.lock().state.apply(State::start)?;
        if self.plan.init_containers.is_empty() {
            if let Err(error) = self.start_entrypoint().await {
                self.lock().state.apply(State::start_failed)?;
                return Err(error.into());
            }
            self.lock().state.apply(State::started)?;
        }
        let event = TaskStart {
            container_id: self.id.clone(),
            pid: self.pid as u32,
            ..Default::default()
        };
        self.events
            .publish(topics::TASK_START_EVENT_TOPIC, event)
            .await;
        let task = self.clone();
        let lifecycle = tokio::spawn(async move { task.lifecycle().await }).abort_handle();
        self.lock().lifecycle = Some(lifecycle);
        Ok(())
    }

    /// Init containers (then `runc start`), then PostStart; a failed PostStart stops the task.
    async fn lifecycle(self: Arc<Self>) {
        let c = self.hook_container();
        if !self.plan.init_containers.is_empty() {
            let inits = run_inits(&c, &self.plan.init_containers, &self.binds, &self.sidecars);
            if let Err(failure) = inits.await {
                self.report(&format!("{failure}; the entrypoint was not started"));
                self.lock().exit_override = Some(failure.exit_code());
                let _ = self.runc.reaper().kill(self.pid, Signal::SIGKILL);
                return;
            }
            if let Err(error) = self.start_entrypoint().await {
                self.report(&format!("starting the entrypoint failed: {error}"));
                let _ = self.runc.reaper().kill(self.pid, Signal::SIGKILL);
                return;
            }
            match self.lock().state.apply(State::started) {
                Ok(State::Running) => {}
                // It ended already (a Kill during the init containers): nothing more to do.
                Ok(_) => return,
                Err(error) => {
                    tracing::error!(container = %self.id, %error, "entrypoint started");
                    return;
                }
            }
        }
        if !self.hooks {
            return;
        }
        if let Some(report) = run_phase(&c, Phase::PostStart, &self.plan.post_start, None).await {
            self.report(&format!("{}: {report}", report.reason()));
            self.lock().hook_failed = true;
            self.begin_stop();
            return;
        }
        if let Some(check) = &self.plan.health_check {
            let file = StatusFile::new(status_path(Some(&self.events.namespace), &self.id));
            watch_health(&c, check, splay(check.period), |r| file.record(r)).await;
            self.report("health check critical too many times in a row; stopping");
            self.begin_stop();
        }
    }

    /// `runc start`, recording that the entrypoint started unless it failed.
    async fn start_entrypoint(&self) -> Result<(), RuncError> {
        self.lock().entrypoint_started = true;
        let result = self.runc.start(&self.id).await;
        if result.is_err() {
            self.lock().entrypoint_started = false;
        }
        result
    }

    /// Kill of the init process. The stop signal (or SIGTERM) starts the stop sequence with
    /// PreStop and returns at once; SIGKILL cuts it short; anything else passes through.
    pub async fn kill(self: &Arc<Self>, signal: Signal, all: bool) -> Result<(), TaskError> {
        if signal == Signal::SIGKILL {
            // Also when the entrypoint is gone and the sidecars are being stopped.
            self.sidecars.kill();
        }
        let state = self.state();
        match state {
            State::Deleted => {
                return Err(TaskError::NotFound(format!(
                    "process {} already finished",
                    self.id
                )))
            }
            // runc is asked all the same, as runc's shim does: containerd's SIGKILL with `all`
            // before a delete still reaches whatever is left in the container's cgroup.
            State::Stopped => return self.signal(signal, all).await,
            State::Starting => {
                // The entrypoint has not run: there is nothing to stop gracefully.
                self.abort(|inner| inner.lifecycle.take());
                return self.signal(Signal::SIGKILL, all).await;
            }
            State::Created | State::Running | State::Paused => {}
        }
        let graceful = signal == Signal::SIGTERM || signal == self.plan.stop_signal;
        if signal == Signal::SIGKILL {
            self.abort(|inner| inner.stop.take());
        } else if graceful && self.hooks && state == State::Running {
            self.begin_stop();
            return Ok(());
        }
        self.signal(signal, all).await
    }

    /// `runc kill`, as runc's shim signals a task; a container that is gone is NotFound.
    async fn signal(&self, signal: Signal, all: bool) -> Result<(), TaskError> {
        match self.runc.kill(&self.id, signal, all).await {
            Err(error) if error.process_gone() => Err(TaskError::NotFound(format!(
                "process {} already finished: {error}",
                self.id
            ))),
            result => Ok(result?),
        }
    }

    /// Runs the stop sequence unless it already runs.
    fn begin_stop(self: &Arc<Self>) {
        let mut inner = self.lock();
        if inner.stop.is_some() || inner.state == State::Stopped {
            return;
        }
        inner.stop_began = Some(Instant::now());
        let task = self.clone();
        inner.stop = Some(
            tokio::spawn(async move {
                let c = task.hook_container();
                terminate(&c, &task.plan).await;
            })
            .abort_handle(),
        );
    }

    fn abort(&self, take: impl FnOnce(&mut Inner) -> Option<AbortHandle>) {
        if let Some(handle) = take(&mut self.lock()) {
            handle.abort();
        }
    }

    pub fn exec(&self, exec_id: &str) -> Result<Arc<ExecProcess>, TaskError> {
        self.lock_execs()
            .get(exec_id)
            .cloned()
            .ok_or_else(|| TaskError::NotFound(format!("exec {exec_id} not found")))
    }

    pub async fn add_exec(&self, req: &ExecProcessRequest) -> Result<(), TaskError> {
        if self.lock_execs().contains_key(&req.exec_id) {
            return Err(TaskError::AlreadyExists(format!(
                "exec {} already exists",
                req.exec_id
            )));
        }
        let exec = ExecProcess::add(self, req).await?;
        self.lock_execs().insert(req.exec_id.clone(), exec);
        Ok(())
    }

    pub fn remove_exec(&self, exec_id: &str) {
        self.lock_execs().remove(exec_id);
    }

    /// The init process has been reaped: hooks still running are cancelled, sidecars stopped,
    /// postStop run, the stream for hook output closed, exec processes end (containerd expects
    /// their exits before the init's), and the exit is recorded and published.
    async fn exited(&self, status: ExitStatus) {
        if let Some(leftovers) = &self.leftovers {
            leftovers.kill(&self.runc, &self.id).await;
        }
        let (code, started, sink, stop_began) = {
            let mut inner = self.lock();
            let started = inner.entrypoint_started;
            // The init exits once; its exit is the only move out of a living state.
            if let Err(error) = inner.state.apply(State::exit) {
                tracing::error!(container = %self.id, %error, "init process exited");
            }
            for handle in [inner.lifecycle.take(), inner.stop.take()]
                .into_iter()
                .flatten()
            {
                handle.abort();
            }
            let code = match (inner.exit_override.take(), status.code()) {
                (Some(code), _) => code,
                (None, 0) if inner.hook_failed => 1,
                (None, code) => code,
            };
            (code, started, inner.sink.take(), inner.stop_began)
        };
        let stop_began = stop_began.unwrap_or_else(Instant::now);
        self.sidecars
            .stop(kill_deadline(stop_began, self.plan.grace))
            .await;
        // postStop runs, if the entrypoint ever started, finish before the exit is published;
        // a failure is reported and leaves the status as it is.
        if started && self.hooks && !self.plan.post_stop.is_empty() {
            let out = sink.clone().unwrap_or(Sink::Stderr);
            let failure = run_post_stop(
                &self.runc,
                &format!("{}-lifecycle", self.id),
                &self.bundle,
                &self.bundle,
                &self.plan.post_stop,
                out,
            )
            .await;
            if let Some(report) = failure {
                self.report_to(sink.as_ref(), &format!("{}: {report}", report.reason()));
            }
        }
        drop(sink);
        // With its own PID namespace they die with the init; sharing the host's, they would not.
        let running: Vec<_> = self
            .lock_execs()
            .values()
            .filter(|e| e.state() == State::Running)
            .cloned()
            .collect();
        for exec in &running {
            let _ = self.runc.reaper().kill(exec.pid(), Signal::SIGKILL);
        }
        for exec in &running {
            exec.exit.wait().await;
        }
        let exited = Exited::now(code);
        self.exit.set(exited);
        tracing::info!(container = %self.id, status = code, "container exited");
        let event = TaskExit {
            container_id: self.id.clone(),
            id: self.id.clone(),
            pid: self.pid as u32,
            exit_status: exited.status,
            exited_at: Some(exited.timestamp()).into(),
            ..Default::default()
        };
        self.events
            .publish(topics::TASK_EXIT_EVENT_TOPIC, event)
            .await;
    }

    /// Deletes the container; a task deleted before it ran is stopped first, so its exit is
    /// published before its deletion.
    pub async fn delete(&self) -> Result<Exited, TaskError> {
        // Refused before anything is done; applied once it is.
        self.state().delete()?;
        let result = match self.runc.delete_stopped(&self.id).await {
            // runc refuses a container that still runs, e.g. one killed a moment ago.
            Err(_) => self.runc.delete(&self.id).await,
            deleted => deleted,
        };
        let exited = self.exit.wait().await;
        if let Err(error) = result {
            tracing::warn!(%error, "runc delete failed");
        }
        if self.rootfs_mounted {
            unmount(&self.bundle.join("rootfs"));
        }
        self.lock().state.apply(State::delete)?;
        Ok(exited)
    }

    /// Moves the state with `transition` once `action` (runc pause or resume) succeeded.
    pub async fn set_state<F, Fut>(
        &self,
        transition: fn(State) -> Result<State, IllegalMove>,
        action: F,
    ) -> Result<(), TaskError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(), RuncError>>,
    {
        // Refused before runc is called; applied to the state as it is once runc is done.
        transition(self.state())?;
        action().await?;
        self.lock().state.apply(transition)?;
        Ok(())
    }

    pub fn state_dir(&self) -> &Path {
        &self.bundle
    }

    /// The container as the hook engine sees it.
    fn hook_container(&self) -> RuncContainer<'_> {
        let sink = self.lock().sink.clone().unwrap_or(Sink::Stderr);
        RuncContainer::new(
            &self.runc,
            &self.id,
            self.pid,
            SignalRoute::Init,
            &self.bundle,
            sink,
        )
    }

    /// A lifecycle message for the user: in the container's stderr stream and the shim log.
    fn report(&self, message: &str) {
        let sink = self.lock().sink.clone();
        self.report_to(sink.as_ref(), message);
    }

    /// The same, to a given stream (at exit the task's own has already been taken).
    fn report_to(&self, sink: Option<&Sink>, message: &str) {
        tracing::warn!(container = %self.id, "{message}");
        if let Some(sink) = sink {
            sink.write_line(&format!("lifecycle-shim: {message}\n"));
        }
    }

    fn lock_execs(&self) -> MutexGuard<'_, HashMap<String, Arc<ExecProcess>>> {
        self.execs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn unmount(rootfs: &Path) {
    if let Err(error) = containerd_shim::mount::umount_recursive(rootfs.to_str(), 0) {
        tracing::warn!(%error, rootfs = %rootfs.display(), "could not unmount the rootfs");
    }
}
