//! Session key fetches: planning, waiting and accepting answers for any token text never panic,
//! and whatever the fetched "key sets" hold (the token text itself, a 404), a token that is not
//! signed by the fixture's keys is refused (the verifier: `common/session.rs`, fresh per input).
#![no_main]

#[path = "common/session.rs"]
#[allow(dead_code)] // the claim rules' oracle is session_token's
mod common;

use common::NOW;
use libfuzzer_sys::fuzz_target;
use powersync_supabase_worker::http::HttpResponse;
use powersync_supabase_worker::session::Step;

fuzz_target!(|data: &[u8]| {
    let token = String::from_utf8_lossy(data);
    let _ = powersync_supabase_worker::session::unverified_claims(&token);
    let mut v = common::new_verifier();
    let _ = v.describe(&token);
    let _ = v.remote_check_request(&token);
    let mut step = v.plan(&token, NOW);
    for round in 0..4 {
        match &step {
            Step::Ready | Step::RefetchSuppressed => {
                if let Err(e) = v.verify(&token, NOW) {
                    let _ = v.explain(&token, &step, e).reason();
                } else {
                    panic!("accepted {token}");
                }
                break;
            }
            Step::Wait { .. } => {
                let s2 = step.clone();
                step = v.after_wait(&token, NOW, &s2, round % 2 == 0);
            }
            _ => {
                if let Some(r) = step.request() {
                    assert!(!r.url.contains('\n'));
                }
                let s2 = step.clone();
                let answer = if round % 2 == 0 {
                    HttpResponse { status: 404, headers: vec![], body: String::new() }
                } else {
                    HttpResponse { status: 200, headers: vec![], body: token.to_string() }
                };
                step = v.accept(&s2, Ok(answer), NOW + round);
            }
        }
    }
});
