//! Keeps the proxy's policy bundle current: loaded at start, again on each change notification
//! (NATS or in-process) and on a reconcile timer; swapped atomically; never replaced by an older
//! revision; the last good bundle kept when a fetch fails.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::StreamExt;
use heimdall_opa::bundle::{self, Bundle};
use heimdall_opa::engine::EmbeddedEngine;
use heimdall_proto::events::RevisionNotification;
use object_store::{ObjectStore, ObjectStoreExt};
use prost::Message;
use sha2::{Digest, Sha256};
use tokio::sync::{broadcast, watch};

use crate::metrics::ProxyMetrics;

/// The most a bundle download may weigh.
const MAX_BUNDLE_BYTES: usize = 256 * 1024 * 1024;
/// How long one bundle download may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(60);
/// Retries while a fetched bundle is older than the notification announced: the control plane
/// announces a bundle as soon as it is built, and its write to a folder or bucket may land a few
/// milliseconds later. Waits double from 5 ms, about 0.6 s in all.
const BEHIND_RETRIES: u32 = 7;

/// The bundle decisions are made with.
pub struct LoadedBundle {
    /// The event revision it was built at.
    pub revision: u64,
    /// The manifest revision (`<revision>-<policy digest>`).
    pub manifest_revision: String,
    /// SHA-256 of the bundle bytes: the control plane's ETag.
    pub digest: String,
    /// The embedded engine; None when a remote OPA decides.
    pub engine: Option<Arc<EmbeddedEngine>>,
    pub loaded_at: SystemTime,
}

/// The live bundle, None until the first load.
pub type LiveBundle = watch::Receiver<Option<Arc<LoadedBundle>>>;

/// Returns the latest bundle of an in-process control plane.
pub type LatestBundle = Arc<dyn Fn() -> Option<Arc<Bundle>> + Send + Sync>;

/// Where bundles are fetched from.
#[derive(Clone)]
pub enum BundleSource {
    /// The control plane's bundle endpoint (or any HTTP server holding the file).
    Http {
        url: String,
        token: Option<String>,
        client: reqwest::Client,
    },
    /// The bucket or folder the control plane publishes to.
    Store {
        store: Arc<dyn ObjectStore>,
        path: object_store::path::Path,
    },
    /// The control plane in the same process.
    InProcess(LatestBundle),
}

impl std::fmt::Debug for BundleSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Http { url, .. } => f.write_str(&redact_url(url)),
            Self::Store { store, path } => write!(f, "{store}/{path}"),
            Self::InProcess(_) => f.write_str("in-process control plane"),
        }
    }
}

impl BundleSource {
    /// The control plane's bundle endpoint at `url`, with a bearer token if given.
    pub fn http(
        url: &str,
        token: Option<String>,
        insecure_skip_verify: bool,
    ) -> Result<Self, SyncError> {
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .tls_danger_accept_invalid_certs(insecure_skip_verify)
            .build()
            .map_err(|error| SyncError(format!("building the HTTP client: {error}")))?;
        Ok(Self::Http {
            url: url.to_owned(),
            token,
            client,
        })
    }
}

/// Where change notifications come from.
pub enum Notifications {
    /// NATS subject `<prefix>.revisions`.
    Nats { url: String, subject_prefix: String },
    /// The in-process control plane's channel.
    InProcess(broadcast::Receiver<RevisionNotification>),
    /// None: the reconcile timer alone.
    None,
}

/// Why a fetch failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct SyncError(pub String);

/// The sync loop's settings.
#[derive(Debug, Clone)]
pub struct SyncSettings {
    pub reconcile_interval: Duration,
    /// Whether to build the embedded engine (false when a remote OPA decides).
    pub load_engine: bool,
}

/// Fetches, checks and swaps bundles.
pub struct BundleSync {
    source: BundleSource,
    settings: SyncSettings,
    live: watch::Sender<Option<Arc<LoadedBundle>>>,
    metrics: ProxyMetrics,
}

impl BundleSync {
    /// Returns the sync loop and the live bundle it feeds.
    pub fn new(
        source: BundleSource,
        settings: SyncSettings,
        metrics: ProxyMetrics,
    ) -> (Self, LiveBundle) {
        let (live, receiver) = watch::channel(None);
        let sync = Self {
            source,
            settings,
            live,
            metrics,
        };
        (sync, receiver)
    }

