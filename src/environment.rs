//! The worker's environment as settings: read by name, with problems collected instead of
//! stopping at the first, so a deployment can be fixed in one go. Every part of the
//! configuration (`config`, `session`, `upload::settings`, `storage::settings`) reads through it;
//! it depends on none of them.
//!
//! Values are trimmed (pasted secrets often carry a newline) and a blank value counts as unset.
//! Problems name the setting and say what is wrong; they never quote secret values.

use std::ops::RangeInclusive;

/// One missing or invalid setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub name: String,
    pub message: String,
}

impl Problem {
    /// A message may quote the setting's value (a secret pasted under the wrong name), and every
    /// outlet repeats it (the log, the unauthenticated `/health`, the dev tool): secret-shaped
    /// text is left out here, once ([`crate::credentials::redact_setting_text`]).
    pub fn new(name: &str, message: impl Into<String>) -> Problem {
        Problem { name: name.to_string(), message: crate::credentials::redact_setting_text(&message.into()) }
    }
}

pub struct Reader<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
    pub problems: Vec<Problem>,
}

impl<'a> Reader<'a> {
    pub fn new(lookup: &'a dyn Fn(&str) -> Option<String>) -> Reader<'a> {
        Reader { lookup, problems: Vec::new() }
    }

    /// The trimmed value; `None` when unset or blank.
    pub fn get(&self, name: &str) -> Option<String> {
        (self.lookup)(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
    }

    /// The value exactly as set, blank included (for settings where "set but empty" means
    /// something other than "unset").
    pub fn get_untrimmed(&self, name: &str) -> Option<String> {
        (self.lookup)(name)
    }

    pub fn problem(&mut self, name: &str, message: impl Into<String>) {
        self.problems.push(Problem::new(name, message));
    }

    /// A whole number within `range`; `default` when unset (or invalid, with a problem).
    pub fn number(&mut self, name: &str, default: u64, range: RangeInclusive<u64>) -> u64 {
        let Some(text) = self.get(name) else { return default };
        match text.parse::<u64>() {
            Ok(n) if range.contains(&n) => n,
            _ => {
                let message = format!("must be a whole number from {} to {}", range.start(), range.end());
                self.problem(name, message);
                default
            }
        }
    }

    /// `true`/`1`/`yes`/`on` or `false`/`0`/`no`/`off`, any case; `default` when unset.
    pub fn flag(&mut self, name: &str, default: bool) -> bool {
        match self.get(name).map(|v| v.to_ascii_lowercase()).as_deref() {
            None => default,
            Some("true" | "1" | "yes" | "on") => true,
            Some("false" | "0" | "no" | "off") => false,
            Some(_) => {
                self.problem(name, "must be true or false");
                default
            }
        }
    }

    /// `SUPABASE_URL`, the project URL every part needs (session verification, uploads, files):
    /// required, a plain URL, not an API path. `None` with a problem when unset or invalid.
    pub fn supabase_url(&mut self) -> Option<String> {
        if self.get("SUPABASE_URL").is_none() {
            self.problem("SUPABASE_URL", "is required (the project URL, e.g. https://<ref>.supabase.co)");
            return None;
        }
        let url = self.fetchable_url("SUPABASE_URL")?;
        if url.ends_with("/rest/v1") || url.ends_with("/auth/v1") {
            self.problem("SUPABASE_URL", "give the project URL, without /rest/v1 or /auth/v1");
            return None;
        }
        Some(url)
    }

    /// A plain `http(s)://host[/path]` URL without trailing slash; `None` when unset or invalid
    /// (with a problem).
    pub fn url(&mut self, name: &str) -> Option<String> {
        let value = self.get(name)?;
        let url = value.trim_end_matches('/');
        let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"));
        let problem = match rest {
            None => Some("must start with https:// or http://"),
            Some(rest) if rest.is_empty() || rest.starts_with('/') => Some("has no host"),
            Some(rest) if rest.chars().any(|c| c.is_whitespace() || c.is_control()) => Some("must not contain spaces"),
            Some(rest) if rest.contains(['?', '#', '@']) => {
                Some("must be a plain URL (no query, fragment or credentials)")
            }
            Some(_) => None,
        };
        match problem {
            Some(message) => {
                self.problem(name, message);
                None
            }
            None => Some(url.to_string()),
        }
    }

    /// [`Self::url`] that apps connect to with the token the worker gives them (`POWERSYNC_URL`):
    /// `https://`, or `http://` to a loopback or private-network host only ([`is_private_network`]:
    /// development, a phone on the local network). Over plain HTTP elsewhere anyone on the path
    /// could read the token and sync as the user until it expires.
    pub fn app_url(&mut self, name: &str) -> Option<String> {
        let url = self.url(name)?;
        if url.starts_with("http://") && !url::Url::parse(&url).is_ok_and(|url| is_private_network(&url)) {
            self.problem(
                name,
                "http:// is only for loopback and private-network hosts (apps send their PowerSync token there, \
                 readable on the way); give the https:// URL",
            );
            return None;
        }
        Some(url)
    }

    /// [`Self::url`] that the worker may also send requests to ([`fetchable`]): `https://`, or
    /// `http://` to a loopback host only. Users' tokens and the project's keys go there.
    pub fn fetchable_url(&mut self, name: &str) -> Option<String> {
        let url = self.url(name)?;
        self.checked_fetchable(name, &url).map(|_| url)
    }

    /// A setting that is a URL the worker may fetch ([`fetchable`]), parsed: exactly what was
    /// checked is what is fetched. `None` when unset, or with a problem.
    pub fn fetchable(&mut self, name: &str) -> Option<url::Url> {
        let text = self.get(name)?;
        self.checked_fetchable(name, &text)
    }

    fn checked_fetchable(&mut self, name: &str, text: &str) -> Option<url::Url> {
        match fetchable(text) {
            Ok(url) => Some(url),
            Err(why) => {
                self.problem(name, format!("{why}; must be {FETCHABLE_URL_RULE}"));
                None
            }
        }
    }

    /// A comma-separated list, items trimmed, blanks dropped.
    pub fn list(&self, name: &str) -> Vec<String> {
        self.get(name)
            .map(|v| v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
            .unwrap_or_default()
    }

    /// Runs `parse` for one part of the configuration: `Ok` only when it produced a value and
    /// added no problem; otherwise `Err` with the problems it added (they stay in `problems`).
    pub fn part<T>(&mut self, parse: impl FnOnce(&mut Self) -> Option<T>) -> Result<T, Vec<Problem>> {
        let before = self.problems.len();
        let value = parse(self);
        let added = self.problems[before..].to_vec();
        match value {
            Some(value) if added.is_empty() => Ok(value),
            _ => Err(added),
        }
    }
}

/// A URL the worker may send requests to (Supabase's, Storage's, a key or issuer URL), parsed
/// by the WHATWG URL rules workerd's `fetch` applies (the `url` crate): `https://` to any host,
/// or `http://` to a loopback host only (127.0.0.0/8, `localhost`, `[::1]`: local development
/// and tests; plain HTTP elsewhere would let anyone on the path read the tokens and keys sent
/// there, or serve forged session keys), never with credentials
/// (`http://localhost:80@keys.example.com/` is a request to `keys.example.com`). Scheme and host
/// are case-insensitive; ports are allowed. `Err` says why not (never quoting the value).
pub fn fetchable(text: &str) -> Result<url::Url, &'static str> {
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain spaces");
    }
    if !has_ascii_host(text) {
        return Err("is not a URL (a host name with non-ASCII letters must be given in its ASCII xn-- form)");
    }
    // (a host that is not ASCII was refused above, with its own reason)
    let url = url::Url::parse(text).map_err(|_| "is not a URL")?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not contain credentials (user@host)");
    }
    if url.host().is_none() {
        return Err("has no host");
    }
    let loopback = is_loopback(&url);
    match url.scheme() {
        "https" => Ok(url),
        "http" if loopback => Ok(url),
        "http" => Err("http:// is only for loopback hosts (127.0.0.0/8, localhost, [::1])"),
        _ => Err("must be an https:// URL"),
    }
}

