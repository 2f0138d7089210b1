"""Real human pairwise-comparison data sets, fetched at run time from Debian's R packages.

Five data sets with intransitive human preferences (see the README section "Real human pairwise data"):

==================  =======================  =====  ==========================================================
name                package                  items  comparisons
==================  =======================  =====  ==========================================================
``soundquality``    psychotools 0.7-2        8      783 listeners' judgment sets × 28 pairs of sound modes
``firstnames``      psychotools              6      192 respondents × 15 pairs of boys' names
``germanparties``   psychotools              6      192 respondents × 15 pairs of German parties (+ "none")
``football``        BradleyTerry2 1.1-2      29     Premier League games 2008-9 … 2012-13 (draws = ties)
``cems``            BradleyTerry2            6      303 students × 15 pairs of business schools (ties)
==================  =======================  =====  ==========================================================

plus ``baseball`` (BradleyTerry2; Agresti's 1987 American League results, used to check our BT fit
against the package's documented estimates).

Nothing is committed (the data are GPL). :func:`fetch` downloads the Debian package once into a cache
directory (``cache_dir`` argument, else ``$GPMKIT_REAL_CACHE``, else ``~/.cache/gpmkit/real``) with
``apt-get download`` (falling back to the pinned ``.deb`` on ``deb.debian.org``, checked by SHA-256),
unpacks its R ``data/`` directory in pure Python (a ``.deb`` is an ``ar`` archive holding
``data.tar.xz``; same result as ``dpkg-deb -x``) and records the SHA-256 of every file. A missing or
corrupt cache file is re-fetched; R's files are parsed with ``rdata`` (no R needed). A cache filled by
hand (the package's ``data/`` directory copied to ``<cache>/<package>/data``, no manifest file) is accepted
as it is: its files are hashed into a manifest marked ``"origin": "manual"``.

**Sign conventions, checked against the packages' own documentation** (the ``.Rd`` pages and the
``psychotools-Ex.Rout.save`` inside the ``.deb``): a psychotools ``paircomp`` column labelled
``"a:b"`` holds *positive values when the first object (a) was preferred, negative when the second
(b) was, 0 for no preference* (``?paircomp``); the package's ``summary(GermanParties2009$preference)``
prints ``none : Gruene  25 167`` and our loader reproduces those counts (tested). BradleyTerry2
``football$result`` is *for the home team: 1 win, 0 draw, −1 loss* (``?football``); ``CEMS`` has
``win1``/``win2``/``tied`` for ``school1``/``school2`` (``?CEMS``).

Every loader returns a :class:`PairwiseData` in one common form: ``winners[n]`` is the preferred
item (the first-listed one for a tie) and ``outcome[n] ∈ {1, 0.5}`` is ``P(winners[n] ≻ losers[n])``,
ready for :func:`gpmkit.pairwise.fit`.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import lzma
import os
import pathlib
import shutil
import subprocess
import tarfile
import tempfile
import urllib.request
import warnings
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import numpy as np

from ..exceptions import ArgumentError, GPMError

__all__ = [
    "DATASETS",
    "PairwiseData",
    "RealDataError",
    "cache_dir",
    "fetch",
    "load",
    "load_baseball",
    "load_cems",
    "load_firstnames",
    "load_football",
    "load_germanparties",
    "load_soundquality",
    "parse_paircomp",
]

PathLike = Union[str, os.PathLike]


class RealDataError(GPMError, RuntimeError):
    """A real data set could not be fetched or read (the message says what to install by hand)."""


# Debian bookworm packages: (R package, Debian package, pinned pool file, its SHA-256)
_PACKAGES = {
    "psychotools": (
        "r-cran-psychotools",
        "pool/main/r/r-cran-psychotools/r-cran-psychotools_0.7-2-1_amd64.deb",
        "57d19f4962deb7cf9d2973d38b0f0127fd96544218fc38bae688dde0b4eceedb",
    ),
    "BradleyTerry2": (
        "r-cran-bradleyterry2",
        "pool/main/r/r-cran-bradleyterry2/r-cran-bradleyterry2_1.1-2-2_all.deb",
        "6e0c506d1f3b609d813de7009488c930b48aa785b76776f1839384eb18d6fb75",
    ),
}
_MIRROR = "https://deb.debian.org/debian/"
_MANIFEST = "MANIFEST.json"


@dataclass
class PairwiseData:
    """Comparisons over a finite item set, in the form :func:`gpmkit.pairwise.fit` takes.

    Attributes:
        name: data set name (``"soundquality"`` …).
        item_names: the K item labels (index = item id).
        winners, losers: ``[N]`` int64 item ids; ``winners[n]`` is preferred (first-listed for a tie).
        outcome: ``[N]`` float64 ``P(winners[n] ≻ losers[n])``: 1, or 0.5 for a tie/draw.
        context: optional ``[N, C]`` float64 covariates of each comparison (the judge's attributes, …).
        context_names: the C covariate column names.
        groups: optional ``[N]`` int64 id of the judge/respondent/season each comparison belongs to.
        source: where the data come from (package, data set, licence).
    """

    name: str
    item_names: list
    winners: np.ndarray
    losers: np.ndarray
    outcome: np.ndarray
    context: Optional[np.ndarray] = None
    context_names: list = field(default_factory=list)
    groups: Optional[np.ndarray] = None
    source: str = ""

    @property
    def n_items(self) -> int:
        """Number of items K."""
        return len(self.item_names)

    @property
    def n_comparisons(self) -> int:
        """Number of comparisons N."""
        return int(self.winners.shape[0])

    def __len__(self) -> int:
        return self.n_comparisons

    def wins(self) -> np.ndarray:
        """``[K, K]`` matrix ``W[i, j]`` = times i beat j (a tie adds ½ to both ``W[i, j]`` and ``W[j, i]``)."""
        k = self.n_items
        out = np.zeros((k, k))
        np.add.at(out, (self.winners, self.losers), self.outcome)
        np.add.at(out, (self.losers, self.winners), 1.0 - self.outcome)
        return out

    def win_rate(self) -> np.ndarray:
        """Empirical ``P̂[i, j] = W[i, j] / (W[i, j] + W[j, i])`` (0.5 on the diagonal and for unseen pairs)."""
        w = self.wins()
        n = w + w.T
        with np.errstate(invalid="ignore", divide="ignore"):
            p = np.where(n > 0, w / np.where(n > 0, n, 1.0), 0.5)
        np.fill_diagonal(p, 0.5)
        return p

    def subset(self, index: np.ndarray) -> PairwiseData:
        """The comparisons at ``index`` (same items)."""
        return PairwiseData(
            self.name,
            self.item_names,
            self.winners[index],
            self.losers[index],
            self.outcome[index],
            None if self.context is None else self.context[index],
            self.context_names,
            None if self.groups is None else self.groups[index],
            self.source,
        )


# ---------------------------------------------------------------------------------------------------
# cache and fetching


def cache_dir(path: Optional[PathLike] = None) -> pathlib.Path:
    """The cache directory: ``path``, else ``$GPMKIT_REAL_CACHE``, else ``~/.cache/gpmkit/real``."""
    if path is not None:
        return pathlib.Path(path).expanduser()
    env = os.environ.get("GPMKIT_REAL_CACHE")
    if env:
        return pathlib.Path(env).expanduser()
    return pathlib.Path("~/.cache/gpmkit/real").expanduser()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _manual_hint(package: str, root: pathlib.Path) -> str:
    deb, pool, _ = _PACKAGES[package]
    return (
        f"install it by hand: `apt-get download {deb}` (run `apt-get update` first if apt cannot find it), or "
        f"download {_MIRROR}{pool}, then unpack its usr/lib/R/site-library/{package}/data/ directory to "
        f"{root / package / 'data'} (e.g. `dpkg-deb -x FILE.deb x && cp -r x/usr/lib/R/site-library/{package}/data "
        f"{root / package}/`); or set GPMKIT_REAL_CACHE to a directory that already holds it"
    )


def _download_deb(package: str, workdir: pathlib.Path) -> tuple[bytes, str]:
    """The ``.deb`` bytes of ``package``'s Debian package: ``apt-get download`` first, else the pinned pool file."""
    deb, pool, sha = _PACKAGES[package]
    errors = []
    if shutil.which("apt-get"):
        try:
            proc = subprocess.run(
                ["apt-get", "download", "-q", deb], cwd=workdir, capture_output=True, text=True, timeout=120
            )
            files = sorted(workdir.glob(f"{deb}_*.deb"))
            if proc.returncode == 0 and files:
                return files[-1].read_bytes(), f"apt-get download {deb} ({files[-1].name})"
            errors.append(f"apt-get download {deb} failed: {(proc.stderr or proc.stdout).strip()[-300:]}")
        except (OSError, subprocess.SubprocessError) as err:
            errors.append(f"apt-get download {deb} failed: {err}")
    else:
        errors.append("apt-get is not installed")
    url = _MIRROR + pool
    try:
        with urllib.request.urlopen(url, timeout=60) as resp:
            data = resp.read()
    except OSError as err:
        errors.append(f"{url}: {err}")
        raise RealDataError("; ".join(errors)) from None
    if _sha256(data) != sha:
        errors.append(f"{url}: SHA-256 {_sha256(data)} differs from the pinned {sha}")
        raise RealDataError("; ".join(errors))
    return data, url


def _deb_members(deb: bytes) -> dict[str, bytes]:
    """The members of a ``.deb`` (an ``ar`` archive)."""
    if not deb.startswith(b"!<arch>\n"):
        raise RealDataError("not a .deb (ar) archive")
    out, pos = {}, 8
    while pos + 60 <= len(deb):
        header = deb[pos : pos + 60]
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip())
        pos += 60
        out[name] = deb[pos : pos + size]
        pos += size + (size % 2)
    return out


