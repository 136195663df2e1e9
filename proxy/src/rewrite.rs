//! Applies a request's enforcement to its Prometheus API parameters: finds the security-relevant
//! ones (`query`, `match[]`) in the URL and the form body, refuses them when given in both, and
//! rewrites them so that only readable series can be reached.

use std::sync::Arc;

use bytes::Bytes;
use heimdall_opa::engine::Decision;
use heimdall_opa::{LabelFilter, TenantId};

use crate::filter_response::FILTERED_ROUTES;
use crate::promql::{EnforceError, Enforcement, TENANT_LABEL};
use crate::respond::ProxyError;

/// Endpoints whose `query` parameter is a PromQL expression.
pub(crate) const QUERY_ROUTES: &[&str] = &[
    "/api/v1/query",
    "/api/v1/query_range",
    "/api/v1/query_exemplars",
];
/// Endpoints whose `match[]` parameters are series selectors.
pub(crate) const SERIES_ROUTES: &[&str] = &[
    "/api/v1/series",
    "/api/v1/labels",
    "/api/v1/label/{name}/values",
];
/// Endpoints that read no series.
pub const SERIES_FREE_ROUTES: &[&str] = &["/api/v1/format_query", "/api/v1/status/buildinfo"];

/// How the upstream separates tenants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantBinding {
    /// Mimir: tenants in `X-Scope-OrgID`; with several, filters are bound to their tenant by
    /// `__tenant_id__` matchers (Mimir's tenant federation).
    Mimir,
    /// One store where the tenant is a label: every selector gets `<label>="<tenant>"`.
    Label(String),
}

/// Builds the enforcement of the allowed tenants' decisions; None when nothing is to narrow.
pub fn enforcement_for(
    binding: &TenantBinding,
    allowed: &[(TenantId, Arc<Decision>)],
) -> Result<Option<Enforcement>, ProxyError> {
    let bind = |tenant: &TenantId| match binding {
        TenantBinding::Mimir if allowed.len() > 1 => {
            vec![filter_matcher(TENANT_LABEL, "=", tenant.as_str())]
        }
        TenantBinding::Mimir => Vec::new(),
        TenantBinding::Label(label) => vec![filter_matcher(label, "=", tenant.as_str())],
    };
    let everything_open = allowed.iter().all(|(_, decision)| decision.unrestricted);
    if *binding == TenantBinding::Mimir && everything_open {
        return Ok(None);
    }
    let mut alternatives = Vec::new();
    let mut policies = Vec::new();
    for (tenant, decision) in allowed {
        if !decision.unrestricted && decision.filter_sets.is_empty() {
            // Allowed through filters, yet no filter: nothing is readable. (The bundled policy
            // never answers this; another engine might.)
            return Err(ProxyError::forbidden(format!(
                "tenant {tenant}: the decision allows filtered reads but names no filter"
            )));
        }
        let tenant_matchers: Vec<_> = bind(tenant).into_iter().collect::<Result<_, _>>()?;
        if decision.unrestricted {
            alternatives.push(tenant_matchers);
            continue;
        }
        policies.extend(decision.policies.iter().cloned());
        for set in &decision.filter_sets {
            let mut alternative = tenant_matchers.clone();
            for raw in set {
                let filter = LabelFilter::parse(raw).map_err(|reason| {
                    ProxyError::internal(format!("policy filter {raw:?} is unusable: {reason}"))
                })?;
                alternative.push(filter_matcher(
                    &filter.label,
                    filter.operator.as_str(),
                    &filter.value,
                )?);
            }
            alternatives.push(alternative);
        }
    }
    policies.sort();
    policies.dedup();
    debug_assert!(
        !alternatives.is_empty(),
        "every allowed tenant adds an alternative"
    );
    Ok(Enforcement::new(alternatives, policies))
}

fn filter_matcher(
    label: &str,
    operator: &str,
    value: &str,
) -> Result<promql_parser::label::Matcher, ProxyError> {
    Enforcement::matcher(label, operator, value)
        .map_err(|reason| ProxyError::internal(format!("filter on {label}: {reason}")))
}

/// A request's parameters after enforcement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewrittenParams {
    /// The new URL query string.
    pub query: Option<String>,
    pub body: Bytes,
}

/// A read's parameters, parsed, with where its security-relevant one (`query` or `match[]`)
/// was given; built only once that parameter is known to be given in one place.
struct ReadParams {
    key: &'static str,
    url_params: Vec<(String, String)>,
    body_params: Option<Vec<(String, String)>>,
    in_url: usize,
    in_body: usize,
}

