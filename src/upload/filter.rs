//! PostgREST row filters on client-chosen ids, quoted so that no id can break or widen them.
//!
//! Ids come from clients and may contain anything (`,` `)` `&` `"` `\` `=` `%`, unicode...):
//!
//! - `eq.<value>`: PostgREST takes everything after `eq.` literally, so the value only needs to
//!   survive the query string: it is percent-encoded fully (everything except the unreserved
//!   `A-Za-z0-9-._~`).
//! - `in.(…)`: every value is double-quoted, with `\` → `\\` and `"` → `\"` inside, so `,` and `)`
//!   cannot end it early; then the whole list is percent-encoded like an `eq.` value.
//!
//! Filters put ids in the URL, and gateways in front of PostgREST refuse request lines longer
//! than about 8 KiB (nginx/Kong default; Supabase clients cap URLs at 8000 characters), so the
//! planner uses [`InList`] to keep every merged filter within [`MAX_URL_BYTES`].

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use super::id_set::{self, IdSet};

/// Longest URL the planner builds when merging ids into one `in.(…)` filter. A single id longer
/// than this is still sent alone in an `eq.` filter.
pub const MAX_URL_BYTES: usize = 8000;

/// Everything but the unreserved characters of RFC 3986.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Length of `%2C`, the encoded separator between `in.(…)` items.
const SEPARATOR_LEN: usize = 3;
/// Length of `in.%28` + `%29`.
const IN_FRAME_LEN: usize = 3 + 3 + 3;

/// Percent-encodes a value for a query string (everything but `A-Za-z0-9-._~`).
pub fn encode(value: &str) -> String {
    utf8_percent_encode(value, QUERY_VALUE).to_string()
}

/// `eq.<value>`, encoded: matches exactly `value`.
pub fn eq(value: &str) -> String {
    format!("eq.{}", encode(value))
}

/// `isdistinct.<value>`, encoded: matches every row whose column is not `value`, NULL included
/// (PostgREST 12+).
pub fn is_distinct(value: &str) -> String {
    format!("isdistinct.{}", encode(value))
}

