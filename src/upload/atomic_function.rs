//! What one isolate knows about the atomic function, so that with `UPLOAD_ATOMIC` unset
//! ([`AtomicMode::Auto`]) every transaction goes through it whenever it is installed, without
//! another setting, and through REST requests when it is not.
//!
//! The rule, with time passed in (Unix seconds):
//!
//! - not known to be missing → [`Route::Probe`]: each transaction is sent as one call of the
//!   function; when that call answers "no such function" (PGRST202, or a 404), nothing was applied,
//!   so the same transaction is applied through REST in the same upload (the failed call counts
//!   against the subrequest budget) and the function is remembered missing;
//! - remembered missing → [`Route::Rest`] until `UPLOAD_ATOMIC_RECHECK_SECONDS` (default 300) have
//!   passed; then it is tried again, so a function installed later is picked up within that time;
//! - any other answer from the function (success, or an error it raised) means it is there: the
//!   isolate keeps sending through it (still as a probe, so a function dropped later falls back
//!   to REST again at the cost of one request).
//!
//! `UPLOAD_ATOMIC=true` is always [`Route::Atomic`] (a missing function is a retryable
//! configuration error) and `false` always [`Route::Rest`]. The state is per isolate (held by
//! the `App`), reset when the isolate is recycled.

use super::settings::AtomicMode;

/// How the transactions of one upload are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// PostgREST requests per entry group (a transaction too big for the budget still tries the
    /// function, see `delivery`).
    Rest,
    /// One call of the atomic function per transaction.
    Atomic,
    /// One call of the atomic function per transaction; if it is missing, REST from then on.
    Probe,
}

/// One isolate's memory of the atomic function (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AtomicFunction {
    /// Found missing: REST until this time (Unix seconds).
    missing_until: Option<u64>,
}

impl AtomicFunction {
    /// The route for an upload starting at `now`.
    pub fn route(&self, mode: AtomicMode, now: u64) -> Route {
        match mode {
            AtomicMode::Always => Route::Atomic,
            AtomicMode::Never => Route::Rest,
            AtomicMode::Auto if self.missing_until.is_some_and(|until| now < until) => Route::Rest,
            AtomicMode::Auto => Route::Probe,
        }
    }

    /// Takes in what an upload learnt (`UploadReport::atomic_function`): `Some(false)` missing
    /// (REST for `recheck_seconds`), `Some(true)` present, `None` nothing new.
    pub fn learn(&mut self, found: Option<bool>, now: u64, recheck_seconds: u64) {
        match found {
            Some(false) => self.missing_until = Some(now.saturating_add(recheck_seconds)),
            Some(true) => self.missing_until = None,
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000;

    #[test]
    fn unset_mode_probes_the_function_until_it_is_found_missing() {
        let memory = AtomicFunction::default();
        assert_eq!(memory.route(AtomicMode::Auto, NOW), Route::Probe);
    }

    #[test]
    fn missing_function_means_rest_until_the_recheck_interval_has_passed() {
        let mut memory = AtomicFunction::default();
        memory.learn(Some(false), NOW, 300);
        assert_eq!(memory.route(AtomicMode::Auto, NOW), Route::Rest);
        assert_eq!(memory.route(AtomicMode::Auto, NOW + 299), Route::Rest);
        assert_eq!(memory.route(AtomicMode::Auto, NOW + 300), Route::Probe, "looked for again");
    }

    #[test]
    fn function_found_after_being_missing_is_used_again() {
        let mut memory = AtomicFunction::default();
        memory.learn(Some(false), NOW, 300);
        memory.learn(Some(true), NOW + 300, 300);
        assert_eq!(memory.route(AtomicMode::Auto, NOW + 301), Route::Probe);
        memory.learn(None, NOW + 302, 300);
        assert_eq!(memory.route(AtomicMode::Auto, NOW + 303), Route::Probe, "no answer teaches nothing");
    }

    #[test]
    fn upload_atomic_true_or_false_ignores_the_memory() {
        let mut memory = AtomicFunction::default();
        memory.learn(Some(false), NOW, 300);
        assert_eq!(memory.route(AtomicMode::Always, NOW), Route::Atomic);
        assert_eq!(AtomicFunction::default().route(AtomicMode::Never, NOW), Route::Rest);
    }
}
