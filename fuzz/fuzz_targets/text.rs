#![no_main]
use libfuzzer_sys::fuzz_target;
use powersync_supabase_worker::{credentials, http, keys, session, upload::filter, upload::plan};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    let text = String::from_utf8_lossy(rest);
    match sel % 8 {
        0 => {
            let r = credentials::redact(&text);
            let _ = credentials::redact(&r);
            let _ = credentials::clipped(&text, 200);
        }
        1 => {
            let _ = credentials::redact_setting_text(&text);
        }
        2 => {
            let headers = http::read_head_lines(text.lines());
            let _ = http::head_lines(&headers);
            let resp = http::HttpResponse::from_head(&text, String::new());
            let _ = resp.redirect_origin();
            let _ = resp.status_described();
            let _ = http::url_path(&text);
            let _ = http::is_ray(&text);
            let pairs: Vec<(String, String)> = text
                .split('\u{0}')
                .map(|p| {
                    let (a, b) = p.split_once(':').unwrap_or((p, ""));
                    (a.to_string(), b.to_string())
                })
                .collect();
            let _ = http::head_lines(&pairs);
        }
        3 => {
            let _ = session::unverified_claims(&text);
        }
        4 => {
            let _ = keys::parse_previous_public_keys(&text);
        }
        5 => {
            let _ = filter::encode(&text);
            let q = filter::quote(&text);
            assert!(q.starts_with('"') && q.ends_with('"'));
            let _ = plan::cast_key(&text);
            let mut list = filter::InList::new();
            for id in text.split('\u{1}') {
                let predicted = list.len_with(id);
                list.push(id);
                assert!(list.contains(id));
                assert_eq!(predicted, list.filter_len());
                assert_eq!(list.filter().len(), list.filter_len());
            }
        }
        6 => {
            use powersync_supabase_worker::storage;
            let _ = storage::check_path(&text);
            let _ = storage::check_bucket(&text);
            let _ = storage::settings::parse_buckets(&text);
        }
        _ => {
            let _ = credentials::redact(&text);
        }
    }
});
