"""Local stand-ins for third-party auth providers: OpenID discovery documents and JWKS served
from one loopback HTTP server, with rotatable signing keys and a fetch counter per path.

Tokens carry the providers' real `iss` (`https://securetoken.google.com/<project>`, ...) while
their keys are fetched from here, through the worker's `THIRD_PARTY_*_JWKS_URL` overrides; the
generic OIDC issuer lives on this server itself (an http issuer on loopback), so its discovery
document is fetched for real.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm


class ProviderKeys:
    """A provider's signing keys: `current` signs; `published` are in its JWKS."""

    def __init__(self, kid: str, alg: str = "RS256"):
        self.keys: dict[str, tuple[str, object]] = {}
        self.published: list[str] = []
        self.add(kid, alg)
        self.current = kid

    def add(self, kid: str, alg: str = "RS256"):
        key = (rsa.generate_private_key(public_exponent=65537, key_size=2048) if alg == "RS256"
               else ec.generate_private_key(ec.SECP256R1()))
        self.keys[kid] = (alg, key)
        self.published.append(kid)

    def rotate(self, kid: str, alg: str = "RS256"):
        """Publishes a new key and signs with it from now on (the old one stays published)."""
        self.add(kid, alg)
        self.current = kid

    def jwks(self) -> dict:
        keys = []
        for kid in self.published:
            alg, key = self.keys[kid]
            algo = RSAAlgorithm if alg == "RS256" else ECAlgorithm
            jwk = json.loads(algo.to_jwk(key.public_key()))
            jwk.update({"kid": kid, "alg": alg, "use": "sig"})
            keys.append(jwk)
        return {"keys": keys}

    def sign(self, claims: dict, kid: str | None = None) -> str:
        kid = kid or self.current
        alg, key = self.keys[kid]
        return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid, "typ": "JWT"})

    def public_pem(self, kid: str | None = None) -> bytes:
        from cryptography.hazmat.primitives import serialization
        _, key = self.keys[kid or self.current]
        return key.public_key().public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)


class IssuerServer:
    """Serves `/<name>/jwks.json` for each provider and `/<name>/.well-known/openid-configuration`
    for discovery issuers; `fetches[path]` counts requests per path."""

    def __init__(self):
        self.jwks: dict[str, ProviderKeys] = {}
        self.discovery: dict[str, dict] = {}
        self.fetches: Counter[str] = Counter()
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            disable_nagle_algorithm = True

            def do_GET(self):
                with server.lock:
                    server.fetches[self.path] += 1
                    if self.path in server.discovery:
                        body = server.discovery[self.path]
                    elif self.path in server.jwks:
                        body = server.jwks[self.path].jwks()
                    else:
                        body = None
                if body is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def serve_jwks(self, name: str, keys: ProviderKeys) -> str:
        path = f"/{name}/jwks.json"
        self.jwks[path] = keys
        return self.base + path

    def serve_issuer(self, name: str, keys: ProviderKeys) -> str:
        """An OpenID issuer at `<base>/<name>` with discovery; returns the issuer URL."""
        issuer = f"{self.base}/{name}"
        jwks_uri = self.serve_jwks(name, keys)
        self.discovery[f"/{name}/.well-known/openid-configuration"] = {
            "issuer": issuer, "jwks_uri": jwks_uri,
            "id_token_signing_alg_values_supported": ["RS256"],
        }
        return issuer

    def total_fetches(self) -> int:
        with self.lock:
            return sum(self.fetches.values())

    def stop(self):
        self.httpd.shutdown()


def claims(iss: str, sub: str, aud=None, lifetime: int = 3600, **extra) -> dict:
    now = int(time.time())
    body = {"iss": iss, "sub": sub, "iat": now, "exp": now + lifetime}
    if aud is not None:
        body["aud"] = aud
    body.update(extra)
    return body
