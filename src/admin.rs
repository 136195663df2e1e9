//! The admin commands: each one calls the control plane's gRPC API and prints the result.

use std::io::Read;
use std::time::Duration;

use anyhow::{Context, bail};
use chrono::{DateTime, TimeZone, Utc};
use serde_json::{Value, json};
use tonic::Request;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use heimdall_control_plane::convert::{policy_to_spec, spec_to_draft};
use heimdall_opa::Tenant;
use heimdall_opa::bundle;
use heimdall_opa::engine::{DecisionInput, EmbeddedEngine, SubjectIdentity};
use heimdall_proto::admin::{self as pb, admin_service_client::AdminServiceClient};
use heimdall_proto::events::event_payload::Kind;

use crate::cli::{
    BundleCommand, Command, Connection, ExplainArgs, HistoryArgs, OutputFormat, PolicyCommand,
    TenantCommand, WriteArgs,
};
use crate::output;

type Client = AdminServiceClient<InterceptedService<Channel, BearerToken>>;

/// How long a command waits to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Adds the admin token to every call.
#[derive(Clone)]
struct BearerToken(MetadataValue<Ascii>);

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// Runs one admin command against the control plane.
pub async fn run(connection: &Connection, command: Command) -> anyhow::Result<()> {
    let mut client = connect(connection).await?;
    let format = connection.output;
    match command {
        Command::Tenant(command) => tenant(&mut client, format, command).await,
        Command::Policy(command) => policy(&mut client, format, command).await,
        Command::History(args) => history(&mut client, format, args).await,
        Command::State(args) => state(&mut client, format, args.at.unwrap_or(0)).await,
        Command::Bundle(BundleCommand::Build { at, file }) => {
            let bundle = bundle_at(&mut client, at.unwrap_or(0)).await?;
            std::fs::write(&file, &bundle.bytes)
                .with_context(|| format!("writing {}", file.display()))?;
            println!(
                "wrote bundle {} to {} (sha256 {})",
                bundle.revision,
                file.display(),
                bundle.digest
            );
            Ok(())
        }
        Command::Explain(args) => explain(&mut client, format, args).await,
        Command::Serve(_) | Command::AdminToken | Command::Token(_) => {
            unreachable!("handled in main")
        }
    }
}

/// Prints a new admin token and the hash that goes into `admin.tokens`.
pub fn print_new_admin_token() -> anyhow::Result<()> {
    let token = heimdall_control_plane::generate_token()?;
    println!("token:  {token}");
    println!("sha256: {}", heimdall_control_plane::hash_token(&token));
    Ok(())
}

async fn connect(connection: &Connection) -> anyhow::Result<Client> {
    let Some(token) = connection
        .token
        .as_deref()
        .filter(|token| !token.is_empty())
    else {
        bail!("no admin token: pass --token or set HEIMDALL_TOKEN");
    };
    let mut header: MetadataValue<Ascii> = format!("Bearer {token}").parse().map_err(|_| {
        anyhow::anyhow!("the admin token contains characters a header cannot carry")
    })?;
    header.set_sensitive(true);
    let endpoint = Endpoint::from_shared(connection.server.clone())
        .with_context(|| format!("--server {:?} is not a URL", connection.server))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CALL_TIMEOUT);
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("cannot reach the control plane at {}", connection.server))?;
    Ok(AdminServiceClient::with_interceptor(
        channel,
        BearerToken(header),
    ))
}

/// Turns a gRPC status into an error that reads well on a terminal.
fn status_error(status: tonic::Status) -> anyhow::Error {
    let code = heimdall_proto::ErrorCode::from_grpc_code(status.code());
    anyhow::anyhow!("{} ({:?})", status.message(), code)
}

/// Calls once, and once more with the same request id if the server was unavailable.
async fn with_retry<T>(
    mut call: impl AsyncFnMut() -> Result<tonic::Response<T>, tonic::Status>,
) -> anyhow::Result<T> {
    match call().await {
        Ok(response) => Ok(response.into_inner()),
        Err(status) if status.code() == tonic::Code::Unavailable => {
            tokio::time::sleep(Duration::from_millis(500)).await;
            call()
                .await
                .map(tonic::Response::into_inner)
                .map_err(status_error)
        }
        Err(status) => Err(status_error(status)),
    }
}

