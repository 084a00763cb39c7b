"""benchmarks/op_profile.py: OpenVINO's CPU nodes (renamed by its fusions) are classed into the prunable units and the rest."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "op_profile.py"


def load():
    spec = importlib.util.spec_from_file_location("op_profile", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# one encoder layer as OpenVINO 2025 executes the fused MiniLM graph in bf16 (names and types from its performance counters)
LAYER = [("/word/Gather", "Gather", "embeddings + mask"), ("MVN_29", "MVN", "residual + LayerNorm"),
         ("Add_44", "FullyConnected", "heads"),  # the fused Q/K/V projection: a Split follows
         ("Split_57", "Split", "heads"), ("Transpose_141", "Transpose", "heads"), ("MatMul_321", "Subgraph", "heads"),
         ("Transpose_323", "Transpose", "heads"), ("/layers.0/o/Add", "FullyConnected", "heads"), ("/layers.0/Add_1", "Add", "residual + LayerNorm"),
         ("MVN_611", "MVN", "residual + LayerNorm"), ("Add_623", "FullyConnected", "neurons"),  # the MLP's first linear: its second follows
         ("/layers.0/fc2/Add", "FullyConnected", "neurons"), ("MVN_636", "MVN", "residual + LayerNorm"),
         ("/pooler/Gemm", "FullyConnected", "classifier head"), ("Tanh_1", "Tanh", "classifier head"), ("Reorder_9", "Reorder", "other")]


def test_openvino_nodes_are_classed_by_name_type_and_what_follows():
    mod = load()
    types = [t for _, t, _ in LAYER]
    got = [mod.ov_category(name, op, types[i + 1:i + 4]) for i, (name, op, _) in enumerate(LAYER)]
    assert got == [c for _, _, c in LAYER]
    # a Reorder between the projection and its Split does not hide the Split
    assert mod.ov_category("Add_44", "FullyConnected", ["Reorder", "Split"]) == "heads"
    assert mod.ov_category("Add_623", "FullyConnected", ["Reorder", "FullyConnected"]) == "neurons"
