//! Dead letters: a record of every transaction the bridge rejected for good.
//!
//! A fatal error makes the client discard its transaction, so when `UPLOAD_DEAD_LETTER_TABLE` is
//! set (to `powersync_dead_letters`, the table of `sql/dead_letter.sql`) the bridge first records
//! the whole transaction, to be inspected or replayed once its cause is fixed
//! (`powersync_replay_dead_letter`, which applies it with the rights of the original writer):
//!
//! `POST <SUPABASE_URL>/rest/v1/rpc/powersync_record_dead_letter` with the credentials of the
//! configured mode and the body
//!
//! ```json
//! {"entries": [{"op": "PUT", "table": "todos", "id": "…", "data": {…}, "state": "applied"},
//!              {"op": "DELETE", "table": "lists", "id": "…", "state": "applied"},
//!              {"op": "PUT", "table": "todos", "id": "…", "data": {…}, "state": "failed"},
//!              {"op": "PATCH", "table": "todos", "id": "…", "data": {…}, "state": "not_attempted"}],
//!  "code": "23505", "message": "…", "details": "…",
//!  "transaction_id": "<text or null>", "client_id": "<text or null>", "op_index": 2,
//!  "entry": {"op": "PUT", "table": "todos", "id": "…", "data": {…}}}
//! ```
//!
//! plus, in `service` mode only, `"user_id": "<sub>"`, `"owner_column": "<UPLOAD_OWNER_COLUMN>"`
//! and `"allowed_tables": [<UPLOAD_TABLES, sorted>]` (null: every table). In `rls` mode the user's
//! own token is sent and the function takes the owner (the JWT's `sub`) and the claims from the
//! session itself; it refuses a `user_id` other than the session's.
//!
//! - The function sets the row's id, `created_at` and provenance itself, and answers the row's id
//!   (a JSON integer); a transaction it has recorded already (same owner, client id, transaction
//!   id and entries) answers the first row's id and adds nothing, so a re-send after a lost answer
//!   adds no second dead letter. Any other 2xx answer is not taken as recorded
//!   (`unexpected_response`).
//! - `transaction_id` is sent as text (a numeric id in its JSON form), matching a `text` column;
//! - `op_index` is the failing entry's index, null when the failure concerns the whole
//!   transaction (an atomic call whose error does not name the op, a transaction too large for
//!   the subrequest budget);
//! - `entries` is every entry of the transaction, in order, as the bridge writes it: the op of the
//!   atomic function (`sql/atomic_upload.sql`), data after `UPLOAD_JSON_COLUMNS` /
//!   `UPLOAD_BOOLEAN_COLUMNS` conversions and the service-mode owner rules, a PUT's data with its
//!   `id`, a PATCH's without; plus its `state`:
//!   - `applied`: written (its request was answered 2xx, or there was nothing to write);
//!   - `failed`: sent in the request that failed, and so not applied (in atomic mode the whole
//!     call is rolled back, so every entry is `failed`); also the entry a check refused before
//!     anything was sent, and every entry when `op_index` is null;
//!   - `not_attempted`: never sent;
//!   - `unchanged`: a PATCH or DELETE before the failure that changed no row (its row gone or
//!     hidden; of a merged request only when its count says none of them changed a row), and
//!     the entries of `UPLOAD_DEAD_LETTER_UNCHANGED`'s records ([`unchanged_record`]).
//!
//!   Replaying the entries that are not `applied`, in order, completes the transaction. Without
//!   their states they are exactly the atomic call's `ops`, so the function's digest of them is
//!   the one the ledger keeps for the transaction (a replay is recorded there: a later re-send
//!   is `already_applied`);
//! - `entry` (kept for older readers) is the failed entry as the client sent it (data before
//!   conversions), or the array of all of them when `op_index` is null;
//! - U+0000, which PostgreSQL cannot store in `text` or `jsonb`, is replaced by U+FFFD in every
//!   string and key (an id or a value holding it is what made the transaction fatal; the
//!   record must still be writable).
//!
//! The call costs one subrequest, which the driver reserves before sending a transaction. If it
//! fails (including a missing EXECUTE grant or a function not installed), the transaction is
//! reported retryable instead of fatal: the client must not discard what could not be recorded
//! (see `delivery`).