fn write_options(write: &WriteArgs) -> anyhow::Result<pb::WriteOptions> {
    let request_id = match &write.request_id {
        Some(id) => id.clone(),
        None => random_request_id()?,
    };
    Ok(pb::WriteOptions {
        reason: write.reason.clone(),
        request_id,
        expected_version: write.expected_version,
    })
}

fn random_request_id() -> anyhow::Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|error| anyhow::anyhow!("no randomness: {error}"))?;
    Ok(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
}

async fn tenant(
    client: &mut Client,
    format: OutputFormat,
    command: TenantCommand,
) -> anyhow::Result<()> {
    match command {
        TenantCommand::Create { id, name, write } => {
            let request = pb::CreateTenantRequest {
                tenant: Some(heimdall_proto::events::TenantSpec {
                    id: id.clone(),
                    display_name: name,
                }),
                options: Some(write_options(&write)?),
            };
            let response = with_retry(async || client.create_tenant(request.clone()).await).await?;
            print_write(format, &format!("created tenant {id}"), &response);
        }
        TenantCommand::List => {
            let response =
                with_retry(async || client.list_tenants(pb::ListTenantsRequest {}).await).await?;
            print_tenants(format, &response.tenants);
        }
        TenantCommand::Get { id } => {
            let response = with_retry(async || {
                client
                    .get_tenant(pb::GetTenantRequest { id: id.clone() })
                    .await
            })
            .await?;
            print_tenants(format, std::slice::from_ref(&response));
        }
        TenantCommand::Delete { id, force, write } => {
            let request = pb::DeleteTenantRequest {
                id: id.clone(),
                force,
                options: Some(write_options(&write)?),
            };
            let response = with_retry(async || client.delete_tenant(request.clone()).await).await?;
            print_write(format, &format!("deleted tenant {id}"), &response);
        }
    }
    Ok(())
}

async fn policy(
    client: &mut Client,
    format: OutputFormat,
    command: PolicyCommand,
) -> anyhow::Result<()> {
    match command {
        PolicyCommand::Apply { file, write } => {
            let text = read_document(&file)?;
            let policies = heimdall_opa::parse_policy_document(&text)?;
            if write.expected_version.is_some() && policies.len() != 1 {
                bail!("--expected-version needs a document with exactly one policy");
            }
            let mut options = write_options(&write)?;
            let expected_version = options.expected_version.take();
            let request = pb::ApplyPoliciesRequest {
                policies: policies
                    .iter()
                    .map(|policy| pb::PolicyWrite {
                        policy: Some(policy_to_spec(policy)),
                        expected_version,
                    })
                    .collect(),
                options: Some(options),
            };
            let response =
                with_retry(async || client.apply_policies(request.clone()).await).await?;
            print_applied(format, &response);
        }
        PolicyCommand::List => {
            let response =
                with_retry(async || client.list_policies(pb::ListPoliciesRequest {}).await).await?;
            print_policies(format, &response.policies)?;
        }
        PolicyCommand::Get { name } => {
            let request = pb::GetPolicyRequest { name };
            let response = with_retry(async || client.get_policy(request.clone()).await).await?;
            output::print_json(&policy_json(&response)?);
        }
        PolicyCommand::Delete { name, write } => {
            let request = pb::DeletePolicyRequest {
                name: name.clone(),
                options: Some(write_options(&write)?),
            };
            let response = with_retry(async || client.delete_policy(request.clone()).await).await?;
            print_write(format, &format!("deleted policy {name}"), &response);
        }
    }
    Ok(())
}

fn read_document(file: &std::path::Path) -> anyhow::Result<String> {
    if file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading policies from stdin")?;
        return Ok(text);
    }
    std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))
}

