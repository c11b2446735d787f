"""GILL: parity with the official code through the CLI, generation, retrieval, bad inputs."""

from __future__ import annotations

import json
import os
import pickle
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from support import gill_fixture_dirs, require_fixture

from kosmosg_core import CheckpointError, PromptError, RefusedPickleError
from kosmosg_core.cli import main
from kosmosg_core.gill import load_gill
from kosmosg_core.gill.retrieval import RetrievalIndex, build_index

CASES = [(d, c) for d in gill_fixture_dirs() for c in json.loads((d / "cases.json").read_text())]
CLOSE = ("cond", "decision", "ret_emb", "img_hidden", "decision_logits")


def gill_args(fixture, case, *extra):
    args = ["--checkpoint", str(fixture), "--llm", str(fixture / "llm"), "--vision", str(fixture / "vision"),
            "--prompt", case["prompt"]]
    for image in case["images"]:
        args += ["--image", str(fixture / "images" / image)]
    return args + list(extra)


def test_gill_fixtures_present():
    require_fixture("gill-official-tiny", "cases.json")
    assert CASES


@pytest.mark.parametrize("fixture,case", CASES, ids=[f"{d.name}-{c['name']}" for d, c in CASES])
def test_cli_matches_official_gill(fixture, case, tmp_path):
    expected = {k.split(".", 1)[1]: v for k, v in load_file(fixture / "expected.safetensors").items()
                if k.startswith(case["name"] + ".")}
    out = tmp_path / "gill.safetensors"
    assert main(["encode", "--backend", "gill",
                 *gill_args(fixture, case, "--out", str(out), "--dump-intermediates")]) == 0
    got = load_file(out)
    assert torch.equal(got["input_ids"], expected["input_ids"])
    for key in CLOSE:
        assert got[key].shape == expected[key].shape, key
        assert (got[key] - expected[key]).abs().max().item() <= 1e-4, key
    if case["greedy_new_tokens"]:
        text_out = tmp_path / "greedy.safetensors"
        assert main(["generate-text", *gill_args(fixture, case, "--max-new-tokens", str(case["greedy_new_tokens"]),
                                                 "--out", str(text_out))]) == 0
        assert torch.equal(load_file(text_out)["greedy_ids"], expected["greedy_ids"])


def test_img_rows_are_in_input_embeddings_and_output_head(gill, gill_fixture):
    expected = load_file(gill_fixture / "expected.safetensors")
    assert gill.img_token_ids == expected["img_token_ids"].tolist()
    rows = gill.lm.get_input_embeddings().weight[gill.img_token_ids]
    assert torch.equal(rows[None].float(), expected["img_input_embeds"])
    assert torch.equal(gill.lm.get_output_embeddings().weight[gill.img_token_ids], rows)


def test_kv_cache_matches_full_recomputation_and_forced_slot_matches_encode(gill, gill_fixture):
    images = [gill_fixture / "images" / "sunset.png"]
    prompt = "a man walks his dog on the beach. <i> they reach"
    cached = gill.generate(prompt, images, max_new_tokens=12, stop_at_newline=False)
    full = gill.generate(prompt, images, max_new_tokens=12, stop_at_newline=False, use_cache=False)
    assert torch.equal(cached.ids, full.ids) and cached.ids.shape[1] == 12
    forced = gill.generate(prompt, images, max_new_tokens=3, gen_scale=1e5, stop_at_newline=False)
    assert forced.ids[0, :8].tolist() == gill.img_token_ids and len(forced.slots) == 3
    slot, _ = gill.encode(prompt, images)  # the block right after the prompt == the single forward pass
    assert (forced.slots[0].cond - slot.cond).abs().max().item() <= 1e-4
    recomputed = gill.generate(prompt, images, max_new_tokens=3, gen_scale=1e5, stop_at_newline=False, use_cache=False)
    for a, b in zip(forced.slots, recomputed.slots, strict=True):
        assert (a.cond - b.cond).abs().max().item() <= 1e-4
    assert forced.text == "<i><i><i>"



