//! A small OData `$filter` parser/evaluator covering what F&O clients use: `eq ne gt ge lt le`,
//! `and or not`, parentheses, string literals with `''` escaping, F&O's `*` wildcard in string
//! comparisons (case-insensitive, like F&O's SQL collation), enum literals
//! (`Microsoft.Dynamics.DataEntities.NoYes'Yes'`), numbers, dates, `true/false/null`.

use chrono::{NaiveDate, NaiveDateTime};
use rust_decimal::Decimal;
use std::str::FromStr;

/// A field value of a simulated entity row.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    Str(String),
    Num(Decimal),
    /// An enum symbol (serialized as a JSON string).
    Enum(String),
    /// `Edm.DateTimeOffset` (serialized `YYYY-MM-DDTHH:MM:SSZ`).
    DateTime(NaiveDateTime),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Lit {
    Str(String),
    Num(Decimal),
    Enum { ty: String, value: String },
    DateTime(NaiveDateTime),
    Bool(bool),
    Null,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Cmp { field: String, op: Op, lit: Lit },
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    LParen,
    RParen,
    Ident(String),
    Lit(Lit),
}

fn tokenize(s: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    let quoted = |i: &mut usize| -> Result<String, String> {
        // chars[*i] == '\''
        *i += 1;
        let mut v = String::new();
        loop {
            match chars.get(*i) {
                None => return Err("unterminated string literal".into()),
                Some('\'') if chars.get(*i + 1) == Some(&'\'') => {
                    v.push('\'');
                    *i += 2;
                }
                Some('\'') => {
                    *i += 1;
                    return Ok(v);
                }
                Some(c) => {
                    v.push(*c);
                    *i += 1;
                }
            }
        }
    };
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '(' {
            out.push(Tok::LParen);
            i += 1;
        } else if c == ')' {
            out.push(Tok::RParen);
            i += 1;
        } else if c == '\'' {
            out.push(Tok::Lit(Lit::Str(quoted(&mut i)?)));
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == '.')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            if chars.get(i) == Some(&'\'') {
                let value = quoted(&mut i)?;
                let ty = word.rsplit('.').next().unwrap_or("").to_string();
                out.push(Tok::Lit(Lit::Enum { ty, value }));
            } else {
                out.push(match word.as_str() {
                    "true" => Tok::Lit(Lit::Bool(true)),
                    "false" => Tok::Lit(Lit::Bool(false)),
                    "null" => Tok::Lit(Lit::Null),
                    _ => Tok::Ident(word),
                });
            }
        } else if c.is_ascii_digit()
            || (c == '-' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit()))
        {
            let start = i;
            i += 1;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || matches!(chars[i], '.' | ':' | '-' | '+'))
            {
                i += 1;
            }
            let text: String = chars[start..i].iter().collect();
            out.push(Tok::Lit(number_or_date(&text)?));
        } else {
            return Err(format!("unexpected character '{c}' at position {i}"));
        }
    }
    Ok(out)
}

