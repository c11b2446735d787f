"""Checkpoints from strangers: pickles and safetensors written by hand to attack the loader.

Every file here is made by this module's own generators (pickle opcodes assembled byte by byte, zip and
legacy torch containers, safetensors headers). Library cases run in-process and check that nothing
outside the returned data changed; CLI cases run in their own process under the harness's memory cap,
with a canary over every folder involved.
"""

from __future__ import annotations

import collections
import json
import os
import pickle
import shutil
import zipfile

import numpy as np
import pytest
import torch

from support.hostile_harness import Canary, assert_clear_error, run_cli

from kosmosg_core import load_kosmosg, open_checkpoint
from kosmosg_core.errors import (
    CheckpointError,
    KosmosGError,
    OutputPathError,
    RefusedPickleError,
    TokenizerError,
)
from kosmosg_core.weights.keys import count_layers
from kosmosg_core.weights.safe_pickle import RestrictedUnpickler, restricted_torch_load

# -- pickle assembler -------------------------------------------------------------------------------


def P(value) -> bytes:
    """``value`` as protocol-2 opcodes (no PROTO/STOP), to splice into a hand-made pickle."""
    return pickle.dumps(value, protocol=2)[2:-1]


def G(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def T(*parts: bytes) -> bytes:
    return b"(" + b"".join(parts) + b"t"


def CALL(func: bytes, *args: bytes) -> bytes:
    return func + T(*args) + b"R"


def D(*pairs: tuple[bytes, bytes]) -> bytes:
    return b"}(" + b"".join(k + v for k, v in pairs) + b"u"


def PICKLE(body: bytes) -> bytes:
    return b"\x80\x02" + body + b"."


def PID(key: str, numel: int, legacy: bool, storage: str = "FloatStorage") -> bytes:
    fields = [P("storage"), G("torch", storage), P(key), P("cpu"), P(numel)] + ([P(None)] if legacy else [])
    return T(*fields) + b"Q"


def TENSOR(pid: bytes, offset=0, size=(4,), stride=(1,)) -> bytes:
    return CALL(G("torch._utils", "_rebuild_tensor_v2"), pid, P(offset), P(tuple(size)), P(tuple(stride)), P(False),
                CALL(G("collections", "OrderedDict")))


def write_zip(path, data_pkl: bytes, records: dict[str, bytes]) -> str:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", data_pkl)
        archive.writestr("archive/byteorder", "little")
        for key, data in records.items():
            archive.writestr(f"archive/data/{key}", data)
    return str(path)


def write_legacy(path, main: bytes, storages: dict[str, tuple[int, bytes]], keys=None) -> str:
    """torch's legacy layout: magic, protocol, sys info, main pickle, key list, (count, bytes) per storage."""
    parts = [pickle.dumps(0x1950A86A20F9469CFC6C, 2), pickle.dumps(1001, 2),
             pickle.dumps({"protocol_version": 1001, "little_endian": True, "type_sizes": {}}, 2), main,
             pickle.dumps(list(storages) if keys is None else keys, 2)]
    for count, data in storages.values():
        parts += [count.to_bytes(8, "little", signed=True), data]
    with open(path, "wb") as handle:
        handle.write(b"".join(parts))
    return str(path)


def write_container(fmt: str, path, body_items: list[tuple[bytes, bytes]], numel: int = 4) -> str:
    """A file holding ``{'model': {'w': tensor}, **extra}`` in format ``fmt`` ('zip' or 'legacy')."""
    legacy = fmt == "legacy"
    weights = D((P("w"), TENSOR(PID("0", numel, legacy), size=(numel,))))
    main = PICKLE(D((P("model"), weights), *body_items))
    data = bytes(4 * numel)
    if legacy:
        return write_legacy(path, main, {"0": (numel, data)})
    return write_zip(path, main, {"0": data})


FORMATS = ["zip", "legacy"]

# -- 1. nothing outside the returned data changes -------------------------------------------------------

BUILD_TARGETS = {  # a global the pickle names, then BUILD with a state that would monkeypatch it
    "Counter": (("collections", "Counter"), lambda: collections.Counter),
    "OrderedDict": (("collections", "OrderedDict"), lambda: collections.OrderedDict),
    "rebuild_tensor_v2": (("torch._utils", "_rebuild_tensor_v2"), lambda: torch._utils._rebuild_tensor_v2),
    "torch.Size": (("torch", "Size"), lambda: torch.Size),
    "numpy.dtype": (("numpy", "dtype"), lambda: np.dtype),
    "relu(stand-in)": (("torch.nn.functional", "relu"), lambda: torch.nn.functional.relu),
}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("target", list(BUILD_TARGETS))
def test_build_on_a_global_is_refused_and_changes_nothing(tmp_path, fmt, target):
    (module, name), real = BUILD_TARGETS[target]
    before = dict(vars(real()))
    item = (P("x"), G(module, name) + P({"kosmosg_pwned": 1, "__call__": None}) + b"b")
    path = write_container(fmt, tmp_path / "evil.pt", [item])
    with pytest.raises(RefusedPickleError, match="refused"):
        restricted_torch_load(path)
    assert not hasattr(real(), "kosmosg_pwned") and dict(vars(real())) == before


@pytest.mark.parametrize("opcode,payload", [
    ("SETITEM", G("collections", "Counter") + P("k") + P(1) + b"s"),
    ("SETITEMS", G("collections", "OrderedDict") + b"(" + P("k") + P(1) + b"u"),
    ("APPEND", G("builtins", "set") + P(1) + b"a"),
    ("APPENDS", G("collections", "Counter") + b"(" + P(1) + b"e"),
    ("ADDITEMS", G("builtins", "frozenset") + b"(" + P(1) + b"\x90"),
    ("BUILD-slots", G("collections", "Counter") + P((None, {"most_common": None})) + b"b"),
])
def test_container_opcodes_on_a_global_are_refused(tmp_path, opcode, payload):
    before = dict(vars(collections.Counter))
    path = write_container("zip", tmp_path / "evil.pt", [(P("x"), payload)])
    with pytest.raises(RefusedPickleError, match="refused to"):
        restricted_torch_load(path)
    assert dict(vars(collections.Counter)) == before


def test_build_twice_cannot_plant_a_setstate(tmp_path):
    """An inert object's own ``__setstate__`` attribute is never called by a later BUILD."""
    obj = G("argparse", "Namespace") + b")\x81" + P({"__setstate__": None}) + b"b" + P({"a": 1}) + b"b"
    path = write_container("zip", tmp_path / "ns.pt", [(P("args"), obj)])
    loaded = restricted_torch_load(path)
    assert loaded["args"].a == 1


def test_state_dict_metadata_still_loads(tmp_path):
    """BUILD on an OrderedDict the pickle created (torch's ``_metadata``) is the allowed case."""
    path = tmp_path / "linear.pt"
    torch.save({"model": torch.nn.Linear(2, 3).state_dict()}, path)
    loaded = restricted_torch_load(path)["model"]
    assert loaded["weight"].shape == (3, 2) and hasattr(loaded, "_metadata")


@pytest.mark.parametrize("fmt", FORMATS)
def test_module_persistent_id_after_build_writes_no_patch_file(tmp_path, fmt, monkeypatch):
    """torch's legacy loader writes ``<name>.patch`` for 'module' ids; ours refuses them."""
    monkeypatch.chdir(tmp_path)
    canary = Canary(tmp_path)
    module_id = T(P("module"), G("torch._utils", "_rebuild_tensor_v2"), P(str(tmp_path / "evil.py")),
                  P("x = 1\n")) + b"Q"
    build = G("torch._utils", "_rebuild_tensor_v2") + P({"dump_patches": True}) + b"b"
    path = write_container(fmt, tmp_path / "evil.pt", [(P("a"), module_id)])
    path2 = write_container(fmt, tmp_path / "evil2.pt", [(P("a"), build), (P("b"), module_id)])
    canary = Canary(tmp_path)
    for candidate in (path, path2):
        with pytest.raises(RefusedPickleError, match="refused"):
            restricted_torch_load(candidate)
    canary.check()
    assert not list(tmp_path.rglob("*.patch"))


@pytest.mark.parametrize("pid", [
    P("storage") + b"Q",  # not a tuple
    T(P("storage")) + b"Q",  # too short
    T(P("storage"), G("torch", "FloatStorage"), P("0"), P("cpu"), P(-4)) + b"Q",  # negative size
    T(P("storage"), G("os", "system"), P("0"), P("cpu"), P(4)) + b"Q",  # storage type is a stand-in
    T(P("storage"), G("torch", "FloatStorage"), P(7), P("cpu"), P(4)) + b"Q",  # key not text
    T(P("storage"), G("torch", "FloatStorage"), P("0"), P("cpu"), P(10**12)) + b"Q",  # size beyond the record
    T(P("storage"), G("torch", "FloatStorage"), P("missing"), P("cpu"), P(4)) + b"Q",  # no such record
    T(P("tensor"), P(1)) + b"Q",  # unknown kind
    b"P1\n",  # protocol-0 text id
], ids=["str", "short", "negative", "stand-in-type", "int-key", "huge", "missing", "kind", "text"])
def test_odd_persistent_ids_are_named_errors(tmp_path, pid):
    main = PICKLE(D((P("model"), D((P("w"), CALL(G("torch._utils", "_rebuild_tensor_v2"), pid, P(0), P((4,)),
                                                    P((1,)), P(False), CALL(G("collections", "OrderedDict"))))))))
    path = write_zip(tmp_path / "odd.pt", main, {"0": bytes(16)})
    with pytest.raises(CheckpointError) as error:
        restricted_torch_load(path)
    assert str(tmp_path) in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("body", [
    CALL(G("torch._utils", "_rebuild_tensor_v2"), P("x")),  # too few args
    CALL(G("torch._utils", "_rebuild_tensor_v2"), PID("0", 4, False), P(0), P("abc"), P((1,)), P(False), P(None)),
    CALL(G("torch._utils", "_rebuild_tensor_v2"), PID("0", 4, False), P(0), P((4,)), P((-1,)), P(False), P(None)),
    CALL(G("torch._utils", "_rebuild_tensor_v2"), PID("0", 4, False), P(-2), P((2,)), P((1,)), P(False), P(None)),
    CALL(G("torch._utils", "_rebuild_tensor_v2"), P(None), P(0), P((4,)), P((1,)), P(False), P(None)),
    CALL(G("collections", "OrderedDict"), P(5)),
    CALL(G("builtins", "bytearray"), P(10**12)),  # would allocate a terabyte
    CALL(G("numpy._core.multiarray", "_reconstruct"), G("numpy", "ndarray"), P((10**12,)), P(b"b")),
    CALL(G("numpy", "ndarray"), P((10**12,))),
    G("collections", "Counter") + b")\x81",  # NEWOBJ on a type with arguments is fine, on a function not
    G("torch._utils", "_rebuild_tensor_v2") + b")\x81",
    CALL(G("collections", "OrderedDict")) + P([1, 2]) + b"b",  # BUILD with a list state
    CALL(G("torch._tensor", "_rebuild_from_type_v2"), G("os", "system"), G("torch", "Tensor"), P(("ls",)), P({})),
    b"\x96" + (1 << 62).to_bytes(8, "little"),  # BYTEARRAY8 of 4 EiB
    b"(" + P(1) + b"u",  # SETITEMS with nothing to set on
], ids=["few-args", "size-str", "stride-neg", "offset-neg", "no-storage", "odict-int", "bytearray-size",
        "reconstruct-huge", "ndarray-call", "newobj-counter", "newobj-func", "build-list", "from-type-system",
        "bytearray8", "setitems-mark"])
def test_odd_reduce_args_and_states_are_named_errors(tmp_path, body):
    main = PICKLE(D((P("model"), D((P("w"), TENSOR(PID("0", 4, False))))), (P("x"), body)))
    path = write_zip(tmp_path / "odd.pt", main, {"0": bytes(16)})
    try:
        loaded = restricted_torch_load(path)
    except KosmosGError as exc:
        assert "\n" not in str(exc) and str(tmp_path) in str(exc)
    else:  # the only accepted one: NEWOBJ of a fresh Counter
        assert isinstance(loaded["x"], collections.Counter)


# -- 2. sizes checked before memory is taken --------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("size,stride,offset", [
    ((10**9, 1536), (0, 1), 0),  # a stride-0 view of 10^9 rows over one row of storage
    ((1536, 2), (1, 1), 0),  # overlapping: more values than the storage holds
    ((1537,), (1,), 0),  # one past the end
    ((4,), (1,), 1534),  # offset pushes it past the end
    ((2, 2), (10**6, 1), 0),  # stride jumps out of the storage
])
def test_views_larger_than_their_storage_are_refused(tmp_path, fmt, size, stride, offset):
    legacy = fmt == "legacy"
    main = PICKLE(D((P("model"), D((P("w"), TENSOR(PID("0", 1536, legacy), offset, size, stride))))))
    data = bytes(4 * 1536)
    path = (write_legacy(tmp_path / "v.pt", main, {"0": (1536, data)}) if legacy
            else write_zip(tmp_path / "v.pt", main, {"0": data}))
    with pytest.raises(CheckpointError, match="storage"):
        restricted_torch_load(path)


