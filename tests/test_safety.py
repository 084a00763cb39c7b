"""Safe by construction (issue 12): what the CLI does with the inputs real people give it.

Every failure case asserts the exit code, the single ``error:`` line on stderr, that no traceback
appears and what the file system holds afterwards (the user's files intact, no staging left, no
file created by a pickle payload). The CLI runs in-process (``optin_deploy.cli.main``) except for
the signal cases, which run a real subprocess and send it the real signal.
"""

from __future__ import annotations

import builtins
import csv
import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from optin_deploy import cli
from optin_deploy.errors import OptinError

WORDS = ["good", "great", "fine", "bad", "awful", "dull", "the", "film", "was", "a", "plot", "and"]
MODEL_LABELS = {0: "rotten", 1: "fresh"}


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(autouse=True)
def tmp_cache(tmp_path, monkeypatch):
    """Every test writes its scores/assets to a fresh cache, never the real one."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("OPTIN_DEPLOY_CACHE", str(cache))
    monkeypatch.setenv("OPTIN_DEPLOY_QUIET", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("OPTIN_DEPLOY_DEBUG", raising=False)
    return cache


def write_rows(path: Path, labels, n: int = 60, seed: int = 0, header=("text", "label")) -> Path:
    rng = random.Random(seed)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for i in range(n):
            row = [" ".join(rng.choices(WORDS, k=6))]
            if len(header) > 1:
                row.append(labels[i % len(labels)])
            w.writerow(row)
    return path


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    """A tiny random BERT (labels rotten/fresh) with its own small word-level tokenizer, and CSVs."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    root = tmp_path_factory.mktemp("safety")
    model = root / "model"
    model.mkdir()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (model / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab=str(model / "vocab.txt"), do_lower_case=True)  # transformers 5 ignores vocab_file=
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                     max_position_embeddings=64, num_labels=2, id2label=MODEL_LABELS, label2id={v: k for k, v in MODEL_LABELS.items()})
    BertForSequenceClassification(cfg).eval().save_pretrained(model)
    tok.save_pretrained(model)
    write_rows(root / "data.csv", ["Fresh", "ROTTEN"])  # the model's labels in another case
    write_rows(root / "unknown.csv", ["good", "bad"])
    write_rows(root / "signed.csv", ["-1", "1"])
    write_rows(root / "nan.csv", ["fresh"] * 29 + ["rotten"] * 30 + ["nan"])
    write_rows(root / "nolabel.csv", [], header=("text",))
    return root


@dataclass
class Result:
    code: int
    out: str
    err: str


def run(capsys, *args) -> Result:
    """``optin-deploy ARGS`` in this process."""
    capsys.readouterr()
    try:
        cli.main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out, err = capsys.readouterr()
    return Result(code, out, err)


TABLE = set("┏┃┡│└━┳╇┩┓┗┛─")


def lines_of(err: str) -> list[str]:
    """The non-empty stderr lines, less the per-layer table that prune and build print as a result."""
    return [l for l in err.splitlines() if l.strip() and not (set(l) & TABLE) and l.strip() != "kept per layer"]


def assert_one_line(res: Result, code: int, *needles: str) -> str:
    """Exit ``code``, exactly one non-empty stderr line, starting ``error:``, holding every needle."""
    lines = lines_of(res.err)
    assert res.code == code, (res.code, res.err)
    assert len(lines) == 1, res.err
    assert lines[0].startswith("error:"), res.err
    for n in needles:
        assert n.lower() in lines[0].lower(), (n, lines[0])
    assert "Traceback" not in res.err + res.out
    return lines[0]


