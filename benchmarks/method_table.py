"""The method table on the fast CPU protocol (issue 15): every remedy, 3 seeds, mean +- std.

    python benchmarks/method_table.py --data-root ../shared/data --out runs/table [--seeds 0 1 2]
                                      [--methods ce focal ...] [--dataset cifar10] [--device cpu] [--readme README.md]

The protocol is the fast recipe (``cifar10-lt-fast-ce``: FastNet-M, 16 epochs, one-cycle, flip TTA; see
docs/PROTOCOLS.md) with each remedy's own settings taken from its reference recipe, so no method is tuned
here: a row's settings are ``cifar10-lt-fast-ce`` plus exactly what ``cifar10-lt-METHOD`` changes against
``cifar10-lt-ce`` (the loss and its parameters, the head, the weighting and when it starts in 200-epoch units,
MFW's strength). The second stages (cRT, tau-norm, LWS, post-hoc LA, and weight balancing's stage 2) re-balance one
CE run per seed that holds out 20 validation images per class, as their recipes do, with the second-stage settings
of their sources.
The rotation-SSP rows first pre-train the fast recipe's network on the same images with rotation prediction (the
fast recipe's schedule, one pre-training per seed shared by both rows), then train CE or LA from that backbone.
Two rows use the rest of CIFAR-10 without its labels: the pool kind ``rest``, every training image the labeled
subset left (37,594, none of the head class, 4,950 of the rarest; in source order, nothing drawn), the largest
pool of real CIFAR-10 images next to a subset that takes all 5,000 head-class images. "pseudo-label" follows
Yang & Xu 2020: the table's own CE run of the seed (``OUT/ce/seed-N``, trained first if missing) labels every pool
image by argmax with no threshold (``longtail pseudo-label RUN --pool rest``, into ``OUT/pseudo-labels/seed-N``,
made once), then the fast CE recipe trains on labeled + pseudo-labeled images (``data.pseudo_labels``, the only
data setting ``cifar10-semi-pseudo`` adds to its base; not its batch or network): 50,000 images, 4x the labeled
ones, per epoch. Its shot groups and rarest 3 are taken by the labeled counts, as every other row's (the report's
own groups follow the pseudo-labels). "fixmatch" is the fast CE recipe with FixMatch (``semi.method=fixmatch``) on
the same pool (``data.unlabeled_pool=rest``): threshold 0.95, lambda_u 1, and mu 1, one unlabeled image per
labeled one (FixMatch's mu 7 would make each run ~15x the labeled cost on two CPU cores). Its labeled batch and
weak view are the fast recipe's crop 2 + flip; the strong view adds FixMatch's own RandAugmentMC (2 ops, each
with probability 1/2 at a magnitude drawn from 1..9) and Cutout 0.5 (``augment.policy=fixmatch``, as the ACR
recipe and the LA + RandAugment row; the short DARP FixMatch recipe keeps the simplified jitter/solarise/cutout
view). The seconds of both rows count only their own training (not the CE run or the labeling).
"la-pseudo-label" is the pseudo-label row with a labeler that names the rare classes: the table's LA run labels the
pool (``OUT/pseudo-labels-logit-adjust``) and the LA row's settings train on the union, the adjustment taken from the
union's counts as every loss takes its training set's. "acr" is ACR (``semi.method=acr``, Wei & Gan 2023) at the
FixMatch row's settings (mu 1, theirs too; threshold 0.95; the same strong view), an epoch the labeled set's whole
batches (``semi.acr_steps_per_epoch=0``: 24 of 512) and the pool's estimated distribution from the second epoch on.
The newer pieces (issue 14) come last: SAM, RandAugment + Cutout and CutMix each added to the logit-adjusted
row at their sources' defaults, GLMC as its own task (its consistency weight for CIFAR-10), and VS + ADRW + TLA with
what ``cifar10-lt-vs-adrw-tla`` sets under ``loss.``, ``train.weighting*``, ``train.drw_start``, ``optim.`` and
``augment.`` (its loss, deferred weights, SAM and AutoAugment + Cutout; the switch at 80 % of the run); nothing else
of their long recipes (batch, learning rate, weight decay, epochs) is taken, so they run on the fast protocol.
Balanced softmax trains nothing of its own: on this protocol its configuration is logit adjustment's but for the
loss settings, and the two losses are one function (``losses.balanced_softmax`` calls ``logit_adjusted`` with tau 1;
``same_row`` checks both facts each time), so its row shows the LA runs and says so (its seed-0 run, made before,
gave LA's top-1 to the last digit).

Runs go one after another, seed-major (every method's seed 0 first), into ``OUT/METHOD/seed-N``. After every run a
row is appended to RESULTS.md (with the load average at its start and end: accuracy does not depend on the load, the
seconds do) and the table of means is rewritten in place from those rows: the rows are the record, the run folders
(outside the repository) a cache. A run with a row is not trained again; a finished folder without a row is resumed
and re-evaluated, and gets its row; a row whose base run (the CE run of a second stage or of the pseudo-labels) has no
row records that run first. So a stopped table continues where it stopped, and losing the run folders loses no
measurement. A later row that needs a lost base run trains it again, which repeats it bit for bit on the same host
only: another CPU's vector instructions round differently (the CE base of seed 0 gave 64.23 % on 2026-11-30's host
and 64.81 % on 2026-12-01's AVX-512 host), so such a row says in its machine cell which host made it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from longtail.config import RunConfig, _flat, apply_overrides  # noqa: E402
from longtail.counts import ClassCounts  # noqa: E402
from longtail.decouple import decouple_run  # noqa: E402
from longtail.errors import LongtailError  # noqa: E402
from longtail.experiment import train_one  # noqa: E402
from longtail.losses import loss_from_config  # noqa: E402
from longtail.recipes import get_recipe  # noqa: E402
from longtail.semi.pseudo import pseudo_label_run  # noqa: E402
from longtail.ssl.run import pretrain_run  # noqa: E402
from longtail.storage import atomic_write_text  # noqa: E402
from run_recipe import append_row, locked, machine, rarest  # noqa: E402


@dataclass(frozen=True)
class Method:
    key: str
    label: str
    source: str | None = None  # the 200-epoch recipe (suffix after "DATASET-lt-") whose settings it takes
    second_stage: str | None = None  # a `longtail decouple` method applied to the CE run with a validation split
    extra: tuple[tuple[str, Any], ...] = ()  # settings beyond the source recipe's (the newer pieces, issue 14)
    pretrain: str | None = None  # a `longtail pretrain` method whose backbone (one run per seed) initialises this row
    # train on labeled + the pseudo-labels that this row's run (its key: "ce", "logit-adjust") gives the `rest` pool
    pseudo_labels: str | None = None
    # only the source recipe's settings under these prefixes (a long recipe's remedy without its schedule); () = all
    take: tuple[str, ...] = ()
    # a row whose training is another row's by construction (balanced softmax is logit adjustment at tau 1:
    # losses.balanced_softmax calls losses.logit_adjusted): the table shows that row's runs under this label, and
    # nothing is trained for it, as long as the two configurations differ in loss.name alone (same_row checks)
    same_as: str | None = None


METHODS = [
    Method("ce", "CE", "ce"),
    Method("focal", "focal (gamma 1)", "focal"),
    Method("cb-focal", "CB-focal (beta 0.9999)", "cb-focal"),
    Method("ce-drw", "CE-DRW", "ce-drw"),
    Method("ldam-drw", "LDAM-DRW", "ldam-drw"),
    Method("balanced-softmax", "balanced softmax", "balanced-softmax", same_as="logit-adjust"),
    Method("logit-adjust", "logit adjustment (tau 1)", "logit-adjust"),
    Method("cdt", "CDT (gamma 0.2)", "cdt"),
    Method("mfw", "CE + MFW (0.5)", "mfw"),
    Method("ce-val", "CE, 20 per class held out (base of the second stages)", "crt"),
    Method("crt", "cRT", None, "crt"),
    Method("tau-norm", "tau-norm", None, "tau-norm"),
    Method("lws", "LWS", None, "lws"),
    Method("posthoc-la", "post-hoc LA", None, "logit-adjust"),
    # weight balancing's second stage (issue 14; Alshammari et al. 2022's demo 2: the classifier retrained with the
    # class-balanced loss, wd 0.1, MaxNorm) on the same CE base; its stage 1 (a tuned weight decay) is not redone here
    Method("wb", "weight balancing's second stage (on the CE base)", None, "wb"),
    # self-supervised pre-training first (Yang & Xu 2020): rotation prediction with the fast recipe's own settings
    # (FastNet-M, 16 epochs, one-cycle) on the same long-tailed images, then the remedy from its backbone
    Method("ssp-ce", "rotation SSP, then CE", "ce", pretrain="rotation"),
    Method("ssp-la", "rotation SSP, then LA", "logit-adjust", pretrain="rotation"),
    # the rest of CIFAR-10 unlabeled (pool `rest`: every training image the labeled subset left): pseudo-labels from
    # the CE row's run (Yang & Xu 2020: every pool image, threshold 0), and FixMatch at mu 1 on the same pool
    Method("pseudo-label", "CE + pseudo-labels on the rest of CIFAR-10", "ce", pseudo_labels="ce"),
    # the same with a labeler that names the rare classes: the LA run labels the pool, LA trains on the union (its
    # adjustment from the union's counts, labeled + pseudo-labeled, as every loss takes the training set's counts)
    Method("la-pseudo-label", "LA + the LA run's pseudo-labels on the rest of CIFAR-10", "logit-adjust",
           pseudo_labels="logit-adjust"),
    Method("fixmatch", "FixMatch on the rest of CIFAR-10 (threshold 0.95, mu 1, RandAugment(2) + Cutout)", "ce",
           extra=(("semi.method", "fixmatch"), ("semi.threshold", 0.95), ("semi.lambda_u", 1.0), ("semi.mu", 1),
                  ("data.unlabeled_pool", "rest"), ("augment.randaugment", 2), ("augment.cutout", 0.5),
                  ("augment.policy", "fixmatch"))),
    # ACR (issue 14; Wei & Gan 2023) on the same pool at FixMatch's row's settings: mu 1 (theirs too), threshold 0.95,
    # the same strong view (their RandAugmentMC(2) + Cutout); an ACR epoch is the fast protocol's (steps 0: the
    # labeled set's whole batches, 24 of 512 from 12,406 images; their epoch is 500 steps of 64), and the estimate of
    # the pool's distribution starts after the first epoch (their est_epoch 5 of 500 epochs, 1 % of the run, is under
    # one epoch here); their tau settings (2, 2, 2, min 0), EMA 0.99 of the estimate; the balanced head is evaluated
    # (seeds 0 and 1 ran with steps 24 written out, which is what 0 resolves to here)
    Method("acr", "ACR on the rest of CIFAR-10 (threshold 0.95, mu 1, RandAugment(2) + Cutout)", "ce",
           extra=(("semi.method", "acr"), ("semi.threshold", 0.95), ("semi.mu", 1),
                  ("semi.acr_steps_per_epoch", 0), ("semi.acr_est_epoch", 0),
                  ("data.unlabeled_pool", "rest"), ("augment.randaugment", 2), ("augment.cutout", 0.5),
                  ("augment.policy", "fixmatch"))),
    # the newer pieces (issue 14), each on the logit-adjusted remedy or as its own task, at their sources' defaults
    Method("la-sam", "LA + SAM (rho 0.05)", "logit-adjust", extra=(("optim.name", "sam"),)),
    Method("la-randaugment", "LA + RandAugment(2) + Cutout", "logit-adjust",
           extra=(("augment.randaugment", 2), ("augment.cutout", 0.5))),
    Method("la-cutmix", "LA + CutMix (alpha 1)", "logit-adjust", extra=(("augment.mix", "cutmix"),)),
    Method("glmc", "GLMC (consistency weight 1)", "ce", extra=(("train.task", "glmc"), ("glmc.contrast_weight", 1.0))),
    # Wang et al. 2023's remedy without its 400-epoch schedule: the loss (VS, truncated when the weights start), ADRW
    # from 80 % of the run, SAM (its radius doubling there too, BatchNorm from both passes), AutoAugment + Cutout
    Method("vs-adrw-tla", "VS + ADRW + TLA, SAM, AutoAugment + Cutout", "vs-adrw-tla",
           take=("loss.", "train.weighting", "train.drw_start", "optim.", "augment.")),
]
BY_KEY = {m.key: m for m in METHODS}
TABLE_SECTION = "## Method table: the fast CPU protocol (benchmarks/method_table.py)"
RUN_SECTION = "## Method table runs (benchmarks/method_table.py), one row per run"
RUN_HEADER = ("| date | machine | method | seed | epochs | train s | top-1 | many | medium | few | rarest 3 "
              "| command |\n|---|---|---|---|---|---|---|---|---|---|---|---|")


def method_overrides(dataset: str, source: str) -> dict[str, Any]:
    """What ``DATASET-lt-SOURCE`` sets differently from ``DATASET-lt-ce``, as dotted overrides (loss name first)."""
    base = _flat(get_recipe(f"{dataset}-lt-ce").config)
    mine = _flat(get_recipe(f"{dataset}-lt-{source}").config)
    out = {k: v for k, v in mine.items() if k != "recipe" and base.get(k) != v}
    return dict(sorted(out.items(), key=lambda kv: kv[0] != "loss.name"))


#: the table's protocol, pinned: the fast CE recipe at batch 512 and lr 0.75, the recipe's settings when the table
#: started (its seed-0 rows were measured so); the recipe itself may move on (it trains at batch 256 since the
#: fifth session of 2026-11-30) without changing a half-measured table
TABLE_PROTOCOL: dict[str, Any] = {"train.batch_size": 512, "train.lr": 0.75}


def table_base(dataset: str) -> RunConfig:
    """``DATASET-lt-fast-ce`` with :data:`TABLE_PROTOCOL`: the configuration every row starts from."""
    return apply_overrides(get_recipe(f"{dataset}-lt-fast-ce").config, TABLE_PROTOCOL)


def method_config(dataset: str, m: Method, common: dict[str, Any]) -> RunConfig:
    cfg = table_base(dataset)
    assert m.source is not None
    taken = {k: v for k, v in method_overrides(dataset, m.source).items() if not m.take or k.startswith(m.take)}
    changes = {**taken, **dict(m.extra)}
    cfg = apply_overrides(cfg, {k: ("none" if v is None else v) for k, v in changes.items()})
    return replace(apply_overrides(cfg, common), recipe=f"{dataset}-lt-fast-ce+{m.key}")


def same_row(dataset: str, m: Method) -> Method | None:
    """The row whose runs stand for ``m`` (``m.same_as``), when the two configurations differ only under ``loss.``
    and the two losses, each built from its own settings, give the same value on fixed inputs; None otherwise (``m``
    is then trained itself)."""
    if m.same_as is None:
        return None
    other = BY_KEY[m.same_as]
    cfgs = [method_config(dataset, x, {}) for x in (m, other)]
    mine, theirs = (_flat(c) for c in cfgs)
    differ = {k for k in mine.keys() | theirs.keys() if k != "recipe" and mine.get(k) != theirs.get(k)}
    if not all(k.startswith("loss.") for k in differ):
        return None
    counts = ClassCounts((50, 20, 5))
    logits, labels = torch.linspace(-3, 3, 12).view(4, 3), torch.tensor([0, 1, 2, 2])
    a_loss, b_loss = (loss_from_config(c.loss, counts) for c in cfgs)
    return other if torch.equal(a_loss(logits, labels), b_loss(logits, labels)) else None


def pretrained(method: str, seed: int, a: argparse.Namespace, common: dict[str, Any]) -> Path:
    """The folder of seed ``seed``'s ``method`` pre-training on the fast recipe's data, network and schedule (run
    once, shared by the rows that start from it)."""
    out = Path(a.out) / f"ssp-{method}" / f"seed-{seed}"
    if not (out / "report.json").exists():
        cfg = apply_overrides(table_base(a.dataset), {**common, "seed": seed})
        pretrain_run(method, replace(cfg, recipe=f"{a.dataset}-lt-fast-{method}-ssp"), out, progress=False,
                     log=lambda s: None)
    return out


PSEUDO_LABEL_FILES = ("pseudo_labels.pt", "pseudo_labels.json", "pseudo_labels.md")


def pseudo_label_dir(labeler: str, seed: int, a: argparse.Namespace, common: dict[str, Any]) -> Path:
    """The folder of seed ``seed``'s pseudo-labels from row ``labeler``: that row's run (``OUT/LABELER/seed-N``,
    trained first if it has no report) labels the ``rest`` pool, every image kept (made once, shared by the rows that
    train on it; the CE run's go to ``OUT/pseudo-labels``, the first folder of the kind)."""
    out = Path(a.out) / ("pseudo-labels" if labeler == "ce" else f"pseudo-labels-{labeler}") / f"seed-{seed}"
    if not all((out / f).is_file() for f in PSEUDO_LABEL_FILES):
        base = Path(a.out) / labeler / f"seed-{seed}"
        if not (base / "report.json").exists():
            run_one(BY_KEY[labeler], seed, a, common)
        pseudo_label_run(base, "rest", out, threshold=0.0, device=a.device, data_root=a.data_root,
                         log=lambda s: None)
    return out


def run_one(m: Method, seed: int, a: argparse.Namespace, common: dict[str, Any]) -> dict[str, Any]:
    out = Path(a.out) / m.key / f"seed-{seed}"
    quiet = {"progress": False, "log": lambda s: None}
    if m.second_stage is None:
        cfg = apply_overrides(method_config(a.dataset, m, common), {"seed": seed})
        if m.pretrain is not None:
            cfg = apply_overrides(cfg, {"train.init_from": str(pretrained(m.pretrain, seed, a, common))})
        if m.pseudo_labels is not None:
            cfg = apply_overrides(cfg, {"data.pseudo_labels": str(pseudo_label_dir(m.pseudo_labels, seed, a, common))})
        return train_one(cfg, out, **quiet)  # type: ignore[arg-type]
    base = Path(a.out) / "ce-val" / f"seed-{seed}"
    if not (base / "report.json").exists():
        run_one(BY_KEY["ce-val"], seed, a, common)
    r = decouple_run(base, m.second_stage, out=out, device=a.device, data_root=a.data_root, **quiet)  # type: ignore[arg-type]
    return r


def report_of(out: Path, key: str, seed: int) -> dict[str, Any] | None:
    p = out / key / f"seed-{seed}" / "report.json"
    return json.loads(p.read_text()) if p.exists() else None


RUN_COLUMNS = ("date", "machine", "method", "seed", "epochs", "train_s", "top1", "many", "medium", "few", "rarest3",
               "command")


def _number(cell: str) -> float | None:
    try:
        x = float(cell)
    except ValueError:
        return None  # "n/a", "-"
    return x if math.isfinite(x) else None  # "nan": a report without its counts


Protocol = tuple[str, str, tuple[str, ...]]  # (dataset, device, the --set options in order)
DEFAULT_PROTOCOL: Protocol = ("cifar10", "cpu", ())  # the table in the README


def protocol_of(args: list[str]) -> Protocol:
    """The protocol of a table invocation (its ``--dataset``, ``--device`` and ``--set`` options): rows of another
    protocol (CIFAR-100, a smoke test at 1 epoch, a GPU) are another table and never mix with this one's."""
    dataset, device, sets = "cifar10", "cpu", []
    pairs = [a.split("=", 1) if a.startswith("--") and "=" in a else None for a in args]
    args = [x for a, kv in zip(args, pairs) for x in (kv if kv else [a])]  # --set=K=V as --set K=V
    for flag, value in zip(args, args[1:]):
        if flag == "--dataset":
            dataset = value
        elif flag == "--device":
            device = value
        elif flag == "--set":
            sets.append(value)
    return dataset, device, tuple(sets)


def recorded_runs(results: Path, protocol: Protocol | None = None) -> dict[tuple[str, int], dict[str, Any]]:
    """Every run row of ``protocol`` under RUN_SECTION of ``results`` (the protocol read from the row's command), by
    (method label, seed); where a pair has several rows (a run re-evaluated), the last one. The table is made of these
    rows, the committed record of each run, and not of the run folders, which live outside the repository and may be
    gone (they were, once, between two sessions)."""
    lines = results.read_text().splitlines() if results.exists() else []
    if RUN_SECTION not in lines:
        return {}
    runs: dict[tuple[str, int], dict[str, Any]] = {}
    i = lines.index(RUN_SECTION) + 1
    while i < len(lines) and not lines[i].startswith("## "):
        # the command is the last cell and may hold a "|" of its own: split off the eleven before it
        line = lines[i].strip().removeprefix("|").removesuffix("|")
        cells = [c.strip() for c in line.split("|", len(RUN_COLUMNS) - 1)]
        i += 1
        if len(cells) != len(RUN_COLUMNS) or not cells[3].isdigit():
            continue  # the header, its rule, prose
        row: dict[str, Any] = dict(zip(RUN_COLUMNS, cells, strict=True))
        try:
            args = shlex.split(row["command"].strip("`"))
        except ValueError:
            args = []
        if protocol_of(args) != (protocol or DEFAULT_PROTOCOL):
            continue
        for k in ("train_s", "top1", "many", "medium", "few", "rarest3"):
            row[k] = _number(row[k])
        runs[(row["method"], int(row["seed"]))] = row
    return runs


def by_labeled_counts(rep: dict[str, Any]) -> dict[str, Any]:
    """``rep`` with ``train_counts`` and the many/medium/few means by the labeled images alone, when its training set
    also held pseudo-labeled ones (their labels would move classes between shot groups and change the rarest 3)."""
    labeled = (rep.get("semi") or {}).get("labeled_counts")
    if not labeled or labeled == rep.get("train_counts") or "per_class" not in rep:
        return rep
    per = rep["per_class"]

    def mean(classes: list[int]) -> float | None:
        vals = [per[c] for c in classes if per[c] is not None]
        return sum(vals) / len(vals) if vals else None
    groups = ClassCounts(tuple(labeled)).groups()
    return {**rep, "train_counts": list(labeled), "groups": groups, **{g: mean(cs) for g, cs in groups.items()}}


def _ms(vals: list[float]) -> str:
    if not vals:
        return "n/a"
    if len(vals) == 1:
        return f"{vals[0]:.2f}"
    return f"{statistics.mean(vals):.2f} ± {statistics.stdev(vals):.2f}"


def table(runs: dict[tuple[str, int], dict[str, Any]], dataset: str) -> list[str]:
    """The table of means over every recorded run (:func:`recorded_runs`), one line per method that has any."""
    lines = ["| method | seeds | top-1 mean ± std | rarest 3 mean ± std | many | medium | train s per seed |",
             "|---|---|---|---|---|---|---|"]
    for m in METHODS:
        same = same_row(dataset, m)
        label_of = m.label if same is None else same.label
        reps = [r for (label, _), r in sorted(runs.items(), key=lambda kv: kv[0][1]) if label == label_of
                and r["top1"] is not None]
        if not reps:
            continue
        label = m.label
        if same is not None:  # its own runs, where some were made before it was aliased, must agree to the digit
            own = {s: r["top1"] for (lb, s), r in runs.items() if lb == m.label and r["top1"] is not None}
            other = {s: o["top1"] for s in own if (o := runs.get((same.label, s))) is not None}
            agree = sorted(s for s in other if other[s] == own[s])
            differ, alone = sorted(s for s in other if other[s] != own[s]), sorted(set(own) - set(other))
            seeds_of, ss = ", ".join(map(str, agree)), "s" if len(agree) > 1 else ""
            label += (f" (the runs of {same.label}: the same loss and settings"
                      + (f"; its own run{ss} of seed{ss} {seeds_of} gave the same top-1"
                         if agree else "")
                      + (f"; its own runs of seeds {differ} DIFFER" if differ else "")
                      + (f"; its own runs of seeds {alone} have no run of {same.label} to compare with" if alone
                         else "")
                      + ")")

        def col(k: str, reps: list[dict[str, Any]] = reps) -> str:
            return _ms([r[k] for r in reps if r[k] is not None])
        secs = "/".join(f"{r['train_s']:.0f}" for r in reps if r["train_s"] is not None) or "n/a"
        lines.append(f"| {label} | {len(reps)} | {col('top1')} | {col('rarest3')} | {col('many')} | {col('medium')} "
                     f"| {secs} |")
    return lines


def table_section(protocol: Protocol) -> str:
    """The heading of a protocol's table: TABLE_SECTION for the default one, TABLE_SECTION and the protocol else."""
    if protocol == DEFAULT_PROTOCOL:
        return TABLE_SECTION
    dataset, device, sets = protocol
    return f"{TABLE_SECTION}: {dataset}, {device}" + "".join(f", {x}" for x in sets)


def write_table(results: Path, lines: list[str], header: str, section: str = TABLE_SECTION) -> None:
    """Replace the table under ``section`` (created before the runs' section if absent)."""
    text = results.read_text().splitlines() if results.exists() else ["# Benchmark results"]
    block = [section, "", header, "", *lines, ""]
    if section in text:
        i = text.index(section)
        j = i + 1
        while j < len(text) and not text[j].startswith("## "):
            j += 1
        text[i:j] = block
    elif RUN_SECTION in text:  # the table above the rows it is made of
        i = text.index(RUN_SECTION)
        text[i:i] = block
    else:
        text += ["", *block]
    atomic_write_text(results, "\n".join(text).rstrip("\n") + "\n")


README_START = "<!-- method-table: written by benchmarks/method_table.py --readme -->"
README_END = "<!-- /method-table -->"


def write_readme(readme: Path, lines: list[str]) -> None:
    """Replace the table between the README's method-table markers (the prose around them is the README's own)."""
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise SystemExit(f"{readme} has no {README_START} ... {README_END} block to write the table into")
    i, j = text.index(README_START) + len(README_START), text.index(README_END)
    atomic_write_text(readme, text[:i] + "\n" + "\n".join(lines) + "\n" + text[j:])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--dataset", default="cifar10", choices=["cifar10", "cifar100", "svhn"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=[m.key for m in METHODS if m.key != "ce-val"],
                   choices=[m.key for m in METHODS])
    p.add_argument("--device", default="cpu")
    p.add_argument("--results", default=str(HERE / "RESULTS.md"))
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="a setting for every run (e.g. train.epochs=1 for a smoke test; the table says so)")
    p.add_argument("--table-only", action="store_true",
                   help="rewrite the table from the rows recorded in RESULTS.md; train nothing")
    p.add_argument("--readme", help="also copy the table into this README, between its method-table markers")
    a = p.parse_args()
    a.protocol = (a.dataset, a.device, tuple(a.sets))  # the rows of this table (protocol_of reads them from a row)
    if a.readme and a.protocol != DEFAULT_PROTOCOL:
        raise SystemExit(f"--readme writes the README's table of the default protocol (CIFAR-10, cpu, no --set); "
                         f"this one's ({a.protocol}) stays in {a.results}")
    results = Path(a.results)
    common: dict[str, Any] = {"data.root": a.data_root, "train.device": a.device}
    common.update(dict(s.partition("=")[::2] for s in a.sets))
    command = "python benchmarks/" + " ".join(shlex.quote(x) for x in [Path(sys.argv[0]).name] + sys.argv[1:])
    header = (f"{a.dataset.upper().replace('CIFAR', 'CIFAR-')}-LT rho 100, `{a.dataset}-lt-fast-ce` at batch "
              f"{TABLE_PROTOCOL['train.batch_size']}, lr {TABLE_PROTOCOL['train.lr']} (the table's protocol) plus each "
              f"remedy's own settings, last epoch, balanced test set; written by `{command}`. "
              "Rows with fewer than 3 seeds are not finished. Seconds are wall-clock training time on the machine "
              "of each run's row below (load average there).")
    if not a.table_only:
        for seed in a.seeds:
            for key in a.methods:
                m = BY_KEY[key]
                # a row's base run (the CE run a second stage re-balances or whose pseudo-labels a row trains on) is
                # a table row of its own: measured and recorded first, so no run is trained without its row
                for row_m in ([BY_KEY[b]] if (b := base_of(m)) else []) + [m]:
                    if (row_m.label, seed) not in recorded_runs(results, a.protocol):
                        measure(row_m, seed, a, common, command, header)
    with locked(results):
        write_outputs(results, a, header)
    print("\n".join(table(recorded_runs(results, a.protocol), a.dataset)))
    return 0