fn number_or_date(text: &str) -> Result<Lit, String> {
    if text.len() >= 10 && text.as_bytes().get(4) == Some(&b'-') {
        if let Ok(dt) =
            NaiveDateTime::parse_from_str(text.trim_end_matches('Z'), "%Y-%m-%dT%H:%M:%S")
        {
            return Ok(Lit::DateTime(dt));
        }
        if let Ok(d) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
            return Ok(Lit::DateTime(d.and_hms_opt(0, 0, 0).expect("midnight")));
        }
        return Err(format!("invalid date literal '{text}'"));
    }
    Decimal::from_str(text)
        .map(Lit::Num)
        .map_err(|_| format!("invalid number literal '{text}'"))
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn peek_ident(&self, kw: &str) -> bool {
        matches!(self.toks.get(self.pos), Some(Tok::Ident(w)) if w == kw)
    }

    fn or(&mut self) -> Result<Expr, String> {
        let mut left = self.and()?;
        while self.peek_ident("or") {
            self.pos += 1;
            let right = self.and()?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, String> {
        let mut left = self.unary()?;
        while self.peek_ident("and") {
            self.pos += 1;
            let right = self.unary()?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, String> {
        if self.peek_ident("not") {
            self.pos += 1;
            return Ok(Expr::Not(Box::new(self.unary()?)));
        }
        match self.toks.get(self.pos).cloned() {
            Some(Tok::LParen) => {
                self.pos += 1;
                let e = self.or()?;
                match self.toks.get(self.pos) {
                    Some(Tok::RParen) => {
                        self.pos += 1;
                        Ok(e)
                    }
                    _ => Err("missing ')'".into()),
                }
            }
            Some(Tok::Ident(field)) => {
                self.pos += 1;
                let op = match self.toks.get(self.pos) {
                    Some(Tok::Ident(o)) => match o.as_str() {
                        "eq" => Op::Eq,
                        "ne" => Op::Ne,
                        "gt" => Op::Gt,
                        "ge" => Op::Ge,
                        "lt" => Op::Lt,
                        "le" => Op::Le,
                        other => return Err(format!("unsupported operator '{other}'")),
                    },
                    _ => return Err(format!("expected an operator after '{field}'")),
                };
                self.pos += 1;
                match self.toks.get(self.pos).cloned() {
                    Some(Tok::Lit(lit)) => {
                        self.pos += 1;
                        Ok(Expr::Cmp { field, op, lit })
                    }
                    _ => Err(format!("expected a literal after '{field}'")),
                }
            }
            Some(t) => Err(format!("unexpected token {t:?}")),
            None => Err("unexpected end of filter".into()),
        }
    }
}

/// Parses a `$filter` expression.
pub fn parse(s: &str) -> Result<Expr, String> {
    let toks = tokenize(s)?;
    let mut p = Parser { toks, pos: 0 };
    let e = p.or()?;
    if p.pos != p.toks.len() {
        return Err(format!("unexpected token {:?}", p.toks[p.pos]));
    }
    Ok(e)
}

impl Expr {
    /// Field names used by the expression (to reject unknown properties).
    pub fn fields(&self, out: &mut Vec<String>) {
        match self {
            Expr::And(a, b) | Expr::Or(a, b) => {
                a.fields(out);
                b.fields(out);
            }
            Expr::Not(a) => a.fields(out),
            Expr::Cmp { field, .. } => out.push(field.clone()),
        }
    }

    /// Evaluates against a row; `get` returns a field's value.
    pub fn eval<'a>(&self, get: &dyn Fn(&str) -> Option<&'a Val>) -> Result<bool, String> {
        Ok(match self {
            Expr::And(a, b) => a.eval(get)? && b.eval(get)?,
            Expr::Or(a, b) => a.eval(get)? || b.eval(get)?,
            Expr::Not(a) => !a.eval(get)?,
            Expr::Cmp { field, op, lit } => {
                let v = get(field)
                    .ok_or_else(|| format!("Could not find a property named '{field}'"))?;
                compare(v, *op, lit)?
            }
        })
    }
}

/// F&O's `*` wildcard (case-insensitive).
pub fn wildcard_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.to_lowercase().chars().collect();
    let t: Vec<char> = text.to_lowercase().chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && p[pi] != '*' && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

fn ord(op: Op, o: std::cmp::Ordering) -> bool {
    use std::cmp::Ordering::*;
    match op {
        Op::Eq => o == Equal,
        Op::Ne => o != Equal,
        Op::Gt => o == Greater,
        Op::Ge => o != Less,
        Op::Lt => o == Less,
        Op::Le => o != Greater,
    }
}

fn compare(v: &Val, op: Op, lit: &Lit) -> Result<bool, String> {
    let incompatible = || {
        Err(format!(
            "A binary operator with incompatible types was detected: {v:?} {op:?} {lit:?}"
        ))
    };
    match (v, lit) {
        (Val::Str(s), Lit::Str(l)) => {
            if l.contains('*') && matches!(op, Op::Eq | Op::Ne) {
                let m = wildcard_match(l, s);
                return Ok(if op == Op::Eq { m } else { !m });
            }
            Ok(ord(op, s.to_lowercase().cmp(&l.to_lowercase())))
        }
        (Val::Enum(s), Lit::Enum { value, .. }) | (Val::Enum(s), Lit::Str(value)) => match op {
            Op::Eq => Ok(s.eq_ignore_ascii_case(value)),
            Op::Ne => Ok(!s.eq_ignore_ascii_case(value)),
            _ => Err("Only eq and ne are supported on enum values".into()),
        },
        (Val::Num(n), Lit::Num(l)) => Ok(ord(op, n.cmp(l))),
        (Val::DateTime(d), Lit::DateTime(l)) => Ok(ord(op, d.cmp(l))),
        (_, Lit::Null) => Ok(op == Op::Ne),
        _ => incompatible(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn row() -> HashMap<&'static str, Val> {
        HashMap::from([
            ("dataAreaId", Val::Str("usmf".into())),
            (
                "Description",
                Val::Str("BI accruals 2026-03 [run 7f3c]".into()),
            ),
            ("Name", Val::Str("O'Neil".into())),
            ("IsPosted", Val::Enum("No".into())),
            ("Amount", Val::Num(Decimal::from_str("1234.57").unwrap())),
            (
                "TransDate",
                Val::DateTime(
                    NaiveDate::from_ymd_opt(2026, 3, 31)
                        .unwrap()
                        .and_hms_opt(12, 0, 0)
                        .unwrap(),
                ),
            ),
            ("LegalEntityId", Val::Str(String::new())),
        ])
    }

    fn eval(f: &str) -> Result<bool, String> {
        let r = row();
        parse(f)?.eval(&|k| r.get(k))
    }

    #[test]
    fn comparisons_and_logic() {
        assert!(eval("dataAreaId eq 'usmf'").unwrap());
        assert!(
            eval("dataAreaId eq 'USMF'").unwrap(),
            "case-insensitive like F&O"
        );
        assert!(!eval("dataAreaId ne 'usmf'").unwrap());
        assert!(eval("dataAreaId eq 'x' or (Amount gt 1000 and Amount le 1234.57)").unwrap());
        assert!(!eval("not (dataAreaId eq 'usmf')").unwrap());
        assert!(eval("Name eq 'O''Neil'").unwrap());
        assert!(eval("LegalEntityId eq '' or LegalEntityId eq 'usmf'").unwrap());
        assert!(eval("TransDate ge 2026-03-01T00:00:00Z and TransDate lt 2026-04-01").unwrap());
    }

    #[test]
    fn wildcards_and_enums() {
        assert!(eval("Description eq 'BI accruals 2026-03*'").unwrap());
        assert!(eval("Description eq '*[run 7f3c]'").unwrap());
        assert!(!eval("Description eq 'BI accruals 2026-04*'").unwrap());
        assert!(eval("IsPosted eq Microsoft.Dynamics.DataEntities.NoYes'No'").unwrap());
        assert!(eval("IsPosted ne Microsoft.Dynamics.DataEntities.NoYes'Yes'").unwrap());
        assert!(eval("IsPosted gt Microsoft.Dynamics.DataEntities.NoYes'Yes'").is_err());
        assert!(wildcard_match("a*b*c", "axxbyyc"));
        assert!(!wildcard_match("a*b", "ac"));
    }

    #[test]
    fn errors() {
        assert!(parse("dataAreaId eq").is_err());
        assert!(parse("dataAreaId eq 'x").is_err());
        assert!(parse("(dataAreaId eq 'x'").is_err());
        assert!(parse("dataAreaId like 'x'").is_err());
        assert!(parse("dataAreaId eq 'x' 'y'").is_err());
        assert!(eval("Nope eq 'x'").unwrap_err().contains("Nope"));
        assert!(eval("Amount eq 'x'").unwrap_err().contains("incompatible"));
        // `+` is not a space for F&O: a form-encoded filter does not parse.
        assert!(parse("dataAreaId+eq+'usmf'").is_err());
    }
}
