//! End-to-end tests of bundle publishing and the bundle endpoint, against a running control
//! plane with its local-folder store.

use std::path::Path;
use std::time::{Duration, Instant};

use heimdall_tests::{HeimdallProcess, cli_ok, http_get, http_request};

const ADMIN_TOKEN: &str = "hmd_bundle_test_admin";
const OPA_TOKEN: &str = "opa-pull-token";

fn start(dir: &Path) -> HeimdallProcess {
    let hash = |token: &str| heimdall_control_plane::hash_token(token);
    let env = [
        (
            "HEIMDALL_ADMIN_TOKENS",
            format!("[{{name: ci, sha256: {}}}]", hash(ADMIN_TOKEN)),
        ),
        (
            "HEIMDALL_BUNDLE_TOKENS",
            format!("[{{name: opa, sha256: {}}}]", hash(OPA_TOKEN)),
        ),
    ];
    let mut server = HeimdallProcess::control_plane(dir, &env);
    server.wait_ready();
    server
}

fn cli(dir: &Path, server: &HeimdallProcess, args: &[&str]) -> String {
    cli_ok(dir, server, ADMIN_TOKEN, args)
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Waits until `check` holds, polling.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn the_endpoint_serves_the_latest_bundle_with_etags_long_polling_and_auth() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    cli(
        dir.path(),
        &server,
        &["tenant", "create", "acme", "Acme Corp"],
    );
    let path = "/bundles/bundle.tar.gz";
    let auth = bearer(OPA_TOKEN);

    for headers in [
        vec![],
        vec![("Authorization", "Bearer wrong")],
        vec![("Authorization", "Basic x")],
    ] {
        let response = http_request(&server.http_addr, "GET", path, &headers).unwrap();
        assert_eq!(response.status, 401);
        assert_eq!(response.header("www-authenticate"), Some("Bearer"));
    }

    eventually("the bundle of revision 1", || {
        let response = http_request(&server.http_addr, "GET", path, &[("Authorization", &auth)]);
        response.is_some_and(|r| {
            r.header("x-heimdall-bundle-revision")
                .is_some_and(|v| v.starts_with("1-"))
        })
    });
    let first = http_request(&server.http_addr, "GET", path, &[("Authorization", &auth)]).unwrap();
    assert_eq!(first.status, 200);
    assert_eq!(first.header("content-type"), Some("application/gzip"));
    let tag = first.header("etag").unwrap().to_owned();
    let head = http_request(&server.http_addr, "HEAD", path, &[("Authorization", &auth)]).unwrap();
    assert_eq!(
        (head.status, head.header("etag")),
        (200, Some(tag.as_str()))
    );

    let cached = http_request(
        &server.http_addr,
        "GET",
        path,
        &[("Authorization", &auth), ("If-None-Match", &tag)],
    )
    .unwrap();
    assert_eq!(cached.status, 304);
    assert!(cached.body.is_empty());

    // A long poll that times out answers 304 with OPA's long-polling content type.
    let started = Instant::now();
    let timed_out = http_request(
        &server.http_addr,
        "GET",
        path,
        &[
            ("Authorization", &auth),
            ("If-None-Match", &tag),
            ("Prefer", "wait=1"),
        ],
    )
    .unwrap();
    assert_eq!(timed_out.status, 304);
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(
        timed_out.header("content-type"),
        Some("application/vnd.openpolicyagent.bundles")
    );

    // A long poll answers as soon as a new revision is built.
    let addr = server.http_addr.clone();
    let (poll_auth, poll_tag) = (auth.clone(), tag.clone());
    let poll = std::thread::spawn(move || {
        let headers = [
            ("Authorization", poll_auth.as_str()),
            ("If-None-Match", poll_tag.as_str()),
            ("Prefer", "wait=30"),
        ];
        let started = Instant::now();
        (
            http_request(&addr, "GET", "/bundles/bundle.tar.gz", &headers).unwrap(),
            started.elapsed(),
        )
    });
    std::thread::sleep(Duration::from_millis(300));
    cli(
        dir.path(),
        &server,
        &["tenant", "create", "globex", "Globex"],
    );
    let (changed, waited) = poll.join().unwrap();
    assert_eq!(changed.status, 200);
    assert!(
        waited < Duration::from_secs(20),
        "the long poll waited {waited:?}"
    );
    assert_ne!(changed.header("etag"), Some(tag.as_str()));
    assert!(
        changed
            .header("x-heimdall-bundle-revision")
            .unwrap()
            .starts_with("2-")
    );

    // Past revisions are rebuilt byte for byte; unknown ones are 404.
    cli(
        dir.path(),
        &server,
        &["bundle", "build", "--at", "1", "-o", "one.tar.gz"],
    );
    let one = std::fs::read(dir.path().join("one.tar.gz")).unwrap();
    let served = http_request(
        &server.http_addr,
        "GET",
        "/bundles/revisions/1.tar.gz",
        &[("Authorization", &auth)],
    )
    .unwrap();
    assert_eq!(served.status, 200);
    assert_eq!(served.body, one);
    assert_eq!(
        first.body, one,
        "the live bundle of revision 1 is the rebuilt one"
    );
    for missing in [
        "/bundles/revisions/3.tar.gz",
        "/bundles/revisions/0.tar.gz",
        "/bundles/revisions/x.tar.gz",
    ] {
        let response = http_request(
            &server.http_addr,
            "GET",
            missing,
            &[("Authorization", &auth)],
        )
        .unwrap();
        assert_eq!(response.status, 404, "{missing}");
    }
    let unauthenticated =
        http_request(&server.http_addr, "GET", "/bundles/revisions/1.tar.gz", &[]).unwrap();
    assert_eq!(unauthenticated.status, 401);

    // Every revision is in the store, and the latest key holds the newest.
    let store = dir.path().join("heimdall-data/bundles/bundles");
    eventually("revision 2 in the store", || {
        store.join("revisions/2.tar.gz").exists()
    });
    assert_eq!(
        std::fs::read(store.join("revisions/1.tar.gz")).unwrap(),
        one
    );
    eventually("the latest key at revision 2", || {
        std::fs::read(store.join("bundle.tar.gz")).is_ok_and(|bytes| bytes == changed.body)
    });
}

