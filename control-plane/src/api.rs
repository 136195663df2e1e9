//! The admin gRPC service: authenticates each call, turns requests into commands and queries on
//! the ledger, and reports every call in the metrics.

use std::future::Future;
use std::sync::Arc;

use prost::Message;
use tonic::{Request, Response, Status};

use heimdall_opa::{PolicyName, Tenant, TenantId};
use heimdall_proto::admin::{self as pb, admin_service_server::AdminService};

use crate::auth::AdminTokens;
use crate::commands::{ApplyOutcome, Command};
use crate::convert::{policy_to_spec, spec_to_draft, tenant_to_spec};
use crate::error::ControlPlaneError;
use crate::ledger::{Ledger, WriteContext};
use crate::metrics::ControlPlaneMetrics;
use crate::projection::{PolicyRecord, State, TenantRecord};
use crate::store::EventFilter;

/// Default and largest page of history.
const DEFAULT_PAGE_SIZE: u32 = 100;
const MAX_PAGE_SIZE: u32 = 1000;
/// Longest accepted client request id and reason.
const MAX_REQUEST_ID_LEN: usize = 128;
const MAX_REASON_LEN: usize = 1024;

/// The admin API over a ledger.
pub struct AdminApi {
    ledger: Arc<Ledger>,
    tokens: AdminTokens,
    metrics: ControlPlaneMetrics,
}

impl AdminApi {
    pub fn new(ledger: Arc<Ledger>, tokens: AdminTokens, metrics: ControlPlaneMetrics) -> Self {
        Self {
            ledger,
            tokens,
            metrics,
        }
    }

