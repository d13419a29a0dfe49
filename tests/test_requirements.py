"""
The install files agree: every pin of ``requirements.txt``, ``requirements-dev.txt`` and ``requirements-cpu.txt``
equals the lock's (``requirements-lock.txt``, what ``make install`` and CI install); the CPU set holds no CUDA
wheel; every third-party package that ``monai_dae`` and ``tools`` import is declared, not only pulled in by
another package.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LOCK = "requirements-lock.txt"
PINNED_FILES = ("requirements.txt", "requirements-dev.txt", "requirements-cpu.txt")
CUDA_PREFIXES = ("nvidia-", "cuda-", "cupy", "cucim")
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def _name(requirement: str) -> str:
    """Normalised distribution name (PEP 503) of a requirement, without extras or version."""
    return re.sub(r"[-_.]+", "-", re.split(r"[\[<>=!~; ]", requirement.strip(), maxsplit=1)[0]).lower()


def _requirements(file: str) -> tuple[dict[str, str], list[str]]:
    """``{name: pinned version or ''}`` and the option lines (``--index-url ...``) of a requirements file."""
    pins, options = {}, []
    for line in (REPO / file).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("-"):
            options.append(line)
            continue
        name = _name(line)
        assert name not in pins, f"{file}: {name} is listed twice."
        pins[name] = line.split("==", 1)[1].strip() if "==" in line else ""
    return pins, options


def test_the_lock_pins_every_package_exactly_once():
    lock, options = _requirements(LOCK)
    assert not options
    assert len(lock) > 100
    unpinned = sorted(name for name, version in lock.items() if not version)
    assert not unpinned, f"{LOCK}: not pinned with ==: {unpinned}"


@pytest.mark.parametrize("file", PINNED_FILES)
def test_requirements_agree_with_the_lock(file):
    lock, _ = _requirements(LOCK)
    pins, _ = _requirements(file)
    unpinned = sorted(name for name, version in pins.items() if not version)
    assert not unpinned, f"{file}: not pinned with ==: {unpinned}"
    missing = sorted(name for name in pins if name not in lock)
    assert not missing, f"{file} pins packages the lock does not have: {missing}"
    disagree = {name: (version, lock[name]) for name, version in pins.items() if lock[name] != version}
    assert not disagree, f"{file} and {LOCK} disagree (requirements, lock): {disagree}"


def test_cpu_requirements_take_torch_from_the_cpu_index_and_no_cuda_wheel():
    pins, options = _requirements("requirements-cpu.txt")
    assert options[0] == f"--index-url {CPU_INDEX}"
    assert "--extra-index-url https://pypi.org/simple" in options
    assert {"torch", "torchvision", "monai"} <= set(pins)
    cuda = sorted(name for name in pins if name.startswith(CUDA_PREFIXES))
    assert not cuda, cuda
    assert "monai[" not in (REPO / "requirements-cpu.txt").read_text(), "monai[all] pulls cuCIM and CuPy (CUDA)"


def test_the_gpu_requirements_are_monai_all_and_the_lock_holds_its_cuda_build():
    text = (REPO / "requirements.txt").read_text()
    assert "monai[all]==" in text
    lock, _ = _requirements(LOCK)
    assert any(name.startswith("nvidia-") for name in lock)


def _imported_distributions(folders: tuple[str, ...]) -> dict[tuple[str, ...], set[str]]:
    """
    ``{distributions: files importing it}`` for the third-party imports (also inside functions) of ``folders``;
    the key holds every distribution that provides the module (``mlflow``: mlflow, mlflow-skinny, ...).
    """
    local = {"monai_dae", "tools", "tests", *(path.stem for path in (REPO / "tests").glob("*.py"))}
    modules_to_dists = packages_distributions()
    found: dict[str, set[str]] = {}
    for folder in folders:
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top in sys.stdlib_module_names or top in local:
                        continue
                    dists = tuple(sorted({_name(dist) for dist in modules_to_dists.get(top, [top])}))
                    found.setdefault(dists, set()).add(str(path.relative_to(REPO)))
    return found


@pytest.mark.parametrize("file", ["requirements.txt", "requirements-cpu.txt"])
def test_every_package_the_code_imports_is_declared(file):
    declared, _ = _requirements(file)
    imported = _imported_distributions(("monai_dae", "tools"))
    undeclared = {dists: sorted(files)[:3] for dists, files in imported.items() if not set(dists) & set(declared)}
    assert not undeclared, f"{file} does not declare (imported by): {undeclared}"


def test_every_package_the_tests_import_is_declared_for_development():
    declared = {**_requirements("requirements.txt")[0], **_requirements("requirements-dev.txt")[0]}
    imported = _imported_distributions(("tests",))
    undeclared = {dists: sorted(files)[:3] for dists, files in imported.items() if not set(dists) & set(declared)}
    assert not undeclared, f"requirements(-dev).txt do not declare (imported by): {undeclared}"


def test_pyproject_declares_the_same_packages_and_the_extras():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime, _ = _requirements("requirements-cpu.txt")
    dependencies = {_name(d) for d in project["dependencies"]}
    assert dependencies <= set(runtime), dependencies - set(runtime)
    undeclared = [dists for dists in _imported_distributions(("monai_dae", "tools")) if not set(dists) & dependencies]
    assert not undeclared, undeclared
    extras = project["optional-dependencies"]
    assert {"all", "cpu", "dev"} <= set(extras)
    assert "pytest" in {_name(d) for d in extras["dev"]}
    assert any(d.startswith("monai[all]") for d in extras["all"])


def test_make_install_installs_the_lock_by_default_and_the_cpu_set_with_cpu_1():
    makefile = (REPO / "Makefile").read_text()
    line = next(line for line in makefile.splitlines() if line.startswith("REQUIREMENTS :="))
    assert "-r requirements-cpu.txt -r requirements-dev.txt" in line and line.rstrip().endswith("-r requirements-lock.txt)")
