//! Plans: a transaction turned into the ordered PostgREST requests that apply it.
//!
//! Every entry is idempotent by construction, which is what makes retries safe:
//!
//! - PUT → upsert by id: `POST <SUPABASE_URL>/rest/v1/<table>?on_conflict=id` with a JSON array
//!   of rows `{"id": <id>, ...data}` and `Prefer: resolution=merge-duplicates,return=minimal`.
//!   `count=exact` makes PostgREST answer with the number of rows written (`Content-Range: */n`),
//!   which `delivery` requires of every write's answer (a 2xx without it is not PostgREST's).
//!   The conflict target is named (as the atomic function's `on conflict (id)` does): without
//!   it PostgREST uses the primary key, so on a table whose `id` is unique but not the primary
//!   key a PUT of an existing row (a retry) would fail with 23505. No `?columns=`: merged rows
//!   always have identical keys.
//! - PATCH → `PATCH …/<table>?id=eq.<id>` with the data as body and
//!   `Prefer: return=minimal,count=exact`. A PATCH without data sends nothing (there is nothing
//!   to change) and counts as applied.
//! - DELETE → `DELETE …/<table>?id=eq.<id>` with `Prefer: return=minimal,count=exact`.
//! - PATCH and DELETE answer with the number of rows they changed (`Content-Range: 0-0/1`,
//!   `*/1`; `*/0` for none): an entry that changed no row is reported `unchanged` (see
//!   `delivery`).
//!
//! Consecutive entries of one transaction are merged into one request only where the result is
//! identical to sending them one by one, never across a different operation and never reordered:
//!
//! - PUTs to the same table whose rows have the same set of keys → one bulk upsert (in a bulk
//!   upsert a key missing from one row would overwrite that column with NULL). Postgres refuses
//!   to upsert the same row twice in one statement (21000), so a PUT whose id may be the same
//!   value as one already in the group (equal as text, or once the database casts it to the id
//!   column's type: a uuid in another case or form, an integer with a leading zero or a sign,
//!   trailing spaces: see [`cast_key`]) starts a new group. (Keeping only the later row would
//!   not equal applying them in order when the earlier one is refused: by RLS, a foreign key or
//!   a check. The fault soak found exactly that.) Should the database still answer 21000 (a
//!   cast this rule does not foresee), the driver sends the group again in halves, recursively,
//!   which equals applying its rows in order (see `delivery`);
//! - DELETEs to the same table → one `id=in.(…)` (a DELETE of an id the group names already
//!   starts the next one: it changes nothing, which its own count says);
//! - PATCHes to the same table with identical data → one `id=in.(…)`;
//! - an `in.(…)` list stops growing before the URL passes [`filter::MAX_URL_BYTES`];
//! - PATCHes without data send nothing, so they neither start nor end a group.
//!
//! A merged request refused whole is sent again in halves, recursively, while the budget allows
//! (see `delivery` and [`halves`]): that equals applying its entries in order and names the entry
//! at fault. Without room for them, the failure is reported at the group's first entry.
//!
//! Service mode (`UPLOAD_MODE=service`) adds, because the service key bypasses RLS:
//! - `&<owner>=eq.<user id>` on every PATCH and DELETE, so only the caller's rows are touched;
//! - the owner column forced on PUT rows and removed from PATCH data (see [`row`]);
//! - before each bulk upsert, an ownership check
//!   `GET …/<table>?select=id&id=in.(…)&<owner>=isdistinct.<user id>`: an upsert would otherwise
//!   take over another user's row that has the same id. Any row it returns fails the transaction
//!   with 42501 before anything is written. (The check and the upsert are two requests, so a row
//!   created in between by someone else with the same id could still be overwritten; with random
//!   ids that race needs the other user's id in advance. Atomic mode has no such gap.)
//!
//! A transaction whose requests would not fit in the whole subrequest budget is sent as one
//! atomic call too ([`atomic_request`]), whatever the mode, when the function is installed.
//!
//! Atomic mode (`UPLOAD_ATOMIC=true`, or unset with the function installed) sends a whole transaction as one
//! `POST …/rest/v1/rpc/<function>` with `{"ops":[{"op","table","id","data"?}, …]}` (the same
//! rows and data as above, one op per entry so op indexes are entry indexes; no `data` for
//! DELETE) and, in service mode, `"owner_column"` and `"owner_id"`; when the upload carried a
//! `client_id` and the transaction has an id, `"client_id"` and `"transaction_id"` (as text), so
//! the function applies it exactly once (a re-send answers `already_applied`).
//!
//! Tables and ids are checked before anything is sent: a name that is not a plain identifier
//! (`invalid_table_name`), one of the bridge's own tables (`table_not_allowed`), a column name no
//! column can have (`invalid_column_name`: empty, not valid text, over 63 bytes, or holding
//! U+0000), an id that is empty or contains U+0000 (`invalid_id`: PostgreSQL cannot store U+0000,
//! and PostgREST would cut it short inside `in.(…)`, touching another row), or JSON-column text
//! that is not JSON (`invalid_json`) fails its transaction as a fatal error without any request. A table outside `UPLOAD_TABLES` (`table_not_in_upload_tables`)
//! is refused without any request too, but waits: the list lagging behind an app release is the
//! operator's to fix, as a table missing from the schema is.

use std::ops::Range;

use serde_json::Value;

use super::crud::{Entry, Op, Transaction, ENTRIES_DIGEST_HEADER};
use super::filter::{self, InList};
use super::id_set::{self, IdSet};
use super::outcome::FailedOperation;
use super::row::{self, Columns};
use super::settings::{
    is_filter_column, is_identifier, AtomicMode, UploadSettings, WriteMode, BRIDGE_TABLES, MAX_IDENTIFIER_BYTES,
};
use super::Caller;
use crate::credentials::clipped;
use crate::http::{HttpRequest, Method};

/// `Prefer` of an upsert: merge into existing rows, answer without a body but with the number of
/// rows written.
pub const PREFER_UPSERT: &str = "resolution=merge-duplicates,return=minimal,count=exact";
/// `Prefer` of PATCH and DELETE: answer without a body but with the number of rows changed.
pub const PREFER_COUNTED: &str = "return=minimal,count=exact";
/// `Prefer` of dead-letter inserts.
pub const PREFER_MINIMAL: &str = "return=minimal";

/// What a successful (2xx) answer to a planned request must additionally satisfy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// A PATCH or DELETE of the rows `id=in.(…)`: a 2xx must carry PostgREST's count of changed
    /// rows. `row_entries` are the entries whose ids it names, in order (a PATCH without data in
    /// between is not among them); `distinct_ids` how many different rows those ids are (a
    /// request never names two spellings of one [`cast_key`], so each distinct id is one row):
    /// a count below it means some entries changed nothing.
    Filtered { row_entries: Vec<usize>, distinct_ids: usize },
    /// The service-mode ownership check before an upsert: the answer must be an empty JSON array.
    /// `ids` maps each checked id to its entry index, to report which entry is at fault.
    OwnerCheck { table: String, ids: Vec<(String, usize)> },
    /// The atomic RPC call: an error's hint may name the failing op (= entry index).
    Atomic,
    /// A PATCH or DELETE of one entry that applies only where the row still holds the previous
    /// values the client saw (`UPLOAD_CONFLICT_DETECTION`). A 2xx must carry PostgREST's count;
    /// when it is 0, `current` (`GET …?select=*&id=eq.<id>`) tells a gone or hidden row (no row:
    /// `unchanged`) from a changed one, and `same` (PATCH only: `GET …?select=id&id=eq.<id>&<the
    /// new values>`) a row that already holds this PATCH's values (its own earlier, lost-answer
    /// application: applied) from a conflict, and `seen` (`GET …?select=id&id=eq.<id>&<the
    /// previous values>`) a row nobody changed (a policy for the write, the row readable, or a
    /// trigger refused it: `unchanged`) from a conflict. See `delivery`.
    Conditional { current: HttpRequest, same: Option<HttpRequest>, seen: HttpRequest },
    /// A bulk upsert; `row_entries[i]` is the entry index of row `i` of the body. Refused whole
    /// (21000, two rows are one row after casting, or any fatal error), the driver splits it
    /// ([`halves`]). A 2xx must carry PostgREST's count.
    Upsert { row_entries: Vec<usize> },
}

/// One request of a plan, with the entries it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedRequest {
    pub request: HttpRequest,
    /// The transaction's entries this request applies (first..last merged entry). A failure is
    /// reported at `entries.start`.
    pub entries: Range<usize>,
    pub check: Check,
}

/// Plans one transaction, as one atomic call with `UPLOAD_ATOMIC=true`, else as REST requests.
/// An error is the transaction's fatal failure, found before any request.
pub fn plan_transaction(
    transaction: &Transaction,
    settings: &UploadSettings,
    caller: &Caller,
) -> Result<Vec<PlannedRequest>, FailedOperation> {
    plan_transaction_as(transaction, settings, caller, settings.atomic == AtomicMode::Always)
}

/// [`plan_transaction`] with the route chosen by the caller: one atomic call (`atomic`) or REST
/// requests (see `atomic_function` for how an upload chooses).
pub fn plan_transaction_as(
    transaction: &Transaction,
    settings: &UploadSettings,
    caller: &Caller,
    atomic: bool,
) -> Result<Vec<PlannedRequest>, FailedOperation> {
    for (index, entry) in transaction.entries.iter().enumerate() {
        check_table(index, &entry.table, settings)?;
        check_id(index, &entry.id)?;
        check_columns(index, entry)?;
        check_json_text(index, entry, settings)?;
    }
    let context = Context::new(settings, caller);
    if atomic {
        return Ok(context.atomic(transaction).into_iter().collect());
    }
    let put_before = put_before(transaction, settings);
    let mut planner = Planner { context, requests: Vec::new(), group: None };
    for (index, entry) in transaction.entries.iter().enumerate() {
        match entry.op {
            Op::Put => {
                let row = row::put_row(entry, settings, &caller.user_id);
                planner.add_put(index, &entry.table, &entry.id, row);
            }
            Op::Patch => {
                let data = row::patch_data(entry, settings);
                if data.is_empty() {
                    continue;
                }
                match (!put_before[index]).then(|| planner.context.conditions(entry, Some(&data))).flatten() {
                    Some(conditions) => planner.add_conditional(index, entry, Some(data.to_json_string()), conditions),
                    None => planner.add_filtered(index, &entry.table, &entry.id, Some(data.to_json_string())),
                }
            }
            Op::Delete => match (!put_before[index]).then(|| planner.context.conditions(entry, None)).flatten() {
                Some(conditions) => planner.add_conditional(index, entry, None, conditions),
                None => planner.add_filtered(index, &entry.table, &entry.id, None),
            },
        }
    }
    planner.flush();
    Ok(planner.requests)
}

/// The PATCH entries of `transaction` whose every column the bridge leaves out: `id` (a PATCH
/// never renames a row) or, in service mode, the owner column (which the bridge never changes:
/// [`row::patch_data`]). Nothing is sent for them, so what the client asked for changed no row:
/// `unchanged`. (A PATCH without data asked for nothing: applied as it is.)
pub fn patches_writing_nothing(transaction: &Transaction, settings: &UploadSettings) -> Vec<usize> {
    let owner = match &settings.mode {
        WriteMode::Service { owner_column, .. } => Some(owner_column.as_str()),
        WriteMode::Rls => None,
    };
    let kept_out = |name: &str| name == "id" || Some(name) == owner;
    let dropped = |entry: &Entry| !entry.data.is_empty() && entry.data.iter().all(|(name, _)| kept_out(name));
    let entries = transaction.entries.iter().enumerate();
    entries.filter(|(_, entry)| entry.op == Op::Patch && dropped(entry)).map(|(index, _)| index).collect()
}

/// For each entry of `transaction`, whether an earlier entry of it PUT the same row (same table,
/// same [`CastKey`], the planner's key for [`cast_key`]: conservative, so two ids the database
/// might take for one count as one).
/// Such an entry compares nothing (its previous values are not sent as conditions or `expect`):
/// a PUT never compares, it replaces the row as the client holds it, so the client's previous
/// values for a later entry on that row describe its own write, not a state another writer could
/// have changed since the client saw it. Comparing them would only find what the PUT did not
/// set, and on the REST route a re-send after a lost answer could not repeat it: a row the first
/// attempt deleted comes back from the re-sent PUT with the columns it does not set at their
/// defaults, and the re-sent compared entry would then read as a false conflict (the fault soak
/// found it). All false, without computing a key, when nothing is compared anyway (no conflict
/// detection, no previous values).
fn put_before(transaction: &Transaction, settings: &UploadSettings) -> Vec<bool> {
    if !settings.conflict_detection || transaction.entries.iter().all(|entry| entry.previous.is_none()) {
        return vec![false; transaction.entries.len()];
    }
    let mut put = id_set::new();
    transaction
        .entries
        .iter()
        .map(|entry| {
            let key = (entry.table.as_str(), CastKey::of(&entry.id));
            let before = put.contains(&key);
            if entry.op == Op::Put {
                put.insert(key);
            }
            before
        })
        .collect()
}

/// The transaction as one call of the atomic function, whatever the mode: how a transaction too
/// big for the subrequest budget is applied when the function is installed. `None` for a
/// transaction without entries. The checks of [`plan_transaction`] must have passed.
pub fn atomic_request(transaction: &Transaction, settings: &UploadSettings, caller: &Caller) -> Option<PlannedRequest> {
    Context::new(settings, caller).atomic(transaction)
}

