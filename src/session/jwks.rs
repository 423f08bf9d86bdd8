//! The project's signing keys, as published at `/auth/v1/.well-known/jwks.json`, cached in
//! isolate memory.
//!
//! Rules (Supabase asks for them): keep a copy at most `ttl` seconds (never more than 600; 0
//! means a copy serves only the requests of the second it was fetched in); refetch once when a
//! token names an unknown `kid` (a key rotation), at most once per `refetch_interval`; when no
//! fresh copy can be had, refuse with `KeysUnavailable` rather than trust a stale one. A failed
//! fetch is not repeated on every request: the next try waits 1, 2, 4, ... up to
//! [`MAX_BACKOFF_SECONDS`] seconds, and requests in between are answered "try again".
//!
//! Single flight: while a fetch handed out by [`JwksCache::wants_fetch`] is under way, the other
//! requests of the isolate that need the keys are told to wait for it ([`Freshness::InFlight`])
//! instead of fetching too; the fetch ends with [`JwksCache::accept`] or [`JwksCache::fail`]
//! (a waiting request then uses its result: [`JwksCache::after_wait`]), or is given up with
//! [`JwksCache::abandon`] (its request went away) so that one of the waiting requests takes over.

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

use super::SessionError;
use crate::http::{HttpResponse, TransportError};

/// Longest wait between two tries after failed JWKS fetches.
pub const MAX_BACKOFF_SECONDS: u64 = 60;

/// Whether a token's key can be looked up now, or why not (see [`JwksCache::wants_fetch`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Look the key up in the cache as it is.
    Cached,
    /// Fetch the JWKS first.
    Fetch,
    /// The token names an unknown `kid` but a refetch is held back (rate limit or back-off): an
    /// unknown key then means "try again", not "invalid", so a real key rotation is never
    /// refused because forged tokens used up the refetch.
    Suppressed,
    /// Another request is fetching the keys: wait until it has ended, then look again.
    InFlight,
}

struct CachedKey {
    kid: Option<String>,
    alg: Algorithm,
    jwk: Jwk,
    /// Only the public parameters, as JSON: what WebCrypto imports (computed once per fetch).
    public_json: String,
}

impl std::fmt::Debug for CachedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CachedKey({:?}, {:?})", self.kid, self.alg)
    }
}

#[derive(Debug)]
pub struct JwksCache {
    ttl: u64,
    keys: Vec<CachedKey>,
    fetched_at: Option<u64>,
    /// When a token's unknown `kid` last triggered a refetch (the rate-limited kind).
    last_refetch: Option<u64>,
    last_error: Option<String>,
    /// Failed fetches in a row, and when the last one failed (for the back-off).
    failures: u32,
    failed_at: Option<u64>,
    /// A fetch handed out by `wants_fetch` has not ended yet (single flight).
    fetching: bool,
    /// Fetches handed out so far, and ended so far (successful or not).
    started: u64,
    ended: u64,
}

/// How far a key set's fetches were when a request began to wait for one (see
/// [`JwksCache::after_wait`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlightMark {
    started: u64,
    ended: u64,
}

impl JwksCache {
    pub fn new(ttl: u64) -> JwksCache {
        JwksCache {
            ttl: ttl.min(600),
            keys: Vec::new(),
            fetched_at: None,
            last_refetch: None,
            last_error: None,
            failures: 0,
            failed_at: None,
            fetching: false,
            started: 0,
            ended: 0,
        }
    }

    /// A copy serves at least the requests of the second it was fetched in (so `ttl` 0 means
    /// "fetch for every request", not "never usable").
    fn is_fresh(&self, now: u64) -> bool {
        self.fetched_at.is_some_and(|at| now.saturating_sub(at) < self.ttl.max(1))
    }

    /// Whether failed fetches ask to wait at `now` (1, 2, 4, ... s after the last failure).
    fn backing_off(&self, now: u64) -> bool {
        let wait = 1u64.checked_shl(self.failures.saturating_sub(1)).unwrap_or(u64::MAX).min(MAX_BACKOFF_SECONDS);
        self.failures > 0 && self.failed_at.is_some_and(|at| now.saturating_sub(at) < wait)
    }

