"""Settings, read once from the environment (prefix ``CPR_``, plus ``DATABASE_URL``)."""

from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Self

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url

PLACEHOLDER_SECRETS = frozenset(
    {"changeme", "change-me", "secret", "password", "postgres", "example"}
)


class Environment(StrEnum):
    development = "development"
    test = "test"
    production = "production"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CPR_", extra="ignore")

    environment: Environment = Environment.development
    database_url: str = Field(
        default="sqlite+aiosqlite:///var/cpr.sqlite3",
        validation_alias=AliasChoices("DATABASE_URL", "CPR_DATABASE_URL"),
    )
    # Per worker. No overflow: connections opened and closed under load cost
    # PostgreSQL a backend each; requests wait for a pooled one instead.
    database_pool_size: int = 20
    # PostgreSQL: the role the service acts as, e.g. cpr_app, which has only INSERT and
    # SELECT on the audit log. Given to the server when each connection opens (a
    # session default that no ROLLBACK or RESET undoes) and checked before the
    # connection is used. Required in production. Migrations ignore it.
    database_role: Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_]*$")] | None = None

    # Every wait on the database is bounded (seconds): a database that is down,
    # unreachable or hung gives 503 within about request_timeout_seconds, never a hang.
    database_connect_timeout_seconds: Annotated[float, Field(gt=0)] = 1.5
    database_pool_timeout_seconds: Annotated[float, Field(gt=0)] = 1.0
    # statement_timeout on the server, and the driver's own command timeout (a little
    # longer) for a server that does not answer at all.
    database_statement_timeout_seconds: Annotated[float, Field(gt=0)] = 2.0
    database_lock_timeout_seconds: Annotated[float, Field(gt=0)] = 1.0
    # A transaction left open (a bug, a client gone) is ended by the server.
    database_idle_in_transaction_timeout_seconds: Annotated[float, Field(gt=0)] = 10.0
    # Any request not answered within this is answered 503 (nothing disclosed).
    request_timeout_seconds: Annotated[float, Field(gt=0)] = 2.0
    # The deadline of the few requests that are long by nature: a register import
    # (up to 50,000 rows read, checked and written) and a verification of the whole log.
    long_request_timeout_seconds: Annotated[float, Field(gt=0)] = 300.0
    # A sign-in checks a slow hash (argon2, on purpose) that queues for the CPU under
    # load; its database waits are bounded each as everywhere else.
    sign_in_timeout_seconds: Annotated[float, Field(gt=0)] = 5.0
    # Stopping: the final seal and closing the pool, however the database is.
    shutdown_timeout_seconds: Annotated[float, Field(gt=0)] = 10.0

    # Tokens. The issuer and audience are checked on every request.
    token_issuer: str = "https://cp-register.local"  # noqa: S105
    token_audience: str = "cp-register"  # noqa: S105
    token_ttl_seconds: Annotated[int, Field(gt=0, le=900)] = 900
    token_leeway_seconds: Annotated[int, Field(ge=0, le=60)] = 30
    # The `aud` a client assertion (RFC 7523 private_key_jwt) must name: this token
    # endpoint's public URL. Unset: token_issuer + "/oauth/token".
    token_endpoint_url: str | None = None
    # Private signing keys live here, outside the database (one PEM file per key id).
    key_dir: Path = Path("var/keys")

    max_body_bytes: int = 64 * 1024
    # A register import file (`POST /v1/register/imports`): 50,000 rows is about 10 MiB.
    import_max_bytes: int = 32 * 1024 * 1024

    # Volume limits on lookups (README, "Security model", check 7), counted over sliding windows in
    # the audit log, which every replica shares.
    lookup_limit_per_client: int = 300
    lookup_client_window_seconds: int = 60
    lookup_limit_per_enquirer: int = 30
    lookup_enquirer_window_seconds: int = 900
    # Per client, whoever it names as enquirer: answers referred to a custodian (an NHS
    # number whose entry disagrees with the names or date of birth sent, or several
    # entries) within the window. Past it, 429 until the oldest leaves the window.
    lookup_probing_limit_per_client: Annotated[int, Field(gt=0)] = 20
    lookup_probing_window_seconds: Annotated[int, Field(gt=0)] = 3600
    # Count and write each lookup under a lock per client and per enquirer, so that the
    # limits hold exactly under any concurrency. Off only to measure what it costs.
    lookup_limits_serialised: bool = True
    # Sign-in lockout: after this many failures, each further one doubles the wait.
    login_failures_before_lockout: int = 5
    login_lockout_base_seconds: int = 60
    login_lockout_max_seconds: int = 3600
    # Failures are counted per account and source address (the limit above): one
    # address failing locks out only itself. Across all addresses the account is
    # locked after a higher count (a stranger spreading guesses over many addresses),
    # each further failure again doubling the wait, from a longer base.
    login_account_failures_before_lockout: Annotated[int, Field(gt=0)] = 50
    login_account_lockout_base_seconds: Annotated[int, Field(gt=0)] = 300
    login_account_lockout_max_seconds: Annotated[int, Field(gt=0)] = 3600

    # Mutual TLS at the front (app/auth/certificates.py, deploy/): the header in which
    # the front passes the client certificate it verified (URL-escaped PEM), and the one
    # with its verification result. Unset: no certificate is read and no token bound.
    # Set it only behind a front that overwrites both headers on every request.
    client_cert_header: str | None = None
    client_verify_header: str = "X-Client-Verify"

    # Whom a reference point calls when the child is not on a plan.
    duty_contact_name: str = "cp-register duty desk (demo)"
    duty_contact_phone: str = "020 7946 0999"

    # The tamper-evident log (docs/audit-log.md). The Ed25519 key signs checkpoints;
    # each checkpoint is also written to checkpoint_dir, outside the database.
    audit_log_origin: str = "cp-register.local/audit"
    checkpoint_key_path: Path = Path("var/keys/audit-checkpoint.ed25519.pem")
    # The checkpoint key's verifier-key history (public keys with their validity, written
    # by `cpr audit keygen [--rotate]`): what checkpoints are verified with, and what the
    # sequencer may sign with. None: beside the key, <key stem>.verifiers.json.
    checkpoint_verifier_keys_path: Path | None = None
    checkpoint_dir: Path = Path("var/checkpoints")
    sealing_enabled: bool = True
    sealing_interval_seconds: Annotated[float, Field(gt=0)] = 0.5
    # Events read per statement: each read is decoded in one go on the worker's event
    # loop, so a small batch keeps the lookups sharing that loop from waiting on it.
    sealing_batch_size: Annotated[int, Field(gt=0)] = 250
    # At most one checkpoint per interval for the whole service (however many sequencers),
    # and none while the head has not moved: a year is at most 525,600 checkpoints, which
    # the full verification checks in about a minute. Shorter narrows the tail that no
    # signed checkpoint covers yet; one can always be asked for (cpr audit checkpoint).
    checkpoint_interval_seconds: Annotated[float, Field(gt=0)] = 60.0
    # The verifier reports any event still unsealed this long after it was written.
    sealing_delay_seconds: Annotated[int, Field(gt=0)] = 30
    # Retention (docs/audit-log.md, "Retention"): `cpr audit archive` deletes the segment
    # it wrote from the database only when its every event is older than this many days,
    # and only when run as the schema owner. None: nothing is ever deleted.
    audit_retention_days: Annotated[int, Field(gt=0)] | None = None
    # `cpr register purge-ended` (docs/audit-log.md, "Retention") deletes register entries
    # that ended more than this many days ago, with their versions, run as the schema
    # owner. None: no entry ever leaves the register.
    register_ended_retention_days: Annotated[int, Field(gt=0)] | None = None

    # Where the background work (sealing, checkpoints, notifications, webhooks) runs:
    # in each API process (the embedded default, `make run`), or only in `cpr worker`,
    # one active at a time across its replicas (production: CPR_BACKGROUND_IN_API=false).
    background_in_api: bool = True
    # `cpr worker`'s probes: GET /livez and /readyz on this address.
    worker_health_host: str = "127.0.0.1"
    worker_health_port: Annotated[int, Field(ge=1, le=65535)] = 8081
    # The active worker holds a PostgreSQL advisory lock on a connection of its own and
    # checks it this often; the database ends that session after
    # worker_leader_timeout_seconds without a check (a frozen or cut-off worker), which
    # frees the lock for a standby. Every sealing round also takes its own lock, so two
    # workers that both believe they are active still seal one chain.
    worker_leader_check_seconds: Annotated[float, Field(gt=0)] = 1.0
    worker_leader_timeout_seconds: Annotated[float, Field(gt=0)] = 10.0

    # Custodians' alerts (GET /v1/audit/alerts), computed from the log over the period
    # asked for (by default the last alert_lookback_hours). Many not-found answers to one
    # enquirer within the window suggests enumeration; one child looked up by several
    # organisations within days suggests a child presenting at different sites.
    alert_lookback_hours: Annotated[int, Field(gt=0)] = 24
    alert_not_found_threshold: Annotated[int, Field(gt=0)] = 10
    alert_not_found_window_minutes: Annotated[int, Field(gt=0)] = 60
    alert_repeat_sites_threshold: Annotated[int, Field(gt=1)] = 2
    alert_repeat_days: Annotated[int, Field(gt=0)] = 7
    # Probing by one client (system client or user), counted whatever enquirer ids it
    # names, since a system client may invent them: not-found answers, and answers
    # referred to a custodian (an NHS number whose entry disagrees with the names or
    # date of birth sent, as when guessing a child's birthday), within the window.
    alert_client_window_minutes: Annotated[int, Field(gt=0)] = 60
    alert_client_not_found_threshold: Annotated[int, Field(gt=0)] = 100
    alert_client_mismatch_threshold: Annotated[int, Field(gt=0)] = 5

    # Notifications to the responsible authority (docs/audit-review.md): derived from
    # the sealed log by a background notifier, one per enquirer and child per period.
    notifications_enabled: bool = True
    notifier_interval_seconds: Annotated[float, Field(gt=0)] = 1.0
    notifier_batch_size: Annotated[int, Field(gt=0)] = 1000
    notification_dedupe_hours: Annotated[int, Field(gt=0)] = 24
    # Webhook delivery from the outbox: at least once, retried with exponential back-off.
    webhook_timeout_seconds: Annotated[float, Field(gt=0)] = 5.0
    webhook_retry_base_seconds: Annotated[float, Field(gt=0)] = 5.0
    webhook_retry_max_seconds: Annotated[float, Field(gt=0)] = 3600.0
    # A delivery attempt claims its row for this long, so replicas do not send it twice.
    webhook_claim_seconds: Annotated[float, Field(gt=0)] = 60.0
    webhook_batch_size: Annotated[int, Field(gt=0)] = 50
    # Host names (exactly as in the URL) a webhook may point at although they are, or
    # resolve to, loopback, private or otherwise non-public addresses (an operator's
    # receiver inside the network). Anything else must be public (targets.py).
    webhook_allowed_hosts: frozenset[str] = frozenset()

    # Purposes of use each kind of reference point may give (README, "Security model", check 5).
    purposes_by_kind: dict[str, frozenset[str]] = {
        "emergency_department": frozenset({"unscheduled_care", "safeguarding_concern"}),
        "out_of_hours_social_care": frozenset({"out_of_hours_referral", "safeguarding_concern"}),
        "police": frozenset({"police_investigation", "safeguarding_concern"}),
    }

    log_level: str = "INFO"

    @property
    def client_assertion_audience(self) -> str:
        return self.token_endpoint_url or self.token_issuer.rstrip("/") + "/oauth/token"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @model_validator(mode="after")
    def _claim_outlasts_delivery(self) -> Self:
        # Otherwise a slow receiver's row could be claimed, and sent, a second time.
        if self.webhook_claim_seconds <= self.webhook_timeout_seconds:
            raise ValueError("webhook_claim_seconds must exceed webhook_timeout_seconds")
        return self

    @model_validator(mode="after")
    def _refuse_unsafe_production(self) -> Self:
        if self.environment is Environment.development:
            return self
        password = make_url(self.database_url).password
        if password is not None and password.lower() in PLACEHOLDER_SECRETS:
            raise ValueError("DATABASE_URL carries a placeholder password")
        if (
            self.environment is Environment.production
            and not self.is_sqlite
            and self.database_role is None
        ):
            raise ValueError(
                "CPR_DATABASE_ROLE is required in production (the role the service acts as, "
                "e.g. cpr_app; docs/audit-log.md)"
            )
        return self

    def check_keys_to_serve(self) -> None:
        """Production serves only with its keys in place. Not a validator: the commands
        that create the keys (`cpr keys rotate`, `cpr audit keygen`) run before they exist."""
        if self.environment is not Environment.production:
            return
        if not any(self.key_dir.glob("*.pem")):
            raise ValueError(f"no signing key in {self.key_dir}; create one with `cpr keys rotate`")
        if self.background_in_api and self.sealing_enabled:
            self.check_checkpoint_key()

    def check_checkpoint_key(self) -> None:
        """Whoever seals (the API in-process, or `cpr worker`) signs with this key."""
        if self.environment is Environment.production and not self.checkpoint_key_path.exists():
            raise ValueError(
                f"no checkpoint key at {self.checkpoint_key_path}; create one with "
                "`cpr audit keygen`"
            )


@lru_cache
def get_settings() -> Settings:
    return Settings()
