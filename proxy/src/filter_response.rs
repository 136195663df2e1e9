//! Narrows answers that a query rewrite cannot narrow: metadata (to metric names that have
//! readable series), alerts (to those whose labels are readable) and rule groups (their active
//! alerts likewise, with each rule's state recomputed from what remains). Every other field of
//! the upstream's answer is kept.

use std::collections::BTreeSet;

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::promql::Enforcement;

/// Endpoints whose answers are narrowed here rather than by rewriting their parameters.
pub const FILTERED_ROUTES: &[&str] = &["/api/v1/metadata", "/api/v1/rules", "/api/v1/alerts"];

/// Suffixes that series of one metric family add to its name.
const FAMILY_SUFFIXES: &[&str] = &["_bucket", "_sum", "_count", "_total", "_created", "_info"];

/// Why an answer could not be narrowed: it is not the success envelope the endpoint gives.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unexpected upstream answer to {0}")]
pub struct Unexpected(pub &'static str);

/// Keeps the metadata of the metric names in `readable`.
pub fn metadata(body: &Bytes, readable: &BTreeSet<String>) -> Result<Bytes, Unexpected> {
    let mut envelope = success(body, "metadata")?;
    let data = envelope
        .get_mut("data")
        .and_then(Value::as_object_mut)
        .ok_or(Unexpected("metadata"))?;
    // Metadata names a metric family; its series may carry a suffix (`_bucket`, `_total`, …).
    data.retain(|family, _| {
        readable.contains(family)
            || FAMILY_SUFFIXES
                .iter()
                .any(|suffix| readable.contains(&format!("{family}{suffix}")))
    });
    encode(&envelope)
}

/// Keeps the alerts whose labels are inside the filter sets.
pub fn alerts(body: &Bytes, enforcement: &Enforcement) -> Result<Bytes, Unexpected> {
    let mut envelope = success(body, "alerts")?;
    let alerts = envelope
        .get_mut("data")
        .and_then(|data| data.get_mut("alerts"))
        .and_then(Value::as_array_mut)
        .ok_or(Unexpected("alerts"))?;
    alerts.retain(|alert| readable(alert, enforcement));
    encode(&envelope)
}

/// Keeps every rule, and of each alerting rule only the active alerts inside the filter sets;
/// the rule's state then follows from those alerts, so it does not reveal the others.
pub fn rules(body: &Bytes, enforcement: &Enforcement) -> Result<Bytes, Unexpected> {
    let mut envelope = success(body, "rules")?;
    let groups = envelope
        .get_mut("data")
        .and_then(|data| data.get_mut("groups"))
        .and_then(Value::as_array_mut)
        .ok_or(Unexpected("rules"))?;
    for group in groups {
        let Some(rules) = group.get_mut("rules").and_then(Value::as_array_mut) else {
            continue;
        };
        for rule in rules {
            let Some(rule) = rule.as_object_mut() else {
                continue;
            };
            // An evaluation error may quote series of any label set.
            if rule
                .get("lastError")
                .and_then(Value::as_str)
                .is_some_and(|e| !e.is_empty())
            {
                rule.insert("lastError".to_owned(), Value::String(String::new()));
            }
            let Some(alerts) = rule.get_mut("alerts").and_then(Value::as_array_mut) else {
                // Alerts left out (`exclude_alerts`): the state would tell about all of them.
                rule.remove("state");
                continue;
            };
            alerts.retain(|alert| readable(alert, enforcement));
            let state = strongest_state(alerts);
            if rule.contains_key("state") {
                rule.insert("state".to_owned(), Value::String(state.to_owned()));
            }
        }
    }
    encode(&envelope)
}

/// Parses the names of a `label/__name__/values` answer.
pub fn label_values(body: &Bytes) -> Result<BTreeSet<String>, Unexpected> {
    let envelope = success(body, "label values")?;
    let names = envelope
        .get("data")
        .and_then(Value::as_array)
        .ok_or(Unexpected("label values"))?;
    Ok(names
        .iter()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect())
}

fn success(body: &Bytes, endpoint: &'static str) -> Result<Map<String, Value>, Unexpected> {
    let Ok(Value::Object(envelope)) = serde_json::from_slice(body) else {
        return Err(Unexpected(endpoint));
    };
    if envelope.get("status").and_then(Value::as_str) != Some("success") {
        return Err(Unexpected(endpoint));
    }
    Ok(envelope)
}

fn encode(envelope: &Map<String, Value>) -> Result<Bytes, Unexpected> {
    serde_json::to_vec(envelope)
        .map(Bytes::from)
        .map_err(|_| Unexpected("encoding"))
}

/// An alert is readable when its labels are inside the filter sets; one without labels is not.
fn readable(alert: &Value, enforcement: &Enforcement) -> bool {
    let Some(labels) = alert.get("labels").and_then(Value::as_object) else {
        return false;
    };
    enforcement.admits(|name| labels.get(name).and_then(Value::as_str).unwrap_or(""))
}

/// Prometheus gives an alerting rule the state of its most advanced alert.
fn strongest_state(alerts: &[Value]) -> &'static str {
    let states: BTreeSet<&str> = alerts
        .iter()
        .filter_map(|alert| alert.get("state").and_then(Value::as_str))
        .collect();
    if states.contains("firing") {
        "firing"
    } else if states.contains("pending") {
        "pending"
    } else {
        "inactive"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prod() -> Enforcement {
        let matcher = Enforcement::matcher("env", "=", "prod").unwrap();
        Enforcement::new(vec![vec![matcher]], vec!["p".to_owned()]).unwrap()
    }

    fn parse(bytes: &Bytes) -> Value {
        serde_json::from_slice(bytes).unwrap()
    }

    #[test]
    fn metadata_keeps_readable_metric_names_only() {
        let readable = BTreeSet::from(["up".to_owned(), "latency_bucket".to_owned()]);
        let body = Bytes::from(
            serde_json::json!({"status": "success", "data": {
                "up": [{"type": "gauge", "help": "h", "unit": ""}],
                "latency": [{"type": "histogram", "help": "h", "unit": ""}],
                "secret_total": [{"type": "counter", "help": "h", "unit": ""}],
            }})
            .to_string(),
        );
        let narrowed = parse(&metadata(&body, &readable).unwrap());
        assert_eq!(narrowed["data"].as_object().unwrap().len(), 2);
        assert_eq!(narrowed["data"]["latency"][0]["type"], "histogram");
        assert_eq!(narrowed["data"]["up"][0]["type"], "gauge");
    }

    #[test]
    fn alerts_and_rule_states_follow_the_readable_alerts() {
        let alert = |env: &str, state: &str| {
            serde_json::json!({"labels": {"alertname": "High", "env": env}, "state": state,
                               "annotations": {}, "activeAt": "2026-12-03T00:00:00Z",
                               "value": "1e+00"})
        };
        let body = Bytes::from(
            serde_json::json!({"status": "success", "data": {"alerts": [
                alert("prod", "pending"), alert("dev", "firing")]}})
            .to_string(),
        );
        let narrowed = parse(&alerts(&body, &prod()).unwrap());
        assert_eq!(narrowed["data"]["alerts"].as_array().unwrap().len(), 1);
        assert_eq!(narrowed["data"]["alerts"][0]["labels"]["env"], "prod");

        let rules_body = Bytes::from(
            serde_json::json!({"status": "success", "data": {"groups": [{
            "name": "g", "file": "f", "interval": 60, "rules": [
                {"type": "alerting", "name": "High", "query": "x > 1", "state": "firing",
                 "alerts": [alert("prod", "pending"), alert("dev", "firing")],
                 "health": "ok", "labels": {}, "annotations": {}},
                {"type": "recording", "name": "r", "query": "sum(x)", "health": "ok"}
            ]}]}})
            .to_string(),
        );
        let narrowed = parse(&rules(&rules_body, &prod()).unwrap());
        let rule = &narrowed["data"]["groups"][0]["rules"][0];
        assert_eq!(
            rule["state"], "pending",
            "the dev alert's firing state is hidden"
        );
        assert_eq!(rule["alerts"].as_array().unwrap().len(), 1);
        assert_eq!(narrowed["data"]["groups"][0]["interval"], 60);
        assert_eq!(narrowed["data"]["groups"][0]["rules"][1]["query"], "sum(x)");
    }

    #[test]
    fn error_answers_are_not_narrowed() {
        let body = Bytes::from_static(br#"{"status":"error","errorType":"x","error":"y"}"#);
        assert!(alerts(&body, &prod()).is_err());
        assert!(metadata(&body, &BTreeSet::new()).is_err());
    }
}
