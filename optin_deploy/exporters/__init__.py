"""Exporters: ONNX, TensorRT (engine from ONNX) and torch-tensorrt, behind one interface.

See :mod:`optin_deploy.exporters.base` for the interface and :func:`export_to_folder` for the one call
that exports, parity-checks and writes an export folder (``model.onnx``, ``parity.json``, ``export.json``).
"""

from .base import EXPORTERS, Exporter, ExportResult, LogitsModel, ShapeProfile, get_exporter, input_names_for
from .export_folder import export_to_folder
from .parity import check_parity, parity_inputs

__all__ = [
    "EXPORTERS",
    "Exporter",
    "ExportResult",
    "LogitsModel",
    "ShapeProfile",
    "get_exporter",
    "input_names_for",
    "export_to_folder",
    "check_parity",
    "parity_inputs",
]
