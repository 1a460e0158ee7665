"""Signing keys: ES256 private keys in files under ``key_dir``, public JWKs in the database.

Every replica reads the key set from the database, so a rotation made anywhere
is seen everywhere within ``REFRESH_SECONDS``; the private key files are shared
as a mounted secret (deploy/). Nothing here lives only in one process.
"""

import asyncio
import os
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jose import jwk
from jose.backends.base import Key
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.audit.models import AuditEvent
from app.auth.models import SigningKey
from app.db import READ_ONLY_OPTION, utcnow

ALGORITHM = "ES256"
REFRESH_SECONDS = 30.0


def _private_key_path(key_dir: Path, kid: str) -> Path:
    return key_dir / f"{kid}.pem"


def create_signing_key(session: AsyncSession, key_dir: Path) -> SigningKey:
    """Make a new ES256 key: private half to a 0600 file, public half to the session."""
    kid = f"{utcnow():%Y%m%d}-{secrets.token_hex(4)}"
    private_key = ec.generate_private_key(ec.SECP256R1())
    pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = _private_key_path(key_dir, kid)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(pem)
    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    public_jwk = jwk.construct(public_pem.decode(), ALGORITHM).to_dict()
    public_jwk.update(kid=kid, use="sig", alg=ALGORITHM)
    key = SigningKey(kid=kid, algorithm=ALGORITHM, public_jwk=public_jwk, retires_at=None)
    session.add(key)
    return key


@dataclass(frozen=True)
class TokenClaims:
    subject: str
    organisation_id: str
    scopes: frozenset[str]
    token_id: str
    expires_at: int
    # RFC 8705: the SHA-256 thumbprint of the client certificate the token is bound to.
    certificate: str | None = None


@dataclass(frozen=True)
class VerifiedToken:
    """A token whose signature (by ``kid``) and fixed claims were verified
    (app/auth/tokens.py); its time claims are checked again on every use."""

    claims: TokenClaims
    kid: str
    not_before: int
    issued_at: int

    @property
    def expires_at(self) -> int:
        return self.claims.expires_at


# Verified tokens kept per process: a client reuses its token for up to 15 minutes.
VERIFIED_TOKENS_MAX = 4096


@dataclass(frozen=True)
class _PublicKey:
    jwk: dict[str, Any]
    verifier: Key
    retires_at: datetime | None
    created_at: datetime


class KeyRing:
    """The key set as this process last read it from the database.

    Verification keys are built once per refresh, not per request; an unknown
    ``kid`` forces an early refresh so a key rotated elsewhere is picked up.
    """

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], key_dir: Path) -> None:
        self._sessionmaker = sessionmaker
        self._key_dir = key_dir
        self._keys: dict[str, _PublicKey] = {}
        self._loaded_at = -REFRESH_SECONDS
        self._private: dict[str, Key] = {}
        self._lock = asyncio.Lock()
        # (token, issuer, audience, lifetime) -> what verifying it established.
        self.verified_tokens: dict[tuple[str, str, str, int], VerifiedToken] = {}

    def remember_token(self, key: tuple[str, str, str, int], verified: VerifiedToken) -> None:
        """Keep a verified token, within VERIFIED_TOKENS_MAX: when full, expired tokens
        go first, and if none has expired, all of them."""
        if len(self.verified_tokens) >= VERIFIED_TOKENS_MAX:
            now = time.time()
            live = {k: v for k, v in self.verified_tokens.items() if v.expires_at > now}
            self.verified_tokens = live if len(live) < VERIFIED_TOKENS_MAX else {}
        self.verified_tokens[key] = verified

    async def _refresh(self, *, force: bool = False) -> None:
        async with self._lock:
            now = time.monotonic()
            # A forced refresh (unknown kid) is still limited to one a second.
            if now - self._loaded_at < (1.0 if force else REFRESH_SECONDS):
                return
            async with self._sessionmaker() as session:
                await session.connection(execution_options={READ_ONLY_OPTION: True})
                rows = (await session.scalars(select(SigningKey))).all()
            self._keys = {
                row.kid: _PublicKey(
                    jwk=row.public_jwk,
                    verifier=jwk.construct(row.public_jwk, ALGORITHM),
                    retires_at=row.retires_at,
                    created_at=row.created_at,
                )
                for row in rows
                if row.algorithm == ALGORITHM
            }
            self._loaded_at = now

    async def _current(self) -> dict[str, _PublicKey]:
        if time.monotonic() - self._loaded_at >= REFRESH_SECONDS:
            await self._refresh()
        now = utcnow()
        return {
            kid: key
            for kid, key in self._keys.items()
            if key.retires_at is None or key.retires_at > now
        }

    async def verifier(self, kid: str) -> Key | None:
        """The public key for ``kid`` if it is current, else None."""
        keys = await self._current()
        if kid not in keys:
            await self._refresh(force=True)
            keys = await self._current()
        key = keys.get(kid)
        return key.verifier if key else None

    async def public_jwks(self) -> list[dict[str, Any]]:
        return [key.jwk for key in (await self._current()).values()]

    async def signer(self) -> tuple[str, Key]:
        """The newest current key whose private half this process can read."""
        keys = await self._current()
        for kid, _ in sorted(keys.items(), key=lambda item: item[1].created_at, reverse=True):
            if kid not in self._private:
                path = _private_key_path(self._key_dir, kid)
                if not path.exists():
                    continue
                self._private[kid] = jwk.construct(path.read_text(), ALGORITHM)
            return kid, self._private[kid]
        raise RuntimeError(f"no current signing key with a private key in {self._key_dir}")


async def rotate_signing_key(
    session: AsyncSession, key_dir: Path, *, overlap_seconds: int, actor: str
) -> SigningKey:
    """Add a new current key; keys current until now retire after the overlap window,
    long enough for every token they signed to expire."""
    retires_at = utcnow() + timedelta(seconds=overlap_seconds)
    retired = []
    for key in await session.scalars(select(SigningKey).where(SigningKey.retires_at.is_(None))):
        key.retires_at = retires_at
        retired.append(key.kid)
    key = create_signing_key(session, key_dir)
    session.add(
        AuditEvent(
            event_type="keys.rotated",
            principal=actor,
            outcome="ok",
            detail={"new_kid": key.kid, "retiring": retired, "retires_at": retires_at.isoformat()},
        )
    )
    return key


async def ensure_signing_key(session: AsyncSession, key_dir: Path, *, actor: str) -> None:
    """Create a key when no current key has its private half in ``key_dir``."""
    current = await session.scalars(select(SigningKey).where(SigningKey.retires_at.is_(None)))
    if not any(_private_key_path(key_dir, key.kid).exists() for key in current):
        await rotate_signing_key(session, key_dir, overlap_seconds=0, actor=actor)
