//! Checks a remote-write 1.0 request (snappy-compressed protobuf `WriteRequest`) against the
//! writer's filter sets: every series must be one the writer may write, or the request is
//! refused naming the first that is not. The body is forwarded as it came; nothing is re-encoded.

use prost::Message;

use crate::promql::Enforcement;
use crate::respond::ProxyError;

/// The most a decompressed request may weigh, whatever its compressed size.
const MAX_DECODED_BYTES: usize = 64 * 1024 * 1024;

/// `prometheus.WriteRequest` with series only, for building requests (tests, tools).
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
///
/// The body is walked field by field rather than decoded into structs: a small body can expand
/// to millions of empty messages. Anything but remote write 1.0 series is refused, since it could
/// carry data the check does not see (2.0 symbol tables, metric metadata).
pub fn check(
    body: &[u8],
    content_encoding: Option<&str>,
    content_type: Option<&str>,
    enforcement: &Enforcement,
) -> Result<(), ProxyError> {
    if !content_encoding.is_some_and(|encoding| encoding.trim().eq_ignore_ascii_case("snappy")) {
        return Err(ProxyError::bad_request(
            "remote write must be snappy-compressed (Content-Encoding: snappy)",
        ));
    }
    if let Some(content_type) = content_type {
        let mut parts = content_type.split(';').map(str::trim);
        let protobuf = parts
            .next()
            .is_some_and(|mime| mime.eq_ignore_ascii_case("application/x-protobuf"));
        let version_1 = parts.all(|param| match param.split_once('=') {
            Some((name, value)) if name.trim().eq_ignore_ascii_case("proto") => {
                value.trim() == "prometheus.WriteRequest"
            }
            _ => true,
        });
        if !protobuf || !version_1 {
            return Err(ProxyError::bad_request(format!(
                "remote write must be protobuf prometheus.WriteRequest (1.0), not {content_type}"
            )));
        }
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
    let malformed = |reason: &str| {
        ProxyError::bad_request(format!("remote write body is not a WriteRequest: {reason}"))
    };
    let mut request = Fields::new(&protobuf);
    let mut labels: Vec<(&str, &str)> = Vec::new();
    while let Some((tag, value)) = request.next_field().map_err(malformed)? {
        match (tag, value) {
            (1, Value::Bytes(series)) => {
                read_labels(series, &mut labels).map_err(malformed)?;
                check_series(&labels, enforcement)?;
            }
            (3, _) => {
                return Err(ProxyError::forbidden(
                    "metric metadata in remote write applies to every series of a metric and \
                     cannot be checked against filters; send samples only",
                ));
            }
            _ => return Err(malformed("a field remote write 1.0 does not have")),
        }
    }
    Ok(())
}

fn check_series(labels: &[(&str, &str)], enforcement: &Enforcement) -> Result<(), ProxyError> {
    let describe = || {
        let shown: Vec<String> = labels
            .iter()
            .map(|(name, value)| format!("{name}={value:?}"))
            .collect();
        format!("{{{}}}", shown.join(", "))
    };
    let mut names: Vec<&str> = labels.iter().map(|(name, _)| *name).collect();
    names.sort_unstable();
    if names.windows(2).any(|pair| pair[0] == pair[1]) {
        return Err(ProxyError::bad_request(format!(
            "series {} names a label twice",
            describe()
        )));
    }
    // An empty value reads as an absent label, as Prometheus and Mimir store it.
    let label = |name: &str| {
        labels
            .iter()
            .find(|(label, _)| *label == name)
            .map_or("", |(_, value)| *value)
    };
    if !enforcement.admits(label) {
        return Err(ProxyError::forbidden(format!(
            "series {} is outside what the writer may write (policies {})",
            describe(),
            enforcement.policies().join(", ")
        )));
    }
    Ok(())
}

/// Reads the labels of one `TimeSeries` message into `labels`, skipping its samples.
fn read_labels<'a>(
    series: &'a [u8],
    labels: &mut Vec<(&'a str, &'a str)>,
) -> Result<(), &'static str> {
    labels.clear();
    let mut fields = Fields::new(series);
    while let Some((tag, value)) = fields.next_field()? {
        let (1, Value::Bytes(label)) = (tag, value) else {
            continue;
        };
        let (mut name, mut text) = ("", "");
        let mut pair = Fields::new(label);
        while let Some((tag, value)) = pair.next_field()? {
            match (tag, value) {
                (1, Value::Bytes(bytes)) => name = utf8(bytes)?,
                (2, Value::Bytes(bytes)) => text = utf8(bytes)?,
                _ => return Err("a label holds an unknown field"),
            }
        }
        labels.push((name, text));
    }
    Ok(())
}

