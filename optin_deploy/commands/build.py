"""``optin-deploy build``: the whole job in one command."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from . import options


def register(app: typer.Typer) -> None:
    @app.command()
    def build(
        model: Optional[str] = typer.Option(None, "--model", help="A zoo name, a local model folder, a hub name or timm:NAME. Default: the built-in MiniLM sentiment model."),
        data: Optional[str] = typer.Option(None, "--data", help="Labelled data (built-in name, CSV/JSONL, HF dataset folder, image folder). Default: the model's own."),
        profile: str = options.PROFILE,
        flops: Optional[float] = typer.Option(None, "--flops", help="Keep this fraction of the dense encoder's MACs, in (0, 1]. Default: the profile's budget, else 0.6."),
        latency_ms: Optional[float] = typer.Option(None, "--latency-ms", help="Latency budget in ms at the profile's batch/sequence on its runtime."),
        speedup: Optional[float] = typer.Option(None, "--speedup", help="Relative latency budget: S times faster than the dense model, both timed in the same run on the profile's runtime and precision (needs a latency table; measured here when --lut is omitted)."),
        lut: Optional[str] = typer.Option(None, "--lut", help="Latency table from `optin-deploy lut` (measured here when omitted)."),
        select_by: Optional[str] = typer.Option(None, "--select-by", help="What a --flops fraction weighs units by: macs, or latency (this model's latency table on the profile's runtime and precision, measured once and cached). Default: the profile's budget.select_by."),
        out: Path = typer.Option(Path("optin-build"), "--out", help="Bundle folder (written atomically)."),
        calib_samples: int = options.CALIB_SAMPLES,
        calib_length: int = options.CALIB_LENGTH,
        scoring: str = typer.Option("auto", "--scoring", help="exact | fast | auto (fast when exact would take over 5 minutes)."),
        scorer: str = typer.Option("optin", "--scorer", help="optin | random | magnitude | fisher."),
        probes: int = typer.Option(64, "--probes", help="Hutchinson probes for fast scoring."),
        max_accuracy_drop: Optional[float] = typer.Option(None, "--max-accuracy-drop", help="Without --flops/--latency-ms: search the budget for the fastest model whose validation accuracy drops at most this many points. With a budget: a quality gate (exit code 4 when the drop is larger). Off unless given."),
        min_speedup: Optional[float] = typer.Option(None, "--min-speedup", help="Search the budget for the most accurate model at least this much faster (p50, interleaved with the dense model) on the target runtime."),
        search_samples: int = options.SEARCH_SAMPLES,
        search_candidates: int = options.SEARCH_CANDIDATES,
        search_tol: float = typer.Option(0.02, "--search-tol", help="Search: stop when the bracket of budgets is narrower than this fraction of the MACs."),
        search_rounds: int = options.SEARCH_ROUNDS,
        search_range: str = typer.Option("0.1:0.99", "--search-range", help="Search: lowest:highest budget (fractions of the dense MACs) tried."),
        search_start: Optional[float] = typer.Option(None, "--search-start", help="Search: the first budget measured (default 0.6 for an accuracy limit, a latency-model guess for a speed-up)."),
        search_reference: str = typer.Option("", "--search-reference", help="Search: fixed budgets (comma-separated) also measured the same way for comparison; never chosen."),
        min_cosine: Optional[float] = typer.Option(None, "--min-cosine", help="Embedding models: quality gate on the mean cosine between dense and pruned embeddings of held-out texts (exit code 4 below it)."),
        min_recall: Optional[float] = typer.Option(None, "--min-recall", help="Embedding models: quality gate on recall@10 agreement of the pruned model's nearest neighbours with the dense model's."),
        task: Optional[str] = typer.Option(None, "--task", help="embedding: treat the model as a sentence-embedding model (bare encoder + pooling). Default: from the model folder (sentence-transformers files mean embedding)."),
        eval_split: str = options.EVAL_SPLIT,
        bench_iters: int = typer.Option(100, "--bench-iters", help="Timed benchmark runs per model (in interleaved blocks)."),
        bench_block: int = typer.Option(10, "--bench-block", help="Consecutive timed runs per model per block (steady state, as a server runs)."),
        baselines: bool = typer.Option(True, "--baselines/--no-baselines", help="Also export, evaluate and time the dense alternatives (plain dynamo fp32, fused fp32, fused int8) and report the speed-up against the fastest."),
        quantization: Optional[str] = typer.Option(None, "--quantization", help="int8 profiles: dynamic, static (activation ranges from the calibration batch) or auto (both, keeps the faster here among those within the int8 tolerance). Default: the profile's quantization."),
        int8_max_drop: Optional[float] = typer.Option(None, "--int8-max-drop", help="int8 profiles: accuracy points the int8 graph may lose against the fp32 graph of the same model (validation split); beyond it nodes are left in fp32, last first. Default: the profile's int8_max_drop (off when absent)."),
        optimize: bool = typer.Option(False, "--optimize", help="Also try onnxruntime's transformer graph optimisation (kept only if parity holds)."),
        reconstruct: bool = options.RECONSTRUCT,
        reconstruct_fit: str = options.RECONSTRUCT_FIT,
        reconstruct_damp: float = options.RECONSTRUCT_DAMP,
        refit_samples: int = options.REFIT_SAMPLES,
        seed: int = options.SEED,
        text_column: str = typer.Option("text", "--text-column", help="The text column of CSV/JSONL data; two, comma-separated, for sentence pairs (premise,hypothesis)."),
        label_column: str = options.LABEL_COLUMN,
        json_out: Optional[str] = options.JSON_OUT,
        force: bool = options.FORCE,
    ):
        """Prune, export, evaluate and benchmark; write a deployment bundle with its evidence."""
        options.check_split(eval_split)
        options.check_json(json_out, force=force, protect=[model, data, lut], outs=[out])

        from ..build import BuildOptions, check_gate, run_build
        from ..progress import console, say
        from ..report import metric_block

        opts = BuildOptions(model=model, data=data, profile=profile, flops=flops, latency_ms=latency_ms, speedup=speedup, lut=lut, select_by=select_by, out=out,
                            calib_samples=calib_samples, calib_length=calib_length, scoring=scoring, scorer=scorer, probes=probes,
                            max_accuracy_drop=max_accuracy_drop, min_speedup=min_speedup, min_cosine=min_cosine, min_recall=min_recall, task=task, search_samples=search_samples,
                            search_candidates=search_candidates, search_tol=search_tol, search_rounds=search_rounds,
                            search_range=options.parse_range(search_range, "--search-range"), search_start=search_start,
                            search_reference=options.parse_budgets(search_reference, "--search-reference") if search_reference else [], eval_split=eval_split, bench_iters=bench_iters, bench_block=bench_block,
                            baselines=baselines, optimize=optimize, quantization=quantization, int8_max_drop=int8_max_drop,
                            reconstruct=reconstruct, reconstruct_fit=reconstruct_fit, reconstruct_damp=reconstruct_damp, refit_samples=refit_samples, seed=seed, text_column=text_column, label_column=label_column, force=force)
        with options.human_stdout(json_out):  # --json -: stdout holds only the JSON (a library's print goes to stderr)
            report = run_build(opts)
        a, t, b = metric_block(report), report["throughput"], report.get("baselines") or {}
        lead = ""
        if b.get("fastest_dense"):
            f = b.get("faster_less_accurate_dense")
            lead = (f"x{b['speedup_vs_fastest_dense']:.2f} faster than the fastest dense alternative ({b['fastest_dense']}"
                    + (f"; {f['label']} is faster, x{f['speedup']:.2f}, but {f['points_below_deliverable']:.2f} pts less accurate" if f else "") + "), ")
        ch = report.get("runtime_choice")
        if ch and ch.get("runner_up"):
            say(console, "target", f"{ch['chosen']}, chosen by measurement over {ch['runner_up']} (profile {ch['chooser']}; report.md lists both)")
        srch = report.get("search")
        if srch:
            fs = srch["search"]
            say(console, "search", f"{srch['objective']['description']}: {fs['candidates_measured']} candidates in {fs['seconds']:.0f} s; "
                          f"chosen budget {srch['chosen']['budget']:.4f} (validation drop {srch['chosen']['drop']:+.2f} pts on "
                          f"{srch['validation']['samples']} samples, {srch['chosen']['speedup']:.2f}x); frontier in {report['bundle']}/frontier.json")
        e = report.get("embedding")
        if e:
            say(
                console, "bundle", f"{report['bundle']}: MACs x{report['macs']['ratio']:.2f}, embeddings on {e['corpus_size']} held-out texts: "
                f"cosine to dense mean {e['cosine_mean']:.4f} (5th pct {e['cosine_p5']:.4f}), recall@10 {e['recall_at_10']:.4f}, "
                f"speed-up x{t['speedup']:.2f} on {report['runtime']}"
            )
        else:
            say(
                console, "bundle", f"{report['bundle']}: {lead}x{b.get('speedup_vs_same_way', t['speedup']):.2f} against the dense model "
                + (f"run the same way ({report.get('inference_precision') or report.get('precision', '')} on {report['runtime']}); " if not b.get("same_way_differs")
                   else f"on {report['runtime']}, NOT run the same way ({b['same_way_differs']}); ")
                + f"MACs x{report['macs']['ratio']:.2f}, {a['metric']} {a['dense']:.2f} -> {a['pruned']:.2f} "
                f"({0.0 - a['drop']:+.2f} pts, agreement {a['agreement']:.1f}%)"
                + (f", {0.0 - b['drop_vs_fp32_dense']:+.2f} pts against the fp32 dense export" if "drop_vs_fp32_dense" in b else "")
            )
        options.emit_json(json_out, report)
        check_gate(report)
