//! Mimir's ruler configuration API (`/prometheus/config/v1/rules/...`): a rule group is stored
//! only with every expression enforced with the writer's filter sets, since rules are evaluated
//! later, by the ruler, outside the proxy, and would otherwise read around the filters.

use bytes::Bytes;
use serde_yaml::Value;

use crate::promql::{EnforceError, Enforcement};
use crate::respond::ProxyError;

/// Rewrites every `expr` of a rule group (YAML, as `mimirtool` and Grafana send it).
pub fn enforce_rule_group(body: &[u8], enforcement: &Enforcement) -> Result<Bytes, ProxyError> {
    let mut group: Value = serde_yaml::from_slice(body)
        .map_err(|error| ProxyError::bad_request(format!("rule group is not YAML: {error}")))?;
    let rules = group
        .get_mut("rules")
        .and_then(Value::as_sequence_mut)
        .ok_or_else(|| ProxyError::bad_request("a rule group needs a list of rules"))?;
    for rule in rules {
        let name = ["record", "alert"]
            .iter()
            .find_map(|key| rule.get(key).and_then(Value::as_str))
            .unwrap_or("unnamed")
            .to_owned();
        let expr = rule
            .get_mut("expr")
            .ok_or_else(|| ProxyError::bad_request(format!("rule {name} has no expr")))?;
        let Some(text) = expr.as_str() else {
            return Err(ProxyError::bad_request(format!(
                "rule {name}: expr is not a string"
            )));
        };
        let enforced = enforcement
            .enforce_query(text)
            .map_err(|error| match error {
                EnforceError::Invalid(_) => {
                    ProxyError::bad_request(format!("rule {name}: {error}"))
                }
                EnforceError::Inexpressible { .. } => {
                    ProxyError::unprocessable(format!("rule {name}: {error}"))
                }
            })?;
        *expr = Value::String(enforced);
    }
    let text = serde_yaml::to_string(&group)
        .map_err(|error| ProxyError::internal(format!("writing the rule group: {error}")))?;
    Ok(Bytes::from(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prod() -> Enforcement {
        let matcher = Enforcement::matcher("env", "=", "prod").unwrap();
        Enforcement::new(vec![vec![matcher]], vec!["p".to_owned()]).unwrap()
    }

    #[test]
    fn every_expression_of_a_group_is_enforced() {
        let group = b"name: api\ninterval: 1m\nrules:\n  - record: job:up:sum\n    expr: sum by (job) (up)\n  - alert: Down\n    expr: up == 0\n    for: 5m\n    labels:\n      severity: page\n";
        let enforced = enforce_rule_group(group, &prod()).unwrap();
        let value: Value = serde_yaml::from_slice(&enforced).unwrap();
        assert_eq!(value["rules"][0]["expr"], "sum by (job) (up{env=\"prod\"})");
        assert_eq!(value["rules"][1]["expr"], "up{env=\"prod\"} == 0");
        assert_eq!(value["rules"][1]["labels"]["severity"], "page");
        assert_eq!(value["interval"], "1m");
    }

    #[test]
    fn groups_without_enforceable_expressions_are_refused() {
        for group in [
            &b"name: x\nrules:\n  - record: r\n"[..],
            b"name: x\nrules:\n  - record: r\n    expr: sum(\n",
            b"name: x\n",
            b": not yaml : [",
        ] {
            let error = enforce_rule_group(group, &prod()).unwrap_err();
            assert_eq!(error.status, http::StatusCode::BAD_REQUEST);
        }
    }
}
