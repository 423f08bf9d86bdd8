//! Delivery: sends the planned requests of each transaction in order and records the outcomes.
//!
//! - Transactions are processed in order; within one, requests are sent in order and the first
//!   failure ends the transaction.
//! - A fatal failure makes the transaction `fatal_error` and processing continues with the next
//!   transaction: the client discards it. With a dead-letter table, the whole transaction is
//!   recorded first (`powersync_record_dead_letter`, see `dead_letter`), with what became of each
//!   entry (applied, failed, not attempted); if that record cannot be written (the call fails,
//!   including a missing EXECUTE grant, or answers anything but the row's id), the transaction is
//!   `retryable_error` (`dead_letter_failed`) instead, so the client keeps it. Without one, a
//!   transaction with a client id that went to the atomic function (or whose earlier attempts
//!   may have: the function is in use) is recorded in its ledger instead
//!   (`powersync_upload_ledger_reject`), so that a late call of it applies nothing; if that
//!   fails, `retryable_error` (`rejection_not_recorded`).
//! - A retryable failure makes the transaction `retryable_error` and every later one
//!   `not_attempted`: the client retries them in order.
//! - Time budget: once the upload has run for `UPLOAD_TIME_BUDGET_MS` (30 s), no further
//!   transaction is started, nor a timed-out atomic call's REST fallback (the first transaction's
//!   always is): the rest are `not_attempted`. A transaction started runs to its end. A slow
//!   upstream mostly still gets the client an answer before its own timeout (the connectors'
//!   60 s), and a client that gave up (whose disconnect a worker is not told of) is not followed
//!   for long by writes of a queue it will send again.
//! - Subrequest budget: before a transaction is sent, its planned requests plus one for recording
//!   a possible rejection (the dead-letter insert, or the ledger's record above) must fit in what
//!   remains of `UPLOAD_SUBREQUEST_BUDGET`; if not, it and every later transaction are `not_attempted` (the client sends them again, in a fresh request
//!   with a fresh budget). A transaction that would not fit even in a whole budget is sent as one
//!   call of the atomic function instead (`UPLOAD_ATOMIC_FUNCTION`, `sql/atomic_upload.sql`):
//!   one request whatever its size, all or nothing. Only when that function is not installed
//!   (PostgREST's PGRST202; a bare 404, e.g. from a wrong `SUPABASE_URL`, stays retryable as
//!   such) can no upload apply it: it is then `retryable_error` `too_many_requests_for_budget`
//!   (index null, Retry-After of a migration) whose message names atomic mode, and waits for the
//!   operator to install the function, as for a missing GRANT. Merging
//!   keeps this rare (1,000 PUTs with the same columns are one request); atomic mode, one request
//!   per transaction, avoids it entirely.
//! - A lost connection: a request that got no answer at all (the connection was refused, failed
//!   or was lost before a status line: workerd reusing a connection that an HTTP/1.0 upstream or
//!   a proxy's keep-alive timeout had closed fails with "Network connection lost") is sent again
//!   at once, once, on a fresh connection: every request the bridge sends is idempotent (upserts,
//!   updates and deletes by id, the atomic call of a transaction the ledger keys (a client id),
//!   the dead-letter call (a second copy of one transaction returns the first row's id), the
//!   owner-check GET); an atomic call without a client id is as idempotent as a client's re-send
//!   of it, no more (docs/upload.md, the known gap). The second request counts
//!   against the budget like any other and is only made if it still leaves room for the rest of
//!   the transaction and the dead-letter reserve; only a second failure (or no room) makes the
//!   transaction retryable. A timeout is not re-sent at once (the upstream is slow, most likely
//!   overloaded: a second attempt would add load and double the wait), nor is an answer whose
//!   body was cut off (the upstream did answer).
//! - The route ([`Route`], chosen per upload by the caller from `UPLOAD_ATOMIC` and the
//!   isolate's memory, see `atomic_function`): REST requests, one atomic call per transaction, or
//!   a probe: atomic calls until one answers that the function is missing (PGRST202 or 404);
//!   nothing was applied then, so that transaction and the rest of the upload go through REST,
//!   and [`UploadReport::atomic_function`] says what was learnt. The function installed but not
//!   executable by the API role (`42501 permission denied for function …`: a missing EXECUTE
//!   grant) is treated the same way: nothing was applied, REST applies it. (With
//!   `UPLOAD_ATOMIC=true` the same answer is retryable, naming the GRANT, and the transaction
//!   waits; a transaction too big for REST waits too rather than being refused.)
//! - Only PostgREST's answer counts as applied. A 2xx to an atomic call must carry the
//!   function's result (a JSON object with a numeric `applied`); a 2xx to a REST write the
//!   row count PostgREST sends for `Prefer: count=exact` (`Content-Range: */3`, `0-2/3`). A 2xx
//!   without it (a catch-all server or proxy behind a wrong `SUPABASE_URL`, an empty 201) is
//!   `unexpected_response`, retryable: nothing is reported applied.
//! - Writes that changed nothing: the transaction's result lists in `unchanged` the PATCH and
//!   DELETE entries that changed no row (the row is gone, or hidden by RLS or owned by another
//!   user in service mode; PostgREST answers 204 either way), learnt from that count without
//!   another request, or from the atomic function's `unchanged`; and a PATCH whose every column
//!   the bridge leaves out, which is not sent (`id`, or in service mode the owner column). A single-entry request's count
//!   names its entry exactly. Merged entries (`id=in.(a,b,c)`) share one count: when it is
//!   below the number of different ids, the count cannot say which of them changed nothing, so
//!   every entry of the group is listed (the list may then name entries that did change their
//!   row; the atomic function, which learns it per id, lists exactly the ones that did not).
//! - A statement timeout (57014, `canceling statement due to statement timeout`: Supabase
//!   gives `authenticated` 8 s per statement) cancels an atomic call as a whole: nothing was
//!   applied. Retrying the same call would most likely time out again, for ever, so the
//!   transaction is sent through REST requests at once, in the same upload (each request is
//!   its own statement with its own timeout), and its result says so: `"applied_via": "rest"`
//!   with `"applied_via_reason"`. Applied that way it is neither all-or-nothing nor exactly
//!   once. For a caller the ledger keys, one request first marks it there as being applied
//!   through REST (`powersync_upload_ledger_rest_begin`): meanwhile an atomic call of it from
//!   another copy of the queue answers 55P03 (retryable) instead of applying it ahead of these
//!   writes, which would then land over that copy's later transactions; a transaction the
//!   ledger already holds is answered as held, and nothing is sent. Applied, it is recorded as
//!   applied there (`powersync_upload_ledger_applied_via_rest`, in the subrequest kept for a
//!   rejection), so that a late copy of the cancelled call applies nothing; when that record
//!   fails the transaction is kept (retryable), as is one whose fallback ran past
//!   `REST_MARK_CUTOFF_MS`, and a fallback that ends retryable ends its mark
//!   (`powersync_upload_ledger_rest_abandon`, best effort). Some of its writes may be in place
//!   then, so the ledger keeps the transaction as begun through REST: its next atomic call is
//!   refused (57014, nothing applied) and it goes on through REST requests, whose result says
//!   which entries were applied (an atomic call's rejection would say none, over the writes
//!   left in place); so does one whose mark expired. Against a ledger without the mark's
//!   function (an older sql/atomic_upload.sql) it goes on unmarked, and its record is best
//!   effort, as before. Where those requests do not fit in what is left of the budget it stays retryable,
//!   with a message saying whether the next upload (a fresh budget) can take it or only the
//!   operator can (a longer statement timeout, a larger budget); with `UPLOAD_ATOMIC=true`
//!   (all-or-nothing demanded) it stays retryable with a message naming the fix. A bulk upsert
//!   the statement timeout cancels is sent again in two halves, recursively, like one refused
//!   with 21000 (below), while the budget allows.
//! - A merged request refused whole (a bulk upsert, a PATCH or DELETE of `id=in.(…)`: one
//!   statement, so nothing of it applied) is sent again in halves, first half first,
//!   recursively, while the budget allows (keeping the dead-letter reserve): that equals applying
//!   its entries in order, applies those before the one at fault, and reports that entry. Without
//!   room, the failure is reported at the request's first entry (and, for 21000, retryable: the
//!   halves are how such an upsert applies at all).
//! - An atomic call answering `{"already_applied": true}` (its ledger holds this client id and
//!   transaction id: a re-send after a lost answer) is a success that applied nothing now,
//!   reported with `already_applied`. One answering `{"dead_letter": {…}}` (the ledger holds
//!   the transaction as rejected: it was dead-lettered, and this is a re-send after a lost
//!   answer) applied nothing either, and is reported as it was then: `conflict` or
//!   `fatal_error` with the recorded index, code and message; recording the dead letter again
//!   returns the first one. The same answer to a call that reached the database after the bridge
//!   gave up on it is what keeps a transaction reported rejected from being applied later.

use super::atomic_function::Route;
use super::crud::{Entry, Transaction};
use super::dead_letter::{self, EntryState};
use super::outcome::{
    self, affected_rows, atomic_answer, classify, op_index_from_hint, quote_ident, unexpected_response, AtomicAnswer,
    ErrorClass, FailedOperation, Status, TransactionResult, UploadReport, Verdict, WrittenAs, DEAD_LETTERED,
    SCHEMA_DRIFT_RETRY_AFTER_SECONDS, UNEXPECTED_RESPONSE,
};
use super::plan::{self, Check, PlannedRequest};
use super::settings::{AtomicMode, UploadSettings, WriteMode, COMPARED_WRITE_REQUESTS};
use super::Caller;
use crate::http::{send_resending_once, HttpResponse, Transport, TransportError};
use serde_json::Value;
use std::collections::VecDeque;

/// How one transaction ended.
enum Ending {
    /// Applied: now, or before (`already_applied`: the atomic function's ledger knew it, and
    /// nothing was applied now); the PATCH and DELETE entries that changed no row, in order (for
    /// a transaction applied before, as the ledger recorded them then).
    Success {
        unchanged: Vec<usize>,
        /// Of `unchanged`: entries merged in one request that changed some of its rows, so each
        /// may have changed its own (the count cannot say which).
        uncertain: Vec<usize>,
        already_applied: bool,
    },
    /// Rejected for good; what became of each entry (for the dead letter).
    Fatal(FailedOperation, Vec<EntryState>, Ledger),
    /// A conflicting PATCH or DELETE (`UPLOAD_CONFLICT_DETECTION`): the failure naming it, the
    /// entries' states, and the row as the server holds it (for the dead letter only).
    Conflict(FailedOperation, Vec<EntryState>, Value, Ledger),
    Retryable(FailedOperation, u64),
}

