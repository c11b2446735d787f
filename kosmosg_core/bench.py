"""``python -m kosmosg_core bench``: load time, memory, encode latency and FLOP rate.

Writes a random checkpoint of the real size in the official format (and its converted
safetensors), then measures each (file, dtype) pair in a fresh subprocess so that peak RSS and
timings of one measurement do not leak into the next. Files are read once before timing, so
load times are page-cache times (CPU-side work), comparable with the plain read measured in the
same way in the same run. Load times are the best of two fresh processes: on a shared or virtual
machine the first touch of fresh memory varies by tens of percent between runs.
"""

from __future__ import annotations

import gc
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from .kosmosg.converted_cache import CACHE_FOLDER

NEEDED_DISK_BYTES = {"real": 16_000_000_000, "tiny": 50_000_000}  # .pt + converted + the fp32 cache


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    """This process's own high-water mark (VmHWM). Not ``ru_maxrss``: Linux carries that across
    fork and exec, so a worker would report its parent's peak when the parent was bigger."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def best_plain_read_seconds(path: str) -> float:
    plain_read_seconds(path)  # bring into the page cache, as the loads will find it
    return min(plain_read_seconds(path) for _ in range(2))


def fresh_memory_seconds(nbytes: int) -> float:
    """Allocate and zero ``nbytes`` of fresh memory the way a cast load allocates its weights: the
    floor of any load that does not map the file (a plain read reuses one buffer and pays none)."""
    import torch

    from .weights.host_memory import empty_weight

    start = time.perf_counter()
    blocks = [empty_weight((min(256 << 20, nbytes - done),), torch.uint8).zero_()
              for done in range(0, nbytes, 256 << 20)]
    seconds = time.perf_counter() - start
    del blocks
    return seconds


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


PROMPTS = {  # name -> (prompt, number of images)
    "text_only": ("a watercolor painting of a lighthouse on a cliff at sunset", 0),
    "one_image": ("<i> in the jungle, a photo", 1),
    "four_images": ("<i> and <i> wearing <i> in front of <i>, a photo", 4),
}


def _picture(index: int):
    from PIL import Image

    return Image.new("RGB", (300 + 17 * index, 260), (40 * index % 255, 90, 160))


def _encode_timings(encoder, repeats: int) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    results = {}
    for name, (prompt, images) in PROMPTS.items():
        pictures = [_picture(i) for i in range(images)]
        encoder.encode(prompt, pictures)  # warm-up, also computes the cached null embedding
        latencies = []
        for _ in range(repeats):
            start = time.perf_counter()
            encoder.encode(prompt, pictures)
            latencies.append(time.perf_counter() - start)
        with FlopCounterMode(display=False) as counter:
            encoder.encode(prompt, pictures)
        latency = sorted(latencies)[len(latencies) // 2]
        results[name] = {
            "images": images,
            "tokens": len(encoder.layout(prompt, images).tokens),
            "seconds_median": round(latency, 4),
            "flops": counter.get_total_flops(),
            "flops_per_second": counter.get_total_flops() / latency,
        }
    return results


def worker(path: str, dtype: str, tokenizer: str, repeats: int, quantization: str, cache: bool,
           compiled: bool = False) -> dict:
    """Runs in a subprocess: load (until every weight is resident), then optionally encode; JSON."""
    import sentencepiece  # noqa: F401  (import cost is not load cost)
    import torch
    import transformers.models.kosmos2.modeling_kosmos2  # noqa: F401

    from .kosmosg.loading import load_kosmosg
    from .weights.quantization import resident_weight_bytes

    if quantization != "none":
        from .weights.quantization import import_torchao

        import_torchao()  # import cost is not load cost
    gc.collect()  # nor is the interpreter's overdue sweep of the objects those imports made
    baseline = _rss_bytes()
    start = time.perf_counter()
    encoder = load_kosmosg(path, tokenizer, dtype=dtype, quantization=quantization, cache_converted=cache)
    load_seconds = time.perf_counter() - start
    peak = _peak_rss_bytes()
    weight_bytes = resident_weight_bytes(encoder.model)
    compile_seconds = None
    if compiled:
        start = time.perf_counter()
        encoder.compile()
        for prompt, images in PROMPTS.values():  # compile for each shape family before timing
            encoder.encode(prompt, [_picture(i) for i in range(images)])
        compile_seconds = round(time.perf_counter() - start, 2)
    return {
        "file": os.path.basename(path),
        "dtype": dtype,
        "quantization": quantization,
        "parameters": sum(p.numel() for p in encoder.model.parameters()),
        "load_seconds": round(load_seconds, 3),
        "weight_bytes": weight_bytes,
        "peak_rss_during_load_bytes": peak - baseline,
        "peak_rss_over_weight_bytes": round((peak - baseline) / weight_bytes, 3),
        "compiled": compiled,
        "compile_and_first_encodes_seconds": compile_seconds,
        "encode": _encode_timings(encoder, repeats) if repeats else None,
        "matmul_fp32_2048_flops_per_second": matmul_flops_per_second() if repeats else None,
        "torch_threads": torch.get_num_threads(),
    }


def _run_worker(path: str, dtype: str, tokenizer: str, repeats: int = 0, quantization: str = "none",
                cache: bool = False, compiled: bool = False) -> dict:
    return _run_module([path, dtype, tokenizer, str(repeats), quantization, "cache" if cache else "no-cache",
                        "compile" if compiled else "eager"])


def _run_module(arguments: list[str]) -> dict:
    command = [sys.executable, "-m", "kosmosg_core.bench", *arguments]
    env = {k: v for k, v in os.environ.items() if k != "KOSMOSG_NO_CONVERT_CACHE"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"bench worker failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _best_load(runs: list[dict]) -> dict:
    """The first run (the one that encoded) with the fastest load time and the highest peak of all."""
    return {**runs[0], "load_seconds": min(run["load_seconds"] for run in runs),
            "load_seconds_all": [run["load_seconds"] for run in runs],
            "peak_rss_during_load_bytes": max(run["peak_rss_during_load_bytes"] for run in runs),
            "peak_rss_over_weight_bytes": max(run["peak_rss_over_weight_bytes"] for run in runs)}


# GILL's main evaluation setting (VIST): a story of 5 captions and 4 images, then the next step
GILL_STORY_PROMPT = ("my family went to the beach for the day. <i> "
                     "the kids built a huge sand castle near the water. <i> "
                     "then we all went swimming in the cold waves. <i> dad cooked hot dogs on the grill for lunch. <i> "
                     "at sunset we walked along the shore, and then")
GILL_VOCAB = 50274  # OPT-6.7B's 50,265 tokens + GILL's <|image|> and [IMG0..7]: the LM head's real cost


def gill_story_images(size: int = 64) -> list:
    return [_picture(i).resize((size, size)) for i in range(4)]


def time_gill_generation(gill, new_tokens: int, repeats: int, images=None) -> tuple[dict, dict]:
    """Greedy generation of ``new_tokens`` after :data:`GILL_STORY_PROMPT`, with and without the KV
    cache (best of ``repeats`` after a warm-up; each step reads its logits on the CPU, so the timing
    includes the device's work). Returns the report and the unrounded seconds per mode."""
    import torch

    images = gill_story_images() if images is None else images
    context_tokens = len(gill.context(GILL_STORY_PROMPT, images)[1])
    timings = {}
    for use_cache in (True, False):
        kwargs = dict(max_new_tokens=new_tokens, min_word_tokens=new_tokens, stop_at_newline=False, use_cache=use_cache)
        gill.generate(GILL_STORY_PROMPT, images, **{**kwargs, "max_new_tokens": 2})
        best = float("inf")
        for _ in range(max(1, repeats)):
            start = time.perf_counter()
            ids = gill.generate(GILL_STORY_PROMPT, images, **kwargs).ids
            best = min(best, time.perf_counter() - start)
        timings["cache" if use_cache else "recompute"] = (best, ids)
    cache, recompute = timings["cache"][0], timings["recompute"][0]
    report = {
        "context_tokens": context_tokens,
        "new_tokens": new_tokens,
        "repeats": max(1, repeats),
        "seconds_with_cache": round(cache, 4),
        "seconds_recompute": round(recompute, 4),
        "tokens_per_second_with_cache": round(new_tokens / cache, 2),
        "tokens_per_second_recompute": round(new_tokens / recompute, 2),
        "speedup": round(recompute / cache, 2),
        "same_ids": bool(torch.equal(timings["cache"][1], timings["recompute"][1])),
    }
    return report, {"with_cache": cache, "recompute": recompute}


def _gill_generation_timings(width: int, layers: int, new_tokens: int, repeats: int) -> tuple[dict, dict]:
    """The report of :func:`gill_generation_bench` and the unrounded best-of-``repeats`` seconds per mode."""
    import torch

    from .gill import load_gill
    from .gill.synthetic import tiny_heads_config, write_clip_vision, write_opt, write_release

    with tempfile.TemporaryDirectory(prefix="kosmosg-gill-bench-") as root:
        write_opt(os.path.join(root, "opt"), hidden=width, layers=layers, ffn=4 * width, dtype=torch.float32)
        write_clip_vision(os.path.join(root, "clip"))
        write_release(os.path.join(root, "gill"), tiny_heads_config(llm_dim=width))
        gill = load_gill(os.path.join(root, "gill"), os.path.join(root, "opt"), os.path.join(root, "clip"))
    gill.lm.resize_token_embeddings(GILL_VOCAB, mean_resizing=False)
    report, raw = time_gill_generation(gill, new_tokens, repeats)
    assert report["same_ids"], "cache and recomputation disagree"
    llm = f"random OPT, width {width}, {layers} layers (OPT-6.7B has 32), fp32, vocab {GILL_VOCAB}"
    return {"llm": llm, **report}, raw


def gill_generation_bench(width: int, layers: int, new_tokens: int = 32, repeats: int = 2) -> dict:
    """Greedy generation with and without the KV cache on a random OPT of the given width/depth
    (best of ``repeats`` timed runs per mode, after a warm-up)."""
    return _gill_generation_timings(width, layers, new_tokens, repeats)[0]


def extrapolate_layers(shallow_seconds: float, deep_seconds: float, depths: tuple[int, int], target: int = 32) -> dict:
    """Linear extrapolation ``seconds = fixed + layers * per_layer`` from two depths.

    Timings on a loaded machine can contradict the model (the deeper run no slower than the
    shallow one, or so much slower that the fixed part comes out negative). Then the figures
    are marked ``consistent: False`` and no 32-layer estimate is made; the per-layer and fixed
    costs are still reported, clamped to what is physically possible (never negative)."""
    shallow_layers, deep_layers = depths
    if not 0 < shallow_layers < deep_layers:
        raise ValueError(f"depths must be increasing and positive, got {depths}")
    per_layer = (deep_seconds - shallow_seconds) / (deep_layers - shallow_layers)
    fixed = shallow_seconds - shallow_layers * per_layer
    consistent = shallow_seconds > 0 and per_layer > 0 and fixed >= 0
    result = {
        "consistent": consistent,
        "seconds_per_layer": round(max(per_layer, 0.0), 6),
        "seconds_fixed": round(min(max(fixed, 0.0), shallow_seconds), 6),
        f"seconds_{target}_layers": None,
        f"tokens_per_second_{target}_layers": None,
    }
    if consistent:
        seconds = fixed + target * per_layer  # > 0: fixed >= 0 and per_layer > 0
        result[f"seconds_{target}_layers"] = round(seconds, 4)
        result["_seconds"] = seconds
    else:
        result["note"] = (f"inconsistent timings ({shallow_layers} layers {shallow_seconds:.4f} s, "
                          f"{deep_layers} layers "
                          f"{deep_seconds:.4f} s): the machine was probably busy; no estimate made, rerun the bench")
    return result


def gill_per_layer_bench(width: int, depths: tuple[int, int], new_tokens: int = 32, repeats: int = 3) -> dict:
    """OPT-6.7B does not fit this machine in fp32: time two shallow OPTs of the real width and
    extrapolate linearly to 32 layers (per-layer cost from the difference; the rest is fixed).

    Each figure is the best of ``repeats`` runs (the least disturbed by other load). The result
    is an ESTIMATE; when the two depths' timings contradict the linear model the mode is marked
    ``consistent: False`` and carries no 32-layer figure, and ``speedup_32_layers`` is ``None``."""
    (shallow, shallow_raw), (deep, deep_raw) = (_gill_generation_timings(width, layers, new_tokens, repeats)
                                                for layers in depths)
    extrapolated = {}
    for mode in ("with_cache", "recompute"):
        figures = extrapolate_layers(shallow_raw[mode], deep_raw[mode], depths)
        seconds = figures.pop("_seconds", None)
        if seconds is not None:
            figures["tokens_per_second_32_layers"] = round(new_tokens / seconds, 3)
        extrapolated[mode] = (figures, seconds)
    consistent = all(seconds is not None for _, seconds in extrapolated.values())
    speedup = round(extrapolated["recompute"][1] / extrapolated["with_cache"][1], 2) if consistent else None
    return {
        "measured": {str(depths[0]): shallow, str(depths[1]): deep},
        "extrapolated_to_32_layers": {mode: figures for mode, (figures, _) in extrapolated.items()},
        "consistent": consistent,
        "speedup_32_layers": speedup,
        "label": (f"EXTRAPOLATED (an estimate) from {depths[0]} and {depths[1]} layers of width {width}, fp32, CPU, "
                  f"best of {repeats} runs each; not a measurement of OPT-6.7B"
                  + ("" if consistent else "; the timings were INCONSISTENT, so no 32-layer estimate is given")),
    }


def run_bench(args) -> dict:
    from .kosmosg.convert import convert
    from .kosmosg.synthetic import (
        dict_lines_for,
        official_size,
        tiny_size,
        write_official_checkpoint,
        write_tiny_tokenizer,
    )

    # always a fresh folder of our own (inside --workdir when given): the bench writes files named
    # like the user's (checkpoint_final.pt, .kosmosg-cache/) and must never replace or delete theirs
    if args.workdir:
        os.makedirs(args.workdir, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="kosmosg-bench-", dir=args.workdir)
    free = shutil.disk_usage(workdir).free
    if free < NEEDED_DISK_BYTES[args.size]:
        raise SystemExit(
            f"bench needs about {NEEDED_DISK_BYTES[args.size] / 1e9:.1f} GB free in {workdir}, found "
            f"{free / 1e9:.1f} GB; pass --workdir on a larger disk."
        )
    try:
        config = official_size() if args.size == "real" else tiny_size(vocab_size=400)
        tokenizer = write_tiny_tokenizer(os.path.join(workdir, "tokenizer"),
                                         dict_lines=dict_lines_for(config.vocab_size))
        pt_path = os.path.join(workdir, "checkpoint_final.pt")
        st_path = os.path.join(workdir, "checkpoint_final.safetensors")
        start = time.perf_counter()
        write_official_checkpoint(pt_path, config)
        generate_seconds = time.perf_counter() - start
        start = time.perf_counter()
        convert(pt_path, st_path, tokenizer=tokenizer)
        convert_seconds = time.perf_counter() - start

        reads = {os.path.basename(path): {"bytes": os.path.getsize(path),
                                          "plain_read_seconds": best_plain_read_seconds(path)}
                 for path in (pt_path, st_path)}
        pt_read = reads[os.path.basename(pt_path)]["plain_read_seconds"]
        st_read = reads[os.path.basename(st_path)]["plain_read_seconds"]
        repeats, loads = (3, 2) if args.size == "real" else (1, 1)
        runs = []
        for dtype in args.dtypes.split(","):
            shutil.rmtree(os.path.join(workdir, CACHE_FOLDER), ignore_errors=True)
            first = _run_worker(pt_path, dtype, tokenizer, cache=True)  # unpickle + convert into the cache + load
            (cached,) = glob.glob(os.path.join(workdir, CACHE_FOLDER, "*"))
            cached_read = best_plain_read_seconds(cached)
            # the cached conversion
            second = _best_load([_run_worker(pt_path, dtype, tokenizer, cache=True) for _ in range(loads)])
            run = _best_load([_run_worker(st_path, dtype, tokenizer, repeats)]
                             + [_run_worker(st_path, dtype, tokenizer) for _ in range(loads - 1)])
            fresh = _run_module(["fresh-memory", str(run["weight_bytes"])])["seconds"]
            run.update({
                "official_pt_first_start_seconds": first["load_seconds"],
                "official_pt_second_start_seconds": second["load_seconds"],
                "second_over_first_start": round(second["load_seconds"] / first["load_seconds"], 3),
                "official_pt_first_start_over_plain_read": round(first["load_seconds"] / pt_read, 2),
                "converted_in_this_dtype": {"bytes": os.path.getsize(cached),
                                            "plain_read_seconds": round(cached_read, 3),
                                            "load_seconds": second["load_seconds"],
                                            "load_over_plain_read": round(second["load_seconds"] / cached_read, 2)},
                "load_over_plain_read": round(run["load_seconds"] / st_read, 2),
                "fresh_memory_seconds_for_the_weights": round(fresh, 3),
            })
            runs.append(run)
        if args.int8:
            fp16 = _run_worker(st_path, "fp16", tokenizer)
            for dtype in args.dtypes.split(","):
                run = _run_worker(st_path, dtype, tokenizer, repeats, quantization="int8")
                run["weight_bytes_over_fp16"] = round(run["weight_bytes"] / fp16["weight_bytes"], 3)
                runs.append(run)
        if args.compile:
            for dtype in args.dtypes.split(","):
                runs.append(_run_worker(st_path, dtype, tokenizer, repeats, compiled=True))
        for run in runs:  # each against the matmul rate measured in its own process, right after its encodes
            for encode in (run["encode"] or {}).values():
                encode["flops_over_matmul_fp32"] = round(
                    encode["flops_per_second"] / run["matmul_fp32_2048_flops_per_second"], 3)
        gill = (gill_per_layer_bench(4096, (2, 4), repeats=1) if args.size == "real"
                else gill_per_layer_bench(128, (1, 2), repeats=3)) if args.gill else None
        return {
            "gill_generation": gill,
            "size": args.size,
            "note": "random weights in the official format; files in the page cache; each load in a fresh process",
            "generate_pt_seconds": round(generate_seconds, 2),
            "convert_seconds": round(convert_seconds, 2),
            "files": reads,
            "runs": runs,
        }
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1] == "fresh-memory":
        print(json.dumps({"seconds": fresh_memory_seconds(int(sys.argv[2]))}))
        sys.exit()
    _path, _dtype, _tokenizer, _repeats, _quantization, _cache, _compile = sys.argv[1:8]
    print(json.dumps(worker(_path, _dtype, _tokenizer, int(_repeats), _quantization, _cache == "cache",
                            _compile == "compile")))
