"""The training loop, top to bottom in one place: setup, data, model, optimizer, one loop.

No Ray here: the Ray Train adapter (``ray_train.py``) passes a :class:`WorkerContext` that says which rank this
is, wraps the model for DDP and carries reports and checkpoints; tests pass a plain one and read a list.
Only rank 0 evaluates, observes (MLflow) and writes checkpoints; every rank reports at the same points.

Universal training after Guo et al.: one endless loader per dataset, and under the default scheme ``acc``
every optimizer step takes one minibatch from every dataset, back-propagates each (losses summed, not
averaged), and lets DDP synchronise gradients only on the last backward of the round.
"""

from __future__ import annotations

import contextlib
import logging
import random
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from celltune.data_prep.common import UserInputError
from celltune.trainables.architectures import ModelSpec, build_model
from celltune.trainables.config import TrainConfig
from celltune.trainables.console_bar import ConsoleBar
from celltune.trainables.data import (
    ValidationFrame,
    build_training_streams,
    epoch_minibatches,
    load_validation_frames,
)
from celltune.trainables.inference import activation_for
from celltune.trainables.init_weights import load_init_weights, parameter_groups
from celltune.trainables.losses import build_loss, center_crop, loss_spec
from celltune.trainables.lr_schedules import OneCycleSchedule, build_lr_schedule
from celltune.trainables.metrics import InstanceScores, seg_counts
from celltune.trainables.model_card import BEST_WEIGHTS, CHECKPOINT_WEIGHTS, ArchitectureEntry, ModelCard, read_weights
from celltune.trainables.optimizers import build_optimizer
from celltune.trainables.schemes import POOLED, micro_batches, optimizer_steps_per_epoch
from celltune.trainables.target_kinds import DEFAULT_POSTPROCESS_PARAMS, postprocess
from celltune.trainables.temporal_inference import predict_frame_probabilities

logger = logging.getLogger(__name__)

STATE_FILE = "training_state.pt"  # optimizer, schedule and counters: tensors and numbers only (weights_only load)
MINIBATCHES_PER_DATASET_UNIVERSAL = 20  # Guo et al., Table 3: an epoch of universal training


