"""Running a hostile input and judging the outcome: one clear line, nothing written, nothing lost.

Each case runs in its own process under an address-space cap and a time limit (a memory blow-up or
a hang fails the case instead of the suite), with canaries: the folders the case may not change are
fingerprinted before and compared after, and the process may write only where it is told.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ADDRESS_SPACE_CAP = 8 << 30  # torch alone maps ~2 GiB of address space; a blow-up asks for far more
CASE_TIMEOUT_S = 180  # generous: a hang is forever, a slow 2-core CI machine is not


def _limit_memory() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_CAP, ADDRESS_SPACE_CAP))


@dataclass
class Outcome:
    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool

    def describe(self) -> str:
        return (f"rc={self.returncode} timed_out={self.timed_out}\n"
                f"--- stdout\n{self.stdout[-3000:]}\n--- stderr\n{self.stderr[-3000:]}")


def run_python(args: list[str], cwd: str | os.PathLike | None = None, env: dict | None = None,
               timeout: float = CASE_TIMEOUT_S, stdin: str | None = None) -> Outcome:
    """``python ARGS`` in a fresh process with the memory cap; never raises on timeout."""
    inherited = {k: v for k, v in os.environ.items() if k != "KOSMOSG_DEBUG"}
    full_env = {**inherited, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]),
                "KOSMOSG_NO_CONVERT_CACHE": os.environ.get("KOSMOSG_NO_CONVERT_CACHE", "1"),
                "PYTHONDONTWRITEBYTECODE": "1", **(env or {})}
    try:
        done = subprocess.run([sys.executable, *args], cwd=cwd, env=full_env, capture_output=True, text=True,
                              timeout=timeout, preexec_fn=_limit_memory, input=stdin if stdin is not None else "")
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        return Outcome(None, out, err, True)
    return Outcome(done.returncode, done.stdout, done.stderr, False)


def run_cli(args: list[str], **kwargs) -> Outcome:
    """``python -m kosmosg_core ARGS``."""
    return run_python(["-m", "kosmosg_core", *map(str, args)], **kwargs)


def assert_clear_error(outcome: Outcome, pattern: str | None = None, returncode: int = 2) -> str:
    """The run refused with one ``error:`` line (no traceback), exit ``returncode``; returns that line."""
    import re

    assert not outcome.timed_out, "the step hung\n" + outcome.describe()
    assert "Traceback" not in outcome.stderr and "Traceback" not in outcome.stdout, outcome.describe()
    assert outcome.returncode == returncode, outcome.describe()
    lines = [line for line in outcome.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, outcome.describe()
    assert len(lines[0]) < 2100, lines[0]
    if pattern:
        assert re.search(pattern, lines[0], re.IGNORECASE | re.DOTALL), f"{pattern!r} not in {lines[0]!r}"
    return lines[0]


def fingerprint(*roots: str | os.PathLike) -> dict[str, str]:
    """path -> content hash (or kind) of everything under ``roots``: the canary's memory."""
    prints: dict[str, str] = {}
    for root in map(Path, roots):
        if not root.exists():
            continue
        for path in [root, *root.rglob("*")]:
            if path.is_symlink():
                prints[str(path)] = "link->" + os.readlink(path)
            elif path.is_file():
                prints[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
            elif path.is_dir():
                prints[str(path)] = "dir"
            else:
                prints[str(path)] = "special"
    return prints


class Canary:
    """Fingerprints folders before a case; :meth:`check` fails if anything there changed, appeared
    or vanished (``allowed`` names paths the case is meant to create)."""

    def __init__(self, *roots: str | os.PathLike):
        self.roots = roots
        self.before = fingerprint(*roots)

    def changes(self, allowed: tuple[str | os.PathLike, ...] = ()) -> list[str]:
        after = fingerprint(*self.roots)
        allowed_set = {str(Path(a)) for a in allowed}
        changed = []
        for path in sorted(set(self.before) | set(after)):
            if path in allowed_set or any(path.startswith(a + os.sep) for a in allowed_set):
                continue
            if self.before.get(path) != after.get(path):
                state = "written" if path not in self.before else "deleted" if path not in after else "changed"
                changed.append(f"{state}: {path}")
        return changed

    def check(self, allowed: tuple[str | os.PathLike, ...] = ()) -> None:
        changed = self.changes(allowed)
        assert not changed, "files changed by a refused input:\n" + "\n".join(changed)
