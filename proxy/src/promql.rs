//! PromQL enforcement: rewrites every selector of a query so that it reads only series inside the
//! caller's filter sets. Pure and without I/O; the AST is walked by hand, every node kind, since
//! promql-parser's own walker skips aggregation parameters.
//!
//! A readable series is one that satisfies every matcher of at least one *alternative* (one
//! filter set, possibly bound to a tenant by `__tenant_id__`). Three shapes, in order of
//! preference:
//! - one alternative: its matchers are added to every selector;
//! - alternatives that differ only in one label's `=`/`=~` value: one quoted regex on that label;
//! - anything else: each selector (or the per-series range function around it) becomes a union,
//!   `(a{S1}) or (a{S2})`, which is exact only for selectors of one fixed metric name. When no
//!   exact form exists the query is refused with 422, never answered wider.

use std::collections::BTreeSet;

use promql_parser::label::{MatchOp, Matcher, Matchers};
use std::time::UNIX_EPOCH;

use promql_parser::parser::{self, AtModifier, Expr, VectorSelector};

#[cfg(test)]
mod tests;

/// The label Mimir's tenant federation puts on every series.
pub const TENANT_LABEL: &str = "__tenant_id__";
const METRIC_NAME: &str = "__name__";

/// Range-vector functions whose result for a series depends on that series alone: a union of
/// filter sets can be lifted to them exactly. The value is the index of the range argument.
const PER_SERIES_RANGE_FUNCTIONS: &[(&str, usize)] = &[
    ("rate", 0),
    ("irate", 0),
    ("increase", 0),
    ("delta", 0),
    ("idelta", 0),
    ("deriv", 0),
    ("predict_linear", 0),
    ("holt_winters", 0),
    ("changes", 0),
    ("resets", 0),
    ("avg_over_time", 0),
    ("min_over_time", 0),
    ("max_over_time", 0),
    ("sum_over_time", 0),
    ("count_over_time", 0),
    ("stddev_over_time", 0),
    ("stdvar_over_time", 0),
    ("last_over_time", 0),
    ("present_over_time", 0),
    ("quantile_over_time", 1),
];

/// Why a query cannot be enforced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnforceError {
    /// The query is not valid PromQL as Prometheus reads it: 400.
    #[error("invalid query: {0}")]
    Invalid(String),
    /// The query is valid but cannot be narrowed exactly to the union of the filter sets: 422.
    #[error("{reason}; the query cannot be restricted exactly to the filters of {policies}")]
    Inexpressible { reason: String, policies: String },
}

/// How queries of one request are narrowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enforcement {
    shape: Shape,
    /// The policies behind the filters, named in errors.
    policies: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Shape {
    /// Every selector gets these matchers.
    Inject(Vec<Matcher>),
    /// A series must satisfy one of these sets.
    Union(Vec<Vec<Matcher>>),
}

impl Enforcement {
    /// Builds the enforcement of `alternatives` (each a list of matchers); None when one of them
    /// is empty, which means every series is readable.
    pub fn new(alternatives: Vec<Vec<Matcher>>, policies: Vec<String>) -> Option<Self> {
        let mut sets: Vec<Vec<Matcher>> = Vec::new();
        for alternative in alternatives {
            let set = normalise(alternative);
            if set.is_empty() {
                return None;
            }
            if !sets.contains(&set) {
                sets.push(set);
            }
        }
        let shape = match sets.len() {
            0 => return None,
            1 => Shape::Inject(sets.remove(0)),
            _ => match merge_on_one_label(&sets) {
                Some(merged) => Shape::Inject(merged),
                None => Shape::Union(sets),
            },
        };
        Some(Self { shape, policies })
    }

