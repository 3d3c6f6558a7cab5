"""The Dockerfile, without a Docker engine: it parses (a small parser of the Dockerfile syntax it
uses), its stages do what the image promises (wheel built in a build stage, installed into a slim
runtime with pip like scripts/setup installs the project, non-root, no compilers or caches, OCI
labels, no HEALTHCHECK, ``ehc run`` as entrypoint), the build context it copies is not excluded by
.dockerignore, and the wheel it builds from that context installs a working ``ehc run``."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from deploy_helpers import ROOT

KNOWN = {
    "FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME", "USER",
    "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL", "MAINTAINER",
}  # fmt: skip


@dataclass
class Instruction:
    line: int
    keyword: str
    args: str


@dataclass
class Stage:
    image: str
    name: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def parse_dockerfile(text: str) -> tuple[list[Instruction], list[Stage]]:
    """Instructions (comments dropped, ``\\`` continuations joined) and the stages they form."""
    instructions: list[Instruction] = []
    pending, start = "", 0
    for n, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if not pending:
            start = n
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        whole = pending + stripped
        pending = ""
        keyword, _, args = whole.partition(" ")
        if keyword.upper() not in KNOWN:
            raise ValueError(f"line {start}: unknown instruction {keyword!r}")
        instructions.append(Instruction(start, keyword.upper(), args.strip()))
    if pending:
        raise ValueError("the last instruction ends with a line continuation")
    stages: list[Stage] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            m = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", ins.args, re.IGNORECASE)
            if not m:
                raise ValueError(f"line {ins.line}: bad FROM {ins.args!r}")
            stages.append(Stage(m.group(1), m.group(2) or ""))
        elif not stages:
            if ins.keyword != "ARG":
                raise ValueError(f"line {ins.line}: {ins.keyword} before the first FROM")
        else:
            stages[-1].instructions.append(ins)
    return instructions, stages


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore excludes ``path`` (last matching pattern wins; ``!`` re-includes)."""
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").strip("/")
        parts = path.split("/")
        # A pattern matching a parent directory matches everything below it.
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        regex = re.escape(pat).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        if any(re.fullmatch(regex, p) for p in prefixes):
            excluded = not negate
    return excluded


@pytest.fixture(scope="module")
def dockerfile() -> tuple[list[Instruction], list[Stage]]:
    return parse_dockerfile((ROOT / "Dockerfile").read_text())


def ignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def test_parses_into_a_build_stage_and_a_slim_runtime(
    dockerfile: tuple[list[Instruction], list[Stage]],
) -> None:
    instructions, stages = dockerfile
    assert [s.name for s in stages] == ["build", ""]
    build, runtime = stages
    assert re.fullmatch(r"python:\$\{PYTHON_VERSION\}-slim", build.image)
    assert runtime.image == build.image  # the same Python, so the wheels fit
    assert "ARG PYTHON_VERSION=3.11" in [f"{i.keyword} {i.args}" for i in instructions]
    # The wheel is built in the build stage from the project itself, as scripts/setup installs it
    # (pip, from pyproject.toml; no requirements file, no other index).
    (wheel,) = build.all("RUN")
    assert re.search(r"python -m pip wheel .*--no-cache-dir .*--wheel-dir /wheels \.$", wheel.args)
    assert (
        "pip install -q --disable-pip-version-check -e '.[test,perf]'"
        in (ROOT / "scripts" / "setup").read_text()
    )


def test_runtime_stage_is_non_root_cacheless_labelled_and_runs_ehc(
    dockerfile: tuple[list[Instruction], list[Stage]],
) -> None:
    _, (_, runtime) = dockerfile
    runs = " && ".join(i.args for i in runtime.all("RUN"))
    # The wheels come in through a bind mount from the build stage: they never form a layer.
    assert "--mount=type=bind,from=build,source=/wheels,target=/wheels" in runs
    assert re.search(r"pip install --no-cache-dir --no-index --find-links=/wheels ehc\b", runs)
    assert not runtime.all("COPY") and not runtime.all("ADD")
    # No compilers or package caches: nothing is installed with apt, and pip itself goes.
    assert not re.search(r"apt-get|apk |gcc|build-essential|python3-dev", runs)
    assert "pip uninstall --yes pip setuptools wheel" in runs
    env = " ".join(i.args for i in runtime.all("ENV"))
    assert "PIP_NO_CACHE_DIR=1" in env
    assert "PYTHONDONTWRITEBYTECODE=1" in env  # the root filesystem is read-only in the pod
    (user,) = runtime.all("USER")
    uid, _, gid = user.args.partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit() and int(gid) != 0
    # The chart's runAsUser/runAsGroup and ping_group_range assume this user.
    values = (ROOT / "deploy/helm/endpoint-health-checker/values.yaml").read_text()
    assert f"runAsUser: {uid}" in values and f"runAsGroup: {gid}" in values
    assert f"--uid {uid} --gid {gid}" in runs
    (entrypoint,) = runtime.all("ENTRYPOINT")
    assert json.loads(entrypoint.args) == ["ehc", "run"]  # exec form, so SIGTERM reaches ehc
    assert not runtime.all("CMD")
    assert not runtime.all("HEALTHCHECK")  # Kubernetes probes /healthz and /readyz
    (expose,) = runtime.all("EXPOSE")
    assert expose.args == "9090"
    labels = dict(re.findall(r'(org\.opencontainers\.image\.[a-z]+)="([^"]*)"', runtime.all("LABEL")[0].args))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert labels["org.opencontainers.image.licenses"] == project["license"]
    assert labels["org.opencontainers.image.version"] == "${VERSION}"
    assert {"title", "description"} <= {k.rsplit(".", 1)[1] for k in labels}
    (version,) = [i for i in runtime.all("ARG") if i.args.startswith("VERSION=")]
    assert version.args == f"VERSION={project['version']}"


