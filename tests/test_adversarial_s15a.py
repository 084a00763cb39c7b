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
