//! What the worker repeats of text it did not write: credentials kept out, length bounded.

use std::borrow::Cow;

/// `text` cut after `max_chars` characters, with `…` where it was cut: a log line quoting the
/// caller's text (a token's header, a transaction id, an upstream's body) stays short.
pub fn clipped(text: &str, max_chars: usize) -> Cow<'_, str> {
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => Cow::Owned(format!("{}…", &text[..cut])),
        None => Cow::Borrowed(text),
    }
}

/// [`redact`] of at most the first `max_chars` of `text` ([`clipped_for_redaction`]): for an
/// upstream's text, which can quote a value of megabytes the user sent.
pub fn redact_clipped(text: &str, max_chars: usize) -> String {
    redact(&clipped_for_redaction(text, max_chars))
}

/// `text` cut to at most `max_chars`, `…` marking the cut. Where the cut falls inside a word of
/// the characters tokens and keys are written in (escapes too), that whole word is dropped: a
/// credential cut short is one [`redact`] could no longer tell, and would pass on in part.
pub fn clipped_for_redaction(text: &str, max_chars: usize) -> Cow<'_, str> {
    match text.char_indices().nth(max_chars) {
        None => Cow::Borrowed(text),
        Some((cut, _)) => {
            let is_token_char = |c: char| c.is_ascii_alphanumeric() || "-._~+/=%\\".contains(c);
            Cow::Owned(format!("{}…", text[..cut].trim_end_matches(is_token_char)))
        }
    }
}

/// What replaces a credential.
pub const REDACTED: &str = "[redacted]";

/// `text` without credentials: the word after `Bearer`, anything shaped like a JWT (`eyJ…` with a
/// dot: a session, the legacy anon and service keys) and Supabase's API keys (`sb_secret_…`,
/// `sb_publishable_…`), wherever they stand: after a header's `:`, a query's or form's `=`, a
/// percent-escape (`Bearer%20eyJ…`) or a `+`. For text the worker repeats but did not write: an
/// upstream's answer (a debugging proxy, an echo service or a gateway's error page behind a wrong
/// `SUPABASE_URL` reflects the request's headers or its URL), which is answered to the user,
/// logged and dead-lettered; and configuration problems, which quote a setting's value (a secret
/// pasted under the wrong name) and are logged and listed by the unauthenticated `/health`.
///
/// Text that holds a credential only once its escapes are undone (`%XX`, twice encoded too, and
/// JSON's `\uXXXX`: `sb%5Fsecret_…`, a JWT whose dots are `%2E`) is answered unescaped, with the
/// credential redacted; text in which a credential's mark is still left after that (glued to a
/// word before it: `xsb_secret_…`) is withheld whole ([`WITHHELD`]).
pub fn redact(text: &str) -> String {
    let unescaped = unescaped(text);
    // a credential only the unescaped text shows: that text, redacted (text without escapes, the
    // usual case, is read once)
    let hidden = (unescaped != text).then(|| redact_as_written(&unescaped)).filter(|r| *r != unescaped);
    let redacted = hidden.unwrap_or_else(|| redact_as_written(text));
    if holds_a_credentials_mark(&redacted) {
        return WITHHELD.to_string();
    }
    redacted
}

/// What replaces text in which a credential could not be told apart from the rest.
pub const WITHHELD: &str = "[withheld: it held a credential]";

/// `text` with its percent-escapes (up to three times over) and JSON `\uXXXX` escapes undone.
fn unescaped(text: &str) -> String {
    let mut out = text.to_string();
    for _ in 0..3 {
        if !out.contains('%') {
            break;
        }
        let decoded = percent_encoding::percent_decode_str(&out).decode_utf8_lossy().into_owned();
        if decoded == out {
            break;
        }
        out = decoded;
    }
    if !out.contains("\\u") {
        return out;
    }
    let mut plain = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(at) = rest.find("\\u") {
        plain.push_str(&rest[..at]);
        let code = rest.get(at + 2..at + 6).and_then(|hex| u32::from_str_radix(hex, 16).ok()).and_then(char::from_u32);
        match code {
            Some(c) => {
                plain.push(c);
                rest = &rest[at + 6..];
            }
            None => {
                plain.push_str("\\u");
                rest = &rest[at + 2..];
            }
        }
    }
    plain.push_str(rest);
    plain
}

/// The prefixes of Supabase's API keys.
const SUPABASE_KEY_PREFIXES: [&str; 2] = ["sb_secret_", "sb_publishable_"];

