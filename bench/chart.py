"""The PNG chart of a run's results (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

ROLE_COLOURS = {
    "hardened": "#1f77b4",
    "stock": "#ff7f0e",
    "peer": "#2ca02c",
    "floor": "#7f7f7f",
}
ROLE_LABELS = {
    "hardened": "hardened_sessions",
    "stock": "Django",
    "peer": "django-redis-sessions",
    "floor": "raw client (floor)",
}


def _micro(ax: Any, cases: list[dict[str, Any]], op: str) -> None:
    chosen = [c for c in cases if c["op"] == op]
    if not chosen:
        ax.set_visible(False)
        return
    roles = ["hardened", "stock", "peer", "floor"]
    width = 0.2
    labels = []
    for i, case in enumerate(chosen):
        labels.append(f"{case['group']}\n{case['payload']}")
        by_role = {s["role"]: s for s in case["sides"]}
        for j, role in enumerate(roles):
            side = by_role.get(role)
            if side is None or not side["rounds_ops_per_s"]:
                continue
            ax.bar(
                i + (j - 1.5) * width,
                side["median_ops_per_s"],
                width,
                color=ROLE_COLOURS[role],
                label=ROLE_LABELS[role] if i == 0 or role == "peer" else None,
            )
    ax.set_yscale("log")
    ax.set_xticks(range(len(chosen)))
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("operations/s (median, log)")
    ax.set_title(f"micro: {op}")
    handles, names = ax.get_legend_handles_labels()
    unique = dict(zip(names, handles, strict=False))
    ax.legend(unique.values(), unique.keys(), fontsize=7, loc="upper right")
    ax.grid(axis="y", which="both", alpha=0.3)


def _concurrency(ax: Any, cases: list[dict[str, Any]]) -> None:
    if not cases:
        ax.set_visible(False)
        return
    stores = sorted({c["store"] for c in cases})
    for store in stores:
        rows = sorted((c for c in cases if c["store"] == store), key=lambda c: c["threads"])
        threads = [c["threads"] for c in rows]
        for side, style in (("hardened", "-o"), ("django", "--s")):
            ax.plot(
                threads,
                [c["sides"][side]["median_ops_per_s"] for c in rows],
                style,
                label=f"{store}: {'hardened' if side == 'hardened' else 'Django'}",
            )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("threads")
    ax.set_ylabel("read-modify-write/s")
    ax.set_title("concurrency (4 KiB)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)


def _e2e(ax: Any, section: dict[str, Any] | None) -> None:
    cases = (section or {}).get("cases") or []
    if not cases:
        ax.set_visible(False)
        return
    width = 0.35
    for i, case in enumerate(cases):
        for j, (side, role) in enumerate((("hardened", "hardened"), ("stock", "stock"))):
            ax.bar(
                i + (j - 0.5) * width,
                case["sides"][side]["median_requests_per_s"],
                width,
                color=ROLE_COLOURS[role],
                label=ROLE_LABELS[role] if i == 0 else None,
            )
    ax.set_xticks(range(len(cases)))
    ax.set_xticklabels([f"{c['store']}\n{c['endpoint']}" for c in cases], fontsize=8)
    ax.set_ylabel("requests/s (median)")
    ax.set_title(f"end to end: gunicorn, {section.get('workers')} sync workers")  # type: ignore[union-attr]
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)


def draw(results: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sections = results["sections"]
    micro = sections.get("micro") or []
    fig = plt.figure(figsize=(16, 20))
    grid = fig.add_gridspec(4, 2, height_ratios=[1, 1, 1, 0.9])
    for row, op in enumerate(("rmw", "create", "read")):
        _micro(fig.add_subplot(grid[row, :]), micro, op)
    _concurrency(fig.add_subplot(grid[3, 0]), sections.get("concurrency") or [])
    _e2e(fig.add_subplot(grid[3, 1]), sections.get("e2e"))
    machine = results["machine"]
    caveats = " ".join(results.get("caveats") or [])
    fig.suptitle(
        f"hardened_sessions benchmarks — {results['started']} — {machine.get('cpu')} "
        f"({machine.get('cpu_count')} cores), Python {machine['python'].split()[0]}, "
        f"Django {machine['packages'].get('Django')}\n{caveats}",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
