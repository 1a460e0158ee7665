"""Access tokens: the only module that knows the JWT library.

Tokens are ES256 JWTs; the algorithm is pinned here, never read from the token.
"""

import secrets
import time
from dataclasses import dataclass

from jose import jwt
from jose.exceptions import JOSEError

from app.auth.keys import ALGORITHM, KeyRing
from app.config import Settings


class InvalidToken(Exception):
    """The token is not one this service issued and still honours."""


@dataclass(frozen=True)
class IssuedToken:
    token: str
    token_id: str
    expires_at: int


@dataclass(frozen=True)
class TokenClaims:
    subject: str
    organisation_id: str
    scopes: frozenset[str]
    token_id: str
    expires_at: int


async def issue_token(
    keyring: KeyRing, settings: Settings, *, subject: str, organisation_id: str, scopes: list[str]
) -> IssuedToken:
    kid, key = await keyring.signer()
    now = int(time.time())
    claims = {
        "iss": settings.token_issuer,
        "aud": settings.token_audience,
        "sub": subject,
        "org": organisation_id,
        "scope": " ".join(sorted(scopes)),
        "iat": now,
        "nbf": now,
        "exp": now + settings.token_ttl_seconds,
        "jti": secrets.token_urlsafe(16),
    }
    token = jwt.encode(claims, key, algorithm=ALGORITHM, headers={"kid": kid, "typ": "at+jwt"})
    return IssuedToken(token=token, token_id=claims["jti"], expires_at=claims["exp"])


async def verify_token(keyring: KeyRing, settings: Settings, token: str) -> TokenClaims:
    try:
        header = jwt.get_unverified_header(token)
    except JOSEError as exc:
        raise InvalidToken("malformed token") from exc
    if header.get("alg") != ALGORITHM:
        raise InvalidToken("algorithm not accepted")
    kid = header.get("kid")
    if not isinstance(kid, str):
        raise InvalidToken("no key id")
    key = await keyring.verifier(kid)
    if key is None:
        raise InvalidToken("unknown or retired key")
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            audience=settings.token_audience,
            issuer=settings.token_issuer,
            options={
                "require_exp": True,
                "require_aud": True,
                "require_iss": True,
                "require_nbf": True,
                "require_iat": True,
                "require_sub": True,
                "require_jti": True,
                "leeway": settings.token_leeway_seconds,
            },
        )
    except (JOSEError, TypeError, ValueError) as exc:
        # python-jose raises TypeError for time claims of the wrong JSON type.
        raise InvalidToken(type(exc).__name__) from exc
    times = [claims.get(name) for name in ("exp", "iat", "nbf")]
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in times):
        raise InvalidToken("time claims must be integers")
    if claims["exp"] - claims["iat"] > settings.token_ttl_seconds:
        raise InvalidToken("lifetime too long")
    if claims["iat"] > time.time() + settings.token_leeway_seconds:
        raise InvalidToken("issued in the future")
    org, scope = claims.get("org"), claims.get("scope")
    if not isinstance(org, str) or not isinstance(scope, str):
        raise InvalidToken("missing organisation or scope")
    return TokenClaims(
        subject=claims["sub"],
        organisation_id=org,
        scopes=frozenset(scope.split()),
        token_id=claims["jti"],
        expires_at=claims["exp"],
    )
