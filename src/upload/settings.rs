//! Upload bridge settings, read from environment-like values.
//!
//! [`from_lookup`] reads every variable through a lookup function (the adapter passes the Worker's
//! `Env`; tests pass a map) and reports every missing or invalid value at once, so a deployment
//! can be fixed in one go. Every value is trimmed of surrounding whitespace (pasted secrets often
//! carry a newline), and a value that is empty after trimming counts as unset — except
//! `UPLOAD_TABLES`, where an empty list is refused rather than read as "every table".
//!
//! | Variable | Default | Meaning |
//! |---|---|---|
//! | `SUPABASE_URL` | required | project URL, `http(s)://…`, trailing `/` trimmed |
//! | `SUPABASE_ANON_KEY` | required | anon or publishable key, sent as `apikey` in `rls` mode |
//! | `UPLOAD_MODE` | `rls` | `rls`: write as the user (RLS decides); `service`: write with the service key |
//! | `SUPABASE_SERVICE_ROLE_KEY` | — | required in `service` mode |
//! | `UPLOAD_OWNER_COLUMN` | — | required in `service` mode only (refused in `rls` mode) |
//! | `UPLOAD_TABLES` | all tables | comma-separated allowlist; required in `service` mode |
//! | `UPLOAD_JSON_COLUMNS` | none | `table.column,…` whose JSON text is sent as JSON |
//! | `UPLOAD_BOOLEAN_COLUMNS` | none | `table.column,…` whose 0/1 is sent as false/true |
//! | `UPLOAD_SUBREQUEST_BUDGET` | 45 | most upstream requests per upload, 1..=10000 |
//! | `UPLOAD_ATOMIC` | unset (auto) | unset: one RPC call per transaction (all-or-nothing, exactly once) whenever the function is installed, else REST; `true`: always (missing function = retryable); `false`: always REST |
//! | `UPLOAD_ATOMIC_FUNCTION` | `powersync_apply_transaction` | the RPC function of atomic mode |
//! | `UPLOAD_ATOMIC_RECHECK_SECONDS` | 300 | `UPLOAD_ATOMIC` unset: how long an isolate that found the function missing uses REST before trying it again, 1..=86400 |
//! | `UPLOAD_DEAD_LETTER_TABLE` | none | `powersync_dead_letters`: record every rejected transaction there (through `powersync_record_dead_letter`, `sql/dead_letter.sql`) |
//! | `UPLOAD_MAX_BODY_BYTES` | 5242880 | largest upload body |
//! | `UPLOAD_MAX_ENTRIES` | 10000 | most CRUD entries per upload |
//! | `UPLOAD_MAX_TRANSACTIONS` | 1000 | most transactions per upload |
//! | `UPLOAD_RETRY_AFTER_SECONDS` | 5 | `Retry-After` suggested when the client must retry |
//! | `UPLOAD_TIME_BUDGET_MS` | 30000 | no transaction is started once an upload has run this long (the rest `not_attempted`), 1000..=300000 |
//! | `UPLOAD_ALLOW_ANONYMOUS` | `false` | service mode only: accept uploads from anonymous sign-ins (`is_anonymous: true`) |
//! | `UPLOAD_ERROR_CLASS_OVERRIDES` | none | `code:fatal` / `code:retryable` / `code:dangerously_fatal` list overriding how an answer's code is classified (`fatal` only for the data's codes) |

use std::collections::BTreeSet;
use std::fmt;

use super::crud::Limits;
use super::outcome::{ClassOverrides, ErrorClass};
use crate::api_keys;
use crate::environment::{Problem, Reader};

/// The only value of `UPLOAD_DEAD_LETTER_TABLE`: the table `sql/dead_letter.sql` creates and
/// `powersync_record_dead_letter` writes.
pub const DEAD_LETTER_TABLE: &str = "powersync_dead_letters";

/// Default for [`UploadSettings::subrequest_budget`]: the Workers Free plan allows 50
/// subrequests per request and session verification may use a few.
pub const DEFAULT_SUBREQUEST_BUDGET: usize = 45;
/// Largest accepted `UPLOAD_SUBREQUEST_BUDGET` (the Workers Paid plan limit).
pub const MAX_SUBREQUEST_BUDGET: usize = 10_000;
/// The most requests a compared write (`UPLOAD_CONFLICT_DETECTION`) takes over REST: the write
/// and, when it changes no row, three reads (`delivery::probe_conflict`: the row, whether it
/// holds the new values, whether it still holds the previous ones); a DELETE has no new values.
pub const COMPARED_WRITE_REQUESTS: usize = 4;
/// Default for [`UploadSettings::atomic_function`].
pub const DEFAULT_ATOMIC_FUNCTION: &str = "powersync_apply_transaction";
/// Default for [`UploadSettings::atomic_recheck_seconds`]: five minutes.
pub const DEFAULT_ATOMIC_RECHECK_SECONDS: u64 = 300;
/// Default for [`UploadSettings::retry_after_seconds`].
pub const DEFAULT_RETRY_AFTER_SECONDS: u64 = 5;
/// Default for [`UploadSettings::time_budget_ms`]: half the connectors' 60 s request timeout, so
/// that a transaction started just before it (its requests each bounded by
/// `UPSTREAM_TIMEOUT_MS`, 15 s by default) mostly still ends in an answer the client reads.
pub const DEFAULT_TIME_BUDGET_MS: u64 = 30_000;
/// The largest `UPLOAD_MAX_BODY_BYTES` accepted: 16 MiB. An upload's peak memory is about three
/// times its body in the worst shapes (the body, each row's text, the request body; natively,
/// tests/upload_memory.rs), and the runtime holds the request's and the upstream request's
/// bodies too: at 16 MiB that is within the isolate's 128 MB, at 24 MiB no longer (about 120).
pub const MAX_BODY_BYTES_LIMIT: u64 = 16 * 1024 * 1024;
/// The tables of the bridge's SQL files (sql/atomic_upload.sql, sql/dead_letter.sql), never
/// written through an upload.
pub const BRIDGE_TABLES: [&str; 3] =
    ["powersync_upload_ledger", "powersync_upload_ledger_settings", "powersync_dead_letters"];
/// Longest Postgres identifier (NAMEDATALEN - 1); longer names are silently truncated by Postgres.
pub const MAX_IDENTIFIER_BYTES: usize = 63;

