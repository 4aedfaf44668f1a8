"""The docs checker: every config key, CLI flag, module, file, make target and command that README.md, docs/ and
CHANGELOG.md name in code (inline `spans` and fenced blocks) must exist. `python tests/docs_check.py` prints the
problems; tests/test_docs.py runs it in `make test`.

What counts as naming one (in code only, so prose may say "train" freely):
- a config key: `section.key` as a whole span, or `section.key=value` anywhere in code, where section is a config
  section (or `train`, which is not one: the stages' sections are vae_train, dit_train, ar_train; docs write
  `<stage>_train.key` for all three);
- a CLI flag: `--flag` after `textldm SUBCOMMAND` (the argparse parsers) or `python bench/X.py` (its source);
- a module: `textldm.a.b` (importlib, then attributes), `from textldm.a import b`, and a span `training.loop.fit`
  that starts with one of the package's subpackages;
- a file: a path under src/, bench/, docs/, tests/ or .ci/, a span `training/loop.py` (under src/textldm/), and a
  relative markdown link;
- `make TARGET` (the Makefile) and the first word of a shell line (the virtual environment, PATH, or a known tool).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", "CHANGELOG.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
# CHANGELOG entries of released versions describe what existed then: only its first section is checked
EXTENSIONS = {"py", "md", "yaml", "yml", "json", "jsonl", "txt", "sh", "png", "cff", "toml", "log", "safetensors",
              "gz", "zst", "tar", "parquet", "html", "js", "css", "gguf", "bin", "pt"}
KNOWN_TOOLS = {"cd", "export", "for", "do", "done", "if", "then", "fi", "echo", "cat", "ls", "rm", "mkdir", "cp",
               "curl", "git", "make", "python", "python3", "pip", "pip3", "sudo", "apt-get", "nvidia-smi", "wandb",
               "uvicorn", "time", "env", "docker", "bash", "sh", "watch", "tail", "head", "grep", "open", "cmake"}
SHELL_LANGS = {"bash", "sh", "shell", "console"}


@dataclasses.dataclass
class Code:
    doc: str
    line: int
    text: str
    lang: str  # "" for an inline span


def code_in(doc: str) -> list[Code]:
    """The doc's fenced blocks (one Code per line) and its inline spans."""
    text = (ROOT / doc).read_text()
    if doc == "CHANGELOG.md":  # the first version section (Unreleased, or the newest release) only
        lines = text.splitlines()
        heads = [i for i, line in enumerate(lines) if line.startswith("## ")] + [len(lines)]
        section, removed = [], False
        for line in lines[heads[0]:heads[1]]:  # what a "Removed" list names is gone on purpose
            removed = line.startswith("### Removed") or (removed and not line.startswith("### "))
            section.append("" if removed else line)
        text = "\n".join([""] * heads[0] + section)
    found, lang = [], None
    for n, line in enumerate(text.splitlines(), 1):
        fence = re.match(r"\s*```(\w*)", line)
        if fence:
            lang = None if lang is not None else fence.group(1)
            continue
        if lang is not None:
            found.append(Code(doc, n, line, lang or "text"))
            continue
        found += [Code(doc, n, m.group(1), "") for m in re.finditer(r"`([^`]+)`", line)]
    return found


@functools.cache  # the same for every doc
def config_keys() -> tuple[set[str], set[str], set[str]]:
    """(every `section.key`, `section.sub.key` and top-level key, the section names (sub-sections too: dit.blocks),
    TrainConfig's keys)."""
    from textldm.config import Config, TrainConfig

    keys, sections = set(), set()

    def walk(section, prefix: str):
        sections.add(prefix)
        for f in dataclasses.fields(section):
            value = getattr(section, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, f"{prefix}.{f.name}")
            keys.add(f"{prefix}.{f.name}")

    for top in dataclasses.fields(Config):
        value = getattr(Config(), top.name)
        if dataclasses.is_dataclass(value):
            walk(value, top.name)
        else:
            keys.add(top.name)
    return keys, sections, {f.name for f in dataclasses.fields(TrainConfig)}


KEY = re.compile(r"^([a-z<>_]+(?:\.[a-z_]+)?)\.([a-z0-9_*]+)$")
# the docs that tell history (what ran with which keys) may name the DiT keys of 0.4/0.5, which still load
# (config.LEGACY_DIT maps them); every other doc names today's
HISTORY_DOCS = ("CHANGELOG.md", "docs/results.md")


