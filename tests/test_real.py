"""gpmkit.datasets.real: paircomp sign convention, .deb unpacking, cache re-fetching, registry errors, and the
real data checked against the packages' own documented summaries and BT fits.

The tests marked ``network`` really fetch the two Debian packages (about 1.8 MB, a few seconds) into a temporary
cache; they are skipped, not failed, when Debian's registry cannot be reached.
"""

from __future__ import annotations

import hashlib
import io
import json
import lzma
import pathlib
import tarfile

import numpy as np
import pytest
from gpmkit.datasets import real
from gpmkit.exceptions import ArgumentError
from gpmkit.pairwise import fit

# --------------------------------------------------------------------------------------------------
# offline: parsing logic on small local fixtures


def test_paircomp_sign_follows_the_psychotools_documentation():
    # the example of ?paircomp (psychotools 0.7-2): "a > b, a > c, b > c" for the row c(1, 1, 1), etc.
    X = np.array([[1, 1, 1], [1, 1, -1], [1, -1, -1], [1, 1, 1]], dtype=float)
    w, ell, p, subj = real.parse_paircomp(X, ["a", "b", "c"])
    a, b, c = 0, 1, 2
    got = {(int(s), int(x), int(y)) for s, x, y in zip(subj, w, ell)}
    assert {(0, a, b), (0, a, c), (0, b, c)} <= got  # a > b, a > c, b > c
    assert {(1, a, b), (1, a, c), (1, c, b)} <= got  # a > b, a > c, b < c
    assert {(2, a, b), (2, c, a), (2, c, b)} <= got  # a > b, a < c, b < c
    assert len(w) == 12 and np.all(p == 1.0)


def test_paircomp_ties_missing_and_explicit_column_labels():
    X = np.array([[0, np.nan, -2], [3, 1, np.nan]])
    w, ell, p, subj = real.parse_paircomp(X, ["x", "y", "z"], ["1:2", "1:3", "2:3"])
    assert list(zip(w, ell, p, subj)) == [(0, 1, 0.5, 0), (2, 1, 1.0, 0), (0, 1, 1.0, 1), (0, 2, 1.0, 1)]
    # an explicitly labelled reversed column "2:1": positive means the first-named object (2) wins
    w, ell, _, _ = real.parse_paircomp(np.array([[1.0]]), ["x", "y"], ["2:1"])
    assert (w[0], ell[0]) == (1, 0)


def test_pairwise_data_win_matrices():
    d = real.PairwiseData("t", ["a", "b", "c"], np.array([0, 0, 1]), np.array([1, 1, 0]), np.array([1.0, 0.5, 1.0]))
    np.testing.assert_allclose(d.wins(), [[0, 1.5, 0], [1.5, 0, 0], [0, 0, 0]])  # 1 + ½ each way
    np.testing.assert_allclose(d.win_rate(), [[0.5, 0.5, 0.5], [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]])
    sub = d.subset(np.array([0]))
    assert sub.n_comparisons == 1 and sub.win_rate()[0, 1] == 1.0 and len(d) == 3 and d.n_items == 3


