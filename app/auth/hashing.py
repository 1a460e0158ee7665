"""Slow salted hashes for passwords and client secrets (argon2 via passlib).

The only module that knows the hashing library.
"""

import asyncio

from passlib.context import CryptContext

_context = CryptContext(schemes=["argon2"], deprecated="auto")
# Verified when the account does not exist, so the answer takes as long either way.
_DUMMY_HASH = _context.hash("cp-register timing equaliser")


def hash_secret(secret: str) -> str:
    return _context.hash(secret)


async def verify_secret(secret: str, secret_hash: str | None) -> bool:
    """Check a secret; with no hash, spend the same time and fail.

    In a thread: a check costs about 100 ms of CPU (argon2 releases the GIL), which on
    the event loop would stall every other request of the worker, and with them any
    transaction one of them holds open (on SQLite, the write lock every lookup needs).
    """
    return await asyncio.to_thread(_verify, secret, secret_hash)


def _verify(secret: str, secret_hash: str | None) -> bool:
    if secret_hash is None:
        _context.verify(secret, _DUMMY_HASH)
        return False
    return _context.verify(secret, secret_hash)
