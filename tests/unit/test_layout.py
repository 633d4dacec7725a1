"""The house rules (docs/architecture.md, "Layout"), checked on the source:
- reading results (dsi_mpi.reporting, `report`, `plot`) never loads torch, transformers or mpi4py, so those
  commands work where only numpy, h5py and matplotlib are installed (run with those imports blocked);
- every folder of dsi_mpi imports only the layers below it (every import statement of every file, lazy ones
  included), and no module or package imports itself back through others (no import cycle);
- no function of dsi_mpi is longer than 60 lines, no module longer than 400; `make lint` runs ruff's McCabe
  check at 12, and dsi_mpi passes it;
- analysis/ and tests/ never edit sys.path (the package is installed; pytest and `python -m analysis.NAME`
  find the rest);
- README.md is a user's page of at most 300 lines, and docs/ holds the rest, every page linked from it."""

import ast
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "mpi4py")

PROBE = """
import importlib, importlib.abc, pkgutil, sys
HEAVY = {heavy!r}

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HEAVY:
            raise ImportError(f"blocked heavy import: {{name}}")
        return None

sys.meta_path.insert(0, Blocker())
import dsi_mpi.reporting
for info in pkgutil.iter_modules(dsi_mpi.reporting.__path__):
    importlib.import_module(f"dsi_mpi.reporting.{{info.name}}")
import dsi_mpi.io.results, dsi_mpi.io.merge, dsi_mpi.timemodel.simulator
from dsi_mpi import cli
for argv in (["report", "--help"], ["plot", "--help"], ["merge", "--help"], ["config-keys"]):
    try:
        cli.main(argv)
    except SystemExit:
        pass
{extra}
loaded = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)
assert not loaded, loaded
print("clean")
"""


def probe(extra: str = "") -> subprocess.CompletedProcess:
    code = PROBE.format(heavy=HEAVY, extra=extra)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_reporting_and_the_report_and_plot_commands_never_import_torch_or_mpi4py(tmp_path):
    results = tmp_path / "r.h5"
    write = (
        f"from dsi_mpi.io.config import validate\n"
        f"from dsi_mpi.io.results import ResultsWriter\n"
        f"w = ResultsWriter({str(results)!r}, validate({{}}))\n"
        f"w.close()\n"
        f"assert cli.main(['report', {str(results)!r}]) == 0\n"
        f"cli.main(['plot', 'table', {str(results)!r}, '--out', {str(tmp_path / 't')!r}])\n"
    )
    proc = probe(write)
    assert proc.returncode == 0 and "clean" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-3000:]


def test_the_blocker_does_block():
    """The probe is only worth something if a heavy import under it fails."""
    proc = probe("import dsi_mpi.backends.hf")
    assert proc.returncode != 0 and "blocked heavy import" in proc.stderr


# ---------------------------------------------------------------- each folder's import rule
# folder (or module) of dsi_mpi -> (parts of dsi_mpi it may import, packages outside the standard library).
# The layers, from the bottom: io; mpi and backends; decoding; timemodel; reporting; app; cli.
RULES = {
    "io": (("io",), ("numpy", "h5py")),
    "mpi": (("mpi", "io.config"), ("numpy", "mpi4py")),
    "backends": (("backends", "io"), ("numpy", "torch", "transformers", "packaging")),
    "decoding": (("decoding", "mpi", "backends", "io"), ("numpy", "torch")),
    "timemodel": (
        ("timemodel", "decoding", "backends.base", "backends.emulated", "mpi.protocol", "io"),
        ("numpy",),
    ),
    "reporting": (("reporting", "timemodel", "io"), ("numpy", "h5py", "matplotlib")),
    "app": (
        ("app", "reporting", "timemodel", "decoding", "backends", "mpi", "io"),
        ("numpy", "h5py", "torch", "transformers", "mpi4py"),
    ),
    "cli.py": (("app", "reporting", "timemodel", "io"), ()),
}
PACKAGE = ROOT / "dsi_mpi"