use serde_json::{json, Value};

use super::crud::{Entry, Op, Transaction, ENTRIES_DIGEST_HEADER};
use super::outcome::FailedOperation;
use super::plan::{atomic_op, authorized};
use super::row::{push_json_string, storable, Columns};
use super::settings::{UploadSettings, WriteMode};
use super::Caller;
use crate::http::{HttpRequest, Method};

/// What became of one entry of a fatal transaction (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryState {
    Applied,
    Failed,
    NotAttempted,
    /// Applied, but it changed no row (a PATCH or DELETE whose row is gone or hidden): in the
    /// records `UPLOAD_DEAD_LETTER_UNCHANGED` writes (see [`unchanged_record`]), and for such
    /// entries before the failure of a transaction sent as REST requests (see the module docs).
    Unchanged,
}

impl EntryState {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryState::Applied => "applied",
            EntryState::Failed => "failed",
            EntryState::NotAttempted => "not_attempted",
            EntryState::Unchanged => "unchanged",
        }
    }
}

/// The states of a transaction of `count` entries that failed before anything was sent: the
/// refused entry `failed` (every entry when `index` is `None`), the others `not_attempted`.
pub fn refused_states(count: usize, index: Option<usize>) -> Vec<EntryState> {
    (0..count)
        .map(|i| match index {
            Some(failed) if failed != i => EntryState::NotAttempted,
            _ => EntryState::Failed,
        })
        .collect()
}

/// Code of the records `UPLOAD_DEAD_LETTER_UNCHANGED` writes.
pub const UNCHANGED: &str = "unchanged";

/// What `UPLOAD_DEAD_LETTER_UNCHANGED` records for an applied transaction of `count` entries
/// whose entries `unchanged` (indexes, in order) changed no row: a failure with code `unchanged`
/// at the first of them recorded so, and the states (those entries `unchanged`, the others
/// `applied`). A replay applies the `unchanged` entries again (e.g. once a policy that hid the
/// rows is fixed). Entries also in `uncertain` (sorted; of `unchanged`: merged in one request
/// that changed fewer rows than it named, so each may have changed its row) are recorded
/// `applied` and named in the message: a replay sending one again could overwrite a newer value.
/// `None` when no entry is left to record `unchanged`: such a record would hold nothing to replay.
pub fn unchanged_record(
    count: usize,
    unchanged: &[usize],
    uncertain: &[usize],
) -> Option<(FailedOperation, Vec<EntryState>)> {
    let surely = |i: &usize| uncertain.binary_search(i).is_err();
    let first = unchanged.iter().copied().find(surely)?;
    let list = |entries: &[usize]| entries.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
    let mut message = format!(
        "applied, but entries {} (PATCH or DELETE) changed no row: the row is gone, or hidden from the writer by \
         row-level security or another owner",
        list(unchanged)
    );
    if !uncertain.is_empty() {
        message.push_str(&format!(
            "; of them, entries {} were sent in one request that changed some of their rows, so each may have \
             changed its own: recorded applied (a replay does not send them again)",
            list(uncertain)
        ));
    }
    // One pass over the list (a `contains` per entry made it count × unchanged).
    let mut states = vec![EntryState::Applied; count];
    for i in unchanged.iter().copied().filter(surely) {
        if let Some(state) = states.get_mut(i) {
            *state = EntryState::Unchanged;
        }
    }
    Some((FailedOperation::new(Some(first), UNCHANGED, message), states))
}