class TrainingObserver(Protocol):
    """What rank 0 tells the outside world (MLflow in the platform, a list in tests)."""

    def on_start(self, config: TrainConfig, model_config: Mapping[str, Any]) -> None: ...
    def on_steps(self, records: list[tuple[int, dict[str, float]]]) -> None: ...
    def on_evaluation(self, step: int, epoch: int, metrics: Mapping[str, float],
                      examples: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None: ...
    def on_end(self, best: Mapping[str, float]) -> None: ...


@dataclass
class WorkerContext:
    """Where this process sits in the run; the defaults describe a single plain process."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    prepare_model: Callable[[nn.Module], nn.Module] = lambda model: model
    report: Callable[[dict[str, float], Path | None], None] = lambda metrics, checkpoint: None
    latest_checkpoint: Callable[[], Path | None] = lambda: None
    progress_bar: Callable[..., Any] = ConsoleBar  # tqdm-like factory(total=, initial=, desc=), rank 0


@dataclass
class TrainingResult:
    step: int
    epoch: int
    best: dict[str, float]
    last: dict[str, float]


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def maybe_no_sync(model: nn.Module, skip_sync: bool):
    """Skip DDP's gradient all-reduce for all but the last micro-batch of an accumulation round."""
    if skip_sync and isinstance(model, nn.parallel.DistributedDataParallel):
        return model.no_sync()
    return contextlib.nullcontext()


def channels_last_pays(model: torch.nn.Module, device: torch.device) -> bool:
    """``training.channels_last: null``: channels-last on CUDA unless the model has a GroupNorm.

    Measured on an H200 in bf16 (benchmarks/README.md): channels-last made the BatchNorm U-Net 2.0x faster but
    full-width XB-Net (GroupNorm throughout) 0.73x, since PyTorch's GroupNorm has no channels-last kernel and
    falls back to generic elementwise ones.
    """
    if device.type != "cuda":
        return False
    return not any(isinstance(module, torch.nn.GroupNorm) for module in model.modules())


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: mixed precision only on CUDA (``auto`` -> bf16 where supported, else fp16)."""
    if device.type != "cuda":
        if precision in ("bf16", "fp16"):
            logger.warning("precision=%s ignored on %s: mixed precision runs on CUDA only", precision, device)
        return None
    if precision == "fp32":
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def steps_per_epoch_for(config: TrainConfig, frames_per_dataset: Mapping[str, int], world_size: int) -> int:
    """Optimizer steps in one epoch: 20 minibatches per dataset for universal training, one pass otherwise."""
    names = config.data.dataset_names
    minibatches = config.training.steps_per_epoch
    if minibatches is None:
        if len(names) > 1:
            minibatches = MINIBATCHES_PER_DATASET_UNIVERSAL
        else:
            minibatches = epoch_minibatches(frames_per_dataset[names[0]], config.data.batch_size_for(names[0]),
                                            world_size)
    return optimizer_steps_per_epoch(config.training.scheme, len(names), minibatches)


def loss_margin(pad: int | None, spec: ModelSpec) -> int:
    """Pixels of context each side of the loss region, beyond what the model itself consumes (``output_crop``).

    Same-padding models: ``data.pad``, default 8 (16 for size multiple 32). Valid-padding models see their context
    through ``output_crop`` already; the margin is then the fewest pixels >= ``data.pad`` (default 0) that make
    ``crop + 2 * (output_crop + margin)`` a valid input side for crops that are multiples of the size multiple
    (2 px for the 5-stage U-Net: a 256 crop is read as a 444 px window giving a 260 px output).
    """
    if not spec.output_crop:
        return pad if pad is not None else (16 if spec.size_multiple >= 32 else 8)
    first = pad or 0
    for margin in range(first, first + spec.size_multiple):
        if (2 * (spec.output_crop + margin) - spec.min_input_size) % spec.size_multiple == 0:
            return margin
    raise ValueError(f"model {spec.name!r}: no margin makes a crop plus context a valid input size")


def crop_to_output(batch: dict[str, torch.Tensor], output_crop: int) -> dict[str, torch.Tensor]:
    """Center-crop every array but the image by ``output_crop`` px per side: targets and weight maps of a
    valid-padding model, whose output is that much smaller than its input window."""
    if not output_crop:
        return batch
    return {name: value if name == "image" else center_crop(value, output_crop) for name, value in batch.items()}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train(config: TrainConfig, context: WorkerContext | None = None,
          observer: TrainingObserver | None = None) -> TrainingResult:
    """Train ``config`` on this worker; resumes from ``context.latest_checkpoint()`` when there is one."""
    context = context or WorkerContext()
    is_chief = context.rank == 0
    observer = observer if is_chief else None
    device = context.device

    # -- setup: seeds differ per rank for augmentation, the model starts identical everywhere (DDP broadcasts)
    seed_everything(config.training.seed * 1000 + context.rank)
    autocast_dtype = resolve_precision(config.training.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=autocast_dtype == torch.float16)

    # -- model and loss
    torch.manual_seed(config.training.seed)
    model = build_model(config.model.name, **config.model.options)
    if config.init is not None:  # fine-tuning: the parent's weights (a resume below replaces them with its own)
        load_init_weights(model, config.init)
    spec = model.spec
    kind = spec.target_kind
    margin = loss_margin(config.data.pad, spec)  # the loss ignores this border of the model's output
    loss_fn = build_loss(config.loss.name, margin=margin, **config.loss.options)
    needs = loss_spec(config.loss.name)
    if needs.target_kind != kind:
        raise ValueError(f"loss {config.loss.name!r} needs {needs.target_kind} targets but model "
                         f"{config.model.name!r} predicts {kind}")
    if spec.time_window > 1 and set(config.data.scales.values()) != {1.0}:
        raise UserInputError(f"model {config.model.name!r} sees time windows, which are not resampled: "
                             f"data.scale must be 1 (got {config.data.scales})")
    channels_last = config.training.channels_last
    if channels_last is None:
        channels_last = channels_last_pays(model, device)
    model = model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    model = context.prepare_model(model)

    # -- data: one endless stream per dataset (this rank's shard of frames), validation frames on rank 0
    streams = build_training_streams(
        config.data, target_kind=kind, margin=spec.output_crop + margin, size_multiple=spec.size_multiple,
        rank=context.rank, world_size=context.world_size, seed=config.training.seed,
        weights=needs.needs_weight, pooled=config.training.scheme == "mix", time_window=spec.time_window,
    )
    names = config.data.dataset_names
    validation: dict[str, list[ValidationFrame]] = (
        load_validation_frames(config.data, time_window=spec.time_window) if is_chief else {})
    steps_per_epoch = steps_per_epoch_for(config, streams.frames_per_dataset, context.world_size)

    # -- optimizer and schedule
    optimizer = build_optimizer(config.optimizer, parameter_groups(unwrap(model), config.init, config.optimizer.lr))
    sched = config.scheduler
    schedule = build_lr_schedule(optimizer, sched.name, epochs=config.training.epochs, eta_min=sched.eta_min,
                                 t0=sched.t0, t_mult=sched.t_mult, step_size=sched.step_size, gamma=sched.gamma,
                                 warmup_fraction=sched.warmup_fraction)

    # -- resume
    step, start_epoch, best, spent = 0, 0, {"seg_mean": -1.0}, 0.0
    best_state: dict[str, torch.Tensor] | None = None
    resume_dir = context.latest_checkpoint()
    if resume_dir is not None:
        step, start_epoch, best, best_state, spent = _restore(resume_dir, unwrap(model), optimizer, schedule, scaler)
        logger.info("resumed from %s at step %d (epoch %d)", resume_dir, step, start_epoch)

    model_config = {**unwrap(model).celltune_config, "target_kind": kind, "size_multiple": spec.size_multiple}
    if observer:
        observer.on_start(config, model_config)

    total_steps = steps_per_epoch * config.training.epochs
    budget = RunBudget(total_steps, config.training.max_minutes, spent_s=spent)
    bar = context.progress_bar(total=total_steps, initial=step, desc="training") if is_chief else None
    last: dict[str, float] = {}
    epoch = start_epoch - 1  # the last epoch run; none when a resumed run had already finished
    for epoch in range(start_epoch, config.training.epochs):
        model.train()
        epoch_terms: dict[str, float] = {}
        step_records: list[tuple[int, dict[str, float]]] = []
        started = time.perf_counter()
        waited = 0.0  # seconds spent waiting for batches: the loader starves the step when this share is high
        for _ in range(steps_per_epoch):
            draws = micro_batches(config.training.scheme, step, n_datasets=len(names), seed=config.training.seed,
                                  steps_per_epoch=steps_per_epoch, epochs=config.training.epochs)
            fetch = time.perf_counter()
            batches = [crop_to_output(streams.next(POOLED if index == POOLED else names[index], device),
                                      spec.output_crop) for index in draws]
            waited += time.perf_counter() - fetch
            step_terms = optimizer_step(model, loss_fn, batches, optimizer=optimizer, scaler=scaler,
                                        autocast_dtype=autocast_dtype, epoch=epoch if needs.needs_epoch else None)
            step += 1
            if isinstance(schedule, OneCycleSchedule):
                schedule.set_progress(budget.progress(step))
            for term, value in step_terms.items():
                epoch_terms[term] = epoch_terms.get(term, 0.0) + value / steps_per_epoch
            step_records.append((step, {**{f"loss/{k}": v for k, v in step_terms.items()},
                                        "lr": optimizer.param_groups[0]["lr"]}))
            if bar is not None:
                bar.update(1)
        schedule.step()
        if bar is not None and budget.budget_s:  # a time budget ends the run first: its steps, for the ETA
            bar.total = max(step, min(total_steps, round(step / max(budget.progress(step), 1e-9))))
            bar.refresh()
        last = {f"epoch_loss/{k}": v for k, v in epoch_terms.items()}
        seconds = max(time.perf_counter() - started, 1e-9)
        last.update(lr=optimizer.param_groups[0]["lr"], epoch=epoch + 1, step=step,
                    steps_per_second=steps_per_epoch / seconds, data_wait_share=waited / seconds)
        if observer:
            step_records.append((step, {k: v for k, v in last.items() if k != "lr"}))
            observer.on_steps(step_records)  # one write per epoch, every step's values

        # Every rank stops at the same epoch: the chief's clock decides when a time budget is spent.
        out_of_time = budget.spent(context)
        is_last = epoch + 1 == config.training.epochs or out_of_time
        if (epoch + 1) % config.training.eval_every and not is_last:
            continue
        checkpoint_dir: Path | None = None
        with tempfile.TemporaryDirectory(prefix="celltune-ckpt-") as scratch:
            if is_chief:
                scores, examples = evaluate(unwrap(model), validation, kind=kind, size_multiple=spec.size_multiple,
                                            postprocess_params=config.postprocess, device=device,
                                            autocast_dtype=autocast_dtype, scales=config.data.scales)
                last.update(scores)
                if scores.get("seg_mean", -1.0) > best["seg_mean"]:
                    best = {**scores, "best_step": float(step), "best_epoch": float(epoch + 1)}
                    best_state = {k: v.detach().cpu().clone() for k, v in unwrap(model).state_dict().items()}
                last.update({f"best/{k}": v for k, v in best.items()})
                if observer:
                    observer.on_evaluation(step, epoch + 1, scores, examples)
                if bar is not None:
                    bar.set_description(progress_text(epoch + 1, last["epoch_loss/total"], scores, best["seg_mean"]))
                checkpoint_dir = Path(scratch)
                _save(checkpoint_dir, config, model_config, unwrap(model), best_state, optimizer, schedule, scaler,
                      step=step, epoch=epoch + 1, best=best, spent_s=budget.elapsed())
            context.report({k: float(v) for k, v in last.items()}, checkpoint_dir)
        if out_of_time:
            logger.info("time budget of %g min spent at epoch %d (step %d)", config.training.max_minutes, epoch + 1,
                        step)
            break
    if bar is not None:
        bar.close()
    if observer:
        observer.on_end(best)
    return TrainingResult(step=step, epoch=epoch + 1, best=best, last=last)


def progress_text(epoch: int, loss: float, scores: Mapping[str, float], best: float) -> str:
    """``epoch 10 loss 0.023 SEG HeLa 0.52 GOWT1 0.89 mean 0.71 (best 0.74)``: datasets by the last part of
    their names where those differ."""
    per_dataset = {key.removeprefix("seg/"): value for key, value in scores.items() if key.startswith("seg/")}
    short = {name: name.rsplit("-", 1)[-1] for name in per_dataset}
    if len(set(short.values())) < len(short):
        short = {name: name for name in per_dataset}
    parts = [f"{short[name]} {value:.3f}" for name, value in per_dataset.items()]
    if len(per_dataset) != 1:
        parts.append(f"mean {scores.get('seg_mean', float('nan')):.3f}")
    return f"epoch {epoch} loss {loss:.3f} SEG {' '.join(parts)} (best {best:.3f})"


class RunBudget:
    """How far the run is, in optimizer steps and, under ``training.max_minutes``, in wall time since it began
    (time before a resume included)."""

    def __init__(self, total_steps: int, max_minutes: float | None, *, spent_s: float = 0.0) -> None:
        self.total_steps = max(total_steps, 1)
        self.budget_s = max_minutes * 60 if max_minutes else None
        self._started = time.monotonic() - spent_s

    def elapsed(self) -> float:
        return time.monotonic() - self._started

    def progress(self, step: int) -> float:
        by_steps = step / self.total_steps
        return max(by_steps, self.elapsed() / self.budget_s) if self.budget_s else by_steps

    def spent(self, context: WorkerContext) -> bool:
        """Whether the time budget is used up, as rank 0 sees it (broadcast so that all ranks agree)."""
        if self.budget_s is None:
            return False
        done = self.elapsed() >= self.budget_s
        if context.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            flag = torch.tensor([int(done)], device=context.device)
            torch.distributed.broadcast(flag, src=0)
            done = bool(flag.item())
        return done


def optimizer_step(model: nn.Module, loss_fn, batches: list[dict[str, torch.Tensor]], *, optimizer,
                   scaler: torch.amp.GradScaler, autocast_dtype: torch.dtype | None = None,
                   epoch: float | None = None) -> dict[str, float]:
    """One optimizer step over one or more minibatches (one per dataset under ``acc``).

    Each minibatch gets its own backward, so only one graph is alive at a time; the losses are summed, not
    averaged (Guo et al., scheme Acc), and DDP all-reduces gradients once, on the last backward.
    Returns the summed loss terms for logging.
    """
    optimizer.zero_grad(set_to_none=True)
    terms: dict[str, float] = {}
    device_type = batches[0]["image"].device.type
    for position, batch in enumerate(batches):
        with maybe_no_sync(model, skip_sync=position < len(batches) - 1):
            with torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                logits = model(batch["image"])
            out = loss_fn(logits, batch["target"], batch.get("weight"), valid=batch.get("valid"), epoch=epoch)
            scaler.scale(out.total).backward()
        for term, value in out.floats().items():
            terms[term] = terms.get(term, 0.0) + value
    scaler.step(optimizer)
    scaler.update()
    return terms


PER_DATASET_SCORES = ("seg", "iou", "precision@0.5", "recall@0.5", "are")  # reported as <score>/<dataset>
MEAN_SCORES = ("seg_mean", "iou_mean")


def reported_scores(dataset_names: list[str]) -> list[str]:
    """The validation scores every evaluation reports for these datasets, and their ``best/`` copies: what a
    search may optimise."""
    scores = [*MEAN_SCORES, *(f"{score}/{name}" for name in dataset_names for score in PER_DATASET_SCORES)]
    return [*scores, *(f"best/{score}" for score in scores)]


@torch.no_grad()
def evaluate(model: nn.Module, validation: Mapping[str, list[ValidationFrame]], *, kind: str, size_multiple: int,
             postprocess_params: Mapping[str, Any], device: torch.device,
             autocast_dtype: torch.dtype | None = None,
             scales: Mapping[str, float] | None = None) -> tuple[dict[str, float], dict[str, tuple]]:
    """Predict every validation frame full-frame, post-process, and score per dataset: CTC SEG, pixel IoU
    (mean over frames), instance precision and recall at IoU 0.5 (counts pooled over frames) and the adapted Rand
    error (mean over frames with reference cells). A dataset trained at a ``scales`` factor is predicted at it
    and scored at the original resolution."""
    params = {**DEFAULT_POSTPROCESS_PARAMS[kind], **postprocess_params}
    scores: dict[str, float] = {}
    examples: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    seg_values, iou_values = [], []
    for name, frames in validation.items():
        if not frames:
            continue
        jaccard_sum, references, instance = 0.0, 0, InstanceScores(thresholds=(0.5,))
        for index, frame in enumerate(frames):
            previous = None if frame.window is None else frame.window[:-1]  # time-window models get windows
            probs = predict_frame_probabilities(model, frame.image, previous=previous,
                                                scale=(scales or {}).get(name, 1.0), size_multiple=size_multiple,
                                                activation=activation_for(kind), device=device,
                                                amp=autocast_dtype is not None)[0]
            predicted = postprocess(kind, probs, **params)
            part_sum, part_count = seg_counts(frame.labels, predicted)
            jaccard_sum += part_sum
            references += part_count
            instance.add(frame.labels, predicted)
            if index == 0:
                examples[name] = (frame.raw, frame.labels, predicted)
        seg = jaccard_sum / references if references else 0.0
        scores[f"seg/{name}"] = seg
        scores[f"iou/{name}"] = float(instance.pixel_iou)
        scores[f"precision@0.5/{name}"] = instance.counts(0.5).precision
        scores[f"recall@0.5/{name}"] = instance.counts(0.5).recall
        if instance.adapted_rand_error is not None:  # None: no validation frame of the dataset has a cell
            scores[f"are/{name}"] = instance.adapted_rand_error
        seg_values.append(seg)
        iou_values.append(scores[f"iou/{name}"])
    scores["seg_mean"] = float(np.mean(seg_values)) if seg_values else 0.0
    scores["iou_mean"] = float(np.mean(iou_values)) if iou_values else 0.0
    model.train()
    return scores, examples


def _save(directory: Path, config: TrainConfig, model_config: Mapping[str, Any], model: nn.Module,
          best_state: Mapping[str, torch.Tensor] | None, optimizer, schedule, scaler, *, step: int, epoch: int,
          best: Mapping[str, float], spent_s: float = 0.0) -> None:
    """A checkpoint holds everything to rebuild the run and its best model; weights load without pickle."""
    current = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(current, str(directory / CHECKPOINT_WEIGHTS))
    save_file({k: v.contiguous() for k, v in (best_state or current).items()}, str(directory / BEST_WEIGHTS))
    torch.save({"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(), "scaler": scaler.state_dict(),
                "step": step, "epoch": epoch, "best": dict(best), "spent_s": float(spent_s)}, directory / STATE_FILE)
    ModelCard(
        model=ArchitectureEntry(**model_config),
        postprocess={**DEFAULT_POSTPROCESS_PARAMS[model_config["target_kind"]], **config.postprocess},
        normalization=config.data.normalization,
        scale=config.data.scales,
        train_config=config.model_dump(mode="json"),
        step=step, epoch=epoch, best=dict(best),
    ).write(directory)


def _restore(directory: Path, model: nn.Module, optimizer, schedule, scaler):
    model.load_state_dict(read_weights(directory / CHECKPOINT_WEIGHTS))
    state = torch.load(directory / STATE_FILE, weights_only=True, map_location="cpu")
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    scaler.load_state_dict(state["scaler"])
    best_state = read_weights(directory / BEST_WEIGHTS)
    return (int(state["step"]), int(state["epoch"]), dict(state["best"]), best_state,
            float(state.get("spent_s", 0.0)))