def _fake_deb(files: dict[str, bytes]) -> bytes:
    """A minimal .deb (ar archive with debian-binary and data.tar.xz) holding ``files``."""
    tar_buf = io.BytesIO()
    with tarfile.open(fileobj=tar_buf, mode="w") as tar:
        for path, data in files.items():
            info = tarfile.TarInfo("./" + path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    members = {"debian-binary": b"2.0\n", "data.tar.xz": lzma.compress(tar_buf.getvalue())}
    out = b"!<arch>\n"
    for name, data in members.items():
        header = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode()
        out += header + data + (b"\n" if len(data) % 2 else b"")
    return out


PSY = "usr/lib/R/site-library/psychotools/"


def test_deb_unpacking_keeps_only_the_data_dir():
    deb = _fake_deb({PSY + "data/A.rda": b"odd", PSY + "R/code": b"x", PSY + "DESCRIPTION": b"Package: psychotools"})
    files = real._extract_data_dir(deb, "psychotools")
    assert files == {"data/A.rda": b"odd", "DESCRIPTION": b"Package: psychotools"}
    with pytest.raises(real.RealDataError, match="no usr/lib/R/site-library/psychotools/data/"):
        real._extract_data_dir(_fake_deb({"usr/share/doc/x": b"1"}), "psychotools")
    with pytest.raises(real.RealDataError, match=r"not a \.deb"):
        real._extract_data_dir(b"garbage", "psychotools")


def test_fetch_caches_and_refetches_corrupt_or_missing_files(tmp_path, monkeypatch):
    calls = []

    def fake_download(package, workdir):
        calls.append(package)
        return _fake_deb({PSY + "data/A.rda": b"payload", PSY + "DESCRIPTION": b"d"}), "fake"

    monkeypatch.setattr(real, "_download_deb", fake_download)
    dest = real.fetch("psychotools", tmp_path)
    assert (dest / "data" / "A.rda").read_bytes() == b"payload" and len(calls) == 1
    manifest = json.loads((dest / "MANIFEST.json").read_text())
    assert set(manifest["files"]) == {"data/A.rda", "DESCRIPTION"}
    real.fetch("psychotools", tmp_path)
    assert len(calls) == 1  # cached
    (dest / "data" / "A.rda").write_bytes(b"corrupt")
    real.fetch("psychotools", tmp_path)
    assert len(calls) == 2 and (dest / "data" / "A.rda").read_bytes() == b"payload"
    (dest / "data" / "A.rda").unlink()
    real.fetch("psychotools", tmp_path)
    assert len(calls) == 3 and (dest / "data" / "A.rda").exists()
    (dest / "MANIFEST.json").write_text("{not json")
    real.fetch("psychotools", tmp_path)
    assert len(calls) == 4


def _no_download(package, workdir):
    raise AssertionError(f"unexpected download of {package}")


def test_hand_populated_cache_is_accepted_without_a_download(tmp_path, monkeypatch):
    # what the error message's by-hand instructions produce: <cache>/<package>/data/ and no manifest
    monkeypatch.setattr(real, "_download_deb", _no_download)
    data = tmp_path / "psychotools" / "data"
    data.mkdir(parents=True)
    (data / "A.rda").write_bytes(b"payload")
    (data / "sub").mkdir()
    (data / "sub" / "B.rds").write_bytes(b"more")
    dest = real.fetch("psychotools", tmp_path)
    assert dest == tmp_path / "psychotools" and (dest / "data" / "A.rda").read_bytes() == b"payload"
    manifest = json.loads((dest / "MANIFEST.json").read_text())
    assert manifest["origin"] == "manual"
    assert manifest["files"] == {
        "data/A.rda": hashlib.sha256(b"payload").hexdigest(),
        "data/sub/B.rds": hashlib.sha256(b"more").hexdigest(),
    }
    assert real.fetch("psychotools", tmp_path) == dest  # now a valid cache: still no download


def test_corrupt_manual_or_empty_cache_is_still_refetched(tmp_path, monkeypatch):
    calls = []

    def fake_download(package, workdir):
        calls.append(package)
        return _fake_deb({PSY + "data/A.rda": b"payload"}), "fake"

    monkeypatch.setattr(real, "_download_deb", fake_download)
    (tmp_path / "psychotools" / "data").mkdir(parents=True)  # an empty data/ is not a manual install
    real.fetch("psychotools", tmp_path)
    assert len(calls) == 1
    (tmp_path / "psychotools" / "data" / "A.rda").write_bytes(b"corrupt")  # manifest exists, files mismatch
    real.fetch("psychotools", tmp_path)
    assert len(calls) == 2 and (tmp_path / "psychotools" / "data" / "A.rda").read_bytes() == b"payload"


def _ar(members: dict[str, bytes], size_field=None) -> bytes:
    out = b"!<arch>\n"
    for name, data in members.items():
        size = f"{len(data) if size_field is None else size_field:<10}"
        out += f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{size}`\n".encode() + data
    return out


@pytest.mark.parametrize(
    "payload",
    [
        _ar({"debian-binary": b"2.0\n", "data.tar.xz": b"not xz at all"}),  # lzma.LZMAError
        _ar({"debian-binary": b"2.0\n", "data.tar.xz": lzma.compress(b"x" * 1000)[:20]}),  # truncated xz: EOFError
        _ar({"debian-binary": b"2.0\n", "data.tar.xz": lzma.compress(b"not a tar file" * 50)}),  # tarfile.TarError
        _ar({"debian-binary": b"2.0\n"}, size_field="12ab"),  # bad ar size field: ValueError
        _ar({"debian-binary": b"2.0\n", "data.tar.gz": b"\x1f\x8bjunk"}),  # bad gzip
    ],
)
def test_malformed_deb_raises_real_data_error(tmp_path, monkeypatch, payload):
    monkeypatch.setattr(real, "_download_deb", lambda package, workdir: (payload, "fake-origin"))
    with pytest.raises(real.RealDataError) as info:
        real.fetch("psychotools", tmp_path)
    msg = str(info.value)
    assert "'psychotools'" in msg and "truncated or malformed" in msg and "fake-origin" in msg
    assert "by hand" in msg and "apt-get download r-cran-psychotools" in msg
    assert not (tmp_path / "psychotools").exists()


def test_cache_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("GPMKIT_REAL_CACHE", str(tmp_path / "env"))
    assert real.cache_dir() == tmp_path / "env"
    assert real.cache_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("GPMKIT_REAL_CACHE")
    assert str(real.cache_dir()).endswith("/.cache/gpmkit/real")


def test_unreachable_registry_says_what_to_install_by_hand(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(real.shutil, "which", lambda name: None)  # no apt-get
    monkeypatch.setattr(real.urllib.request, "urlopen", no_network)
    with pytest.raises(real.RealDataError) as info:
        real.fetch("BradleyTerry2", tmp_path)
    msg = str(info.value)
    assert "apt-get is not installed" in msg and "Network is unreachable" in msg
    assert "by hand" in msg and "apt-get download r-cran-bradleyterry2" in msg
    assert "deb.debian.org/debian/pool/main/r/r-cran-bradleyterry2/" in msg and "GPMKIT_REAL_CACHE" in msg


def test_mirror_fallback_checks_the_pinned_sha256(tmp_path, monkeypatch):
    class Response(io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(real.shutil, "which", lambda name: None)
    monkeypatch.setattr(real.urllib.request, "urlopen", lambda url, timeout: Response(b"tampered"))
    with pytest.raises(real.RealDataError, match=r"SHA-256 .* differs from the pinned"):
        real.fetch("psychotools", tmp_path)


def test_module_docstring_points_at_the_readme_not_outside_the_repo():
    readme = pathlib.Path(__file__).resolve().parents[1] / "README.md"
    assert "../shared" not in real.__doc__ and 'README section "Real human pairwise data"' in real.__doc__
    assert "## Real human pairwise data" in readme.read_text(encoding="utf-8")


def test_unknown_names():
    with pytest.raises(ArgumentError, match="package: expected one of"):
        real.fetch("eba")
    with pytest.raises(ArgumentError, match="name: expected one of"):
        real.load("hh-rlhf")


# --------------------------------------------------------------------------------------------------
# network: the real packages


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("real-cache")
    try:
        real.fetch("psychotools", root)
        real.fetch("BradleyTerry2", root)
    except real.RealDataError as err:
        pytest.skip(f"Debian's package registry is not reachable here: {err}")
    return root


# summary(<data>$preference) as printed in psychotools-Ex.Rout.save (psychotools 0.7-2, inside the .deb):
# "first : second  n(first preferred)  n(second preferred)"
DOCUMENTED_COUNTS = {
    "germanparties": [("none", "Linke", 119, 73), ("none", "Gruene", 25, 167), ("CDU/CSU", "FDP", 106, 86)],
    "firstnames": [("Tim", "Lucas", 87, 105), ("Robin", "Julius", 95, 97), ("Benedikt", "Julius", 73, 119)],
    "soundquality": [
        ("Mono", "PhantomMono", 268, 515),
        ("Stereo", "Matrix", 391, 392),
        ("Upmix2", "Original", 333, 450),
    ],
}


@pytest.mark.parametrize("name", sorted(DOCUMENTED_COUNTS))
def test_psychotools_counts_match_the_documented_summaries(cache, name):
    d = real.load(name, cache)
    wins = d.wins()
    for first, second, n_first, n_second in DOCUMENTED_COUNTS[name]:
        i, j = d.item_names.index(first), d.item_names.index(second)
        assert (wins[i, j], wins[j, i]) == (n_first, n_second)


def test_dataset_shapes_and_context(cache):
    expected = {  # (items, comparisons, ties, context columns)
        "soundquality": (8, 783 * 28, 0, 6),
        "firstnames": (6, 192 * 15, 0, 3),
        "germanparties": (6, 192 * 15, 0, 10),
        "football": (29, 5 * 380, 505, 5),
        "cems": (6, 4454, 487, 16),
    }
    for name, (k, n, ties, c) in expected.items():
        d = real.load(name, cache)
        assert (d.n_items, d.n_comparisons, int((d.outcome == 0.5).sum()), d.context.shape[1]) == (k, n, ties, c)
        assert len(d.context_names) == c and d.groups.shape == (n,)
        assert np.all(d.winners != d.losers) and set(np.unique(d.outcome)) <= {0.5, 1.0}


def test_football_sign_home_result(cache):
    # ?football: result is for the home team (1 win, 0 draw, -1 loss). 882 home wins + 513 away wins.
    d = real.load("football", cache)
    assert int((d.outcome == 1).sum()) == 882 + 513
    # Manchester United (champions in 2008-9, 2010-11, 2012-13) has the most wins
    wins = d.wins()
    assert d.item_names[int(np.argmax((wins - wins.T).sum(axis=1)))] == "MnU"


def test_bt_reproduces_psychotools_btmodel_germanparties(cache):
    # psychotools-Ex.Rout.save, example(btmodel): summary(btmodel(GermanParties2009$preference)) with FDP as the
    # reference (0), printed to 4 digits, and worth(bt); our unpenalised BT must agree to the printed precision.
    d = real.load("germanparties", cache)
    m = fit(d.n_items, d.winners, d.losers, d.outcome, model="bt", ability_l2=0.0)
    coef = m.abilities - m.abilities[d.item_names.index("FDP")]
    documented = {"none": -0.3756, "Linke": -0.6161, "Gruene": 1.1858, "SPD": 0.8131, "CDU/CSU": 0.1756}
    for item, value in documented.items():
        assert coef[d.item_names.index(item)] == pytest.approx(value, abs=6e-5)
    worth = np.exp(m.abilities) / np.exp(m.abilities).sum()
    np.testing.assert_allclose(worth, [0.0768, 0.0604, 0.3658, 0.2520, 0.1332, 0.1118], atol=6e-5)


def test_bt_reproduces_bradleyterry2_baseball(cache):
    # BradleyTerry2 tests/testthat/test-baseball.R (Agresti 2002, Table 10.11 col. 3): sorted BTm estimates,
    # Baltimore = 0, rounded to 2 decimals
    d = real.load("baseball", cache)
    m = fit(d.n_items, d.winners, d.losers, model="bt", ability_l2=0.0)
    est = np.sort(np.delete(m.abilities - m.abilities[d.item_names.index("Baltimore")], 0))
    np.testing.assert_allclose(est, [0.68, 1.11, 1.25, 1.29, 1.44, 1.58], atol=0.005 + 1e-9)


def test_bt_on_cems_solves_the_likelihood_equations_with_ties(cache):
    # the unpenalised BT MLE with ties as half wins (CEMS' win1.adj/win2.adj, as in ?CEMS) matches each school's
    # observed (adjusted) wins with its expected wins
    d = real.load("cems", cache)
    m = fit(d.n_items, d.winners, d.losers, d.outcome, model="bt", ability_l2=0.0, tol=1e-12)
    q = m.prob(d.winners, d.losers)
    observed = np.bincount(d.winners, d.outcome, 6) + np.bincount(d.losers, 1 - d.outcome, 6)
    expected = np.bincount(d.winners, q, 6) + np.bincount(d.losers, 1 - q, 6)
    np.testing.assert_allclose(expected, observed, atol=1e-3)


def test_corrupt_cached_file_is_refetched(cache):
    dest = real.fetch("psychotools", cache)
    target = dest / "data" / "FirstNames.rda"
    target.write_bytes(b"not an rda file")
    d = real.load("firstnames", cache)
    assert d.n_comparisons == 192 * 15
    assert target.read_bytes()[:2] != b"no"
