"""Notifications to a child's responsible authority, derived from the sealed audit log.

The log stays the one record of what happened; these tables only say whom it
has been told to, so they may be updated (acknowledged, retried).
"""

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, String, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, utcnow


class Notification(Base):
    """An authority is told that someone asked about one of its children.

    One per enquirer and child within the de-duplication period (CP-IS): later
    enquiries in that period only count in ``repeats``.
    """

    __tablename__ = "notifications"
    __table_args__ = (
        # The de-duplication look-up, and the feed (newest first per authority).
        Index("ix_notifications_dedupe", "authority_id", "dedupe_key", "first_occurred_at"),
        Index("ix_notifications_feed", "authority_id", "first_occurred_at"),
        # Where the notifier starts when its cursor row is behind (migration 0013).
        Index("ix_notifications_last_position", "last_position"),
        # The list, unacknowledged first (app/notifications/routes.py; migration 0012):
        # each status walked newest first from its own index.
        Index(
            "ix_notifications_unacknowledged",
            "authority_id",
            "first_occurred_at",
            "id",
            sqlite_where=text("acknowledged_at IS NULL"),
            postgresql_where=text("acknowledged_at IS NULL"),
        ),
        Index(
            "ix_notifications_acknowledged",
            "authority_id",
            "first_occurred_at",
            "id",
            sqlite_where=text("acknowledged_at IS NOT NULL"),
            postgresql_where=text("acknowledged_at IS NOT NULL"),
        ),
        # Named as migration 0006 named it: the convention would name it after event_id
        # alone, as 0003's constraint on event_id alone was.
        UniqueConstraint("event_id", "authority_id", name="uq_notifications_event_id_authority_id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    authority_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organisations.id"))
    # The enquiry that raised it (the first of the period).
    # One per authority concerned: a referral may concern several.
    event_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("audit_events.id"))
    # A hash of (enquiring organisation, enquirer, child): no identifiers in it.
    dedupe_key: Mapped[str] = mapped_column(String(64))
    first_occurred_at: Mapped[datetime]
    last_occurred_at: Mapped[datetime]
    repeats: Mapped[int] = mapped_column(default=0)
    # The seal position of the last enquiry that raised or repeated it (none before
    # migration 0013): the notifier never reads the log again before the newest one.
    last_position: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    acknowledged_at: Mapped[datetime | None]
    acknowledged_by: Mapped[str | None] = mapped_column(String(100))


class NotifierCursor(Base):
    """How far through the sealed log the notifier has read: a seal position.

    Positions are gap-free and assigned in the order events are sealed, so an
    event whose transaction committed late is still read (an ``occurred_at``
    cursor would step past it). Updated in the transaction that writes the
    notifications, so a notifier that stops resumes exactly where it was.
    """

    __tablename__ = "notifier_cursor"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    position: Mapped[int] = mapped_column(BigInteger)


class NotificationWebhook(Base):
    """Where an authority wants its notifications sent, besides the feed."""

    __tablename__ = "notification_webhooks"

    organisation_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organisations.id"), primary_key=True
    )
    url: Mapped[str] = mapped_column(String(2000))
    # Signs each body (HMAC-SHA256) so the receiver can tell it came from us.
    signing_secret: Mapped[str | None] = mapped_column(String(200))
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class NotificationDelivery(Base):
    """The outbox: one row per notification for an authority with a webhook.

    Written with the notification, so a delivery cannot be forgotten; retried
    with exponential back-off until the receiver accepts it.
    ``next_attempt_at`` is null once delivered.
    """

    __tablename__ = "notification_outbox"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    notification_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("notifications.id"), unique=True)
    organisation_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organisations.id"))
    payload: Mapped[dict[str, Any]]
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(index=True)
    last_attempt_at: Mapped[datetime | None]
    last_status: Mapped[int | None]
    last_error: Mapped[str | None] = mapped_column(String(500))
    delivered_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
