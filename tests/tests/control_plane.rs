//! End-to-end tests of `heimdall serve --target=control-plane` and the admin CLI, as separate
//! processes against real databases.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use heimdall_proto::admin::{self as pb, admin_service_client::AdminServiceClient};
use heimdall_proto::events::TenantSpec;
use heimdall_tests::{HeimdallProcess, TestDatabase, heimdall_binary, http_get, run_cli};
use tonic::transport::Channel;

const ORIGINAL_EXAMPLE_POLICY: &str = r#"[
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

fn cli(dir: &Path, server: &HeimdallProcess, token: &str, args: &[&str]) -> Output {
    run_cli(dir, server, token, args)
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "CLI failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr_of_failure(output: &Output) -> String {
    assert!(!output.status.success(), "CLI should have failed");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Reads the generated admin token from the first lines the server prints.
fn read_generated_token(server: &mut HeimdallProcess) -> String {
    use std::io::{BufRead, BufReader};
    let stdout = server.child.stdout.take().expect("stdout is piped");
    let mut lines = BufReader::new(stdout).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        if let Some(token) = line.trim().strip_prefix("export HEIMDALL_TOKEN=") {
            return token.to_owned();
        }
    }
    panic!("the server printed no admin token");
}

#[test]
fn the_cli_manages_tenants_and_policies_on_the_embedded_defaults() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("policies.json"), ORIGINAL_EXAMPLE_POLICY).unwrap();
    let mut server = HeimdallProcess::control_plane(dir.path(), &[]);
    let token = read_generated_token(&mut server);
    server.wait_ready();
    assert!(dir.path().join("heimdall-data/heimdall.db").exists());
    let hash =
        std::fs::read_to_string(dir.path().join("heimdall-data/admin-token.sha256")).unwrap();
    assert_eq!(
        hash,
        heimdall_control_plane::hash_token(&token),
        "only the hash is kept"
    );

    let run = |args: &[&str]| cli(dir.path(), &server, &token, args);
    assert!(stdout(&run(&["tenant", "create", "acme", "Acme Corp"])).contains("revision 1"));
    let applied = stdout(&run(&[
        "policy",
        "apply",
        "policies.json",
        "--reason",
        "onboarding",
    ]));
    assert!(
        applied.contains("allow-alice-read-acme created"),
        "{applied}"
    );
    let again = stdout(&run(&["policy", "apply", "policies.json"]));
    assert!(again.contains("unchanged"), "{again}");

    let built = stdout(&run(&["bundle", "build", "--at", "2", "-o", "at-2.tar.gz"]));
    assert!(built.contains("wrote bundle 2-"), "{built}");
    let explained: serde_json::Value = serde_json::from_str(&stdout(&run(&[
        "explain",
        "--user",
        "alice@acme.com",
        "--tenant",
        "acme",
        "--output",
        "json",
    ])))
    .unwrap();
    assert_eq!(explained["decision"]["allowed"], true);
    assert_eq!(
        explained["decision"]["filter_sets"],
        serde_json::json!([["env=\"prod\""]])
    );
    assert_eq!(
        explained["decision"]["policies"],
        serde_json::json!(["allow-alice-read-acme"])
    );
    let denied = stdout(&run(&[
        "explain", "--user", "bob", "--group", "ops", "--tenant", "acme",
    ]));
    assert!(denied.starts_with("denied"), "{denied}");
    assert!(denied.contains("no policy matches"), "{denied}");
    let at_one = stdout(&run(&[
        "explain",
        "--user",
        "alice@acme.com",
        "--tenant",
        "acme",
        "--at",
        "1",
    ]));
    assert!(at_one.starts_with("denied (bundle 1-"), "{at_one}");

    let history: serde_json::Value =
        serde_json::from_str(&stdout(&run(&["history", "--output", "json"]))).unwrap();
    let events = history.as_array().unwrap();
    assert_eq!(events.len(), 2, "an unchanged apply writes no event");
    assert_eq!(events[0]["type"], "tenant.created");
    assert_eq!(events[1]["type"], "policy.created");
    assert_eq!(events[1]["actor"], "admin");
    assert_eq!(events[1]["reason"], "onboarding");
    let original: serde_json::Value = serde_json::from_str(ORIGINAL_EXAMPLE_POLICY).unwrap();
    assert_eq!(
        events[1]["data"], original[0],
        "the policy round-trips unchanged"
    );

    let state: serde_json::Value =
        serde_json::from_str(&stdout(&run(&["state", "--at", "1", "--output", "json"]))).unwrap();
    assert_eq!(state["revision"], 1);
    assert_eq!(state["tenants"][0]["id"], "acme");
    assert_eq!(state["tenants"][0]["name"], "Acme Corp");
    assert_eq!(state["policies"].as_array().unwrap().len(), 0);

    let refused = stderr_of_failure(&run(&["tenant", "delete", "acme"]));
    assert!(refused.contains("allow-alice-read-acme"), "{refused}");
    assert!(stdout(&run(&["tenant", "delete", "acme", "--force"])).contains("revision 3"));
    run(&["bundle", "build", "--at", "2", "-o", "at-2-again.tar.gz"]);
    let first = std::fs::read(dir.path().join("at-2.tar.gz")).unwrap();
    let again = std::fs::read(dir.path().join("at-2-again.tar.gz")).unwrap();
    assert_eq!(
        first, again,
        "a past revision's bundle is rebuilt byte for byte"
    );
    let latest_path = dir.path().join("latest.tar.gz");
    run(&["bundle", "build", "-o", latest_path.to_str().unwrap()]);
    assert_ne!(std::fs::read(&latest_path).unwrap(), first);
    let missing = stderr_of_failure(&run(&["tenant", "get", "acme"]));
    assert!(missing.contains("tenant acme does not exist"), "{missing}");

    let invalid = dir.path().join("invalid.json");
    std::fs::write(
        &invalid,
        r#"{"name": "x", "effect": "allow", "filters": null}"#,
    )
    .unwrap();
    let refused = stderr_of_failure(&run(&["policy", "apply", invalid.to_str().unwrap()]));
    assert!(refused.contains("policy x: "), "{refused}");

    let wrong = cli(dir.path(), &server, "hmd_wrong", &["tenant", "list"]);
    assert!(stderr_of_failure(&wrong).contains("Unauthenticated"));

    let (status, metrics) = http_get(&server.http_addr, "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(metrics.contains(
        r#"heimdall_admin_requests_total{code="Unauthenticated",method="ListTenants"} 1"#
    ));
    assert!(metrics.contains("heimdall_revision 3"), "{metrics}");
    assert!(
        metrics.contains("heimdall_events_appended_total 3"),
        "{metrics}"
    );

    assert!(server.terminate(), "SIGTERM should stop the server cleanly");
    let logs = server.take_stderr();
    assert!(
        !logs.contains(&token),
        "the token must never reach the logs"
    );

    // A restart keeps the token (only its hash is stored) and prints no new one.
    let mut restarted = HeimdallProcess::control_plane(dir.path(), &[]);
    restarted.wait_ready();
    let output = cli(
        dir.path(),
        &restarted,
        &token,
        &["tenant", "list", "--output", "json"],
    );
    assert_eq!(stdout(&output).trim(), "[]");
    assert!(restarted.terminate());
    let mut printed = String::new();
    use std::io::Read;
    restarted
        .child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut printed)
        .unwrap();
    assert!(!printed.contains("HEIMDALL_TOKEN"), "{printed}");
}

