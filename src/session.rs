//! Supabase session verification: is this bearer token a live Supabase user session?
//!
//! Signatures are checked by `jsonwebtoken`; the claim rules (expiry, audience, issuer, subject,
//! project API keys) are checked here with the time passed in, so every rule is testable.
//! Keys: the legacy HS256 project secret, and the project's signing keys (ES256/RS256) from its
//! JWKS, cached by [`jwks::JwksCache`]. Fetching the JWKS is the adapter's job: [`Verifier::plan`]
//! says when a fetch is needed and hands back the request as a plain value.
//!
//! Sessions of third-party auth providers (Firebase Auth, Auth0, Cognito, Clerk, WorkOS, any OIDC
//! issuer; [`third_party`]) are accepted too when configured. The token's unverified `iss` picks
//! the rules before any key is looked up or fetched: Supabase's own, a configured provider's
//! (its own key cache, discovery and claim rules), or none (refused, nothing fetched).

pub mod jwks;
pub mod third_party;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{Map, Value};

use crate::http::{HttpRequest, HttpResponse, Method, TransportError};
use jwks::JwksCache;
use third_party::{Issuer, KeySource, ThirdPartySettings};

/// How a session is checked. Every field documents its default (see `config.rs`). Its `Debug`
/// leaves the secret and the keys out.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionSettings {
    /// `SUPABASE_URL`, without trailing slash.
    pub supabase_url: String,
    /// `SUPABASE_JWT_SECRET`: legacy HS256 secret. `None`: HS256 sessions are rejected.
    pub jwt_secret: Option<String>,
    /// `SUPABASE_JWKS_URL`; default `<SUPABASE_URL>/auth/v1/.well-known/jwks.json`.
    pub jwks_url: String,
    /// `SUPABASE_JWT_ISSUER`; default `<SUPABASE_URL>/auth/v1`.
    pub issuer: String,
    /// `SUPABASE_JWT_AUDIENCE` (comma-separated); default `authenticated`. The token's `aud`
    /// (string or array) must contain one of them.
    pub audiences: Vec<String>,
    /// `SUPABASE_JWT_LEEWAY_SECONDS`; default 30. Clock skew allowed on `exp`, `nbf`, `iat`.
    pub leeway_seconds: u64,
    /// `SUPABASE_JWKS_CACHE_SECONDS`; default 600, at most 600 (Supabase's own `max-age`).
    pub jwks_cache_seconds: u64,
    /// Project API keys that must never pass as sessions (`SUPABASE_ANON_KEY`,
    /// `SUPABASE_SERVICE_ROLE_KEY`), compared exactly, on top of the `role` claim rule.
    pub project_keys: Vec<String>,
    /// `SUPABASE_VERIFY_SESSION_REMOTE`; default false. Also ask Supabase Auth
    /// (`GET /auth/v1/user`) whether the session still exists: catches sign-outs before `exp`,
    /// at the cost of one round trip per request.
    pub remote_check: bool,
    /// `SUPABASE_ANON_KEY`, sent as `apikey` on the remote check.
    pub anon_key: Option<String>,
    /// `THIRD_PARTY_*`: third-party auth issuers accepted beside Supabase Auth; default none.
    pub third_party: ThirdPartySettings,
}

impl std::fmt::Debug for SessionSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |set: bool| if set { "<redacted>" } else { "<unset>" };
        f.debug_struct("SessionSettings")
            .field("supabase_url", &self.supabase_url)
            .field("jwt_secret", &redacted(self.jwt_secret.is_some()))
            .field("jwks_url", &self.jwks_url)
            .field("issuer", &self.issuer)
            .field("audiences", &self.audiences)
            .field("leeway_seconds", &self.leeway_seconds)
            .field("jwks_cache_seconds", &self.jwks_cache_seconds)
            .field("project_keys", &format_args!("<{} redacted>", self.project_keys.len()))
            .field("remote_check", &self.remote_check)
            .field("anon_key", &redacted(self.anon_key.is_some()))
            .field("third_party", &self.third_party)
            .finish()
    }
}

/// Minimum time between two JWKS fetches triggered by an unknown `kid`.
pub const UNKNOWN_KID_REFETCH_SECONDS: u64 = 30;

/// A verified session. Its `Debug` leaves the token out.
#[derive(Clone, PartialEq)]
pub struct Session {
    /// The user id (`sub`).
    pub user_id: String,
    /// All claims, for copying selected ones into the PowerSync token.
    pub claims: Map<String, Value>,
    /// The raw access token, forwarded to PostgREST so RLS applies.
    pub token: String,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("user_id", &self.user_id)
            .field("claims", &self.claims)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// Why a session was refused. Every variant is the caller's fault except `KeysUnavailable`,
/// `AuthUnavailable` and `AuthMisconfigured`. `reason()` is for logs and never contains the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionError {
    Malformed(String),
    /// `alg` not allowed here (`none`, HS384, PS256, ...), or HS256 with no secret configured.
    AlgorithmNotAllowed(String),
    /// The JWKS has no key under this `kid` (even after a refetch).
    UnknownKey(String),
    /// The key found does not fit the token's `alg` (e.g. an EC key for an RS256 token).
    KeyMismatch(String),
    BadSignature,
    Expired,
    NotYetValid,
    WrongAudience,
    /// The token's `iss` against what was expected (for the log).
    WrongIssuer(String),
    NoSubject,
    /// A third-party token whose `role` is not `authenticated` (or is missing).
    RoleNotAllowed(String),
    /// The project's `anon` / `service_role` key presented as a session.
    ProjectKey,
    /// Supabase Auth says the session or user no longer exists.
    Revoked(String),
    /// The JWKS could not be fetched and no fresh copy is cached.
    KeysUnavailable(String),
    /// The remote session check could not reach Supabase Auth.
    AuthUnavailable(String),
    /// The remote session check was refused by Supabase's gateway, not by Auth (a missing or
    /// wrong `SUPABASE_ANON_KEY`): our configuration, never the user's session.
    AuthMisconfigured(String),
}