/// Everything the upload bridge needs to know about the deployment.
#[derive(Clone, PartialEq, Eq)]
pub struct UploadSettings {
    /// `SUPABASE_URL` without trailing slash, e.g. `https://abc.supabase.co`.
    pub supabase_url: String,
    /// `SUPABASE_ANON_KEY`: the anon or publishable key (the `apikey` header in `rls` mode).
    pub anon_key: String,
    /// Whose rights the writes use.
    pub mode: WriteMode,
    /// `UPLOAD_TABLES`: tables clients may write. `None` allows every table (only in `rls` mode,
    /// where RLS still decides; production deployments should set it anyway).
    pub tables: Option<BTreeSet<String>>,
    /// `UPLOAD_JSON_COLUMNS`: columns whose string values are JSON text to send as JSON.
    pub json_columns: ColumnSet,
    /// `UPLOAD_BOOLEAN_COLUMNS`: columns whose numbers 0/1 are sent as false/true.
    pub boolean_columns: ColumnSet,
    /// `UPLOAD_SUBREQUEST_BUDGET`: most upstream requests one upload may make (default 45).
    pub subrequest_budget: usize,
    /// `UPLOAD_ATOMIC`: when transactions go through the atomic function (default: auto).
    pub atomic: AtomicMode,
    /// `UPLOAD_ATOMIC_FUNCTION`: the RPC function used in atomic mode.
    pub atomic_function: String,
    /// `UPLOAD_ATOMIC_RECHECK_SECONDS` (default 300): with [`AtomicMode::Auto`], how long an
    /// isolate that found the function missing sends REST requests before trying it again.
    pub atomic_recheck_seconds: u64,
    /// `UPLOAD_DEAD_LETTER_TABLE`: set (to [`DEAD_LETTER_TABLE`]) when rejected transactions are
    /// recorded (default none); the table uploads may never write.
    pub dead_letter_table: Option<String>,
    /// `UPLOAD_DEAD_LETTER_UNCHANGED` (default false; needs `UPLOAD_DEAD_LETTER_TABLE`): also
    /// record, as a dead letter with code `unchanged`, every applied transaction whose PATCH or
    /// DELETE entries changed no row (they are reported in the result's `unchanged` either way).
    pub dead_letter_unchanged: bool,
    /// `UPLOAD_CONFLICT_DETECTION` (default false): a PATCH or DELETE that carries the row's
    /// previous values applies only where the row still holds them, for the columns it changes;
    /// otherwise its transaction is reported `conflict` (docs/conflicts.md, `plan`, `delivery`).
    pub conflict_detection: bool,
    /// `UPLOAD_MAX_BODY_BYTES`, `UPLOAD_MAX_ENTRIES`, `UPLOAD_MAX_TRANSACTIONS`.
    pub limits: Limits,
    /// `UPLOAD_RETRY_AFTER_SECONDS`: the delay suggested to a client that must retry (default 5).
    pub retry_after_seconds: u64,
    /// `UPLOAD_TIME_BUDGET_MS` (default 30,000): once an upload has run this long, no further
    /// transaction (nor a timed-out atomic call's REST fallback) is started; they are
    /// `not_attempted` and the client sends them again. A transaction started runs to its end. A
    /// slow upstream then mostly still gets the client an answer before its own timeout, and a
    /// client that gave up is not followed long by writes it no longer waits for (see `delivery`).
    pub time_budget_ms: u64,
    /// `UPLOAD_ERROR_CLASS_OVERRIDES`: codes the operator classifies otherwise (default none).
    pub error_class_overrides: ClassOverrides,
    /// `UPLOAD_ALLOW_ANONYMOUS` (service mode only; default false): whether sessions of anonymous
    /// sign-ins may upload. In service mode the worker is the only guard (RLS is bypassed), and
    /// anyone can create an anonymous session with the public anon key.
    pub allow_anonymous: bool,
}

impl UploadSettings {
    /// Settings with every optional value at its default: `rls` mode, all tables, no conversions.
    pub fn new(supabase_url: &str, anon_key: &str) -> Self {
        UploadSettings {
            supabase_url: supabase_url.trim_end_matches('/').to_string(),
            anon_key: anon_key.to_string(),
            mode: WriteMode::Rls,
            tables: None,
            json_columns: ColumnSet::default(),
            boolean_columns: ColumnSet::default(),
            subrequest_budget: DEFAULT_SUBREQUEST_BUDGET,
            atomic: AtomicMode::Auto,
            atomic_function: DEFAULT_ATOMIC_FUNCTION.to_string(),
            atomic_recheck_seconds: DEFAULT_ATOMIC_RECHECK_SECONDS,
            dead_letter_table: None,
            dead_letter_unchanged: false,
            conflict_detection: false,
            limits: Limits::default(),
            retry_after_seconds: DEFAULT_RETRY_AFTER_SECONDS,
            time_budget_ms: DEFAULT_TIME_BUDGET_MS,
            error_class_overrides: ClassOverrides::default(),
            allow_anonymous: false,
        }
    }

    /// Whether a verified session may upload: in service mode, an anonymous sign-in
    /// (Supabase's `is_anonymous: true`, or a Firebase ID token's
    /// `firebase.sign_in_provider: "anonymous"`) only with `UPLOAD_ALLOW_ANONYMOUS`; in rls mode
    /// always (the RLS policies decide, and can read `auth.jwt() ->> 'is_anonymous'`).
    pub fn admits(&self, claims: &serde_json::Map<String, serde_json::Value>) -> bool {
        !is_anonymous(claims) || self.allow_anonymous || self.mode == WriteMode::Rls
    }
}

/// Whether a session is an anonymous sign-in: Supabase's `is_anonymous: true`, or a Firebase
/// ID token's `firebase.sign_in_provider: "anonymous"`.
pub fn is_anonymous(claims: &serde_json::Map<String, serde_json::Value>) -> bool {
    let firebase_anonymous =
        claims.get("firebase").and_then(|f| f.get("sign_in_provider")).is_some_and(|p| p.as_str() == Some("anonymous"));
    claims.get("is_anonymous").and_then(serde_json::Value::as_bool).unwrap_or(false) || firebase_anonymous
}

impl fmt::Debug for UploadSettings {
    /// Keys are redacted so settings can be logged.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UploadSettings")
            .field("supabase_url", &self.supabase_url)
            .field("anon_key", &"<redacted>")
            .field("mode", &self.mode)
            .field("tables", &self.tables)
            .field("json_columns", &self.json_columns)
            .field("boolean_columns", &self.boolean_columns)
            .field("subrequest_budget", &self.subrequest_budget)
            .field("atomic", &self.atomic)
            .field("atomic_function", &self.atomic_function)
            .field("atomic_recheck_seconds", &self.atomic_recheck_seconds)
            .field("dead_letter_table", &self.dead_letter_table)
            .field("dead_letter_unchanged", &self.dead_letter_unchanged)
            .field("conflict_detection", &self.conflict_detection)
            .field("limits", &self.limits)
            .field("retry_after_seconds", &self.retry_after_seconds)
            .field("time_budget_ms", &self.time_budget_ms)
            .field("error_class_overrides", &self.error_class_overrides)
            .field("allow_anonymous", &self.allow_anonymous)
            .finish()
    }
}

/// `UPLOAD_ATOMIC`: when a transaction is applied by one call of the atomic function
/// (`sql/atomic_upload.sql`: all or nothing, exactly once with a client id) instead of REST
/// requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtomicMode {
    /// Unset (default): whenever the function is installed. Each isolate tries it and, when it is
    /// missing (PGRST202 or 404), applies that upload through REST and keeps to REST for
    /// `UPLOAD_ATOMIC_RECHECK_SECONDS` before trying again (see `atomic_function`).
    Auto,
    /// `true`: always; a missing function is a retryable configuration error.
    Always,
    /// `false`: always REST requests (a transaction too big for the budget still tries the
    /// function, as in every mode).
    Never,
}

/// `UPLOAD_MODE`: whose database rights the writes use.
#[derive(Clone, PartialEq, Eq)]
pub enum WriteMode {
    /// `rls` (default): `apikey: <anon key>` and `Authorization: Bearer <user's access token>`;
    /// the database's row-level security decides what the user may write.
    Rls,
    /// `service`: the service key in both headers (RLS bypassed). The bridge then forces
    /// `owner_column` to the caller's user id on every written row and limits PATCH and DELETE to
    /// the caller's rows (see `plan`).
    Service {
        /// `SUPABASE_SERVICE_ROLE_KEY`: legacy `service_role` JWT or `sb_secret_…` key.
        service_key: String,
        /// `UPLOAD_OWNER_COLUMN`: the column holding the owning user's id.
        owner_column: String,
    },
}

impl WriteMode {
    /// The `UPLOAD_MODE` value: `rls` or `service` (for logs and metrics).
    pub fn name(&self) -> &'static str {
        match self {
            WriteMode::Rls => "rls",
            WriteMode::Service { .. } => "service",
        }
    }

    /// The database role the writes run as: `authenticated` (a user's session, RLS mode) or
    /// `service_role` (the service key). Named in the GRANT a missing privilege calls for.
    pub fn api_role(&self) -> &'static str {
        match self {
            WriteMode::Rls => "authenticated",
            WriteMode::Service { .. } => "service_role",
        }
    }
}

