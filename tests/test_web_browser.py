"""The web client in a real browser (Debian's Chromium, driven by Selenium), by
keyboard alone: sign in, ask, read the answer; and the browser reports no Content
Security Policy violation on the way."""

import asyncio
import os
import shutil
from collections.abc import Iterator

import pytest

from tests.conftest import NHS, World
from tests.test_cli_lookup import served  # noqa: F401  (fixture)

# Real processes, ports and CPU-bound timing: one xdist worker runs all of these, in turn.
pytestmark = pytest.mark.xdist_group("processes")

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture
def chromium() -> Iterator[object]:
    if CHROMIUM is None or CHROMEDRIVER is None:
        message = (
            "Chromium and ChromeDriver are not installed (apt-get install chromium chromium-driver)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message + "; under CI the browser test must run")
        pytest.skip(message + "; browser test skipped")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.implicitly_wait(5)
    try:
        yield driver
    finally:
        driver.quit()


def _by_keyboard(driver: object, url: str, username: str, password: str) -> tuple[str, list[str]]:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver.get(f"{url}/web/sign-in")  # type: ignore[attr-defined]
    active = driver.switch_to.active_element  # type: ignore[attr-defined]
    assert active.get_attribute("id") == "username"  # focus starts in the first field
    active.send_keys(username, Keys.TAB)
    driver.switch_to.active_element.send_keys(password, Keys.ENTER)  # type: ignore[attr-defined]

    assert driver.find_element(By.ID, "nhs_number")  # type: ignore[attr-defined]
    active = driver.switch_to.active_element  # type: ignore[attr-defined]
    assert active.get_attribute("id") == "nhs_number"
    active.send_keys(NHS["neglect"], Keys.ENTER)
    # The reason is required: the browser stops the form and moves focus there.
    active = driver.switch_to.active_element  # type: ignore[attr-defined]
    assert active.get_attribute("id") == "reason"
    active.send_keys("child brought to the duty desk at 02:10")
    active.send_keys(Keys.SHIFT, Keys.TAB)
    driver.switch_to.active_element.send_keys("Out of hours")  # type: ignore[attr-defined]
    driver.switch_to.active_element.send_keys(Keys.TAB, Keys.TAB)  # type: ignore[attr-defined]
    button = driver.switch_to.active_element  # type: ignore[attr-defined]
    assert button.tag_name == "button"
    button.send_keys(Keys.ENTER)
    answer = driver.find_element(By.ID, "answer").text  # type: ignore[attr-defined]
    console = [entry["message"] for entry in driver.get_log("browser")]  # type: ignore[attr-defined]
    return answer, console


async def test_a_duty_officer_looks_up_a_child_by_keyboard_alone(
    chromium: object,
    served: str,  # noqa: F811
    world: World,
) -> None:
    credentials = world["duty_officer"].credentials
    # In a thread: the browser blocks, and the session's event loop must keep running.
    answer, console = await asyncio.to_thread(
        _by_keyboard, chromium, served, credentials["username"], credentials["password"]
    )
    assert "On a child protection plan" in answer
    assert "Neglect" in answer  # the category in words
    assert "Whom to call" in answer
    assert not [line for line in console if "Content Security Policy" in line], console
