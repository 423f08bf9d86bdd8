//! Configuration: every environment variable and secret, parsed once into typed settings.
//!
//! Each part (session verification, PowerSync token, upload bridge, CORS) is parsed on its own,
//! so one missing part does not stop the others, and every missing or invalid value is reported
//! at once ([`Config::problems`]). A problem may quote the value it finds wrong, less anything
//! shaped like a secret ([`crate::environment::Problem::new`]).

use crate::api_keys;
use crate::environment::is_loopback;
use crate::keys::{self, KeyError, PublicJwk, SigningKey};
use crate::session::third_party::Provider;
use crate::session::SessionSettings;
use crate::storage::settings::StorageSettings;
use crate::token::{TokenSettings, DEFAULT_TTL_SECONDS, MAX_TTL_SECONDS, MIN_TTL_SECONDS, RESERVED_CLAIMS};
use crate::upload::settings::UploadSettings;

pub use crate::environment::{Problem, Reader};

/// Every name the worker reads, for the adapter's environment lookup and the docs.
pub const NAMES: &[&str] = &[
    "SUPABASE_URL",
    "SUPABASE_JWT_SECRET",
    "SUPABASE_JWKS_URL",
    "SUPABASE_JWT_ISSUER",
    "SUPABASE_JWT_AUDIENCE",
    "SUPABASE_JWT_LEEWAY_SECONDS",
    "SUPABASE_JWKS_CACHE_SECONDS",
    "SUPABASE_ANON_KEY",
    "SUPABASE_SERVICE_ROLE_KEY",
    "SUPABASE_VERIFY_SESSION_REMOTE",
    "THIRD_PARTY_FIREBASE_PROJECT_ID",
    "THIRD_PARTY_FIREBASE_JWKS_URL",
    "THIRD_PARTY_AUTH0_TENANT",
    "THIRD_PARTY_AUTH0_TENANT_REGION",
    "THIRD_PARTY_AUTH0_JWKS_URL",
    "THIRD_PARTY_AWS_COGNITO_USER_POOL_ID",
    "THIRD_PARTY_AWS_COGNITO_USER_POOL_REGION",
    "THIRD_PARTY_AWS_COGNITO_JWKS_URL",
    "THIRD_PARTY_CLERK_DOMAIN",
    "THIRD_PARTY_CLERK_JWKS_URL",
    "THIRD_PARTY_WORKOS_ISSUER_URL",
    "THIRD_PARTY_WORKOS_JWKS_URL",
    "THIRD_PARTY_OIDC_ISSUER",
    "THIRD_PARTY_OIDC_AUDIENCE",
    "THIRD_PARTY_OIDC_DANGEROUSLY_ACCEPT_ANY_AUDIENCE",
    "THIRD_PARTY_OIDC_JWKS_URL",
    "THIRD_PARTY_ALLOW_MISSING_ROLE",
    "POWERSYNC_URL",
    "POWERSYNC_KEY_ID",
    "POWERSYNC_PRIVATE_KEY",
    "POWERSYNC_TOKEN_TTL_SECONDS",
    "POWERSYNC_TOKEN_OUTLIVES_SESSION",
    "POWERSYNC_TOKEN_ISSUER",
    "POWERSYNC_COPY_CLAIMS",
    COPY_USER_METADATA,
    "POWERSYNC_PREVIOUS_PUBLIC_KEYS",
    "CORS_ALLOWED_ORIGINS",
    "UPSTREAM_TIMEOUT_MS",
    "UPLOAD_MODE",
    "UPLOAD_TABLES",
    "UPLOAD_JSON_COLUMNS",
    "UPLOAD_BOOLEAN_COLUMNS",
    "UPLOAD_OWNER_COLUMN",
    "UPLOAD_ATOMIC",
    "UPLOAD_ATOMIC_FUNCTION",
    "UPLOAD_ATOMIC_RECHECK_SECONDS",
    "UPLOAD_DEAD_LETTER_TABLE",
    "UPLOAD_DEAD_LETTER_UNCHANGED",
    "UPLOAD_CONFLICT_DETECTION",
    "UPLOAD_SUBREQUEST_BUDGET",
    "UPLOAD_MAX_BODY_BYTES",
    "UPLOAD_MAX_ENTRIES",
    "UPLOAD_MAX_TRANSACTIONS",
    "UPLOAD_RETRY_AFTER_SECONDS",
    "UPLOAD_TIME_BUDGET_MS",
    "UPLOAD_ERROR_CLASS_OVERRIDES",
    "UPLOAD_ALLOW_ANONYMOUS",
    "STORAGE_MODE",
    "STORAGE_URL",
    "STORAGE_BUCKETS",
    "STORAGE_DOWNLOAD_URL_SECONDS",
    "STORAGE_ALLOW_ANONYMOUS",
];

/// `POWERSYNC_DANGEROUSLY_COPY_USER_METADATA` (default false): lets `POWERSYNC_COPY_CLAIMS` copy
/// Supabase's `user_metadata`, which every user writes for themselves; for sync rules that only
/// choose among data every user may read (a language, a region), never for access.
pub const COPY_USER_METADATA: &str = "POWERSYNC_DANGEROUSLY_COPY_USER_METADATA";

/// Everything the token endpoint and the JWKS need.
#[derive(Debug, Clone)]
pub struct PowerSyncSettings {
    pub token: TokenSettings,
    pub key: SigningKey,
    /// The current public key first, then previous ones kept for rotation.
    pub jwks: Vec<PublicJwk>,
}

