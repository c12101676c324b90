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
use lifecycle_hooks::supervisor::{supervise, Request};
use lifecycle_hooks::Plan;
use nix::sys::signal::Signal;
use tokio::sync::{mpsc, oneshot};

use super::console::{Console, PendingConsole};
use super::error::TaskError;
use super::events::{Events, ExitCell, Exited};
use super::exec::{ExecHost, ExecProcess};
use super::leftovers::Leftovers;
use super::state::{IllegalMove, State};
use super::stdio::{self, IoOwner, LoggerContext, StdioPaths};
use crate::bundle::{Bundle, SpecOrigin};
use crate::lifecycle::container::{ContainerError, RuncContainer, SignalRoute};
use crate::lifecycle::output::Sink;
use crate::lifecycle::sandbox::SandboxRecord;
use crate::lifecycle::sidecar::{SidecarHost, Sidecars};
use crate::lifecycle::status::{status_path, StatusFile};
use crate::lifecycle::termination::TerminationLog;
use crate::lifecycle::RuncLife;
use crate::os::reaper::Exit;
use crate::os::runc::{Launched, Runc, RuncError, Until};

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
    binds: Vec<crate::lifecycle::once::Bind>,
    /// Under CRI: the pod sandbox's record of the init containers that already succeeded.
    sandbox: Option<SandboxRecord>,
    /// Under the kubelet: where the container's termination message goes.
    termination: Option<TerminationLog>,
    /// Without a PID namespace of its own, what is left at exit is killed first.
    leftovers: Option<Leftovers>,
    sidecars: Sidecars,
    rootfs_mounted: bool,
    /// To the container's supervisor, which decides its life and its exit.
    requests: mpsc::UnboundedSender<Request<ContainerError>>,
    state: Mutex<State>,
    execs: Mutex<HashMap<String, Arc<ExecProcess>>>,
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
            let create = runc.create(
                Until::Created,
                &req.id,
                &bundle_path,
                &pid_file,
                &log,
                opened.io,
            );
            let attached = PendingConsole::attach_during::<TaskError>(opened.console, create);
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
        let (requests, received) = mpsc::unbounded_channel();
        // The init containers as specified: another spec runs them again.
        let sandbox = SandboxRecord::of(&bundle, format!("{:?}", plan.init_containers));
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
            sandbox,
            termination: TerminationLog::of(&bundle),
            leftovers: bundle.shares_pid_namespace.then(|| Leftovers::of(pid)),
            sidecars,
            rootfs_mounted,
            requests,
            state: Mutex::new(State::Created),
            execs: Mutex::new(HashMap::new()),
        });
        let supervised = task.clone();
        let sink = sink.unwrap_or(Sink::Stderr);
        tokio::spawn(async move { supervised.supervise(exit, received, sink).await });
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
        *self.lock()
    }

    /// Starts the entrypoint, after the init containers if there are any; returns when it
    /// runs, or once [`crate::lifecycle::start_wait`] has passed while init containers still run (they go on in
    /// the background and may take longer than containerd's Start deadline).
    pub async fn start(&self) -> Result<(), TaskError> {
        self.lock().apply(State::start)?;
        let (reply, answer) = oneshot::channel();
        let wait = crate::lifecycle::start_wait();
        let _ = self.requests.send(Request::Start { reply, wait });
        match answer.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                self.lock().apply(State::start_failed)?;
                return Err(error.into());
            }
            // The supervisor is done: the container ended before it could start.
            Err(_) => {
                return Err(TaskError::NotFound(format!(
                    "process {} already finished",
                    self.id
                )))
            }
        }
        let event = TaskStart {
            container_id: self.id.clone(),
            pid: self.pid as u32,
            ..Default::default()
        };
        self.events
            .publish(topics::TASK_START_EVENT_TOPIC, event)
            .await;
        Ok(())
    }

    /// The container's life under its supervisor, from creation to the published exit.
    async fn supervise(
        self: Arc<Self>,
        exit: Exit,
        mut requests: mpsc::UnboundedReceiver<Request<ContainerError>>,
        sink: Sink,
    ) {
        let life = RuncLife {
            container: RuncContainer::new(
                &self.runc,
                &self.id,
                self.pid,
                SignalRoute::Init,
                &self.bundle,
                sink.clone(),
            ),
            sidecars: &self.sidecars,
            binds: &self.binds,
            sandbox: self.sandbox.clone(),
            started_with_the_container: false,
            bundle: self.bundle.clone(),
            post_stop_base: format!("{}-lifecycle", self.id),
            state: self.bundle.clone(),
            health: StatusFile::new(status_path(Some(&self.events.namespace), &self.id)),
            sink,
            gate: None,
        };
        let exit = async {
            let status = exit.await;
            if let Some(leftovers) = &self.leftovers {
                leftovers.kill(&self.runc, &self.id).await;
            }
            // The init exits once; its exit is the only move out of a living state.
            if let Err(error) = self.lock().apply(State::exit) {
                tracing::error!(container = %self.id, %error, "init process exited");
            }
            status
        };
        let started = || {
            if let Err(error) = self.lock().apply(State::started) {
                tracing::error!(container = %self.id, %error, "entrypoint started");
            }
        };
        let outcome = supervise(&life, &self.plan, exit, &mut requests, started).await;
        // Closes the stream hook output went to, so containerd sees it end.
        drop(life);
        // Read by the kubelet once the exit is published.
        if let (Some(log), Some(message)) = (&self.termination, outcome.failure()) {
            if let Err(error) = log.write(&message) {
                tracing::warn!(container = %self.id, %error, "could not write the termination message");
            }
        }
        self.exited(outcome.code()).await;
    }

    /// Kill of the init process. The stop signal (or SIGTERM) starts the stop sequence with
    /// PreStop and returns at once; SIGKILL cuts it short; anything else passes through.
    pub async fn kill(&self, signal: Signal, all: bool) -> Result<(), TaskError> {
        if signal == Signal::SIGKILL {
            // Also when the entrypoint is gone and the sidecars are being stopped.
            let _ = self.requests.send(Request::Kill);
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
            // The entrypoint has not run (or `runc start` is returning): the supervisor ends
            // the init sequence and the container. A SIGKILL also goes straight to it, in case
            // the entrypoint already runs; either may find it gone first.
            State::Starting => {
                if signal != Signal::SIGKILL {
                    let _ = self.requests.send(Request::Stop(signal));
                    return Ok(());
                }
                return match self.signal(signal, all).await {
                    Err(TaskError::NotFound(_)) => Ok(()),
                    result => result,
                };
            }
            State::Created | State::Running | State::Paused => {}
        }
        let graceful = signal == Signal::SIGTERM || signal == self.plan.stop_signal;
        if graceful && self.hooks && state == State::Running {
            let _ = self.requests.send(Request::Stop(signal));
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

    pub fn exec_process(&self, exec_id: &str) -> Result<Arc<ExecProcess>, TaskError> {
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
        let exec = ExecProcess::add(&self.exec_host(), req).await?;
        self.lock_execs().insert(req.exec_id.clone(), exec);
        Ok(())
    }

    /// The container, as its exec processes need it.
    pub fn exec_host(&self) -> ExecHost {
        ExecHost {
            container_id: self.id.clone(),
            runc: self.runc.clone(),
            events: self.events.clone(),
            dir: self.bundle.clone(),
            io_owner: self.io_owner,
        }
    }

    pub fn remove_exec(&self, exec_id: &str) {
        self.lock_execs().remove(exec_id);
    }

    /// The supervisor is done (the init has exited, sidecars and postStop are done): exec
    /// processes end (containerd expects their exits before the init's), and the exit is
    /// recorded and published.
    async fn exited(&self, code: i32) {
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
        self.lock().apply(State::delete)?;
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
        self.lock().apply(transition)?;
        Ok(())
    }

    pub fn state_dir(&self) -> &Path {
        &self.bundle
    }

    fn lock_execs(&self) -> MutexGuard<'_, HashMap<String, Arc<ExecProcess>>> {
        self.execs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn unmount(rootfs: &Path) {
    if let Err(error) = containerd_shim::mount::umount_recursive(rootfs.to_str(), 0) {
        tracing::warn!(%error, rootfs = %rootfs.display(), "could not unmount the rootfs");
    }
}
