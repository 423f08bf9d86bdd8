//! File endpoint settings (Supabase Storage), read once with the rest of the configuration.
//!
//! | Variable | Default | Meaning |
//! |---|---|---|
//! | `STORAGE_MODE` | `rls` | `rls`: ask Storage with the user's own token (storage policies decide); `service`: sign with the service key after the worker's own rules |
//! | `STORAGE_URL` | `<SUPABASE_URL>/storage/v1` | the Storage API |
//! | `STORAGE_BUCKETS` | none (any bucket, rls mode only) | the buckets files may go to, with their rules: `a,b` or JSON `{"a":{"path":"{user_id}/","max_bytes":N,"content_types":["image/*"],"shared":false}}` (service mode: a path without `{user_id}` needs `"shared": true`); required in service mode |
//! | `STORAGE_DOWNLOAD_URL_SECONDS` | 3600 | lifetime of download URLs (a request may ask for less), 1..=604800 |
//! | `SUPABASE_ANON_KEY` | required | sent as `apikey` in rls mode |
//! | `SUPABASE_SERVICE_ROLE_KEY` | — | required in service mode |
//! | `STORAGE_ALLOW_ANONYMOUS` | `false` | service mode only: anonymous sign-ins may use the file endpoints (as `UPLOAD_ALLOW_ANONYMOUS` for rows) |

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

use crate::api_keys;
use crate::environment::Reader;

/// Default path template: the first segment is the user's id (any issuer's `sub`).
pub const DEFAULT_PATH_TEMPLATE: &str = "{user_id}/";
/// Default largest upload: Supabase's default global file size limit (50 MB).
pub const DEFAULT_MAX_BYTES: u64 = 50 * 1024 * 1024;
/// Default download URL lifetime.
pub const DEFAULT_DOWNLOAD_URL_SECONDS: u64 = 3600;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageMode {
    /// The user's token goes to Storage: its policies on `storage.objects` decide.
    Rls,
    /// The service key goes to Storage: the worker's rules ([`BucketRules`]) decide.
    Service,
}

/// One bucket's rules (from `STORAGE_BUCKETS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketRules {
    /// Every path must start with this, `{user_id}` replaced by the caller's id; ends with `/`.
    pub path_template: String,
    /// Largest declared upload size, in bytes.
    pub max_bytes: u64,
    /// Allowed content types (`image/png` exactly, or `image/*`); empty = any.
    pub content_types: Vec<String>,
    /// `"shared": true`: a template without `{user_id}` is meant. Default `false`. In service
    /// mode such a folder is every user's: anyone signed in may overwrite or delete any file in
    /// it (the service key signs), so it must be asked for by name.
    pub shared: bool,
}

impl Default for BucketRules {
    fn default() -> Self {
        BucketRules {
            path_template: DEFAULT_PATH_TEMPLATE.into(),
            max_bytes: DEFAULT_MAX_BYTES,
            content_types: vec![],
            shared: false,
        }
    }
}

impl BucketRules {
    pub fn allows_type(&self, content_type: &str) -> bool {
        let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        self.content_types.is_empty()
            || self.content_types.iter().any(|allowed| match allowed.strip_suffix("/*") {
                // The subtype one token (RFC 9110): `image/png, text/html` is not an image.
                Some(kind) => essence.split_once('/').is_some_and(|(k, sub)| {
                    k == kind
                        && !sub.is_empty()
                        && sub.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
                }),
                None => *allowed == essence,
            })
    }
}

#[derive(Clone, PartialEq, Eq)]
pub struct StorageSettings {
    pub mode: StorageMode,
    /// `STORAGE_URL` without trailing slash.
    pub storage_url: String,
    pub anon_key: String,
    /// Present in service mode.
    pub service_key: Option<String>,
    /// `None`: any bucket, no rules of ours (rls mode only).
    pub buckets: Option<BTreeMap<String, BucketRules>>,
    pub download_url_seconds: u64,
    pub allow_anonymous: bool,
}

impl StorageSettings {
    /// Whether a verified session may use the file endpoints: in service mode, anonymous
    /// sign-ins only with `STORAGE_ALLOW_ANONYMOUS`; in rls mode always (policies decide).
    pub fn admits(&self, claims: &serde_json::Map<String, Value>) -> bool {
        self.mode == StorageMode::Rls || self.allow_anonymous || !crate::upload::settings::is_anonymous(claims)
    }
}

impl fmt::Debug for StorageSettings {
    /// Keys are redacted so settings can be logged.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StorageSettings")
            .field("mode", &self.mode)
            .field("storage_url", &self.storage_url)
            .field("buckets", &self.buckets)
            .field("download_url_seconds", &self.download_url_seconds)
            .field("allow_anonymous", &self.allow_anonymous)
            .finish_non_exhaustive()
    }
}

