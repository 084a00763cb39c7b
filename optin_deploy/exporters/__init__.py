"""Exporters: ONNX, TensorRT (engine from ONNX) and torch-tensorrt, behind one interface.

See :mod:`optin_deploy.exporters.base` for the interface and :func:`export_bundle` for the one call
that exports, parity-checks and writes a bundle folder.
"""

from .base import EXPORTERS, Exporter, ExportResult, LogitsModel, ShapeProfile, get_exporter, input_names_for
from .bundle import example_inputs_for_model, export_bundle
from .parity import check_parity, parity_inputs

__all__ = [
    "EXPORTERS",
    "Exporter",
    "ExportResult",
    "LogitsModel",
    "ShapeProfile",
    "get_exporter",
    "input_names_for",
    "export_bundle",
    "example_inputs_for_model",
    "check_parity",
    "parity_inputs",
]
