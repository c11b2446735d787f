"""The papers' scorers: DINO, CLIP-I, CLIP-T, FID and LPIPS.

FID and LPIPS are torchmetrics'. The CLIP and DINO similarities are plain cosines of
transformers features, because that is what the official scripts compute (torchmetrics'
``CLIPScore`` would clamp at 0 and scale by 100, and feed tensors where the scripts feed PIL
images to ``CLIPProcessor``). Preprocessing follows the official scripts; where it differs
from a library default it is said below.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ..errors import KosmosGError
from ..image_processing import center_crop, decode_image_file, resize_bicubic

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def import_torchmetrics():
    try:
        import torchmetrics
    except ImportError as exc:
        raise KosmosGError("FID and LPIPS need torchmetrics (and torch-fidelity for the Inception FID, "
                           "torchvision for LPIPS): pip install -r training/requirements.txt") from exc
    return torchmetrics


def open_rgb(path_or_image) -> Image.Image:
    """RGB without EXIF rotation (the scoring scripts open files plainly), under the library's image
    limits (regular files only, pixel count checked from the header); unreadable files are an ImageError."""
    if isinstance(path_or_image, Image.Image):
        return path_or_image.convert("RGB")
    return decode_image_file(path_or_image).convert("RGB")


def to_unit_tensor(image: Image.Image) -> torch.Tensor:
    """(3, H, W) float in [0, 1]."""
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a.float(), b.float()
    return (a / a.norm(dim=-1, keepdim=True) * (b / b.norm(dim=-1, keepdim=True))).sum(-1)


class DinoScorer:
    """DINO ViT-S/16 CLS features (the hub ``dino_vits16`` output == transformers' post-LN CLS).

    Resize 256 bicubic, center crop 224, ImageNet normalization, as DreamBench's evaluation."""

    def __init__(self, model: str = "facebook/dino-vits16", device: str = "cpu"):
        from transformers import ViTModel

        self.model = ViTModel.from_pretrained(model, add_pooling_layer=False).to(device).eval()
        self.device = device

    def pixels(self, images) -> torch.Tensor:
        crops = [center_crop(resize_bicubic(open_rgb(i), 256), 224) for i in images]
        x = torch.stack([to_unit_tensor(c) for c in crops])
        mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
        return ((x - mean) / std).to(self.device)

    @torch.inference_mode()
    def features(self, images) -> torch.Tensor:
        return self.model(pixel_values=self.pixels(images)).last_hidden_state[:, 0]


class ClipScorer:
    """CLIP image and text features with the model's own ``CLIPProcessor`` on PIL images."""

    def __init__(self, model: str = "openai/clip-vit-base-patch32", device: str = "cpu", with_text: bool = True):
        from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

        self.model = CLIPModel.from_pretrained(model).to(device).eval()
        self.processor = CLIPImageProcessor.from_pretrained(model)
        self.tokenizer = CLIPTokenizer.from_pretrained(model) if with_text else None
        self.device = device

    @torch.inference_mode()
    def image_features(self, images) -> torch.Tensor:
        pixels = self.processor(images=[open_rgb(i) for i in images], return_tensors="pt").pixel_values
        return self._features(self.model.get_image_features(pixel_values=pixels.to(self.device)))

    @torch.inference_mode()
    def text_features(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts, padding=True, truncation=True, max_length=77,
                                return_tensors="pt").to(self.device)
        return self._features(self.model.get_text_features(**tokens))

    @staticmethod
    def _features(out) -> torch.Tensor:  # transformers 5 returns an output object with pooler_output
        return out if isinstance(out, torch.Tensor) else out.pooler_output


def resized_unit_batch(images, size: int | None, crop: bool = False) -> torch.Tensor:
    """(B, 3, S, S) in [0, 1]: bilinear resize to S x S (LPIPS scripts), or shorter side to S
    then center crop (the COCO real set); ``size=None`` keeps the images as they are."""
    out = []
    for image in images:
        image = open_rgb(image)
        if size is not None:
            if crop:
                image = center_crop(resize_bicubic(image, size), size)
            else:
                image = image.resize((size, size), Image.BILINEAR)
        out.append(to_unit_tensor(image))
    return torch.stack(out)


class LpipsScorer:
    """LPIPS v0.1 (AlexNet) from torchmetrics; both images resized to 256x256 as GILL's lpips_2dirs.py."""

    def __init__(self, net: str = "alex", device: str = "cpu"):
        import_torchmetrics()
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

        self.metric = LearnedPerceptualImagePatchSimilarity(net_type=net, reduction="none", normalize=True).to(device)
        self.device = device

    @torch.inference_mode()
    def __call__(self, generated, references) -> torch.Tensor:
        a = resized_unit_batch(generated, 256).to(self.device)
        b = resized_unit_batch(references, 256).to(self.device)
        return self.metric(a, b).flatten()


class ClipFeatures(torch.nn.Module):
    """CLIP image embeddings as an FID feature extractor (FID_CLIP), for runs without Inception
    weights; not comparable with the published Inception FID."""

    def __init__(self, model: str, device: str = "cpu"):
        super().__init__()
        self.scorer = ClipScorer(model, device, with_text=False)
        self.num_features = int(self.scorer.model.config.projection_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pil = [Image.fromarray((img.permute(1, 2, 0).clamp(0, 1) * 255).round().byte().cpu().numpy()) for img in images]
        return self.scorer.image_features(pil).double()


def make_fid(features: str = "inception", weights: str | None = None, device: str = "cpu"):
    """torchmetrics FID on [0, 1] float images (``normalize=True``, as the official script).

    ``features``: ``inception`` (torch-fidelity's 2048-d pool3, the published protocol;
    ``weights`` a local copy of its Inception file) or ``clip:<model>``."""
    import_torchmetrics()
    from torchmetrics.image.fid import FrechetInceptionDistance

    if features == "inception":
        return FrechetInceptionDistance(feature=2048, normalize=True, feature_extractor_weights_path=weights).to(device)
    if features.startswith("clip:"):
        return FrechetInceptionDistance(feature=ClipFeatures(features[5:], device), normalize=True).to(device)
    raise KosmosGError(f"unknown FID features {features!r}: use 'inception' or 'clip:<model folder or id>'")
