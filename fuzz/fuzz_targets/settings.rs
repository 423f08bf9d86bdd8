//! Settings: `Config::from_lookup` (every part: session, PowerSync key and token, upload,
//! CORS) never panics on any values. The input is `NAME=value` lines; a literal `\n` in a value
//! stands for a newline (so multi-line PEM keys fit on one line, as the key parser allows).
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use powersync_supabase_worker::config::{Config, NAMES};
use powersync_supabase_worker::upload;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let env: HashMap<&str, String> = text
        .lines()
        .filter_map(|line| line.split_once('='))
        .filter(|(name, _)| NAMES.contains(name))
        .map(|(name, value)| (name, value.to_string()))
        .collect();
    let lookup = |name: &str| env.get(name).cloned();
    let config = Config::from_lookup(&lookup);
    for problem in &config.problems {
        assert!(NAMES.contains(&problem.name.as_str()), "{problem:?}");
    }
    let _ = upload::from_lookup(&lookup);
});
