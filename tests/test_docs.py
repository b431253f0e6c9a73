"""The documentation's examples are checked, so they cannot drift from the code.

* Every ``.. code-block:: python`` with ``:caption: settings.py`` in ``docs/`` (and in
  ``README.rst``) is a settings snippet: it is appended to a minimal project's
  settings and ``manage.py check`` must pass on the result, with no error and no
  warning of this package (``check --deploy`` output is not asked for: a snippet that
  shows one setting need not show every deploy setting).
* Every ``.. code-block:: pycon`` is an interactive example: it runs as a doctest
  against the test settings (the db engine on SQLite), in a transaction rolled back
  after it.
"""

from __future__ import annotations

import doctest
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.rst", *sorted((ROOT / "docs").glob("**/*.rst"))]

_BLOCK = re.compile(r"^(?P<indent>[ \t]*)\.\. code-block:: (?P<lang>\S+)[ \t]*\n", re.M)


def code_blocks(path: Path, lang: str) -> list[tuple[str, dict[str, str], str]]:
    """(``file:line``, options, code) of each ``code-block:: lang`` in ``path``."""
    text = path.read_text(encoding="utf-8")
    found = []
    for match in _BLOCK.finditer(text):
        if match.group("lang") != lang:
            continue
        indent = len(match.group("indent"))
        lines = text[match.end() :].split("\n")
        options: dict[str, str] = {}
        body: list[str] = []
        i = 0
        while i < len(lines) and re.match(r"^\s+:\w[\w-]*:", lines[i]):
            name, _, value = lines[i].strip()[1:].partition(":")
            options[name] = value.strip()
            i += 1
        for line in lines[i:]:
            stripped = line.strip()
            if stripped and len(line) - len(line.lstrip()) <= indent:
                break
            body.append(line)
        line_no = text[: match.start()].count("\n") + 1
        found.append(
            (
                f"{path.relative_to(ROOT)}:{line_no}",
                options,
                textwrap.dedent("\n".join(body)).strip("\n"),
            )
        )
    return found


SETTINGS_SNIPPETS = [
    (where, code)
    for path in DOCS
    for where, options, code in code_blocks(path, "python")
    if options.get("caption") == "settings.py"
]
PYCON_EXAMPLES = [(where, code) for path in DOCS for where, _, code in code_blocks(path, "pycon")]

BASE_SETTINGS = """\
SECRET_KEY = "docs-check-not-a-secret-0123456789abcdefghijklmnopqrstuvwxyz-0123456789"
DEBUG = False
ALLOWED_HOSTS = ["localhost"]
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.messages",
    "hardened_sessions",
]
MIDDLEWARE = [
    "hardened_sessions.middleware.HardenedSessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
ROOT_URLCONF = "docs_check_urls"
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": DB_PATH}}
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
"""


def test_the_docs_have_examples_to_check() -> None:
    """Guards the collection itself: a parser change that finds nothing fails here."""
    assert len(SETTINGS_SNIPPETS) >= 3, SETTINGS_SNIPPETS
    assert PYCON_EXAMPLES, "no interactive example was found in docs/"


@pytest.mark.parametrize(
    ("where", "code"), SETTINGS_SNIPPETS, ids=[w for w, _ in SETTINGS_SNIPPETS]
)
def test_settings_snippet_passes_check(where: str, code: str, tmp_path: Path) -> None:
    (tmp_path / "docs_check_urls.py").write_text("urlpatterns = []\n", encoding="utf-8")
    settings_py = (
        f"DB_PATH = {str(tmp_path / 'db.sqlite3')!r}\n{BASE_SETTINGS}\n# {where}\n{code}\n"
    )
    (tmp_path / "docs_check_settings.py").write_text(settings_py, encoding="utf-8")
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "docs_check_settings",
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
    }
    result = subprocess.run(
        [sys.executable, "-m", "django", "check", "--fail-level", "WARNING"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"{where}:\n{result.stdout}\n{result.stderr}"


@pytest.mark.django_db
@pytest.mark.parametrize(("where", "code"), PYCON_EXAMPLES, ids=[w for w, _ in PYCON_EXAMPLES])
def test_interactive_example_runs(where: str, code: str) -> None:
    parser = doctest.DocTestParser()
    test = parser.get_doctest(code, {}, where, where, 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    out: list[str] = []
    runner.run(test, out=out.append)
    assert runner.failures == 0, "".join(out)
