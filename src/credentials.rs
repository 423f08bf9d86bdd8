//! Credentials kept out of what the worker repeats.

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
    let mut out = String::with_capacity(text.len());
    let mut after_bearer = false;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if !is_token_char(c) {
            // `Bearer <token>`, `Bearer: <token>`
            after_bearer &= c.is_whitespace() || c == ':';
            out.push(c);
            rest = &rest[c.len_utf8()..];
            continue;
        }
        let end = rest.find(|c: char| !is_token_char(c)).unwrap_or(rest.len());
        let (run, tail) = rest.split_at(end);
        let secret = after_bearer
            || (run.starts_with("eyJ") && run.contains('.'))
            || run.starts_with("sb_secret_")
            || run.starts_with("sb_publishable_");
        after_bearer = run.eq_ignore_ascii_case("bearer");
        out.push_str(if secret { REDACTED } else { run });
        rest = tail;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_jwts_and_supabase_keys_are_redacted_and_nothing_else() {
        let text = "Authorization: Bearer abc.def\napikey: sb_secret_N7UND0Ug-x\nkey eyJhbGciOi.eyJzdWIi.sig, sb_publishable_Q1w";
        assert_eq!(redact(text), "Authorization: Bearer [redacted]\napikey: [redacted]\nkey [redacted], [redacted]");
        for plain in ["\"todos\" is not a plain identifier", "Failing row contains (1, eyJ, bearer).", "sb_other"] {
            assert_eq!(redact(plain), plain);
        }
    }
}
