//! `devtool dead-letters`: list, show, replay and discard dead letters over PostgREST with the
//! service key (sql/dead_letter.sql). Requests are built and answers read here as plain values;
//! replay goes through `powersync_replay_dead_letter` (all or nothing, with the original
//! writer's rights), discard through `powersync_discard_dead_letter` (the reason is kept).

use chrono::{DateTime, SecondsFormat, Utc};
use powersync_supabase_worker::credentials::redact;
use serde_json::{json, Value};

use crate::rest::{self, Request, Response};

pub const TABLE: &str = "powersync_dead_letters";
const LIST_COLUMNS: &str = "id,user_id,code,message,transaction_id,client_id,op_index,created_at,replayed_at,replay_error,discarded_at,discard_reason";

/// Which dead letters: by state, owner, code, age; or exact ids.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Selection {
    pub ids: Vec<i64>,
    pub user: Option<String>,
    pub code: Option<String>,
    /// Only those recorded at least this many seconds ago.
    pub older_than_seconds: Option<u64>,
    pub state: State,
    /// Only those with a smaller id (recorded before it).
    pub before_id: Option<i64>,
    pub limit: u32,
}

impl Selection {
    /// How many rows one list request asks for: `limit`, but every id named one by one is
    /// fetched whatever the limit (one left out would be reported as unknown).
    pub fn page_size(&self) -> usize {
        (self.limit as usize).max(self.ids.len()).max(1)
    }

    /// Whether `fetched` rows may not be all that match: a full page.
    pub fn may_have_more(&self, fetched: usize) -> bool {
        fetched >= self.page_size()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum State {
    /// Neither replayed nor discarded (the default).
    #[default]
    Waiting,
    Replayed,
    Discarded,
    All,
}

impl State {
    pub fn parse(text: &str) -> Result<State, String> {
        match text {
            "waiting" => Ok(State::Waiting),
            "replayed" => Ok(State::Replayed),
            "discarded" => Ok(State::Discarded),
            "all" => Ok(State::All),
            _ => Err(format!("--state must be waiting, replayed, discarded or all, not '{text}'")),
        }
    }
}

/// `90s`, `45m`, `12h`, `7d` (or plain seconds) as seconds.
pub fn parse_age(text: &str) -> Result<u64, String> {
    let bad = || format!("'{text}' is not an age like 90s, 45m, 12h or 7d");
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let factor = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(bad()),
    };
    n.checked_mul(factor).ok_or_else(bad)
}

pub fn parse_ids(text: &str) -> Result<Vec<i64>, String> {
    text.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse::<i64>().map_err(|_| format!("'{s}' is not a dead letter id")))
        .collect()
}

