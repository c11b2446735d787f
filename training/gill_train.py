"""GILL training: frozen OPT and CLIP; trains the visual prefix, retrieval and generation heads,
``logit_scale`` and the 8 [IMG] embedding rows, on image-caption pairs.

    accelerate launch -m training.gill_train --release gill_opt --llm opt-6.7b --vision clip-vit-large-patch14 \\
        --teacher stable-diffusion-v1-5/text_encoder --teacher-tokenizer stable-diffusion-v1-5/tokenizer \\
        --data shards/ --output-dir runs/gill --lr 1e-3 --betas 0.9 0.95 --weight-decay 0.01 --warmup-steps 2000

Losses (official ``main.py``), summed:
* captioning: cross-entropy on the caption after the 4 visual tokens of its image;
* [IMG] prediction: cross-entropy on ``<s> caption [IMG0..7]`` over the caption and [IMG0] (the
  official retrieval and generation passes each add it with weight 0.5: 1.0 in total);
* retrieval: symmetric InfoNCE between ``norm(ret_head(h[IMG0]))`` and ``norm(visual_fc(CLIP))``,
  scaled by ``exp(logit_scale)``, over all processes' samples (the local slice keeps gradients);
* generation: the **un-squared** per-token L2 distance between GILLMapper(h_IMG + e_IMG) and the
  SD text encoder's last hidden state of the caption, averaged over 77 tokens and the batch. The
  paper writes a (squared) MSE; the official code uses the plain Euclidean distance, and so do we.

The [IMG] rows are a separate parameter (so nothing else of the embedding moves); after every
step they are rescaled to the mean norm of the frozen rows, as the official code does. Not
reproduced: the official caption-concatenation augmentation, and AdamW's decay of the whole
(tied) embedding matrix that the official code applies by accident. The retrieval loss couples
samples across processes, so N processes match 1 process only approximately (as officially).
The output is a release folder that ``load_gill`` and the GILL Loader node read unchanged.
"""

from __future__ import annotations

import json
import os

import torch
import torch.nn.functional as F

from kosmosg_core.errors import CheckpointError
from kosmosg_core.gill import load_gill
from kosmosg_core.gill.checkpoint import ARGS_FILE, CHECKPOINT_FILE, DECISION_FILE
from kosmosg_core.safe_files import atomic_open, atomic_write_with, read_text, regular_file
from training.data import ShardDataset
from training.engine import Trainer, add_common_args, new_parser, prepare_output, run_main


class GILLTraining(torch.nn.Module):
    def __init__(self, gill, teacher, teacher_tokenizer):
        super().__init__()
        self.gill, self.teacher, self.teacher_tokenizer = gill, teacher, teacher_tokenizer
        self.heads, self.lm, self.vision = gill.heads, gill.lm, gill.vision
        embedding = gill.lm.get_input_embeddings().weight
        self.img_ids = torch.tensor(gill.img_token_ids)
        self.img_rows = torch.nn.Parameter(embedding[self.img_ids].detach().float().clone())
        others = torch.ones(embedding.shape[0], dtype=torch.bool)
        others[self.img_ids] = False
        self.target_norm = float(embedding[others].float().norm(dim=-1).mean())
        self.gather = None  # set to accelerator.gather by main()

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        embeds = self.lm.get_input_embeddings()(ids).float()
        is_img = torch.isin(ids, self.img_ids.to(ids.device))
        if is_img.any():
            rows = self.img_rows[torch.searchsorted(self.img_ids.to(ids.device), ids[is_img])]
            embeds = embeds.masked_scatter(is_img[..., None], rows)
        return embeds

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.lm.lm_head(hidden).float()
        logits[..., self.img_ids.to(hidden.device)] = hidden.float() @ self.img_rows.T  # tied rows
        return logits

    def forward(self, batch):
        gill, device = self.gill, self.img_rows.device
        captions = [s.meta["caption"] for s in batch.samples]
        with torch.no_grad():
            pooled = gill.image_features([s.images["target"] for s in batch.samples]).float()
        prefix = self.heads.visual_prefix(pooled)
        text = [gill.tokenizer(c).input_ids for c in captions]  # with BOS
        width = max(len(t) for t in text) + len(gill.img_token_ids)
        ids = torch.full((len(text), width), gill.tokenizer.pad_token_id, dtype=torch.long)
        for row, t in enumerate(text):
            ids[row, : len(t)] = torch.tensor(t)
            ids[row, len(t) : len(t) + len(gill.img_token_ids)] = self.img_ids
        ids = ids.to(device)
        real = ids.ne(gill.tokenizer.pad_token_id)

        # captioning: [4 visual tokens] + <s> caption, loss on the caption (and BOS) only
        caption_ids = torch.where(torch.isin(ids, self.img_ids.to(device)), gill.tokenizer.pad_token_id, ids)
        caption_in = torch.cat([prefix, self.embed(caption_ids)], dim=1)
        hidden = gill.lm.model.decoder(inputs_embeds=caption_in, attention_mask=torch.cat(
            [torch.ones(prefix.shape[:2], dtype=torch.long, device=device), caption_ids.ne(1).long()], 1)
        ).last_hidden_state
        labels = torch.cat([torch.full(prefix.shape[:2], -100, device=device),
                            caption_ids.masked_fill(caption_ids.eq(1), -100)], 1)
        caption_loss = F.cross_entropy(self.logits(hidden[:, :-1]).flatten(0, 1), labels[:, 1:].flatten())

        # [IMG] prediction, retrieval and generation share one text-only pass over <s> caption [IMG0..7]
        hidden = gill.lm.model.decoder(inputs_embeds=self.embed(ids), attention_mask=real.long()).last_hidden_state
        labels = ids.masked_fill(~real | torch.isin(ids, self.img_ids[1:].to(device)), -100)
        img_loss = F.cross_entropy(self.logits(hidden[:, :-1]).flatten(0, 1), labels[:, 1:].flatten())
        starts = torch.tensor([len(t) for t in text], device=device)
        positions = starts[:, None] + torch.arange(len(gill.img_token_ids), device=device)
        img_hidden = hidden.gather(1, positions[..., None].expand(-1, -1, hidden.shape[-1])).float()

        text_emb = F.normalize(self.heads.ret_text_hidden_fcs[0](img_hidden)[:, 0], dim=-1)
        image_emb = F.normalize(self.heads.retrieval_image_embeddings(pooled), dim=-1)
        all_text, all_image = self._gather_with_grad(text_emb), self._gather_with_grad(image_emb)
        scale = self.heads.logit_scale.exp()
        offset = self._rank_offset(len(captions))
        targets = torch.arange(len(captions), device=device) + offset
        per_text = F.cross_entropy(scale * text_emb @ all_image.T, targets)
        per_image = F.cross_entropy(scale * image_emb @ all_text.T, targets)
        retrieval_loss = (per_text + per_image) / 2

        generated = self.heads.generation_embedding(img_hidden, self.img_rows[None].expand(len(captions), -1, -1))
        with torch.no_grad():
            queries = generated.shape[1]
            teacher_ids = self.teacher_tokenizer(captions, padding="max_length", max_length=queries, truncation=True,
                                                 return_tensors="pt").input_ids.to(device)
            target = self.teacher(input_ids=teacher_ids).last_hidden_state.float()
        generation_loss = (generated - target).norm(dim=-1).mean()  # un-squared L2, as the official code

        loss = caption_loss + img_loss + retrieval_loss + generation_loss
        return {"loss": loss, "caption": caption_loss, "img": img_loss, "retrieval": retrieval_loss,
                "generation": generation_loss}

    def _gather_with_grad(self, local: torch.Tensor) -> torch.Tensor:
        if self.gather is None:
            return local
        everything = self.gather(local.detach())
        offset = self._rank_offset(local.shape[0])
        return torch.cat([everything[:offset], local, everything[offset + local.shape[0] :]])

    def _rank_offset(self, count: int) -> int:
        return int(os.environ.get("RANK", "0")) * count if self.gather is not None else 0

    @torch.no_grad()
    def renormalise(self) -> None:
        rows = self.img_rows
        rows.mul_(self.target_norm / rows.norm(dim=-1, keepdim=True))


