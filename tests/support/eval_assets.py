"""Tiny stand-ins for the evaluation: SD 1.5 folder, scorer models, and the four datasets in
their published layouts (random weights, a few synthetic images)."""

from __future__ import annotations

import json
import os
import string

import numpy as np
import torch
from PIL import Image


def picture(seed: int, size=(40, 48)) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=3)
    noise = rng.integers(-40, 40, size=(size[1], size[0], 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def write_clip_tokenizer(folder: str) -> str:
    """A character-level CLIP BPE vocabulary (no merges): enough for real CLIPTokenizer runs."""
    os.makedirs(folder, exist_ok=True)
    chars = list(string.ascii_lowercase + string.digits + ".,:?!'-")
    vocab = ["<|startoftext|>", "<|endoftext|>"] + chars + [c + "</w>" for c in chars]
    with open(os.path.join(folder, "vocab.json"), "w") as f:
        json.dump({token: i for i, token in enumerate(vocab)}, f)
    with open(os.path.join(folder, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")
    from transformers import CLIPTokenizer

    CLIPTokenizer(os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"), model_max_length=77
                  ).save_pretrained(folder)
    return folder


def write_sd(folder: str, context: int = 768) -> str:
    """diffusers SD 1.5 layout with a text encoder and tokenizer (GILL's empty-prompt negative)."""
    from diffusers import PNDMScheduler
    from transformers import CLIPTextConfig, CLIPTextModel

    from support import training_assets

    training_assets.write_sd(folder, context)
    PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                  steps_offset=1, set_alpha_to_one=False).save_pretrained(os.path.join(folder, "scheduler"))
    tokenizer = write_clip_tokenizer(os.path.join(folder, "tokenizer"))
    vocab = len(json.load(open(os.path.join(tokenizer, "vocab.json"))))
    CLIPTextModel(CLIPTextConfig(vocab_size=vocab, hidden_size=context, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=8, max_position_embeddings=77, projection_dim=32, eos_token_id=1,
                                 bos_token_id=0, pad_token_id=1)).save_pretrained(os.path.join(folder, "text_encoder"))
    return folder


def write_clip_scorer(folder: str, image_size: int = 32) -> str:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    write_clip_tokenizer(folder)
    vocab = len(json.load(open(os.path.join(folder, "vocab.json"))))
    torch.manual_seed(1)
    config = CLIPConfig(text_config={"vocab_size": vocab, "hidden_size": 32, "intermediate_size": 64,
                                     "num_hidden_layers": 1,
                                     "num_attention_heads": 4, "max_position_embeddings": 77, "eos_token_id": 1,
                                     "bos_token_id": 0, "pad_token_id": 1},
                        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                       "num_attention_heads": 4, "image_size": image_size, "patch_size": 8},
                        projection_dim=8)
    CLIPModel(config).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
                       ).save_pretrained(folder)
    return folder


def write_dino_scorer(folder: str) -> str:
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(2)
    ViTModel(ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, image_size=224,
                       patch_size=16), add_pooling_layer=False).save_pretrained(folder)
    return folder


def seed_torch_hub_alexnet(torch_home: str) -> str:
    """A random AlexNet where torchvision caches its pretrained file, so torchmetrics' LPIPS runs
    offline on its real code (with its bundled linear weights and a random backbone)."""
    from torchvision.models import alexnet

    folder = os.path.join(torch_home, "hub", "checkpoints")
    os.makedirs(folder, exist_ok=True)
    torch.manual_seed(3)
    path = os.path.join(folder, "alexnet-owt-7be5be79.pth")
    torch.save(alexnet().state_dict(), path)
    return path


# -- datasets in their published layouts -----------------------------------------------------

def write_dreambench(root: str, subjects=(("backpack", "backpack", 6), ("dog", "dog", 3))) -> str:
    dataset = os.path.join(root, "dataset")
    os.makedirs(dataset, exist_ok=True)
    lines = ["Classes", "", "subject_name,class"] + [f"{name},{cls}" for name, cls, _ in subjects]
    lines += ["", "Prompts", "", "Object Prompts", "", "prompt_list = [",
              "'a {0} {1} in the jungle'.format(unique_token, class_token),", "]"]
    with open(os.path.join(dataset, "prompts_and_classes.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    for n, (name, _, count) in enumerate(subjects):
        os.makedirs(os.path.join(dataset, name), exist_ok=True)
        for i in range(count):
            picture(100 * n + i).save(os.path.join(dataset, name, f"{i:02d}.jpg"))
    return root


def write_coco(root: str, captions: int = 12, images: int = 6) -> str:
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    os.makedirs(os.path.join(root, "val2014"), exist_ok=True)
    ids = [9 + 7 * i for i in range(images)]
    for n, image_id in enumerate(ids):
        picture(300 + n, (64, 48)).save(os.path.join(root, "val2014", f"COCO_val2014_{image_id:012d}.jpg"))
    words = ["a dog on a beach", "two cats on a sofa", "a red bus in the street", "a plate of food"]
    annotations = [{"image_id": ids[i % images], "id": 1000 + i, "caption": words[i % len(words)] + f" {i}"}
                   for i in range(captions)]
    with open(os.path.join(root, "annotations", "captions_val2014.json"), "w") as f:
        json.dump({"images": [{"id": i} for i in ids], "annotations": annotations}, f)
    return root


def write_vist(root: str, stories: int = 3, missing_image_story: bool = True) -> str:
    """The raw SIS file (val.story-in-sequence.json) and val_images/<flickr id>.png, as GILL's
    download script leaves them (224x224 PNG)."""
    sis = os.path.join(root, "sis")
    os.makedirs(os.path.join(sis, "val_images"), exist_ok=True)
    annotations, photo = [], 5000
    for story in range(stories + int(missing_image_story)):
        for order in range(5):
            photo += 1
            annotations.append([{"story_id": str(40 + story), "photo_flickr_id": str(photo),
                                 "worker_arranged_photo_order": order,
                                 "text": f"the family went to the park {order}."}])
            if not (missing_image_story and story == stories and order == 2):
                picture(photo, (224, 224)).save(os.path.join(sis, "val_images", f"{photo}.png"))
    with open(os.path.join(sis, "val.story-in-sequence.json"), "w") as f:
        json.dump({"images": [], "annotations": annotations}, f)
    return root


def write_visdial(root: str, dialogs: int = 3) -> str:
    images = os.path.join(root, "VisualDialog_val2018")
    os.makedirs(images, exist_ok=True)
    questions = [f"is there a dog {i}" for i in range(12)]
    answers = [f"yes {i}" for i in range(12)]
    data = []
    for d in range(dialogs):
        image_id = 185000 + d
        picture(700 + d, (64, 64)).save(os.path.join(images, f"VisualDialog_val2018_{image_id:012d}.jpg"))
        data.append({"image_id": image_id, "caption": "a dog",
                     "dialog": [{"question": (d + r) % 12, "answer": r} for r in range(10)]})
    with open(os.path.join(root, "visdial_1.0_val.json"), "w") as f:
        json.dump({"version": "1.0", "split": "val",
                   "data": {"questions": questions, "answers": answers, "dialogs": data}}, f)
    return root
