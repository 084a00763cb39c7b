"""Hardware profiles: what a deployment target looks like, as data.

A profile is a TOML file (built-ins live in ``profiles/`` at the repository root) describing the
runtime, device kind, precision, the shapes the engine is built and benchmarked for, the CPU threads,
the alignment multiples kept heads / neurons are rounded to, and an optional default budget::

    name = "x86-cpu-ort"
    description = "..."
    runtime = "onnxruntime-cpu"      # onnxruntime-cpu | onnxruntime-cuda | onnxruntime-tensorrt | tensorrt | openvino-cpu | torch-aoti-cpu | torch-aoti-cuda
    device = "cpu"                   # cpu | gpu | jetson
    precision = "int8"               # fp32 | int8 (onnxruntime CPU) | bf16 (OpenVINO CPU) | fp16 | bf16 (GPUs)
    quantization = "dynamic"         # int8 only: dynamic | static (calibration batch) | auto (both, the faster that passes)
    int8_max_drop = 1.0              # int8 only, optional: points of accuracy int8 may lose against the fp32 graph of the
                                     # same model (validation split); beyond it nodes are left in fp32, last first
    batch_size = 8
    seq_len = 128                    # text models
    image_size = 224                 # vision models
    threads = 2
    head_multiple = 1
    neuron_multiple = 8
    [shapes]                         # the dynamic range of the exported engine
    min_batch = 1
    opt_batch = 8
    max_batch = 32
    min_seq = 1
    opt_seq = 128
    max_seq = 256
    [budget]                         # optional: one of
    flops = 0.6                      # fraction of the dense model's MACs
    # latency_ms = 12.5              # milliseconds on this target (needs a latency table)
    select_by = "macs"               # or "latency": a flops fraction weighs units by their measured latency here

A profile may instead **choose its target by measurement**: it names candidate profiles (same batch, sequence
length, image size and threads) and ``optin-deploy build`` exports the dense model for each one that can run here,
times them interleaved and evaluates them on the validation split, then builds for the fastest whose metric is
within ``equal_accuracy_points`` of the best (:mod:`optin_deploy.choose`)::

    name = "x86-cpu"
    description = "..."
    choose_from = ["x86-cpu-ort", "x86-amx-openvino-bf16"]   # names, or .toml paths relative to this file
    equal_accuracy_points = 0.5                               # optional (default 0.5)

Other commands (``prune``, ``sweep``, ``lut``) take the first candidate.

``load_profile(name_or_path)`` validates everything and raises one-line :class:`OptinError`\\ s
(unknown keys with a did-you-mean suggestion, wrong types, out-of-range values, min <= opt <= max).
"""

from __future__ import annotations

import difflib
import math
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from .errors import OptinError

PROFILES_DIR = Path(__file__).resolve().parents[1] / "profiles"
# the target of build, sweep and prune when --profile is not given: build measures onnxruntime int8 and OpenVINO bf16
# here and builds for the faster (profiles/x86-cpu.toml); sweep and prune take its first candidate, x86-cpu-ort
DEFAULT_PROFILE = "x86-cpu"

#: profile runtime -> name in :mod:`optin_deploy.runtimes`
RUNTIMES = {
    "onnxruntime-cpu": "ort-cpu",
    "onnxruntime-cuda": "ort-cuda",
    "onnxruntime-tensorrt": "ort-tensorrt",
    "tensorrt": "tensorrt",
    "openvino-cpu": "openvino-cpu",  # precision bf16: openvino-cpu-bf16 (see Profile.runtime_name)
    "torch-aoti-cpu": "torch-aoti-cpu",  # a PyTorch AOTInductor package (model.pt2), fp32
    "torch-aoti-cuda": "torch-aoti-cuda",  # the same compiled for a CUDA GPU: fp32, fp16 or bf16
}
DEVICES = ("cpu", "gpu", "jetson")
PRECISIONS = ("fp32", "int8", "fp16", "bf16")
QUANTIZATIONS = ("dynamic", "static", "auto")  # int8 on onnxruntime CPU (optin_deploy.int8)

