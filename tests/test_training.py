"""Training: each stage learns on tiny models, N processes equal 1, a killed run resumes exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from support import REPO
from support.training_assets import write_kosmosg, write_sd, write_shards, write_teacher


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("training")
    return {
        "init": write_kosmosg(str(root / "kosmos")),
        "teacher": write_teacher(str(root / "teacher")),
        "sd": write_sd(str(root / "sd")),
        "captions": write_shards(str(root / "captions"), count=8),
        "fixed_captions": write_shards(str(root / "fixed_captions"), count=4),
        "mix": write_shards(str(root / "mix"), kinds=("caption", "edit", "composition"), count=12),
        "fixed_mix": write_shards(str(root / "fixed_mix"), kinds=("caption", "edit", "composition"), count=6),
        "root": root,
    }


def stage2_args(assets, out, *extra):
    return ["--init", assets["init"], "--teacher", assets["teacher"], "--aligner-layers", "1",
            "--aligner-positions", "512", "--caption-tokens", "24", "--warmup-steps", "0", "--output-dir", str(out),
            *extra]


def stage3_args(assets, out, *extra):
    return ["--init", assets["init"], "--sd", assets["sd"], "--resolution", "32", "--data-weights", "1,1,1",
            "--warmup-steps", "0", "--output-dir", str(out), *extra]


def losses(out) -> list[float]:
    return [json.loads(line)["loss"] for line in open(os.path.join(out, "train_log.jsonl"))]


def launch(processes: int, module: str, args: list[str], env=None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
               "--master_port", str(29500 + os.getpid() % 1000), "-m", module, *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})


def test_stage2_learns_and_its_output_loads(assets, tmp_path):
    from kosmosg_core import load_kosmosg
    from training.stage2_align import main

    out = tmp_path / "align"
    main(stage2_args(assets, out, "--data", assets["fixed_captions"], "--batch-size", "4", "--max-steps", "25",
                     "--lr", "3e-4", "--log-every", "1"))
    curve = losses(out)
    assert curve[-1] < 0.7 * curve[0], curve
    encoder = load_kosmosg(out / "kosmosg_stage2.safetensors")  # loads as it is, tokenizer inside
    assert encoder.encode("a dog").cond.shape == (1, 77, 64)


def test_stage3_learns_and_its_output_loads_in_the_core(assets, tmp_path):
    from kosmosg_core import load_kosmosg, open_checkpoint
    from training.stage3_instruct import main

    out = tmp_path / "instruct"
    main(stage3_args(assets, out, "--data", assets["fixed_mix"], "--batch-size", "6", "--max-steps", "20",
                     "--lr", "3e-4", "--log-every", "1", "--fixed-randomness"))
    curve = losses(out)
    assert curve[-1] < curve[0] - 0.01, curve
    assert open_checkpoint(out / "kosmosg_final.safetensors").kind == "final"
    assert load_kosmosg(out / "kosmosg_final.safetensors", allow_stage2=False).encode("<i> x", [torch.rand(1, 9, 9, 3)])


def test_stage3_prompt_rules():
    from support.training_assets import image

    from training.data import Sample
    from training.engine import sample_generator
    from training.stage3_instruct import build_prompt

    crops = {"crop0": image(1), "crop0_white": image(2), "crop1": image(3), "crop1_white": image(4)}
    sample = Sample("k",
                    {"kind": "composition", "caption": "a dog wearing a hat",
                     "entities": [{"name": "hat"}, {"name": "dog"}]},
                    {"target": image(0), **crops})
    seen = {build_prompt(sample, sample_generator(0, 0, i))[0] for i in range(40)}
    assert seen == {"a dog <i> wearing a hat <i>", "a  <i> wearing a  <i>"}  # entity words kept or dropped together
    edit = Sample("e", {"kind": "edit", "input_caption": "a house", "instruction": "add snow"}, {"source": image(5)})
    prompts = {build_prompt(edit, sample_generator(0, 0, i))[0] for i in range(40)}
    assert prompts == {"a house <i> add snow", "<i> add snow"}


def test_two_processes_equal_one_with_the_same_global_batch(assets, tmp_path):
    common = ["--data", assets["mix"], "--max-steps", "3", "--save-every", "3", "--lr", "1e-3"]
    one = launch(1, "training.stage3_instruct", stage3_args(assets, tmp_path / "one", *common, "--batch-size", "4"))
    two = launch(2, "training.stage3_instruct", stage3_args(assets, tmp_path / "two", *common, "--batch-size", "2"))
    assert one.returncode == 0 and two.returncode == 0, (one.stderr[-2000:], two.stderr[-2000:])
    assert (tmp_path / "two" / "step-3" / "random_states_1.pkl").exists()  # really two ranks
    a, b = (load_file(tmp_path / run / "step-3" / "model.safetensors") for run in ("one", "two"))
    # noise, timesteps, null-condition dropout and caption dropping all on, seeded by sample index
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= 1e-5, worst  # float32 all-reduce vs local mean: differences ~1e-7


def test_killed_run_resumes_to_the_same_weights(assets, tmp_path):
    common = ["--data", assets["captions"], "--batch-size", "2", "--max-steps", "6", "--save-every", "2", "--lr",
              "1e-3"]
    straight = launch(1, "training.stage2_align", stage2_args(assets, tmp_path / "straight", *common))
    killed = launch(1, "training.stage2_align",
                    stage2_args(assets, tmp_path / "resumed", *common, "--crash-at-step", "3"))
    assert straight.returncode == 0 and killed.returncode != 0
    assert not (tmp_path / "resumed" / "step-6").exists()
    resumed = launch(1, "training.stage2_align", stage2_args(assets, tmp_path / "resumed", *common))
    assert resumed.returncode == 0 and "resumed from" in resumed.stdout + resumed.stderr
    a, b = (load_file(tmp_path / run / "step-6" / "model.safetensors") for run in ("straight", "resumed"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) == 0.0


def test_fsdp_through_accelerate_on_cpu(assets, tmp_path):
    env = {"ACCELERATE_USE_FSDP": "true", "FSDP_SHARDING_STRATEGY": "FULL_SHARD",
           "FSDP_STATE_DICT_TYPE": "FULL_STATE_DICT",
           "FSDP_USE_ORIG_PARAMS": "true", "FSDP_SYNC_MODULE_STATES": "true", "FSDP_AUTO_WRAP_POLICY": "NO_WRAP"}
    done = launch(2, "training.stage2_align", stage2_args(assets, tmp_path / "fsdp", "--data", assets["captions"],
                                                           "--batch-size", "2", "--max-steps", "2"), env)
    if done.returncode and "no available devices found" in done.stderr:
        pytest.skip("Accelerate refuses FSDP without a GPU on this torch/accelerate; configs marked untested")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "fsdp" / "kosmosg_stage2.safetensors").exists()


def test_shards_round_trip(tmp_path):
    from support.training_assets import image

    from training.data import ShardDataset, ShardWriter

    with ShardWriter(str(tmp_path), per_shard=2) as writer:
        for i in range(5):
            writer.write({"kind": "caption", "caption": f"c{i}"}, {"target": image(i)})
    data = ShardDataset(str(tmp_path))
    assert len(data) == 5 and len(list(tmp_path.glob("*.tar"))) == 3
    assert data[3].meta["caption"] == "c3" and data[3].images["target"].size == (48, 40)
    with pytest.raises(ValueError, match="sample kind"):
        ShardWriter(str(tmp_path / "x")).write({"kind": "video"})


def test_stage1_learns_text_only_targets(assets, tmp_path):
    from kosmosg_core import open_checkpoint
    from training.stage1_mllm import main

    out = tmp_path / "mllm"
    main(["--init", assets["init"], "--data", assets["fixed_captions"], "--batch-size", "4", "--max-steps", "15",
          "--lr", "1e-3", "--warmup-steps", "0", "--log-every", "1", "--output-dir", str(out)])
    curve = losses(out)
    assert curve[-1] < 0.7 * curve[0], curve
    assert open_checkpoint(out / "kosmosg_final.safetensors").kind == "final"


def test_gill_training_learns_and_its_release_loads(assets, tiny_gill_dirs, tmp_path):
    from kosmosg_core.gill import load_gill
    from training.gill_train import main

    teacher = write_teacher(str(tmp_path / "sd_text"), width=768)
    out = tmp_path / "gill"
    main(["--release", tiny_gill_dirs["checkpoint"], "--llm", tiny_gill_dirs["llm"], "--vision",
          tiny_gill_dirs["vision"],
          "--teacher", teacher, "--data", assets["fixed_captions"], "--batch-size", "4", "--max-steps", "15",
          "--lr", "1e-3", "--betas", "0.9", "0.95", "--warmup-steps", "0", "--log-every", "1", "--output-dir",
          str(out)])
    log = [json.loads(line) for line in open(out / "train_log.jsonl")]
    first, last = log[0], log[-1]
    # a random tiny OPT starts near ln(vocab) ~ 6; far above means its weights were never initialised
    # (once: a torch.nn.init stub left behind by a checkpoint load earlier in the process)
    assert first["caption"] < 10 and first["img"] < 10, first
    # the [IMG]-prediction CE is mostly frozen-OPT caption tokens; the trainable terms must fall
    # (seeded: alone or after any other test, generation 40.5 -> 28.4, retrieval 1.48 -> 1.21, total 54.0 -> 41.5)
    assert last["generation"] < 0.8 * first["generation"], (first, last)
    assert last["retrieval"] < 0.95 * first["retrieval"], (first, last)
    assert last["caption"] < first["caption"], (first, last)
    assert last["loss"] < 0.85 * first["loss"], [r["loss"] for r in log]
    trained = load_gill(str(out / "gill_release"), tiny_gill_dirs["llm"], tiny_gill_dirs["vision"])
    original = load_gill(tiny_gill_dirs["checkpoint"], tiny_gill_dirs["llm"], tiny_gill_dirs["vision"])
    a, _ = trained.encode("a dog")
    b, _ = original.encode("a dog")
    assert not torch.allclose(a.cond, b.cond)  # the trained heads are what loads
    rows = trained.lm.get_input_embeddings().weight[trained.img_token_ids].float().norm(dim=-1)
    assert torch.allclose(rows, rows.mean().expand_as(rows), rtol=1e-2)  # renormalised to one norm


def test_convert_folder_and_jsonl(tmp_path):
    from support.training_assets import image

    from training.convert_data import main
    from training.data import ShardDataset

    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        image(i).save(folder / f"p{i}.png")
        (folder / f"p{i}.txt").write_text(f"photo {i}\n")
    image(9).save(folder / "no_caption.png")
    assert main(["--folder", str(folder), "--out", str(tmp_path / "a")]) == 0
    data = ShardDataset(str(tmp_path / "a"))
    assert len(data) == 3 and data[1].meta == {"kind": "caption", "caption": "photo 1"}
    (tmp_path / "edits.jsonl").write_text(json.dumps(
        {"kind": "edit", "input_caption": "a", "instruction": "b",
         "images": {"source": "photos/p0.png", "target": "photos/p1.png"}}) + "\n")
    assert main(["--jsonl", str(tmp_path / "edits.jsonl"), "--out", str(tmp_path / "b")]) == 0
    assert set(ShardDataset(str(tmp_path / "b"))[0].images) == {"source", "target"}


def test_openimages_builder_with_stand_in_models():
    import numpy as np

    from support.training_assets import image

    from training.build_openimages import clean_entities, compose_sample

    assert clean_entities("a red dog and a dog house", ["red", "dog house", "dog", "cat"]) == ["dog house"]

    def segmenter(picture, entity):
        mask = np.zeros(picture.size[::-1], dtype=bool)
        mask[5:20, 10:30] = True
        return mask

    meta, images = compose_sample(image(3), lambda im: "a dog next to a tree", lambda c: ["tree", "dog", "blue"],
                                  segmenter, size=32, crop_size=16)
    assert meta == {"kind": "composition", "caption": "a dog next to a tree",
                    "entities": [{"name": "dog"}, {"name": "tree"}]}
    white = np.asarray(images["crop0_white"])
    assert images["crop0"].size == (16, 16) and (white[0] == 255).all()  # outside the mask is white
    assert compose_sample(image(3), lambda im: "nothing", lambda c: ["dog"], segmenter) is None


def test_grad_accumulation_equals_a_bigger_batch_and_bf16_checkpointing_run(assets, tmp_path):
    from training.stage2_align import main as stage2

    common = ["--data", assets["captions"], "--max-steps", "2", "--save-every", "2", "--lr", "1e-3"]
    stage2(stage2_args(assets, tmp_path / "big", *common, "--batch-size", "4"))
    stage2(stage2_args(assets, tmp_path / "accum", *common, "--batch-size", "2", "--grad-accum", "2"))
    a, b = (load_file(tmp_path / run / "step-2" / "model.safetensors") for run in ("big", "accum"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5
    out = tmp_path / "bf16"  # a fresh process: Accelerate fixes the precision once per process
    done = launch(1, "training.stage1_mllm",
                  ["--init", assets["init"], "--data", assets["captions"], "--batch-size", "2",
                                              "--max-steps", "2", "--mixed-precision", "bf16",
                                              "--gradient-checkpointing", "--log-every", "1", "--output-dir", str(out)])
    assert done.returncode == 0, done.stderr[-2000:]
    assert all(torch.isfinite(torch.tensor(v)) for v in losses(out))
