"""The evaluation protocols end to end on tiny stand-ins, the dataset loaders, and the metrics
against known values (identical sets, hand computations)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from support import eval_assets as assets

from kosmosg_core import cli
from kosmosg_core.evaluation import datasets
from kosmosg_core.evaluation.metrics import ClipFeatures, ClipScorer, DinoScorer, LpipsScorer, cosine, make_fid

FAST = ["--steps", "2", "--size", "16", "--device", "cpu"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Tiny SD 1.5 folder, scorers, Kosmos-G and GILL, and the four datasets."""
    from kosmosg_core.comfy_host.tiny_models import write_tiny_gill_folders, write_tiny_kosmosg

    root = tmp_path_factory.mktemp("eval")
    saved = os.environ.get("TORCH_HOME")
    os.environ["TORCH_HOME"] = str(root / "torch_home")
    assets.seed_torch_hub_alexnet(str(root / "torch_home"))
    gill = write_tiny_gill_folders(str(root / "gill"))
    paths = {
        "root": root, "sd": assets.write_sd(str(root / "sd")), "clip": assets.write_clip_scorer(str(root / "clip")),
        "dino": assets.write_dino_scorer(str(root / "dino")), "kosmos": write_tiny_kosmosg(str(root / "kosmos")),
        "gill": ["--checkpoint", gill["release"], "--llm", gill["llm"], "--vision", gill["vision"]],
        "dreambench": assets.write_dreambench(str(root / "dreambench")), "coco": assets.write_coco(str(root / "coco")),
        "vist": assets.write_vist(str(root / "vist")), "visdial": assets.write_visdial(str(root / "visdial")),
    }
    yield paths
    if saved is None:
        os.environ.pop("TORCH_HOME", None)
    else:
        os.environ["TORCH_HOME"] = saved


def run_eval(argv: list[str], capsys) -> dict:
    assert cli.main(["eval", *argv]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def load_results(out) -> tuple[dict, str]:
    return json.loads((out / "results.json").read_text()), (out / "results.md").read_text()


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=np.int16)


# -- protocols end to end ---------------------------------------------------------------------

def test_dreambench_end_to_end_resumes_and_batches_like_single_runs(env, capsys):
    out = env["root"] / "out_dreambench"
    argv = ["dreambench", "--data", env["dreambench"], "--sd", env["sd"], "--checkpoint", env["kosmos"], "--out",
            str(out), "--dino", env["dino"], "--clip", env["clip"], "--limit", "3", "--batch-size", "2", *FAST]
    summary = run_eval(argv, capsys)
    result, table = load_results(out)
    images = sorted((out / "images").iterdir())
    assert [p.name for p in images][:4] == [f"backpack_00_{n}.png" for n in range(4)]
    assert len(images) == 12  # 3 prompts x 4 images
    assert set(result["metrics"]) == {"dino", "clip_i", "clip_t"} == set(summary["metrics"])
    assert all(-1.0 <= v <= 1.0 for v in result["metrics"].values())
    assert result["sampling"]["scheduler"] == "dpms" and result["sampling"]["guidance"] == 7.5
    assert result["sampling"]["per_prompt"] == 4 and result["items"] == 3
    assert result["comparable_with_published"] is False
    assert "| Kosmos-G (single image input) | 0.694 | 0.847 | 0.287 |" in table
    assert f"| **ours** | {result['metrics']['dino']:.3f} |" in table
    assert "steps=2 (official 100)" in table and "subset: 3 of 50 items" in table

    # the four images of one prompt share seed 0, as the official sampler's one generator per batch
    first = [pixels(out / "images" / f"backpack_00_{n}.png") for n in range(4)]
    assert any(np.abs(first[0] - f).max() > 0 for f in first[1:])

    # resume: only the item with a missing image is generated again, and alone (batch of one)
    # it reproduces what the batch of two made
    victim, keep = out / "images" / "backpack_01_2.png", out / "images" / "backpack_00_0.png"
    before, kept_mtime = pixels(victim), keep.stat().st_mtime_ns
    victim.unlink()
    run_eval(argv, capsys)
    assert keep.stat().st_mtime_ns == kept_mtime
    assert np.abs(pixels(victim) - before).max() <= 1


def test_coco_fid_end_to_end(env, capsys):
    out = env["root"] / "out_coco"
    run_eval(["coco-fid", "--data", env["coco"], "--sd", env["sd"], "--checkpoint", env["kosmos"], "--out", str(out),
              "--fid-features", f"clip:{env['clip']}", "--captions", "8", "--batch-size", "4", *FAST], capsys)
    result, table = load_results(out)
    assert result["metrics"]["real_images"] == 6 and result["metrics"]["generated_images"] == 8
    assert result["metrics"]["fid"] > 0
    assert result["sampling"]["scheduler"] == "ddim" and result["sampling"]["guidance"] == 3.0
    assert "not comparable with the published Inception FID" in table and "| Kosmos-G-1.9B | 10.990 |" in table
    assert len(list((out / "images").iterdir())) == 8


