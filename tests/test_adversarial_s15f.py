"""Session-15 adversarial pass (f): the CLI surface and its messages. Each test reproduces a defect found by
driving the commands as a user would (their own model folders, option combinations, signals, odd paths)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from optin_deploy.errors import OptinError
from conftest import make_tiny_deberta, run_cli, save_word_tokenizer
from test_inputs_defects import assert_one_line, save_bert, write_csv


pytestmark = pytest.mark.usefixtures("quiet_cache")  # conftest: a cache of its own per test, no hub


PRUNE = ["--flops", "0.6", "--calib-samples", "8", "--calib-length", "16"]


def test_a_deberta_config_whose_head_size_does_not_fit_is_refused_as_inconsistent(tmp_path):
    """A DeBERTa-v2 config.json with "attention_head_size": 16 on hidden 32 / 4 heads builds q/k/v of 64 features
    and an output projection of 32: transformers' own forward fails. It ended as "internal error RuntimeError: mat1
    and mat2 shapes cannot be multiplied ... (a bug in optin-deploy)", exit 1, after scoring had started."""
    folder = tmp_path / "deb"
    make_tiny_deberta(attention_head_size=16, num_labels=3).save_pretrained(folder)
    save_word_tokenizer(folder)
    data = write_csv(tmp_path / "d.csv", [0, 1, 2])
    proc = run_cli("prune", folder, *PRUNE, "--data", data, "--out", tmp_path / "p", check=False)
    line = assert_one_line(proc, 2, "inconsistent config.json", "attention_head_size", "(8)")
    assert "scoring" not in proc.stderr.lower().replace(line.lower(), "")
    assert not (tmp_path / "p").exists()


def test_a_config_head_dim_the_family_ignores_does_not_break_pruning(tmp_path):
    """A BERT config.json carrying a stray "head_dim": 16 (transformers' BERT ignores it and runs with
    hidden / heads = 8): the adapter took the head size from the config, and scoring stopped with "internal error
    RuntimeError: The size of tensor a (32) must match the size of tensor b (64)" although the model is fine.
    The head size now comes from the attention modules themselves."""
    folder = save_bert(tmp_path / "m")
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "head_dim": 16}))
    data = write_csv(tmp_path / "d.csv", ["neg", "neu", "pos"])
    run_cli("prune", folder, *PRUNE, "--data", data, "--out", tmp_path / "p")
    assert (tmp_path / "p" / "optin_structure.json").is_file()


def test_every_option_of_every_command_says_what_it_does():
    """`--help` listed --seed and --label-column (build, prune, sweep), sweep's --calib-samples / --calib-length /
    --probes, export's --min-batch / --max-batch / --min-seq-len, bench --warmup and eval --threads / --batch-size
    with a default and no word on what they do."""
    import typer

    from optin_deploy import cli

    silent = []

    def walk(command, path):
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*path, name])
        for p in getattr(command, "params", []):
            if type(p).__name__.endswith("Option") and not p.hidden and not (p.help or "").strip():
                silent.append(f"{' '.join(path)} {p.opts[0]}")

    walk(typer.main.get_command(cli.app), [])
    assert not silent, silent


def test_paths_and_labels_are_printed_as_they_are(tmp_path):
    """rich read the user's strings as markup: `prune --out 'pb[red]x'` said "pruned model written to .../pbx" (another
    folder), `--out 'a[/]b'` ended in "internal error MarkupError: closing tag '[/]' ... has nothing to close", exit 1,
    after the model was written, and so did `eval` / `bench --labels '[/],pruned'`. A long path in a pipe or a log
    was also cut across two lines. Now the tool's consoles read no markup and message lines are not hard-wrapped."""
    folder = save_bert(tmp_path / "m")
    data = write_csv(tmp_path / "d.csv", ["neg", "neu", "pos"])
    loud = {"OPTIN_DEPLOY_QUIET": "0", "COLUMNS": "60"}
    (tmp_path / "a[").mkdir()
    long = tmp_path / "a[" / ("]pruned_into_a_folder_whose_name_is_much_longer_than_the_sixty_columns[red]x")
    proc = run_cli("prune", folder, *PRUNE, "--data", data, "--out", long, env=loud)
    assert (long / "optin_structure.json").is_file()
    assert f"written to {long} (" in proc.stdout + proc.stderr, proc.stderr
    proc = run_cli("eval", folder, long, "--data", data, "--labels", "[/],[bold]x", env=loud)
    assert "[/]" in proc.stdout and "[bold]x" in proc.stdout, proc.stdout
    proc = run_cli("bench", folder, long, "--iters", "2", "--warmup", "1", "--labels", "[/],[bold]x", env=loud)
    assert "[/]" in proc.stdout and "[bold]x" in proc.stdout, proc.stdout