    /// Authenticates the call, runs `operation` with the caller's name, and records the outcome.
    async fn call<Req, Resp, Fut>(
        &self,
        method: &'static str,
        request: Request<Req>,
        operation: impl FnOnce(String, Req) -> Fut,
    ) -> Result<Response<Resp>, Status>
    where
        Fut: Future<Output = Result<Resp, ControlPlaneError>>,
    {
        let timer = self.metrics.admin_latency(method).start_timer();
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|value| value.to_str().ok());
        let result = match self.tokens.authenticate(authorization) {
            Ok(actor) => operation(actor, request.into_inner()).await,
            Err(error) => Err(error),
        };
        timer.observe_duration();
        let code = match &result {
            Ok(_) => tonic::Code::Ok,
            Err(error) => error.code().grpc_code(),
        };
        self.metrics
            .admin_requests
            .with_label_values(&[method, &format!("{code:?}")])
            .inc();
        match result {
            Ok(response) => Ok(Response::new(response)),
            Err(error) => {
                if error.code().http_status().is_server_error() {
                    tracing::error!(method, error = %error, "admin request failed");
                } else {
                    tracing::debug!(method, error = %error, "admin request refused");
                }
                Err(error.into())
            }
        }
    }

    async fn write(
        &self,
        actor: String,
        options: Option<pb::WriteOptions>,
        command: Command,
        request_body: Vec<u8>,
    ) -> Result<crate::ledger::WriteOutcome, ControlPlaneError> {
        let options = options.unwrap_or_default();
        let context = write_context(actor, &options)?;
        self.ledger.write(&context, &command, &request_body).await
    }

    async fn create_tenant(
        &self,
        actor: String,
        request: pb::CreateTenantRequest,
    ) -> Result<pb::WriteResponse, ControlPlaneError> {
        let body = request.encode_to_vec();
        let spec = request.tenant.unwrap_or_default();
        let tenant = Tenant::new(&spec.id, &spec.display_name)
            .map_err(|error| ControlPlaneError::InvalidArgument(error.to_string()))?;
        let expected_version = request.options.as_ref().and_then(|o| o.expected_version);
        let command = Command::CreateTenant {
            tenant,
            expected_version,
        };
        let outcome = self.write(actor, request.options, command, body).await?;
        Ok(pb::WriteResponse {
            revision: outcome.revision,
            replayed: outcome.replayed,
        })
    }

    async fn delete_tenant(
        &self,
        actor: String,
        request: pb::DeleteTenantRequest,
    ) -> Result<pb::WriteResponse, ControlPlaneError> {
        let body = request.encode_to_vec();
        let id = parse_tenant_id(&request.id)?;
        let expected_version = request.options.as_ref().and_then(|o| o.expected_version);
        let command = Command::DeleteTenant {
            id,
            force: request.force,
            expected_version,
        };
        let outcome = self.write(actor, request.options, command, body).await?;
        Ok(pb::WriteResponse {
            revision: outcome.revision,
            replayed: outcome.replayed,
        })
    }

    async fn apply_policies(
        &self,
        actor: String,
        request: pb::ApplyPoliciesRequest,
    ) -> Result<pb::ApplyPoliciesResponse, ControlPlaneError> {
        let body = request.encode_to_vec();
        let mut policies = Vec::with_capacity(request.policies.len());
        for write in &request.policies {
            let spec = write.policy.clone().unwrap_or_default();
            let policy = spec_to_draft(&spec)
                .validate()
                .map_err(|error| ControlPlaneError::InvalidArgument(error.to_string()))?;
            policies.push((policy, write.expected_version));
        }
        let command = Command::ApplyPolicies { policies };
        let outcome = self.write(actor, request.options, command, body).await?;
        let policies = outcome
            .applied
            .iter()
            .map(|applied| pb::AppliedPolicy {
                name: applied.name.to_string(),
                outcome: match applied.outcome {
                    ApplyOutcome::Created => pb::ApplyOutcome::Created,
                    ApplyOutcome::Replaced => pb::ApplyOutcome::Replaced,
                    ApplyOutcome::Unchanged => pb::ApplyOutcome::Unchanged,
                } as i32,
                version: applied.version,
            })
            .collect();
        Ok(pb::ApplyPoliciesResponse {
            revision: outcome.revision,
            replayed: outcome.replayed,
            policies,
        })
    }

    async fn delete_policy(
        &self,
        actor: String,
        request: pb::DeletePolicyRequest,
    ) -> Result<pb::WriteResponse, ControlPlaneError> {
        let body = request.encode_to_vec();
        let name = parse_policy_name(&request.name)?;
        let expected_version = request.options.as_ref().and_then(|o| o.expected_version);
        let command = Command::DeletePolicy {
            name,
            expected_version,
        };
        let outcome = self.write(actor, request.options, command, body).await?;
        Ok(pb::WriteResponse {
            revision: outcome.revision,
            replayed: outcome.replayed,
        })
    }

    async fn get_tenant(&self, id: &str) -> Result<pb::Tenant, ControlPlaneError> {
        let id = parse_tenant_id(id)?;
        let state = self.ledger.current().await?;
        state
            .tenants
            .get(&id)
            .map(tenant_message)
            .ok_or_else(|| ControlPlaneError::NotFound(format!("tenant {id} does not exist")))
    }

    async fn get_policy(&self, name: &str) -> Result<pb::Policy, ControlPlaneError> {
        let name = parse_policy_name(name)?;
        let state = self.ledger.current().await?;
        state
            .policies
            .get(&name)
            .map(policy_message)
            .ok_or_else(|| ControlPlaneError::NotFound(format!("policy {name} does not exist")))
    }

    async fn list_events(
        &self,
        request: pb::ListEventsRequest,
    ) -> Result<pb::ListEventsResponse, ControlPlaneError> {
        let filter = event_filter(&request)?;
        let page = self.ledger.history(&filter).await?;
        let next_page_token = match page.last() {
            Some((last, _)) if page.len() == filter.limit as usize => last.revision.to_string(),
            _ => String::new(),
        };
        let events = page
            .into_iter()
            .map(|(stored, event)| pb::Event {
                revision: stored.revision,
                stream: stored.stream,
                stream_version: stored.stream_version,
                event_type: stored.event_type,
                payload: Some(event.to_payload()),
                actor: stored.actor,
                reason: stored.reason,
                recorded_at_unix_ms: stored.recorded_at_ms,
                request_id: stored.request_id,
            })
            .collect();
        Ok(pb::ListEventsResponse {
            events,
            next_page_token,
        })
    }

    async fn get_state(&self, revision: u64) -> Result<pb::State, ControlPlaneError> {
        let state = if revision == 0 {
            self.ledger.current().await?
        } else {
            self.ledger.state_at(revision).await?
        };
        Ok(state_message(&state))
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn create_tenant(
        &self,
        request: Request<pb::CreateTenantRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        self.call("CreateTenant", request, |actor, req| {
            self.create_tenant(actor, req)
        })
        .await
    }

    async fn get_tenant(
        &self,
        request: Request<pb::GetTenantRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        self.call("GetTenant", request, |_, req| async move {
            self.get_tenant(&req.id).await
        })
        .await
    }

    async fn list_tenants(
        &self,
        request: Request<pb::ListTenantsRequest>,
    ) -> Result<Response<pb::ListTenantsResponse>, Status> {
        self.call("ListTenants", request, |_, _| async {
            let state = self.ledger.current().await?;
            let tenants = state.tenants.values().map(tenant_message).collect();
            Ok(pb::ListTenantsResponse {
                tenants,
                revision: state.revision,
            })
        })
        .await
    }

    async fn delete_tenant(
        &self,
        request: Request<pb::DeleteTenantRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        self.call("DeleteTenant", request, |actor, req| {
            self.delete_tenant(actor, req)
        })
        .await
    }

    async fn apply_policies(
        &self,
        request: Request<pb::ApplyPoliciesRequest>,
    ) -> Result<Response<pb::ApplyPoliciesResponse>, Status> {
        self.call("ApplyPolicies", request, |actor, req| {
            self.apply_policies(actor, req)
        })
        .await
    }

    async fn get_policy(
        &self,
        request: Request<pb::GetPolicyRequest>,
    ) -> Result<Response<pb::Policy>, Status> {
        self.call("GetPolicy", request, |_, req| async move {
            self.get_policy(&req.name).await
        })
        .await
    }

    async fn list_policies(
        &self,
        request: Request<pb::ListPoliciesRequest>,
    ) -> Result<Response<pb::ListPoliciesResponse>, Status> {
        self.call("ListPolicies", request, |_, _| async {
            let state = self.ledger.current().await?;
            let policies = state.policies.values().map(policy_message).collect();
            Ok(pb::ListPoliciesResponse {
                policies,
                revision: state.revision,
            })
        })
        .await
    }

    async fn delete_policy(
        &self,
        request: Request<pb::DeletePolicyRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        self.call("DeletePolicy", request, |actor, req| {
            self.delete_policy(actor, req)
        })
        .await
    }

    async fn list_events(
        &self,
        request: Request<pb::ListEventsRequest>,
    ) -> Result<Response<pb::ListEventsResponse>, Status> {
        self.call("ListEvents", request, |_, req| self.list_events(req))
            .await
    }

    async fn get_state(
        &self,
        request: Request<pb::GetStateRequest>,
    ) -> Result<Response<pb::State>, Status> {
        self.call("GetState", request, |_, req| self.get_state(req.revision))
            .await
    }
}

