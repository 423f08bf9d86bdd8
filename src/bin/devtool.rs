//! Native developer tool: generates PowerSync keys (RSA, P-256 or Ed25519), writes a local
//! `.dev.vars`, mints Supabase-style session tokens for local use and tests, and signs with the
//! pure-Rust signer (the reference the worker's WebCrypto signature is compared against).
//!
//! Build: `cargo run --features devtool --bin devtool -- <command>`; `help` lists commands.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use powersync_supabase_worker::keys::{KeyKind, SigningKey};
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
  public-jwk --key-file F --kid K  the public JWK of the key in F";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(command) = args.first() else {
        eprintln!("{HELP}");
        return ExitCode::from(2);
    };
    let mut options = HashMap::new();
    let mut rest = args[1..].iter();
    while let Some(name) = rest.next() {
        let Some(name) = name.strip_prefix("--") else {
            eprintln!("unexpected argument {name}\n{HELP}");
            return ExitCode::from(2);
        };
        options.insert(name.to_string(), rest.next().cloned().unwrap_or_default());
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
        KeyKind::Rs256 => rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).map(SigningKey::from_rsa).map_err(|e| e.to_string()),
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
    if let Ok(text) = std::fs::read_to_string(".dev.vars") {
        for line in text.lines() {
            if let Some((key, value)) = line.split_once('=') {
                if key.trim() == name {
                    return Some(value.trim().trim_matches('"').to_string());
                }
            }
        }
    }
    std::env::var(name).ok()
}

fn hs256(claims: &serde_json::Value, secret: &str) -> Result<String, String> {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret.as_bytes())).map_err(|e| e.to_string())
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
    let secret = options.get("secret").cloned().or_else(|| setting("SUPABASE_JWT_SECRET")).ok_or("no --secret and no SUPABASE_JWT_SECRET")?;
    let role = options.get("role").cloned().unwrap_or_else(|| "authenticated".into());
    let iat = match options.get("iat") {
        Some(t) => t.parse::<u64>().map_err(|_| "--iat must be a number")?,
        None => now(),
    };
    let ttl: i64 = options.get("ttl").map(|t| t.parse().map_err(|_| "--ttl must be a number")).transpose()?.unwrap_or(3600);
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
