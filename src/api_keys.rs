//! Supabase's API keys and the JWT secret, told apart: a public key given where a secret
//! belongs (the service key, the JWT secret) is a configuration problem, never a silent
//! downgrade or a key anyone could sign with.

use crate::session;

/// Why `key`, given as `SUPABASE_SERVICE_ROLE_KEY`, is not a service key: one of the project's
/// public keys (`anon_key` itself, an `sb_publishable_…` key, or a legacy JWT key whose `role`
/// is `anon` or `authenticated`; its signature is Supabase's to check, the role is only read).
/// Such a key runs every request as a role without a user, under row-level security: in service
/// mode the policies would refuse every PUT (fatal) and hide every row from PATCH and DELETE
/// (answered `success`, unchanged), so writes would be lost. The problem to report for the
/// setting `mode_setting` (`UPLOAD_MODE`, `STORAGE_MODE`) that asked for the service key, never
/// quoting the key; `None` for anything else (an `sb_secret_…` key, a `service_role` JWT, a key
/// of a form the worker cannot read).
pub fn public_key_as_service_key(key: &str, anon_key: Option<&str>, mode_setting: &str) -> Option<String> {
    let claims = session::unverified_claims(key);
    let role = claims.as_ref().and_then(|claims| claims.get("role")?.as_str());
    let what = if key.starts_with("sb_secret_") || role == Some("service_role") {
        // a service key, even one also given as SUPABASE_ANON_KEY (a server-side setup)
        return None;
    } else if anon_key == Some(key) {
        "is the same key as SUPABASE_ANON_KEY"
    } else if key.starts_with("sb_publishable_") {
        "is a publishable key (sb_publishable_…)"
    } else {
        match role {
            Some("anon") => "is a key whose role is anon (an anon key)",
            Some("authenticated") => "is a key whose role is authenticated (a user's token)",
            _ => return None,
        }
    };
    Some(format!(
        "{what}: {mode_setting}=service needs the project's service key (a secret key, or the \
         legacy service_role key), which bypasses row-level security; with a public key the \
         policies would refuse or hide every write"
    ))
}

/// Why `secret`, given as `SUPABASE_JWT_SECRET`, is no HS256 secret but a value anyone may read:
/// one of the project's API keys (`project_keys`: the anon key, the service key), an `sb_…` key, a
/// JWT (the legacy anon key), a public key (a JWK's JSON, a PEM block) copied from the dashboard's
/// JWT Keys page, the same in base64 (the form the PowerSync demos give a public key) or a public
/// key's DER in base64, or a URL (the project's JWKS address). Any of them as the HS256 key lets
/// anyone sign a session for any user. `None` for anything else: a secret that merely looks like
/// base64 passes, since only what it decodes to counts.
pub fn public_value_as_jwt_secret(secret: &str, project_keys: &[String]) -> Option<&'static str> {
    let secret = secret.trim();
    if project_keys.iter().any(|key| key == secret) {
        Some("is one of the project's API keys (SUPABASE_ANON_KEY or SUPABASE_SERVICE_ROLE_KEY)")
    } else if secret.starts_with("sb_") {
        Some("is an API key (sb_…), not the JWT secret")
    } else if session::unverified_claims(secret).is_some() {
        Some("is a JWT (an API key or a session), not the JWT secret")
    } else if secret.starts_with('{') || secret.contains("-----BEGIN") {
        Some("is a key (JWK or PEM), not the JWT secret: a public key as the HS256 secret lets anyone sign sessions")
    } else if secret.starts_with("https://") || secret.starts_with("http://") {
        Some("is a URL (the project's JWKS address?), not the JWT secret: what it serves is public")
    } else if is_encoded_public_key(secret) {
        Some(
            "is a key in base64 (a JWK, a PEM block or a public key's DER), not the JWT secret: a public key as \
             the HS256 secret lets anyone sign sessions",
        )
    } else {
        None
    }
}

/// Whether `text` is base64 (standard or URL-safe, padded or not) of a JWK or key set (a JSON
/// object with `kty` or `keys`), of a PEM block, or of a public key's DER (SubjectPublicKeyInfo,
/// told by its algorithm's OID: parsing it whole cost 2 KB of the gzipped bundle).
/// Random bytes are none of them, so a secret that is itself base64 is never taken for one.
fn is_encoded_public_key(text: &str) -> bool {
    let Some(bytes) = crate::keys::decode_base64(text) else { return false };
    // DER of a SubjectPublicKeyInfo: a SEQUENCE whose algorithm names RSA, EC or Ed25519 within
    // its first bytes (the OID with its tag and length; random bytes hold it by a chance of about
    // 2^-40 or less)
    const KEY_OIDS: [&[u8]; 3] = [
        &[0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01],
        &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01],
        &[0x06, 0x03, 0x2b, 0x65, 0x70],
    ];
    let head = &bytes[..bytes.len().min(24)];
    if bytes.first() == Some(&0x30) && KEY_OIDS.iter().any(|oid| head.windows(oid.len()).any(|w| w == *oid)) {
        return true;
    }
    let Ok(decoded) = std::str::from_utf8(&bytes) else { return false };
    decoded.contains("-----BEGIN")
        || serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(decoded)
            .is_ok_and(|object| object.contains_key("kty") || object.contains_key("keys"))
}

/// JWT secrets anyone can read: the Supabase CLI's local default, self-hosted Supabase's
/// `.env.example` default and `secrets.example`'s placeholder. A project whose sessions one of
/// them verifies accepts a session anyone signed, for any user; the worker allows them only
/// with a loopback `SUPABASE_URL` (`make dev`, tests).
pub const PUBLISHED_JWT_SECRETS: [&str; 3] = [
    "super-secret-jwt-token-with-at-least-32-characters-long",
    "your-super-secret-jwt-token-with-at-least-32-characters-long",
    "your-super-secret-jwt-token-with-at-least-32-characters",
];

