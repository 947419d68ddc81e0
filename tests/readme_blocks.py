"""The README's code examples, for the tests that run them as written."""
import os
import re

README = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "README.md")


def python_block(heading: str) -> str:
    """The first python block of the README section under ``heading`` (e.g. "## Using the library"), up to
    the next heading of level 2 or 3."""
    with open(README, encoding="utf-8") as f:
        text = f.read()
    assert f"\n{heading}\n" in text, f"the README has no section {heading!r}"
    section = re.split(r"\n#{2,3} ", text.split(f"\n{heading}\n", 1)[1], maxsplit=1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, f"the README's section {heading!r} has no python block"
    return blocks[0]