pub fn read(r: &mut Reader, supabase_url: Option<String>) -> Option<StorageSettings> {
    let mode = match r.get("STORAGE_MODE").map(|m| m.to_ascii_lowercase()).as_deref() {
        None | Some("rls") => StorageMode::Rls,
        Some("service") => StorageMode::Service,
        Some(_) => {
            r.problem("STORAGE_MODE", "must be rls or service");
            StorageMode::Rls
        }
    };
    let storage_url = r.fetchable_url("STORAGE_URL").filter(|url| {
        // Storage's own routes start there (`…/object`, `…/object/public`): the bucket would be
        // read from a name's first segment, and deletes answered as of objects it does not have
        let path = url.splitn(4, '/').nth(3).unwrap_or("");
        let route = path.split('/').find(|segment| ["object", "bucket"].contains(segment));
        if let Some(route) = route {
            r.problem("STORAGE_URL", format!("give Storage's base URL (…/storage/v1), without /{route}…"));
        }
        route.is_none()
    });
    let buckets = r.get("STORAGE_BUCKETS").and_then(|text| match parse_buckets(&text) {
        Ok(buckets) => Some(buckets),
        Err(problems) => {
            for why in problems {
                r.problem("STORAGE_BUCKETS", why);
            }
            None
        }
    });
    let service_key = r.get("SUPABASE_SERVICE_ROLE_KEY");
    if mode == StorageMode::Service {
        match &service_key {
            None => r.problem("SUPABASE_SERVICE_ROLE_KEY", "is required with STORAGE_MODE=service"),
            Some(key) => {
                let anon_key = r.get("SUPABASE_ANON_KEY");
                if let Some(why) = api_keys::public_key_as_service_key(key, anon_key.as_deref(), "STORAGE_MODE") {
                    r.problem("SUPABASE_SERVICE_ROLE_KEY", why);
                }
            }
        }
        if r.get("STORAGE_BUCKETS").is_none() {
            r.problem("STORAGE_BUCKETS", "is required with STORAGE_MODE=service (the buckets files may go to)");
        }
        for (name, rules) in buckets.iter().flatten() {
            if !rules.path_template.contains("{user_id}") && !rules.shared {
                r.problem(
                    "STORAGE_BUCKETS",
                    format!(
                        "{name}.path has no {{user_id}}: with STORAGE_MODE=service every signed-in user could \
                         overwrite and delete every file under it; add \"shared\": true if that is meant"
                    ),
                );
            }
        }
    }
    let download_url_seconds = r.number("STORAGE_DOWNLOAD_URL_SECONDS", DEFAULT_DOWNLOAD_URL_SECONDS, 1..=604_800);
    let allow_anonymous = r.flag("STORAGE_ALLOW_ANONYMOUS", false);
    if mode == StorageMode::Rls && allow_anonymous {
        r.problem(
            "STORAGE_ALLOW_ANONYMOUS",
            "applies to STORAGE_MODE=service only (in rls mode the storage policies decide)",
        );
    }
    let anon_key = r.get("SUPABASE_ANON_KEY");
    if anon_key.is_none() {
        r.problem("SUPABASE_ANON_KEY", "is required (sent to Storage as apikey)");
    }
    let storage_url = storage_url.or_else(|| Some(format!("{}/storage/v1", supabase_url?)))?;
    Some(StorageSettings {
        mode,
        storage_url,
        anon_key: anon_key?,
        service_key: if mode == StorageMode::Service { service_key } else { None },
        buckets,
        download_url_seconds,
        allow_anonymous,
    })
}

