"""The deployment target, resolved once: a profile plus the shapes, threads, precision and runtime
it implies.

A command resolves ``--profile`` with :func:`resolve_target` at its entry and passes the
:class:`Target` down; nothing below re-reads a profile by name. Every benchmark, latency table and
MAC budget measures at :attr:`Target.batch` x :attr:`Target.seq_len` (text; the profile's
``batch_size`` / ``seq_len``, which the profile documents as the benchmark shape), clamped to what the
model's position embeddings allow (:meth:`Target.text_len`); the exported graph is tuned for the
profile's ``shapes`` (:meth:`Target.shape`). Example inputs at that shape come from
:meth:`Target.example_inputs` only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import torch

from .profiles import Profile, load_profile, selection_kwargs


@dataclass(frozen=True)
class Target:
    profile: Profile
    batch: int  # samples per benchmark / latency-table run
    seq_len: int  # tokens per text sample in benchmarks, latency tables and MAC budgets (before the model's limit)
    image_size: int | None  # what the profile says; an image model is timed at its own input size (lut warns when they differ)
    threads: int
    precision: str
    runtime: str  # the profile's runtime as the profile names it (onnxruntime-cpu, tensorrt, ...)
    runtime_name: str  # the :func:`optin_deploy.runtimes.base.get_runtime` name (ort-cpu, tensorrt, ...)
    # resolved from a choosing profile (``choose_from``): the profile that chooses, and its candidates resolved as targets
    # (this target is the first until ``build`` measures them all: :mod:`optin_deploy.choose`)
    chooser: Profile | None = None
    choices: tuple["Target", ...] = ()

    @property
    def name(self) -> str:
        return self.profile.name

    @property
    def selection_kwargs(self) -> dict:
        """Head / neuron alignment of the selection (``head_multiple``, ``neuron_multiple``)."""
        return selection_kwargs(self.profile)

    def text_len(self, model: torch.nn.Module) -> int:
        """:attr:`seq_len`, at most the model's usable positions."""
        from .adapters import get_adapter

        maxpos = get_adapter(model).max_positions()
        return min(self.seq_len, maxpos) if maxpos else self.seq_len

    def mac_seq_len(self, model: torch.nn.Module) -> int:
        """Tokens per sample a MAC budget (``--flops``) is counted at, for ``build`` and ``prune`` alike:
        :meth:`text_len` for text, the model's own token count for images (the benchmark shape's)."""
        from .adapters import get_adapter

        a = get_adapter(model)
        return self.text_len(model) if a.modality == "text" else a.seq_len(a.example_inputs(1))

    def shape(self, model: torch.nn.Module | None = None):
        """The exporters' :class:`~optin_deploy.exporters.base.ShapeProfile` (min/opt/max batch and
        tokens) for this target, the token range clamped to the model's usable positions."""
        from .exporters.base import ShapeProfile

        shape = self.profile.shape_profile()
        if model is not None:
            from .adapters import get_adapter

            a = get_adapter(model)
            if a.modality == "text":
                maxpos = a.max_positions() or shape.max_seq
                if shape.max_seq > maxpos:
                    shape = ShapeProfile(shape.min_batch, shape.opt_batch, shape.max_batch, shape.min_seq, min(shape.opt_seq, maxpos), maxpos)
        return shape

    def example_inputs(self, model: torch.nn.Module, task=None, batch: int | None = None) -> dict[str, torch.Tensor]:
        """Inputs at the target's shape: ``batch`` (default :attr:`batch`) samples of
        :meth:`text_len` tokens, or the model's image size. With a ``task``: its real test samples
        (text padded/truncated to the length); without: the adapter's seeded random ids, every
        position attended."""
        from .adapters import get_adapter

        b = batch or self.batch
        a = get_adapter(model)
        if a.modality == "text":
            seq = self.text_len(model)
            return task.example_inputs(b, seq) if task is not None else a.example_inputs(b, seq, padded=False)
        return task.example_inputs(b) if task is not None else a.example_inputs(b)

    def to_dict(self) -> dict:
        return {"profile": self.name, "batch": self.batch, "seq_len": self.seq_len, "image_size": self.image_size, "threads": self.threads,
                "precision": self.precision, "runtime": self.runtime_name}


def resolve_target(spec: "Target | Profile | str | os.PathLike") -> Target:
    """A :class:`Target` from a profile name, a profile file, a :class:`~optin_deploy.profiles.Profile`
    or a Target (returned as it is). The one place a profile becomes shapes."""
    if isinstance(spec, Target):
        return spec
    p = load_profile(spec)
    if p.is_choice:  # the first candidate, until build measures them all (optin_deploy.choose)
        choices = tuple(_target(c) for c in p.choose_from)
        return replace(choices[0], chooser=p, choices=choices)
    return _target(p)


def _target(p: Profile) -> Target:
    return Target(profile=p, batch=p.batch_size, seq_len=p.seq_len or p.opt_seq or 128, image_size=p.image_size, threads=p.threads,
                  precision=p.precision, runtime=p.runtime, runtime_name=p.runtime_name)