/// Whether the atomic function's ledger holds a rejection already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ledger {
    /// It answered this (re-sent or late) call with the rejection: not recorded again.
    /// `after_rest`: an attempt of it went through REST requests before it was rejected, so its
    /// result says so again ([`REJECTED_AFTER_REST`]).
    HoldsIt { after_rest: bool },
    /// Rejected now: recorded (a dead letter, or the ledger's record) before it is reported.
    NotYet,
}

/// Applies the transactions through PostgREST and reports what happened to each (see the
/// module docs for the ordering, retry and budget rules), with no memory of the atomic function:
/// `UPLOAD_ATOMIC=true` through it, otherwise (unset included) REST requests. The worker uses
/// [`apply_with`] and its isolate's memory instead.
pub async fn apply<T: Transport>(
    transactions: &[Transaction],
    settings: &UploadSettings,
    caller: &Caller,
    transport: &T,
) -> UploadReport {
    let route = if settings.atomic == AtomicMode::Always { Route::Atomic } else { Route::Rest };
    apply_with(transactions, settings, caller, transport, route).await
}

/// [`apply`] along `route` (see the module docs).
pub async fn apply_with<T: Transport>(
    transactions: &[Transaction],
    settings: &UploadSettings,
    caller: &Caller,
    transport: &T,
    route: Route,
) -> UploadReport {
    let mut report = UploadReport { retry_after_seconds: settings.retry_after_seconds, ..UploadReport::default() };
    // One subrequest kept for recording a rejection: its dead letter, or without a dead-letter
    // table, for a transaction sent to the atomic function, its record in the function's ledger
    // (for a caller the ledger keys).
    let reserve_for =
        |atomic: bool| usize::from(settings.dead_letter_table.is_some() || (atomic && caller.client_id.is_some()));
    let budget = settings.subrequest_budget;
    let mut stopped = false;
    let started_ms = transport.now_ms();
    let time_spent = |transport: &T| transport.now_ms().saturating_sub(started_ms) >= settings.time_budget_ms;

    for transaction in transactions {
        let transaction_id = transaction.transaction_id.clone();
        // After the first transaction, none is started once the upload has run for its time
        // budget: the client gets its answer (and a client that gave up gets no further writes).
        let first = report.subrequests == 0;
        if !stopped && !first && time_spent(transport) {
            stopped = true;
            report.time_budget_spent = true;
        }
        if stopped {
            report.results.push(TransactionResult::not_attempted(transaction_id));
            continue;
        }
        // The upload's first transaction runs whatever its time; a later one's REST fallback only
        // while the time budget lasts.
        let time_left = |transport: &T| first || !time_spent(transport);
        // Set when the transaction went through REST after its atomic call timed out.
        let mut via_rest: Option<ViaRest> = None;
        // Set when an atomic call of it was sent (a late copy of it could apply it).
        let mut sent_atomic = false;
        let ending = loop {
            let remaining = budget.saturating_sub(report.subrequests);
            let fresh = report.subrequests == 0;
            let atomic = atomic_in_use(route, &report);
            let rejection_cost = reserve_for(atomic);
            let ending = match plan::plan_transaction_as(transaction, settings, caller, atomic) {
                Ok(requests) if requests.is_empty() => {
                    Some(Ending::Success { unchanged: Vec::new(), uncertain: Vec::new(), already_applied: false })
                }
                Ok(requests) if worst_case(&requests) + rejection_cost > budget => {
                    // Sent as one atomic call whatever the route: its rejection's record too.
                    let rejection_cost = reserve_for(true);
                    let too_big = too_big(worst_case(&requests), budget, rejection_cost, &settings.atomic_function);
                    match plan::atomic_request(transaction, settings, caller) {
                        Some(call) if rejection_cost < remaining => {
                            sent_atomic = true;
                            let ending = send(
                                vec![call],
                                &transaction.entries,
                                (settings, caller),
                                transport,
                                &mut report,
                                rejection_cost,
                                None,
                            )
                            .await;
                            Some(match ending {
                                // Installing the function (or a budget the plan allows) is the
                                // operator's to do: the transaction waits, as for a missing GRANT.
                                Ending::Retryable(failure, _) | Ending::Fatal(failure, ..)
                                    if failure.code == FUNCTION_NOT_FOUND =>
                                {
                                    Ending::Retryable(too_big, operators_wait(settings))
                                }
                                Ending::Retryable(failure, _) if failure.code == QUERY_CANCELED => {
                                    let fallback =
                                        (transaction, settings, caller, rejection_cost, time_left(transport));
                                    let (ending, reason) =
                                        after_timeout(fallback, failure, transport, &mut report).await;
                                    via_rest = reason;
                                    ending
                                }
                                other => other,
                            })
                        }
                        // The call does not fit in what is left: it waits for the next upload's fresh
                        // budget.
                        Some(_) if !fresh => None,
                        // Not even in a fresh budget (with the reserve for its rejection's record):
                        // raising the budget is the operator's to do, as installing the function is.
                        _ => Some(Ending::Retryable(too_big, operators_wait(settings))),
                    }
                }
                Ok(requests) if worst_case(&requests) + rejection_cost > remaining => None,
                Ok(requests) => {
                    sent_atomic |= atomic;
                    match send(
                        requests,
                        &transaction.entries,
                        (settings, caller),
                        transport,
                        &mut report,
                        rejection_cost,
                        None,
                    )
                    .await
                    {
                        Ending::Retryable(failure, _) if atomic && failure.code == QUERY_CANCELED => {
                            let fallback = (transaction, settings, caller, rejection_cost, time_left(transport));
                            let (ending, reason) = after_timeout(fallback, failure, transport, &mut report).await;
                            via_rest = reason;
                            Some(ending)
                        }
                        ending => Some(ending),
                    }
                }
                // A table UPLOAD_TABLES lacks: the operator's to add, as a table missing from the
                // schema (PGRST205) is; nothing was sent.
                Err(failure) if failure.code == plan::TABLE_NOT_LISTED => {
                    Some(Ending::Retryable(failure, operators_wait(settings)))
                }
                Err(failure) => refuse_unsendable(remaining, fresh, rejection_cost, failure, transaction.entries.len()),
            };
            if route == Route::Probe && atomic && !transaction.entries.is_empty() {
                match &ending {
                    // Learnt from the atomic call's own answer only: after a statement timeout
                    // the call reached the function, and what the REST requests sent after it
                    // met (a bare 404 from a table missing from PostgREST's cache) says nothing
                    // of the function.
                    _ if via_rest.is_some() => report.atomic_function = Some(true),
                    Some(Ending::Retryable(failure, _) | Ending::Fatal(failure, ..)) if function_missing(failure) => {
                        // Nothing was applied: this transaction, and the rest, through REST.
                        report.atomic_function = Some(false);
                        sent_atomic = false;
                        continue;
                    }
                    Some(Ending::Retryable(failure, _) | Ending::Fatal(failure, ..))
                        if function_not_executable(failure, &settings.atomic_function) =>
                    {
                        // Nothing was applied: this upload through REST. This caller's role's,
                        // not the isolate's: others' roles may execute it.
                        report.atomic_function_not_executable = true;
                        sent_atomic = false;
                        continue;
                    }
                    // No answer, or not PostgREST's: nothing learnt.
                    Some(Ending::Retryable(failure, _) | Ending::Fatal(failure, ..))
                        if failure.http_status.is_none() || failure.code == UNEXPECTED_RESPONSE => {}
                    Some(_) => report.atomic_function = Some(true),
                    None => {}
                }
            }
            break ending;
        };
        let Some(ending) = ending else {
            // Does not fit in what is left of the budget: this and every later transaction wait
            // for the client's next upload.
            stopped = true;
            report.results.push(TransactionResult::not_attempted(transaction_id));
            continue;
        };
        // The token of the ledger's mark of a REST fallback: the records that end it carry it.
        let mark = via_rest.as_ref().and_then(|via| via.mark.as_deref());
        let held_after_rest = matches!(
            ending,
            Ending::Fatal(.., Ledger::HoldsIt { after_rest: true })
                | Ending::Conflict(.., Ledger::HoldsIt { after_rest: true })
        );
        match ending {
            Ending::Success { mut unchanged, uncertain, already_applied } => {
                // Never reported applied: a PATCH whose columns were all left out (not sent).
                let wrote_nothing = plan::patches_writing_nothing(transaction, settings);
                if !wrote_nothing.is_empty() {
                    unchanged.extend(wrote_nothing);
                    unchanged.sort_unstable();
                    unchanged.dedup();
                }
                let record = (settings.dead_letter_unchanged && settings.dead_letter_table.is_some())
                    .then(|| dead_letter::unchanged_record(transaction.entries.len(), &unchanged, &uncertain))
                    .flatten();
                // A marked fallback's ledger record comes first: without it the transaction is kept.
                let ledger_first = usize::from(mark.is_some());
                let record = match record {
                    Some(_) if ledger_first == 1 && report.subrequests + 2 > settings.subrequest_budget => {
                        report.dead_letter_errors.push(format!(
                            "dead-letter call {} of unchanged entries skipped: the subrequest left records the \
                             transaction in the ledger",
                            dead_letter::RECORD_FUNCTION
                        ));
                        None
                    }
                    record => record,
                };
                if let Some((failure, states)) = record {
                    // Best effort: the transaction is applied and its result names the entries
                    // either way; a record that fails is counted and logged, not retried. For a
                    // transaction applied before, this is the record its lost answer would have
                    // made (made already, it is returned, not made twice: one per transaction).
                    let record = (transaction, &failure, states.as_slice());
                    let ledger = (mark, ledger_first);
                    let _ = record_dead_letter((settings, caller), record, ledger, transport, &mut report).await;
                }
                let mut kept = None;
                if via_rest.is_some() {
                    let record = (transaction, unchanged.as_slice());
                    let recorded =
                        record_applied_via_rest(record, (settings, caller), mark, transport, &mut report).await;
                    if let (Err((why, wait)), true) = (recorded, mark.is_some()) {
                        // Applied, but the ledger still marks it as being applied through REST: once
                        // that mark expires, a copy of it could be applied over the client's later
                        // transactions. Kept instead: sent again, it changes nothing those wrote, as
                        // they wait behind it.
                        let failure = FailedOperation::new(
                            None,
                            "applied_via_rest_not_recorded",
                            format!(
                                "applied through REST requests after its atomic call was cancelled by the statement \
                                 timeout, but recording that in the ledger failed ({why}); kept, so that it is sent \
                                 again (before the client's later transactions) rather than reported applied while a \
                                 copy of it could still be applied over them"
                            ),
                        );
                        kept = Some((failure, wait));
                    }
                }
                if let Some((failure, wait)) = kept {
                    report.retry_after_seconds = report.retry_after_seconds.max(wait);
                    report.results.push(TransactionResult::retryable(transaction_id, failure, wait));
                    stopped = true;
                } else {
                    let result = TransactionResult::success_with_unchanged(transaction_id, unchanged);
                    report.results.push(TransactionResult { already_applied, ..result })
                }
            }
            Ending::Fatal(failure, states, ledger) => {
                let recorded = match &settings.dead_letter_table {
                    Some(_) => {
                        let record = (transaction, &failure, states.as_slice());
                        record_dead_letter((settings, caller), record, (mark, 0), transport, &mut report).await
                    }
                    None if matches!(ledger, Ledger::HoldsIt { .. }) => Ok(Recorded::Yes),
                    None if sent_atomic || atomic_in_use(route, &report) => {
                        let rejected = (transaction, &failure, mark);
                        record_rejection(rejected, (settings, caller), transport, &mut report).await
                    }
                    None => Ok(Recorded::Yes),
                };
                match recorded {
                    Ok(Recorded::Yes) => report.results.push(TransactionResult::fatal(transaction_id, failure)),
                    Ok(Recorded::AppliedBefore(unchanged)) => {
                        report.results.push(applied_before(transaction_id, unchanged))
                    }
                    Err((kept, retry_after_seconds)) => {
                        // Not recorded: the client must keep the transaction, so it is retryable.
                        report.retry_after_seconds = report.retry_after_seconds.max(retry_after_seconds);
                        report.results.push(TransactionResult::retryable(transaction_id, kept, retry_after_seconds));
                        stopped = true;
                    }
                }
            }
            Ending::Conflict(failure, states, current, ledger) => {
                let recorded = match &settings.dead_letter_table {
                    Some(_) => {
                        // The dead letter keeps both sides: the client's entry (its data and
                        // previous values) and, in `details`, the server's row as it was read.
                        let mut recorded_failure = failure.clone();
                        let entry = failure.index.and_then(|i| transaction.entries.get(i));
                        recorded_failure.details = Some(dead_letter::conflict_details(&current, entry, &settings.mode));
                        let record = (transaction, &recorded_failure, states.as_slice());
                        record_dead_letter((settings, caller), record, (mark, 0), transport, &mut report).await
                    }
                    None if matches!(ledger, Ledger::HoldsIt { .. }) => Ok(Recorded::Yes),
                    None if sent_atomic || atomic_in_use(route, &report) => {
                        let rejected = (transaction, &failure, mark);
                        record_rejection(rejected, (settings, caller), transport, &mut report).await
                    }
                    None => Ok(Recorded::Yes),
                };
                match recorded {
                    Ok(Recorded::Yes) => report.results.push(TransactionResult::conflict(transaction_id, failure)),
                    Ok(Recorded::AppliedBefore(unchanged)) => {
                        report.results.push(applied_before(transaction_id, unchanged))
                    }
                    Err((mut kept, retry_after_seconds)) => {
                        kept.details = None;
                        report.retry_after_seconds = report.retry_after_seconds.max(retry_after_seconds);
                        report.results.push(TransactionResult::retryable(transaction_id, kept, retry_after_seconds));
                        stopped = true;
                    }
                }
            }
            Ending::Retryable(failure, retry_after_seconds) => {
                report.retry_after_seconds = report.retry_after_seconds.max(retry_after_seconds);
                report.results.push(TransactionResult::retryable(transaction_id, failure, retry_after_seconds));
                stopped = true;
            }
        }
        if let (true, Some(result)) = (held_after_rest, report.results.last_mut()) {
            result.applied_via_rest = Some(REJECTED_AFTER_REST.to_string());
        }
        report.rest_fallbacks += usize::from(via_rest.is_some());
        if let (Some(via), Some(result)) = (via_rest, report.results.last_mut()) {
            let kept = result.status == Status::RetryableError;
            result.applied_via_rest = Some(via.reason);
            // Kept by the client: the mark ends, so that its next attempt need not wait for it
            // (and goes on through REST, see the module docs).
            if let (Some(token), true) = (&via.mark, kept) {
                abandon_rest(transaction, (settings, caller), transport, &mut report, token).await;
            }
        }
    }
    report
}

