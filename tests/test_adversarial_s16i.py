"""Session 16i: the deployment bundle as a production team receives it: files changed, replaced, added or removed
after the build are refused by every command that reads them; a copy without the hidden top-level marker is still
the bundle; an image bundle says exactly how its images were prepared."""

from __future__ import annotations

import csv
import hashlib
import json
import random
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_cli

pytestmark = pytest.mark.usefixtures("quiet_cache")


# ------------------------------------------------------------------ a bundle of files, no build (quick tier)


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _fake_bundle(root: Path, marker: bool = True) -> Path:
    """A bundle's layout (what build writes) with small files, and its manifest.json listing them."""
    files = {"onnx/pruned/model.onnx": b"onnx-pruned", "onnx/pruned/export.json": b'{"artifact": "model.onnx"}',
             "onnx/dense/model.onnx": b"onnx-dense", "onnx/dense/export.json": b'{"artifact": "model.onnx"}',
             "pruned/model.safetensors": b"weights", "pruned/vocab.txt": b"[PAD]\n", "pruned/.optin-deploy": b"{}",
             "report.json": b'{"runtime": "ort-cpu"}', "report.md": b"# report\n"}
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    listed = {n: {"bytes": len(d), "sha256": hashlib.sha256(d).hexdigest()} for n, d in files.items()}
    (root / "manifest.json").write_text(json.dumps({"created_by": "optin-deploy 0.1.0", "profile": {"name": "p", "batch_size": 1,
                                                                                                    "seq_len": 16, "threads": 1},
                                                    "files": listed}))
    if marker:
        (root / ".optin-deploy").write_text(json.dumps({"written_by": "optin-deploy", "kind": "bundle"}) + "\n")
    return root


