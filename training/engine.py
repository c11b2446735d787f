"""The training loop every stage shares, on Hugging Face Accelerate (no home-made distribution).

Determinism is by sample, not by rank: the global sample order of each epoch is one seeded
permutation, optimizer step ``k`` consumes the ``k``-th global batch, and rank ``r`` takes its
slice of it. Per-sample randomness (noise, timesteps, condition dropout, caption dropping) is
drawn from a generator seeded by (seed, epoch, sample index). So 1 process and N processes with
the same global batch make the same updates, and a resumed run continues exactly where the
saved one stopped (the step number fixes the data position; Accelerate saves model, optimizer,
scheduler and RNG states).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

CHECKPOINT_PREFIX = "step-"


def add_common_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    group = parser.add_argument_group("training")
    group.add_argument("--output-dir", required=True)
    group.add_argument("--max-steps", type=int, default=1000, help="optimizer steps")
    group.add_argument("--batch-size", type=int, default=8, help="samples per process per micro-step")
    group.add_argument("--grad-accum", type=int, default=1, help="micro-steps per optimizer step")
    group.add_argument("--lr", type=float, default=1e-3)
    group.add_argument("--weight-decay", type=float, default=0.01)
    group.add_argument("--betas", type=float, nargs=2, default=(0.9, 0.98))
    group.add_argument("--eps", type=float, default=1e-6)
    group.add_argument("--warmup-steps", type=int, default=375)
    group.add_argument("--max-grad-norm", type=float, default=2.0)
    group.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default="no")
    group.add_argument("--gradient-checkpointing", action="store_true")
    group.add_argument("--save-every", type=int, default=500, help="optimizer steps between resumable checkpoints")
    group.add_argument("--log-every", type=int, default=10)
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--no-resume", action="store_true", help="start over even if checkpoints exist")
    group.add_argument("--fixed-randomness", action="store_true",
                       help="draw the same per-sample randomness every epoch (for overfitting a fixed batch)")
    group.add_argument("--crash-at-step", type=int, default=None, help=argparse.SUPPRESS)  # kill test
    return parser


@dataclass
class Batch:
    indices: list[int]  # global sample indices (for per-sample seeding)
    epoch: int
    samples: list


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The same random stream for a sample whatever rank or process count handles it."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 1_000_000_007 + index)


def batch_for(dataset_len: int, step: int, micro: int, global_batch: int, micro_batch: int, rank: int,
              per_rank: int, seed: int) -> tuple[int, list[int]]:
    """(epoch, sample indices) of rank ``rank`` for micro-step ``micro`` of optimizer step ``step``."""
    per_epoch = max(1, dataset_len // global_batch)
    epoch, position = divmod(step, per_epoch)
    order = torch.randperm(dataset_len, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    start = position * global_batch + micro * micro_batch + rank * per_rank
    return epoch, order[start : start + per_rank]


def linear_warmup_decay(warmup: int, total: int) -> Callable[[int], float]:
    """Linear warm-up then linear decay to 0 (fairseq ``polynomial_decay`` with power 1)."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


