"""Defects of the session-14b adversarial pass (labels, dtypes, choosing profiles, output paths)."""

from __future__ import annotations

import json

import torch

from conftest import make_tiny_bert, run_cli, save_word_tokenizer


def _folder(tmp_path, name="m", id2label=None, dtype=None, nan=False):
    m = make_tiny_bert(num_labels=2, layers=2)
    if id2label:
        m.config.id2label, m.config.label2id = dict(enumerate(id2label)), {n: i for i, n in enumerate(id2label)}
    if nan:
        with torch.no_grad():
            m.bert.encoder.layer[0].output.dense.weight[0, 0] = float("nan")
    if dtype is not None:
        m = m.to(dtype)
    m.save_pretrained(tmp_path / name)
    save_word_tokenizer(tmp_path / name)
    return tmp_path / name


def _csv(tmp_path, labels, n=60):
    rows = ["text,label"] + [f"w{5 + i % 50} w{7 + i % 40},{labels[i % len(labels)]}" for i in range(n)]
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "d.csv"


def test_labels_differing_only_in_case_are_matched_exactly(tmp_path):
    model = _folder(tmp_path, id2label=["Fresh", "fresh"])
    out = tmp_path / "e.json"
    run_cli("eval", model, "--data", _csv(tmp_path, ["Fresh", "fresh"]), "--json", out)
    r = json.loads(out.read_text())
    assert r["models"]["m"]["accuracy"] == 0.5  # each class its own id (before: both became id 0)


def test_a_label_the_model_names_twice_is_ambiguous(tmp_path):
    p = run_cli("eval", _folder(tmp_path, id2label=["pos", "pos"]), "--data", _csv(tmp_path, ["pos"]), check=False)
    assert p.returncode == 2 and "ambiguous" in p.stderr.strip().splitlines()[-1]


def test_eval_refuses_models_numbering_classes_differently(tmp_path):
    a = _folder(tmp_path, "a", id2label=["rotten", "fresh"])
    b = _folder(tmp_path, "b", id2label=["fresh", "rotten"])
    p = run_cli("eval", a, b, "--data", _csv(tmp_path, ["rotten", "fresh"]), check=False)
    assert p.returncode == 2 and "number their classes differently" in p.stderr


def test_nan_weights_are_refused(tmp_path):
    p = run_cli("prune", _folder(tmp_path, nan=True), "--data", _csv(tmp_path, [0, 1]), "--flops", "0.5", "--calib-samples", "4",
                "--out", tmp_path / "p", check=False)
    assert p.returncode == 2 and "not finite" in p.stderr and not (tmp_path / "p").exists()


def test_pruned_fp16_model_is_saved_in_fp16(tmp_path):
    from safetensors import safe_open

    run_cli("prune", _folder(tmp_path, dtype=torch.float16), "--data", _csv(tmp_path, [0, 1]), "--flops", "0.5", "--calib-samples", "4",
            "--scoring", "exact", "--out", tmp_path / "p")
    with safe_open(tmp_path / "p" / "model.safetensors", "pt") as f:
        assert {str(f.get_slice(k).get_dtype()) for k in f.keys()} == {"F16"}
    run_cli("eval", tmp_path / "p")


def test_choosing_profile_candidates_share_a_budget(tmp_path):
    from optin_deploy.errors import OptinError
    from optin_deploy.profiles import PROFILES_DIR, load_profile

    (tmp_path / "a.toml").write_text((PROFILES_DIR / "x86-cpu-ort.toml").read_text().replace('"x86-cpu-ort"', '"a"').replace("flops = 0.6", "flops = 0.9"))
    (tmp_path / "c.toml").write_text('name = "c"\nchoose_from = ["a.toml", "x86-amx-openvino-bf16"]\n')
    try:
        load_profile(str(tmp_path / "c.toml"))
    except OptinError as exc:
        assert "share one default budget" in str(exc)
    else:
        raise AssertionError("accepted")


def test_out_under_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    p = run_cli("prune", _folder(tmp_path), "--data", _csv(tmp_path, [0, 1]), "--calib-samples", "4", "--out", tmp_path / "f" / "p", check=False)
    assert p.returncode == 2 and "is a file, not a folder" in p.stderr
