"""The lookup request and its need-to-know answer."""

import re
import unicodedata
import uuid
from datetime import date
from enum import StrEnum
from typing import Annotated, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from app.register.identifiers import check_name, normalise_nhs_number
from app.register.models import Category
from app.register.schemas import EARLIEST_DATE, storable_text

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
Name = Annotated[str, StringConstraints(max_length=100), AfterValidator(check_name)]
NhsNumber = Annotated[str, StringConstraints(max_length=14), AfterValidator(normalise_nhs_number)]


def born_on(value: date, today: date) -> date:
    """A date of birth of someone alive: from the register's earliest date to today."""
    if not EARLIEST_DATE <= value <= today:
        raise ValueError(f"must be a date of birth from {EARLIEST_DATE.isoformat()} to today")
    return value


def _born_by_today(value: date) -> date:
    return born_on(value, date.today())


class Purpose(StrEnum):
    unscheduled_care = "unscheduled_care"
    out_of_hours_referral = "out_of_hours_referral"
    police_investigation = "police_investigation"
    safeguarding_concern = "safeguarding_concern"


class Subject(BaseModel):
    """The person who presents: a child, or a pregnant woman (for an unborn child's plan).

    Either a valid NHS number (optionally with names or date of birth to
    cross-check), or given name + family name + date of birth.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    nhs_number: NhsNumber | None = None
    given_name: Name | None = None
    family_name: Name | None = None
    date_of_birth: Annotated[date, AfterValidator(_born_by_today)] | None = None

    @model_validator(mode="after")
    def _names_one_child(self) -> Self:
        has_demographics = all((self.given_name, self.family_name, self.date_of_birth))
        if self.nhs_number is None and not has_demographics:
            raise ValueError("give an NHS number, or given name, family name and date of birth")
        return self


# Characters that show nothing, or steer how the rest shows: an enquirer id holding one
# looks like another enquirer's and would be counted apart from it. Refused, not dropped:
# a system that sends them has a fault (or a purpose) a person should look at.
_INVISIBLE_CATEGORIES = frozenset(
    {
        "Cc",  # control characters (tabs, newlines, NUL, C1 controls)
        "Cf",  # format: zero-width space/joiners, bidi controls, soft hyphen, tags, BOM
        "Co",  # private use: renders as anything, or nothing
        "Cs",  # lone surrogates
        "Cn",  # unassigned
        "Zl",  # line separator
        "Zp",  # paragraph separator
    }
)
_INVISIBLE = frozenset(
    {
        "\u034f",  # combining grapheme joiner
        "\u115f",  # Hangul choseong filler
        "\u1160",  # Hangul jungseong filler
        "\u17b4",  # Khmer vowel inherent aq
        "\u17b5",  # Khmer vowel inherent aa
        "\u180b",  # Mongolian free variation selectors
        "\u180c",
        "\u180d",
        "\u180f",
        "\u2800",  # braille pattern blank
        "\u3164",  # Hangul filler
        "\uffa0",  # halfwidth Hangul filler
        "\ufffc",  # object replacement character
    }
)
_WHITESPACE_RUN = re.compile(r"\s+")


def _is_invisible(char: str) -> bool:
    code = ord(char)
    return (
        unicodedata.category(char) in _INVISIBLE_CATEGORIES
        or char in _INVISIBLE
        or 0xFE00 <= code <= 0xFE0F  # variation selectors
        or 0xE0100 <= code <= 0xE01EF  # variation selectors supplement
    )


def display_text(raw: str) -> str:
    """NFKC, surrounding whitespace trimmed and inner runs of whitespace made one space;
    ValueError when the text holds an invisible or control character. The message never
    repeats the text: the field is named by the error's location."""
    # Surrounding whitespace, including the Cc controls str.strip() counts as such
    # (tab, newline), is trimmed before anything is refused; inside, they are refused.
    text = raw.strip()
    if any(_is_invisible(c) for c in text):
        raise ValueError("must not contain invisible or control characters")
    text = unicodedata.normalize("NFKC", text)
    if any(_is_invisible(c) for c in text):  # NFKC never makes one; checked all the same
        raise ValueError("must not contain invisible or control characters")
    text = _WHITESPACE_RUN.sub(" ", text).strip()
    if not text:
        raise ValueError("must not be blank")
    return text


def enquirer_key(raw: str) -> str:
    """An enquirer id as counted and recorded: ``display_text`` case-folded (NFKC again
    after folding, as Unicode's NFKC_Casefold), so that ``C123456``, ``c123456``,
    `` C123456 `` and the same in fullwidth letters and digits are one enquirer."""
    return unicodedata.normalize("NFKC", display_text(raw).casefold())


def _at_most(limit: int) -> AfterValidator:
    # NFKC may lengthen a text (one ligature becomes several letters).
    def check(value: str) -> str:
        if len(value) > limit:
            raise ValueError(f"must be at most {limit} characters once normalised")
        return value

    return AfterValidator(check)


EnquirerId = Annotated[Text, Field(max_length=64), AfterValidator(enquirer_key), _at_most(64)]
EnquirerText = Annotated[Text, AfterValidator(display_text)]


class Enquirer(BaseModel):
    """The member of staff who asked, named by a system client.

    The id is compared, counted and recorded normalised: Unicode NFKC, case-folded,
    surrounding whitespace trimmed (so `C123456`, `c123456` and ` C123456 ` are one
    enquirer). The name and role keep their case: NFKC, trimmed. Invisible and
    control characters (zero-width, bidi controls, soft hyphen, ...) in any of the
    three are refused with 422.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    id: EnquirerId
    name: Annotated[EnquirerText, Field(max_length=200), _at_most(200)]
    role: Annotated[EnquirerText, Field(max_length=100), _at_most(100)]


class LookupRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    subject: Subject
    purpose: Purpose
    reason: Annotated[Text, Field(min_length=3, max_length=500), AfterValidator(storable_text)]
    enquirer: Enquirer | None = None


class Contact(BaseModel):
    name: str
    phone: str


# The values of app/register/matching.py's Status, spelled out so that OpenAPI shows
# them in the answer itself.
AnswerStatus = Literal["on_plan", "not_on_plan", "refer_to_custodian"]


class LookupAnswer(BaseModel):
    """Everything a lookup ever discloses; ``categories`` and ``unborn`` only when on a plan."""

    lookup_id: uuid.UUID
    status: AnswerStatus
    categories: list[Category] | None = None
    unborn: bool | None = None
    contact: Contact
