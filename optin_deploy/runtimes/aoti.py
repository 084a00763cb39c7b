"""``torch-aoti-cpu`` / ``torch-aoti-cuda``: an AOTInductor package (``model.pt2``, :mod:`optin_deploy.exporters.aoti`)
on the CPU, or on a CUDA GPU (a package compiled for CUDA, fp32 / fp16 / bf16; inputs are copied to the GPU and the
logits back, which the timings include, as a server's would).

Loaded with ``torch._inductor.aoti_load_package``: the model's Python code (transformers, the adapters) is
not needed, only torch. Inputs are passed positionally in the order the bundle records; the package checks
nothing about shapes beyond its compiled guards, so shapes outside the exported range (or, for a static
package, other than the exported shape) are refused here with a one-line error; a batch larger than the
exported maximum runs in chunks of that maximum (what ``eval`` sends).

Trust: a ``.pt2`` holds a shared library that is ``dlopen``\\ ed on load, so loading a package runs native code
from the file, as running any executable does. This runtime loads only packages optin-deploy wrote: the
file's SHA-256 must match the one its bundle's ``export.json`` recorded at export time, the package must
hold nothing but AOTInductor's generated files (``aoti_load_package`` would also deserialise exported
programs and pickled weights if an archive carried them; ours carry none and others are refused), and the
torch version must be the one it was compiled against. A bare ``.pt2`` without its bundle is refused.
"""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ..data.assets import sha256_file
from ..errors import OptinError
from ..progress import silenced
from .base import Runtime, read_manifest

#: archive members an AOTInductor package of ours holds besides data/aotinductor/<model>/* (generated C++, the compiled .so, metadata)
_HOUSEKEEPING = re.compile(r"^[^/]+/(archive_format|archive_version|byteorder|version|\.data/version|\.data/serialization_id)$")
_AOTI_FILE = re.compile(r"^[^/]+/data/aotinductor/model/([^/]+/)*[^/]+\.(so|cpp|json|o|h|txt|bin|cubin|fatbin|ptx|hsaco)$")


def quiet():
    """Inductor and the exporter log warnings (no CUDA runtime, guards) that say nothing to the user."""
    return silenced("torch", "torch._inductor", "torch.utils.cpp_extension", "torch._export", "torch.export")


