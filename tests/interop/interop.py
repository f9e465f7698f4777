"""PyJWT side of the interoperability check.

    interop.py sign DIR     sign tokens from each case's private.pem and private.jwk
    interop.py verify DIR   verify every token in each case with our JWKS

Each case directory holds the signing Secret's files (private.pem, private.jwk, kid,
alg, tls.crt), the rendered jwks.json, and next.pem/next.kid (the Next key, used to
forge a token that must be rejected). Verification pins the algorithm and picks the
key by kid from the JWKS, as a verifier does.
"""

import base64
import hashlib
import json
import pathlib
import sys
import time

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization


def read(case, name):
    return (case / name).read_text()


def claims():
    now = int(time.time())
    return {"iss": "keyrotor-interop", "sub": "pyjwt", "iat": now, "exp": now + 600}


def sign(case):
    alg, kid = read(case, "alg"), read(case, "kid")
    headers = {"kid": kid}
    (case / "pyjwt-pem.jwt").write_text(
        jwt.encode(claims(), read(case, "private.pem"), algorithm=alg, headers=headers)
    )
    private_jwk = jwt.PyJWK(json.loads(read(case, "private.jwk")), algorithm=alg)
    (case / "pyjwt-jwk.jwt").write_text(
        jwt.encode(claims(), private_jwk.key, algorithm=alg, headers=headers)
    )
    # Signed by the Next key but claiming the Active kid: must never verify.
    (case / "forged.jwt").write_text(
        jwt.encode(claims(), read(case, "next.pem"), algorithm=alg, headers=headers)
    )


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def expect_rejected(what, fn):
    try:
        fn()
    except jwt.PyJWTError:
        return
    raise AssertionError(f"{what} was accepted")


def verify(case):
    alg, kid = read(case, "alg"), read(case, "kid")
    jwks = json.loads(read(case, "jwks.json"))
    keyset = jwt.PyJWKSet.from_dict(jwks)
    assert keyset.keys[0].key_id == kid, "Active key is not first in the JWKS"
    tokens = sorted(p for p in case.glob("*.jwt") if p.name != "forged.jwt")
    assert len(tokens) >= 4, f"{case.name}: expected tokens from both libraries, got {tokens}"
    for path in tokens:
        token = path.read_text()
        header = jwt.get_unverified_header(token)
        key = next(k for k in keyset.keys if k.key_id == header["kid"])
        decoded = jwt.decode(token, key.key, algorithms=[alg])
        assert decoded["iss"] == "keyrotor-interop"
        other = "ES256" if alg != "ES256" else "ES384"
        expect_rejected(f"{path.name} under {other}",
                        lambda: jwt.decode(token, key.key, algorithms=[other]))
        head, payload, signature = token.split(".")
        tampered = ".".join([head, b64url(b'{"sub":"mallory"}'), signature])
        expect_rejected(f"tampered {path.name}",
                        lambda: jwt.decode(tampered, key.key, algorithms=[alg]))
    forged = (case / "forged.jwt").read_text()
    active = next(k for k in keyset.keys if k.key_id == kid)
    expect_rejected("token signed by another key", lambda: jwt.decode(forged, active.key, algorithms=[alg]))
    # The certificate wraps the same public key and matches x5c / x5t#S256.
    cert = x509.load_pem_x509_certificate(read(case, "tls.crt").encode())
    der = cert.public_bytes(serialization.Encoding.DER)
    entry = next(k for k in jwks["keys"] if k["kid"] == kid)
    assert entry["x5c"] == [base64.b64encode(der).decode()], "x5c is not the certificate"
    assert entry["x5t#S256"] == b64url(hashlib.sha256(der).digest()), "x5t#S256 mismatch"
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    assert cert.public_key().public_bytes(serialization.Encoding.DER, spki) == active.key.public_bytes(
        serialization.Encoding.DER, spki
    ), "certificate key differs from the JWK"
    for member in ("d", "p", "q", "dp", "dq", "qi"):
        assert all(member not in k for k in jwks["keys"]), f"private member {member} in JWKS"
    return len(tokens)


def main():
    mode, root = sys.argv[1], pathlib.Path(sys.argv[2])
    cases = sorted(p for p in root.iterdir() if p.is_dir())
    assert cases, f"no cases in {root}"
    for case in cases:
        if mode == "sign":
            sign(case)
        else:
            count = verify(case)
            print(f"pyjwt: {case.name}: {count} tokens verified, forgeries rejected")


if __name__ == "__main__":
    main()
