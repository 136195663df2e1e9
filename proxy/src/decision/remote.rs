//! A remote OPA server asked through its data API (`POST /v1/data/<path>`), for deployments
//! that run OPA beside the proxy and load the same bundle into it.

use std::time::Duration;

use heimdall_opa::engine::{Decision, DecisionInput, SubjectIdentity};
use serde::de::DeserializeOwned;

use crate::respond::ProxyError;

const DECISION_PATH: &str = "v1/data/heimdall/authz/decision";
const ACCESSIBLE_PATH: &str = "v1/data/heimdall/tenants/accessible";
/// The most an OPA answer may weigh.
const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// An OPA server's data API.
pub struct RemoteOpa {
    base_url: String,
    client: reqwest::Client,
}

impl RemoteOpa {
    pub fn new(
        base_url: &str,
        timeout: Duration,
        insecure_skip_verify: bool,
    ) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .tls_danger_accept_invalid_certs(insecure_skip_verify)
            .build()
            .map_err(|error| format!("building the OPA client: {error}"))?;
        Ok(Self {
            base_url: base_url.trim_end_matches('/').to_owned(),
            client,
        })
    }

    pub async fn decide(&self, input: &DecisionInput) -> Result<Decision, ProxyError> {
        self.query(DECISION_PATH, serde_json::json!({ "input": input }))
            .await
    }

    pub async fn accessible_tenants(
        &self,
        subject: &SubjectIdentity,
        action: &str,
    ) -> Result<Vec<String>, ProxyError> {
        let input = serde_json::json!({
            "input": {"subject": subject, "action": action, "resource": "metrics"}
        });
        let mut tenants: Vec<String> = self.query(ACCESSIBLE_PATH, input).await?;
        tenants.sort_unstable();
        Ok(tenants)
    }

    /// Posts `body` to `path` and reads `result`. An undefined result (OPA answers `{}` when the
    /// bundle is not loaded) is an error, so it can never read as an allow.
    async fn query<T: DeserializeOwned>(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> Result<T, ProxyError> {
        #[derive(serde::Deserialize)]
        struct Answer<T> {
            result: Option<T>,
        }
        let url = format!("{}/{path}", self.base_url);
        let failed = |reason: String| {
            tracing::error!(url = %url, reason = %reason, "opa query failed");
            ProxyError::internal(format!("policy decision from OPA failed: {reason}"))
        };
        let mut response = self
            .client
            .post(&url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|error| failed(error.without_url().to_string()))?;
        if !response.status().is_success() {
            return Err(failed(format!("status {}", response.status())));
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|error| failed(error.without_url().to_string()))?
        {
            if bytes.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(failed(format!(
                    "answer larger than {MAX_ANSWER_BYTES} bytes"
                )));
            }
            bytes.extend_from_slice(&chunk);
        }
        let answer: Answer<T> = serde_json::from_slice(&bytes)
            .map_err(|error| failed(format!("unexpected answer: {error}")))?;
        answer
            .result
            .ok_or_else(|| failed("the decision is undefined: is the bundle loaded?".to_owned()))
    }
}
