//! Rewrite latency over a corpus of 230 dashboard and alert-rule expressions
//! (`rewrite_corpus.promql`), for three filter shapes.
//!
//! `cargo bench -p heimdall-proxy --bench rewrite`. The baseline, measured in the same run, is
//! promql-parser parsing and printing the same expression: the least any AST rewrite can cost.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use heimdall_opa::TenantId;
use heimdall_opa::engine::Decision;
use heimdall_proxy::built_from_decisions::BuiltFromDecisions;
use heimdall_proxy::label_policy;
use heimdall_proxy::promql::Enforcement;
use heimdall_proxy::rewrite::{TenantBinding, enforcement_for};

const ROUNDS: usize = 50;

fn corpus() -> Vec<&'static str> {
    include_str!("rewrite_corpus.promql")
        .lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect()
}

fn enforcement(sets: &[&[(&str, &str, &str)]]) -> Enforcement {
    let alternatives = sets
        .iter()
        .map(|set| {
            set.iter()
                .map(|(label, op, value)| Enforcement::matcher(label, op, value).expect("valid"))
                .collect()
        })
        .collect();
    Enforcement::new(alternatives, vec!["bench".to_owned()]).expect("not empty")
}

/// Returns the median and p99 of `operation` per expression, over `ROUNDS` passes.
fn measure(corpus: &[&str], mut operation: impl FnMut(&str)) -> (Duration, Duration) {
    let mut samples = Vec::with_capacity(corpus.len() * ROUNDS);
    for _ in 0..ROUNDS {
        for expression in corpus {
            let started = Instant::now();
            operation(expression);
            samples.push(started.elapsed());
        }
    }
    samples.sort_unstable();
    (
        samples[samples.len() / 2],
        samples[samples.len() * 99 / 100],
    )
}

fn main() {
    let corpus = corpus();
    assert!(
        corpus.len() >= 200,
        "the corpus should hold 200 expressions"
    );
    let (baseline, baseline_p99) = measure(&corpus, |expression| {
        let expr = promql_parser::parser::parse(expression).expect("the corpus parses");
        black_box(expr.to_string());
    });
    println!("{} expressions, {ROUNDS} passes", corpus.len());
    println!(
        "{:<40} median {baseline:>9.2?}  p99 {baseline_p99:>9.2?}",
        "baseline: parse and print"
    );
    let shapes = [
        (
            "one set (inject)",
            enforcement(&[&[("env", "=", "prod"), ("team", "=~", "a|b")]]),
        ),
        (
            "two sets on one label (regex)",
            enforcement(&[&[("env", "=", "prod")], &[("env", "=", "staging")]]),
        ),
        (
            "two sets on two labels (union)",
            enforcement(&[&[("env", "=", "prod")], &[("team", "=", "a")]]),
        ),
    ];
    for (name, enforcement) in shapes {
        let mut refused = 0;
        for expression in &corpus {
            if enforcement.enforce_query(expression).is_err() {
                refused += 1;
            }
        }
        let (median, p99) = measure(&corpus, |expression| {
            let _ = black_box(enforcement.enforce_query(expression));
        });
        println!(
            "{name:<40} median {median:>9.2?}  p99 {p99:>9.2?}  ratio {:.2}  refused {refused}",
            median.as_secs_f64() / baseline.as_secs_f64()
        );
    }

    // Mimir's LBAC mode rewrites nothing: per request it builds the X-Prom-Label-Policy values,
    // whatever the expression. Measured as often as the rewrites above, for the union shape.
    let union = Arc::new(Decision {
        allowed: true,
        unrestricted: false,
        filter_sets: vec![
            vec!["env=\"prod\"".to_owned()],
            vec!["team=~\"a|b\"".to_owned(), "env!=\"dev\"".to_owned()],
        ],
        policies: vec!["bench".to_owned()],
    });
    let allowed = vec![(TenantId::parse("acme").expect("valid"), union)];
    let (median, p99) = measure(&corpus, |_| {
        black_box(label_policy::header_values(&allowed).expect("valid filters"));
    });
    println!(
        "{:<40} median {median:>9.2?}  p99 {p99:>9.2?}  ratio {:.2}",
        "label policy headers (union, no rewrite)",
        median.as_secs_f64() / baseline.as_secs_f64()
    );
    // What the rewriting mode pays per request before rewriting: the same decision turned into
    // an enforcement (filters parsed, regexes compiled). The rewrites above exclude it.
    let (median, p99) = measure(&corpus, |_| {
        black_box(enforcement_for(&TenantBinding::Mimir, &allowed).expect("valid filters"));
    });
    println!(
        "{:<40} median {median:>9.2?}  p99 {p99:>9.2?}  ratio {:.2}",
        "enforcement from the decision (union)",
        median.as_secs_f64() / baseline.as_secs_f64()
    );
    // What the proxy pays instead once the same decisions were seen: a lookup by content.
    let remembered = BuiltFromDecisions::new(16);
    let (median, p99) = measure(&corpus, |_| {
        black_box(
            remembered
                .get_or_build(&allowed, || {
                    enforcement_for(&TenantBinding::Mimir, &allowed)
                        .map(|enforcement| enforcement.map(Arc::new))
                })
                .expect("valid filters"),
        );
    });
    println!(
        "{:<40} median {median:>9.2?}  p99 {p99:>9.2?}  ratio {:.2}",
        "the same, remembered by decisions",
        median.as_secs_f64() / baseline.as_secs_f64()
    );
}
