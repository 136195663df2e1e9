//! Builders the unit tests share: decisions and tenant ids as a policy engine would give them.

use std::sync::Arc;

use heimdall_opa::TenantId;
use heimdall_opa::engine::Decision;

/// An allowing decision with these filter sets (unrestricted when there are none).
pub fn decision(filter_sets: &[&[&str]]) -> Arc<Decision> {
    Arc::new(Decision {
        allowed: true,
        unrestricted: filter_sets.is_empty(),
        filter_sets: filter_sets
            .iter()
            .map(|set| set.iter().map(|filter| (*filter).to_owned()).collect())
            .collect(),
        policies: vec!["p".to_owned()],
    })
}

pub fn tenant(id: &str) -> TenantId {
    TenantId::parse(id).expect("a valid tenant id")
}
