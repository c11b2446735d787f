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
import math
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from kosmosg_core.errors import InputFileError, KosmosGError, OutputPathError, guarded_main
from kosmosg_core.safe_files import atomic_open, read_text, refuse_input_as_output

CHECKPOINT_PREFIX = "step-"
_CHECKPOINT_NAME = re.compile(r"step-(0|[1-9][0-9]{0,17})")
MAX_SEED = 2**32 - 1


class UsageError(KosmosGError):
    """A command-line argument is missing or out of range."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one ``error: ...`` line (through ``guarded_main``), not usage text."""

    def error(self, message: str):
        raise UsageError(f"{message} (see {self.prog} --help).")


def new_parser(doc: str) -> ArgumentParser:
    return ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def run_main(run, argv, program: str) -> int:
    """Every training entry point: one clear line per process for a bad input, ``--debug`` for the traceback."""
    return guarded_main(run, argv, program)


def add_common_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    group = parser.add_argument_group("training")
    group.add_argument("--output-dir", required=True)
    group.add_argument("--overwrite", action="store_true",
                       help="replace a finished run in --output-dir (its final output, and with --no-resume its "
                            "checkpoints)")
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


def check_common_args(args) -> None:
    """Out-of-range values are usage errors now, not a hang or a crash hours later."""
    def need(ok: bool, text: str) -> None:
        if not ok:
            raise UsageError(text)

    for name in ("max_steps", "batch_size", "grad_accum", "save_every", "log_every"):
        value = getattr(args, name)
        need(1 <= value <= 10**12, f"--{name.replace('_', '-')} must be a positive whole number, got {value}.")
    need(0 <= args.warmup_steps <= 10**12, f"--warmup-steps must be 0 or more, got {args.warmup_steps}.")
    need(0 <= args.seed <= MAX_SEED, f"--seed must be between 0 and {MAX_SEED}, got {args.seed}.")
    need(math.isfinite(args.lr) and args.lr > 0, f"--lr must be a positive number, got {args.lr}.")
    need(math.isfinite(args.eps) and args.eps > 0, f"--eps must be a positive number, got {args.eps}.")
    need(math.isfinite(args.weight_decay) and args.weight_decay >= 0,
         f"--weight-decay must be 0 or more, got {args.weight_decay}.")
    need(math.isfinite(args.max_grad_norm) and args.max_grad_norm >= 0,
         f"--max-grad-norm must be 0 (off) or more, got {args.max_grad_norm}.")
    need(all(math.isfinite(b) and 0 <= b < 1 for b in args.betas),
         f"--betas must be two numbers in [0, 1), got {args.betas}.")
    if args.crash_at_step is not None:
        need(args.crash_at_step >= 1, "--crash-at-step must be positive.")


def _finished_outputs(output_dir: str, finals: list[str]) -> list[str]:
    return [os.path.join(output_dir, name) for name in finals if os.path.lexists(os.path.join(output_dir, name))]


def _checkpoint_dirs(output_dir: str) -> list[str]:
    if not os.path.isdir(output_dir):
        return []
    return [os.path.join(output_dir, n) for n in os.listdir(output_dir) if n.startswith(CHECKPOINT_PREFIX)]


def prepare_output(args, finals: list[str], inputs: list[str | None]) -> None:
    """Before anything is loaded: the output folder can take this run without losing an earlier one.

    * ``--output-dir`` must be a folder (or not exist yet);
    * a finished run (one of ``finals`` exists there) is replaced only with ``--overwrite``;
    * starting over (``--no-resume``) where checkpoints exist also needs ``--overwrite``, which then
      removes the old checkpoints and log (the final output is replaced only when the new one is done);
    * no output may be one of the inputs (``--init``, ``--data``, ...);
    * resuming an unfinished run (checkpoints, no final output) goes on as before.
    Every process checks the same files, so every rank refuses alike."""
    check_common_args(args)
    out = args.output_dir
    if os.path.lexists(out) and not os.path.isdir(out):
        raise OutputPathError(f"--output-dir {out} exists and is not a folder: choose a folder for the run.")
    for path in [out, *(os.path.join(out, name) for name in finals)]:
        refuse_input_as_output(path, inputs, "--output-dir" if path == out else "output")
    done = _finished_outputs(out, finals)
    if done and not args.overwrite:
        raise OutputPathError(f"--output-dir {out} holds a finished run ({os.path.basename(done[0])}); it is not "
                              "overwritten: choose another --output-dir, or pass --overwrite to replace it.")
    old = _checkpoint_dirs(out)
    if args.no_resume and old and not args.overwrite:
        first = os.path.basename(sorted(old)[0])
        raise OutputPathError(f"--no-resume: --output-dir {out} already holds checkpoints ({first}, "
                              "...) of an earlier run; they are not overwritten: choose another --output-dir, pass "
                              "--overwrite to remove them and start over, or drop --no-resume to resume.")
    log = os.path.join(out, "train_log.jsonl")
    if os.path.lexists(log) and not os.path.isfile(log):
        raise OutputPathError(f"{log} is not a regular file: remove it (the run appends its log there).")


