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
    "data": BASE | {"data", "models.teacher"},
    # the generation modes: below training (which trains their objectives) and the pipeline (which samples with
    # them); training.perf (FLOPs arithmetic over torch modules), .precision (autocast rules) and .teacher_cache
    # (a frozen LM's states on disk, which the context-LM mode trains from) are leaves
    "generation": BASE | {"models", "diffusion", "data", "export", "generation", "training.perf",
                          "training.precision", "training.teacher_cache"},
    "training": BASE | {"models", "diffusion", "data", "generation", "training", "pipeline", "export"},  # never eval
    "evaluation": BASE | {"models", "diffusion", "data", "generation", "training", "evaluation", "pipeline", "export"},
    "serving": BASE | {"models", "diffusion", "generation", "pipeline", "serving"},
}
# a test of the block size - the switch between generation modes - is allowed only in the modes themselves
MODE_FILES = {"generation/window.py", "generation/blocks.py", "generation/lm_blocks.py"}
NAME = r"(?<!\w)block_size"  # not encoder_block_size: the VAE's own attention setting
BLOCK_SWITCH = re.compile(rf"{NAME}\s*(==|!=|<=|>=|<|>)|(\bif|\bnot|\band|\bor|\belse)\s+[\w.]*{NAME}\b(?!\s*[=(])"
                          rf"|{NAME}\s+(if|and|or)\b")


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
    """No `if block_size` (or comparison, or `block_size and ...`) outside generation/window.py and blocks.py: a new
    mode is a new class there, not a branch in every file that differs between modes."""
    found = []
    for path in SRC.rglob("*.py"):
        if str(path.relative_to(SRC)) in MODE_FILES:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if "block_size" in code and not code.strip().startswith(("\"", "'")) and BLOCK_SWITCH.search(code):
                found.append(f"{path.relative_to(SRC)}:{number}: {line.strip()}")
    assert not found, "block-size switches outside the mode module:\n" + "\n".join(found)


def test_the_switch_check_sees_the_forms_it_forbids():
    for line in ("if cfg.dit.block_size:", "x = a if d.block_size else b", "reads = d.block_size == 0 or y",
                 "if not self.config.dit.block_size or state is None:", "pooled and cfg.block_size == 0"):
        assert BLOCK_SWITCH.search(line), line
    for line in ("B = cfg.block_size", "block_index(n, self.cfg.block_size, device)", "block_size: int = 0",
                 "length // dit.cfg.block_size", '("block_size", "[0, inf)")', "if cfg.encoder_block_size == 0:"):
        assert not BLOCK_SWITCH.search(line), line
