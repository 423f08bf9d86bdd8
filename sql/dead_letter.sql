-- PowerSync upload bridge: dead letters and their replay.
--
-- Run this once in your Supabase project if you enable dead-lettering
-- (UPLOAD_DEAD_LETTER_TABLE=powersync_dead_letters): when a transaction is
-- rejected permanently (constraint violation, RLS, bad value ...) the bridge
-- records the WHOLE transaction here, then tells the client to discard it,
-- instead of blocking the user's upload queue forever. If the record cannot be
-- written, the transaction is reported retryable and stays with the client.
-- Idempotent: safe to run again; it also upgrades an older copy in place
-- (user_id uuid -> text, bigserial id -> identity, provenance columns) without
-- losing rows.
--
-- Recording: only through powersync_record_dead_letter (SECURITY DEFINER).
-- API roles cannot insert, update or delete the table nor use its sequence;
-- an `authenticated` user may only read their own rows. The bridge calls
--
--   POST /rest/v1/rpc/powersync_record_dead_letter
--   {"entries": [{"op": "PUT", "table": "todos", "id": "...", "data": {...},
--                 "state": "applied"},
--                {"op": "DELETE", "table": "todos", "id": "...", "state": "failed"},
--                {"op": "PATCH", "table": "lists", "id": "...", "data": {...},
--                 "state": "not_attempted"}],
--    "code": "23505", "message": "...", "details": "...",
--    "transaction_id": "...", "client_id": "...", "op_index": 1,
--    "entry": {...the failing entry, as the client sent it...}}
--   service mode adds: "user_id": "<sub>", "owner_column": "user_id",
--                      "allowed_tables": ["todos", "lists"] (null: any table)
--
-- and gets the row's id back. `entries` is every entry of the transaction in
-- order, as the bridge writes it (the ops of powersync_apply_transaction: data
-- after conversions) with what became of it: applied (written), failed (in the
-- request that failed, so not written), not_attempted (never sent), unchanged
-- (applied but it changed no row: the records of UPLOAD_DEAD_LETTER_UNCHANGED,
-- code 'unchanged'). op_index is the failing entry (null: the failure concerns
-- the whole transaction).
--
-- The function sets everything that makes a replay safe itself (provenance):
--   * id (identity, never chosen by the caller) and created_at (now());
--   * a caller that does not bypass row-level security (`authenticated`):
--     the owner (user_id) is its JWT's `sub` and its JWT claims are kept
--     (recorded_as = 'user', recorded_claims). A user_id other than the
--     session's own, an owner_column or allowed_tables is refused (42501),
--     as is a session without a `sub`;
--   * a caller that bypasses row-level security (service_role, the
--     postgres/owner role): must name the owner (user_id) and the owner column;
--     recorded_as = 'service', with owner_column and allowed_tables;
--   * recorded_by: the database role that called.
-- At most 10000 dead letters per owner wait for a replay: beyond that the
-- function refuses (54000) and the bridge keeps the transaction queued
-- (dead_letter_failed) until an operator replays or deletes some.
-- One dead letter per transaction: the same owner, client_id,
-- transaction_id and ops (sha256 of `entries` without their state, which is
-- what the atomic function's ledger computes for the transaction) return the
-- first row's id and add nothing (a re-send after the bridge lost the answer).
-- With sql/atomic_upload.sql installed, a new dead letter with a client_id and
-- a transaction_id (other than code `unchanged`: that transaction was applied)
-- is also recorded in its ledger (powersync_upload_ledger_refuse):
-- a later call of the same transaction (one the bridge gave up on that reaches
-- the database late, or a re-send) applies nothing and answers this dead letter;
-- if the ledger shows the transaction applied already, or a record of its
-- unchanged entries does, recording fails (55000, its detail {"unchanged":
-- [...]}) and the bridge answers the transaction already applied.
--
-- Operators list, show, replay and discard dead letters with `devtool dead-letters`
-- (docs/operations-tool.md), or call the functions below.
--
-- Replay, once the cause is fixed (needs sql/atomic_upload.sql):
--
--   select public.powersync_replay_dead_letter(42);
--
-- EXECUTE: service_role and the owner (postgres) only. It applies the entries
-- that are not `applied`, in order, in one powersync_apply_transaction call
-- (all or nothing), and NEVER with more rights than the original writer:
--   * recorded_as = 'user': as that user: the function switches to the role
--     that recorded it (recorded_by: `authenticated`, or a custom role an
--     access-token hook gives; refused if that role now bypasses row-level
--     security) with the recorded claims (request.jwt.claims, and
--     request.jwt.claim.sub / .role for older auth helpers) for the call, so
--     that user's RLS policies decide, then restores the caller's role and
--     settings. (SET ROLE is refused inside SECURITY DEFINER functions, so the
--     replay is SECURITY INVOKER; the session user -- postgres, or
--     `authenticator` under PostgREST -- is a member of `authenticated` on
--     Supabase.)
--   * recorded_as = 'service': with the caller's rights, the recorded owner
--     column and owner (ownership enforced as the bridge did), and only the
--     recorded allowed tables; never the bridge's own tables.
--   * a row without provenance (recorded by an older bridge or written by
--     hand before this version) is refused (42501): replay its entries by hand.
--   * values are typed as in the session that recorded the letter (its
--     TimeZone, DateStyle and IntervalStyle, kept in recorded_settings), not
--     the caller's: a zone-less timestamp or a day-month date lands as the
--     upload would have written it.
-- Refused too (55000), so that the user's later writes are not gone over: while
-- an earlier dead letter of the same user waits (replay the oldest first), and
-- while the ledger holds a later transaction of the same user as applied that
-- wrote one of the letter's rows (not a dead letter's own replay; one whose rows
-- it did not record counts; docs/upload.md says which count as later), unless
-- called with overwrite_later_writes => true (check the rows first: devtool
-- dead-letters replay --dry-run shows them). With the ledger's table but an older
-- sql/atomic_upload.sql, that cannot be told: refused too.
-- Refused or failing (RLS, a table not allowed, a constraint, already applied
-- since): nothing is applied, the error is returned and stored in replay_error
-- ({"applied": 0, "replayed": false, "error": {code, message, details, hint}}),
-- and the row can be replayed again once the cause is fixed. Success:
-- {"applied": n, "replayed": true, "dead_letter_id": id}, replayed_at set.
-- "unchanged" lists the entries (their places in the letter, from 0) that changed
-- no row. A row already replayed is refused (55000, raised). With a client_id
-- and a transaction_id (1 to 256 bytes each, as the ledger takes them; not for a
-- record of code `unchanged`, whose transaction the ledger holds applied) the
-- replay asks the ledger first: a transaction applied since
-- it was dead-lettered (same user, client, transaction, recorded after
-- created_at; or the same ops at any time) is refused (55000, stored);
-- otherwise the replay records it in the ledger with the digest of ALL its
-- ops, so a later re-send by the client is `already_applied`.

