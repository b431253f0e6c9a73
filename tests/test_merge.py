"""Property tests of the three-way merge (``hardened_sessions.merge``).

The engine tests (``test_threat_lost_update*.py``, ``test_stateful_model.py``) check
the merge through real stores and races; these check the pure functions against
their definition over arbitrary dicts.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hardened_sessions import merge

KEYS = st.sampled_from(["a", "b", "c", "d", "e", "_auth_user_id", "2fa"])
VALUES = st.one_of(st.none(), st.integers(-3, 3), st.text(max_size=2), st.booleans())
DICTS = st.dictionaries(KEYS, VALUES, max_size=6)
MISSING = object()
# The machines running CI are shared: no per-example deadline.
RELAXED = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _at(d: dict[str, Any], k: str) -> Any:
    return d.get(k, MISSING)


@RELAXED
@given(DICTS, DICTS)
def test_diff_then_apply_turns_old_into_new(old: dict[str, Any], new: dict[str, Any]) -> None:
    target = dict(old)
    merge.apply(target, merge.diff(old, new))
    assert target == new


@RELAXED
@given(DICTS)
def test_no_change_diffs_to_nothing(d: dict[str, Any]) -> None:
    changes = merge.diff(d, dict(d))
    assert changes.changed == {} and changes.deleted == set()


@RELAXED
@given(DICTS, DICTS, DICTS)
def test_ours_wins_on_what_we_touched_and_theirs_stays_elsewhere(
    base: dict[str, Any], ours: dict[str, Any], latest: dict[str, Any]
) -> None:
    merged = merge.merge_onto_latest(base, ours, latest, cleared=False)
    touched = merge.diff(base, ours).touched()
    for k in set(base) | set(ours) | set(latest):
        if k in touched:
            assert _at(merged, k) is _at(ours, k) or _at(merged, k) == _at(ours, k)
        else:
            assert _at(merged, k) is _at(latest, k) or _at(merged, k) == _at(latest, k)


@RELAXED
@given(DICTS, DICTS)
def test_without_a_concurrent_write_the_merge_is_ours(
    base: dict[str, Any], ours: dict[str, Any]
) -> None:
    assert merge.merge_onto_latest(base, ours, dict(base), cleared=False) == ours


@RELAXED
@given(DICTS, DICTS, DICTS)
def test_a_cleared_session_keeps_nothing_of_theirs(
    base: dict[str, Any], ours: dict[str, Any], latest: dict[str, Any]
) -> None:
    assert merge.merge_onto_latest(base, ours, latest, cleared=True) == ours


@RELAXED
@given(DICTS, DICTS, DICTS)
def test_a_removed_flag_stays_removed(
    base: dict[str, Any], ours: dict[str, Any], latest: dict[str, Any]
) -> None:
    base = {**base, "2fa": True}
    ours = {k: v for k, v in ours.items() if k != "2fa"}
    assert "2fa" not in merge.merge_onto_latest(base, ours, latest, cleared=False)


@RELAXED
@given(DICTS, DICTS, DICTS, DICTS)
def test_memory_takes_their_changes_except_ours_and_newer_ones(
    base: dict[str, Any],
    snapshot: dict[str, Any],
    theirs: dict[str, Any],
    current: dict[str, Any],
) -> None:
    after = dict(current)
    merge.apply(after, merge.their_changes_for_memory(base, snapshot, theirs, current))
    ours = merge.diff(base, snapshot).touched()
    their = merge.diff(base, theirs).touched()
    for k in set(base) | set(snapshot) | set(theirs) | set(current):
        newer_in_memory = _at(current, k) != _at(snapshot, k)
        if k in their and k not in ours and not newer_in_memory:
            assert _at(after, k) == _at(theirs, k)
        else:
            assert _at(after, k) == _at(current, k)


@RELAXED
@given(DICTS, DICTS)
def test_memory_after_an_uncontended_save_is_left_alone(
    base: dict[str, Any], snapshot: dict[str, Any]
) -> None:
    changes = merge.their_changes_for_memory(base, snapshot, dict(base), snapshot)
    assert changes.changed == {} and changes.deleted == set()
