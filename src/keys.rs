//! The PowerSync signing key: every form `POWERSYNC_PRIVATE_KEY` arrives in, turned into one
//! RSA (RS256), P-256 (ES256) or Ed25519 (EdDSA) key, plus the public JWK/JWKS that PowerSync
//! verifies tokens against.
//!
//! Accepted forms (the ones found in PowerSync's demos, dashboards, `openssl` and support
//! threads): PKCS#8 PEM (any of the three types), PKCS#1 PEM (RSA), SEC1 `EC PRIVATE KEY` PEM
//! (P-256; a leading `EC PARAMETERS` block is skipped), PEM whose newlines arrived as literal
//! `\n` or as spaces, base64 of a PEM, a private JWK JSON (`kty` `RSA`, `EC` with `crv` `P-256`,
//! `OKP` with `crv` `Ed25519`), and base64 / base64url of that JSON. Each unusable form is
//! reported with its own [`KeyError`] so the operator sees exactly what is wrong, never the key.

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use rsa::pkcs1::{DecodeRsaPrivateKey, EncodeRsaPrivateKey};
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, ObjectIdentifier};
use rsa::traits::{PrivateKeyParts, PublicKeyParts};
use rsa::{BigUint, RsaPrivateKey};
use serde::{Deserialize, Serialize};

/// Smallest modulus accepted: RSA keys under 2048 bits are not safe to sign with.
pub const MIN_RSA_BITS: usize = 2048;

const OID_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const OID_EC: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const OID_P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const OID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");

/// Key algorithms and curves by OID, for precise messages about the ones that cannot be used.
const OTHER_OIDS: [(&str, &str); 11] = [
    ("1.3.132.0.34", "P-384"),
    ("1.3.132.0.35", "P-521"),
    ("1.3.132.0.10", "secp256k1"),
    ("1.2.840.10045.3.1.1", "P-192"),
    ("1.3.132.0.33", "P-224"),
    ("1.3.101.110", "X25519"),
    ("1.3.101.111", "X448"),
    ("1.3.101.113", "Ed448"),
    ("1.2.840.113549.1.1.10", "RSASSA-PSS"),
    ("1.2.840.10040.4.1", "DSA"),
    ("1.2.840.113549.1.3.1", "Diffie-Hellman"),
];

fn oid_name(oid: &ObjectIdentifier) -> String {
    let dotted = oid.to_string();
    OTHER_OIDS.iter().find(|(o, _)| *o == dotted).map(|(_, name)| name.to_string()).unwrap_or(dotted)
}

/// What the worker signs with, for messages.
const SUPPORTED: &str = "use an RSA (RS256), P-256 (ES256) or Ed25519 (EdDSA) key";

/// Why `POWERSYNC_PRIVATE_KEY` could not be used. `code()` is the stable machine code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    Empty,
    /// A PEM block whose label is not a private key the worker reads (certificate, SSH key, ...).
    UnsupportedPemLabel(String),
    EncryptedPem,
    /// PEM armour present but its body is not valid base64 / not a key.
    BadPem(String),
    /// The public half only (a `PUBLIC KEY` PEM, a JWK without `d`): what to paste instead.
    PublicOnly(String),
    /// A key of a type that cannot sign PowerSync tokens here (X25519, DSA, RSA-PSS, `oct`, ...).
    UnsupportedType(String),
    /// An EC or EdDSA key on a curve other than P-256 / Ed25519 (P-384, secp256k1, Ed448, ...).
    UnsupportedCurve(String),
    /// JWK JSON that is not a usable private key.
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
            KeyError::PublicOnly(_) => "private_key_public_only",
            KeyError::UnsupportedType(_) => "private_key_unsupported_type",
            KeyError::UnsupportedCurve(_) => "private_key_unsupported_curve",
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
                "PEM block is '{label}', expected 'PRIVATE KEY' (PKCS#8), 'RSA PRIVATE KEY' (PKCS#1) or 'EC PRIVATE KEY' (SEC1)"
            ),
            KeyError::EncryptedPem => "PEM key is encrypted; export it without a passphrase".into(),
            KeyError::BadPem(why) => format!("PEM key could not be read: {why}"),
            KeyError::PublicOnly(what) => format!("{what} is a public key; POWERSYNC_PRIVATE_KEY needs the private key"),
            KeyError::UnsupportedType(what) => format!("{what} keys cannot sign PowerSync tokens here; {SUPPORTED}"),
            KeyError::UnsupportedCurve(curve) => format!(
                "the key is on curve {curve}; EC keys must be P-256 (ES256) and EdDSA keys Ed25519; {SUPPORTED}"
            ),
            KeyError::BadJwk(why) => format!("JWK is not a usable private key: {why}"),
            KeyError::TooSmall(bits) => {
                format!("RSA key has {bits} bits; at least {MIN_RSA_BITS} are required")
            }
            KeyError::Unrecognized => {
                "not a PEM key, a JWK, or base64 of either (check for truncation when pasting)".into()
            }
        }
    }
}

/// The key types tokens are signed with; the token's `alg` follows the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// RSA, RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// P-256, ECDSA with SHA-256 (signature `r || s`).
    Es256,
    /// Ed25519.
    EdDsa,
}

impl KeyKind {
    /// The JWS `alg`.
    pub fn alg(self) -> &'static str {
        match self {
            KeyKind::Rs256 => "RS256",
            KeyKind::Es256 => "ES256",
            KeyKind::EdDsa => "EdDSA",
        }
    }

    /// Parses `RS256`, `ES256` or `EdDSA` (the dev tool's `--alg`).
    pub fn from_alg(alg: &str) -> Option<KeyKind> {
        [KeyKind::Rs256, KeyKind::Es256, KeyKind::EdDsa].into_iter().find(|k| k.alg() == alg)
    }
}

/// A public key as a JWK, as PowerSync reads it from a JWKS: `kty` `RSA` with `n`/`e`, `EC`
/// with `crv`/`x`/`y`, or `OKP` with `crv`/`x`; always `alg`, `use: "sig"` and `kid`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicJwk {
    pub kty: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
    pub alg: String,
    #[serde(rename = "use")]
    pub key_use: String,
    pub kid: String,
}

impl PublicJwk {
    /// The same public key (type, curve and numbers), whatever its `kid`, `alg` or `use`.
    pub fn same_key_as(&self, other: &PublicJwk) -> bool {
        (&self.kty, &self.crv, &self.x, &self.y, &self.n, &self.e)
            == (&other.kty, &other.crv, &other.x, &other.y, &other.n, &other.e)
    }
}

#[derive(Clone)]
enum Inner {
    Rsa(RsaPrivateKey),
    P256(p256::SecretKey),
    Ed25519(ed25519_dalek::SigningKey),
}

