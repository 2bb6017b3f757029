"""The README and docs/ pages show library code: every deepclust name they import exists."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
IMPORT = re.compile(r"^\s*from (deepclust[\w.]*) import ([\w, ]+?)\s*(?:#.*)?$", re.M)


def _shown_imports():
    for page in PAGES:
        for block in re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), re.S):
            for module, names in IMPORT.findall(block):
                for name in names.split(","):
                    yield page.name, module, name.strip()


def test_the_pages_show_library_code():
    assert len(list(_shown_imports())) >= 15


@pytest.mark.parametrize("page, module, name", list(_shown_imports()))
def test_every_name_a_page_imports_exists(page, module, name):
    assert hasattr(importlib.import_module(module), name), f"{page}: from {module} import {name}"
