//! Runs the control plane: connects the store, rebuilds the projection, and serves the admin
//! gRPC API and the HTTP listener until shutdown is signalled.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use heimdall_proto::admin::admin_service_server::AdminServiceServer;
use prometheus::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::AdminApi;
use crate::auth::AdminTokens;
use crate::bundle::{BundleStorage, PublishedBundles, Publisher};
use crate::error::ControlPlaneError;
use crate::http::HttpState;
use crate::ledger::Ledger;
use crate::metrics::ControlPlaneMetrics;
use crate::notify::Notifier;
use crate::store::EventStore;

/// How often an idle control plane catches up with what other replicas committed, so that its
/// metrics describe the shared database rather than only its own writes.
const CATCH_UP_INTERVAL: Duration = Duration::from_secs(5);

/// What the control plane needs to run, validated by the caller.
#[derive(Debug, Clone)]
pub struct ControlPlaneSettings {
    pub database_url: String,
    pub max_connections: u32,
    /// Where the admin gRPC API listens.
    pub admin_addr: SocketAddr,
    /// Where health, readiness and metrics are served.
    pub http_addr: SocketAddr,
    pub tokens: AdminTokens,
    /// Tokens that may only download bundles (OPA's `credentials.bearer`).
    pub bundle_tokens: AdminTokens,
    /// Where bundles are published.
    pub bundle_storage: BundleStorage,
    /// NATS server for change notifications; None: in-process notifications only.
    pub nats_url: Option<String>,
    /// Notifications go to `<prefix>.revisions`.
    pub nats_subject_prefix: String,
}

/// A control plane that is connected to its database and bound to its listeners, not yet serving.
pub struct ControlPlane {
    settings: ControlPlaneSettings,
    registry: Registry,
    metrics: ControlPlaneMetrics,
    store: EventStore,
    ledger: Arc<Ledger>,
    admin_listener: TcpListener,
    http_listener: TcpListener,
    publisher: Publisher,
    bundles: PublishedBundles,
}

impl ControlPlane {
    /// Connects the store, rebuilds the projection and binds both listeners.
    pub async fn start(settings: ControlPlaneSettings) -> Result<Self, ControlPlaneError> {
        if settings.tokens.is_empty() {
            return Err(ControlPlaneError::Config(
                "no admin token is configured".to_owned(),
            ));
        }
        let registry = Registry::new();
        let metrics = ControlPlaneMetrics::register(&registry).map_err(|error| {
            ControlPlaneError::Internal(format!("registering metrics: {error}"))
        })?;
        let store = EventStore::connect(&settings.database_url, settings.max_connections).await?;
        tracing::info!(dialect = ?store.dialect(), "connected to database");
        let ledger = Arc::new(Ledger::open(store.clone(), metrics.clone()).await?);

        let admin_listener = bind(settings.admin_addr, "server.admin.addr").await?;
        let http_listener = bind(settings.http_addr, "server.bundle.addr").await?;
        tracing::info!(
            admin_addr = %settings.admin_addr,
            http_addr = %settings.http_addr,
            "control plane listening"
        );

        let object_store = settings.bundle_storage.open()?;
        tracing::info!(storage = %settings.bundle_storage, "publishing bundles");
        let notifier = match &settings.nats_url {
            Some(url) => Notifier::with_nats(url, &settings.nats_subject_prefix).await?,
            None => Notifier::in_process(),
        };
        let (publisher, bundles) =
            Publisher::new(store.clone(), object_store, metrics.clone(), notifier);
        Ok(Self {
            settings,
            registry,
            metrics,
            store,
            ledger,
            admin_listener,
            http_listener,
            publisher,
            bundles,
        })
    }

    /// Returns the published bundles and their change notifications, for an in-process proxy.
    pub fn bundles(&self) -> PublishedBundles {
        self.bundles.clone()
    }

    /// Serves until `shutdown` turns true, then drains in-flight requests and returns.
    pub async fn serve(self, mut shutdown: watch::Receiver<bool>) -> Result<(), ControlPlaneError> {
        let Self {
            settings,
            registry,
            metrics,
            store,
            ledger,
            admin_listener,
            http_listener,
            publisher,
            bundles,
        } = self;
        let publishing = tokio::spawn(publisher.run(ledger.subscribe_head(), shutdown.clone()));
        let catch_up = tokio::spawn(catch_up_periodically(ledger.clone(), shutdown.clone()));
        let http_state = HttpState {
            store,
            registry,
            ledger: ledger.clone(),
            bundles,
            bundle_readers: vec![settings.bundle_tokens, settings.tokens.clone()],
            metrics: metrics.clone(),
        };
        let api = AdminApi::new(ledger, settings.tokens, metrics);
        let mut grpc_shutdown = shutdown.clone();
        let grpc = tonic::transport::Server::builder()
            .add_service(AdminServiceServer::new(api))
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(admin_listener),
                async move { stopped(&mut grpc_shutdown).await },
            );
        let http = axum::serve(http_listener, crate::http::router(http_state))
            .with_graceful_shutdown(async move { stopped(&mut shutdown).await });

        let (grpc_result, http_result) = tokio::join!(grpc, http);
        catch_up.abort();
        publishing.abort();
        grpc_result
            .map_err(|error| ControlPlaneError::Internal(format!("admin server: {error}")))?;
        http_result
            .map_err(|error| ControlPlaneError::Internal(format!("http server: {error}")))?;
        tracing::info!("control plane stopped");
        Ok(())
    }
}

/// Serves until `shutdown` turns true, then drains in-flight requests and returns.
pub async fn run(
    settings: ControlPlaneSettings,
    shutdown: watch::Receiver<bool>,
) -> Result<(), ControlPlaneError> {
    ControlPlane::start(settings).await?.serve(shutdown).await
}

async fn catch_up_periodically(ledger: Arc<Ledger>, mut shutdown: watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(CATCH_UP_INTERVAL);
    loop {
        tokio::select! {
            _ = interval.tick() => {
                if let Err(error) = ledger.catch_up().await {
                    tracing::warn!(error = %error, "catching up with the event store failed");
                }
            }
            () = stopped(&mut shutdown) => return,
        }
    }
}

/// Resolves once shutdown is signalled (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

async fn bind(addr: SocketAddr, key: &str) -> Result<TcpListener, ControlPlaneError> {
    TcpListener::bind(addr).await.map_err(|error| {
        ControlPlaneError::Config(format!("{key}: cannot listen on {addr}: {error}"))
    })
}
