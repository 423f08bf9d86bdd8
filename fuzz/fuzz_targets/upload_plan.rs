#![no_main]
use libfuzzer_sys::fuzz_target;
use powersync_supabase_worker::upload::{self, plan, Caller, Limits, UploadSettings, WriteMode};
use std::sync::OnceLock;

fn settings() -> &'static Vec<UploadSettings> {
    static S: OnceLock<Vec<UploadSettings>> = OnceLock::new();
    S.get_or_init(|| {
        let base = "https://abc.supabase.co";
        let rls = UploadSettings::new(base, "anon-key");
        let mut service = UploadSettings::new(base, "anon-key");
        service.mode = WriteMode::Service { service_key: "svc".into(), owner_column: "owner_id".into() };
        let mut rich = UploadSettings::new(base, "anon-key");
        rich.conflict_detection = true;
        rich.json_columns.insert("todos", "meta");
        rich.json_columns.insert("a", "b");
        rich.boolean_columns.insert("todos", "done");
        rich.boolean_columns.insert("a", "c");
        let mut rich_service = rich.clone();
        rich_service.mode = WriteMode::Service { service_key: "svc".into(), owner_column: "owner_id".into() };
        let mut tabled = rich_service.clone();
        tabled.tables = Some(["todos".to_string(), "a".to_string(), "lists".to_string()].into_iter().collect());
        vec![rls, service, rich, rich_service, tabled]
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(up) = upload::parse_upload(data, &Limits::default()) else { return };
    for client_id in [None, up.client_id.clone(), Some("client-1".to_string())] {
        let caller = Caller { user_id: "user-1".into(), access_token: "tok".into(), client_id, role: None };
        for t in &up.transactions {
            let _ = t.entries_digest();
            for s in settings() {
                for atomic in [false, true] {
                    if let Ok(reqs) = plan::plan_transaction_as(t, s, &caller, atomic) {
                        for r in &reqs {
                            assert!(r.entries.start <= r.entries.end && r.entries.end <= t.entries.len());
                            assert!(!r.request.url.contains('\n'));
                        }
                    }
                }
                let _ = plan::patches_writing_nothing(t, s);
                let _ = plan::atomic_request(t, s, &caller);
                let _ = plan::ledger_keyed(t, &caller);
            }
        }
    }
});