@pytest.mark.parametrize("columns", ["text,label", "label"])
def test_the_label_column_is_never_fed_to_the_model_as_text(tmp_path, columns):
    """`--text-column text,label` was taken as a sentence pair whose second text is the label: the model read the
    answer it was scored on (eval's accuracy, build's validation and search), with exit 0. Now one line, exit 2."""
    folder = save_bert(tmp_path / "m")
    data = write_csv(tmp_path / "d.csv", ["neg", "neu", "pos"])
    proc = run_cli("prune", folder, *PRUNE, "--data", data, "--text-column", columns, "--out", tmp_path / "p", check=False)
    assert_one_line(proc, 2, "includes the label column 'label'")
    assert not (tmp_path / "p").exists()
    proc = run_cli("eval", folder, folder, "--data", data, "--text-column", columns, check=False)
    assert_one_line(proc, 2, "includes the label column 'label'")


def test_bench_sequential_is_never_ignored(tmp_path, monkeypatch):
    """`bench --mode blocks --sequential` timed in blocks, and `bench --runtimes ... --sequential` interleaved, both
    with exit 0 and nothing said: --sequential was dropped. Now it is --mode sequential everywhere, and a --mode
    that contradicts it is one line, exit 2."""
    import optin_deploy.bench_runtimes as br
    from optin_deploy.errors import OptinError

    proc = run_cli("bench", tmp_path / "a", tmp_path / "b", "--mode", "blocks", "--sequential", check=False)
    assert_one_line(proc, 2, "--sequential", "--mode blocks")
    seen = {}

    def fake(models, runtimes, **kw):
        seen.update(kw)
        raise OptinError("stop here")

    monkeypatch.setattr(br, "compare_runtimes", fake)
    run_cli("bench", tmp_path / "a", tmp_path / "b", "--runtimes", "ort-cpu", "--sequential", check=False)
    assert seen.get("mode") == "sequential", seen


def test_a_label_column_of_unique_values_is_named_not_called_too_few_rows(tmp_path):
    """`--label-column id` (a unique id per row) said "d.csv has only 80 rows, too few for the 80/10/10 split": 80
    rows are plenty; what is wrong is 80 classes of one row. The line now says so and asks about the label column."""
    folder = save_bert(tmp_path / "m")
    rows = write_csv(tmp_path / "d.csv", ["neg", "neu", "pos"], n=80).read_text().splitlines()
    (tmp_path / "id.csv").write_text("\n".join([f"id,{rows[0]}", *(f"{i},{r}" for i, r in enumerate(rows[1:]))]) + "\n")
    proc = run_cli("prune", folder, *PRUNE, "--data", tmp_path / "id.csv", "--label-column", "id", "--out", tmp_path / "p", check=False)
    # the model's 3 classes are checked first (session 15d): ids 3.. are out of its range, said in one line
    assert_one_line(proc, 2, "class ids 3, 4, 5", "out of range: the model predicts 3 classes")
    from optin_deploy.data.loaders import load_data  # without a model: the split's message names the classes

    with pytest.raises(OptinError, match=r"80 rows in 80 classes of at most 1 rows \(is the label column right\?\)"):
        load_data(str(tmp_path / "id.csv"), label_column="id")


def test_a_narrow_console_never_elides_an_evaluation_figure(tmp_path):
    """`COLUMNS=40 optin-deploy eval ...` printed the accuracy as "33.…" and the agreement as "100…" (rich squeezed
    the columns); bench's table already kept its figures whole. The eval table is now printed at its own width."""
    folder = save_bert(tmp_path / "m")
    data = write_csv(tmp_path / "d.csv", ["neg", "neu", "pos"])
    proc = run_cli("eval", folder, folder, "--data", data, "--json", tmp_path / "r.json", env={"COLUMNS": "40"})
    result = json.loads((tmp_path / "r.json").read_text())
    for m in result["models"].values():
        assert f"{m['accuracy']:.2%}" in proc.stdout, proc.stdout
    assert "…" not in proc.stdout, proc.stdout


def test_refit_settings_without_the_refit_are_said_to_do_nothing(tmp_path, capsys):
    """`--no-reconstruct --reconstruct-fit scales` was accepted without a word that the fit setting is ignored."""
    from optin_deploy.build import BuildOptions, run_build
    from optin_deploy.pruning import warn_unused_refit

    assert warn_unused_refit(False, "scales", 0.5, 0) == ["--reconstruct-fit", "--reconstruct-damp"]
    assert "have no effect with --no-reconstruct" in capsys.readouterr().err
    assert warn_unused_refit(True, "scales", 0.5, 512) == [] and warn_unused_refit(False, "weights", 1.0, 0) == []
    assert capsys.readouterr().err == ""
    with pytest.raises(OptinError):  # the warning comes with the up-front checks, before the (missing) model is read
        run_build(BuildOptions(model=str(tmp_path / "no-such-model"), reconstruct=False, reconstruct_fit="scales",
                               out=str(tmp_path / "b")))
    assert "--reconstruct-fit has no effect with --no-reconstruct" in capsys.readouterr().err
