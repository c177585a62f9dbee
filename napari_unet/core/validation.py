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
* When the validation part was held out of the training images themselves (``gate``) and
  holds at least ``MIN_VAL_OBJECTS_FOR_AP`` objects (and ``GATE_MIN_BLOCKS`` blocks), weights other than the starting ones are
  kept only if their validation loss is lower than the starting weights' by more than its noise
  (:func:`loss_gain`): a paired comparison over ``GATE_BLOCK`` px blocks of the held-out
  planes (:class:`BlockLayout`), weighted by their loss weights, whose error counts the likeness
  of neighbouring blocks. A closer fit to the corrected images alone (Usiigaci phase contrast: val loss
  -2%..+2%, AP on fields not corrected 0.77 -> 0.66) does not pass; a real gain (SIM+, EM:
  -7%..-80%) does. With fewer held-out objects the gate cannot tell (the note says so).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from statistics import NormalDist

import numpy as np
import torch

from .events import Validation
from .examples import TrainingExample, count_objects
from .instances import DEFAULT_MIN_SIZE, DEFAULT_THRESHOLD, probabilities_to_labels
from .metrics import average_precision, dice
from .model import cpu_state
from .optimise import evaluation_mode, forward, weighted_nll
from .targets import TargetRecipe
from .tiling import choose_tile_and_batch, estimate_bytes_per_pixel, mirror_pad, mirror_pad_by, plan_tiles

log = logging.getLogger(__name__)

#: With fewer held-out objects than this, the best weights are chosen by the validation
#: loss rather than by AP@0.5 (with 2 objects AP only takes the values 0, 1/3, 1/2, 2/3, 1).
MIN_VAL_OBJECTS_FOR_AP = 10
_TIE = 1e-12
#: Side (px) of the blocks of held-out planes whose losses the gate compares, pair by pair.
GATE_BLOCK = 32
#: How often, at most, a run whose steps bring no real gain should replace its starting weights
#: (one-sided), over the validations of a run: Fine-tune's default run validates 10 times after
#: the start, and the gate takes the best of them, so each is held to a tenth of that
#: (Bonferroni; consecutive weights are alike, so the run as a whole does better still).
GATE_FALSE_PASS, GATE_LOOKS = 0.025, 10
#: The gate passes weights whose loss gain over the starting weights' exceeds this many standard
#: errors (:func:`loss_gain`): 2.81. (At 2 for each validation alone, a strip of one DSB2018 colour
#: image passed once in 10, z 2.37, and the other images fell from 0.700 to 0.604.)
GATE_Z = NormalDist().inv_cdf(1 - GATE_FALSE_PASS / GATE_LOOKS)
#: With fewer blocks than this the noise cannot be estimated: the gate passes nothing.
GATE_MIN_BLOCKS = 4


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
    if margin:  # (mirrored as Segment's tiles are: an unpadded network sees them, 0.0017 apart at the edges)
        padded = mirror_pad_by(chw, (margin, in_h - h - margin), (margin, in_w - w - margin))
    else:  # (a padded network's planes are only made a valid size: as ever, or --reproduce's runs change)
        padded = np.pad(chw, ((0, 0), (0, in_h - h), (0, in_w - w)), mode="symmetric")
    return _probabilities(net, padded, device, amp_dtype)[:, :h, :w]


def _probabilities(net: torch.nn.Module, chw: np.ndarray, device: torch.device,
                   amp_dtype: torch.dtype | None) -> np.ndarray:
    from .device import device_lock

    with device_lock(device), torch.no_grad():  # (Apple's GPU: one thread at a time)
        x = torch.from_numpy(np.ascontiguousarray(chw))[None].to(device)
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


def _block_starts(n: int, block: int) -> np.ndarray:
    """Where the ``block`` px blocks along a side of ``n`` px start (a remainder under half a block
    joins the last block)."""
    edges = list(range(0, n, block))
    if len(edges) > 1 and n - edges[-1] < block / 2:
        edges.pop()
    return np.asarray(edges)


def _block_sums(values: np.ndarray, block: int) -> np.ndarray:
    """The sums of ``values`` (H, W) over its blocks (see :func:`_block_starts`), (rows, columns)."""
    ys, xs = _block_starts(values.shape[0], block), _block_starts(values.shape[1], block)
    return np.add.reduceat(np.add.reduceat(values, ys, axis=0), xs, axis=1)