def no_staging(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def user_folder(tmp_path: Path) -> Path:
    d = tmp_path / "project"
    d.mkdir()
    (d / "notes.txt").write_text("my work\n")
    (d / "src").mkdir()
    (d / "src" / "main.py").write_text("print('hi')\n")
    return d


def prune_args(task_dir: Path, out, *extra) -> list:
    return ["prune", task_dir / "model", "--data", task_dir / "data.csv", "--flops", "0.5", "--calib-samples", "8",
            "--scoring", "exact", "--no-reconstruct", "--out", out, *extra]


# ------------------------------------------------------------------------------ 1. files are sacred


@pytest.mark.parametrize("command", ["build", "prune", "export"])
def test_out_refuses_a_folder_the_tool_did_not_write(capsys, task_dir, tmp_path, command):
    d = user_folder(tmp_path)
    before = snapshot(d)
    m, data = task_dir / "model", task_dir / "data.csv"
    args = {"build": ["build", "--model", m, "--data", data, "--out", d],
            "prune": ["prune", m, "--data", data, "--out", d],
            "export": ["export", m, "--out", d]}[command]
    assert_one_line(run(capsys, *args), 2, "--force", "did not write")
    assert snapshot(d) == before and no_staging(tmp_path)


def test_lut_refuses_a_file_the_tool_did_not_write(capsys, task_dir, tmp_path):
    f = tmp_path / "table.json"
    f.write_text('{"mine": true}\n')
    assert_one_line(run(capsys, "lut", "--profile", "x86-cpu-ort", "--model", task_dir / "model", "--out", f), 2, "--force")
    assert f.read_text() == '{"mine": true}\n'


def test_out_refuses_the_current_folder_even_with_force(capsys, task_dir, tmp_path, monkeypatch):
    d = user_folder(tmp_path)
    monkeypatch.chdir(d)
    before = snapshot(d)
    for out in (".", str(d)):
        assert_one_line(run(capsys, *prune_args(task_dir, out, "--force")), 2, "current folder", "new folder")
    assert_one_line(run(capsys, *prune_args(task_dir, tmp_path)), 2, "current folder")  # a parent of the current folder
    assert snapshot(d) == before and no_staging(tmp_path)


def test_out_refuses_home_even_with_force(capsys, task_dir, tmp_path, monkeypatch):
    home = user_folder(tmp_path)
    monkeypatch.setenv("HOME", str(home))
    before = snapshot(home)
    assert_one_line(run(capsys, *prune_args(task_dir, "~", "--force")), 2, "home folder")
    assert snapshot(home) == before


def test_out_refuses_the_input_model_folder_even_with_force(capsys, task_dir):
    before = snapshot(task_dir / "model")
    line = assert_one_line(run(capsys, *prune_args(task_dir, task_dir / "model", "--force")), 2, "input")
    assert "new folder" in line
    assert_one_line(run(capsys, *prune_args(task_dir, task_dir, "--force")), 2, "input")  # a folder holding the input
    assert snapshot(task_dir / "model") == before


def test_out_refuses_an_existing_file(capsys, task_dir, tmp_path):
    f = tmp_path / "results.txt"
    f.write_text("precious\n")
    assert_one_line(run(capsys, *prune_args(task_dir, f)), 2, "existing file", "--force")
    assert f.read_text() == "precious\n" and no_staging(tmp_path)


def test_out_replaces_only_its_own_folder_and_force_replaces_others(capsys, task_dir, tmp_path):
    from optin_deploy.safe_out import MARKER

    out = tmp_path / "pruned"
    assert run(capsys, *prune_args(task_dir, out)).code == 0
    assert (out / MARKER).is_file() and (out / "optin_structure.json").is_file()
    (out / "model.safetensors").write_bytes(b"stale")  # a second run replaces the tool's own folder
    assert run(capsys, *prune_args(task_dir, out)).code == 0
    assert (out / "model.safetensors").read_bytes() != b"stale" and no_staging(tmp_path)
    d = user_folder(tmp_path)
    assert run(capsys, *prune_args(task_dir, d, "--force")).code == 0  # --force: the user asked for it
    assert (d / MARKER).is_file() and not (d / "notes.txt").exists() and no_staging(tmp_path)


def test_replacement_is_atomic_and_the_old_folder_survives_a_failure(tmp_path, monkeypatch):
    from optin_deploy import safe_out

    out = tmp_path / "bundle"
    out.mkdir()
    safe_out.write_marker(out, "bundle")
    (out / "report.json").write_text("old\n")
    real = os.replace
    calls = []

    def failing(src, dst):
        calls.append((Path(src).name, Path(dst).name))
        if len(calls) == 2:  # the rename of the new folder into place fails
            raise OSError(errno.EIO, "Input/output error")
        return real(src, dst)

    monkeypatch.setattr(safe_out.os, "replace", failing)
    with pytest.raises(OptinError, match="nothing was written"):
        with safe_out.staged_output(out, kind="bundle") as staging:
            (staging / "report.json").write_text("new\n")
    assert (out / "report.json").read_text() == "old\n" and no_staging(tmp_path)


def test_full_disk_during_prune_leaves_nothing_half_written(capsys, task_dir, tmp_path, monkeypatch):
    import safetensors.torch

    out = tmp_path / "pruned"
    assert run(capsys, *prune_args(task_dir, out)).code == 0
    before = snapshot(out)

    def full(model, filename, *a, **k):
        Path(filename).write_bytes(b"\0" * 100)  # a partial file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_model", full)
    assert_one_line(run(capsys, *prune_args(task_dir, out)), 5, "no space left")
    assert snapshot(out) == before and no_staging(tmp_path)


def test_prune_out_file_is_refused_before_work(capsys, task_dir, tmp_path, tmp_cache):
    f = tmp_path / "model.bin"
    f.write_bytes(b"user data")
    assert_one_line(run(capsys, *prune_args(task_dir, f)), 2, "existing file")
    assert f.read_bytes() == b"user data" and not (tmp_cache / "scores").exists()


def test_stale_staging_of_dead_runs_is_removed_and_live_ones_kept(capsys, task_dir, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        out = tmp_path / "pruned"
        stale = tmp_path / f".pruned.tmp-{dead.pid}-abc"
        other = tmp_path / f".pruned.tmp-{live.pid}-def"
        for d in (stale, other):
            d.mkdir()
            (d / "model.safetensors").write_bytes(b"x" * 1000)
        assert run(capsys, *prune_args(task_dir, out)).code == 0
        assert not stale.exists() and other.exists() and out.is_dir()
    finally:
        live.kill()
        live.wait()


# ------------------------------------------------------------------------- the new user's sequence


@pytest.fixture(scope="module")
def bundle(task_dir, tmp_path_factory):
    """``optin-deploy build --out b`` on the tiny model (a subprocess: the real console entry point)."""
    root = tmp_path_factory.mktemp("bundle")
    env = {**os.environ, "OPTIN_DEPLOY_CACHE": str(root / "cache"), "OPTIN_DEPLOY_QUIET": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "optin_deploy.cli", "build", "--model", str(task_dir / "model"),
                           "--data", str(task_dir / "data.csv"), "--flops", "0.5", "--calib-samples", "16", "--calib-length", "8",
                           "--bench-iters", "3", "--scoring", "exact", "--out", "b"], cwd=root, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return root / "b"


def _no_absolute_paths_into(folder: Path, bundle_dir: Path) -> None:
    for f in [folder / "report.json", folder / "manifest.json", *folder.glob("onnx/*/*.json")]:
        text = f.read_text()
        json.loads(text, parse_constant=lambda c: pytest.fail(f"{f} holds {c}: not valid JSON"))
        assert str(bundle_dir) not in text and ".tmp-" not in text, f


@pytest.mark.slow  # a whole build in a subprocess (the real console entry point)
def test_new_user_sequence_build_bench_eval_and_after_moving(capsys, bundle, tmp_path, monkeypatch):
    from optin_deploy.safe_out import MARKER

    assert (bundle / MARKER).is_file() and (bundle / "onnx" / "dense" / "model.onnx").is_file()
    _no_absolute_paths_into(bundle, bundle)
    report = json.loads((bundle / "report.json").read_text())
    hint = json.loads((bundle / "pruned" / "optin_task.json").read_text())
    assert report["scoring"]["calib_length"] == 8 and hint["max_length"] == 64  # evaluation: the data's length up to the model's limit
    assert report["task"]["labels"] == ["rotten", "fresh"]
    monkeypatch.chdir(bundle.parent)
    for root in ("b", None):
        if root is None:  # mv b elsewhere, from another folder
            moved = tmp_path / "elsewhere" / "b2"
            moved.parent.mkdir()
            bundle.rename(moved)
            monkeypatch.chdir(tmp_path)
            root = "elsewhere/b2"
        try:
            r = run(capsys, "bench", f"{root}/onnx/dense", f"{root}/onnx/pruned", "--iters", "2", "--warmup", "1", "--batch", "2", "--seq-len", "8")
            assert r.code == 0 and "pruned" in r.out, r.err
            r = run(capsys, "eval", f"{root}/onnx/dense", f"{root}/onnx/pruned", "--json", tmp_path / "eval.json")
            assert r.code == 0, r.err
            res = json.loads((tmp_path / "eval.json").read_text())
            assert set(res["models"]) == {"dense", "pruned"}
            r = run(capsys, "eval", f"{root}/onnx/dense", f"{root}/onnx/pruned", "--runtime", "torch-cpu")
            assert r.code == 0, r.err
        finally:
            if root != "b":
                moved.rename(bundle)  # the module-scoped bundle goes back for other tests


# ---------------------------------------------------------------------- 2. no code from model files


class Payload:
    """Unpickling this creates the file ``path``: proof that pickle ran."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (builtins.open, (self.path, "w"))


@pytest.mark.parametrize("how", ["pth", "bin", "ckpt", "timm", "export-pt", "transformers-bin"])
def test_pickle_checkpoints_are_refused_and_never_run(capsys, task_dir, tmp_path, how):
    marker = tmp_path / "PWNED"
    payload = {"arch": "vit_tiny_patch16_224", "state_dict": {"w": Payload(marker)}}
    out = tmp_path / "out"
    if how == "transformers-bin":
        from transformers import BertForSequenceClassification

        folder = tmp_path / "evil-model"
        m = BertForSequenceClassification.from_pretrained(task_dir / "model")
        m.save_pretrained(folder)
        (folder / "model.safetensors").unlink()
        sd = dict(m.state_dict())
        sd["payload"] = Payload(marker)
        torch.save(sd, folder / "pytorch_model.bin")
        for f in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            if (task_dir / "model" / f).is_file():
                (folder / f).write_bytes((task_dir / "model" / f).read_bytes())
        args = ["build", "--model", folder, "--data", task_dir / "data.csv", "--out", out]
    else:
        suffix = {"pth": ".pth", "bin": ".bin", "ckpt": ".ckpt", "timm": ".pth", "export-pt": ".pt"}[how]
        f = tmp_path / f"evil{suffix}"
        torch.save(payload, f)
        spec = f"timm:vit_tiny_patch16_224@{f}" if how == "timm" else f
        args = ["export", spec, "--out", out] if how == "export-pt" else ["prune", spec, "--out", out]
    assert not marker.exists()
    assert_one_line(run(capsys, *args), 2, "pickle", "safetensors")
    assert not marker.exists() and not out.exists() and no_staging(tmp_path)


def test_no_unsafe_loading_anywhere_in_the_package():
    import optin_deploy

    pkg = Path(optin_deploy.__file__).parent
    for f in pkg.rglob("*.py"):
        text = f.read_text()
        assert "weights_only=False" not in text, f
        assert "trust_remote_code=True" not in text, f
        assert "allow_pickle=True" not in text, f
        assert "pickle.load" not in text, f


# ------------------------------------------------------------------------------------- 3. signals


def _start_build(task_dir: Path, root: Path) -> subprocess.Popen:
    env = {**os.environ, "OPTIN_DEPLOY_CACHE": str(root / "cache"), "OPTIN_DEPLOY_QUIET": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("OPTIN_DEPLOY_DEBUG", None)
    return subprocess.Popen([sys.executable, "-m", "optin_deploy.cli", "build", "--model", str(task_dir / "model"),
                             "--data", str(task_dir / "data.csv"), "--flops", "0.5", "--calib-samples", "16",
                             "--bench-iters", "1000000", "--scoring", "exact", "--select-by", "macs", "--out", str(root / "b")],
                            cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_staging(proc: subprocess.Popen, root: Path, what: str = "model.onnx", timeout: float = 240) -> Path:
    """Wait until the build's staging folder holds ``what`` (real work under way)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        stagings = list(root.glob(".b.tmp-*"))
        if stagings and list(stagings[0].rglob(what)):
            return stagings[0]
        if proc.poll() is not None:
            pytest.fail(f"build ended early ({proc.returncode}): {proc.stderr.read()}")
        time.sleep(0.2)
    proc.kill()
    pytest.fail("no staging folder appeared")


@pytest.mark.slow
@pytest.mark.parametrize("sig, code, name", [(signal.SIGINT, 130, "SIGINT"), (signal.SIGTERM, 143, "SIGTERM")])
def test_signal_stops_the_build_removes_staging_and_exits_nonzero(task_dir, tmp_path, sig, code, name):
    proc = _start_build(task_dir, tmp_path)
    _wait_for_staging(proc, tmp_path)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    lines = lines_of(err)
    assert proc.returncode == code, err
    assert len(lines) == 1 and lines[0].startswith("error: interrupted by " + name), err
    assert "Traceback" not in err
    assert not (tmp_path / "b").exists() and no_staging(tmp_path)


LOST_STOP = r"""
import sys, time
from optin_deploy import interrupts
interrupts.install()
swallowed, ready = 0, False
t0 = time.monotonic()
try:
    while time.monotonic() - t0 < 60:
        try:
            if not ready:  # inside the try: the parent's signal can land while print is still returning
                ready = True
                print("ready", flush=True)
            time.sleep(0.01)
        except KeyboardInterrupt:
            if not swallowed:  # as when the signal lands in a finaliser: Python prints 'Exception ignored'
                swallowed += 1
                continue
            raise
except interrupts.Terminated as exc:
    print("stopped", exc.signum, swallowed, flush=True)
    sys.exit(0)
sys.exit(1)
"""


def test_a_stop_signal_whose_exception_was_lost_is_delivered_again(tmp_path):
    """The CI failure of stop 19: one SIGTERM in ~50 left a build benchmarking on (its exception was
    lost). The watchdog delivers the signal again until the CLI handles it."""
    proc = subprocess.Popen([sys.executable, "-c", LOST_STOP], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert out.split() == ["stopped", str(int(signal.SIGTERM)), "1"]


def test_a_stop_signal_inside_a_deferred_section_waits_for_its_end():
    from optin_deploy import interrupts

    previous = interrupts.install()
    finished = False
    try:
        with pytest.raises(interrupts.Terminated) as info:
            with interrupts.deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(50):  # the handler runs between these bytecodes and must not raise here
                    time.sleep(0.001)
                finished = True
        assert finished and info.value.signum == signal.SIGTERM
    finally:
        interrupts.restore(previous)


@pytest.mark.slow
def test_staging_left_by_a_killed_build_is_removed_by_the_next_run(capsys, task_dir, tmp_path):
    proc = _start_build(task_dir, tmp_path)
    staging = _wait_for_staging(proc, tmp_path, what="*.safetensors")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert staging.exists()  # SIGKILL cannot be caught: the staging folder stays behind...
    r = run(capsys, *prune_args(task_dir, tmp_path / "b"))  # ...until the next run on the same --out
    assert r.code == 0, r.err
    assert not staging.exists() and no_staging(tmp_path) and (tmp_path / "b" / "optin_structure.json").is_file()


# ---------------------------------------------------------------------------- 4. figures are right


def test_string_labels_are_matched_to_id2label_case_insensitively(task_dir):
    from optin_deploy.zoo import load_task

    task = load_task(str(task_dir / "model"), str(task_dir / "data.csv"), max_length=None)
    assert task.data.label_names == ["rotten", "fresh"] and task.data.task_type == "classification"
    rows = list(csv.DictReader(open(task_dir / "data.csv")))
    want = {"fresh": 1, "rotten": 0}
    texts = {r["text"]: want[r["label"].lower()] for r in rows}
    for split in ("train", "validation", "test"):
        s = getattr(task.data, split)
        assert [texts[t] for t in s.inputs] == s.labels.tolist()
    assert task.max_length == 64  # evaluation: up to the model's limit, not the calibration length


@pytest.mark.parametrize("data, shown", [("unknown.csv", "'good'"), ("signed.csv", "'-1'"), ("nan.csv", "'nan'")])
def test_labels_the_model_does_not_know_are_an_error_naming_both_sets(capsys, task_dir, tmp_path, data, shown):
    out = tmp_path / "o"
    line = assert_one_line(run(capsys, "prune", task_dir / "model", "--data", task_dir / data, "--out", out), 2,
                           "does not know", shown, "model labels: rotten, fresh")
    assert "regression" not in line and not out.exists()


# ----------------------------------------------------------------------------------- 5. the cache heals


def test_corrupt_score_cache_entry_is_reported_discarded_and_recomputed(capsys, task_dir, tmp_path, tmp_cache):
    assert run(capsys, *prune_args(task_dir, tmp_path / "p1")).code == 0
    entries = list((tmp_cache / "scores").glob("*.json"))
    assert len(entries) == 1
    good = entries[0].read_text()
    for bad in (good[: len(good) // 2], ""):  # truncated, then empty
        entries[0].write_text(bad)
        r = run(capsys, *prune_args(task_dir, tmp_path / "p1"))
        lines = lines_of(r.err)
        assert r.code == 0 and len(lines) == 1 and lines[0].startswith("warning:") and "corrupt" in lines[0], r.err
        assert json.loads(entries[0].read_text()).keys() == json.loads(good).keys()
    assert [p.name for p in (tmp_cache / "scores").iterdir()] == [entries[0].name]  # no temporary files left


def test_cache_writers_use_unique_temporary_names(tmp_path, monkeypatch):
    from optin_deploy.core import score_cache as api
    from optin_deploy.core.scoring import RawScores

    seen = []
    real = api.os.replace

    def record(src, dst):
        seen.append(Path(src).name)
        return real(src, dst)

    monkeypatch.setattr(api.os, "replace", record)
    raw = RawScores([torch.ones(2)], [torch.ones(2)], [torch.ones(3)], [torch.ones(3)], "exact", 1.0, {})
    for _ in range(2):
        api._write_cached(tmp_path / "k.json", raw)
    assert len(set(seen)) == 2 and all(n.endswith(".tmp") for n in seen)


# --------------------------------------------------------------------------------- 6. one line always


@pytest.mark.parametrize("args, needle", [
    (["build", "--flops", "abc"], "--flops"),
    (["build", "--bogus"], "no such option"),
    (["bench"], "missing argument"),
    (["export", "x"], "missing option"),
    (["prune", "--latency"], "no such option"),
])
def test_usage_errors_are_one_line(capsys, args, needle):
    assert_one_line(run(capsys, *args), 2, needle)


def test_bench_on_missing_or_truncated_onnx(capsys, tmp_path):
    assert_one_line(run(capsys, "bench", tmp_path / "a.onnx", tmp_path / "b.onnx"), 2, "does not exist")
    t = tmp_path / "t.onnx"
    t.write_bytes(os.urandom(2000))
    assert_one_line(run(capsys, "bench", t, t, "--labels", "x,y"), 2, "truncated or corrupt")


@pytest.mark.parametrize("args, needle", [
    (["bench", "a.onnx", "b.onnx", "--iters", "0"], "--iters"),
    (["bench", "a.onnx", "b.onnx", "--batch", "0"], "--batch"),
    (["eval", "a.onnx", "b.onnx", "--batch-size", "0"], "--batch-size"),
    (["build", "--bench-iters", "0"], "--bench-iters"),
    (["build", "--latency-ms", "nan"], "finite"),
    (["build", "--latency-ms", "inf"], "finite"),
    (["build", "--latency-ms", "-1"], "positive"),
    (["build", "--flops", "nan"], "--flops"),
    (["build", "--flops", "inf"], "--flops"),
    (["prune", "--flops", "0"], "--flops"),
    (["prune", "--probes", "0"], "--probes"),
    (["build", "--probes", "0"], "--probes"),
])
def test_bad_numbers_are_refused_before_any_work(capsys, tmp_path, tmp_cache, monkeypatch, args, needle):
    monkeypatch.chdir(tmp_path)
    assert_one_line(run(capsys, *args), 2, needle)
    assert not (tmp_cache / "zoo").exists() and list(tmp_path.iterdir()) == [tmp_cache] or not tmp_cache.exists()


def test_build_without_a_label_column_fails_before_the_pipeline(capsys, task_dir, tmp_path, tmp_cache):
    out = tmp_path / "b"
    assert_one_line(run(capsys, "build", "--model", task_dir / "model", "--data", task_dir / "nolabel.csv", "--out", out),
                    2, "no labels", "--label-column")
    assert not out.exists() and no_staging(tmp_path) and not (tmp_cache / "scores").exists()


def test_export_refuses_an_unsupported_opset(capsys, task_dir, tmp_path):
    out = tmp_path / "e"
    assert_one_line(run(capsys, "export", task_dir / "model", "--out", out, "--opset", "5"), 2, "--opset 5", "not supported")
    assert not out.exists() and no_staging(tmp_path)


def test_flops_budget_that_removes_every_unit_is_refused_before_scoring(capsys, task_dir, tmp_path, tmp_cache):
    out = tmp_path / "p"
    args = ["prune", task_dir / "model", "--data", task_dir / "data.csv", "--calib-samples", "8", "--scoring", "exact", "--out", out]
    assert_one_line(run(capsys, *args, "--flops", "0.0001"), 2, "remove every head and neuron", "smallest budget")
    assert not out.exists() and not (tmp_cache / "scores").exists()  # refused before scoring


def test_flops_budget_that_empties_a_layer_warns_in_one_line(capsys, task_dir, tmp_path):
    out = tmp_path / "p"
    r = run(capsys, "prune", task_dir / "model", "--data", task_dir / "data.csv", "--calib-samples", "8", "--scoring", "exact",
            "--flops", "0.025", "--out", out)  # just above the smallest budget (the profile keeps neurons in eights)
    lines = lines_of(r.err)
    assert r.code == 0 and len(lines) == 1 and lines[0].startswith("warning: the budget empties layer"), r.err
    assert (out / "optin_structure.json").is_file()


def test_latency_budget_the_dense_model_already_meets_stops(task_dir):
    from optin_deploy.core.costs import CostModel
    from optin_deploy.latency_budget import select_for_latency
    from optin_deploy.models import load_model

    model = load_model(task_dir / "model")
    costs = CostModel(2, [4, 4], [64, 64], lambda l, h: 0.1 * h, [0.001, 0.001], 0.5, "ms")
    measured = []

    def measure(m):
        measured.append(m)
        return 1.0

    scores = ([torch.ones(4), torch.ones(4)], [torch.ones(64), torch.ones(64)])
    with pytest.raises(OptinError, match="dense model already meets --latency-ms 100"):
        select_for_latency(model, scores, None, costs, 100.0, measure)
    assert len(measured) == 1  # one measurement of the dense model, no search rounds


def test_debug_shows_the_traceback(capsys):
    with pytest.raises(OptinError):
        cli.main(["--debug", "prune", "--flops", "2"])
    r = run(capsys, "prune", "--flops", "2")
    assert_one_line(r, 2, "--flops")


def test_old_flag_spellings_still_work_with_one_warning(capsys, task_dir, tmp_path):
    """``--calib`` / ``--max-length`` (prune) and ``--split`` (eval) are hidden, deprecated spellings of
    ``--data`` / ``--calib-length`` / ``--eval-split``; a bare ``--json`` still means ``--json -``."""
    out = tmp_path / "p"
    r = run(capsys, "prune", task_dir / "model", "--calib", task_dir / "data.csv", "--max-length", "8", "--flops", "0.5",
            "--calib-samples", "8", "--scoring", "exact", "--no-reconstruct", "--out", out, "--json")
    assert r.code == 0, r.err
    warnings = [l for l in lines_of(r.err) if l.startswith("warning:")]
    assert warnings == ["warning: --calib is deprecated; use --data", "warning: --max-length is deprecated; use --calib-length"], r.err
    assert json.loads(r.out[r.out.index("{"):])["macs"]["ratio"] <= 0.5 + 1e-9
    assert_one_line(run(capsys, "prune", task_dir / "model", "--calib", task_dir / "data.csv", "--data", task_dir / "data.csv",
                        "--out", tmp_path / "q"), 2, "--calib is the old spelling of --data")
    assert_one_line(run(capsys, "eval", "a.onnx", "b.onnx", "--split", "train"), 2, "--split must be test or validation")
    assert_one_line(run(capsys, "eval", "a.onnx", "b.onnx", "--eval-split", "train"), 2, "--eval-split must be test or validation")


def test_every_command_module_is_registered_and_a_broken_one_fails_loudly(monkeypatch):
    """cli.py registers every module of COMMAND_MODULES; one that fails to import stops the CLI with
    its ImportError instead of silently dropping the command."""
    import importlib

    names = {c.name or c.callback.__name__ for c in cli.app.registered_commands} | {g.name for g in cli.app.registered_groups}
    assert {"build", "prune", "export", "bench", "eval", "lut", "sweep", "zoo", "profiles"} <= names, names
    real = importlib.import_module

    def broken(name, *a, **k):
        if name == "optin_deploy.commands.lut":
            raise ModuleNotFoundError("No module named 'missing_dependency'", name="missing_dependency")
        return real(name, *a, **k)

    monkeypatch.setattr(cli.importlib, "import_module", broken)
    monkeypatch.setattr(cli, "app", cli.typer.Typer())
    with pytest.raises(ModuleNotFoundError, match="missing_dependency"):
        cli._register_all()


def test_internal_errors_are_one_line_with_exit_1(capsys, monkeypatch):
    import optin_deploy.profiles as profiles

    def boom():
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(profiles, "list_profiles", boom)
    assert_one_line(run(capsys, "profiles", "list"), 1, "internal error RuntimeError: boom", "--debug")


# ----------------------------------------------------------------------------------- 7. valid JSON


def test_report_json_is_strict_json(tmp_path):
    from optin_deploy.safe_out import write_json

    write_json(tmp_path / "r.json", {"a": float("nan"), "b": [float("inf"), 1.5], "c": {"d": -float("inf")}})
    text = (tmp_path / "r.json").read_text()
    assert json.loads(text, parse_constant=lambda c: pytest.fail(c)) == {"a": None, "b": [None, 1.5], "c": {"d": None}}


@pytest.mark.slow  # uses the module's built bundle
def test_eval_on_data_without_labels_says_so(capsys, bundle, tmp_path):
    """Labels in another column than 'label': eval measures agreement only, and says why on stderr (it said nothing)."""
    data = tmp_path / "d.csv"
    data.write_text("text,sentiment\n" + "".join(f"a fine film {i},fresh\nan awful film {i},rotten\n" for i in range(10)))
    r = run(capsys, "eval", bundle, "--data", data)
    assert r.code == 0, r.err
    assert "has no labels (no column 'label'; columns are: text, sentiment): only the models' agreement is measured" in r.err
    r = run(capsys, "eval", bundle, "--data", data, "--label-column", "sentiment")
    assert r.code == 0 and "has no labels" not in r.err and "accuracy" in r.out, r.err
