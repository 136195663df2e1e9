//! Bundle publishing: every committed revision becomes an OPA bundle, written to object storage
//! under an immutable per-revision key and the stable latest key, and kept in memory for the
//! HTTP endpoint.
//!
//! Publishing never holds up a commit. When the store fails, the publisher retries with backoff,
//! reports the failure (readiness says so), and on recovery writes every revision it missed, so
//! the bucket never has a hole. The in-memory latest bundle follows the database regardless.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::collections::BTreeSet;

use heimdall_opa::bundle::{self, Bundle};
use heimdall_opa::{Policy, TenantScope};
use heimdall_proto::events::RevisionNotification;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use tokio::sync::watch;

use crate::error::ControlPlaneError;
use crate::events::DomainEvent;
use crate::metrics::ControlPlaneMetrics;
use crate::notify::Notifier;
use crate::projection::State;
use crate::store::EventStore;

/// The stable key of the newest bundle.
pub const LATEST_KEY: &str = "bundles/bundle.tar.gz";
/// Backoff between failed attempts to write to the store.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Where bundles are published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BundleStorage {
    /// A local folder.
    LocalDir(std::path::PathBuf),
    /// An S3 bucket or S3-compatible store.
    S3(S3Storage),
    /// A Google Cloud Storage bucket; credentials from `GOOGLE_*` variables.
    Gcs { bucket: String, prefix: String },
    /// An Azure Blob Storage container; account and credentials from `AZURE_*` variables.
    Azure { container: String, prefix: String },
}

/// An S3 or S3-compatible location. Credentials left empty come from the standard `AWS_*`
/// environment variables.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Storage {
    pub bucket: String,
    /// Key prefix inside the bucket, without a leading or trailing `/`.
    pub prefix: String,
    /// An S3-compatible endpoint (SeaweedFS, MinIO); None: AWS.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub allow_http: bool,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
}

/// Never prints the secret key.
impl std::fmt::Debug for S3Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Storage")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("allow_http", &self.allow_http)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl std::fmt::Display for BundleStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::LocalDir(dir) => write!(f, "file://{}", dir.display()),
            Self::S3(s3) => write!(f, "s3://{}/{}", s3.bucket, s3.prefix),
            Self::Gcs { bucket, prefix } => write!(f, "gs://{bucket}/{prefix}"),
            Self::Azure { container, prefix } => write!(f, "az://{container}/{prefix}"),
        }
    }
}

impl BundleStorage {
    /// Opens the store; a local folder is created if missing.
    pub fn open(&self) -> Result<Arc<dyn ObjectStore>, ControlPlaneError> {
        let config_error =
            |error: String| ControlPlaneError::Config(format!("bundle storage {self}: {error}"));
        match self {
            Self::LocalDir(dir) => {
                std::fs::create_dir_all(dir).map_err(|error| config_error(error.to_string()))?;
                let store = object_store::local::LocalFileSystem::new_with_prefix(dir)
                    .map_err(|error| config_error(error.to_string()))?;
                Ok(Arc::new(store))
            }
            Self::S3(s3) => {
                let mut builder = object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(&s3.bucket)
                    .with_allow_http(s3.allow_http)
                    .with_retry(fail_fast());
                if let Some(endpoint) = &s3.endpoint {
                    builder = builder.with_endpoint(endpoint);
                }
                if let Some(region) = &s3.region {
                    builder = builder.with_region(region);
                }
                if let Some(key) = &s3.access_key_id {
                    builder = builder.with_access_key_id(key);
                }
                if let Some(secret) = &s3.secret_access_key {
                    builder = builder.with_secret_access_key(secret);
                }
                let store = builder
                    .build()
                    .map_err(|error| config_error(error.to_string()))?;
                Ok(with_prefix(store, &s3.prefix))
            }
            Self::Gcs { bucket, prefix } => {
                let store = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_bucket_name(bucket)
                    .with_retry(fail_fast())
                    .build()
                    .map_err(|error| config_error(error.to_string()))?;
                Ok(with_prefix(store, prefix))
            }
            Self::Azure { container, prefix } => {
                let store = object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_container_name(container)
                    .with_retry(fail_fast())
                    .build()
                    .map_err(|error| config_error(error.to_string()))?;
                Ok(with_prefix(store, prefix))
            }
        }
    }
}

