"""The wheel we would upload carries what napari, the napari hub and users need.

One wheel is built per session (a few seconds) from a copy of the sources, so the build leaves no
``build/`` or ``*.egg-info`` behind in the working tree, and without build isolation or an index,
so it needs no network: it uses the setuptools already installed. Where that setuptools is missing
or older than ``[build-system] requires`` asks for, the tests are skipped with that reason.
"""

from __future__ import annotations

import configparser
import email.parser
import importlib.metadata
import importlib.util
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: tomllib's predecessor, where installed
    tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml on Python 3.10 needs tomli")

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PACKAGE = "napari_spoco"
# What load_sample() and load_default_model() read at run time: without them the plugin's sample
# menu, `napari-spoco demo` and the first Train fail after installation from PyPI.
SHIPPED_DATA = [
    "napari_spoco/_models/default_2d.spoco.pt",
    "napari_spoco/_sample/nuclei_train.tif",
    "napari_spoco/_sample/nuclei_train_sparse.tif",
    "napari_spoco/_sample/nuclei_train_truth.tif",
    "napari_spoco/_sample/nuclei_test.tif",
    "napari_spoco/_sample/nuclei_test_truth.tif",
]


def _backend_missing() -> str | None:
    """Why the wheel cannot be built offline here, or None when it can."""
    if importlib.util.find_spec("pip") is None:
        return "pip is not installed in this environment"
    backend = PYPROJECT["build-system"]["build-backend"]
    if backend != "setuptools.build_meta":
        return f"unexpected build backend {backend!r}: update this test"
    if importlib.util.find_spec("setuptools") is None:
        return "setuptools is not installed, and building with isolation would need the network"
    try:
        from packaging.requirements import Requirement
    except ImportError:  # no packaging: setuptools being importable has to do
        return None
    have = importlib.metadata.version("setuptools")
    for spec in PYPROJECT["build-system"]["requires"]:
        req = Requirement(spec)
        if req.name == "setuptools" and not req.specifier.contains(have, prereleases=True):
            return f"installed setuptools {have} does not satisfy {spec!r} (offline build impossible)"
    return None


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    reason = _backend_missing()
    if reason:
        pytest.skip(f"cannot build the wheel offline: {reason}")
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src-copy"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for licence in ROOT.glob("LICEN[CS]E*"):
        shutil.copy2(licence, src / licence.name)
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc"))
    out = tmp / "dist"
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
           "--disable-pip-version-check", "-q", "-w", str(out), str(src)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        pytest.fail(f"building the wheel failed ({' '.join(cmd)}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    wheels = sorted(out.glob("napari_spoco-*.whl"))
    assert len(wheels) == 1, f"expected one napari_spoco wheel in {out}, got {[w.name for w in out.iterdir()]}"
    with zipfile.ZipFile(wheels[0]) as zf:
        yield zf


def _dist_info(zf: zipfile.ZipFile, name: str) -> str:
    hits = [n for n in zf.namelist() if re.fullmatch(rf"napari_spoco-[^/]+\.dist-info/{name}", n)]
    assert len(hits) == 1, f"{name} not found once in the wheel's .dist-info: {hits}"
    return zf.read(hits[0]).decode("utf-8")


@pytest.fixture(scope="module")
def metadata(wheel):
    return email.parser.Parser().parsestr(_dist_info(wheel, "METADATA"))


def test_wheel_holds_the_package_and_nothing_else(wheel):
    tops = {n.split("/")[0] for n in wheel.namelist()}
    assert PACKAGE in tops
    assert {t for t in tops if t != PACKAGE and not t.endswith(".dist-info")} == set(), (
        "tests, benchmarks or scripts leaked into the wheel"
    )
    assert not [n for n in wheel.namelist() if "__pycache__" in n or n.endswith(".pyc")]


def test_manifest_is_shipped_and_validates_with_npe2(wheel, metadata, tmp_path):
    npe2 = pytest.importorskip("npe2", reason="npe2 (the testing extra) validates the plugin manifest")
    assert f"{PACKAGE}/napari.yaml" in wheel.namelist()
    path = tmp_path / "napari.yaml"
    path.write_bytes(wheel.read(f"{PACKAGE}/napari.yaml"))
    manifest = npe2.PluginManifest.from_file(path)  # raises on a manifest napari would refuse
    # napari matches a manifest to its distribution by name.
    assert manifest.name == metadata["Name"]
    # Every command napari may call must import from a module that is inside the wheel.
    names = set(wheel.namelist())
    for command in manifest.contributions.commands or []:
        module = command.python_name.split(":")[0]
        candidates = {module.replace(".", "/") + ".py", module.replace(".", "/") + "/__init__.py"}
        assert candidates & names, f"{command.id}: {module} is not in the wheel"
    declared = {c.id for c in manifest.contributions.commands or []}
    used = [w.command for w in manifest.contributions.widgets or []]
    used += [s.command for s in manifest.contributions.sample_data or [] if hasattr(s, "command")]
    used += [w.command for w in manifest.contributions.writers or []]
    assert set(used) <= declared


def test_napari_manifest_entry_point_points_at_the_shipped_manifest(wheel):
    eps = configparser.ConfigParser(delimiters=("=",))
    eps.optionxform = str  # keep the entry point names as written
    eps.read_string(_dist_info(wheel, "entry_points.txt"))
    assert eps.has_section("napari.manifest"), "no napari.manifest entry point: napari would not find the plugin"
    entries = dict(eps.items("napari.manifest"))
    assert list(entries) == ["napari-spoco"]
    module, _, resource = entries["napari-spoco"].strip().partition(":")
    assert f"{module.replace('.', '/')}/{resource}" in wheel.namelist()
    assert dict(eps.items("console_scripts"))["napari-spoco"].strip() == "napari_spoco.cli:main"


def test_metadata_lists_the_plugin_on_the_napari_hub(metadata):
    classifiers = metadata.get_all("Classifier") or []
    # Without this classifier neither the napari hub nor napari's plugin installer lists the plugin.
    assert "Framework :: napari" in classifiers
    for wanted in ("Intended Audience :: Science/Research", "Topic :: Scientific/Engineering :: Image Processing"):
        assert wanted in classifiers
    assert any(c.startswith("License :: ") for c in classifiers)
    assert any(c.startswith("Operating System :: ") for c in classifiers)
    assert any(re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c) for c in classifiers)

    keywords = {k.strip() for k in (metadata["Keywords"] or "").split(",")}
    assert set(PYPROJECT["project"]["keywords"]) <= keywords
    assert {"napari", "segmentation", "microscopy", "SPOCO"} <= keywords

    urls = dict(u.split(", ", 1) for u in metadata.get_all("Project-URL") or [])
    assert {"Homepage", "Source", "Bug Tracker", "Documentation"} <= set(urls)
    assert all(u.startswith("https://") for u in urls.values())

    assert metadata["Summary"]
    assert metadata["Requires-Python"] == PYPROJECT["project"]["requires-python"]
    assert metadata["Description-Content-Type"] == "text/markdown"
    assert metadata.get_payload().lstrip().startswith("# napari-spoco")  # the README is the long description


