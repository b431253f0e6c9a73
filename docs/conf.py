"""Sphinx configuration of the hardened_sessions documentation.

Built in CI with ``tox -e docs`` (``sphinx-build -n -W``): every warning is an error
and every internal reference must resolve. No intersphinx and no link check: the
build machines reach no documentation sites.
"""

from __future__ import annotations

import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_setup = configparser.ConfigParser()
_setup.read(ROOT / "setup.cfg", encoding="utf-8")

project = "django-hardened-sessions"
author = "The django-hardened-sessions authors"
copyright = "django-hardened-sessions authors"  # noqa: A001 (Sphinx's name)
release = _setup["metadata"]["version"]
version = ".".join(release.split(".")[:2])

extensions: list[str] = []
root_doc = "index"
exclude_patterns = ["_build"]
templates_path: list[str] = []
html_static_path: list[str] = []
html_theme = "alabaster"
html_title = f"{project} {release}"
html_theme_options = {
    "description": "Django session engines that fail closed",
    "fixed_sidebar": True,
}
# Python objects documented by hand (``py:function`` and friends) are cross-referenced;
# names of Django's and other libraries' objects are plain literals, since the build
# resolves no external inventory.
nitpicky = True
default_role = "literal"
