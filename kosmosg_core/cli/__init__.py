"""``python -m kosmosg_core``: encode, generate-text, gill-index, convert, bench, workflow, download, eval.

One module per subcommand, each with ``add_parser(sub)`` and ``run(args)``; this module builds the
parser, refuses an output that is one of the inputs, and turns every failure into one line."""

from __future__ import annotations

import argparse
import os

from ..errors import guarded_main
from ..safe_files import refuse_input_as_output
from . import bench, convert, download, encode, evaluate, generate_text, gill_index, workflow

SUBCOMMANDS = (encode, generate_text, gill_index, convert, bench, workflow, download, evaluate)


def _inputs(args: argparse.Namespace) -> list[str]:
    """Every file or folder the command reads: no output may be one of them (or a file in them)."""
    names = ("checkpoint", "llm", "vision", "index", "tokenizer", "source", "src", "data", "sd", "inception_weights")
    found = [getattr(args, name, None) for name in names]
    found += list(getattr(args, "image", None) or [])
    for checkpoint in (getattr(args, "checkpoint", None), getattr(args, "src", None)):
        if checkpoint and os.path.isfile(checkpoint):  # the tokenizer files beside it
            folder = os.path.dirname(os.path.abspath(checkpoint))
            found += [os.path.join(folder, name) for name in ("sentencepiece.bpe.model", "dict.txt")]
    return [item for item in found if item]


def _check_output(args: argparse.Namespace, flag: str = "--out", inside_folders: bool = True) -> None:
    out = getattr(args, flag.lstrip("-").replace("-", "_"), None)
    if out:
        refuse_input_as_output(out, _inputs(args), flag, inside_folders)


class _Parser(argparse.ArgumentParser):
    """argparse with the pack's error format: one ``error:`` line naming the command, exit 2."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m kosmosg_core",
                     description="``python -m kosmosg_core``: encode, convert, bench, download, eval.")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in SUBCOMMANDS:
        command.add_parser(sub)
    return parser


def _run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("encode", "generate-text", "gill-index"):
        _check_output(args)
    elif args.command == "convert":
        _check_output(args, "dst")
    elif args.command == "eval":  # --out is a results folder that reruns resume in
        _check_output(args, inside_folders=False)
    return args.run(args)


def main(argv: list[str] | None = None) -> int:
    """Every failure is one line on stderr (exit 2 for bad input); ``--debug`` shows the traceback."""
    return guarded_main(_run, argv, "python -m kosmosg_core")