impl ReadParams {
    /// Parses and checks the parameters of a read on a series-reading `route`. `form_body` says
    /// whether the body is an `application/x-www-form-urlencoded` form (Prometheus reads
    /// parameters from both).
    fn parse(
        route: &str,
        url_query: Option<&str>,
        body: &[u8],
        form_body: bool,
    ) -> Result<Self, ProxyError> {
        let key = if QUERY_ROUTES.contains(&route) {
            "query"
        } else if SERIES_ROUTES.contains(&route) {
            "match[]"
        } else {
            return Err(ProxyError::not_found(format!(
                "{route} is not an endpoint this proxy serves"
            )));
        };
        let url_params = parse_form(url_query.unwrap_or_default().as_bytes());
        let body_params = form_body.then(|| parse_form(body));
        let in_url = url_params.iter().filter(|(name, _)| name == key).count();
        let in_body = body_params.as_ref().map_or(0, |params| {
            params.iter().filter(|(name, _)| name == key).count()
        });
        if in_url > 0 && in_body > 0 {
            return Err(ProxyError::bad_request(format!(
                "parameter {key} is given both in the URL and in the body"
            )));
        }
        if key == "query" && in_url + in_body != 1 {
            return Err(ProxyError::bad_request(
                "give the query parameter exactly once".to_owned(),
            ));
        }
        Ok(Self {
            key,
            url_params,
            body_params,
            in_url,
            in_body,
        })
    }
}

/// Refuses a read whose security-relevant parameter is ambiguous (given in the URL and the
/// body, or `query` twice), when the parameters go upstream unchanged.
pub fn check_params(
    route: &str,
    url_query: Option<&str>,
    body: &[u8],
    form_body: bool,
) -> Result<(), ProxyError> {
    ReadParams::parse(route, url_query, body, form_body).map(|_| ())
}

/// Rewrites the parameters of a read on `route`. `form_body` says whether the body is an
/// `application/x-www-form-urlencoded` form (Prometheus reads parameters from both).
pub fn rewrite_params(
    route: &str,
    enforcement: &Enforcement,
    url_query: Option<&str>,
    body: Bytes,
    form_body: bool,
) -> Result<RewrittenParams, ProxyError> {
    // Series-free endpoints read no series; the filtered ones are narrowed in their answer.
    if SERIES_FREE_ROUTES.contains(&route) || FILTERED_ROUTES.contains(&route) {
        return Ok(RewrittenParams {
            query: url_query.map(str::to_owned),
            body,
        });
    }
    let ReadParams {
        key,
        mut url_params,
        mut body_params,
        in_url,
        in_body,
    } = ReadParams::parse(route, url_query, &body, form_body)?;
    let params = match &mut body_params {
        Some(params) if in_body > 0 => params,
        _ => &mut url_params,
    };
    if key == "query" {
        for (name, value) in params.iter_mut() {
            if name == "query" {
                *value = enforcement.enforce_query(value).map_err(enforce_error)?;
            }
        }
    } else {
        let mut selectors = Vec::new();
        for (_, value) in params.iter().filter(|(name, _)| name == key) {
            selectors.extend(
                enforcement
                    .enforce_series_selector(value)
                    .map_err(enforce_error)?,
            );
        }
        if in_url + in_body == 0 {
            selectors = enforcement.readable_series_selectors();
        }
        params.retain(|(name, _)| name != key);
        params.extend(
            selectors
                .into_iter()
                .map(|selector| (key.to_owned(), selector)),
        );
    }
    let body = match body_params {
        Some(params) => Bytes::from(encode_form(&params)),
        None => body,
    };
    let query = encode_form(&url_params);
    Ok(RewrittenParams {
        query: Some(query).filter(|query| !query.is_empty()),
        body,
    })
}

fn enforce_error(error: EnforceError) -> ProxyError {
    match error {
        EnforceError::Invalid(_) => ProxyError::bad_request(error.to_string()),
        EnforceError::Inexpressible { .. } => ProxyError::unprocessable(error.to_string()),
    }
}

fn parse_form(raw: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(raw).into_owned().collect()
}