/// Few, quick retries: the publisher's own backoff retries for longer, and readiness should
/// report an outage within seconds rather than minutes.
fn fail_fast() -> object_store::RetryConfig {
    object_store::RetryConfig {
        max_retries: 2,
        retry_timeout: Duration::from_secs(10),
        ..object_store::RetryConfig::default()
    }
}

fn with_prefix(store: impl ObjectStore, prefix: &str) -> Arc<dyn ObjectStore> {
    if prefix.is_empty() {
        return Arc::new(store);
    }
    Arc::new(object_store::prefix::PrefixStore::new(store, prefix))
}

/// Returns the immutable key of one revision's bundle.
pub fn revision_key(revision: u64) -> String {
    format!("bundles/revisions/{revision}.tar.gz")
}

/// Builds the bundle of a projected state.
pub fn bundle_of(state: &State) -> Result<Bundle, ControlPlaneError> {
    let tenants = state.tenants.values().map(|record| &record.tenant);
    let policies = state.policies.values().map(|record| &record.policy);
    bundle::build(state.revision, tenants, policies)
        .map_err(|error| ControlPlaneError::Internal(format!("building bundle: {error}")))
}

/// How publishing to the object store goes, for readiness.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishHealth {
    /// The newest revision known to be in the store (its latest key and every revision key).
    pub stored_revision: u64,
    /// The last error, while writing keeps failing.
    pub failing: Option<String>,
}

/// What the HTTP endpoint reads: the latest bundle and the publisher's health.
#[derive(Clone)]
pub struct PublishedBundles {
    latest: watch::Receiver<Option<Arc<Bundle>>>,
    health: Arc<Mutex<PublishHealth>>,
    notifier: Notifier,
}

impl PublishedBundles {
    /// Returns the newest bundle, once one is built.
    pub fn latest(&self) -> Option<Arc<Bundle>> {
        self.latest.borrow().clone()
    }

    /// Waits until the latest bundle differs from the one with `digest`, and returns it.
    pub async fn changed_from(&self, digest: &str) -> Option<Arc<Bundle>> {
        let mut latest = self.latest.clone();
        let changed = latest
            .wait_for(|bundle| {
                bundle
                    .as_ref()
                    .is_some_and(|bundle| bundle.digest != digest)
            })
            .await
            .ok()?;
        changed.clone()
    }

    /// Subscribes to the in-process change notifications, sent after each new bundle.
    pub fn notifications(&self) -> tokio::sync::broadcast::Receiver<RevisionNotification> {
        self.notifier.subscribe()
    }

    /// Returns whether the change notifier's NATS connection, if any, is up.
    pub fn notifications_connected(&self) -> bool {
        self.notifier.nats_connected()
    }

    pub fn health(&self) -> PublishHealth {
        self.health
            .lock()
            .map(|health| health.clone())
            .unwrap_or_default()
    }
}

/// Builds and stores bundles as the ledger's revision advances.
pub struct Publisher {
    events: EventStore,
    store: Arc<dyn ObjectStore>,
    metrics: ControlPlaneMetrics,
    notifier: Notifier,
    latest: watch::Sender<Option<Arc<Bundle>>>,
    health: Arc<Mutex<PublishHealth>>,
}

/// The tenants a stretch of events may have changed decisions for.
#[derive(Debug, Default)]
struct ChangedTenants {
    tenants: BTreeSet<String>,
    all: bool,
}

impl ChangedTenants {
    fn add_scope(&mut self, policy: &Policy) {
        for scope in &policy.scope.tenants {
            match scope {
                TenantScope::AllRegistered => self.all = true,
                TenantScope::Tenant(id) => {
                    self.tenants.insert(id.to_string());
                }
            }
        }
    }
}

