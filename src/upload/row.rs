//! Rows: a CRUD entry's data turned into what PostgREST receives.
//!
//! The client's SQLite values are converted where the deployment says so
//! (`UPLOAD_JSON_COLUMNS`, `UPLOAD_BOOLEAN_COLUMNS`), and in service mode the owner column is
//! enforced, because the service key bypasses the RLS policies that would otherwise do it:
//!
//! - PUT: the owner column is set to the caller's user id, overwriting whatever the client sent;
//! - PATCH: the owner column is removed from the data (a PATCH can never move a row to another
//!   user; together with the owner filter the planner adds, it only touches the caller's rows).
//!
//! In every mode `id` is the entry's: a PUT's row takes it from the entry, and a PATCH never
//! sets it (a PATCH that renamed the primary key would move the row away from the id the
//! client keeps using; the atomic function drops it too).

use std::borrow::Cow;

use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::crud::{Entry, Row};
use super::settings::{UploadSettings, WriteMode};

/// The columns of a row as they are written: the client's row (its values' text passed through)
/// with the columns the bridge sets, converts or leaves out. Costs no copy of the row.
#[derive(Debug, Clone)]
pub struct Columns<'a> {
    row: &'a Row,
    /// Columns set over the row's (or added), by name, with their raw JSON value.
    set: Vec<(&'a str, Cow<'a, str>)>,
    /// Columns of the row left out.
    removed: Vec<&'a str>,
}

impl<'a> Columns<'a> {
    /// The row's columns as the client sent them, nothing set or left out.
    pub fn of(row: &'a Row) -> Self {
        Columns { row, set: Vec::new(), removed: Vec::new() }
    }

    /// The columns in name order: (name, raw JSON value). The row's and the set columns are both
    /// in name order: one merge, a set column replacing the row's of the same name.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, &str)> + '_ {
        let removed = &self.removed;
        let mut own = self.row.iter().filter(move |(name, _)| removed.is_empty() || !removed.contains(name)).peekable();
        let mut set = self.set.iter().map(|(name, value)| (*name, value.as_ref())).peekable();
        std::iter::from_fn(move || match (own.peek(), set.peek()) {
            (Some(a), Some(b)) => match a.0.cmp(b.0) {
                std::cmp::Ordering::Less => own.next(),
                std::cmp::Ordering::Equal => {
                    own.next();
                    set.next()
                }
                std::cmp::Ordering::Greater => set.next(),
            },
            (Some(_), None) => own.next(),
            (None, _) => set.next(),
        })
    }

    fn set_index(&self, name: &str) -> Result<usize, usize> {
        self.set.binary_search_by(|(n, _)| (*n).cmp(name))
    }

    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }

    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// The column names, in order.
    pub fn names(&self) -> impl Iterator<Item = &'a str> + '_ {
        self.iter().map(|(name, _)| name)
    }

    /// Whether both have the same column names. Quick when both set and leave out the same
    /// names and their rows have the same names (the usual case in a batch).
    pub fn same_names(&self, other: &Columns) -> bool {
        let same_changes = self.removed == other.removed
            && self.set.len() == other.set.len()
            && self.set.iter().zip(&other.set).all(|(a, b)| a.0 == b.0);
        if same_changes
            && self.row.len() == other.row.len()
            && self.row.iter().zip(other.row.iter()).all(|(a, b)| a.0 == b.0)
        {
            return true;
        }
        self.names().eq(other.names())
    }

    /// Sets column `name` to the raw JSON `value`.
    pub fn set(&mut self, name: &'a str, value: Cow<'a, str>) {
        self.removed.retain(|n| *n != name);
        match self.set_index(name) {
            Ok(i) => self.set[i].1 = value,
            Err(i) => self.set.insert(i, (name, value)),
        }
    }

    pub fn remove(&mut self, name: &'a str) {
        if let Ok(i) = self.set_index(name) {
            self.set.remove(i);
        }
        if self.row.get(name).is_some() && !self.removed.contains(&name) {
            self.removed.push(name);
        }
    }

    /// Appends the columns as a JSON object to `out`.
    pub fn write_json(&self, out: &mut String) {
        out.push('{');
        for (i, (name, value)) in self.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_json_string(out, name);
            out.push(':');
            out.push_str(value);
        }
        out.push('}');
    }

    /// About the length [`write_json`](Self::write_json) appends (for buffer sizes).
    pub fn json_len(&self) -> usize {
        self.row.text_len()
            + 4 * self.row.len()
            + self.set.iter().map(|(n, v)| n.len() + v.len() + 4).sum::<usize>()
            + 2
    }

    pub fn to_json_string(&self) -> String {
        let mut out = String::with_capacity(self.json_len());
        self.write_json(&mut out);
        out
    }

    /// The columns as a JSON object (values parsed: dead letters and tests).
    pub fn to_map(&self) -> Map<String, Value> {
        self.iter().map(|(name, raw)| (name.to_string(), serde_json::from_str(raw).unwrap_or(Value::Null))).collect()
    }
}

