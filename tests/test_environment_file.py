"""environment.yml: valid YAML in conda's shape, Python 3.12, and a pip section that lists exactly
pyproject.toml's runtime dependencies (same specifiers), torch aside, plus the project itself.

conda-forge cannot be reached from the CI machines, so the environment is not created here; README
("Setting up") gives the commands. What can be checked without conda is checked, and the checker is
itself tested on planted mistakes.
"""
from __future__ import annotations

import copy
import re

import pytest
import yaml
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from conftest import REPO

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

CPU_INDEX = "https://download.pytorch.org/whl/cpu"
#: left to the user's channel or the CPU index (environment.yml's header says how)
LEFT_TO_THE_USER = {"torch"}


def load_environment() -> dict:
    return yaml.safe_load((REPO / "environment.yml").read_text())


def load_pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def environment_problems(env: object, pyproject: dict) -> list[str]:
    """Everything wrong with a parsed environment.yml against pyproject.toml, one line each."""
    if not isinstance(env, dict):
        return ["environment.yml is not a mapping"]
    problems = []
    if not env.get("name"):
        problems.append("no name")
    if "conda-forge" not in (env.get("channels") or []):
        problems.append("channels lack conda-forge")
    dependencies = env.get("dependencies") or []
    conda = [item for item in dependencies if isinstance(item, str)]
    pip_sections = [item["pip"] for item in dependencies if isinstance(item, dict) and "pip" in item]
    if "python=3.12" not in conda:
        problems.append(f"no python=3.12 among the conda dependencies {conda}")
    if "pip" not in conda:
        problems.append("pip is not a conda dependency (the pip section needs it)")
    if len(pip_sections) != 1 or not isinstance(pip_sections[0], list):
        return problems + ["there must be exactly one pip section, a list"]
    pip = pip_sections[0]
    python = next((re.sub(r"^python=", "", item) for item in conda if item.startswith("python=")), None)
    requires_python = SpecifierSet(pyproject["project"].get("requires-python", ""))
    if python and python + ".0" not in requires_python:
        problems.append(f"python={python} does not satisfy pyproject's requires-python {requires_python}")

    listed: dict[str, Requirement] = {}
    options = [line for line in pip if line.startswith("-")]
    for line in pip:
        if line.startswith("-"):
            continue
        try:
            requirement = Requirement(line)
        except InvalidRequirement as exc:
            problems.append(f"pip entry {line!r} is not a requirement ({exc})")
            continue
        name = canonicalize_name(requirement.name)
        if name in listed:
            problems.append(f"{requirement.name} is listed twice")
        listed[name] = requirement
    if "-e ." not in options:
        problems.append("the pip section does not install the project itself (-e .)")
    if f"--extra-index-url {CPU_INDEX}" not in options:
        problems.append(f"the pip section lacks --extra-index-url {CPU_INDEX} (torch's CPU wheel)")

    wanted = {canonicalize_name(Requirement(dep).name): Requirement(dep) for dep in pyproject["project"]["dependencies"]}
    for name, requirement in wanted.items():
        if name in LEFT_TO_THE_USER:
            if name in listed:
                problems.append(f"{name} is listed: it is left to the user's channel or the CPU index")
            continue
        if name not in listed:
            problems.append(f"{requirement} (pyproject.toml) is missing from the pip section")
        elif (listed[name].specifier, str(listed[name].marker)) != (requirement.specifier, str(requirement.marker)):
            problems.append(f"{listed[name]} in the pip section differs from {requirement} in pyproject.toml")
    for name, requirement in listed.items():
        if name not in wanted:
            problems.append(f"{requirement} is in the pip section but not a runtime dependency in pyproject.toml")
    return problems


def test_environment_yml_matches_pyproject() -> None:
    assert environment_problems(load_environment(), load_pyproject()) == []


def test_the_project_line_installs_this_checkout() -> None:
    """conda runs pip from environment.yml's folder, so ``-e .`` must find pyproject.toml there."""
    assert (REPO / "environment.yml").parent == (REPO / "pyproject.toml").parent


def _pip(env: dict) -> list[str]:
    return next(item["pip"] for item in env["dependencies"] if isinstance(item, dict))


@pytest.mark.parametrize("plant, expected", [
    (lambda env: _pip(env).remove("scipy>=1.10"), "scipy>=1.10 (pyproject.toml) is missing"),
    (lambda env: _pip(env).append("torch>=2.1"), "torch is listed"),
    (lambda env: _pip(env).__setitem__(_pip(env).index("pandas>=2.0"), "pandas>=1.5"), "pandas>=1.5 in the pip section differs"),
    (lambda env: _pip(env).append("requests"), "requests is in the pip section but not a runtime dependency"),
    (lambda env: _pip(env).remove("-e ."), "does not install the project itself"),
    (lambda env: env["dependencies"].remove("python=3.12"), "no python=3.12"),
    (lambda env: env["dependencies"].remove("pip"), "pip is not a conda dependency"),
    (lambda env: _pip(env).append("not a requirement!"), "is not a requirement"),
])
def test_planted_mistakes_are_found(plant, expected: str) -> None:
    env = copy.deepcopy(load_environment())
    plant(env)
    problems = environment_problems(env, load_pyproject())
    assert any(expected in problem for problem in problems), problems


def test_a_new_runtime_dependency_must_be_added() -> None:
    pyproject = copy.deepcopy(load_pyproject())
    pyproject["project"]["dependencies"].append("rich>=13")
    assert environment_problems(load_environment(), pyproject) == [
        "rich>=13 (pyproject.toml) is missing from the pip section"]


def test_not_yaml_is_reported() -> None:
    with pytest.raises(yaml.YAMLError):
        yaml.safe_load("dependencies: [python=3.12\n  - pip:")
    assert environment_problems(["python=3.12"], load_pyproject()) == ["environment.yml is not a mapping"]
