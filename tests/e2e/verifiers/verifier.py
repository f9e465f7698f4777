"""JWT verifiers backed by PyJWT, driven by the end-to-end harness.

Reads one JSON request per line on stdin and writes one JSON response per line on
stdout, in order, echoing the request's "n" and adding "at" (when it was answered,
Unix seconds). Requests ("op"):

  create       {"verifier": id, "cacheSeconds": s, "cooldownSeconds": s}
               a verifier with its own PyJWKClient (JWK Set cache with that lifespan,
               forced refresh on an unknown kid after that cooldown)
  publish      {"verifier": id, "jwks": text-or-null}
               the JWKS document the verifier's endpoint now serves (what its mounted
               ConfigMap holds); the client reads it only when its cache says so
  verify       {"verifier": id, "token": jwt, "alg": "ES256"}
               -> {"ok": true, "kid": kid} or {"ok": false, "error": message}
  conformance  {"jwks": text} -> {"ok": true, "problems": [message, ...]}
  publicPem    {"jwk": public-jwk} -> {"ok": true, "pem": SubjectPublicKeyInfo PEM}
               (for the HS256-keyed-with-the-public-key attack)

The signing key is looked up with PyJWKClient's own logic (kid match, cache, refresh)
and the token is checked with jwt.decode pinned to the one algorithm of the policy.
"""

import base64
import binascii
import hashlib
import json
import sys
import time

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

AUDIENCE = "keyrotor-e2e"
ISSUER = "keyrotor-e2e-issuer"


# PyJWKClient's cache and cooldown read time.monotonic(). A verify request carries the
# harness's clock ("now", Unix seconds) so that a backlog in this process cannot stretch
# the cache's age beyond what the harness models; jwt.decode checks exp with
# time.time()-based datetimes, the real clock.
_request_now = None


def _harness_monotonic():
    return time.time() if _request_now is None else _request_now


time.monotonic = _harness_monotonic


class ServedJWKClient(jwt.PyJWKClient):
    """A PyJWKClient whose endpoint is the document the harness last published for it.

    Only fetch_data is replaced (there is no HTTP server); caching, cooldown and key
    selection are PyJWKClient's own.
    """

    def __init__(self, cache_seconds, cooldown_seconds):
        super().__init__(
            "https://jwks.invalid/jwks.json",
            cache_jwk_set=True,
            lifespan=max(cache_seconds, 0.001),
            cooldown_duration=cooldown_seconds,
        )
        self.served = None

    def fetch_data(self):
        if self.served is None:
            raise jwt.PyJWKClientConnectionError("no JWKS document served yet")
        data = json.loads(self.served)
        data = self._as_jwk_set_payload(data)
        if self.jwk_set_cache is not None:
            self.jwk_set_cache.put(data)
        self._last_successful_fetch = time.monotonic()
        return data


clients = {}


def op_create(req):
    clients[req["verifier"]] = ServedJWKClient(
        float(req.get("cacheSeconds", 0.001)), float(req.get("cooldownSeconds", 0))
    )
    return {"ok": True}


def op_publish(req):
    clients[req["verifier"]].served = req.get("jwks")
    return {"ok": True}


def op_verify(req):
    global _request_now
    client = clients[req["verifier"]]
    token = req["token"]
    now = req.get("now")
    _request_now = float(now) if isinstance(now, (int, float)) else None
    try:
        signing_key = client.get_signing_key_from_jwt(token)
        claims = jwt.decode(
            token,
            key=signing_key,
            algorithms=[req["alg"]],
            audience=AUDIENCE,
            issuer=ISSUER,
            options={"require": ["exp", "iat", "iss", "aud"]},
        )
        if not isinstance(claims, dict):
            return {"ok": False, "error": "claims are not an object"}
        return {"ok": True, "kid": signing_key.key_id}
    except Exception as e:  # every rejection is an answer, not a crash
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}
    finally:
        _request_now = None


# --- JWKS conformance (RFC 7517, RFC 7518, RFC 7638), written against the RFCs and
# the cryptography package, independent of keyrotor's own code.

