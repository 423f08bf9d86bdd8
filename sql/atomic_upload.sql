-- PowerSync upload bridge: atomic transaction upload.
--
-- Run this once in your Supabase project (SQL editor or a migration) if you
-- want the bridge to apply each PowerSync transaction all-or-nothing.
-- PostgREST runs each HTTP request in one database transaction, so the
-- bridge sends a whole PowerSync transaction as a single call:
--
--   POST /rest/v1/rpc/powersync_apply_transaction
--   {"ops": [{"op": "PUT",    "table": "todos", "id": "…", "data": {…}},
--            {"op": "PATCH",  "table": "todos", "id": "…", "data": {…}},
--            {"op": "DELETE", "table": "lists", "id": "…"}]}
--
-- Ops are applied in order. Any error aborts the whole call (nothing is
-- written) and PostgREST answers with the Postgres error; the error's hint
-- names the failing op (`powersync op <index> (<OP> <table>/<id>)`, index
-- from 0), after the original hint if there was one.
--
--   PUT    = INSERT … ON CONFLICT (id) DO UPDATE SET <only the columns in
--            data>; values are typed by the table (jsonb_populate_record).
--   PATCH  = UPDATE <only the columns in data> WHERE id = <id>; empty data is
--            a no-op.
--   DELETE = DELETE WHERE id = <id>.
-- Tables are looked up in schema public; every table needs a unique `id`.
--
-- SECURITY INVOKER: it runs with the caller's rights, so row-level security
-- applies exactly as for plain REST writes when called with a user's token.
--
-- Service mode (the bridge calls with the service key, which bypasses RLS):
-- the bridge passes owner_column/owner_id and then
--   * PUT forces <owner_column> = owner_id, and an existing row with the same
--     id that belongs to someone else is not taken over: error 42501;
--   * PATCH and DELETE only touch rows WHERE <owner_column>::text = owner_id
--     (other users' rows are silently left alone, like RLS-hidden rows);
--     a PATCH cannot change <owner_column> (it is forced to owner_id).
--
-- Returns {"applied": <number of ops processed>}.
-- Idempotent: safe to run again to upgrade.

create or replace function public.powersync_apply_transaction(
  ops jsonb,
  owner_column text default null,
  owner_id text default null
) returns jsonb
language plpgsql
security invoker
set search_path = public
as $$
declare
  v_entry  jsonb;
  v_index  integer := -1;
  v_op     text;
  v_table  text;
  v_id     text;
  v_data   jsonb;
  v_cols   text[];
  v_set    text;
  v_rows   bigint;
  v_sql    text;
  -- error re-raise
  e_state  text;
  e_msg    text;
  e_detail text;
  e_hint   text;
begin
  if ops is null or jsonb_typeof(ops) <> 'array' then
    raise exception using errcode = '22023',
      message = 'powersync_apply_transaction: ops must be a JSON array';
  end if;
  if (owner_column is null) <> (owner_id is null) then
    raise exception using errcode = '22023',
      message = 'powersync_apply_transaction: owner_column and owner_id must be given together';
  end if;

  begin
    for v_entry in
      select e.value from jsonb_array_elements(ops) with ordinality as e(value, ord) order by e.ord
    loop
      v_index := v_index + 1;
      v_op := null; v_table := null; v_id := null;

      if jsonb_typeof(v_entry) is distinct from 'object' then
        raise exception using errcode = '22023', message = 'op is not a JSON object';
      end if;
      v_op    := upper(v_entry ->> 'op');
      v_table := v_entry ->> 'table';
      v_id    := v_entry ->> 'id';
      v_data  := coalesce(v_entry -> 'data', '{}'::jsonb);
      if v_data = 'null'::jsonb then
        v_data := '{}'::jsonb;
      end if;

      if v_table is null or v_table = '' then
        raise exception using errcode = '22023', message = 'op has no "table"';
      end if;
      if v_id is null then
        raise exception using errcode = '22023', message = 'op has no "id"';
      end if;
      if jsonb_typeof(v_data) <> 'object' then
        raise exception using errcode = '22023', message = '"data" must be a JSON object';
      end if;

      if v_op = 'PUT' then
        v_data := v_data || jsonb_build_object('id', v_id);
        if owner_column is not null then
          v_data := v_data || jsonb_build_object(owner_column, owner_id);
        end if;
        select array_agg(k order by k) into v_cols from jsonb_object_keys(v_data) as k;

        select string_agg(format('%I = excluded.%I', c, c), ', ')
          into v_set
          from unnest(v_cols) as c
         where c <> 'id';

        v_sql := format(
          'insert into public.%I as t (%s) select %s from jsonb_populate_record(null::public.%I, $1) as r on conflict (id) ',
          v_table,
          (select string_agg(format('%I', c), ', ') from unnest(v_cols) as c),
          (select string_agg(format('r.%I', c), ', ') from unnest(v_cols) as c),
          v_table);
        if v_set is null then
          v_sql := v_sql || 'do nothing';
          execute v_sql using v_data;
        elsif owner_column is null then
          v_sql := v_sql || 'do update set ' || v_set;
          execute v_sql using v_data;
        else
          -- never take over a row that belongs to another owner
          v_sql := v_sql || 'do update set ' || v_set
                 || format(' where t.%I::text = $2', owner_column);
          execute v_sql using v_data, owner_id;
          get diagnostics v_rows = row_count;
          if v_rows = 0 then
            raise exception using errcode = '42501',
              message = format('row %s of table %s belongs to another owner', v_id, v_table);
          end if;
        end if;

      elsif v_op = 'PATCH' then
        v_data := v_data - 'id';
        if owner_column is not null and v_data ? owner_column then
          v_data := v_data || jsonb_build_object(owner_column, owner_id);
        end if;
        if v_data <> '{}'::jsonb then
          select string_agg(format('%I = r.%I', k, k), ', ' order by k)
            into v_set
            from jsonb_object_keys(v_data) as k;
          v_sql := format(
            'update public.%I as t set %s from jsonb_populate_record(null::public.%I, $1) as r where t.id = r.id',
            v_table, v_set, v_table);
          if owner_column is null then
            execute v_sql using v_data || jsonb_build_object('id', v_id);
          else
            execute v_sql || format(' and t.%I::text = $2', owner_column)
              using v_data || jsonb_build_object('id', v_id), owner_id;
          end if;
        end if;

      elsif v_op = 'DELETE' then
        v_sql := format(
          'delete from public.%I as t using jsonb_populate_record(null::public.%I, $1) as r where t.id = r.id',
          v_table, v_table);
        if owner_column is null then
          execute v_sql using jsonb_build_object('id', v_id);
        else
          execute v_sql || format(' and t.%I::text = $2', owner_column)
            using jsonb_build_object('id', v_id), owner_id;
        end if;

      else
        raise exception using errcode = '22023',
          message = format('unknown op %L (expected PUT, PATCH or DELETE)', v_entry ->> 'op');
      end if;
    end loop;
  exception when others then
    -- keep the original SQLSTATE/message/detail, name the failing op in the hint
    get stacked diagnostics
      e_state  = returned_sqlstate,
      e_msg    = message_text,
      e_detail = pg_exception_detail,
      e_hint   = pg_exception_hint;
    e_hint := concat_ws('; ', nullif(e_hint, ''),
                format('powersync op %s (%s %s/%s)', v_index,
                       coalesce(v_op, '?'), coalesce(v_table, '?'), coalesce(v_id, '?')));
    if coalesce(e_detail, '') = '' then
      raise exception using errcode = e_state, message = e_msg, hint = e_hint;
    else
      raise exception using errcode = e_state, message = e_msg, detail = e_detail, hint = e_hint;
    end if;
  end;

  return jsonb_build_object('applied', v_index + 1);
end
$$;

comment on function public.powersync_apply_transaction(jsonb, text, text) is
  'PowerSync upload bridge: apply one PowerSync transaction (PUT/PATCH/DELETE ops) atomically.';

revoke all on function public.powersync_apply_transaction(jsonb, text, text) from public;
do $$
begin
  if exists (select 1 from pg_roles where rolname = 'anon') then
    execute 'revoke all on function public.powersync_apply_transaction(jsonb, text, text) from anon';
  end if;
end
$$;
grant execute on function public.powersync_apply_transaction(jsonb, text, text)
  to authenticated, service_role;