/// Whether `text` is its own JSON string's content (nothing to escape).
pub fn is_plain(text: &str) -> bool {
    text.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\')
}

/// Appends `text` as a JSON string.
pub fn push_json_string(out: &mut String, text: &str) {
    if is_plain(text) {
        out.push('"');
        out.push_str(text);
        out.push('"');
    } else {
        out.push_str(&Value::String(text.to_string()).to_string());
    }
}

/// `text` as a JSON string.
pub fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    push_json_string(&mut out, text);
    out
}

/// JSON text PostgreSQL's jsonb can hold: U+0000, which it cannot hold, and a surrogate escape
/// that is not half of a pair (`\ud800` alone: jsonb refuses it, 22P02, and the record would
/// fail for ever), replaced by U+FFFD in every string and key, escape by escape (the only way
/// either appears in JSON text; `\\u0000` is a backslash and the text `u0000`, left as it is).
pub fn storable(json: &str) -> Cow<'_, str> {
    if !json.contains("\\u0000") && !json.contains("\\ud") && !json.contains("\\uD") {
        return Cow::Borrowed(json);
    }
    let unit = |escape: &str| {
        escape.strip_prefix("\\u").and_then(|hex| hex.get(..4)).and_then(|hex| u16::from_str_radix(hex, 16).ok())
    };
    let mut out = String::with_capacity(json.len());
    let mut rest = json;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        let escape = &rest[at..];
        let len = if escape.starts_with("\\u") { 6 } else { 2 }.min(escape.len());
        match unit(escape) {
            Some(0xD800..=0xDBFF) if matches!(escape.get(6..).and_then(unit), Some(0xDC00..=0xDFFF)) => {
                out.push_str(&escape[..12]); // a pair
                rest = &escape[12..];
                continue;
            }
            Some(0 | 0xD800..=0xDFFF) => out.push_str("\\ufffd"),
            _ => out.push_str(&escape[..len]),
        }
        rest = &escape[len..];
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// The data with the configured conversions applied:
/// - JSON columns: a string holding JSON text is sent as that JSON, its text exactly as written
///   (checked, never rebuilt: numbers keep every digit); a value that is not a string is sent as
///   it is. Text that does not parse is refused before this ([`not_json_text`]): sent as a JSON
///   string, a `json` or `jsonb` column would store it as one, quotes and all;
/// - boolean columns: the numbers 0 and 1 become false and true; other values are unchanged.
///
/// Every other value is the client's text, passed through as it is.
pub fn converted<'a>(table: &str, data: &'a Row, settings: &UploadSettings) -> Columns<'a> {
    let mut columns = Columns::of(data);
    let has_json = settings.json_columns.has_table(table);
    let has_boolean = settings.boolean_columns.has_table(table);
    if !has_json && !has_boolean {
        return columns;
    }
    for (column, raw) in data.iter() {
        let value = if has_json && settings.json_columns.contains(table, column) {
            json_value(raw)
        } else if has_boolean && settings.boolean_columns.contains(table, column) {
            boolean_value(raw)
        } else {
            continue;
        };
        if let Cow::Owned(_) | Cow::Borrowed("true" | "false") = value {
            if value != raw {
                columns.set(column, value);
            }
        }
    }
    columns
}

/// The first `UPLOAD_BOOLEAN_COLUMNS` column of `table` in `data` whose 0 or 1 [`converted`]
/// sends as `false` or `true`.
pub fn converted_boolean<'a>(table: &str, data: &'a Row, settings: &UploadSettings) -> Option<&'a str> {
    if !settings.boolean_columns.has_table(table) {
        return None;
    }
    data.iter()
        .find(|(column, raw)| settings.boolean_columns.contains(table, column) && exactly_zero_or_one(raw).is_some())
        .map(|(column, _)| column)
}

