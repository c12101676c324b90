//! Exec processes (`ctr task exec`, `docker exec`, CRI ExecSync): added by Exec, started with
//! `runc exec --detach`, reaped by the shim, their exits published like the task's.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use containerd_shim::api::ExecProcessRequest;
use containerd_shim::protos::events::task::{TaskExecAdded, TaskExecStarted, TaskExit};
use containerd_shim::protos::topics;
use nix::sys::signal::Signal;

use super::console::{Console, PendingConsole};
use super::error::TaskError;
use super::events::{Events, ExitCell, Exited};
use super::state::State;
use super::stdio::{self, IoOwner, LoggerContext, StdioPaths};
use crate::os::runc::{Launched, Runc};

/// The container an exec process runs in, as its task describes it.
#[derive(Clone)]
pub struct ExecHost {
    pub container_id: String,
    pub runc: Runc,
    pub events: Events,
    /// Where its process spec and pid file are written.
    pub dir: PathBuf,
    pub io_owner: Option<IoOwner>,
}

pub struct ExecProcess {
    pub id: String,
    /// The OCI process, as JSON, that runc runs.
    process: Vec<u8>,
    pub stdio: (String, String, String, bool),
    pub exit: ExitCell,
    inner: Mutex<ExecInner>,
}

struct ExecInner {
    state: State,
    pid: i32,
    console: Option<Console>,
}

impl ExecProcess {
    pub async fn add(
        task: &ExecHost,
        req: &ExecProcessRequest,
    ) -> Result<Arc<ExecProcess>, TaskError> {
        let process =
            req.spec
                .as_ref()
                .map(|any| any.value.clone())
                .ok_or(TaskError::InvalidArgument {
                    what: "exec request",
                    message: "it has no process spec".to_owned(),
                })?;
        let exec = Arc::new(ExecProcess {
            id: req.exec_id.clone(),
            process,
            stdio: (
                req.stdin.clone(),
                req.stdout.clone(),
                req.stderr.clone(),
                req.terminal,
            ),
            exit: ExitCell::new(),
            inner: Mutex::new(ExecInner {
                state: State::Created,
                pid: 0,
                console: None,
            }),
        });
        let event = TaskExecAdded {
            container_id: task.container_id.clone(),
            exec_id: exec.id.clone(),
            ..Default::default()
        };
        task.events
            .publish(topics::TASK_EXEC_ADDED_EVENT_TOPIC, event)
            .await;
        Ok(exec)
    }

    pub fn state(&self) -> State {
        self.lock().state
    }

    pub fn pid(&self) -> i32 {
        self.lock().pid
    }

    pub async fn start(self: &Arc<Self>, task: ExecHost) -> Result<i32, TaskError> {
        // Refused before anything is done; applied once the process runs.
        let start = |state: State| state.start()?.started();
        start(self.state())?;
        let dir = &task.dir;
        let process = dir.join(format!("exec-{}.json", self.id));
        std::fs::write(&process, &self.process)
            .map_err(TaskError::io("writing the exec process"))?;
        let pid_file = dir.join(format!("exec-{}.pid", self.id));
        let (stdin, stdout, stderr, terminal) = &self.stdio;
        let logger = LoggerContext {
            container_id: &task.container_id,
            namespace: &task.events.namespace,
            reaper: task.runc.reaper(),
        };
        let paths = StdioPaths {
            stdin,
            stdout,
            stderr,
            terminal: *terminal,
            owner: task.io_owner,
        };
        let opened = stdio::open(&paths, &logger).await?;
        let log = dir.join(format!("exec-{}.log", self.id));
        let exec = task
            .runc
            .exec_process(&task.container_id, &process, &pid_file, &log, opened.io);
        let attached = PendingConsole::attach_during::<TaskError>(opened.console, exec);
        let launched = task.runc.launched(&pid_file, attached).await;
        let _ = std::fs::remove_file(&process);
        let (console, Launched { pid, exit }) = launched?;
        {
            let mut inner = self.lock();
            inner.pid = pid;
            inner.state.apply(start)?;
            inner.console = console;
        }
        let event = TaskExecStarted {
            container_id: task.container_id.clone(),
            exec_id: self.id.clone(),
            pid: pid as u32,
            ..Default::default()
        };
        task.events
            .publish(topics::TASK_EXEC_STARTED_EVENT_TOPIC, event)
            .await;
        let exec = self.clone();
        tokio::spawn(async move {
            let status = exit.await;
            exec.exited(&task, Exited::now(status.code())).await;
        });
        Ok(pid)
    }

    async fn exited(&self, task: &ExecHost, exited: Exited) {
        let pid = {
            let mut inner = self.lock();
            if let Err(error) = inner.state.apply(State::exit) {
                tracing::error!(exec = %self.id, %error, "exec process exited");
            }
            inner.pid
        };
        self.exit.set(exited);
        let event = TaskExit {
            container_id: task.container_id.clone(),
            id: self.id.clone(),
            pid: pid as u32,
            exit_status: exited.status,
            exited_at: Some(exited.timestamp()).into(),
            ..Default::default()
        };
        task.events
            .publish(topics::TASK_EXIT_EVENT_TOPIC, event)
            .await;
    }

    pub fn kill(&self, runc: &Runc, signal: Signal) -> Result<(), TaskError> {
        let inner = self.lock();
        if inner.state != State::Running {
            return Err(TaskError::NotFound(format!(
                "exec {} is {}, not running",
                self.id, inner.state
            )));
        }
        runc.reaper()
            .kill(inner.pid, signal)
            .map_err(|errno| TaskError::NotFound(format!("exec {}: {errno}", self.id)))
    }

    pub fn resize(&self, width: u16, height: u16) -> Result<(), TaskError> {
        match &self.lock().console {
            Some(console) => console
                .resize(width, height)
                .map_err(TaskError::io("resizing the terminal")),
            None => Err(TaskError::NotFound(format!(
                "exec {} has no terminal",
                self.id
            ))),
        }
    }

    /// An exec that never started can go at once; a started one once it has exited.
    pub fn delete(&self) -> Result<Option<Exited>, TaskError> {
        let mut inner = self.lock();
        inner.state.apply(State::delete)?;
        Ok(self.exit.get())
    }

    fn lock(&self) -> MutexGuard<'_, ExecInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}
