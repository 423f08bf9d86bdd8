//! Upload bodies: the CRUD entries a PowerSync client queued, in every accepted wire shape.
//!
//! PowerSync has no single upload format, so three shapes seen in the wild are accepted:
//!
//! - `{"transactions":[{"transaction_id"?: number|string, "crud":[entry, ...]}, ...]}`
//!   (the reference write API);
//! - `{"batch":[entry, ...]}` (the official Node demo), read as ONE transaction;
//! - `{"operations":[entry, ...]}` (the SDK's `toJSON` shape), read as ONE transaction.
//!
//! An entry is an object with:
//! - `op`: `PUT`, `PATCH` or `DELETE`. Matched ignoring ASCII case (`put` is accepted): the
//!   meaning is unambiguous and refusing it would answer 400 for the whole body, which blocks a
//!   client's queue for ever.
//! - `id`: a string; a JSON number is accepted and used in its JSON text form (`5`). Whether the
//!   id can be sent (not empty, no U+0000) is decided when planning, so a bad id fails only its
//!   own transaction (see `plan`): the SDK queues an empty id as any other, and a 400 for the
//!   whole body would block the client's queue for ever.
//! - the table as `table` or `type`: a string. Whether the name is valid and allowed is decided
//!   when planning, so a bad name (an empty one too) fails only its own transaction.
//! - the data as `data`, `opData` or `op_data`: a JSON object, or null/absent (= no columns).
//!   The data of a DELETE is checked the same way and then ignored.
//! - optionally the row's previous values as `previous_values`, `previousValues` or `old` (the
//!   SDK's `previousValues`, sent when the table has `trackPrevious`): a JSON object, or
//!   null/absent (= not known). Checked for every op, kept for PATCH and DELETE only (a PUT
//!   replaces the row whatever it held). Used by conflict detection (docs/conflicts.md).
//! - optionally `metadata` (the SDK's, from a table's `_metadata` column with `trackMetadata`):
//!   a string (any length within the body's limit), or null. Kept for dead letters only.
//!
//! The body may also carry `"client_id"`: the PowerSync client id of the uploading database
//! (`db.getClientId()`), a non-empty string of at most [`MAX_CLIENT_ID_BYTES`] bytes, or null
//! (= none). With it, the atomic function applies each transaction that has a `transaction_id`
//! exactly once (see `plan` and `sql/atomic_upload.sql`); anything else there is malformed.
//!
//! When an entry carries several aliases of the same field they must hold the same value,
//! otherwise the entry is malformed (which one to believe would be a guess). Other fields
//! (`op_id`, `tx_id`, `clientId`, ...) are ignored, and so
//! are unknown top-level fields; naming two of `transactions`/`batch`/`operations` is malformed.
//!
//! Errors name the offending place as a path such as `transactions[1].crud[0].op` (`$` is the
//! body itself), so a developer can find the bad entry. The adapter answers
//! [`CrudError::Malformed`] with 400 and [`CrudError::TooLarge`] with 413.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// Default for [`Limits::max_body_bytes`]: 5 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 5 * 1024 * 1024;
/// Default for [`Limits::max_entries`].
pub const DEFAULT_MAX_ENTRIES: usize = 10_000;
/// Default for [`Limits::max_transactions`].
pub const DEFAULT_MAX_TRANSACTIONS: usize = 1_000;

/// Size limits on one upload body, so a single request cannot exhaust the isolate's memory or
/// CPU time. Exceeding one is [`CrudError::TooLarge`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `UPLOAD_MAX_BODY_BYTES`: largest body accepted, in bytes.
    pub max_body_bytes: usize,
    /// `UPLOAD_MAX_ENTRIES`: most CRUD entries in one body, all transactions together.
    pub max_entries: usize,
    /// `UPLOAD_MAX_TRANSACTIONS`: most transactions in one body.
    pub max_transactions: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_entries: DEFAULT_MAX_ENTRIES,
            max_transactions: DEFAULT_MAX_TRANSACTIONS,
        }
    }
}

/// What a CRUD entry does to its row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// Insert or replace the row: applied as an upsert by `id`.
    Put,
    /// Update the given columns of the row (`null` sets a column to NULL).
    Patch,
    /// Delete the row.
    Delete,
}

impl Op {
    /// The wire name: `PUT`, `PATCH` or `DELETE`.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Put => "PUT",
            Op::Patch => "PATCH",
            Op::Delete => "DELETE",
        }
    }

    fn parse(text: &str) -> Option<Op> {
        if text.eq_ignore_ascii_case("PUT") {
            Some(Op::Put)
        } else if text.eq_ignore_ascii_case("PATCH") {
            Some(Op::Patch)
        } else if text.eq_ignore_ascii_case("DELETE") {
            Some(Op::Delete)
        } else {
            None
        }
    }
}

/// One queued local write, normalised from whichever aliases the client used.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub op: Op,
    /// The table name exactly as sent (validated when planning).
    pub table: String,
    /// The row id, never empty.
    pub id: String,
    /// The columns as sent, before any conversion. Always empty for DELETE.
    pub data: Row,
    /// The row's values as the client last saw them, before this write (the SDK's
    /// `previousValues`, sent when the table tracks them): `None` when not sent, and always for
    /// PUT. Used only by conflict detection (`UPLOAD_CONFLICT_DETECTION`, see `plan`).
    pub previous: Option<Row>,
    /// The app's metadata of this write (the SDK's `metadata`, from a table's `_metadata`
    /// column), `None` when not sent. Kept for dead letters; never written to the row.
    pub metadata: Option<String>,
}

impl Entry {
    /// The entry in normalised JSON form `{"op","table","id","data"?,"previous_values"?,
    /// "metadata"?}` (no `data` for DELETE; the last two only when sent): the data is the
    /// client's, before conversions, its values read as `serde_json` values (a number no float
    /// holds reads null). For tests and the fuzz target; the dead letter writes the same shape
    /// with each value's text as sent (`dead_letter::entry_text`).
    pub fn to_json(&self) -> Value {
        let mut object = Map::new();
        object.insert("op".to_string(), Value::String(self.op.as_str().to_string()));
        object.insert("table".to_string(), Value::String(self.table.clone()));
        object.insert("id".to_string(), Value::String(self.id.clone()));
        if self.op != Op::Delete {
            object.insert("data".to_string(), Value::Object(self.data.to_map()));
        }
        if let Some(previous) = &self.previous {
            object.insert("previous_values".to_string(), Value::Object(previous.to_map()));
        }
        if let Some(metadata) = &self.metadata {
            object.insert("metadata".to_string(), Value::String(metadata.clone()));
        }
        Value::Object(object)
    }
}

/// A client transaction: entries the client wrote together and will discard or retry together.
#[derive(Debug, Clone, PartialEq)]
pub struct Transaction {
    /// The client's id for it (a JSON number or string), echoed in the report; `None` when the
    /// body shape has none (`batch`, `operations`) or it was null.
    pub transaction_id: Option<Value>,
    pub entries: Vec<Entry>,
}

/// The header that carries [`Transaction::entries_digest`] to the atomic function and to the
/// dead-letter recorder (`sql/atomic_upload.sql` reads it from PostgREST's `request.headers`).
pub const ENTRIES_DIGEST_HEADER: &str = "X-PowerSync-Entries-Digest";

impl Transaction {
    /// The transaction's entries as the client sent them, hashed: each entry's op, table, id and
    /// data columns (name, the value's text as sent; in name order), each piece length-prefixed,
    /// as a 128-bit XXH3 in 32 hex digits. Every attempt of one transaction has the same digest
    /// whatever the worker's settings (conversions, write mode) or version, unlike the ops the
    /// worker writes: the atomic function's ledger knows a re-sent or late call by either, so a
    /// change of settings or a gradual deployment between two attempts no longer applies it
    /// twice. What goes in must never change (records one version made are matched by the
    /// next). Fast rather than cryptographic: a collision can only come from the caller's own
    /// entries, and only ever matches the caller's own records.
    pub fn entries_digest(&self) -> String {
        let size: usize = self.entries.iter().map(|e| e.data.text_len() + 8 * e.data.len() + e.id.len() + 64).sum();
        let mut bytes = Vec::with_capacity(size);
        let piece = |bytes: &mut Vec<u8>, text: &str| {
            bytes.extend_from_slice(&(text.len() as u32).to_le_bytes());
            bytes.extend_from_slice(text.as_bytes());
        };
        for entry in &self.entries {
            piece(&mut bytes, entry.op.as_str());
            piece(&mut bytes, &entry.table);
            piece(&mut bytes, &entry.id);
            bytes.extend_from_slice(&(entry.data.len() as u32).to_le_bytes());
            for (name, value) in entry.data.iter() {
                piece(&mut bytes, name);
                piece(&mut bytes, value);
            }
        }
        format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&bytes))
    }
}

