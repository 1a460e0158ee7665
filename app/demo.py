"""The demo bootstrap behind `make run`: organisations, principals, ~20 register entries.

Idempotent: what exists is kept; credentials are kept while the credentials
file (``var/demo-credentials.json``) still holds them, and reset otherwise.
"""

import secrets
from datetime import date, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.admin.service import (
    create_client,
    create_organisation,
    create_user,
    reset_client_secret,
    reset_password,
)
from app.identity.models import Client, Organisation, OrganisationKind, Scope, User, UserRole
from app.register.models import Category, EndReason, RegisterEntry
from app.register.schemas import EntryCreate, Person
from app.register.service import Actor, create_entry, end_entry

ACTOR = "bootstrap:demo"

AUTHORITY = "Northshire County Council (demo)"
ORGANISATIONS: dict[str, dict[str, Any]] = {
    "cp-register operations (demo)": dict(
        kind=OrganisationKind.service_operator,
        ods_code=None,
        contact_name="cp-register operations",
        contact_phone="020 7946 0900",
    ),
    AUTHORITY: dict(
        kind=OrganisationKind.local_authority,
        ods_code="DEMO-LA1",
        contact_name="Northshire Children's Safeguarding (24h)",
        contact_phone="020 7946 0123",
    ),
    "Northshire General Hospital A&E (demo)": dict(
        kind=OrganisationKind.emergency_department,
        ods_code="DEMO-ED1",
        contact_name="Northshire General A&E",
        contact_phone="020 7946 0200",
    ),
    "Northshire Emergency Duty Team (demo)": dict(
        kind=OrganisationKind.out_of_hours_social_care,
        ods_code="DEMO-EDT1",
        contact_name="Northshire EDT",
        contact_phone="020 7946 0300",
    ),
    "Northshire Police Child Abuse Investigation Team (demo)": dict(
        kind=OrganisationKind.police,
        ods_code="DEMO-POL1",
        contact_name="Northshire CAIT",
        contact_phone="020 7946 0400",
    ),
}
USERS = {
    "service_operator": (
        "cp-register operations (demo)",
        "operator",
        "Demo Operator",
        UserRole.operator,
    ),
    "custodian": (AUTHORITY, "custodian", "Demo Custodian", UserRole.custodian),
    "duty_officer": (
        "Northshire Emergency Duty Team (demo)",
        "duty.officer",
        "Demo Duty Officer",
        UserRole.duty_officer,
    ),
}
CLIENTS = {
    "emergency_department_client": (
        "Northshire General Hospital A&E (demo)",
        "Northshire General EPR",
    ),
    "police_client": (
        "Northshire Police Child Abuse Investigation Team (demo)",
        "Northshire Police case system",
    ),
}


def years_ago(today: date, years: int, days: int = 0) -> date:
    """``years`` before ``today`` (28 February for 29 February), then ``days`` more."""
    try:
        anniversary = today.replace(year=today.year - years)
    except ValueError:
        anniversary = today.replace(year=today.year - years, day=28)
    return anniversary - timedelta(days=days)