/// Why the PowerSync part is unusable, most fundamental first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PowerSyncProblem {
    /// Required secrets absent: their names.
    Missing(Vec<String>),
    /// `POWERSYNC_PRIVATE_KEY` present but unusable.
    Key(KeyError),
    /// Present but invalid values: their names.
    Invalid(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorsSettings {
    /// `CORS_ALLOWED_ORIGINS` (comma-separated); default `*` (any origin). Native apps send no
    /// `Origin` and are unaffected; set this for browser apps in production.
    pub allowed_origins: Vec<String>,
}

impl CorsSettings {
    /// Whether any origin is allowed (`*`): then no answer depends on `Origin`.
    pub fn allows_any(&self) -> bool {
        self.allowed_origins.iter().any(|o| o == "*")
    }

    /// The `Access-Control-Allow-Origin` value for a request's `Origin`, if allowed.
    pub fn allow_origin(&self, origin: Option<&str>) -> Option<String> {
        if self.allows_any() {
            return Some("*".into());
        }
        let origin = origin?;
        self.allowed_origins.iter().any(|o| o == origin).then(|| origin.to_string())
    }
}

#[derive(Debug)]
pub struct Config {
    pub session: Result<SessionSettings, Vec<Problem>>,
    pub powersync: Result<PowerSyncSettings, PowerSyncProblem>,
    pub upload: Result<UploadSettings, Vec<Problem>>,
    /// The file endpoints (Supabase Storage).
    pub storage: Result<StorageSettings, Vec<Problem>>,
    pub cors: CorsSettings,
    /// `UPSTREAM_TIMEOUT_MS`; default 15000 (Supabase's statement timeout for signed-in users
    /// is 8 s). An upstream request without an answer by then counts as a retryable failure.
    pub upstream_timeout_ms: u64,
    /// Every problem found, in all parts.
    pub problems: Vec<Problem>,
}

impl Config {
    /// Parses all settings from `lookup` (environment variables and secrets by name).
    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Config {
        let mut r = Reader::new(lookup);
        let supabase_url = r.supabase_url();
        let session = r.part(|r| session_settings(r, supabase_url.clone()));
        let before = r.problems.len();
        let powersync = powersync_settings(&mut r, on_loopback(supabase_url.as_deref()));
        if let Err(PowerSyncProblem::Key(e)) = &powersync {
            r.problems.insert(before, Problem::new("POWERSYNC_PRIVATE_KEY", e.reason()));
        }
        let upload = r.part(|r| crate::upload::settings::read(r, supabase_url.clone()));
        // Settings shared with other parts (SUPABASE_ANON_KEY, ...) are listed once in `problems`.
        let shared = r.problems.len();
        let storage = r.part(|r| crate::storage::settings::read(r, supabase_url.clone()));
        let earlier: Vec<String> = r.problems[..shared].iter().map(|p| p.name.clone()).collect();
        let mine = r.problems.split_off(shared);
        r.problems.extend(mine.into_iter().filter(|p| !earlier.contains(&p.name)));
        let origins = r.list("CORS_ALLOWED_ORIGINS");
        // A browser's `Origin` is `scheme://host[:port]`, compared exactly: an entry with a path,
        // a trailing slash or no scheme would never match, so it is reported, not ignored.
        // a malformed entry is reported and allows nothing (`null` would let sandboxed pages in)
        let unset = origins.is_empty();
        let (allowed_origins, malformed): (Vec<String>, Vec<String>) =
            origins.into_iter().partition(|o| o == "*" || is_origin(o));
        if !malformed.is_empty() {
            let list = malformed.iter().map(|o| format!("{o:?}")).collect::<Vec<_>>().join(", ");
            r.problem(
                "CORS_ALLOWED_ORIGINS",
                format!("{list}: each entry is * or an origin as browsers send it, scheme://host[:port] (no path, no trailing /)"),
            );
        }
        let cors = CorsSettings { allowed_origins: if unset { vec!["*".into()] } else { allowed_origins } };
        let upstream_timeout_ms = r.number("UPSTREAM_TIMEOUT_MS", 15_000, 100..=60_000);
        // SUPABASE_URL's own problem belongs to every part that needs it, but is listed once.
        let session = session.map_err(|problems| with_url_problem(problems, &supabase_url, &r.problems));
        let upload = upload.map_err(|problems| with_url_problem(problems, &supabase_url, &r.problems));
        let storage = storage.map_err(|problems| with_url_problem(problems, &supabase_url, &r.problems));
        Config { session, powersync, upload, storage, cors, upstream_timeout_ms, problems: r.problems }
    }
}

/// `scheme://host[:port]`, exactly as a browser's `Origin` header is: the URL standard's
/// serialization of the origin (the `url` crate's), so lower-case scheme and host, an IPv6 host
/// in its short form, no default port (a browser leaves `:443` out of an `https` origin, so such
/// an entry would never match). A scheme without such an origin (`capacitor://localhost`,
/// `chrome-extension://<id>`, which apps send as they are) is taken as written: a host and
/// perhaps a port, nothing else, nothing in upper case.
fn is_origin(text: &str) -> bool {
    if !crate::environment::has_ascii_host(text) {
        return false;
    }
    let Ok(url) = url::Url::parse(text) else { return false };
    match url.origin() {
        origin @ url::Origin::Tuple(..) => origin.ascii_serialization() == text,
        url::Origin::Opaque(_) => {
            url.as_str() == text
                && url.host_str().is_some_and(|host| !host.is_empty())
                && url.path().is_empty()
                && (url.username(), url.password(), url.query(), url.fragment()) == ("", None, None, None)
                && !text.bytes().any(|b| b.is_ascii_uppercase())
        }
    }
}

fn with_url_problem(mut problems: Vec<Problem>, url: &Option<String>, all: &[Problem]) -> Vec<Problem> {
    if url.is_none() {
        problems.extend(all.iter().filter(|p| p.name == "SUPABASE_URL").cloned());
    }
    problems
}

/// `url` (`scheme://host[:port][/path]`, the scheme in lower case) as Supabase Auth writes it in
/// `iss`: the host in lower case, without the scheme's default port (`https://ref.supabase.co:443` issues
/// `https://ref.supabase.co/auth/v1`).
fn issuer_origin(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let host = host.to_ascii_lowercase();
            let default_port = if scheme == "https" { ":443" } else { ":80" };
            let host = host.strip_suffix(default_port).unwrap_or(&host);
            format!("{scheme}://{host}{path}")
        }
        None => url.to_string(),
    }
}

/// Shortest `SUPABASE_JWT_SECRET` (Supabase's own rule for self-hosted projects; hosted
/// projects' secrets are 40 characters or more).
pub const MIN_JWT_SECRET_BYTES: usize = 32;