@pytest.mark.parametrize("context, published, items", [("captions+images", "0.641", 3), ("last-caption", "0.581", 4)])
def test_vist_end_to_end(env, capsys, context, published, items):
    out = env["root"] / f"out_vist_{context}"
    run_eval(["vist", "--data", env["vist"], "--sd", env["sd"], *env["gill"], "--out", str(out), "--clip", env["clip"],
              "--context", context, *FAST], capsys)
    result, table = load_results(out)
    # the story missing an input image is skipped only where its images are input
    assert result["items"] == items and result["skipped"] == 4 - items
    assert 0 < result["metrics"]["lpips"] and -1 <= result["metrics"]["clip"] <= 1
    assert result["sampling"]["scheduler"] == "pndm" and result["sampling"]["seed"] == 42
    assert f"| GILL | {published} |" in table and context in result["title"]
    assert sorted(p.name for p in (out / "images").iterdir())[:3] == ["5005.png", "5010.png", "5015.png"]


def test_visdial_end_to_end(env, capsys):
    out = env["root"] / "out_visdial"
    run_eval(["visdial", "--data", env["visdial"], "--sd", env["sd"], *env["gill"], "--out", str(out), "--clip",
              env["clip"], "--rounds", "5", "--batch-size", "2", *FAST], capsys)
    result, table = load_results(out)
    assert result["items"] == 3 and result["variant"] == {"rounds": 5}
    assert "| GILL | 0.621 | 0.718 |" in table and "| Stable Diffusion | 0.629 | 0.722 |" in table
    assert (out / "images" / "000000185000.png").exists()


def test_score_only_without_images_is_a_clear_error(env, capsys):
    code = cli.main(["eval", "visdial", "--data", env["visdial"], "--sd", env["sd"], *env["gill"], "--clip",
                     env["clip"], "--out", str(env["root"] / "empty"), "--score-only", *FAST])
    assert code == 2
    assert "generated image(s) are missing" in capsys.readouterr().err


def test_gill_protocol_needs_its_three_folders(env, capsys):
    code = cli.main(["eval", "vist", "--data", env["vist"], "--sd", env["sd"], "--checkpoint", env["gill"][1],
                     "--out", str(env["root"] / "x"), *FAST])
    assert code == 2 and "--llm (OPT-6.7B) and --vision" in capsys.readouterr().err


def test_sd_folder_is_checked(env, capsys, tmp_path):
    code = cli.main(["eval", "dreambench", "--data", env["dreambench"], "--sd", str(tmp_path), "--checkpoint",
                     env["kosmos"], "--out", str(tmp_path / "o"), *FAST])
    assert code == 2 and "not a diffusers Stable Diffusion 1.5 folder" in capsys.readouterr().err


# -- dataset loaders --------------------------------------------------------------------------

def test_dreambench_prompts_reference_images_and_styles(env):
    items = datasets.dreambench_items(env["dreambench"])
    assert len(items) == 50
    backpack = [i for i in items if i.key.startswith("backpack_")]
    assert backpack[0].prompt == "<i> in the jungle" and backpack[0].text == "a backpack in the jungle"
    assert backpack[20].prompt == "<i>, red" and backpack[20].text == "a red backpack"
    assert backpack[24].text == "a cube shaped backpack"
    assert os.path.basename(backpack[0].reference) == "02.jpg" and backpack[0].images == [backpack[0].reference]
    dog = [i for i in items if i.key.startswith("dog_")]
    assert dog[10].prompt == "<i> wearing a red hat" and os.path.basename(dog[0].reference) == "02.jpg"
    paper = datasets.dreambench_items(env["dreambench"], style="paper", subjects=["backpack"])
    assert paper[0].prompt == "<i> backpack in the jungle" and paper[20].prompt == "<i> backpack, red"
    with pytest.raises(datasets.DatasetError, match="unknown DreamBench subject"):
        datasets.dreambench_items(env["dreambench"], subjects=["unicorn"])