def test_model_and_sample_data_are_shipped(wheel):
    names = set(wheel.namelist())
    missing = [n for n in SHIPPED_DATA if n not in names]
    assert not missing, f"package-data in pyproject.toml misses {missing}"
    # Any other data file added to these folders must ship too (not only the ones listed above).
    for folder in ("_models", "_sample"):
        for path in (ROOT / "src" / PACKAGE / folder).iterdir():
            if path.is_file() and path.suffix not in (".py", ".pyc"):
                assert f"{PACKAGE}/{folder}/{path.name}" in names, f"{path.name} is not in the wheel"
    model = wheel.read("napari_spoco/_models/default_2d.spoco.pt")
    assert model == (ROOT / "src" / PACKAGE / "_models" / "default_2d.spoco.pt").read_bytes()


def test_hub_description_has_no_relative_links():
    """napari hub renders .napari-hub/DESCRIPTION.md away from the repository: relative links break."""
    text = (ROOT / ".napari-hub" / "DESCRIPTION.md").read_text(encoding="utf-8")
    assert "2103.14572" in text  # how to cite SPOCO
    targets = re.findall(r"\]\(([^)\s]+)", text)
    assert targets, "expected links in the description"
    relative = [t for t in targets if not re.match(r"https?://|mailto:|#", t)]
    assert not relative, f"relative links in .napari-hub/DESCRIPTION.md: {relative}"
