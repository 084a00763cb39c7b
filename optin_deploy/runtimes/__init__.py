"""Runtimes that run exported artifacts: see :mod:`optin_deploy.runtimes.base`."""

from .base import RUNTIMES, Runtime, get_runtime, load_torch_model

__all__ = ["RUNTIMES", "Runtime", "get_runtime", "load_torch_model"]
