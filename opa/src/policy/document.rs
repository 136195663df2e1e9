//! The original Heimdall's policy JSON: one policy object or an array of them.
//!
//! The document is walked by hand rather than derived, so that `null` and a wrong type are told
//! apart from an absent field, and every error names the policy and the field.

use serde_json::{Map, Value};

use super::{Policy, PolicyDraft, PolicyError};

const POLICY_FIELDS: [&str; 7] = [
    "name",
    "effect",
    "subjects",
    "actions",
    "scope",
    "filters",
    "description",
];
const SCOPE_FIELDS: [&str; 2] = ["tenants", "resources"];
const SUBJECT_FIELDS: [&str; 2] = ["type", "id"];

/// Parses and validates a policy document. Names must be unique within the document.
pub fn parse_policy_document(text: &str) -> Result<Vec<Policy>, PolicyError> {
    let document: Value = serde_json::from_str(text).map_err(|error| PolicyError::Document {
        reason: format!("not valid JSON: {error}"),
    })?;
    let objects = match document {
        Value::Array(items) => items,
        object @ Value::Object(_) => vec![object],
        other => {
            let reason = format!(
                "expected a policy object or an array, found {}",
                kind(&other)
            );
            return Err(PolicyError::Document { reason });
        }
    };
    if objects.is_empty() {
        return Err(PolicyError::Document {
            reason: "contains no policy".to_owned(),
        });
    }
    let mut policies: Vec<Policy> = Vec::with_capacity(objects.len());
    for (index, object) in objects.iter().enumerate() {
        let policy = draft_from_json(index, object)?.validate()?;
        if policies.iter().any(|earlier| earlier.name == policy.name) {
            let reason = format!("policy {} is defined twice", policy.name);
            return Err(PolicyError::Document { reason });
        }
        policies.push(policy);
    }
    Ok(policies)
}

/// Reads one policy object into a draft, checking only the JSON shape.
fn draft_from_json(index: usize, value: &Value) -> Result<PolicyDraft, PolicyError> {
    let fallback_label = format!("#{index}");
    let Value::Object(object) = value else {
        let reason = format!("policy #{index} is {}, not an object", kind(value));
        return Err(PolicyError::Document { reason });
    };
    let label = match object.get("name") {
        Some(Value::String(name)) if !name.is_empty() => name.clone(),
        _ => fallback_label,
    };
    let fields = Fields { policy: &label };
    fields.reject_unknown(object, "", &POLICY_FIELDS)?;

    let scope = match object.get("scope") {
        None => return Err(fields.error("scope", "is required")),
        Some(Value::Object(scope)) => scope,
        Some(other) => {
            return Err(fields.error("scope", format!("is {}, not an object", kind(other))));
        }
    };
    fields.reject_unknown(scope, "scope.", &SCOPE_FIELDS)?;

    Ok(PolicyDraft {
        name: fields.required_string(object, "name")?,
        effect: fields.required_string(object, "effect")?,
        subjects: fields.subjects(object)?,
        actions: fields.string_list(object, "actions", None)?,
        tenants: fields.string_list(scope, "scope.tenants", None)?,
        resources: fields.string_list(
            scope,
            "scope.resources",
            Some(vec!["metrics".to_owned()]),
        )?,
        filters: fields.string_list(object, "filters", Some(Vec::new()))?,
        description: match object.get("description") {
            None => String::new(),
            Some(Value::String(text)) => text.clone(),
            Some(other) => {
                return Err(
                    fields.error("description", format!("is {}, not a string", kind(other)))
                );
            }
        },
    })
}

/// Field readers that name the policy in their errors.
struct Fields<'a> {
    policy: &'a str,
}

impl Fields<'_> {
    fn error(&self, field: &str, reason: impl Into<String>) -> PolicyError {
        PolicyError::invalid(self.policy, field, reason)
    }

    fn reject_unknown(
        &self,
        object: &Map<String, Value>,
        prefix: &str,
        known: &[&str],
    ) -> Result<(), PolicyError> {
        match object.keys().find(|key| !known.contains(&key.as_str())) {
            Some(unknown) => Err(self.error(
                &format!("{prefix}{unknown}"),
                format!("unknown field; expected one of {}", known.join(", ")),
            )),
            None => Ok(()),
        }
    }

    fn required_string(
        &self,
        object: &Map<String, Value>,
        field: &str,
    ) -> Result<String, PolicyError> {
        match object.get(field) {
            Some(Value::String(text)) => Ok(text.clone()),
            None => Err(self.error(field, "is required")),
            Some(other) => Err(self.error(field, format!("is {}, not a string", kind(other)))),
        }
    }

    /// Reads a list of strings. `default` applies only when the field is absent: `null` is an
    /// error, never an empty (and so possibly wider) list.
    fn string_list(
        &self,
        object: &Map<String, Value>,
        field: &str,
        default: Option<Vec<String>>,
    ) -> Result<Vec<String>, PolicyError> {
        let key = field.rsplit('.').next().unwrap_or(field);
        let items = match (object.get(key), default) {
            (None, Some(default)) => return Ok(default),
            (None, None) => return Err(self.error(field, "is required")),
            (Some(Value::Array(items)), _) => items,
            (Some(other), _) => {
                return Err(self.error(field, format!("is {}, not a list", kind(other))));
            }
        };
        items
            .iter()
            .enumerate()
            .map(|(index, item)| match item {
                Value::String(text) => Ok(text.clone()),
                other => Err(self.error(
                    &format!("{field}[{index}]"),
                    format!("is {}, not a string", kind(other)),
                )),
            })
            .collect()
    }

    fn subjects(&self, object: &Map<String, Value>) -> Result<Vec<(String, String)>, PolicyError> {
        let items = match object.get("subjects") {
            Some(Value::Array(items)) => items,
            None => return Err(self.error("subjects", "is required")),
            Some(other) => {
                return Err(self.error("subjects", format!("is {}, not a list", kind(other))));
            }
        };
        let mut subjects = Vec::with_capacity(items.len());
        for (index, item) in items.iter().enumerate() {
            let field = format!("subjects[{index}]");
            let Value::Object(subject) = item else {
                return Err(self.error(&field, format!("is {}, not an object", kind(item))));
            };
            self.reject_unknown(subject, &format!("{field}."), &SUBJECT_FIELDS)?;
            let kind = self
                .required_string(subject, "type")
                .map_err(|e| self.nest(&field, e))?;
            let id = self
                .required_string(subject, "id")
                .map_err(|e| self.nest(&field, e))?;
            subjects.push((kind, id));
        }
        Ok(subjects)
    }

    fn nest(&self, parent: &str, error: PolicyError) -> PolicyError {
        match error {
            PolicyError::Invalid { field, reason, .. } => {
                self.error(&format!("{parent}.{field}"), reason)
            }
            other => other,
        }
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}
