"""The fenced code blocks of a Markdown page, and whether each runs.

A block that cannot run on a CPU in seconds (a GPU, a cluster, a download, a placeholder such as
RUN or DATA, a long run) is marked by an HTML comment on the line before its fence:

    <!-- not run: needs a GPU -->
    ```sh
    benchmarks/gpu.sh
    ```

Python blocks run; shell blocks run when every command in them is `vitkit ...`; a shell block with
other commands must be marked. Blocks of other languages (text, output) are not code to run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).parents[2]
NOT_RUN = re.compile(r"^<!--\s*not run:\s*(.+?)\s*-->$")
FENCE = re.compile(r"^```(\S*)\s*$")
PYTHON, SHELL = ("python", "py"), ("sh", "bash", "shell", "console")


@dataclass
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    language: str
    code: str
    not_run: str | None  # the reason, where the block is marked

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}-{self.language}"

    @property
    def runnable_language(self) -> bool:
        return self.language in PYTHON + SHELL

    def commands(self) -> list[str]:
        """A shell block's commands: its lines without comments, continuations joined."""
        joined = re.sub(r"\\\n\s*", " ", self.code)
        return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def blocks(page: Path) -> list[Block]:
    found, lines = [], page.read_text().splitlines()
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        start, language = i, fence[1].lower()
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        before = next((lines[j].strip() for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        marked = NOT_RUN.match(before)
        found.append(Block(page, start + 1, language, "\n".join(lines[start + 1:end]) + "\n",
                           marked[1] if marked else None))
        i = end + 1
    return found


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
