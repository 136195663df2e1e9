//! Merges per-tenant answers of a fanned-out read into one Prometheus API answer: every series
//! labelled with its tenant (`__tenant_id__`, as Mimir's federation does), lists unioned,
//! everything sorted, so the same answers always give the same bytes.

use std::collections::BTreeSet;

use bytes::Bytes;
use heimdall_opa::TenantId;
use serde_json::{Map, Value};

use crate::promql::TENANT_LABEL;

/// Where a series' own `__tenant_id__` goes when the merge sets its tenant.
const ORIGINAL_TENANT_LABEL: &str = "original___tenant_id__";

/// Why answers could not be merged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MergeError {
    /// An answer is not the success envelope its endpoint gives: 502.
    #[error("unexpected upstream answer from tenant {0}")]
    Unexpected(String),
    /// The answers have no one merged form (scalars, mixed result types): 422.
    #[error("{0}")]
    Unmergeable(String),
}

/// Merges the success answers of `route`, one per tenant.
pub fn merge(route: &str, answers: &[(TenantId, Bytes)]) -> Result<Bytes, MergeError> {
    let mut envelopes = Vec::with_capacity(answers.len());
    for (tenant, body) in answers {
        let Ok(Value::Object(envelope)) = serde_json::from_slice::<Value>(body) else {
            return Err(MergeError::Unexpected(tenant.to_string()));
        };
        if envelope.get("status").and_then(Value::as_str) != Some("success") {
            return Err(MergeError::Unexpected(tenant.to_string()));
        }
        envelopes.push((tenant.as_str(), envelope));
    }
    let data = match route {
        "/api/v1/query" | "/api/v1/query_range" => merge_results(&mut envelopes)?,
        "/api/v1/query_exemplars" => merge_list(&envelopes, |tenant, item| {
            label(item, "seriesLabels", tenant)
        })?,
        "/api/v1/series" => merge_list(&envelopes, |tenant, item| {
            if let Value::Object(labels) = item {
                set_tenant(labels, tenant);
            }
        })?,
        "/api/v1/labels" => {
            let mut names = merge_strings(&envelopes)?;
            if names.contains(TENANT_LABEL) {
                names.insert(ORIGINAL_TENANT_LABEL.to_owned());
            }
            names.insert(TENANT_LABEL.to_owned());
            Value::Array(names.into_iter().map(Value::String).collect())
        }
        "/api/v1/label/{name}/values" => Value::Array(
            merge_strings(&envelopes)?
                .into_iter()
                .map(Value::String)
                .collect(),
        ),
        "/api/v1/metadata" => merge_metadata(&envelopes)?,
        "/api/v1/alerts" => {
            let mut alerts = merge_nested_list(&envelopes, "alerts", |tenant, alert| {
                label(alert, "labels", tenant)
            })?;
            sort_by_text(&mut alerts);
            let mut data = Map::new();
            data.insert("alerts".to_owned(), Value::Array(alerts));
            Value::Object(data)
        }
        "/api/v1/rules" => {
            // Groups stay per tenant, in tenant order, each naming its tenant.
            let groups = merge_nested_list(&envelopes, "groups", |tenant, group| {
                if let Value::Object(group) = group {
                    group.insert("tenant".to_owned(), Value::String(tenant.to_owned()));
                }
            })?;
            let mut data = Map::new();
            data.insert("groups".to_owned(), Value::Array(groups));
            Value::Object(data)
        }
        // Series-free endpoints answer the same for every tenant: the first answer stands.
        _ => envelopes[0].1.get("data").cloned().unwrap_or(Value::Null),
    };
    let mut merged = Map::new();
    merged.insert("status".to_owned(), Value::String("success".to_owned()));
    merged.insert("data".to_owned(), data);
    for key in ["warnings", "infos"] {
        // Each note names the tenant whose answer carried it.
        let notes: BTreeSet<String> = envelopes
            .iter()
            .flat_map(|(tenant, envelope)| {
                union_of_strings(envelope.get(key).into_iter())
                    .into_iter()
                    .map(move |note| format!("tenant {tenant}: {note}"))
            })
            .collect();
        if !notes.is_empty() {
            merged.insert(
                key.to_owned(),
                Value::Array(notes.into_iter().map(Value::String).collect()),
            );
        }
    }
    serde_json::to_vec(&merged)
        .map(Bytes::from)
        .map_err(|error| MergeError::Unmergeable(error.to_string()))
}