def export_release(state: dict, source: str, output: str) -> str:
    """A GILL release folder: pretrained_ckpt.pth.tar (bf16, official key names), model_args.json."""
    os.makedirs(output, exist_ok=True)
    heads = {f"model.{k[len('heads.'):]}": v.detach().to(torch.bfloat16).cpu()
             for k, v in state.items() if k.startswith("heads.")}
    heads["model.input_embeddings.weight"] = state["img_rows"].detach().to(torch.bfloat16).cpu()
    atomic_write_with(os.path.join(output, CHECKPOINT_FILE),
                      lambda tmp: torch.save({"state_dict": dict(sorted(heads.items()))}, tmp))
    for name in (ARGS_FILE, DECISION_FILE):  # copied temp-then-rename, from regular files only
        if os.path.lexists(os.path.join(source, name)):
            path = regular_file(os.path.join(source, name), f"release file {name}")
            with open(path, "rb") as src, atomic_open(os.path.join(output, name), "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
    return output


FINALS = ["gill_release"]


def main(argv=None) -> int:
    return run_main(run, argv, "training.gill_train")


def run(argv) -> int:
    from transformers import AutoTokenizer, CLIPTextModel

    parser = new_parser(__doc__)
    parser.add_argument("--release", required=True, help="GILL release folder to start from (its heads are trained)")
    parser.add_argument("--llm", required=True)
    parser.add_argument("--vision", required=True)
    parser.add_argument("--teacher", required=True, help="SD 1.5 text_encoder folder (CLIPTextModel)")
    parser.add_argument("--teacher-tokenizer")
    parser.add_argument("--data", required=True, help="shards of caption samples with images")
    args = add_common_args(parser).parse_args(argv)
    prepare_output(args, FINALS, [args.release, args.llm, args.vision, args.teacher, args.teacher_tokenizer, args.data])

    torch.manual_seed(args.seed)
    data = ShardDataset(args.data, kinds=("caption",), need_target=True)
    gill = load_gill(args.release, args.llm, args.vision)
    for module in (gill.lm, gill.vision):
        module.requires_grad_(False)
    gill.heads.requires_grad_(True).train()
    teacher = CLIPTextModel.from_pretrained(args.teacher).eval().requires_grad_(False)
    model = GILLTraining(gill, teacher, AutoTokenizer.from_pretrained(args.teacher_tokenizer or args.teacher))
    trainer = Trainer(args, model, data, after_step=lambda m: m.renormalise())
    if trainer.world > 1:
        model.gather = trainer.accelerator.gather
    trainer.run()
    state = trainer.full_state_dict()
    if trainer.accelerator.is_main_process:
        out = export_release(state, args.release, os.path.join(args.output_dir, "gill_release"))
        try:  # copied from the source: sizes are read from the weights anyway
            json.loads(read_text(os.path.join(out, ARGS_FILE), "release file"))
        except ValueError:
            raise CheckpointError(f"{os.path.join(args.release, ARGS_FILE)} is not JSON: "
                                  "the release is damaged.") from None
        print("saved", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