fn encode(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// `GET /rest/v1/powersync_dead_letters?…` for `selection`, oldest first; `now` in seconds.
pub fn list_request(supabase_url: &str, service_key: &str, selection: &Selection, now: i64) -> Request {
    let mut query = vec![format!("select={LIST_COLUMNS}")];
    if !selection.ids.is_empty() {
        let ids: Vec<String> = selection.ids.iter().map(i64::to_string).collect();
        query.push(format!("id=in.({})", ids.join(",")));
    }
    match selection.state {
        State::Waiting => query.extend(["replayed_at=is.null".to_string(), "discarded_at=is.null".to_string()]),
        State::Replayed => query.push("replayed_at=not.is.null".to_string()),
        State::Discarded => query.push("discarded_at=not.is.null".to_string()),
        State::All => {}
    }
    if let Some(user) = &selection.user {
        query.push(format!("user_id=eq.{}", encode(user)));
    }
    if let Some(code) = &selection.code {
        query.push(format!("code=eq.{}", encode(code)));
    }
    if let Some(id) = selection.before_id {
        query.push(format!("id=lt.{id}"));
    }
    if let Some(age) = selection.older_than_seconds {
        // an age beyond now (a typo of many digits) is "before 1970", which matches nothing: never
        // a wrap into the future that would select every dead letter
        let seconds = now.saturating_sub(i64::try_from(age).unwrap_or(i64::MAX)).max(0);
        let before = DateTime::<Utc>::from_timestamp(seconds, 0).unwrap_or_default();
        query.push(format!("created_at=lt.{}", encode(&before.to_rfc3339_opts(SecondsFormat::Secs, true))));
    }
    query.push("order=id.asc".to_string());
    query.push(format!("limit={}", selection.page_size()));
    Request {
        method: "GET",
        url: format!("{}/rest/v1/{TABLE}?{}", supabase_url.trim_end_matches('/'), query.join("&")),
        headers: rest::service_headers(service_key),
        body: None,
    }
}

/// `GET` one dead letter with every column (entries, provenance, replay and discard records).
pub fn show_request(supabase_url: &str, service_key: &str, id: i64) -> Request {
    Request {
        method: "GET",
        url: format!("{}/rest/v1/{TABLE}?select=*&id=eq.{id}", supabase_url.trim_end_matches('/')),
        headers: rest::service_headers(service_key),
        body: None,
    }
}

/// Most rows a dry run reads to show what a replay would write over.
pub const MAX_CURRENT_ROWS: usize = 20;

/// For each of the first [`MAX_CURRENT_ROWS`] pending entries (see [`pending_entries`]), the
/// read of the row it writes as it stands now (`GET /rest/v1/<table>?id=eq.<id>`, service key):
/// a dry run shows it beside the entry, so the operator sees what the replay would go over (the
/// user's later writes, a row they deleted since). `None` for an entry without a table or id.
pub fn current_row_requests(supabase_url: &str, service_key: &str, pending: &[Value]) -> Vec<Option<Request>> {
    pending
        .iter()
        .take(MAX_CURRENT_ROWS)
        .map(|entry| {
            let (table, id) = (entry.get("table")?.as_str()?, entry.get("id")?.as_str()?);
            Some(Request {
                method: "GET",
                url: format!(
                    "{}/rest/v1/{}?select=*&id=eq.{}",
                    supabase_url.trim_end_matches('/'),
                    encode(table),
                    encode(id)
                ),
                headers: rest::service_headers(service_key),
                body: None,
            })
        })
        .collect()
}

/// The replay of dead letter `id`. `overwrite_later_writes` (`--overwrite-later-writes`; default
/// false): replay it even though transactions of the same user were applied after it was
/// recorded, whose rows its writes would go over (the function refuses it otherwise, 55000).
pub fn replay_request(supabase_url: &str, service_key: &str, id: i64, overwrite_later_writes: bool) -> Request {
    let body = if overwrite_later_writes {
        json!({"dead_letter_id": id, "overwrite_later_writes": true})
    } else {
        // as before the option, so that an older sql/dead_letter.sql still answers
        json!({"dead_letter_id": id})
    };
    rest::rpc(supabase_url, service_key, "powersync_replay_dead_letter", body)
}

pub fn discard_request(supabase_url: &str, service_key: &str, id: i64, reason: &str) -> Request {
    rest::rpc(
        supabase_url,
        service_key,
        "powersync_discard_dead_letter",
        json!({"dead_letter_id": id, "reason": reason}),
    )
}

/// The rows of a list/show answer, or what went wrong with the fix when it is a setup problem.
pub fn rows(response: &Response) -> Result<Vec<Value>, String> {
    if response.status == 200 {
        return match response.json() {
            Some(Value::Array(rows)) => Ok(rows),
            _ => Err(format!("unexpected answer: {}", response.describe())),
        };
    }
    Err(match response.error_code().as_deref() {
        Some("42P01") | Some("PGRST205") => {
            format!("{} (the dead-letter table is not installed: run sql/dead_letter.sql)", response.describe())
        }
        Some("42501") => {
            format!("{} (run sql/dead_letter.sql again: it grants service_role what it needs)", response.describe())
        }
        Some("42703") => format!(
            "{} (the dead-letter table is outdated: run sql/dead_letter.sql again, it upgrades in place)",
            response.describe()
        ),
        _ => response.describe(),
    })
}

/// A replay's or discard's outcome: the function's answer, or the refusal as an error object.
/// `ok` is false when nothing was done (a replay that failed is stored in `replay_error`).
pub fn outcome(id: i64, response: &Response) -> (bool, Value) {
    if response.status == 200 {
        if let Some(mut answer) = response.json() {
            let ok = answer
                .get("replayed")
                .and_then(Value::as_bool)
                .or(answer.get("discarded").and_then(Value::as_bool))
                .unwrap_or(false);
            // Replayed, but some entries changed no row: the letter is closed all the same (an
            // entry hidden from its writer must never be forced), so this is said out loud.
            let unchanged = answer.get("unchanged").and_then(Value::as_array).filter(|u| !u.is_empty()).cloned();
            if let (true, Some(unchanged)) = (ok, unchanged) {
                answer["warning"] = json!(format!(
                    "entries {} changed no row (gone, or hidden from the writer by row-level security): \
                     the dead letter is marked replayed; check those rows",
                    Value::Array(unchanged)
                ));
            }
            return (ok, answer);
        }
    }
    let error = match response.json() {
        Some(mut v) if v.get("message").is_some() => {
            // as `describe` does: an answer not PostgREST's may echo the request's key
            for field in ["message", "details", "hint"] {
                if let Some(text) = v.get(field).and_then(Value::as_str) {
                    v[field] = json!(redact(text));
                }
            }
            v
        }
        _ => json!({"message": response.describe()}),
    };
    let hint = match response.error_code().as_deref() {
        // no answer: the database may have done it all the same
        _ if response.status == 0 => Some(format!(
            "no answer: it may have been done all the same; see `devtool dead-letters show --id {id}` \
             (replayed_at, discarded_at) before trying again (a replayed or discarded one is refused)"
        )),
        Some("57014") => Some(
            "cancelled (statement_timeout): nothing was applied and nothing stored; run it again, with a longer \
             statement_timeout for service_role if it is large"
                .into(),
        ),
        Some("PGRST202") | Some("42883") => Some(
            "the function is missing or outdated: run sql/dead_letter.sql (and sql/atomic_upload.sql for replay)"
                .into(),
        ),
        Some("42501")
            if error
                .get("message")
                .and_then(Value::as_str)
                .is_some_and(|m| m.contains("permission denied for function")) =>
        {
            Some("run sql/dead_letter.sql again: it grants EXECUTE to service_role".into())
        }
        _ => None,
    };
    let mut answer = json!({"dead_letter_id": id, "error": error});
    if let Some(hint) = hint {
        answer["fix"] = json!(hint);
    }
    (false, answer)
}

/// What a replay would apply: the entries not yet `applied`, in order, without their state.
pub fn pending_entries(row: &Value) -> Vec<Value> {
    row.get("entries")
        .and_then(Value::as_array)
        .map(|entries| {
            entries
                .iter()
                .filter(|e| e.get("state").and_then(Value::as_str) != Some("applied"))
                .map(|e| {
                    let mut e = e.clone();
                    if let Some(o) = e.as_object_mut() {
                        o.remove("state");
                    }
                    e
                })
                .collect()
        })
        .unwrap_or_default()
}

fn state_of(row: &Value) -> &'static str {
    if !row["discarded_at"].is_null() {
        "discarded"
    } else if !row["replayed_at"].is_null() {
        "replayed"
    } else if !row["replay_error"].is_null() {
        "replay failed"
    } else {
        "waiting"
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// One line per dead letter: id, state, recorded at, owner, code, message (cut at 60 chars).
pub fn format_list(rows: &[Value]) -> String {
    let mut out = String::from("id\tstate\tcreated_at\tuser_id\tcode\tmessage\n");
    for row in rows {
        let message: String = text(&row["message"]).chars().take(60).collect();
        out.push_str(&format!(
            "{}\t{}\t{}\t{}\t{}\t{}\n",
            text(&row["id"]),
            state_of(row),
            text(&row["created_at"]),
            text(&row["user_id"]),
            text(&row["code"]),
            message.replace(['\n', '\t'], " ")
        ));
    }
    out.push_str(&format!("{} dead letter(s)", rows.len()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "https://p.supabase.co";

    #[test]
    fn list_by_default_asks_for_waiting_dead_letters_oldest_first() {
        let r = list_request(URL, "sb_secret_x", &Selection { limit: 50, ..Default::default() }, 0);
        assert_eq!(r.method, "GET");
        assert_eq!(
            r.url,
            format!("{URL}/rest/v1/powersync_dead_letters?select={LIST_COLUMNS}&replayed_at=is.null&discarded_at=is.null&order=id.asc&limit=50")
        );
        assert_eq!(r.headers, vec![("apikey".to_string(), "sb_secret_x".to_string())]);
    }

    #[test]
    fn a_full_page_may_have_more_and_a_shorter_one_has_not() {
        let selection = Selection { user: Some("u".into()), limit: 100, ..Default::default() };
        assert!(selection.may_have_more(100));
        assert!(!selection.may_have_more(99));
        let named = Selection { ids: (1..=150).collect(), limit: 100, ..Default::default() };
        assert!(!named.may_have_more(149), "the ids named are all fetched");
    }

    #[test]
    fn ids_named_one_by_one_are_all_fetched_whatever_the_limit() {
        let ids: Vec<i64> = (1..=150).collect();
        let r = list_request(URL, "k", &Selection { ids, limit: 100, ..Default::default() }, 0);
        assert!(r.url.ends_with("&order=id.asc&limit=150"), "{}", r.url);
    }

    #[test]
    fn list_filters_by_user_code_age_ids_and_state_with_values_encoded() {
        let selection = Selection {
            ids: vec![3, 5],
            user: Some("a b&c".into()),
            code: Some("23505".into()),
            older_than_seconds: Some(3600),
            state: State::All,
            before_id: Some(9),
            limit: 10,
        };
        let r = list_request(URL, "k", &selection, 1_700_003_600);
        assert_eq!(
            r.url,
            format!(
                "{URL}/rest/v1/powersync_dead_letters?select={LIST_COLUMNS}&id=in.(3,5)&user_id=eq.a%20b%26c&code=eq.23505\
                 &id=lt.9&created_at=lt.2023%2D11%2D14T22%3A13%3A20Z&order=id.asc&limit=10"
            )
        );
        let replayed = list_request(URL, "k", &Selection { state: State::Replayed, limit: 1, ..Default::default() }, 0);
        assert!(replayed.url.contains("&replayed_at=not.is.null&"));
        let discarded =
            list_request(URL, "k", &Selection { state: State::Discarded, limit: 1, ..Default::default() }, 0);
        assert!(discarded.url.contains("&discarded_at=not.is.null&"));
    }

    #[test]
    fn ages_ids_and_states_parse_or_say_what_is_wrong() {
        assert_eq!(parse_age("90s"), Ok(90));
        assert_eq!(parse_age("45m"), Ok(2700));
        assert_eq!(parse_age("12h"), Ok(43200));
        assert_eq!(parse_age("7d"), Ok(604800));
        assert_eq!(parse_age("120"), Ok(120));
        assert!(parse_age("7w").is_err());
        assert!(parse_age("d").is_err());
        assert_eq!(parse_ids("1, 2,3"), Ok(vec![1, 2, 3]));
        assert!(parse_ids("1,x").is_err());
        assert_eq!(State::parse("all"), Ok(State::All));
        assert!(State::parse("old").is_err());
    }

    #[test]
    fn an_age_beyond_any_date_selects_nothing_never_everything() {
        for age in [u64::MAX, u64::MAX - 31_536_000, i64::MAX as u64] {
            let selection = Selection { older_than_seconds: Some(age), ..Default::default() };
            let url = list_request(URL, "k", &selection, 1_800_000_000).url;
            let before = url.split("created_at=lt.").nth(1).and_then(|rest| rest.split('&').next()).expect("a date");
            assert!(before.starts_with("1970%2D01%2D01T00"), "{age}: {before}");
        }
    }

    #[test]
    fn a_cancelled_replay_says_nothing_was_applied() {
        let cancelled = Response {
            status: 500,
            body: r#"{"code":"57014","message":"canceling statement due to statement timeout"}"#.into(),
        };
        let (ok, answer) = outcome(7, &cancelled);
        assert!(!ok);
        assert!(answer["fix"].as_str().unwrap().contains("nothing was applied"), "{answer}");
    }

    #[test]
    fn a_dry_run_reads_the_rows_the_pending_entries_write_at_most_twenty() {
        let pending = vec![
            json!({"op": "PATCH", "table": "todos", "id": "a b/1", "data": {"x": 1}}),
            json!({"op": "DELETE", "id": "no-table"}),
        ];
        let requests = current_row_requests(URL, "k", &pending);
        let first = requests[0].as_ref().expect("a read");
        assert_eq!(
            (first.method, first.url.as_str()),
            ("GET", "https://p.supabase.co/rest/v1/todos?select=*&id=eq.a%20b%2F1")
        );
        assert_eq!(first.headers, rest::service_headers("k"));
        assert!(requests[1].is_none());
        let many: Vec<Value> = (0..30).map(|i| json!({"table": "t", "id": i.to_string()})).collect();
        assert_eq!(current_row_requests(URL, "k", &many).len(), MAX_CURRENT_ROWS);
    }

    #[test]
    fn show_replay_and_discard_requests_are_exact() {
        assert_eq!(show_request(URL, "k", 7).url, format!("{URL}/rest/v1/powersync_dead_letters?select=*&id=eq.7"));
        let replay = replay_request(URL, "k", 7, false);
        assert_eq!(
            (replay.method, replay.url.as_str()),
            ("POST", "https://p.supabase.co/rest/v1/rpc/powersync_replay_dead_letter")
        );
        assert_eq!(replay.body, Some(json!({"dead_letter_id": 7})));
        let over = replay_request(URL, "k", 7, true);
        assert_eq!(over.body, Some(json!({"dead_letter_id": 7, "overwrite_later_writes": true})));
        let discard = discard_request(URL, "k", 7, "duplicate of 6");
        assert_eq!(discard.url, format!("{URL}/rest/v1/rpc/powersync_discard_dead_letter"));
        assert_eq!(discard.body, Some(json!({"dead_letter_id": 7, "reason": "duplicate of 6"})));
    }

    #[test]
    fn outcome_tells_done_refused_and_missing_function_apart() {
        let done = Response { status: 200, body: r#"{"applied":2,"replayed":true,"dead_letter_id":7}"#.into() };
        assert_eq!(outcome(7, &done), (true, json!({"applied": 2, "replayed": true, "dead_letter_id": 7})));
        let failed =
            Response { status: 200, body: r#"{"applied":0,"replayed":false,"error":{"code":"23514"}}"#.into() };
        assert!(!outcome(7, &failed).0);
        let refused =
            Response { status: 400, body: r#"{"code":"55000","message":"dead letter 7 was already replayed"}"#.into() };
        let (ok, answer) = outcome(7, &refused);
        assert!(!ok);
        assert_eq!(
            answer,
            json!({"dead_letter_id": 7, "error": {"code": "55000", "message": "dead letter 7 was already replayed"}})
        );
        let missing =
            Response { status: 404, body: r#"{"code":"PGRST202","message":"Could not find the function"}"#.into() };
        assert!(outcome(7, &missing).1["fix"].as_str().unwrap().contains("sql/dead_letter.sql"));
        let lost = Response { status: 0, body: "timed out".into() };
        let (ok, answer) = outcome(7, &lost);
        assert!(!ok);
        assert!(answer["fix"]
            .as_str()
            .unwrap()
            .contains("it may have been done all the same; see `devtool dead-letters show --id 7`"));
        let discarded = Response { status: 200, body: r#"{"dead_letter_id":7,"discarded":true}"#.into() };
        assert!(outcome(7, &discarded).0);
    }

    #[test]
    fn a_refusal_never_repeats_a_key_an_upstream_echoed() {
        let key = "sb_secret_N7UND0UgjKTVK-Uodkm0Hg_xSvEMPvz";
        let echo = json!({"message": format!("apikey: {key}"), "details": format!("apikey={key}"), "hint": key});
        let (ok, answer) = outcome(7, &Response { status: 401, body: echo.to_string() });
        assert!(!ok);
        assert!(!answer.to_string().contains(key), "{answer}");
        assert_eq!(answer["error"]["message"], "apikey: [redacted]");
    }

    #[test]
    fn a_replay_that_left_entries_unchanged_says_so() {
        let partly = Response {
            status: 200,
            body: r#"{"applied":2,"unchanged":[1],"replayed":true,"dead_letter_id":7}"#.into(),
        };
        let (ok, answer) = outcome(7, &partly);
        assert!(ok);
        let warning = answer["warning"].as_str().unwrap_or_default();
        assert!(warning.contains("entries [1] changed no row"), "{answer}");
        let whole = Response { status: 200, body: r#"{"applied":2,"unchanged":[],"replayed":true}"#.into() };
        assert!(outcome(7, &whole).1.get("warning").is_none());
    }

    #[test]
    fn rows_explain_a_missing_or_outdated_table() {
        let ok = Response { status: 200, body: r#"[{"id":1}]"#.into() };
        assert_eq!(rows(&ok), Ok(vec![json!({"id": 1})]));
        let missing =
            Response { status: 404, body: r#"{"code":"PGRST205","message":"Could not find the table"}"#.into() };
        assert!(rows(&missing).unwrap_err().contains("run sql/dead_letter.sql"));
        let outdated =
            Response { status: 400, body: r#"{"code":"42703","message":"column discarded_at does not exist"}"#.into() };
        assert!(rows(&outdated).unwrap_err().contains("upgrades in place"));
    }

    #[test]
    fn pending_entries_are_those_not_applied_without_state_and_list_shows_state() {
        let row = json!({"id": 1, "entries": [
            {"op": "PUT", "table": "t", "id": "a", "state": "applied"},
            {"op": "PATCH", "table": "t", "id": "b", "data": {"x": 1}, "state": "failed"},
            {"op": "DELETE", "table": "t", "id": "c", "state": "not_attempted"}]});
        assert_eq!(
            pending_entries(&row),
            vec![
                json!({"op": "PATCH", "table": "t", "id": "b", "data": {"x": 1}}),
                json!({"op": "DELETE", "table": "t", "id": "c"})
            ]
        );
        let listed = format_list(&[
            json!({"id": 1, "created_at": "t0", "user_id": "u", "code": "23514", "message": "check\nviolated", "replayed_at": null, "discarded_at": null, "replay_error": null}),
            json!({"id": 2, "discarded_at": "t1", "replayed_at": null}),
            json!({"id": 3, "replayed_at": "t1", "discarded_at": null}),
            json!({"id": 4, "replay_error": {"code": "23514"}, "replayed_at": null, "discarded_at": null}),
        ]);
        let lines: Vec<&str> = listed.lines().collect();
        assert_eq!(lines[1], "1\twaiting\tt0\tu\t23514\tcheck violated");
        assert!(lines[2].starts_with("2\tdiscarded\t"));
        assert!(lines[3].starts_with("3\treplayed\t"));
        assert!(lines[4].starts_with("4\treplay failed\t"));
        assert_eq!(lines[5], "4 dead letter(s)");
    }
}
