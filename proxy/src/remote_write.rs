//! Checks a remote-write 1.0 request (snappy-compressed protobuf `WriteRequest`) against the
//! writer's filter sets: every series must be one the writer may write, or the request is
//! refused naming the first that is not. The body is forwarded as it came; nothing is re-encoded.

use prost::Message;

use crate::promql::Enforcement;
use crate::respond::ProxyError;

/// The most a decompressed request may weigh, whatever its compressed size.
const MAX_DECODED_BYTES: usize = 256 * 1024 * 1024;

/// `prometheus.WriteRequest`, reduced to what the check reads (unknown fields are skipped).
#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
}

/// `prometheus.TimeSeries`: its labels, and (for building requests in tests and tools) samples.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Label {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Sample {
    #[prost(double, tag = "1")]
    pub value: f64,
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

/// Encodes a request the way Prometheus sends it: protobuf, then snappy's block format.
pub fn encode(request: &WriteRequest) -> Vec<u8> {
    let protobuf = request.encode_to_vec();
    snap::raw::Encoder::new()
        .compress_vec(&protobuf)
        .expect("snappy compresses any input that fits in memory")
}

/// Refuses the request unless every series satisfies one of the writer's filter sets.
pub fn check(
    body: &[u8],
    content_encoding: Option<&str>,
    enforcement: &Enforcement,
) -> Result<(), ProxyError> {
    if !content_encoding.is_some_and(|encoding| encoding.trim().eq_ignore_ascii_case("snappy")) {
        return Err(ProxyError::bad_request(
            "remote write must be snappy-compressed (Content-Encoding: snappy)",
        ));
    }
    let decoded_len = snap::raw::decompress_len(body)
        .map_err(|error| ProxyError::bad_request(format!("remote write body: {error}")))?;
    if decoded_len > MAX_DECODED_BYTES {
        return Err(ProxyError::payload_too_large(format!(
            "remote write body expands to more than {MAX_DECODED_BYTES} bytes"
        )));
    }
    let protobuf = snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|error| ProxyError::bad_request(format!("remote write body: {error}")))?;
    let request = WriteRequest::decode(protobuf.as_slice()).map_err(|error| {
        ProxyError::bad_request(format!("remote write body is not a WriteRequest: {error}"))
    })?;
    for series in &request.timeseries {
        let label = |name: &str| {
            series
                .labels
                .iter()
                .find(|label| label.name == name)
                .map_or("", |label| label.value.as_str())
        };
        if !enforcement.admits(label) {
            return Err(ProxyError::forbidden(format!(
                "series {} is outside what the writer may write (policies {})",
                describe(series),
                enforcement.policies().join(", ")
            )));
        }
    }
    Ok(())
}

fn describe(series: &TimeSeries) -> String {
    let labels: Vec<String> = series
        .labels
        .iter()
        .map(|label| format!("{}={:?}", label.name, label.value))
        .collect();
    format!("{{{}}}", labels.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(labels: &[(&str, &str)]) -> TimeSeries {
        TimeSeries {
            labels: labels
                .iter()
                .map(|(name, value)| Label {
                    name: (*name).to_owned(),
                    value: (*value).to_owned(),
                })
                .collect(),
            samples: vec![Sample {
                value: 1.0,
                timestamp: 1,
            }],
        }
    }

    fn prod_or_team_a() -> Enforcement {
        let set = |label: &str, value: &str| vec![Enforcement::matcher(label, "=", value).unwrap()];
        Enforcement::new(
            vec![set("env", "prod"), set("team", "a")],
            vec!["w".to_owned()],
        )
        .unwrap()
    }

    #[test]
    fn every_series_must_satisfy_one_set() {
        let enforcement = prod_or_team_a();
        let allowed = WriteRequest {
            timeseries: vec![
                series(&[("__name__", "up"), ("env", "prod")]),
                series(&[("__name__", "up"), ("team", "a"), ("env", "dev")]),
            ],
        };
        assert!(check(&encode(&allowed), Some("snappy"), &enforcement).is_ok());
        let mixed = WriteRequest {
            timeseries: vec![
                series(&[("__name__", "up"), ("env", "prod")]),
                series(&[("__name__", "up"), ("env", "dev")]),
            ],
        };
        let error = check(&encode(&mixed), Some("snappy"), &enforcement).unwrap_err();
        assert_eq!(error.status, http::StatusCode::FORBIDDEN);
        assert!(error.message.contains(r#"env="dev""#), "{}", error.message);
    }

    #[test]
    fn bodies_that_are_not_snappy_protobuf_are_refused() {
        let enforcement = prod_or_team_a();
        let request = WriteRequest {
            timeseries: vec![series(&[("env", "prod")])],
        };
        let body = encode(&request);
        assert!(check(&body, None, &enforcement).is_err());
        assert!(check(&body, Some("gzip"), &enforcement).is_err());
        assert!(check(b"not snappy at all", Some("snappy"), &enforcement).is_err());
        let garbage = snap::raw::Encoder::new().compress_vec(&[0xff; 64]).unwrap();
        assert!(check(&garbage, Some("snappy"), &enforcement).is_err());
    }
}