/// Sends `request`, and again at once after a lost connection when `may_resend` (see
/// `send_resending_once`), counted in the report: the answer and its verdict for the entry at
/// `index`.
async fn send_counted<T: Transport>(
    request: &crate::http::HttpRequest,
    (index, may_resend): (Option<usize>, bool),
    (settings, caller): (&UploadSettings, &Caller),
    transport: &T,
    report: &mut UploadReport,
) -> (Result<HttpResponse, TransportError>, Verdict) {
    let (answer, sent) = send_resending_once(transport, request, may_resend).await;
    report.subrequests += sent;
    report.resent += sent - 1;
    let verdict = classify_for(&answer, index, settings, caller);
    (answer, verdict)
}

/// SQLSTATE 57014: `canceling statement due to statement timeout` (also a cancel request).
const QUERY_CANCELED: &str = "57014";

/// What the ledger's 57014 says of a transaction an earlier upload began through REST requests
/// and ended (or stopped) before it was applied (sql/atomic_upload.sql,
/// `powersync_upload_ledger_claim`): it goes on through REST, as after a statement timeout.
const BEGUN_THROUGH_REST: &str = "was begun through REST requests by an earlier upload";

/// The `applied_via_reason` of a transaction the ledger holds as rejected after an attempt of it
/// went through REST requests (answered as it was then, see [`Ledger::HoldsIt`]).
const REJECTED_AFTER_REST: &str =
    "rejected before, after an earlier attempt sent it through REST requests (its atomic \
     call was cancelled by the statement timeout): neither all-or-nothing nor exactly once, so what that attempt \
     applied before the failing entry stayed applied; nothing was applied now";

/// A transaction sent through REST requests after its atomic call was cancelled by the statement
/// timeout (see `after_timeout`).
struct ViaRest {
    /// Why, for its result's `applied_via_reason`.
    reason: String,
    /// The token of the ledger's mark of it as being applied through REST
    /// ([`plan::LEDGER_REST_BEGIN_FUNCTION`]), when marked, until the fallback ends the mark:
    /// applied (`powersync_upload_ledger_applied_via_rest`, which must then succeed), rejected
    /// (its dead letter or the ledger's rejection), or kept ([`abandon_rest`]).
    mark: Option<String>,
}

/// How long after asking for the ledger's mark a REST fallback may still send a write: half of
/// the 10 minutes the mark lasts (sql/atomic_upload.sql), so that none of its writes lands after
/// the mark expired and an atomic call of the transaction was let through. Past it, the rest of
/// the transaction waits for the next upload (`REST_FALLBACK_TOO_LONG`, retryable).
const REST_MARK_CUTOFF_MS: u64 = 5 * 60 * 1000;

/// Code of a REST fallback stopped at [`REST_MARK_CUTOFF_MS`].
pub const REST_FALLBACK_TOO_LONG: &str = "rest_fallback_too_long";

/// What the ledger said to the mark a REST fallback asks for before its first write.
enum Mark {
    /// Marked: the fallback goes on.
    Begun,
    /// The ledger has no such function (sql/atomic_upload.sql older than the worker): the
    /// fallback goes on unmarked, as before, logged.
    Unavailable,
    /// The ledger holds the transaction already (applied, or rejected): how it ends; nothing is sent.
    Held(Ending),
    /// Anything else (another upload's mark, 55P03; no answer; a missing GRANT): nothing was
    /// sent, the transaction waits; whether the mark may have been made all the same (the
    /// answer was lost, or did not come from PostgREST), so that it is dropped.
    Failed(String, Option<u64>, bool),
}