    /// Whether the copy can answer for `kid` without a fetch. A token without a `kid` against a
    /// set of several keys is answered too: no fetch could choose among them (it is invalid,
    /// 401, not "try again" for ever). Against one key or none it may still ask for the
    /// rate-limited refetch (the provider may have replaced its only key).
    fn knows(&self, kid: Option<&str>) -> bool {
        match kid {
            None => self.keys.len() >= 2 || self.keys.iter().any(|k| k.kid.is_none()),
            Some(_) => self.keys.iter().any(|k| k.kid.as_deref() == kid),
        }
    }

    /// Why the last fetch failed, when it did (`None` once a fetch succeeded since).
    pub fn last_failure(&self) -> Option<String> {
        (self.failures > 0).then(|| self.last_error.clone().unwrap_or_else(|| "fetch failed".into()))
    }

    /// Whether a token with this `kid` calls for a fetch at `now`. A refetch for an unknown
    /// `kid` is allowed once per `refetch_interval` and counted from this call; no fetch is
    /// asked for while failed fetches back off, nor while another is under way (`InFlight`).
    /// `Fetch` hands the fetch to the caller: until it ends, everyone else is told `InFlight`.
    pub fn wants_fetch(&mut self, kid: Option<&str>, now: u64, refetch_interval: u64) -> Freshness {
        let wants = self.wants(kid, now, refetch_interval);
        if wants == Freshness::Fetch {
            self.fetching = true;
            self.started = self.started.wrapping_add(1);
        }
        wants
    }

    fn wants(&mut self, kid: Option<&str>, now: u64, refetch_interval: u64) -> Freshness {
        if self.is_fresh(now) && self.knows(kid) {
            return Freshness::Cached;
        }
        if self.fetching {
            return Freshness::InFlight;
        }
        if self.backing_off(now) {
            return Freshness::Suppressed;
        }
        if !self.is_fresh(now) {
            return Freshness::Fetch;
        }
        if self.last_refetch.is_some_and(|at| now.saturating_sub(at) < refetch_interval) {
            return Freshness::Suppressed;
        }
        self.last_refetch = Some(now);
        Freshness::Fetch
    }

    /// Takes a fetch result, ending the fetch. A failed fetch keeps the previous copy until its
    /// TTL runs out.
    pub fn accept(&mut self, answer: Result<HttpResponse, TransportError>, now: u64) {
        match parse(answer) {
            Ok(keys) => {
                self.keys = keys;
                self.fetched_at = Some(now);
                self.last_error = None;
                self.failures = 0;
                self.failed_at = None;
                self.end();
            }
            Err(why) => self.fail(why, now),
        }
    }

    /// Records a failed fetch (or a failed step before it, such as OpenID discovery), ending it:
    /// the previous copy is kept until its TTL runs out, and the next try backs off.
    pub fn fail(&mut self, why: String, now: u64) {
        self.last_error = Some(why);
        self.failures = self.failures.saturating_add(1);
        self.failed_at = Some(now);
        self.end();
    }

    fn end(&mut self) {
        self.fetching = false;
        self.ended = self.ended.wrapping_add(1);
    }

    /// Gives up the fetch under way without a result (the request making it went away): the
    /// next caller of `wants_fetch` may fetch again.
    pub fn abandon(&mut self) {
        self.fetching = false;
    }

    /// Where the fetches stand, for a request about to wait for the one under way.
    pub fn mark(&self) -> FlightMark {
        FlightMark { started: self.started, ended: self.ended }
    }

    /// After a wait that began at `mark`: `true` when a fetch has ended since (verify with what
    /// it brought). Otherwise the fetch waited for was given up, or, when the wait ran out
    /// (`resumed` false) and that same fetch is still under way, it is taken as lost (its
    /// request went away without a word) and given up here; either way the caller plans again.
    pub fn after_wait(&mut self, mark: FlightMark, resumed: bool) -> bool {
        if self.ended != mark.ended {
            return true;
        }
        if !resumed && self.fetching && self.started == mark.started {
            self.fetching = false;
        }
        false
    }

