"""Progress read from a provider's job logs: model servers print tqdm bars
("42%|████      | 21/50 [00:03<00:04, 7.1it/s]", redrawn with carriage returns), which
Replicate's and fal's status answers carry as log text. The newest bar wins; its
done/total is the fraction (as replicate-python reads it)."""

from __future__ import annotations

import re
from collections.abc import Iterable

TQDM_BAR = re.compile(r"^\s*(\d+)%\s*\|.*?\|\s*(\d+)/(\d+)")


def fraction_from_log_lines(lines: Iterable[str]) -> float | None:
    """The last tqdm bar's done/total among `lines` (each may hold several redraws)."""
    for text in reversed(list(lines)):
        for line in reversed(text.splitlines()):
            match = TQDM_BAR.match(line)
            if match is None:
                continue
            done, total = int(match.group(2)), int(match.group(3))
            if total > 0:
                return min(1.0, done / total)
            return min(1.0, int(match.group(1)) / 100.0)
    return None
