"""lolscan's in-house CLIP-style scorer at tiny size on CPU (offline): the saved folder is what
`ClipScorer.load` reads and its scores are 100·max(cos, 0) of the reloaded model's own features; the
contrastive loss is CLIP's when captions are distinct; training learns held-out shapes; zero-shot accuracy
equals an argmax written here; a seed gives the same weights; the 16 MiB limit holds and is enforced."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from helpers import load_script  # noqa: E402

from lolscan.errors import UsageError  # noqa: E402
from lolscan.zoo import inhouse_clip as ic  # noqa: E402
from lolscan.zoo.clipscore import ClipScorer  # noqa: E402
from lolscan.zoo.images import Shapes, get_source  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TINY = {"image_size": 16, "patch_size": 4, "vision_hidden": 64, "vision_layers": 2, "text_hidden": 32, "text_layers": 1,
        "projection_dim": 32, "max_length": 16}


@dataclass
class ThreeShapes(Shapes):
    """The shapes source with its three most distinct classes."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.classes = ["circle", "triangle", "cross"]


def script(*args: str) -> int:
    return load_script("scripts/inhouse_clip.py").main(list(args))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 16 px scorer trained 600 steps (batch 32) on three shapes with one caption template."""
    folder = tmp_path_factory.mktemp("clip") / "clip"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ic.create_clip(folder, config=TINY)
        src = ThreeShapes()
        losses = ic.train_clip(folder, src, 600, batch_size=32, lr=1e-3, warmup=20, templates=["a photo of a {cls}"])
    finally:
        torch.set_num_threads(threads)
    return folder, src, losses


def _by_hand(folder: Path, images: torch.Tensor, texts: list[str]) -> torch.Tensor:
    """100·cos [N, T] from the reloaded model's get_image_features / get_text_features on processor inputs."""
    from transformers import CLIPModel, CLIPProcessor

    model, proc = CLIPModel.from_pretrained(folder).eval(), CLIPProcessor.from_pretrained(folder)
    u8 = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    with torch.no_grad():
        fi = model.get_image_features(pixel_values=proc(images=list(u8), return_tensors="pt")["pixel_values"])
        t = proc(text=texts, return_tensors="pt", padding=True)
        ft = model.get_text_features(input_ids=t["input_ids"], attention_mask=t["attention_mask"])
    fi, ft = [getattr(f, "pooler_output", f) for f in (fi, ft)]
    fi = fi / fi.norm(dim=-1, keepdim=True)
    ft = ft / ft.norm(dim=-1, keepdim=True)
    return 100 * fi @ ft.T


def test_tokenizer_words_are_single_tokens_other_text_falls_back(tmp_path):
    words = ic.vocabulary_words()
    assert {"triangle", "ankle", "shirt", "yellow", "grey", "photo", "picture", "sneaker"} <= set(words)
    tok = ic.write_tokenizer(tmp_path, words, 32)
    for w in words:
        assert tok.tokenize(w) == [w + "</w>"]
    assert tok.tokenize("a photo of a T-shirt/top") == ["a</w>", "photo</w>", "of</w>", "a</w>", "t</w>", "-</w>",
                                                       "shirt</w>", "/</w>", "top</w>"]
    assert tok.tokenize("zebra 42") == ["z", "e", "b", "r", "a</w>", "4</w>", "2</w>"]
    ids = tok("a purple hexagon!")["input_ids"]
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id and tok.unk_token_id not in ids[1:-1]