begin;

-- A lock this file waits for holds the uploads that record dead letters behind it: wait at most
-- 3 s for each, then fail (55P03: nothing changed; run it again at a quieter moment).
set local lock_timeout = '3s';

create table if not exists public.powersync_dead_letters (
  id             bigint generated always as identity primary key,
  user_id        text,
  transaction_id text,
  op_index       int,
  entry          jsonb not null,
  code           text,
  message        text,
  details        text,
  created_at     timestamptz not null default now()
);

-- added after the first release: run this file again to upgrade
alter table public.powersync_dead_letters
  add column if not exists entries jsonb,
  add column if not exists replayed_at timestamptz,
  -- provenance, set by powersync_record_dead_letter only
  add column if not exists client_id text,
  add column if not exists recorded_as text,        -- 'user' | 'service'; null: no provenance
  add column if not exists recorded_by text,        -- the database role that recorded it
  add column if not exists recorded_claims jsonb,   -- the recording session's JWT claims
  add column if not exists recorded_settings jsonb, -- its TimeZone, DateStyle, IntervalStyle
  add column if not exists owner_column text,       -- service: the owner column
  add column if not exists allowed_tables text[],   -- service: the tables allowed (null: any)
  add column if not exists ops_digest text,         -- sha256 of the ops (entries without state)
  add column if not exists dedup_key text,          -- one dead letter per transaction
  -- the last replay attempt
  add column if not exists replay_result jsonb,
  add column if not exists replay_error jsonb,
  add column if not exists replay_attempted_at timestamptz,
  -- discarded by an operator (powersync_discard_dead_letter): never replayed, reason kept
  add column if not exists discarded_at timestamptz,
  add column if not exists discard_reason text,
  add column if not exists discarded_by text;

-- the policies name user_id: dropped before its type changes (one transaction:
-- no moment without them), created again below
drop policy if exists powersync_dead_letters_insert_own on public.powersync_dead_letters;
drop policy if exists powersync_dead_letters_select_own on public.powersync_dead_letters;
drop policy if exists powersync_dead_letters_service on public.powersync_dead_letters;
drop policy if exists powersync_dead_letters_service_select on public.powersync_dead_letters;
drop policy if exists powersync_dead_letters_service_update on public.powersync_dead_letters;

do $$
declare
  v_next bigint;