/// A usable signing key.
#[derive(Clone)]
pub struct SigningKey {
    inner: Inner,
    /// The `kid` found in a JWK-form key, used when `POWERSYNC_KEY_ID` is unset.
    pub jwk_kid: Option<String>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        let what = match &self.inner {
            Inner::Rsa(key) => format!("RSA {} bits", key.size() * 8),
            Inner::P256(_) => "P-256".into(),
            Inner::Ed25519(_) => "Ed25519".into(),
        };
        write!(f, "SigningKey({what}, jwk_kid: {:?})", self.jwk_kid)
    }
}

/// PKCS#8 v1 prefix of an Ed25519 key (RFC 8410): the 32-byte seed follows. Without the optional
/// public key, the form every WebCrypto implementation imports.
const ED25519_PKCS8_PREFIX: [u8; 16] =
    [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];

/// `text` decoded as base64 or base64url, padded or not, white space (a pasted value's line
/// breaks) left out; `None` when it is neither.
pub fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let compact: String = text.split_whitespace().collect();
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(compact.as_bytes()).ok())
}

/// The public halves (base64url: a P-256 key's `x`, an Ed25519 key's public key) of the private
/// keys this repository publishes for its key-parsing tests (tests/fixtures/keys): whoever reads
/// the repository can sign a PowerSync token for any user with them.
pub const PUBLISHED_KEYS: [&str; 3] = [
    "p9ZZSOQajZ91OJK7AiBpEnTkiUkJZH97nGh6SgrjVUQ",
    "bvfNyErMWXYvPb1jwinhutyShNkIgzmQA5tndaG5gw4",
    "ZEBSS36mMIuWeaRsy-39bXVJKmoFgKUU9R-MTQB6c8c",
];

impl PublicJwk {
    /// Whether this is the public half of one of the [`PUBLISHED_KEYS`].
    pub fn is_published(&self) -> bool {
        self.x.as_deref().is_some_and(|x| PUBLISHED_KEYS.contains(&x))
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
        let decoded = decode_base64(text).ok_or(KeyError::Unrecognized)?;
        let inner = String::from_utf8(decoded).map_err(|_| KeyError::Unrecognized)?;
        parse_text(unquote(inner.trim()))?.ok_or(KeyError::Unrecognized)
    }

    pub fn kind(&self) -> KeyKind {
        match self.inner {
            Inner::Rsa(_) => KeyKind::Rs256,
            Inner::P256(_) => KeyKind::Es256,
            Inner::Ed25519(_) => KeyKind::EdDsa,
        }
    }

    /// The JWS `alg` of tokens signed with this key.
    pub fn alg(&self) -> &'static str {
        self.kind().alg()
    }

    /// PKCS#8 DER, the form WebCrypto's `importKey("pkcs8", ...)` and `jsonwebtoken`'s EC and
    /// EdDSA keys take. Ed25519 as PKCS#8 v1 (seed only).
    pub fn pkcs8_der(&self) -> Vec<u8> {
        match &self.inner {
            Inner::Rsa(key) => key.to_pkcs8_der().map(|d| d.as_bytes().to_vec()).unwrap_or_default(),
            Inner::P256(key) => key.to_pkcs8_der().map(|d| d.as_bytes().to_vec()).unwrap_or_default(),
            Inner::Ed25519(key) => [&ED25519_PKCS8_PREFIX[..], key.as_bytes()].concat(),
        }
    }

    /// PKCS#1 DER, the form `jsonwebtoken::EncodingKey::from_rsa_der` takes (RSA keys only;
    /// empty for the others).
    pub fn pkcs1_der(&self) -> Vec<u8> {
        match &self.inner {
            Inner::Rsa(key) => key.to_pkcs1_der().map(|d| d.as_bytes().to_vec()).unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    /// RSA modulus size; 256 for P-256, 255 for Ed25519 (the curves' sizes, for messages).
    pub fn bits(&self) -> usize {
        match &self.inner {
            Inner::Rsa(key) => key.size() * 8,
            Inner::P256(_) => 256,
            Inner::Ed25519(_) => 255,
        }
    }

    /// The public JWK PowerSync needs, under `kid`.
    pub fn public_jwk(&self, kid: &str) -> PublicJwk {
        let b64 = |bytes: &[u8]| Some(URL_SAFE_NO_PAD.encode(bytes));
        let mut jwk = PublicJwk {
            kty: String::new(),
            crv: None,
            x: None,
            y: None,
            n: None,
            e: None,
            alg: self.alg().into(),
            key_use: "sig".into(),
            kid: kid.into(),
        };
        match &self.inner {
            Inner::Rsa(key) => {
                jwk.kty = "RSA".into();
                jwk.n = b64(&key.n().to_bytes_be());
                jwk.e = b64(&key.e().to_bytes_be());
            }
            Inner::P256(key) => {
                let point = key.public_key().to_encoded_point(false);
                jwk.kty = "EC".into();
                jwk.crv = Some("P-256".into());
                jwk.x = point.x().and_then(|x| b64(x));
                jwk.y = point.y().and_then(|y| b64(y));
            }
            Inner::Ed25519(key) => {
                jwk.kty = "OKP".into();
                jwk.crv = Some("Ed25519".into());
                jwk.x = b64(key.verifying_key().as_bytes());
            }
        }
        jwk
    }

    /// The private key as a JWK (the official demos' secret format); used by the dev tool.
    pub fn private_jwk(&self, kid: &str) -> serde_json::Value {
        let public = serde_json::to_value(self.public_jwk(kid)).unwrap_or_default();
        let mut jwk = serde_json::Map::new();
        for name in ["kty", "crv", "alg", "kid", "n", "e", "x", "y"] {
            if let Some(value) = public.get(name) {
                jwk.insert(name.into(), value.clone());
            }
        }
        let b = |n: &BigUint| serde_json::Value::from(URL_SAFE_NO_PAD.encode(n.to_bytes_be()));
        match &self.inner {
            Inner::Rsa(key) => {
                let primes = key.primes();
                jwk.insert("d".into(), b(key.d()));
                jwk.insert("p".into(), b(&primes[0]));
                jwk.insert("q".into(), b(&primes[1]));
                let crt = [("dp", key.dp().cloned()), ("dq", key.dq().cloned()), ("qi", key.crt_coefficient())];
                for (name, value) in crt {
                    if let Some(value) = value {
                        jwk.insert(name.into(), b(&value));
                    }
                }
            }
            Inner::P256(key) => {
                jwk.insert("d".into(), URL_SAFE_NO_PAD.encode(key.to_bytes()).into());
            }
            Inner::Ed25519(key) => {
                jwk.insert("d".into(), URL_SAFE_NO_PAD.encode(key.as_bytes()).into());
            }
        }
        serde_json::Value::Object(jwk)
    }

    /// PKCS#8 PEM; used by the dev tool.
    pub fn pkcs8_pem(&self) -> String {
        let body = STANDARD.encode(self.pkcs8_der());
        let lines: Vec<&str> = body.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap_or_default()).collect();
        format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n", lines.join("\n"))
    }

    pub fn from_rsa(key: RsaPrivateKey) -> SigningKey {
        SigningKey { inner: Inner::Rsa(key), jwk_kid: None }
    }

    /// A P-256 key from its 32-byte secret scalar (`None` if zero or not below the order).
    pub fn from_p256_bytes(secret: &[u8]) -> Option<SigningKey> {
        let key = p256::SecretKey::from_slice(secret).ok()?;
        Some(SigningKey { inner: Inner::P256(key), jwk_kid: None })
    }

    /// An Ed25519 key from its 32-byte seed.
    pub fn from_ed25519_seed(seed: &[u8; 32]) -> SigningKey {
        SigningKey { inner: Inner::Ed25519(ed25519_dalek::SigningKey::from_bytes(seed)), jwk_kid: None }
    }
}

