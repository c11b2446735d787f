"""Per-protocol scoring of generated images against references."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .datasets import EvalItem
from .metrics import ClipScorer, DinoScorer, LpipsScorer, cosine, make_fid, resized_unit_batch


def _chunks(seq: Sequence, size: int):
    for start in range(0, len(seq), size):
        yield seq[start : start + size]


def score_dreambench(items: Sequence[EvalItem], generated: Callable[[EvalItem], list[str]], dino: str, clip: str,
                     device: str = "cpu", batch: int = 16) -> dict:
    """Mean DINO and CLIP-I (vs the single reference image) and CLIP-T (vs the original prompt)
    over every generated image."""
    dino_scorer, clip_scorer = DinoScorer(dino, device), ClipScorer(clip, device)
    references = sorted({i.reference for i in items})
    ref_dino = dict(zip(references, dino_scorer.features(references), strict=True))
    ref_clip = dict(zip(references, clip_scorer.image_features(references), strict=True))
    dino_all, clip_i_all, clip_t_all = [], [], []
    for chunk in _chunks(list(items), max(1, batch // 4)):
        paths = [p for item in chunk for p in generated(item)]
        owners = [item for item in chunk for _ in generated(item)]
        gen_dino, gen_clip = dino_scorer.features(paths), clip_scorer.image_features(paths)
        text = clip_scorer.text_features([item.text for item in owners])
        dino_all.append(cosine(gen_dino, torch.stack([ref_dino[o.reference] for o in owners])))
        clip_i_all.append(cosine(gen_clip, torch.stack([ref_clip[o.reference] for o in owners])))
        clip_t_all.append(cosine(gen_clip, text))
    return {"dino": torch.cat(dino_all).mean().item(), "clip_i": torch.cat(clip_i_all).mean().item(),
            "clip_t": torch.cat(clip_t_all).mean().item()}


def score_fid(real: Sequence[str], fake: Sequence[str], features: str = "inception", weights: str | None = None,
              device: str = "cpu", batch: int = 32) -> dict:
    """FID of the generated images (as they are, 512x512) against the real set (shorter side
    256, center crop 256), as the official COCO script feeds torchmetrics."""
    fid = make_fid(features, weights, device)
    for chunk in _chunks(list(real), batch):
        fid.update(resized_unit_batch(chunk, 256, crop=True).to(device), real=True)
    for chunk in _chunks(list(fake), batch):
        fid.update(resized_unit_batch(chunk, None).to(device), real=False)
    return {"fid": fid.compute().item(), "real_images": len(real), "generated_images": len(fake)}


def score_clip_lpips(items: Sequence[EvalItem], generated: Callable[[EvalItem], list[str]], clip: str,
                     lpips_net: str = "alex", device: str = "cpu", batch: int = 16) -> dict:
    """GILL's metrics: CLIP (ViT-L/14 image embeddings) cosine and LPIPS to the ground truth."""
    clip_scorer, lpips = ClipScorer(clip, device, with_text=False), LpipsScorer(lpips_net, device)
    clip_all, lpips_all = [], []
    for chunk in _chunks(list(items), batch):
        gen = [generated(item)[0] for item in chunk]
        refs = [item.reference for item in chunk]
        clip_all.append(cosine(clip_scorer.image_features(gen), clip_scorer.image_features(refs)))
        lpips_all.append(lpips(gen, refs).cpu())
    return {"clip": torch.cat(clip_all).mean().item(), "lpips": torch.cat(lpips_all).mean().item()}