impl SessionError {
    pub fn reason(&self) -> String {
        match self {
            SessionError::Malformed(why) => format!("malformed token: {why}"),
            SessionError::AlgorithmNotAllowed(alg) => format!("algorithm not allowed: {alg}"),
            SessionError::UnknownKey(kid) => format!("no signing key with kid '{kid}'"),
            SessionError::KeyMismatch(why) => format!("key does not fit the token: {why}"),
            SessionError::BadSignature => "signature does not verify".into(),
            SessionError::Expired => "token expired".into(),
            SessionError::NotYetValid => "token not yet valid (nbf/iat in the future)".into(),
            SessionError::WrongAudience => "aud does not contain an accepted audience".into(),
            SessionError::WrongIssuer(why) => format!("iss is not the configured issuer: {why}"),
            SessionError::NoSubject => "no sub claim".into(),
            SessionError::RoleNotAllowed(why) => {
                format!("third-party token refused: {why} (role must be authenticated)")
            }
            SessionError::ProjectKey => "a project API key (anon/service_role) is not a session".into(),
            SessionError::Revoked(why) => format!("Supabase Auth rejected the session: {why}"),
            SessionError::KeysUnavailable(why) => format!("JWKS unavailable: {why}"),
            SessionError::AuthUnavailable(why) => format!("Supabase Auth unavailable: {why}"),
            SessionError::AuthMisconfigured(why) => format!("remote session check misconfigured: {why}"),
        }
    }
}

/// What the adapter must do before [`Verifier::verify`] can decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Ready,
    /// Fetch Supabase's own JWKS, then [`Verifier::accept`] (or [`Verifier::accept_jwks`]).
    FetchJwks(HttpRequest),
    /// Fetch the JWKS of the `issuer`-th third-party issuer, then [`Verifier::accept`].
    FetchIssuerKeys {
        issuer: usize,
        request: HttpRequest,
    },
    /// Fetch the OpenID discovery document of the `issuer`-th third-party issuer, then
    /// [`Verifier::accept`] (which asks for its JWKS next).
    Discover {
        issuer: usize,
        request: HttpRequest,
    },
    /// Verify now, but a refetch for the token's unknown `kid` was held back (rate limit or
    /// back-off after failed fetches): pass verification errors through [`Step::explain`].
    RefetchSuppressed,
    /// Another request of this isolate is fetching these keys (single flight): wait until it
    /// has ended, then [`Verifier::after_wait`] says what to do. `seen`: where the fetches of
    /// these keys stood when the wait began.
    Wait {
        keys: KeySet,
        seen: jwks::FlightMark,
    },
}

/// One key cache of a [`Verifier`]: Supabase's JWKS, or a third-party issuer's keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeySet {
    Supabase,
    /// The `n`-th third-party issuer's.
    Issuer(usize),
}

impl Step {
    /// The request to send before verifying, if any.
    pub fn request(&self) -> Option<&HttpRequest> {
        match self {
            Step::FetchJwks(request) | Step::FetchIssuerKeys { request, .. } | Step::Discover { request, .. } => {
                Some(request)
            }
            Step::Ready | Step::RefetchSuppressed | Step::Wait { .. } => None,
        }
    }

    /// The key cache this step fetches for or waits on.
    pub fn keys(&self) -> Option<KeySet> {
        match self {
            Step::FetchJwks(_) => Some(KeySet::Supabase),
            Step::FetchIssuerKeys { issuer, .. } | Step::Discover { issuer, .. } => Some(KeySet::Issuer(*issuer)),
            Step::Wait { keys, .. } => Some(*keys),
            Step::Ready | Step::RefetchSuppressed => None,
        }
    }
}

/// A token read and keyed but whose claims are not yet checked. Its `Debug` leaves the token
/// out.
#[derive(Clone)]
pub struct PendingSession {
    claims: Map<String, Value>,
    token: String,
    /// The third-party issuer (index) whose rules apply; `None`: Supabase Auth's.
    third_party: Option<usize>,
    /// The ES256/RS256 signature still to verify (`None`: HS256, already verified).
    pub signature: Option<SignatureCheck>,
}

impl std::fmt::Debug for PendingSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingSession")
            .field("claims", &self.claims)
            .field("token", &"<redacted>")
            .field("third_party", &self.third_party)
            .field("signature", &self.signature)
            .finish()
    }
}

/// A signature made with one of the project's signing keys, still to be verified. Its `Debug`
/// leaves the signed text and the signature out (together they are the token).
#[derive(Clone, PartialEq)]
pub struct SignatureCheck {
    pub alg: Algorithm,
    /// The public key from the project's JWKS.
    pub key: Jwk,
    /// The same key's public parameters only, as JSON (`{"kty","crv","x","y"}` or
    /// `{"kty","n","e"}`): what WebCrypto imports, and a stable cache key.
    pub public_jwk: String,
    /// `base64url(header).base64url(payload)`, the signed bytes.
    pub message: String,
    /// Raw signature bytes (for ES256: `r || s`, 64 bytes, as WebCrypto expects).
    pub signature: Vec<u8>,
}

impl std::fmt::Debug for SignatureCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignatureCheck")
            .field("alg", &self.alg)
            .field("public_jwk", &self.public_jwk)
            .field("message", &"<redacted>")
            .field("signature", &"<redacted>")
            .finish()
    }
}

/// Verifies ES256/RS256 session signatures. The worker uses WebCrypto (native code: P-256 in
/// pure-Rust wasm costs ~3 ms per request); [`RustSignatureVerifier`] serves native use.
pub trait SignatureVerifier {
    /// `Ok(true)` when valid, `Ok(false)` when not, `Err` when the key cannot be used.
    fn verify(&self, check: &SignatureCheck) -> impl std::future::Future<Output = Result<bool, SessionError>>;
}

/// Pure-Rust signature verification (`jsonwebtoken` over RustCrypto).
pub struct RustSignatureVerifier;

impl RustSignatureVerifier {
    pub fn check(check: &SignatureCheck) -> Result<bool, SessionError> {
        let key = DecodingKey::from_jwk(&check.key).map_err(|e| SessionError::KeyMismatch(e.to_string()))?;
        let signature = URL_SAFE_NO_PAD.encode(&check.signature);
        jsonwebtoken::crypto::verify(&signature, check.message.as_bytes(), &key, check.alg)
            .map_err(|e| SessionError::KeyMismatch(e.to_string()))
    }
}

impl SignatureVerifier for RustSignatureVerifier {
    async fn verify(&self, check: &SignatureCheck) -> Result<bool, SessionError> {
        RustSignatureVerifier::check(check)
    }
}

/// Session verification state for one isolate: settings plus the JWKS cache.
#[derive(Debug)]
pub struct Verifier {
    pub settings: SessionSettings,
    /// `SUPABASE_JWT_SECRET`'s bytes: the HS256 key.
    hs_key: Option<Vec<u8>>,
    jwks: JwksCache,
    /// One key cache per third-party issuer (same order as `settings.third_party.issuers`).
    issuers: Vec<IssuerKeys>,
}

