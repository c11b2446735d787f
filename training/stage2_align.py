"""Stage 2, image-decoder aligning: train AlignerNet M and N on captions, MLLM frozen.

    accelerate launch -m training.stage2_align --init checkpoint_stage1.pt \\
        --teacher stable-diffusion-v1-5/text_encoder --teacher-tokenizer stable-diffusion-v1-5/tokenizer \\
        --data shards/ --output-dir runs/align

Loss (official): ``L = mean((M(s) - CLIP(caption).last_hidden_state)^2) + mean((N(M(s)) - s)^2) * 77 / T``
with ``s`` the frozen MLLM's final-LN states of ``<s> caption``, CLIP over all 77 positions. The
reconstruction runs over all T positions, padding included (official), so every sequence is
padded to the same T = 1 + ``--caption-tokens`` (85, the official filter in aligning mode):
otherwise a caption's loss would depend on the longest caption it is batched with, and 1 and N
processes would train differently. Longer captions are cut (officially they are dropped).

The teacher is any transformers CLIP text model. SD 1.5's (768 wide) reproduces the paper.
Another teacher, e.g. SD 2.x's OpenCLIP-H (1024 wide), gives an AlignerNet whose 77 x 1024
output lands in that text space, so it can condition that U-Net family; it is only an aligned
*text* encoder: stage 3 (instruction tuning through that U-Net) is still needed before image
prompts work well, and no such checkpoint was ever published to compare with.
"""

from __future__ import annotations

import os

import torch

from kosmosg_core.kosmosg.aligner import AlignerConfig, AlignerNet
from training.data import ShardDataset
from training.engine import Trainer, UsageError, add_common_args, new_parser, prepare_output, run_main
from training.kosmosg_common import encode_prompts, export_kosmosg, load_kosmosg_for_training, set_trainable


def load_teacher(path: str, tokenizer_path: str | None):
    from transformers import AutoTokenizer, CLIPTextModel

    teacher = CLIPTextModel.from_pretrained(path, dtype=torch.float32).eval().requires_grad_(False)
    return teacher, AutoTokenizer.from_pretrained(tokenizer_path or path)


def new_aligner(mllm_width: int, teacher, layers: int, positions: int) -> AlignerNet:
    width = teacher.config.hidden_size
    config = AlignerConfig(input_dim=mllm_width, hidden_size=width, ffn_dim=4 * width, encoder_proj_layers=layers,
                           encoder_layers=layers, num_queries=teacher.config.max_position_embeddings,
                           max_positions=positions, decoder_layers=layers, decoder_proj_layers=layers,
                           decoder_query_rows=positions)
    aligner = AlignerNet(config)
    with torch.no_grad():
        aligner.encoder_query.normal_()
        aligner.decoder_query.normal_()
    return aligner


class AlignModel(torch.nn.Module):
    """MLLM (frozen) + AlignerNet (trained) + CLIP teacher (frozen); ``forward(batch)`` gives the losses."""

    def __init__(self, kosmos, tokenizer, teacher, teacher_tokenizer, caption_tokens: int):
        super().__init__()
        self.caption_tokens = caption_tokens
        self.kosmos, self.teacher = kosmos, teacher
        self.tokenizer, self.teacher_tokenizer = tokenizer, teacher_tokenizer

    def forward(self, batch):
        captions = [s.meta["caption"] if "caption" in s.meta else s.meta["input_caption"] for s in batch.samples]
        device = self.kosmos.aligner.encoder_query.device
        queries = self.kosmos.aligner.config.num_queries
        with torch.no_grad():
            hidden, tokens = encode_prompts(self.kosmos, self.tokenizer, captions, [[] for _ in captions], device,
                                            pad_to=self.caption_tokens)
            ids = self.teacher_tokenizer(captions, padding="max_length", max_length=queries, truncation=True,
                                         return_tensors="pt").input_ids.to(device)
            target = self.teacher(input_ids=ids).last_hidden_state
        padding = tokens.eq(self.tokenizer.pad_id)
        aligned = self.kosmos.aligner(hidden, padding if padding.any() else None)
        mse = (aligned.float() - target.float()).pow(2).mean()
        rec = self.kosmos.aligner.reconstruct(aligned, hidden.shape[1])
        rec_loss = (rec.float() - hidden.float()).pow(2).mean() * queries / hidden.shape[1]
        return {"loss": mse + rec_loss, "mse": mse, "rec": rec_loss}


FINALS = ["kosmosg_stage2.safetensors"]


def main(argv=None) -> int:
    return run_main(run, argv, "training.stage2_align")


def run(argv) -> int:
    parser = new_parser(__doc__)
    parser.add_argument("--init", required=True, help="stage-1 (or later) Kosmos-G checkpoint")
    parser.add_argument("--tokenizer", help="Kosmos-G tokenizer folder (default: beside/inside --init)")
    parser.add_argument("--teacher", required=True, help="transformers CLIPTextModel folder (SD's text_encoder)")
    parser.add_argument("--teacher-tokenizer", help="its tokenizer folder (default: --teacher)")
    parser.add_argument("--data", required=True, help="shard folder (caption samples)")
    parser.add_argument("--caption-tokens", type=int, default=85,
                        help="captions are cut to this many tokens and every sequence is padded to 1 + this")
    parser.add_argument("--aligner-layers", type=int, default=12)
    parser.add_argument("--aligner-positions", type=int, default=32768)
    args = add_common_args(parser).parse_args(argv)
    if not 1 <= args.caption_tokens <= 2047:
        raise UsageError(f"--caption-tokens must be between 1 and 2047, got {args.caption_tokens}.")
    if not 1 <= args.aligner_layers <= 256:
        raise UsageError(f"--aligner-layers must be between 1 and 256, got {args.aligner_layers}.")
    if not args.caption_tokens + 1 <= args.aligner_positions <= 1 << 20:
        raise UsageError(f"--aligner-positions must be between --caption-tokens + 1 and {1 << 20}, "
                         f"got {args.aligner_positions}.")
    prepare_output(args, FINALS, [args.init, args.tokenizer, args.teacher, args.teacher_tokenizer, args.data])

    torch.manual_seed(args.seed)
    data = ShardDataset(args.data, kinds=("caption", "edit", "composition"))
    kosmos, tokenizer = load_kosmosg_for_training(args.init, args.tokenizer)
    teacher, teacher_tokenizer = load_teacher(args.teacher, args.teacher_tokenizer)
    if kosmos.aligner is None or kosmos.aligner.config.hidden_size != teacher.config.hidden_size \
            or not kosmos.aligner.config.has_reconstruction:
        kosmos.aligner = new_aligner(kosmos.config.text_dim, teacher, args.aligner_layers, args.aligner_positions)
        kosmos.config = type(kosmos.config)(**{**kosmos.config.__dict__, "aligner": kosmos.aligner.config})
    set_trainable(kosmos, "align")
    model = AlignModel(kosmos, tokenizer, teacher, teacher_tokenizer, args.caption_tokens + 1)
    trainer = Trainer(args, model, data)
    trainer.run()
    state = trainer.full_state_dict()
    if trainer.accelerator.is_main_process:
        path = export_kosmosg(state, tokenizer, os.path.join(args.output_dir, "kosmosg_stage2.safetensors"), "stage2")
        print(f"saved {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
