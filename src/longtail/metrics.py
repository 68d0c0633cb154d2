"""Evaluation metrics for long-tailed classification.

Everything here is a pure function of tensors (CPU or any device) and returns plain Python
values, so a summary can be written to JSON as is. Accuracies are in percent.

Shot groups follow Liu et al. 2019 (see :mod:`longtail.counts`): a class is many-shot with more
than 100 training images, few-shot with fewer than 20, medium-shot otherwise. A group's accuracy is
the mean of its classes' accuracies; an empty group has no accuracy (``None``), never 0 %.
"""

from __future__ import annotations

import statistics
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from .counts import SHOT_GROUPS, ClassCounts
from .errors import LongtailError

#: Metrics that :func:`aggregate_seeds` reports as mean +- std over seeds.
MAX_CONFUSION_CLASSES = 1000
AGGREGATED_METRICS = ("top1", "many", "medium", "few", "balanced_accuracy", "ece", "nll")


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------
def confusion_matrix(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Confusion counts ``M[t, p] = #{i : labels_i = t and pred_i = p}``.

    ``pred``, ``labels``: (N,) integer tensors in ``0..num_classes-1``. Returns a
    (num_classes, num_classes) int64 tensor on their device; rows are true classes.
    One ``bincount`` over ``t * C + p`` instead of a Python loop, so it is cheap for C = 1000.
    """
    c = int(num_classes)
    flat = labels.long() * c + pred.long()
    return torch.bincount(flat, minlength=c * c).reshape(c, c)


def per_class_accuracy(confusion: torch.Tensor) -> list[float | None]:
    """Per-class accuracy in percent, ``acc_c = 100 * M[c, c] / sum_p M[c, p]``.

    ``confusion``: (C, C) counts, rows = true class. A class with no test examples has no
    accuracy and gives ``None`` (not 0, which would read as "always wrong").
    """
    support = confusion.sum(dim=1).tolist()
    hits = confusion.diagonal().tolist()
    return [None if n == 0 else 100.0 * h / n for h, n in zip(hits, support)]


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """Expected calibration error in percent (Guo et al. 2017), equal-width confidence bins.

    ``probs``: (N, C) class probabilities; ``labels``: (N,). With confidence
    ``conf_i = max_c probs[i, c]`` and bin ``b`` holding the examples with
    ``conf_i in (b/B, (b+1)/B]`` (confidence 0 goes into the first bin),

        ECE = 100 * sum_b (|b| / N) * |acc(b) - conf(b)|

    where ``acc(b)`` is the fraction of correct argmax predictions in the bin and ``conf(b)`` its
    mean confidence. 0 means perfectly calibrated.
    """
    if bins < 1:
        raise LongtailError(f"ece_bins must be >= 1, got {bins}")
    n = labels.numel()
    if n == 0:
        raise LongtailError("cannot compute a calibration error on an empty test set")
    # float64 where the device has it: sums over 10^5 examples lose digits in float32.
    dtype = torch.float32 if probs.device.type == "mps" else torch.float64
    conf, pred = probs.to(dtype).max(dim=1)
    correct = (pred == labels.to(pred.device)).to(dtype)
    # Interior edges 1/B .. (B-1)/B; right=False puts conf == edge into the lower bin, i.e. bins
    # are (lo, hi] as in Guo et al.'s reference code.
    edges = torch.linspace(0.0, 1.0, bins + 1, dtype=dtype, device=conf.device)[1:-1]
    idx = torch.bucketize(conf, edges, right=False)
    conf_sum = torch.bincount(idx, weights=conf, minlength=bins)
    acc_sum = torch.bincount(idx, weights=correct, minlength=bins)
    # |sum acc - sum conf| / N == (|b|/N) * |acc(b) - conf(b)|; empty bins contribute 0.
    return float(100.0 * (acc_sum - conf_sum).abs().sum().item() / n)


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def _validate(logits: torch.Tensor, labels: torch.Tensor, train_counts: ClassCounts,
              class_names: Sequence[str] | None) -> None:
    if logits.ndim != 2:
        raise LongtailError(f"logits must be a (N, C) tensor, got shape {tuple(logits.shape)}")
    if labels.ndim != 1:
        raise LongtailError(f"labels must be a (N,) tensor, got shape {tuple(labels.shape)}")
    n, c = logits.shape
    if labels.shape[0] != n:
        raise LongtailError(f"{n} rows of logits but {labels.shape[0]} labels",
                            "pass the logits and labels of the same test examples, in the same order")
    if n == 0:
        raise LongtailError("the test set is empty", "evaluate on at least one example")
    if c != train_counts.num_classes:
        raise LongtailError(f"logits have {c} classes but the training counts have {train_counts.num_classes}",
                            "use the ClassCounts of the training set the model was trained on")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.is_complex():
        raise LongtailError(f"labels must be integers, got {labels.dtype}")
    lo, hi = int(labels.min().item()), int(labels.max().item())
    if lo < 0 or hi >= c:
        bad = lo if lo < 0 else hi
        raise LongtailError(f"test label {bad} is out of range for {c} classes",
                            "labels must be integers in 0..num_classes-1; check the test set's class list")
    if class_names is not None and len(class_names) != c:
        raise LongtailError(f"{len(class_names)} class names for {c} classes")
    if not bool(torch.isfinite(logits).all().item()):
        raise LongtailError("the logits contain NaN or infinite values",
                            "the model diverged: lower the learning rate or check the loss for NaN")


# --------------------------------------------------------------------------------------------
# one evaluation
# --------------------------------------------------------------------------------------------
def summarize(
    logits: torch.Tensor,
    labels: torch.Tensor,
    train_counts: ClassCounts,
    *,
    class_names: Sequence[str] | None = None,
    ece_bins: int = 15,
) -> dict[str, Any]:
    """All test metrics of one model, as a JSON-serialisable dict.

    ``logits``: (N, C) raw scores; ``labels``: (N,) true classes; ``train_counts``: training-set
    size of each class (defines the shot groups). Keys (accuracies in %):

    * ``top1`` = 100 * mean_i [argmax logits_i == y_i] (the test-set mix of classes)
    * ``per_class``: C values ``100 * M[c,c] / n_c``; ``None`` for a class absent from the test set
    * ``many`` / ``medium`` / ``few``: mean of ``per_class`` over the group's classes that are
      in the test set; ``None`` when there is no such class
    * ``balanced_accuracy``: mean of ``per_class`` over the classes in the test set
    * ``confusion``: C x C ints, rows = true class, columns = prediction
    * ``nll``: mean cross-entropy ``-mean_i log softmax(logits_i)[y_i]`` (nats)
    * ``ece``: expected calibration error in % (see :func:`expected_calibration_error`)
    * ``num_test``, ``test_per_class``, ``train_counts``, ``class_names``, ``groups``
    """
    _validate(logits, labels, train_counts, class_names)
    c = logits.shape[1]
    labels = labels.to(logits.device).long()
    # float32 at least: half-precision logits would make the NLL and ECE coarse.
    scores = logits.detach().float()
    pred = scores.argmax(dim=1)

    confusion = confusion_matrix(pred, labels, c).cpu()
    per_class = per_class_accuracy(confusion)
    groups = train_counts.groups()
    n = labels.numel()
    hits = int(confusion.diagonal().sum().item())

    return {
        "top1": 100.0 * hits / n,
        "per_class": per_class,
        **{g: _mean([per_class[k] for k in groups[g]]) for g in SHOT_GROUPS},
        "balanced_accuracy": _mean(per_class),
        # C x C ints in JSON: kept up to 1,000 classes (iNaturalist's 8,142 would be 66 M numbers)
        "confusion": confusion.tolist() if confusion.shape[0] <= MAX_CONFUSION_CLASSES else None,
        "nll": float(F.cross_entropy(scores, labels).item()),
        "ece": expected_calibration_error(scores.softmax(dim=1), labels, ece_bins),
        "num_test": n,
        "test_per_class": confusion.sum(dim=1).tolist(),
        "train_counts": list(train_counts.counts),
        "class_names": list(class_names) if class_names is not None else None,
        "groups": groups,
    }


# --------------------------------------------------------------------------------------------
# several seeds
# --------------------------------------------------------------------------------------------
def rarest_mean(report: dict[str, Any], k: int) -> float | None:
    """Mean test accuracy of the ``k`` classes with the fewest training images (ties: the later class first, so the
    tail of a profile; classes without test images left out); None without per-class results."""
    counts, per = report.get("train_counts"), report.get("per_class")
    if not counts or not per:
        return None
    order = sorted(range(len(counts)), key=lambda c: (counts[c], -c))[:k]
    vals = [per[c] for c in order if per[c] is not None]
    return sum(vals) / len(vals) if vals else None


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation of the values that are not ``None``.

    ``std = sqrt(sum_k (x_k - mean)^2 / (K - 1))`` (ddof=1, the spread one expects between
    seeds); 0.0 for a single value; ``(None, None)`` when every value is ``None``.
    """
    present = [float(v) for v in values if v is not None]
    if not present:
        return None, None
    if len(present) == 1:
        return present[0], 0.0
    return statistics.fmean(present), statistics.stdev(present)


def aggregate_seeds(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """Combine :func:`summarize` outputs of the same recipe run with different seeds.

    For each of ``top1, many, medium, few, balanced_accuracy, ece, nll``:
    ``{"mean": m, "std": s, "values": [one per seed, None kept]}`` (see :func:`mean_std`).
    ``per_class`` is the per-class mean over seeds (``None`` where no seed has the class);
    ``num_seeds``, ``train_counts``, ``class_names``, ``groups`` and ``test_per_class`` are
    copied from the first summary (they must agree between seeds).
    """
    if not summaries:
        raise LongtailError("no summaries to aggregate", "pass the summaries of at least one seed")
    first = summaries[0]
    num_classes = len(first["per_class"])
    for k, s in enumerate(summaries[1:], start=1):
        if len(s["per_class"]) != num_classes or s.get("train_counts") != first.get("train_counts"):
            raise LongtailError(f"seed summary {k} is for a different data set than seed summary 0",
                                "aggregate only runs of the same data set and long-tailed subset")

    out: dict[str, Any] = {"num_seeds": len(summaries)}
    for key in AGGREGATED_METRICS:
        values = [s.get(key) for s in summaries]
        m, sd = mean_std(values)
        out[key] = {"mean": m, "std": sd, "values": values}
    out["per_class"] = [_mean([s["per_class"][c] for s in summaries]) for c in range(num_classes)]
    for key in ("train_counts", "class_names", "groups", "test_per_class"):
        out[key] = first.get(key)
    return out