def imports(source: str) -> list[str]:
    """Every module a source imports, at the top or inside a function."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append(node.module)
    return found


def broken(folder: str, source: str) -> list[str]:
    """The imports of `source` (a file of `folder`) that its rule does not allow."""
    inside, outside = RULES[folder]
    bad = []
    for name in imports(source):
        top = name.split(".")[0]
        if top == "dsi_mpi":
            part = name.removeprefix("dsi_mpi").lstrip(".")
            if not any(part == p or part.startswith(p + ".") for p in inside):
                bad.append(name)
        elif top not in sys.stdlib_module_names and top not in outside and top != "__future__":
            bad.append(name)
    return bad


def test_every_folder_keeps_its_import_rule():
    covered = set()
    for folder in RULES:
        files = [PACKAGE / folder] if folder.endswith(".py") else sorted((PACKAGE / folder).glob("*.py"))
        assert files, folder
        for path in files:
            covered.add(path)
            assert not broken(folder, path.read_text()), (path.relative_to(ROOT), broken(folder, path.read_text()))
    top_level = {PACKAGE / "__init__.py", PACKAGE / "__main__.py"}
    assert set(PACKAGE.rglob("*.py")) - covered - top_level == set(), "a module outside every rule"


def test_the_import_rule_check_does_fail():
    assert broken("io", "import torch\nfrom dsi_mpi.mpi import channel\n") == ["torch", "dsi_mpi.mpi"]
    assert broken("mpi", "def f():\n    from dsi_mpi.decoding import coordinator\n") == ["dsi_mpi.decoding"]
    assert broken("reporting", "from dsi_mpi.io.results import read_results\nimport numpy, json\n") == []
    assert broken("decoding", "from dsi_mpi.timemodel import simulator\n") == ["dsi_mpi.timemodel"]


# ---------------------------------------------------------------- no import cycle
def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the modules of the package it imports (at the top or lazily; `from a import b` counts a.b
    where a.b is a module, else a)."""
    modules = {module_name(p): p for p in root.rglob("*.py")}

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(".")
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            graph[module] |= {r for n in names if (r := resolve(n)) and r != module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The same edges between the packages (folders) that hold the modules, the top level included."""
    folder = {
        m: m if (PACKAGE / Path(*m.split(".")[1:]) / "__init__.py").exists() else m.rpartition(".")[0] for m in graph
    }
    out: dict[str, set[str]] = {}
    for module, targets in graph.items():
        out.setdefault(folder[module], set()).update(folder[t] for t in targets if folder[t] != folder[module])
    return out


def test_no_import_cycle_between_modules_or_packages():
    graph = import_graph()
    assert not cycles(graph), cycles(graph)
    packages = package_graph(graph)
    assert not cycles(packages), cycles(packages)


def test_the_cycle_check_does_fail(tmp_path):
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


# ---------------------------------------------------------------- small rooms
MAX_FUNCTION_LINES, MAX_MODULE_LINES, MAX_COMPLEXITY = 60, 400, 12


def long_functions(root: Path = PACKAGE) -> list[tuple[int, str, str]]:
    """(lines, file, function) of every function longer than MAX_FUNCTION_LINES, decorators included."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                if node.end_lineno - first + 1 > MAX_FUNCTION_LINES:
                    found.append((node.end_lineno - first + 1, str(path.relative_to(ROOT)), node.name))
    return found


def test_functions_fit_on_a_screen_and_modules_stay_small():
    assert not long_functions(), long_functions()
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert not {p: n for p, n in sizes.items() if n > MAX_MODULE_LINES}


def test_lint_checks_mccabe_complexity_and_the_package_passes():
    settings = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["ruff"]["lint"]
    assert "C90" in settings["select"] and settings["mccabe"]["max-complexity"] == MAX_COMPLEXITY
    check = [sys.executable, "-m", "ruff", "check", "--select", "C901", "--output-format", "concise", "dsi_mpi"]
    proc = subprocess.run(check, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ---------------------------------------------------------------- no sys.path edits
def path_edits(source: str) -> list[int]:
    """Lines that touch sys.path (or pytest's syspath_prepend): the package is installed, scripts run as modules."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr == "path" and getattr(node.value, "id", "") == "sys":
            lines.append(node.lineno)
        elif isinstance(node, ast.Attribute) and node.attr == "syspath_prepend":
            lines.append(node.lineno)
    return lines


def test_analysis_and_tests_never_edit_sys_path():
    found = {}
    for folder in ("analysis", "tests"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path_edits(path.read_text()):
                found[str(path.relative_to(ROOT))] = path_edits(path.read_text())
    assert not found, found
    assert path_edits("import sys\nsys.path.insert(0, 'x')\n") == [2]


# ---------------------------------------------------------------- a README for users
def test_readme_is_a_users_page_and_docs_hold_the_rest():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    pages = sorted((ROOT / "docs").glob("*.md"))
    assert len(pages) >= 8
    for page in pages:
        assert f"docs/{page.name}" in readme, f"README.md does not link docs/{page.name}"
        first = next(line for line in page.read_text().splitlines()[1:] if line.strip())
        assert not first.startswith("#"), f"docs/{page.name} does not open with what it is for"
