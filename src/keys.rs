//! The PowerSync signing key: every form `POWERSYNC_PRIVATE_KEY` arrives in, turned into one
//! RSA key, plus the public JWK/JWKS that PowerSync verifies tokens against.
//!
//! Accepted forms (the ones found in PowerSync's demos, dashboards and support threads):
//! PKCS#8 PEM, PKCS#1 PEM, PEM whose newlines arrived as literal `\n` or as spaces, base64 of a PEM,
//! RSA private JWK JSON, and base64 / base64url of that JSON. Each unusable form is reported with
//! its own [`KeyError`] so the operator sees exactly what is wrong, never the key itself.

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use rsa::pkcs1::{DecodeRsaPrivateKey, EncodeRsaPrivateKey};
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use rsa::traits::{PrivateKeyParts, PublicKeyParts};
use rsa::{BigUint, RsaPrivateKey};
use serde::{Deserialize, Serialize};

/// Smallest modulus accepted: RSA keys under 2048 bits are not safe to sign with.
pub const MIN_RSA_BITS: usize = 2048;

/// Why `POWERSYNC_PRIVATE_KEY` could not be used. `code()` is the stable machine code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    Empty,
    /// A PEM block whose label is not an RSA private key (public key, EC key, certificate, ...).
    UnsupportedPemLabel(String),
    EncryptedPem,
    /// PEM armour present but its body is not valid base64 / not a key.
    BadPem(String),
    /// A PKCS#8 key for an algorithm other than RSA.
    NotRsa,
    /// JWK JSON that is not a usable RSA private key.
    BadJwk(String),
    TooSmall(usize),
    /// Neither PEM, JWK JSON nor base64 of either.
    Unrecognized,
}

impl KeyError {
    pub fn code(&self) -> &'static str {
        match self {
            KeyError::Empty => "private_key_empty",
            KeyError::UnsupportedPemLabel(_) => "private_key_wrong_pem_type",
            KeyError::EncryptedPem => "private_key_encrypted",
            KeyError::BadPem(_) => "private_key_bad_pem",
            KeyError::NotRsa => "private_key_not_rsa",
            KeyError::BadJwk(_) => "private_key_bad_jwk",
            KeyError::TooSmall(_) => "private_key_too_small",
            KeyError::Unrecognized => "private_key_unrecognized_format",
        }
    }

    /// A precise reason for the log. Never contains key material.
    pub fn reason(&self) -> String {
        match self {
            KeyError::Empty => "POWERSYNC_PRIVATE_KEY is empty".into(),
            KeyError::UnsupportedPemLabel(label) => format!(
                "PEM block is '{label}', expected 'PRIVATE KEY' (PKCS#8) or 'RSA PRIVATE KEY' (PKCS#1)"
            ),
            KeyError::EncryptedPem => "PEM key is encrypted; export it without a passphrase".into(),
            KeyError::BadPem(why) => format!("PEM key could not be read: {why}"),
            KeyError::NotRsa => "PKCS#8 key is not an RSA key; PowerSync tokens are signed with RS256".into(),
            KeyError::BadJwk(why) => format!("JWK is not a usable RSA private key: {why}"),
            KeyError::TooSmall(bits) => {
                format!("RSA key has {bits} bits; at least {MIN_RSA_BITS} are required")
            }
            KeyError::Unrecognized => {
                "not a PEM key, a JWK, or base64 of either (check for truncation when pasting)".into()
            }
        }
    }
}

/// The public half of an RSA key as a JWK, as PowerSync reads it from a JWKS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicJwk {
    pub kty: String,
    pub n: String,
    pub e: String,
    pub alg: String,
    #[serde(rename = "use")]
    pub key_use: String,
    pub kid: String,
}

/// A usable RSA signing key.
#[derive(Clone)]
pub struct SigningKey {
    key: RsaPrivateKey,
    /// The `kid` found in a JWK-form key, used when `POWERSYNC_KEY_ID` is unset.
    pub jwk_kid: Option<String>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        write!(f, "SigningKey({} bits, jwk_kid: {:?})", self.key.size() * 8, self.jwk_kid)
    }
}