fn write_context(
    actor: String,
    options: &pb::WriteOptions,
) -> Result<WriteContext, ControlPlaneError> {
    let invalid = |message: String| Err(ControlPlaneError::InvalidArgument(message));
    if options.request_id.len() > MAX_REQUEST_ID_LEN
        || options
            .request_id
            .chars()
            .any(|c| c.is_control() || c.is_whitespace())
    {
        return invalid(format!(
            "options.request_id must be at most {MAX_REQUEST_ID_LEN} characters without spaces"
        ));
    }
    if options.reason.len() > MAX_REASON_LEN {
        return invalid(format!(
            "options.reason is longer than {MAX_REASON_LEN} bytes"
        ));
    }
    Ok(WriteContext {
        actor,
        reason: options.reason.clone(),
        request_id: options.request_id.clone(),
    })
}

fn event_filter(request: &pb::ListEventsRequest) -> Result<EventFilter, ControlPlaneError> {
    let invalid = |message: &str| ControlPlaneError::InvalidArgument(message.to_owned());
    let limit = match request.page_size {
        0 => DEFAULT_PAGE_SIZE,
        size if size > MAX_PAGE_SIZE => {
            return Err(invalid("page_size must be at most 1000"));
        }
        size => size,
    };
    let page_after = match request.page_token.as_str() {
        "" => 0,
        token => token
            .parse::<u64>()
            .map_err(|_| invalid("page_token is not valid"))?,
    };
    if request.until_unix_ms != 0 && request.since_unix_ms >= request.until_unix_ms {
        return Err(invalid("since must be before until"));
    }
    if request.to_revision != 0 && request.from_revision > request.to_revision {
        return Err(invalid("from_revision must not be after to_revision"));
    }
    let (stream, stream_prefix) = match request.stream.strip_suffix('*') {
        Some(prefix) => (String::new(), prefix.to_owned()),
        None => (request.stream.clone(), String::new()),
    };
    Ok(EventFilter {
        stream,
        stream_prefix,
        actor: request.actor.clone(),
        since_ms: request.since_unix_ms,
        until_ms: request.until_unix_ms,
        after_revision: page_after.max(request.from_revision.saturating_sub(1)),
        to_revision: request.to_revision,
        limit,
    })
}

fn parse_tenant_id(raw: &str) -> Result<TenantId, ControlPlaneError> {
    TenantId::parse(raw).map_err(|error| ControlPlaneError::InvalidArgument(error.to_string()))
}

fn parse_policy_name(raw: &str) -> Result<PolicyName, ControlPlaneError> {
    PolicyName::parse(raw).map_err(|reason| {
        ControlPlaneError::InvalidArgument(format!("policy name {raw:?} {reason}"))
    })
}

fn tenant_message(record: &TenantRecord) -> pb::Tenant {
    let spec = tenant_to_spec(&record.tenant);
    pb::Tenant {
        id: spec.id,
        display_name: spec.display_name,
        version: record.version,
        created_revision: record.created_revision,
    }
}

fn policy_message(record: &PolicyRecord) -> pb::Policy {
    pb::Policy {
        spec: Some(policy_to_spec(&record.policy)),
        version: record.version,
        updated_revision: record.updated_revision,
    }
}

fn state_message(state: &State) -> pb::State {
    pb::State {
        revision: state.revision,
        tenants: state.tenants.values().map(tenant_message).collect(),
        policies: state.policies.values().map(policy_message).collect(),
    }
}