/// The first `UPLOAD_JSON_COLUMNS` column of `table` in `data` whose value is a string that is
/// neither JSON text (`[oops`, an empty string) nor shaped like a PostgreSQL array literal
/// (`{a,b}`, which an array column reads from a JSON string): [`converted`] could only send it as
/// a JSON string, which a `json` or `jsonb` column stores without an error, so the client's text
/// would come back to it quoted.
pub fn not_json_text<'a>(table: &str, data: &'a Row, settings: &UploadSettings) -> Option<&'a str> {
    if !settings.json_columns.has_table(table) {
        return None;
    }
    let not_json = |text: String| {
        let literal = text.trim();
        serde_json::from_str::<&RawValue>(&text).is_err() && !(literal.starts_with('{') && literal.ends_with('}'))
    };
    data.iter()
        .find(|(column, raw)| {
            settings.json_columns.contains(table, column)
                && raw.starts_with('"')
                && serde_json::from_str::<String>(raw).is_ok_and(not_json)
        })
        .map(|(column, _)| column)
}

fn json_value(raw: &str) -> Cow<'_, str> {
    if !raw.starts_with('"') {
        return Cow::Borrowed(raw);
    }
    let Ok(text) = serde_json::from_str::<String>(raw) else {
        return Cow::Borrowed(raw);
    };
    match serde_json::from_str::<&RawValue>(&text) {
        Ok(json) => Cow::Owned(json.get().to_string()),
        Err(_) => Cow::Borrowed(raw),
    }
}

fn boolean_value(raw: &str) -> Cow<'_, str> {
    match exactly_zero_or_one(raw) {
        Some(false) => Cow::Borrowed("false"),
        Some(true) => Cow::Borrowed("true"),
        None => Cow::Borrowed(raw),
    }
}

/// Whether the JSON number `raw` is exactly 0 (`Some(false)`) or exactly 1 (`Some(true)`), read
/// from its digits: `0.0`, `-0`, `1.0`, `10e-1` are; `0.99999999999999999999` and `1e-400` are
/// not, though a float would take them for 1 and 0. `None` for any other value or text.
fn exactly_zero_or_one(raw: &str) -> Option<bool> {
    let (negative, number) = match raw.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, raw),
    };
    let (mantissa, exponent) = number.split_once(['e', 'E']).unwrap_or((number, "0"));
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if whole.is_empty() || !whole.bytes().chain(fraction.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    // the value is <digits> × 10^(exponent − fraction's length)
    let digits = format!("{whole}{fraction}");
    let significant = digits.trim_start_matches('0');
    if significant.is_empty() {
        return Some(false); // whatever the exponent
    }
    let exponent = exponent.strip_prefix('+').unwrap_or(exponent).parse::<i64>().ok()?;
    let one = significant.trim_end_matches('0');
    let trailing = (significant.len() - one.len()) as i64;
    let fraction_len = i64::try_from(fraction.len()).ok()?;
    (one == "1" && !negative && exponent.checked_sub(fraction_len)?.checked_add(trailing)? == 0).then_some(true)
}

/// The row a PUT upserts: the converted data, `id` set from the entry (it wins over `data.id`),
/// and in service mode the owner column forced to `user_id`.
pub fn put_row<'a>(entry: &'a Entry, settings: &'a UploadSettings, user_id: &str) -> Columns<'a> {
    let mut row = converted(&entry.table, &entry.data, settings);
    row.set("id", Cow::Owned(json_string(&entry.id)));
    if let WriteMode::Service { owner_column, .. } = &settings.mode {
        row.set(owner_column, Cow::Owned(json_string(user_id)));
    }
    row
}