/// Refuses ids no row can have: PostgreSQL text cannot hold U+0000, and PostgREST cuts each
/// value of an `in.(…)` list at the first NUL, so a merged PATCH or DELETE for `"a\u{0}b"` would
/// touch row `a`; and an empty id, which no row the SDK creates has (its ids are uuids): an app's
/// bug, refused for its own transaction (dead-lettered when set), not sent. Such an entry is
/// never sent.
fn check_id(index: usize, id: &str) -> Result<(), FailedOperation> {
    if id.is_empty() {
        return Err(FailedOperation::new(Some(index), "invalid_id", "the id is empty; the entry was not sent"));
    }
    if id.contains('\u{0}') {
        return Err(FailedOperation::new(
            Some(index),
            "invalid_id",
            "the id contains U+0000, which PostgreSQL cannot store; the entry was not sent",
        ));
    }
    Ok(())
}

/// Refuses column names no column can have: empty (as is a name whose escapes are no text, a lone
/// surrogate: see `crud`), holding U+0000, or longer than PostgreSQL's 63 bytes (it would cut
/// the name short, and the atomic function would write the column named by its first 63 bytes).
/// Sent, they would be refused as a column missing from the schema (`PGRST204`) or as a syntax
/// error (`42601` for an empty name in the atomic function), both the operator's to fix, so the
/// transaction would wait for ever. Such an entry is never sent.
fn check_columns(index: usize, entry: &Entry) -> Result<(), FailedOperation> {
    let invalid = |name: &str| name.is_empty() || name.len() > MAX_IDENTIFIER_BYTES || name.contains('\u{0}');
    match entry.data.iter().find(|(name, _)| invalid(name)) {
        Some((name, _)) => Err(FailedOperation::new(
            Some(index),
            "invalid_column_name",
            format!(
                "column name {:?} cannot name a column (empty, not valid text, longer than {MAX_IDENTIFIER_BYTES} \
                 bytes, or holding U+0000); the entry was not sent",
                crate::credentials::clipped(name, 80)
            ),
        )),
        None => Ok(()),
    }
}

/// Refuses a value of an `UPLOAD_JSON_COLUMNS` column that is text but not JSON text
/// ([`row::not_json_text`]): the column would store it as a JSON string without an error, so the
/// client's value would be altered, not written. The row itself is refused, as PostgreSQL
/// refuses `'[oops'::json` (22P02): fatal, never sent.
fn check_json_text(index: usize, entry: &Entry, settings: &UploadSettings) -> Result<(), FailedOperation> {
    match row::not_json_text(&entry.table, &entry.data, settings) {
        Some(column) => Err(FailedOperation::new(
            Some(index),
            "invalid_json",
            format!(
                "column {table}.{column} is in UPLOAD_JSON_COLUMNS but its value is not JSON text; the entry was \
                 not sent",
                table = entry.table
            ),
        )),
        None => Ok(()),
    }
}

/// The code of an entry whose table `UPLOAD_TABLES` does not list: retryable (`delivery`).
pub const TABLE_NOT_LISTED: &str = "table_not_in_upload_tables";

/// Refuses tables the bridge must not write.
fn check_table(index: usize, table: &str, settings: &UploadSettings) -> Result<(), FailedOperation> {
    if !is_identifier(table) {
        return Err(FailedOperation::new(
            Some(index),
            "invalid_table_name",
            format!("table name {table:?} is not a plain identifier (letters, digits, _)"),
        ));
    }
    let is_dead_letter = settings.dead_letter_table.as_deref() == Some(table);
    // The bridge's own tables (sql/atomic_upload.sql, sql/dead_letter.sql), whatever is set:
    // their grants and row-level security refuse a user's write (a refusal that would read as
    // the operator's missing GRANT), but not all of the service key's (it may update dead
    // letters); the atomic function refuses them too.
    if is_dead_letter || BRIDGE_TABLES.contains(&table) {
        return Err(FailedOperation::new(
            Some(index),
            "table_not_allowed",
            format!("uploads to table {table} are not allowed"),
        ));
    }
    if settings.tables.as_ref().is_some_and(|allowed| !allowed.contains(table)) {
        return Err(FailedOperation::new(
            Some(index),
            TABLE_NOT_LISTED,
            format!(
                "table {table} is not in UPLOAD_TABLES (names are compared exactly, case included); the \
                 upload waits until the operator adds it there"
            ),
        ));
    }
    Ok(())
}

/// What every request of a plan shares.
struct Context<'a> {
    settings: &'a UploadSettings,
    caller: &'a Caller,
    /// Service mode: (owner column, user id).
    owner: Option<(&'a str, &'a str)>,
}

impl<'a> Context<'a> {
    fn new(settings: &'a UploadSettings, caller: &'a Caller) -> Self {
        let owner = match &settings.mode {
            WriteMode::Rls => None,
            WriteMode::Service { owner_column, .. } => Some((owner_column.as_str(), caller.user_id.as_str())),
        };
        Context { settings, caller, owner }
    }

    fn table_url(&self, table: &str) -> String {
        format!("{}/rest/v1/{table}", self.settings.supabase_url)
    }

    /// A request with `apikey` and `Authorization` for the configured mode.
    fn request(&self, method: Method, url: String) -> HttpRequest {
        authorized(method, url, self.settings, self.caller)
    }

    /// `&<owner>=<operator>.<user id>` in service mode, empty otherwise.
    fn owner_condition(&self, operator: fn(&str) -> String) -> String {
        match self.owner {
            Some((column, user_id)) => format!("&{column}={}", operator(user_id)),
            None => String::new(),
        }
    }

    /// `&<owner>=eq.<user id>`: PATCH and DELETE touch only the caller's rows.
    fn owner_filter(&self) -> String {
        self.owner_condition(filter::eq)
    }

    /// Fixed URL length of a PATCH/DELETE (everything but the id filter value).
    fn filtered_url_len(&self, table: &str) -> usize {
        self.table_url(table).len() + "?id=".len() + self.owner_filter().len()
    }

    /// `&<owner>=isdistinct.<user id>`: the ownership check finds rows of other users.
    fn owner_check_suffix(&self) -> String {
        self.owner_condition(filter::is_distinct)
    }

    /// The ownership check of the rows `ids` ((id, entry)) of `table`, whose filter is `list`:
    /// `GET <table>?select=id&id=<list>&<owner>=isdistinct.<user id>`, covering `entries`.
    fn owner_check(
        &self,
        table: &str,
        list: &InList,
        ids: Vec<(String, usize)>,
        entries: Range<usize>,
    ) -> PlannedRequest {
        let url = format!("{}?select=id&id={}{}", self.table_url(table), list.filter(), self.owner_check_suffix());
        PlannedRequest {
            request: self.request(Method::Get, url),
            entries,
            check: Check::OwnerCheck { table: table.to_string(), ids },
        }
    }

    /// Fixed URL length of an ownership check (everything but the id filter value).
    fn owner_check_url_len(&self, table: &str) -> usize {
        self.table_url(table).len() + "?select=id&id=".len() + self.owner_check_suffix().len()
    }

    /// The conflict conditions of a PATCH (`data`: its columns as written) or DELETE (`None`),
    /// `None` when conflict detection is off, the entry has no previous values, or none applies.
    ///
    /// The checked columns: for a PATCH those it sets that have a previous value; for a DELETE
    /// every column with a previous value; never `id` (already the row filter), nor the owner
    /// column in service mode (already filtered), nor a name that is not a plain identifier
    /// or is a key PostgREST's query string reserves (it could not be a filter key:
    /// [`is_filter_column`]; the atomic function compares those), nor one whose previous value is
    /// an array or an object, or whose column is a JSON column ([`is_structured`]; the atomic
    /// function compares those). Each is
    /// `&<column>=is.null` for a null, else
    /// `&<column>=eq.<value>` (a string's text, a number's or boolean's JSON text, percent-encoded:
    /// PostgREST takes everything after `eq.` literally and PostgreSQL casts it to the column's
    /// type). Previous values pass through the same `UPLOAD_JSON_COLUMNS` / `UPLOAD_BOOLEAN_COLUMNS`
    /// conversions as data. A condition that would make the URL longer than
    /// [`filter::MAX_URL_BYTES`] is left out (that column is not compared).
    fn conditions(&self, entry: &Entry, data: Option<&Columns>) -> Option<Conditions> {
        let previous = entry.previous.as_ref().filter(|_| self.settings.conflict_detection)?;
        let previous = row::converted(&entry.table, previous, self.settings);
        let fixed = self.table_url(&entry.table).len() + "?select=id&id=".len() + filter::eq(&entry.id).len();
        let room = filter::MAX_URL_BYTES.saturating_sub(fixed + self.owner_filter().len());
        let mut conditions = Conditions::default();
        let mut left = room;
        let json = |column: &str| self.settings.json_columns.contains(&entry.table, column);
        for (column, old) in self
            .compared(&previous, data)
            .filter(|(column, old)| is_filter_column(column) && !json(column) && !is_structured(old))
        {
            let condition = column_condition(column, old);
            if condition.len() > left {
                continue;
            }
            left -= condition.len();
            conditions.previous.push_str(&condition);
        }
        // A PATCH's row "already holds the new values" only if it holds every column the PATCH
        // sets (not only the compared ones): otherwise a column without a previous value would be
        // lost. When one cannot be a filter (not an identifier, a reserved query key, or too
        // long, or set to an array or an object), there is no such check (a re-send of its own
        // write then reads as a conflict).
        if let Some(data) = data {
            let mut new = String::new();
            let all = data.iter().all(|(column, value)| {
                let condition = column_condition(column, value);
                let fits = is_filter_column(column)
                    && !json(column)
                    && !is_structured(value)
                    && new.len() + condition.len() <= room;
                if fits {
                    new.push_str(&condition);
                }
                fits
            });
            if all && !new.is_empty() {
                conditions.new = Some(new);
            }
        }
        (!conditions.previous.is_empty()).then_some(conditions)
    }

    /// The compared columns of a PATCH (`data`: its columns as written) or DELETE (`None`) with
    /// their previous values (`previous`, converted), raw JSON: for a PATCH those it sets that
    /// have a previous value; for a DELETE every column with a previous value; never `id`
    /// (already the row filter), nor the owner column in service mode (already filtered), nor a
    /// name that is not a plain identifier.
    fn compared<'c>(
        &self,
        previous: &'c Columns<'c>,
        data: Option<&'c Columns<'c>>,
    ) -> impl Iterator<Item = (&'c str, &'c str)> + 'c {
        let owner = self.owner.map(|(column, _)| column.to_string());
        // In name order (`Columns::names`), so each look-up is a binary search: a scan of the
        // data's names per previous value made a PATCH of n columns cost n² (a 1 MB body
        // held the isolate for seconds).
        let set: Option<Vec<&'c str>> = data.map(|data| data.names().collect());
        previous.iter().filter(move |(column, _)| {
            *column != "id"
                && owner.as_deref() != Some(*column)
                && is_identifier(column)
                && set.as_ref().is_none_or(|names| names.binary_search(column).is_ok())
        })
    }

    /// A PATCH's or DELETE's `"expect"` for the atomic function (see `sql/atomic_upload.sql`):
    /// `{"<column>": "<text>" | <array or object> | null}` for its compared columns, each text
    /// the one REST sends after `eq.` (see [`column_condition`]), an array or object as sent
    /// (compared as JSON); `None` without any.
    fn expect(&self, entry: &Entry, data: Option<&Columns>) -> Option<String> {
        let previous = entry.previous.as_ref().filter(|_| self.settings.conflict_detection)?;
        let previous = row::converted(&entry.table, previous, self.settings);
        let mut expect = String::from("{");
        for (column, old) in self.compared(&previous, data) {
            if expect.len() > 1 {
                expect.push(',');
            }
            row::push_json_string(&mut expect, column);
            expect.push(':');
            match condition_text(old) {
                // compared as JSON by the function (`to_jsonb(column)`), whatever the column's type
                Some(_) if is_structured(old) => expect.push_str(old),
                Some(text) => row::push_json_string(&mut expect, &text),
                None => expect.push_str("null"),
            }
        }
        expect.push('}');
        (expect.len() > 2).then_some(expect)
    }

    fn atomic(&self, transaction: &Transaction) -> Option<PlannedRequest> {
        if transaction.entries.is_empty() {
            return None;
        }
        // Written directly: the rows' values are the client's text, never rebuilt.
        let mut body = String::from("{\"ops\":[");
        let mut compares = false;
        let put_before = put_before(transaction, self.settings);
        for (i, entry) in transaction.entries.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            let data = written_data(entry, self.settings, &self.caller.user_id);
            write_op_fields(&mut body, entry, data.as_ref());
            // A PATCH with nothing to write is a no-op: nothing to compare either.
            let expect = match entry.op {
                Op::Put => None,
                _ if put_before[i] => None,
                Op::Patch => {
                    data.as_ref().filter(|data| !data.is_empty()).and_then(|data| self.expect(entry, Some(data)))
                }
                Op::Delete => self.expect(entry, None),
            };
            if let Some(expect) = expect {
                body.push_str(",\"expect\":");
                body.push_str(&expect);
                compares = true;
            }
            body.push('}');
        }
        body.push(']');
        if compares {
            // Also the version check: a copy of the function without this argument answers
            // PGRST202 (not found) rather than applying without comparing.
            body.push_str(",\"detect_conflicts\":true");
        }
        if let Some((column, user_id)) = self.owner {
            body.push_str(",\"owner_column\":");
            row::push_json_string(&mut body, column);
            body.push_str(",\"owner_id\":");
            row::push_json_string(&mut body, user_id);
        }
        let mut digest = None;
        if let (Some(client_id), Some(transaction_id)) = (&self.caller.client_id, ledger_id(transaction)) {
            body.push_str(",\"client_id\":");
            row::push_json_string(&mut body, client_id);
            body.push_str(",\"transaction_id\":");
            row::push_json_string(&mut body, &transaction_id);
            // The ledger's second key for this transaction, whatever the ops read (crud).
            digest = Some(transaction.entries_digest());
        }
        body.push('}');
        let url = format!("{}/rest/v1/rpc/{}", self.settings.supabase_url, self.settings.atomic_function);
        let mut request = self.request(Method::Post, url).json_body(body);
        if let Some(digest) = digest {
            request = request.header(ENTRIES_DIGEST_HEADER, digest);
        }
        Some(PlannedRequest { request, entries: 0..transaction.entries.len(), check: Check::Atomic })
    }
}