    /// Returns whether a series with these labels (`label(name)` is "" when absent) is inside
    /// the filter sets.
    pub fn admits<'a>(&self, label: impl Fn(&str) -> &'a str) -> bool {
        let satisfies = |set: &[Matcher]| set.iter().all(|m| m.is_match(label(&m.name)));
        match &self.shape {
            Shape::Inject(matchers) => satisfies(matchers),
            Shape::Union(sets) => sets.iter().any(|set| satisfies(set)),
        }
    }

    /// Returns the policies whose filters this enforces.
    pub fn policies(&self) -> &[String] {
        &self.policies
    }

    /// Parses a policy filter (`env="prod"`) into a matcher.
    pub fn matcher(label: &str, operator: &str, value: &str) -> Result<Matcher, String> {
        let op = match operator {
            "=" => MatchOp::Equal,
            "!=" => MatchOp::NotEqual,
            "=~" => MatchOp::Re(anchored(value)?),
            "!~" => MatchOp::NotRe(anchored(value)?),
            other => return Err(format!("unknown operator {other}")),
        };
        Ok(Matcher::new(op, label, value))
    }

    /// Rewrites a PromQL expression.
    pub fn enforce_query(&self, query: &str) -> Result<String, EnforceError> {
        let expr = parse(query)?;
        Ok(self.enforce_expr(expr)?.to_string())
    }

    /// Rewrites a series selector of `match[]` into the selectors whose union is readable.
    pub fn enforce_series_selector(&self, selector: &str) -> Result<Vec<String>, EnforceError> {
        let Expr::VectorSelector(vs) = parse(selector)? else {
            return Err(EnforceError::Invalid(format!(
                "{selector:?} is not a series selector"
            )));
        };
        Ok(match &self.shape {
            Shape::Inject(matchers) => vec![inject(vs, matchers).to_string()],
            Shape::Union(sets) if already_restricted(&vs, sets) => vec![vs.to_string()],
            Shape::Union(sets) => sets
                .iter()
                .map(|set| inject(vs.clone(), set).to_string())
                .collect(),
        })
    }

    /// Returns series selectors that together match exactly the readable series, for endpoints
    /// called without `match[]`.
    pub fn readable_series_selectors(&self) -> Vec<String> {
        let any_name = Matcher::new(
            MatchOp::Re(anchored(".+").expect("a constant regex should compile")),
            METRIC_NAME,
            ".+",
        );
        let base = VectorSelector::new(None, Matchers::new(vec![any_name]));
        match &self.shape {
            Shape::Inject(matchers) => vec![inject(base, matchers).to_string()],
            Shape::Union(sets) => sets
                .iter()
                .map(|set| inject(base.clone(), set).to_string())
                .collect(),
        }
    }

    fn enforce_expr(&self, expr: Expr) -> Result<Expr, EnforceError> {
        let rewritten = match expr {
            Expr::Aggregate(mut aggregate) => {
                let ranking = matches!(aggregate.op.to_string().as_str(), "topk" | "bottomk");
                if let Shape::Union(sets) = &self.shape
                    && ranking
                    && has_unrestricted_selector(&aggregate.expr, sets)
                {
                    return Err(self.inexpressible(format!(
                        "{} breaks ties by the order of series, which a union of filter sets \
                         changes",
                        aggregate.op
                    )));
                }
                aggregate.expr = Box::new(self.enforce_expr(*aggregate.expr)?);
                if let Some(param) = aggregate.param.take() {
                    aggregate.param = Some(Box::new(self.enforce_expr(*param)?));
                }
                Expr::Aggregate(aggregate)
            }
            Expr::Unary(mut unary) => {
                unary.expr = Box::new(self.enforce_expr(*unary.expr)?);
                Expr::Unary(unary)
            }
            Expr::Binary(mut binary) => {
                binary.lhs = Box::new(self.enforce_expr(*binary.lhs)?);
                binary.rhs = Box::new(self.enforce_expr(*binary.rhs)?);
                Expr::Binary(binary)
            }
            Expr::Paren(mut paren) => {
                paren.expr = Box::new(self.enforce_expr(*paren.expr)?);
                Expr::Paren(paren)
            }
            Expr::Subquery(mut subquery) => {
                subquery.expr = Box::new(self.enforce_expr(*subquery.expr)?);
                Expr::Subquery(subquery)
            }
            literal @ (Expr::NumberLiteral(_) | Expr::StringLiteral(_)) => literal,
            Expr::VectorSelector(vs) => self.enforce_instant(vs)?,
            Expr::MatrixSelector(mut matrix) => match &self.shape {
                Shape::Inject(matchers) => {
                    matrix.vs = inject(matrix.vs, matchers);
                    Expr::MatrixSelector(matrix)
                }
                Shape::Union(sets) if already_restricted(&matrix.vs, sets) => {
                    Expr::MatrixSelector(matrix)
                }
                Shape::Union(_) => {
                    return Err(self.inexpressible(format!(
                        "the range selector {matrix} is not the argument of a per-series range \
                         function"
                    )));
                }
            },
            Expr::Call(call) => self.enforce_call(call)?,
            Expr::Extension(_) => {
                return Err(EnforceError::Invalid("unsupported expression".to_owned()));
            }
        };
        Ok(rewritten)
    }

    fn enforce_instant(&self, vs: VectorSelector) -> Result<Expr, EnforceError> {
        match &self.shape {
            Shape::Inject(matchers) => Ok(Expr::VectorSelector(inject(vs, matchers))),
            Shape::Union(sets) if already_restricted(&vs, sets) => Ok(Expr::VectorSelector(vs)),
            Shape::Union(sets) => {
                self.require_fixed_name(&vs)?;
                let parts: Vec<String> = sets
                    .iter()
                    .map(|set| inject(vs.clone(), set).to_string())
                    .collect();
                union_of(&parts)
            }
        }
    }

    fn enforce_call(&self, mut call: parser::Call) -> Result<Expr, EnforceError> {
        if matches!(call.func.name, "absent" | "absent_over_time") {
            return self.enforce_absent(call);
        }
        let lifted = PER_SERIES_RANGE_FUNCTIONS
            .iter()
            .find(|(name, _)| *name == call.func.name)
            .map(|(_, index)| *index);
        if let (Shape::Union(sets), Some(index)) = (&self.shape, lifted)
            && let Some(Expr::MatrixSelector(matrix)) = call.args.args.get(index).map(|a| &**a)
            && !already_restricted(&matrix.vs, sets)
        {
            self.require_fixed_name(&matrix.vs)?;
            // The other arguments are scalars; they are enforced once, then shared.
            for (position, argument) in call.args.args.iter_mut().enumerate() {
                if position != index {
                    let enforced = self.enforce_expr((**argument).clone())?;
                    **argument = enforced;
                }
            }
            let mut parts = Vec::with_capacity(sets.len());
            for set in sets {
                let mut variant = call.clone();
                if let Expr::MatrixSelector(matrix) = &mut *variant.args.args[index] {
                    matrix.vs = inject(matrix.vs.clone(), set);
                }
                parts.push(Expr::Call(variant).to_string());
            }
            return union_of(&parts);
        }
        for argument in &mut call.args.args {
            let enforced = self.enforce_expr((**argument).clone())?;
            **argument = enforced;
        }
        Ok(Expr::Call(call))
    }

    /// `absent(v)` labels its answer from the equality matchers of `v`, so injected matchers
    /// would show. It is rewritten to the same answer built by hand: `vector(1)`, unless the
    /// enforced argument has series, labelled as Prometheus would label it from the user's own
    /// matchers.
    fn enforce_absent(&self, call: parser::Call) -> Result<Expr, EnforceError> {
        let Some(argument) = call.args.args.first() else {
            return Err(EnforceError::Invalid(format!("{call} needs an argument")));
        };
        let original = (**argument).clone();
        let labels = match &original {
            Expr::VectorSelector(vs) => absent_labels(vs),
            Expr::MatrixSelector(matrix) => absent_labels(&matrix.vs),
            _ => Vec::new(),
        };
        let presence = match original {
            // A subquery is a range too: its presence is counted like a range selector's.
            Expr::Subquery(subquery) => {
                let enforced = self.enforce_expr(Expr::Subquery(subquery))?;
                format!("count_over_time({enforced})")
            }
            Expr::MatrixSelector(matrix) => {
                let enforced = self.enforce_expr(Expr::MatrixSelector(matrix.clone()));
                match enforced {
                    Ok(enforced) => format!("count_over_time({enforced})"),
                    // A lone range selector under a union: lift through count_over_time.
                    Err(_) => {
                        let wrapped = parse(&format!("count_over_time({matrix})"))?;
                        self.enforce_expr(wrapped)?.to_string()
                    }
                }
            }
            other => self.enforce_expr(other)?.to_string(),
        };
        let mut text = format!("(vector(1) unless on() ({presence}))");
        for (name, value) in labels {
            text = format!(
                "label_replace({text}, {}, {}, \"\", \"\")",
                quote(&name),
                quote(&value)
            );
        }
        parse(&text)
    }

    fn require_fixed_name(&self, vs: &VectorSelector) -> Result<(), EnforceError> {
        if fixed_name(vs).is_some() {
            return Ok(());
        }
        Err(self.inexpressible(format!(
            "the selector {vs} does not name one metric, and the union of several filter sets \
             is exact only per metric"
        )))
    }

    fn inexpressible(&self, reason: String) -> EnforceError {
        EnforceError::Inexpressible {
            reason,
            policies: self.policies.join(", "),
        }
    }
}