/// A fresh token for a REST fallback's mark: 16 random bytes in hex (`None` without randomness).
fn mark_token() -> Option<String> {
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes).ok()?;
    Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A transaction whose atomic call was cancelled by the statement timeout (`failure`; nothing was
/// applied), or by the ledger because an earlier upload began it through REST requests
/// ([`BEGUN_THROUGH_REST`]): sent through REST requests now, unless `UPLOAD_ATOMIC=true` or they
/// do not fit in what is left of the budget (see the module docs). Returns how it ended and,
/// when REST requests were sent, the reason for its result's `applied_via_reason`.
async fn after_timeout<T: Transport>(
    (transaction, settings, caller, reserve, time_left): (&Transaction, &UploadSettings, &Caller, usize, bool),
    mut failure: FailedOperation,
    transport: &T,
    report: &mut UploadReport,
) -> (Ending, Option<ViaRest>) {
    let entries = transaction.entries.len();
    let role = quote_ident(writing_role(settings, caller));
    let fix = format!(
        "raise the statement timeout of role {role} (alter role {role} set statement_timeout = '30s'; \
         notify pgrst, 'reload config')"
    );
    let operator_wait = operators_wait(settings);
    let begun = failure.message.contains(BEGUN_THROUGH_REST);
    let why = if begun {
        "refused because an earlier upload began applying it through REST requests"
    } else {
        "cancelled by the statement timeout"
    };
    let cancelled = format!("the atomic call of this transaction ({entries} entries) was {why}");
    if settings.atomic == AtomicMode::Always && begun {
        failure.message = format!(
            "{}; UPLOAD_ATOMIC=true sends every transaction through the atomic function, so it waits: unset \
             UPLOAD_ATOMIC so that it goes on through REST requests",
            failure.message
        );
        return (Ending::Retryable(failure, operator_wait), None);
    }
    if settings.atomic == AtomicMode::Always {
        failure.message = format!(
            "{}; {cancelled}, and UPLOAD_ATOMIC=true keeps every transaction all-or-nothing, so it waits: \
             {fix}, or unset UPLOAD_ATOMIC so that such a transaction goes through REST requests",
            failure.message
        );
        return (Ending::Retryable(failure, operator_wait), None);
    }
    if !time_left {
        report.time_budget_spent = true;
        failure.message = format!(
            "{}; {cancelled}, and this upload has run for UPLOAD_TIME_BUDGET_MS={}: sent through REST requests \
             first in the next upload",
            failure.message, settings.time_budget_ms
        );
        return (Ending::Retryable(failure, settings.retry_after_seconds), None);
    }
    let requests = match plan::plan_transaction_as(transaction, settings, caller, false) {
        Ok(requests) => requests,
        // Not reached: the atomic call passed the same checks.
        Err(refused) => {
            let states = dead_letter::refused_states(entries, refused.index);
            return (Ending::Fatal(refused, states, Ledger::NotYet), None);
        }
    };
    let needed = worst_case(&requests);
    let budget = settings.subrequest_budget;
    // One more first: the ledger's mark of it (for a transaction the ledger keys).
    let keyed = plan::ledger_keyed(transaction, caller);
    let mark = usize::from(keyed);
    if mark + needed + reserve > budget.saturating_sub(report.subrequests) {
        let mark_text = if mark == 1 { ", one to mark it in the ledger first," } else { "" };
        let reserve_text = match (reserve, &settings.dead_letter_table) {
            (0, _) => "",
            (_, Some(_)) => " plus one for a dead-letter record",
            (_, None) => " plus one to record a rejection in the atomic function's ledger",
        };
        let (why, wait) = if mark + needed + reserve < budget {
            (
                format!(
                    "through REST it needs {needed} requests{mark_text}{reserve_text}, more than this upload has left; \
                     sent first in the next upload, whose budget has room for them"
                ),
                settings.retry_after_seconds,
            )
        } else {
            (
                format!(
                    "through REST it needs {needed} requests{mark_text}{reserve_text}, more than \
                     UPLOAD_SUBREQUEST_BUDGET={budget} allows beside the atomic call, so no upload can apply it: \
                     {fix}, or raise the budget (Workers Paid plan)"
                ),
                operator_wait,
            )
        };
        failure.message = format!("{}; {cancelled}, and {why}", failure.message);
        return (Ending::Retryable(failure, wait), None);
    }
    let reason = format!(
        "{cancelled} ({}: {}), so it was sent through {needed} REST requests instead: \
         neither all-or-nothing nor exactly once",
        failure.code, failure.message
    );
    // Applied, it is recorded in the ledger (record_applied_via_rest) in the request kept for a
    // rejection; where a dead letter of its unchanged entries may take that one, one more is kept
    // when the budget has it (else the ledger's record comes first when it marked the transaction,
    // the dead letter's otherwise, and the other is skipped, logged).
    let unchanged_record = settings.dead_letter_unchanged && settings.dead_letter_table.is_some();
    let extra = usize::from(unchanged_record && keyed);
    let reserve = if mark + needed + reserve + extra <= budget.saturating_sub(report.subrequests) {
        reserve + extra
    } else {
        reserve
    };
    // Marked in the ledger first (its own request, committed before any write): meanwhile no
    // atomic call of it (another copy of the queue) applies it, to be overwritten by these writes
    // after the client's later transactions (see `plan::LEDGER_REST_BEGIN_FUNCTION`).
    let mut deadline_ms = None;
    let mut marked = None;
    if keyed {
        let asked_at = transport.now_ms();
        let token = mark_token();
        let begun = match &token {
            Some(token) => {
                begin_rest(transaction, (settings, caller), transport, report, (token, needed + reserve)).await
            }
            None => Mark::Failed("no randomness for the mark's token".to_string(), None, false),
        };
        match begun {
            Mark::Begun => {
                deadline_ms = Some(asked_at + REST_MARK_CUTOFF_MS);
                marked = token;
            }
            Mark::Unavailable => {}
            Mark::Held(ending) => return (ending, None),
            Mark::Failed(why, retry_after_seconds, maybe_made) => {
                if let (true, Some(token)) = (maybe_made, &token) {
                    abandon_rest(transaction, (settings, caller), transport, report, token).await;
                }
                failure.message = format!(
                    "{}; {cancelled}, and marking it in the ledger before sending it through REST requests \
                     failed: {why}",
                    failure.message
                );
                let wait = retry_after_seconds.unwrap_or(0).max(settings.retry_after_seconds);
                return (Ending::Retryable(failure, wait), None);
            }
        }
    }
    let ending =
        send(requests, &transaction.entries, (settings, caller), transport, report, reserve, deadline_ms).await;
    (ending, Some(ViaRest { reason, mark: marked }))
}

/// Marks `transaction` in the ledger as being applied through REST requests
/// ([`plan::LEDGER_REST_BEGIN_FUNCTION`]) under `token` before the statement-timeout fallback's
/// first write; `spare`: the requests that must stay in the budget after this one (a lost
/// connection's second attempt is made only beside them: the same token, so it is answered
/// `begun` again when the first one made the mark).
async fn begin_rest<T: Transport>(
    transaction: &Transaction,
    (settings, caller): (&UploadSettings, &Caller),
    transport: &T,
    report: &mut UploadReport,
    (token, spare): (&str, usize),
) -> Mark {
    let function = plan::LEDGER_REST_BEGIN_FUNCTION;
    let Some(request) = plan::ledger_record_request(function, transaction, (settings, caller), &[], Some(token)) else {
        return Mark::Unavailable;
    };
    let may_resend = report.subrequests + 2 + spare <= settings.subrequest_budget;
    let (answer, verdict) = send_counted(&request, (None, may_resend), (settings, caller), transport, report).await;
    let entries = transaction.entries.len();
    let (failure, retry_after) = match (verdict, &answer) {
        (Verdict::Applied, Ok(response)) => {
            let body: Value = serde_json::from_str(&response.body).unwrap_or_default();
            if body == serde_json::json!({"rest": "begun"}) {
                return Mark::Begun;
            }
            match atomic_answer(&response.body, entries) {
                Some(AtomicAnswer { dead_letter: Some(failure), rejected_after_rest, .. }) => {
                    return Mark::Held(held_rejection(failure, entries, rejected_after_rest))
                }
                Some(AtomicAnswer { already_applied: true, unchanged, .. }) => {
                    return Mark::Held(Ending::Success { unchanged, uncertain: Vec::new(), already_applied: true })
                }
                _ => (unexpected_response(None, response, "the ledger's {\"rest\": \"begun\"} or its record"), None),
            }
        }
        // (a 2xx is an answer: not reached)
        (Verdict::Applied, Err(_)) => (FailedOperation::new(None, UNEXPECTED_RESPONSE, "no answer"), None),
        (Verdict::Retryable { failure, .. } | Verdict::Fatal(failure), _) if failure.code == FUNCTION_NOT_FOUND => {
            report.dead_letter_errors.push(format!(
                "ledger call {function} missing: run sql/atomic_upload.sql again; sent through REST unmarked, so a \
                 copy of the queue applying it meanwhile could be overwritten by these writes"
            ));
            return Mark::Unavailable;
        }
        (Verdict::Retryable { failure, retry_after_seconds }, _) => (failure, retry_after_seconds),
        // A refusal (a missing GRANT, bad input) is no fault of the data: nothing was sent, it waits.
        (Verdict::Fatal(failure), _) => (failure, Some(SCHEMA_DRIFT_RETRY_AFTER_SECONDS)),
    };
    let status = failure.http_status.map_or_else(|| "no answer".to_string(), |s| format!("HTTP {s}"));
    report.dead_letter_errors.push(format!("ledger call {function} failed: {} ({status})", failure.code));
    let fix = if failure.code == "42501" && failure.message.contains(function) {
        let role = quote_ident(writing_role(settings, caller));
        format!(" (grant execute on function public.{function}(text, text, text, text) to {role})")
    } else {
        String::new()
    };
    let why = format!("{} {status}: {}{fix}", failure.code, crate::credentials::clipped(&failure.message, 300));
    // Only PostgREST's error (a SQLSTATE or PGRST code) says the function's work was rolled back.
    let maybe_made =
        failure.http_status.is_none() || failure.code.starts_with("http_") || failure.code == UNEXPECTED_RESPONSE;
    Mark::Failed(why, retry_after, maybe_made)
}

/// Ends the ledger's mark (`token`) of a transaction whose REST fallback ended retryable, or
/// whose mark's answer was lost ([`plan::LEDGER_REST_ABANDON_FUNCTION`]; another upload's mark
/// stays), so that the client's next attempt need not wait for it to expire (it goes on through
/// REST requests). Best effort: without budget left, or when it fails, the mark expires by itself
/// (logged).
async fn abandon_rest<T: Transport>(
    transaction: &Transaction,
    (settings, caller): (&UploadSettings, &Caller),
    transport: &T,
    report: &mut UploadReport,
    token: &str,
) {
    let function = plan::LEDGER_REST_ABANDON_FUNCTION;
    let Some(request) = plan::ledger_record_request(function, transaction, (settings, caller), &[], Some(token)) else {
        return;
    };
    let expires = "the mark expires within 10 minutes; until then the transaction's attempts wait";
    // Sent once more after a retryable failure (a 5xx, a timeout), budget permitting: ending a
    // mark twice is harmless, and a mark left standing holds the transaction for 10 minutes.
    for attempt in 1..=2 {
        if report.subrequests >= settings.subrequest_budget {
            report
                .dead_letter_errors
                .push(format!("ledger call {function} skipped: no subrequest budget left; {expires}"));
            return;
        }
        let may_resend = report.subrequests + 2 <= settings.subrequest_budget;
        let (answer, verdict) = send_counted(&request, (None, may_resend), (settings, caller), transport, report).await;
        match (verdict, &answer) {
            (Verdict::Applied, Ok(response)) if response.body.trim() == "true" => return,
            (Verdict::Applied, _) => {
                report.dead_letter_errors.push(format!("ledger call {function}: not the ledger's true; {expires}"));
                return;
            }
            (Verdict::Retryable { failure, .. }, _) if attempt == 1 => {
                report.dead_letter_errors.push(format!("ledger call {function} failed: {}; sent again", failure.code));
            }
            (Verdict::Retryable { failure, .. } | Verdict::Fatal(failure), _) => {
                report.dead_letter_errors.push(format!("ledger call {function} failed: {}; {expires}", failure.code));
                return;
            }
        }
    }
}

/// A transaction the ledger holds as rejected (a dead letter, or the ledger's own record),
/// answered for a re-sent or late attempt: nothing was applied now; reported as it was then.
fn held_rejection(failure: FailedOperation, entries: usize, after_rest: bool) -> Ending {
    let mut states = vec![EntryState::Failed; entries];
    // Rejected after an attempt through REST requests: the entries before the failing one stayed
    // applied (a replay leaves them out), as the dead letter that attempt made would say.
    if let (true, Some(index)) = (after_rest, failure.index) {
        states.iter_mut().take(index).for_each(|state| *state = EntryState::Applied);
    }
    let ledger = Ledger::HoldsIt { after_rest };
    match failure.index {
        Some(_) if failure.code == CONFLICT => {
            let row = failure.details.as_deref().and_then(|d| serde_json::from_str(d).ok());
            let failure = FailedOperation { details: None, ..failure };
            Ending::Conflict(failure, states, row.unwrap_or(Value::Null), ledger)
        }
        _ => Ending::Fatal(failure, states, ledger),
    }
}

/// The least `Retry-After` of a transaction that waits for the operator (a migration, a GRANT, a
/// setting): fixing it takes a deploy, so retrying every few seconds would only add load.
fn operators_wait(settings: &UploadSettings) -> u64 {
    settings.retry_after_seconds.max(SCHEMA_DRIFT_RETRY_AFTER_SECONDS)
}

/// A fatal failure found before sending: reported as such if recording its rejection still fits in
/// the budget, otherwise `None` (not attempted; the next upload starts with a fresh budget) —
/// unless this upload has not sent anything yet, since a fresh budget would not help then either
/// (only possible with a budget below the minimum `from_lookup` enforces: then reported without
/// its record).
fn refuse_unsendable(
    remaining: usize,
    fresh: bool,
    rejection_cost: usize,
    failure: FailedOperation,
    entries: usize,
) -> Option<Ending> {
    let states = dead_letter::refused_states(entries, failure.index);
    (rejection_cost <= remaining || fresh).then_some(Ending::Fatal(failure, states, Ledger::NotYet))
}

fn too_big(planned: usize, budget: usize, rejection_cost: usize, function: &str) -> FailedOperation {
    let reserve = if rejection_cost > 0 { " plus one to record its rejection" } else { "" };
    FailedOperation::new(
        None,
        "too_many_requests_for_budget",
        format!(
            "this transaction needs {planned} upstream requests{reserve}, more than \
             UPLOAD_SUBREQUEST_BUDGET={budget} allows, and the atomic function {function} that \
             applies a transaction in one request is not installed (or, for a transaction with compared \
             entries, is a copy without detect_conflicts); it waits until sql/atomic_upload.sql is \
             installed (atomic mode) or the budget raised (Workers Paid plan)"
        ),
    )
}

/// PostgREST's answer to a call of a function it does not know.
const FUNCTION_NOT_FOUND: &str = "PGRST202";

/// Whether an atomic call failed because the function does not exist, as far as the auto mode's
/// probe can tell: PostgREST says so, or a bare 404 (then REST answers the same way if the URL
/// is wrong, and waits).
fn function_missing(failure: &FailedOperation) -> bool {
    failure.code == FUNCTION_NOT_FOUND || failure.code == "http_404"
}

/// Whether an atomic call failed because the API role may not execute `function` (PostgreSQL's
/// `permission denied for function <name>`): nothing was applied. (The function's own calls,
/// e.g. of the ledger, name another function: those wait for their GRANT.)
fn function_not_executable(failure: &FailedOperation, function: &str) -> bool {
    let name = function.rsplit('.').next().unwrap_or(function);
    failure.code == "42501"
        && failure
            .message
            .strip_prefix("permission denied for function ")
            .and_then(|rest| rest.strip_prefix(name))
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(':'))
}

