//! Session tokens: verification at a fixed time never panics and accepts nothing unsigned
//! (the verifier: `common/session.rs`). An HS256 token claiming the Firebase issuer must be
//! refused (no shared secret with a third party). The first byte picks the input's shape:
//! - `0x01`: the rest is a claims object, signed with the secret (claim rules are fuzzed: the
//!   result must match the rules of docs/token.md);
//! - `0x02`: the rest is `header 0xFF payload 0xFF signature`, each base64url-encoded here;
//! - anything else: the whole input is the token text.
#![no_main]

#[path = "common/session.rs"]
mod common;

use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::{acceptable, NOW, SECRET};
use libfuzzer_sys::fuzz_target;
use powersync_supabase_worker::session::Verifier;
use serde_json::Value;

fn verifier() -> &'static Verifier {
    static VERIFIER: OnceLock<Verifier> = OnceLock::new();
    VERIFIER.get_or_init(common::new_verifier)
}

fuzz_target!(|data: &[u8]| {
    let verifier = verifier();
    match data.split_first() {
        Some((0x01, rest)) => {
            let Ok(Value::Object(claims)) = serde_json::from_slice::<Value>(rest) else { return };
            let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
            let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
            let Ok(token) = jsonwebtoken::encode(&header, &claims, &key) else { return };
            let result = verifier.verify(&token, NOW);
            assert_eq!(result.is_ok(), acceptable(&claims), "{claims:?} -> {result:?}");
        }
        Some((0x02, rest)) => {
            let mut parts = rest.splitn(3, |b| *b == 0xFF).map(|p| URL_SAFE_NO_PAD.encode(p));
            let token = format!(
                "{}.{}.{}",
                parts.next().unwrap_or_default(),
                parts.next().unwrap_or_default(),
                parts.next().unwrap_or_default()
            );
            assert!(verifier.verify(&token, NOW).is_err(), "{token}");
        }
        _ => {
            let token = String::from_utf8_lossy(data);
            assert!(verifier.verify(&token, NOW).is_err(), "{token}");
        }
    }
});
