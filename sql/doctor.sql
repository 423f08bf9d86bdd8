-- PowerSync upload bridge: the setup doctor's catalog view (read-only).
--
-- `devtool doctor` (docs/operations-tool.md) checks a deployment over PostgREST
-- with the service key; PostgREST alone cannot tell whether row-level security
-- is on, which privileges each API role has, or what the `powersync`
-- publication contains. This function reads exactly that from the catalog and
-- changes nothing. Without it the doctor says so and cannot vouch for the
-- database. Idempotent: safe to run again.
--
--   POST /rest/v1/rpc/powersync_doctor
--   {"tables": [{"schema": "public", "name": "todos", "columns": ["user_id"]}],
--    "functions": ["public.powersync_apply_transaction(jsonb, text, text, text, text, boolean)"]}
--
-- answers
--   {"version": 6, "publication": true,
--    "bypassrls": {"anon": false, "authenticated": false, "service_role": true},
--    "tables": [{"schema": "public", "name": "todos", "exists": true, "rls": true, "id_unique": true,
--                "kind": "table", "security_invoker": null,
--                "policies": {"anon": [], "authenticated": ["DELETE", "INSERT", "SELECT", "UPDATE"], ...},
--                "missing_columns": [], "published": true,
--                "column_types": {"id": {"type": "uuid", "category": "U"},
--                                 "tags": {"type": "text[]", "category": "A"}, ...},
--                "privileges": {"anon": [], "authenticated": ["DELETE", "INSERT", "SELECT", "UPDATE"],
--                               "service_role": ["DELETE", "INSERT", "SELECT", "UPDATE"]},
--                "column_only": {"anon": [], "authenticated": [], "service_role": []}}],
--    "functions": [{"signature": "...", "exists": true, "body_sha256": "...",
--                   "execute": {"anon": false, "authenticated": true, "service_role": true}}]}
--
-- A privilege counts when the role holds it on the table (SELECT, INSERT and
-- UPDATE: or on any of its columns); "column_only" lists those held on some
-- columns but not on the table (a write of another column is refused).
-- "bypassrls": whether the role bypasses row-level security (a superuser
-- does). Roles that do not exist are left out. "column_types": each column's
-- type as PostgreSQL prints it (a domain's: its base type), and its category (pg_type.typcategory: A an
-- array, B boolean, S a string, U a user type such as uuid, json and jsonb).
-- "kind": table, view or foreign table; "security_invoker": a view's option
-- (null for a table). "policies": for each role, the commands (DELETE, INSERT,
-- SELECT, UPDATE) some permissive policy lets it run (a policy for ALL, for
-- PUBLIC or for a role it is a member of counts).
-- "type_schemas_without_usage": for each role, the schemas holding a column's
-- type (an enum, a domain, ...) on which it lacks USAGE, each with those columns:
-- a write that names such a column names its type (PostgREST and the atomic
-- function alike), and is refused.
-- "id_unique": whether a unique index on `id` alone (not partial, not
-- deferrable: what `on conflict (id)`, the upsert of every PUT, needs) exists;
-- null for a view or a foreign table, whose arbiter the catalog cannot tell.
-- "body_sha256": SHA-256 of the function's body as installed (prosrc; carriage
-- returns, blanks at line ends and around it left out, as an editor may change
-- them), which the doctor compares with the body its SQL file writes: an older
-- copy can keep the signature and behave otherwise. Null when it does not exist.
-- EXECUTE: service_role (and the owner) only: the answer describes the schema.

