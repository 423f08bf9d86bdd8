-- sql/dead_letter.sql as it was before issue 15 (commit 0f0c34d): the table the upgrade test
-- (tests/e2e/test_dead_letters.py) creates, fills and then upgrades with the current file.
-- PowerSync upload bridge: dead-letter table and replay.
--
-- Run this once in your Supabase project if you enable dead-lettering
-- (UPLOAD_DEAD_LETTER_TABLE=powersync_dead_letters): when a transaction is
-- rejected permanently (constraint violation, RLS, bad value …) the bridge
-- records the WHOLE transaction here, then tells the client to discard it,
-- instead of blocking the user's upload queue forever. If the record cannot be
-- written, the transaction is reported retryable and stays with the client.
--
--   POST /rest/v1/powersync_dead_letters
--   {"user_id": "<sub>", "transaction_id": "…", "op_index": 1,
--    "entry": {…the failing CRUD entry, as the client sent it…},
--    "entries": [{"op": "PUT", "table": "todos", "id": "…", "data": {…},
--                 "state": "applied"},
--                {"op": "DELETE", "table": "todos", "id": "…", "state": "failed"},
--                {"op": "PATCH", "table": "lists", "id": "…", "data": {…},
--                 "state": "not_attempted"}],
--    "code": "23505", "message": "…", "details": "…"}
--
-- `entries` is every entry of the transaction in order, as the bridge writes
-- it (the ops of powersync_apply_transaction: data after conversions), with
-- what became of it: applied (written), failed (in the request that failed,
-- so not written), not_attempted (never sent). op_index is the failing entry
-- (null: the failure concerns the whole transaction).
--
-- Replay, once the cause is fixed (needs sql/atomic_upload.sql):
--
--   select public.powersync_replay_dead_letter(42);
--   -- service mode: pass the owner column, so ownership is enforced as the
--   -- bridge would (the dead letter's user_id is the owner):
--   select public.powersync_replay_dead_letter(42, owner_column => 'user_id');
--
-- It applies the entries that are not `applied`, in order, in one atomic
-- call (all or nothing), marks the row replayed_at = now() and refuses to
-- replay a row twice. It runs with the rights of whoever calls it (run it as
-- an operator: postgres or service_role; RLS applies to other roles).
--
-- With a user's token the row must carry that user's id (RLS); with the
-- service key any row may be written.
-- Idempotent: safe to run again (also to upgrade an older table).

create table if not exists public.powersync_dead_letters (
  id             bigserial primary key,
  user_id        uuid,
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
  add column if not exists replayed_at timestamptz;

create index if not exists powersync_dead_letters_user_id_idx
  on public.powersync_dead_letters (user_id, created_at);

alter table public.powersync_dead_letters enable row level security;

drop policy if exists powersync_dead_letters_insert_own on public.powersync_dead_letters;
drop policy if exists powersync_dead_letters_select_own on public.powersync_dead_letters;
drop policy if exists powersync_dead_letters_service on public.powersync_dead_letters;

create policy powersync_dead_letters_insert_own on public.powersync_dead_letters
  for insert to authenticated
  with check (user_id = (select auth.uid()));
create policy powersync_dead_letters_select_own on public.powersync_dead_letters
  for select to authenticated
  using (user_id = (select auth.uid()));
-- service_role bypasses RLS on Supabase; this policy keeps it working where it does not
create policy powersync_dead_letters_service on public.powersync_dead_letters
  for all to service_role
  using (true) with check (true);

revoke all on table public.powersync_dead_letters from public;
do $$
begin
  if exists (select 1 from pg_catalog.pg_roles where rolname = 'anon') then
    execute 'revoke all on table public.powersync_dead_letters from anon';
    execute 'revoke all on sequence public.powersync_dead_letters_id_seq from anon';
  end if;
end
$$;
grant select, insert on table public.powersync_dead_letters to authenticated;
grant all on table public.powersync_dead_letters to service_role;
grant usage, select on sequence public.powersync_dead_letters_id_seq to authenticated, service_role;

-- ---------------------------------------------------------------- replay
create or replace function public.powersync_replay_dead_letter(
  dead_letter_id bigint,
  owner_column text default null
) returns jsonb
language plpgsql
security invoker
set search_path = pg_catalog, pg_temp
as $$
declare
  d      public.powersync_dead_letters;
  v_ops  jsonb;
  v_done jsonb;
begin
  select * into d from public.powersync_dead_letters as l
   where l.id = dead_letter_id
     for update;
  if not found then
    raise exception using errcode = 'P0002',
      message = format('no dead letter with id %s', dead_letter_id);
  end if;
  if d.replayed_at is not null then
    raise exception using errcode = '55000',
      message = format('dead letter %s was already replayed at %s', dead_letter_id, d.replayed_at);
  end if;
  if d.entries is null or jsonb_typeof(d.entries) <> 'array' then
    raise exception using errcode = '22023',
      message = format('dead letter %s has no "entries" (recorded by an older bridge): '
                       'replay its "entry" by hand', dead_letter_id);
  end if;
  -- the entries not applied, in order, without their state
  select coalesce(jsonb_agg(e.value - 'state' order by e.ord), '[]'::jsonb)
    into v_ops
    from jsonb_array_elements(d.entries) with ordinality as e(value, ord)
   where e.value ->> 'state' is distinct from 'applied';
  v_done := public.powersync_apply_transaction(
    v_ops, owner_column,
    case when owner_column is null then null else d.user_id::text end);
  update public.powersync_dead_letters as l set replayed_at = now() where l.id = dead_letter_id;
  return v_done || jsonb_build_object('dead_letter_id', dead_letter_id);
end
$$;

comment on function public.powersync_replay_dead_letter(bigint, text) is
  'PowerSync upload bridge: apply the entries of a dead-lettered transaction that were not applied, atomically.';

revoke all on function public.powersync_replay_dead_letter(bigint, text) from public;
do $$
begin
  if exists (select 1 from pg_catalog.pg_roles where rolname = 'anon') then
    execute 'revoke all on function public.powersync_replay_dead_letter(bigint, text) from anon, authenticated';
  end if;
end
$$;
grant execute on function public.powersync_replay_dead_letter(bigint, text) to service_role;
