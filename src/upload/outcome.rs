//! Outcomes: what an upstream answer means for a transaction, and the report sent to the client.
//!
//! The one rule that matters: a *fatal* error makes the client discard the transaction, so only
//! errors that retrying cannot fix are fatal (bad data, constraint and permission violations,
//! requests PostgREST cannot understand). Everything that may heal by itself — network failures,
//! overload, expired sessions, a database in read-only mode, configuration mistakes on the bridge's
//! side — is *retryable*, so the data waits in the client's queue instead of being lost.
//!
//! [`classify`] applies these rules, in this order:
//!
//! 1. no answer (connection refused, DNS, timeout) → retryable (`network_error` / `timeout`);
//!    a request whose connection failed before any answer has by then already been sent a
//!    second time, at once (see `delivery`): this is the second failure;
//! 2. 2xx → applied, as far as the status goes: the caller then checks that the body is
//!    PostgREST's answer (see `delivery`: the atomic function's result, a write's
//!    `Content-Range` count); anything else is `unexpected_response` ([`unexpected_response`]),
//!    retryable;
//! 3. the answer's code: the SQLSTATE or `PGRST` code of a PostgREST error body
//!    `{"code","message","details","hint"}`, else `http_<status>`. `UPLOAD_ERROR_CLASS_OVERRIDES`
//!    is consulted first (see [`ClassOverrides`]); then the SQLSTATE class decides, before the
//!    HTTP status:
//!    - *schema drift* → retryable, with `Retry-After` at least
//!      [`SCHEMA_DRIFT_RETRY_AFTER_SECONDS`]: an undefined column (`42703`, `PGRST204`), table
//!      (`42P01`, `PGRST205`, and a 404 without a code, which PostgREST 12 gives for a table
//!      missing from its schema cache, as does a wrong `SUPABASE_URL`), function (`42883`;
//!      `PGRST202`: the atomic function is not installed; `PGRST203`: several overloads of it
//!      match), or no unique constraint on `id` for the upsert's conflict target (`42P10`); a
//!      path PostgREST 13 does not serve (`PGRST125`: a wrong path in `SUPABASE_URL`); a trigger
//!      setting a malformed `response.headers` or `response.status` (`PGRST111`, `PGRST112`).
//!      These are the operator's to fix (an app release that writes a new column before its
//!      migration ships): the writes wait in the client's queue;
//!    - *a missing GRANT* → retryable, with the same least `Retry-After` as schema drift:
//!      `42501` whose message is PostgreSQL's `permission denied for <kind> <name>` (table,
//!      view, column, sequence, schema, function, …: aclchk.c's wording). Since 2026 Supabase no
//!      longer grants new tables and functions to the API roles by default, so a table created
//!      without its GRANTs refuses every write: the operator's mistake, fixed by one statement,
//!      which the failure's message names ([`missing_grant`]), for the API role of the write
//!      mode (`authenticated` in `rls` mode, `service_role` in `service` mode). Any other
//!      `42501` (a row refused by a row-level security policy, `new row violates row-level
//!      security policy …`; the service-mode `row … belongs to another owner`) stays fatal;
//!    - *an error of the database's own policies, triggers or functions* → retryable, with the
//!      same least `Retry-After` ([`is_database_setup_error`]): class `42` except `42501`,
//!      `42804` and `42846`, and classes `2F`, `38`, `39`, `0A`, `3F`, `26`;
//!    - SQLSTATE classes `21` (e.g. 21000, a row affected twice), `22` (data), `23`
//!      (constraints), `42501` (RLS: not matched above), `42804` and `42846` (a value of the
//!      wrong type), `54` (program limit exceeded, e.g. an index row too large) and `P0`
//!      (PL/pgSQL, e.g. raised by a trigger) → fatal, whatever the HTTP status (PostgREST
//!      answers 500 for most of them: retrying the same row would fail the same way for ever
//!      and block the user's queue);
//!    - `25006` (the database is read-only: a full disk, a read replica) → retryable, with the
//!      same least `Retry-After`;
//!    - classes `08` (connection), `25` (transaction state), `28`
//!      (authorization configuration), `40` (serialization, deadlock), `53` (resources), `57`
//!      (operator intervention, statement timeout), `58` (system) → retryable;
//!    - other `PGRST1xx` (request) and `PGRST2xx` (schema cache) → fatal;
//!    - `PGRST300`–`PGRST303` (PostgREST refused the session the worker accepted) whose message
//!      does not say it expired, is not yet valid or was issued in the future → retryable with the schema drift's least `Retry-After` and what
//!      to check (the issuer under Supabase's Third-party Auth, the project's JWT keys);
//!    - `PGRST0xx` (database unreachable), `PGRST3xx` (JWT invalid or expired: the client
//!      refreshes its session and retries) and `PGRSTX..` (internal) → retryable;
//!    - any other SQLSTATE (e.g. `XX000` → 500) → by status;
//! 4. by HTTP status: 401 and 403 → retryable (without a code they come from a gateway or a
//!    wrong key, e.g. "Invalid API key", and say nothing about the data), 402 → retryable
//!    (Supabase restricts a project over quota or with an unpaid bill), 404 → schema drift
//!    (above), 408 and 429 → retryable, a 3xx (a redirect, never followed) and other 4xx →
//!    retryable with the schema drift's least `Retry-After` (PostgREST answers every error with
//!    its code, so these came from something in front of it: the operator's), except a 4xx with
//!    a SQLSTATE of a class not listed (fatal), 5xx and anything else → retryable
//!    `http_<status>`. docs/upload.md's "Error classes" is the table for operators.

use serde_json::{json, Map, Value};

use crate::credentials;
use crate::http::{HttpResponse, TransportError};

/// Most characters of a non-JSON error body quoted in a failure message.
const BODY_EXCERPT_CHARS: usize = 200;
/// Cap on an upstream `Retry-After`, so a broken header cannot park a client for days.
const MAX_RETRY_AFTER_SECONDS: u64 = 3600;
/// Least `Retry-After` for schema drift (an unknown column, table or function) and a missing
/// GRANT: fixing it takes a migration, so retrying every few seconds would only add load.
pub const SCHEMA_DRIFT_RETRY_AFTER_SECONDS: u64 = 60;

/// A class an operator can give a code with `UPLOAD_ERROR_CLASS_OVERRIDES`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// `fatal`: the built-in rule decides, not a broader class's override (`P0:retryable,
    /// P0004:fatal`). It never makes fatal what the built-in rules keep retryable because a
    /// person can fix it (a missing GRANT, schema drift, an outage): the settings refuse it for
    /// codes whose rule is not the data's ([`ClassOverrides::fatal_is_the_datas`]), and a
    /// message that says the operator's to fix keeps its code retryable whatever is set.
    Fatal,
    /// `retryable`: the write waits, whatever the rules say.
    Retryable,
    /// `dangerously_fatal`: fatal whatever the rules say, even where the operator could fix the
    /// cause: such writes are discarded (or dead-lettered) instead of waiting for the fix.
    DangerouslyFatal,
}

/// `UPLOAD_ERROR_CLASS_OVERRIDES`: codes whose class the operator chose, consulted before the
/// built-in rules. A key is a code as reported in `failed_operation.code`: a SQLSTATE
/// (`23514`), a PostgREST code (`PGRST204`) or `http_<status>` (an answer without a code); or a
/// two-character SQLSTATE class (`P0`), used when the exact code has no entry. They apply to
/// upstream answers only: a 2xx is always applied and a lost connection always retryable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClassOverrides(std::collections::BTreeMap<String, ErrorClass>);

impl ClassOverrides {
    /// Sets the class of `key` (see [`ClassOverrides::is_valid_key`]); returns the previous one.
    pub fn insert(&mut self, key: &str, class: ErrorClass) -> Option<ErrorClass> {
        self.0.insert(key.to_string(), class)
    }

    /// The operator's class for `code`, if any: the exact code first, then its SQLSTATE class.
    pub fn get(&self, code: &str) -> Option<ErrorClass> {
        if let Some(class) = self.0.get(code) {
            return Some(*class);
        }
        if is_sqlstate(code) {
            return code.get(..2).and_then(|class| self.0.get(class)).copied();
        }
        None
    }

    /// Whether `key` can name a code: a SQLSTATE (5 characters), a SQLSTATE class (2), `PGRST`
    /// and 3 characters, or `http_<400..599>`. Letters are upper case, as Postgres writes them.
    pub fn is_valid_key(key: &str) -> bool {
        let upper_alnum = |s: &str| s.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_uppercase());
        if let Some(status) = key.strip_prefix("http_") {
            return status.len() == 3 && status.parse::<u16>().is_ok_and(|s| (400..600).contains(&s));
        }
        if let Some(rest) = key.strip_prefix("PGRST") {
            return rest.len() == 3 && upper_alnum(rest);
        }
        (key.len() == 2 || key.len() == 5) && upper_alnum(key)
    }

    /// Whether the built-in rules make `key` (a valid key) fatal by its code alone, as the
    /// data's own refusal: then `fatal` changes nothing a person could fix. Classes 21, 22, 23,
    /// 54, P0 and their codes (a 22P02 or 22023 whose message says the operator's to fix stays
    /// retryable at run time), other codes whose class the rules make fatal (`42804`,
    /// `PGRST100`); never `http_<status>` (an answer without a code is never the data's).
    pub fn fatal_is_the_datas(key: &str) -> bool {
        match key.len() {
            2 => matches!(key, "21" | "22" | "23" | "54" | "P0"),
            _ if key.starts_with("http_") => false,
            _ => class_of(key) == Class::Fatal,
        }
    }
}

/// A transaction's outcome, in the client's vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Every entry was applied.
    Success,
    /// Rejected for good: the client should discard the transaction.
    FatalError,
    /// `UPLOAD_CONFLICT_DETECTION` only: a PATCH or DELETE found its row changed since the client
    /// saw it (it no longer holds the previous values the client sent); that entry was not
    /// applied, nor anything after it. Final like `FatalError` (the client discards the
    /// transaction and tells the app); `failed_operation` names the entry (code `conflict`).
    Conflict,
    /// Failed for a reason that may heal: the client must send it again.
    RetryableError,
    /// Not tried (an earlier transaction needs a retry, or the subrequest budget ran out): the
    /// client must send it again.
    NotAttempted,
}

impl Status {
    /// The wire name: `success`, `fatal_error`, `conflict`, `retryable_error`, `not_attempted`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Success => "success",
            Status::FatalError => "fatal_error",
            Status::Conflict => "conflict",
            Status::RetryableError => "retryable_error",
            Status::NotAttempted => "not_attempted",
        }
    }
}

/// Which entry failed and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedOperation {
    /// Index of the failing entry within its transaction. A merged request refused whole is sent
    /// again in halves to find it (see `delivery`); where the budget leaves no room for them, the
    /// index of the group's first entry. `None` when the failure concerns the whole transaction:
    /// an atomic call whose error does not name the op, or a transaction too large for the
    /// subrequest budget.
    pub index: Option<usize>,
    /// SQLSTATE (`23505`), PostgREST code (`PGRST204`) or a bridge code (`http_404`,
    /// `network_error`, `timeout`, `too_many_requests_for_budget`, `invalid_table_name`,
    /// `table_not_allowed`, `unexpected_response`).
    pub code: String,
    pub message: String,
    pub details: Option<String>,
    pub hint: Option<String>,
    /// The upstream status, when there was an answer.
    pub http_status: Option<u16>,
}

impl FailedOperation {
    /// A failure found by the bridge itself, without an upstream answer.
    pub fn new(index: Option<usize>, code: &str, message: impl Into<String>) -> Self {
        FailedOperation {
            index,
            code: code.to_string(),
            message: message.into(),
            details: None,
            hint: None,
            http_status: None,
        }
    }

    /// The JSON sent to the client: `{"index","code","message","details"}` plus `hint` and
    /// `http_status` when known.
    pub fn to_json(&self) -> Value {
        let mut object = Map::new();
        object.insert("index".to_string(), json!(self.index));
        object.insert("code".to_string(), json!(self.code));
        object.insert("message".to_string(), json!(self.message));
        object.insert("details".to_string(), json!(self.details));
        if let Some(hint) = &self.hint {
            object.insert("hint".to_string(), json!(hint));
        }
        if let Some(status) = self.http_status {
            object.insert("http_status".to_string(), json!(status));
        }
        Value::Object(object)
    }
}

/// The outcome of one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionResult {
    pub status: Status,
    /// The client's transaction id, echoed (`None` → `null`).
    pub transaction_id: Option<Value>,
    /// Set for `FatalError`, `Conflict` and `RetryableError`.
    pub failed_operation: Option<FailedOperation>,
    /// Set for `RetryableError`: how long the client should wait.
    pub retry_after_ms: Option<u64>,
    /// `Success` only: the atomic function had already applied this transaction (recorded in its
    /// ledger under the client id and transaction id: a re-send after a lost answer), so nothing
    /// was applied now. Sent as `"already_applied": true`, absent otherwise.
    pub already_applied: bool,
    /// `Success` only: the indexes of the PATCH and DELETE entries that changed no row (the row
    /// is gone, or hidden from the caller by RLS or, in service mode, owned by someone else), in
    /// order. Sent as `"unchanged": [...]`, absent when empty. See `delivery` for how it is
    /// learnt (and when a merged request makes it list more entries than changed nothing).
    pub unchanged: Vec<usize>,
    /// Why this transaction went through REST requests although its route was the atomic
    /// function (its atomic call was cancelled by the statement timeout, see `delivery`): it was
    /// then neither all-or-nothing nor exactly once. Sent as `"applied_via": "rest"` and
    /// `"applied_via_reason": <this>`, absent otherwise.
    pub applied_via_rest: Option<String>,
}

impl TransactionResult {
    pub fn success(transaction_id: Option<Value>) -> Self {
        TransactionResult {
            status: Status::Success,
            transaction_id,
            failed_operation: None,
            retry_after_ms: None,
            already_applied: false,
            unchanged: Vec::new(),
            applied_via_rest: None,
        }
    }

    /// A success whose `unchanged` entries changed no row.
    pub fn success_with_unchanged(transaction_id: Option<Value>, unchanged: Vec<usize>) -> Self {
        TransactionResult { unchanged, ..TransactionResult::success(transaction_id) }
    }

    pub fn fatal(transaction_id: Option<Value>, failure: FailedOperation) -> Self {
        TransactionResult {
            status: Status::FatalError,
            transaction_id,
            failed_operation: Some(failure),
            retry_after_ms: None,
            already_applied: false,
            unchanged: Vec::new(),
            applied_via_rest: None,
        }
    }

    /// A conflict (see [`Status::Conflict`]): `failure` names the entry.
    pub fn conflict(transaction_id: Option<Value>, failure: FailedOperation) -> Self {
        TransactionResult { status: Status::Conflict, ..TransactionResult::fatal(transaction_id, failure) }
    }

