#!/usr/bin/env bash
# `make dev`: the worker on :8787 with both jobs working locally. Supabase is either a
# `supabase start` stack already answering on :54321 (used with the CLI's documented local JWT
# secret and anon key), or PostgreSQL + the PostgREST stand-in started here, with the real
# PowerSync service on :8080 (POWERSYNC_PORT) replicating that database (POWERSYNC=off skips it).
# Ctrl-C stops everything started here.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${DEV_PORT:-8787}
PS_PORT=${POWERSYNC_PORT:-8080}
POWERSYNC=${POWERSYNC:-on}
DEVTOOL=target/debug/devtool
PY=.venv/bin/python
var() { sed -n "s/^$1=//p" .dev.vars | head -1 | sed 's/^"//; s/"$//'; }

# Supabase CLI local defaults (supabase/cli: `supabase status` prints the same values).
CLI_JWT_SECRET=super-secret-jwt-token-with-at-least-32-characters-long
CLI_ANON_KEY=eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJzdXBhYmFzZS1kZW1vIiwicm9sZSI6ImFub24iLCJleHAiOjE5ODM4MTI5OTZ9.CRXP1A7WOeoJeXxjNni43kdQwgnWNReilDMblYTn_I0

secret=$(var SUPABASE_JWT_SECRET)
extra=()
stack_pid=""
cleanup() { [ -n "$stack_pid" ] && kill "$stack_pid" 2>/dev/null && wait "$stack_pid" 2>/dev/null; true; }
trap cleanup EXIT INT TERM

if curl -sf -o /dev/null --max-time 2 http://127.0.0.1:54321/_standin/health; then
  echo "reusing the Supabase stand-in already on :54321"
elif curl -s -o /dev/null --max-time 2 http://127.0.0.1:54321/rest/v1/; then
  echo "using the Supabase CLI stack on :54321 (its local JWT secret and anon key)"
  secret=$CLI_JWT_SECRET
  extra=(--var "SUPABASE_JWT_SECRET:$CLI_JWT_SECRET" --var "SUPABASE_ANON_KEY:$CLI_ANON_KEY")
else
  log=$(mktemp)
  ps_args=()
  if [ "$POWERSYNC" != off ]; then
    ps_args=(--powersync-port "$PS_PORT" --worker-url "http://127.0.0.1:$PORT")
    powersync_started=1
    # The demo schema's columns as the SDK stores them (0/1, JSON text); fatal writes recorded.
    extra+=(--var "POWERSYNC_URL:http://127.0.0.1:$PS_PORT" --var "UPLOAD_BOOLEAN_COLUMNS:todos.completed"
            --var "UPLOAD_JSON_COLUMNS:todos.tags" --var "UPLOAD_DEAD_LETTER_TABLE:powersync_dead_letters")
  fi
  $PY -m tests.support.devstack --port 54321 --jwt-secret "$secret" "${ps_args[@]}" \
      --anon-key "$(var SUPABASE_ANON_KEY)" --service-key "$(var SUPABASE_SERVICE_ROLE_KEY)" >"$log" 2>&1 &
  stack_pid=$!
  for _ in $(seq 1 300); do grep -q "stack ready" "$log" && break; kill -0 $stack_pid 2>/dev/null || break; sleep 0.2; done
  grep -q "stack ready" "$log" || { cat "$log"; echo "the local stack (stand-in, PowerSync service) did not start"; exit 1; }
  grep -v "stack ready" "$log"
fi

token=$($DEVTOOL mint --secret "$secret")
user=$($PY -c "import jwt,sys; print(jwt.decode(sys.argv[1], options={'verify_signature': False})['sub'])" "$token")
list_id=$($PY -c "import uuid; print(uuid.uuid4())")
cat <<MSG

Worker: http://127.0.0.1:$PORT  (a fresh dev session token: $DEVTOOL mint)
  curl -s http://127.0.0.1:$PORT/powersync-token -H "Authorization: Bearer $token"
  curl -s -X POST http://127.0.0.1:$PORT/powersync-upload -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \\
       -d '{"batch":[{"op":"PUT","table":"lists","id":"$list_id","data":{"name":"from curl","owner_id":"$user"}}]}'
  SMOKE_SESSION_TOKEN=$token scripts/smoke.sh http://127.0.0.1:$PORT
MSG
if [ -n "${powersync_started:-}" ]; then cat <<MSG
PowerSync service: http://127.0.0.1:$PS_PORT  (the worker's tokens carry aud = this URL)
  Point an app at it: clients/typescript (README: Local stack), e.g.
    new WorkerConnector({ workerUrl: 'http://127.0.0.1:$PORT', getSessionToken: async () => '<session token>' })
  and db.connect(connector): credentials, sync and uploads all go through the worker.
MSG
elif [ "$POWERSYNC" != off ]; then
  echo "PowerSync service: not started (it replicates only the local stand-in's database; see powersync/README.md)"
fi
cat <<MSG
Ctrl-C stops everything started here.

MSG
node_modules/.bin/wrangler dev --ip 127.0.0.1 --port "$PORT" "${extra[@]}"
