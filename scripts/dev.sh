#!/usr/bin/env bash
# `make dev`: the worker on :8787 with both jobs working locally. Supabase is either a
# `supabase start` stack already answering on :54321 (SUPABASE_PORT; used with the CLI's
# documented local JWT secret and anon key), or PostgreSQL + the PostgREST stand-in started here,
# with the real PowerSync service on :8080 (POWERSYNC_PORT) replicating that database
# (POWERSYNC=off skips it), the real Supabase Storage server on :5000 (STORAGE_PORT; STORAGE=off
# skips it) for the file endpoints, and the web demo (examples/web, Vite on :5173 = WEB_PORT;
# WEB=off skips it) whose printed address opens signed in with a fresh dev session. The settings it
# gives the worker itself are printed; a value set in .dev.vars always wins over them
# (scripts/dev_settings.sh). Ctrl-C stops everything started here.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${DEV_PORT:-8787}
PS_PORT=${POWERSYNC_PORT:-8080}
SB_PORT=${SUPABASE_PORT:-54321}
POWERSYNC=${POWERSYNC:-on}
STORAGE=${STORAGE:-on}
ST_PORT=${STORAGE_PORT:-5000}
WEB=${WEB:-on}
WEB_PORT=${WEB_PORT:-5173}
DEVTOOL=target/debug/devtool
PY=.venv/bin/python
source scripts/dev_settings.sh

# Supabase CLI local defaults (supabase/cli: `supabase status` prints the same values).
CLI_JWT_SECRET=super-secret-jwt-token-with-at-least-32-characters-long
CLI_ANON_KEY=eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJzdXBhYmFzZS1kZW1vIiwicm9sZSI6ImFub24iLCJleHAiOjE5ODM4MTI5OTZ9.CRXP1A7WOeoJeXxjNni43kdQwgnWNReilDMblYTn_I0

secret=$(var SUPABASE_JWT_SECRET)
stack_pid=""
web_pid=""
settings=$(mktemp)
cleanup() {
  rm -f "$settings"
  [ -n "$web_pid" ] && kill "$web_pid" 2>/dev/null && wait "$web_pid" 2>/dev/null
  [ -n "$stack_pid" ] && kill "$stack_pid" 2>/dev/null && wait "$stack_pid" 2>/dev/null
  true
}
trap cleanup EXIT INT TERM

if curl -sf -o /dev/null --max-time 2 "http://127.0.0.1:$SB_PORT/_standin/health"; then
  echo "reusing the Supabase stand-in already on :$SB_PORT"
  demo_settings >>"$settings"
elif curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$SB_PORT/rest/v1/"; then
  echo "using the Supabase CLI stack on :$SB_PORT (its local JWT secret and anon key)"
  if [ -n "$secret" ] && [ "$secret" != "$CLI_JWT_SECRET" ]; then
    echo "  note: .dev.vars's SUPABASE_JWT_SECRET is not the Supabase CLI's default local secret:" \
         "this stack's sessions verify only if its config sets the same one (remove the line to use the CLI's)" >>"$settings"
  fi
  secret=${secret:-$CLI_JWT_SECRET}
  setting SUPABASE_JWT_SECRET "$CLI_JWT_SECRET" secret >>"$settings"
  setting SUPABASE_ANON_KEY "$CLI_ANON_KEY" secret >>"$settings"
else
  log=$(mktemp)
  ps_args=()
  if [ "$POWERSYNC" != off ]; then
    ps_args=(--powersync-port "$PS_PORT" --worker-url "http://127.0.0.1:$PORT")
    powersync_started=1
  fi
  if [ "$STORAGE" != off ]; then
    ps_args+=(--storage-port "$ST_PORT")
    storage_started=1
  fi
  $PY -m tests.support.devstack --port "$SB_PORT" --jwt-secret "$secret" "${ps_args[@]}" \
      --anon-key "$(var SUPABASE_ANON_KEY)" --service-key "$(var SUPABASE_SERVICE_ROLE_KEY)" >"$log" 2>&1 &
  stack_pid=$!
  for _ in $(seq 1 900); do grep -q "stack ready" "$log" && break; kill -0 $stack_pid 2>/dev/null || break; sleep 0.2; done
  grep -q "stack ready" "$log" || { cat "$log"; echo "the local stack (stand-in, PowerSync service) did not start"; exit 1; }
  grep -v "stack ready" "$log"
  demo_settings >>"$settings"