/// Parses a PEM or JWK text; `Ok(None)` when the text is neither (it may be base64 of one).
///
/// Each format's parser below is a function of its own (`#[inline(never)]`): a fresh isolate
/// compiles each wasm function whole on its first call, so it then compiles only the parser of
/// the format its key is in (docs/performance.md, "Cold start").
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

/// Reads PEM armour tolerantly: newlines may be real, literal `\n`/`\r\n`, or spaces. An
/// `EC PARAMETERS` block (what `openssl ecparam -genkey` prints before the key) is skipped.
#[inline(never)]
fn parse_pem(text: &str) -> Result<SigningKey, KeyError> {
    let text = text.replace("\\r\\n", "\n").replace("\\n", "\n");
    let mut blocks = text.split("-----BEGIN ").skip(1).peekable();
    while blocks
        .peek()
        .is_some_and(|b| b.starts_with("EC PARAMETERS-----") && b.contains("-----END EC PARAMETERS-----"))
    {
        blocks.next();
    }
    let after_begin = blocks.next().unwrap_or("");
    let (label, rest) =
        after_begin.split_once("-----").ok_or_else(|| KeyError::BadPem("missing end of the BEGIN line".into()))?;
    let body = rest
        .split_once("-----END ")
        .map(|(body, _)| body)
        .ok_or_else(|| KeyError::BadPem("missing END line".into()))?;
    let label = label.trim();
    // A label is quoted in problems (logged, and listed by `/health`): only when it looks like one,
    // never a mangled block's first line, which may hold key material.
    let quotable = |label: &str| {
        if label.len() <= 40 && label.bytes().all(|b| b.is_ascii_uppercase() || b == b' ' || b == b'#') {
            label.to_string()
        } else {
            "an unrecognised label".to_string()
        }
    };
    if body.contains("Proc-Type") || label == "ENCRYPTED PRIVATE KEY" {
        return Err(KeyError::EncryptedPem);
    }
    if label.ends_with("PUBLIC KEY") {
        return Err(KeyError::PublicOnly(format!("the PEM block '{}'", quotable(label))));
    }
    let compact: String = body.split_whitespace().collect();
    let der = STANDARD
        .decode(compact.as_bytes())
        .map_err(|_| KeyError::BadPem("body is not valid base64 (truncated or altered?)".into()))?;
    let inner = match label {
        "PRIVATE KEY" => parse_pkcs8(&der)?,
        "RSA PRIVATE KEY" => Inner::Rsa(
            RsaPrivateKey::from_pkcs1_der(&der)
                .map_err(|e| KeyError::BadPem(format!("PKCS#1 RSA key is invalid: {e}")))?,
        ),
        "EC PRIVATE KEY" => parse_sec1(&der)?,
        other => return Err(KeyError::UnsupportedPemLabel(quotable(other))),
    };
    checked(SigningKey { inner, jwk_kid: None })
}

/// PKCS#8: the algorithm (and curve) is read first, so an unusable key is named precisely.
#[inline(never)]
fn parse_pkcs8(der: &[u8]) -> Result<Inner, KeyError> {
    let bad = |what: &str, e: String| KeyError::BadPem(format!("PKCS#8 {what} key is invalid: {e}"));
    let info =
        rsa::pkcs8::PrivateKeyInfo::try_from(der).map_err(|e| KeyError::BadPem(format!("not a PKCS#8 key: {e}")))?;
    let oid = info.algorithm.oid;
    if oid == OID_RSA {
        return RsaPrivateKey::from_pkcs8_der(der).map(Inner::Rsa).map_err(|e| bad("RSA", e.to_string()));
    }
    if oid == OID_EC {
        return match info.algorithm.parameters_oid().ok() {
            Some(curve) if curve == OID_P256 => {
                p256::SecretKey::from_pkcs8_der(der).map(Inner::P256).map_err(|e| bad("P-256", e.to_string()))
            }
            Some(curve) => Err(KeyError::UnsupportedCurve(oid_name(&curve))),
            None => Err(KeyError::BadPem("PKCS#8 EC key names no curve".into())),
        };
    }
    if oid == OID_ED25519 {
        return ed25519_dalek::SigningKey::from_pkcs8_der(der)
            .map(Inner::Ed25519)
            .map_err(|e| bad("Ed25519", e.to_string()));
    }
    let name = oid_name(&oid);
    if name == "Ed448" {
        return Err(KeyError::UnsupportedCurve(name));
    }
    Err(KeyError::UnsupportedType(name))
}

/// SEC1 `EC PRIVATE KEY` (what `openssl ecparam -genkey` writes): P-256 only.
#[inline(never)]
fn parse_sec1(der: &[u8]) -> Result<Inner, KeyError> {
    let key =
        sec1::EcPrivateKey::try_from(der).map_err(|e| KeyError::BadPem(format!("SEC1 EC key is invalid: {e}")))?;
    match key.parameters.and_then(|p| p.named_curve()) {
        Some(curve) if curve != OID_P256 => return Err(KeyError::UnsupportedCurve(oid_name(&curve))),
        None if key.private_key.len() != 32 => {
            return Err(KeyError::UnsupportedCurve(format!("unnamed ({}-byte key)", key.private_key.len())))
        }
        _ => {}
    }
    p256::SecretKey::from_sec1_der(der).map(Inner::P256).map_err(|_| {
        KeyError::BadPem("SEC1 P-256 key is invalid (public key does not match, or the scalar is out of range)".into())
    })
}

