//! Metrics: one Workers Analytics Engine data point per request, built from the request's log
//! line (the same record, so the chart and the log never disagree), and the client's upload-queue
//! report that feeds the queue-depth figures.
//!
//! A data point is positional: `blob1..blob20` (strings) and `double1..double20` (numbers), plus
//! one index (the sampling key). [`BLOBS`] and [`DOUBLES`] fix which log field goes where; the
//! table in docs/metrics.md lists the same names in the same order (a test keeps them in step).
//! Nothing here is a token, a key, row data or a raw user id: the user appears only as
//! [`user_hash`].

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The binding name of the optional Analytics Engine dataset (`wrangler.toml`
/// `[[analytics_engine_datasets]]`). Absent: no data points, no cost.
pub const BINDING: &str = "METRICS";

/// The blobs, in order (`blob1` is `route`): where each comes from in the log line (a field of the
/// line, or of its `upload` part). Absent fields are written as "".
pub const BLOBS: [&str; 9] =
    ["route", "status_class", "code", "issuer", "session_alg", "signing_alg", "write_mode", "failure_codes", "user"];

/// The doubles, in order (`double1` is `status`). Absent fields are written as 0; booleans as 0/1.
/// `discarded` is the log line's `fatal` plus its `conflict`: every transaction the client drops
/// for good, so that one figure (and the alert on it) sees conflicts too.
pub const DOUBLES: [&str; 20] = [
    "status",
    "duration_ms",
    "transactions",
    "entries",
    "success",
    "discarded",
    "retryable",
    "not_attempted",
    "already_applied",
    "unchanged_entries",
    "dead_letters",
    "dead_letter_failures",
    "subrequests",
    "resent",
    "applied_via_rest",
    "atomic",
    "queue_reported",
    "queue_count",
    "queue_oldest_seconds",
    "file_bytes",
];

/// Longest `failure_codes` blob: the distinct codes joined by commas (a data point's blobs may
/// total 16 KB; an upload has at most a few distinct codes).
const MAX_CODES_BYTES: usize = 256;

/// One Analytics Engine data point, as `writeDataPoint` takes it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DataPoint {
    /// Zero or one index (Analytics Engine's sampling key): the user hash, when there is a user.
    pub indexes: Vec<String>,
    pub blobs: Vec<String>,
    pub doubles: Vec<f64>,
}

/// The data point of one request, from its log line exactly as written.
pub fn data_point(line: &Value) -> DataPoint {
    let field = |name: &str| -> Option<&Value> {
        let value = line.get(name).or_else(|| line.get("upload").and_then(|u| u.get(name)));
        value.filter(|v| !v.is_null())
    };
    let blobs = BLOBS
        .iter()
        .map(|name| match *name {
            "status_class" => {
                let status = line.get("status").and_then(Value::as_u64).unwrap_or(0);
                format!("{}xx", status / 100)
            }
            "failure_codes" => failure_codes(field(name)),
            _ => field(name).and_then(Value::as_str).unwrap_or_default().to_string(),
        })
        .collect();
    let files = line.get("files").filter(|f| f.is_object());
    let doubles = DOUBLES
        .iter()
        .map(|name| {
            let value = match *name {
                "queue_reported" => return if line.get("queue").is_some_and(Value::is_object) { 1.0 } else { 0.0 },
                "queue_count" => line.get("queue").and_then(|q| q.get("count")),
                "queue_oldest_seconds" => line.get("queue").and_then(|q| q.get("oldest_seconds")),
                // file requests: the files in the request, those done, their declared bytes
                "entries" if files.is_some() => files.and_then(|f| f.get("count")),
                "success" if files.is_some() => files.and_then(|f| f.get("done")),
                "file_bytes" => files.and_then(|f| f.get("bytes")),
                "discarded" => {
                    let count = |name| field(name).and_then(Value::as_f64).unwrap_or(0.0);
                    return count("fatal") + count("conflict");
                }
                _ => field(name),
            };
            match value {
                Some(Value::Bool(b)) => f64::from(u8::from(*b)),
                Some(v) => v.as_f64().unwrap_or(0.0),
                None => 0.0,
            }
        })
        .collect();
    let indexes = field("user").and_then(Value::as_str).map(|u| vec![u.to_string()]).unwrap_or_default();
    DataPoint { indexes, blobs, doubles }
}

