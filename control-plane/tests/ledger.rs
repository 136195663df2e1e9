//! The ledger's behaviour on every supported database: each test runs once on SQLite and once on
//! PostgreSQL (`HEIMDALL_TEST_DATABASE_URL`; with `CI=true` a missing PostgreSQL fails the test).

use std::sync::Arc;

use heimdall_control_plane::ControlPlaneError;
use heimdall_control_plane::commands::{ApplyOutcome, Command};
use heimdall_control_plane::ledger::{Ledger, WriteContext};
use heimdall_control_plane::metrics::ControlPlaneMetrics;
use heimdall_control_plane::store::{EventFilter, EventStore};
use heimdall_opa::{Policy, Tenant, TenantId, parse_policy_document};
use heimdall_tests::TestDatabase;
use sqlx::any::AnyPoolOptions;

/// Runs a test body on SQLite, then on PostgreSQL.
macro_rules! on_every_backend {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let database = TestDatabase::sqlite();
                ($body)(database.url.clone()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(database) = TestDatabase::postgres().await {
                    ($body)(database.url.clone()).await;
                }
            }
        }
    };
}

async fn open(url: &str) -> Ledger {
    let store = EventStore::connect(url, 4)
        .await
        .expect("store should connect");
    let metrics = ControlPlaneMetrics::register(&prometheus::Registry::new()).unwrap();
    Ledger::open(store, metrics)
        .await
        .expect("ledger should open")
}

fn context(actor: &str, request_id: &str) -> WriteContext {
    WriteContext {
        actor: actor.into(),
        reason: "test".into(),
        request_id: request_id.into(),
    }
}

fn create_tenant(id: &str) -> Command {
    Command::CreateTenant {
        tenant: Tenant::new(id, &format!("{id} inc")).unwrap(),
        expected_version: None,
    }
}

fn policy(name: &str, tenant: &str, filter: &str) -> Policy {
    let text = format!(
        r#"{{"name": "{name}", "effect": "allow", "subjects": [{{"type": "user", "id": "alice"}}],
            "actions": ["read"], "scope": {{"tenants": ["{tenant}"]}}, "filters": [{filter:?}]}}"#
    );
    parse_policy_document(&text).unwrap().remove(0)
}

on_every_backend!(
    revisions_and_stream_versions_count_up_without_gaps,
    |url: String| async move {
        let ledger = open(&url).await;
        let ctx = context("ci", "");
        assert_eq!(
            ledger
                .write(&ctx, &create_tenant("acme"), b"")
                .await
                .unwrap()
                .revision,
            1
        );
        assert_eq!(
            ledger
                .write(&ctx, &create_tenant("globex"), b"")
                .await
                .unwrap()
                .revision,
            2
        );
        let delete = Command::DeleteTenant {
            id: TenantId::parse("acme").unwrap(),
            force: false,
            expected_version: Some(1),
        };
        assert_eq!(ledger.write(&ctx, &delete, b"").await.unwrap().revision, 3);
        assert_eq!(
            ledger
                .write(&ctx, &create_tenant("acme"), b"")
                .await
                .unwrap()
                .revision,
            4
        );

        let events = ledger.store().events_in_range(0, u64::MAX).await.unwrap();
        let revisions: Vec<u64> = events.iter().map(|e| e.revision).collect();
        assert_eq!(revisions, [1, 2, 3, 4]);
        let acme: Vec<u64> = events
            .iter()
            .filter(|e| e.stream == "tenant/acme")
            .map(|e| e.stream_version)
            .collect();
        assert_eq!(acme, [1, 2, 3]);
        assert!(events.iter().all(|e| e.actor == "ci" && e.reason == "test"));
        let state = ledger.current().await.unwrap();
        assert_eq!(state.tenants.len(), 2);
        assert_eq!(
            state.tenants[&TenantId::parse("acme").unwrap()].created_revision,
            4
        );
    }
);

