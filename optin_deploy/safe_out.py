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
import stat
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


def _real_parent(p: Path) -> Path:
    """``p`` with the symbolic links of its parent folders resolved (``p`` itself, when a link, is kept:
    replacing ``p`` replaces the link, not what it points to)."""
    return Path(os.path.realpath(p.parent)) / p.name


def _input_path(p) -> Path | None:
    """The local path of a command input (``timm:ARCH@FILE``: the file), or None when it names nothing
    on disk here (a zoo or hub name, a built-in data set)."""
    if not p:
        return None
    s = str(p)
    if s.startswith("timm:"):
        if "@" not in s:
            return None
        s = s.split("@", 1)[1]
    pp = _resolve(s)
    return pp if pp.exists() else None


def _linked_files(folder: Path, limit: int = 10000) -> list[Path]:
    """The symbolic links directly inside an input folder (a Hugging Face hub cache snapshot links every file into
    ``../../blobs``): replacing the folder they point into deletes the input's real files."""
    if not folder.is_dir():
        return []
    try:
        out = []
        for i, f in enumerate(folder.iterdir()):
            if i >= limit:
                break
            if f.is_symlink():
                out.append(f)
        return out
    except OSError:
        return []


CACHE_PARTS = ("zoo", "assets", "wheels", "scores", "luts", ".locks")  # what optin-deploy keeps in its cache folder


def _check_not_the_cache(o: Path, o_real: Path, out, flag: str) -> None:
    """Refuse an output that is or holds optin-deploy's cache folder (its zoo models, wheels, scores: a zoo model given
    as the command's model is read from there), or lies inside one of the cache's own folders."""
    from .data.assets import cache_root

    root = cache_root()
    roots = {root, Path(os.path.realpath(root))}
    for r in roots:
        if _within(r, o) or _within(r, o_real):
            raise OptinError(f"{flag} {out} is or holds optin-deploy's cache {root} (its zoo models, wheels and scores); refusing to "
                             f"replace it, even with --force; pass a new folder")
        for part in CACHE_PARTS:
            if _within(o, r / part) or _within(o_real, r / part):
                raise OptinError(f"{flag} {out} is inside optin-deploy's cache ({r / part}); refusing to write there, even with "
                                 f"--force; pass a folder outside {root}")


STAGING_EXTRA = len(".") + len(".tmp-") + 7 + len("-") + 8  #: what the staging name adds to --out's: dots, a 7-digit pid, mkdtemp's 8


def _name_max(folder: Path) -> int:
    """The longest file name (bytes) the file system holding ``folder`` (or its nearest existing parent) allows."""
    for f in (folder, *folder.parents):
        try:
            return int(os.pathconf(f, "PC_NAME_MAX"))
        except (OSError, ValueError):
            continue
    return 255


def _check_name_length(o: Path, out, flag: str) -> None:
    """Refuse, in one line before any work, an --out whose name (or a folder on its path) is longer than the file system
    allows, or so long that the staging folder beside it (``.NAME.tmp-PID-XXXXXXXX``) cannot be named: the path is the
    user's to shorten, not a failing file system (it was 'File name too long ...; check the path and its permissions',
    exit 5, or for a name 234-255 bytes long 'cannot write next to OUT ...; pass a writable --out' after the checks)."""
    limit = _name_max(o.parent)
    for part in o.parts[1:]:
        n = len(os.fsencode(part))
        if n > limit:
            raise OptinError(f"{flag} {out}: the name {part[:40]}... is {n} bytes long, over the {limit} this file system allows; "
                             f"pass a shorter name")
    n = len(os.fsencode(o.name))
    if n + STAGING_EXTRA > limit:
        raise OptinError(f"{flag} {out}: its name is {n} bytes long; the staging folder written beside it (.NAME.tmp-PID-XXXXXXXX) "
                         f"would be over the {limit} bytes this file system allows; pass a name of at most {limit - STAGING_EXTRA} bytes")


