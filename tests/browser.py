"""The browser tests' harness: Debian's Chromium driven by Selenium, axe-core for the
WCAG 2.2 AA rules, the 200 % zoom and reflow checks, keyboard focus, and the
screenshots in docs/screenshots/ that the README shows.

One call checks a page in the state the browser is in: ``audit(driver, "lookup-form")``.
A page that is one GET away is one line in tests/test_web_browser.py's PAGES.

Selenium blocks: run browser code in a thread (``await drive(fn, ...)``), so that the
session's event loop, whose app may hold SQLite's write lock, keeps running.
"""

import asyncio
import base64
import json
import os
import re
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import pytest

from app.config import Settings

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / "docs" / "screenshots"
# Installed by `make browser` (npm ci in tests/axe/, pinned by its package-lock.json).
AXE = ROOT / "tests" / "axe" / "node_modules" / "axe-core" / "axe.min.js"
# WCAG 2.0, 2.1 and 2.2, levels A and AA: what issue 15 asks the pages to meet.
WCAG_TAGS = ("wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa")

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")

# A laptop's window at 100 %; then the same window at 200 % (WCAG 1.4.4: 640 CSS px
# wide at twice the pixel density) and at 400 % (1.4.10 reflow: 320 CSS px).
WIDTH, HEIGHT = 1280, 900
ZOOMS = {200: (WIDTH // 2, HEIGHT // 2), 400: (WIDTH // 4, HEIGHT // 4)}

# Text that differs on every run (ids, clock times, the test data's random suffixes)
# is shown as fixed text in the screenshot only, after the audit, and put back at once:
# a page whose look has not changed gives the same PNG, and the tree stays clean.
STEADY = (
    (
        r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
        "3f2b8c1e-0000-4000-8000-000000000000",
    ),
    (r"\b\d{4}-\d{2}-\d{2} \d{2}:\d{2}\b", "2026-01-05 02:10"),
    (r"\b(Test [a-z_]+) [0-9a-f]{6}\b", "$1"),
    (r"\b([a-z_.]+)[-.][0-9a-f]{6}\b", "$1"),
)

P = ParamSpec("P")
R = TypeVar("R")


def require_browser() -> None:
    """Skip without Chromium or axe-core, except under CI, where the tests must run."""
    missing = [
        what
        for what, there in (
            (
                "Chromium and ChromeDriver (apt-get install chromium chromium-driver)",
                CHROMIUM and CHROMEDRIVER,
            ),
            (f"axe-core ({AXE.relative_to(ROOT)}: make browser)", AXE.is_file()),
        )
        if not there
    ]
    if missing:
        message = " and ".join(missing) + " not installed"
        if os.environ.get("CI") == "true":
            pytest.fail(message + "; under CI the browser tests must run")
        pytest.skip(message + "; browser tests skipped")


@pytest.fixture(scope="module")
def chromium_session() -> Iterator[Any]:
    """One Chromium for the module (starting one takes a second or two)."""
    require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--lang=en-GB",
        "--hide-scrollbars",
        "--force-color-profile=srgb",
        f"--window-size={WIDTH},{HEIGHT}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # Dates as a browser in England shows them (dd/mm/yyyy): Chromium's en-GB locale
    # (chromium-l10n, make browser) chosen by the environment; headless, --lang is not enough.
    locale = {"LANGUAGE": "en_GB", "LANG": "en_GB.UTF-8", "TZ": "UTC"}
    service = Service(str(CHROMEDRIVER), env={**os.environ, **locale})
    driver = webdriver.Chrome(options=options, service=service)
    driver.implicitly_wait(5)
    # The page keeps focus as a window in front does, even once Tab has gone past its
    # last control to the browser's own (headless, the next page would open unfocused).
    driver.execute_cdp_cmd("Emulation.setFocusEmulationEnabled", {"enabled": True})
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def chromium(chromium_session: Any) -> Iterator[Any]:
    """The module's Chromium, for one test: the window at 100 %, no cookies, and the
    console read out before (each test sees only its own messages)."""
    chromium_session.get_log("browser")
    _viewport(chromium_session, WIDTH, HEIGHT)
    yield chromium_session
    chromium_session.execute_cdp_cmd("Network.clearBrowserCookies", {})


@pytest.fixture(scope="module")
async def site(settings: Settings) -> AsyncIterator[str]:
    """A replica of the service for the module's pages (one port: one cookie jar)."""
    from tests.test_cli_lookup import serve  # here: tests/conftest.py loads this module

    async with serve(settings) as url:
        yield url


async def drive(fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """Run browser code off the event loop (see the module's docstring)."""
    return await asyncio.to_thread(fn, *args, **kwargs)


def _viewport(driver: Any, width: int, height: int, scale: float = 1) -> None:
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": scale, "mobile": False},
    )


@dataclass(frozen=True)
class Violation:
    rule: str
    impact: str
    help: str
    targets: list[str]
    summary: str

    def __str__(self) -> str:
        where = "\n".join(f"      {target}" for target in self.targets)
        return f"  {self.rule} ({self.impact}): {self.help}\n{where}\n      {self.summary}"


_RUN_AXE = """
const [tags, done] = [arguments[0], arguments[arguments.length - 1]];
axe.run(document, {runOnly: {type: 'tag', values: tags}, resultTypes: ['violations']})
  .then(result => done(result.violations.map(v => ({
    rule: v.id, impact: v.impact || '', help: v.help,
    targets: v.nodes.map(n => n.target.join(' ')),
    summary: ((v.nodes[0] && v.nodes[0].failureSummary) || '').split('\\n')
      .map(line => line.trim()).filter(Boolean).slice(0, 2).join(' '),
  }))))
  .catch(error => done([
    {rule: 'axe-error', impact: 'critical', help: String(error), targets: [], summary: ''},
  ]));
"""


def axe_violations(driver: Any) -> list[Violation]:
    """axe-core's WCAG 2.2 A and AA violations on the page as it is now. Injected through
    WebDriver, which the page's Content Security Policy (no script at all) does not govern."""
    if not driver.execute_script("return typeof window.axe === 'object'"):
        driver.execute_script(_axe_source())
    found = driver.execute_async_script(_RUN_AXE, list(WCAG_TAGS))
    return [Violation(**violation) for violation in found]


_AXE_SOURCE: list[str] = []


def _axe_source() -> str:
    if not _AXE_SOURCE:
        _AXE_SOURCE.append(AXE.read_text(encoding="utf-8"))
    return _AXE_SOURCE[0]


def horizontal_overflow(driver: Any) -> int:
    """How many CSS px the page is wider than the window (0: it reflows)."""
    return int(
        driver.execute_script(
            "const e = document.documentElement; return Math.max(0, e.scrollWidth - e.clientWidth);"
        )
    )


def audit(driver: Any, name: str, *, screenshot: bool = True) -> None:
    """Check the page the browser shows, in the state it is in, and record how it looks:

    - axe-core finds no WCAG 2.2 A/AA violation at 100 % and at 200 % zoom;
    - at 200 % and 400 % (320 CSS px) the page reflows: no horizontal scrolling;
    - the page is saved, whole, to docs/screenshots/<name>.png at 1280 px wide.

    Fails with every problem found, each rule with its impact, elements and help.
    """
    assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", name), f"screenshot name {name!r}: kebab-case"
    problems: list[str] = []
    try:
        found = axe_violations(driver)
        if found:
            problems.append(
                f"at 100 %: {len(found)} axe violation(s)\n" + "\n".join(map(str, found))
            )
        for zoom, (width, height) in ZOOMS.items():
            _viewport(driver, width, height, zoom / 100)
            if overflow := horizontal_overflow(driver):
                problems.append(f"at {zoom} % ({width} CSS px): scrolls sideways by {overflow} px")
            if zoom == 200 and (found := axe_violations(driver)):
                problems.append(
                    f"at 200 %: {len(found)} axe violation(s)\n" + "\n".join(map(str, found))
                )
    finally:
        _viewport(driver, WIDTH, HEIGHT)
    if screenshot:
        save_screenshot(driver, name)
    assert not problems, f"{name} ({driver.current_url}):\n" + "\n".join(problems)


_STEADY_SCRIPT = """
const patterns = arguments[0].map(([pattern, to]) => [new RegExp(pattern, 'g'), to]);
const changed = [];
const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
for (let node = walker.nextNode(); node; node = walker.nextNode()) {
  let text = node.nodeValue;
  for (const [pattern, to] of patterns) text = text.replace(pattern, to);
  if (text !== node.nodeValue) { changed.push([node, node.nodeValue]); node.nodeValue = text; }
}
const fields = [...document.querySelectorAll('input, textarea')].map(field => [field, field.value]);
fields.forEach(([field, value]) => {
  field.style.caretColor = 'transparent';
  if (field.type !== 'date') {
    for (const [pattern, to] of patterns) field.value = field.value.replace(pattern, to);
  }
});
window.__cprSteady = () => {
  changed.forEach(([node, text]) => { node.nodeValue = text; });
  fields.forEach(([field, value]) => { field.style.caretColor = ''; field.value = value; });
};
"""


# A link looks the same whether this browser followed it before or not (which depends on
# the order the tests ran in); the page's own link colours still win (:where: no weight).
UNVISITED = ":where(a):visited { color: LinkText; }"


def _style(driver: Any, css: str) -> str:
    """Add a style sheet to the page through DevTools (the page's Content Security
    Policy allows none of its own), for the screenshot only; returns its id."""
    driver.execute_cdp_cmd("DOM.enable", {})
    driver.execute_cdp_cmd("CSS.enable", {})
    frame = driver.execute_cdp_cmd("Page.getFrameTree", {})["frameTree"]["frame"]["id"]
    sheet = str(driver.execute_cdp_cmd("CSS.createStyleSheet", {"frameId": frame})["styleSheetId"])
    driver.execute_cdp_cmd("CSS.setStyleSheetText", {"styleSheetId": sheet, "text": css})
    return sheet


def save_screenshot(driver: Any, name: str) -> Path:
    """docs/screenshots/<name>.png: the whole page at 1280 px wide, volatile text steady
    (STEADY) and no blinking caret, so that an unchanged page gives the same file."""
    driver.execute_script(_STEADY_SCRIPT, [list(pair) for pair in STEADY])
    unvisited = _style(driver, UNVISITED)
    try:
        height = int(driver.execute_script("return document.documentElement.scrollHeight"))
        shot = driver.execute_cdp_cmd(
            "Page.captureScreenshot",
            {
                "format": "png",
                "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": WIDTH, "height": max(height, HEIGHT), "scale": 1},
            },
        )
    finally:
        driver.execute_cdp_cmd("CSS.setStyleSheetText", {"styleSheetId": unvisited, "text": ""})
        driver.execute_script("window.__cprSteady && window.__cprSteady()")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    data = base64.b64decode(shot["data"])
    if not path.is_file() or path.read_bytes() != data:
        path.write_bytes(data)
    return path


_FOCUS_SCRIPT = """
const e = document.activeElement;
if (!e || e === document.body) return null;
const style = getComputedStyle(e);
const rect = e.getBoundingClientRect();
return {
  id: e.id, tag: e.tagName.toLowerCase(), text: (e.innerText || e.value || '').trim().slice(0, 40),
  outline: style.outlineStyle !== 'none' && parseFloat(style.outlineWidth) >= 2,
  shadow: style.boxShadow !== 'none',
  seen: rect.width > 0 && rect.height > 0 && rect.bottom > 0 && rect.right > 0
        && rect.top < innerHeight && rect.left < innerWidth,
};
"""


def focused(driver: Any) -> dict[str, Any] | None:
    """The focused element (id, tag, text), and whether its focus can be seen: an outline
    of 2 px or more, or a ring, and the element inside the window (WCAG 2.4.7, 2.4.11)."""
    found: dict[str, Any] | None = driver.execute_script(_FOCUS_SCRIPT)
    return found


@contextmanager
def loads(driver: Any, timeout: float = 10) -> Iterator[None]:
    """Wait, after the block, for the new page that its action (a click, an Enter)
    brings: WebDriver does not wait for a form's navigation itself."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.wait import WebDriverWait

    old = driver.find_element(By.TAG_NAME, "html")

    def gone(_: Any) -> bool:
        # Stale, or (ChromeDriver, mid-navigation) "Node with given id does not belong
        # to the document": either way the old page has gone.
        try:
            old.is_enabled()
        except WebDriverException:
            return True
        return False

    yield
    WebDriverWait(driver, timeout).until(gone)
    WebDriverWait(driver, timeout).until(
        lambda d: d.execute_script("return document.readyState") == "complete"
    )


def text(driver: Any) -> str:
    """The words the page shows."""
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.TAG_NAME, "body").text)


def sign_in(driver: Any, url: str, credentials: dict[str, str]) -> None:
    """Sign in as a person does: the name (focus starts there), Tab, the password, Enter."""
    from selenium.webdriver.common.keys import Keys

    driver.get(f"{url}/web/sign-in")
    now = focused(driver)
    assert now is not None
    assert now["id"] == "username", now
    press(driver, credentials["username"], Keys.TAB)
    press(driver, credentials["password"])
    press(driver, Keys.ENTER, page=True)


def press(driver: Any, *keys: str, page: bool = False, moves: bool = True) -> dict[str, Any]:
    """Send keys to whatever has focus (as a person at a keyboard does), and return what
    has focus then; fails when that focus cannot be seen. ``page``: the keys bring a new
    page (Enter on a form), waited for; on it nothing need have focus yet ({}).
    ``moves=False``: focus may rest on no element (Enter on a link to a part of the page)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    def keyboard() -> None:
        # A modifier first (Shift+Tab) is held down over the keys after it.
        held = keys[0] if keys[0] in (Keys.SHIFT, Keys.CONTROL, Keys.ALT) else None
        chain = ActionChains(driver)
        if held:
            chain.key_down(held)
        chain.send_keys(*keys[1 if held else 0 :])
        if held:
            chain.key_up(held)
        chain.perform()

    if page:
        with loads(driver):
            keyboard()
    else:
        keyboard()
    now = focused(driver)
    if now is None and (page or not moves):
        return {}
    assert now is not None, f"after {keys!r} nothing has focus on {driver.current_url}"
    _assert_seen(driver, now)
    return now


def _assert_seen(driver: Any, now: dict[str, Any]) -> None:
    where = f"{json.dumps(now)} ({driver.current_url})"
    assert now["outline"] or now["shadow"], f"no focus indicator on {where}"
    assert now["seen"], f"the focused element is out of sight: {where}"


def to_top(driver: Any) -> None:
    """Move focus to the top of the page, before its first control, as on opening it."""
    driver.execute_script(
        "const b = document.body; b.tabIndex = -1; b.focus(); b.removeAttribute('tabindex');"
    )


def tab_order(driver: Any, limit: int = 40) -> list[str]:
    """Every stop of the Tab key from the top of the page, each with its focus seen, as
    'tag#id' or 'tag:text' (a date's day, month and year are one stop), until focus
    leaves the page or comes round again. Focus is moved to the top first."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    to_top(driver)
    stops: list[str] = []
    for _ in range(limit):
        ActionChains(driver).send_keys(Keys.TAB).perform()
        now = focused(driver)
        if now is None:
            # Out of the page, to the browser's own controls: one more Tab brings focus
            # back in, as it does for a person (else the next page opens unfocused).
            ActionChains(driver).send_keys(Keys.TAB).perform()
            break
        _assert_seen(driver, now)
        stop = f"{now['tag']}#{now['id']}" if now["id"] else f"{now['tag']}:{now['text']}"
        if stops and stop == stops[0]:
            break
        if not stops or stops[-1] != stop:
            stops.append(stop)
    return stops