def clear_old_run(args) -> None:
    """With ``--no-resume --overwrite``: the earlier run's checkpoints and log go (main process only)."""
    if not (args.no_resume and args.overwrite):
        return
    for path in _checkpoint_dirs(args.output_dir):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    log = os.path.join(args.output_dir, "train_log.jsonl")
    if os.path.isfile(log):
        os.unlink(log)


@dataclass
class Batch:
    indices: list[int]  # global sample indices (for per-sample seeding)
    epoch: int
    samples: list


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The same random stream for a sample whatever rank or process count handles it."""
    # the modulus changes nothing for the seeds that always worked, and keeps big ones in range
    return torch.Generator().manual_seed(((seed * 1_000_003 + epoch) * 1_000_000_007 + index) % (1 << 64))


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
            raise InputFileError(f"the data has {len(dataset)} usable samples, fewer than one global batch "
                                 f"({self.global_batch} = --batch-size x processes x --grad-accum): add data or lower "
                                 "--batch-size.")
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise UsageError("nothing to train: every parameter is frozen.")
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
        # only step-<digits>/ folders with a trainer.json (written last) are complete checkpoints
        names = [n for n in os.listdir(self.args.output_dir) if _CHECKPOINT_NAME.fullmatch(n)
                 and os.path.isdir(os.path.join(self.args.output_dir, n))
                 and os.path.lexists(os.path.join(self.args.output_dir, n, "trainer.json"))]
        return sorted((os.path.join(self.args.output_dir, n) for n in names), key=lambda p: int(p.rsplit("-", 1)[1]))

    def save(self) -> str:
        path = os.path.join(self.args.output_dir, f"{CHECKPOINT_PREFIX}{self.step}")
        self.accelerator.save_state(path)
        if self.accelerator.is_main_process:  # written last: marks the checkpoint complete
            with atomic_open(os.path.join(path, "trainer.json"), "w", encoding="utf-8") as handle:
                json.dump({"step": self.step}, handle)
        self.accelerator.wait_for_everyone()
        return path

    @staticmethod
    def checkpoint_step(path: str) -> int:
        """The step a checkpoint folder holds, checked: its trainer.json agrees with its name."""
        marker = os.path.join(path, "trainer.json")
        hint = f"remove {path} (or pass --no-resume --overwrite to start over)"
        text = read_text(marker, "checkpoint marker", max_bytes=4096)
        try:
            record = json.loads(text)
        except ValueError:
            raise InputFileError(f"checkpoint marker {marker} is not JSON: {hint}.") from None
        step = record.get("step") if isinstance(record, dict) else None
        expected = int(path.rsplit("-", 1)[1])
        if type(step) is not int or step != expected:
            raise InputFileError(f"checkpoint marker {marker} says step {step!r}, but the folder is step {expected}: "
                                 f"it is damaged; {hint}.")
        return step

    def resume(self) -> None:
        found = [] if self.args.no_resume else self.checkpoints()
        if found:
            step = self.checkpoint_step(found[-1])
            self.accelerator.load_state(found[-1])
            self.step = step
            self.accelerator.print(f"resumed from {found[-1]} (step {self.step})")

    # -- loop ----------------------------------------------------------------------------------
    def run(self) -> torch.nn.Module:
        from tqdm import tqdm

        args, acc = self.args, self.accelerator
        if acc.is_main_process:
            clear_old_run(args)
            os.makedirs(args.output_dir, exist_ok=True)
        acc.wait_for_everyone()
        self.resume()
        bar = tqdm(total=args.max_steps, initial=self.step, disable=not acc.is_main_process, desc="training")
        started, samples = time.perf_counter(), 0
        try:  # the bar ends its line even when a step fails, so an error is a line of its own
            while self.step < args.max_steps:
                self.model.train()
                totals: dict[str, float] = {}
                for micro in range(args.grad_accum):
                    epoch, indices = batch_for(len(self.dataset), self.step, micro, self.global_batch,
                                               args.batch_size * self.world, acc.process_index, args.batch_size,
                                               args.seed)
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
        finally:
            bar.close()
        return acc.unwrap_model(self.model)

    def full_state_dict(self) -> dict:
        """The whole model's weights on the main process (gathers FSDP shards); call on every rank."""
        return self.accelerator.get_state_dict(self.model)


def count_trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)

