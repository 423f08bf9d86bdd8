//! `devtool doctor`: checks a deployment end to end and prints each problem with its fix. The
//! checks are pure: what to expect comes from the worker's own settings (parsed by the worker's
//! `Config`), requests are built as values and answers read as values.
//!
//! Sources: the worker's `/health` (its configuration) and `/.well-known/jwks.json` (what
//! PowerSync must trust); the session JWKS URL and the legacy JWT secret (consistent with the
//! project's API keys); and the database's catalog through `powersync_doctor` (sql/doctor.sql,
//! called over PostgREST with the service key: PostgREST alone cannot tell RLS flags, each
//! role's privileges or the publication).

use std::collections::BTreeSet;

use powersync_supabase_worker::upload::settings::{AtomicMode, ColumnSet, UploadSettings, WriteMode};
use serde_json::{json, Value};

use crate::rest::{self, Request, Response};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Writes would be lost or blocked (or the deployment is unsafe): the doctor exits non-zero.
    Blocking,
    /// Worth fixing; writes are not blocked.
    Warning,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub severity: Severity,
    pub problem: String,
    pub fix: String,
}

pub fn blocking(problem: impl Into<String>, fix: impl Into<String>) -> Finding {
    Finding { severity: Severity::Blocking, problem: problem.into(), fix: fix.into() }
}

pub fn warning(problem: impl Into<String>, fix: impl Into<String>) -> Finding {
    Finding { severity: Severity::Warning, problem: problem.into(), fix: fix.into() }
}

pub const WRITE_PRIVILEGES: [&str; 4] = ["DELETE", "INSERT", "SELECT", "UPDATE"];
pub const LEDGER_CLAIM: &str = "public.powersync_upload_ledger_claim(text, text, text, text, timestamptz)";
/// What the atomic function answers for a dead-lettered transaction (called as the API role).
pub const LEDGER_DEAD_LETTER: &str = "public.powersync_upload_ledger_dead_letter(text, text, text)";
/// What the atomic function records and answers of entries that changed no row (called as the
/// API role).
pub const LEDGER_UNCHANGED: &str = "public.powersync_upload_ledger_unchanged(text, text, text, integer[])";
/// What records a transaction reported rejected without a dead letter (called as the API role
/// when `UPLOAD_DEAD_LETTER_TABLE` is unset): without it a late call can still apply it.
pub const LEDGER_REJECT: &str = "public.powersync_upload_ledger_reject(text, text, text, jsonb)";
/// What records a transaction applied through REST after its atomic call was cancelled by the
/// statement timeout (called as the API role when `UPLOAD_ATOMIC` is unset): without it a late
/// call can apply it again over the user's later transactions.
pub const LEDGER_APPLIED_VIA_REST: &str =
    "public.powersync_upload_ledger_applied_via_rest(text, text, text, integer[])";
/// What marks such a transaction as being applied through REST before the first write, and drops
/// the mark when that ends retryable (called as the API role when `UPLOAD_ATOMIC` is unset):
/// without them another copy of the queue can apply it meanwhile, and the REST writes land over
/// that copy's later transactions.
pub const LEDGER_REST_BEGIN: &str = "public.powersync_upload_ledger_rest_begin(text, text, text, text)";
pub const LEDGER_REST_ABANDON: &str = "public.powersync_upload_ledger_rest_abandon(text, text, text, text)";
/// Columns of the ledger this version relies on (added over time: their absence means
/// sql/atomic_upload.sql is outdated: a late call could apply a dead-lettered transaction
/// (`dead_letter_id`), a re-send after a lost answer would not report entries that changed no
/// row (`unchanged`), a re-send or late call written as other ops after a change of settings or
/// version would be applied again (`entries_digest`), the atomic function could not record the
/// rows a transaction writes (`row_keys`), the REST fallback could not mark a transaction
/// (`rest_until`, `rest_mark`), a re-sent rejected transaction would not be answered as it was
/// reported (`rejection`)).
pub const LEDGER_COLUMNS: [&str; 7] =
    ["dead_letter_id", "entries_digest", "rejection", "rest_mark", "rest_until", "row_keys", "unchanged"];
pub const RECORD: &str =
    "public.powersync_record_dead_letter(jsonb, text, text, text, text, text, integer, jsonb, text, text, text[])";
pub const REPLAY: &str = "public.powersync_replay_dead_letter(bigint, boolean)";
/// What the atomic function records of the rows a transaction writes (called as the API role),
/// for the replay of older dead letters.
pub const LEDGER_ROWS: &str = "public.powersync_upload_ledger_rows(text, text, text, text[])";
/// How those rows are written (called as the API role).
pub const ROW_KEY: &str = "public.powersync_upload_row_key(text, text)";
/// What [`ROW_KEY`] calls for a number in another spelling than digits alone (as the API role).
pub const NUMBER_KEY: &str = "public.powersync_upload_number_key(text)";
/// Why no row can pass an op (no row-level security policy lets the role run a command it
/// needs), which the atomic function asks as the API role.
pub const POLICY_GAP: &str = "public.powersync_upload_policy_gap(text, text)";
/// The ledger's helpers the atomic function calls, as the API role (sql/atomic_upload.sql).
pub const LEDGER_HELPERS: [&str; 7] =
    [LEDGER_CLAIM, LEDGER_DEAD_LETTER, LEDGER_UNCHANGED, LEDGER_ROWS, ROW_KEY, NUMBER_KEY, POLICY_GAP];
/// What a replay asks for the user's transactions applied since its dead letter (called as
/// service_role): without it a replay goes over the user's later writes unseen.
pub const LEDGER_APPLIED_SINCE: &str = "public.powersync_upload_ledger_applied_since(text, timestamptz)";
pub const DISCARD: &str = "public.powersync_discard_dead_letter(bigint, text)";
/// Columns of the dead-letter table this version relies on (added over time: their absence
/// means sql/dead_letter.sql is outdated).
pub const DEAD_LETTER_COLUMNS: [&str; 7] =
    ["client_id", "dedup_key", "discard_reason", "discarded_at", "entries", "recorded_as", "replay_error"];

/// The SQL files as this checkout has them: the installed functions' bodies are compared with
/// theirs. An older copy can have the same signature and another body (what a replay
/// refuses, what a PUT reports), which the signatures and columns alone cannot tell.
pub const SQL_FILES: [(&str, &str); 3] = [
    ("sql/atomic_upload.sql", include_str!("../../../sql/atomic_upload.sql")),
    ("sql/dead_letter.sql", include_str!("../../../sql/dead_letter.sql")),
    ("sql/doctor.sql", include_str!("../../../sql/doctor.sql")),
];

/// The functions a SQL file makes (`create [or replace] function public.<name>(… as $$<body>$$`),
/// each as (name, [`body_digest`] of its body: PostgreSQL keeps the body as written, `prosrc`).
pub fn function_bodies(sql: &str) -> Vec<(String, String)> {
    const STARTS: [&str; 2] = ["create or replace function public.", "create function public."];
    let mut found = Vec::new();
    let mut rest = sql;
    while let Some((at, start)) =
        STARTS.iter().filter_map(|start| rest.find(start).map(|at| (at, *start))).min_by_key(|(at, _)| *at)
    {
        rest = &rest[at + start.len()..];
        let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        let Some(open) = rest.find("\nas $$") else { break };
        let body = &rest[open + "\nas $$".len()..];
        let Some(close) = body.find("$$") else { break };
        found.push((name, body_digest(&body[..close])));
        rest = &body[close..];
    }
    found
}