/// A whole upload body: the client's id, when it sent one, and its transactions in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Upload {
    /// `client_id`: the PowerSync client id (`db.getClientId()`), `None` when absent or null.
    pub client_id: Option<String>,
    pub transactions: Vec<Transaction>,
}

/// Longest accepted `client_id` (PowerSync's are uuids, 36 bytes).
pub const MAX_CLIENT_ID_BYTES: usize = 256;

/// Why an upload body was refused as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CrudError {
    /// The body is not one of the accepted shapes (answered with 400). `path` locates the fault.
    Malformed { path: String, message: String },
    /// The body exceeds a [`Limits`] value (answered with 413).
    TooLarge { message: String },
}

impl fmt::Display for CrudError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CrudError::Malformed { path, message } => write!(f, "{path}: {message}"),
            CrudError::TooLarge { message } => f.write_str(message),
        }
    }
}

impl std::error::Error for CrudError {}

/// A row's columns as the client sent them: each column's name and the raw JSON text of its
/// value, which is passed on to PostgREST as it is (never rebuilt) unless a conversion applies.
/// Names are unique (the last of a repeated name wins, as in a JSON object) and kept in name
/// order; one buffer holds every name and value.
#[derive(Clone, Default)]
pub struct Row {
    text: String,
    /// Per column: (name start, name end = value start, value end) in `text`.
    columns: Vec<(u32, u32, u32)>,
}

impl Row {
    /// The row of a JSON object's text. Errors only when `object` is not a JSON object.
    pub fn parse(object: &str) -> Result<Row, String> {
        let raw = serde_json::from_str::<&RawValue>(object).map_err(|e| e.to_string())?;
        if !raw.get().starts_with('{') {
            return Err(format!("expected an object, found {}", kind_of(raw)));
        }
        Ok(Row::of_object(raw))
    }

    /// The row of `object`, which serde_json has read as a JSON object: its text is valid JSON,
    /// so a scan finds where each name and value starts and ends (serde_json reading it again
    /// cost more).
    fn of_object(object: &RawValue) -> Row {
        let text = object.get();
        let bytes = text.as_bytes();
        let mut row = Row { text: String::with_capacity(text.len()), columns: Vec::new() };
        let mut at = skip_space(bytes, 1);
        while bytes.get(at) == Some(&b'"') {
            let (name_end, escaped) = string_end(bytes, at);
            let name = (at, name_end);
            at = skip_space(bytes, name_end);
            at = skip_space(bytes, at + 1); // the colon
            let value_end = value_end(bytes, at);
            let value = &text[at..value_end];
            if escaped {
                row.push(&serde_json::from_str::<String>(&text[name.0..name.1]).unwrap_or_default(), value);
            } else {
                row.push(&text[name.0 + 1..name.1 - 1], value);
            }
            at = skip_space(bytes, value_end);
            if bytes.get(at) == Some(&b',') {
                at = skip_space(bytes, at + 1);
            }
        }
        row.finish();
        row
    }

    /// The row of a JSON object (tests, and callers that hold a [`Map`]).
    pub fn from_map(map: &Map<String, Value>) -> Row {
        let mut row = Row::default();
        for (name, value) in map {
            row.push(name, &value.to_string());
        }
        row.finish();
        row
    }

    fn push(&mut self, name: &str, raw: &str) {
        let start = self.text.len() as u32;
        self.text.push_str(name);
        let middle = self.text.len() as u32;
        self.text.push_str(raw);
        self.columns.push((start, middle, self.text.len() as u32));
    }

    /// Sorts the columns by name, keeping the last of each repeated name.
    fn finish(&mut self) {
        if self.columns.capacity() - self.columns.len() > 1024 {
            // A wide row: the index's growth left up to half of it unused (kept through planning).
            self.columns.shrink_to_fit();
        }
        let text = &self.text;
        let name = |c: &(u32, u32, u32)| &text[c.0 as usize..c.1 as usize];
        if self.columns.windows(2).all(|w| name(&w[0]) < name(&w[1])) {
            return;
        }
        self.columns.sort_by(|a, b| name(a).cmp(name(b)));
        // The sort is stable: of each run of one name, the last is the last in the object.
        let mut kept = 0;
        for i in 0..self.columns.len() {
            let column = self.columns[i];
            if kept > 0 && name(&self.columns[kept - 1]) == name(&column) {
                self.columns[kept - 1] = column;
            } else {
                self.columns[kept] = column;
                kept += 1;
            }
        }
        self.columns.truncate(kept);
    }

    /// Bytes of names and values together.
    pub fn text_len(&self) -> usize {
        self.text.len()
    }

    pub fn len(&self) -> usize {
        self.columns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.columns.is_empty()
    }

    /// The columns in name order: (name, raw JSON value).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.columns.iter().map(|&(start, middle, end)| {
            (&self.text[start as usize..middle as usize], &self.text[middle as usize..end as usize])
        })
    }

    /// The raw JSON value of column `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        let text = &self.text;
        let i = self.columns.binary_search_by(|c| text[c.0 as usize..c.1 as usize].cmp(name)).ok()?;
        let (_, middle, end) = self.columns[i];
        Some(&text[middle as usize..end as usize])
    }

    /// The row as a JSON object (values parsed; for dead letters, logs and tests).
    pub fn to_map(&self) -> Map<String, Value> {
        self.iter().map(|(name, raw)| (name.to_string(), serde_json::from_str(raw).unwrap_or(Value::Null))).collect()
    }
}

impl From<Map<String, Value>> for Row {
    fn from(map: Map<String, Value>) -> Row {
        Row::from_map(&map)
    }
}

/// Equal when they are the same JSON object.
impl PartialEq for Row {
    fn eq(&self, other: &Row) -> bool {
        (self.len() == other.len() && self.iter().eq(other.iter())) || self.to_map() == other.to_map()
    }
}

