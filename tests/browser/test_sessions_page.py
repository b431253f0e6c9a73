""" "Your sessions" (``hardened_sessions.urls`` under ``sessions/`` in the demo): a user's
live sessions, each named by its session id (the admin's row id), ending one or all
others behind a confirmation; the ended device lands on the login page, told why."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.browser.conftest import DemoSite, expect, key_hash, log_in, logged_in_as, session_cookie

PHONE_AGENT = "Mozilla/5.0 (hardened-sessions browser test; the other device)"
ENDED_MESSAGE = "Your session was ended (signed out elsewhere, or expired). Please log in again."


def session_id(context: Any) -> str:
    """What every page of the demo names a session by: 16 hex digits of its key hash."""
    cookie = session_cookie(context)
    assert cookie is not None
    return key_hash(cookie["value"])[:16]


def listed(page: Any) -> dict[str, Any]:
    """Rows of the sessions table by session id."""
    return {
        row.locator("code.handle").inner_text(): row
        for row in page.locator("#hs-sessions tr.hs-session").all()
    }


def end_other_sessions(page: Any, site: DemoSite) -> None:
    page.goto(site("/sessions/"))
    if page.locator("#hs-end-others").count():
        page.click("#hs-end-others")
        page.click("#hs-confirm")
        page.wait_for_url(site("/sessions/"))


def test_your_sessions_needs_a_login(
    demo_site: DemoSite, new_context: Callable[..., Any], shot: Callable[..., Any]
) -> None:
    page = new_context().new_page()
    page.goto(demo_site("/sessions/"))
    assert page.url == demo_site("/accounts/login/?next=/sessions/")
    shot(page, "login-required")


def test_end_another_device_from_your_sessions(
    demo_site: DemoSite, new_context: Callable[..., Any], shot: Callable[..., Any]
) -> None:
    laptop = new_context()
    laptop_page = laptop.new_page()
    log_in(laptop_page, demo_site, "demo")
    # Other tests of this run log in as demo too: end their sessions first, so that
    # exactly two are live below.
    end_other_sessions(laptop_page, demo_site)

    phone = new_context(user_agent=PHONE_AGENT)
    phone_page = phone.new_page()
    log_in(phone_page, demo_site, "demo")

    # The same id on the home page, on "Your sessions" (and in the admin: test_admin).
    laptop_page.goto(demo_site("/"))
    expect(laptop_page.locator("code.session-id")).to_have_text(session_id(laptop))

    laptop_page.goto(demo_site("/sessions/"))
    rows = listed(laptop_page)
    assert set(rows) == {session_id(laptop), session_id(phone)}
    expect(rows[session_id(laptop)]).to_have_class("hs-session current")
    expect(rows[session_id(laptop)]).to_contain_text("this browser")
    expect(rows[session_id(phone)]).not_to_contain_text("this browser")
    # DEVICE_METADATA is on in the demo: address and user agent of each session.
    expect(rows[session_id(phone)]).to_contain_text(PHONE_AGENT)
    expect(rows[session_id(phone)]).to_contain_text("127.0.0.0")  # True keeps the /24
    # Never the key itself, nor any part of it.
    content = laptop_page.content()
    for context in (laptop, phone):
        cookie = session_cookie(context)
        assert cookie is not None and cookie["value"] not in content
    # In the site's layout: its navigation is there.
    expect(laptop_page.locator("nav")).to_contain_text("Your sessions")
    shot(laptop_page, "two-sessions")

    # The phone's own view marks the phone as current.
    phone_page.goto(demo_site("/sessions/"))
    expect(listed(phone_page)[session_id(phone)]).to_contain_text("this browser")

    # End the phone's session from the laptop: a confirmation first, that ends nothing.
    laptop_page.goto(demo_site("/sessions/"))
    rows[session_id(phone)].locator("a.end").click()
    laptop_page.wait_for_url(demo_site(f"/sessions/{session_id(phone)}/end/"))
    expect(laptop_page.locator("h1")).to_have_text("End this session?")
    shot(laptop_page, "confirm-end")
    assert logged_in_as(new_page := phone.new_page(), demo_site) == "demo"
    new_page.close()

    laptop_page.click("#hs-confirm")
    laptop_page.wait_for_url(demo_site("/sessions/"))
    expect(laptop_page.locator(".messages")).to_contain_text("ended.")
    assert set(listed(laptop_page)) == {session_id(laptop)}
    shot(laptop_page, "after-ending-the-phone")

    # The phone, on its next page: the login page, saying why.
    phone_page.goto(demo_site("/sessions/"))
    phone_page.wait_for_url(demo_site("/accounts/login/?next=/sessions/"))
    expect(phone_page.locator(".messages")).to_have_text(ENDED_MESSAGE)
    shot(phone_page, "ended-elsewhere-login-page")
    # Said once: the ended cookie is gone, the next page does not repeat it.
    phone_page.goto(demo_site("/"))
    expect(phone_page.locator(".messages")).to_have_count(0)
    assert logged_in_as(phone_page, demo_site) is None
    assert logged_in_as(laptop_page, demo_site) == "demo"


def test_end_all_other_sessions_and_own_session(
    demo_site: DemoSite, new_context: Callable[..., Any], shot: Callable[..., Any]
) -> None:
    laptop, phone, tablet = new_context(), new_context(), new_context()
    laptop_page, phone_page, tablet_page = laptop.new_page(), phone.new_page(), tablet.new_page()
    for page in (laptop_page, phone_page, tablet_page):
        log_in(page, demo_site, "demo")

    laptop_page.goto(demo_site("/sessions/"))
    laptop_page.click("#hs-end-others")
    laptop_page.wait_for_url(demo_site("/sessions/end-others/"))
    expect(laptop_page.locator("h1")).to_have_text("End all other sessions?")
    shot(laptop_page, "confirm-end-others")
    laptop_page.click("#hs-confirm")
    laptop_page.wait_for_url(demo_site("/sessions/"))
    expect(laptop_page.locator(".messages")).to_contain_text("other session")
    assert set(listed(laptop_page)) == {session_id(laptop)}
    assert logged_in_as(phone_page, demo_site) is None
    assert logged_in_as(tablet_page, demo_site) is None

    # Ending this browser's own session is logging out.
    laptop_page.goto(demo_site("/sessions/"))
    listed(laptop_page)[session_id(laptop)].locator("a.end").click()
    expect(laptop_page.locator("#hs-confirm")).to_have_text("Sign out")
    laptop_page.click("#hs-confirm")
    laptop_page.wait_for_url(demo_site("/accounts/login/"))
    shot(laptop_page, "own-session-ended")
    assert logged_in_as(laptop_page, demo_site) is None


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
        expect(laptop_page.locator("#hs-sessions-unavailable")).to_have_count(0)
        assert set(listed(laptop_page)) == {session_id(laptop), session_id(phone)}
        shot(laptop_page, "cache-engine")

        end_other_sessions(laptop_page, site)
        assert set(listed(laptop_page)) == {session_id(laptop)}
        phone_page.goto(site("/sessions/"))
        expect(phone_page.locator(".messages")).to_have_text(ENDED_MESSAGE)