impl fmt::Debug for WriteMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WriteMode::Rls => f.write_str("Rls"),
            WriteMode::Service { owner_column, .. } => f
                .debug_struct("Service")
                .field("service_key", &"<redacted>")
                .field("owner_column", owner_column)
                .finish(),
        }
    }
}

/// A set of `table.column` pairs that get a value conversion.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ColumnSet(BTreeSet<(String, String)>);

impl ColumnSet {
    /// Whether `table.column` is in the set.
    pub fn contains(&self, table: &str, column: &str) -> bool {
        self.0.contains(&(table.to_string(), column.to_string()))
    }

    /// Whether any column of `table` is in the set (lets the planner skip tables quickly).
    pub fn has_table(&self, table: &str) -> bool {
        self.0.iter().any(|(t, _)| t == table)
    }

    /// Adds `table.column`.
    pub fn insert(&mut self, table: &str, column: &str) {
        self.0.insert((table.to_string(), column.to_string()));
    }

    /// Each `(table, column)`, in order.
    pub fn iter(&self) -> impl Iterator<Item = &(String, String)> {
        self.0.iter()
    }
}

/// Query-string keys that are not column filters: PostgREST's own (`select`, `columns`,
/// `on_conflict`, `order`, `limit`, `offset`, `and`, `or`) and `apikey`, which Supabase's gateway
/// reads as the API key. A filter on a column with one of these names is not one: PostgREST reads
/// `limit=eq.5` as a limit it cannot parse and drops it, and `and=eq.5` as a malformed logic tree.
pub const RESERVED_QUERY_KEYS: [&str; 9] =
    ["select", "columns", "on_conflict", "order", "limit", "offset", "and", "or", "apikey"];

/// Whether `column` can be a filter in a PostgREST URL (`&<column>=eq.…`): a plain identifier
/// ([`is_identifier`]) that is not one of the [`RESERVED_QUERY_KEYS`].
pub fn is_filter_column(column: &str) -> bool {
    is_identifier(column) && !RESERVED_QUERY_KEYS.contains(&column)
}