begin
  -- user_id was uuid (auth.uid()): any issuer's `sub` is text
  if (select a.atttypid from pg_catalog.pg_attribute a
       where a.attrelid = 'public.powersync_dead_letters'::pg_catalog.regclass
         and a.attname = 'user_id' and not a.attisdropped) <> 'pg_catalog.text'::pg_catalog.regtype then
    alter table public.powersync_dead_letters alter column user_id type text using user_id::text;
  end if;
  -- id was bigserial (insertable by users): an identity nobody chooses
  if not exists (select 1 from pg_catalog.pg_attribute a
                  where a.attrelid = 'public.powersync_dead_letters'::pg_catalog.regclass
                    and a.attname = 'id' and a.attidentity = 'a') then
    -- After the ids the old sequence issued. The old table let users insert rows with ids of
    -- their choosing: those above them (the sequence never issued them) move to the negative
    -- ids, where the numbering never comes (one near bigint's end would have ended every
    -- user's dead letters, ids just above the start each failed a record). Without the old
    -- sequence, after the ids below 2^62.
    if pg_catalog.to_regclass('public.powersync_dead_letters_id_seq') is not null then
      execute 'select case when is_called then last_value else last_value - 1 end'
              ' from public.powersync_dead_letters_id_seq' into v_next;
      update public.powersync_dead_letters as d set id = -d.id
       where d.id > v_next
         and not exists (select 1 from public.powersync_dead_letters as n where n.id = -d.id);
      v_next := greatest(v_next, 0) + 1;
    else
      select coalesce(max(d.id) filter (where d.id < 4611686018427387904), 0) + 1 into v_next
        from public.powersync_dead_letters d;
    end if;
    alter table public.powersync_dead_letters alter column id drop default;
    drop sequence if exists public.powersync_dead_letters_id_seq;
    execute pg_catalog.format(
      'alter table public.powersync_dead_letters alter column id'
      ' add generated always as identity (start with %s)', v_next);
  end if;
  if not exists (select 1 from pg_catalog.pg_constraint c
                  where c.conrelid = 'public.powersync_dead_letters'::pg_catalog.regclass
                    and c.conname = 'powersync_dead_letters_recorded_as_check') then
    alter table public.powersync_dead_letters add constraint powersync_dead_letters_recorded_as_check
      check (recorded_as in ('user', 'service'));
  end if;
end
$$;

create index if not exists powersync_dead_letters_user_id_idx
  on public.powersync_dead_letters (user_id, created_at);
create unique index if not exists powersync_dead_letters_dedup_key
  on public.powersync_dead_letters (dedup_key);

comment on table public.powersync_dead_letters is
  'PowerSync upload bridge: transactions rejected for good, written only by powersync_record_dead_letter.';

alter table public.powersync_dead_letters enable row level security;

-- a user reads their own dead letters (any issuer: the JWT's sub, not auth.uid())
create policy powersync_dead_letters_select_own on public.powersync_dead_letters
  for select to authenticated
  using (user_id = (select auth.jwt() ->> 'sub'));
-- service_role bypasses RLS on Supabase; these keep it working where it does not
create policy powersync_dead_letters_service_select on public.powersync_dead_letters
  for select to service_role using (true);
create policy powersync_dead_letters_service_update on public.powersync_dead_letters
  for update to service_role using (true) with check (true);

-- Privileges: exactly these (older Supabase projects grant every new table and
-- sequence in public to the API roles by default; newer ones grant nothing).
--   authenticated: SELECT (its own rows, by the policy above)
--   service_role:  SELECT, and UPDATE of the replay bookkeeping columns (the
--                  replay runs as its caller)
--   anon: nothing. Nobody but the owner writes the other columns.
do $$
declare
  r text;
begin
  execute 'revoke all on table public.powersync_dead_letters from public';
  execute pg_catalog.format('revoke all on sequence %s from public',
                            pg_catalog.pg_get_serial_sequence('public.powersync_dead_letters', 'id'));
  foreach r in array array['anon', 'authenticated', 'service_role'] loop
    if exists (select 1 from pg_catalog.pg_roles where rolname = r) then
      execute pg_catalog.format('revoke all on table public.powersync_dead_letters from %I', r);
      execute pg_catalog.format('revoke all on sequence %s from %I',
                                pg_catalog.pg_get_serial_sequence('public.powersync_dead_letters', 'id'), r);
    end if;
  end loop;
end
$$;
grant select on table public.powersync_dead_letters to authenticated;
grant select, update (replayed_at, replay_result, replay_error, replay_attempted_at,
                      discarded_at, discard_reason, discarded_by)
  on table public.powersync_dead_letters to service_role;

-- ---------------------------------------------------------------- record
create or replace function public.powersync_record_dead_letter(
  entries        jsonb,
  code           text,
  message        text,
  details        text default null,
  transaction_id text default null,
  client_id      text default null,
  op_index       integer default null,
  entry          jsonb default null,
  user_id        text default null,
  owner_column   text default null,
  allowed_tables text[] default null
) returns bigint
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
#variable_conflict use_variable
declare
  -- the calling role: SECURITY DEFINER changes current_user, not the `role` setting
  v_caller  text := coalesce(nullif(nullif(current_setting('role', true), 'none'), ''), session_user);
  v_claims  jsonb := nullif(current_setting('request.jwt.claims', true), '')::jsonb;
  v_trusted boolean;
  v_as      text;
  v_owner   text;
  v_bad     text;
  v_digest  text;
  v_key     text;
  v_marked  boolean;
  v_id      bigint;
  v_found   public.powersync_dead_letters;
begin
  select r.rolsuper or r.rolbypassrls into v_trusted
    from pg_catalog.pg_roles r where r.rolname = v_caller;
  if coalesce(v_trusted, false) then
    -- service mode (or an operator): names the owner and the owner column
    if coalesce(user_id, '') = '' or coalesce(owner_column, '') = '' then
      raise exception using errcode = '22023',
        message = 'powersync_record_dead_letter: a caller that bypasses row-level security must give user_id and owner_column';
    end if;
    v_as := 'service';
    v_owner := user_id;
  else
    -- a user: the owner is the session's own sub, whatever the body says
    v_owner := nullif(v_claims ->> 'sub', '');
    if v_owner is null then
      raise exception using errcode = '42501',
        message = 'powersync_record_dead_letter: the session has no sub';
    end if;
    if user_id is distinct from null and user_id <> v_owner then
      raise exception using errcode = '42501',
        message = 'powersync_record_dead_letter: user_id must be the session''s own sub';
    end if;
    if owner_column is not null or allowed_tables is not null then
      raise exception using errcode = '42501',
        message = 'powersync_record_dead_letter: only service_role records owner_column and allowed_tables';
    end if;
    v_as := 'user';
  end if;

  if entries is null or jsonb_typeof(entries) <> 'array' then
    raise exception using errcode = '22023',
      message = 'powersync_record_dead_letter: entries must be a JSON array';
  end if;
  select pg_catalog.format('entry %s', e.ord - 1) into v_bad
    from jsonb_array_elements(entries) with ordinality as e(value, ord)
   where jsonb_typeof(e.value) <> 'object'
      or jsonb_typeof(e.value -> 'table') is distinct from 'string'
      or jsonb_typeof(e.value -> 'id') is distinct from 'string'
      or (e.value ->> 'state') is null
      or (e.value ->> 'state') not in ('applied', 'failed', 'not_attempted', 'unchanged')
   order by e.ord limit 1;
  if v_bad is not null then
    raise exception using errcode = '22023',
      message = pg_catalog.format('powersync_record_dead_letter: %s is not {"op","table","id","data"?,"state"}', v_bad);
  end if;

  -- the digest the atomic function's ledger computes for these ops
  select pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to(
           coalesce(jsonb_agg(e.value - 'state' order by e.ord), '[]'::jsonb)::text, 'UTF8')), 'hex')
    into v_digest
    from jsonb_array_elements(entries) with ordinality as e(value, ord);
  if transaction_id is not null then
    v_key := pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to(
               jsonb_build_array(v_owner, client_id, transaction_id, v_digest)::text, 'UTF8')), 'hex');
  end if;

  -- the same transaction recorded before, written as other ops (the bridge's settings or
  -- version changed between two attempts), so under another dedup_key: the ledger knows it by
  -- its entries' digest, and the first record is the answer, as for an identical re-send
  -- (dedup_key, below): a rejection's dead letter, or an applied transaction's record of its
  -- unchanged entries (UPLOAD_DEAD_LETTER_UNCHANGED; one older than the ledger's record of the
  -- transaction is another transaction's: a client that reused its ids)
  if client_id is not null and transaction_id is not null
     and pg_catalog.to_regprocedure('public.powersync_upload_ledger_letter_of(text, text, text)') is not null
  then
    execute case when code = 'unchanged' then
              'select d.id from public.powersync_upload_ledger as l'
              ' join public.powersync_dead_letters as d on d.user_id = l.user_id'
              '   and d.client_id = l.client_id and d.transaction_id = l.transaction_id'
              ' where l.user_id = $1 and l.client_id = $2 and l.transaction_id = $3'
              '   and l.entries_digest = public.powersync_upload_entries_digest()'
              '   and l.dead_letter_id is null and d.code = ''unchanged'' and d.created_at >= l.applied_at'
              ' order by d.id limit 1'
            else
              'select d.id from public.powersync_dead_letters as d'
              ' where d.id = public.powersync_upload_ledger_letter_of($1, $2, $3)'
            end
      into v_id using v_owner, client_id, transaction_id;
    if v_id is not null then
      return v_id;
    end if;
  end if;

  -- a user's dead letters waiting for a replay are capped (recording them is open to the user
  -- through /rpc): beyond the cap this user's next record fails, so the bridge keeps their
  -- transaction queued (dead_letter_failed) until an operator looks; no one else is affected
  if (select count(*) from (select 1 from public.powersync_dead_letters as w
                             where w.user_id = v_owner and w.replayed_at is null
                               and w.discarded_at is null
                               and w.dedup_key is distinct from v_key
                             limit 10000) as waiting) >= 10000 then
    raise exception using errcode = '54000',
      message = 'powersync_record_dead_letter: 10000 dead letters of this user are waiting for a replay',
      hint = 'replay or delete them (as an operator) before more can be recorded';
  end if;

  insert into public.powersync_dead_letters as d
    (user_id, transaction_id, client_id, op_index, entry, entries, code, message, details,
     recorded_as, recorded_by, recorded_claims, recorded_settings, owner_column, allowed_tables,
     ops_digest, dedup_key)
  values
    (v_owner, transaction_id, client_id, op_index, coalesce(entry, entries), entries, code, message,
     details, v_as, v_caller, v_claims,
     -- what types the values' text (a timestamp without a zone, a date's order, an interval) in
     -- the API session the transaction was written in: its replay types them the same way
     jsonb_build_object('TimeZone', current_setting('TimeZone'), 'DateStyle', current_setting('DateStyle'),
                        'IntervalStyle', current_setting('IntervalStyle')),
     case when v_as = 'service' then owner_column end,
     case when v_as = 'service' then allowed_tables end,
     v_digest, v_key)
  on conflict (dedup_key) do nothing
  returning d.id into v_id;
  -- a new dead letter of a rejected transaction (not the record of an applied one's unchanged
  -- entries): with sql/atomic_upload.sql's ledger, no later (late or re-sent) call of it may
  -- apply it, and one that applied it already makes this call fail (55000)
  if v_id is not null and client_id is not null and transaction_id is not null
     and code is distinct from 'unchanged'
     and pg_catalog.to_regprocedure('public.powersync_upload_ledger_refuse(text, text, text, text, bigint)') is not null
  then
    execute 'select public.powersync_upload_ledger_refuse($1, $2, $3, $4, $5)'
      using v_owner, client_id, transaction_id, v_digest, v_id;
  end if;
  if v_id is null then
    -- this transaction has its dead letter already
    select d.* into v_found from public.powersync_dead_letters as d where d.dedup_key = v_key;
    v_id := v_found.id;
    -- ... and the ledger marks it as being applied through REST (the letter found is an earlier
    -- record of the same ops, e.g. of its unchanged entries): the mark is met as by a new letter,
    -- so another upload's refuses this one (55P03: the bridge keeps the transaction), and the
    -- marking upload's own ends (sql/atomic_upload.sql, powersync_upload_ledger_rest_begin)
    if v_id is not null and client_id is not null and transaction_id is not null
       and code is distinct from 'unchanged'
       and pg_catalog.to_regprocedure('public.powersync_upload_request_token(text)') is not null
    then
      execute 'select exists (select 1 from public.powersync_upload_ledger as l'
              ' where l.user_id = $1 and l.client_id = $2 and l.transaction_id = $3 and l.rest_until is not null)'
        into v_marked using v_owner, client_id, transaction_id;
      if v_marked then
        execute 'select public.powersync_upload_ledger_refuse($1, $2, $3, $4, $5)'
          using v_owner, client_id, transaction_id, v_digest, v_id;
      end if;
    end if;
    -- ... the record of its unchanged entries, made when it was applied, and no upload marks it
    -- as being applied through REST: a rejection of a re-send of it (refused before sending by a
    -- setting changed since) is moot; as the ledger answers it (sql/atomic_upload.sql,
    -- powersync_upload_ledger_refuse), with the entries that changed no row
    if v_found.code = 'unchanged' and code is distinct from 'unchanged' and not coalesce(v_marked, false) then
      raise exception using errcode = '55000',
        message = pg_catalog.format('transaction %s of client %s was applied: it is not recorded as a dead letter',
                                    transaction_id, client_id),
        detail = jsonb_build_object('unchanged',
                   (select coalesce(jsonb_agg(e.ord - 1 order by e.ord), '[]'::jsonb)
                      from jsonb_array_elements(v_found.entries) with ordinality as e(value, ord)
                     where e.value ->> 'state' = 'unchanged'))::text;
    end if;
  end if;
  return v_id;