async fn history(
    client: &mut Client,
    format: OutputFormat,
    args: HistoryArgs,
) -> anyhow::Result<()> {
    let now = Utc::now();
    let mut request = pb::ListEventsRequest {
        stream: args.stream.unwrap_or_default(),
        actor: args.actor.unwrap_or_default(),
        since_unix_ms: args
            .since
            .as_deref()
            .map(|t| parse_time(t, now))
            .transpose()?
            .unwrap_or(0),
        until_unix_ms: args
            .until
            .as_deref()
            .map(|t| parse_time(t, now))
            .transpose()?
            .unwrap_or(0),
        from_revision: args.from_revision.unwrap_or(0),
        to_revision: args.to_revision.unwrap_or(0),
        page_size: 0,
        page_token: String::new(),
    };
    let mut events = Vec::new();
    while events.len() < args.limit as usize {
        request.page_size = (args.limit as usize - events.len()).min(1000) as u32;
        let page = with_retry(async || client.list_events(request.clone()).await).await?;
        events.extend(page.events);
        if page.next_page_token.is_empty() {
            break;
        }
        request.page_token = page.next_page_token;
    }
    match format {
        OutputFormat::Json => output::print_json(&Value::Array(
            events
                .iter()
                .map(event_json)
                .collect::<anyhow::Result<_>>()?,
        )),
        OutputFormat::Table => {
            let rows: Vec<Vec<String>> = events
                .iter()
                .map(|event| {
                    vec![
                        event.revision.to_string(),
                        format_time(event.recorded_at_unix_ms),
                        event.stream.clone(),
                        event.stream_version.to_string(),
                        event.event_type.clone(),
                        event.actor.clone(),
                        event.reason.clone(),
                    ]
                })
                .collect();
            let headers = [
                "REVISION", "TIME", "STREAM", "VERSION", "TYPE", "ACTOR", "REASON",
            ];
            print!("{}", output::table(&headers, &rows));
        }
    }
    Ok(())
}

async fn state(client: &mut Client, format: OutputFormat, revision: u64) -> anyhow::Result<()> {
    let state =
        with_retry(async || client.get_state(pb::GetStateRequest { revision }).await).await?;
    match format {
        OutputFormat::Json => {
            let policies: Vec<Value> = state
                .policies
                .iter()
                .map(policy_json)
                .collect::<anyhow::Result<_>>()?;
            output::print_json(&json!({
                "revision": state.revision,
                "tenants": state.tenants.iter().map(tenant_json).collect::<Vec<_>>(),
                "policies": policies,
            }));
        }
        OutputFormat::Table => {
            println!("revision {}\n", state.revision);
            print_tenants(format, &state.tenants);
            println!();
            print_policies(format, &state.policies)?;
        }
    }
    Ok(())
}

/// Builds the bundle of a revision (0: the latest) from the state the control plane rebuilds.
async fn bundle_at(client: &mut Client, revision: u64) -> anyhow::Result<bundle::Bundle> {
    let state =
        with_retry(async || client.get_state(pb::GetStateRequest { revision }).await).await?;
    let tenants = state
        .tenants
        .iter()
        .map(|tenant| Tenant::new(&tenant.id, &tenant.display_name))
        .collect::<Result<Vec<_>, _>>()
        .context("the server sent an invalid tenant")?;
    let policies = state
        .policies
        .iter()
        .map(|policy| spec_to_draft(&policy.spec.clone().unwrap_or_default()).validate())
        .collect::<Result<Vec<_>, _>>()
        .context("the server sent an invalid policy")?;
    Ok(bundle::build(state.revision, &tenants, &policies)?)
}

