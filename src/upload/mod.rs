//! Upload bridge: applies the writes a PowerSync client queued to Supabase through PostgREST.
//!
//! The app posts the client's CRUD transactions to the worker; once the worker has verified the
//! caller's Supabase session (not this module's job), [`apply`] writes them through
//! `<SUPABASE_URL>/rest/v1/<table>` in order and reports, per transaction, whether it was applied
//! (`success`), rejected for good (`fatal_error`: the client discards it), or must be sent again
//! (`retryable_error`, `not_attempted`). Nothing is silently lost: a write is only reported
//! applied after a 2xx answer, and only errors retrying cannot fix are fatal (see [`outcome`]).
//!
//! The path through it, all plain values so every step is tested natively:
//!
//! 1. [`crud::parse`] reads the body (three accepted shapes) into [`Transaction`]s;
//! 2. [`plan::plan_transaction`] turns each into PostgREST requests (merging consecutive entries
//!    where the result is identical, quoting ids, converting values, enforcing ownership in
//!    service mode, or one RPC call in atomic mode);
//! 3. [`apply`] sends them through a [`Transport`](crate::http::Transport) in order, classifies each answer with
//!    [`outcome::classify`], stops at the first retryable error, keeps within the subrequest
//!    budget and records fatal transactions in the dead-letter table (see [`delivery`]);
//! 4. the adapter answers `200` with [`UploadReport::body`] or, when
//!    [`UploadReport::needs_retry`], `503` with `Retry-After: <retry_after_seconds>` and the same
//!    body.
//!
//! Retries are safe because every entry is idempotent: PUT is an upsert by id, PATCH sets the
//! same columns again, DELETE of a deleted row matches nothing. Outside atomic mode a transaction
//! may be partly applied when it fails (each HTTP request is its own database transaction); a
//! retry re-applies the applied prefix harmlessly. A fatal failure after a partial application
//! leaves that prefix applied while the client discards the rest: use atomic mode (install
//! `sql/atomic_upload.sql`; with `UPLOAD_ATOMIC` unset it is used whenever it is installed, see
//! [`atomic_function`]) where transactions must be all-or-nothing. Atomic mode with the
//! client's `client_id` is also exactly once: a transaction re-sent after a lost answer is
//! answered `already_applied` without being applied again (REST requests cannot do that).

pub mod atomic_function;
pub mod crud;
pub mod dead_letter;
pub mod delivery;
pub mod filter;
pub mod id_set;
pub mod outcome;
pub mod plan;
pub mod row;
pub mod settings;

use std::fmt;

pub use atomic_function::{AtomicFunction, Route};
pub use crud::{parse, parse_upload, CrudError, Entry, Limits, Op, Transaction, Upload};
pub use delivery::{apply, apply_with};
pub use outcome::{FailedOperation, Status, StatusCounts, TransactionResult, UploadReport};
pub use settings::{from_lookup, AtomicMode, UploadSettings, WriteMode};

/// The verified user on whose behalf an upload is applied.
#[derive(Clone, PartialEq, Eq)]
pub struct Caller {
    /// The session's `sub`: owner id in service mode, `user_id` of dead-letter rows.
    pub user_id: String,
    /// The caller's Supabase access token, sent as `Authorization: Bearer` in `rls` mode.
    pub access_token: String,
    /// The PowerSync client id the upload carried (`client_id`, see `crud`): with a
    /// transaction's id, the key under which the atomic function applies it exactly once.
    pub client_id: Option<String>,
    /// The session's `role` claim (`authenticated`, or a custom role an access-token hook
    /// sets): in `rls` mode PostgREST runs the writes as it, so the GRANT a missing privilege
    /// calls for names it. `None`: `authenticated`.
    pub role: Option<String>,
}

impl fmt::Debug for Caller {
    /// The token is redacted so a caller can be logged.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Caller")
            .field("user_id", &self.user_id)
            .field("access_token", &"<redacted>")
            .field("client_id", &self.client_id)
            .field("role", &self.role)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{HttpResponse, Method, TransportError};
    use serde_json::{json, Value};
    use std::collections::BTreeSet;

    use crate::http::fake::{block_on, FakeTransport};

    type Answer = Result<HttpResponse, TransportError>;

    const RECORD_PATH: &str = "/rest/v1/rpc/powersync_record_dead_letter";

    /// PostgREST's answer to a counted write of one row (`Content-Range: */1`).
    fn ok(status: u16) -> Answer {
        counted(status, 1)
    }

    /// PostgREST's answer to a counted write that changed `rows` rows.
    fn counted(status: u16, rows: usize) -> Answer {
        Ok(HttpResponse {
            status,
            headers: vec![("Content-Range".to_string(), format!("*/{rows}"))],
            body: String::new(),
        })
    }

    /// A 2xx without anything PostgREST sends: no `Content-Range`, an empty body.
    fn bare(status: u16) -> Answer {
        Ok(HttpResponse { status, headers: vec![], body: String::new() })
    }

    fn ok_body(body: &str) -> Answer {
        Ok(HttpResponse { status: 200, headers: vec![], body: body.to_string() })
    }

    /// `powersync_record_dead_letter`'s answer: the recorded row's id.
    fn recorded() -> Answer {
        ok_body("1")
    }

    fn error(status: u16, code: &str, message: &str) -> Answer {
        Ok(HttpResponse {
            status,
            headers: vec![],
            body: json!({"code": code, "message": message, "details": null, "hint": null}).to_string(),
        })
    }

    fn settings() -> UploadSettings {
        UploadSettings::new("https://p.supabase.co", "anon")
    }

    fn caller() -> Caller {
        Caller { user_id: "user-1".to_string(), access_token: "token".to_string(), client_id: None, role: None }
    }

    fn entry(op: Op, id: &str, data: Value) -> Entry {
        Entry {
            op,
            table: "todos".to_string(),
            id: id.to_string(),
            data: data.as_object().cloned().unwrap_or_default().into(),
            previous: None,
            metadata: None,
        }
    }

    /// A transaction of one PUT, whose columns differ per transaction so nothing merges.
    fn tx(n: usize) -> Transaction {
        Transaction { transaction_id: Some(json!(n)), entries: vec![entry(Op::Put, &format!("r{n}"), json!({"n": n}))] }
    }

    fn statuses(report: &UploadReport) -> Vec<Status> {
        report.results.iter().map(|r| r.status).collect()
    }

    fn run(transactions: &[Transaction], settings: &UploadSettings, transport: &FakeTransport) -> UploadReport {
        block_on(apply(transactions, settings, &caller(), transport))
    }

    #[test]
    fn no_transaction_is_started_once_the_upload_has_run_its_time_budget() {
        // Each request takes 2 s: the third transaction would start at 4 s, past a 3 s budget.
        let mut s = settings();
        s.time_budget_ms = 3_000;
        let transport = FakeTransport::default().taking(2_000);
        let report = run(&[tx(1), tx(2), tx(3), tx(4)], &s, &transport);
        assert_eq!(
            statuses(&report),
            vec![Status::Success, Status::Success, Status::NotAttempted, Status::NotAttempted]
        );
        assert_eq!(transport.sent().len(), 2);
        assert!(report.needs_retry());
        assert_eq!(report.log_summary()["time_budget_spent"], json!(true));
        // The first transaction is always started, whatever its requests take.
        s.time_budget_ms = 1_000;
        let transport = FakeTransport::default().taking(5_000);
        let report = run(&[tx(1), tx(2)], &s, &transport);
        assert_eq!(statuses(&report), vec![Status::Success, Status::NotAttempted]);
        // Within the budget nothing changes.
        let report = run(&[tx(1), tx(2)], &settings(), &FakeTransport::default().taking(2_000));
        assert_eq!(statuses(&report), vec![Status::Success, Status::Success]);
        assert_eq!(report.log_summary()["time_budget_spent"], json!(false));
    }

    #[test]
    fn a_refused_true_or_false_the_worker_converted_for_upload_boolean_columns_waits_for_the_operator() {
        // UPLOAD_BOOLEAN_COLUMNS names todos.priority, an integer column: the client's valid 1 is
        // sent as true, which the database refuses (22P02)
        let mut s = settings();
        s.boolean_columns.insert("todos", "priority");
        let refused = || error(400, "22P02", "invalid input syntax for type integer: \"true\"");
        let put =
            |data: Value| Transaction { transaction_id: Some(json!(1)), entries: vec![entry(Op::Put, "r1", data)] };
        let report = run(&[put(json!({"priority": 1}))], &s, &FakeTransport::scripted(vec![refused()]));
        let result = &report.results[0];
        assert_eq!(result.status, Status::RetryableError);
        assert_eq!(result.retry_after_ms, Some(60_000));
        let message = &result.failed_operation.as_ref().expect("failure").message;
        assert!(message.contains("UPLOAD_BOOLEAN_COLUMNS names todos.priority"), "{message}");
        // the client's own "true" in a column the setting does not convert stays the data's
        let report = run(&[put(json!({"n": "true"}))], &s, &FakeTransport::scripted(vec![refused()]));
        assert_eq!(report.results[0].status, Status::FatalError);
        // and so does the refusal of another value
        let other = error(400, "22P02", "invalid input syntax for type integer: \"abc\"");
        let report = run(&[put(json!({"priority": 1, "n": "abc"}))], &s, &FakeTransport::scripted(vec![other]));
        assert_eq!(report.results[0].status, Status::FatalError);
    }

    #[test]
    fn every_transaction_applied_is_success() {
        let transport = FakeTransport::default();
        let report = run(&[tx(1), tx(2)], &settings(), &transport);
        assert_eq!(statuses(&report), vec![Status::Success, Status::Success]);
        assert_eq!(report.subrequests, 2);
        assert_eq!(transport.sent().len(), 2);
        assert!(!report.needs_retry());
        assert_eq!(report.body()["applied"], json!(2));
    }

    #[test]
    fn no_transactions_is_an_empty_success() {
        let transport = FakeTransport::default();
        let report = run(&[], &settings(), &transport);
        assert!(report.results.is_empty());
        assert_eq!(report.body(), json!({"results": [], "applied": 0, "subrequests": 0}));
    }

    #[test]
    fn transaction_without_entries_succeeds_without_requests() {
        let transport = FakeTransport::default();
        let report = run(&[Transaction { transaction_id: None, entries: vec![] }], &settings(), &transport);
        assert_eq!(statuses(&report), vec![Status::Success]);
        assert!(transport.sent().is_empty());
    }

    #[test]
    fn fatal_error_is_reported_and_processing_continues() {
        let transport = FakeTransport::scripted(vec![ok(201), error(409, "23505", "duplicate key"), ok(201)]);
        let report = run(&[tx(1), tx(2), tx(3)], &settings(), &transport);
        assert_eq!(statuses(&report), vec![Status::Success, Status::FatalError, Status::Success]);
        let failure = report.results[1].failed_operation.clone().expect("failure");
        assert_eq!((failure.index, failure.code.as_str(), failure.http_status), (Some(0), "23505", Some(409)));
        assert!(!report.needs_retry());
        assert_eq!(transport.sent().len(), 3);
    }

    #[test]
    fn first_failing_request_ends_the_transaction_with_its_entry_index() {
        let transaction = Transaction {
            transaction_id: Some(json!("t")),
            entries: vec![
                entry(Op::Put, "a", json!({"x": 1})),
                entry(Op::Delete, "b", Value::Null),
                entry(Op::Patch, "c", json!({"y": 1})),
            ],
        };
        let transport = FakeTransport::scripted(vec![
            ok(201),
            error(403, "42501", "new row violates row-level security policy for table \"todos\""),
        ]);
        let report = run(&[transaction], &settings(), &transport);
        assert_eq!(statuses(&report), vec![Status::FatalError]);
        assert_eq!(report.results[0].failed_operation.as_ref().and_then(|f| f.index), Some(1));
        assert_eq!(transport.sent().len(), 2, "the PATCH after the failure is not sent");
    }

    #[test]
    fn refused_merged_upsert_is_sent_again_in_halves_to_name_the_entry_at_fault() {
        let transaction = Transaction {
            transaction_id: None,
            entries: vec![
                entry(Op::Delete, "a", Value::Null),
                entry(Op::Put, "b", json!({"x": 1})),
                entry(Op::Put, "c", json!({"x": 2})),
                entry(Op::Put, "d", json!({"x": 3})),
            ],
        };
        // the upsert of b, c, d is refused for c's row: b alone applies, then c, d; c, refused
        let transport = FakeTransport::scripted(vec![
            ok(204),
            error(400, "23514", "check"),
            ok(201),
            error(400, "23514", "check"),
            error(400, "23514", "check"),
        ]);
        let report = run(&[transaction], &settings(), &transport);
        assert_eq!(statuses(&report), vec![Status::FatalError]);
        let failure = report.results[0].failed_operation.clone().expect("failure");
        assert_eq!((failure.index, failure.code.as_str()), (Some(2), "23514"));
        let sent: Vec<Vec<String>> = transport.sent().iter().skip(1).map(rows_sent).collect();
        assert_eq!(sent, vec![vec!["b", "c", "d"], vec!["b"], vec!["c", "d"], vec!["c"]]);
    }

    #[test]
    fn refused_merged_delete_is_sent_again_in_halves_to_name_the_entry_at_fault() {
        let transaction = Transaction {
            transaction_id: None,
            entries: ["a", "b", "c", "d"].iter().map(|id| entry(Op::Delete, id, Value::Null)).collect(),
        };
        // d is still referenced: a, b apply; c, d refused; c applies; d refused
        let transport = FakeTransport::scripted(vec![
            error(409, "23503", "fk"),
            counted(204, 2),
            error(409, "23503", "fk"),
            counted(204, 0),
            error(409, "23503", "fk"),
        ]);
        let report = run(&[transaction], &settings(), &transport);
        let failure = report.results[0].failed_operation.clone().expect("failure");
        assert_eq!((report.results[0].status, failure.index), (Status::FatalError, Some(3)));
        let urls: Vec<String> =
            transport.sent().iter().map(|r| r.url.rsplit('?').next().unwrap_or("").to_string()).collect();
        assert_eq!(
            urls,
            vec![
                "id=in.%28%22a%22%2C%22b%22%2C%22c%22%2C%22d%22%29",
                "id=in.%28%22a%22%2C%22b%22%29",
                "id=in.%28%22c%22%2C%22d%22%29",
                "id=eq.c",
                "id=eq.d"
            ]
        );
        assert!(transport.sent().iter().all(|r| r.method == crate::http::Method::Delete));
    }

    #[test]
    fn refused_merged_request_without_room_for_halves_is_reported_at_its_first_entry() {
        let mut s = settings();
        s.subrequest_budget = 2;
        let transport = FakeTransport::scripted(vec![error(400, "23514", "check")]);
        let report = run(&[puts(&["a", "b", "c"])], &s, &transport);
        let failure = report.results[0].failed_operation.clone().expect("failure");
        assert_eq!((report.results[0].status, failure.index), (Status::FatalError, Some(0)));
        assert!(
            failure.message.starts_with("check; the entry at fault is one of entries 0..=2"),
            "{}",
            failure.message
        );
        assert_eq!(transport.sent().len(), 1);
    }

    fn rows_sent(request: &crate::http::HttpRequest) -> Vec<String> {
        let rows: Value = serde_json::from_str(request.body.as_deref().unwrap_or("null")).unwrap_or(Value::Null);
        rows.as_array()
            .map_or_else(Vec::new, |rows| rows.iter().map(|r| r["id"].as_str().unwrap_or("?").to_string()).collect())
    }

    fn puts(ids: &[&str]) -> Transaction {
        Transaction {
            transaction_id: Some(json!("puts")),
            entries: ids.iter().map(|id| entry(Op::Put, id, json!({"x": 1}))).collect(),
        }
    }

    #[test]
    fn upsert_refused_with_21000_is_sent_again_in_halves_until_it_applies() {
        // "e\u{301}" and "\u{e9}" are one row under a non-deterministic collation: the planner
        // cannot know, the database says 21000
        let transport = FakeTransport::scripted(vec![
            error(500, "21000", "ON CONFLICT DO UPDATE command cannot affect row a second time"),
            ok(201),
            error(500, "21000", "ON CONFLICT DO UPDATE command cannot affect row a second time"),
            ok(201),
            ok(201),
        ]);
        let (decomposed, composed) = ("e\u{301}", "\u{e9}");
        let report = run(&[puts(&["a", decomposed, composed])], &settings(), &transport);
        assert_eq!(statuses(&report), vec![Status::Success]);
        let sent: Vec<Vec<String>> = transport.sent().iter().map(rows_sent).collect();
        assert_eq!(
            sent,
            vec![
                vec!["a", decomposed, composed],
                vec!["a"],
                vec![decomposed, composed],
                vec![decomposed],
                vec![composed]
            ]
        );
        assert!(transport.sent().iter().all(|r| r.url.ends_with("/rest/v1/todos?on_conflict=id")));
        assert_eq!(report.subrequests, 5);
    }

