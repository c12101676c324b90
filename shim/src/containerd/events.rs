//! Events to containerd, and exit records shared by the task and its exec processes.

use std::sync::Arc;
use std::time::SystemTime;

use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::Message;
use containerd_shim::protos::shim::event::Envelope;
use containerd_shim::protos::shim::events::ForwardRequest;
use containerd_shim::protos::shim_async::Events as EventsService;
use containerd_shim::protos::ttrpc::r#async::TtrpcContext;
use tokio::sync::watch;

/// The protobuf package of containerd's task events (`containerd.events.TaskExit`, ...).
const EVENTS_PACKAGE: &str = "containerd.events";

/// Publishes task events to containerd in the task's namespace.
#[derive(Clone)]
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

    /// Queues an event; the publisher retries delivery, so a failure here is only logged.
    ///
    /// The envelope is built here and handed to the publisher's queue through its `Forward`
    /// (the Events service it implements): its own `publish` packs the event with
    /// `convert_to_any`, which asks protobuf's reflection for the type name and so parses and
    /// keeps the event's whole .proto file tree in memory, about 0.4 MiB per shim for good.
    pub async fn publish<M: Message>(&self, topic: &str, event: M) {
        if let Err(error) = self.forward(topic, &event).await {
            tracing::warn!(topic, %error, "could not publish event");
        }
    }

    async fn forward<M: Message>(
        &self,
        topic: &str,
        event: &M,
    ) -> Result<(), containerd_shim::Error> {
        let envelope = Envelope {
            timestamp: Some(timestamp(SystemTime::now())).into(),
            namespace: self.namespace.clone(),
            topic: topic.to_owned(),
            event: Some(pack(EVENTS_PACKAGE, event)?).into(),
            ..Default::default()
        };
        let request = ForwardRequest {
            envelope: Some(envelope).into(),
            ..Default::default()
        };
        let context = TtrpcContext {
            mh: Default::default(),
            metadata: Default::default(),
            timeout_nano: 0,
        };
        self.publisher.forward(&context, request).await?;
        Ok(())
    }
}

/// Packs a message as an `Any` of type `<package>.<name>`, the type URL containerd's typeurl
/// resolves, without protobuf's reflection (see [`Events::publish`]).
pub fn pack<M: Message>(package: &str, message: &M) -> Result<Any, containerd_shim::Error> {
    Ok(Any {
        type_url: format!("{package}.{}", M::NAME),
        value: message.write_to_bytes()?,
        ..Default::default()
    })
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