/// A base64url character, of which keys and JWT segments are made.
fn is_base64url(b: &u8) -> bool {
    b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_'
}

/// Whether `run` starts like a Supabase API key: one of [`SUPABASE_KEY_PREFIXES`] and at least 16
/// more key characters (a key has about 31; `app_sb_secret_keys`, a table's name, is no key).
fn is_supabase_key(run: &str) -> bool {
    SUPABASE_KEY_PREFIXES.iter().any(|prefix| {
        run.strip_prefix(prefix)
            .is_some_and(|rest| rest.as_bytes().iter().take_while(|b| is_base64url(b)).take(16).count() >= 16)
    })
}

/// Whether `text` still holds a Supabase key ([`is_supabase_key`]) or a JWT (`eyJ`, then a run of
/// base64url characters, a dot and more), wherever it starts: glued to a word before it too.
fn holds_a_credentials_mark(text: &str) -> bool {
    if SUPABASE_KEY_PREFIXES.iter().any(|prefix| text.match_indices(prefix).any(|(at, _)| is_supabase_key(&text[at..])))
    {
        return true;
    }
    // Every `eyJ` inside one run of base64url characters shares that run's end: found once per
    // run, so that a run of `eyJeyJeyJ…` is read in linear time, not once per `eyJ` in it.
    let bytes = text.as_bytes();
    let mut run_end = 0;
    text.match_indices("eyJ").any(|(at, _)| {
        if at >= run_end {
            run_end = at + bytes[at..].iter().take_while(|b| is_base64url(b)).count();
        }
        run_end - at >= 8
            && bytes.get(run_end) == Some(&b'.')
            && bytes[run_end + 1..].iter().take_while(|b| is_base64url(b)).take(8).count() >= 8
    })
}