/// SHA-256 (hex) of a function's body with what an editor may change left out: carriage
/// returns, spaces and tabs at the end of a line, blank space around the whole. sql/doctor.sql
/// computes the same of the installed body (`body_sha256`).
pub fn body_digest(body: &str) -> String {
    use sha2::{Digest, Sha256};
    let text = body.replace('\r', "");
    let lines: Vec<&str> = text.split('\n').map(|line| line.trim_end_matches([' ', '\t'])).collect();
    let text = lines.join("\n");
    Sha256::digest(text.trim_matches([' ', '\t', '\n']).as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// The SQL file that makes the function `name`, and its body's digest there (the files read once).
fn made_by(name: &str) -> Option<(&'static str, String)> {
    static MADE: std::sync::OnceLock<Vec<(&'static str, String, String)>> = std::sync::OnceLock::new();
    let made = MADE.get_or_init(|| {
        SQL_FILES
            .iter()
            .flat_map(|(file, sql)| function_bodies(sql).into_iter().map(move |(name, body)| (*file, name, body)))
            .collect()
    });
    made.iter().find(|(_, n, _)| n == name).map(|(file, _, body)| (*file, body.clone()))
}

/// A table to check: `schema.name`, the columns it must have, and why it is checked.
#[derive(Debug, Clone, PartialEq)]
pub struct TableCheck {
    pub schema: String,
    pub name: String,
    pub columns: Vec<String>,
    pub kind: TableKind,
    /// Uploaded tables: the columns whose values the worker converts
    /// (`UPLOAD_JSON_COLUMNS`, `UPLOAD_BOOLEAN_COLUMNS`), in order.
    pub conversions: Vec<(String, Conversion)>,
    /// Uploaded tables, service mode: the column the worker writes the user's id into.
    pub owner_column: Option<String>,
}

/// A value conversion the worker applies to a column.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Conversion {
    /// `UPLOAD_JSON_COLUMNS`: the client's JSON text sent as JSON.
    Json,
    /// `UPLOAD_BOOLEAN_COLUMNS`: 0 and 1 sent as false and true.
    Boolean,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TableKind {
    Uploaded,
    DeadLetters,
    Ledger,
}

/// What the database must hold for these settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Expectations {
    /// The role the bridge writes as: `authenticated` (rls) or `service_role` (service).
    pub role: &'static str,
    pub rls_mode: bool,
    pub tables: Vec<TableCheck>,
    /// The atomic function's signature, and whether a missing one blocks (`UPLOAD_ATOMIC=true`).
    pub atomic: Option<(String, bool)>,
    pub dead_letters: bool,
}

fn split_table(name: &str) -> (String, String) {
    match name.split_once('.') {
        Some((schema, table)) => (schema.to_string(), table.to_string()),
        None => ("public".to_string(), name.to_string()),
    }
}

fn qualified(schema: &str, name: &str) -> String {
    format!("{schema}.{name}")
}

/// The expectations of `settings`; `tables` (from `--tables`) adds to `UPLOAD_TABLES`.
pub fn expectations(settings: &UploadSettings, tables: &[String]) -> Expectations {
    let (role, rls_mode, owner) = match &settings.mode {
        WriteMode::Rls => ("authenticated", true, None),
        WriteMode::Service { owner_column, .. } => ("service_role", false, Some(owner_column.clone())),
    };
    let converted = |kind, set: &ColumnSet| {
        set.iter().map(move |(table, column)| (table.clone(), (column.clone(), kind))).collect::<Vec<_>>()
    };
    let conversions: Vec<(String, (String, Conversion))> = [
        converted(Conversion::Json, &settings.json_columns),
        converted(Conversion::Boolean, &settings.boolean_columns),
    ]
    .concat();
    let mut names: BTreeSet<String> = settings.tables.clone().unwrap_or_default();
    names.extend(tables.iter().cloned());
    let mut checks: Vec<TableCheck> = names
        .iter()
        .map(|n| {
            let (schema, name) = split_table(n);
            let mut columns = vec!["id".to_string()];
            columns.extend(owner.clone());
            let conversions = conversions
                .iter()
                .filter(|(table, _)| *table == name)
                .map(|(_, conversion)| conversion.clone())
                .collect();
            TableCheck { schema, name, columns, kind: TableKind::Uploaded, conversions, owner_column: owner.clone() }
        })
        .collect();
    let atomic = match settings.atomic {
        AtomicMode::Never => None,
        mode => {
            let name = if settings.atomic_function.contains('.') {
                settings.atomic_function.clone()
            } else {
                format!("public.{}", settings.atomic_function)
            };
            Some((format!("{name}(jsonb, text, text, text, text, boolean)"), mode == AtomicMode::Always))
        }
    };
    if atomic.is_some() {
        for (t, columns) in
            [("powersync_upload_ledger", &LEDGER_COLUMNS[..]), ("powersync_upload_ledger_settings", &[])]
        {
            checks.push(TableCheck {
                schema: "public".into(),
                name: t.into(),
                columns: columns.iter().map(|c| c.to_string()).collect(),
                kind: TableKind::Ledger,
                conversions: vec![],
                owner_column: None,
            });
        }
    }
    let dead_letters = settings.dead_letter_table.is_some();
    if dead_letters {
        checks.push(TableCheck {
            schema: "public".into(),
            name: "powersync_dead_letters".into(),
            columns: DEAD_LETTER_COLUMNS.iter().map(|c| c.to_string()).collect(),
            kind: TableKind::DeadLetters,
            conversions: vec![],
            owner_column: None,
        });
    }
    Expectations { role, rls_mode, tables: checks, atomic, dead_letters }
}

impl Expectations {
    pub fn functions(&self) -> Vec<String> {
        let mut f = vec![];
        if let Some((signature, _)) = &self.atomic {
            f.push(signature.clone());
            f.extend(LEDGER_HELPERS.map(String::from));
            if !self.atomic.as_ref().is_some_and(|(_, always)| *always) {
                f.extend([LEDGER_APPLIED_VIA_REST, LEDGER_REST_BEGIN, LEDGER_REST_ABANDON].map(String::from));
            }
            if !self.dead_letters {
                f.push(LEDGER_REJECT.to_string());
            }
        }
        if self.dead_letters {
            f.extend([RECORD, REPLAY, DISCARD].map(String::from));
            if self.atomic.is_some() {
                f.push(LEDGER_APPLIED_SINCE.to_string());
            }
        }
        f
    }
}

/// `POST /rest/v1/rpc/powersync_doctor` for `expected`.
pub fn catalog_request(supabase_url: &str, service_key: &str, expected: &Expectations) -> Request {
    let tables: Vec<Value> =
        expected.tables.iter().map(|t| json!({"schema": t.schema, "name": t.name, "columns": t.columns})).collect();
    rest::rpc(
        supabase_url,
        service_key,
        "powersync_doctor",
        json!({"tables": tables, "functions": expected.functions()}),
    )
}

/// `table[field][role]` of the catalog answer: privilege names (`privileges`, `column_only`).
fn privileges_of(table: &Value, field: &str, role: &str) -> BTreeSet<String> {
    table[field][role]
        .as_array()
        .map(|a| a.iter().filter_map(|p| p.as_str().map(String::from)).collect())
        .unwrap_or_default()
}

/// Problems in the catalog answer (or in getting it).
pub fn check_catalog(expected: &Expectations, response: &Response, supabase_url: &str) -> Vec<Finding> {
    let answer = match (response.status, response.json()) {
        (200, Some(v)) if v.get("version").is_some() => v,
        (0, _) => {
            return vec![blocking(
                format!("Supabase is not reachable at {supabase_url}: {}", response.describe()),
                "check SUPABASE_URL (https://<project ref>.supabase.co) and that the project is not paused",
            )]
        }
        _ => {
            let fix = match response.error_code().as_deref() {
                Some("PGRST202") | Some("42883") => "run sql/doctor.sql in the SQL editor (read-only: it lets the doctor read grants, RLS and the publication)",
                Some("42501") => "run sql/doctor.sql again (it grants EXECUTE on powersync_doctor to service_role)",
                _ if response.status == 401 => "SUPABASE_SERVICE_ROLE_KEY (or --service-key) is not this project's service_role / secret key",
                _ => "check SUPABASE_URL and the service key",
            };
            return vec![blocking(
                format!("cannot read the database's setup through powersync_doctor: {}", response.describe()),
                fix,
            )];
        }
    };
    let mut findings = vec![];
    let mut outdated_doctor_sql = false;
    let role = expected.role;
    let tables = answer["tables"].as_array().cloned().unwrap_or_default();
    for (check, table) in expected.tables.iter().zip(tables.iter()) {
        let name = qualified(&check.schema, &check.name);
        let sql_file = match check.kind {
            TableKind::Uploaded => None,
            TableKind::DeadLetters => Some("sql/dead_letter.sql"),
            TableKind::Ledger => Some("sql/atomic_upload.sql"),
        };
        if table["exists"] != json!(true) {
            findings.push(match sql_file {
                Some(file) => blocking(format!("table {name} is missing"), format!("run {file}")),
                None => blocking(
                    format!("uploaded table {name} does not exist"),
                    format!("create it, or remove '{}' from UPLOAD_TABLES / --tables", check.name),
                ),
            });
            continue;
        }
        let missing: Vec<String> = table["missing_columns"]
            .as_array()
            .map(|a| a.iter().filter_map(|c| c.as_str().map(String::from)).collect())
            .unwrap_or_default();
        if !missing.is_empty() {
            findings.push(match sql_file {
                Some(file) => blocking(
                    format!("table {name} is outdated (no column {})", missing.join(", ")),
                    format!("run {file} again (it upgrades in place, keeping rows)"),
                ),
                None => blocking(
                    format!("uploaded table {name} has no column {}", missing.join(", ")),
                    "add it (the owner column is UPLOAD_OWNER_COLUMN in service mode; every PowerSync table has id)",
                ),
            });
        }
        let held = privileges_of(table, "privileges", role);
        match check.kind {
            TableKind::Uploaded => {
                let lacking: Vec<&str> = WRITE_PRIVILEGES.iter().copied().filter(|p| !held.contains(*p)).collect();
                if !lacking.is_empty() {
                    findings.push(blocking(
                        format!(
                            "{role} lacks {} on {name}: every upload to it stays queued (42501)",
                            lacking.join(", ")
                        ),
                        format!("grant select, insert, update, delete on table {name} to {role};"),
                    ));
                }
                let partial: Vec<String> = privileges_of(table, "column_only", role).into_iter().collect();
                if !partial.is_empty() {
                    findings.push(warning(
                        format!(
                            "{role} holds {} on only some columns of {name}: a write of any other column is \
                             refused (42501) and stays queued until granted",
                            partial.join(", ")
                        ),
                        format!(
                            "grant them on the whole table (grant {} on table {name} to {role};), or keep \
                             clients from writing the other columns",
                            partial.join(", ").to_lowercase()
                        ),
                    ));
                }
                if expected.rls_mode {
                    findings.extend(check_row_security(table, &name, role, &mut outdated_doctor_sql));
                }
                if answer["publication"] == json!(true) && table["published"] != json!(true) {
                    findings.push(warning(
                        format!("{name} is not in the publication powersync: PowerSync does not sync its changes back"),
                        format!("alter publication powersync add table {name};"),
                    ));
                }
                match table["column_types"].as_object() {
                    Some(types) => findings.extend(check_column_types(check, &name, types)),
                    None => outdated_doctor_sql = true,
                }
                match table.get("type_schemas_without_usage") {
                    // (an older shape, a list of schemas per role without their columns: outdated)
                    Some(schemas) if schemas[role].is_object() || schemas[role].is_null() => findings.extend(
                        check_type_schemas(schemas[role].as_object(), &name, role, check.owner_column.as_deref()),
                    ),
                    _ => outdated_doctor_sql = true,
                }
                match table.get("id_unique") {
                    // a view or a foreign table (null): its arbiter is the base table's
                    Some(Value::Bool(true)) | Some(Value::Null) => {}
                    Some(_) if missing.iter().any(|c| c == "id") => {}
                    Some(_) => findings.push(blocking(
                        format!(
                            "{name} has no unique index on id alone: every PUT (an upsert on id) is refused \
                             (42P10) and stays queued"
                        ),
                        format!("alter table {name} add primary key (id); (or a unique constraint on id)"),
                    )),
                    None => outdated_doctor_sql = true,
                }
            }
            TableKind::DeadLetters | TableKind::Ledger => {
                // Written only through the SECURITY DEFINER functions: a user who could write
                // them directly could forge, hide or replay records.
                for api_role in ["anon", "authenticated"] {
                    let writes: Vec<String> = privileges_of(table, "privileges", api_role)
                        .into_iter()
                        .filter(|p| ["DELETE", "INSERT", "UPDATE"].contains(&p.as_str()))
                        .collect();
                    if !writes.is_empty() {
                        findings.push(blocking(
                            format!(
                                "{api_role} may {} {name} directly: a user could forge or remove its records",
                                writes.join(", ")
                            ),
                            format!(
                                "run {} again (it revokes them), or: revoke insert, update, delete on table {name} from {api_role};",
                                sql_file.unwrap_or_default()
                            ),
                        ));
                    }
                }
            }
        }
        if check.kind == TableKind::DeadLetters && !held.contains("SELECT") {
            findings.push(warning(
                format!("service_role cannot read {name}: devtool dead-letters cannot list them"),
                "run sql/dead_letter.sql again (it grants what the tools need)",
            ));
        }
    }
    if !expected.rls_mode {
        match answer["bypassrls"].get("service_role") {
            Some(Value::Bool(true)) => {}
            Some(_) => findings.push(blocking(
                "service_role does not bypass row-level security: in service mode the bridge's writes meet \
                 the tables' policies, and the ledger refuses calls without a session sub (42501); uploads stay queued",
                "alter role service_role bypassrls; (Supabase's service_role has it by default)",
            )),
            None => findings.push(warning(
                "sql/doctor.sql is outdated: the doctor cannot tell whether service_role bypasses row-level security",
                "run sql/doctor.sql again (read-only)",
            )),
        }
    }
    if outdated_doctor_sql {
        findings.push(warning(
            "sql/doctor.sql is outdated: the doctor cannot check the uploaded tables' column types, unique ids and policies",
            "run sql/doctor.sql again (read-only)",
        ));
    }
    if !answer["publication"].as_bool().unwrap_or(false) {
        findings.push(warning(
            "the publication powersync does not exist: PowerSync cannot replicate the database",
            "create publication powersync for all tables; (or for the tables your sync rules use)",
        ));
    }
    let functions = answer["functions"].as_array().cloned().unwrap_or_default();
    if functions.iter().any(|f| f["exists"] == json!(true) && f.get("body_sha256").is_none()) {
        findings.push(warning(
            "sql/doctor.sql is outdated: the doctor cannot compare the installed functions with this checkout's \
             SQL files (an older copy can keep their signatures)",
            "run sql/doctor.sql again (read-only)",
        ));
    }
    for f in functions {
        let signature = f["signature"].as_str().unwrap_or_default().to_string();
        let exists = f["exists"] == json!(true);
        let executes = |r: &str| f["execute"][r] == json!(true);
        let is_atomic = expected.atomic.as_ref().is_some_and(|(s, _)| *s == signature)
            || LEDGER_HELPERS.contains(&signature.as_str())
            || signature == LEDGER_REJECT
            || signature == LEDGER_APPLIED_VIA_REST
            || signature == LEDGER_REST_BEGIN
            || signature == LEDGER_REST_ABANDON
            || signature == LEDGER_APPLIED_SINCE;
        let file = if is_atomic { "sql/atomic_upload.sql" } else { "sql/dead_letter.sql" };
        let tool = signature == REPLAY || signature == DISCARD || signature == LEDGER_APPLIED_SINCE;
        let required_role = if tool { "service_role" } else { role };
        if !exists {
            let always = expected.atomic.as_ref().is_some_and(|(_, always)| *always);
            findings.push(if signature == LEDGER_APPLIED_SINCE {
                warning(
                    format!(
                        "{signature} is missing (outdated {file}): a replay cannot see the user's transactions \
                         applied after its dead letter, and goes over their rows"
                    ),
                    format!("run {file} again"),
                )
            } else if signature == LEDGER_APPLIED_VIA_REST {
                warning(
                    format!(
                        "{signature} is missing (outdated {file}): a transaction applied through REST after its atomic \
                         call timed out is not recorded, so a call of it that reaches the database late can apply it \
                         again over later writes"
                    ),
                    format!("run {file} again"),
                )
            } else if signature == LEDGER_REST_BEGIN || signature == LEDGER_REST_ABANDON {
                warning(
                    format!(
                        "{signature} is missing (outdated {file}): a transaction whose atomic call timed out goes \
                         through REST unmarked, so another copy of the queue can apply it meanwhile, and its REST \
                         writes can land over that copy's later transactions"
                    ),
                    format!("run {file} again"),
                )
            } else if signature == LEDGER_REJECT {
                warning(
                    format!(
                        "{signature} is missing (outdated {file}): a transaction reported rejected is not recorded, so \
                         a call of it that reaches the database late can still apply it (with the earlier copy taking \
                         three arguments it is recorded, but a re-send of it is answered dead_lettered, without its \
                         index and code)"
                    ),
                    format!("run {file} again"),
                )
            } else if is_atomic && !always {
                warning(
                    format!("{signature} is missing: uploads go through REST requests, not all-or-nothing"),
                    format!("run {file}"),
                )
            } else if tool {
                warning(
                    format!("{signature} is missing (outdated {file}): devtool dead-letters cannot use it"),
                    format!("run {file} again"),
                )
            } else {
                blocking(
                    format!("{signature} is missing: uploads that need it stay queued"),
                    format!("run {file} (again: it upgrades in place)"),
                )
            });
        } else if let Some(finding) = outdated_body(&signature, &f, tool) {
            findings.push(finding);
        } else if !executes(required_role) {
            let name = signature.split('(').next().unwrap_or_default();
            let problem = format!("{required_role} may not execute {signature}");
            let fix = format!("run {file} again, or: grant execute on function {name} to {required_role};");
            findings.push(if tool {
                warning(problem, fix)
            } else {
                blocking(format!("{problem}: uploads that need it stay queued (42501)"), fix)
            });
        }
    }
    findings
}

/// An installed function whose body is not the one this checkout's SQL file makes: an older
/// (or newer) version of the file, whose behaviour can differ with the same signature (a
/// warning for the dead-letter tools', `tool`, as their absence is). `None` when it is the
/// same, or when sql/doctor.sql is too old to say (`body_sha256` absent: said once, apart).
fn outdated_body(signature: &str, answer: &Value, tool: bool) -> Option<Finding> {
    let installed = answer["body_sha256"].as_str()?;
    let name = signature.strip_prefix("public.")?.split('(').next()?;
    let (file, expected) = made_by(name)?;
    (installed != expected).then(|| {
        let problem = format!(
            "{signature} is not the one this checkout's {file} makes (an older or newer copy of the file): \
             it can treat writes otherwise than the worker expects"
        );
        let fix = format!("run {file} again (it upgrades in place), or run the doctor from the checkout you deployed");
        if tool {
            warning(problem, fix)
        } else {
            blocking(problem, fix)
        }
    })
}

/// Rls mode: whether the uploaded table `name` keeps each user to their rows, and lets `role`
/// (the writing role) run what uploads send. A PUT is an upsert (INSERT, and UPDATE of a row
/// that exists: a re-send after a lost answer included); a PATCH and a DELETE find their row
/// through SELECT. A view is judged by its `security_invoker` (the base table's policies then
/// apply to the caller); without it the view writes as its owner.
fn check_row_security(table: &Value, name: &str, role: &str, outdated_doctor_sql: &mut bool) -> Vec<Finding> {
    if table["kind"] == json!("view") {
        return match table["security_invoker"] {
            Value::Bool(false) => vec![blocking(
                format!(
                    "view {name} runs as its owner: in rls mode its writes bypass the row-level security of \
                     the table under it, so any signed-in user may write any row"
                ),
                format!("alter view {name} set (security_invoker = true);"),
            )],
            _ => vec![],
        };
    }
    if table["rls"] != json!(true) {
        return vec![blocking(
            format!("row-level security is off on {name}: in rls mode any signed-in user may write any row"),
            format!(
                "alter table {name} enable row level security; (and add policies for select, insert, update \
                 and delete to {role}, each keeping to the user's rows)"
            ),
        )];
    }
    let Some(policies) = table.get("policies") else {
        *outdated_doctor_sql = true;
        return vec![];
    };
    let allowed =
        |command: &str| policies[role].as_array().is_some_and(|commands| commands.iter().any(|c| c == command));
    let why = [
        ("INSERT", "every PUT of a new row is refused (42501) and dead-lettered"),
        (
            "UPDATE",
            "a PUT of a row that exists (a re-send after a lost answer included) is refused (42501) and \
             dead-lettered, and a PATCH changes nothing (reported unchanged); through the atomic function \
             both wait for the policy",
        ),
        (
            "SELECT",
            "a PATCH or DELETE finds no row and is reported unchanged, its change not made; through the \
             atomic function it waits for the policy",
        ),
    ];
    let mut findings: Vec<Finding> = why
        .iter()
        .filter(|(command, _)| !allowed(command))
        .map(|(command, what)| {
            blocking(format!("no policy on {name} lets {role} {command}: {what}"), policy_sql(name, command, role))
        })
        .collect();
    if !allowed("DELETE") {
        findings.push(warning(
            format!(
                "no policy on {name} lets {role} DELETE: a client's DELETE is reported unchanged and the row \
                 syncs back; through the atomic function it waits for the policy"
            ),
            format!(
                "{} if clients may delete rows; if they may not, say so with `create policy {}_no_delete on {name} \
                 for delete to {role} using (false);` (their DELETEs are then reported unchanged)",
                policy_sql(name, "DELETE", role),
                unqualified(name)
            ),
        ));
    }
    findings
}

/// The schemas holding a column type of uploaded table `name` on which `role` lacks USAGE, each
/// with those columns (`schemas`): a write naming such a column is refused (42501) and waits.
/// Blocking when `id` is one, or service mode's `owner` column (every write names `id`, every PUT
/// the owner); else a warning, since a column clients never write (the server's) costs nothing.
fn check_type_schemas(
    schemas: Option<&serde_json::Map<String, Value>>,
    name: &str,
    role: &str,
    owner: Option<&str>,
) -> Vec<Finding> {
    let Some(schemas) = schemas else { return vec![] };
    schemas
        .iter()
        .map(|(schema, columns)| {
            let columns: Vec<&str> = columns.as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            let every_write = columns.iter().any(|c| *c == "id" || Some(*c) == owner);
            let problem = format!(
                "{role} lacks USAGE on schema {schema}, which holds the type of {name}.{}: a write of {} stays \
                 queued (42501)",
                columns.join(format!(", {name}.").as_str()),
                if every_write { "any row" } else { "such a column" }
            );
            let fix = format!("grant usage on schema {schema} to {role};");
            if every_write {
                blocking(problem, fix)
            } else {
                warning(problem, format!("{fix} (if clients write {})", columns.join(", ")))
            }
        })
        .collect()
}

/// The `create policy` a missing `command` calls for, its conditions left to the operator.
fn policy_sql(name: &str, command: &str, role: &str) -> String {
    let clauses = match command {
        "INSERT" => "with check (…)",
        "UPDATE" => "using (…) with check (…)",
        _ => "using (…)",
    };
    let command = command.to_lowercase();
    let table = unqualified(name);
    format!("create policy {table}_{command} on {name} for {command} to {role} {clauses}; (each keeping to the user's rows)")
}

/// A table's name without its schema (`todos` of `public.todos`), for the policy names suggested.
fn unqualified(name: &str) -> &str {
    name.rsplit('.').next().unwrap_or(name)
}

/// Whether the worker's conversions suit the columns of uploaded table `name` (`types`: the
/// catalog's `column_types`), and whether the columns that need one have it: a conversion of
/// the wrong column alters or refuses the client's values, an array column without one is
/// refused, a JSON column without one stores the client's JSON text as a JSON string; and, in
/// service mode, whether the owner column can hold user ids.
fn check_column_types(check: &TableCheck, name: &str, types: &serde_json::Map<String, Value>) -> Vec<Finding> {
    let mut findings = vec![];
    let type_of = |column: &str| types.get(column).map(type_and_category);
    let is_json = |type_name: &str, category: &str| category == "A" || type_name == "json" || type_name == "jsonb";
    for (column, conversion) in &check.conversions {
        let (setting, suits, sent) = match conversion {
            Conversion::Json => (
                "UPLOAD_JSON_COLUMNS",
                "json, jsonb and array columns",
                "the client's text is sent as the JSON value it holds: a text null is stored as NULL, \"x\" as x",
            ),
            Conversion::Boolean => (
                "UPLOAD_BOOLEAN_COLUMNS",
                "boolean columns",
                "0 and 1 are sent as false and true, which it refuses or stores as text",
            ),
        };
        let entry = format!("{}.{column}", check.name);
        match type_of(column) {
            None => findings.push(warning(
                format!("{setting} names {entry}, but {name} has no column {column}"),
                format!("correct or remove {entry} in {setting}"),
            )),
            Some((type_name, category)) => {
                let fits = match conversion {
                    Conversion::Json => is_json(type_name, category),
                    Conversion::Boolean => type_name == "boolean",
                };
                if !fits {
                    findings.push(blocking(
                        format!("{setting} names {entry}, which is {type_name}: {sent}"),
                        format!("remove {entry} from {setting} (it is for {suits})"),
                    ));
                }
            }
        }
    }
    for (column, info) in types {
        let (type_name, category) = type_and_category(info);
        if !is_json(type_name, category) || check.conversions.iter().any(|(c, _)| c == column) {
            continue;
        }
        let entry = format!("{}.{column}", check.name);
        findings.push(warning(
            if category == "A" {
                format!(
                    "{name}.{column} is an array ({type_name}) not in UPLOAD_JSON_COLUMNS: the SDK sends it as JSON \
                     text, which PostgreSQL refuses as an array literal (22P02, fatal) unless the client writes \
                     PostgreSQL's own form ({{a,b}})"
                )
            } else {
                format!(
                    "{name}.{column} is {type_name} not in UPLOAD_JSON_COLUMNS: the SDK sends it as JSON text, which \
                     is stored as a JSON string, not the value it holds"
                )
            },
            format!("add {entry} to UPLOAD_JSON_COLUMNS"),
        ));
    }
    if let Some((owner, (type_name, category))) =
        check.owner_column.as_ref().and_then(|owner| Some((owner, type_of(owner)?)))
    {
        if category != "S" && type_name != "uuid" {
            findings.push(blocking(
                format!(
                    "{name}.{owner} is {type_name}: service mode writes the user's id (the session's sub) into \
                     UPLOAD_OWNER_COLUMN, which it cannot hold (22P02): every upload to {name} stays queued"
                ),
                "make the owner column text (or uuid, for Supabase Auth's user ids)",
            ));
        }
    }
    findings
}

/// A column's type and type category, as the catalog's `column_types` gives them.
fn type_and_category(info: &Value) -> (&str, &str) {
    (info["type"].as_str().unwrap_or_default(), info["category"].as_str().unwrap_or_default())
}

/// The worker's `/health`: reachable, and every part configured.
pub fn check_health(worker_url: &str, response: &Response) -> Vec<Finding> {
    if response.status == 0 {
        return vec![blocking(
            format!("the worker is not reachable at {worker_url}: {}", response.describe()),
            "check --worker-url and that the worker is deployed (wrangler deploy)",
        )];
    }
    let Some(body) = response.json() else {
        return vec![blocking(
            format!("{worker_url}/health is not the bridge's: {}", response.describe()),
            "check --worker-url (the worker's own URL, e.g. https://name.account.workers.dev)",
        )];
    };
    let mut findings = vec![];
    for part in ["session", "powersync", "upload"] {
        if body[part]["configured"] == json!(true) {
            continue;
        }
        let problems: Vec<String> = body[part]["problems"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|p| format!("{}: {}", p["name"].as_str().unwrap_or("?"), p["message"].as_str().unwrap_or("?")))
                    .collect()
            })
            .unwrap_or_default();
        findings.push(blocking(
            format!(
                "the worker's {part} settings are not usable: {}",
                if problems.is_empty() { "no details".to_string() } else { problems.join("; ") }
            ),
            "set them as secrets (wrangler secret put NAME) or in wrangler.toml [vars], then deploy",
        ));
    }
    if findings.is_empty() && response.status != 200 {
        findings.push(blocking(
            format!("{worker_url}/health answers {}", response.describe()),
            "see the worker's log (wrangler tail)",
        ));
    }
    findings
}

