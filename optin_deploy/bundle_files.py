"""A build bundle's files checked against its ``manifest.json`` before a command reads them.

``optin-deploy build`` lists every file of the bundle in ``manifest.json`` with its size and sha256. A command
that reads a folder of a bundle (an export folder ``onnx/pruned``, the pruned model ``pruned/``, its tokenizer)
first checks that folder's listed files and ``report.json`` (which ``bench`` / ``eval`` read the bundle's settings
from): a file changed, replaced (another model's ``model.onnx`` with the same inputs) or removed since the build,
or a file added to that folder (a tokenizer file the loader would pick up), is refused in one line naming it,
so no figure is computed from an artefact other than the one the report describes.

A folder the manifest lists nothing under (``aoti/pruned`` exported into the bundle later, with a record of its
own) is not checked; a bundle whose ``manifest.json`` is missing or damaged is refused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import OptinError
from .safe_out import MARKER

MANIFEST = "manifest.json"
_DEPTH = 3  # members lie at most this deep below the bundle root (onnx/pruned, baselines/NAME, pruned)
_HASHES: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256, so one process hashes a file once


def _read(f: Path):
    try:
        return json.loads(f.read_text())
    except (OSError, ValueError):
        return None


def bundle_root(path: str | os.PathLike) -> Path | None:
    """The build bundle ``path`` lies in: itself or one of its first parents, marked ``kind: bundle`` or holding the
    ``manifest.json`` a build writes (a copy made with ``cp -r B/* DEST`` leaves the hidden marker behind), else None."""
    p = Path(path).expanduser().resolve()
    start = p if p.is_dir() else p.parent
    for q in [start, *start.parents][: _DEPTH + 1]:
        marker = _read(q / MARKER) if (q / MARKER).is_file() else None
        if isinstance(marker, dict) and marker.get("kind") == "bundle":
            return q
        if not (q / MANIFEST).is_file():
            continue
        manifest = _read(q / MANIFEST) if not (q / MARKER).is_file() else None
        if (q / MARKER).is_file() or (isinstance(manifest, dict) and str(manifest.get("created_by", "")).startswith("optin-deploy")):
            return q
    return None


def _listed(root: Path) -> dict:
    f = root / MANIFEST
    try:
        files = json.loads(f.read_text())["files"]
        if not isinstance(files, dict) or not all(isinstance(v, dict) for v in files.values()):
            raise TypeError
    except FileNotFoundError:
        raise OptinError(f"bundle {root}: its {MANIFEST} is missing, so its files cannot be checked; rebuild the bundle "
                         f"(optin-deploy build) or restore {MANIFEST}") from None
    except (OSError, ValueError, KeyError, TypeError):
        raise OptinError(f"bundle {root}: its {MANIFEST} is damaged (no 'files' list of sizes and sha256); rebuild the bundle "
                         f"(optin-deploy build) or restore {MANIFEST}") from None
    return files


def _sha256(path: Path) -> str:
    from .data.assets import sha256_file

    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = sha256_file(path)
    return _HASHES[key]


def check_bundle_member(path: str | os.PathLike) -> None:
    """Refuse, in one line naming the file, a bundle folder (or a file in one) whose files differ from ``manifest.json``.

    Checked: every file the manifest lists under that folder (present, same size, same sha256), no file in the folder
    that it does not list, and ``report.json``. Paths outside a bundle, and folders the manifest lists nothing under,
    pass unchecked."""
    p = Path(path).expanduser()
    if not p.exists():
        return
    root = bundle_root(p)
    if root is None:
        return
    folder = p.resolve() if p.is_dir() else p.resolve().parent
    rel = folder.relative_to(root).as_posix()
    files = _listed(root)
    prefix = "" if rel == "." else rel + "/"
    under = {k: v for k, v in files.items() if prefix and k.startswith(prefix)}  # the root itself: report.json only
    if not under and prefix:
        return  # not part of the build (an export added into the bundle later): its own record checks it
    wanted = {**under, **({"report.json": files["report.json"]} if "report.json" in files else {})}
    for name, rec in sorted(wanted.items()):
        f = root / name
        why = None
        if not f.is_file():
            why = f"is missing (its {MANIFEST} lists it)"
        elif rec.get("bytes") is not None and f.stat().st_size != rec.get("bytes"):
            why = f"has {f.stat().st_size} bytes where its {MANIFEST} records {rec.get('bytes')}"
        elif _sha256(f) != rec.get("sha256"):
            why = f"differs from the sha256 its {MANIFEST} records"
        if why:
            raise OptinError(f"bundle {root}: {name} {why}: changed, replaced or removed since the build, so what it computes "
                             f"would not be what report.json describes; restore the file or rebuild the bundle (optin-deploy build)")
    for f in sorted(folder.iterdir()) if prefix else ():
        name = f"{prefix}{f.name}"
        if f.is_file() and name not in files and not f.name.startswith("."):  # a hidden file (.DS_Store) is read by no loader
            raise OptinError(f"bundle {root}: {name} is not one of the files its {MANIFEST} lists (added since the build, and "
                             f"read with the others); remove it or rebuild the bundle (optin-deploy build)")
