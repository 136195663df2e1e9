use super::*;

const ORIGINAL_EXAMPLE: &str = r#"[
  {
    "name": "allow-alice-read-acme",
    "effect": "allow",
    "subjects": [{"type": "user", "id": "alice@acme.com"}],
    "actions": ["read"],
    "scope": {
      "tenants": ["acme"],
      "resources": ["metrics"]
    },
    "filters": ["env=\"prod\""]
  }
]"#;

fn error_of(text: &str) -> String {
    parse_policy_document(text)
        .expect_err("document should be refused")
        .to_string()
}

fn with_field(field: &str, value: &str) -> String {
    let mut object: serde_json::Value = serde_json::from_str(ORIGINAL_EXAMPLE).unwrap();
    let policy = &mut object[0];
    match field.split_once('.') {
        Some((outer, inner)) => policy[outer][inner] = serde_json::from_str(value).unwrap(),
        None => policy[field] = serde_json::from_str(value).unwrap(),
    }
    object.to_string()
}

#[test]
fn accepts_the_original_readme_example_unchanged() {
    let policies = parse_policy_document(ORIGINAL_EXAMPLE).unwrap();
    assert_eq!(policies.len(), 1);
    let policy = &policies[0];
    assert_eq!(policy.name.as_str(), "allow-alice-read-acme");
    assert_eq!(policy.effect, Effect::Allow);
    assert_eq!(
        policy.subjects,
        [Subject {
            kind: SubjectKind::User,
            id: "alice@acme.com".into()
        }]
    );
    assert_eq!(policy.actions, [Action::Read]);
    assert_eq!(
        policy.scope.tenants,
        [TenantScope::Tenant(TenantId::parse("acme").unwrap())]
    );
    assert_eq!(policy.filters[0].to_string(), r#"env="prod""#);
    let round_trip = serde_json::to_value(policy).unwrap();
    let original: serde_json::Value = serde_json::from_str(ORIGINAL_EXAMPLE).unwrap();
    assert_eq!(round_trip, original[0]);
}

#[test]
fn accepts_a_single_object_and_defaults_absent_optional_fields() {
    let text = r#"{"name": "ops", "effect": "deny", "subjects": [{"type": "group", "id": "ops"}],
                   "actions": ["*"], "scope": {"tenants": ["*"]}}"#;
    let policies = parse_policy_document(text).unwrap();
    assert_eq!(policies[0].scope.resources, [Resource::Metrics]);
    assert!(policies[0].filters.is_empty());
    assert_eq!(policies[0].scope.tenants, [TenantScope::AllRegistered]);
}

#[test]
fn null_lists_are_errors_not_wider_grants() {
    let message = error_of(&with_field("filters", "null"));
    assert_eq!(
        message,
        "policy allow-alice-read-acme: filters: is null, not a list"
    );
    let message = error_of(&with_field("scope.tenants", "null"));
    assert!(message.contains("scope.tenants: is null"), "{message}");
    let message = error_of(&with_field("filters", "[null]"));
    assert!(message.contains("filters[0]: is null"), "{message}");
}

#[test]
fn every_error_names_the_policy_and_the_field() {
    let cases = [
        (with_field("actions", r#"["read", "delete"]"#), "actions[1]"),
        (with_field("actions", "[]"), "actions: must not be empty"),
        (with_field("effect", r#""maybe""#), "effect"),
        (
            with_field("filters", r#"[""]"#),
            "filters[0]: must not be empty",
        ),
        (
            with_field("filters", r#"["__name__=\"up\""]"#),
            "filters[0]",
        ),
        (
            with_field("filters", r#"["env=\"a\" or env=\"b\""]"#),
            "filters[0]",
        ),
        (with_field("filters", r#"["env=~\"(\""]"#), "filters[0]"),
        (
            with_field("scope.tenants", r#"["a|b"]"#),
            "scope.tenants[0]",
        ),
        (
            with_field("scope.resources", r#"["logs"]"#),
            "scope.resources[0]",
        ),
        (
            with_field("subjects", r#"[{"type": "robot", "id": "r2"}]"#),
            "subjects[0]",
        ),
        (
            with_field("subjects", r#"[{"type": "user"}]"#),
            "subjects[0].id: is required",
        ),
        (with_field("subjects", "[]"), "subjects: must not be empty"),
        (
            with_field("filter", r#"["env=\"prod\""]"#),
            "filter: unknown field",
        ),
        (
            with_field("scope.tenant", r#"["acme"]"#),
            "scope.tenant: unknown field",
        ),
        (
            with_field("actions", r#"["read", "read"]"#),
            "actions[1]: \"read\" is listed twice",
        ),
    ];
    for (text, expected) in cases {
        let message = error_of(&text);
        assert!(
            message.starts_with("policy allow-alice-read-acme: "),
            "{message}"
        );
        assert!(
            message.contains(expected),
            "{message} should contain {expected}"
        );
    }
}

#[test]
fn unnamed_policies_are_named_by_their_position() {
    let message = error_of(r#"[{"effect": "allow"}]"#);
    assert!(message.starts_with("policy #0: "), "{message}");
    let message = error_of(
        r#"[{"name": "", "effect": "allow", "subjects": [{"type":"user","id":"a"}],
        "actions": ["read"], "scope": {"tenants": ["acme"]}}]"#,
    );
    assert!(message.contains("name: must not be empty"), "{message}");
}

#[test]
fn documents_that_are_not_policies_are_refused() {
    assert!(error_of("").starts_with("policy document: not valid JSON"));
    assert_eq!(error_of("[]"), "policy document: contains no policy");
    assert!(error_of("42").contains("expected a policy object or an array"));
    let twice = format!(
        "[{0}, {0}]",
        &ORIGINAL_EXAMPLE[1..ORIGINAL_EXAMPLE.len() - 1]
    );
    assert!(error_of(&twice).contains("defined twice"));
}

#[test]
fn drafts_round_trip_through_validation() {
    let policy = parse_policy_document(ORIGINAL_EXAMPLE).unwrap().remove(0);
    assert_eq!(policy.to_draft().validate().unwrap(), policy);
}
