"""The checkpoint key can be rotated: checkpoints signed before keep verifying under the
key that signed them, through the published verifier-key history; new ones are signed
with the new key by the running service, without a restart; a retired key's signature
dated after its retirement counts for nothing, and the sequencer never makes one.

Real Ed25519 keys, real sealing by the service's sequencer, the `cpr` command (in a
worker thread, as tests/test_cli.py) and real HTTP, on SQLite and PostgreSQL.
"""

import asyncio
import base64
import json
import os
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI
from sqlalchemy import func, select

from app.admin.service import create_organisation, create_user
from app.audit import chain
from app.audit.chain import (
    Checkpoint,
    CheckpointSigner,
    CheckpointVerifier,
    SigningRefused,
    UnknownKeyError,
    rotate_key,
)
from app.audit.models import AuditCheckpoint, AuditEvent
from app.audit.sealing import Sequencer, verifier_keys_path
from app.audit.verify import verify_log
from app.auth.keys import ensure_signing_key
from app.cli import main
from app.config import Settings, get_settings
from app.identity.models import OrganisationKind, UserRole
from app.main import create_app
from tests.conftest import World

VKEY = re.compile(r"verifier key \(give this to auditors\): (\S+)\n")
DELAY = timedelta(seconds=30)


@dataclass
class Service:
    """A running service on a database of its own: its sequencer (driven by the test),
    its HTTP API as a custodian, and the `cpr` command pointed at it."""

    app: FastAPI
    settings: Settings
    http: httpx.AsyncClient
    custodian: dict[str, str]

    @property
    def sequencer(self) -> Sequencer:
        sequencer: Sequencer = self.app.state.sequencer
        return sequencer

    @property
    def key_path(self) -> Path:
        return self.settings.checkpoint_key_path

    @property
    def history_path(self) -> Path:
        return verifier_keys_path(self.settings)

    async def write(self, count: int) -> None:
        async with self.app.state.sessionmaker() as session:
            for n in range(count):
                session.add(
                    AuditEvent(
                        id=uuid.uuid4(),
                        event_type="lookup",
                        outcome="not_on_plan",
                        principal="client:test",
                        reason=f"enquiry {n}",
                        query={"nhs_number": "9990000018"},
                    )
                )
            await session.commit()

    async def count(self, model: type[AuditEvent] | type[AuditCheckpoint]) -> int:
        async with self.app.state.sessionmaker() as session:
            return int(await session.scalar(select(func.count()).select_from(model)) or 0)

    async def checkpoint(self) -> AuditCheckpoint:
        _, signed = await self.sequencer.run_once(checkpoint=True)
        assert signed is not None
        return signed

    async def verify_over_http(self) -> dict[str, Any]:
        response = await self.http.get("/v1/audit/verify", headers=self.custodian)
        assert response.status_code == 200, response.text
        report: dict[str, Any] = response.json()
        return report

    async def cpr(self, *args: str) -> Result:
        return await asyncio.to_thread(CliRunner().invoke, main, list(args))

    async def rotate(self, overlap: int = 0) -> str:
        """`cpr audit keygen --rotate`; the new verifier key."""
        result = await self.cpr("audit", "keygen", "--rotate", "--overlap-seconds", str(overlap))
        assert result.exit_code == 0, result.output
        match = VKEY.search(result.stdout)
        assert match, result.output
        return match.group(1)


async def _custodian_headers(
    app: FastAPI, settings: Settings, http: httpx.AsyncClient
) -> dict[str, str]:
    async with app.state.sessionmaker() as session:
        await ensure_signing_key(session, settings.key_dir, actor="test:setup")
        authority = create_organisation(
            session,
            actor="test:setup",
            kind=OrganisationKind.local_authority,
            name=f"Test authority {uuid.uuid4().hex[:6]}",
            ods_code=None,
            contact_name="Safeguarding desk",
            contact_phone="020 7946 0101",
        )
        await session.flush()
        username, password = f"custodian-{uuid.uuid4().hex[:6]}", secrets.token_urlsafe(12)
        create_user(
            session,
            actor="test:setup",
            organisation=authority,
            username=username,
            full_name="Test custodian",
            role=UserRole.custodian,
            password=password,
        )
        await session.commit()
    issued = await http.post(
        "/oauth/token", data={"grant_type": "password", "username": username, "password": password}
    )
    assert issued.status_code == 200, issued.text
    return {"Authorization": f"Bearer {issued.json()['access_token']}"}