fi
# The PowerSync token's aud: the service started here (its URL is its audience).
mine=$(var POWERSYNC_URL)
if [ -n "${powersync_started:-}" ] && [ -n "$mine" ] && [ "$mine" != "http://127.0.0.1:$PS_PORT" ]; then
  echo "  note: .dev.vars's POWERSYNC_URL is not the PowerSync service started here" \
       "(http://127.0.0.1:$PS_PORT): that service refuses tokens whose aud is another URL" >>"$settings"
fi
setting POWERSYNC_URL "http://127.0.0.1:$PS_PORT" >>"$settings"
[ -n "${storage_started:-}" ] && setting STORAGE_URL "http://127.0.0.1:$ST_PORT" >>"$settings"
# `setting` ran in this shell (its output appended to a file), so dev_vars holds its --var list.

# iss from .dev.vars's SUPABASE_URL, which devtool reads as wrangler does.
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
  Point an app at it: clients/typescript (README.md, "The local stack"), e.g.
    new WorkerConnector({ workerUrl: 'http://127.0.0.1:$PORT', getSessionToken: async () => '<session token>' })
  and db.connect(connector): credentials, sync and uploads all go through the worker.
MSG
elif [ "$POWERSYNC" != off ]; then
  echo "PowerSync service: not started (it replicates only the local stand-in's database; see powersync/README.md)"
fi
if [ -n "${storage_started:-}" ]; then cat <<MSG
Supabase Storage: http://127.0.0.1:$ST_PORT  (bucket attachments; each user may use the folder named after their id; docs/files.md)
  url=\$(curl -s -X POST http://127.0.0.1:$PORT/powersync-files/upload -H "Authorization: Bearer $token" \\
        -d '{"files":[{"bucket":"attachments","path":"$user/hello.txt","content_type":"text/plain","size":6}]}' | $PY -c 'import json,sys; print(json.load(sys.stdin)["files"][0]["url"])')
  curl -s -X PUT "\$url" -H 'Content-Type: text/plain' --data-binary 'hello!'
  curl -s -X POST http://127.0.0.1:$PORT/powersync-files/download -H "Authorization: Bearer $token" \\
       -d '{"files":[{"bucket":"attachments","path":"$user/hello.txt"}]}'     # then GET the url it answers
MSG
fi
if [ "$WEB" != off ]; then
  # The web demo (docs/web.md), served by Vite from its own origin: the worker's CORS applies.
  # The session token rides in the address's #fragment (never sent to a server).
  web_log=$(mktemp)
  (cd examples/web && exec node node_modules/vite/bin/vite.js --port "$WEB_PORT" --strictPort) >"$web_log" 2>&1 &
  web_pid=$!
  worker_param=$($PY -c "import urllib.parse,sys; print(urllib.parse.quote(sys.argv[1], safe=''))" "http://127.0.0.1:$PORT")
  cat <<MSG
Web demo: http://127.0.0.1:$WEB_PORT/?worker=$worker_param#session=$token
  (a to-do list with @powersync/web and the connector, signed in as $user; docs/web.md; WEB=off skips it;
   Vite's log: $web_log)
MSG
fi
cat <<MSG

Settings make dev gives the worker (a value set in .dev.vars wins):
$(cat "$settings")
Ctrl-C stops everything started here.

MSG
inspector=()
[ -n "${DEV_INSPECTOR_PORT:-}" ] && inspector=(--inspector-port "$DEV_INSPECTOR_PORT")
# Configuration problems (every one, by name) as soon as the worker answers.
report_health() {
  local health
  for _ in $(seq 1 600); do
    if health=$(curl -s --max-time 2 "http://127.0.0.1:$PORT/health") && [ -n "$health" ]; then
      $PY -c '
import json, sys
health = json.loads(sys.argv[1])
problems = [p for part in ("session", "powersync", "upload", "files", "worker") for p in health.get(part, {}).get("problems", [])]
for p in problems:
    print("configuration problem: " + p["name"] + " " + p["message"])
print("worker ready" + ("" if problems else ": configuration complete"))
' "$health" || true
      return
    fi
    sleep 0.2
  done
}
report_health &
node_modules/.bin/wrangler dev --ip 127.0.0.1 --port "$PORT" "${inspector[@]}" "${dev_vars[@]}"