impl fmt::Debug for Row {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// The first byte at or after `at` that is not JSON whitespace.
fn skip_space(bytes: &[u8], at: usize) -> usize {
    let rest = bytes.get(at..).unwrap_or_default();
    at + rest.iter().position(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r')).unwrap_or(rest.len())
}

/// Just past the JSON string starting at `at` (its opening quote), in valid JSON, and whether it
/// holds an escape.
fn string_end(bytes: &[u8], at: usize) -> (usize, bool) {
    let mut at = at + 1;
    let mut escaped = false;
    loop {
        let rest = bytes.get(at..).unwrap_or_default();
        match memchr::memchr2(b'"', b'\\', rest) {
            Some(i) if rest[i] == b'"' => return (at + i + 1, escaped),
            Some(i) => {
                escaped = true;
                at += i + 2;
            }
            None => return (bytes.len(), escaped),
        }
    }
}

/// Just past the JSON value starting at `at`, in valid JSON.
fn value_end(bytes: &[u8], at: usize) -> usize {
    match bytes.get(at) {
        Some(b'"') => string_end(bytes, at).0,
        Some(b'{' | b'[') => {
            let mut at = at;
            let mut depth = 0usize;
            loop {
                let rest = bytes.get(at..).unwrap_or_default();
                let Some(i) = rest.iter().position(|&b| matches!(b, b'"' | b'{' | b'[' | b'}' | b']')) else {
                    return bytes.len();
                };
                at += i;
                match rest[i] {
                    b'"' => {
                        at = string_end(bytes, at).0;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    _ => {
                        depth -= 1;
                        if depth == 0 {
                            return at + 1;
                        }
                    }
                }
                at += 1;
            }
        }
        _ => {
            let rest = bytes.get(at..).unwrap_or_default();
            at + rest
                .iter()
                .position(|b| matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
                .unwrap_or(rest.len())
        }
    }
}

/// Path of the body itself in error messages.
const ROOT: &str = "$";
/// The top-level keys naming the accepted shapes.
const SHAPES: [&str; 3] = ["transactions", "batch", "operations"];
/// Alias values that differ in their text are compared as JSON values only below this size;
/// larger ones count as different (a conflict) rather than being materialised.
const ALIAS_COMPARE_LIMIT: usize = 64 * 1024;

/// Reads an upload body into transactions, in order.
///
/// The body is read in one pass into typed values: fields other than the ones above are skipped
/// without being materialised, and a row's data is kept as the raw JSON text of its columns (see
/// [`Row`]). Transactions and entries are counted while reading, and reading stops at the first
/// one over a [`Limits`] value: [`CrudError::TooLarge`], whatever follows. Otherwise a body that
/// is not JSON is malformed at `$`; then the body's shape is checked, and then each place in
/// document order (within an entry: `op`, `id`, the table, the data), the first fault found
/// being reported. An empty transaction list and a transaction without entries are both valid.
pub fn parse(body: &[u8], limits: &Limits) -> Result<Vec<Transaction>, CrudError> {
    parse_upload(body, limits).map(|upload| upload.transactions)
}

/// [`parse`], keeping the body's `client_id` too (checked after the shape, before the entries'
/// faults).
pub fn parse_upload(body: &[u8], limits: &Limits) -> Result<Upload, CrudError> {
    if body.len() > limits.max_body_bytes {
        return Err(CrudError::TooLarge {
            message: format!("body is {} bytes; at most {} are accepted", body.len(), limits.max_body_bytes),
        });
    }
    let mut reader = Reader { limits, entries: 0, transactions: 0, too_large: None, fault: None };
    let mut shapes = Shapes::default();
    // A UTF-8 body (every valid one) is checked once here, and then read as text: read as bytes,
    // every raw value kept (each entry's fields, each column's value) would be checked again.
    // Bytes that are not UTF-8 are read as bytes, for serde_json's error and its position.
    let seed = RootSeed { reader: &mut reader, shapes: &mut shapes };
    let read = match std::str::from_utf8(body) {
        Ok(text) => read_all(seed, &mut serde_json::Deserializer::from_str(text)),
        Err(_) => read_all(seed, &mut serde_json::Deserializer::from_slice(body)),
    };
    if let Some(too_large) = reader.too_large.take() {
        return Err(too_large);
    }
    if let Err(e) = read {
        return Err(malformed(ROOT.to_string(), format!("not valid JSON: {e}")));
    }
    if !shapes.object {
        return Err(malformed(
            ROOT.to_string(),
            "expected a JSON object with `transactions`, `batch` or `operations`".to_string(),
        ));
    }
    let present: Vec<&str> = SHAPES.iter().zip(shapes.seen).filter(|(_, seen)| *seen).map(|(name, _)| *name).collect();
    match present.len() {
        0 => Err(malformed(ROOT.to_string(), "expected one of `transactions`, `batch` or `operations`".to_string())),
        1 => match (shapes.client_id, reader.fault.take()) {
            (Err(fault), _) | (_, Some(fault)) => Err(fault),
            (Ok(client_id), None) => Ok(Upload { client_id, transactions: shapes.transactions }),
        },
        _ => Err(malformed(
            ROOT.to_string(),
            format!("give only one of `transactions`, `batch` or `operations` (found {})", present.join(", ")),
        )),
    }
}

/// The whole body through `seed`, nothing after it.
fn read_all<'de, R: serde_json::de::Read<'de>>(
    seed: RootSeed<'_, '_>,
    deserializer: &mut serde_json::Deserializer<R>,
) -> Result<(), serde_json::Error> {
    seed.deserialize(&mut *deserializer)?;
    deserializer.end()
}

/// What the single pass keeps across the body: the counts against the limits and the first
/// fault. Once a fault is known, the rest is only counted (nothing more is built).
struct Reader<'l> {
    limits: &'l Limits,
    entries: usize,
    transactions: usize,
    /// Set when a limit is passed; reading then stops with an error.
    too_large: Option<CrudError>,
    /// The first malformed place, in the order the module docs give.
    fault: Option<CrudError>,
}

impl Reader<'_> {
    fn count_entry<E: de::Error>(&mut self) -> Result<(), E> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            let max = self.limits.max_entries;
            return Err(self.stop(format!("more than {max} CRUD entries; at most {max} are accepted per request")));
        }
        Ok(())
    }

    fn count_transaction<E: de::Error>(&mut self) -> Result<(), E> {
        self.transactions += 1;
        if self.transactions > self.limits.max_transactions {
            let max = self.limits.max_transactions;
            return Err(self.stop(format!("more than {max} transactions; at most {max} are accepted per request")));
        }
        Ok(())
    }

    fn stop<E: de::Error>(&mut self, message: String) -> E {
        self.too_large = Some(CrudError::TooLarge { message: message.clone() });
        E::custom(message)
    }

    fn fault(&mut self, fault: CrudError) {
        self.fault.get_or_insert(fault);
    }

    fn failed(&self) -> bool {
        self.fault.is_some()
    }
}

/// What the root object held.
struct Shapes {
    object: bool,
    /// Which of [`SHAPES`] were present.
    seen: [bool; 3],
    transactions: Vec<Transaction>,
    /// `client_id`, or its fault.
    client_id: Result<Option<String>, CrudError>,
}

impl Default for Shapes {
    fn default() -> Self {
        Shapes { object: false, seen: [false; 3], transactions: Vec::new(), client_id: Ok(None) }
    }
}

/// The value of `client_id`: a non-empty string of at most [`MAX_CLIENT_ID_BYTES`], or null.
fn client_id(raw: &RawValue) -> Result<Option<String>, CrudError> {
    let fault = |message: String| Err(malformed("client_id".to_string(), message));
    if is_null(raw) {
        return Ok(None);
    }
    match string_of(raw) {
        Some(id) if id.is_empty() => fault("must not be empty".to_string()),
        Some(id) if id.len() > MAX_CLIENT_ID_BYTES => fault(format!("longer than {MAX_CLIENT_ID_BYTES} bytes")),
        // PostgreSQL text cannot hold it: every transaction of such a client would fail.
        Some(id) if id.contains('\u{0}') => fault("must not contain U+0000".to_string()),
        Some(id) => Ok(Some(id.into_owned())),
        None => fault(expected("a string (the PowerSync client id) or null", raw)),
    }
}

/// The kind of a JSON value, for "expected X, found Y", from its first character.
fn kind_of(raw: &RawValue) -> &'static str {
    match raw.get().as_bytes().first() {
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

fn expected(what: &str, found: &RawValue) -> String {
    // A string whose escapes are no text (an unpaired UTF-16 surrogate, `"\ud800"`) is refused
    // where a string is expected: say why, not "expected a string, found a string".
    if found.get().starts_with('"') && serde_json::from_str::<String>(found.get()).is_err() {
        return format!("expected {what}, found a string that is not text (an unpaired UTF-16 surrogate escape)");
    }
    format!("expected {what}, found {}", kind_of(found))
}

fn is_null(raw: &RawValue) -> bool {
    raw.get() == "null"
}

/// Skips whatever value a visitor was handed that it does not want: the fault is recorded by the
/// caller; this only keeps the counts going (nothing inside is counted, as before).
macro_rules! reject_other_kinds {
    ($what:expr) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok(self.wrong($what, "a boolean"))
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok(self.wrong($what, "a number"))
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok(self.wrong($what, "a number"))
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok(self.wrong($what, "a number"))
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok(self.wrong($what, "a string"))
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(self.wrong($what, "null"))
        }
    };
}

