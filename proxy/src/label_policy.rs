//! Mimir's label-based access control (LBAC) as an upstream mode: rather than rewriting PromQL,
//! the proxy names each tenant's filter sets in `X-Prom-Label-Policy` and Mimir's queriers keep
//! only the series matching one of them. Unions are then exact for every query shape, with no
//! 422. Mimir enforces these policies only on the series it reads (queries, series, label names
//! and values, exemplars), and only with `-auth.label-access-control-enabled`; rules, alerts,
//! metadata, writes and the ruler stay the proxy's to enforce.
//!
//! One header value per filter set: `<tenant>:<percent-encoded {m1, m2}>`. Mimir ANDs the
//! matchers of one value and ORs the values of a tenant. A tenant readable without filters gets
//! no value, which Mimir reads as unrestricted.

use std::sync::Arc;

use heimdall_opa::engine::Decision;
use heimdall_opa::{LabelFilter, TenantId};
use http::HeaderValue;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::respond::ProxyError;
use crate::rewrite::{QUERY_ROUTES, SERIES_ROUTES};

/// The header Mimir reads label policies from.
pub const LABEL_POLICY_HEADER: &str = "x-prom-label-policy";

/// Everything but RFC 3986's unreserved characters is encoded, so that neither Mimir's split on
/// `,` nor its path unescaping can misread a selector.
const SELECTOR_ENCODING: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Returns whether Mimir enforces label policies on this route, so that the proxy may leave its
/// parameters as they are.
pub fn enforced_upstream(route: &str) -> bool {
    QUERY_ROUTES.contains(&route) || SERIES_ROUTES.contains(&route)
}

/// Builds the `X-Prom-Label-Policy` values for the allowed tenants' decisions.
pub fn header_values(
    allowed: &[(TenantId, Arc<Decision>)],
) -> Result<Vec<HeaderValue>, ProxyError> {
    let mut values = Vec::new();
    for (tenant, decision) in allowed {
        if decision.unrestricted || decision.filter_sets.iter().any(Vec::is_empty) {
            continue;
        }
        if decision.filter_sets.is_empty() {
            // Allowed through filters, yet no filter: nothing is readable, and no header could
            // say so (an absent policy reads as unrestricted).
            return Err(ProxyError::forbidden(format!(
                "tenant {tenant}: the decision allows filtered reads but names no filter"
            )));
        }
        for set in &decision.filter_sets {
            let mut matchers = Vec::with_capacity(set.len());
            for raw in set {
                // Parsed (and its regex checked) rather than passed on as the policy wrote it,
                // so that only one well-formed matcher can reach the header.
                let filter = LabelFilter::parse(raw).map_err(|reason| {
                    ProxyError::internal(format!("policy filter {raw:?} is unusable: {reason}"))
                })?;
                matchers.push(filter.to_string());
            }
            let selector = format!("{{{}}}", matchers.join(", "));
            let value = format!(
                "{tenant}:{}",
                utf8_percent_encode(&selector, SELECTOR_ENCODING)
            );
            values.push(HeaderValue::from_str(&value).map_err(|_| {
                ProxyError::internal("an encoded label policy should be a valid header value")
            })?);
        }
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{decision, tenant};

    /// Decodes a value the way Mimir does: split at the first `:`, then unescape the selector.
    fn decode(value: &HeaderValue) -> (String, String) {
        let text = value.to_str().expect("ASCII");
        assert!(
            !text.contains(','),
            "a raw comma would split the value: {text}"
        );
        let (tenant, selector) = text.split_once(':').expect("tenant:selector");
        let selector = percent_encoding::percent_decode_str(selector)
            .decode_utf8()
            .expect("UTF-8");
        (tenant.to_owned(), selector.into_owned())
    }

    #[test]
    fn one_value_per_filter_set_and_none_for_an_unrestricted_tenant() {
        let allowed = vec![
            (
                tenant("acme"),
                decision(&[&["env=\"prod\"", "team=~\"a|b\""], &["env=\"dev\""]]),
            ),
            (tenant("globex"), decision(&[])),
        ];
        let values = header_values(&allowed).expect("values");
        let decoded: Vec<_> = values.iter().map(decode).collect();
        assert_eq!(
            decoded,
            [
                (
                    "acme".to_owned(),
                    "{env=\"prod\", team=~\"a|b\"}".to_owned()
                ),
                ("acme".to_owned(), "{env=\"dev\"}".to_owned()),
            ]
        );
        // Each decoded selector parses as Prometheus would parse it.
        for (_, selector) in &decoded {
            assert!(promql_parser::parser::parse(selector).is_ok(), "{selector}");
        }
    }

    #[test]
    fn quotes_commas_and_unicode_survive_the_encoding() {
        let allowed = vec![(tenant("acme"), decision(&[&[r#"path="a,b \"c\" ü%2C""#]]))];
        let values = header_values(&allowed).expect("values");
        let (_, selector) = decode(&values[0]);
        assert_eq!(selector, r#"{path="a,b \"c\" ü%2C"}"#);
        let raw = values[0].to_str().unwrap();
        assert!(raw.starts_with("acme:%7Bpath%3D%22a%2Cb%20"), "{raw}");
    }

    #[test]
    fn a_filtered_decision_without_filters_is_refused() {
        let broken = Arc::new(Decision {
            allowed: true,
            unrestricted: false,
            filter_sets: Vec::new(),
            policies: Vec::new(),
        });
        let error = header_values(&[(tenant("acme"), broken)]).expect_err("refused");
        assert_eq!(error.status, http::StatusCode::FORBIDDEN);
    }

    #[test]
    fn only_series_reading_routes_are_left_to_mimir() {
        for route in [
            "/api/v1/query",
            "/api/v1/series",
            "/api/v1/label/{name}/values",
        ] {
            assert!(enforced_upstream(route), "{route}");
        }
        for route in ["/api/v1/metadata", "/api/v1/rules", "/api/v1/alerts"] {
            assert!(!enforced_upstream(route), "{route}");
        }
    }
}
