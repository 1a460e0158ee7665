"""The README shows every screenshot the browser tests write (docs/screenshots/), by a
relative link, and no screenshot it shows is missing: a page added to the browser
tests without its picture in the README, or a picture left behind, fails here."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_readme_shows_every_screenshot_and_only_those() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    shown = set(re.findall(r"!\[[^\]]+\]\((docs/screenshots/[a-z0-9-]+\.png)\)", readme))
    written = {
        path.relative_to(ROOT).as_posix() for path in (ROOT / "docs/screenshots").glob("*.png")
    }
    assert written, "no screenshots: run tests/test_web_browser.py"
    assert sorted(written - shown) == [], "in docs/screenshots/ but not in the README"
    assert sorted(shown - written) == [], "in the README but not in docs/screenshots/"
