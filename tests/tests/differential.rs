//! The differential test of PromQL enforcement: for each shape of filter sets, every query sent
//! through the proxy must answer exactly what a second Prometheus answers when it holds only the
//! series those sets allow — or be refused with 422. Never wider, never narrower.
//!
//! Both stores are real Prometheus servers (Debian's `prometheus`), filled by `promtool`
//! backfill; the proxy runs as `heimdall serve --target=all --dev` with the tenant as a label.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use heimdall_tests::{HeimdallProcess, PrometheusServer, cli_ok, heimdall_binary, http_request};
use serde_json::Value;

const ADMIN_TOKEN: &str = "hmd_differential_admin_token";
const STEP_SECONDS: u64 = 15;
const SAMPLES: u64 = 121;

/// One series: its labels (without `__name__`) and its value at sample `n`.
struct Series {
    name: &'static str,
    labels: BTreeMap<&'static str, String>,
    value: fn(usize, u64) -> f64,
}

fn dataset() -> Vec<Series> {
    let mut series = Vec::new();
    let envs = ["prod", "staging", "dev"];
    let teams = ["a", "b", "c"];
    for tenant in ["acme", "globex"] {
        for instance in 0..6_usize {
            let labels = BTreeMap::from([
                ("tenant", tenant.to_owned()),
                ("instance", format!("host-{instance}")),
                ("env", envs[instance % 3].to_owned()),
                ("team", teams[(instance / 2) % 3].to_owned()),
                ("job", if instance < 3 { "api" } else { "db" }.to_owned()),
            ]);
            let gauge = |name, value| Series {
                name,
                labels: labels.clone(),
                value,
            };
            series.push(gauge("demo_requests_total", |i, n| {
                (n * (i as u64 + 1) * 7) as f64
            }));
            series.push(gauge("demo_cpu", |i, n| {
                ((i as u64 * 13 + n * 3) % 100) as f64 / 100.0
            }));
            series.push(gauge("demo_mem", |i, n| (i as u64 * 100 + n) as f64));
            series.push(gauge("demo_up", |i, n| ((i as u64 + n / 40) % 2) as f64));
            for (le, share) in [("0.1", 1_u64), ("0.5", 3), ("1", 5), ("+Inf", 6)] {
                let mut bucket = labels.clone();
                bucket.insert("le", le.to_owned());
                series.push(Series {
                    name: "demo_latency_bucket",
                    labels: bucket,
                    value: match share {
                        1 => |i, n| (n * (i as u64 + 1)) as f64,
                        3 => |i, n| (n * (i as u64 + 1) * 3) as f64,
                        5 => |i, n| (n * (i as u64 + 1) * 5) as f64,
                        _ => |i, n| (n * (i as u64 + 1) * 6) as f64,
                    },
                });
            }
        }
    }
    series
}

/// Writes the OpenMetrics text of the series `keep` accepts, samples ending at `end`.
fn openmetrics(series: &[Series], end: u64, keep: impl Fn(&Series) -> bool) -> String {
    let mut by_name: BTreeMap<&str, Vec<(usize, &Series)>> = BTreeMap::new();
    for (index, one) in series.iter().enumerate() {
        if keep(one) {
            by_name.entry(one.name).or_default().push((index, one));
        }
    }
    let mut text = String::new();
    for (name, members) in by_name {
        text.push_str(&format!("# TYPE {name} gauge\n"));
        for (index, one) in members {
            let labels: Vec<String> = one
                .labels
                .iter()
                .map(|(key, value)| format!("{key}=\"{value}\""))
                .collect();
            let instance = index % 6;
            for n in 0..SAMPLES {
                let at = end - (SAMPLES - 1 - n) * STEP_SECONDS;
                let value = (one.value)(instance, n);
                text.push_str(&format!("{name}{{{}}} {value} {at}\n", labels.join(",")));
            }
        }
    }
    text.push_str("# EOF\n");
    text
}