def test_every_file_a_command_reads_is_checked_against_the_manifest(tmp_path):
    """Nothing compared a bundle's files with the sha256 manifest.json lists: the dense model.onnx copied over the pruned
    one was evaluated and timed as 'pruned' (accuracy and speed-up of another artefact than the report's), an added
    tokenizer file changed the ids silently. Each is now one line naming the file."""
    from optin_deploy.bundle_files import check_bundle_member
    from optin_deploy.errors import OptinError

    root = _fake_bundle(tmp_path / "b")
    for member in ("onnx/pruned", "onnx/pruned/model.onnx", "onnx/dense", "pruned"):
        check_bundle_member(root / member)  # untouched: passes
    cases = [
        (lambda: shutil.copy2(root / "onnx/dense/model.onnx", root / "onnx/pruned/model.onnx"), "onnx/pruned", r"onnx/pruned/model\.onnx has 10 bytes"),
        (lambda: (root / "onnx/pruned/model.onnx").write_bytes(b"onnx-PRUNED"), "onnx/pruned/model.onnx", r"onnx/pruned/model\.onnx differs from the sha256"),
        (lambda: (root / "pruned/vocab.txt").unlink(), "pruned", r"pruned/vocab\.txt is missing \(its manifest\.json lists it\)"),
        (lambda: (root / "pruned/special_tokens_map.json").write_text("{}"), "pruned", r"pruned/special_tokens_map\.json is not one of the files"),
        (lambda: (root / "report.json").write_text('{"runtime": "ort-cuda"}'), "onnx/dense", r"report\.json has"),
        (lambda: (root / "manifest.json").unlink(), "onnx/dense", r"its manifest\.json is missing"),
        (lambda: (root / "manifest.json").write_text("[]"), "pruned", r"its manifest\.json is damaged"),
    ]
    for tamper, member, msg in cases:
        shutil.rmtree(root)
        _fake_bundle(root)
        tamper()
        with pytest.raises(OptinError, match=rf"^bundle {root}: .*{msg}"):
            check_bundle_member(root / member)
    # a hash edited in manifest.json: the file no longer matches what it records
    shutil.rmtree(root)
    _fake_bundle(root)
    m = json.loads((root / "manifest.json").read_text())
    m["files"]["pruned/model.safetensors"]["sha256"] = "0" * 64
    (root / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(OptinError, match=r"pruned/model\.safetensors differs from the sha256"):
        check_bundle_member(root / "pruned")
    check_bundle_member(root / "onnx" / "pruned")  # a folder whose own files are intact is still read


def test_what_a_team_may_change_in_a_bundle_is_not_refused(tmp_path):
    """Files no command reads with a model (report.md, plots, notes at the top), hidden files, a folder exported into the
    bundle later (aoti/pruned, with a record of its own) and a read-only copy made without the top-level marker pass."""
    from optin_deploy.bundle_files import bundle_root, check_bundle_member

    root = _fake_bundle(tmp_path / "b")
    (root / "report.md").write_text("edited\n")
    (root / "NOTES.txt").write_text("ours\n")
    (root / "pruned" / ".DS_Store").write_bytes(b"\0")
    (root / "aoti" / "pruned").mkdir(parents=True)
    (root / "aoti" / "pruned" / "model.pt2").write_bytes(b"pt2")
    for member in ("onnx/pruned", "pruned", "aoti/pruned"):
        check_bundle_member(root / member)
    copy = tmp_path / "copy"
    copy.mkdir()
    for child in root.iterdir():  # cp -r b/* copy/: the hidden top-level marker stays behind
        if not child.name.startswith("."):
            (shutil.copytree if child.is_dir() else shutil.copy2)(child, copy / child.name)
    assert bundle_root(copy / "onnx" / "pruned") == copy.resolve()
    for p in sorted(copy.rglob("*"), reverse=True):
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        check_bundle_member(copy / "onnx" / "pruned")
        (copy / "onnx" / "pruned").chmod(0o755)
        (copy / "onnx" / "pruned" / "model.onnx").chmod(0o644)
        (copy / "onnx" / "pruned" / "model.onnx").write_bytes(b"other")
        from optin_deploy.errors import OptinError

        with pytest.raises(OptinError, match=r"onnx/pruned/model\.onnx has 5 bytes"):  # the marker-less copy is checked too
            check_bundle_member(copy / "onnx" / "pruned")
    finally:
        for p in copy.rglob("*"):
            p.chmod(0o755 if p.is_dir() else 0o644)
    assert bundle_root(tmp_path) is None and bundle_root(tmp_path / "nowhere") is None


def test_bench_takes_a_copied_bundles_own_shape_without_the_hidden_marker(tmp_path):
    """``cp -r B/* DEST`` leaves B/.optin-deploy behind; bench of DEST then timed at 8 x 128 (here: not the batch-1 profile
    the report was measured at; a 64-position model failed outright) instead of the bundle's own shape."""
    from optin_deploy.runtimes.base import bench_settings

    root = _fake_bundle(tmp_path / "b", marker=False)
    got = bench_settings([str(root / "onnx" / "dense"), str(root / "onnx" / "pruned")], None, None, None)
    assert got[:3] == (1, 16, 1) and got[3] == "the bundle's profile p"


# ------------------------------------------------------------------ image preprocessing, as served


def test_an_image_bundle_says_the_steps_its_figures_were_prepared_with_and_they_reproduce(tmp_path):
    """The serving block of an image bundle gave only the size, mean and std: PIL's own default resize filter (bicubic)
    then gave inputs 0.6 off the evaluated ones, and a saved Hugging Face image data set gave no preprocessing at all.
    The block now says every step, and a client that follows them with PIL and numpy gets the evaluated inputs."""
    from PIL import Image

    from optin_deploy.data.loaders import load_data

    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(rng.integers(0, 255, (20 + i, 24, 3), dtype=np.uint8)).save(tmp_path / "imgs" / c / f"{i}.png")
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    d = load_data(tmp_path / "imgs", image_size=16, image_mean=mean, image_std=std)
    steps = d.source["steps"]
    assert "bilinear" in steps and "no crop" in steps and "RGB" in steps and d.source["num_channels"] == 3
    # the client: the steps, literally (the split is seeded; take every image and compare as a set)
    files = sorted((tmp_path / "imgs").rglob("*.png"))
    filt = Image.BILINEAR if "bilinear" in steps else Image.BICUBIC
    h, w = d.source["image_size"]
    ours = np.stack([(np.asarray(Image.open(f).convert("RGB").resize((w, h), filt), dtype=np.float32) / 255.0
                      - np.float32(d.source["image_mean"])) / np.float32(d.source["image_std"]) for f in files]).transpose(0, 3, 1, 2)
    theirs = torch.cat([d.train.inputs, d.validation.inputs, d.test.inputs]).numpy()
    assert len(theirs) == len(ours)
    for x in theirs:
        assert np.abs(ours - x).reshape(len(ours), -1).max(1).min() < 1e-5
    datasets = pytest.importorskip("datasets")
    imgs = [Image.open(f).convert("RGB") for f in files]
    feats = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog"])})
    datasets.Dataset.from_dict({"img": imgs, "label": [i % 2 for i in range(len(imgs))]}, features=feats).save_to_disk(str(tmp_path / "hf"))
    hf = load_data(tmp_path / "hf", image_size=16, image_mean=mean, image_std=std)
    assert {k: hf.source[k] for k in ("image_size", "image_mean", "image_std", "steps")} == \
           {k: d.source[k] for k in ("image_size", "image_mean", "image_std", "steps")}


def test_a_shipped_image_processor_that_prepares_images_otherwise_is_named(tmp_path):
    """pruned/preprocessor_config.json (the source model's processor: resize the short side, centre crop, bicubic) is what
    transformers' AutoImageProcessor reads; the figures were computed without the crop and bilinear. The serving block
    says so instead of leaving the team to serve with other inputs."""
    from types import SimpleNamespace

    from optin_deploy.data.loaders import image_source
    from optin_deploy.serving import serving_spec

    src = {"path": "/x", **image_source(16, [0.5] * 3, [0.5] * 3, 3)}
    task = SimpleNamespace(modality="image", input_names=["pixel_values"],
                           data=SimpleNamespace(task_type="classification", label_names=["a", "b"], source=src))
    export = {"format": "onnx", "artifact": str(tmp_path / "onnx" / "pruned" / "model.onnx"), "artifacts": {"onnx": {}}}
    (tmp_path / "pruned").mkdir()
    spec = serving_spec(task, export, tmp_path, None)
    assert spec["preprocessing"]["steps"] == src["steps"] and "note" not in spec["preprocessing"]
    (tmp_path / "pruned" / "preprocessor_config.json").write_text(json.dumps(
        {"do_resize": True, "size": {"height": 16, "width": 16}, "resample": 2, "do_center_crop": False}))
    assert "note" not in serving_spec(task, export, tmp_path, None)["preprocessing"]
    (tmp_path / "pruned" / "preprocessor_config.json").write_text(json.dumps(
        {"do_resize": True, "size": {"shortest_edge": 18}, "resample": 3, "do_center_crop": True, "crop_size": {"height": 16, "width": 16}}))
    note = serving_spec(task, export, tmp_path, None)["preprocessing"]["note"]
    assert "shortest_edge" in note and "crops the centre" in note and "bicubic" in note


# ------------------------------------------------------------------ a real build, tampered (slow)

WORDS = ["good", "great", "fine", "bad", "awful", "dull", "the", "film", "was", "a", "plot", "and"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A tiny BERT whose predictions vary (its classifier bias centred), built into a bundle once (no baselines)."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    root = tmp_path_factory.mktemp("s16i")
    model = root / "model"
    model.mkdir()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (model / "vocab.txt").write_text("\n".join(vocab) + "\n")
    torch.manual_seed(0)
    labels = {0: "rotten", 1: "fresh"}
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                     max_position_embeddings=64, num_labels=2, id2label=labels, label2id={v: k for k, v in labels.items()},
                     initializer_range=0.3)
    m = BertForSequenceClassification(cfg).eval()
    tok = BertTokenizerFast(vocab=str(model / "vocab.txt"), do_lower_case=True)
    tok.save_pretrained(model)
    rng = random.Random(0)
    texts = [" ".join(rng.choices(WORDS, k=rng.randint(3, 90))) for _ in range(200)]
    with torch.no_grad():
        lg = m(**tok(texts[:80], padding=True, truncation=True, max_length=64, return_tensors="pt")).logits
        m.classifier.bias[1] -= (lg[:, 1] - lg[:, 0]).median()
    m.save_pretrained(model)
    with open(root / "data.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i, t in enumerate(texts):
            w.writerow([t, ["fresh", "rotten"][i % 2]])
    out = root / "b"
    run_cli("build", "--model", model, "--data", root / "data.csv", "--profile", "x86-cpu-ort", "--flops", "0.5", "--calib-samples", "16",
            "--calib-length", "32", "--bench-iters", "3", "--no-baselines", "--out", out)
    return out


def _eval(bundle, *extra):
    return run_cli("eval", bundle, "--json", "-", *extra, check=False)


@pytest.mark.slow  # a build
def test_a_tampered_bundle_is_refused_by_eval_and_bench_and_an_intact_copy_gives_the_reports_figures(built, tmp_path):
    report = json.loads((built / "report.json").read_text())
    copy = tmp_path / "copy"
    copy.mkdir()
    for child in built.iterdir():  # cp -r b/* copy/ (no hidden marker), then read-only
        if not child.name.startswith("."):
            (shutil.copytree if child.is_dir() else shutil.copy2)(child, copy / child.name)
    modes = {p: p.stat().st_mode for p in copy.rglob("*")}
    for p in sorted(modes, reverse=True):
        p.chmod(modes[p] & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        r = _eval(copy)
        assert r.returncode == 0, r.stderr
        ev = json.loads(r.stdout)
        assert 100 * ev["models"]["pruned"]["accuracy"] == pytest.approx(report["accuracy"]["pruned"], abs=1e-3)
        assert 100 * ev["models"]["pruned"]["agreement_vs_baseline"] == pytest.approx(report["accuracy"]["agreement"], abs=1e-3)
        assert report["accuracy"]["agreement"] < 100  # the dense and pruned models predict differently: a swap would show
    finally:
        for p, mode in modes.items():
            p.chmod(mode)
    # the dense graph put in the pruned one's place (same input names): eval printed the dense model's accuracy as the pruned's
    bad = tmp_path / "bad"
    shutil.copytree(built, bad)
    shutil.copy2(bad / "onnx" / "dense" / "model.onnx", bad / "onnx" / "pruned" / "model.onnx")
    for cmd in (("eval", bad), ("bench", bad, "--iters", "2", "--warmup", "1"),
                ("bench", bad / "onnx" / "dense", bad / "onnx" / "pruned" / "model.onnx", "--iters", "2", "--warmup", "1"),
                ("bench", bad, "--runtimes", "ort-cpu", "--iters", "2", "--warmup", "1")):
        r = run_cli(*cmd, check=False)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, (cmd, r.stderr)
        assert "onnx/pruned/model.onnx has" in r.stderr and "Traceback" not in r.stderr, r.stderr
    # the tokenizer edited: the ids change
    shutil.rmtree(bad)
    shutil.copytree(built, bad)
    with open(bad / "pruned" / "vocab.txt", "a") as f:
        f.write("extra\n")
    r = _eval(bad)
    assert r.returncode == 2 and "pruned/vocab.txt has" in r.stderr, r.stderr
    r = run_cli("eval", bad, "--runtime", "torch-cpu", check=False)
    assert r.returncode == 2 and "pruned/vocab.txt" in r.stderr, r.stderr


def test_no_drop_against_the_fp32_export_is_not_shown_as_a_loss(tmp_path):
    """Session 15e fixed '-0.00 pts' for the pruned-vs-dense drop; the drop against the fp32 dense export beside it (report.md
    and the build's last line) still printed -0.00 for an unchanged accuracy."""
    from optin_deploy.report import write_markdown

    lat = {"p50": 2.0, "p90": 2.0, "p99": 2.0}
    row = {"graph": "fused", "precision": "int8", "p50_ms": 2.0, "runtime": "ort-cpu", "accuracy": 50.0, "fused_operators": {}}
    report = {"model": "m", "task": {"name": "t", "type": "classification", "eval_samples": 30, "eval_split": "test"}, "profile": "p",
              "runtime": "ort-cpu", "budget": {"flops": 0.5}, "scoring": {"method": "exact", "scorer": "optin"}, "scoring_seconds": 1.0,
              "metric": "accuracy", "accuracy": {"dense": 50.0, "pruned": 50.0, "drop": 0.0, "agreement": 100.0, "metric": "accuracy"},
              "macs": {"dense": 10, "pruned": 5, "ratio": 0.5, "seq_len": 8}, "latency_ms": {"dense": lat, "pruned": lat},
              "throughput": {"dense": 1.0, "pruned": 1.0, "speedup": 1.0, "mean_based": {"dense": 1.0, "pruned": 1.0, "speedup": 1.0}},
              "artifacts": {}, "precision": "int8",
              "baselines": {"models": {"dense": row, "pruned": row, "dense-fused-fp32": dict(row, precision="fp32")}, "same_way": "dense",
                            "speedup_vs_same_way": 1.0, "fastest_dense": "dense", "speedup_vs_fastest_dense": 1.0,
                            "reference_fp32": "dense-fused-fp32", "speedup_vs_fp32_dense_export": 1.0, "drop_vs_fp32_dense": 0.0}}
    write_markdown(report, tmp_path / "r.md", {})
    text = (tmp_path / "r.md").read_text()
    assert "+0.00 points against it" in text and "-0.00" not in text
