//! The containerd task v2 service. Each ttrpc method is a thin adapter over a plain method of
//! [`Service`] that returns a typed [`TaskError`]; `TaskError::code` is the one mapping to
//! ttrpc status codes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use containerd_shim::api::*;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::protos::events::task::{TaskDelete, TaskPaused, TaskResumed};
use containerd_shim::protos::shim_async::Task as TaskService;
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc::r#async::TtrpcContext;
use containerd_shim::protos::ttrpc::Result as TtrpcResult;
use containerd_shim::protos::types::task::ProcessInfo;
use nix::sys::signal::Signal;

use super::error::TaskError;
use super::events::{pack, Events, Exited};
use super::exec::ExecProcess;
use super::options::RuntimeOptions;
use super::state::State;
use super::task::Task;
use crate::os::reaper::Reaper;

/// The protobuf package of the cgroup metrics Stats returns, for their type URL.
const METRICS_PACKAGE: &str = "io.containerd.cgroups.v1";

pub struct Service {
    namespace: String,
    exit: Arc<ExitSignal>,
    publisher: Arc<RemotePublisher>,
    reaper: Reaper,
    /// The tasks this shim serves: one, or every container of its group (a pod).
    tasks: Mutex<HashMap<String, Arc<Task>>>,
}

impl Service {
    pub fn new(
        namespace: &str,
        exit: Arc<ExitSignal>,
        publisher: RemotePublisher,
        reaper: Reaper,
    ) -> Service {
        Service {
            namespace: namespace.to_owned(),
            exit,
            publisher: Arc::new(publisher),
            reaper,
            tasks: Mutex::new(HashMap::new()),
        }
    }