/// Sends a transaction's requests in order until one fails. A merged request refused whole (for
/// a bulk upsert, 21000 too: two of its rows are one row once cast) is sent again in two halves,
/// first half first, recursively: that equals applying its entries in order, since a later entry
/// of an id is always later in the request (see `plan`). The extra requests must fit in the
/// budget, keeping `reserve` for recording a rejection; when they do not, the failure stands at
/// the request's first entry (21000: the transaction is retryable).
async fn send<T: Transport>(
    requests: Vec<PlannedRequest>,
    entries: &[Entry],
    (settings, caller): (&UploadSettings, &Caller),
    transport: &T,
    report: &mut UploadReport,
    reserve: usize,
    deadline_ms: Option<u64>,
) -> Ending {
    let entry_count = entries.len();
    let mut states = vec![EntryState::NotAttempted; entry_count];
    // (request, whether it is a half of a split upsert)
    let mut queue: VecDeque<(PlannedRequest, bool)> = requests.into_iter().map(|r| (r, false)).collect();
    let mut already_applied = false;
    let mut unchanged: Vec<usize> = Vec::new();
    // those of them known to have changed no row (a merged request's count may leave it open)
    let mut surely_unchanged: Vec<usize> = Vec::new();
    let mut uncertain: Vec<usize> = Vec::new();
    // What the requests still queued may take (their reads included, as `worst_case` reserved
    // them): a resend or a split uses only what this leaves, so it never takes the reads a later
    // compared write needs (counted as one request each, they did, and that write then waited,
    // and its re-send could read the entries before it as a conflict).
    let mut pending = queue.iter().map(|(planned, _)| cost(planned)).sum::<usize>();
    // The ownership check's refusal of an entry, reported once the entries before it in its PUT
    // group are applied (when the queue is back to this length, which it reaches before it can
    // empty): see `Check::OwnerCheck` below.
    let mut refused_after: Option<(usize, FailedOperation, std::ops::Range<usize>)> = None;
    loop {
        if let Some((len, ..)) = &refused_after {
            if queue.len() == *len {
                let (_, failure, failed) = refused_after.take().expect("checked above");
                return Ending::Fatal(failure, failed_states(states, &failed), Ledger::NotYet);
            }
        }
        let Some((planned, is_half)) = queue.pop_front() else { break };
        pending -= cost(&planned);
        let index = match &planned.check {
            Check::Atomic => None,
            Check::Upsert { row_entries } if row_entries.len() == 1 => row_entries.first().copied(),
            _ => Some(planned.entries.start),
        };
        if deadline_ms.is_some_and(|deadline| transport.now_ms() >= deadline) {
            let failure = FailedOperation::new(
                Some(planned.entries.start),
                REST_FALLBACK_TOO_LONG,
                format!(
                    "its REST requests (sent after its atomic call was cancelled by the statement timeout) ran for \
                     {} s since it asked the ledger to mark it, half of the mark's 10 minutes: the rest waits for \
                     the next upload (what was sent is sent again, which changes nothing)",
                    REST_MARK_CUTOFF_MS / 1000
                ),
            );
            return Ending::Retryable(failure, settings.retry_after_seconds);
        }
        // A request whose connection failed before any answer is sent again at once, if that
        // extra request still leaves room for every request planned after it and the reserve.
        // (its own reads too, for a compared write: they come after its answer)
        let may_resend = report.subrequests + 1 + cost(&planned) + pending + reserve <= settings.subrequest_budget;
        let (answer, verdict) =
            send_counted(&planned.request, (index, may_resend), (settings, caller), transport, report).await;
        // A 2xx counts only when it is PostgREST's answer (see the module docs).
        let not_postgrest = |response: &HttpResponse, expected: &str| Verdict::Retryable {
            failure: unexpected_response(index, response, expected),
            retry_after_seconds: None,
        };
        let verdict = match (&planned.check, verdict, &answer) {
            (Check::OwnerCheck { table, ids }, Verdict::Applied, Ok(response)) => {
                owner_check(table, ids, planned.entries.start, response)
            }
            (Check::Atomic, Verdict::Applied, Ok(response)) => {
                match atomic_answer(&response.body, planned.entries.len()) {
                    Some(AtomicAnswer { conflict: Some((entry, row)), .. }) => {
                        // The whole call was rolled back: every entry failed, none applied.
                        let failure = FailedOperation::new(
                            Some(entry),
                            CONFLICT,
                            "the row changed since the client saw it: it no longer holds the previous values \
                             sent for the columns this entry changes; nothing of this transaction was applied",
                        );
                        return Ending::Conflict(failure, vec![EntryState::Failed; entry_count], row, Ledger::NotYet);
                    }
                    Some(AtomicAnswer { dead_letter: Some(failure), rejected_after_rest, .. }) => {
                        // Rejected and dead-lettered before (this call arrived late, or the client
                        // re-sent it): nothing applied now; answered as it was then.
                        return held_rejection(failure, entry_count, rejected_after_rest);
                    }
                    Some(result) => {
                        already_applied = result.already_applied;
                        unchanged.extend(result.unchanged);
                        Verdict::Applied
                    }
                    None => not_postgrest(
                        response,
                        "the atomic function's result: a JSON object with a numeric \"applied\"",
                    ),
                }
            }
            (Check::Atomic, verdict, _) => with_atomic_index(verdict, entries),
            (Check::Conditional { current, same, seen }, Verdict::Applied, Ok(response)) => {
                match affected_rows(response) {
                    Some(0) => {
                        let entry = planned.entries.start;
                        let spare = pending + reserve;
                        let reads = (current, same.as_ref(), seen);
                        match probe_conflict(reads, entry, spare, (settings, caller), transport, report).await {
                            Probe::Gone | Probe::Refused => {
                                unchanged.push(entry);
                                surely_unchanged.push(entry);
                                Verdict::Applied
                            }
                            Probe::Same => Verdict::Applied,
                            Probe::Changed(row) => {
                                let failure = FailedOperation::new(
                                    Some(entry),
                                    CONFLICT,
                                    "the row changed since the client saw it: it no longer holds the previous values \
                                 sent for the columns this entry changes; nothing of this entry was applied",
                                );
                                return Ending::Conflict(
                                    failure,
                                    failed_states(states, &planned.entries),
                                    row,
                                    Ledger::NotYet,
                                );
                            }
                            Probe::Failed(verdict) => verdict,
                        }
                    }
                    Some(_) => Verdict::Applied,
                    None => not_postgrest(response, "a write answered with its row count, Content-Range: */<n>"),
                }
            }
            (Check::Upsert { row_entries } | Check::Filtered { row_entries, .. }, Verdict::Applied, Ok(response)) => {
                match affected_rows(response) {
                    Some(count) => {
                        // Fewer rows changed than rows named (a PATCH or DELETE whose row is gone
                        // or hidden; a PUT whose row the database skipped: a trigger returning
                        // null): with one, that entry; with several, the count cannot say which,
                        // so all of them. (A PUT group's rows are distinct rows.)
                        let named = match &planned.check {
                            Check::Filtered { distinct_ids, .. } => *distinct_ids,
                            _ => row_entries.len(),
                        };
                        if count < named as u64 {
                            unchanged.extend(row_entries.iter().copied());
                            if count == 0 {
                                surely_unchanged.extend(row_entries.iter().copied());
                            } else {
                                uncertain.extend(row_entries.iter().copied());
                            }
                        }
                        Verdict::Applied
                    }
                    None => not_postgrest(response, "a write answered with its row count, Content-Range: */<n>"),
                }
            }
            (_, verdict, _) => verdict,
        };
        let verdict =
            refused_a_converted_boolean(refused_for_another_table(verdict, entries, settings), entries, settings);
        // A PATCH or DELETE that changed no row is `unchanged` in a dead letter, not `applied`
        // (a replay sends it again); one that may have changed its row stays `applied`.
        if matches!(verdict, Verdict::Applied) {
            mark(&mut states, surely_unchanged.iter().copied(), EntryState::Unchanged);
        }
        match verdict {
            Verdict::Applied => match (&planned.check, is_half) {
                (Check::OwnerCheck { .. }, _) => {}
                (Check::Atomic, _) => mark(&mut states, planned.entries.clone(), EntryState::Applied),
                (Check::Upsert { row_entries } | Check::Filtered { row_entries, .. }, true) => {
                    mark(&mut states, row_entries.iter().copied(), EntryState::Applied)
                }
                _ => mark(&mut states, planned.entries.clone(), EntryState::Applied),
            },
            // Refused whole (nothing of it applied): a request of several rows or ids is sent again
            // in halves, first half first, recursively, which equals applying its entries in
            // order and names the entry at fault. For 21000 (two rows of an upsert are one row
            // once cast) they are how it applies at all, so without room for them the transaction
            // waits; for any other refusal it is then reported at the request's first entry.
            // The ownership check found the row of an entry of this PUT group owned by another
            // user: the group's rows before it are upserted first (in place of the whole group),
            // so that they are applied, or one of them is reported at fault, as in order; then
            // that entry is reported. Those rows are checked again first, alone: one of them may
            // name the same foreign row in another spelling (`plan::owner_check_before`).
            Verdict::Fatal(failure)
                if matches!(planned.check, Check::OwnerCheck { .. })
                    && failure.index.is_some_and(|at| at > planned.entries.start) =>
            {
                let at = failure.index.unwrap_or(planned.entries.start);
                let before = queue.front().and_then(|(upsert, _)| plan::upsert_before(upsert, at));
                let again = plan::owner_check_before(&planned, at, settings, caller);
                let (Some(before), Some(again)) = (before, again) else {
                    return Ending::Fatal(failure, failed_states(states, &planned.entries), Ledger::NotYet);
                };
                let upsert_cost = queue.front().map_or(0, |(upsert, _)| cost(upsert));
                let room = report.subrequests + pending - upsert_cost + cost(&before) + cost(&again) + reserve
                    <= settings.subrequest_budget;
                if !room {
                    let start = planned.entries.start;
                    let mut failure = failure;
                    failure.message = format!(
                        "{} (entry {at}); the rows of entries {start}..={}, sent with it, were not written either: \
                         checking them again (an id of theirs may name the same row in another spelling) needs more \
                         requests than UPLOAD_SUBREQUEST_BUDGET leaves in this upload",
                        failure.message,
                        at - 1
                    );
                    failure.index = Some(start);
                    return Ending::Fatal(failure, failed_states(states, &planned.entries), Ledger::NotYet);
                }
                if let Some((upsert, _)) = queue.pop_front() {
                    pending -= cost(&upsert);
                }
                refused_after = Some((queue.len(), failure, at..planned.entries.end));
                pending += cost(&before) + cost(&again);
                queue.push_front((before, true));
                queue.push_front((again, false));
            }
            Verdict::Fatal(failure) => match plan::halves(&planned, entries, settings, caller) {
                Some(halves) if report.subrequests + pending + 2 + reserve <= settings.subrequest_budget => {
                    for half in halves.into_iter().rev() {
                        pending += cost(&half);
                        queue.push_front((half, true));
                    }
                }
                Some(_) if failure.code == CARDINALITY_VIOLATION => {
                    let mut failure = failure;
                    failure.message = format!(
                        "{}; two rows of one upsert are the same row once cast, and sending them apart \
                             needs more requests than UPLOAD_SUBREQUEST_BUDGET leaves in this upload",
                        failure.message
                    );
                    return Ending::Retryable(failure, settings.retry_after_seconds);
                }
                Some(_) => {
                    let mut failure = failure;
                    failure.message = format!(
                        "{}; the entry at fault is one of entries {}..={} (sent as one request), and finding \
                             which needs more requests than UPLOAD_SUBREQUEST_BUDGET leaves in this upload",
                        failure.message,
                        planned.entries.start,
                        planned.entries.end.saturating_sub(1)
                    );
                    return Ending::Fatal(failure, failed_states(states, &planned.entries), Ledger::NotYet);
                }
                None => return Ending::Fatal(failure, failed_states(states, &planned.entries), Ledger::NotYet),
            },
            // The statement timeout cancelled the whole upsert (nothing of it applied): its halves
            // are smaller statements, each with a timeout of its own.
            Verdict::Retryable { mut failure, retry_after_seconds } if failure.code == QUERY_CANCELED => {
                let halves = match planned.check {
                    Check::Upsert { .. } => plan::halves(&planned, entries, settings, caller),
                    _ => None,
                };
                let fits = |halves: &[PlannedRequest; 2]| {
                    report.subrequests + pending + halves.len() + reserve <= settings.subrequest_budget
                };
                match halves {
                    Some(halves) if fits(&halves) => {
                        for half in halves.into_iter().rev() {
                            pending += cost(&half);
                            queue.push_front((half, true));
                        }
                    }
                    _ => {
                        if matches!(planned.check, Check::Upsert { ref row_entries } if row_entries.len() > 1) {
                            failure.message = format!(
                                "{}; the statement timeout cancelled an upsert of several rows, and sending it in \
                                 smaller parts needs more requests than UPLOAD_SUBREQUEST_BUDGET leaves in this upload",
                                failure.message
                            );
                        }
                        let wait = retry_after_seconds.unwrap_or(0).max(settings.retry_after_seconds);
                        return Ending::Retryable(failure, wait);
                    }
                }
            }
            Verdict::Retryable { failure, retry_after_seconds } => {
                let wait = retry_after_seconds.unwrap_or(0).max(settings.retry_after_seconds);
                return Ending::Retryable(failure, wait);
            }
        }
    }
    unchanged.sort_unstable();
    unchanged.dedup();
    uncertain.sort_unstable();
    uncertain.dedup();
    Ending::Success { unchanged, uncertain, already_applied }
}

