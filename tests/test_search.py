"""Budget search (``build --max-accuracy-drop`` / ``--min-speedup`` without a budget) and ``sweep``.

The search loop is tested on synthetic accuracy / speed curves (fast, exact expectations); the real
pipeline on a tiny BERT whose labels are its own predictions (so the dense model is 100% accurate and
a drop of 0 points means "change no prediction").
"""

from __future__ import annotations

import csv
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest

from conftest import copy_tokenizer

from optin_deploy.errors import OptinError
from optin_deploy.search import (FRONTIER_FORMAT, Candidate, Objective, SearchSettings, best_effort, paired_drop_se, plan_next, ranked,
                                 run_search)

from test_build import assert_one_line_error, run_cli

# ------------------------------------------------------------------------------ the pure search loop


def synthetic(drop_fn, speed_fn):
    """``measure(budget, phase)`` from closed-form curves, like CandidateLab.measure."""
    made: list[Candidate] = []

    def measure(b: float, phase: str) -> Candidate:
        c = Candidate(id=len(made), budget=b, phase=phase, macs_ratio=b, drop=drop_fn(b), speedup=speed_fn(b))
        made.append(c)
        return c

    return measure


def speed(b: float) -> float:
    return 1.0 / (0.25 + 0.75 * b)  # a quarter of the latency cannot be pruned


def test_accuracy_search_finds_the_smallest_budget_meeting_the_limit():
    drop = lambda b: 12.0 * (1 - b) ** 2  # noqa: E731 convex, 0 at the dense end
    obj, st = Objective("max_accuracy_drop", 1.0), SearchSettings(tol=0.02, max_candidates=8, tie=0.0)  # no timing-resolution stop
    out = run_search(synthetic(drop, speed), obj, st)
    root = 1 - math.sqrt(1 / 12)
    best = ranked(obj, out.candidates)[0]
    assert drop(best.budget) <= 1.0
    assert root <= best.budget <= root + 0.03  # within the tolerance (plus rounding) above the exact answer
    assert len(out.candidates) <= 8
    assert {c.phase for c in out.candidates} <= {"bracket", "interpolate"}
    # it spends its candidates near the answer, not on a grid
    assert sum(abs(c.budget - root) < 0.06 for c in out.candidates) >= len(out.candidates) // 2


def test_speed_search_finds_the_largest_budget_meeting_the_speedup():
    obj, st = Objective("min_speedup", 1.6), SearchSettings(tol=0.02, max_candidates=8)
    out = run_search(synthetic(lambda b: 3 * (1 - b), speed), obj, st)
    root = (1 / 1.6 - 0.25) / 0.75
    best = ranked(obj, out.candidates)[0]  # most accurate meeting the speed-up = largest feasible budget here
    assert speed(best.budget) >= 1.6 - 1e-9
    assert root - 0.03 <= best.budget <= root + 1e-9


def test_unreachable_limit_stops_and_reports_the_closest_candidate():
    obj, st = Objective("max_accuracy_drop", 0.0), SearchSettings(max_candidates=6)
    out = run_search(synthetic(lambda b: 0.5 + 5 * (1 - b), speed), obj, st)  # never below 0.5 points
    assert ranked(obj, out.candidates) == []
    best = best_effort(obj, out.candidates)
    assert best is not None and best.drop == min(c.drop for c in out.candidates)
    assert len(out.candidates) <= 6 and out.stop_reason


def test_noisy_curve_terminates_within_the_candidate_limit():
    rng = np.random.default_rng(0)
    obj, st = Objective("max_accuracy_drop", 1.0), SearchSettings(max_candidates=5)
    out = run_search(synthetic(lambda b: 6 * (1 - b) + rng.normal(0, 0.8), lambda b: speed(b) * (1 + rng.normal(0, 0.03))), obj, st)
    assert 1 <= len(out.candidates) <= 5
    budgets = [c.budget for c in out.candidates]
    assert len(set(budgets)) == len(budgets) and all(st.lo <= b <= st.hi for b in budgets)


