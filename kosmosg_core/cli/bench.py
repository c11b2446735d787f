"""``bench``: load/encode/FLOP-rate benchmark (JSON); the work is kosmosg_core.bench."""

from __future__ import annotations

import argparse
import json


def add_parser(sub) -> None:
    bench = sub.add_parser("bench", help="load/encode/FLOP-rate benchmark at the real size (JSON)")
    bench.add_argument("--size", choices=["real", "tiny"], default="real", help="tiny: a seconds-long smoke run")
    bench.add_argument("--workdir", default=None,
                       help="folder in which a fresh kosmosg-bench-* folder holds the random checkpoints "
                            "(default: the temp dir)")
    bench.add_argument("--dtypes", default="fp32,bf16")
    bench.add_argument("--keep", action="store_true", help="keep the generated checkpoints")
    bench.add_argument("--gill", action="store_true", help="also time GILL generation with/without the KV cache "
                       "(real size: width 4096 at 2 and 4 layers, extrapolated to 32)")
    bench.add_argument("--int8", action="store_true", help="also load and encode with int8 weights (needs torchao)")
    bench.add_argument("--compile", action="store_true", help="also encode with torch.compile (compile time reported)")
    bench.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..bench import run_bench

    print(json.dumps(run_bench(args), indent=2))
    return 0