/// The most subrequests `requests` can take: one each, plus the reads a conditional write may need
/// when it changes no row (see [`probe_conflict`]). Reserved up front, so that a transaction
/// whose re-send finds its own earlier writes (each then needing its reads) still fits in a fresh
/// budget: one that cannot fit is too big for REST and goes through the atomic function.
fn worst_case(requests: &[PlannedRequest]) -> usize {
    requests.iter().map(cost).sum()
}

/// The most subrequests one planned request can take (see [`worst_case`]).
fn cost(planned: &PlannedRequest) -> usize {
    match &planned.check {
        Check::Conditional { same: Some(_), .. } => COMPARED_WRITE_REQUESTS,
        Check::Conditional { same: None, .. } => COMPARED_WRITE_REQUESTS - 1,
        _ => 1,
    }
}

/// Code of a conflict's `failed_operation`.
pub const CONFLICT: &str = "conflict";

/// What the reads after a conditional write that changed no row found (see [`probe_conflict`]).
enum Probe {
    /// No row with that id (gone, or hidden from the caller): `unchanged`, as without conditions.
    Gone,
    /// The row already holds the PATCH's new values (its own earlier application): applied.
    Same,
    /// The row still holds the values the client saw: nobody changed it, the write was refused (a
    /// policy for its command, the row readable; a trigger): `unchanged`, not a conflict.
    Refused,
    /// The row holds other values: a conflict; the row as read.
    Changed(Value),
    /// A read failed: its verdict.
    Failed(Verdict),
}

/// After a conditional PATCH or DELETE of entry `entry` changed no row: reads the row
/// (`current`), for a PATCH whether it already holds the new values (`same`), then whether it
/// still holds the previous ones (`seen`). Needs up to three requests, which must leave `spare`
/// requests of the budget (those planned after this one and the dead-letter reserve); without
/// them the transaction is retryable: nothing of this entry was applied, and sending it again is
/// safe.
async fn probe_conflict<T: Transport>(
    (current, same, seen): (&crate::http::HttpRequest, Option<&crate::http::HttpRequest>, &crate::http::HttpRequest),
    entry: usize,
    spare: usize,
    (settings, caller): (&UploadSettings, &Caller),
    transport: &T,
    report: &mut UploadReport,
) -> Probe {
    let reads = if same.is_some() { 3 } else { 2 };
    if report.subrequests + reads + spare > settings.subrequest_budget {
        let failure = FailedOperation::new(
            Some(entry),
            "conflict_check_budget",
            "a conditional write changed no row, and telling a changed row from a gone one needs more requests \
             than UPLOAD_SUBREQUEST_BUDGET leaves in this upload; the transaction is sent again",
        );
        return Probe::Failed(Verdict::Retryable { failure, retry_after_seconds: None });
    }
    let may_resend = report.subrequests + 1 + reads + spare <= settings.subrequest_budget;
    let row = match read_rows(current.clone(), entry, may_resend, (settings, caller), transport, report).await {
        Ok(rows) => match rows.into_iter().next() {
            None => return Probe::Gone,
            Some(row) => row,
        },
        Err(verdict) => return Probe::Failed(verdict),
    };
    let mut left = reads - 1;
    for (check, found) in [(same, Probe::Same), (Some(seen), Probe::Refused)] {
        let Some(check) = check else { continue };
        let may_resend = report.subrequests + 1 + left + spare <= settings.subrequest_budget;
        left -= 1;
        match read_rows(check.clone(), entry, may_resend, (settings, caller), transport, report).await {
            Ok(rows) if !rows.is_empty() => return found,
            Ok(_) => {}
            Err(verdict) => return Probe::Failed(verdict),
        }
    }
    Probe::Changed(row)
}

/// Sends a read whose 2xx answer must be a JSON array of rows.
async fn read_rows<T: Transport>(
    request: crate::http::HttpRequest,
    entry: usize,
    may_resend: bool,
    (settings, caller): (&UploadSettings, &Caller),
    transport: &T,
    report: &mut UploadReport,
) -> Result<Vec<Value>, Verdict> {
    let (answer, verdict) =
        send_counted(&request, (Some(entry), may_resend), (settings, caller), transport, report).await;
    match (verdict, &answer) {
        (Verdict::Applied, Ok(response)) => match serde_json::from_str::<Value>(&response.body) {
            Ok(Value::Array(rows)) => Ok(rows),
            _ => Err(Verdict::Retryable {
                failure: unexpected_response(Some(entry), response, "a JSON array of rows"),
                retry_after_seconds: None,
            }),
        },
        (verdict, _) => Err(verdict),
    }
}

