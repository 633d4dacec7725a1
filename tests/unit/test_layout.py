"""The layout's import rules: reading results (dsi_mpi.reporting, `report`, `plot`) never loads torch,
transformers or mpi4py, so those commands work where only numpy, h5py and matplotlib are installed (checked
by running them with those imports blocked); and every folder of dsi_mpi imports only what README.md's
"Layout" table allows it (checked statically, every import statement of every file)."""

import subprocess
import sys
from pathlib import Path

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
import dsi_mpi.io.results, dsi_mpi.io.merge, dsi_mpi.simulator
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


# ---------------------------------------------------------------- each folder's import rule (README "Layout")
# folder (or module) of dsi_mpi -> (parts of dsi_mpi it may import, packages outside the standard library)
RULES = {
    "mpi": (("mpi", "io.config"), ("numpy", "mpi4py")),
    "backends": (("backends", "io", "log"), ("numpy", "torch", "transformers", "packaging")),
    "decoding": (
        ("decoding", "mpi", "backends", "io", "simulator", "reporting.metrics", "reporting.time_model"),
        ("numpy", "torch"),
    ),
    "io": (("io",), ("numpy", "h5py")),
    "reporting": (("reporting", "io", "simulator"), ("numpy", "h5py", "matplotlib")),
    "simulator.py": (("virtual",), ("numpy",)),
    "virtual.py": (("backends.base", "backends.emulated", "mpi.protocol", "decoding", "io.records"), ("numpy",)),
}


def imports(source: str) -> list[str]:
    """Every module a source imports, at the top or inside a function."""
    import ast

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
    for folder in RULES:
        files = (
            [ROOT / "dsi_mpi" / folder] if folder.endswith(".py") else sorted((ROOT / "dsi_mpi" / folder).glob("*.py"))
        )
        assert files, folder
        for path in files:
            assert not broken(folder, path.read_text()), (path.relative_to(ROOT), broken(folder, path.read_text()))


def test_the_import_rule_check_does_fail():
    assert broken("io", "import torch\nfrom dsi_mpi.mpi import channel\n") == ["torch", "dsi_mpi.mpi"]
    assert broken("mpi", "def f():\n    from dsi_mpi.decoding import coordinator\n") == ["dsi_mpi.decoding"]
    assert broken("reporting", "from dsi_mpi.io.results import read_results\nimport numpy, json\n") == []
