"""Defects a second adversarial "new user" pass found (session 11), each fixed and checked here:
data read differently from what the file says (quoted newlines, U+2028, 16-bit images, hidden files,
null / object texts, a known class missing from training), outputs that disagree with themselves
(eval's units, parity paths into deleted staging folders, elided table figures), and flags the
messages asked for but the commands lacked (sweep --force / --select-by, --opset 17)."""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from optin_deploy.data.loaders import images_to_tensor, load_data
from optin_deploy.errors import OptinError
from test_inputs_defects import FAST, WORDS, assert_one_line, save_bert, write_csv


pytestmark = pytest.mark.usefixtures("quiet_cache")  # conftest: a cache of its own per test, no hub


@pytest.fixture(scope="module")
def model3(tmp_path_factory) -> Path:
    return save_bert(tmp_path_factory.mktemp("m3") / "model")


def _records(n=60, extra=lambda i: ""):
    rng = random.Random(0)
    return [{"text": " ".join(rng.choices(WORDS, k=5)) + extra(i), "label": ["neg", "neu", "pos"][i % 3]} for i in range(n)]


def _all_texts(td):
    return list(td.train.inputs) + list(td.validation.inputs) + list(td.test.inputs)


def test_csv_keeps_newlines_inside_quoted_fields(tmp_path):
    recs = _records(extra=lambda i: "\nsecond line" if i % 5 == 0 else "")
    with open(tmp_path / "q.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["text", "label"])
        w.writeheader()
        w.writerows(recs)
    texts = _all_texts(load_data(tmp_path / "q.csv"))
    assert sorted(texts) == sorted(r["text"] for r in recs)
    assert sum("\nsecond line" in t for t in texts) == 12


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_unicode_line_separators_are_text(tmp_path, suffix):
    """U+2028 / U+0085 / form feeds inside a text are characters, not record ends (str.splitlines cut there)."""
    recs = _records(extra=lambda i: ["\u2028para", "\x85nel", "\x0cff", ""][i % 4])
    path = tmp_path / f"u{suffix}"
    if suffix == ".csv":
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, ["text", "label"])
            w.writeheader()
            w.writerows(recs)
    else:
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")
    assert sorted(_all_texts(load_data(path))) == sorted(r["text"] for r in recs)


def test_jsonl_text_must_be_a_string(tmp_path):
    for bad, kind in ((None, "null"), ({"title": "x"}, "dict"), (["a", "list"], "list")):
        recs = _records()
        recs[3]["text"] = bad
        path = tmp_path / "d.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in recs))
        with pytest.raises(OptinError, match=f"1 rows have no text in 'text' \\(e.g. a {kind} value\\)"):
            load_data(path)
    recs = _records()
    recs[3]["text"] = 42  # a number is text as it is written
    (tmp_path / "n.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert "42" in _all_texts(load_data(tmp_path / "n.jsonl"))


def test_a_known_class_may_be_missing_from_training(tmp_path, model3):
    """The model's own classes decide: named labels behave like class ids (any subset in any split)."""
    folder = tmp_path / "splits"
    folder.mkdir()
    rng = random.Random(1)
    for split, labels in (("train", ["neg", "neu"]), ("validation", ["neg", "neu", "pos"]), ("test", ["neg", "neu", "pos"])):
        with open(folder / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            for i in range(30):
                w.writerow([" ".join(rng.choices(WORDS, k=5)), labels[i % len(labels)]])
    from optin_deploy.zoo import load_task

    task = load_task(str(model3), str(folder), max_length=None)
    assert task.data.label_names == ["neg", "neu", "pos"]
    assert set(task.data.test.labels.tolist()) == {0, 1, 2} and set(task.data.train.labels.tolist()) == {0, 1}
    with pytest.raises(OptinError, match="not seen in training"):  # without a model, training decides the classes
        load_data(folder)


def test_16_bit_images_are_scaled_not_clipped(tmp_path):
    from PIL import Image

    a = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(a).save(tmp_path / "g16.png")
    Image.fromarray((a >> 8).astype(np.uint8)).save(tmp_path / "g8.png")
    t16, t8 = (images_to_tensor([tmp_path / f], 32, 0.5, 0.5, 3) for f in ("g16.png", "g8.png"))
    assert float((t16 == t16.max()).float().mean()) < 0.05  # clipping made 99% of it white
    assert float((t16 - t8).abs().max()) < 0.02


def test_hidden_files_in_class_folders_are_not_data(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / "img" / c / ".ipynb_checkpoints").mkdir(parents=True)
        for i in range(10):
            Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8)).save(tmp_path / "img" / c / f"{i}.png")
        Image.open(tmp_path / "img" / c / "0.png").save(tmp_path / "img" / c / ".ipynb_checkpoints" / "0-checkpoint.png")
        (tmp_path / "img" / c / "._0.png").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")  # AppleDouble
    td = load_data(tmp_path / "img", image_size=8)
    assert len(td.train) + len(td.validation) + len(td.test) == 20