fn session_settings(r: &mut Reader, supabase_url: Option<String>) -> Option<SessionSettings> {
    let jwks_url = r.fetchable_url("SUPABASE_JWKS_URL");
    let issuer = r.get("SUPABASE_JWT_ISSUER");
    let audiences = r.list("SUPABASE_JWT_AUDIENCE");
    let leeway_seconds = r.number("SUPABASE_JWT_LEEWAY_SECONDS", 30, 0..=300);
    let jwks_cache_seconds = r.number("SUPABASE_JWKS_CACHE_SECONDS", 600, 0..=600);
    let remote_check = r.flag("SUPABASE_VERIFY_SESSION_REMOTE", false);
    let anon_key = r.get("SUPABASE_ANON_KEY");
    if remote_check && anon_key.is_none() {
        // Supabase's gateway refuses /auth/v1/user without an apikey: every user would fail.
        r.problem("SUPABASE_VERIFY_SESSION_REMOTE", "needs SUPABASE_ANON_KEY (sent as apikey to Supabase Auth)");
    }
    let project_keys: Vec<String> =
        [anon_key.clone(), r.get("SUPABASE_SERVICE_ROLE_KEY")].into_iter().flatten().collect();
    let third_party = crate::session::third_party::read(r);
    let jwt_secret = r.get("SUPABASE_JWT_SECRET");
    if let Some(why) =
        jwt_secret.as_deref().and_then(|secret| api_keys::public_value_as_jwt_secret(secret, &project_keys))
    {
        r.problem(
            "SUPABASE_JWT_SECRET",
            format!(
                "{why}: anyone could sign a session for any user with it. Use the project's legacy JWT \
                 secret, or leave it unset when sessions are signed with signing keys (the JWKS verifies \
                 them)"
            ),
        );
    }
    if jwt_secret.as_deref().is_some_and(api_keys::is_published_jwt_secret) && !on_loopback(supabase_url.as_deref()) {
        r.problem(
            "SUPABASE_JWT_SECRET",
            "is a published default (the Supabase CLI's, self-hosted Supabase's or secrets.example's): \
             anyone could sign a session for any user with it. Use the project's own legacy JWT secret, or \
             leave it unset when sessions are signed with signing keys; a default is accepted only with a \
             loopback SUPABASE_URL (local development)",
        );
    }
    if jwt_secret.as_ref().is_some_and(|secret| secret.len() < MIN_JWT_SECRET_BYTES) {
        r.problem(
            "SUPABASE_JWT_SECRET",
            format!(
                "is shorter than {MIN_JWT_SECRET_BYTES} characters: an HS256 secret that short can be \
                 guessed from any session token (Supabase's are 40 or more)"
            ),
        );
    }
    let supabase_url = supabase_url?;
    // Supabase Auth writes its host in lower case: `https://REF.supabase.co` names the same
    // project, and its sessions must not all fail the issuer check
    let issuer = issuer.unwrap_or_else(|| format!("{}/auth/v1", issuer_origin(&supabase_url)));
    if third_party.issuers.iter().any(|i| i.provider == Provider::Oidc && i.issuer == issuer) {
        r.problem(
            "THIRD_PARTY_OIDC_ISSUER",
            "is Supabase Auth's own issuer: its tokens are Supabase sessions, checked by the SUPABASE_* \
             settings (THIRD_PARTY_OIDC_AUDIENCE would never apply to them); leave it unset",
        );
    }
    Some(SessionSettings {
        jwt_secret,
        jwks_url: jwks_url.unwrap_or_else(|| format!("{supabase_url}/auth/v1/.well-known/jwks.json")),
        issuer,
        audiences: if audiences.is_empty() { vec!["authenticated".into()] } else { audiences },
        leeway_seconds,
        jwks_cache_seconds,
        project_keys,
        remote_check,
        anon_key,
        supabase_url,
        third_party,
    })
}

/// Whether `SUPABASE_URL` names a loopback host: local development (`make dev`, tests), where
/// published secrets and keys are accepted.
fn on_loopback(supabase_url: Option<&str>) -> bool {
    supabase_url.and_then(|url| url::Url::parse(url).ok()).is_some_and(|url| is_loopback(&url))
}

