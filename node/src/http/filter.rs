//! Consul's `?filter=` expression language (HashiCorp's go-bexpr), parsed once per request and
//! evaluated over each result item serialized to JSON. This module owns the grammar, the
//! evaluation semantics and the error a client sees (with the position of the mistake); the
//! endpoints only parse the parameter and keep the items that match.
//!
//! Consul calls `bexpr.CreateFilter(expr, nil, items)`, the API of go-bexpr v0.1.2, so that
//! version is the reference here: its `grammar.peg`, `evaluate.go`, `field_config.go` and
//! `coerce.go` (github.com/hashicorp/go-bexpr, tag v0.1.2). Later go-bexpr versions changed the
//! evaluation (JSON pointers, `any`/`all`, `is nil`), which Consul does not use.
//!
//! Grammar, as go-bexpr's:
//! - `or` binds loosest, then `and`, then `not`; parentheses group. `and`, `or`, `not`,
//!   `in`, `contains`, `matches` and `is` need whitespace around them (`not(` is refused, as in
//!   go-bexpr); `==` and `!=` do not.
//! - Matches: `S == V`, `S != V`, `S is empty`, `S is not empty`, `V in S`, `V not in S`,
//!   `S contains V`, `S not contains V`, `S matches V`, `S not matches V`.
//! - A selector is `Name(.Name | ["key"])*`, a name being `[A-Za-z][A-Za-z0-9_]*`; the index
//!   form takes a quoted key for map keys that are not names (`Node.Meta["rack-id"]`).
//!   go-bexpr has no `Meta.["key"]` form and no array indexing; neither has this.
//! - A value is a double-quoted string (Go escapes), a backtick raw string, a number
//!   (`-?(0|[1-9][0-9]*)(\.[0-9]+)?`, followed by whitespace, `)` or the end) or a bare
//!   selector-shaped word (`web`, `true`, `a.b`), whose text is the value.
//!
//! Semantics over JSON, where go-bexpr knows the Go types and JSON does not:
//! - The literal is compared as the field's JSON type: a string field by text, a number by
//!   value (`"8080"`, `8080`, `"0x1F90"` and `8080.0` all equal 8080; Go's `0x`/`0o`/`0b`
//!   and leading-`0` octal prefixes are read), a boolean as Go's `strconv.ParseBool` reads the
//!   literal (`true`, `T`, `1`, ...). go-bexpr refuses a literal its field type cannot take
//!   at parse time; here it simply does not equal.
//! - `in`/`contains`: membership in an array (each element compared as above), key
//!   membership in an object, substring in a string.
//! - `is empty`: an empty array, object or string, or a missing or null field.
//! - `matches`: a regular expression search in a string field, compiled once at parse time
//!   with Rust's `regex`, whose syntax is RE2's like Go's `regexp`; `\d \s \w \b` are given
//!   Go's ASCII meaning (Rust's are Unicode), and a pattern Rust cannot read is refused.
//! - A path that goes through an array of objects (`Checks.Status`) tests each element and is
//!   true if any element passes, the negated operators included: go-bexpr v0.1.2's
//!   `evaluateMatchExpressionRecurse` says "operations on slices are implicity ANY
//!   operations", and Consul PR #9777 notes that `Checks.Status` "requires only a single check
//!   to be passing". So `Checks.Status != passing` keeps an entry with any check not passing,
//!   while `not Checks.Status == passing` keeps one with no check passing; with no checks at
//!   all the first is false and the second true.
//! - A field that is missing (or null, or a path running into a number or string): go-bexpr
//!   refuses unknown struct fields at parse time, but JSON has no schema, so a missing field
//!   is treated as go-bexpr treats a missing map key: `==`, `in`, `contains`, `matches` and
//!   `is not empty` are false; their negations and `is empty` are true. (v0.1.2 answers true
//!   for `matches` on a missing key, which later versions' `NotPresentDisposition` corrects to
//!   false, as here.)
//! - An operator go-bexpr refuses for a field's type (`==` on an array, `matches` on a number)
//!   is false here, and its negation true.
//!
//! Other departures. Accepted where go-bexpr refuses: `\"` inside a double-quoted string
//! (go-bexpr ends the string at the first `"`, then fails to unquote it), `is empty` on strings,
//! and literals that do not fit the field's type (above). Refused where go-bexpr accepts: `\x`
//! and octal escapes above 0x7f (alone they are not UTF-8), regular expressions Rust cannot
//! read, and expressions past these bounds against hostile input: [`MAX_EXPRESSION_LEN`]
//! bytes, [`MAX_DEPTH`] nested parentheses and `not`s, [`MAX_REGEXES`] regular expressions of
//! bounded compiled size. Neither parsing nor evaluation recurses deeper than that nesting.

use regex::{Regex, RegexBuilder};
use serde::Serialize;
use serde_json::Value;

/// The longest expression accepted, in bytes.
pub const MAX_EXPRESSION_LEN: usize = 4096;

/// The deepest nesting of parentheses and `not` accepted.
pub const MAX_DEPTH: usize = 64;

/// The most `matches` and `not matches` operators one expression may hold.
pub const MAX_REGEXES: usize = 32;

/// The compiled size bound of one regular expression (and of its lazy DFA cache), so a short
/// pattern like `(a{1000}){1000}` is refused instead of taking memory and time.
const REGEX_SIZE_LIMIT: usize = 256 * 1024;

/// A filter expression that could not be parsed, with where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("filter: at {position}: {message}")]
pub struct FilterError {
    /// 1-based position in the expression, counted in characters (a newline counts as one).
    pub position: usize,
    /// What was wrong there.
    pub message: String,
}

/// A parsed filter expression, ready to test items.
#[derive(Debug, Clone)]
pub struct Filter {
    root: Expr,
}

impl Filter {
    /// Parses `expr`, refusing an empty one (see [`Filter::from_query`] for the parameter).
    pub fn parse(expr: &str) -> Result<Filter, FilterError> {
        let to_error = |e: ParseError| FilterError {
            position: char_position(expr, e.at),
            message: e.message,
        };
        if expr.len() > MAX_EXPRESSION_LEN {
            return Err(to_error(ParseError::fatal(
                MAX_EXPRESSION_LEN,
                format!("the expression is longer than {MAX_EXPRESSION_LEN} bytes"),
            )));
        }
        let mut parser = Parser {
            src: expr,
            pos: 0,
            depth: 0,
            regexes: 0,
        };
        parser.input().map(|root| Filter { root }).map_err(to_error)
    }

    /// The filter of a `?filter=` parameter: none when it is absent or empty, as Consul (go-bexpr's
    /// `CreateFilter` returns no filter for an empty expression).
    pub fn from_query(param: Option<&str>) -> Result<Option<Filter>, FilterError> {
        match param {
            None | Some("") => Ok(None),
            Some(expr) => Filter::parse(expr).map(Some),
        }
    }

    /// Whether `item` matches.
    pub fn matches(&self, item: &Value) -> bool {
        self.root.eval(item)
    }

    /// Whether `item`, serialized to JSON, matches; an item that cannot be serialized does not.
    pub fn matches_serialized<T: Serialize + ?Sized>(&self, item: &T) -> bool {
        serde_json::to_value(item).is_ok_and(|value| self.matches(&value))
    }

