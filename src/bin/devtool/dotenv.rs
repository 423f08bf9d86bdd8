//! A `.dev.vars` file read as wrangler reads it: with dotenv 16's `parse` (the version wrangler
//! bundles; no `${...}` expansion for `.dev.vars`). That function is one regular expression,
//!
//! ```text
//! (?:^|^)\s*(?:export\s+)?([\w.-]+)(?:\s*=\s*?|:\s+?)(\s*'(?:\\'|[^'])*'|\s*"(?:\\"|[^"])*"|\s*`(?:\\`|[^`])*`|[^#\r\n]+)?\s*(?:#.*)?(?:$|$)
//! ```
//!
//! (flags `mg`) applied to the text with `\r\n` and `\r` made `\n`, each value then trimmed,
//! unquoted when it starts and ends with the same quote, and, when it started with `"`, its `\n`
//! and `\r` turned into line breaks; a name set twice keeps its last value. Here the expression is
//! followed step by step, trying the alternatives in the order JavaScript's backtracking does, so
//! odd inputs come out the same too: `export NAME=`, `NAME: value`, a `# comment` after a value,
//! a quoted value spanning lines, a quote escaped with `\`. (Checked against dotenv on 27,000
//! random texts: the same settings for all but those with U+2028 or U+2029 inside a value, which
//! JavaScript's multiline unquoting counts as line ends and which this does not follow.)

use std::collections::HashMap;

/// JavaScript's `\s`.
fn space(c: char) -> bool {
    (c.is_whitespace() && c != '\u{85}') || c == '\u{feff}'
}

/// JavaScript's line terminators (where a multiline `^` / `$` matches, what `.` does not match).
fn line_end(c: char) -> bool {
    matches!(c, '\n' | '\r' | '\u{2028}' | '\u{2029}')
}

/// `[\w.-]`
fn name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

struct Matcher {
    s: Vec<char>,
}

impl Matcher {
    fn at(&self, i: usize) -> Option<char> {
        self.s.get(i).copied()
    }

    /// `\s*`, greedy (every use here is followed by something `\s` cannot match, or by a tail
    /// that backtracks itself, so giving characters back never helps).
    fn spaces(&self, mut i: usize) -> usize {
        while self.at(i).is_some_and(space) {
            i += 1;
        }
        i
    }

    /// One match starting at line start `p`: (name, raw value, end).
    fn match_at(&self, p: usize) -> Option<(String, String, usize)> {
        let i = self.spaces(p);
        for export in [true, false] {
            let mut j = i;
            if export {
                let word: String = self.s.iter().skip(i).take(6).collect();
                if word != "export" || !self.at(i + 6).is_some_and(space) {
                    continue;
                }
                j = self.spaces(i + 6);
            }
            let mut k = j;
            while self.at(k).is_some_and(name_char) {
                k += 1;
            }
            if k == j {
                continue;
            }
            let name: String = self.s[j..k].iter().collect();
            // `\s*=\s*?`: the lazy spaces after `=`, fewest first
            let eq = self.spaces(k);
            if self.at(eq) == Some('=') {
                let mut q = eq + 1;
                loop {
                    if let Some((value, end)) = self.value_and_tail(q) {
                        return Some((name, value, end));
                    }
                    if !self.at(q).is_some_and(space) {
                        break;
                    }
                    q += 1;
                }
            }
            // `:\s+?`
            if self.at(k) == Some(':') {
                let mut q = k + 1;
                while self.at(q).is_some_and(space) {
                    q += 1;
                    if let Some((value, end)) = self.value_and_tail(q) {
                        return Some((name, value, end));
                    }
                }
            }
        }
        None
    }

    /// The optional value group from `q`, then the tail: (raw value, end).
    fn value_and_tail(&self, q: usize) -> Option<(String, usize)> {
        for quote in ['\'', '"', '`'] {
            let open = self.spaces(q);
            if self.at(open) != Some(quote) {
                continue;
            }
            // `(?:\\Q|[^Q])*Q`: a closing quote is any quote up to the first one not escaped;
            // the greedy body tries the farthest first.
            let mut closings = Vec::new();
            let mut b = open + 1;
            while let Some(c) = self.at(b) {
                if c == quote {
                    closings.push(b);
                    if !(b > open + 1 && self.at(b - 1) == Some('\\')) {
                        break;
                    }
                }
                b += 1;
            }
            for &close in closings.iter().rev() {
                if let Some(end) = self.tail(close + 1) {
                    return Some((self.s[q..=close].iter().collect(), end));
                }
            }
        }
        // `[^#\r\n]+`, greedy: what follows it (`#`, a line break or the end) always ends a tail
        let mut e = q;
        while self.at(e).is_some_and(|c| !matches!(c, '#' | '\r' | '\n')) {
            e += 1;
        }
        if e > q {
            if let Some(end) = self.tail(e) {
                return Some((self.s[q..e].iter().collect(), end));
            }
        }
        self.tail(q).map(|end| (String::new(), end))
    }

