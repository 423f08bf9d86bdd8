//! The PowerSync token: claims, the exact bytes that get signed, and the response body.
//!
//! Signing itself is pluggable ([`TokenSigner`]): the worker signs with WebCrypto (native code,
//! within the Free plan's CPU budget); native tests and the dev tool sign with
//! [`RustSigner`]. The token's `alg` follows the key: RS256, ES256 or EdDSA. RS256 (PKCS#1 v1.5)
//! and EdDSA are deterministic, so both signers must produce identical tokens; ECDSA signatures
//! are randomised (WebCrypto) and are compared by verifying them.

use std::future::Future;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::keys::{KeyKind, SigningKey};
use crate::session::Session;

/// Default token lifetime: 8 hours, what apps built on the Edge Function expect.
pub const DEFAULT_TTL_SECONDS: u64 = 8 * 3600;
/// PowerSync refuses tokens whose `exp - iat` exceeds a day (PSYNC_S2104).
pub const MAX_TTL_SECONDS: u64 = 86_400;
pub const MIN_TTL_SECONDS: u64 = 60;
/// Claims the worker sets itself; they cannot be copied from the session.
pub const RESERVED_CLAIMS: [&str; 6] = ["sub", "aud", "iat", "exp", "iss", "nbf"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSettings {
    /// `POWERSYNC_URL`: the instance URL, also the token's `aud`.
    pub powersync_url: String,
    /// `POWERSYNC_KEY_ID` (or the JWK's own `kid`): the header `kid`.
    pub key_id: String,
    /// The header `alg`: the signing key's (`RS256`, `ES256` or `EdDSA`).
    pub alg: &'static str,
    /// `POWERSYNC_TOKEN_TTL_SECONDS`; default 28800 (8 h), allowed 60..=86400. The longest a
    /// token lasts: it expires with the session when that comes sooner ([`expires_at`]).
    pub ttl_seconds: u64,
    /// `POWERSYNC_TOKEN_OUTLIVES_SESSION`; default false. When true, every token lasts the whole
    /// TTL however soon its session expires: a user who signed out, was banned or deleted, or
    /// whose access token leaked with seconds to live, keeps syncing until the token expires.
    pub outlives_session: bool,
    /// `POWERSYNC_TOKEN_ISSUER`; default none (no `iss` claim).
    pub issuer: Option<String>,
    /// `POWERSYNC_COPY_CLAIMS` (comma-separated); default none. Session claims copied into the
    /// token for sync rules (`request.jwt() ->> 'email'`). Absent claims are skipped;
    /// `parameters` is copied only when it is a JSON object (PowerSync's rule).
    pub copy_claims: Vec<String>,
}

#[derive(Serialize)]
struct Header<'a> {
    alg: &'static str,
    typ: &'static str,
    kid: &'a str,
}

/// A token waiting for its signature.
#[derive(Debug, Clone, PartialEq)]
pub struct UnsignedToken {
    /// `base64url(header) . base64url(payload)`: the bytes the signature covers.
    pub signing_input: String,
    pub user_id: String,
    pub expires_at: u64,
}

/// The token's `exp` for a session at time `now`: the TTL, but no later than the session's own
/// `exp`, so that a token gives no more time than the session it was issued for (a Supabase
/// client connecting to PowerSync with its access token directly gets exactly the session's).
/// It lasts at least [`MIN_TTL_SECONDS`] all the same: a session in its last seconds (or past its
/// `exp` within the leeway) would otherwise get a token the SDK fetches again at once.
pub fn expires_at(settings: &TokenSettings, session: &Session, now: u64) -> u64 {
    let full = now + settings.ttl_seconds;
    if settings.outlives_session {
        return full;
    }
    // The verifier refused a session without a numeric `exp`; none here means no bound.
    let session_exp = session.claims.get("exp").and_then(Value::as_f64).map_or(u64::MAX, |exp| exp.max(0.0) as u64);
    full.min(session_exp.max(now + MIN_TTL_SECONDS))
}

/// Builds the PowerSync token for `session` at time `now` (Unix seconds).
pub fn unsigned(settings: &TokenSettings, session: &Session, now: u64) -> UnsignedToken {
    let header = Header { alg: settings.alg, typ: "JWT", kid: &settings.key_id };
    let expires_at = expires_at(settings, session, now);
    let mut claims = Map::new();
    for name in &settings.copy_claims {
        match session.claims.get(name) {
            Some(value) if name != "parameters" || value.is_object() => {
                claims.insert(name.clone(), value.clone());
            }
            _ => {}
        }
    }
    claims.insert("sub".into(), session.user_id.clone().into());
    claims.insert("aud".into(), settings.powersync_url.clone().into());
    claims.insert("iat".into(), now.into());
    claims.insert("exp".into(), expires_at.into());
    if let Some(iss) = &settings.issuer {
        claims.insert("iss".into(), iss.clone().into());
    }
    let encode = |bytes: Vec<u8>| URL_SAFE_NO_PAD.encode(bytes);
    let signing_input = format!(
        "{}.{}",
        encode(serde_json::to_vec(&header).unwrap_or_default()),
        encode(serde_json::to_vec(&claims).unwrap_or_default())
    );
    UnsignedToken { signing_input, user_id: session.user_id.clone(), expires_at }
}

