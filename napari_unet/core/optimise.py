"""One optimisation step: the loss, mixed precision and the optimiser.

* The loss is the pixel-weighted cross-entropy of the paper (eq. 1): per-pixel weights
  from :func:`napari_unet.core.targets.labels_to_targets` (class balance and the border
  term). :func:`weighted_cross_entropy` takes logits (training),
  :func:`weighted_nll` the class probabilities of a whole plane (validation): the same
  number from the two ends of the network.
* Mixed precision on CUDA: bf16 autocast where supported, else fp16 with a GradScaler; on
  the CPU bf16 when asked for and the CPU has bf16 instructions.
* :class:`Optimiser`: AdamW, one step per batch at the learning rate it is given; a batch that
  does not fit the device's memory is run in parts, their gradients summed (the same step).
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


def weighted_cross_entropy(logits: torch.Tensor, classes: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean cross-entropy of (B, K, H, W) logits against (B, H, W) classes and weights."""
    ce = F.cross_entropy(logits.float(), classes, reduction="none")
    return (ce * weights).sum() / weights.sum().clamp_min(1e-6)


def weighted_nll(probs: np.ndarray, classes: np.ndarray, weights: np.ndarray) -> float:
    """The same loss from (K, H, W) probabilities of one plane and its (H, W) classes and weights."""
    p = torch.from_numpy(np.clip(probs, 1e-7, 1.0))
    nll = -torch.log(p.gather(0, torch.from_numpy(classes.astype(np.int64))[None]))[0]
    w = torch.from_numpy(weights)
    return float((nll * w).sum() / w.sum())