    /// The items that match, in their order.
    pub fn retain<T: Serialize>(&self, items: Vec<T>) -> Vec<T> {
        items
            .into_iter()
            .filter(|item| self.matches_serialized(item))
            .collect()
    }
}

/// The 1-based character position of byte offset `at` (an offset inside a character counts as
/// that character).
fn char_position(src: &str, at: usize) -> usize {
    src.char_indices().take_while(|&(i, _)| i < at).count() + 1
}

/// A node of the parsed expression. `and` and `or` chains are flat lists, so evaluating them
/// does not recurse once per operand.
#[derive(Debug, Clone)]
enum Expr {
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Not(Box<Expr>),
    Match(Match),
}

impl Expr {
    fn eval(&self, item: &Value) -> bool {
        match self {
            Expr::And(all) => all.iter().all(|e| e.eval(item)),
            Expr::Or(any) => any.iter().any(|e| e.eval(item)),
            Expr::Not(e) => !e.eval(item),
            Expr::Match(m) => m.eval(item),
        }
    }
}

/// One matching expression: a selector, a test, and whether the test is negated.
#[derive(Debug, Clone)]
struct Match {
    selector: Vec<String>,
    test: Test,
    /// Negation applies to each value the selector reaches, before the any-of over arrays (go-bexpr
    /// negates inside its slice loop).
    negated: bool,
}

/// The positive form of an operator; `!=`, `not in`, `is not empty` and `not matches` are these
/// negated.
#[derive(Debug, Clone)]
enum Test {
    Equal(Literal),
    In(Literal),
    IsEmpty,
    Matches(Box<Regex>),
}

impl Match {
    /// Walks the selector with an explicit stack (no recursion on the item's depth): an array met
    /// before the end of the selector fans out to its elements, and the match holds if the test
    /// holds at any value reached.
    fn eval(&self, item: &Value) -> bool {
        let mut stack = vec![(Some(item), 0usize)];
        while let Some((value, depth)) = stack.pop() {
            // What the selector reached: a value at its end, or `None` for nothing there.
            let reached = match (value, self.selector.get(depth)) {
                (None | Some(Value::Null), _) => None,
                (Some(value), None) => Some(value),
                (Some(Value::Array(elements)), Some(_)) => {
                    stack.extend(elements.iter().rev().map(|e| (Some(e), depth)));
                    continue;
                }
                (Some(Value::Object(fields)), Some(name)) => {
                    stack.push((fields.get(name), depth + 1));
                    continue;
                }
                // A path through a number, string or boolean reaches nothing, as a missing field.
                (Some(_), Some(_)) => None,
            };
            if self.holds(reached) {
                return true;
            }
        }
        false
    }

    /// The (possibly negated) test on one value the selector reached; `None` is missing or null.
    fn holds(&self, value: Option<&Value>) -> bool {
        self.test.positive(value) != self.negated
    }
}

impl Test {
    fn positive(&self, value: Option<&Value>) -> bool {
        let Some(value) = value else {
            // go-bexpr's disposition for a missing map key: nothing equals, contains or matches
            // it, and it is empty.
            return matches!(self, Test::IsEmpty);
        };
        match self {
            Test::Equal(literal) => literal.equals(value),
            Test::In(literal) => match value {
                Value::Array(elements) => elements.iter().any(|e| literal.equals(e)),
                Value::Object(fields) => fields.contains_key(&literal.raw),
                Value::String(s) => s.contains(literal.raw.as_str()),
                _ => false,
            },
            Test::IsEmpty => match value {
                Value::Array(a) => a.is_empty(),
                Value::Object(o) => o.is_empty(),
                Value::String(s) => s.is_empty(),
                _ => false,
            },
            Test::Matches(re) => value.as_str().is_some_and(|s| re.is_match(s)),
        }
    }
}

/// A value from the expression: its text, and what it reads as for number and boolean fields
/// (worked out once, at parse time).
#[derive(Debug, Clone)]
struct Literal {
    raw: String,
    int: Option<i128>,
    float: Option<f64>,
    boolean: Option<bool>,
}

impl Literal {
    fn new(raw: String) -> Literal {
        let int = parse_go_int(&raw);
        // Rust's float syntax is close to Go's ParseFloat (decimal, exponent, inf, NaN).
        let float = int.map(|i| i as f64).or_else(|| raw.parse().ok());
        let boolean = parse_go_bool(&raw);
        Literal {
            raw,
            int,
            float,
            boolean,
        }
    }

    /// Whether a scalar field equals this literal read as the field's type.
    fn equals(&self, value: &Value) -> bool {
        match value {
            Value::String(s) => *s == self.raw,
            Value::Bool(b) => self.boolean == Some(*b),
            Value::Number(n) => {
                let exact = n
                    .as_i64()
                    .map(i128::from)
                    .or_else(|| n.as_u64().map(i128::from));
                match (exact, self.int) {
                    (Some(field), Some(literal)) => field == literal,
                    _ => matches!((n.as_f64(), self.float), (Some(a), Some(b)) if a == b),
                }
            }
            _ => false,
        }
    }
}

/// Go's `strconv.ParseInt(s, 0, _)`: an optional sign, then decimal, `0x`, `0o`, `0b` or a
/// leading-`0` octal.
fn parse_go_int(s: &str) -> Option<i128> {
    let (negative, unsigned) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let prefixed = |lower: &str, upper: &str| {
        unsigned
            .strip_prefix(lower)
            .or_else(|| unsigned.strip_prefix(upper))
    };
    let (radix, digits) = if let Some(d) = prefixed("0x", "0X") {
        (16, d)
    } else if let Some(d) = prefixed("0o", "0O") {
        (8, d)
    } else if let Some(d) = prefixed("0b", "0B") {
        (2, d)
    } else if let Some(d) = unsigned.strip_prefix('0').filter(|d| !d.is_empty()) {
        (8, d)
    } else {
        (10, unsigned)
    };
    // from_str_radix alone would also take a second sign.
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let magnitude = i128::from_str_radix(digits, radix).ok()?;
    Some(if negative { -magnitude } else { magnitude })
}

/// Go's `strconv.ParseBool`.
fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// A parse failure at byte offset `at`. A fatal one (a bound exceeded, a bad regular
/// expression) is final; another may be retried as a different reading of `not`.
#[derive(Debug)]
struct ParseError {
    at: usize,
    message: String,
    fatal: bool,
}

impl ParseError {
    fn fatal(at: usize, message: String) -> ParseError {
        ParseError {
            at,
            message,
            fatal: true,
        }
    }
}

type Parsed<T> = Result<T, ParseError>;

/// A recursive-descent parser over go-bexpr's PEG. It recurses only into parentheses and
/// `not`, counted against [`MAX_DEPTH`].
struct Parser<'a> {
    src: &'a str,
    /// Byte offset of the next unread character.
    pos: usize,
    depth: usize,
    regexes: usize,
}