B64URL_ALPHABET = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
ALGS = {
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "EdDSA": ("OKP", "Ed25519"),
    "RS256": ("RSA", None),
    "PS256": ("RSA", None),
}
MEMBERS = {
    "EC": {"crv", "x", "y"},
    "OKP": {"crv", "x"},
    "RSA": {"n", "e"},
}
COMMON = {"kty", "use", "key_ops", "alg", "kid", "x5c", "x5t", "x5t#S256", "x5u"}
CURVES = {"P-256": (ec.SECP256R1(), 32), "P-384": (ec.SECP384R1(), 48)}


def b64url(value, what, problems):
    if not isinstance(value, str) or not value:
        problems.append(f"{what} is not a non-empty string")
        return None
    if not set(value) <= B64URL_ALPHABET:
        problems.append(f"{what} is not unpadded base64url")
        return None
    if len(value) % 4 == 1:
        problems.append(f"{what} has an impossible base64url length")
        return None
    decoded = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    if base64.urlsafe_b64encode(decoded).rstrip(b"=").decode() != value:
        problems.append(f"{what} is not canonical base64url")
    return decoded


def rfc7638_thumbprint(jwk):
    required = {"EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x"), "RSA": ("e", "kty", "n")}
    members = {name: jwk[name] for name in required[jwk["kty"]]}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    digest = hashlib.sha256(canonical.encode("utf-8")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def public_key_of(jwk, label, problems):
    kty = jwk.get("kty")
    try:
        if kty == "EC":
            curve, size = CURVES.get(jwk.get("crv"), (None, None))
            if curve is None:
                problems.append(f"{label}: unsupported crv {jwk.get('crv')!r}")
                return None
            x = b64url(jwk.get("x"), f"{label}: x", problems)
            y = b64url(jwk.get("y"), f"{label}: y", problems)
            if x is None or y is None:
                return None
            if len(x) != size or len(y) != size:
                problems.append(f"{label}: x/y must be {size} octets (RFC 7518 6.2.1.2)")
                return None
            numbers = ec.EllipticCurvePublicNumbers(
                int.from_bytes(x, "big"), int.from_bytes(y, "big"), curve
            )
            return numbers.public_key()
        if kty == "OKP":
            if jwk.get("crv") != "Ed25519":
                problems.append(f"{label}: unsupported crv {jwk.get('crv')!r}")
                return None
            x = b64url(jwk.get("x"), f"{label}: x", problems)
            if x is None:
                return None
            if len(x) != 32:
                problems.append(f"{label}: Ed25519 x must be 32 octets (RFC 8037)")
                return None
            return ed25519.Ed25519PublicKey.from_public_bytes(x)
        if kty == "RSA":
            n = b64url(jwk.get("n"), f"{label}: n", problems)
            e = b64url(jwk.get("e"), f"{label}: e", problems)
            if n is None or e is None:
                return None
            if n[0] == 0 or e[0] == 0:
                problems.append(f"{label}: n/e have a leading zero octet (RFC 7518 6.3.1)")
            modulus = int.from_bytes(n, "big")
            exponent = int.from_bytes(e, "big")
            if modulus.bit_length() < 2048:
                problems.append(f"{label}: RSA modulus shorter than 2048 bits (RFC 7518 3.3)")
            return rsa.RSAPublicNumbers(exponent, modulus).public_key()
    except (ValueError, TypeError) as err:
        problems.append(f"{label}: not a valid public key: {err}")
        return None
    problems.append(f"{label}: unsupported kty {kty!r}")
    return None


def spki(key):
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def check_key(jwk, index, problems):
    label = f"keys[{index}]"
    if not isinstance(jwk, dict):
        problems.append(f"{label} is not an object")
        return None
    kid = jwk.get("kid")
    if isinstance(kid, str):
        label = f"keys[{index}] ({kid})"
    for member in PRIVATE_MEMBERS:
        if member in jwk:
            problems.append(f"{label}: private member {member!r} present")
    kty = jwk.get("kty")
    if kty not in MEMBERS:
        problems.append(f"{label}: kty {kty!r} is not EC, OKP or RSA")
        return kid
    unknown = set(jwk) - COMMON - MEMBERS[kty] - set(PRIVATE_MEMBERS)
    if unknown:
        problems.append(f"{label}: unexpected members {sorted(unknown)}")
    missing = MEMBERS[kty] - set(jwk)
    if missing:
        problems.append(f"{label}: missing members {sorted(missing)}")
        return kid
    if jwk.get("use") != "sig":
        problems.append(f"{label}: use is {jwk.get('use')!r}, not 'sig'")
    if "key_ops" in jwk and jwk["key_ops"] != ["verify"]:
        problems.append(f"{label}: key_ops {jwk['key_ops']!r} on a public signing key")
    alg = jwk.get("alg")
    if alg not in ALGS:
        problems.append(f"{label}: alg {alg!r} is not one keyrotor publishes")
    else:
        want_kty, want_crv = ALGS[alg]
        if kty != want_kty or (want_crv is not None and jwk.get("crv") != want_crv):
            problems.append(f"{label}: alg {alg} does not fit kty {kty} crv {jwk.get('crv')}")
    if not isinstance(kid, str) or not kid:
        problems.append(f"{label}: no kid")
    else:
        thumbprint = rfc7638_thumbprint(jwk)
        if kid != thumbprint:
            problems.append(f"{label}: kid is not the RFC 7638 thumbprint {thumbprint}")
    key = public_key_of(jwk, label, problems)
    if "x5c" in jwk:
        chain = jwk["x5c"]
        if not isinstance(chain, list) or not chain or not all(isinstance(c, str) for c in chain):
            problems.append(f"{label}: x5c is not a non-empty array of strings")
        else:
            try:
                der = base64.b64decode(chain[0], validate=True)
                cert = x509.load_der_x509_certificate(der)
            except (binascii.Error, ValueError) as err:
                problems.append(f"{label}: x5c[0] is not a base64 DER certificate: {err}")
            else:
                if key is not None and spki(cert.public_key()) != spki(key):
                    problems.append(f"{label}: x5c[0] holds a different public key")
                digest = base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()
                if "x5t#S256" in jwk and jwk["x5t#S256"] != digest:
                    problems.append(f"{label}: x5t#S256 is not the SHA-256 of x5c[0]")
                if "x5t" in jwk:
                    sha1 = base64.urlsafe_b64encode(hashlib.sha1(der).digest()).rstrip(b"=").decode()
                    if jwk["x5t"] != sha1:
                        problems.append(f"{label}: x5t is not the SHA-1 of x5c[0]")
    elif "x5t#S256" in jwk or "x5t" in jwk:
        problems.append(f"{label}: x5t#S256/x5t without x5c")
    return kid


def conformance_problems(text):
    problems = []
    if text is None:
        return ["no document"]
    if "PRIVATE KEY" in text:
        problems.append("document contains PEM private key material")
    try:
        doc = json.loads(text)
    except ValueError as err:
        return problems + [f"not JSON: {err}"]
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        return problems + ['not an object with a "keys" array (RFC 7517 5)']
    if set(doc) != {"keys"}:
        problems.append(f"unexpected top-level members {sorted(set(doc) - {'keys'})}")
    kids = [check_key(jwk, i, problems) for i, jwk in enumerate(doc["keys"])]
    seen = set()
    for kid in kids:
        if kid is not None and kid in seen:
            problems.append(f"duplicate kid {kid} (RFC 7517 4.5)")
        seen.add(kid)
    return problems


def op_conformance(req):
    return {"ok": True, "problems": conformance_problems(req.get("jwks"))}


def op_public_pem(req):
    problems = []
    key = public_key_of(req["jwk"], "jwk", problems)
    if key is None:
        return {"ok": False, "error": "; ".join(problems)}
    pem = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return {"ok": True, "pem": pem.decode()}


OPS = {
    "create": op_create,
    "publish": op_publish,
    "verify": op_verify,
    "conformance": op_conformance,
    "publicPem": op_public_pem,
}


def main():
    out = sys.stdout
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        n = None
        try:
            req = json.loads(line)
            n = req.get("n")
            response = OPS[req["op"]](req)
        except Exception as e:  # a broken request must not take the verifier down
            response = {"ok": False, "error": f"bad request: {type(e).__name__}: {e}"}
        response["n"] = n
        response["at"] = time.time()
        out.write(json.dumps(response) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
