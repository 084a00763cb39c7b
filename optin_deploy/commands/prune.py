"""``optin-deploy prune``: score, select under a MAC budget, slice, save."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ..errors import OptinError
from . import options


def register(app: typer.Typer) -> None:
    @app.command()
    def prune(
        model: str = typer.Argument("minilm-sentiment", help="A zoo name, a local model folder, a hub name or timm:NAME."),
        flops: float = typer.Option(0.6, "--flops", help="Fraction of the dense encoder's MACs to keep, in (0, 1]."),
        calib: Optional[str] = typer.Option(None, "--calib", help="Calibration data: a built-in data set, a CSV/JSONL file, a saved HF dataset or an image folder. Labels are not needed."),
        out: Path = typer.Option(Path("optin-pruned"), "--out", help="Output folder (weights + structure spec)."),
        calib_samples: int = typer.Option(128, "--calib-samples", help="Calibration sequences/images (the paper uses 128)."),
        max_length: int = typer.Option(64, "--max-length", help="Token length of text calibration inputs."),
        scoring: str = typer.Option("auto", "--scoring", help="exact | fast | auto (fast when exact would take over 5 minutes)."),
        scorer: str = typer.Option("optin", "--scorer", help="optin | random | magnitude | fisher (baselines use the same selection and surgery)."),
        probes: int = typer.Option(64, "--probes", help="Hutchinson probes for --scoring fast."),
        text_column: str = typer.Option("text", "--text-column"),
        label_column: str = typer.Option("label", "--label-column"),
        reconstruct: bool = options.RECONSTRUCT,
        reconstruct_fit: str = options.RECONSTRUCT_FIT,
        reconstruct_damp: float = options.RECONSTRUCT_DAMP,
        seed: int = typer.Option(0, "--seed"),
        json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
        force: bool = typer.Option(False, "--force", help="Replace --out even if optin-deploy did not write it (never /, your home, the current folder or the inputs' folders)."),
    ):
        """Prune MODEL to a MAC budget with OPTIN and save the physically smaller model."""
        from ..core.scoring import ScoreSettings
        from ..progress import step
        from ..pruned_io import save_pruned, task_hint
        from ..pruning import check_budget, check_refit, print_layer_table, prune as do_prune, report_emptied
        from ..zoo import load_task

        from ..safe_out import check_out

        check_budget(flops)
        check_refit(reconstruct_fit, reconstruct_damp)
        if calib_samples < 1:
            raise OptinError(f"--calib-samples must be at least 1, got {calib_samples}")
        if probes < 1:
            raise OptinError(f"--probes must be at least 1, got {probes}")
        if max_length < 1:
            raise OptinError(f"--max-length must be at least 1, got {max_length}")
        out = check_out(out, force=force, protect=[model, calib])
        task = load_task(model, calib, max_length=None, text_column=text_column, label_column=label_column)
        eval_len = task.max_length
        if task.max_length is not None:
            task.max_length = max_length
        calib_inputs = task.calibration(calib_samples, seed=seed)
        result = do_prune(task.model, calib_inputs, flops=flops, scoring=scoring, scorer=scorer, settings=ScoreSettings(seed=seed), probes=probes,
                          reconstruct=reconstruct, fit=reconstruct_fit, damp=reconstruct_damp)
        print_layer_table(task.model, result.model)
        report_emptied(task.model, result.model)
        summary = {"model": task.model_source or model, "budget": {"flops": flops}, **result.summary()}
        save_pruned(result.model, out, extra={"source": task.model_source or model, "source_dir": task.model_source, "task": task.data.name,
                                              "max_length": eval_len, "prune": summary, "label_names": task.data.label_names},
                    checked=True, task_hint=task_hint(task, calib, text_column, label_column, eval_len))
        step(f"pruned model written to {out} (MACs {summary['macs']['ratio']:.1%} of dense, scoring {result.scoring_seconds:.1f}s)")
        if json_out:
            typer.echo(json.dumps(summary, indent=1, default=float))
