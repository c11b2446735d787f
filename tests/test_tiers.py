"""Every test has a tier (a registered marker, set in conftest.py), so `-m unit` and the other tiers
select the whole suite between them; a test file missing from FILE_TIERS fails collection."""

from __future__ import annotations

import configparser
import subprocess
import sys

from support import TESTS
from support.tiers import FILE_TIERS, TIERS


def registered_markers() -> set[str]:
    parser = configparser.ConfigParser()
    parser.read(TESTS / "pytest.ini")
    return {line.split(":")[0].strip() for line in parser["pytest"]["markers"].splitlines() if line.strip()}


def test_every_tier_is_a_registered_marker_and_strict():
    assert set(TIERS) <= registered_markers()
    assert {tier for tiers in FILE_TIERS.values() for tier in tiers} <= set(TIERS)
    parser = configparser.ConfigParser()
    parser.read(TESTS / "pytest.ini")
    assert "--strict-markers" in parser["pytest"]["addopts"].split()


def test_every_test_file_has_a_tier():
    files = {path.name for path in TESTS.glob("test_*.py")}
    assert files <= set(FILE_TIERS), sorted(files - set(FILE_TIERS))
    stale = {key.split("::")[0] for key in FILE_TIERS} - files
    assert not stale, f"FILE_TIERS names files that are gone: {sorted(stale)}"


def test_no_collected_test_is_outside_every_tier():
    untiered = " and ".join(f"not {tier}" for tier in TIERS)
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", untiered, "."],
                          cwd=TESTS, capture_output=True, text=True, timeout=120)
    assert done.returncode == 5, done.stdout[-3000:] + done.stderr[-3000:]  # 5: no tests collected
    assert " 0 selected" in done.stdout or "no tests collected" in done.stdout, done.stdout[-2000:]