    pub fn retryable(transaction_id: Option<Value>, failure: FailedOperation, retry_after_seconds: u64) -> Self {
        TransactionResult {
            status: Status::RetryableError,
            transaction_id,
            failed_operation: Some(failure),
            retry_after_ms: Some(retry_after_seconds.saturating_mul(1000)),
            already_applied: false,
            unchanged: Vec::new(),
            applied_via_rest: None,
        }
    }

    pub fn not_attempted(transaction_id: Option<Value>) -> Self {
        TransactionResult {
            status: Status::NotAttempted,
            transaction_id,
            failed_operation: None,
            retry_after_ms: None,
            already_applied: false,
            unchanged: Vec::new(),
            applied_via_rest: None,
        }
    }

    /// `{"status","transaction_id","failed_operation"?,"retry_after_ms"?,"already_applied"?,
    /// "unchanged"?,"applied_via"?,"applied_via_reason"?}`.
    pub fn to_json(&self) -> Value {
        let mut object = Map::new();
        object.insert("status".to_string(), json!(self.status.as_str()));
        object.insert("transaction_id".to_string(), self.transaction_id.clone().unwrap_or(Value::Null));
        if let Some(failure) = &self.failed_operation {
            object.insert("failed_operation".to_string(), failure.to_json());
        }
        if let Some(ms) = self.retry_after_ms {
            object.insert("retry_after_ms".to_string(), json!(ms));
        }
        if self.already_applied {
            object.insert("already_applied".to_string(), json!(true));
        }
        if !self.unchanged.is_empty() {
            object.insert("unchanged".to_string(), json!(self.unchanged));
        }
        if let Some(reason) = &self.applied_via_rest {
            object.insert("applied_via".to_string(), json!("rest"));
            object.insert("applied_via_reason".to_string(), json!(reason));
        }
        Value::Object(object)
    }
}

/// How many transactions ended in each status, for the request log line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatusCounts {
    pub success: usize,
    pub fatal: usize,
    pub conflict: usize,
    pub retryable: usize,
    pub not_attempted: usize,
}

/// Everything one upload did: one result per transaction, in order, plus accounting for logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UploadReport {
    pub results: Vec<TransactionResult>,
    /// Upstream requests made, dead-letter inserts and re-sent requests included.
    pub subrequests: usize,
    /// Requests sent a second time at once because their connection failed before any answer
    /// (see `delivery`); each is also counted in `subrequests`.
    pub resent: usize,
    /// Transactions sent through REST requests in this upload after their atomic call was
    /// cancelled by the statement timeout (the log's `applied_via_rest`). A rejection the ledger
    /// held from such an earlier attempt also carries `applied_via_rest`, but is not counted.
    pub rest_fallbacks: usize,
    /// Dead-letter rows written.
    pub dead_letters: usize,
    /// Dead-letter inserts that failed or were skipped (their transactions became retryable).
    pub dead_letter_failures: usize,
    /// Why each failed dead-letter insert failed (code and status only, no row data), for logs;
    /// never sent to the client.
    pub dead_letter_errors: Vec<String>,
    /// What this upload learnt about the atomic function when it tried it with
    /// `UPLOAD_ATOMIC` unset: `Some(true)` it answered, `Some(false)` it is not installed
    /// (PGRST202/404), `None` not tried or no answer. The adapter's per-isolate memory
    /// (`atomic_function`) takes it in.
    pub atomic_function: Option<bool>,
    /// Whether the atomic function refused this caller's role (`42501 permission denied for
    /// function`): this upload went on through REST. Not taken into the isolate's memory, since
    /// EXECUTE is granted per role: a session with a custom role (an access-token hook's) or
    /// `anon` would otherwise send every other user's uploads through REST too.
    pub atomic_function_not_executable: bool,
    /// Whether transactions were left `not_attempted` because the upload had run for
    /// `UPLOAD_TIME_BUDGET_MS` (for logs).
    pub time_budget_spent: bool,
    /// Seconds the client should wait before retrying, when [`needs_retry`](Self::needs_retry):
    /// the largest `retry_after_ms` of the results, or `UPLOAD_RETRY_AFTER_SECONDS`.
    pub retry_after_seconds: u64,
}

impl UploadReport {
    /// Whether some transaction must be sent again (retryable or not attempted). The adapter then
    /// answers 503 with `Retry-After: retry_after_seconds`, otherwise 200.
    pub fn needs_retry(&self) -> bool {
        self.results.iter().any(|r| matches!(r.status, Status::RetryableError | Status::NotAttempted))
    }

    /// Transactions per status.
    pub fn counts(&self) -> StatusCounts {
        let mut counts = StatusCounts::default();
        for result in &self.results {
            match result.status {
                Status::Success => counts.success += 1,
                Status::FatalError => counts.fatal += 1,
                Status::Conflict => counts.conflict += 1,
                Status::RetryableError => counts.retryable += 1,
                Status::NotAttempted => counts.not_attempted += 1,
            }
        }
        counts
    }

    /// The response body: `{"results":[…],"applied":<transactions applied>,"subrequests":<n>}`.
    pub fn body(&self) -> Value {
        json!({
            "results": self.results.iter().map(TransactionResult::to_json).collect::<Vec<_>>(),
            "applied": self.counts().success,
            "subrequests": self.subrequests,
        })
    }
}

impl UploadReport {
    /// Counts and codes for the request log line: no ids, tokens or row data.
    /// `{"success","fatal","conflict","retryable","not_attempted","subrequests","dead_letters",
    /// "dead_letter_failures","failure_codes":[…],"dead_letter_errors":[…]}`.
    pub fn log_summary(&self) -> Value {
        let counts = self.counts();
        let failure_codes: Vec<&str> =
            self.results.iter().filter_map(|r| r.failed_operation.as_ref().map(|f| f.code.as_str())).collect();
        // What came back that was not PostgREST's answer: its status and what was expected (the
        // failure's message, see `unexpected_response`; the body's excerpt goes to the answer's
        // details only), so a wrong SUPABASE_URL shows in logs.
        let unexpected: Vec<&str> = self
            .results
            .iter()
            .filter_map(|r| r.failed_operation.as_ref())
            .filter(|f| f.code == UNEXPECTED_RESPONSE)
            .map(|f| f.message.as_str())
            .collect();
        // Every fatal transaction, identified without row data (never `details`, which quotes values).
        let fatal_transactions: Vec<Value> = self
            .results
            .iter()
            .filter(|r| matches!(r.status, Status::FatalError | Status::Conflict))
            .filter_map(|r| {
                let f = r.failed_operation.as_ref()?;
                Some(json!({"transaction_id": logged_id(&r.transaction_id), "index": f.index, "code": f.code}))
            })
            .collect();
        json!({
            "fatal_transactions": fatal_transactions,
            "success": counts.success,
            "fatal": counts.fatal,
            "conflict": counts.conflict,
            "retryable": counts.retryable,
            "not_attempted": counts.not_attempted,
            "subrequests": self.subrequests,
            "resent": self.resent,
            "already_applied": self.results.iter().filter(|r| r.already_applied).count(),
            "unchanged_entries": self.results.iter().map(|r| r.unchanged.len()).sum::<usize>(),
            "unexpected_responses": unexpected,
            "applied_via_rest": self.rest_fallbacks,
            "atomic_function": match (self.atomic_function_not_executable, self.atomic_function) {
                (true, _) => Some("not_executable"),
                (false, found) => found.map(|found| if found { "found" } else { "missing" }),
            },
            "dead_letters": self.dead_letters,
            "dead_letter_failures": self.dead_letter_failures,
            "failure_codes": failure_codes,
            "dead_letter_errors": self.dead_letter_errors,
            "time_budget_spent": self.time_budget_spent,
        })
    }
}

/// What an answer means for the transaction being sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx: the request was applied.
    Applied,
    /// Retrying cannot help.
    Fatal(FailedOperation),
    /// Retrying may help; `retry_after_seconds` is the upstream `Retry-After`, when it sent one.
    Retryable { failure: FailedOperation, retry_after_seconds: Option<u64> },
}

/// Who a write runs as, for reading the database's refusals of it.
#[derive(Debug, Clone, Copy)]
pub struct WrittenAs<'a> {
    /// The database role (`authenticated`, `service_role`), named in the GRANT a missing
    /// privilege calls for.
    pub api_role: &'a str,
    /// The caller's user id, which the database may fail to read as a value of some type (see
    /// [`sub_refused_by_a_type`]).
    pub sub: &'a str,
    /// Whether the worker itself writes `sub` into an owner column (service mode).
    pub sub_written_as_owner: bool,
}

/// Classifies the answer to a request covering the entry at `index` (see the module docs).
pub fn classify(
    answer: &Result<HttpResponse, TransportError>,
    index: Option<usize>,
    overrides: &ClassOverrides,
    written_as: WrittenAs<'_>,
) -> Verdict {
    let response = match answer {
        Ok(response) => response,
        Err(error) => {
            let code = if error.is_timeout() { "timeout" } else { "network_error" };
            return Verdict::Retryable {
                failure: FailedOperation::new(index, code, format!("no answer from Supabase: {}", error.message)),
                retry_after_seconds: None,
            };
        }
    };
    let status = response.status;
    if (200..300).contains(&status) {
        return Verdict::Applied;
    }

    let mut body = ErrorBody::parse(&response.body);
    let operators = operators_to_fix(&body, written_as);
    let class = match &operators {
        Some(_) => Class::SchemaDrift,
        None => body.code.as_deref().map(class_of).unwrap_or(Class::Unrecognised),
    };
    if let (Some(why), Some(message)) = (&operators, body.message.as_mut()) {
        *message = format!("{message}: {why}");
    }
    let code = match (&body.code, class) {
        (Some(code), Class::Fatal | Class::Retryable | Class::SchemaDrift) => code.clone(),
        (Some(code), Class::Unrecognised) if is_sqlstate(code) => code.clone(),
        _ => format!("http_{status}"),
    };
    let class = match class {
        // A redirect, answered and never followed (fetch would re-send a write as a GET without
        // its body): a SUPABASE_URL that is not the address Supabase answers at (`http://` to
        // `https://`, a moved host). The operator's to fix; the upload waits.
        Class::Unrecognised if response.is_redirect() => Class::SchemaDrift,
        // Without a code: PostgREST 12 answers a table missing from its schema cache with a
        // bare 404 (a wrong SUPABASE_URL looks the same: the operator's to fix either way). A
        // SQLSTATE answered 404 is a trigger's own (`raise sqlstate 'PT404'`): below, the data's.
        Class::Unrecognised if status == 404 && !body.code.as_deref().is_some_and(is_raised_status) => {
            Class::SchemaDrift
        }
        // Without a PostgREST/Postgres code, 401/403 come from a gateway or a wrong key, and 402
        // from Supabase's gateway refusing every request of a restricted project (quota, fair
        // use, an unpaid bill) until the owner acts: not from the data. Retrying after the
        // operator fixes it loses nothing, discarding would.
        Class::Unrecognised if (400..500).contains(&status) && !matches!(status, 401 | 402 | 403 | 408 | 429) => {
            match body.code.as_deref() {
                // A SQLSTATE of a class not listed, answered 4xx: the data's, as before.
                Some(code) if is_sqlstate(code) => Class::Fatal,
                // PostgREST answers every error with its JSON code: any other 4xx (405 from a
                // host that is not Supabase, 413 or 431 from a proxy's limits, a gateway's 400)
                // came from something in front of it: the operator's to fix, the upload waits.
                _ => Class::SchemaDrift,
            }
        }
        Class::Unrecognised => Class::Retryable,
        known => known,
    };
    let class = match overrides.get(&code) {
        // The built-in rule: fatal for the data's refusals, and retryable where the message says
        // the operator's to fix (a 42501 missing GRANT, a 22P02 enum value) though the code is
        // the data's.
        Some(ErrorClass::Fatal) | None => class,
        Some(ErrorClass::DangerouslyFatal) => Class::Fatal,
        Some(ErrorClass::Retryable) if class == Class::SchemaDrift => Class::SchemaDrift,
        Some(ErrorClass::Retryable) => Class::Retryable,
    };
    let message = match body.message {
        Some(message) => message,
        None if response.is_redirect() => {
            format!(
                "HTTP {} from Supabase; set SUPABASE_URL to the address Supabase answers at",
                response.status_described()
            )
        }
        None if response.body.trim().is_empty() => format!("HTTP {status} from Supabase"),
        None => format!("HTTP {status} from Supabase: {}", excerpt(&response.body)),
    };
    // A constraint's detail quotes rows: `Failing row contains (<every column>)`, the other
    // row's key of an exclusion constraint; so does a view's `WITH CHECK OPTION` (44000).
    // PostgreSQL leaves the values out for a role under row-level security; service mode writes
    // as a role that bypasses it, so a user would read columns or rows (another user's) they
    // cannot read themselves.
    let details = match body.details {
        Some(details) if written_as.sub_written_as_owner && quotes_rows(&code, &details) => {
            Some(WITHHELD_DETAILS.to_string())
        }
        details => details,
    };
    let failure = FailedOperation { index, code, message, details, hint: body.hint, http_status: Some(status) };
    match class {
        Class::Fatal => Verdict::Fatal(failure),
        Class::SchemaDrift => Verdict::Retryable {
            failure,
            retry_after_seconds: Some(retry_after(response).unwrap_or(0).max(SCHEMA_DRIFT_RETRY_AFTER_SECONDS)),
        },
        Class::Retryable | Class::Unrecognised => {
            Verdict::Retryable { failure, retry_after_seconds: retry_after(response) }
        }
    }
}

/// Whether an error's detail may quote rows: a constraint's (class 23) or a view's check option
/// (class 44), or PostgreSQL's words for a row or a key whatever the code (a trigger's own
/// detail, P0001, is the trigger's to word and stays).
fn quotes_rows(code: &str, details: &str) -> bool {
    code.starts_with("23")
        || code.starts_with("44")
        || details.starts_with("Failing row contains")
        || details.starts_with("Key (")
}

/// What a constraint's detail reads in service mode (see [`classify`]).
pub const WITHHELD_DETAILS: &str =
    "withheld in service mode (the database's detail can quote rows and columns the user cannot read)";

