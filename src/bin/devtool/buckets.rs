//! `devtool doctor`'s look at Supabase Storage: each bucket `STORAGE_BUCKETS` names, as Storage
//! holds it (`GET <STORAGE_URL>/bucket/<name>` with the service key), against the worker's rules
//! for it. The worker signs an upload by its own rules; Storage checks the bucket's size and type
//! limits only when the bytes arrive, so a limit tighter than the worker's leaves such a file
//! signed, refused and retried for ever, and a bucket Storage does not have fails every file.

use powersync_supabase_worker::storage::settings::{BucketRules, StorageMode};
use serde_json::Value;

use crate::doctor::{blocking, warning, Finding};
use crate::rest::{self, Request, Response};

/// Rls mode: the catalog request (sql/doctor.sql's `powersync_doctor`) for the policies on
/// `storage.objects`, which decide what a user's token may do with files.
pub fn object_policies_request(supabase_url: &str, service_key: &str) -> Request {
    rest::rpc(
        supabase_url,
        service_key,
        "powersync_doctor",
        serde_json::json!({"tables": [{"schema": "storage", "name": "objects", "columns": []}], "functions": []}),
    )
}

/// Rls mode: whether some permissive policy on `storage.objects` lets `authenticated` do what
/// the file endpoints ask of Storage with the user's token (the catalog's answer; a failed
/// answer is said once, by the uploads' catalog check). An upload needs INSERT, and UPDATE to
/// replace a file (the adapter always upserts: a re-sent upload meets the file it stored); a
/// download SELECT; a delete DELETE and SELECT. Their conditions (bucket, folder) are not judged.
pub fn check_object_policies(response: &Response) -> Vec<Finding> {
    let Some(table) = response.json().filter(|_| response.status == 200).map(|v| v["tables"][0].clone()) else {
        return vec![];
    };
    let Some(policies) = table.get("policies").and_then(|p| p["authenticated"].as_array()).cloned() else {
        return vec![];
    };
    let allowed = |command: &str| policies.iter().any(|c| c == command);
    let needed = [
        ("INSERT", true, "no file can be uploaded (file_denied)"),
        ("SELECT", true, "no file can be downloaded or deleted (file_not_found, deleted: false)"),
        (
            "UPDATE",
            false,
            "a file uploaded again (the adapter upserts; a re-sent upload) is refused (file_denied) and retried",
        ),
        (
            "DELETE",
            false,
            "a delete is refused (file_denied) and the file stays (older Storage answered deleted: false)",
        ),
    ];
    needed
        .iter()
        .filter(|(command, _, _)| !allowed(command))
        .map(|(command, blocks, what)| {
            let problem = format!("no policy on storage.objects lets authenticated {command}: {what}");
            let fix = format!(
                "create policy on storage.objects for {} to authenticated … (keeping each user to their folder \
                 of the buckets in STORAGE_BUCKETS), unless files are meant not to allow it",
                command.to_lowercase()
            );
            if *blocks {
                blocking(problem, fix)
            } else {
                warning(problem, fix)
            }
        })
        .collect()
}

/// The request that reads bucket `name` with the service key.
pub fn bucket_request(storage_url: &str, name: &str, service_key: &str) -> Request {
    Request {
        method: "GET",
        url: format!("{storage_url}/bucket/{name}"),
        headers: rest::service_headers(service_key),
        body: None,
    }
}