/// A third-party issuer's keys: the same cache rules as Supabase's JWKS, plus the `jwks_uri`
/// found by discovery (forgotten when a fetch from it fails, so it is discovered again).
#[derive(Debug)]
struct IssuerKeys {
    jwks: JwksCache,
    jwks_uri: Option<String>,
}

/// Whose rules a token falls under, chosen by its unverified `iss` before any key is fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Supabase,
    ThirdParty(usize),
    /// Signed with a key-set algorithm but from no configured issuer: refused with no fetch.
    Unknown,
}

impl Verifier {
    pub fn new(settings: SessionSettings) -> Verifier {
        let hs_key = settings.jwt_secret.as_ref().map(|s| s.as_bytes().to_vec());
        let jwks = JwksCache::new(settings.jwks_cache_seconds);
        let issuers = settings
            .third_party
            .issuers
            .iter()
            .map(|issuer| IssuerKeys {
                jwks: JwksCache::new(settings.jwks_cache_seconds),
                jwks_uri: match &issuer.keys {
                    KeySource::Jwks(url) => Some(url.clone()),
                    KeySource::Discovery(_) => None,
                },
            })
            .collect();
        Verifier { settings, hs_key, jwks, issuers }
    }

    /// Picks the rules for `token` by its unverified `iss`: Supabase's own issuer, a configured
    /// third party, or (for HS256, Supabase's legacy tokens, which need no fetch) Supabase's.
    /// For logs and metrics, of a token already verified: who issued it (`supabase`, or the
    /// third-party provider's name: `firebase`, `auth0`, ...) and its `alg`. Nothing secret.
    pub fn describe(&self, token: &str) -> (&'static str, &'static str) {
        let alg = jsonwebtoken::decode_header(token).map(|h| h.alg).unwrap_or(Algorithm::HS256);
        let issuer = match self.source(token, alg) {
            Source::Supabase => "supabase",
            Source::ThirdParty(index) => self.third_party_issuer(index).provider.name(),
            Source::Unknown => "unknown",
        };
        let alg = match alg {
            Algorithm::HS256 => "HS256",
            Algorithm::ES256 => "ES256",
            Algorithm::RS256 => "RS256",
            _ => "other",
        };
        (issuer, alg)
    }

    fn source(&self, token: &str, alg: Algorithm) -> Source {
        let iss = token
            .split('.')
            .nth(1)
            .and_then(decode_segment)
            .and_then(|claims| claims.get("iss")?.as_str().map(str::to_string));
        let Some(iss) = iss else {
            return if alg == Algorithm::HS256 { Source::Supabase } else { Source::Unknown };
        };
        if iss == self.settings.issuer {
            return Source::Supabase;
        }
        match self.settings.third_party.issuers.iter().position(|i| i.issuer == iss) {
            Some(index) => Source::ThirdParty(index),
            None if alg == Algorithm::HS256 => Source::Supabase,
            None => Source::Unknown,
        }
    }

    fn third_party_issuer(&self, index: usize) -> &Issuer {
        &self.settings.third_party.issuers[index]
    }

    /// Says whether the JWKS must be fetched before `token` can be verified at time `now`
    /// (an unknown-`kid` refetch counts against its rate limit from here).
    /// Malformed tokens are `Ready` (verification will reject them without a fetch).
    pub fn plan(&mut self, token: &str, now: u64) -> Step {
        let Ok(header) = jsonwebtoken::decode_header(token) else { return Step::Ready };
        if matches!(header.alg, Algorithm::HS256) || !is_jwks_alg(header.alg) {
            return Step::Ready;
        }
        match self.source(token, header.alg) {
            Source::Supabase => {}
            Source::Unknown => return Step::Ready,
            Source::ThirdParty(index) => {
                let keys = &mut self.issuers[index];
                return match keys.jwks.wants_fetch(header.kid.as_deref(), now, UNKNOWN_KID_REFETCH_SECONDS) {
                    jwks::Freshness::Cached => Step::Ready,
                    jwks::Freshness::Suppressed => Step::RefetchSuppressed,
                    jwks::Freshness::InFlight => Step::Wait { keys: KeySet::Issuer(index), seen: keys.jwks.mark() },
                    jwks::Freshness::Fetch => match (&keys.jwks_uri, &self.settings.third_party.issuers[index].keys) {
                        (Some(url), _) => {
                            Step::FetchIssuerKeys { issuer: index, request: HttpRequest::new(Method::Get, url) }
                        }
                        (None, KeySource::Discovery(url)) | (None, KeySource::Jwks(url)) => {
                            Step::Discover { issuer: index, request: HttpRequest::new(Method::Get, url) }
                        }
                    },
                };
            }
        }
        match self.jwks.wants_fetch(header.kid.as_deref(), now, UNKNOWN_KID_REFETCH_SECONDS) {
            jwks::Freshness::Cached => Step::Ready,
            jwks::Freshness::Fetch => Step::FetchJwks(HttpRequest::new(Method::Get, &self.settings.jwks_url)),
            jwks::Freshness::Suppressed => Step::RefetchSuppressed,
            jwks::Freshness::InFlight => Step::Wait { keys: KeySet::Supabase, seen: self.jwks.mark() },
        }
    }

    /// What a verification error of `token` means after `step`: an unknown `kid` is "keys
    /// unavailable, try again" (503), not an invalid session (401), when its key set could not
    /// be fetched again: the refetch was held back, or the last fetch of that key set (this
    /// request's, or the one it waited for) failed. Only a key set fetched successfully since
    /// the token arrived can say that a `kid` is unknown.
    pub fn explain(&self, token: &str, step: &Step, error: SessionError) -> SessionError {
        let SessionError::UnknownKey(kid) = error else { return error };
        if *step == Step::RefetchSuppressed {
            return SessionError::KeysUnavailable(format!("no key '{kid}' yet and a JWKS refetch is held back"));
        }
        let cache = jsonwebtoken::decode_header(token).ok().and_then(|header| match self.source(token, header.alg) {
            Source::Supabase => Some(&self.jwks),
            Source::ThirdParty(index) => self.issuers.get(index).map(|keys| &keys.jwks),
            Source::Unknown => None,
        });
        match cache.and_then(JwksCache::last_failure) {
            Some(why) => {
                SessionError::KeysUnavailable(format!("no key '{kid}', and the key set's refetch failed: {why}"))
            }
            None => SessionError::UnknownKey(kid),
        }
    }