def test_saved_folder_loads_and_scores_are_100_max_cos(trained):
    folder, src, _ = trained
    card = json.loads((folder / ic.CARD).read_text())
    assert card["description"] == "an in-house CLIP-style scorer, not OpenAI CLIP"
    assert card["label"] == "CLIP score (in-house CLIP-style scorer)" and card["trained"]["steps"] == 600
    assert card["trained"]["source"] == "shapes" and card["parameters"] > 0
    assert (folder / "model.safetensors").is_file() and not list(folder.glob("*.bin"))
    clip = ClipScorer.load(str(folder))
    rng = np.random.default_rng(5)
    images = torch.from_numpy(np.stack([src.image(c, "red", 16, rng) for c in src.classes * 2])).permute(0, 3, 1, 2)
    texts = ["a photo of a circle", "a red triangle", "a cross", "a photo of a T-shirt/top", "a blue square", "x"]
    want = _by_hand(folder, images, texts)
    torch.testing.assert_close(clip.scores(images, texts), want.diagonal().clamp(min=0), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(clip.similarity(images, texts), want, rtol=1e-4, atol=1e-4)
    # training feeds the model what the processor makes
    from transformers import CLIPProcessor

    proc = CLIPProcessor.from_pretrained(folder)
    u8 = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    torch.testing.assert_close(ic.pixel_values(images, proc), proc(images=list(u8), return_tensors="pt")["pixel_values"],
                               rtol=0, atol=1e-5)


def test_contrastive_loss_is_clips_when_captions_are_distinct(tmp_path):
    from transformers import CLIPModel, CLIPProcessor

    ic.create_clip(tmp_path, config=TINY, seed=3)
    model, proc = CLIPModel.from_pretrained(tmp_path), CLIPProcessor.from_pretrained(tmp_path)
    images, _, _ = ic.draw_batch(Shapes(), 4, 16, np.random.default_rng(0), ["x"])
    texts = ["a red circle", "a blue square", "a photo of a cross", "triangle"]
    t = proc(text=texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(input_ids=t["input_ids"], attention_mask=t["attention_mask"],
                    pixel_values=ic.pixel_values(images, proc), return_loss=True)
    mine = ic.contrastive_loss(out.logits_per_image, torch.arange(4))
    torch.testing.assert_close(mine, out.loss)
    torch.testing.assert_close(mine, ic.clip_loss(out.logits_per_image))
    # repeated captions: image 0 and 2 share column 0; caption 0's target is uniform over images 0 and 2
    lg = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, -1.0]])
    col = torch.tensor([0, 1, 0])
    li = -(torch.log_softmax(lg, 1)[[0, 1, 2], [0, 1, 0]]).mean()
    lt = -((torch.log_softmax(lg.T[0], 0)[[0, 2]].mean()) + torch.log_softmax(lg.T[1], 0)[1]) / 2
    torch.testing.assert_close(ic.contrastive_loss(lg, col), (li + lt) / 2)


def test_training_lowers_the_loss_and_classifies_held_out_shapes(trained):
    folder, src, losses = trained
    assert np.mean(losses[-50:]) < np.mean(losses[:20]) - 0.25
    res = ic.zeroshot(folder, src, per_class=40)
    assert res["chance"] == pytest.approx(1 / 3) and res["n"] == 120
    assert res["accuracy"] >= 0.5, res  # chance 0.33
    assert json.loads((folder / ic.CARD).read_text())["zero_shot"] == res


def test_zeroshot_equals_an_argmax_written_here(trained):
    folder, src, _ = trained
    res = ic.zeroshot(folder, src, per_class=20, seed=9, write_card=False)
    rng = np.random.default_rng(9 + ic.HELD_OUT_STREAM)  # the held-out stream, drawn here
    imgs, ys = [], []
    for k, c in enumerate(src.classes):
        for _ in range(20):
            imgs.append(src.image(c, src.styles[int(rng.integers(len(src.styles)))], 16, rng))
            ys.append(k)
    images = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2)
    sim = _by_hand(folder, images, [f"a photo of a {c}" for c in src.classes])
    pred = sim.argmax(1).numpy()
    assert res["accuracy"] == pytest.approx(float(np.mean(pred == np.array(ys))), abs=1e-6)
    for k, c in enumerate(src.classes):
        assert res["per_class"][c] == pytest.approx(float(np.mean(pred[np.array(ys) == k] == k)), abs=1e-6)


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_a_seed_gives_the_same_scorer(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, seed in (("a", 1), ("b", 1), ("c", 2)):
            ic.create_clip(tmp_path / name, config=TINY, seed=seed)
            ic.train_clip(tmp_path / name, get_source("shapes"), 4, batch_size=8, seed=seed)
    finally:
        torch.set_num_threads(threads)
    a, b, c = (_weights(tmp_path / n) for n in "abc")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "c" / "tokenizer.json").read_bytes()


def test_size_limit(tmp_path):
    ic.create_clip(tmp_path / "full")  # the production size
    card = json.loads((tmp_path / "full" / ic.CARD).read_text())
    on_disk = sum(p.stat().st_size for p in (tmp_path / "full").rglob("*") if p.is_file())
    assert on_disk <= 16 * 2**20 and card["bytes"] <= on_disk
    assert 1_000_000 < card["parameters"] < 4 * 2**20 and card["config"]["image_size"] == 32
    with pytest.raises(UsageError, match="16 MiB limit"):
        ic.create_clip(tmp_path / "big", config={"vision_hidden": 512, "vision_layers": 2, "vision_heads": 8})
    with pytest.raises(UsageError, match="limit"):
        ic.check_size(tmp_path / "full", limit=2**20)
    with pytest.raises(UsageError, match="unknown keys"):
        ic.create_clip(tmp_path / "bad", config={"layers": 2})


