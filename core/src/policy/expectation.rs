//! Expectations of a policy's SQL checks: `> 0`, `= 42`, `between 10 and 20`,
//! `no rows`, `= 'text'`. Parsed when the policy loads, so a typo is reported with its
//! line and column before any drill runs.

use std::fmt;

/// What a SQL check's result must be. Value comparisons use the first column of the
/// first row; a query that returns no rows fails them.
#[derive(Debug, Clone, PartialEq)]
pub enum Expectation {
    /// `<op> number`: the value, read as a number, compared with the operator.
    Compare(CompareOp, f64),
    /// `between A and B` (inclusive).
    Between(f64, f64),
    /// `= 'text'` or `!= 'text'`: the value as text.
    Text {
        /// Whether the value must equal (true) or differ from (false) the text.
        equal: bool,
        /// The text.
        text: String,
    },
    /// `no rows`: the query returns nothing (e.g. a list of broken invariants).
    NoRows,
    /// `some rows`: the query returns at least one row.
    SomeRows,
}

/// A numeric comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    /// `=`
    Eq,
    /// `!=` or `<>`
    Ne,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `<`
    Lt,
    /// `<=`
    Le,
}

impl CompareOp {
    fn symbol(self) -> &'static str {
        match self {
            CompareOp::Eq => "=",
            CompareOp::Ne => "!=",
            CompareOp::Gt => ">",
            CompareOp::Ge => ">=",
            CompareOp::Lt => "<",
            CompareOp::Le => "<=",
        }
    }

    fn holds(self, left: f64, right: f64) -> bool {
        match self {
            CompareOp::Eq => left == right,
            CompareOp::Ne => left != right,
            CompareOp::Gt => left > right,
            CompareOp::Ge => left >= right,
            CompareOp::Lt => left < right,
            CompareOp::Le => left <= right,
        }
    }
}

const FORMS: &str =
    "use \"> 0\", \"= 42\", \"<= 5\", \"between 10 and 20\", \"= 'text'\", \"no rows\" or \"some rows\"";

fn number(text: &str, whole: &str) -> Result<f64, String> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite())
        .ok_or_else(|| {
            format!(
                "expect {whole:?}: {:?} is not a number; {FORMS}",
                text.trim()
            )
        })
}

impl Expectation {
    /// Parse an `expect = "…"` value.
    pub fn parse(text: &str) -> Result<Expectation, String> {
        let t = text.trim();
        let lower = t.to_ascii_lowercase();
        match lower.split_whitespace().collect::<Vec<_>>().as_slice() {
            ["no", "rows"] => return Ok(Expectation::NoRows),
            ["some", "rows"] | ["any", "rows"] => return Ok(Expectation::SomeRows),
            ["between", a, "and", b] => {
                let (a, b) = (number(a, t)?, number(b, t)?);
                if a > b {
                    return Err(format!(
                        "expect {t:?}: the lower bound is above the upper bound"
                    ));
                }
                return Ok(Expectation::Between(a, b));
            }
            _ => {}
        }
        let ops = [
            (">=", CompareOp::Ge),
            ("<=", CompareOp::Le),
            ("!=", CompareOp::Ne),
            ("<>", CompareOp::Ne),
            ("==", CompareOp::Eq),
            (">", CompareOp::Gt),
            ("<", CompareOp::Lt),
            ("=", CompareOp::Eq),
        ];
        let Some((op, rest)) = ops
            .iter()
            .find_map(|(sym, op)| t.strip_prefix(sym).map(|rest| (*op, rest.trim())))
        else {
            return Err(format!("expect {t:?} is not an expectation; {FORMS}"));
        };
        if rest.len() >= 2 && rest.starts_with('\'') && rest.ends_with('\'') {
            let text = rest[1..rest.len() - 1].replace("''", "'");
            return match op {
                CompareOp::Eq => Ok(Expectation::Text { equal: true, text }),
                CompareOp::Ne => Ok(Expectation::Text { equal: false, text }),
                _ => Err(format!(
                    "expect {t:?}: text can only be compared with = or !="
                )),
            };
        }
        Ok(Expectation::Compare(op, number(rest, t)?))
    }