/// `local`: [`on_loopback`].
fn powersync_settings(r: &mut Reader, local: bool) -> Result<PowerSyncSettings, PowerSyncProblem> {
    let before = r.problems.len();
    let url = r.app_url("POWERSYNC_URL");
    let ttl_seconds = r.number("POWERSYNC_TOKEN_TTL_SECONDS", DEFAULT_TTL_SECONDS, MIN_TTL_SECONDS..=MAX_TTL_SECONDS);
    let outlives_session = r.flag("POWERSYNC_TOKEN_OUTLIVES_SESSION", false);
    let copy_claims = r.list("POWERSYNC_COPY_CLAIMS");
    if let Some(reserved) = copy_claims.iter().find(|c| RESERVED_CLAIMS.contains(&c.as_str())) {
        r.problem("POWERSYNC_COPY_CLAIMS", format!("'{reserved}' is set by the worker and cannot be copied"));
    }
    let user_metadata_allowed = r.flag(COPY_USER_METADATA, false);
    if copy_claims.iter().any(|c| c == "user_metadata") && !user_metadata_allowed {
        r.problem(
            "POWERSYNC_COPY_CLAIMS",
            format!(
                "'user_metadata' is written by the user (supabase.auth.updateUser), and sync rules bypass \
                 row-level security: a bucket keyed on it lets any user choose what they sync. Copy \
                 app_metadata (only the service role writes it), or set {COPY_USER_METADATA}=true if no \
                 sync rule grants access by it"
            ),
        );
    }
    let previous = match r.get("POWERSYNC_PREVIOUS_PUBLIC_KEYS") {
        None => Vec::new(),
        Some(text) => keys::parse_previous_public_keys(&text).unwrap_or_else(|why| {
            r.problem("POWERSYNC_PREVIOUS_PUBLIC_KEYS", why);
            Vec::new()
        }),
    };
    let key = r.get("POWERSYNC_PRIVATE_KEY").map(|text| SigningKey::parse(&text));
    let key_id = r.get("POWERSYNC_KEY_ID").or_else(|| key.as_ref()?.as_ref().ok()?.jwk_kid.clone());

    let mut missing = Vec::new();
    if r.get("POWERSYNC_URL").is_none() {
        missing.push("POWERSYNC_URL".to_string());
    }
    if key.is_none() {
        missing.push("POWERSYNC_PRIVATE_KEY".to_string());
    }
    // A broken key is reported as such, not as a missing key id.
    if key_id.is_none() && !matches!(key, Some(Err(_))) {
        missing.push("POWERSYNC_KEY_ID".to_string());
    }
    for name in &missing {
        r.problem(name, "is required");
    }
    if !missing.is_empty() {
        // Every problem at once: a broken key too, not only once the missing ones are set.
        if let Some(Err(e)) = &key {
            r.problem("POWERSYNC_PRIVATE_KEY", e.reason());
        }
        return Err(PowerSyncProblem::Missing(missing));
    }
    let key = match key {
        Some(Ok(key)) => key,
        Some(Err(e)) => return Err(PowerSyncProblem::Key(e)),
        None => return Err(PowerSyncProblem::Missing(vec!["POWERSYNC_PRIVATE_KEY".into()])),
    };
    let current = key_id.as_ref().map(|key_id| key.public_jwk(key_id));
    if current.as_ref().is_some_and(|jwk| jwk.is_published()) && !local {
        r.problem(
            "POWERSYNC_PRIVATE_KEY",
            "is a test key published in this worker's repository (tests/fixtures/keys): anyone could sign \
             a PowerSync token for any user with it. Make a key of your own (devtool keygen, docs/token.md); \
             a published key is accepted only with a loopback SUPABASE_URL (local development)",
        );
    }
    // A previous key under the current kid is the current key published twice (dropped), unless
    // it is another key: then tokens it signed would stop verifying, and PowerSync, which
    // fetches the JWKS again only for a kid it does not know, could keep the old key for it.
    if let (Some(key_id), Some(current)) = (&key_id, &current) {
        if previous.iter().any(|p| p.kid == *key_id && !p.same_key_as(current)) {
            r.problem(
                "POWERSYNC_PREVIOUS_PUBLIC_KEYS",
                format!(
                    "a previous key has the current key's kid ({key_id}) but is another key: give the new key a new \
                     POWERSYNC_KEY_ID, so that both verify while tokens of the old one are in use"
                ),
            );
        }
    }
    let invalid: Vec<String> = r.problems[before..].iter().map(|p| p.name.clone()).collect();
    match (url, key_id) {
        (Some(powersync_url), Some(key_id)) if invalid.is_empty() => {
            let mut jwks = vec![current.unwrap_or_else(|| key.public_jwk(&key_id))];
            jwks.extend(previous.into_iter().filter(|p| p.kid != key_id));
            let issuer = r.get("POWERSYNC_TOKEN_ISSUER");
            Ok(PowerSyncSettings {
                token: TokenSettings {
                    powersync_url,
                    key_id,
                    alg: key.alg(),
                    ttl_seconds,
                    outlives_session,
                    issuer,
                    copy_claims,
                },
                key,
                jwks,
            })
        }
        _ => Err(PowerSyncProblem::Invalid(invalid)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::tests::test_key;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Config {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(&move |name| map.get(name).cloned())
    }

    #[test]
    fn cors_origins_that_no_browser_sends_are_reported() {
        for good in [
            "*",
            "https://app.example",
            "http://localhost:3000",
            "http://127.0.0.1:5173",
            "http://[::1]:8080",
            "http://[::1]",
            "http://[::ffff:7f00:1]",
            "https://app.example:8443",
            "capacitor://localhost",
            "chrome-extension://abcdefghijklmnopabcdefghijklmnop",
        ] {
            let c = config(&[("CORS_ALLOWED_ORIGINS", good)]);
            assert!(c.problems.iter().all(|p| p.name != "CORS_ALLOWED_ORIGINS"), "{good}: {:?}", c.problems);
        }
        for bad in [
            "https://app.example/",
            "app.example",
            "https://app.example/path",
            "https://App.example",
            "https://a.example:",
            // browsers leave a scheme's default port out, and write IPv6 hex in lower case
            "https://app.example:443",
            "http://app.example:80",
            "http://[::ABCD]",
            "http://[::1",
            "http://[::1]x",
            "http://a.example:1:2",
            // nor with a port a browser would write otherwise, or an address in another spelling
            "https://app.example:0443",
            "https://app.example:99999",
            "https://app.example:+443",
            "http://[0:0:0:0:0:0:0:1]:8080",
            "http://[::ffff:127.0.0.1]",
            "capacitor://user@localhost",
            "capacitor://localhost?x",
            "capacitor://localhost/",
            "Capacitor://localhost",
        ] {
            let c = config(&[("CORS_ALLOWED_ORIGINS", &format!("https://ok.example, {bad}"))]);
            let problem = c.problems.iter().find(|p| p.name == "CORS_ALLOWED_ORIGINS");
            assert!(problem.is_some_and(|p| p.message.contains(bad)), "{bad}: {:?}", c.problems);
            // reported, and allowing nothing
            assert_eq!(c.cors.allowed_origins, vec!["https://ok.example"], "{bad}");
        }
        // `null` (sandboxed pages, file: and data: URLs send it) alone allows no origin, not all
        let c = config(&[("CORS_ALLOWED_ORIGINS", "null")]);
        assert!(c.cors.allowed_origins.is_empty() && c.cors.allow_origin(Some("null")).is_none());
    }

    #[test]
    fn a_broken_key_is_reported_beside_a_missing_powersync_url() {
        let c = config(&[("POWERSYNC_PRIVATE_KEY", "not a key at all"), ("POWERSYNC_KEY_ID", "k1")]);
        let names: Vec<&str> = c.problems.iter().map(|p| p.name.as_str()).collect();
        assert!(names.contains(&"POWERSYNC_URL") && names.contains(&"POWERSYNC_PRIVATE_KEY"), "{names:?}");
    }

    fn complete() -> Vec<(&'static str, String)> {
        vec![
            ("SUPABASE_URL", "https://ref.supabase.co/".into()),
            ("SUPABASE_JWT_SECRET", "a-jwt-secret-of-at-least-32-characters".into()),
            ("SUPABASE_ANON_KEY", "anon".into()),
            ("POWERSYNC_URL", "https://ps.example".into()),
            ("POWERSYNC_KEY_ID", "kid-1".into()),
            ("POWERSYNC_PRIVATE_KEY", test_key().pkcs8_pem()),
        ]
    }

    fn config_of(vars: &[(&'static str, String)]) -> Config {
        let pairs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        config(&pairs)
    }

    fn names(problems: &[Problem]) -> Vec<&str> {
        problems.iter().map(|p| p.name.as_str()).collect()
    }

    #[test]
    fn complete_configuration_has_documented_defaults() {
        let c = config_of(&complete());
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        let s = c.session.unwrap();
        assert_eq!(s.supabase_url, "https://ref.supabase.co");
        assert_eq!(s.issuer, "https://ref.supabase.co/auth/v1");
        assert_eq!(s.jwks_url, "https://ref.supabase.co/auth/v1/.well-known/jwks.json");
        assert_eq!(s.audiences, vec!["authenticated"]);
        assert_eq!((s.leeway_seconds, s.jwks_cache_seconds, s.remote_check), (30, 600, false));
        assert_eq!(s.project_keys, vec!["anon"]);
        let p = c.powersync.unwrap();
        assert_eq!((p.token.ttl_seconds, p.token.outlives_session), (28_800, false));
        assert_eq!(p.token.key_id, "kid-1");
        assert_eq!(p.jwks.len(), 1);
        assert_eq!(c.cors.allowed_origins, vec!["*"]);
    }

    #[test]
    fn empty_environment_reports_every_required_name_at_once() {
        let c = config(&[]);
        let all = names(&c.problems);
        for name in ["SUPABASE_URL", "POWERSYNC_URL", "POWERSYNC_PRIVATE_KEY", "POWERSYNC_KEY_ID"] {
            assert!(all.contains(&name), "{name} not in {all:?}");
        }
        assert_eq!(
            c.powersync.unwrap_err(),
            PowerSyncProblem::Missing(vec![
                "POWERSYNC_URL".into(),
                "POWERSYNC_PRIVATE_KEY".into(),
                "POWERSYNC_KEY_ID".into()
            ])
        );
    }

    #[test]
    fn missing_supabase_url_is_listed_once_but_fails_both_parts_that_need_it() {
        let c = config(&[("POWERSYNC_URL", "https://ps.example")]);
        assert_eq!(c.problems.iter().filter(|p| p.name == "SUPABASE_URL").count(), 1);
        assert!(names(c.session.as_ref().unwrap_err()).contains(&"SUPABASE_URL"));
        assert!(names(c.upload.as_ref().unwrap_err()).contains(&"SUPABASE_URL"));
    }

    #[test]
    fn urls_that_get_tokens_or_keys_are_https_or_loopback_http_and_the_jwt_secret_is_not_short() {
        for (name, value) in [
            ("SUPABASE_URL", "http://ref.supabase.co"),
            ("SUPABASE_JWKS_URL", "http://keys.example.net/jwks"),
            ("STORAGE_URL", "http://storage.example.net/storage/v1"),
            ("SUPABASE_JWT_SECRET", "short-secret"),
        ] {
            let mut vars = complete();
            vars.retain(|(n, _)| *n != name);
            vars.push((name, value.into()));
            let c = config_of(&vars);
            assert_eq!(names(&c.problems), vec![name], "{value}");
            assert!(c.session.is_err() || name == "STORAGE_URL", "{name}");
            assert!(!c.problems[0].message.contains(value), "the value is not quoted");
        }
        let mut local = complete();
        local[0] = ("SUPABASE_URL", "http://127.0.0.1:54321".into());
        local.push(("SUPABASE_JWKS_URL", "http://localhost:9999/jwks".into()));
        local.push(("STORAGE_URL", "http://[::1]:5000/storage/v1".into()));
        assert!(config_of(&local).problems.is_empty(), "{:?}", config_of(&local).problems);
    }

    #[test]
    fn a_public_value_as_the_jwt_secret_is_a_problem_of_the_session_part() {
        // the anon key (here a JWT-shaped value): anyone could sign sessions with it
        let mut vars = complete();
        let anon = "an-anon-key-of-at-least-32-characters-long".to_string();
        vars.retain(|(n, _)| *n != "SUPABASE_ANON_KEY");
        vars.push(("SUPABASE_ANON_KEY", anon.clone()));
        for secret in [anon, "sb_publishable_0123456789abcdefghijklmnopqrstuv".to_string()] {
            vars.retain(|(n, _)| *n != "SUPABASE_JWT_SECRET");
            vars.push(("SUPABASE_JWT_SECRET", secret.clone()));
            let c = config_of(&vars);
            assert_eq!(names(&c.problems), vec!["SUPABASE_JWT_SECRET"], "{secret}");
            assert!(c.problems[0].message.contains("anyone could sign a session for any user"), "{:?}", c.problems);
            assert!(c.session.is_err());
        }
    }

    #[test]
    fn a_published_default_jwt_secret_is_refused_unless_supabase_is_on_loopback() {
        for secret in api_keys::PUBLISHED_JWT_SECRETS {
            let mut hosted = complete();
            hosted.retain(|(n, _)| *n != "SUPABASE_JWT_SECRET");
            hosted.push(("SUPABASE_JWT_SECRET", secret.to_string()));
            let c = config_of(&hosted);
            assert_eq!(names(&c.problems), vec!["SUPABASE_JWT_SECRET"], "{secret}");
            assert!(c.problems[0].message.contains("published default"), "{:?}", c.problems);
            assert!(c.session.is_err(), "no session verifies with it");
            let mut local = hosted.clone();
            local.retain(|(n, _)| *n != "SUPABASE_URL");
            local.push(("SUPABASE_URL", "http://127.0.0.1:54321".into()));
            assert!(config_of(&local).problems.is_empty(), "make dev: {:?}", config_of(&local).problems);
        }
    }

    #[test]
    fn a_test_key_published_in_this_repository_is_refused_unless_supabase_is_on_loopback() {
        for pem in [
            include_str!("../tests/fixtures/keys/p256_pkcs8.pem"),
            include_str!("../tests/fixtures/keys/p256_sec1_with_params.pem"),
            include_str!("../tests/fixtures/keys/ed25519_pkcs8.pem"),
        ] {
            let mut hosted = complete();
            hosted.retain(|(n, _)| *n != "POWERSYNC_PRIVATE_KEY");
            hosted.push(("POWERSYNC_PRIVATE_KEY", pem.to_string()));
            let c = config_of(&hosted);
            assert_eq!(names(&c.problems), vec!["POWERSYNC_PRIVATE_KEY"], "{pem}");
            assert!(c.problems[0].message.contains("published in this worker's repository"), "{:?}", c.problems);
            assert!(!c.problems[0].message.contains("PRIVATE KEY-----"), "the key is not quoted");
            assert!(c.powersync.is_err(), "no token is signed with it");
            let mut local = hosted.clone();
            local.retain(|(n, _)| *n != "SUPABASE_URL");
            local.push(("SUPABASE_URL", "http://127.0.0.1:54321".into()));
            assert!(config_of(&local).problems.is_empty(), "make dev: {:?}", config_of(&local).problems);
        }
        // a key of one's own passes, of each type
        for key in [crate::keys::tests::ed25519_key(), crate::keys::tests::p256_key(), test_key().clone()] {
            let mut vars = complete();
            vars.retain(|(n, _)| *n != "POWERSYNC_PRIVATE_KEY");
            vars.push(("POWERSYNC_PRIVATE_KEY", key.pkcs8_pem()));
            assert!(config_of(&vars).problems.is_empty(), "{:?}", config_of(&vars).problems);
        }
    }

    #[test]
    fn the_default_issuer_has_the_hosts_lower_case_as_supabase_writes_it() {
        let mut vars = complete();
        vars[0] = ("SUPABASE_URL", "https://REF.Supabase.co/Base".into());
        let session = config_of(&vars).session.expect("valid");
        assert_eq!(session.issuer, "https://ref.supabase.co/Base/auth/v1");
    }

    #[test]
    fn a_supabase_url_with_its_schemes_default_port_still_gives_the_issuer_supabase_writes() {
        for (url, issuer) in [
            ("https://ref.supabase.co:443", "https://ref.supabase.co/auth/v1"),
            ("https://Ref.Supabase.co:443/Base", "https://ref.supabase.co/Base/auth/v1"),
            ("http://127.0.0.1:80", "http://127.0.0.1/auth/v1"),
            // Any other port is the issuer's own.
            ("http://127.0.0.1:54321", "http://127.0.0.1:54321/auth/v1"),
            ("https://ref.supabase.co:8443", "https://ref.supabase.co:8443/auth/v1"),
        ] {
            let mut vars = complete();
            vars[0] = ("SUPABASE_URL", url.into());
            assert_eq!(config_of(&vars).session.expect("valid").issuer, issuer, "{url}");
        }
    }

    #[test]
    fn an_oidc_issuer_that_is_supabase_auths_own_is_a_configuration_problem() {
        let mut vars = complete();
        vars.push(("THIRD_PARTY_OIDC_ISSUER", "https://ref.supabase.co/auth/v1".into()));
        vars.push(("THIRD_PARTY_OIDC_AUDIENCE", "my-app".into()));
        let problems = config_of(&vars).problems;
        assert!(
            problems.iter().any(|p| p.name == "THIRD_PARTY_OIDC_ISSUER" && p.message.contains("Supabase Auth's own")),
            "{problems:?}"
        );
        vars.last_mut().unwrap().1 = "my-app".into();
        let other = vars.iter().position(|(n, _)| *n == "THIRD_PARTY_OIDC_ISSUER").unwrap();
        vars[other].1 = "https://id.example.com".into();
        assert!(config_of(&vars).problems.is_empty(), "another issuer is fine");
    }

    #[test]
    fn url_settings_whose_host_is_not_ascii_are_problems_never_a_panic() {
        // Found by fuzzing: idna_adapter 1.0's debug check panicked on these.
        for (name, value) in
            [("SUPABASE_URL", "https://A%AB"), ("SUPABASE_URL", "http://Aé"), ("CORS_ALLOWED_ORIGINS", "https://Aé")]
        {
            let mut vars = complete();
            vars.push((name, value.into()));
            if name == "SUPABASE_URL" {
                vars.swap_remove(0);
            }
            let problems = config_of(&vars).problems;
            assert!(problems.iter().any(|p| p.name == name), "{name}={value}: {problems:?}");
        }
    }

    #[test]
    fn supabase_url_with_an_api_path_is_refused() {
        let mut vars = complete();
        vars[0] = ("SUPABASE_URL", "https://ref.supabase.co/rest/v1".into());
        assert!(config_of(&vars).problems.iter().any(|p| p.name == "SUPABASE_URL" && p.message.contains("/rest/v1")));
    }

    #[test]
    fn invalid_values_are_all_reported_together() {
        let mut vars = complete();
        vars.push(("POWERSYNC_TOKEN_TTL_SECONDS", "90000".into()));
        vars.push(("SUPABASE_JWT_LEEWAY_SECONDS", "soon".into()));
        vars.push(("SUPABASE_VERIFY_SESSION_REMOTE", "maybe".into()));
        vars.push(("POWERSYNC_COPY_CLAIMS", "email,sub".into()));
        let c = config_of(&vars);
        let all = names(&c.problems);
        for name in [
            "POWERSYNC_TOKEN_TTL_SECONDS",
            "SUPABASE_JWT_LEEWAY_SECONDS",
            "SUPABASE_VERIFY_SESSION_REMOTE",
            "POWERSYNC_COPY_CLAIMS",
        ] {
            assert!(all.contains(&name), "{name} not in {all:?}");
        }
        assert!(
            matches!(c.powersync, Err(PowerSyncProblem::Invalid(ref n)) if n.contains(&"POWERSYNC_TOKEN_TTL_SECONDS".to_string()))
        );
    }

    #[test]
    fn copying_user_metadata_the_user_writes_takes_the_dangerous_setting() {
        let mut vars = complete();
        vars.push(("POWERSYNC_COPY_CLAIMS", "email,user_metadata".into()));
        let c = config_of(&vars);
        let problem = c.problems.iter().find(|p| p.name == "POWERSYNC_COPY_CLAIMS").expect("refused");
        assert!(problem.message.contains("app_metadata") && problem.message.contains(COPY_USER_METADATA));
        assert!(matches!(c.powersync, Err(PowerSyncProblem::Invalid(_))));
        vars.push((COPY_USER_METADATA, "true".into()));
        let token = config_of(&vars).powersync.expect("allowed").token;
        assert_eq!(token.copy_claims, ["email", "user_metadata"]);
        // what only the service role writes needs nothing
        let mut vars = complete();
        vars.push(("POWERSYNC_COPY_CLAIMS", "app_metadata,is_anonymous".into()));
        assert!(config_of(&vars).problems.is_empty());
    }

    #[test]
    fn outlives_session_is_read_as_a_flag() {
        let mut vars = complete();
        vars.push(("POWERSYNC_TOKEN_OUTLIVES_SESSION", "true".into()));
        assert!(config_of(&vars).powersync.unwrap().token.outlives_session);
        let mut vars = complete();
        vars.push(("POWERSYNC_TOKEN_OUTLIVES_SESSION", "sometimes".into()));
        assert!(names(&config_of(&vars).problems).contains(&"POWERSYNC_TOKEN_OUTLIVES_SESSION"));
    }

    #[test]
    fn ttl_outside_powersync_limits_is_refused() {
        for (ttl, ok) in [("59", false), ("60", true), ("86400", true), ("86401", false), ("-5", false)] {
            let mut vars = complete();
            vars.push(("POWERSYNC_TOKEN_TTL_SECONDS", ttl.into()));
            assert_eq!(config_of(&vars).powersync.is_ok(), ok, "ttl {ttl}");
        }
    }

    #[test]
    fn broken_private_key_is_a_key_problem_with_its_reason() {
        let mut vars = complete();
        vars.retain(|(k, _)| *k != "POWERSYNC_PRIVATE_KEY");
        vars.push((
            "POWERSYNC_PRIVATE_KEY",
            "-----BEGIN PRIVATE KEY-----\nnot base64!\n-----END PRIVATE KEY-----".into(),
        ));
        let c = config_of(&vars);
        assert!(matches!(c.powersync, Err(PowerSyncProblem::Key(KeyError::BadPem(_)))));
        assert!(c.problems.iter().any(|p| p.name == "POWERSYNC_PRIVATE_KEY" && p.message.contains("base64")));
    }

    #[test]
    fn jwk_kid_is_used_when_key_id_is_unset() {
        let mut vars = complete();
        vars.retain(|(k, _)| *k != "POWERSYNC_KEY_ID" && *k != "POWERSYNC_PRIVATE_KEY");
        vars.push(("POWERSYNC_PRIVATE_KEY", test_key().private_jwk("from-jwk").to_string()));
        assert_eq!(config_of(&vars).powersync.unwrap().token.key_id, "from-jwk");
    }

    #[test]
    fn pem_key_without_key_id_reports_key_id_missing() {
        let mut vars = complete();
        vars.retain(|(k, _)| *k != "POWERSYNC_KEY_ID");
        assert_eq!(config_of(&vars).powersync.unwrap_err(), PowerSyncProblem::Missing(vec!["POWERSYNC_KEY_ID".into()]));
    }

    #[test]
    fn previous_public_keys_are_published_after_the_current_one() {
        let mut vars = complete();
        let old = serde_json::to_string(&test_key().public_jwk("kid-0")).unwrap();
        vars.push(("POWERSYNC_PREVIOUS_PUBLIC_KEYS", format!("[{old}]")));
        let kids: Vec<String> = config_of(&vars).powersync.unwrap().jwks.into_iter().map(|k| k.kid).collect();
        assert_eq!(kids, vec!["kid-1", "kid-0"]);
    }

    #[test]
    fn a_previous_key_under_the_current_kid_is_dropped_if_it_is_the_current_key_else_refused() {
        // the current key listed as previous too (the rotation's middle step): published once
        let mut vars = complete();
        let same = serde_json::to_string(&test_key().public_jwk("kid-1")).unwrap();
        vars.push(("POWERSYNC_PREVIOUS_PUBLIC_KEYS", format!("[{same}]")));
        assert_eq!(config_of(&vars).powersync.unwrap().jwks, vec![test_key().public_jwk("kid-1")]);
        // another key under the current kid: its tokens would stop verifying, silently
        let mut vars = complete();
        let other = serde_json::to_string(&crate::keys::tests::p256_key().public_jwk("kid-1")).unwrap();
        vars.push(("POWERSYNC_PREVIOUS_PUBLIC_KEYS", format!("[{other}]")));
        let c = config_of(&vars);
        assert_eq!(c.powersync.unwrap_err(), PowerSyncProblem::Invalid(vec!["POWERSYNC_PREVIOUS_PUBLIC_KEYS".into()]));
        assert!(c.problems.iter().any(|p| p.message.contains("new POWERSYNC_KEY_ID")), "{:?}", c.problems);
    }

    #[test]
    fn an_ed25519_key_beside_a_previous_rsa_key_publishes_both_and_signs_eddsa() {
        let new_key = crate::keys::tests::ed25519_key();
        let mut vars: Vec<(&str, String)> =
            complete().into_iter().filter(|(k, _)| *k != "POWERSYNC_PRIVATE_KEY").collect();
        vars.push(("POWERSYNC_PRIVATE_KEY", new_key.pkcs8_pem()));
        let old = serde_json::to_string(&test_key().public_jwk("kid-0")).unwrap();
        vars.push(("POWERSYNC_PREVIOUS_PUBLIC_KEYS", format!("{{\"keys\":[{old}]}}")));
        let powersync = config_of(&vars).powersync.unwrap();
        assert_eq!(powersync.token.alg, "EdDSA");
        assert_eq!(powersync.jwks, vec![new_key.public_jwk("kid-1"), test_key().public_jwk("kid-0")]);
    }

    #[test]
    fn a_rotation_publishes_the_next_key_before_it_signs() {
        // docs/operations.md, Key rotation. Step 2: the next key published, the current one signs.
        let next = crate::keys::tests::ed25519_key();
        let next_jwk = serde_json::to_string(&next.public_jwk("kid-2")).unwrap();
        let mut vars = complete();
        vars.push(("POWERSYNC_PREVIOUS_PUBLIC_KEYS", format!("[{next_jwk}]")));
        let before = config_of(&vars).powersync.unwrap();
        assert_eq!((before.token.alg, before.token.key_id.as_str()), ("RS256", "kid-1"));
        assert_eq!(before.jwks, vec![test_key().public_jwk("kid-1"), next.public_jwk("kid-2")]);
        // Step 3: the next key signs; the old one stays published, the next one is listed once
        // even when the setting still names it.
        let old_jwk = serde_json::to_string(&test_key().public_jwk("kid-1")).unwrap();
        let mut vars: Vec<(&str, String)> = complete()
            .into_iter()
            .filter(|(k, _)| !matches!(*k, "POWERSYNC_PRIVATE_KEY" | "POWERSYNC_KEY_ID"))
            .collect();
        vars.push(("POWERSYNC_PRIVATE_KEY", next.pkcs8_pem()));
        vars.push(("POWERSYNC_KEY_ID", "kid-2".into()));
        vars.push(("POWERSYNC_PREVIOUS_PUBLIC_KEYS", format!("[{old_jwk},{next_jwk}]")));
        let after = config_of(&vars).powersync.unwrap();
        assert_eq!((after.token.alg, after.token.key_id.as_str()), ("EdDSA", "kid-2"));
        assert_eq!(after.jwks, vec![next.public_jwk("kid-2"), test_key().public_jwk("kid-1")]);
    }

    #[test]
    fn a_p256_jwk_key_signs_es256_under_its_own_kid() {
        let key = crate::keys::tests::p256_key();
        let mut vars = complete();
        vars.retain(|(k, _)| *k != "POWERSYNC_KEY_ID" && *k != "POWERSYNC_PRIVATE_KEY");
        vars.push(("POWERSYNC_PRIVATE_KEY", key.private_jwk("ec-jwk").to_string()));
        let powersync = config_of(&vars).powersync.unwrap();
        assert_eq!((powersync.token.alg, powersync.token.key_id.as_str()), ("ES256", "ec-jwk"));
        assert_eq!(powersync.jwks[0].kty, "EC");
    }

    #[test]
    fn an_unusable_previous_key_is_named_with_its_reason() {
        let mut vars = complete();
        vars.push(("POWERSYNC_PREVIOUS_PUBLIC_KEYS", r#"[{"kty":"OKP","crv":"X25519","kid":"x","x":"AA"}]"#.into()));
        let c = config_of(&vars);
        assert_eq!(c.powersync.unwrap_err(), PowerSyncProblem::Invalid(vec!["POWERSYNC_PREVIOUS_PUBLIC_KEYS".into()]));
        assert!(c.problems.iter().any(|p| p.name == "POWERSYNC_PREVIOUS_PUBLIC_KEYS" && p.message.contains("X25519")));
    }

    #[test]
    fn session_settings_overrides_are_read() {
        let mut vars = complete();
        vars.push(("SUPABASE_JWT_AUDIENCE", "a, b".into()));
        vars.push(("SUPABASE_JWT_ISSUER", "https://issuer".into()));
        vars.push(("SUPABASE_JWKS_URL", "http://127.0.0.1:9/jwks".into()));
        vars.push(("SUPABASE_VERIFY_SESSION_REMOTE", "true".into()));
        let s = config_of(&vars).session.unwrap();
        assert_eq!(s.audiences, vec!["a", "b"]);
        assert_eq!(s.issuer, "https://issuer");
        assert_eq!(s.jwks_url, "http://127.0.0.1:9/jwks");
        assert!(s.remote_check);
    }

    #[test]
    fn remote_session_check_without_an_anon_key_is_a_configuration_problem() {
        let mut vars: Vec<(&str, String)> =
            complete().into_iter().filter(|(name, _)| *name != "SUPABASE_ANON_KEY").collect();
        vars.push(("SUPABASE_VERIFY_SESSION_REMOTE", "true".into()));
        let problems = config_of(&vars).session.unwrap_err();
        assert!(
            problems
                .iter()
                .any(|p| p.name == "SUPABASE_VERIFY_SESSION_REMOTE" && p.message.contains("SUPABASE_ANON_KEY")),
            "{problems:?}"
        );
    }

    #[test]
    fn secrets_example_documents_exactly_the_names_read() {
        let example = include_str!("../secrets.example");
        let documented: Vec<&str> = example
            .lines()
            .filter(|l| !l.starts_with('#') && l.contains('='))
            .filter_map(|l| l.split('=').next())
            .collect();
        let mut read: Vec<&str> = NAMES.to_vec();
        read.sort();
        let mut sorted = documented.clone();
        sorted.sort();
        assert_eq!(sorted, read);
    }

    #[test]
    fn cors_origins_are_matched_exactly() {
        let mut vars = complete();
        vars.push(("CORS_ALLOWED_ORIGINS", "https://app.example, http://localhost:3000".into()));
        let cors = config_of(&vars).cors;
        assert_eq!(cors.allow_origin(Some("https://app.example")).as_deref(), Some("https://app.example"));
        assert_eq!(cors.allow_origin(Some("https://evil.example")), None);
        assert_eq!(cors.allow_origin(None), None);
        assert_eq!(config_of(&complete()).cors.allow_origin(None).as_deref(), Some("*"));
    }

    /// The configuration's `Debug` shows no secret (`SessionSettings` showed the JWT secret and
    /// the project's keys, which the first `{config:?}` in a log line would have printed).
    #[test]
    fn the_configurations_debug_output_hides_its_secrets() {
        let mut vars = complete();
        vars.push(("SUPABASE_SERVICE_ROLE_KEY", "sb_secret_service-key-never-logged".into()));
        let config = config_of(&vars);
        let shown = format!("{config:?}");
        for secret in ["a-jwt-secret-of-at-least-32-characters", "sb_secret_service-key-never-logged"] {
            assert!(!shown.contains(secret), "{secret} in Config's Debug output");
        }
    }
}