/// What a conflict's dead letter keeps of the row as the server held it (its `details`), as
/// JSON. The user can read their own dead letters, so in service mode, where the row was read
/// with the service key, only `id` and the columns the entry (`None`: unknown) writes are kept:
/// the others may be hidden from the user by a column grant or their sync rules. Not the
/// columns it only compared: the client chooses its previous values, so naming a hidden column
/// there would read it. Under RLS the row was read with the user's own rights, and is kept
/// whole.
pub fn conflict_details(row: &Value, entry: Option<&Entry>, mode: &WriteMode) -> String {
    match (mode, row) {
        (WriteMode::Service { .. }, Value::Object(columns)) => {
            let named =
                |name: &str| name == "id" || entry.is_some_and(|entry| entry.data.iter().any(|(n, _)| n == name));
            let kept: serde_json::Map<String, Value> =
                columns.iter().filter(|(name, _)| named(name)).map(|(k, v)| (k.clone(), v.clone())).collect();
            Value::Object(kept).to_string()
        }
        _ => row.to_string(),
    }
}

/// The function that records dead letters (`sql/dead_letter.sql`).
pub const RECORD_FUNCTION: &str = "powersync_record_dead_letter";

/// The call recording `failure` of `transaction`; `states[i]` is what became of entry `i`
/// (missing states count as `failed`).
pub fn request(
    settings: &UploadSettings,
    caller: &Caller,
    transaction: &Transaction,
    failure: &FailedOperation,
    states: &[EntryState],
) -> HttpRequest {
    // the failing entry (every entry when none is named) as the client sent it, its values'
    // text as sent, like the entries below
    let entry = match failure.index.and_then(|i| transaction.entries.get(i)) {
        Some(entry) => entry_text(entry),
        None => format!("[{}]", transaction.entries.iter().map(entry_text).collect::<Vec<_>>().join(",")),
    };
    let transaction_id = match &transaction.transaction_id {
        None => Value::Null,
        Some(Value::String(text)) => Value::String(text.clone()),
        Some(other) => Value::String(other.to_string()),
    };
    // The ops as the atomic call writes them, their values' text as the client sent it (a
    // number through a float would lose digits, and the ledger's digest of the ops with them).
    let entries: Vec<String> = transaction
        .entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let state = states.get(i).copied().unwrap_or(EntryState::Failed);
            atomic_op(e, settings, &caller.user_id, &format!(",\"state\":\"{}\"", state.as_str()))
        })
        .collect();
    let mut body = json!({
        "code": failure.code,
        "message": failure.message,
        "details": failure.details,
        "transaction_id": transaction_id,
        "client_id": caller.client_id,
        "op_index": failure.index,
    });
    if let WriteMode::Service { owner_column, .. } = &settings.mode {
        body["user_id"] = json!(caller.user_id);
        body["owner_column"] = json!(owner_column);
        body["allowed_tables"] = json!(settings.tables);
    }
    let url = format!("{}/rest/v1/rpc/{RECORD_FUNCTION}", settings.supabase_url);
    let mut text = body.to_string();
    text.pop(); // the object's closing brace: the entries go in as written
    text.push_str(",\"entry\":");
    text.push_str(&entry);
    text.push_str(",\"entries\":[");
    text.push_str(&entries.join(","));
    text.push_str("]}");
    let request = authorized(Method::Post, url, settings, caller).json_body(storable(&text).into_owned());
    match (&caller.client_id, &transaction.transaction_id) {
        // the ledger records the dead-lettered transaction under this digest too (crud)
        (Some(_), Some(_)) => request.header(ENTRIES_DIGEST_HEADER, transaction.entries_digest()),
        _ => request,
    }
}

