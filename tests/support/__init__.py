"""Helpers for the tests (imported as ``support``, ``support.hostile_harness``, ...), and where the
test data lives.

The official-format fixtures (``kosmosg-official-*``, ``gill-official-*``, each a folder with a
``cases.json``) are found in ``tests/data/fixtures`` (committed: the public tiny ones, so a fresh
clone runs the parity tests) and in ``$KOSMOSG_SHARED/fixtures`` (default ``../shared`` beside the
checkout), where fixtures of other sizes may be added; a name in ``tests/data`` wins. The ComfyUI
0.33.0 tarball and the real tokenizer files (``reference/kosmos-g-tokenizer``, not to be committed)
are only in ``../shared``: without it their tests skip locally, and fail under ``CI=true``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"
DATA = TESTS / "data"
SHARED = Path(os.environ.get("KOSMOSG_SHARED", REPO.parent / "shared"))


def _missing(message: str):
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def require_shared(*parts: str) -> Path:
    """A path under ../shared (or tests/data when it is there too); skips without it, fails under CI=true."""
    for root in (DATA, SHARED):
        path = root.joinpath(*parts)
        if path.exists():
            return path
    _missing(f"{SHARED.joinpath(*parts)} is missing: the shared files must sit beside the checkout (../shared)")


def fixture_roots() -> list[Path]:
    """Where official-format fixtures are looked for, in order."""
    return [DATA / "fixtures", SHARED / "fixtures"]


def fixture_dirs(prefix: str) -> list[Path]:
    """Every official-format fixture named ``prefix*`` (tests/data first, then ../shared: other sizes may be added)."""
    found: dict[str, Path] = {}
    for root in fixture_roots():
        if root.is_dir():
            for path in sorted(root.iterdir()):
                if path.name.startswith(prefix) and (path / "cases.json").is_file():
                    found.setdefault(path.name, path)
    return [found[name] for name in sorted(found)]


def require_fixture(name: str, *parts: str) -> Path:
    """The fixture folder ``name`` (or a file in it); skips without it, fails under CI=true."""
    for root in fixture_roots():
        path = root.joinpath(name, *parts)
        if path.exists():
            return path
    _missing(f"fixture {name} is missing from tests/data/fixtures and {SHARED / 'fixtures'}")


def kosmosg_fixture_dirs() -> list[Path]:
    return fixture_dirs("kosmosg-official")


def gill_fixture_dirs() -> list[Path]:
    return fixture_dirs("gill-official")


def fixture_cases() -> list[tuple[Path, dict]]:
    return [(d, case) for d in kosmosg_fixture_dirs() for case in json.loads((d / "cases.json").read_text())]
