//! Upload bodies: `upload::parse` on arbitrary bytes never panics, and what it accepts keeps
//! its invariants (non-empty ids and tables, no DELETE data, counts within the limits).
//! The first byte picks small limits (so the limit checks are fuzzed too) or the defaults.
#![no_main]

use libfuzzer_sys::fuzz_target;
use powersync_supabase_worker::upload::{self, Limits, Op};

fuzz_target!(|data: &[u8]| {
    let (limits, body) = match data.split_first() {
        Some((&selector, rest)) if selector & 0x80 != 0 => (
            Limits {
                max_body_bytes: 64 * usize::from(selector & 0x1f) + 16,
                max_entries: usize::from(selector & 0x07),
                max_transactions: usize::from((selector >> 3) & 0x03),
            },
            rest,
        ),
        _ => (Limits::default(), data),
    };
    if let Ok(transactions) = upload::parse(body, &limits) {
        assert!(body.len() <= limits.max_body_bytes);
        let entries: usize = transactions.iter().map(|t| t.entries.len()).sum();
        assert!(entries <= limits.max_entries);
        // (an empty id or table name is read: it fails only its own transaction, when planned)
        for entry in transactions.iter().flat_map(|t| &t.entries) {
            assert!(entry.op != Op::Delete || entry.data.is_empty());
            let _ = entry.to_json();
        }
    }
});