def test_vist_contexts_and_both_annotation_layouts(env, tmp_path):
    items, skipped = datasets.vist_items(env["vist"])
    first = items[0]
    assert skipped == ["43"] and len(first.images) == 4 and first.prompt.count("<i>") == 4
    assert first.prompt.startswith("the family went to the park 0.<i>") and first.prompt.endswith("park 4.")
    assert first.reference.endswith("5005.png") and first.key == "5005"
    captions, _ = datasets.vist_items(env["vist"], "captions")
    assert captions[0].images == [] and captions[0].prompt.count("park") == 5
    last, _ = datasets.vist_items(env["vist"], "last-caption")
    assert last[0].prompt == "the family went to the park 4."
    # GILL's formatted file gives the same items
    stories = {}
    for (ann,) in json.load(open(os.path.join(env["vist"], "sis", "val.story-in-sequence.json")))["annotations"]:
        stories.setdefault(ann["story_id"], []).append({"caption": ann["text"], "image_id": ann["photo_flickr_id"]})
    formatted = tmp_path / "sis"
    formatted.mkdir()
    (formatted / "val_formatted.json").write_text(json.dumps({"annotations": stories}))
    (formatted / "val_images").symlink_to(os.path.join(env["vist"], "sis", "val_images"))
    same = lambda found: [(i.prompt, [os.path.basename(p) for p in i.images]) for i in found]  # noqa: E731
    assert same(datasets.vist_items(str(tmp_path))[0]) == same(items)


def test_visdial_dialogue_text(env):
    one, _ = datasets.visdial_items(env["visdial"], rounds=1)
    ten, _ = datasets.visdial_items(env["visdial"], rounds=10)
    assert one[0].prompt == "Q: is there a dog 0?\nA: yes 0"
    assert ten[0].prompt.count("\n") == 19 and one[0].key == "000000185000"
    assert one[0].reference.endswith("VisualDialog_val2018_000000185000.jpg")


@pytest.mark.parametrize("loader, message", [
    (lambda root: datasets.coco_captions(root), "COCO captions_val2014.json not found"),
    (lambda root: datasets.visdial_items(root), "VisDial visdial_1.0_val.json not found"),
    (lambda root: datasets.vist_items(root), "VIST image folder val_images/ not found"),
    (lambda root: datasets.dreambench_items(root), "DreamBench prompts_and_classes.txt not found"),
])
def test_missing_dataset_files_name_the_file_and_the_source(tmp_path, loader, message):
    with pytest.raises(datasets.DatasetError, match=message) as err:
        loader(str(tmp_path))
    assert "http" in str(err.value)


def test_broken_annotation_json_is_reported(tmp_path):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "captions_val2014.json").write_text("{\"annotations\": [")
    with pytest.raises(datasets.DatasetError, match="is not valid JSON"):
        datasets.coco_captions(str(tmp_path))


def test_coco_caption_sample_is_seeded(env):
    a = datasets.coco_captions(env["coco"], 5, seed=0)
    assert [i.prompt for i in a] == [i.prompt for i in datasets.coco_captions(env["coco"], 5, seed=0)]
    assert [i.prompt for i in a] != [i.prompt for i in datasets.coco_captions(env["coco"], 5, seed=1)]


# -- metrics against known values -------------------------------------------------------------

def sample_images(count: int, start: int = 0, size=(40, 40)) -> list[Image.Image]:
    return [assets.picture(start + i, size) for i in range(count)]