/// Every member a private JWK of any supported type may carry.
#[derive(Deserialize)]
struct Jwk {
    kty: Option<String>,
    crv: Option<String>,
    alg: Option<String>,
    kid: Option<String>,
    n: Option<String>,
    e: Option<String>,
    d: Option<String>,
    p: Option<String>,
    q: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

fn jwk_bytes(name: &str, value: &Option<String>) -> Result<Vec<u8>, KeyError> {
    let value = value.as_deref().ok_or_else(|| KeyError::BadJwk(format!("'{name}' is missing")))?;
    URL_SAFE_NO_PAD
        .decode(value.trim_end_matches('=').as_bytes())
        .map_err(|_| KeyError::BadJwk(format!("'{name}' is not base64url")))
}

#[inline(never)]
fn parse_jwk(text: &str) -> Result<SigningKey, KeyError> {
    let jwk: Jwk = serde_json::from_str(text).map_err(|e| KeyError::BadJwk(format!("not valid JWK JSON: {e}")))?;
    let kty = jwk.kty.as_deref().ok_or_else(|| KeyError::BadJwk("kty is missing".into()))?;
    let crv = jwk.crv.as_deref();
    let kind = match (kty, crv) {
        ("RSA", _) => KeyKind::Rs256,
        ("EC", Some("P-256")) => KeyKind::Es256,
        ("OKP", Some("Ed25519")) => KeyKind::EdDsa,
        ("EC" | "OKP", None) => return Err(KeyError::BadJwk(format!("kty '{kty}' without 'crv'"))),
        ("OKP", Some(c @ ("X25519" | "X448"))) => return Err(KeyError::UnsupportedType(c.into())),
        ("EC" | "OKP", Some(c)) => return Err(KeyError::UnsupportedCurve(c.into())),
        ("oct", _) => return Err(KeyError::UnsupportedType("symmetric ('oct')".into())),
        (other, _) => return Err(KeyError::BadJwk(format!("kty is '{other}', expected 'RSA', 'EC' or 'OKP'"))),
    };
    if let Some(alg) = jwk.alg.as_deref() {
        if alg != kind.alg() {
            return Err(KeyError::BadJwk(format!("alg is '{alg}', expected '{}' for this key", kind.alg())));
        }
    }
    if jwk.d.is_none() {
        return Err(KeyError::PublicOnly("the JWK (it has no 'd')".into()));
    }
    let inner = match kind {
        KeyKind::Rs256 => {
            let number =
                |name: &str, value: &Option<String>| jwk_bytes(name, value).map(|b| BigUint::from_bytes_be(&b));
            let (n, e, d) = (number("n", &jwk.n)?, number("e", &jwk.e)?, number("d", &jwk.d)?);
            let (p, q) = (number("p", &jwk.p)?, number("q", &jwk.q)?);
            let key = RsaPrivateKey::from_components(n, e, d, vec![p, q])
                .map_err(|e| KeyError::BadJwk(format!("inconsistent RSA parameters: {e}")))?;
            key.validate().map_err(|e| KeyError::BadJwk(format!("inconsistent RSA parameters: {e}")))?;
            Inner::Rsa(key)
        }
        KeyKind::Es256 => {
            let d = jwk_bytes("d", &jwk.d)?;
            if d.len() != 32 {
                return Err(KeyError::BadJwk(format!("'d' has {} bytes, a P-256 key has 32", d.len())));
            }
            let key = p256::SecretKey::from_slice(&d)
                .map_err(|_| KeyError::BadJwk("'d' is not a valid P-256 scalar".into()))?;
            let point = key.public_key().to_encoded_point(false);
            let (x, y) = (jwk_bytes("x", &jwk.x)?, jwk_bytes("y", &jwk.y)?);
            if point.x().map(|v| &v[..]) != Some(&x[..]) || point.y().map(|v| &v[..]) != Some(&y[..]) {
                return Err(KeyError::BadJwk("'x'/'y' are not the public key of 'd'".into()));
            }
            Inner::P256(key)
        }
        KeyKind::EdDsa => {
            let d = jwk_bytes("d", &jwk.d)?;
            let seed: [u8; 32] = d
                .as_slice()
                .try_into()
                .map_err(|_| KeyError::BadJwk(format!("'d' has {} bytes, an Ed25519 key has 32", d.len())))?;
            let key = ed25519_dalek::SigningKey::from_bytes(&seed);
            if jwk_bytes("x", &jwk.x)? != key.verifying_key().as_bytes() {
                return Err(KeyError::BadJwk("'x' is not the public key of 'd'".into()));
            }
            Inner::Ed25519(key)
        }
    };
    checked(SigningKey { inner, jwk_kid: jwk.kid.filter(|k| !k.is_empty()) })
}

fn checked(key: SigningKey) -> Result<SigningKey, KeyError> {
    if matches!(key.inner, Inner::Rsa(_)) && key.bits() < MIN_RSA_BITS {
        return Err(KeyError::TooSmall(key.bits()));
    }
    Ok(key)
}

/// Previous public keys kept in the JWKS during a rotation (`POWERSYNC_PREVIOUS_PUBLIC_KEYS`):
/// a JWKS object, an array of JWKs, or one JWK. Any type PowerSync verifies: RSA (RS256/384/512),
/// EC P-256/P-384/P-521 (ES256/384/512) and Ed25519 (EdDSA), so a rotation can change the key
/// type. Private members are dropped; `alg` is kept when it fits the key, else derived from it.
pub fn parse_previous_public_keys(text: &str) -> Result<Vec<PublicJwk>, String> {
    let value: serde_json::Value = serde_json::from_str(text.trim()).map_err(|e| format!("not valid JSON: {e}"))?;
    let items = match value {
        serde_json::Value::Array(items) => items,
        serde_json::Value::Object(ref obj) if obj.contains_key("keys") => match &obj["keys"] {
            serde_json::Value::Array(items) => items.clone(),
            _ => return Err("'keys' is not an array".into()),
        },
        obj @ serde_json::Value::Object(_) => vec![obj],
        _ => return Err("expected a JWKS, an array of JWKs or one JWK".into()),
    };
    let keys: Vec<PublicJwk> = items
        .into_iter()
        .enumerate()
        .map(|(i, item)| previous_key(&item).map_err(|why| format!("key {i}: {why}")))
        .collect::<Result<_, _>>()?;
    // PowerSync picks a key by its kid: two keys under one kid would make it guess.
    for (i, key) in keys.iter().enumerate() {
        if keys[..i].iter().any(|earlier| earlier.kid == key.kid) {
            return Err(format!("key {i}: its kid is another previous key's too"));
        }
    }
    Ok(keys)
}

fn previous_key(item: &serde_json::Value) -> Result<PublicJwk, String> {
    let get = |name: &str| item.get(name).and_then(|v| v.as_str()).map(str::to_string);
    let required = |name: &str| get(name).ok_or_else(|| format!("'{name}' is missing"));
    let coordinate = |name: &str, len: usize| -> Result<String, String> {
        let value = required(name)?;
        match URL_SAFE_NO_PAD.decode(value.trim_end_matches('=').as_bytes()) {
            Ok(bytes) if bytes.len() == len => Ok(value),
            _ => Err(format!("'{name}' is not {len} base64url bytes")),
        }
    };
    let kid = required("kid")?;
    if kid.trim().is_empty() {
        return Err("'kid' is empty".into());
    }
    let kty = required("kty")?;
    // An RSA key's modulus and exponent: base64url big-endian numbers, at least MIN_RSA_BITS and
    // an exponent above 1, as for the signing key.
    let rsa_number = |name: &str| -> Result<String, String> {
        let value = required(name)?;
        let bytes = URL_SAFE_NO_PAD
            .decode(value.trim_end_matches('=').as_bytes())
            .map_err(|_| format!("'{name}' is not base64url"))?;
        let bits = match bytes.iter().position(|b| *b != 0) {
            Some(first) => (bytes.len() - first) * 8 - bytes[first].leading_zeros() as usize,
            None => 0,
        };
        match name {
            "n" if bits < MIN_RSA_BITS => Err(format!("'n' is a {bits}-bit modulus; at least {MIN_RSA_BITS}")),
            "e" if bits < 2 => Err("'e' is not an RSA exponent".into()),
            _ => Ok(value),
        }
    };
    let crv = get("crv");
    let (allowed, mut jwk): (&[&str], PublicJwk) = match (kty.as_str(), crv.as_deref()) {
        ("RSA", _) => (
            &["RS256", "RS384", "RS512"],
            PublicJwk {
                kty,
                crv: None,
                x: None,
                y: None,
                n: Some(rsa_number("n")?),
                e: Some(rsa_number("e")?),
                alg: "RS256".into(),
                key_use: "sig".into(),
                kid,
            },
        ),
        ("EC", Some(c @ ("P-256" | "P-384" | "P-521"))) => {
            let (alg, len) = match c {
                "P-256" => ("ES256", 32),
                "P-384" => ("ES384", 48),
                _ => ("ES512", 66),
            };
            let (x, y) = (coordinate("x", len)?, coordinate("y", len)?);
            (
                &[],
                PublicJwk {
                    kty,
                    crv,
                    x: Some(x),
                    y: Some(y),
                    n: None,
                    e: None,
                    alg: alg.into(),
                    key_use: "sig".into(),
                    kid,
                },
            )
        }
        ("OKP", Some("Ed25519")) => {
            let x = coordinate("x", 32)?;
            (
                &[],
                PublicJwk {
                    kty,
                    crv,
                    x: Some(x),
                    y: None,
                    n: None,
                    e: None,
                    alg: "EdDSA".into(),
                    key_use: "sig".into(),
                    kid,
                },
            )
        }
        (kty, crv) => {
            return Err(format!(
                "kty '{kty}'{} cannot verify PowerSync tokens; RSA, EC (P-256/P-384/P-521) and OKP (Ed25519) can",
                crv.map(|c| format!(" with crv '{c}'")).unwrap_or_default()
            ))
        }
    };
    if let Some(alg) = get("alg") {
        if alg != jwk.alg && !allowed.contains(&alg.as_str()) {
            return Err(format!(
                "alg '{alg}' does not fit a {} key ({} expected)",
                jwk.crv.as_deref().unwrap_or("RSA"),
                jwk.alg
            ));
        }
        jwk.alg = alg;
    }
    Ok(jwk)
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

    /// A fresh P-256 key.
    pub(crate) fn p256_key() -> SigningKey {
        use rand::RngCore;
        loop {
            let mut secret = [0u8; 32];
            rand::thread_rng().fill_bytes(&mut secret);
            if let Some(key) = SigningKey::from_p256_bytes(&secret) {
                return key;
            }
        }
    }

    /// A fresh Ed25519 key.
    pub(crate) fn ed25519_key() -> SigningKey {
        use rand::RngCore;
        let mut seed = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut seed);
        SigningKey::from_ed25519_seed(&seed)
    }