def package_members_error(path: Path) -> str | None:
    """None when ``path`` is a zip holding only AOTInductor's own files, else what is wrong."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        return f"{path} is not a readable AOTInductor package ({type(exc).__name__}); re-export it"
    other = [n for n in names if not n.endswith("/") and not (_HOUSEKEEPING.match(n) or _AOTI_FILE.match(n))]
    if other:
        return f"{path} holds files an AOTInductor package of optin-deploy never holds ({', '.join(other[:3])}{', ...' if len(other) > 3 else ''}); refusing to load it"
    if not any(n.endswith(".so") for n in names):
        return f"{path} holds no compiled library (data/aotinductor/model/*.so); re-export it"
    return None


class AotiRuntime(Runtime):
    def __init__(self, name: str = "torch-aoti-cpu", threads: int | None = None):
        self.name = name
        self.device = "cuda" if name == "torch-aoti-cuda" else "cpu"
        if self.device == "cuda":
            from .base import require_cuda

            require_cuda(f"runtime {name!r}")
        self.threads = threads
        self.model = None
        self.path: Path | None = None
        self.meta: dict = {}
        self.input_names: list[str] = []

    def load(self, artifact: Any) -> "AotiRuntime":
        p = Path(str(artifact)).expanduser()
        manifest = read_manifest(p) if p.exists() else None
        if manifest is None or manifest.get("format") != "aoti":
            raise OptinError(f"{artifact}: {self.name} loads only AOTInductor bundles optin-deploy wrote (a .pt2 runs native code when "
                             f"loaded; its export.json records the file's sha256); make one with: optin-deploy export MODEL --format aoti --out DIR")
        path = p if p.is_file() else Path(manifest["artifact"])
        if not path.is_file():
            raise OptinError(f"bundle {p} names the package {path.name}, which is missing; re-export the bundle")
        meta = (manifest.get("artifacts") or {}).get("aoti") or {}
        if Path(meta.get("path", "")).resolve() != path.resolve():
            raise OptinError(f"{path} is not the package bundle {manifest['folder']} recorded; pass the bundle folder")
        return self.load_package(path, meta)

    def load_package(self, path: str | os.PathLike, meta: Mapping) -> "AotiRuntime":
        """Load ``path`` after checking it against the exporter's metadata ``meta`` (sha256, torch version)."""
        path = Path(path)
        if not meta.get("sha256"):
            raise OptinError(f"{path}: its bundle records no sha256; re-export it with optin-deploy export --format aoti")
        if sha256_file(path) != meta["sha256"]:
            raise OptinError(f"{path} does not match the sha256 its export.json recorded (changed or replaced since export); re-export the bundle")
        built_for = meta.get("device", "cpu")
        if built_for != self.device:
            raise OptinError(f"{path} was compiled for device {built_for} and {self.name} runs {self.device} packages; run it with "
                             f"--runtime torch-aoti-{built_for}, or re-export it with --device {self.device}")
        if meta.get("torch_version") != torch.__version__:
            raise OptinError(f"{path} was compiled against torch {meta.get('torch_version')}, this is torch {torch.__version__}; re-export it here")
        err = package_members_error(path)
        if err:
            raise OptinError(err)
        if self.threads and self.device == "cpu":
            torch.set_num_threads(int(self.threads))
        try:
            with quiet():
                self.model = torch._inductor.aoti_load_package(str(path))
        except Exception as exc:  # noqa: BLE001 - the loader raises RuntimeError with the dlopen / metadata message
            first = next((ln for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
            raise OptinError(f"torch {torch.__version__} cannot load {path}: {first[:300]}; re-export it here") from None
        self.path = path
        self.meta = dict(meta)
        self.input_names = list(meta.get("input_names") or [])
        return self

    def _check_shapes(self, tensors: Mapping[str, torch.Tensor]) -> None:
        if self.meta.get("dynamic") is False:
            want = self.meta.get("static_shapes") or {}
            for n, t in tensors.items():
                if n in want and list(t.shape) != list(want[n]):
                    raise OptinError(f"{self.path} was exported static at {n} {want[n]} (dynamic export failed: "
                                     f"{self.meta.get('dynamic_error', '?')}); got {list(t.shape)}")
            return
        for n, axes in (self.meta.get("dynamic_shapes") or {}).items():
            for ax, (lo, hi) in axes.items():
                d = tensors[n].shape[int(ax)]
                if not lo <= d <= hi:
                    raise OptinError(f"{self.path} takes {n} axis {ax} from {lo} to {hi} (the export profile); got {d}")

    @torch.inference_mode()
    def run(self, inputs: Mapping[str, np.ndarray | torch.Tensor]) -> np.ndarray:
        if self.model is None:
            raise OptinError(f"runtime {self.name}: call load() before run()")
        dtypes = self.meta.get("input_dtypes") or {}
        tensors = {}
        for n in self.input_names:
            if n not in inputs:
                raise OptinError(f"{self.path} needs input {n!r}; got {list(inputs)}")
            x = inputs[n]
            t = x.detach().cpu() if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
            dt = getattr(torch, dtypes.get(n, ""), None)
            tensors[n] = (t.to(dt) if isinstance(dt, torch.dtype) else t).contiguous()
        if self.device == "cuda":
            tensors = {n: t.to(self.device, non_blocking=True) for n, t in tensors.items()}
        hi = self._max_batch()
        n = next(iter(tensors.values())).shape[0] if tensors else 0
        if hi and n > hi:  # a batch above the exported range runs in chunks of the largest batch the package takes
            return np.concatenate([self.run({k: v[i:i + hi] for k, v in tensors.items()}) for i in range(0, n, hi)])
        self._check_shapes(tensors)
        out = self.model(*tensors.values())
        if isinstance(out, (list, tuple)):
            out = out[0]
        return np.array(out.float().cpu().numpy(), copy=True)

    def _max_batch(self) -> int | None:
        if self.meta.get("dynamic") is False:
            return None
        his = [axes["0"][1] for axes in (self.meta.get("dynamic_shapes") or {}).values() if "0" in axes]
        return min(his) if his else None

    def describe(self) -> dict:
        d = {"runtime": self.name, "backend": "pytorch AOTInductor (aoti_load_package)", "device": self.device,
             "version": torch.__version__, "threads": torch.get_num_threads() if self.device == "cpu" else None}
        if self.device == "cuda":
            d["gpu"] = torch.cuda.get_device_name()
        if self.path is not None:
            d["artifact"] = str(self.path)
            d["dynamic"] = self.meta.get("dynamic")
            d["precision"] = self.meta.get("precision", "fp32")
        return d
