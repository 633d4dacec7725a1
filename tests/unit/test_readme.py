"""The README's config table is the config module's own: code and documentation cannot drift."""
from pathlib import Path

from dsi_mpi.io.config import keys_markdown

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_lists_every_config_key_exactly():
    text = README.read_text()
    start = text.index("-->", text.index("<!-- config-keys")) + 4
    end = text.index("<!-- /config-keys -->")
    assert text[start:end].strip() == keys_markdown().strip()


def test_readme_names_both_commands():
    text = README.read_text()
    assert "make run" in text and "make test" in text