/// Vector and matrix results: series of every tenant, labelled, sorted by labels.
fn merge_results(envelopes: &mut [(&str, Map<String, Value>)]) -> Result<Value, MergeError> {
    let mut result_type: Option<&str> = None;
    let mut series = Vec::new();
    for (tenant, envelope) in envelopes.iter_mut() {
        let data = envelope
            .get_mut("data")
            .and_then(Value::as_object_mut)
            .ok_or_else(|| MergeError::Unexpected((*tenant).to_owned()))?;
        let kind = data
            .get("resultType")
            .and_then(Value::as_str)
            .ok_or_else(|| MergeError::Unexpected((*tenant).to_owned()))?;
        if result_type.is_some_and(|seen| seen != kind) {
            return Err(MergeError::Unmergeable(
                "the tenants' answers have different result types".to_owned(),
            ));
        }
        if !matches!(kind, "vector" | "matrix") {
            return Err(MergeError::Unmergeable(format!(
                "a {kind} result cannot be merged across tenants: query one tenant, or aggregate \
                 per tenant with a vector result"
            )));
        }
        result_type = Some(if kind == "vector" { "vector" } else { "matrix" });
        let Some(Value::Array(items)) = data.remove("result") else {
            return Err(MergeError::Unexpected((*tenant).to_owned()));
        };
        for mut item in items {
            label(&mut item, "metric", tenant);
            series.push(item);
        }
    }
    sort_by_key_text(&mut series, "metric");
    let mut data = Map::new();
    data.insert(
        "resultType".to_owned(),
        Value::String(result_type.unwrap_or("vector").to_owned()),
    );
    data.insert("result".to_owned(), Value::Array(series));
    Ok(Value::Object(data))
}

/// `data` arrays of every tenant, each item adjusted, sorted and deduplicated.
fn merge_list(
    envelopes: &[(&str, Map<String, Value>)],
    adjust: impl Fn(&str, &mut Value),
) -> Result<Value, MergeError> {
    let mut items = collect_items(envelopes, None, adjust)?;
    sort_by_text(&mut items);
    items.dedup();
    Ok(Value::Array(items))
}

/// `data.<key>` arrays of every tenant, each item adjusted, in tenant order.
fn merge_nested_list(
    envelopes: &[(&str, Map<String, Value>)],
    key: &str,
    adjust: impl Fn(&str, &mut Value),
) -> Result<Vec<Value>, MergeError> {
    collect_items(envelopes, Some(key), adjust)
}

fn merge_strings(envelopes: &[(&str, Map<String, Value>)]) -> Result<BTreeSet<String>, MergeError> {
    let mut strings = BTreeSet::new();
    for (tenant, envelope) in envelopes {
        let list = data_list(envelope, None, tenant)?;
        strings.extend(list.iter().filter_map(Value::as_str).map(str::to_owned));
    }
    Ok(strings)
}

/// The items of every tenant's `data` (or `data.<key>`) array, each adjusted, in tenant order.
fn collect_items(
    envelopes: &[(&str, Map<String, Value>)],
    key: Option<&str>,
    adjust: impl Fn(&str, &mut Value),
) -> Result<Vec<Value>, MergeError> {
    let mut items = Vec::new();
    for (tenant, envelope) in envelopes {
        for item in data_list(envelope, key, tenant)? {
            let mut item = item.clone();
            adjust(tenant, &mut item);
            items.push(item);
        }
    }
    Ok(items)
}

/// Returns the array at `data` (or `data.<key>`) of one tenant's answer.
fn data_list<'a>(
    envelope: &'a Map<String, Value>,
    key: Option<&str>,
    tenant: &str,
) -> Result<&'a Vec<Value>, MergeError> {
    let data = envelope.get("data");
    let list = match key {
        Some(key) => data.and_then(|data| data.get(key)),
        None => data,
    };
    list.and_then(Value::as_array)
        .ok_or_else(|| MergeError::Unexpected(tenant.to_owned()))
}

/// Metadata by metric name; the entries of several tenants are unioned.
fn merge_metadata(envelopes: &[(&str, Map<String, Value>)]) -> Result<Value, MergeError> {
    let mut merged: Map<String, Value> = Map::new();
    for (tenant, envelope) in envelopes {
        let data = envelope
            .get("data")
            .and_then(Value::as_object)
            .ok_or_else(|| MergeError::Unexpected((*tenant).to_owned()))?;
        for (metric, entries) in data {
            let Some(entries) = entries.as_array() else {
                continue;
            };
            let slot = merged
                .entry(metric.clone())
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(list) = slot {
                list.extend(entries.iter().cloned());
                sort_by_text(list);
                list.dedup();
            }
        }
    }
    Ok(Value::Object(merged))
}

fn union_of_strings<'a>(lists: impl Iterator<Item = &'a Value>) -> BTreeSet<String> {
    lists
        .filter_map(Value::as_array)
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect()
}

