use super::*;
use heimdall_control_plane::bundle::BundleStorage;

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect()
}

fn load_text(text: &str, environment: &[(&str, &str)]) -> anyhow::Result<ServeConfig> {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), text).unwrap();
    load(Some(file.path()), &env(environment))
}

fn error_of(text: &str, environment: &[(&str, &str)]) -> String {
    format!(
        "{:#}",
        load_text(text, environment).expect_err("config should be refused")
    )
}

#[test]
fn no_file_gives_the_embedded_defaults() {
    let config = load(None, &BTreeMap::new()).unwrap();
    assert_eq!(config.admin_addr, "127.0.0.1:9093".parse().unwrap());
    assert_eq!(config.http_addr, "127.0.0.1:9092".parse().unwrap());
    assert_eq!(config.database_url, None);
    assert_eq!(config.data_dir, PathBuf::from("heimdall-data"));
    assert!(config.admin_tokens.is_empty());
    assert_eq!(
        config.bundle_storage,
        BundleStorage::LocalDir(PathBuf::from("heimdall-data/bundles"))
    );
}

#[test]
fn unknown_keys_are_refused_by_name() {
    let message = error_of("server:\n  admin:\n    adress: 127.0.0.1:1\n", &[]);
    assert!(
        message.starts_with("config key server.admin.adress: unknown field"),
        "{message}"
    );
    let message = error_of("databse:\n  url: sqlite://x\n", &[]);
    assert!(message.contains("databse"), "{message}");
}

#[test]
fn wrong_values_name_their_key() {
    let cases = [
        (
            "server:\n  log_level: loud\n",
            "config key server.log_level",
        ),
        (
            "server:\n  admin:\n    addr: localhost\n",
            "config key server.admin.addr",
        ),
        ("database:\n  url: mysql://x\n", "config key database.url"),
        (
            "database:\n  driver: oracle\n  dsn: x\n",
            "config key database.driver",
        ),
        (
            "database:\n  max_connections: many\n",
            "config key database.max_connections",
        ),
        ("nats:\n  url: localhost:4222\n", "config key nats.url"),
        ("bundle:\n  url: ftp://b\n", "config key bundle.url"),
        ("bundle:\n  url: s3://\n", "config key bundle.url"),
        (
            "nats:\n  subject_prefix: \"a..b\"\n",
            "config key nats.subject_prefix",
        ),
        (
            "admin:\n  tokens:\n    - name: ci\n      sha256: abc\n",
            "config key admin.tokens[0]",
        ),
    ];
    for (text, expected) in cases {
        let message = error_of(text, &[]);
        assert!(
            message.starts_with(expected),
            "{message} should start with {expected}"
        );
    }
}

#[test]
fn every_key_has_an_environment_override() {
    let hash = "a".repeat(64);
    let tokens = format!("[{{name: ci, sha256: {hash}}}]");
    let config = load_text(
        "server:\n  log_level: debug\n",
        &[
            ("HEIMDALL_SERVER_ADMIN_ADDR", "127.0.0.1:7001"),
            ("HEIMDALL_SERVER_BUNDLE_ADDR", "127.0.0.1:7002"),
            ("HEIMDALL_SERVER_LOG_LEVEL", "warn"),
            ("HEIMDALL_SERVER_LOG_FORMAT", "json"),
            ("HEIMDALL_DATABASE_URL", "postgres://u@127.0.0.1:5/db"),
            ("HEIMDALL_DATABASE_MAX_CONNECTIONS", "3"),
            ("HEIMDALL_ADMIN_TOKENS", &tokens),
            ("HEIMDALL_DATA_DIR", "/var/lib/heimdall"),
            ("HEIMDALL_BUNDLE_DIR", "/srv/bundles"),
        ],
    )
    .unwrap();
    assert_eq!(config.admin_addr, "127.0.0.1:7001".parse().unwrap());
    assert_eq!(config.http_addr, "127.0.0.1:7002".parse().unwrap());
    assert_eq!(config.log_level, tracing::Level::WARN);
    assert!(config.json_logs);
    assert_eq!(
        config.database_url.as_deref(),
        Some("postgres://u@127.0.0.1:5/db")
    );
    assert_eq!(config.max_connections, 3);
    assert_eq!(config.admin_tokens[0].name, "ci");
    assert_eq!(config.data_dir, PathBuf::from("/var/lib/heimdall"));
    assert_eq!(
        config.bundle_storage,
        BundleStorage::LocalDir(PathBuf::from("/srv/bundles"))
    );
}