def test_kv_cache_is_a_transformers_cache_passed_without_deprecated_arguments(gill):
    """The cache is a ``transformers.Cache`` handed over under the name the installed decoder declares
    (``cache`` from 5.24, ``past_key_values`` before), so no deprecation is warned about (or logged)."""
    import inspect
    import logging
    import warnings

    from transformers import Cache

    decoder = gill.lm.model.decoder
    declared = "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"
    calls, logged = [], []

    class Collect(logging.Handler):
        def emit(self, record):
            logged.append(record.getMessage())

    handler = Collect(level=logging.WARNING)
    logging.getLogger("transformers").addHandler(handler)
    hook = decoder.register_forward_pre_hook(lambda module, args, kwargs: calls.append(dict(kwargs)), with_kwargs=True)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cached = gill.generate("A photo of", max_new_tokens=4, stop_at_newline=False)
            full = gill.generate("A photo of", max_new_tokens=4, stop_at_newline=False, use_cache=False)
    finally:
        hook.remove()
        logging.getLogger("transformers").removeHandler(handler)
    assert torch.equal(cached.ids, full.ids)
    with_cache = [call for call in calls if call.get("use_cache")]
    assert len(with_cache) == 4  # the context, then one step per token but the last
    for call in with_cache:
        assert isinstance(call[declared], Cache) and set(call) & {"cache", "past_key_values"} == {declared}
    assert all(call[declared] is with_cache[0][declared] for call in with_cache)  # one cache, extended in place
    assert with_cache[-1][declared].get_seq_length() > 0
    def about_the_cache(message: str) -> bool:
        return "past_key_values" in message or ("cache" in message and "deprecat" in message.lower())

    deprecations = [str(w.message) for w in caught if about_the_cache(str(w.message))] + list(filter(about_the_cache,
                                                                                                     logged))
    assert not deprecations, deprecations