def _extract_data_dir(deb: bytes, package: str) -> dict[str, bytes]:
    """``{relative path: bytes}`` of ``usr/lib/R/site-library/<package>/{data,DESCRIPTION}`` in the ``.deb``."""
    members = _deb_members(deb)
    name = next((n for n in members if n.startswith("data.tar")), None)
    if name is None:
        raise RealDataError(f"the .deb has no data.tar member (members: {sorted(members)})")
    payload = members[name]
    if name.endswith(".xz"):
        payload = lzma.decompress(payload)
    elif name.endswith(".gz"):
        payload = gzip.decompress(payload)
    elif name.endswith(".zst"):
        raise RealDataError("the .deb is zstd-compressed; unpack it with `dpkg-deb -x` by hand")
    prefix = f"usr/lib/R/site-library/{package}/"
    files = {}
    with tarfile.open(fileobj=io.BytesIO(payload)) as tar:
        for info in tar.getmembers():
            path = info.name.lstrip("./")
            if not info.isfile() or not path.startswith(prefix):
                continue
            rel = path[len(prefix) :]
            if rel.startswith("data/") or rel == "DESCRIPTION":
                fh = tar.extractfile(info)
                if fh is not None:
                    files[rel] = fh.read()
    if not any(r.startswith("data/") for r in files):
        raise RealDataError(f"the .deb has no {prefix}data/ directory")
    return files