/// The ledger function that records a transaction reported rejected when no dead letter does
/// (sql/atomic_upload.sql): a late call of it then applies nothing.
pub const LEDGER_REJECT_FUNCTION: &str = "powersync_upload_ledger_reject";

/// The ledger function that records a transaction applied through REST requests after its atomic
/// call was cancelled by the statement timeout (sql/atomic_upload.sql): a late call of it then
/// applies nothing.
pub const LEDGER_APPLIED_VIA_REST_FUNCTION: &str = "powersync_upload_ledger_applied_via_rest";

/// The ledger function that marks a transaction as being applied through REST requests before
/// the statement-timeout fallback's first write (sql/atomic_upload.sql): meanwhile no atomic call
/// of it applies it (55P03), so none can land before the fallback's writes and be overwritten by
/// them; it answers the transaction as the ledger holds it instead when it does.
pub const LEDGER_REST_BEGIN_FUNCTION: &str = "powersync_upload_ledger_rest_begin";

/// The ledger function that ends that mark when the fallback ends retryable (sql/atomic_upload.sql);
/// the transaction then goes on through REST requests.
pub const LEDGER_REST_ABANDON_FUNCTION: &str = "powersync_upload_ledger_rest_abandon";

/// The header carrying that mark's token on the calls that end it (the ledger's record of the
/// transaction applied, or rejected; the dead letter): the ledger lets only the upload that made a
/// mark end it.
pub const REST_MARK_HEADER: &str = "X-PowerSync-Rest-Mark";

/// The call of ledger function `function` ([`LEDGER_REJECT_FUNCTION`],
/// [`LEDGER_APPLIED_VIA_REST_FUNCTION`], [`LEDGER_REST_BEGIN_FUNCTION`],
/// [`LEDGER_REST_ABANDON_FUNCTION`]) for `transaction`, made as its atomic call is (the
/// session's token, or the service key with the owner's id), with the digest of its entries and,
/// when any, the entries that changed no row (`p_unchanged`) and the REST fallback's mark
/// (`p_mark`): `None` when the ledger does not key it ([`ledger_keyed`]).
pub fn ledger_record_request(
    function: &str,
    transaction: &Transaction,
    (settings, caller): (&UploadSettings, &Caller),
    unchanged: &[usize],
    mark: Option<&str>,
) -> Option<HttpRequest> {
    let context = Context::new(settings, caller);
    let (client_id, transaction_id) = (caller.client_id.as_ref()?, ledger_id(transaction)?);
    let mut body = String::from("{\"p_client_id\":");
    row::push_json_string(&mut body, client_id);
    body.push_str(",\"p_transaction_id\":");
    row::push_json_string(&mut body, &transaction_id);
    if let Some((_, user_id)) = context.owner {
        body.push_str(",\"p_owner_id\":");
        row::push_json_string(&mut body, user_id);
    }
    if !unchanged.is_empty() {
        let indexes: Vec<String> = unchanged.iter().map(usize::to_string).collect();
        body.push_str(&format!(",\"p_unchanged\":[{}]", indexes.join(",")));
    }
    if let Some(mark) = mark {
        body.push_str(",\"p_mark\":");
        row::push_json_string(&mut body, mark);
    }
    body.push('}');
    let url = format!("{}/rest/v1/rpc/{function}", settings.supabase_url);
    Some(context.request(Method::Post, url).json_body(body).header(ENTRIES_DIGEST_HEADER, transaction.entries_digest()))
}

/// The call of [`LEDGER_REJECT_FUNCTION`] for `transaction` ([`ledger_record_request`]) with
/// `failure`, as reported to the client, as `p_rejection`: the ledger keeps it, and a later call
/// of the transaction is answered with it, as a dead letter's is. It fits in what the function
/// takes ([`MAX_KEPT_REJECTION_BYTES`]): a longer one keeps its index and code (`conflict` for a
/// conflict, which is how the answer's status is told) and the message clipped, without details
/// and hint. `None` for `failure`: the call without it (a ledger older than the argument).
pub fn ledger_reject_request(
    transaction: &Transaction,
    (settings, caller): (&UploadSettings, &Caller),
    failure: Option<&FailedOperation>,
) -> Option<HttpRequest> {
    let mut request = ledger_record_request(LEDGER_REJECT_FUNCTION, transaction, (settings, caller), &[], None)?;
    if let (Some(failure), Some(body)) = (failure, request.body.as_mut()) {
        body.pop(); // its closing brace
        body.push_str(",\"p_rejection\":");
        body.push_str(&kept_rejection(failure));
        body.push('}');
    }
    Some(request)
}

/// Largest `p_rejection` [`LEDGER_REJECT_FUNCTION`] takes, in bytes of its JSON text.
pub const MAX_KEPT_REJECTION_BYTES: usize = 8192;

/// `failure`'s JSON as the ledger keeps it: whole when it fits well within
/// [`MAX_KEPT_REJECTION_BYTES`] (PostgreSQL's text of it adds a space after each colon and
/// comma), else without details and hint and with the message clipped to 800 characters (at
/// most 6 bytes each escaped), the code to 64; in either, U+0000, which no PostgreSQL text
/// holds, becomes U+FFFD ([`row::storable`], the same length).
fn kept_rejection(failure: &FailedOperation) -> String {
    let whole = failure.to_json().to_string();
    if whole.len() <= MAX_KEPT_REJECTION_BYTES - 1024 {
        return row::storable(&whole).into_owned();
    }
    let short = FailedOperation {
        code: clipped(&failure.code, 64).into_owned(),
        message: clipped(&failure.message, 800).into_owned(),
        details: None,
        hint: None,
        ..failure.clone()
    };
    row::storable(&short.to_json().to_string()).into_owned()
}

/// Whether the atomic function's ledger keys `transaction` of `caller`: a client id, and a
/// transaction id it takes.
pub fn ledger_keyed(transaction: &Transaction, caller: &Caller) -> bool {
    caller.client_id.is_some() && ledger_id(transaction).is_some()
}

/// The transaction's id as the atomic function's ledger keys it: a string as it is, a number in
/// its JSON text (`42`); `None` without one, or one longer than [`MAX_LEDGER_ID_BYTES`] (then
/// nothing is recorded: applied as without a client id).
fn ledger_id(transaction: &Transaction) -> Option<String> {
    let id = match transaction.transaction_id.as_ref()? {
        Value::String(id) => id.clone(),
        Value::Number(id) => id.to_string(),
        _ => return None,
    };
    // The ledger refuses an empty id, and PostgreSQL text cannot hold U+0000: such a transaction
    // is applied without the ledger, as one with an id too long for it.
    (!id.is_empty() && !id.contains('\u{0}') && id.len() <= MAX_LEDGER_ID_BYTES).then_some(id)
}

/// Longest transaction id the ledger takes (`powersync_upload_ledger_claim` refuses longer ones;
/// PowerSync's are integers). Equal to the longest client id an upload may carry.
pub const MAX_LEDGER_ID_BYTES: usize = super::crud::MAX_CLIENT_ID_BYTES;

/// The columns an entry writes: a PUT's row with its id, a PATCH's data (conversions, owner
/// rules); `None` for a DELETE.
fn written_data<'e>(entry: &'e Entry, settings: &'e UploadSettings, user_id: &str) -> Option<Columns<'e>> {
    match entry.op {
        Op::Put => Some(row::put_row(entry, settings, user_id)),
        Op::Patch => Some(row::patch_data(entry, settings)),
        Op::Delete => None,
    }
}

/// `{"op":…,"table":…,"id":…` and `,"data":{…}` when there is data, without the closing brace.
fn write_op_fields(out: &mut String, entry: &Entry, data: Option<&Columns>) {
    out.push_str("{\"op\":\"");
    out.push_str(entry.op.as_str());
    out.push_str("\",\"table\":");
    row::push_json_string(out, &entry.table);
    out.push_str(",\"id\":");
    row::push_json_string(out, &entry.id);
    if let Some(data) = data {
        out.push_str(",\"data\":");
        data.write_json(out);
    }
}

/// One op of the atomic function's `ops` as JSON text, `{"op","table","id","data"?}` and the
/// `extra` fields (`,"name":value…`), the data as the bridge writes it: the client's values'
/// text, never rebuilt (a number keeps every digit, so a dead letter's ops and their digest are
/// the atomic call's).
pub(crate) fn atomic_op(entry: &Entry, settings: &UploadSettings, user_id: &str, extra: &str) -> String {
    let mut op = String::new();
    write_op_fields(&mut op, entry, written_data(entry, settings, user_id).as_ref());
    op.push_str(extra);
    op.push('}');
    op
}

/// A request with the credentials of the configured mode: in `rls` mode the anon key and the
/// caller's own token (RLS applies), in `service` mode the service key in both headers.
pub(crate) fn authorized(method: Method, url: String, settings: &UploadSettings, caller: &Caller) -> HttpRequest {
    let (apikey, bearer) = match &settings.mode {
        WriteMode::Rls => (settings.anon_key.as_str(), caller.access_token.as_str()),
        WriteMode::Service { service_key, .. } => (service_key.as_str(), service_key.as_str()),
    };
    HttpRequest::new(method, url).header("apikey", apikey).header("Authorization", format!("Bearer {bearer}"))
}

/// An entry's conflict conditions (see [`Context::conditions`]): `&<column>=<filter>` each.
#[derive(Debug, Default)]
struct Conditions {
    /// The row still holds the previous values.
    previous: String,
    /// PATCH only: the row already holds the new values (every column it sets).
    new: Option<String>,
}

/// `&<column>=is.null` for a JSON null, else `&<column>=eq.<text>`: a string's text, another
/// value's JSON text, percent-encoded.
fn column_condition(column: &str, raw: &str) -> String {
    match condition_text(raw) {
        None => format!("&{column}=is.null"),
        Some(text) => format!("&{column}={}", filter::eq(&text)),
    }
}

/// What a previous value (raw JSON) is compared as: `None` for null, else a string's text or
/// another value's JSON text (PostgreSQL casts it to the column's type).
fn condition_text(raw: &str) -> Option<String> {
    if raw == "null" {
        return None;
    }
    Some(match serde_json::from_str::<Value>(raw) {
        Ok(Value::String(text)) => text,
        _ => raw.to_string(),
    })
}

/// Whether a value (raw JSON) is an array or an object, as a JSON column's value is after
/// `UPLOAD_JSON_COLUMNS`. PostgREST's `eq` cannot compare one in every column type that takes it
/// (an array literal must be `{a,b}` for `text[]`, a `json` column has no `=`), nor a JSON
/// column's string (`eq.hello` is no `jsonb`), so REST leaves JSON columns and such values out of
/// its comparisons; the atomic function compares arrays and objects as JSON.
fn is_structured(raw: &str) -> bool {
    raw.starts_with(['[', '{'])
}

/// Consecutive entries being merged into one request.
enum Group<'e> {
    Put(PutGroup<'e>),
    Filtered(FilteredGroup<'e>),
}

/// A row of a bulk upsert: (row, id, entry index).
type PutRow<'e> = (Columns<'e>, &'e str, usize);

struct PutGroup<'e> {
    table: &'e str,
    start: usize,
    end: usize,
    /// (row, id, entry index) in entry order.
    rows: Vec<PutRow<'e>>,
    /// [`cast_key`] of every id in the group.
    cast_keys: IdSet<CastKey>,
    /// The rows' ids, for the service-mode ownership check's filter.
    check_ids: InList,
    /// Length of the rows' JSON, about.
    body_len: usize,
}

/// PATCHes with identical data (`data: Some`, the JSON body) or DELETEs (`data: None`) on one
/// table.
struct FilteredGroup<'e> {
    table: &'e str,
    start: usize,
    end: usize,
    data: Option<String>,
    ids: InList,
    /// The entries whose ids are in `ids`, in order.
    row_entries: Vec<usize>,
    /// [`cast_key`] of every id in the group.
    cast_keys: IdSet<CastKey>,
}

struct Planner<'e> {
    context: Context<'e>,
    requests: Vec<PlannedRequest>,
    group: Option<Group<'e>>,
}