def test_plan_stops_when_the_bracket_ends_are_within_the_subset_noise():
    """BBC News (212 validation samples, 0.47 points each): 0.2484 missed by one sample, 0.3371 met; their drops differ
    by less than either one's standard error, so no budget between them can be told apart."""
    obj, st = Objective("max_accuracy_drop", 1.0), SearchSettings(max_candidates=5)
    seen = [Candidate(id=0, budget=0.6, phase="bracket", drop=0.0, drop_se=0.0), Candidate(id=1, budget=0.45, phase="bracket", drop=0.47, drop_se=0.47),
            Candidate(id=2, budget=0.2484, phase="bracket", drop=1.42, drop_se=1.05), Candidate(id=3, budget=0.3371, phase="interpolate", drop=0.94, drop_se=0.94)]
    b, why = plan_next(obj, seen, st)
    assert b is None and "standard error" in why
    # the same drops measured four times as precisely: the search goes on between them
    precise = [Candidate(**{**c.__dict__, "drop_se": (c.drop_se or 0) / 4}) for c in seen]
    b, why = plan_next(obj, precise, st)
    assert b is not None and 0.2484 < b < 0.3371
    # a wide bracket (0.2484 missed, 0.45 met) is split even when its ends are within the noise: they differ in speed
    wide = seen[:3]
    b, why = plan_next(obj, wide, st)
    assert b is not None and 0.2484 < b < 0.45


def test_accuracy_search_stops_when_the_next_budget_would_gain_less_than_the_timing_resolves():
    """minilm-sentiment, session 7: 0.6 met, 0.35 missed, 0.5375 missed, 0.567 met. The next budget (~0.552) would
    cost 2.6% less than 0.567: under the 4% a joint timing run resolves, so the search stops at four candidates."""
    obj = Objective("max_accuracy_drop", 1.0)
    seen = [Candidate(id=0, budget=0.6, phase="bracket", drop=0.63, drop_se=0.5), Candidate(id=1, budget=0.35, phase="bracket", drop=2.98, drop_se=0.86),
            Candidate(id=2, budget=0.5375, phase="interpolate", drop=1.33, drop_se=0.53), Candidate(id=3, budget=0.567, phase="interpolate", drop=0.78, drop_se=0.52)]
    b, why = plan_next(obj, seen, SearchSettings(max_candidates=5))
    assert b is None and "timing's resolution" in why and "2.6%" in why
    # a finer timing (1%) would split the bracket; so would a wider bracket at 4%
    b, _ = plan_next(obj, seen, SearchSettings(max_candidates=5, tie=0.01))
    assert b is not None and 0.5375 < b < 0.567
    b, _ = plan_next(obj, seen[:3], SearchSettings(max_candidates=5))
    assert b is not None and 0.5375 < b < 0.6
    # a speed limit is not stopped by it: there the candidates inside the bracket differ in accuracy, not speed
    fast = [Candidate(id=0, budget=0.5, phase="bracket", drop=2.0, speedup=1.7), Candidate(id=1, budget=0.53, phase="bracket", drop=1.8, speedup=1.55)]
    b, _ = plan_next(Objective("min_speedup", 1.6), fast, SearchSettings(max_candidates=5, tol=0.01))
    assert b is not None and 0.5 < b < 0.53


def test_plan_stops_when_the_lowest_budget_already_meets_the_limit():
    obj, st = Objective("max_accuracy_drop", 50.0), SearchSettings(lo=0.2, max_candidates=8)
    out = run_search(synthetic(lambda b: 1.0, speed), obj, st)
    assert min(c.budget for c in out.candidates) == pytest.approx(0.2)
    assert "lowest budget" in out.stop_reason


def test_objective_and_settings_reject_bad_limits():
    with pytest.raises(OptinError, match="min-speedup"):
        Objective("min_speedup", 1.0)
    with pytest.raises(OptinError, match="max-accuracy-drop"):
        Objective("max_accuracy_drop", -1)
    with pytest.raises(OptinError, match="search-range"):
        SearchSettings(lo=0.6, hi=0.5).check()
    assert plan_next(Objective("min_speedup", 2.0), [], SearchSettings())[0] == pytest.approx((0.5 - 0.2) / 0.8)


def test_validation_subset_is_sized_by_the_time_of_one_dense_pass():
    from optin_deploy.search import SUBSET_FLOOR, auto_subset_size

    assert auto_subset_size(1275, 1.1, 2.0) == 1275  # a cheap split: all of it
    assert auto_subset_size(10000, 8.0, 2.0) == 2500  # the share that fits in the time
    assert auto_subset_size(10000, 200.0, 2.0) == SUBSET_FLOOR  # never fewer than the floor (100 would fit) ...
    assert auto_subset_size(300, 80.0, 2.0) == 300  # ... nor more than the split
    SearchSettings(samples=0).check()
    with pytest.raises(OptinError, match="search-samples must be 0"):
        SearchSettings(samples=5).check()


def test_paired_standard_error():
    d = np.array([1, 1, 1, 0] * 25, bool)
    assert paired_drop_se(d, d) == 0.0
    p = d.copy()
    p[:10] = ~p[:10]
    se = paired_drop_se(d, p)
    assert 2.0 < se < 4.0  # 10 of 100 changed: sqrt(0.1 / 100) ~ 3.2 points