def test_many_views_of_one_storage_are_refused(tmp_path):
    """Each view fits, but together they would make us copy 200x the file."""
    items = [(P(f"w{i}"), TENSOR(PID("0", 1 << 18, False), 0, (1 << 18,), (1,))) for i in range(200)]
    main = PICKLE(D((P("model"), D(*items))))
    path = write_zip(tmp_path / "views.pt", main, {"0": bytes(4 << 18)})
    with pytest.raises(CheckpointError, match="shared storages"):
        restricted_torch_load(path)


def test_legacy_storage_sizes_are_checked_against_the_stream(tmp_path):
    main = PICKLE(D((P("model"), D((P("w"), TENSOR(PID("0", 10**12, True), 0, (4,), (1,)))))))
    path = write_legacy(tmp_path / "big.pt", main, {"0": (10**12, bytes(16))})
    with pytest.raises(CheckpointError, match="past the end|truncated"):
        restricted_torch_load(path)
    short_main = PICKLE(D((P("model"), D((P("w"), TENSOR(PID("0", 4, True)))))))
    short = write_legacy(tmp_path / "short.pt", short_main, {"0": (3, bytes(12))})
    with pytest.raises(CheckpointError, match="truncated|damaged"):
        restricted_torch_load(short)


def test_real_checkpoints_still_load(official_fixture, gill_fixture, tmp_path):
    state = restricted_torch_load(official_fixture / "checkpoint.pt")["model"]
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    legacy = tmp_path / "legacy.pt"
    torch.save({"model": dict(list(state.items())[:20])}, legacy, _use_new_zipfile_serialization=False)
    again = restricted_torch_load(legacy)["model"]
    assert all(torch.equal(again[k], state[k]) for k in again)
    assert restricted_torch_load(gill_fixture / "decision_model.pth.tar")