def demo_entries(today: date) -> list[tuple[EntryCreate, EndReason | None]]:
    """The seed register; identifiers are fictional (NHS numbers from the 999 test range)."""

    def child(nhs: str | None, given: str, family: str, age: int, days: int = 40) -> Person:
        return Person(
            nhs_number=nhs,
            given_name=given,
            family_name=family,
            date_of_birth=years_ago(today, age, days),
        )

    def plan(person: Person, *categories: Category, months_ago: int = 2) -> EntryCreate:
        return EntryCreate(
            child=person,
            categories=list(categories),
            plan_start=today - timedelta(days=30 * months_ago),
            lead_professional="Demo Social Worker",
            team_contact="Northshire Children's Services, 020 7946 0150",
            notes="Demo entry. Custodian-only notes are never disclosed.",
        )

    n, p, s, e = (
        Category.neglect,
        Category.physical_abuse,
        Category.sexual_abuse,
        Category.emotional_abuse,
    )
    unborn = EntryCreate(
        mother=Person(
            nhs_number="9990000646",
            given_name="Grace",
            family_name="Okafor",
            date_of_birth=date(1998, 5, 14),
        ),
        expected_delivery_date=today + timedelta(days=60),
        categories=[n],
        plan_start=today - timedelta(days=20),
    )
    return [
        (plan(child("9990000018", "Amelia", "Hughes", 6), n), None),
        (plan(child("9990000085", "Oliver", "Patel", 9), p), None),
        (plan(child("9990000158", "Isla", "Nowak", 12), s), None),
        (plan(child("9990000220", "Noah", "O'Connor", 4), e), None),
        (plan(child("9990000298", "Zoë", "Müller-Smith", 7), n, e), None),
        (plan(child("9990000360", "Leo", "Van der Berg", 3), p, n, months_ago=9), None),
        (plan(child("9990000433", "Ava", "Kowalski", 15), e, s), None),
        (plan(child("9990000506", "Harry", "Begum", 1), n), None),
        (plan(child("9990000573", "Mia", "Robinson", 10), p), None),
        (unborn, None),
        (plan(child("9990000719", "Jack", "Wilson", 8), n), EndReason.no_longer_at_risk),
        (plan(child("9990000786", "Ella", "Thompson", 18, days=30), e, months_ago=14), None),
        (plan(child("9990000859", "Sam", "Taylor", 5, days=100), n), None),
        (plan(child("9990000921", "Sam", "Taylor", 5, days=100), p), None),
        (plan(child(None, "Maya", "Rossi", 2), n), None),
        (plan(child("9990000999", "Freddie", "Ahmed", 11), s, e), None),
        (plan(child("9990001065", "Poppy", "Evans", 13), e), None),
        (plan(child("9990001138", "Arthur", "Davies", 0, days=200), p), None),
        (plan(child("9990001200", "Lily", "Jones", 16), n, p, s, e), None),
        (plan(child("9990001278", "George", "Smith", 14), n), None),
    ]


async def bootstrap(
    session: AsyncSession, saved: dict[str, dict[str, str]]
) -> dict[str, dict[str, str]]:
    """Create what is missing and return the demo credentials.

    ``saved`` is what the last run wrote: a secret still there is kept, any
    other is reset, since only its hash is stored.
    """

    orgs: dict[str, Organisation] = {
        org.name: org for org in (await session.scalars(select(Organisation))).all()
    }
    for name, spec in ORGANISATIONS.items():
        if name not in orgs:
            orgs[name] = create_organisation(session, actor=ACTOR, name=name, **spec)
    await session.flush()

    credentials: dict[str, dict[str, str]] = {}
    for role, (org_name, username, full_name, user_role) in USERS.items():
        org = orgs[org_name]
        user = await session.scalar(select(User).where(User.username == username))
        password = saved.get(role, {}).get("password")
        if user is None:
            password = secrets.token_urlsafe(12)
            create_user(
                session,
                actor=ACTOR,
                organisation=org,
                username=username,
                full_name=full_name,
                role=user_role,
                password=password,
            )
        elif password is None:
            password = secrets.token_urlsafe(12)
            reset_password(session, actor=ACTOR, user=user, organisation=org, password=password)
        credentials[role] = {"username": username, "password": password, "organisation": org_name}

    for role, (org_name, client_name) in CLIENTS.items():
        org = orgs[org_name]
        client = await session.scalar(
            select(Client).where(Client.organisation_id == org.id, Client.name == client_name)
        )
        secret = saved.get(role, {}).get("client_secret")
        if client is None:
            client, secret = create_client(
                session,
                actor=ACTOR,
                organisation=org,
                name=client_name,
                scopes=frozenset({Scope.lookup}),
            )
        elif secret is None:
            secret = reset_client_secret(session, actor=ACTOR, client=client, organisation=org)
        credentials[role] = {
            "client_id": client.id,
            "client_secret": secret,
            "organisation": org_name,
        }

    authority = orgs[AUTHORITY]
    existing = await session.scalar(
        select(func.count())
        .select_from(RegisterEntry)
        .where(RegisterEntry.authority_id == authority.id)
    )
    if not existing:
        today = date.today()
        for data, end_reason in demo_entries(today):
            entry = create_entry(session, actor=Actor(ACTOR), authority_id=authority.id, data=data)
            if end_reason is not None:
                await session.flush()
                end_entry(
                    session,
                    entry,
                    actor=Actor(ACTOR),
                    ended_on=today - timedelta(days=10),
                    reason=end_reason.value,
                )

    await session.commit()
    return credentials
