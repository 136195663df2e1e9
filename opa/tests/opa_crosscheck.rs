//! Cross-check with OPA's own Go engine: the bundle's policy and data are evaluated on generated
//! states and inputs by regorus and by OPA (the PyPI wheel `opa-golib-python-bindings`, driven
//! by `opa/crosscheck/opa_eval.py`), and every decision must be identical. OPA also runs the
//! Rego tests of `opa/policy/authz_test.rego`.
//!
//! `HEIMDALL_OPA_BINDINGS` names the folder holding `opa_bindings`; the README's test command
//! downloads the wheel and sets it. Outside CI a missing folder skips the test; with `CI=true`
//! it fails.

use std::io::Write;
use std::process::Command;

use heimdall_opa::bundle;
use heimdall_opa::engine::{DecisionInput, EmbeddedEngine, SubjectIdentity};
use heimdall_opa::{Policy, PolicyDraft, Tenant};

const INPUTS_PER_STATE: usize = 400;
const STATES: u64 = 3;

/// A small deterministic generator (xorshift64*), so a failure can be replayed.
struct Generator(u64);

impl Generator {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }

    fn subset(&mut self, items: &[&str], most: usize) -> Vec<String> {
        let mut chosen: Vec<String> = Vec::new();
        for _ in 0..self.below(most + 1) {
            let item = self.pick(items).to_owned();
            if !chosen.contains(&item) {
                chosen.push(item);
            }
        }
        chosen
    }
}

const TENANTS: [&str; 5] = ["acme", "globex", "initech", "umbrella", "hooli"];
const UNREGISTERED: [&str; 2] = ["stark", "wayne"];
const USERS: [&str; 6] = ["alice", "bob", "carol", "dave", "erin", "frank"];
const GROUPS: [&str; 4] = ["sre", "dev", "audit", "ops"];
const ACTIONS: [&str; 6] = [
    "read",
    "write",
    "rules:read",
    "rules:write",
    "alerts:read",
    "*",
];
const FILTERS: [&str; 6] = [
    r#"env="prod""#,
    r#"env="staging""#,
    r#"team=~"a|b""#,
    r#"env!="dev""#,
    r#"region="eu""#,
    r#"team!~"x.*""#,
];

fn generate_state(generator: &mut Generator) -> (Vec<Tenant>, Vec<Policy>) {
    let tenants = TENANTS
        .iter()
        .map(|id| Tenant::new(id, &id.to_uppercase()).unwrap())
        .collect();
    let scope_choices: Vec<&str> = TENANTS
        .iter()
        .chain(&UNREGISTERED)
        .copied()
        .chain(["*"])
        .collect();
    let policies = (0..30)
        .map(|index| {
            let mut subjects = Vec::new();
            while subjects.is_empty() {
                for user in generator.subset(&USERS, 2) {
                    subjects.push(("user".to_owned(), user));
                }
                for group in generator.subset(&GROUPS, 1) {
                    subjects.push(("group".to_owned(), group));
                }
            }
            let mut actions = generator.subset(&ACTIONS, 2);
            if actions.is_empty() {
                actions.push("read".to_owned());
            }
            let mut tenants = generator.subset(&scope_choices, 2);
            if tenants.is_empty() {
                tenants.push("acme".to_owned());
            }
            let effect = if generator.below(5) == 0 {
                "deny"
            } else {
                "allow"
            };
            PolicyDraft {
                name: format!("p{index}"),
                effect: effect.to_owned(),
                subjects,
                actions,
                tenants,
                resources: vec!["metrics".to_owned()],
                filters: generator.subset(&FILTERS, 2),
                description: String::new(),
            }
            .validate()
            .expect("generated policies are valid")
        })
        .collect();
    (tenants, policies)
}

fn generate_input(generator: &mut Generator) -> DecisionInput {
    let tenant_choices: Vec<&str> = TENANTS.iter().chain(&UNREGISTERED).copied().collect();
    DecisionInput {
        subject: SubjectIdentity {
            user: generator.pick(&USERS).to_owned(),
            groups: generator.subset(&GROUPS, 2),
        },
        tenant: generator.pick(&tenant_choices).to_owned(),
        action: generator.pick(&ACTIONS[..5]).to_owned(),
        resource: "metrics".to_owned(),
    }
}

#[test]
fn opa_and_regorus_agree_on_every_generated_input() {
    let Some(bindings) = heimdall_tests::required_env("HEIMDALL_OPA_BINDINGS") else {
        return;
    };
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/crosscheck/opa_eval.py");
    let rego_tests = concat!(env!("CARGO_MANIFEST_DIR"), "/policy/authz_test.rego");
    let mut compared = 0;
    let (mut allowed, mut unrestricted, mut unions) = (0, 0, 0);
    for seed in 1..=STATES {
        let mut generator = Generator(0x9e37_79b9_7f4a_7c15 ^ seed);
        let (tenants, policies) = generate_state(&mut generator);
        let bundle = bundle::build(seed, &tenants, &policies).unwrap();
        let engine = EmbeddedEngine::from_bundle(&bundle.bytes).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let bundle_path = dir.path().join("bundle.tar.gz");
        std::fs::write(&bundle_path, &bundle.bytes).unwrap();
        let inputs: Vec<DecisionInput> = (0..INPUTS_PER_STATE)
            .map(|_| generate_input(&mut generator))
            .collect();
        let inputs_path = dir.path().join("inputs.jsonl");
        let mut file = std::fs::File::create(&inputs_path).unwrap();
        for input in &inputs {
            writeln!(file, "{}", serde_json::to_string(input).unwrap()).unwrap();
        }
        drop(file);

        let mut command = Command::new("python3");
        command
            .arg(script)
            .arg(&bundle_path)
            .arg(&inputs_path)
            .env("PYTHONPATH", &bindings);
        if seed == 1 {
            command.arg(rego_tests);
        }
        let output = command.output().expect("python3 should run");
        assert!(
            output.status.success(),
            "OPA failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let answers: Vec<serde_json::Value> = String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(answers.len(), inputs.len());

        for (input, answer) in inputs.iter().zip(&answers) {
            let ours = engine.decide(input).unwrap();
            allowed += usize::from(ours.allowed);
            unrestricted += usize::from(ours.unrestricted);
            unions += usize::from(ours.filter_sets.len() > 1);
            let decision = serde_json::to_value(ours).unwrap();
            assert_eq!(decision, answer["decision"], "seed {seed}, input {input:?}");
            let tenants = engine
                .accessible_tenants(&input.subject, &input.action)
                .unwrap();
            assert_eq!(
                serde_json::to_value(&tenants).unwrap(),
                answer["accessible_tenants"],
                "seed {seed}, input {input:?}"
            );
            compared += 1;
        }
    }
    assert_eq!(compared, INPUTS_PER_STATE * STATES as usize);
    // The generated cases must exercise every kind of answer, not only default denials.
    assert!(
        allowed > compared / 10 && allowed < compared * 9 / 10,
        "{allowed} of {compared} allowed"
    );
    assert!(
        unrestricted > 0 && unions > 0,
        "{unrestricted} unrestricted, {unions} unions"
    );
}