/// The columns a PATCH sets: the converted data, without `id` (a PATCH cannot rename a row) and
/// without the owner column in service mode. May be empty, in which case there is nothing to
/// send.
pub fn patch_data<'a>(entry: &'a Entry, settings: &'a UploadSettings) -> Columns<'a> {
    let mut data = converted(&entry.table, &entry.data, settings);
    data.remove("id");
    if let WriteMode::Service { owner_column, .. } = &settings.mode {
        data.remove(owner_column);
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upload::crud::Op;
    use serde_json::json;

    fn settings() -> UploadSettings {
        let mut s = UploadSettings::new("https://p.supabase.co", "anon");
        s.json_columns.insert("todos", "tags");
        s.boolean_columns.insert("todos", "done");
        s
    }

    fn service() -> UploadSettings {
        let mut s = settings();
        s.mode = WriteMode::Service { service_key: "svc".to_string(), owner_column: "owner".to_string() };
        s
    }

    fn entry(op: Op, data: Value) -> Entry {
        Entry {
            op,
            table: "todos".to_string(),
            id: "r1".to_string(),
            data: data.as_object().cloned().unwrap_or_default().into(),
            previous: None,
            metadata: None,
        }
    }

    fn map(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap_or_default()
    }

    fn row(value: Value) -> Row {
        Row::from_map(&map(value))
    }

    fn converted(table: &str, data: &Map<String, Value>, settings: &UploadSettings) -> Map<String, Value> {
        super::converted(table, &Row::from_map(data), settings).to_map()
    }

    #[test]
    fn an_escaped_backslash_before_u0000_is_no_nul() {
        assert_eq!(storable(r#"["\u0000","\\u0000","\\\u0000x"]"#), r#"["\ufffd","\\u0000","\\\ufffdx"]"#);
        assert!(matches!(storable(r#"{"a":"\n"}"#), Cow::Borrowed(_)));
    }

    #[test]
    fn a_surrogate_escape_without_its_pair_becomes_u_fffd_and_a_pair_stays() {
        assert_eq!(
            storable(r#"["\ud800","x\udc00","\ud83d\ude00","\uD83D\uDE00","\ud800\u0041","\\ud800"]"#),
            r#"["\ufffd","x\ufffd","\ud83d\ude00","\uD83D\uDE00","\ufffd\u0041","\\ud800"]"#
        );
        assert!(matches!(storable(r#"{"a":"\u00e9"}"#), Cow::Borrowed(_)));
    }

    #[test]
    fn values_without_a_conversion_are_passed_through_as_sent() {
        let data = Row::parse(r#"{"title": "a\u0062c", "n": 1.50, "nested": {"b": [1, 2], "a": null}}"#).unwrap();
        let columns = super::converted("lists", &data, &settings());
        assert_eq!(columns.to_json_string(), r#"{"n":1.50,"nested":{"b": [1, 2], "a": null},"title":"a\u0062c"}"#);
    }

    #[test]
    fn put_row_writes_id_and_owner_as_json_strings() {
        let entry = Entry {
            op: Op::Put,
            table: "t".into(),
            id: "a\"b".into(),
            data: row(json!({"x": 1})),
            previous: None,
            metadata: None,
        };
        let text = put_row(&entry, &service(), "u\\1").to_json_string();
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), json!({"id": "a\"b", "owner": "u\\1", "x": 1}));
    }

    #[test]
    fn json_text_in_json_columns_is_sent_as_json() {
        let data = map(json!({"tags": "[\"a\",1]", "title": "[1]"}));
        assert_eq!(converted("todos", &data, &settings()), map(json!({"tags": ["a", 1], "title": "[1]"})));
        let object = map(json!({"tags": "{\"k\":null}"}));
        assert_eq!(converted("todos", &object, &settings()), map(json!({"tags": {"k": null}})));
    }

    #[test]
    fn json_text_is_sent_as_written_never_through_a_float() {
        let data = row(
            json!({"tags": "{\"n\": 12345678901234567890123, \"pi\": 3.14159265358979323846, \"b\": 1, \"a\": 2}"}),
        );
        let tags = |data: &Row| {
            let columns = super::converted("todos", data, &settings());
            let tags = columns.iter().find(|(name, _)| *name == "tags").map(|(_, value)| value.to_string());
            tags
        };
        assert_eq!(
            tags(&data).as_deref(),
            Some("{\"n\": 12345678901234567890123, \"pi\": 3.14159265358979323846, \"b\": 1, \"a\": 2}")
        );
        let padded = row(json!({"tags": "  [1e400]\n"}));
        assert_eq!(tags(&padded).as_deref(), Some("[1e400]"));
    }

    #[test]
    fn text_that_is_not_json_in_a_json_column_is_found_and_nothing_else() {
        for text in ["[oops", "", "{\"a\": 1} trailing", "hello"] {
            let data = row(json!({"title": "x", "tags": text}));
            assert_eq!(not_json_text("todos", &data, &settings()), Some("tags"), "{text:?}");
            assert_eq!(not_json_text("lists", &data, &settings()), None, "not a JSON column of that table");
        }
        // JSON, or an array literal an array column reads (json_to_record('{"a":"{x,y}"}') as r(a text[]))
        for value in [
            json!("[1]"),
            json!("\"quoted\""),
            json!(" null "),
            json!(null),
            json!(7),
            json!(["a"]),
            json!("{x,y}"),
            json!(" {\"a b\",NULL} "),
        ] {
            let data = row(json!({"tags": value, "title": "[oops"}));
            assert_eq!(not_json_text("todos", &data, &settings()), None, "{value}");
        }
    }

    #[test]
    fn non_string_json_column_values_are_unchanged() {
        let data = map(json!({"tags": null}));
        assert_eq!(converted("todos", &data, &settings()), data);
        let data = map(json!({"tags": ["already"]}));
        assert_eq!(converted("todos", &data, &settings()), data);
    }

    #[test]
    fn zero_and_one_in_boolean_columns_become_booleans() {
        let data = map(json!({"done": 1}));
        assert_eq!(converted("todos", &data, &settings()), map(json!({"done": true})));
        let data = map(json!({"done": 0}));
        assert_eq!(converted("todos", &data, &settings()), map(json!({"done": false})));
        for (raw, value) in [
            ("1.0", "true"),
            ("10e-1", "true"),
            ("0.1E+1", "true"),
            ("-0", "false"),
            ("0.0e5", "false"),
            ("0e99999999999999999999", "false"),
        ] {
            assert_eq!(super::boolean_value(raw), value, "{raw}");
        }
    }

    #[test]
    fn other_boolean_column_values_are_unchanged() {
        for value in [json!(2), json!("1"), json!(null), json!(true), json!(-1)] {
            let data = map(json!({ "done": value }));
            assert_eq!(converted("todos", &data, &settings()), data);
        }
        // not 0 or 1, though a float would read them so: sent as written (the database refuses them)
        for raw in
            ["0.99999999999999999999", "1.00000000000000000001", "1e-400", "-1.0", "100e-1", "1e99999999999999999999"]
        {
            assert_eq!(super::boolean_value(raw), raw, "{raw}");
        }
    }

    #[test]
    fn conversions_apply_only_to_their_table() {
        let data = map(json!({"done": 1, "tags": "[1]"}));
        assert_eq!(converted("lists", &data, &settings()), data);
    }

    #[test]
    fn put_row_takes_id_from_the_entry() {
        let row = put_row(&entry(Op::Put, json!({"id": "other", "done": 0})), &settings(), "u1").to_map();
        assert_eq!(row, map(json!({"id": "r1", "done": false})));
    }

    #[test]
    fn service_put_row_forces_the_owner() {
        let row = put_row(&entry(Op::Put, json!({"owner": "someone-else", "title": "t"})), &service(), "u1").to_map();
        assert_eq!(row, map(json!({"id": "r1", "owner": "u1", "title": "t"})));
        let row = put_row(&entry(Op::Put, json!({})), &service(), "u1").to_map();
        assert_eq!(row, map(json!({"id": "r1", "owner": "u1"})));
    }

    #[test]
    fn service_patch_data_drops_the_owner() {
        let data = patch_data(&entry(Op::Patch, json!({"owner": "thief", "done": 1})), &service()).to_map();
        assert_eq!(data, map(json!({"done": true})));
        assert!(patch_data(&entry(Op::Patch, json!({"owner": "thief"})), &service()).is_empty());
    }

    #[test]
    fn rls_patch_data_keeps_every_column_but_id() {
        let data = patch_data(&entry(Op::Patch, json!({"owner": "x", "done": 0})), &settings()).to_map();
        assert_eq!(data, map(json!({"owner": "x", "done": false})));
    }

    #[test]
    fn patch_data_never_renames_the_primary_key() {
        for settings in [settings(), service()] {
            let data = patch_data(&entry(Op::Patch, json!({"id": "r2", "done": 1})), &settings).to_map();
            assert_eq!(data, map(json!({"done": true})));
            assert!(patch_data(&entry(Op::Patch, json!({"id": "r2"})), &settings).is_empty());
        }
    }
}
