"""The layout's rules, checked: which folder may import which (docs/design.md, "Layout"), function sizes, and the
generation mode chosen in one place."""
import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "textldm"
BENCH = SRC.parents[1] / "bench"
BASE = {"config", "errors", "utils", "version"}
ALLOWED = {  # folder -> the textldm modules / folders it may import
    "models": BASE | {"models"},
    "diffusion": {"diffusion"},
    "runtime": BASE | {"runtime"},
    "data": BASE | {"data", "models.lm", "runtime"},
    # the generation modes: below training (which trains their objectives) and the pipeline (which samples with
    # them)
    "generation": BASE | {"models", "diffusion", "data", "export", "generation", "runtime"},
    "training": BASE | {"models", "diffusion", "data", "generation", "training", "pipeline", "export", "runtime"},
    "evaluation": BASE | {"models", "diffusion", "data", "generation", "training", "evaluation", "pipeline", "export",
                          "runtime"},
    "serving": BASE | {"models", "diffusion", "generation", "pipeline", "serving", "runtime"},
}
# a test of dit.mode - the switch between generation modes - is allowed only where the mode is defined: the config
# (its sections and rules) and the DiT (which parts the network has); everywhere else the mode's class decides
MODE_FILES = {"config.py", "models/dit.py"}
MODE_SWITCH = re.compile(r"\bmode\s*(==|!=|\bin\b|\bnot in\b)")


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


def test_the_generation_mode_is_chosen_in_the_mode_module_alone():
    """No `mode == ...` (or !=, in) outside the config and the DiT: a new mode is a new class of `generation`, not a
    branch in every file that differs between modes (a config section the mode reads is asked with `dit.reads`)."""
    found = []
    for path in SRC.rglob("*.py"):
        if str(path.relative_to(SRC)) in MODE_FILES:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if MODE_SWITCH.search(code) and not code.strip().startswith(("\"", "'")):
                found.append(f"{path.relative_to(SRC)}:{number}: {line.strip()}")
    assert not found, "mode switches outside the mode module:\n" + "\n".join(found)


def test_the_switch_check_sees_the_forms_it_forbids():
    for line in ("if cfg.dit.mode == 'blocks':", "x = a if d.mode != 'window' else b", "if d.mode in ('blocks',):"):
        assert MODE_SWITCH.search(line), line
    for line in ("mode = mode_class(cfg.dit)", "d.reads('blocks')", "self.mode.generate(...)", "model == x"):
        assert not MODE_SWITCH.search(line), line