/// Parses a query and refuses what promql-parser accepts but Prometheus does not.
fn parse(query: &str) -> Result<Expr, EnforceError> {
    let expr = parser::parse(query).map_err(EnforceError::Invalid)?;
    check_prometheus_syntax(&expr)?;
    Ok(expr)
}

fn check_prometheus_syntax(expr: &Expr) -> Result<(), EnforceError> {
    let selector = match expr {
        Expr::VectorSelector(vs) => Some(vs),
        Expr::MatrixSelector(matrix) => Some(&matrix.vs),
        _ => None,
    };
    if let Some(vs) = selector
        && !vs.matchers.or_matchers.is_empty()
    {
        return Err(EnforceError::Invalid(format!(
            "{vs}: `or` between label matchers is not PromQL"
        )));
    }
    let at = match expr {
        Expr::VectorSelector(vs) => vs.at.as_ref(),
        Expr::MatrixSelector(matrix) => matrix.vs.at.as_ref(),
        Expr::Subquery(subquery) => subquery.at.as_ref(),
        _ => None,
    };
    // promql-parser prints a time before 1970 as 0, which would move the query.
    if let Some(AtModifier::At(time)) = at
        && time.duration_since(UNIX_EPOCH).is_err()
    {
        return Err(EnforceError::Invalid(
            "`@` before 1970 is not supported".to_owned(),
        ));
    }
    let children: Vec<&Expr> = match expr {
        Expr::Aggregate(aggregate) => std::iter::once(&*aggregate.expr)
            .chain(aggregate.param.as_deref())
            .collect(),
        Expr::Unary(unary) => vec![&*unary.expr],
        Expr::Binary(binary) => vec![&*binary.lhs, &*binary.rhs],
        Expr::Paren(paren) => vec![&*paren.expr],
        Expr::Subquery(subquery) => vec![&*subquery.expr],
        Expr::Call(call) => {
            if matches!(call.func.name, "info" | "limitk" | "limit_ratio") {
                return Err(EnforceError::Invalid(format!(
                    "function {} is not supported",
                    call.func.name
                )));
            }
            call.args.args.iter().map(|argument| &**argument).collect()
        }
        _ => Vec::new(),
    };
    children.into_iter().try_for_each(check_prometheus_syntax)
}

