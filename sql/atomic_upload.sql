-- PowerSync upload bridge: atomic transaction upload.
--
-- Run this once in your Supabase project (SQL editor or a migration) if you
-- want the bridge to apply each PowerSync transaction all-or-nothing.
-- PostgREST runs each HTTP request in one database transaction, so the
-- bridge sends a whole PowerSync transaction as a single call:
--
--   POST /rest/v1/rpc/powersync_apply_transaction
--   {"ops": [{"op": "PUT",    "table": "todos", "id": "...", "data": {...}},
--            {"op": "PATCH",  "table": "todos", "id": "...", "data": {...}},
--            {"op": "DELETE", "table": "lists", "id": "..."}]}
--
-- Ops are applied in order. Any error aborts the whole call (nothing is
-- written) and PostgREST answers with the Postgres error (same SQLSTATE,
-- message and detail); the error's hint names the failing op
-- (`powersync op <index> (<OP> <table>/<id>)`, index from 0), after the
-- original hint if there was one.
--
--   PUT    = INSERT ... ON CONFLICT (id) DO UPDATE SET <only the columns in
--            data; a PUT of its id alone: id = excluded.id, as PostgREST's
--            upsert, so it needs UPDATE of id too>; values are typed by the table's columns (jsonb_to_record
--            with the keys given only, as PostgREST does; through jsonb, not
--            PostgREST's json: a json column gets jsonb's text of a value,
--            a number in exponent form is written out, docs/upload.md).
--   PATCH  = UPDATE <only the columns in data> WHERE id = <id>; empty data is
--            a no-op.
--   DELETE = DELETE WHERE id = <id>.
-- Tables are looked up in schema public; every table needs a unique `id`.
--
-- Batching: runs of consecutive ops are applied with one statement each,
-- which is several times faster than one statement per op:
--   * consecutive PUTs to the same table whose data have the same keys (and
--     whose ids differ: an upsert cannot touch one row twice, so a repeated
--     id starts a new group) become one multi-row
--     INSERT ... SELECT ... FROM jsonb_to_recordset(...) ON CONFLICT (id) DO UPDATE;
--   * consecutive DELETEs from the same table become one
--     DELETE ... WHERE id = ANY(...) (a second DELETE of one row, in any
--     spelling of its id, changes nothing and is reported unchanged);
--   * PATCHes are applied one at a time.
-- The result is the same as applying the ops one by one. When a group's
-- statement fails, the call's work is rolled back and done again with that
-- group's rows in halves (a savepoint each, on this failure path only), so
-- the hint names the op whose row fails (its index and id) and the bridge
-- reports that index as the failing op, as one statement per op would; the
-- message and detail are Postgres's. A group that fails only as one
-- statement then applies. Once the call has run a fifth of
-- statement_timeout, it is not done again: the hint names the group's
-- first op; past four fifths of it, a refused half's error is raised,
-- naming the half's first op.
--
-- search_path = pg_catalog, pg_temp: every table is schema-qualified
-- (public.<table>, pg_catalog.pg_attribute ...) and built-ins resolve in
-- pg_catalog first, temporary objects last, so no role that can create
-- objects in public (or a temporary schema) can shadow a built-in the
-- function calls (a public.format(text, text) would otherwise be preferred
-- to pg_catalog's variadic format and run as the caller). Triggers fired by
-- its writes run with this search_path too: qualify the names they use, or
-- give trigger functions their own `set search_path` (Supabase's linter asks
-- for it anyway).
--
-- SECURITY INVOKER: it runs with the caller's rights, so row-level security
-- applies exactly as for plain REST writes when called with a user's token.
--
-- Service mode (the bridge calls with the service key, which bypasses RLS):
-- the bridge passes owner_column/owner_id and then
--   * PUT forces <owner_column> = owner_id, and an existing row with the same
--     id that belongs to someone else is not taken over: error 42501;
--   * PATCH and DELETE only touch rows whose <owner_column> is owner_id, as
--     the column's type reads it (an upper-case uuid names the same owner)
--     (other users' rows are silently left alone, like RLS-hidden rows);
--     a PATCH cannot change <owner_column> (it is forced to owner_id).
--
-- Returns {"applied": <number of ops processed>, "unchanged": [<op index>, ...]}:
-- "unchanged" lists, in order, the PATCH ops that updated no row and the
-- DELETE ops whose id matched no row (gone already, hidden by row-level
-- security, or another owner's in service mode), learnt from the statements
-- themselves (row count; the DELETE's `returning id`), without another query.
--
-- Exactly once (client_id, transaction_id): the bridge passes the PowerSync
-- client id the app sent with its upload and the transaction's id. The call
-- then records (user, client_id, transaction_id, digest of ops) in
-- public.powersync_upload_ledger, in the same database transaction as the
-- writes. A later call with the same three and the same ops, or the same
-- entries as the client sent them (the X-PowerSync-Entries-Digest header: a
-- bridge whose settings or version changed writes other ops for them; see
-- powersync_upload_entries_digest), such as the client re-sending a
-- transaction whose answer was lost, applies nothing and returns
-- {"applied": 0, "already_applied": true}, with the first call's "unchanged"
-- when it was not empty (powersync_upload_ledger_unchanged). A transaction
-- the bridge reported rejected and dead-lettered
-- (powersync_upload_ledger_refuse) is never applied
-- by a later call either (one the bridge gave up on that arrives late, or a
-- re-send): it returns {"applied": 0, "dead_letter": {"id", "index", "code",
-- "message", "details"}}, as recorded. Without the two (either null) it
-- applies the ops as before and records nothing. The same ids with
-- DIFFERENT ops and entries (a client whose local database was reset and
-- reuses its ids) are applied, and the record replaced. A transaction the
-- bridge is applying through REST requests after its call was cancelled by
-- the statement timeout (powersync_upload_ledger_rest_begin) is not applied
-- meanwhile: the call raises 55P03 (retryable). The user is owner_id if the caller
-- bypasses row-level security (service mode, an operator), else the caller's
-- JWT `sub` (request.jwt.claims, set by PostgREST), else the call is refused:
-- a user cannot choose another user's key. Records are kept 30 days and at most 10,000 per user (the table
-- public.powersync_upload_ledger_settings, which no API role can read or
-- change; see powersync_upload_ledger_claim for the ranges): each recording
-- call deletes up to 100 expired ones, and a user's oldest beyond the cap. A
-- transaction re-sent after that is applied again, as without a ledger.
--
-- The ledger is reached only through powersync_upload_ledger_claim (SECURITY
-- DEFINER): API roles have no privileges on the table itself (RLS on, no
-- policies), so in RLS mode, where this function runs as the user, the user
-- cannot read or write other users' records. A user calling the claim
-- function directly can only mark their own (client, transaction) as
-- applied, which only hurts their own uploads; its inputs are checked and a
-- user's records are capped.
--
-- Conflict detection (detect_conflicts => true; the bridge's
-- UPLOAD_CONFLICT_DETECTION, docs/conflicts.md): a PATCH or DELETE op may
-- carry "expect": {"<column>": "<text>" | <array or object> | null, ...}, the
-- values the client saw. The op then applies only where the row still holds
-- them, compared as PostgREST's `eq.`/`is.null` filters do: `t.<column> =
-- '<text>'` with the text as an untyped literal (PostgreSQL casts it to the
-- column's type) and `t.<column> is null` for null; an array or object (a
-- JSON column's value) as JSON, `to_jsonb(t.<column>) = <value>`, which json,
-- jsonb and array columns alike can take. When it changes no row, the row is read (with
-- the caller's rights: RLS applies): no row = gone or hidden, the op is listed
-- in "unchanged" as without "expect"; a PATCH whose row already holds every
-- value it sets (compared as written: `to_jsonb` of the column `is not
-- distinct from` that of the value typed by the column, so json and
-- array columns compare too) was applied before: no conflict; a row that still
-- holds the expected values was not changed by anyone (a policy for the
-- command, the row readable, or a trigger refused the write): listed in
-- "unchanged", no conflict either; otherwise the call
-- applies NOTHING (every write of the call is rolled back, the ledger records
-- nothing) and returns
--   {"applied": 0, "conflict": {"index": <op index>, "row": <the row as read>}}.
-- The ledger is asked first: a transaction already applied is
-- {"already_applied": true} before any comparison. Its digest leaves "expect"
-- out (the ops as the dead-letter table stores them), so a replay of a
-- `conflict` dead letter is recorded under the same digest. Without
-- detect_conflicts, "expect" is ignored (as by copies before it), so callers
-- that do not pass it see the function as before; a bridge that compares
-- passes it, and a copy of the function without the argument answers
-- "function not found" (PGRST202) instead of applying without comparing.
--
-- Idempotent: safe to run again to upgrade. Upgrading from the copies without
-- client_id/transaction_id (3 arguments) or without detect_conflicts (5)
-- drops them (one transaction, so no call sees neither); the bridge's
-- dead-letter replay calls it with positional arguments and is unaffected.

begin;

-- Run again while uploads go on, a lock this file waits for holds every new call of the
-- function behind it (they queue after its request): wait at most 3 s for each, then fail
-- (55P03: nothing changed; run it again at a quieter moment) rather than stall the uploads.
set local lock_timeout = '3s';

-- Run again while uploads go on: take both tables' locks first, in the order a call takes them
-- (powersync_upload_ledger_claim reads the settings, then writes the ledger); the alter
-- statements below would otherwise lock the ledger before the settings, and a call caught
-- between its two steps would deadlock with this file (40P01).
do $$
begin
  if pg_catalog.to_regclass('public.powersync_upload_ledger_settings') is not null then
    lock table public.powersync_upload_ledger_settings in access exclusive mode;
  end if;
  if pg_catalog.to_regclass('public.powersync_upload_ledger') is not null then
    lock table public.powersync_upload_ledger in access exclusive mode;
  end if;
end
$$;

-- Earlier copies a re-run cannot replace in place (`create or replace` can change neither a
-- return type nor drop a parameter's default): the ledger cap of some had a default for p_cap.
-- Dropped, then made anew below with their grants; without this the whole file failed on such a
-- project and left it as it was. The ledger reject function had three parameters (and in one
-- version returned void): beside the one with p_rejection, a call naming three would be
-- ambiguous.
do $$
begin
  drop function if exists public.powersync_upload_ledger_reject(text, text, text);
  if exists (select 1 from pg_catalog.pg_proc as p
              where p.oid = pg_catalog.to_regprocedure('public.powersync_upload_ledger_cap(text, integer)')
                and p.pronargdefaults > 0) then
    drop function public.powersync_upload_ledger_cap(text, integer);
  end if;
end
$$;

create table if not exists public.powersync_upload_ledger (
  user_id        text        not null,
  client_id      text        not null,
  transaction_id text        not null,
  digest         text        not null,  -- sha256 of the ops, hex
  applied_at     timestamptz not null default now(),
  primary key (user_id, client_id, transaction_id)
);
-- added after the first release: the dead letter of a transaction the bridge reported rejected
-- (null: applied); see powersync_upload_ledger_refuse
alter table public.powersync_upload_ledger add column if not exists dead_letter_id bigint;
-- added later: the ops of an applied transaction that changed no row ("unchanged"), so a re-send
-- after a lost answer reports them too (null: none); see powersync_upload_ledger_unchanged
alter table public.powersync_upload_ledger add column if not exists unchanged integer[];
-- added later: the digest of the transaction's entries as the client sent them (null: recorded
-- without it), the same for every attempt whatever the bridge's settings or version, which change
-- the ops and so `digest`; see powersync_upload_entries_digest
alter table public.powersync_upload_ledger add column if not exists entries_digest text;
-- added later: the rows an applied transaction's ops write, as the md5 of their
-- powersync_upload_row_key, for at most 1000 ops (null: not recorded, or more ops); a replay of an
-- older dead letter is refused where it would write one of them (sql/dead_letter.sql); see
-- powersync_upload_ledger_rows
alter table public.powersync_upload_ledger add column if not exists row_keys text[];
-- added later: set while the transaction is being applied through REST requests after its atomic
-- call was cancelled by the statement timeout, until when at the latest (null: not); see
-- powersync_upload_ledger_rest_begin
alter table public.powersync_upload_ledger add column if not exists rest_until timestamptz;
-- ... and the mark's token, which only the upload that made the mark knows (null: no mark)
alter table public.powersync_upload_ledger add column if not exists rest_mark text;
-- added later: of a rejected transaction, what a later call of it is answered beside its dead
-- letter (null: nothing more): {"applied_via": "rest"} when an attempt of it went through REST
-- requests before it was rejected (powersync_upload_ledger_refuse), and without a dead letter
-- the failure the bridge reported (powersync_upload_ledger_reject); see
-- powersync_upload_ledger_dead_letter
alter table public.powersync_upload_ledger add column if not exists rejection jsonb;
create index if not exists powersync_upload_ledger_applied_at
  on public.powersync_upload_ledger (applied_at);
comment on table public.powersync_upload_ledger is
  'PowerSync upload bridge: transactions applied by powersync_apply_transaction, or rejected and dead-lettered, so a re-send applies nothing.';
alter table public.powersync_upload_ledger enable row level security;
revoke all on table public.powersync_upload_ledger from public;

-- Ledger settings: one row, no privileges for any API role (an API session can
-- neither read nor change them; unlike a GUC, no session can SET them).
-- Change them as the owner, e.g.
--   update public.powersync_upload_ledger_settings set retention = '90 days';
-- Both are clamped when read (see powersync_upload_ledger_claim):
--   retention             1 day .. 365 days, default 30 days;
--   max_records_per_user  1,000 .. 1,000,000, default 10,000.
create table if not exists public.powersync_upload_ledger_settings (
  id                   boolean primary key default true check (id),
  retention            interval not null default interval '30 days',
  max_records_per_user integer not null default 10000
);
comment on table public.powersync_upload_ledger_settings is
  'PowerSync upload bridge: ledger retention and per-user cap (one row; clamped when read).';
alter table public.powersync_upload_ledger_settings enable row level security;
-- the first run keeps a retention set the old way (powersync.ledger_retention), if valid
do $$
declare
  v_keep interval;
begin
  begin
    v_keep := nullif(current_setting('powersync.ledger_retention', true), '')::interval;
  exception when others then
    v_keep := null;
  end;
  insert into public.powersync_upload_ledger_settings as s (id, retention)
  values (true, coalesce(v_keep, interval '30 days'))
  on conflict (id) do nothing;
end
$$;

-- a user's records, newest first: the per-user cap
create index if not exists powersync_upload_ledger_user_applied_at
  on public.powersync_upload_ledger (user_id, applied_at);
-- a user's marks (powersync_upload_ledger_rest_begin), which the cap leaves while they last
create index if not exists powersync_upload_ledger_user_marks
  on public.powersync_upload_ledger (user_id) where rest_until is not null;

-- Privileges: none for the API roles on either table (older Supabase projects
-- grant every new table in public to them by default).
do $$
declare
  r text;
begin
  execute 'revoke all on table public.powersync_upload_ledger_settings from public';
  foreach r in array array['anon', 'authenticated', 'service_role'] loop
    if exists (select 1 from pg_catalog.pg_roles where rolname = r) then
      execute pg_catalog.format('revoke all on table public.powersync_upload_ledger from %I', r);
      execute pg_catalog.format('revoke all on table public.powersync_upload_ledger_settings from %I', r);
    end if;
  end loop;
end
$$;

-- The user whose ledger records a call touches: p_owner_id if the calling role
-- bypasses row-level security (service mode, operators: it acts for the user
-- it names, and a `sub` its own key may carry is the same for every user);
-- else the caller's JWT `sub`; else '' for a caller that bypasses row-level
-- security, 42501 for any other. The dead-letter recorder keys the ledger by
-- the same user (its user_id). Called by the SECURITY DEFINER functions below
-- (SECURITY DEFINER changes current_user, not the `role` setting, which names
-- the calling role); no API role may call it.
create or replace function public.powersync_upload_ledger_user(p_owner_id text) returns text
language plpgsql
security invoker
set search_path = pg_catalog, pg_temp
as $$
declare
  v_claims  text := nullif(current_setting('request.jwt.claims', true), '');
  v_caller  text := coalesce(nullif(nullif(current_setting('role', true), 'none'), ''), session_user);
  v_trusted boolean;
  v_user    text;
begin
  v_user := nullif(case when v_claims is not null then v_claims::jsonb ->> 'sub' end, '');
  if v_user is null or p_owner_id is not null then
    select r.rolsuper or r.rolbypassrls into v_trusted
      from pg_catalog.pg_roles r where r.rolname = v_caller;
    v_trusted := coalesce(v_trusted, false);
    if v_trusted and p_owner_id is not null then
      return p_owner_id;
    end if;
    if v_user is null and not v_trusted then
      raise exception using errcode = '42501',
        message = 'powersync_upload_ledger_claim: the session has no sub';
    end if;
  end if;
  return coalesce(v_user, '');
end
$$;

-- The value of the request header p_header (lower case) when it is 32 lower-case hex digits,
-- else null (no such header, or not PostgREST's JSON in request.headers: a replay, psql).
create or replace function public.powersync_upload_request_token(p_header text)
returns text
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
declare
  v text;
begin
  begin
    v := nullif(current_setting('request.headers', true), '')::json ->> p_header;
  exception when others then
    return null;
  end;
  return case when v ~ '^[0-9a-f]{32}$' then v end;
end
$$;

-- The digest of the transaction's entries as the client sent them, which the
-- bridge sends with each call that the ledger records (the
-- X-PowerSync-Entries-Digest header, read from PostgREST's request.headers):
-- 32 lower-case hex digits, or null (no such header, as from an older bridge,
-- a replay or psql). Two attempts of one transaction carry the same one even
-- when the bridge's settings (a JSON or boolean column, the write mode) or
-- version changed between them and wrote its ops differently, so the ledger
-- knows a call by this digest or by the ops' digest. Like p_digest it is the
-- caller's word, and only ever matches the caller's own records.
create or replace function public.powersync_upload_entries_digest()
returns text
language sql
stable
set search_path = pg_catalog, pg_temp
as $$
  select public.powersync_upload_request_token('x-powersync-entries-digest')
$$;


-- The checks the ledger's /rpc functions below make of their input, and the user they act for
-- (powersync_upload_ledger_user): a client id and a transaction id of 1 to 256 bytes each, and
-- the X-PowerSync-Entries-Digest header; the errors (22023) name p_function. No API role may
-- call it.
create or replace function public.powersync_upload_ledger_caller(
  p_function text,
  p_client_id text,
  p_transaction_id text,
  p_owner_id text
) returns text
language plpgsql
security invoker
set search_path = pg_catalog, pg_temp
as $$
begin
  if coalesce(octet_length(p_client_id), 0) not between 1 and 256
     or coalesce(octet_length(p_transaction_id), 0) not between 1 and 256 then
    raise exception using errcode = '22023',
      message = p_function || ': p_client_id and p_transaction_id must be 1 to 256 bytes';
  end if;
  if public.powersync_upload_entries_digest() is null then
    raise exception using errcode = '22023',
      message = p_function || ': the X-PowerSync-Entries-Digest header is required';
  end if;
  return public.powersync_upload_ledger_user(p_owner_id);
end
$$;

-- Beyond p_cap records (the user's max_records_per_user, clamped as the caller
-- read it), that user's oldest records go, a few per call like expiry (which
-- only weakens that user's own exactly-once). Called by the functions below
-- after they made a new record, with the cap they read before writing the
-- ledger (the settings first, in the order the file's re-run locks them); no
-- API role may call it.
create or replace function public.powersync_upload_ledger_cap(p_user_id text, p_cap integer)
returns void
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_cut timestamptz;
begin
  select o.applied_at into v_cut from public.powersync_upload_ledger as o
   where o.user_id = p_user_id
   order by o.applied_at desc offset p_cap limit 1;
  if v_cut is not null then
    -- (never a mark that has not expired: an upload is applying that transaction right now)
    delete from public.powersync_upload_ledger as l
     where l.ctid in (select o.ctid from public.powersync_upload_ledger as o
                       where o.user_id = p_user_id and o.applied_at <= v_cut
                         and not coalesce(o.rest_until > now(), false)
                       order by o.applied_at limit 100
                       for update skip locked);
  end if;
end
$$;

-- Records (user, client, transaction) unless already recorded with the same
-- digest, or the same entries digest (powersync_upload_entries_digest, when
-- both have one); true = already applied (apply nothing). Called by
-- powersync_apply_transaction inside its transaction: if the writes fail,
-- the record is rolled back with them. A concurrent call for the same key
-- waits for the first one's transaction, then sees its record.
--
-- Callable by `authenticated` through /rpc, so it trusts nothing it is given:
--   * p_digest must be a sha256 in hex (64 lower-case hex digits);
--   * p_client_id and p_transaction_id: 1 to 256 bytes. 256 is the bridge's
--     own limit for a client id (a longer one is refused with 400 before
--     anything is sent) and the bridge sends no longer transaction id to the
--     ledger (such a transaction is applied without a ledger record), so a
--     longer value can only come from a direct call;
--   * the user is the caller's JWT `sub`; p_owner_id counts only for a caller
--     that bypasses row-level security (service mode, operators), and then
--     before its `sub`. A caller with neither is refused (42501): a user only
--     ever touches their own records;
--   * each new record beyond the user's max_records_per_user removes that
--     user's oldest (which only weakens that user's own exactly-once: a
--     re-send of a transaction that old is applied again);
--   * p_not_before (the dead-letter replay): a record of this (user, client,
--     transaction) made at or after it counts as applied, whatever its ops;
--   * a dead-lettered record (powersync_upload_ledger_refuse) with the same
--     digest counts as applied (true: apply nothing) for every call but the
--     replay (p_not_before given), which turns it into an applied record.
-- Errors: 22023 for bad input, 42501 for a caller without a user.
create or replace function public.powersync_upload_ledger_claim(
  p_client_id text,
  p_transaction_id text,
  p_digest text,
  p_owner_id text default null,
  p_not_before timestamptz default null
) returns boolean
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_user    text;
  v_digest  text;
  v_entries text := public.powersync_upload_entries_digest();
  v_same    text;
  v_dead    bigint;
  v_at      timestamptz;
  v_rest    timestamptz;
  v_keep    interval;
  v_cap     integer;
begin
  if p_digest is null or p_digest !~ '^[0-9a-f]{64}$' then
    raise exception using errcode = '22023',
      message = 'powersync_upload_ledger_claim: p_digest must be a sha256 in hex (64 lower-case hex digits)';
  end if;
  if coalesce(octet_length(p_client_id), 0) not between 1 and 256
     or coalesce(octet_length(p_transaction_id), 0) not between 1 and 256 then
    raise exception using errcode = '22023',
      message = 'powersync_upload_ledger_claim: p_client_id and p_transaction_id must be 1 to 256 bytes';
  end if;
  v_user := public.powersync_upload_ledger_user(p_owner_id);

  select least(greatest(s.retention, interval '1 day'), interval '365 days'),
         least(greatest(s.max_records_per_user, 1000), 1000000)
    into v_keep, v_cap
    from public.powersync_upload_ledger_settings as s;
  v_keep := coalesce(v_keep, interval '30 days');
  v_cap := coalesce(v_cap, 10000);

  -- a few expired records per call (index on applied_at): pruning keeps pace. Rows another
  -- call is pruning right now are skipped, so concurrent calls neither wait nor deadlock here.
  delete from public.powersync_upload_ledger as l
   where l.ctid in (select o.ctid from public.powersync_upload_ledger as o
                     where o.applied_at < now() - v_keep
                     order by o.applied_at limit 100
                     for update skip locked);

  -- the record is made, or the one there is locked; when another call's pruning deletes that
  -- one between the two, the insert is tried again (else this call would go unrecorded)
  loop
    insert into public.powersync_upload_ledger as l (user_id, client_id, transaction_id, digest, entries_digest)
    values (v_user, p_client_id, p_transaction_id, p_digest, v_entries)
    on conflict (user_id, client_id, transaction_id) do nothing;
    if found then
      perform public.powersync_upload_ledger_cap(v_user, v_cap);
      return false;
    end if;
    select l.digest, l.entries_digest, l.applied_at, l.dead_letter_id, l.rest_until
      into v_digest, v_same, v_at, v_dead, v_rest
      from public.powersync_upload_ledger as l
     where l.user_id = v_user and l.client_id = p_client_id and l.transaction_id = p_transaction_id
     for update;
    exit when found;
  end loop;
  -- being applied through REST requests by another upload (powersync_upload_ledger_rest_begin):
  -- applied now, it could be overwritten by that upload's writes after the client's later
  -- transactions. It waits (55P03, retryable) until that upload records it or ends the mark, or
  -- the mark expires
  if v_rest > now() then
    raise exception using errcode = '55P03',
      message = pg_catalog.format('transaction %s of client %s is being applied through REST requests by another '
                                  'upload (its atomic call was cancelled by the statement timeout): retry after that '
                                  'upload ends (at the latest %s)', p_transaction_id, p_client_id, v_rest);
  end if;
  -- begun through REST requests by an upload that ended (powersync_upload_ledger_rest_abandon) or
  -- stopped (an expired mark) before it was applied: some of its writes may be in place, which an
  -- atomic call would neither undo nor report (its dead letter would say nothing was applied). It
  -- goes on through REST requests, whose result says which entries were applied: cancelled
  -- (57014, nothing applied now), as the bridge does after a statement timeout. The same ids with
  -- other entries are another transaction (below).
  if v_rest is not null and v_same = v_entries then
    raise exception using errcode = '57014',
      message = pg_catalog.format('transaction %s of client %s was begun through REST requests by an earlier upload '
                                  'that ended before it was applied: it goes on through REST requests, whose result '
                                  'says which of its entries were applied', p_transaction_id, p_client_id);
  end if;
  -- a dead-lettered transaction: its replay applies it (from now on it counts as applied);
  -- anything else, a late or re-sent call, applies nothing. The same transaction: the same ops,
  -- or the same entries written as other ops (the bridge's settings or version changed).
  if v_rest is null and (v_digest = p_digest or v_same = v_entries or v_at >= p_not_before)
     and not (v_dead is not null and p_not_before is not null) then
    return true;
  end if;
  -- the replay, or the same ids for other ops: a new transaction (the client reused its ids);
  -- the replay keeps the entries' digest the dead letter was recorded with, when the record is
  -- that letter's (the same ops: not a later transaction under the same ids, whose digest would
  -- then answer that transaction's re-send as applied)
  update public.powersync_upload_ledger as l
     set digest = p_digest, applied_at = now(), dead_letter_id = null, unchanged = null,
         rest_until = null, rest_mark = null, rejection = null,
         entries_digest = case when p_not_before is not null and v_digest = p_digest
                               then coalesce(v_entries, l.entries_digest)
                               else v_entries end
   where l.user_id = v_user and l.client_id = p_client_id and l.transaction_id = p_transaction_id;
  return false;
end
$$;

comment on function public.powersync_upload_ledger_claim(text, text, text, text, timestamptz) is
  'PowerSync upload bridge: record a transaction in the ledger; true if it was already applied.';
-- the copy before input checks had four arguments: a call with four would be ambiguous
drop function if exists public.powersync_upload_ledger_claim(text, text, text, text);
do $$
declare
  r text;
begin
  execute 'revoke all on function public.powersync_upload_ledger_claim(text, text, text, text, timestamptz) from public';
  foreach r in array array['anon', 'authenticated', 'service_role'] loop
    if exists (select 1 from pg_catalog.pg_roles where rolname = r) then
      execute pg_catalog.format(
        'revoke all on function public.powersync_upload_ledger_claim(text, text, text, text, timestamptz) from %I', r);
    end if;
  end loop;
end
$$;
grant execute on function public.powersync_upload_ledger_claim(text, text, text, text, timestamptz)
  to authenticated, service_role;

-- A transaction the bridge reported rejected (fatal_error or conflict) and
-- dead-lettered must never be applied afterwards by a call the bridge gave up
-- on (a timeout) that reaches the database late: the client has discarded it
-- and may have written the same rows since. powersync_record_dead_letter
-- (sql/dead_letter.sql) calls this in the transaction that inserts the dead
-- letter: the ledger then holds (user, client, transaction, digest) with the
-- dead letter's id, and a later call of the same transaction applies nothing
-- and answers that dead letter (powersync_upload_ledger_dead_letter). If the
-- ledger shows the same transaction applied (the late call came first, or an
-- attempt whose answer was lost applied it before a setting changed), it
-- raises 55000, its detail {"unchanged": [...]} as recorded: no dead letter is
-- recorded, and the bridge answers the transaction already applied. A record
-- another upload marks as being applied through REST (its mark's token is not
-- this call's X-PowerSync-Rest-Mark header) raises 55P03: the bridge keeps the
-- transaction. Other ops under the same ids (a reused id) replace the record. Only the owner runs it
-- (through powersync_record_dead_letter): no API role may call it.
create or replace function public.powersync_upload_ledger_refuse(
  p_user_id text,
  p_client_id text,
  p_transaction_id text,
  p_digest text,
  p_dead_letter_id bigint
) returns void
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_digest  text;
  v_entries text := public.powersync_upload_entries_digest();
  v_same    text;
  v_dead    bigint;
  v_rest    timestamptz;
  v_mark    text;
  v_unchanged integer[];
begin
  if coalesce(octet_length(p_client_id), 0) not between 1 and 256
     or coalesce(octet_length(p_transaction_id), 0) not between 1 and 256 then
    return;  -- the bridge sends no such transaction to the ledger either
  end if;
  -- as in the claim: tried again when a concurrent pruning deletes the record in between
  loop
    insert into public.powersync_upload_ledger as l
      (user_id, client_id, transaction_id, digest, dead_letter_id, entries_digest)
    values (p_user_id, p_client_id, p_transaction_id, p_digest, p_dead_letter_id, v_entries)
    on conflict (user_id, client_id, transaction_id) do nothing;
    if found then
      return;
    end if;
    select l.digest, l.entries_digest, l.dead_letter_id, l.rest_until, l.rest_mark, l.unchanged
      into v_digest, v_same, v_dead, v_rest, v_mark, v_unchanged
      from public.powersync_upload_ledger as l
     where l.user_id = p_user_id and l.client_id = p_client_id and l.transaction_id = p_transaction_id
     for update;
    exit when found;
  end loop;
  -- another upload's mark: that upload is applying it through REST right now; this rejection
  -- waits (55P03), so that no copy applies the client's later transactions before those writes
  if v_rest > now() and v_mark is distinct from public.powersync_upload_request_token('x-powersync-rest-mark') then
    raise exception using errcode = '55P03',
      message = pg_catalog.format('transaction %s of client %s is being applied through REST requests by another '
                                  'upload: its rejection is not recorded', p_transaction_id, p_client_id);
  end if;
  -- begun through REST requests by an upload that ended or stopped (its mark ended or expired),
  -- and this call does not carry that mark: it was made before those requests (a late call of an
  -- earlier attempt's record, or another copy of the queue), and what it records (its entries'
  -- states, its failure) says nothing of what they applied. Not recorded: it waits (55P03, the
  -- bridge keeps the transaction), and the attempt that goes on through REST records its own
  if v_rest <= now() and v_same = v_entries
     and not coalesce(v_mark = public.powersync_upload_request_token('x-powersync-rest-mark'), false) then
    raise exception using errcode = '55P03',
      message = pg_catalog.format('transaction %s of client %s was begun through REST requests by an upload that '
                                  'ended before it was applied: its rejection is recorded by the attempt that goes on '
                                  'through REST requests', p_transaction_id, p_client_id);
  end if;
  -- (a record marked as being applied through REST is not applied: the upload that marked it
  -- rejects it now)
  if (v_digest = p_digest or v_same = v_entries) and v_dead is null and v_rest is null then
    raise exception using errcode = '55000',
      message = pg_catalog.format('transaction %s of client %s was applied: it is not recorded as a dead letter',
                                  p_transaction_id, p_client_id),
      detail = pg_catalog.jsonb_build_object('unchanged', pg_catalog.to_jsonb(coalesce(v_unchanged, '{}')))::text;
  end if;
  -- begun through REST requests (this upload's mark, or an ended or expired one of the same
  -- entries): what that attempt applied before the failing entry stayed applied, and a later
  -- call's answer says so
  update public.powersync_upload_ledger as l
     set digest = p_digest, dead_letter_id = p_dead_letter_id, applied_at = now(), unchanged = null,
         entries_digest = v_entries, rest_until = null, rest_mark = null,
         rejection = case when v_rest is not null and v_same = v_entries
                          then pg_catalog.jsonb_build_object('applied_via', 'rest') end
   where l.user_id = p_user_id and l.client_id = p_client_id and l.transaction_id = p_transaction_id;
end
$$;
comment on function public.powersync_upload_ledger_refuse(text, text, text, text, bigint) is
  'PowerSync upload bridge: record a dead-lettered transaction in the ledger, so no later call applies it.';

-- The same guard without a dead letter (UPLOAD_DEAD_LETTER_TABLE unset): the
-- bridge calls this through /rpc, as the caller of the atomic call, before it
-- reports a transaction rejected (fatal_error or conflict), so that a late call
-- of it applies nothing. The ledger then holds the transaction under the
-- digest of its entries (the X-PowerSync-Entries-Digest header, required) with
-- dead letter id 0 (none), and it answers true (which no proxy's 2xx says): a
-- later call of it answers {"applied": 0, "dead_letter": {"id": 0, ...}}, which
-- the bridge reports as rejected before. p_rejection: the failure the bridge
-- reports ({"index", "code", "message", "details", "hint", "http_status"}, a
-- JSON object of at most 8192 bytes), kept in the record so that such an answer
-- repeats it as a dead letter's does (the same status, index, code and
-- message); null keeps none. As for a dead letter, 55000 when the
-- ledger shows it applied (the late call came first), its detail the unchanged
-- entries recorded then: the bridge answers the transaction already applied. The user is found
-- as for the claim: a user only ever touches their own records, and rejecting
-- one's own transaction is no more than not sending it; their records stay
-- within max_records_per_user, as the claim keeps them. Errors: 22023 for bad
-- input, 42501 for a caller without a user.
create or replace function public.powersync_upload_ledger_reject(
  p_client_id text,
  p_transaction_id text,
  p_owner_id text default null,
  p_rejection jsonb default null
) returns boolean
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_entries text := public.powersync_upload_entries_digest();
  v_user    text;
  v_cap     integer;
  v_applied text;  -- the refusal's detail: the unchanged entries recorded when it was applied
begin
  v_user := public.powersync_upload_ledger_caller('powersync_upload_ledger_reject', p_client_id, p_transaction_id,
                                                  p_owner_id);
  if p_rejection is not null
     and (pg_catalog.jsonb_typeof(p_rejection) <> 'object' or pg_catalog.octet_length(p_rejection::text) > 8192) then
    raise exception using errcode = '22023',
      message = 'powersync_upload_ledger_reject: p_rejection must be a JSON object of at most 8192 bytes';
  end if;
  -- the settings before the ledger, in the order the file's re-run locks them (else 40P01)
  select least(greatest(s.max_records_per_user, 1000), 1000000) into v_cap
    from public.powersync_upload_ledger_settings as s;
  -- rejected already (its dead letter, or this record): kept as it is, so that a dead letter's
  -- replay still knows it, and its answer still quotes the letter
  if exists (select 1 from public.powersync_upload_ledger as l
              where l.user_id = v_user and l.client_id = p_client_id and l.transaction_id = p_transaction_id
                and l.dead_letter_id is not null and (l.entries_digest = v_entries or l.digest = v_entries)) then
    return true;
  end if;
  begin
    perform public.powersync_upload_ledger_refuse(v_user, p_client_id, p_transaction_id, v_entries, 0);
  exception when sqlstate '55000' then
    -- (a class's code catches the whole class: 55P03, another upload's mark, goes on as it is)
    if sqlstate <> '55000' then
      raise;
    end if;
    get stacked diagnostics v_applied = pg_exception_detail;
    raise exception using errcode = '55000',
      message = pg_catalog.format('transaction %s of client %s was applied: its rejection is not recorded',
                                  p_transaction_id, p_client_id),
      detail = v_applied;
  end;
  -- the failure reported, beside what the refusal recorded (whether it went through REST, which
  -- only the ledger says)
  if p_rejection is not null then
    update public.powersync_upload_ledger as l
       set rejection = coalesce(l.rejection, '{}') || (p_rejection - 'id' - 'applied_via')
     where l.user_id = v_user and l.client_id = p_client_id and l.transaction_id = p_transaction_id;
  end if;
  -- a user calls this through /rpc as often as they like: their records stay capped
  perform public.powersync_upload_ledger_cap(v_user, coalesce(v_cap, 10000));
  return true;
end
$$;
comment on function public.powersync_upload_ledger_reject(text, text, text, jsonb) is
  'PowerSync upload bridge: record a transaction reported rejected without a dead letter, so no later call applies it.';

-- A transaction the bridge applied through REST requests after its atomic call
-- was cancelled by the statement timeout (`applied_via: rest`) must not be
-- applied again by an attempt the bridge gave up on (a timeout) that reaches the
-- database late, after the client's later transactions: the bridge calls this
-- through /rpc, as the caller of the atomic call, before it reports such a
-- transaction applied. The ledger then holds it as applied under the digest of
-- its entries (the X-PowerSync-Entries-Digest header, required), and a late call
-- of it applies nothing (answered already applied). A record of the same entries
-- there already (the late call came first, or it was rejected) is kept as it
-- is; the mark of powersync_upload_ledger_rest_begin becomes the record of it
-- applied (another upload's mark, whose token this call does not carry: 55P03);
-- one of other entries under the same ids (a reused id) is replaced. The
-- rows it wrote are not known here (row_keys null: the replay of an older dead
-- letter treats it as writing every row, and asks for overwrite_later_writes).
-- p_unchanged: its entries that changed no row (indexes, as the atomic function
-- answers them), so that a re-send answered already applied reports them as the
-- first answer did. The user is found as for the claim, and stays within
-- max_records_per_user: a user who marks their own transaction applied only
-- keeps it from being applied. Errors: 22023 for bad input, 42501 for a caller
-- without a user.
drop function if exists public.powersync_upload_ledger_applied_via_rest(text, text, text);
create or replace function public.powersync_upload_ledger_applied_via_rest(
  p_client_id text,
  p_transaction_id text,
  p_owner_id text default null,
  p_unchanged integer[] default null
) returns boolean
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_entries text := public.powersync_upload_entries_digest();
  v_user    text;
  v_cap     integer;
  v_digest  text;
  v_same    text;
  v_rest    timestamptz;
  v_mark    text;
begin
  v_user := public.powersync_upload_ledger_caller('powersync_upload_ledger_applied_via_rest', p_client_id, p_transaction_id,
                                                  p_owner_id);
  if p_unchanged is not null and (pg_catalog.cardinality(p_unchanged) > 100000
     or exists (select 1 from unnest(p_unchanged) as u(i) where u.i is null or u.i < 0)) then
    raise exception using errcode = '22023',
      message = 'powersync_upload_ledger_applied_via_rest: p_unchanged must be entry indexes (at most 100,000)';
  end if;
  -- the settings before the ledger, in the order the file's re-run locks them (else 40P01)
  select least(greatest(s.max_records_per_user, 1000), 1000000) into v_cap
    from public.powersync_upload_ledger_settings as s;
  -- as in the claim: tried again when a concurrent pruning deletes the record in between
  loop
    insert into public.powersync_upload_ledger as l
      (user_id, client_id, transaction_id, digest, entries_digest, unchanged)
    values (v_user, p_client_id, p_transaction_id, v_entries, v_entries, nullif(p_unchanged, '{}'))
    on conflict (user_id, client_id, transaction_id) do nothing;
    if found then
      perform public.powersync_upload_ledger_cap(v_user, coalesce(v_cap, 10000));
      return true;
    end if;
    select l.digest, l.entries_digest, l.rest_until, l.rest_mark into v_digest, v_same, v_rest, v_mark
      from public.powersync_upload_ledger as l
     where l.user_id = v_user and l.client_id = p_client_id and l.transaction_id = p_transaction_id
     for update;
    exit when found;
  end loop;
  -- another upload's mark: its writes are still going on, and it records them itself
  if v_rest > now() and v_mark is distinct from public.powersync_upload_request_token('x-powersync-rest-mark') then
    raise exception using errcode = '55P03',
      message = pg_catalog.format('transaction %s of client %s is being applied through REST requests by another '
                                  'upload', p_transaction_id, p_client_id);
  end if;
  if (v_digest = v_entries or v_same = v_entries) and v_rest is null then
    return true;
  end if;
  update public.powersync_upload_ledger as l
     set digest = v_entries, entries_digest = v_entries, applied_at = now(), dead_letter_id = null,
         unchanged = nullif(p_unchanged, '{}'), row_keys = null, rest_until = null, rest_mark = null,
         rejection = null
   where l.user_id = v_user and l.client_id = p_client_id and l.transaction_id = p_transaction_id;
  return true;
end
$$;
comment on function public.powersync_upload_ledger_applied_via_rest(text, text, text, integer[]) is
  'PowerSync upload bridge: record a transaction applied through REST after its atomic call timed out, so no later call applies it again.';

-- The statement-timeout fallback above sends a transaction's REST requests
-- one by one, each its own statement: while they go on, another copy of the
-- same queue (the app restarted, or re-sent after its own timeout) could apply
-- the transaction and the client's later ones through powersync_apply_transaction,
-- and the fallback's next write would then land over those later writes. So the
-- bridge calls this through /rpc, as the caller of the atomic call, before the
-- fallback's first write, in its own request (committed before any write):
--   * the ledger holds the transaction (the same entries: the
--     X-PowerSync-Entries-Digest header, required) as applied: answers
--     {"applied": 0, "already_applied": true, "unchanged": [...]} and the bridge
--     sends nothing; as rejected: {"applied": 0, "dead_letter": {...}}, as the
--     atomic function answers them;
--   * another upload's mark that has not expired: 55P03 (retryable), nothing
--     changed; this upload's own (the same p_mark: a re-send after a lost
--     answer) is answered {"rest": "begun"} again;
--   * otherwise the record is marked as being applied through REST until
--     now() + 10 minutes, under p_mark (32 lower-case hex digits, drawn at
--     random by the bridge for each fallback: only it can end the mark), made,
--     or replacing one of other entries under the same ids, or an ended or
--     expired mark, and it answers {"rest": "begun"}.
-- While the mark stands, the claim of every atomic call of the transaction
-- raises 55P03 (retryable: the copy's transaction and its later ones wait),
-- and the fallback ends it: powersync_upload_ledger_applied_via_rest (applied),
-- the dead letter or powersync_upload_ledger_reject (rejected), or
-- powersync_upload_ledger_rest_abandon (retryable). A mark left by a bridge
-- that stopped midway expires; the bridge sends no write of the fallback later
-- than 5 minutes after it asked for the mark. The user is found as for the
-- claim, and stays within max_records_per_user: a user who marks their own
-- transaction only keeps it waiting for 10 minutes. The cap leaves a mark that
-- has not expired, so a user holds at most 100 at a time (a bridge needs one
-- per upload in flight): beyond them, 54000 (the bridge keeps the transaction
-- and retries later). Errors: 22023 for bad input, 42501 for a caller without
-- a user, 54000 and 55P03 as above.
create or replace function public.powersync_upload_ledger_rest_begin(
  p_client_id text,
  p_transaction_id text,
  p_owner_id text default null,
  p_mark text default null
) returns jsonb
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_entries   text := public.powersync_upload_entries_digest();
  v_user      text;
  v_cap       integer;
  v_digest    text;
  v_same      text;
  v_dead      bigint;
  v_rest      timestamptz;
  v_mark      text;
  v_unchanged integer[];
begin
  v_user := public.powersync_upload_ledger_caller('powersync_upload_ledger_rest_begin', p_client_id, p_transaction_id,
                                                  p_owner_id);
  if p_mark is null or p_mark !~ '^[0-9a-f]{32}$' then
    raise exception using errcode = '22023',
      message = 'powersync_upload_ledger_rest_begin: p_mark must be 32 lower-case hex digits';
  end if;
  -- the settings before the ledger, in the order the file's re-run locks them (else 40P01)
  select least(greatest(s.max_records_per_user, 1000), 1000000) into v_cap
    from public.powersync_upload_ledger_settings as s;
  if (select count(*) from (select 1 from public.powersync_upload_ledger as m
                             where m.user_id = v_user and m.rest_until > now()
                               and not (m.client_id = p_client_id and m.transaction_id = p_transaction_id)
                             limit 100) as live) >= 100 then
    raise exception using errcode = '54000',
      message = 'powersync_upload_ledger_rest_begin: 100 transactions of this user are being applied through REST '
                'requests already';
  end if;
  -- as in the claim: tried again when a concurrent pruning deletes the record in between
  loop
    insert into public.powersync_upload_ledger as l
      (user_id, client_id, transaction_id, digest, entries_digest, rest_until, rest_mark)
    values (v_user, p_client_id, p_transaction_id, v_entries, v_entries, now() + interval '10 minutes', p_mark)
    on conflict (user_id, client_id, transaction_id) do nothing;
    if found then
      perform public.powersync_upload_ledger_cap(v_user, coalesce(v_cap, 10000));
      return pg_catalog.jsonb_build_object('rest', 'begun');
    end if;
    select l.digest, l.entries_digest, l.dead_letter_id, l.rest_until, l.rest_mark, l.unchanged
      into v_digest, v_same, v_dead, v_rest, v_mark, v_unchanged
      from public.powersync_upload_ledger as l
     where l.user_id = v_user and l.client_id = p_client_id and l.transaction_id = p_transaction_id
     for update;
    exit when found;
  end loop;
  if v_rest > now() and v_mark = p_mark then
    return pg_catalog.jsonb_build_object('rest', 'begun');
  end if;
  if v_rest > now() then
    raise exception using errcode = '55P03',
      message = pg_catalog.format('transaction %s of client %s is being applied through REST requests by another '
                                  'upload: retry after that upload ends (at the latest %s)',
                                  p_transaction_id, p_client_id, v_rest);
  end if;
  if v_rest is null and (v_digest = v_entries or v_same = v_entries) then
    if v_dead is not null then
      return pg_catalog.jsonb_build_object('applied', 0, 'dead_letter',
        public.powersync_upload_ledger_dead_letter(p_client_id, p_transaction_id, p_owner_id));
    end if;
    return pg_catalog.jsonb_build_object('applied', 0, 'already_applied', true,
                                         'unchanged', pg_catalog.to_jsonb(coalesce(v_unchanged, '{}')));
  end if;
  update public.powersync_upload_ledger as l
     set digest = v_entries, entries_digest = v_entries, applied_at = now(), dead_letter_id = null,
         unchanged = null, row_keys = null, rest_until = now() + interval '10 minutes', rest_mark = p_mark,
         rejection = null
   where l.user_id = v_user and l.client_id = p_client_id and l.transaction_id = p_transaction_id;
  return pg_catalog.jsonb_build_object('rest', 'begun');
end
$$;
comment on function public.powersync_upload_ledger_rest_begin(text, text, text, text) is
  'PowerSync upload bridge: mark a transaction as being applied through REST, so no atomic call applies it meanwhile.';

-- The fallback above ended retryable (a write failed, it ran too long, or the
-- answer to its mark was lost): its mark is ended (the caller's record of these
-- entries marked with p_mark; another upload's mark stays), so that the
-- client's next attempt need not wait for it to expire. The record stays, as
-- a transaction begun through REST: some of its writes may be in place, so the
-- claim of its next atomic call sends it on through REST requests (57014), and
-- their result says which of its entries were applied. The user is found as
-- for the claim. Errors: 22023 for bad input, 42501 for a caller without a user.
create or replace function public.powersync_upload_ledger_rest_abandon(
  p_client_id text,
  p_transaction_id text,
  p_owner_id text default null,
  p_mark text default null
) returns boolean
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_entries text := public.powersync_upload_entries_digest();
  v_user    text;
begin
  v_user := public.powersync_upload_ledger_caller('powersync_upload_ledger_rest_abandon', p_client_id, p_transaction_id,
                                                  p_owner_id);
  update public.powersync_upload_ledger as l
     set rest_until = least(l.rest_until, now()), rest_mark = null
   where l.user_id = v_user and l.client_id = p_client_id and l.transaction_id = p_transaction_id
     and l.rest_until is not null and l.entries_digest = v_entries and l.rest_mark = p_mark;
  return true;
end
$$;
comment on function public.powersync_upload_ledger_rest_abandon(text, text, text, text) is
  'PowerSync upload bridge: end the mark of a transaction whose REST fallback ended retryable (it goes on through REST).';

-- The dead letter of the user's (client, transaction) that the ledger holds
-- under the digest of the entries this call carries (see
-- powersync_upload_entries_digest), or null: sql/dead_letter.sql's recorder
-- returns it instead of recording the same transaction a second time when a
-- re-send was written as other ops (the bridge's settings or version changed
-- between the two attempts). Only the owner runs it (through the recorder).
create or replace function public.powersync_upload_ledger_letter_of(
  p_user_id text,
  p_client_id text,
  p_transaction_id text
) returns bigint
language sql
stable
security definer
set search_path = pg_catalog, pg_temp
as $$
  -- 0: rejected without a dead letter (powersync_upload_ledger_reject), no letter's id
  select nullif(l.dead_letter_id, 0) from public.powersync_upload_ledger as l
   where l.user_id = p_user_id and l.client_id = p_client_id and l.transaction_id = p_transaction_id
     and l.entries_digest = public.powersync_upload_entries_digest()
$$;

-- Why no row of public.<p_table> can pass an op (a message naming the first command it needs,
-- PUT: INSERT, UPDATE, SELECT; PATCH: UPDATE, SELECT; DELETE: DELETE, SELECT, that no permissive
-- policy lets the current role run), where row-level security applies to that role (on; the
-- role neither bypasses it nor owns the table unforced); null otherwise. No row can pass then,
-- whoever writes it: the setup's (row-level security on and no policy yet, how the dashboard
-- creates tables; a policy forgotten), not the row's. The atomic function asks it when an op was
-- refused by row-level security or changed no row (PostgreSQL says nothing when no policy lets a
-- role UPDATE or DELETE: no row matches).
create or replace function public.powersync_upload_policy_gap(p_table text, p_op text)
returns text
language sql
stable
security invoker
set search_path = pg_catalog, pg_temp
as $$
  select pg_catalog.format('table %s has row-level security on and no policy lets %s %s, which a %s needs: no '
                           'row can pass (write the policy; the upload waits)', p_table, current_user, c.cmd, p_op)
    from pg_catalog.pg_class as t
    join pg_catalog.pg_namespace as n on n.oid = t.relnamespace and n.nspname = 'public'
    cross join pg_catalog.unnest(case p_op when 'PUT' then array['INSERT', 'UPDATE', 'SELECT']
                                           when 'PATCH' then array['UPDATE', 'SELECT']
                                           else array['DELETE', 'SELECT'] end) with ordinality as c(cmd, n)
   where t.relname = p_table and t.relrowsecurity
     and not exists (select 1 from pg_catalog.pg_roles as r
                      where r.rolname = current_user and (r.rolsuper or r.rolbypassrls))
     and (t.relforcerowsecurity or not pg_catalog.pg_has_role(current_user, t.relowner, 'USAGE'))
     and not exists (
           select 1 from pg_catalog.pg_policies as p
            where p.schemaname = 'public' and p.tablename = p_table and p.permissive = 'PERMISSIVE'
              and p.cmd in ('ALL', c.cmd)
              and ('public' = any (p.roles)
                   or exists (select 1 from pg_catalog.unnest(p.roles) as r(name)
                               where pg_catalog.pg_has_role(current_user, r.name, 'MEMBER'))))
   order by c.n
   limit 1
$$;

comment on function public.powersync_upload_policy_gap(text, text) is
  'PowerSync upload bridge: why no row can pass an op, when no row-level security policy lets the caller run a command it needs.';

-- A number spelled otherwise than in digits alone, as powersync_upload_row_key keys it: a
-- numeric id as 1.0, 1e3 or .5, or PostgreSQL 16's 0x1f, 0o17, 0b1 and 1_000 (any id column
-- reads them as one value, or refuses them). Its significant digits, then the zeros of an
-- integer (so 1.0, 1e0 and 0x1 give 1's key) or 'e' and the exponent (5e-1 for .5); its sign
-- dropped, as the key drops an integer's; '' for zero, as for 0. Null for anything else.
create or replace function public.powersync_upload_number_key(p_id text)
returns text
language plpgsql
immutable
parallel safe
set search_path = pg_catalog, pg_temp
as $$
declare
  v_m     text[] := regexp_match(lower(p_id), '^[[:space:]]*[+-]?(?:0([xob])_?([0-9a-f_]{1,100})'
                                              '|([0-9_]*)(?:\.([0-9_]*))?(?:e([+-]?[0-9]{1,9}))?)[[:space:]]*$');
  v_radix integer;
  v_digit integer;
  v_value numeric := 0;
  v_whole text;
  v_frac  text := '';
  v_exp   bigint := 0;
  v_sig   text;
  v_kept  text;
  c       text;
begin
  if v_m is null then
    return null;
  end if;
  if v_m[1] is not null then
    v_radix := case v_m[1] when 'x' then 16 when 'o' then 8 else 2 end;
    foreach c in array string_to_array(replace(v_m[2], '_', ''), null) loop
      v_digit := strpos('0123456789abcdef', c) - 1;
      if v_digit >= v_radix then
        return null;
      end if;
      v_value := v_value * v_radix + v_digit;
    end loop;
    v_whole := v_value::text;
  else
    v_whole := replace(coalesce(v_m[3], ''), '_', '');
    v_frac := replace(coalesce(v_m[4], ''), '_', '');
    if v_whole = '' and v_frac = '' then
      return null;
    end if;
    v_exp := coalesce(v_m[5], '0')::bigint;
  end if;
  v_sig := ltrim(v_whole || v_frac, '0');
  if v_sig = '' then
    return '';
  end if;
  v_kept := rtrim(v_sig, '0');
  v_exp := v_exp - length(v_frac) + length(v_sig) - length(v_kept);
  if v_exp between 0 and 64 then
    return v_kept || repeat('0', v_exp::integer);
  end if;
  return v_kept || 'e' || v_exp;
end
$$;
comment on function public.powersync_upload_number_key(text) is
  'PowerSync upload bridge: a number in another spelling than digits alone, as powersync_upload_row_key keys it.';

-- A row as the replay of a dead letter compares rows with the ledger's (sql/dead_letter.sql):
-- '<table>/<id>', the id's letters lower-cased, its hyphens, braces, plus signs and white space
-- dropped, leading zeros too; a number in another spelling by its value
-- (powersync_upload_number_key). The spellings one id column takes for one value (a uuid in
-- either case, with or without hyphens or braces; an integer with a sign, leading zeros or white
-- space; a number as 1.0, 1e0 or 0x1) make one key; ids that differ and still fold to one key
-- only make that guard stricter. No `set search_path`, so that it is inlined: its callers set
-- theirs, and it names pg_catalog's functions.
create or replace function public.powersync_upload_row_key(p_table text, p_id text)
returns text
language sql
immutable
parallel safe
as $$
  select p_table operator(pg_catalog.||) '/' operator(pg_catalog.||) case
    when p_id operator(pg_catalog.~) '^[0-9]+$' then pg_catalog.ltrim(p_id, '0')
    else coalesce(
      case when p_id operator(pg_catalog.~*)
                '^[[:space:]]*[+-]?(0[xob]_?[0-9a-f_]+|[0-9_]*(\.[0-9_]*)?(e[+-]?[0-9]+)?)[[:space:]]*$'
           then public.powersync_upload_number_key(p_id) end,
      pg_catalog.ltrim(pg_catalog.lower(pg_catalog.translate(p_id, E'-{}+ \t\n\r\v\f', '')), '0'))
  end
$$;
comment on function public.powersync_upload_row_key(text, text) is
  'PowerSync upload bridge: a row as the replay of a dead letter compares it with the ledger''s rows.';

-- The rows the caller's applied (client, transaction) writes (p_rows: their
-- powersync_upload_row_key; stored as their md5, null for more than 1000), recorded by
-- powersync_apply_transaction right after its claim.
create or replace function public.powersync_upload_ledger_rows(
  p_client_id text,
  p_transaction_id text,
  p_owner_id text,
  p_rows text[]
) returns void
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_user text := public.powersync_upload_ledger_user(p_owner_id);
begin
  update public.powersync_upload_ledger as l
     set row_keys = case when pg_catalog.cardinality(p_rows) <= 1000
                         then array(select distinct pg_catalog.md5(k) from pg_catalog.unnest(p_rows) as k) end
   where l.user_id = v_user and l.client_id = p_client_id and l.transaction_id = p_transaction_id
     and l.dead_letter_id is null;
end
$$;
comment on function public.powersync_upload_ledger_rows(text, text, text, text[]) is
  'PowerSync upload bridge: the rows an applied transaction writes, for the replay of older dead letters.';

-- The transactions of p_user_id (any client) the ledger holds as applied after
-- p_since, oldest first, with when and the rows they write (null: not known): what
-- a replay of a dead letter recorded then could write over (sql/dead_letter.sql).
-- A transaction rejected after an attempt through REST requests counts too (what
-- that attempt applied before the failing entry stayed applied), its rows not known.
-- Only the owner and service_role run it.
drop function if exists public.powersync_upload_ledger_applied_since(text, timestamptz);
create function public.powersync_upload_ledger_applied_since(
  p_user_id text,
  p_since timestamptz
) returns table (client_id text, transaction_id text, applied_at timestamptz, row_keys text[])
language sql
stable
security definer
set search_path = pg_catalog, pg_temp
as $$
  select l.client_id, l.transaction_id, l.applied_at,
         case when l.dead_letter_id is null then l.row_keys end
    from public.powersync_upload_ledger as l
   where l.user_id = p_user_id and l.applied_at > p_since
     and (l.dead_letter_id is null or l.rejection ? 'applied_via')
   order by l.applied_at, l.client_id, l.transaction_id
$$;

-- The dead letter the ledger holds for the caller's (client, transaction), as
-- {"id", "index", "code", "message", "details"} (index, code, message and
-- details as recorded; the id alone if the row is gone; without a dead letter,
-- id 0 and the failure powersync_upload_ledger_reject was given), with
-- "applied_via": "rest" when an attempt of it went through REST requests before
-- it was rejected, or null: what powersync_apply_transaction answers for a
-- dead-lettered transaction.
create or replace function public.powersync_upload_ledger_dead_letter(
  p_client_id text,
  p_transaction_id text,
  p_owner_id text default null
) returns jsonb
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  -- read once: in the WHERE clause the (volatile) call would cost a scan of the whole ledger
  v_user text := public.powersync_upload_ledger_user(p_owner_id);
  v_id   bigint;
  v_row  jsonb;
  v_more jsonb;
begin
  select l.dead_letter_id, l.rejection into v_id, v_more from public.powersync_upload_ledger as l
   where l.user_id = v_user
     and l.client_id = p_client_id and l.transaction_id = p_transaction_id;
  if v_id is null then
    return null;
  end if;
  -- rejected without a dead letter (powersync_upload_ledger_reject): no row to read, not even
  -- one an older dead-letter table kept under id 0
  if v_id = 0 then
    return pg_catalog.jsonb_build_object('id', 0) || coalesce(v_more - 'id', '{}');
  end if;
  v_more := case when v_more ? 'applied_via' then pg_catalog.jsonb_build_object('applied_via', v_more -> 'applied_via')
                 else '{}' end;
  if pg_catalog.to_regclass('public.powersync_dead_letters') is not null then
    execute 'select pg_catalog.jsonb_build_object(''id'', d.id, ''index'', d.op_index, ''code'', d.code,'
            ' ''message'', d.message, ''details'', d.details) from public.powersync_dead_letters as d where d.id = $1'
      into v_row using v_id;
  end if;
  return coalesce(v_row, pg_catalog.jsonb_build_object('id', v_id)) || v_more;
end
$$;
comment on function public.powersync_upload_ledger_dead_letter(text, text, text) is
  'PowerSync upload bridge: the dead letter the ledger holds for a transaction, or null.';

-- The ops of the caller's applied (client, transaction) that changed no row,
-- as recorded when it was applied ('{}' when none, or no such record): what
-- powersync_apply_transaction answers beside "already_applied", so a re-send
-- after a lost answer reports them as the first answer did. With p_unchanged
-- (op indexes), it records them first: powersync_apply_transaction calls it
-- so after its writes, in their transaction. The user is found as for the
-- claim, so a user calling it directly only touches their own record, and so
-- only what their own re-sends report. Errors: 22023 for bad input, 42501 for
-- a caller without a user.
create or replace function public.powersync_upload_ledger_unchanged(
  p_client_id text,
  p_transaction_id text,
  p_owner_id text default null,
  p_unchanged integer[] default null
) returns integer[]
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_user      text;
  v_unchanged integer[];
begin
  if p_unchanged is not null and (pg_catalog.cardinality(p_unchanged) > 100000
     or exists (select 1 from unnest(p_unchanged) as u(i) where u.i is null or u.i < 0)) then
    raise exception using errcode = '22023',
      message = 'powersync_upload_ledger_unchanged: p_unchanged must be op indexes (at most 100,000)';
  end if;
  v_user := public.powersync_upload_ledger_user(p_owner_id);
  if p_unchanged is not null then
    update public.powersync_upload_ledger as l set unchanged = nullif(p_unchanged, '{}')
     where l.user_id = v_user and l.client_id = p_client_id and l.transaction_id = p_transaction_id
       and l.dead_letter_id is null;
  end if;
  select l.unchanged into v_unchanged from public.powersync_upload_ledger as l
   where l.user_id = v_user and l.client_id = p_client_id and l.transaction_id = p_transaction_id
     and l.dead_letter_id is null;
  return coalesce(v_unchanged, '{}');
end
$$;
comment on function public.powersync_upload_ledger_unchanged(text, text, text, integer[]) is
  'PowerSync upload bridge: the ops of an applied transaction that changed no row (recorded when given).';

do $$
declare
  r text;
  f text;
begin
  foreach f in array array['public.powersync_upload_ledger_user(text)',
                           'public.powersync_upload_ledger_cap(text, integer)',
                           'public.powersync_upload_entries_digest()',
                           'public.powersync_upload_request_token(text)',
                           'public.powersync_upload_ledger_caller(text, text, text, text)',
                           'public.powersync_upload_ledger_refuse(text, text, text, text, bigint)',
                           'public.powersync_upload_ledger_letter_of(text, text, text)',
                           'public.powersync_upload_ledger_dead_letter(text, text, text)',
                           'public.powersync_upload_ledger_unchanged(text, text, text, integer[])',
                           'public.powersync_upload_ledger_reject(text, text, text, jsonb)',
                           'public.powersync_upload_ledger_applied_via_rest(text, text, text, integer[])',
                           'public.powersync_upload_ledger_rest_begin(text, text, text, text)',
                           'public.powersync_upload_ledger_rest_abandon(text, text, text, text)',
                           'public.powersync_upload_ledger_applied_since(text, timestamptz)',
                           'public.powersync_upload_ledger_rows(text, text, text, text[])',
                           'public.powersync_upload_number_key(text)',
                           'public.powersync_upload_row_key(text, text)',
                           'public.powersync_upload_policy_gap(text, text)'] loop
    execute pg_catalog.format('revoke all on function %s from public', f);
    foreach r in array array['anon', 'authenticated', 'service_role'] loop
      if exists (select 1 from pg_catalog.pg_roles where rolname = r) then
        execute pg_catalog.format('revoke all on function %s from %I', f, r);
      end if;
    end loop;
  end loop;
end
$$;
grant execute on function public.powersync_upload_ledger_dead_letter(text, text, text)
  to authenticated, service_role;
grant execute on function public.powersync_upload_ledger_unchanged(text, text, text, integer[])
  to authenticated, service_role;
grant execute on function public.powersync_upload_ledger_reject(text, text, text, jsonb)
  to authenticated, service_role;
grant execute on function public.powersync_upload_ledger_applied_via_rest(text, text, text, integer[])
  to authenticated, service_role;
grant execute on function public.powersync_upload_ledger_rest_begin(text, text, text, text)
  to authenticated, service_role;
grant execute on function public.powersync_upload_ledger_rest_abandon(text, text, text, text)
  to authenticated, service_role;
grant execute on function public.powersync_upload_ledger_applied_since(text, timestamptz) to service_role;
grant execute on function public.powersync_upload_ledger_rows(text, text, text, text[])
  to authenticated, service_role;
grant execute on function public.powersync_upload_number_key(text) to authenticated, service_role;
grant execute on function public.powersync_upload_row_key(text, text) to authenticated, service_role;
grant execute on function public.powersync_upload_policy_gap(text, text) to authenticated, service_role;

-- the copies installed before exactly-once (three arguments) and before conflict detection
-- (five): replaced below
drop function if exists public.powersync_apply_transaction(jsonb, text, text);
drop function if exists public.powersync_apply_transaction(jsonb, text, text, text, text);

create or replace function public.powersync_apply_transaction(
  ops jsonb,
  owner_column text default null,
  owner_id text default null,
  client_id text default null,
  transaction_id text default null,
  detect_conflicts boolean default false
) returns jsonb
language plpgsql
security invoker
set search_path = pg_catalog, pg_temp
as $$
declare
  v        record;     -- the current op, pre-parsed by the driving query below
  v_data   jsonb;
  v_set    text;
  v_sql    text;
  v_cols   text;
  v_vals   text;
  v_exact  boolean;    -- PUT group: equal ids as text <=> same row
  v_dup    boolean;    -- PUT group: two ops name the same row
  v_rows   bigint;
  v_count  bigint;
  v_other  bigint;     -- PUT group: position of the op that hit another owner's row
  v_others text;       -- service mode, PUT group: the query for it among the ops $3 .. $4
  v_unchanged integer[] := '{}';  -- PATCH/DELETE ops that changed no row
  v_split  integer[] := '{}';  -- groups (their first op) applied in halves: their statement failed
  v_grouped boolean := false;  -- a group of several ops is being applied
  v_lo     integer;    -- a group applied in halves: its first op not applied yet ...
  v_hi     integer;    -- ... and the last of the part tried now
  v_failed boolean;
  v_timeout bigint;    -- statement_timeout, in ms (0: none)
  v_missed integer[];  -- DELETE group: positions (from 0) of the ids that matched no row
  v_one    integer[];  -- ... of one part of a DELETE group applied in halves
  v_n      integer;    -- PUT group: number of rows to apply
  v_cond   text;       -- an op's "expect" as SQL conditions on t
  v_owned  text;       -- service mode: the condition on the owner column
  v_owner  text;       -- service mode: owner_id as the current table's owner column prints it
  v_owners jsonb := '{}';  -- ... for each table met so far
  v_types  jsonb := '{}';  -- each table met so far: {column: {"t": its type as format_type prints it,
                           -- with its collation when not the type's, "n": attnum}}
  v_def    text;       -- a column definition list for jsonb_to_record: the keys given, typed by the table
  v_read   text;       -- a compared op's read of its row: format(v_read, <select list>, table, <r's columns>, <conditions>)
  v_row    jsonb;      -- a compared op's row as read after it changed nothing
  v_same   boolean;    -- a compared PATCH's row already holds its values
  v_seen   boolean;    -- a compared op's row still holds the values the client saw
  v_letter jsonb;      -- the dead letter the ledger holds for this transaction
  c_index  integer;    -- the conflicting op (set before raising PS409)
  c_row    jsonb;
  -- the pending group: consecutive ops not applied yet (g_kind null = none)
  g_kind   text;       -- 'PUT' or 'DELETE'
  g_table  text;
  g_cols   jsonb;      -- PUT: the columns every row of the group sets (JSON array)
  g_start  integer;    -- index of the group's first op
  g_ids    text[];     -- the ops' ids, in order
  g_rows   jsonb[];    -- PUT: the rows to upsert (data + id + forced owner)
  -- the op the hint names if an error happens now
  h_index  integer;
  h_op     text;
  h_table  text;
  h_id     text;
  -- error re-raise
  e_state  text;
  e_msg    text;
  e_detail text;
  e_hint   text;
  e_cmd    text;       -- why no row can pass an op: no policy lets the role run a command it needs
begin
  if ops is null or jsonb_typeof(ops) <> 'array' then
    raise exception using errcode = '22023',
      message = 'powersync_apply_transaction: ops must be a JSON array';
  end if;
  if (owner_column is null) <> (owner_id is null) then
    raise exception using errcode = '22023',
      message = 'powersync_apply_transaction: owner_column and owner_id must be given together';
  end if;
  v_owned := case when owner_column is null then ''
                  else format(' and t.%I::text = $2', owner_column) end;
  -- Values are typed by the table through jsonb_to_record with the keys given only (as
  -- PostgREST does): jsonb_populate_record(null::<table>, ...) also reads each absent column as
  -- NULL of its type, which a NOT NULL domain refuses (23502) for a row that never mentions it.
  -- The column lists keep the table's order (the first bad value is the one reported, as
  -- before) and each column's collation (ids compared as the table compares them). Naming a
  -- type needs USAGE on its schema, as on the REST route.
  v_read := 'select %s from public.%I as t, jsonb_to_record($1) as r(%s)'
            ' where t.id = r.id' || replace(v_owned, '%', '%%') || '%s';

  -- this block is rolled back as a whole on a conflict (PS409), the ledger's record included
  begin
  -- the ledger's digest: of the ops without "expect" (as the dead-letter table stores them)
  if client_id is not null and transaction_id is not null
     and public.powersync_upload_ledger_claim(
           client_id, transaction_id,
           pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to(
             case when detect_conflicts then
               (select coalesce(jsonb_agg(case when jsonb_typeof(e.value) = 'object' then e.value - 'expect'
                                               else e.value end order by e.ord), '[]'::jsonb)
                  from jsonb_array_elements(ops) with ordinality as e(value, ord))
             else ops end::text, 'UTF8')), 'hex'),
           owner_id)
  then
    -- recorded: applied already, or rejected and dead-lettered (powersync_upload_ledger_refuse)
    v_letter := public.powersync_upload_ledger_dead_letter(client_id, transaction_id, owner_id);
    if v_letter is not null then
      return jsonb_build_object('applied', 0, 'dead_letter', v_letter);
    end if;
    v_unchanged := public.powersync_upload_ledger_unchanged(client_id, transaction_id, owner_id);
    if pg_catalog.cardinality(v_unchanged) > 0 then
      return jsonb_build_object('applied', 0, 'already_applied', true, 'unchanged', to_jsonb(v_unchanged));
    end if;
    return jsonb_build_object('applied', 0, 'already_applied', true);
  end if;
  -- recorded now: the rows it writes, so that replaying an older dead letter of this user does
  -- not go over them unseen (sql/dead_letter.sql)
  if client_id is not null and transaction_id is not null then
    -- (at most 1001 entries read: over 1000, null, which a replay takes as every row)
    perform public.powersync_upload_ledger_rows(client_id, transaction_id, owner_id, (
      select case when count(*) <= 1000 then array_agg(k.key) end
        from (select public.powersync_upload_row_key(e.value ->> 'table', e.value ->> 'id') as key
                from jsonb_array_elements(ops) as e(value)
               where jsonb_typeof(e.value) = 'object' limit 1001) as k));
  end if;

  <<attempt>>
  loop
  begin
    v_unchanged := '{}'; g_kind := null; v_grouped := false;
    -- One row per op, in order, followed by an end marker (idx null) that
    -- makes the loop apply the last pending group. Per op:
    --   valid     the op is well-formed (else it raises below, when reached)
    --   put_row   PUT: the row to upsert (data + id + forced owner)
    --   put_cols  PUT: its keys as a JSON array (jsonb keeps an object's keys
    --             in one fixed order, so equal key sets give equal arrays)
    --   prev_idx  index of the previous op with the same table and id
    --   expect    PATCH/DELETE with detect_conflicts: the values to compare
    for v in
      with parsed as (
        select (e.ord - 1)::integer as idx,
               jsonb_typeof(e.value) = 'object' as is_object,
               upper(e.value ->> 'op') as op,
               e.value ->> 'op' as raw_op,
               e.value ->> 'table' as tbl,
               e.value ->> 'id' as id,
               coalesce(nullif(e.value -> 'data', 'null'::jsonb), '{}'::jsonb) as data,
               case when detect_conflicts then nullif(e.value -> 'expect', 'null'::jsonb) end as expect
          from jsonb_array_elements(ops) with ordinality as e(value, ord)
      ), checked as (
        select p.*,
               coalesce(p.is_object and p.tbl <> '' and p.id is not null
                        and jsonb_typeof(p.data) = 'object', false) as valid
          from parsed p
      ), prepared as materialized (  -- materialized: put_row is computed once
        select c.*,
               case when c.valid and c.op = 'PUT' then
                 c.data || case when owner_column is null
                                then jsonb_build_object('id', c.id)
                                else jsonb_build_object('id', c.id, owner_column, owner_id) end
               end as put_row
          from checked c
      )
      select r.*,
             jsonb_path_query_array(r.put_row, '$.keyvalue().key') as put_cols,
             lag(r.idx) over (partition by r.tbl, r.id order by r.idx) as prev_idx
        from prepared r
      union all
      select null, null, null, null, null, null, null, null, null, null, null, null
      order by 1 nulls last
    loop
      -- 1. Op v joins the pending group if it is the same kind of op on the
      --    same table (for a PUT: same columns, and its id not yet in the
      --    group; a DELETE compared with "expect" is applied on its own).
      if g_kind is not null and v.valid and v.op = g_kind and v.tbl = g_table
         and (g_kind = 'DELETE' and v.expect is null
              or (v.put_cols = g_cols and (v.prev_idx is null or v.prev_idx < g_start)))
      then
        g_ids := array_append(g_ids, v.id);
        if g_kind = 'PUT' then
          g_rows := array_append(g_rows, v.put_row);
        end if;
        continue;
      end if;

      -- 2. Otherwise apply the pending group first (ops are applied in
      --    order). A group whose statement fails is applied in halves on the
      --    next attempt (below, `attempt`), so that the error names its op.
      if g_kind is not null then
        h_index := g_start; h_op := g_kind; h_table := g_table; h_id := g_ids[1];
        -- Each write runs as the REST request it stands for, as PostgREST sets
        -- them: a policy or trigger that reads request.method or request.path
        -- (`for delete using (current_setting('request.method', true) <> 'DELETE')`)
        -- judges it as it judges that request, not as this function's POST.
        perform pg_catalog.set_config('request.method', case g_kind when 'PUT' then 'POST' else g_kind end, true);
        perform pg_catalog.set_config('request.path', '/' || g_table, true);

        if g_kind = 'PUT' then
          select string_agg(format('%I', c), ', ' order by c),
                 string_agg(format('r.%I', c), ', ' order by c),
                 string_agg(format('%I = excluded.%I', c, c), ', ' order by c)
                   filter (where c <> 'id'),
                 string_agg(format('%I %s', c, coalesce(v_types -> g_table -> c ->> 't', 'text')), ', '
                            order by (v_types -> g_table -> c ->> 'n')::integer, c)
            into v_cols, v_vals, v_set, v_def
            from jsonb_array_elements_text(g_cols) as c;
          v_sql := format(
            'insert into public.%I as t (%s) select %s'
            ' from jsonb_to_recordset($1) as r(%s) on conflict (id) ',
            g_table, v_cols, v_vals, v_def);
          -- A PUT of its id alone (the SDK leaves null columns out) sets the id
          -- to itself, as PostgREST's upsert does: so a row the caller may not
          -- update (another user's, hidden by RLS) is refused as it is there,
          -- and a row the database skipped counts as changed by no op (below).
          v_set := coalesce(v_set, 'id = excluded.id');
          if owner_column is null then
            v_sql := v_sql || 'do update set ' || v_set;
          else
            -- never take over a row that belongs to another owner
            v_sql := v_sql || 'do update set ' || v_set
                   || format(' where t.%I::text = $2', owner_column);
          end if;
        else -- DELETE
          -- the ids are typed by the table's id column (so the index is used);
          -- the deleted rows' ids, returned, tell which ops matched no row (of
          -- two ops on one row, in any spelling of its id, the second did not)
          v_sql := format(
            'with d as (delete from public.%I as t where t.id = any (array('
            '  select r.id from unnest($1::text[]) as u(id)'
            '  cross join lateral jsonb_to_record(jsonb_build_object(''id'', u.id)) as r(%s)))'
            '%s returning t.id)'
            ' select coalesce(array_agg((x.ord - 1)::integer order by x.ord), ''{}'')'
            '   from (select u.ord, r.id, row_number() over (partition by r.id order by u.ord) as nth'
            '           from unnest($1::text[]) with ordinality as u(id, ord)'
            '          cross join lateral jsonb_to_record(jsonb_build_object(''id'', u.id)) as r(%s)) as x'
            '  where x.nth > 1 or not exists (select 1 from d where d.id = x.id)',
            g_table, format('id %s', coalesce(v_types -> g_table -> 'id' ->> 't', 'text')),
            case when owner_column is null then ''
                 else format(' and t.%I::text = $2', owner_column) end,
            format('id %s', coalesce(v_types -> g_table -> 'id' ->> 't', 'text')));
        end if;

        v_dup := false; v_other := null; v_rows := 0; v_missed := '{}';
        v_n := cardinality(g_ids);
        if g_kind = 'PUT' and owner_column is not null then
          -- the first of the ops $3 .. $4 whose row is there and another owner's
          v_others := format(
            'select min(u.ord) from unnest($1::text[]) with ordinality as u(id, ord)'
            ' cross join lateral jsonb_to_record(jsonb_build_object(''id'', u.id)) as r(%s)'
            ' join public.%I as t on t.id = r.id'
            ' where u.ord between $3 and $4 and (t.%I::text = $2) is not true',
            format('id %s', coalesce(v_types -> g_table -> 'id' ->> 't', 'text')), g_table, owner_column);
        end if;
        v_grouped := v_n > 1;
        if g_start = any (v_split) then
          -- Its statement failed on the last attempt: its ops in order, in
          -- parts, a part that fails halved until one op's error names it (a
          -- savepoint per part, only here, on the way to an error).
          v_lo := 1;
          while v_lo <= v_n loop
            v_hi := v_n;
            loop
              v_failed := false;
              begin
                if g_kind = 'PUT' then
                  execute v_sql using to_jsonb(g_rows[v_lo:v_hi]), v_owner;
                  get diagnostics v_count = row_count;
                  v_one := '{}';
                else
                  execute v_sql into v_one using g_ids[v_lo:v_hi], v_owner;
                  v_count := 0;
                end if;
              exception when others then
                -- one op: its own error, naming it; past four fifths of
                -- statement_timeout, the part's, naming its first op
                if v_lo = v_hi or (coalesce(v_timeout, 0) > 0 and
                    extract(epoch from clock_timestamp() - statement_timestamp()) * 1000 > v_timeout * 4 / 5) then
                  h_index := g_start + v_lo - 1; h_id := g_ids[v_lo];
                  raise;
                end if;
                v_failed := true;
              end;
              exit when not v_failed;
              v_hi := (v_lo + v_hi - 1) / 2;
            end loop;
            v_rows := v_rows + v_count;
            v_missed := v_missed || array(select v_lo - 1 + m from unnest(v_one) as m);
            if g_kind = 'PUT' and owner_column is not null
               and v_count < v_hi - v_lo + 1 then
              execute v_others into v_other using g_ids, v_owner, v_lo, v_hi;
              if v_other is not null then
                v_n := v_hi;  -- another owner's row among these: refused below
                exit;
              end if;
            end if;
            v_lo := v_hi + 1;
          end loop;

        elsif g_kind = 'PUT' then
          -- Before applying a group of several rows, check its ids:
          --   * v_dup: ids that differ as text can still name the same row (a
          --     uuid in upper case, an integer with a leading zero ...), which
          --     one upsert cannot touch twice (21000); then the rows are
          --     applied one by one. Text ids, and uuids written the way
          --     Postgres prints them, cannot (v_exact: no need to ask);
          --   * v_other (service mode): position of the first op whose row
          --     exists and belongs to another owner. Only the rows before it
          --     are applied (their errors come first, as op by op), then the
          --     call is refused with 42501.
          if v_n > 1 then
            select case
                     when a.atttypid in ('pg_catalog.text'::pg_catalog.regtype, 'pg_catalog.varchar'::pg_catalog.regtype)
                       then coalesce(c.collisdeterministic, true)
                     when a.atttypid = 'pg_catalog.uuid'::pg_catalog.regtype
                       then (select bool_and(i ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$')
                               from unnest(g_ids) as i)
                     else false
                   end
              into v_exact
              from pg_catalog.pg_attribute as a
              left join pg_catalog.pg_collation as c on c.oid = a.attcollation
             where a.attrelid = format('public.%I', g_table)::pg_catalog.regclass  -- unknown table: 42P01
               and a.attname = 'id' and not a.attisdropped;
            -- (v_exact is null if there is no id column: the upsert says so)
            if v_exact is not null and (not v_exact or owner_column is not null) then
              execute format(
                'select %s, %s from unnest($1::text[]) with ordinality as u(id, ord)'
                ' cross join lateral jsonb_to_record(jsonb_build_object(''id'', u.id)) as r(%s) %s',
                case when v_exact then 'false' else 'count(distinct r.id) < count(*)' end,
                case when owner_column is null then 'null::bigint'
                     else format('min(u.ord) filter (where t.id is not null'
                                 ' and (t.%I::text = $2) is not true)', owner_column) end,
                format('id %s', coalesce(v_types -> g_table -> 'id' ->> 't', 'text')),
                case when owner_column is null then ''
                     else format('left join public.%I as t on t.id = r.id', g_table) end)
                into v_dup, v_other using g_ids, v_owner;
            end if;
          end if;

          v_n := coalesce(v_other - 1, v_n);  -- the rows to apply
          if v_n > 0 and not v_dup then
            execute v_sql using to_jsonb(g_rows[1:v_n]), v_owner;
            get diagnostics v_rows = row_count;
          elsif v_n > 0 then
            v_grouped := false;  -- row by row: an error names its op already
            for i in 1 .. v_n loop
              h_index := g_start + i - 1; h_id := g_ids[i];
              execute v_sql using jsonb_build_array(g_rows[i]), v_owner;
              get diagnostics v_count = row_count;
              v_rows := v_rows + v_count;
            end loop;
          end if;

        else
          execute v_sql into v_missed using g_ids, v_owner;
        end if;
        v_grouped := false;  -- (the refusal below names its op)
        h_index := g_start; h_id := g_ids[1];

        if g_kind = 'PUT' then
          -- Service mode: a row skipped by the upsert's WHERE belongs to
          -- another owner although the check did not see it (a single row;
          -- hidden by row-level security; changed concurrently): find the
          -- first op whose row is another owner's now. (A row that is not
          -- there at all was skipped by the database: below.)
          if v_other is null and owner_column is not null
             and v_rows < v_n then
            execute v_others into v_other using g_ids, v_owner, 1, v_n;
          end if;
          if v_other is not null then
            -- here the failing op is known: the hint names it, not the group
            h_index := g_start + v_other - 1; h_id := g_ids[v_other];
            raise exception using errcode = '42501',
              message = format('row %s of table %s belongs to another owner',
                               g_ids[v_other], g_table);
          end if;
          -- Rows the database skipped (a BEFORE trigger returning null): those
          -- ops changed no row. With several rows in one statement the count
          -- cannot say which, so all of them, as a merged REST request does.
          if v_rows < v_n then
            v_unchanged := v_unchanged
                           || array(select g_start + m from pg_catalog.generate_series(0, v_n - 1) as m);
          end if;
        else
          if pg_catalog.cardinality(v_missed) > 0 then
            -- no policy lets this role delete (or read) any row: the setup's, it waits
            e_cmd := public.powersync_upload_policy_gap(g_table, 'DELETE');
            if e_cmd is not null then
              h_op := 'DELETE'; h_table := g_table;
              h_index := g_start + (select min(m) from unnest(v_missed) as m);
              h_id := g_ids[h_index - g_start + 1];
              raise exception using errcode = '42501', message = e_cmd;
            end if;
          end if;
          v_unchanged := v_unchanged
                         || array(select g_start + m from unnest(v_missed) as m order by m);
        end if;

        g_kind := null;
      end if;

      exit when v.idx is null;  -- the end marker

      -- 3. Then op v itself: checked, and started as a new group or applied.
      h_index := v.idx; h_op := v.op; h_table := v.tbl; h_id := v.id;
      if not v.is_object then
        h_op := null; h_table := null; h_id := null;
        raise exception using errcode = '22023', message = 'op is not a JSON object';
      end if;
      if v.tbl is null or v.tbl = '' then
        raise exception using errcode = '22023', message = 'op has no "table"';
      end if;
      if v.tbl in ('powersync_dead_letters', 'powersync_upload_ledger', 'powersync_upload_ledger_settings') then
        -- the bridge's own tables, never an upload's (service_role may update dead letters)
        raise exception using errcode = '42501',
          message = format('table %s is the bridge''s own: uploads do not write it', v.tbl);
      end if;
      if v.id is null then
        raise exception using errcode = '22023', message = 'op has no "id"';
      end if;
      if jsonb_typeof(v.data) <> 'object' then
        raise exception using errcode = '22023', message = '"data" must be a JSON object';
      end if;
      -- Service mode: the statements compare `<owner column>::text = $2`, so $2 is owner_id
      -- as that column prints it (a uuid in lower case, an integer without leading zeros),
      -- once per table; as given when it is no value of the column's type (nothing matches).
      -- Set here for the op that starts a group (the ops that join it do not come here), it
      -- is still the group's table's when step 2 applies the group.
      if not v_types ? v.tbl then
        v_types := v_types || jsonb_build_object(v.tbl, coalesce((
          select jsonb_object_agg(a.attname, jsonb_build_object(
                   't', pg_catalog.format_type(a.atttypid, a.atttypmod)
                        || case when a.attcollation <> ty.typcollation
                                then format(' collate %I.%I', cn.nspname, co.collname) else '' end,
                   'n', a.attnum))
            from pg_catalog.pg_attribute as a
            join pg_catalog.pg_type as ty on ty.oid = a.atttypid
            left join pg_catalog.pg_collation as co on co.oid = a.attcollation
            left join pg_catalog.pg_namespace as cn on cn.oid = co.collnamespace
           where a.attrelid = pg_catalog.to_regclass(format('public.%I', v.tbl))
             and a.attnum > 0 and not a.attisdropped), '{}'::jsonb));
      end if;
      if owner_column is not null and not v_owners ? v.tbl then
        begin
          execute format('select r.%I::text from jsonb_to_record($1) as r(%I %s)',
                         owner_column, owner_column, coalesce(v_types -> v.tbl -> owner_column ->> 't', 'text'))
            into v_owner using jsonb_build_object(owner_column, owner_id);
        exception when others then  -- no such type, or table: the statements say so, as before
          v_owner := null;
        end;
        v_owners := v_owners || jsonb_build_object(v.tbl, coalesce(v_owner, owner_id));
      end if;
      v_owner := v_owners ->> v.tbl;
      v_cond := null; v_row := null; v_same := null; v_seen := null;
      if v.expect is not null and v.op in ('PATCH', 'DELETE') then
        if jsonb_typeof(v.expect) <> 'object' then
          raise exception using errcode = '22023', message = '"expect" must be a JSON object';
        end if;
        -- as PostgREST's filters: `eq.<text>` (an untyped literal, cast to the column's type)
        select string_agg(case when x.value = 'null'::jsonb then format(' and t.%I is null', x.key)
                               when jsonb_typeof(x.value) in ('array', 'object')
                                 then format(' and to_jsonb(t.%I) = %L::jsonb', x.key, x.value)
                               else format(' and t.%I = %L', x.key, x.value #>> '{}') end, '' order by x.key)
          into v_cond
          from jsonb_each(v.expect) as x;
      end if;

      -- An op applied here on its own (a PATCH, a compared DELETE) runs as its REST request
      -- too, as a group does when it is applied (above); a PUT or DELETE that starts or joins
      -- a group leaves that to the group, once
      if v.op = 'PATCH' or (v.op = 'DELETE' and v_cond is not null) then
        perform pg_catalog.set_config('request.method', v.op, true);
        perform pg_catalog.set_config('request.path', '/' || v.tbl, true);
      end if;
      if v.op = 'DELETE' and v_cond is not null then
        -- compared: on its own, only where the row still holds the expected values
        execute format(
          'delete from public.%I as t using jsonb_to_record($1) as r(%s)'
          ' where t.id = r.id%s%s',
          v.tbl, format('id %s', coalesce(v_types -> v.tbl -> 'id' ->> 't', 'text')), v_owned, v_cond)
          using jsonb_build_object('id', v.id), v_owner;
        get diagnostics v_rows = row_count;

      elsif v.op in ('PUT', 'DELETE') then
        g_kind := v.op; g_table := v.tbl; g_start := v.idx;
        g_cols := v.put_cols; g_ids := array[v.id];
        g_rows := case when v.op = 'PUT' then array[v.put_row] end;

      elsif v.op = 'PATCH' then
        v_data := v.data - 'id';
        if owner_column is not null and v_data ? owner_column then
          v_data := v_data || jsonb_build_object(owner_column, owner_id);
        end if;
        if v_data <> '{}'::jsonb then
          select string_agg(format('%I = r.%I', k, k), ', ' order by k)
            into v_set
            from jsonb_object_keys(v_data) as k;
          select string_agg(format('%I %s', k, coalesce(v_types -> v.tbl -> k ->> 't', 'text')), ', '
                            order by (v_types -> v.tbl -> k ->> 'n')::integer, k)
            into v_def
            from jsonb_object_keys(v_data || jsonb_build_object('id', v.id)) as k;
          v_sql := format(
            'update public.%I as t set %s from jsonb_to_record($1) as r(%s) where t.id = r.id',
            v.tbl, v_set, v_def);
          execute v_sql || v_owned || coalesce(v_cond, '')
            using v_data || jsonb_build_object('id', v.id), v_owner;
          get diagnostics v_rows = row_count;
        end if;

      else
        raise exception using errcode = '22023',
          message = format('unknown op %L (expected PUT, PATCH or DELETE)', v.raw_op);
      end if;

      -- A PATCH with data, or a compared DELETE, that changed no row: why.
      if ((v.op = 'PATCH' and v_data <> '{}'::jsonb) or (v.op = 'DELETE' and v_cond is not null)) and v_rows = 0 then
        -- no policy lets this role run the command (or read) at all: the setup's, it waits
        e_cmd := public.powersync_upload_policy_gap(v.tbl, v.op);
        if e_cmd is not null then
          raise exception using errcode = '42501', message = e_cmd;
        end if;
        if v_cond is not null then
          execute format(v_read, 'to_jsonb(t)', v.tbl, format('id %s', coalesce(v_types -> v.tbl -> 'id' ->> 't', 'text')), '')
            into v_row using jsonb_build_object('id', v.id), v_owner;
        end if;
        if v_row is not null and v.op = 'PATCH' then
          -- already holds every value it sets: its own earlier application, or the same
          -- change by someone else: applied, not a conflict
          execute format(v_read, 'true', v.tbl, v_def,
                         (select string_agg(format(' and to_jsonb(t.%I) is not distinct from to_jsonb(r.%I)', k, k), '')
                            from jsonb_object_keys(v_data) as k))
            into v_same using v_data || jsonb_build_object('id', v.id), v_owner;
        end if;
        if v_row is not null and v_same is null then
          -- still as the client saw it: nobody changed it, a policy (the command's, the row
          -- readable) or a trigger refused the write: the row's, unchanged, not a conflict
          execute format(v_read, 'true', v.tbl, format('id %s', coalesce(v_types -> v.tbl -> 'id' ->> 't', 'text')), v_cond)
            into v_seen using jsonb_build_object('id', v.id), v_owner;
          if v_seen is null then
            c_index := v.idx; c_row := v_row;
            raise exception using errcode = 'PS409', message = 'powersync conflict';
          end if;
        end if;
        if v_same is null then
          v_unchanged := v_unchanged || v.idx;  -- gone, hidden from the caller, or refused
        end if;
      end if;
    end loop;
    exit attempt;
  exception when others then
    -- everything this block did is rolled back. A group of several ops
    -- failed: the ops are applied again, that group in halves (the same as
    -- applying its ops in order, which applies them all if no op fails on
    -- its own: a cast the grouping does not foresee, a statement trigger).
    -- Not when the call has run a fifth of statement_timeout already (the
    -- attempt again and the halves could take it past it, and a timeout
    -- is retried where this error is final): the hint then names the
    -- group's first op.
    if v_grouped and not g_start = any (v_split) then
      select s.setting::bigint into v_timeout from pg_catalog.pg_settings as s where s.name = 'statement_timeout';
      if coalesce(v_timeout, 0) = 0
         or extract(epoch from clock_timestamp() - statement_timestamp()) * 1000 < v_timeout / 5 then
        v_split := v_split || g_start;
        continue attempt;
      end if;
    end if;
    -- keep the original SQLSTATE/message/detail, name the failing op in the hint
    get stacked diagnostics
      e_state  = returned_sqlstate,
      e_msg    = message_text,
      e_detail = pg_exception_detail,
      e_hint   = pg_exception_hint;
    -- A row-level security refusal of the table the op writes, where no permissive policy lets
    -- this role run a command the op needs (row-level security on and no policy yet; a table
    -- kept insert-only by its policies, which an upsert cannot pass): no row could pass, so it
    -- is the setup's, said in words the bridge reads as the operator's to fix (still 42501,
    -- without "violates row-level security policy").
    if e_state = '42501' and h_table is not null
       and pg_catalog.strpos(e_msg, 'violates row-level security policy') > 0
       and pg_catalog.right(e_msg, pg_catalog.length(h_table) + 12) = 'for table "' || h_table || '"' then
      e_msg := coalesce(public.powersync_upload_policy_gap(h_table, h_op), e_msg);
    end if;
    e_hint := concat_ws('; ', nullif(e_hint, ''),
                format('powersync op %s (%s %s/%s)', coalesce(h_index, 0),
                       coalesce(h_op, '?'), coalesce(h_table, '?'), coalesce(h_id, '?')));
    if coalesce(e_detail, '') = '' then
      raise exception using errcode = e_state, message = e_msg, hint = e_hint;
    else
      raise exception using errcode = e_state, message = e_msg, detail = e_detail, hint = e_hint;
    end if;
  end;
  end loop attempt;

  -- recorded, so that a re-send after a lost answer reports them too (the first 100,000: what
  -- the ledger keeps of a user's list; a skipped PUT of a large group lists the whole group)
  if client_id is not null and transaction_id is not null and pg_catalog.cardinality(v_unchanged) > 0 then
    perform public.powersync_upload_ledger_unchanged(client_id, transaction_id, owner_id, v_unchanged[1:100000]);
  end if;
  return jsonb_build_object('applied', jsonb_array_length(ops),
                            'unchanged', to_jsonb(v_unchanged));
  exception when sqlstate 'PS409' then
    if c_index is null then
      raise;  -- not ours (a trigger's?): as any error
    end if;
    -- rolled back: nothing of this call is applied, nothing recorded in the ledger
    return jsonb_build_object('applied', 0,
                              'conflict', jsonb_build_object('index', c_index, 'row', c_row));
  end;
end
$$;

comment on function public.powersync_apply_transaction(jsonb, text, text, text, text, boolean) is
  'PowerSync upload bridge: apply one PowerSync transaction (PUT/PATCH/DELETE ops) atomically.';

revoke all on function public.powersync_apply_transaction(jsonb, text, text, text, text, boolean) from public;
do $$
begin
  if exists (select 1 from pg_catalog.pg_roles where rolname = 'anon') then
    execute 'revoke all on function public.powersync_apply_transaction(jsonb, text, text, text, text, boolean) from anon';
  end if;
end
$$;
grant execute on function public.powersync_apply_transaction(jsonb, text, text, text, text, boolean)
  to authenticated, service_role;

commit;

-- PostgREST: see the new signature now (Supabase reloads on DDL by itself)
notify pgrst, 'reload schema';