class Trainer:
    """Trains ``model``, whose ``forward(batch)`` returns a dict of losses ('loss' is optimised).

    The loss is computed inside ``forward`` so that DDP/FSDP wrappers see every step."""

    def __init__(self, args, model: torch.nn.Module, dataset, schedule=None, after_step=None):
        from accelerate import Accelerator, DistributedDataParallelKwargs

        self.args, self.dataset, self.after_step = args, dataset, after_step
        # images, entity crops or null conditions are absent from some batches: unused parameters are normal
        handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)]
        # cpu=True when there is no GPU: that is what makes torchrun/gloo runs multi-process on CPU
        self.accelerator = Accelerator(mixed_precision=args.mixed_precision, kwargs_handlers=handlers,
                                       cpu=not torch.cuda.is_available(),
                                       # our schedule counts optimizer steps of the global batch, whatever
                                       # the process count (Accelerate would step it once per process)
                                       step_scheduler_with_optimizer=False)
        self.world = self.accelerator.num_processes
        self.global_batch = args.batch_size * self.world * args.grad_accum
        if len(dataset) < self.global_batch:
            raise ValueError(f"the dataset has {len(dataset)} samples, fewer than one global batch ({self.global_batch}).")
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("nothing to train: every parameter is frozen.")
        optimizer = torch.optim.AdamW(params, lr=args.lr, betas=tuple(args.betas), eps=args.eps,
                                      weight_decay=args.weight_decay)
        factor = schedule or linear_warmup_decay(args.warmup_steps, args.max_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(model, optimizer, scheduler)
        self.step = 0
        self.log_path = os.path.join(args.output_dir, "train_log.jsonl")

    # -- checkpoints ---------------------------------------------------------------------------
    def checkpoints(self) -> list[str]:
        if not os.path.isdir(self.args.output_dir):
            return []
        names = [n for n in os.listdir(self.args.output_dir) if n.startswith(CHECKPOINT_PREFIX)
                 and os.path.isfile(os.path.join(self.args.output_dir, n, "trainer.json"))]
        return sorted((os.path.join(self.args.output_dir, n) for n in names), key=lambda p: int(p.rsplit("-", 1)[1]))

    def save(self) -> str:
        path = os.path.join(self.args.output_dir, f"{CHECKPOINT_PREFIX}{self.step}")
        self.accelerator.save_state(path)
        if self.accelerator.is_main_process:  # written last: marks the checkpoint complete
            with open(os.path.join(path, "trainer.json"), "w") as handle:
                json.dump({"step": self.step}, handle)
        self.accelerator.wait_for_everyone()
        return path

    def resume(self) -> None:
        found = [] if self.args.no_resume else self.checkpoints()
        if found:
            self.accelerator.load_state(found[-1])
            with open(os.path.join(found[-1], "trainer.json")) as handle:
                self.step = json.load(handle)["step"]
            self.accelerator.print(f"resumed from {found[-1]} (step {self.step})")

    # -- loop ----------------------------------------------------------------------------------
    def run(self) -> torch.nn.Module:
        from tqdm import tqdm

        args, acc = self.args, self.accelerator
        os.makedirs(args.output_dir, exist_ok=True)
        self.resume()
        bar = tqdm(total=args.max_steps, initial=self.step, disable=not acc.is_main_process, desc="training")
        started, samples = time.perf_counter(), 0
        while self.step < args.max_steps:
            self.model.train()
            totals: dict[str, float] = {}
            for micro in range(args.grad_accum):
                epoch, indices = batch_for(len(self.dataset), self.step, micro, self.global_batch,
                                           args.batch_size * self.world, acc.process_index, args.batch_size, args.seed)
                batch = Batch(indices, 0 if args.fixed_randomness else epoch, [self.dataset[i] for i in indices])
                syncing = micro == args.grad_accum - 1  # all-reduce only on the last micro-step
                with (contextlib.nullcontext() if syncing else acc.no_sync(self.model)), acc.autocast():
                    losses = self.model(batch)
                    acc.backward(losses["loss"] / args.grad_accum)
                for name, value in losses.items():
                    totals[name] = totals.get(name, 0.0) + float(value.detach()) / args.grad_accum
            if args.max_grad_norm:
                acc.clip_grad_norm_(self.model.parameters(), args.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            if self.after_step is not None:
                self.after_step(acc.unwrap_model(self.model))
            self.step += 1
            samples += self.global_batch
            bar.update(1)
            if self.step % args.log_every == 0 or self.step == args.max_steps:
                throughput = samples / (time.perf_counter() - started)
                record = {"step": self.step, **{k: round(v, 6) for k, v in totals.items()},
                          "lr": self.scheduler.get_last_lr()[0], "samples_per_second": round(throughput, 3)}
                bar.set_postfix(loss=f"{totals['loss']:.4f}", sps=f"{throughput:.1f}")
                if acc.is_main_process:
                    with open(self.log_path, "a") as handle:
                        handle.write(json.dumps(record) + "\n")
            if self.step % args.save_every == 0 or self.step == args.max_steps:
                self.save()
            if args.crash_at_step is not None and self.step == args.crash_at_step:
                os._exit(17)  # simulated kill: no cleanup, no final save
        bar.close()
        return acc.unwrap_model(self.model)

    def full_state_dict(self) -> dict:
        """The whole model's weights on the main process (gathers FSDP shards); call on every rank."""
        return self.accelerator.get_state_dict(self.model)


def count_trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)

