//! Reads the tenants a request names in `X-Scope-OrgID` (`a|b|c`), validated by Mimir's rules,
//! deduplicated and capped.

use heimdall_opa::TenantId;
use http::HeaderValue;

use crate::respond::ProxyError;

/// The header Mimir reads tenants from.
pub const SCOPE_HEADER: &str = "x-scope-orgid";
/// Mimir's separator between federated tenants.
const SEPARATOR: char = '|';

/// Returns the tenants named by the header, sorted and without duplicates; None without header.
pub fn parse_scope(
    header: Option<&HeaderValue>,
    max_tenants: usize,
) -> Result<Option<Vec<TenantId>>, ProxyError> {
    let Some(header) = header else {
        return Ok(None);
    };
    let raw = header
        .to_str()
        .map_err(|_| ProxyError::bad_request("X-Scope-OrgID: not printable ASCII".to_owned()))?;
    let parts: Vec<&str> = raw.split(SEPARATOR).collect();
    // Checked before validating, so a huge list costs no more than counting it.
    if parts.len() > max_tenants.saturating_mul(2) {
        return Err(too_many(parts.len(), max_tenants));
    }
    let mut tenants = Vec::with_capacity(parts.len());
    for part in parts {
        if part.is_empty() {
            return Err(ProxyError::bad_request(format!(
                "X-Scope-OrgID {raw:?}: empty tenant id between '|' separators"
            )));
        }
        let tenant = TenantId::parse(part)
            .map_err(|error| ProxyError::bad_request(format!("X-Scope-OrgID: {error}")))?;
        tenants.push(tenant);
    }
    tenants.sort_unstable();
    tenants.dedup();
    if tenants.len() > max_tenants {
        return Err(too_many(tenants.len(), max_tenants));
    }
    Ok(Some(tenants))
}

fn too_many(count: usize, max_tenants: usize) -> ProxyError {
    ProxyError::bad_request(format!(
        "X-Scope-OrgID names {count} tenants; at most {max_tenants} are allowed in one request"
    ))
}

/// Joins tenants the way Mimir's federation reads them.
pub fn scope_value(tenants: &[TenantId]) -> String {
    tenants
        .iter()
        .map(TenantId::as_str)
        .collect::<Vec<_>>()
        .join("|")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Result<Option<Vec<String>>, ProxyError> {
        let header = HeaderValue::from_str(raw).expect("test header should be valid");
        parse_scope(Some(&header), 32)
            .map(|tenants| tenants.map(|tenants| tenants.iter().map(ToString::to_string).collect()))
    }

    #[test]
    fn tenants_are_split_sorted_and_deduplicated() {
        let tenants = parse("globex|acme|globex").expect("header should parse");
        assert_eq!(tenants, Some(vec!["acme".to_owned(), "globex".to_owned()]));
        assert_eq!(parse_scope(None, 32).expect("no header is fine"), None);
    }

    #[test]
    fn empty_parts_and_invalid_ids_are_refused() {
        for raw in ["a||b", "|a", "a|", "", "a|b c", "a|..", "a|*", "a/b"] {
            let error = parse(raw).expect_err(&format!("{raw:?} should be refused"));
            assert_eq!(error.status, http::StatusCode::BAD_REQUEST, "{raw:?}");
        }
    }

    #[test]
    fn the_cap_counts_distinct_tenants() {
        let thirty_two = (0..32).map(|n| format!("t{n}")).collect::<Vec<_>>();
        assert_eq!(
            parse(&thirty_two.join("|"))
                .expect("32 tenants are allowed")
                .map(|tenants| tenants.len()),
            Some(32)
        );
        let repeated = [thirty_two.join("|"), "t0|t1".to_owned()].join("|");
        assert!(parse(&repeated).is_ok(), "duplicates do not count twice");
        let thousand = (0..1000).map(|n| format!("t{n}")).collect::<Vec<_>>();
        let error = parse(&thousand.join("|")).expect_err("1000 tenants exceed the cap");
        assert!(error.message.contains("at most 32"), "{}", error.message);
        let thirty_three = (0..33).map(|n| format!("t{n}")).collect::<Vec<_>>();
        assert!(parse(&thirty_three.join("|")).is_err());
    }

    #[test]
    fn non_ascii_headers_are_refused() {
        let header = HeaderValue::from_bytes(b"acme\xff").expect("opaque bytes are a header");
        assert!(parse_scope(Some(&header), 32).is_err());
    }
}