@pytest.fixture
async def service(
    fresh_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Service]:
    # The sequencer runs in the service (so the service must pick the new key up), but
    # its background round comes once, at the start: the test drives the rounds.
    settings = fresh_settings.model_copy(
        update={"sealing_enabled": True, "sealing_interval_seconds": 3600.0}
    )
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    if settings.database_role is not None:
        monkeypatch.setenv("CPR_DATABASE_ROLE", settings.database_role)
    monkeypatch.setenv("CPR_ENVIRONMENT", settings.environment.value)
    monkeypatch.setenv("CPR_KEY_DIR", str(settings.key_dir))
    monkeypatch.setenv("CPR_CHECKPOINT_KEY_PATH", str(settings.checkpoint_key_path))
    monkeypatch.setenv("CPR_CHECKPOINT_DIR", str(settings.checkpoint_dir))
    get_settings.cache_clear()
    app = create_app(settings)
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
                headers = await _custodian_headers(app, settings, http)
                yield Service(app, settings, http, headers)
    finally:
        get_settings.cache_clear()


def _private(pem: bytes) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, Ed25519PrivateKey)
    return key


def _public(pem: bytes) -> bytes:
    return (
        _private(pem)
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )


def _key_hash(note: str) -> str:
    """The key hash a signed note's signature names."""
    return base64.b64decode(note.rstrip("\n").rsplit(" ", 1)[1])[:4].hex()


def _replace_file(path: Path, data: bytes) -> None:
    """As a secret update does: a new file renamed over the old."""
    aside = path.with_name(f".{path.name}.test")
    aside.write_bytes(data)
    os.replace(aside, path)