def base_of(m: Method) -> str | None:
    """The key of the row whose run ``m`` starts from (None when it trains from scratch or from a pre-training)."""
    return "ce-val" if m.second_stage else m.pseudo_labels


def measure(m: Method, seed: int, a: argparse.Namespace, common: dict[str, Any], command: str, header: str) -> None:
    """Train (or, when its folder is finished, re-evaluate) one run, record its row in RESULTS.md and rewrite the
    table."""
    results, out = Path(a.results), Path(a.out)
    if (same := same_row(a.dataset, m)) is not None:
        print(f"{m.key}: trains nothing; its row shows the runs of {same.key} (the same configuration "
              "but its loss settings, and the same loss)", flush=True)
        return
    load0, t0 = os.getloadavg()[0], time.perf_counter()
    try:  # a finished run without its row (stopped between the two) is resumed and re-evaluated
        r = run_one(m, seed, a, common)
    except LongtailError as e:
        if "is in use by" not in e.problem:
            raise
        print(f"{m.key} seed {seed}: left to the process that holds it ({e.problem})", flush=True)
        return
    wall = time.perf_counter() - t0
    rep = by_labeled_counts(report_of(out, m.key, seed) or r)
    tm = rep.get("timing", {})
    cfg_file = out / m.key / f"seed-{seed}" / "config.json"
    epochs = (json.loads(cfg_file.read_text()).get("config", {}).get("train", {}).get("epochs")
              if m.second_stage is None and cfg_file.exists() else rep.get("epochs")) or "-"

    def f2(k: str) -> str:
        return "n/a" if rep.get(k) is None else f"{rep[k]:.2f}"
    row = (f"| {dt.date.today()} | {machine()}, load average {load0:.1f} -> {os.getloadavg()[0]:.1f} | "
           f"{m.label} | {seed} | {epochs} | {tm.get('train_s', wall):.1f} | "
           f"{rep['top1']:.2f} | {f2('many')} | {f2('medium')} | {f2('few')} | "
           f"{rarest(rep, 3) if 'train_counts' in rep else float('nan'):.2f} | `{command}` |")
    with locked(results):
        append_row(results, row, section=RUN_SECTION, header=RUN_HEADER)  # the section made at the end if absent
        write_outputs(results, a, header)
    print(row, f"(wall {wall:.0f} s)", flush=True)


def write_outputs(results: Path, a: argparse.Namespace, header: str) -> None:
    """The table of every recorded run into RESULTS.md (and the README when asked)."""
    lines = table(recorded_runs(results, a.protocol), a.dataset)
    write_table(results, lines, header, table_section(a.protocol))
    if a.readme:
        write_readme(Path(a.readme), lines)


if __name__ == "__main__":
    sys.exit(main())
