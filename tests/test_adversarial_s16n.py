"""Session 16n: sentence-transformers folders the users bring (modules.json, 1_Pooling, sentence_bert_config.json,
config_sentence_transformers.json): the embeddings equal ``SentenceTransformer.encode`` or the folder is refused in
one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from optin_deploy.adapters.embedding import pool, read_pooling
from optin_deploy.errors import OptinError

from conftest import copy_tokenizer, run_cli

pytestmark = pytest.mark.usefixtures("quiet_cache")

T = {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.base.modules.transformer.Transformer"}
N = {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.base.modules.normalize.Normalize"}


def P(path="1_Pooling", t="sentence_transformers.sentence_transformer.modules.pooling.Pooling"):
    return {"idx": 1, "name": "1", "path": path, "type": t}


def _files(folder: Path, modules, pooling: dict | None = None, pool_dir: str = "1_Pooling", sbert: dict | None = None,
           st_cfg: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "modules.json").write_text(json.dumps(modules))
    if pooling is not None:
        (folder / pool_dir).mkdir(parents=True, exist_ok=True)
        (folder / pool_dir / "config.json").write_text(json.dumps(pooling))
    if sbert is not None:
        (folder / "sentence_bert_config.json").write_text(json.dumps(sbert))
    if st_cfg is not None:
        (folder / "config_sentence_transformers.json").write_text(json.dumps(st_cfg))
    return folder


CLS = {"pooling_mode": "cls"}
REFUSED = {
    # a module folder outside the model (its config was read from anywhere on the disk)
    "escape": ([T, P("../elsewhere"), N], "not a folder inside the model folder"),
    # the Pooling module's config.json is missing: it was read as mean pooling
    "missing-config": ([T, P("9_Pool"), N], "is missing"),
    # no Pooling module at all: it was read as mean pooling
    "no-pooling": ([T, N], "Transformer -> Normalize"),
    # classes of the user's own whose names end like the library's: they were taken for them (never imported)
    "custom-pooling": ([T, P(t="mypkg.MyAttentionPooling"), N], "mypkg.MyAttentionPooling"),
    "custom-transformer": ([dict(T, type="mypkg.EvilTransformer"), P(), N], "mypkg.EvilTransformer"),
    # a sparse encoder (SPLADE): MLMTransformer + SpladePooling passed as Transformer + Pooling
    "splade": ([dict(T, type="sentence_transformers.sparse_encoder.models.MLMTransformer"),
                P(t="sentence_transformers.sparse_encoder.models.SpladePooling")], "MLMTransformer"),
    # another order: Normalize before Pooling was read as pooling then normalising
    "order": ([T, N, P()], "Transformer -> Normalize -> Pooling"),
    "two-poolings": ([T, P(), dict(P("1b"), idx=3), N], "Pooling -> Pooling"),
    # an entry that is not an object was skipped
    "non-object": ([T, "junk", P(), N], "should be a list of modules"),
    # the encoder in a sub-folder: the root's config.json / weights were used
    "transformer-subfolder": ([dict(T, path="0_Transformer"), P(), N], "0_Transformer"),
    "dense": ([T, P(), {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}, N], "Dense"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_pipelines_other_than_transformer_pooling_normalize_are_refused(tmp_path, case):
    modules, message = REFUSED[case]
    f = _files(tmp_path / "m", modules, CLS)
    _files(tmp_path / "elsewhere", [], CLS)  # the escaping path's target exists
    with pytest.raises(OptinError) as exc:
        read_pooling(f)
    assert message in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("cfg,message", [
    ([1, 2], "should be a JSON object"),  # crashed with AttributeError
    ({"pooling_mode": 3}, "pooling_mode is 3"),
    ({"pooling_mode": "attention"}, "unsupported pooling mode"),
])
def test_bad_pooling_configs_are_one_line(tmp_path, cfg, message):
    with pytest.raises(OptinError, match=message):
        read_pooling(_files(tmp_path / "m", [T, P(), N], cfg))


@pytest.mark.parametrize("sbert,message", [([128], "should be a JSON object"), ({"max_seq_length": "128"}, "not a number of tokens"),
                                           ({"do_lower_case": "yes"}, "not true or false")])
def test_bad_sentence_bert_config_is_one_line(tmp_path, sbert, message):
    with pytest.raises(OptinError, match=message):
        read_pooling(_files(tmp_path / "m", [T, P(), N], CLS, sbert=sbert))


def test_weightedmean_and_legacy_concatenation_match_the_package():
    """weightedmean was refused; the legacy boolean keys hold it between mean_sqrt_len_tokens and lasttoken."""
    pytest.importorskip("sentence_transformers")
    from sentence_transformers.sentence_transformer.modules import Pooling

    g = torch.Generator().manual_seed(0)
    tok = torch.randn(3, 7, 8, generator=g)
    right = torch.ones(3, 7, dtype=torch.long)
    right[1, 4:] = 0
    right[2, 1:] = 0
    for mask in (right, right.flip(1)):
        ref = Pooling(8, pooling_mode="weightedmean")({"token_embeddings": tok, "attention_mask": mask})["sentence_embedding"]
        torch.testing.assert_close(pool(tok, mask, ("weightedmean",)), ref, rtol=0, atol=1e-6)


def test_legacy_keys_with_weightedmean_in_the_library_order(tmp_path):
    cfg = {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": True, "pooling_mode_weightedmean_tokens": True,
           "pooling_mode_lasttoken": True}
    # weightedmean was dropped silently when another mode was on: a 3-mode embedding where the library makes 4
    assert read_pooling(_files(tmp_path / "m", [T, P(), N], cfg)).modes == ("cls", "mean", "weightedmean", "lasttoken")


def test_default_prompt_is_refused_null_prompt_accepted(tmp_path):
    prompts = {"query": "query: ", "document": ""}
    with pytest.raises(OptinError, match="default_prompt_name 'query'"):
        read_pooling(_files(tmp_path / "a", [T, P(), N], CLS, st_cfg={"prompts": prompts, "default_prompt_name": "query"}))
    assert read_pooling(_files(tmp_path / "b", [T, P(), N], CLS, st_cfg={"prompts": prompts, "default_prompt_name": None})).modes == ("cls",)
    assert read_pooling(_files(tmp_path / "c", [T, P(), N], CLS, st_cfg={"prompts": prompts, "default_prompt_name": "document"})).normalize


# ------------------------------------------------------------------------- against SentenceTransformer.encode

TEXTS = ["Hello World, this is A Test.", "short", " ".join(["word"] * 120), "The Quick brown FOX jumps over the lazy dog " * 6]


def _st_folder(folder: Path, pooling: dict, sbert: dict | None, normalize: bool = True) -> Path:
    from transformers import BertConfig, BertModel

    from optin_deploy.data.assets import minilm

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                         max_position_embeddings=512)).save_pretrained(folder)
    copy_tokenizer(minilm().path, folder)
    return _files(folder, [T, P(), N] if normalize else [T, P()], {"embedding_dimension": 32, **pooling}, sbert=sbert)


def _texts_csv(path: Path) -> Path:
    path.write_text("text\n" + "\n".join(f"sentence number {i} about things" for i in range(40)) + "\n")
    return path


def _ours_and_reference(folder: Path, data: Path, texts=TEXTS):
    SentenceTransformer = pytest.importorskip("sentence_transformers").SentenceTransformer

    from optin_deploy.zoo import load_task

    t = load_task(str(folder), str(data), max_length=None)
    with torch.no_grad():
        ours = torch.cat([t.model.eval()(**{k: v for k, v in t.encode([x]).items() if k in ("input_ids", "attention_mask")})
                          for x in texts]).numpy()
    ref = SentenceTransformer(str(folder), device="cpu").encode(texts, convert_to_numpy=True, batch_size=1)
    return t, ours, ref


def test_max_seq_length_truncates_as_sentence_transformers_does(tmp_path):
    """sentence_bert_config.json's max_seq_length was recorded but unused: texts were tokenised to 512 tokens where
    the library truncates at max_seq_length, so every long text got another embedding (max |diff| 0.04)."""
    data = _texts_csv(tmp_path / "t.csv")
    f = _st_folder(tmp_path / "m", {"pooling_mode": ["weightedmean", "cls", "mean"]}, {"max_seq_length": 24, "do_lower_case": False})
    t, ours, ref = _ours_and_reference(f, data)
    assert t.max_length == 24 and ours.shape == ref.shape == (4, 96)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)


def test_without_max_seq_length_the_tokenizer_limit_applies(tmp_path):
    data = _texts_csv(tmp_path / "t.csv")
    f = _st_folder(tmp_path / "m", {"pooling_mode_max_tokens": True}, None, normalize=False)
    cfg = json.loads((f / "tokenizer_config.json").read_text())
    (f / "tokenizer_config.json").write_text(json.dumps({**cfg, "model_max_length": 32}))
    t, ours, ref = _ours_and_reference(f, data)
    assert t.max_length == 32
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)


def test_do_lower_case_needs_a_lower_casing_tokenizer(tmp_path):
    """do_lower_case true with a cased tokenizer: the library lower-cases every text first; optin-deploy (and the
    bundle's tokenizer) did not, so texts with capitals got other tokens. Refused in one line; an uncased one passes."""
    from transformers import BertTokenizerFast

    data = _texts_csv(tmp_path / "t.csv")
    f = _st_folder(tmp_path / "m", {"pooling_mode": "mean"}, {"max_seq_length": 64, "do_lower_case": True})
    t, ours, ref = _ours_and_reference(f, data)  # the MiniLM tokenizer lower-cases: fine
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)
    for x in ("tokenizer.json", "tokenizer_config.json"):
        (f / x).unlink()
    BertTokenizerFast(vocab=str(f / "vocab.txt"), do_lower_case=False).save_pretrained(f)
    proc = run_cli("build", "--model", f, "--data", data, "--flops", "0.5", "--out", tmp_path / "b", check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error:") and "do_lower_case" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "b").exists()


def test_custom_module_refused_by_the_cli_before_work(tmp_path):
    data = _texts_csv(tmp_path / "t.csv")
    f = _st_folder(tmp_path / "m", {"pooling_mode": "mean"}, None)
    mods = json.loads((f / "modules.json").read_text())
    mods[1]["type"] = "mypkg.pooling.MyPooling"
    (f / "modules.json").write_text(json.dumps(mods))
    proc = run_cli("build", "--model", f, "--data", data, "--flops", "0.5", "--out", tmp_path / "b", check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error:") and "mypkg.pooling.MyPooling" in proc.stderr
    assert not (tmp_path / "b").exists()


def test_too_few_held_out_texts_refused_before_scoring(tmp_path, monkeypatch):
    """80 texts of which the test split held 8 distinct ones: refused only after scoring, pruning and export (minutes)."""
    import optin_deploy.pruning as pruning

    data = tmp_path / "t.csv"
    data.write_text("text\n" + "\n".join(f"sentence number {i} about things" for i in range(60)) + "\n")
    f = _st_folder(tmp_path / "m", {"pooling_mode": "mean"}, None)
    monkeypatch.setattr(pruning, "compute_scores", lambda *a, **k: pytest.fail("scored before the refusal"))
    proc = run_cli("build", "--model", f, "--data", data, "--flops", "0.5", "--out", tmp_path / "b", check=False)
    assert proc.returncode == 2 and "recall@10 needs at least 11" in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "b").exists()


def test_a_similarity_other_than_cosine_is_refused_unless_normalised(tmp_path):
    """config_sentence_transformers.json's similarity_fn_name was never read: the embedding figures (cosine to the dense
    model, recall@10) rank neighbours by cosine, which for a dot-product model without Normalize (or a manhattan one)
    is not the model's ranking. Cosine, and dot / euclidean after Normalize (the same ranking), are accepted."""
    from optin_deploy.adapters.embedding import read_pooling
    from optin_deploy.errors import OptinError

    for i, (mods, sim, ok) in enumerate([([T, P(), N], "cosine", True), ([T, P()], "cosine", True), ([T, P(), N], "dot", True),
                                         ([T, P(), N], "euclidean", True), ([T, P()], "dot", False), ([T, P()], "euclidean", False),
                                         ([T, P(), N], "manhattan", False), ([T, P()], None, True)]):
        folder = _files(tmp_path / str(i), mods, CLS, st_cfg={"similarity_fn_name": sim})
        if ok:
            assert read_pooling(folder).modes == ("cls",)
        else:
            with pytest.raises(OptinError, match=f"similarity_fn_name '{sim}'") as err:
                read_pooling(folder)
            assert "cosine" in str(err.value) and "\n" not in str(err.value)
