//! Native developer and operator tool: generates PowerSync keys (RSA, P-256 or Ed25519), writes a
//! local `.dev.vars`, mints Supabase-style session tokens for local use and tests, signs with the
//! pure-Rust signer (the reference the worker's WebCrypto signature is compared against), checks
//! a deployment (`doctor`) and lists, shows, replays and discards dead letters (`dead-letters`).
//! The operator commands are pure modules (`doctor`, `dead_letters`) over plain request and
//! answer values; `rest::send` is the only network I/O.
//!
//! Build: `cargo run --features devtool --bin devtool -- <command>`; `help` lists commands.

mod buckets;
mod dead_letters;
mod doctor;
mod dotenv;
mod rest;

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use powersync_supabase_worker::keys::{KeyKind, SigningKey};
use powersync_supabase_worker::storage::settings::StorageMode;
use powersync_supabase_worker::token::RustSigner;
use rand::RngCore;
use serde_json::json;

const HELP: &str = "devtool <command> [--name value ...]
  keygen [--kid KID] [--alg RS256|ES256|EdDSA]
                                new key (default RS256: RSA-2048; ES256: P-256; EdDSA: Ed25519):
                                JSON {kid, private_pem (PKCS#8), private_jwk, public_jwk}
  dev-vars [--supabase-url U] [--powersync-url U]
                                a complete local .dev.vars on stdout (fresh PowerSync key; the Supabase CLI's local JWT secret and keys)
  mint [--secret S] [--sub ID] [--iss I] [--aud A] [--ttl N] [--role R] [--email E] [--iat T]
                                an HS256 Supabase session token (defaults from .dev.vars / env:
                                SUPABASE_JWT_SECRET, SUPABASE_URL); --role anon|service_role
                                mints a legacy project API key instead
  sign --key-file F --input S   base64url signature of S with the key in F (any accepted form;
                                RS256, ES256 or EdDSA as the key says)
  public-jwk --key-file F --kid K  the public JWK of the key in F
  doctor --worker-url URL [--vars FILE] [--tables a,b] [--supabase-url U] [--service-key K]
                                checks a deployment end to end (worker /health and JWKS, session
                                keys, tables, grants, RLS, SQL files, publication; needs
                                sql/doctor.sql); prints each problem with its fix; exit 1 when
                                something would lose or block writes
  dead-letters list [--user ID] [--code C] [--older-than 7d] [--state waiting|replayed|discarded|all] [--limit N] [--json]
  dead-letters show --id N
  dead-letters replay (--id N | --ids 1,2 | --user/--code/--older-than) [--limit N] [--dry-run]
                      [--overwrite-later-writes]
  dead-letters discard (--id N | --ids 1,2 | --user/--code/--older-than) --reason R [--dry-run]
                                over PostgREST with the service key (no database password)
  Settings (--supabase-url, --service-key; the doctor reads all the worker's settings) come from
  --vars FILE (default .dev.vars), then the environment: SUPABASE_URL, SUPABASE_SERVICE_ROLE_KEY.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(command) = args.first() else {
        eprintln!("{HELP}");
        return ExitCode::from(2);
    };
    let (subcommand, options) = match parse_options(command, &args[1..]) {
        Ok(parsed) => parsed,
        Err(message) => {
            eprintln!("devtool: {message}\n{HELP}");
            return ExitCode::from(2);
        }
    };
    match command.as_str() {
        "doctor" => return run_doctor(&options),
        "dead-letters" => return run_dead_letters(subcommand.as_deref().unwrap_or(""), &options),
        _ => {}
    }
    let result = match command.as_str() {
        "keygen" => keygen(&options),
        "dev-vars" => dev_vars(&options),
        "mint" => mint(&options),
        "sign" => sign(&options),
        "public-jwk" => public_jwk(&options),
        _ => Err(HELP.to_string()),
    };
    match result {
        Ok(output) => {
            println!("{output}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("devtool: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The options `command` (with `subcommand`) takes, as [`HELP`] lists them: those with a value,
/// and the flags, which take none.
fn known_options(command: &str, subcommand: Option<&str>) -> (&'static [&'static str], &'static [&'static str]) {
    match (command, subcommand) {
        ("keygen", _) => (&["kid", "alg"], &[]),
        ("dev-vars", _) => (&["supabase-url", "powersync-url"], &[]),
        ("mint", _) => (&["secret", "sub", "iss", "aud", "ttl", "role", "email", "iat"], &[]),
        ("sign", _) => (&["key-file", "input"], &[]),
        ("public-jwk", _) => (&["key-file", "kid"], &[]),
        ("doctor", _) => (&["worker-url", "tables", "vars", "supabase-url", "service-key"], &[]),
        ("dead-letters", Some("list")) => (
            &["id", "ids", "user", "code", "older-than", "state", "limit", "vars", "supabase-url", "service-key"],
            &["json"],
        ),
        ("dead-letters", Some("show")) => (&["id", "vars", "supabase-url", "service-key"], &["json"]),
        ("dead-letters", Some("replay")) => (
            &["id", "ids", "user", "code", "older-than", "limit", "vars", "supabase-url", "service-key"],
            &["dry-run", "json", "overwrite-later-writes"],
        ),
        ("dead-letters", Some("discard")) => (
            &["id", "ids", "user", "code", "older-than", "limit", "reason", "vars", "supabase-url", "service-key"],
            &["dry-run", "json"],
        ),
        _ => (&[], &[]),
    }
}

/// `args` after the command: its subcommand (`dead-letters`) and its options. Refused, so that
/// nothing runs without an option it was given: an option the command does not take (a typo
/// such as `--dryrun` or `--older-then`), an option given twice, one without its value, and a
/// value that is itself an option (`--reason --dry-run`).
fn parse_options(command: &str, args: &[String]) -> Result<(Option<String>, HashMap<String, String>), String> {
    let mut args = args.iter();
    let subcommand = if command == "dead-letters" { args.next().cloned() } else { None };
    let (valued, flags) = known_options(command, subcommand.as_deref());
    let mut options = HashMap::new();
    while let Some(arg) = args.next() {
        let Some(name) = arg.strip_prefix("--") else {
            return Err(format!("unexpected argument {arg}"));
        };
        let value = if flags.contains(&name) {
            "true".to_string()
        } else if valued.contains(&name) {
            match args.next() {
                Some(value) if !value.starts_with("--") => value.clone(),
                _ => return Err(format!("--{name} needs a value")),
            }
        } else {
            return Err(format!(
                "{command}{} takes no option --{name}",
                subcommand.map(|s| format!(" {s}")).unwrap_or_default()
            ));
        };
        if options.insert(name.to_string(), value).is_some() {
            return Err(format!("--{name} is given twice"));
        }
    }
    Ok((subcommand, options))
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

fn new_key() -> Result<SigningKey, String> {
    new_key_of(KeyKind::Rs256)
}

fn new_key_of(kind: KeyKind) -> Result<SigningKey, String> {
    let mut secret = [0u8; 32];
    match kind {
        KeyKind::Rs256 => {
            rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).map(SigningKey::from_rsa).map_err(|e| e.to_string())
        }
        KeyKind::Es256 => loop {
            // A random scalar; the rare values outside the group order are drawn again.
            rand::rngs::OsRng.fill_bytes(&mut secret);
            if let Some(key) = SigningKey::from_p256_bytes(&secret) {
                return Ok(key);
            }
        },
        KeyKind::EdDsa => {
            rand::rngs::OsRng.fill_bytes(&mut secret);
            Ok(SigningKey::from_ed25519_seed(&secret))
        }
    }
}

fn keygen(options: &HashMap<String, String>) -> Result<String, String> {
    let kid = options.get("kid").cloned().unwrap_or_else(|| format!("powersync-{}", random_hex(4)));
    let alg = options.get("alg").map(String::as_str).unwrap_or("RS256");
    let kind = KeyKind::from_alg(alg).ok_or_else(|| format!("--alg must be RS256, ES256 or EdDSA, not '{alg}'"))?;
    let key = new_key_of(kind)?;
    Ok(json!({
        "kid": kid,
        "private_pem": key.pkcs8_pem(),
        "private_jwk": key.private_jwk(&kid),
        "public_jwk": key.public_jwk(&kid),
    })
    .to_string())
}

/// Values from `.dev.vars` in the current directory, then the environment.
fn setting(name: &str) -> Option<String> {
    setting_from(".dev.vars", name)
}

/// Values from the vars file `path` (as wrangler reads `.dev.vars`: [`dotenv::parse`]), then the
/// environment.
fn setting_from(path: &str, name: &str) -> Option<String> {
    if let Ok(text) = std::fs::read_to_string(path) {
        if let Some(value) = dotenv::parse(&text).remove(name) {
            return Some(value);
        }
    }
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn vars_file(options: &HashMap<String, String>) -> String {
    options.get("vars").cloned().unwrap_or_else(|| ".dev.vars".into())
}

/// The Supabase URL and service key of the operator commands.
fn supabase_access(options: &HashMap<String, String>) -> Result<(String, String), String> {
    let vars = vars_file(options);
    let url = options
        .get("supabase-url")
        .cloned()
        .or_else(|| setting_from(&vars, "SUPABASE_URL"))
        .ok_or("no --supabase-url and no SUPABASE_URL")?;
    let key = options
        .get("service-key")
        .cloned()
        .or_else(|| setting_from(&vars, "SUPABASE_SERVICE_ROLE_KEY"))
        .ok_or("no --service-key and no SUPABASE_SERVICE_ROLE_KEY (the service_role or sb_secret_ key)")?;
    Ok((url.trim_end_matches('/').to_string(), key))
}

fn run_doctor(options: &HashMap<String, String>) -> ExitCode {
    match doctor_findings(options) {
        Ok(findings) => {
            let (text, code) = doctor::report(&findings);
            println!("{text}");
            ExitCode::from(code)
        }
        Err(message) => {
            eprintln!("devtool doctor: {message}");
            ExitCode::from(2)
        }
    }
}

/// Whether `secret` signed every API key that is a JWT (None: no key is a JWT).
fn secret_signs_keys(secret: &str, keys: &[String]) -> Option<bool> {
    let jwts: Vec<&String> = keys.iter().filter(|k| k.split('.').count() == 3).collect();
    if jwts.is_empty() {
        return None;
    }
    let mut validation = jsonwebtoken::Validation::new(Algorithm::HS256);
    validation.validate_exp = false;
    validation.required_spec_claims.clear();
    validation.validate_aud = false;
    let key = jsonwebtoken::DecodingKey::from_secret(secret.as_bytes());
    Some(jwts.iter().all(|k| jsonwebtoken::decode::<serde_json::Value>(k, &key, &validation).is_ok()))
}

fn doctor_findings(options: &HashMap<String, String>) -> Result<Vec<doctor::Finding>, String> {
    let worker_url = options
        .get("worker-url")
        .ok_or("--worker-url is required (the deployed worker, e.g. https://name.account.workers.dev)")?;
    let worker_url = worker_url.trim_end_matches('/');
    let vars = vars_file(options);
    let lookup = |name: &str| match name {
        "SUPABASE_URL" => options.get("supabase-url").cloned().or_else(|| setting_from(&vars, name)),
        _ => setting_from(&vars, name),
    };
    let config = powersync_supabase_worker::config::Config::from_lookup(&lookup);
    let (supabase_url, service_key) = supabase_access(options)?;
    let mut findings = vec![];
    for problem in &config.problems {
        findings.push(doctor::Finding {
            severity: doctor::Severity::Blocking,
            problem: format!("setting {} (from {vars} / the environment): {}", problem.name, problem.message),
            fix: "correct it here and in the deployed worker".into(),
        });
    }
    findings.extend(doctor::check_health(worker_url, &rest::send(&rest::get(&format!("{worker_url}/health")))));
    let kid = lookup("POWERSYNC_KEY_ID");
    findings.extend(doctor::check_worker_jwks(
        worker_url,
        &rest::send(&rest::get(&format!("{worker_url}/.well-known/jwks.json"))),
        kid.as_deref(),
    ));
    if let Ok(session) = &config.session {
        let jwks = rest::send(&rest::get(&session.jwks_url));
        let signs = session.jwt_secret.as_deref().and_then(|secret| {
            let keys: Vec<String> =
                ["SUPABASE_ANON_KEY", "SUPABASE_SERVICE_ROLE_KEY"].iter().filter_map(|n| lookup(n)).collect();
            secret_signs_keys(secret, &keys)
        });
        findings.extend(doctor::check_session_keys(&session.jwks_url, &jwks, session.jwt_secret.is_some(), signs));
    }
    let tables: Vec<String> = options
        .get("tables")
        .map(|t| t.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
        .unwrap_or_default();
    // invalid upload settings are reported above with the other settings
    if let Ok(upload) = &config.upload {
        if upload.tables.is_none() && tables.is_empty() {
            findings.push(doctor::Finding {
                severity: doctor::Severity::Warning,
                problem: "no UPLOAD_TABLES and no --tables: the uploaded tables' grants and RLS are not checked".into(),
                fix: "pass --tables a,b (the tables your clients upload to), or set UPLOAD_TABLES".into(),
            });
        }
        let expected = doctor::expectations(upload, &tables);
        let answer = rest::send(&doctor::catalog_request(&supabase_url, &service_key, &expected));
        findings.extend(doctor::check_catalog(&expected, &answer, &supabase_url));
    }
    // the files' buckets, when STORAGE_BUCKETS names them (invalid file settings are reported above)
    if let Ok(storage) = &config.storage {
        // (the file settings have defaults: only STORAGE_BUCKETS says that files are in use)
        if storage.mode == StorageMode::Rls && storage.buckets.is_some() {
            let answer = rest::send(&buckets::object_policies_request(&supabase_url, &service_key));
            findings.extend(buckets::check_object_policies(&answer));
        }
        for (name, rules) in storage.buckets.iter().flatten() {
            let answer = rest::send(&buckets::bucket_request(&storage.storage_url, name, &service_key));
            findings.extend(buckets::check_bucket(name, rules, storage.mode, &answer, &storage.storage_url));
        }
    }
    Ok(findings)
}

fn run_dead_letters(subcommand: &str, options: &HashMap<String, String>) -> ExitCode {
    match dead_letters_command(subcommand, options) {
        Ok((output, ok)) => {
            println!("{output}");
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(message) => {
            eprintln!("devtool dead-letters: {message}");
            ExitCode::FAILURE
        }
    }
}

fn selection(options: &HashMap<String, String>) -> Result<dead_letters::Selection, String> {
    let mut ids = match options.get("ids") {
        Some(ids) => dead_letters::parse_ids(ids)?,
        None => vec![],
    };
    if let Some(id) = options.get("id") {
        ids.extend(dead_letters::parse_ids(id)?);
    }
    Ok(dead_letters::Selection {
        ids,
        user: options.get("user").cloned(),
        code: options.get("code").cloned(),
        older_than_seconds: options.get("older-than").map(|a| dead_letters::parse_age(a)).transpose()?,
        state: options.get("state").map(|s| dead_letters::State::parse(s)).transpose()?.unwrap_or_default(),
        before_id: None,
        limit: options
            .get("limit")
            .map(|l| l.parse::<u32>().map_err(|_| "--limit must be a number"))
            .transpose()?
            .unwrap_or(100),
    })
}

fn fetch_rows(url: &str, key: &str, selection: &dead_letters::Selection) -> Result<Vec<serde_json::Value>, String> {
    dead_letters::rows(&rest::send(&dead_letters::list_request(url, key, selection, now() as i64)))
}

/// The id of the oldest dead letter of `row`'s user recorded before it and still waiting (not
/// replayed, not discarded), if any, as the database holds it now; not a record of code
/// `unchanged` (its transaction was applied, in order: it holds no writes this one's would go
/// before). Among the first 100: the replay function refuses for one further back anyway.
fn earlier_waiting(url: &str, key: &str, row: &serde_json::Value) -> Result<Option<i64>, String> {
    let earlier = dead_letters::Selection {
        user: Some(row["user_id"].as_str().unwrap_or_default().to_string()),
        before_id: row["id"].as_i64(),
        limit: 100,
        ..Default::default()
    };
    Ok(fetch_rows(url, key, &earlier)?.iter().find(|r| r["code"] != json!("unchanged")).and_then(|r| r["id"].as_i64()))
}

/// The output and whether everything asked was done.
fn dead_letters_command(subcommand: &str, options: &HashMap<String, String>) -> Result<(String, bool), String> {
    let (url, key) = supabase_access(options)?;
    let json_out = options.contains_key("json");
    let dry_run = options.contains_key("dry-run");
    let selection = selection(options)?;
    match subcommand {
        "list" => {
            let rows = fetch_rows(&url, &key, &selection)?;
            Ok((
                if json_out { serde_json::Value::Array(rows).to_string() } else { dead_letters::format_list(&rows) },
                true,
            ))
        }
        "show" => {
            let id = *selection.ids.first().ok_or("--id is required")?;
            let rows = dead_letters::rows(&rest::send(&dead_letters::show_request(&url, &key, id)))?;
            let row = rows.into_iter().next().ok_or_else(|| format!("no dead letter with id {id}"))?;
            Ok((serde_json::to_string_pretty(&row).map_err(|e| e.to_string())?, true))
        }
        "replay" | "discard" => {
            let reason = options.get("reason").cloned().unwrap_or_default();
            if subcommand == "discard" && reason.trim().is_empty() {
                return Err("--reason is required (it is kept with the dead letter)".into());
            }
            if selection.ids.is_empty()
                && selection.user.is_none()
                && selection.code.is_none()
                && selection.older_than_seconds.is_none()
            {
                return Err(format!(
                    "{subcommand} what? give --id N, --ids 1,2, or a selection (--user, --code, --older-than)"
                ));
            }
            // The operator's word to go over a user's later writes is given for one letter, whose
            // rows they looked at (--dry-run), never for a whole selection.
            if options.contains_key("overwrite-later-writes")
                && (selection.ids.len() != 1 || options.contains_key("ids"))
            {
                return Err(
                    "--overwrite-later-writes is for one dead letter whose rows you checked: give --id N".into()
                );
            }
            // only dead letters still waiting (the functions refuse the others anyway)
            let waiting = dead_letters::Selection { state: dead_letters::State::Waiting, ..selection.clone() };
            let rows = fetch_rows(&url, &key, &waiting)?;
            let mut outcomes = vec![];
            let mut all_ok = true;
            if rows.is_empty() {
                all_ok = selection.ids.is_empty();
            }
            for id in &selection.ids {
                if !rows.iter().any(|r| r["id"] == json!(id)) {
                    all_ok = false;
                    outcomes.push(json!({"dead_letter_id": id, "error": {"message": "no waiting dead letter with this id (unknown, replayed or discarded)"}}));
                }
            }
            for row in &rows {
                let id = row["id"].as_i64().unwrap_or_default();
                if dry_run {
                    let mut would =
                        json!({"dead_letter_id": id, "dry_run": true, "user_id": row["user_id"], "code": row["code"]});
                    if subcommand == "replay" {
                        let full = dead_letters::rows(&rest::send(&dead_letters::show_request(&url, &key, id)))?;
                        let mut pending = full.first().map(dead_letters::pending_entries).unwrap_or_default();
                        // each entry's row as it stands now: what the replay would write over
                        let reads = dead_letters::current_row_requests(&url, &key, &pending);
                        for (entry, read) in pending.iter_mut().zip(reads) {
                            if let Some(read) = read {
                                let answer = rest::send(&read);
                                entry["current"] = match answer.json() {
                                    Some(serde_json::Value::Array(rows)) if answer.status == 200 => {
                                        rows.into_iter().next().unwrap_or(serde_json::Value::Null)
                                    }
                                    _ => json!({"error": answer.describe()}),
                                };
                            }
                        }
                        would["would_apply"] = json!(pending);
                        // a real run replays this one only once that one is replayed (see below)
                        if let Some(earlier) = earlier_waiting(&url, &key, row)? {
                            would["earlier_waiting"] = json!(earlier);
                        }
                    } else {
                        would["would_discard_with_reason"] = json!(reason);
                    }
                    outcomes.push(would);
                    continue;
                }
                let earlier = match (subcommand == "replay").then(|| earlier_waiting(&url, &key, row)).transpose() {
                    Ok(earlier) => earlier.flatten(),
                    Err(message) => {
                        // not replayed; what this run did already is still reported
                        all_ok = false;
                        outcomes.push(json!({"dead_letter_id": id, "error": {"message": message}}));
                        continue;
                    }
                };
                if let Some(earlier) = earlier {
                    // Replayed now, this one's writes would land before the earlier one's, which
                    // the user made first (its replay, once its cause is fixed, would then
                    // overwrite them): it waits for that one, in this run or not.
                    all_ok = false;
                    outcomes.push(json!({"dead_letter_id": id, "replayed": false, "skipped": true,
                        "reason": format!("dead letter {earlier} of the same user, recorded before this one, is still \
                                           waiting: replay that one first (or discard it), then this one")}));
                    continue;
                }
                let request = if subcommand == "replay" {
                    dead_letters::replay_request(&url, &key, id, options.contains_key("overwrite-later-writes"))
                } else {
                    dead_letters::discard_request(&url, &key, id, &reason)
                };
                let (ok, answer) = dead_letters::outcome(id, &rest::send(&request));
                all_ok &= ok;
                outcomes.push(answer);
            }
            if selection.ids.is_empty() && waiting.may_have_more(rows.len()) {
                // Rows past the limit were not fetched: "everything asked" is not done yet. A
                // second run fetches the oldest waiting ones again: it gets further only when
                // this page left none of them waiting.
                let next = match dry_run || !all_ok {
                    true => "give a larger --limit, or narrow the selection",
                    false => "run the command again (or give a larger --limit)",
                };
                all_ok = false;
                outcomes.push(json!({"more": true, "message": format!(
                    "the selection may match more than these {}: {next}",
                    rows.len()
                )}));
            }
            let text = if json_out {
                serde_json::Value::Array(outcomes).to_string()
            } else {
                let mut lines: Vec<String> = outcomes.iter().map(|o| o.to_string()).collect();
                lines.push(format!(
                    "{} dead letter(s){}",
                    rows.len(),
                    if dry_run { " (dry run: nothing changed)" } else { "" }
                ));
                lines.join("\n")
            };
            Ok((text, all_ok))
        }
        _ => Err(format!("unknown dead-letters command '{subcommand}'\n{HELP}")),
    }
}

fn hs256(claims: &serde_json::Value, secret: &str) -> Result<String, String> {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret.as_bytes()))
        .map_err(|e| e.to_string())
}

/// The Supabase CLI's local defaults (public, local development only).
const CLI_JWT_SECRET: &str = "super-secret-jwt-token-with-at-least-32-characters-long";
const CLI_ANON_KEY: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJzdXBhYmFzZS1kZW1vIiwicm9sZSI6ImFub24iLCJleHAiOjE5ODM4MTI5OTZ9.CRXP1A7WOeoJeXxjNni43kdQwgnWNReilDMblYTn_I0";
const CLI_SERVICE_ROLE_KEY: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJzdXBhYmFzZS1kZW1vIiwicm9sZSI6InNlcnZpY2Vfcm9sZSIsImV4cCI6MTk4MzgxMjk5Nn0.EGIM96RAZx35lJzdJsyH-qQwv8Hdp7fsn3W0YpN81IU";

fn dev_vars(options: &HashMap<String, String>) -> Result<String, String> {
    let supabase_url = options.get("supabase-url").cloned().unwrap_or_else(|| "http://127.0.0.1:54321".into());
    let powersync_url = options.get("powersync-url").cloned().unwrap_or_else(|| "http://127.0.0.1:8080".into());
    // The Supabase CLI's documented local JWT secret and keys (`supabase status` prints them):
    // the same .dev.vars then serves the local stand-in and a `supabase start` stack, so
    // `make dev` never has to override it (a value in .dev.vars wins over make dev's own).
    let secret = CLI_JWT_SECRET;
    let (anon, service) = (CLI_ANON_KEY, CLI_SERVICE_ROLE_KEY);
    let kid = format!("dev-{}", random_hex(4));
    let key = new_key()?;
    Ok(format!(
        "# Local development only (generated by `devtool dev-vars`; never commit).\n\
         SUPABASE_URL={supabase_url}\n\
         SUPABASE_JWT_SECRET={secret}\n\
         SUPABASE_ANON_KEY={anon}\n\
         SUPABASE_SERVICE_ROLE_KEY={service}\n\
         POWERSYNC_URL={powersync_url}\n\
         POWERSYNC_KEY_ID={kid}\n\
         POWERSYNC_PRIVATE_KEY=\"{}\"",
        key.pkcs8_pem().trim_end().replace('\n', "\\n")
    ))
}

fn mint(options: &HashMap<String, String>) -> Result<String, String> {
    let secret = options
        .get("secret")
        .cloned()
        .or_else(|| setting("SUPABASE_JWT_SECRET"))
        .ok_or("no --secret and no SUPABASE_JWT_SECRET")?;
    let role = options.get("role").cloned().unwrap_or_else(|| "authenticated".into());
    let iat = match options.get("iat") {
        Some(t) => t.parse::<u64>().map_err(|_| "--iat must be a number")?,
        None => now(),
    };
    let ttl: i64 =
        options.get("ttl").map(|t| t.parse().map_err(|_| "--ttl must be a number")).transpose()?.unwrap_or(3600);
    let exp = (iat as i64 + ttl).max(0);
    if role == "anon" || role == "service_role" {
        return hs256(&json!({"iss": "supabase", "ref": "local", "role": role, "iat": iat, "exp": exp}), &secret);
    }
    let url = setting("SUPABASE_URL").unwrap_or_else(|| "http://127.0.0.1:54321".into());
    let iss = options.get("iss").cloned().unwrap_or_else(|| format!("{}/auth/v1", url.trim_end_matches('/')));
    let sub = options.get("sub").cloned().unwrap_or_else(|| "00000000-0000-4000-8000-000000000001".into());
    let aud = options.get("aud").cloned().unwrap_or_else(|| "authenticated".into());
    let email = options.get("email").cloned().unwrap_or_else(|| "dev@example.com".into());
    hs256(
        &json!({"iss": iss, "aud": aud, "sub": sub, "role": role, "email": email, "iat": iat, "exp": exp,
                "session_id": random_hex(8), "aal": "aal1", "is_anonymous": false}),
        &secret,
    )
}

fn key_from_file(options: &HashMap<String, String>) -> Result<SigningKey, String> {
    let path = options.get("key-file").ok_or("--key-file is required")?;
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    SigningKey::parse(&text).map_err(|e| e.reason())
}

fn sign(options: &HashMap<String, String>) -> Result<String, String> {
    let key = key_from_file(options)?;
    let input = options.get("input").ok_or("--input is required")?;
    RustSigner::sign_now(&key, input.as_bytes())
}

fn public_jwk(options: &HashMap<String, String>) -> Result<String, String> {
    let kid = options.get("kid").ok_or("--kid is required")?;
    serde_json::to_string(&key_from_file(options)?.public_jwk(kid)).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(command: &str, args: &[&str]) -> Result<(Option<String>, HashMap<String, String>), String> {
        parse_options(command, &args.iter().map(|a| a.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn options_are_those_the_command_takes_each_once_with_its_value() {
        let (sub, options) =
            parse("dead-letters", &["discard", "--user", "u1", "--reason", "typo", "--dry-run"]).expect("valid");
        assert_eq!(sub.as_deref(), Some("discard"));
        assert_eq!(options.get("user").map(String::as_str), Some("u1"));
        assert_eq!(options.get("dry-run").map(String::as_str), Some("true"));
        // a typo must not run the command without the option it meant
        for (command, args, error) in [
            ("dead-letters", &["discard", "--user", "u", "--reason", "r", "--dryrun"][..], "takes no option --dryrun"),
            ("dead-letters", &["replay", "--user", "u", "--older-then", "30d"], "takes no option --older-then"),
            ("dead-letters", &["discard", "--id", "1", "--reason", "--dry-run"], "--reason needs a value"),
            ("dead-letters", &["replay", "--id"], "--id needs a value"),
            ("dead-letters", &["replay", "--id", "1", "--id", "2"], "--id is given twice"),
            ("dead-letters", &["list", "--reason", "r"], "takes no option --reason"),
            ("doctor", &["--worker-url", "u", "stray"], "unexpected argument stray"),
            ("mint", &["--dry-run"], "mint takes no option --dry-run"),
        ] {
            let refused = parse(command, args).expect_err(&format!("{args:?}"));
            assert!(refused.contains(error), "{args:?}: {refused}");
        }
    }

    #[test]
    fn settings_come_from_the_vars_file_as_wrangler_reads_it_then_the_environment() {
        let path = std::env::temp_dir().join(format!("devtool-vars-{}", std::process::id()));
        std::fs::write(&path, "export SUPABASE_URL='http://127.0.0.1:54321' # local\nSUPABASE_ANON_KEY=\n").unwrap();
        let path = path.to_str().unwrap();
        assert_eq!(setting_from(path, "SUPABASE_URL").as_deref(), Some("http://127.0.0.1:54321"));
        // set in the file, even blank: the file's value (wrangler gives the worker that one)
        assert_eq!(setting_from(path, "SUPABASE_ANON_KEY").as_deref(), Some(""));
        // not in the file: the environment's (PATH is set wherever tests run)
        assert_eq!(setting_from(path, "PATH"), std::env::var("PATH").ok());
        std::fs::remove_file(path).unwrap();
    }
}