def _adopt_manual(dest: pathlib.Path) -> bool:
    """Adopts a hand-populated ``dest/data`` (no manifest at all): hashes its files into a manifest whose
    origin is ``"manual"``. Returns whether there was something to adopt (a ``data/`` directory with files).

    A manifest that exists but does not match its files (or is unreadable) marks a corrupt fetch, not a
    manual install, so it is left for :func:`fetch` to re-download."""
    data_dir = dest / "data"
    if (dest / _MANIFEST).exists() or not data_dir.is_dir():
        return False
    rels = [dest / "DESCRIPTION", *sorted(p for p in data_dir.rglob("*") if p.is_file())]
    files = {p.relative_to(dest).as_posix(): _sha256(p.read_bytes()) for p in rels if p.is_file()}
    if not any(rel.startswith("data/") for rel in files):
        return False
    manifest = {"origin": "manual", "files": files}
    (dest / _MANIFEST).write_text(json.dumps(manifest, indent=1))
    return True


def _valid(dest: pathlib.Path) -> bool:
    """Whether ``dest`` holds a complete, uncorrupted fetch (every file matches the manifest's SHA-256)."""
    try:
        manifest = json.loads((dest / _MANIFEST).read_text())
        for rel, sha in manifest["files"].items():
            if _sha256((dest / rel).read_bytes()) != sha:
                return False
        return bool(manifest["files"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def fetch(package: str, cache: Optional[PathLike] = None, force: bool = False) -> pathlib.Path:
    """The directory holding R package ``package``'s ``data/`` (``"psychotools"`` or ``"BradleyTerry2"``).

    Downloads and unpacks the Debian package when the cache lacks it, when any cached file is missing or
    its SHA-256 differs from the manifest (corruption), or when ``force`` is true. A ``data/`` directory
    installed by hand (no manifest; see the error message's instructions) is accepted without a download:
    its files are hashed into a manifest with ``"origin": "manual"``.

    Raises:
        ArgumentError: unknown ``package``.
        RealDataError: nothing could be downloaded (the message says how to install the data by hand).
    """
    if package not in _PACKAGES:
        raise ArgumentError(f"package: expected one of {sorted(_PACKAGES)}, got {package!r}")
    root = cache_dir(cache)
    dest = root / package
    if not force:
        if _valid(dest):
            return dest
        try:
            if _adopt_manual(dest):
                return dest
        except OSError as err:
            raise RealDataError(f"cannot read the hand-installed data in {dest} ({err})") from None
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=root, prefix=f".{package}-") as tmp:
            tmpdir = pathlib.Path(tmp)
            work = tmpdir / "download"
            work.mkdir()
            deb, origin = _download_deb(package, work)
            try:
                files = _extract_data_dir(deb, package)
            except (lzma.LZMAError, tarfile.TarError, EOFError, ValueError, zlib.error, gzip.BadGzipFile) as err:
                raise RealDataError(
                    f"the downloaded .deb from {origin} is truncated or malformed ({type(err).__name__}: {err}); "
                    "the download may have been cut short: run it again"
                ) from None
            staged = tmpdir / package
            for rel, data in files.items():
                (staged / rel).parent.mkdir(parents=True, exist_ok=True)
                (staged / rel).write_bytes(data)
            manifest = {"origin": origin, "files": {rel: _sha256(data) for rel, data in sorted(files.items())}}
            (staged / _MANIFEST).write_text(json.dumps(manifest, indent=1))
            if dest.exists():
                shutil.rmtree(dest)
            os.replace(staged, dest)
    except RealDataError as err:
        raise RealDataError(f"cannot fetch R package {package!r} ({err}); {_manual_hint(package, root)}") from None
    except OSError as err:
        raise RealDataError(f"cannot write the cache {root} ({err}); {_manual_hint(package, root)}") from None
    return dest


# ---------------------------------------------------------------------------------------------------
# parsing (rdata)


def _rdata():
    try:
        import rdata
        from rdata.conversion import DEFAULT_CLASS_MAP, convert
    except ImportError:
        raise RealDataError("the real data sets need the 'rdata' package: pip install 'gpmkit[data]'") from None
    return rdata, convert, DEFAULT_CLASS_MAP


def _class_map() -> dict:
    _, _, default = _rdata()
    cm = dict(default)
    cm["data.frame"] = lambda obj, attrs: obj  # keep columns as a dict (paircomp columns are matrices)

    def paircomp(obj, attrs):
        dimnames = attrs.get("dimnames")
        return {
            "X": np.asarray(obj, dtype=np.float64),
            "labels": [str(s) for s in attrs["labels"]],
            "columns": None if dimnames is None or dimnames[1] is None else [str(s) for s in dimnames[1]],
            "ordered": bool(np.asarray(attrs.get("ordered", [False])).reshape(-1)[0]),
        }

    cm["paircomp"] = paircomp
    return cm


def _read_rda(path: pathlib.Path, name: str) -> Any:
    rdata, convert, _ = _rdata()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return convert(rdata.parser.parse_file(str(path)), _class_map())[name]


def _read_lazyload(data_dir: pathlib.Path, name: str) -> Any:
    """Variable ``name`` of an R lazy-load database (``Rdata.rdx`` gzip index + ``Rdata.rdb`` zlib blobs)."""
    rdata, convert, _ = _rdata()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        index = convert(rdata.parser.parse_data(gzip.decompress((data_dir / "Rdata.rdx").read_bytes())))
        offset, length = (int(x) for x in index["variables"][name])
        with open(data_dir / "Rdata.rdb", "rb") as fh:
            fh.seek(offset)
            blob = fh.read(length)
        return convert(rdata.parser.parse_data(zlib.decompress(blob[4:])))


def _with_refetch(package: str, cache: Optional[PathLike], read: Callable[[pathlib.Path], Any]) -> Any:
    """``read(package dir)``; a file that fails to parse is re-fetched once (corrupt cache)."""
    dest = fetch(package, cache)
    try:
        return read(dest)
    except RealDataError:
        raise
    except Exception:
        dest = fetch(package, cache, force=True)
        try:
            return read(dest)
        except Exception as err:
            raise RealDataError(f"cannot parse the {package} data in {dest} ({type(err).__name__}: {err})") from None


def parse_paircomp(
    X: np.ndarray, labels: list, columns: Optional[list] = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Comparisons of a psychotools ``paircomp`` matrix ``X [subjects, pairs]``.

    Column ``c`` labelled ``"a:b"`` (1-based object numbers; psychotools' default order
    ``1:2, 1:3, 2:3, 1:4, …`` when ``columns`` is None) compares objects a and b: a positive value means
    the first object (a) was preferred, negative the second (b), 0 no preference (``?paircomp``); NaN is
    a missing comparison (dropped).

    Returns:
        ``(winners, losers, outcome, subject)``: int64 ids (0-based), outcome 1 or 0.5, int64 row of X.
    """
    X = np.asarray(X, dtype=np.float64)
    k = len(labels)
    if columns is None:
        pairs = [(a, b) for b in range(k) for a in range(b)]
    else:
        pairs = []
        for col in columns:
            a, b = col.split(":")
            pairs.append((int(a) - 1, int(b) - 1))
    if X.ndim != 2 or X.shape[1] != len(pairs):
        raise RealDataError(f"paircomp: expected {len(pairs)} columns, got shape {X.shape}")
    subj, col = np.nonzero(~np.isnan(X))
    x = X[subj, col]
    first = np.array([p[0] for p in pairs], dtype=np.int64)[col]
    second = np.array([p[1] for p in pairs], dtype=np.int64)[col]
    winners = np.where(x < 0, second, first)
    losers = np.where(x < 0, first, second)
    outcome = np.where(x == 0, 0.5, 1.0)
    return winners, losers, outcome, subj.astype(np.int64)


def _design(columns: dict[str, Any], rows: np.ndarray) -> tuple[np.ndarray, list]:
    """Context matrix of the covariates ``columns`` (categorical: one-hot; numeric: z-scored), at ``rows``."""
    mats, names = [], []
    for cname, col in columns.items():
        cats = getattr(col, "categories", None)
        if cats is not None:
            codes = np.asarray(col.codes)
            for level_id, level in enumerate(cats):
                mats.append((codes == level_id).astype(np.float64))
                names.append(f"{cname}={level}")
        else:
            v = np.asarray(col, dtype=np.float64)
            sd = np.nanstd(v)
            z = (v - np.nanmean(v)) / (sd if sd > 0 else 1.0)
            mats.append(np.nan_to_num(z))
            names.append(cname)
    return np.stack(mats, axis=1)[rows], names


def _psychotools(name: str, dataset: str, covariates: tuple, cache: Optional[PathLike]) -> PairwiseData:
    df = _with_refetch("psychotools", cache, lambda d: _read_rda(d / "data" / f"{dataset}.rda", dataset))
    pc = df["preference"]
    if pc["ordered"]:
        raise RealDataError(f"{dataset}$preference is an ordered paircomp; expected the unordered one")
    w, ell, p, subj = parse_paircomp(pc["X"], pc["labels"], pc["columns"])
    ctx, names = _design({c: df[c] for c in covariates}, subj)
    return PairwiseData(
        name, pc["labels"], w, ell, p, ctx, names, subj, f"R package psychotools (GPL-2|3), data set {dataset}"
    )


def load_soundquality(cache: Optional[PathLike] = None) -> PairwiseData:
    """psychotools ``SoundQuality``: 783 judgment sets (40 listeners) × 28 pairs of 8 sound modes.

    Context: program material and time point (one-hot); groups: judgment set.
    """
    return _psychotools("soundquality", "SoundQuality", ("progmat", "time"), cache)


def load_firstnames(cache: Optional[PathLike] = None) -> PairwiseData:
    """psychotools ``FirstNames``: 192 respondents × 15 pairs of 6 boys' names (context: gender, age)."""
    return _psychotools("firstnames", "FirstNames", ("gender", "age"), cache)


def load_germanparties(cache: Optional[PathLike] = None) -> PairwiseData:
    """psychotools ``GermanParties2009``: 192 respondents × 15 pairs of 5 parties + "none".

    Context: gender, age, education, feeling affected by the crisis.
    """
    return _psychotools("germanparties", "GermanParties2009", ("gender", "age", "education", "crisis"), cache)


def _levels(*cols) -> list:
    names = []
    for col in cols:
        for level in getattr(col, "categories", np.unique(np.asarray(col))):
            if str(level) not in names:
                names.append(str(level))
    return names


def load_football(cache: Optional[PathLike] = None) -> PairwiseData:
    """BradleyTerry2 ``football``: English Premier League 2008-9 … 2012-13, 29 teams.

    ``result`` is for the home team (1 win, 0 draw, −1 loss; ``?football``): a home win makes the home
    team the winner, an away win the away team, a draw is a tie (0.5). Home advantage is not modelled.
    Context: season (one-hot); groups: season.
    """
    df = _with_refetch("BradleyTerry2", cache, lambda d: _read_lazyload(d / "data", "football"))
    home, away = df["home"], df["away"]
    teams = sorted(_levels(home.cat.categories, away.cat.categories))
    hid = np.array([teams.index(str(t)) for t in home], dtype=np.int64)
    aid = np.array([teams.index(str(t)) for t in away], dtype=np.int64)
    res = np.asarray(df["result"], dtype=np.float64)
    ok = ~np.isnan(res)
    hid, aid, res = hid[ok], aid[ok], res[ok]
    winners = np.where(res < 0, aid, hid)
    losers = np.where(res < 0, hid, aid)
    outcome = np.where(res == 0, 0.5, 1.0)
    season = df["season"].astype("category")
    ctx, names = _design({"season": season.array}, np.flatnonzero(ok))
    groups = np.asarray(season.cat.codes, dtype=np.int64)[ok]
    return PairwiseData(
        "football", teams, winners, losers, outcome, ctx, names, groups, "R package BradleyTerry2 (GPL-2+), football"
    )


def load_cems(cache: Optional[PathLike] = None) -> PairwiseData:
    """BradleyTerry2 ``CEMS``: 303 students × 15 pairs of 6 management schools, with ties.

    ``win1``/``win2``/``tied`` say whether ``school1``/``school2`` was preferred or neither (``?CEMS``);
    comparisons with a missing answer are dropped. Context: the students' eight binary attributes
    (one-hot); groups: student.
    """
    cems = _with_refetch("BradleyTerry2", cache, lambda d: _read_lazyload(d / "data", "CEMS"))
    pref, students = cems["preferences"], cems["students"]
    schools = [str(s) for s in pref["school1"].cat.categories]
    s1 = np.array([schools.index(str(s)) for s in pref["school1"]], dtype=np.int64)
    s2 = np.array([schools.index(str(s)) for s in pref["school2"]], dtype=np.int64)
    win1, win2, tied = (np.asarray(pref[c], dtype=np.float64) for c in ("win1", "win2", "tied"))
    ok = ~(np.isnan(win1) | np.isnan(win2) | np.isnan(tied))
    if not np.all(win1[ok] + win2[ok] + tied[ok] == 1):
        raise RealDataError("CEMS: expected exactly one of win1/win2/tied per comparison")
    student = np.asarray(pref["student"], dtype=np.float64).astype(np.int64) - 1  # 1-based factor level
    winners = np.where(win2 == 1, s2, s1)[ok]
    losers = np.where(win2 == 1, s1, s2)[ok]
    outcome = np.where(tied == 1, 0.5, 1.0)[ok]
    cols = {c: students[c].array for c in students.columns}
    ctx, names = _design(cols, student[ok])
    return PairwiseData(
        "cems", schools, winners, losers, outcome, ctx, names, student[ok], "R package BradleyTerry2 (GPL-2+), CEMS"
    )


def load_baseball(cache: Optional[PathLike] = None) -> PairwiseData:
    """BradleyTerry2 ``baseball`` (Agresti 2002 §10.6): 1987 American League East home wins/losses, 7 teams.

    Each of ``home.wins`` / ``away.wins`` becomes that many decisive comparisons; no context.
    """
    df = _with_refetch("BradleyTerry2", cache, lambda d: _read_lazyload(d / "data", "baseball"))
    teams = _levels(df["home.team"].cat.categories)
    h = np.array([teams.index(str(t)) for t in df["home.team"]], dtype=np.int64)
    a = np.array([teams.index(str(t)) for t in df["away.team"]], dtype=np.int64)
    hw = np.asarray(df["home.wins"], dtype=np.int64)
    aw = np.asarray(df["away.wins"], dtype=np.int64)
    winners = np.concatenate([np.repeat(h, hw), np.repeat(a, aw)])
    losers = np.concatenate([np.repeat(a, hw), np.repeat(h, aw)])
    return PairwiseData(
        "baseball", teams, winners, losers, np.ones(winners.shape[0]), source="R package BradleyTerry2, baseball"
    )


DATASETS: dict[str, Callable[..., PairwiseData]] = {
    "soundquality": load_soundquality,
    "firstnames": load_firstnames,
    "germanparties": load_germanparties,
    "football": load_football,
    "cems": load_cems,
}
_EXTRA = {"baseball": load_baseball}


def load(name: str, cache: Optional[PathLike] = None) -> PairwiseData:
    """Loads data set ``name`` (one of :data:`DATASETS`, or ``"baseball"``).

    Raises:
        ArgumentError: unknown name.
        RealDataError: the data could not be fetched or parsed (with what to install by hand).
    """
    loader = DATASETS.get(name) or _EXTRA.get(name)
    if loader is None:
        raise ArgumentError(f"name: expected one of {[*DATASETS, *_EXTRA]}, got {name!r}")
    return loader(cache)