/// The worker's JWKS, which PowerSync fetches to verify the worker's tokens.
pub fn check_worker_jwks(worker_url: &str, response: &Response, key_id: Option<&str>) -> Vec<Finding> {
    let url = format!("{worker_url}/.well-known/jwks.json");
    let keys = match (response.status, response.json()) {
        (200, Some(v)) => v["keys"].as_array().cloned().unwrap_or_default(),
        _ => {
            return vec![blocking(
                format!(
                    "{url} does not serve a JWKS ({}): PowerSync cannot verify the worker's tokens",
                    response.describe()
                ),
                "fix the worker's POWERSYNC_* settings (see its /health)",
            )]
        }
    };
    if keys.is_empty() {
        return vec![blocking(
            format!("{url} has no keys: PowerSync cannot verify the worker's tokens"),
            "set POWERSYNC_PRIVATE_KEY and POWERSYNC_KEY_ID",
        )];
    }
    if let Some(kid) = key_id {
        if !keys.iter().any(|k| k["kid"] == json!(kid)) {
            return vec![blocking(
                format!("{url} does not have the key {kid} of these settings: the worker runs another key"),
                "deploy the worker with these settings, or check --vars",
            )];
        }
    }
    vec![]
}

/// The session keys: a JWKS PowerSync-style verification can use, and a legacy JWT secret that
/// actually signed the project's API keys (`secret_signs_keys`: None when no key is a JWT).
pub fn check_session_keys(
    jwks_url: &str,
    jwks: &Response,
    has_secret: bool,
    secret_signs_keys: Option<bool>,
) -> Vec<Finding> {
    let mut findings = vec![];
    if secret_signs_keys == Some(false) {
        findings.push(blocking(
            "SUPABASE_JWT_SECRET did not sign the project's API keys: it is not this project's JWT secret, every HS256 session is refused",
            "copy the legacy JWT secret from the dashboard (Project Settings > JWT Keys), or unset it if the project uses signing keys",
        ));
    }
    let keys = match (jwks.status, jwks.json()) {
        (200, Some(v)) => v["keys"].as_array().map(Vec::len),
        _ => None,
    };
    match keys {
        Some(n) if n > 0 => {}
        _ if has_secret => findings.push(warning(
            format!("the session JWKS at {jwks_url} has no usable keys ({}): only HS256 (legacy secret) sessions are accepted", jwks.describe()),
            "check SUPABASE_JWKS_URL, or ignore if the project still signs sessions with the legacy secret",
        )),
        _ => findings.push(blocking(
            format!("the session JWKS at {jwks_url} has no usable keys ({}) and there is no SUPABASE_JWT_SECRET: no session can be verified", jwks.describe()),
            "check SUPABASE_URL / SUPABASE_JWKS_URL, or set SUPABASE_JWT_SECRET for a project on the legacy secret",
        )),
    }
    findings
}

