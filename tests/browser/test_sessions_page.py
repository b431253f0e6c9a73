"""The demo's "Your sessions" page: a user's live sessions, and "log out other devices"
(``hardened_sessions.user_sessions`` and ``revoke_user_sessions``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.browser.conftest import DemoSite, expect, key_hash, log_in, logged_in_as, session_cookie

PHONE_AGENT = "Mozilla/5.0 (hardened-sessions browser test; the other device)"


def hash_prefix(context: Any) -> str:
    cookie = session_cookie(context)
    assert cookie is not None
    return f"{key_hash(cookie['value'])[:8]}…"


def listed(page: Any) -> dict[str, Any]:
    """Rows of the sessions table by key-hash prefix."""
    return {
        row.locator("code.hash").inner_text(): row
        for row in page.locator("#sessions tr.session").all()
    }


def test_your_sessions_needs_a_login(
    demo_site: DemoSite, new_context: Callable[..., Any], shot: Callable[..., Any]
) -> None:
    page = new_context().new_page()
    page.goto(demo_site("/sessions/"))
    assert page.url == demo_site("/accounts/login/?next=/sessions/")
    shot(page, "login-required")


def test_your_sessions_lists_both_devices_and_logs_out_the_other(
    demo_site: DemoSite, new_context: Callable[..., Any], shot: Callable[..., Any]
) -> None:
    laptop = new_context()
    laptop_page = laptop.new_page()
    log_in(laptop_page, demo_site, "demo")
    # Other tests of this run log in as demo too: end their sessions first, so that
    # exactly two are live below.
    laptop_page.goto(demo_site("/sessions/"))
    laptop_page.click("#logout-others")

    phone = new_context(user_agent=PHONE_AGENT)
    phone_page = phone.new_page()
    log_in(phone_page, demo_site, "demo")

    laptop_page.goto(demo_site("/sessions/"))
    rows = listed(laptop_page)
    assert set(rows) == {hash_prefix(laptop), hash_prefix(phone)}
    expect(rows[hash_prefix(laptop)]).to_have_class("session current")
    expect(rows[hash_prefix(laptop)]).to_contain_text("this browser")
    expect(rows[hash_prefix(phone)]).not_to_contain_text("this browser")
    # DEVICE_METADATA is on in the demo: address and user agent of each session.
    expect(rows[hash_prefix(phone)]).to_contain_text(PHONE_AGENT)
    expect(rows[hash_prefix(phone)]).to_contain_text("127.0.0.1")
    # Never the key itself, only a prefix of its hash.
    content = laptop_page.content()
    for context in (laptop, phone):
        cookie = session_cookie(context)
        assert cookie is not None and cookie["value"] not in content
    shot(laptop_page, "two-sessions")

    # The phone's own view marks the phone as current.
    phone_page.goto(demo_site("/sessions/"))
    expect(listed(phone_page)[hash_prefix(phone)]).to_contain_text("this browser")

    laptop_page.click("#logout-others")
    laptop_page.wait_for_url(demo_site("/sessions/"))
    expect(laptop_page.locator(".messages")).to_have_text("Logged out 1 other session.")
    assert set(listed(laptop_page)) == {hash_prefix(laptop)}
    shot(laptop_page, "after-log-out-other-devices")

    assert logged_in_as(phone_page, demo_site) is None
    shot(phone_page, "other-device-after-reload")
    assert logged_in_as(laptop_page, demo_site) == "demo"


def test_your_sessions_on_the_cache_engine_lists_them_through_the_user_index(
    start_demo_site: Callable[..., Any],
    new_context: Callable[..., Any],
    shot: Callable[..., Any],
) -> None:
    """LocMemCache (like Redis) keeps a per-user index, so the page works there too."""
    with start_demo_site(HS_BROWSER_SESSION_CACHE="locmem") as site:
        laptop, phone = new_context(), new_context()
        laptop_page, phone_page = laptop.new_page(), phone.new_page()
        log_in(laptop_page, site, "demo")
        log_in(phone_page, site, "demo")
        laptop_page.goto(site("/sessions/"))
        expect(laptop_page.locator("#sessions-unsupported")).to_have_count(0)
        assert set(listed(laptop_page)) == {hash_prefix(laptop), hash_prefix(phone)}
        shot(laptop_page, "cache-engine")

        laptop_page.click("#logout-others")
        laptop_page.wait_for_url(site("/sessions/"))
        assert set(listed(laptop_page)) == {hash_prefix(laptop)}
        assert logged_in_as(phone_page, site) is None