/// `entry` as the client sent it: `{"op","table","id","data"?,"previous_values"?,"metadata"?}`
/// (no `data` for DELETE; the last two only when sent), each value's text as sent (through a
/// float, `1e400` would read null and a long integer lose digits).
fn entry_text(entry: &Entry) -> String {
    let mut out = String::from("{\"op\":");
    push_json_string(&mut out, entry.op.as_str());
    out.push_str(",\"table\":");
    push_json_string(&mut out, &entry.table);
    out.push_str(",\"id\":");
    push_json_string(&mut out, &entry.id);
    if entry.op != Op::Delete {
        out.push_str(",\"data\":");
        Columns::of(&entry.data).write_json(&mut out);
    }
    if let Some(previous) = &entry.previous {
        out.push_str(",\"previous_values\":");
        Columns::of(previous).write_json(&mut out);
    }
    if let Some(metadata) = &entry.metadata {
        out.push_str(",\"metadata\":");
        push_json_string(&mut out, metadata);
    }
    out.push('}');
    out
}

/// Whether a 2xx answer to [`request`] is the function's: the recorded row's id.
pub fn is_recorded(body: &str) -> bool {
    serde_json::from_str::<Value>(body).is_ok_and(|id| id.as_u64().is_some_and(|id| id > 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upload::crud::{Entry, Op};
    use std::collections::BTreeSet;

    fn transaction(id: Option<Value>) -> Transaction {
        Transaction {
            transaction_id: id,
            entries: vec![
                Entry {
                    op: Op::Put,
                    table: "todos".to_string(),
                    id: "a".to_string(),
                    data: Default::default(),
                    previous: None,
                    metadata: None,
                },
                Entry {
                    op: Op::Delete,
                    table: "todos".to_string(),
                    id: "b".to_string(),
                    data: Default::default(),
                    previous: None,
                    metadata: None,
                },
            ],
        }
    }

    fn caller() -> Caller {
        Caller {
            user_id: "u1".to_string(),
            access_token: "tok".to_string(),
            client_id: Some("client-1".to_string()),
            role: None,
        }
    }

    fn body(request: &HttpRequest) -> Value {
        serde_json::from_str(request.body.as_deref().unwrap_or("null")).unwrap_or(Value::Null)
    }

    #[test]
    fn an_unchanged_record_of_many_entries_is_made_in_one_pass() {
        // A `contains` per entry made it count × unchanged: 40,000 unchanged DELETEs took
        // 0.15 s natively, and UPLOAD_MAX_ENTRIES may be 1,000,000.
        let unchanged: Vec<usize> = (0..100_000).step_by(2).collect();
        let started = std::time::Instant::now();
        let Some((failure, states)) = unchanged_record(100_000, &unchanged, &[]) else { panic!("a record") };
        assert!(started.elapsed() < std::time::Duration::from_millis(1500), "{:?}", started.elapsed());
        assert_eq!(failure.index, Some(0));
        assert_eq!(states.iter().filter(|s| **s == EntryState::Unchanged).count(), 50_000);
        assert_eq!((states[0], states[1]), (EntryState::Unchanged, EntryState::Applied));
    }

    #[test]
    fn rls_mode_calls_the_recorder_with_the_users_token_and_no_owner() {
        let settings = UploadSettings::new("https://p.supabase.co", "anon");
        let mut failure = FailedOperation::new(Some(1), "23503", "fk violation");
        failure.details = Some("Key is not present".to_string());
        let states = [EntryState::Applied, EntryState::Failed];
        let transaction = transaction(Some(json!(17)));
        let request = request(&settings, &caller(), &transaction, &failure, &states);
        assert_eq!(request.method, Method::Post);
        assert_eq!(request.url, "https://p.supabase.co/rest/v1/rpc/powersync_record_dead_letter");
        assert_eq!(
            request.headers,
            vec![
                ("apikey".to_string(), "anon".to_string()),
                ("Authorization".to_string(), "Bearer tok".to_string()),
                ("Content-Type".to_string(), "application/json".to_string()),
                ("X-PowerSync-Entries-Digest".to_string(), transaction.entries_digest()),
            ]
        );
        assert_eq!(
            body(&request),
            json!({"entries": [{"op": "PUT", "table": "todos", "id": "a", "data": {"id": "a"}, "state": "applied"},
                               {"op": "DELETE", "table": "todos", "id": "b", "state": "failed"}],
                   "code": "23503", "message": "fk violation", "details": "Key is not present",
                   "transaction_id": "17", "client_id": "client-1", "op_index": 1,
                   "entry": {"op": "DELETE", "table": "todos", "id": "b"}})
        );
    }

    #[test]
    fn service_mode_names_the_owner_its_column_and_the_allowed_tables() {
        let mut settings = UploadSettings::new("https://p.supabase.co", "anon");
        settings.mode = WriteMode::Service { service_key: "svc".to_string(), owner_column: "owner".to_string() };
        settings.tables = Some(BTreeSet::from(["todos".to_string(), "lists".to_string()]));
        let failure = FailedOperation::new(None, "too_many_requests_for_budget", "too big");
        let states = refused_states(2, None);
        let caller = Caller { client_id: None, ..caller() };
        let request = request(&settings, &caller, &transaction(None), &failure, &states);
        assert_eq!(request.url, "https://p.supabase.co/rest/v1/rpc/powersync_record_dead_letter");
        assert_eq!(request.header_value("apikey"), Some("svc"));
        assert_eq!(request.header_value("authorization"), Some("Bearer svc"));
        assert_eq!(
            body(&request),
            json!({"entries": [{"op": "PUT", "table": "todos", "id": "a", "data": {"id": "a", "owner": "u1"}, "state": "failed"},
                               {"op": "DELETE", "table": "todos", "id": "b", "state": "failed"}],
                   "code": "too_many_requests_for_budget", "message": "too big", "details": null,
                   "transaction_id": null, "client_id": null, "op_index": null,
                   "entry": [{"op": "PUT", "table": "todos", "id": "a", "data": {}},
                             {"op": "DELETE", "table": "todos", "id": "b"}],
                   "user_id": "u1", "owner_column": "owner", "allowed_tables": ["lists", "todos"]})
        );
    }

    #[test]
    fn service_mode_without_an_allowlist_sends_null_allowed_tables() {
        let mut settings = UploadSettings::new("https://p.supabase.co", "anon");
        settings.mode = WriteMode::Service { service_key: "svc".to_string(), owner_column: "owner".to_string() };
        let failure = FailedOperation::new(Some(0), "23505", "dup");
        let request = request(&settings, &caller(), &transaction(Some(json!("t"))), &failure, &[]);
        assert_eq!(body(&request)["allowed_tables"], Value::Null);
        assert_eq!(body(&request)["user_id"], "u1");
    }

    #[test]
    fn only_a_row_id_counts_as_recorded() {
        assert!(is_recorded("42"));
        assert!(is_recorded(" 7\n"));
        for answer in ["", "null", "0", "-3", "1.5", "\"42\"", "{}", "[]", "{\"id\": 4}", "<html>ok</html>"] {
            assert!(!is_recorded(answer), "{answer:?}");
        }
    }

    #[test]
    fn nul_characters_are_replaced_so_the_record_can_be_stored() {
        let settings = UploadSettings::new("https://p.supabase.co", "anon");
        let mut data = serde_json::Map::new();
        data.insert("ti\u{0}tle".to_string(), json!(["x\u{0}y", {"k": "\u{0}"}]));
        let transaction = Transaction {
            transaction_id: Some(json!("t\u{0}")),
            entries: vec![Entry {
                op: Op::Put,
                table: "todos".to_string(),
                id: "a\u{0}b".to_string(),
                data: data.into(),
                previous: None,
                metadata: None,
            }],
        };
        let failure = FailedOperation::new(Some(0), "invalid_id", "nul");
        let request = request(&settings, &caller(), &transaction, &failure, &[EntryState::Failed]);
        let text = request.body.clone().unwrap_or_default();
        assert!(!text.contains("\\u0000"), "{text}");
        let recorded = body(&request);
        assert_eq!(recorded["transaction_id"], "t\u{FFFD}");
        assert_eq!(
            recorded["entry"],
            json!({"op": "PUT", "table": "todos", "id": "a\u{FFFD}b", "data": {"ti\u{FFFD}tle": ["x\u{FFFD}y", {"k": "\u{FFFD}"}]}})
        );
        assert_eq!(
            recorded["entries"][0]["data"],
            json!({"id": "a\u{FFFD}b", "ti\u{FFFD}tle": ["x\u{FFFD}y", {"k": "\u{FFFD}"}]})
        );
        assert_eq!(recorded["entries"][0]["id"], "a\u{FFFD}b");
    }

    #[test]
    fn the_recorded_entry_keeps_each_values_text_as_sent() {
        let body = r#"{"batch": [{"op": "PUT", "table": "todos", "id": "a",
            "data": {"n": 1e400, "b": 123456789012345678901234567890, "p": 0.1000000000000000000001, "s": "\ud800"}}]}"#;
        let transactions = crate::upload::parse(body.as_bytes(), &crate::upload::Limits::default()).expect("valid");
        let failure = FailedOperation::new(Some(0), "22P02", "bad");
        let request = request(
            &UploadSettings::new("https://p.supabase.co", "anon"),
            &caller(),
            &transactions[0],
            &failure,
            &[EntryState::Failed],
        );
        let text = request.body.as_deref().unwrap_or_default();
        let entry = &text[text.find(r#""entry":"#).expect("entry")..text.find(r#","entries""#).expect("entries")];
        for value in ["1e400", "123456789012345678901234567890", "0.1000000000000000000001", r#""\ufffd""#] {
            assert!(entry.contains(value), "{value} in {entry}");
        }
        assert!(serde_json::from_str::<&serde_json::value::RawValue>(text).is_ok(), "{text}");
    }

    #[test]
    fn the_ops_keep_the_clients_numbers_as_written_as_the_atomic_call_does() {
        // A JSON column's text with a number no float holds: the dead letter's ops (and the
        // ledger's digest of them) must be the atomic call's, digit for digit.
        let mut settings = UploadSettings::new("https://p.supabase.co", "anon");
        settings.json_columns.insert("todos", "tags");
        let transaction = Transaction {
            transaction_id: None,
            entries: vec![Entry {
                op: Op::Put,
                table: "todos".to_string(),
                id: "a".to_string(),
                data: crate::upload::crud::Row::parse(
                    r#"{"tags": "{\"n\": 12345678901234567890123, \"x\": 1e2}", "price": 0.1000000000000000000001}"#,
                )
                .unwrap_or_default(),
                previous: None,
                metadata: None,
            }],
        };
        let failure = FailedOperation::new(Some(0), "23505", "dup");
        let request = request(&settings, &caller(), &transaction, &failure, &[]);
        let sent = request.body.as_deref().unwrap_or_default();
        assert!(sent.contains(r#""tags":{"n": 12345678901234567890123, "x": 1e2}"#), "{sent}");
        assert!(sent.contains(r#""price":0.1000000000000000000001"#), "{sent}");
        let atomic = crate::upload::plan::atomic_request(&transaction, &settings, &caller()).map(|r| r.request);
        let atomic = atomic.and_then(|r| r.body).unwrap_or_default();
        assert!(atomic.contains(r#""tags":{"n": 12345678901234567890123, "x": 1e2}"#), "{atomic}");
    }

    #[test]
    fn refused_entry_is_failed_and_the_rest_not_attempted() {
        use EntryState::*;
        assert_eq!(refused_states(3, Some(1)), vec![NotAttempted, Failed, NotAttempted]);
        assert_eq!(refused_states(2, None), vec![Failed, Failed]);
    }
}