/// Whether `secret` is one of the [`PUBLISHED_JWT_SECRETS`].
pub fn is_published_jwt_secret(secret: &str) -> bool {
    PUBLISHED_JWT_SECRETS.contains(&secret.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_keys_given_as_the_service_key_are_named_and_service_keys_pass() {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine;
        let jwt = |claims: &str| format!("eyJhbGciOiJIUzI1NiJ9.{}.c2ln", URL_SAFE_NO_PAD.encode(claims));
        let anon = jwt(r#"{"iss":"supabase","role":"anon"}"#);
        let problem = |key: &str, anon_key: Option<&str>| public_key_as_service_key(key, anon_key, "UPLOAD_MODE");
        let anon_problem = problem(&anon, None).unwrap();
        assert!(anon_problem.starts_with("is a key whose role is anon"), "{anon_problem}");
        assert!(anon_problem.contains("UPLOAD_MODE=service needs the project's service key"), "{anon_problem}");
        assert!(!anon_problem.contains(&anon), "the key is not quoted");
        assert!(problem("key-a", Some("key-a")).unwrap().starts_with("is the same key as SUPABASE_ANON_KEY"));
        assert!(problem("sb_publishable_Q1w", None).unwrap().starts_with("is a publishable key"));
        let user = jwt(r#"{"sub":"u","role":"authenticated"}"#);
        assert!(problem(&user, Some(&anon)).unwrap().starts_with("is a key whose role is authenticated"));
        let service = jwt(r#"{"iss":"supabase","role":"service_role"}"#);
        for key in [service.as_str(), "sb_secret_N7UND0Ug", "svc", "a.b.c", "a.!!.c", &jwt("[1]")] {
            assert_eq!(problem(key, Some(&anon)), None, "{key}");
        }
        // a service key also given as the anon key is still a service key
        assert_eq!(problem("sb_secret_N7UND0Ug", Some("sb_secret_N7UND0Ug")), None);
        assert_eq!(problem(&service, Some(&service)), None);
    }

    #[test]
    fn public_values_given_as_the_jwt_secret_are_named_and_secrets_pass() {
        let keys = ["anon-key-of-the-project-0123456789".to_string()];
        for (value, why) in [
            ("anon-key-of-the-project-0123456789", "one of the project's API keys"),
            ("sb_publishable_Q1wE2rT3yU4iO5pA6sD7fG8hJ9kL0", "an API key (sb_…)"),
            ("eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoiYW5vbiJ9.c2lnbmF0dXJlLW9mLXRoZS1rZXk", "a JWT"),
            (r#"{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x"}"#, "JWK or PEM"),
            (
                "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----",
                "JWK or PEM",
            ),
        ] {
            let said = public_value_as_jwt_secret(value, &keys).unwrap_or_else(|| panic!("{value}"));
            assert!(said.contains(why), "{value}: {said}");
        }
        for secret in ["super-secret-jwt-token-with-at-least-32-characters-long", "a.b.c.d-with-32-characters-or-more"]
        {
            assert_eq!(public_value_as_jwt_secret(secret, &keys), None, "{secret}");
        }
    }

    #[test]
    fn public_keys_in_base64_and_urls_given_as_the_jwt_secret_are_named_and_base64_secrets_pass() {
        // Found by an audit: these passed, and anyone who read them could sign sessions.
        use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
        use base64::Engine;
        let jwk = r#"{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x"}"#;
        let spki = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEzjOvcGzNZ+ht3COpg9fClrcq+2Zbw0j4NXZVe9C6VmCSWY2Y/9GACrPNpRGo/n/efVYoqOX0k2BFDsM7QAXlSQ==";
        let pem = format!("-----BEGIN PUBLIC KEY-----\n{spki}\n-----END PUBLIC KEY-----\n");
        for (value, why) in [
            ("https://ref.supabase.co/auth/v1/.well-known/jwks.json".to_string(), "a URL"),
            ("http://127.0.0.1:54321/auth/v1/keys".to_string(), "a URL"),
            (STANDARD.encode(jwk), "a key in base64"),
            (URL_SAFE_NO_PAD.encode(format!(r#"{{"keys":[{jwk}]}}"#)), "a key in base64"),
            (STANDARD.encode(&pem), "a key in base64"),
            (spki.to_string(), "a key in base64"),
            // an Ed25519 key's (RFC 8410) and the start of an RSA key's
            ("MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=".to_string(), "a key in base64"),
            ("MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA".to_string(), "a key in base64"),
            (spki.replace('+', "-").replace('/', "_").trim_end_matches('=').to_string(), "a key in base64"),
        ] {
            let said = public_value_as_jwt_secret(&value, &[]).unwrap_or_else(|| panic!("{value}"));
            assert!(said.contains(why), "{value}: {said}");
        }
        // secrets that are themselves base64 (hosted Supabase's legacy secrets are), of random
        // bytes, of text, of JSON that is no key
        let random: Vec<u8> = (0u32..64).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        for secret in [
            STANDARD.encode(&random),
            URL_SAFE_NO_PAD.encode(&random),
            STANDARD.encode("a secret of at least thirty-two characters"),
            STANDARD.encode(r#"{"not":"a key","padding":"to 32 characters"}"#),
            "{not base64: 32 characters or more}".replace('{', "("),
        ] {
            assert_eq!(public_value_as_jwt_secret(&secret, &[]), None, "{secret}");
        }
    }
}
