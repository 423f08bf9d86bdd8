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

use serde_json::{Map, Value};

use super::crud::Entry;
use super::settings::{UploadSettings, WriteMode};

/// The data with the configured conversions applied:
/// - JSON columns: a string holding JSON text is sent as that JSON; text that does not parse is
///   sent unchanged, so Postgres reports the error against the right column;
/// - boolean columns: the numbers 0 and 1 become false and true; other values are unchanged.
pub fn converted(table: &str, data: &Map<String, Value>, settings: &UploadSettings) -> Map<String, Value> {
    let has_json = settings.json_columns.has_table(table);
    let has_boolean = settings.boolean_columns.has_table(table);
    if !has_json && !has_boolean {
        return data.clone();
    }
    data.iter()
        .map(|(column, value)| {
            let value = if has_json && settings.json_columns.contains(table, column) {
                json_value(value)
            } else if has_boolean && settings.boolean_columns.contains(table, column) {
                boolean_value(value)
            } else {
                value.clone()
            };
            (column.clone(), value)
        })
        .collect()
}

fn json_value(value: &Value) -> Value {
    match value {
        Value::String(text) => serde_json::from_str(text).unwrap_or_else(|_| value.clone()),
        other => other.clone(),
    }
}

fn boolean_value(value: &Value) -> Value {
    match value.as_f64() {
        Some(0.0) => Value::Bool(false),
        Some(1.0) => Value::Bool(true),
        _ => value.clone(),
    }
}

/// The row a PUT upserts: the converted data, `id` set from the entry (it wins over `data.id`),
/// and in service mode the owner column forced to `user_id`.
pub fn put_row(entry: &Entry, settings: &UploadSettings, user_id: &str) -> Map<String, Value> {
    let mut row = converted(&entry.table, &entry.data, settings);
    row.insert("id".to_string(), Value::String(entry.id.clone()));
    if let WriteMode::Service { owner_column, .. } = &settings.mode {
        row.insert(owner_column.clone(), Value::String(user_id.to_string()));
    }
    row
}

/// The columns a PATCH sets: the converted data, without `id` (a PATCH cannot rename a row) and
/// without the owner column in service mode. May be empty, in which case there is nothing to
/// send.
pub fn patch_data(entry: &Entry, settings: &UploadSettings) -> Map<String, Value> {
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
            data: data.as_object().cloned().unwrap_or_default(),
        }
    }

    fn map(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn json_text_in_json_columns_is_sent_as_json() {
        let data = map(json!({"tags": "[\"a\",1]", "title": "[1]"}));
        assert_eq!(converted("todos", &data, &settings()), map(json!({"tags": ["a", 1], "title": "[1]"})));
        let object = map(json!({"tags": "{\"k\":null}"}));
        assert_eq!(converted("todos", &object, &settings()), map(json!({"tags": {"k": null}})));
    }

    #[test]
    fn unparsable_json_text_is_sent_unchanged() {
        let data = map(json!({"tags": "[oops"}));
        assert_eq!(converted("todos", &data, &settings()), data);
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
        let data = map(json!({"done": 1.0}));
        assert_eq!(converted("todos", &data, &settings()), map(json!({"done": true})));
    }

    #[test]
    fn other_boolean_column_values_are_unchanged() {
        for value in [json!(2), json!("1"), json!(null), json!(true), json!(-1)] {
            let data = map(json!({ "done": value }));
            assert_eq!(converted("todos", &data, &settings()), data);
        }
    }

    #[test]
    fn conversions_apply_only_to_their_table() {
        let data = map(json!({"done": 1, "tags": "[1]"}));
        assert_eq!(converted("lists", &data, &settings()), data);
    }

    #[test]
    fn put_row_takes_id_from_the_entry() {
        let row = put_row(&entry(Op::Put, json!({"id": "other", "done": 0})), &settings(), "u1");
        assert_eq!(row, map(json!({"id": "r1", "done": false})));
    }

    #[test]
    fn service_put_row_forces_the_owner() {
        let row = put_row(&entry(Op::Put, json!({"owner": "someone-else", "title": "t"})), &service(), "u1");
        assert_eq!(row, map(json!({"id": "r1", "owner": "u1", "title": "t"})));
        let row = put_row(&entry(Op::Put, json!({})), &service(), "u1");
        assert_eq!(row, map(json!({"id": "r1", "owner": "u1"})));
    }

    #[test]
    fn service_patch_data_drops_the_owner() {
        let data = patch_data(&entry(Op::Patch, json!({"owner": "thief", "done": 1})), &service());
        assert_eq!(data, map(json!({"done": true})));
        assert!(patch_data(&entry(Op::Patch, json!({"owner": "thief"})), &service()).is_empty());
    }

    #[test]
    fn rls_patch_data_keeps_every_column_but_id() {
        let data = patch_data(&entry(Op::Patch, json!({"owner": "x", "done": 0})), &settings());
        assert_eq!(data, map(json!({"owner": "x", "done": false})));
    }

    #[test]
    fn patch_data_never_renames_the_primary_key() {
        for settings in [settings(), service()] {
            let data = patch_data(&entry(Op::Patch, json!({"id": "r2", "done": 1})), &settings);
            assert_eq!(data, map(json!({"done": true})));
            assert!(patch_data(&entry(Op::Patch, json!({"id": "r2"})), &settings).is_empty());
        }
    }
}
