"""Published numbers the protocols are compared with, each with its source."""

KOSMOSG_PAPER = "Kosmos-G paper (Pan et al., ICLR 2024), Table 1"
GILL_VIST = "GILL paper/project page (Koh et al., NeurIPS 2023), Table 1"
GILL_VISDIAL = "GILL paper/project page (Koh et al., NeurIPS 2023), Table 2"

# the scorer models the protocols use by default (the papers' choices)
SCORERS = {"dino": "facebook/dino-vits16", "clip_b32": "openai/clip-vit-base-patch32",
           "clip_l14": "openai/clip-vit-large-patch14"}

PUBLISHED = {
    "dreambench": [
        {"model": "Kosmos-G (single image input)", "source": KOSMOSG_PAPER,
         "dino": 0.694, "clip_i": 0.847, "clip_t": 0.287},
        {"model": "Real images (oracle)", "source": KOSMOSG_PAPER, "dino": 0.774, "clip_i": 0.885},
        {"model": "BLIP-Diffusion (zero-shot)", "source": KOSMOSG_PAPER,
         "dino": 0.594, "clip_i": 0.779, "clip_t": 0.300},
    ],
    "coco-fid": [
        {"model": "Kosmos-G-1.9B", "source": KOSMOSG_PAPER + " (right)", "fid": 10.99},
        {"model": "SD v1.5 (same settings, by the Kosmos-G authors)", "source": KOSMOSG_PAPER + " (right)",
         "fid": 9.34},
    ],
    "vist": {
        "last-caption": [{"model": "GILL", "source": GILL_VIST, "clip": 0.581, "lpips": 0.702},
                         {"model": "Stable Diffusion 1.5", "source": GILL_VIST, "clip": 0.592, "lpips": 0.703}],
        "captions": [{"model": "GILL", "source": GILL_VIST, "clip": 0.612, "lpips": 0.696},
                     {"model": "Stable Diffusion 1.5", "source": GILL_VIST, "clip": 0.598, "lpips": 0.704}],
        "captions+images": [{"model": "GILL", "source": GILL_VIST, "clip": 0.641, "lpips": 0.693}],
    },
    "visdial": {
        1: [{"model": "GILL", "source": GILL_VISDIAL, "clip": 0.528, "lpips": 0.742},
            {"model": "Stable Diffusion", "source": GILL_VISDIAL, "clip": 0.552, "lpips": 0.742}],
        5: [{"model": "GILL", "source": GILL_VISDIAL, "clip": 0.621, "lpips": 0.718},
            {"model": "Stable Diffusion", "source": GILL_VISDIAL, "clip": 0.629, "lpips": 0.722}],
        10: [{"model": "GILL", "source": GILL_VISDIAL, "clip": 0.645, "lpips": 0.714},
             {"model": "Stable Diffusion", "source": GILL_VISDIAL, "clip": 0.622, "lpips": 0.723}],
    },
}