def test_build_context_is_what_the_dockerfile_copies(
    dockerfile: tuple[list[Instruction], list[Stage]],
) -> None:
    _, (build, _) = dockerfile
    patterns = ignore_patterns()
    sources = [src for ins in build.all("COPY") for src in ins.args.split()[:-1]]
    assert sources == ["pyproject.toml", "README.md", "ehc"]
    for src in sources:
        assert (ROOT / src).exists()
        assert not dockerignored(src, patterns), f"{src} is excluded by .dockerignore"
    for module in (ROOT / "ehc").rglob("*.py"):
        assert not dockerignored(str(module.relative_to(ROOT)), patterns)
    for leftover in (
        ".venv/bin/python",
        ".git/HEAD",
        "tests/conftest.py",
        "ehc/__pycache__/cli.cpython-311.pyc",
    ):
        assert dockerignored(leftover, patterns), f"{leftover} would be sent to the build"


def test_wheel_built_from_the_context_installs_a_working_ehc_run(tmp_path: Path) -> None:
    """The build stage's ``pip wheel .`` on exactly the copied context, then the runtime's ``pip install``
    of that wheel (dependencies come from this venv: no network), and its ``ehc`` script."""
    context = tmp_path / "src"
    context.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, context / name)
    shutil.copytree(ROOT / "ehc", context / "ehc", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    out = subprocess.run(
        [*pip, "wheel", "--no-cache-dir", "--no-deps", "--no-build-isolation", "--wheel-dir", str(wheels), str(context)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    (wheel,) = wheels.glob("ehc-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        entry_points = zf.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert "ehc = ehc.cli:main" in entry_points
    assert "ehc/worker/__main__.py" in names
    # No simulator in the image: neither the simulated API server nor the fleet.
    assert not [n for n in names if n.startswith("ehc/sim/")], names
    target = tmp_path / "site"
    out = subprocess.run(
        [*pip, "install", "--no-cache-dir", "--no-index", "--no-deps", "--target", str(target), str(wheel)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    script = target / "bin" / "ehc"
    assert script.exists()
    # As in the image: the wheel's ehc and its dependencies, and not the checkout's editable install
    # (-S skips the .pth files that map ``ehc`` onto the checkout, whose ehc.sim would leak in).
    site_packages = next(p for p in sys.path if p.endswith("site-packages"))
    env = {**os.environ, "PYTHONPATH": f"{target}{os.pathsep}{site_packages}"}
    out = subprocess.run(
        [sys.executable, "-S", str(script), "run", "--help"], capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "--workers" in out.stdout and "EHC_WORKERS" in out.stdout
    out = subprocess.run(
        [sys.executable, "-S", str(script), "demo"], capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path
    )  # fmt: skip
    assert out.returncode == 2 and "source checkout" in out.stderr, out.stderr
    # It is the wheel's ehc that ran, not the editable checkout.
    where = subprocess.run(
        [sys.executable, "-S", "-c", "import ehc; print(ehc.__file__)"], capture_output=True, text=True, env=env, cwd=tmp_path
    )  # fmt: skip
    assert where.stdout.strip().startswith(str(target))


def test_the_parser_rejects_what_docker_would() -> None:
    with pytest.raises(ValueError, match="unknown instruction"):
        parse_dockerfile("FROM python:3.11-slim\nRUNN echo\n")
    with pytest.raises(ValueError, match="before the first FROM"):
        parse_dockerfile("USER 1000\nFROM python:3.11-slim\n")
    with pytest.raises(ValueError, match="continuation"):
        parse_dockerfile("FROM python:3.11-slim\nRUN echo \\\n")
    assert dockerignored("ehc/x.py", ["*", "!ehc/"]) is False
    assert dockerignored("tests/x.py", ["*", "!ehc/"]) is True
