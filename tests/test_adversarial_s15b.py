"""Session 15, second adversarial pass: budgets, latency tables and unusual plans, end to end.

* a latency table edited by hand or damaged (NaN / inf / negative fixed ms, a missing key, a wrong type, an unsorted
  width grid, a head table of the wrong length) is refused in one line naming the file; it crashed with a KeyError /
  TypeError (exit 1), or selected on NaN costs (every unit kept) or interpolated garbage;
* a bad ``--lut`` (missing, damaged, of another layer count) or a ``--latency-ms`` under the table's floor is refused
  before scoring (it was after);
* a table measured on a model of another size of the same family prices the model being pruned with that model's own
  head and neuron counts (its dense cost was the table's model's: a table of a narrower model made ``--flops 0.9``
  keep 0.76 of the MACs and reported a wrong predicted speed-up).
"""

from __future__ import annotations

import csv
import json
import math
import warnings

import pytest

from conftest import make_tiny_bert, run_cli, save_word_tokenizer
from optin_deploy.errors import OptinError
from optin_deploy.lut import LatencyTable, load_lut, read_lut
from test_lut import synthetic_table


def _edited(tmp_path, edit, name="lut.json"):
    d = synthetic_table().to_dict()
    edit(d)
    path = tmp_path / name
    path.write_text(json.dumps(d))  # json writes NaN / Infinity as a hand edit would
    return path


@pytest.mark.parametrize("edit,needle", [
    (lambda d: d["attn_ms"].__setitem__(2, math.nan), "attn_ms holds nan"),
    (lambda d: d["mlp_ms"].__setitem__(1, math.inf), "mlp_ms holds inf"),
    (lambda d: d.__setitem__("empty_model_ms", -5.0), "empty_model_ms is -5.0"),
    (lambda d: d.__setitem__("empty_model_ms", None), "empty_model_ms is None"),
    (lambda d: d.__setitem__("empty_model_ms", "3 ms"), "empty_model_ms is '3 ms'"),
    (lambda d: d.__setitem__("mlp_widths", [0, 32, 16, 48]), "not increasing whole widths from 0"),
    (lambda d: d.__setitem__("mlp_ms", [0.0, 0.3]), "mlp_ms has 2 entries for 4 mlp_widths"),
    (lambda d: d.__setitem__("attn_ms", [0.0, 1.0]), "attn_ms has 2 entries for a 4-head layer"),
    (lambda d: d["model"].pop("num_layers"), "model.num_layers is None"),
    (lambda d: d["model"].pop("heads"), "model.heads is None"),
    (lambda d: d.__setitem__("shapes", None), "field 'shapes' is NoneType"),
    (lambda d: d.pop("attn_ms"), "lacks attn_ms"),
    (lambda d: d.__setitem__("groups", [{"layers": [0]}]), "groups[0].attn_ms is None"),
    (lambda d: d.__setitem__("version", "1"), "version '1' is not a whole number"),
])
def test_an_edited_or_damaged_table_is_refused_naming_the_file(tmp_path, edit, needle):
    path = _edited(tmp_path, edit)
    with pytest.raises(OptinError) as exc:
        read_lut(path)
    msg = str(exc.value)
    assert needle in msg and str(path) in msg and "\n" not in msg, msg


def test_a_table_that_is_not_an_object_is_not_a_table(tmp_path):
    (tmp_path / "l.json").write_text("[1, 2]")
    with pytest.raises(OptinError, match="not an optin-deploy latency table"):
        read_lut(tmp_path / "l.json")


def test_noisy_but_sound_tables_still_load(tmp_path):
    """Negative attention / MLP entries are timing noise (held at >= 0 when read), not an edit: still accepted."""
    path = _edited(tmp_path, lambda d: d.__setitem__("mlp_ms", [0.0, -0.1, 0.5, 0.7]))
    assert read_lut(path).mlp_ms == [0.0, 0.0, 0.5, 0.7]
    assert isinstance(read_lut(synthetic_table().save(tmp_path / "ok.json")), LatencyTable)