    /// Whether a query result meets the expectation. `first` is the first column of the
    /// first row as text (`None` for SQL NULL), or the outer `None` when there are no
    /// rows. Returns the verdict and the actual value described for the report.
    pub fn evaluate(&self, first: Option<Option<&str>>, rows: usize) -> (bool, String) {
        match self {
            Expectation::NoRows => (rows == 0, format!("{rows} row(s)")),
            Expectation::SomeRows => (rows > 0, format!("{rows} row(s)")),
            _ => {
                let Some(value) = first else {
                    return (false, "no rows".into());
                };
                let Some(value) = value else {
                    return (false, "NULL".into());
                };
                let ok = match self {
                    Expectation::Text { equal, text } => (value == text) == *equal,
                    Expectation::Compare(op, n) => match value.trim().parse::<f64>() {
                        Ok(v) => op.holds(v, *n),
                        Err(_) => return (false, format!("{value:?} (not a number)")),
                    },
                    Expectation::Between(a, b) => match value.trim().parse::<f64>() {
                        Ok(v) => *a <= v && v <= *b,
                        Err(_) => return (false, format!("{value:?} (not a number)")),
                    },
                    Expectation::NoRows | Expectation::SomeRows => false,
                };
                (ok, value.to_string())
            }
        }
    }
}

impl fmt::Display for Expectation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expectation::Compare(op, n) => write!(f, "{} {n}", op.symbol()),
            Expectation::Between(a, b) => write!(f, "between {a} and {b}"),
            Expectation::Text { equal, text } => {
                write!(f, "{} '{}'", if *equal { "=" } else { "!=" }, text)
            }
            Expectation::NoRows => f.write_str("no rows"),
            Expectation::SomeRows => f.write_str("some rows"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(e: &str, value: Option<&str>) -> bool {
        Expectation::parse(e).unwrap().evaluate(Some(value), 1).0
    }

    #[test]
    fn numeric_comparisons() {
        assert!(eval("> 0", Some("3")));
        assert!(!eval("> 0", Some("0")));
        assert!(eval(">= 0", Some("0")));
        assert!(eval("= 42", Some("42")));
        assert!(eval("== 42", Some("42.0")));
        assert!(!eval("!= 42", Some("42")));
        assert!(eval("<> 1", Some("2")));
        assert!(eval("< 1.5", Some("1")));
        assert!(eval("<= 1", Some("1")));
        assert!(eval("between 10 and 20", Some("10")));
        assert!(eval("BETWEEN 10 AND 20", Some("20")));
        assert!(!eval("between 10 and 20", Some("21")));
    }

    #[test]
    fn text_null_and_rows() {
        assert!(eval("= 'ok'", Some("ok")));
        assert!(eval("= 'it''s'", Some("it's")));
        assert!(eval("!= 'bad'", Some("ok")));
        assert!(!eval("> 0", None));
        assert!(!eval("> 0", Some("abc")));
        let none = Expectation::parse("no rows").unwrap();
        assert!(none.evaluate(None, 0).0);
        assert_eq!(
            none.evaluate(Some(Some("x")), 2),
            (false, "2 row(s)".into())
        );
        let some = Expectation::parse("some rows").unwrap();
        assert!(some.evaluate(Some(Some("x")), 1).0);
        assert_eq!(
            Expectation::parse("> 0").unwrap().evaluate(None, 0),
            (false, "no rows".into())
        );
    }

    #[test]
    fn mistakes_are_explained() {
        for bad in ["", "big", "> lots", "between 5 and 1", "> 'x'", "= 1 2"] {
            let err = Expectation::parse(bad).unwrap_err();
            assert!(err.contains("expect"), "{bad}: {err}");
        }
    }

    #[test]
    fn display_round_trips() {
        for e in [
            "> 0",
            "= 42",
            "between 10 and 20",
            "= 'a b'",
            "no rows",
            "some rows",
        ] {
            let parsed = Expectation::parse(e).unwrap();
            assert_eq!(Expectation::parse(&parsed.to_string()).unwrap(), parsed);
        }
    }
}
