"""Rewrite the method table in README.md from the registry: `python scripts/update_readme.py`."""

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from methods.registry import docs_table  # noqa: E402

README = Path(__file__).resolve().parent.parent / "README.md"


def render(text: str) -> str:
    block = f"<!-- methods:start -->\n{docs_table()}\n<!-- methods:end -->"
    return re.sub(r"<!-- methods:start -->.*?<!-- methods:end -->", lambda _: block, text, flags=re.S)


if __name__ == "__main__":
    README.write_text(render(README.read_text()))
