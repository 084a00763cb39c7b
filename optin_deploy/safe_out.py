"""Writing output folders without ever losing a user's files.

Every folder this tool creates (a build bundle, an export, a pruned model) carries a marker file,
:data:`MARKER`. ``--out`` may replace only such a folder (or an empty one); anything else is refused
with one line naming ``--force`` or a new folder, and some places are refused even with ``--force``:
``/``, the home folder, the current folder or any folder above it, and the folders holding the
command's own inputs (the model, the data).

Writing goes through a staging folder beside the destination, ``.NAME.tmp-PID-XXXX``::

    with staged_output(out, force=False, protect=[model_dir], kind="bundle") as staging:
        ... write everything into staging ...
    # on success: old OUT renamed aside to .NAME.old-PID, staging renamed to OUT, old removed;
    # on any failure (an exception, Ctrl-C, SIGTERM) staging is removed and OUT is untouched.

Staging and set-aside folders left by a killed run (their PID no longer runs) are removed, or put
back, by the next run on the same ``--out``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from . import interrupts
from .errors import OptinError, StorageError

MARKER = ".optin-deploy"
_TMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<what>tmp|old)-(?P<pid>\d+)(-.*)?$")


def write_marker(folder: str | os.PathLike, kind: str) -> None:
    """Mark ``folder`` as written by optin-deploy (``kind``: bundle, export, pruned)."""
    from . import __version__

    (Path(folder) / MARKER).write_text(json.dumps({"written_by": "optin-deploy", "kind": kind, "version": __version__}) + "\n")


def is_ours(folder: str | os.PathLike) -> bool:
    return (Path(folder) / MARKER).is_file()


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _within(a: Path, b: Path) -> bool:
    """Whether ``a`` is ``b`` or inside it."""
    try:
        a.relative_to(b)
        return True
    except ValueError:
        return False


def _resolve(p: str | os.PathLike) -> Path:
    return Path(os.path.abspath(Path(p).expanduser()))


def check_out(out: str | os.PathLike, *, force: bool = False, protect: Iterable[str | os.PathLike | None] = (),
              flag: str = "--out") -> Path:
    """Refuse an output path that would destroy something the user owns; returns it resolved.

    Allowed: a path that does not exist, an empty folder, or a folder holding :data:`MARKER`.
    With ``force``: any other folder or file too, except ``/``, the home folder, the current folder
    and its parents, and folders that hold (or are) one of ``protect`` (the command's inputs).
    """
    o = _resolve(out)
    home = _resolve(Path.home())
    cwd = _resolve(Path.cwd())
    never = [(Path(o.anchor), "the file-system root"), (home, "your home folder")]
    for where, what in never:
        if o == where:
            raise OptinError(f"{flag} {out} is {what}; refusing to replace it, even with --force; pass a new folder")
    if _within(cwd, o):
        raise OptinError(f"{flag} {out} is the current folder or contains it; refusing to replace it, even with --force; pass a new folder")
    for p in protect:
        if not p:
            continue
        s = str(p)
        if s.startswith("timm:") and "@" in s:
            s = s.split("@", 1)[1]
        pp = _resolve(s)
        if not pp.exists():
            continue
        if _within(pp, o):
            raise OptinError(f"{flag} {out} holds this command's input {p}; refusing to replace it, even with --force; pass a new folder")
    if not o.exists() and not o.is_symlink():
        return o
    if o.is_symlink() and not force:
        raise OptinError(f"{flag} {out} is a symbolic link; pass a new folder, or --force to replace the link")
    if o.is_dir() and not o.is_symlink():
        if is_ours(o) or force:
            return o
        try:
            empty = not any(o.iterdir())
        except OSError as exc:
            raise OptinError(f"{flag} {out} cannot be read ({exc.strerror}); pass a new folder") from None
        if empty:
            return o
        raise OptinError(f"{flag} {out} is an existing folder that optin-deploy did not write (no {MARKER} marker); "
                         f"pass a new folder, or --force to replace it")
    if force:
        return o
    raise OptinError(f"{flag} {out} is an existing file; pass a new folder, or --force to replace it")


def check_out_file(out: str | os.PathLike, *, force: bool = False, ours=None, flag: str = "--out") -> Path:
    """Like :func:`check_out` for a single output file: a new path, a file ``ours(path)`` recognises
    as written by optin-deploy, or (with ``force``) any other file; never a folder."""
    o = _resolve(out)
    if o.is_dir():
        raise OptinError(f"{flag} {out} is a folder; pass a file name (e.g. {Path(out) / 'lut.json'})")
    if not o.exists() or force:
        return o
    try:
        mine = bool(ours and ours(o))
    except Exception:  # noqa: BLE001 - unreadable or not ours
        mine = False
    if mine:
        return o
    raise OptinError(f"{flag} {out} is an existing file that optin-deploy did not write; pass a new file name, or --force to replace it")


def clean_stale(out: Path) -> list[str]:
    """Remove staging folders (``.NAME.tmp-PID-*``) of dead runs beside ``out``; put back a
    set-aside ``.NAME.old-PID`` when a dead run left ``out`` missing. Returns what was done."""
    done: list[str] = []
    parent = out.parent
    if not parent.is_dir():
        return done
    try:
        entries = list(parent.iterdir())
    except OSError:
        return done
    for e in entries:
        m = _TMP_RE.match(e.name)
        if not m or m.group("name") != out.name or _pid_alive(int(m.group("pid"))):
            continue
        if m.group("what") == "old" and not out.exists():
            try:
                os.replace(e, out)
                done.append(f"restored {out} from {e.name} (a killed run had set it aside)")
                continue
            except OSError:
                pass
        shutil.rmtree(e, ignore_errors=True) if e.is_dir() and not e.is_symlink() else e.unlink(missing_ok=True)
        done.append(f"removed {e.name} (left by a killed run, pid {m.group('pid')})")
    return done


def make_staging(out: Path) -> Path:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes it private; the published folder gets the usual mode
        return staging
    except OSError as exc:
        raise OptinError(f"cannot write next to {out} ({exc.strerror or exc}); pass a writable --out") from None


def replace_atomically(staging: Path, out: Path) -> None:
    """Move ``staging`` onto ``out``. The old ``out`` is renamed aside first and put back on failure."""
    old = None
    if out.exists() or out.is_symlink():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        if old.exists():
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
        os.replace(out, old)
    try:
        os.replace(staging, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() and not old.is_symlink() else old.unlink(missing_ok=True)


def os_error(exc: OSError, what: str) -> OptinError:
    """A one-line error for an OSError while writing ``what``."""
    if exc.errno == errno.ENOSPC:
        return StorageError(f"no space left on the device while writing {what}; nothing was written; free some space or pass another --out")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StorageError(f"permission denied while writing {what} ({exc.strerror}); nothing was written; pass a writable --out")
    return StorageError(f"cannot write {what} ({exc.strerror or exc}); nothing was written")


@contextlib.contextmanager
def staged_output(out: str | os.PathLike, *, kind: str, force: bool = False, protect: Iterable = (), checked: bool = False,
                  log=None) -> Iterator[Path]:
    """Check ``out``, clean stale staging, yield a staging folder; publish it atomically on success."""
    o = _resolve(out) if checked else check_out(out, force=force, protect=protect)
    for line in clean_stale(o):
        (log or (lambda s: None))(line)
    staging = make_staging(o)
    try:
        yield staging
        with interrupts.deferred():  # a stop signal now waits until the bundle is in place (or put back)
            write_marker(staging, kind)
            replace_atomically(staging, o)
    except OSError as exc:
        with interrupts.deferred():
            shutil.rmtree(staging, ignore_errors=True)
        raise os_error(exc, str(o)) from None
    except BaseException:
        with interrupts.deferred():  # a second Ctrl-C must not leave half a staging folder
            shutil.rmtree(staging, ignore_errors=True)
        raise


def write_json(path: str | os.PathLike, obj, **kw) -> None:
    """Strict JSON (non-finite floats become null), written atomically with a unique temporary name."""
    path = Path(path)
    text = json.dumps(finite(obj), allow_nan=False, **{"indent": 1, "default": _default, **kw})
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _default(o):
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:
        pass
    if isinstance(o, Path):
        return str(o)
    try:
        return float(o)
    except (TypeError, ValueError):
        return str(o)


def finite(obj):
    """``obj`` with every NaN/Infinity float replaced by None (JSON null)."""
    import math

    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    try:
        import numpy as np

        if isinstance(obj, np.floating):
            return float(obj) if np.isfinite(obj) else None
    except ImportError:
        pass
    return obj