# key -> (type, allowed values or (lo, hi) range or None, required, explanation)
_TOP: dict[str, tuple[type, Any, bool, str]] = {
    "name": (str, None, True, "profile name (what --profile takes)"),
    "description": (str, None, False, "one line about the target"),
    "runtime": (str, tuple(RUNTIMES), True, "runtime that executes the model on the target"),
    "device": (str, DEVICES, True, "device kind: cpu, gpu or jetson"),
    "precision": (str, PRECISIONS, True, "compute precision of the deployed model"),
    "quantization": (str, QUANTIZATIONS, False, "int8: dynamic, static (activation ranges from the calibration batch) or auto "
                                                "(both; keeps the faster here among those within int8_max_drop)"),
    "int8_max_drop": (float, None, False, "int8: accuracy points the int8 graph may lose against the fp32 graph of the same model "
                                          "(validation split); beyond it nodes are left in fp32, last first"),
    "batch_size": (int, (1, 65536), True, "batch size that latency tables and benchmarks use"),
    "seq_len": (int, (1, 1 << 20), False, "sequence length (tokens) for text models"),
    "image_size": (int, (1, 1 << 16), False, "input image side (pixels) for vision models"),
    "threads": (int, (1, 1024), True, "CPU threads (intra-op) for the runtime"),
    "head_multiple": (int, (1, 1024), True, "kept heads per layer are a multiple of this"),
    "neuron_multiple": (int, (1, 65536), True, "kept MLP neurons per layer are a multiple of this"),
    "shapes": (dict, None, False, "dynamic shape range of the exported engine (min/opt/max)"),
    "budget": (dict, None, False, "default budget when the command line gives none"),
}
_SHAPES: dict[str, tuple[type, Any, bool, str]] = {
    "min_batch": (int, (1, 65536), False, "smallest batch the engine accepts"),
    "opt_batch": (int, (1, 65536), False, "batch the engine is tuned for"),
    "max_batch": (int, (1, 65536), False, "largest batch the engine accepts"),
    "min_seq": (int, (1, 1 << 20), False, "shortest sequence (text)"),
    "opt_seq": (int, (1, 1 << 20), False, "sequence length the engine is tuned for (text)"),
    "max_seq": (int, (1, 1 << 20), False, "longest sequence (text)"),
}
_BUDGET: dict[str, tuple[type, Any, bool, str]] = {
    "flops": (float, (0.0, 1.0), False, "fraction of the dense model's MACs to keep, in (0, 1]"),
    "latency_ms": (float, (0.0, 1e9), False, "target latency in milliseconds on this target"),
    "select_by": (str, ("macs", "latency"), False, "what a --flops fraction weighs units by: their MACs, or their latency measured on this target"),
}
# a profile that chooses its target among others by measurement (optin_deploy.choose)
_CHOOSER: dict[str, tuple[type, Any, bool, str]] = {
    "name": (str, None, True, "profile name (what --profile takes)"),
    "description": (str, None, False, "one line about the target"),
    "choose_from": (list, None, True, "candidate profiles (names, or .toml paths relative to this file): build measures the dense model "
                                      "on each that can run here and builds for the fastest at equal accuracy"),
    "equal_accuracy_points": (float, (0.0, 100.0), False, "candidates whose validation metric is within this many points of the best "
                                                          "count as equally accurate (default 0.5)"),
}
DEFAULT_EQUAL_ACCURACY_POINTS = 0.5
FIELDS = {"": _TOP, "shapes": _SHAPES, "budget": _BUDGET}