fn encode_form(params: &[(String, String)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{decision, tenant};

    fn prod() -> Enforcement {
        let matcher = Enforcement::matcher("env", "=", "prod").unwrap();
        Enforcement::new(vec![vec![matcher]], vec!["p".to_owned()]).unwrap()
    }

    fn decoded(query: &str) -> Vec<(String, String)> {
        parse_form(query.as_bytes())
    }

    #[test]
    fn the_query_is_rewritten_where_it_was_given() {
        let rewritten = rewrite_params(
            "/api/v1/query",
            &prod(),
            Some("query=up&time=5"),
            Bytes::new(),
            false,
        )
        .unwrap();
        assert_eq!(
            decoded(&rewritten.query.unwrap()),
            vec![
                ("query".to_owned(), "up{env=\"prod\"}".to_owned()),
                ("time".to_owned(), "5".to_owned())
            ]
        );
        let rewritten = rewrite_params(
            "/api/v1/query_range",
            &prod(),
            Some("start=1"),
            Bytes::from_static(b"query=rate(x[5m])&step=15"),
            true,
        )
        .unwrap();
        assert_eq!(rewritten.query.as_deref(), Some("start=1"));
        assert_eq!(
            decoded(std::str::from_utf8(&rewritten.body).unwrap())[0].1,
            "rate(x{env=\"prod\"}[5m])"
        );
    }

    #[test]
    fn duplicated_or_missing_security_parameters_are_refused() {
        let both = rewrite_params(
            "/api/v1/query",
            &prod(),
            Some("query=up"),
            Bytes::from_static(b"query=down"),
            true,
        );
        assert_eq!(both.unwrap_err().status, http::StatusCode::BAD_REQUEST);
        let twice = rewrite_params(
            "/api/v1/query",
            &prod(),
            Some("query=a&query=b"),
            Bytes::new(),
            false,
        );
        assert!(twice.is_err());
        let none = rewrite_params(
            "/api/v1/query",
            &prod(),
            Some("time=1"),
            Bytes::new(),
            false,
        );
        assert!(none.is_err());
        let matches = rewrite_params(
            "/api/v1/series",
            &prod(),
            Some("match[]=up"),
            Bytes::from_static(b"match[]=down"),
            true,
        );
        assert!(matches.is_err());
    }

    #[test]
    fn series_endpoints_get_a_match_when_they_have_none() {
        let rewritten =
            rewrite_params("/api/v1/labels", &prod(), None, Bytes::new(), false).unwrap();
        assert_eq!(
            decoded(&rewritten.query.unwrap()),
            vec![(
                "match[]".to_owned(),
                "{__name__=~\".+\",env=\"prod\"}".to_owned()
            )]
        );
    }

    #[test]
    fn federated_tenants_bind_their_filters_with_tenant_id() {
        let allowed = [
            (tenant("acme"), decision(&[])),
            (tenant("globex"), decision(&[&[r#"env="prod""#]])),
        ];
        let enforcement = enforcement_for(&TenantBinding::Mimir, &allowed)
            .unwrap()
            .expect("globex is filtered");
        assert_eq!(
            enforcement.enforce_query("up").unwrap(),
            r#"((up{__tenant_id__="acme"}) or (up{__tenant_id__="globex",env="prod"}))"#
        );
        // One Mimir tenant needs no binding, and unrestricted ones need nothing at all.
        let one = [(tenant("globex"), decision(&[&[r#"env="prod""#]]))];
        let enforcement = enforcement_for(&TenantBinding::Mimir, &one)
            .unwrap()
            .unwrap();
        assert_eq!(
            enforcement.enforce_query("up").unwrap(),
            r#"up{env="prod"}"#
        );
        let open = [
            (tenant("acme"), decision(&[])),
            (tenant("globex"), decision(&[])),
        ];
        assert!(
            enforcement_for(&TenantBinding::Mimir, &open)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_label_bound_store_always_gets_the_tenant_matcher() {
        let label = TenantBinding::Label("tenant".to_owned());
        let open = [
            (tenant("acme"), decision(&[])),
            (tenant("globex"), decision(&[])),
        ];
        let enforcement = enforcement_for(&label, &open).unwrap().unwrap();
        assert_eq!(
            enforcement.enforce_query("up").unwrap(),
            r#"up{tenant=~"acme|globex"}"#
        );
    }

    #[test]
    fn answer_filtered_endpoints_keep_their_parameters() {
        for route in ["/api/v1/metadata", "/api/v1/rules", "/api/v1/alerts"] {
            let rewritten =
                rewrite_params(route, &prod(), Some("limit=5"), Bytes::new(), false).unwrap();
            assert_eq!(rewritten.query.as_deref(), Some("limit=5"), "{route}");
        }
    }
}
