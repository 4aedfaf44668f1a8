"""The layout's rules, checked: the layers import one way (docs/design.md, "Layers"), no import cycle between
modules, no two packages of a layer importing each other, no branch on a model family's name outside the family
registry, function sizes, and the generation mode chosen in one place."""
import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "textldm"
BENCH = SRC.parents[1] / "bench"
# the layers, lowest first: a module may import its own package and the layers below its own, never a layer above nor
# another package of its layer (training and sampling, evaluation and serving never see each other)
LAYERS = [
    {"errors", "version"},
    {"utils"},
    {"diffusion"},  # the flow-matching process: knows no network, no config
    {"config"},
    {"models", "runtime"},  # networks (no diffusion), and where/how they run (devices, precision, processes)
    {"data"},
    {"export"},  # the model-folder format
    {"training", "sampling"},  # how a family's objectives train; how a trained DiT samples
    {"families"},  # each family's pipeline, training stages and commands, chosen by name from one registry
    {"evaluation", "serving"},
    {"demo"},
    {"cli"},
    {"__init__", "__main__"},
]
LAYER = {unit: i for i, units in enumerate(LAYERS) for unit in units}
# model families whose folders sit side by side under families/: none imports another
# a test of dit.mode - the switch between generation modes - is allowed only where the mode is defined: the config
# (its sections and rules) and the DiT (which parts the network has); everywhere else the mode's registry entry decides
MODE_FILES = {"config.py", "models/dit.py"}
MODE_SWITCH = re.compile(r"\bmode\s*(==|!=|\bin\b|\bnot in\b)")
FAMILY_PACKAGES = sorted(p.name for p in (SRC / "families").iterdir() if (p / "__init__.py").exists())


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    path = SRC.parent / Path(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def textldm_imports(path: Path) -> set[str]:
    """The textldm modules a file imports, deferred imports (inside functions) included: `from textldm.a import b`
    names textldm.a.b where b is a module, else textldm.a."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "textldm":
            found |= {f"{node.module}.{a.name}" if is_module(f"{node.module}.{a.name}") else node.module
                      for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "textldm"}
    return found


def import_graph() -> dict[str, set[str]]:
    return {module_name(path): textldm_imports(path) for path in SRC.rglob("*.py")}


def unit(module: str) -> str:
    """The top-level package (or module) of textldm a module belongs to: textldm.a.b -> a; textldm -> __init__."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for module, imported in graph.items():
        for other in imported:
            a, b = unit(module), unit(other)
            if a != b and LAYER[b] >= LAYER[a]:
                where = "above" if LAYER[b] > LAYER[a] else "beside"
                found.append(f"{module} imports {other}: {b} is {where} {a} (layer {LAYER[b]} vs {LAYER[a]})")
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_every_package_has_a_layer():
    units = {p.name.removesuffix(".py") for p in SRC.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()}
    assert units == set(LAYER), f"undeclared: {sorted(units - set(LAYER))}; gone: {sorted(set(LAYER) - units)}"


def test_layers_import_downward_only():
    found = layer_violations(import_graph())
    assert not found, "imports against the layer order (docs/design.md, \"Layers\"):\n" + "\n".join(sorted(found))


def test_no_import_cycle_between_modules():
    found = cycles(import_graph())
    assert not found, f"modules importing each other, directly or around a loop: {found}"


def test_no_family_imports_another():
    found = []
    for module, imported in import_graph().items():
        parts = module.split(".")
        if len(parts) > 2 and parts[1] == "families" and parts[2] in FAMILY_PACKAGES:
            found += [f"{module} imports {m}" for m in imported
                      if m.split(".")[1:2] == ["families"] and len(m.split(".")) > 2
                      and m.split(".")[2] in FAMILY_PACKAGES and m.split(".")[2] != parts[2]]
    assert not found, found


def test_the_checks_see_what_they_forbid():
    assert layer_violations({"textldm.training.loop": {"textldm.sampling.run"}})  # beside
    assert layer_violations({"textldm.models.dit": {"textldm.training.objectives.dit"}})  # above
    assert not layer_violations({"textldm.families.textldm.train": {"textldm.training.loop", "textldm.models.dit"}})
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert not cycles({"a": {"b"}, "b": {"c"}, "c": set()})


def family_names() -> set[str]:
    """The registry's names, read from the source (each family's Family(...) first argument)."""
    names = set()
    for path in (SRC / "families").rglob("__init__.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Family" and node.args:
                names.add(node.args[0].value)
    return names


def family_branches(path: Path, names: set[str]) -> list[int]:
    """Lines comparing with a model family's name (==, !=, in, not in a literal of them)."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Compare):
            for side in [node.left, *node.comparators]:
                values = side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side]
                if any(isinstance(v, ast.Constant) and v.value in names for v in values):
                    lines.append(node.lineno)
    return lines


SAME_WORD = {"data/corpus.py": "a data source's kind 'hf' (an HF data set by name), not a model family"}


def test_no_branch_on_a_model_family_outside_the_registry():
    """A kind of model is chosen once, by name, from families.FAMILIES: nothing else compares with a family's name
    (a new family is a folder under families/ and one registry line, not a branch in every file)."""
    names = family_names()
    assert {"textldm", "ar", "hf"} <= names
    found = [f"{path.relative_to(SRC)}:{line}" for path in SRC.rglob("*.py") if "families" not in path.parts
             for line in family_branches(path, names) if str(path.relative_to(SRC)) not in SAME_WORD]
    assert not found, found
    sample = SRC.parent.parent / "tests" / "fixtures" / "family_branch_sample.py"
    assert family_branches(sample, names) == [2, 4]


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
    """No `mode == ...` (or !=, in) outside the config and the DiT: a new mode is a new entry of the modes registry
    (families/textldm/modes.py), not a branch in every file that differs between modes (a config section the mode
    reads is asked with `dit.reads`)."""
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
    for line in ("mode = mode_of(cfg.dit)", "d.reads('blocks')", "self.mode.generate(...)", "model == x"):
        assert not MODE_SWITCH.search(line), line


def test_every_mutant_applies_to_this_tree():
    """`make mutation`'s changes each find their code exactly once in the file they name: a mutant whose code moved
    would report "n/a" and test nothing (tests/mutation.py)."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    import mutation

    stale = [f"{m.id} ({m.file})" for m in mutation.MUTANTS
             if not (SRC / m.file).exists() or (SRC / m.file).read_text().count(m.old) != 1]
    assert not stale, f"mutants whose code is not found once in their file: {stale}"
    assert len({m.id for m in mutation.MUTANTS}) == len(mutation.MUTANTS)


def _files_on_the_stack(function) -> list[str]:
    """The source files (under src/textldm, in call order, repeats merged) from `demo.demo` down to `function`'s
    own file: what a reader opens following the calls."""
    import inspect
    import traceback

    files = [str(Path(f.filename).resolve().relative_to(SRC)) for f in traceback.extract_stack()
             if Path(f.filename).resolve().is_relative_to(SRC)]
    files.append(str(Path(inspect.getsourcefile(function)).resolve().relative_to(SRC)))
    files = files[files.index("demo.py"):]
    return [f for i, f in enumerate(files) if i == 0 or f != files[i - 1]]


@pytest.mark.parametrize("full_window", [True, False], ids=["window", "blocks"])
def test_from_the_demo_to_each_loss_in_four_files(full_window, tiny_model_dir, tiny_corpus, tmp_path, monkeypatch):
    """Issue 46: the calls from `textldm demo` (demo.py, after cli.py parses the command) to each loss cross at most
    4 files - the demo, the family's stages, the loop, the objective - and the DiT's mode adds its `errors`."""
    from conftest import tiny_overrides
    from textldm import demo, load_config
    from textldm.families.textldm.modes import mode_of
    from textldm.training.objectives import VAEObjective
    from textldm.training.objectives.dit import DiTObjective

    monkeypatch.setenv("TEXTLDM_CACHE", str(tmp_path / "cache"))
    cfg = load_config("demo", tiny_overrides(tiny_model_dir, tiny_corpus, str(tmp_path), full_window) + [
        "vae_train.steps=2", "dit_train.steps=2", "eval.num_prompts=1", "eval.val_batches=1"])
    mode_objective = mode_of(cfg.dit).objective
    seen = {}

    def recording(name, original):
        def wrapper(self, *args, **kwargs):
            seen.setdefault(name, _files_on_the_stack(original))
            return original(self, *args, **kwargs)
        return wrapper

    for name, cls, method in [("vae", VAEObjective, "forward"), ("dit", DiTObjective, "forward"),
                              ("errors", mode_objective, "errors")]:
        monkeypatch.setattr(cls, method, recording(name, getattr(cls, method)))
    demo.demo(cfg, progress=False)
    stages, loop = "families/textldm/train.py", "training/loop.py"
    assert seen["vae"] == ["demo.py", stages, loop, "training/objectives/vae.py"]
    assert seen["dit"] == ["demo.py", stages, loop, "training/objectives/dit.py"]
    mode_file = "training/objectives/" + ("window.py" if full_window else "blocks.py")
    assert seen["errors"] == ["demo.py", stages, loop, "training/objectives/dit.py", mode_file]