/// Whether `b` can continue a name (and so a keyword is only a keyword when `b` does not follow).
fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.src.as_bytes().get(self.pos).copied()
    }

    fn rest(&self) -> &str {
        self.src.get(self.pos..).unwrap_or("")
    }

    /// Skips whitespace and says how many bytes it skipped.
    fn skip_space(&mut self) -> usize {
        let start = self.pos;
        while self.peek().is_some_and(is_space) {
            self.pos += 1;
        }
        self.pos - start
    }

    /// A short description of what is at the current position, for error messages.
    fn found(&self) -> String {
        let rest = self.rest();
        let Some(first) = rest.chars().next() else {
            return "end of input".into();
        };
        let word: String = if first.is_ascii_alphanumeric() {
            rest.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .take(24)
                .collect()
        } else {
            first.to_string()
        };
        format!("{word:?}")
    }

    fn error(&self, message: impl Into<String>) -> ParseError {
        ParseError {
            at: self.pos,
            message: message.into(),
            fatal: false,
        }
    }

    /// An error at the current position that names what it found there.
    fn expected(&self, what: &str) -> ParseError {
        self.error(format!("expected {what}, found {}", self.found()))
    }

    /// Whether the input continues with the word `word` (not followed by a name character).
    fn at_word(&self, word: &str) -> bool {
        let rest = self.rest().as_bytes();
        rest.starts_with(word.as_bytes())
            && !rest.get(word.len()).copied().is_some_and(is_name_byte)
    }

    /// Consumes `keyword` and the whitespace go-bexpr requires after it, if the input continues
    /// with that word; `next` names what should follow, for the error when the input ends there.
    fn keyword(&mut self, keyword: &str, next: &str) -> Parsed<bool> {
        if !self.at_word(keyword) {
            return Ok(false);
        }
        let start = self.pos;
        self.pos += keyword.len();
        if self.skip_space() > 0 {
            return Ok(true);
        }
        let err = if self.peek().is_none() {
            self.expected(&format!("{next} after \"{keyword}\""))
        } else {
            self.error(format!("expected a space after \"{keyword}\""))
        };
        self.pos = start;
        Err(err)
    }

    /// One more level of nesting at byte `at`, refused past [`MAX_DEPTH`].
    fn enter(&mut self, at: usize) -> Parsed<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(ParseError::fatal(
                at,
                format!("nested deeper than {MAX_DEPTH} levels of parentheses and \"not\""),
            ));
        }
        Ok(())
    }

    /// `Input <- _? OrExpression _? EOF`
    fn input(&mut self) -> Parsed<Expr> {
        self.skip_space();
        if self.peek().is_none() {
            return Err(self.error("empty expression"));
        }
        let expr = self.or()?;
        self.skip_space();
        match self.peek() {
            None => Ok(expr),
            Some(b')') => Err(self.error("\")\" without a matching \"(\"")),
            Some(_) => Err(self.expected("\"and\", \"or\" or the end")),
        }
    }

    /// `OrExpression <- AndExpression (_ "or" _ AndExpression)*`
    fn or(&mut self) -> Parsed<Expr> {
        self.chain("or", Self::and, Expr::Or)
    }

    /// `AndExpression <- NotExpression (_ "and" _ NotExpression)*`
    fn and(&mut self) -> Parsed<Expr> {
        self.chain("and", Self::not, Expr::And)
    }

    /// Operands separated by `keyword`, as one flat list (a single operand stands alone). Once
    /// the keyword is seen an operand must follow: go-bexpr's PEG would backtrack there, but
    /// nothing else can follow an operand and a keyword, so it fails all the same.
    fn chain(
        &mut self,
        keyword: &str,
        operand: fn(&mut Self) -> Parsed<Expr>,
        build: fn(Vec<Expr>) -> Expr,
    ) -> Parsed<Expr> {
        let first = operand(self)?;
        let mut rest = Vec::new();
        loop {
            let save = self.pos;
            if self.skip_space() > 0 && self.keyword(keyword, "an expression")? {
                rest.push(operand(self)?);
            } else {
                self.pos = save;
                break;
            }
        }
        if rest.is_empty() {
            return Ok(first);
        }
        rest.insert(0, first);
        Ok(build(rest))
    }

    /// `NotExpression <- "not" _ NotExpression / ParenthesizedExpression`. As in the PEG, `not`
    /// is first read as the operator and, if that fails, again as a selector named `not` (so
    /// `not in Tags` is `"not" in Tags`). Each `not` is retried at most once, and the retry
    /// reads a single match, so the work stays linear.
    fn not(&mut self) -> Parsed<Expr> {
        let start = self.pos;
        if !self.at_word("not") {
            return self.parenthesized();
        }
        match self.src.as_bytes().get(start + 3) {
            Some(&b) if is_space(b) => {}
            Some(b'(') => {
                self.pos += 3;
                return Err(self.error("expected a space between \"not\" and \"(\""));
            }
            None => {
                self.pos += 3;
                return Err(self.expected("an expression after \"not\""));
            }
            // A selector named `not`, as in `not == x`.
            _ => return self.parenthesized(),
        }
        let (depth, regexes) = (self.depth, self.regexes);
        self.pos += 3;
        self.skip_space();
        self.enter(start)?;
        let operand = self.not();
        self.depth = depth;
        let first = match operand {
            Ok(Expr::Not(inner)) => return Ok(*inner),
            Ok(e) => return Ok(Expr::Not(Box::new(e))),
            Err(e) if e.fatal => return Err(e),
            Err(e) => e,
        };
        (self.pos, self.regexes) = (start, regexes);
        self.parenthesized().map_err(|second| {
            // Report the reading that got further, as a PEG reports its farthest failure.
            if second.fatal || second.at > first.at {
                second
            } else {
                first
            }
        })
    }

    /// `ParenthesizedExpression <- "(" _? OrExpression _? ")" / MatchExpression`
    fn parenthesized(&mut self) -> Parsed<Expr> {
        if self.peek() != Some(b'(') {
            return self.match_expression();
        }
        let open = self.pos;
        let depth = self.depth;
        self.enter(open)?;
        self.pos += 1;
        self.skip_space();
        let inner = self.or()?;
        self.skip_space();
        if self.peek() != Some(b')') {
            let column = char_position(self.src, open);
            return Err(self.expected(&format!(
                "\"and\", \"or\" or \")\" to close the \"(\" at {column}"
            )));
        }
        self.pos += 1;
        self.depth = depth;
        Ok(inner)
    }

    /// `MatchExpression`: a selector and an operator (and a value), or a value, `in` or
    /// `not in`, and a selector.
    fn match_expression(&mut self) -> Parsed<Expr> {
        match self.peek() {
            Some(b) if b.is_ascii_alphabetic() => {
                let selector = self.selector()?;
                self.selector_operator(selector)
            }
            Some(b'"' | b'`' | b'-' | b'0'..=b'9') => {
                // The first character is a value's, so `value` cannot fail for want of one.
                let value = self.value("the start")?;
                self.value_in(value)
            }
            _ => Err(self.expected("a selector, a value, \"not\" or \"(\"")),
        }
    }

    /// What follows a selector: `== V`, `!= V`, `contains V`, `not contains V`, `matches V`,
    /// `not matches V`, `is empty`, `is not empty`, or (the selector then being a bare value)
    /// `in S` or `not in S`.
    fn selector_operator(&mut self, selector: Vec<String>) -> Parsed<Expr> {
        let spaced = self.skip_space() > 0;
        for (symbol, negated) in [("==", false), ("!=", true)] {
            if self.rest().starts_with(symbol) {
                self.pos += symbol.len();
                self.skip_space();
                let value = self.value(symbol)?;
                return Ok(matched(selector, Test::Equal(value), negated));
            }
        }
        if spaced {
            if self.keyword("contains", "a value")? {
                let value = self.value("contains")?;
                return Ok(matched(selector, Test::In(value), false));
            }
            if self.keyword("matches", "a value")? {
                return self.regex(selector, false);
            }
            if self.keyword("is", "\"empty\" or \"not empty\"")? {
                let negated = self.keyword("not", "\"empty\"")?;
                if !self.at_word("empty") {
                    let after = if negated { "\"is not\"" } else { "\"is\"" };
                    return Err(self.expected(&format!("\"empty\" after {after}")));
                }
                self.pos += "empty".len();
                return Ok(matched(selector, Test::IsEmpty, negated));
            }
            if self.keyword("not", "\"in\", \"contains\" or \"matches\"")? {
                if self.keyword("contains", "a value")? {
                    let value = self.value("contains")?;
                    return Ok(matched(selector, Test::In(value), true));
                }
                if self.keyword("matches", "a value")? {
                    return self.regex(selector, true);
                }
                if self.at_word("in") {
                    return self.in_tail(Literal::new(selector.join(".")), true);
                }
                return Err(self.expected("\"in\", \"contains\" or \"matches\" after \"not\""));
            }
            if self.at_word("in") {
                return self.in_tail(Literal::new(selector.join(".")), false);
            }
        }
        Err(self.expected(&format!(
            "an operator after \"{}\" (==, !=, contains, matches, in, is empty, or their \"not\" forms)",
            selector.join(".")
        )))
    }

    /// After a value that starts the match: `in S` or `not in S`.
    fn value_in(&mut self, value: Literal) -> Parsed<Expr> {
        if self.skip_space() == 0 {
            return Err(self.expected("\"in\" or \"not in\" after the value"));
        }
        let negated = self.keyword("not", "\"in\"")?;
        self.in_tail(value, negated)
    }

    /// `in S`, after the value and any `not`.
    fn in_tail(&mut self, value: Literal, negated: bool) -> Parsed<Expr> {
        if !self.keyword("in", "a selector")? {
            let what = if negated {
                "\"in\" after \"not\""
            } else {
                "\"in\" or \"not in\" after the value"
            };
            return Err(self.expected(what));
        }
        if !self.peek().is_some_and(|b| b.is_ascii_alphabetic()) {
            return Err(self.expected("a selector after \"in\""));
        }
        let selector = self.selector()?;
        Ok(matched(selector, Test::In(value), negated))
    }

    /// The value of `matches`, compiled now so a bad pattern is a parse error at its position.
    fn regex(&mut self, selector: Vec<String>, negated: bool) -> Parsed<Expr> {
        let at = self.pos;
        let pattern = self.value("matches")?;
        self.regexes += 1;
        if self.regexes > MAX_REGEXES {
            return Err(ParseError::fatal(
                at,
                format!("more than {MAX_REGEXES} regular expressions"),
            ));
        }
        let re = RegexBuilder::new(&go_perl_classes(&pattern.raw))
            .size_limit(REGEX_SIZE_LIMIT)
            .dfa_size_limit(REGEX_SIZE_LIMIT)
            .build()
            .map_err(|e| {
                ParseError::fatal(
                    at,
                    format!("invalid regular expression: {}", regex_reason(&e)),
                )
            })?;
        Ok(matched(selector, Test::Matches(Box::new(re)), negated))
    }

    /// `Selector <- Identifier ("." Identifier / "[" _? StringLiteral _? "]")*`
    fn selector(&mut self) -> Parsed<Vec<String>> {
        let mut path = vec![self.name()];
        loop {
            match self.peek() {
                Some(b'.') => {
                    self.pos += 1;
                    if !self.peek().is_some_and(|b| b.is_ascii_alphabetic()) {
                        return Err(self.expected("a field name after \".\""));
                    }
                    path.push(self.name());
                }
                Some(b'[') => {
                    let open = self.pos;
                    self.pos += 1;
                    self.skip_space();
                    let key = match self.peek() {
                        Some(b'"') => self.double_quoted()?,
                        Some(b'`') => self.raw_string()?,
                        _ => return Err(self.expected("a quoted key after \"[\"")),
                    };
                    self.skip_space();
                    if self.peek() != Some(b']') {
                        let column = char_position(self.src, open);
                        return Err(self.expected(&format!("\"]\" to close the \"[\" at {column}")));
                    }
                    self.pos += 1;
                    path.push(key);
                }
                _ => return Ok(path),
            }
        }
    }

    /// `Identifier <- [a-zA-Z] [a-zA-Z0-9_]*`; the caller has seen the letter.
    fn name(&mut self) -> String {
        let start = self.pos;
        while self.peek().is_some_and(is_name_byte) {
            self.pos += 1;
        }
        self.src.get(start..self.pos).unwrap_or("").to_owned()
    }

    /// `Value <- Selector / NumberLiteral / StringLiteral`; `after` names the operator before it.
    fn value(&mut self, after: &str) -> Parsed<Literal> {
        let raw = match self.peek() {
            Some(b) if b.is_ascii_alphabetic() => self.selector()?.join("."),
            Some(b'"') => self.double_quoted()?,
            Some(b'`') => self.raw_string()?,
            Some(b'-' | b'0'..=b'9') => self.number()?,
            _ => return Err(self.expected(&format!("a value after \"{after}\""))),
        };
        Ok(Literal::new(raw))
    }

    /// `NumberLiteral <- "-"? ("0" / [1-9][0-9]*) ("." [0-9]+)?`, which must be followed by
    /// whitespace, `)` or the end.
    fn number(&mut self) -> Parsed<String> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                while self.peek().is_some_and(|b| b.is_ascii_digit()) {
                    self.pos += 1;
                }
            }
            _ => return Err(self.expected("a digit after \"-\"")),
        }
        let bytes = self.src.as_bytes();
        if self.peek() == Some(b'.') && bytes.get(self.pos + 1).is_some_and(u8::is_ascii_digit) {
            self.pos += 1;
            while self.peek().is_some_and(|b| b.is_ascii_digit()) {
                self.pos += 1;
            }
        }
        match self.peek() {
            None | Some(b')') => {}
            Some(b) if is_space(b) => {}
            Some(_) => {
                return Err(self.expected(
                    "whitespace, \")\" or the end after a number (quote values that are not numbers)",
                ));
            }
        }
        Ok(self.src.get(start..self.pos).unwrap_or("").to_owned())
    }

    /// A double-quoted string with Go's escapes (`strconv.Unquote`).
    fn double_quoted(&mut self) -> Parsed<String> {
        let open = self.pos;
        self.pos += 1;
        let mut out = String::new();
        loop {
            let Some(c) = self.rest().chars().next() else {
                self.pos = open;
                return Err(self.error("unterminated string"));
            };
            match c {
                '"' => {
                    self.pos += 1;
                    return Ok(out);
                }
                '\n' => {
                    return Err(self.error(
                        "a newline in a double-quoted string (write \\n, or use a `raw string`)",
                    ));
                }
                '\\' => out.push(self.escape()?),
                c => {
                    out.push(c);
                    self.pos += c.len_utf8();
                }
            }
        }
    }

    /// One escape sequence at a backslash: `\a \b \f \n \r \t \v \\ \"`, `\xHH`, `\ooo`,
    /// `\uHHHH`, `\UHHHHHHHH`.
    fn escape(&mut self) -> Parsed<char> {
        let at = self.pos;
        let bytes = self.src.as_bytes();
        let Some(&kind) = bytes.get(at + 1) else {
            return Err(self.error("unterminated string"));
        };
        let simple = match kind {
            b'a' => Some('\u{7}'),
            b'b' => Some('\u{8}'),
            b'f' => Some('\u{c}'),
            b'n' => Some('\n'),
            b'r' => Some('\r'),
            b't' => Some('\t'),
            b'v' => Some('\u{b}'),
            b'\\' => Some('\\'),
            b'"' => Some('"'),
            _ => None,
        };
        if let Some(c) = simple {
            self.pos += 2;
            return Ok(c);
        }
        let (digits, radix, skip) = match kind {
            b'x' => (2, 16, 2),
            b'0'..=b'7' => (3, 8, 1),
            b'u' => (4, 16, 2),
            b'U' => (8, 16, 2),
            _ => {
                let shown: String = self.src.get(at..).unwrap_or("").chars().take(2).collect();
                return Err(self.error(format!("invalid escape \"{shown}\"")));
            }
        };
        let text = self
            .src
            .get(at + skip..at + skip + digits)
            .filter(|t| t.chars().all(|c| c.is_digit(radix)));
        let code = text.and_then(|t| u32::from_str_radix(t, radix).ok());
        let Some(code) = code else {
            return Err(self.error(format!(
                "invalid escape: \"\\{}\" takes {digits} digits",
                char::from(kind)
            )));
        };
        // \x and octal escapes are bytes in Go; above 0x7f they would not be valid UTF-8 alone.
        let byte_escape = kind == b'x' || kind.is_ascii_digit();
        let c = if byte_escape && code > 0x7f {
            None
        } else {
            char::from_u32(code)
        };
        let Some(c) = c else {
            return Err(self.error("invalid escape: not a character (byte escapes stop at 0x7f)"));
        };
        self.pos = at + skip + digits;
        Ok(c)
    }

    /// A backtick raw string, taken as written; carriage returns are dropped, as Go's
    /// `strconv.Unquote` drops them.
    fn raw_string(&mut self) -> Parsed<String> {
        let open = self.pos;
        let body = self.src.get(open + 1..).unwrap_or("");
        let Some(end) = body.find('`') else {
            return Err(self.error("unterminated raw string"));
        };
        let text = body.get(..end).unwrap_or("").replace('\r', "");
        self.pos = open + 1 + end + 1;
        Ok(text)
    }
}

