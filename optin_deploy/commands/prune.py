"""``optin-deploy prune``: score, select under a MAC budget (at the profile's sequence length, as ``build``), slice, save."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from . import options


def register(app: typer.Typer) -> None:
    @app.command()
    def prune(
        model: str = typer.Argument("minilm-sentiment", help="A zoo name, a local model folder, a hub name or timm:NAME."),
        flops: float = typer.Option(0.6, "--flops", help="Fraction of the dense encoder's MACs to keep, in (0, 1], counted at the profile's sequence length (as build counts them)."),
        profile: str = options.PROFILE,
        data: Optional[str] = typer.Option(None, "--data", help="Calibration data: a built-in data set, a CSV/JSONL file, a saved HF dataset or an image folder (default: the model's own). Labels are not needed."),
        out: Path = typer.Option(Path("optin-pruned"), "--out", help="Output folder (weights + structure spec)."),
        calib_samples: int = options.CALIB_SAMPLES,
        calib_length: int = options.CALIB_LENGTH,
        scoring: str = typer.Option("auto", "--scoring", help="exact | fast | auto (fast when exact would take over 5 minutes)."),
        scorer: str = typer.Option("optin", "--scorer", help="optin | random | magnitude | fisher (baselines use the same selection and surgery)."),
        probes: int = typer.Option(64, "--probes", help="Hutchinson probes for --scoring fast."),
        text_column: str = typer.Option("text", "--text-column", help="The text column of CSV/JSONL data; two, comma-separated, for sentence pairs (premise,hypothesis)."),
        label_column: str = options.LABEL_COLUMN,
        reconstruct: bool = options.RECONSTRUCT,
        reconstruct_fit: str = options.RECONSTRUCT_FIT,
        reconstruct_damp: float = options.RECONSTRUCT_DAMP,
        refit_samples: int = options.REFIT_SAMPLES,
        seed: int = options.SEED,
        json_out: Optional[str] = options.JSON_OUT,
        force: bool = options.FORCE,
        calib: Optional[str] = options.OLD_CALIB,
        max_length: Optional[int] = options.OLD_MAX_LENGTH,
    ):
        """Prune MODEL to a MAC budget with OPTIN and save the physically smaller model."""
        data = options.alias("--data", data, "--calib", calib)
        calib_length = options.alias("--calib-length", calib_length, "--max-length", max_length, default=64)
        options.check_json(json_out, force=force, protect=[model, data], outs=[out])
        from ..pruning import prune_to_folder

        with options.human_stdout(json_out):  # --json -: stdout holds only the JSON
            summary = prune_to_folder(model, data, out, flops=flops, calib_samples=calib_samples, calib_length=calib_length, scoring=scoring,
                                      scorer=scorer, probes=probes, reconstruct=reconstruct, fit=reconstruct_fit, damp=reconstruct_damp, refit_samples=refit_samples,
                                      seed=seed, text_column=text_column, label_column=label_column, force=force, profile=profile)
        options.emit_json(json_out, summary)