@dataclass
class Profile:
    name: str
    runtime: str
    device: str
    precision: str
    batch_size: int
    threads: int
    head_multiple: int
    neuron_multiple: int
    description: str = ""
    seq_len: int | None = None
    image_size: int | None = None
    min_batch: int = 1
    opt_batch: int | None = None
    max_batch: int | None = None
    min_seq: int = 1
    opt_seq: int | None = None
    max_seq: int | None = None
    budget_flops: float | None = None
    budget_latency_ms: float | None = None
    quantization: str = "dynamic"  # int8: dynamic | static | auto
    int8_max_drop: float | None = None  # int8: the accuracy tolerance against the fp32 graph (None: not checked)
    budget_select_by: str = "macs"  # what a fraction budget weighs units by: "macs" or "latency" (the profile's measured table)
    path: str | None = field(default=None, compare=False)
    # a choosing profile (``choose_from``): its candidates, the first of which gives the fields above
    choose_from: tuple["Profile", ...] = field(default=(), compare=False)
    equal_accuracy_points: float = DEFAULT_EQUAL_ACCURACY_POINTS

    @property
    def is_choice(self) -> bool:
        """Whether this profile chooses its target among :attr:`choose_from` by measurement (``build``)."""
        return bool(self.choose_from)

    @property
    def runtime_name(self) -> str:
        """The :func:`optin_deploy.runtimes.get_runtime` name of this profile's runtime."""
        if self.runtime == "openvino-cpu" and self.precision == "bf16":  # the fp32 graph, run in bf16 by OpenVINO
            return "openvino-cpu-bf16"
        return RUNTIMES[self.runtime]

    @property
    def is_gpu(self) -> bool:
        return self.device in ("gpu", "jetson")

    def shape_profile(self):
        """The exporters' :class:`~optin_deploy.exporters.base.ShapeProfile` for this target."""
        from .exporters.base import ShapeProfile

        return ShapeProfile(self.min_batch, self.opt_batch or self.batch_size, self.max_batch or self.batch_size,
                            self.min_seq, self.opt_seq or (self.seq_len or 128), self.max_seq or (self.seq_len or 512))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["choose_from"] = [p.name for p in self.choose_from]
        return d


def selection_kwargs(profile: Profile | None) -> dict:
    """Keyword arguments for :func:`optin_deploy.core.selection.select` from a profile's alignment."""
    if profile is None:
        return {"head_multiple": 1, "neuron_multiple": 1}
    return {"head_multiple": int(profile.head_multiple), "neuron_multiple": int(profile.neuron_multiple)}


# ----------------------------------------------------------------------------------- discovery


def list_profiles() -> list[Profile]:
    """The built-in profiles, sorted by name."""
    return [load_profile(p) for p in sorted(PROFILES_DIR.glob("*.toml"))]


def profile_names() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.toml"))