impl<'e> Planner<'e> {
    fn add_put(&mut self, index: usize, table: &'e str, id: &'e str, row: Columns<'e>) {
        if let Some(Group::Put(group)) = &mut self.group {
            // Every row of a group has the first row's column names.
            if group.table == table && row.same_names(&group.rows[0].0) {
                let url_fits = self.context.owner.is_none()
                    || self.context.owner_check_url_len(table) + group.check_ids.len_with(id) <= filter::MAX_URL_BYTES;
                // (A key already there ends the group, which is dropped: inserting it is harmless.)
                if url_fits && group.cast_keys.insert(CastKey::of(id)) {
                    group.end = index + 1;
                    group.body_len += row.json_len() + 1;
                    group.rows.push((row, id, index));
                    if self.context.owner.is_some() {
                        group.check_ids.push(id);
                    }
                    return;
                }
            }
        }
        self.flush();
        let mut check_ids = InList::new();
        if self.context.owner.is_some() {
            check_ids.push(id);
        }
        self.group = Some(Group::Put(PutGroup {
            table,
            start: index,
            end: index + 1,
            body_len: row.json_len() + 2,
            rows: vec![(row, id, index)],
            cast_keys: id_set::of(CastKey::of(id)),
            check_ids,
        }));
    }

    fn add_filtered(&mut self, index: usize, table: &'e str, id: &str, data: Option<String>) {
        if let Some(Group::Filtered(group)) = &mut self.group {
            let fits = self.context.filtered_url_len(table) + group.ids.len_with(id) <= filter::MAX_URL_BYTES;
            let key = CastKey::of(id);
            // Another spelling of an id the group names (`abc` and `ABC`, a uuid in two forms) is
            // the same row or not depending on the column's type: the request's row count could
            // not tell whether each changed a row (`unchanged`), so it goes in the next request.
            let respelled = !group.ids.contains(id) && group.cast_keys.contains(&key);
            // A DELETE of a row the group deletes already changes nothing: in the same request
            // the count could not say so (`unchanged`), so it goes in the next one.
            let deleted_again = data.is_none() && group.cast_keys.contains(&key);
            if group.table == table && group.data == data && fits && !respelled && !deleted_again {
                group.end = index + 1;
                group.ids.push(id);
                group.row_entries.push(index);
                group.cast_keys.insert(key);
                return;
            }
        }
        self.flush();
        let mut ids = InList::new();
        ids.push(id);
        self.group = Some(Group::Filtered(FilteredGroup {
            table,
            start: index,
            end: index + 1,
            data,
            ids,
            row_entries: vec![index],
            cast_keys: id_set::of(CastKey::of(id)),
        }));
    }

    /// A PATCH (`data`) or DELETE with conflict conditions: a request of its own (conditions
    /// differ per entry, so it is never merged).
    fn add_conditional(&mut self, index: usize, entry: &Entry, data: Option<String>, conditions: Conditions) {
        self.flush();
        let row = format!(
            "{}?id={}{}",
            self.context.table_url(&entry.table),
            filter::eq(&entry.id),
            self.context.owner_filter()
        );
        let write_url = format!("{row}{}", conditions.previous);
        let request = match data {
            Some(data) => self.context.request(Method::Patch, write_url).json_body(data),
            None => self.context.request(Method::Delete, write_url),
        };
        let current = self.context.request(Method::Get, format!("{row}&select=*"));
        let same = conditions.new.map(|new| self.context.request(Method::Get, format!("{row}{new}&select=id")));
        let seen = self.context.request(Method::Get, format!("{row}{}&select=id", conditions.previous));
        self.requests.push(PlannedRequest {
            request: request.header("Prefer", PREFER_COUNTED),
            entries: index..index + 1,
            check: Check::Conditional { current, same, seen },
        });
    }

    /// Turns the open group, if any, into its request(s).
    fn flush(&mut self) {
        match self.group.take() {
            None => {}
            Some(Group::Put(group)) => {
                let entries = group.start..group.end;
                let rows = group.rows;
                if self.context.owner.is_some() {
                    let ids = rows.iter().map(|(_, id, index)| (id.to_string(), *index)).collect();
                    let check = self.context.owner_check(group.table, &group.check_ids, ids, entries.clone());
                    self.requests.push(check);
                }
                let row_entries = rows.iter().map(|(_, _, index)| *index).collect();
                // The rows' values are the client's text: copied into the body, never rebuilt.
                // Every row has the group's column names (see `add_put`): when none needs
                // escaping (the usual case), names are copied between quotes without a check each.
                let plain = rows[0].0.names().all(row::is_plain);
                let mut body = String::with_capacity(group.body_len);
                body.push('[');
                for (i, (row, _, _)) in rows.iter().enumerate() {
                    if i > 0 {
                        body.push(',');
                    }
                    if !plain {
                        row.write_json(&mut body);
                        continue;
                    }
                    body.push('{');
                    for (j, (name, value)) in row.iter().enumerate() {
                        body.push_str(if j > 0 { ",\"" } else { "\"" });
                        body.push_str(name);
                        body.push_str("\":");
                        body.push_str(value);
                    }
                    body.push('}');
                }
                body.push(']');
                let request = self
                    .context
                    .request(Method::Post, format!("{}?on_conflict=id", self.context.table_url(group.table)))
                    .json_body(body)
                    .header("Prefer", PREFER_UPSERT);
                self.requests.push(PlannedRequest { request, entries, check: Check::Upsert { row_entries } });
            }
            Some(Group::Filtered(group)) => {
                let url = format!(
                    "{}?id={}{}",
                    self.context.table_url(group.table),
                    group.ids.filter(),
                    self.context.owner_filter()
                );
                let request = match group.data {
                    Some(data) => self.context.request(Method::Patch, url).json_body(data),
                    None => self.context.request(Method::Delete, url),
                };
                self.requests.push(PlannedRequest {
                    request: request.header("Prefer", PREFER_COUNTED),
                    entries: group.start..group.end,
                    check: Check::Filtered { row_entries: group.row_entries, distinct_ids: group.cast_keys.len() },
                });
            }
        }
    }
}

/// A merged request as two requests of its first and second half (same method, headers and
/// data): a bulk upsert's rows, each row's text as it was (never re-read as numbers: a value
/// beyond f64 would change), or the ids of a PATCH or DELETE of `id=in.(…)`. How the driver
/// applies a bulk upsert the database refuses with 21000 and finds which entry of a refused
/// merged request is at fault (see `delivery`). `None` for a request of one row or id, or one
/// whose body is not the array of rows it was built with.
pub fn halves(
    planned: &PlannedRequest,
    entries: &[Entry],
    settings: &UploadSettings,
    caller: &Caller,
) -> Option<[PlannedRequest; 2]> {
    match &planned.check {
        Check::Upsert { row_entries } => upsert_halves(planned, row_entries),
        Check::Filtered { row_entries, .. } if row_entries.len() > 1 => {
            let data = planned.request.body.clone();
            let half = |indexes: &[usize]| {
                let mut planner =
                    Planner { context: Context::new(settings, caller), requests: Vec::new(), group: None };
                for &index in indexes {
                    let entry = entries.get(index)?;
                    planner.add_filtered(index, &entry.table, &entry.id, data.clone());
                }
                planner.flush();
                let mut part = planner.requests.pop().filter(|_| planner.requests.is_empty())?;
                // as for an upsert's halves: a failure of a half fails the rest of the request
                part.entries = part.entries.start..planned.entries.end;
                Some(part)
            };
            let (first, second) = row_entries.split_at(row_entries.len() / 2);
            Some([half(first)?, half(second)?])
        }
        _ => None,
    }
}

/// The part of a bulk upsert (`planned`) whose rows are of entries before `entry`: what the
/// service-mode ownership check lets through when it finds the row of `entry` owned by another
/// user, so that the entries before it are applied, or one of them is found at fault first, as
/// in order. `None` when no row is before it, or `planned` is not an upsert.
pub fn upsert_before(planned: &PlannedRequest, entry: usize) -> Option<PlannedRequest> {
    let Check::Upsert { row_entries } = &planned.check else { return None };
    let rows = upsert_rows(planned, row_entries)?;
    let kept = row_entries.iter().take_while(|&&index| index < entry).count();
    (kept > 0).then(|| upsert_part(planned, &rows[..kept], &row_entries[..kept], planned.entries.start..entry))
}

/// The ownership check of a PUT group (`check`) again, of its rows before entry `at` alone: what
/// they need before [`upsert_before`] sends them, once the check found entry `at`'s row owned by
/// another user. The database answers a foreign row's id in its own spelling, which is matched to
/// the entry that spells it so; another entry may name the same row in another spelling (`1.0`
/// and `1` of a numeric id, `0x1` on PostgreSQL 16 and later), and an upsert of it would take that
/// row over. Checked alone, such a row matches none of them. `None` when no row is before `at`, or
/// `check` is not an ownership check (or not in service mode).
pub fn owner_check_before(
    check: &PlannedRequest,
    at: usize,
    settings: &UploadSettings,
    caller: &Caller,
) -> Option<PlannedRequest> {
    let Check::OwnerCheck { table, ids } = &check.check else { return None };
    let context = Context::new(settings, caller);
    context.owner?;
    let kept: Vec<(String, usize)> = ids.iter().filter(|(_, index)| *index < at).cloned().collect();
    if kept.is_empty() {
        return None;
    }
    let mut list = InList::new();
    for (id, _) in &kept {
        list.push(id);
    }
    Some(context.owner_check(table, &list, kept, check.entries.start..at))
}

fn upsert_halves(planned: &PlannedRequest, row_entries: &[usize]) -> Option<[PlannedRequest; 2]> {
    let rows = upsert_rows(planned, row_entries).filter(|rows| rows.len() >= 2)?;
    let middle = rows.len() / 2;
    let half = |rows: &[&serde_json::value::RawValue], row_entries: &[usize]| {
        // a failure of a half is reported at its first row's entry
        let start = row_entries.iter().copied().min().unwrap_or(planned.entries.start);
        upsert_part(planned, rows, row_entries, start..planned.entries.end)
    };
    Some([half(&rows[..middle], &row_entries[..middle]), half(&rows[middle..], &row_entries[middle..])])
}

/// A bulk upsert's rows, each row's text as it was; `None` unless its body is the array of rows
/// it was built with (one per entry of `row_entries`).
fn upsert_rows<'a>(planned: &'a PlannedRequest, row_entries: &[usize]) -> Option<Vec<&'a serde_json::value::RawValue>> {
    let rows: Vec<&serde_json::value::RawValue> = serde_json::from_str(planned.request.body.as_deref()?).ok()?;
    (rows.len() == row_entries.len()).then_some(rows)
}

/// The upsert of `planned` with only `rows` (of entries `row_entries`), covering `entries`.
fn upsert_part(
    planned: &PlannedRequest,
    rows: &[&serde_json::value::RawValue],
    row_entries: &[usize],
    entries: std::ops::Range<usize>,
) -> PlannedRequest {
    let mut request = planned.request.clone();
    let texts: Vec<&str> = rows.iter().map(|row| row.get()).collect();
    request.body = Some(format!("[{}]", texts.join(",")));
    PlannedRequest { request, entries, check: Check::Upsert { row_entries: row_entries.to_vec() } }
}

/// [`cast_key`] as the planner keeps it: a uuid's 32 hex digits as their value (the common case,
/// computed without allocating), anything else as its text. Equal exactly when `cast_key` is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum CastKey {
    Uuid(u128),
    Text(String),
}

impl CastKey {
    fn of(id: &str) -> CastKey {
        if id.len() == 36 {
            // A uuid in its usual form (`cast_key`'s first case): 32 hex digits and 4 hyphens.
            let mut value: u128 = 0;
            let mut digits = 0;
            for b in id.bytes() {
                if b == b'-' {
                    continue;
                }
                let digit = match b {
                    b'0'..=b'9' => b - b'0',
                    b'a'..=b'f' => b - b'a' + 10,
                    b'A'..=b'F' => b - b'A' + 10,
                    _ => 16,
                };
                match (digit < 16).then_some(digit) {
                    Some(digit) => value = (value << 4) | u128::from(digit),
                    None => return CastKey::of_text(cast_key(id)),
                }
                digits += 1;
            }
            if digits == 32 {
                return CastKey::Uuid(value);
            }
        }
        CastKey::of_text(cast_key(id))
    }

    fn of_text(key: String) -> CastKey {
        match u128::from_str_radix(&key, 16) {
            Ok(value) if key.len() == 32 && key.bytes().all(|b| b.is_ascii_hexdigit()) => CastKey::Uuid(value),
            _ => CastKey::Text(key),
        }
    }
}

/// A key under which two ids are equal whenever the database might take them for the same value
/// once cast to the id column's type, so that they are never upserted in one statement (21000).
/// Conservative: ids with equal keys may still be different rows (then they only cost one more
/// request). Surrounding whitespace is dropped (integers, uuids; `char(n)` pads) and letters
/// are lower-cased (uuid hex digits, `citext`); a uuid in any accepted form (braces, hyphens
/// anywhere or none) is reduced to its 32 hex digits; a number to its value ([`number_key`]:
/// `01`, `1.0`, `1e0` and PostgreSQL 16's `0x1` are `1`).
pub fn cast_key(id: &str) -> String {
    if id.len() == 36 && id.is_ascii() {
        // The common case, a uuid in its usual form: one pass, one allocation.
        let mut hex = String::with_capacity(32);
        for b in id.bytes().filter(|b| *b != b'-') {
            hex.push(b.to_ascii_lowercase() as char);
        }
        if hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return hex;
        }
    }
    let lower = id.trim().to_lowercase();
    let hex: String = lower.chars().filter(|c| !matches!(c, '-' | '{' | '}')).collect();
    if hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return hex;
    }
    number_key(&lower).unwrap_or(lower)
}

