"""``fiancee export``: a pipeline folder to ONNX segments that :mod:`fiancee.runtime` runs without PyTorch."""

from __future__ import annotations

import argparse
import json

from ._args import choice_option, export_targets, folder_code_option, out_option, overwrite_option


def register(sub) -> None:
    p = sub.add_parser(
        "export",
        help="export a pipeline to ONNX segments that fiancee.runtime runs without PyTorch",
        description="One ONNX graph per segment with a dynamic batch dimension (the trunk with the predictor, every "
        "remaining backbone stage, every branch, the head, the bank's guide), the bank's FAISS indexes and "
        "manifest.json (route table, MACs, router, inputs, fingerprints). Written whole (docs/deploy.md).",
        epilog="example: fiancee export out/demo/pipeline --out out/demo/onnx   (after `make demo`)\n"
        '         python -c "from fiancee.runtime import OnnxPipeline; import numpy as np; '
        "print(OnnxPipeline('out/demo/onnx')(np.random.randn(4, 100).astype('float32'), "
        'max_lpips=0.1).routes)"',
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("pipeline", help="pipeline folder (fiancee demo, FianceePipeline.save)")
    # export_pipeline checks its own folder (and writes it whole)
    out_option(p, required=True, help="folder to write (must not exist unless --overwrite)", refuse_existing=False)
    choice_option(
        p,
        "--target",
        names=export_targets,
        default="onnx",
        help="export target (default onnx: ONNX segments that fiancee.runtime runs without PyTorch)",
    )
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (13..21, default 17)")
    overwrite_option(p, help="replace an existing export folder")
    folder_code_option(p)
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from ..export_targets import export

    manifest = export(args.pipeline, args.out, target=args.target, opset=args.opset, overwrite=args.overwrite)
    print(
        json.dumps(
            {
                "out": str(args.out),
                "segments": [s["file"] for s in manifest["segments"]],
                "route_macs": manifest["route_macs"],
                "router": manifest["router"]["kind"],
                "bank": manifest["bank"] is not None,
            }
        )
    )
    return 0