    // Test-only keys made by OpenSSL (tests/fixtures/keys/README.md says how).
    const P256_PKCS8: &str = include_str!("../tests/fixtures/keys/p256_pkcs8.pem");
    const P256_SEC1_WITH_PARAMS: &str = include_str!("../tests/fixtures/keys/p256_sec1_with_params.pem");
    const P256_SEC1_ENCRYPTED: &str = include_str!("../tests/fixtures/keys/p256_sec1_encrypted.pem");
    const P256_PUBLIC: &str = include_str!("../tests/fixtures/keys/p256_public.pem");
    const ED25519_PKCS8: &str = include_str!("../tests/fixtures/keys/ed25519_pkcs8.pem");
    const P384_PKCS8: &str = include_str!("../tests/fixtures/keys/p384_pkcs8.pem");
    const P384_SEC1: &str = include_str!("../tests/fixtures/keys/p384_sec1.pem");
    const SECP256K1_SEC1: &str = include_str!("../tests/fixtures/keys/secp256k1_sec1.pem");
    const X25519_PKCS8: &str = include_str!("../tests/fixtures/keys/x25519_pkcs8.pem");
    const ED448_PKCS8: &str = include_str!("../tests/fixtures/keys/ed448_pkcs8.pem");

    fn same_key(a: &SigningKey, b: &SigningKey) -> bool {
        a.kind() == b.kind() && a.pkcs8_der() == b.pkcs8_der()
    }

    fn pkcs1_pem(key: &SigningKey) -> String {
        match &key.inner {
            Inner::Rsa(rsa) => rsa.to_pkcs1_pem(rsa::pkcs1::LineEnding::LF).unwrap().to_string(),
            _ => unreachable!(),
        }
    }

    /// Every way a key's text reaches the secret: as is, newlines as literal `\n`, as spaces,
    /// CRLF in quotes, base64 of it.
    fn pasted_forms(text: &str) -> Vec<String> {
        vec![
            text.to_string(),
            text.replace('\n', "\\n"),
            text.replace('\n', " "),
            format!("\"{}\"", text.replace('\n', "\r\n")),
            STANDARD.encode(text),
        ]
    }

    #[test]
    fn pkcs8_pem_is_accepted() {
        let key = SigningKey::parse(&test_key().pkcs8_pem()).unwrap();
        assert!(same_key(&key, test_key()));
        assert_eq!(key.jwk_kid, None);
        assert_eq!((key.kind(), key.alg()), (KeyKind::Rs256, "RS256"));
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
        assert_eq!(public.n.as_deref(), private["n"].as_str());
        assert_eq!(public.e.as_deref(), Some("AQAB"));
        assert_eq!((public.alg.as_str(), public.key_use.as_str()), ("RS256", "sig"));
        let json = serde_json::to_value(&public).unwrap();
        let mut members: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
        members.sort_unstable();
        assert_eq!(members, ["alg", "e", "kid", "kty", "n", "use"]);
    }

    // --- P-256 (ES256) ---------------------------------------------------------------------