def test_kv_cache_tests_pass_under_the_lowest_declared_transformers():
    """The other end of the supported range: the ``-k cache`` GILL tests in an environment that is
    .venv with transformers pinned to requirements.txt's lower bound (built by scripts/run.sh)."""
    import os
    import re
    import subprocess
    from pathlib import Path

    from support import REPO

    if os.environ.get("KOSMOSG_LOWEST_TIER"):
        pytest.skip("already inside the lowest-transformers tier")
    (lowest,) = re.findall(r"^transformers>=(\S+)$", (REPO / "requirements.txt").read_text(), flags=re.M)
    python = Path(os.environ.get("KOSMOSG_LOWEST_VENV", REPO / ".venv" / "lowest")) / "bin" / "python"
    if not python.exists():
        message = f"{python} is missing: `bash scripts/run.sh test` builds it (transformers=={lowest} over .venv)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    version = subprocess.run([str(python), "-c", "import transformers; print(transformers.__version__)"],
                             capture_output=True, text=True, cwd=REPO)
    from packaging.version import Version

    assert version.returncode == 0, version.stdout + version.stderr
    assert Version(version.stdout.strip()) == Version(lowest), version.stdout
    env = {**os.environ, "KOSMOSG_LOWEST_TIER": "1"}
    done = subprocess.run([str(python), "-m", "pytest", "tests/test_gill.py", "-k", "cache", "-q", "-p",
                           "no:cacheprovider"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert re.search(r"\b2 passed\b", done.stdout), done.stdout[-2000:]

def test_sampling_is_seeded_and_checks_its_settings(gill):
    a = gill.generate("A photo of", max_new_tokens=8, temperature=0.8, top_p=0.9, seed=3, stop_at_newline=False)
    b = gill.generate("A photo of", max_new_tokens=8, temperature=0.8, top_p=0.9, seed=3, stop_at_newline=False)
    assert torch.equal(a.ids, b.ids)
    draws = {tuple(gill.generate("A photo of", max_new_tokens=8, temperature=1.5, seed=s,
                                 stop_at_newline=False).ids[0].tolist())
             for s in range(4)}
    assert len(draws) > 1
    with pytest.raises(ValueError, match="top_p needs temperature"):
        gill.generate("A photo of", max_new_tokens=2, top_p=0.5)
    ids = gill.generate("A photo of", max_new_tokens=8, min_word_tokens=8, ret_scale=1e5).ids[0].tolist()
    assert not set(ids) & set(gill.img_token_ids)  # [IMG] blocked before min_word_tokens


def test_retrieval_index_build_search_save_and_official_import(gill, gill_fixture, tmp_path):
    index = build_index(gill, str(gill_fixture / "images"))
    assert len(index.paths) == 7 and index.embeddings.shape == (7, 32)
    slot, _ = gill.encode("Generate an image similar to<i>", [gill_fixture / "images" / "noise.png"])
    hits = index.search(slot.ret_emb, gill.heads.logit_scale, k=3)
    scores = index.scores(slot.ret_emb, gill.heads.logit_scale)[0]
    cosine = torch.nn.functional.normalize(index.embeddings, dim=-1) @ slot.ret_emb[0]
    assert torch.allclose(scores, gill.heads.logit_scale.exp() * cosine, atol=1e-5)
    assert [h[1] for h in hits] == sorted([h[1] for h in hits], reverse=True) and hits[0][1] == scores.max().item()
    index.save(str(tmp_path / "index.safetensors"))
    loaded = RetrievalIndex.load(str(tmp_path / "index.safetensors"))
    assert loaded.paths == index.paths and torch.equal(loaded.embeddings, index.embeddings)
    official = tmp_path / "cc3m_embeddings_urls.npy"
    with open(official, "wb") as handle:  # the official file is a plain pickle despite its name
        pickle.dump({"paths": [f"https://example.invalid/{i}.jpg" for i in range(7)],
                     "embeddings": [e.numpy().astype(np.float16) for e in index.embeddings]}, handle)
    imported = RetrievalIndex.import_official(str(official))
    assert imported.paths[0].startswith("https://") and torch.allclose(imported.embeddings, index.embeddings, atol=1e-2)
    evil = tmp_path / "evil.npy"
    with open(evil, "wb") as handle:
        handle.write(b"cos\nsystem\n(S'touch " + str(tmp_path / "pwned").encode() + b"'\ntR.")
    with pytest.raises(RefusedPickleError, match="refused"):
        RetrievalIndex.import_official(str(evil))
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(CheckpointError, match="not a GILL retrieval index"):
        from safetensors.torch import save_file

        save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
        RetrievalIndex.load(str(tmp_path / "other.safetensors"))


def test_cli_index_commands(gill_fixture, tmp_path):
    out = tmp_path / "idx.safetensors"
    assert main(["gill-index", "build", str(gill_fixture / "images"), "--out", str(out), "--checkpoint",
                 str(gill_fixture), "--llm", str(gill_fixture / "llm"), "--vision", str(gill_fixture / "vision")]) == 0
    assert len(RetrievalIndex.load(str(out)).paths) == 7


def _copy_release(fixture, tmp_path):
    release = tmp_path / "release"
    shutil.copytree(fixture, release, ignore=shutil.ignore_patterns("llm", "vision", "images"))
    return release


def test_legacy_decision_model_is_detected_and_supported_with_an_index(gill_fixture, tmp_path):
    release = _copy_release(gill_fixture, tmp_path)
    torch.save({"state_dict": {"1.weight": torch.randn(2, 129), "1.bias": torch.zeros(2)}},
               release / "decision_model.pth.tar")
    gill = load_gill(str(release), str(gill_fixture / "llm"), str(gill_fixture / "vision"))
    slot, _ = gill.encode("A picture of")
    assert slot.decision is None and "needs a retrieval index" in slot.decision_note
    gill.index = build_index(gill, str(gill_fixture / "images"))
    slot, _ = gill.encode("A picture of")
    assert slot.decision.shape == (1, 2) and abs(slot.decision.sum().item() - 1) < 1e-5


def test_bad_gill_inputs(gill_fixture, tmp_path, official_fixture):
    llm, vision = str(gill_fixture / "llm"), str(gill_fixture / "vision")
    release = _copy_release(gill_fixture, tmp_path)
    # an LLM of another width
    other = tmp_path / "wide_llm"
    from kosmosg_core.gill.synthetic import write_opt

    write_opt(str(other), hidden=96, layers=1)
    with pytest.raises(CheckpointError, match="is 96 wide but the GILL checkpoint was trained on a 128-wide OPT"):
        load_gill(str(release), str(other), vision)
    # a vision folder that is not CLIP, and a missing one
    with pytest.raises(CheckpointError, match="holds a 'opt' model; GILL needs a CLIP vision model"):
        load_gill(str(release), llm, llm)
    with pytest.raises(CheckpointError, match="no vision model at .*config.json"):
        load_gill(str(release), llm, str(tmp_path / "nowhere"))
    # missing [IMG] rows
    state = torch.load(release / "pretrained_ckpt.pth.tar", weights_only=True)["state_dict"]
    rows = state.pop("model.input_embeddings.weight")
    torch.save({"state_dict": state}, release / "pretrained_ckpt.pth.tar")
    with pytest.raises(CheckpointError, match=r"lacks model.input_embeddings.weight, the \[IMG\] token rows"):
        load_gill(str(release), llm, vision)
    state["model.input_embeddings.weight"] = rows[:5]
    torch.save({"state_dict": state}, release / "pretrained_ckpt.pth.tar")
    with pytest.raises(CheckpointError, match=r"\[IMG\] rows are \(5, 128\) but model_args.json says num_tokens=8"):
        load_gill(str(release), llm, vision)
    # wrong family, missing args, refused pickle
    shutil.copy(official_fixture / "checkpoint.pt", release / "pretrained_ckpt.pth.tar")
    with pytest.raises(CheckpointError, match="not a GILL checkpoint: it is a Kosmos-G checkpoint"):
        load_gill(str(release), llm, vision)
    os.remove(release / "model_args.json")
    with pytest.raises(CheckpointError, match="model_args.json not found"):
        load_gill(str(release), llm, vision)
    shutil.copy(gill_fixture / "model_args.json", release / "model_args.json")
    with open(release / "pretrained_ckpt.pth.tar", "wb") as handle:
        handle.write(b"cos\nsystem\n(S'echo hi'\ntR.")
    with pytest.raises(RefusedPickleError, match="refused to call os.system"):
        load_gill(str(release), llm, vision)
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(gill_fixture / "model_args.json", empty / "model_args.json")
    with pytest.raises(CheckpointError, match="pretrained_ckpt.pth.tar not found in .*empty"):
        load_gill(str(empty), llm, vision)


def test_full_clip_model_folder_is_accepted(gill, gill_fixture, tmp_path):
    from transformers import CLIPConfig, CLIPModel, CLIPVisionModel

    vision = CLIPVisionModel.from_pretrained(str(gill_fixture / "vision"))
    config = CLIPConfig(text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                     "num_attention_heads": 1}, vision_config=vision.config.to_dict(),
                                     projection_dim=16)
    full = CLIPModel(config)
    inner = getattr(vision, "vision_model", vision)  # transformers 5 flattened CLIPVisionModel
    full.vision_model.load_state_dict(inner.state_dict())
    full.save_pretrained(str(tmp_path / "clip_full"))
    shutil.copy(gill_fixture / "vision" / "preprocessor_config.json", tmp_path / "clip_full")
    other = load_gill(str(gill_fixture), str(gill_fixture / "llm"), str(tmp_path / "clip_full"))
    image = [gill_fixture / "images" / "checker.png"]
    a, _ = gill.encode("like this <i>", image)
    b, _ = other.encode("like this <i>", image)
    assert (a.cond - b.cond).abs().max().item() <= 1e-5


def test_prompt_errors(gill):
    with pytest.raises(PromptError, match="1 image placeholder"):
        gill.encode("<i> and", [])
    with pytest.raises(PromptError, match="empty"):
        gill.encode("")


def test_synthetic_release_loads_at_other_sizes(tiny_gill_dirs):
    gill = load_gill(tiny_gill_dirs["checkpoint"], tiny_gill_dirs["llm"], tiny_gill_dirs["vision"])
    slot, ids = gill.encode("a dog <i> on the beach", [torch.rand(1, 40, 60, 3)])
    assert slot.cond.shape == (1, 77, 768) and ids.count(-100) == 4
