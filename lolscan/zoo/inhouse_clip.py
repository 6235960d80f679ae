"""lolscan's in-house CLIP-style scorer: a small transformers `CLIPModel` trained here, contrastively, on an
image source's (image, caption) pairs, so diffusion zoos on the in-house pixel base can be CLIP-scored by a
model that has seen their images. It is *an in-house CLIP-style scorer, not OpenAI CLIP*: its scores are
comparable only with scores of the same folder, and zoo cards call the label "CLIP score (in-house
CLIP-style scorer)".

A scorer folder is what `ClipScorer.load` reads (``CLIPModel`` + ``CLIPProcessor``), plus a card::

    config.json, model.safetensors           CLIPModel.save_pretrained (safetensors; ≤ 16 MiB in all)
    preprocessor_config.json, tokenizer …   CLIPProcessor.save_pretrained
    clip.json                                the card: source, steps, seed, parameters, zero-shot accuracy …

Sizes (`DEFAULT_CONFIG`): 32×32 images in 4×4 patches (64 + 1 tokens), a 4-layer 128-d ViT, a 4-layer 128-d
text transformer over 32 positions, 128-d joint space: 1.6 M parameters, 6.4 MiB in float32.

Tokenizer: a real ``CLIPTokenizer`` (CLIP's byte-level BPE, lower-cased; vocab.json + merges.txt) built
here from a small vocabulary, so nothing is downloaded: every printable ASCII character (alone and
word-final) plus, through merges, every word of the built-in sources' class and style names and of the
caption templates as one token ("a photo of a T-shirt/top" → a · photo · of · a · t · - · shirt · / · top).
Other text falls back to characters, so any caption tokenizes; a source's own class and style names
(font file names, a mix's parts) become words too where the scorer is created with it (``extra_words =
source_words(source)``; ``scripts/inhouse_clip.py create --source``), and training warns when a caption
would not fit the text tower (`longest_caption`). (MiniLM's WordPiece tokenizer was the
other candidate; `CLIPProcessor` wants a CLIP tokenizer, and the hub MiniLM folder is not offline.)

Training (`train_clip`): AdamW on symmetric InfoNCE with CLIP's learned logit scale: logits = exp(s) ·
cos(image, caption). Captions repeat within a batch (few classes), so the loss is taken over the batch's
distinct captions: image → its caption among them, and caption → the images that carry it (uniform target);
with all captions distinct this is exactly CLIP's loss (`clip_loss`). Zero-shot accuracy (`zeroshot`) is
the argmax over classes of `ClipScorer.similarity` — the code path the zoo's labels go through — on
held-out images: a separate seed stream for synthetic sources, the ``test`` split for Fashion-MNIST.
``scripts/inhouse_clip.py`` runs create / train / zeroshot.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..errors import InputError, UsageError
from ..utils.files import atomic_write
from .images import caption_templates, draw_pair

CARD = "clip.json"
LABEL = "CLIP score (in-house CLIP-style scorer)"
DESCRIPTION = "an in-house CLIP-style scorer, not OpenAI CLIP"
MAX_BYTES = 16 * 1024 * 1024  # the whole folder
# the production size: 32 px, 4×4 patches, 4 layers of 128-d in each tower
DEFAULT_CONFIG: dict[str, Any] = {
    "image_size": 32, "patch_size": 4, "vision_hidden": 128, "vision_layers": 4, "vision_heads": 4,
    "text_hidden": 128, "text_layers": 4, "text_heads": 4, "max_length": 32, "projection_dim": 128,
    "mlp_ratio": 4,
}
TRAIN_TEMPLATES = ["a photo of a {cls}", "a {style} {cls}", "a picture of a {style} {cls}", "{cls}"]  # the pixel base's
ZEROSHOT_TEMPLATE = "a photo of a {cls}"
HELD_OUT_STREAM = 0x5EED_0E7A  # added to the seed for the held-out images of a synthetic source


# ---- tokenizer --------------------------------------------------------------------------------------
def vocabulary_words(extra: list[str] | None = None) -> list[str]:
    """The words that get one token each: template words and the built-in sources' class and style names."""
    from .images import COLOURS, FASHION_MNIST_CLASSES, SHAPES, TINTS

    text = " ".join([*TRAIN_TEMPLATES, ZEROSHOT_TEMPLATE, "a picture of", *SHAPES, *COLOURS, *FASHION_MNIST_CLASSES,
                     *TINTS, *(extra or [])]).replace("{cls}", " ").replace("{style}", " ")
    return sorted(set(re.findall(r"[a-z]+", text.lower())))