    /// The key (and its public-parameters JSON) for a token's `kid` and `alg`, if the cache is
    /// fresh and holds it.
    pub fn key_for(&self, kid: Option<&str>, alg: Algorithm, now: u64) -> Result<(&Jwk, &str), SessionError> {
        if !self.is_fresh(now) {
            let why = self.last_error.clone().unwrap_or_else(|| "not fetched".into());
            return Err(SessionError::KeysUnavailable(why));
        }
        let found = match kid {
            Some(_) => self.keys.iter().find(|k| k.kid.as_deref() == kid),
            // No kid: only unambiguous when the set has exactly one key.
            None if self.keys.len() == 1 => self.keys.first(),
            None => None,
        };
        let found =
            found.ok_or_else(|| SessionError::UnknownKey(kid.unwrap_or("(none)").chars().take(64).collect()))?;
        if found.alg != alg {
            return Err(SessionError::KeyMismatch(format!("token alg {alg:?}, key alg {:?}", found.alg)));
        }
        Ok((&found.jwk, &found.public_json))
    }
}

fn parse(answer: Result<HttpResponse, TransportError>) -> Result<Vec<CachedKey>, String> {
    let response = answer.map_err(|e| e.message)?;
    if response.status != 200 {
        return Err(format!("JWKS answered {}", response.status_described()));
    }
    // Parse key by key so one exotic key (e.g. a future EdDSA one) does not hide the others.
    let raw: serde_json::Value = serde_json::from_str(&response.body).map_err(|e| format!("JWKS is not JSON: {e}"))?;
    let items = raw.get("keys").and_then(|k| k.as_array()).ok_or("JWKS has no 'keys' array")?;
    Ok(items
        .iter()
        .filter_map(|item| serde_json::from_value::<Jwk>(item.clone()).ok())
        .filter_map(|jwk| cached(&jwk))
        .collect())
}

