//! Dead letters: a record of every transaction the bridge rejected for good.
//!
//! A fatal error makes the client discard its transaction, so when `UPLOAD_DEAD_LETTER_TABLE` is
//! set the bridge first records what was rejected, to be inspected or replayed by hand:
//!
//! `POST <SUPABASE_URL>/rest/v1/<table>` with `Prefer: return=minimal`, the credentials of the
//! configured mode (in `rls` mode the table needs an insert policy for the user's own rows; see
//! `sql/dead_letter.sql`), and the body
//!
//! ```json
//! {"user_id": "<sub>", "transaction_id": "<text or null>", "op_index": 2,
//!  "entry": {"op": "PUT", "table": "todos", "id": "…", "data": {…}},
//!  "code": "23505", "message": "…", "details": "…"}
//! ```
//!
//! - `transaction_id` is sent as text (a numeric id in its JSON form), matching a `text` column;
//! - `entry` is the failed entry as the client sent it (data before conversions). When the failure
//!   concerns the whole transaction (`op_index` null: an atomic call whose error does not name
//!   the op, or a transaction too large for the subrequest budget) it is the array of all the
//!   transaction's entries instead;
//! - `created_at` is left to the database default;
//! - U+0000, which PostgreSQL cannot store in `text` or `jsonb`, is replaced by U+FFFD in every
//!   string and key (an id or a value holding it is what made the transaction fatal; the
//!   record must still be writable).
//!
//! The insert costs one subrequest, which the driver reserves before sending a transaction. Its
//! failure is logged in the report and never changes the transaction's outcome.

use serde_json::{json, Value};

use super::crud::Transaction;
use super::outcome::FailedOperation;
use super::plan::{authorized, PREFER_MINIMAL};
use super::settings::UploadSettings;
use super::Caller;
use crate::http::{HttpRequest, Method};

/// The insert recording `failure` of `transaction` in `table`.
pub fn request(
    table: &str,
    settings: &UploadSettings,
    caller: &Caller,
    transaction: &Transaction,
    failure: &FailedOperation,
) -> HttpRequest {
    let entry = match failure.index.and_then(|i| transaction.entries.get(i)) {
        Some(entry) => entry.to_json(),
        None => Value::Array(transaction.entries.iter().map(|e| e.to_json()).collect()),
    };
    let transaction_id = match &transaction.transaction_id {
        None => Value::Null,
        Some(Value::String(text)) => Value::String(text.clone()),
        Some(other) => Value::String(other.to_string()),
    };
    let body = json!({
        "user_id": caller.user_id,
        "transaction_id": transaction_id,
        "op_index": failure.index,
        "entry": entry,
        "code": failure.code,
        "message": failure.message,
        "details": failure.details,
    });
    let url = format!("{}/rest/v1/{table}", settings.supabase_url);
    authorized(Method::Post, url, settings, caller)
        .json_body(storable(body).to_string())
        .header("Prefer", PREFER_MINIMAL)
}

/// `value` with U+0000 replaced by U+FFFD in every string and object key.
fn storable(value: Value) -> Value {
    const NUL: char = '\u{0}';
    let text = |s: String| if s.contains(NUL) { s.replace(NUL, "\u{FFFD}") } else { s };
    match value {
        Value::String(s) => Value::String(text(s)),
        Value::Array(items) => Value::Array(items.into_iter().map(storable).collect()),
        Value::Object(fields) => Value::Object(fields.into_iter().map(|(k, v)| (text(k), storable(v))).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upload::crud::{Entry, Op};
    use crate::upload::settings::WriteMode;

    fn transaction(id: Option<Value>) -> Transaction {
        Transaction {
            transaction_id: id,
            entries: vec![
                Entry { op: Op::Put, table: "todos".to_string(), id: "a".to_string(), data: Default::default() },
                Entry { op: Op::Delete, table: "todos".to_string(), id: "b".to_string(), data: Default::default() },
            ],
        }
    }

    fn caller() -> Caller {
        Caller { user_id: "u1".to_string(), access_token: "tok".to_string() }
    }

    fn body(request: &HttpRequest) -> Value {
        serde_json::from_str(request.body.as_deref().unwrap_or("null")).unwrap_or(Value::Null)
    }

    #[test]
    fn dead_letter_records_the_failed_entry() {
        let settings = UploadSettings::new("https://p.supabase.co", "anon");
        let mut failure = FailedOperation::new(Some(1), "23503", "fk violation");
        failure.details = Some("Key is not present".to_string());
        let request = request("dead", &settings, &caller(), &transaction(Some(json!(17))), &failure);
        assert_eq!(request.method, Method::Post);
        assert_eq!(request.url, "https://p.supabase.co/rest/v1/dead");
        assert_eq!(
            request.headers,
            vec![
                ("apikey".to_string(), "anon".to_string()),
                ("Authorization".to_string(), "Bearer tok".to_string()),
                ("Content-Type".to_string(), "application/json".to_string()),
                ("Prefer".to_string(), "return=minimal".to_string()),
            ]
        );
        assert_eq!(
            body(&request),
            json!({"user_id": "u1", "transaction_id": "17", "op_index": 1,
                   "entry": {"op": "DELETE", "table": "todos", "id": "b"},
                   "code": "23503", "message": "fk violation", "details": "Key is not present"})
        );
    }

    #[test]
    fn nul_characters_are_replaced_so_the_record_can_be_stored() {
        let settings = UploadSettings::new("https://p.supabase.co", "anon");
        let mut data = serde_json::Map::new();
        data.insert("ti\u{0}tle".to_string(), json!(["x\u{0}y", {"k": "\u{0}"}]));
        let transaction = Transaction {
            transaction_id: Some(json!("t\u{0}")),
            entries: vec![Entry { op: Op::Put, table: "todos".to_string(), id: "a\u{0}b".to_string(), data }],
        };
        let failure = FailedOperation::new(Some(0), "invalid_id", "nul");
        let request = request("dead", &settings, &caller(), &transaction, &failure);
        let text = request.body.clone().unwrap_or_default();
        assert!(!text.contains("\\u0000"), "{text}");
        let recorded = body(&request);
        assert_eq!(recorded["transaction_id"], "t\u{FFFD}");
        assert_eq!(
            recorded["entry"],
            json!({"op": "PUT", "table": "todos", "id": "a\u{FFFD}b", "data": {"ti\u{FFFD}tle": ["x\u{FFFD}y", {"k": "\u{FFFD}"}]}})
        );
    }

    #[test]
    fn whole_transaction_failure_records_every_entry() {
        let mut settings = UploadSettings::new("https://p.supabase.co", "anon");
        settings.mode = WriteMode::Service { service_key: "svc".to_string(), owner_column: "owner".to_string() };
        let failure = FailedOperation::new(None, "too_many_requests_for_budget", "too big");
        let request = request("dead", &settings, &caller(), &transaction(None), &failure);
        assert_eq!(request.header_value("authorization"), Some("Bearer svc"));
        assert_eq!(
            body(&request),
            json!({"user_id": "u1", "transaction_id": null, "op_index": null,
                   "entry": [{"op": "PUT", "table": "todos", "id": "a", "data": {}},
                             {"op": "DELETE", "table": "todos", "id": "b"}],
                   "code": "too_many_requests_for_budget", "message": "too big", "details": null})
        );
    }
}
