use super::*;
use crate::policy::parse_policy_document;

fn sample() -> (Vec<Tenant>, Vec<Policy>) {
    let tenants = vec![
        Tenant::new("acme", "Acme Corp").unwrap(),
        Tenant::new("globex", "Globex").unwrap(),
    ];
    let policies = parse_policy_document(
        r#"[{"name": "b", "effect": "allow", "subjects": [{"type": "user", "id": "alice"}],
             "actions": ["read"], "scope": {"tenants": ["acme"]}, "filters": ["team=\"x\"", "env=\"prod\""]},
            {"name": "a", "effect": "deny", "subjects": [{"type": "group", "id": "ops"},
             {"type": "user", "id": "alice"}], "actions": ["*"], "scope": {"tenants": ["*"]}}]"#,
    )
    .unwrap();
    (tenants, policies)
}

#[test]
fn the_same_state_gives_the_same_bytes_in_any_input_order() {
    let (tenants, policies) = sample();
    let first = build(7, &tenants, &policies).unwrap();
    let mut reversed_tenants = tenants.clone();
    reversed_tenants.reverse();
    let mut reversed_policies = policies.clone();
    reversed_policies.reverse();
    let second = build(7, &reversed_tenants, &reversed_policies).unwrap();
    assert_eq!(first, second);
    assert_ne!(first.bytes, build(8, &tenants, &policies).unwrap().bytes);
    assert_eq!(first.digest, hex(&Sha256::digest(&first.bytes)));
}

#[test]
fn a_bundle_reads_back_as_built() {
    let (tenants, policies) = sample();
    let bundle = build(3, &tenants, &policies).unwrap();
    let contents = read(&bundle.bytes).unwrap();
    assert_eq!(contents.revision, bundle.revision);
    assert!(contents.revision.starts_with("3-"));
    assert_eq!(contents.roots, ["heimdall"]);
    assert_eq!(contents.modules[POLICY_PATH], AUTHZ_REGO);
    assert_eq!(
        contents.data.as_bytes(),
        data_json(&tenants, &policies).unwrap()
    );
}

#[test]
fn the_data_is_indexed_by_subject() {
    let (tenants, policies) = sample();
    let data: Value = serde_json::from_slice(&data_json(&tenants, &policies).unwrap()).unwrap();
    let alice = &data["subjects"]["user"]["alice"];
    assert_eq!(alice["tenants"], json!({"acme": ["b"]}));
    assert_eq!(alice["registered"], json!(["a"]));
    assert_eq!(data["subjects"]["group"]["ops"]["registered"], json!(["a"]));
    let (a, b) = (&data["policies"]["a"], &data["policies"]["b"]);
    assert_eq!(a["all_registered"], json!(true));
    assert_eq!(
        a["actions"].as_object().unwrap().len(),
        6,
        "* is expanded into every action"
    );
    assert_eq!(b["tenants"], json!({"acme": true}));
    assert_eq!(b["filters"], json!(["env=\"prod\"", "team=\"x\""]));
    assert_eq!(data["tenants"]["acme"]["name"], json!("Acme Corp"));
}

#[test]
fn malformed_bundles_are_errors() {
    assert!(read(b"not a gzip").is_err());
    let empty = flate2::GzBuilder::new()
        .write(Vec::new(), Compression::default())
        .finish()
        .unwrap();
    assert!(matches!(
        read(&empty),
        Err(BundleError::Malformed(_)) | Err(BundleError::Io(_))
    ));
}
