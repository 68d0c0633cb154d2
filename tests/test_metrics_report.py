"""Metrics on hand-made logits, and the report files built from them."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from longtail.counts import ClassCounts
from longtail.errors import LongtailError
from longtail.metrics import (
    aggregate_seeds,
    confusion_matrix,
    expected_calibration_error,
    mean_std,
    per_class_accuracy,
    summarize,
)
from longtail.report import summary_table, write_report, write_seed_report

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# 3 classes: 200 / 50 / 5 training images -> many = [0], medium = [1], few = [2].
TRAIN = ClassCounts((200, 50, 5))
LABELS = [0, 0, 0, 0, 1, 1, 2, 2]
PREDS = [0, 0, 0, 1, 1, 0, 2, 1]


def one_hot_logits(preds: list[int], num_classes: int, scale: float = 5.0) -> torch.Tensor:
    """Logits whose argmax is ``preds``."""
    return scale * F.one_hot(torch.tensor(preds), num_classes).float()


def hand_summary(device: str = "cpu", **kw) -> dict:
    logits = one_hot_logits(PREDS, 3).to(device)
    return summarize(logits, torch.tensor(LABELS, device=device), TRAIN, **kw)


# ------------------------------------------------------------------------------------------
# metrics
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_summarize_exact_values(device: str) -> None:
    s = hand_summary(device, class_names=["cat", "dog", "emu"])
    # class 0: 3/4, class 1: 1/2, class 2: 1/2; overall 5/8
    assert s["top1"] == pytest.approx(62.5)
    assert s["per_class"] == pytest.approx([75.0, 50.0, 50.0])
    assert s["confusion"] == [[3, 1, 0], [1, 1, 0], [0, 1, 1]]
    assert (s["many"], s["medium"], s["few"]) == pytest.approx((75.0, 50.0, 50.0))
    assert s["balanced_accuracy"] == pytest.approx(175.0 / 3)
    assert s["groups"] == {"many": [0], "medium": [1], "few": [2]}
    assert s["num_test"] == 8
    assert s["test_per_class"] == [4, 2, 2]
    assert s["train_counts"] == [200, 50, 5]
    assert s["class_names"] == ["cat", "dog", "emu"]
    json.dumps(s)  # plain Python values only
    assert all(type(v) is float for v in (s["top1"], s["nll"], s["ece"], s["many"]))


def test_helpers() -> None:
    pred, labels = torch.tensor(PREDS), torch.tensor(LABELS)
    m = confusion_matrix(pred, labels, 3)
    assert m.tolist() == [[3, 1, 0], [1, 1, 0], [0, 1, 1]]
    assert per_class_accuracy(m) == pytest.approx([75.0, 50.0, 50.0])


def test_empty_group_is_none_not_zero() -> None:
    all_many = ClassCounts((200, 300, 150))
    s = summarize(one_hot_logits(PREDS, 3), torch.tensor(LABELS), all_many)
    assert s["medium"] is None and s["few"] is None
    assert s["many"] == pytest.approx(175.0 / 3)
    assert s["groups"] == {"many": [0, 1, 2], "medium": [], "few": []}


def test_class_absent_from_test_set() -> None:
    labels = [0, 0, 1, 1]
    s = summarize(one_hot_logits([0, 1, 1, 1], 3), torch.tensor(labels), TRAIN)
    assert s["per_class"][2] is None
    assert s["per_class"][:2] == pytest.approx([50.0, 100.0])
    assert s["balanced_accuracy"] == pytest.approx(75.0)  # (50 + 100) / 2, class 2 left out
    assert s["few"] is None  # the only few-shot class has no test examples
    assert s["test_per_class"] == [2, 2, 0]


def test_ece_perfectly_calibrated() -> None:
    # 4 examples at confidence 0.75 with 3 right, 5 at 0.6 with 3 right: acc == conf in each bin.
    probs = torch.tensor([[0.75, 0.25]] * 4 + [[0.6, 0.4]] * 5, dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 1] + [0, 0, 0, 1, 1])
    assert expected_calibration_error(probs, labels, bins=10) == pytest.approx(0.0, abs=1e-9)
    # float32 probabilities (0.6 is not exact) are still calibrated to float32 precision
    assert expected_calibration_error(probs.float(), labels, bins=10) == pytest.approx(0.0, abs=1e-4)


def test_ece_miscalibrated_by_hand() -> None:
    # bin (0.8, 0.9]: 2 examples, conf 0.9, 1 right  -> (2/5) * |0.5 - 0.9|  = 0.16
    # bin (0.5, 0.6]: 3 examples, conf 0.55, 3 right -> (3/5) * |1.0 - 0.55| = 0.27
    probs = torch.tensor([[0.9, 0.1]] * 2 + [[0.55, 0.45]] * 3)
    labels = torch.tensor([0, 1, 0, 0, 0])
    assert expected_calibration_error(probs, labels, bins=10) == pytest.approx(43.0)
    # one bin: acc 4/5, mean conf (1.8 + 1.65) / 5 = 0.69 -> 11 %
    assert expected_calibration_error(probs, labels, bins=1) == pytest.approx(11.0)
    # summarize computes the same from logits = log(probs)
    s = summarize(probs.log(), labels, ClassCounts((200, 200)), ece_bins=10)
    assert s["ece"] == pytest.approx(43.0, abs=1e-4)


def test_ece_bins_are_closed_on_the_right() -> None:
    # conf 0.5 (wrong) belongs to (0, 0.5]; conf 1.0 and 0.9 (right) to (0.5, 1]:
    # 1/3 * 0.5 + 2/3 * |1 - 0.95| = 0.2 (0.5 in the upper bin would give 1/3 * |2/3 - 0.8| ~ 0.044)
    probs = torch.tensor([[0.5, 0.3, 0.2], [1.0, 0.0, 0.0], [0.9, 0.05, 0.05]], dtype=torch.float64)
    labels = torch.tensor([1, 0, 0])
    assert expected_calibration_error(probs, labels, bins=2) == pytest.approx(20.0)


def test_nll_matches_cross_entropy() -> None:
    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(64, 5, generator=g)
    labels = torch.randint(0, 5, (64,), generator=g)
    s = summarize(logits, labels, ClassCounts((500, 120, 60, 20, 5)))
    assert s["nll"] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-6)
    assert s["top1"] == pytest.approx(100.0 * (logits.argmax(1) == labels).float().mean().item())


@pytest.mark.parametrize(
    "labels, logits, match",
    [
        ([0, 1, 3], torch.zeros(3, 3), "out of range"),
        ([0, -1, 2], torch.zeros(3, 3), "out of range"),
        ([0, 1], torch.zeros(3, 3), "labels"),
        ([0, 1, 2], torch.zeros(3, 4), "classes"),
        ([0, 1, 2], torch.zeros(3), "shape"),
        ([0, 1, 2], torch.tensor([[0.0, float("nan"), 0.0]] * 3), "NaN"),
    ],
)
def test_invalid_input_raises(labels: list[int], logits: torch.Tensor, match: str) -> None:
    with pytest.raises(LongtailError, match=match):
        summarize(logits, torch.tensor(labels), TRAIN)


def test_mean_std() -> None:
    values = [70.1, 71.3, 69.8, 70.9]
    m, sd = mean_std(values)
    assert m == pytest.approx(statistics.mean(values))
    assert sd == pytest.approx(statistics.stdev(values))
    assert mean_std([None, 70.1, None, 71.3]) == pytest.approx((70.7, statistics.stdev([70.1, 71.3])))
    assert mean_std([42.0]) == (42.0, 0.0)
    assert mean_std([None, None]) == (None, None)
    assert mean_std([]) == (None, None)


def test_aggregate_seeds() -> None:
    a = hand_summary()
    b = summarize(one_hot_logits([0, 0, 0, 0, 1, 1, 1, 1], 3), torch.tensor(LABELS), TRAIN)
    agg = aggregate_seeds([a, b])
    assert agg["num_seeds"] == 2
    assert agg["top1"]["values"] == pytest.approx([62.5, 75.0])
    assert agg["top1"]["mean"] == pytest.approx(68.75)
    assert agg["top1"]["std"] == pytest.approx(statistics.stdev([62.5, 75.0]))
    assert agg["few"]["values"] == pytest.approx([50.0, 0.0])
    assert agg["per_class"] == pytest.approx([87.5, 75.0, 25.0])
    assert set(agg) >= {"many", "medium", "balanced_accuracy", "ece", "train_counts", "groups"}
    json.dumps(agg)
    with pytest.raises(LongtailError):
        aggregate_seeds([])


# ------------------------------------------------------------------------------------------
# reports
# ------------------------------------------------------------------------------------------
def test_summary_table_plain_and_aggregate() -> None:
    s = summarize(one_hot_logits(PREDS, 3), torch.tensor(LABELS), ClassCounts((200, 300, 150)))
    # a second seed evaluated without class 1 (the only medium-shot class): per_class [50, None, 100]
    no_medium = summarize(one_hot_logits([0, 1, 2, 2], 3), torch.tensor([0, 0, 2, 2]), TRAIN)
    agg = aggregate_seeds([hand_summary(), no_medium])
    table = summary_table([("CE", s), ("CE x2", agg)])
    lines = table.splitlines()
    assert lines[0] == "| run | top-1 | many | medium | few | balanced |"
    assert lines[2] == "| CE | 62.50 | 58.33 | n/a | n/a | 58.33 |"
    assert lines[3].startswith("| CE x2 | 68.75 ± 8.84 (n=2) |")
    assert "| 50.00 ± 0.00 (n=1) |" in lines[3]  # medium: only the first seed has it


def test_write_report(tmp_path: Path) -> None:
    s = summarize(one_hot_logits(PREDS, 3), torch.tensor(LABELS), ClassCounts((200, 300, 150)),
                  class_names=["cat", "dog", "emu"])
    run = tmp_path / "runs" / "ce"
    extra = {"recipe": "ce", "epoch": 200, "split": "test", "config": {"lr": 0.1, "root": Path("/data")}}
    write_report(run, s, title="CE on toy", extra=extra)

    assert sorted(p.name for p in run.iterdir()) == ["per_class_accuracy.png", "report.json", "report.md"]
    data = json.loads((run / "report.json").read_text())
    for key in ("top1", "per_class", "many", "medium", "few", "train_counts"):
        assert data[key] == s[key]
    assert data["medium"] is None and data["few"] is None
    assert data["recipe"] == "ce" and data["config"] == {"lr": 0.1, "root": "/data"}
    assert data["title"] == "CE on toy"

    md = (run / "report.md").read_text()
    assert md.startswith("# CE on toy")
    assert "n/a" in md
    assert "| top-1 | 62.50 |" in md
    assert "| 2 | emu | many | 150 | 2 | 50.00 |" in md
    assert "- **epoch**: 200" in md
    assert (run / "per_class_accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_write_report_rejects_clashing_extra(tmp_path: Path) -> None:
    with pytest.raises(LongtailError, match="top1"):
        write_report(tmp_path, hand_summary(), title="x", extra={"top1": 1.0})


def test_report_with_100_classes_and_missing_class(tmp_path: Path) -> None:
    counts = ClassCounts.from_profile(500, 100, 100)  # CIFAR-100-LT: all three groups present
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 99, (500,), generator=g)  # class 99 never in the test set
    logits = torch.randn(500, 100, generator=g)
    s = summarize(logits, labels, counts)
    assert s["per_class"][99] is None
    assert all(s[k] is not None for k in ("many", "medium", "few"))
    write_report(tmp_path, s, title="C100")
    assert (tmp_path / "per_class_accuracy.png").read_bytes()[:4] == b"\x89PNG"
    assert "| 99 | 99 | few | 5 | 0 | n/a |" in (tmp_path / "report.md").read_text()


def test_write_seed_report(tmp_path: Path) -> None:
    a = hand_summary()
    b = summarize(one_hot_logits([0, 0, 0, 0, 1, 1, 1, 1], 3), torch.tensor(LABELS), TRAIN)
    agg = aggregate_seeds([a, b])
    write_seed_report(tmp_path, agg, [("seed 0", a), ("seed 1", b)], "CE, 2 seeds")
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["aggregate"]["top1"]["mean"] == pytest.approx(68.75)
    assert set(data["seeds"]) == {"seed 0", "seed 1"}
    md = (tmp_path / "report.md").read_text()
    assert "| mean ± std | 68.75 ± 8.84 (n=2) |" in md
    assert "| seed 0 | 62.50 |" in md and "| seed 1 | 75.00 |" in md
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
    assert math.isfinite(agg["ece"]["mean"])
