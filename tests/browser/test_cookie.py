"""The session cookie as Chromium stores it (docs/design.rst, "What the engines do": cookie flags,
``SameSite=None``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tests.browser.conftest import SESSION_COOKIE, DemoSite, expect, log_in, session_cookie


def configured_flags(page: Any) -> dict[str, str]:
    """The settings table of the demo's cookie page: name -> value as shown."""
    flags = {}
    for row in page.locator("table tr").all():
        flags[row.locator("th").inner_text().strip()] = row.locator("td").inner_text().strip()
    return flags


def set_cookie_attributes(response: Any, name: str) -> tuple[str, dict[str, str]]:
    """The value and attributes (lower-cased names) of the one ``Set-Cookie`` for ``name``."""
    headers = [
        h["value"]
        for h in response.headers_array()
        if h["name"].lower() == "set-cookie" and h["value"].startswith(f"{name}=")
    ]
    assert len(headers) == 1, headers
    first, *rest = (part.strip() for part in headers[0].split(";"))
    attributes = {}
    for part in rest:
        key, _, value = part.partition("=")
        attributes[key.lower()] = value
    return first.partition("=")[2], attributes


def test_session_cookie_is_httponly_samesite_as_configured_and_hidden_from_scripts(
    demo_site: DemoSite, new_context: Callable[..., Any], shot: Callable[..., Any]
) -> None:
    context = new_context()
    page = context.new_page()
    # The login form sets the CSRF cookie, which scripts may read: a control that
    # document.cookie does show what is not HttpOnly.
    page.goto(demo_site("/accounts/login/"))
    assert session_cookie(context) is None

    response = page.goto(demo_site("/cookie/"))
    assert response is not None and response.status == 200

    flags = configured_flags(page)
    assert flags["SESSION_COOKIE_SAMESITE"] == "Lax"
    assert flags["SESSION_COOKIE_SECURE"] == "False"
    cookie = session_cookie(context)
    assert cookie is not None
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == flags["SESSION_COOKIE_SAMESITE"]
    assert cookie["secure"] is (flags["SESSION_COOKIE_SECURE"] == "True")
    assert cookie["path"] == "/"
    assert len(cookie["value"]) == 32

    seen_by_scripts = page.evaluate("document.cookie")
    assert "csrftoken=" in seen_by_scripts
    assert f"{SESSION_COOKIE}=" not in seen_by_scripts
    assert cookie["value"] not in seen_by_scripts
    expect(page.locator("#js-verdict")).to_have_text(
        f"The session cookie ({SESSION_COOKIE}) is hidden from JavaScript."
    )
    shot(page, "cookie-page")


def test_samesite_none_forces_secure(
    start_demo_site: Callable[..., Any],
    new_context: Callable[..., Any],
    shot: Callable[..., Any],
) -> None:
    # SESSION_COOKIE_SECURE stays False: SameSite=None alone must add Secure.
    with start_demo_site(HS_BROWSER_SAMESITE="None") as site:
        context = new_context()
        page = context.new_page()
        response = page.goto(site("/cookie/"))
        assert response is not None and response.status == 200
        flags = configured_flags(page)
        assert flags["SESSION_COOKIE_SAMESITE"] == "None"
        assert flags["SESSION_COOKIE_SECURE"] == "False"

        # Browsers refuse Secure cookies from plain http:// (Chromium excepts loopback
        # addresses such as this one): the header the server sent is the assertion that
        # does not depend on the browser.
        value, attributes = set_cookie_attributes(response, SESSION_COOKIE)
        assert len(value) == 32
        assert "secure" in attributes
        assert "httponly" in attributes
        assert attributes.get("samesite", "").lower() == "none"
        # If the browser did keep it, it kept it as Secure.
        stored = session_cookie(context)
        if stored is not None:
            assert stored["secure"] is True
            assert stored["sameSite"] == "None"
        assert SESSION_COOKIE + "=" not in page.evaluate("document.cookie")
        shot(page, "cookie-page-samesite-none")


def test_cookie_page_shows_the_lifetime_the_cookie_really_has(
    demo_site: DemoSite, new_context: Callable[..., Any], shot: Callable[..., Any]
) -> None:
    """The cookie carries the absolute timeout (12 hours in the demo), not
    ``SESSION_COOKIE_AGE`` (two weeks), and the page says so."""
    context = new_context()
    page = context.new_page()
    log_in(page, demo_site, "demo")
    page.goto(demo_site("/cookie/"))
    max_age = int(page.locator("#cookie-max-age").inner_text())
    shown_expiry = int(page.locator("#cookie-expires").get_attribute("data-epoch"))
    cookie = session_cookie(context)
    assert cookie is not None
    absolute_timeout = 43200  # HARDENED_SESSIONS["ABSOLUTE_TIMEOUT"] of the demo
    assert absolute_timeout - 60 < max_age <= absolute_timeout
    assert configured_flags(page)["SESSION_COOKIE_AGE"] == "1209600"
    # What the browser stored: the same moment, give or take the seconds between the
    # login and this page.
    assert abs(cookie["expires"] - shown_expiry) <= 5, (cookie["expires"], shown_expiry)
    assert abs(cookie["expires"] - (time.time() + max_age)) <= 60
    shot(page, "cookie-lifetime")
