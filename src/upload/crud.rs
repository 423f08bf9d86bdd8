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
//! - `id`: a non-empty string; a JSON number is accepted and used in its JSON text form (`5`).
//! - the table as `table` or `type`: a non-empty string. Whether the name is valid and allowed is
//!   decided when planning, so a bad name fails only its own transaction (see `plan`).
//! - the data as `data`, `opData` or `op_data`: a JSON object, or null/absent (= no columns).
//!   The data of a DELETE is checked the same way and then ignored.
//!
//! When an entry carries several aliases of the same field they must hold the same value,
//! otherwise the entry is malformed (which one to believe would be a guess). Other fields
//! (`op_id`, `tx_id`, `old`, `previous_values`, `metadata`, `clientId`, ...) are ignored, and so
//! are unknown top-level fields; naming two of `transactions`/`batch`/`operations` is malformed.
//!
//! Errors name the offending place as a path such as `transactions[1].crud[0].op` (`$` is the
//! body itself), so a developer can find the bad entry. The adapter answers
//! [`CrudError::Malformed`] with 400 and [`CrudError::TooLarge`] with 413.

use std::fmt;

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
    pub data: Map<String, Value>,
}

impl Entry {
    /// The entry in normalised JSON form `{"op","table","id","data"?}` (no `data` for DELETE),
    /// as stored in the dead-letter table: the data is the client's, before conversions.
    pub fn to_json(&self) -> Value {
        let mut object = Map::new();
        object.insert("op".to_string(), Value::String(self.op.as_str().to_string()));
        object.insert("table".to_string(), Value::String(self.table.clone()));
        object.insert("id".to_string(), Value::String(self.id.clone()));
        if self.op != Op::Delete {
            object.insert("data".to_string(), Value::Object(self.data.clone()));
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

/// Path of the body itself in error messages.
const ROOT: &str = "$";
/// The top-level keys naming the accepted shapes.
const SHAPES: [&str; 3] = ["transactions", "batch", "operations"];

/// Reads an upload body into transactions, in order.
///
/// The size of the body is checked before it is parsed; the counts of transactions and entries
/// before any entry is examined, so an oversized body is always [`CrudError::TooLarge`].
/// An empty transaction list and a transaction without entries are both valid.
pub fn parse(body: &[u8], limits: &Limits) -> Result<Vec<Transaction>, CrudError> {
    if body.len() > limits.max_body_bytes {
        return Err(CrudError::TooLarge {
            message: format!("body is {} bytes; at most {} are accepted", body.len(), limits.max_body_bytes),
        });
    }
    let value: Value =
        serde_json::from_slice(body).map_err(|e| malformed(ROOT.to_string(), format!("not valid JSON: {e}")))?;
    // The parsed tree is taken apart by value, so rows move into entries instead of being copied.
    let Value::Object(mut root) = value else {
        return Err(malformed(
            ROOT.to_string(),
            "expected a JSON object with `transactions`, `batch` or `operations`".to_string(),
        ));
    };
    let present: Vec<&str> = SHAPES.iter().copied().filter(|k| root.contains_key(*k)).collect();
    match present.as_slice() {
        [shape] => {
            let value = root.remove(*shape).unwrap_or_default();
            if *shape == "transactions" {
                parse_transactions(value, limits)
            } else {
                parse_single(shape, value, limits)
            }
        }
        [] => Err(malformed(ROOT.to_string(), "expected one of `transactions`, `batch` or `operations`".to_string())),
        _ => Err(malformed(
            ROOT.to_string(),
            format!("give only one of `transactions`, `batch` or `operations` (found {})", present.join(", ")),
        )),
    }
}

fn parse_transactions(value: Value, limits: &Limits) -> Result<Vec<Transaction>, CrudError> {
    let items = match value {
        Value::Array(items) => items,
        other => return Err(malformed("transactions".to_string(), expected("an array", &other))),
    };
    if items.len() > limits.max_transactions {
        return Err(CrudError::TooLarge {
            message: format!(
                "{} transactions; at most {} are accepted per request",
                items.len(),
                limits.max_transactions
            ),
        });
    }
    let total: usize = items.iter().map(|t| t.get("crud").and_then(Value::as_array).map_or(0, Vec::len)).sum();
    check_entry_count(total, limits)?;

    let mut transactions = Vec::with_capacity(items.len());
    for (t, item) in items.into_iter().enumerate() {
        let path = format!("transactions[{t}]");
        let mut fields = match item {
            Value::Object(fields) => fields,
            other => return Err(malformed(path, expected("an object", &other))),
        };
        let transaction_id = match fields.get("transaction_id") {
            None | Some(Value::Null) => None,
            Some(id @ (Value::Number(_) | Value::String(_))) => Some(id.clone()),
            Some(other) => {
                return Err(malformed(format!("{path}.transaction_id"), expected("a number or a string", other)))
            }
        };
        let crud_path = format!("{path}.crud");
        let entries = match fields.remove("crud") {
            Some(Value::Array(list)) => parse_entries(&crud_path, list)?,
            Some(other) => return Err(malformed(crud_path, expected("an array", &other))),
            None => return Err(malformed(crud_path, "missing".to_string())),
        };
        transactions.push(Transaction { transaction_id, entries });
    }
    Ok(transactions)
}

fn parse_single(shape: &str, value: Value, limits: &Limits) -> Result<Vec<Transaction>, CrudError> {
    let list = match value {
        Value::Array(list) => list,
        other => return Err(malformed(shape.to_string(), expected("an array", &other))),
    };
    check_entry_count(list.len(), limits)?;
    let entries = parse_entries(shape, list)?;
    Ok(vec![Transaction { transaction_id: None, entries }])
}

fn check_entry_count(total: usize, limits: &Limits) -> Result<(), CrudError> {
    if total > limits.max_entries {
        return Err(CrudError::TooLarge {
            message: format!("{total} CRUD entries; at most {} are accepted per request", limits.max_entries),
        });
    }
    Ok(())
}

fn parse_entries(path: &str, list: Vec<Value>) -> Result<Vec<Entry>, CrudError> {
    list.into_iter().enumerate().map(|(i, item)| parse_entry(&format!("{path}[{i}]"), item)).collect()
}

fn parse_entry(path: &str, value: Value) -> Result<Entry, CrudError> {
    let mut fields = match value {
        Value::Object(fields) => fields,
        other => return Err(malformed(path.to_string(), expected("an object", &other))),
    };

    let op_path = || format!("{path}.op");
    let op = match fields.get("op") {
        None | Some(Value::Null) => return Err(malformed(op_path(), "missing".to_string())),
        Some(Value::String(text)) => Op::parse(text)
            .ok_or_else(|| malformed(op_path(), format!("unknown op {text:?}; expected PUT, PATCH or DELETE")))?,
        Some(other) => return Err(malformed(op_path(), expected("a string", other))),
    };

    let id_path = || format!("{path}.id");
    let id = match fields.get("id") {
        None | Some(Value::Null) => return Err(malformed(id_path(), "missing".to_string())),
        Some(Value::String(text)) if text.is_empty() => {
            return Err(malformed(id_path(), "must not be empty".to_string()))
        }
        Some(Value::String(text)) => text.clone(),
        Some(Value::Number(number)) => number.to_string(),
        Some(other) => return Err(malformed(id_path(), expected("a string or a number", other))),
    };

    let table = match aliased(&fields, path, &["table", "type"])? {
        None => return Err(malformed(format!("{path}.table"), "missing (as `table` or `type`)".to_string())),
        Some((_, Value::String(text))) if text.is_empty() => {
            return Err(malformed(format!("{path}.table"), "must not be empty".to_string()))
        }
        Some((_, Value::String(text))) => text.clone(),
        Some((name, other)) => return Err(malformed(format!("{path}.{name}"), expected("a string", other))),
    };

    let data_field = match aliased(&fields, path, &["data", "opData", "op_data"])? {
        None | Some((_, Value::Null)) => None,
        Some((name, Value::Object(_))) => Some(name),
        Some((name, other)) => return Err(malformed(format!("{path}.{name}"), expected("an object or null", other))),
    };
    let data = match (data_field, op) {
        (Some(name), Op::Put | Op::Patch) => match fields.remove(name) {
            Some(Value::Object(map)) => map,
            _ => Map::new(),
        },
        _ => Map::new(),
    };

    Ok(Entry { op, table, id, data })
}

/// The value of a field that may come under several names: `None` when absent, an error when
/// two names are present with different values.
fn aliased<'a>(
    fields: &'a Map<String, Value>,
    path: &str,
    names: &[&'static str],
) -> Result<Option<(&'static str, &'a Value)>, CrudError> {
    let mut found: Option<(&'static str, &'a Value)> = None;
    for name in names {
        if let Some(value) = fields.get(*name) {
            match found {
                Some((first, seen)) if seen != value => {
                    return Err(malformed(
                        format!("{path}.{name}"),
                        format!("`{first}` and `{name}` are both given with different values; send one"),
                    ))
                }
                Some(_) => {}
                None => found = Some((name, value)),
            }
        }
    }
    Ok(found)
}

fn malformed(path: String, message: String) -> CrudError {
    CrudError::Malformed { path, message }
}

fn expected(what: &str, found: &Value) -> String {
    let kind = match found {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    format!("expected {what}, found {kind}")
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
        Entry { op, table: table.to_string(), id: id.to_string(), data }
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
        assert_eq!(parsed[0].entries, vec![entry(Op::Put, "todos", "a", json!({"x": 1}))]);
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
            assert_eq!(parsed[0].entries[0].data, json!({"a": true}).as_object().cloned().unwrap_or_default());
        }
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
        assert_eq!(malformed_path(json!({"batch": [{"op": "PUT", "table": "t", "id": ""}]})), "batch[0].id");
        assert_eq!(malformed_path(json!({"batch": [{"op": "PUT", "table": "t", "id": true}]})), "batch[0].id");
        assert_eq!(malformed_path(json!({"batch": [{"op": "PUT", "table": "t", "id": {"a": 1}}]})), "batch[0].id");
    }

    #[test]
    fn bad_table_is_malformed_with_its_path() {
        assert_eq!(malformed_path(json!({"batch": [{"op": "PUT", "id": "1"}]})), "batch[0].table");
        assert_eq!(malformed_path(json!({"batch": [{"op": "PUT", "table": "", "id": "1"}]})), "batch[0].table");
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