/// Sets `state` for each of `entries` that was not attempted yet.
fn mark(states: &mut [EntryState], entries: impl IntoIterator<Item = usize>, state: EntryState) {
    for i in entries {
        if let Some(slot) = states.get_mut(i).filter(|s| **s == EntryState::NotAttempted) {
            *slot = state;
        }
    }
}

/// The states once the request covering `failed` failed: its entries not applied are `failed`,
/// entries before it that no request covered (PATCHes with nothing to write) `applied`, the rest
/// `not_attempted`.
fn failed_states(mut states: Vec<EntryState>, failed: &std::ops::Range<usize>) -> Vec<EntryState> {
    mark(&mut states, 0..failed.start, EntryState::Applied);
    mark(&mut states, failed.clone(), EntryState::Failed);
    states
}

/// SQLSTATE 21000: "ON CONFLICT DO UPDATE command cannot affect row a second time".
const CARDINALITY_VIOLATION: &str = "21000";

/// The verdict on the service-mode ownership check: rows listed in the answer exist and belong to
/// someone else, so upserting them would take them over.
fn owner_check(table: &str, ids: &[(String, usize)], first: usize, response: &HttpResponse) -> Verdict {
    let rows = match serde_json::from_str::<Value>(&response.body) {
        Ok(Value::Array(rows)) => rows,
        _ => {
            let mut failure = FailedOperation::new(
                Some(first),
                "unexpected_response",
                "the ownership check did not answer with a JSON array",
            );
            failure.http_status = Some(response.status);
            return Verdict::Retryable { failure, retry_after_seconds: None };
        }
    };
    // The database answers with its own spelling of the id (a uuid in lower case, an integer
    // without leading zeros): match exactly first, then by the planner's cast key. Of several
    // rows, the one of the earliest entry is reported (the database lists them in its own order).
    let entry_of = |foreign: &str| {
        ids.iter()
            .find(|(id, _)| id == foreign)
            .or_else(|| ids.iter().find(|(id, _)| super::plan::cast_key(id) == super::plan::cast_key(foreign)))
            .map_or(first, |(_, i)| *i)
    };
    let found = rows
        .iter()
        .map(|row| match row.get("id") {
            Some(Value::String(id)) => id.clone(),
            Some(other) => other.to_string(),
            None => String::new(),
        })
        .map(|foreign| (entry_of(&foreign), foreign))
        .min_by_key(|(index, _)| *index);
    let Some((index, foreign)) = found else { return Verdict::Applied };
    let mut failure =
        FailedOperation::new(Some(index), "42501", format!("row {foreign} of table {table} belongs to another owner"));
    failure.http_status = Some(response.status);
    Verdict::Fatal(failure)
}

/// Atomic calls: the function names the failing op in its error hint; ops are entries one to one.
fn with_atomic_index(verdict: Verdict, entries: &[Entry]) -> Verdict {
    let locate = |mut failure: FailedOperation| {
        let ops: Vec<(&str, &str, &str)> =
            entries.iter().map(|e| (e.op.as_str(), e.table.as_str(), e.id.as_str())).collect();
        failure.index =
            failure.hint.as_deref().and_then(|hint| op_index_from_hint(hint, &ops)).filter(|i| *i < entries.len());
        failure
    };
    match verdict {
        Verdict::Applied => Verdict::Applied,
        Verdict::Fatal(failure) => Verdict::Fatal(locate(failure)),
        Verdict::Retryable { failure, retry_after_seconds } => {
            Verdict::Retryable { failure: locate(failure), retry_after_seconds }
        }
    }
}

/// A refusal of a row of a table the transaction does not write (a row-level security policy's,
/// a not-null, check or foreign-key constraint's: [`outcome::refused_table_of`]): a trigger's or
/// function's own write (into a log table with row-level security on and no policy for it, or
/// a column the trigger never fills), which the operator fixes. It waits, unless the operator
/// chose `dangerously_fatal` for its code.
fn refused_for_another_table(verdict: Verdict, entries: &[Entry], settings: &UploadSettings) -> Verdict {
    match verdict {
        Verdict::Fatal(mut failure)
            if settings.error_class_overrides.get(&failure.code) != Some(ErrorClass::DangerouslyFatal)
                && outcome::refused_table_of(&failure.code, &failure.message)
                    .is_some_and(|table| !entries.iter().any(|entry| entry.table == table)) =>
        {
            failure.message = format!(
                "{}: a table this transaction does not write, so a trigger's or function's own write, which \
                 that table refuses (the operator's to fix; the upload waits)",
                failure.message
            );
            Verdict::Retryable { failure, retry_after_seconds: Some(SCHEMA_DRIFT_RETRY_AFTER_SECONDS) }
        }
        verdict => verdict,
    }
}

/// A refusal of `true` or `false` (`22P02 invalid input syntax for type <t>: "true"`) in a
/// transaction holding a 0 or 1 that the worker itself sent as one, for `UPLOAD_BOOLEAN_COLUMNS`:
/// the setting names a column that takes no boolean (an integer column, or one a migration
/// changed), and the client's number was valid. The operator fixes the setting; it waits, unless
/// the operator chose `dangerously_fatal` for 22P02.
fn refused_a_converted_boolean(verdict: Verdict, entries: &[Entry], settings: &UploadSettings) -> Verdict {
    let Verdict::Fatal(mut failure) = verdict else { return verdict };
    let refused_a_boolean = failure.code == "22P02"
        && settings.error_class_overrides.get(&failure.code) != Some(ErrorClass::DangerouslyFatal)
        && (failure.message.ends_with(": \"true\"") || failure.message.ends_with(": \"false\""));
    let converted = refused_a_boolean
        .then(|| {
            entries.iter().find_map(|entry| {
                super::row::converted_boolean(&entry.table, &entry.data, settings).map(|column| (&entry.table, column))
            })
        })
        .flatten();
    match converted {
        Some((table, column)) => {
            failure.message = format!(
                "{}: UPLOAD_BOOLEAN_COLUMNS names {table}.{column}, whose 0 and 1 the worker sends as false and \
                 true, and the database takes no boolean there (the operator's to fix; the upload waits)",
                failure.message
            );
            Verdict::Retryable { failure, retry_after_seconds: Some(SCHEMA_DRIFT_RETRY_AFTER_SECONDS) }
        }
        None => Verdict::Fatal(failure),
    }
}

/// The database role the writes run as: in rls mode the session's (`authenticated`, or a custom
/// role an access-token hook sets), in service mode the service key's. Named in the fixes the
/// operator is given (a GRANT, a statement timeout).
fn writing_role<'a>(settings: &UploadSettings, caller: &'a Caller) -> &'a str {
    match (&settings.mode, caller.role.as_deref()) {
        (WriteMode::Rls, Some(role)) if !role.is_empty() => role,
        (mode, _) => mode.api_role(),
    }
}

/// [`classify`] under this upload's settings, for this caller.
fn classify_for(
    answer: &Result<HttpResponse, TransportError>,
    index: Option<usize>,
    settings: &UploadSettings,
    caller: &Caller,
) -> Verdict {
    let written_as = WrittenAs {
        api_role: writing_role(settings, caller),
        sub: &caller.user_id,
        sub_written_as_owner: matches!(settings.mode, WriteMode::Service { .. }),
    };
    classify(answer, index, &settings.error_class_overrides, written_as)
}

/// The failure reported instead of a rejection (`failure`) whose record could not be made, so
/// that the client keeps the transaction: `code` and what was `recording`, then why it failed;
/// the recorder's own error names the fix (the GRANT to run, the user's cap reached) in `hint`.
fn kept_instead(
    failure: &FailedOperation,
    (code, recording): (&str, &str),
    why: String,
    http_status: Option<u16>,
    hint: Option<String>,
) -> FailedOperation {
    let message = format!("{}: {}; not discarded because {recording} failed ({why})", failure.code, failure.message);
    let mut kept = FailedOperation::new(failure.index, code, message);
    kept.details = failure.details.clone();
    kept.hint = hint;
    kept.http_status = http_status;
    kept
}

/// Whether transactions go to the atomic function, for this caller and now: so a transaction
/// rejected in this upload may also have atomic calls from earlier attempts that reach the
/// database late. (This upload's own atomic call of it is known: `sent_atomic`.)
fn atomic_in_use(route: Route, report: &UploadReport) -> bool {
    route != Route::Rest && report.atomic_function != Some(false) && !report.atomic_function_not_executable
}

/// The result of a transaction the ledger holds applied ([`Recorded::AppliedBefore`]), with the
/// entries that changed no row as the ledger recorded them then.
fn applied_before(transaction_id: Option<Value>, unchanged: Vec<usize>) -> TransactionResult {
    TransactionResult { already_applied: true, ..TransactionResult::success_with_unchanged(transaction_id, unchanged) }
}

/// What recording a rejection found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Recorded {
    /// Recorded (or nothing to record).
    Yes,
    /// The ledger holds the transaction applied (its `55000 … was applied: …`): an earlier
    /// attempt applied it whole (a call that reached the database late, or one whose answer was
    /// lost before a setting changed the route or the checks). This attempt's rejection is moot:
    /// reported `already_applied`, as its atomic re-send would be. (Kept instead, a re-send that
    /// never asks the ledger, one refused before sending or sent through REST, would be kept on
    /// every attempt, and the user's later transactions behind it.) With the indexes of its
    /// entries that changed no row, as the ledger recorded them.
    AppliedBefore(Vec<usize>),
}

/// The ledger's refusal of a transaction of `entries` entries it holds applied (`55000 … was
/// applied: …`, its detail `{"unchanged": [...]}`, absent from older SQL): what it recorded
/// then. `None` for any other error.
fn ledger_holds_it_applied(verdict: &Verdict, entries: usize) -> Option<Recorded> {
    let (Verdict::Retryable { failure: error, .. } | Verdict::Fatal(error)) = verdict else { return None };
    if error.code != "55000" || !error.message.contains(" was applied: ") {
        return None;
    }
    let detail: Option<Value> = error.details.as_deref().and_then(|d| serde_json::from_str(d).ok());
    let listed = detail.as_ref().and_then(|d| d.get("unchanged"));
    let unchanged = outcome::unchanged_indexes(listed, entries).unwrap_or_default();
    Some(Recorded::AppliedBefore(unchanged))
}

