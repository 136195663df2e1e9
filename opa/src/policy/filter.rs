//! Label filters: the PromQL label matchers (`env="prod"`, `team=~"a|b"`) that restrict which
//! series a policy grants. Parsed with promql-parser, so a filter means what it means in PromQL.

use std::fmt;

use promql_parser::label::MatchOp;
use promql_parser::parser::{self, Expr};
use serde::Serialize;

/// A metric name that no user query can collide with, used to parse a lone matcher.
const CARRIER_METRIC: &str = "heimdall_filter_carrier";

/// How a filter compares a label's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MatchOperator {
    Equal,
    NotEqual,
    Regex,
    NotRegex,
}

impl MatchOperator {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Equal => "=",
            Self::NotEqual => "!=",
            Self::Regex => "=~",
            Self::NotRegex => "!~",
        }
    }
}

/// One validated label matcher.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LabelFilter {
    pub label: String,
    pub operator: MatchOperator,
    pub value: String,
}

impl LabelFilter {
    /// Parses one matcher such as `env="prod"`; the error is the reason it is refused.
    ///
    /// Refused: empty strings, anything but exactly one matcher, `or` between matchers (which
    /// promql-parser accepts but Prometheus does not), reserved `__` labels such as `__name__`,
    /// invalid regular expressions.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err("must not be empty".to_owned());
        }
        let expr = parser::parse(&format!("{CARRIER_METRIC}{{{trimmed}}}"))
            .map_err(|error| format!("{raw:?} is not a PromQL label matcher: {error}"))?;
        let Expr::VectorSelector(selector) = expr else {
            return Err(format!("{raw:?} is not a single PromQL label matcher"));
        };
        if !selector.matchers.or_matchers.is_empty() {
            return Err(format!(
                "{raw:?} uses `or` between matchers, which PromQL does not have"
            ));
        }
        if selector.offset.is_some() || selector.at.is_some() {
            return Err(format!("{raw:?} is not a single PromQL label matcher"));
        }
        let mut matchers = selector
            .matchers
            .matchers
            .into_iter()
            .filter(|matcher| !(matcher.name == "__name__" && matcher.value == CARRIER_METRIC));
        let (Some(matcher), None) = (matchers.next(), matchers.next()) else {
            return Err(format!("{raw:?} must be exactly one label matcher"));
        };
        if matcher.name.starts_with("__") {
            return Err(format!(
                "{raw:?} filters on the reserved label {}",
                matcher.name
            ));
        }
        let operator = match matcher.op {
            MatchOp::Equal => MatchOperator::Equal,
            MatchOp::NotEqual => MatchOperator::NotEqual,
            MatchOp::Re(_) => MatchOperator::Regex,
            MatchOp::NotRe(_) => MatchOperator::NotRegex,
        };
        Ok(Self {
            label: matcher.name,
            operator,
            value: matcher.value,
        })
    }
}

/// Writes the filter in canonical PromQL: `label<op>"escaped value"`.
impl fmt::Display for LabelFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}\"", self.label, self.operator.as_str())?;
        for c in self.value.chars() {
            match c {
                '\\' => f.write_str("\\\\")?,
                '"' => f.write_str("\\\"")?,
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                other => write!(f, "{other}")?,
            }
        }
        f.write_str("\"")
    }
}

impl Serialize for LabelFilter {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(raw: &str) -> LabelFilter {
        LabelFilter::parse(raw).unwrap_or_else(|error| panic!("{raw}: {error}"))
    }

    #[test]
    fn parses_each_operator() {
        assert_eq!(filter(r#"env="prod""#).operator, MatchOperator::Equal);
        assert_eq!(filter(r#"env!="dev""#).operator, MatchOperator::NotEqual);
        assert_eq!(filter(r#"team=~"a|b""#).operator, MatchOperator::Regex);
        assert_eq!(filter(r#"team!~"x.*""#).operator, MatchOperator::NotRegex);
        let parsed = filter(r#" team =~ "a|b" "#);
        assert_eq!(
            (parsed.label.as_str(), parsed.value.as_str()),
            ("team", "a|b")
        );
    }

    #[test]
    fn canonical_form_round_trips() {
        for raw in [
            r#"env="prod""#,
            r#"path=~"/a\\.b""#,
            r#"msg!="say \"hi\"""#,
            r#"x!~"""#,
        ] {
            let parsed = filter(raw);
            assert_eq!(filter(&parsed.to_string()), parsed, "{raw}");
        }
        assert_eq!(filter("env = 'prod'").to_string(), r#"env="prod""#);
    }

    #[test]
    fn refuses_what_is_not_one_safe_matcher() {
        let refused = [
            "",
            "   ",
            "env",
            r#"env="prod",team="a""#,
            r#"env="prod" or team="a""#,
            r#"__name__="up""#,
            r#"__tenant_id__="acme""#,
            r#"env="prod"} or vector(1) or up{a="b""#,
            r#"env=~"(""#,
            r#"env="prod"}[5m] + up{x="y""#,
            "}",
        ];
        for raw in refused {
            assert!(LabelFilter::parse(raw).is_err(), "accepted {raw:?}");
        }
    }
}