def block_losses(probs: np.ndarray, classes: np.ndarray, weights: np.ndarray, block: int = GATE_BLOCK) -> np.ndarray:
    """The weighted NLL (:func:`napari_unet.core.optimise.weighted_nll`) of each ``block`` x ``block``
    px block of one plane (NaN where it holds no loss weight), in row-major order."""
    p = np.clip(probs, 1e-7, 1.0)
    nll = -np.log(np.take_along_axis(p, classes.astype(np.int64)[None], axis=0)[0])
    w = weights.astype(np.float64)
    num, den = _block_sums(nll * w, block).ravel(), _block_sums(w, block).ravel()
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


@dataclass(frozen=True, eq=False)
class BlockLayout:
    """The blocks of the held-out planes whose losses the gate pairs (:func:`block_losses`, plane after
    plane): each one's loss weight, and the pairs of neighbouring blocks (8-connected, same plane).
    The planes and their weights are fixed for a run, so every validation has the same blocks."""

    weights: np.ndarray  # (n,)
    pairs: np.ndarray  # (m, 2), i < j

    @classmethod
    def of(cls, planes: Sequence[ValPlane], block: int = GATE_BLOCK) -> BlockLayout:
        weights, pairs, offset = [], [], 0
        for vp in planes:
            sums = _block_sums(vp.weights.astype(np.float64), block)
            ny, nx = sums.shape
            index = offset + np.arange(ny * nx).reshape(ny, nx)
            for a, b in ((index[:, :-1], index[:, 1:]), (index[:-1, :], index[1:, :]),
                         (index[:-1, :-1], index[1:, 1:]), (index[:-1, 1:], index[1:, :-1])):
                pairs.append(np.stack([a.ravel(), b.ravel()], axis=1))
            weights.append(sums.ravel())
            offset += ny * nx
        return cls(np.concatenate(weights) if weights else np.zeros(0),
                   np.concatenate(pairs).astype(np.int64) if pairs else np.zeros((0, 2), np.int64))

    @property
    def n_blocks(self) -> int:
        """The blocks that hold loss weight."""
        return int(np.count_nonzero(self.weights > 0))


def loss_gain(start: Sequence[float] | None, blocks: Sequence[float] | None,
              layout: BlockLayout | None = None) -> tuple[float, float, int] | None:
    """Paired comparison of two weights' block losses (:func:`block_losses`, same blocks): (gain of
    ``blocks`` over ``start``, its standard error, number of blocks); None when not measured.

    The gain is the mean of the differences weighted by the blocks' loss weights (``layout``; equal
    without one): the fall of the loss pooled over the held-out planes (for one plane, of its
    validation loss; ``Scores.loss`` is the mean of the planes' own). Its standard error counts the covariance of
    neighbouring blocks too (a cell across two blocks makes their differences alike: on phase
    contrast, 0.13-0.46 correlated, and the plain error 20-30% too small), never less than the plain one.
    """
    if start is None or blocks is None or len(start) != len(blocks):
        return None
    a, b = np.asarray(start, dtype=float), np.asarray(blocks, dtype=float)
    if layout is not None and layout.weights.size != a.size:
        layout = None  # (not these blocks' layout: equal weights, no neighbours)
    w = np.ones(a.size) if layout is None else layout.weights.astype(float)
    ok = np.isfinite(a) & np.isfinite(b) & (w > 0)
    n = int(np.count_nonzero(ok))
    if n == 0:
        return 0.0, math.inf, 0
    w = np.where(ok, w, 0.0)
    d = np.where(ok, a - b, 0.0)
    mean = float((w * d).sum() / w.sum())
    if n < 2:
        return mean, math.inf, n
    u = w * np.where(ok, d - mean, 0.0) / w.sum()  # each block's share of the deviation of the mean
    plain = float((u ** 2).sum())
    cross = 0.0
    if layout is not None and layout.pairs.size:
        cross = 2.0 * float((u[layout.pairs[:, 0]] * u[layout.pairs[:, 1]]).sum())
    var = max(plain, plain + cross) * n / (n - 1)
    return mean, math.sqrt(var), n


def passes_gate(gain: tuple[float, float, int] | None) -> bool:
    """Whether a :func:`loss_gain` is a gain beyond the noise (see :data:`GATE_Z`)."""
    if gain is None:
        return False
    mean, se, n = gain
    return n >= GATE_MIN_BLOCKS and math.isfinite(se) and mean > GATE_Z * se and mean > 0


@dataclass(frozen=True)
class Scores:
    """Validation scores of the weights after ``step`` steps (None: not measured); ``blocks``: the
    loss of each block of the held-out planes (:func:`block_losses`), for the gate."""

    step: int
    ap50: float | None = None
    dice: float | None = None
    loss: float | None = None
    blocks: tuple[float, ...] | None = None


class ValidationStopped(Exception):
    """A validation dropped before its end (``should_stop`` of :func:`score_planes`)."""