/// Why an error answer is the operator's to fix, not the data's (the write waits: schema
/// drift), said after its message; `None` when nothing says so.
fn operators_to_fix(body: &ErrorBody, written_as: WrittenAs<'_>) -> Option<String> {
    let WrittenAs { api_role, sub, sub_written_as_owner } = written_as;
    let code = body.code.as_deref()?;
    let message = body.message.as_deref().unwrap_or_default();
    if session_role_unusable(code, message) {
        return Some(
            "the session's role claim names a database role PostgREST cannot switch to (create the role \
             and grant it to authenticator: the operator's to fix; the upload waits)"
                .into(),
        );
    }
    if code == "42501" {
        if let Some(grant) = missing_grant(message, api_role) {
            // PostgreSQL names the table, not the column, when a privilege held on some columns
            // only is missing for one written, and a table kept insert-only on purpose refuses
            // every PUT (an upsert updates): the table-wide GRANT would open a column kept from
            // users (`is_admin`), or UPDATE and DELETE, to every session through the API. So
            // what each write needs is said too, with PostgREST's upsert setting the id.
            let column_level = if grant.starts_with("grant select, insert, update, delete on table ") {
                "; if the table's privileges are limited on purpose (column by column, or no update or \
                 delete), grant only what the writes need: a PUT insert and update of each column it \
                 sends and of id (the upsert sets the id, even for a new row), a PATCH update of its \
                 columns, a DELETE delete, each with select (id); a table without update takes no PUT \
                 (the write waits until then)"
            } else {
                ""
            };
            return Some(format!(
                "the API role lacks a privilege (a missing GRANT, the operator's to fix; the upload waits): {grant}{column_level}"
            ));
        }
        // The SQL functions' refusal of a caller with neither a `sub` nor the right to bypass
        // row-level security: in service mode, a service role without BYPASSRLS.
        if message.ends_with(": the session has no sub") {
            return Some(
                "in service mode the service key's role must bypass row-level security, as Supabase's \
                 service_role does (the operator's to fix; the upload waits)"
                    .into(),
            );
        }
        // Only a refusal recognisably the row's is the data's: any other 42501 is a privilege
        // the database's own setup lacks (a missing GRANT in the server's own language, a
        // trigger refreshing a materialized view it does not own or setting a superuser's
        // parameter), which no row could pass. (A row-level security refusal in another
        // language waits too: kept, never discarded.)
        if !is_the_rows_refusal(message) {
            return Some(
                "a privilege the database refused that no row could have (a missing GRANT, perhaps in the \
                 server's own language; a trigger or function doing what only an owner or superuser may): \
                 not a row refused by a row-level security policy (the operator's to fix; the upload waits)"
                    .into(),
            );
        }
    }
    match sub_refused_by_a_type(body, sub) {
        Some("uuid") => {
            return Some(
                "the session's user id (sub) is not a uuid, and the database casts it to one (a policy, \
                 trigger or default using auth.uid(), or a uuid column meant for it); with this issuer \
                 compare auth.jwt() ->> 'sub' as text (the operator's to fix; the upload waits)"
                    .into(),
            )
        }
        Some(_) if sub_written_as_owner => {
            return Some(
                "the session's user id (sub), which service mode writes into UPLOAD_OWNER_COLUMN, is \
                 no value of that column's type: the owner column must hold user ids (text, or uuid \
                 for Supabase Auth) (the operator's to fix; the upload waits)"
                    .into(),
            )
        }
        _ => {}
    }
    // PostgREST refused the session the worker verified a moment ago (in service mode, the
    // service key): unless it expired in between (within the leeway), the project does not
    // trust its issuer or key, e.g. a third-party provider set in the worker but not under
    // Supabase's Third-party Auth. Retried every few seconds as an outage, it waited for ever.
    if matches!(code, "PGRST300" | "PGRST301" | "PGRST302" | "PGRST303") && !refused_for_its_time(message) {
        return Some(
            "PostgREST refused a session the worker accepted: add its issuer under Authentication > \
             Third-party Auth in Supabase, or check the project's JWT keys and SUPABASE_URL (the \
             operator's to fix; the upload waits)"
                .into(),
        );
    }
    // No unique constraint for an ON CONFLICT: the bridge's upsert on `id`, or a trigger's or
    // function's own (the message does not say which statement).
    if code == "42P10" && message.contains("ON CONFLICT") {
        return Some(
            "an ON CONFLICT without a unique constraint to match: the table written needs one on id \
             for the upsert (make id its primary key, or create a unique index on it), or a trigger's \
             or function's own ON CONFLICT lacks one (the operator's to fix; the upload waits)"
                .into(),
        );
    }
    // The database out of room for any row, though its codes are the data's: a partitioned
    // table without a partition for the row (most often a trigger's log table partitioned by
    // month whose next partition nobody created), a sequence at its end (a `serial` column
    // outgrown), the stack of a recursion without end. Each refuses every write of every user.
    if let Some(why) = out_of_room(code, message) {
        return Some(format!("{why} (the operator's to fix; the upload waits)"));
    }
    // An enum type without the value the client sent: an app release ahead of its migration,
    // as a column the table lacks (42703) is.
    if let Some(value_of) = missing_enum_value(code, message) {
        return Some(format!(
            "the column's enum type has no such value: add it ({value_of}), or make the client send \
             one the type has (the operator's to fix; the upload waits)"
        ));
    }
    // The atomic function runs with `search_path = pg_catalog, pg_temp`: a policy, trigger,
    // default or check function that names a table or function without its schema fails there
    // (`relation "members" does not exist`) although the same write passes through REST,
    // whose search path is the API's schemas. The function's own names are always qualified.
    if matches!(code, "42P01" | "42883")
        && body.hint.as_deref().is_some_and(|hint| hint.contains("powersync op "))
        && names_an_unqualified_object(message)
    {
        return Some(
            "the atomic function runs with search_path = pg_catalog, pg_temp, so a policy, trigger, \
             default or check function that names a table or function without its schema fails \
             there (REST's search path, on Supabase public, extensions, hides it): give that function \
             `set search_path = public, extensions` or qualify its names (the operator's to fix; the \
             upload waits)"
                .into(),
        );
    }
    // A column missing: from the table the write names (a migration not shipped yet) or the
    // owner column service mode writes, or from a trigger's or function's own SQL.
    if code == "42703" && message.starts_with("column ") && message.ends_with(" does not exist") {
        let owner = if sub_written_as_owner { " or correct UPLOAD_OWNER_COLUMN if it is that one," } else { "" };
        return Some(format!(
            "a column the write names (or a trigger or function it runs names) is not in the table: ship \
             the migration that adds it,{owner} or fix that trigger or function (the operator's to fix; the \
             upload waits)"
        ));
    }
    is_database_setup_error(code).then(|| {
        "an error in the database's own policies, triggers or functions, not in the data (the \
         operator's to fix; the upload waits)"
            .into()
    })
}

/// What the database lacks room for, from PostgreSQL's own words (execPartition.c, sequence.c,
/// postgres.c): `23514` `no partition of relation "<t>" found for row`, `2200H` `nextval:
/// reached maximum value of sequence "<s>" (<n>)` (or minimum, for a descending one), `54001`
/// `stack depth limit exceeded`.
fn out_of_room(code: &str, message: &str) -> Option<&'static str> {
    match code {
        "23514" if message.starts_with("no partition of relation ") && message.ends_with(" found for row") => Some(
            "a partitioned table has no partition for the row: create it, or a default partition (with \
             pg_partman, check that its maintenance runs)",
        ),
        "2200H" if message.starts_with("nextval: reached m") => {
            Some("a sequence reached its last value: make the column and its sequence bigint")
        }
        // A value nested thousands of levels deep does it too, and waits: its sender's queue
        // only, where discarding would lose every user's writes to a recursing table.
        "54001" if message.starts_with("stack depth limit exceeded") => Some(
            "a trigger, policy or function recursing without end (a trigger updating its own table \
             without a depth guard, a policy calling a function that reads the policy's table)",
        ),
        _ => None,
    }
}

/// `22P02` `invalid input value for enum <type>: "<value>"` (PostgreSQL's enum.c): the SQL that
/// adds the value to the type.
fn missing_enum_value(code: &str, message: &str) -> Option<String> {
    if code != "22P02" {
        return None;
    }
    let rest = message.strip_prefix("invalid input value for enum ")?;
    let (type_name, value) = rest.split_once(": \"")?;
    let value = value.strip_suffix('"')?;
    // PostgreSQL answers any input of 64 bytes or more so, and no label can be that long
    // (NAMEDATALEN): no migration adds it, so it stays the data's.
    if type_name.is_empty() || type_name.contains(char::is_whitespace) || value.len() >= 64 {
        return None;
    }
    Some(format!("alter type {type_name} add value '{}';", value.replace('\'', "''")))
}

/// Whether a `42P01`/`42883` message names its relation or function without a schema:
/// `relation "members" does not exist`, `function is_member(uuid) does not exist` (the atomic
/// function's own names carry `public.`).
fn names_an_unqualified_object(message: &str) -> bool {
    let name = if let Some(rest) = message.strip_prefix("relation \"") {
        rest.split('"').next().unwrap_or_default()
    } else if let Some(rest) = message.strip_prefix("function ") {
        rest.split('(').next().unwrap_or_default()
    } else {
        return false;
    };
    !name.is_empty() && !name.contains('.')
}

/// Whether PostgREST refused a session for its time: expired, or not yet valid / issued in the
/// future (clock skew beyond PostgREST's 30 s, which the worker's leeway may allow). PostgREST 12
/// says `JWT expired`, `JWTNotYetValid`, `JWTIssuedAtFuture`; 13 `JWT expired`, `JWT not yet
/// valid`, `JWT issued at future`. The client's next session, or the next try, passes.
fn refused_for_its_time(message: &str) -> bool {
    let message = message.to_ascii_lowercase().replace(' ', "");
    ["expired", "notyetvalid", "issuedatfuture"].iter().any(|word| message.contains(word))
}

/// The op index named by the atomic function's error hint, whose end is `powersync op <index>
/// (<OP> <table>/<id>)` (after the original hint, if any). The id is the client's and may hold
/// that text itself, so a place counts only when the rest of the hint is exactly the part for
/// the op it names (`ops`: each op's op, table and id, as sent); the first such place is the
/// function's own. When none fits (or `ops` is empty), the last marker's index.
pub fn op_index_from_hint(hint: &str, ops: &[(&str, &str, &str)]) -> Option<usize> {
    const MARKER: &str = "powersync op ";
    let index_at = |start: usize| -> Option<usize> {
        let digits: String = hint[start..].chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    };
    let starts = || hint.match_indices(MARKER).map(|(at, _)| at + MARKER.len());
    let fits = |start: usize| {
        index_at(start).is_some_and(|index| {
            ops.get(index).is_some_and(|(op, table, id)| hint[start..] == format!("{index} ({op} {table}/{id})"))
        })
    };
    match starts().find(|start| fits(*start)) {
        Some(start) => index_at(start),
        None => index_at(starts().last()?),
    }
}

/// The failure code of a 2xx answer that is not PostgREST's (see [`unexpected_response`]).
pub const UNEXPECTED_RESPONSE: &str = "unexpected_response";

/// A 2xx answer that is not what PostgREST sends for the request (`expected` says what that
/// is): not counted as applied, retryable. The message names the status; the details quote the
/// body's first characters (at most [`BODY_EXCERPT_CHARS`], control characters blanked), e.g. a
/// catch-all server or a proxy behind a wrong `SUPABASE_URL`. The details, never the message:
/// the log line keeps the message, and a host that echoes the request would put the row's
/// values and the user's id there.
pub fn unexpected_response(index: Option<usize>, response: &HttpResponse, expected: &str) -> FailedOperation {
    let body = if response.body.trim().is_empty() {
        "an empty body".to_string()
    } else {
        format!("body {:?}", excerpt(&response.body))
    };
    let mut failure = FailedOperation::new(
        index,
        UNEXPECTED_RESPONSE,
        format!(
            "HTTP {} from Supabase is not PostgREST's answer ({expected}); not counted as applied (is \
             SUPABASE_URL the project's API URL?)",
            response.status
        ),
    );
    failure.details = Some(body);
    failure.http_status = Some(response.status);
    failure
}

/// The number of rows a write changed, as PostgREST reports it when asked `Prefer: count=exact`:
/// the total of its `Content-Range` (`*/3` for POST and DELETE, `0-2/3` for PATCH, `*/0` for
/// none). `None` without the header or without a count (`*/*`, `0-2/*`): not PostgREST's answer
/// to a counted write.
pub fn affected_rows(response: &HttpResponse) -> Option<u64> {
    let value = response.header_value("content-range")?.trim();
    let (range, total) = value.split_once('/')?;
    let range_ok = range == "*"
        || range.split_once('-').is_some_and(|(a, b)| {
            !a.is_empty()
                && !b.is_empty()
                && a.bytes().all(|c| c.is_ascii_digit())
                && b.bytes().all(|c| c.is_ascii_digit())
        });
    if !range_ok || total.is_empty() || !total.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    total.parse().ok()
}

/// What the atomic function answered: `{"applied": n, "unchanged": [op indexes]?,
/// "already_applied": true?}`, `{"applied": 0, "conflict": {"index": i, "row": {…}}}`, or
/// `{"applied": 0, "dead_letter": {"id": n, "index": i?, "code": c?, "message": m?, "details": d?,
/// "hint": h?, "http_status": s?, "applied_via": "rest"?}}`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AtomicAnswer {
    /// The ledger knew the transaction: nothing was applied now.
    pub already_applied: bool,
    /// Ops (= entries) that changed no row, below `entries`, in order, without repeats.
    pub unchanged: Vec<usize>,
    /// A compared op found its row changed (`detect_conflicts`): nothing was applied. The op's
    /// index and the row as the function read it (for the dead letter only).
    pub conflict: Option<(usize, Value)>,
    /// The ledger holds the transaction as rejected and dead-lettered (this call reached the
    /// database after the bridge had given up on it, or the client re-sent the transaction
    /// after losing the answer): nothing was applied. The failure as the dead letter recorded
    /// it (`details` of a conflict: the row as read then).
    pub dead_letter: Option<FailedOperation>,
    /// With `dead_letter`: an attempt of the transaction went through REST requests before it
    /// was rejected (its atomic call was cancelled by the statement timeout), so what that
    /// attempt applied before the failing entry stayed applied.
    pub rejected_after_rest: bool,
}

/// Code of a re-sent transaction's failure when its dead letter's row is gone.
pub const DEAD_LETTERED: &str = "dead_lettered";

/// The entry indexes of an `unchanged` list (the atomic function's answer, the ledger's "was
/// applied" detail): sorted, without repeats, those at or past `entries` dropped. Absent or null
/// is none; `None` when it is not an array of op indexes.
pub fn unchanged_indexes(list: Option<&Value>, entries: usize) -> Option<Vec<usize>> {
    let mut unchanged: Vec<usize> = match list {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => {
            let indexes: Option<Vec<usize>> =
                items.iter().map(|i| i.as_u64().and_then(|i| usize::try_from(i).ok())).collect();
            indexes?.into_iter().filter(|i| *i < entries).collect()
        }
        Some(_) => return None,
    };
    unchanged.sort_unstable();
    unchanged.dedup();
    Some(unchanged)
}

