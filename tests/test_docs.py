"""Docs that are generated from code must be current."""
import pathlib
import runpy

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_schema_docs_are_current():
    render = runpy.run_path(str(ROOT / "scripts" / "gen_schema_docs.py"))["render"]
    assert (ROOT / "docs" / "schemas.md").read_text() == render(), \
        "run: python scripts/gen_schema_docs.py > docs/schemas.md"