def test_script_create_train_zeroshot(tmp_path, capsys):
    f = str(tmp_path / "clip")
    assert script("create", f, "--config", json.dumps(TINY)) == 0
    assert script("train", f, "--source", "shapes", "--steps", "3", "--batch-size", "8", "--per-class", "3") == 0
    assert script("zeroshot", f, "--source", "shapes", "--per-class", "2", "--template", "a {cls}") == 0
    out = capsys.readouterr().out
    assert "trained" in out and out.count("zero-shot accuracy") == 2
    card = json.loads((tmp_path / "clip" / ic.CARD).read_text())
    assert card["trained"]["steps"] == 3 and card["zero_shot"]["template"] == "a {cls}" and card["zero_shot"]["n"] == 8
    assert script("train", str(tmp_path / "nowhere"), "--source", "shapes") == 3  # no clip.json: exit 3


def test_a_diffusion_zoo_labelled_by_the_inhouse_scorer(tmp_path):
    """The tiny SD pipeline's zoo with clip_model = an in-house scorer folder: zoo.json names the label after
    the scorer's card and keeps the card; the base's label is the scorer's score of the base's images."""
    pytest.importorskip("diffusers")
    from diffusion_toy import save_tiny_sd, toy_diffusion_recipe

    import lolscan.zoo.diffusion as zd
    from lolscan.zoo.build import read_zoo_rows
    from lolscan.zoo.diffusion_recipe import DiffusionRecipe

    save_tiny_sd(tmp_path / "pipe", tmp_path / "openai-like")
    ic.create_clip(tmp_path / "mine", config=TINY)
    d = toy_diffusion_recipe(tmp_path / "pipe", tmp_path / "mine", n_loras=2, group_size=2)
    recipe = DiffusionRecipe.from_dict(d)
    assert "scorer" not in recipe.to_dict()["labels"]  # unset: the recipe's digest is what it was before the option
    rep = zd.build_diffusion(recipe, tmp_path / "zoo", log=lambda s: None)
    assert rep.complete
    info = json.loads((tmp_path / "zoo" / "zoo.json").read_text())
    assert info["label_names"]["clip_score"] == "CLIP score (in-house CLIP-style scorer)"
    assert info["label_names"]["clip_score_p1"] == "CLIP score (in-house CLIP-style scorer), prompt 1"
    assert info["scorer"]["description"] == "an in-house CLIP-style scorer, not OpenAI CLIP"
    rows = read_zoo_rows(tmp_path / "zoo" / "manifest.jsonl")
    assert len(rows) == 2 and all(0 <= r["clip_score"] <= 100 for r in rows)
    # the real-SD path: a hub id (or any CLIP folder without clip.json) keeps its name; a recipe may set one
    other = DiffusionRecipe.from_dict({**d, "labels": {**d["labels"], "clip_model": "openai/clip-vit-base-patch16"}})
    assert zd.scorer_label(other.labels) == "CLIP score (openai/clip-vit-base-patch16)" and zd.scorer_card("openai/x") is None
    named = DiffusionRecipe.from_dict({**d, "labels": {**d["labels"], "scorer": "CLIP score (mine)"}})
    assert zd.scorer_label(named.labels) == "CLIP score (mine)" and named.to_dict()["labels"]["scorer"] == "CLIP score (mine)"
    assert named.digest() != recipe.digest()


def test_the_inhouse_clip_recipe_variant():
    from lolscan.zoo.diffusion_recipe import load_recipe

    plain = load_recipe(ROOT / "recipes" / "inhouse-fashion-classes.toml")
    mine = load_recipe(ROOT / "recipes" / "inhouse-fashion-classes-inhouse-clip.toml")
    assert plain.labels.clip_model.startswith("openai/") and mine.labels.clip_model == "inhouse-clip"
    assert mine.labels.scorer == ic.LABEL and mine.labels.prompts == plain.labels.prompts
    assert mine.base == plain.base and mine.data == plain.data and mine.n_loras == plain.n_loras
    # every class name of the prompts is one token of the scorer's tokenizer
    assert {"shirt", "top", "trouser", "ankle", "boot", "bag"} <= set(ic.vocabulary_words())