async fn explain(
    client: &mut Client,
    format: OutputFormat,
    args: ExplainArgs,
) -> anyhow::Result<()> {
    if heimdall_opa::Action::parse(&args.action).is_none() {
        bail!(
            "--action {:?} is not one of {}",
            args.action,
            heimdall_opa::Action::NAMES.join(", ")
        );
    }
    let bundle = bundle_at(client, args.at.unwrap_or(0)).await?;
    let engine = EmbeddedEngine::from_bundle(&bundle.bytes)?;
    let input = DecisionInput {
        subject: SubjectIdentity {
            user: args.user,
            groups: args.groups,
        },
        tenant: args.tenant,
        action: args.action,
        resource: "metrics".to_owned(),
    };
    let decision = engine.decide(&input)?;
    match format {
        OutputFormat::Json => output::print_json(&json!({
            "bundle_revision": bundle.revision,
            "input": input,
            "decision": decision,
        })),
        OutputFormat::Table => {
            let verdict = match (decision.allowed, decision.unrestricted) {
                (false, _) => "denied",
                (true, true) => "allowed, unrestricted",
                (true, false) => "allowed, restricted to the filter sets below",
            };
            println!("{verdict} (bundle {})", bundle.revision);
            for (index, set) in decision.filter_sets.iter().enumerate() {
                println!("  set {}: {{{}}}", index + 1, set.join(", "));
            }
            match decision.policies.as_slice() {
                [] => println!("no policy matches: denied by default"),
                names => println!("policies: {}", names.join(", ")),
            }
        }
    }
    Ok(())
}

fn print_write(format: OutputFormat, done: &str, response: &pb::WriteResponse) {
    match format {
        OutputFormat::Json => output::print_json(
            &json!({"revision": response.revision, "replayed": response.replayed}),
        ),
        OutputFormat::Table if response.replayed => {
            println!(
                "{done}: already applied at revision {} (replayed request)",
                response.revision
            )
        }
        OutputFormat::Table => println!("{done} at revision {}", response.revision),
    }
}

fn print_applied(format: OutputFormat, response: &pb::ApplyPoliciesResponse) {
    let outcome = |applied: &pb::AppliedPolicy| match pb::ApplyOutcome::try_from(applied.outcome) {
        Ok(pb::ApplyOutcome::Created) => "created",
        Ok(pb::ApplyOutcome::Replaced) => "replaced",
        Ok(pb::ApplyOutcome::Unchanged) => "unchanged",
        _ => "unknown",
    };
    match format {
        OutputFormat::Json => output::print_json(&json!({
            "revision": response.revision,
            "replayed": response.replayed,
            "policies": response.policies.iter().map(|applied| json!({
                "name": applied.name, "outcome": outcome(applied), "version": applied.version,
            })).collect::<Vec<_>>(),
        })),
        OutputFormat::Table => {
            if response.replayed {
                println!(
                    "already applied at revision {} (replayed request)",
                    response.revision
                );
                return;
            }
            for applied in &response.policies {
                println!(
                    "policy {} {} (version {})",
                    applied.name,
                    outcome(applied),
                    applied.version
                );
            }
            println!("revision {}", response.revision);
        }
    }
}

fn print_tenants(format: OutputFormat, tenants: &[pb::Tenant]) {
    match format {
        OutputFormat::Json => {
            output::print_json(&Value::Array(tenants.iter().map(tenant_json).collect()))
        }
        OutputFormat::Table => {
            let rows: Vec<Vec<String>> = tenants
                .iter()
                .map(|tenant| {
                    vec![
                        tenant.id.clone(),
                        tenant.display_name.clone(),
                        tenant.version.to_string(),
                        tenant.created_revision.to_string(),
                    ]
                })
                .collect();
            print!(
                "{}",
                output::table(&["TENANT", "NAME", "VERSION", "CREATED AT"], &rows)
            );
        }
    }
}

fn print_policies(format: OutputFormat, policies: &[pb::Policy]) -> anyhow::Result<()> {
    match format {
        OutputFormat::Json => {
            let values: Vec<Value> = policies
                .iter()
                .map(policy_json)
                .collect::<anyhow::Result<_>>()?;
            output::print_json(&Value::Array(values));
        }
        OutputFormat::Table => {
            let rows: Vec<Vec<String>> = policies
                .iter()
                .map(|policy| {
                    let spec = policy.spec.clone().unwrap_or_default();
                    let draft = spec_to_draft(&spec);
                    let subjects: Vec<String> = draft
                        .subjects
                        .iter()
                        .map(|(kind, id)| format!("{kind}:{id}"))
                        .collect();
                    vec![
                        draft.name,
                        draft.effect,
                        subjects.join(","),
                        draft.actions.join(","),
                        draft.tenants.join(","),
                        draft.filters.join(","),
                        policy.version.to_string(),
                    ]
                })
                .collect();
            let headers = [
                "POLICY", "EFFECT", "SUBJECTS", "ACTIONS", "TENANTS", "FILTERS", "VERSION",
            ];
            print!("{}", output::table(&headers, &rows));
        }
    }
    Ok(())
}