/// The value of `text` (trimmed, lower-cased) read as PostgreSQL reads an integer or `numeric`
/// id: a sign; decimal digits with a fraction and an exponent (`1.0`, `.5`, `1e3`); PostgreSQL
/// 16's `0x`, `0o` and `0b` integers and `_` between digits. As its significant digits, followed
/// by the zeros of an integer (`1000`, `-7`, `0`) or by `e` and the exponent (`15e-1` for 1.5,
/// `1e100` beyond 64 zeros). `None` for anything else, and for an exponent or a `0x` value too
/// large for any id column.
fn number_key(text: &str) -> Option<String> {
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let digit_run = |run: &str, radix: u32| {
        !run.starts_with('_')
            && !run.ends_with('_')
            && !run.contains("__")
            && run.chars().all(|c| c == '_' || c.is_digit(radix))
    };
    let radix = match unsigned.get(..2) {
        Some("0x") => 16,
        Some("0o") => 8,
        Some("0b") => 2,
        _ => 10,
    };
    let (mut digits, mut exponent) = if radix != 10 {
        // (`_` may follow the prefix: `0o_1_755`)
        let run = unsigned.get(2..).map(|run| run.strip_prefix('_').unwrap_or(run));
        let run = run.filter(|run| !run.is_empty() && digit_run(run, radix))?;
        (u128::from_str_radix(&run.replace('_', ""), radix).ok()?.to_string(), 0i64)
    } else {
        let (mantissa, exponent) = match unsigned.split_once('e') {
            Some((mantissa, exponent)) => {
                let unsigned_exponent = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
                if unsigned_exponent.is_empty()
                    || unsigned_exponent.len() > 9
                    || !unsigned_exponent.bytes().all(|b| b.is_ascii_digit())
                {
                    return None;
                }
                (mantissa, exponent.parse::<i64>().ok()?)
            }
            None => (unsigned, 0),
        };
        let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        if whole.is_empty() && fraction.is_empty()
            || !whole.is_empty() && !digit_run(whole, 10)
            || !fraction.is_empty() && !digit_run(fraction, 10)
        {
            return None;
        }
        let fraction = fraction.replace('_', "");
        (format!("{}{fraction}", whole.replace('_', "")), exponent - fraction.len() as i64)
    };
    let significant = digits.trim_start_matches('0');
    if significant.is_empty() {
        return Some("0".to_string());
    }
    let kept = significant.trim_end_matches('0');
    exponent += (significant.len() - kept.len()) as i64;
    digits = kept.to_string();
    if (0..=64).contains(&exponent) {
        digits.extend(std::iter::repeat_n('0', exponent as usize));
    } else {
        digits = format!("{digits}e{exponent}");
    }
    Some(if negative { format!("-{digits}") } else { digits })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upload::crud::Entry;
    use percent_encoding::percent_decode_str;
    use serde_json::json;
    use std::collections::BTreeSet;

    #[test]
    fn a_kept_rejection_fits_what_the_ledger_takes_and_holds_no_nul() {
        let mut failure = FailedOperation::new(Some(3), "23514", "new row violates check constraint \u{0}");
        failure.details = Some("Failing row contains (…)".to_string());
        failure.http_status = Some(400);
        let kept: Value = serde_json::from_str(&kept_rejection(&failure)).unwrap();
        assert_eq!(
            kept,
            json!({"index": 3, "code": "23514", "message": "new row violates check constraint \u{fffd}",
                   "details": "Failing row contains (…)", "http_status": 400})
        );
        // a row of megabytes quoted in the details, a message of control characters (6 bytes each)
        failure.details = Some("x".repeat(1 << 20));
        failure.hint = Some("h".to_string());
        failure.message = "\u{1}".repeat(5000);
        let text = kept_rejection(&failure);
        assert!(text.len() <= MAX_KEPT_REJECTION_BYTES - 1024, "{}", text.len());
        let kept: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            (kept["index"].clone(), kept["code"].clone(), kept["details"].clone()),
            (json!(3), json!("23514"), Value::Null)
        );
        assert_eq!(kept.get("hint"), None);
        assert_eq!(kept["message"].as_str().map(|m| m.chars().count()), Some(801), "800 and the cut's mark");
    }

    const BASE: &str = "https://p.supabase.co";

    fn settings() -> UploadSettings {
        UploadSettings::new(BASE, "anon-key")
    }

    fn service() -> UploadSettings {
        let mut s = settings();
        s.mode = WriteMode::Service { service_key: "svc-key".to_string(), owner_column: "owner".to_string() };
        s
    }

    fn caller() -> Caller {
        Caller { user_id: "user-1".to_string(), access_token: "user-token".to_string(), client_id: None, role: None }
    }

    fn e(op: Op, table: &str, id: &str, data: Value) -> Entry {
        Entry {
            op,
            table: table.to_string(),
            id: id.to_string(),
            data: data.as_object().cloned().unwrap_or_default().into(),
            previous: None,
            metadata: None,
        }
    }

    fn put(id: &str, data: Value) -> Entry {
        e(Op::Put, "todos", id, data)
    }

    fn patch(id: &str, data: Value) -> Entry {
        e(Op::Patch, "todos", id, data)
    }

    fn delete(id: &str) -> Entry {
        e(Op::Delete, "todos", id, Value::Null)
    }

    fn tx(entries: Vec<Entry>) -> Transaction {
        Transaction { transaction_id: Some(json!(1)), entries }
    }

    fn plan(entries: Vec<Entry>, settings: &UploadSettings) -> Vec<PlannedRequest> {
        match plan_transaction(&tx(entries), settings, &caller()) {
            Ok(plan) => plan,
            Err(failure) => panic!("unexpected failure {failure:?}"),
        }
    }

    fn body(request: &PlannedRequest) -> Value {
        serde_json::from_str(request.request.body.as_deref().unwrap_or("null")).unwrap_or(Value::Null)
    }

    fn headers(request: &PlannedRequest) -> Vec<(&str, &str)> {
        request.request.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect()
    }

    fn decoded_url(request: &PlannedRequest) -> String {
        percent_decode_str(&request.request.url).decode_utf8_lossy().into_owned()
    }

    #[test]
    fn put_is_an_upsert_with_exact_url_headers_and_body() {
        let requests = plan(vec![put("a", json!({"title": "x", "id": "ignored"}))], &settings());
        assert_eq!(requests.len(), 1);
        let r = &requests[0];
        assert_eq!(r.request.method, Method::Post);
        assert_eq!(r.request.url, "https://p.supabase.co/rest/v1/todos?on_conflict=id", "id names the conflict target");
        assert_eq!(
            headers(r),
            vec![
                ("apikey", "anon-key"),
                ("Authorization", "Bearer user-token"),
                ("Content-Type", "application/json"),
                ("Prefer", "resolution=merge-duplicates,return=minimal,count=exact"),
            ]
        );
        assert_eq!(body(r), json!([{"id": "a", "title": "x"}]));
        assert_eq!(r.entries, 0..1);
        assert_eq!(r.check, Check::Upsert { row_entries: vec![0] });
    }

    #[test]
    fn integers_beyond_2_pow_53_reach_postgrest_and_the_atomic_function_with_their_exact_digits() {
        let big = "9007199254740993"; // 2^53 + 1: a double would round it
        let text = format!(
            r#"{{"transactions":[{{"transaction_id":1,"crud":[{{"op":"PUT","table":"todos","id":"a","data":{{"n":{big},"m":-{big}0}}}}]}}]}}"#
        );
        let transactions = super::super::crud::parse(text.as_bytes(), &Default::default()).expect("valid");
        let rest = plan_transaction(&transactions[0], &settings(), &caller()).expect("planned");
        let sent = rest[0].request.body.as_deref().unwrap_or_default();
        assert!(sent.contains(&format!(r#""n":{big}"#)) && sent.contains(&format!(r#""m":-{big}0"#)), "{sent}");
        let atomic = atomic_request(&transactions[0], &settings(), &caller()).expect("atomic");
        let sent = atomic.request.body.as_deref().unwrap_or_default();
        assert!(sent.contains(&format!(r#""n":{big}"#)) && sent.contains(&format!(r#""m":-{big}0"#)), "{sent}");
    }

    #[test]
    fn patch_has_eq_filter_and_data_body() {
        let requests = plan(vec![patch("a", json!({"title": "y", "n": null}))], &settings());
        let r = &requests[0];
        assert_eq!(r.request.method, Method::Patch);
        assert_eq!(r.request.url, "https://p.supabase.co/rest/v1/todos?id=eq.a");
        assert_eq!(
            headers(r),
            vec![
                ("apikey", "anon-key"),
                ("Authorization", "Bearer user-token"),
                ("Content-Type", "application/json"),
                ("Prefer", "return=minimal,count=exact"),
            ]
        );
        assert_eq!(body(r), json!({"title": "y", "n": null}));
    }

    #[test]
    fn delete_has_eq_filter_and_no_body() {
        let requests = plan(vec![delete("a")], &settings());
        let r = &requests[0];
        assert_eq!(r.request.method, Method::Delete);
        assert_eq!(r.request.url, "https://p.supabase.co/rest/v1/todos?id=eq.a");
        assert_eq!(
            headers(r),
            vec![
                ("apikey", "anon-key"),
                ("Authorization", "Bearer user-token"),
                ("Prefer", "return=minimal,count=exact")
            ]
        );
        assert_eq!(r.request.body, None);
    }

    #[test]
    fn every_upsert_names_id_as_its_conflict_target() {
        for settings in [settings(), service()] {
            let requests =
                plan(vec![put("a", json!({})), put("b", json!({"x": 1})), put("c", json!({"x": 2}))], &settings);
            let upserts: Vec<&str> =
                requests.iter().filter(|r| r.request.method == Method::Post).map(|r| r.request.url.as_str()).collect();
            assert_eq!(upserts.len(), 2);
            assert!(upserts.iter().all(|url| url.ends_with("/rest/v1/todos?on_conflict=id")), "{upserts:?}");
        }
    }

    #[test]
    fn conflict_conditions_encode_values_as_postgrest_reads_filters_and_are_never_merged() {
        let mut s = settings();
        s.conflict_detection = true;
        let mut odd = patch("a", json!({"t": "x", "n": 2, "b": true, "z": "new"}));
        let previous = json!({"t": "a,b)&=%\"", "n": 1.5, "j": {"k": 0}, "b": null, "bad name": 0, "untouched": 5});
        odd.previous = Some(previous.as_object().cloned().unwrap_or_default().into());
        let mut second = patch("b", json!({"t": "x", "n": 2, "j": {"k": 1}, "b": true, "z": "new", "bad name": 1}));
        second.previous = odd.previous.clone();
        let requests = plan(vec![odd, second], &s);
        assert!(
            matches!(&requests[1].check, Check::Conditional { same: None, .. }),
            "a column that cannot be a filter: no 'already holds the new values' check"
        );
        assert_eq!(requests.len(), 2, "conditional entries are sent one by one");
        assert_eq!(
            requests[0].request.url,
            "https://p.supabase.co/rest/v1/todos?id=eq.a&b=is.null&n=eq.1.5&t=eq.a%2Cb%29%26%3D%25%22"
        );
        match &requests[0].check {
            Check::Conditional { current, same: Some(same), seen } => {
                assert_eq!(current.url, "https://p.supabase.co/rest/v1/todos?id=eq.a&select=*");
                assert_eq!(
                    same.url,
                    "https://p.supabase.co/rest/v1/todos?id=eq.a&b=eq.true&n=eq.2&t=eq.x&z=eq.new&select=id"
                );
                assert_eq!(
                    seen.url,
                    "https://p.supabase.co/rest/v1/todos?id=eq.a&b=is.null&n=eq.1.5&t=eq.a%2Cb%29%26%3D%25%22&select=id"
                );
                assert_eq!((current.method, seen.method), (Method::Get, Method::Get));
            }
            other => panic!("expected a conditional check, got {other:?}"),
        }
    }

    #[test]
    fn a_patch_comparing_many_columns_plans_in_linear_time_on_both_routes() {
        // Each previous value's column was looked up by a scan of the data's names: n² for a
        // PATCH of n columns (natively 9 s for 60,000, a 1.3 MB body, holding the isolate's
        // one thread). 20,000 here: seconds in a debug build before, milliseconds now.
        let columns: serde_json::Map<String, Value> = (0..20_000).map(|i| (format!("c{i:05}"), json!(i))).collect();
        let mut wide = patch("a", Value::Object(columns.clone()));
        wide.previous = Some(columns.into());
        for atomic in [AtomicMode::Never, AtomicMode::Always] {
            let mut s = settings();
            s.conflict_detection = true;
            s.atomic = atomic;
            let started = std::time::Instant::now();
            let requests = plan(vec![wide.clone()], &s);
            let took = started.elapsed();
            assert_eq!(requests.len(), 1, "{atomic:?}");
            assert!(took < std::time::Duration::from_millis(1500), "{atomic:?}: {took:?}");
        }
    }

    #[test]
    fn rest_leaves_json_columns_arrays_and_objects_out_of_its_comparisons() {
        // `eq.["a"]` is no literal a text[] column takes, and a json column has no `=`: such a
        // filter would fail the write (22P02, 42883) instead of comparing it
        let mut s = settings();
        s.conflict_detection = true;
        s.json_columns.insert("todos", "tags");
        let mut edit = patch("a", json!({"tags": "[\"a\",\"c\"]", "t": "x"}));
        edit.previous =
            Some(json!({"tags": "[\"a\",\"b\"]", "t": "y"}).as_object().cloned().unwrap_or_default().into());
        let mut only_tags = patch("b", json!({"tags": "{\"k\":1}"}));
        only_tags.previous = Some(json!({"tags": "\"a string\""}).as_object().cloned().unwrap_or_default().into());
        let requests = plan(vec![edit, only_tags], &s);
        assert_eq!(requests[0].request.url, "https://p.supabase.co/rest/v1/todos?id=eq.a&t=eq.y");
        assert!(
            matches!(&requests[0].check, Check::Conditional { same: None, .. }),
            "a PATCH setting an array cannot be checked for holding its new values by filters"
        );
        // nothing left to compare: applied as without previous values
        assert_eq!(requests[1].request.url, "https://p.supabase.co/rest/v1/todos?id=eq.b");
        assert!(!matches!(&requests[1].check, Check::Conditional { .. }));
        // the atomic function compares them, as JSON
        s.atomic = AtomicMode::Always;
        let mut edit = patch("a", json!({"tags": "[\"a\",\"c\"]"}));
        edit.previous = Some(json!({"tags": "[\"a\", \"b\"]"}).as_object().cloned().unwrap_or_default().into());
        let requests = plan(vec![edit], &s);
        assert_eq!(body(&requests[0])["ops"][0]["expect"], json!({"tags": ["a", "b"]}));
    }

    #[test]
    fn previous_values_for_no_changed_column_or_without_the_setting_plan_as_before() {
        let mut s = settings();
        s.conflict_detection = true;
        let mut unrelated = patch("a", json!({"x": 1}));
        unrelated.previous = Some(json!({"y": 0}).as_object().cloned().unwrap_or_default().into());
        let mut other = patch("b", json!({"x": 1}));
        other.previous = unrelated.previous.clone();
        let requests = plan(vec![unrelated.clone(), other.clone()], &s);
        assert_eq!(requests.len(), 1, "merged as without previous values");
        let mut with_previous = patch("c", json!({"x": 1}));
        with_previous.previous = Some(json!({"x": 0}).as_object().cloned().unwrap_or_default().into());
        let off = plan(vec![with_previous], &settings());
        assert_eq!(off[0].request.url, "https://p.supabase.co/rest/v1/todos?id=eq.c");
        assert!(matches!(off[0].check, Check::Filtered { .. }));
    }

    #[test]
    fn conflict_detection_compares_nothing_on_a_row_an_earlier_put_of_its_transaction_wrote_on_both_routes() {
        let previous = |v: Value| Some(v.as_object().cloned().unwrap_or_default().into());
        let mut s = settings();
        s.conflict_detection = true;
        // PUT x, then a compared PATCH and DELETE of x (the same row in another uuid form, as the
        // database would cast it) and a compared DELETE of another row, which still compares
        let x = "0b3e8c3c-5a4f-4f47-9d1e-1a2b3c4d5e6f";
        let mut patch_x = patch(&x.to_uppercase(), json!({"t": "y"}));
        patch_x.previous = previous(json!({"t": "x", "priority": 2}));
        let mut delete_x = delete(x);
        delete_x.previous = previous(json!({"t": "y", "priority": 2}));
        let mut delete_other = delete("other");
        delete_other.previous = previous(json!({"t": "z"}));
        let mut patch_before = patch(x, json!({"t": "w"}));
        patch_before.previous = previous(json!({"t": "v"}));
        let entries = vec![patch_before, put(x, json!({"t": "x"})), patch_x, delete_x, delete_other];
        let requests = plan(entries.clone(), &s);
        let checks: Vec<bool> = requests.iter().map(|r| matches!(r.check, Check::Conditional { .. })).collect();
        assert_eq!(checks, [true, false, false, false, true], "{requests:#?}");
        assert_eq!(decoded_url(&requests[3]), format!("https://p.supabase.co/rest/v1/todos?id=eq.{x}"));
        s.atomic = AtomicMode::Always;
        let ops = body(&plan(entries, &s)[0])["ops"].clone();
        let expects: Vec<bool> = ops.as_array().into_iter().flatten().map(|op| op.get("expect").is_some()).collect();
        assert_eq!(expects, [true, false, false, false, true], "{ops}");
    }

    #[test]
    fn conflict_detection_compares_nothing_after_a_put_of_the_row_spelled_as_another_number() {
        // Found by an audit: PUT "1" then a compared PATCH "1.0" of a numeric id compared the
        // PATCH with the values the PUT had just replaced, and reported a conflict.
        let previous = |v: Value| Some(v.as_object().cloned().unwrap_or_default().into());
        for (put_id, patch_id) in [("1", "1.0"), ("1", "1e0"), ("1", "0x1"), ("10", "1e1")] {
            let mut s = settings();
            s.conflict_detection = true;
            let mut compared = patch(patch_id, json!({"t": "y"}));
            compared.previous = previous(json!({"t": "old"}));
            let entries = vec![put(put_id, json!({"t": "x"})), compared];
            let requests = plan(entries.clone(), &s);
            let checks: Vec<bool> = requests.iter().map(|r| matches!(r.check, Check::Conditional { .. })).collect();
            assert_eq!(checks, [false, false], "REST {put_id}/{patch_id}: {requests:#?}");
            s.atomic = AtomicMode::Always;
            let ops = body(&plan(entries, &s)[0])["ops"].clone();
            assert!(ops[1].get("expect").is_none(), "atomic {put_id}/{patch_id}: {ops}");
        }
    }

    #[test]
    fn columns_named_like_postgrest_query_keys_are_never_url_filters_but_the_atomic_function_compares_them() {
        let previous = |v: Value| Some(v.as_object().cloned().unwrap_or_default().into());
        let mut s = settings();
        s.conflict_detection = true;
        let reserved = json!({"limit": 5, "order": 3, "and": "x", "or": "y", "offset": 1, "select": "s",
                              "columns": "c", "on_conflict": "o", "apikey": "k", "title": "old"});
        let mut changed = patch("a", json!({"limit": 6, "title": "new"}));
        changed.previous = previous(reserved.clone());
        let mut gone = delete("b");
        gone.previous = previous(reserved);
        let requests = plan(vec![changed.clone(), gone.clone()], &s);
        assert_eq!(decoded_url(&requests[0]), "https://p.supabase.co/rest/v1/todos?id=eq.a&title=eq.old");
        assert_eq!(decoded_url(&requests[1]), "https://p.supabase.co/rest/v1/todos?id=eq.b&title=eq.old");
        assert!(
            matches!(&requests[0].check, Check::Conditional { same: None, .. }),
            "`limit` cannot be a filter: no 'already holds the new values' check"
        );
        s.atomic = AtomicMode::Always;
        let ops = body(&plan(vec![changed, gone], &s)[0])["ops"].clone();
        assert_eq!(ops[0]["expect"], json!({"limit": "5", "title": "old"}));
        assert_eq!(ops[1]["expect"]["and"], json!("x"));
        assert_eq!(ops[1]["expect"]["apikey"], json!("k"));
    }

    #[test]
    fn two_spellings_of_one_cast_key_are_never_in_one_filtered_request() {
        let upper = "0E0B5A1C-2D3E-4F50-8A6B-7C8D9E0F1A2B";
        let requests = plan(
            vec![
                delete("abc"),
                delete("abc"),
                delete("ABC"),
                delete("x"),
                delete(upper),
                delete(&upper.to_lowercase()),
            ],
            &settings(),
        );
        let ids: Vec<(String, usize)> = requests
            .iter()
            .map(|r| match &r.check {
                Check::Filtered { distinct_ids, .. } => (decoded_url(r), *distinct_ids),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            ids,
            vec![
                ("https://p.supabase.co/rest/v1/todos?id=eq.abc".to_string(), 1),
                // deleted again: changes nothing, said by its own count
                ("https://p.supabase.co/rest/v1/todos?id=eq.abc".to_string(), 1),
                (format!("https://p.supabase.co/rest/v1/todos?id=in.(\"ABC\",\"x\",\"{upper}\")"), 3),
                (format!("https://p.supabase.co/rest/v1/todos?id=eq.{}", upper.to_lowercase()), 1),
            ]
        );
    }

    #[test]
    fn patch_without_data_sends_nothing() {
        assert!(plan(vec![patch("a", json!({}))], &settings()).is_empty());
        assert!(plan(vec![patch("a", Value::Null)], &settings()).is_empty());
    }

    #[test]
    fn empty_transaction_plans_nothing() {
        assert!(plan(vec![], &settings()).is_empty());
        let mut atomic = settings();
        atomic.atomic = AtomicMode::Always;
        assert!(plan(vec![], &atomic).is_empty());
    }

    #[test]
    fn thousand_puts_with_same_columns_are_one_request() {
        let entries: Vec<Entry> = (0..1000).map(|i| put(&format!("id-{i}"), json!({"n": i, "title": "t"}))).collect();
        let requests = plan(entries, &settings());
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].entries, 0..1000);
        let rows = body(&requests[0]);
        assert_eq!(rows.as_array().map(Vec::len), Some(1000));
        assert_eq!(rows[999], json!({"id": "id-999", "n": 999, "title": "t"}));
    }

    #[test]
    fn puts_with_different_key_sets_are_not_merged() {
        let requests =
            plan(vec![put("a", json!({"x": 1})), put("b", json!({"y": 1})), put("c", json!({"y": 2}))], &settings());
        assert_eq!(requests.len(), 2);
        assert_eq!(body(&requests[0]), json!([{"id": "a", "x": 1}]));
        assert_eq!(body(&requests[1]), json!([{"id": "b", "y": 1}, {"id": "c", "y": 2}]));
        assert_eq!(requests[1].entries, 1..3);
    }

    #[test]
    fn puts_to_different_tables_are_not_merged() {
        let requests = plan(vec![put("a", json!({})), e(Op::Put, "lists", "b", json!({}))], &settings());
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[1].request.url, "https://p.supabase.co/rest/v1/lists?on_conflict=id");
    }

    #[test]
    fn put_of_an_id_already_in_the_group_starts_a_new_upsert_so_both_apply_in_order() {
        let requests = plan(
            vec![
                put("a", json!({"n": 1})),
                put("b", json!({"n": 1})),
                put("a", json!({"n": 2})),
                put("c", json!({"n": 3})),
                put("a", json!({"n": 4})),
            ],
            &settings(),
        );
        let bodies: Vec<Value> = requests.iter().map(body).collect();
        assert_eq!(
            bodies,
            vec![
                json!([{"id": "a", "n": 1}, {"id": "b", "n": 1}]),
                json!([{"id": "a", "n": 2}, {"id": "c", "n": 3}]),
                json!([{"id": "a", "n": 4}])
            ]
        );
        let entries: Vec<_> = requests.iter().map(|r| r.entries.clone()).collect();
        assert_eq!(entries, vec![0..2, 2..4, 4..5]);
    }

    #[test]
    fn ids_that_may_be_equal_after_casting_are_not_upserted_together() {
        let upper = "0E0B5A1C-2D3E-4F50-8A6B-7C8D9E0F1A2B";
        let lower = upper.to_lowercase();
        let requests = plan(
            vec![put(upper, json!({"n": 1})), put("x", json!({"n": 1})), put(&lower, json!({"n": 2}))],
            &settings(),
        );
        assert_eq!(requests.len(), 2);
        assert_eq!(body(&requests[0]), json!([{"id": upper, "n": 1}, {"id": "x", "n": 1}]));
        assert_eq!(body(&requests[1]), json!([{"id": lower, "n": 2}]));
        assert_eq!((requests[0].entries.clone(), requests[1].entries.clone()), (0..2, 2..3));
        let numbers = plan(vec![put("1", json!({})), put("01", json!({})), put("+1", json!({}))], &settings());
        assert_eq!(numbers.len(), 3);
    }

    #[test]
    fn cast_keys_unite_every_spelling_of_one_value() {
        let uuid = "0e0b5a1c2d3e4f508a6b7c8d9e0f1a2b";
        for spelling in [
            "0e0b5a1c-2d3e-4f50-8a6b-7c8d9e0f1a2b",
            "0E0B5A1C-2D3E-4F50-8A6B-7C8D9E0F1A2B",
            "{0e0b5a1c-2d3e-4f50-8a6b-7c8d9e0f1a2b}",
            "0e0b5a1c2d3e4f508a6b7c8d9e0f1a2b",
            "0e0b-5a1c-2d3e-4f50-8a6b-7c8d-9e0f-1a2b",
            " 0e0b5a1c-2d3e-4f50-8a6b-7c8d9e0f1a2b ",
        ] {
            assert_eq!(cast_key(spelling), uuid, "{spelling}");
        }
        for (spelling, key) in [
            ("1", "1"),
            ("01", "1"),
            ("+1", "1"),
            (" 1 ", "1"),
            ("1_000", "1000"),
            ("-0", "0"),
            ("000", "0"),
            ("-07", "-7"),
            ("1\t", "1"),
            ("100", "100"),
            // numeric ids, and PostgreSQL 16's integers (found by an audit: `1.0` was not `1`)
            ("1.0", "1"),
            ("1.", "1"),
            ("1e0", "1"),
            ("10e-1", "1"),
            ("0.1e1", "1"),
            (".5", "5e-1"),
            ("0.50", "5e-1"),
            ("1e3", "1000"),
            ("1E3", "1000"),
            ("-1.50", "-15e-1"),
            ("1e100", "1e100"),
            ("0.0", "0"),
            ("-0e5", "0"),
            ("0x1f", "31"),
            ("0X1F", "31"),
            ("-0o17", "-15"),
            ("0b101", "5"),
            ("0o_1_755", "1005"),
            ("1__0", "1__0"),
            ("1_0.0_1", "1001e-2"),
        ] {
            assert_eq!(cast_key(spelling), key, "{spelling}");
        }
        for not_a_number in
            [".", "e5", "1e", "1e+", "1.2.3", "0x", "0xg", "1e9999999999", "1 0", "0x1.5", "--1", "0x__1"]
        {
            assert_eq!(cast_key(not_a_number), not_a_number.to_lowercase(), "{not_a_number}");
        }
        assert_eq!(cast_key("Abc "), "abc");
        assert_ne!(cast_key("a-b"), cast_key("ab"), "hyphens only vanish from uuids");
        assert_ne!(cast_key("1"), cast_key("11"));
        assert_eq!(cast_key("_1"), "_1");
        assert_eq!(cast_key("-"), "-");
        assert_eq!(cast_key(""), "");
    }

    #[test]
    fn planner_keys_are_equal_exactly_when_cast_keys_are() {
        let ids = [
            "0e0b5a1c-2d3e-4f50-8a6b-7c8d9e0f1a2b",
            "0E0B5A1C-2D3E-4F50-8A6B-7C8D9E0F1A2B",
            "{0e0b5a1c-2d3e-4f50-8a6b-7c8d9e0f1a2b}",
            "0e0b5a1c2d3e4f508a6b7c8d9e0f1a2b",
            "0e0b-5a1c-2d3e-4f50-8a6b-7c8d-9e0f-1a2b",
            " 0e0b5a1c-2d3e-4f50-8a6b-7c8d9e0f1a2b ",
            "0e0b5a1c-2d3e-4f50-8a6b-7c8d9e0f1a2c",
            "0e0b5a1c-2d3e-4f50-8a6b-7c8d9e0f1a2b0000",
            "0e0b5a1c2d3e4f508a6b7c8d9e0f1a2b0000",
            "0e0b5a1cX2d3e-4f50-8a6b-7c8d9e0f1a2b",
            "0e0b5a1c-2d3e-4f50-8a6b-7c8d9e0f1a2é",
            "12345678901234567890123456789012",
            "012345678901234567890123456789012",
            "+12345678901234567890123456789012",
            "1",
            "01",
            "-1",
            "todo-1",
            "",
        ];
        for a in ids {
            for b in ids {
                assert_eq!(CastKey::of(a) == CastKey::of(b), cast_key(a) == cast_key(b), "{a:?} {b:?}");
            }
        }
    }

    #[test]
    fn consecutive_deletes_are_one_in_filter() {
        let requests = plan(vec![delete("a"), delete("b"), delete("c")], &settings());
        assert_eq!(requests.len(), 1);
        assert_eq!(
            requests[0].request.url,
            "https://p.supabase.co/rest/v1/todos?id=in.%28%22a%22%2C%22b%22%2C%22c%22%29"
        );
        assert_eq!(requests[0].entries, 0..3);
    }

    #[test]
    fn patches_with_identical_data_are_one_in_filter() {
        let requests = plan(vec![patch("a", json!({"done": true})), patch("b", json!({"done": true}))], &settings());
        assert_eq!(requests.len(), 1);
        assert_eq!(decoded_url(&requests[0]), "https://p.supabase.co/rest/v1/todos?id=in.(\"a\",\"b\")");
        assert_eq!(body(&requests[0]), json!({"done": true}));
    }

    #[test]
    fn patches_with_different_data_are_not_merged() {
        let requests = plan(vec![patch("a", json!({"done": true})), patch("b", json!({"done": false}))], &settings());
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[0].request.url, "https://p.supabase.co/rest/v1/todos?id=eq.a");
        assert_eq!(requests[1].request.url, "https://p.supabase.co/rest/v1/todos?id=eq.b");
    }

    #[test]
    fn deletes_on_different_tables_are_not_merged() {
        let requests = plan(vec![delete("a"), e(Op::Delete, "lists", "b", Value::Null)], &settings());
        assert_eq!(requests.len(), 2);
    }

    #[test]
    fn interleaved_operations_are_never_merged_or_reordered() {
        let requests = plan(
            vec![
                put("a", json!({"n": 1})),
                delete("a"),
                put("b", json!({"n": 1})),
                patch("b", json!({"n": 2})),
                delete("c"),
            ],
            &settings(),
        );
        let summary: Vec<(Method, String, Range<usize>)> =
            requests.iter().map(|r| (r.request.method, decoded_url(r), r.entries.clone())).collect();
        assert_eq!(
            summary,
            vec![
                (Method::Post, "https://p.supabase.co/rest/v1/todos?on_conflict=id".to_string(), 0..1),
                (Method::Delete, "https://p.supabase.co/rest/v1/todos?id=eq.a".to_string(), 1..2),
                (Method::Post, "https://p.supabase.co/rest/v1/todos?on_conflict=id".to_string(), 2..3),
                (Method::Patch, "https://p.supabase.co/rest/v1/todos?id=eq.b".to_string(), 3..4),
                (Method::Delete, "https://p.supabase.co/rest/v1/todos?id=eq.c".to_string(), 4..5),
            ]
        );
    }

    #[test]
    fn patch_without_data_does_not_break_a_group() {
        let requests = plan(vec![delete("a"), patch("x", json!({})), delete("b")], &settings());
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].entries, 0..3);
    }

    #[test]
    fn nasty_ids_neither_break_nor_widen_eq_filters() {
        for id in ["a,b", "a)b", "x&id=neq.1", "a\"b", "a\\b", "a=b", "100%", "ünï☃", "a b", "*", "a.b"] {
            let requests = plan(vec![delete(id)], &settings());
            let url = &requests[0].request.url;
            let query = url.split_once('?').map(|(_, q)| q).unwrap_or("");
            let params: Vec<&str> = query.split('&').collect();
            assert_eq!(params.len(), 1, "{url}");
            let value = params[0].strip_prefix("id=").unwrap_or("");
            assert_eq!(percent_decode_str(value).decode_utf8_lossy(), format!("eq.{id}"), "{url}");
        }
    }

    #[test]
    fn nasty_ids_neither_break_nor_widen_in_filters() {
        let ids = ["a,b", "a)b", "x&id=neq.1", "a\"b", "a\\b", "a=b", "100%", "ünï☃", "c\"),(\"d"];
        let requests = plan(ids.iter().map(|id| delete(id)).collect(), &settings());
        assert_eq!(requests.len(), 1);
        let url = &requests[0].request.url;
        let query = url.split_once('?').map(|(_, q)| q).unwrap_or("");
        assert_eq!(query.split('&').count(), 1, "{url}");
        let quoted: Vec<String> = ids.iter().map(|id| filter::quote(id)).collect();
        assert_eq!(
            decoded_url(&requests[0]),
            format!("https://p.supabase.co/rest/v1/todos?id=in.({})", quoted.join(","))
        );
    }

    #[test]
    fn long_delete_runs_are_split_to_keep_urls_short() {
        let entries: Vec<Entry> = (0..1000).map(|i| delete(&format!("{i:08}-aaaa-bbbb-cccc-dddddddddddd"))).collect();
        let requests = plan(entries, &settings());
        assert!(requests.len() > 1 && requests.len() < 10, "{}", requests.len());
        assert!(requests.iter().all(|r| r.request.url.len() <= filter::MAX_URL_BYTES));
        assert!(requests.iter().any(|r| r.request.url.len() > filter::MAX_URL_BYTES - 100));
        let covered: Vec<Range<usize>> = requests.iter().map(|r| r.entries.clone()).collect();
        assert_eq!(covered.first().map(|r| r.start), Some(0));
        assert_eq!(covered.last().map(|r| r.end), Some(1000));
        assert!(covered.windows(2).all(|w| w[0].end == w[1].start));
    }

    #[test]
    fn a_single_very_long_id_is_still_sent() {
        let id = "x".repeat(9000);
        let requests = plan(vec![delete(&id), delete("b")], &settings());
        assert_eq!(requests.len(), 2);
        assert!(requests[0].request.url.ends_with(&format!("?id=eq.{id}")));
    }

    #[test]
    fn conversions_are_applied_to_puts_and_patches() {
        let mut s = settings();
        s.json_columns.insert("todos", "tags");
        s.boolean_columns.insert("todos", "done");
        let requests = plan(vec![put("a", json!({"tags": "[1,2]", "done": 1})), patch("a", json!({"done": 0}))], &s);
        assert_eq!(body(&requests[0]), json!([{"id": "a", "tags": [1, 2], "done": true}]));
        assert_eq!(body(&requests[1]), json!({"done": false}));
    }

    #[test]
    fn service_mode_uses_the_service_key() {
        let requests = plan(vec![delete("a")], &service());
        assert_eq!(
            headers(&requests[0]),
            vec![("apikey", "svc-key"), ("Authorization", "Bearer svc-key"), ("Prefer", "return=minimal,count=exact")]
        );
    }

    #[test]
    fn service_mode_filters_patch_and_delete_by_owner() {
        let requests = plan(vec![patch("a", json!({"t": 1})), delete("b"), delete("c")], &service());
        assert_eq!(requests[0].request.url, "https://p.supabase.co/rest/v1/todos?id=eq.a&owner=eq.user-1");
        assert_eq!(
            decoded_url(&requests[1]),
            "https://p.supabase.co/rest/v1/todos?id=in.(\"b\",\"c\")&owner=eq.user-1"
        );
    }

    #[test]
    fn service_mode_patch_cannot_change_the_owner() {
        let requests = plan(vec![patch("a", json!({"owner": "user-2", "t": 1}))], &service());
        assert_eq!(body(&requests[0]), json!({"t": 1}));
        assert!(plan(vec![patch("a", json!({"owner": "user-2"}))], &service()).is_empty());
    }

    #[test]
    fn service_mode_put_checks_ownership_then_upserts_with_forced_owner() {
        let requests = plan(vec![put("a", json!({"owner": "user-2", "t": 1})), put("b", json!({"t": 2}))], &service());
        assert_eq!(requests.len(), 2);
        let check = &requests[0];
        assert_eq!(check.request.method, Method::Get);
        assert_eq!(
            decoded_url(check),
            "https://p.supabase.co/rest/v1/todos?select=id&id=in.(\"a\",\"b\")&owner=isdistinct.user-1"
        );
        assert_eq!(headers(check), vec![("apikey", "svc-key"), ("Authorization", "Bearer svc-key")]);
        assert_eq!(
            check.check,
            Check::OwnerCheck { table: "todos".to_string(), ids: vec![("a".to_string(), 0), ("b".to_string(), 1)] }
        );
        assert_eq!(check.entries, 0..2);
        let upsert = &requests[1];
        assert_eq!(upsert.request.method, Method::Post);
        assert_eq!(
            body(upsert),
            json!([{"id": "a", "owner": "user-1", "t": 1}, {"id": "b", "owner": "user-1", "t": 2}])
        );
    }

    #[test]
    fn service_mode_put_groups_keep_the_check_url_short() {
        let entries: Vec<Entry> =
            (0..600).map(|i| put(&format!("{i:08}-aaaa-bbbb-cccc-dddddddddddd"), json!({}))).collect();
        let requests = plan(entries, &service());
        assert!(requests.len() >= 6 && requests.len().is_multiple_of(2), "{}", requests.len());
        assert!(requests.iter().all(|r| r.request.url.len() <= filter::MAX_URL_BYTES));
        let rows: usize = requests
            .iter()
            .filter(|r| r.request.method == Method::Post)
            .map(|r| body(r).as_array().map_or(0, Vec::len))
            .sum();
        assert_eq!(rows, 600);
    }

    #[test]
    fn atomic_mode_is_one_rpc_call_per_transaction() {
        let mut s = settings();
        s.atomic = AtomicMode::Always;
        s.boolean_columns.insert("todos", "done");
        let requests = plan(vec![put("a", json!({"done": 1})), patch("a", json!({})), delete("b")], &s);
        assert_eq!(requests.len(), 1);
        let r = &requests[0];
        assert_eq!(r.request.method, Method::Post);
        assert_eq!(r.request.url, "https://p.supabase.co/rest/v1/rpc/powersync_apply_transaction");
        assert_eq!(
            headers(r),
            vec![("apikey", "anon-key"), ("Authorization", "Bearer user-token"), ("Content-Type", "application/json")]
        );
        assert_eq!(
            body(r),
            json!({"ops": [
                {"op": "PUT", "table": "todos", "id": "a", "data": {"id": "a", "done": true}},
                {"op": "PATCH", "table": "todos", "id": "a", "data": {}},
                {"op": "DELETE", "table": "todos", "id": "b"}
            ]})
        );
        assert_eq!(r.entries, 0..3);
        assert_eq!(r.check, Check::Atomic);
    }

    #[test]
    fn atomic_call_carries_the_client_id_and_transaction_id_for_exactly_once() {
        let mut s = settings();
        s.atomic = AtomicMode::Always;
        let with_client = Caller { client_id: Some("client-1".to_string()), ..caller() };
        for (transaction_id, sent) in [(json!(42), "42"), (json!("t-7"), "t-7")] {
            let transaction = Transaction { transaction_id: Some(transaction_id), entries: vec![delete("b")] };
            let requests = plan_transaction(&transaction, &s, &with_client).expect("planned");
            let body = body(&requests[0]);
            assert_eq!((body["client_id"].as_str(), body["transaction_id"].as_str()), (Some("client-1"), Some(sent)));
        }
        // no transaction id, or no client id: applied as before, nothing to record
        let anonymous = Transaction { transaction_id: None, entries: vec![delete("b")] };
        let body_of = |t: &Transaction, c: &Caller| body(&plan_transaction(t, &s, c).expect("planned")[0]);
        assert_eq!(body_of(&anonymous, &with_client), json!({"ops": [{"op": "DELETE", "table": "todos", "id": "b"}]}));
        let numbered = Transaction { transaction_id: Some(json!(1)), entries: vec![delete("b")] };
        assert_eq!(body_of(&numbered, &caller()), json!({"ops": [{"op": "DELETE", "table": "todos", "id": "b"}]}));
        // REST requests have nowhere to record it
        let rest = plan_transaction_as(&numbered, &s, &with_client, false).expect("planned");
        assert_eq!(rest[0].request.method, Method::Delete);
    }

    #[test]
    fn atomic_call_carries_the_entries_digest_which_settings_that_change_the_ops_leave_alone() {
        // A change of settings between two attempts of one transaction (a JSON column, the
        // write mode) changes the ops the call writes, and so the ledger's digest of them; the
        // entries' digest stays, so the ledger still knows the re-sent or late call.
        let transaction = tx(vec![put("a", json!({"tags": "[\"x\"]", "n": 1})), patch("b", json!({"n": 2}))]);
        let caller = Caller { client_id: Some("client-1".to_string()), ..caller() };
        let mut json_column = settings();
        json_column.json_columns.insert("todos", "tags");
        let mut calls = vec![];
        for mut s in [settings(), json_column, service()] {
            s.atomic = AtomicMode::Always;
            let requests = plan_transaction(&transaction, &s, &caller).unwrap_or_default();
            calls.push(requests[0].request.clone());
        }
        let digests: Vec<_> = calls.iter().map(|r| r.header_value(ENTRIES_DIGEST_HEADER)).collect();
        assert_eq!(digests, vec![Some(transaction.entries_digest().as_str()); 3]);
        assert_ne!(calls[0].body, calls[1].body, "the JSON column is written as JSON");
        assert_ne!(calls[0].body, calls[2].body, "service mode writes the owner column");
        // without a client id nothing is recorded, and no digest is sent
        let s = UploadSettings { atomic: AtomicMode::Always, ..settings() };
        let anonymous = plan_transaction(&transaction, &s, &super::tests::caller()).unwrap_or_default();
        assert_eq!(anonymous[0].request.header_value(ENTRIES_DIGEST_HEADER), None);
    }

    #[test]
    fn atomic_call_carries_each_compared_entrys_expected_values_as_the_rest_filters_compare_them() {
        let mut s = service();
        s.atomic = AtomicMode::Always;
        s.conflict_detection = true;
        s.boolean_columns.insert("todos", "b");
        let previous = |v: Value| Some(v.as_object().cloned().unwrap_or_default().into());
        let mut changed = patch("a", json!({"t": "x", "n": 2, "j": {"k": 1}, "b": 0, "owner": "me"}));
        // compared: the columns it sets with a previous value, never id nor the owner column;
        // a previous value far longer than a URL takes is compared here (no URL)
        let long = "l".repeat(9000);
        changed.previous = previous(
            json!({"t": long, "n": 1.5, "j": {"k": 0}, "b": 1, "untouched": 5, "id": "a", "owner": "x", "bad name": 0}),
        );
        let mut nothing = patch("c", json!({}));
        nothing.previous = previous(json!({"t": "seen"}));
        let mut gone = delete("d");
        gone.previous = previous(json!({"t": null, "n": 3}));
        let requests = plan(vec![put("p", json!({"t": "new"})), changed, nothing, gone], &s);
        assert_eq!(requests.len(), 1);
        assert_eq!(
            body(&requests[0]),
            json!({"ops": [
                {"op": "PUT", "table": "todos", "id": "p", "data": {"id": "p", "t": "new", "owner": "user-1"}},
                {"op": "PATCH", "table": "todos", "id": "a", "data": {"t": "x", "n": 2, "j": {"k": 1}, "b": false},
                 "expect": {"t": long, "n": "1.5", "j": {"k": 0}, "b": "true"}},
                {"op": "PATCH", "table": "todos", "id": "c", "data": {}},
                {"op": "DELETE", "table": "todos", "id": "d", "expect": {"t": null, "n": "3"}}
            ], "owner_column": "owner", "owner_id": "user-1", "detect_conflicts": true})
        );
        // without the setting, or without previous values: the call as before
        s.conflict_detection = false;
        let mut stale = patch("a", json!({"t": "x"}));
        stale.previous = previous(json!({"t": "seen"}));
        let plain = body(&plan(vec![stale], &s)[0]);
        assert!(plain.get("detect_conflicts").is_none() && plain["ops"][0].get("expect").is_none(), "{plain}");
    }

    #[test]
    fn transaction_id_longer_than_the_ledger_takes_is_applied_without_a_ledger_record() {
        let mut s = settings();
        s.atomic = AtomicMode::Always;
        let with_client = Caller { client_id: Some("client-1".to_string()), ..caller() };
        for (id, recorded) in [("x".repeat(MAX_LEDGER_ID_BYTES), true), ("x".repeat(MAX_LEDGER_ID_BYTES + 1), false)] {
            let transaction = Transaction { transaction_id: Some(json!(id)), entries: vec![delete("b")] };
            let body = body(&plan_transaction(&transaction, &s, &with_client).expect("planned")[0]);
            assert_eq!(body.get("transaction_id").is_some(), recorded, "{} bytes", id.len());
            assert_eq!(body.get("client_id").is_some(), recorded, "{} bytes", id.len());
        }
    }

    #[test]
    fn atomic_service_mode_passes_the_owner() {
        let mut s = service();
        s.atomic = AtomicMode::Always;
        s.atomic_function = "apply_tx".to_string();
        let requests = plan(vec![put("a", json!({"owner": "x"})), patch("a", json!({"owner": "x", "t": 1}))], &s);
        assert_eq!(requests[0].request.url, "https://p.supabase.co/rest/v1/rpc/apply_tx");
        assert_eq!(
            body(&requests[0]),
            json!({"ops": [
                {"op": "PUT", "table": "todos", "id": "a", "data": {"id": "a", "owner": "user-1"}},
                {"op": "PATCH", "table": "todos", "id": "a", "data": {"t": 1}}
            ], "owner_column": "owner", "owner_id": "user-1"})
        );
    }

    #[test]
    fn invalid_table_name_fails_the_transaction_before_any_request() {
        let result = plan_transaction(
            &tx(vec![put("a", json!({})), e(Op::Put, "todos?x=1", "b", json!({}))]),
            &settings(),
            &caller(),
        );
        let failure = result.expect_err("fatal");
        assert_eq!((failure.index, failure.code.as_str()), (Some(1), "invalid_table_name"));
    }

    #[test]
    fn tables_outside_the_allowlist_are_refused() {
        let mut s = settings();
        s.tables = Some(BTreeSet::from(["todos".to_string()]));
        assert!(plan_transaction(&tx(vec![put("a", json!({}))]), &s, &caller()).is_ok());
        for table in ["lists", "Todos"] {
            let failure =
                plan_transaction(&tx(vec![put("a", json!({})), e(Op::Delete, table, "b", Value::Null)]), &s, &caller())
                    .expect_err("refused");
            assert_eq!((failure.index, failure.code.as_str()), (Some(1), TABLE_NOT_LISTED));
            assert!(failure.message.contains("UPLOAD_TABLES"), "{}", failure.message);
        }
    }

    #[test]
    fn empty_ids_and_ids_with_nul_fail_the_transaction_before_any_request() {
        for settings in [settings(), service(), {
            let mut atomic = settings();
            atomic.atomic = AtomicMode::Always;
            atomic
        }] {
            for entries in [
                vec![delete("a"), delete("a\u{0}b")],
                vec![patch("x", json!({"n": 1})), patch("a\u{0}", json!({"n": 1}))],
                vec![put("a", json!({})), put("\u{0}", json!({}))],
                vec![put("a", json!({})), put("", json!({}))],
                vec![delete("a"), delete("")],
            ] {
                let failure = plan_transaction(&tx(entries), &settings, &caller()).expect_err("fatal");
                assert_eq!((failure.index, failure.code.as_str()), (Some(1), "invalid_id"));
            }
        }
    }

    #[test]
    fn a_delete_of_an_id_its_group_deletes_already_starts_the_next_request() {
        let plan =
            plan_transaction(&tx(vec![delete("a"), delete("b"), delete("a"), delete("c")]), &settings(), &caller())
                .expect("plan");
        let groups: Vec<Vec<usize>> = plan
            .iter()
            .map(|p| match &p.check {
                Check::Filtered { row_entries, .. } => row_entries.clone(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(groups, vec![vec![0, 1], vec![2, 3]]);
    }

    #[test]
    fn column_names_no_column_can_have_fail_the_entry_before_sending() {
        let long = "c".repeat(MAX_IDENTIFIER_BYTES + 1);
        for name in [r#""""#, r#""x\ud800""#, r#""a\u0000b""#, &format!("\"{long}\"")] {
            for op in ["PUT", "PATCH"] {
                let body = format!(
                    r#"{{"batch": [{{"op": "PUT", "table": "todos", "id": "a", "data": {{"x": 1}}}},
                        {{"op": "{op}", "table": "todos", "id": "b", "data": {{"y": 1, {name}: 2}}}}]}}"#
                );
                let transactions = crate::upload::parse(body.as_bytes(), &crate::upload::Limits::default())
                    .unwrap_or_else(|e| panic!("{body}: {e:?}"));
                for atomic in [false, true] {
                    let failure = plan_transaction_as(&transactions[0], &settings(), &caller(), atomic)
                        .expect_err("refused before sending");
                    assert_eq!((failure.index, failure.code.as_str()), (Some(1), "invalid_column_name"), "{name}");
                }
            }
        }
        let longest = "c".repeat(MAX_IDENTIFIER_BYTES);
        assert!(plan_transaction(&tx(vec![put("a", json!({ longest: 1 }))]), &settings(), &caller()).is_ok());
    }

    #[test]
    fn text_that_is_not_json_in_a_json_column_fails_the_entry_before_sending() {
        let mut s = settings();
        s.json_columns.insert("todos", "tags");
        let transaction = tx(vec![put("a", json!({"tags": "[1]"})), patch("b", json!({"tags": "[oops"}))]);
        for atomic in [false, true] {
            let failure = plan_transaction_as(&transaction, &s, &caller(), atomic).expect_err("refused before sending");
            assert_eq!((failure.index, failure.code.as_str()), (Some(1), "invalid_json"));
            assert!(failure.message.contains("todos.tags"), "{}", failure.message);
        }
        assert!(plan_transaction(&transaction, &settings(), &caller()).is_ok(), "not a JSON column: text as sent");
    }

    #[test]
    fn the_dead_letter_table_is_never_writable_by_clients() {
        let mut s = settings();
        s.dead_letter_table = Some("dead".to_string());
        let failure =
            plan_transaction(&tx(vec![e(Op::Put, "dead", "a", json!({}))]), &s, &caller()).expect_err("fatal");
        assert_eq!(failure.code, "table_not_allowed");
    }

    #[test]
    fn a_transaction_id_the_ledger_cannot_hold_goes_without_the_ledger() {
        let with_id = |id: Value| Transaction { transaction_id: Some(id), entries: vec![] };
        assert_eq!(ledger_id(&with_id(json!(7))).as_deref(), Some("7"));
        assert_eq!(ledger_id(&with_id(json!("t-7"))).as_deref(), Some("t-7"));
        for id in [json!(""), json!("a\u{0}b"), json!("x".repeat(MAX_LEDGER_ID_BYTES + 1)), json!(true)] {
            assert_eq!(ledger_id(&with_id(id.clone())), None, "{id}");
        }
    }

    #[test]
    fn the_bridges_own_tables_are_never_writable_by_clients_even_without_settings() {
        let s = settings();
        assert!(s.dead_letter_table.is_none() && s.tables.is_none());
        for table in BRIDGE_TABLES {
            let failure =
                plan_transaction(&tx(vec![e(Op::Put, table, "a", json!({}))]), &s, &caller()).expect_err("fatal");
            assert_eq!(failure.code, "table_not_allowed", "{table}");
        }
    }

    #[test]
    fn only_an_earlier_put_of_the_row_stops_its_comparison() {
        let previous = |v: Value| Some(v.as_object().cloned().unwrap_or_default().into());
        let mut s = settings();
        s.conflict_detection = true;
        let mut patch_x = patch("x", json!({"t": "y"}));
        patch_x.previous = previous(json!({"t": "x"}));
        let conditional = |entries: Vec<Entry>| -> Vec<bool> {
            plan(entries, &s).iter().map(|r| matches!(r.check, Check::Conditional { .. })).collect()
        };
        assert_eq!(conditional(vec![put("x", json!({"t": "x"})), patch_x.clone()]), [false, false]);
        let mut patch_x2 = patch("x", json!({"t": "z"}));
        patch_x2.previous = previous(json!({"t": "y"}));
        assert_eq!(conditional(vec![patch_x, patch_x2]), [true, true]);
    }

    #[test]
    fn conflict_conditions_keep_the_url_within_its_limit() {
        let mut s = settings();
        s.conflict_detection = true;
        let mut p = patch("x", json!({"a": 1, "b": 2}));
        p.previous =
            Some(json!({"a": "v".repeat(5000), "b": "w".repeat(5000)}).as_object().cloned().unwrap_or_default().into());
        let requests = plan(vec![p], &s);
        assert!(
            requests.iter().all(|r| r.request.url.len() <= filter::MAX_URL_BYTES),
            "{}",
            requests[0].request.url.len()
        );
        assert!(matches!(requests[0].check, Check::Conditional { .. }), "the column that fits is still compared");
    }
}