def check_out(out: str | os.PathLike, *, force: bool = False, protect: Iterable[str | os.PathLike | None] = (),
              flag: str = "--out") -> Path:
    """Refuse an output path that would destroy something the user owns; returns it resolved.

    Allowed: a path that does not exist, an empty folder, or a folder holding :data:`MARKER`.
    With ``force``: any other folder or file too, except ``/``, the home folder, the current folder
    and its parents, and folders that hold (or are) one of ``protect`` (the command's inputs).
    """
    o = _resolve(out)
    _check_name_length(o, out, flag)
    home = _resolve(Path.home())
    cwd = _resolve(Path.cwd())
    never = [(Path(o.anchor), "the file-system root"), (home, "your home folder")]
    o_real = _real_parent(o)
    for where, what in never:
        if o == where or o_real == where or o_real == Path(os.path.realpath(where)):
            raise OptinError(f"{flag} {out} is {what}; refusing to replace it, even with --force; pass a new folder")
    if _within(cwd, o) or _within(Path(os.path.realpath(cwd)), o_real):
        raise OptinError(f"{flag} {out} is the current folder or contains it; refusing to replace it, even with --force; pass a new folder")
    _check_not_the_cache(o, o_real, out, flag)
    for p in protect:
        pp = _input_path(p)
        if pp is None:
            continue
        # an input reached through a symbolic link (``--data link.csv`` -> ``OUT/mydata.csv``, ``--model current``
        # -> ``OUT/pruned``) is inside --out all the same: compare the link's own path and its target
        if _within(pp, o) or _within(pp, o_real) or _within(Path(os.path.realpath(pp)), o_real):
            raise OptinError(f"{flag} {out} holds this command's input {p}; refusing to replace it, even with --force; pass a new folder")
        linked = next((f for f in _linked_files(pp) if _within(Path(os.path.realpath(f)), o_real)), None)
        if linked is not None:  # a Hugging Face cache snapshot: the folder's files are links into ../../blobs
            raise OptinError(f"{flag} {out} holds the file {linked.name} of this command's input {p} (it is a symbolic link "
                             f"into {out}); refusing to replace it, even with --force; pass a new folder")
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


# ------------------------------------------------------------------ --json PATH
# What ``--json PATH`` writes carries one top-level key, ``JSON_MARK_KEY: JSON_MARK`` (when the result is a
# dict, which every command's result is), so that the next run may replace the file without ``--force``. A
# latency table (``lut``'s result) identifies itself by its ``format`` instead and is written unmarked
# (``--json`` and ``--out`` of ``lut`` hold the same table).
JSON_MARK_KEY = "written_by"
JSON_MARK = "optin-deploy --json"
_LUT_FORMAT = "optin-deploy-lut"  # optin_deploy.lut.LUT_FORMAT (not imported: it pulls in torch; a test checks they agree)