def describe_loss(w0: float, sigma: float) -> str:
    """The loss in words, for model cards."""
    return f"pixel-weighted cross-entropy, class balance 1/sqrt(freq) + border term w0={w0:g}, sigma={sigma:g} px"


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX-512 BF16 or AMX): there bf16 autocast
    about halves a training step; elsewhere it is emulated and slower than float32."""
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    for name in checks:
        probe = getattr(torch.cpu, name, None)
        try:
            if probe is not None and probe():
                return True
        except Exception:  # private probes: a torch without them simply says no
            continue
    return False


def autocast_dtype(device: torch.device, mixed_precision: bool | None) -> torch.dtype | None:
    """The autocast dtype for ``device`` (None: float32).

    ``mixed_precision=None``: on for CUDA only. ``True`` on the CPU: bfloat16 where the CPU
    computes it in hardware (:func:`cpu_has_fast_bf16`), else float32.
    """
    if device.type != "cuda":
        if mixed_precision and device.type == "cpu" and cpu_has_fast_bf16():
            return torch.bfloat16
        if mixed_precision:
            log.info("Mixed precision needs CUDA or a CPU with bfloat16 instructions; training in float32 on %s.",
                     device)
        return None
    if mixed_precision is False:
        return None
    from .device import cuda_has_fast_bf16

    return torch.bfloat16 if cuda_has_fast_bf16(device) else torch.float16


def forward(net: torch.nn.Module, x: torch.Tensor, amp_dtype: torch.dtype | None) -> torch.Tensor:
    """``net(x)``, under autocast to ``amp_dtype`` when one is given."""
    if amp_dtype is None:
        return net(x)
    with torch.autocast(device_type=x.device.type, dtype=amp_dtype):
        return net(x)


def set_train_mode(net: torch.nn.Module, freeze_norm: bool) -> None:
    """Training mode, with BatchNorm layers kept in eval mode (statistics frozen) if ``freeze_norm``."""
    net.train()
    if freeze_norm:
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()


@contextlib.contextmanager
def evaluation_mode(net: torch.nn.Module):
    """Put ``net`` in eval mode for the ``with`` block, then give every module its mode back."""
    modes = [(m, m.training) for m in net.modules()]
    net.eval()
    try:
        yield net
    finally:
        for m, training in modes:
            m.training = training


@dataclass
class Batch:
    """A batch of patches: (B, C, h, w) float32 images, (B, h', w') classes and loss weights."""

    images: np.ndarray
    classes: np.ndarray
    weights: np.ndarray


class Optimiser:
    """AdamW on ``net``'s parameters, one :meth:`step` per batch (fp16 runs through a GradScaler)."""

    def __init__(
        self, net: torch.nn.Module, lr: float, weight_decay: float, device: torch.device,
        amp_dtype: torch.dtype | None = None,
    ) -> None:
        self.net = net
        self.device = device
        self.amp_dtype = amp_dtype
        self.optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
        self.scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
        #: the batch runs in this many parts (more after running out of memory: see :meth:`step`)
        self.parts = 1
        #: what to tell the user once the batch was split, taken by :meth:`take_note`
        self.note: str | None = None

    def take_note(self) -> str | None:
        """The note of a batch split since the last call (None: none), said once."""
        note, self.note = self.note, None
        return note

    def step(self, batch: Batch, lr: float, step: int) -> float:
        """One update at learning rate ``lr``; returns the batch loss.

        When the device runs out of memory, the batch is run again in twice as many parts (from then
        on), their gradients summed before the one update: the same step, in more passes (a GPU
        shared with another program, a laptop's memory; only BatchNorm's statistics see smaller
        batches). :attr:`note` says so once.

        Raises
        ------
        FloatingPointError
            The loss is not finite (``step`` names the step in the message).
        torch.OutOfMemoryError, RuntimeError
            Out of memory with one patch at a time.
        """
        from .device import device_lock, empty_cache
        from .predict import _is_oom

        size = len(batch.images)
        while True:
            try:
                with device_lock(self.device):  # (Apple's GPU: one thread at a time; Segment may run meanwhile)
                    return self._step(batch, lr, step)
            except (torch.OutOfMemoryError, RuntimeError) as exc:
                if not _is_oom(exc) or self.parts >= size:
                    raise
            self.optimizer.zero_grad(set_to_none=True)  # (outside the except: its traceback held the tensors)
            if self.scaler is not None:  # (out of memory after unscaling the gradients: a scaler afresh, same scale)
                self.scaler = torch.amp.GradScaler("cuda", init_scale=self.scaler.get_scale())
            empty_cache(self.device)
            self.parts = min(self.parts * 2, size)
            at_a_time = -(-size // self.parts)
            log.warning("Out of memory at step %d: the batch of %d patches runs %d at a time.", step, size, at_a_time)
            self.note = (f"The {'computer' if self.device.type == 'cpu' else 'GPU'} ran out of memory with {size} "
                         f"patches at a time: training goes on with {at_a_time} at a time (the same steps, slower).")

    def _step(self, batch: Batch, lr: float, step: int) -> float:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        size = len(batch.images)
        # the loss of the whole batch, in parts: each part's weighted sum over the batch's weights
        total = None if self.parts == 1 else torch.from_numpy(batch.weights).sum().clamp_min(1e-6).item()
        value = 0.0
        for start in range(0, size, -(-size // self.parts)):
            part = slice(start, start + -(-size // self.parts))
            x = torch.from_numpy(batch.images[part]).to(self.device, non_blocking=True)
            # (not non_blocking: on MPS a copy made so reads its source later, and this int64 copy of the
            # classes is a temporary that nothing holds by then)
            c = torch.from_numpy(batch.classes[part].astype(np.int64)).to(self.device)
            w = torch.from_numpy(batch.weights[part]).to(self.device, non_blocking=True)
            logits = forward(self.net, x, self.amp_dtype)
            if total is None:
                loss = weighted_cross_entropy(logits, c, w)
            else:
                loss = (F.cross_entropy(logits.float(), c, reduction="none") * w).sum() / total
            value += float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(f"The training loss became {value} at step {step}; try a lower learning rate.")
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
            else:
                loss.backward()
            del x, c, w, logits, loss
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        return value