def key_problem(name: str, keys: set[str], sections: set[str], train_keys: set[str],
                history: bool = False) -> str | None:
    """Why `name` (section.key or section.sub.key) is not a config key, or None. Not a key-looking name at all:
    None. In a doc of history (`history`), a 0.4/0.5 DiT key is fine; elsewhere it is named with today's."""
    from textldm.config import LEGACY_DIT

    m = KEY.match(name)
    if not m or m.group(2) in EXTENSIONS:
        return None
    section, key = m.groups()
    if section == "dit" and key in LEGACY_DIT:
        return None if history else f"config key '{name}' is 0.5's: write dit.{'.'.join(LEGACY_DIT[key])} " \
                                     f"(and dit.mode)"
    if section in ("<stage>_train", "train"):
        if section == "train":
            return f"config key '{name}': there is no section 'train'; write <stage>_train.{key} " \
                   f"(vae_train, dit_train, ar_train)"
        return None if key in train_keys else f"config key '{name}': TrainConfig has no '{key}'"
    if section not in sections:
        return None
    if key == "*" or name in keys or isinstance(getattr(_section_types().get(section), key, None), property):
        return None  # a derived value (e.g. dit.window_tokens) is a property of its section
    return f"config key '{name}' does not exist (`textldm config --keys`)"


@functools.cache
def _section_types() -> dict[str, type]:
    from textldm.config import Config

    found = {}

    def walk(section, prefix: str):
        found[prefix] = type(section)
        for f in dataclasses.fields(section):
            if dataclasses.is_dataclass(getattr(section, f.name)):
                walk(getattr(section, f.name), f"{prefix}.{f.name}")

    for f in dataclasses.fields(Config):
        if dataclasses.is_dataclass(getattr(Config(), f.name)):
            walk(getattr(Config(), f.name), f.name)
    return found


def check_keys(code: list[Code]) -> list[str]:
    keys, sections, train_keys = config_keys()
    problems = []
    for c in code:
        names = [c.text.strip()] if not c.lang else []
        names += re.findall(r"(?<![\w./-])([a-z<>_]+\.[a-z0-9_]+(?:\.[a-z0-9_]+)?)=", c.text)
        for name in names:
            name = name.split("=")[0]
            why = key_problem(name, keys, sections, train_keys, c.doc.endswith(HISTORY_DOCS))
            if why:
                problems.append(f"{c.doc}:{c.line}: {why}")
    return problems


@functools.cache
def parsers() -> dict[str, argparse.ArgumentParser]:
    from textldm.cli import _parser

    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def commands(code: list[Code]) -> list[tuple[Code, list[str]]]:
    """Each shell command in code as its words (continuation lines joined), with the Code it starts on."""
    found, pending, start = [], "", None
    for c in code:
        if c.lang and c.lang not in SHELL_LANGS:
            continue
        line = c.text.split(" #")[0].strip() if c.lang else c.text
        if line.startswith("#"):
            continue
        if pending:
            line = pending + " " + line
        else:
            start = c
        if c.lang and line.endswith("\\"):
            pending = line[:-1]
            continue
        pending = ""
        found += [(start, part.split()) for part in re.split(r"&&|\|\||;|\|", line) if part.strip()]
    return found


def check_flags(code: list[Code]) -> list[str]:
    subs, problems = parsers(), []
    for c, words in commands(code):
        for i, w in enumerate(words):
            if w.endswith("textldm") and i + 1 < len(words) and not words[i + 1].startswith("-"):
                name = words[i + 1]
                if name not in subs:
                    problems.append(f"{c.doc}:{c.line}: `textldm {name}`: no such subcommand")
                    break
                if name == "lm-eval":  # its options are the harness's own
                    break
                options = {o for a in subs[name]._actions for o in a.option_strings}
                problems += [f"{c.doc}:{c.line}: `textldm {name} {f}`: no such option"
                             for f in _flags(words[i + 2:]) if f not in options]
                break
            if re.fullmatch(r"bench/\w+\.py", w) and (ROOT / w).exists():
                source = (ROOT / w).read_text()
                problems += [f"{c.doc}:{c.line}: `{w} {f}`: the script has no such option"
                             for f in _flags(words[i + 1:]) if f'"{f}"' not in source]
                break
    return problems