impl Publisher {
    /// Creates the publisher and the handle the HTTP endpoint reads.
    pub fn new(
        events: EventStore,
        store: Arc<dyn ObjectStore>,
        metrics: ControlPlaneMetrics,
        notifier: Notifier,
    ) -> (Self, PublishedBundles) {
        let (latest, latest_receiver) = watch::channel(None);
        let health = Arc::new(Mutex::new(PublishHealth::default()));
        let bundles = PublishedBundles {
            latest: latest_receiver,
            health: health.clone(),
            notifier: notifier.clone(),
        };
        let publisher = Self {
            events,
            store,
            metrics,
            notifier,
            latest,
            health,
        };
        (publisher, bundles)
    }

    /// Publishes until shutdown: first what the store lacks, then each new revision.
    pub async fn run(self, mut head: watch::Receiver<u64>, mut shutdown: watch::Receiver<bool>) {
        let mut live = State::default();
        let mut archived: Option<State> = None;
        let mut backoff = FIRST_BACKOFF;
        loop {
            let target = *head.borrow_and_update();
            let outcome = self.advance(&mut live, &mut archived, target).await;
            let retry_after = match outcome {
                Ok(()) => {
                    backoff = FIRST_BACKOFF;
                    None
                }
                Err(error) => {
                    tracing::warn!(error = %error, retry_in_ms = backoff.as_millis() as u64, "bundle publishing failed");
                    self.metrics.bundle_publish_failures.inc();
                    self.update_health(|health| health.failing = Some(error.to_string()));
                    let wait = backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    Some(wait)
                }
            };
            tokio::select! {
                () = wait_for_retry(retry_after) => {}
                changed = head.changed(), if retry_after.is_none() => {
                    if changed.is_err() {
                        return;
                    }
                }
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
        }
    }

    /// Brings the in-memory bundle and then the store up to `target`.
    async fn advance(
        &self,
        live: &mut State,
        archived: &mut Option<State>,
        target: u64,
    ) -> Result<(), ControlPlaneError> {
        let first_build = self.latest.borrow().is_none();
        if live.revision < target || first_build {
            let changed = self.fold_live(live, target).await?;
            let bundle = Arc::new(bundle_of(live)?);
            self.metrics.bundle_rebuilds.inc();
            self.metrics
                .bundle_size_bytes
                .set(bundle.bytes.len() as i64);
            tracing::info!(revision = %bundle.revision, bytes = bundle.bytes.len(), "built bundle");
            self.notifier.notify(RevisionNotification {
                revision: live.revision,
                bundle_revision: bundle.revision.clone(),
                bundle_digest: bundle.digest.clone(),
                changed_tenants: changed.tenants.into_iter().collect(),
                // The first build after start is the announcement of the latest revision.
                all_tenants: changed.all || first_build,
            });
            self.latest.send_replace(Some(bundle));
        }
        if archived.is_none() {
            let stored = self.stored_revision().await?;
            let mut state = State::default();
            self.fold(&mut state, stored.min(target)).await?;
            *archived = Some(state);
        }
        let archived = archived.as_mut().expect("set just above");
        while archived.revision < target {
            self.fold(archived, archived.revision + 1).await?;
            let bundle = bundle_of(archived)?;
            self.put_revision(archived.revision, &bundle).await?;
            if archived.revision == target {
                self.put_latest(archived.revision, &bundle).await?;
            }
            let stored_revision = archived.revision;
            self.metrics
                .bundle_published_revision
                .set(stored_revision as i64);
            self.update_health(|health| health.stored_revision = stored_revision);
        }
        self.update_health(|health| health.failing = None);
        Ok(())
    }

    /// Folds the live state up to `target`, noting whose decisions the events may change.
    async fn fold_live(
        &self,
        live: &mut State,
        target: u64,
    ) -> Result<ChangedTenants, ControlPlaneError> {
        let mut changed = ChangedTenants::default();
        for stored in self.events.events_in_range(live.revision, target).await? {
            let event = stored.decode()?;
            match &event {
                DomainEvent::TenantCreated(tenant) => {
                    changed.tenants.insert(tenant.id.to_string());
                }
                DomainEvent::TenantDeleted { id, .. } => {
                    changed.tenants.insert(id.to_string());
                }
                DomainEvent::PolicyCreated(policy) | DomainEvent::PolicyReplaced(policy) => {
                    changed.add_scope(policy);
                }
                DomainEvent::PolicyDeleted(_) => {}
            }
            let previous = match &event {
                DomainEvent::PolicyReplaced(policy) => live.policies.get(&policy.name),
                DomainEvent::PolicyDeleted(name) => live.policies.get(name),
                _ => None,
            };
            if let Some(previous) = previous.map(|record| record.policy.clone()) {
                changed.add_scope(&previous);
            }
            live.apply(&stored)?;
        }
        Ok(changed)
    }

    /// Applies the events after `state.revision` up to `target`.
    async fn fold(&self, state: &mut State, target: u64) -> Result<(), ControlPlaneError> {
        for event in self.events.events_in_range(state.revision, target).await? {
            state.apply(&event)?;
        }
        Ok(())
    }

    /// Returns the revision of the bundle under the latest key, 0 if there is none.
    async fn stored_revision(&self) -> Result<u64, ControlPlaneError> {
        let bytes = match self.store.get(&Path::from(LATEST_KEY)).await {
            Ok(result) => result.bytes().await.map_err(storage)?,
            Err(object_store::Error::NotFound { .. }) => return Ok(0),
            Err(error) => return Err(storage(error)),
        };
        let contents = bundle::read(&bytes)
            .map_err(|error| ControlPlaneError::Internal(format!("{LATEST_KEY}: {error}")))?;
        let number = contents.revision.split('-').next().unwrap_or_default();
        number.parse().map_err(|_| {
            ControlPlaneError::Internal(format!("{LATEST_KEY}: revision {:?}", contents.revision))
        })
    }

    /// Writes an immutable revision key; one that exists already is left as it is.
    async fn put_revision(&self, revision: u64, bundle: &Bundle) -> Result<(), ControlPlaneError> {
        let options = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        let payload = PutPayload::from(bundle.bytes.clone());
        match self
            .store
            .put_opts(&Path::from(revision_key(revision)), payload, options)
            .await
        {
            Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
            Err(error) => Err(storage(error)),
        }
    }

    /// Writes the latest key unless another control plane already stored a newer revision.
    async fn put_latest(&self, revision: u64, bundle: &Bundle) -> Result<(), ControlPlaneError> {
        if self.stored_revision().await? > revision {
            return Ok(());
        }
        let payload = PutPayload::from(bundle.bytes.clone());
        self.store
            .put(&Path::from(LATEST_KEY), payload)
            .await
            .map_err(storage)?;
        tracing::info!(revision = %bundle.revision, digest = %bundle.digest, "published bundle");
        Ok(())
    }

    fn update_health(&self, change: impl FnOnce(&mut PublishHealth)) {
        if let Ok(mut health) = self.health.lock() {
            change(&mut health);
        }
    }
}

async fn wait_for_retry(delay: Option<Duration>) {
    match delay {
        Some(delay) => tokio::time::sleep(delay).await,
        None => std::future::pending().await,
    }
}

fn storage(error: object_store::Error) -> ControlPlaneError {
    ControlPlaneError::Storage(error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_store_is_created_where_configured() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("nested/bundles");
        BundleStorage::LocalDir(folder.clone()).open().unwrap();
        assert!(folder.is_dir());
        assert_eq!(revision_key(42), "bundles/revisions/42.tar.gz");
    }

    #[test]
    fn azure_without_an_account_is_a_configuration_error_naming_the_storage() {
        if std::env::var_os("AZURE_STORAGE_ACCOUNT_NAME").is_some() {
            return;
        }
        let storage = BundleStorage::Azure {
            container: "bundles".into(),
            prefix: "opa".into(),
        };
        let error = storage.open().expect_err("an account is required");
        assert!(error.to_string().contains("az://bundles/opa"), "{error}");
    }
}
