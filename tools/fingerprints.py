"""Fingerprints of everything the library computes, from one seeded script: the check a restructuring passes.

    python tools/fingerprints.py OUT --json before.json        (on the old code)
    python tools/fingerprints.py OUT2 --json after.json        (on the new code)
    python tools/fingerprints.py --compare before.json after.json

It runs the commands a user runs (``python -m fiancee ...``, so it does not depend on internal names): both
demos on small sets, an exit run per task, a bank, a predictor, an evaluation and an ONNX export. Every
tensor file is fingerprinted by its tensors (names, dtypes, shapes, bytes), every JSON file by its content
without what a second run legitimately changes (times, dates, the machine, the commit, the output folder),
every other file by its bytes. One thread and a private cache, so the figures depend only on the code.
About 10 minutes on 2 cores.

Renamed keys are not a difference: before hashing, every JSON object is read with today's names
(:func:`_renamed`: old folder kinds and header keys, and the fields issue 30 renamed), on both sides, so a run
of code from before a rename and a run from after compare by their numbers. Fingerprints written by a version
of this script without a rename must be recomputed from their folder (``--refingerprint OLD_OUT``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

# Keys whose values change between two runs of the same code (timings, provenance, where it ran).
VOLATILE = re.compile(
    r"(^|_)(time|times|date|seconds|elapsed|ms|commit|machine|cpu|load|host|duration|"
    r"started|finished|created|wall|threads|python|torch|version|platform|sec|save_id)(_|$)"
)

# Old name -> new name, applied to both sides before hashing (one vocabulary, one folder header: issue 30, item 5).
# Folder kinds (the value of "kind"):
RENAMED_KINDS = {
    "fiancee_pipeline": "fiancee-pipeline",
    "quality_predictor": "fiancee-predictor",
    "exits": "fiancee-exits-run",
    "fiancee_onnx": "fiancee-onnx",
    "fashion_backbone": "fiancee-fashion-backbone",
}
# Keys renamed wherever they appear:
RENAMED_KEYS = {"format_version": "format", "guided_exits": "guided_attach_after"}
# Kinds whose old folders had no version at all (now "format": 1):
UNVERSIONED = {"fiancee-exits-run": 1}
# And two renamed by what they hold: "exits" holding stage numbers (a list of integers: the stages branches attach
# after) is "attach_after" ("exits" holding per-exit records keeps its name); a static router's "exit" is "route".

STEPS = [
    (
        "demo_faces",
        [
            "demo",
            "--task",
            "faces",
            "--n",
            "96",
            "--n-predictor",
            "96",
            "--n-calibrate",
            "96",
            "--no-progress",
            "--out",
            "{out}/demo_faces",
        ],
    ),
    (
        "demo_fashion",
        [
            "demo",
            "--task",
            "fashion",
            "--n",
            "64",
            "--n-predictor",
            "64",
            "--n-calibrate",
            "64",
            "--no-progress",
            "--out",
            "{out}/demo_fashion",
        ],
    ),
    (
        "exits_faces",
        [
            "train-exits",
            "--task",
            "faces",
            "--preset",
            "smoke",
            "--steps",
            "3",
            "--batch-size",
            "2",
            "--seed",
            "3",
            "--device",
            "cpu",
            "--no-progress",
            "--out",
            "{out}/exits_faces",
        ],
    ),
    (
        "bank_fashion",
        [
            "build-bank",
            "--task",
            "fashion",
            "--n",
            "24",
            "--seed",
            "1",
            "--device",
            "cpu",
            "--no-progress",
            "--out",
            "{out}/bank_fashion",
        ],
    ),
    (
        "exits_fashion",
        [
            "train-exits",
            "--task",
            "fashion",
            "--preset",
            "smoke",
            "--steps",
            "2",
            "--batch-size",
            "2",
            "--seed",
            "5",
            "--device",
            "cpu",
            "--bank",
            "{out}/bank_fashion",
            "--no-progress",
            "--out",
            "{out}/exits_fashion",
        ],
    ),
    (
        "predictor_faces",
        [
            "train-predictor",
            "{out}/exits_faces",
            "--out",
            "{out}/predictor_faces",
            "--n",
            "32",
            "--epochs",
            "2",
            "--error-n",
            "16",
            "--seed",
            "2",
            "--device",
            "cpu",
            "--no-progress",
        ],
    ),
    (
        "evaluate_exits",
        [
            "evaluate-exits",
            "{out}/exits_faces",
            "--n",
            "16",
            "--no-fid",
            "--seed",
            "4",
            "--device",
            "cpu",
            "--json",
            "--out",
            "{out}/evaluate_exits",
        ],
    ),
    ("export_faces", ["export", "{out}/demo_faces/pipeline", "--out", "{out}/onnx_faces"]),
    ("macs_oasis", ["macs", "--backbone", "oasis", "--json"]),
    ("macs_g2d", ["macs", "--backbone", "g2d", "--size", "tiny", "--json"]),
]


def _digest(h: "hashlib._Hash", obj) -> str:
    h.update(json.dumps(obj, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def _renamed(obj):
    """``obj`` with every old key and kind spelled the new way (``RENAMED_KINDS``, ``RENAMED_KEYS``)."""
    if isinstance(obj, list):
        return [_renamed(v) for v in obj]
    if not isinstance(obj, dict):
        return obj
    out = {}
    for key, value in obj.items():
        if key in RENAMED_KEYS:
            key = RENAMED_KEYS[key]
        elif key == "exits" and isinstance(value, list) and value and all(type(v) is int for v in value):
            key = "attach_after"
        elif key == "exit" and obj.get("kind") == "static":
            key = "route"
        if key == "kind" and isinstance(value, str):
            value = RENAMED_KINDS.get(value, value)
        out[key] = _renamed(value)
    if "kind" not in out and "generator" in out and "format" in out:  # the fashion backbone before it had a kind
        out = {"kind": "fiancee-fashion-backbone", **out}
    if out.get("kind") in UNVERSIONED and "format" not in out:
        out["format"] = UNVERSIONED[out["kind"]]
    return out


def _clean(obj, out: str):
    if isinstance(obj, dict):
        return {k: _clean(v, out) for k, v in obj.items() if not VOLATILE.search(str(k).lower())}
    if isinstance(obj, list):
        return [_clean(v, out) for v in obj]
    if isinstance(obj, str):
        return obj.replace(out, "<OUT>")
    return obj


def fingerprint_file(path: Path, out: str) -> str:
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        h = hashlib.sha256()
        for name, arr in sorted(load_file(str(path)).items()):
            h.update(f"{name}|{arr.dtype}|{arr.shape}|".encode())
            h.update(arr.tobytes())
        return h.hexdigest()[:16]
    if path.suffix in (".json", ".jsonl"):
        try:
            text = path.read_text()
            obj = json.loads(text) if path.suffix == ".json" else [json.loads(x) for x in text.splitlines() if x]
            return _digest(hashlib.sha256(), _clean(_renamed(obj), out))
        except ValueError:
            pass
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _skip(rel: str) -> bool:
    return rel.endswith((".lock", ".log", ".png", ".pdf")) or "/cache" in rel


def fingerprint_folder(out: Path) -> dict:
    out = out.resolve()
    return {
        p.relative_to(out).as_posix(): fingerprint_file(p, str(out))
        for p in sorted(out.rglob("*"))
        if p.is_file() and not _skip("/" + p.relative_to(out).as_posix())
    }


def run(out: Path, only: set[str] | None = None) -> dict:
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=only is not None)
    env = dict(
        os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", FIANCEE_CACHE=str(out / "cache"), PYTHONHASHSEED="0"
    )
    prints = {}
    for name, argv in STEPS:
        if only is not None and name not in only:
            continue
        argv = [a.replace("{out}", str(out)) for a in argv]
        print(f"[fingerprints] {name}: fiancee {' '.join(argv)}", flush=True)
        proc = subprocess.run([sys.executable, "-m", "fiancee", *argv], env=env, capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"{name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        if "--json" in argv and "--out" not in argv:
            prints[f"{name}/stdout"] = _digest(hashlib.sha256(), _clean(_renamed(json.loads(proc.stdout)), str(out)))
    prints.update(fingerprint_folder(out))
    return prints


def compare(a: dict, b: dict) -> int:
    bad = 0
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            bad += 1
            print(f"differs: {key}: {a.get(key)} vs {b.get(key)}")
    print(f"{len(set(a) | set(b)) - bad} identical, {bad} differ")
    return 1 if bad else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", nargs="?", type=Path, help="a new folder for the runs")
    p.add_argument("--json", type=Path, help="write the fingerprints here")
    p.add_argument("--compare", nargs=2, type=Path, metavar=("A", "B"))
    p.add_argument("--only", help="comma-separated step names: run these (OUT may exist) and fingerprint OUT")
    p.add_argument("--refingerprint", action="store_true", help="only fingerprint an existing OUT (no runs)")
    args = p.parse_args()
    if args.compare:
        return compare(*(json.loads(f.read_text()) for f in args.compare))
    if args.out is None:
        p.error("OUT or --compare A B expected")
    if args.refingerprint:
        prints = fingerprint_folder(args.out)
    else:
        prints = run(args.out, set(args.only.split(",")) if args.only else None)
    text = json.dumps(prints, indent=1, sort_keys=True)
    (args.json.write_text(text + "\n") if args.json else print(text))
    print(f"[fingerprints] {len(prints)} files", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