    fn cache(&mut self, keys: KeySet) -> Option<&mut JwksCache> {
        match keys {
            KeySet::Supabase => Some(&mut self.jwks),
            KeySet::Issuer(index) => self.issuers.get_mut(index).map(|keys| &mut keys.jwks),
        }
    }

    /// What to do after a [`Step::Wait`] ended: `resumed` when the fetching request said it was
    /// done, `false` when the wait ran out first. Once the fetch waited for has ended (with keys
    /// or without), verify with what it brought: it was made after this request arrived, so it
    /// is as fresh as any this request could make ([`Step::Ready`]: an unknown `kid` is then
    /// invalid, a failed fetch "try again"). A fetch that outlived the wait is taken as lost
    /// (its request went away) and this request plans again, so it may fetch itself.
    pub fn after_wait(&mut self, token: &str, now: u64, waited: &Step, resumed: bool) -> Step {
        let Step::Wait { keys, seen } = waited else { return self.plan(token, now) };
        let Some(cache) = self.cache(*keys) else { return Step::Ready };
        if cache.after_wait(*seen, resumed) {
            return Step::Ready;
        }
        self.plan(token, now)
    }

    /// Gives up the fetch `step` handed out, without a result (its request went away): the
    /// requests waiting for it plan again, and one of them fetches.
    pub fn abandon(&mut self, step: &Step) {
        if let Some(cache) = step.keys().and_then(|keys| self.cache(keys)) {
            cache.abandon();
        }
    }

    /// Takes Supabase's JWKS fetch result into the cache.
    pub fn accept_jwks(&mut self, answer: Result<HttpResponse, TransportError>, now: u64) {
        self.jwks.accept(answer, now);
    }

    /// Takes the answer to `step`'s request and says what to do next: a discovery document
    /// leads to its issuer's JWKS fetch; a JWKS goes into its issuer's cache. A failure counts
    /// as a failed key fetch for that issuer (same back-off as Supabase's JWKS).
    pub fn accept(&mut self, step: &Step, answer: Result<HttpResponse, TransportError>, now: u64) -> Step {
        match step {
            Step::FetchJwks(_) => self.jwks.accept(answer, now),
            Step::FetchIssuerKeys { issuer, .. } => {
                let discovered = matches!(self.third_party_issuer(*issuer).keys, KeySource::Discovery(_));
                let keys = &mut self.issuers[*issuer];
                let failed = !matches!(&answer, Ok(response) if response.status == 200);
                if failed && discovered {
                    keys.jwks_uri = None;
                }
                keys.jwks.accept(answer, now);
            }
            Step::Discover { issuer, .. } => {
                let index = *issuer;
                match third_party::jwks_uri(answer, &self.third_party_issuer(index).issuer) {
                    Ok(uri) => {
                        self.issuers[index].jwks_uri = Some(uri.clone());
                        return Step::FetchIssuerKeys { issuer: index, request: HttpRequest::new(Method::Get, uri) };
                    }
                    Err(why) => self.issuers[index].jwks.fail(why, now),
                }
            }
            Step::Ready | Step::RefetchSuppressed | Step::Wait { .. } => {}
        }
        Step::Ready
    }

    /// Verifies signature and claims at time `now`, checking JWKS signatures with
    /// [`RustSignatureVerifier`] (native use and tests; the worker uses [`Self::begin`],
    /// its own [`SignatureVerifier`] and [`Self::finish`]).
    pub fn verify(&self, token: &str, now: u64) -> Result<Session, SessionError> {
        let pending = self.begin(token, now)?;
        if let Some(check) = &pending.signature {
            if !RustSignatureVerifier::check(check)? {
                return Err(SessionError::BadSignature);
            }
        }
        self.finish(pending, now)
    }

    /// First half of verification: reads the token, finds its key, and verifies an HS256
    /// signature on the spot (HMAC is cheap). An ES256/RS256 signature is returned as a
    /// [`SignatureCheck`] for the caller to verify before calling [`Self::finish`].
    pub fn begin(&self, token: &str, now: u64) -> Result<PendingSession, SessionError> {
        if self.settings.project_keys.iter().any(|k| k == token) {
            return Err(SessionError::ProjectKey);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| {
            if unverified_alg(token).is_some_and(|alg| alg != "HS256" && alg != "ES256" && alg != "RS256") {
                SessionError::AlgorithmNotAllowed(unverified_alg(token).unwrap_or_default())
            } else {
                SessionError::Malformed(e.to_string())
            }
        })?;
        let source = self.source(token, header.alg);
        if let Source::ThirdParty(index) = source {
            // No shared secret with a third party: HS256 (or anything but RS256/ES256) is refused
            // before any key is looked at.
            if !is_jwks_alg(header.alg) {
                return Err(SessionError::AlgorithmNotAllowed(format!("{:?} from a third-party issuer", header.alg)));
            }
            let (key, public_jwk) = self.issuers[index].jwks.key_for(header.kid.as_deref(), header.alg, now)?;
            let (claims, check) = signature_check(token, header.alg, key, public_jwk)?;
            return Ok(PendingSession {
                claims,
                token: token.to_string(),
                third_party: Some(index),
                signature: Some(check),
            });
        }
        if source == Source::Unknown && is_jwks_alg(header.alg) {
            let claims = token.split('.').nth(1).and_then(decode_segment);
            let iss = shown_issuer(claims.as_ref().and_then(|c| c.get("iss")));
            return Err(SessionError::WrongIssuer(format!(
                "{iss}, neither Supabase Auth's (\"{}\") nor a configured third-party issuer",
                self.settings.issuer
            )));
        }
        match header.alg {
            Algorithm::HS256 => {
                let key = self.hs_key.as_ref().ok_or_else(|| {
                    SessionError::AlgorithmNotAllowed("HS256 (SUPABASE_JWT_SECRET is not set)".into())
                })?;
                let claims = verify_hs256(token, key)?;
                Ok(PendingSession { claims, token: token.to_string(), third_party: None, signature: None })
            }
            alg if is_jwks_alg(alg) => {
                let (key, public_jwk) = self.jwks.key_for(header.kid.as_deref(), alg, now)?;
                let (claims, check) = signature_check(token, alg, key, public_jwk)?;
                Ok(PendingSession { claims, token: token.to_string(), third_party: None, signature: Some(check) })
            }
            other => Err(SessionError::AlgorithmNotAllowed(format!("{other:?}"))),
        }
    }

