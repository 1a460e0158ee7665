"""Access tokens: the only module that knows the JWT library.

Tokens are ES256 JWTs; the algorithm is pinned here, never read from the token.
"""

import secrets
import time
from dataclasses import dataclass

from jose import jwt
from jose.exceptions import JOSEError

from app.auth.keys import ALGORITHM, KeyRing, TokenClaims, VerifiedToken
from app.config import Settings

__all__ = ["InvalidToken", "IssuedToken", "TokenClaims", "issue_token", "verify_token"]


class InvalidToken(Exception):
    """The token is not one this service issued and still honours."""


@dataclass(frozen=True)
class IssuedToken:
    token: str
    token_id: str
    expires_at: int


async def issue_token(
    keyring: KeyRing,
    settings: Settings,
    *,
    subject: str,
    organisation_id: str,
    scopes: list[str],
    certificate: str | None = None,
) -> IssuedToken:
    """``certificate``: the thumbprint of the client certificate to bind the token to."""
    kid, key = await keyring.signer()
    now = int(time.time())
    token_id, expires_at = secrets.token_urlsafe(16), now + settings.token_ttl_seconds
    claims: dict[str, object] = {
        "iss": settings.token_issuer,
        "aud": settings.token_audience,
        "sub": subject,
        "org": organisation_id,
        "scope": " ".join(sorted(scopes)),
        "iat": now,
        "nbf": now,
        "exp": expires_at,
        "jti": token_id,
    }
    if certificate is not None:
        claims["cnf"] = {"x5t#S256": certificate}
    token = jwt.encode(claims, key, algorithm=ALGORITHM, headers={"kid": kid, "typ": "at+jwt"})
    return IssuedToken(
        token=token, token_id=str(claims["jti"]), expires_at=now + settings.token_ttl_seconds
    )


async def verify_token(
    keyring: KeyRing, settings: Settings, token: str, *, certificate: str | None
) -> TokenClaims:
    """The claims of a token this service issued, signed by a current key and valid now,
    presented with the client certificate it is bound to, if it is bound to one
    (``certificate``: the thumbprint of the one presented with it, or None).

    A token whose signature and fixed claims (issuer, audience, lifetime, types) this
    process has verified before is not verified again while it stays in the keyring's
    cache: its key must still be current and its time claims (``exp``, ``nbf``, ``iat``)
    are checked afresh on every request, exactly as below. Whether it was issued and
    not revoked, and whether its principal is active, is read from the database on
    every request by the caller.
    """
    cache_key = (token, settings.token_issuer, settings.token_audience, settings.token_ttl_seconds)
    cached = keyring.verified_tokens.get(cache_key)
    if cached is not None:
        if _times_valid(cached, settings) and await keyring.verifier(cached.kid) is not None:
            return _bound(cached.claims, certificate)
        # Expired, not yet valid or its key retired: verify in full, which says why.
        keyring.verified_tokens.pop(cache_key, None)
    verified = await _verify(keyring, settings, token)
    keyring.remember_token(cache_key, verified)
    return _bound(verified.claims, certificate)


def _bound(claims: TokenClaims, certificate: str | None) -> TokenClaims:
    """RFC 8705 §3: a bound token without its certificate is an invalid token."""
    if claims.certificate is not None and claims.certificate != certificate:
        raise InvalidToken("token bound to a client certificate not presented")
    return claims


def _times_valid(verified: VerifiedToken, settings: Settings) -> bool:
    """python-jose's exp and nbf checks (whole seconds, with leeway) and ours on iat."""
    now = time.time()
    leeway = settings.token_leeway_seconds
    return (
        verified.expires_at >= int(now) - leeway
        and verified.not_before <= int(now) + leeway
        and verified.issued_at <= now + leeway
    )


async def _verify(keyring: KeyRing, settings: Settings, token: str) -> VerifiedToken:
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
    confirmation = claims.get("cnf")
    bound_to = None
    if confirmation is not None:
        bound_to = confirmation.get("x5t#S256") if isinstance(confirmation, dict) else None
        if not isinstance(bound_to, str):
            raise InvalidToken("unsupported confirmation claim")
    return VerifiedToken(
        claims=TokenClaims(
            subject=claims["sub"],
            organisation_id=org,
            scopes=frozenset(scope.split()),
            token_id=claims["jti"],
            expires_at=claims["exp"],
            certificate=bound_to,
        ),
        kid=kid,
        not_before=claims["nbf"],
        issued_at=claims["iat"],
    )
