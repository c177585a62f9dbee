"""Where the benchmark scripts write their figures in ``RESULTS.md``: the block between their own
``<!-- NAME:begin -->`` / ``<!-- NAME:end -->`` marks, and nothing else (a script that replaced its
whole ``##`` section deleted the hand-written subsections in it, which the README quotes). Without
marks yet, the block goes at the end of the file under a heading of its own."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"


def write_block(name: str, text: str, path: Path = RESULTS) -> None:
    """Replace the block of ``name`` in ``path`` with ``text`` (its headings one level down: the block
    sits in a section), atomically."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    old = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    body = re.sub(r"^(#+) ", r"#\1 ", text.strip(), flags=re.M)
    block = f"{begin}\n{body}\n{end}"
    i = old.find(begin)
    j = old.find(end, i + len(begin)) if i >= 0 else -1
    if i >= 0 and j >= 0:
        new = old[:i] + block + old[j + len(end):]
    else:
        new = old.rstrip() + f"\n\n## Latest run of `{name}` (written by the script)\n\n{block}\n"
    sys.path.insert(0, str(ROOT))
    from napari_unet._atomic import atomic_write

    with atomic_write(path, "w", encoding="utf-8") as fh:
        fh.write(new)


def command_line() -> str:
    """The command that ran this script, as typed (for the section's record)."""
    import shlex

    return "python " + " ".join(shlex.quote(a) for a in [f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])