/// The report and the exit status: 1 when something blocks writes, else 0.
pub fn report(findings: &[Finding]) -> (String, u8) {
    let mut sorted: Vec<&Finding> = findings.iter().collect();
    sorted.sort_by_key(|f| f.severity);
    let mut out = String::new();
    for f in &sorted {
        let label = match f.severity {
            Severity::Blocking => "PROBLEM",
            Severity::Warning => "warning",
        };
        out.push_str(&format!("{label}: {}\n  fix: {}\n", f.problem, f.fix));
    }
    let blocking = findings.iter().filter(|f| f.severity == Severity::Blocking).count();
    let warnings = findings.len() - blocking;
    out.push_str(&if blocking == 0 {
        format!("doctor: ready ({warnings} warning(s))")
    } else {
        format!("doctor: {blocking} problem(s) that lose or block writes, {warnings} warning(s)")
    });
    (out, u8::from(blocking > 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use powersync_supabase_worker::config::Config;

    /// Service mode on `profiles`, REST only.
    const SERVICE_MODE: [(&str, &str); 5] = [
        ("UPLOAD_MODE", "service"),
        ("SUPABASE_SERVICE_ROLE_KEY", "sb_secret_k"),
        ("UPLOAD_TABLES", "profiles"),
        ("UPLOAD_OWNER_COLUMN", "user_id"),
        ("UPLOAD_ATOMIC", "false"),
    ];

    fn settings(vars: &[(&str, &str)]) -> UploadSettings {
        let mut all = vec![("SUPABASE_URL", "https://p.supabase.co"), ("SUPABASE_ANON_KEY", "sb_publishable_x")];
        all.extend_from_slice(vars);
        let config = Config::from_lookup(&|name| all.iter().find(|(n, _)| *n == name).map(|(_, v)| v.to_string()));
        config.upload.expect("valid upload settings")
    }

    fn answer(tables: Value, functions: Value) -> Response {
        Response {
            status: 200,
            body: json!({"version": 1, "publication": true, "tables": tables, "functions": functions}).to_string(),
        }
    }

    /// [`answer`] for service mode, whose role bypasses row-level security.
    fn service_answer(tables: Value) -> Response {
        let mut answer = answer(tables, json!([]));
        let mut body: Value = serde_json::from_str(&answer.body).unwrap();
        body["bypassrls"] = json!({"service_role": true});
        answer.body = body.to_string();
        answer
    }

    fn table(name: &str, privileges: &[&str], rls: bool) -> Value {
        json!({"schema": "public", "name": name, "exists": true, "rls": rls, "missing_columns": [], "published": true,
               "id_unique": true, "kind": "table", "security_invoker": null,
               "type_schemas_without_usage": {"anon": {}, "authenticated": {}, "service_role": {}},
               "policies": {"anon": [], "authenticated": ["DELETE", "INSERT", "SELECT", "UPDATE"], "service_role": []},
               "privileges": {"anon": [], "authenticated": privileges, "service_role": privileges},
               "column_types": {"id": {"type": "uuid", "category": "U"}, "user_id": {"type": "uuid", "category": "U"}}})
    }

    fn with_columns(mut table: Value, columns: &[(&str, &str, &str)]) -> Value {
        for (column, type_name, category) in columns {
            table["column_types"][*column] = json!({"type": type_name, "category": category});
        }
        table
    }

    #[test]
    fn a_column_type_in_a_schema_the_writing_role_cannot_use_is_named_blocking_only_for_id() {
        let e = expectations(&settings(&[("UPLOAD_ATOMIC", "false")]), &["todos".to_string()]);
        let all = ["DELETE", "INSERT", "SELECT", "UPDATE"];
        let mut todos = table("todos", &all, true);
        todos["type_schemas_without_usage"]["authenticated"] = json!({"app": ["mood", "kind"], "ids": ["id"]});
        todos["type_schemas_without_usage"]["anon"] = json!({"other": ["x"]});
        let found = check_catalog(&e, &answer(json!([todos]), json!([])), "u");
        let found: Vec<_> = found.iter().map(|f| (f.severity, f.problem.as_str(), f.fix.as_str())).collect();
        assert_eq!(
            found,
            [
                (
                    Severity::Warning,
                    "authenticated lacks USAGE on schema app, which holds the type of public.todos.mood, \
                     public.todos.kind: a write of such a column stays queued (42501)",
                    "grant usage on schema app to authenticated; (if clients write mood, kind)"
                ),
                (
                    Severity::Blocking,
                    "authenticated lacks USAGE on schema ids, which holds the type of public.todos.id: a write of any \
                     row stays queued (42501)",
                    "grant usage on schema ids to authenticated;"
                ),
            ],
            "the writing role's only, by schema"
        );
    }

    #[test]
    fn a_service_mode_owner_columns_type_schema_without_usage_blocks_and_an_old_answer_is_outdated() {
        let e = expectations(&settings(&SERVICE_MODE), &[]);
        let all = ["DELETE", "INSERT", "SELECT", "UPDATE"];
        let judged = |usage: Value| {
            let mut profiles = table("profiles", &all, true);
            profiles["type_schemas_without_usage"]["service_role"] = usage;
            check_catalog(&e, &service_answer(json!([profiles])), "u")
                .into_iter()
                .map(|f| (f.severity, f.problem))
                .collect::<Vec<_>>()
        };
        let owner = judged(json!({"app": ["user_id"]}));
        assert_eq!(owner.len(), 1, "{owner:#?}");
        assert_eq!(owner[0].0, Severity::Blocking, "every PUT writes the owner column: {owner:#?}");
        let old = judged(json!(["app"]));
        assert_eq!(old.len(), 1, "{old:#?}");
        assert!(old[0].1.starts_with("sql/doctor.sql is outdated"), "{old:#?}");
    }

    #[test]
    fn rls_mode_wants_policies_for_what_uploads_run_and_a_view_that_runs_as_its_caller() {
        let e = expectations(&settings(&[("UPLOAD_ATOMIC", "false")]), &["todos".to_string()]);
        let all = ["DELETE", "INSERT", "SELECT", "UPDATE"];
        let found = |change: &dyn Fn(&mut Value)| {
            let mut todos = table("todos", &all, true);
            change(&mut todos);
            check_catalog(&e, &answer(json!([todos]), json!([])), "u")
                .into_iter()
                .map(|f| (f.severity, f.problem, f.fix))
                .collect::<Vec<_>>()
        };
        assert_eq!(found(&|_| {}), [], "every command has a policy");
        // an insert-only table: a re-sent PUT of an applied row would be dead-lettered
        let insert_only = found(&|t| t["policies"]["authenticated"] = json!(["INSERT", "SELECT"]));
        assert_eq!(insert_only.len(), 2, "{insert_only:#?}");
        assert_eq!(insert_only[0].0, Severity::Blocking);
        assert!(
            insert_only[0]
                .1
                .starts_with("no policy on public.todos lets authenticated UPDATE: a PUT of a row that exists"),
            "{insert_only:#?}"
        );
        assert_eq!(
            insert_only[0].2,
            "create policy todos_update on public.todos for update to authenticated using (…) with check (…); \
             (each keeping to the user's rows)"
        );
        assert_eq!(insert_only[1].0, Severity::Warning, "a DELETE not allowed is the app's choice: {insert_only:#?}");
        // RLS on and no policy at all: nothing a user writes can apply
        let none = found(&|t| t["policies"]["authenticated"] = json!([]));
        let blocking: Vec<_> = none.iter().filter(|f| f.0 == Severity::Blocking).map(|f| f.1.as_str()).collect();
        assert_eq!(blocking.len(), 3, "{none:#?}");
        assert!(blocking[0].contains("lets authenticated INSERT") && blocking[2].contains("lets authenticated SELECT"));
        assert!(none.iter().any(|f| f
            .2
            .starts_with("create policy todos_insert on public.todos for insert to authenticated with check (…);")));
        // a view: no RLS of its own; it must run as its caller
        let view = |invoker: bool| {
            found(&move |t: &mut Value| {
                t["kind"] = json!("view");
                t["rls"] = json!(false);
                t["policies"] = json!({});
                t["security_invoker"] = json!(invoker);
            })
        };
        assert_eq!(view(true), [], "the table under it decides");
        let owner = view(false);
        assert_eq!(owner.len(), 1, "{owner:#?}");
        assert_eq!(owner[0].2, "alter view public.todos set (security_invoker = true);");
        // an older doctor.sql tells no policies
        let old = found(&|t| drop(t.as_object_mut().unwrap().remove("policies")));
        assert_eq!(old.len(), 1, "{old:#?}");
        assert!(old[0].1.starts_with("sql/doctor.sql is outdated"), "{old:#?}");
    }

    #[test]
    fn an_uploaded_table_without_a_unique_id_blocks_and_a_view_is_not_judged() {
        let e = expectations(&settings(&[("UPLOAD_ATOMIC", "false")]), &["todos".to_string()]);
        let all = ["DELETE", "INSERT", "SELECT", "UPDATE"];
        let check = |id_unique: Option<Value>, missing: &[&str]| {
            let mut todos = table("todos", &all, true);
            match id_unique {
                Some(v) => todos["id_unique"] = v,
                None => drop(todos.as_object_mut().unwrap().remove("id_unique")),
            }
            todos["missing_columns"] = json!(missing);
            check_catalog(&e, &answer(json!([todos]), json!([])), "u")
                .into_iter()
                .map(|f| (f.severity, f.problem, f.fix))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            check(Some(json!(false)), &[]),
            [(
                Severity::Blocking,
                "public.todos has no unique index on id alone: every PUT (an upsert on id) is refused (42P10) and \
                 stays queued"
                    .to_string(),
                "alter table public.todos add primary key (id); (or a unique constraint on id)".to_string()
            )]
        );
        assert_eq!(check(Some(json!(true)), &[]), [], "a unique id is ready");
        assert_eq!(check(Some(Value::Null), &[]), [], "a view's arbiter is its base table's");
        let without_id = check(Some(json!(false)), &["id"]);
        assert_eq!(without_id.len(), 1, "only the missing column: {without_id:#?}");
        assert!(without_id[0].1.contains("has no column id"), "{without_id:#?}");
        assert_eq!(
            check(None, &[]),
            [(
                Severity::Warning,
                "sql/doctor.sql is outdated: the doctor cannot check the uploaded tables' column types, unique ids and policies"
                    .to_string(),
                "run sql/doctor.sql again (read-only)".to_string()
            )]
        );
    }

    #[test]
    fn conversions_must_suit_their_columns_and_json_columns_want_one() {
        let e = expectations(
            &settings(&[
                ("UPLOAD_JSON_COLUMNS", "todos.tags,todos.doc,todos.note,todos.gone"),
                ("UPLOAD_BOOLEAN_COLUMNS", "todos.done,todos.count"),
                ("UPLOAD_ATOMIC", "false"),
            ]),
            &["todos".to_string()],
        );
        assert_eq!(e.tables.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["todos"]);
        let all = ["DELETE", "INSERT", "SELECT", "UPDATE"];
        let todos = with_columns(
            table("todos", &all, true),
            &[
                ("tags", "text[]", "A"),
                ("doc", "jsonb", "U"),
                ("note", "text", "S"),
                ("done", "boolean", "B"),
                ("count", "integer", "N"),
                ("labels", "varchar[]", "A"),
                ("meta", "json", "U"),
            ],
        );
        let found = check_catalog(&e, &answer(json!([todos]), json!([])), "u");
        let said = |needle: &str| {
            found.iter().find(|f| f.problem.contains(needle)).unwrap_or_else(|| panic!("{needle}: {found:#?}"))
        };
        let note = said("todos.note, which is text");
        assert_eq!(note.severity, Severity::Blocking);
        assert!(note.problem.contains("a text null is stored as NULL"), "{note:?}");
        assert_eq!(note.fix, "remove todos.note from UPLOAD_JSON_COLUMNS (it is for json, jsonb and array columns)");
        let count = said("todos.count, which is integer");
        assert_eq!(
            (count.severity, count.fix.as_str()),
            (Severity::Blocking, "remove todos.count from UPLOAD_BOOLEAN_COLUMNS (it is for boolean columns)")
        );
        assert_eq!(said("todos.gone, but public.todos has no column gone").severity, Severity::Warning);
        let labels = said("public.todos.labels is an array (varchar[]) not in UPLOAD_JSON_COLUMNS");
        assert_eq!(
            (labels.severity, labels.fix.as_str()),
            (Severity::Warning, "add todos.labels to UPLOAD_JSON_COLUMNS")
        );
        assert_eq!(said("public.todos.meta is json not in UPLOAD_JSON_COLUMNS").severity, Severity::Warning);
        assert_eq!(found.len(), 5, "tags, doc and done suit their conversions: {found:#?}");
    }

    #[test]
    fn service_mode_owner_column_must_hold_user_ids_and_an_old_doctor_sql_is_named() {
        let e = expectations(&settings(&SERVICE_MODE), &[]);
        let all = ["DELETE", "INSERT", "SELECT", "UPDATE"];
        for (type_name, category, blocks) in [("bigint", "N", true), ("text", "S", false), ("uuid", "U", false)] {
            let profiles = with_columns(table("profiles", &all, true), &[("user_id", type_name, category)]);
            let found = check_catalog(&e, &service_answer(json!([profiles])), "u");
            let owner: Vec<_> = found.iter().filter(|f| f.problem.contains("UPLOAD_OWNER_COLUMN")).collect();
            assert_eq!(owner.len(), usize::from(blocks), "{type_name}: {found:#?}");
            if blocks {
                assert_eq!(owner[0].severity, Severity::Blocking);
                assert!(
                    owner[0].problem.starts_with("public.profiles.user_id is bigint: service mode writes"),
                    "{owner:?}"
                );
            }
        }
        let mut old = table("profiles", &all, true);
        old.as_object_mut().unwrap().remove("column_types");
        let found = check_catalog(&e, &service_answer(json!([old])), "u");
        assert_eq!(
            found.iter().map(|f| (f.severity, f.problem.as_str())).collect::<Vec<_>>(),
            [(Severity::Warning, "sql/doctor.sql is outdated: the doctor cannot check the uploaded tables' column types, unique ids and policies")]
        );
    }

    /// The atomic function and the ledger helpers it calls, installed and executable by
    /// `authenticated`, then `more`.
    fn atomic_functions_and(more: Vec<Value>) -> Vec<Value> {
        let mut all = vec![function(
            "public.powersync_apply_transaction(jsonb, text, text, text, text, boolean)",
            true,
            &["authenticated"],
        )];
        all.extend(LEDGER_HELPERS.map(|helper| function(helper, true, &["authenticated"])));
        all.extend(more);
        all
    }

    #[test]
    fn every_function_each_sql_file_makes_has_its_body_read() {
        for (file, sql) in SQL_FILES {
            let bodies = function_bodies(sql);
            let made = sql.matches("create or replace function public.").count()
                + sql.matches("create function public.").count();
            assert_eq!(bodies.len(), made, "{file}");
            // a body's bytes as stored depend on the client encoding it was loaded with, unless ASCII
            assert!(sql.is_ascii(), "{file} is not ASCII: its bodies' digests would depend on psql's encoding");
            let names: BTreeSet<&str> = bodies.iter().map(|(name, _)| name.as_str()).collect();
            assert_eq!(names.len(), bodies.len(), "{file}: each function once");
            assert!(bodies.iter().all(|(name, hash)| !name.is_empty() && hash.len() == 64), "{file}");
        }
        let (file, _) = made_by("powersync_apply_transaction").expect("the atomic function");
        assert_eq!(file, "sql/atomic_upload.sql");
        assert_eq!(
            function_bodies("create or replace function public.f() returns int\nas $$\n select 1;  \n$$;")[0].1,
            body_digest("select 1;"),
            "the body between the dollar quotes, blank space around it and at line ends left out"
        );
        assert_eq!(body_digest("a \r\n\tb\t\n"), body_digest("a\n\tb"), "an editor's line ends");
        assert_ne!(body_digest("a\nb"), body_digest("a\n b"), "indentation counts");
    }

    #[test]
    fn an_installed_function_with_another_body_than_the_files_is_a_problem() {
        let e = expectations(&settings(&[("UPLOAD_TABLES", "todos")]), &[]);
        let (_, current) = made_by("powersync_upload_row_key").unwrap();
        let with_body = |hash: &str| {
            let mut f = function(ROW_KEY, true, &["authenticated", "service_role"]);
            f["body_sha256"] = json!(hash);
            f
        };
        let findings = check_catalog(&e, &answer(json!([]), json!([with_body("0ld")])), "u");
        let outdated: Vec<&Finding> = findings.iter().filter(|f| f.problem.contains("is not the one")).collect();
        assert_eq!(outdated.len(), 1, "{findings:?}");
        assert_eq!(outdated[0].severity, Severity::Blocking);
        assert!(
            outdated[0].problem.contains("sql/atomic_upload.sql")
                && outdated[0].fix.contains("run sql/atomic_upload.sql again")
        );
        let findings = check_catalog(&e, &answer(json!([]), json!([with_body(&current)])), "u");
        assert!(!findings.iter().any(|f| f.problem.contains("is not the one")), "{findings:?}");
        // the dead-letter tools' functions: a warning, as their absence is
        let dead_letters = expectations(
            &settings(&[("UPLOAD_TABLES", "todos"), ("UPLOAD_DEAD_LETTER_TABLE", "powersync_dead_letters")]),
            &[],
        );
        let mut replay = function(REPLAY, true, &["service_role"]);
        replay["body_sha256"] = json!("0ld");
        let findings = check_catalog(&dead_letters, &answer(json!([]), json!([replay])), "u");
        let outdated: Vec<&Finding> = findings.iter().filter(|f| f.problem.contains("is not the one")).collect();
        assert_eq!(outdated.len(), 1, "{findings:?}");
        assert_eq!(outdated[0].severity, Severity::Warning);
        // sql/doctor.sql before body_sha256: it cannot compare, and says so once
        let mut old = function(ROW_KEY, true, &["authenticated"]);
        old.as_object_mut().unwrap().remove("body_sha256");
        let findings = check_catalog(&e, &answer(json!([]), json!([old.clone(), old])), "u");
        assert!(!findings.iter().any(|f| f.problem.contains("is not the one")), "{findings:?}");
        let outdated: Vec<&Finding> =
            findings.iter().filter(|f| f.problem.contains("cannot compare the installed functions")).collect();
        assert_eq!(outdated.len(), 1, "{findings:?}");
        assert_eq!(outdated[0].severity, Severity::Warning);
    }

    /// A function as a current sql/doctor.sql answers it: an existing one with the body digest
    /// of this checkout's file.
    fn function(signature: &str, exists: bool, roles: &[&str]) -> Value {
        let execute: serde_json::Map<String, Value> = ["anon", "authenticated", "service_role"]
            .iter()
            .map(|r| (r.to_string(), json!(roles.contains(r))))
            .collect();
        let name = signature.trim_start_matches("public.").split('(').next().unwrap_or_default();
        let body = made_by(name).filter(|_| exists).map(|(_, digest)| digest);
        let mut f = json!({"signature": signature, "exists": exists, "execute": execute});
        if let Some(body) = body {
            f["body_sha256"] = json!(body);
        }
        f
    }

    #[test]
    fn rls_mode_with_dead_letters_and_atomic_expects_tables_functions_and_role() {
        let e = expectations(
            &settings(&[
                ("UPLOAD_TABLES", "todos,lists"),
                ("UPLOAD_DEAD_LETTER_TABLE", "powersync_dead_letters"),
                ("UPLOAD_ATOMIC", "true"),
            ]),
            &[],
        );
        assert_eq!(e.role, "authenticated");
        let names: Vec<&str> = e.tables.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            ["lists", "todos", "powersync_upload_ledger", "powersync_upload_ledger_settings", "powersync_dead_letters"]
        );
        assert_eq!(
            e.functions(),
            [
                "public.powersync_apply_transaction(jsonb, text, text, text, text, boolean)".to_string(),
                LEDGER_CLAIM.into(),
                LEDGER_DEAD_LETTER.into(),
                LEDGER_UNCHANGED.into(),
                LEDGER_ROWS.into(),
                ROW_KEY.into(),
                NUMBER_KEY.into(),
                POLICY_GAP.into(),
                RECORD.into(),
                REPLAY.into(),
                DISCARD.into(),
                LEDGER_APPLIED_SINCE.into()
            ]
        );
        let r = catalog_request("https://p.supabase.co", "sb_secret_k", &e);
        assert_eq!(r.url, "https://p.supabase.co/rest/v1/rpc/powersync_doctor");
        assert_eq!(
            r.body.as_ref().unwrap()["tables"][0],
            json!({"schema": "public", "name": "lists", "columns": ["id"]})
        );
    }

    #[test]
    fn service_mode_checks_the_owner_column_as_service_role_and_rest_only_skips_atomic() {
        let e = expectations(&settings(&SERVICE_MODE), &["app.notes".to_string()]);
        assert_eq!(e.role, "service_role");
        assert!(!e.rls_mode);
        assert_eq!(
            e.tables[0],
            TableCheck {
                schema: "app".into(),
                name: "notes".into(),
                columns: vec!["id".into(), "user_id".into()],
                kind: TableKind::Uploaded,
                conversions: vec![],
                owner_column: Some("user_id".into()),
            }
        );
        assert_eq!(e.tables.len(), 2);
        assert!(e.functions().is_empty());
    }

    #[test]
    fn a_healthy_catalog_has_no_findings() {
        let e = expectations(
            &settings(&[("UPLOAD_TABLES", "todos"), ("UPLOAD_DEAD_LETTER_TABLE", "powersync_dead_letters")]),
            &[],
        );
        let all = ["DELETE", "INSERT", "SELECT", "UPDATE"];
        let tables = json!([
            table("todos", &all, true),
            table("powersync_upload_ledger", &[], true),
            table("powersync_upload_ledger_settings", &[], true),
            table("powersync_dead_letters", &["SELECT"], true)
        ]);
        let functions = json!(e
            .functions()
            .iter()
            .map(|s| function(s, true, &["authenticated", "service_role"]))
            .collect::<Vec<_>>());
        assert_eq!(check_catalog(&e, &answer(tables, functions), "u"), vec![]);
    }

    #[test]
    fn column_only_grants_writable_bridge_tables_and_a_service_role_under_rls_are_each_named() {
        let all = ["DELETE", "INSERT", "SELECT", "UPDATE"];
        let e = expectations(&settings(&[("UPLOAD_TABLES", "profiles"), ("UPLOAD_ATOMIC", "true")]), &[]);
        let mut profiles = table("profiles", &all, true);
        profiles["column_only"] = json!({"anon": [], "authenticated": ["UPDATE"], "service_role": []});
        let mut ledger = table("powersync_upload_ledger", &[], true);
        ledger["privileges"]["authenticated"] = json!(["INSERT", "SELECT"]);
        let tables = json!([profiles, ledger, table("powersync_upload_ledger_settings", &[], true)]);
        let functions = json!(e
            .functions()
            .iter()
            .map(|s| function(s, true, &["authenticated", "service_role"]))
            .collect::<Vec<_>>());
        let findings = check_catalog(&e, &answer(tables, functions), "u");
        assert_eq!(findings.len(), 2, "{findings:?}");
        assert_eq!(findings[0].severity, Severity::Warning);
        assert!(findings[0].problem.starts_with("authenticated holds UPDATE on only some columns of public.profiles"));
        assert!(findings[0].fix.contains("grant update on table public.profiles to authenticated;"));
        assert_eq!(findings[1].severity, Severity::Blocking);
        assert!(findings[1].problem.starts_with("authenticated may INSERT public.powersync_upload_ledger directly"));
        assert!(findings[1].fix.starts_with("run sql/atomic_upload.sql again"));

        let service = expectations(&settings(&SERVICE_MODE), &[]);
        let with = |bypassrls: Value| {
            let mut body: Value =
                serde_json::from_str(&answer(json!([table("profiles", &all, true)]), json!([])).body).expect("json");
            if !bypassrls.is_null() {
                body["bypassrls"] = bypassrls;
            }
            check_catalog(&service, &Response { status: 200, body: body.to_string() }, "u")
        };
        assert_eq!(with(json!({"service_role": true})), vec![]);
        let under_rls = with(json!({"service_role": false}));
        assert_eq!(under_rls.len(), 1);
        assert_eq!(under_rls[0].severity, Severity::Blocking);
        assert!(under_rls[0].problem.starts_with("service_role does not bypass row-level security"));
        assert_eq!(with(Value::Null)[0].severity, Severity::Warning, "an outdated doctor.sql says so");
    }

    #[test]
    fn missing_grant_rls_off_unpublished_and_missing_table_each_say_their_fix() {
        let e = expectations(&settings(&[("UPLOAD_TABLES", "todos,lists,gone"), ("UPLOAD_ATOMIC", "false")]), &[]);
        let mut unpublished = table("todos", &["DELETE", "INSERT", "SELECT", "UPDATE"], false);
        unpublished["published"] = json!(false);
        let tables = json!([{"schema": "public", "name": "gone", "exists": false}, table("lists", &["SELECT"], true), unpublished]);
        let findings = check_catalog(&e, &answer(tables, json!([])), "u");
        assert_eq!(
            findings[0],
            blocking(
                "uploaded table public.gone does not exist",
                "create it, or remove 'gone' from UPLOAD_TABLES / --tables"
            )
        );
        assert_eq!(findings[1].severity, Severity::Blocking);
        assert!(findings[1].problem.starts_with("authenticated lacks DELETE, INSERT, UPDATE on public.lists"));
        assert_eq!(findings[1].fix, "grant select, insert, update, delete on table public.lists to authenticated;");
        assert_eq!(
            findings[2].fix,
            "alter table public.todos enable row level security; (and add policies for select, insert, update and delete to authenticated, each keeping to the user's rows)"
        );
        assert_eq!(
            (findings[3].severity, findings[3].fix.as_str()),
            (Severity::Warning, "alter publication powersync add table public.todos;")
        );
        assert_eq!(findings.len(), 4);
    }

    #[test]
    fn functions_missing_or_not_granted_block_writes_unless_only_the_tools_need_them() {
        let e = expectations(&settings(&[("UPLOAD_DEAD_LETTER_TABLE", "powersync_dead_letters")]), &[]);
        let mut dl = table("powersync_dead_letters", &[], true);
        dl["missing_columns"] = json!(["discarded_at"]);
        let tables = json!([
            table("powersync_upload_ledger", &[], true),
            table("powersync_upload_ledger_settings", &[], true),
            dl
        ]);
        let functions = json!([
            function("public.powersync_apply_transaction(jsonb, text, text, text, text, boolean)", false, &[]),
            function(LEDGER_CLAIM, true, &["service_role"]),
            function(RECORD, true, &["service_role"]),
            function(REPLAY, true, &[]),
            function(DISCARD, false, &[]),
        ]);
        let findings = check_catalog(&e, &answer(tables, functions), "u");
        let summary: Vec<(Severity, &str)> = findings.iter().map(|f| (f.severity, f.problem.as_str())).collect();
        assert_eq!(
            summary[0],
            (Severity::Blocking, "table public.powersync_dead_letters is outdated (no column discarded_at)")
        );
        assert_eq!(summary[1].0, Severity::Warning); // service_role cannot read the table
                                                     // auto mode: a missing atomic function falls back to REST
        assert_eq!(summary[2], (Severity::Warning, "public.powersync_apply_transaction(jsonb, text, text, text, text, boolean) is missing: uploads go through REST requests, not all-or-nothing"));
        assert_eq!(summary[3].0, Severity::Blocking);
        assert!(summary[3].1.starts_with("authenticated may not execute public.powersync_upload_ledger_claim"));
        assert_eq!(findings[3].fix, "run sql/atomic_upload.sql again, or: grant execute on function public.powersync_upload_ledger_claim to authenticated;");
        assert_eq!(summary[4].0, Severity::Blocking);
        assert!(summary[4].1.starts_with("authenticated may not execute public.powersync_record_dead_letter"));
        assert!(findings[4].fix.starts_with("run sql/dead_letter.sql again"), "{}", findings[4].fix);
        assert_eq!((summary[5].0, summary[6].0), (Severity::Warning, Severity::Warning));
        assert_eq!(findings.len(), 7);
    }

    #[test]
    fn atomic_always_makes_a_missing_function_blocking() {
        let e = expectations(&settings(&[("UPLOAD_ATOMIC", "true")]), &[]);
        let tables =
            json!([table("powersync_upload_ledger", &[], true), table("powersync_upload_ledger_settings", &[], true)]);
        let functions = json!([
            function("public.powersync_apply_transaction(jsonb, text, text, text, text, boolean)", false, &[]),
            function(LEDGER_CLAIM, true, &["authenticated"])
        ]);
        let findings = check_catalog(&e, &answer(tables, functions), "u");
        assert_eq!(findings.len(), 1);
        assert_eq!(findings[0].severity, Severity::Blocking);
        assert_eq!(findings[0].fix, "run sql/atomic_upload.sql (again: it upgrades in place)");
    }

    #[test]
    fn ledger_without_dead_letter_records_or_their_lookup_grant_is_named_with_its_fix() {
        let e = expectations(&settings(&[("UPLOAD_ATOMIC", "true")]), &[]);
        let mut ledger = table("powersync_upload_ledger", &[], true);
        ledger["missing_columns"] = json!(["dead_letter_id"]);
        let tables = json!([ledger, table("powersync_upload_ledger_settings", &[], true)]);
        let functions = json!([
            function(
                "public.powersync_apply_transaction(jsonb, text, text, text, text, boolean)",
                true,
                &["authenticated"]
            ),
            function(LEDGER_CLAIM, true, &["authenticated"]),
            function(LEDGER_DEAD_LETTER, true, &["service_role"]),
        ]);
        let findings = check_catalog(&e, &answer(tables, functions), "u");
        let summary: Vec<(Severity, &str, &str)> =
            findings.iter().map(|f| (f.severity, f.problem.as_str(), f.fix.as_str())).collect();
        assert_eq!(
            summary,
            vec![
                (
                    Severity::Blocking,
                    "table public.powersync_upload_ledger is outdated (no column dead_letter_id)",
                    "run sql/atomic_upload.sql again (it upgrades in place, keeping rows)"
                ),
                (
                    Severity::Blocking,
                    "authenticated may not execute public.powersync_upload_ledger_dead_letter(text, text, text): \
                     uploads that need it stay queued (42501)",
                    "run sql/atomic_upload.sql again, or: grant execute on function public.powersync_upload_ledger_dead_letter to authenticated;"
                ),
            ]
        );
    }

    #[test]
    fn without_dead_letters_the_ledgers_reject_function_is_expected_and_its_absence_named() {
        let e = expectations(&settings(&[("UPLOAD_ATOMIC", "true")]), &[]);
        assert!(e.functions().contains(&LEDGER_REJECT.to_string()));
        let with_letters = expectations(&settings(&[("UPLOAD_DEAD_LETTER_TABLE", "powersync_dead_letters")]), &[]);
        assert!(!with_letters.functions().contains(&LEDGER_REJECT.to_string()), "the recorder guards instead");
        let tables =
            json!([table("powersync_upload_ledger", &[], true), table("powersync_upload_ledger_settings", &[], true)]);
        let installed = |reject: Value| json!(atomic_functions_and(vec![reject]));
        let findings = check_catalog(&e, &answer(tables.clone(), installed(function(LEDGER_REJECT, false, &[]))), "u");
        assert_eq!(findings.len(), 1, "{findings:?}");
        assert_eq!(findings[0].severity, Severity::Warning);
        assert!(findings[0].problem.contains("late can still apply it"), "{}", findings[0].problem);
        assert_eq!(findings[0].fix, "run sql/atomic_upload.sql again");
        // installed but not executable: the rejected transaction waits (42501), as for any GRANT
        let findings = check_catalog(&e, &answer(tables, installed(function(LEDGER_REJECT, true, &[]))), "u");
        assert_eq!((findings.len(), findings[0].severity), (1, Severity::Blocking), "{findings:?}");
        assert!(findings[0]
            .fix
            .contains("grant execute on function public.powersync_upload_ledger_reject to authenticated"));
    }

    #[test]
    fn with_the_rest_fallback_the_ledgers_applied_via_rest_function_is_expected_and_its_absence_named() {
        // UPLOAD_ATOMIC unset: a transaction whose atomic call timed out goes through REST, and is
        // recorded so that a late call of it applies nothing; UPLOAD_ATOMIC=true has no fallback.
        let e = expectations(&settings(&[]), &[]);
        assert!(e.functions().contains(&LEDGER_APPLIED_VIA_REST.to_string()), "{:?}", e.functions());
        let always = expectations(&settings(&[("UPLOAD_ATOMIC", "true")]), &[]);
        assert!(!always.functions().contains(&LEDGER_APPLIED_VIA_REST.to_string()));
        let tables =
            json!([table("powersync_upload_ledger", &[], true), table("powersync_upload_ledger_settings", &[], true)]);
        let installed =
            |f: Value| json!(atomic_functions_and(vec![f, function(LEDGER_REJECT, true, &["authenticated"])]));
        for signature in [LEDGER_REST_BEGIN, LEDGER_REST_ABANDON] {
            assert!(e.functions().contains(&signature.to_string()), "{:?}", e.functions());
            assert!(!always.functions().contains(&signature.to_string()));
        }
        let missing = installed(function(LEDGER_APPLIED_VIA_REST, false, &[]));
        let findings = check_catalog(&e, &answer(tables.clone(), missing), "u");
        assert_eq!(findings.len(), 1, "{findings:?}");
        assert_eq!(findings[0].severity, Severity::Warning);
        assert!(findings[0].problem.contains("can apply it again over later writes"), "{}", findings[0].problem);
        assert_eq!(findings[0].fix, "run sql/atomic_upload.sql again");
        let findings =
            check_catalog(&e, &answer(tables.clone(), installed(function(LEDGER_REST_BEGIN, false, &[]))), "u");
        assert_eq!((findings.len(), findings[0].severity), (1, Severity::Warning), "{findings:?}");
        assert!(findings[0].problem.contains("goes through REST unmarked"), "{}", findings[0].problem);
        let findings = check_catalog(&e, &answer(tables, installed(function(LEDGER_APPLIED_VIA_REST, true, &[]))), "u");
        assert_eq!((findings.len(), findings[0].severity), (1, Severity::Blocking), "{findings:?}");
    }

    #[test]
    fn with_dead_letters_and_the_function_a_replays_view_of_later_writes_is_expected() {
        let e = expectations(
            &settings(&[("UPLOAD_ATOMIC", "true"), ("UPLOAD_DEAD_LETTER_TABLE", "powersync_dead_letters")]),
            &[],
        );
        assert!(e.functions().contains(&LEDGER_APPLIED_SINCE.to_string()));
        assert!(e.functions().contains(&REPLAY.to_string()));
        let without = expectations(&settings(&[("UPLOAD_ATOMIC", "true")]), &[]);
        assert!(!without.functions().contains(&LEDGER_APPLIED_SINCE.to_string()), "no dead letters, no replay");
        let tables = json!([
            table("powersync_upload_ledger", &[], true),
            table("powersync_upload_ledger_settings", &[], true),
            table("powersync_dead_letters", &["SELECT"], true)
        ]);
        let installed = |since: Value| {
            json!(atomic_functions_and(vec![
                function(RECORD, true, &["authenticated"]),
                function(REPLAY, true, &["service_role"]),
                function(DISCARD, true, &["service_role"]),
                since,
            ]))
        };
        let healthy = check_catalog(
            &e,
            &answer(tables.clone(), installed(function(LEDGER_APPLIED_SINCE, true, &["service_role"]))),
            "u",
        );
        assert!(healthy.is_empty(), "{healthy:?}");
        let findings = check_catalog(&e, &answer(tables, installed(function(LEDGER_APPLIED_SINCE, false, &[]))), "u");
        assert_eq!((findings.len(), findings[0].severity), (1, Severity::Warning), "{findings:?}");
        assert!(findings[0].problem.contains("goes over their rows"), "{}", findings[0].problem);
        assert_eq!(findings[0].fix, "run sql/atomic_upload.sql again");
    }

    #[test]
    fn no_catalog_answer_says_why_and_blocks() {
        let e = expectations(&settings(&[]), &[]);
        let missing = Response {
            status: 404,
            body: r#"{"code":"PGRST202","message":"Could not find the function public.powersync_doctor"}"#.into(),
        };
        let f = check_catalog(&e, &missing, "u");
        assert_eq!(f.len(), 1);
        assert!(f[0].fix.starts_with("run sql/doctor.sql"));
        let down =
            check_catalog(&e, &Response { status: 0, body: "connection refused".into() }, "https://x.supabase.co");
        assert_eq!(
            down[0].problem,
            "Supabase is not reachable at https://x.supabase.co: no answer (connection refused)"
        );
        let bad_key =
            check_catalog(&e, &Response { status: 401, body: r#"{"message":"Invalid API key"}"#.into() }, "u");
        assert!(bad_key[0].fix.contains("service_role"));
        let no_publication = answer(
            json!([table("powersync_upload_ledger", &[], true), table("powersync_upload_ledger_settings", &[], true)]),
            json!([]),
        );
        let mut v = no_publication.json().unwrap();
        v["publication"] = json!(false);
        let f = check_catalog(&e, &Response { status: 200, body: v.to_string() }, "u");
        assert_eq!(f[0].severity, Severity::Warning);
        assert!(f[0].fix.starts_with("create publication powersync"));
    }

    #[test]
    fn health_reports_each_unconfigured_part_and_an_unreachable_worker() {
        let ok = Response { status: 200, body: json!({"status": "ok", "session": {"configured": true}, "powersync": {"configured": true}, "upload": {"configured": true}}).to_string() };
        assert_eq!(check_health("w", &ok), vec![]);
        let degraded = Response {
            status: 503,
            body: json!({"status": "degraded", "session": {"configured": true}, "powersync": {"configured": false, "problems": [{"name": "POWERSYNC_KEY_ID", "message": "missing"}]}, "upload": {"configured": true}}).to_string(),
        };
        let f = check_health("w", &degraded);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].problem, "the worker's powersync settings are not usable: POWERSYNC_KEY_ID: missing");
        let down = check_health("http://w", &Response { status: 0, body: "refused".into() });
        assert_eq!(down[0].problem, "the worker is not reachable at http://w: no answer (refused)");
        assert_eq!(check_health("w", &Response { status: 200, body: "<html>".into() })[0].severity, Severity::Blocking);
    }

    #[test]
    fn worker_jwks_must_hold_the_configured_key() {
        let jwks = Response { status: 200, body: r#"{"keys":[{"kid":"k1"}]}"#.into() };
        assert_eq!(check_worker_jwks("w", &jwks, Some("k1")), vec![]);
        assert!(check_worker_jwks("w", &jwks, Some("k2"))[0].problem.contains("does not have the key k2"));
        assert!(check_worker_jwks("w", &Response { status: 200, body: r#"{"keys":[]}"#.into() }, None)[0]
            .problem
            .contains("has no keys"));
        assert!(check_worker_jwks("w", &Response { status: 503, body: "{}".into() }, None)[0]
            .problem
            .contains("does not serve a JWKS"));
    }

    #[test]
    fn session_keys_need_a_jwks_or_a_secret_that_signed_the_api_keys() {
        let jwks = Response { status: 200, body: r#"{"keys":[{"kid":"a"}]}"#.into() };
        let down = Response { status: 0, body: "refused".into() };
        assert_eq!(check_session_keys("j", &jwks, true, Some(true)), vec![]);
        assert_eq!(check_session_keys("j", &jwks, false, None), vec![]);
        let wrong_secret = check_session_keys("j", &jwks, true, Some(false));
        assert_eq!((wrong_secret.len(), wrong_secret[0].severity), (1, Severity::Blocking));
        assert_eq!(check_session_keys("j", &down, true, Some(true))[0].severity, Severity::Warning);
        assert_eq!(check_session_keys("j", &down, false, None)[0].severity, Severity::Blocking);
    }

    #[test]
    fn report_lists_problems_first_and_exits_non_zero_only_when_writes_are_blocked() {
        let (text, code) = report(&[warning("w", "fw"), blocking("b", "fb")]);
        assert_eq!(text, "PROBLEM: b\n  fix: fb\nwarning: w\n  fix: fw\ndoctor: 1 problem(s) that lose or block writes, 1 warning(s)");
        assert_eq!(code, 1);
        assert_eq!(report(&[warning("w", "fw")]).1, 0);
        assert_eq!(report(&[]), ("doctor: ready (0 warning(s))".to_string(), 0));
    }
}