/// The atomic function's result in a 2xx body, or `None` when the body is not one (not a JSON
/// object with a numeric `applied`, an `unchanged` that is not an array of op indexes, or a
/// `conflict` without an op index below `entries` and a row object): then the answer is not
/// the function's. `unchanged` indexes at or past `entries` are dropped.
pub fn atomic_answer(body: &str, entries: usize) -> Option<AtomicAnswer> {
    let Ok(Value::Object(mut fields)) = serde_json::from_str::<Value>(body) else { return None };
    if !fields.get("applied").is_some_and(Value::is_number) {
        return None;
    }
    let conflict = match fields.remove("conflict") {
        None | Some(Value::Null) => None,
        Some(Value::Object(mut conflict)) => {
            let index = conflict.get("index").and_then(Value::as_u64).and_then(|i| usize::try_from(i).ok());
            match (index, conflict.remove("row")) {
                (Some(index), Some(row @ Value::Object(_))) if index < entries => Some((index, row)),
                _ => return None,
            }
        }
        Some(_) => return None,
    };
    let unchanged = unchanged_indexes(fields.get("unchanged"), entries)?;
    let (dead_letter, rejected_after_rest) = match fields.get("dead_letter") {
        None | Some(Value::Null) => (None, false),
        Some(Value::Object(letter)) => {
            let id = letter.get("id").and_then(Value::as_i64)?;
            let text = |key: &str| letter.get(key).and_then(Value::as_str).map(str::to_string);
            let index = letter.get("index").and_then(Value::as_u64).and_then(|i| usize::try_from(i).ok());
            // Id 0: rejected without a dead letter (powersync_upload_ledger_reject).
            let message = text("message").unwrap_or_else(|| match id {
                0 => "this transaction was rejected before (no dead letter was recorded); nothing applied".to_string(),
                _ => format!("this transaction was rejected before (dead letter {id}); nothing applied"),
            });
            let mut failure = FailedOperation::new(
                index.filter(|i| *i < entries),
                text("code").as_deref().unwrap_or(DEAD_LETTERED),
                message,
            );
            failure.details = text("details");
            failure.hint = text("hint");
            failure.http_status = letter.get("http_status").and_then(Value::as_u64).and_then(|s| u16::try_from(s).ok());
            (Some(failure), text("applied_via").as_deref() == Some("rest"))
        }
        Some(_) => return None,
    };
    Some(AtomicAnswer {
        already_applied: fields.get("already_applied") == Some(&Value::Bool(true)),
        unchanged,
        conflict,
        dead_letter,
        rejected_after_rest,
    })
}

/// PostgreSQL's refusal of PostgREST's switch to the role the session's `role` claim names (a
/// custom role from an access-token hook): `22023 role "x" does not exist` (PostgREST answers it
/// 400, from 13 on 401) or `42501 permission denied to set role "x"` (the role is not granted to
/// `authenticator`). The claim is signed by the project, so this is its setup, never the data.
fn session_role_unusable(code: &str, message: &str) -> bool {
    match code {
        "22023" => message.starts_with("role \"") && message.ends_with("\" does not exist"),
        "42501" => message.starts_with("permission denied to set role \""),
        _ => false,
    }
}

/// Whether a `42501` message is a row refused for what it holds: PostgreSQL's row-level security
/// refusal (`new row violates row-level security policy …`), or the bridge's own refusals of a
/// row another user owns or of its own tables (sql/atomic_upload.sql).
fn is_the_rows_refusal(message: &str) -> bool {
    message.contains("violates row-level security policy")
        || message.ends_with(" belongs to another owner")
        || message.ends_with(" is the bridge's own: uploads do not write it")
}

/// The table a row-level security refusal names (`new row violates row-level security policy
/// for table "todos"`, with or without `(USING expression)`): a refusal of a table the
/// transaction does not write is a trigger's or function's (`delivery`).
pub fn refused_by_policy_of(message: &str) -> Option<&str> {
    let (_, rest) = message.split_once("violates row-level security policy")?;
    let (_, quoted) = rest.split_once("for table \"")?;
    quoted.strip_suffix('"').filter(|table| !table.contains('"'))
}

/// The table whose row a refusal of the data's names, in PostgreSQL's words: a row-level
/// security policy's ([`refused_by_policy_of`]), a not-null constraint's (`23502` `null value in
/// column "c" of relation "t" violates not-null constraint`), a check constraint's (`23514` `new
/// row for relation "t" violates check constraint "k"`), a foreign key's (`23503` `insert or
/// update on table "t" violates foreign key constraint "k"`, `update or delete on table "t"
/// violates …`). A table the transaction does not write makes it a trigger's or function's own
/// write (`delivery`). `None` for any other code or message (`23505` names its constraint only).
pub fn refused_table_of<'m>(code: &str, message: &'m str) -> Option<&'m str> {
    let quoted = |rest: &'m str, after: &str| -> Option<&'m str> {
        let (table, tail) = rest.split_once('"')?;
        tail.starts_with(after).then_some(table)
    };
    match code {
        "42501" => refused_by_policy_of(message),
        "23502" => {
            let (_, rest) = message.strip_prefix("null value in column \"")?.split_once("\" of relation \"")?;
            quoted(rest, " violates not-null constraint")
        }
        "23514" => quoted(message.strip_prefix("new row for relation \"")?, " violates check constraint"),
        "23503" => {
            let rest = message
                .strip_prefix("insert or update on table \"")
                .or_else(|| message.strip_prefix("update or delete on table \""))?;
            quoted(rest, " violates foreign key constraint")
        }
        _ => None,
    }
}

/// The GRANT that a `42501` message of PostgreSQL's form `permission denied for <kind> <name>`
/// calls for (aclchk.c: `permission denied for table todos`, `… for column "c" of relation
/// "r"`, `… for sequence s`, `… for schema s`, `… for function f`, …), for `role`; `None` for
/// any other message (a row-level security refusal, `belongs to another owner`, `permission
/// denied to set parameter …`). Names without a schema are taken to be in `public`, where the
/// bridge writes. A table needs all four privileges: an upsert needs `select` (its conflict
/// target), `insert` and `update`; PATCH `update` and `select` (its filter), DELETE `delete` and
/// `select`.
pub fn missing_grant(message: &str, role: &str) -> Option<String> {
    let rest = message.trim().strip_prefix("permission denied for ")?;
    if let Some(column) = rest.strip_prefix("column ") {
        // `"<column>" of relation "<table>"`
        let (column, relation) = column.split_once(" of relation ")?;
        let unquote = |s: &str| s.strip_prefix('"').and_then(|s| s.strip_suffix('"')).map(str::to_string);
        let (column, relation) = (unquote(column)?, unquote(relation)?);
        let column = quote_ident(&column);
        return Some(format!(
            "grant select ({column}), insert ({column}), update ({column}) on table {} to {}",
            qualified(&relation),
            quote_ident(role)
        ));
    }
    const KINDS: [(&str, &str); 17] = [
        ("table", "grant select, insert, update, delete on table {} to {role}"),
        ("view", "grant select, insert, update, delete on table {} to {role}"),
        ("materialized view", "grant select on table {} to {role}"),
        ("foreign table", "grant select, insert, update, delete on table {} to {role}"),
        ("relation", "grant select, insert, update, delete on table {} to {role}"),
        ("sequence", "grant usage on sequence {} to {role}"),
        ("schema", "grant usage on schema {} to {role}"),
        ("function", "grant execute on function {} to {role}"),
        ("procedure", "grant execute on procedure {} to {role}"),
        ("routine", "grant execute on routine {} to {role}"),
        ("aggregate", "grant execute on function {} to {role}"),
        ("type", "grant usage on type {} to {role}"),
        ("domain", "grant usage on domain {} to {role}"),
        ("large object", "grant select, update on large object {} to {role}"),
        ("language", "grant usage on language {} to {role}"),
        ("foreign server", "grant usage on foreign server {} to {role}"),
        ("foreign-data wrapper", "grant usage on foreign data wrapper {} to {role}"),
    ];
    // longest kind first: "materialized view" before "view", "foreign table" before "table"
    let mut kinds = KINDS;
    kinds.sort_by_key(|(kind, _)| std::cmp::Reverse(kind.len()));
    let (kind, template) =
        kinds.iter().find(|(kind, _)| rest.strip_prefix(kind).is_some_and(|r| r.starts_with(' ')))?;
    let name = rest[kind.len()..].trim();
    if name.is_empty() {
        return None;
    }
    let object = match *kind {
        "schema" | "language" | "foreign server" | "foreign-data wrapper" => quote_ident(name),
        "large object" => name.to_string(),
        _ => qualified(name),
    };
    Some(template.replace("{role}", &quote_ident(role)).replacen("{}", &object, 1))
}

/// `name` as a SQL identifier: as it is when it is a plain lower-case identifier, else quoted.
pub fn quote_ident(name: &str) -> String {
    let plain = name.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// `public.<name>`, the schema the bridge writes (PostgreSQL's message names the object without
/// its schema).
fn qualified(name: &str) -> String {
    format!("public.{}", quote_ident(name))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Fatal,
    Retryable,
    /// Retryable, with a longer wait: the schema lacks what the client writes, or the API role
    /// a GRANT.
    SchemaDrift,
    Unrecognised,
}

fn class_of(code: &str) -> Class {
    if let Some(number) = code.strip_prefix("PGRST") {
        return match number.as_bytes().first() {
            // 202 (function not found) and 203 (ambiguous overload) concern the atomic-mode
            // setup, never the data; 204 and 205: unknown column, unknown table; 125: a path
            // PostgREST 13 does not serve (a `SUPABASE_URL` whose path it does not expect, as a
            // bare 404 in PostgREST 12); 111 and 112: a trigger or function setting a malformed
            // `response.headers` or `response.status` (answered after the write committed: the
            // retry sends it again, as after a lost answer; fatal would discard it as failed).
            _ if matches!(number, "111" | "112" | "125" | "202" | "203" | "204" | "205") => Class::SchemaDrift,
            Some(b'1' | b'2') => Class::Fatal,
            Some(b'0' | b'3' | b'X') => Class::Retryable,
            _ => Class::Unrecognised,
        };
    }
    if !is_sqlstate(code) {
        return Class::Unrecognised;
    }
    // 25006: the database is read-only (Supabase makes a project so when its disk is full;
    // a `SUPABASE_URL` of a read replica is always so): a person's to fix, as schema drift is.
    if matches!(code, "42703" | "42P01" | "42883" | "42P10" | "25006") || is_database_setup_error(code) {
        return Class::SchemaDrift;
    }
    match code.get(..2).unwrap_or_default() {
        "21" | "22" | "23" | "42" | "54" | "P0" => Class::Fatal,
        // 72: snapshot too old (`old_snapshot_threshold`), answered 400
        "08" | "25" | "28" | "40" | "53" | "57" | "58" | "72" => Class::Retryable,
        _ => Class::Unrecognised,
    }
}

/// An error of the database's own setup rather than of the data written: SQL the bridge and
/// PostgREST generate never has a syntax error, so in class 42 only a refusal (`42501`: row-level
/// security; a missing GRANT is told apart by its message) and a value of the wrong type
/// (`42804`, `42846`) can be the data's; the rest are the operator's (`42P17` a policy that
/// queries its own table, `42702` an ambiguous column in a policy or trigger, `428C9` a generated
/// column written, ...). Class 2F (a function without RETURN), 38 and 39 (a function or trigger
/// breaking its contract) are routine bugs; so are 0A (a feature not supported: a view that
/// cannot be written, a deferrable unique constraint on `id` an upsert cannot use), 3F (a schema
/// that does not exist) and 26 (a prepared statement's name), and the classes only a function's
/// own code can raise: 20 (a PL/pgSQL `CASE` without the branch), 27 (a `BEFORE` trigger
/// changing the row its statement is changing), 24 and 34 (cursors), 0Z (diagnostics), 3D (a
/// database that does not exist, through dblink), 0B, 0F, 2B. PostgREST answers these 400,
/// which would otherwise read as the data's. A deliberate refusal raised by a trigger
/// (`P0001`, class P0) stays the data's.
fn is_database_setup_error(code: &str) -> bool {
    match code.get(..2).unwrap_or_default() {
        "42" => !matches!(code, "42501" | "42804" | "42846"),
        "2F" | "38" | "39" | "0A" | "3F" | "26" | "20" | "27" | "24" | "34" | "0Z" | "0B" | "0F" | "2B" | "3D" => true,
        _ => false,
    }
}

/// The type as which the database refused the caller's own user id: `22P02` `invalid input
/// syntax for type <type>: "<sub>"`. Supabase's `auth.uid()` casts the session's `sub` to uuid,
/// so every policy, trigger or default that uses it fails this way for a third-party issuer
/// whose ids are not uuids (Firebase, Auth0, Clerk), whatever the row holds; so does a uuid
/// owner column given that id. The schema is the operator's to fix, and the write waits for it:
/// a client cannot choose its `sub`, so it cannot make its own data look like this. Another
/// type is the operator's only where the worker wrote the `sub` itself (service mode's owner
/// column, `bigint` say); in RLS mode it is what the client put in a column of that type.
fn sub_refused_by_a_type<'b>(body: &'b ErrorBody, sub: &str) -> Option<&'b str> {
    if body.code.as_deref() != Some("22P02") || sub.is_empty() {
        return None;
    }
    let refused = body.message.as_deref()?.strip_prefix("invalid input syntax for type ")?;
    let (type_name, quoted) = refused.split_once(": \"")?;
    (quoted.strip_suffix('"')? == sub).then_some(type_name)
}

/// A SQLSTATE that asks PostgREST for an HTTP status (`PT404`: `raise sqlstate 'PT404'` in a
/// trigger or function), PostgREST's own convention: the database's deliberate answer.
fn is_raised_status(code: &str) -> bool {
    code.starts_with("PT") && is_sqlstate(code)
}

/// Five characters of digits and upper-case letters, as Postgres error codes are.
fn is_sqlstate(code: &str) -> bool {
    code.len() == 5 && code.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
}

/// The fields of a PostgREST error body; all absent when the body is not a JSON object.
#[derive(Debug, Default)]
struct ErrorBody {
    code: Option<String>,
    message: Option<String>,
    details: Option<String>,
    hint: Option<String>,
}

impl ErrorBody {
    fn parse(body: &str) -> Self {
        let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(body) else {
            return ErrorBody::default();
        };
        let text = |name: &str| match fields.get(name) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => Some(other.to_string()),
        };
        // PostgreSQL quotes a refused value whole (a user's megabytes): what is answered and
        // logged is its start, redacted.
        let redacted = |name: &str| text(name).map(|t| credentials::redact_clipped(&t, MAX_ERROR_TEXT_CHARS));
        ErrorBody {
            code: text("code"),
            message: redacted("message"),
            details: redacted("details"),
            hint: redacted("hint"),
        }
    }
}

/// Longest transaction id (a string the client chose) a log line carries: one upload of 1,000
/// fatal transactions must not write a log line of megabytes.
const MAX_LOGGED_ID_CHARS: usize = 64;

fn logged_id(id: &Option<Value>) -> Value {
    match id {
        Some(Value::String(text)) => Value::String(credentials::clipped(text, MAX_LOGGED_ID_CHARS).into_owned()),
        Some(id) => id.clone(),
        None => Value::Null,
    }
}

/// Longest `message`, `details` or `hint` of an upstream's error kept (a value it quotes is cut).
const MAX_ERROR_TEXT_CHARS: usize = 2_000;

fn excerpt(body: &str) -> String {
    let redacted = credentials::redact_clipped(body, 4 * BODY_EXCERPT_CHARS);
    let flat: String = redacted.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    credentials::clipped(flat.trim(), BODY_EXCERPT_CHARS).into_owned()
}

