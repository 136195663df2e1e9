//! The embedded engine on real bundles: policies written as the original Heimdall's JSON, built
//! into a bundle, loaded and asked.

use heimdall_opa::bundle;
use heimdall_opa::engine::{Decision, DecisionInput, EmbeddedEngine, SubjectIdentity};
use heimdall_opa::{Tenant, parse_policy_document};

fn engine(policies: &str) -> EmbeddedEngine {
    let tenants = [
        Tenant::new("acme", "Acme Corp").unwrap(),
        Tenant::new("globex", "Globex").unwrap(),
    ];
    let policies = parse_policy_document(policies).unwrap();
    let bundle = bundle::build(1, &tenants, &policies).unwrap();
    EmbeddedEngine::from_bundle(&bundle.bytes).unwrap()
}

fn ask(
    engine: &EmbeddedEngine,
    user: &str,
    groups: &[&str],
    tenant: &str,
    action: &str,
) -> Decision {
    let input = DecisionInput {
        subject: SubjectIdentity {
            user: user.into(),
            groups: groups.iter().map(|group| (*group).to_owned()).collect(),
        },
        tenant: tenant.into(),
        action: action.into(),
        resource: "metrics".into(),
    };
    engine.decide(&input).unwrap()
}

#[test]
fn the_original_example_grants_alice_prod_series_of_acme() {
    let engine = engine(
        r#"[{"name": "allow-alice-read-acme", "effect": "allow",
             "subjects": [{"type": "user", "id": "alice@acme.com"}], "actions": ["read"],
             "scope": {"tenants": ["acme"], "resources": ["metrics"]}, "filters": ["env=\"prod\""]}]"#,
    );
    let decision = ask(&engine, "alice@acme.com", &[], "acme", "read");
    assert_eq!(
        decision,
        Decision {
            allowed: true,
            unrestricted: false,
            filter_sets: vec![vec![r#"env="prod""#.to_owned()]],
            policies: vec!["allow-alice-read-acme".to_owned()],
        }
    );
    assert!(!ask(&engine, "alice@acme.com", &[], "globex", "read").allowed);
    assert!(!ask(&engine, "alice@acme.com", &[], "acme", "write").allowed);
    assert!(!ask(&engine, "bob@acme.com", &[], "acme", "read").allowed);
    assert!(engine.revision().starts_with("1-"));
}

#[test]
fn grants_on_different_labels_are_a_union_not_an_intersection() {
    let engine = engine(
        r#"[{"name": "prod", "effect": "allow", "subjects": [{"type": "group", "id": "sre"}],
             "actions": ["read"], "scope": {"tenants": ["acme"]}, "filters": ["env=\"prod\""]},
            {"name": "staging", "effect": "allow", "subjects": [{"type": "user", "id": "u"}],
             "actions": ["read"], "scope": {"tenants": ["*"]}, "filters": ["env=\"staging\""]}]"#,
    );
    let decision = ask(&engine, "u", &["sre"], "acme", "read");
    assert_eq!(
        decision.filter_sets,
        [[r#"env="prod""#], [r#"env="staging""#]]
    );
    let tenants = engine
        .accessible_tenants(
            &SubjectIdentity {
                user: "u".into(),
                groups: vec![],
            },
            "read",
        )
        .unwrap();
    assert_eq!(tenants, ["acme", "globex"]);
    let none = engine
        .accessible_tenants(
            &SubjectIdentity {
                user: "nobody".into(),
                groups: vec![],
            },
            "read",
        )
        .unwrap();
    assert!(none.is_empty());
}