    #[test]
    fn p256_pkcs8_pem_from_openssl_is_an_es256_key_with_openssl_s_public_key() {
        let key = SigningKey::parse(P256_PKCS8).unwrap();
        assert_eq!((key.kind(), key.alg()), (KeyKind::Es256, "ES256"));
        let jwk = key.public_jwk("ec-1");
        assert_eq!(
            (jwk.kty.as_str(), jwk.crv.as_deref(), jwk.alg.as_str(), jwk.key_use.as_str()),
            ("EC", Some("P-256"), "ES256", "sig")
        );
        assert_eq!(jwk.x.as_deref(), Some("p9ZZSOQajZ91OJK7AiBpEnTkiUkJZH97nGh6SgrjVUQ"));
        assert_eq!(jwk.y.as_deref(), Some("n53I3zHIHfUpSExcJ_6xQSo2aPbiULrbYQKfx1UoVCQ"));
        let json = serde_json::to_value(&jwk).unwrap();
        let mut members: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
        members.sort_unstable();
        assert_eq!(members, ["alg", "crv", "kid", "kty", "use", "x", "y"]);
    }

    #[test]
    fn p256_sec1_pem_after_an_ec_parameters_block_is_accepted() {
        // `openssl ecparam -genkey` without -noout: EC PARAMETERS, then EC PRIVATE KEY.
        let key = SigningKey::parse(P256_SEC1_WITH_PARAMS).unwrap();
        assert_eq!(key.kind(), KeyKind::Es256);
        assert_eq!(key.public_jwk("k").x.as_deref(), Some("bvfNyErMWXYvPb1jwinhutyShNkIgzmQA5tndaG5gw4"));
        // the SEC1 block alone, too
        let alone = &P256_SEC1_WITH_PARAMS[P256_SEC1_WITH_PARAMS.find("-----BEGIN EC PRIVATE").unwrap()..];
        assert!(same_key(&SigningKey::parse(alone).unwrap(), &key));
    }

    #[test]
    fn p256_keys_survive_every_paste_accident_and_base64() {
        let original = SigningKey::parse(P256_PKCS8).unwrap();
        for text in pasted_forms(P256_PKCS8).iter().chain(pasted_forms(P256_SEC1_WITH_PARAMS).iter()) {
            let key = SigningKey::parse(text).unwrap_or_else(|e| panic!("{text:?}: {e:?}"));
            assert_eq!(key.kind(), KeyKind::Es256);
        }
        for text in pasted_forms(P256_PKCS8) {
            assert!(same_key(&SigningKey::parse(&text).unwrap(), &original));
        }
    }

    #[test]
    fn p256_private_jwk_and_its_base64_forms_are_accepted_with_their_kid() {
        let key = p256_key();
        let jwk = key.private_jwk("ec-kid");
        assert_eq!(
            (jwk["kty"].as_str(), jwk["crv"].as_str(), jwk["alg"].as_str()),
            (Some("EC"), Some("P-256"), Some("ES256"))
        );
        let text = jwk.to_string();
        for encoded in [text.clone(), STANDARD.encode(&text), URL_SAFE_NO_PAD.encode(&text), URL_SAFE.encode(&text)] {
            let parsed = SigningKey::parse(&encoded).unwrap();
            assert!(same_key(&parsed, &key));
            assert_eq!(parsed.jwk_kid.as_deref(), Some("ec-kid"));
        }
        // without alg (common in hand-written JWKs) it is still ES256
        let mut no_alg = jwk.clone();
        no_alg.as_object_mut().unwrap().remove("alg");
        assert_eq!(SigningKey::parse(&no_alg.to_string()).unwrap().alg(), "ES256");
    }

    #[test]
    fn p256_pkcs8_round_trips_and_matches_the_jwk() {
        let key = p256_key();
        let again = SigningKey::parse(&key.pkcs8_pem()).unwrap();
        assert!(same_key(&again, &key));
        assert_eq!(again.public_jwk("k"), key.public_jwk("k"));
        let private = key.private_jwk("k");
        assert_eq!(key.public_jwk("k").x.as_deref(), private["x"].as_str());
    }

    #[test]
    fn p256_jwk_whose_public_point_is_not_d_s_is_rejected() {
        let mut jwk = p256_key().private_jwk("k");
        jwk["x"] = p256_key().private_jwk("k")["x"].clone();
        let err = SigningKey::parse(&jwk.to_string()).unwrap_err();
        assert!(matches!(&err, KeyError::BadJwk(r) if r.contains("'x'/'y'")), "{err:?}");
    }

    #[test]
    fn p256_jwk_with_a_short_or_zero_d_is_rejected() {
        let mut jwk = p256_key().private_jwk("k");
        jwk["d"] = URL_SAFE_NO_PAD.encode([1u8; 31]).into();
        assert!(matches!(SigningKey::parse(&jwk.to_string()).unwrap_err(), KeyError::BadJwk(r) if r.contains("32")));
        jwk["d"] = URL_SAFE_NO_PAD.encode([0u8; 32]).into();
        assert!(
            matches!(SigningKey::parse(&jwk.to_string()).unwrap_err(), KeyError::BadJwk(r) if r.contains("scalar"))
        );
    }

    #[test]
    fn p256_jwk_with_another_alg_is_rejected() {
        let mut jwk = p256_key().private_jwk("k");
        jwk["alg"] = "ES384".into();
        let err = SigningKey::parse(&jwk.to_string()).unwrap_err();
        assert!(matches!(&err, KeyError::BadJwk(r) if r.contains("'ES384'") && r.contains("'ES256'")), "{err:?}");
    }

    // --- Ed25519 (EdDSA) -------------------------------------------------------------------

    #[test]
    fn ed25519_pkcs8_pem_from_openssl_is_an_eddsa_key_with_openssl_s_public_key() {
        let key = SigningKey::parse(ED25519_PKCS8).unwrap();
        assert_eq!((key.kind(), key.alg()), (KeyKind::EdDsa, "EdDSA"));
        let jwk = key.public_jwk("ed-1");
        assert_eq!((jwk.kty.as_str(), jwk.crv.as_deref(), jwk.alg.as_str()), ("OKP", Some("Ed25519"), "EdDSA"));
        assert_eq!(jwk.x.as_deref(), Some("ZEBSS36mMIuWeaRsy-39bXVJKmoFgKUU9R-MTQB6c8c"));
        let json = serde_json::to_value(&jwk).unwrap();
        let mut members: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
        members.sort_unstable();
        assert_eq!(members, ["alg", "crv", "kid", "kty", "use", "x"]);
        // PKCS#8 v1 as OpenSSL writes it: what WebCrypto is given
        let der =
            STANDARD.decode(ED25519_PKCS8.lines().filter(|l| !l.starts_with("-----")).collect::<String>()).unwrap();
        assert_eq!(key.pkcs8_der(), der);
    }

    #[test]
    fn ed25519_keys_survive_every_paste_accident_and_base64() {
        let original = SigningKey::parse(ED25519_PKCS8).unwrap();
        for text in pasted_forms(ED25519_PKCS8) {
            assert!(same_key(&SigningKey::parse(&text).unwrap(), &original), "{text:?}");
        }
    }

