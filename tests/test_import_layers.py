"""The package's folders import only downward (README "How it is built"), read from the code itself.

Every `import lychee_bench.X...` / `from lychee_bench.X... import` in every module (at any depth, lazy imports
inside functions included) is an edge from the module's top-level folder to X. The folders are ordered; a folder
may import only folders before it. A new cycle, or a new upward import, fails here with the file that makes it.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import lychee_bench

PACKAGE = Path(lychee_bench.__file__).parent
# Bottom to top. Folders on one line are peers: they may not import each other.
LAYERS = [
    ["kernels"],
    ["methods"],
    ["harness"],
    ["tasks"],
    ["training", "calibration"],
    ["regress"],
    ["report"],
    ["integrations"],  # bridges to other tools (lm-eval): above everything they wrap, below the command line
    ["tools", "cli"],
]
LEVEL = {name: level for level, names in enumerate(LAYERS) for name in names}


def _folder(path: Path, root: Path = PACKAGE) -> str:
    parts = path.relative_to(root).parts
    return parts[0] if len(parts) > 1 else parts[0].removesuffix(".py")


def import_edges(root: Path = PACKAGE) -> dict[tuple[str, str], set[str]]:
    """(importing folder, imported folder) -> the files under `root` (the package) that make the edge."""
    edges: dict[tuple[str, str], set[str]] = defaultdict(set)
    for path in root.rglob("*.py"):
        source = _folder(path, root)
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            elif isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            else:
                continue
            for module in modules:
                parts = module.split(".")
                if parts[0] == "lychee_bench" and len(parts) > 1 and parts[1] != source:
                    edges[(source, parts[1])].add(str(path.relative_to(root)))
    return edges


def test_every_folder_has_a_layer():
    folders = {_folder(path) for path in PACKAGE.rglob("*.py")} - {"__init__"}
    assert folders - LEVEL.keys() == set(), "add the new folder to LAYERS (and to README's layout)"


def test_folders_import_only_downward():
    upward = [
        f"{source} imports {target} (in {', '.join(sorted(files))})"
        for (source, target), files in sorted(import_edges().items())
        if target in LEVEL and source in LEVEL and LEVEL[target] >= LEVEL[source]
    ]
    assert upward == [], "imports that go up or sideways:\n" + "\n".join(upward)


def test_the_detector_sees_an_upward_import(tmp_path):
    """The edge finder reads lazy imports inside functions too (what the rule is about)."""
    (tmp_path / "kernels").mkdir()
    (tmp_path / "kernels" / "probe.py").write_text("def late():\n    from lychee_bench.harness import engine\n")
    (tmp_path / "harness").mkdir()
    (tmp_path / "harness" / "fine.py").write_text("import lychee_bench.kernels.probe\n")
    assert import_edges(tmp_path) == {
        ("kernels", "harness"): {"kernels/probe.py"},
        ("harness", "kernels"): {"harness/fine.py"},
    }