/// Without a dead-letter table, records a rejected transaction in the atomic function's ledger
/// (`powersync_upload_ledger_reject`) before it is reported rejected, so that no call of it
/// that reaches the database later (a timed-out attempt) applies it after the client has
/// discarded it. When that fails (no budget left, the ledger shows it applied, any error), the
/// error to report instead, with its `Retry-After`: the transaction stays with the client. A
/// ledger without the function (sql/atomic_upload.sql older than the worker) leaves it
/// unguarded, as before: reported rejected, the log saying why. Never exceeds the budget.
async fn record_rejection<T: Transport>(
    (transaction, failure, mark): (&Transaction, &FailedOperation, Option<&str>),
    (settings, caller): (&UploadSettings, &Caller),
    transport: &T,
    report: &mut UploadReport,
) -> Result<Recorded, (FailedOperation, u64)> {
    let function = plan::LEDGER_REJECT_FUNCTION;
    let kept = |why: String, http_status: Option<u16>, hint: Option<String>| {
        let recording = "recording its rejection in the ledger";
        kept_instead(failure, ("rejection_not_recorded", recording), why, http_status, hint)
    };
    // With the failure as reported, so that a later call of it is answered the same way; a ledger
    // older than that argument (PGRST202) is asked again without it.
    let mut with_failure = true;
    let (error, retry_after) = loop {
        let request = plan::ledger_reject_request(transaction, (settings, caller), with_failure.then_some(failure));
        let Some(request) = request else {
            return Ok(Recorded::Yes);
        };
        let request = with_mark(request, mark);
        if report.subrequests >= settings.subrequest_budget {
            report.dead_letter_errors.push(format!("ledger call {function} skipped: no subrequest budget left"));
            if !with_failure {
                // As for a ledger without the function (below): the next upload would find it so again.
                return Ok(Recorded::Yes);
            }
            return Err((kept("no subrequest budget left".to_string(), None, None), settings.retry_after_seconds));
        }
        let may_resend = report.subrequests + 2 <= settings.subrequest_budget;
        let (answer, verdict) = send_counted(&request, (None, may_resend), (settings, caller), transport, report).await;
        if let Some(applied) = ledger_holds_it_applied(&verdict, transaction.entries.len()) {
            return Ok(applied);
        }
        break match (verdict, &answer) {
            (Verdict::Applied, Ok(response)) if response.body.trim() == "true" => return Ok(Recorded::Yes),
            (Verdict::Applied, _) => {
                // A 2xx that is not the function's answer (a catch-all server, a proxy): not recorded.
                let mut error = FailedOperation::new(None, UNEXPECTED_RESPONSE, "the answer is not the ledger's true");
                error.http_status = answer.as_ref().ok().map(|response| response.status);
                (error, None)
            }
            (Verdict::Retryable { failure: error, .. } | Verdict::Fatal(error), _)
                if error.code == FUNCTION_NOT_FOUND && with_failure =>
            {
                report.dead_letter_errors.push(format!(
                    "ledger call {function} takes no p_rejection: run sql/atomic_upload.sql again; until then a \
                     re-send of a rejected transaction is answered {DEAD_LETTERED}, without its index and code"
                ));
                with_failure = false;
                continue;
            }
            (Verdict::Retryable { failure: error, .. } | Verdict::Fatal(error), _)
                if error.code == FUNCTION_NOT_FOUND =>
            {
                report.dead_letter_errors.push(format!(
                    "ledger call {function} missing: run sql/atomic_upload.sql again; a late call of this rejected \
                     transaction could still apply it"
                ));
                return Ok(Recorded::Yes);
            }
            // A refusal only an operator changes: the transaction waits, as for schema drift.
            (Verdict::Fatal(error), _) => (error, Some(SCHEMA_DRIFT_RETRY_AFTER_SECONDS)),
            (Verdict::Retryable { failure: error, retry_after_seconds }, _) => (error, retry_after_seconds),
        };
    };
    let status = error.http_status.map_or_else(|| "no answer".to_string(), |s| format!("HTTP {s}"));
    report.dead_letter_errors.push(format!("ledger call {function} failed: {} ({status})", error.code));
    let wait = retry_after.unwrap_or(0).max(settings.retry_after_seconds);
    let why = format!("{} {status}: {}", error.code, crate::credentials::clipped(&error.message, 300));
    Err((kept(why, error.http_status, error.hint.clone()), wait))
}

/// After a transaction was applied through REST requests because its atomic call was cancelled
/// by the statement timeout, records it in the atomic function's ledger as applied
/// (`powersync_upload_ledger_applied_via_rest`, for a caller the ledger keys), so that an
/// attempt of it the bridge gave up on (a timeout) that reaches the database late applies
/// nothing, instead of applying it again after the client's later transactions; with its
/// `unchanged` entries, which a re-send answered already applied reports again. Uses the
/// subrequest kept for a rejection's record, or one more kept beside it when a dead letter of
/// its unchanged entries takes that one and the budget has room (`after_timeout`; without room
/// that dead letter comes first). Best effort: the transaction was applied and is
/// reported so; a record that fails (no budget left, a ledger without the function, any error)
/// is logged, and leaves only that late attempt unguarded.
async fn record_applied_via_rest<T: Transport>(
    (transaction, unchanged): (&Transaction, &[usize]),
    (settings, caller): (&UploadSettings, &Caller),
    mark: Option<&str>,
    transport: &T,
    report: &mut UploadReport,
) -> Result<(), (String, u64)> {
    let function = plan::LEDGER_APPLIED_VIA_REST_FUNCTION;
    let Some(request) = plan::ledger_record_request(function, transaction, (settings, caller), unchanged, None) else {
        return Ok(());
    };
    let request = with_mark(request, mark);
    let unguarded = "a late call of this transaction could apply it again";
    if report.subrequests >= settings.subrequest_budget {
        report
            .dead_letter_errors
            .push(format!("ledger call {function} skipped: no subrequest budget left; {unguarded}"));
        return Err(("no subrequest budget left".to_string(), settings.retry_after_seconds));
    }
    let may_resend = report.subrequests + 2 <= settings.subrequest_budget;
    let (answer, verdict) = send_counted(&request, (None, may_resend), (settings, caller), transport, report).await;
    let (failure, retry_after) = match (verdict, &answer) {
        (Verdict::Applied, Ok(response)) if response.body.trim() == "true" => return Ok(()),
        (Verdict::Applied, _) => {
            (FailedOperation::new(None, UNEXPECTED_RESPONSE, "the answer is not the ledger's true"), None)
        }
        // A refusal (a missing GRANT) is the operator's to fix: the transaction waits as for one.
        (Verdict::Fatal(failure), _) => (failure, Some(SCHEMA_DRIFT_RETRY_AFTER_SECONDS)),
        (Verdict::Retryable { failure, retry_after_seconds }, _) => (failure, retry_after_seconds),
    };
    let status = answer.as_ref().map_or_else(|_| "no answer".to_string(), |r| format!("HTTP {}", r.status));
    let fix = if failure.code == FUNCTION_NOT_FOUND { ": run sql/atomic_upload.sql again" } else { "" };
    report
        .dead_letter_errors
        .push(format!("ledger call {function} failed: {} ({status}); {unguarded}{fix}", failure.code));
    let why = format!("{} {status}: {}", failure.code, crate::credentials::clipped(&failure.message, 300));
    Err((why, retry_after.unwrap_or(0).max(settings.retry_after_seconds)))
}

/// `request` with the REST fallback's mark (`X-PowerSync-Rest-Mark`), when the transaction has
/// one: the ledger lets only the upload that made a mark end it (sql/atomic_upload.sql).
fn with_mark(request: crate::http::HttpRequest, mark: Option<&str>) -> crate::http::HttpRequest {
    match mark {
        Some(token) => request.header(plan::REST_MARK_HEADER, token),
        None => request,
    }
}

/// Records a fatal transaction (`record`: the transaction, its failure, its entries' states)
/// through `powersync_record_dead_letter`. When that fails (or no budget is left for it, or the
/// answer is not the recorded row's id), the error to report instead, with its `Retry-After`:
/// the transaction stays with the client. Never exceeds the budget.
async fn record_dead_letter<T: Transport>(
    (settings, caller): (&UploadSettings, &Caller),
    record: (&Transaction, &FailedOperation, &[EntryState]),
    (mark, spare): (Option<&str>, usize),
    transport: &T,
    report: &mut UploadReport,
) -> Result<Recorded, (FailedOperation, u64)> {
    let (transaction, failure, states) = record;
    // The recorder's own error, which names the fix (the GRANT to run, the user's cap reached),
    // goes to the answer; the log line keeps its code only (a database error may quote a value).
    let kept = |why: String, http_status: Option<u16>, hint: Option<String>| {
        let recording = "recording it in the dead-letter table";
        kept_instead(failure, ("dead_letter_failed", recording), why, http_status, hint)
    };
    let function = dead_letter::RECORD_FUNCTION;
    if report.subrequests >= settings.subrequest_budget {
        report.dead_letter_failures += 1;
        report.dead_letter_errors.push(format!("dead-letter call {function} skipped: no subrequest budget left"));
        return Err((kept("no subrequest budget left".to_string(), None, None), settings.retry_after_seconds));
    }
    let request = with_mark(dead_letter::request(settings, caller, transaction, failure, states), mark);
    let may_resend = report.subrequests + 2 + spare <= settings.subrequest_budget;
    let (answer, verdict) = send_counted(&request, (None, may_resend), (settings, caller), transport, report).await;
    if let Some(applied) = ledger_holds_it_applied(&verdict, transaction.entries.len()) {
        return Ok(applied);
    }
    let (error, retry_after) = match (verdict, &answer) {
        (Verdict::Applied, Ok(response)) if dead_letter::is_recorded(&response.body) => {
            report.dead_letters += 1;
            return Ok(Recorded::Yes);
        }
        (Verdict::Applied, _) => {
            // A 2xx that is not the function's answer (a catch-all server, a proxy): not recorded.
            let mut error = FailedOperation::new(None, "unexpected_response", "the answer is not a dead letter's id");
            error.http_status = answer.as_ref().ok().map(|response| response.status);
            (error, None)
        }
        // Refused for good (the user's cap of waiting dead letters, 54000; a refusal the
        // recorder raises): only an operator changes that, as for schema drift.
        (Verdict::Fatal(error), _) => (error, Some(SCHEMA_DRIFT_RETRY_AFTER_SECONDS)),
        (Verdict::Retryable { failure: error, retry_after_seconds }, _) => (error, retry_after_seconds),
    };
    report.dead_letter_failures += 1;
    let status = error.http_status.map_or_else(|| "no answer".to_string(), |s| format!("HTTP {s}"));
    report.dead_letter_errors.push(format!("dead-letter call {function} failed: {} ({status})", error.code));
    let wait = retry_after.unwrap_or(0).max(settings.retry_after_seconds);
    let why = format!("{} {status}: {}", error.code, crate::credentials::clipped(&error.message, 300));
    Err((kept(why, error.http_status, error.hint.clone()), wait))
}