/// Whether the host of URL text `text` (after `://`, up to the first `/`, `?`, `#` or `\\`) is
/// ASCII, its percent-escapes undone too. `url` is built without Unicode host names (idna_adapter
/// 1.0, Cargo.toml): it refuses such a host, and in a debug build a check inside it panics on
/// some (`https://Aé`), so they are refused before it parses them.
pub fn has_ascii_host(text: &str) -> bool {
    let rest = text.split_once("://").map_or(text, |(_, rest)| rest);
    let host = rest.split(['/', '?', '#', '\\']).next().unwrap_or_default();
    host.is_ascii() && percent_encoding::percent_decode_str(host).all(|b| b.is_ascii())
}

/// Whether `url`'s host is a loopback one (127.0.0.0/8, `localhost`, `[::1]`): local
/// development and tests.
pub fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        None => false,
        Some(url::Host::Domain(name)) => name == "localhost",
        Some(url::Host::Ipv4(address)) => address.is_loopback(),
        Some(url::Host::Ipv6(address)) => address.is_loopback(),
    }
}

/// Whether `url`'s host is on this machine or a private network: loopback, a private, link-local
/// or shared IPv4 address (10/8, 172.16/12, 192.168/16, 169.254/16, 100.64/10), a unique- or link-local
/// IPv6 address (fc00::/7, fe80::/10), or a name public DNS does not serve (one label such as a
/// container's, `*.local`, `*.internal`, `*.localhost`).
pub fn is_private_network(url: &url::Url) -> bool {
    match url.host() {
        None => false,
        Some(url::Host::Domain(name)) => {
            name == "localhost"
                || !name.contains('.')
                || [".local", ".internal", ".localhost"].iter().any(|suffix| name.ends_with(suffix))
        }
        Some(url::Host::Ipv4(address)) => {
            // 100.64/10: carrier-grade NAT's shared space, where tailnets (Tailscale) live too.
            let shared = address.octets()[0] == 100 && address.octets()[1] & 0xc0 == 64;
            address.is_loopback() || address.is_private() || address.is_link_local() || shared
        }
        Some(url::Host::Ipv6(address)) => {
            let first = address.segments()[0];
            address.is_loopback() || first & 0xfe00 == 0xfc00 || first & 0xffc0 == 0xfe80
        }
    }
}