/// The distinct failure codes in first-seen order, joined by commas, at most [`MAX_CODES_BYTES`].
fn failure_codes(codes: Option<&Value>) -> String {
    let mut distinct: Vec<&str> = Vec::new();
    for code in codes.and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
        if !distinct.contains(&code) {
            distinct.push(code);
        }
    }
    let mut joined = String::new();
    for code in distinct {
        if joined.len() + code.len() + 1 > MAX_CODES_BYTES {
            break;
        }
        if !joined.is_empty() {
            joined.push(',');
        }
        joined.push_str(code);
    }
    joined
}

/// A stable, non-reversible name for a user: the first 16 hex digits of SHA-256 of the user id.
/// The same user always gets the same hash (one user's trouble can be followed across requests
/// and charts) without the id being logged; an operator who knows an id computes it with
/// `printf %s "$USER_ID" | sha256sum | cut -c1-16`.
pub fn user_hash(user_id: &str) -> String {
    Sha256::digest(user_id.as_bytes()).iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// The request header a client reports its upload queue in: `count=<n>` and optionally
/// `oldest_seconds=<n>`, separated by `;` or `,` (e.g. `count=12; oldest_seconds=340`).
pub const QUEUE_HEADER: &str = "PowerSync-Upload-Queue";

/// Largest figure accepted in the queue header (beyond it the report is ignored as malformed).
const MAX_QUEUE_FIGURE: u64 = 1_000_000_000_000;

/// What a client reported about its upload queue (see [`QUEUE_HEADER`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct QueueReport {
    /// Entries waiting in the client's upload queue (the SDK's `getUploadQueueStats().count`).
    pub count: u64,
    /// Seconds the oldest waiting entry has waited, when the client knows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oldest_seconds: Option<u64>,
}

