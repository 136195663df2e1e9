use proptest::prelude::*;

use super::*;

fn matcher(raw: &str) -> Matcher {
    let (label, operator, value) = ["=~", "!~", "!=", "="]
        .iter()
        .find_map(|operator| {
            raw.split_once(operator)
                .map(|(label, value)| (label, *operator, value.trim_matches('"')))
        })
        .expect("test matchers have an operator");
    Enforcement::matcher(label, operator, value).expect("test matchers are valid")
}

fn sets(raw: &[&[&str]]) -> Enforcement {
    let alternatives = raw
        .iter()
        .map(|set| set.iter().map(|m| matcher(m)).collect())
        .collect();
    Enforcement::new(alternatives, vec!["p1".to_owned(), "p2".to_owned()])
        .expect("test sets are not empty")
}

fn enforce(enforcement: &Enforcement, query: &str) -> String {
    enforcement
        .enforce_query(query)
        .unwrap_or_else(|error| panic!("{query}: {error}"))
}

#[test]
fn one_set_is_injected_into_every_selector_kind() {
    let prod = sets(&[&[r#"env="prod""#]]);
    let cases = [
        ("up", r#"up{env="prod"}"#),
        (
            r#"rate(http_requests_total{job="api"}[5m])"#,
            r#"rate(http_requests_total{env="prod",job="api"}[5m])"#,
        ),
        (
            "topk(scalar(count(x)), y)",
            r#"topk(scalar(count(x{env="prod"})), y{env="prod"})"#,
        ),
        (
            "quantile(scalar(x), y)",
            r#"quantile(scalar(x{env="prod"}), y{env="prod"})"#,
        ),
        (
            "max_over_time(rate(x[5m])[1h:1m] offset 1h)",
            r#"max_over_time(rate(x{env="prod"}[5m])[1h:1m] offset 1h)"#,
        ),
        (
            "x @ 100 / y offset 5m",
            r#"x{env="prod"} @ 100.000 / y{env="prod"} offset 5m"#,
        ),
        (
            r#"count_values("v", x) or -vector(1)"#,
            r#"count_values("v", x{env="prod"}) or -vector(1)"#,
        ),
    ];
    for (query, expected) in cases {
        assert_eq!(enforce(&prod, query), expected, "{query}");
    }
}

#[test]
fn a_users_own_matcher_only_narrows() {
    let prod = sets(&[&[r#"env="prod""#]]);
    // Asking for another environment keeps both matchers: an empty answer, never dev data.
    assert_eq!(
        enforce(&prod, r#"up{env="dev"}"#),
        r#"up{env="dev",env="prod"}"#
    );
    assert_eq!(
        enforce(&prod, r#"up{env=~".*"}"#),
        r#"up{env="prod",env=~".*"}"#
    );
}

#[test]
fn sets_differing_in_one_label_become_one_quoted_regex() {
    let two = sets(&[
        &[r#"env="prod""#, r#"team="a.b""#],
        &[r#"env="prod""#, r#"team="c|d""#],
    ]);
    assert_eq!(enforce(&two, "up"), r#"up{env="prod",team=~"a\\.b|c\\|d"}"#);
}

#[test]
fn general_unions_are_lifted_to_per_series_functions() {
    let mixed = sets(&[&[r#"env="prod""#], &[r#"team="a""#]]);
    assert_eq!(
        enforce(&mixed, "sum(rate(x[5m]))"),
        r#"sum(((rate(x{env="prod"}[5m])) or (rate(x{team="a"}[5m]))))"#
    );
    assert_eq!(
        enforce(&mixed, "x > 1"),
        r#"((x{env="prod"}) or (x{team="a"})) > 1"#
    );
    assert_eq!(
        enforce(&mixed, "quantile_over_time(0.9, x[5m])"),
        r#"((quantile_over_time(0.9, x{env="prod"}[5m])) or (quantile_over_time(0.9, x{team="a"}[5m])))"#
    );
}

#[test]
fn unions_without_an_exact_form_are_refused_naming_the_policies() {
    let mixed = sets(&[&[r#"env="prod""#], &[r#"team="a""#]]);
    for query in [r#"{job="api"}"#, r#"{__name__=~"x|y"}"#, "x[5m]"] {
        let error = mixed.enforce_query(query).expect_err(query);
        let EnforceError::Inexpressible { policies, .. } = error else {
            panic!("{query}: {error:?}");
        };
        assert_eq!(policies, "p1, p2");
    }
}

#[test]
fn absent_keeps_the_labels_of_the_users_own_matchers() {
    let prod = sets(&[&[r#"env="prod""#]]);
    assert_eq!(
        enforce(&prod, r#"absent(up{job="api"})"#),
        r#"label_replace((vector(1) unless on () (up{env="prod",job="api"})), "job", "api", "", "")"#
    );
    assert_eq!(
        enforce(&prod, "absent_over_time(up[5m])"),
        r#"(vector(1) unless on () (count_over_time(up{env="prod"}[5m])))"#
    );
    assert_eq!(
        enforce(&prod, "absent_over_time(rate(up[5m])[1h:])"),
        r#"(vector(1) unless on () (count_over_time(rate(up{env="prod"}[5m])[1h:])))"#
    );
}

#[test]
fn syntax_prometheus_does_not_have_is_refused() {
    let prod = sets(&[&[r#"env="prod""#]]);
    for query in [
        r#"up{a="1" or b="2"}"#,
        "up[5m",
        "",
        "sum(",
        r#"info(up)"#,
        "up @ -100",
    ] {
        assert!(
            matches!(prod.enforce_query(query), Err(EnforceError::Invalid(_))),
            "{query}"
        );
    }
}

#[test]
fn series_selectors_are_restricted_and_built_when_missing() {
    let mixed = sets(&[&[r#"env="prod""#], &[r#"team="a""#]]);
    assert_eq!(
        mixed.enforce_series_selector(r#"{job="api"}"#).unwrap(),
        vec![r#"{env="prod",job="api"}"#, r#"{job="api",team="a"}"#]
    );
    assert_eq!(
        mixed.readable_series_selectors(),
        vec![
            r#"{__name__=~".+",env="prod"}"#,
            r#"{__name__=~".+",team="a"}"#
        ]
    );
    assert!(mixed.enforce_series_selector("sum(up)").is_err());
}

#[test]
fn an_empty_set_means_unrestricted() {
    assert!(Enforcement::new(vec![vec![matcher(r#"env="prod""#)], vec![]], vec![]).is_none());
    assert!(Enforcement::new(vec![], vec![]).is_none());
}

/// Every selector of an expression, as written.
fn selectors(expr: &Expr, found: &mut Vec<VectorSelector>) {
    match expr {
        Expr::Aggregate(aggregate) => {
            selectors(&aggregate.expr, found);
            if let Some(param) = &aggregate.param {
                selectors(param, found);
            }
        }
        Expr::Unary(unary) => selectors(&unary.expr, found),
        Expr::Binary(binary) => {
            selectors(&binary.lhs, found);
            selectors(&binary.rhs, found);
        }
        Expr::Paren(paren) => selectors(&paren.expr, found),
        Expr::Subquery(subquery) => selectors(&subquery.expr, found),
        Expr::VectorSelector(vs) => found.push(vs.clone()),
        Expr::MatrixSelector(matrix) => found.push(matrix.vs.clone()),
        Expr::Call(call) => call.args.args.iter().for_each(|a| selectors(a, found)),
        _ => {}
    }
}

fn metric() -> impl Strategy<Value = String> {
    prop_oneof![Just("x"), Just("y"), Just("http_requests_total")].prop_map(str::to_owned)
}

fn user_matchers() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just(r#"job="api""#),
            Just(r#"env="dev""#),
            Just(r#"env=~"p.*""#),
            Just(r#"team!="b""#),
        ],
        0..3,
    )
    .prop_map(|matchers| {
        if matchers.is_empty() {
            String::new()
        } else {
            format!("{{{}}}", matchers.join(","))
        }
    })
}

fn instant() -> impl Strategy<Value = String> {
    (
        metric(),
        user_matchers(),
        prop_oneof![Just(""), Just(" offset 5m"), Just(" @ 1000")],
    )
        .prop_map(|(metric, matchers, modifier)| format!("{metric}{matchers}{modifier}"))
}

fn query() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        instant(),
        (metric(), user_matchers()).prop_map(|(m, s)| format!("rate({m}{s}[5m])")),
        (metric(), user_matchers()).prop_map(|(m, s)| format!("max_over_time({m}{s}[10m])")),
        Just("vector(1)".to_owned()),
    ];
    leaf.prop_recursive(3, 16, 2, |inner| {
        prop_oneof![
            inner.clone().prop_map(|q| format!("sum by (job) ({q})")),
            (inner.clone(), inner.clone())
                .prop_map(|(a, b)| format!("topk(scalar(count({a})), {b})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} / {b}")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} and on(job) {b}")),
            inner
                .clone()
                .prop_map(|q| format!("avg_over_time(({q})[30m:1m])")),
            inner.clone().prop_map(|q| format!("absent({q})")),
            inner
                .clone()
                .prop_map(|q| format!("histogram_quantile(0.9, {q})")),
            inner.prop_map(|q| format!("-({q})")),
        ]
    })
}

fn filter_sets() -> impl Strategy<Value = Vec<Vec<String>>> {
    let matcher = prop_oneof![
        Just(r#"env="prod""#),
        Just(r#"env="staging""#),
        Just(r#"team=~"a|b""#),
        Just(r#"region!="eu""#),
        Just(r#"__tenant_id__="acme""#),
    ];
    prop::collection::vec(
        prop::collection::vec(matcher.prop_map(str::to_owned), 1..3),
        1..4,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// The rewritten query parses, every selector in it carries one whole filter set, and
    /// rewriting it again changes nothing.
    #[test]
    fn rewritten_queries_are_restricted_and_stable(query in query(), raw_sets in filter_sets()) {
        let alternatives: Vec<Vec<Matcher>> = raw_sets
            .iter()
            .map(|set| set.iter().map(|m| matcher(m)).collect())
            .collect();
        let enforcement = Enforcement::new(alternatives.clone(), vec!["p".to_owned()])
            .expect("generated sets are not empty");
        prop_assume!(parser::parse(&query).is_ok());
        let rewritten = match enforcement.enforce_query(&query) {
            Ok(rewritten) => rewritten,
            Err(EnforceError::Inexpressible { .. }) => return Ok(()),
            Err(error) => panic!("{query}: {error}"),
        };
        let expr = parser::parse(&rewritten).expect("the rewrite parses");
        let mut found = Vec::new();
        selectors(&expr, &mut found);
        let Shape::Inject(injected) = &enforcement.shape else {
            for vs in &found {
                let restricted = alternatives.iter().any(|set| {
                    set.iter().all(|m| vs.matchers.matchers.contains(m))
                });
                // vector(1) has no selector; every real selector must carry a set.
                prop_assert!(restricted, "{vs} in {rewritten}");
            }
            prop_assert_eq!(enforcement.enforce_query(&rewritten).unwrap(), rewritten);
            return Ok(());
        };
        for vs in &found {
            for m in injected {
                prop_assert!(vs.matchers.matchers.contains(m), "{vs} lacks {m} in {rewritten}");
            }
        }
        prop_assert_eq!(enforcement.enforce_query(&rewritten).unwrap(), rewritten);
    }
}
