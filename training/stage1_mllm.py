"""Stage 1, multimodal language modelling of the Kosmos-G MLLM (Kosmos-1 style).

    accelerate launch -m training.stage1_mllm --init checkpoint_stage1.pt --data shards/ --output-dir runs/mllm

Next-token loss on text tokens only (image slots, ``<image>``/``</image>`` and padding are never
targets). Data: ``caption`` samples (image-caption pairs: ``<i> caption``; without an image, plain
text) and ``interleaved`` documents. Trained: MLLM, connector, the last CLIP block and ln_post (CLIP
otherwise frozen, as in the paper). ``--init`` may be any Kosmos-G checkpoint; to start from
scratch, make a random one first (``kosmosg_core.kosmosg.synthetic``) and pass it.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from training.data import ShardDataset
from training.engine import Trainer, add_common_args, new_parser, prepare_output, run_main
from training.kosmosg_common import encode_prompts, export_kosmosg, load_kosmosg_for_training, set_trainable


def document(sample) -> tuple[str, list]:
    if sample.kind == "caption":
        image = sample.images.get("target")
        return (f"<i> {sample.meta['caption']}", [image]) if image is not None else (sample.meta["caption"], [])
    if sample.kind == "interleaved":
        text, images = "", []
        for segment in sample.meta["segments"]:
            if "image" in segment:
                text += "<i>"
                images.append(sample.images[segment["image"]])
            else:
                text += segment["text"]
        return text, images
    raise ValueError(f"stage 1 trains on caption and interleaved samples, not {sample.kind!r}")


class LanguageModel(torch.nn.Module):
    def __init__(self, kosmos, tokenizer):
        super().__init__()
        self.kosmos, self.tokenizer = kosmos, tokenizer

    def forward(self, batch):
        device = self.kosmos.text_model.model.embed_tokens.weight.device
        texts, images = zip(*(document(s) for s in batch.samples), strict=True)
        hidden, tokens = encode_prompts(self.kosmos, self.tokenizer, list(texts), list(images), device)
        logits = hidden[:, :-1] @ self.kosmos.text_model.model.embed_tokens.weight.T  # tied output projection
        targets = tokens[:, 1:].clone()
        special = torch.tensor([self.tokenizer.pad_id, self.tokenizer.boi_id, self.tokenizer.eoi_id], device=device)
        targets[torch.isin(targets, special)] = -100  # text tokens only
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
        return {"loss": loss}


FINALS = ["kosmosg_stage1.safetensors", "kosmosg_final.safetensors"]


def main(argv=None) -> int:
    return run_main(run, argv, "training.stage1_mllm")


def run(argv) -> int:
    parser = new_parser(__doc__)
    parser.add_argument("--init", required=True, help="Kosmos-G checkpoint to start from")
    parser.add_argument("--tokenizer")
    parser.add_argument("--data", required=True)
    args = add_common_args(parser).parse_args(argv)
    prepare_output(args, FINALS, [args.init, args.tokenizer, args.data])

    torch.manual_seed(args.seed)
    data = ShardDataset(args.data, kinds=("caption", "interleaved"))
    kosmos, tokenizer = load_kosmosg_for_training(args.init, args.tokenizer)
    set_trainable(kosmos, "language")
    if args.gradient_checkpointing:
        kosmos.text_model.gradient_checkpointing_enable()
    trainer = Trainer(args, LanguageModel(kosmos, tokenizer), data)
    trainer.run()
    state = trainer.full_state_dict()
    if trainer.accelerator.is_main_process:
        kind = "stage1" if kosmos.aligner is None else "final"
        path = os.path.join(args.output_dir, f"kosmosg_{kind}.safetensors")
        print("saved", export_kosmosg(state, tokenizer, path, kind))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
