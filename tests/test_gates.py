"""Quality gates that run with the tests: the layering of docs/design.md, and the one list of programs
the tests need (tests/system-tools.txt), which ./run test installs on a fresh machine."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from conftest import ROOT, system_tools

PACKAGE = ROOT / "deltadump"

# docs/design.md, "Layers": a module may import its own package and modules of a lower rank only
# (never one above it, never a sibling of its own rank).
RANK = {
    "errors": 0,
    "clock": 0,
    "naming": 0,
    "fsio": 1,
    "rsync": 2,
    "targets": 2,
    "pg": 3,
    "config": 3,
    "store": 4,
    "notify": 4,
    "schedule": 5,
    "jobs": 6,
    "cli": 7,
}


def unit_of(module: str) -> str:
    """deltadump.store.repository -> store; deltadump.errors -> errors."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def imports_of(path: Path, top: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every deltadump import in a file, at any depth (lazy ones too);
    `top` is the folder that holds the package."""
    rel = path.relative_to(top).with_suffix("")
    pkg = list(rel.parts[:-1])
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - node.level + 1]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            names = [mod] if node.module else [f"{mod}.{a.name}" for a in node.names]
            out.extend((node.lineno, n) for n in names if n.startswith("deltadump"))
        elif isinstance(node, ast.Import):
            out.extend((node.lineno, a.name) for a in node.names if a.name.startswith("deltadump"))
    return out


def layering_violations(package: Path = PACKAGE) -> list[str]:
    top = package.parent
    bad = []
    for path in sorted(package.rglob("*.py")):
        me = unit_of(".".join(path.relative_to(top).with_suffix("").parts))
        if me in ("", "__init__", "__main__"):
            continue
        assert me in RANK, f"{path}: module {me!r} has no layer in tests/test_gates.py RANK (and docs/design.md)"
        for line, mod in imports_of(path, top):
            other = unit_of(mod)
            if other in ("", me, "__init__", "__version__"):
                continue
            assert other in RANK, f"{path}:{line}: imports {mod}, which has no layer"
            if RANK[other] >= RANK[me]:
                bad.append(f"{path.relative_to(top)}:{line}: {me} (layer {RANK[me]}) imports {mod} "
                           f"(layer {RANK[other]})")  # fmt: skip
    return bad


def test_lower_layers_never_import_upper_ones() -> None:
    assert layering_violations() == []


def test_the_layering_check_catches_an_upward_import(tmp_path: Path) -> None:
    # the check itself must be able to fail: a copy of the package with one upward (lazy) import
    import shutil

    copy = tmp_path / "deltadump"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / "rsync" / "format.py"
    target.write_text(target.read_text() + "\n\ndef _bad() -> None:\n    from ..jobs import backup  # noqa\n")
    found = layering_violations(copy)
    assert any("rsync (layer 2) imports deltadump.jobs" in v for v in found), found


def test_docs_design_lists_the_same_layers() -> None:
    text = (ROOT / "docs" / "design.md").read_text()
    for unit in RANK:
        assert re.search(rf"`{unit}(\.py|/)`", text), f"docs/design.md does not describe the layer {unit}"


REQUIRE = re.compile(r"""require_tool\(\s*["']([\w.+-]+)["']""")
LOOP = re.compile(r"""for \w+ in \(([^)]*)\):\s*\n\s*require_tool\(""")


def tools_required_by_tests() -> set[str]:
    found: set[str] = set()
    for path in (ROOT / "tests").glob("*.py"):
        text = path.read_text()
        found.update(REQUIRE.findall(text))
        for group in LOOP.findall(text):
            found.update(re.findall(r"""["']([\w.+-]+)["']""", group))
    return found


def test_every_program_the_tests_need_is_in_the_install_list() -> None:
    required = tools_required_by_tests()
    assert {"age", "rdiff", "zstd", "minisign"} <= required, required  # the scan sees the known ones
    listed = system_tools()
    missing = sorted(required - set(listed))
    assert not missing, (
        f"tests need {missing}, which tests/system-tools.txt does not list (./run test installs from it)"
    )


def test_run_installs_from_the_list() -> None:
    run = (ROOT / "run").read_text()
    assert "tests/system-tools.txt" in run and "apt-get install" in run
    ci = (ROOT / ".ci" / "run").read_text()
    assert "./run test" in ci