end
$$;

comment on function public.powersync_record_dead_letter(jsonb, text, text, text, text, text, integer, jsonb, text, text, text[]) is
  'PowerSync upload bridge: record a transaction rejected for good (owner and provenance set by the function); returns its id.';

-- ---------------------------------------------------------------- replay
drop function if exists public.powersync_replay_dead_letter(bigint, text);
-- before overwrite_later_writes
drop function if exists public.powersync_replay_dead_letter(bigint);

create or replace function public.powersync_replay_dead_letter(
  dead_letter_id bigint,
  overwrite_later_writes boolean default false
)
returns jsonb
language plpgsql
security invoker
set search_path = pg_catalog, pg_temp
as $$
declare
  d        public.powersync_dead_letters;
  v_ops    jsonb;
  v_places integer[];  -- each op's entry in the letter (from 0)
  v_owner  text;
  v_table  text;
  v_result jsonb;
  v_error  jsonb;
  v_role   text;
  -- what a user's replay changes, restored afterwards
  s_role       text := current_setting('role');
  s_claims     text := coalesce(current_setting('request.jwt.claims', true), '');
  s_claim      text := coalesce(current_setting('request.jwt.claim', true), '');
  s_claim_sub  text := coalesce(current_setting('request.jwt.claim.sub', true), '');
  s_claim_role text := coalesce(current_setting('request.jwt.claim.role', true), '');
  -- (request.method and request.path: the apply sets them for each write; never recorded)
  s_settings   jsonb := jsonb_build_object('TimeZone', current_setting('TimeZone'),
                                           'DateStyle', current_setting('DateStyle'),
                                           'IntervalStyle', current_setting('IntervalStyle'),
                                           'request.method', coalesce(current_setting('request.method', true), ''),
                                           'request.path', coalesce(current_setting('request.path', true), ''));
  v_setting    text;
  v_earlier    bigint;
  v_later      text[];
  e_state  text;
  e_msg    text;
  e_detail text;
  e_hint   text;