/// The success body, shaped like the Edge Function's (`token`, `powersync_url`, `expires_at`,
/// `user_id`) plus `endpoint`, the PowerSync SDKs' name for the URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IssuedToken {
    pub token: String,
    pub powersync_url: String,
    pub endpoint: String,
    /// ISO 8601 UTC with milliseconds, e.g. `2025-10-22T20:30:00.000Z`.
    pub expires_at: String,
    pub user_id: String,
}

/// Joins the signing input and a base64url signature into the response body.
pub fn issued(settings: &TokenSettings, unsigned: UnsignedToken, signature_b64url: &str) -> IssuedToken {
    IssuedToken {
        token: format!("{}.{}", unsigned.signing_input, signature_b64url),
        powersync_url: settings.powersync_url.clone(),
        endpoint: settings.powersync_url.clone(),
        expires_at: iso8601_millis(unsigned.expires_at),
        user_id: unsigned.user_id,
    }
}

pub fn iso8601_millis(unix_seconds: u64) -> String {
    chrono::DateTime::from_timestamp(unix_seconds as i64, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// Produces the key's JWS signature (base64url) over a signing input: RS256 (PKCS#1 v1.5),
/// ES256 (`r || s`, 64 bytes) or EdDSA (Ed25519, 64 bytes).
pub trait TokenSigner {
    fn sign(&self, key: &SigningKey, signing_input: &[u8]) -> impl Future<Output = Result<String, String>>;
}

/// Pure-Rust signer (`jsonwebtoken` over RustCrypto's `rsa`, `p256` and `ed25519-dalek`). Used
/// natively and by the dev tool; kept off the worker's request path (slow in wasm; `rsa` has the
/// RUSTSEC-2023-0071 timing advisory).
pub struct RustSigner;

impl RustSigner {
    pub fn sign_now(key: &SigningKey, signing_input: &[u8]) -> Result<String, String> {
        use jsonwebtoken::{Algorithm, EncodingKey};
        let (encoding_key, alg) = match key.kind() {
            KeyKind::Rs256 => (EncodingKey::from_rsa_der(&key.pkcs1_der()), Algorithm::RS256),
            KeyKind::Es256 => (EncodingKey::from_ec_der(&key.pkcs8_der()), Algorithm::ES256),
            KeyKind::EdDsa => (EncodingKey::from_ed_der(&key.pkcs8_der()), Algorithm::EdDSA),
        };
        jsonwebtoken::crypto::sign(signing_input, &encoding_key, alg).map_err(|e| e.to_string())
    }
}

impl TokenSigner for RustSigner {
    async fn sign(&self, key: &SigningKey, signing_input: &[u8]) -> Result<String, String> {
        RustSigner::sign_now(key, signing_input)
    }
}

/// Decodes the header and claims of a token we issued (tests and the dev tool).
pub fn decode_parts(token: &str) -> Option<(Value, Value)> {
    let mut parts = token.split('.');
    let mut next = || -> Option<Value> { serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts.next()?).ok()?).ok() };
    Some((next()?, next()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::tests::{ed25519_key, p256_key, test_key};
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};
    use serde_json::json;

    fn settings() -> TokenSettings {
        TokenSettings {
            powersync_url: "https://abc.powersync.journeyapps.com".into(),
            key_id: "ps-key-1".into(),
            alg: "RS256",
            ttl_seconds: DEFAULT_TTL_SECONDS,
            outlives_session: false,
            issuer: None,
            copy_claims: vec![],
        }
    }

    fn session(claims: Value) -> Session {
        Session { user_id: "user-1".into(), claims: claims.as_object().cloned().unwrap_or_default(), token: "t".into() }
    }

    fn sign(settings: &TokenSettings, session: &Session, now: u64) -> IssuedToken {
        let unsigned = unsigned(settings, session, now);
        let signature = RustSigner::sign_now(test_key(), unsigned.signing_input.as_bytes()).unwrap();
        issued(settings, unsigned, &signature)
    }

    #[test]
    fn token_has_powersync_claims_and_an_eight_hour_lifetime() {
        let body = sign(&settings(), &session(json!({})), 1_761_158_400);
        let (header, claims) = decode_parts(&body.token).unwrap();
        assert_eq!(header, json!({"alg": "RS256", "typ": "JWT", "kid": "ps-key-1"}));
        assert_eq!(
            claims,
            json!({"sub": "user-1", "aud": "https://abc.powersync.journeyapps.com", "iat": 1_761_158_400u64, "exp": 1_761_158_400u64 + 28_800})
        );
        assert_eq!(body.user_id, "user-1");
        assert_eq!(body.powersync_url, "https://abc.powersync.journeyapps.com");
        assert_eq!(body.endpoint, body.powersync_url);
    }

    #[test]
    fn token_expires_with_a_session_that_ends_before_the_ttl() {
        let now = 1_800_000_000;
        let (_, claims) = decode_parts(&sign(&settings(), &session(json!({"exp": now + 3600})), now).token).unwrap();
        assert_eq!((claims["iat"].as_u64(), claims["exp"].as_u64()), (Some(now), Some(now + 3600)));
        // A fractional NumericDate counts down to the second.
        let (_, claims) =
            decode_parts(&sign(&settings(), &session(json!({"exp": now as f64 + 99.9})), now).token).unwrap();
        assert_eq!(claims["exp"], now + 99);
        let unsigned = unsigned(&settings(), &session(json!({"exp": now + 3600})), now);
        assert_eq!(unsigned.expires_at, now + 3600, "the answer's expires_at is the token's exp");
    }

    #[test]
    fn a_session_that_outlives_the_ttl_gets_the_ttl() {
        let now = 1_800_000_000;
        let (_, claims) = decode_parts(&sign(&settings(), &session(json!({"exp": now + 86_400})), now).token).unwrap();
        assert_eq!(claims["exp"], now + DEFAULT_TTL_SECONDS);
    }

    #[test]
    fn a_session_in_its_last_seconds_gets_a_token_of_one_minute() {
        let now = 1_800_000_000;
        for exp in [now + 10, now, now - 29] {
            let (_, claims) = decode_parts(&sign(&settings(), &session(json!({"exp": exp})), now).token).unwrap();
            assert_eq!(claims["exp"], now + MIN_TTL_SECONDS, "session exp {exp}");
        }
    }

    #[test]
    fn outlives_session_gives_every_token_the_whole_ttl() {
        let now = 1_800_000_000;
        let s = TokenSettings { outlives_session: true, ..settings() };
        let (_, claims) = decode_parts(&sign(&s, &session(json!({"exp": now + 10})), now).token).unwrap();
        assert_eq!(claims["exp"], now + DEFAULT_TTL_SECONDS);
    }

    #[test]
    fn expires_at_is_iso8601_utc_with_milliseconds() {
        let body = sign(&settings(), &session(json!({})), 1_761_136_200 - 28_800);
        assert_eq!(body.expires_at, "2025-10-22T12:30:00.000Z");
    }

    #[test]
    fn token_verifies_with_the_public_key_under_powersync_rules() {
        let body = sign(&settings(), &session(json!({})), 1_800_000_000);
        let jwk: jsonwebtoken::jwk::Jwk =
            serde_json::from_value(serde_json::to_value(test_key().public_jwk("ps-key-1")).unwrap()).unwrap();
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&["https://abc.powersync.journeyapps.com"]);
        validation.validate_exp = false;
        let data =
            jsonwebtoken::decode::<Value>(&body.token, &DecodingKey::from_jwk(&jwk).unwrap(), &validation).unwrap();
        let lifetime = data.claims["exp"].as_u64().unwrap() - data.claims["iat"].as_u64().unwrap();
        assert!(lifetime <= MAX_TTL_SECONDS);
    }

    #[test]
    fn configured_ttl_and_issuer_are_applied() {
        let mut s = settings();
        s.ttl_seconds = 600;
        s.issuer = Some("https://worker.example".into());
        let (_, claims) = decode_parts(&sign(&s, &session(json!({})), 1000).token).unwrap();
        assert_eq!(claims["exp"], 1600);
        assert_eq!(claims["iss"], "https://worker.example");
    }

    #[test]
    fn selected_session_claims_are_copied_and_parameters_must_be_an_object() {
        let mut s = settings();
        s.copy_claims = vec!["role".into(), "email".into(), "missing".into(), "parameters".into()];
        let (_, claims) = decode_parts(
            &sign(
                &s,
                &session(json!({"role": "authenticated", "email": "a@b.c", "parameters": "x", "phone": "1"})),
                1000,
            )
            .token,
        )
        .unwrap();
        assert_eq!(claims["role"], "authenticated");
        assert_eq!(claims["email"], "a@b.c");
        assert!(claims.get("missing").is_none() && claims.get("parameters").is_none() && claims.get("phone").is_none());
        let (_, claims) = decode_parts(&sign(&s, &session(json!({"parameters": {"team": "t1"}})), 1000).token).unwrap();
        assert_eq!(claims["parameters"], json!({"team": "t1"}));
    }

    #[test]
    fn copied_claims_cannot_override_sub_or_aud() {
        let mut s = settings();
        s.copy_claims = vec!["sub".into(), "aud".into()];
        let (_, claims) = decode_parts(&sign(&s, &session(json!({"sub": "evil", "aud": "evil"})), 1000).token).unwrap();
        assert_eq!(claims["sub"], "user-1");
        assert_eq!(claims["aud"], "https://abc.powersync.journeyapps.com");
    }

    /// A token signed with `key` (its own alg), verified by `jsonwebtoken` against the public
    /// JWK the JWKS publishes, with PowerSync's rules (alg fixed by the key, aud, lifetime).
    fn verify_with_public_jwk(key: &SigningKey) -> (Value, Value) {
        let s = TokenSettings { alg: key.alg(), ..settings() };
        let unsigned = unsigned(&s, &session(json!({})), 1_800_000_000);
        let signature = RustSigner::sign_now(key, unsigned.signing_input.as_bytes()).unwrap();
        let token = issued(&s, unsigned, &signature).token;
        let jwk: jsonwebtoken::jwk::Jwk =
            serde_json::from_value(serde_json::to_value(key.public_jwk("ps-key-1")).unwrap()).unwrap();
        let alg: Algorithm = key.alg().parse().unwrap();
        let mut validation = Validation::new(alg);
        validation.set_audience(&["https://abc.powersync.journeyapps.com"]);
        validation.validate_exp = false;
        let data = jsonwebtoken::decode::<Value>(&token, &DecodingKey::from_jwk(&jwk).unwrap(), &validation).unwrap();
        assert_eq!(
            URL_SAFE_NO_PAD.decode(token.rsplit('.').next().unwrap()).unwrap().len(),
            if key.kind() == KeyKind::Rs256 { 256 } else { 64 }
        );
        let (header, _) = decode_parts(&token).unwrap();
        (header, data.claims)
    }

    #[test]
    fn es256_token_has_an_es256_header_and_verifies_with_the_published_jwk() {
        let (header, claims) = verify_with_public_jwk(&p256_key());
        assert_eq!(header, json!({"alg": "ES256", "typ": "JWT", "kid": "ps-key-1"}));
        assert_eq!(claims["sub"], "user-1");
    }

    #[test]
    fn eddsa_token_has_an_eddsa_header_and_verifies_with_the_published_jwk() {
        let (header, claims) = verify_with_public_jwk(&ed25519_key());
        assert_eq!(header, json!({"alg": "EdDSA", "typ": "JWT", "kid": "ps-key-1"}));
        assert_eq!(claims["aud"], "https://abc.powersync.journeyapps.com");
    }

    #[test]
    fn rs256_token_verifies_with_the_published_jwk_too() {
        let (header, _) = verify_with_public_jwk(test_key());
        assert_eq!(header["alg"], "RS256");
    }

    #[test]
    fn a_token_of_one_key_type_does_not_verify_with_another_type_s_jwk() {
        let (ec, ed) = (p256_key(), ed25519_key());
        let s = TokenSettings { alg: ed.alg(), ..settings() };
        let unsigned = unsigned(&s, &session(json!({})), 1_800_000_000);
        let token =
            issued(&s, unsigned.clone(), &RustSigner::sign_now(&ed, unsigned.signing_input.as_bytes()).unwrap()).token;
        let jwk: jsonwebtoken::jwk::Jwk =
            serde_json::from_value(serde_json::to_value(ec.public_jwk("ps-key-1")).unwrap()).unwrap();
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.validate_aud = false;
        assert!(jsonwebtoken::decode::<Value>(&token, &DecodingKey::from_jwk(&jwk).unwrap(), &validation).is_err());
    }

    #[test]
    fn eddsa_signatures_are_deterministic() {
        let key = ed25519_key();
        let a = RustSigner::sign_now(&key, b"input").unwrap();
        assert_eq!(a, RustSigner::sign_now(&key, b"input").unwrap());
    }

    #[test]
    fn rs256_signatures_are_deterministic() {
        let a = sign(&settings(), &session(json!({})), 1000);
        let b = sign(&settings(), &session(json!({})), 1000);
        assert_eq!(a.token, b.token);
    }
}