/// Adds the matchers a selector does not have yet. A user's own matchers stay: they can only
/// narrow the result further.
fn inject(mut vs: VectorSelector, matchers: &[Matcher]) -> VectorSelector {
    for matcher in matchers {
        if !vs.matchers.matchers.contains(matcher) {
            vs.matchers.matchers.push(matcher.clone());
        }
    }
    vs
}

/// A selector that already carries every matcher of one set reads inside the union: leaving it
/// alone keeps the rewrite idempotent.
fn already_restricted(vs: &VectorSelector, sets: &[Vec<Matcher>]) -> bool {
    sets.iter().any(|set| {
        set.iter()
            .all(|matcher| vs.matchers.matchers.contains(matcher))
    })
}

/// Returns whether the expression holds a selector that a union would rewrite.
fn has_unrestricted_selector(expr: &Expr, sets: &[Vec<Matcher>]) -> bool {
    let unrestricted = |expr: &Expr| has_unrestricted_selector(expr, sets);
    match expr {
        Expr::Aggregate(aggregate) => {
            unrestricted(&aggregate.expr) || aggregate.param.as_deref().is_some_and(unrestricted)
        }
        Expr::Unary(unary) => unrestricted(&unary.expr),
        Expr::Binary(binary) => unrestricted(&binary.lhs) || unrestricted(&binary.rhs),
        Expr::Paren(paren) => unrestricted(&paren.expr),
        Expr::Subquery(subquery) => unrestricted(&subquery.expr),
        Expr::VectorSelector(vs) => !already_restricted(vs, sets),
        Expr::MatrixSelector(matrix) => !already_restricted(&matrix.vs, sets),
        Expr::Call(call) => call.args.args.iter().any(|argument| unrestricted(argument)),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => false,
    }
}

