"""Loading a converted file into any dtype: exact weights, views where no cast is needed, and no
resident copy of the file left behind where one is."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from kosmosg_core import load_kosmosg
from kosmosg_core.kosmosg.checkpoint import MappedFile, module_key, open_checkpoint
from kosmosg_core.kosmosg.convert import write_converted
from kosmosg_core.kosmosg.loading import build_model
from kosmosg_core.weights.host_memory import cast_into, empty_weight


@pytest.fixture(scope="module")
def fp16_file(official_fixture, tmp_path_factory) -> Path:
    """The fixture converted to fp16 (the release's own dtype), tokenizer embedded."""
    from kosmosg_core.kosmosg.tokenizer import KosmosGTokenizer

    path = tmp_path_factory.mktemp("fp16") / "checkpoint_final.safetensors"
    source = open_checkpoint(official_fixture / "checkpoint.pt")
    tok = KosmosGTokenizer.from_dir(str(official_fixture))
    write_converted(source, str(path), tok, dtype=torch.float16)
    source.close()
    return path


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_every_weight_is_the_file_cast_exactly(fp16_file, dtype):
    encoder = load_kosmosg(fp16_file, dtype=dtype)
    weights = encoder.model.state_dict()
    checkpoint = open_checkpoint(fp16_file)
    compared = 0
    for key in checkpoint.keys():
        target = module_key(key)
        if target in weights:
            expected = checkpoint.tensor(key).to(dtype)
            assert weights[target].dtype == dtype
            assert torch.equal(weights[target].view(-1).view(torch.uint8), expected.view(-1).view(torch.uint8)), key
            compared += 1
    assert compared == len(weights)


def smaps_field(address: int, field: str) -> list[str]:
    """The ``field`` line of the process mapping holding ``address`` (from /proc/self/smaps)."""
    inside = False
    with open("/proc/self/smaps") as handle:
        for line in handle:
            head, *rest = line.split()
            if "-" in head and not head.endswith(":"):
                start, end = (int(x, 16) for x in head.split("-"))
                inside = start <= address < end
            elif inside and head == field + ":":
                return rest
    raise AssertionError(f"no mapping holds {address:#x} in /proc/self/smaps")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")
def test_cast_sources_leave_the_mapping_and_kept_views_stay(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(torch.arange(3 << 20, dtype=torch.float16).numpy().tobytes())  # 6 MiB
    mapped = MappedFile(str(path))
    source = mapped.tensor(0, torch.float16, (2 << 20,), keep=False)  # first 4 MiB: cast, then released
    out = torch.empty(source.shape, dtype=torch.float32)
    cast_into(out, source)
    mapped.release(0, 4 << 20)
    kept = mapped.tensor(4 << 20, torch.float16, (1 << 20,))  # last 2 MiB: a weight viewing the file
    mapped.make_resident()
    assert torch.equal(out, torch.arange(2 << 20, dtype=torch.float16).float())
    assert torch.equal(kept, torch.arange(2 << 20, 3 << 20, dtype=torch.float16))
    rss_kib = int(smaps_field(torch.frombuffer(mapped.map, dtype=torch.uint8).data_ptr(), "Rss")[0])
    assert 2048 <= rss_kib <= 2048 + 8  # the kept view, not the released source


def test_fp16_to_bf16_cast_matches_torch_on_awkward_values():
    values = torch.tensor([0.0, -0.0, 1 / 3, 65504.0, 6e-8, -6e-5, float("inf"), float("-inf"), float("nan")])
    source = torch.cat([torch.randn(300_001).half(), values.half()])  # longer than one staging piece, odd length
    out = torch.empty(source.shape, dtype=torch.bfloat16)
    cast_into(out, source)
    expected = source.to(torch.bfloat16)
    numbers = ~expected.isnan()
    assert torch.equal(out[numbers].view(torch.int16), expected[numbers].view(torch.int16))
    assert out[~numbers].isnan().all() and int((~numbers).sum()) == 1  # NaN stays NaN (its payload may differ)


def _huge_page_advice() -> str:
    try:
        return Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return ""


@pytest.mark.skipif("[never]" in _huge_page_advice() or not _huge_page_advice(),
                    reason="transparent huge pages are off or absent here")
def test_fresh_weights_ask_for_huge_pages():
    tensor = empty_weight((4 << 20,), torch.float32)  # 16 MiB
    assert "hg" in smaps_field(tensor.data_ptr() + (8 << 20), "VmFlags")


def test_a_cast_load_releases_every_source_and_keeps_no_view(fp16_file, monkeypatch):
    released = []
    monkeypatch.setattr(MappedFile, "release", lambda self, offset, nbytes: released.append(offset))
    checkpoint = open_checkpoint(fp16_file)
    build_model(checkpoint, torch.float32)
    assert checkpoint._map.kept == []
    assert sorted(released) == sorted(checkpoint._offsets[key] for key in checkpoint.keys() if module_key(key))


def test_int8_quantizes_layer_by_layer_to_the_same_weights(fp16_file, monkeypatch):
    """Each linear is quantized as soon as it is read (a few full-precision weights alive at a
    time, not the whole model), giving exactly what quantizing the loaded model gives."""
    import weakref

    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    import kosmosg_core.kosmosg.loading as loading

    alive, most_alive = set(), []
    real_empty, real_quantize = loading.empty_weight, loading.quantize_linear

    def tracked_empty(shape, dtype):
        tensor = real_empty(shape, dtype)
        alive.add(id(tensor))
        weakref.finalize(tensor, alive.discard, id(tensor))
        return tensor

    def tracked_quantize(linear, weight, mode):
        most_alive.append(len(alive))
        real_quantize(linear, weight, mode)

    monkeypatch.setattr(loading, "empty_weight", tracked_empty)
    monkeypatch.setattr(loading, "quantize_linear", tracked_quantize)
    streamed = build_model(open_checkpoint(fp16_file), torch.float32, quantization="int8")
    linears = [m for m in streamed.modules() if isinstance(m, torch.nn.Linear)]
    assert len(most_alive) == len(linears) > 0
    others = len(streamed.state_dict()) - len(linears)  # read first and kept: every non-linear weight
    assert max(most_alive) - others <= 2 * loading.LOAD_THREADS + 1

    monkeypatch.undo()
    whole = build_model(open_checkpoint(fp16_file), torch.float32)
    quantize_(whole, Int8WeightOnlyConfig(), filter_fn=lambda module, _name: isinstance(module, torch.nn.Linear))
    for (name, a), (_, b) in zip(streamed.state_dict().items(), whole.state_dict().items(), strict=True):
        assert type(a) is type(b) and torch.equal(a.dequantize() if hasattr(a, "dequantize") else a,
                                                   b.dequantize() if hasattr(b, "dequantize") else b), name


def test_a_weight_of_the_wrong_shape_is_named_before_anything_is_read(fp16_file, tmp_path):
    from safetensors.torch import load_file, save_file

    from kosmosg_core.errors import CheckpointError

    tensors = load_file(fp16_file)
    key = next(k for k in tensors if ".layers.1." in k and k.endswith("fc1.weight"))
    tensors[key] = tensors[key][:-1]
    damaged = tmp_path / "damaged.safetensors"
    save_file(tensors, damaged, metadata=open_checkpoint(fp16_file).metadata)
    with pytest.raises(CheckpointError, match=f"{key} has shape .* but the other weights make it"):
        load_kosmosg(damaged)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_freed_holes_between_kept_tensors_go_back_to_the_os():
    from kosmosg_core.weights.host_memory import _MALLOC_TRIM, return_freed_memory

    if _MALLOC_TRIM is None:
        pytest.skip("this libc has no malloc_trim")

    def rss_mib() -> float:
        with open("/proc/self/status") as handle:
            return next(int(line.split()[1]) for line in handle if line.startswith("VmRSS:")) / 1024

    tensors = [torch.ones(25_000) for _ in range(4000)]  # 100 KB each, from the heap
    del tensors[::2]  # 200 MB of holes between the kept half, like freed fp weights between int8 ones
    before = rss_mib()
    return_freed_memory()
    assert before - rss_mib() > 100


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_tensor_stored_misaligned_is_read_and_cast_in_pieces(tmp_path, dtype):
    """Where the file cannot give a view (offset not a multiple of the item size) the positional
    reader fills the weight, chunk by chunk, with the same cast."""
    from kosmosg_core.kosmosg.checkpoint import ChunkedReader

    source = torch.randn(5000).half()
    path = tmp_path / "blob"
    path.write_bytes(b"\0" + source.numpy().tobytes())
    assert MappedFile(str(path)).tensor(1, torch.float16, (5000,)) is None
    out = torch.empty(5000, dtype=dtype)
    with ChunkedReader(str(path), chunk_bytes=4096) as reader:
        reader.read(1, torch.float16, out)
    assert torch.equal(out, source.to(dtype))
