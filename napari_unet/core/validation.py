"""Validation during training: scores on held-out planes, and which weights to keep.

* :func:`validation_planes` prepares the held-out planes (see
  :func:`napari_unet.core.examples.split_examples`) with their loss targets.
* :func:`score_planes` segments each whole plane the way prediction does
  (:func:`napari_unet.core.instances.probabilities_to_labels`) and scores it:
  AP@0.5 (:func:`napari_unet.core.metrics.average_precision`), foreground Dice
  (:func:`napari_unet.core.metrics.dice`) and the training loss
  (:func:`napari_unet.core.optimise.weighted_nll`), each a mean over the planes.
* :class:`SelectionRule` says how weights are compared: by AP@0.5, ties broken by the
  loss; by the loss alone with fewer than ``MIN_VAL_OBJECTS_FOR_AP`` held-out objects
  (AP over a handful of objects is mostly noise); not at all, the latest weights being
  kept, when the held-out part holds no object.
* :class:`BestWeights` keeps the best weights so far under that rule, the latest scores
  and the history; :class:`Validator` runs one validation and records it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from .events import Validation
from .examples import TrainingExample, count_objects
from .instances import probabilities_to_labels
from .metrics import average_precision, dice
from .optimise import evaluation_mode, forward, weighted_nll
from .targets import TargetRecipe
from .tiling import choose_tile_and_batch, estimate_bytes_per_pixel, mirror_pad, plan_tiles

log = logging.getLogger(__name__)

#: With fewer held-out objects than this, the best weights are chosen by the validation
#: loss rather than by AP@0.5 (with 2 objects AP only takes the values 0, 1/3, 1/2, 2/3, 1).
MIN_VAL_OBJECTS_FOR_AP = 10
_TIE = 1e-12


@dataclass
class ValPlane:
    """A held-out plane: (C, H, W) image, (H, W) labels, its loss targets, and the pixels whose
    class is known (None: all; see :mod:`napari_unet.core.partial`)."""

    image: np.ndarray
    labels: np.ndarray
    classes: np.ndarray
    weights: np.ndarray
    source: int
    known: np.ndarray | None = None


def validation_planes(examples: Sequence[TrainingExample], targets: TargetRecipe) -> list[ValPlane]:
    """The held-out examples with their (classes, weights) targets (those where nothing is known left out)."""
    return [ValPlane(e.image, e.labels, *targets(e.labels, e.known), e.source, e.known) for e in examples
            if e.known is None or e.known.any()]


def where_known(pred: np.ndarray, known: np.ndarray | None) -> np.ndarray:
    """Predicted objects that lie mostly where the class is known (the others are left out of
    the scores: nobody said whether they are cells); all of them when every pixel is known."""
    if known is None:
        return pred
    total = np.bincount(pred.ravel())
    inside = np.bincount(pred[known].ravel(), minlength=total.size)
    keep = 2 * inside > total
    keep[0] = True
    return np.where(keep[pred], pred, 0)


def count_held_out_objects(planes: Sequence[ValPlane]) -> int:
    """Objects in all held-out planes together."""
    return sum(count_objects(vp.labels) for vp in planes)


def forward_plane(
    net: torch.nn.Module, chw: np.ndarray, device: torch.device, amp_dtype: torch.dtype | None = None,
    budget: int | None = None,
) -> np.ndarray:
    """Class probabilities of one whole (C, H, W) plane: in one pass (mirror-padded to a valid
    size) when its activations fit the device's memory budget (``budget`` bytes; None: the
    engine's), else tile by tile as prediction does (a 4096 px plane in one pass needs ~9 GB).

    Returns
    -------
    ndarray
        (n_classes, H, W) float32 softmax probabilities.
    """
    c, h, w = chw.shape
    margin = net.margin
    th = net.output_size(net.valid_input_size(h + 2 * margin)) if margin else net.valid_input_size(h)
    tw = net.output_size(net.valid_input_size(w + 2 * margin)) if margin else net.valid_input_size(w)
    # output covers [0, th) x [0, tw) >= image; input needs margin more on each side
    in_h, in_w = th + 2 * margin, tw + 2 * margin
    from .predict import activation_budget

    budget = activation_budget(device) if budget is None else int(budget)
    bytes_per_value = 4 if amp_dtype is None else 2
    if in_h * in_w * estimate_bytes_per_pixel(net, bytes_per_value) > budget:
        return _forward_tiles(net, chw, device, amp_dtype, choose_tile_and_batch(net, budget, bytes_per_value)[0])
    padded = np.pad(chw, ((0, 0), (margin, in_h - h - margin), (margin, in_w - w - margin)), mode="symmetric")
    return _probabilities(net, padded, device, amp_dtype)[:, :h, :w]


def _probabilities(net: torch.nn.Module, chw: np.ndarray, device: torch.device,
                   amp_dtype: torch.dtype | None) -> np.ndarray:
    x = torch.from_numpy(np.ascontiguousarray(chw))[None].to(device)
    with torch.no_grad():
        logits = forward(net, x, amp_dtype)
        return torch.softmax(logits.float(), dim=1)[0].cpu().numpy()


def _forward_tiles(net: torch.nn.Module, chw: np.ndarray, device: torch.device, amp_dtype: torch.dtype | None,
                   max_tile: int) -> np.ndarray:
    plan = plan_tiles(chw.shape[1:], net, max_tile)
    padded = mirror_pad(chw, plan)
    ty, tx = plan.tile_shape
    out = np.empty((net.config.n_classes, *chw.shape[1:]), dtype=np.float32)
    for (y, x), window, kept in plan.placements():
        out[(slice(None), *window)] = _probabilities(net, padded[:, y : y + ty, x : x + tx], device,
                                                     amp_dtype)[(slice(None), *kept)]
    return out


@dataclass(frozen=True)
class Scores:
    """Validation scores of the weights after ``step`` steps (None: not measured)."""

    step: int
    ap50: float | None = None
    dice: float | None = None
    loss: float | None = None


def score_planes(
    net: torch.nn.Module, planes: Sequence[ValPlane], device: torch.device, amp_dtype: torch.dtype | None,
    representation: str, step: int,
) -> Scores:
    """Mean AP@0.5, Dice and loss of ``net`` (as it is: callers set eval mode) over ``planes``."""
    aps, dices, losses = [], [], []
    for vp in planes:
        probs = forward_plane(net, vp.image, device, amp_dtype)
        pred = where_known(probabilities_to_labels(probs, representation=representation), vp.known)
        aps.append(average_precision(vp.labels, pred, 0.5))
        dices.append(dice(vp.labels, pred) if vp.known is None else dice(vp.labels[vp.known], pred[vp.known]))
        losses.append(weighted_nll(probs, vp.classes, vp.weights))
    return Scores(step, float(np.mean(aps)), float(np.mean(dices)), float(np.mean(losses)))


@dataclass(frozen=True)
class SelectionRule:
    """Which weights a run returns: ``select`` "best" (by ``metric``) or "latest"; ``note`` says why, if it matters."""

    select: str = "best"
    metric: str = "ap50"  # "ap50" (ties: lower loss) or "loss"
    note: str | None = None
    #: An AP gain smaller than this is noise unless the loss agrees: one held-out object's worth
    #: (1 / their number). With 15 held-out cells of one field, one cell more kept weights whose
    #: loss had risen and that did worse on the user's other fields (Usiigaci: 0.745 -> 0.647).
    ap_margin: float = 0.0

    @classmethod
    def for_validation(cls, select: str, n_planes: int, n_objects: int) -> SelectionRule:
        """The rule for a run asked to keep ``select`` weights, validated on ``n_planes`` holding ``n_objects``."""
        if not n_planes:
            return cls("latest")  # nothing to choose by: the weights returned are the last ones
        if select != "best":
            return cls(select)
        if n_objects == 0:
            note = "the validation part holds no object, so the latest weights were kept"
            log.warning("Fine-tuning: %s.", note)
            return cls("latest", note=note)
        if n_objects < MIN_VAL_OBJECTS_FOR_AP:
            return cls("best", "loss", (
                f"the validation part holds only {n_objects} object(s), so the best weights were chosen "
                "by the validation loss (AP over so few objects moves in big, noisy steps)"
            ))
        return cls("best", ap_margin=1.0 / n_objects)

    def improves(self, scores: Scores, best: Scores | None) -> bool:
        """Whether ``scores`` beat ``best`` (None: nothing yet) under this rule: by the loss, or by
        AP (by more than :attr:`ap_margin`; a smaller gain, or a tie, counts when the loss is
        lower too)."""
        best_ap = -1.0 if best is None else best.ap50
        best_loss = math.inf if best is None else best.loss
        if self.metric == "loss":
            return scores.loss < best_loss - _TIE
        margin = max(self.ap_margin, _TIE)
        return scores.ap50 > best_ap + margin or (scores.ap50 >= best_ap - _TIE and scores.loss < best_loss)

    @property
    def recorded_metric(self) -> str | None:
        """The metric that chose the returned weights (None when the latest are returned)."""
        return self.metric if self.select == "best" else None


class BestWeights:
    """The best weights seen so far under a :class:`SelectionRule`, the latest scores and the history."""

    def __init__(self, rule: SelectionRule) -> None:
        self.rule = rule
        self.best: Scores | None = None
        self.latest: Scores | None = None
        self.history: list[dict[str, float]] = []
        self._state: dict[str, torch.Tensor] | None = None

    def record(self, scores: Scores, net: torch.nn.Module) -> bool:
        """Note the scores of ``net``'s current weights (copied when they are the best); True if best."""
        # weights whose validation loss is not finite (diverged) are never the best, even the first ones
        improved = (scores.loss is None or math.isfinite(scores.loss)) and self.rule.improves(scores, self.best)
        if improved:  # (copied first: a copy that fails leaves the best and its weights as they were)
            self._state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
            self.best = scores
        self.latest = scores
        self.history.append(asdict(scores))
        return improved

    def keep(self, net: torch.nn.Module, final_step: int) -> Scores:
        """Load the weights the rule keeps into ``net`` (the best, or leave the latest); their scores."""
        if self.rule.select == "best" and self._state is not None:
            net.load_state_dict(self._state)
            return self.best  # type: ignore[return-value]
        if self.latest is not None and self.latest.step == final_step:
            return self.latest
        return Scores(final_step)