fn fixed_name(vs: &VectorSelector) -> Option<&str> {
    if let Some(name) = &vs.name {
        return Some(name);
    }
    vs.matchers
        .matchers
        .iter()
        .find(|matcher| matcher.name == METRIC_NAME && matcher.op == MatchOp::Equal)
        .map(|matcher| matcher.value.as_str())
}

/// The labels Prometheus gives `absent(vs)`: those set by exactly one equality matcher.
fn absent_labels(vs: &VectorSelector) -> Vec<(String, String)> {
    let mut labels: Vec<(String, String)> = Vec::new();
    let mut dropped = BTreeSet::new();
    for matcher in &vs.matchers.matchers {
        if matcher.name == METRIC_NAME {
            continue;
        }
        let seen = labels.iter().any(|(name, _)| *name == matcher.name);
        if matcher.op == MatchOp::Equal && !seen {
            labels.push((matcher.name.clone(), matcher.value.clone()));
        } else {
            dropped.insert(matcher.name.clone());
        }
    }
    labels.retain(|(name, _)| !dropped.contains(name));
    labels
}

fn union_of(parts: &[String]) -> Result<Expr, EnforceError> {
    let text = parts
        .iter()
        .map(|part| format!("({part})"))
        .collect::<Vec<_>>()
        .join(" or ");
    parse(&format!("({text})"))
}

/// Sorts and deduplicates the matchers of one set.
fn normalise(mut set: Vec<Matcher>) -> Vec<Matcher> {
    set.sort_by(|a, b| {
        (a.name.as_str(), a.op.to_string(), a.value.as_str()).cmp(&(
            b.name.as_str(),
            b.op.to_string(),
            b.value.as_str(),
        ))
    });
    set.dedup();
    set
}

/// Merges sets that are equal but for one label, which each set matches with `=` or `=~`, into
/// one set with a regex on that label.
fn merge_on_one_label(sets: &[Vec<Matcher>]) -> Option<Vec<Matcher>> {
    let candidates: BTreeSet<&str> = sets[0].iter().map(|m| m.name.as_str()).collect();
    'label: for label in candidates {
        let mut common: Option<Vec<Matcher>> = None;
        let mut alternatives = Vec::new();
        for set in sets {
            let (on_label, rest): (Vec<&Matcher>, Vec<&Matcher>) =
                set.iter().partition(|m| m.name == label);
            let [matcher] = on_label.as_slice() else {
                continue 'label;
            };
            let alternative = match &matcher.op {
                MatchOp::Equal => regex_escape(&matcher.value),
                MatchOp::Re(_) => format!("(?:{})", matcher.value),
                _ => continue 'label,
            };
            let rest: Vec<Matcher> = rest.into_iter().cloned().collect();
            match &common {
                None => common = Some(rest),
                Some(seen) if *seen == rest => {}
                Some(_) => continue 'label,
            }
            alternatives.push(alternative);
        }
        let pattern = alternatives.join("|");
        let regex = anchored(&pattern).ok()?;
        let mut merged = common.unwrap_or_default();
        merged.push(Matcher::new(MatchOp::Re(regex), label, &pattern));
        return Some(normalise(merged));
    }
    None
}

fn anchored(pattern: &str) -> Result<regex::Regex, String> {
    regex::Regex::new(&format!("^(?:{pattern})$")).map_err(|error| error.to_string())
}

/// Escapes a literal for a RE2 regular expression.
fn regex_escape(literal: &str) -> String {
    regex::escape(literal)
}

/// Quotes a string as a PromQL string literal.
fn quote(value: &str) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "\"\"".to_owned())
}
