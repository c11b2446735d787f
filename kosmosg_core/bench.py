"""``python -m kosmosg_core bench``: load time, memory, encode latency and FLOP rate.

Writes a random checkpoint of the real size in the official format (and its converted
safetensors), then measures each (file, dtype) pair in a fresh subprocess so that peak RSS and
timings of one measurement do not leak into the next. Files are read once before timing, so
load times are page-cache times (CPU-side work), comparable with the plain read measured in the
same way in the same run.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

NEEDED_DISK_BYTES = {"real": 8_500_000_000, "tiny": 50_000_000}
TWO_IMAGE_PROMPT = "<i> wearing <i>, a photo in the style of a watercolor painting"


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def plain_read_seconds(path: str) -> float:
    buffer = bytearray(64 << 20)
    view = memoryview(buffer)
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as handle:
        while handle.readinto(view):
            pass
    return time.perf_counter() - start


def matmul_flops_per_second() -> float:
    """Best of 5 fp32 2048x2048 matmuls: the machine's attainable dense rate in this process."""
    import torch

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * 2048**3 / best


def worker(path: str, dtype: str, tokenizer: str, images: int, repeats: int) -> dict:
    """Runs in a subprocess: load, then encode; reports JSON."""
    import torch
    from PIL import Image
    from torch.utils.flop_counter import FlopCounterMode

    from .loading import load_kosmosg

    import sentencepiece  # noqa: F401  (import cost is not load cost)
    import transformers.models.kosmos2.modeling_kosmos2  # noqa: F401

    baseline = _rss_bytes()
    start = time.perf_counter()
    encoder = load_kosmosg(path, tokenizer, dtype=dtype)
    load_seconds = time.perf_counter() - start
    peak = _peak_rss_bytes()
    params = sum(p.numel() for p in encoder.model.parameters())
    weight_bytes = sum(p.numel() * p.element_size() for p in encoder.model.parameters())

    pictures = [Image.new("RGB", (300 + 17 * i, 260), (40 * i % 255, 90, 160)) for i in range(images)]
    prompt = TWO_IMAGE_PROMPT if images == 2 else " ".join(["<i>"] * images) + " in the jungle"
    encoder.encode(prompt, pictures)  # warm-up, also computes the cached null embedding
    latencies = []
    for _ in range(repeats):
        start = time.perf_counter()
        encoder.encode(prompt, pictures)
        latencies.append(time.perf_counter() - start)
    with FlopCounterMode(display=False) as counter:
        encoder.encode(prompt, pictures)
    flops = counter.get_total_flops()
    latency = sorted(latencies)[len(latencies) // 2]
    return {
        "file": os.path.basename(path),
        "dtype": dtype,
        "parameters": params,
        "load_seconds": load_seconds,
        "weight_bytes": weight_bytes,
        "peak_rss_during_load_bytes": peak - baseline,
        "peak_rss_over_weight_bytes": round((peak - baseline) / weight_bytes, 3),
        "encode_images": images,
        "encode_tokens": len(encoder.layout(prompt, images).tokens),
        "encode_seconds_median": round(latency, 4),
        "encode_flops": flops,
        "encode_flops_per_second": flops / latency,
        "torch_threads": torch.get_num_threads(),
    }


def _run_worker(path: str, dtype: str, tokenizer: str, images: int, repeats: int) -> dict:
    command = [sys.executable, "-m", "kosmosg_core.bench", path, dtype, tokenizer, str(images), str(repeats)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"bench worker failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def gill_generation_bench(width: int, layers: int, new_tokens: int = 32, repeats: int = 2) -> dict:
    """Greedy generation with and without the KV cache on a random OPT of the given width/depth."""
    import torch

    from .gill import load_gill
    from .gill.synthetic import tiny_heads_config, write_clip_vision, write_opt, write_release

    with tempfile.TemporaryDirectory(prefix="kosmosg-gill-bench-") as root:
        write_opt(os.path.join(root, "opt"), hidden=width, layers=layers, ffn=4 * width, dtype=torch.float32)
        write_clip_vision(os.path.join(root, "clip"))
        write_release(os.path.join(root, "gill"), tiny_heads_config(llm_dim=width))
        gill = load_gill(os.path.join(root, "gill"), os.path.join(root, "opt"), os.path.join(root, "clip"))
    gill.lm.resize_token_embeddings(50274, mean_resizing=False)  # OPT-6.7B's vocabulary, so the LM head costs what it really costs
    prompt = "a man walks his dog on the beach. <i> they reach the old bridge at sunset, and then"
    image = [__import__("PIL.Image", fromlist=["Image"]).new("RGB", (64, 64), (90, 120, 200))]
    context_tokens = len(gill.context(prompt, image)[1])
    timings = {}
    for use_cache in (True, False):
        kwargs = dict(max_new_tokens=new_tokens, min_word_tokens=new_tokens, stop_at_newline=False, use_cache=use_cache)
        gill.generate(prompt, image, **{**kwargs, "max_new_tokens": 2})
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            ids = gill.generate(prompt, image, **kwargs).ids
            best = min(best, time.perf_counter() - start)
        timings["cache" if use_cache else "recompute"] = (best, ids)
    assert torch.equal(timings["cache"][1], timings["recompute"][1]), "cache and recomputation disagree"
    return {
        "llm": f"random OPT, width {width}, {layers} layers (OPT-6.7B has 32), fp32, vocab 50274",
        "context_tokens": context_tokens,
        "new_tokens": new_tokens,
        "seconds_with_cache": round(timings["cache"][0], 3),
        "seconds_recompute": round(timings["recompute"][0], 3),
        "tokens_per_second_with_cache": round(new_tokens / timings["cache"][0], 2),
        "tokens_per_second_recompute": round(new_tokens / timings["recompute"][0], 2),
        "speedup": round(timings["recompute"][0] / timings["cache"][0], 2),
        "same_ids": True,
    }


def run_bench(args) -> dict:
    from .convert import convert
    from .synthetic import dict_lines_for, official_size, tiny_size, write_official_checkpoint, write_tiny_tokenizer

    workdir = args.workdir or tempfile.mkdtemp(prefix="kosmosg-bench-")
    os.makedirs(workdir, exist_ok=True)
    free = shutil.disk_usage(workdir).free
    if free < NEEDED_DISK_BYTES[args.size]:
        raise SystemExit(
            f"bench needs about {NEEDED_DISK_BYTES[args.size] / 1e9:.1f} GB free in {workdir}, found "
            f"{free / 1e9:.1f} GB; pass --workdir on a larger disk."
        )
    try:
        config = official_size() if args.size == "real" else tiny_size(vocab_size=400)
        tokenizer = write_tiny_tokenizer(os.path.join(workdir, "tokenizer"), dict_lines=dict_lines_for(config.vocab_size))
        pt_path = os.path.join(workdir, "checkpoint_final.pt")
        st_path = os.path.join(workdir, "checkpoint_final.safetensors")
        start = time.perf_counter()
        write_official_checkpoint(pt_path, config)
        generate_seconds = time.perf_counter() - start
        start = time.perf_counter()
        convert(pt_path, st_path, tokenizer=tokenizer)
        convert_seconds = time.perf_counter() - start

        reads = {}
        for path in (pt_path, st_path):
            plain_read_seconds(path)  # bring into the page cache, as the loads will find it
            reads[os.path.basename(path)] = {
                "bytes": os.path.getsize(path),
                "plain_read_seconds": min(plain_read_seconds(path) for _ in range(2)),
            }
        repeats = 3 if args.size == "real" else 2
        runs = []
        for dtype in args.dtypes.split(","):
            for path in (pt_path, st_path):
                run = _run_worker(path, dtype, tokenizer, 2, repeats)
                run["load_over_plain_read"] = round(run["load_seconds"] / reads[run["file"]]["plain_read_seconds"], 2)
                runs.append(run)
        matmul = matmul_flops_per_second()
        for run in runs:
            run["encode_flops_over_matmul_fp32"] = round(run["encode_flops_per_second"] / matmul, 3)
        gill_size = (4096, 4) if args.size == "real" else (128, 2)
        gill = gill_generation_bench(*gill_size) if args.gill else None
        return {
            "gill_generation": gill,
            "size": args.size,
            "note": "random weights in the official format; files in the page cache; each load in a fresh process",
            "generate_pt_seconds": round(generate_seconds, 2),
            "convert_seconds": round(convert_seconds, 2),
            "files": reads,
            "matmul_fp32_2048_flops_per_second": matmul,
            "runs": runs,
        }
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    _path, _dtype, _tokenizer, _images, _repeats = sys.argv[1:6]
    print(json.dumps(worker(_path, _dtype, _tokenizer, int(_images), int(_repeats))))