def source_words(source) -> list[str]:
    """A source's class and style names, for `create_clip`'s ``extra_words``: font file names
    ("NimbusSansNarrow-BoldOblique") are not built-in words, and spelt out in characters they make a caption
    longer than the text tower's 32 positions, truncating the class away (`longest_caption`)."""
    parts = getattr(source, "parts", [])  # a mix: its parts' templates too
    return [*source.classes, *source.styles, *getattr(source, "templates", []),
            *(t for p in parts for t in getattr(p, "templates", None) or [])]


def longest_caption(tokenizer, source, templates: list[str] | None) -> int:
    """An upper bound on the tokens (with start and end) of a caption of `source` from `templates` (None:
    the source's own, else `TRAIN_TEMPLATES`): each template with the class and the style that take the most
    tokens (words separated by spaces tokenize apart, so the counts add); of a mix, the most over its parts
    (a class goes only with its part's styles, and without `templates` its part's templates)."""
    if hasattr(source, "parts"):
        return max(longest_caption(tokenizer, p, templates) for p in source.parts)
    templates = templates or getattr(source, "templates", None) or TRAIN_TEMPLATES

    def n(text: str) -> int:
        return len(tokenizer.tokenize(text))

    cls = max(source.classes, key=n)
    style = max(source.styles, key=n)
    return max(n(t.format(cls=cls, style=style)) for t in templates) + 2


def write_tokenizer(folder: Path, words: list[str], max_length: int):
    """vocab.json + merges.txt of a CLIP BPE whose merges spell each of `words` into one token (characters
    otherwise); returns the `CLIPTokenizer`. Merges are added until every word is a single token: a merge
    made for one word may fire inside another first, and the pieces it leaves are then merged in turn."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = [chr(i) for i in range(33, 127)]
    vocab: dict[str, int] = {}
    for c in chars:
        vocab.setdefault(c, len(vocab))
    for c in chars:
        vocab.setdefault(c + "</w>", len(vocab))
    merges: list[tuple[str, str]] = []

    def merge_all(pieces: list[str]) -> None:
        cur = pieces[0]
        for s in pieces[1:]:
            if (cur, s) not in merges:
                merges.append((cur, s))
            cur += s
            vocab.setdefault(cur, len(vocab))

    for w in words:
        merge_all(list(w[:-1]) + [w[-1] + "</w>"])

    def save():
        v = {**vocab, "<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1}
        (folder / "vocab.json").write_text(json.dumps(v), encoding="utf-8")
        (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
        return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=max_length)

    for _ in range(20):
        tok = save()
        split = [p for p in (tok.tokenize(w) for w in words) if len(p) > 1]
        if not split:
            return tok
        for pieces in split:
            merge_all(pieces)
    raise RuntimeError("in-house CLIP tokenizer: merges did not converge")  # pragma: no cover


# ---- model ------------------------------------------------------------------------------------------
def clip_config(cfg: dict[str, Any], vocab_size: int):
    from transformers import CLIPConfig, CLIPTextConfig, CLIPVisionConfig

    eos = vocab_size - 1  # <|endoftext|>, also the padding: the text tower pools at the first eos
    r = int(cfg["mlp_ratio"])
    text = CLIPTextConfig(vocab_size=vocab_size, hidden_size=cfg["text_hidden"], intermediate_size=r * cfg["text_hidden"],
                          num_hidden_layers=cfg["text_layers"], num_attention_heads=cfg["text_heads"],
                          max_position_embeddings=cfg["max_length"], bos_token_id=vocab_size - 2, eos_token_id=eos,
                          pad_token_id=eos, projection_dim=cfg["projection_dim"])
    vision = CLIPVisionConfig(hidden_size=cfg["vision_hidden"], intermediate_size=r * cfg["vision_hidden"],
                              num_hidden_layers=cfg["vision_layers"], num_attention_heads=cfg["vision_heads"],
                              image_size=cfg["image_size"], patch_size=cfg["patch_size"], projection_dim=cfg["projection_dim"])
    return CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=cfg["projection_dim"])


def create_clip(folder: str | Path, *, config: dict[str, Any] | None = None, seed: int = 0,
                extra_words: list[str] | None = None) -> Path:
    """A randomly initialised scorer folder (model, processor, card with 0 steps)."""
    from transformers import CLIPImageProcessor, CLIPModel, CLIPProcessor

    folder = Path(folder)
    cfg = {**DEFAULT_CONFIG, **(config or {})}
    unknown = set(cfg) - set(DEFAULT_CONFIG)
    if unknown:
        raise UsageError(f"in-house CLIP config: unknown keys {sorted(unknown)} (known: {sorted(DEFAULT_CONFIG)})")
    folder.mkdir(parents=True, exist_ok=True)
    tok = write_tokenizer(folder / ".tokenizer", vocabulary_words(extra_words), int(cfg["max_length"]))
    torch.manual_seed(seed)
    model = CLIPModel(clip_config(cfg, len(tok)))
    size = int(cfg["image_size"])
    proc = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    model.save_pretrained(folder, safe_serialization=True)
    CLIPProcessor(image_processor=proc, tokenizer=tok).save_pretrained(folder)
    shutil.rmtree(folder / ".tokenizer", ignore_errors=True)
    card = {"kind": "inhouse-clip", "description": DESCRIPTION, "label": LABEL, "config": cfg, "seed": seed,
            "parameters": sum(p.numel() for p in model.parameters()),
            "tokenizer": "CLIPTokenizer, BPE over characters + one token per source/template word (lolscan.zoo.inhouse_clip)",
            "trained": {"steps": 0}}
    card["bytes"] = check_size(folder)
    atomic_write(folder / CARD, json.dumps(card, indent=1))
    return folder


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file() and p.name != CARD)


def check_size(folder: str | Path, limit: int = MAX_BYTES) -> int:
    """The folder's bytes (without the card); `UsageError` above `limit` (16 MiB)."""
    n = folder_bytes(Path(folder))
    if n > limit:
        raise UsageError(f"in-house CLIP {folder}: {n / 2**20:.1f} MiB on disk, above the {limit / 2**20:.0f} MiB limit "
                         "(make it smaller: --config '{\"vision_layers\": …}')")
    return n


