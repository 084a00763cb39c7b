"""``optin-deploy sweep``: the accuracy / speed frontier over a list of budgets, without choosing."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from . import options


def register(app: typer.Typer) -> None:
    @app.command()
    def sweep(
        model: Optional[str] = typer.Option(None, "--model", help="A zoo name, a local model folder, a hub name or timm:NAME. Default: the built-in MiniLM sentiment model."),
        data: Optional[str] = typer.Option(None, "--data", help="Labelled data (its validation split is used). Default: the model's own."),
        profile: str = options.PROFILE,
        budgets: str = typer.Option("0.5,0.6,0.7,0.8,0.9", "--budgets", help="Budgets, comma-separated, each a fraction of the dense model's cost: its encoder MACs, or (--select-by latency, the default CPU profiles' choice) its prunable latency in the profile's latency table; frontier.json records which."),
        select_by: Optional[str] = typer.Option(None, "--select-by", help="What a budget fraction weighs units by: macs or latency. Default: the profile's budget.select_by."),
        scorer: str = typer.Option("optin", "--scorer", help="optin | random | magnitude | fisher; comma-separated to overlay several."),
        out: Path = typer.Option(Path("optin-sweep"), "--out", help="Folder for frontier.json, frontier.png, frontier.md."),
        calib_samples: int = options.CALIB_SAMPLES,
        calib_length: int = options.CALIB_LENGTH,
        scoring: str = typer.Option("auto", "--scoring", help="exact | fast | auto (OPTIN only)."),
        probes: int = typer.Option(64, "--probes", help="Hutchinson probes for --scoring fast."),
        reconstruct: bool = options.RECONSTRUCT,
        reconstruct_fit: str = options.RECONSTRUCT_FIT,
        reconstruct_damp: float = options.RECONSTRUCT_DAMP,
        refit_samples: int = options.REFIT_SAMPLES,
        search_samples: int = options.SEARCH_SAMPLES,
        search_rounds: int = options.SEARCH_ROUNDS,
        seed: int = options.SEED,
        text_column: str = typer.Option("text", "--text-column", help="The text column of CSV/JSONL data; two, comma-separated, for sentence pairs (premise,hypothesis)."),
        label_column: str = options.LABEL_COLUMN,
        json_out: Optional[str] = options.JSON_OUT,
        force: bool = options.FORCE,
    ):
        """Measure validation accuracy and speed-up for each budget (and scorer); write the frontier, choose nothing."""
        bs = options.parse_budgets(budgets, "--budgets")
        options.check_json(json_out, force=force, protect=[model, data], outs=[out])
        from ..build import BuildOptions
        from ..progress import console, say
        from ..search import run_sweep

        scorers = [s.strip() for s in scorer.split(",") if s.strip()]
        opts = BuildOptions(model=model, data=data, profile=profile, out=out, calib_samples=calib_samples, calib_length=calib_length,
                            scoring=scoring, scorer=scorers[0] if scorers else "optin", probes=probes, reconstruct=reconstruct,
                            reconstruct_fit=reconstruct_fit, reconstruct_damp=reconstruct_damp, refit_samples=refit_samples, search_samples=search_samples,
                            search_rounds=search_rounds, seed=seed, text_column=text_column, label_column=label_column, select_by=select_by, force=force)
        with options.human_stdout(json_out):  # --json -: stdout holds only the JSON
            fr, folder = run_sweep(opts, bs, scorers)
        say(console, "frontier", f"{folder}/frontier.json ({len(fr.candidates)} candidates, validation subset of {fr.validation['samples']}); "
                      f"plot {folder}/frontier.png, table {folder}/frontier.md")
        options.emit_json(json_out, fr.to_dict())
