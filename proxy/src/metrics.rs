//! The proxy's Prometheus metrics, all named here. Names follow the original Heimdall's where it
//! had one (`heimdall_requests_total`, `heimdall_opa_evaluations_total`, …).

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

/// Metrics of the request path and the background loops. Cloning shares the series.
#[derive(Clone)]
pub struct ProxyMetrics {
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub decisions: IntCounterVec,
    pub opa_evaluations: IntCounter,
    pub opa_evaluation_duration: Histogram,
    pub decision_cache_hits: IntCounter,
    pub decision_cache_misses: IntCounter,
    pub tenant_cache_hits: IntCounter,
    pub token_cache_hits: IntCounter,
    pub token_cache_misses: IntCounter,
    pub token_rejections: IntCounterVec,
    pub jwks_refreshes: IntCounterVec,
    pub upstream_requests: IntCounterVec,
    pub upstream_request_duration: Histogram,
    pub fanout_active: IntGauge,
    pub fanout_dropped_requests: IntCounter,
    pub label_policy_probes: IntCounterVec,
    pub bundle_revision: IntGauge,
    pub bundle_loaded_timestamp: IntGauge,
    pub bundle_loads: IntCounterVec,
}

impl ProxyMetrics {
    /// Creates the metrics and registers them with `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = Self {
            requests: IntCounterVec::new(
                Opts::new(
                    "heimdall_requests_total",
                    "HTTP requests by method, path and status",
                ),
                &["method", "path", "status"],
            )?,
            request_duration: HistogramVec::new(
                HistogramOpts::new(
                    "heimdall_request_duration_seconds",
                    "HTTP request latency by method, path and status",
                ),
                &["method", "path", "status"],
            )?,
            decisions: IntCounterVec::new(
                Opts::new(
                    "heimdall_decisions_total",
                    "Per-tenant decisions by outcome: allowed, filtered, denied or error",
                ),
                &["outcome"],
            )?,
            opa_evaluations: IntCounter::new(
                "heimdall_opa_evaluations_total",
                "Policy evaluations (decision cache misses)",
            )?,
            opa_evaluation_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "heimdall_opa_evaluation_duration_seconds",
                    "Policy evaluation latency",
                )
                .buckets(vec![
                    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.005, 0.025, 0.1,
                ]),
            )?,
            decision_cache_hits: IntCounter::new(
                "heimdall_decision_cache_hits_total",
                "Decisions answered from the per-revision cache",
            )?,
            decision_cache_misses: IntCounter::new(
                "heimdall_decision_cache_misses_total",
                "Decisions that needed a policy evaluation",
            )?,
            tenant_cache_hits: IntCounter::new(
                "heimdall_tenant_cache_hits_total",
                "Auto-resolved tenant lists answered from the cache",
            )?,
            token_cache_hits: IntCounter::new(
                "heimdall_token_cache_hits_total",
                "Tokens accepted from the verified-token cache",
            )?,
            token_cache_misses: IntCounter::new(
                "heimdall_token_cache_misses_total",
                "Tokens whose signature and claims were verified",
            )?,
            token_rejections: IntCounterVec::new(
                Opts::new(
                    "heimdall_token_rejections_total",
                    "Requests refused for their token, by reason",
                ),
                &["reason"],
            )?,
            jwks_refreshes: IntCounterVec::new(
                Opts::new(
                    "heimdall_jwks_refreshes_total",
                    "JWKS fetches by trigger (start, interval, unknown_kid) and result",
                ),
                &["trigger", "result"],
            )?,
            upstream_requests: IntCounterVec::new(
                Opts::new(
                    "heimdall_upstream_requests_total",
                    "Requests sent upstream, by status",
                ),
                &["status"],
            )?,
            upstream_request_duration: Histogram::with_opts(HistogramOpts::new(
                "heimdall_upstream_request_duration_seconds",
                "Upstream request latency",
            ))?,
            fanout_active: IntGauge::new(
                "heimdall_fanout_active_goroutines",
                "Upstream requests in flight (the original's name; tasks here, not goroutines)",
            )?,
            fanout_dropped_requests: IntCounter::new(
                "heimdall_fanout_dropped_requests_total",
                "Requests refused with 503 because the upstream concurrency limit stayed full",
            )?,
            label_policy_probes: IntCounterVec::new(
                Opts::new(
                    "heimdall_label_policy_probes_total",
                    "Probes of whether the upstream enforces X-Prom-Label-Policy, by result: \
                     enforced, ignored or unconfirmed",
                ),
                &["result"],
            )?,
            bundle_revision: IntGauge::new(
                "heimdall_bundle_revision",
                "Event revision of the bundle the proxy decides with",
            )?,
            bundle_loaded_timestamp: IntGauge::new(
                "heimdall_bundle_loaded_timestamp_seconds",
                "Unix time the current bundle was loaded; its age is time() minus this",
            )?,
            bundle_loads: IntCounterVec::new(
                Opts::new(
                    "heimdall_bundle_loads_total",
                    "Bundle fetches by result: loaded, unchanged, stale or failed",
                ),
                &["result"],
            )?,
        };
        registry.register(Box::new(metrics.requests.clone()))?;
        registry.register(Box::new(metrics.request_duration.clone()))?;
        registry.register(Box::new(metrics.decisions.clone()))?;
        registry.register(Box::new(metrics.opa_evaluations.clone()))?;
        registry.register(Box::new(metrics.opa_evaluation_duration.clone()))?;
        registry.register(Box::new(metrics.decision_cache_hits.clone()))?;
        registry.register(Box::new(metrics.decision_cache_misses.clone()))?;
        registry.register(Box::new(metrics.tenant_cache_hits.clone()))?;
        registry.register(Box::new(metrics.token_cache_hits.clone()))?;
        registry.register(Box::new(metrics.token_cache_misses.clone()))?;
        registry.register(Box::new(metrics.token_rejections.clone()))?;
        registry.register(Box::new(metrics.jwks_refreshes.clone()))?;
        registry.register(Box::new(metrics.upstream_requests.clone()))?;
        registry.register(Box::new(metrics.upstream_request_duration.clone()))?;
        registry.register(Box::new(metrics.fanout_active.clone()))?;
        registry.register(Box::new(metrics.fanout_dropped_requests.clone()))?;
        registry.register(Box::new(metrics.label_policy_probes.clone()))?;
        registry.register(Box::new(metrics.bundle_revision.clone()))?;
        registry.register(Box::new(metrics.bundle_loaded_timestamp.clone()))?;
        registry.register(Box::new(metrics.bundle_loads.clone()))?;
        Ok(metrics)
    }

    /// Metrics registered nowhere, for unit tests.
    pub fn unregistered() -> Self {
        Self::register(&Registry::new()).expect("metric definitions should be valid")
    }
}