/// Problems with bucket `name` as Storage answered for it (`response`), given the worker's
/// `rules` for it.
pub fn check_bucket(
    name: &str,
    rules: &BucketRules,
    mode: StorageMode,
    response: &Response,
    storage_url: &str,
) -> Vec<Finding> {
    let body = response.json().unwrap_or(Value::Null);
    // Storage answers its errors 400 with the status it means in `statusCode` (a string)
    let meant = match &body["statusCode"] {
        Value::String(code) => code.parse::<u16>().ok(),
        Value::Number(code) => code.as_u64().and_then(|c| u16::try_from(c).ok()),
        _ => None,
    }
    .filter(|_| response.status == 400)
    .unwrap_or(response.status);
    match meant {
        0 => vec![blocking(
            format!("Storage is not reachable at {storage_url}: {}", response.describe()),
            "check STORAGE_URL (default <SUPABASE_URL>/storage/v1)",
        )],
        200 if body["id"].is_string() => judge(name, rules, mode, &body),
        404 => vec![blocking(
            format!(
                "bucket {name} (STORAGE_BUCKETS) does not exist in Storage: every file to it fails (storage_failed)"
            ),
            format!("create the bucket {name} in Storage (private), or correct its name in STORAGE_BUCKETS"),
        )],
        401 | 403 => vec![blocking(
            format!("Storage refused the service key reading bucket {name}: {}", response.describe()),
            "SUPABASE_SERVICE_ROLE_KEY (or --service-key) must be this project's service_role / secret key, and \
             STORAGE_URL this project's Storage",
        )],
        _ => vec![warning(
            format!("cannot read bucket {name} from Storage: {}", response.describe()),
            "check STORAGE_URL and the service key",
        )],
    }
}

