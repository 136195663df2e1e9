//! Per-tenant decisions: asked of the embedded engine holding the live bundle (the default) or
//! of a remote OPA, and cached per bundle revision by subject, groups, tenant and action.

pub mod remote;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use heimdall_opa::TenantId;
use heimdall_opa::engine::{Decision, DecisionInput, SubjectIdentity};

use crate::bundle_sync::{LiveBundle, LoadedBundle};
use crate::identity::Identity;
use crate::metrics::ProxyMetrics;
use crate::respond::ProxyError;

pub use remote::RemoteOpa;

/// The resource every Heimdall decision is about.
const RESOURCE: &str = "metrics";

/// What a request may do with a tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Read,
    Write,
    RulesRead,
    RulesWrite,
    AlertsRead,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::RulesRead => "rules:read",
            Self::RulesWrite => "rules:write",
            Self::AlertsRead => "alerts:read",
        }
    }
}

/// Which engine answers.
pub enum Engine {
    /// The bundle's Rego, evaluated in-process with regorus.
    Embedded,
    /// An OPA server that loads the same bundle.
    Remote(RemoteOpa),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum CacheKey {
    Decision {
        user: String,
        groups: Vec<String>,
        tenant: String,
        action: Action,
    },
    Accessible {
        user: String,
        groups: Vec<String>,
        action: Action,
    },
}

#[derive(Debug, Clone)]
enum CachedAnswer {
    Decision(Arc<Decision>),
    Accessible(Arc<Vec<TenantId>>),
}

/// Answers of one bundle revision.
#[derive(Default)]
struct Cache {
    /// The bundle digest the entries were computed with.
    digest: String,
    entries: HashMap<CacheKey, CachedAnswer>,
}

/// Makes and caches decisions.
pub struct Decider {
    engine: Engine,
    live: LiveBundle,
    cache: Mutex<Cache>,
    capacity: usize,
    metrics: ProxyMetrics,
}

impl Decider {
    pub fn new(engine: Engine, live: LiveBundle, capacity: usize, metrics: ProxyMetrics) -> Self {
        Self {
            engine,
            live,
            cache: Mutex::new(Cache::default()),
            capacity,
            metrics,
        }
    }

    /// Returns the bundle decisions are made with, or 503 before the first one is loaded.
    pub fn current_bundle(&self) -> Result<Arc<LoadedBundle>, ProxyError> {
        self.live
            .borrow()
            .clone()
            .ok_or_else(|| ProxyError::unavailable("no policy bundle loaded yet"))
    }

    /// Decides whether `identity` may do `action` on `tenant`. An engine failure is an error,
    /// never an allow.
    pub async fn decide(
        &self,
        identity: &Identity,
        tenant: &TenantId,
        action: Action,
    ) -> Result<Arc<Decision>, ProxyError> {
        let bundle = self.current_bundle()?;
        let key = CacheKey::Decision {
            user: identity.user.clone(),
            groups: identity.groups.clone(),
            tenant: tenant.as_str().to_owned(),
            action,
        };
        if let Some(CachedAnswer::Decision(decision)) = self.cached(&bundle, &key) {
            self.metrics.decision_cache_hits.inc();
            return Ok(decision);
        }
        self.metrics.decision_cache_misses.inc();
        let input = DecisionInput {
            subject: subject(identity),
            tenant: tenant.as_str().to_owned(),
            action: action.as_str().to_owned(),
            resource: RESOURCE.to_owned(),
        };
        let started = Instant::now();
        let result = match &self.engine {
            Engine::Embedded => embedded(&bundle)?.decide(&input).map_err(engine_error),
            Engine::Remote(opa) => opa.decide(&input).await,
        };
        self.observe_evaluation(started);
        let decision = Arc::new(result?);
        self.store(&bundle, key, CachedAnswer::Decision(decision.clone()));
        Ok(decision)
    }

    /// Returns the tenants `identity` may use for `action` (auto resolution), sorted.
    pub async fn accessible_tenants(
        &self,
        identity: &Identity,
        action: Action,
    ) -> Result<Arc<Vec<TenantId>>, ProxyError> {
        let bundle = self.current_bundle()?;
        let key = CacheKey::Accessible {
            user: identity.user.clone(),
            groups: identity.groups.clone(),
            action,
        };
        if let Some(CachedAnswer::Accessible(tenants)) = self.cached(&bundle, &key) {
            self.metrics.tenant_cache_hits.inc();
            return Ok(tenants);
        }
        let subject = subject(identity);
        let started = Instant::now();
        let result = match &self.engine {
            Engine::Embedded => embedded(&bundle)?
                .accessible_tenants(&subject, action.as_str())
                .map_err(engine_error),
            Engine::Remote(opa) => opa.accessible_tenants(&subject, action.as_str()).await,
        };
        self.observe_evaluation(started);
        // Ids come from the bundle, which only holds validated ones; an odd one is skipped
        // rather than trusted.
        let tenants: Vec<TenantId> = result?
            .iter()
            .filter_map(|tenant| TenantId::parse(tenant).ok())
            .collect();
        let tenants = Arc::new(tenants);
        self.store(&bundle, key, CachedAnswer::Accessible(tenants.clone()));
        Ok(tenants)
    }

    fn cached(&self, bundle: &LoadedBundle, key: &CacheKey) -> Option<CachedAnswer> {
        let cache = self.lock_cache();
        if cache.digest != bundle.digest {
            return None;
        }
        cache.entries.get(key).cloned()
    }

    fn store(&self, bundle: &LoadedBundle, key: CacheKey, answer: CachedAnswer) {
        // A remote OPA loads bundles on its own schedule: its answer may come from another
        // revision than the one the proxy holds, so caching it under this digest could keep a
        // revoked grant alive.
        if self.capacity == 0 || matches!(self.engine, Engine::Remote(_)) {
            return;
        }
        let mut cache = self.lock_cache();
        if cache.digest != bundle.digest {
            // A new revision: every earlier answer may be wrong now.
            cache.entries.clear();
            cache.digest.clone_from(&bundle.digest);
        }
        if cache.entries.len() >= self.capacity {
            cache.entries.clear();
        }
        cache.entries.insert(key, answer);
    }

    fn observe_evaluation(&self, started: Instant) {
        self.metrics.opa_evaluations.inc();
        self.metrics
            .opa_evaluation_duration
            .observe(started.elapsed().as_secs_f64());
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn subject(identity: &Identity) -> SubjectIdentity {
    SubjectIdentity {
        user: identity.user.clone(),
        groups: identity.groups.clone(),
    }
}

fn embedded(bundle: &LoadedBundle) -> Result<&heimdall_opa::engine::EmbeddedEngine, ProxyError> {
    bundle
        .engine
        .as_deref()
        .ok_or_else(|| ProxyError::internal("the loaded bundle has no embedded engine"))
}

fn engine_error(error: heimdall_opa::engine::EngineError) -> ProxyError {
    tracing::error!(error = %error, "policy evaluation failed");
    ProxyError::internal(format!("policy evaluation failed: {error}"))
}