def score_planes(
    net: torch.nn.Module, planes: Sequence[ValPlane], device: torch.device, amp_dtype: torch.dtype | None,
    representation: str, step: int, with_blocks: bool = False, setting: tuple[float, int, int] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Scores:
    """Mean AP@0.5, Dice and loss of ``net`` (as it is: callers set eval mode) over ``planes``
    (and the losses per block, ``with_blocks``); objects made with ``setting`` (threshold, minimum
    size, smallest seed: pixels of the planes), None: :func:`probabilities_to_labels`' defaults.
    ``should_stop()`` true before a plane: :class:`ValidationStopped` (a scheduler's kill follows a
    SIGTERM within seconds, and a validation of many held-out images took longer)."""
    aps, dices, losses, blocks = [], [], [], []
    threshold, min_size, min_seed = setting or (DEFAULT_THRESHOLD, DEFAULT_MIN_SIZE, 0)
    for vp in planes:
        if should_stop is not None and should_stop():
            raise ValidationStopped
        probs = forward_plane(net, vp.image, device, amp_dtype)
        pred = where_known(probabilities_to_labels(probs, threshold, min_size, representation, min_seed), vp.known)
        aps.append(average_precision(vp.labels, pred, 0.5))
        dices.append(dice(vp.labels, pred) if vp.known is None else dice(vp.labels[vp.known], pred[vp.known]))
        losses.append(weighted_nll(probs, vp.classes, vp.weights))
        if with_blocks:
            blocks.extend(block_losses(probs, vp.classes, vp.weights).tolist())
    return Scores(step, float(np.mean(aps)), float(np.mean(dices)), float(np.mean(losses)),
                  tuple(blocks) if with_blocks else None)


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
    #: Weights other than the starting ones must beat their validation loss beyond its noise
    #: (see the module docs): for a validation part held out of the training images themselves.
    gate: bool = False

    @classmethod
    def for_validation(cls, select: str, n_planes: int, n_objects: int, held_out_of_training: bool = False,
                       from_scratch: bool = False) -> SelectionRule:
        """The rule for a run asked to keep ``select`` weights, validated on ``n_planes`` holding
        ``n_objects`` (``held_out_of_training``: taken from the training images, not given apart;
        ``from_scratch``: no starting model to compare the new weights with)."""
        rule = cls._for_validation(select, n_planes, n_objects)
        if not held_out_of_training or rule.select != "best":
            return rule
        if rule.metric == "ap50":
            return replace(rule, gate=True)
        if from_scratch:  # (no starting model: nothing that the note's comparison could be about)
            return rule
        # too few held-out cells for the gate to tell a gain from noise (C2C12 from `nuclei`, 2 cells:
        # AP 0.08 -> 0.22 on other frames, gain z 1.8; from `cells`, 2 cells: 0.50 -> 0.47, z 1.7): the
        # best loss is kept, and the note says that whether it beats the start elsewhere is not known
        return replace(rule, note=(
            f"{rule.note}; held out of the corrected images, they are too few to tell whether the new weights "
            f"do better than the starting model on other images (correct more cells: {MIN_VAL_OBJECTS_FOR_AP} "
            f"held out takes about {5 * MIN_VAL_OBJECTS_FOR_AP}, a fifth being held out; or check the new model "
            "on an image you did not correct)"))

    @classmethod
    def _for_validation(cls, select: str, n_planes: int, n_objects: int) -> SelectionRule:
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

    def __init__(self, rule: SelectionRule, layout: BlockLayout | None = None) -> None:
        self.rule = rule
        #: The held-out planes' blocks, for the gate (:func:`loss_gain`; None: equal weights, no neighbours).
        self.layout = layout
        self.best: Scores | None = None
        self.latest: Scores | None = None
        self.history: list[dict[str, float]] = []
        self._state: dict[str, torch.Tensor] | None = None
        #: The starting weights' scores (with their block losses) when the rule has a gate.
        self.start: Scores | None = None
        #: Whether the gate alone kept the weights last recorded from being the best.
        self.held_back = False
        #: The best of the weights the gate held back, under the rule, and their scores: offered to
        #: the user when the start is kept (Fine-tune's "Keep the trained weights"). Not kept across
        #: a resumed run (:mod:`napari_unet.core.resume`: its legs validate on their own images).
        self.held: Scores | None = None
        self._held_state: dict[str, torch.Tensor] | None = None

    def record(self, scores: Scores, net: torch.nn.Module) -> bool:
        """Note the scores of ``net``'s current weights (copied when they are the best); True if best."""
        entry = {k: v for k, v in asdict(scores).items() if k != "blocks"}
        # weights whose validation loss is not finite (diverged) are never the best, even the first ones
        allowed = scores.loss is None or math.isfinite(scores.loss)
        gate_ok = True
        if self.rule.gate:
            if scores.step == 0 and self.start is None:
                self.start = scores
            elif self.start is not None:
                gain = loss_gain(self.start.blocks, scores.blocks, self.layout)
                if gain is not None:
                    # (no spread with under two blocks: None, the metadata being written as JSON)
                    entry.update(loss_gain=gain[0], loss_gain_se=gain[1] if math.isfinite(gain[1]) else None,
                                 loss_gain_blocks=gain[2])
                gate_ok = passes_gate(gain)
                entry["passes_gate"] = gate_ok
        better = allowed and self.rule.improves(scores, self.best)
        improved = better and gate_ok
        self.held_back = better and not gate_ok
        if self.held_back:  # (the gate alone kept these weights out: what gate_note reports)
            entry["held_back"] = True
            if self.held is None or self.rule.improves(scores, self.held):
                self._held_state = cpu_state(net)
                self.held = scores
        if improved:  # (copied first: a copy that fails leaves the best and its weights as they were)
            self._state = cpu_state(net)
            self.best = scores
        self.latest = scores
        self.history.append(entry)
        return improved

    @property
    def best_state(self) -> dict[str, torch.Tensor] | None:
        """The best weights recorded (on the CPU), or None."""
        return self._state

    @property
    def gate_kept_start(self) -> bool:
        """Whether the starting weights are kept because the gate held back steps the rule would
        have taken (not because no step did better)."""
        return (self.rule.gate and self.start is not None and self.best is not None and self.best.step == 0
                and any(h.get("held_back") for h in self.history))

    def gate_note(self, base_name: str) -> str | None:
        """Why the starting weights were kept, when the gate held later steps back (None otherwise)."""
        if not self.gate_kept_start:
            return None
        measured = [h for h in self.history
                    if h.get("held_back") and h.get("loss_gain_se") and h.get("loss_gain_blocks", 0) >= GATE_MIN_BLOCKS]
        if not measured:
            return (f"no clear gain over {base_name!r} on the held-out part: too small a part to tell a gain "
                    "from the noise, so the starting weights were kept")
        top = max(measured, key=lambda h: h["loss_gain"] / h["loss_gain_se"])
        return (f"no clear gain over {base_name!r} on the held-out part: the steps that scored higher there did not "
                f"lower its validation loss by more than the noise ({GATE_Z:.1f} standard errors over "
                f"{top['loss_gain_blocks']} blocks of {GATE_BLOCK} px; closest: step {top['step']}, "
                f"{top['loss_gain']:+.4f}, standard error {top['loss_gain_se']:.4f}), so the starting weights "
                "were kept")

    def held_back_state(self) -> dict[str, torch.Tensor] | None:
        """The best weights the gate held back, when it kept the start for them (None otherwise)."""
        return self._held_state if self.gate_kept_start else None

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
        amp_dtype: torch.dtype | None, representation: str, setting: tuple[float, int, int] | None = None,
        start_setting: tuple[float, int, int] | None = None,
    ) -> None:
        self.planes = list(planes)
        # (see score_planes: objects made as the trained model will make them; the starting weights' (step
        # 0), kept, are saved with the base's setting: scored with it, ``start_setting``, when given)
        self.setting = setting
        self.start_setting = start_setting if start_setting is not None else setting
        self.tracker = tracker
        self.device = device
        self.amp_dtype = amp_dtype
        self.representation = representation

    def __call__(self, net: torch.nn.Module, step: int, should_stop: Callable[[], bool] | None = None) -> Validation:
        """Score ``net`` (in eval mode, its modes restored after) and record it; the event to report.
        ``should_stop``: see :func:`score_planes` (nothing is recorded then)."""
        with evaluation_mode(net):
            scores = score_planes(net, self.planes, self.device, self.amp_dtype, self.representation, step,
                                  with_blocks=self.tracker.rule.gate,
                                  setting=self.start_setting if step == 0 else self.setting, should_stop=should_stop)
        improved = self.tracker.record(scores, net)
        best = self.tracker.best
        return Validation(step=step, ap50=scores.ap50, dice=scores.dice, loss=scores.loss, is_best=improved,
                          best_ap50=best.ap50 if best is not None else -1.0, held_back=self.tracker.held_back)


def describe_selection(training: dict) -> str:
    """How the weights of a trained model were chosen, in words, from its ``metadata["training"]``."""
    n = len(training.get("history") or [])
    if training.get("selected", "best") != "best":
        return f"latest weights ({n} validations)"
    metric = "val loss" if training.get("selection_metric") == "loss" else "val AP@0.5"
    return f"best {metric} among {n} validations"