def _flags(words: list[str]) -> list[str]:
    return [w.split("=")[0] for w in words if re.fullmatch(r"--[a-z][\w-]*(=.*)?", w)]


def check_commands(code: list[Code]) -> list[str]:
    """`make TARGET` is a Makefile target; the first word of a shell line is a command that exists."""
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([\w-]+):", makefile, re.M))
    venv_bin = Path(sys.executable).parent
    problems = []
    for c, words in commands(code):
        words = [w for w in words if not re.fullmatch(r"[A-Z_]+=\S*", w)]  # VAR=value prefixes
        if not words:
            continue
        if words[0] == "make" and len(words) > 1 and not words[1].startswith("-") and "=" not in words[1]:
            if words[1] not in targets:
                problems.append(f"{c.doc}:{c.line}: `make {words[1]}`: no such Makefile target")
        first = words[0]
        if c.lang and re.fullmatch(r"[a-z][\w.-]*", first) and first not in KNOWN_TOOLS \
                and not (venv_bin / first).exists() and shutil.which(first) is None:
            problems.append(f"{c.doc}:{c.line}: `{first}`: no such command here (not in the virtual environment "
                            f"or on PATH)")
    return problems


SUBPACKAGES = "training|evaluation|generation|models|diffusion|data|serving"


def check_modules(code: list[Code]) -> list[str]:
    keys, problems = config_keys()[0], []
    for c in code:
        names = re.findall(r"(?<![\w/])(textldm(?:\.\w+)+)", c.text)
        if not c.lang and re.fullmatch(rf"(?:{SUBPACKAGES})(?:\.\w+)+", c.text) and c.text not in keys:
            names.append("textldm." + c.text)  # `training.loop.fit`: a name inside the package
        for module, imported in re.findall(r"from (textldm[\w.]*) import ([\w, ]+)", c.text):
            names += [f"{module}.{n.strip()}" for n in imported.split(",") if n.strip()]
        for name in names:
            if not _resolves(name):
                problems.append(f"{c.doc}:{c.line}: `{name}` does not import")
    return problems


def _resolves(name: str) -> bool:
    """A dotted name is a module, or a module's attribute (chain)."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def output_dirs() -> tuple[str, ...]:
    """Folders .gitignore names (tests/artifacts/, runs/): runs write there, a clean clone has none of it."""
    lines = (ROOT / ".gitignore").read_text().splitlines()
    return tuple(line.strip() for line in lines if line.strip().endswith("/") and not line.startswith("#"))


def check_paths(doc: str, code: list[Code]) -> list[str]:
    problems, outputs = [], output_dirs()
    for c in code:
        for path in re.findall(r"(?<![\w/.])((?:src|bench|docs|tests|\.ci)/[\w./*{},-]*[\w*}])", c.text):
            if path.startswith(outputs) or re.search(r"[*{]", path):
                continue
            if not (ROOT / path).exists():
                problems.append(f"{c.doc}:{c.line}: `{path}` does not exist")
        inside = re.fullmatch(rf"(?:{SUBPACKAGES})/\w+\.py", c.text) if not c.lang else None
        if inside and not (ROOT / "src" / "textldm" / c.text).exists():
            problems.append(f"{c.doc}:{c.line}: `{c.text}` is not a file of src/textldm/")
    text = (ROOT / doc).read_text()
    for n, line in enumerate(text.splitlines(), 1):
        for link in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", line):
            if not re.match(r"\w+:", link) and not ((ROOT / doc).parent / link).exists():
                problems.append(f"{doc}:{n}: link ({link}) does not exist")
    return problems


def problems(docs: list[str] = DOCS) -> list[str]:
    found = []
    for doc in docs:
        code = code_in(doc)
        found += check_keys(code) + check_flags(code) + check_commands(code) + check_modules(code)
        found += check_paths(doc, code)
    return found


if __name__ == "__main__":
    listed = problems(sys.argv[1:] or DOCS)
    print("\n".join(listed) or "docs: every key, flag, module, file, target and command they name exists")
    sys.exit(1 if listed else 0)