    async fn create(&self, req: CreateTaskRequest) -> Result<CreateTaskResponse, TaskError> {
        if self.lock_tasks().contains_key(&req.id) {
            return Err(TaskError::AlreadyExists(format!(
                "task {} already exists",
                req.id
            )));
        }
        let options = RuntimeOptions::from_any(req.options.as_ref())?;
        let bundle = std::path::Path::new(&req.bundle);
        // Kept for the `delete` action, which must drive the same runc with the same root.
        options
            .save(bundle)
            .map_err(TaskError::io("saving the runtime options in the bundle"))?;
        let runc = options.runc(&self.namespace, bundle, self.reaper.clone());
        let events = Events::new(self.publisher.clone(), &self.namespace);
        let task = Task::create(&req, runc, options.io_owner(), events).await?;
        let pid = task.pid as u32;
        self.lock_tasks().insert(req.id.clone(), task);
        Ok(CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    fn task(&self, id: &str) -> Result<Arc<Task>, TaskError> {
        self.lock_tasks()
            .get(id)
            .cloned()
            .ok_or_else(|| TaskError::NotFound(format!("task {id} not found")))
    }

    fn find_exec(&self, id: &str, exec_id: &str) -> Result<Arc<ExecProcess>, TaskError> {
        self.task(id)?.exec_process(exec_id)
    }

    async fn start(&self, req: StartRequest) -> Result<StartResponse, TaskError> {
        let task = self.task(&req.id)?;
        let pid = if req.exec_id.is_empty() {
            task.start().await?;
            task.pid
        } else {
            self.find_exec(&req.id, &req.exec_id)?
                .start(task.exec_host())
                .await?
        };
        Ok(StartResponse {
            pid: pid as u32,
            ..Default::default()
        })
    }

    async fn state(&self, req: StateRequest) -> Result<StateResponse, TaskError> {
        let task = self.task(&req.id)?;
        let (state, pid, stdio, exit) = if req.exec_id.is_empty() {
            (task.state(), task.pid, task.stdio.clone(), task.exit.get())
        } else {
            let exec = self.find_exec(&req.id, &req.exec_id)?;
            (
                exec.state(),
                exec.pid(),
                exec.stdio.clone(),
                exec.exit.get(),
            )
        };
        let (stdin, stdout, stderr, terminal) = stdio;
        Ok(StateResponse {
            id: req.id,
            exec_id: req.exec_id,
            bundle: task.bundle.to_string_lossy().into_owned(),
            pid: pid as u32,
            status: state.api().into(),
            stdin,
            stdout,
            stderr,
            terminal,
            exit_status: exit.map_or(0, |e| e.status),
            exited_at: exit.map(|e| e.timestamp()).into(),
            ..Default::default()
        })
    }

    async fn wait(&self, req: WaitRequest) -> Result<WaitResponse, TaskError> {
        let task = self.task(&req.id)?;
        let exited = if req.exec_id.is_empty() {
            task.exit.wait().await
        } else {
            self.find_exec(&req.id, &req.exec_id)?.exit.wait().await
        };
        Ok(WaitResponse {
            exit_status: exited.status,
            exited_at: Some(exited.timestamp()).into(),
            ..Default::default()
        })
    }

    async fn kill(&self, req: KillRequest) -> Result<(), TaskError> {
        let task = self.task(&req.id)?;
        let signal =
            Signal::try_from(req.signal as i32).map_err(|_| TaskError::InvalidArgument {
                what: "signal",
                message: req.signal.to_string(),
            })?;
        if req.exec_id.is_empty() {
            task.kill(signal, req.all).await
        } else {
            self.find_exec(&req.id, &req.exec_id)?
                .kill(&task.runc, signal)
        }
    }

    async fn delete(&self, req: DeleteRequest) -> Result<DeleteResponse, TaskError> {
        let task = self.task(&req.id)?;
        let (pid, exited) = if req.exec_id.is_empty() {
            (task.pid, task.delete().await?)
        } else {
            let exec = self.find_exec(&req.id, &req.exec_id)?;
            let exited = exec.delete()?.unwrap_or_else(|| Exited::now(0));
            task.remove_exec(&req.exec_id);
            (exec.pid(), exited)
        };
        let event = TaskDelete {
            container_id: task.id.clone(),
            id: if req.exec_id.is_empty() {
                task.id.clone()
            } else {
                req.exec_id.clone()
            },
            pid: pid as u32,
            exit_status: exited.status,
            exited_at: Some(exited.timestamp()).into(),
            ..Default::default()
        };
        if req.exec_id.is_empty() {
            task.events
                .publish(topics::TASK_DELETE_EVENT_TOPIC, event)
                .await;
            // Gone from this shim: it exits at Shutdown once no task is left.
            self.lock_tasks().remove(&req.id);
        }
        Ok(DeleteResponse {
            pid: pid as u32,
            exit_status: exited.status,
            exited_at: Some(exited.timestamp()).into(),
            ..Default::default()
        })
    }

    async fn exec_process(&self, req: ExecProcessRequest) -> Result<(), TaskError> {
        let task = self.task(&req.id)?;
        task.state().may_exec()?;
        task.add_exec(&req).await
    }

    async fn pids(&self, req: PidsRequest) -> Result<PidsResponse, TaskError> {
        let task = self.task(&req.id)?;
        let processes = task
            .runc
            .ps(&task.id)
            .await?
            .into_iter()
            .map(|pid| ProcessInfo {
                pid: pid as u32,
                ..Default::default()
            })
            .collect();
        Ok(PidsResponse {
            processes,
            ..Default::default()
        })
    }

    async fn pause(&self, req: PauseRequest) -> Result<(), TaskError> {
        let task = self.task(&req.id)?;
        task.set_state(State::pause, || task.runc.pause(&task.id))
            .await?;
        let event = TaskPaused {
            container_id: task.id.clone(),
            ..Default::default()
        };
        task.events
            .publish(topics::TASK_PAUSED_EVENT_TOPIC, event)
            .await;
        Ok(())
    }

    async fn resume(&self, req: ResumeRequest) -> Result<(), TaskError> {
        let task = self.task(&req.id)?;
        task.set_state(State::resume, || task.runc.resume(&task.id))
            .await?;
        let event = TaskResumed {
            container_id: task.id.clone(),
            ..Default::default()
        };
        task.events
            .publish(topics::TASK_RESUMED_EVENT_TOPIC, event)
            .await;
        Ok(())
    }

    async fn update(&self, req: UpdateTaskRequest) -> Result<(), TaskError> {
        let task = self.task(&req.id)?;
        let resources = req.resources.as_ref().ok_or(TaskError::InvalidArgument {
            what: "update request",
            message: "it has no resources".to_owned(),
        })?;
        let path = task.state_dir().join("resources.json");
        std::fs::write(&path, &resources.value).map_err(TaskError::io("writing the resources"))?;
        let result = task.runc.update(&task.id, &path).await;
        let _ = std::fs::remove_file(&path);
        Ok(result?)
    }

    async fn stats(&self, req: StatsRequest) -> Result<StatsResponse, TaskError> {
        let task = self.task(&req.id)?;
        let cgroup = containerd_shim::cgroup::get_cgroup(task.pid as u32)
            .map_err(TaskError::shim("finding the container's cgroup"))?;
        let metrics = containerd_shim::cgroup::collect_metrics(&cgroup)
            .map_err(TaskError::shim("reading the container's cgroup"))?;
        let stats = pack(METRICS_PACKAGE, &metrics).map_err(TaskError::shim("encoding metrics"))?;
        Ok(StatsResponse {
            stats: Some(stats).into(),
            ..Default::default()
        })
    }

    async fn connect(&self, req: ConnectRequest) -> Result<ConnectResponse, TaskError> {
        let task_pid = self.lock_tasks().get(&req.id).map_or(0, |t| t.pid);
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: task_pid as u32,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            ..Default::default()
        })
    }

