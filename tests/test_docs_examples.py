"""The examples in docstrings and the README run and print what they say."""

import doctest
import re
from pathlib import Path

import gaugemath


def test_package_docstring_examples():
    result = doctest.testmod(gaugemath, verbose=False)
    assert result.attempted >= 3 and result.failed == 0


def test_readme_python_example_runs():
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    code = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    exec(compile(code, "README.md", "exec"), {})


def test_docs_python_examples_run():
    """Every ```python block in docs/ runs (the torch backend page needs torch)."""
    import pytest

    pytest.importorskip("torch")
    docs = Path(__file__).parents[1] / "docs"
    blocks = 0
    for page in sorted(docs.rglob("*.md")):
        for code in re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), re.S):
            if "def _relu_rescale__balance__frame" in code:  # a listing of generated code, not an example
                continue
            exec(compile(code, str(page), "exec"), {})
            blocks += 1
    assert blocks >= 3
