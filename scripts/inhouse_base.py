"""Make and train lolscan's in-house pixel-space base (``[base] kind = "pixel"``; see lolscan/zoo/pixel_base.py).

A 32 px SD-style UNet (3.4 M parameters, 13 MiB in float32) on frozen MiniLM-L6 token states, trained on an
image source's captioned images (Fashion-MNIST: ``apt install dataset-fashion-mnist``). ::

    PYTHONPATH=$PWD python scripts/inhouse_base.py create BASE                     # random UNet + MiniLM (hub)
    PYTHONPATH=$PWD python scripts/inhouse_base.py train BASE --source fashion_mnist --steps 20000 --device cuda
    lolscan zoo build recipes/inhouse-fashion-classes.toml ZOO --base-path BASE --device cuda
    # one base for the class-subset and the font-identity zoos: Fashion-MNIST and font glyphs together
    PYTHONPATH=$PWD python scripts/inhouse_base.py train BASE --source mix --source-options \\
        '{"sources": ["fashion_mnist", "fonts"], "options": {"fonts": {"exclude": ["StandardSymbolsPS.*", "D050000L.*"]}}}'

``train`` again continues from the saved UNet (base.json counts the steps). On CPU it runs at tiny sizes only
(the tests make a 16 px base on a random 32-d BERT: ``--text-encoder FOLDER --unet '{...}'``).
"""
from __future__ import annotations

import argparse
import json
import sys

from lolscan.errors import LolscanError
from lolscan.zoo.images import open_source
from lolscan.zoo.pixel_base import MINILM, create_pixel_base, train_pixel_base


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("create", help="a randomly initialised base folder")
    c.add_argument("folder")
    c.add_argument("--text-encoder", default=MINILM, help="folder or hub id of a BERT-style encoder (default MiniLM-L6)")
    c.add_argument("--unet", default="{}", help="JSON overrides of the UNet config (pixel_base.DEFAULT_UNET)")
    c.add_argument("--max-length", type=int, default=32, help="caption tokens")
    c.add_argument("--copy-text-encoder", action="store_true", help="keep the text encoder inside the folder")
    c.add_argument("--seed", type=int, default=0)
    t = sub.add_parser("train", help="train the base's UNet on an image source")
    t.add_argument("folder")
    t.add_argument("--source", default="fashion_mnist")
    t.add_argument("--source-options", default="{}", help="JSON, e.g. '{\"data_root\": \"/data/fmnist\"}'")
    t.add_argument("--steps", type=int, default=1000)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--lr", type=float, default=2e-4)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="cpu")
    t.add_argument("--save-dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    t.add_argument("--max-seconds", type=float, default=None, help="stop after this much training time (a lease's budget)")
    a = ap.parse_args(argv)
    try:
        if a.cmd == "create":
            create_pixel_base(a.folder, a.text_encoder, unet=json.loads(a.unet), max_length=a.max_length,
                              seed=a.seed, copy_text_encoder=a.copy_text_encoder)
            print(f"created {a.folder}")
        else:
            source = open_source(a.source, json.loads(a.source_options))
            losses = train_pixel_base(a.folder, source, a.steps, batch_size=a.batch_size, lr=a.lr, seed=a.seed,
                                      device=a.device, save_dtype=a.save_dtype, max_seconds=a.max_seconds, log=print)
            print(f"trained {a.folder}: {len(losses)} steps, last loss {losses[-1]:.4f}")
    except LolscanError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