fn utf8(bytes: &[u8]) -> Result<&str, &'static str> {
    std::str::from_utf8(bytes).map_err(|_| "a label is not UTF-8")
}

/// One protobuf field value, as far as the check needs it.
enum Value<'a> {
    Bytes(&'a [u8]),
    Scalar,
}

/// Walks the fields of one protobuf message without copying.
struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    fn next_field(&mut self) -> Result<Option<(u64, Value<'a>)>, &'static str> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let (tag, wire_type) = (key >> 3, key & 7);
        let value = match wire_type {
            0 => {
                self.varint()?;
                Value::Scalar
            }
            1 => {
                self.take(8)?;
                Value::Scalar
            }
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| "length overflow")?;
                Value::Bytes(self.take(len)?)
            }
            5 => {
                self.take(4)?;
                Value::Scalar
            }
            _ => return Err("an unsupported wire type"),
        };
        Ok(Some((tag, value)))
    }

    fn varint(&mut self) -> Result<u64, &'static str> {
        let mut value = 0_u64;
        for (index, byte) in self.rest.iter().enumerate().take(10) {
            value |= u64::from(byte & 0x7f) << (7 * index);
            if byte & 0x80 == 0 {
                self.rest = &self.rest[index + 1..];
                return Ok(value);
            }
        }
        Err("a truncated varint")
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], &'static str> {
        if len > self.rest.len() {
            return Err("a truncated field");
        }
        let (taken, rest) = self.rest.split_at(len);
        self.rest = rest;
        Ok(taken)
    }
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
        assert!(check(&encode(&allowed), Some("snappy"), None, &enforcement).is_ok());
        let mixed = WriteRequest {
            timeseries: vec![
                series(&[("__name__", "up"), ("env", "prod")]),
                series(&[("__name__", "up"), ("env", "dev")]),
            ],
        };
        let error = check(&encode(&mixed), Some("snappy"), None, &enforcement).unwrap_err();
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
        assert!(check(&body, None, None, &enforcement).is_err());
        assert!(check(&body, Some("gzip"), None, &enforcement).is_err());
        assert!(check(b"not snappy at all", Some("snappy"), None, &enforcement).is_err());
        let garbage = snap::raw::Encoder::new().compress_vec(&[0xff; 64]).unwrap();
        assert!(check(&garbage, Some("snappy"), None, &enforcement).is_err());
        let version_2 = "application/x-protobuf;proto=io.prometheus.write.v2.Request";
        assert!(check(&body, Some("snappy"), Some(version_2), &enforcement).is_err());
        let version_1 = "application/x-protobuf;proto=prometheus.WriteRequest";
        assert!(check(&body, Some("snappy"), Some(version_1), &enforcement).is_ok());
    }

    #[test]
    fn duplicate_labels_metadata_and_unknown_fields_are_refused() {
        let enforcement = prod_or_team_a();
        // team="" then team="secret": read naively as team="", stored as team="secret".
        let twice = WriteRequest {
            timeseries: vec![series(&[("env", "prod"), ("team", ""), ("team", "b")])],
        };
        assert!(check(&encode(&twice), Some("snappy"), None, &enforcement).is_err());
        let snappy = |protobuf: &[u8]| snap::raw::Encoder::new().compress_vec(protobuf).unwrap();
        // Field 3 (metadata): a metric family's help text, no series.
        let metadata = [0x1a, 0x02, 0x08, 0x01];
        let error = check(&snappy(&metadata), Some("snappy"), None, &enforcement).unwrap_err();
        assert_eq!(error.status, http::StatusCode::FORBIDDEN);
        // Field 4 (remote write 2.0 symbols): never passed unchecked.
        let symbols = [0x22, 0x01, 0x61];
        assert!(check(&snappy(&symbols), Some("snappy"), None, &enforcement).is_err());
        // Truncated messages.
        assert!(
            check(
                &snappy(&[0x0a, 0x05, 0x0a]),
                Some("snappy"),
                None,
                &enforcement
            )
            .is_err()
        );
    }
}