on_every_backend!(
    a_stale_expected_version_is_a_conflict_and_writes_nothing,
    |url: String| async move {
        let ledger = open(&url).await;
        let ctx = context("ci", "");
        ledger
            .write(&ctx, &create_tenant("acme"), b"")
            .await
            .unwrap();
        let create_again = Command::CreateTenant {
            tenant: Tenant::new("acme", "Acme").unwrap(),
            expected_version: Some(0),
        };
        let error = ledger.write(&ctx, &create_again, b"").await.unwrap_err();
        assert!(matches!(error, ControlPlaneError::Conflict(_)), "{error}");
        assert!(
            error
                .to_string()
                .contains("tenant/acme is at version 1, not the expected 0")
        );
        let stale_delete = Command::DeleteTenant {
            id: TenantId::parse("acme").unwrap(),
            force: false,
            expected_version: Some(7),
        };
        assert!(matches!(
            ledger.write(&ctx, &stale_delete, b"").await,
            Err(ControlPlaneError::Conflict(_))
        ));
        assert_eq!(ledger.store().head_revision().await.unwrap(), 1);
    }
);

on_every_backend!(
    a_retried_request_id_is_applied_once,
    |url: String| async move {
        let ledger = open(&url).await;
        let ctx = context("ci", "req-1");
        let first = ledger
            .write(&ctx, &create_tenant("acme"), b"body")
            .await
            .unwrap();
        let retry = ledger
            .write(&ctx, &create_tenant("acme"), b"body")
            .await
            .unwrap();
        assert_eq!((first.revision, first.replayed), (1, false));
        assert_eq!((retry.revision, retry.replayed), (1, true));
        let other_body = ledger
            .write(&ctx, &create_tenant("globex"), b"other")
            .await
            .unwrap_err();
        assert!(
            matches!(other_body, ControlPlaneError::Conflict(_)),
            "{other_body}"
        );
        let other_actor = ledger
            .write(&context("ops", "req-1"), &create_tenant("acme"), b"body")
            .await;
        assert!(matches!(other_actor, Err(ControlPlaneError::Conflict(_))));
        assert_eq!(ledger.store().head_revision().await.unwrap(), 1);
    }
);