    /// `\s*(?:#.*)?(?:$|$)` from `t`: the end of the match.
    fn tail(&self, t: usize) -> Option<usize> {
        let w = self.spaces(t);
        match self.at(w) {
            Some('#') => {
                let mut e = w;
                while self.at(e).is_some_and(|c| !line_end(c)) {
                    e += 1;
                }
                Some(e)
            }
            None => Some(w),
            // backtrack: the last of the spaces that is a line end (`$` before it)
            Some(_) => (t..w).rev().find(|&x| self.at(x).is_some_and(line_end)),
        }
    }

    fn line_start(&self, p: usize) -> bool {
        p == 0 || self.at(p - 1).is_some_and(line_end)
    }
}

/// The settings of a `.dev.vars` text, as wrangler's dotenv reads them.
pub fn parse(text: &str) -> HashMap<String, String> {
    let matcher = Matcher { s: text.replace("\r\n", "\n").replace('\r', "\n").chars().collect() };
    let mut settings = HashMap::new();
    let mut p = 0;
    while p <= matcher.s.len() {
        match matcher.line_start(p).then(|| matcher.match_at(p)).flatten() {
            Some((name, raw, end)) => {
                settings.insert(name, value(&raw));
                p = end;
            }
            None => p += 1,
        }
    }
    settings
}

/// dotenv's clean-up of a matched value.
fn value(raw: &str) -> String {
    let value = raw.trim_matches(space);
    let first = value.chars().next();
    let mut value = match first {
        Some(q @ ('\'' | '"' | '`')) if value.chars().count() >= 2 && value.ends_with(q) => {
            value[1..value.len() - 1].to_string()
        }
        _ => value.to_string(),
    };
    if first == Some('"') {
        value = value.replace("\\n", "\n").replace("\\r", "\r");
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Vec<(String, String)> {
        let mut settings: Vec<_> = parse(text).into_iter().collect();
        settings.sort();
        settings
    }

    fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut pairs: Vec<_> = expected.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        pairs.sort();
        pairs
    }

    // Every expectation below is what wrangler 4.164.0's dotenv (16.3.1) `parse` returns for the
    // same text (checked with node against node_modules/wrangler when this was written).

    #[test]
    fn quoted_values_are_unquoted_and_only_double_quotes_expand_escapes() {
        let text = "A='single # not a comment'\nB=\"-----BEGIN\\nX\\n-----END\"\nC=`back`\nD='a\\nb'\n";
        assert_eq!(
            read(text),
            pairs(&[("A", "single # not a comment"), ("B", "-----BEGIN\nX\n-----END"), ("C", "back"), ("D", "a\\nb")])
        );
    }

    #[test]
    fn a_quoted_url_is_the_url() {
        // the case `make dev` met: `devtool mint` put the quotes into the token's iss
        assert_eq!(
            read("SUPABASE_URL='http://127.0.0.1:54321'\n"),
            pairs(&[("SUPABASE_URL", "http://127.0.0.1:54321")])
        );
        assert_eq!(
            read("SUPABASE_URL=\"http://127.0.0.1:54321/\""),
            pairs(&[("SUPABASE_URL", "http://127.0.0.1:54321/")])
        );
    }

    #[test]
    fn export_prefix_comments_spaces_and_colons_are_dotenvs() {
        let text = "# a comment\n\n  export A = plain value   # trailing comment\nB=\"quoted\" # comment\nC: colon\n\
                    D=\nE= # only a comment\nF=a#b\n";
        assert_eq!(
            read(text),
            pairs(&[("A", "plain value"), ("B", "quoted"), ("C", "colon"), ("D", ""), ("E", ""), ("F", "a")])
        );
    }

    #[test]
    fn the_last_of_a_name_set_twice_wins() {
        assert_eq!(read("A=1\nA='2'\n"), pairs(&[("A", "2")]));
    }

    #[test]
    fn line_breaks_of_every_kind_end_lines_and_quoted_values_may_span_them() {
        assert_eq!(read("A=1\r\nB=2\rC=\"x\ny\"\n"), pairs(&[("A", "1"), ("B", "2"), ("C", "x\ny")]));
    }

    #[test]
    fn odd_quoting_comes_out_as_in_dotenv() {
        let text = "A='it\\'s'\nC=\"x\" trailing\nE=''\nF='a' 'b'\nG='unterminated\nH=2\n";
        assert_eq!(
            read(text),
            pairs(&[
                ("A", "it\\'s"),
                ("C", "\"x\" trailing"),
                ("E", ""),
                ("F", "a' 'b"),
                ("G", "'unterminated"),
                ("H", "2")
            ])
        );
    }

    #[test]
    fn an_open_quote_runs_to_the_next_such_quote_even_lines_later() {
        assert_eq!(read("A='x\nB=\"y\"\nC='\nD=1\n"), pairs(&[("A", "x\nB=\"y\"\nC="), ("D", "1")]));
    }

    #[test]
    fn lines_that_are_not_settings_are_skipped() {
        assert_eq!(read("not a setting\nA:b\n=1\nB=2"), pairs(&[("B", "2")]));
    }
}