#[test]
fn a_config_with_an_unknown_key_stops_start_up_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("heimdall.yaml");
    std::fs::write(&config, "server:\n  log_levle: debug\n").unwrap();
    let output = Command::new(heimdall_binary())
        .args(["serve", "--config", config.to_str().unwrap()])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("config key server.log_levle: unknown field"),
        "{stderr}"
    );
}

async fn admin_client(server: &HeimdallProcess) -> AdminServiceClient<Channel> {
    let channel = Channel::from_shared(format!("http://{}", server.admin_addr))
        .unwrap()
        .connect()
        .await
        .expect("the admin API should accept connections");
    AdminServiceClient::new(channel)
}

fn authorized<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

/// Two control-plane processes write to one PostgreSQL at the same time while a reader tails the
/// history. Revisions must come out gap-free and in commit order: the reader, which only ever
/// asks for what follows the last revision it saw, must never find a hole that fills later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_control_planes_append_gap_free_revisions_to_one_postgres() {
    let Some(database) = TestDatabase::postgres().await else {
        return;
    };
    let token = "hmd_two_process_test_token";
    let tokens = format!(
        "[{{name: writer, sha256: {}}}]",
        heimdall_control_plane::hash_token(token)
    );
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("HEIMDALL_DATABASE_URL", database.url.clone()),
        ("HEIMDALL_ADMIN_TOKENS", tokens),
    ];
    let mut first = HeimdallProcess::control_plane(dir.path(), &env);
    let mut second = HeimdallProcess::control_plane(dir.path(), &env);
    first.wait_ready();
    second.wait_ready();

    const WRITES_PER_WRITER: usize = 30;
    let mut writers = Vec::new();
    for (writer, server) in [&first, &second, &first, &second].into_iter().enumerate() {
        let mut client = admin_client(server).await;
        writers.push(tokio::spawn(async move {
            let mut revisions = Vec::new();
            for index in 0..WRITES_PER_WRITER {
                let request = pb::CreateTenantRequest {
                    tenant: Some(TenantSpec {
                        id: format!("w{writer}-t{index}"),
                        display_name: format!("tenant {index} of writer {writer}"),
                    }),
                    options: None,
                };
                let response = client.create_tenant(authorized(request, token)).await;
                revisions.push(
                    response
                        .expect("every write should succeed")
                        .into_inner()
                        .revision,
                );
            }
            revisions
        }));
    }

    let total = 4 * WRITES_PER_WRITER as u64;
    let mut reader = admin_client(&second).await;
    let mut seen = 0u64;
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen < total {
        assert!(
            Instant::now() < deadline,
            "the reader saw only {seen} of {total} events"
        );
        let request = pb::ListEventsRequest {
            from_revision: seen + 1,
            page_size: 1000,
            ..pb::ListEventsRequest::default()
        };
        let page = reader
            .list_events(authorized(request, token))
            .await
            .unwrap()
            .into_inner();
        for event in page.events {
            assert_eq!(event.revision, seen + 1, "the tail skipped a revision");
            assert_eq!(event.actor, "writer");
            seen = event.revision;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let mut revisions = Vec::new();
    for writer in writers {
        revisions.extend(writer.await.unwrap());
    }
    revisions.sort_unstable();
    assert_eq!(
        revisions,
        (1..=total).collect::<Vec<_>>(),
        "each write got its own revision"
    );

    let mut listed = Vec::new();
    for server in [&first, &second] {
        let mut client = admin_client(server).await;
        let response = client
            .list_tenants(authorized(pb::ListTenantsRequest {}, token))
            .await;
        let response = response.unwrap().into_inner();
        assert_eq!(response.revision, total);
        listed.push(response.tenants);
    }
    assert_eq!(listed[0].len(), total as usize);
    assert_eq!(
        listed[0], listed[1],
        "both processes project the same state"
    );

    // A conflicting write across processes is refused, not merged.
    let mut client = admin_client(&first).await;
    let stale = pb::DeleteTenantRequest {
        id: "w0-t0".into(),
        force: false,
        options: Some(pb::WriteOptions {
            expected_version: Some(5),
            ..Default::default()
        }),
    };
    let status = client
        .delete_tenant(authorized(stale, token))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Aborted);
    let unauthenticated = client
        .list_tenants(pb::ListTenantsRequest {})
        .await
        .unwrap_err();
    assert_eq!(unauthenticated.code(), tonic::Code::Unauthenticated);
    let invalid = pb::CreateTenantRequest {
        tenant: Some(TenantSpec {
            id: "a|b".into(),
            display_name: "x".into(),
        }),
        options: None,
    };
    let status = client
        .create_tenant(authorized(invalid, token))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("a|b"), "{}", status.message());
}
