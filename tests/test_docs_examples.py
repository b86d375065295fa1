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