struct RootSeed<'r, 'l> {
    reader: &'r mut Reader<'l>,
    shapes: &'r mut Shapes,
}

impl<'de> DeserializeSeed<'de> for RootSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl RootSeed<'_, '_> {
    fn wrong(self, _: &str, _: &str) {
        self.shapes.object = false;
    }
}

impl<'de> Visitor<'de> for RootSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    reject_other_kinds!("");

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.shapes.object = true;
        while let Some(key) = map.next_key::<Key>()? {
            let shape = match key.0.as_deref() {
                Some("transactions") => 0,
                Some("batch") => 1,
                Some("operations") => 2,
                Some("client_id") => {
                    self.shapes.client_id = client_id(map.next_value::<&RawValue>()?);
                    continue;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            let repeated = self.shapes.seen[shape];
            self.shapes.seen[shape] = true;
            if self.shapes.seen.iter().filter(|s| **s).count() > 1 {
                // Malformed whatever it holds (see `parse`); still counted against the limits.
                let mut spare = Vec::new();
                map.next_value_seed(ShapeSeed { reader: &mut *self.reader, shape, out: &mut spare })?;
                continue;
            }
            if repeated {
                // A repeated key: the last value counts, as in a JSON object (all are counted).
                self.shapes.transactions.clear();
                self.reader.fault = None;
            }
            let out = &mut self.shapes.transactions;
            map.next_value_seed(ShapeSeed { reader: &mut *self.reader, shape, out })?;
        }
        Ok(())
    }
}

/// A key of an object, decoded only when it is one of the short names this module knows.
struct Key(Option<String>);

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Key, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
                Ok(Key((key.len() <= 16).then(|| key.to_string())))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// The field of an entry a key names.
#[derive(Clone, Copy)]
enum Field {
    Op,
    Id,
    Table,
    Type,
    Data,
    OpDataCamel,
    OpDataSnake,
    PreviousSnake,
    PreviousCamel,
    Old,
    Metadata,
    Other,
}

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Field, D::Error> {
        struct FieldVisitor;
        impl Visitor<'_> for FieldVisitor {
            type Value = Field;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<Field, E> {
                Ok(match key {
                    "op" => Field::Op,
                    "id" => Field::Id,
                    "table" => Field::Table,
                    "type" => Field::Type,
                    "data" => Field::Data,
                    "opData" => Field::OpDataCamel,
                    "op_data" => Field::OpDataSnake,
                    "previous_values" => Field::PreviousSnake,
                    "previousValues" => Field::PreviousCamel,
                    "old" => Field::Old,
                    "metadata" => Field::Metadata,
                    _ => Field::Other,
                })
            }
        }
        deserializer.deserialize_identifier(FieldVisitor)
    }
}

/// The value of `transactions`, `batch` or `operations`.
struct ShapeSeed<'r, 'l> {
    reader: &'r mut Reader<'l>,
    /// Index in [`SHAPES`].
    shape: usize,
    out: &'r mut Vec<Transaction>,
}

impl<'de> DeserializeSeed<'de> for ShapeSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl ShapeSeed<'_, '_> {
    fn wrong(self, what: &str, found: &str) {
        self.reader.fault(malformed(SHAPES[self.shape].to_string(), format!("expected {what}, found {found}")));
    }
}

impl<'de> Visitor<'de> for ShapeSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array")
    }

    reject_other_kinds!("an array");

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        self.wrong("an array", "an object");
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let shape = SHAPES[self.shape];
        if self.shape == 0 {
            let mut index = 0;
            while let Some(read) = seq.next_element_seed(TransactionSeed { reader: &mut *self.reader, index })? {
                self.reader.count_transaction::<A::Error>()?;
                if let Some(transaction) = read {
                    self.out.push(transaction);
                }
                index += 1;
            }
        } else {
            let entries = read_entries(&mut seq, self.reader, shape)?;
            self.out.push(Transaction { transaction_id: None, entries: entries.unwrap_or_default() });
        }
        Ok(())
    }
}

/// Reads a list of entries, counting each; `None` once any fault is known.
fn read_entries<'de, A: SeqAccess<'de>>(
    seq: &mut A,
    reader: &mut Reader<'_>,
    path: &str,
) -> Result<Option<Vec<Entry>>, A::Error> {
    let mut entries = Vec::new();
    let mut index = 0;
    while !reader.failed() {
        let Some(raw) = seq.next_element::<RawEntry>()? else { return Ok(Some(entries)) };
        reader.count_entry::<A::Error>()?;
        match raw.interpret(path, index) {
            Ok(entry) => entries.push(entry),
            Err(fault) => reader.fault(fault),
        }
        index += 1;
    }
    // Only counted from here on.
    while seq.next_element::<IgnoredAny>()?.is_some() {
        reader.count_entry::<A::Error>()?;
    }
    Ok(None)
}

/// One element of `transactions`: `Some` when it was read without fault.
struct TransactionSeed<'r, 'l> {
    reader: &'r mut Reader<'l>,
    index: usize,
}

impl<'de> DeserializeSeed<'de> for TransactionSeed<'_, '_> {
    type Value = Option<Transaction>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Option<Transaction>, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl TransactionSeed<'_, '_> {
    fn wrong(self, what: &str, found: &str) -> Option<Transaction> {
        self.reader
            .fault(malformed(format!("transactions[{}]", self.index), format!("expected {what}, found {found}")));
        None
    }
}

impl<'de> Visitor<'de> for TransactionSeed<'_, '_> {
    type Value = Option<Transaction>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object")
    }

    reject_other_kinds!("an object");

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(self.wrong("an object", "an array"))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let path = format!("transactions[{}]", self.index);
        let crud_path = format!("{path}.crud");
        // The faults of this transaction, reported in this order whatever the order of its keys.
        let already_failed = self.reader.failed();
        let mut id_fault = None;
        let mut transaction_id = None;
        let mut crud: Option<Result<Option<Vec<Entry>>, CrudError>> = None;
        while let Some(key) = map.next_key::<Key>()? {
            match key.0.as_deref() {
                Some("transaction_id") => {
                    let raw = map.next_value::<&RawValue>()?;
                    (transaction_id, id_fault) = match raw.get().as_bytes().first() {
                        Some(b'n') => (None, None),
                        Some(b'"') => (serde_json::from_str::<Value>(raw.get()).ok(), None),
                        // Echoed and keyed (the ledger) as sent: a number that would come out
                        // otherwise (past 64 bits, past a float's precision: two ids as one) is
                        // refused, not changed
                        Some(b'-' | b'0'..=b'9') => match serde_json::from_str::<Value>(raw.get()) {
                            Ok(id) if serde_json::to_string(&id).is_ok_and(|text| text == raw.get()) => {
                                (Some(id), None)
                            }
                            _ => (
                                None,
                                Some(malformed(
                                    format!("{path}.transaction_id"),
                                    format!(
                                        "the number {} cannot be kept exactly (past 64 bits or a float's \
                                         precision): send it as a string",
                                        crate::credentials::clipped(raw.get(), 40)
                                    ),
                                )),
                            ),
                        },
                        _ => (
                            None,
                            Some(malformed(format!("{path}.transaction_id"), expected("a number or a string", raw))),
                        ),
                    };
                }
                Some("crud") if already_failed => {
                    map.next_value_seed(CrudSeed { reader: &mut *self.reader, path: &crud_path })?;
                    crud = Some(Ok(None));
                }
                Some("crud") => {
                    // Its faults are held back until the transaction id is checked.
                    let held = self.reader.fault.take();
                    let list = map.next_value_seed(CrudSeed { reader: &mut *self.reader, path: &crud_path })?;
                    let fault = std::mem::replace(&mut self.reader.fault, held);
                    crud = Some(match fault {
                        Some(fault) => Err(fault),
                        None => Ok(list),
                    });
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let outcome = match (id_fault, crud) {
            (Some(fault), _) => Err(fault),
            (None, None) => Err(malformed(crud_path, "missing".to_string())),
            (None, Some(Err(fault))) => Err(fault),
            (None, Some(Ok(list))) => Ok(list),
        };
        match outcome {
            Err(fault) => {
                self.reader.fault(fault);
                Ok(None)
            }
            Ok(Some(entries)) if !already_failed && !self.reader.failed() => {
                Ok(Some(Transaction { transaction_id, entries }))
            }
            Ok(_) => Ok(None),
        }
    }
}

/// The `crud` list of a transaction: `None` when a fault is known (entries are then only counted).
struct CrudSeed<'r, 'l> {
    reader: &'r mut Reader<'l>,
    path: &'r str,
}

impl<'de> DeserializeSeed<'de> for CrudSeed<'_, '_> {
    type Value = Option<Vec<Entry>>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl CrudSeed<'_, '_> {
    fn wrong(self, what: &str, found: &str) -> Option<Vec<Entry>> {
        self.reader.fault(malformed(self.path.to_string(), format!("expected {what}, found {found}")));
        None
    }
}

impl<'de> Visitor<'de> for CrudSeed<'_, '_> {
    type Value = Option<Vec<Entry>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array")
    }

    reject_other_kinds!("an array");

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(self.wrong("an array", "an object"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        read_entries(&mut seq, self.reader, self.path)
    }
}

/// An entry as read: the raw text of each field this module knows (the last one when a key
/// repeats, as a JSON object means); the others were skipped.
struct RawEntry<'de> {
    /// `None` when the element is not an object (then `kind` says what it is).
    fields: Option<[Option<&'de RawValue>; FIELDS]>,
    kind: &'static str,
}

impl<'de> Deserialize<'de> for RawEntry<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RawEntryVisitor)
    }
}

