//! End-to-end tests of change notifications on a real NATS server.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures_util::StreamExt;
use heimdall_proto::events::RevisionNotification;
use heimdall_tests::{HeimdallProcess, NatsServer, cli_ok, http_get, http_request};
use prost::Message;

const ADMIN_TOKEN: &str = "hmd_notification_test_admin";
const SUBJECT: &str = "hmdtest.revisions";

async fn next_notification(
    subscriber: &mut async_nats::Subscriber,
    wanted: impl Fn(&RevisionNotification) -> bool,
) -> RevisionNotification {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let message = tokio::time::timeout_at(deadline, subscriber.next())
            .await
            .expect("a notification should arrive within 30 s")
            .expect("the subscription should stay open");
        let notification = RevisionNotification::decode(message.payload.as_ref())
            .expect("notifications are protobuf RevisionNotification");
        if wanted(&notification) {
            return notification;
        }
    }
}

fn cli(dir: &std::path::Path, server: &HeimdallProcess, args: &[&str]) {
    cli_ok(dir, server, ADMIN_TOKEN, args);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revisions_are_announced_at_start_on_change_and_after_a_nats_outage() {
    let Some(mut nats) = NatsServer::start() else {
        return;
    };
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut subscriber = client.subscribe(SUBJECT).await.unwrap();
    client.flush().await.unwrap();
    // A stream keeps what is published while no test subscriber is connected (after the outage).
    let jetstream = async_nats::jetstream::new(client.clone());
    let stream_config = jetstream::stream::Config {
        name: "REVISIONS".to_owned(),
        subjects: vec![SUBJECT.to_owned()],
        ..Default::default()
    };
    jetstream.create_stream(stream_config).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let hash = heimdall_control_plane::hash_token(ADMIN_TOKEN);
    let env = [
        (
            "HEIMDALL_ADMIN_TOKENS",
            format!("[{{name: ci, sha256: {hash}}}]"),
        ),
        ("HEIMDALL_NATS_URL", nats.url()),
        ("HEIMDALL_NATS_SUBJECT_PREFIX", "hmdtest".to_owned()),
    ];
    let mut server = HeimdallProcess::control_plane(dir.path(), &env);
    server.wait_ready();

    let announced = next_notification(&mut subscriber, |n| n.revision == 0).await;
    assert!(
        announced.all_tenants,
        "the start-up announcement covers every tenant"
    );

    cli(
        dir.path(),
        &server,
        &["tenant", "create", "acme", "Acme Corp"],
    );
    let created = next_notification(&mut subscriber, |n| n.revision == 1).await;
    assert_eq!(created.changed_tenants, ["acme"]);
    assert!(!created.all_tenants);
    assert!(created.bundle_revision.starts_with("1-"));
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let bundle = http_request(
        &server.http_addr,
        "GET",
        "/bundles/bundle.tar.gz",
        &[("Authorization", &auth)],
    )
    .unwrap();
    assert_eq!(
        bundle.header("etag"),
        Some(format!("\"{}\"", created.bundle_digest).as_str())
    );

    let policy = dir.path().join("policy.json");
    std::fs::write(
        &policy,
        r#"{"name": "p", "effect": "allow", "subjects": [{"type": "user", "id": "u"}],
            "actions": ["read"], "scope": {"tenants": ["globex", "initech"]}}"#,
    )
    .unwrap();
    cli(
        dir.path(),
        &server,
        &["policy", "apply", policy.to_str().unwrap()],
    );
    let applied = next_notification(&mut subscriber, |n| n.revision == 2).await;
    assert_eq!(applied.changed_tenants, ["globex", "initech"]);

    // An outage: readiness says so, writes still commit, and after NATS is back the latest
    // revision is announced.
    nats.stop();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !http_get(&server.http_addr, "/readyz")
        .is_some_and(|(status, body)| status == 503 && body.contains("nats disconnected"))
    {
        assert!(
            Instant::now() < deadline,
            "readiness never reported the NATS outage"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cli(
        dir.path(),
        &server,
        &["tenant", "create", "globex", "Globex"],
    );

    nats.restart();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let stream = async_nats::jetstream::new(client)
        .get_stream("REVISIONS")
        .await
        .unwrap();
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let caught_up = loop {
        let message = tokio::time::timeout_at(deadline, messages.next())
            .await
            .expect("revision 3 should be announced within 30 s of the reconnect")
            .expect("the consumer should stay open")
            .expect("messages should be readable");
        let notification = RevisionNotification::decode(message.payload.as_ref()).unwrap();
        if notification.revision == 3 {
            break notification;
        }
    };
    assert!(caught_up.bundle_revision.starts_with("3-"));
    server.wait_ready();
}
