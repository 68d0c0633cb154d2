"""Pseudo-labels as data: their files, their quality report, and the pool specs they are made on.

A trained model labels an unlabeled pool (Yang & Xu, NeurIPS 2020; :mod:`longtail.semi.pseudo` does the labeling).

The reference labels the pool once, by argmax, with no threshold; an optional confidence
threshold keeps only rows whose top softmax probability is at least ``threshold``. Every row's
label and confidence are saved, so training can raise the threshold later
(``data.pseudo_threshold``) without labeling again.

A pseudo-label folder (``longtail pseudo-label RUN --pool SPEC --out DIR``) holds::

    pseudo_labels.pt    labels, confidence, source_index (pool rows), threshold, pool spec, class names
    pseudo_labels.json  the pool spec (with the labeling run's data settings) and the quality report
    pseudo_labels.md    the report as a table: per class, kept and (with hidden labels) precision/recall

The pool is not copied: training rebuilds it from the spec and the saved ``source_index``
(:func:`longtail.data.semi.rebuild_pool`), so it gets exactly the images that were labeled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import LongtailError
from ..storage import atomic_write_bytes, atomic_write_text, load_file
from .pools import UnlabeledSet

FORMAT = "longtail-pseudo-labels"
VERSION = 1
POOL_KINDS = ("unused", "rest", "darp", "folder")


@dataclass(frozen=True)
class PseudoLabels:
    """One pseudo-label per pool row: ``labels`` (N,) int64 argmax class, ``confidence`` (N,) float32
    top softmax probability, ``source_index`` (N,) the pool's rows in its source, ``kept`` (N,) bool
    ``confidence >= threshold``.
    """

    labels: Tensor
    confidence: Tensor
    source_index: Tensor
    threshold: float = 0.0
    kept: Tensor | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise LongtailError(f"the pseudo-label threshold must lie in [0, 1], got {self.threshold}",
                                "it is a softmax probability; 0 keeps every pseudo-label (the reference)")
        n = self.labels.numel()
        if self.confidence.shape != (n,) or self.source_index.shape != (n,):
            raise LongtailError(f"pseudo-labels: {n} labels but {self.confidence.numel()} confidences and "
                                f"{self.source_index.numel()} source indices")
        object.__setattr__(self, "kept", self.confidence >= self.threshold)

    def __len__(self) -> int:
        return self.labels.numel()

    def rethreshold(self, threshold: float) -> "PseudoLabels":
        """The same labels with another threshold."""
        return replace(self, threshold=float(threshold), kept=None)


def _ratio(num: int, den: int) -> float | None:
    return None if den == 0 else num / den


def pseudo_label_report(pl: PseudoLabels, pool: UnlabeledSet | None = None, num_classes: int | None = None,
                        class_names: tuple[str, ...] | None = None) -> dict[str, Any]:
    """What was kept per class and, when the pool has hidden labels, how good the labels are.

    Per class ``c``: ``kept`` pseudo-labels of ``c`` (what training sees); with true labels
    ``true`` images of ``c`` in the pool, ``precision = correct_c / kept_c`` and
    ``recall = correct_c / true_c`` (over the whole pool, so a threshold's cost shows), ``None``
    when undefined. ``accuracy``: correct / kept over the kept rows; ``mean_recall`` over the
    classes present in the pool.
    """
    if class_names is None:
        class_names = pool.class_names if pool is not None else tuple(str(c) for c in range(num_classes or 0))
    C = num_classes if num_classes is not None else len(class_names)
    kept = pl.kept  # (N,) bool
    pred = pl.labels
    kept_counts = torch.bincount(pred[kept], minlength=C).tolist()
    report: dict[str, Any] = {
        "pool_size": len(pl), "kept": int(kept.sum()), "threshold": pl.threshold,  # type: ignore[union-attr]
        "coverage": _ratio(int(kept.sum()), len(pl)), "kept_counts": kept_counts,  # type: ignore[union-attr]
        "true_counts": None, "accuracy": None, "mean_recall": None,
    }
    truth = pool.hidden_labels.cpu() if pool is not None and pool.hidden_labels is not None else None
    per_class = [{"class": class_names[c], "kept": kept_counts[c], "true": None, "precision": None, "recall": None}
                 for c in range(C)]
    if truth is not None:
        if truth.shape != pred.shape:
            raise LongtailError(f"{len(pl)} pseudo-labels for a pool of {truth.numel()} images")
        correct = kept & (pred == truth)  # type: ignore[operator]
        true_counts = torch.bincount(truth, minlength=C).tolist()
        correct_c = torch.bincount(truth[correct], minlength=C).tolist()
        for c in range(C):
            per_class[c].update(true=true_counts[c], precision=_ratio(correct_c[c], kept_counts[c]),
                                recall=_ratio(correct_c[c], true_counts[c]))
        recalls = [r["recall"] for r in per_class if r["recall"] is not None]
        n_kept = int(kept.sum())  # type: ignore[union-attr]
        report.update(true_counts=true_counts, accuracy=_ratio(int(correct.sum()), n_kept),
                      mean_recall=sum(recalls) / len(recalls) if recalls else None)
    report["per_class"] = per_class
    return report


# files --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SavedPseudoLabels:
    """The content of a pseudo-label folder."""

    labels: PseudoLabels
    pool_spec: dict[str, Any]
    class_names: tuple[str, ...]
    files: tuple[str, ...] | None = None  # a folder pool's files, one per source row


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def report_markdown(report: dict[str, Any], pool_spec: dict[str, Any]) -> str:
    lines = [
        "# Pseudo-labels", "",
        f"- pool: `{describe_pool_spec(pool_spec)}` ({report['pool_size']} images)",
        f"- threshold: {report['threshold']:g}; kept {report['kept']} ({_fmt(report['coverage'])} %)",
    ]
    if pool_spec.get("run"):
        lines.append(f"- labeled by: `{pool_spec['run']}`")
    if pool_spec.get("shrunk"):
        lines.append(f"- the source was too small for {pool_spec['requested_size']} images: the largest pool with "
                     f"the same profile has {pool_spec['size']}")
    if report["accuracy"] is not None:
        lines.append(f"- accuracy of the kept pseudo-labels: {_fmt(report['accuracy'])} %; "
                     f"mean per-class recall {_fmt(report['mean_recall'])} %")
    else:
        lines.append("- no true labels (a folder of images): quality unknown")
    lines += ["", "| class | true | kept | precision % | recall % |", "|---|---:|---:|---:|---:|"]
    for r in report["per_class"]:
        true = "-" if r["true"] is None else str(r["true"])
        lines.append(f"| {r['class']} | {true} | {r['kept']} | {_fmt(r['precision'])} | {_fmt(r['recall'])} |")
    return "\n".join(lines) + "\n"


def save_pseudo_labels(out: str | Path, pl: PseudoLabels, pool_spec: dict[str, Any], report: dict[str, Any], *,
                       class_names: tuple[str, ...], files: tuple[str, ...] | None = None) -> Path:
    """Write ``pseudo_labels.pt`` / ``.json`` / ``.md`` into ``out`` (each atomically); returns ``out``."""
    out = Path(out)
    state = {"format": FORMAT, "format_version": VERSION, "labels": pl.labels.cpu(),
             "confidence": pl.confidence.cpu(), "source_index": pl.source_index.cpu(), "threshold": pl.threshold,
             "pool_spec": pool_spec, "class_names": list(class_names), "files": list(files) if files else None}
    atomic_write_bytes(out / "pseudo_labels.pt", lambda f: torch.save(state, f))
    atomic_write_text(out / "pseudo_labels.json", json.dumps({"pool": pool_spec, "report": report}, indent=2) + "\n")
    atomic_write_text(out / "pseudo_labels.md", report_markdown(report, pool_spec))
    return out


def load_pseudo_labels(path: str | Path) -> SavedPseudoLabels:
    """Read a folder written by :func:`save_pseudo_labels` (or its ``pseudo_labels.pt``)."""
    p = Path(path)
    f = p / "pseudo_labels.pt" if p.is_dir() else p
    if not f.is_file():
        raise LongtailError(f"no pseudo-labels at {p}",
                            "make them first: longtail pseudo-label RUN --pool SPEC --out DIR, then set "
                            "data.pseudo_labels=DIR")
    state = load_file(f, what="pseudo-label file", fix="run `longtail pseudo-label` again")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise LongtailError(f"{f} is not a longtail pseudo-label file",
                            "pass a folder written by `longtail pseudo-label`")
    if state.get("format_version", 0) > VERSION:
        raise LongtailError(f"{f} was written by a newer longtail", "upgrade longtail to read it")
    pl = PseudoLabels(state["labels"].long(), state["confidence"].float(), state["source_index"].long(),
                      float(state["threshold"]))
    files = tuple(state["files"]) if state.get("files") else None
    return SavedPseudoLabels(pl, dict(state["pool_spec"]), tuple(state["class_names"]), files)


# pool specs ----------------------------------------------------------------------------------------

_SPEC_KEYS = {"unused": {"rho_u": float, "factor": float, "seed": int}, "rest": {}, "darp": {}, "folder": {}}


def parse_pool_spec(text: str) -> dict[str, Any]:
    """A command-line pool description as a dict.

    ``unused:rho_u=..,factor=..,seed=..``: the reference pool (:func:`longtail.data.pools.unused_pool`);
    ``rest``: every source image the labeled data left (:func:`longtail.data.pools.rest_pool`, no
    settings); ``darp``: the DARP protocol's unlabeled part; ``folder:PATH``: a folder of images.

    >>> parse_pool_spec("unused:rho_u=100,factor=5")
    {'kind': 'unused', 'rho_u': 100.0, 'factor': 5.0}
    >>> parse_pool_spec("rest"), parse_pool_spec("darp"), parse_pool_spec("folder:/data/my images")
    ({'kind': 'rest'}, {'kind': 'darp'}, {'kind': 'folder', 'path': '/data/my images'})
    """
    kind, _, rest = text.strip().partition(":")
    kind = kind.strip().lower()
    examples = "unused:rho_u=100,factor=5 | rest | darp | folder:/path/to/images"
    if kind not in POOL_KINDS:
        raise LongtailError(f"unknown unlabeled pool {text!r}", f"use one of: {examples}")
    if kind == "folder":
        if not rest.strip():
            raise LongtailError("--pool folder needs a path", "write folder:/path/to/images")
        return {"kind": "folder", "path": rest.strip()}
    spec: dict[str, Any] = {"kind": kind}
    allowed = _SPEC_KEYS[kind]
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or key not in allowed:
            hint = (f"settings of {kind}: {', '.join(allowed)}" if allowed else
                    "rest takes no settings: it is every image the labeled data did not use" if kind == "rest" else
                    f"{kind} takes its settings from the run's config (data.darp_*)")
            raise LongtailError(f"cannot read {item!r} in pool {text!r}", hint)
        try:
            spec[key] = allowed[key](value)
        except ValueError:
            kind_name = allowed[key].__name__
            raise LongtailError(f"{key}={value!r} in pool {text!r} is not a valid {kind_name}",
                                f"write {key}= a number ({kind_name}), e.g. {kind}:rho_u=100,factor=5"
                                if kind == "unused" else f"write {key}= a {kind_name}") from None
    return spec


def describe_pool_spec(spec: dict[str, Any]) -> str:
    """The inverse of :func:`parse_pool_spec` (for reports)."""
    if spec["kind"] == "folder":
        return f"folder:{spec['path']}"
    keys = [k for k in _SPEC_KEYS.get(spec["kind"], {}) if k in spec]
    return spec["kind"] + (":" + ",".join(f"{k}={spec[k]:g}" for k in keys) if keys else "")