def test_opset_17_is_accepted_like_the_default(tmp_path, model3):
    import onnx

    run_cli("export", model3, "--format", "onnx", "--opset", "17", "--out", tmp_path / "e17")
    assert [o.version for o in onnx.load(str(tmp_path / "e17" / "model.onnx")).opset_import if o.domain in ("", "ai.onnx")] == [17]
    assert_one_line(run_cli("export", model3, "--format", "onnx", "--opset", "16", "--out", tmp_path / "e16", check=False), 2,
                    "--opset 16 is not supported", "17 to")


def test_sweep_force_and_select_by(tmp_path, model3):
    data = write_csv(tmp_path / "d.csv", ["neg", "neu", "pos"], n=90)
    user = tmp_path / "results"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    args = ["sweep", "--model", model3, "--data", data, "--profile", "x86-cpu-ort", "--budgets", "0.5", "--calib-samples", "8",
            "--search-rounds", "3", "--out", user]
    assert_one_line(run_cli(*args, check=False), 2, "--force")
    assert_one_line(run_cli(*args, "--select-by", "flops", check=False), 2, "--select-by must be macs or latency")
    assert (user / "notes.txt").read_text() == "mine"
    run_cli(*args, "--force", "--select-by", "macs")
    assert json.loads((user / "frontier.json").read_text())["budget"]["select_by"] == "macs"
    assert not (user / "notes.txt").exists()


@pytest.mark.slow
def test_bundle_paths_exist_and_eval_states_units(tmp_path, model3):
    """Every "artifact" a bundle's JSON names exists (parity ran in a staging folder that is gone), and eval --json
    says its accuracy is a fraction while report.json's is percent."""
    out = tmp_path / "b"
    run_cli("build", "--model", model3, "--data", write_csv(tmp_path / "d.csv", ["neg", "neu", "pos"], n=90), "--out", out, *FAST)

    def artifacts(o):
        if isinstance(o, dict):
            for k, v in o.items():
                if k == "artifact" and isinstance(v, str):
                    yield v
                else:
                    yield from artifacts(v)
        elif isinstance(o, list):
            for v in o:
                yield from artifacts(v)

    for f in [out / "report.json", *out.glob("onnx/*/export.json")]:
        named = list(artifacts(json.loads(f.read_text())))
        assert named, f
        for a in named:
            assert "/." not in a and (Path(a) if os.path.isabs(a) else (out if f.name == "report.json" else f.parent) / a).is_file(), (f, a)
    ev = json.loads(run_cli("eval", out, "--json", "-").stdout)
    report = json.loads((out / "report.json").read_text())
    assert "fraction" in ev["units"]["accuracy"] and "percent" in report["accuracy"]["unit"] or "%" in report["accuracy"]["unit"]
    assert 100 * ev["models"]["pruned"]["accuracy"] == pytest.approx(report["accuracy"]["pruned"], abs=1e-3)