    #[test]
    fn ed25519_pkcs8_v2_with_its_public_key_is_accepted() {
        use ed25519_dalek::pkcs8::EncodePrivateKey as _;
        let key = ed25519_key();
        let Inner::Ed25519(inner) = &key.inner else { unreachable!() };
        let v2 = inner.to_pkcs8_pem(rsa::pkcs8::LineEnding::LF).unwrap().to_string();
        let parsed = SigningKey::parse(&v2).unwrap();
        assert!(same_key(&parsed, &key));
        assert_eq!(parsed.pkcs8_der().len(), 48, "re-encoded as v1 for WebCrypto");
    }

    #[test]
    fn ed25519_private_jwk_and_its_base64_forms_are_accepted_with_their_kid() {
        let key = ed25519_key();
        let jwk = key.private_jwk("ed-kid");
        assert_eq!(
            (jwk["kty"].as_str(), jwk["crv"].as_str(), jwk["alg"].as_str()),
            (Some("OKP"), Some("Ed25519"), Some("EdDSA"))
        );
        let text = jwk.to_string();
        for encoded in [text.clone(), STANDARD.encode(&text), URL_SAFE_NO_PAD.encode(&text), URL_SAFE.encode(&text)] {
            let parsed = SigningKey::parse(&encoded).unwrap();
            assert!(same_key(&parsed, &key));
            assert_eq!(parsed.jwk_kid.as_deref(), Some("ed-kid"));
        }
        assert!(same_key(&SigningKey::parse(&key.pkcs8_pem()).unwrap(), &key));
    }

    #[test]
    fn ed25519_jwk_with_a_wrong_x_or_d_length_is_rejected() {
        let mut jwk = ed25519_key().private_jwk("k");
        jwk["x"] = ed25519_key().private_jwk("k")["x"].clone();
        assert!(matches!(SigningKey::parse(&jwk.to_string()).unwrap_err(), KeyError::BadJwk(r) if r.contains("'x'")));
        jwk["d"] = URL_SAFE_NO_PAD.encode([7u8; 57]).into();
        assert!(
            matches!(SigningKey::parse(&jwk.to_string()).unwrap_err(), KeyError::BadJwk(r) if r.contains("57 bytes"))
        );
    }

    // --- unusable keys ---------------------------------------------------------------------

    #[test]
    fn p384_and_secp256k1_keys_are_unsupported_curves_in_every_form() {
        for (pem, curve) in [(P384_PKCS8, "P-384"), (P384_SEC1, "P-384"), (SECP256K1_SEC1, "secp256k1")] {
            let err = SigningKey::parse(pem).unwrap_err();
            assert_eq!(err, KeyError::UnsupportedCurve(curve.into()));
            assert_eq!(err.code(), "private_key_unsupported_curve");
            assert!(err.reason().contains(curve) && err.reason().contains("P-256"), "{}", err.reason());
        }
        for crv in ["P-384", "P-521", "secp256k1"] {
            let jwk = serde_json::json!({"kty": "EC", "crv": crv, "x": "AA", "y": "AA", "d": "AA"}).to_string();
            assert_eq!(SigningKey::parse(&jwk).unwrap_err(), KeyError::UnsupportedCurve(crv.into()));
        }
    }

    #[test]
    fn x25519_keys_cannot_sign_and_say_so() {
        let err = SigningKey::parse(X25519_PKCS8).unwrap_err();
        assert_eq!(err, KeyError::UnsupportedType("X25519".into()));
        assert_eq!(err.code(), "private_key_unsupported_type");
        assert!(err.reason().contains("X25519") && err.reason().contains("Ed25519"));
        let jwk = r#"{"kty":"OKP","crv":"X25519","x":"AA","d":"AA"}"#;
        assert_eq!(SigningKey::parse(jwk).unwrap_err(), KeyError::UnsupportedType("X25519".into()));
    }

    #[test]
    fn ed448_keys_are_an_unsupported_curve() {
        assert_eq!(SigningKey::parse(ED448_PKCS8).unwrap_err(), KeyError::UnsupportedCurve("Ed448".into()));
        let jwk = r#"{"kty":"OKP","crv":"Ed448","x":"AA","d":"AA"}"#;
        assert_eq!(SigningKey::parse(jwk).unwrap_err().code(), "private_key_unsupported_curve");
    }