def _official_state(official_fixture) -> dict:
    return dict(restricted_torch_load(official_fixture / "checkpoint.pt")["model"])


def _model_folder(official_fixture, folder) -> None:
    folder.mkdir(exist_ok=True)
    for name in ("sentencepiece.bpe.model", "dict.txt"):
        shutil.copy(official_fixture / name, folder / name)


@pytest.mark.parametrize("keys,error", [
    (["a.layers.0.w", "a.layers.1.w"], None),
    (["a.layers.0.w", "a.layers.100000000.w"], "layer 1 is missing"),
    (["a.layers.1.w"], "layer 0 is missing"),
    (["a.layers.0.w", "a.layers.2.w"], "layer 1 is missing"),
])
def test_count_layers_needs_contiguous_indices(keys, error):
    if error is None:
        assert count_layers(keys, "a.layers.") == 2
    else:
        with pytest.raises(CheckpointError, match=error):
            count_layers(keys, "a.layers.")


def safetensors_file(path, header, data: bytes = b"", header_len: int | None = None) -> str:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    with open(path, "wb") as handle:
        handle.write((len(raw) if header_len is None else header_len).to_bytes(8, "little") + raw + data)
    return str(path)


@pytest.mark.parametrize("name,header,data,header_len", [
    ("header-len-huge", {"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, bytes(4), 1 << 60),
    ("header-len-past-end", {"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, bytes(4), 10_000),
    ("offsets-past-end", {"w": {"dtype": "F32", "shape": [1 << 30], "data_offsets": [0, 4 << 30]}}, bytes(4), None),
    ("shape-mismatch", {"w": {"dtype": "F32", "shape": [100000, 100000], "data_offsets": [0, 4]}}, bytes(4), None),
    ("unknown-dtype", {"w": {"dtype": "F8_E9", "shape": [1], "data_offsets": [0, 1]}}, bytes(4), None),
    ("overlap", {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                 "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(12), None),
    ("negative", {"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, bytes(4), None),
    ("not-json", b"{not json at all" + b" " * 8, b"", None),
    ("not-utf8", b'{"\xff": 1}', b"", None),
    ("list", b"[1, 2, 3]", b"", None),
    ("metadata-not-strings", {"__metadata__": {"a": 1}}, b"", None),
])
def test_bad_safetensors_headers_are_named_errors(tmp_path, name, header, data, header_len):
    path = safetensors_file(tmp_path / f"{name}.safetensors", header, data, header_len)
    with pytest.raises(CheckpointError) as error:
        open_checkpoint(path)
    assert path in str(error.value) and "\n" not in str(error.value)


def test_layer_key_far_out_is_refused_in_pt_and_safetensors(official_fixture, tmp_path):
    from safetensors.torch import save_file

    state = _official_state(official_fixture)
    state["gpt_model.decoder.layers.100000000.ffn.fc1.weight"] = torch.zeros(2)
    _model_folder(official_fixture, tmp_path / "m")
    torch.save({"model": state}, tmp_path / "m" / "checkpoint.pt")
    save_file({k: v.clone() for k, v in state.items()}, str(tmp_path / "m" / "checkpoint.safetensors"))
    for name in ("checkpoint.pt", "checkpoint.safetensors"):
        with pytest.raises(CheckpointError, match="layer .* is missing"):
            load_kosmosg(tmp_path / "m" / name, cache_converted=False)


# -- 3. the converted cache is bound to its source ------------------------------------------------------


def test_planted_cache_file_is_never_used(official_fixture, tmp_path, monkeypatch):
    from kosmosg_core.kosmosg import converted_cache

    monkeypatch.delenv(converted_cache.DISABLE_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    folder = tmp_path / "m"
    _model_folder(official_fixture, folder)
    shutil.copy(official_fixture / "checkpoint.pt", folder / "checkpoint.pt")
    reference = load_kosmosg(folder / "checkpoint.pt").encode("a dog").cond
    (cached,) = (folder / converted_cache.CACHE_FOLDER).glob("*" + converted_cache.CACHE_SUFFIX)
    os.remove(cached)  # the genuine copy goes; only planted files remain
    # what an attacker can plant: every name the old scheme would pick, with other weights inside
    poisoned = {k: v + 1 if v.is_floating_point() else v for k, v in _official_state(official_fixture).items()}
    other = tmp_path / "other.pt"
    torch.save({"model": poisoned}, other)
    monkeypatch.setenv("HOME", str(tmp_path / "attacker_home"))
    load_kosmosg(other, tokenizer=str(folder))  # the attacker's own cache of other weights, under the attacker's key
    (planted,) = (tmp_path / converted_cache.CACHE_FOLDER).glob("*" + converted_cache.CACHE_SUFFIX)
    attackers_name = converted_cache.cache_name(str(folder / "checkpoint.pt"), torch.float32)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    stat = os.stat(folder / "checkpoint.pt")
    for name in (f"checkpoint.pt.{stat.st_size}-{stat.st_mtime_ns}.float32{converted_cache.CACHE_SUFFIX}",
                 attackers_name):
        shutil.copy(planted, folder / converted_cache.CACHE_FOLDER / name)
    assert converted_cache.find_cached(str(folder / "checkpoint.pt"), torch.float32) is None
    assert torch.equal(load_kosmosg(folder / "checkpoint.pt").encode("a dog").cond, reference)


# -- 4. text files and outputs ----------------------------------------------------------------------------


@pytest.mark.parametrize("content", [b"\xff\xfe\x00bad", b"hello 1\n\x80\x81 2\n"])
def test_non_utf8_dict_txt_is_a_tokenizer_error(official_fixture, tmp_path, content):
    from kosmosg_core.kosmosg.tokenizer import KosmosGTokenizer

    _model_folder(official_fixture, tmp_path)
    (tmp_path / "dict.txt").write_bytes(content)
    with pytest.raises(TokenizerError, match="not UTF-8"):
        KosmosGTokenizer.from_dir(str(tmp_path))


@pytest.mark.parametrize("content,match", [(b"\xff\xfe", "not UTF-8"), (b"{nope", "not valid JSON"),
                                           (b"[1, 2]", "not an object"), (b'{"num_tokens": "eight"}', "num_tokens")])
def test_bad_model_args_json_is_one_checkpoint_error(gill_fixture, tmp_path, content, match):
    from kosmosg_core.gill.checkpoint import (
        heads_config,
        read_heads_state,
        read_model_args,
    )

    (tmp_path / "model_args.json").write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        heads_config(read_heads_state(str(gill_fixture)), read_model_args(str(tmp_path)))


def test_gill_state_missing_a_head_is_named(gill_fixture, tmp_path):
    from kosmosg_core.gill.checkpoint import (
        heads_config,
        read_heads_state,
        read_model_args,
    )

    state = read_heads_state(str(gill_fixture))
    del state["visual_embeddings.weight"]
    with pytest.raises(CheckpointError, match="lacks visual_embeddings.weight"):
        heads_config(state, read_model_args(str(gill_fixture)))


def test_gill_layer_gap_is_refused(gill_fixture, tmp_path):
    from kosmosg_core.gill.checkpoint import (
        MAPPER,
        heads_config,
        read_heads_state,
        read_model_args,
    )

    state = read_heads_state(str(gill_fixture))
    state[MAPPER + "tfm.encoder.layers.99999999.linear1.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="layer .* is missing"):
        heads_config(state, read_model_args(str(gill_fixture)))


def test_convert_refuses_its_inputs_as_destination(official_fixture, tmp_path):
    from kosmosg_core.kosmosg.convert import convert

    _model_folder(official_fixture, tmp_path)
    shutil.copy(official_fixture / "checkpoint.pt", tmp_path / "checkpoint.pt")
    canary = Canary(tmp_path)
    for dst in ("checkpoint.pt", "dict.txt", "sentencepiece.bpe.model"):
        with pytest.raises((OutputPathError, CheckpointError), match="same file|input file"):
            convert(str(tmp_path / "checkpoint.pt"), str(tmp_path / dst))
    canary.check()


def test_restricted_unpickler_alone_refuses_persistent_ids():
    import io

    data = PICKLE(T(P("module"), P("x")) + b"Q")
    with pytest.raises(RefusedPickleError, match="refused a persistent id"):
        RestrictedUnpickler(io.BytesIO(data)).load()


# -- through the CLI: own process, memory cap, canary -------------------------------------------------------


def _cli_cases(official_fixture, root):
    """name -> (argv, expected pattern) for hostile files placed in ``root``."""
    from safetensors.torch import save_file

    _model_folder(official_fixture, root)
    state = _official_state(official_fixture)
    cases = {}
    module_id = T(P("module"), G("torch._utils", "_rebuild_tensor_v2"), P(str(root / "evil.py")), P("x = 1\n")) + b"Q"
    build = G("torch._utils", "_rebuild_tensor_v2") + P({"dump_patches": True}) + b"b"
    write_container("legacy", root / "patch.pt", [(P("a"), build), (P("b"), module_id)])
    cases["legacy-module-id"] = ("patch.pt", "refused")
    write_container("legacy", root / "counter.pt", [(P("a"), G("collections", "Counter") + P({"x": 1}) + b"b")])
    cases["build-counter"] = ("counter.pt", "refused")
    main = PICKLE(D((P("model"), D((P("w"), TENSOR(PID("0", 1536, False), 0, (10**9, 1536), (0, 1)))))))
    write_zip(root / "stride0.pt", main, {"0": bytes(6 << 20)[: 4 * 1536]})
    cases["stride0-1e9-rows"] = ("stride0.pt", "more values than")
    main = PICKLE(D((P("model"), D((P("w"), TENSOR(PID("0", 10**12, True), 0, (4,), (1,)))))))
    write_legacy(root / "bigstorage.pt", main, {"0": (10**12, bytes(16))})
    cases["legacy-storage-1e12"] = ("bigstorage.pt", "truncated|past the end")
    layered = dict(state, **{"gpt_model.decoder.layers.100000000.ffn.fc1.weight": torch.zeros(2)})
    torch.save({"model": layered}, root / "layers.pt")
    save_file({k: v.clone() for k, v in layered.items()}, str(root / "layers.safetensors"))
    cases["layers-1e8-pt"] = ("layers.pt", "layer .* is missing")
    cases["layers-1e8-safetensors"] = ("layers.safetensors", "layer .* is missing")
    safetensors_file(root / "hdr.safetensors", {"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}},
                     bytes(4), 1 << 60)
    cases["safetensors-header-len"] = ("hdr.safetensors", "header claims")
    os.mkfifo(root / "fifo.pt")
    cases["fifo"] = ("fifo.pt", "named pipe")
    return cases


CLI_CASES = ["legacy-module-id", "build-counter", "stride0-1e9-rows", "legacy-storage-1e12", "layers-1e8-pt",
             "layers-1e8-safetensors", "safetensors-header-len", "fifo"]


@pytest.fixture(scope="module")
def cli_root(official_fixture, tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile_ckpt")
    return root, _cli_cases(official_fixture, root)


@pytest.mark.parametrize("command", ["encode", "convert"])
@pytest.mark.parametrize("case", CLI_CASES)
def test_cli_refuses_hostile_checkpoint(cli_root, tmp_path, case, command):
    root, cases = cli_root
    name, pattern = cases[case]
    out = tmp_path / ("out.pt" if command == "encode" else "out.safetensors")
    canary = Canary(root, tmp_path)
    argv = (["encode", "--checkpoint", root / name, "--prompt", "a dog", "--out", out] if command == "encode"
            else ["convert", root / name, out])
    outcome = run_cli(argv, cwd=tmp_path)
    assert_clear_error(outcome, pattern)
    canary.check()
    assert not list(root.rglob("*.patch")) and not list(tmp_path.rglob("*.patch"))


def test_cli_convert_onto_dict_txt_is_refused(official_fixture, tmp_path):
    _model_folder(official_fixture, tmp_path)
    shutil.copy(official_fixture / "checkpoint.pt", tmp_path / "checkpoint.pt")
    canary = Canary(tmp_path)
    assert_clear_error(run_cli(["convert", tmp_path / "checkpoint.pt", tmp_path / "dict.txt"], cwd=tmp_path),
                       "input file|same file")
    canary.check()
