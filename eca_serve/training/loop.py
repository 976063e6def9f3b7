"""Task-independent training machinery: optimiser, schedule, AMP, checkpoints, progress."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal

import torch
from torch import Tensor, nn

from eca_serve.errors import CheckpointError, ConfigError
from eca_serve.kinds import Device

# A step maps one batch to (loss, number of images in it).
StepFn = Callable[[nn.Module, Any, torch.device], tuple[Tensor, int]]


@dataclass
class TrainConfig:
    """Hyper-parameters of one run (stored in every checkpoint).

    Attributes:
        epochs: Passes over the training set.
        batch_size: Images per step.
        lr: Peak learning rate.
        weight_decay: Decoupled (AdamW) or L2 (SGD) weight decay.
        optimizer: ``sgd`` (momentum 0.9, nesterov) or ``adamw``.
        schedule: ``cosine`` (to 0 after linear warm-up) or ``step`` (x0.1 at 2/3 and 8/9 of the run).
        warmup_steps: Linear warm-up steps.
        device: ``cpu`` or ``cuda``.
        amp: Mixed precision (only on cuda).
        workers: DataLoader worker processes.
        seed: Seed of weights, data order and augmentation.
        out_dir: Where ``last.pt`` and ``best.pt`` go.
        clip_grad: Max gradient norm (0 = off).
    """

    epochs: int = 10
    batch_size: int = 32
    lr: float = 0.05
    weight_decay: float = 5e-5
    optimizer: Literal["sgd", "adamw"] = "sgd"
    schedule: Literal["cosine", "step"] = "cosine"
    warmup_steps: int = 100
    device: str = "cpu"
    amp: bool = False
    workers: int = 2
    seed: int = 0
    out_dir: str = "runs/train"
    clip_grad: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.device = str(Device(self.device))  # canonical, and a plain str: checkpoints hold plain containers only
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("epochs and batch_size must be >= 1")
        if self.optimizer not in ("sgd", "adamw") or self.schedule not in ("cosine", "step"):
            raise ConfigError("optimizer must be sgd|adamw and schedule cosine|step")
        if self.amp and not Device(self.device).is_cuda:
            raise ConfigError("--amp needs --device cuda (mixed precision is a GPU feature here)")


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD or AdamW over trainable parameters; no weight decay on norms, biases and ECA kernels."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.dim() <= 1 or name.endswith(".eca.conv.weight") else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)


def make_schedule(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then cosine decay to 0 or steps of x0.1."""
    warmup = min(cfg.warmup_steps, max(total_steps // 5, 1))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(total_steps - warmup, 1)
        if cfg.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        return 0.1 ** sum(progress >= m for m in (2 / 3, 8 / 9))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass
class TrainState:
    """Everything ``--resume`` needs."""

    epoch: int = 0
    step: int = 0
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


class Trainer:
    """Runs epochs of ``step_fn`` with checkpointing after each epoch.

    Args:
        model: Model in train mode on ``cfg.device``.
        cfg: Hyper-parameters.
        step_fn: Batch -> (loss, images).
        steps_per_epoch: Length of the training loader.
    """

    def __init__(self, model: nn.Module, cfg: TrainConfig, step_fn: StepFn, steps_per_epoch: int) -> None:
        self.model, self.cfg, self.step_fn = model, cfg, step_fn
        self.device = torch.device(cfg.device)
        self.optimizer = make_optimizer(model, cfg)
        self.scheduler = make_schedule(self.optimizer, cfg, cfg.epochs * steps_per_epoch)
        self.scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp)
        self.state = TrainState()
        self.out_dir = Path(cfg.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)

    def fit(self, loader: Iterable, steps_per_epoch: int, on_step: Callable[[dict], None] | None = None) -> TrainState:
        """Train from the current epoch to ``cfg.epochs``, saving ``last.pt`` after every epoch.

        ``on_step`` gets each step's ``loss``, ``lr``, ``step`` (1-based, counted across a resume),
        ``total_steps`` (of the whole run), ``epoch`` (1-based), ``images``, ``seconds`` and ``img_per_s``.
        """
        total_steps = self.cfg.epochs * steps_per_epoch
        while self.state.epoch < self.cfg.epochs:
            self.model.train()
            start = time.perf_counter()
            for batch in loader:
                stats = self._step(batch)
                if on_step:
                    on_step({**stats, "epoch": self.state.epoch + 1, "total_steps": total_steps,
                             "img_per_s": stats["images"] / max(stats["seconds"], 1e-9)})
            self.state.seconds += time.perf_counter() - start
            self.state.epoch += 1
            self.save(self.out_dir / "last.pt")
        return self.state

    def _step(self, batch: Any) -> dict[str, float]:
        start = time.perf_counter()
        with torch.autocast(self.device.type, enabled=self.cfg.amp):
            loss, images = self.step_fn(self.model, batch, self.device)
        if not torch.isfinite(loss):
            raise ConfigError(f"loss became {loss.item()} at step {self.state.step}; lower --lr")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.clip_grad > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.state.step += 1
        self.state.losses.append(float(loss.detach()))
        return {"loss": self.state.losses[-1], "images": images, "seconds": time.perf_counter() - start,
                "lr": self.optimizer.param_groups[0]["lr"], "step": self.state.step}

    def save(self, path: Path) -> None:
        """Checkpoint with model, optimiser, schedule, scaler and progress (plain containers only)."""
        torch.save({
            "state_dict": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "train_state": asdict(self.state), "config": asdict(self.cfg),
            "model_config": self.model.config.to_dict(),
        }, path)

    def resume(self, path: Path) -> None:
        """Continue from a ``last.pt`` written by `save` (read with ``weights_only=True``)."""
        try:
            ckpt = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as exc:
            raise CheckpointError(f"cannot resume from {path}: {str(exc).splitlines()[0]}") from None
        self.model.load_state_dict(ckpt["state_dict"], strict=True)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.state = TrainState(**ckpt["train_state"])


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch (CPU and CUDA) and return a generator for data order."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def run_training(
    model: nn.Module, cfg: TrainConfig, step_fn: StepFn, train_set: Any, *, generator: torch.Generator,
    resume: Path | None = None, on_step: Callable[[dict], None] | None = None, collate_fn: Callable | None = None,
) -> tuple[Trainer, TrainState]:
    """Shuffle ``train_set`` into batches, optionally resume, and train to ``cfg.epochs``."""
    from torch.utils.data import DataLoader

    loader = DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True, drop_last=True, generator=generator,
                        collate_fn=collate_fn, num_workers=cfg.workers, pin_memory=Device(cfg.device).is_cuda,
                        persistent_workers=cfg.workers > 0)
    if len(loader) == 0:
        raise ConfigError(f"{len(train_set)} training images are fewer than one batch of {cfg.batch_size}")
    trainer = Trainer(model, cfg, step_fn, len(loader))
    if resume:
        trainer.resume(resume)
    return trainer, trainer.fit(loader, len(loader), on_step)


def run_summary(state: TrainState) -> dict[str, Any]:
    """Training facts recorded next to the evaluation metrics."""
    return {"train_seconds": round(state.seconds, 1), "epochs": state.epoch, "steps": state.step,
            "final_loss": state.losses[-1] if state.losses else None}
