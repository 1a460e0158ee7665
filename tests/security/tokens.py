"""Building access tokens for attack tests (a helper module, not tests).

``mint`` signs with python-jose, by default with the service's real current
signing key, so a token differs from a good one only by what a test changes.
``raw_token`` and ``hs256_token`` assemble ``header.payload.signature`` by hand,
for the shapes jose refuses to produce (``alg: none``, an HMAC keyed with a
public key).

The real key is found the way the service finds it (``KeyRing.signer``): the
newest key in ``signing_keys`` that is not retired and whose private PEM is in
``settings.key_dir``. Picking the newest file by mtime would be wrong here:
the Ed25519 checkpoint key lives in the same directory, and other tests create
keys that are already retired.
"""

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jose import jwt
from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.auth.models import AccessToken, SigningKey
from app.config import Settings
from tests.conftest import Principal

LOOKUP_SCOPE = "register:lookup"


@dataclass(frozen=True)
class KeyFile:
    """A signing key: its id and its private half (PEM)."""

    kid: str
    pem: str

    @property
    def public_pem(self) -> str:
        private = serialization.load_pem_private_key(self.pem.encode(), password=None)
        return (
            private.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )


async def current_key(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> KeyFile:
    """The key the service signs new tokens with right now."""
    now = datetime.now(UTC)
    async with sessionmaker() as session:
        keys = (
            await session.scalars(
                select(SigningKey)
                .where(SigningKey.algorithm == "ES256")
                .where(or_(SigningKey.retires_at.is_(None), SigningKey.retires_at > now))
                .order_by(SigningKey.created_at.desc())
            )
        ).all()
    for key in keys:
        path = settings.key_dir / f"{key.kid}.pem"
        if path.exists():
            return KeyFile(kid=key.kid, pem=path.read_text())
    raise RuntimeError(f"no current signing key with a private half in {settings.key_dir}")


def fresh_ec_pem() -> str:
    """A P-256 private key nobody trusts: the forger's key."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def fresh_rsa_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def claims(
    settings: Settings,
    *,
    principal: Principal | None = None,
    drop: Iterable[str] = (),
    **overrides: Any,
) -> dict[str, Any]:
    """The claims the service itself would issue for ``principal``, with changes.

    ``overrides`` replace claims (a value of None is kept as JSON null; use
    ``drop`` to leave a claim out).
    """
    now = int(time.time())
    body: dict[str, Any] = {
        "iss": settings.token_issuer,
        "aud": settings.token_audience,
        "scope": LOOKUP_SCOPE,
        "iat": now,
        "nbf": now,
        "exp": now + min(600, settings.token_ttl_seconds),
        "jti": secrets.token_urlsafe(16),
    }
    if principal is not None:
        body["sub"] = principal.subject
        body["org"] = str(principal.organisation.id)
    body.update(overrides)
    for name in drop:
        body.pop(name, None)
    return body


def mint(
    settings: Settings,
    *,
    key: KeyFile,
    key_pem: str | None = None,
    kid: str | None = None,
    alg: str = "ES256",
    principal: Principal | None = None,
    headers: Mapping[str, Any] | None = None,
    drop: Iterable[str] = (),
    **overrides: Any,
) -> str:
    """A token signed by python-jose.

    ``key`` is the real current key (see ``current_key``); ``key_pem`` signs with
    another private key instead (a forgery) and ``kid`` names another key id in
    the header. ``alg`` is what jose signs with (ES256, RS256, ...).
    """
    header = {"kid": kid if kid is not None else key.kid, "typ": "at+jwt", **(headers or {})}
    body = claims(settings, principal=principal, drop=drop, **overrides)
    return jwt.encode(body, key_pem if key_pem is not None else key.pem, alg, headers=header)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_json(value: Any) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def raw_token(header: Mapping[str, Any], payload: Mapping[str, Any], signature: bytes = b"") -> str:
    """``header.payload.signature`` with whatever header and signature bytes given."""
    return f"{b64url_json(header)}.{b64url_json(payload)}.{b64url(signature)}"


def hs256_token(header: Mapping[str, Any], payload: Mapping[str, Any], secret: bytes) -> str:
    """An HS256 token keyed with ``secret`` (e.g. the server's *public* key), built by
    hand: jose refuses to use a PEM public key as an HMAC secret."""
    signing_input = f"{b64url_json({**header, 'alg': 'HS256'})}.{b64url_json(payload)}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(mac)}"


def replace_payload(token: str, payload: Mapping[str, Any]) -> str:
    """The token with its payload swapped and its header and signature kept."""
    header, _, signature = token.split(".")
    return f"{header}.{b64url_json(payload)}.{signature}"


def unverified_claims(token: str) -> dict[str, Any]:
    return jwt.get_unverified_claims(token)


async def record_as_issued(
    sessionmaker: async_sessionmaker[AsyncSession], token_claims: Mapping[str, Any]
) -> None:
    """Record the token's ``jti`` as one the service issued, as /oauth/token would.

    Then a refusal can only come from what is wrong with the token itself, not
    from the jti check in ``app.auth.principals``.
    """
    jti, subject = token_claims.get("jti"), token_claims.get("sub")
    if not isinstance(jti, str) or not isinstance(subject, str) or len(jti) > 64:
        return
    async with sessionmaker() as session:
        if await session.get(AccessToken, jti) is None:
            session.add(
                AccessToken(
                    jti=jti,
                    subject=subject[:100],
                    expires_at=datetime.now(UTC) + timedelta(minutes=15),
                )
            )
            await session.commit()