    /// Second half: the claim rules at time `now`, once the signature is known to be valid.
    pub fn finish(&self, pending: PendingSession, now: u64) -> Result<Session, SessionError> {
        if let Some(index) = pending.third_party {
            let third_party = &self.settings.third_party;
            let user_id = third_party::check_claims(
                &pending.claims,
                &third_party.issuers[index],
                third_party,
                self.settings.leeway_seconds,
                now,
            )?;
            return Ok(Session { user_id, claims: pending.claims, token: pending.token });
        }
        let session = check_claims(pending.claims, &self.settings, now)?;
        Ok(Session { token: pending.token, ..session })
    }

    /// The optional remote check: `GET <SUPABASE_URL>/auth/v1/user` as the user. Never for a
    /// third-party token: Supabase Auth does not know its users.
    pub fn remote_check_request(&self, token: &str) -> Option<HttpRequest> {
        let alg = jsonwebtoken::decode_header(token).map(|h| h.alg).unwrap_or(Algorithm::HS256);
        if !self.settings.remote_check || matches!(self.source(token, alg), Source::ThirdParty(_)) {
            return None;
        }
        let mut request = HttpRequest::new(Method::Get, format!("{}/auth/v1/user", self.settings.supabase_url))
            .header("Authorization", format!("Bearer {token}"));
        if let Some(anon) = &self.settings.anon_key {
            request = request.header("apikey", anon.clone());
        }
        Some(request)
    }
}

/// Interprets Supabase Auth's answer to `GET /auth/v1/user`. Only Auth's own refusals (a body
/// with its error code: `error_code`, or `code` as text in API version 2024-01-01; from a release
/// without error codes, a numeric `code` with its `msg`) revoke the session; a 401/403 without
/// one comes from the gateway (`{"message":"Invalid API key"}`), so the worker's key is wrong and
/// every user would be refused: that is our fault (5xx). The code is logged only when it looks
/// like one (an echoing proxy could put the caller's token there).
pub fn interpret_remote_check(answer: Result<HttpResponse, TransportError>) -> Result<(), SessionError> {
    let response = answer.map_err(|e| SessionError::AuthUnavailable(e.message))?;
    match response.status {
        200..=299 => Ok(()),
        401 | 403 | 404 => {
            let body: Value = serde_json::from_str(&response.body).unwrap_or(Value::Null);
            let auth_code = ["error_code", "code"]
                .iter()
                .find_map(|k| body.get(*k).and_then(|v| v.as_str()).map(str::to_string))
                .or_else(|| {
                    match (body.get("code").and_then(Value::as_u64), body.get("msg").and_then(Value::as_str)) {
                        (Some(code), Some(_)) => Some(code.to_string()),
                        _ => None,
                    }
                });
            let code_like = |code: &str| {
                (1..=64).contains(&code.len()) && code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            };
            // Auth checks `exp` and `nbf` without the worker's leeway: a session the worker took
            // within it is refused `bad_jwt` "token is expired" (golang-jwt's words), which is
            // the routine refresh, not a sign-out.
            let text = ["msg", "message"].iter().find_map(|k| body.get(*k).and_then(Value::as_str)).unwrap_or("");
            match auth_code {
                Some(code) if code == "bad_jwt" && text.contains("token is expired") => Err(SessionError::Expired),
                Some(code)
                    if code == "bad_jwt" && (text.contains("not valid yet") || text.contains("used before issued")) =>
                {
                    Err(SessionError::NotYetValid)
                }
                Some(code) if code_like(&code) => Err(SessionError::Revoked(format!("{} {code}", response.status))),
                Some(_) => Err(SessionError::Revoked(format!("{} (an error code not shown)", response.status))),
                None => {
                    let message = body.get("message").and_then(|v| v.as_str()).unwrap_or("no Auth error code");
                    Err(SessionError::AuthMisconfigured(format!(
                        "{} from the gateway: {}",
                        response.status,
                        crate::credentials::redact_clipped(message, 120)
                    )))
                }
            }
        }
        status => Err(SessionError::AuthUnavailable(format!("status {status}"))),
    }
}

/// The claims and the signature still to verify of a token signed with a key-set key.
fn signature_check(
    token: &str,
    alg: Algorithm,
    key: &Jwk,
    public_jwk: &str,
) -> Result<(Map<String, Value>, SignatureCheck), SessionError> {
    let (message, signature) = token.rsplit_once('.').ok_or_else(|| SessionError::Malformed("not a JWT".into()))?;
    let payload = message.split_once('.').map(|(_, p)| p).unwrap_or_default();
    let claims =
        decode_segment(payload).ok_or_else(|| SessionError::Malformed("payload is not base64url JSON".into()))?;
    let signature = URL_SAFE_NO_PAD
        .decode(signature.trim_end_matches('='))
        .map_err(|_| SessionError::Malformed("signature is not base64url".into()))?;
    let check = SignatureCheck {
        alg,
        key: key.clone(),
        public_jwk: public_jwk.to_string(),
        message: message.to_string(),
        signature,
    };
    Ok((claims, check))
}

/// An HS256 token's claims, once its HMAC-SHA256 under `secret` is verified (in constant time).
/// With `hmac` directly rather than `jsonwebtoken::decode`: its crypto dispatch links every
/// algorithm's code (RSA, P-256, P-384, Ed25519) into the wasm bundle, where only HMAC runs.
fn verify_hs256(token: &str, secret: &[u8]) -> Result<Map<String, Value>, SessionError> {
    use hmac::{Hmac, Mac};
    let (message, signature) = token.rsplit_once('.').ok_or_else(|| SessionError::Malformed("not a JWT".into()))?;
    let payload = match message.split_once('.') {
        Some((_, payload)) if !payload.contains('.') => payload,
        _ => return Err(SessionError::Malformed("not a JWT".into())),
    };
    let signature = URL_SAFE_NO_PAD
        .decode(signature.trim_end_matches('='))
        .map_err(|_| SessionError::Malformed("signature is not base64url".into()))?;
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).map_err(|e| SessionError::Malformed(e.to_string()))?;
    mac.update(message.as_bytes());
    mac.verify_slice(&signature).map_err(|_| SessionError::BadSignature)?;
    decode_segment(payload).ok_or_else(|| SessionError::Malformed("payload is not base64url JSON".into()))
}

fn is_jwks_alg(alg: Algorithm) -> bool {
    matches!(alg, Algorithm::ES256 | Algorithm::RS256)
}

/// The header's `alg` read without verification, only to name it in an error.
fn unverified_alg(token: &str) -> Option<String> {
    let header = decode_segment(token.split('.').next()?)?;
    header.get("alg")?.as_str().map(|s| s.chars().take(16).collect())
}

