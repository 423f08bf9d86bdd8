//! What the session fuzz targets share: a verifier with an HS256 secret, a cached JWKS with one
//! P-256 and one RSA key, and a third-party issuer (Firebase project `fuzz-project`) with the same
//! two keys cached, so tokens naming `ec1`/`rsa1` reach the signature checks of both; and the
//! claim rules of docs/token.md as an oracle.

use powersync_supabase_worker::http::HttpResponse;
use powersync_supabase_worker::http::{HttpRequest, Method};
use powersync_supabase_worker::session::third_party::{Issuer, KeySource, Provider, ThirdPartySettings};
use powersync_supabase_worker::session::{SessionSettings, Step, Verifier};
use serde_json::{json, Value};

pub const NOW: u64 = 1_800_000_000;
pub const URL: &str = "http://127.0.0.1:54321";
pub const SECRET: &str = "super-secret-jwt-token-with-at-least-32-characters-long";
const FIREBASE_KEYS: &str = "https://keys.example/firebase";

/// A fresh verifier, its key sets cached at `NOW - 10`.
pub fn new_verifier() -> Verifier {
    let mut verifier = Verifier::new(SessionSettings {
        supabase_url: URL.into(),
        jwt_secret: Some(SECRET.into()),
        jwks_url: format!("{URL}/auth/v1/.well-known/jwks.json"),
        issuer: format!("{URL}/auth/v1"),
        audiences: vec!["authenticated".into()],
        leeway_seconds: 30,
        jwks_cache_seconds: 600,
        project_keys: vec!["anon-key".into()],
        remote_check: false,
        anon_key: Some("anon-key".into()),
        third_party: ThirdPartySettings {
            issuers: vec![Issuer {
                provider: Provider::Firebase,
                issuer: "https://securetoken.google.com/fuzz-project".into(),
                audience: Some("fuzz-project".into()),
                keys: KeySource::Jwks(FIREBASE_KEYS.into()),
            }],
            allow_missing_role: false,
        },
    });
    // RFC 7517 appendix A.1 public keys
    let jwks = json!({"keys": [
        {"kty": "EC", "crv": "P-256", "kid": "ec1", "use": "sig",
         "x": "MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4", "y": "4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM"},
        {"kty": "RSA", "kid": "rsa1", "alg": "RS256", "e": "AQAB",
         "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"}
    ]});
    verifier.accept_jwks(Ok(HttpResponse { status: 200, headers: vec![], body: jwks.to_string() }), NOW - 10);
    let firebase = Step::FetchIssuerKeys { issuer: 0, request: HttpRequest::new(Method::Get, FIREBASE_KEYS) };
    verifier.accept(&firebase, Ok(HttpResponse { status: 200, headers: vec![], body: jwks.to_string() }), NOW - 10);
    verifier
}

/// The claim rules of docs/token.md ("`/powersync-token`").
pub fn acceptable(claims: &serde_json::Map<String, Value>) -> bool {
    let now = NOW as f64;
    // `nbf` and `iat` are optional, but when present a number of seconds not in the future
    let not_early =
        ["nbf", "iat"].iter().all(|name| claims.get(*name).is_none_or(|t| t.as_f64().is_some_and(|t| t <= now + 30.0)));
    !matches!(claims.get("role").and_then(Value::as_str), Some("anon" | "service_role"))
        && claims.get("exp").and_then(Value::as_f64).is_some_and(|exp| now < exp + 30.0)
        && not_early
        && match claims.get("aud") {
            Some(Value::String(aud)) => aud == "authenticated",
            Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some("authenticated")),
            _ => false,
        }
        && claims.get("iss").and_then(Value::as_str) == Some(&format!("{URL}/auth/v1"))
        && claims.get("sub").and_then(Value::as_str).is_some_and(|s| !s.trim().is_empty())
}
