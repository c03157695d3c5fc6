"""The training loop both stages share (paper §4.2; docs/authors_code.md, 'Training recipe').

Epochs of batches of query indices; the cosine learning rate (set once per epoch, as the
authors do, or per step); AMP; checkpoints that resume *exactly*; data parallelism under
`torchrun`. What a stage trains is an `objective`: a module whose forward takes one batch's
tensors and returns the loss, so `DistributedDataParallel` can wrap it as it is.

Exact resumption rests on three things:
* each epoch's batch order comes from a generator seeded by (seed, epoch), so it can be
  rebuilt at any point without replaying earlier epochs;
* a checkpoint holds the model, the optimizer, the grad scaler, the torch RNG states (dropout)
  and the position (epoch, step in epoch, global step), and is written atomically;
* a resumed run skips the batches its epoch had already done.
A run killed anywhere and resumed from its last checkpoint therefore redoes the same steps
with the same random numbers and ends bit-identical to an uninterrupted run (tested).
"""
from __future__ import annotations

import io
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from cirtutor.engine.optim import autocast, cosine_lr, grad_scaler, set_lr
from cirtutor.errors import CirtutorError
from cirtutor.io import atomic_write_bytes, torch_load

CHECKPOINT_VERSION = 1


class ResumeError(CirtutorError):
    """A checkpoint that cannot continue this run (missing, other model, other settings)."""


@dataclass
class Schedule:
    """How long and how fast: the parts of a stage's config the loop needs."""
    epochs: int
    lr: float
    schedule: str = "epoch"         # "epoch": cosine set at the start of each epoch (authors); "step": every step
    horizon: int | None = None      # cosine horizon in epochs (None = epochs; the authors' CIRR runs go past it)

    def lr_at(self, epoch: int, step: int, steps_per_epoch: int) -> float:
        horizon = self.horizon or self.epochs
        if self.schedule == "epoch":
            return cosine_lr(self.lr, epoch / horizon)
        if self.schedule == "step":
            return cosine_lr(self.lr, step / max(1, horizon * steps_per_epoch))
        raise ValueError(f"schedule={self.schedule!r}; expected 'epoch' or 'step'")


@dataclass
class Position:
    epoch: int = 0                  # the epoch in progress (0-based)
    step_in_epoch: int = 0          # batches of that epoch already done
    step: int = 0                   # optimisation steps done in total


@dataclass
class History:
    train: list[dict] = field(default_factory=list)    # one row per step: step, epoch, loss, lr (+ extras)
    val: list[dict] = field(default_factory=list)      # one row per validation: epoch + metrics


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator that orders epoch `epoch`'s batches: a function of (seed, epoch) only."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    return module.module if isinstance(module, torch.nn.parallel.DistributedDataParallel) else module


def distribute(objective: torch.nn.Module, device: str | torch.device) -> torch.nn.Module:
    """Wrap `objective` in DistributedDataParallel under torchrun (gloo on CPU, nccl on GPU);
    unchanged otherwise. Its `.model` must already be on `device`."""
    if world()[1] == 1:
        return objective
    ids = [torch.device(device).index or 0] if torch.device(device).type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(objective, device_ids=ids)


# ----------------------------------------------------------------------------- checkpoints

def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def training_only_state(objective: torch.nn.Module) -> dict:
    """The objective's own tensors besides the model's (e.g. CaLa's modules): they are trained and
    must resume, but the model's checkpoint for evaluation never holds them."""
    return {k: v for k, v in objective.state_dict().items() if not k.startswith("model.")}