/// `a,b` (default rules) or a JSON object of bucket -> rules; every problem found, at once.
pub fn parse_buckets(text: &str) -> Result<BTreeMap<String, BucketRules>, Vec<String>> {
    let mut buckets = BTreeMap::new();
    let mut problems = Vec::new();
    let invalid_name = |name: &str| format!("'{name}' is not a valid bucket name");
    if !text.trim_start().starts_with('{') {
        for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if super::check_bucket(name).is_ok() {
                buckets.insert(name.to_string(), BucketRules::default());
            } else {
                problems.push(invalid_name(name));
            }
        }
    } else {
        let value: Value = serde_json::from_str(text).map_err(|e| vec![format!("is not valid JSON ({e})")])?;
        let Value::Object(map) = value else { return Err(vec!["must be a JSON object".into()]) };
        for (name, rules) in map {
            let before = problems.len();
            if super::check_bucket(&name).is_err() {
                problems.push(invalid_name(&name));
            }
            let Value::Object(fields) = rules else {
                problems.push(format!("{name}: rules must be an object"));
                continue;
            };
            let mut bucket = BucketRules::default();
            for (field, value) in fields {
                match (field.as_str(), value) {
                    ("path", Value::String(template)) => match check_template(&template) {
                        Ok(()) => bucket.path_template = template,
                        Err(why) => problems.push(format!("{name}.path: {why}")),
                    },
                    ("max_bytes", Value::Number(n)) if n.as_u64().is_some_and(|n| n > 0) => {
                        bucket.max_bytes = n.as_u64().unwrap_or(DEFAULT_MAX_BYTES);
                    }
                    ("content_types", Value::Array(types)) => {
                        match types
                            .iter()
                            .map(|t| t.as_str().filter(|t| t.contains('/')).map(|t| t.trim().to_ascii_lowercase()))
                            .collect::<Option<Vec<_>>>()
                        {
                            Some(types) => bucket.content_types = types,
                            None => {
                                problems.push(format!("{name}.content_types: give types like image/png or image/*"))
                            }
                        }
                    }
                    ("shared", Value::Bool(shared)) => bucket.shared = shared,
                    (other, _) => problems.push(format!(
                        "{name}.{other}: unknown or invalid (use path, max_bytes, content_types, shared)"
                    )),
                }
            }
            if problems.len() == before {
                buckets.insert(name, bucket);
            }
        }
    }
    if buckets.is_empty() && problems.is_empty() {
        problems.push("lists no bucket".into());
    }
    if problems.is_empty() {
        Ok(buckets)
    } else {
        Err(problems)
    }
}