def test_bench_table_never_elides_figures():
    from rich.console import Console

    from optin_deploy.bench import print_bench_table

    def row(rt, p50, sp):
        return {"runtime": {"runtime": rt, "threads": 2}, "batch_size": 8, "p50_ms": p50, "p90_ms": p50 + 1.234, "p99_ms": 1016.04,
                "throughput_samples_per_s": 13613.4, "peak_memory_mb": 14, "speedup_p50": sp}

    for rts in (("openvino-cpu-bf16", "openvino-cpu-bf16"), ("ort-cpu", "openvino-cpu-bf16")):
        res = {"baseline": "dense", "mode": "blocks", "block": 10, "interleaved": True,
               "models": {"dense": row(rts[0], 20.195, 1.0), "pruned-fused-int8": row(rts[1], 13.04, 1.55)}}
        con = Console(width=80, record=True, force_terminal=False, file=open(os.devnull, "w"))
        print_bench_table(res, console=con)
        text = con.export_text()
        assert "…" not in text, text
        for fig in ("20.2", "21.4", "13.0", "14.3", "1016.0", "13613.4", "1.55x", "pruned-fused-int8"):
            assert fig in text, (fig, text)


def test_a_signal_after_the_command_finished_is_ignored(tmp_path):
    """The console script's process: a stop signal while Python shuts down (about a second with torch loaded)
    must not turn a finished, published run into exit 130."""
    code = ("import os, signal, sys, time; sys.argv = ['optin-deploy', 'profiles', 'list']\n"
            "from optin_deploy.cli import main\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "os.kill(os.getpid(), signal.SIGINT); os.kill(os.getpid(), signal.SIGTERM); time.sleep(0.3); print('finished')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("finished"), (proc.returncode, proc.stderr[-500:])


def test_a_stop_after_publication_says_the_output_is_complete(capsys):
    from optin_deploy import cli, interrupts

    interrupts.install()
    try:
        interrupts.note_published("/x/bundle")
        with pytest.raises(SystemExit) as e:
            cli._interrupted(interrupts.Terminated(signal.SIGINT))
        assert e.value.code == 130
        err = capsys.readouterr().err
        assert "after /x/bundle was written in full" in err and "no staging" not in err
    finally:
        interrupts.restore({})


def test_bench_defaults_to_what_the_build_measured_with(tmp_path):
    """``bench BUNDLE`` times at the bundle profile's batch, length and threads (the build's report figures), not at
    8 x 128 on every core; what is given on the command line wins; models of two bundles get the plain defaults."""
    from optin_deploy.runtimes.base import bench_settings

    def bundle(name, **profile):
        root = tmp_path / name
        (root / "onnx" / "dense").mkdir(parents=True)
        (root / "onnx" / "pruned").mkdir(parents=True)
        (root / ".optin-deploy").write_text("")
        (root / "manifest.json").write_text(json.dumps({"profile": {"name": name, **profile}}))
        return root

    b = bundle("b1", batch_size=1, seq_len=64, threads=4)
    assert bench_settings([str(b / "onnx" / "dense"), str(b / "onnx" / "pruned")], None, None, None) == (1, 64, 4, "the bundle's profile b1")
    assert bench_settings([str(b / "onnx" / "dense"), str(b / "onnx" / "pruned")], 16, None, 2)[:3] == (16, 64, 2)
    # a bad value given is kept, so that bench refuses it, not replaced by the profile's (--batch 0 timed 8 x 128)
    assert bench_settings([str(b / "onnx" / "dense"), str(b / "onnx" / "pruned")], 0, -1, None)[:3] == (0, -1, 4)
    other = bundle("b2", batch_size=2, seq_len=32, threads=1)
    assert bench_settings([str(b / "onnx" / "dense"), str(other / "onnx" / "pruned")], None, None, None) == (8, 128, None, None)
    assert bench_settings([str(tmp_path / "loose.onnx")], None, None, None) == (8, 128, None, None)