/// A value double-quoted for an `in.(…)` list: `\` → `\\`, `"` → `\"`.
pub fn quote(value: &str) -> String {
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('"');
    for c in value.chars() {
        if c == '\\' || c == '"' {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    quoted
}

/// A growing list of distinct ids for an id filter, tracking the encoded length so the caller can
/// stop before the URL gets too long. Membership is a set lookup, so merging n entries stays O(n)
/// (a 1,000-PUT batch spent most of its planning time comparing ids before).
#[derive(Debug, Clone)]
pub struct InList {
    ids: Vec<String>,
    seen: IdSet<String>,
    /// Sum of the encoded, quoted ids.
    items_len: usize,
}

impl Default for InList {
    fn default() -> Self {
        InList { ids: Vec::new(), seen: id_set::new(), items_len: 0 }
    }
}

impl InList {
    pub fn new() -> Self {
        InList::default()
    }

    /// The ids, in first-seen order.
    pub fn ids(&self) -> &[String] {
        &self.ids
    }

    pub fn contains(&self, id: &str) -> bool {
        self.seen.contains(id)
    }

    /// Length of [`filter`](Self::filter) if `id` were added (unchanged for a known id).
    pub fn len_with(&self, id: &str) -> usize {
        if self.contains(id) {
            return self.filter_len();
        }
        let count = self.ids.len() + 1;
        if count == 1 {
            return eq(id).len();
        }
        IN_FRAME_LEN + self.items_len + encode(&quote(id)).len() + SEPARATOR_LEN * (count - 1)
    }

    /// Adds `id` unless already present.
    pub fn push(&mut self, id: &str) {
        if self.seen.insert(id.to_string()) {
            self.items_len += encode(&quote(id)).len();
            self.ids.push(id.to_string());
        }
    }

    /// Length of the current filter value.
    pub fn filter_len(&self) -> usize {
        match self.ids.as_slice() {
            [] => 0,
            [only] => eq(only).len(),
            ids => IN_FRAME_LEN + self.items_len + SEPARATOR_LEN * (ids.len() - 1),
        }
    }

    /// The filter value: `eq.<id>` for one id, `in.("a","b")` (encoded) for several.
    pub fn filter(&self) -> String {
        match self.ids.as_slice() {
            [only] => eq(only),
            ids => {
                let quoted: Vec<String> = ids.iter().map(|id| quote(id)).collect();
                format!("in.{}", encode(&format!("({})", quoted.join(","))))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use percent_encoding::percent_decode_str;

    fn decode(value: &str) -> String {
        percent_decode_str(value).decode_utf8_lossy().into_owned()
    }

    const NASTY: [&str; 10] =
        ["a,b", "a)b", "a&id=neq.x", "a\"b", "a\\b", "a=b", "100%", "ünï ☃", "a.b:c", "x)&or=(id.neq.1"];

    #[test]
    fn eq_encodes_everything_but_unreserved() {
        assert_eq!(eq("abc-1._~"), "eq.abc-1._~");
        assert_eq!(eq("a,b"), "eq.a%2Cb");
        assert_eq!(eq("a&id=1"), "eq.a%26id%3D1");
        assert_eq!(eq("100%"), "eq.100%25");
        assert_eq!(eq("a b+c"), "eq.a%20b%2Bc");
        assert_eq!(eq("é"), "eq.%C3%A9");
        assert_eq!(eq("a\"\\"), "eq.a%22%5C");
    }

    #[test]
    fn eq_of_nasty_ids_decodes_to_the_literal_and_stays_one_parameter() {
        for id in NASTY {
            let value = eq(id);
            assert!(!value.contains(['&', '=', ',', '(', ')', '"', '\\', ' ']), "{value}");
            assert_eq!(decode(&value), format!("eq.{id}"));
        }
    }

    #[test]
    fn quote_escapes_backslash_and_double_quote() {
        assert_eq!(quote("plain"), "\"plain\"");
        assert_eq!(quote("a\"b"), "\"a\\\"b\"");
        assert_eq!(quote("a\\b"), "\"a\\\\b\"");
        assert_eq!(quote("\\\""), "\"\\\\\\\"\"");
    }

    #[test]
    fn in_list_quotes_every_value_then_encodes() {
        let mut list = InList::new();
        list.push("a");
        list.push("b,c");
        assert_eq!(list.filter(), "in.%28%22a%22%2C%22b%2Cc%22%29");
        assert_eq!(decode(&list.filter()), "in.(\"a\",\"b,c\")");
    }

    #[test]
    fn in_list_of_nasty_ids_decodes_to_exactly_those_ids() {
        let mut list = InList::new();
        for id in NASTY {
            list.push(id);
        }
        let value = list.filter();
        assert!(!value.contains(['&', '=', ',', '(', ')', '"', '\\', ' ']), "{value}");
        let decoded = decode(&value);
        let expected: Vec<String> = NASTY.iter().map(|id| quote(id)).collect();
        assert_eq!(decoded, format!("in.({})", expected.join(",")));
        assert_eq!(parse_in_list(&decoded), NASTY.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    }

    /// A reading of `in.(…)` following PostgREST's grammar for quoted values.
    fn parse_in_list(decoded: &str) -> Vec<String> {
        let inner = decoded.strip_prefix("in.(").and_then(|s| s.strip_suffix(')')).expect("in list");
        let mut values = Vec::new();
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            assert_eq!(c, '"', "every value is quoted");
            let mut value = String::new();
            loop {
                match chars.next().expect("closing quote") {
                    '\\' => value.push(chars.next().expect("escaped char")),
                    '"' => break,
                    other => value.push(other),
                }
            }
            values.push(value);
            match chars.next() {
                None => break,
                Some(',') => {}
                Some(other) => panic!("unexpected {other}"),
            }
        }
        values
    }

    #[test]
    fn one_id_uses_eq_and_duplicates_are_dropped() {
        let mut list = InList::new();
        list.push("x,y");
        list.push("x,y");
        assert_eq!(list.ids(), ["x,y".to_string()]);
        assert_eq!(list.filter(), "eq.x%2Cy");
    }

    #[test]
    fn predicted_lengths_match_the_built_filter() {
        let mut list = InList::new();
        assert_eq!(list.filter_len(), 0);
        for id in NASTY.iter().chain(["a", "a", "b"].iter()) {
            let predicted = list.len_with(id);
            list.push(id);
            assert_eq!(predicted, list.filter().len(), "{id}");
            assert_eq!(list.filter_len(), list.filter().len());
        }
    }

    #[test]
    fn is_distinct_is_encoded() {
        assert_eq!(is_distinct("u&1"), "isdistinct.u%261");
    }
}
