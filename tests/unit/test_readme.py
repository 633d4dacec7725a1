"""The README's config table is the config module's own, and docs/results.md names everything a results file
holds: code and documentation cannot drift."""

from pathlib import Path

from dsi_mpi.io.config import keys_markdown

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
RESULTS = ROOT / "docs" / "results.md"


def test_readme_lists_every_config_key_exactly():
    text = README.read_text()
    start = text.index("-->", text.index("<!-- config-keys")) + 4
    end = text.index("<!-- /config-keys -->")
    assert text[start:end].strip() == keys_markdown().strip()


def test_readme_names_both_commands():
    text = README.read_text()
    assert "make run" in text and "make test" in text


def _results_section() -> str:
    return RESULTS.read_text()


def test_docs_name_everything_written_to_the_results_file(tmp_path):
    """Every attribute, dataset and table column a results file holds is named (in backticks) in
    docs/results.md, and so are the event kinds and task outcomes."""
    import h5py

    from dsi_mpi.io import records
    from dsi_mpi.io.config import validate
    from dsi_mpi.io.prompts import Prompt
    from dsi_mpi.io.results import METADATA, ResultsWriter

    writer = ResultsWriter(str(tmp_path / "r.h5"), validate({}))
    writer.add_metadata({key: "x" for key in METADATA})
    rec = records.RunRecord("dsi", 0, "p0", tokens=[1], commit_times=[0.1])
    writer.write_record(Prompt(0, "p0", "text"), [1, 2], rec)
    where = {"instance": 0, "instance_ranks": [1, 2], "instance_hosts": ["h", "h"], "job_start": 1.0}
    writer.mark_complete(Prompt(0, "p0", "text"), where | {"started_s": 0.0, "finished_s": 0.5})
    writer.close()
    names = {"merged_from"}  # written by merge
    with h5py.File(tmp_path / "r.h5") as f:
        names |= set(f.attrs)

        def visit(name, obj):
            names.update(obj.attrs)
            names.add(name.rsplit("/", 1)[-1])
            if isinstance(obj, h5py.Dataset) and obj.dtype.names:
                names.update(obj.dtype.names)

        f.visititems(visit)
    names -= {"prompts", "00000", "dsi"}  # group names the section describes as /prompts/<index>/<algorithm>
    section = _results_section()
    missing = sorted(n for n in names if f"`{n}`" not in section)
    assert not missing, f"docs/results.md does not name {missing}"
    labels = [e.label for e in records.Event] + [o.name.lower() for o in records.Outcome]
    assert all(f"{int(e)} {e.label}" in section for e in records.Event), "event kinds"
    assert all(f"{int(o)} {o.name.lower()}" in section for o in records.Outcome), labels
