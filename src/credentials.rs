//! What the worker repeats of text it did not write: credentials kept out, length bounded; and
//! public keys given where a secret belongs (the service key, the JWT secret).

use std::borrow::Cow;

/// `text` cut after `max_chars` characters, with `…` where it was cut: a log line quoting the
/// caller's text (a token's header, a transaction id, an upstream's body) stays short.
pub fn clipped(text: &str, max_chars: usize) -> Cow<'_, str> {
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => Cow::Owned(format!("{}…", &text[..cut])),
        None => Cow::Borrowed(text),
    }
}

/// What replaces a credential.
pub const REDACTED: &str = "[redacted]";

/// `text` without credentials: the word after `Bearer`, anything shaped like a JWT (`eyJ…` with a
/// dot: a session, the legacy anon and service keys) and Supabase's API keys (`sb_secret_…`,
/// `sb_publishable_…`). For text the worker repeats but did not write: an upstream's answer (a
/// debugging proxy, an echo service or a gateway's error page behind a wrong `SUPABASE_URL`
/// reflects the request's headers), which is answered to the user, logged and dead-lettered; and
/// configuration problems, which quote a setting's value (a secret pasted under the wrong name)
/// and are logged and listed by the unauthenticated `/health`.
pub fn redact(text: &str) -> String {
    let is_token_char = |c: char| c.is_ascii_alphanumeric() || "-._~+/=".contains(c);
    let mut after_bearer = false;
    replace_runs(text, is_token_char, |gap, run| {
        // `Bearer <token>`, `Bearer: <token>`
        let secret = (after_bearer && gap.chars().all(|c| c.is_whitespace() || c == ':'))
            || (run.starts_with("eyJ") && run.contains('.'))
            || run.starts_with("sb_secret_")
            || run.starts_with("sb_publishable_");
        after_bearer = run.eq_ignore_ascii_case("bearer");
        secret
    })
}

