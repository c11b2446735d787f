"""Checkpoints are pickles: real fairseq metadata loads, code execution is refused."""

from __future__ import annotations

import argparse
import os
import pickle
from collections import OrderedDict

import numpy as np
import pytest
import torch

from kosmosg_core import RefusedPickleError, load_kosmosg, open_checkpoint
from kosmosg_core.kosmosg.synthetic import random_state_dict, tiny_size
from kosmosg_core.weights.safe_pickle import InertObject, restricted_torch_load


def test_fairseq_style_file_with_metadata_loads(tmp_path, tiny_tokenizer_dir):
    path = tmp_path / "checkpoint_final.pt"
    torch.save({
        "model": OrderedDict(random_state_dict(tiny_size(400), seed=1)),
        "args": argparse.Namespace(arch="kosmosg_xl", decoder_layers=24, lr=[1e-3]),
        "cfg": {"model": {"_name": "kosmosg"}, "task": {"tokens_per_sample": 2048}},
        "optimizer_history": [{"criterion_name": "KosmosGLoss", "num_updates": np.int64(200000)}],
        "extra_state": {"epoch": 3, "best": np.float64(0.125), "train_iterator": {"epoch": np.int32(3)},
                        "metrics": np.array([1.5, 2.5])},
        "last_optimizer_state": {"state": {0: {"exp_avg": torch.zeros(4), "step": 12}}, "param_groups": [{"lr": 1e-3}]},
    }, path)
    loaded = restricted_torch_load(path)
    assert isinstance(loaded["args"], InertObject) and loaded["args"].arch == "kosmosg_xl"
    assert loaded["extra_state"]["best"] == 0.125 and isinstance(loaded["extra_state"]["best"], np.float64)
    assert loaded["extra_state"]["metrics"].tolist() == [1.5, 2.5]
    encoder = load_kosmosg(path, tokenizer=str(tiny_tokenizer_dir))
    assert encoder.encode("a dog").cond.shape == (1, 77, 64)


class _Call:
    """Pickles as a call of ``func(*args)``: exactly what a malicious checkpoint does."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _write_poisoned(path, payload):
    torch.save({"model": {"w": torch.zeros(2)}, "extra_state": payload}, path)


@pytest.mark.parametrize("name,make", [
    ("system", lambda tmp: _Call(os.system, f"touch {tmp / 'pwned'}")),
    ("open", lambda tmp: _Call(open, str(tmp / "pwned"), "w")),
    ("mkdir", lambda tmp: _Call(os.mkdir, str(tmp / "pwned"))),
])
def test_code_execution_is_refused(tmp_path, name, make):
    path = tmp_path / "evil.pt"
    _write_poisoned(path, make(tmp_path))
    with pytest.raises(RefusedPickleError) as error:
        open_checkpoint(path)
    message = str(error.value)
    assert "refused" in message and name in message and "Nothing from the file was executed" in message
    assert not (tmp_path / "pwned").exists()


def test_refused_in_legacy_format_too(tmp_path):
    path = tmp_path / "legacy.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "x": _Call(os.mkdir, str(tmp_path / "pwned"))}, path,
               _use_new_zipfile_serialization=False)
    with pytest.raises(RefusedPickleError, match="refused.*mkdir"):
        restricted_torch_load(path)
    assert not (tmp_path / "pwned").exists()


def test_plain_pickle_protocols_rebuild_stand_ins(tmp_path):
    for protocol in (0, 2, 5):
        path = tmp_path / f"p{protocol}.pkl"
        with open(path, "wb") as handle:
            pickle.dump({"model": {}, "args": argparse.Namespace(a=1)}, handle, protocol=protocol)
        with open(path, "rb") as handle:
            from kosmosg_core.weights.safe_pickle import RestrictedUnpickler
            obj = RestrictedUnpickler(handle).load()
        assert obj["args"].a == 1 and type(obj["args"]).__name__ == "Namespace"


def test_final_file_with_sd_copies_and_optimizer_state_loads(tmp_path, tiny_tokenizer_dir):
    """The release file may carry frozen SD U-Net/VAE copies and Adam moments: ignored, not refused."""
    state = random_state_dict(tiny_size(400), seed=2)
    state["diffusion_unet.unet.conv_in.weight"] = torch.zeros(8, 4, 3, 3, dtype=torch.float16)
    state["vae.vae.decoder.conv_out.bias"] = torch.zeros(3, dtype=torch.float16)
    path = tmp_path / "checkpoint_final.pt"
    torch.save({"model": state, "last_optimizer_state": {"state": {0: {"exp_avg": torch.zeros(16)}}},
                "extra_state": {"epoch": 1}}, path)
    opened = open_checkpoint(path)
    assert opened.kind == "final"
    reference = load_kosmosg(path, tokenizer=str(tiny_tokenizer_dir)).encode("a dog").cond
    del state["diffusion_unet.unet.conv_in.weight"], state["vae.vae.decoder.conv_out.bias"]
    torch.save({"model": state}, tmp_path / "plain.pt")
    assert torch.equal(reference,
                       load_kosmosg(tmp_path / "plain.pt", tokenizer=str(tiny_tokenizer_dir)).encode("a dog").cond)