    /// Runs until `shutdown` turns true: syncs at start, on notifications and on the timer.
    pub async fn run(self, notifications: Notifications, mut shutdown: watch::Receiver<bool>) {
        let (wake, woken) = watch::channel(0_u64);
        let mut woken = Some(woken);
        let listener = tokio::spawn(listen(notifications, wake));
        let mut retry_delay = Duration::from_millis(100);
        let mut announced = 0_u64;
        loop {
            let result = self.sync_once(announced).await;
            // Handled, or given up on: an announcement the source never reaches (a bogus
            // message, a restored database) must not make every later sync retry.
            announced = 0;
            let delay = match result {
                Ok(()) => {
                    retry_delay = Duration::from_millis(100);
                    self.settings.reconcile_interval
                }
                Err(error) => {
                    self.metrics
                        .bundle_loads
                        .with_label_values(&["failed"])
                        .inc();
                    tracing::warn!(source = ?self.source, error = %error, "bundle sync failed");
                    // Fast retries until the first bundle is in; then the timer is enough.
                    let delay = if self.live.borrow().is_none() {
                        retry_delay
                    } else {
                        retry_delay.max(Duration::from_secs(1))
                    };
                    retry_delay = (retry_delay * 2).min(self.settings.reconcile_interval);
                    delay.min(self.settings.reconcile_interval)
                }
            };
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                revision = next_announcement(&mut woken) => match revision {
                    Some(revision) => announced = announced.max(revision),
                    // The listener is gone (its channel closed): the timer alone from now on.
                    None => woken = None,
                },
                _ = shutdown.wait_for(|stop| *stop) => break,
            }
        }
        listener.abort();
    }

    /// Fetches the bundle and installs it if it is new. `announced` is the newest revision a
    /// notification named: a fetched bundle older than it is retried briefly.
    async fn sync_once(&self, announced: u64) -> Result<(), SyncError> {
        let mut attempt = 0;
        loop {
            self.fetch_and_install().await?;
            let current = self.current_revision();
            if current >= announced || attempt >= BEHIND_RETRIES {
                if current < announced {
                    tracing::warn!(
                        announced,
                        current,
                        "bundle source is behind the notification"
                    );
                }
                return Ok(());
            }
            attempt += 1;
            tokio::time::sleep(Duration::from_millis(5 << (attempt - 1))).await;
        }
    }

    fn current_revision(&self) -> u64 {
        self.live
            .borrow()
            .as_ref()
            .map_or(0, |bundle| bundle.revision)
    }

    async fn fetch_and_install(&self) -> Result<(), SyncError> {
        let current = self.live.borrow().clone();
        let known_digest = current.as_ref().map(|bundle| bundle.digest.clone());
        let Some(bytes) = fetch(&self.source, known_digest.as_deref()).await? else {
            self.metrics
                .bundle_loads
                .with_label_values(&["unchanged"])
                .inc();
            return Ok(());
        };
        let load_engine = self.settings.load_engine;
        let known = known_digest.clone();
        // Hashing and loading a large bundle takes a while: off the async workers.
        let loaded = tokio::task::spawn_blocking(move || {
            let digest = hex(&Sha256::digest(&bytes));
            if known.as_deref() == Some(digest.as_str()) {
                return Ok(None);
            }
            load(&bytes, digest, load_engine).map(Some)
        })
        .await
        .map_err(|error| SyncError(format!("loading the bundle: {error}")))??;
        let Some(loaded) = loaded else {
            self.metrics
                .bundle_loads
                .with_label_values(&["unchanged"])
                .inc();
            return Ok(());
        };
        if let Some(current) = &current
            && loaded.revision < current.revision
        {
            self.metrics
                .bundle_loads
                .with_label_values(&["stale"])
                .inc();
            tracing::warn!(
                fetched = loaded.revision,
                current = current.revision,
                "ignoring a bundle older than the loaded one"
            );
            return Ok(());
        }
        self.install(loaded);
        Ok(())
    }

    fn install(&self, loaded: LoadedBundle) {
        let revision = loaded.revision;
        let manifest_revision = loaded.manifest_revision.clone();
        let loaded_at = loaded
            .loaded_at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs());
        self.live.send_replace(Some(Arc::new(loaded)));
        self.metrics
            .bundle_loads
            .with_label_values(&["loaded"])
            .inc();
        self.metrics
            .bundle_revision
            .set(i64::try_from(revision).unwrap_or(i64::MAX));
        self.metrics
            .bundle_loaded_timestamp
            .set(i64::try_from(loaded_at).unwrap_or(i64::MAX));
        tracing::info!(revision, manifest_revision = %manifest_revision, "loaded bundle");
    }
}

/// Waits for the next wake-up and returns the newest announced revision; None once the listener
/// is gone, pending forever after that.
async fn next_announcement(woken: &mut Option<watch::Receiver<u64>>) -> Option<u64> {
    let Some(receiver) = woken else {
        return std::future::pending().await;
    };
    receiver.changed().await.ok()?;
    Some(*receiver.borrow_and_update())
}

/// Reads and checks a bundle, and builds its engine.
fn load(bytes: &[u8], digest: String, load_engine: bool) -> Result<LoadedBundle, SyncError> {
    let contents =
        bundle::read(bytes).map_err(|error| SyncError(format!("bad bundle: {error}")))?;
    let revision = event_revision(&contents.revision)?;
    let engine = if load_engine {
        let engine = EmbeddedEngine::from_bundle(bytes)
            .map_err(|error| SyncError(format!("bad bundle: {error}")))?;
        Some(Arc::new(engine))
    } else {
        None
    };
    Ok(LoadedBundle {
        revision,
        manifest_revision: contents.revision,
        digest,
        engine,
        loaded_at: SystemTime::now(),
    })
}

