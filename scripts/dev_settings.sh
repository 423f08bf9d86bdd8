# The settings `make dev` gives the worker itself (sourced by scripts/dev.sh; tests source it too).
# A value set in .dev.vars always wins: `wrangler dev --var` would override it, so a setting is
# passed with --var only when .dev.vars does not set it. Every value set here is printed
# (NAME=value; secrets are not shown), and so is every one left to .dev.vars.

# .dev.vars's value of NAME (dotenv: `NAME=value`, optional `export`, quotes), empty when unset or
# blank (the worker reads a blank value as unset).
var() {
  [ -f .dev.vars ] || return 0
  sed -nE "s/^[[:space:]]*(export[[:space:]]+)?$1[[:space:]]*=[[:space:]]*//p" .dev.vars | head -1 |
    sed -E "s/[[:space:]]+\$//; s/^\"(.*)\"\$/\\1/; s/^'(.*)'\$/\\1/"
}

# The --var arguments for wrangler dev.
dev_vars=()

# setting NAME VALUE [secret]: gives the worker NAME=VALUE unless .dev.vars sets NAME.
setting() {
  if [ -n "$(var "$1")" ]; then
    echo "  $1: .dev.vars's value"
    return
  fi
  dev_vars+=(--var "$1:$2")
  if [ "${3:-}" = secret ]; then echo "  $1=(secret, not shown)"; else echo "  $1=$2"; fi
}

# Whether table $1 may be written under .dev.vars's UPLOAD_TABLES (unset: every table).
upload_table() {
  local tables
  tables=$(var UPLOAD_TABLES | tr -d '[:space:]')
  [ -z "$tables" ] || [[ ",$tables," == *",$1,"* ]]
}

# The demo schema's settings (tests/sql/test_schema.sql, sql/dead_letter.sql): the SDK stores
# booleans as 0/1 and arrays as JSON text; rejected transactions are recorded. The worker refuses
# a conversion for a table outside UPLOAD_TABLES, and a dead-letter table inside it (a
# configuration problem: every upload would answer 500 upload_not_configured), so with
# UPLOAD_TABLES in .dev.vars those are left out here.
demo_settings() {
  local name column
  for name in UPLOAD_BOOLEAN_COLUMNS:todos.completed UPLOAD_JSON_COLUMNS:todos.tags; do
    column=${name#*:}
    name=${name%%:*}
    if [ -z "$(var "$name")" ] && ! upload_table "${column%%.*}"; then
      echo "  $name: not set (${column%%.*} is not in .dev.vars's UPLOAD_TABLES)"
    else
      setting "$name" "$column"
    fi
  done
  if [ -z "$(var UPLOAD_DEAD_LETTER_TABLE)" ] && [ -n "$(var UPLOAD_TABLES)" ] && upload_table powersync_dead_letters; then
    echo "  UPLOAD_DEAD_LETTER_TABLE: not set (powersync_dead_letters is in .dev.vars's UPLOAD_TABLES)"
  else
    setting UPLOAD_DEAD_LETTER_TABLE powersync_dead_letters
  fi
}