impl SigningKey {
    /// Reads `POWERSYNC_PRIVATE_KEY` in any accepted form.
    pub fn parse(input: &str) -> Result<SigningKey, KeyError> {
        let text = unquote(input.trim());
        if text.is_empty() {
            return Err(KeyError::Empty);
        }
        if let Some(key) = parse_text(text)? {
            return Ok(key);
        }
        // Base64 (or base64url) of a PEM or of JWK JSON.
        let compact: String = text.split_whitespace().collect();
        let decoded = [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
            .iter()
            .find_map(|engine| engine.decode(compact.as_bytes()).ok())
            .ok_or(KeyError::Unrecognized)?;
        let inner = String::from_utf8(decoded).map_err(|_| KeyError::Unrecognized)?;
        parse_text(unquote(inner.trim()))?.ok_or(KeyError::Unrecognized)
    }

    /// PKCS#8 DER, the form WebCrypto's `importKey("pkcs8", ...)` takes.
    pub fn pkcs8_der(&self) -> Vec<u8> {
        self.key.to_pkcs8_der().map(|d| d.as_bytes().to_vec()).unwrap_or_default()
    }

    /// PKCS#1 DER, the form `jsonwebtoken::EncodingKey::from_rsa_der` takes.
    pub fn pkcs1_der(&self) -> Vec<u8> {
        self.key.to_pkcs1_der().map(|d| d.as_bytes().to_vec()).unwrap_or_default()
    }

    pub fn bits(&self) -> usize {
        self.key.size() * 8
    }

    /// The public JWK PowerSync needs, under `kid`.
    pub fn public_jwk(&self, kid: &str) -> PublicJwk {
        PublicJwk {
            kty: "RSA".into(),
            n: URL_SAFE_NO_PAD.encode(self.key.n().to_bytes_be()),
            e: URL_SAFE_NO_PAD.encode(self.key.e().to_bytes_be()),
            alg: "RS256".into(),
            key_use: "sig".into(),
            kid: kid.into(),
        }
    }

    /// The private key as a JWK (the official demos' secret format); used by the dev tool.
    pub fn private_jwk(&self, kid: &str) -> serde_json::Value {
        let b = |n: &BigUint| URL_SAFE_NO_PAD.encode(n.to_bytes_be());
        let primes = self.key.primes();
        let mut jwk = serde_json::json!({
            "kty": "RSA", "alg": "RS256", "kid": kid,
            "n": b(self.key.n()), "e": b(self.key.e()), "d": b(self.key.d()),
            "p": b(&primes[0]), "q": b(&primes[1]),
        });
        let crt = [("dp", self.key.dp().cloned()), ("dq", self.key.dq().cloned()), ("qi", self.key.crt_coefficient())];
        if let Some(obj) = jwk.as_object_mut() {
            for (name, value) in crt {
                if let Some(value) = value {
                    obj.insert(name.into(), b(&value).into());
                }
            }
        }
        jwk
    }

    /// PKCS#8 PEM; used by the dev tool.
    pub fn pkcs8_pem(&self) -> String {
        self.key
            .to_pkcs8_pem(rsa::pkcs8::LineEnding::LF)
            .map(|p| p.to_string())
            .unwrap_or_default()
    }

    pub fn from_rsa(key: RsaPrivateKey) -> SigningKey {
        SigningKey { key, jwk_kid: None }
    }
}

/// Parses a PEM or JWK text; `Ok(None)` when the text is neither (it may be base64 of one).
fn parse_text(text: &str) -> Result<Option<SigningKey>, KeyError> {
    if text.contains("-----BEGIN") {
        return parse_pem(text).map(Some);
    }
    if text.starts_with('{') {
        return parse_jwk(text).map(Some);
    }
    Ok(None)
}

fn unquote(text: &str) -> &str {
    text.strip_prefix('"').and_then(|t| t.strip_suffix('"')).unwrap_or(text)
}

/// Reads PEM armour tolerantly: newlines may be real, literal `\n`/`\r\n`, or spaces.
fn parse_pem(text: &str) -> Result<SigningKey, KeyError> {
    let text = text.replace("\\r\\n", "\n").replace("\\n", "\n");
    let after_begin = text.split_once("-----BEGIN ").map(|(_, rest)| rest).unwrap_or("");
    let (label, rest) = after_begin
        .split_once("-----")
        .ok_or_else(|| KeyError::BadPem("missing end of the BEGIN line".into()))?;
    let body = rest
        .split_once("-----END ")
        .map(|(body, _)| body)
        .ok_or_else(|| KeyError::BadPem("missing END line".into()))?;
    let label = label.trim();
    if body.contains("Proc-Type") || label == "ENCRYPTED PRIVATE KEY" {
        return Err(KeyError::EncryptedPem);
    }
    let compact: String = body.split_whitespace().collect();
    let der = STANDARD
        .decode(compact.as_bytes())
        .map_err(|_| KeyError::BadPem("body is not valid base64 (truncated or altered?)".into()))?;
    let key = match label {
        "PRIVATE KEY" => RsaPrivateKey::from_pkcs8_der(&der).map_err(|e| {
            if pkcs8_is_rsa(&der) {
                KeyError::BadPem(format!("PKCS#8 RSA key is invalid: {e}"))
            } else {
                KeyError::NotRsa
            }
        })?,
        "RSA PRIVATE KEY" => RsaPrivateKey::from_pkcs1_der(&der)
            .map_err(|e| KeyError::BadPem(format!("PKCS#1 RSA key is invalid: {e}")))?,
        other => return Err(KeyError::UnsupportedPemLabel(other.to_string())),
    };
    checked(SigningKey { key, jwk_kid: None })
}

fn pkcs8_is_rsa(der: &[u8]) -> bool {
    const RSA_ENCRYPTION: rsa::pkcs8::ObjectIdentifier =
        rsa::pkcs8::ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
    match rsa::pkcs8::PrivateKeyInfo::try_from(der) {
        Ok(info) => info.algorithm.oid == RSA_ENCRYPTION,
        Err(_) => true, // not even PKCS#8: report it as a bad RSA key, not as "not RSA"
    }
}

#[derive(Deserialize)]
struct RsaJwk {
    kty: Option<String>,
    alg: Option<String>,
    kid: Option<String>,
    n: Option<String>,
    e: Option<String>,
    d: Option<String>,
    p: Option<String>,
    q: Option<String>,
}

fn parse_jwk(text: &str) -> Result<SigningKey, KeyError> {
    let jwk: RsaJwk =
        serde_json::from_str(text).map_err(|e| KeyError::BadJwk(format!("not valid JWK JSON: {e}")))?;
    match jwk.kty.as_deref() {
        Some("RSA") => {}
        Some(other) => return Err(KeyError::BadJwk(format!("kty is '{other}', expected 'RSA'"))),
        None => return Err(KeyError::BadJwk("kty is missing".into())),
    }
    if let Some(alg) = jwk.alg.as_deref() {
        if alg != "RS256" {
            return Err(KeyError::BadJwk(format!("alg is '{alg}', expected 'RS256'")));
        }
    }
    let number = |name: &str, value: &Option<String>| -> Result<BigUint, KeyError> {
        let value = value.as_deref().ok_or_else(|| {
            KeyError::BadJwk(format!("'{name}' is missing (is this a public key?)"))
        })?;
        let bytes = URL_SAFE_NO_PAD
            .decode(value.trim_end_matches('=').as_bytes())
            .map_err(|_| KeyError::BadJwk(format!("'{name}' is not base64url")))?;
        Ok(BigUint::from_bytes_be(&bytes))
    };
    let (n, e, d) = (number("n", &jwk.n)?, number("e", &jwk.e)?, number("d", &jwk.d)?);
    let (p, q) = (number("p", &jwk.p)?, number("q", &jwk.q)?);
    let key = RsaPrivateKey::from_components(n, e, d, vec![p, q])
        .map_err(|e| KeyError::BadJwk(format!("inconsistent RSA parameters: {e}")))?;
    key.validate().map_err(|e| KeyError::BadJwk(format!("inconsistent RSA parameters: {e}")))?;
    checked(SigningKey { key, jwk_kid: jwk.kid.filter(|k| !k.is_empty()) })
}

fn checked(key: SigningKey) -> Result<SigningKey, KeyError> {
    if key.bits() < MIN_RSA_BITS {
        return Err(KeyError::TooSmall(key.bits()));
    }
    Ok(key)
}

/// Previous public keys kept in the JWKS during a rotation (`POWERSYNC_PREVIOUS_PUBLIC_KEYS`):
/// a JWKS object, an array of JWKs, or one JWK. Private members are dropped.
pub fn parse_previous_public_keys(text: &str) -> Result<Vec<PublicJwk>, String> {
    let value: serde_json::Value =
        serde_json::from_str(text.trim()).map_err(|e| format!("not valid JSON: {e}"))?;
    let items = match value {
        serde_json::Value::Array(items) => items,
        serde_json::Value::Object(ref obj) if obj.contains_key("keys") => match &obj["keys"] {
            serde_json::Value::Array(items) => items.clone(),
            _ => return Err("'keys' is not an array".into()),
        },
        obj @ serde_json::Value::Object(_) => vec![obj],
        _ => return Err("expected a JWKS, an array of JWKs or one JWK".into()),
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let get = |name: &str| item.get(name).and_then(|v| v.as_str()).map(str::to_string);
            let missing = |name: &str| format!("key {i}: '{name}' is missing");
            if get("kty").as_deref() != Some("RSA") {
                return Err(format!("key {i}: only RSA keys can sign PowerSync tokens here"));
            }
            Ok(PublicJwk {
                kty: "RSA".into(),
                n: get("n").ok_or_else(|| missing("n"))?,
                e: get("e").ok_or_else(|| missing("e"))?,
                alg: "RS256".into(),
                key_use: "sig".into(),
                kid: get("kid").ok_or_else(|| missing("kid"))?,
            })
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::OnceLock;

    /// One 2048-bit key for all tests (generation is slow in debug builds).
    pub(crate) fn test_key() -> &'static SigningKey {
        static KEY: OnceLock<SigningKey> = OnceLock::new();
        KEY.get_or_init(|| {
            let mut rng = rand::thread_rng();
            SigningKey::from_rsa(RsaPrivateKey::new(&mut rng, 2048).expect("keygen"))
        })
    }

    fn same_key(a: &SigningKey, b: &SigningKey) -> bool {
        a.pkcs1_der() == b.pkcs1_der()
    }

    fn pkcs1_pem(key: &SigningKey) -> String {
        key.key.to_pkcs1_pem(rsa::pkcs1::LineEnding::LF).unwrap().to_string()
    }

    #[test]
    fn pkcs8_pem_is_accepted() {
        let key = SigningKey::parse(&test_key().pkcs8_pem()).unwrap();
        assert!(same_key(&key, test_key()));
        assert_eq!(key.jwk_kid, None);
    }

    #[test]
    fn pkcs1_pem_is_accepted() {
        assert!(same_key(&SigningKey::parse(&pkcs1_pem(test_key())).unwrap(), test_key()));
    }

    #[test]
    fn pem_with_literal_backslash_n_is_accepted() {
        let pem = test_key().pkcs8_pem().replace('\n', "\\n");
        assert!(same_key(&SigningKey::parse(&pem).unwrap(), test_key()));
    }

    #[test]
    fn pem_with_spaces_instead_of_newlines_is_accepted() {
        let pem = test_key().pkcs8_pem().replace('\n', " ");
        assert!(same_key(&SigningKey::parse(&pem).unwrap(), test_key()));
    }

    #[test]
    fn pem_with_crlf_and_surrounding_quotes_is_accepted() {
        let pem = format!("\"{}\"", test_key().pkcs8_pem().replace('\n', "\r\n"));
        assert!(same_key(&SigningKey::parse(&pem).unwrap(), test_key()));
    }

    #[test]
    fn base64_of_pem_is_accepted() {
        let b64 = STANDARD.encode(pkcs1_pem(test_key()));
        assert!(same_key(&SigningKey::parse(&b64).unwrap(), test_key()));
    }

    #[test]
    fn jwk_json_is_accepted_and_its_kid_kept() {
        let jwk = test_key().private_jwk("key-1").to_string();
        let key = SigningKey::parse(&jwk).unwrap();
        assert!(same_key(&key, test_key()));
        assert_eq!(key.jwk_kid.as_deref(), Some("key-1"));
    }

    #[test]
    fn base64_and_base64url_of_jwk_json_are_accepted() {
        let jwk = test_key().private_jwk("demo").to_string();
        for encoded in [STANDARD.encode(&jwk), URL_SAFE_NO_PAD.encode(&jwk), URL_SAFE.encode(&jwk)] {
            let key = SigningKey::parse(&encoded).unwrap();
            assert!(same_key(&key, test_key()));
            assert_eq!(key.jwk_kid.as_deref(), Some("demo"));
        }
    }

    #[test]
    fn public_jwk_matches_private_jwk_modulus() {
        let public = test_key().public_jwk("k");
        let private = test_key().private_jwk("k");
        assert_eq!(public.n, private["n"].as_str().unwrap());
        assert_eq!(public.e, "AQAB");
        assert_eq!((public.alg.as_str(), public.key_use.as_str()), ("RS256", "sig"));
    }

    #[test]
    fn empty_key_is_reported_as_empty() {
        assert_eq!(SigningKey::parse("  ").unwrap_err(), KeyError::Empty);
    }

    #[test]
    fn public_key_pem_is_rejected_with_its_label() {
        let pem = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n";
        let err = SigningKey::parse(pem).unwrap_err();
        assert_eq!(err.code(), "private_key_wrong_pem_type");
        assert!(err.reason().contains("PUBLIC KEY"));
    }

    #[test]
    fn encrypted_pem_is_rejected_as_encrypted() {
        let pem = "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----";
        assert_eq!(SigningKey::parse(pem).unwrap_err(), KeyError::EncryptedPem);
    }

    #[test]
    fn truncated_pem_is_rejected_as_bad_pem() {
        let pem = test_key().pkcs8_pem();
        let cut = format!("{}\n-----END PRIVATE KEY-----", &pem[..400]);
        assert_eq!(SigningKey::parse(&cut).unwrap_err().code(), "private_key_bad_pem");
        let no_end = &pem[..400];
        assert_eq!(SigningKey::parse(no_end).unwrap_err().code(), "private_key_bad_pem");
    }

    #[test]
    fn ec_pkcs8_key_is_rejected_as_not_rsa() {
        // A P-256 PKCS#8 key (test-only, generated for this test).
        let pem = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg8rUyYJJwRt4gj4hd\nWy3+Np+bKw1DlZDOLRTprl0V8iShRANCAARUhCs1iSe+jkVqMx4F5AEcQGPTpvlb\nqSQWtIF72+uoMTLWqtMHtTfingMrgTFJmkg458oY47mRJF2tPu6NGsFE\n-----END PRIVATE KEY-----\n";
        assert_eq!(SigningKey::parse(pem).unwrap_err(), KeyError::NotRsa);
    }

    #[test]
    fn jwk_of_wrong_type_or_public_only_is_rejected_with_reason() {
        let ec = r#"{"kty":"EC","crv":"P-256","x":"a","y":"b","d":"c"}"#;
        assert!(matches!(SigningKey::parse(ec).unwrap_err(), KeyError::BadJwk(r) if r.contains("kty")));
        let public = serde_json::to_string(&test_key().public_jwk("k")).unwrap();
        assert!(matches!(SigningKey::parse(&public).unwrap_err(), KeyError::BadJwk(r) if r.contains("'d'")));
        let mut wrong_alg = test_key().private_jwk("k");
        wrong_alg["alg"] = "HS256".into();
        let err = SigningKey::parse(&wrong_alg.to_string()).unwrap_err();
        assert!(matches!(err, KeyError::BadJwk(r) if r.contains("alg")));
    }

    #[test]
    fn jwk_with_inconsistent_primes_is_rejected() {
        let mut jwk = test_key().private_jwk("k");
        jwk["p"] = jwk["q"].clone();
        assert_eq!(SigningKey::parse(&jwk.to_string()).unwrap_err().code(), "private_key_bad_jwk");
    }

    #[test]
    fn small_rsa_key_is_rejected() {
        let small = RsaPrivateKey::new(&mut rand::thread_rng(), 1024).unwrap();
        let pem = small.to_pkcs8_pem(rsa::pkcs8::LineEnding::LF).unwrap().to_string();
        assert_eq!(SigningKey::parse(&pem).unwrap_err(), KeyError::TooSmall(1024));
    }

    #[test]
    fn garbage_is_unrecognized() {
        for junk in ["hello world", "not-base64!!", "aGVsbG8="] {
            assert_eq!(SigningKey::parse(junk).unwrap_err(), KeyError::Unrecognized, "{junk}");
        }
    }

    #[test]
    fn debug_output_never_contains_key_material() {
        let shown = format!("{:?}", test_key());
        let d = test_key().private_jwk("k")["d"].as_str().unwrap().to_string();
        assert!(!shown.contains(&d[..16]));
        assert!(shown.contains("2048 bits"));
    }

    #[test]
    fn previous_public_keys_accept_jwks_array_and_single_key() {
        let jwk = serde_json::to_value(test_key().public_jwk("old")).unwrap();
        let jwks = serde_json::json!({ "keys": [jwk.clone()] }).to_string();
        assert_eq!(parse_previous_public_keys(&jwks).unwrap()[0].kid, "old");
        assert_eq!(parse_previous_public_keys(&format!("[{jwk}]")).unwrap().len(), 1);
        assert_eq!(parse_previous_public_keys(&jwk.to_string()).unwrap()[0].kid, "old");
        assert!(parse_previous_public_keys(r#"[{"kty":"RSA","n":"x","e":"AQAB"}]"#).unwrap_err().contains("kid"));
        assert!(parse_previous_public_keys("nope").is_err());
    }
}