on_every_backend!(a_batch_is_all_or_nothing, |url: String| async move {
    let ledger = open(&url).await;
    let ctx = context("ci", "");
    let batch = Command::ApplyPolicies {
        policies: vec![
            (policy("a", "acme", r#"env="prod""#), None),
            (policy("b", "acme", r#"env="dev""#), Some(3)),
        ],
    };
    assert!(matches!(
        ledger.write(&ctx, &batch, b"").await,
        Err(ControlPlaneError::Conflict(_))
    ));
    assert_eq!(ledger.store().head_revision().await.unwrap(), 0);
    assert!(ledger.current().await.unwrap().policies.is_empty());

    let batch = Command::ApplyPolicies {
        policies: vec![
            (policy("a", "acme", r#"env="prod""#), None),
            (policy("b", "acme", r#"env="dev""#), None),
        ],
    };
    let outcome = ledger.write(&ctx, &batch, b"").await.unwrap();
    assert_eq!(outcome.revision, 2);
    assert!(
        outcome
            .applied
            .iter()
            .all(|applied| applied.outcome == ApplyOutcome::Created)
    );

    let replace = Command::ApplyPolicies {
        policies: vec![
            (policy("a", "acme", r#"env="prod""#), Some(1)),
            (policy("b", "acme", r#"env="qa""#), Some(1)),
        ],
    };
    let outcome = ledger.write(&ctx, &replace, b"").await.unwrap();
    let applied: Vec<ApplyOutcome> = outcome
        .applied
        .iter()
        .map(|applied| applied.outcome)
        .collect();
    assert_eq!(applied, [ApplyOutcome::Unchanged, ApplyOutcome::Replaced]);
    assert_eq!(outcome.revision, 3);
});

on_every_backend!(
    a_referenced_tenant_is_deleted_only_with_force,
    |url: String| async move {
        let ledger = open(&url).await;
        let ctx = context("ci", "");
        ledger
            .write(&ctx, &create_tenant("acme"), b"")
            .await
            .unwrap();
        let apply = Command::ApplyPolicies {
            policies: vec![(policy("p", "acme", r#"env="prod""#), None)],
        };
        ledger.write(&ctx, &apply, b"").await.unwrap();
        let id = TenantId::parse("acme").unwrap();
        let delete = Command::DeleteTenant {
            id: id.clone(),
            force: false,
            expected_version: None,
        };
        let error = ledger.write(&ctx, &delete, b"").await.unwrap_err();
        assert!(
            matches!(error, ControlPlaneError::FailedPrecondition(_)),
            "{error}"
        );
        assert!(error.to_string().contains("policies p"), "{error}");
        let forced = Command::DeleteTenant {
            id: id.clone(),
            force: true,
            expected_version: None,
        };
        assert_eq!(ledger.write(&ctx, &forced, b"").await.unwrap().revision, 3);
        let missing = ledger.write(&ctx, &forced, b"").await.unwrap_err();
        assert!(
            matches!(missing, ControlPlaneError::NotFound(_)),
            "{missing}"
        );
    }
);

on_every_backend!(
    the_state_at_any_revision_is_rebuilt_from_events,
    |url: String| async move {
        let ledger = open(&url).await;
        let ctx = context("ci", "");
        ledger
            .write(&ctx, &create_tenant("acme"), b"")
            .await
            .unwrap();
        let apply = Command::ApplyPolicies {
            policies: vec![(policy("p", "acme", r#"env="prod""#), None)],
        };
        ledger.write(&ctx, &apply, b"").await.unwrap();
        let replace = Command::ApplyPolicies {
            policies: vec![(policy("p", "acme", r#"env="dev""#), None)],
        };
        ledger.write(&ctx, &replace, b"").await.unwrap();
        let name = heimdall_opa::PolicyName::parse("p").unwrap();

        let at_one = ledger.state_at(1).await.unwrap();
        assert_eq!(
            (at_one.revision, at_one.tenants.len(), at_one.policies.len()),
            (1, 1, 0)
        );
        let at_two = ledger.state_at(2).await.unwrap();
        assert_eq!(
            at_two.policies[&name].policy.filters[0].to_string(),
            r#"env="prod""#
        );
        let at_three = ledger.state_at(3).await.unwrap();
        assert_eq!(
            at_three.policies[&name].policy.filters[0].to_string(),
            r#"env="dev""#
        );
        assert_eq!(at_three, ledger.current().await.unwrap());
        assert!(matches!(
            ledger.state_at(4).await,
            Err(ControlPlaneError::NotFound(_))
        ));

        let reopened = open(&url).await;
        assert_eq!(reopened.current().await.unwrap(), at_three);
    }
);

on_every_backend!(history_filters_and_pages, |url: String| async move {
    let ledger = open(&url).await;
    for (actor, id) in [("ci", "a"), ("ops", "b"), ("ci", "c")] {
        ledger
            .write(&context(actor, ""), &create_tenant(id), b"")
            .await
            .unwrap();
    }
    let apply = Command::ApplyPolicies {
        policies: vec![(policy("p", "a", r#"env="prod""#), None)],
    };
    ledger
        .write(&context("ops", ""), &apply, b"")
        .await
        .unwrap();

    let revisions = |page: Vec<(heimdall_control_plane::store::StoredEvent, _)>| {
        page.into_iter()
            .map(|(stored, _)| stored.revision)
            .collect::<Vec<_>>()
    };
    let all = EventFilter {
        limit: 100,
        ..EventFilter::default()
    };
    assert_eq!(revisions(ledger.history(&all).await.unwrap()), [1, 2, 3, 4]);
    let by_actor = EventFilter {
        actor: "ops".into(),
        ..all.clone()
    };
    assert_eq!(revisions(ledger.history(&by_actor).await.unwrap()), [2, 4]);
    let by_stream = EventFilter {
        stream: "tenant/c".into(),
        ..all.clone()
    };
    assert_eq!(revisions(ledger.history(&by_stream).await.unwrap()), [3]);
    let by_prefix = EventFilter {
        stream_prefix: "tenant/".into(),
        ..all.clone()
    };
    assert_eq!(
        revisions(ledger.history(&by_prefix).await.unwrap()),
        [1, 2, 3]
    );
    let window = EventFilter {
        after_revision: 1,
        to_revision: 3,
        ..all.clone()
    };
    assert_eq!(revisions(ledger.history(&window).await.unwrap()), [2, 3]);
    let page = EventFilter {
        after_revision: 2,
        limit: 1,
        ..all.clone()
    };
    assert_eq!(revisions(ledger.history(&page).await.unwrap()), [3]);
    let future = EventFilter {
        since_ms: i64::MAX - 1,
        ..all.clone()
    };
    assert!(ledger.history(&future).await.unwrap().is_empty());
});

on_every_backend!(
    concurrent_writers_on_two_ledgers_keep_revisions_gap_free,
    |url: String| async move {
        let first = Arc::new(open(&url).await);
        let second = Arc::new(open(&url).await);
        let mut tasks = Vec::new();
        for index in 0..40 {
            let ledger = if index % 2 == 0 {
                first.clone()
            } else {
                second.clone()
            };
            tasks.push(tokio::spawn(async move {
                let ctx = context("ci", "");
                ledger
                    .write(&ctx, &create_tenant(&format!("t{index}")), b"")
                    .await
                    .map(|o| o.revision)
            }));
        }
        let mut revisions = Vec::new();
        for task in tasks {
            revisions.push(
                task.await
                    .unwrap()
                    .expect("every concurrent write should succeed"),
            );
        }
        revisions.sort_unstable();
        assert_eq!(revisions, (1..=40).collect::<Vec<u64>>());
        assert_eq!(
            first.current().await.unwrap(),
            second.current().await.unwrap()
        );
        assert_eq!(first.current().await.unwrap().tenants.len(), 40);
    }
);

on_every_backend!(
    a_corrupt_or_newer_event_stops_start_up,
    |url: String| async move {
        let ledger = open(&url).await;
        ledger
            .write(&context("ci", ""), &create_tenant("acme"), b"")
            .await
            .unwrap();
        drop(ledger);
        let pool = AnyPoolOptions::new()
            .max_connections(1)
            .connect(&url)
            .await
            .unwrap();
        let insert = "INSERT INTO events (revision, stream, stream_version, event_type, schema_version, \
                  payload, actor, reason, request_id, recorded_at_ms) \
                  VALUES ($1, 'tenant/x', 1, $2, $3, $4, 'evil', '', '', 0)";
        sqlx::query(insert)
            .bind(2_i64)
            .bind("tenant.created")
            .bind(99_i32)
            .bind(vec![0u8])
            .execute(&pool)
            .await
            .unwrap();
        let store = EventStore::connect(&url, 2).await.unwrap();
        let metrics = ControlPlaneMetrics::register(&prometheus::Registry::new()).unwrap();
        let error = Ledger::open(store, metrics)
            .await
            .err()
            .expect("start-up should fail");
        assert!(
            matches!(error, ControlPlaneError::CorruptEvent { revision: 2, .. }),
            "{error}"
        );
        assert!(
            error.to_string().contains("newer than this heimdall reads"),
            "{error}"
        );

        let update = sqlx::query("UPDATE events SET actor = 'someone' WHERE revision = 1")
            .execute(&pool)
            .await;
        assert!(update.is_err(), "events must be immutable");
        let delete = sqlx::query("DELETE FROM events WHERE revision = 2")
            .execute(&pool)
            .await;
        assert!(delete.is_err(), "events must be immutable");
    }
);

on_every_backend!(
    an_idle_ledger_catches_up_with_another_writer,
    |url: String| async move {
        let writer = open(&url).await;
        let idle = open(&url).await;
        writer
            .write(&context("ci", ""), &create_tenant("acme"), b"")
            .await
            .unwrap();
        writer
            .write(&context("ci", ""), &create_tenant("globex"), b"")
            .await
            .unwrap();
        assert_eq!(idle.catch_up().await.unwrap(), 2);
        assert_eq!(idle.current().await.unwrap().tenants.len(), 2);
    }
);
