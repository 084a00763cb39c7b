"""The human side of a build report: plots (PNG) and a Markdown page."""

from __future__ import annotations

from pathlib import Path


def metric_block(report: dict) -> dict:
    """The task metric's figures of a build report: ``report[report["metric"]]`` (``accuracy``,
    ``spearman`` or ``cosine_to_dense``; reports written before the key existed keep them under ``accuracy``)."""
    return report[report.get("metric") or "accuracy"]


METRIC_LABELS = {"accuracy": "accuracy (%)", "spearman": "Spearman (x100)", "cosine_to_dense": "cosine to dense (x100)"}


AGREEMENT_LABELS = {"accuracy": "agreement with dense (%)", "spearman": "Spearman with dense (x100)",
                    "cosine_to_dense": "recall@10 agreement with dense (%)"}


def metric_label(metric: str) -> str:
    """A column / axis label for a metric's points: ``accuracy (%)``, ``Spearman (x100)``, ..."""
    return METRIC_LABELS.get(metric, f"{metric} (x100)")


def write_plots(report: dict, folder: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    st = report["structure"]
    layers = list(range(len(st["heads"]["dense"])))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, key, title in ((axes[0], "heads", "attention heads kept"), (axes[1], "neurons", "MLP neurons kept")):
        ax.bar(layers, st[key]["dense"], color="#d0d0d0", label="dense")
        ax.bar(layers, st[key]["pruned"], color="#1f77b4", label="pruned")
        ax.set_xlabel("layer")
        ax.set_title(title)
        ax.set_xticks(layers)
        ax.legend(fontsize=8)
    fig.suptitle(f"{report['model']}: structure kept at MACs ratio {report['macs']['ratio']:.2f}", fontsize=10)
    fig.tight_layout()
    files["structure"] = "plots/structure.png"
    fig.savefig(folder / "structure.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    acc = metric_block(report)
    axes[0].bar(["dense", "pruned"], [acc["dense"], acc["pruned"]], color=["#7f7f7f", "#1f77b4"])
    axes[0].set_ylim(max(0, min(acc["dense"], acc["pruned"]) - 10), 100)
    axes[0].set_title(f"{metric_label(acc['metric'])}")
    for i, v in enumerate([acc["dense"], acc["pruned"]]):
        axes[0].text(i, v, f"{v:.1f}", ha="center", va="bottom", fontsize=8)
    lat = report["latency_ms"]
    x = range(3)
    w = 0.38
    nan = float("nan")  # a tail percentile from too few runs (null) is left out of the plot
    axes[1].bar([i - w / 2 for i in x], [nan if lat["dense"][k] is None else lat["dense"][k] for k in ("p50", "p90", "p99")], w, label="dense", color="#7f7f7f")
    axes[1].bar([i + w / 2 for i in x], [nan if lat["pruned"][k] is None else lat["pruned"][k] for k in ("p50", "p90", "p99")], w, label="pruned", color="#1f77b4")
    axes[1].set_xticks(list(x), ["p50", "p90", "p99"])
    axes[1].set_title(f"latency (ms), {report['runtime']}")
    axes[1].legend(fontsize=8)
    thr = report["throughput"]
    axes[2].bar(["dense", "pruned"], [thr["dense"], thr["pruned"]], color=["#7f7f7f", "#1f77b4"])
    axes[2].set_title(f"throughput (samples/s), x{thr['speedup']:.2f}")
    fig.tight_layout()
    files["accuracy_latency"] = "plots/accuracy_latency.png"
    fig.savefig(folder / "accuracy_latency.png", dpi=110)
    plt.close(fig)
    return files


def _faster_profile_hint(fastest: str, runtime: str | None) -> str:
    """When the pruned model ran faster on another runtime than the deliverable's: the built-in profile(s) that target it."""
    if fastest == "pruned" or not runtime:
        return ""
    from .profiles import list_profiles

    names = [p.name for p in list_profiles() if p.runtime_name == runtime and not p.is_choice]
    if not names:
        return f" It ran fastest on `{runtime}`, which no built-in profile targets: write a profile for it (`optin-deploy profiles show`)."
    return f" To ship the fastest way, build with `--profile {names[0]}` (runtime `{runtime}`)."


def _choice_lines(choice: dict | None) -> list[str]:
    """report.md: how a choosing profile (the default ``x86-cpu``) picked the target, candidate by candidate."""
    if not choice:
        return []
    c = {x["profile"]: x for x in choice["candidates"]}
    measured = [x for x in choice["candidates"] if x["p50_ms"] is not None]
    head = f"Target chosen by measurement (profile `{choice['chooser']}`): **`{choice['chosen']}`** ({c[choice['chosen']]['runtime']}, {c[choice['chosen']]['precision']})"
    if choice.get("runner_up"):
        r = c[choice["runner_up"]]
        head += f"; runner-up `{choice['runner_up']}` ({r['runtime']}, {r['precision']})"
    if measured:
        head += (f". The dense model was exported for each candidate, evaluated on the {choice['split']} split and timed interleaved; the fastest "
                 f"within {choice['equal_accuracy_points']:g} points of the most accurate was kept ({choice['seconds']:.0f} s).")
    else:
        head += "."
    lines = [head, ""]
    if choice.get("note"):
        lines += [f"Note: {choice['note']}.", ""]
    if measured or any(x.get("skipped") for x in choice["candidates"]):
        metric = choice.get("metric") or "metric"
        lines += [f"| candidate | runtime | precision | dense p50 ms | {choice['split']} {metric} | equally accurate | |", "|---|---|---|---:|---:|---|---|"]
        for x in choice["candidates"]:
            mark = "chosen" if x["profile"] == choice["chosen"] else ("runner-up" if x["profile"] == choice.get("runner_up") else (x.get("skipped") or ""))
            lines.append(f"| {x['profile']} | {x['runtime']} | {x['precision']} | " + (f"{x['p50_ms']:.2f}" if x["p50_ms"] is not None else "-")
                         + " | " + (f"{x['metric']:.2f}" if x["metric"] is not None else "-") + " | "
                         + ("-" if x.get("eligible") is None else ("yes" if x["eligible"] else "no")) + f" | {mark} |")
        lines.append("")
    return lines


def _ms(v: float | None) -> str:
    """A latency for report.md; a tail percentile not stated (too few runs) reads as such."""
    return "- (too few runs)" if v is None else f"{v:.2f}"


def _faster_less_accurate(f: dict | None) -> str:
    """report.md's note on a dense model faster than the deliverable's alternative but less accurate than the deliverable."""
    if not f:
        return ""
    return (f" `{f['label']}` is faster (the deliverable is x{f['speedup']:.2f} against it) but {f['points_below_deliverable']:.2f} "
            f"points less accurate than the deliverable.")


def write_markdown(report: dict, path: Path, plots: dict[str, str]) -> None:
    acc, lat, thr, macs = metric_block(report), report["latency_ms"], report["throughput"], report["macs"]
    gate = report.get("gate")
    lines = [
        f"# optin-deploy build report: {report['model']}",
        "",
    ]
    b = report.get("baselines") or {}
    if b.get("fastest_dense"):
        lines += [
            f"**x{b['speedup_vs_fastest_dense']:.2f} faster than the fastest dense alternative measured here** (`{b['fastest_dense']}`), "
            + (f"x{b['speedup_vs_same_way']:.2f} against the dense model run the same way ({b['models']['pruned']['precision']} {((report.get('graph') or {}).get('pruned') or {}).get('kind', '')} graph)"
               if not b.get("same_way_differs") else f"x{b['speedup_vs_same_way']:.2f} against the dense model, **not run the same way** ({b['same_way_differs']})")
            + (f", x{b['speedup_vs_fp32_dense_export']:.2f} against the fp32 dense export (`{b['reference_fp32']}`), "
               f"{0.0 - b['drop_vs_fp32_dense']:+.2f} points against it" if b.get("reference_fp32") else "") + "."
            + (f" The fastest dense alternative is {b['fastest_dense_rule']}." if b.get("fastest_dense_rule") else "")
            + _faster_less_accurate(b.get("faster_less_accurate_dense")),
            "",
            f"| how the weights run | runtime | graph | precision | p50 ms | {metric_label(acc['metric'])} | pruned is faster by |",
            "|---|---|---|---|---:|---:|---:|",
        ]
        for label, r in b["models"].items():
            sp = r["p50_ms"] and b["models"]["pruned"]["p50_ms"] and r["p50_ms"] / b["models"]["pruned"]["p50_ms"]
            lines.append(f"| {label} | {r.get('runtime') or report.get('runtime')} | {r['graph']} | {r['precision']} | {r['p50_ms']:.2f} | {r[acc['metric']]:.2f} | "
                         + ("(the deliverable)" if label == "pruned" else f"x{sp:.2f}") + " |")
        lines.append("")
        pr = b.get("pruned_runtimes")
        if pr:
            rank = {x["label"]: x for x in pr["ranking"]}
            f, ru = rank[pr["fastest"]], rank[pr["runner_up"]]
            lines += [f"The pruned model measured on {len(rank)} runtimes: fastest `{pr['fastest']}` ({f['runtime']}, {f['precision']}, "
                      f"{f['p50_ms']:.2f} ms, {f[acc['metric']]:.2f}%), runner-up `{pr['runner_up']}` ({ru['runtime']}, {ru['precision']}, "
                      f"{ru['p50_ms']:.2f} ms, {ru[acc['metric']]:.2f}%); the deliverable runs as the profile says (`{report.get('runtime')}`)."
                      + _faster_profile_hint(pr["fastest"], f["runtime"]), ""]
    lines += _choice_lines(report.get("runtime_choice"))
    lines += [
        f"- task: **{report['task']['name']}** ({report['task']['type']}, metric {acc['metric']}, {report['task']['eval_samples']} {report['task']['eval_split']} samples)",
        f"- target profile: **{report['profile']}**, runtime `{report['runtime']}`",
        f"- budget: `{report['budget']}`; scoring: {report['scoring']['method']} ({report['scoring']['scorer']}), {report['scoring_seconds']:.1f} s"
        + (" (cached)" if report["scoring"].get("cached") else ""),
    ]
    sb = report.get("selected_by") or {}
    if sb.get("select_by") == "latency":
        lines.append(f"- units weighed by their measured latency on this target (table `{sb.get('table')}`, "
                     f"{'measured in this build' if sb.get('measured_now') else 'cached'}): the table predicts "
                     f"{sb.get('predicted_ms')} ms against {sb.get('table_dense_ms')} ms dense (x{sb.get('predicted_speedup')})")
    for label, q in (report.get("quantization") or {}).items():
        c = q.get("choice") or {}
        line = f"- int8 of the {label} model: {q.get('mode')} ({q.get('method')})"
        if c:
            ways = "; ".join(f"{m}: " + (f"{w['p50_ms']:.2f} ms p50, " if w.get("p50_ms") else "")
                             + (f"validation {w['accuracy']:.2f} (drop {w['drop']:+.2f} vs its fp32 graph)" if w.get("accuracy") is not None else "no labelled metric")
                             + (f", {len(w['excluded'])} node(s) left in fp32" if w.get("excluded") else "") for m, w in c["ways"].items())
            line += f"; asked {c['asked']}, kept {c['kept']}: {c['why']} ({ways})"
        if q.get("excluded"):
            line += f"; left in fp32: {', '.join(q['excluded'])}"
        lines.append(line)
    if gate and "max_accuracy_drop" in gate:
        lines.append(f"- quality gate (max drop {gate['max_accuracy_drop']} points): **{'PASSED' if gate['passed'] else 'FAILED'}**")
    elif gate:
        floors = ", ".join(f"{k.replace('_', ' ')} >= {v['floor']}" for k, v in gate.items() if isinstance(v, dict))
        lines.append(f"- quality gate ({floors}): **{'PASSED' if gate['passed'] else 'FAILED'}**")
    emb = report.get("embedding")
    if emb:
        pool = emb.get("pooling") or {}
        lines.append(f"- sentence embeddings: {'+'.join(pool.get('modes', []))} pooling{', L2-normalised' if pool.get('normalize') else ''} "
                     f"({pool.get('source', '')}); output `sentence_embedding`")
        lines.append(f"- on {emb['corpus_size']} held-out texts ({emb['split']} split, max {emb.get('max_length')} tokens), through the exported runtime: "
                     f"cosine between dense and pruned embeddings of the same text mean **{emb['cosine_mean']:.4f}**, 5th percentile "
                     f"**{emb['cosine_p5']:.4f}**, min {emb['cosine_min']:.4f}; recall@{emb['k']} of the pruned model's nearest neighbours "
                     f"against the dense model's **{emb['recall_at_' + str(emb['k'])]:.4f}**")
        if emb.get("spearman_pairs"):
            sp = emb["spearman_pairs"]
            lines.append(f"- Spearman of the pair cosine with the pairs' scores ({sp['pairs']} pairs): dense {sp['dense']:.4f}, pruned {sp['pruned']:.4f}")
        if emb.get("note"):
            lines.append(f"- note: {emb['note']}")
    srch = report.get("search")
    if srch:
        c = srch["chosen"]
        ver = next((v for v in srch.get("verification") or [] if v["candidate"] == c["id"]), None)
        lines.append(f"- budget search ({srch['objective']['description']}): chosen candidate #{c['id']}, budget {c['budget']:.4f} "
                     f"(MACs x{c['macs_ratio']:.3f}); " + ("limit met" if srch["reachable"] else f"**limit NOT met**: {srch['message']}")
                     + (f"; full validation: drop {ver['drop']:+.2f} points on {ver['samples']} samples" if ver else "")
                     + f". The {report['task']['eval_split']} figures below were computed after the choice and never used by it.")
    rec = report.get("reconstruction")
    if rec and rec.get("layers"):
        lines.append(f"- reconstruction of the kept units (least-squares fit of their output {rec.get('fit', 'scales')}; damping {rec['damp']}): {len(rec['layers'])} sublayers in {rec['seconds']:.1f} s, "
                     f"mean relative reconstruction error on the calibration batch {rec['mean_error_before']:.4f} -> {rec['mean_error_after']:.4f}")
    elif rec is None:
        lines.append("- no reconstruction of the kept units (--no-reconstruct): plain surgery")
    for n in report["scoring"].get("notes") or []:
        lines.append(f"- note: {n}")
    lines += [
        "",
        "| | dense | pruned | change |",
        "|---|---:|---:|---:|",
        f"| encoder MACs (seq {macs['seq_len']}) | {macs['dense']:,} | {macs['pruned']:,} | x{macs['ratio']:.3f} |",
        f"| {metric_label(acc['metric'])} | {acc['dense']:.2f} | {acc['pruned']:.2f} | {0.0 - acc['drop']:+.2f} pts |",
        f"| {AGREEMENT_LABELS.get(acc['metric'], 'agreement with dense (%)')} | | {acc['agreement']:.2f} | |",
        f"| latency p50 (ms) | {lat['dense']['p50']:.2f} | {lat['pruned']['p50']:.2f} | x{lat['dense']['p50'] / lat['pruned']['p50']:.2f} faster"
        + (f" (rounds IQR {report['speedup_iqr'][0]:.2f}-{report['speedup_iqr'][1]:.2f})" if report.get("speedup_iqr") else "") + " |",
        *(f"| latency {k} (ms) | {_ms(lat['dense'][k])} | {_ms(lat['pruned'][k])} | |" for k in ("p90", "p99")),
        f"| throughput at p50 (samples/s) | {thr['dense']:.1f} | {thr['pruned']:.1f} | x{thr['speedup']:.2f} |",
        f"| throughput, mean-based (samples/s) | {thr['mean_based']['dense']:.1f} | {thr['mean_based']['pruned']:.1f} | x{thr['mean_based']['speedup']:.2f} |",
        "",
    ]
    lb = report.get("latency_budget")
    if lb:
        lines += ["## Latency budget rounds", "", "| round | predicted ms | measured ms |", "|---:|---:|---:|"]
        for i, r in enumerate(lb.get("rounds", [])):
            lines.append(f"| {i} | {r.get('predicted_ms', float('nan')):.2f} | {r.get('measured_ms', float('nan')):.2f} |")
        lines.append("")
    if report.get("search"):
        import json

        from .search import frontier_markdown

        fr = json.loads((path.parent / "frontier.json").read_text())
        lines += frontier_markdown(fr, "plots/frontier.png")
    lines += [f"![{k}]({v})" for k, v in plots.items()]
    rw = report.get("run_with")
    onnx_file = next((k for k in report.get("artifacts", {}) if k.startswith("onnx/pruned/") and k.endswith("model.onnx")), "onnx/pruned/model.onnx")
    inputs = list((report.get("bench") or {}).get("inputs") or {}) or ["input_ids", "attention_mask"]  # the graph's inputs, as benchmarked
    if rw and rw.get("backend") == "openvino":
        from .runtimes.openvino import compile_snippet

        lines += ["", "## Running the deliverable", "", "The figures above were measured with these OpenVINO settings:", "",
                  "```python", compile_snippet(rw, onnx_file, inputs), "```", ""]
    elif rw:
        from .runtimes.ort import DENORMAL_AS_ZERO, session_snippet

        lines += ["", "## Running the deliverable", "", "The figures above were measured with these onnxruntime session settings:", "",
                  "```python", session_snippet(rw, onnx_file, inputs), "```", ""]
        if DENORMAL_AS_ZERO in (rw.get("session_config") or {}):
            lines.append("Flushing denormal floats to zero is what makes the CPU run at these latencies on real inputs (only values below "
                         "about 1e-38 become 0; measured on the default model: identical logits). onnxruntime applies it to its worker threads and, once per process, to the thread that creates the "
                         "*first* session: create this session first, from the thread that will call `session.run`.")
    from .serving import serving_markdown

    lines += serving_markdown(report.get("serving"))
    lines += ["", "## Files", "", "| file | bytes |", "|---|---:|"]
    lines += [f"| `{k}` | {v['bytes']:,} |" for k, v in report["artifacts"].items()]
    path.write_text("\n".join(lines) + "\n")