def test_fid_is_zero_for_identical_sets_and_matches_the_formula(env):
    images = sample_images(24)
    batch = torch.stack([torch.from_numpy(np.asarray(i, dtype=np.float32) / 255).permute(2, 0, 1) for i in images])
    fid = make_fid(f"clip:{env['clip']}")
    fid.update(batch, real=True)
    fid.update(batch, real=False)
    assert abs(fid.compute().item()) < 1e-3

    other = torch.stack([torch.from_numpy(np.asarray(i, dtype=np.float32) / 255).permute(2, 0, 1)
                         for i in sample_images(24, start=500)])
    fid = make_fid(f"clip:{env['clip']}")
    fid.update(batch, real=True)
    fid.update(other, real=False)
    from scipy import linalg

    features = ClipFeatures(env["clip"])
    a, b = features(batch).numpy(), features(other).numpy()
    mu_a, mu_b, cov_a, cov_b = a.mean(0), b.mean(0), np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    expected = ((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * linalg.sqrtm(cov_a @ cov_b).real)
    assert fid.compute().item() == pytest.approx(expected, rel=1e-3)
    assert expected > 1e-3


def test_clip_scores_identical_images_one_and_text_cosine_matches_the_model(env):
    scorer = ClipScorer(env["clip"])
    images = sample_images(3)
    assert torch.allclose(cosine(scorer.image_features(images), scorer.image_features(images)), torch.ones(3),
                          atol=1e-5)
    texts = ["a dog on a beach", "a red car", "two cats"]
    ours = cosine(scorer.image_features(images), scorer.text_features(texts))
    inputs = scorer.tokenizer(texts, padding=True, return_tensors="pt")
    pixels_ = scorer.processor(images=images, return_tensors="pt").pixel_values
    with torch.no_grad():
        logits = scorer.model(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask,
                              pixel_values=pixels_).logits_per_image
    expected = torch.diagonal(logits / scorer.model.logit_scale.exp())
    assert torch.allclose(ours, expected, atol=1e-5)


def test_dino_identical_images_score_one(env):
    scorer = DinoScorer(env["dino"])
    a, b = scorer.features(sample_images(2)), scorer.features(sample_images(2, start=50))
    assert torch.allclose(cosine(a, a), torch.ones(2), atol=1e-5)
    assert (cosine(a, b) < 0.9999).all()
    assert scorer.pixels(sample_images(1)).shape == (1, 3, 224, 224)


def test_lpips_is_zero_for_identical_images_and_matches_a_hand_computation(env):
    import torchmetrics
    from torchvision.models import alexnet

    scorer = LpipsScorer()
    gen, ref = sample_images(2, size=(64, 48)), sample_images(2, start=80, size=(64, 48))
    assert torch.allclose(scorer(gen, gen), torch.zeros(2), atol=1e-6)
    ours = scorer(gen, ref)
    assert (ours > 0).all()

    # by hand: AlexNet relu1..relu5 features of [-1, 1] inputs shifted and scaled, unit-normalised
    # over channels, squared differences weighted by LPIPS' linear layers, averaged over space, summed
    net = alexnet()
    net.load_state_dict(torch.load(os.path.join(os.environ["TORCH_HOME"], "hub", "checkpoints",
                                                "alexnet-owt-7be5be79.pth")))
    lin = torch.load(os.path.join(os.path.dirname(torchmetrics.__file__), "functional", "image", "lpips_models",
                                  "alex.pth"),
                     map_location="cpu")
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def features(images):
        x = torch.stack([torch.from_numpy(np.asarray(i.resize((256, 256), Image.BILINEAR), dtype=np.float32) / 255)
                         .permute(2, 0, 1) for i in images]) * 2 - 1
        x, outs = (x - shift) / scale, []
        for index, layer in enumerate(net.features[:12]):
            x = layer(x)
            if index in (1, 4, 7, 9, 11):
                outs.append(x / torch.sqrt((x**2).sum(1, keepdim=True) + 1e-8))
        return outs

    with torch.no_grad():
        expected = sum((((fa - fb) ** 2) * lin[f"lin{n}.model.1.weight"]).sum(1).mean((1, 2))
                       for n, (fa, fb) in enumerate(zip(features(gen), features(ref), strict=True)))
    assert torch.allclose(ours, expected, rtol=1e-4)


def test_gill_negative_is_sd_text_encoder_on_empty_prompt(env):
    from kosmosg_core.evaluation.sd_pipeline import empty_prompt_embedding, load_sd15, make_scheduler

    pipe = load_sd15(env["sd"], "pndm", torch.float32)
    uncond = empty_prompt_embedding(pipe)
    ids = pipe.tokenizer([""], padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert uncond.shape == (1, 77, 768) and ids[0, 0] == 0 and (ids[0, 1:] == 1).all()
    assert torch.equal(uncond, pipe.text_encoder(ids)[0])
    dpms = make_scheduler("dpms")
    assert dpms.config.algorithm_type == "dpmsolver++" and dpms.config.final_sigmas_type == "sigma_min"
    assert make_scheduler("ddim").config.steps_offset == 1


def test_accelerate_launch_splits_items_and_gives_the_single_process_images(env, capsys):
    """Two CPU processes under ``accelerate launch`` share the items; the main one scores."""
    import subprocess
    import sys

    common = ["visdial", "--data", env["visdial"], "--sd", env["sd"], *env["gill"], "--clip", env["clip"], "--rounds",
              "1", *FAST]
    single = env["root"] / "out_single"
    run_eval([*common, "--out", str(single)], capsys)
    launched = env["root"] / "out_launched"
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                           "-m", "kosmosg_core", "eval", *common, "--out", str(launched)],
                          cwd=repo, env={**os.environ, "PYTHONPATH": repo}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    names = sorted(p.name for p in (single / "images").iterdir())
    assert names == sorted(p.name for p in (launched / "images").iterdir()) and len(names) == 3
    for name in names:
        assert np.abs(pixels(single / "images" / name) - pixels(launched / "images" / name)).max() <= 1
    a, b = load_results(single)[0]["metrics"], load_results(launched)[0]["metrics"]
    assert a == pytest.approx(b, abs=1e-4)
