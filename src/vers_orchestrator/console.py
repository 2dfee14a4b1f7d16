"""What the CLI shows while it waits: a progress bar on a terminal, plain lines elsewhere."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from tqdm import tqdm

from vers_orchestrator.drivers.qemu.images import Progress

# The image builder announces its stages as "[2/4] what it does" (drivers/qemu/images.py).
_STAGE = re.compile(r"\[(\d+)/(\d+)\]\s*(.*)")


@contextmanager
def stage_bar(stream: TextIO = sys.stderr) -> Iterator[Progress]:
    """A `Progress` callback that moves a bar by the builder's `[k/n]` stage lines and shows
    its other lines as the bar's text. Where `stream` is not a terminal (a log file, CI)
    every line is written as it comes, as before."""
    if not stream.isatty():
        yield lambda line: print(line, file=stream, flush=True)
        return
    with tqdm(total=1, file=stream, bar_format="{l_bar}{bar}| {elapsed}", leave=True) as bar:

        def show(line: str) -> None:
            stage = _STAGE.match(line.strip())
            if stage is not None:
                done, total, what = int(stage[1]) - 1, int(stage[2]), stage[3]
                bar.total = total
                bar.n = done
                bar.set_description_str(what[:60])
            elif line.startswith(("default image ready", "image ready")):
                bar.n = bar.total or 1
                bar.set_description_str("default image ready")
            else:
                bar.set_postfix_str(line.strip()[:50], refresh=False)
            bar.refresh()

        yield show