    #[test]
    fn symmetric_jwk_is_an_unsupported_type() {
        let err = SigningKey::parse(r#"{"kty":"oct","k":"c2VjcmV0"}"#).unwrap_err();
        assert_eq!(err.code(), "private_key_unsupported_type");
    }

    #[test]
    fn jwk_without_d_is_a_public_key_of_every_type() {
        for public in [test_key().public_jwk("k"), p256_key().public_jwk("k"), ed25519_key().public_jwk("k")] {
            let err = SigningKey::parse(&serde_json::to_string(&public).unwrap()).unwrap_err();
            assert_eq!(err.code(), "private_key_public_only", "{public:?}");
            assert!(err.reason().contains("'d'"));
        }
    }

    #[test]
    fn public_key_pem_is_rejected_as_public_only() {
        let err = SigningKey::parse(P256_PUBLIC).unwrap_err();
        assert_eq!(err.code(), "private_key_public_only");
        assert!(err.reason().contains("PUBLIC KEY"));
        let rsa_public = "-----BEGIN RSA PUBLIC KEY-----\nAAAA\n-----END RSA PUBLIC KEY-----\n";
        assert_eq!(SigningKey::parse(rsa_public).unwrap_err().code(), "private_key_public_only");
    }

    #[test]
    fn jwk_ec_or_okp_without_crv_is_a_bad_jwk() {
        for kty in ["EC", "OKP"] {
            let err = SigningKey::parse(&format!(r#"{{"kty":"{kty}","x":"AA","d":"AA"}}"#)).unwrap_err();
            assert!(matches!(&err, KeyError::BadJwk(r) if r.contains("crv")), "{err:?}");
        }
    }

    #[test]
    fn encrypted_sec1_pem_is_rejected_as_encrypted() {
        assert_eq!(SigningKey::parse(P256_SEC1_ENCRYPTED).unwrap_err(), KeyError::EncryptedPem);
    }

    #[test]
    fn truncated_p256_and_ed25519_pems_are_bad_pem() {
        for pem in [P256_PKCS8, ED25519_PKCS8, P256_SEC1_WITH_PARAMS] {
            let body_start = pem.rfind("-----BEGIN").unwrap();
            let cut = format!("{}\n-----END PRIVATE KEY-----", &pem[..body_start + 60]);
            assert_eq!(SigningKey::parse(&cut).unwrap_err().code(), "private_key_bad_pem", "{cut}");
        }
    }

    #[test]
    fn certificate_pem_is_the_wrong_pem_type() {
        let pem = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let err = SigningKey::parse(pem).unwrap_err();
        assert_eq!(err.code(), "private_key_wrong_pem_type");
        assert!(err.reason().contains("CERTIFICATE") && err.reason().contains("EC PRIVATE KEY"));
    }

    #[test]
    fn empty_key_is_reported_as_empty() {
        assert_eq!(SigningKey::parse("  ").unwrap_err(), KeyError::Empty);
    }

    #[test]
    fn a_mangled_pem_label_holding_key_material_is_never_quoted() {
        let body = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7";
        let pem = format!("-----BEGIN PRIVATE KEY {body}-----\n-----END PRIVATE KEY-----\n");
        let err = SigningKey::parse(&pem).unwrap_err();
        assert_eq!(err.code(), "private_key_wrong_pem_type");
        assert!(!err.reason().contains("MIIE"), "{}", err.reason());
        assert!(err.reason().contains("an unrecognised label"), "{}", err.reason());
        let public = format!("-----BEGIN {body} PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n");
        assert!(!SigningKey::parse(&public).unwrap_err().reason().contains("MIIE"));
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
    fn jwk_of_unknown_type_or_wrong_alg_is_rejected_with_reason() {
        let unknown = r#"{"kty":"XYZ","d":"c"}"#;
        assert!(matches!(SigningKey::parse(unknown).unwrap_err(), KeyError::BadJwk(r) if r.contains("kty")));
        let mut wrong_alg = test_key().private_jwk("k");
        wrong_alg["alg"] = "HS256".into();
        let err = SigningKey::parse(&wrong_alg.to_string()).unwrap_err();
        assert!(matches!(err, KeyError::BadJwk(r) if r.contains("alg")));
        let mut es_on_rsa = test_key().private_jwk("k");
        es_on_rsa["alg"] = "ES256".into();
        assert_eq!(SigningKey::parse(&es_on_rsa.to_string()).unwrap_err().code(), "private_key_bad_jwk");
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
        for key in [p256_key(), ed25519_key()] {
            let shown = format!("{key:?}");
            let d = key.private_jwk("k")["d"].as_str().unwrap().to_string();
            assert!(!shown.contains(&d[..16]) && (shown.contains("P-256") || shown.contains("Ed25519")), "{shown}");
        }
    }

    #[test]
    fn key_kind_names_its_jws_alg() {
        for (kind, alg) in [(KeyKind::Rs256, "RS256"), (KeyKind::Es256, "ES256"), (KeyKind::EdDsa, "EdDSA")] {
            assert_eq!(kind.alg(), alg);
            assert_eq!(KeyKind::from_alg(alg), Some(kind));
        }
        assert_eq!(KeyKind::from_alg("ES384"), None);
    }

    // --- previous public keys ----------------------------------------------------------------

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

    #[test]
    fn previous_rsa_keys_are_real_rsa_keys_under_distinct_non_empty_kids() {
        let jwk = serde_json::to_value(test_key().public_jwk("old")).unwrap();
        let with = |name: &str, value: serde_json::Value| {
            let mut key = jwk.clone();
            key[name] = value;
            parse_previous_public_keys(&format!("[{key}]"))
        };
        assert!(with("n", "not base64 at all!!".into()).unwrap_err().contains("'n' is not base64url"));
        assert!(with("e", "%%".into()).unwrap_err().contains("'e' is not base64url"));
        assert!(with("n", "AQ".into()).unwrap_err().contains("1-bit modulus"));
        assert!(with("n", "AAAA".into()).unwrap_err().contains("0-bit modulus"));
        assert!(with("e", "AQ".into()).unwrap_err().contains("'e'"));
        assert!(with("kid", "".into()).unwrap_err().contains("'kid' is empty"));
        let twice = format!("[{jwk},{jwk}]");
        assert!(parse_previous_public_keys(&twice).unwrap_err().contains("key 1: its kid"));
        assert!(with("n", jwk["n"].clone()).is_ok());
    }

    #[test]
    fn previous_public_keys_of_every_type_are_published_as_given() {
        let (rsa, ec, ed) =
            (test_key().public_jwk("rsa-old"), p256_key().public_jwk("ec-old"), ed25519_key().public_jwk("ed-old"));
        let jwks = serde_json::json!({"keys": [rsa, ec, ed]}).to_string();
        assert_eq!(parse_previous_public_keys(&jwks).unwrap(), vec![rsa, ec, ed]);
    }

    #[test]
    fn previous_private_jwks_of_every_type_lose_their_private_members() {
        for key in [test_key().clone(), p256_key(), ed25519_key()] {
            let parsed = parse_previous_public_keys(&key.private_jwk("old").to_string()).unwrap();
            assert_eq!(parsed, vec![key.public_jwk("old")]);
        }
    }

    #[test]
    fn previous_keys_take_alg_from_the_key_or_keep_a_fitting_one() {
        let mut rsa = serde_json::to_value(test_key().public_jwk("r")).unwrap();
        rsa["alg"] = "RS512".into();
        assert_eq!(parse_previous_public_keys(&rsa.to_string()).unwrap()[0].alg, "RS512");
        rsa.as_object_mut().unwrap().remove("alg");
        assert_eq!(parse_previous_public_keys(&rsa.to_string()).unwrap()[0].alg, "RS256");
        let mut ec = serde_json::to_value(p256_key().public_jwk("e")).unwrap();
        ec["alg"] = "RS256".into();
        let err = parse_previous_public_keys(&ec.to_string()).unwrap_err();
        assert!(err.contains("key 0") && err.contains("'RS256'") && err.contains("ES256"), "{err}");
        let p384 = serde_json::json!({"kty": "EC", "crv": "P-384", "kid": "p", "x": URL_SAFE_NO_PAD.encode([1u8; 48]), "y": URL_SAFE_NO_PAD.encode([2u8; 48])});
        assert_eq!(parse_previous_public_keys(&p384.to_string()).unwrap()[0].alg, "ES384");
    }

    #[test]
    fn previous_keys_that_cannot_verify_tokens_are_refused_precisely() {
        let x25519 =
            serde_json::json!({"kty": "OKP", "crv": "X25519", "kid": "x", "x": URL_SAFE_NO_PAD.encode([1u8; 32])});
        assert!(parse_previous_public_keys(&x25519.to_string()).unwrap_err().contains("X25519"));
        let oct = serde_json::json!({"kty": "oct", "kid": "s", "k": "c2VjcmV0"});
        assert!(parse_previous_public_keys(&oct.to_string()).unwrap_err().contains("'oct'"));
        let short = serde_json::json!({"kty": "EC", "crv": "P-256", "kid": "e", "x": "AQ", "y": "AQ"});
        assert!(parse_previous_public_keys(&short.to_string()).unwrap_err().contains("'x' is not 32"));
        let no_y = serde_json::json!({"kty": "EC", "crv": "P-256", "kid": "e", "x": URL_SAFE_NO_PAD.encode([1u8; 32])});
        assert!(parse_previous_public_keys(&no_y.to_string()).unwrap_err().contains("'y' is missing"));
    }
}