/// The claims of a JWT-shaped text (three segments, the second a base64url JSON object), read
/// without verification: only to tell what kind of key a setting holds ([`crate::api_keys`]).
pub fn unverified_claims(token: &str) -> Option<Map<String, Value>> {
    match token.split('.').collect::<Vec<_>>()[..] {
        [_, payload, _] => decode_segment(payload),
        _ => None,
    }
}

/// A base64url JSON object segment of a JWT.
fn decode_segment(segment: &str) -> Option<Map<String, Value>> {
    let bytes = URL_SAFE_NO_PAD.decode(segment.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The claim rules, applied after the signature verified.
fn check_claims(claims: Map<String, Value>, settings: &SessionSettings, now: u64) -> Result<Session, SessionError> {
    if matches!(claims.get("role").and_then(Value::as_str), Some("anon" | "service_role")) {
        return Err(SessionError::ProjectKey);
    }
    check_times(&claims, settings.leeway_seconds, now)?;
    let audience_ok = match claims.get("aud") {
        Some(Value::String(aud)) => settings.audiences.iter().any(|a| a == aud),
        Some(Value::Array(auds)) => {
            auds.iter().any(|v| v.as_str().is_some_and(|aud| settings.audiences.iter().any(|a| a == aud)))
        }
        _ => false,
    };
    if !audience_ok {
        return Err(SessionError::WrongAudience);
    }
    check_issuer(&claims, &settings.issuer)?;
    let user_id = match claims.get("sub").and_then(Value::as_str) {
        Some(sub) if !sub.trim().is_empty() => sub.to_string(),
        _ => return Err(SessionError::NoSubject),
    };
    Ok(Session { user_id, claims, token: String::new() })
}

/// The time claims, the same for every issuer: `exp` required, `nbf` and `iat` optional; each a
/// number of seconds when present (a present claim that is not a number makes the token
/// malformed, never a claim skipped). `leeway_seconds` applies to each.
pub(crate) fn check_times(claims: &Map<String, Value>, leeway_seconds: u64, now: u64) -> Result<(), SessionError> {
    let number = |name: &str| match claims.get(name) {
        None => Ok(None),
        Some(value) => {
            value.as_f64().map(Some).ok_or_else(|| SessionError::Malformed(format!("{name} is not a number")))
        }
    };
    let (leeway, now) = (leeway_seconds as f64, now as f64);
    let exp = number("exp")?.ok_or_else(|| SessionError::Malformed("exp missing or not a number".into()))?;
    if now >= exp + leeway {
        return Err(SessionError::Expired);
    }
    let (nbf, iat) = (number("nbf")?, number("iat")?);
    if nbf.is_some_and(|nbf| nbf > now + leeway) || iat.is_some_and(|iat| iat > now + leeway) {
        return Err(SessionError::NotYetValid);
    }
    Ok(())
}

/// Longest part of a token's `iss` quoted in a log line.
const ISS_SHOWN_CHARS: usize = 120;

/// `iss` must be `expected` exactly. The refusal names both (neither is secret), so that an
/// operator can see a mismatch such as a custom domain or a self-hosted `API_EXTERNAL_URL`.
pub(crate) fn check_issuer(claims: &Map<String, Value>, expected: &str) -> Result<(), SessionError> {
    match claims.get("iss") {
        Some(Value::String(iss)) if iss == expected => Ok(()),
        found => Err(SessionError::WrongIssuer(format!("{}, expected \"{expected}\"", shown_issuer(found)))),
    }
}

/// A token's `iss` as a log line shows it: quoted and cut short, or what it is instead.
pub(crate) fn shown_issuer(iss: Option<&Value>) -> String {
    match iss {
        None => "no iss".into(),
        Some(Value::String(iss)) if iss.chars().count() > ISS_SHOWN_CHARS => {
            format!("iss \"{}…\"", iss.chars().take(ISS_SHOWN_CHARS).collect::<String>())
        }
        Some(Value::String(iss)) => format!("iss \"{iss}\""),
        Some(_) => "iss not a string".into(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    pub(crate) const SECRET: &str = "super-secret-jwt-token-with-at-least-32-characters-long";
    pub(crate) const URL: &str = "http://127.0.0.1:54321";
    pub(crate) const NOW: u64 = 1_800_000_000;

    pub(crate) fn settings() -> SessionSettings {
        SessionSettings {
            supabase_url: URL.into(),
            jwt_secret: Some(SECRET.into()),
            jwks_url: format!("{URL}/auth/v1/.well-known/jwks.json"),
            issuer: format!("{URL}/auth/v1"),
            audiences: vec!["authenticated".into()],
            leeway_seconds: 30,
            jwks_cache_seconds: 600,
            project_keys: vec![],
            remote_check: false,
            anon_key: Some("anon-key".into()),
            third_party: ThirdPartySettings::default(),
        }
    }

    pub(crate) fn user_claims() -> Value {
        json!({
            "iss": format!("{URL}/auth/v1"), "aud": "authenticated", "sub": "user-1",
            "role": "authenticated", "email": "a@example.com", "iat": NOW - 10, "exp": NOW + 3600,
        })
    }

    pub(crate) fn hs256(claims: &Value) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(SECRET.as_bytes()))
            .unwrap()
    }

    fn verify(token: &str) -> Result<Session, SessionError> {
        Verifier::new(settings()).verify(token, NOW)
    }

    fn with(field: &str, value: Value) -> Value {
        let mut claims = user_claims();
        claims[field] = value;
        claims
    }

    fn without(field: &str) -> Value {
        let mut claims = user_claims();
        claims.as_object_mut().unwrap().remove(field);
        claims
    }

    #[test]
    fn valid_hs256_session_yields_its_subject_and_claims() {
        let token = hs256(&user_claims());
        let session = verify(&token).unwrap();
        assert_eq!(session.user_id, "user-1");
        assert_eq!(session.claims["email"], "a@example.com");
        assert_eq!(session.token, token);
    }

    #[test]
    fn expired_session_is_rejected_as_expired() {
        assert_eq!(verify(&hs256(&with("exp", json!(NOW - 31)))), Err(SessionError::Expired));
    }

    #[test]
    fn session_expired_within_leeway_is_accepted() {
        assert!(verify(&hs256(&with("exp", json!(NOW - 29)))).is_ok());
    }

    #[test]
    fn session_without_exp_is_rejected() {
        assert!(matches!(verify(&hs256(&without("exp"))), Err(SessionError::Malformed(_))));
    }

    #[test]
    fn session_from_the_future_is_rejected_as_not_yet_valid() {
        assert_eq!(verify(&hs256(&with("nbf", json!(NOW + 120)))), Err(SessionError::NotYetValid));
        assert_eq!(verify(&hs256(&with("iat", json!(NOW + 120)))), Err(SessionError::NotYetValid));
    }

    #[test]
    fn a_session_whose_nbf_or_iat_is_not_a_number_is_refused_as_malformed() {
        // As a number the same future time is refused; as text it must not be skipped.
        for claim in ["nbf", "iat"] {
            for value in [json!((NOW + 99_999).to_string()), json!(null), json!([NOW]), json!(true)] {
                let refused = verify(&hs256(&with(claim, value.clone())));
                assert_eq!(
                    refused,
                    Err(SessionError::Malformed(format!("{claim} is not a number"))),
                    "{claim}: {value}"
                );
            }
            assert!(verify(&hs256(&with(claim, json!(NOW - 10)))).is_ok(), "{claim} as a number in the past");
        }
    }

    #[test]
    fn audience_must_contain_authenticated() {
        assert_eq!(verify(&hs256(&with("aud", json!("anon")))), Err(SessionError::WrongAudience));
        assert_eq!(verify(&hs256(&without("aud"))), Err(SessionError::WrongAudience));
        assert!(verify(&hs256(&with("aud", json!(["other", "authenticated"])))).is_ok());
        assert_eq!(verify(&hs256(&with("aud", json!(["other"])))), Err(SessionError::WrongAudience));
    }

    #[test]
    fn configured_audience_replaces_the_default() {
        let mut s = settings();
        s.audiences = vec!["my-app".into()];
        let v = Verifier::new(s);
        assert!(v.verify(&hs256(&with("aud", json!("my-app"))), NOW).is_ok());
        assert_eq!(v.verify(&hs256(&user_claims()), NOW), Err(SessionError::WrongAudience));
    }

    #[test]
    fn issuer_must_be_the_projects_auth_url() {
        assert!(matches!(verify(&hs256(&with("iss", json!("supabase")))), Err(SessionError::WrongIssuer(_))));
        assert!(matches!(verify(&hs256(&without("iss"))), Err(SessionError::WrongIssuer(_))));
        let other = json!("https://other.supabase.co/auth/v1");
        assert!(matches!(verify(&hs256(&with("iss", other))), Err(SessionError::WrongIssuer(_))));
    }

    #[test]
    fn a_wrong_issuer_refusal_names_the_tokens_iss_and_the_expected_one() {
        let reason = |claims: Value| verify(&hs256(&claims)).unwrap_err().reason();
        assert_eq!(
            reason(with("iss", json!("https://ref.supabase.co:443/auth/v1"))),
            format!(
                "iss is not the configured issuer: iss \"https://ref.supabase.co:443/auth/v1\", expected \"{URL}/auth/v1\""
            )
        );
        assert_eq!(
            reason(without("iss")),
            format!("iss is not the configured issuer: no iss, expected \"{URL}/auth/v1\"")
        );
        assert!(reason(with("iss", json!(7))).contains(": iss not a string, expected"));
        // A long one is cut short: the log line stays small whatever the token holds.
        let long = reason(with("iss", json!("x".repeat(5_000))));
        assert!(long.contains(&format!("iss \"{}…\"", "x".repeat(120))) && long.len() < 300, "{long}");
    }

    #[test]
    fn session_without_subject_is_rejected() {
        assert_eq!(verify(&hs256(&without("sub"))), Err(SessionError::NoSubject));
        assert_eq!(verify(&hs256(&with("sub", json!("")))), Err(SessionError::NoSubject));
        assert_eq!(verify(&hs256(&with("sub", json!(42)))), Err(SessionError::NoSubject));
    }

    #[test]
    fn legacy_anon_and_service_role_keys_are_rejected_as_project_keys() {
        for role in ["anon", "service_role"] {
            let key =
                hs256(&json!({"iss": "supabase", "ref": "abc", "role": role, "iat": NOW - 10, "exp": NOW + 999_999}));
            assert_eq!(verify(&key), Err(SessionError::ProjectKey), "{role}");
        }
    }

    #[test]
    fn configured_project_key_is_rejected_even_if_it_looks_like_a_session() {
        let token = hs256(&user_claims());
        let mut s = settings();
        s.project_keys = vec![token.clone()];
        assert_eq!(Verifier::new(s).verify(&token, NOW), Err(SessionError::ProjectKey));
    }

    #[test]
    fn tampered_signature_is_rejected() {
        let token = hs256(&user_claims());
        let (rest, sig) = token.rsplit_once('.').unwrap();
        let flipped = if sig.starts_with('A') { "B" } else { "A" };
        let tampered = format!("{rest}.{flipped}{}", &sig[1..]);
        assert_eq!(verify(&tampered), Err(SessionError::BadSignature));
    }

    #[test]
    fn tampered_payload_is_rejected() {
        let token = hs256(&user_claims());
        let parts: Vec<&str> = token.split('.').collect();
        let other = hs256(&with("sub", json!("user-2")));
        let other_payload = other.split('.').nth(1).unwrap();
        assert_eq!(verify(&format!("{}.{}.{}", parts[0], other_payload, parts[2])), Err(SessionError::BadSignature));
    }

    #[test]
    fn wrong_secret_is_a_bad_signature() {
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &user_claims(),
            &EncodingKey::from_secret(b"another-secret-another-secret-another"),
        )
        .unwrap();
        assert_eq!(verify(&token), Err(SessionError::BadSignature));
    }

    #[test]
    fn alg_none_is_rejected() {
        use base64::Engine;
        let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let token = format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT"})), b64(&user_claims()));
        assert_eq!(verify(&token), Err(SessionError::AlgorithmNotAllowed("none".into())));
    }

    #[test]
    fn hs512_is_not_an_accepted_algorithm() {
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &user_claims(),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert!(matches!(verify(&token), Err(SessionError::AlgorithmNotAllowed(_))));
    }

    #[test]
    fn hs256_session_without_configured_secret_is_rejected() {
        let mut s = settings();
        s.jwt_secret = None;
        let err = Verifier::new(s).verify(&hs256(&user_claims()), NOW).unwrap_err();
        assert!(matches!(err, SessionError::AlgorithmNotAllowed(ref a) if a.contains("HS256")));
    }

    #[test]
    fn hs256_signed_payload_that_is_not_json_is_malformed_and_extra_segments_are_refused() {
        use base64::Engine;
        use hmac::{Hmac, Mac};
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let sign = |message: &str| {
            let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
            mac.update(message.as_bytes());
            b64(&mac.finalize().into_bytes())
        };
        let header = b64(br#"{"alg":"HS256","typ":"JWT"}"#);
        let not_json = format!("{header}.{}", b64(b"not json"));
        assert!(matches!(verify(&format!("{not_json}.{}", sign(&not_json))), Err(SessionError::Malformed(_))));
        let four = format!("{header}.{}.{}", b64(user_claims().to_string().as_bytes()), b64(b"x"));
        assert!(matches!(verify(&format!("{four}.{}", sign(&four))), Err(SessionError::Malformed(_))));
        let good = format!("{header}.{}", b64(user_claims().to_string().as_bytes()));
        assert!(verify(&format!("{good}.{}", sign(&good))).is_ok());
    }

    #[test]
    fn garbage_is_malformed() {
        for junk in ["", "abc", "a.b.c", "Bearer x.y.z", "eyJ.eyJ.sig"] {
            assert!(matches!(verify(junk), Err(SessionError::Malformed(_))), "{junk:?}");
        }
    }

    #[test]
    fn a_session_and_its_settings_show_no_token_or_secret_when_debug_printed() {
        let token = hs256(&user_claims());
        let session = verify(&token).expect("valid");
        let shown = format!("{session:?} {:?}", settings());
        let signature = token.rsplit('.').next().expect("signed");
        assert!(!shown.contains(signature), "{shown}");
        assert!(!shown.contains(SECRET), "{shown}");
        assert!(!shown.contains("anon-key"), "{shown}");
    }

    #[test]
    fn hs256_tokens_need_no_jwks_fetch() {
        assert_eq!(Verifier::new(settings()).plan(&hs256(&user_claims()), NOW), Step::Ready);
    }

    #[test]
    fn remote_check_is_off_by_default_and_builds_the_auth_user_request() {
        let v = Verifier::new(settings());
        assert_eq!(v.remote_check_request("tok"), None);
        let mut s = settings();
        s.remote_check = true;
        let request = Verifier::new(s).remote_check_request("tok").unwrap();
        assert_eq!(request.url, format!("{URL}/auth/v1/user"));
        assert_eq!(request.header_value("authorization"), Some("Bearer tok"));
        assert_eq!(request.header_value("apikey"), Some("anon-key"));
    }

    #[test]
    fn remote_check_refused_by_the_gateway_is_our_misconfiguration_not_a_revoked_session() {
        let answer = |status: u16, body: &str| Ok(HttpResponse { status, headers: vec![], body: body.into() });
        for body in [
            r#"{"message":"Invalid API key","hint":"Double check your Supabase `anon` or `service_role` API key."}"#,
            r#"{"message":"No API key found in request","hint":"No `apikey` request header or url param was found."}"#,
            "",
        ] {
            let error = interpret_remote_check(answer(401, body)).unwrap_err();
            assert!(matches!(&error, SessionError::AuthMisconfigured(_)), "{body}: {error:?}");
            let api = crate::error::ApiError::Session(error);
            assert_eq!((api.status(), api.code()), (500, "auth_check_misconfigured"));
        }
        // a gateway that echoes the request quotes no credential into the log
        let echoed =
            r#"{"message":"apikey: sb_publishable_ACJWlzQHlZjBrEguHvfOxg Authorization: Bearer eyJh.eyJz.sig"}"#;
        let reason = interpret_remote_check(answer(401, echoed)).unwrap_err().reason();
        assert!(!reason.contains("sb_publishable_ACJWlzQHlZjBrEguHvfOxg") && !reason.contains("eyJh.eyJz"), "{reason}");
    }

    #[test]
    fn remote_check_answers_are_interpreted() {
        let answer = |status: u16, body: &str| Ok(HttpResponse { status, headers: vec![], body: body.into() });
        assert_eq!(interpret_remote_check(answer(200, "{}")), Ok(()));
        assert!(
            matches!(interpret_remote_check(answer(403, r#"{"error_code":"session_not_found"}"#)), Err(SessionError::Revoked(r)) if r.contains("session_not_found"))
        );
        assert!(
            matches!(interpret_remote_check(answer(403, r#"{"code":"user_not_found","message":"User from sub claim in JWT does not exist"}"#)), Err(SessionError::Revoked(r)) if r.contains("user_not_found"))
        );
        // Auth before error codes: the status as a number, the text in `msg`
        assert!(
            matches!(interpret_remote_check(answer(404, r#"{"code":404,"msg":"User not found"}"#)), Err(SessionError::Revoked(r)) if r == "404 404")
        );
        // a code that is no code (a proxy echoing the request) is not logged
        let echoed = interpret_remote_check(answer(401, r#"{"code":"Bearer eyJh.eyJz.sig"}"#)).unwrap_err();
        assert!(matches!(&echoed, SessionError::Revoked(r) if !r.contains("eyJ")), "{echoed:?}");
        assert!(matches!(interpret_remote_check(answer(502, "")), Err(SessionError::AuthUnavailable(_))));
        // A session the worker took within its leeway, which Auth checks without one.
        let expired = r#"{"code":403,"error_code":"bad_jwt","msg":"invalid JWT: unable to parse or verify signature, token has invalid claims: token is expired"}"#;
        assert_eq!(interpret_remote_check(answer(403, expired)), Err(SessionError::Expired));
        let expired_v2 = r#"{"code":"bad_jwt","message":"invalid JWT: unable to parse or verify signature, token has invalid claims: token is expired"}"#;
        assert_eq!(interpret_remote_check(answer(403, expired_v2)), Err(SessionError::Expired));
        let early = r#"{"code":"bad_jwt","message":"invalid JWT: unable to parse or verify signature, token has invalid claims: token is not valid yet"}"#;
        assert_eq!(interpret_remote_check(answer(403, early)), Err(SessionError::NotYetValid));
        let forged = r#"{"code":"bad_jwt","message":"invalid JWT: unable to parse or verify signature, token signature is invalid"}"#;
        assert!(
            matches!(interpret_remote_check(answer(403, forged)), Err(SessionError::Revoked(r)) if r.contains("bad_jwt"))
        );
        let refused = Err(TransportError::no_answer("refused"));
        assert!(matches!(interpret_remote_check(refused), Err(SessionError::AuthUnavailable(_))));
    }
}
