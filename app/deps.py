"""What a route may ask for by type: the settings, the signing keys, a database session.

One neutral place for the ``Annotated`` dependency aliases, so that a feature reads them
without importing another feature (``app/auth/principals.py`` has the caller's own).
"""

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.auth.keys import KeyRing
from app.config import Settings


# async: FastAPI would run a plain function in a worker thread on every request.
async def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


async def get_keyring(request: Request) -> KeyRing:
    return request.app.state.keyring


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """A session per request. Endpoints commit themselves, before they return:
    code after this ``yield`` runs after the response has been sent."""
    sessionmaker: async_sessionmaker[AsyncSession] = request.app.state.sessionmaker
    async with sessionmaker() as session:
        yield session


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
KeyRingDep = Annotated[KeyRing, Depends(get_keyring)]
SessionDep = Annotated[AsyncSession, Depends(get_session)]
