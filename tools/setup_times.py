"""Record the README's set-up, as CI runs it, into results/setup_times.json.

    bash .ci/run 2>&1 | tee ci.log          # from a fresh clone, on a quiet machine
    python tools/setup_times.py ci.log      # writes results/setup_times.json (make docs then uses it)

Reads what .ci/run printed: pytest's summary line (tests passed, seconds of pytest), each set-up line's
wall time (".ci/run: N s: LINE"), the whole run's time, and pip's resolver ERROR lines (there should be
none). The stamp (commit, machine, date) is fiancee.results's, taken where this script runs: run it in the
clone that was measured.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from fiancee.io import write_json  # noqa: E402
from fiancee.results import stamp  # noqa: E402


def parse(text: str) -> dict:
    summary = re.findall(r"(\d+) passed(?:, (\d+) \w+)*.* in ([\d.]+)s", text)
    if not summary:
        raise SystemExit("no pytest summary line in the log: was it .ci/run's output?")
    passed, _, seconds = summary[-1]
    lines = {cmd.split("#")[0].strip(): int(s) for s, cmd in re.findall(r"^\.ci/run: (\d+) s: (.+)$", text, re.M)}
    total = re.findall(r"the README's set-up passed in (\d+) s", text)
    return {
        "tests": int(passed),
        "pytest_seconds": round(float(seconds), 1),
        "lines": lines,
        "total_seconds": int(total[-1]) if total else None,
        "pip_error_lines": len(re.findall(r"^ERROR", text, re.M)),
    }


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        raise SystemExit(__doc__)
    data = parse(Path(argv[0]).read_text(errors="replace"))
    result = stamp(
        "setup_times",
        "bash .ci/run   (the README's set-up block, from a fresh clone)",
        data,
        note="the README's set-up as CI runs it: the venv, make test, make demo",
        seconds=data["total_seconds"],
    )
    write_json(ROOT / "results" / "setup_times.json", result)
    print(data)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