struct RawEntryVisitor;

impl RawEntryVisitor {
    fn wrong<'de>(self, _: &str, found: &'static str) -> RawEntry<'de> {
        RawEntry { fields: None, kind: found }
    }
}

impl<'de> Visitor<'de> for RawEntryVisitor {
    type Value = RawEntry<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object")
    }

    reject_other_kinds!("an object");

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(self.wrong("an object", "an array"))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields: [Option<&'de RawValue>; FIELDS] = [None; FIELDS];
        while let Some(field) = map.next_key::<Field>()? {
            let slot = match field {
                Field::Op => 0,
                Field::Id => 1,
                Field::Table => 2,
                Field::Type => 3,
                Field::Data => 4,
                Field::OpDataCamel => 5,
                Field::OpDataSnake => 6,
                Field::PreviousSnake => 7,
                Field::PreviousCamel => 8,
                Field::Old => 9,
                Field::Metadata => 10,
                Field::Other => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            fields[slot] = Some(map.next_value::<&'de RawValue>()?);
        }
        Ok(RawEntry { fields: Some(fields), kind: "an object" })
    }
}

/// The text of a JSON string, borrowed when it has no escapes; `None` for other kinds.
fn string_of(raw: &RawValue) -> Option<std::borrow::Cow<'_, str>> {
    let text = raw.get();
    if !text.starts_with('"') {
        return None;
    }
    if let Some(inner) = text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        if !inner.contains('\\') {
            return Some(std::borrow::Cow::Borrowed(inner));
        }
    }
    serde_json::from_str::<String>(text).ok().map(std::borrow::Cow::Owned)
}

/// Whether two alias values are the same JSON value.
fn same_value(a: &RawValue, b: &RawValue) -> bool {
    if a.get() == b.get() {
        return true;
    }
    if a.get().len() + b.get().len() > ALIAS_COMPARE_LIMIT {
        return false;
    }
    match (serde_json::from_str::<Value>(a.get()), serde_json::from_str::<Value>(b.get())) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// How many entry fields this module reads.
const FIELDS: usize = 11;
const FIELD_NAMES: [&str; FIELDS] =
    ["op", "id", "table", "type", "data", "opData", "op_data", "previous_values", "previousValues", "old", "metadata"];

impl<'de> RawEntry<'de> {
    /// The entry `list[index]`, or its first fault (`op`, `id`, the table, the data, in that
    /// order).
    fn interpret(self, list: &str, index: usize) -> Result<Entry, CrudError> {
        let Some(fields) = self.fields else {
            return Err(malformed(format!("{list}[{index}]"), format!("expected an object, found {}", self.kind)));
        };
        let path = Path { list, index };
        let op_path = || format!("{path}.op");
        let op = match fields[0] {
            None => return Err(malformed(op_path(), "missing".to_string())),
            Some(raw) if is_null(raw) => return Err(malformed(op_path(), "missing".to_string())),
            Some(raw) => match string_of(raw) {
                Some(text) => Op::parse(&text).ok_or_else(|| {
                    malformed(op_path(), format!("unknown op {text:?}; expected PUT, PATCH or DELETE"))
                })?,
                None => return Err(malformed(op_path(), expected("a string", raw))),
            },
        };

        let id_path = || format!("{path}.id");
        let id = match fields[1] {
            None => return Err(malformed(id_path(), "missing".to_string())),
            Some(raw) if is_null(raw) => return Err(malformed(id_path(), "missing".to_string())),
            Some(raw) => match (string_of(raw), kind_of(raw)) {
                (Some(text), _) => text.into_owned(),
                // Its JSON text, as sent: through f64, 123456789012345678901 and …902 were one id.
                (None, "a number") => raw.get().to_string(),
                (None, _) => return Err(malformed(id_path(), expected("a string or a number", raw))),
            },
        };

        let table = match aliased(&fields, &path, &[2, 3])? {
            None => return Err(malformed(format!("{path}.table"), "missing (as `table` or `type`)".to_string())),
            Some((slot, raw)) => match string_of(raw) {
                Some(text) => text.into_owned(),
                None => return Err(malformed(format!("{path}.{}", FIELD_NAMES[slot]), expected("a string", raw))),
            },
        };

        let data = match aliased(&fields, &path, &[4, 5, 6])? {
            None => None,
            Some((_, raw)) if is_null(raw) => None,
            Some((_, raw)) if raw.get().starts_with('{') => Some(raw),
            Some((slot, raw)) => {
                return Err(malformed(format!("{path}.{}", FIELD_NAMES[slot]), expected("an object or null", raw)))
            }
        };
        let data = match (data, op) {
            (Some(raw), Op::Put | Op::Patch) => Row::of_object(raw),
            _ => Row::default(),
        };

        let previous = match aliased(&fields, &path, &[7, 8, 9])? {
            None => None,
            Some((_, raw)) if is_null(raw) => None,
            Some((_, raw)) if raw.get().starts_with('{') => Some(Row::of_object(raw)),
            Some((slot, raw)) => {
                return Err(malformed(format!("{path}.{}", FIELD_NAMES[slot]), expected("an object or null", raw)))
            }
        };
        let previous = if op == Op::Put { None } else { previous };

        let metadata = match fields[10] {
            None => None,
            Some(raw) if is_null(raw) => None,
            Some(raw) => match string_of(raw) {
                Some(text) => Some(text.into_owned()),
                None => return Err(malformed(format!("{path}.metadata"), expected("a string or null", raw))),
            },
        };
        Ok(Entry { op, table, id, data, previous, metadata })
    }
}

/// Where an entry is (`batch[3]`), formatted only for an error message.
struct Path<'p> {
    list: &'p str,
    index: usize,
}

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]", self.list, self.index)
    }
}

