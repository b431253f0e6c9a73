"""Re-authentication ("sudo mode") and the new-device notice, seen from the browser.

The demo's sensitive page is protected by ``@reauth_required``. The demo runs with
``HS_DEMO_REAUTH_MAX_AGE`` short, so that the proof of the login ages within the test:
the page then sends the browser to the confirmation page (``ReauthView``), where a
wrong password is refused and the right one leads back to the page, under a new
session key (the confirmation rotates it).

The new-device notice: the demo connects ``session_new_device`` to a message on the
next page; a second login from another browser family shows it, a login from the same
browser does not.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.browser.conftest import (
    USERS,
    DemoSite,
    expect,
    key_hash,
    log_in,
    session_cookie,
)

REAUTH_MAX_AGE = 3  # seconds
FIREFOX_LINUX = "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0"


# This module's own demo site (the proof's short life does not matter to the notice).
@pytest.fixture(scope="module")
def short_proof_site(
    start_demo_site: Callable[..., AbstractContextManager[DemoSite]],
) -> Iterator[DemoSite]:
    with start_demo_site(HS_DEMO_REAUTH_MAX_AGE=str(REAUTH_MAX_AGE)) as site:
        yield site


def cookie_value(context: Any) -> str:
    cookie = session_cookie(context)
    assert cookie is not None, "no session cookie in the browser"
    return str(cookie["value"])


def test_reauth_asks_again_refuses_a_wrong_password_and_rotates_the_key(
    short_proof_site: DemoSite, new_context: Callable[..., Any], shot: Callable[..., Any]
) -> None:
    site = short_proof_site
    context = new_context()
    page = context.new_page()
    log_in(page, site, "demo")

    # A fresh proof: the page opens at once.
    page.goto(site("/sensitive/"))
    expect(page.locator("h1")).to_have_text("Sensitive page")

    # The proof ages past REAUTH_MAX_AGE: the page sends the browser to confirm.
    time.sleep(REAUTH_MAX_AGE + 1.5)
    before = cookie_value(context)
    page.goto(site("/sensitive/"))
    page.wait_for_url(re.compile(r"/sessions/reauth/\?"))
    assert parse_qs(urlsplit(page.url).query)["next"] == ["/sensitive/"], page.url
    expect(page.locator("h1")).to_have_text("Confirm it's you")
    expect(page.locator("body")).to_contain_text("You are signed in as demo")
    shot(page, "reauth-form")

    # A wrong password: the form again, with the error; the key stays.
    page.fill("input[name=password]", "not-the-password")
    page.click("form:has(input[name=password]) button[type=submit]")
    expect(page.locator("body")).to_contain_text("That password is not correct.")
    expect(page.locator("h1")).to_have_text("Confirm it's you")
    assert "/sessions/reauth/" in page.url
    shot(page, "reauth-wrong-password")
    assert cookie_value(context) == before

    # The right one: back on the page first asked for, under a new session key.
    page.fill("input[name=password]", USERS["demo"])
    page.click("form:has(input[name=password]) button[type=submit]")
    page.wait_for_url(site("/sensitive/"))
    expect(page.locator("h1")).to_have_text("Sensitive page")
    after = cookie_value(context)
    assert after != before
    # The page names the session by its handle: the new key's.
    expect(page.locator(".session-id")).to_have_text(key_hash(after)[:16])
    shot(page, "reauth-back-on-the-page")


def test_new_device_notice(
    short_proof_site: DemoSite, new_context: Callable[..., Any], shot: Callable[..., Any]
) -> None:
    # A site of this module's own: no other test's sessions of "admin" are live there.
    demo_site = short_proof_site
    laptop = new_context().new_page()
    log_in(laptop, demo_site, "admin")
    expect(laptop.locator(".messages li.new-device")).to_have_count(0)  # the first session

    # The same browser again (Chromium from the same network): a known device.
    again = new_context().new_page()
    log_in(again, demo_site, "admin")
    expect(again.locator(".messages li.new-device")).to_have_count(0)

    # Another browser family: the notice, naming the new session by its handle.
    other_context = new_context(user_agent=FIREFOX_LINUX)
    other = other_context.new_page()
    log_in(other, demo_site, "admin")
    handle = key_hash(cookie_value(other_context))[:16]
    notice = other.locator(".messages li.new-device")
    expect(notice).to_have_count(1)
    expect(notice).to_contain_text(
        f"New sign-in to admin from a device none of its other sessions has (session {handle})"
    )
    shot(other, "new-device-notice")

    # The sessions page lists it under the same handle.
    other.goto(demo_site("/sessions/"))
    expect(other.locator(f'tr.current[data-handle="{handle}"]')).to_have_count(1)
    shot(other, "new-device-sessions-page")
