"""results.json and results.md: our numbers beside the published ones."""

from __future__ import annotations

import json
import os

from ..safe_files import atomic_write_text

METRIC_NAMES = {"dino": "DINO ↑", "clip_i": "CLIP-I ↑", "clip_t": "CLIP-T ↑", "fid": "FID ↓", "clip": "CLIP sim ↑",
                "lpips": "LPIPS ↓"}


def markdown_table(title: str, ours: dict, published: list[dict], notes: list[str]) -> str:
    metrics = [m for m in METRIC_NAMES if m in ours]
    lines = [f"## {title}", "", "| model | " + " | ".join(METRIC_NAMES[m] for m in metrics) + " | source |",
             "|---|" + "---|" * (len(metrics) + 1)]
    row = lambda values: " | ".join("–" if values.get(m) is None else f"{values[m]:.3f}" for m in metrics)  # noqa: E731
    lines.append(f"| **ours** | {row(ours)} | this run |")
    lines += [f"| {p['model']} | {row(p)} | {p['source']} |" for p in published]
    lines += [""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def write_results(out_dir: str, result: dict) -> tuple[str, str]:
    """Write both files atomically; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    json_path, md_path = os.path.join(out_dir, "results.json"), os.path.join(out_dir, "results.md")
    table = markdown_table(result["title"], result["metrics"], result["published"], result["notes"])
    for path, text in ((json_path, json.dumps(result, indent=2) + "\n"), (md_path, table)):
        atomic_write_text(path, text)
    return json_path, md_path
