//! Runs the Rego tests in `opa/policy/*_test.rego` through regorus, the embedded engine, the way
//! `opa test opa/policy` runs them: every rule named `test_*` must be true.

use regorus::{Engine, Value};

const POLICY: &str = include_str!("../policy/authz.rego");
const TENANTS_POLICY: &str = include_str!("../policy/tenants.rego");
const TESTS: &str = include_str!("../policy/authz_test.rego");
const TEST_PACKAGE: &str = "data.heimdall.authz_test";

#[test]
fn every_rego_test_passes() {
    let mut engine = Engine::new();
    engine
        .add_policy("authz.rego".into(), POLICY.into())
        .expect("the policy should compile");
    engine
        .add_policy("tenants.rego".into(), TENANTS_POLICY.into())
        .expect("the policy should compile");
    engine
        .add_policy("authz_test.rego".into(), TESTS.into())
        .expect("the tests should compile");
    let names: Vec<&str> = TESTS
        .lines()
        .filter_map(|line| line.strip_prefix("test_"))
        .filter_map(|rest| rest.split_whitespace().next())
        .collect();
    assert!(names.len() >= 14, "found only {} Rego tests", names.len());
    let mut failures = Vec::new();
    for name in &names {
        let result = engine
            .clone()
            .eval_rule(format!("{TEST_PACKAGE}.test_{name}"));
        match result {
            Ok(Value::Bool(true)) => {}
            other => failures.push(format!("test_{name}: {other:?}")),
        }
    }
    assert!(
        failures.is_empty(),
        "failing Rego tests:\n{}",
        failures.join("\n")
    );
}
