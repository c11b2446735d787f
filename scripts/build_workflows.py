"""Writes workflows/*.json (ComfyUI UI format, schema 0.4) from the compact graphs below.

Run it after changing a node's inputs so the example workflows keep matching; the test suite
converts and executes every file it writes. Widget values are listed in each node's input order.
"""

from __future__ import annotations

import json
import os

OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "workflows")

# node type -> (input sockets in order, output (name, type) list, size)
SOCKETS = {
    "KosmosGLoader": ([], [("kosmos_g", "KOSMOSG")], (320, 110)),
    "KosmosGEncode": ([("kosmos_g", "KOSMOSG"), ("image_1", "IMAGE"), ("image_2", "IMAGE"), ("image_3", "IMAGE"),
                       ("image_4", "IMAGE"), ("more_images", "KOSMOSG_IMAGES")],
                      [("positive", "CONDITIONING"), ("negative", "CONDITIONING")], (400, 300)),
    "KosmosGConcatCLIPText": ([("conditioning", "CONDITIONING"), ("clip", "CLIP")],
                              [("CONDITIONING", "CONDITIONING")], (400, 160)),
    "CheckpointLoaderSimple": ([], [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")], (320, 100)),
    "LoadImage": ([], [("IMAGE", "IMAGE"), ("MASK", "MASK")], (320, 320)),
    "EmptyLatentImage": ([], [("LATENT", "LATENT")], (320, 110)),
    "KSampler": ([("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                  ("latent_image", "LATENT")],
                 [("LATENT", "LATENT")], (320, 262)),
    "VAEDecode": ([("samples", "LATENT"), ("vae", "VAE")], [("IMAGE", "IMAGE")], (210, 46)),
    "SaveImage": ([("images", "IMAGE")], [], (320, 270)),
    "ControlNetLoader": ([], [("CONTROL_NET", "CONTROL_NET")], (320, 60)),
    "ControlNetApplyAdvanced": ([("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                                 ("control_net", "CONTROL_NET"),
                                 ("image", "IMAGE"), ("vae", "VAE")],
                                [("positive", "CONDITIONING"), ("negative", "CONDITIONING")], (320, 190)),
    "Canny": ([("image", "IMAGE")], [("IMAGE", "IMAGE")], (320, 82)),
    "LoraLoaderModelOnly": ([("model", "MODEL")], [("MODEL", "MODEL")], (320, 82)),
    "CLIPTextEncode": ([("clip", "CLIP")], [("CONDITIONING", "CONDITIONING")], (400, 200)),
    "PreviewAny": ([("source", "*")], [], (320, 160)),
    "GILLLoader": ([], [("gill", "GILL")], (320, 200)),
    "GILLEncode": ([("gill", "GILL"), ("image_1", "IMAGE"), ("image_2", "IMAGE"), ("image_3", "IMAGE"),
                    ("image_4", "IMAGE"), ("more_images", "KOSMOSG_IMAGES")],
                   [("positive", "CONDITIONING"), ("decision", "STRING")], (400, 280)),
    "GILLGenerateText": ([("gill", "GILL"), ("image_1", "IMAGE"), ("image_2", "IMAGE"), ("image_3", "IMAGE"),
                          ("image_4", "IMAGE"), ("more_images", "KOSMOSG_IMAGES")],
                         [("text", "STRING"), ("image_conditioning", "CONDITIONING"), ("decision", "STRING")],
                         (400, 380)),
}


def build(nodes: list[dict]) -> dict:
    """nodes: {id, type, pos, widgets, links: {input: (source id, output slot)}, title?}"""
    by_id = {n["id"]: n for n in nodes}
    links, outputs = [], {}
    for node in nodes:
        inputs = []
        for name, kind in SOCKETS[node["type"]][0]:
            link_id = None
            if name in node.get("links", {}):
                source, slot = node["links"][name]
                link_id = len(links) + 1
                links.append([link_id, source, slot, node["id"], len(inputs), kind])
                outputs.setdefault((source, slot), []).append(link_id)
            inputs.append({"name": name, "type": kind, "link": link_id})
        node["_inputs"] = inputs
    ui_nodes = []
    for order, node in enumerate(nodes):
        kind = node["type"]
        ui_nodes.append({
            "id": node["id"], "type": kind, "pos": list(node["pos"]), "size": list(SOCKETS[kind][2]),
            "flags": {}, "order": order, "mode": 0,
            "inputs": node["_inputs"],
            "outputs": [{"name": name, "type": typ, "links": outputs.get((node["id"], slot), []), "slot_index": slot}
                        for slot, (name, typ) in enumerate(SOCKETS[kind][1])],
            "properties": {"Node name for S&R": kind},
            "widgets_values": node.get("widgets", []),
            **({"title": node["title"]} if "title" in node else {}),
        })
    assert all(s in by_id for n in nodes for s, _ in n.get("links", {}).values())
    return {"last_node_id": max(by_id), "last_link_id": len(links), "nodes": ui_nodes, "links": links,
            "groups": [], "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}}, "version": 0.4}


def sampler_tail(first_id: int, model, positive, negative, vae, seed: int, prefix: str) -> list[dict]:
    latent, sampler, decode, save = first_id, first_id + 1, first_id + 2, first_id + 3
    return [
        {"id": latent, "type": "EmptyLatentImage", "pos": (900, 560), "widgets": [512, 512, 1]},
        {"id": sampler, "type": "KSampler", "pos": (1300, 120),
         "widgets": [seed, "fixed", 30, 6.0, "dpmpp_2m", "karras", 1.0],
         "links": {"model": model, "positive": positive, "negative": negative, "latent_image": (latent, 0)}},
        {"id": decode, "type": "VAEDecode", "pos": (1660, 120), "links": {"samples": (sampler, 0), "vae": vae}},
        {"id": save, "type": "SaveImage", "pos": (1900, 120), "widgets": [prefix], "links": {"images": (decode, 0)}},
    ]


CHECKPOINT = {"id": 1, "type": "CheckpointLoaderSimple", "pos": (40, 40),
              "widgets": ["v1-5-pruned-emaonly.safetensors"]}
KOSMOS = {"id": 2, "type": "KosmosGLoader", "pos": (40, 200), "widgets": ["checkpoint_final.pt", "auto", "auto"]}


def encode(prompt: str, images: dict, negative: str = "") -> dict:
    return {"id": 3, "type": "KosmosGEncode", "pos": (460, 200), "widgets": [prompt, negative],
            "links": {"kosmos_g": (2, 0), **images}}


def load_image(node_id: int, name: str, y: int) -> dict:
    return {"id": node_id, "type": "LoadImage", "pos": (40, y), "widgets": [name, "image"], "title": f"Load {name}"}


GILL = {"id": 2, "type": "GILLLoader", "pos": (40, 200),
        "widgets": ["gill_opt", "opt-6.7b", "clip-vit-large-patch14", "auto", "none", "auto"]}
EMPTY_NEGATIVE = {"id": 6, "type": "CLIPTextEncode", "pos": (460, 600), "widgets": [""], "links": {"clip": (1, 1)},
                  "title": "Negative (GILL's unconditional side: empty text)"}

WORKFLOWS = {
    "kosmos-g_multi-entity": [
        CHECKPOINT, KOSMOS, load_image(4, "dog.png", 340), load_image(5, "hat.png", 700),
        encode("<i> wearing <i>", {"image_1": (4, 0), "image_2": (5, 0)}),
        *sampler_tail(10, (1, 0), (3, 0), (3, 1), (1, 2), 42, "kosmos-g_multi-entity"),
    ],
    "kosmos-g_text-to-image": [
        CHECKPOINT, KOSMOS,
        encode("a red apple on a wooden table, studio photo", {}, negative="blurry, low quality"),
        *sampler_tail(10, (1, 0), (3, 0), (3, 1), (1, 2), 7, "kosmos-g_text-to-image"),
    ],
    "kosmos-g_controlnet-canny": [
        CHECKPOINT, KOSMOS, load_image(4, "dog.png", 340), load_image(5, "pose.png", 700),
        encode("<i> sitting in a garden", {"image_1": (4, 0)}),
        {"id": 6, "type": "Canny", "pos": (460, 560), "widgets": [0.4, 0.8], "links": {"image": (5, 0)}},
        {"id": 7, "type": "ControlNetLoader", "pos": (460, 720), "widgets": ["control_v11p_sd15_canny.pth"]},
        {"id": 8, "type": "ControlNetApplyAdvanced", "pos": (900, 200), "widgets": [1.0, 0.0, 1.0],
         "links": {"positive": (3, 0), "negative": (3, 1), "control_net": (7, 0), "image": (6, 0), "vae": (1, 2)}},
        *sampler_tail(10, (1, 0), (8, 0), (8, 1), (1, 2), 3, "kosmos-g_controlnet"),
    ],
    "kosmos-g_lora": [
        CHECKPOINT, KOSMOS, load_image(4, "dog.png", 340),
        encode("<i> as an oil painting", {"image_1": (4, 0)}),
        {"id": 6, "type": "LoraLoaderModelOnly", "pos": (460, 40), "widgets": ["sd15_style_lora.safetensors", 0.8],
         "links": {"model": (1, 0)}},
        *sampler_tail(10, (6, 0), (3, 0), (3, 1), (1, 2), 11, "kosmos-g_lora"),
    ],
    "gill_visual-story": [
        CHECKPOINT, GILL, load_image(4, "story_1.png", 420), load_image(5, "story_2.png", 780),
        {"id": 3, "type": "GILLEncode", "pos": (460, 200),
         "widgets": ["a man walks his dog on the beach. <i> they reach the old bridge. <i> "
                     "then the dog runs into the water."],
         "links": {"gill": (2, 0), "image_1": (4, 0), "image_2": (5, 0)}},
        EMPTY_NEGATIVE,
        {"id": 7, "type": "PreviewAny", "pos": (900, 600), "links": {"source": (3, 1)},
         "title": "Generate or retrieve?"},
        *sampler_tail(10, (1, 0), (3, 0), (6, 0), (1, 2), 42, "gill_visual-story"),
    ],
    "gill_dialogue": [
        CHECKPOINT, GILL, load_image(4, "dog.png", 420),
        {"id": 3, "type": "GILLGenerateText", "pos": (460, 200),
         "widgets": ["Q: Can you show me a picture like this <i> but at night?\nA:", 32, 0.0, 1.0, 0, "fixed", 1.3, 0],
         "links": {"gill": (2, 0), "image_1": (4, 0)}},
        EMPTY_NEGATIVE,
        {"id": 7, "type": "PreviewAny", "pos": (900, 560), "links": {"source": (3, 0)}, "title": "GILL's answer"},
        {"id": 8, "type": "PreviewAny", "pos": (900, 760), "links": {"source": (3, 2)},
         "title": "Generate or retrieve?"},
        *sampler_tail(10, (1, 0), (3, 1), (6, 0), (1, 2), 1337, "gill_dialogue"),
    ],
    "kosmos-g_clip-mix": [
        CHECKPOINT, KOSMOS, load_image(4, "dog.png", 340),
        encode("<i> on the beach at sunset", {"image_1": (4, 0)}),
        {"id": 6, "type": "LoraLoaderModelOnly", "pos": (460, 40), "widgets": ["sd15_style_lora.safetensors", 0.8],
         "links": {"model": (1, 0)}},
        {"id": 7, "type": "KosmosGConcatCLIPText", "pos": (900, 200), "widgets": ["watercolor style, vivid colors"],
         "links": {"conditioning": (3, 0), "clip": (1, 1)}},
        *sampler_tail(10, (6, 0), (7, 0), (3, 1), (1, 2), 5, "kosmos-g_clip-mix"),
    ],
}

if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    for name, graph in WORKFLOWS.items():
        with open(os.path.join(OUT, f"{name}.json"), "w") as handle:
            json.dump(build([dict(n) for n in graph]), handle, indent=1)
            handle.write("\n")
        print(f"wrote workflows/{name}.json")
