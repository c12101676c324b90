//! Events to containerd, and exit records shared by the task and its exec processes.

use std::sync::Arc;
use std::time::SystemTime;

use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::Context;
use tokio::sync::watch;

/// Publishes task events to containerd in the task's namespace.
pub struct Events {
    publisher: Arc<RemotePublisher>,
    pub namespace: String,
}

impl Events {
    pub fn new(publisher: Arc<RemotePublisher>, namespace: &str) -> Events {
        Events {
            publisher,
            namespace: namespace.to_owned(),
        }
    }

    /// Queues an event; containerd retries delivery, so a failure here is only logged.
    pub async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        if let Err(error) = self
            .publisher
            .publish(Context::default(), topic, &self.namespace, event)
            .await
        {
            tracing::warn!(topic, %error, "could not publish event");
        }
    }
}

/// How and when a process ended.
#[derive(Debug, Clone, Copy)]
pub struct Exited {
    pub status: u32,
    pub at: SystemTime,
}

impl Exited {
    pub fn now(status: i32) -> Exited {
        Exited {
            status: status as u32,
            at: SystemTime::now(),
        }
    }

    pub fn timestamp(&self) -> Timestamp {
        timestamp(self.at)
    }
}

pub fn timestamp(at: SystemTime) -> Timestamp {
    let since = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let mut ts = Timestamp::new();
    ts.seconds = since.as_secs() as i64;
    ts.nanos = since.subsec_nanos() as i32;
    ts
}

/// A process's exit, once known, for any number of waiters.
pub struct ExitCell(watch::Sender<Option<Exited>>);

impl ExitCell {
    pub fn new() -> ExitCell {
        ExitCell(watch::channel(None).0)
    }

    pub fn set(&self, exited: Exited) {
        self.0.send_replace(Some(exited));
    }

    pub fn get(&self) -> Option<Exited> {
        *self.0.borrow()
    }

    pub async fn wait(&self) -> Exited {
        let mut rx = self.0.subscribe();
        loop {
            if let Some(exited) = *rx.borrow_and_update() {
                return exited;
            }
            // The sender lives in `self`, so this only fails if the process record is gone.
            if rx.changed().await.is_err() {
                return Exited::now(137);
            }
        }
    }
}
