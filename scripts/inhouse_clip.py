"""Make, train and measure lolscan's in-house CLIP-style scorer (see lolscan/zoo/inhouse_clip.py).

A small transformers CLIPModel (32 px ViT + text transformer, 1.6 M parameters, 6.4 MiB) trained
contrastively on an image source's captioned images; a folder `ClipScorer.load` (and so a diffusion
recipe's ``[labels] clip_model``) reads. It is an in-house CLIP-style scorer, not OpenAI CLIP. ::

    PYTHONPATH=$PWD python scripts/inhouse_clip.py create CLIP     # --source fonts: font names as words too
    PYTHONPATH=$PWD python scripts/inhouse_clip.py train CLIP --source fashion_mnist --steps 20000 --device cuda
    PYTHONPATH=$PWD python scripts/inhouse_clip.py zeroshot CLIP --source fashion_mnist --device cuda
    lolscan zoo build recipes/inhouse-fashion-classes-inhouse-clip.toml ZOO --base-path BASE --device cuda

``train`` continues from the saved model (clip.json counts the steps) and ends with ``zeroshot`` (held-out
images: Fashion-MNIST's test split, or another seed stream of a synthetic source), whose accuracy goes
into clip.json.
"""
from __future__ import annotations

import argparse
import json
import sys

from lolscan.errors import LolscanError
from lolscan.zoo.images import open_source
from lolscan.zoo.inhouse_clip import (
    ZEROSHOT_TEMPLATE,
    create_clip,
    read_card,
    source_words,
    train_clip,
    zeroshot,
)


def _source(a):
    return open_source(a.source, json.loads(a.source_options))


def _zeroshot(a, source) -> None:
    res = zeroshot(a.folder, source, per_class=a.per_class, seed=a.seed, template=a.template, device=a.device)
    print(f"zero-shot accuracy {res['accuracy']:.3f} on {res['n']} held-out images ({res['held_out']}; "
          f"chance {res['chance']:.3f}): " + ", ".join(f"{c} {v:.2f}" for c, v in res["per_class"].items()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("create", help="a randomly initialised scorer folder")
    c.add_argument("folder")
    c.add_argument("--config", default="{}", help="JSON overrides of inhouse_clip.DEFAULT_CONFIG")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--source", default=None, help="a source whose class and style names become single tokens too "
                   "(font file names, a mix's parts: else spelt in characters, and long captions are cut)")
    c.add_argument("--source-options", default="{}", help="JSON options of --source")
    t = sub.add_parser("train", help="train the scorer contrastively on an image source, then measure zero-shot accuracy")
    z = sub.add_parser("zeroshot", help="zero-shot classification accuracy on held-out images (written into clip.json)")
    for p in (t, z):
        p.add_argument("folder")
        p.add_argument("--source", default="fashion_mnist")
        p.add_argument("--source-options", default="{}", help="JSON, e.g. '{\"data_root\": \"/data/fmnist\"}'")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--device", default="cpu")
        p.add_argument("--per-class", type=int, default=200, help="held-out images per class")
        p.add_argument("--template", default=None, help=f"the zero-shot caption of a class ({{cls}}); default "
                       f"{ZEROSHOT_TEMPLATE!r}, of a mix each part's first template (its own captions)")
    t.add_argument("--steps", type=int, default=1000)
    t.add_argument("--batch-size", type=int, default=256)
    t.add_argument("--lr", type=float, default=5e-4)
    t.add_argument("--weight-decay", type=float, default=0.1)
    t.add_argument("--warmup", type=int, default=100)
    t.add_argument("--max-seconds", type=float, default=None, help="stop after this much training time (a lease's budget)")
    a = ap.parse_args(argv)
    try:
        if a.cmd == "create":
            words = source_words(_source(a)) if a.source else None
            create_clip(a.folder, config=json.loads(a.config), seed=a.seed, extra_words=words)
            card = read_card(a.folder)
            print(f"created {a.folder}: {card['parameters']:,} parameters, {card['bytes'] / 2**20:.1f} MiB")
        elif a.cmd == "train":
            source = _source(a)
            losses = train_clip(a.folder, source, a.steps, batch_size=a.batch_size, lr=a.lr, seed=a.seed,
                                weight_decay=a.weight_decay, warmup=a.warmup, device=a.device, max_seconds=a.max_seconds, log=print)
            print(f"trained {a.folder}: {len(losses)} steps, last loss {losses[-1]:.4f}")
            _zeroshot(a, source)
        else:
            _zeroshot(a, _source(a))
    except LolscanError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
