//! Bundle build, load and decision cost at scale: 10,000 tenants and 100,000 policies.
//!
//! `cargo bench -p heimdall-opa --bench bundle`. Each figure is printed with a baseline measured
//! in the same run, since the machine is noisy: bundle build against serialising the same data
//! document to JSON, and a decision against evaluating a one-line rule on the same engine size.

use std::hint::black_box;
use std::time::{Duration, Instant};

use heimdall_opa::bundle;
use heimdall_opa::engine::{DecisionInput, EmbeddedEngine, SubjectIdentity};
use heimdall_opa::{Policy, PolicyDraft, Tenant};

const TENANTS: usize = 10_000;
const POLICIES: usize = 100_000;
const USERS: usize = 20_000;
const GROUPS: usize = 2_000;
const DECISIONS: usize = 2_000;

/// Deterministic xorshift64*, so runs are comparable.
struct Generator(u64);

impl Generator {
    fn below(&mut self, bound: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % bound as u64) as usize
    }
}

fn state(generator: &mut Generator) -> (Vec<Tenant>, Vec<Policy>) {
    let tenants = (0..TENANTS)
        .map(|i| Tenant::new(&format!("tenant-{i}"), &format!("Tenant {i}")).unwrap())
        .collect();
    let filters = [
        r#"env="prod""#,
        r#"team=~"a|b""#,
        r#"region!="eu""#,
        r#"env="staging""#,
    ];
    let policies = (0..POLICIES)
        .map(|i| {
            let subject = if generator.below(4) == 0 {
                (
                    "group".to_owned(),
                    format!("group-{}", generator.below(GROUPS)),
                )
            } else {
                (
                    "user".to_owned(),
                    format!("user-{}", generator.below(USERS)),
                )
            };
            let tenants =
                (0..1 + generator.below(3)).map(|_| format!("tenant-{}", generator.below(TENANTS)));
            let mut tenants: Vec<String> = tenants.collect();
            tenants.sort_unstable();
            tenants.dedup();
            PolicyDraft {
                name: format!("policy-{i}"),
                effect: if generator.below(10) == 0 {
                    "deny"
                } else {
                    "allow"
                }
                .to_owned(),
                subjects: vec![subject],
                actions: vec!["read".to_owned()],
                tenants,
                resources: vec!["metrics".to_owned()],
                filters: (0..generator.below(3))
                    .map(|k| filters[k].to_owned())
                    .collect(),
                description: String::new(),
            }
            .validate()
            .unwrap()
        })
        .collect();
    (tenants, policies)
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

/// Loads a bundle file and reports the peak memory of a process that only holds it, the way a
/// proxy does: `bundle --hold FILE`, run by `main` as a child process.
fn hold(path: &str) {
    let baseline = peak_rss_mib();
    let bytes = std::fs::read(path).unwrap();
    let engine = EmbeddedEngine::from_bundle(&bytes).unwrap();
    drop(bytes);
    black_box(&engine);
    println!("{baseline:.0} {:.0}", peak_rss_mib());
}

fn main() {
    let arguments: Vec<String> = std::env::args().collect();
    if let Some(position) = arguments.iter().position(|argument| argument == "--hold") {
        return hold(&arguments[position + 1]);
    }
    let mut generator = Generator(0x9e37_79b9_7f4a_7c15);
    let (tenants, policies) = state(&mut generator);
    println!(
        "state: {TENANTS} tenants, {POLICIES} policies; peak RSS so far {:.0} MiB",
        peak_rss_mib()
    );

    let builds: Vec<Duration> = (0..3)
        .map(|_| {
            let started = Instant::now();
            black_box(bundle::build(1, &tenants, &policies).unwrap());
            started.elapsed()
        })
        .collect();
    let json_baseline: Vec<Duration> = (0..3)
        .map(|_| {
            let started = Instant::now();
            // The same data, as a serde_json value serialised in one go.
            let document: Vec<serde_json::Value> = policies
                .iter()
                .map(|policy| serde_json::to_value(policy).unwrap())
                .collect();
            black_box(serde_json::to_vec(&(document, &tenants)).unwrap());
            started.elapsed()
        })
        .collect();
    let built = bundle::build(1, &tenants, &policies).unwrap();
    let (build, json) = (median(builds), median(json_baseline));
    println!(
        "bundle build: {build:?} (median of 3), {} bytes gzipped; baseline JSON of the same data {json:?}: ratio {:.2}",
        built.bytes.len(),
        build.as_secs_f64() / json.as_secs_f64()
    );

    let file = std::env::temp_dir().join(format!("heimdall-bench-{}.tar.gz", std::process::id()));
    std::fs::write(&file, &built.bytes).unwrap();
    let held = std::process::Command::new(std::env::current_exe().unwrap())
        .arg("--hold")
        .arg(&file)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&file);
    let held = String::from_utf8_lossy(&held.stdout).into_owned();
    let mut figures = held.split_whitespace();
    let (empty, holding) = (figures.next().unwrap_or("?"), figures.next().unwrap_or("?"));
    println!(
        "a process holding the loaded bundle: peak RSS {holding} MiB; the same process before \
         loading: {empty} MiB"
    );

    let started = Instant::now();
    let engine = EmbeddedEngine::from_bundle(&built.bytes).unwrap();
    println!(
        "engine load: {:?}; peak RSS {:.0} MiB",
        started.elapsed(),
        peak_rss_mib()
    );

    let inputs: Vec<DecisionInput> = (0..DECISIONS)
        .map(|_| DecisionInput {
            subject: SubjectIdentity {
                user: format!("user-{}", generator.below(USERS)),
                groups: vec![format!("group-{}", generator.below(GROUPS))],
            },
            tenant: format!("tenant-{}", generator.below(TENANTS)),
            action: "read".to_owned(),
            resource: "metrics".to_owned(),
        })
        .collect();
    let mut allowed = 0;
    let decisions: Vec<Duration> = inputs
        .iter()
        .map(|input| {
            let started = Instant::now();
            let decision = engine.decide(input).unwrap();
            let elapsed = started.elapsed();
            allowed += usize::from(decision.allowed);
            elapsed
        })
        .collect();
    let mut sorted = decisions.clone();
    sorted.sort_unstable();
    let p99 = sorted[sorted.len() * 99 / 100];
    let decision = median(decisions);

    // Inputs drawn from the policies themselves, so that most of them match: the allow path.
    let matching_inputs: Vec<DecisionInput> = (0..DECISIONS)
        .map(|_| {
            let policy = &policies[generator.below(POLICIES)];
            let subject = &policy.subjects[0];
            let (user, groups) = match subject.kind {
                heimdall_opa::SubjectKind::User => (subject.id.clone(), Vec::new()),
                heimdall_opa::SubjectKind::Group => ("nobody".to_owned(), vec![subject.id.clone()]),
            };
            let tenant = policy.scope.tenants[0].as_str().to_owned();
            DecisionInput {
                subject: SubjectIdentity { user, groups },
                tenant,
                action: "read".to_owned(),
                resource: "metrics".to_owned(),
            }
        })
        .collect();
    let mut matched_allowed = 0;
    let matched: Vec<Duration> = matching_inputs
        .iter()
        .map(|input| {
            let started = Instant::now();
            let decision = engine.decide(input).unwrap();
            let elapsed = started.elapsed();
            matched_allowed += usize::from(decision.allowed);
            elapsed
        })
        .collect();
    println!(
        "uncached decision on inputs that match a policy: median {:?} ({matched_allowed} of \
         {DECISIONS} allowed)",
        median(matched)
    );

    let small = bundle::build(1, &tenants[..1], &policies[..1]).unwrap();
    let small_engine = EmbeddedEngine::from_bundle(&small.bytes).unwrap();
    let baseline: Vec<Duration> = inputs
        .iter()
        .take(500)
        .map(|input| {
            let started = Instant::now();
            black_box(small_engine.decide(input).unwrap());
            started.elapsed()
        })
        .collect();
    let baseline = median(baseline);
    println!(
        "uncached decision: median {decision:?}, p99 {p99:?} ({allowed} of {DECISIONS} allowed); \
         same policy on a 1-policy bundle {baseline:?}: ratio {:.2}",
        decision.as_secs_f64() / baseline.as_secs_f64()
    );
    println!("peak RSS at the end: {:.0} MiB", peak_rss_mib());
}
