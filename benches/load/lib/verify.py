#!/usr/bin/env python3
"""Checks one issued access token before scenario 8 measures its issuer.

Usage: verify.py TOKEN_RESPONSE_FILE JWKS_URL ALG AUDIENCE SCOPE

The token endpoint's JSON answer must carry an access_token that is a JWS signed with
ALG by a key of the issuer's published JWKS, whose aud contains AUDIENCE, whose scope
contains SCOPE and whose exp is in the future. Prints one line; exit 0 only if all hold.
"""

import base64
import json
import sys
import time
import urllib.request

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature


def b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def num(text: str) -> int:
    return int.from_bytes(b64d(text), "big")


def fail(msg):
    print(f"token check failed: {msg}")
    sys.exit(1)


def main():
    response_file, jwks_url, alg, audience, scope = sys.argv[1:6]
    try:
        with open(response_file) as f:
            token = json.load(f)["access_token"]
    except Exception as err:  # noqa: BLE001
        fail(f"no access_token in the token response ({err})")
    parts = token.split(".")
    if len(parts) != 3:
        fail("access_token is not a compact JWS")
    header, claims = json.loads(b64d(parts[0])), json.loads(b64d(parts[1]))
    if header.get("alg") != alg:
        fail(f"alg is {header.get('alg')!r}, expected {alg}")
    jwks = json.load(urllib.request.urlopen(jwks_url, timeout=5))
    keys = [k for k in jwks["keys"]
            if k.get("kid") == header.get("kid") or "kid" not in header]
    if not keys:
        fail(f"kid {header.get('kid')!r} is not in {jwks_url}")
    data = (parts[0] + "." + parts[1]).encode()
    sig = b64d(parts[2])
    ok = False
    for k in keys:
        try:
            if alg == "RS256" and k["kty"] == "RSA":
                pub = rsa.RSAPublicNumbers(num(k["e"]), num(k["n"])).public_key()
                pub.verify(sig, data, padding.PKCS1v15(), hashes.SHA256())
                ok = True
            elif alg == "ES256" and k["kty"] == "EC":
                pub = ec.EllipticCurvePublicNumbers(
                    num(k["x"]), num(k["y"]), ec.SECP256R1()).public_key()
                der = encode_dss_signature(int.from_bytes(sig[:32], "big"),
                                           int.from_bytes(sig[32:], "big"))
                pub.verify(der, data, ec.ECDSA(hashes.SHA256()))
                ok = True
        except InvalidSignature:
            pass
    if not ok:
        fail("signature does not verify against the published JWKS")
    aud = claims.get("aud")
    auds = aud if isinstance(aud, list) else [aud]
    if audience not in auds:
        fail(f"aud {aud!r} lacks {audience}")
    scopes = claims.get("scope", "")
    scopes = scopes.split() if isinstance(scopes, str) else scopes
    if scope not in scopes:
        fail(f"scope {claims.get('scope')!r} lacks {scope}")
    if not isinstance(claims.get("exp"), int) or claims["exp"] <= time.time():
        fail("exp missing or past")
    print(f"token ok: {alg} kid={header.get('kid')} aud={aud} scope={claims.get('scope')!r} "
          f"{len(token)} bytes")


if __name__ == "__main__":
    main()