/// Whether `name` is a plain SQL identifier (`^[A-Za-z_][A-Za-z0-9_]*$`, at most 63 bytes), the
/// only table and column names the bridge puts into URLs and filters.
pub fn is_identifier(name: &str) -> bool {
    let mut bytes = name.bytes();
    match bytes.next() {
        Some(first) if first.is_ascii_alphabetic() || first == b'_' => {}
        _ => return false,
    }
    name.len() <= MAX_IDENTIFIER_BYTES && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Reads the settings through a lookup (tests; the worker reads all parts at once through
/// [`crate::config::Config::from_lookup`]); on failure returns every problem found.
pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<UploadSettings, Vec<Problem>> {
    let mut reader = Reader::new(lookup);
    let supabase_url = reader.supabase_url();
    reader.part(|r| read(r, supabase_url)).map_err(|_| reader.problems)
}

/// Reads the upload settings given the already-checked `SUPABASE_URL`; `None` when any is
/// missing or invalid (each problem recorded in `reader`).
pub fn read(reader: &mut Reader, supabase_url: Option<String>) -> Option<UploadSettings> {
    let problems_before = reader.problems.len();
    let anon_key = key(reader, "SUPABASE_ANON_KEY", true);
    let mode = mode(reader);
    let tables = tables(reader);
    let json_columns = columns(reader, "UPLOAD_JSON_COLUMNS", tables.as_ref());
    let boolean_columns = columns(reader, "UPLOAD_BOOLEAN_COLUMNS", tables.as_ref());
    let subrequest_budget =
        reader.number("UPLOAD_SUBREQUEST_BUDGET", DEFAULT_SUBREQUEST_BUDGET as u64, 1..=MAX_SUBREQUEST_BUDGET as u64);
    let atomic = match reader.get("UPLOAD_ATOMIC") {
        None => AtomicMode::Auto,
        Some(_) if reader.flag("UPLOAD_ATOMIC", false) => AtomicMode::Always,
        Some(_) => AtomicMode::Never,
    };
    let atomic_recheck_seconds =
        reader.number("UPLOAD_ATOMIC_RECHECK_SECONDS", DEFAULT_ATOMIC_RECHECK_SECONDS, 1..=86_400);
    let atomic_function =
        identifier(reader, "UPLOAD_ATOMIC_FUNCTION").unwrap_or_else(|| DEFAULT_ATOMIC_FUNCTION.to_string());
    let dead_letter_table = identifier(reader, "UPLOAD_DEAD_LETTER_TABLE");
    if dead_letter_table.as_deref().is_some_and(|table| table != DEAD_LETTER_TABLE) {
        reader.problem(
            "UPLOAD_DEAD_LETTER_TABLE",
            format!(
                "must be {DEAD_LETTER_TABLE} (or unset): dead letters are recorded by the function \
                 powersync_record_dead_letter into that table (sql/dead_letter.sql)"
            ),
        );
    }
    let dead_letter_unchanged = reader.flag("UPLOAD_DEAD_LETTER_UNCHANGED", false);
    if dead_letter_unchanged && dead_letter_table.is_none() {
        reader.problem(
            "UPLOAD_DEAD_LETTER_UNCHANGED",
            format!("records dead letters: set UPLOAD_DEAD_LETTER_TABLE={DEAD_LETTER_TABLE} too (sql/dead_letter.sql)"),
        );
    }
    let conflict_detection = reader.flag("UPLOAD_CONFLICT_DETECTION", false);
    let defaults = Limits::default();
    let limits = Limits {
        max_body_bytes: reader.number("UPLOAD_MAX_BODY_BYTES", defaults.max_body_bytes as u64, 1..=MAX_BODY_BYTES_LIMIT)
            as usize,
        max_entries: reader.number("UPLOAD_MAX_ENTRIES", defaults.max_entries as u64, 1..=1_000_000) as usize,
        max_transactions: reader.number("UPLOAD_MAX_TRANSACTIONS", defaults.max_transactions as u64, 1..=100_000)
            as usize,
    };
    let retry_after_seconds = reader.number("UPLOAD_RETRY_AFTER_SECONDS", DEFAULT_RETRY_AFTER_SECONDS, 1..=3600);
    let time_budget_ms = reader.number("UPLOAD_TIME_BUDGET_MS", DEFAULT_TIME_BUDGET_MS, 1_000..=300_000);
    let error_class_overrides = class_overrides(reader);
    let allow_anonymous = reader.flag("UPLOAD_ALLOW_ANONYMOUS", false);

    // Rules that relate several variables (judged on what was asked for, so a service-mode
    // deployment missing its key still hears about every other problem).
    let service = reader.get("UPLOAD_MODE").is_some_and(|m| m.eq_ignore_ascii_case("service"));
    // Only when it asks for something: its default written out (`false`) changes nothing.
    if !service && allow_anonymous {
        reader.problem(
            "UPLOAD_ALLOW_ANONYMOUS",
            "only used with UPLOAD_MODE=service; in rls mode your RLS policies decide (they can read \
             auth.jwt() ->> 'is_anonymous')",
        );
    }
    if service && tables.is_none() {
        reader.problem(
            "UPLOAD_TABLES",
            "required with UPLOAD_MODE=service: the service key bypasses RLS, so the allowlist is \
             the only limit on which tables clients can write",
        );
    }
    for (table, column) in json_columns.iter() {
        if boolean_columns.contains(table, column) {
            reader.problem(
                "UPLOAD_BOOLEAN_COLUMNS",
                format!("{table}.{column} is also in UPLOAD_JSON_COLUMNS; a column gets one conversion"),
            );
        }
    }
    // The worker writes the owner column itself, with the caller's id: a conversion of it has
    // nothing to convert, and UPLOAD_JSON_COLUMNS would refuse a row that carries its owner (a
    // user id is no JSON text) before the worker replaced the value.
    if let Some(owner) = reader.get("UPLOAD_OWNER_COLUMN").filter(|_| service) {
        for (name, set) in [("UPLOAD_JSON_COLUMNS", &json_columns), ("UPLOAD_BOOLEAN_COLUMNS", &boolean_columns)] {
            for (table, _) in set.iter().filter(|(_, column)| *column == owner) {
                reader.problem(
                    name,
                    format!("{table}.{owner} is UPLOAD_OWNER_COLUMN, which the worker sets to the caller's id itself"),
                );
            }
        }
    }
    if let (Some(dead), Some(allowed)) = (&dead_letter_table, &tables) {
        if allowed.contains(dead) {
            reader.problem(
                "UPLOAD_DEAD_LETTER_TABLE",
                format!("{dead} is also in UPLOAD_TABLES; clients must not write dead letters themselves"),
            );
        }
    }
    for bridges in tables.iter().flatten().filter(|table| BRIDGE_TABLES.contains(&table.as_str())) {
        // Unless UPLOAD_DEAD_LETTER_TABLE names it too, which is said above.
        if dead_letter_table.as_ref() != Some(bridges) {
            reader.problem(
                "UPLOAD_TABLES",
                format!("{bridges} is one of the bridge's own tables, which uploads never write; remove it"),
            );
        }
    }
    // The most one transaction of one entry may need over REST: its write, and before it the
    // ownership check of a service-mode PUT or after it the three reads that tell a compared
    // PATCH's conflict from a gone, an already written or a refused row; and the record of a rejection kept in reserve: the dead
    // letter's insert, or without one its record in the atomic function's ledger.
    let always = atomic == AtomicMode::Always;
    let ownership_check = service && !always;
    let conflict_reads = conflict_detection && !always;
    let records_rejection = dead_letter_table.is_some() || atomic != AtomicMode::Never;
    let needed = if conflict_reads { COMPARED_WRITE_REQUESTS } else { 1 + usize::from(ownership_check) }
        + usize::from(records_rejection);
    if (subrequest_budget as usize) < needed {
        reader.problem(
            "UPLOAD_SUBREQUEST_BUDGET",
            format!(
                "must be at least {needed} with these settings (one write{}{})",
                if conflict_reads {
                    ", three reads after a compared write that changed no row"
                } else if ownership_check {
                    ", one ownership check"
                } else {
                    ""
                },
                match (&dead_letter_table, atomic) {
                    (Some(_), _) => ", one dead-letter insert",
                    (None, AtomicMode::Never) => "",
                    (None, _) => ", one to record a rejection in the atomic function's ledger",
                }
            ),
        );
    }

    match (reader.problems.len() == problems_before, supabase_url, anon_key, mode) {
        (true, Some(supabase_url), Some(anon_key), Some(mode)) => Some(UploadSettings {
            supabase_url,
            anon_key,
            mode,
            tables,
            json_columns,
            boolean_columns,
            subrequest_budget: subrequest_budget as usize,
            atomic,
            atomic_function,
            atomic_recheck_seconds,
            dead_letter_table,
            dead_letter_unchanged,
            conflict_detection,
            limits,
            retry_after_seconds,
            time_budget_ms,
            error_class_overrides,
            allow_anonymous,
        }),
        _ => None,
    }
}

/// A key sent in a header: no spaces or control characters, so it cannot break the header.
fn key(r: &mut Reader, name: &str, required: bool) -> Option<String> {
    match r.get(name) {
        None => {
            if required {
                r.problem(name, "required");
            }
            None
        }
        Some(value) if value.chars().any(|c| c.is_whitespace() || c.is_control()) => {
            r.problem(name, "must not contain spaces or line breaks");
            None
        }
        Some(value) => Some(value),
    }
}

fn identifier(r: &mut Reader, name: &str) -> Option<String> {
    let value = r.get(name)?;
    if is_identifier(&value) {
        Some(value)
    } else {
        r.problem(name, format!("{value:?} is not a plain identifier (letters, digits, _; not starting with a digit)"));
        None
    }
}

fn mode(r: &mut Reader) -> Option<WriteMode> {
    const NAME: &str = "UPLOAD_MODE";
    let mode = r.get(NAME).unwrap_or_else(|| "rls".to_string()).to_ascii_lowercase();
    match mode.as_str() {
        "rls" => {
            if r.get("UPLOAD_OWNER_COLUMN").is_some() {
                r.problem(
                    "UPLOAD_OWNER_COLUMN",
                    "only used with UPLOAD_MODE=service; in rls mode ownership is enforced by RLS policies",
                );
            }
            Some(WriteMode::Rls)
        }
        "service" => {
            let service_key = key(r, "SUPABASE_SERVICE_ROLE_KEY", true).filter(|service_key| {
                let anon_key = r.get("SUPABASE_ANON_KEY");
                let public = api_keys::public_key_as_service_key(service_key, anon_key.as_deref(), "UPLOAD_MODE");
                let usable = public.is_none();
                if let Some(why) = public {
                    r.problem("SUPABASE_SERVICE_ROLE_KEY", why);
                }
                usable
            });
            let owner_column = match r.get("UPLOAD_OWNER_COLUMN") {
                None => {
                    r.problem("UPLOAD_OWNER_COLUMN", "required with UPLOAD_MODE=service");
                    None
                }
                Some(column) if column == "id" => {
                    r.problem("UPLOAD_OWNER_COLUMN", "must not be the id column");
                    None
                }
                Some(_) => identifier(r, "UPLOAD_OWNER_COLUMN").filter(|column| {
                    let filter = is_filter_column(column);
                    if !filter {
                        r.problem(
                            "UPLOAD_OWNER_COLUMN",
                            format!("{column:?} cannot be a PostgREST filter (a name its query string reserves)"),
                        );
                    }
                    filter
                }),
            };
            Some(WriteMode::Service { service_key: service_key?, owner_column: owner_column? })
        }
        _ => {
            // the value unquoted: a fixed choice, so the value says nothing the name does not
            // (and a secret pasted here without a secret's shape would be listed by /health)
            r.problem(NAME, "must be rls or service");
            None
        }
    }
}

fn tables(r: &mut Reader) -> Option<BTreeSet<String>> {
    const NAME: &str = "UPLOAD_TABLES";
    let value = r.get_untrimmed(NAME)?;
    let mut tables = BTreeSet::new();
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if is_identifier(item) {
            tables.insert(item.to_string());
        } else {
            r.problem(NAME, format!("{item:?} is not a plain table name"));
        }
    }
    if tables.is_empty() && value.split(',').all(|s| s.trim().is_empty()) {
        r.problem(NAME, "is empty; list at least one table, or remove it to allow every table (rls mode only)");
    }
    Some(tables)
}

/// `UPLOAD_ERROR_CLASS_OVERRIDES`: `code:class` items, comma-separated; class `fatal`,
/// `retryable` or `dangerously_fatal` (any case); a code as [`ClassOverrides::is_valid_key`]
/// allows, and `fatal` only for a code whose rule is the data's
/// ([`ClassOverrides::fatal_is_the_datas`]).
fn class_overrides(r: &mut Reader) -> ClassOverrides {
    const NAME: &str = "UPLOAD_ERROR_CLASS_OVERRIDES";
    let mut overrides = ClassOverrides::default();
    // A bad item is named by its place, never quoted: a secret pasted here without a secret's
    // shape would be listed by /health.
    for (place, item) in r.list(NAME).into_iter().enumerate().map(|(i, item)| (i + 1, item)) {
        let Some((code, class)) = item.split_once(':') else {
            r.problem(NAME, format!("item {place} is not of the form code:fatal or code:retryable"));
            continue;
        };
        let code = code.trim();
        let class = match class.trim().to_ascii_lowercase().as_str() {
            "fatal" => ErrorClass::Fatal,
            "retryable" => ErrorClass::Retryable,
            "dangerously_fatal" => ErrorClass::DangerouslyFatal,
            _ => {
                r.problem(NAME, format!("item {place}'s class must be fatal, retryable or dangerously_fatal"));
                continue;
            }
        };
        if !ClassOverrides::is_valid_key(code) {
            r.problem(
                NAME,
                format!(
                    "item {place}'s code is not one: give a SQLSTATE (23514) or its class (P0), a PostgREST \
                     code (PGRST204) or http_<status> (http_404)"
                ),
            );
            continue;
        }
        // A valid key is a code's few letters and digits: quoting it shows no secret.
        if class == ErrorClass::Fatal && !ClassOverrides::fatal_is_the_datas(code) {
            r.problem(
                NAME,
                format!(
                    "{code}:fatal would discard writes that wait today because a person can fix their cause \
                     (schema drift, a missing GRANT, an outage, a gateway); write {code}:dangerously_fatal to \
                     discard them anyway"
                ),
            );
            continue;
        }
        if overrides.insert(code, class).is_some_and(|previous| previous != class) {
            r.problem(NAME, format!("{code} is given two classes"));
        }
    }
    overrides
}

fn columns(r: &mut Reader, name: &str, tables: Option<&BTreeSet<String>>) -> ColumnSet {
    let mut set = ColumnSet::default();
    let Some(value) = r.get(name) else { return set };
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match item.split_once('.') {
            Some((table, column)) if is_identifier(table) && is_identifier(column) => {
                if tables.is_some_and(|allowed| !allowed.contains(table)) {
                    r.problem(name, format!("{item}: table {table} is not in UPLOAD_TABLES"));
                }
                set.insert(table, column);
            }
            _ => r.problem(name, format!("{item:?} is not of the form table.column")),
        }
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn read_vars(vars: &[(&str, &str)]) -> Result<UploadSettings, Vec<Problem>> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        from_lookup(&|name| map.get(name).cloned())
    }

    fn problem_names(vars: &[(&str, &str)]) -> Vec<String> {
        match read_vars(vars) {
            Ok(s) => panic!("expected problems, got {s:?}"),
            Err(problems) => problems.into_iter().map(|p| p.name).collect(),
        }
    }

    const BASE: [(&str, &str); 2] = [("SUPABASE_URL", "https://abc.supabase.co/"), ("SUPABASE_ANON_KEY", "anon")];

    fn with(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
        let mut vars = BASE.to_vec();
        vars.extend_from_slice(extra);
        vars
    }

    #[test]
    fn minimal_settings_take_documented_defaults() {
        let s = read_vars(&BASE).expect("valid");
        assert_eq!(s, UploadSettings::new("https://abc.supabase.co", "anon"));
        assert_eq!(s.supabase_url, "https://abc.supabase.co");
        assert_eq!(s.mode, WriteMode::Rls);
        assert_eq!(s.tables, None);
        assert_eq!(s.subrequest_budget, 45);
        assert_eq!(s.atomic, AtomicMode::Auto);
        assert_eq!(s.atomic_function, "powersync_apply_transaction");
        assert_eq!(s.atomic_recheck_seconds, 300);
        assert_eq!(s.dead_letter_table, None);
        assert_eq!(s.limits, Limits { max_body_bytes: 5 * 1024 * 1024, max_entries: 10_000, max_transactions: 1_000 });
        assert_eq!(s.retry_after_seconds, 5);
        assert_eq!(s.time_budget_ms, 30_000);
    }

    #[test]
    fn every_missing_required_value_is_reported_at_once() {
        assert_eq!(problem_names(&[]), vec!["SUPABASE_URL", "SUPABASE_ANON_KEY"]);
    }

    #[test]
    fn body_limits_beyond_what_an_isolate_holds_are_refused() {
        let limit = |value: &'static str| {
            read_vars(&with(&[("UPLOAD_MAX_BODY_BYTES", value)])).map(|s| s.limits.max_body_bytes)
        };
        assert_eq!(limit("16777216").ok(), Some(16 * 1024 * 1024));
        assert!(limit("16777217").is_err(), "more than 16 MiB: about three copies no longer fit in 128 MB");
        assert!(limit("104857600").is_err(), "100 MiB was accepted before");
    }

    #[test]
    fn every_invalid_value_is_reported_at_once() {
        let names = problem_names(&with(&[
            ("UPLOAD_MODE", "admin"),
            ("UPLOAD_TABLES", "todos,bad-name"),
            ("UPLOAD_JSON_COLUMNS", "todos"),
            ("UPLOAD_SUBREQUEST_BUDGET", "0"),
            ("UPLOAD_ATOMIC", "maybe"),
            ("UPLOAD_ATOMIC_FUNCTION", "drop table"),
            ("UPLOAD_DEAD_LETTER_TABLE", "1x"),
            ("UPLOAD_MAX_BODY_BYTES", "-1"),
            ("UPLOAD_MAX_ENTRIES", "many"),
            ("UPLOAD_MAX_TRANSACTIONS", "0"),
            ("UPLOAD_RETRY_AFTER_SECONDS", "99999"),
            ("UPLOAD_ERROR_CLASS_OVERRIDES", "23514:sometimes"),
        ]));
        assert_eq!(
            names,
            vec![
                "UPLOAD_MODE",
                "UPLOAD_TABLES",
                "UPLOAD_JSON_COLUMNS",
                "UPLOAD_SUBREQUEST_BUDGET",
                "UPLOAD_ATOMIC",
                "UPLOAD_ATOMIC_FUNCTION",
                "UPLOAD_DEAD_LETTER_TABLE",
                "UPLOAD_MAX_BODY_BYTES",
                "UPLOAD_MAX_ENTRIES",
                "UPLOAD_MAX_TRANSACTIONS",
                "UPLOAD_RETRY_AFTER_SECONDS",
                "UPLOAD_ERROR_CLASS_OVERRIDES",
            ]
        );
    }

    #[test]
    fn error_class_overrides_are_read() {
        let s = read_vars(&with(&[(
            "UPLOAD_ERROR_CLASS_OVERRIDES",
            " PGRST204:Dangerously_Fatal, 23514:retryable,P0:retryable ,P0004:Fatal, http_404:dangerously_fatal,",
        )]))
        .expect("valid");
        let o = &s.error_class_overrides;
        assert_eq!(o.get("PGRST204"), Some(ErrorClass::DangerouslyFatal));
        assert_eq!(o.get("23514"), Some(ErrorClass::Retryable));
        assert_eq!(o.get("P0001"), Some(ErrorClass::Retryable), "a class covers its codes");
        assert_eq!(o.get("P0004"), Some(ErrorClass::Fatal), "a code before its class");
        assert_eq!(o.get("http_404"), Some(ErrorClass::DangerouslyFatal));
        assert_eq!(o.get("23505"), None);
        assert_eq!(read_vars(&BASE).expect("valid").error_class_overrides, ClassOverrides::default());
    }

    #[test]
    fn invalid_error_class_overrides_are_reported_together() {
        for bad in [
            "23514",
            "23514:maybe",
            "2351:fatal",
            "pgrst204:fatal",
            "PGRST2040:fatal",
            "http_200:fatal",
            "http_4O4:fatal",
            "network_error:fatal",
            "23514:fatal,23514:retryable",
        ] {
            match read_vars(&with(&[("UPLOAD_ERROR_CLASS_OVERRIDES", bad)])) {
                Err(problems) => {
                    assert!(problems.iter().all(|p| p.name == "UPLOAD_ERROR_CLASS_OVERRIDES"), "{bad}: {problems:?}")
                }
                Ok(s) => panic!("{bad} accepted: {:?}", s.error_class_overrides),
            }
        }
    }

    #[test]
    fn supabase_url_must_be_http_or_https() {
        for bad in [
            "abc.supabase.co",
            "ftp://abc",
            "https://",
            "https://a b",
            "https://a?x=1",
            "https://abc.supabase.co/rest/v1/",
        ] {
            assert_eq!(
                problem_names(&[("SUPABASE_URL", bad), ("SUPABASE_ANON_KEY", "k")]),
                vec!["SUPABASE_URL"],
                "{bad}"
            );
        }
        let s =
            read_vars(&[("SUPABASE_URL", " http://127.0.0.1:54321// \n"), ("SUPABASE_ANON_KEY", "k")]).expect("valid");
        assert_eq!(s.supabase_url, "http://127.0.0.1:54321");
    }

    #[test]
    fn keys_are_trimmed_and_must_not_contain_spaces() {
        let s = read_vars(&[("SUPABASE_URL", "https://a.co"), ("SUPABASE_ANON_KEY", "  sb_publishable_x\n")])
            .expect("valid");
        assert_eq!(s.anon_key, "sb_publishable_x");
        assert_eq!(
            problem_names(&[("SUPABASE_URL", "https://a.co"), ("SUPABASE_ANON_KEY", "a b")]),
            vec!["SUPABASE_ANON_KEY"]
        );
    }

    #[test]
    fn tables_allowlist_is_parsed() {
        let s = read_vars(&with(&[("UPLOAD_TABLES", " todos, lists ,")])).expect("valid");
        let expected: BTreeSet<String> = ["lists", "todos"].iter().map(|s| s.to_string()).collect();
        assert_eq!(s.tables, Some(expected));
    }

    #[test]
    fn empty_tables_allowlist_is_refused() {
        assert_eq!(problem_names(&with(&[("UPLOAD_TABLES", " , ")])), vec!["UPLOAD_TABLES"]);
        assert_eq!(problem_names(&with(&[("UPLOAD_TABLES", "")])), vec!["UPLOAD_TABLES"]);
    }

    #[test]
    fn identifiers_follow_the_plain_sql_rule() {
        assert!(is_identifier("todos"));
        assert!(is_identifier("_x1"));
        assert!(!is_identifier(""));
        assert!(!is_identifier("1x"));
        assert!(!is_identifier("a.b"));
        assert!(!is_identifier("todos;drop"));
        assert!(!is_identifier("tödos"));
        assert!(is_identifier(&"a".repeat(63)));
        assert!(!is_identifier(&"a".repeat(64)));
    }

    #[test]
    fn conversion_columns_are_parsed() {
        let s = read_vars(&with(&[
            ("UPLOAD_JSON_COLUMNS", "todos.tags, profiles.settings"),
            ("UPLOAD_BOOLEAN_COLUMNS", "todos.completed"),
        ]))
        .expect("valid");
        assert!(s.json_columns.contains("todos", "tags"));
        assert!(s.json_columns.contains("profiles", "settings"));
        assert!(!s.json_columns.contains("todos", "completed"));
        assert!(s.boolean_columns.contains("todos", "completed"));
        assert!(s.boolean_columns.has_table("todos"));
        assert!(!s.boolean_columns.has_table("profiles"));
    }

    #[test]
    fn conversion_columns_must_name_allowed_tables_and_not_overlap() {
        assert_eq!(
            problem_names(&with(&[("UPLOAD_TABLES", "todos"), ("UPLOAD_JSON_COLUMNS", "lists.tags")])),
            vec!["UPLOAD_JSON_COLUMNS"]
        );
        assert_eq!(
            problem_names(&with(&[("UPLOAD_JSON_COLUMNS", "todos.x"), ("UPLOAD_BOOLEAN_COLUMNS", "todos.x")])),
            vec!["UPLOAD_BOOLEAN_COLUMNS"]
        );
        assert_eq!(problem_names(&with(&[("UPLOAD_BOOLEAN_COLUMNS", "todos.a.b")])), vec!["UPLOAD_BOOLEAN_COLUMNS"]);
    }

    #[test]
    fn service_mode_requires_key_owner_column_and_tables() {
        assert_eq!(
            problem_names(&with(&[("UPLOAD_MODE", "service")])),
            vec!["SUPABASE_SERVICE_ROLE_KEY", "UPLOAD_OWNER_COLUMN", "UPLOAD_TABLES"]
        );
        let s = read_vars(&with(&[
            ("UPLOAD_MODE", "Service"),
            ("SUPABASE_SERVICE_ROLE_KEY", "sb_secret_abc"),
            ("UPLOAD_OWNER_COLUMN", "user_id"),
            ("UPLOAD_TABLES", "todos"),
        ]))
        .expect("valid");
        assert_eq!(
            s.mode,
            WriteMode::Service { service_key: "sb_secret_abc".to_string(), owner_column: "user_id".to_string() }
        );
    }

    #[test]
    fn service_mode_refuses_a_public_key_as_the_service_key() {
        // the anon key, a publishable key: every write would meet the policies as anon and be lost
        for key in ["anon", "sb_publishable_abc"] {
            let vars = with(&[
                ("UPLOAD_MODE", "service"),
                ("SUPABASE_SERVICE_ROLE_KEY", key),
                ("UPLOAD_OWNER_COLUMN", "user_id"),
                ("UPLOAD_TABLES", "todos"),
            ]);
            let problems = read_vars(&vars).unwrap_err();
            assert_eq!(problems.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["SUPABASE_SERVICE_ROLE_KEY"]);
            assert!(
                problems[0].message.contains("UPLOAD_MODE=service needs the project's service key"),
                "{problems:?}"
            );
        }
    }

    #[test]
    fn owner_column_must_be_a_plain_column_other_than_id() {
        let base = [("UPLOAD_MODE", "service"), ("SUPABASE_SERVICE_ROLE_KEY", "k"), ("UPLOAD_TABLES", "todos")];
        let mut vars = with(&base);
        vars.push(("UPLOAD_OWNER_COLUMN", "id"));
        assert_eq!(problem_names(&vars), vec!["UPLOAD_OWNER_COLUMN"]);
        let mut vars = with(&base);
        vars.push(("UPLOAD_OWNER_COLUMN", "user id"));
        assert_eq!(problem_names(&vars), vec!["UPLOAD_OWNER_COLUMN"]);
        // Its ownership filter would not be one: PostgREST reads `limit=eq.<sub>` as a limit.
        for reserved in RESERVED_QUERY_KEYS {
            let mut vars = with(&base);
            vars.push(("UPLOAD_OWNER_COLUMN", reserved));
            assert_eq!(problem_names(&vars), vec!["UPLOAD_OWNER_COLUMN"], "{reserved}");
        }
    }

    fn claims(value: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        value.as_object().cloned().unwrap_or_default()
    }

    const SERVICE: [(&str, &str); 4] = [
        ("UPLOAD_MODE", "service"),
        ("SUPABASE_SERVICE_ROLE_KEY", "k"),
        ("UPLOAD_OWNER_COLUMN", "user_id"),
        ("UPLOAD_TABLES", "todos"),
    ];

    #[test]
    fn service_mode_refuses_anonymous_sessions_unless_allowed() {
        let anonymous = claims(serde_json::json!({"sub": "u", "is_anonymous": true}));
        let signed_in = claims(serde_json::json!({"sub": "u", "is_anonymous": false}));
        let service = read_vars(&with(&SERVICE)).expect("valid");
        assert!(!service.allow_anonymous);
        assert!(!service.admits(&anonymous));
        assert!(service.admits(&signed_in));
        assert!(service.admits(&claims(serde_json::json!({"sub": "u"}))), "older tokens have no claim");
        let mut vars = with(&SERVICE);
        vars.push(("UPLOAD_ALLOW_ANONYMOUS", "true"));
        assert!(read_vars(&vars).expect("valid").admits(&anonymous));
        let rls = read_vars(&BASE).expect("valid");
        assert!(rls.admits(&anonymous), "RLS policies decide in rls mode");
    }

    #[test]
    fn service_mode_refuses_firebase_anonymous_sign_ins_unless_allowed() {
        let anonymous = claims(
            serde_json::json!({"sub": "kq3sX9vRZbT1bCq4nW0pYf7LmA82", "firebase": {"sign_in_provider": "anonymous"}}),
        );
        let password = claims(
            serde_json::json!({"sub": "kq3sX9vRZbT1bCq4nW0pYf7LmA82", "firebase": {"sign_in_provider": "password"}}),
        );
        let service = read_vars(&with(&SERVICE)).expect("valid");
        assert!(!service.admits(&anonymous));
        assert!(service.admits(&password));
        let mut vars = with(&SERVICE);
        vars.push(("UPLOAD_ALLOW_ANONYMOUS", "true"));
        assert!(read_vars(&vars).expect("valid").admits(&anonymous));
    }

    #[test]
    fn allow_anonymous_is_refused_in_rls_mode_unless_it_reads_as_its_default() {
        assert_eq!(problem_names(&with(&[("UPLOAD_ALLOW_ANONYMOUS", "true")])), vec!["UPLOAD_ALLOW_ANONYMOUS"]);
        // The default written out, as in secrets.example, is no problem (STORAGE_ALLOW_ANONYMOUS alike)
        assert!(read_vars(&with(&[("UPLOAD_ALLOW_ANONYMOUS", "false")])).is_ok());
        let mut vars = with(&SERVICE);
        vars.push(("UPLOAD_ALLOW_ANONYMOUS", "perhaps"));
        assert_eq!(problem_names(&vars), vec!["UPLOAD_ALLOW_ANONYMOUS"]);
    }

    #[test]
    fn owner_column_in_rls_mode_is_refused() {
        assert_eq!(problem_names(&with(&[("UPLOAD_OWNER_COLUMN", "user_id")])), vec!["UPLOAD_OWNER_COLUMN"]);
    }

    #[test]
    fn upload_atomic_is_auto_when_unset_and_forced_either_way_when_set() {
        let mode = |value: &'static str| read_vars(&with(&[("UPLOAD_ATOMIC", value)])).expect("valid").atomic;
        assert_eq!(read_vars(&BASE).expect("valid").atomic, AtomicMode::Auto);
        assert_eq!(mode("true"), AtomicMode::Always);
        assert_eq!(mode("false"), AtomicMode::Never);
        assert_eq!(mode("  "), AtomicMode::Auto, "blank counts as unset");
        let s = read_vars(&with(&[("UPLOAD_ATOMIC_RECHECK_SECONDS", "2")])).expect("valid");
        assert_eq!(s.atomic_recheck_seconds, 2);
        assert_eq!(
            problem_names(&with(&[("UPLOAD_ATOMIC_RECHECK_SECONDS", "0")])),
            vec!["UPLOAD_ATOMIC_RECHECK_SECONDS"]
        );
    }

    #[test]
    fn atomic_and_dead_letter_settings_are_read() {
        let s = read_vars(&with(&[
            ("UPLOAD_ATOMIC", "TRUE"),
            ("UPLOAD_ATOMIC_FUNCTION", "apply_tx"),
            ("UPLOAD_DEAD_LETTER_TABLE", "powersync_dead_letters"),
            ("UPLOAD_SUBREQUEST_BUDGET", "1000"),
            ("UPLOAD_RETRY_AFTER_SECONDS", "30"),
            ("UPLOAD_MAX_ENTRIES", "50"),
        ]))
        .expect("valid");
        assert_eq!(s.atomic, AtomicMode::Always);
        assert_eq!(s.atomic_function, "apply_tx");
        assert_eq!(s.dead_letter_table.as_deref(), Some("powersync_dead_letters"));
        assert_eq!(s.subrequest_budget, 1000);
        assert_eq!(s.retry_after_seconds, 30);
        assert_eq!(s.limits.max_entries, 50);
    }

    #[test]
    fn dead_letter_table_must_not_be_writable_by_clients() {
        assert_eq!(
            problem_names(&with(&[
                ("UPLOAD_TABLES", "todos,powersync_dead_letters"),
                ("UPLOAD_DEAD_LETTER_TABLE", "powersync_dead_letters")
            ])),
            vec!["UPLOAD_DEAD_LETTER_TABLE"]
        );
    }

    #[test]
    fn dead_letter_table_is_the_one_the_recording_function_writes() {
        let problems = read_vars(&with(&[("UPLOAD_DEAD_LETTER_TABLE", "my_dead_letters")])).err().unwrap_or_default();
        assert_eq!(problems.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), vec!["UPLOAD_DEAD_LETTER_TABLE"]);
        assert!(problems[0].message.contains("powersync_dead_letters"), "{:?}", problems[0]);
        assert!(read_vars(&with(&[("UPLOAD_DEAD_LETTER_TABLE", "powersync_dead_letters")])).is_ok());
    }

    #[test]
    fn recording_unchanged_entries_is_off_by_default_and_needs_the_dead_letter_table() {
        assert!(!read_vars(&with(&[])).expect("valid").dead_letter_unchanged);
        assert_eq!(
            problem_names(&with(&[("UPLOAD_DEAD_LETTER_UNCHANGED", "true")])),
            vec!["UPLOAD_DEAD_LETTER_UNCHANGED"]
        );
        let s = read_vars(&with(&[
            ("UPLOAD_DEAD_LETTER_UNCHANGED", "true"),
            ("UPLOAD_DEAD_LETTER_TABLE", DEAD_LETTER_TABLE),
        ]))
        .expect("valid");
        assert!(s.dead_letter_unchanged);
        assert_eq!(
            problem_names(&with(&[("UPLOAD_DEAD_LETTER_UNCHANGED", "maybe")])),
            vec!["UPLOAD_DEAD_LETTER_UNCHANGED"]
        );
    }

    #[test]
    fn conflict_detection_is_off_by_default_and_a_flag() {
        assert!(!read_vars(&with(&[])).expect("valid").conflict_detection);
        assert!(read_vars(&with(&[("UPLOAD_CONFLICT_DETECTION", "true")])).expect("valid").conflict_detection);
        assert_eq!(
            problem_names(&with(&[("UPLOAD_CONFLICT_DETECTION", "sometimes")])),
            vec!["UPLOAD_CONFLICT_DETECTION"]
        );
    }

    #[test]
    fn service_mode_budget_counts_the_ownership_check() {
        let mut vars = with(&SERVICE);
        vars.extend([("UPLOAD_ATOMIC", "false"), ("UPLOAD_SUBREQUEST_BUDGET", "1")]);
        let problems = read_vars(&vars).unwrap_err();
        assert!(problems[0].message.contains("must be at least 2"), "{problems:?}");
        let mut vars = with(&SERVICE);
        vars.extend([("UPLOAD_ATOMIC", "false"), ("UPLOAD_SUBREQUEST_BUDGET", "2")]);
        assert!(read_vars(&vars).is_ok());
    }

    #[test]
    fn budget_must_cover_one_transaction_and_its_dead_letter() {
        assert_eq!(
            problem_names(&with(&[("UPLOAD_SUBREQUEST_BUDGET", "1"), ("UPLOAD_DEAD_LETTER_TABLE", DEAD_LETTER_TABLE)])),
            vec!["UPLOAD_SUBREQUEST_BUDGET"]
        );
        // without dead letters, a rejection is recorded in the atomic function's ledger (when in use)
        let problems = read_vars(&with(&[("UPLOAD_SUBREQUEST_BUDGET", "1")])).unwrap_err();
        assert!(
            problems[0].message.contains("must be at least 2") && problems[0].message.contains("ledger"),
            "{problems:?}"
        );
        assert!(read_vars(&with(&[("UPLOAD_SUBREQUEST_BUDGET", "1"), ("UPLOAD_ATOMIC", "false")])).is_ok());
        assert!(read_vars(&with(&[("UPLOAD_SUBREQUEST_BUDGET", "2")])).is_ok());
        assert!(read_vars(&with(&[("UPLOAD_SUBREQUEST_BUDGET", "10000")])).is_ok());
        // a compared write that changed no row is told from a gone row by three reads over REST
        // (with the dead letter's reserve: 5); with atomic mode always on, nothing is read
        let compared = |budget, atomic: Option<&'static str>| {
            let mut vars = with(&[
                ("UPLOAD_CONFLICT_DETECTION", "true"),
                ("UPLOAD_DEAD_LETTER_TABLE", DEAD_LETTER_TABLE),
                ("UPLOAD_SUBREQUEST_BUDGET", budget),
            ]);
            vars.extend(atomic.map(|atomic| ("UPLOAD_ATOMIC", atomic)));
            read_vars(&vars)
        };
        let problems = compared("4", None).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].message.contains("must be at least 5"), "{problems:?}");
        assert!(problems[0].message.contains("three reads"), "{problems:?}");
        assert!(compared("5", None).is_ok());
        assert!(compared("2", Some("true")).is_ok());
        assert_eq!(problem_names(&with(&[("UPLOAD_SUBREQUEST_BUDGET", "10001")])), vec!["UPLOAD_SUBREQUEST_BUDGET"]);
    }

    #[test]
    fn a_fixed_choices_problem_never_quotes_the_value() {
        let passphrase = "correct-horse-battery-staple-violet-ocean-lamp";
        let bad_class = "23514:correct-horse-battery-staple-violet-ocean-lamp";
        let bad_code = "correct-horse-battery-staple-violet-ocean-lamp:fatal";
        let bad_form = "23514:fatal,correct-horse-battery-staple-violet-ocean-lamp";
        for vars in [
            [("UPLOAD_MODE", passphrase)],
            [("UPLOAD_ERROR_CLASS_OVERRIDES", bad_class)],
            [("UPLOAD_ERROR_CLASS_OVERRIDES", bad_code)],
            [("UPLOAD_ERROR_CLASS_OVERRIDES", bad_form)],
        ] {
            let problems = read_vars(&with(&vars)).expect_err("invalid");
            let text = format!("{problems:?}");
            assert!(!text.contains("horse"), "{text}");
            assert!(text.contains("must be") || text.contains("item "), "{text}");
        }
        let problems = read_vars(&with(&[("UPLOAD_ERROR_CLASS_OVERRIDES", bad_form)])).expect_err("invalid");
        assert!(problems[0].message.starts_with("item 2 is not of the form"), "{problems:?}");
    }

    #[test]
    fn blank_optional_values_count_as_unset() {
        let s = read_vars(&with(&[
            ("UPLOAD_MODE", " "),
            ("UPLOAD_SUBREQUEST_BUDGET", ""),
            ("UPLOAD_DEAD_LETTER_TABLE", "\n"),
        ]))
        .expect("valid");
        assert_eq!(s.mode, WriteMode::Rls);
        assert_eq!(s.subrequest_budget, 45);
        assert_eq!(s.dead_letter_table, None);
    }

    #[test]
    fn debug_output_hides_keys() {
        let s = read_vars(&with(&[
            ("UPLOAD_MODE", "service"),
            ("SUPABASE_SERVICE_ROLE_KEY", "very-secret"),
            ("UPLOAD_OWNER_COLUMN", "user_id"),
            ("UPLOAD_TABLES", "todos"),
        ]))
        .expect("valid");
        let text = format!("{s:?}");
        assert!(!text.contains("very-secret"));
        assert!(!text.contains("\"anon\""));
    }

    /// `fatal` is refused for a code the rules keep retryable because a person can fix its cause
    /// (schema drift, a missing GRANT's class, an outage, a gateway): copied as it stood, the
    /// old documented example `PGRST204:fatal` discarded every write of a column an app release
    /// adds before its migration. Only the loud `dangerously_fatal` does that.
    #[test]
    fn a_fatal_override_of_a_code_a_person_can_fix_is_refused_at_start() {
        for overrides in [
            "PGRST204:fatal",                 // unknown column
            "PGRST204:fatal,P0001:retryable", // the example secrets.example had
            "42:fatal",                       // class 42: schema drift and the database's setup
            "42P01:fatal",                    // unknown table
            "PGRST205:fatal",                 // unknown table (schema cache)
            "PGRST202:fatal",                 // atomic function not installed
            "PGRST000:fatal",                 // database unreachable
            "PGRST301:fatal",                 // a session PostgREST does not trust
            "08:fatal",                       // connection exceptions
            "57014:fatal",                    // statement timeout
            "http_503:fatal",                 // a gateway's outage
            "http_401:fatal",                 // a rotated API key ("Invalid API key")
            "http_404:fatal",                 // a wrong SUPABASE_URL
        ] {
            let problems = read_vars(&with(&[("UPLOAD_ERROR_CLASS_OVERRIDES", overrides)])).expect_err(overrides);
            assert_eq!(problems.len(), 1, "{overrides}: {problems:?}");
            assert_eq!(problems[0].name, "UPLOAD_ERROR_CLASS_OVERRIDES");
            assert!(problems[0].message.contains(":dangerously_fatal"), "{}", problems[0].message);
            let loud: &'static str = overrides.replace(":fatal", ":dangerously_fatal").leak();
            assert!(read_vars(&with(&[("UPLOAD_ERROR_CLASS_OVERRIDES", loud)])).is_ok(), "{loud}");
        }
        // The data's own refusals may be chosen either way (42501's refusals by a policy are the
        // data's; its missing GRANTs stay retryable whatever is set: outcome's tests).
        for data in
            ["P0001:retryable,23502:retryable", "P0:retryable,P0004:fatal", "23:fatal", "42501:fatal", "PGRST100:fatal"]
        {
            assert!(read_vars(&with(&[("UPLOAD_ERROR_CLASS_OVERRIDES", data)])).is_ok(), "{data}");
        }
    }

    /// The bridge's own tables in `UPLOAD_TABLES` are a problem at start (each write to them is
    /// refused at run time anyway), not learnt write by write.
    #[test]
    fn upload_tables_naming_a_bridge_table_is_a_problem_at_start() {
        for tables in
            ["todos,powersync_upload_ledger", "todos,powersync_upload_ledger_settings", "todos,powersync_dead_letters"]
        {
            let vars = with(&[("UPLOAD_TABLES", tables)]);
            assert_eq!(problem_names(&vars), vec!["UPLOAD_TABLES"], "{tables}");
        }
    }

    /// In service mode the worker writes the owner column itself: a conversion of it is a
    /// problem at start (`UPLOAD_JSON_COLUMNS` naming it made every PUT that carries its owner,
    /// as clients' local rows do, fatal `invalid_json`: a user id is no JSON text).
    #[test]
    fn a_conversion_of_the_owner_column_is_a_problem_in_service_mode() {
        for setting in ["UPLOAD_JSON_COLUMNS", "UPLOAD_BOOLEAN_COLUMNS"] {
            let mut vars = with(&SERVICE);
            vars.push((setting, "todos.user_id"));
            assert_eq!(problem_names(&vars), vec![setting]);
            assert!(
                read_vars(&with(&[(setting, "todos.user_id")])).is_ok(),
                "{setting}: in rls mode a column like any other"
            );
        }
    }
}