/// A `Retry-After` given in seconds (the HTTP-date form is ignored).
fn retry_after(response: &HttpResponse) -> Option<u64> {
    let seconds: u64 = response.header_value("retry-after")?.trim().parse().ok()?;
    Some(seconds.min(MAX_RETRY_AFTER_SECONDS))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The built-in rules, without operator overrides.
    #[test]
    fn a_missing_grant_names_the_sessions_own_role_quoted_when_it_must_be() {
        let function = with_message(403, "42501", "permission denied for function powersync_upload_row_key");
        let column = with_message(403, "42501", "permission denied for column \"locked\" of relation \"todos\"");
        for (role, named) in [("premium", "to premium"), ("Premium Users", "to \"Premium Users\"")] {
            for (refused, grant) in [
                (&function, "grant execute on function public.powersync_upload_row_key"),
                (&column, "grant select (locked), insert (locked), update (locked) on table public.todos"),
            ] {
                let verdict = super::classify(refused, Some(0), &ClassOverrides::default(), as_user(role, "u"));
                let Verdict::Retryable { failure, .. } = &verdict else { panic!("{verdict:?}") };
                assert!(failure.message.contains(&format!("{grant} {named}")), "{}", failure.message);
            }
        }
    }

    fn as_user<'a>(api_role: &'a str, sub: &'a str) -> WrittenAs<'a> {
        WrittenAs { api_role, sub, sub_written_as_owner: false }
    }

    fn classify(answer: &Result<HttpResponse, TransportError>, index: Option<usize>) -> Verdict {
        super::classify(answer, index, &ClassOverrides::default(), as_user("authenticated", "user-1"))
    }

    #[test]
    fn log_summary_names_fatal_transactions_without_row_data() {
        let mut failure = FailedOperation::new(Some(1), "23505", "duplicate key value");
        failure.details = Some("Key (handle)=(secret-handle) already exists.".into());
        let report = UploadReport {
            results: vec![
                TransactionResult::success(Some(json!(1))),
                TransactionResult::fatal(Some(json!(2)), failure),
            ],
            subrequests: 2,
            ..UploadReport::default()
        };
        let summary = report.log_summary();
        assert_eq!(summary["fatal_transactions"], json!([{"transaction_id": 2, "index": 1, "code": "23505"}]));
        assert_eq!((summary["success"].as_u64(), summary["fatal"].as_u64()), (Some(1), Some(1)));
        assert!(!summary.to_string().contains("secret-handle"));
    }

    #[test]
    fn log_summary_clips_a_transaction_id_the_client_chose() {
        let long = "x".repeat(5000);
        let report = UploadReport {
            results: vec![TransactionResult::fatal(
                Some(json!(long)),
                FailedOperation::new(None, "table_not_allowed", "m"),
            )],
            ..UploadReport::default()
        };
        let logged = report.log_summary()["fatal_transactions"][0]["transaction_id"].as_str().unwrap_or("").to_string();
        assert_eq!(logged.chars().count(), MAX_LOGGED_ID_CHARS + 1);
        assert!(logged.ends_with('…'));
    }

    fn answer(status: u16, body: &str) -> Result<HttpResponse, TransportError> {
        Ok(HttpResponse { status, headers: vec![], body: body.to_string() })
    }

    fn postgrest(status: u16, code: &str) -> Result<HttpResponse, TransportError> {
        answer(status, &json!({"code": code, "message": "m", "details": "d", "hint": null}).to_string())
    }

    fn is_fatal(verdict: &Verdict) -> bool {
        matches!(verdict, Verdict::Fatal(_))
    }

    fn is_retryable(verdict: &Verdict) -> bool {
        matches!(verdict, Verdict::Retryable { .. })
    }

    fn code(verdict: &Verdict) -> &str {
        match verdict {
            Verdict::Fatal(f) | Verdict::Retryable { failure: f, .. } => &f.code,
            Verdict::Applied => "applied",
        }
    }

    #[test]
    fn success_statuses_are_applied() {
        for status in [200, 201, 204] {
            assert_eq!(classify(&answer(status, ""), Some(0)), Verdict::Applied);
        }
    }

    #[test]
    fn data_constraint_and_schema_errors_are_fatal() {
        for (status, code) in [
            (400, "22P02"),
            (400, "22001"),
            (409, "23505"),
            (409, "23503"),
            (400, "23502"),
            (400, "23514"),
            (400, "42804"),
            (500, "21000"),
        ] {
            let verdict = classify(&postgrest(status, code), Some(3));
            assert!(is_fatal(&verdict), "{code} {verdict:?}");
            assert_eq!(code_of(&verdict), code);
        }
    }

    fn code_of(verdict: &Verdict) -> String {
        code(verdict).to_string()
    }

    #[test]
    fn fatal_failure_carries_body_fields_and_index() {
        let verdict = classify(
            &answer(409, r#"{"code":"23505","message":"duplicate key","details":"Key (id)=(1) exists.","hint":"h"}"#),
            Some(2),
        );
        assert_eq!(
            verdict,
            Verdict::Fatal(FailedOperation {
                index: Some(2),
                code: "23505".to_string(),
                message: "duplicate key".to_string(),
                details: Some("Key (id)=(1) exists.".to_string()),
                hint: Some("h".to_string()),
                http_status: Some(409),
            })
        );
    }

    #[test]
    fn transient_database_errors_are_retryable() {
        for (status, code) in [
            (503, "08006"),
            (500, "40001"),
            (500, "40P01"),
            (503, "53300"),
            (500, "57014"),
            (500, "58030"),
            (403, "28000"),
        ] {
            let verdict = classify(&postgrest(status, code), Some(0));
            assert!(is_retryable(&verdict), "{code} {verdict:?}");
            assert_eq!(code_of(&verdict), code);
        }
    }

    #[test]
    fn a_read_only_database_waits_as_long_as_schema_drift_for_the_person_who_fixes_it() {
        // PostgREST answers 25006 with 405; Supabase makes a project read-only when its disk is full
        let verdict = classify(&postgrest(405, "25006"), Some(0));
        assert!(is_retryable(&verdict), "{verdict:?}");
        assert_eq!(code_of(&verdict), "25006");
        assert_eq!(retry_after_of(&verdict), Some(SCHEMA_DRIFT_RETRY_AFTER_SECONDS));
        // another class 25 state stays a short wait
        assert_eq!(retry_after_of(&classify(&postgrest(500, "25P02"), Some(0))), None);
    }

    #[test]
    fn postgrest_request_and_schema_errors_are_fatal() {
        for code in ["PGRST100", "PGRST102", "PGRST116", "PGRST200", "PGRST207"] {
            assert!(is_fatal(&classify(&postgrest(400, code), None)), "{code}");
        }
    }

    fn retry_after_of(verdict: &Verdict) -> Option<u64> {
        match verdict {
            Verdict::Retryable { retry_after_seconds, .. } => *retry_after_seconds,
            _ => None,
        }
    }

    #[test]
    fn schema_drift_is_retryable_with_a_longer_retry_after() {
        for (status, code) in [
            (400, "42703"),    // undefined column
            (404, "42P01"),    // undefined table
            (404, "42883"),    // undefined function
            (400, "42P10"),    // no unique constraint matching on_conflict=id
            (400, "PGRST204"), // column not in the schema cache
            (404, "PGRST205"), // table not in the schema cache
            (404, "PGRST202"), // the atomic function is not installed
            (404, "PGRST125"), // PostgREST 13: a path it does not serve (a wrong SUPABASE_URL path)
            (500, "PGRST111"), // a trigger set a malformed response.headers
            (500, "PGRST112"), // … or response.status
        ] {
            let verdict = classify(&postgrest(status, code), Some(1));
            assert!(is_retryable(&verdict), "{code} {verdict:?}");
            assert_eq!(code_of(&verdict), code);
            assert_eq!(retry_after_of(&verdict), Some(SCHEMA_DRIFT_RETRY_AFTER_SECONDS), "{code}");
        }
        // PostgREST 12: a table missing from the schema cache is a 404 without a code
        let bare = classify(&answer(404, ""), Some(0));
        assert!(is_retryable(&bare));
        assert_eq!((code(&bare), retry_after_of(&bare)), ("http_404", Some(SCHEMA_DRIFT_RETRY_AFTER_SECONDS)));
        // a longer upstream Retry-After still wins
        let longer = Ok(HttpResponse {
            status: 404,
            headers: vec![("Retry-After".to_string(), "600".to_string())],
            body: json!({"code": "PGRST205", "message": "m"}).to_string(),
        });
        assert_eq!(retry_after_of(&classify(&longer, None)), Some(600));
    }

    fn with_message(status: u16, code: &str, message: &str) -> Result<HttpResponse, TransportError> {
        answer(status, &json!({"code": code, "message": message, "details": null, "hint": null}).to_string())
    }

    #[test]
    fn a_table_whose_name_holds_a_key_prefix_keeps_its_missing_grant_retryable() {
        let verdict = classify(&with_message(403, "42501", "permission denied for table app_sb_secret_keys"), Some(0));
        let Verdict::Retryable { failure, .. } = &verdict else { panic!("{verdict:?}") };
        assert!(failure.message.contains("on table public.app_sb_secret_keys to authenticated"), "{}", failure.message);
    }

    #[test]
    fn permission_denied_for_table_is_retryable_and_names_the_grant() {
        // PostgreSQL 15's text (aclchk.c), as PostgREST passes it on with 403
        let verdict = classify(&with_message(403, "42501", "permission denied for table todos"), Some(2));
        let Verdict::Retryable { failure, retry_after_seconds } = &verdict else { panic!("{verdict:?}") };
        assert_eq!((failure.code.as_str(), failure.index, failure.http_status), ("42501", Some(2), Some(403)));
        assert_eq!(
            *retry_after_seconds,
            Some(SCHEMA_DRIFT_RETRY_AFTER_SECONDS),
            "a migration's wait, like schema drift"
        );
        assert!(failure.message.starts_with("permission denied for table todos: "), "{}", failure.message);
        assert!(
            failure.message.contains(
                "(a missing GRANT, the operator's to fix; the upload waits): grant select, insert, update, delete on \
                 table public.todos to authenticated; if the table's privileges are limited on purpose (column \
                 by column, or no update or delete), grant only what the writes need: a PUT insert and update \
                 of each column it sends and of id (the upsert sets the id, even for a new row), a PATCH update \
                 of its columns, a DELETE delete, each with select (id); a table without update takes no PUT \
                 (the write waits until then)"
            ),
            "the table-wide GRANT, and a warning for a table whose columns are granted one by one: {}",
            failure.message
        );
        // service mode names the service role
        let verdict = super::classify(
            &with_message(403, "42501", "permission denied for table todos"),
            None,
            &ClassOverrides::default(),
            as_user("service_role", "user-1"),
        );
        let Verdict::Retryable { failure, .. } = &verdict else { panic!("{verdict:?}") };
        assert!(failure.message.contains("on table public.todos to service_role; "), "{}", failure.message);
    }

    #[test]
    fn service_mode_withholds_a_constraints_detail_that_quotes_rows() {
        let exclusion = json!({"code": "23P01", "message": "conflicting key value violates exclusion constraint \"no_overlap\"",
                               "details": "Key (room, during)=(7, [0,24)) conflicts with existing key (room, during)=(7, [10,11)).",
                               "hint": null}).to_string();
        let check =
            json!({"code": "23514", "message": "new row for relation \"todos\" violates check constraint \"p\"",
                           "details": "Failing row contains (1, secret-score, 9).", "hint": null})
            .to_string();
        let raised = json!({"code": "P0001", "message": "refused", "details": "the trigger's own words", "hint": null})
            .to_string();
        let service = WrittenAs { api_role: "service_role", sub: "user-1", sub_written_as_owner: true };
        let details = |body: &str, written_as| match super::classify(
            &answer(409, body),
            Some(0),
            &ClassOverrides::default(),
            written_as,
        ) {
            Verdict::Fatal(failure) => failure.details,
            other => panic!("{other:?}"),
        };
        assert_eq!(details(&exclusion, service).as_deref(), Some(WITHHELD_DETAILS), "another user's booking");
        assert_eq!(details(&check, service).as_deref(), Some(WITHHELD_DETAILS), "columns the user cannot read");
        let view = json!({"code": "44000", "message": "new row violates check option for view \"open_orders\"",
                          "details": "Failing row contains (a, u1, internal: vip customer, -1).", "hint": null})
        .to_string();
        assert_eq!(details(&view, service).as_deref(), Some(WITHHELD_DETAILS), "a view's check option");
        let quoted =
            json!({"code": "XX000", "message": "m", "details": "Key (email)=(b@example.com) is taken"}).to_string();
        assert_eq!(details(&quoted, service).as_deref(), Some(WITHHELD_DETAILS), "PostgreSQL's words for a key");
        assert_eq!(
            details(&raised, service).as_deref(),
            Some("the trigger's own words"),
            "a trigger's message is meant for the user"
        );
        // under row-level security PostgreSQL itself leaves the values out: what it says is kept
        let rls = as_user("authenticated", "user-1");
        assert!(details(&check, rls).is_some_and(|d| d.starts_with("Failing row contains")));
    }

    #[test]
    fn a_sequence_grant_carries_no_column_level_warning() {
        let verdict = classify(&with_message(403, "42501", "permission denied for sequence todos_id_seq"), Some(0));
        let Verdict::Retryable { failure, .. } = &verdict else { panic!("{verdict:?}") };
        assert!(
            failure.message.ends_with("grant usage on sequence public.todos_id_seq to authenticated"),
            "{}",
            failure.message
        );
    }

    #[test]
    fn a_missing_column_names_the_migration_and_in_service_mode_the_owner_column_setting() {
        let message = r#"column "newcol" of relation "todos" does not exist"#;
        let Verdict::Retryable { failure, retry_after_seconds } =
            classify(&with_message(400, "42703", message), Some(0))
        else {
            panic!("retryable")
        };
        assert_eq!(retry_after_seconds, Some(SCHEMA_DRIFT_RETRY_AFTER_SECONDS));
        assert!(failure.message.contains("ship the migration that adds it"), "{}", failure.message);
        assert!(!failure.message.contains("UPLOAD_OWNER_COLUMN"), "{}", failure.message);
        let service = WrittenAs { api_role: "service_role", sub: "u", sub_written_as_owner: true };
        let answer = with_message(400, "42703", "column todos.owner_missing does not exist");
        let Verdict::Retryable { failure, .. } = super::classify(&answer, Some(0), &ClassOverrides::default(), service)
        else {
            panic!("retryable")
        };
        assert!(failure.message.contains("correct UPLOAD_OWNER_COLUMN"), "{}", failure.message);
    }

    #[test]
    fn an_enum_value_the_type_lacks_waits_and_names_the_sql_that_adds_it() {
        let verdict =
            classify(&with_message(400, "22P02", r#"invalid input value for enum public.mood: "it's""#), Some(1));
        let Verdict::Retryable { failure, retry_after_seconds } = &verdict else { panic!("{verdict:?}") };
        assert_eq!((failure.code.as_str(), *retry_after_seconds), ("22P02", Some(SCHEMA_DRIFT_RETRY_AFTER_SECONDS)));
        assert!(failure.message.contains("add it (alter type public.mood add value 'it''s';)"), "{}", failure.message);
        // a value no label can be (64 bytes or more): no migration adds it, the data's
        let long = format!(r#"invalid input value for enum mood: "{}""#, "x".repeat(64));
        assert!(is_fatal(&classify(&with_message(400, "22P02", &long), Some(0))));
        let longest = format!(r#"invalid input value for enum mood: "{}""#, "x".repeat(63));
        assert!(is_retryable(&classify(&with_message(400, "22P02", &longest), Some(0))));
        // any other invalid input is still the data's
        assert!(is_fatal(&classify(
            &with_message(400, "22P02", r#"invalid input syntax for type uuid: "x""#),
            Some(0)
        )));
    }

    #[test]
    fn errors_only_a_functions_own_code_raises_wait_for_the_operator_though_answered_400() {
        for (code, message) in [
            (
                "27000",
                "tuple to be updated or deleted was already modified by an operation triggered by the current command",
            ),
            ("20000", "case not found"),
            ("24000", "cursor \"c\" is not open"),
            ("34000", "cursor \"c\" does not exist"),
            ("0Z002", "GET STACKED DIAGNOSTICS cannot be used outside an exception handler"),
            ("3D000", "database \"other\" does not exist"),
        ] {
            let verdict = classify(&with_message(400, code, message), Some(0));
            let Verdict::Retryable { failure, retry_after_seconds } = &verdict else { panic!("{code}: {verdict:?}") };
            assert_eq!((failure.code.as_str(), *retry_after_seconds), (code, Some(SCHEMA_DRIFT_RETRY_AFTER_SECONDS)));
            assert!(failure.message.contains("the operator's to fix"), "{}", failure.message);
        }
        let verdict = classify(&with_message(400, "72000", "snapshot too old"), Some(0));
        assert!(matches!(verdict, Verdict::Retryable { retry_after_seconds: None, .. }), "{verdict:?}");
        // an unlisted class answered 400 stays the data's; a view's check option too
        for code in ["44000", "HV000"] {
            assert!(is_fatal(&classify(&with_message(400, code, "m"), Some(0))), "{code}");
        }
    }

    #[test]
    fn a_missing_partition_or_a_sequence_at_its_end_waits_for_the_operator() {
        for (code, message, says) in [
            ("23514", r#"no partition of relation "audit_log" found for row"#, "create it, or a default partition"),
            ("2200H", r#"nextval: reached maximum value of sequence "todos_n_seq" (2147483647)"#, "bigint"),
            ("2200H", r#"nextval: reached minimum value of sequence "down_seq" (1)"#, "bigint"),
        ] {
            let verdict = classify(&with_message(400, code, message), Some(0));
            let Verdict::Retryable { failure, retry_after_seconds } = &verdict else { panic!("{verdict:?}") };
            assert_eq!((failure.code.as_str(), *retry_after_seconds), (code, Some(SCHEMA_DRIFT_RETRY_AFTER_SECONDS)));
            assert!(failure.message.starts_with(message) && failure.message.contains(says), "{}", failure.message);
        }
        // a check constraint and a partition's own constraint refuse the row: the data's
        for message in [
            r#"new row for relation "todos" violates check constraint "positive""#,
            r#"new row for relation "log_2026_12" violates partition constraint"#,
        ] {
            assert!(is_fatal(&classify(&with_message(400, "23514", message), Some(0))), "{message}");
        }
    }

    #[test]
    fn an_unqualified_name_in_a_policy_under_the_atomic_function_names_its_search_path() {
        let atomic = |code: &str, message: &str, hint: &str| {
            answer(400, &json!({"code": code, "message": message, "details": null, "hint": hint}).to_string())
        };
        for (code, message) in
            [("42P01", r#"relation "members" does not exist"#), ("42883", "function is_member(uuid) does not exist")]
        {
            let verdict = classify(&atomic(code, message, "powersync op 0 (PUT todos/1)"), Some(0));
            let Verdict::Retryable { failure, retry_after_seconds } = &verdict else { panic!("{verdict:?}") };
            assert_eq!(*retry_after_seconds, Some(SCHEMA_DRIFT_RETRY_AFTER_SECONDS));
            assert!(failure.message.contains("set search_path = public, extensions"), "{}", failure.message);
        }
        // the table itself missing (the function names it with its schema), or a REST answer
        for verdict in [
            classify(
                &atomic("42P01", r#"relation "public.notes" does not exist"#, "powersync op 0 (PUT notes/1)"),
                Some(0),
            ),
            classify(&with_message(404, "42P01", r#"relation "members" does not exist"#), Some(0)),
        ] {
            let Verdict::Retryable { failure, .. } = &verdict else { panic!("{verdict:?}") };
            assert!(!failure.message.contains("search_path"), "{}", failure.message);
        }
    }

    #[test]
    fn permission_denied_for_every_object_kind_names_its_grant() {
        for (message, grant) in [
            (
                "permission denied for view open_todos",
                "grant select, insert, update, delete on table public.open_todos to r",
            ),
            ("permission denied for sequence todos_id_seq", "grant usage on sequence public.todos_id_seq to r"),
            ("permission denied for schema app", "grant usage on schema app to r"),
            (
                "permission denied for function powersync_apply_transaction",
                "grant execute on function public.powersync_apply_transaction to r",
            ),
            ("permission denied for procedure p", "grant execute on procedure public.p to r"),
            ("permission denied for materialized view mv", "grant select on table public.mv to r"),
            ("permission denied for type mood", "grant usage on type public.mood to r"),
            (
                "permission denied for column \"done\" of relation \"todos\"",
                "grant select (done), insert (done), update (done) on table public.todos to r",
            ),
            (
                "permission denied for table My Todos",
                "grant select, insert, update, delete on table public.\"My Todos\" to r",
            ),
        ] {
            assert_eq!(missing_grant(message, "r").as_deref(), Some(grant), "{message}");
            let verdict = super::classify(
                &with_message(403, "42501", message),
                None,
                &ClassOverrides::default(),
                as_user("r", "user-1"),
            );
            assert_eq!(retry_after_of(&verdict), Some(SCHEMA_DRIFT_RETRY_AFTER_SECONDS), "{message}");
        }
    }

    #[test]
    fn only_a_42501_refusing_the_row_itself_is_fatal() {
        for message in [
            "new row violates row-level security policy for table \"todos\"",
            "new row violates row-level security policy (USING expression) for table \"todos\"",
            "row 1b4e28ba of table todos belongs to another owner",
            "table powersync_upload_ledger is the bridge's own: uploads do not write it",
        ] {
            for status in [401, 403] {
                let verdict = classify(&with_message(status, "42501", message), Some(0));
                assert!(is_fatal(&verdict), "{message}: {verdict:?}");
                let Verdict::Fatal(failure) = verdict else { continue };
                assert_eq!(failure.message, message, "the message is left as it is");
            }
        }
        // another code with the same words is not a privilege error
        assert!(is_fatal(&classify(&with_message(400, "23514", "permission denied for table todos"), Some(0))));
    }

    /// Any other 42501 is the database's setup, which no row could pass: a missing GRANT in the
    /// server's own language (lc_messages), a trigger doing what only an owner or a superuser
    /// may. It waits (it was fatal: every user's writes discarded). So does a row-level security
    /// refusal in another language: kept, never discarded.
    #[test]
    fn a_42501_of_the_databases_setup_in_any_language_waits_for_the_operator() {
        for message in [
            "keine Berechtigung für Tabelle todos",
            "droit refusé pour la table todos",
            "permiso denegado a la tabla todos",
            "нет доступа к таблице todos",
            "テーブル todos へのアクセスが拒否されました",
            "keine Berechtigung für Funktion powersync_apply_transaction",
            "must be owner of materialized view todo_counts",
            "permission denied to set parameter \"session_replication_role\"",
            "permission denied to create temporary tables in database \"postgres\"",
            "permission denied for",
            "permission denied for table ",
            "neue Zeile verletzt Policy für Sicherheit auf Zeilenebene für Tabelle »todos«",
            "",
        ] {
            let verdict = classify(&with_message(403, "42501", message), Some(0));
            assert_eq!(retry_after_of(&verdict), Some(SCHEMA_DRIFT_RETRY_AFTER_SECONDS), "{message}: {verdict:?}");
            let Verdict::Retryable { failure, .. } = verdict else { unreachable!() };
            assert!(failure.message.contains("the operator's to fix"), "{failure:?}");
        }
    }

    #[test]
    fn a_row_level_security_refusal_names_its_table() {
        for (message, table) in [
            ("new row violates row-level security policy for table \"list_events\"", Some("list_events")),
            ("new row violates row-level security policy (USING expression) for table \"todos\"", Some("todos")),
            ("new row violates row-level security policy \"p\" for table \"t\"", Some("t")),
            ("row 1 of table todos belongs to another owner", None),
            ("new row violates row-level security policy for table \"a\"b\"", None),
        ] {
            assert_eq!(refused_by_policy_of(message), table, "{message}");
        }
    }

    #[test]
    fn a_constraints_refusal_names_the_table_of_its_row() {
        for (code, message, table) in [
            ("42501", "new row violates row-level security policy for table \"list_events\"", Some("list_events")),
            (
                "23502",
                r#"null value in column "actor" of relation "audit" violates not-null constraint"#,
                Some("audit"),
            ),
            ("23514", r#"new row for relation "todos" violates check constraint "p""#, Some("todos")),
            ("23514", r#"new row for relation "log_1" violates partition constraint"#, None),
            ("23503", r#"insert or update on table "items" violates foreign key constraint "f""#, Some("items")),
            (
                "23503",
                r#"update or delete on table "lists" violates foreign key constraint "f" on table "t""#,
                Some("lists"),
            ),
            ("23505", r#"duplicate key value violates unique constraint "todos_pkey""#, None),
            ("23502", r#"null value in column "a" violates not-null constraint"#, None),
            ("22001", r#"new row for relation "todos" violates check constraint "p""#, None),
        ] {
            assert_eq!(refused_table_of(code, message), table, "{code} {message}");
        }
    }

    #[test]
    fn unending_recursion_waits_for_the_operator() {
        let verdict = classify(&with_message(500, "54001", "stack depth limit exceeded"), Some(0));
        assert_eq!(retry_after_of(&verdict), Some(SCHEMA_DRIFT_RETRY_AFTER_SECONDS), "{verdict:?}");
        let Verdict::Retryable { failure, .. } = verdict else { unreachable!() };
        assert!(failure.message.contains("recursing without end"), "{}", failure.message);
        // the rest of class 54 is still the data's (an index row too large)
        assert!(is_fatal(&classify(&with_message(500, "54000", "index row size 9000 exceeds maximum"), Some(0))));
    }

    fn with_range(status: u16, range: Option<&str>, body: &str) -> HttpResponse {
        HttpResponse {
            status,
            headers: range.map(|r| vec![("Content-Range".to_string(), r.to_string())]).unwrap_or_default(),
            body: body.to_string(),
        }
    }

    #[test]
    fn affected_rows_is_the_total_of_postgrests_content_range() {
        for (range, rows) in [("*/3", Some(3)), ("0-2/3", Some(3)), ("*/0", Some(0)), (" 0-0/1 ", Some(1))] {
            assert_eq!(affected_rows(&with_range(204, Some(range), "")), rows, "{range}");
        }
        // not counted, or not PostgREST's header
        for range in ["*/*", "0-2/*", "3", "", "/3", "a-b/3", "*/-1", "*/3x", "0-/3", "bytes 0-2/3"] {
            assert_eq!(affected_rows(&with_range(204, Some(range), "")), None, "{range}");
        }
        assert_eq!(affected_rows(&with_range(204, None, "")), None);
    }

    #[test]
    fn a_rejection_the_ledger_kept_without_a_dead_letter_is_answered_whole_and_says_it_went_through_rest() {
        let kept = r#"{"applied": 0, "dead_letter": {"id": 0, "index": 2, "code": "conflict", "message": "changed",
            "details": null, "hint": "h", "http_status": 409, "applied_via": "rest"}}"#;
        let mut failure = FailedOperation::new(Some(2), "conflict", "changed");
        failure.hint = Some("h".to_string());
        failure.http_status = Some(409);
        assert_eq!(
            atomic_answer(kept, 3),
            Some(AtomicAnswer { dead_letter: Some(failure), rejected_after_rest: true, ..AtomicAnswer::default() })
        );
        // a dead letter's answer says so too; anything but "rest", or a status no HTTP has, is not taken
        let letter = atomic_answer(r#"{"applied": 0, "dead_letter": {"id": 7, "applied_via": "rest"}}"#, 3).unwrap();
        assert!(letter.rejected_after_rest);
        let odd = r#"{"applied": 0, "dead_letter": {"id": 0, "applied_via": "atomic", "http_status": 70000}}"#;
        let odd = atomic_answer(odd, 3).unwrap();
        assert!(!odd.rejected_after_rest);
        assert_eq!(odd.dead_letter.and_then(|f| f.http_status), None);
        assert!(!atomic_answer(r#"{"applied": 3, "applied_via": "rest"}"#, 3).unwrap().rejected_after_rest);
    }

    #[test]
    fn atomic_answer_is_the_functions_result_object() {
        assert_eq!(atomic_answer(r#"{"applied": 3}"#, 3), Some(AtomicAnswer::default()));
        assert_eq!(
            atomic_answer(r#"{"applied": 3, "unchanged": [2, 0, 2, 7]}"#, 3),
            Some(AtomicAnswer { unchanged: vec![0, 2], ..AtomicAnswer::default() })
        );
        assert_eq!(
            atomic_answer(r#"{"applied": 0, "already_applied": true}"#, 3),
            Some(AtomicAnswer { already_applied: true, ..AtomicAnswer::default() })
        );
        assert_eq!(
            atomic_answer(r#"{"applied": 0, "conflict": {"index": 2, "row": {"id": "a", "n": 1}}}"#, 3),
            Some(AtomicAnswer { conflict: Some((2, json!({"id": "a", "n": 1}))), ..AtomicAnswer::default() })
        );
        let recorded = r#"{"applied": 0, "dead_letter": {"id": 7, "index": 1, "code": "23514", "message": "check", "details": "d"}}"#;
        let mut failure = FailedOperation::new(Some(1), "23514", "check");
        failure.details = Some("d".to_string());
        assert_eq!(
            atomic_answer(recorded, 3),
            Some(AtomicAnswer { dead_letter: Some(failure), ..AtomicAnswer::default() })
        );
        // a dead letter without an op index (or one past the transaction), or whose row is gone
        let whole =
            atomic_answer(r#"{"applied": 0, "dead_letter": {"id": 7, "index": 5, "code": "x", "message": "m"}}"#, 3);
        assert_eq!(whole.and_then(|a| a.dead_letter), Some(FailedOperation::new(None, "x", "m")));
        let gone = atomic_answer(r#"{"applied": 0, "dead_letter": {"id": 7}}"#, 3).and_then(|a| a.dead_letter);
        assert_eq!(
            gone,
            Some(FailedOperation::new(
                None,
                DEAD_LETTERED,
                "this transaction was rejected before (dead letter 7); nothing applied"
            ))
        );
        for body in [
            "",
            "null",
            "[]",
            "{}",
            r#"{"applied": "3"}"#,
            r#"{"applied": 0, "dead_letter": {"index": 1}}"#,
            r#"{"applied": 0, "dead_letter": true}"#,
            "<html>ok</html>",
            r#"{"applied": 1, "unchanged": "0"}"#,
            r#"{"applied": 1, "unchanged": [-1]}"#,
            r#"{"applied": 0, "conflict": {"index": 3, "row": {}}}"#,
            r#"{"applied": 0, "conflict": {"index": 0}}"#,
            r#"{"applied": 0, "conflict": {"index": "0", "row": {}}}"#,
            r#"{"applied": 0, "conflict": true}"#,
        ] {
            assert_eq!(atomic_answer(body, 3), None, "{body}");
        }
    }

    #[test]
    fn an_upstream_error_quoting_a_huge_value_is_cut_short_and_still_classified() {
        // PostgreSQL quotes the refused value whole: a user's id of 300 KB of `eyJ` came back
        // in the message, which redaction once read in quadratic time.
        let value = "eyJ".repeat(100_000);
        let body = json!({"code": "22P02", "message": format!("invalid input syntax for type uuid: \"{value}\""),
                          "details": value, "hint": null});
        let started = std::time::Instant::now();
        let verdict = classify(&answer(400, &body.to_string()), Some(0));
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "{:?}", started.elapsed());
        let Verdict::Fatal(failure) = verdict else { panic!("{verdict:?}") };
        assert_eq!(failure.code, "22P02");
        assert!(failure.message.starts_with("invalid input syntax for type uuid"), "{}", failure.message);
        assert!(failure.message.chars().count() <= MAX_ERROR_TEXT_CHARS + 1, "{}", failure.message.len());
        assert!(failure.details.unwrap_or_default().chars().count() <= MAX_ERROR_TEXT_CHARS + 1);
    }

    #[test]
    fn unexpected_response_names_the_status_and_a_short_clean_excerpt() {
        let failure = unexpected_response(Some(1), &with_range(201, None, ""), "the function's result");
        assert_eq!(
            (failure.code.as_str(), failure.index, failure.http_status),
            ("unexpected_response", Some(1), Some(201))
        );
        assert!(failure.message.starts_with("HTTP 201 from Supabase is not PostgREST's answer"), "{}", failure.message);
        assert_eq!(failure.details.as_deref(), Some("an empty body"));
        let html = format!("<html>\u{1b}[31m\r\n{}</html>", "x".repeat(1000));
        let failure = unexpected_response(None, &with_range(200, None, &html), "x");
        assert!(failure.message.starts_with("HTTP 200 from Supabase is not"), "{}", failure.message);
        assert!(!failure.message.contains("<html>"), "the message (logged) quotes nothing of the body");
        let details = failure.details.unwrap_or_default();
        assert!(details.starts_with("body \"<html>"), "{details}");
        assert!(!details.chars().any(char::is_control), "{details:?}");
        assert!(details.chars().count() < 400, "{}", details.len());
        // cut within the run of x: the run is dropped whole (it could have been a credential)
        assert!(details.contains("…") && !details.contains('x'), "{details}");
    }

    #[test]
    fn unchanged_entries_are_sent_only_when_there_are_some() {
        let result = TransactionResult::success_with_unchanged(Some(json!(4)), vec![1, 3]);
        assert_eq!(result.to_json(), json!({"status": "success", "transaction_id": 4, "unchanged": [1, 3]}));
        let result = TransactionResult::success_with_unchanged(Some(json!(4)), vec![]);
        assert_eq!(result.to_json(), json!({"status": "success", "transaction_id": 4}));
        let report = UploadReport {
            results: vec![TransactionResult::success_with_unchanged(None, vec![0, 2])],
            ..UploadReport::default()
        };
        assert_eq!(report.log_summary()["unchanged_entries"], json!(2));
    }

    #[test]
    fn overrides_decide_before_the_built_in_rules() {
        let mut overrides = ClassOverrides::default();
        overrides.insert("PGRST204", ErrorClass::DangerouslyFatal);
        overrides.insert("23514", ErrorClass::Retryable);
        overrides.insert("P0", ErrorClass::Retryable);
        overrides.insert("P0004", ErrorClass::Fatal);
        overrides.insert("http_503", ErrorClass::DangerouslyFatal);
        overrides.insert("42703", ErrorClass::Retryable);
        let with = |status, code: &str| {
            super::classify(&postgrest(status, code), Some(0), &overrides, as_user("authenticated", "user-1"))
        };
        assert!(is_fatal(&with(400, "PGRST204")));
        assert!(is_retryable(&with(400, "23514")));
        assert!(is_retryable(&with(400, "P0001")), "the class entry");
        assert!(is_fatal(&with(500, "P0004")), "the exact code wins over its class");
        assert!(is_fatal(&with(409, "23505")), "codes without an entry keep their class");
        assert_eq!(retry_after_of(&with(400, "42703")), Some(SCHEMA_DRIFT_RETRY_AFTER_SECONDS));
        assert!(is_fatal(&super::classify(
            &answer(503, "down"),
            Some(0),
            &overrides,
            as_user("authenticated", "user-1")
        )));
        assert_eq!(
            super::classify(&answer(201, ""), Some(0), &overrides, as_user("authenticated", "user-1")),
            Verdict::Applied
        );
        let lost = Err(TransportError::no_answer("reset"));
        assert!(is_retryable(&super::classify(&lost, Some(0), &overrides, as_user("authenticated", "user-1"))));
    }

    #[test]
    fn override_keys_name_codes() {
        for key in ["23514", "P0", "PGRST204", "PGRSTX00", "http_404", "http_599", "XX000"] {
            assert!(ClassOverrides::is_valid_key(key), "{key}");
        }
        for key in ["", "2", "235", "p0001", "PGRST20", "http_200", "http_4040", "http_abc", "network_error"] {
            assert!(!ClassOverrides::is_valid_key(key), "{key}");
        }
    }

    #[test]
    fn missing_rpc_function_is_retryable() {
        assert!(is_retryable(&classify(&postgrest(404, "PGRST202"), None)));
    }

    #[test]
    fn ambiguous_rpc_function_overload_is_retryable() {
        let verdict = classify(&postgrest(300, "PGRST203"), None);
        assert!(is_retryable(&verdict), "{verdict:?}");
        assert_eq!(code(&verdict), "PGRST203");
    }

    #[test]
    fn jwt_connection_and_internal_postgrest_errors_are_retryable() {
        for (status, code) in
            [(401, "PGRST301"), (401, "PGRST303"), (503, "PGRST000"), (504, "PGRST003"), (500, "PGRSTX00")]
        {
            assert!(is_retryable(&classify(&postgrest(status, code), None)), "{code}");
        }
    }

    #[test]
    fn postgrest_refusing_a_session_the_worker_accepted_waits_for_the_operator_unless_it_expired() {
        let refusal = |message: &str| {
            let body = json!({"code": "PGRST301", "message": message, "details": null, "hint": null});
            classify(&answer(401, &body.to_string()), None)
        };
        match refusal("No suitable key or wrong key type") {
            Verdict::Retryable { failure, retry_after_seconds } => {
                assert_eq!(retry_after_seconds, Some(SCHEMA_DRIFT_RETRY_AFTER_SECONDS));
                assert!(failure.message.contains("Third-party Auth"), "{}", failure.message);
                assert_eq!(failure.code, "PGRST301");
            }
            other => panic!("{other:?}"),
        }
        // expired between the worker's check and PostgREST's, or refused for clock skew the
        // worker's leeway allows: the next session or try passes, soon
        for message in
            ["JWT expired", "JWTNotYetValid", "JWT not yet valid", "JWTIssuedAtFuture", "JWT issued at future"]
        {
            match refusal(message) {
                Verdict::Retryable { failure, retry_after_seconds } => {
                    assert_eq!(retry_after_seconds, None, "{message}");
                    assert_eq!(failure.message, message);
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn no_unique_constraint_on_id_names_that_fix() {
        let body = json!({"code": "42P10", "message": "there is no unique or exclusion constraint matching the ON CONFLICT specification"});
        match classify(&answer(400, &body.to_string()), Some(0)) {
            Verdict::Retryable { failure, retry_after_seconds } => {
                assert_eq!(retry_after_seconds, Some(SCHEMA_DRIFT_RETRY_AFTER_SECONDS));
                assert!(failure.message.contains("unique constraint"), "{}", failure.message);
                assert!(failure.message.contains("one on id"), "{}", failure.message);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unrecognised_sqlstate_follows_the_status() {
        let internal = classify(&postgrest(500, "XX000"), Some(0));
        assert!(is_retryable(&internal));
        assert_eq!(code(&internal), "XX000");
        assert!(is_fatal(&classify(&postgrest(400, "44000"), Some(0))));
        assert!(is_retryable(&classify(&postgrest(500, "55P03"), Some(0))));
    }

    #[test]
    fn permanent_data_errors_are_fatal_even_when_postgrest_answers_500() {
        for (status, code) in [
            (500, "54000"), // program_limit_exceeded: index row too large
            (500, "54001"), // statement too complex (the stack's depth: below, the operator's)
            (413, "54000"),
            (500, "P0002"), // no_data_found, raised by a trigger
            (500, "P0004"), // assert_failure
            (400, "P0001"), // raise_exception
        ] {
            let verdict = classify(&postgrest(status, code), Some(2));
            assert!(is_fatal(&verdict), "{status} {code} {verdict:?}");
            assert_eq!(code_of(&verdict), code);
        }
    }

    #[test]
    fn errors_of_the_databases_own_policies_triggers_and_functions_wait_for_the_operator() {
        for (status, code) in [
            (500, "42P17"), // infinite recursion detected in policy
            (400, "42702"), // ambiguous column, in a policy or trigger
            (400, "42601"), // syntax error, in a trigger's dynamic SQL
            (400, "428C9"), // a generated column written
            (500, "2F005"), // function finished without RETURN
            (500, "38001"), // external routine: containing SQL not permitted
            (500, "39P01"), // trigger protocol violated
            (400, "0A000"), // a view that cannot be written; a deferrable unique id as arbiter
            (400, "3F000"), // a trigger's schema that does not exist
            (400, "26000"), // a prepared statement's name
        ] {
            let verdict = classify(&postgrest(status, code), Some(2));
            let Verdict::Retryable { failure, retry_after_seconds } = &verdict else { panic!("{code}: {verdict:?}") };
            assert_eq!(failure.code, code);
            assert_eq!(*retry_after_seconds, Some(SCHEMA_DRIFT_RETRY_AFTER_SECONDS), "{code}");
            assert!(failure.message.contains("the operator's to fix; the upload waits"), "{}", failure.message);
        }
    }

    #[test]
    fn a_session_role_the_database_cannot_switch_to_keeps_the_upload_queued() {
        for (status, body) in [
            (400, r#"{"code":"22023","message":"role \"teacher\" does not exist"}"#),
            (401, r#"{"code":"22023","message":"role \"teacher\" does not exist"}"#),
            (403, r#"{"code":"42501","message":"permission denied to set role \"teacher\""}"#),
        ] {
            let verdict = classify(&answer(status, body), Some(0));
            let Verdict::Retryable { failure, retry_after_seconds } = &verdict else { panic!("{body}: {verdict:?}") };
            assert_eq!(*retry_after_seconds, Some(SCHEMA_DRIFT_RETRY_AFTER_SECONDS), "{body}");
            assert!(failure.message.contains("grant it to authenticator"), "{}", failure.message);
        }
        // any other invalid parameter value is still the data's
        let other = answer(400, r#"{"code":"22023","message":"invalid value for parameter \"x\""}"#);
        assert!(matches!(classify(&other, Some(0)), Verdict::Fatal(_)));
    }

    #[test]
    fn a_service_role_that_cannot_bypass_row_level_security_keeps_the_upload_queued() {
        let refused =
            answer(403, r#"{"code":"42501","message":"powersync_upload_ledger_claim: the session has no sub"}"#);
        let verdict = classify(&refused, Some(0));
        let Verdict::Retryable { failure, retry_after_seconds } = &verdict else { panic!("{verdict:?}") };
        assert_eq!(failure.code, "42501");
        assert_eq!(*retry_after_seconds, Some(SCHEMA_DRIFT_RETRY_AFTER_SECONDS));
        assert!(failure.message.contains("must bypass row-level security"), "{}", failure.message);
        // a row-level security refusal of the data stays the user's
        let policy = answer(
            403,
            r#"{"code":"42501","message":"new row violates row-level security policy for table \"lists\""}"#,
        );
        assert!(is_fatal(&classify(&policy, Some(0))));
    }

    #[test]
    fn a_database_that_cannot_cast_the_callers_sub_to_uuid_keeps_the_upload_queued() {
        let firebase_uid = "Xk3pQ9abcDEF0123456789ghij";
        let uncastable = |value: &str| {
            let message = format!("invalid input syntax for type uuid: \"{value}\"");
            answer(400, &json!({"code": "22P02", "message": message, "details": null, "hint": null}).to_string())
        };
        let verdict = super::classify(
            &uncastable(firebase_uid),
            Some(1),
            &ClassOverrides::default(),
            as_user("authenticated", firebase_uid),
        );
        let Verdict::Retryable { failure, retry_after_seconds } = &verdict else { panic!("{verdict:?}") };
        assert_eq!((failure.code.as_str(), failure.index), ("22P02", Some(1)));
        assert_eq!(*retry_after_seconds, Some(SCHEMA_DRIFT_RETRY_AFTER_SECONDS));
        assert!(failure.message.contains("auth.jwt() ->> 'sub'"), "{}", failure.message);
        assert!(failure.message.contains("the operator's to fix; the upload waits"), "{}", failure.message);
        // Any other value that is not a uuid is the data's, for this caller as for another.
        let rules =
            |sub| super::classify(&uncastable("not-a-uuid"), Some(1), &ClassOverrides::default(), as_user("r", sub));
        assert!(is_fatal(&rules(firebase_uid)));
        assert!(is_fatal(&rules("")));
        // The caller's id quoted in another error, or in a longer value, stays the data's.
        let other = format!("invalid input syntax for type integer: \"{firebase_uid}\"");
        let other = answer(400, &json!({"code": "22P02", "message": other}).to_string());
        assert!(is_fatal(&super::classify(&other, None, &ClassOverrides::default(), as_user("r", firebase_uid))));
        let longer = uncastable(&format!("{firebase_uid}x"));
        assert!(is_fatal(&super::classify(&longer, None, &ClassOverrides::default(), as_user("r", firebase_uid))));
    }

    #[test]
    fn service_mode_owner_column_that_cannot_hold_the_callers_sub_keeps_the_upload_queued() {
        // The worker writes the sub into the owner column itself: a column of another type is
        // the configuration's, whatever the type (`double precision` has a space).
        let sub = "Xk3pQ9abcDEF0123456789ghij";
        let owner = WrittenAs { api_role: "service_role", sub, sub_written_as_owner: true };
        for type_name in ["bigint", "integer", "double precision", "uuid"] {
            let message = format!("invalid input syntax for type {type_name}: \"{sub}\"");
            let refused = answer(400, &json!({"code": "22P02", "message": message}).to_string());
            let verdict = super::classify(&refused, Some(0), &ClassOverrides::default(), owner);
            let Verdict::Retryable { failure, retry_after_seconds } = &verdict else { panic!("{verdict:?}") };
            assert_eq!(*retry_after_seconds, Some(SCHEMA_DRIFT_RETRY_AFTER_SECONDS), "{type_name}");
            assert!(failure.message.contains("the operator's to fix"), "{}", failure.message);
            // where the client wrote it (RLS mode), only uuid is the operator's
            let by_client = super::classify(&refused, Some(0), &ClassOverrides::default(), as_user("r", sub));
            assert_eq!(is_fatal(&by_client), type_name != "uuid", "{type_name}");
        }
        // another value of the type stays the data's in service mode too
        let other = answer(
            400,
            &json!({"code": "22P02", "message": "invalid input syntax for type bigint: \"7x\""}).to_string(),
        );
        assert!(is_fatal(&super::classify(&other, Some(0), &ClassOverrides::default(), owner)));
    }

    #[test]
    fn credentials_echoed_by_an_upstream_never_reach_the_answer() {
        let service = "sb_secret_N7UND0UgjKTVK-Uodkm0Hg_xSvEMPvz";
        let session = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1In0.c2lnbmF0dXJl";
        let opaque = "0123456789abcdef.opaque-token";
        // header, query and form styles (a proxy's log of the request, a gateway's error page)
        let echoed = format!(
            "GET /rest/v1/todos\nAuthorization: Bearer {session}\napikey: {service}\nX: Bearer: {opaque}\n\
             GET /rest/v1/todos?apikey={service}&authorization=Bearer%20{session}"
        );
        let json = json!({"code": "XX000", "message": echoed, "details": echoed, "hint": echoed}).to_string();
        let html = format!("<html><pre>{echoed}</pre></html>");
        for answer in [answer(500, &json), answer(502, &html), answer(200, &html)] {
            let verdict = classify(&answer, Some(0));
            let failure = match &verdict {
                Verdict::Retryable { failure, .. } | Verdict::Fatal(failure) => failure.clone(),
                Verdict::Applied => unexpected_response(Some(0), answer.as_ref().unwrap(), "a row count"),
            };
            let text = format!("{failure:?}");
            for secret in [service, session, opaque] {
                assert!(!text.contains(secret), "{secret} in {text}");
            }
            assert!(text.contains(credentials::REDACTED), "{text}");
        }
        // ordinary messages are untouched, a row's values included
        for message in [
            r#"new row violates row-level security policy for table "lists""#,
            "Failing row contains (1, eyJ, bearer).",
            "permission denied for table todos",
        ] {
            assert_eq!(credentials::redact(message), message);
        }
    }

    #[test]
    fn answers_without_a_code_follow_the_status() {
        let html = classify(&answer(404, "<html>Not Found</html>"), Some(1));
        assert!(is_retryable(&html), "a wrong URL must not discard uploads");
        assert_eq!(code(&html), "http_404");
        // PostgREST answers every error with a code: these come from something in front of it
        for status in [400, 405, 413, 415, 431] {
            let bare = classify(&answer(status, "bad request"), Some(1));
            assert!(is_retryable(&bare), "{status}");
            assert_eq!(code(&bare), format!("http_{status}"));
            assert_eq!(retry_after_of(&bare), Some(SCHEMA_DRIFT_RETRY_AFTER_SECONDS));
        }
        // a SQLSTATE of a class not listed stays the data's
        assert!(is_fatal(&classify(&postgrest(400, "44000"), Some(1))));
        for status in [500, 502, 503, 504, 520, 408, 429, 301] {
            let verdict = classify(&answer(status, ""), Some(0));
            assert!(is_retryable(&verdict), "{status}");
            assert_eq!(code(&verdict), format!("http_{status}"));
        }
    }

    #[test]
    fn payment_required_without_a_code_is_retryable() {
        for body in
            ["", r#"{"message":"Service for this project is restricted due to exceeding quota"}"#, "<html>402</html>"]
        {
            let verdict = classify(&answer(402, body), Some(0));
            assert!(is_retryable(&verdict), "{body}");
            assert_eq!(code(&verdict), "http_402");
        }
    }

    #[test]
    fn unauthorized_without_a_code_is_retryable() {
        let verdict = classify(&answer(401, r#"{"message":"Invalid API key"}"#), Some(0));
        assert!(is_retryable(&verdict));
        assert_eq!(code(&verdict), "http_401");
    }

    #[test]
    fn non_sqlstate_code_is_replaced_by_the_status_code() {
        let verdict = classify(&answer(414, r#"{"code":414,"message":"URI too long"}"#), Some(0));
        assert!(is_retryable(&verdict), "a proxy's limit: not PostgREST's answer");
        assert_eq!(code(&verdict), "http_414");
    }

    #[test]
    fn non_json_message_quotes_a_short_excerpt() {
        let body = format!("<html>{}</html>\n", "x".repeat(500));
        match classify(&answer(400, &body), Some(0)) {
            Verdict::Retryable { failure: f, .. } => {
                assert!(f.message.starts_with("HTTP 400 from Supabase: <html>xxx"));
                assert!(f.message.chars().count() < 260);
                assert!(!f.message.contains('\n'));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn transport_errors_are_retryable() {
        let refused = Err(TransportError::no_answer("connection refused"));
        let verdict = classify(&refused, Some(4));
        assert!(is_retryable(&verdict));
        assert_eq!(code(&verdict), "network_error");
        let timeout = Err(TransportError::timed_out("timed out"));
        assert_eq!(code(&classify(&timeout, None)), "timeout");
    }

    #[test]
    fn a_redirect_is_never_applied_and_waits_for_the_operator_with_its_target_named() {
        for status in [301, 302, 303, 307, 308] {
            let answer = Ok(HttpResponse {
                status,
                headers: vec![(
                    "Location".to_string(),
                    "https://ref.supabase.co/rest/v1/todos?id=eq.secret".to_string(),
                )],
                body: "<html>Moved</html>".to_string(),
            });
            match classify(&answer, Some(3)) {
                Verdict::Retryable { failure, retry_after_seconds } => {
                    assert_eq!(failure.code, format!("http_{status}"));
                    assert_eq!(failure.index, Some(3));
                    assert!(failure.message.contains("redirect to https://ref.supabase.co,"), "{}", failure.message);
                    assert!(failure.message.contains("SUPABASE_URL"), "{}", failure.message);
                    assert!(!failure.message.contains("secret"), "{}", failure.message);
                    assert!(retry_after_seconds >= Some(SCHEMA_DRIFT_RETRY_AFTER_SECONDS));
                }
                other => panic!("{status}: {other:?}"),
            }
        }
    }

    #[test]
    fn retry_after_header_is_read_and_capped() {
        let response = |value: &str| {
            Ok(HttpResponse {
                status: 429,
                headers: vec![("Retry-After".to_string(), value.to_string())],
                body: String::new(),
            })
        };
        match classify(&response("12"), Some(0)) {
            Verdict::Retryable { retry_after_seconds, .. } => assert_eq!(retry_after_seconds, Some(12)),
            other => panic!("{other:?}"),
        }
        match classify(&response("999999"), Some(0)) {
            Verdict::Retryable { retry_after_seconds, .. } => assert_eq!(retry_after_seconds, Some(3600)),
            other => panic!("{other:?}"),
        }
        match classify(&response("Wed, 21 Oct 2015 07:28:00 GMT"), Some(0)) {
            Verdict::Retryable { retry_after_seconds, .. } => assert_eq!(retry_after_seconds, None),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn op_index_is_read_from_the_atomic_function_hint() {
        assert_eq!(op_index_from_hint("powersync op 3 (PUT todos/a)", &[]), Some(3));
        assert_eq!(op_index_from_hint("Check the id; powersync op 12 (PATCH t/x)", &[]), Some(12));
        assert_eq!(op_index_from_hint("no marker", &[]), None);
        assert_eq!(op_index_from_hint("powersync op ? (x)", &[]), None);
        // an id that holds the marker itself cannot point elsewhere
        let spoof = "x) powersync op 0 (PUT t/y";
        let ops = [("PUT", "t", "y"), ("PUT", "t", "b"), ("PATCH", "t", spoof)];
        let hint = format!("powersync op 2 (PATCH t/{spoof})");
        assert_eq!(op_index_from_hint(&hint, &ops), Some(2));
        assert_eq!(op_index_from_hint(&format!("a trigger's hint; {hint}"), &ops), Some(2));
    }

    #[test]
    fn report_body_has_results_applied_and_subrequests() {
        let report = UploadReport {
            results: vec![
                TransactionResult::success(Some(json!(1))),
                TransactionResult::fatal(Some(json!("b")), FailedOperation::new(Some(0), "23505", "dup")),
                TransactionResult::retryable(None, FailedOperation::new(Some(2), "http_503", "down"), 5),
                TransactionResult::not_attempted(Some(json!(4))),
            ],
            subrequests: 3,
            ..UploadReport::default()
        };
        assert_eq!(
            report.body(),
            json!({
                "results": [
                    {"status": "success", "transaction_id": 1},
                    {"status": "fatal_error", "transaction_id": "b",
                     "failed_operation": {"index": 0, "code": "23505", "message": "dup", "details": null}},
                    {"status": "retryable_error", "transaction_id": null,
                     "failed_operation": {"index": 2, "code": "http_503", "message": "down", "details": null},
                     "retry_after_ms": 5000},
                    {"status": "not_attempted", "transaction_id": 4}
                ],
                "applied": 1,
                "subrequests": 3
            })
        );
        assert!(report.needs_retry());
        assert_eq!(report.counts(), StatusCounts { success: 1, fatal: 1, conflict: 0, retryable: 1, not_attempted: 1 });
    }

    #[test]
    fn report_without_retryable_or_unattempted_needs_no_retry() {
        let report = UploadReport {
            results: vec![
                TransactionResult::success(None),
                TransactionResult::fatal(None, FailedOperation::new(None, "x", "y")),
            ],
            ..UploadReport::default()
        };
        assert!(!report.needs_retry());
        assert!(!UploadReport::default().needs_retry());
    }

    #[test]
    fn the_log_line_counts_conflicts() {
        let report = UploadReport {
            results: vec![TransactionResult::conflict(None, FailedOperation::new(Some(0), "conflict", "m"))],
            ..UploadReport::default()
        };
        assert_eq!(report.counts().conflict, 1);
        assert_eq!(report.log_summary()["conflict"], 1);
    }

    #[test]
    fn a_sqlstate_a_trigger_raised_with_status_404_is_fatal() {
        // `raise sqlstate 'PT404'`: PostgREST answers 404 with the code; only a bare 404 (a table
        // missing from PostgREST 12's cache, a wrong SUPABASE_URL) is the operator's
        let verdict = classify(&with_message(404, "PT404", "no such booking"), Some(0));
        assert!(is_fatal(&verdict), "{verdict:?}");
        assert_eq!(code(&verdict), "PT404");
        assert!(is_retryable(&classify(&answer(404, "{}"), Some(0))));
        // a host that is not PostgREST answering 404 with a code of its own (a wrong SUPABASE_URL)
        for other in [r#"{"code":10404,"message":"not here"}"#, r#"{"code":"NOTFD","message":"not here"}"#] {
            assert!(is_retryable(&classify(&answer(404, other), Some(0))), "{other}");
        }
    }

    #[test]
    fn a_retryable_override_keeps_the_upstreams_retry_after() {
        let mut overrides = ClassOverrides::default();
        overrides.insert("23505", ErrorClass::Retryable);
        let dup = |retry_after: Option<&str>| {
            let headers = retry_after.map(|v| vec![("Retry-After".to_string(), v.to_string())]).unwrap_or_default();
            let body = json!({"code": "23505", "message": "dup", "details": null, "hint": null}).to_string();
            super::classify(
                &Ok(HttpResponse { status: 409, headers, body }),
                Some(0),
                &overrides,
                as_user("authenticated", "user-1"),
            )
        };
        for (retry_after, expected) in [(None, None), (Some("7"), Some(7))] {
            let verdict = dup(retry_after);
            assert!(
                matches!(verdict, Verdict::Retryable { retry_after_seconds, .. } if retry_after_seconds == expected),
                "the upstream's {retry_after:?}, not schema drift's 60 s: {verdict:?}"
            );
        }
    }

    #[test]
    fn an_error_with_an_empty_body_says_its_status() {
        let Verdict::Retryable { failure, .. } = classify(&answer(502, "  "), Some(0)) else { panic!() };
        assert_eq!(failure.message, "HTTP 502 from Supabase");
    }

    #[test]
    fn an_atomic_answer_naming_an_op_past_the_entries_is_not_the_functions() {
        assert_eq!(atomic_answer(r#"{"applied":0,"conflict":{"index":1,"row":{}}}"#, 1), None);
        assert_eq!(atomic_answer(r#"{"applied":1,"unchanged":[0,1]}"#, 1).map(|a| a.unchanged), Some(vec![0]));
    }

    #[test]
    fn a_22023_not_about_the_sessions_role_stays_fatal() {
        for message in [r#"role "admin" may not be granted here"#, r#"option "x" does not exist"#] {
            assert!(is_fatal(&classify(&with_message(400, "22023", message), Some(0))), "{message}");
        }
    }

    #[test]
    fn grants_for_a_large_object_and_for_a_name_starting_with_a_digit() {
        assert_eq!(
            missing_grant("permission denied for large object 16401", "authenticated").as_deref(),
            Some("grant select, update on large object 16401 to authenticated")
        );
        assert_eq!(
            missing_grant("permission denied for sequence 1seq", "authenticated").as_deref(),
            Some("grant usage on sequence public.\"1seq\" to authenticated")
        );
    }

    #[test]
    fn retryable_postgrest_codes_keep_their_code_for_overrides() {
        for (status, postgrest_code) in [(401, "PGRST301"), (503, "PGRST002"), (500, "PGRSTX00")] {
            assert_eq!(code(&classify(&with_message(status, postgrest_code, "JWT expired"), Some(0))), postgrest_code);
        }
        let mut overrides = ClassOverrides::default();
        overrides.insert("PGRST002", ErrorClass::DangerouslyFatal);
        let verdict = super::classify(
            &with_message(503, "PGRST002", "m"),
            Some(0),
            &overrides,
            as_user("authenticated", "user-1"),
        );
        assert!(is_fatal(&verdict));
        overrides.insert("PGRST002", ErrorClass::Fatal);
        let verdict = super::classify(
            &with_message(503, "PGRST002", "m"),
            Some(0),
            &overrides,
            as_user("authenticated", "user-1"),
        );
        assert!(is_retryable(&verdict), "fatal never makes an outage the data's");
    }
}