def test_a_table_of_a_narrower_model_prices_this_models_own_units():
    """The table was measured on a 48-wide, 4-head model; the model pruned is 96 wide with 8 heads (same family and
    layer count). Its dense cost counts its own 96 neurons and 8 heads, so a fraction budget is a fraction of it."""
    t = synthetic_table()
    small = make_tiny_bert()
    from transformers import BertConfig, BertForSequenceClassification

    wide = BertForSequenceClassification(BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=3, num_attention_heads=8,
                                                    intermediate_size=96, max_position_embeddings=64, num_labels=3)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cm_small, cm_wide = load_lut(t, small), load_lut(t, wide)
    assert cm_small.neuron_counts == [48] * 3 and cm_wide.neuron_counts == [96] * 3 and cm_wide.head_counts == [8] * 3
    assert cm_wide.dense() == pytest.approx(cm_wide.total([8] * 3, [96] * 3))
    assert cm_wide.dense() > cm_small.dense()
    assert cm_wide.attn(0, 8) > cm_wide.attn(0, 4)  # more heads than the table: extrapolated, not held at 4 heads' cost
    # the prediction of a wider plan grows past the table's widest MLP (np.interp held it flat)
    assert t.mlp(96) > t.mlp(48) and t.predict([4] * 3, [96] * 3) > t.predict([4] * 3, [48] * 3)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("s15b")
    model = make_tiny_bert(num_labels=2)
    model.config.id2label, model.config.label2id = {0: "neg", 1: "pos"}, {"neg": 0, "pos": 1}
    model.save_pretrained(root / "model")
    save_word_tokenizer(root / "model")
    with open(root / "data.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(80):
            w.writerow([" ".join(f"w{(i * 7 + k) % 100}" for k in range(6)), ["neg", "pos"][i % 2]])
    return root


def _no_scoring(monkeypatch):
    import optin_deploy.pruning as pruning

    def boom(*a, **k):
        raise AssertionError("scored before refusing the latency table")

    monkeypatch.setattr(pruning, "compute_scores", boom)


@pytest.mark.parametrize("case,needle", [
    ("missing", "does not exist"),
    ("nan", "attn_ms holds nan"),
    ("layers", "latency table is for a 2-layer model, this model has 3 layers; measure one"),
    ("floor", "below what pruning can reach on this table"),
])
def test_a_bad_lut_is_refused_before_scoring(tiny_folder, tmp_path, monkeypatch, case, needle):
    _no_scoring(monkeypatch)
    lut = {"missing": tmp_path / "none.json",
           "nan": _edited(tmp_path, lambda d: d["attn_ms"].__setitem__(1, math.nan)),
           "layers": synthetic_table(L=2).save(tmp_path / "two.json"),
           "floor": synthetic_table().save(tmp_path / "ok.json")}[case]
    budget = ["--latency-ms", "0.5"] if case == "floor" else ["--select-by", "latency", "--flops", "0.5"]
    r = run_cli("build", "--model", tiny_folder / "model", "--data", tiny_folder / "data.csv", "--profile", "x86-cpu-ort",
                "--calib-samples", "8", "--calib-length", "16", *budget, "--lut", lut, "--out", tmp_path / "b", check=False)
    lines = [l for l in r.stderr.splitlines() if l.startswith("error:")]
    assert r.returncode == 2 and len(lines) == 1 and needle in lines[0], r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "b").exists()


def test_a_latency_target_the_dense_model_meets_is_found_when_the_table_over_predicts_it():
    """The table predicts the dense model above the target, so it is not measured up front; the first pruned round
    measures far under the target and the loop raises the budget until the selection is the dense model. It stopped
    there and shipped that first, far smaller round (a 2 ms model for a 10 ms target the 6 ms dense model meets);
    now the dense model is measured then, and a target it meets is nothing to prune."""
    from optin_deploy.adapters import get_adapter
    from optin_deploy.latency_budget import select_for_latency
    from test_lut import scores

    model = make_tiny_bert()
    t = synthetic_table()  # dense predicted 7.6 ms
    measured = []

    def measure(m):
        a = get_adapter(m)
        dense = a.heads_per_layer() == [4, 4, 4] and a.neurons_per_layer() == [48, 48, 48]
        measured.append(dense)
        return 0.8 * t.dense_model_ms if dense else 0.2 * t.dense_model_ms

    with pytest.raises(OptinError, match="the dense model already meets --latency-ms"):
        select_for_latency(model, scores(model), None, t, 0.9 * t.dense_model_ms, measure)
    assert measured[0] is False and measured.count(True) == 1  # a pruned round first, the dense model measured once


@pytest.mark.slow
def test_a_latency_weighed_search_says_what_its_budget_is_a_fraction_of(tiny_folder, tmp_path):
    """``build --max-accuracy-drop P --select-by latency --lut T`` announced each candidate's budget as a fraction
    "of the dense MACs" while it was a fraction of the table's prunable latency (frontier.json said latency)."""
    lut = synthetic_table().save(tmp_path / "lut.json")
    r = run_cli("build", "--model", tiny_folder / "model", "--data", tiny_folder / "data.csv", "--profile", "x86-cpu-ort",
                "--calib-samples", "8", "--calib-length", "16", "--bench-iters", "2", "--no-baselines", "--search-rounds", "3",
                "--search-candidates", "2", "--select-by", "latency", "--lut", lut, "--max-accuracy-drop", "100",
                "--out", tmp_path / "b", check=False, env={"OPTIN_DEPLOY_QUIET": "0"})
    assert r.returncode in (0, 4), r.stderr
    err = " ".join(r.stderr.split())  # the console wraps its lines
    assert "of the dense model's prunable latency on the table" in err and "of the dense MACs" not in err
    assert json.loads((tmp_path / "b" / "frontier.json").read_text())["budget"]["select_by"] == "latency"


def test_a_profile_multiple_that_does_not_divide_the_layer_is_said(tiny_folder, tmp_path):
    """A profile of one's own with head_multiple 3 on 4-head layers (neuron_multiple 32 on 48 neurons): kept counts are
    whole multiples, so even --flops 1.0 dropped a head and 16 neurons per layer, silently."""
    prof = tmp_path / "mine.toml"
    prof.write_text('name = "mine"\nruntime = "onnxruntime-cpu"\ndevice = "cpu"\nprecision = "fp32"\nbatch_size = 2\nseq_len = 16\n'
                    'threads = 1\nhead_multiple = 3\nneuron_multiple = 32\n')
    r = run_cli("prune", tiny_folder / "model", "--data", tiny_folder / "data.csv", "--profile", prof, "--flops", "1.0",
                "--calib-samples", "8", "--calib-length", "16", "--no-reconstruct", "--out", tmp_path / "p")
    err = " ".join(r.stderr.split())
    assert "head_multiple 3 does not divide the heads per layer: a layer keeps at most 3 of 4, even at --flops 1.0" in err, err
    assert "neuron_multiple 32 does not divide the MLP neurons per layer: a layer keeps at most 32 of 48" in err, err
    from optin_deploy.pruning import warn_unreachable_units

    assert warn_unreachable_units(make_tiny_bert(), 2, 8) == []  # dividing multiples say nothing
    assert warn_unreachable_units(make_tiny_bert(), 8, 64) == []  # wider than the layer: all or nothing, every unit reachable
