//! The ledger: the event store together with its in-memory projection.
//!
//! Every write runs under the store's append lock: it first catches the projection up with what
//! other control planes committed, decides on that fresh state, then appends and commits. So a
//! decision never rests on a stale view, and revisions are gap-free across processes.

use sha2::{Digest, Sha256};
use tokio::sync::{Mutex, watch};

use heimdall_opa::PolicyName;

use crate::clock::now_ms;
use crate::commands::{self, ApplyOutcome, Command};
use crate::error::ControlPlaneError;
use crate::events::{DomainEvent, SCHEMA_VERSION};
use crate::metrics::ControlPlaneMetrics;
use crate::projection::State;
use crate::store::{EventFilter, EventStore, RecordedRequest, StoredEvent};

/// Who writes, why, and under which client request id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteContext {
    pub actor: String,
    pub reason: String,
    /// Empty: the write is not idempotent.
    pub request_id: String,
}

/// The outcome of a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteOutcome {
    /// The revision of the last event written, or the current one if nothing changed.
    pub revision: u64,
    /// The request id was seen before: nothing was applied this time.
    pub replayed: bool,
    /// Per applied policy: what happened and the policy's stream version afterwards.
    pub applied: Vec<AppliedPolicy>,
}

/// What applying one policy did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedPolicy {
    pub name: PolicyName,
    pub outcome: ApplyOutcome,
    pub version: u64,
}

/// The event store and the projection of its events.
pub struct Ledger {
    store: EventStore,
    state: Mutex<State>,
    metrics: ControlPlaneMetrics,
    /// The projection's revision, for those who follow new commits (the bundle publisher).
    head: watch::Sender<u64>,
}

impl Ledger {
    /// Rebuilds the projection from every stored event. A corrupt event is an error.
    pub async fn open(
        store: EventStore,
        metrics: ControlPlaneMetrics,
    ) -> Result<Self, ControlPlaneError> {
        let events = store.events_in_range(0, u64::MAX).await?;
        let state = State::from_events(&events)?;
        tracing::info!(
            revision = state.revision,
            tenants = state.tenants.len(),
            policies = state.policies.len(),
            "rebuilt projection"
        );
        metrics.observe_state(&state);
        let head = watch::Sender::new(state.revision);
        Ok(Self {
            store,
            state: Mutex::new(state),
            metrics,
            head,
        })
    }

    /// Follows the projection's revision: it changes after each commit and each catch-up.
    pub fn subscribe_head(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    fn observe(&self, state: &State) {
        self.metrics.observe_state(state);
        self.head.send_if_modified(|head| {
            let advanced = state.revision > *head;
            *head = (*head).max(state.revision);
            advanced
        });
    }

    pub fn store(&self) -> &EventStore {
        &self.store
    }

    /// Returns the current state, including what other control planes committed.
    pub async fn current(&self) -> Result<State, ControlPlaneError> {
        let mut state = self.state.lock().await;
        self.catch_up_locked(&mut state).await?;
        Ok(state.clone())
    }

    /// Applies what other control planes committed since the projection's revision, and returns
    /// the revision reached.
    pub async fn catch_up(&self) -> Result<u64, ControlPlaneError> {
        let mut state = self.state.lock().await;
        self.catch_up_locked(&mut state).await?;
        Ok(state.revision)
    }

    async fn catch_up_locked(&self, state: &mut State) -> Result<(), ControlPlaneError> {
        let newer = self.store.events_in_range(state.revision, u64::MAX).await?;
        for event in &newer {
            state.apply(event)?;
        }
        if !newer.is_empty() {
            self.observe(state);
        }
        Ok(())
    }

    /// Rebuilds the state right after `revision` from the events up to it.
    pub async fn state_at(&self, revision: u64) -> Result<State, ControlPlaneError> {
        let head = self.store.head_revision().await?;
        if revision > head {
            let message = format!("revision {revision} does not exist yet; the latest is {head}");
            return Err(ControlPlaneError::NotFound(message));
        }
        let events = self.store.events_in_range(0, revision).await?;
        State::from_events(&events)
    }

    /// Returns one page of history with each event decoded.
    pub async fn history(
        &self,
        filter: &EventFilter,
    ) -> Result<Vec<(StoredEvent, DomainEvent)>, ControlPlaneError> {
        let events = self.store.list_events(filter).await?;
        events
            .into_iter()
            .map(|stored| {
                let event = stored.decode()?;
                Ok((stored, event))
            })
            .collect()
    }

    /// Carries out a command as one transaction. `request_body` identifies the request for
    /// idempotency: a retry with the same id must send the same body.
    pub async fn write(
        &self,
        context: &WriteContext,
        command: &Command,
        request_body: &[u8],
    ) -> Result<WriteOutcome, ControlPlaneError> {
        let mut state = self.state.lock().await;
        let mut transaction = self.store.begin_append().await?;
        for event in transaction.events_after(state.revision).await? {
            state.apply(&event)?;
        }
        let digest = request_digest(context, request_body);
        let recorded = match context.request_id.as_str() {
            "" => None,
            request_id => transaction.find_request(request_id).await?,
        };
        if let Some(recorded) = recorded {
            if recorded.digest != digest {
                return Err(ControlPlaneError::Conflict(format!(
                    "request id {} was already used for a different request",
                    context.request_id
                )));
            }
            let revision = recorded.revision;
            return Ok(WriteOutcome {
                revision,
                replayed: true,
                applied: Vec::new(),
            });
        }

        let decision = commands::decide(&state, command)?;
        let mut next = state.clone();
        let recorded_at_ms = now_ms();
        let mut stored_events = Vec::with_capacity(decision.events.len());
        for event in &decision.events {
            let stream = event.stream();
            let stored = StoredEvent {
                revision: next.revision + 1,
                stream_version: next.stream_version(&stream) + 1,
                stream,
                event_type: event.event_type().to_owned(),
                schema_version: SCHEMA_VERSION,
                payload: event.encode(),
                actor: context.actor.clone(),
                reason: context.reason.clone(),
                request_id: context.request_id.clone(),
                recorded_at_ms,
            };
            next.apply(&stored)?;
            stored_events.push(stored);
        }
        transaction.insert(&stored_events).await?;
        if !context.request_id.is_empty() {
            let recorded = RecordedRequest {
                digest,
                revision: next.revision,
            };
            transaction
                .record_request(&context.request_id, &recorded, recorded_at_ms)
                .await?;
        }
        transaction.commit().await?;

        for stored in &stored_events {
            tracing::info!(
                revision = stored.revision,
                stream = %stored.stream,
                event_type = %stored.event_type,
                actor = %stored.actor,
                "appended event"
            );
        }
        self.metrics
            .events_appended
            .inc_by(stored_events.len() as u64);
        *state = next;
        self.observe(&state);
        let applied = decision
            .applied
            .into_iter()
            .map(|(name, outcome)| {
                let version = state.policies.get(&name).map_or(0, |record| record.version);
                AppliedPolicy {
                    name,
                    outcome,
                    version,
                }
            })
            .collect();
        Ok(WriteOutcome {
            revision: state.revision,
            replayed: false,
            applied,
        })
    }
}

/// Digests what makes two requests the same: the actor and the request body.
fn request_digest(context: &WriteContext, request_body: &[u8]) -> Vec<u8> {
    let mut hasher = Sha256::new();
    hasher.update(context.actor.as_bytes());
    hasher.update([0]);
    hasher.update(context.reason.as_bytes());
    hasher.update([0]);
    hasher.update(request_body);
    hasher.finalize().to_vec()
}
