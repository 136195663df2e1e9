//! Change notifications: after each new revision's bundle is built, a protobuf
//! `RevisionNotification` goes to NATS (`<prefix>.revisions`) and to in-process subscribers (the
//! embedded target's proxy). The latest revision is announced again at start and after every
//! reconnect to NATS, so a lost message costs a receiver nothing but time.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::connection::State as ConnectionState;
use heimdall_proto::events::RevisionNotification;
use prost::Message;
use tokio::sync::{broadcast, mpsc};

use crate::error::ControlPlaneError;

/// How many notifications an in-process subscriber may lag behind before it misses some.
const IN_PROCESS_CAPACITY: usize = 64;
/// How long a publish waits for the server's acknowledgement of the flush.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Where notifications go.
#[derive(Clone)]
pub struct Notifier {
    nats: Option<NatsTarget>,
    in_process: broadcast::Sender<RevisionNotification>,
    last: Arc<Mutex<Option<RevisionNotification>>>,
}

/// The NATS side: a client, and the queue its sender task publishes from in order, so that a
/// NATS outage never holds up bundle publishing.
#[derive(Clone)]
struct NatsTarget {
    client: async_nats::Client,
    outbox: mpsc::UnboundedSender<RevisionNotification>,
}

impl Notifier {
    /// A notifier with in-process subscribers only.
    pub fn in_process() -> Self {
        let (in_process, _) = broadcast::channel(IN_PROCESS_CAPACITY);
        Self {
            nats: None,
            in_process,
            last: Arc::new(Mutex::new(None)),
        }
    }

    /// A notifier that also publishes to NATS at `url` on `<subject_prefix>.revisions`.
    ///
    /// Connecting does not wait for the server: publishing starts once it is reachable, and
    /// every (re)connection announces the latest revision.
    pub async fn with_nats(url: &str, subject_prefix: &str) -> Result<Self, ControlPlaneError> {
        let mut notifier = Self::in_process();
        let (reconnected, mut reconnections) = mpsc::unbounded_channel();
        let client = async_nats::ConnectOptions::new()
            .name("heimdall-control-plane")
            .retry_on_initial_connect()
            .event_callback(move |event| {
                let reconnected = reconnected.clone();
                async move {
                    tracing::info!(event = %event, "nats connection event");
                    if matches!(event, async_nats::Event::Connected) {
                        let _ = reconnected.send(());
                    }
                }
            })
            .connect(url)
            .await
            .map_err(|error| ControlPlaneError::Config(format!("nats.url {url:?}: {error}")))?;
        let subject = format!("{subject_prefix}.revisions");
        let (outbox, queued) = mpsc::unbounded_channel();
        tokio::spawn(send_queued(client.clone(), subject, queued));
        notifier.nats = Some(NatsTarget { client, outbox });
        let announcer = notifier.clone();
        tokio::spawn(async move {
            while reconnections.recv().await.is_some() {
                announcer.announce();
            }
        });
        Ok(notifier)
    }

    /// Subscribes in-process.
    pub fn subscribe(&self) -> broadcast::Receiver<RevisionNotification> {
        self.in_process.subscribe()
    }

    /// Returns whether NATS, if configured, is connected.
    pub fn nats_connected(&self) -> bool {
        self.nats
            .as_ref()
            .is_none_or(|nats| nats.client.connection_state() == ConnectionState::Connected)
    }

    /// Sends a notification everywhere and remembers it for announcements.
    pub fn notify(&self, notification: RevisionNotification) {
        if let Ok(mut last) = self.last.lock() {
            *last = Some(notification.clone());
        }
        let _ = self.in_process.send(notification.clone());
        self.publish(&notification);
    }

    /// Sends the latest notification again, marked as touching every tenant.
    pub fn announce(&self) {
        let last = self.last.lock().ok().and_then(|last| last.clone());
        if let Some(mut notification) = last {
            notification.changed_tenants.clear();
            notification.all_tenants = true;
            self.publish(&notification);
        }
    }

    fn publish(&self, notification: &RevisionNotification) {
        if let Some(nats) = &self.nats {
            let _ = nats.outbox.send(notification.clone());
        }
    }
}

/// Publishes queued notifications in order.
async fn send_queued(
    client: async_nats::Client,
    subject: String,
    mut queued: mpsc::UnboundedReceiver<RevisionNotification>,
) {
    while let Some(notification) = queued.recv().await {
        let payload = bytes::Bytes::from(notification.encode_to_vec());
        let revision = notification.revision;
        if let Err(error) = client.publish(subject.clone(), payload).await {
            tracing::warn!(revision, error = %error, "nats publish failed");
            continue;
        }
        match tokio::time::timeout(FLUSH_TIMEOUT, client.flush()).await {
            Ok(Ok(())) => tracing::debug!(revision, subject = %subject, "notified"),
            _ => tracing::debug!(revision, "nats flush not confirmed"),
        }
    }
}