    fn resize_pty(&self, req: ResizePtyRequest) -> Result<(), TaskError> {
        let task = self.task(&req.id)?;
        let (width, height) = (req.width as u16, req.height as u16);
        if !req.exec_id.is_empty() {
            return self.find_exec(&req.id, &req.exec_id)?.resize(width, height);
        }
        match &task.console {
            Some(console) => console
                .resize(width, height)
                .map_err(TaskError::io("resizing the terminal")),
            None => Err(TaskError::NotFound(format!(
                "task {} has no terminal",
                task.id
            ))),
        }
    }

    /// The shim exits once its last task has been deleted (or none ever existed).
    async fn shutdown(&self) -> Result<(), TaskError> {
        if self.lock_tasks().is_empty() {
            self.exit.signal();
        }
        Ok(())
    }

    fn lock_tasks(&self) -> MutexGuard<'_, HashMap<String, Arc<Task>>> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl TaskService for Service {
    async fn create(
        &self,
        _: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> TtrpcResult<CreateTaskResponse> {
        Ok(Service::create(self, req).await?)
    }

    async fn start(&self, _: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        Ok(Service::start(self, req).await?)
    }

    async fn state(&self, _: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        Ok(Service::state(self, req).await?)
    }

    async fn wait(&self, _: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        Ok(Service::wait(self, req).await?)
    }

    async fn kill(&self, _: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        Service::kill(self, req).await?;
        Ok(Empty::new())
    }

    async fn delete(&self, _: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        Ok(Service::delete(self, req).await?)
    }

    async fn exec(&self, _: &TtrpcContext, req: ExecProcessRequest) -> TtrpcResult<Empty> {
        self.exec_process(req).await?;
        Ok(Empty::new())
    }

    async fn pids(&self, _: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        Ok(Service::pids(self, req).await?)
    }

    async fn pause(&self, _: &TtrpcContext, req: PauseRequest) -> TtrpcResult<Empty> {
        Service::pause(self, req).await?;
        Ok(Empty::new())
    }

    async fn resume(&self, _: &TtrpcContext, req: ResumeRequest) -> TtrpcResult<Empty> {
        Service::resume(self, req).await?;
        Ok(Empty::new())
    }

    async fn update(&self, _: &TtrpcContext, req: UpdateTaskRequest) -> TtrpcResult<Empty> {
        Service::update(self, req).await?;
        Ok(Empty::new())
    }

    async fn stats(&self, _: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        Ok(Service::stats(self, req).await?)
    }

    async fn connect(&self, _: &TtrpcContext, req: ConnectRequest) -> TtrpcResult<ConnectResponse> {
        Ok(Service::connect(self, req).await?)
    }

    async fn shutdown(&self, _: &TtrpcContext, _: ShutdownRequest) -> TtrpcResult<Empty> {
        Service::shutdown(self).await?;
        Ok(Empty::new())
    }

    /// The container's stdin is the fifo itself, so it ends when containerd closes its end;
    /// there is nothing of the shim's to close.
    async fn close_io(&self, _: &TtrpcContext, req: CloseIORequest) -> TtrpcResult<Empty> {
        self.task(&req.id)?;
        Ok(Empty::new())
    }

    async fn resize_pty(&self, _: &TtrpcContext, req: ResizePtyRequest) -> TtrpcResult<Empty> {
        Service::resize_pty(self, req)?;
        Ok(Empty::new())
    }

    async fn checkpoint(&self, _: &TtrpcContext, _: CheckpointTaskRequest) -> TtrpcResult<Empty> {
        Err(TaskError::Unimplemented("Checkpoint").into())
    }
}