begin
  select * into d from public.powersync_dead_letters as l
   where l.id = dead_letter_id
     for update;
  if not found then
    raise exception using errcode = 'P0002',
      message = pg_catalog.format('no dead letter with id %s', dead_letter_id);
  end if;
  if d.replayed_at is not null then
    raise exception using errcode = '55000',
      message = pg_catalog.format('dead letter %s was already replayed at %s', dead_letter_id, d.replayed_at);
  end if;
  if d.discarded_at is not null then
    raise exception using errcode = '55000',
      message = pg_catalog.format('dead letter %s was discarded at %s: %s', dead_letter_id,
                                  d.discarded_at, d.discard_reason);
  end if;
  if d.recorded_as is null then
    raise exception using errcode = '42501',
      message = pg_catalog.format('dead letter %s has no provenance (written before '
                                  'powersync_record_dead_letter existed, or by hand): replay its entries by hand',
                                  dead_letter_id);
  end if;
  if d.entries is null or jsonb_typeof(d.entries) <> 'array' then
    raise exception using errcode = '22023',
      message = pg_catalog.format('dead letter %s has no "entries"', dead_letter_id);
  end if;
  -- the entries not applied, in order, without their state, and their places in the letter
  select coalesce(jsonb_agg(e.value - 'state' order by e.ord), '[]'::jsonb),
         coalesce(array_agg((e.ord - 1)::integer order by e.ord), '{}')
    into v_ops, v_places
    from jsonb_array_elements(d.entries) with ordinality as e(value, ord)
   where e.value ->> 'state' is distinct from 'applied';

  begin
    -- The user's own order: an earlier dead letter of theirs still waiting holds writes they made
    -- before this one's, which its replay would put over this one's. (A record of code
    -- 'unchanged' holds no such writes: its transaction was applied, in order.)
    select l.id into v_earlier from public.powersync_dead_letters as l
     where l.user_id is not distinct from d.user_id and l.id < d.id
       and l.replayed_at is null and l.discarded_at is null and l.code is distinct from 'unchanged'
     order by l.id limit 1;
    if v_earlier is not null then
      raise exception using errcode = '55000',
        message = pg_catalog.format('dead letter %s of the same user, recorded before dead letter %s, is still '
                                    'waiting: replay (or discard) that one first', v_earlier, dead_letter_id);
    end if;
    -- the values' text typed as in the session that wrote the transaction, not the operator's
    -- (a psql with PGTZ or another DateStyle would shift a zone-less timestamp or swap a date's
    -- day and month); a letter recorded before these were kept: the caller's session's
    for v_setting in select k from pg_catalog.jsonb_object_keys(s_settings) as k loop
      if d.recorded_settings ->> v_setting is not null then
        perform pg_catalog.set_config(v_setting, d.recorded_settings ->> v_setting, true);
      end if;
    end loop;
    if d.recorded_as = 'service' then
      -- only the tables the bridge allowed, never its own
      select o.value ->> 'table' into v_table
        from jsonb_array_elements(v_ops) as o(value)
       where coalesce(o.value ->> 'table', '') in
               ('', 'powersync_dead_letters', 'powersync_upload_ledger', 'powersync_upload_ledger_settings')
          or (d.allowed_tables is not null and not ((o.value ->> 'table') = any (d.allowed_tables)))
       limit 1;
      if found then
        raise exception using errcode = '42501',
          message = pg_catalog.format('table %s is not one the bridge allowed when it recorded dead letter %s',
                                      v_table, dead_letter_id);
      end if;
      v_owner := d.user_id;
    else
      -- as the user who recorded it: their role (a custom one from an access-token hook too:
      -- never `authenticated`'s rights for a role that has fewer), their claims, their policies
      v_role := coalesce(d.recorded_by, 'authenticated');
      if exists (select 1 from pg_catalog.pg_roles as r
                  where r.rolname = v_role and (r.rolsuper or r.rolbypassrls)) then
        raise exception using errcode = '42501',
          message = pg_catalog.format('dead letter %s was recorded by role %s, which now bypasses row-level '
                                      'security: replay its entries by hand', dead_letter_id, v_role);
      end if;
      perform pg_catalog.set_config('role', v_role, true);
      perform pg_catalog.set_config('request.jwt.claims', d.recorded_claims::text, true);
      perform pg_catalog.set_config('request.jwt.claim', '', true);
      perform pg_catalog.set_config('request.jwt.claim.sub', d.user_id, true);
      perform pg_catalog.set_config('request.jwt.claim.role', v_role, true);
    end if;
    -- the ledger, as the bridge keeps it: not for the record of an applied transaction's
    -- unchanged entries (the ledger holds that transaction applied, as it is), nor for ids it
    -- does not take (1 to 256 bytes: the bridge sent such a transaction without a record)
    if d.client_id is not null and d.transaction_id is not null and d.ops_digest is not null
       and d.code is distinct from 'unchanged'
       and octet_length(d.client_id) between 1 and 256 and octet_length(d.transaction_id) between 1 and 256
       and public.powersync_upload_ledger_claim(d.client_id, d.transaction_id, d.ops_digest,
                                                v_owner, d.created_at)
    then
      raise exception using errcode = '55000',
        message = pg_catalog.format('transaction %s of client %s was applied after dead letter %s was recorded',
                                    d.transaction_id, d.client_id, dead_letter_id);
    end if;
    v_result := public.powersync_apply_transaction(v_ops, d.owner_column, v_owner);
    -- the ops that changed no row, counted among those sent: as the letter's entries
    if jsonb_typeof(v_result -> 'unchanged') = 'array' then
      v_result := jsonb_set(v_result, '{unchanged}', (
        select coalesce(jsonb_agg(v_places[u.value::integer + 1] order by u.ord), '[]'::jsonb)
          from jsonb_array_elements_text(v_result -> 'unchanged') with ordinality as u(value, ord)));
    end if;
    perform pg_catalog.set_config('role', s_role, true);
    perform pg_catalog.set_config('request.jwt.claims', s_claims, true);
    perform pg_catalog.set_config('request.jwt.claim', s_claim, true);
    perform pg_catalog.set_config('request.jwt.claim.sub', s_claim_sub, true);
    perform pg_catalog.set_config('request.jwt.claim.role', s_claim_role, true);
    for v_setting in select k from pg_catalog.jsonb_object_keys(s_settings) as k loop
      perform pg_catalog.set_config(v_setting, s_settings ->> v_setting, true);
    end loop;
    -- Transactions of the same user the ledger holds as applied since this one was tried, that
    -- wrote (or may have written) its rows: the user made them later, and this replay would have
    -- gone over them (brought back a row they deleted). Only on the operator's explicit word.
    -- Asked after the apply (and rolled back with it), so that a transaction still committing
    -- when the replay began, whose row lock the apply waited for, is seen too.
    if not overwrite_later_writes and pg_catalog.to_regclass('public.powersync_upload_ledger') is not null then
      if pg_catalog.to_regprocedure('public.powersync_upload_row_key(text, text)') is null
         or pg_catalog.to_regprocedure('public.powersync_upload_ledger_applied_since(text, timestamptz)') is null then
        raise exception using errcode = '55000',
          message = 'the ledger''s SQL is older than this replay''s: it cannot tell which rows the user wrote since '
                    'this dead letter was recorded',
          hint = 'run sql/atomic_upload.sql again (it upgrades in place), or check the rows by hand and replay with '
                 'overwrite_later_writes => true';
      end if;
      -- Rows compared by powersync_upload_row_key, as the ledger keeps them (their md5); a record
      -- without rows (older SQL, over 1000 ops) counts. Another client's transaction applied up to
      -- 10 minutes before the letter was recorded counts too: the failed attempt came before the
      -- record, by up to the length of its upload request. The same client's came before it
      -- (a client sends its transactions one after another). Not counted: this transaction's own
      -- record, and the replays of the user's earlier dead letters (their writes came first).
      execute 'select coalesce(array_agg(a.client_id || ''/'' || a.transaction_id order by a.applied_at), ''{}'')'
              '  from public.powersync_upload_ledger_applied_since($1, $2 - interval ''10 minutes'') as a'
              ' where (a.applied_at > $2 or a.client_id is distinct from $3)'
              '   and not (a.client_id is not distinct from $3 and a.transaction_id is not distinct from $4)'
              '   and (a.row_keys is null or a.row_keys && array('
              '          select pg_catalog.md5(public.powersync_upload_row_key(o.value ->> ''table'', o.value ->> ''id''))'
              '            from pg_catalog.jsonb_array_elements($5) as o(value)))'
              '   and not exists (select 1 from public.powersync_dead_letters as o'
              '                    where o.user_id = $1 and o.id < $6 and o.replayed_at is not null'
              '                      and o.client_id = a.client_id and o.transaction_id = a.transaction_id'
              '                      and o.code is distinct from ''unchanged'')'
        into v_later
        using d.user_id, d.created_at, d.client_id, d.transaction_id, v_ops, d.id;
      if pg_catalog.cardinality(v_later) > 0 then
        raise exception using errcode = '55000',
          message = pg_catalog.format('%s transaction(s) of the same user applied after dead letter %s was '
                                      'tried wrote (or may have written) its rows (client/transaction: %s%s): '
                                      'replayed now, its writes would go over theirs',
                                      pg_catalog.cardinality(v_later), dead_letter_id,
                                      pg_catalog.array_to_string(v_later[1:3], ', '),
                                      case when pg_catalog.cardinality(v_later) > 3 then ', ...' else '' end),
          hint = 'check the rows its entries write (devtool dead-letters replay --dry-run shows them); then replay '
                 'with overwrite_later_writes => true (devtool: --overwrite-later-writes --id N), or discard it';
      end if;
    end if;
  exception when others then
    -- rolled back to the start of this block: nothing applied, role and settings restored
    get stacked diagnostics
      e_state  = returned_sqlstate,
      e_msg    = message_text,
      e_detail = pg_exception_detail,
      e_hint   = pg_exception_hint;
    v_error := jsonb_strip_nulls(jsonb_build_object(
      'code', e_state, 'message', e_msg,
      'details', nullif(e_detail, ''), 'hint', nullif(e_hint, '')));
  end;

  if v_error is not null then
    update public.powersync_dead_letters as l
       set replay_error = v_error, replay_attempted_at = now()
     where l.id = dead_letter_id;
    return jsonb_build_object('applied', 0, 'replayed', false, 'dead_letter_id', dead_letter_id,
                              'error', v_error);
  end if;
  update public.powersync_dead_letters as l
     set replayed_at = now(), replay_attempted_at = now(), replay_result = v_result, replay_error = null
   where l.id = dead_letter_id;
  return v_result || jsonb_build_object('replayed', true, 'dead_letter_id', dead_letter_id);
end
$$;

comment on function public.powersync_replay_dead_letter(bigint, boolean) is
  'PowerSync upload bridge: apply the entries of a dead-lettered transaction that were not applied, atomically, with the rights of the original writer.';

-- ---------------------------------------------------------------- discard
-- An operator gives up on a dead letter: it is kept (entries and all) with the
-- reason, who and when, and is never replayed (replay refuses it, 55000). It no
-- longer counts toward the owner's 10000 waiting. Refused: an empty reason
-- (22023), a dead letter already replayed (55000), an unknown id (P0002).
-- Discarding one already discarded changes nothing and returns it as it is.
-- EXECUTE: service_role (and the owner) only. Returns
-- {"dead_letter_id", "discarded": true, "discarded_at", "discard_reason"}.
create or replace function public.powersync_discard_dead_letter(dead_letter_id bigint, reason text)
returns jsonb
language plpgsql
security invoker
set search_path = pg_catalog, pg_temp
as $$
declare
  d public.powersync_dead_letters;
begin
  if coalesce(btrim(reason), '') = '' then
    raise exception using errcode = '22023',
      message = 'powersync_discard_dead_letter: a reason is required';
  end if;
  select * into d from public.powersync_dead_letters as l
   where l.id = dead_letter_id
     for update;
  if not found then
    raise exception using errcode = 'P0002',
      message = pg_catalog.format('no dead letter with id %s', dead_letter_id);
  end if;
  if d.replayed_at is not null then
    raise exception using errcode = '55000',
      message = pg_catalog.format('dead letter %s was replayed at %s: nothing to discard', dead_letter_id, d.replayed_at);
  end if;
  if d.discarded_at is null then
    update public.powersync_dead_letters as l
       set discarded_at = now(), discard_reason = reason,
           discarded_by = coalesce(nullif(nullif(current_setting('role', true), 'none'), ''), session_user)
     where l.id = dead_letter_id
    returning * into d;
  end if;
  return jsonb_build_object('dead_letter_id', d.id, 'discarded', true,
                            'discarded_at', d.discarded_at, 'discard_reason', d.discard_reason);
end
$$;

comment on function public.powersync_discard_dead_letter(bigint, text) is
  'PowerSync upload bridge: give up on a dead letter (kept, with the reason); it is never replayed.';

-- EXECUTE: exactly these (Postgres grants new functions to PUBLIC; older
-- Supabase projects also to the API roles by default)
do $$
declare
  r text;
begin
  execute 'revoke all on function public.powersync_record_dead_letter(jsonb, text, text, text, text, text, integer, jsonb, text, text, text[]) from public';
  execute 'revoke all on function public.powersync_replay_dead_letter(bigint, boolean) from public';
  execute 'revoke all on function public.powersync_discard_dead_letter(bigint, text) from public';
  foreach r in array array['anon', 'authenticated', 'service_role'] loop
    if exists (select 1 from pg_catalog.pg_roles where rolname = r) then
      execute pg_catalog.format('revoke all on function public.powersync_record_dead_letter(jsonb, text, text, text, text, text, integer, jsonb, text, text, text[]) from %I', r);
      execute pg_catalog.format('revoke all on function public.powersync_replay_dead_letter(bigint, boolean) from %I', r);
      execute pg_catalog.format('revoke all on function public.powersync_discard_dead_letter(bigint, text) from %I', r);
    end if;
  end loop;
end
$$;
grant execute on function public.powersync_record_dead_letter(jsonb, text, text, text, text, text, integer, jsonb, text, text, text[])
  to authenticated, service_role;
grant execute on function public.powersync_replay_dead_letter(bigint, boolean) to service_role;
grant execute on function public.powersync_discard_dead_letter(bigint, text) to service_role;

commit;

-- PostgREST: see the functions now (Supabase reloads on DDL by itself)
notify pgrst, 'reload schema';
