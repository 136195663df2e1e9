//! Bundle publishing to a real S3-compatible store (SeaweedFS, started by the README's test
//! command; `HEIMDALL_TEST_S3_ENDPOINT`).

use std::path::Path;
use std::time::{Duration, Instant};

use heimdall_tests::{HeimdallProcess, cli_ok, http_request, random_u64, required_env};

const ADMIN_TOKEN: &str = "hmd_s3_test_admin";

fn cli(dir: &Path, server: &HeimdallProcess, args: &[&str]) {
    cli_ok(dir, server, ADMIN_TOKEN, args);
}

/// Reads an object over plain HTTP (SeaweedFS started without credentials serves it).
fn object(endpoint: &str, key: &str) -> Option<Vec<u8>> {
    let addr = endpoint.trim_start_matches("http://");
    http_request(addr, "GET", &format!("/{key}"), &[])
        .filter(|r| r.status == 200)
        .map(|r| r.body)
}

#[test]
fn every_revision_lands_in_the_bucket_byte_for_byte() {
    let Some(endpoint) = required_env("HEIMDALL_TEST_S3_ENDPOINT") else {
        return;
    };
    let bucket = format!("heimdall-{}", random_u64() % 1_000_000_000);
    let addr = endpoint.trim_start_matches("http://");
    let created = http_request(
        addr,
        "PUT",
        &format!("/{bucket}"),
        &[("Content-Length", "0")],
    )
    .unwrap();
    assert!(
        created.status < 300,
        "creating the bucket: {}",
        created.status
    );

    let dir = tempfile::tempdir().unwrap();
    let hash = heimdall_control_plane::hash_token(ADMIN_TOKEN);
    let env = [
        (
            "HEIMDALL_ADMIN_TOKENS",
            format!("[{{name: ci, sha256: {hash}}}]"),
        ),
        ("HEIMDALL_BUNDLE_URL", format!("s3://{bucket}/opa")),
        ("HEIMDALL_BUNDLE_S3_ENDPOINT", endpoint.clone()),
        ("HEIMDALL_BUNDLE_S3_ALLOW_HTTP", "true".to_owned()),
        ("HEIMDALL_BUNDLE_S3_REGION", "us-east-1".to_owned()),
        ("HEIMDALL_BUNDLE_S3_ACCESS_KEY_ID", "heimdall".to_owned()),
        (
            "HEIMDALL_BUNDLE_S3_SECRET_ACCESS_KEY",
            "not-checked-by-this-store".to_owned(),
        ),
    ];
    let mut server = HeimdallProcess::control_plane(dir.path(), &env);
    server.wait_ready();
    cli(
        dir.path(),
        &server,
        &["tenant", "create", "acme", "Acme Corp"],
    );
    cli(
        dir.path(),
        &server,
        &["tenant", "create", "globex", "Globex"],
    );

    let deadline = Instant::now() + Duration::from_secs(30);
    let latest_key = format!("{bucket}/opa/bundles/bundle.tar.gz");
    loop {
        let latest = object(&endpoint, &latest_key);
        let revision_two = object(
            &endpoint,
            &format!("{bucket}/opa/bundles/revisions/2.tar.gz"),
        );
        if latest.is_some() && latest == revision_two {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "revision 2 never became the latest bundle in S3"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for revision in [0, 1, 2] {
        let key = format!("{bucket}/opa/bundles/revisions/{revision}.tar.gz");
        let stored = object(&endpoint, &key);
        if revision == 0 {
            assert!(stored.is_none(), "there is no revision 0 in the bucket");
            continue;
        }
        let file = format!("rebuilt-{revision}.tar.gz");
        cli(
            dir.path(),
            &server,
            &[
                "bundle",
                "build",
                "--at",
                &revision.to_string(),
                "-o",
                &file,
            ],
        );
        let rebuilt = std::fs::read(dir.path().join(&file)).unwrap();
        assert_eq!(
            stored.as_deref(),
            Some(rebuilt.as_slice()),
            "revision {revision}"
        );
    }
    assert!(server.terminate());
    let logs = server.take_stderr();
    assert!(
        !logs.contains("not-checked-by-this-store"),
        "the secret key must not be logged"
    );
}
