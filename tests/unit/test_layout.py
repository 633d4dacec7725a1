"""The layout's import rules: reading results (dsi_mpi.reporting, `report`, `plot`) never loads torch,
transformers or mpi4py, so those commands work where only numpy, h5py and matplotlib are installed."""

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