class Validator:
    """One validation of a network on held-out planes, recorded in a :class:`BestWeights`."""

    def __init__(
        self, planes: Sequence[ValPlane], tracker: BestWeights, device: torch.device,
        amp_dtype: torch.dtype | None, representation: str,
    ) -> None:
        self.planes = list(planes)
        self.tracker = tracker
        self.device = device
        self.amp_dtype = amp_dtype
        self.representation = representation

    def __call__(self, net: torch.nn.Module, step: int) -> Validation:
        """Score ``net`` (in eval mode, its modes restored after) and record it; the event to report."""
        with evaluation_mode(net):
            scores = score_planes(net, self.planes, self.device, self.amp_dtype, self.representation, step)
        improved = self.tracker.record(scores, net)
        best = self.tracker.best
        return Validation(step=step, ap50=scores.ap50, dice=scores.dice, loss=scores.loss, is_best=improved,
                          best_ap50=best.ap50 if best is not None else -1.0)


def describe_selection(training: dict) -> str:
    """How the weights of a trained model were chosen, in words, from its ``metadata["training"]``."""
    n = len(training.get("history") or [])
    if training.get("selected", "best") != "best":
        return f"latest weights ({n} validations)"
    metric = "val loss" if training.get("selection_metric") == "loss" else "val AP@0.5"
    return f"best {metric} among {n} validations"