fn tenant_json(tenant: &pb::Tenant) -> Value {
    json!({
        "id": tenant.id,
        "name": tenant.display_name,
        "version": tenant.version,
        "created_revision": tenant.created_revision,
    })
}

/// Returns a policy in the original Heimdall's JSON, which `policy apply` reads back.
fn policy_json(policy: &pb::Policy) -> anyhow::Result<Value> {
    spec_json(policy.spec.as_ref())
}

fn spec_json(spec: Option<&heimdall_proto::events::PolicySpec>) -> anyhow::Result<Value> {
    let spec = spec.cloned().unwrap_or_default();
    let policy = spec_to_draft(&spec)
        .validate()
        .context("the server sent an invalid policy")?;
    Ok(serde_json::to_value(&policy)?)
}

fn event_json(event: &pb::Event) -> anyhow::Result<Value> {
    let data = match event
        .payload
        .as_ref()
        .and_then(|payload| payload.kind.as_ref())
    {
        Some(Kind::TenantCreated(created)) => {
            let tenant = created.tenant.clone().unwrap_or_default();
            json!({"id": tenant.id, "name": tenant.display_name})
        }
        Some(Kind::TenantDeleted(deleted)) => {
            json!({"id": deleted.id, "referencing_policies": deleted.referencing_policies})
        }
        Some(Kind::PolicyCreated(created)) => spec_json(created.policy.as_ref())?,
        Some(Kind::PolicyReplaced(replaced)) => spec_json(replaced.policy.as_ref())?,
        Some(Kind::PolicyDeleted(deleted)) => json!({"name": deleted.name}),
        None => Value::Null,
    };
    Ok(json!({
        "revision": event.revision,
        "time": format_time(event.recorded_at_unix_ms),
        "stream": event.stream,
        "stream_version": event.stream_version,
        "type": event.event_type,
        "actor": event.actor,
        "reason": event.reason,
        "request_id": event.request_id,
        "data": data,
    }))
}

fn format_time(unix_ms: i64) -> String {
    Utc.timestamp_millis_opt(unix_ms).single().map_or_else(
        || unix_ms.to_string(),
        |time| time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    )
}

/// Parses RFC 3339, or a duration before `now` such as `90s`, `30m`, `2h` or `7d`.
fn parse_time(raw: &str, now: DateTime<Utc>) -> anyhow::Result<i64> {
    if let Ok(time) = DateTime::parse_from_rfc3339(raw) {
        return Ok(time.timestamp_millis());
    }
    let (number, unit) = raw.split_at(raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len()));
    let seconds_per_unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => bail!("{raw:?} is neither RFC 3339 nor a duration such as 30m, 2h or 7d"),
    };
    let count: i64 = number
        .parse()
        .map_err(|_| anyhow::anyhow!("{raw:?} is neither RFC 3339 nor a duration such as 30m"))?;
    let ago = count
        .checked_mul(seconds_per_unit * 1000)
        .context("duration too large")?;
    Ok(now.timestamp_millis() - ago)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_or_durations_ago() {
        let now = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
        let at = parse_time("2026-01-02T03:04:05Z", now).unwrap();
        assert_eq!(at, now.timestamp_millis());
        assert_eq!(
            parse_time("2h", now).unwrap(),
            now.timestamp_millis() - 7_200_000
        );
        assert_eq!(
            parse_time("7d", now).unwrap(),
            now.timestamp_millis() - 604_800_000
        );
        for bad in ["", "h", "2w", "yesterday", "-1h"] {
            assert!(parse_time(bad, now).is_err(), "{bad}");
        }
    }
}
