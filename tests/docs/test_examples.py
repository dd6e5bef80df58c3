"""Every example in README.md and docs/*.md runs: Python blocks in one namespace per page, shell
blocks of `vitkit` commands through the command's own entry point, a page's blocks in order in one
temporary folder (its later blocks use what its earlier ones made). Blocks that cannot run on a CPU
in seconds are marked `<!-- not run: why -->` and skip with that reason."""

from __future__ import annotations

import glob
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .blocks import PYTHON, SHELL, Block, blocks, pages

ALL = [b for page in pages() for b in blocks(page) if b.runnable_language]


@dataclass
class Page:
    """What a page's blocks share: a folder, a namespace, and how far they have run."""

    folder: Path
    namespace: dict = field(default_factory=dict)
    done: int = 0  # blocks run so far, in page order
    failed: str | None = None


RUNS: dict[Path, Page] = {}


def run(block: Block, page: Page) -> None:
    """A Python block in the page's namespace; a shell block command by command, each through
    `vitkit.cli.main` as the `vitkit` command runs it (its arguments split and globbed as a shell
    would), in this process, so that no command pays for starting Python and torch again."""
    from vitkit.cli import main

    here = os.getcwd()
    os.chdir(page.folder)
    try:
        if block.language in PYTHON:
            exec(compile(block.code, block.id, "exec"), page.namespace)
            return
        for command in block.commands():
            words = shlex.split(command, comments=True)[1:]
            argv = [match for word in words for match in (sorted(glob.glob(word)) if glob.has_magic(word) else [word])]
            try:
                code = main(argv)
            except SystemExit as e:  # argparse's usage errors
                code = e.code
            assert code == 0, f"{block.id}: `{command}` exited with {code}"
    finally:
        os.chdir(here)


def run_through(block: Block, tmp_path_factory) -> None:
    """Run the page's blocks before this one that have not run yet, then this one."""
    page = RUNS.setdefault(block.page, Page(tmp_path_factory.mktemp(block.page.stem)))
    mine = [b for b in ALL if b.page == block.page and b.not_run is None]
    for earlier in mine[page.done:mine.index(block) + 1]:
        if page.failed:
            pytest.fail(f"an earlier block of the page failed: {page.failed}")
        try:
            run(earlier, page)
        except BaseException:
            page.failed = earlier.id
            raise
        page.done += 1


@pytest.mark.parametrize("block", ALL, ids=[b.id for b in ALL])
def test_example_runs(block, tmp_path_factory, monkeypatch):
    if block.not_run:
        pytest.skip(f"not run: {block.not_run}")
    if block.language in SHELL:
        others = [c for c in block.commands() if not c.startswith("vitkit ")]
        assert not others, (f"{block.id}: only `vitkit` commands run here; mark the block "
                            f"<!-- not run: why --> or drop {others[0]!r}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # an example that would download fails instead
    run_through(block, tmp_path_factory)
