//! The control plane's Prometheus metrics, all named here.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

use crate::projection::State;

/// Metrics of the admin API and the ledger. Cloning shares the underlying series.
#[derive(Clone)]
pub struct ControlPlaneMetrics {
    pub admin_requests: IntCounterVec,
    pub admin_request_duration: HistogramVec,
    pub events_appended: IntCounter,
    pub revision: IntGauge,
    pub active_tenants: IntGauge,
    pub policies: IntGauge,
    pub bundle_rebuilds: IntCounter,
    pub bundle_publish_failures: IntCounter,
    pub bundle_published_revision: IntGauge,
    pub bundle_size_bytes: IntGauge,
    pub bundle_requests: IntCounterVec,
}

impl ControlPlaneMetrics {
    /// Creates the metrics and registers them with `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = Self {
            admin_requests: IntCounterVec::new(
                Opts::new(
                    "heimdall_admin_requests_total",
                    "Admin API requests by method and code",
                ),
                &["method", "code"],
            )?,
            admin_request_duration: HistogramVec::new(
                HistogramOpts::new(
                    "heimdall_admin_request_duration_seconds",
                    "Admin API request latency by method",
                ),
                &["method"],
            )?,
            events_appended: IntCounter::new(
                "heimdall_events_appended_total",
                "Events appended to the event store by this process",
            )?,
            revision: IntGauge::new("heimdall_revision", "Latest revision of the projection")?,
            active_tenants: IntGauge::new("heimdall_active_tenants", "Registered tenants")?,
            policies: IntGauge::new("heimdall_policies", "Current policies")?,
            bundle_rebuilds: IntCounter::new(
                "heimdall_bundle_rebuilds_total",
                "OPA bundles built for new revisions",
            )?,
            bundle_publish_failures: IntCounter::new(
                "heimdall_bundle_publish_failures_total",
                "Failed attempts to write bundles to object storage",
            )?,
            bundle_published_revision: IntGauge::new(
                "heimdall_bundle_published_revision",
                "Newest revision whose bundle is in object storage",
            )?,
            bundle_size_bytes: IntGauge::new(
                "heimdall_bundle_size_bytes",
                "Size of the latest bundle",
            )?,
            bundle_requests: IntCounterVec::new(
                Opts::new(
                    "heimdall_bundle_requests_total",
                    "Bundle endpoint requests by status",
                ),
                &["status"],
            )?,
        };
        registry.register(Box::new(metrics.admin_requests.clone()))?;
        registry.register(Box::new(metrics.admin_request_duration.clone()))?;
        registry.register(Box::new(metrics.events_appended.clone()))?;
        registry.register(Box::new(metrics.revision.clone()))?;
        registry.register(Box::new(metrics.active_tenants.clone()))?;
        registry.register(Box::new(metrics.policies.clone()))?;
        registry.register(Box::new(metrics.bundle_rebuilds.clone()))?;
        registry.register(Box::new(metrics.bundle_publish_failures.clone()))?;
        registry.register(Box::new(metrics.bundle_published_revision.clone()))?;
        registry.register(Box::new(metrics.bundle_size_bytes.clone()))?;
        registry.register(Box::new(metrics.bundle_requests.clone()))?;
        Ok(metrics)
    }

    /// Records the size and revision of the projection.
    pub fn observe_state(&self, state: &State) {
        self.revision
            .set(i64::try_from(state.revision).unwrap_or(i64::MAX));
        self.active_tenants
            .set(i64::try_from(state.tenants.len()).unwrap_or(i64::MAX));
        self.policies
            .set(i64::try_from(state.policies.len()).unwrap_or(i64::MAX));
    }

    /// Returns the latency histogram of one admin method.
    pub fn admin_latency(&self, method: &str) -> Histogram {
        self.admin_request_duration.with_label_values(&[method])
    }
}