def save_checkpoint(path: str | Path, model: torch.nn.Module, optimizer, scaler, position: Position,
                    history: History, meta: dict) -> Path:
    """Everything a run needs to continue, written atomically (a kill leaves the previous file)."""
    blob = {
        "version": CHECKPOINT_VERSION,
        "model": unwrap(model).model.state_dict(),
        "extra": training_only_state(unwrap(model)),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": rng_state(),
        "position": vars(position).copy(),
        "history": {"train": history.train, "val": history.val},
        "meta": meta,
    }
    buffer = io.BytesIO()
    torch.save(blob, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | Path) -> dict:
    """A training checkpoint, loaded safely (weights_only)."""
    path = Path(path)
    if not path.is_file():
        raise ResumeError(f"no checkpoint at {path}: nothing to resume (run without --resume to start afresh)")
    blob = torch_load(path, error=ResumeError)
    if not isinstance(blob, dict) or blob.get("version") != CHECKPOINT_VERSION or "position" not in blob:
        raise ResumeError(f"{path} is not a cirtutor training checkpoint (version {CHECKPOINT_VERSION})")
    return blob


def check_meta(saved: dict, current: dict, path: Path) -> None:
    """Refuse to resume a checkpoint written by a run with other settings."""
    diff = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    if diff:
        lines = "\n".join(f"  {k}: checkpoint {saved.get(k)!r}, now {current.get(k)!r}" for k in diff[:8])
        raise ResumeError(f"{path} was written by a run with other settings:\n{lines}\n"
                          "  resume with the same preset and overrides, or start a new run folder")


# ----------------------------------------------------------------------------- the loop

def restore(checkpoint, objective, optimizer, scaler, meta: dict) -> tuple[Position, History]:
    """Load a `fit` checkpoint into the objective, optimizer, scaler and random-number state; its position and
    history. The checkpoint's settings must match `meta`."""
    blob = load_checkpoint(checkpoint)
    check_meta(blob["meta"], meta, Path(checkpoint))
    unwrap(objective).load_state_dict({**{f"model.{k}": v for k, v in blob["model"].items()}, **blob.get("extra", {})})
    optimizer.load_state_dict(blob["optimizer"])
    scaler.load_state_dict(blob["scaler"])
    set_rng_state(blob["rng"])
    return Position(**blob["position"]), History(**blob["history"])


def begin(checkpoint, resume: bool, objective, optimizer, scaler, meta: dict, seed: int, log, desc: str
          ) -> tuple[Position, History]:
    """Where a `fit` run starts: resumed, the checkpoint's position and history with everything it holds restored
    (random-number state included); otherwise at step 0, with this rank's torch random numbers seeded."""
    if not resume:
        torch.manual_seed(seed + world()[0])
        return Position(), History()
    position, history = restore(checkpoint, objective, optimizer, scaler, meta)
    log(f"{desc}: resuming from {checkpoint} at epoch {position.epoch}, step {position.step}")
    return position, history


def after_epoch(on_epoch_end, epoch: int, objective, history: History) -> None:
    """The end of epoch `epoch`: the metrics `on_epoch_end` returns, if any, kept in the history, and the objective
    back in training mode after that validation."""
    metrics = on_epoch_end(epoch) if on_epoch_end else None
    if metrics:
        history.val.append({"epoch": epoch, **metrics})
        objective.train()


def epoch_steps(order: list[list[int]], rank: int, size: int, grad_accum: int, desc: str) -> list[list[list[int]]]:
    """This rank's optimisation steps of one epoch: every size-th batch of `order`, grad_accum batches per step."""
    steps_per_epoch = len(order) // (size * grad_accum)
    if not steps_per_epoch:
        raise CirtutorError(f"{desc}: an epoch holds {len(order)} batch(es), fewer than the {size * grad_accum} "
                            "one optimisation step needs (the training set is smaller than a batch); "
                            "lower the stage's batch_size or grad_accum")
    mine = order[rank::size]
    return [mine[i * grad_accum:(i + 1) * grad_accum] for i in range(steps_per_epoch)]


