"""Key rotation at login and invalidation at logout, seen from the browser: a cookie
copied before either event opens nothing afterwards (docs/design.rst, "What the engines do": cycle_key)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.browser.conftest import (
    DemoSite,
    expect,
    key_hash,
    log_in,
    logged_in_as,
    replay_cookie,
    session_cookie,
)


def cookie_value(context: Any) -> str:
    cookie = session_cookie(context)
    assert cookie is not None, "no session cookie in the browser"
    return str(cookie["value"])


def test_login_rotates_the_key_and_the_old_key_opens_nothing(
    demo_site: DemoSite, new_context: Callable[..., Any], shot: Callable[..., Any]
) -> None:
    context = new_context()
    page = context.new_page()
    assert logged_in_as(page, demo_site) is None  # the home page starts a session
    before = cookie_value(context)
    shot(page, "before-login")

    log_in(page, demo_site, "demo")
    after = cookie_value(context)
    assert after != before
    # Sessions are named by their id (16 hex digits of the key hash), never the key.
    expect(page.locator(".messages")).to_contain_text(
        f"A new session replaced the old one at login: {key_hash(before)[:16]} → "
        f"{key_hash(after)[:16]}"
    )
    assert before not in page.content() and after not in page.content()
    assert logged_in_as(page, demo_site) == "demo"
    shot(page, "after-login")

    # The pre-login key, put into another browser (or left there by an attacker who
    # planted it: session fixation): not logged in, and its old record is gone too, since
    # the home page finds no session under it and issues a fresh key.
    attacker = new_context()
    replay_cookie(attacker, demo_site, before)
    attacker_page = attacker.new_page()
    assert logged_in_as(attacker_page, demo_site) is None
    assert cookie_value(attacker) not in {before, after}
    shot(attacker_page, "pre-login-key-replayed")

    # Control: the post-login key, copied the same way, is a logged-in session.
    copy = new_context()
    replay_cookie(copy, demo_site, after)
    assert logged_in_as(copy.new_page(), demo_site) == "demo"


def test_logout_ends_the_session_for_every_copy_of_the_cookie(
    demo_site: DemoSite, new_context: Callable[..., Any], shot: Callable[..., Any]
) -> None:
    context = new_context()
    page = context.new_page()
    log_in(page, demo_site, "demo")
    value = cookie_value(context)

    # Control: before the logout, the cookie alone is the session.
    copy = new_context()
    replay_cookie(copy, demo_site, value)
    copy_page = copy.new_page()
    assert logged_in_as(copy_page, demo_site) == "demo"

    page.locator("nav").get_by_role("button", name="Log out").click()
    page.wait_for_url(demo_site("/"))
    expect(page.locator(".messages")).to_contain_text(
        f"Logged out. Session {key_hash(value)[:16]} was deleted from the store."
    )
    assert logged_in_as(page, demo_site) is None
    shot(page, "after-logout")

    # The pre-logout cookie, replayed in a fresh browser: anonymous.
    replayed = new_context()
    replay_cookie(replayed, demo_site, value)
    replayed_page = replayed.new_page()
    assert logged_in_as(replayed_page, demo_site) is None
    shot(replayed_page, "pre-logout-cookie-replayed")
    # And the copy that was logged in a moment ago is anonymous on reload.
    assert logged_in_as(copy_page, demo_site) is None