/// A verification key with the one algorithm it may verify, or `None` for keys we do not use.
fn cached(jwk: &Jwk) -> Option<CachedKey> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))) {
        return None;
    }
    let declared = jwk.common.key_algorithm.and_then(|a| Algorithm::try_from(a).ok());
    let alg = match (&jwk.algorithm, declared) {
        (AlgorithmParameters::RSA(_), None) => Algorithm::RS256,
        (AlgorithmParameters::EllipticCurve(p), None) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        (AlgorithmParameters::RSA(_), Some(a @ Algorithm::RS256)) => a,
        (AlgorithmParameters::EllipticCurve(p), Some(a @ Algorithm::ES256)) if p.curve == EllipticCurve::P256 => a,
        _ => return None,
    };
    // Keys that cannot be used for verification are dropped here, not at request time.
    DecodingKey::from_jwk(jwk).ok()?;
    let value = serde_json::to_value(jwk).ok()?;
    let public: serde_json::Map<String, serde_json::Value> = ["kty", "crv", "x", "y", "n", "e"]
        .iter()
        .filter_map(|name| value.get(*name).map(|v| (name.to_string(), v.clone())))
        .collect();
    let public_json = serde_json::Value::Object(public).to_string();
    Some(CachedKey { kid: jwk.common.key_id.clone(), alg, jwk: jwk.clone(), public_json })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::tests::{hs256, settings, user_claims, NOW};
    use super::super::{KeySet, SessionError, Step, Verifier};
    use super::*;
    use crate::keys::tests::test_key;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    /// Test-only P-256 key (generated for these tests; not used anywhere else).
    pub(crate) const EC_PEM: &str = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgfa0VCgJB6xMMggJ5\nN0dvO0kr9zFiosGSsYGA6rsd++KhRANCAATOM69wbM1n6G3cI6mD18KWtyr7ZlvD\nSPg1dlV70LpWYJJZjZj/0YAKs82lEaj+f959Viio5fSTYEUOwztABeVJ\n-----END PRIVATE KEY-----\n";
    const EC_X: &str = "zjOvcGzNZ-ht3COpg9fClrcq-2Zbw0j4NXZVe9C6VmA";
    const EC_Y: &str = "klmNmP_RgAqzzaURqP5_3n1WKKjl9JNgRQ7DO0AF5Uk";

    pub(crate) fn ec_jwk(kid: &str) -> serde_json::Value {
        json!({"kty": "EC", "crv": "P-256", "x": EC_X, "y": EC_Y, "alg": "ES256", "use": "sig", "kid": kid})
    }

    pub(crate) fn rsa_jwk(kid: &str) -> serde_json::Value {
        serde_json::to_value(test_key().public_jwk(kid)).unwrap()
    }

    fn es256(kid: &str) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.into());
        jsonwebtoken::encode(&header, &user_claims(), &EncodingKey::from_ec_pem(EC_PEM.as_bytes()).unwrap()).unwrap()
    }

    fn rs256(kid: &str) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(kid.into());
        jsonwebtoken::encode(&header, &user_claims(), &EncodingKey::from_rsa_der(&test_key().pkcs1_der())).unwrap()
    }

    fn jwks(keys: Vec<serde_json::Value>) -> Result<HttpResponse, TransportError> {
        Ok(HttpResponse { status: 200, headers: vec![], body: json!({ "keys": keys }).to_string() })
    }

    fn verifier_with(keys: Vec<serde_json::Value>) -> Verifier {
        let mut v = Verifier::new(settings());
        v.accept_jwks(jwks(keys), NOW);
        v
    }

    #[test]
    fn first_es256_session_asks_for_the_jwks_at_the_auth_url() {
        let mut v = Verifier::new(settings());
        match v.plan(&es256("k1"), NOW) {
            Step::FetchJwks(request) => {
                assert_eq!(request.url, "http://127.0.0.1:54321/auth/v1/.well-known/jwks.json");
                assert_eq!(request.method, crate::http::Method::Get);
            }
            other => panic!("expected a fetch, got {other:?}"),
        }
    }

    #[test]
    fn es256_session_verifies_against_the_jwks() {
        let mut v = verifier_with(vec![ec_jwk("k1")]);
        assert_eq!(v.plan(&es256("k1"), NOW), Step::Ready);
        assert_eq!(v.verify(&es256("k1"), NOW).unwrap().user_id, "user-1");
    }

    #[test]
    fn signature_check_carries_only_the_public_parameters_for_webcrypto() {
        let v = verifier_with(vec![ec_jwk("k1"), rsa_jwk("r1")]);
        let ec = v.begin(&es256("k1"), NOW).unwrap().signature.unwrap();
        let public: serde_json::Value = serde_json::from_str(&ec.public_jwk).unwrap();
        assert_eq!(public, json!({"kty": "EC", "crv": "P-256", "x": EC_X, "y": EC_Y}));
        assert_eq!(ec.signature.len(), 64, "ES256 signatures are raw r || s");
        let rsa = v.begin(&rs256("r1"), NOW).unwrap().signature.unwrap();
        let public: serde_json::Value = serde_json::from_str(&rsa.public_jwk).unwrap();
        assert_eq!(public.as_object().unwrap().keys().collect::<Vec<_>>(), vec!["e", "kty", "n"]);
    }

    #[test]
    fn rs256_session_verifies_against_the_jwks() {
        let v = verifier_with(vec![ec_jwk("k1"), rsa_jwk("r1")]);
        assert_eq!(v.verify(&rs256("r1"), NOW).unwrap().user_id, "user-1");
    }

    #[test]
    fn unknown_kid_triggers_one_refetch_then_is_rate_limited() {
        let mut v = verifier_with(vec![ec_jwk("old")]);
        assert!(matches!(v.plan(&es256("new"), NOW + 1), Step::FetchJwks(_)), "right after a fetch too");
        v.accept_jwks(jwks(vec![ec_jwk("old")]), NOW + 1);
        assert_eq!(v.verify(&es256("new"), NOW + 1), Err(SessionError::UnknownKey("new".into())));
        assert_eq!(v.plan(&es256("new"), NOW + 5), Step::RefetchSuppressed, "rate-limited");
        assert_eq!(v.plan(&es256("other"), NOW + 30), Step::RefetchSuppressed, "rate-limited for any kid");
        assert!(matches!(v.plan(&es256("new"), NOW + 31), Step::FetchJwks(_)));
        assert_eq!(v.plan(&es256("old"), NOW + 32), Step::Ready, "known kids never refetch");
    }

    #[test]
    fn while_a_fetch_is_under_way_everyone_else_waits_for_it() {
        let mut v = verifier_with(vec![ec_jwk("k1")]);
        let fetch = v.plan(&es256("k1"), NOW + 600);
        assert!(matches!(fetch, Step::FetchJwks(_)), "expired: the first request fetches");
        // Expired copy or unknown kid alike: the others wait, none fetches.
        let waits: Vec<(String, Step)> =
            ["k1", "k1", "rotated"].iter().map(|kid| (es256(kid), v.plan(&es256(kid), NOW + 600))).collect();
        for (_, wait) in &waits {
            assert!(matches!(wait, Step::Wait { keys: KeySet::Supabase, .. }), "{wait:?}");
            assert_eq!(wait.request(), None);
        }
        v.accept(&fetch, jwks(vec![ec_jwk("k1"), ec_jwk("rotated")]), NOW + 601);
        for (token, wait) in &waits {
            assert_eq!(v.after_wait(token, NOW + 601, wait, true), Step::Ready);
            assert!(v.verify(token, NOW + 601).is_ok());
        }
        assert_eq!(v.plan(&es256("k1"), NOW + 602), Step::Ready, "fresh again");
    }

    #[test]
    fn requests_that_waited_for_a_fetch_use_its_result_and_never_fetch_again() {
        let mut v = verifier_with(vec![ec_jwk("k1")]);
        let fetch = v.plan(&es256("forged"), NOW + 1);
        assert!(matches!(fetch, Step::FetchJwks(_)));
        let wait = v.plan(&es256("other-forged"), NOW + 1);
        v.accept(&fetch, jwks(vec![ec_jwk("k1")]), NOW + 1);
        // The key set was fetched after this request arrived: its unknown kid is invalid (401).
        let step = v.after_wait(&es256("other-forged"), NOW + 1, &wait, true);
        assert_eq!(step, Step::Ready);
        let error = v
            .begin(&es256("other-forged"), NOW + 1)
            .map(|_| ())
            .map_err(|e| v.explain(&es256("other-forged"), &step, e));
        assert_eq!(error, Err(SessionError::UnknownKey("other-forged".into())));
        // A failed fetch ends the wait too: "try again" (503), and the back-off holds.
        let mut v = Verifier::new(settings());
        let fetch = v.plan(&es256("k1"), NOW);
        let wait = v.plan(&es256("k1"), NOW);
        v.accept(&fetch, Err(TransportError::timed_out("no answer")), NOW);
        assert_eq!(v.after_wait(&es256("k1"), NOW, &wait, true), Step::Ready);
        assert!(matches!(v.verify(&es256("k1"), NOW), Err(SessionError::KeysUnavailable(_))));
        assert_eq!(v.plan(&es256("k1"), NOW), Step::RefetchSuppressed);
    }

    #[test]
    fn an_abandoned_or_overdue_fetch_is_taken_over_by_one_waiting_request() {
        for abandoned in [true, false] {
            let mut v = Verifier::new(settings());
            let fetch = v.plan(&es256("k1"), NOW);
            let (first, second) = (v.plan(&es256("k1"), NOW), v.plan(&es256("k1"), NOW));
            if abandoned {
                // The fetching request went away: its waiters are resumed and plan again.
                v.abandon(&fetch);
            }
            // Resumed after an abandon, or its wait ran out: this one fetches itself...
            let took_over = v.after_wait(&es256("k1"), NOW + 30, &first, abandoned);
            assert!(matches!(took_over, Step::FetchJwks(_)), "{took_over:?}");
            // ...and the other waits for it.
            let still = v.after_wait(&es256("k1"), NOW + 30, &second, abandoned);
            assert!(matches!(still, Step::Wait { .. }), "{still:?}");
            v.accept(&took_over, jwks(vec![ec_jwk("k1")]), NOW + 31);
            assert_eq!(v.after_wait(&es256("k1"), NOW + 31, &still, true), Step::Ready);
            // The old fetch's late answer is still taken (and ends nothing else).
            v.accept(&fetch, jwks(vec![ec_jwk("k1")]), NOW + 32);
            assert!(v.verify(&es256("k1"), NOW + 32).is_ok());
        }
    }

    #[test]
    fn rotated_kid_after_forged_kids_used_the_refetch_is_try_again_not_invalid() {
        let mut v = verifier_with(vec![ec_jwk("old")]);
        // A forged token with a random kid takes the refetch slot; the JWKS really lacks it.
        assert!(matches!(v.plan(&es256("forged"), NOW + 1), Step::FetchJwks(_)));
        v.accept_jwks(jwks(vec![ec_jwk("old")]), NOW + 1);
        // The project rotates its key; a real token with the new kid arrives inside the window.
        let step = v.plan(&es256("rotated"), NOW + 2);
        assert_eq!(step, Step::RefetchSuppressed);
        let error = v.begin(&es256("rotated"), NOW + 2).map(|_| ()).map_err(|e| v.explain(&es256("rotated"), &step, e));
        assert!(matches!(&error, Err(SessionError::KeysUnavailable(why)) if why.contains("rotated")), "{error:?}");
        let api = crate::error::ApiError::Session(error.unwrap_err());
        assert_eq!((api.status(), api.code()), (503, "session_keys_unavailable"));
        // Once the window has passed, the refetch happens and the new key verifies.
        assert!(matches!(v.plan(&es256("rotated"), NOW + 31), Step::FetchJwks(_)));
        v.accept_jwks(jwks(vec![ec_jwk("old"), ec_jwk("rotated")]), NOW + 31);
        assert!(v.verify(&es256("rotated"), NOW + 31).is_ok());
    }

    #[test]
    fn unknown_kid_whose_refetch_failed_is_try_again_for_the_fetching_and_the_waiting_request() {
        // The project rotated its key; the fresh copy lacks the new kid and the refetch times out.
        let mut v = verifier_with(vec![ec_jwk("old")]);
        let rotated = es256("rotated");
        let fetch = v.plan(&rotated, NOW + 40);
        assert!(matches!(fetch, Step::FetchJwks(_)));
        let wait = v.plan(&rotated, NOW + 40);
        v.accept(&fetch, Err(TransportError::timed_out("no answer")), NOW + 40);
        let waited = v.after_wait(&rotated, NOW + 40, &wait, true);
        for step in [&fetch, &waited] {
            let error = v.begin(&rotated, NOW + 40).map(|_| ()).map_err(|e| v.explain(&rotated, step, e));
            assert!(
                matches!(&error, Err(SessionError::KeysUnavailable(why)) if why.contains("rotated") && why.contains("no answer")),
                "{error:?}"
            );
            let api = crate::error::ApiError::Session(error.unwrap_err());
            assert_eq!((api.status(), api.code()), (503, "session_keys_unavailable"));
        }
        // The old key still verifies meanwhile; once a refetch succeeds, an unknown kid is invalid.
        assert!(v.verify(&es256("old"), NOW + 40).is_ok());
        let step = v.plan(&es256("forged"), NOW + 100);
        v.accept(&step, jwks(vec![ec_jwk("old")]), NOW + 100);
        let error = v.begin(&es256("forged"), NOW + 100).map(|_| ()).map_err(|e| v.explain(&es256("forged"), &step, e));
        assert_eq!(error, Err(SessionError::UnknownKey("forged".into())));
    }

    #[test]
    fn token_without_kid_is_invalid_without_refetches_when_several_keys_could_be_meant() {
        let no_kid = jsonwebtoken::encode(
            &Header::new(Algorithm::ES256),
            &user_claims(),
            &EncodingKey::from_ec_pem(EC_PEM.as_bytes()).unwrap(),
        )
        .unwrap();
        let one = verifier_with(vec![ec_jwk("k1")]);
        assert_eq!(one.verify(&no_kid, NOW + 40).unwrap().user_id, "user-1", "the only key");
        let mut several = verifier_with(vec![ec_jwk("k1"), rsa_jwk("r1")]);
        for now in [NOW + 1, NOW + 2, NOW + 40] {
            let step = several.plan(&no_kid, now);
            assert_eq!(step, Step::Ready, "no fetch can choose among several keys");
            let error = several.begin(&no_kid, now).map(|_| ()).map_err(|e| several.explain(&no_kid, &step, e));
            assert_eq!(error, Err(SessionError::UnknownKey("(none)".into())), "401, not 503 for ever");
        }
    }

    #[test]
    fn unknown_kid_right_after_its_own_refetch_is_invalid() {
        let mut v = verifier_with(vec![ec_jwk("old")]);
        let step = v.plan(&es256("nope"), NOW + 40);
        assert!(matches!(step, Step::FetchJwks(_)));
        v.accept_jwks(jwks(vec![ec_jwk("old")]), NOW + 40);
        let error = v.begin(&es256("nope"), NOW + 40).map(|_| ()).map_err(|e| v.explain(&es256("nope"), &step, e));
        assert_eq!(error, Err(SessionError::UnknownKey("nope".into())));
    }

    #[test]
    fn cache_seconds_zero_fetches_for_every_request_and_still_verifies() {
        let mut s = settings();
        s.jwks_cache_seconds = 0;
        let mut v = Verifier::new(s);
        for now in [NOW, NOW + 1, NOW + 2] {
            assert!(matches!(v.plan(&es256("k1"), now), Step::FetchJwks(_)), "no copy outlives its second");
            v.accept_jwks(jwks(vec![ec_jwk("k1")]), now);
            assert_eq!(v.verify(&es256("k1"), now).unwrap().user_id, "user-1");
        }
    }

    #[test]
    fn failed_jwks_fetches_back_off_instead_of_refetching_on_every_request() {
        let down = || Err(TransportError::no_answer("connection refused"));
        let mut v = Verifier::new(settings());
        let mut fetches = vec![];
        for now in NOW..NOW + 40 {
            if let Step::FetchJwks(_) = v.plan(&es256("k1"), now) {
                fetches.push(now - NOW);
                v.accept_jwks(down(), now);
            }
            assert!(matches!(v.verify(&es256("k1"), now), Err(SessionError::KeysUnavailable(_))));
        }
        assert_eq!(fetches, vec![0, 1, 3, 7, 15, 31], "waits of 1, 2, 4, 8, 16 s");
        // The wait is capped, and one success ends it.
        let mut v = Verifier::new(settings());
        for now in (NOW..NOW + 2000).step_by(60) {
            v.accept_jwks(down(), now);
        }
        assert!(matches!(v.plan(&es256("k1"), NOW + 1980 + MAX_BACKOFF_SECONDS), Step::FetchJwks(_)));
        v.accept_jwks(jwks(vec![ec_jwk("k1")]), NOW + 2100);
        assert!(v.verify(&es256("k1"), NOW + 2100).is_ok());
    }

    #[test]
    fn rotated_key_is_found_after_refetch() {
        let mut v = verifier_with(vec![ec_jwk("old")]);
        v.accept_jwks(jwks(vec![ec_jwk("old"), ec_jwk("new")]), NOW + 60);
        assert!(v.verify(&es256("new"), NOW + 60).is_ok());
        assert!(v.verify(&es256("old"), NOW + 60).is_ok());
    }

    #[test]
    fn jwks_is_refetched_after_ten_minutes() {
        let mut v = verifier_with(vec![ec_jwk("k1")]);
        assert_eq!(v.plan(&es256("k1"), NOW + 599), Step::Ready);
        assert!(matches!(v.plan(&es256("k1"), NOW + 600), Step::FetchJwks(_)));
    }

    #[test]
    fn unreachable_jwks_without_cache_is_keys_unavailable() {
        let mut v = Verifier::new(settings());
        v.accept_jwks(Err(TransportError::no_answer("connection refused")), NOW);
        assert!(matches!(v.verify(&es256("k1"), NOW), Err(SessionError::KeysUnavailable(r)) if r.contains("refused")));
        v.accept_jwks(Ok(HttpResponse { status: 500, headers: vec![], body: String::new() }), NOW);
        assert!(matches!(v.verify(&es256("k1"), NOW), Err(SessionError::KeysUnavailable(r)) if r.contains("500")));
    }

    #[test]
    fn stale_jwks_is_not_trusted_when_refetch_fails() {
        let mut v = verifier_with(vec![ec_jwk("k1")]);
        v.accept_jwks(Err(TransportError::timed_out("timeout")), NOW + 700);
        assert!(matches!(v.verify(&es256("k1"), NOW + 700), Err(SessionError::KeysUnavailable(_))));
    }

    #[test]
    fn failed_refetch_keeps_the_fresh_copy() {
        let mut v = verifier_with(vec![ec_jwk("k1")]);
        v.accept_jwks(Err(TransportError::timed_out("timeout")), NOW + 100);
        assert!(v.verify(&es256("k1"), NOW + 100).is_ok());
    }

    #[test]
    fn rs256_token_against_an_ec_key_is_a_key_mismatch() {
        let v = verifier_with(vec![ec_jwk("k1")]);
        assert!(matches!(v.verify(&rs256("k1"), NOW), Err(SessionError::KeyMismatch(_))));
    }

    #[test]
    fn hs256_token_is_never_checked_against_a_public_jwk() {
        // The classic confusion: an HS256 token "signed" with the public key bytes.
        let mut s = settings();
        s.jwt_secret = None;
        let mut v = Verifier::new(s);
        v.accept_jwks(jwks(vec![rsa_jwk("r1")]), NOW);
        let public_n = test_key().public_jwk("r1").n.unwrap();
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("r1".into());
        let forged =
            jsonwebtoken::encode(&header, &user_claims(), &EncodingKey::from_secret(public_n.as_bytes())).unwrap();
        assert!(matches!(v.verify(&forged, NOW), Err(SessionError::AlgorithmNotAllowed(_))));
    }

    #[test]
    fn encryption_keys_and_unsupported_keys_are_ignored() {
        let mut enc = ec_jwk("enc");
        enc["use"] = json!("enc");
        let okp =
            json!({"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "kid": "ed"});
        let v = verifier_with(vec![enc, okp, ec_jwk("k1")]);
        assert_eq!(v.verify(&es256("enc"), NOW), Err(SessionError::UnknownKey("enc".into())));
        assert!(v.verify(&es256("k1"), NOW).is_ok());
    }

    #[test]
    fn legacy_only_project_with_empty_jwks_still_accepts_hs256() {
        let v = verifier_with(vec![]);
        assert!(v.verify(&hs256(&user_claims()), NOW).is_ok());
        assert!(matches!(v.verify(&es256("k1"), NOW), Err(SessionError::UnknownKey(_))));
    }

    #[test]
    fn jwks_key_that_is_not_a_valid_curve_point_verifies_no_token() {
        let mut other = ec_jwk("k1");
        other["x"] = json!("WbbXwVYGdJoP4Xm3qCkGvBRcRvKtEfXDbyvbH6nSXhg");
        other["y"] = json!("6JRawYF0nLzHgzvU2fIV0jtbWKtL2JoGVdpoBJBsYGM");
        let v = verifier_with(vec![other]);
        // refused as a key that does not fit (401), before any signature is checked
        let r = v.verify(&es256("k1"), NOW);
        assert!(matches!(&r, Err(SessionError::KeyMismatch(why)) if why.contains("InvalidEcdsaKey")), "{r:?}");
    }
}
