-- PowerSync upload bridge: dead-letter table.
--
-- Run this once in your Supabase project if you enable dead-lettering: when a
-- write is rejected permanently (constraint violation, RLS, bad value …) the
-- bridge stores the rejected CRUD entry here instead of blocking the user's
-- upload queue forever, then acknowledges it to PowerSync.
--
--   POST /rest/v1/powersync_dead_letters
--   {"user_id": "<sub>", "transaction_id": "…", "op_index": 0,
--    "entry": {…the CRUD entry…}, "code": "23505", "message": "…",
--    "details": "…"}
--
-- With a user's token the row must carry that user's id (RLS); with the
-- service key any row may be written.
-- Idempotent: safe to run again.

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