/// Reads the event revision out of a manifest revision `<revision>-<policy digest>`.
fn event_revision(manifest_revision: &str) -> Result<u64, SyncError> {
    manifest_revision
        .split_once('-')
        .and_then(|(revision, _)| revision.parse().ok())
        .ok_or_else(|| {
            SyncError(format!(
                "bundle revision {manifest_revision:?} is not <revision>-<digest>"
            ))
        })
}

/// Fetches the bundle bytes; None when the source says they have not changed.
async fn fetch(
    source: &BundleSource,
    known_digest: Option<&str>,
) -> Result<Option<Bytes>, SyncError> {
    match source {
        BundleSource::Http { url, token, client } => {
            fetch_http(client, url, token.as_deref(), known_digest).await
        }
        BundleSource::Store { store, path } => {
            let result = store
                .get(path)
                .await
                .map_err(|error| SyncError(format!("reading {path}: {error}")))?;
            if result.meta.size > MAX_BUNDLE_BYTES as u64 {
                return Err(SyncError(format!(
                    "{path} is larger than {MAX_BUNDLE_BYTES} bytes"
                )));
            }
            let bytes = result
                .bytes()
                .await
                .map_err(|error| SyncError(format!("reading {path}: {error}")))?;
            Ok(Some(bytes))
        }
        BundleSource::InProcess(latest) => match latest() {
            Some(bundle) if Some(bundle.digest.as_str()) == known_digest => Ok(None),
            Some(bundle) => Ok(Some(Bytes::from(bundle.bytes.clone()))),
            None => Err(SyncError(
                "the control plane has built no bundle yet".to_owned(),
            )),
        },
    }
}

async fn fetch_http(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    known_digest: Option<&str>,
) -> Result<Option<Bytes>, SyncError> {
    let failed = |error: reqwest::Error| SyncError(format!("{url}: {}", error.without_url()));
    let mut request = client.get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(digest) = known_digest {
        request = request.header(http::header::IF_NONE_MATCH, format!("\"{digest}\""));
    }
    let mut response = request.send().await.map_err(failed)?;
    match response.status() {
        http::StatusCode::NOT_MODIFIED => return Ok(None),
        status if status.is_success() => {}
        status => return Err(SyncError(format!("{url}: status {status}"))),
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(failed)? {
        if body.len() + chunk.len() > MAX_BUNDLE_BYTES {
            return Err(SyncError(format!(
                "{url}: larger than {MAX_BUNDLE_BYTES} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(Bytes::from(body)))
}

/// Forwards notifications to the sync loop as the newest announced revision. A (re)connection
/// to NATS also wakes the loop, since notifications may have been missed meanwhile.
async fn listen(notifications: Notifications, wake: watch::Sender<u64>) {
    let announce = |revision: u64| {
        wake.send_modify(|newest| *newest = (*newest).max(revision));
    };
    match notifications {
        Notifications::None => std::future::pending::<()>().await,
        Notifications::InProcess(mut receiver) => loop {
            match receiver.recv().await {
                Ok(notification) => announce(notification.revision),
                Err(broadcast::error::RecvError::Lagged(_)) => wake.send_modify(|_| {}),
                Err(broadcast::error::RecvError::Closed) => return,
            }
        },
        Notifications::Nats {
            url,
            subject_prefix,
        } => {
            let subject = format!("{subject_prefix}.revisions");
            let reconnect_wake = wake.clone();
            let connected = async_nats::ConnectOptions::new()
                .name("heimdall-proxy")
                .retry_on_initial_connect()
                .event_callback(move |event| {
                    let wake = reconnect_wake.clone();
                    async move {
                        if matches!(event, async_nats::Event::Connected) {
                            tracing::info!("connected to nats");
                            wake.send_modify(|_| {});
                        } else {
                            tracing::debug!(event = %event, "nats event");
                        }
                    }
                })
                .connect(url.as_str())
                .await;
            let client = match connected {
                Ok(client) => client,
                Err(error) => {
                    tracing::error!(error = %error, "cannot use nats; reconciling on the timer only");
                    return;
                }
            };
            let mut subscriber = match client.subscribe(subject.clone()).await {
                Ok(subscriber) => subscriber,
                Err(error) => {
                    tracing::error!(error = %error, subject = %subject, "cannot subscribe to nats");
                    return;
                }
            };
            tracing::info!(subject = %subject, "subscribed to revision notifications");
            while let Some(message) = subscriber.next().await {
                match RevisionNotification::decode(message.payload.as_ref()) {
                    Ok(notification) => {
                        tracing::debug!(revision = notification.revision, "revision notification");
                        announce(notification.revision);
                    }
                    Err(error) => {
                        tracing::warn!(error = %error, "undecodable revision notification");
                        wake.send_modify(|_| {});
                    }
                }
            }
        }
    }
}

/// Removes `user:password@` from a URL before it is logged.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://<redacted>@{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
