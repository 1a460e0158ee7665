"""CSV cells that are safe to open in a spreadsheet."""

# A cell a spreadsheet would run as a formula (OWASP "CSV injection"): enquirers'
# reasons and names, custodians' notes are free text, so none is trusted.
_FORMULA_START = frozenset("=+-@\t\r")


def safe_cell(value: object) -> str:
    text = "" if value is None else value if isinstance(value, str) else str(value)
    return "'" + text if text[:1] in _FORMULA_START else text