/// One filter shape: the policies' filter sets (ORed), each a list of matchers (ANDed).
struct Shape {
    name: &'static str,
    sets: &'static [&'static [&'static str]],
}

const SHAPES: &[Shape] = &[
    Shape {
        name: "one-set",
        sets: &[&[r#"env="prod""#, r#"team="a""#]],
    },
    Shape {
        name: "one-label",
        sets: &[&[r#"env="prod""#], &[r#"env="staging""#]],
    },
    Shape {
        name: "two-labels",
        sets: &[&[r#"env="prod""#], &[r#"team="b""#]],
    },
    Shape {
        name: "regex",
        sets: &[&[r#"team=~"a|c""#]],
    },
    Shape {
        name: "negative",
        sets: &[&[r#"env!="dev""#]],
    },
];

/// Evaluates one filter (the test's own, simple reading of `=`, `!=`, `=~` with literal
/// alternatives, `!~`) against a series.
fn satisfies(series: &Series, filter: &str) -> bool {
    let (label, operator, value) = ["=~", "!~", "!=", "="]
        .iter()
        .find_map(|op| {
            filter
                .split_once(op)
                .map(|(label, value)| (label, *op, value.trim_matches('"')))
        })
        .expect("filters have an operator");
    let actual = series.labels.get(label).map(String::as_str).unwrap_or("");
    match operator {
        "=" => actual == value,
        "!=" => actual != value,
        "=~" => value.split('|').any(|alternative| alternative == actual),
        _ => !value.split('|').any(|alternative| alternative == actual),
    }
}

const QUERIES: &[&str] = &[
    "demo_cpu",
    "demo_cpu offset 5m",
    "demo_cpu > 0.5",
    "rate(demo_requests_total[5m])",
    "sum by (env) (rate(demo_requests_total[5m]))",
    "sum(demo_mem) / count(demo_mem)",
    "topk(2, demo_cpu)",
    "topk(scalar(count(demo_up)), demo_mem)",
    "bottomk(1, demo_cpu) by (job)",
    "max_over_time(demo_cpu[10m])",
    "quantile_over_time(0.5, demo_cpu[10m])",
    "avg_over_time(rate(demo_requests_total[5m])[15m:1m])",
    "demo_cpu / on(instance, tenant) demo_mem",
    "demo_cpu * 2 + demo_mem",
    "count(demo_up == 1) by (team)",
    r#"count_values("up", demo_up)"#,
    r#"absent(demo_cpu{job="nothing"})"#,
    r#"absent(demo_cpu{job="api"})"#,
    "absent_over_time(demo_cpu[5m])",
    "histogram_quantile(0.9, sum by (le) (rate(demo_latency_bucket[5m])))",
    r#"label_replace(demo_cpu, "where", "$1", "env", "(.*)")"#,
    "sum(demo_cpu) or vector(0)",
    r#"demo_cpu{env="dev"}"#,
    r#"{__name__=~"demo_cpu|demo_mem"}"#,
    "increase(demo_requests_total[10m]) and on(instance) demo_up == 1",
];

fn get(addr: &str, path: &str, token: Option<&str>) -> (u16, Value) {
    let bearer = token.map(|token| format!("Bearer {token}"));
    let headers: Vec<(&str, &str)> = bearer
        .as_deref()
        .map(|value| vec![("Authorization", value)])
        .unwrap_or_default();
    let response = http_request(addr, "GET", path, &headers).expect("an answer");
    let body = serde_json::from_slice(&response.body).unwrap_or_else(|error| {
        panic!(
            "{path}: not JSON ({error}): {}",
            String::from_utf8_lossy(&response.body)
        )
    });
    (response.status, body)
}

/// Sorts a result by labels, so that answers compare regardless of order.
fn normalised(data: &Value) -> Value {
    let mut data = data.clone();
    if let Some(result) = data.get_mut("result").and_then(Value::as_array_mut) {
        result.sort_by_key(|series| series["metric"].to_string());
    }
    data
}

/// Compares two answers, numbers with a relative tolerance (sums may add in another order).
fn same(left: &Value, right: &Value) -> bool {
    match (left, right) {
        (Value::String(a), Value::String(b)) => match (a.parse::<f64>(), b.parse::<f64>()) {
            (Ok(x), Ok(y)) if x.is_finite() && y.is_finite() => {
                (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0)
            }
            _ => a == b,
        },
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same(x, y))
        }
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len()
                && a.iter()
                    .all(|(key, x)| b.get(key).is_some_and(|y| same(x, y)))
        }
        _ => left == right,
    }
}

fn encode(query: &str) -> String {
    let mut encoded = String::new();
    for byte in query.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                encoded.push(byte as char)
            }
            _ => encoded.push_str(&format!("%{byte:02X}")),
        }
    }
    encoded
}

#[test]
fn enforced_answers_equal_a_store_holding_only_the_allowed_series() {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let end = now - 3 * 3600;
    let series = dataset();
    let Some(full) = PrometheusServer::start(&openmetrics(&series, end, |_| true)) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let env = [
        (
            "HEIMDALL_ADMIN_TOKENS",
            format!(
                "[{{name: test, sha256: {}}}]",
                heimdall_control_plane::hash_token(ADMIN_TOKEN)
            ),
        ),
        ("HEIMDALL_MIMIR_URL", full.url()),
        ("HEIMDALL_MIMIR_API_PREFIX", String::new()),
        ("HEIMDALL_MIMIR_KIND", "label".to_owned()),
    ];
    let mut server = HeimdallProcess::serve(&["--target=all", "--dev"], dir.path(), &env);
    server.wait_ready();
    cli_ok(
        dir.path(),
        &server,
        ADMIN_TOKEN,
        &["tenant", "create", "acme", "Acme"],
    );
    cli_ok(
        dir.path(),
        &server,
        ADMIN_TOKEN,
        &["tenant", "create", "globex", "Globex"],
    );
    let mut policies = Vec::new();
    for shape in SHAPES {
        for (index, set) in shape.sets.iter().enumerate() {
            policies.push(serde_json::json!({
                "name": format!("{}-{index}", shape.name), "effect": "allow",
                "subjects": [{"type": "user", "id": shape.name}], "actions": ["read"],
                "scope": {"tenants": ["acme"], "resources": ["metrics"]},
                "filters": set,
            }));
        }
    }
    let file = dir.path().join("policies.json");
    std::fs::write(&file, Value::Array(policies).to_string()).unwrap();
    cli_ok(
        dir.path(),
        &server,
        ADMIN_TOKEN,
        &["policy", "apply", file.to_str().unwrap()],
    );

    let mut compared = 0;
    let mut refused = Vec::new();
    let mut mismatches = Vec::new();
    for shape in SHAPES {
        let allowed = |one: &Series| {
            one.labels["tenant"] == "acme"
                && shape
                    .sets
                    .iter()
                    .any(|set| set.iter().all(|filter| satisfies(one, filter)))
        };
        let reference = PrometheusServer::start(&openmetrics(&series, end, allowed))
            .expect("checked at the first start");
        let output = std::process::Command::new(heimdall_binary())
            .args(["token", "--user", shape.name])
            .current_dir(dir.path())
            .output()
            .unwrap();
        let token = String::from_utf8(output.stdout).unwrap().trim().to_owned();
        for query in QUERIES {
            let encoded = encode(query);
            let start = end - 20 * 60;
            for path in [
                format!("/api/v1/query?query={encoded}&time={end}"),
                format!("/api/v1/query_range?query={encoded}&start={start}&end={end}&step=60"),
            ] {
                let (status, answer) = get(&server.proxy_addr, &path, Some(&token));
                let (expected_status, expected) = get(&reference.addr, &path, None);
                if status == 422 {
                    refused.push(format!("{}: {query}", shape.name));
                    continue;
                }
                compared += 1;
                let equal = status == expected_status
                    && answer["status"] == expected["status"]
                    && same(&normalised(&answer["data"]), &normalised(&expected["data"]));
                if !equal {
                    mismatches.push(format!(
                        "{} {path}\n  proxy ({status}): {answer}\n  reference ({expected_status}): \
                         {expected}",
                        shape.name
                    ));
                }
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {compared} answers differ:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    // Only the general union may refuse, and only queries without an exact form.
    assert!(
        refused.iter().all(|entry| entry.starts_with("two-labels")),
        "refused: {refused:?}"
    );
    assert!(compared >= 200, "only {compared} answers compared");
    eprintln!("compared {compared} answers; refused with 422: {refused:?}");
}
