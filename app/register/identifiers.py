"""Normalising a child's identifiers so that a lookup can only match exactly.

Names compare case-, accent-, space- and hyphen-insensitively and nothing
more: no wildcards, no partial or phonetic matching.
"""

import re
import unicodedata
from datetime import date

_NHS_SEPARATORS = re.compile(r"[ \-]")
_NAME_CHARS = re.compile(r"^[^\W\d_]+(?:[ \-'.][^\W\d_]+)*[.]?$")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})
_DROPPED = str.maketrans("", "", " -")
# What str.split() takes for whitespace but no one types inside a name: tabs, newlines,
# the C0 separators (0x1C-0x1F), NEL, line and paragraph separators.
_BREAKS = frozenset({"Cc", "Zl", "Zp"})
NAME_MAX = 100
# The match key (given|family|date of birth) is stored in 400 characters, and NFKD with
# case folding can make one letter many (U+FDFA becomes eighteen): bounded, it fits.
MATCH_NAME_MAX = 190


def nhs_number_check_digit_ok(digits: str) -> bool:
    """Modulus 11: weights 10..2 over the first nine digits; 10 is never valid."""
    if len(digits) != 10 or not digits.isascii() or not digits.isdigit():
        return False
    total = sum(int(d) * w for d, w in zip(digits[:9], range(10, 1, -1), strict=True))
    check = 11 - total % 11
    if check == 11:
        check = 0
    return check != 10 and check == int(digits[9])


def normalise_nhs_number(raw: str) -> str:
    """Ten digits, spaces and hyphens dropped; ValueError when not a valid NHS number."""
    digits = _NHS_SEPARATORS.sub("", raw.strip())
    if not nhs_number_check_digit_ok(digits):
        raise ValueError("not a valid NHS number (10 digits with a modulus 11 check digit)")
    return digits


def check_name(raw: str) -> str:
    """Refuse what is not a whole name: wildcards, digits, initials, stray symbols,
    control characters, and names too long to store or to match on."""
    if len(raw) > 4 * NAME_MAX:  # before any normalising: bounded work whatever is sent
        raise ValueError(f"must be at most {NAME_MAX} characters")
    stripped = raw.strip()
    if any(unicodedata.category(c) in _BREAKS for c in stripped):
        raise ValueError("must not contain control characters, tabs or line breaks")
    # NFC first: a name typed on some devices arrives decomposed (e + combining mark).
    name = " ".join(unicodedata.normalize("NFC", stripped).translate(_APOSTROPHES).split())
    letters = sum(c.isalpha() for c in name)
    if not _NAME_CHARS.match(name) or letters < 2:
        raise ValueError("must be a whole name: letters, spaces, hyphens and apostrophes only")
    if len(name) > NAME_MAX:
        raise ValueError(f"must be at most {NAME_MAX} characters once normalised")
    if len(normalise_name(name)) > MATCH_NAME_MAX:
        raise ValueError("too long to compare once accents and case are folded")
    return name


def normalise_name(name: str) -> str:
    decomposed = unicodedata.normalize("NFKD", name.translate(_APOSTROPHES))
    unaccented = "".join(c for c in decomposed if not unicodedata.combining(c))
    return unaccented.casefold().translate(_DROPPED)


def match_key(given_name: str, family_name: str, date_of_birth: date) -> str:
    """The exact-match key of a person: normalised names and date of birth."""
    return f"{normalise_name(given_name)}|{normalise_name(family_name)}|{date_of_birth.isoformat()}"


def eighteenth_birthday(date_of_birth: date) -> date:
    """The day a child turns 18 (1 March for 29 February); the calendar's end when
    that is beyond it, so no date of birth makes this raise."""
    if date_of_birth.year + 18 > date.max.year:
        return date.max
    try:
        return date_of_birth.replace(year=date_of_birth.year + 18)
    except ValueError:  # 29 February
        return date(date_of_birth.year + 18, 3, 1)