/// [`redact`]'s passes over the text as written.
fn redact_as_written(text: &str) -> String {
    // the word after `Bearer` (any token: base64 with `+ / =` too)
    let is_token_char = |c: char| c.is_ascii_alphanumeric() || "-._~+/=".contains(c);
    let mut after_bearer = false;
    let bearer_words = replace_runs(text, is_token_char, |gap, run| {
        // `Bearer <token>`, `Bearer: <token>`
        let secret = after_bearer && gap.chars().all(|c| c.is_whitespace() || c == ':');
        after_bearer = run.eq_ignore_ascii_case("bearer");
        secret
    });
    // then the shapes of the keys and sessions the worker holds, in the characters they are
    // made of (base64url and `.`), so that a `name=`, `%20` or `+` before one does not hide it
    let is_key_char = |c: char| c.is_ascii_alphanumeric() || "-._~".contains(c);
    let is_key = |run: &str| (run.starts_with("eyJ") && run.contains('.')) || is_supabase_key(run);
    replace_runs(&bearer_words, is_key_char, |gap, run| {
        // after `%`, a run starts with the escape's two hex digits: `%20eyJ…`, `%3Dsb_secret_…`
        let unescaped = match run.get(..2) {
            Some(hex) if gap.ends_with('%') && hex.bytes().all(|b| b.is_ascii_hexdigit()) => &run[2..],
            _ => run,
        };
        is_key(run) || is_key(unescaped)
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
    fn redact_reads_long_runs_of_credential_marks_in_linear_time() {
        // A user's own value (an id of `eyJeyJ…`) comes back quoted whole in PostgreSQL's error;
        // read once per `eyJ` in it, 240 KB took 11 s natively. A bound far above linear time.
        for text in ["eyJ".repeat(100_000), "sb_secret_".repeat(30_000), "eyJ".repeat(50_000) + "." + &"a".repeat(10)] {
            let started = std::time::Instant::now();
            let out = redact(&text);
            assert!(started.elapsed() < std::time::Duration::from_secs(5), "{:?}", started.elapsed());
            assert!(out == text || out == WITHHELD || out.contains(REDACTED), "{}", clipped(&out, 40));
        }
        assert_eq!(redact(&"eyJ".repeat(100_000)), "eyJ".repeat(100_000), "no dot: no JWT");
    }

    #[test]
    fn a_clip_for_redaction_never_leaves_a_credential_cut_short() {
        let token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyLTEifQ.c2lnbmF0dXJlLW9mLXRoZS10b2tlbg";
        let key = "sb_secret_N7UND0UgjKTVK-Uodkm0Hg_xSvEMPvz";
        for credential in [token, key, &format!("Bearer%20{token}")] {
            let text = format!("invalid input syntax for type uuid: \"{credential}\"");
            for max in 36..text.chars().count() {
                let out = redact_clipped(&text, max);
                assert!(!out.contains("eyJ") && !out.contains("sb_secret_"), "{max}: {out}");
                assert!(out.ends_with('…') && out.starts_with("invalid input syntax"), "{max}: {out}");
            }
            assert_eq!(redact_clipped(&text, 1_000), redact(&text), "short text: whole");
        }
    }

    #[test]
    fn clipped_cuts_after_the_limit_in_characters_and_marks_the_cut() {
        assert_eq!(clipped("abc", 3), "abc");
        assert_eq!(clipped("abcd", 3), "abc…");
        assert_eq!(clipped("ééééé", 2), "éé…");
        assert!(matches!(clipped("short", 10), Cow::Borrowed(_)));
    }

    #[test]
    fn bearer_tokens_jwts_and_supabase_keys_are_redacted_and_nothing_else() {
        let text = "Authorization: Bearer abc.def\napikey: sb_secret_N7UND0Ug-xSvEMPvzQ1wRt\nkey eyJhbGciOi.eyJzdWIi.sig, sb_publishable_ACJWlzQHlZjBrEguHvfOxg";
        assert_eq!(redact(text), "Authorization: Bearer [redacted]\napikey: [redacted]\nkey [redacted], [redacted]");
        for plain in ["\"todos\" is not a plain identifier", "Failing row contains (1, eyJ, bearer).", "sb_other"] {
            assert_eq!(redact(plain), plain);
        }
    }

    #[test]
    fn keys_and_sessions_are_redacted_in_query_form_and_percent_encoded_echoes() {
        let key = "sb_secret_N7UND0UgjKTVK-Uodkm0Hg_xSvEMPvz";
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1In0.c2ln";
        for (echo, expected) in [
            (format!("Received: apikey={key}&x=1"), "Received: apikey=[redacted]&x=1"),
            (format!("token={jwt}"), "token=[redacted]"),
            (format!("Authorization: Bearer%20{jwt}"), "Authorization: Bearer [redacted]"),
            (format!("authorization=Bearer+{jwt}"), "authorization=Bearer+[redacted]"),
            (format!("q=%22{key}%22"), "q=\"[redacted]\""),
            (format!("apikey:{key}"), "apikey:[redacted]"),
        ] {
            assert_eq!(redact(&echo), expected, "{echo}");
        }
        for plain in ["x=1&y=eyJ", "100%20done", "a=sb_other", "%22todos%22"] {
            assert_eq!(redact(plain), plain);
        }
    }

    #[test]
    fn keys_hidden_by_escapes_or_glued_to_a_word_are_redacted_or_the_text_withheld() {
        let key = "sb_secret_N7UND0Ug-jKTVKUodkm0Hg";
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1In0.c2ln";
        for (echo, expected) in [
            (format!("q=\\u0022{key}\\u0022"), "q=\"[redacted]\"".to_string()),
            (format!("q=%2522{key}%2522"), "q=\"[redacted]\"".to_string()),
            ("k=sb%5Fsecret_N7UND0UgjKTVKUodkm0Hg".to_string(), "k=[redacted]".to_string()),
            (format!("t={}", jwt.replace('.', "%2E")), "t=[redacted]".to_string()),
            ("k=sb_secret_N7UND0Ug%2DjKTVKUodkm0Hg tail".to_string(), "k=[redacted] tail".to_string()),
            (format!("x{key}"), WITHHELD.to_string()),
            (format!("token:a{jwt}"), WITHHELD.to_string()),
        ] {
            let redacted = redact(&echo);
            assert_eq!(redacted, expected, "{echo}");
            assert!(!redacted.contains("N7UND0Ug") && !redacted.contains("jKTVK") && !redacted.contains("c2ln"));
        }
        // nothing to hide: escapes stay as written, names that hold the prefixes stay
        for plain in [
            "100%20done",
            "a %2E b",
            "\\u0041 eyJ short.x",
            "SB_other",
            "permission denied for table app_sb_secret_keys",
            "column \"SB_SECRET_NAME\" does not exist",
            "Key (note)=(mysb_secret_vault) already exists.",
            "sb_secret_short",
        ] {
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