/// The bucket Storage holds (`bucket`: its `public`, `file_size_limit`, `allowed_mime_types`)
/// against the worker's rules. In service mode the rules are the only ones: the worker checks the
/// size and type a client declares, Storage the bytes that arrive at the signed URL, by the
/// bucket's own limits alone, so limits looser than the rules let a client store more.
fn judge(name: &str, rules: &BucketRules, mode: StorageMode, bucket: &Value) -> Vec<Finding> {
    let mut findings = vec![];
    if bucket["public"] == Value::Bool(true) {
        findings.push(warning(
            format!(
                "bucket {name} is public: anyone with a file's path reads it without the worker (its download \
                 URLs' expiry protects nothing)"
            ),
            format!("make {name} private in Storage, unless its files are meant for everyone"),
        ));
    }
    if let Some(limit) = bucket["file_size_limit"].as_u64().filter(|limit| *limit < rules.max_bytes) {
        findings.push(warning(
            format!(
                "Storage takes files of at most {limit} bytes in bucket {name}, the worker signs up to {} \
                 (max_bytes): a file in between is signed, then refused by Storage (storage_http_413) and \
                 retried for ever",
                rules.max_bytes
            ),
            format!("raise the bucket's file size limit in Storage, or set max_bytes to {limit} for {name} in STORAGE_BUCKETS"),
        ));
    }
    let allowed: Vec<&str> =
        bucket["allowed_mime_types"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    if mode == StorageMode::Service {
        let limit = bucket["file_size_limit"].as_u64();
        if limit.is_none_or(|limit| limit > rules.max_bytes) {
            findings.push(warning(
                format!(
                    "Storage takes files of {} in bucket {name}, the worker's rule is {} bytes (max_bytes): it checks \
                     the size a client declares, Storage the bytes sent to the signed URL, so a client that declares \
                     less can store more",
                    limit.map_or("any size".to_string(), |l| format!("up to {l} bytes")),
                    rules.max_bytes
                ),
                format!("set the bucket's file size limit in Storage to {} bytes", rules.max_bytes),
            ));
        }
        let covered = |a: &str| {
            rules.content_types.iter().any(|r| {
                r == a
                    || r == "*/*"
                    || r.strip_suffix('*').is_some_and(|prefix| prefix.ends_with('/') && a.starts_with(prefix))
            })
        };
        if !rules.content_types.is_empty() && (allowed.is_empty() || allowed.iter().any(|a| !covered(a))) {
            findings.push(warning(
                format!(
                    "Storage takes {} in bucket {name}, the worker's rule is {} (content_types): a client that declares \
                     one of those can send bytes of another type",
                    if allowed.is_empty() { "any type".to_string() } else { allowed.join(", ") },
                    rules.content_types.join(", ")
                ),
                format!("set the bucket's allowed MIME types in Storage to {}", rules.content_types.join(", ")),
            ));
        }
    }
    if !allowed.is_empty() {
        let takes = |wanted: &str| {
            allowed.iter().any(|a| {
                *a == wanted
                    || *a == "*/*"
                    || a.strip_suffix('*').is_some_and(|prefix| prefix.ends_with('/') && wanted.starts_with(prefix))
            })
        };
        let refused: Vec<&str> = if rules.content_types.is_empty() {
            vec!["any type"]
        } else {
            rules.content_types.iter().map(String::as_str).filter(|t| !takes(t)).collect()
        };
        if !refused.is_empty() {
            findings.push(warning(
                format!(
                    "Storage takes only {} in bucket {name}, the worker signs {}: such a file is signed, then \
                     refused by Storage (storage_http_415) and retried for ever",
                    allowed.join(", "),
                    refused.join(", ")
                ),
                format!(
                    "allow them in the bucket's settings, or keep {name}'s content_types in STORAGE_BUCKETS within \
                     what Storage takes"
                ),
            ));
        }
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Severity;
    use serde_json::json;

    fn rules(max_bytes: u64, content_types: &[&str]) -> BucketRules {
        BucketRules {
            max_bytes,
            content_types: content_types.iter().map(|t| t.to_string()).collect(),
            ..BucketRules::default()
        }
    }

    fn answered(status: u16, body: Value) -> Response {
        Response { status, body: body.to_string() }
    }

    fn found(rules: &BucketRules, response: Response) -> Vec<(Severity, String)> {
        check_bucket("photos", rules, StorageMode::Rls, &response, "https://p.supabase.co/storage/v1")
            .into_iter()
            .map(|f| (f.severity, f.problem))
            .collect()
    }

    #[test]
    fn rls_mode_wants_policies_on_storage_objects_for_what_the_file_endpoints_do() {
        let request = object_policies_request("https://p.supabase.co", "svc");
        assert_eq!(request.url, "https://p.supabase.co/rest/v1/rpc/powersync_doctor");
        assert_eq!(
            request.body.as_ref().unwrap()["tables"],
            json!([{"schema": "storage", "name": "objects", "columns": []}])
        );
        let answer = |commands: Value| {
            answered(
                200,
                json!({"version": 5, "tables": [{"schema": "storage", "name": "objects", "exists": true,
                                                          "policies": {"anon": [], "authenticated": commands}}]}),
            )
        };
        assert_eq!(check_object_policies(&answer(json!(["DELETE", "INSERT", "SELECT", "UPDATE"]))), []);
        let found: Vec<(Severity, String)> = check_object_policies(&answer(json!(["DELETE", "SELECT"])))
            .into_iter()
            .map(|f| (f.severity, f.problem))
            .collect();
        assert_eq!(found.len(), 2, "{found:#?}");
        assert_eq!(found[0].0, Severity::Blocking);
        assert!(found[0].1.starts_with("no policy on storage.objects lets authenticated INSERT"), "{found:#?}");
        assert_eq!(found[1].0, Severity::Warning);
        assert!(found[1].1.starts_with("no policy on storage.objects lets authenticated UPDATE"), "{found:#?}");
        // no answer, or an older doctor.sql without policies: said by the uploads' check, not twice
        assert_eq!(check_object_policies(&answered(404, json!({"code": "PGRST202"}))), []);
        assert_eq!(check_object_policies(&answered(200, json!({"version": 3, "tables": [{"exists": true}]}))), []);
    }

    #[test]
    fn the_bucket_is_read_with_the_service_key() {
        let request = bucket_request("https://p.supabase.co/storage/v1", "photos", "sb_secret_k");
        assert_eq!((request.method, request.url.as_str()), ("GET", "https://p.supabase.co/storage/v1/bucket/photos"));
        assert_eq!(request.headers, rest::service_headers("sb_secret_k"));
    }

    #[test]
    fn a_private_bucket_within_storages_limits_is_ready() {
        let bucket = json!({"id": "photos", "public": false, "file_size_limit": 5000, "allowed_mime_types": ["image/*", "text/plain"]});
        assert_eq!(found(&rules(1000, &["image/png", "image/*", "text/plain"]), answered(200, bucket)), []);
        let unlimited = json!({"id": "photos", "public": false, "file_size_limit": null, "allowed_mime_types": null});
        assert_eq!(found(&rules(1000, &[]), answered(200, unlimited)), []);
    }

    #[test]
    fn in_service_mode_limits_looser_than_the_workers_rules_are_warned_of() {
        let judged = |bucket: Value, rules: &BucketRules| -> Vec<String> {
            check_bucket("photos", rules, StorageMode::Service, &answered(200, bucket), "https://s")
                .into_iter()
                .map(|f| f.problem)
                .collect()
        };
        let photo_rules = rules(1000, &["image/*", "text/plain"]);
        let fitted = json!({"id": "photos", "public": false, "file_size_limit": 1000, "allowed_mime_types": ["image/*", "text/plain"]});
        assert_eq!(judged(fitted, &photo_rules), Vec::<String>::new());
        let unlimited = json!({"id": "photos", "public": false, "file_size_limit": null, "allowed_mime_types": null});
        let got = judged(unlimited.clone(), &photo_rules);
        assert_eq!(got.len(), 2, "{got:#?}");
        assert!(
            got[0].starts_with("Storage takes files of any size in bucket photos, the worker's rule is 1000"),
            "{got:#?}"
        );
        assert!(got[1].starts_with("Storage takes any type in bucket photos, the worker's rule is image/*, text/plain"));
        let looser = json!({"id": "photos", "public": false, "file_size_limit": 5000, "allowed_mime_types": ["image/*", "text/html"]});
        let got = judged(looser, &photo_rules);
        assert!(got[0].starts_with("Storage takes files of up to 5000 bytes"), "{got:#?}");
        assert!(got[1].starts_with("Storage takes image/*, text/html in bucket photos"), "{got:#?}");
        // rules without content types: any type is the rule
        assert_eq!(judged(unlimited.clone(), &rules(1000, &[])).len(), 1);
        // rls mode: the user's own token reaches Storage anyway; its policies are the rules
        let rls: Vec<Finding> =
            check_bucket("photos", &photo_rules, StorageMode::Rls, &answered(200, unlimited), "https://s");
        assert!(rls.is_empty());
    }

    #[test]
    fn limits_tighter_than_the_workers_and_a_public_bucket_are_warned_of() {
        let bucket =
            json!({"id": "photos", "public": true, "file_size_limit": 500, "allowed_mime_types": ["image/png"]});
        let got = found(&rules(1000, &["image/*", "image/png"]), answered(200, bucket));
        assert_eq!(got.len(), 3, "{got:#?}");
        assert!(got.iter().all(|(severity, _)| *severity == Severity::Warning), "{got:#?}");
        assert!(got[0].1.starts_with("bucket photos is public"), "{got:#?}");
        assert!(got[1]
            .1
            .starts_with("Storage takes files of at most 500 bytes in bucket photos, the worker signs up to 1000"));
        assert!(
            got[2].1.starts_with("Storage takes only image/png in bucket photos, the worker signs image/*:"),
            "{got:#?}"
        );
        // the worker signing any type, Storage taking some
        let typed = json!({"id": "photos", "public": false, "allowed_mime_types": ["image/*"]});
        let got = found(&rules(1000, &[]), answered(200, typed));
        assert!(got[0].1.contains("the worker signs any type"), "{got:#?}");
    }

    #[test]
    fn a_missing_bucket_a_refused_key_and_no_storage_block() {
        let missing =
            answered(400, json!({"statusCode": "404", "error": "Bucket not found", "message": "Bucket not found"}));
        let got = found(&rules(1000, &[]), missing);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, Severity::Blocking);
        assert!(got[0].1.starts_with("bucket photos (STORAGE_BUCKETS) does not exist in Storage"), "{got:#?}");
        let refused = answered(
            400,
            json!({"statusCode": "403", "error": "Unauthorized", "message": "signature verification failed"}),
        );
        let got = found(&rules(1000, &[]), refused);
        assert!(got[0].1.starts_with("Storage refused the service key reading bucket photos"), "{got:#?}");
        assert_eq!(got[0].0, Severity::Blocking);
        let none = Response { status: 0, body: "connection refused".into() };
        assert_eq!(found(&rules(1000, &[]), none)[0].0, Severity::Blocking);
        // a 200 that is not Storage's bucket, or another error: said, not blocking
        for other in [answered(200, json!({})), answered(500, json!({"message": "boom"}))] {
            let got = found(&rules(1000, &[]), other);
            assert_eq!(got[0].0, Severity::Warning, "{got:#?}");
        }
    }
}