/// Sets `__tenant_id__` in the label object at `key` of `item`; a value the series already had
/// moves to `original___tenant_id__`, as Mimir's federation does.
fn label(item: &mut Value, key: &str, tenant: &str) {
    if let Some(Value::Object(labels)) = item.get_mut(key) {
        set_tenant(labels, tenant);
    }
}

fn set_tenant(labels: &mut Map<String, Value>, tenant: &str) {
    if let Some(original) = labels.insert(TENANT_LABEL.to_owned(), Value::String(tenant.to_owned()))
    {
        labels.insert(ORIGINAL_TENANT_LABEL.to_owned(), original);
    }
}

fn sort_by_text(items: &mut [Value]) {
    items.sort_by_cached_key(Value::to_string);
}

fn sort_by_key_text(items: &mut [Value], key: &str) {
    items.sort_by_cached_key(|item| item.get(key).map(Value::to_string).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(id: &str) -> TenantId {
        TenantId::parse(id).unwrap()
    }

    fn body(value: Value) -> Bytes {
        Bytes::from(value.to_string())
    }

    fn vector(series: &[(&str, &str)], warning: Option<&str>) -> Bytes {
        let result: Vec<Value> = series
            .iter()
            .map(|(instance, value)| {
                serde_json::json!({"metric": {"__name__": "up", "instance": instance},
                                   "value": [1.0, value]})
            })
            .collect();
        let mut envelope = serde_json::json!({"status": "success",
            "data": {"resultType": "vector", "result": result}});
        if let Some(warning) = warning {
            envelope["warnings"] = serde_json::json!([warning]);
        }
        body(envelope)
    }

    #[test]
    fn vectors_are_labelled_sorted_and_merged_the_same_way_every_time() {
        let answers = [
            (
                tenant("globex"),
                vector(&[("b", "1"), ("a", "2")], Some("w1")),
            ),
            (tenant("acme"), vector(&[("c", "3")], Some("w1"))),
        ];
        let merged = merge("/api/v1/query", &answers).unwrap();
        let reversed: Vec<_> = answers.iter().rev().cloned().collect();
        assert_eq!(merge("/api/v1/query", &reversed).unwrap(), merged);
        let value: Value = serde_json::from_slice(&merged).unwrap();
        let tenants: Vec<&str> = value["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|series| series["metric"][TENANT_LABEL].as_str().unwrap())
            .collect();
        assert_eq!(tenants, ["acme", "globex", "globex"]);
        assert_eq!(
            value["warnings"],
            serde_json::json!(["tenant acme: w1", "tenant globex: w1"])
        );
    }

    #[test]
    fn scalars_and_broken_answers_are_not_merged() {
        let scalar = body(serde_json::json!({"status": "success",
            "data": {"resultType": "scalar", "result": [1.0, "2"]}}));
        let answers = [(tenant("a"), scalar.clone()), (tenant("b"), scalar)];
        assert!(matches!(
            merge("/api/v1/query", &answers),
            Err(MergeError::Unmergeable(_))
        ));
        let broken = [(tenant("a"), Bytes::from_static(b"<html>"))];
        assert!(matches!(
            merge("/api/v1/series", &broken),
            Err(MergeError::Unexpected(_))
        ));
    }

    #[test]
    fn a_tenant_label_the_series_had_is_kept_aside() {
        let series = body(serde_json::json!({"status": "success",
            "data": [{"__name__": "up", "__tenant_id__": "x"}]}));
        let merged: Value =
            serde_json::from_slice(&merge("/api/v1/series", &[(tenant("acme"), series)]).unwrap())
                .unwrap();
        assert_eq!(merged["data"][0]["__tenant_id__"], "acme");
        assert_eq!(merged["data"][0]["original___tenant_id__"], "x");
    }

    #[test]
    fn lists_are_unioned() {
        let labels = |names: &[&str]| body(serde_json::json!({"status": "success", "data": names}));
        let answers = [
            (tenant("a"), labels(&["job", "instance"])),
            (tenant("b"), labels(&["job", "env"])),
        ];
        let merged: Value =
            serde_json::from_slice(&merge("/api/v1/labels", &answers).unwrap()).unwrap();
        assert_eq!(
            merged["data"],
            serde_json::json!(["__tenant_id__", "env", "instance", "job"])
        );
        let values: Value =
            serde_json::from_slice(&merge("/api/v1/label/{name}/values", &answers).unwrap())
                .unwrap();
        assert_eq!(
            values["data"],
            serde_json::json!(["env", "instance", "job"])
        );
    }
}
