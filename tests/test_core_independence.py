"""The core stands on its own: no import cycle inside ``mmcore/``, and no name of a built-in plugin's task, head,
dataset, backbone or view in its code (only in docstrings and comments)."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

from mmcore.plugins import load_plugins

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "mmcore"

# Names that are also ordinary words (``token_ids``, ``phrase_descriptions``, ``pairs``): only a string literal
# that is exactly the name counts for them, not an identifier that contains it.
COMMON_WORDS = frozenset({"token", "phrase", "sentence", "pairs"})

# Core modules that still name built-in plugins' views, and why; each must still do so (so the list only
# shrinks) and no other module may start.
KNOWN = {
    "mmcore/data/annotations.py": "readers and writers of the public datasets' annotation formats (VQA, GQA, "
                                  "NLVR2, caption JSON) that three dataset plugins and `mmcore data prepare` share",
    "mmcore/data/userdata.py": "`mmcore data prepare`'s annotation kinds, which are the pairs dataset's views",
    "mmcore/data/prepare.py": "`mmcore data prepare`'s question kinds, which are the pairs dataset's views",
}


def core_files() -> list[Path]:
    return sorted(CORE.rglob("*.py"))


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


# ---- import cycles ---------------------------------------------------------------------------------------------


def imported_modules(path: Path, modules: set[str], root: Path = ROOT) -> set[str]:
    """The ``mmcore`` modules that the module at ``path`` imports anywhere: module level, in a function, or for
    annotations only (``if TYPE_CHECKING:``), as two modules that need each other's types are coupled too."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    targets: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            # ``from mmcore.data import views`` imports the submodule; ``from mmcore.api import Task`` the module.
            targets += [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
    out = set()
    for target in targets:
        while target and target not in modules:  # ``import mmcore.data.views`` -> the module itself
            target = target.rpartition(".")[0]
        if target and target != name:
            out.add(target)
    return out


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in core_files()}
    return {name: imported_modules(path, set(modules)) for name, path in modules.items()}


def test_the_cycle_finder_sees_function_level_and_relative_imports(tmp_path):
    package = tmp_path / "mmcore"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from mmcore.sub import b\n")
    (package / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from mmcore import a\n")
    (package / "sub" / "b.py").write_text("from .. import a\n")
    files = {module_name(p, tmp_path): p for p in package.rglob("*.py")}
    graph = {name: imported_modules(path, set(files), tmp_path) for name, path in files.items()}
    assert graph["mmcore.a"] == {"mmcore.sub.b"} and graph["mmcore.sub.b"] == {"mmcore.a"}
    assert graph["mmcore.c"] == {"mmcore.a"}  # an import for annotations only counts too
    assert find_cycles(graph) == [["mmcore.a", "mmcore.sub.b"]]


def test_no_import_cycle_inside_mmcore():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles in mmcore/: " + "; ".join(" <-> ".join(c) for c in cycles)


# ---- names of built-in plugins ---------------------------------------------------------------------------------


def builtin_names() -> set[str]:
    """Every task, head, dataset and backbone a built-in plugin (``plugins/mmcore_*``) registers, and every view of
    its datasets: what ``mmcore list-tasks``, ``list-heads``, ... show of the built-ins."""
    registry = load_plugins().registry
    names: set[str] = set()
    for kind in ("task", "head", "dataset", "backbone"):
        for entry in registry.entries(kind):
            module = getattr(entry.factory, "__module__", "")
            if module.startswith("mmcore_"):
                names.add(entry.name)
                names.update(entry.provides)  # a dataset's views
    return names


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def _snake(identifier: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", identifier).lower()


def plugin_names_in(source: str, names: set[str]) -> list[tuple[int, str, str]]:
    """(line, name, code) of each use of a name: a string literal (not a docstring) that is exactly the name, or
    an identifier (class, function, variable, attribute, argument) with the name as a part (``VQAView``,
    ``retrieval_head``); comments are not code."""
    tree = ast.parse(source)
    docs = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            if node.value in names:
                found.append((node.lineno, node.value, repr(node.value)))
    distinctive = sorted(names - COMMON_WORDS)
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type != tokenize.NAME:
            continue
        snake = _snake(token.string)
        for name in distinctive:
            if re.search(rf"(^|_){re.escape(name)}(_|$)", snake):
                found.append((token.start[0], name, token.string))
    return sorted(set(found))


def test_the_name_finder_sees_literals_and_identifiers_but_not_docstrings_or_comments():
    source = ('"""About vqa."""\n# the vqa head\nclass VQAView:\n    """For retrieval."""\n'
              'x = {"token": "T"}\ncaption_head = retrieval_head\nprint("vqa accuracy")\n')
    found = {(line, name) for line, name, _ in plugin_names_in(source, {"vqa", "retrieval", "token"})}
    assert found == {(3, "vqa"), (5, "token"), (6, "retrieval")}


def test_the_list_of_builtin_names_comes_from_the_plugins():
    names = builtin_names()
    assert {"vqa", "gqa", "nlvr2", "retrieval", "itm_hs", "itm", "titp", "tits", "ifrs", "mlm", "mrfr", "moc",
            "synthworld", "lxmert_s", "token", "phrase", "sentence"} <= names


@pytest.fixture(scope="module")
def names() -> set[str]:
    return builtin_names()


@pytest.mark.parametrize("path", core_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_core_names_no_builtin_plugin(path, names):
    relative = str(path.relative_to(ROOT))
    found = plugin_names_in(path.read_text(encoding="utf-8"), names)
    if relative in KNOWN:
        assert found, f"{relative} no longer names a built-in plugin: remove it from KNOWN"
        return
    assert not found, f"{relative} names built-in plugins: " + ", ".join(f"line {l}: {c} ({n})" for l, n, c in found)
