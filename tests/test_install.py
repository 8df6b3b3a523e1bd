"""The install the README and CI run (`pip install -e '.[dev]'`) resolves: every extra an extra names
exists, and every requirement `dev` pulls in is installed in this environment.

Session 7's rename once turned the extras `export`, `distill`, ... into `slm.export`, ...; `dev` still
asked for `slm[export]`, pip only warned, and a fresh clone got neither torch nor onnx (CI died at
collection, while the old venv here still had everything)."""
import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"


def _extras() -> dict[str, list[str]]:
    return tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]


def test_every_self_reference_names_an_extra_that_exists():
    extras = _extras()
    for name in extras:
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", name), f"extra {name!r}: pip normalises it, use a plain name"
    for name, requirements in extras.items():
        for text in requirements:
            req = Requirement(text)
            if req.name == "slm":
                missing = req.extras - set(extras)
                assert not missing, f"extra {name!r} asks for slm{sorted(req.extras)}: no extra {sorted(missing)}"


def _closure(extra: str, extras: dict[str, list[str]]) -> list[Requirement]:
    out, todo, seen = [], [extra], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for text in extras[name]:
            req = Requirement(text)
            if req.name == "slm":
                todo.extend(req.extras)
            else:
                out.append(req)
    return out


def test_the_dev_install_has_every_requirement():
    extras = _extras()
    dependencies = [Requirement(t) for t in tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]]
    missing = []
    for req in dependencies + _closure("dev", extras):
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            version = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            missing.append(str(req))
            continue
        if not req.specifier.contains(version, prereleases=True):
            missing.append(f"{req} (found {version})")
    # `cuda` conflicts with `cpu` by design and is not part of dev
    assert not missing, f"pip install -e '.[dev]' left these out: {missing}"


def test_installed_metadata_is_this_pyproject():
    """The editable install was made from this pyproject (the Makefile's stamp reinstalls on change)."""
    provided = set(metadata.metadata("slm").get_all("Provides-Extra") or [])
    assert provided == set(_extras()), (provided, set(_extras()))


def test_the_wheel_carries_every_data_file(tmp_path):
    """Every file under slm/ that git tracks and is not Python source is in the built wheel: data the code
    reads at run time (the KV calibration corpus, the shipped scorer, the bundled tasks) needs a
    package-data pattern in pyproject.toml, and a missing one only shows on a user's install."""
    import shutil
    import subprocess
    import sys
    import zipfile

    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, check=True, capture_output=True, text=True).stdout.split()
    clone = tmp_path / "clone"               # what a fresh clone has: no build/ or egg-info to leak files in
    for path in tracked:
        if (ROOT / path).is_file():
            (clone / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / path, clone / path)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
                    str(clone)], check=True, capture_output=True)
    wheel, = tmp_path.glob("slm-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    data = [p for p in tracked if p.startswith("slm/") and not p.endswith(".py")]
    assert any("bbh-cot-prompts" in p for p in data)
    assert [p for p in data if p not in shipped] == []