    #[test]
    fn halves_of_a_split_upsert_carry_each_rows_values_as_sent() {
        let body = r#"{"batch": [
            {"op": "PUT", "table": "todos", "id": "a", "data": {"n": 123456789012345678901234567890, "f": 0.10}},
            {"op": "PUT", "table": "todos", "id": "b", "data": {"n": 1e400, "f": 2}}]}"#;
        let transactions = crate::upload::parse(body.as_bytes(), &crate::upload::Limits::default()).expect("valid");
        let transport = FakeTransport::scripted(vec![
            error(500, "21000", "ON CONFLICT DO UPDATE command cannot affect row a second time"),
            ok(201),
            ok(201),
        ]);
        let report = run(&transactions, &settings(), &transport);
        assert_eq!(statuses(&report), vec![Status::Success]);
        let bodies: Vec<String> = transport.sent().into_iter().map(|r| r.body.unwrap_or_default()).collect();
        assert!(bodies[1].contains("123456789012345678901234567890") && bodies[1].contains("0.10"), "{}", bodies[1]);
        assert!(bodies[2].contains("1e400"), "{}", bodies[2]);
    }

    #[test]
    fn failure_of_a_split_upsert_is_reported_at_its_half() {
        let transport = FakeTransport::scripted(vec![
            error(500, "21000", "cannot affect row a second time"),
            ok(201),
            error(409, "23505", "duplicate key"),
            ok(201),
            error(409, "23505", "duplicate key"),
        ]);
        let report = run(&[puts(&["a", "b", "c", "d"])], &settings(), &transport);
        let failure = report.results[0].failed_operation.clone().expect("failure");
        assert_eq!(
            (report.results[0].status, failure.index, failure.code.as_str()),
            (Status::FatalError, Some(3), "23505")
        );
    }

    #[test]
    fn split_upsert_that_does_not_fit_the_budget_is_retryable() {
        let mut s = settings();
        s.subrequest_budget = 2;
        let transport = FakeTransport::scripted(vec![error(500, "21000", "cannot affect row a second time")]);
        let report = run(&[puts(&["a", "b"])], &s, &transport);
        assert_eq!(statuses(&report), vec![Status::RetryableError]);
        let failure = report.results[0].failed_operation.clone().expect("failure");
        assert_eq!(failure.code, "21000");
        assert!(failure.message.contains("UPLOAD_SUBREQUEST_BUDGET"), "{}", failure.message);
        assert_eq!(report.subrequests, 1);
    }

    #[test]
    fn single_row_21000_is_fatal() {
        let transport = FakeTransport::scripted(vec![error(500, "21000", "more than one row returned by a subquery")]);
        let report = run(&[puts(&["a"])], &settings(), &transport);
        assert_eq!(statuses(&report), vec![Status::FatalError]);
        assert_eq!(transport.sent().len(), 1);
    }

    #[test]
    fn retryable_error_stops_and_later_transactions_are_not_attempted() {
        let transport = FakeTransport::scripted(vec![ok(201), error(503, "08006", "connection failure")]);
        let report = run(&[tx(1), tx(2), tx(3), tx(4)], &settings(), &transport);
        assert_eq!(
            statuses(&report),
            vec![Status::Success, Status::RetryableError, Status::NotAttempted, Status::NotAttempted]
        );
        assert_eq!(report.results[1].retry_after_ms, Some(5000));
        assert_eq!(transport.sent().len(), 2);
        assert!(report.needs_retry());
        assert_eq!(report.retry_after_seconds, 5);
        assert_eq!(report.results[3].transaction_id, Some(json!(4)));
    }

    fn lost() -> Answer {
        Err(TransportError::no_answer("Network connection lost."))
    }

    fn failure_code(report: &UploadReport, n: usize) -> Option<&str> {
        report.results[n].failed_operation.as_ref().map(|f| f.code.as_str())
    }

    #[test]
    fn request_whose_connection_was_lost_is_sent_again_at_once_and_succeeds() {
        let transport = FakeTransport::scripted(vec![lost(), ok(201)]);
        let report = run(&[tx(1), tx(2)], &settings(), &transport);
        assert_eq!(statuses(&report), vec![Status::Success, Status::Success]);
        let sent = transport.sent();
        assert_eq!(sent.len(), 3);
        assert_eq!(sent[0], sent[1], "the same request, again");
        assert_ne!(sent[1], sent[2]);
        assert_eq!((report.subrequests, report.resent), (3, 1));
        assert!(!report.needs_retry());
    }

    #[test]
    fn second_lost_connection_makes_the_transaction_retryable() {
        let transport = FakeTransport::scripted(vec![lost(), lost()]);
        let report = run(&[tx(1), tx(2)], &settings(), &transport);
        assert_eq!(statuses(&report), vec![Status::RetryableError, Status::NotAttempted]);
        assert_eq!(failure_code(&report, 0), Some("network_error"));
        let message = &report.results[0].failed_operation.as_ref().unwrap().message;
        assert!(message.contains("sent again at once"), "{message}");
        assert_eq!(transport.sent().len(), 2, "re-sent once, never twice");
        assert_eq!((report.subrequests, report.resent), (2, 1));
    }

    #[test]
    fn lost_connection_in_the_middle_of_a_transaction_resends_only_that_request() {
        // three PATCHes with different data: three requests
        let transaction = Transaction {
            transaction_id: Some(json!(7)),
            entries: (0..3).map(|i| entry(Op::Patch, &format!("r{i}"), json!({"n": i}))).collect(),
        };
        let transport = FakeTransport::scripted(vec![ok(204), lost(), ok(204), ok(204)]);
        let report = run(&[transaction], &settings(), &transport);
        assert_eq!(statuses(&report), vec![Status::Success]);
        let sent = transport.sent();
        assert_eq!(sent.len(), 4);
        assert_eq!(sent[1], sent[2]);
        let urls: BTreeSet<&str> = sent.iter().map(|r| r.url.as_str()).collect();
        assert_eq!(urls.len(), 3, "each entry's request, the lost one twice");
        assert_eq!((report.subrequests, report.resent), (4, 1));
    }

    #[test]
    fn timeout_and_cut_off_answer_are_not_sent_again_at_once() {
        for (failure, code) in [
            (TransportError::timed_out("no answer within 3000 ms"), "timeout"),
            (TransportError::answer_cut("reading body: reset"), "network_error"),
            (TransportError::not_sent("bad header"), "network_error"),
        ] {
            let transport = FakeTransport::scripted(vec![Err(failure)]);
            let report = run(&[tx(1), tx(2)], &settings(), &transport);
            assert_eq!(statuses(&report), vec![Status::RetryableError, Status::NotAttempted]);
            assert_eq!(failure_code(&report, 0), Some(code));
            assert_eq!((transport.sent().len(), report.subrequests, report.resent), (1, 1, 0));
        }
    }

    #[test]
    fn resent_request_counts_against_the_budget() {
        let mut s = settings();
        s.subrequest_budget = 3;
        let transport = FakeTransport::scripted(vec![ok(201), lost(), ok(201)]);
        let report = run(&[tx(1), tx(2), tx(3)], &s, &transport);
        // tx 2 used two requests, so tx 3 no longer fits: the next upload sends it
        assert_eq!(statuses(&report), vec![Status::Success, Status::Success, Status::NotAttempted]);
        assert_eq!((transport.sent().len(), report.subrequests, report.resent), (3, 3, 1));
    }

    #[test]
    fn no_resend_without_room_for_it_and_the_rest_of_the_transaction() {
        let mut s = settings();
        s.subrequest_budget = 2;
        let transport = FakeTransport::scripted(vec![ok(201), lost()]);
        let report = run(&[tx(1), tx(2)], &s, &transport);
        assert_eq!(statuses(&report), vec![Status::Success, Status::RetryableError]);
        assert_eq!((transport.sent().len(), report.subrequests, report.resent), (2, 2, 0));

        // two requests planned in a budget of 3: the first may not take the second's place
        let transaction = Transaction {
            transaction_id: Some(json!(1)),
            entries: (0..2).map(|i| entry(Op::Patch, &format!("r{i}"), json!({"n": i}))).collect(),
        };
        s.subrequest_budget = 3;
        let transport = FakeTransport::scripted(vec![lost(), ok(204)]);
        let report = run(std::slice::from_ref(&transaction), &s, &transport);
        assert_eq!((report.subrequests, report.resent), (3, 1), "1 + resend + 1 fits in 3");
        assert_eq!(statuses(&report), vec![Status::Success]);
        s.subrequest_budget = 2;
        let transport = FakeTransport::scripted(vec![lost()]);
        let report = run(&[transaction], &s, &transport);
        assert_eq!(statuses(&report), vec![Status::RetryableError]);
        assert_eq!((transport.sent().len(), report.resent), (1, 0));
    }

    #[test]
    fn resend_never_takes_the_dead_letter_reserve() {
        let mut s = settings();
        s.dead_letter_table = Some("dead".to_string());
        s.subrequest_budget = 2; // one request + the reserved dead-letter insert
        let transport = FakeTransport::scripted(vec![lost()]);
        let report = run(&[tx(1)], &s, &transport);
        assert_eq!(statuses(&report), vec![Status::RetryableError]);
        assert_eq!((transport.sent().len(), report.resent), (1, 0));
        s.subrequest_budget = 3;
        let transport = FakeTransport::scripted(vec![lost(), error(400, "23514", "check"), recorded()]);
        let report = run(&[tx(1)], &s, &transport);
        assert_eq!(statuses(&report), vec![Status::FatalError]);
        assert_eq!((report.subrequests, report.resent, report.dead_letters), (3, 1, 1));
    }

    #[test]
    fn dead_letter_insert_whose_connection_was_lost_is_sent_again() {
        let mut s = settings();
        s.dead_letter_table = Some("dead".to_string());
        let transport = FakeTransport::scripted(vec![error(400, "23514", "check"), lost(), recorded()]);
        let report = run(&[tx(1)], &s, &transport);
        assert_eq!(statuses(&report), vec![Status::FatalError]);
        let sent = transport.sent();
        assert_eq!(sent.len(), 3);
        assert_eq!(sent[1], sent[2]);
        assert!(sent[1].url.ends_with(RECORD_PATH), "{}", sent[1].url);
        assert_eq!((report.dead_letters, report.dead_letter_failures, report.resent), (1, 0, 1));
    }

    #[test]
    fn atomic_call_whose_connection_was_lost_is_sent_again() {
        let mut s = settings();
        s.atomic = AtomicMode::Always;
        let transport = FakeTransport::scripted(vec![lost(), ok_body(r#"{"applied":2}"#)]);
        let report = run(&[puts(&["a", "b"])], &s, &transport);
        assert_eq!(statuses(&report), vec![Status::Success]);
        let sent = transport.sent();
        assert_eq!(sent.len(), 2);
        assert_eq!(sent[0], sent[1]);
        assert!(sent[0].url.contains("/rpc/"), "{}", sent[0].url);
    }

    #[test]
    fn longer_upstream_retry_after_is_passed_on() {
        let transport = FakeTransport::scripted(vec![Ok(HttpResponse {
            status: 429,
            headers: vec![("Retry-After".to_string(), "30".to_string())],
            body: String::new(),
        })]);
        let report = run(&[tx(1)], &settings(), &transport);
        assert_eq!(report.results[0].retry_after_ms, Some(30_000));
        assert_eq!(report.retry_after_seconds, 30);
    }

    #[test]
    fn budget_exhaustion_leaves_the_rest_not_attempted() {
        let mut s = settings();
        s.subrequest_budget = 45;
        let transactions: Vec<Transaction> = (0..100).map(tx).collect();
        let transport = FakeTransport::default();
        let report = run(&transactions, &s, &transport);
        let counts = report.counts();
        assert_eq!((counts.success, counts.not_attempted), (45, 55));
        assert_eq!(report.subrequests, 45);
        assert_eq!(transport.sent().len(), 45);
        assert_eq!(report.results[45].status, Status::NotAttempted);
        assert!(report.needs_retry());
    }

    #[test]
    fn budget_reserves_one_dead_letter_insert_per_transaction() {
        let mut s = settings();
        s.subrequest_budget = 10;
        s.dead_letter_table = Some("dead".to_string());
        let transactions: Vec<Transaction> = (0..20).map(tx).collect();
        let transport = FakeTransport::default();
        let report = run(&transactions, &s, &transport);
        assert_eq!(report.counts().success, 9, "the 10th needs 1 + 1 reserved, only 1 left");
        assert!(report.subrequests <= 10);
    }

    #[test]
    fn fatal_transactions_with_dead_letters_stay_within_budget() {
        let mut s = settings();
        s.subrequest_budget = 5;
        s.dead_letter_table = Some("dead".to_string());
        let answers =
            (0..10).map(|n| if n % 2 == 0 { error(400, "23502", "null value") } else { recorded() }).collect();
        let transport = FakeTransport::scripted(answers);
        let report = run(&(0..5).map(tx).collect::<Vec<_>>(), &s, &transport);
        assert_eq!(
            statuses(&report),
            vec![
                Status::FatalError,
                Status::FatalError,
                Status::NotAttempted,
                Status::NotAttempted,
                Status::NotAttempted
            ]
        );
        assert_eq!(report.subrequests, 4);
    }

    fn big(n: usize) -> Transaction {
        Transaction {
            transaction_id: Some(json!("big")),
            entries: (0..n).map(|i| entry(Op::Patch, &format!("r{i}"), json!({ "n": i }))).collect(),
        }
    }

    #[test]
    fn transaction_larger_than_the_whole_budget_goes_through_the_atomic_function() {
        let mut s = settings();
        s.subrequest_budget = 3;
        let transport = FakeTransport::scripted(vec![ok_body(r#"{"applied":4}"#), ok(201)]);
        let report = run(&[big(4), tx(2)], &s, &transport);
        assert_eq!(statuses(&report), vec![Status::Success, Status::Success]);
        let sent = transport.sent();
        assert_eq!(sent[0].url, "https://p.supabase.co/rest/v1/rpc/powersync_apply_transaction");
        let call: Value = serde_json::from_str(sent[0].body.as_deref().unwrap_or("")).unwrap_or(Value::Null);
        assert_eq!(call["ops"].as_array().map(Vec::len), Some(4));
        assert_eq!(report.subrequests, 2);
    }

    #[test]
    fn too_big_transaction_failing_in_the_atomic_function_is_located_by_its_hint() {
        let mut s = settings();
        s.subrequest_budget = 3;
        let transport = FakeTransport::scripted(vec![Ok(HttpResponse {
            status: 400,
            headers: vec![],
            body: json!({"code": "22P02", "message": "bad", "hint": "powersync op 2 (PATCH todos/r2)"}).to_string(),
        })]);
        let report = run(&[big(4)], &s, &transport);
        let failure = report.results[0].failed_operation.clone().expect("failure");
        assert_eq!(
            (report.results[0].status, failure.index, failure.code.as_str()),
            (Status::FatalError, Some(2), "22P02")
        );
    }

    #[test]
    fn an_id_holding_the_hints_marker_cannot_point_the_failure_at_another_entry() {
        let mut s = settings();
        s.atomic = AtomicMode::Always;
        let spoof = "x) powersync op 0 (PATCH todos/y";
        let transaction = Transaction {
            transaction_id: Some(json!(1)),
            entries: vec![entry(Op::Patch, "y", json!({"n": 1})), entry(Op::Patch, spoof, json!({"n": 2}))],
        };
        let hint = format!("powersync op 1 (PATCH todos/{spoof})");
        let transport = FakeTransport::scripted(vec![Ok(HttpResponse {
            status: 400,
            headers: vec![],
            body: json!({"code": "23514", "message": "check", "hint": hint}).to_string(),
        })]);
        let report = run(&[transaction], &s, &transport);
        let failure = report.results[0].failed_operation.clone().expect("failure");
        assert_eq!((report.results[0].status, failure.index), (Status::FatalError, Some(1)));
    }

    #[test]
    fn too_big_transaction_without_the_atomic_function_waits_for_the_operator_naming_atomic_mode() {
        // Installing the function is the operator's to do (as a missing GRANT): never discarded.
        let mut s = settings();
        s.subrequest_budget = 4;
        s.dead_letter_table = Some("dead".to_string());
        let transport = FakeTransport::scripted(vec![error(404, "PGRST202", "Could not find the function")]);
        let report = run(&[big(4), tx(2)], &s, &transport);
        assert_eq!(statuses(&report), vec![Status::RetryableError, Status::NotAttempted]);
        let failure = report.results[0].failed_operation.clone().expect("failure");
        assert_eq!((failure.index, failure.code.as_str()), (None, "too_many_requests_for_budget"));
        assert!(failure.message.contains("atomic mode"), "{}", failure.message);
        assert!(failure.message.contains("sql/atomic_upload.sql"), "{}", failure.message);
        assert!(
            report.retry_after_seconds >= outcome::SCHEMA_DRIFT_RETRY_AFTER_SECONDS,
            "{}",
            report.retry_after_seconds
        );
        assert_eq!(report.dead_letters, 0);
        assert!(transport.sent().iter().all(|r| !r.url.ends_with(RECORD_PATH)), "nothing dead-lettered");
    }

    #[test]
    fn too_big_transaction_whose_atomic_call_gets_a_bare_404_stays_queued_not_dead_lettered() {
        // A wrong SUPABASE_URL (a gateway's 404 page), not PostgREST saying the function is missing.
        let mut s = settings();
        s.subrequest_budget = 4;
        s.dead_letter_table = Some("dead".to_string());
        let html = Ok(HttpResponse { status: 404, headers: vec![], body: "<html>Not Found</html>".to_string() });
        let transport = FakeTransport::scripted(vec![html]);
        let report = run(&[big(4), tx(2)], &s, &transport);
        assert_eq!(statuses(&report)[0], Status::RetryableError);
        let failure = report.results[0].failed_operation.clone().expect("failure");
        assert_eq!(failure.code, "http_404");
        assert_eq!(report.dead_letters, 0);
        assert!(transport.sent().iter().all(|r| !r.url.ends_with(RECORD_PATH)), "nothing dead-lettered");
    }

    #[test]
    fn too_big_transaction_waits_for_a_fresh_budget_before_trying_the_atomic_function() {
        let mut s = settings();
        s.subrequest_budget = 3;
        s.dead_letter_table = Some("dead".to_string());
        let transport = FakeTransport::default();
        let report = run(&[tx(1), tx(2), big(4)], &s, &transport);
        assert_eq!(statuses(&report), vec![Status::Success, Status::Success, Status::NotAttempted]);
        assert_eq!(transport.sent().len(), 2, "the atomic call waits for the next upload");
    }

    #[test]
    fn a_transaction_no_budget_can_hold_waits_for_the_operator_without_a_dead_letter() {
        // Below the minimum `from_lookup` enforces (1 write + 1 dead letter): raising the budget
        // is the operator's to do, so the transaction waits, as its message says.
        let mut s = settings();
        s.subrequest_budget = 1;
        s.dead_letter_table = Some("dead".to_string());
        let transport = FakeTransport::default();
        let report = run(&[tx(1), tx(2)], &s, &transport);
        assert_eq!(statuses(&report), vec![Status::RetryableError, Status::NotAttempted]);
        let failure = report.results[0].failed_operation.clone().expect("failure");
        assert_eq!(failure.code, "too_many_requests_for_budget");
        assert!(failure.message.contains("it waits until"), "{}", failure.message);
        assert!(report.retry_after_seconds >= outcome::SCHEMA_DRIFT_RETRY_AFTER_SECONDS);
        assert_eq!((report.subrequests, report.dead_letters), (0, 0));
    }

    #[test]
    fn transaction_that_fits_after_merging_is_applied() {
        let mut s = settings();
        s.subrequest_budget = 1;
        let big = Transaction {
            transaction_id: None,
            entries: (0..300).map(|i| entry(Op::Patch, &format!("r{i}"), json!({"done": true}))).collect(),
        };
        let transport = FakeTransport::default();
        let report = run(&[big], &s, &transport);
        assert_eq!(statuses(&report), vec![Status::Success]);
        assert_eq!(transport.sent().len(), 1);
    }

    #[test]
    fn dead_letter_call_has_the_exact_url_headers_and_body() {
        let mut s = settings();
        s.dead_letter_table = Some("powersync_dead_letters".to_string());
        let transaction =
            Transaction { transaction_id: Some(json!(12)), entries: vec![entry(Op::Put, "a", json!({"title": null}))] };
        let transport = FakeTransport::scripted(vec![
            Ok(HttpResponse {
                status: 400,
                headers: vec![],
                body: json!({"code": "23502", "message": "null value in column \"title\"", "details": "Failing row", "hint": null})
                    .to_string(),
            }),
            recorded(),
        ]);
        let caller = Caller { client_id: Some("client-9".to_string()), ..caller() };
        let report = block_on(apply(std::slice::from_ref(&transaction), &s, &caller, &transport));
        assert_eq!(statuses(&report), vec![Status::FatalError]);
        let sent = transport.sent();
        assert_eq!(sent.len(), 2);
        let dead = &sent[1];
        assert_eq!(dead.method, Method::Post);
        assert_eq!(dead.url, "https://p.supabase.co/rest/v1/rpc/powersync_record_dead_letter");
        assert_eq!(
            dead.headers,
            vec![
                ("apikey".to_string(), "anon".to_string()),
                ("Authorization".to_string(), "Bearer token".to_string()),
                ("Content-Type".to_string(), "application/json".to_string()),
                ("X-PowerSync-Entries-Digest".to_string(), transaction.entries_digest()),
            ]
        );
        let body: Value = serde_json::from_str(dead.body.as_deref().unwrap_or("")).unwrap_or(Value::Null);
        assert_eq!(
            body,
            json!({"entries": [{"op": "PUT", "table": "todos", "id": "a", "data": {"id": "a", "title": null},
                                "state": "failed"}],
                   "code": "23502", "message": "null value in column \"title\"", "details": "Failing row",
                   "transaction_id": "12", "client_id": "client-9", "op_index": 0,
                   "entry": {"op": "PUT", "table": "todos", "id": "a", "data": {"title": null}}})
        );
        assert_eq!((report.dead_letters, report.dead_letter_failures, report.subrequests), (1, 0, 2));
    }

    #[test]
    fn dead_letter_answer_that_is_not_a_row_id_keeps_the_transaction() {
        // a 2xx from something that is not the function (a catch-all server, a proxy)
        let mut s = settings();
        s.dead_letter_table = Some("dead".to_string());
        for answer in [ok(201), ok(204), ok_body("<html>ok</html>"), ok_body("null")] {
            let transport = FakeTransport::scripted(vec![error(409, "23505", "duplicate"), answer]);
            let report = run(&[tx(1)], &s, &transport);
            assert_eq!(statuses(&report), vec![Status::RetryableError]);
            let kept = report.results[0].failed_operation.clone().expect("failure");
            assert_eq!(kept.code, "dead_letter_failed");
            assert!(kept.message.contains("unexpected_response"), "{}", kept.message);
            assert_eq!((report.dead_letters, report.dead_letter_failures), (0, 1));
        }
    }

    #[test]
    fn missing_execute_grant_on_the_recorder_keeps_the_transaction() {
        let mut s = settings();
        s.dead_letter_table = Some("dead".to_string());
        let transport = FakeTransport::scripted(vec![
            error(409, "23505", "duplicate"),
            error(403, "42501", "permission denied for function powersync_record_dead_letter"),
        ]);
        let report = run(&[tx(1), tx(2)], &s, &transport);
        assert_eq!(statuses(&report), vec![Status::RetryableError, Status::NotAttempted]);
        let kept = report.results[0].failed_operation.clone().expect("failure");
        assert_eq!((kept.code.as_str(), kept.http_status), ("dead_letter_failed", Some(403)));
        assert!(
            report.dead_letter_errors[0].contains("powersync_record_dead_letter"),
            "{:?}",
            report.dead_letter_errors
        );
        // the answer names the fix the recorder's refusal led to
        assert!(
            kept.message.contains("grant execute on function public.powersync_record_dead_letter"),
            "{}",
            kept.message
        );
    }

    #[test]
    fn a_user_at_the_dead_letter_cap_waits_for_an_operator_told_why() {
        let mut s = settings();
        s.dead_letter_table = Some("dead".to_string());
        let cap = json!({"code": "54000", "details": null,
            "message": "powersync_record_dead_letter: 10000 dead letters of this user are waiting for a replay",
            "hint": "replay or delete them (as an operator) before more can be recorded"});
        let transport = FakeTransport::scripted(vec![
            error(409, "23505", "duplicate"),
            Ok(HttpResponse { status: 400, headers: vec![], body: cap.to_string() }),
        ]);
        let report = run(&[tx(1)], &s, &transport);
        assert_eq!(statuses(&report), vec![Status::RetryableError]);
        let kept = report.results[0].failed_operation.clone().expect("failure");
        assert!(kept.message.contains("10000 dead letters of this user"), "{}", kept.message);
        assert_eq!(kept.hint.as_deref(), Some("replay or delete them (as an operator) before more can be recorded"));
        assert_eq!(report.results[0].retry_after_ms, Some(60_000), "only an operator frees room");
        assert_eq!(
            report.dead_letter_errors,
            vec!["dead-letter call powersync_record_dead_letter failed: 54000 (HTTP 400)"]
        );
    }

    #[test]
    fn transaction_whose_dead_letter_cannot_be_written_stays_queued() {
        let mut s = settings();
        s.dead_letter_table = Some("dead".to_string());
        let transport = FakeTransport::scripted(vec![
            error(409, "23505", "duplicate"),
            error(404, "PGRST202", "Could not find the function public.powersync_record_dead_letter"),
        ]);
        let report = run(&[tx(1), tx(2)], &s, &transport);
        assert_eq!(statuses(&report), vec![Status::RetryableError, Status::NotAttempted]);
        let kept = report.results[0].failed_operation.clone().expect("failure");
        assert_eq!((kept.index, kept.code.as_str(), kept.http_status), (Some(0), "dead_letter_failed", Some(404)));
        assert!(kept.message.starts_with("23505: duplicate;"), "{}", kept.message);
        assert!(kept.message.contains("PGRST202"), "{}", kept.message);
        assert_eq!(report.results[0].retry_after_ms, Some(60_000), "the recorder is not installed: schema drift");
        assert_eq!((report.dead_letters, report.dead_letter_failures), (0, 1));
        assert!(report.dead_letter_errors[0].contains("PGRST202"), "{:?}", report.dead_letter_errors);
        assert!(report.needs_retry());
        assert_eq!(transport.sent().len(), 2, "the second transaction waits");
    }

    #[test]
    fn restricted_project_refusing_the_dead_letter_too_keeps_the_transaction() {
        // Supabase's 402 hits every request: the dead-letter insert as well as the write
        let mut s = settings();
        s.dead_letter_table = Some("dead".to_string());
        let transport = FakeTransport::scripted(vec![error(400, "23502", "null"), ok(402)]);
        let report = run(&[tx(1)], &s, &transport);
        assert_eq!(statuses(&report), vec![Status::RetryableError]);
        assert_eq!(report.results[0].failed_operation.as_ref().map(|f| f.code.as_str()), Some("dead_letter_failed"));
    }

    /// Settings that record dead letters, and (`UPLOAD_DEAD_LETTER_UNCHANGED`) the entries that
    /// changed no row.
    fn recording_unchanged() -> UploadSettings {
        let mut s = settings();
        s.dead_letter_table = Some("dead".to_string());
        s.dead_letter_unchanged = true;
        s
    }

    fn dead_letter_body(transport: &FakeTransport) -> Value {
        let sent = transport.sent();
        let last = sent.last().expect("a dead letter");
        assert!(last.url.ends_with(RECORD_PATH), "{}", last.url);
        serde_json::from_str(last.body.as_deref().unwrap_or("")).unwrap_or(Value::Null)
    }

    fn states_of(body: &Value) -> Vec<String> {
        body["entries"]
            .as_array()
            .map(|entries| entries.iter().map(|e| e["state"].as_str().unwrap_or("?").to_string()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn dead_letter_records_every_entry_with_what_became_of_it() {
        let mut s = settings();
        s.dead_letter_table = Some("dead".to_string());
        let transaction = Transaction {
            transaction_id: Some(json!(7)),
            entries: vec![
                entry(Op::Put, "a", json!({"x": 1})),
                entry(Op::Patch, "a", json!({})),
                entry(Op::Delete, "b", Value::Null),
                entry(Op::Delete, "c", Value::Null),
                entry(Op::Patch, "d", json!({"y": 1})),
                entry(Op::Put, "e", json!({"x": 2})),
            ],
        };
        // PUT a: 201; DELETE b,c (merged): 409, so b: 204, c: 409; the PATCH and the last PUT
        // are never sent
        let transport = FakeTransport::scripted(vec![
            ok(201),
            error(409, "23503", "fk"),
            ok(204),
            error(409, "23503", "fk"),
            recorded(),
        ]);
        let report = run(std::slice::from_ref(&transaction), &s, &transport);
        assert_eq!(statuses(&report), vec![Status::FatalError]);
        let body = dead_letter_body(&transport);
        assert_eq!(body["op_index"], json!(3));
        assert_eq!(states_of(&body), vec!["applied", "applied", "applied", "failed", "not_attempted", "not_attempted"]);
        assert_eq!(
            body["entries"][4],
            json!({"op": "PATCH", "table": "todos", "id": "d", "data": {"y": 1}, "state": "not_attempted"})
        );
        assert_eq!(body["entry"], json!({"op": "DELETE", "table": "todos", "id": "c"}));
    }

    #[test]
    fn dead_letter_of_an_atomic_call_marks_every_entry_failed() {
        let mut s = settings();
        s.atomic = AtomicMode::Always;
        s.dead_letter_table = Some("dead".to_string());
        let transaction = Transaction {
            transaction_id: None,
            entries: vec![entry(Op::Put, "a", json!({})), entry(Op::Delete, "b", Value::Null)],
        };
        let transport = FakeTransport::scripted(vec![Ok(HttpResponse {
            status: 409,
            headers: vec![],
            body: json!({"code": "23503", "message": "fk", "hint": "powersync op 1 (DELETE todos/b)"}).to_string(),
        })]);
        run(&[transaction], &s, &transport);
        assert_eq!(states_of(&dead_letter_body(&transport)), vec!["failed", "failed"]);
    }

    #[test]
    fn dead_letter_marks_an_entry_that_changed_no_row_unchanged_not_applied() {
        let mut s = settings();
        s.dead_letter_table = Some("dead".to_string());
        let transaction = Transaction {
            transaction_id: Some(json!("t")),
            entries: vec![
                entry(Op::Patch, "gone", json!({"x": 1})),
                entry(Op::Delete, "b", Value::Null),
                entry(Op::Put, "c", json!({"x": 2})),
            ],
        };
        // the PATCH changes no row, the DELETE one, the PUT is refused
        let transport =
            FakeTransport::scripted(vec![counted(204, 0), counted(204, 1), error(400, "23514", "check"), recorded()]);
        run(std::slice::from_ref(&transaction), &s, &transport);
        assert_eq!(states_of(&dead_letter_body(&transport)), vec!["unchanged", "applied", "failed"]);

        // merged: a count of 1 for two ids cannot say which changed nothing, so both stay
        // applied (a replay would send again one that did change its row); a count of 0 says
        let letter = |count: usize| {
            let transaction = Transaction {
                transaction_id: Some(json!("m")),
                entries: vec![
                    entry(Op::Delete, "a", Value::Null),
                    entry(Op::Delete, "b", Value::Null),
                    entry(Op::Put, "c", json!({"x": 2})),
                ],
            };
            let transport =
                FakeTransport::scripted(vec![counted(204, count), error(400, "23514", "check"), recorded()]);
            run(std::slice::from_ref(&transaction), &s, &transport);
            states_of(&dead_letter_body(&transport))
        };
        assert_eq!(letter(1), vec!["applied", "applied", "failed"]);
        assert_eq!(letter(0), vec!["unchanged", "unchanged", "failed"]);
    }

    #[test]
    fn dead_letter_of_a_split_upsert_marks_the_applied_half() {
        let mut s = settings();
        s.dead_letter_table = Some("dead".to_string());
        let transport = FakeTransport::scripted(vec![
            error(500, "21000", "cannot affect row a second time"),
            ok(201),
            error(409, "23505", "duplicate key"),
            ok(201),
            error(409, "23505", "duplicate key"),
            recorded(),
        ]);
        run(&[puts(&["a", "b", "c", "d"])], &s, &transport);
        assert_eq!(states_of(&dead_letter_body(&transport)), vec!["applied", "applied", "applied", "failed"]);
    }

    #[test]
    fn no_dead_letter_for_retryable_errors() {
        let mut s = settings();
        s.dead_letter_table = Some("dead".to_string());
        let transport = FakeTransport::scripted(vec![error(503, "PGRST000", "db down")]);
        let report = run(&[tx(1)], &s, &transport);
        assert_eq!(statuses(&report), vec![Status::RetryableError]);
        assert_eq!(transport.sent().len(), 1);
    }

    #[test]
    fn a_policy_refusal_of_a_table_the_transaction_does_not_write_waits_for_the_operator() {
        let refusal = |table: &str| {
            error(403, "42501", &format!("new row violates row-level security policy for table \"{table}\""))
        };
        for route in [Route::Rest, Route::Atomic] {
            let transport = FakeTransport::scripted(vec![refusal("list_events")]);
            let report = run_with(route, &settings(), &[tx(1)], &transport);
            assert_eq!(statuses(&report), vec![Status::RetryableError], "{route:?}");
            assert!(failure_of(&report, 0).message.contains("a trigger's or function's own write"));
            assert!(report.retry_after_seconds >= outcome::SCHEMA_DRIFT_RETRY_AFTER_SECONDS);
            // the table it writes: the row's own refusal
            let transport = FakeTransport::scripted(vec![refusal("todos"), ok_body("true")]);
            let report = run_with(route, &settings(), &[tx(1)], &transport);
            assert_eq!(statuses(&report), vec![Status::FatalError], "{route:?}");
        }
        let mut s = settings();
        s.error_class_overrides.insert("42501", outcome::ErrorClass::DangerouslyFatal);
        let transport = FakeTransport::scripted(vec![refusal("list_events"), ok_body("true")]);
        assert_eq!(statuses(&run_with(Route::Rest, &s, &[tx(1)], &transport)), vec![Status::FatalError]);
    }

    #[test]
    fn a_bridge_table_is_refused_fatal_without_requests_and_dead_lettered() {
        let mut s = settings();
        s.dead_letter_table = Some("dead".to_string());
        let mut to_the_ledger = tx(2);
        to_the_ledger.entries[0].table = "powersync_upload_ledger".to_string();
        let transport = FakeTransport::scripted(vec![recorded(), recorded()]);
        let report = run(&[to_the_ledger.clone(), to_the_ledger], &s, &transport);
        assert_eq!(statuses(&report), vec![Status::FatalError, Status::FatalError]);
        assert_eq!(failure_of(&report, 0).code, "table_not_allowed");
        let sent = transport.sent();
        assert_eq!(sent.len(), 2);
        assert!(sent.iter().all(|r| r.url.ends_with(RECORD_PATH)));
    }

    #[test]
    fn atomic_failure_is_located_by_the_function_hint() {
        let mut s = settings();
        s.atomic = AtomicMode::Always;
        let transaction = Transaction {
            transaction_id: Some(json!(1)),
            entries: vec![entry(Op::Put, "a", json!({})), entry(Op::Delete, "b", Value::Null)],
        };
        let transport = FakeTransport::scripted(vec![Ok(HttpResponse {
            status: 409,
            headers: vec![],
            body: json!({"code": "23503", "message": "fk", "details": null, "hint": "powersync op 1 (DELETE todos/b)"})
                .to_string(),
        })]);
        let report = run(std::slice::from_ref(&transaction), &s, &transport);
        let failure = report.results[0].failed_operation.clone().expect("failure");
        assert_eq!((failure.index, failure.code.as_str()), (Some(1), "23503"));

        let transport = FakeTransport::scripted(vec![error(400, "22023", "bad")]);
        let report = run(&[transaction], &s, &transport);
        assert_eq!(report.results[0].failed_operation.as_ref().map(|f| f.index), Some(None));
    }

    fn service() -> UploadSettings {
        let mut s = settings();
        s.mode = WriteMode::Service { service_key: "svc".to_string(), owner_column: "owner".to_string() };
        s
    }

    #[test]
    fn a_patch_whose_every_column_the_bridge_leaves_out_is_unchanged_never_reported_applied() {
        // Service mode never changes the owner column (a PATCH of it alone writes nothing), and
        // no PATCH renames a row (one of `id` alone writes nothing): not sent, and listed
        // `unchanged` on both routes, as a PATCH that changed no row is.
        let owner_only = Transaction {
            transaction_id: Some(json!(1)),
            entries: vec![
                entry(Op::Patch, "a", json!({"owner": "user-2"})),
                entry(Op::Patch, "b", json!({"owner": "user-2", "t": 1})),
                entry(Op::Patch, "c", json!({"id": "c"})),
            ],
        };
        for atomic in [AtomicMode::Never, AtomicMode::Always] {
            let mut s = service();
            s.atomic = atomic;
            let transport = FakeTransport::default();
            let report = run(std::slice::from_ref(&owner_only), &s, &transport);
            assert_eq!(statuses(&report), vec![Status::Success], "{atomic:?}");
            assert_eq!(report.body()["results"][0]["unchanged"], json!([0, 2]), "{atomic:?}");
            if atomic == AtomicMode::Never {
                assert_eq!(transport.sent().len(), 1, "only entry 1 writes something");
            }
        }
        let rls = Transaction { transaction_id: None, entries: vec![entry(Op::Patch, "c", json!({"id": "c"}))] };
        let transport = FakeTransport::default();
        let report = run(&[rls], &settings(), &transport);
        assert_eq!((report.body()["results"][0]["unchanged"].clone(), transport.sent().len()), (json!([0]), 0));
    }

    #[test]
    fn service_put_over_a_foreign_row_is_refused_before_writing_it_and_after_the_rows_before_it() {
        let transaction = Transaction {
            transaction_id: None,
            entries: vec![
                entry(Op::Put, "a", json!({})),
                entry(Op::Put, "b", json!({})),
                entry(Op::Put, "c", json!({})),
            ],
        };
        let transport =
            FakeTransport::scripted(vec![ok_body(r#"[{"id":"c"},{"id":"b"}]"#), ok_body("[]"), counted(201, 1)]);
        let report = run(&[transaction], &service(), &transport);
        let failure = report.results[0].failed_operation.clone().expect("failure");
        assert_eq!(
            (report.results[0].status, failure.index, failure.code.as_str()),
            (Status::FatalError, Some(1), "42501"),
            "the earliest entry of the foreign rows, whatever the database's order"
        );
        let sent = transport.sent();
        assert_eq!(sent.len(), 3, "{sent:?}");
        assert_eq!((sent[0].method, sent[1].method), (Method::Get, Method::Get));
        assert!(
            sent[1].url.ends_with("/todos?select=id&id=eq.a&owner=isdistinct.user-1"),
            "checked again: {}",
            sent[1].url
        );
        let rows: Value = serde_json::from_str(sent[2].body.as_deref().unwrap_or("")).unwrap_or(Value::Null);
        assert_eq!(rows.as_array().map(|rows| rows.len()), Some(1), "only the row before it: {rows}");
        assert_eq!(rows[0]["id"], json!("a"));
    }

    #[test]
    fn service_put_group_with_a_refused_row_before_a_foreign_one_is_reported_at_the_refused_row() {
        // Found by the long fault soak (service mode, seed 1887474629): a row the database refuses
        // (here `name` null) before a row owned by another user was reported at the foreign row.
        let transaction = Transaction {
            transaction_id: None,
            entries: vec![entry(Op::Put, "a", json!({})), entry(Op::Put, "b", json!({}))],
        };
        let not_null = error(400, "23502", "null value in column \"name\" violates not-null constraint");
        let transport = FakeTransport::scripted(vec![ok_body(r#"[{"id":"b"}]"#), ok_body("[]"), not_null]);
        let report = run(&[transaction], &service(), &transport);
        let failure = report.results[0].failed_operation.clone().expect("failure");
        assert_eq!((failure.index, failure.code.as_str()), (Some(0), "23502"));
        assert_eq!(transport.sent().len(), 3);
    }

    #[test]
    fn service_put_never_upserts_another_spelling_of_a_foreign_row_before_the_entry_found_foreign() {
        // Found by an audit: another user owns row 1 (a numeric id; a bigint one on PostgreSQL 16
        // and later, which reads `0x1` as 1). PUT "1.0" (or "0x1") then PUT "1" were one group and
        // one ownership check, answered with the database's spelling, `1`: matched to entry 1, so
        // entry 0's row was upserted as a row before it, and `on_conflict=id` took the foreign
        // row over. Now the planner knows them for one value (`cast_key`): entry 0 is checked on
        // its own and refused. Spellings it cannot know (`é` decomposed and composed, one row
        // under a non-deterministic collation) are one group still: the rows before the entry
        // found foreign are checked again alone, entry 0's is found foreign and matches no entry,
        // so the group is refused at its start (after 2 checks). Nothing is written either way.
        for (first, second, stored, checks) in [
            ("1.0", "1", r#"[{"id":1}]"#, 1),
            ("0x1", "1", r#"[{"id":1}]"#, 1),
            ("1.00", "1.0", r#"[{"id":1.0}]"#, 1),
            ("e\u{301}", "\u{e9}", r#"[{"id":"\u00e9"}]"#, 2),
        ] {
            let transaction = Transaction {
                transaction_id: None,
                entries: vec![entry(Op::Put, first, json!({"t": "x"})), entry(Op::Put, second, json!({"t": "x"}))],
            };
            let mut s = service();
            s.atomic = AtomicMode::Never;
            let transport = FakeTransport::scripted(vec![ok_body(stored), ok_body(stored), counted(200, 1)]);
            let report = run(&[transaction], &s, &transport);
            let sent = transport.sent();
            assert!(sent.iter().all(|r| r.method == Method::Get), "{first}: only checks, no write: {sent:?}");
            assert_eq!(sent.len(), checks, "{first}");
            let failure = report.results[0].failed_operation.clone().expect("failure");
            assert_eq!(
                (report.results[0].status, failure.index, failure.code.as_str()),
                (Status::FatalError, Some(0), "42501"),
                "{first}"
            );
        }
    }

    #[test]
    fn a_foreign_row_in_another_numeric_spelling_is_reported_at_its_own_entry_not_an_earlier_one() {
        // Found by an audit: the database's `1` matched no entry of [PUT "5", PUT "1.0"], so the
        // refusal was reported at entry 0, and entry 0's row was not written.
        let transaction = Transaction {
            transaction_id: None,
            entries: vec![entry(Op::Put, "5", json!({"t": "x"})), entry(Op::Put, "1.0", json!({"t": "x"}))],
        };
        let mut s = service();
        s.atomic = AtomicMode::Never;
        let transport = FakeTransport::scripted(vec![ok_body(r#"[{"id":1}]"#), ok_body("[]"), counted(201, 1)]);
        let report = run(&[transaction], &s, &transport);
        let failure = report.results[0].failed_operation.clone().expect("failure");
        assert_eq!((failure.index, failure.code.as_str()), (Some(1), "42501"), "{:?}", transport.sent());
        let written: Vec<Vec<String>> =
            transport.sent().iter().filter(|r| r.method == Method::Post).map(rows_sent).collect();
        assert_eq!(written, vec![vec!["5".to_string()]]);
    }

    #[test]
    fn service_put_whose_rows_before_a_foreign_one_cannot_be_checked_again_writes_none_of_the_group() {
        // No room in the budget for checking the rows before the foreign one again: none of the
        // group is written, and the refusal is reported at the group's start, naming the entry.
        let transaction = Transaction {
            transaction_id: None,
            entries: vec![entry(Op::Put, "a", json!({})), entry(Op::Put, "b", json!({}))],
        };
        let mut s = service();
        s.atomic = AtomicMode::Never;
        s.subrequest_budget = 2;
        let transport = FakeTransport::scripted(vec![ok_body(r#"[{"id":"b"}]"#)]);
        let report = run(&[transaction], &s, &transport);
        assert_eq!(transport.sent().len(), 1, "{:?}", transport.sent());
        let failure = report.results[0].failed_operation.clone().expect("failure");
        assert_eq!(
            (report.results[0].status, failure.index, failure.code.as_str()),
            (Status::FatalError, Some(0), "42501")
        );
        assert!(
            failure.message.contains("(entry 1)") && failure.message.contains("UPLOAD_SUBREQUEST_BUDGET"),
            "{}",
            failure.message
        );
    }

    #[test]
    fn foreign_row_found_in_the_databases_spelling_is_reported_at_its_own_entry() {
        let upper = "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11";
        for (sent, stored) in [(upper, r#"[{"id":"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"}]"#), ("007", r#"[{"id":7}]"#)]
        {
            let transaction = Transaction {
                transaction_id: None,
                entries: vec![entry(Op::Put, "x", json!({})), entry(Op::Put, sent, json!({}))],
            };
            let transport = FakeTransport::scripted(vec![ok_body(stored), ok_body("[]"), counted(201, 1)]);
            let report = run(&[transaction], &service(), &transport);
            let failure = report.results[0].failed_operation.clone().expect("failure");
            assert_eq!((failure.index, failure.code.as_str()), (Some(1), "42501"), "{sent}");
        }
    }

    #[test]
    fn service_put_over_own_or_new_rows_is_applied() {
        let transport = FakeTransport::scripted(vec![ok_body("[]"), ok(201)]);
        let report = run(&[tx(1)], &service(), &transport);
        assert_eq!(statuses(&report), vec![Status::Success]);
        assert_eq!(transport.sent().iter().map(|r| r.method).collect::<Vec<_>>(), vec![Method::Get, Method::Post]);
    }

    #[test]
    fn unreadable_ownership_check_answer_is_retryable() {
        let transport = FakeTransport::scripted(vec![ok_body("<html>")]);
        let report = run(&[tx(1)], &service(), &transport);
        assert_eq!(statuses(&report), vec![Status::RetryableError]);
        assert_eq!(report.results[0].failed_operation.as_ref().map(|f| f.code.as_str()), Some("unexpected_response"));
    }

    fn run_on(route: Route, transactions: &[Transaction], transport: &FakeTransport) -> UploadReport {
        let caller = Caller { client_id: Some("client-1".to_string()), ..caller() };
        block_on(apply_with(transactions, &settings(), &caller, transport, route))
    }

    fn missing_function() -> Answer {
        error(404, "PGRST202", "Could not find the function public.powersync_apply_transaction")
    }

    /// The ledger's answer to the mark a REST fallback asks for: made.
    fn begun() -> Answer {
        ok_body(r#"{"rest":"begun"}"#)
    }

    const REST_BEGIN_PATH: &str = "/rpc/powersync_upload_ledger_rest_begin";
    const REST_ABANDON_PATH: &str = "/rpc/powersync_upload_ledger_rest_abandon";

    #[test]
    fn transaction_the_atomic_function_had_already_applied_is_a_success_saying_so() {
        let transport = FakeTransport::scripted(vec![
            ok_body(r#"{"applied": 0, "already_applied": true}"#),
            ok_body(r#"{"applied": 1}"#),
        ]);
        let report = run_on(Route::Atomic, &[tx(1), tx(2)], &transport);
        assert_eq!(statuses(&report), vec![Status::Success, Status::Success]);
        assert!(!report.needs_retry());
        let body = report.body();
        assert_eq!(body["results"][0], json!({"status": "success", "transaction_id": 1, "already_applied": true}));
        assert_eq!(body["results"][1], json!({"status": "success", "transaction_id": 2}), "no field when applied now");
        assert_eq!(body["applied"], json!(2));
        assert_eq!(report.log_summary()["already_applied"], json!(1));
        let sent: Value =
            serde_json::from_str(transport.sent()[0].body.as_deref().unwrap_or("")).unwrap_or(Value::Null);
        assert_eq!((sent["client_id"].as_str(), sent["transaction_id"].as_str()), (Some("client-1"), Some("1")));
    }

    #[test]
    fn a_rejection_held_after_rest_requests_is_dead_lettered_with_the_entries_before_the_failure_applied() {
        // Rejected at entry 1 after an attempt through REST requests (entry 0 stayed applied), its
        // answer lost, without a dead-letter table; the table set since: the re-send's record
        // says entry 0 is applied, so a replay leaves it out.
        let mut s = settings();
        s.atomic = AtomicMode::Always;
        s.dead_letter_table = Some("dead".to_string());
        let caller = Caller { client_id: Some("client-1".to_string()), ..caller() };
        let held = json!({"applied": 0, "dead_letter": {"id": 0, "index": 1, "code": "23514", "message": "check",
            "applied_via": "rest"}});
        let two = Transaction {
            transaction_id: Some(json!(1)),
            entries: vec![entry(Op::Patch, "a", json!({"n": 1})), entry(Op::Patch, "a", json!({"m": 2}))],
        };
        let transport = FakeTransport::scripted(vec![ok_body(&held.to_string()), recorded()]);
        let report = block_on(apply_with(&[two], &s, &caller, &transport, Route::Atomic));
        assert_eq!(statuses(&report), vec![Status::FatalError]);
        let record: Value = serde_json::from_str(transport.sent()[1].body.as_deref().unwrap_or("")).unwrap();
        let states: Vec<&str> =
            record["entries"].as_array().expect("entries").iter().filter_map(|e| e["state"].as_str()).collect();
        assert_eq!(states, vec!["applied", "failed"], "{record}");
    }

    #[test]
    fn transaction_the_ledger_holds_as_dead_lettered_is_answered_as_recorded_and_applies_nothing() {
        let mut s = settings();
        s.atomic = AtomicMode::Always;
        s.dead_letter_table = Some("dead".to_string());
        let caller = Caller { client_id: Some("client-1".to_string()), ..caller() };
        let fatal = r#"{"applied": 0, "dead_letter": {"id": 4, "index": 0, "code": "23514", "message": "check", "details": null}}"#;
        let conflict = json!({"applied": 0, "dead_letter": {"id": 5, "index": 0, "code": "conflict",
                              "message": "the row changed", "details": "{\"id\": \"a\", \"n\": 2}"}});
        let transport = FakeTransport::scripted(vec![
            ok_body(fatal),
            recorded(),
            ok_body(&conflict.to_string()),
            recorded(),
            ok_body(r#"{"applied": 1}"#),
        ]);
        let report = block_on(apply_with(&[tx(1), tx(2), tx(3)], &s, &caller, &transport, Route::Atomic));
        assert_eq!(statuses(&report), vec![Status::FatalError, Status::Conflict, Status::Success]);
        let body = report.body();
        assert_eq!(body["applied"], json!(1), "nothing of the dead-lettered transactions applied");
        let failure = |i: usize| report.results[i].failed_operation.clone().expect("failure");
        assert_eq!(
            (failure(0).index, failure(0).code.as_str(), failure(0).message.as_str()),
            (Some(0), "23514", "check")
        );
        assert_eq!((failure(1).index, failure(1).code.as_str(), failure(1).details), (Some(0), "conflict", None));
        // the dead letter is recorded again (the database returns the first one's id), the
        // conflict's with the row as recorded
        let sent = transport.sent();
        let letter =
            |i: usize| -> Value { serde_json::from_str(sent[i].body.as_deref().unwrap_or("")).unwrap_or(Value::Null) };
        assert!(sent[1].url.ends_with(RECORD_PATH) && sent[3].url.ends_with(RECORD_PATH));
        assert_eq!((letter(1)["code"].as_str(), letter(1)["op_index"].as_u64()), (Some("23514"), Some(0)));
        assert_eq!(letter(3)["details"], json!(r#"{"id":"a","n":2}"#));
    }

    const REJECT_PATH: &str = "/rest/v1/rpc/powersync_upload_ledger_reject";

    /// The atomic function's refusal of op 0 (a check constraint): fatal.
    fn atomic_refusal() -> Answer {
        Ok(HttpResponse {
            status: 400,
            headers: vec![],
            body: json!({"code": "23514", "message": "check", "hint": "powersync op 0 (PUT todos/r1)"}).to_string(),
        })
    }

    #[test]
    fn without_dead_letters_a_rejected_transaction_is_recorded_in_the_ledger_before_it_is_reported() {
        // A late call of it (an attempt the bridge gave up on) must not apply it once the client
        // has discarded it: the ledger answers such a call instead.
        let transport = FakeTransport::scripted(vec![atomic_refusal(), ok_body("true"), ok_body(r#"{"applied": 1}"#)]);
        let report = run_on(Route::Atomic, &[tx(1), tx(2)], &transport);
        assert_eq!(statuses(&report), vec![Status::FatalError, Status::Success]);
        assert_eq!(report.results[0].failed_operation.as_ref().map(|f| f.code.as_str()), Some("23514"));
        let sent = transport.sent();
        assert_eq!(sent.len(), 3);
        let reject = &sent[1];
        assert_eq!(
            (reject.method, reject.url.as_str()),
            (Method::Post, "https://p.supabase.co/rest/v1/rpc/powersync_upload_ledger_reject")
        );
        // with the failure as reported, which the ledger keeps for a later call's answer
        let reported = report.results[0].failed_operation.as_ref().map(FailedOperation::to_json);
        assert_eq!(
            reject.body.as_deref(),
            Some(
                format!(r#"{{"p_client_id":"client-1","p_transaction_id":"1","p_rejection":{}}}"#, reported.unwrap())
                    .as_str()
            )
        );
        assert_eq!(reject.header_value(crud::ENTRIES_DIGEST_HEADER), Some(tx(1).entries_digest().as_str()));
        assert_eq!(reject.header_value("Authorization"), Some("Bearer token"), "as the user, as the atomic call");
        assert_eq!(reject.header_value(crud::ENTRIES_DIGEST_HEADER), sent[0].header_value(crud::ENTRIES_DIGEST_HEADER));
        assert_eq!(report.subrequests, 3);
    }

    #[test]
    fn without_dead_letters_a_service_mode_conflict_is_recorded_under_the_owner() {
        let mut s = service();
        s.atomic = AtomicMode::Always;
        let caller = Caller { client_id: Some("client-1".to_string()), ..caller() };
        let conflict = r#"{"applied": 0, "conflict": {"index": 0, "row": {"id": "r1", "n": 9}}}"#;
        let transport = FakeTransport::scripted(vec![ok_body(conflict), ok_body("true")]);
        let report = block_on(apply_with(&[tx(1)], &s, &caller, &transport, Route::Atomic));
        assert_eq!(statuses(&report), vec![Status::Conflict]);
        let reject = &transport.sent()[1];
        assert!(reject.url.ends_with(REJECT_PATH));
        let body: Value = serde_json::from_str(reject.body.as_deref().unwrap_or("")).unwrap();
        let reported = report.results[0].failed_operation.as_ref().map(FailedOperation::to_json).unwrap();
        assert_eq!(
            body,
            json!({"p_client_id": "client-1", "p_transaction_id": "1", "p_owner_id": "user-1", "p_rejection": reported})
        );
        assert_eq!((reported["index"].clone(), reported["code"].clone()), (json!(0), json!("conflict")));
        assert_eq!(reject.header_value("Authorization"), Some("Bearer svc"));
    }

    #[test]
    fn a_rejection_of_a_transaction_the_ledger_holds_applied_is_answered_already_applied_and_the_queue_goes_on() {
        // An earlier attempt applied it whole (a late call; or its answer was lost, and a setting
        // changed since sends it through REST or refuses it before sending, routes that never ask
        // the ledger): the ledger refuses its rejection's record, 55000 (PostgREST: 500). Kept,
        // it would be kept on every attempt, the user's later transactions behind it.
        let applied =
            |what: &str| error(500, "55000", &format!("transaction 1 of client client-1 was applied: {what}"));
        let transport = FakeTransport::scripted(vec![atomic_refusal(), applied("its rejection is not recorded")]);
        let report = run_on(Route::Atomic, &[tx(1), tx(2)], &transport);
        assert_eq!(statuses(&report), vec![Status::Success, Status::Success]);
        assert!(report.results[0].already_applied);
        assert_eq!(report.results[0].failed_operation, None);
        // the same through the dead-letter recorder
        let mut s = settings();
        s.dead_letter_table = Some("dead".to_string());
        let transport =
            FakeTransport::scripted(vec![error(400, "23514", "check"), applied("it is not recorded as a dead letter")]);
        let report = run(&[tx(1), tx(2)], &s, &transport);
        assert_eq!(statuses(&report), vec![Status::Success, Status::Success]);
        assert!(report.results[0].already_applied && !report.results[1].already_applied);
        assert_eq!(report.dead_letters, 0);
        // with the entries that changed no row as the ledger recorded them (its detail), those
        // of this transaction only
        let two = Transaction {
            transaction_id: Some(json!(1)),
            entries: vec![entry(Op::Patch, "a", json!({"n": 1})), entry(Op::Delete, "b", Value::Null)],
        };
        let mut recorded = applied("it is not recorded as a dead letter");
        if let Ok(response) = &mut recorded {
            response.body = json!({"code": "55000", "message": "transaction 1 of client client-1 was applied: it is not                                    recorded as a dead letter", "details": "{\"unchanged\": [1, 7]}", "hint": null})
            .to_string();
        }
        let transport = FakeTransport::scripted(vec![error(400, "23514", "check"), recorded]);
        let report = run(&[two], &s, &transport);
        assert_eq!(statuses(&report), vec![Status::Success]);
        assert_eq!(report.body()["results"][0]["unchanged"], json!([1]));
        // another 55000 (a replay's own refusal) is no such answer: kept
        let other = error(500, "55000", "dead letter 3 was replayed already");
        let transport = FakeTransport::scripted(vec![error(400, "23514", "check"), other]);
        let report = run(&[tx(1)], &s, &transport);
        assert_eq!(statuses(&report), vec![Status::RetryableError]);
    }

    #[test]
    fn a_rejection_the_ledger_does_not_record_keeps_the_transaction() {
        // Any failure: the client keeps it and sends it again.
        // A 2xx that is not the function's `true` (a catch-all proxy, an older copy) records nothing.
        for answer in [error(503, "", "down"), bare(204), ok_body("null")] {
            let transport = FakeTransport::scripted(vec![atomic_refusal(), answer.clone(), answer]);
            let report = run_on(Route::Atomic, &[tx(1), tx(2)], &transport);
            assert_eq!(statuses(&report), vec![Status::RetryableError, Status::NotAttempted]);
            let kept = report.results[0].failed_operation.clone().expect("failure");
            assert_eq!((kept.index, kept.code.as_str()), (Some(0), "rejection_not_recorded"));
            assert!(
                kept.message.starts_with("23514: check; not discarded because recording its rejection"),
                "{}",
                kept.message
            );
            assert!(report.log_summary()["dead_letter_errors"][0]
                .as_str()
                .unwrap()
                .contains("powersync_upload_ledger_reject"));
        }
    }

    #[test]
    fn a_ledger_without_the_reject_function_reports_the_rejection_as_before_and_says_so() {
        let missing = error(404, "PGRST202", "Could not find the function public.powersync_upload_ledger_reject");
        let transport = FakeTransport::scripted(vec![atomic_refusal(), missing.clone(), missing]);
        let report = run_on(Route::Atomic, &[tx(1)], &transport);
        assert_eq!(statuses(&report), vec![Status::FatalError]);
        let errors = report.log_summary()["dead_letter_errors"].to_string();
        assert!(errors.contains("run sql/atomic_upload.sql again"), "{errors}");
        assert!(errors.contains("could still apply it"), "{errors}");
        assert_eq!(transport.sent().len(), 3, "asked with the failure, then without it");
    }

    #[test]
    fn a_ledger_older_than_the_rejections_argument_records_it_without_and_says_so() {
        // Deployed before sql/atomic_upload.sql is run again: PostgREST finds no function taking
        // p_rejection (PGRST202). Asked again without it, the rejection is recorded (guarded).
        let older = error(404, "PGRST202", "Could not find the function public.powersync_upload_ledger_reject(p_client_id, p_rejection, p_transaction_id)");
        let transport = FakeTransport::scripted(vec![atomic_refusal(), older, ok_body("true")]);
        let report = run_on(Route::Atomic, &[tx(1)], &transport);
        assert_eq!(statuses(&report), vec![Status::FatalError]);
        let sent = transport.sent();
        assert_eq!(sent.len(), 3);
        assert!(sent[1].body.as_deref().unwrap().contains("\"p_rejection\":"));
        assert_eq!(sent[2].url, sent[1].url);
        assert_eq!(sent[2].body.as_deref(), Some(r#"{"p_client_id":"client-1","p_transaction_id":"1"}"#));
        let errors = report.log_summary()["dead_letter_errors"].to_string();
        assert!(errors.contains("takes no p_rejection: run sql/atomic_upload.sql again"), "{errors}");
        assert!(!errors.contains("could still apply it"), "{errors}");
        // with no request left for the second call, reported as for a ledger without the function
        let mut s = settings();
        s.atomic = AtomicMode::Always;
        s.subrequest_budget = 2;
        let older = error(404, "PGRST202", "Could not find the function");
        let transport = FakeTransport::scripted(vec![atomic_refusal(), older]);
        let caller = Caller { client_id: Some("client-1".to_string()), ..caller() };
        let report = block_on(apply_with(&[tx(1)], &s, &caller, &transport, Route::Atomic));
        assert_eq!((statuses(&report), transport.sent().len()), (vec![Status::FatalError], 2));
    }

    #[test]
    fn no_ledger_record_of_a_rejection_without_a_client_id_or_off_the_atomic_function() {
        // Without a client id the ledger keys nothing.
        let mut s = settings();
        s.atomic = AtomicMode::Always;
        let transport = FakeTransport::scripted(vec![atomic_refusal()]);
        let report = block_on(apply_with(&[tx(1)], &s, &caller(), &transport, Route::Atomic));
        assert_eq!((statuses(&report), transport.sent().len()), (vec![Status::FatalError], 1));
        // REST requests (UPLOAD_ATOMIC=false), or the function missing: no late atomic call.
        let transport = FakeTransport::scripted(vec![error(400, "23514", "check")]);
        let report = run_on(Route::Rest, &[tx(1)], &transport);
        assert_eq!((statuses(&report), transport.sent().len()), (vec![Status::FatalError], 1));
        let transport = FakeTransport::scripted(vec![missing_function(), error(400, "23514", "check")]);
        let report = run_on(Route::Probe, &[tx(1)], &transport);
        assert_eq!((statuses(&report), transport.sent().len()), (vec![Status::FatalError], 2));
    }

    #[test]
    fn a_resend_the_ledger_holds_as_rejected_without_a_letter_is_reported_rejected_before() {
        // The ledger's answer is its record: no second ledger call (an older ledger function
        // answered that call 204, which is not `true`, and kept the user's queue waiting)
        let transport = FakeTransport::scripted(vec![ok_body(r#"{"applied": 0, "dead_letter": {"id": 0}}"#)]);
        let report = run_on(Route::Atomic, &[tx(1)], &transport);
        assert_eq!(transport.sent().len(), 1, "{:?}", transport.sent());
        assert_eq!(statuses(&report), vec![Status::FatalError]);
        let failure = report.results[0].failed_operation.clone().expect("failure");
        assert_eq!(failure.code, "dead_lettered");
        assert_eq!(
            failure.message,
            "this transaction was rejected before (no dead letter was recorded); nothing applied"
        );
        assert_eq!(report.body()["applied"], json!(0));
    }

    #[test]
    fn a_resend_the_ledger_holds_as_rejected_is_answered_as_it_was_reported_and_whether_it_went_through_rest() {
        // The ledger kept the reported failure (p_rejection): a conflict stays a conflict, at its
        // entry, with its code and message; an attempt that went through REST is named, since
        // what it applied before the failing entry stayed applied.
        let kept = json!({"applied": 0, "dead_letter": {"id": 0, "index": 0, "code": "conflict",
            "message": "the row changed", "details": null, "http_status": 200, "applied_via": "rest"}});
        let transport = FakeTransport::scripted(vec![ok_body(&kept.to_string())]);
        let report = run_on(Route::Atomic, &[tx(1)], &transport);
        assert_eq!(transport.sent().len(), 1, "held: recorded already");
        assert_eq!(statuses(&report), vec![Status::Conflict]);
        let result = &report.body()["results"][0];
        assert_eq!(result["failed_operation"]["index"], json!(0));
        assert_eq!(result["failed_operation"]["code"], json!("conflict"));
        assert_eq!(result["failed_operation"]["message"], json!("the row changed"));
        assert_eq!(result["applied_via"], json!("rest"));
        assert!(result["applied_via_reason"]
            .as_str()
            .unwrap()
            .starts_with("rejected before, after an earlier attempt"));
        assert_eq!(report.log_summary()["applied_via_rest"], json!(0), "no fallback in this upload");
        // a dead letter's answer too, and without "applied_via" no such field
        let letter = json!({"applied": 0, "dead_letter": {"id": 9, "index": 0, "code": "23514", "message": "check",
            "applied_via": "rest"}});
        let transport = FakeTransport::scripted(vec![ok_body(&letter.to_string())]);
        let report = run_on(Route::Atomic, &[tx(1)], &transport);
        assert_eq!(statuses(&report), vec![Status::FatalError]);
        assert_eq!(report.body()["results"][0]["applied_via"], json!("rest"));
        let plain = json!({"applied": 0, "dead_letter": {"id": 9, "index": 0, "code": "23514", "message": "check"}});
        let transport = FakeTransport::scripted(vec![ok_body(&plain.to_string())]);
        let report = run_on(Route::Atomic, &[tx(1)], &transport);
        assert_eq!(report.body()["results"][0].get("applied_via"), None);
    }

    #[test]
    fn probe_uses_the_atomic_function_when_it_answers() {
        let transport = FakeTransport::scripted(vec![ok_body(r#"{"applied": 1}"#), ok_body(r#"{"applied": 1}"#)]);
        let report = run_on(Route::Probe, &[tx(1), tx(2)], &transport);
        assert_eq!(statuses(&report), vec![Status::Success, Status::Success]);
        assert!(transport.sent().iter().all(|r| r.url.ends_with("/rest/v1/rpc/powersync_apply_transaction")));
        assert_eq!((report.subrequests, report.atomic_function), (2, Some(true)));
    }

    #[test]
    fn probe_of_a_missing_function_applies_the_same_upload_through_rest() {
        let transport = FakeTransport::scripted(vec![missing_function(), ok(201), ok(201)]);
        let report = run_on(Route::Probe, &[tx(1), tx(2)], &transport);
        assert_eq!(statuses(&report), vec![Status::Success, Status::Success]);
        let urls: Vec<String> = transport.sent().iter().map(|r| r.url.clone()).collect();
        assert!(urls[0].ends_with("/rpc/powersync_apply_transaction"));
        assert!(urls[1..].iter().all(|u| u.ends_with("/rest/v1/todos?on_conflict=id")), "{urls:?}");
        assert_eq!((report.subrequests, report.atomic_function), (3, Some(false)), "the failed probe counts");
        assert_eq!(report.log_summary()["atomic_function"], json!("missing"));
    }

    #[test]
    fn probe_that_gets_a_data_error_from_the_function_knows_it_is_installed() {
        let transport = FakeTransport::scripted(vec![error(409, "23505", "duplicate")]);
        let report = run_on(Route::Probe, &[tx(1)], &transport);
        assert_eq!(statuses(&report), vec![Status::FatalError]);
        assert_eq!(report.atomic_function, Some(true));
        let transport = FakeTransport::scripted(vec![lost(), lost()]);
        assert_eq!(run_on(Route::Probe, &[tx(1)], &transport).atomic_function, None, "no answer teaches nothing");
    }

    #[test]
    fn forced_atomic_route_keeps_a_missing_function_retryable() {
        let transport = FakeTransport::scripted(vec![missing_function()]);
        let report = run_on(Route::Atomic, &[tx(1), tx(2)], &transport);
        assert_eq!(statuses(&report), vec![Status::RetryableError, Status::NotAttempted]);
        assert_eq!(transport.sent().len(), 1);
    }

    fn failure_of(report: &UploadReport, i: usize) -> FailedOperation {
        report.results[i].failed_operation.clone().expect("a failure")
    }

    #[test]
    fn rest_write_answered_2xx_without_a_row_count_is_unexpected_and_retryable() {
        for answer in [
            bare(201),
            bare(204),
            ok_body("<html>It works!</html>"),
            counted(201, 1).map(|mut r| {
                r.headers = vec![("Content-Range".to_string(), "*/*".to_string())];
                r
            }),
        ] {
            let transport = FakeTransport::scripted(vec![answer]);
            let report = run(&[tx(1), tx(2)], &settings(), &transport);
            assert_eq!(statuses(&report), vec![Status::RetryableError, Status::NotAttempted]);
            let failure = failure_of(&report, 0);
            assert_eq!((failure.code.as_str(), failure.index), ("unexpected_response", Some(0)));
            assert!(failure.message.contains("Content-Range"), "{}", failure.message);
            assert_eq!(report.body()["applied"], json!(0), "nothing reported applied");
            assert_eq!(transport.sent().len(), 1);
        }
        // PATCH and DELETE too
        let transaction = Transaction {
            transaction_id: Some(json!(1)),
            entries: vec![entry(Op::Patch, "a", json!({"x": 1})), entry(Op::Delete, "b", Value::Null)],
        };
        let transport = FakeTransport::scripted(vec![counted(204, 1), bare(204)]);
        let report = run(std::slice::from_ref(&transaction), &settings(), &transport);
        assert_eq!(statuses(&report), vec![Status::RetryableError]);
        assert_eq!(
            (failure_of(&report, 0).code.as_str(), failure_of(&report, 0).index),
            ("unexpected_response", Some(1))
        );
    }

    #[test]
    fn atomic_call_answered_2xx_with_anything_but_the_functions_result_is_unexpected_and_retryable() {
        let mut s = settings();
        s.atomic = AtomicMode::Always;
        for (answer, quoted) in [
            (bare(201), "an empty body"),
            (ok_body("<html><body>Welcome</body></html>"), "<html><body>Welcome"),
            (ok_body("null"), "null"),
            (ok_body(r#"{"ok": true}"#), "ok"),
        ] {
            let transport = FakeTransport::scripted(vec![answer]);
            let report = run(&[tx(1), tx(2)], &s, &transport);
            assert_eq!(statuses(&report), vec![Status::RetryableError, Status::NotAttempted], "{quoted}");
            let failure = failure_of(&report, 0);
            assert_eq!((failure.code.as_str(), failure.index), ("unexpected_response", None));
            let details = failure.details.clone().unwrap_or_default();
            assert!(details.contains(quoted), "{details}");
            assert!(failure.message.starts_with("HTTP "), "{}", failure.message);
            // the log line keeps the message, which quotes nothing of the body (a host echoing
            // the request would put the row and the user's id there)
            assert_eq!(report.log_summary()["unexpected_responses"][0], json!(failure.message));
            assert!(!report.log_summary().to_string().contains("Welcome"), "{quoted}");
        }
    }

    #[test]
    fn probe_answered_with_something_else_than_the_functions_result_learns_nothing() {
        let transport = FakeTransport::scripted(vec![bare(201)]);
        let report = run_on(Route::Probe, &[tx(1)], &transport);
        assert_eq!(statuses(&report), vec![Status::RetryableError]);
        assert_eq!(report.atomic_function, None);
    }

    #[test]
    fn patch_or_delete_that_changed_no_row_is_reported_unchanged() {
        let transaction = Transaction {
            transaction_id: Some(json!(9)),
            entries: vec![
                entry(Op::Put, "a", json!({"x": 1})),
                entry(Op::Patch, "gone", json!({"x": 2})),
                entry(Op::Patch, "a", json!({})),
                entry(Op::Delete, "a", Value::Null),
                entry(Op::Put, "b", json!({"y": 1})),
                entry(Op::Delete, "hidden", Value::Null),
            ],
        };
        let transport = FakeTransport::scripted(vec![
            counted(201, 1),
            counted(204, 0),
            counted(204, 1),
            counted(201, 1),
            counted(204, 0),
        ]);
        let report = run(std::slice::from_ref(&transaction), &settings(), &transport);
        assert_eq!(statuses(&report), vec![Status::Success]);
        assert_eq!(report.results[0].unchanged, vec![1, 5]);
        assert_eq!(report.body()["results"][0], json!({"status": "success", "transaction_id": 9, "unchanged": [1, 5]}));
        let prefer: Vec<Option<String>> =
            transport.sent().iter().map(|r| r.header_value("Prefer").map(str::to_string)).collect();
        assert_eq!(
            prefer,
            vec![
                Some("resolution=merge-duplicates,return=minimal,count=exact".to_string()),
                Some("return=minimal,count=exact".to_string()),
                Some("return=minimal,count=exact".to_string()),
                Some("resolution=merge-duplicates,return=minimal,count=exact".to_string()),
                Some("return=minimal,count=exact".to_string()),
            ],
            "every write asks for its row count: no extra request"
        );
    }

    #[test]
    fn a_put_whose_row_the_database_skipped_is_reported_unchanged_not_silently_applied() {
        // a BEFORE trigger returning null: PostgREST answers 201 with */0 (or */1 of two rows)
        let transaction = Transaction {
            transaction_id: Some(json!(3)),
            entries: vec![
                entry(Op::Put, "a", json!({"x": 1})),
                entry(Op::Patch, "a", json!({"x": 2})),
                entry(Op::Put, "b", json!({"y": 1})),
                entry(Op::Put, "c", json!({"y": 2})),
            ],
        };
        let transport = FakeTransport::scripted(vec![counted(201, 0), counted(204, 1), counted(201, 1)]);
        let report = run(std::slice::from_ref(&transaction), &settings(), &transport);
        assert_eq!(transport.sent().len(), 3, "b and c share one upsert");
        assert_eq!(statuses(&report), vec![Status::Success]);
        assert_eq!(report.results[0].unchanged, vec![0, 2, 3], "one of b and c: the count cannot say which");
    }

    fn conflict_settings() -> UploadSettings {
        let mut s = settings();
        s.conflict_detection = true;
        s
    }

    /// A PATCH of row `a` from title "seen" to "mine" (with its previous values).
    fn stale_patch() -> Entry {
        let mut patch = entry(Op::Patch, "a", json!({"title": "mine"}));
        patch.previous = Some(json!({"title": "seen", "done": 0}).as_object().cloned().unwrap_or_default().into());
        patch
    }

    fn rows(rows: Value) -> Answer {
        ok_body(&rows.to_string())
    }

    #[test]
    fn a_resend_never_takes_the_reads_reserved_for_a_later_compared_write() {
        // Budget 6 = the plan's worst case: PUT (1), DELETE (1), compared PATCH (4: the write and
        // three reads when it changes no row). The PUT's connection is lost: sending it again
        // would leave the PATCH without its reads (counted as one request each, it did, and the
        // PATCH ended `conflict_check_budget` after the DELETE had applied). It waits instead.
        let mut s = conflict_settings();
        s.subrequest_budget = 6;
        let transaction = Transaction {
            transaction_id: Some(json!(1)),
            entries: vec![entry(Op::Put, "p", json!({"x": 1})), entry(Op::Delete, "d", Value::Null), stale_patch()],
        };
        let transport = FakeTransport::scripted(vec![
            lost(),
            counted(201, 1),
            counted(204, 1),
            counted(204, 0),
            rows(json!([{"id": "a", "title": "theirs"}])),
            rows(json!([])),
            rows(json!([])),
        ]);
        let report = run(&[transaction], &s, &transport);
        assert_eq!(statuses(&report), vec![Status::RetryableError]);
        let failure = failure_of(&report, 0);
        assert_ne!(failure.code, "conflict_check_budget", "{failure:?}");
        assert_eq!(failure.index, Some(0), "{failure:?}");
        assert_eq!(transport.sent().len(), 1, "nothing after the lost PUT: its re-send would eat the reads");
    }

    #[test]
    fn a_compared_write_is_sent_again_only_with_room_for_its_own_reads() {
        // Budget 4 = the compared PATCH's write and its three reads. Its connection is lost: a
        // second send would leave two reads, and a zero-row answer then could not be told apart
        // (conflict_check_budget after a wasted request). It waits for the next upload instead.
        let mut s = conflict_settings();
        s.subrequest_budget = 4;
        let transaction = Transaction { transaction_id: Some(json!(1)), entries: vec![stale_patch()] };
        let transport = FakeTransport::scripted(vec![lost(), counted(204, 0), rows(json!([]))]);
        let report = run(&[transaction], &s, &transport);
        assert_eq!(statuses(&report), vec![Status::RetryableError]);
        assert_eq!(failure_of(&report, 0).code, "network_error");
        assert_eq!(transport.sent().len(), 1);
    }

    #[test]
    fn with_conflict_detection_a_patch_applies_only_where_the_row_holds_the_previous_values() {
        let transport = FakeTransport::scripted(vec![counted(204, 1)]);
        let transaction = Transaction { transaction_id: Some(json!(1)), entries: vec![stale_patch()] };
        let report = run(&[transaction], &conflict_settings(), &transport);
        assert_eq!(statuses(&report), vec![Status::Success]);
        let sent = transport.sent();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].url, "https://p.supabase.co/rest/v1/todos?id=eq.a&title=eq.seen");
        assert_eq!(sent[0].body.as_deref(), Some(r#"{"title":"mine"}"#), "only the changed column is compared and set");
    }

    #[test]
    fn a_conditional_write_that_changed_no_row_of_a_changed_row_is_a_conflict_and_stops_the_transaction() {
        let transport = FakeTransport::scripted(vec![
            counted(204, 0),
            rows(json!([{"id": "a", "title": "theirs"}])),
            rows(json!([])),
            rows(json!([])),
        ]);
        let transaction = Transaction {
            transaction_id: Some(json!(4)),
            entries: vec![stale_patch(), entry(Op::Put, "b", json!({"x": 1}))],
        };
        let report = run(&[transaction, tx(5)], &conflict_settings(), &transport);
        assert_eq!(statuses(&report), vec![Status::Conflict, Status::Success]);
        let result = report.body()["results"][0].clone();
        assert_eq!(
            (result["status"].clone(), result["failed_operation"]["index"].clone()),
            (json!("conflict"), json!(0))
        );
        assert_eq!(result["failed_operation"]["code"], json!("conflict"));
        assert_eq!(result["failed_operation"]["details"], Value::Null, "the server's row is not sent back");
        let urls: Vec<String> = transport.sent().iter().map(|r| r.url.clone()).collect();
        assert_eq!(
            urls[..4],
            [
                "https://p.supabase.co/rest/v1/todos?id=eq.a&title=eq.seen".to_string(),
                "https://p.supabase.co/rest/v1/todos?id=eq.a&select=*".to_string(),
                "https://p.supabase.co/rest/v1/todos?id=eq.a&title=eq.mine&select=id".to_string(),
                "https://p.supabase.co/rest/v1/todos?id=eq.a&title=eq.seen&select=id".to_string(),
            ]
        );
        assert_eq!(urls.len(), 5, "the PUT after the conflicting entry is not sent; tx 5 is");
        assert!(!report.needs_retry());
    }

    #[test]
    fn a_conditional_write_of_a_gone_row_is_unchanged_and_of_a_row_already_holding_its_values_is_applied() {
        let transport = FakeTransport::scripted(vec![
            counted(204, 0),
            rows(json!([])),
            counted(204, 0),
            rows(json!([{"id": "a", "title": "mine"}])),
            rows(json!([{"id": "a"}])),
        ]);
        let gone = Transaction { transaction_id: Some(json!(1)), entries: vec![stale_patch()] };
        let own = Transaction { transaction_id: Some(json!(2)), entries: vec![stale_patch()] };
        let report = run(&[gone, own], &conflict_settings(), &transport);
        assert_eq!(statuses(&report), vec![Status::Success, Status::Success]);
        assert_eq!(report.results[0].unchanged, vec![0]);
        assert!(report.results[1].unchanged.is_empty(), "its own earlier application is no conflict");
    }

    #[test]
    fn a_conditional_write_of_a_row_that_still_holds_the_previous_values_is_unchanged_not_a_conflict() {
        // Readable, not changed by anyone, yet the write changed no row: a policy for UPDATE
        // (or DELETE) that the SELECT policy does not share, or a trigger, refused it.
        let transport = FakeTransport::scripted(vec![
            counted(204, 0),
            rows(json!([{"id": "a", "title": "seen"}])),
            rows(json!([])),
            rows(json!([{"id": "a"}])),
        ]);
        let transaction = Transaction { transaction_id: Some(json!(1)), entries: vec![stale_patch()] };
        let report = run(&[transaction], &conflict_settings(), &transport);
        assert_eq!(statuses(&report), vec![Status::Success]);
        assert_eq!(report.results[0].unchanged, vec![0]);
        assert_eq!(transport.sent()[3].url, "https://p.supabase.co/rest/v1/todos?id=eq.a&title=eq.seen&select=id");
    }

    #[test]
    fn a_conflict_is_dead_lettered_with_the_clients_entry_and_the_servers_row() {
        let mut s = conflict_settings();
        s.dead_letter_table = Some("dead".to_string());
        let mut delete = entry(Op::Delete, "a", Value::Null);
        delete.previous =
            Some(json!({"id": "a", "title": "seen", "note": null}).as_object().cloned().unwrap_or_default().into());
        let transport = FakeTransport::scripted(vec![
            counted(204, 0),
            rows(json!([{"id": "a", "title": "theirs", "note": null}])),
            rows(json!([])),
            recorded(),
        ]);
        let report = run(&[Transaction { transaction_id: Some(json!(3)), entries: vec![delete] }], &s, &transport);
        assert_eq!(statuses(&report), vec![Status::Conflict]);
        let sent = transport.sent();
        assert_eq!(sent[0].url, "https://p.supabase.co/rest/v1/todos?id=eq.a&note=is.null&title=eq.seen");
        assert_eq!(sent.len(), 4, "a DELETE has no new values to compare: two reads");
        let body: Value = serde_json::from_str(sent[3].body.as_deref().unwrap_or("")).unwrap_or(Value::Null);
        assert_eq!(body["code"], json!("conflict"));
        assert_eq!(body["entry"]["previous_values"], json!({"id": "a", "title": "seen", "note": null}));
        let server: Value = serde_json::from_str(body["details"].as_str().unwrap_or("")).unwrap_or(Value::Null);
        assert_eq!(server, json!({"id": "a", "title": "theirs", "note": null}));
        assert_eq!(report.dead_letters, 1);
    }

    #[test]
    fn in_service_mode_a_conflicts_dead_letter_keeps_only_the_columns_the_entry_writes() {
        // Read with the service key: the user, who can read their own dead letters, must not
        // learn the row's other columns through it, nor a column they name only among their
        // previous values (`done` here: a client chooses what it compares).
        let mut s = conflict_settings();
        s.dead_letter_table = Some("dead".to_string());
        s.mode = WriteMode::Service { service_key: "svc".to_string(), owner_column: "owner".to_string() };
        let transport = FakeTransport::scripted(vec![
            counted(204, 0),
            rows(json!([{"id": "a", "title": "theirs", "done": 1, "owner": "user-1", "internal_score": 7}])),
            rows(json!([])),
            rows(json!([])),
            recorded(),
        ]);
        let report =
            run(&[Transaction { transaction_id: Some(json!(3)), entries: vec![stale_patch()] }], &s, &transport);
        assert_eq!(statuses(&report), vec![Status::Conflict]);
        let sent = transport.sent();
        let body: Value = serde_json::from_str(sent[4].body.as_deref().unwrap_or("")).unwrap_or(Value::Null);
        let server: Value = serde_json::from_str(body["details"].as_str().unwrap_or("")).unwrap_or(Value::Null);
        assert_eq!(server, json!({"id": "a", "title": "theirs"}));
    }

    #[test]
    fn without_conflict_detection_previous_values_change_nothing() {
        let transport = FakeTransport::scripted(vec![counted(204, 0)]);
        let report = run(
            &[Transaction { transaction_id: Some(json!(1)), entries: vec![stale_patch()] }],
            &settings(),
            &transport,
        );
        assert_eq!(statuses(&report), vec![Status::Success]);
        assert_eq!(report.results[0].unchanged, vec![0]);
        assert_eq!(transport.sent()[0].url, "https://p.supabase.co/rest/v1/todos?id=eq.a");
    }

    #[test]
    fn compared_entries_go_through_the_atomic_function_on_the_atomic_route() {
        let mut s = conflict_settings();
        s.atomic = AtomicMode::Always;
        let transport = FakeTransport::scripted(vec![ok_body(r#"{"applied":1}"#), ok_body(r#"{"applied":1}"#)]);
        let plain =
            Transaction { transaction_id: Some(json!(2)), entries: vec![entry(Op::Patch, "b", json!({"x": 1}))] };
        let report =
            run(&[Transaction { transaction_id: Some(json!(1)), entries: vec![stale_patch()] }, plain], &s, &transport);
        assert_eq!(statuses(&report), vec![Status::Success, Status::Success]);
        let sent = transport.sent();
        assert!(sent.iter().all(|r| r.url.ends_with("/rpc/powersync_apply_transaction")));
        let body = |i: usize| serde_json::from_str::<Value>(sent[i].body.as_deref().unwrap_or("")).unwrap_or_default();
        assert_eq!(body(0)["ops"][0]["expect"], json!({"title": "seen"}), "only the changed column is compared");
        assert_eq!(body(0)["detect_conflicts"], json!(true));
        assert_eq!(body(1).get("detect_conflicts"), None, "without previous values: the call as before");
    }

    #[test]
    fn an_atomic_conflict_applies_nothing_and_is_dead_lettered_with_both_sides() {
        let mut s = conflict_settings();
        s.atomic = AtomicMode::Always;
        s.dead_letter_table = Some("powersync_dead_letters".to_string());
        let conflict = r#"{"applied":0,"conflict":{"index":1,"row":{"id":"a","title":"theirs"}}}"#;
        let transport = FakeTransport::scripted(vec![ok_body(conflict), recorded(), ok_body(r#"{"applied":1}"#)]);
        let first = Transaction {
            transaction_id: Some(json!(1)),
            entries: vec![entry(Op::Put, "p", json!({"x": 1})), stale_patch(), entry(Op::Delete, "q", json!(null))],
        };
        let report = run(&[first, tx(2)], &s, &transport);
        assert_eq!(statuses(&report), vec![Status::Conflict, Status::Success], "a conflict is final: the next goes on");
        let result = report.results[0].to_json();
        assert_eq!(
            (&result["failed_operation"]["code"], &result["failed_operation"]["index"]),
            (&json!("conflict"), &json!(1))
        );
        assert!(!result.to_string().contains("theirs"), "the server's row is not in the response: {result}");
        let sent = transport.sent();
        assert!(sent[1].url.ends_with("/rpc/powersync_record_dead_letter"));
        let record: Value = serde_json::from_str(sent[1].body.as_deref().unwrap_or("")).unwrap_or_default();
        assert_eq!((&record["code"], &record["op_index"]), (&json!("conflict"), &json!(1)));
        let states: Vec<&Value> =
            record["entries"].as_array().map(|e| e.iter().map(|e| &e["state"]).collect()).unwrap_or_default();
        assert_eq!(states, vec!["failed"; 3], "rolled back as a whole: a replay applies every entry");
        assert!(
            record["entries"][1].get("expect").is_none(),
            "entries are the ops without expect (the ledger's digest)"
        );
        assert_eq!(record["entry"]["previous_values"], json!({"title": "seen", "done": 0}));
        let server: Value = serde_json::from_str(record["details"].as_str().unwrap_or("")).unwrap_or_default();
        assert_eq!(server, json!({"id": "a", "title": "theirs"}));
    }

    #[test]
    fn an_atomic_re_send_after_a_lost_answer_is_already_applied_not_a_conflict() {
        let mut s = conflict_settings();
        s.atomic = AtomicMode::Always;
        let transport = FakeTransport::scripted(vec![ok_body(r#"{"applied":0,"already_applied":true}"#)]);
        let report =
            run(&[Transaction { transaction_id: Some(json!(1)), entries: vec![stale_patch()] }], &s, &transport);
        assert_eq!(statuses(&report), vec![Status::Success]);
        assert!(report.results[0].already_applied);
    }

    #[test]
    fn an_atomic_function_older_than_conflict_detection_means_rest_with_comparison() {
        // the copy without detect_conflicts: PostgREST finds no function with that argument
        let transport = FakeTransport::scripted(vec![
            error(
                404,
                "PGRST202",
                "Could not find the function public.powersync_apply_transaction(detect_conflicts, ops)",
            ),
            counted(204, 1),
        ]);
        let transaction = Transaction { transaction_id: Some(json!(1)), entries: vec![stale_patch()] };
        let report = run_with(Route::Probe, &conflict_settings(), &[transaction], &transport);
        assert_eq!(statuses(&report), vec![Status::Success]);
        assert_eq!(report.atomic_function, Some(false));
        assert_eq!(transport.sent()[1].url, "https://p.supabase.co/rest/v1/todos?id=eq.a&title=eq.seen", "compared");
    }

    #[test]
    fn a_conflict_checked_transaction_waits_for_a_budget_with_room_for_its_reads() {
        let mut s = conflict_settings();
        s.subrequest_budget = 5;
        // tx 1 (one PUT) leaves 4 of 5: the conditional PATCH with its three possible reads needs
        // 4 plus nothing reserved, so it is sent; a second one would need 4 more: not attempted.
        let transport =
            FakeTransport::scripted(vec![counted(201, 1), counted(204, 0), rows(json!([])), counted(204, 1)]);
        let second = Transaction { transaction_id: Some(json!(3)), entries: vec![stale_patch()] };
        let report = run(
            &[tx(1), Transaction { transaction_id: Some(json!(2)), entries: vec![stale_patch()] }, second],
            &s,
            &transport,
        );
        assert_eq!(statuses(&report), vec![Status::Success, Status::Success, Status::NotAttempted]);
        assert_eq!(report.subrequests, 3);
    }

    /// `n` stale PATCHes of rows r0, r1, …
    fn stale_patches(n: usize) -> Vec<Entry> {
        (0..n)
            .map(|i| {
                let mut patch = stale_patch();
                patch.id = format!("r{i}");
                patch
            })
            .collect()
    }

    #[test]
    fn a_conflict_checked_transaction_too_big_for_its_worst_case_is_compared_in_the_atomic_function() {
        let mut s = conflict_settings();
        s.subrequest_budget = 8;
        let entries = stale_patches(3);
        let transport = FakeTransport::scripted(vec![ok_body(r#"{"applied":3}"#)]);
        let report = run(&[Transaction { transaction_id: Some(json!(1)), entries }], &s, &transport);
        assert_eq!(statuses(&report), vec![Status::Success]);
        let sent = transport.sent();
        assert!(sent[0].url.ends_with("/rpc/powersync_apply_transaction"), "3 x 3 > 8: atomic");
        let body: Value = serde_json::from_str(sent[0].body.as_deref().unwrap_or("")).unwrap_or_default();
        assert_eq!((&body["detect_conflicts"], &body["ops"][2]["expect"]), (&json!(true), &json!({"title": "seen"})));
    }

    fn put_then_patch_of_a_gone_row() -> Transaction {
        Transaction {
            transaction_id: Some(json!("u")),
            entries: vec![entry(Op::Put, "a", json!({"x": 1})), entry(Op::Patch, "gone", json!({"x": 2}))],
        }
    }

    #[test]
    fn unchanged_entries_are_not_dead_lettered_by_default() {
        let mut s = settings();
        s.dead_letter_table = Some("dead".to_string());
        let transport = FakeTransport::scripted(vec![counted(201, 1), counted(204, 0)]);
        let report = run(&[put_then_patch_of_a_gone_row()], &s, &transport);
        assert_eq!(statuses(&report), vec![Status::Success]);
        assert_eq!(report.results[0].unchanged, vec![1]);
        assert_eq!(transport.sent().len(), 2, "no record");
        assert_eq!(report.dead_letters, 0);
    }

    #[test]
    fn with_upload_dead_letter_unchanged_a_transaction_that_changed_nothing_somewhere_is_recorded() {
        let s = recording_unchanged();
        let transport = FakeTransport::scripted(vec![counted(201, 1), counted(204, 0), recorded()]);
        let report = run(&[put_then_patch_of_a_gone_row(), tx(2)], &s, &transport);
        assert_eq!(statuses(&report), vec![Status::Success, Status::Success]);
        assert_eq!(report.results[0].unchanged, vec![1]);
        assert_eq!(report.dead_letters, 1);
        let body: Value =
            serde_json::from_str(transport.sent()[2].body.as_deref().unwrap_or("")).unwrap_or(Value::Null);
        assert!(transport.sent()[2].url.ends_with(RECORD_PATH));
        assert_eq!((body["code"].clone(), body["op_index"].clone()), (json!("unchanged"), json!(1)));
        assert_eq!(states_of(&body), vec!["applied", "unchanged"]);
        assert_eq!(transport.sent().len(), 4, "tx 2 after the record, not recorded itself");
    }

    #[test]
    fn a_merged_patch_that_changed_some_of_its_rows_records_its_entries_applied_not_unchanged() {
        // Two PATCHes go as one `id=in.(a,gone)` and change one row: the count cannot say which,
        // so both are reported unchanged, but the record must not have a replay send PATCH a
        // again over a newer value of its row. Alone, they make no record (nothing to replay).
        let s = recording_unchanged();
        let patches =
            vec![entry(Op::Patch, "a", json!({"done": true})), entry(Op::Patch, "gone", json!({"done": true}))];
        let merged = Transaction { transaction_id: Some(json!("m")), entries: patches.clone() };
        let transport = FakeTransport::scripted(vec![counted(204, 1)]);
        let report = run(&[merged], &s, &transport);
        assert_eq!(statuses(&report), vec![Status::Success]);
        assert_eq!(report.results[0].unchanged, vec![0, 1]);
        assert_eq!((transport.sent().len(), report.dead_letters), (1, 0), "no record of nothing to replay");
        // With a DELETE that surely changed nothing after them: recorded, at that DELETE.
        let mut entries = patches;
        entries.push(entry(Op::Delete, "gone-too", Value::Null));
        let mixed = Transaction { transaction_id: Some(json!("n")), entries };
        let transport = FakeTransport::scripted(vec![counted(204, 1), counted(204, 0), recorded()]);
        let report = run(&[mixed], &s, &transport);
        assert_eq!(report.results[0].unchanged, vec![0, 1, 2]);
        let body = dead_letter_body(&transport);
        assert_eq!(states_of(&body), vec!["applied", "applied", "unchanged"]);
        assert_eq!(body["op_index"], json!(2));
        assert!(body["message"].as_str().unwrap_or("").contains("may have changed its own"), "{body}");
    }

    #[test]
    fn an_atomic_re_send_reports_the_unchanged_entries_the_ledger_recorded_and_records_their_letter() {
        // The first call's answer was lost; the ledger kept what it changed nothing of.
        let mut s = recording_unchanged();
        s.atomic = AtomicMode::Always;
        let transport = FakeTransport::scripted(vec![
            ok_body(r#"{"applied": 0, "already_applied": true, "unchanged": [1]}"#),
            recorded(),
        ]);
        let caller = Caller { client_id: Some("client-1".to_string()), ..caller() };
        let report = block_on(apply(&[put_then_patch_of_a_gone_row()], &s, &caller, &transport));
        assert_eq!(statuses(&report), vec![Status::Success]);
        assert_eq!(
            report.body()["results"][0],
            json!({"status": "success", "transaction_id": "u", "already_applied": true, "unchanged": [1]})
        );
        assert_eq!(report.dead_letters, 1);
        let body: Value =
            serde_json::from_str(transport.sent()[1].body.as_deref().unwrap_or("")).unwrap_or(Value::Null);
        assert!(transport.sent()[1].url.ends_with(RECORD_PATH));
        assert_eq!((body["code"].clone(), body["op_index"].clone()), (json!("unchanged"), json!(1)));
        assert_eq!(states_of(&body), vec!["applied", "unchanged"]);
    }

    #[test]
    fn failed_record_of_unchanged_entries_keeps_the_success_and_is_logged() {
        let s = recording_unchanged();
        let transport =
            FakeTransport::scripted(vec![counted(201, 1), counted(204, 0), error(404, "PGRST202", "no function")]);
        let report = run(&[put_then_patch_of_a_gone_row()], &s, &transport);
        assert_eq!(
            statuses(&report),
            vec![Status::Success],
            "applied is applied: re-sending would not record it better"
        );
        assert_eq!(report.results[0].unchanged, vec![1], "the client still learns it");
        assert_eq!((report.dead_letters, report.dead_letter_failures), (0, 1));
        assert!(report.dead_letter_errors[0].contains("PGRST202"), "{:?}", report.dead_letter_errors);
        assert!(!report.needs_retry());
    }

    #[test]
    fn merged_delete_short_of_its_ids_reports_every_entry_of_its_group() {
        let deletes = |ids: &[&str]| Transaction {
            transaction_id: Some(json!(1)),
            entries: ids.iter().map(|id| entry(Op::Delete, id, Value::Null)).collect(),
        };
        // one request, id=in.(a,b,c): the count cannot say which id matched nothing
        let transport = FakeTransport::scripted(vec![counted(204, 2)]);
        let report = run(&[deletes(&["a", "b", "c"])], &settings(), &transport);
        assert_eq!(transport.sent().len(), 1);
        assert_eq!(report.results[0].unchanged, vec![0, 1, 2]);
        let transport = FakeTransport::scripted(vec![counted(204, 3)]);
        assert_eq!(
            run(&[deletes(&["a", "b", "c"])], &settings(), &transport).results[0].unchanged,
            Vec::<usize>::new()
        );
        // the same row twice is one row: deleting it once is all there is to change
        let transport = FakeTransport::scripted(vec![counted(204, 1)]);
        assert_eq!(run(&[deletes(&["a", "a"])], &settings(), &transport).results[0].unchanged, Vec::<usize>::new());
        // a merged PATCH group with a data-less PATCH in between: only the ids sent are listed
        let transaction = Transaction {
            transaction_id: None,
            entries: vec![
                entry(Op::Patch, "a", json!({"done": true})),
                entry(Op::Patch, "b", json!({})),
                entry(Op::Patch, "c", json!({"done": true})),
            ],
        };
        let transport = FakeTransport::scripted(vec![counted(204, 0)]);
        let report = run(&[transaction], &settings(), &transport);
        assert_eq!(transport.sent().len(), 1);
        assert_eq!(report.results[0].unchanged, vec![0, 2]);
    }

    #[test]
    fn atomic_functions_unchanged_ops_are_reported() {
        let transport = FakeTransport::scripted(vec![ok_body(r#"{"applied": 2, "unchanged": [1]}"#)]);
        let transaction = Transaction {
            transaction_id: Some(json!(3)),
            entries: vec![entry(Op::Put, "a", json!({})), entry(Op::Delete, "b", Value::Null)],
        };
        let report = run_on(Route::Atomic, &[transaction], &transport);
        assert_eq!(report.body()["results"][0], json!({"status": "success", "transaction_id": 3, "unchanged": [1]}));
    }

    fn permission_denied(object: &str) -> Answer {
        error(403, "42501", &format!("permission denied for {object}"))
    }

    #[test]
    fn permission_denied_for_table_is_retryable_and_never_dead_lettered() {
        let mut s = settings();
        s.dead_letter_table = Some("dead".to_string());
        let transport = FakeTransport::scripted(vec![permission_denied("table todos")]);
        let report = run(&[tx(1), tx(2)], &s, &transport);
        assert_eq!(statuses(&report), vec![Status::RetryableError, Status::NotAttempted]);
        assert_eq!(report.results[0].retry_after_ms, Some(60_000));
        assert!(report.retry_after_seconds >= 60);
        let failure = failure_of(&report, 0);
        assert_eq!(failure.code, "42501");
        assert!(failure
            .message
            .contains("grant select, insert, update, delete on table public.todos to authenticated"));
        assert_eq!(
            (transport.sent().len(), report.dead_letters),
            (1, 0),
            "no dead letter: nothing was refused for good"
        );
        // service mode: the service role's GRANT
        let transport = FakeTransport::scripted(vec![ok_body("[]"), permission_denied("table todos")]);
        let report = run(&[tx(1)], &service(), &transport);
        assert!(failure_of(&report, 0).message.contains("on table public.todos to service_role; "));
    }

    #[test]
    fn row_refused_by_row_level_security_stays_fatal() {
        let transport = FakeTransport::scripted(vec![error(
            403,
            "42501",
            "new row violates row-level security policy for table \"todos\"",
        )]);
        let report = run(&[tx(1)], &settings(), &transport);
        assert_eq!(statuses(&report), vec![Status::FatalError]);
    }

    #[test]
    fn probe_of_a_function_the_role_may_not_execute_applies_the_upload_through_rest() {
        let transport =
            FakeTransport::scripted(vec![permission_denied("function powersync_apply_transaction"), ok(201), ok(201)]);
        let report = run_on(Route::Probe, &[tx(1), tx(2)], &transport);
        assert_eq!(statuses(&report), vec![Status::Success, Status::Success]);
        assert_eq!(report.atomic_function, None, "the caller's role's GRANT, not the isolate's to remember");
        assert!(report.atomic_function_not_executable);
        assert_eq!(report.log_summary()["atomic_function"], json!("not_executable"));
        let sent: Vec<String> = transport.sent().iter().map(|r| r.url.clone()).collect();
        assert_eq!(sent.len(), 3, "one failed call, then both transactions through REST: {sent:?}");
        assert!(sent[1..].iter().all(|url| url.ends_with("/rest/v1/todos?on_conflict=id")), "{sent:?}");
        // the ledger's function is another GRANT: the transaction waits for it
        let transport = FakeTransport::scripted(vec![permission_denied("function powersync_upload_ledger_claim")]);
        let report = run_on(Route::Probe, &[tx(1)], &transport);
        assert_eq!(statuses(&report), vec![Status::RetryableError]);
        assert_eq!(report.atomic_function, Some(true));
    }

    #[test]
    fn forced_atomic_route_waits_for_a_missing_execute_grant_naming_it() {
        let transport = FakeTransport::scripted(vec![permission_denied("function powersync_apply_transaction")]);
        let report = run_on(Route::Atomic, &[tx(1), tx(2)], &transport);
        assert_eq!(statuses(&report), vec![Status::RetryableError, Status::NotAttempted]);
        assert_eq!(report.results[0].retry_after_ms, Some(60_000));
        assert!(failure_of(&report, 0)
            .message
            .ends_with("grant execute on function public.powersync_apply_transaction to authenticated"));
    }

    #[test]
    fn a_missing_grant_names_the_custom_role_the_session_runs_as_in_rls_mode_only() {
        // An access-token hook's role, granted by hand: a function a new SQL version adds is
        // missing for it, and granting it to authenticated (which has it) would change nothing.
        let premium = Caller { role: Some("premium".to_string()), ..caller() };
        let transport = FakeTransport::scripted(vec![permission_denied("function powersync_upload_row_key")]);
        let report = block_on(apply(&[tx(1)], &settings(), &premium, &transport));
        assert!(failure_of(&report, 0)
            .message
            .ends_with("grant execute on function public.powersync_upload_row_key to premium"));
        let mut service = settings();
        service.mode = WriteMode::Service { service_key: "svc".to_string(), owner_column: "user_id".to_string() };
        let transport = FakeTransport::scripted(vec![permission_denied("table todos")]);
        let report = block_on(apply(&[tx(1)], &service, &premium, &transport));
        assert!(
            failure_of(&report, 0).message.contains("on table public.todos to service_role"),
            "the service key's role"
        );
    }

    #[test]
    fn too_big_transaction_whose_function_may_not_be_executed_waits_instead_of_being_refused() {
        let mut s = settings();
        s.subrequest_budget = 3;
        s.dead_letter_table = Some("dead".to_string());
        let transport = FakeTransport::scripted(vec![permission_denied("function powersync_apply_transaction")]);
        let report = run(&[big(4)], &s, &transport);
        assert_eq!(statuses(&report), vec![Status::RetryableError]);
        assert_eq!(failure_of(&report, 0).code, "42501");
        assert_eq!(report.dead_letters, 0);
    }

    // --- issue 15 item 9: an atomic call cancelled by the statement timeout

    fn statement_timeout() -> Answer {
        error(500, "57014", "canceling statement due to statement timeout")
    }

    /// PUT a, PUT b (other columns), DELETE c: three REST requests, one atomic call.
    fn mixed(id: &str) -> Transaction {
        Transaction {
            transaction_id: Some(json!(id)),
            entries: vec![
                entry(Op::Put, "a", json!({"x": 1})),
                entry(Op::Put, "b", json!({"y": 2})),
                entry(Op::Delete, "c", Value::Null),
            ],
        }
    }

    #[test]
    fn a_too_big_transaction_sent_to_the_function_off_the_atomic_route_has_its_rejection_recorded() {
        let mut s = settings();
        s.subrequest_budget = 3;
        let refused = error(400, "23514", "check");
        let transport = FakeTransport::scripted(vec![refused]);
        let report = run_with(Route::Rest, &s, &[big(4)], &transport);
        assert_eq!(statuses(&report), vec![Status::FatalError]);
        let sent = transport.sent();
        assert!(sent[0].url.ends_with("/rpc/powersync_apply_transaction"), "four PATCHes do not fit in 3");
        assert!(sent[1].url.ends_with(REJECT_PATH), "a late copy of that call could apply it");
    }

    #[test]
    fn once_the_function_is_known_missing_nothing_is_kept_for_its_ledger() {
        // Three REST requests fit the budget of 3 beside nothing: the probe's call took one, so
        // the transaction waits for the next upload, as before (not refused as too big).
        let mut s = settings();
        s.subrequest_budget = 3;
        let transport = FakeTransport::scripted(vec![missing_function()]);
        let report = run_with(Route::Probe, &s, &[mixed("m")], &transport);
        assert_eq!(statuses(&report), vec![Status::NotAttempted]);
        let transport = FakeTransport::default();
        let report = run_with(Route::Rest, &s, &[mixed("m")], &transport);
        assert_eq!((statuses(&report), report.subrequests), (vec![Status::Success], 3));
    }

    #[test]
    fn a_timed_out_call_whose_rest_requests_leave_no_room_to_record_a_rejection_names_the_ledger() {
        let mut s = settings();
        s.subrequest_budget = 4;
        let transport = FakeTransport::scripted(vec![statement_timeout()]);
        let report = run_with(Route::Probe, &s, &[mixed("big")], &transport);
        assert_eq!(statuses(&report), vec![Status::RetryableError]);
        let failure = report.results[0].failed_operation.clone().expect("failure");
        assert!(
            failure.message.contains(
                "3 requests, one to mark it in the ledger first, plus one to record a rejection in the atomic \
                 function's ledger"
            ),
            "{}",
            failure.message
        );
        assert!(!failure.message.contains("dead-letter"), "{}", failure.message);
    }

    // The ledger's record of a rejection: which transactions get one, and its budget.
    #[test]
    fn a_rest_conflict_off_the_function_is_not_recorded_in_the_ledger() {
        let transport = FakeTransport::scripted(vec![
            counted(204, 0),
            rows(json!([{"id": "a", "title": "theirs"}])),
            rows(json!([])),
            rows(json!([])),
        ]);
        let transaction = Transaction { transaction_id: Some(json!(4)), entries: vec![stale_patch()] };
        let report = run_with(Route::Rest, &conflict_settings(), &[transaction], &transport);
        assert_eq!(statuses(&report), vec![Status::Conflict]);
        assert!(transport.sent().iter().all(|r| !r.url.ends_with(REJECT_PATH)), "{:?}", transport.sent());
        assert_eq!(transport.sent().len(), 4);
    }

    #[test]
    fn a_too_big_conflict_sent_to_the_function_off_the_atomic_route_has_its_rejection_recorded() {
        let mut s = conflict_settings();
        s.subrequest_budget = 8;
        let entries = stale_patches(3);
        let conflict = r#"{"applied": 0, "conflict": {"index": 0, "row": {"id": "r0", "title": "theirs"}}}"#;
        let transport = FakeTransport::scripted(vec![ok_body(conflict), ok_body("true")]);
        let report = run_with(Route::Rest, &s, &[Transaction { transaction_id: Some(json!(1)), entries }], &transport);
        assert_eq!(statuses(&report), vec![Status::Conflict]);
        let sent = transport.sent();
        assert!(sent[0].url.ends_with("/rpc/powersync_apply_transaction"));
        assert_eq!(sent.len(), 2);
        assert!(sent[1].url.ends_with(REJECT_PATH), "a late copy of that call could apply it");
    }

    #[test]
    fn a_transaction_refused_before_sending_on_the_atomic_route_is_recorded_in_the_ledger() {
        let mut empty_id = tx(1);
        empty_id.entries[0].id = String::new();
        let transport = FakeTransport::scripted(vec![ok_body("true")]);
        let report = run_with(Route::Atomic, &settings(), &[empty_id], &transport);
        assert_eq!(statuses(&report), vec![Status::FatalError]);
        assert_eq!(failure_of(&report, 0).code, "invalid_id");
        let sent = transport.sent();
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert!(sent[0].url.ends_with(REJECT_PATH), "an earlier attempt's atomic call may arrive late");
    }

    #[test]
    fn the_ledger_call_is_sent_again_once_when_its_connection_is_lost_and_room_is_left() {
        let transport = FakeTransport::scripted(vec![atomic_refusal(), lost(), ok_body("true")]);
        let report = run_on(Route::Atomic, &[tx(1)], &transport);
        assert_eq!(statuses(&report), vec![Status::FatalError]);
        assert_eq!((transport.sent().len(), report.subrequests, report.resent), (3, 3, 1));
    }

    #[test]
    fn the_ledger_call_is_not_sent_again_past_the_budget() {
        let mut s = settings();
        s.subrequest_budget = 2;
        let transport = FakeTransport::scripted(vec![atomic_refusal(), lost(), ok_body("true")]);
        let report = run_with(Route::Atomic, &s, &[tx(1)], &transport);
        assert_eq!(statuses(&report), vec![Status::RetryableError]);
        assert_eq!(failure_of(&report, 0).code, "rejection_not_recorded");
        assert_eq!((transport.sent().len(), report.subrequests, report.resent), (2, 2, 0));
    }

    #[test]
    fn too_big_names_the_rejections_reserve_only_when_one_is_kept() {
        let mut s = settings();
        s.subrequest_budget = 3;
        let transport = FakeTransport::scripted(vec![missing_function()]);
        let report = run_with(Route::Rest, &s, &[big(4)], &transport);
        let failure = failure_of(&report, 0);
        assert_eq!(failure.code, "too_many_requests_for_budget");
        assert!(
            failure.message.contains("needs 4 upstream requests plus one to record its rejection,"),
            "{}",
            failure.message
        );
        let transport = FakeTransport::scripted(vec![missing_function()]);
        let report = block_on(apply_with(&[big(4)], &s, &caller(), &transport, Route::Rest));
        let failure = failure_of(&report, 0);
        assert_eq!(failure.code, "too_many_requests_for_budget");
        assert!(failure.message.contains("needs 4 upstream requests, more than"), "{}", failure.message);
    }

    fn run_with(
        route: Route,
        settings: &UploadSettings,
        transactions: &[Transaction],
        transport: &FakeTransport,
    ) -> UploadReport {
        let caller = Caller { client_id: Some("client-1".to_string()), ..caller() };
        block_on(apply_with(transactions, settings, &caller, transport, route))
    }

    #[test]
    fn atomic_call_cancelled_by_the_statement_timeout_is_applied_through_rest_and_says_so() {
        let transport = FakeTransport::scripted(vec![
            statement_timeout(),
            begun(),
            ok(201),
            ok(201),
            ok(204),
            ok_body("true"),
            ok_body(r#"{"applied": 1}"#),
        ]);
        let report = run_on(Route::Probe, &[mixed("big"), tx(2)], &transport);
        assert_eq!(statuses(&report), vec![Status::Success, Status::Success]);
        let sent = transport.sent();
        let urls: Vec<&str> = sent.iter().map(|r| r.url.as_str()).collect();
        assert_eq!(
            urls,
            vec![
                "https://p.supabase.co/rest/v1/rpc/powersync_apply_transaction",
                "https://p.supabase.co/rest/v1/rpc/powersync_upload_ledger_rest_begin",
                "https://p.supabase.co/rest/v1/todos?on_conflict=id",
                "https://p.supabase.co/rest/v1/todos?on_conflict=id",
                "https://p.supabase.co/rest/v1/todos?id=eq.c",
                "https://p.supabase.co/rest/v1/rpc/powersync_upload_ledger_applied_via_rest",
                "https://p.supabase.co/rest/v1/rpc/powersync_apply_transaction",
            ],
            "marked in the ledger, the REST requests, its record in the ledger, then the next transaction \
             through the function"
        );
        // Marked, then recorded applied, under the digest of its entries, as the user, before the
        // next transaction: meanwhile and afterwards, a copy of the cancelled call (the same
        // entries) applies nothing.
        let mark = &sent[1];
        let body: Value = serde_json::from_str(mark.body.as_deref().unwrap_or("")).unwrap_or(Value::Null);
        assert_eq!((&body["p_client_id"], &body["p_transaction_id"]), (&json!("client-1"), &json!("big")));
        let token = body["p_mark"].as_str().unwrap_or("");
        assert!(
            token.len() == 32 && token.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()),
            "{token}"
        );
        assert_eq!(mark.header_value(crud::ENTRIES_DIGEST_HEADER), sent[0].header_value(crud::ENTRIES_DIGEST_HEADER));
        assert_eq!(mark.header_value("Authorization"), Some("Bearer token"));
        let record = &sent[5];
        assert_eq!(record.body.as_deref(), Some(r#"{"p_client_id":"client-1","p_transaction_id":"big"}"#));
        assert_eq!(record.header_value(plan::REST_MARK_HEADER), Some(token), "the mark's own upload ends it");
        assert_eq!(record.header_value(crud::ENTRIES_DIGEST_HEADER), Some(mixed("big").entries_digest().as_str()));
        assert_eq!(record.header_value(crud::ENTRIES_DIGEST_HEADER), sent[0].header_value(crud::ENTRIES_DIGEST_HEADER));
        assert_eq!(record.header_value("Authorization"), Some("Bearer token"));
        let body = report.body();
        let result = &body["results"][0];
        assert_eq!(result["applied_via"], json!("rest"));
        let reason = result["applied_via_reason"].as_str().unwrap_or("");
        for part in ["statement timeout", "57014", "3 REST requests", "neither all-or-nothing nor exactly once"] {
            assert!(reason.contains(part), "{part:?} in {reason}");
        }
        assert_eq!(body["results"][1], json!({"status": "success", "transaction_id": 2}), "no field when atomic");
        assert_eq!(report.subrequests, 7);
        assert!(report.dead_letter_errors.is_empty(), "{:?}", report.dead_letter_errors);
        assert_eq!(report.atomic_function, Some(true), "the function answered: it is installed");
        assert_eq!(report.log_summary()["applied_via_rest"], json!(1));
        assert!(!report.needs_retry());
    }

    /// The ledger's 57014 for a transaction an earlier upload began through REST and ended before
    /// it was applied (sql/atomic_upload.sql, powersync_upload_ledger_claim).
    fn begun_before() -> Answer {
        error(
            500,
            "57014",
            "transaction big of client client-1 was begun through REST requests by an earlier upload that ended \
             before it was applied: it goes on through REST requests, whose result says which of its entries were \
             applied",
        )
    }

    #[test]
    fn a_transaction_an_earlier_upload_began_through_rest_goes_on_through_rest_and_says_why() {
        let transport =
            FakeTransport::scripted(vec![begun_before(), begun(), ok(201), ok(201), ok(204), ok_body("true")]);
        let report = run_on(Route::Probe, &[mixed("big")], &transport);
        assert_eq!(statuses(&report), vec![Status::Success]);
        let sent = transport.sent();
        let urls: Vec<&str> = sent.iter().map(|r| r.url.as_str()).collect();
        assert_eq!(urls[1], "https://p.supabase.co/rest/v1/rpc/powersync_upload_ledger_rest_begin");
        assert_eq!(urls.len(), 6, "{urls:?}");
        let body = report.body();
        let reason = body["results"][0]["applied_via_reason"].as_str().unwrap_or("");
        for part in ["an earlier upload began applying it through REST requests", "3 REST requests"] {
            assert!(reason.contains(part), "{part:?} in {reason}");
        }
        assert!(!reason.contains("cancelled by the statement timeout"), "{reason}");
    }

    #[test]
    fn with_upload_atomic_true_a_transaction_begun_through_rest_waits_naming_the_setting() {
        let mut s = settings();
        s.atomic = AtomicMode::Always;
        let transport = FakeTransport::scripted(vec![begun_before()]);
        let report = run_with(Route::Atomic, &s, &[mixed("big")], &transport);
        assert_eq!(statuses(&report), vec![Status::RetryableError]);
        let failure = failure_of(&report, 0);
        assert!(failure.message.contains("unset UPLOAD_ATOMIC so that it goes on through REST"), "{}", failure.message);
        assert!(!failure.message.contains("statement_timeout = "), "{}", failure.message);
        assert_eq!(transport.sent().len(), 1, "nothing else sent");
    }

    #[test]
    fn a_rest_fallbacks_unchanged_entries_are_dead_lettered_beside_its_ledger_record() {
        // UPLOAD_DEAD_LETTER_UNCHANGED: the DELETE changes no row. Budget 7 holds the atomic call,
        // the ledger's mark, 3 REST requests, the dead letter of the unchanged entry and the
        // ledger's record, which carries that entry too (a re-send answered already applied
        // reports it again).
        let mut s = recording_unchanged();
        s.subrequest_budget = 7;
        let rest = [statement_timeout(), begun(), ok(201), ok(201), counted(204, 0)];
        let transport = FakeTransport::scripted([rest.to_vec(), vec![recorded(), ok_body("true")]].concat());
        let report = run_with(Route::Probe, &s, &[mixed("big")], &transport);
        assert_eq!(statuses(&report), vec![Status::Success]);
        assert_eq!(report.results[0].unchanged, vec![2]);
        let sent = transport.sent();
        assert!(sent[5].url.ends_with(RECORD_PATH), "{}", sent[5].url);
        assert!(sent[6].url.ends_with("/rpc/powersync_upload_ledger_applied_via_rest"), "{}", sent[6].url);
        let body: Value = serde_json::from_str(sent[6].body.as_deref().unwrap_or("")).unwrap_or(Value::Null);
        assert_eq!(body["p_unchanged"], json!([2]));
        assert_eq!((report.dead_letters, report.subrequests), (1, 7));
        // Budget 6 keeps one request for them: the ledger's record, which ends the mark (without
        // it the transaction would be kept); the dead letter of the unchanged entry is skipped,
        // and the log says so.
        s.subrequest_budget = 6;
        let transport = FakeTransport::scripted([rest.to_vec(), vec![ok_body("true")]].concat());
        let report = run_with(Route::Probe, &s, &[mixed("big")], &transport);
        assert_eq!((statuses(&report), report.dead_letters, report.subrequests), (vec![Status::Success], 0, 6));
        assert!(transport.sent()[5].url.ends_with("/rpc/powersync_upload_ledger_applied_via_rest"));
        let errors = report.log_summary()["dead_letter_errors"].to_string();
        assert!(errors.contains("of unchanged entries skipped"), "{errors}");
        // Unmarked (a ledger older than the worker, without the mark's function): the dead letter
        // comes first, as before, and the ledger's record is skipped, logged.
        let missing = error(404, "PGRST202", "Could not find the function public.powersync_upload_ledger_rest_begin");
        let unmarked = [statement_timeout(), missing, ok(201), ok(201), counted(204, 0), recorded()];
        let transport = FakeTransport::scripted(unmarked.to_vec());
        let report = run_with(Route::Probe, &s, &[mixed("big")], &transport);
        assert_eq!((statuses(&report), report.dead_letters, report.subrequests), (vec![Status::Success], 1, 6));
        let errors = report.log_summary()["dead_letter_errors"].to_string();
        assert!(
            errors.contains("powersync_upload_ledger_applied_via_rest skipped: no subrequest budget left"),
            "{errors}"
        );
        assert!(errors.contains("powersync_upload_ledger_rest_begin missing: run sql/atomic_upload.sql again"));
    }

    #[test]
    fn a_marked_fallbacks_unchanged_dead_letter_never_takes_its_ledger_records_subrequest() {
        // Budget 7: the atomic call, the mark, 3 REST requests, then the dead letter of the
        // unchanged DELETE, whose connection is lost: sent again, it would take the last request,
        // which the ledger's record needs (without it the transaction is kept, and its mark waits).
        let mut s = recording_unchanged();
        s.subrequest_budget = 7;
        let answers = vec![statement_timeout(), begun(), ok(201), ok(201), counted(204, 0), lost(), ok_body("true")];
        let transport = FakeTransport::scripted(answers);
        let report = run_with(Route::Probe, &s, &[mixed("big")], &transport);
        assert_eq!(statuses(&report), vec![Status::Success]);
        let sent = transport.sent();
        assert!(sent[5].url.ends_with(RECORD_PATH), "{}", sent[5].url);
        assert!(sent[6].url.ends_with("/rpc/powersync_upload_ledger_applied_via_rest"), "{}", sent[6].url);
        assert_eq!((report.subrequests, report.resent, report.dead_letters), (7, 0, 0));
    }

    #[test]
    fn a_timed_out_atomic_call_is_not_followed_by_rest_requests_once_the_time_budget_is_spent() {
        // Every request takes 15 s (UPSTREAM_TIMEOUT_MS): the second transaction's call starts
        // within the 30 s budget and is cancelled past it; its REST requests wait for the next
        // upload, which starts with it (and runs it whatever its time).
        let transport = FakeTransport::scripted(vec![ok_body(r#"{"applied": 1}"#), statement_timeout()]).taking(15_000);
        let report = run_with(Route::Probe, &settings(), &[tx(1), mixed("big"), tx(3)], &transport);
        assert_eq!(statuses(&report), vec![Status::Success, Status::RetryableError, Status::NotAttempted]);
        assert_eq!(transport.sent().len(), 2, "no REST request");
        let failure = report.results[1].failed_operation.clone().expect("failure");
        assert_eq!(failure.code, "57014");
        assert!(failure.message.contains("UPLOAD_TIME_BUDGET_MS=30000"), "{}", failure.message);
        assert_eq!(report.log_summary()["time_budget_spent"], json!(true));
        let transport = FakeTransport::scripted(vec![statement_timeout()]).taking(15_000);
        let report = run_with(Route::Probe, &settings(), &[mixed("big")], &transport);
        assert_eq!(statuses(&report), vec![Status::Success]);
        assert!(report.results[0].applied_via_rest.is_some());
    }

    #[test]
    fn an_unmarked_rest_fallbacks_ledger_record_that_fails_is_logged_and_the_transaction_stays_applied() {
        // A ledger older than the worker (no mark): reported applied whatever the record meets,
        // as before; the log says which guard is missing (and the file to run again).
        let no_mark =
            || error(404, "PGRST202", "Could not find the function public.powersync_upload_ledger_rest_begin");
        let missing =
            error(404, "PGRST202", "Could not find the function public.powersync_upload_ledger_applied_via_rest");
        for (answer, expected) in [
            (missing, "PGRST202 (HTTP 404); a late call of this transaction could apply it again: run sql/atomic_upload.sql again"),
            (error(503, "", "down"), "(HTTP 503); a late call of this transaction could apply it again"),
            (ok_body("null"), "unexpected_response (HTTP 200); a late call"),
        ] {
            let answers = vec![statement_timeout(), no_mark(), ok(201), ok(201), ok(204), answer.clone(), answer];
            let transport = FakeTransport::scripted(answers);
            let report = run_on(Route::Probe, &[mixed("big")], &transport);
            assert_eq!(statuses(&report), vec![Status::Success]);
            assert!(transport.sent().iter().all(|r| r.header_value(plan::REST_MARK_HEADER).is_none()), "no mark");
            assert_eq!(report.body()["results"][0]["applied_via"], json!("rest"));
            let errors = report.log_summary()["dead_letter_errors"].to_string();
            assert!(errors.contains("powersync_upload_ledger_applied_via_rest failed") && errors.contains(expected), "{errors}");
        }
        // Without a client id the ledger keys nothing: no record is asked for.
        let transport = FakeTransport::scripted(vec![statement_timeout(), ok(201), ok(201), ok(204)]);
        let report = block_on(apply_with(&[mixed("big")], &settings(), &caller(), &transport, Route::Probe));
        assert_eq!((statuses(&report), transport.sent().len()), (vec![Status::Success], 4));
    }

    #[test]
    fn a_marked_rest_fallback_whose_ledger_record_fails_is_kept_and_its_mark_dropped() {
        // Applied, but the ledger still marks it: once the mark expired, a copy of it could be
        // applied over the client's later transactions. Kept (retryable) instead, the later ones
        // not attempted, and the mark dropped so that the re-send goes on at once.
        let no_grant = error(403, "42501", "permission denied for function powersync_upload_ledger_applied_via_rest");
        for (answer, wait) in [(error(503, "", "down"), 5000), (ok_body("null"), 5000), (no_grant, 60_000)] {
            let answers = vec![statement_timeout(), begun(), ok(201), ok(201), ok(204), answer.clone(), answer];
            let transport = FakeTransport::scripted(answers);
            let report = run_on(Route::Probe, &[mixed("big"), tx(2)], &transport);
            assert_eq!(statuses(&report), vec![Status::RetryableError, Status::NotAttempted]);
            let failure = failure_of(&report, 0);
            assert_eq!(failure.code, "applied_via_rest_not_recorded");
            assert!(failure.message.contains("recording that in the ledger failed"), "{}", failure.message);
            assert_eq!(report.results[0].retry_after_ms, Some(wait), "a missing GRANT waits for the operator");
            if wait == 60_000 {
                assert!(failure.message.contains("permission denied for function"), "{}", failure.message);
            }
            assert_eq!(report.body()["results"][0]["applied_via"], json!("rest"));
            let sent = transport.sent();
            assert!(sent.last().is_some_and(|r| r.url.ends_with(REST_ABANDON_PATH)), "{sent:?}");
            assert_eq!(sent.last().and_then(|r| r.body.clone()), sent[1].body, "the same transaction's mark");
        }
    }

    #[test]
    fn the_rest_fallback_asks_for_the_ledgers_mark_before_its_first_write_and_waits_without_it() {
        // Another upload's mark (55P03), no answer, or a missing GRANT: nothing is sent through
        // REST, the transaction waits (retryable), and the GRANT to run is named. Where the mark
        // may have been made all the same (an answer not PostgREST's), it is dropped, by its token.
        let busy = error(500, "55P03", "transaction big of client client-1 is being applied through REST requests");
        let no_grant = error(403, "42501", "permission denied for function powersync_upload_ledger_rest_begin");
        for (answer, expected, dropped) in [
            (busy, "55P03 HTTP 500: transaction big of client client-1 is being applied", false),
            (error(503, "", "down"), "HTTP 503", true),
            (
                no_grant,
                "grant execute on function public.powersync_upload_ledger_rest_begin(text, text, text, text) to \
                 authenticated",
                false,
            ),
            (ok_body(r#"{"applied": 0}"#), "unexpected_response", true),
        ] {
            let transport = FakeTransport::scripted(vec![statement_timeout(), answer.clone(), answer]);
            let report = run_on(Route::Probe, &[mixed("big"), tx(2)], &transport);
            assert_eq!(statuses(&report), vec![Status::RetryableError, Status::NotAttempted], "{expected}");
            let failure = failure_of(&report, 0);
            assert_eq!(failure.code, "57014");
            assert!(failure
                .message
                .contains("marking it in the ledger before sending it through REST requests failed"));
            assert!(failure.message.contains(expected), "{expected:?} in {}", failure.message);
            let sent = transport.sent();
            assert!(sent.iter().all(|r| r.url.contains("/rpc/")), "no write: {sent:?}");
            let abandon = sent.iter().find(|r| r.url.ends_with(REST_ABANDON_PATH));
            assert_eq!(abandon.is_some(), dropped, "{expected}: {sent:?}");
            if let Some(abandon) = abandon {
                let token = |r: &crate::http::HttpRequest| {
                    serde_json::from_str::<Value>(r.body.as_deref().unwrap_or("")).unwrap_or(Value::Null)["p_mark"]
                        .clone()
                };
                assert_eq!(token(abandon), token(&sent[1]), "its own mark only");
            }
            assert_eq!(report.results[0].applied_via_rest, None);
        }
    }

    #[test]
    fn a_rest_fallback_the_ledger_answers_as_held_sends_nothing_and_reports_it_as_held() {
        // Another copy of the queue applied (or rejected) it between the cancelled call and the
        // mark: nothing goes through REST; answered as the atomic function would answer a re-send.
        let applied = ok_body(r#"{"applied": 0, "already_applied": true, "unchanged": [2]}"#);
        let transport = FakeTransport::scripted(vec![statement_timeout(), applied]);
        let report = run_on(Route::Probe, &[mixed("big"), tx(2)], &transport);
        assert_eq!(statuses(&report), vec![Status::Success, Status::Success]);
        assert!(report.results[0].already_applied);
        assert_eq!(report.results[0].unchanged, vec![2]);
        assert_eq!(report.results[0].applied_via_rest, None, "nothing went through REST");
        let sent = transport.sent();
        assert_eq!(sent.len(), 3, "{sent:?}");
        assert!(sent[1].url.ends_with(REST_BEGIN_PATH) && sent[2].url.ends_with("/rpc/powersync_apply_transaction"));
        let rejected =
            ok_body(r#"{"applied": 0, "dead_letter": {"id": 0, "index": 1, "code": "23505", "message": "duplicate"}}"#);
        let transport = FakeTransport::scripted(vec![statement_timeout(), rejected]);
        let report = run_on(Route::Probe, &[mixed("big"), tx(2)], &transport);
        assert_eq!(statuses(&report), vec![Status::FatalError, Status::Success]);
        assert_eq!((failure_of(&report, 0).code.as_str(), failure_of(&report, 0).index), ("23505", Some(1)));
        assert!(
            transport.sent().iter().all(|r| !r.url.ends_with(REJECT_PATH)),
            "held by the ledger: not recorded again"
        );
    }

    #[test]
    fn a_rest_fallback_that_ends_retryable_drops_its_mark() {
        let transport = FakeTransport::scripted(vec![statement_timeout(), begun(), ok(201), error(503, "", "down")]);
        let report = run_on(Route::Probe, &[mixed("big"), tx(2)], &transport);
        assert_eq!(statuses(&report), vec![Status::RetryableError, Status::NotAttempted]);
        let sent = transport.sent();
        let last = sent.last().expect("sent");
        assert!(last.url.ends_with(REST_ABANDON_PATH), "{sent:?}");
        assert_eq!(last.header_value(crud::ENTRIES_DIGEST_HEADER), sent[1].header_value(crud::ENTRIES_DIGEST_HEADER));
        assert_eq!(report.subrequests, 5, "the request kept for a rejection takes it");
        // Failing for good: its rejection's record ends the mark instead (the ledger's, here).
        let transport =
            FakeTransport::scripted(vec![statement_timeout(), begun(), ok(201), error(409, "23505", "duplicate key")]);
        let report = run_on(Route::Probe, &[mixed("big")], &transport);
        assert_eq!(statuses(&report), vec![Status::FatalError]);
        let sent = transport.sent();
        assert!(sent.last().is_some_and(|r| r.url.ends_with(REJECT_PATH)), "{sent:?}");
        assert!(sent.iter().all(|r| !r.url.ends_with(REST_ABANDON_PATH)));
        // ... with the mark's token: the ledger lets only the upload that made a mark end it
        let token = serde_json::from_str::<Value>(sent[1].body.as_deref().unwrap_or("")).unwrap_or(Value::Null);
        assert_eq!(sent.last().and_then(|r| r.header_value(plan::REST_MARK_HEADER)), token["p_mark"].as_str());
    }

    #[test]
    fn a_rest_fallback_whose_mark_ending_fails_retryable_sends_it_once_more() {
        // A mark left standing holds the transaction's attempts for 10 minutes: after a 5xx the
        // ending is sent again (ending a mark twice is harmless), but not a third time.
        let down = || error(503, "", "down");
        let transport = FakeTransport::scripted(vec![statement_timeout(), begun(), ok(201), down(), down()]);
        let report = run_on(Route::Probe, &[mixed("big"), tx(2)], &transport);
        assert_eq!(statuses(&report), vec![Status::RetryableError, Status::NotAttempted]);
        let sent = transport.sent();
        let endings: Vec<_> = sent.iter().filter(|r| r.url.ends_with(REST_ABANDON_PATH)).collect();
        assert_eq!(endings.len(), 2, "{sent:?}");
        assert_eq!(endings[0].body, endings[1].body, "the same mark's token");
        let errors = report.log_summary()["dead_letter_errors"].to_string();
        assert!(errors.contains("sent again"), "{errors}");
        assert!(!errors.contains("expires"), "{errors}");
        // failing again: the mark expires, logged; a refusal (4xx) is not sent again
        let transport = FakeTransport::scripted(vec![statement_timeout(), begun(), ok(201), down(), down(), down()]);
        let report = run_on(Route::Probe, &[mixed("big")], &transport);
        assert_eq!(transport.sent().iter().filter(|r| r.url.ends_with(REST_ABANDON_PATH)).count(), 2);
        assert!(report.log_summary()["dead_letter_errors"].to_string().contains("the mark expires within 10 minutes"));
        let refused = error(400, "22023", "powersync_upload_ledger_rest_abandon: bad input");
        let transport = FakeTransport::scripted(vec![statement_timeout(), begun(), ok(201), down(), refused]);
        let _ = run_on(Route::Probe, &[mixed("big")], &transport);
        assert_eq!(transport.sent().iter().filter(|r| r.url.ends_with(REST_ABANDON_PATH)).count(), 1);
    }

    #[test]
    fn a_rest_fallback_sends_no_write_five_minutes_after_asking_for_its_mark() {
        // The mark lasts 10 minutes; every request here takes 100 s: the third write would start
        // past 5 minutes, so it waits (retryable), and the mark is dropped.
        let transport = FakeTransport::scripted(vec![statement_timeout(), begun()]).taking(100_000);
        let report = run_on(Route::Probe, &[mixed("big")], &transport);
        assert_eq!(statuses(&report), vec![Status::RetryableError]);
        let failure = failure_of(&report, 0);
        assert_eq!((failure.code.as_str(), failure.index), ("rest_fallback_too_long", Some(2)));
        let urls: Vec<String> = transport.sent().iter().map(|r| r.url.clone()).collect();
        assert_eq!(urls.len(), 5, "{urls:?}");
        assert!(urls[2].contains("/todos") && urls[3].contains("/todos") && urls[4].ends_with(REST_ABANDON_PATH));
    }

    #[test]
    fn what_the_rest_fallback_meets_teaches_nothing_about_the_atomic_function() {
        // The call reached the function (the statement timeout cancelled it); a bare 404 from a
        // REST request after it is not "function missing": the transaction is not sent again
        // through REST, and the next one still goes through the function.
        let html = Ok(HttpResponse { status: 404, headers: vec![], body: "<html>Not Found</html>".to_string() });
        let transport = FakeTransport::scripted(vec![statement_timeout(), begun(), ok(201), html]);
        let report = run_on(Route::Probe, &[mixed("big"), tx(2)], &transport);
        assert_eq!(statuses(&report), vec![Status::RetryableError, Status::NotAttempted]);
        assert_eq!(report.results[0].failed_operation.as_ref().map(|f| f.code.as_str()), Some("http_404"));
        assert_eq!(report.atomic_function, Some(true), "the function answered: it is installed");
        let sent = transport.sent();
        assert_eq!(sent.len(), 5, "the transaction is not sent through REST a second time: {sent:?}");
        assert!(sent[4].url.ends_with(REST_ABANDON_PATH), "only its mark is dropped");
    }

    #[test]
    fn rest_fallback_failing_for_good_is_fatal_says_so_and_dead_letters_what_rest_applied() {
        let mut s = settings();
        s.dead_letter_table = Some("dead".to_string());
        let transport = FakeTransport::scripted(vec![
            statement_timeout(),
            begun(),
            ok(201),
            error(409, "23505", "duplicate key"),
            recorded(),
        ]);
        let report = run_with(Route::Probe, &s, &[mixed("big")], &transport);
        assert_eq!(statuses(&report), vec![Status::FatalError]);
        let result = report.body()["results"][0].clone();
        assert_eq!(
            (result["failed_operation"]["code"].clone(), result["failed_operation"]["index"].clone()),
            (json!("23505"), json!(1))
        );
        assert_eq!(result["applied_via"], json!("rest"), "the app learns that the first PUT stayed applied");
        let sent = transport.sent();
        assert!(sent[4].url.ends_with(RECORD_PATH), "its dead letter ends the ledger's mark");
        assert_eq!(sent.len(), 5);
        let mark = serde_json::from_str::<Value>(sent[1].body.as_deref().unwrap_or("")).unwrap_or(Value::Null);
        assert_eq!(sent[4].header_value(plan::REST_MARK_HEADER), mark["p_mark"].as_str(), "with the mark's token");
        assert_eq!(states_of(&dead_letter_body(&transport)), vec!["applied", "failed", "not_attempted"]);
    }

    #[test]
    fn timed_out_transaction_whose_rest_requests_do_not_fit_what_is_left_waits_for_the_next_upload() {
        let mut s = settings();
        // one subrequest stays reserved for recording a rejection in the ledger (a client id)
        s.subrequest_budget = 6;
        let transport = FakeTransport::scripted(vec![
            ok_body(r#"{"applied": 1}"#),
            ok_body(r#"{"applied": 1}"#),
            statement_timeout(),
        ]);
        let report = run_with(Route::Probe, &s, &[tx(1), tx(2), mixed("big"), tx(4)], &transport);
        assert_eq!(
            statuses(&report),
            vec![Status::Success, Status::Success, Status::RetryableError, Status::NotAttempted]
        );
        assert_eq!(transport.sent().len(), 3, "no REST request that would not fit");
        let failure = report.results[2].failed_operation.clone().expect("failure");
        assert_eq!(failure.code, "57014");
        assert!(failure.message.contains("needs 3 requests"), "{}", failure.message);
        assert!(failure.message.contains("next upload"), "{}", failure.message);
        assert_eq!(report.results[2].retry_after_ms, Some(5000));
        assert_eq!(report.results[2].applied_via_rest, None, "nothing went through REST");
        // the next upload starts with it and a fresh budget: 1 atomic call, the ledger's mark, 3
        // REST requests and the reserve fit in 6
        let transport = FakeTransport::scripted(vec![statement_timeout()]);
        let report = run_with(Route::Probe, &s, &[mixed("big"), tx(4)], &transport);
        assert_eq!(statuses(&report), vec![Status::Success, Status::NotAttempted]);
        assert!(report.results[0].applied_via_rest.is_some());
        assert_eq!(report.subrequests, 6, "its record in the ledger takes the reserved one");
        assert!(transport.sent()[5].url.ends_with("/rpc/powersync_upload_ledger_applied_via_rest"));
    }

    #[test]
    fn timed_out_transaction_no_budget_can_take_through_rest_is_retryable_naming_the_fixes() {
        let mut s = settings();
        s.subrequest_budget = 3;
        s.dead_letter_table = Some("dead".to_string());
        // through the function (auto), and as the too-big path of REST mode: the same answer
        for route in [Route::Probe, Route::Rest] {
            let transport = FakeTransport::scripted(vec![statement_timeout()]);
            let report = run_with(route, &s, &[big(4), tx(2)], &transport);
            assert_eq!(statuses(&report), vec![Status::RetryableError, Status::NotAttempted], "{route:?}");
            assert_eq!(transport.sent().len(), 1, "{route:?}: only the atomic call");
            let failure = report.results[0].failed_operation.clone().expect("failure");
            assert_eq!(failure.code, "57014");
            for part in [
                "needs 4 requests, one to mark it in the ledger first, plus one for a dead-letter record",
                "UPLOAD_SUBREQUEST_BUDGET=3",
                "no upload can apply it",
                "alter role authenticated set statement_timeout",
            ] {
                assert!(failure.message.contains(part), "{route:?}: {part:?} in {}", failure.message);
            }
            assert_eq!(report.results[0].retry_after_ms, Some(60_000), "{route:?}: the operator's to fix");
            assert_eq!(report.dead_letters, 0, "{route:?}: never discarded for its size");
        }
    }

    #[test]
    fn a_timed_out_transaction_names_the_statement_timeout_of_the_role_the_session_runs_as() {
        let mut s = settings();
        s.atomic = AtomicMode::Always;
        let premium = Caller { role: Some("premium".to_string()), ..caller() };
        let transport = FakeTransport::scripted(vec![statement_timeout()]);
        let report = block_on(apply_with(&[big(4)], &s, &premium, &transport, Route::Atomic));
        let failure = report.results[0].failed_operation.clone().expect("failure");
        assert!(failure.message.contains("alter role premium set statement_timeout"), "{}", failure.message);
    }

    #[test]
    fn upload_atomic_true_keeps_a_timed_out_transaction_retryable_naming_the_fix() {
        let mut s = service();
        s.atomic = AtomicMode::Always;
        let transport = FakeTransport::scripted(vec![statement_timeout()]);
        let report = run_with(Route::Atomic, &s, &[mixed("big"), tx(2)], &transport);
        assert_eq!(statuses(&report), vec![Status::RetryableError, Status::NotAttempted]);
        assert_eq!(transport.sent().len(), 1, "all-or-nothing demanded: no REST requests");
        let failure = report.results[0].failed_operation.clone().expect("failure");
        assert!(failure.message.contains("UPLOAD_ATOMIC=true"), "{}", failure.message);
        assert!(failure.message.contains("alter role service_role set statement_timeout"), "{}", failure.message);
        assert_eq!(report.results[0].retry_after_ms, Some(60_000));
    }

    #[test]
    fn bulk_upsert_cancelled_by_the_statement_timeout_is_sent_again_in_halves() {
        let transport =
            FakeTransport::scripted(vec![statement_timeout(), ok(201), statement_timeout(), ok(201), ok(201)]);
        let report = run(&[puts(&["a", "b", "c", "d"])], &settings(), &transport);
        assert_eq!(statuses(&report), vec![Status::Success]);
        let sent: Vec<Vec<String>> = transport.sent().iter().map(rows_sent).collect();
        assert_eq!(sent, vec![vec!["a", "b", "c", "d"], vec!["a", "b"], vec!["c", "d"], vec!["c"], vec!["d"]]);
        assert_eq!(report.subrequests, 5);
    }

    #[test]
    fn upsert_cancelled_by_the_statement_timeout_without_room_to_split_is_retryable_saying_why() {
        let mut s = settings();
        s.subrequest_budget = 2;
        let transport = FakeTransport::scripted(vec![statement_timeout()]);
        let report = run(&[puts(&["a", "b"])], &s, &transport);
        assert_eq!(statuses(&report), vec![Status::RetryableError]);
        let failure = report.results[0].failed_operation.clone().expect("failure");
        assert_eq!(failure.code, "57014");
        assert!(failure.message.contains("smaller parts"), "{}", failure.message);
        // one row cannot be split: retryable as before
        let transport = FakeTransport::scripted(vec![statement_timeout()]);
        let report = run(&[puts(&["a"])], &settings(), &transport);
        assert_eq!(statuses(&report), vec![Status::RetryableError]);
        assert_eq!(transport.sent().len(), 1);
    }

    #[test]
    fn caller_debug_hides_the_token() {
        assert!(!format!("{:?}", caller()).contains("token\""));
        assert!(format!("{:?}", caller()).contains("<redacted>"));
    }

    #[test]
    fn budget_exhaustion_answers_the_configured_retry_after() {
        let mut s = settings();
        s.subrequest_budget = 45;
        s.retry_after_seconds = 7;
        let transactions: Vec<Transaction> = (0..100).map(tx).collect();
        let report = run(&transactions, &s, &FakeTransport::default());
        assert!(report.needs_retry());
        assert_eq!(report.retry_after_seconds, 7);
    }

    #[test]
    fn empty_transaction_succeeds_even_when_the_budget_is_spent() {
        let mut s = settings();
        s.subrequest_budget = 2;
        s.dead_letter_table = Some("dead".to_string());
        let empty = Transaction { transaction_id: Some(json!("e")), entries: vec![] };
        // tx(1) is refused and dead-lettered: nothing left, yet the empty transaction needs nothing
        let transport = FakeTransport::scripted(vec![error(400, "23514", "check"), recorded()]);
        let report = run(&[tx(1), empty], &s, &transport);
        assert_eq!(statuses(&report), vec![Status::FatalError, Status::Success]);
    }

    fn unmergeable(n: usize) -> Transaction {
        let entries = (0..n).map(|i| entry(Op::Put, &format!("r{i}"), json!({ format!("c{i}"): i }))).collect();
        Transaction { transaction_id: Some(json!("big")), entries }
    }

    #[test]
    fn a_too_big_transactions_atomic_call_failing_otherwise_keeps_its_own_failure() {
        let mut s = settings();
        s.subrequest_budget = 3;
        let unavailable = Ok(HttpResponse { status: 503, headers: vec![], body: String::new() });
        let transport = FakeTransport::scripted(vec![unavailable]);
        let report = run(&[unmergeable(5)], &s, &transport);
        assert_eq!(statuses(&report), vec![Status::RetryableError]);
        let failure = report.results[0].failed_operation.clone().expect("failure");
        assert_eq!(failure.code, "http_503");
        assert!(!failure.message.contains("statement timeout"), "{}", failure.message);
        assert_eq!(report.results[0].retry_after_ms, Some(s.retry_after_seconds * 1000));
    }

    #[test]
    fn a_timed_out_atomic_call_whose_rest_requests_cannot_fit_waits_within_the_budget() {
        let mut s = settings();
        s.subrequest_budget = 3;
        s.dead_letter_table = Some("dead".to_string());
        let transport = FakeTransport::scripted(vec![statement_timeout()]);
        let report = run_with(Route::Atomic, &s, &[mixed("big")], &transport);
        assert!(report.subrequests <= s.subrequest_budget, "{} requests", report.subrequests);
        assert_eq!(statuses(&report), vec![Status::RetryableError]);
    }

    #[test]
    fn a_timed_out_atomic_call_whose_rest_requests_fill_a_whole_budget_waits_for_the_operator() {
        let mut s = settings();
        s.subrequest_budget = 4; // the call (1) + REST (3) + the reserve (1) can never fit
        s.dead_letter_table = Some("dead".to_string());
        let transport = FakeTransport::scripted(vec![statement_timeout()]);
        let report = run_with(Route::Atomic, &s, &[mixed("big")], &transport);
        let failure = report.results[0].failed_operation.clone().expect("failure");
        assert!(failure.message.contains("so no upload can apply it"), "{}", failure.message);
        assert_eq!(report.results[0].retry_after_ms, Some(60_000));
    }

    #[test]
    fn a_bulk_upsert_answered_503_is_not_split() {
        let transaction = Transaction {
            transaction_id: None,
            entries: vec![entry(Op::Put, "a", json!({"x": 1})), entry(Op::Put, "b", json!({"x": 2}))],
        };
        let unavailable = Ok(HttpResponse { status: 503, headers: vec![], body: String::new() });
        let transport = FakeTransport::scripted(vec![unavailable]);
        let report = run(&[transaction], &settings(), &transport);
        assert_eq!(statuses(&report), vec![Status::RetryableError]);
        assert_eq!(transport.sent().len(), 1, "an overloaded upstream is not sent the halves");
    }

    #[test]
    fn halves_need_room_for_both_and_the_dead_letter_reserve() {
        let mut s = settings();
        s.subrequest_budget = 3;
        s.dead_letter_table = Some("dead".to_string());
        let transaction = Transaction {
            transaction_id: Some(json!("t")),
            entries: vec![entry(Op::Put, "a", json!({"x": 1})), entry(Op::Put, "b", json!({"x": 2}))],
        };
        let transport = FakeTransport::scripted(vec![error(400, "23514", "check"), recorded()]);
        let report = run(&[transaction], &s, &transport);
        assert_eq!(statuses(&report), vec![Status::FatalError], "recorded, not left to fail for ever");
        assert_eq!(transport.sent().len(), 2, "the refused upsert and its dead letter");
        // with a request after the group (pending), the halves need room for it too
        let mut s = settings();
        s.subrequest_budget = 4;
        s.dead_letter_table = Some("dead".to_string());
        let transaction = Transaction {
            transaction_id: Some(json!("t")),
            entries: vec![
                entry(Op::Put, "a", json!({"x": 1})),
                entry(Op::Put, "b", json!({"x": 2})),
                entry(Op::Delete, "c", Value::Null),
            ],
        };
        let transport = FakeTransport::scripted(vec![error(400, "23514", "check"), recorded()]);
        let report = run(&[transaction], &s, &transport);
        let failure = report.results[0].failed_operation.clone().expect("failure");
        assert_eq!(failure.index, Some(0));
        assert!(failure.message.contains("one of entries 0..=1"), "{}", failure.message);
    }

    #[test]
    fn service_mode_upsert_refused_after_its_ownership_check_is_dead_lettered_failed_not_applied() {
        let mut s = service();
        s.dead_letter_table = Some("dead".to_string());
        let transport = FakeTransport::scripted(vec![ok_body("[]"), error(400, "23514", "check"), recorded()]);
        let report = run(&[tx(1)], &s, &transport);
        assert_eq!(statuses(&report), vec![Status::FatalError]);
        assert_eq!(states_of(&dead_letter_body(&transport)), vec!["failed"]);
    }

    /// A table `UPLOAD_TABLES` lacks (the list lagging behind an app release that adds a table,
    /// or spelling it otherwise than the client: `Todos` for `todos`) is the operator's to fix,
    /// as a table missing from the schema is: the write waits, nothing is sent or dead-lettered.
    /// (A hostile client gains nothing from waiting: only its own queue stops.)
    #[test]
    fn a_table_missing_from_upload_tables_waits_for_the_operator_without_a_request() {
        for route in [Route::Rest, Route::Atomic] {
            for allowed in ["lists", "Todos"] {
                let mut s = settings();
                s.tables = Some([allowed.to_string()].into_iter().collect());
                s.dead_letter_table = Some("dead".to_string());
                let transport = FakeTransport::default();
                let report = run_with(route, &s, &[tx(1), tx(2)], &transport);
                assert_eq!(statuses(&report), vec![Status::RetryableError, Status::NotAttempted], "{allowed}");
                let failure = failure_of(&report, 0);
                assert_eq!((failure.index, failure.code.as_str()), (Some(0), plan::TABLE_NOT_LISTED));
                assert!(report.retry_after_seconds >= outcome::SCHEMA_DRIFT_RETRY_AFTER_SECONDS);
                assert_eq!((transport.sent().len(), report.dead_letters), (0, 0), "{route:?}, {allowed}");
            }
        }
    }

    /// `UPLOAD_ATOMIC=false` with `UPLOAD_SUBREQUEST_BUDGET=1` (its least allowed value): a
    /// transaction of two requests (two tables) from a client with a client id cannot be sent,
    /// not even as one atomic call with its rejection's reserve. It waits, as its message says
    /// ("it waits until sql/atomic_upload.sql is installed ... or the budget raised"); it was
    /// answered fatal, and so discarded for a setting.
    #[test]
    fn a_transaction_over_the_least_allowed_budget_waits_for_the_operator() {
        let vars = [
            ("SUPABASE_URL", "https://p.supabase.co"),
            ("SUPABASE_ANON_KEY", "anon"),
            ("UPLOAD_ATOMIC", "false"),
            ("UPLOAD_SUBREQUEST_BUDGET", "1"),
        ];
        let s = from_lookup(&|name| vars.iter().find(|(n, _)| *n == name).map(|(_, v)| v.to_string()))
            .expect("accepted at start");
        let mut other = entry(Op::Put, "l1", json!({"name": "n"}));
        other.table = "lists".to_string();
        let two_tables = Transaction {
            transaction_id: Some(json!(1)),
            entries: vec![entry(Op::Put, "r1", json!({"title": "t"})), other],
        };
        let transport = FakeTransport::default();
        let report = run_with(Route::Rest, &s, &[two_tables], &transport);
        assert_eq!(statuses(&report), vec![Status::RetryableError]);
        assert_eq!(failure_of(&report, 0).code, "too_many_requests_for_budget");
        assert!(report.retry_after_seconds >= outcome::SCHEMA_DRIFT_RETRY_AFTER_SECONDS);
        assert!(transport.sent().is_empty());
    }
}
