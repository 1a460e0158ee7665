"""RFC 7523 client assertions (``private_key_jwt``): the second module that knows the JWT
library, beside tokens.py.

A system client registers public keys (a JWKS, or a PEM turned into one here) and signs a
short-lived JWT for each token request. The algorithms are pinned (RS256, ES256: never
HS*, never none) and read from the key registered, never trusted from the header alone.
Whether the assertion's ``jti`` was used before is the caller's check, in the database.
"""

import json
import time
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jose import jwk, jws, jwt
from jose.exceptions import JOSEError

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# The only algorithms accepted, each for its key type.
ALGORITHMS = {"RS256": "RSA", "ES256": "EC"}
MAX_LIFETIME_SECONDS = 300
_MIN_RSA_BITS = 2048
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "k")


class AssertionRefused(Exception):
    """The assertion does not authenticate the client; ``reason`` goes in the audit event."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InvalidPublicKey(ValueError):
    """What was offered as a client's public key is not one this service accepts."""


@dataclass(frozen=True)
class VerifiedAssertion:
    client_id: str
    jti: str
    expires_at: int


def unverified_client_id(assertion: str) -> str | None:
    """The ``sub`` the assertion claims, to find whose keys to verify it with."""
    try:
        claims = jwt.get_unverified_claims(assertion)
    except (JOSEError, ValueError, TypeError):
        return None
    sub = claims.get("sub") if isinstance(claims, dict) else None
    return sub if isinstance(sub, str) and 0 < len(sub) <= 64 else None


def public_jwks(text: str) -> dict[str, Any]:
    """A JWKS (JSON) or a PEM public key, checked and returned as a JWKS of public keys."""
    stripped = text.strip()
    if stripped.startswith("-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(stripped.encode())
        except ValueError as exc:
            raise InvalidPublicKey("not a PEM public key (never a private one)") from exc
        if isinstance(key, ec.EllipticCurvePublicKey):
            algorithm = "ES256"
        elif isinstance(key, rsa.RSAPublicKey):
            algorithm = "RS256"
        else:
            raise InvalidPublicKey("only RSA and EC P-256 keys are accepted")
        pem = key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        jwks = {"keys": [{**jwk.construct(pem, algorithm).to_dict(), "use": "sig"}]}
    else:
        try:
            jwks = json.loads(stripped)
        except ValueError as exc:
            raise InvalidPublicKey("neither a PEM public key nor a JWKS") from exc
        if isinstance(jwks, dict) and "kty" in jwks:
            jwks = {"keys": [jwks]}
    keys = jwks.get("keys") if isinstance(jwks, dict) else None
    if not isinstance(keys, list) or not 1 <= len(keys) <= 5:
        raise InvalidPublicKey("a JWKS holds 1 to 5 keys")
    for key_dict in keys:
        _check_public_jwk(key_dict)
    return {"keys": keys}


def _check_public_jwk(key_dict: Any) -> None:
    if not isinstance(key_dict, dict) or any(name in key_dict for name in _PRIVATE_MEMBERS):
        raise InvalidPublicKey("a key must be a public JWK (no private or symmetric members)")
    algorithm = _algorithm_for(key_dict)
    if algorithm is None:
        raise InvalidPublicKey("only RSA (RS256) and EC P-256 (ES256) keys are accepted")
    try:
        key = jwk.construct(key_dict, algorithm)
    except (JOSEError, ValueError, TypeError) as exc:
        raise InvalidPublicKey("the key cannot be read") from exc
    if algorithm == "RS256":
        public = key.public_key().prepared_key
        if public.key_size < _MIN_RSA_BITS:
            raise InvalidPublicKey(f"RSA keys must have at least {_MIN_RSA_BITS} bits")


def _algorithm_for(key_dict: dict[str, Any]) -> str | None:
    kty, alg = key_dict.get("kty"), key_dict.get("alg")
    if kty == "EC" and key_dict.get("crv") == "P-256" and alg in (None, "ES256"):
        return "ES256"
    if kty == "RSA" and alg in (None, "RS256"):
        return "RS256"
    return None


def verify_assertion(
    assertion: str,
    jwks: dict[str, Any] | None,
    *,
    client_id: str,
    audience: str,
    leeway: int,
) -> VerifiedAssertion:
    """The assertion's signature by one of the client's keys, then its claims: ``iss`` and
    ``sub`` the client, ``aud`` the token endpoint, ``exp`` at most five minutes ahead,
    ``iat`` not in the future, a ``jti``."""
    if not jwks or not jwks.get("keys"):
        raise AssertionRefused("assertion_no_key_registered")
    try:
        header = jwt.get_unverified_header(assertion)
    except (JOSEError, ValueError, TypeError) as exc:
        raise AssertionRefused("assertion_malformed") from exc
    algorithm = header.get("alg")
    if algorithm not in ALGORITHMS:
        raise AssertionRefused("assertion_algorithm_refused")
    kid = header.get("kid")
    candidates = [
        key
        for key in jwks["keys"]
        if _algorithm_for(key) == algorithm and (kid is None or key.get("kid") in (None, kid))
    ]
    payload = None
    for key in candidates:
        try:
            payload = jws.verify(assertion, key, algorithms=[algorithm])
            break
        except (JOSEError, ValueError, TypeError):
            continue
    if payload is None:
        raise AssertionRefused("assertion_bad_signature")
    try:
        claims = json.loads(payload)
    except ValueError as exc:
        raise AssertionRefused("assertion_malformed") from exc
    if not isinstance(claims, dict):
        raise AssertionRefused("assertion_malformed")
    return _checked_claims(claims, client_id=client_id, audience=audience, leeway=leeway)


def _checked_claims(
    claims: dict[str, Any], *, client_id: str, audience: str, leeway: int
) -> VerifiedAssertion:
    exp, iat, nbf, jti = claims.get("exp"), claims.get("iat"), claims.get("nbf"), claims.get("jti")
    if not (isinstance(exp, int) and isinstance(iat, int)) or not _is_int(exp) or not _is_int(iat):
        raise AssertionRefused("assertion_malformed")
    if nbf is not None and not _is_int(nbf):
        raise AssertionRefused("assertion_malformed")
    if not isinstance(jti, str) or not 0 < len(jti) <= 128:
        raise AssertionRefused("assertion_malformed")
    if claims.get("iss") != client_id or claims.get("sub") != client_id:
        raise AssertionRefused("assertion_wrong_issuer")
    aud = claims.get("aud")
    audiences = aud if isinstance(aud, list) else [aud]
    if audience not in audiences:
        raise AssertionRefused("assertion_wrong_audience")
    now = int(time.time())
    if exp < now - leeway:
        raise AssertionRefused("assertion_expired")
    if exp - now > MAX_LIFETIME_SECONDS + leeway:
        raise AssertionRefused("assertion_lifetime_too_long")
    if iat > now + leeway or (nbf is not None and nbf > now + leeway):
        raise AssertionRefused("assertion_not_yet_valid")
    return VerifiedAssertion(client_id=client_id, jti=jti, expires_at=exp)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