#[test]
fn the_override_list_covers_every_leaf_key() {
    let defaults = serde_yaml::to_value(RawConfig::default()).unwrap();
    let mut leaves = Vec::new();
    collect_leaves(&defaults, &mut Vec::new(), &mut leaves);
    let variables: Vec<String> = leaves.iter().map(|(path, _)| env_variable(path)).collect();
    for expected in [
        "HEIMDALL_DATABASE_DSN",
        "HEIMDALL_DATABASE_DRIVER",
        "HEIMDALL_DATA_DIR",
        "HEIMDALL_BUNDLE_DIR",
        "HEIMDALL_BUNDLE_TOKENS",
        "HEIMDALL_NATS_URL",
        "HEIMDALL_NATS_SUBJECT_PREFIX",
    ] {
        assert!(
            variables.contains(&expected.to_owned()),
            "{expected} missing from {variables:?}"
        );
    }
}

#[test]
fn the_original_driver_and_dsn_keys_are_accepted() {
    let config = load_text("database:\n  driver: sqlite\n  dsn: heimdall.db\n", &[]).unwrap();
    assert_eq!(
        config.database_url.as_deref(),
        Some("sqlite://heimdall.db?mode=rwc")
    );
    let message = error_of(
        "database:\n  url: sqlite://a\n  driver: sqlite\n  dsn: b\n",
        &[],
    );
    assert!(
        message.contains("either url, or driver and dsn"),
        "{message}"
    );
    let message = error_of("", &[("HEIMDALL_DATABASE_MAX_CONNECTIONS", "x")]);
    assert!(
        message.starts_with("HEIMDALL_DATABASE_MAX_CONNECTIONS"),
        "{message}"
    );
}

#[test]
fn go_style_listen_addresses_mean_every_interface() {
    let config = load_text("server:\n  admin:\n    addr: \":9191\"\n", &[]).unwrap();
    assert_eq!(config.admin_addr, "0.0.0.0:9191".parse().unwrap());
}

#[test]
fn s3_bundle_storage_is_read_from_the_url_and_the_environment() {
    let config = load_text(
        "bundle:\n  url: s3://heimdall-bundles/prod/\n  s3:\n    endpoint: http://127.0.0.1:8333\n",
        &[
            ("HEIMDALL_BUNDLE_S3_ALLOW_HTTP", "true"),
            ("HEIMDALL_BUNDLE_S3_SECRET_ACCESS_KEY", "top-secret"),
        ],
    )
    .unwrap();
    let BundleStorage::S3(s3) = &config.bundle_storage else {
        panic!("expected S3 storage, got {:?}", config.bundle_storage);
    };
    assert_eq!(
        (s3.bucket.as_str(), s3.prefix.as_str()),
        ("heimdall-bundles", "prod")
    );
    assert_eq!(s3.endpoint.as_deref(), Some("http://127.0.0.1:8333"));
    assert!(s3.allow_http);
    assert_eq!(s3.secret_access_key.as_deref(), Some("top-secret"));
    assert!(
        !format!("{config:?}").contains("top-secret"),
        "secrets never reach Debug output"
    );
}

#[test]
fn gcs_and_azure_bundle_storage_are_read_from_the_url() {
    let config = load_text("bundle:\n  url: gs://heimdall/opa\n", &[]).unwrap();
    let expected = BundleStorage::Gcs {
        bucket: "heimdall".into(),
        prefix: "opa".into(),
    };
    assert_eq!(config.bundle_storage, expected);
    let config = load_text("bundle:\n  url: az://bundles\n", &[]).unwrap();
    let expected = BundleStorage::Azure {
        container: "bundles".into(),
        prefix: String::new(),
    };
    assert_eq!(config.bundle_storage, expected);
}

