"""The purposes an enquirer may give: those its kind of organisation may (the settings'
``purposes_by_kind``, as the lookup checks them), its own first. One list for the web
page, ``GET /v1/lookups/purposes`` and ``cpr lookup``, so none offers what is refused."""

from app.config import Settings
from app.lookup.schemas import Purpose

PURPOSE_WORDS = {purpose.value: purpose.value.replace("_", " ").capitalize() for purpose in Purpose}
# The purpose a kind of reference point gives most often, offered first and selected.
OWN_PURPOSE = {
    "emergency_department": Purpose.unscheduled_care.value,
    "out_of_hours_social_care": Purpose.out_of_hours_referral.value,
    "police": Purpose.police_investigation.value,
}


def offered(kind: str, settings: Settings) -> tuple[list[tuple[str, str]], str]:
    """(code, words) of each purpose ``kind`` may give, its own first; and that default
    ("" when the kind has none, or may not give it)."""
    allowed = settings.purposes_by_kind.get(kind, frozenset())
    own = OWN_PURPOSE.get(kind, "")
    ordered = sorted(
        (p.value for p in Purpose if p.value in allowed), key=lambda value: value != own
    )
    return [(value, PURPOSE_WORDS[value]) for value in ordered], own if own in allowed else ""