#[test]
fn a_failing_store_delays_publishing_but_loses_no_revision() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("heimdall-data/bundles");
    std::fs::create_dir_all(&store).unwrap();
    // A file where the store needs a folder makes every write fail.
    std::fs::write(store.join("bundles"), b"in the way").unwrap();
    let mut server = HeimdallProcess::control_plane(
        dir.path(),
        &[(
            "HEIMDALL_ADMIN_TOKENS",
            format!(
                "[{{name: ci, sha256: {}}}]",
                heimdall_control_plane::hash_token(ADMIN_TOKEN)
            ),
        )],
    );
    eventually("the control plane to answer", || {
        http_get(&server.http_addr, "/healthz").is_some()
    });

    for tenant in ["a", "b", "c"] {
        cli(dir.path(), &server, &["tenant", "create", tenant, tenant]);
    }
    eventually("readiness to report the failure", || {
        http_get(&server.http_addr, "/readyz").is_some_and(|(status, body)| {
            status == 503 && body.contains("bundle publishing failing")
        })
    });
    // The endpoint still serves the newest bundle from memory.
    let auth = bearer(ADMIN_TOKEN);
    eventually("the in-memory bundle of revision 3", || {
        http_request(
            &server.http_addr,
            "GET",
            "/bundles/bundle.tar.gz",
            &[("Authorization", &auth)],
        )
        .is_some_and(|r| {
            r.status == 200
                && r.header("x-heimdall-bundle-revision")
                    .is_some_and(|v| v.starts_with("3-"))
        })
    });

    std::fs::remove_file(store.join("bundles")).unwrap();
    eventually("every revision in the store", || {
        (1..=3).all(|revision| {
            store
                .join(format!("bundles/revisions/{revision}.tar.gz"))
                .exists()
        })
    });
    eventually("readiness to recover", || {
        http_get(&server.http_addr, "/readyz").is_some_and(|(status, _)| status == 200)
    });
    let (_, metrics) = http_get(&server.http_addr, "/metrics").unwrap();
    assert!(
        metrics.contains("heimdall_bundle_published_revision 3"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("heimdall_bundle_publish_failures_total 0"),
        "{metrics}"
    );
    server.wait_ready();
}