def _json_object(path: str | os.PathLike) -> dict | None:
    """The JSON object in ``path``, or None when it is unreadable or not a JSON object."""
    try:
        with open(path, "rb") as f:
            head = f.read(1)
            if head.strip() not in (b"{", b""):  # cheap: not a JSON object
                return None
            obj = json.loads(head + f.read())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def json_is_ours(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a JSON file a previous ``--json`` (or ``lut``) wrote: a JSON object holding
    ``JSON_MARK_KEY: JSON_MARK``, or a latency table (``format: optin-deploy-lut``)."""
    obj = _json_object(path)
    return obj is not None and (obj.get(JSON_MARK_KEY) == JSON_MARK or obj.get("format") == _LUT_FORMAT)


def lut_is_ours(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a latency table optin-deploy wrote (what ``lut --out`` may replace without ``--force``)."""
    obj = _json_object(path)
    return obj is not None and obj.get("format") == _LUT_FORMAT


def mark_json(result):
    """``result`` as ``--json PATH`` writes it: a dict gets ``JSON_MARK_KEY: JSON_MARK`` (see :func:`json_is_ours`)."""
    if isinstance(result, dict) and result.get("format") != _LUT_FORMAT:
        return {**result, JSON_MARK_KEY: JSON_MARK}
    return result


#: the first line of a Markdown table optin-deploy writes (bench --runtimes --markdown): such a file may be replaced
MARKDOWN_MARK = "<!-- written by optin-deploy -->"


def markdown_is_ours(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a Markdown file a previous ``--markdown`` wrote (its first line is :data:`MARKDOWN_MARK`)."""
    try:
        with open(path, "rb") as f:
            return f.readline().rstrip(b"\r\n") == MARKDOWN_MARK.encode()
    except OSError:
        return False


def check_json_out(path: str | None, *, force: bool | None = None, protect: Iterable = (), outs: Iterable = (),
                   flag: str = "--json", ours=None) -> Path | None:
    """Check ``--json PATH`` before any work; returns it resolved (None for no ``--json`` or ``-``, stdout).

    Refused, with one line: a path whose folder does not exist (no folders are created), a folder, an
    existing file that is not a regular file (a FIFO, a device: the atomic rename would replace the node),
    and, even with ``--force``, one of the command's inputs or a file inside one (``protect``: the model
    folder, the data, the artifacts; symbolic links resolved) or inside an output folder of the same
    command (``outs``: ``--out``). An existing regular file is replaced only when a previous ``--json``
    wrote it (:func:`json_is_ours`, or ``ours(path)`` for another kind of file), else only with ``--force``;
    ``force=None`` means the command has no ``--force``: such a file is refused.
    """
    if path is None or str(path) == "-":
        return None
    p = _resolve(path)
    real = Path(os.path.realpath(p))
    if p.is_dir():
        raise OptinError(f"{flag} {path} is a folder; pass a file name (e.g. {Path(path) / 'result.json'}), or - for stdout")
    if (p.exists() or p.is_symlink()) and not p.is_file():
        if not p.exists():
            raise OptinError(f"{flag} {path} is a broken symbolic link; pass another file name")
        raise OptinError(f"{flag} {path} is not a regular file (a pipe, socket or device); pass a file name, or - for stdout")
    for q in protect:
        qq = _input_path(q)
        if qq is None:
            continue
        if _within(p, qq) or _within(real, Path(os.path.realpath(qq))) or any(real == Path(os.path.realpath(f)) for f in _linked_files(qq)):
            raise OptinError(f"{flag} {path} is this command's input {q}, or inside it; refusing to overwrite it"
                             + (", even with --force" if force is not None else "") + "; pass another file name")
    for q in outs:
        if not q:
            continue
        qq = _resolve(q)
        if _within(p, qq) or _within(real, _real_parent(qq)) or _within(real, Path(os.path.realpath(qq))):
            raise OptinError(f"{flag} {path} is inside this command's output folder {q}, which is replaced as a whole; "
                             f"pass a file name outside it")
    if not p.parent.is_dir():
        if p.parent.exists():
            raise OptinError(f"{flag} {path}: {p.parent} is a file, not a folder; pass a file name inside a folder")
        raise OptinError(f"{flag} {path}: the folder {p.parent} does not exist; create it first or pass another file name")
    if not os.access(p.parent, os.W_OK | os.X_OK):
        raise StorageError(f"{flag} {path}: the folder {p.parent} is not writable; pass another file name")
    if not p.exists():
        return p
    if (ours or json_is_ours)(p):
        return p
    if force:
        return p
    raise OptinError(f"{flag} {path} is an existing file that optin-deploy did not write; pass a new file name"
                     + (", or --force to replace it" if force is not None else ""))


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
        os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp makes it private; the published folder gets the usual mode
        return staging
    except OSError as exc:
        import errno

        from .errors import StorageError

        above = next((a for a in out.parents if a.exists()), None)
        if above is not None and not above.is_dir():  # a path through a file: a wrong path, not a failing file system
            raise OptinError(f"cannot write {out}: {above} is a file, not a folder; pass an --out inside a folder") from None
        link = next((a for a in reversed(out.parents) if a.is_symlink() and not a.exists()), None)
        if link is not None:  # it said 'File exists' (mkdir of the link's path)
            raise OptinError(f"cannot write {out}: {link} is a symbolic link to nothing (broken, or a loop of links); "
                             f"pass an --out through existing folders") from None
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT):
            raise StorageError(f"cannot write next to {out} ({exc.strerror or exc}); pass a writable --out") from None
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


STORAGE_ERRNOS = (errno.ENOSPC, errno.EACCES, errno.EPERM, errno.EROFS, errno.EDQUOT)


def storage_error_in(exc: BaseException, what: str) -> OptinError | None:
    """The one-line storage error for an exception that is, or wraps (a library re-raising it with its own type, as
    torch.onnx.export does), a full disk or a refused write; None for any other failure."""
    seen = 0
    e: BaseException | None = exc
    while e is not None and seen < 8:
        if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS:
            return os_error(e, what)
        e, seen = e.__cause__ or e.__context__, seen + 1
    m = re.search(r"\[Errno (\d+)\]|\(os error (\d+)\)", str(exc))  # Python's OSError text; Rust's (safetensors' SafetensorError)
    code = int(m.group(1) or m.group(2)) if m else None
    if code in STORAGE_ERRNOS:
        return os_error(OSError(code, os.strerror(code)), what)
    return None


def raise_if_storage(exc: BaseException, what: str) -> None:
    """Raise the storage error ``exc`` is or wraps (:func:`storage_error_in`), else return. For a step that skips or
    falls back when it fails (a candidate runtime, a dense alternative, the graph optimiser): a full disk or a refused
    write under ``what`` is the file system's failure, not the candidate's, and must stop the command (exit 5) rather
    than make its outcome (the runtime chosen, the fastest dense alternative) depend on the free space."""
    if isinstance(exc, StorageError):
        raise exc
    storage = storage_error_in(exc, what)
    if storage is not None:
        raise storage from None


def published_name(path: str | os.PathLike) -> str:
    """``path`` with staging folders (``.NAME.tmp-PID-xxxx``, :func:`make_staging`) read as the ``NAME`` they are
    published as: what the user asked for, not a folder that is gone by the time they read the message."""
    return re.sub(r"(^|/)\.([^/]+)\.tmp-\d+-[A-Za-z0-9_]+(?=/|$)", r"\1\2", str(path))


def os_error(exc: OSError, what: str) -> OptinError:
    """A one-line error for an OSError while writing ``what``."""
    what = published_name(what)
    if exc.errno == errno.ENOSPC:
        return StorageError(f"no space left on the device while writing {what}; nothing was written; free some space or pass another --out")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StorageError(f"permission denied while writing {what} ({exc.strerror}); nothing was written; pass a writable --out")
    return StorageError(f"cannot write {what} ({exc.strerror or exc}); nothing was written")


@contextlib.contextmanager
def staged_output(out: str | os.PathLike, *, kind: str, force: bool = False, protect: Iterable = (), checked: bool = False,
                  log=None) -> Iterator[Path]:
    """Check ``out``, clean stale staging, yield a staging folder; publish it atomically on success.

    The whole block holds a lock on ``out``: two runs started at once with the same ``--out`` both staged, both
    published and both said "written", the second silently replacing the first's fresh output (and one's reported
    figures then described the other's folder). The second now stops at once, writing nothing, in one line."""
    o = _resolve(out) if checked else check_out(out, force=force, protect=protect)
    with _out_lock(o):
        yield from _staged(o, kind, log)


@contextlib.contextmanager
def _out_lock(out: Path):
    """Hold the advisory lock of output folder ``out`` (in the cache's lock folder, keyed by its absolute path) or
    refuse in one line when another process holds it. Where no lock can be taken (no fcntl, an unwritable cache)
    the run goes on unlocked, as it did."""
    import hashlib

    try:
        import fcntl

        from .data.assets import cache_root
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    try:
        locks = cache_root() / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        fd = os.open(locks / f"out-{hashlib.sha256(str(out).encode()).hexdigest()[:24]}.lock", os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OptinError(f"another optin-deploy process is writing {out} right now; this one stopped and wrote nothing "
                             f"there; wait for it to finish, or pass another --out") from None
        yield
    finally:
        os.close(fd)  # releases the lock


def _staged(o: Path, kind: str, log) -> Iterator[Path]:
    for line in clean_stale(o):
        (log or (lambda s: None))(line)
    staging = make_staging(o)
    try:
        yield staging
        with interrupts.deferred():  # a stop signal now waits until the bundle is in place (or put back)
            write_marker(staging, kind)
            publish_modes(staging)
            replace_atomically(staging, o)
            interrupts.forget_published_under(staging)  # outputs written inside it are now part of this one
            interrupts.note_published(o)
    except OSError as exc:
        with interrupts.deferred():
            shutil.rmtree(staging, ignore_errors=True)
            interrupts.forget_published_under(staging)
        if isinstance(exc, BrokenPipeError):  # stdout / stderr lost its reader (| head): a stop, not --out's file system
            raise
        raise os_error(exc, str(o)) from None
    except BaseException:
        with interrupts.deferred():  # a second Ctrl-C must not leave half a staging folder
            shutil.rmtree(staging, ignore_errors=True)
            interrupts.forget_published_under(staging)
        raise


def write_json(path: str | os.PathLike, obj, **kw) -> None:
    """Strict JSON (non-finite floats become null), written atomically with a unique temporary name."""
    path = Path(path)
    text = json.dumps(finite(obj), allow_nan=False, **{"indent": 1, "default": _default, **kw})
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def publish_modes(folder: str | os.PathLike) -> None:
    """Give every file and folder under ``folder`` that a writer made private (``mkstemp``, ``mkdtemp``,
    safetensors' ``save_model`` create mode 0600/0700) the mode the umask gives a new file (0666 & ~umask,
    0777 & ~umask for folders and executables), so another user or service account can read the result as
    it reads any other file of the user's. Files with group or other bits already set are left as they are."""
    mask = current_umask()
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            p = os.path.join(root, name)
            try:
                st = os.lstat(p)
            except OSError:
                continue
            if stat.S_ISLNK(st.st_mode) or st.st_mode & 0o077:
                continue
            full = 0o777 if stat.S_ISDIR(st.st_mode) or st.st_mode & 0o100 else 0o666
            want = (st.st_mode & 0o7777) | (full & ~mask)
            if want != st.st_mode & 0o7777:
                with contextlib.suppress(OSError):
                    os.chmod(p, want)


def current_umask() -> int:
    """The process's file-creation mask (read by setting it and putting it back)."""
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