def read_card(folder: str | Path) -> dict[str, Any]:
    try:
        return json.loads((Path(folder) / CARD).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"in-house CLIP {folder}: no {CARD} (make one with scripts/inhouse_clip.py create)") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"in-house CLIP {folder}: unreadable {CARD}: {exc}") from None


# ---- training ---------------------------------------------------------------------------------------
def pixel_values(images: torch.Tensor, processor: Any) -> torch.Tensor:
    """[N, 3, H, W] in [0, 1] → what `ClipScorer.image_features` feeds the model (quantised to 0–255,
    rescaled, normalised by the processor's mean and std), in torch, for images already at the processor's
    crop size (no resize or crop: the source draws them at that size)."""
    ip = processor.image_processor
    size = ip.crop_size["height"], ip.crop_size["width"]
    if tuple(images.shape[-2:]) != size:
        raise UsageError(f"in-house CLIP: images of {tuple(images.shape[-2:])} for a {size} model")
    u8 = (images.float().clamp(0, 1) * 255).round()
    mean = torch.tensor(ip.image_mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(ip.image_std, dtype=torch.float32).view(1, 3, 1, 1)
    return (u8 * float(ip.rescale_factor) - mean) / std


def contrastive_loss(logits_per_image: torch.Tensor, caption: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over a batch's distinct captions: logits [B images, U captions], caption [B] (which
    column is image i's). Image → caption: cross-entropy to its column; caption → image: cross-entropy to
    the uniform distribution over the images that carry it. Equals `clip_loss` when U = B and caption = arange."""
    logp_i = torch.log_softmax(logits_per_image, dim=1)
    li = -logp_i.gather(1, caption[:, None]).mean()
    onehot = torch.nn.functional.one_hot(caption, logits_per_image.shape[1]).T.float()  # [U, B]
    target = onehot / onehot.sum(1, keepdim=True)
    lt = -(target * torch.log_softmax(logits_per_image.T, dim=1)).sum(1).mean()
    return (li + lt) / 2


def clip_loss(logits_per_image: torch.Tensor) -> torch.Tensor:
    """CLIP's loss (one caption per image, the diagonal), for comparison."""
    t = torch.arange(len(logits_per_image))
    f = torch.nn.functional.cross_entropy
    return (f(logits_per_image, t) + f(logits_per_image.T, t)) / 2


def draw_batch(source, n: int, size: int, rng: np.random.Generator, templates: list[str] | None):
    """n (image [3, size, size] in [0, 1], caption, class index) of a random class and style each (the
    source's ``pair(rng)`` where it has one: a mix's classes go only with their own source's styles); the
    caption from `templates`, or None: the class's own (`images.caption_templates`, default `TRAIN_TEMPLATES`)."""
    imgs, caps, ys = [], [], []
    for _ in range(n):
        cls, style = draw_pair(source, rng)
        k = source.classes.index(cls)
        imgs.append(source.image(cls, style, size, rng))
        tpls = caption_templates(source, cls, templates, TRAIN_TEMPLATES)
        caps.append(tpls[int(rng.integers(len(tpls)))].format(cls=cls, style=style))
        ys.append(k)
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous(), caps, ys


def train_clip(folder: str | Path, source, steps: int, *, batch_size: int = 256, lr: float = 5e-4,
               weight_decay: float = 0.1, warmup: int = 100, seed: int = 0, templates: list[str] | None = None,
               device: str = "cpu", save: bool = True, max_seconds: float | None = None,
               log: Callable[[str], None] | None = None) -> list[float]:
    """`steps` AdamW steps (linear warm-up, then cosine decay to 0) of `contrastive_loss` on `source`'s
    images drawn by ``numpy.random.default_rng(seed)``; the per-step losses. Continues from the saved model;
    ``save`` writes it back (file by file, each atomically) with the steps added to the card.
    ``max_seconds``: stop after the step that passes this much time (the schedule is still the one for
    `steps`, cut short; the card counts the steps taken and keeps the planned number)."""
    from transformers import CLIPModel, CLIPProcessor

    folder = Path(folder)
    card = read_card(folder)
    model = CLIPModel.from_pretrained(folder).to(device).train()
    processor = CLIPProcessor.from_pretrained(folder)
    size = int(model.config.vision_config.image_size)
    n = int(model.config.text_config.max_position_embeddings)
    decay = [p for name, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in name]
    other = [p for name, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in name)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.98), eps=1e-6)
    warm = max(1, min(warmup, steps // 10 or 1))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + np.cos(np.pi * (s - warm) / max(1, steps - warm))))
    rng = np.random.default_rng(seed)
    tokens: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    longest = longest_caption(processor.tokenizer, source, templates)
    if longest > n and log:
        log(f"warning: captions of {source.name} take up to {longest} tokens, the text tower {n}: the end of a "
            "long caption (its class) is cut off; create the scorer with this source (scripts/inhouse_clip.py "
            "create --source …) so its class and style names are one token each")
    losses: list[float] = []
    t0 = time.monotonic()
    for step in range(steps):
        if max_seconds is not None and step and time.monotonic() - t0 > max_seconds:
            if log:
                log(f"stopped after {step} of {steps} steps: {max_seconds:g} s passed")
            break
        images, caps, _ = draw_batch(source, batch_size, size, rng, templates)
        distinct = sorted(set(caps))
        missing = [c for c in distinct if c not in tokens]
        if missing:
            p = processor(text=missing, return_tensors="pt", padding="max_length", max_length=n, truncation=True)
            for i, c in enumerate(missing):
                tokens[c] = p["input_ids"][i], p["attention_mask"][i]
        ids = torch.stack([tokens[c][0] for c in distinct]).to(device)
        mask = torch.stack([tokens[c][1] for c in distinct]).to(device)
        col = torch.tensor([distinct.index(c) for c in caps], device=device)
        out = model(input_ids=ids, attention_mask=mask, pixel_values=pixel_values(images, processor).to(device))
        loss = contrastive_loss(out.logits_per_image.float(), col)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, np.log(100))  # CLIP's cap on the temperature
        losses.append(float(loss.detach()))
        if log and (step % 100 == 0 or step == steps - 1):
            log(f"step {step + 1}/{steps}: loss {np.mean(losses[-100:]):.4f}, logit scale "
                f"{float(model.logit_scale.detach().exp()):.1f}, {(step + 1) / (time.monotonic() - t0):.2f} steps/s")
    model.eval()
    if save:
        _save_model(folder, model, card, len(losses), losses, source,
                    {"batch_size": batch_size, "lr": lr, "seed": seed, "weight_decay": weight_decay,
                     "planned_steps": steps})
    return losses


def _save_model(folder: Path, model, card: dict[str, Any], steps: int, losses: list[float], source,
                opts: dict[str, Any]) -> None:
    tmp = folder / ".model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    for name in os.listdir(tmp):
        os.replace(tmp / name, folder / name)
    shutil.rmtree(tmp, ignore_errors=True)
    before = card.get("trained") or {}
    runs = [*before.get("runs", []), {"steps": steps, "source": source.name, "source_version": source.version, **opts}]
    card["trained"] = {"steps": int(before.get("steps", 0)) + steps, "source": source.name,
                       "source_version": source.version, "seed": opts["seed"], "runs": runs,
                       "first_loss": round(float(np.mean(losses[:10])), 6),
                       "last_loss": round(float(np.mean(losses[-50:])), 6)}
    card.pop("zero_shot", None)  # measured for the old weights
    card["bytes"] = check_size(folder)
    atomic_write(folder / CARD, json.dumps(card, indent=1))


# ---- zero-shot --------------------------------------------------------------------------------------
def held_out_source(source):
    """The images zero-shot accuracy is measured on: Fashion-MNIST's ``test`` split for it; for a mix, the
    mix of its parts' held-out sources; else the source itself (a synthetic source, and the fonts source,
    which has no held-out fonts or glyphs, draw held-out images from another seed stream: `held_out_images`)."""
    from .images import FashionMNIST
    from .mix import Mix

    if isinstance(source, FashionMNIST) and source.split == "train":
        return FashionMNIST(data_root=source.data_root, split="test")
    if isinstance(source, Mix):
        parts = [held_out_source(p) for p in source.parts]
        if any(a is not b for a, b in zip(parts, source.parts)):
            return source.with_parts(parts)
    return source


def held_out_note(source, seed: int) -> str:
    """How `held_out_images` holds images out, for the card: per part for a mix."""
    from .mix import Mix

    if isinstance(source, Mix):
        return "; ".join(f"{p.name}: {held_out_note(p, seed)}" for p in source.parts)
    return "split test" if held_out_source(source) is not source else f"seed stream {seed} + {HELD_OUT_STREAM:#x}"


def held_out_images(source, per_class: int, size: int, seed: int = 0):
    """`per_class` images of every class (random styles; of a mix, styles of the class's own part) and their
    class indices, from the held-out source and the seed stream ``seed + HELD_OUT_STREAM`` (training draws
    from ``seed``)."""
    src = held_out_source(source)
    rng = np.random.default_rng(seed + HELD_OUT_STREAM)
    imgs, ys = [], []
    for k, cls in enumerate(src.classes):
        styles = src.styles_for(cls) if hasattr(src, "styles_for") else src.styles  # a mix: the class's own
        for _ in range(per_class):
            imgs.append(src.image(cls, styles[int(rng.integers(len(styles)))], size, rng))
            ys.append(k)
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous(), ys


def zeroshot(folder: str | Path, source, *, per_class: int = 50, seed: int = 0, template: str | None = None,
             device: str = "cpu", scorer=None, write_card: bool = True) -> dict[str, Any]:
    """Zero-shot classification accuracy on held-out images: each image's class is the argmax over classes
    of `ClipScorer.similarity` with ``template.format(cls=…)`` (None: `ZEROSHOT_TEMPLATE`; of a mix, each
    class's part's first template, or `ZEROSHOT_TEMPLATE` for a part without templates). Written into the card as ``zero_shot`` (of a
    mix, with ``per_source``: the accuracy on each part's images, the argmax still over all classes)."""
    from .clipscore import ClipScorer

    folder = Path(folder)
    clip = scorer or ClipScorer.load(str(folder), device=device)
    size = int(clip.model.config.vision_config.image_size)
    images, ys = held_out_images(source, per_class, size, seed)
    if template is None and hasattr(source, "templates_for"):  # a mix: each part's own caption of a class
        tpl = {c: (source.templates_for(c) or [ZEROSHOT_TEMPLATE])[0] for c in source.classes}
        used: Any = {p.name: (getattr(p, "templates", None) or [ZEROSHOT_TEMPLATE])[0] for p in source.parts}
    else:
        tpl = dict.fromkeys(source.classes, template or ZEROSHOT_TEMPLATE)
        used = template or ZEROSHOT_TEMPLATE
    prompts = [tpl[c].format(cls=c, style="") for c in source.classes]
    sim = torch.cat([clip.similarity(images[i:i + 512], prompts) for i in range(0, len(images), 512)])
    pred = sim.argmax(1)
    y = torch.tensor(ys)
    per = {c: round(float((pred[y == k] == k).float().mean()), 6) for k, c in enumerate(source.classes)}
    res = {"accuracy": round(float((pred == y).float().mean()), 6), "chance": round(1 / len(source.classes), 6),
           "n": len(ys), "per_class": per, "template": used, "source": source.name,
           "held_out": held_out_note(source, seed)}
    if hasattr(source, "parts"):  # a mix: each part's accuracy (still an argmax over all the mix's classes)
        part = torch.tensor([source.owner[c] for c in source.classes])[y]
        res["per_source"] = {p.name: round(float((pred[part == i] == y[part == i]).float().mean()), 6)
                             for i, p in enumerate(source.parts)}
    if write_card:
        card = read_card(folder)
        card["zero_shot"] = res
        atomic_write(folder / CARD, json.dumps(card, indent=1))
    return res
