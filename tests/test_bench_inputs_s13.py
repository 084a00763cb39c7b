"""bench / eval given folders the tool did not make, lengths a model cannot take, and unrelated models: each gets one
line naming what is wrong and what to pass (session 13; found by the session-12 adversarial pass)."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import make_tiny_bert, run_cli, text_inputs

from optin_deploy.bench import bench_artifacts
from optin_deploy.errors import OptinError
from optin_deploy.exporters import ShapeProfile, export_to_folder
from optin_deploy.runtimes.base import expand_bundle, resolve_artifact


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    d = tmp_path_factory.mktemp("e")
    model = make_tiny_bert()
    model.save_pretrained(d / "model")
    export_to_folder(model, text_inputs(), d / "dense", profile=ShapeProfile(opt_batch=2, max_batch=4, opt_seq=16, max_seq=64))
    return d


def _run(*args):
    return run_cli(*args, check=False)


def test_a_folder_of_exported_graphs_without_weights_names_the_file_to_pass(exported, tmp_path):
    """An optimum-style folder (config.json, tokenizer, model.onnx; no weights) was called corrupt, and a folder
    holding only model.onnx "a folder without config.json"."""
    optimum = tmp_path / "optimum"
    optimum.mkdir()
    shutil.copy2(exported / "model" / "config.json", optimum / "config.json")
    shutil.copy2(exported / "dense" / "model.onnx", optimum / "model.onnx")
    only = tmp_path / "only"
    only.mkdir()
    shutil.copy2(exported / "dense" / "model.onnx", only / "model.onnx")
    for folder in (optimum, only):
        for rt in (None, "ort-cpu"):
            with pytest.raises(OptinError, match=r"holds exported models \(model\.onnx\) but no PyTorch weights; pass the file itself"):
                resolve_artifact(folder, rt)
        r = _run("bench", folder, "--batch", 2, "--seq-len", 8, "--iters", 2)
        assert r.returncode == 2 and "corrupt" not in r.stderr and str(folder / "model.onnx") in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    # the file itself runs; a model folder holding weights and an .onnx beside them is still the model folder
    assert resolve_artifact(only / "model.onnx")[0] == "ort-cpu"
    both = tmp_path / "both"
    shutil.copytree(exported / "model", both)
    shutil.copy2(exported / "dense" / "model.onnx", both / "model.onnx")
    assert resolve_artifact(both) == ("torch-cpu", str(both), None)


def test_an_onnx_file_on_a_torch_runtime_says_which_runtime_reads_it(exported, tmp_path):
    loose = tmp_path / "model.onnx"  # not in an export folder (there torch-cpu runs the source model it records)
    shutil.copy2(exported / "dense" / "model.onnx", loose)
    with pytest.raises(OptinError, match=r"exported \.onnx file and torch-cpu runs PyTorch model folders; omit --runtime \(it runs on ort-cpu\)"):
        resolve_artifact(loose, "torch-cpu")


def test_a_bundle_missing_one_export_says_which(exported, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(exported / "dense", bundle / "onnx" / "dense")
    (bundle / "report.json").write_text(json.dumps({"runtime": "ort-cpu"}))
    with pytest.raises(OptinError, match=r"bundle .* is incomplete: onnx/pruned/export\.json is missing; .*onnx/dense\)"):
        expand_bundle([str(bundle)])
    r = _run("eval", bundle)
    assert r.returncode == 2 and "incomplete" in r.stderr and "config.json" not in r.stderr, r.stderr
    # a complete pair is still expanded, whatever else the folder holds
    shutil.copytree(exported / "dense", bundle / "onnx" / "pruned")
    assert expand_bundle([str(bundle)]) == [str(bundle / "onnx" / "dense"), str(bundle / "onnx" / "pruned")]


def test_a_length_beyond_the_models_positions_is_refused_when_given_and_named_when_default(exported, capsys):
    folder = exported / "model"  # 64 position embeddings
    with pytest.raises(OptinError, match=r"--seq-len 100 is longer than .* takes \(64 positions\); pass --seq-len 64 or less"):
        bench_artifacts([str(folder)], batch=2, seq_len=100, iters=2, warmup=0)
    capsys.readouterr()
    res = bench_artifacts([str(folder)], batch=2, iters=2, warmup=0)  # the default 128: timed at 64, and said so
    assert "timed at 64 tokens, not 128" in capsys.readouterr().err
    assert next(iter(res["models"].values()))["batch_size"] == 2
    bench_artifacts([str(folder)], batch=2, seq_len=64, iters=2, warmup=0)
    assert "warning" not in capsys.readouterr().err


def test_models_taking_different_inputs_are_not_compared_silently(exported, tmp_path, capsys):
    import torch

    class Tiny(torch.nn.Module):
        def forward(self, pixel_values):
            return pixel_values.mean(dim=(2, 3))

    img = tmp_path / "img.onnx"
    torch.onnx.export(Tiny(), (torch.randn(2, 3, 8, 8),), str(img), input_names=["pixel_values"], dynamic_axes={"pixel_values": {0: "b"}},
                      dynamo=False)
    dense = exported / "dense"
    bench_artifacts([str(dense), str(img)], batch=2, seq_len=8, iters=2, warmup=0)
    err = capsys.readouterr().err
    assert "take different inputs (pixel_values 2x3x8x8 against input_ids 2x8, attention_mask 2x8)" in err, err
    bench_artifacts([str(dense), str(dense / "model.onnx")], batch=2, seq_len=8, iters=2, warmup=0)  # the same model twice
    assert "different inputs" not in capsys.readouterr().err


def test_models_on_different_runtimes_are_named(exported, capsys):
    """An .onnx file against a PyTorch model folder: the ratio mixes the runtime with the pruning (session 14)."""
    bench_artifacts([str(exported / "dense"), str(exported / "model")], batch=2, seq_len=8, iters=2, warmup=0)
    err = capsys.readouterr().err
    assert "run on different runtimes (dense: ort-cpu, pruned: torch-cpu)" in err, err
    bench_artifacts([str(exported / "dense"), str(exported / "dense" / "model.onnx")], batch=2, seq_len=8, iters=2, warmup=0)
    assert "different runtimes" not in capsys.readouterr().err