fn matched(selector: Vec<String>, test: Test, negated: bool) -> Expr {
    Expr::Match(Match {
        selector,
        test,
        negated,
    })
}

/// `pattern` with Go's ASCII meanings of `\d \s \w \b` (and their negations) spelled out, as
/// Rust's are Unicode: the same matches as Go's `regexp`, and a far smaller automaton (a Unicode
/// `\w{1,20}` alone passes [`REGEX_SIZE_LIMIT`]). Rust allows a bracketed class inside a
/// class, so the replacements hold inside `[...]` too.
fn go_perl_classes(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len());
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let Some(next) = chars.next() else {
            // A trailing backslash: left for the regex parser to refuse.
            out.push(c);
            break;
        };
        let ascii = match next {
            'd' => "[0-9]",
            'D' => "[^0-9]",
            's' => "[\\t\\n\\f\\r ]",
            'S' => "[^\\t\\n\\f\\r ]",
            'w' => "[0-9A-Za-z_]",
            'W' => "[^0-9A-Za-z_]",
            'b' => "(?-u:\\b)",
            'B' => "(?-u:\\B)",
            _ => {
                // Any other escape (`\\`, `\.`, `\pL`, ...) is copied whole, so its second
                // character is never read as the start of one.
                out.push(c);
                out.push(next);
                continue;
            }
        };
        out.push_str(ascii);
    }
    out
}