create or replace function public.powersync_doctor(tables jsonb, functions text[] default '{}')
returns jsonb
language sql
stable
security invoker
set search_path = pg_catalog, pg_temp
as $$
  with roles as (
    select r.oid, r.rolname, r.rolbypassrls or r.rolsuper as bypasses from pg_catalog.pg_roles r
     where r.rolname in ('anon', 'authenticated', 'service_role')
  ),
  wanted as (
    select t.ord, t.value ->> 'schema' as schema_name, t.value ->> 'name' as table_name,
           coalesce(t.value -> 'columns', '[]'::jsonb) as columns
      from jsonb_array_elements(coalesce(tables, '[]'::jsonb)) with ordinality as t(value, ord)
  ),
  found as (
    select w.*, c.oid as rel, c.relrowsecurity, c.relkind, c.reloptions
      from wanted w
      left join pg_catalog.pg_namespace n on n.nspname = w.schema_name
      left join pg_catalog.pg_class c
        on c.relnamespace = n.oid and c.relname = w.table_name
       and c.relkind in ('r', 'p', 'v', 'f')
  )
  select jsonb_build_object(
    'version', 6,
    'bypassrls', coalesce((select jsonb_object_agg(r.rolname, r.bypasses) from roles r), '{}'::jsonb),
    'publication', exists (select 1 from pg_catalog.pg_publication p where p.pubname = 'powersync'),
    'tables', coalesce((
      select jsonb_agg(jsonb_build_object(
        'schema', f.schema_name,
        'name', f.table_name,
        'exists', f.rel is not null,
        'rls', coalesce(f.relrowsecurity, false),
        'kind', case f.relkind when 'r' then 'table' when 'p' then 'table' when 'v' then 'view'
                               when 'f' then 'foreign table' end,
        'security_invoker', case when f.relkind = 'v' then coalesce((
          select o.option_value::boolean from pg_catalog.pg_options_to_table(f.reloptions) as o
           where o.option_name = 'security_invoker'), false) end,
        'type_schemas_without_usage', coalesce((
          select jsonb_object_agg(r.rolname, coalesce((
            select jsonb_object_agg(u.nspname, u.columns)
              from (select ns.nspname, jsonb_agg(a.attname order by a.attnum) as columns
                      from pg_catalog.pg_attribute as a
                      join pg_catalog.pg_type as t on t.oid = a.atttypid
                      join pg_catalog.pg_namespace as ns on ns.oid = t.typnamespace
                     where a.attrelid = f.rel and a.attnum > 0 and not a.attisdropped
                       and not pg_catalog.has_schema_privilege(r.oid, ns.oid, 'USAGE')
                     group by ns.nspname) as u), '{}'::jsonb))
            from roles r), '{}'::jsonb),
        'policies', coalesce((
          select jsonb_object_agg(r.rolname, coalesce((
            select jsonb_agg(cmd order by cmd)
              from unnest(array['DELETE', 'INSERT', 'SELECT', 'UPDATE']) as cmd
             where exists (
               select 1 from pg_catalog.pg_policy p
                where p.polrelid = f.rel and p.polpermissive
                  and p.polcmd::text in ('*', case cmd when 'SELECT' then 'r' when 'INSERT' then 'a'
                                                       when 'UPDATE' then 'w' else 'd' end)
                  and exists (select 1 from unnest(p.polroles) as pr
                               where case when pr = 0 then true
                                          else pg_catalog.pg_has_role(r.oid, pr, 'USAGE') end))), '[]'::jsonb))
            from roles r), '{}'::jsonb),
        'id_unique', case when f.relkind in ('r', 'p') then exists (
          select 1 from pg_catalog.pg_index i
            join pg_catalog.pg_attribute a on a.attrelid = i.indrelid and a.attnum = i.indkey[0]
           where i.indrelid = f.rel and i.indisunique and i.indimmediate and i.indisvalid
             and i.indpred is null and i.indexprs is null and i.indnkeyatts = 1
             and a.attname = 'id') end,
        'missing_columns', coalesce((
          select jsonb_agg(col order by col)
            from jsonb_array_elements_text(f.columns) as col
           where f.rel is null
              or not exists (select 1 from pg_catalog.pg_attribute a
                              where a.attrelid = f.rel and a.attname = col
                                and a.attnum > 0 and not a.attisdropped)), '[]'::jsonb),
        'column_types', coalesce((
          select jsonb_object_agg(a.attname, jsonb_build_object(
                   'type', case when t.typtype = 'd'
                                then pg_catalog.format_type(t.typbasetype, t.typtypmod)
                                else pg_catalog.format_type(a.atttypid, a.atttypmod) end,
                   'category', t.typcategory::text))
            from pg_catalog.pg_attribute a
            join pg_catalog.pg_type t on t.oid = a.atttypid
           where a.attrelid = f.rel and a.attnum > 0 and not a.attisdropped), '{}'::jsonb),
        'published', exists (select 1 from pg_catalog.pg_publication_tables pt
                              where pt.pubname = 'powersync' and pt.schemaname = f.schema_name
                                and pt.tablename = f.table_name),
        'privileges', coalesce((
          select jsonb_object_agg(r.rolname, coalesce((
            select jsonb_agg(p order by p)
              from unnest(array['DELETE', 'INSERT', 'SELECT', 'UPDATE']) as p
             where f.rel is not null
               and case when p = 'DELETE' then pg_catalog.has_table_privilege(r.oid, f.rel, p)
                        else pg_catalog.has_any_column_privilege(r.oid, f.rel, p) end), '[]'::jsonb))
            from roles r), '{}'::jsonb),
        'column_only', coalesce((
          select jsonb_object_agg(r.rolname, coalesce((
            select jsonb_agg(p order by p)
              from unnest(array['INSERT', 'SELECT', 'UPDATE']) as p
             where f.rel is not null
               and pg_catalog.has_any_column_privilege(r.oid, f.rel, p)
               and not pg_catalog.has_table_privilege(r.oid, f.rel, p)), '[]'::jsonb))
            from roles r), '{}'::jsonb)
      ) order by f.ord)
      from found f), '[]'::jsonb),
    'functions', coalesce((
      select jsonb_agg(jsonb_build_object(
        'signature', s.sig,
        'exists', pg_catalog.to_regprocedure(s.sig) is not null,
        'body_sha256', (select pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to(
                                 pg_catalog.btrim(pg_catalog.regexp_replace(pg_catalog.replace(p.prosrc, E'\r', ''),
                                                                            E'[ \t]+\n', E'\n', 'g'), E' \t\n'),
                                 'UTF8')), 'hex')
                          from pg_catalog.pg_proc p where p.oid = pg_catalog.to_regprocedure(s.sig)),
        'execute', coalesce((
          select jsonb_object_agg(r.rolname,
                   pg_catalog.to_regprocedure(s.sig) is not null
                   and pg_catalog.has_function_privilege(r.oid, pg_catalog.to_regprocedure(s.sig), 'EXECUTE'))
            from roles r), '{}'::jsonb)
      ) order by s.ord)
      from unnest(coalesce(functions, '{}'::text[])) with ordinality as s(sig, ord)), '[]'::jsonb)
  )
$$;

comment on function public.powersync_doctor(jsonb, text[]) is
  'PowerSync upload bridge: what devtool doctor needs from the catalog (tables, RLS, privileges, publication, functions); read-only.';

do $$
declare
  r text;
begin
  execute 'revoke all on function public.powersync_doctor(jsonb, text[]) from public';
  foreach r in array array['anon', 'authenticated', 'service_role'] loop
    if exists (select 1 from pg_catalog.pg_roles where rolname = r) then
      execute pg_catalog.format('revoke all on function public.powersync_doctor(jsonb, text[]) from %I', r);
    end if;
  end loop;
end
$$;
grant execute on function public.powersync_doctor(jsonb, text[]) to service_role;

notify pgrst, 'reload schema';
