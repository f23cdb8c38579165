"""``fiancee train-backbone`` and ``fiancee export-backbone``: the fashion task's OASIS generator."""

from __future__ import annotations

import argparse
import json

from ._args import data_option, device_option, out_option, seed_option, task_option


def register(sub) -> None:
    p = sub.add_parser(
        "train-backbone",
        help="train the fashion backbone (OASIS recipe)",
        description="Train the OASIS generator of task 'fashion' on Fashion-MNIST label maps: U-Net segmentation "
        "discriminator with balanced N+1-class cross-entropy, LabelMix, EMA, Adam(0, 0.999). "
        "The run folder holds config.json, stats.jsonl, checkpoint.safetensors and backbone/.",
        epilog="example: fiancee train-backbone --task fashion --config fashion_backbone "
        "--out runs/fashion_backbone --seed 0",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    task_option(p, only="fashion", help="only fashion is trained (faces is pretrained)")
    p.add_argument(
        "--config",
        required=True,
        help="training config: a JSON file, or the name of one shipped in fiancee/configs (fashion_backbone)",
    )
    out_option(p, required=True, help="run folder", refuse_existing=False)  # --resume continues it
    seed_option(p, default=None, help="overrides the config's seed")
    p.add_argument("--steps", type=int, default=None, help="overrides the config's step count")
    p.add_argument("--train-limit", type=int, default=None, help="use only the first N training images")
    data_option(
        p,
        help="folder with the Fashion-MNIST idx .gz files (else $FIANCEE_DATA, else /usr/share/datasets/fashion-mnist)",
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    device_option(p)
    p.set_defaults(func=run_train_backbone)

    p = sub.add_parser(
        "export-backbone",
        help="export a fashion backbone run's checkpoint (EMA generator + discriminator)",
        description="Write the backbone folder of a train-backbone run from its checkpoint.safetensors without "
        "training: the EMA generator (BatchNorm statistics re-measured as training does) and the U-Net "
        "discriminator (discriminator.safetensors), which the exits' oasis critics copy (paper eq. 3).",
        epilog="example (after the train-backbone example, which writes runs/fashion_backbone):\n"
        "  fiancee export-backbone runs/fashion_backbone   (writes runs/fashion_backbone/backbone)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", help="run folder of fiancee train-backbone (config.json + checkpoint.safetensors)")
    out_option(p, help="backbone folder to write (default RUN/backbone; replaced whole)", refuse_existing=False)
    data_option(p, help="folder with the Fashion-MNIST idx .gz files")
    device_option(p)
    p.set_defaults(func=run_export_backbone)


def run_train_backbone(args: argparse.Namespace) -> int:
    from ..train.backbone import load_train_config, train_backbone

    config = load_train_config(args.config, seed=args.seed, steps=args.steps, train_limit=args.train_limit)
    summary = train_backbone(config, args.out, data=args.data, resume=args.resume, device=args.device)
    print(json.dumps(summary))
    return 0


def run_export_backbone(args: argparse.Namespace) -> int:
    from ..train.backbone import export_checkpoint

    print(json.dumps(export_checkpoint(args.run, args.out, data=args.data, device=args.device)))
    return 0
