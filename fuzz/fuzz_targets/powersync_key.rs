//! `POWERSYNC_PRIVATE_KEY`: `SigningKey::parse` never panics. The first byte picks the shape:
//! - `0x01`/`0x02`: the rest is DER, armoured here as a PKCS#8 / PKCS#1 PEM (reaches the DER
//!   and RSA parameter checks directly);
//! - anything else: the whole input is the setting's text (PEM, JWK JSON, base64 of either...).
#![no_main]

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use libfuzzer_sys::fuzz_target;
use powersync_supabase_worker::keys::SigningKey;

fuzz_target!(|data: &[u8]| {
    let text = match data.split_first() {
        Some((0x01, der)) => {
            format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n", STANDARD.encode(der))
        }
        Some((0x02, der)) => {
            format!("-----BEGIN RSA PRIVATE KEY-----\n{}\n-----END RSA PRIVATE KEY-----\n", STANDARD.encode(der))
        }
        _ => String::from_utf8_lossy(data).into_owned(),
    };
    match SigningKey::parse(&text) {
        Ok(key) => assert!(key.bits() >= 2048),
        Err(error) => {
            let _ = (error.code(), error.reason());
        }
    }
});