def _resolve(name_or_path: str | os.PathLike) -> Path:
    s = str(name_or_path)
    p = Path(s)
    looks_like_path = s.endswith(".toml") or os.sep in s or "/" in s
    if looks_like_path:
        if not p.is_file():
            raise OptinError(f"profile file {s} does not exist")
        return p
    builtin = PROFILES_DIR / f"{s}.toml"
    if builtin.is_file():
        return builtin
    names = profile_names()
    close = difflib.get_close_matches(s, names, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise OptinError(f"unknown profile {s!r}; {hint}built-ins: {', '.join(names)} (or pass a .toml path)")


def _check_table(table: dict, schema: dict, where: str, src: str) -> None:
    for key, value in table.items():
        if key not in schema:
            close = difflib.get_close_matches(key, list(schema), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(schema)}"
            raise OptinError(f"unknown key {where}{key!r} in profile {src}{hint}")
        typ, allowed, _, _ = schema[key]
        ok = isinstance(value, typ) and not isinstance(value, bool)
        if typ is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            tname = {str: "a string", int: "an integer", float: "a number", dict: "a table", list: "a list"}[typ]
            raise OptinError(f"{where}{key} in profile {src} must be {tname}, got {value!r} ({type(value).__name__})")
        if isinstance(allowed, tuple) and allowed and isinstance(allowed[0], str):
            if value not in allowed:
                close = difflib.get_close_matches(str(value), allowed, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise OptinError(f"{where}{key} = {value!r} in profile {src} is not supported; {hint}choose one of {', '.join(allowed)}")
        elif isinstance(allowed, tuple):
            lo, hi = allowed
            bad = (value <= lo if typ is float else value < lo) or value > hi or (typ is float and not math.isfinite(value))
            if bad:
                rng = f"in ({lo:g}, {hi:g}]" if typ is float else f"in {lo}..{hi}"
                raise OptinError(f"{where}{key} = {value!r} in profile {src} is out of range; it must be {rng}")
    for key, (_, _, required, _) in schema.items():
        if required and key not in table:
            raise OptinError(f"profile {src} lacks the required key {where}{key}")


def _parse_choice(data: dict, src: str, stack: tuple[str, ...]) -> Profile:
    """A profile that chooses among ``choose_from`` by measurement: the first candidate's fields, its own name."""
    _check_table(data, _CHOOSER, "", src)
    names = data["choose_from"]
    if not names or not all(isinstance(n, str) and n for n in names):
        raise OptinError(f"choose_from in profile {src} must be a non-empty list of profile names or .toml paths, got {names!r}")
    if len(set(names)) != len(names):
        raise OptinError(f"choose_from in profile {src} names a profile twice: {names!r}")
    here = Path(src).parent if src != "<dict>" else Path.cwd()
    cands = []
    for n in names:
        spec = n if not (n.endswith(".toml") or "/" in n or os.sep in n) or Path(n).is_absolute() else str(here / n)
        p = load_profile(spec, _stack=stack + ((str(Path(src).resolve()),) if src != "<dict>" else ()))
        if p.is_choice:
            raise OptinError(f"choose_from in profile {src} lists {n!r}, which chooses among profiles itself; list the profiles it chooses from")
        cands.append(p)
    dup = [p.name for i, p in enumerate(cands) if p.name in [q.name for q in cands[:i]]]
    if dup:
        raise OptinError(f"choose_from in profile {src} lists two profiles named {dup[0]!r}; give each candidate its own name")
    first = cands[0]
    for p in cands[1:]:
        for key in ("batch_size", "seq_len", "image_size", "threads"):
            if getattr(p, key) != getattr(first, key):
                raise OptinError(f"the candidates of profile {src} must be timed at one shape: {first.name} has {key} = {getattr(first, key)}, "
                                 f"{p.name} has {getattr(p, key)}; list profiles with the same batch_size, seq_len, image_size and threads")
        default = lambda q: ("latency_ms", q.budget_latency_ms) if q.budget_latency_ms is not None else ("flops", q.budget_flops or 0.6)  # noqa: E731
        if default(p) != default(first):  # build takes the first's default budget, whichever candidate is chosen
            raise OptinError(f"the candidates of profile {src} must share one default budget: {first.name} has budget.{default(first)[0]} = "
                             f"{default(first)[1]:g}, {p.name} has budget.{default(p)[0]} = {default(p)[1]:g}; give them the same [budget]")
    return replace(first, name=data["name"], description=data.get("description", first.description), path=src, choose_from=tuple(cands),
                   equal_accuracy_points=float(data.get("equal_accuracy_points", DEFAULT_EQUAL_ACCURACY_POINTS)))


def parse_profile(data: dict, src: str = "<dict>", _stack: tuple[str, ...] = ()) -> Profile:
    """Validate a parsed TOML table and build the :class:`Profile`."""
    if "choose_from" in data:
        return _parse_choice(data, src, _stack)
    if data.get("runtime") in ("torch-cpu", "torch-cuda"):  # bench --runtime names, not deployment targets
        raise OptinError(f"runtime = {data['runtime']!r} in profile {src} is not a deployment target (a build ships an exported "
                         f"artefact); use torch-aoti-cpu / torch-aoti-cuda for a PyTorch package on a CPU / GPU, or an onnxruntime / OpenVINO / TensorRT runtime")
    _check_table(data, _TOP, "", src)
    shapes = data.get("shapes", {})
    budget = data.get("budget", {})
    _check_table(shapes, _SHAPES, "shapes.", src)
    _check_table(budget, _BUDGET, "budget.", src)
    if len({k: v for k, v in budget.items() if k != "select_by"}) > 1:
        raise OptinError(f"budget in profile {src} must give one of flops or latency_ms, not both")
    runtime, device = data["runtime"], data["device"]
    if RUNTIMES[runtime].endswith("cpu") and device != "cpu":
        raise OptinError(f"runtime {runtime} in profile {src} runs on the CPU but device = {device!r}; set device = \"cpu\"")
    if data["precision"] == "int8" and runtime != "onnxruntime-cpu":
        raise OptinError(f"precision int8 in profile {src} is for runtime onnxruntime-cpu (dynamic quantisation), not {runtime}; use fp16 or bf16 on GPUs")
    if data["precision"] != "int8":
        for key in ("quantization", "int8_max_drop"):
            if key in data:
                raise OptinError(f"{key} in profile {src} applies to precision int8 only (this profile is {data['precision']}); remove it")
    if "int8_max_drop" in data and not (0.0 <= float(data["int8_max_drop"]) <= 100.0):
        raise OptinError(f"int8_max_drop = {data['int8_max_drop']!r} in profile {src} is out of range; it must be in 0..100 (accuracy points)")
    if runtime in ("onnxruntime-cuda", "onnxruntime-tensorrt") and data["precision"] != "fp32":
        raise OptinError(f"precision {data['precision']} in profile {src} is not for runtime {runtime}: a build exports and times the "
                         f"ONNX graph in fp32 there; use precision = \"fp32\", or runtime = \"tensorrt\" for fp16 / bf16 engines")
    if runtime == "onnxruntime-cpu" and data["precision"] not in ("fp32", "int8"):
        raise OptinError(f"precision {data['precision']} in profile {src} is not for runtime onnxruntime-cpu, which runs the exported graph "
                         f"in fp32 or int8; use fp32 or int8 (bf16 on a CPU: runtime = \"openvino-cpu\")")
    if runtime == "openvino-cpu" and data["precision"] not in ("fp32", "bf16"):
        raise OptinError(f"precision {data['precision']} in profile {src} is not for runtime openvino-cpu; use fp32 or bf16 (OpenVINO's inference precision)")
    if runtime == "torch-aoti-cpu" and data["precision"] != "fp32":
        raise OptinError(f"precision {data['precision']} in profile {src} is not for runtime torch-aoti-cpu; AOTInductor packages are fp32 on a CPU "
                         f"here (fp16 / bf16: runtime = \"torch-aoti-cuda\")")
    if runtime == "torch-aoti-cuda" and data["precision"] not in ("fp32", "fp16", "bf16"):
        raise OptinError(f"precision {data['precision']} in profile {src} is not for runtime torch-aoti-cuda; use fp32, fp16 or bf16")
    if not RUNTIMES[runtime].endswith("cpu") and device == "cpu":
        raise OptinError(f"runtime {runtime} in profile {src} needs a GPU but device = \"cpu\"; set device = \"gpu\" or \"jetson\"")
    bs = data["batch_size"]
    mn, opt, mx = shapes.get("min_batch", 1), shapes.get("opt_batch", bs), shapes.get("max_batch", max(bs, shapes.get("opt_batch", bs)))
    if not (mn <= opt <= mx):
        raise OptinError(f"shapes in profile {src} must satisfy min_batch <= opt_batch <= max_batch, got {mn} / {opt} / {mx}")
    if not (mn <= bs <= mx):
        raise OptinError(f"batch_size = {bs} in profile {src} is outside shapes min_batch..max_batch ({mn}..{mx})")
    seq = data.get("seq_len")
    smn = shapes.get("min_seq", 1)
    sopt = shapes.get("opt_seq", seq)
    smx = shapes.get("max_seq", max(x for x in (seq, sopt, smn) if x is not None))
    if sopt is not None and not (smn <= sopt <= smx):
        raise OptinError(f"shapes in profile {src} must satisfy min_seq <= opt_seq <= max_seq, got {smn} / {sopt} / {smx}")
    if seq is not None and not (smn <= seq <= smx):
        raise OptinError(f"seq_len = {seq} in profile {src} is outside shapes min_seq..max_seq ({smn}..{smx})")
    return Profile(
        name=data["name"], runtime=runtime, device=device, precision=data["precision"], batch_size=bs,
        threads=data["threads"], head_multiple=data["head_multiple"], neuron_multiple=data["neuron_multiple"],
        description=data.get("description", ""), seq_len=seq, image_size=data.get("image_size"),
        min_batch=mn, opt_batch=opt, max_batch=mx, min_seq=smn, opt_seq=sopt, max_seq=smx,
        budget_flops=float(budget["flops"]) if "flops" in budget else None,
        budget_latency_ms=float(budget["latency_ms"]) if "latency_ms" in budget else None,
        budget_select_by=budget.get("select_by", "macs"),
        quantization=data.get("quantization", "dynamic"),
        int8_max_drop=float(data["int8_max_drop"]) if "int8_max_drop" in data else None,
        path=src,
    )


def load_profile(name_or_path: str | os.PathLike | Profile, _stack: tuple[str, ...] = ()) -> Profile:
    """A built-in profile by name (``x86-cpu-ort``) or a profile file by path, validated."""
    if isinstance(name_or_path, Profile):
        return name_or_path
    path = _resolve(name_or_path)
    if str(Path(path).resolve()) in _stack:
        raise OptinError(f"profile {path} lists itself through choose_from ({' -> '.join(_stack)}); list profiles that run the model")
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise OptinError(f"profile {path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise OptinError(f"profile {path} is not UTF-8 text (TOML files are UTF-8); save it as UTF-8") from None
    except OSError as exc:
        raise OptinError(f"cannot read profile {path}: {exc.strerror or exc}") from None
    return parse_profile(data, str(path), _stack)


def explain(profile: Profile) -> list[tuple[str, str, str]]:
    """``(key, value, explanation)`` rows for every field (``optin-deploy profiles show``)."""
    rows = []
    if profile.is_choice:
        rows.append(("choose_from", ", ".join(p.name for p in profile.choose_from), _CHOOSER["choose_from"][3]
                     + f"; the fields below are {profile.choose_from[0].name}'s, which prune, sweep and lut take"))
        rows.append(("equal_accuracy_points", f"{profile.equal_accuracy_points:g}", _CHOOSER["equal_accuracy_points"][3]))
    for key, (_, _, _, doc) in _TOP.items():
        if key in ("shapes", "budget"):
            continue
        v = getattr(profile, key)
        if key in ("quantization", "int8_max_drop") and profile.precision != "int8":
            v = None  # int8 settings
        if key == "runtime":
            doc += f" (runtime name {profile.runtime_name})"
        rows.append((key, "-" if v is None else str(v), doc))
    for key, (_, _, _, doc) in _SHAPES.items():
        v = getattr(profile, key)
        rows.append((f"shapes.{key}", "-" if v is None else str(v), doc))
    for key, (_, _, _, doc) in _BUDGET.items():
        v = getattr(profile, f"budget_{key}")
        rows.append((f"budget.{key}", "-" if v is None else (v if isinstance(v, str) else f"{v:g}"), doc))
    return rows
