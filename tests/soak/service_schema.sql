-- Soak schema variant for service mode (tests/soak): the demo's lists and todos with ONE owner
-- column name in both tables, because UPLOAD_OWNER_COLUMN is a single column for every table in
-- UPLOAD_TABLES (the demo's todos are owned through created_by, its lists through owner_id).
-- Same shape, constraints and RLS as tests/sql/test_schema.sql otherwise (load that first: it
-- creates the API roles and auth.uid()). Idempotent.

create table if not exists public.soak_lists (
  id uuid primary key,
  created_at timestamptz default now(),
  name text not null,
  owner_id uuid not null
);

create table if not exists public.soak_todos (
  id uuid primary key,
  created_at timestamptz default now(),
  description text not null,
  completed boolean not null default false,
  owner_id uuid not null,
  list_id uuid not null references public.soak_lists (id) on delete cascade,
  priority int check (priority between 0 and 5)
);

create index if not exists soak_todos_list_id_idx on public.soak_todos (list_id);

alter table public.soak_lists enable row level security;
alter table public.soak_todos enable row level security;

drop policy if exists soak_lists_own on public.soak_lists;
create policy soak_lists_own on public.soak_lists for all to authenticated
  using (owner_id = auth.uid()) with check (owner_id = auth.uid());
drop policy if exists soak_todos_own on public.soak_todos;
create policy soak_todos_own on public.soak_todos for all to authenticated
  using (owner_id = auth.uid()) with check (owner_id = auth.uid());

grant select, insert, update, delete on public.soak_lists, public.soak_todos
  to authenticated, service_role;

-- Every mode's soak also writes soak_notes, a table created WITHOUT grants for the API roles (as
-- Supabase creates new public tables since 2026): tests/soak/driver.py revokes them before each
-- run and grants them half-way through, so writes to it must wait (retryable), never be lost.
create table if not exists public.soak_notes (
  id uuid primary key,
  owner_id uuid not null,
  body text not null
);

alter table public.soak_notes enable row level security;
drop policy if exists soak_notes_own on public.soak_notes;
create policy soak_notes_own on public.soak_notes for all to authenticated
  using (owner_id = auth.uid()) with check (owner_id = auth.uid());
