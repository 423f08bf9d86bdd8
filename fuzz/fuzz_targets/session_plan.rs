//! Session tokens: verification at a fixed time never panics and accepts nothing unsigned.
//! The verifier has an HS256 secret, a cached JWKS with one P-256 and one RSA key, and a
//! third-party issuer (Firebase project `fuzz-project`) with the same two keys cached, so tokens
//! naming `ec1`/`rsa1` reach the signature checks of both. An HS256 token claiming the Firebase
//! issuer must be refused (no shared secret with a third party). The first byte picks the input's shape:
//! - `0x01`: the rest is a claims object, signed with the secret (claim rules are fuzzed: the
//!   result must match the rules of docs/token.md);
//! - `0x02`: the rest is `header 0xFF payload 0xFF signature`, each base64url-encoded here;
//! - anything else: the whole input is the token text.
#![no_main]
#![allow(unused_imports, dead_code)]

use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use libfuzzer_sys::fuzz_target;
use powersync_supabase_worker::http::HttpResponse;
use powersync_supabase_worker::http::{HttpRequest, Method};
use powersync_supabase_worker::session::third_party::{Issuer, KeySource, Provider, ThirdPartySettings};
use powersync_supabase_worker::session::{SessionSettings, Step, Verifier};
use serde_json::{json, Value};

const NOW: u64 = 1_800_000_000;
const URL: &str = "http://127.0.0.1:54321";
const SECRET: &str = "super-secret-jwt-token-with-at-least-32-characters-long";
const FIREBASE_KEYS: &str = "https://keys.example/firebase";

fn verifier() -> Verifier {
    {
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
}

/// The claim rules of docs/token.md ("`/powersync-token`").
fn acceptable(claims: &serde_json::Map<String, Value>) -> bool {
    let number = |name: &str| claims.get(name).and_then(Value::as_f64);
    let now = NOW as f64;
    !matches!(claims.get("role").and_then(Value::as_str), Some("anon" | "service_role"))
        && number("exp").is_some_and(|exp| now < exp + 30.0)
        && !number("nbf").is_some_and(|t| t > now + 30.0)
        && !number("iat").is_some_and(|t| t > now + 30.0)
        && match claims.get("aud") {
            Some(Value::String(aud)) => aud == "authenticated",
            Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some("authenticated")),
            _ => false,
        }
        && claims.get("iss").and_then(Value::as_str) == Some(&format!("{URL}/auth/v1"))
        && claims.get("sub").and_then(Value::as_str).is_some_and(|s| !s.trim().is_empty())
}

fuzz_target!(|data: &[u8]| {
    let token = String::from_utf8_lossy(data);
    let _ = powersync_supabase_worker::session::unverified_claims(&token);
    let mut v = verifier();
    let _ = v.describe(&token);
    let _ = v.remote_check_request(&token);
    let mut step = v.plan(&token, NOW);
    for round in 0..4 {
        match &step {
            Step::Ready | Step::RefetchSuppressed => {
                if let Err(e) = v.verify(&token, NOW) { let _ = v.explain(&token, &step, e).reason(); }
                else { panic!("accepted {token}"); }
                break;
            }
            Step::Wait { .. } => { let s2 = step.clone(); step = v.after_wait(&token, NOW, &s2, round % 2 == 0); }
            _ => {
                if let Some(r) = step.request() { assert!(!r.url.contains('\n')); }
                let s2 = step.clone();
                let answer = if round % 2 == 0 { HttpResponse { status: 404, headers: vec![], body: String::new() } }
                    else { HttpResponse { status: 200, headers: vec![], body: token.to_string() } };
                step = v.accept(&s2, Ok(answer), NOW + round);
            }
        }
    }
});
