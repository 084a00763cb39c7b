"""Defects a session-13 adversarial pass found in profiles, lut, build, bench and the signal / disk-full paths: each is
refused or worded as the README promises (one line, the right exit code, nothing the user owns changed)."""

from __future__ import annotations

import errno
import json
import os

import pytest

from conftest import make_tiny_bert, run_cli

from optin_deploy import interrupts
from optin_deploy.build import BuildOptions, _budget
from optin_deploy.errors import OptinError, StorageError
from optin_deploy.runtimes.base import bench_settings
from optin_deploy.safe_out import published_name, staged_output, storage_error_in
from optin_deploy.target import resolve_target

FP32_PROFILE = os.path.join(os.path.dirname(__file__), "..", "profiles", "x86-cpu-ort-fp32.toml")


def test_lut_out_never_replaces_the_models_own_files_even_with_force(tmp_path):
    """`lut --model m --out m/model.safetensors --force` replaced the weights with the table (exit 0)."""
    m = tmp_path / "m"
    make_tiny_bert().save_pretrained(m)
    weights = m / "model.safetensors"
    before = weights.read_bytes()
    r = run_cli("lut", "--model", m, "--profile", "x86-cpu-ort", "--out", weights, "--force", check=False)
    assert r.returncode == 2 and "is this command's input" in r.stderr and "even with --force" in r.stderr, r.stderr
    assert weights.read_bytes() == before
    other = tmp_path / "notes.json"
    other.write_text("{}")
    r = run_cli("lut", "--model", m, "--profile", "x86-cpu-ort", "--out", other, check=False)
    assert r.returncode == 2 and "did not write" in r.stderr and other.read_text() == "{}"


def test_a_latency_table_with_a_profile_that_selects_by_macs_is_refused_up_front(tmp_path):
    """--lut was silently ignored when the profile (not --select-by) chose MACs; the same command with --select-by macs
    was refused."""
    import re

    lut = str(tmp_path / "t.json")
    text = open(FP32_PROFILE).read()
    MACS_PROFILE = str(tmp_path / "macs.toml")
    with open(MACS_PROFILE, "w") as f:
        f.write(re.sub(r"(?m)^select_by = .*$", 'select_by = "macs"', text))
    target = resolve_target(MACS_PROFILE)
    assert target.profile.budget_select_by == "macs"
    for opts in (BuildOptions(profile=MACS_PROFILE, flops=0.5, lut=lut), BuildOptions(profile=MACS_PROFILE, lut=lut)):
        with pytest.raises(OptinError, match=r"--lut is a latency table: a --flops budget \(profile x86-cpu-ort-fp32 selects by MACs\)"):
            _budget(opts, target)
    assert _budget(BuildOptions(profile=MACS_PROFILE, flops=0.5, lut=lut, select_by="latency"), target) == {"flops": 0.5}
    assert _budget(BuildOptions(profile=MACS_PROFILE, latency_ms=5.0, lut=lut), target) == {"latency_ms": 5.0}


def _bundle(tmp_path, bench_inputs: dict):
    root = tmp_path / "b"
    (root / "onnx" / "dense").mkdir(parents=True)
    (root / ".optin-deploy").write_text("bundle\n")
    (root / "manifest.json").write_text(json.dumps({"profile": {"name": "p", "batch_size": 8, "seq_len": 128, "threads": 2}}))
    (root / "report.json").write_text(json.dumps({"bench": {"inputs": bench_inputs}}))
    return root


def test_bench_of_a_bundle_times_at_the_shape_the_build_measured(tmp_path):
    """A model with 64 positions is built and timed at 8 x 64 under a 128-token profile; `bench BUNDLE` took the
    profile's 128 and every model failed."""
    from optin_deploy.safe_out import is_ours

    root = _bundle(tmp_path, {"input_ids": [8, 64], "attention_mask": [8, 64]})
    if not is_ours(root):
        pytest.skip("the bundle marker format changed")
    batch, seq, threads, source = bench_settings([str(root / "onnx" / "dense")], None, None, None)
    assert (batch, seq, threads) == (8, 64, 2) and "p" in source
    assert bench_settings([str(root)], 4, 32, None)[:2] == (4, 32)  # what is given wins
    img = _bundle(tmp_path / "i", {"pixel_values": [16, 3, 224, 224]})
    assert bench_settings([str(img)], None, None, None)[:2] == (16, 128)


def test_a_stop_after_an_inner_output_but_before_the_bundle_claims_nothing(tmp_path):
    """A pruned model written inside a build's staging folder was reported as "written in full (complete and usable)"
    after Ctrl-C, though the staging folder (and it) were removed."""
    interrupts._state.reset()
    out = tmp_path / "bundle"
    with pytest.raises(KeyboardInterrupt):
        with staged_output(out, kind="bundle") as staging:
            with staged_output(staging / "pruned", kind="pruned model", checked=True) as inner:
                (inner / "w").write_text("x")
            assert interrupts.published() == [str(staging / "pruned")]
            raise KeyboardInterrupt
    assert interrupts.published() == [] and not out.exists()
    with staged_output(out, kind="bundle") as staging:
        with staged_output(staging / "pruned", kind="pruned model", checked=True) as inner:
            (inner / "w").write_text("x")
    assert interrupts.published() == [str(out)] and (out / "pruned" / "w").is_file()
    interrupts._state.reset()


def test_a_full_disk_inside_a_library_is_a_storage_error_naming_the_published_path():
    """torch.onnx.export wraps the OSError of a full disk in its own error: export exited 2, not 5, naming a staging path."""
    class Wrapped(RuntimeError):
        pass

    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise Wrapped("export failed") from inner
    except Wrapped as exc:
        err = storage_error_in(exc, "/x/.e.tmp-12-ab_c9/model.onnx")
    assert isinstance(err, StorageError) and "no space left" in str(err) and "/x/e/model.onnx" in str(err) and ".tmp-" not in str(err)
    assert isinstance(storage_error_in(RuntimeError("[Errno 28] No space left on device"), "/x/f"), StorageError)
    assert storage_error_in(RuntimeError("unsupported operator aten::foo"), "/x/f") is None
    assert storage_error_in(OSError(errno.ENOENT, "missing"), "/x/f") is None
    assert published_name("/t/.b.tmp-7-xy/onnx/.dense.tmp-8-q/model.onnx") == "/t/b/onnx/dense/model.onnx"
    assert published_name("/t/my.tmp/x") == "/t/my.tmp/x"