async def test_checkpoints_signed_before_a_rotation_keep_verifying_under_the_old_key(
    service: Service, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await service.write(3)
    before = await service.checkpoint()
    old_vkey = service.sequencer.signer.vkey

    new_vkey = await service.rotate()
    assert new_vkey != old_vkey
    await service.write(2)
    after = await service.checkpoint()  # the running service, not restarted

    assert CheckpointVerifier.from_vkey(old_vkey).open(before.note).size == before.size
    assert CheckpointVerifier.from_vkey(new_vkey).open(after.note).size == after.size
    with pytest.raises(UnknownKeyError):
        CheckpointVerifier.from_vkey(old_vkey).open(after.note)

    report = await service.verify_over_http()
    assert report["ok"] is True, report["findings"]
    assert report["size"] == after.size
    # every stored checkpoint (old key and new) and the copy outside the database
    assert report["checkpoints_checked"] == await service.count(AuditCheckpoint) + 1
    latest = await service.http.get("/v1/audit/checkpoints/latest", headers=service.custodian)
    assert latest.json()["verifier_key"] == new_vkey

    verified = await service.cpr("audit", "verify")
    assert verified.exit_code == 0, verified.output

    # The history is public material: an auditor verifies with it alone, no key at hand.
    published = tmp_path / "published-verifier-keys.json"
    published.write_bytes(service.history_path.read_bytes())
    assert b"PRIVATE" not in published.read_bytes()
    document = json.loads(published.read_text())
    old, new = document["keys"]
    assert (old["verifier_key"], new["verifier_key"]) == (old_vkey, new_vkey)
    assert old["retired_at"] == new["valid_from"]
    assert new["retired_at"] is None
    monkeypatch.setenv("CPR_CHECKPOINT_KEY_PATH", str(tmp_path / "no-key-here.pem"))
    get_settings.cache_clear()
    audited = await service.cpr(
        "audit", "verify", "--verifier-keys", str(published), "--verifier-key", old_vkey
    )
    assert audited.exit_code == 0, audited.output
    assert "OK: every event, hash and checkpoint verifies" in audited.stdout

    # The old private key is gone: the key file holds the new one, and nothing is left aside.
    assert _public(service.key_path.read_bytes()) == (
        CheckpointVerifier.from_vkey(new_vkey).current.public_key
    )
    leftovers = [
        p.name
        for p in service.key_path.parent.iterdir()
        if p.name.startswith(".") or p.name.endswith(".next")
    ]
    assert leftovers == []


async def test_a_checkpoint_by_the_retired_key_dated_after_its_retirement_is_refused(
    service: Service, tmp_path: Path
) -> None:
    await service.write(2)
    await service.checkpoint()
    stolen = _private(service.key_path.read_bytes())  # a copy someone kept
    await service.rotate()
    await service.write(2)
    signed = await service.checkpoint()
    retired = CheckpointVerifier.from_file(service.history_path).keys[0]
    assert retired.retired_at is not None

    # The true size and head: the only thing wrong is when the retired key signed it.
    forged = CheckpointSigner(stolen, service.settings.audit_log_origin).sign(
        Checkpoint(
            service.settings.audit_log_origin,
            signed.size,
            bytes.fromhex(signed.head_hash),
            retired.retired_at + 60,
        )
    )
    held = tmp_path / "held.txt"
    held.write_text(forged)
    result = await service.cpr("audit", "verify", "--checkpoint", str(held))
    assert result.exit_code == 1, result.output
    assert re.search(
        r"FAILED retired_key: held checkpoint: signed at .* retired at ", result.stdout
    )

    # Planted in the checkpoint directory (its latest.txt, the one copy verification reads
    # there), the verify endpoint refuses it too.
    (service.settings.checkpoint_dir / "latest.txt").write_text(forged)
    report = await service.verify_over_http()
    assert [f["kind"] for f in report["findings"]] == ["retired_key"]


async def test_a_checkpoint_by_a_key_outside_the_history_is_refused(
    service: Service, tmp_path: Path
) -> None:
    await service.write(2)
    await service.checkpoint()
    await service.rotate()
    await service.write(1)
    signed = await service.checkpoint()
    stranger = CheckpointSigner(Ed25519PrivateKey.generate(), service.settings.audit_log_origin)
    note = stranger.sign(
        Checkpoint(
            service.settings.audit_log_origin,
            signed.size,
            bytes.fromhex(signed.head_hash),
            int(time.time()),
        )
    )
    held = tmp_path / "held.txt"
    held.write_text(note)
    result = await service.cpr(
        "audit", "verify", "--checkpoint", str(held), "--verifier-keys", str(service.history_path)
    )
    assert result.exit_code == 1, result.output
    assert (
        "FAILED forged_checkpoint: held checkpoint: checkpoint carries no signature by a key "
        "of the verifier-key history" in result.stdout
    )

    # Nor may an auditor be handed a history that does not hold the key they were given.
    pinned = await service.cpr(
        "audit",
        "verify",
        "--verifier-keys",
        str(service.history_path),
        "--verifier-key",
        stranger.vkey,
    )
    assert pinned.exit_code == 1
    assert "does not contain the key" in pinned.output


async def test_a_key_rotated_twice_leaves_every_checkpoint_verifiable(
    service: Service, tmp_path: Path
) -> None:
    signed, vkeys = [], [service.sequencer.signer.vkey]
    for _ in range(2):
        await service.write(2)
        signed.append(await service.checkpoint())
        vkeys.append(await service.rotate())
    await service.write(2)
    signed.append(await service.checkpoint())

    history = CheckpointVerifier.from_file(service.history_path)  # endorsements checked
    assert [key.vkey for key in history.keys] == vkeys
    first, second, third = history.keys
    assert first.retired_at == second.valid_from
    assert second.retired_at == third.valid_from
    for row, vkey in zip(signed, vkeys, strict=True):
        assert CheckpointVerifier.from_vkey(vkey).open(row.note).size == row.size
        assert history.open(row.note).size == row.size
    assert [_key_hash(row.note) for row in signed] == [key.key_hash.hex() for key in history.keys]

    report = await service.verify_over_http()
    assert report["ok"] is True, report["findings"]
    assert report["checkpoints_checked"] == await service.count(AuditCheckpoint) + 1
    pinned = await service.cpr(
        "audit", "verify", "--verifier-keys", str(service.history_path), "--verifier-key", vkeys[0]
    )
    assert pinned.exit_code == 0, pinned.output

    # Whoever can write the published history but holds no retiring key cannot stretch a
    # retired key's validity: each hand-over is signed by the key it retires.
    document = json.loads(service.history_path.read_text())
    document["keys"][1]["retired_at"] += 3600
    stretched = tmp_path / "stretched.json"
    stretched.write_text(json.dumps(document))
    refused = await service.cpr("audit", "verify", "--verifier-keys", str(stretched))
    assert refused.exit_code == 1
    assert "is not endorsed by the key it succeeded" in refused.output


async def test_the_sequencer_never_signs_with_a_key_the_history_retired(service: Service) -> None:
    await service.write(2)
    await service.checkpoint()
    old_pem = service.key_path.read_bytes()
    history, _ = rotate_key(
        service.key_path, service.settings.audit_log_origin, service.history_path, overlap=1
    )
    new_pem = service.key_path.read_bytes()
    _replace_file(service.key_path, old_pem)  # the secret still holds the old key
    retired_at = history.keys[0].retired_at
    assert retired_at is not None
    await asyncio.sleep(retired_at + 1 - time.time())  # the overlap ends

    await service.write(3)
    with pytest.raises(SigningRefused, match="retired at"):
        await service.sequencer.run_once(checkpoint=True)
    problem = service.sequencer.checkpoint_copy_problem()
    assert problem is not None
    assert "No audit checkpoint can be signed" in problem
    # The background round seals all the same, and says so without failing.
    sealed, none = await service.sequencer.run_once()
    assert none is None
    async with service.app.state.sessionmaker() as session:
        report = await verify_log(session, service.sequencer.signer.verifier, sealing_delay=DELAY)
    assert report.ok, report.findings
    assert sealed.size == report.size == await service.count(AuditEvent)

    # A sequencer starting with that key refuses to start.
    with pytest.raises(SigningRefused):
        Sequencer(
            service.app.state.sessionmaker,
            CheckpointSigner.from_file(
                service.key_path, service.settings.audit_log_origin, create=False
            ),
            service.settings,
        )

    # Once the new key arrives, the running sequencer signs with it.
    _replace_file(service.key_path, new_pem)
    signed = await service.checkpoint()
    assert service.sequencer.checkpoint_copy_problem() is None
    assert CheckpointVerifier.from_file(service.history_path).current.vkey == (
        service.sequencer.signer.vkey
    )
    assert (await service.verify_over_http())["ok"] is True
    assert CheckpointVerifier.from_vkey(service.sequencer.signer.vkey).open(signed.note)


async def test_rotation_refuses_a_key_and_history_that_disagree(service: Service) -> None:
    await service.rotate()
    history = service.history_path.read_bytes()
    stranger = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _replace_file(service.key_path, stranger)
    result = await service.cpr("audit", "keygen", "--rotate")
    assert result.exit_code == 1
    assert "they disagree, so nothing was changed" in result.output
    assert service.key_path.read_bytes() == stranger
    assert service.history_path.read_bytes() == history
    assert not service.key_path.with_name(f"{service.key_path.name}.next").exists()


async def test_an_interrupted_rotation_is_finished_by_running_it_again(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    await service.write(1)
    await service.checkpoint()
    replace = os.replace

    def crash_before_the_key(source: Any, target: Any) -> None:
        if str(source).endswith(".next"):
            raise OSError("power cut")
        replace(source, target)

    monkeypatch.setattr(chain.os, "replace", crash_before_the_key)
    with pytest.raises(OSError, match="power cut"):
        rotate_key(
            service.key_path, service.settings.audit_log_origin, service.history_path, overlap=60
        )
    monkeypatch.setattr(chain.os, "replace", replace)

    # Meanwhile the history names the new key and the old one still signs (its overlap).
    await service.write(1)
    await service.checkpoint()
    result = await service.cpr("audit", "keygen", "--rotate")
    assert result.exit_code == 0, result.output
    assert "finished the interrupted rotation" in result.stdout
    new_vkey = VKEY.search(result.stdout)
    assert new_vkey
    await service.write(1)
    signed = await service.checkpoint()
    assert CheckpointVerifier.from_vkey(new_vkey.group(1)).open(signed.note)
    assert (await service.verify_over_http())["ok"] is True


async def test_the_operator_verifies_with_the_command_not_the_api(
    client: httpx.AsyncClient, world: World
) -> None:
    """docs/audit-log.md: GET /v1/audit/verify is the custodians'; the operator's token is
    refused there (the operator runs `cpr audit verify`)."""
    response = await client.get("/v1/audit/verify", headers=world["operator"].headers)
    assert response.status_code == 403, response.text
