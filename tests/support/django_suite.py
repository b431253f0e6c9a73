"""Django's own tests, fetched from the installed Django's sdist.

The ``tests/`` folder of the Django source distribution is not installed with Django.
:func:`sdist_archive` downloads the sdist of exactly the installed version with pip
(once; cached in ``HS_DJANGO_SDIST_CACHE`` or ``.cache/django-sdist`` at the repository
root). Two users:

* :func:`load_mixin` executes only ``SessionTestsMixin`` from
  ``tests/sessions_tests/tests.py``, with the file's own imports minus the two that
  need ``django.contrib.sessions`` installed (its ``Session`` model and the test app's
  custom model, which the mixin does not use);
* :func:`tests_dir` extracts the whole ``tests/`` folder, for Django's own
  ``runtests.py`` (``tests/django_own/run.py``).

Nothing of Django's test code is copied into this repository.

This module imports nothing but the standard library and Django, so that
``tests/django_own/run.py`` can load it by path without the repository on
``sys.path``.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import django

SUITE_PATH = "tests/sessions_tests/tests.py"
_SKIPPED_IMPORTS = {"django.contrib.sessions.models", "models"}


def cache_dir() -> Path:
    default = Path(__file__).resolve().parents[2] / ".cache" / "django-sdist"
    return Path(os.environ.get("HS_DJANGO_SDIST_CACHE", default))


def sdist_archive(version: str | None = None) -> Path:
    """The sdist (``.tar.gz``) of Django ``version`` (default: the installed one).

    Downloaded with ``pip download --no-binary :all: --no-deps`` into a scratch folder
    and moved into the cache in one rename, so that runs side by side (``tox p``)
    never see half an archive.
    """
    version = version or django.get_version()
    target = cache_dir() / version
    archives = sorted(target.glob("*.tar.gz"))
    if archives:
        return archives[0]
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target, prefix=".download-") as scratch:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-binary",
                ":all:",
                "--no-deps",
                "--dest",
                scratch,
                f"django=={version}",
            ],
            check=True,
            timeout=600,
        )
        downloaded = [p for p in Path(scratch).iterdir() if p.name.endswith(".tar.gz")]
        if len(downloaded) != 1:
            raise RuntimeError(f"pip download of django=={version} gave {downloaded!r}")
        archive = target / downloaded[0].name
        os.replace(downloaded[0], archive)
    return archive


def _sdist_root(tar: tarfile.TarFile) -> str:
    """The archive's top folder (``django-5.2.19``), checked against its test runner."""
    names = tar.getnames()
    root = names[0].split("/", 1)[0]
    if f"{root}/tests/runtests.py" not in names:
        raise RuntimeError(f"{tar.name}: no {root}/tests/runtests.py; not a Django sdist?")
    return root


def suite_source() -> str:
    """The text of ``tests/sessions_tests/tests.py`` of the installed Django."""
    target = cache_dir() / django.get_version()
    suite = target / "sessions_tests_tests.py"
    if suite.exists():
        return suite.read_text(encoding="utf-8")
    with tarfile.open(sdist_archive()) as tar:
        extracted = tar.extractfile(f"{_sdist_root(tar)}/{SUITE_PATH}")
        assert extracted is not None
        text = extracted.read().decode("utf-8")
    partial = suite.with_name(f".{suite.name}.{os.getpid()}")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, suite)
    return text


def tests_dir(version: str | None = None) -> Path:
    """The ``tests/`` folder of Django ``version``'s sdist (default: the installed one).

    Extracted once (with tarfile's ``data`` filter: no links out of the folder, no
    special files) into a scratch folder and renamed into place when complete.
    """
    version = version or django.get_version()
    target = cache_dir() / version / "tests"
    if (target / "runtests.py").exists():
        return target
    archive = sdist_archive(version)
    with (
        tempfile.TemporaryDirectory(dir=target.parent, prefix=".extract-") as scratch,
        tarfile.open(archive) as tar,
    ):
        prefix = f"{_sdist_root(tar)}/tests/"
        members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
        tar.extractall(scratch, members=members, filter="data")
        try:
            os.rename(Path(scratch) / prefix, target)
        except OSError:
            # Another run extracted it meanwhile (rename onto a non-empty folder fails).
            if not (target / "runtests.py").exists():
                raise
    return target


def load_mixin() -> type[Any]:
    """Return Django's ``SessionTestsMixin`` for the installed Django version."""
    tree = ast.parse(suite_source())
    body: list[ast.stmt] = []
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and (node.module in _SKIPPED_IMPORTS):
            continue
        if (
            isinstance(node, (ast.Import, ast.ImportFrom))
            or isinstance(node, ast.ClassDef)
            and node.name == "SessionTestsMixin"
        ):
            body.append(node)
    module = ast.Module(body=body, type_ignores=[])
    namespace: dict[str, Any] = {"__name__": "django_sessions_tests_suite"}
    exec(compile(module, f"<django {django.get_version()} {SUITE_PATH}>", "exec"), namespace)
    return namespace["SessionTestsMixin"]  # type: ignore[no-any-return]
