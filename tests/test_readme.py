"""The README's Python example runs as written (with fewer epochs)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_api_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has a Python example"
    code = blocks[0].replace("epochs=30", "epochs=2")
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out.split()
    assert len(printed) == 4 and 0 <= float(printed[0]) <= 100


def test_readme_test_command_is_what_ci_runs():
    ci = (README.parent / ".ci" / "run").read_text()
    assert "python -m pytest -q" in README.read_text() and "python -m pytest -q" in ci


def test_the_package_table_names_every_module_and_no_other():
    """README "What is in the package": every file of the package is named, and every name is a file."""
    text = README.read_text()
    section = text[text.index("## What is in the package"):]
    section = section[:section.index("\n## ", 3)]
    named = set(re.findall(r"`([\w/]+\.py|[\w]+/)`", section))
    pkg = README.parent / "src" / "longtail"
    files = {p.relative_to(pkg).as_posix() for p in pkg.rglob("*.py") if p.name not in ("__init__.py", "__main__.py")}
    top = {f for f in files if "/" not in f} | {f.split("/")[0] + "/" for f in files if "/" in f}
    inner = {f.split("/")[-1] for f in files if "/" in f and f.split("/")[0] in ("data", "models")}
    assert top - named == set(), "modules the table does not name"
    assert inner - named == set(), "data/ and models/ files the table does not name"
    basenames = {f.split("/")[-1] for f in files} | top
    missing = {n for n in named if n not in basenames and not (pkg / n).exists() and not (README.parent / n).exists()}
    assert missing == set(), "names in the table that are not files"
