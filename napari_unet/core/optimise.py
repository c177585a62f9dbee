"""One optimisation step: the loss, mixed precision and the optimiser.

* The loss is the pixel-weighted cross-entropy of the paper (eq. 1): per-pixel weights
  from :func:`napari_unet.core.targets.labels_to_targets` (class balance and the border
  term). :func:`weighted_cross_entropy` takes logits (training),
  :func:`weighted_nll` the class probabilities of a whole plane (validation): the same
  number from the two ends of the network.
* Mixed precision on CUDA: bf16 autocast where supported, else fp16 with a GradScaler; on
  the CPU bf16 when asked for and the CPU has bf16 instructions.
* :class:`Optimiser`: AdamW, one step per batch at the learning rate it is given; a batch that
  does not fit the device's memory is run in parts, their gradients summed (the same step). On the
  CPU the parts are chosen before the first step from the memory free (:func:`parts_for_memory`): a
  memory limit's kill gives no error to catch.
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


#: Of the memory free, the share a training step may plan to take (the patch sampler, the
#: validation and the window share the rest).
STEP_MEMORY_SHARE = 0.7


def step_memory(net: torch.nn.Module, patch_size: int) -> tuple[int, int]:
    """Bytes a training step of ``net`` on ``patch_size`` px patches holds: per patch (twice the
    activations autograd keeps for the backward pass, counted in a forward pass on torch's meta device,
    which takes neither memory nor time; twice, for the gradients the backward pass makes beside
    them), and once (the weights' gradients and AdamW's two moments). Measured on a CPU (ru_maxrss,
    benchmarks/RESULTS.md): the built-in network at 128 px took 31 MB per patch against 37 MB told,
    the paper's at 252 px 53 MB per patch against 144 MB told."""
    from torch.func import functional_call

    state = {name: p.detach().to("meta").requires_grad_(True) for name, p in net.named_parameters()}
    state.update({name: b.to("meta") for name, b in net.named_buffers()})
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if not t.is_leaf:  # (the weights, saved by each convolution, are counted once below)
            kept[id(t)] = t.numel() * t.element_size()  # (by id: a ReLU's output is the next convolution's input)
        return t

    channels = net.config.in_channels
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = functional_call(net, state, (torch.zeros(1, channels, patch_size, patch_size, device="meta"),))
    del out
    weights = sum(p.numel() * p.element_size() for p in net.parameters())
    return 2 * sum(kept.values()), 3 * weights


def parts_for_memory(net: torch.nn.Module, patch_size: int, batch_size: int, free: int | None) -> int:
    """The fewest parts a batch of ``batch_size`` patches runs in for a step to take no more than
    :data:`STEP_MEMORY_SHARE` of ``free`` bytes (None: not known, 1 part); ``batch_size`` parts (one
    patch at a time) where even that is more."""
    if free is None or batch_size <= 1:
        return 1
    try:
        per_patch, once = step_memory(net, patch_size)
    except Exception as exc:  # noqa: BLE001 - a network the meta device cannot run: the batch as asked
        log.debug("The memory of a training step could not be told: %s", exc)
        return 1
    room = STEP_MEMORY_SHARE * free - once
    fits = int(room // per_patch) if per_patch > 0 and room > 0 else 0
    if fits >= batch_size:
        return 1
    return batch_size if fits < 1 else -(-batch_size // fits)


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

    def fit_memory(self, patch_size: int, batch_size: int, free: int | None) -> None:
        """Run each batch of ``batch_size`` patches of ``patch_size`` px in as many parts as ``free``
        bytes of memory need (:func:`parts_for_memory`; :attr:`note` says so). For the CPU: a memory
        limit (a Slurm job's, a container's, a laptop's swap-less memory) kills the process at the
        first step, before torch could raise the error :meth:`step` splits a batch on."""
        self.parts = parts_for_memory(self.net, patch_size, batch_size, free)
        if self.parts > 1 and free is not None:
            at_a_time = -(-batch_size // self.parts)
            self.note = (f"The memory free ({free / 1e9:.1f} GB) holds about {at_a_time} of the {batch_size} patches of "
                         f"a step at a time: each step runs in {self.parts} parts (the same steps, slower)"
                         + (". Training may still run out of memory: close other programs or choose smaller patches."
                            if at_a_time == 1 else "."))
            log.warning(self.note)

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
