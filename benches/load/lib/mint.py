#!/usr/bin/env python3
"""Keys → JWKS and benchmark tokens for benches/load/run.sh.

Usage: mint.py DIR ISSUER AUDIENCE SCOPE

DIR holds rsa.pem and ec.pem (made by openssl in run.sh). Writes into DIR:
  jwks.json           public JWKS (RS256 kid "bench-rsa", ES256 kid "bench-ec")
  jwks-private.json   the same keys with their private parts (node-oidc-provider)
  tokens/<alg>.<kind> compact JWS, for alg in rs256, es256 and kind in
      good       iss, aud, sub, scope with the required scope, exp in 1 day, kid
      noscope    as good, but the scope lacks the required one
      expired    as good, but exp an hour ago
      wrongaud   as good, but aud another API
      wrongiss   as good, but iss another issuer
      badsig     good with one signature byte changed
Signing uses `cryptography`; ES256 signatures are JOSE raw r||s (not DER).
"""

import base64
import json
import os
import sys
import time
import uuid

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def uint(n: int, length: int | None = None) -> str:
    if length is None:
        length = (n.bit_length() + 7) // 8
    return b64u(n.to_bytes(length, "big"))


def load(path):
    with open(path, "rb") as f:
        return serialization.load_pem_private_key(f.read(), password=None)


def rsa_jwk(key, kid, private):
    pub = key.public_key().public_numbers()
    jwk = {"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
           "n": uint(pub.n), "e": uint(pub.e)}
    if private:
        p = key.private_numbers()
        jwk.update(d=uint(p.d), p=uint(p.p), q=uint(p.q), dp=uint(p.dmp1),
                   dq=uint(p.dmq1), qi=uint(p.iqmp))
    return jwk


def ec_jwk(key, kid, private):
    pub = key.public_key().public_numbers()
    jwk = {"kty": "EC", "kid": kid, "alg": "ES256", "use": "sig", "crv": "P-256",
           "x": uint(pub.x, 32), "y": uint(pub.y, 32)}
    if private:
        jwk["d"] = uint(key.private_numbers().private_value, 32)
    return jwk


def sign(alg, key, kid, claims):
    header = {"alg": alg, "typ": "at+jwt", "kid": kid}
    signing_input = (b64u(json.dumps(header, separators=(",", ":")).encode()) + "." +
                     b64u(json.dumps(claims, separators=(",", ":")).encode()))
    data = signing_input.encode()
    if alg == "RS256":
        sig = key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    else:
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return signing_input + "." + b64u(sig)


def main():
    out, issuer, audience, scope = sys.argv[1:5]
    rsa_key = load(os.path.join(out, "rsa.pem"))
    ec_key = load(os.path.join(out, "ec.pem"))
    assert isinstance(rsa_key, rsa.RSAPrivateKey) and rsa_key.key_size == 2048
    assert isinstance(ec_key, ec.EllipticCurvePrivateKey) and ec_key.curve.name == "secp256r1"

    for name, private in (("jwks.json", False), ("jwks-private.json", True)):
        jwks = {"keys": [rsa_jwk(rsa_key, "bench-rsa", private),
                         ec_jwk(ec_key, "bench-ec", private)]}
        with open(os.path.join(out, name), "w") as f:
            json.dump(jwks, f, indent=1)

    now = int(time.time())
    base = {"iss": issuer, "sub": "bench-client@clients", "aud": audience,
            "azp": "bench-client", "client_id": "bench-client",
            "scope": f"openid {scope} profile", "iat": now, "exp": now + 86400}
    variants = {
        "good": {},
        "noscope": {"scope": "openid profile write:other"},
        "expired": {"iat": now - 7200, "exp": now - 3600},
        "wrongaud": {"aud": "https://other-api.bench.local"},
        "wrongiss": {"iss": "https://other-issuer.bench.local/"},
    }
    os.makedirs(os.path.join(out, "tokens"), exist_ok=True)
    for alg, key, kid in (("RS256", rsa_key, "bench-rsa"), ("ES256", ec_key, "bench-ec")):
        for kind, extra in variants.items():
            claims = dict(base, jti=str(uuid.uuid4()), **extra)
            token = sign(alg, key, kid, claims)
            with open(os.path.join(out, "tokens", f"{alg.lower()}.{kind}"), "w") as f:
                f.write(token)
            if kind == "good":
                # Flip one signature character to another valid base64url character
                # that changes the decoded bytes (not just padding bits).
                head, sig = token.rsplit(".", 1)
                i = len(sig) // 2
                bad = sig[:i] + ("A" if sig[i] != "A" else "B") + sig[i + 1:]
                with open(os.path.join(out, "tokens", f"{alg.lower()}.badsig"), "w") as f:
                    f.write(head + "." + bad)


if __name__ == "__main__":
    main()