/// What such a URL setting must be, after [`fetchable`]'s reason.
pub const FETCHABLE_URL_RULE: &str =
    "an https:// URL without credentials (http:// only to 127.0.0.0/8, localhost or [::1])";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_whose_host_is_not_ascii_is_refused_before_it_is_parsed() {
        // idna_adapter 1.0 asserts (debug builds) on an upper-case host with a non-ASCII byte.
        for url in ["https://Aé", "https://A%AB", "http://Aé/path", "https://ké.example.com"] {
            assert!(!has_ascii_host(url), "{url}");
            assert_eq!(
                fetchable(url).map(|u| u.to_string()).unwrap_err(),
                "is not a URL (a host name with non-ASCII letters must be given in its ASCII xn-- form)",
                "{url}"
            );
        }
        for url in ["https://xn--k-bga.example.com/é", "https://a.example.com/%C3%A9?q=é", "http://127.0.0.1:8080"] {
            assert!(has_ascii_host(url), "{url}");
            assert!(fetchable(url).is_ok(), "{url}");
        }
    }

    #[test]
    fn an_app_url_over_plain_http_is_only_for_loopback_and_private_network_hosts() {
        for url in [
            "https://ps.example.com",
            "http://127.0.0.1:8080",
            "http://localhost:8080",
            "http://[::1]:8080",
            "http://192.168.1.20:8080",
            "http://10.0.2.2:8080",
            "http://172.20.0.5",
            "http://169.254.10.1",
            "http://100.101.102.103:8080",
            "http://[fd00::5]:8080",
            "http://[fe80::1]",
            "http://powersync:8080",
            "http://my-mac.local:8080",
            "http://ps.corp.internal",
        ] {
            let (out, problems) = with(url, |r| r.app_url("X"));
            assert_eq!((out.as_deref(), problems.len()), (Some(url), 0), "{url}");
        }
        for url in
            ["http://ps.example.com", "http://8.8.8.8", "http://172.32.0.1", "http://[2001:db8::1]", "http://local"]
        {
            let (out, problems) = with(url, |r| r.app_url("X"));
            if url == "http://local" {
                // One label: a container's or a LAN name, never public DNS.
                assert!(out.is_some(), "{url}");
                continue;
            }
            assert_eq!(out, None, "{url}");
            assert!(problems[0].message.starts_with("http:// is only for loopback and private-network hosts"), "{url}");
            assert!(!problems[0].message.contains(url), "the value is not quoted");
        }
    }

    fn with<T>(value: &str, read: impl FnOnce(&mut Reader) -> T) -> (T, Vec<Problem>) {
        let value = value.to_string();
        let lookup = move |name: &str| (name == "X").then(|| value.clone());
        let mut reader = Reader::new(&lookup);
        let out = read(&mut reader);
        (out, reader.problems)
    }

    #[test]
    fn blank_values_are_unset_and_values_are_trimmed() {
        assert_eq!(with("  \n", |r| r.get("X")).0, None);
        assert_eq!(with(" v\n", |r| r.get("X")).0.as_deref(), Some("v"));
    }

    #[test]
    fn numbers_outside_their_range_are_problems_without_the_value() {
        let (n, problems) = with("99", |r| r.number("X", 5, 1..=10));
        assert_eq!(n, 5);
        assert_eq!(problems, vec![Problem { name: "X".into(), message: "must be a whole number from 1 to 10".into() }]);
        assert_eq!(with("7", |r| r.number("X", 5, 1..=10)), (7, vec![]));
    }

    #[test]
    fn flags_accept_the_usual_spellings() {
        for (text, value) in [("TRUE", true), ("1", true), ("on", true), ("no", false), ("0", false)] {
            assert_eq!(with(text, |r| r.flag("X", !value)), (value, vec![]));
        }
        assert_eq!(with("maybe", |r| r.flag("X", false)).1.len(), 1);
    }

    #[test]
    fn urls_are_checked_and_lose_their_trailing_slash() {
        assert_eq!(with("https://a.supabase.co/", |r| r.url("X")).0.as_deref(), Some("https://a.supabase.co"));
        for bad in ["a.supabase.co", "https://", "https://a b", "https://a?x=1", "https://u:p@a", "ftp://a"] {
            let (url, problems) = with(bad, |r| r.url("X"));
            assert_eq!((url, problems.len()), (None, 1), "{bad}");
        }
    }

    #[test]
    fn part_separates_the_problems_it_added() {
        let lookup = |_: &str| None;
        let mut r = Reader::new(&lookup);
        r.problem("EARLIER", "x");
        let failed: Result<(), _> = r.part(|r| {
            r.problem("A", "bad");
            Some(())
        });
        assert_eq!(failed.unwrap_err().len(), 1);
        assert_eq!(r.part(|_| Some(1)), Ok(1));
        assert_eq!(r.problems.len(), 2);
    }
}