def step(objective, optimizer, scaler, micro_batches: list[list[int]], make_inputs: Callable[[list[int]], tuple],
         device, amp: bool, cpu_bf16: bool) -> float:
    """One optimisation step over `micro_batches` (each batch's inputs made just before its forward; gradients
    summed, each loss / their number); returns the step's loss."""
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for batch in micro_batches:
        with autocast(device, amp, cpu_bf16):
            loss = objective(*make_inputs(batch)) / len(micro_batches)
        scaler.scale(loss).backward()
        total += loss.item()
    scaler.step(optimizer)
    scaler.update()
    return total


def fit(objective: torch.nn.Module, optimizer: torch.optim.Optimizer, schedule: Schedule,
        batches: Callable[[torch.Generator], Sequence[Sequence[int]]],
        inputs: Callable[[Sequence[int], int], tuple], *,
        seed: int = 0, device: str | torch.device = "cpu", amp: bool = True, cpu_bf16: bool = False, grad_accum: int = 1,
        checkpoint: str | Path | None = None, checkpoint_every: int = 0, resume: bool = False, meta: dict | None = None,
        on_epoch_end: Callable[[int], dict | None] | None = None, log: Callable[[str], None] = print,
        log_every: int = 50, desc: str = "train", progress: bool | None = None,
        stop_after: int | None = None) -> History:
    """Train `objective` (forward(*inputs(batch, epoch)) -> loss; its `.model` is what is
    trained and checkpointed) and return its history.

    `batches(generator)` lists one epoch's batches of query indices. Under torchrun each rank
    takes every world-th batch of that common list and DDP averages the gradients, so one
    optimisation step sees `world` batches. `grad_accum` > 1 sums the gradients of that many
    consecutive batches per step (each loss / grad_accum): smaller batches on a smaller GPU;
    a contrastive loss then only sees each small batch's negatives. `checkpoint` (a file) is written every
    `checkpoint_every` steps (0: only at epoch ends) and after each epoch; `resume=True`
    continues from it. `on_epoch_end(epoch)` may return validation metrics, kept in the
    history. `stop_after` ends the run after that many steps in total, as a kill would
    (used to test resumption)."""
    rank, size = world()
    meta = dict(meta or {})
    scaler = grad_scaler(device, amp)
    position, history = begin(checkpoint, resume, objective, optimizer, scaler, meta, seed, log, desc)

    def save() -> None:
        if checkpoint is not None and rank == 0:
            save_checkpoint(checkpoint, objective, optimizer, scaler, position, history, meta)
        if size > 1:
            dist.barrier()

    progress = sys.stderr.isatty() if progress is None else progress
    objective.train()
    while position.epoch < schedule.epochs:
        epoch = position.epoch
        steps = epoch_steps([list(b) for b in batches(epoch_generator(seed, epoch))], rank, size, grad_accum, desc)
        steps_per_epoch = len(steps)
        bar = tqdm(total=steps_per_epoch, initial=position.step_in_epoch, desc=f"{desc} epoch {epoch}",
                   disable=not progress or rank != 0, leave=False, unit="step")
        for micro_batches in steps[position.step_in_epoch:]:
            lr = schedule.lr_at(epoch, position.step, steps_per_epoch)
            set_lr(optimizer, lr)
            total = step(objective, optimizer, scaler, micro_batches, lambda batch: inputs(batch, epoch), device, amp,
                         cpu_bf16)
            position.step += 1
            position.step_in_epoch += 1
            history.train.append({"step": position.step, "epoch": epoch, "loss": total, "lr": lr})
            bar.update()
            if log_every and position.step % log_every == 0 and rank == 0:
                log(f"{desc} step {position.step}/{steps_per_epoch * schedule.epochs}  loss {total:.3f}  lr {lr:.2e}")
            if stop_after is not None and position.step >= stop_after:
                bar.close()
                return history
            if checkpoint_every and position.step % checkpoint_every == 0 and position.step_in_epoch < steps_per_epoch:
                save()
        bar.close()
        after_epoch(on_epoch_end, epoch, objective, history)
        position.epoch, position.step_in_epoch = epoch + 1, 0
        save()
    return history