# ------------------------------------------------------------------------------ the real pipeline

FRONTIER_KEYS = {"format", "version", "model", "task", "metric", "profile", "runtime", "budget", "objective", "validation", "dense", "bench",
                 "candidates", "chosen", "reachable", "message", "search", "verification", "contest", "reference"}
CANDIDATE_KEYS = {"id", "budget", "phase", "scorer", "macs_ratio", "heads", "neurons", "accuracy", "dense_accuracy", "drop", "drop_se",
                  "agreement", "latency_ms", "dense_latency_ms", "speedup", "speedup_iqr", "met", "seconds", "verification"}


@pytest.fixture(scope="module")
def self_labelled_task(tmp_path_factory):
    """A tiny random BERT (large initial weights, so its predictions depend on the input) and a CSV
    labelled with its own predictions: the dense model is 100% accurate."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from optin_deploy.data import assets

    root = tmp_path_factory.mktemp("selflabel")
    tok_dir = assets.minilm().path
    torch.manual_seed(1)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                     max_position_embeddings=128, num_labels=2, initializer_range=0.5)
    model = BertForSequenceClassification(cfg).eval()
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    rng = random.Random(0)
    vocab = ["good", "great", "bad", "awful", "the", "film", "was", "a", "plot", "dull", "fun", "weak", "music", "actor", "scene", "long"]
    texts = [" ".join(rng.choices(vocab, k=rng.randint(4, 12))) for _ in range(240)]
    with torch.no_grad():
        enc = tok(texts, padding=True, return_tensors="pt")
        logits = model(**enc).logits
        model.classifier.bias[1] -= (logits[:, 1] - logits[:, 0]).median()  # balance the two classes
        pred = model(**enc).logits.argmax(-1).tolist()
    model.config.id2label, model.config.label2id = {0: "neg", 1: "pos"}, {"neg": 0, "pos": 1}  # string labels are matched by name
    model.save_pretrained(root / "model")
    copy_tokenizer(tok_dir, root / "model")
    assert 0.2 < sum(pred) / len(pred) < 0.8, "the fixture needs both classes"
    with open(root / "data.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for t, y in zip(texts, pred):
            w.writerow([t, ["neg", "pos"][y]])
    return root


def _search_args(task: Path, out: Path, *extra: str) -> list[str]:
    # one profile and MAC-weighed selection: which structure a budget buys must not depend on the host. The default
    # profile picks its runtime by measurement (OpenVINO bf16 on an AMX host, with MLP widths in multiples of 64: all
    # or nothing on this model's 64-wide MLPs) and weighs units by a latency table measured on the host
    return ["build", "--model", str(task / "model"), "--data", str(task / "data.csv"), "--profile", "x86-cpu-ort", "--select-by", "macs",
            "--calib-samples", "16", "--scoring", "exact", "--bench-iters", "3", "--search-rounds", "3", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def searched(self_labelled_task, tmp_path_factory):
    out = tmp_path_factory.mktemp("searched") / "bundle"
    run_cli(*_search_args(self_labelled_task, out, "--max-accuracy-drop", "35", "--search-candidates", "4"))
    return out


@pytest.mark.slow
def test_search_build_returns_a_candidate_meeting_the_limit(searched):
    report = json.loads((searched / "report.json").read_text())
    fr = json.loads((searched / "frontier.json").read_text())
    s = report["search"]
    assert s["reachable"] is True and report["gate"] is None
    chosen = next(c for c in fr["candidates"] if c["id"] == fr["chosen"])
    assert chosen["drop"] <= 35 and chosen["met"] is True
    ver = next(v for v in fr["verification"] if v["candidate"] == chosen["id"])
    assert ver["passed"] and ver["drop"] <= 35 and ver["samples"] == fr["validation"]["total"]
    # a small split is evaluated whole (sized by time): the candidate's own figures are its full-validation check
    assert fr["validation"]["samples"] == fr["validation"]["total"] and fr["validation"]["sized"].startswith("sized by time")
    assert ver["drop"] == pytest.approx(chosen["drop"], abs=1e-3) and ver["accuracy"] == pytest.approx(chosen["accuracy"], abs=1e-3)
    assert 1 <= fr["search"]["candidates_measured"] <= 4
    # the bundle holds the chosen structure, and its test figures were computed
    assert report["macs"]["ratio"] == pytest.approx(chosen["macs_ratio"], abs=1e-3)
    assert report["task"]["eval_split"] == "test" and "pruned" in report["accuracy"]
    assert not (searched / ".search").exists()


@pytest.mark.slow
def test_frontier_file_has_the_documented_schema(searched):
    fr = json.loads((searched / "frontier.json").read_text())
    assert set(fr) == FRONTIER_KEYS
    assert fr["format"] == FRONTIER_FORMAT and fr["version"] == 1
    assert fr["budget"]["seq_len"] == json.loads((searched / "report.json").read_text())["budget"]["seq_len"] and fr["budget"]["select_by"] in ("macs", "latency")
    assert fr["objective"] == {"kind": "max_accuracy_drop", "limit": 35.0, "description": "validation accuracy drop <= 35 points"}
    v = fr["validation"]
    assert v["split"] == "validation" and 0 < v["samples"] <= v["total"] and v["accuracy_se"] >= 0
    assert fr["dense"]["accuracy"] == 100.0 and fr["dense"]["latency_ms"] > 0
    assert fr["bench"]["interleaved"] is True and fr["bench"]["rounds"] == 3
    # an accuracy limit: every candidate timed in one joint run with the dense model (one dense p50 for all)
    assert fr["contest"]["joint"] is True and fr["contest"]["models"] == len(fr["candidates"]) + 1 and fr["contest"]["runs_per_model"] >= 3
    assert len({c["dense_latency_ms"] for c in fr["candidates"]}) == 1
    assert {str(c["id"]): round(c["speedup"], 4) for c in fr["candidates"]} == pytest.approx(fr["contest"]["speedups"], abs=1e-4)
    assert {"candidates_measured", "seconds", "stop_reason", "settings"} <= set(fr["search"])
    for c in fr["candidates"]:
        assert set(c) == CANDIDATE_KEYS
        assert 0 < c["budget"] < 1 and 0 < c["macs_ratio"] <= 1 and c["speedup"] > 0 and c["latency_ms"] > 0
        assert c["drop"] == pytest.approx(c["dense_accuracy"] - c["accuracy"], abs=1e-3)
        assert c["phase"] in ("bracket", "interpolate")
    md = (searched / "report.md").read_text()
    assert "## Accuracy / speed frontier" in md and "**chosen**" in md and "plots/frontier.png" in md
    assert (searched / "plots" / "frontier.png").stat().st_size > 1000
    assert "frontier.json" in json.loads((searched / "manifest.json").read_text())["files"]
    # the candidates were exported without parity checks; the adopted one was checked afterwards
    fmt = next(p.name for p in searched.iterdir() if (p / "pruned" / "export.json").exists())
    pruned = json.loads((searched / fmt / "pruned" / "export.json").read_text())
    assert "parity_deferred" not in pruned
    parity = json.loads((searched / fmt / "pruned" / "parity.json").read_text())
    assert parity and all(v is not None and v["passed"] for v in parity.values())


@pytest.mark.slow
def test_unreachable_accuracy_limit_ends_with_one_line_and_the_best_candidate(self_labelled_task, tmp_path):
    out = tmp_path / "bundle"
    proc = run_cli(*_search_args(self_labelled_task, out, "--max-accuracy-drop", "0", "--search-range", "0.1:0.3", "--search-candidates", "2",
                                 "--search-samples", "12"), check=False)
    assert proc.returncode == 4
    assert_one_line_error(proc, "no budget in [0.1, 0.3] keeps the validation accuracy drop within 0 points")
    assert "best candidate: budget" in proc.stderr and "raise --max-accuracy-drop" in proc.stderr
    report = json.loads((out / "report.json").read_text())
    fr = json.loads((out / "frontier.json").read_text())
    assert report["search"]["reachable"] is False and fr["reachable"] is False and fr["message"]
    assert all(c["met"] is False for c in fr["candidates"])
    best = min(fr["candidates"], key=lambda c: c["drop"])
    assert fr["chosen"] == best["id"]
    # a subset fixed by --search-samples: the candidates saw 12 samples, the best one was re-checked on all of them
    v = fr["validation"]
    assert v["samples"] == 12 < v["total"] and v["sized"] == "fixed by --search-samples"
    assert [x["samples"] for x in fr["verification"]] == [v["total"]]


@pytest.mark.slow
def test_a_search_cut_short_by_its_candidate_limit_does_not_claim_the_range_was_ruled_out(self_labelled_task, tmp_path):
    """One candidate at budget 0.6 misses a 0-point limit; the budgets above it were never tried, so the error says
    what was measured and names --search-candidates, not "no budget in [0.1, 0.99]" (which it could not know)."""
    out = tmp_path / "bundle"
    proc = run_cli(*_search_args(self_labelled_task, out, "--max-accuracy-drop", "0", "--search-candidates", "1", "--search-samples", "12"),
                   check=False)
    assert proc.returncode == 4
    assert_one_line_error(proc, "none of the 1 budgets measured in [0.1, 0.99] keeps the validation accuracy drop within 0 points")
    assert "no budget in" not in proc.stderr
    assert "stopped at its limit of 1 candidates (--search-candidates)" in proc.stderr
    assert "raise --search-candidates, or raise --max-accuracy-drop" in proc.stderr
    fr = json.loads((out / "frontier.json").read_text())
    assert fr["reachable"] is False and fr["search"]["stop_reason"] == "measured the maximum of 1 candidates"
    assert fr["message"].startswith("none of the 1 budgets measured")


@pytest.mark.slow
def test_speed_search_end_to_end_meets_the_speedup_or_says_it_cannot(self_labelled_task, tmp_path):
    """``build --min-speedup S`` without a budget: the most accurate candidate measured at least S times faster than
    the dense model in the same run; on a tiny model the speed-ups are mostly timing noise, so either outcome is
    possible, and each is checked for what it must hold."""
    out = tmp_path / "bundle"
    proc = run_cli(*_search_args(self_labelled_task, out, "--min-speedup", "1.05", "--search-candidates", "3"), check=False)
    fr = json.loads((out / "frontier.json").read_text())
    assert fr["objective"]["kind"] == "min_speedup" and fr["objective"]["limit"] == 1.05
    assert 1 <= fr["search"]["candidates_measured"] <= 3
    chosen = next(c for c in fr["candidates"] if c["id"] == fr["chosen"])
    report = json.loads((out / "report.json").read_text())
    if proc.returncode == 0:
        assert fr["reachable"] is True and chosen["met"] is True and chosen["speedup"] >= 1.05
        met = [c for c in fr["candidates"] if c["met"]]
        assert chosen["accuracy"] == max(c["accuracy"] for c in met)  # the most accurate of those fast enough
        assert report["macs"]["ratio"] == pytest.approx(chosen["macs_ratio"], abs=1e-3)
    else:
        assert proc.returncode == 4
        assert_one_line_error(proc, "reaches a 1.05x speed-up")
        assert "lower --min-speedup" in proc.stderr and fr["reachable"] is False
        assert chosen["speedup"] == max(c["speedup"] for c in fr["candidates"])


def test_search_flags_are_checked_before_any_work(tmp_path):
    out = tmp_path / "b"
    for args, msg in ((("--min-speedup", "0.9"), "--min-speedup must be above 1"),
                      (("--min-speedup", "2", "--flops", "0.5"), "--min-speedup searches the budget itself"),
                      (("--min-speedup", "2", "--max-accuracy-drop", "1"), "not both"),
                      (("--max-accuracy-drop", "1", "--search-range", "0.9:0.2"), "--search-range"),
                      (("--max-accuracy-drop", "1", "--search-reference", "0.5,x"), "--search-reference")):
        proc = run_cli("build", "--out", str(out), *args, check=False)
        assert_one_line_error(proc, msg)
        assert not out.exists()
    proc = run_cli("sweep", "--out", str(out), "--budgets", "0.5,2", check=False)
    assert_one_line_error(proc, "--budgets")
    proc = run_cli("sweep", "--out", str(out), "--scorer", "optin,nope", check=False)
    assert_one_line_error(proc, "unknown --scorer 'nope'")
    assert not out.exists()


@pytest.mark.slow
def test_sweep_writes_the_frontier_for_each_scorer_and_budget(self_labelled_task, tmp_path):
    out = tmp_path / "sweep"
    run_cli("sweep", "--model", str(self_labelled_task / "model"), "--data", str(self_labelled_task / "data.csv"), "--budgets", "0.3,0.7",
            "--scorer", "optin,magnitude", "--calib-samples", "16", "--scoring", "exact", "--search-rounds", "3", "--out", str(out))
    fr = json.loads((out / "frontier.json").read_text())
    assert set(fr) == FRONTIER_KEYS and fr["objective"] is None and fr["chosen"] is None
    assert sorted((c["scorer"], c["budget"]) for c in fr["candidates"]) == [("magnitude", 0.3), ("magnitude", 0.7), ("optin", 0.3), ("optin", 0.7)]
    assert all(c["phase"] == "sweep" and c["met"] is None for c in fr["candidates"])
    assert (out / "frontier.png").is_file() and "| magnitude |" in (out / "frontier.md").read_text()
    assert not any(p.name.startswith(".") and p.name != ".optin-deploy" for p in out.iterdir())  # no staging left; the marker stays