/// `text` as [`redact`] leaves it, and without anything else that may be a secret: a PEM block
/// (from `-----BEGIN` to the end of its `-----END …-----` line, or of the text) and any run of 32
/// or more base64 characters (`A-Z a-z 0-9 + / = _ -`) holding both a digit and a letter (a JWT
/// secret, a key's body, a hex or base64 key, in any case). For what the worker says about its
/// own configuration: a problem may quote a setting's value, and a secret pasted under the wrong
/// name must reach neither the log nor the unauthenticated `/health`. Not for an upstream's
/// answer, whose ids (a uuid is such a run) the user needs to read.
pub fn redact_setting_text(text: &str) -> String {
    let mut unpemmed = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN") {
        unpemmed.push_str(&rest[..start]);
        unpemmed.push_str(REDACTED);
        let block = &rest[start..];
        rest = match block.find("-----END").and_then(|end| {
            let label = end + "-----END".len();
            block[label..].find("-----").map(|close| label + close + "-----".len())
        }) {
            Some(after) => &block[after..],
            None => "",
        };
    }
    unpemmed.push_str(rest);
    let is_base64 = |c: char| c.is_ascii_alphanumeric() || "+/=_-".contains(c);
    replace_runs(&redact(&unpemmed), is_base64, |_, run| {
        run.len() >= 32 && run.bytes().any(|b| b.is_ascii_digit()) && run.bytes().any(|b| b.is_ascii_alphabetic())
    })
}

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
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let role = || {
        let payload = key.split('.').nth(1).filter(|_| key.split('.').count() == 3)?;
        let claims: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
        claims.get("role")?.as_str().map(str::to_string)
    };
    let what = if key.starts_with("sb_secret_") || role().as_deref() == Some("service_role") {
        // a service key, even one also given as SUPABASE_ANON_KEY (a server-side setup)
        return None;
    } else if anon_key == Some(key) {
        "is the same key as SUPABASE_ANON_KEY"
    } else if key.starts_with("sb_publishable_") {
        "is a publishable key (sb_publishable_…)"
    } else {
        match role().as_deref() {
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
/// JWT (the legacy anon key), or a public key (a JWK's JSON, a PEM block) copied from the
/// dashboard's JWT Keys page. Any of them as the HS256 key lets anyone sign a session for any
/// user. `None` for anything else.
pub fn public_value_as_jwt_secret(secret: &str, project_keys: &[String]) -> Option<&'static str> {
    let secret = secret.trim();
    let segments: Vec<&str> = secret.split('.').collect();
    if project_keys.iter().any(|key| key == secret) {
        Some("is one of the project's API keys (SUPABASE_ANON_KEY or SUPABASE_SERVICE_ROLE_KEY)")
    } else if secret.starts_with("sb_") {
        Some("is an API key (sb_…), not the JWT secret")
    } else if segments.len() == 3 && secret.starts_with("eyJ") {
        Some("is a JWT (an API key or a session), not the JWT secret")
    } else if secret.starts_with('{') || secret.contains("-----BEGIN") {
        Some("is a key (JWK or PEM), not the JWT secret: a public key as the HS256 secret lets anyone sign sessions")
    } else {
        None
    }
}

/// `text` with each maximal run of `in_run` characters for which `secret(the text before it since
/// the last run, the run)` holds replaced by [`REDACTED`].
fn replace_runs(text: &str, in_run: impl Fn(char) -> bool, mut secret: impl FnMut(&str, &str) -> bool) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        let (gap, from) = rest.split_at(rest.find(&in_run).unwrap_or(rest.len()));
        let (run, tail) = from.split_at(from.find(|c: char| !in_run(c)).unwrap_or(from.len()));
        out.push_str(gap);
        if !run.is_empty() {
            out.push_str(if secret(gap, run) { REDACTED } else { run });
        }
        rest = tail;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipped_cuts_after_the_limit_in_characters_and_marks_the_cut() {
        assert_eq!(clipped("abc", 3), "abc");
        assert_eq!(clipped("abcd", 3), "abc…");
        assert_eq!(clipped("ééééé", 2), "éé…");
        assert!(matches!(clipped("short", 10), Cow::Borrowed(_)));
    }

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
    fn bearer_tokens_jwts_and_supabase_keys_are_redacted_and_nothing_else() {
        let text = "Authorization: Bearer abc.def\napikey: sb_secret_N7UND0Ug-x\nkey eyJhbGciOi.eyJzdWIi.sig, sb_publishable_Q1w";
        assert_eq!(redact(text), "Authorization: Bearer [redacted]\napikey: [redacted]\nkey [redacted], [redacted]");
        for plain in ["\"todos\" is not a plain identifier", "Failing row contains (1, eyJ, bearer).", "sb_other"] {
            assert_eq!(redact(plain), plain);
        }
    }

    #[test]
    fn setting_text_loses_pem_blocks_and_long_secret_shaped_runs_and_keeps_names_and_urls() {
        let pem = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----";
        assert_eq!(
            redact_setting_text(&format!("\"{pem}\": each entry is * or an origin")),
            "\"[redacted]\": each entry is * or an origin"
        );
        assert_eq!(
            redact_setting_text("unknown mode \"-----BEGIN EC PRIVATE KEY-----\nabc"),
            "unknown mode \"[redacted]"
        );
        let secret = "Xy9f2kQ7Lm3pR8sT1vW4zA6bC0dE5gH2jK";
        for quoted in [
            secret.to_string(),
            secret.to_lowercase(),
            "super-secret-jwt-token-with-at-least-32-characters-long".into(),
        ] {
            assert_eq!(redact_setting_text(&format!("\"{quoted}\" is not a bucket")), "\"[redacted]\" is not a bucket");
        }
        for plain in [
            "\"https://abcdefghijklmnopqrst.supabase.co/auth/v1\" is not an origin",
            "\"public.a_rather_long_table_name_without_digits\" is not in UPLOAD_TABLES",
            "UPSTREAM_TIMEOUT_MS must be 100 to 60000",
        ] {
            assert_eq!(redact_setting_text(plain), plain);
        }
        assert_eq!(redact_setting_text("Bearer abc"), "Bearer [redacted]", "and what redact removes");
    }
}