/// Reads the queue header. Absent, or malformed in any way (unknown or repeated names, no
/// `count`, non-numbers, absurd figures): `None`, never an error; the upload goes on as usual.
pub fn queue_report(header: Option<&str>) -> Option<QueueReport> {
    let header = header?;
    if header.len() > 200 {
        return None;
    }
    let (mut count, mut oldest) = (None, None);
    for part in header.split([';', ',']).map(str::trim).filter(|p| !p.is_empty()) {
        let (name, value) = part.split_once('=')?;
        let value = value.trim();
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let value: u64 = value.parse().ok().filter(|n| *n <= MAX_QUEUE_FIGURE)?;
        let slot = match name.trim().to_ascii_lowercase().as_str() {
            "count" => &mut count,
            "oldest_seconds" => &mut oldest,
            _ => return None,
        };
        if slot.replace(value).is_some() {
            return None;
        }
    }
    Some(QueueReport { count: count?, oldest_seconds: oldest })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn blob<'a>(point: &'a DataPoint, name: &str) -> &'a str {
        &point.blobs[BLOBS.iter().position(|b| *b == name).unwrap()]
    }

    fn double(point: &DataPoint, name: &str) -> f64 {
        point.doubles[DOUBLES.iter().position(|d| *d == name).unwrap()]
    }

    #[test]
    fn file_request_data_point_counts_files_done_and_bytes_but_no_path_or_bucket() {
        let line = json!({"route": "files_upload", "status": 403, "code": "file_path_not_allowed",
            "user": user_hash("u"), "files": {"op": "upload", "count": 3, "done": 0, "bytes": 4096,
            "buckets": ["photos"]}});
        let point = data_point(&line);
        assert_eq!((blob(&point, "route"), blob(&point, "code")), ("files_upload", "file_path_not_allowed"));
        assert_eq!(
            (double(&point, "entries"), double(&point, "success"), double(&point, "file_bytes")),
            (3.0, 0.0, 4096.0)
        );
        assert!(point.blobs.iter().all(|b| !b.contains("photos")));
        let upload = data_point(&json!({"route": "upload", "status": 200, "upload": {"entries": 7, "success": 2}}));
        assert_eq!(
            (double(&upload, "entries"), double(&upload, "success"), double(&upload, "file_bytes")),
            (7.0, 2.0, 0.0)
        );
    }

    #[test]
    fn discarded_counts_refused_and_conflicting_transactions() {
        let line = json!({"route": "upload", "status": 200,
            "upload": {"transactions": 5, "success": 1, "fatal": 1, "conflict": 2, "retryable": 1}});
        let point = data_point(&line);
        assert_eq!(double(&point, "discarded"), 3.0);
        assert_eq!(double(&data_point(&json!({"route": "upload", "upload": {"conflict": 2}})), "discarded"), 2.0);
        assert_eq!(double(&data_point(&json!({"route": "health", "status": 200})), "discarded"), 0.0);
    }

    #[test]
    fn a_data_point_fits_analytics_engine_limits() {
        // writeDataPoint refuses more than 20 blobs, 20 doubles, one index of at most 96 bytes.
        assert!(BLOBS.len() <= 20 && DOUBLES.len() <= 20);
        let point = data_point(&json!({"route": "upload", "status": 200, "user": user_hash("u"),
            "upload": {"failure_codes": vec!["x".repeat(100); 50]}}));
        assert!(point.indexes.len() <= 1 && point.indexes.iter().all(|i| i.len() <= 96));
        assert!(point.blobs.iter().map(String::len).sum::<usize>() <= 16 * 1024);
        assert_eq!((point.blobs.len(), point.doubles.len()), (BLOBS.len(), DOUBLES.len()));
    }

    #[test]
    fn failure_codes_are_distinct_in_first_seen_order_and_bounded() {
        let line = json!({"upload": {"failure_codes": ["23505", "42501", "23505", "PGRST204"]}});
        assert_eq!(blob(&data_point(&line), "failure_codes"), "23505,42501,PGRST204");
        let many: Vec<String> = (0..100).map(|i| format!("code_{i:03}")).collect();
        let codes = failure_codes(Some(&json!(many)));
        assert!(codes.len() <= MAX_CODES_BYTES && codes.starts_with("code_000,code_001"));
        assert!(!codes.ends_with(','));
    }

    #[test]
    fn a_request_without_session_has_no_index_and_empty_blobs() {
        let point = data_point(&json!({"route": "health", "method": "GET", "status": 200, "duration_ms": 1}));
        assert!(point.indexes.is_empty());
        assert_eq!(blob(&point, "route"), "health");
        assert_eq!(blob(&point, "status_class"), "2xx");
        assert_eq!((blob(&point, "code"), blob(&point, "user")), ("", ""));
        assert_eq!((double(&point, "status"), double(&point, "duration_ms")), (200.0, 1.0));
        assert_eq!(double(&point, "queue_reported"), 0.0);
    }

    #[test]
    fn user_hash_is_stable_short_hex_and_not_the_id() {
        let hash = user_hash("11111111-1111-4111-8111-111111111111");
        assert_eq!(hash, user_hash("11111111-1111-4111-8111-111111111111"));
        assert_ne!(hash, user_hash("22222222-2222-4222-8222-222222222222"));
        assert_eq!(hash.len(), 16);
        assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()));
        // SHA-256("abc") starts ba7816bf8f01cfea: the documented shell recipe gives the same.
        assert_eq!(user_hash("abc"), "ba7816bf8f01cfea");
    }

    #[test]
    fn queue_header_reads_count_and_oldest_age() {
        assert_eq!(
            queue_report(Some("count=12; oldest_seconds=340")),
            Some(QueueReport { count: 12, oldest_seconds: Some(340) })
        );
        assert_eq!(queue_report(Some("count=0")), Some(QueueReport { count: 0, oldest_seconds: None }));
        assert_eq!(
            queue_report(Some(" OLDEST_SECONDS=5 , count=3 ")),
            Some(QueueReport { count: 3, oldest_seconds: Some(5) })
        );
    }

    #[test]
    fn malformed_queue_header_is_ignored() {
        for bad in [
            "",
            "count",
            "count=",
            "count=-1",
            "count=1.5",
            "count=abc",
            "count=1e3",
            "oldest_seconds=4",
            "count=1; count=2",
            "count=1; size=9",
            "count=99999999999999999999",
            "count=1000000000001",
            "count=1;oldest_seconds=x",
        ] {
            assert_eq!(queue_report(Some(bad)), None, "{bad:?}");
        }
        assert_eq!(queue_report(Some(&format!("count=1;{}", " ".repeat(300)))), None);
        assert_eq!(queue_report(None), None);
    }
}