#[test]
fn the_deploy_example_parses() {
    let text = include_str!("../../deploy/heimdall.example.yaml");
    let config = load_text(text, &[]).expect("the example config should load");
    assert_eq!(config.proxy.upstream.api_prefix, "/prometheus");
    assert_eq!(config.proxy.jwt.groups_claim, "realm_access.roles");
    assert_eq!(config.proxy.jwt.audiences, vec!["heimdall".to_owned()]);
}

#[test]
fn proxy_keys_are_validated_by_name() {
    let cases = [
        (
            "jwt:\n  algorithms: [RS256, none]\n",
            "config key jwt.algorithms",
        ),
        ("jwt:\n  algorithms: [HS256]\n", "jwt.hmac_secret"),
        ("jwt:\n  algorithms: [XS999]\n", "config key jwt.algorithms"),
        (
            "jwt:\n  leeway_seconds: 3600\n",
            "config key jwt.leeway_seconds",
        ),
        ("jwt:\n  jwks_url: ftp://idp\n", "config key jwt.jwks_url"),
        ("mimir:\n  url: mimir:8080\n", "config key mimir.url"),
        (
            "mimir:\n  auth:\n    type: bearer\n",
            "config key mimir.auth.token",
        ),
        (
            "mimir:\n  api_prefix: prometheus\n",
            "config key mimir.api_prefix",
        ),
        (
            "mimir:\n  kind: label\n  federation: false\n  label_policy: true\n",
            "config key mimir.label_policy",
        ),
        (
            "mimir:\n  label_policy: true\n",
            "config key mimir.label_policy: needs mimir.federation: false",
        ),
        (
            "mimir:\n  url: http://mimir:8080\n  tls:\n    ca_file: /dev/null\n",
            "config key mimir.url",
        ),
        (
            "mimir:\n  url: http://mimir:8080\n  auth:\n    type: mtls\n  tls:\n    cert_file: /dev/null\n    key_file: /dev/null\n",
            "must be https://",
        ),
        (
            "mimir:\n  auth:\n    type: mtls\n",
            "config key mimir.tls.cert_file",
        ),
        (
            "mimir:\n  url: https://mimir\n  tls:\n    ca_file: /nonexistent/ca.pem\n",
            "config key mimir.tls.ca_file: reading /nonexistent/ca.pem",
        ),
        (
            "mimir:\n  url: https://mimir\n  tls:\n    cert_file: /dev/null\n",
            "config key mimir.tls.key_file: required with cert_file",
        ),
        (
            "proxy:\n  partial_tenants: sometimes\n",
            "config key proxy.partial_tenants",
        ),
        ("proxy:\n  max_tenants: 0\n", "config key proxy.max_tenants"),
        (
            "server:\n  main:\n    addr: 127.0.0.1:9093\n",
            "must differ from",
        ),
    ];
    for (text, expected) in cases {
        let message = error_of(text, &[]);
        assert!(message.contains(expected), "{text}: {message}");
    }
}

#[test]
fn audiences_and_issuers_take_one_value_or_a_list() {
    let config = load_text(
        "jwt:\n  issuer: https://idp\n  audience: [heimdall, grafana]\n",
        &[],
    )
    .unwrap();
    assert_eq!(config.proxy.jwt.issuers, vec!["https://idp".to_owned()]);
    assert_eq!(config.proxy.jwt.audiences.len(), 2);
    let config = load_text(
        "",
        &[
            ("HEIMDALL_JWT_AUDIENCE", "heimdall"),
            ("HEIMDALL_JWT_ALGORITHMS", "ES256,EdDSA"),
        ],
    )
    .unwrap();
    assert_eq!(config.proxy.jwt.audiences, vec!["heimdall".to_owned()]);
    assert_eq!(config.proxy.jwt.algorithms.len(), 2);
}
