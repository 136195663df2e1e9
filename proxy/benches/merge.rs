//! Merge cost of a fanned-out read: 50 tenants × 1,000 vector series each.
//!
//! `cargo bench -p heimdall-proxy --bench merge`. The baseline, measured in the same run, is
//! parsing the same 50 answers with serde_json, which any merge must do.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use heimdall_opa::TenantId;
use heimdall_proxy::merge::merge;

const TENANTS: usize = 50;
const SERIES: usize = 1_000;
const ROUNDS: usize = 20;

fn answers() -> Vec<(TenantId, Bytes)> {
    (0..TENANTS)
        .map(|tenant| {
            let result: Vec<serde_json::Value> = (0..SERIES)
                .map(|series| {
                    let code = ["200", "404", "500"][series % 3];
                    let instance = format!("host-{series}:9090");
                    let value = (series * 7).to_string();
                    serde_json::json!({
                        "metric": {"__name__": "http_requests_total", "job": "api",
                                   "instance": instance, "code": code},
                        "value": [1_796_300_000.0, value],
                    })
                })
                .collect();
            let body = serde_json::json!({"status": "success",
                "data": {"resultType": "vector", "result": result}});
            (
                TenantId::parse(&format!("tenant-{tenant}")).expect("valid id"),
                Bytes::from(body.to_string()),
            )
        })
        .collect()
}

fn median(mut operation: impl FnMut()) -> Duration {
    let mut samples: Vec<Duration> = (0..ROUNDS)
        .map(|_| {
            let started = Instant::now();
            operation();
            started.elapsed()
        })
        .collect();
    samples.sort_unstable();
    samples[samples.len() / 2]
}

fn main() {
    let answers = answers();
    let bytes: usize = answers.iter().map(|(_, body)| body.len()).sum();
    let baseline = median(|| {
        for (_, body) in &answers {
            black_box(serde_json::from_slice::<serde_json::Value>(body).expect("JSON"));
        }
    });
    let merged_size = merge("/api/v1/query", &answers).expect("merges").len();
    let merging = median(|| {
        black_box(merge("/api/v1/query", &answers).expect("merges"));
    });
    println!(
        "{TENANTS} tenants × {SERIES} series: {} MiB in, {} MiB out, median of {ROUNDS}",
        bytes / (1024 * 1024),
        merged_size / (1024 * 1024)
    );
    println!("baseline: parse the answers   {baseline:>10.2?}");
    println!(
        "merge                         {merging:>10.2?}  ratio {:.2}",
        merging.as_secs_f64() / baseline.as_secs_f64()
    );
}