/// The value of a field that may come under several names (`slots` in [`FIELD_NAMES`]): `None`
/// when absent, an error when two names are present with different values.
fn aliased<'de>(
    fields: &[Option<&'de RawValue>; FIELDS],
    path: &Path,
    slots: &[usize],
) -> Result<Option<(usize, &'de RawValue)>, CrudError> {
    let mut found: Option<(usize, &'de RawValue)> = None;
    for &slot in slots {
        if let Some(value) = fields[slot] {
            match found {
                Some((first, seen)) if !same_value(seen, value) => {
                    return Err(malformed(
                        format!("{path}.{}", FIELD_NAMES[slot]),
                        format!(
                            "`{}` and `{}` are both given with different values; send one",
                            FIELD_NAMES[first], FIELD_NAMES[slot]
                        ),
                    ))
                }
                Some(_) => {}
                None => found = Some((slot, value)),
            }
        }
    }
    Ok(found)
}

fn malformed(path: String, message: String) -> CrudError {
    CrudError::Malformed { path, message }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse_value(value: Value) -> Result<Vec<Transaction>, CrudError> {
        parse(value.to_string().as_bytes(), &Limits::default())
    }

    fn malformed_path(value: Value) -> String {
        match parse_value(value) {
            Err(CrudError::Malformed { path, .. }) => path,
            other => panic!("expected Malformed, got {other:?}"),
        }
    }

    fn entry(op: Op, table: &str, id: &str, data: Value) -> Entry {
        let data = match data {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        Entry { op, table: table.to_string(), id: id.to_string(), data: data.into(), previous: None, metadata: None }
    }

    #[test]
    fn a_lone_surrogate_in_op_table_or_id_is_refused_saying_why() {
        for field in ["op", "type", "id"] {
            let mut entry = json!({"op": "PUT", "type": "todos", "id": "a", "data": {}});
            entry[field] = json!("X");
            let body = json!({"transactions": [{"crud": [entry]}]}).to_string().replace("\"X\"", "\"\\ud800\"");
            match parse(body.as_bytes(), &Limits::default()) {
                Err(CrudError::Malformed { message, .. }) => {
                    assert!(message.contains("not text (an unpaired UTF-16 surrogate escape)"), "{field}: {message}")
                }
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    #[test]
    fn entries_digest_is_the_entries_as_sent_and_never_changes() {
        let digest = |body: &str| match parse(body.as_bytes(), &Limits::default()) {
            Ok(transactions) => transactions[0].entries_digest(),
            Err(e) => panic!("{e:?}"),
        };
        let sent = r#"{"transactions": [{"transaction_id": 1, "crud": [
            {"op": "PUT", "type": "todos", "id": "a", "data": {"n": 1.50, "t": "x", "j": "[1]"}},
            {"op": "DELETE", "type": "todos", "id": "b"}]}]}"#;
        // Pinned: records one version made are matched by the next, so what goes in, and the
        // hash, must never change.
        assert_eq!(digest(sent), "20c738668be0f3a7a11aa1a968450457");
        // the same entries: key order, spacing and the other fields do not count
        let reordered = r#"{"transactions":[{"crud":[{"id":"a","data":{"t":"x","j":"[1]","n":1.50},"type":"todos",
            "op":"PUT","op_id":7},{"id":"b","op":"DELETE","type":"todos"}],"transaction_id":2}]}"#;
        assert_eq!(digest(reordered), digest(sent));
        // anything the write depends on does: a value's text (1.5 is not 1.50 as sent), a name,
        // an id, a table, an op
        for other in [
            sent.replace("1.50", "1.5"),
            sent.replace(r#""t": "x""#, r#""u": "x""#),
            sent.replace(r#""id": "b""#, r#""id": "c""#),
            sent.replace(r#""type": "todos", "id": "b""#, r#""type": "lists", "id": "b""#),
            sent.replace(r#""op": "PUT""#, r#""op": "PATCH""#),
        ] {
            assert_ne!(digest(&other), digest(sent), "{other}");
        }
        // pieces are length-prefixed: moving text between a name and a value is another digest
        let a = r#"{"transactions": [{"crud": [{"op": "PUT", "type": "t", "id": "a", "data": {"ab": "c"}}]}]}"#;
        let b = r#"{"transactions": [{"crud": [{"op": "PUT", "type": "t", "id": "a", "data": {"a": "bc"}}]}]}"#;
        assert_ne!(digest(a), digest(b));
    }

    #[test]
    fn previous_values_and_metadata_are_kept_in_every_shape_and_alias() {
        let sent = json!({"op": "PATCH", "table": "todos", "id": "a", "data": {"title": "new"},
            "previous_values": {"title": "old", "done": null}, "metadata": "edited offline"});
        let mut camel = sent.clone();
        let previous = camel.as_object_mut().unwrap().remove("previous_values").unwrap();
        camel["previousValues"] = previous.clone();
        let mut old = sent.clone();
        old.as_object_mut().unwrap().remove("previous_values");
        old["old"] = previous;
        for entry_json in [sent, camel, old] {
            for body in [
                json!({"transactions": [{"transaction_id": 1, "crud": [entry_json.clone()]}]}),
                json!({"batch": [entry_json.clone()]}),
            ] {
                let parsed = parse_value(body).unwrap();
                let entry = &parsed[0].entries[0];
                assert_eq!(
                    entry.previous,
                    Some(Row::from_map(json!({"title": "old", "done": null}).as_object().unwrap()))
                );
                assert_eq!(entry.metadata.as_deref(), Some("edited offline"));
                assert_eq!(
                    entry.to_json(),
                    json!({"op": "PATCH", "table": "todos", "id": "a", "data": {"title": "new"},
                        "previous_values": {"title": "old", "done": null}, "metadata": "edited offline"})
                );
            }
        }
    }

    #[test]
    fn entries_without_previous_values_have_none_and_put_drops_them() {
        let parsed = parse_value(json!({"batch": [
            {"op": "PATCH", "table": "todos", "id": "a", "data": {"x": 1}},
            {"op": "DELETE", "table": "todos", "id": "b", "previous_values": null, "metadata": null},
            {"op": "PUT", "table": "todos", "id": "c", "data": {"x": 1}, "previous_values": {"x": 0}},
        ]}))
        .unwrap();
        let entries = &parsed[0].entries;
        assert!(entries.iter().all(|e| e.previous.is_none() && e.metadata.is_none()));
        assert_eq!(entries[0].to_json(), json!({"op": "PATCH", "table": "todos", "id": "a", "data": {"x": 1}}));
    }

    #[test]
    fn malformed_previous_values_or_metadata_name_their_place() {
        assert_eq!(
            malformed_path(json!({"batch": [{"op": "PATCH", "table": "t", "id": "a", "previous_values": [1]}]})),
            "batch[0].previous_values"
        );
        assert_eq!(
            malformed_path(
                json!({"batch": [{"op": "DELETE", "table": "t", "id": "a", "previousValues": {"x": 1}, "old": {"x": 2}}]})
            ),
            "batch[0].old"
        );
        assert_eq!(
            malformed_path(json!({"batch": [{"op": "DELETE", "table": "t", "id": "a", "metadata": 5}]})),
            "batch[0].metadata"
        );
    }

    #[test]
    fn what_only_fails_its_own_transaction_is_read_not_refused_with_the_body() {
        // metadata of any length (kept for dead letters only), an empty id or table (refused
        // when planning, for their transaction alone): the SDK queues each of them, and a 400
        // would hold the whole queue for ever
        let long = "m".repeat(70 * 1024);
        let body = json!({"transactions": [
            {"transaction_id": 1, "crud": [{"op": "PUT", "table": "t", "id": "a", "data": {}}]},
            {"transaction_id": 2, "crud": [{"op": "DELETE", "table": "t", "id": "b", "metadata": long}]},
            {"transaction_id": 3, "crud": [{"op": "PUT", "table": "t", "id": "", "data": {}}]},
            {"transaction_id": 4, "crud": [{"op": "PUT", "table": "", "id": "c", "data": {}}]},
        ]});
        let transactions = parse(body.to_string().as_bytes(), &Limits::default()).expect("read");
        assert_eq!(transactions.len(), 4);
        assert_eq!(transactions[1].entries[0].metadata.as_deref().map(str::len), Some(70 * 1024));
        assert_eq!((transactions[2].entries[0].id.as_str(), transactions[3].entries[0].table.as_str()), ("", ""));
    }

    #[test]
    fn transactions_shape_keeps_ids_and_order() {
        let parsed = parse_value(json!({"transactions": [
            {"transaction_id": 7, "crud": [
                {"op": "PUT", "table": "todos", "id": "a", "op_data": {"title": "x"}},
                {"op": "DELETE", "table": "todos", "id": "b"}
            ]},
            {"transaction_id": "t-2", "crud": [{"op": "PATCH", "table": "lists", "id": "c", "op_data": {"n": 1}}]},
            {"crud": []}
        ]}))
        .expect("valid");
        assert_eq!(parsed.len(), 3);
        assert_eq!(parsed[0].transaction_id, Some(json!(7)));
        assert_eq!(
            parsed[0].entries,
            vec![entry(Op::Put, "todos", "a", json!({"title": "x"})), entry(Op::Delete, "todos", "b", Value::Null)]
        );
        assert_eq!(parsed[1].transaction_id, Some(json!("t-2")));
        assert_eq!(parsed[1].entries, vec![entry(Op::Patch, "lists", "c", json!({"n": 1}))]);
        assert_eq!(parsed[2], Transaction { transaction_id: None, entries: vec![] });
    }

    #[test]
    fn a_numeric_transaction_id_is_kept_exactly_as_sent_or_refused() {
        // echoed and keyed in the ledger as sent: 2^64 would have come back rounded (two ids as
        // one record), 1e400 as no id at all
        let kept = ["7", "-3", "18446744073709551615", "1.5"];
        for id in kept {
            let body = format!(r#"{{"transactions": [{{"transaction_id": {id}, "crud": []}}]}}"#);
            let parsed = parse(body.as_bytes(), &Limits::default()).expect(id);
            assert_eq!(parsed[0].transaction_id.as_ref().map(Value::to_string).as_deref(), Some(id));
        }
        for id in ["18446744073709551616", "1e400", "1.50", "-0"] {
            let body = format!(r#"{{"transactions": [{{"transaction_id": {id}, "crud": []}}]}}"#);
            match parse(body.as_bytes(), &Limits::default()) {
                Err(CrudError::Malformed { path, message }) => {
                    assert_eq!(path, "transactions[0].transaction_id", "{id}");
                    assert!(message.contains("send it as a string"), "{id}: {message}");
                }
                other => panic!("{id}: {other:?}"),
            }
        }
    }

    #[test]
    fn batch_shape_is_one_transaction() {
        let parsed = parse_value(json!({"batch": [
            {"op": "PUT", "table": "todos", "id": "a", "data": {"done": 1}},
            {"op": "PATCH", "table": "todos", "id": "a", "data": {"done": 0}}
        ]}))
        .expect("valid");
        assert_eq!(
            parsed,
            vec![Transaction {
                transaction_id: None,
                entries: vec![
                    entry(Op::Put, "todos", "a", json!({"done": 1})),
                    entry(Op::Patch, "todos", "a", json!({"done": 0}))
                ]
            }]
        );
    }

    #[test]
    fn operations_shape_with_sdk_fields_is_one_transaction() {
        let parsed = parse_value(json!({"operations": [
            {"op_id": 1, "op": "PUT", "type": "todos", "id": "a", "tx_id": 3, "data": {"x": 1},
             "old": {"x": 0}, "metadata": "m"}
        ]}))
        .expect("valid");
        assert_eq!(parsed.len(), 1);
        // The SDK's `toJSON` sends the previous values as `old`: a PUT drops them, metadata stays.
        let mut expected = entry(Op::Put, "todos", "a", json!({"x": 1}));
        expected.metadata = Some("m".to_string());
        assert_eq!(parsed[0].entries, vec![expected]);
    }

    #[test]
    fn client_id_is_read_beside_every_shape() {
        let limits = Limits::default();
        let read = |body: Value| parse_upload(body.to_string().as_bytes(), &limits);
        let upload =
            read(json!({"client_id": "c-1", "transactions": [{"transaction_id": 3, "crud": []}]})).expect("valid");
        assert_eq!(upload.client_id.as_deref(), Some("c-1"));
        assert_eq!(upload.transactions.len(), 1);
        assert_eq!(read(json!({"batch": [], "client_id": "c-2"})).expect("valid").client_id.as_deref(), Some("c-2"));
        assert_eq!(read(json!({"operations": [], "client_id": null})).expect("valid").client_id, None);
        assert_eq!(read(json!({"operations": []})).expect("valid").client_id, None);
    }

    #[test]
    fn client_id_that_is_not_a_non_empty_string_is_400_at_client_id() {
        for bad in
            [json!(5), json!(""), json!({"id": "x"}), json!("x".repeat(MAX_CLIENT_ID_BYTES + 1)), json!("c\u{0}1")]
        {
            let body = json!({"client_id": bad, "transactions": []}).to_string();
            match parse_upload(body.as_bytes(), &Limits::default()) {
                Err(CrudError::Malformed { path, .. }) => assert_eq!(path, "client_id", "{bad}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn empty_transaction_list_is_valid() {
        assert_eq!(parse_value(json!({"transactions": []})), Ok(vec![]));
        assert_eq!(parse_value(json!({"batch": []})), Ok(vec![Transaction { transaction_id: None, entries: vec![] }]));
    }

    #[test]
    fn every_data_alias_is_read() {
        for alias in ["data", "opData", "op_data"] {
            let mut e = json!({"op": "PATCH", "table": "t", "id": "1"});
            e[alias] = json!({"a": true});
            let parsed = parse_value(json!({"batch": [e]})).expect("valid");
            assert_eq!(parsed[0].entries[0].data.to_map(), json!({"a": true}).as_object().cloned().unwrap_or_default());
        }
    }

    #[test]
    fn rows_keep_each_value_as_sent_whatever_its_spacing_nesting_and_escapes() {
        let objects = [
            r#"{}"#,
            r#"{ }"#,
            " {\n \"b\" :\t1 , \"a\":\"x\" \r\n}",
            r#"{"n":-1.5e+3,"t":true,"f":false,"z":null,"s":"","e":"q\"}]{[,"}"#,
            r#"{"nested":{"a":[1,{"b":"]}\\"},[]],"c":{}},"after":[ ],"x":"\u00e9"}"#,
            r#"{"na\u006de":1,"name2":2,"\"q\"":3,"tab\t":4}"#,
            r#"{"dup":1,"other":2,"dup":{"last":true}}"#,
            r#"{"z":1,"y":2,"x":3,"w":[4]}"#,
        ];
        for object in objects {
            let row = Row::parse(object).unwrap();
            let expected: Map<String, Value> = serde_json::from_str(object).unwrap();
            let names: Vec<&str> = row.iter().map(|(name, _)| name).collect();
            let mut sorted: Vec<&str> = expected.keys().map(String::as_str).collect();
            sorted.sort();
            assert_eq!(names, sorted, "{object}");
            for (name, raw) in row.iter() {
                let value: Value = serde_json::from_str(raw).unwrap_or_else(|e| panic!("{object}: {name}: {raw}: {e}"));
                assert_eq!(&value, &expected[name], "{object}: {name}");
                assert_eq!(raw, raw.trim(), "{object}: {name}: no surrounding space");
            }
        }
        assert!(Row::parse("[1]").is_err());
        assert!(Row::parse("{\"a\":").is_err());
    }

    #[test]
    fn absent_or_null_data_means_no_columns() {
        let parsed = parse_value(json!({"batch": [
            {"op": "PUT", "table": "t", "id": "1"},
            {"op": "PATCH", "table": "t", "id": "1", "data": null}
        ]}))
        .expect("valid");
        assert!(parsed[0].entries.iter().all(|e| e.data.is_empty()));
    }

    #[test]
    fn delete_data_is_ignored() {
        let parsed = parse_value(json!({"batch": [{"op": "DELETE", "table": "t", "id": "1", "data": {"x": 1}}]}))
            .expect("valid");
        assert!(parsed[0].entries[0].data.is_empty());
    }

    #[test]
    fn op_is_matched_ignoring_case() {
        let parsed = parse_value(json!({"batch": [
            {"op": "put", "table": "t", "id": "1"},
            {"op": "Patch", "table": "t", "id": "1"},
            {"op": "delete", "table": "t", "id": "1"}
        ]}))
        .expect("valid");
        let ops: Vec<Op> = parsed[0].entries.iter().map(|e| e.op).collect();
        assert_eq!(ops, vec![Op::Put, Op::Patch, Op::Delete]);
    }

    #[test]
    fn numeric_id_becomes_its_text() {
        let parsed = parse_value(json!({"batch": [
            {"op": "DELETE", "table": "t", "id": 42},
            {"op": "DELETE", "table": "t", "id": 1.5}
        ]}))
        .expect("valid");
        assert_eq!(parsed[0].entries[0].id, "42");
        assert_eq!(parsed[0].entries[1].id, "1.5");
        // as sent, never through f64 (which made these two one id, 1.2345678901234567e20)
        let body = r#"{"batch": [{"op": "DELETE", "table": "t", "id": 123456789012345678901},
                                 {"op": "DELETE", "table": "t", "id": 123456789012345678902},
                                 {"op": "DELETE", "table": "t", "id": 1e2}]}"#;
        let parsed = parse(body.as_bytes(), &Limits::default()).expect("valid");
        let ids: Vec<&str> = parsed[0].entries.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["123456789012345678901", "123456789012345678902", "1e2"]);
    }

    #[test]
    fn equal_aliases_are_accepted() {
        let parsed = parse_value(json!({"batch": [
            {"op": "PUT", "table": "t", "type": "t", "id": "1", "data": {"a": 1}, "op_data": {"a": 1}}
        ]}))
        .expect("valid");
        assert_eq!(parsed[0].entries[0].table, "t");
    }

    #[test]
    fn conflicting_data_aliases_are_rejected() {
        assert_eq!(
            malformed_path(
                json!({"batch": [{"op": "PUT", "table": "t", "id": "1", "data": {"a": 1}, "op_data": {"a": 2}}]})
            ),
            "batch[0].op_data"
        );
        assert_eq!(
            malformed_path(
                json!({"batch": [{"op": "PUT", "table": "t", "id": "1", "data": null, "opData": {"a": 2}}]})
            ),
            "batch[0].opData"
        );
    }

    #[test]
    fn conflicting_table_aliases_are_rejected() {
        assert_eq!(
            malformed_path(json!({"batch": [{"op": "PUT", "table": "a", "type": "b", "id": "1"}]})),
            "batch[0].type"
        );
    }

    #[test]
    fn body_that_is_not_json_is_malformed() {
        let result = parse(b"{not json", &Limits::default());
        assert!(matches!(result, Err(CrudError::Malformed { ref path, .. }) if path == "$"), "{result:?}");
        assert!(matches!(parse(b"", &Limits::default()), Err(CrudError::Malformed { .. })));
    }

    #[test]
    fn body_that_is_not_an_object_is_malformed() {
        assert_eq!(malformed_path(json!([1, 2])), "$");
        assert_eq!(malformed_path(json!("batch")), "$");
    }

    #[test]
    fn body_without_a_known_shape_is_malformed() {
        assert_eq!(malformed_path(json!({"entries": []})), "$");
    }

    #[test]
    fn body_with_two_shapes_is_malformed() {
        assert_eq!(malformed_path(json!({"batch": [], "operations": []})), "$");
    }

    #[test]
    fn wrong_container_types_are_malformed() {
        assert_eq!(malformed_path(json!({"transactions": {}})), "transactions");
        assert_eq!(malformed_path(json!({"batch": null})), "batch");
        assert_eq!(malformed_path(json!({"transactions": [5]})), "transactions[0]");
        assert_eq!(malformed_path(json!({"transactions": [{"transaction_id": 1}]})), "transactions[0].crud");
        assert_eq!(malformed_path(json!({"transactions": [{"crud": {}}]})), "transactions[0].crud");
        assert_eq!(
            malformed_path(json!({"transactions": [{"transaction_id": [1], "crud": []}]})),
            "transactions[0].transaction_id"
        );
        assert_eq!(malformed_path(json!({"operations": ["PUT"]})), "operations[0]");
    }

    #[test]
    fn bad_op_is_malformed_with_its_path() {
        let base = |op: Value| json!({"transactions": [{"crud": []}, {"crud": [{"op": op, "table": "t", "id": "1"}]}]});
        assert_eq!(malformed_path(base(json!("UPSERT"))), "transactions[1].crud[0].op");
        assert_eq!(malformed_path(base(json!(1))), "transactions[1].crud[0].op");
        assert_eq!(malformed_path(base(Value::Null)), "transactions[1].crud[0].op");
        assert_eq!(
            malformed_path(json!({"transactions": [{"crud": [{"table": "t", "id": "1"}]}]})),
            "transactions[0].crud[0].op"
        );
    }

    #[test]
    fn bad_id_is_malformed_with_its_path() {
        assert_eq!(malformed_path(json!({"batch": [{"op": "PUT", "table": "t"}]})), "batch[0].id");
        assert_eq!(malformed_path(json!({"batch": [{"op": "PUT", "table": "t", "id": true}]})), "batch[0].id");
        assert_eq!(malformed_path(json!({"batch": [{"op": "PUT", "table": "t", "id": {"a": 1}}]})), "batch[0].id");
    }

    #[test]
    fn bad_table_is_malformed_with_its_path() {
        assert_eq!(malformed_path(json!({"batch": [{"op": "PUT", "id": "1"}]})), "batch[0].table");
        assert_eq!(malformed_path(json!({"batch": [{"op": "PUT", "type": 3, "id": "1"}]})), "batch[0].type");
    }

    #[test]
    fn non_object_data_is_malformed() {
        assert_eq!(
            malformed_path(json!({"batch": [{"op": "PUT", "table": "t", "id": "1", "data": "{}"}]})),
            "batch[0].data"
        );
        assert_eq!(
            malformed_path(json!({"batch": [{"op": "DELETE", "table": "t", "id": "1", "op_data": [1]}]})),
            "batch[0].op_data"
        );
    }

    #[test]
    fn malformed_message_says_what_was_found() {
        match parse_value(json!({"batch": [{"op": "PUT", "table": "t", "id": true}]})) {
            Err(CrudError::Malformed { message, .. }) => {
                assert_eq!(message, "expected a string or a number, found a boolean")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn body_over_byte_limit_is_too_large() {
        let limits = Limits { max_body_bytes: 10, ..Limits::default() };
        assert!(matches!(parse(br#"{"batch": []}"#, &limits), Err(CrudError::TooLarge { .. })));
        assert!(parse(br#"{"batch":[]}"#, &Limits { max_body_bytes: 12, ..limits }).is_ok());
    }

    #[test]
    fn too_many_entries_is_too_large_even_if_entries_are_malformed() {
        let limits = Limits { max_entries: 2, ..Limits::default() };
        let body = json!({"transactions": [{"crud": [1, 2]}, {"crud": [3]}]}).to_string();
        assert!(matches!(parse(body.as_bytes(), &limits), Err(CrudError::TooLarge { .. })));
        let body = json!({"batch": [1, 2, 3]}).to_string();
        assert!(matches!(parse(body.as_bytes(), &limits), Err(CrudError::TooLarge { .. })));
    }

    #[test]
    fn entries_at_the_limit_are_accepted() {
        let limits = Limits { max_entries: 2, ..Limits::default() };
        let body = json!({"transactions": [{"crud": [{"op": "DELETE", "table": "t", "id": "1"}]},
                                           {"crud": [{"op": "DELETE", "table": "t", "id": "2"}]}]})
        .to_string();
        assert_eq!(parse(body.as_bytes(), &limits).map(|t| t.len()), Ok(2));
    }

    #[test]
    fn too_many_transactions_is_too_large() {
        let limits = Limits { max_transactions: 2, ..Limits::default() };
        let body = json!({"transactions": [{"crud": []}, {"crud": []}, {"crud": []}]}).to_string();
        assert!(matches!(parse(body.as_bytes(), &limits), Err(CrudError::TooLarge { .. })));
    }

    #[test]
    fn entry_json_is_normalised() {
        let put = entry(Op::Put, "todos", "a", json!({"x": 1}));
        assert_eq!(put.to_json(), json!({"op": "PUT", "table": "todos", "id": "a", "data": {"x": 1}}));
        let delete = entry(Op::Delete, "todos", "a", Value::Null);
        assert_eq!(delete.to_json(), json!({"op": "DELETE", "table": "todos", "id": "a"}));
    }
}