/// The one-line reason of a regex error (a syntax error's text also draws the pattern).
fn regex_reason(e: &regex::Error) -> String {
    match e {
        regex::Error::Syntax(text) => text
            .lines()
            .rev()
            .find_map(|line| line.strip_prefix("error: "))
            .unwrap_or("syntax error")
            .to_owned(),
        regex::Error::CompiledTooBig(limit) => {
            format!("it compiles to more than {limit} bytes")
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;

    /// Four `/v1/health/service` entries, shaped as Consul's JSON, named by `Service.ID`.
    fn entries() -> Vec<Value> {
        vec![
            json!({
                "Node": {"Node": "n1", "Address": "10.0.0.1", "Meta": {"zone": "a", "rack-id": "r1"}},
                "Service": {
                    "ID": "web-1", "Service": "web", "Tags": ["v1", "primary"], "Port": 8080,
                    "Address": "", "EnableTagOverride": false,
                    "Meta": {"team": "x", "note": "say \"hi\"\n", "path": "a\\nb", "dotted": "a.b"},
                    "Weights": {"Passing": 1, "Warning": 1}
                },
                "Checks": [
                    {"CheckID": "serfHealth", "Status": "passing", "ServiceName": ""},
                    {"CheckID": "service:web-1", "Status": "passing", "ServiceName": "web"}
                ]
            }),
            json!({
                "Node": {"Node": "n2", "Address": "10.0.0.2", "Meta": {"zone": "b"}},
                "Service": {
                    "ID": "web-2", "Service": "web", "Tags": ["v2", "not"], "Port": 8081,
                    "Address": "10.0.0.22", "EnableTagOverride": true, "Meta": {},
                    "Weights": {"Passing": 1, "Warning": 1}
                },
                "Checks": [
                    {"CheckID": "serfHealth", "Status": "passing", "ServiceName": ""},
                    {"CheckID": "service:web-2", "Status": "critical", "ServiceName": "web"}
                ]
            }),
            json!({
                "Node": {"Node": "n3", "Address": "10.0.0.3", "Meta": {}},
                "Service": {
                    "ID": "db-1", "Service": "db", "Tags": [], "Port": 5432, "Address": "",
                    "EnableTagOverride": false, "Meta": {"team": "y", "version": "1.2.3"},
                    "Weights": {"Passing": 2.5, "Warning": 1}
                },
                "Checks": []
            }),
            json!({
                "Node": {"Node": "n4", "Address": "10.0.0.4", "Meta": null},
                "Service": {
                    "ID": "cache-1", "Service": "cache", "Tags": null, "Port": 6379,
                    "Address": "10.0.0.44", "Meta": {"ünï": "çødé"}
                },
                "Checks": [{"CheckID": "service:cache-1", "Status": "warning", "ServiceName": "cache"}]
            }),
        ]
    }

    /// The IDs of the fixture entries that `expr` keeps.
    fn kept(expr: &str) -> Vec<String> {
        let filter = match Filter::parse(expr) {
            Ok(f) => f,
            Err(e) => panic!("{expr:?} did not parse: {e}"),
        };
        entries()
            .iter()
            .filter(|e| filter.matches(e))
            .map(|e| e["Service"]["ID"].as_str().unwrap_or("?").to_owned())
            .collect()
    }

    /// Expressions and the fixture entries they keep (`none`, `all` or IDs), one a line.
    const KEPT: &str = r#"
# Equality, bare, quoted and raw values, with or without spaces around ==.
Service.Service == web => web-1 web-2
Service.Service == "web" => web-1 web-2
Service.Service == `web` => web-1 web-2
Service.Service==web => web-1 web-2
Service.Service != web => db-1 cache-1
Service.Service != `web` => db-1 cache-1
Node.Node == n3 => db-1
Service.Address == "" => web-1 db-1
# Numbers compare by value, from number, string and Go-prefixed literals.
Service.Port == 8080 => web-1
Service.Port == "8080" => web-1
Service.Port == "0x1F90" => web-1
Service.Port == "017620" => web-1
Service.Port == 8080.0 => web-1
Service.Port != 8080 => web-2 db-1 cache-1
Service.Port == -1 => none
Service.Port == eighty => none
Service.Port != eighty => all
Service.Weights.Passing == 2.5 => db-1
Service.Weights.Passing == 1 => web-1 web-2
Service.Weights.Passing == 1.0 => web-1 web-2
# Booleans read as Go's ParseBool reads them; a missing one equals nothing.
Service.EnableTagOverride == true => web-2
Service.EnableTagOverride == True => web-2
Service.EnableTagOverride == 1 => web-2
Service.EnableTagOverride == false => web-1 db-1
Service.EnableTagOverride == "F" => web-1 db-1
Service.EnableTagOverride != true => web-1 db-1 cache-1
Service.EnableTagOverride == yes => none
# Membership in arrays; a null array is empty.
v1 in Service.Tags => web-1
"v1" in Service.Tags => web-1
`v1` in Service.Tags => web-1
Service.Tags contains primary => web-1
Service.Tags contains "v" => none
v1 not in Service.Tags => web-2 db-1 cache-1
Service.Tags not contains primary => web-2 db-1 cache-1
Service.Tags is empty => db-1 cache-1
Service.Tags is not empty => web-1 web-2
# Key membership in objects; a null object is empty.
team in Service.Meta => web-1 db-1
"rack-id" in Node.Meta => web-1
Node.Meta contains zone => web-1 web-2
zone not in Node.Meta => db-1 cache-1
Node.Meta is empty => db-1 cache-1
Node.Meta is not empty => web-1 web-2
# Substrings of strings.
Service.Service contains eb => web-1 web-2
"ach" in Service.Service => cache-1
Service.Service not contains eb => db-1 cache-1
Service.Address is empty => web-1 db-1
# Nested and index selectors; a missing map key.
Service.Meta.team == x => web-1
Service.Meta["team"] == x => web-1
Service.Meta[`team`] == x => web-1
Service.Meta[ "team" ] == y => db-1
Node.Meta["rack-id"] == r1 => web-1
Service.Meta["ünï"] == "çødé" => cache-1
Service.Meta.team != x => web-2 db-1 cache-1
Service.Meta.team is empty => web-2 cache-1
Node.Meta.zone == a => web-1
Node.Meta.zone != a => web-2 db-1 cache-1
# Fields no entry has, and paths through scalars, are missing.
Nope == x => none
Nope != x => all
Nope is empty => all
Nope is not empty => none
x in Nope => none
x not in Nope => all
Service.Port.Deeper == 1 => none
Service.Port.Deeper != 1 => all
# Operators go-bexpr refuses for the type are false; their negations true.
Service.Tags == v1 => none
Service.Tags != v1 => all
Service.Tags matches v1 => none
Service.Port matches 80 => none
Service.Port is empty => none
# Regular expressions search; raw strings spare the backslashes.
Service.Service matches "^w.b$" => web-1 web-2
Service.Service matches eb => web-1 web-2
Service.Service matches e => web-1 web-2 cache-1
Service.Service not matches "^w" => db-1 cache-1
Service.Meta.version matches "^1\\.2" => db-1
Service.Meta.version matches `^1\.2\.\d$` => db-1
Service.Meta.version matches `^1\.3` => none
Service.Meta.version not matches `^1\.3` => all
Service.Meta.missing matches ".*" => none
Service.Service matches `^\w{1,20}$` => all
Service.Service matches `^[a-z][a-z0-9-]{0,62}$` => all
Service.Meta.note matches `\bhi\b` => web-1
Service.Meta.note matches `^say\s\W` => web-1
Service.Meta.version matches `^[\d.]+$` => db-1
Service.Meta.version matches `^[^\D.]` => db-1
Service.Meta.path matches `a\\nb` => web-1
# Go's \w, \d and \s are ASCII; Unicode classes are asked for with \p.
Service.Meta["ünï"] matches `^\w` => none
Service.Meta["ünï"] matches `^\pL+$` => cache-1
Service.Meta["ünï"] matches `^...\S$` => cache-1
Service.Meta.missing not matches ".*" => all
# A path through an array of objects: true if any element passes.
Checks.Status == passing => web-1 web-2
Checks.Status == critical => web-2
Checks.Status != passing => web-2 cache-1
not Checks.Status == passing => db-1 cache-1
Checks.Status != critical => web-1 web-2 cache-1
not Checks.Status == critical => web-1 db-1 cache-1
passing in Checks.Status => web-1 web-2
"pass" in Checks.Status => web-1 web-2
Checks.Status contains arn => cache-1
Checks.Status matches "^(warning|critical)$" => web-2 cache-1
Checks.ServiceName is empty => web-1 web-2
Checks.Output is empty => web-1 web-2 cache-1
Checks is empty => db-1
Checks is not empty => web-1 web-2 cache-1
# Precedence: not, then and, then or; parentheses override it.
Service.Service == db or Service.Service == web and Service.Port == 8081 => web-2 db-1
(Service.Service == db or Service.Service == web) and Service.Port == 8081 => web-2
not Service.Service == web and Node.Node == n3 => db-1
not (Service.Service == web and Node.Node == n1) => web-2 db-1 cache-1
not not Service.Service == web => web-1 web-2
not not not Service.Service == web => db-1 cache-1
( ( Service.Service == db ) ) => db-1
(Service.Service == db) => db-1
Node.Node == n1 or Node.Node == n2 or Node.Node == n4 => web-1 web-2 cache-1
Service.Service == web and v2 in Service.Tags and Checks.Status == critical => web-2
not (Node.Node == n1 or Node.Node == n2) and (Service.Port == 5432 or Service.Port == 6379) => db-1 cache-1
# `not` is also a name, as in the PEG: `not in Tags` is "not" in Tags.
not in Service.Tags => web-2
not not in Service.Tags => web-1 db-1 cache-1
not not not in Service.Tags => web-2
# Bare words are values, dots and keywords included.
Service.Meta.dotted == a.b => web-1
Service.Service == and or Service.Service == db => db-1
# Go's escapes in double-quoted strings.
Service.Meta.note == "say \"hi\"\n" => web-1
Service.Meta.note == "\u0073ay \x22hi\x22\012" => web-1
Service.Meta.note == "\U00000073ay \"hi\"\n" => web-1
Service.Meta.path == `a\nb` => web-1
Service.Meta.path == "a\\nb" => web-1
Service.Meta.path == "a\nb" => none
"#;

    #[test]
    fn expressions_keep_the_entries_go_bexpr_would() {
        let rows = KEPT
            .lines()
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(|line| line.rsplit_once(" => ").unwrap_or((line, "?")))
            // Whitespace around an expression, which a table line would not keep.
            .chain([(" \t\nService.Service ==\n web\r\n", "web-1 web-2")]);
        for (expr, want) in rows {
            let want: Vec<&str> = match want {
                "all" => vec!["web-1", "web-2", "db-1", "cache-1"],
                "none" => vec![],
                ids => ids.split(' ').collect(),
            };
            assert_eq!(kept(expr), want, "{expr}");
        }
    }

    /// Expressions refused, with the position and part of the message, one a line.
    const REFUSED: &str = r#"
Service.Service == => 19: expected a value after "==", found end of input
Service.Service != ) => 20: expected a value after "!=", found ")"
(Service.Service == web => 24: ")" to close the "(" at 1
((a == b) or (c == d) => 22: to close the "(" at 1
Service.Service == web) => 23: ")" without a matching "("
() => 2: expected a selector, a value
Service.Service = web => 17: expected an operator after "Service.Service"
Service.Service === web => 19: expected a value after "==", found "="
Service.Service equals web => 17: expected an operator
Service.Service == web garbage => 24: expected "and", "or" or the end
Service.Service == web and => 27: expected an expression after "and"
Service.Service == web or(a == b) => 26: expected a space after "or"
Service.Service == web and or a == b => 31: expected an operator after "or"
Service.Service == my-service => 22: expected "and", "or" or the end, found "-"
Service.Tags contains => 22: expected a value after "contains"
Service.Tags is => 16: expected "empty" or "not empty"
Service.Tags is full => 17: expected "empty" after "is"
Service.Tags is not full => 21: expected "empty" after "is not"
Service.Tags not v1 => 18: expected "in", "contains" or "matches"
"v1" in => 8: expected a selector after "in"
"v1" in "Tags" => 9: expected a selector after "in"
"v1" == Tags => 6: expected "in" or "not in"
"v1"in Tags => 5: expected "in" or "not in"
"v1" not Tags => 10: expected "in" after "not"
== web => 1: expected a selector, a value, "not" or "("
not => 4: expected an expression after "not"
not(Service.Service == web) => 4: expected a space between "not" and "("
- in Tags => 2: expected a digit after "-"
Service.Meta.version == 1.2.3 => 28: after a number
Service.Port == 08080 => 18: after a number
Service.Port == 5and => 18: after a number
Service.Service == "web => 20: unterminated string
Service.Service == `web => 20: unterminated raw string
Service.Service == "w\qb" => 22: invalid escape "\q"
Service.Service == "w\'b" => 22: invalid escape
Service.Service == "\xff" => 21: byte escapes stop at 0x7f
Service.Service == "\x4" => 21: takes 2 digits
Service.Service == "\ud800" => 21: not a character
Service.Meta[team] == x => 14: expected a quoted key after "["
Service.Meta["team" == x => 21: "]" to close the "[" at 13
Service.Meta.["team"] == x => 14: expected a field name after "."
Service. == x => 9: expected a field name after "."
Service.Meta.ünï == x => 14: expected a field name after "."
Service.Meta.x == "é" garbage => 23: expected "and", "or" or the end
Service.Service matches "(" => 25: invalid regular expression: unclosed group
a == b and Service.Service not matches `[z-a]` => 40: invalid regular expression
a matches "(?:a{1000}){1000}" => 11: invalid regular expression
"#;

    #[test]
    fn bad_expressions_are_refused_at_their_position() {
        let over_long = "Service.Service == web or ".repeat(200);
        let over_deep = format!("{}a == b{}", "(".repeat(65), ")".repeat(65));
        let over_negated = format!("{}a == b", "not ".repeat(65));
        let many_regexes = vec!["a matches x"; 33].join(" or ");
        // Those a table line cannot hold: empty, surrounded by whitespace, multi-line, long.
        let special: Vec<(&str, usize, &str)> = vec![
            ("", 1, "empty expression"),
            ("   ", 4, "empty expression"),
            ("Service.Service == ", 20, "expected a value after \"==\""),
            (
                "Service.Service == \"a\nb\"",
                22,
                "a newline in a double-quoted string",
            ),
            (
                &many_regexes,
                11 + 32 * 15,
                "more than 32 regular expressions",
            ),
            (&over_long, 4097, "longer than 4096 bytes"),
            (&over_deep, 65, "nested deeper than 64"),
            (&over_negated, 257, "nested deeper than 64"),
        ];
        let table = REFUSED.lines().filter(|line| !line.is_empty()).map(|line| {
            let (expr, refusal) = line.rsplit_once(" => ").unwrap_or((line, ""));
            let (position, needle) = refusal.split_once(": ").unwrap_or(("0", ""));
            (expr, position.parse().unwrap_or(0), needle)
        });
        for (expr, position, needle) in table.chain(special) {
            match Filter::parse(expr) {
                Ok(_) => panic!("{expr:?} parsed"),
                Err(e) => {
                    let shown = e.to_string();
                    assert_eq!(e.position, position, "{expr:?}: {shown}");
                    let prefix = format!("filter: at {position}: ");
                    assert!(shown.starts_with(&prefix), "{shown}");
                    assert!(shown.contains(needle), "{expr:?}: {shown} lacks {needle:?}");
                }
            }
        }
    }

    #[test]
    fn nesting_and_length_up_to_the_bounds_parse() {
        let deep = format!("{}Service.Service == db{}", "(".repeat(64), ")".repeat(64));
        assert_eq!(kept(&deep), ["db-1"]);
        let negated = format!("{}Service.Service == db", "not ".repeat(64));
        assert_eq!(kept(&negated), ["db-1"]);
        // A flat chain as long as allowed neither recurses per operand nor overflows the stack.
        let mut chain = "Node.Node == n3".to_owned();
        while chain.len() + " or Node.Node == n9".len() <= MAX_EXPRESSION_LEN {
            chain.push_str(" or Node.Node == n9");
        }
        assert_eq!(kept(&chain), ["db-1"]);
        let regexes = vec!["Service.Service matches \"^d\""; MAX_REGEXES].join(" and ");
        assert_eq!(kept(&regexes), ["db-1"]);
    }

    #[test]
    fn an_empty_parameter_is_no_filter() {
        assert!(matches!(Filter::from_query(None), Ok(None)));
        assert!(matches!(Filter::from_query(Some("")), Ok(None)));
        assert!(matches!(Filter::from_query(Some("a == b")), Ok(Some(_))));
        assert!(Filter::from_query(Some(" ")).is_err());
    }

    #[test]
    fn retain_keeps_matching_serializable_items_in_order() {
        #[derive(Serialize)]
        #[serde(rename_all = "PascalCase")]
        struct Entry {
            service_name: &'static str,
            service_tags: Vec<&'static str>,
        }
        let entries = vec![
            Entry {
                service_name: "a",
                service_tags: vec!["x"],
            },
            Entry {
                service_name: "b",
                service_tags: vec![],
            },
            Entry {
                service_name: "c",
                service_tags: vec!["x", "y"],
            },
        ];
        let filter = Filter::parse("x in ServiceTags").expect("parses");
        let names: Vec<_> = filter
            .retain(entries)
            .into_iter()
            .map(|e| e.service_name)
            .collect();
        assert_eq!(names, ["a", "c"]);
        // A map with non-string keys cannot become JSON: it does not match.
        let unserializable = std::collections::HashMap::from([((1, 2), "x")]);
        assert!(
            !Filter::parse("a is empty")
                .expect("parses")
                .matches_serialized(&unserializable)
        );
    }

    /// Pieces of expressions for the token-sequence property: whole matches, connectives and
    /// fragments, so that sequences are often valid and often nearly so.
    fn token() -> impl Strategy<Value = String> {
        let connective = proptest::sample::select(vec!["and", "or", "not", "(", ")"]);
        let fragment = proptest::sample::select(vec![
            "Service",
            "Service.Tags",
            "Checks.Status",
            "Node.Meta[\"zone\"]",
            "Meta[`k`]",
            "in",
            "contains",
            "matches",
            "is",
            "empty",
            "==",
            "!=",
            "=",
            "[",
            "]",
            ".",
            "\"",
            "`",
            "\"web\"",
            "`v1`",
            "\"\\u00e9\"",
            "\"\\x",
            "\\",
            "5",
            "-1",
            "0.5",
            "1.2.3",
            "true",
            "web",
            "\"(\"",
            "\"[a-z]+\"",
            "é",
        ]);
        prop_oneof![
            3 => leaf(),
            3 => connective.prop_map(String::from),
            1 => fragment.prop_map(String::from),
        ]
    }

    /// A valid match over the fixture's fields (and one field it lacks).
    fn leaf() -> impl Strategy<Value = String> {
        let selector = proptest::sample::select(vec![
            "Service.Service",
            "Service.Tags",
            "Service.Meta.team",
            "Service.Meta[\"team\"]",
            "Node.Meta[`rack-id`]",
            "Node.Meta",
            "Checks.Status",
            "Checks",
            "Service.Port",
            "Service.EnableTagOverride",
            "Service.Weights.Passing",
            "Nope",
        ]);
        let value = proptest::sample::select(vec![
            "web",
            "\"web\"",
            "`v1`",
            "8080",
            "-1",
            "2.5",
            "true",
            "passing",
            "\"pass\"",
            "x",
            "\"\"",
            "a.b",
            "zone",
            "\"rack-id\"",
        ]);
        let pattern =
            proptest::sample::select(vec!["\"^w\"", "`^(passing|warning)$`", "e", "`\\d`"]);
        let operator = proptest::sample::select(vec![
            "{s} == {v}",
            "{s} != {v}",
            "{v} in {s}",
            "{v} not in {s}",
            "{s} contains {v}",
            "{s} not contains {v}",
            "{s} is empty",
            "{s} is not empty",
            "{s} matches {r}",
            "{s} not matches {r}",
        ]);
        (selector, value, pattern, operator)
            .prop_map(|(s, v, r, op)| op.replace("{s}", s).replace("{v}", v).replace("{r}", r))
    }

    /// An expression tree, evaluated by combining its leaves' results, to check the parser's
    /// reading of `not`, `and`, `or` and parentheses.
    #[derive(Debug, Clone)]
    enum Tree {
        Leaf(String),
        And(Box<Tree>, Box<Tree>),
        Or(Box<Tree>, Box<Tree>),
        Not(Box<Tree>),
    }

    impl Tree {
        fn eval(&self, entry: &Value) -> bool {
            match self {
                Tree::Leaf(s) => Filter::parse(s).is_ok_and(|f| f.matches(entry)),
                Tree::And(a, b) => a.eval(entry) && b.eval(entry),
                Tree::Or(a, b) => a.eval(entry) || b.eval(entry),
                Tree::Not(a) => !a.eval(entry),
            }
        }

        /// Written with the fewest parentheses precedence allows.
        fn text(&self) -> String {
            match self {
                Tree::Leaf(s) => s.clone(),
                Tree::And(a, b) => format!("{} and {}", a.and_operand(), b.and_operand()),
                Tree::Or(a, b) => format!("{} or {}", a.text(), b.text()),
                Tree::Not(a) => match **a {
                    Tree::Leaf(_) | Tree::Not(_) => format!("not {}", a.text()),
                    _ => format!("not ({})", a.text()),
                },
            }
        }

        fn and_operand(&self) -> String {
            match self {
                Tree::Or(..) => format!("({})", self.text()),
                _ => self.text(),
            }
        }
    }

    fn tree() -> impl Strategy<Value = Tree> {
        leaf()
            .prop_map(Tree::Leaf)
            .prop_recursive(4, 16, 2, |inner| {
                prop_oneof![
                    (inner.clone(), inner.clone())
                        .prop_map(|(a, b)| Tree::And(Box::new(a), Box::new(b))),
                    (inner.clone(), inner.clone())
                        .prop_map(|(a, b)| Tree::Or(Box::new(a), Box::new(b))),
                    inner.prop_map(|a| Tree::Not(Box::new(a))),
                ]
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(meridian_topology::fuzz_cases(3000)))]

        /// Any text is a filter or an error that points inside it (or just past its end).
        #[test]
        fn any_text_parses_or_is_refused_with_a_position(s in ".{0,200}|[()a-z =!\"`\\\\.\\[\\]-]{0,80}") {
            if let Err(e) = Filter::parse(&s) {
                prop_assert!(e.position >= 1 && e.position <= s.chars().count() + 1, "{s:?}: {e}");
                let prefix = format!("filter: at {}: ", e.position);
                prop_assert!(e.to_string().starts_with(&prefix), "{}", e);
            }
        }

        /// Any sequence of tokens parses or is refused; a parsed one evaluates, and `not (...)` of it
        /// keeps exactly the other entries.
        #[test]
        fn token_sequences_parse_and_evaluate(
            tokens in proptest::collection::vec(token(), 0..12),
            separators in proptest::collection::vec(proptest::sample::select(vec![" ", " ", " ", "", "\t", "\n "]), 12),
        ) {
            let expr: String = tokens
                .iter()
                .zip(&separators)
                .flat_map(|(t, s)| [t.as_str(), s])
                .collect();
            if let Ok(filter) = Filter::parse(&expr) {
                let negated = Filter::parse(&format!("not ({expr})"));
                prop_assert!(negated.is_ok(), "{expr:?}");
                if let Ok(negated) = negated {
                    for entry in entries() {
                        prop_assert_ne!(filter.matches(&entry), negated.matches(&entry), "{}", expr);
                    }
                }
            }
        }

        /// A tree written with the fewest parentheses reads back as that tree: `not` binds
        /// tighter than `and`, and `and` tighter than `or`.
        #[test]
        fn precedence_reads_trees_back(tree in tree()) {
            let text = tree.text();
            let filter = Filter::parse(&text);
            prop_assert!(filter.is_ok(), "{text:?}: {filter:?}");
            if let Ok(filter) = filter {
                for entry in entries() {
                    prop_assert_eq!(filter.matches(&entry), tree.eval(&entry), "{}", text);
                }
            }
        }
    }
}
