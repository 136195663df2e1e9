//! The embedded decision engine: the bundle's Rego policy evaluated in-process with regorus.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use regorus::Value as RegoValue;
use serde::{Deserialize, Serialize};

use crate::bundle::{self, BundleError};

const DECISION_RULE: &str = "data.heimdall.authz.decision";
const ACCESSIBLE_TENANTS_RULE: &str = "data.heimdall.tenants.accessible";

/// Why a decision could not be made. Callers must treat it as a denial.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("policy evaluation: {0}")]
    Evaluation(String),
}

/// Who asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SubjectIdentity {
    pub user: String,
    pub groups: Vec<String>,
}

/// One question to the policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DecisionInput {
    pub subject: SubjectIdentity,
    pub tenant: String,
    pub action: String,
    pub resource: String,
}

/// The policy's answer for one subject, tenant and action.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Decision {
    pub allowed: bool,
    /// An allow policy without filters matched: every series of the tenant is readable.
    pub unrestricted: bool,
    /// One set per matching allow policy; matchers ANDed within a set, sets ORed.
    pub filter_sets: Vec<Vec<String>>,
    /// The policies that decided: the denying ones when denied, the allowing ones otherwise.
    pub policies: Vec<String>,
}

/// The bundle's policy and data, loaded into regorus.
///
/// Evaluation needs a mutable engine. A small pool of prepared engines, sharing the compiled
/// modules and the data, lets several threads decide at once without cloning per decision.
#[derive(Debug)]
pub struct EmbeddedEngine {
    engines: Vec<Mutex<regorus::Engine>>,
    next: AtomicUsize,
    revision: String,
}

impl EmbeddedEngine {
    /// Loads a bundle's modules and data.
    pub fn from_bundle(bytes: &[u8]) -> Result<Self, EngineError> {
        let contents = bundle::read(bytes)?;
        let mut engine = regorus::Engine::new();
        for (path, module) in contents.modules {
            engine.add_policy(path, module).map_err(evaluation)?;
        }
        // The state document goes into regorus straight from its JSON text, wrapped in place:
        // building an intermediate serde value would hold a large document twice.
        let data = format!(
            "{{\"{}\":{{\"{}\":{}}}}}",
            bundle::DATA_ROOT,
            bundle::STATE_KEY,
            contents.data
        );
        let data = RegoValue::from_json_str(&data).map_err(evaluation)?;
        engine.add_data(data).map_err(evaluation)?;
        // The first evaluation analyses and schedules the modules; clones of a prepared engine
        // skip that work, which would otherwise dominate every decision.
        engine.set_input(RegoValue::new_object());
        engine
            .eval_rule(DECISION_RULE.to_owned())
            .map_err(evaluation)?;
        let pool_size = std::thread::available_parallelism()
            .map_or(1, usize::from)
            .clamp(1, 8);
        let engines = (0..pool_size).map(|_| Mutex::new(engine.clone())).collect();
        Ok(Self {
            engines,
            next: AtomicUsize::new(0),
            revision: contents.revision,
        })
    }

    /// Returns the manifest revision of the loaded bundle.
    pub fn revision(&self) -> &str {
        &self.revision
    }

    /// Evaluates the decision for one input.
    pub fn decide(&self, input: &DecisionInput) -> Result<Decision, EngineError> {
        let value = self.evaluate(
            DECISION_RULE,
            &serde_json::to_string(input).map_err(evaluation)?,
        )?;
        serde_json::from_str(&value.to_json_str().map_err(evaluation)?).map_err(evaluation)
    }

    /// Returns the tenants `subject` may use for `action`, sorted.
    pub fn accessible_tenants(
        &self,
        subject: &SubjectIdentity,
        action: &str,
    ) -> Result<Vec<String>, EngineError> {
        let input =
            serde_json::json!({"subject": subject, "action": action, "resource": "metrics"});
        let value = self.evaluate(ACCESSIBLE_TENANTS_RULE, &input.to_string())?;
        if value == RegoValue::Undefined {
            return Ok(Vec::new());
        }
        let mut tenants: Vec<String> =
            serde_json::from_str(&value.to_json_str().map_err(evaluation)?).map_err(evaluation)?;
        tenants.sort_unstable();
        Ok(tenants)
    }

    fn evaluate(&self, rule: &str, input_json: &str) -> Result<RegoValue, EngineError> {
        let mut engine = self.free_engine();
        engine.set_input(RegoValue::from_json_str(input_json).map_err(evaluation)?);
        engine.eval_rule(rule.to_owned()).map_err(evaluation)
    }
}

impl EmbeddedEngine {
    /// Takes a pooled engine that no other thread holds, or waits for one.
    fn free_engine(&self) -> MutexGuard<'_, regorus::Engine> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let count = self.engines.len();
        for offset in 0..count {
            if let Ok(engine) = self.engines[(start + offset) % count].try_lock() {
                return engine;
            }
        }
        // A panic while evaluating leaves the engine usable: its state is reset per evaluation.
        let engine = &self.engines[start % count];
        engine.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn evaluation(error: impl std::fmt::Display) -> EngineError {
    EngineError::Evaluation(error.to_string())
}
