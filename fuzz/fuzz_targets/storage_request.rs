#![no_main]
use libfuzzer_sys::fuzz_target;
use powersync_supabase_worker::storage::{
    self,
    settings::{StorageMode, StorageSettings},
    FileOp,
};
use std::sync::OnceLock;

fn settings() -> &'static Vec<StorageSettings> {
    static S: OnceLock<Vec<StorageSettings>> = OnceLock::new();
    S.get_or_init(|| {
        let rls = StorageSettings {
            mode: StorageMode::Rls, storage_url: "https://abc.supabase.co/storage/v1".into(), anon_key: "anon".into(),
            service_key: None, buckets: None, download_url_seconds: 3600, allow_anonymous: false,
        };
        let buckets = Some(storage::settings::parse_buckets(r#"{"avatars":{},"docs":{"path":"{user_id}/files/","max_bytes":1000,"content_types":["image/*"]},"pub":{"path":"shared/","shared":true}}"#).unwrap());
        let mut service = rls.clone();
        service.mode = StorageMode::Service;
        service.service_key = Some("svc".into());
        service.buckets = buckets;
        vec![rls, service]
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else { return };
    let op = match sel % 3 {
        0 => FileOp::Upload,
        1 => FileOp::Download,
        _ => FileOp::Delete,
    };
    let Ok(request) = storage::parse_request(op, body) else { return };
    for s in settings() {
        for user in ["user-1", "a/b", "..", ""] {
            if storage::check(&request, s, user).is_ok() {
                for f in &request.files {
                    let r = storage::plan(&request, f, s, "tok");
                    assert!(!r.url.contains('?') && !r.url.contains('#') && !r.url.contains("/../"), "{}", r.url);
                    let _ = storage::bucket_request(f, s);
                }
            }
        }
    }
});
