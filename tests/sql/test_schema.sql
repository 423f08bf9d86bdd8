-- Test schema for the upload bridge: a small copy of what a Supabase project
-- looks like to PostgREST (API roles, auth.uid(), RLS) plus the tables of the
-- PowerSync to-do demo. Used by the end-to-end tests and by `make dev`.
--
-- Safe to run more than once on the same database (keeps existing rows).
-- sql/atomic_upload.sql and sql/dead_letter.sql are NOT part of it: load them
-- on top when needed.

-- ---------------------------------------------------------------- API roles
-- Supabase: anon / authenticated / service_role are NOLOGIN roles that
-- PostgREST switches to (SET LOCAL ROLE) after verifying the JWT.
do $$
begin
  if not exists (select 1 from pg_roles where rolname = 'anon') then
    create role anon nologin noinherit;
  end if;
  if not exists (select 1 from pg_roles where rolname = 'authenticated') then
    create role authenticated nologin noinherit;
  end if;
  if not exists (select 1 from pg_roles where rolname = 'service_role') then
    create role service_role nologin noinherit bypassrls;
  end if;
end
$$;
alter role service_role bypassrls;
-- PostgREST logs in as `authenticator` (NOINHERIT: no rights of its own) and
-- switches to the request's role; as on Supabase it is a member of all three,
-- which is what lets a function called by service_role `set role authenticated`
-- (the dead-letter replay). The stand-in does the same (SET SESSION
-- AUTHORIZATION authenticator, then SET ROLE).
do $$
begin
  if not exists (select 1 from pg_roles where rolname = 'authenticator') then
    create role authenticator login noinherit;
  end if;
end
$$;
grant anon, authenticated, service_role to authenticator;

-- Supabase's per-role statement timeouts (PostgREST 12 applies role settings
-- of the impersonated role inside each request's transaction).
alter role anon set statement_timeout = '3s';
alter role authenticated set statement_timeout = '8s';

-- ---------------------------------------------------------------- auth schema
create schema if not exists auth;
grant usage on schema auth to anon, authenticated, service_role;

-- Same definitions as Supabase's auth.uid() / auth.role() / auth.jwt():
-- they read the claims PostgREST stores in request.jwt.claims (and the
-- older per-claim settings).
create or replace function auth.uid() returns uuid
language sql stable
as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim.sub', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
  )::uuid
$$;

create or replace function auth.role() returns text
language sql stable
as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim.role', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role')
  )::text
$$;

create or replace function auth.jwt() returns jsonb
language sql stable
as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim', true), ''),
    nullif(current_setting('request.jwt.claims', true), '')
  )::jsonb
$$;

grant execute on function auth.uid(), auth.role(), auth.jwt() to anon, authenticated, service_role;

-- ---------------------------------------------------------------- public tables
grant usage on schema public to anon, authenticated, service_role;

create table if not exists public.lists (
  id uuid primary key,
  created_at timestamptz default now(),
  name text not null,
  owner_id uuid not null
);

create table if not exists public.todos (
  id uuid primary key,
  created_at timestamptz default now(),
  completed_at timestamptz,
  description text not null,
  completed boolean not null default false,
  created_by uuid,
  completed_by uuid,
  list_id uuid not null references public.lists (id) on delete cascade,
  tags jsonb,
  priority int check (priority between 0 and 5)
);

-- text primary key so that ids with odd characters can be tested
create table if not exists public.profiles (
  id text primary key,
  user_id uuid not null,
  handle text unique,
  settings jsonb,
  active boolean
);

create index if not exists todos_list_id_idx on public.todos (list_id);

-- ---------------------------------------------------------------- RLS
alter table public.lists enable row level security;
alter table public.todos enable row level security;
alter table public.profiles enable row level security;

drop policy if exists lists_select_own on public.lists;
drop policy if exists lists_insert_own on public.lists;
drop policy if exists lists_update_own on public.lists;
drop policy if exists lists_delete_own on public.lists;
create policy lists_select_own on public.lists for select to authenticated
  using (owner_id = auth.uid());
create policy lists_insert_own on public.lists for insert to authenticated
  with check (owner_id = auth.uid());
create policy lists_update_own on public.lists for update to authenticated
  using (owner_id = auth.uid()) with check (owner_id = auth.uid());
create policy lists_delete_own on public.lists for delete to authenticated
  using (owner_id = auth.uid());

drop policy if exists todos_select_own on public.todos;
drop policy if exists todos_insert_own on public.todos;
drop policy if exists todos_update_own on public.todos;
drop policy if exists todos_delete_own on public.todos;
create policy todos_select_own on public.todos for select to authenticated
  using (created_by = auth.uid());
create policy todos_insert_own on public.todos for insert to authenticated
  with check (created_by = auth.uid());
create policy todos_update_own on public.todos for update to authenticated
  using (created_by = auth.uid()) with check (created_by = auth.uid());
create policy todos_delete_own on public.todos for delete to authenticated
  using (created_by = auth.uid());

drop policy if exists profiles_select_own on public.profiles;
drop policy if exists profiles_insert_own on public.profiles;
drop policy if exists profiles_update_own on public.profiles;
drop policy if exists profiles_delete_own on public.profiles;
create policy profiles_select_own on public.profiles for select to authenticated
  using (user_id = auth.uid());
create policy profiles_insert_own on public.profiles for insert to authenticated
  with check (user_id = auth.uid());
create policy profiles_update_own on public.profiles for update to authenticated
  using (user_id = auth.uid()) with check (user_id = auth.uid());
create policy profiles_delete_own on public.profiles for delete to authenticated
  using (user_id = auth.uid());

-- ---------------------------------------------------------------- grants
-- anon gets nothing here (a request without a user token is refused by
-- Postgres with 42501, which PostgREST answers with 401).
grant select, insert, update, delete on public.lists, public.todos, public.profiles
  to authenticated, service_role;