/// A template is a path prefix ending in `/` whose only placeholder is `{user_id}`.
fn check_template(template: &str) -> Result<(), String> {
    if !template.ends_with('/') {
        return Err("must end with / (it is a folder prefix)".into());
    }
    let probe = template.replace("{user_id}", "u");
    if probe.contains(['{', '}']) {
        return Err("the only placeholder is {user_id}".into());
    }
    super::check_path(&format!("{probe}x")).map_err(|e| format!("not a valid path prefix ({e:?})"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn read_settings(vars: &[(&str, &str)]) -> Result<StorageSettings, Vec<crate::environment::Problem>> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let lookup = move |name: &str| map.get(name).cloned();
        let mut r = Reader::new(&lookup);
        r.part(|r| read(r, Some("https://abc.supabase.co".into())))
    }

    fn read_vars(vars: &[(&str, &str)]) -> Result<StorageSettings, Vec<String>> {
        read_settings(vars).map_err(|p| p.into_iter().map(|p| p.name).collect())
    }

    fn read_problems(vars: &[(&str, &str)]) -> Vec<crate::environment::Problem> {
        read_settings(vars).err().unwrap_or_default()
    }

    #[test]
    fn rls_mode_needs_nothing_beyond_the_anon_key_and_has_documented_defaults() {
        let s = read_vars(&[("SUPABASE_ANON_KEY", "anon")]).unwrap();
        assert_eq!(s.mode, StorageMode::Rls);
        assert_eq!(s.storage_url, "https://abc.supabase.co/storage/v1");
        assert_eq!((s.buckets, s.download_url_seconds, s.allow_anonymous, s.service_key), (None, 3600, false, None));
    }

    #[test]
    fn service_mode_needs_the_service_key_and_a_bucket_list() {
        let problems = read_vars(&[("SUPABASE_ANON_KEY", "anon"), ("STORAGE_MODE", "service")]).unwrap_err();
        assert_eq!(problems, vec!["SUPABASE_SERVICE_ROLE_KEY", "STORAGE_BUCKETS"]);
    }

    #[test]
    fn a_storage_url_ending_in_one_of_storages_routes_is_refused() {
        for url in [
            "https://abc.supabase.co/storage/v1/object",
            "https://abc.supabase.co/storage/v1/bucket/",
            "https://abc.supabase.co/storage/v1/object/public",
        ] {
            let problems = read_problems(&[("SUPABASE_ANON_KEY", "anon"), ("STORAGE_URL", url)]);
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert_eq!(problems[0].name, "STORAGE_URL");
            assert!(problems[0].message.contains("without /"), "{problems:?}");
        }
        for url in ["http://127.0.0.1:5000", "https://object.example.com/object-store/storage/v1"] {
            let ok = read_vars(&[("SUPABASE_ANON_KEY", "anon"), ("STORAGE_URL", url)]).unwrap();
            assert_eq!(ok.storage_url, url);
        }
    }

    #[test]
    fn service_mode_refuses_a_public_key_as_the_service_key() {
        for key in ["anon", "sb_publishable_abc"] {
            let vars = [
                ("SUPABASE_ANON_KEY", "anon"),
                ("STORAGE_MODE", "service"),
                ("SUPABASE_SERVICE_ROLE_KEY", key),
                ("STORAGE_BUCKETS", "photos"),
            ];
            let problems = read_problems(&vars);
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert_eq!(problems[0].name, "SUPABASE_SERVICE_ROLE_KEY");
            assert!(
                problems[0].message.contains("STORAGE_MODE=service needs the project's service key"),
                "{problems:?}"
            );
        }
    }

    #[test]
    fn bucket_list_takes_default_rules_and_json_sets_each_rule() {
        let plain = parse_buckets("a, b").unwrap();
        assert_eq!(plain.keys().collect::<Vec<_>>(), vec!["a", "b"]);
        assert_eq!(plain["a"], BucketRules::default());
        let json = parse_buckets(
            r#"{"photos":{"path":"users/{user_id}/","max_bytes":1000,"content_types":["image/*","application/PDF"]}}"#,
        )
        .unwrap();
        let rules = &json["photos"];
        assert_eq!((rules.path_template.as_str(), rules.max_bytes), ("users/{user_id}/", 1000));
        assert!(rules.allows_type("image/png") && rules.allows_type("application/pdf; charset=x"));
        assert!(!rules.allows_type("text/html") && !rules.allows_type("image/") && !rules.allows_type("imagex/png"));
        for smuggled in ["image/png, text/html", "image/png text/html", "image/svg+xml,text/html"] {
            assert!(!rules.allows_type(smuggled), "{smuggled}");
        }
        assert!(rules.allows_type("image/svg+xml") && rules.allows_type("IMAGE/PNG"));
    }

    #[test]
    fn a_service_mode_folder_without_the_user_id_must_be_asked_for_as_shared() {
        let vars = |mode: &str, buckets: &str| {
            read_vars(&[
                ("SUPABASE_ANON_KEY", "anon"),
                ("SUPABASE_SERVICE_ROLE_KEY", "svc"),
                ("STORAGE_MODE", mode),
                ("STORAGE_BUCKETS", buckets),
            ])
        };
        assert_eq!(vars("service", r#"{"docs":{"path":"shared/"}}"#).unwrap_err(), vec!["STORAGE_BUCKETS"]);
        let shared = vars("service", r#"{"docs":{"path":"shared/","shared":true}}"#).unwrap();
        assert!(shared.buckets.unwrap()["docs"].shared);
        // the user's own folder needs nothing; in rls mode the storage policies decide
        assert!(vars("service", r#"{"docs":{"path":"users/{user_id}/"}}"#).is_ok());
        assert!(vars("rls", r#"{"docs":{"path":"shared/"}}"#).is_ok());
        let problems = read_problems(&[
            ("SUPABASE_ANON_KEY", "anon"),
            ("SUPABASE_SERVICE_ROLE_KEY", "svc"),
            ("STORAGE_MODE", "service"),
            ("STORAGE_BUCKETS", r#"{"docs":{"path":"shared/"}}"#),
        ]);
        assert!(problems[0].message.contains("\"shared\": true"), "{problems:?}");
    }

    #[test]
    fn bad_bucket_settings_are_explained() {
        for (text, why) in [
            ("", "lists no bucket"),
            ("a/b", "not a valid bucket name"),
            (r#"{"a":{"path":"{user_id}"}}"#, "must end with /"),
            (r#"{"a":{"path":"{team}/"}}"#, "only placeholder"),
            (r#"{"a":{"path":"../{user_id}/"}}"#, "not a valid path prefix"),
            (r#"{"a":{"max_bytes":0}}"#, "a.max_bytes"),
            (r#"{"a":{"content_types":["png"]}}"#, "a.content_types"),
            ("{", "not valid JSON"),
        ] {
            let errors = parse_buckets(text).unwrap_err();
            assert_eq!(errors.len(), 1, "{text}: {errors:?}");
            assert!(errors[0].contains(why), "{text}: {errors:?}");
        }
    }

    /// Every bad bucket is reported at once (it stopped at the first, so an operator fixing one
    /// heard of the next only on the following deploy).
    #[test]
    fn every_bad_bucket_is_reported_at_once() {
        for (text, expected) in [
            (r#"{"a":{"path":"{user_id}"},"b":{"max_bytes":0}}"#, ["a.path", "b.max_bytes"]),
            ("a/b,c d", ["'a/b'", "'c d'"]),
        ] {
            let problems = read_problems(&[("SUPABASE_ANON_KEY", "anon"), ("STORAGE_BUCKETS", text)]);
            let said = format!("{problems:?}");
            for name in expected {
                assert!(said.contains(name), "{text}: {name} not reported in {said}");
            }
        }
    }
}
