"""The layout's rules, checked: which folder may import which (docs/design.md, "Layout"), and function sizes."""
import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "textldm"
BENCH = SRC.parents[1] / "bench"
BASE = {"config", "errors", "utils", "version"}
ALLOWED = {  # folder -> the textldm modules / folders it may import
    "models": BASE | {"models"},
    "diffusion": {"diffusion"},
    "data": BASE | {"data", "models.teacher"},
    "training": BASE | {"models", "diffusion", "data", "training", "pipeline", "export"},  # never evaluation/
    "evaluation": BASE | {"models", "diffusion", "data", "training", "evaluation", "pipeline", "export"},
    "serving": BASE | {"models", "diffusion", "pipeline", "serving"},
}


def textldm_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("textldm."):
            found.add(node.module.removeprefix("textldm."))
        elif isinstance(node, ast.ImportFrom) and node.module == "textldm":
            found |= {a.name for a in node.names}
    return found


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_imports_point_one_way(folder):
    for path in (SRC / folder).rglob("*.py"):
        for module in textldm_imports(path):
            allowed = ALLOWED[folder]
            assert module in allowed or module.split(".")[0] in allowed, \
                f"{path.relative_to(SRC)} imports textldm.{module}; {folder}/ may import only {sorted(allowed)}"


@pytest.mark.parametrize("root,limit", [(SRC, 60), (BENCH, 80)])
def test_functions_fit_on_a_screen(root, limit):
    long = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    long.append(f"{path.name}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, f"functions over {limit} lines: {long}"
