"""The diffusion zoo builder end to end on a tiny randomly initialised SD-1.x pipeline and CLIP model.

Independent truths: diffusers' own `load_lora_weights` and `StableDiffusionPipeline.__call__` (the files
load as real SD LoRAs; the UNet they give equals the builder's adapter slot; the pipeline's images score
the manifest's CLIP labels), torchmetrics' `clip_score` (when installed) and CLIP's own logits for the
formula, `lolscan.load` for the written ΔW, and a separate CLI process for resume and determinism.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffusion_toy import save_tiny_sd, toy_diffusion_recipe  # noqa: E402

import lolscan  # noqa: E402
import lolscan.zoo.diffusion as zd  # noqa: E402
from lolscan.zoo.build import read_zoo_rows  # noqa: E402
from lolscan.zoo.clipscore import ClipScorer  # noqa: E402
from lolscan.zoo.diffusion_base import load_base  # noqa: E402
from lolscan.zoo.diffusion_recipe import DiffusionRecipe  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
LOADED: dict = {}  # the fixture's base and CLIP model, for tests that build again in-process


def _recipe(root: Path) -> dict:
    d = toy_diffusion_recipe(root / "pipe", root / "clip", n_loras=4, group_size=2)
    d["labels"] = {**d["labels"], "seeds": [0, 5], "batch": 3}  # two seeds: per-seed columns; batches cut a prompt's pairs
    return d


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """Built in-process in two runs (one group, then a resume), with every slot's trained factors captured."""
    root = tmp_path_factory.mktemp("sd")
    save_tiny_sd(root / "pipe", root / "clip")
    recipe = DiffusionRecipe.from_dict(_recipe(root))
    base = load_base(recipe.base)
    clip = ClipScorer.load(recipe.labels.clip_model)
    LOADED.update(base=base, clip=clip)
    captured: list[dict] = []
    real_extract = zd.extract

    def spy(mods, slot, ranks):
        f = real_extract(mods, slot, ranks)
        captured.append({"factors": f, "scaling": {n: float(m.scaling[slot]) for n, m in mods.items()}})
        return f

    zd.extract = spy
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bit-equal to the CLI build below only at equal thread counts (_cli runs it at 1)
    try:
        first = zd.build_diffusion(recipe, root / "zoo", base=base, clip=clip, max_groups=1, log=lambda s: None)
        rep = zd.build_diffusion(recipe, root / "zoo", base=base, clip=clip, log=lambda s: None)
    finally:
        zd.extract = real_extract
        torch.set_num_threads(threads)
    rows = read_zoo_rows(root / "zoo" / "manifest.jsonl")
    # captures are in manifest order (one per written row)
    trained = {row["id"]: cap for row, cap in zip(rows, captured)}
    return root, recipe, rows, trained, first, rep


def test_manifest_rows(zoo):
    root, recipe, rows, _, first, rep = zoo
    assert first.stopped_early and first.done == 2 and rep.complete and rep.groups_run == 1
    assert sorted(r["id"] for r in rows) == [f"lora-{i:05d}" for i in range(4)]
    classes = ["circle", "square", "triangle", "cross"]
    for r in rows:
        assert (root / "zoo" / r["path"]).is_file() and r["finite"]
        assert r["classes"] and [r[f"cls_{c}"] for c in classes] == [int(c in r["classes"]) for c in classes]
        assert r["n_classes"] == len(r["classes"]) and r["style"] in ("red", "green", "blue", "yellow")
        assert 2 <= r["dataset_size"] <= 5 and r["prompt_template"] in (0, 1)
        assert r["rank"] in (2, 4) and r["alpha"] == r["rank"] and 1e-3 <= r["lr"] <= 1e-2
        assert 2 <= r["steps"] <= 4 and r["batch_size"] in (1, 2) and r["split"] in ("train", "val", "test")
        assert 0 <= r["clip_score_p0"] <= 100 and 0 <= r["clip_score_p1"] <= 100
        assert r["clip_score"] == pytest.approx((r["clip_score_p0"] + r["clip_score_p1"]) / 2, abs=2e-6)
        assert r["train_loss_first"] > 0 and r["train_loss_last"] > 0
    info = json.loads((root / "zoo" / "zoo.json").read_text())
    assert info["kind"] == "diffusion" and len(info["targets"]) == 32 and "clip_score" in info["base_labels"]
    # the adapters moved the images: every label differs from the base's and from each other
    assert len({r["clip_score"] for r in rows} | {info["base_labels"]["clip_score"]}) == 5


def test_files_read_by_lolscan_with_the_trained_delta(zoo):
    root, _, rows, trained, _, _ = zoo
    for r in rows:
        ad = lolscan.load(str(root / "zoo" / r["path"]))
        cap = trained[r["id"]]
        assert len(ad) == 32 and set(ad.ranks) == {r["rank"]}
        for name, (a, b) in cap["factors"].items():
            layer = ad[f"unet.{name}"]
            want = cap["scaling"][name] * (b.double() @ a.double())
            assert cap["scaling"][name] == r["alpha"] / r["rank"]
            torch.testing.assert_close(layer.delta().double(), want, rtol=1e-6, atol=1e-9)


def _pipe(root: Path):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(root / "pipe", safety_checker=None).to("cpu")


def test_load_lora_weights_gives_the_slots_unet(zoo):
    """diffusers loads each file as an SD LoRA; its UNet equals the builder's multi-LoRA UNet at that slot."""
    from diffusers import UNet2DConditionModel

    from lolscan.zoo.multilora import find_targets, inject

    root, _, rows, trained, _, _ = zoo
    mine = UNet2DConditionModel.from_pretrained(root / "pipe" / "unet").eval()
    targets = find_targets(mine, TARGETS)
    assert len(targets) == 32 and any(t.endswith("attn2.to_out.0") for t in targets)
    mods = inject(mine, targets, len(rows), max(r["rank"] for r in rows))
    with torch.no_grad():
        for slot, r in enumerate(rows):
            for name, (a, b) in trained[r["id"]]["factors"].items():
                mods[name].lora_A[slot].zero_()
                mods[name].lora_A[slot, : a.shape[0]] = a
                mods[name].lora_B[slot].zero_()
                mods[name].lora_B[slot, :, : a.shape[0]] = b
                mods[name].scaling[slot] = trained[r["id"]]["scaling"][name]
    g = torch.Generator().manual_seed(0)
    x, ehs = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 24, 32, generator=g)
    t = torch.tensor([500] * len(rows))
    with torch.no_grad():
        out = mine(x.repeat(len(rows), 1, 1, 1), t, encoder_hidden_states=ehs.repeat(len(rows), 1, 1)).sample
    pipe = _pipe(root)
    with torch.no_grad():
        base_out = pipe.unet(x, t[:1], encoder_hidden_states=ehs).sample
    for slot in (0, len(rows) - 1):
        r = rows[slot]
        pipe.load_lora_weights(str(root / "zoo" / r["path"]), adapter_name=f"a{slot}")
        pipe.set_adapters([f"a{slot}"])
        cfg = pipe.unet.peft_config[f"a{slot}"]
        assert cfg.r == r["rank"] and cfg.lora_alpha == r["alpha"]
        with torch.no_grad():
            theirs = pipe.unet(x, t[:1], encoder_hidden_states=ehs).sample
        assert (theirs - base_out).abs().max() > 1e-4  # the LoRA does something
        torch.testing.assert_close(out[slot:slot + 1], theirs, rtol=1e-4, atol=1e-5)


class _FeatureTensors(torch.nn.Module):
    """transformers 5's get_*_features return model outputs (the projected embedding in pooler_output);
    torchmetrics 1.9 wants the tensor. Nothing else is changed."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config = model, model.config

    def get_image_features(self, *a, **k):
        out = self.model.get_image_features(*a, **k)
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def get_text_features(self, *a, **k):
        out = self.model.get_text_features(*a, **k)
        return out if isinstance(out, torch.Tensor) else out.pooler_output


def _reference_clip_scores(clip_dir: Path, images: torch.Tensor, texts: list[str]) -> list[float]:
    """Per pair, from CLIP's own logits (logit_scale·cos → 100·max(cos, 0)); checked against torchmetrics'
    clip_score on each pair when torchmetrics is installed."""
    from transformers import CLIPModel, CLIPProcessor

    model, proc = CLIPModel.from_pretrained(clip_dir).eval(), CLIPProcessor.from_pretrained(clip_dir)
    u8 = [(im * 255).round().to(torch.uint8) for im in images]
    out = []
    with torch.no_grad():
        for im, txt in zip(u8, texts):
            p = proc(text=[txt], images=[im], return_tensors="pt", padding=True)
            logits = model(**p).logits_per_image[0, 0]
            out.append(100 * max(float(logits / model.logit_scale.exp()), 0.0))
    try:
        from torchmetrics.functional.multimodal import clip_score
    except ImportError:
        return out
    tm = [float(clip_score(im, txt, model_name_or_path=lambda: (_FeatureTensors(model), proc))) for im, txt in zip(u8, texts)]
    assert tm == pytest.approx(out, abs=1e-4)
    return out


def test_pipeline_images_reproduce_the_clip_labels(zoo):
    """A user's `pipe.load_lora_weights(file); pipe(prompt, generator=manual_seed(seed))` scores the labels."""
    root, recipe, rows, _, _, _ = zoo
    lab = recipe.labels
    pipe = _pipe(root)
    r = rows[1]
    pipe.load_lora_weights(str(root / "zoo" / r["path"]))
    per_seed = []
    for j, prompt in enumerate(lab.prompts):
        imgs = torch.cat([pipe(prompt, height=16, width=16, num_inference_steps=lab.steps, guidance_scale=lab.guidance_scale,
                               generator=torch.Generator().manual_seed(s), output_type="pt").images for s in lab.seeds])
        ref = _reference_clip_scores(root / "clip", imgs, [prompt] * len(imgs))
        assert sum(ref) / len(ref) == pytest.approx(r[f"clip_score_p{j}"], abs=0.02)
        per_seed.append(ref)
    for k in range(len(lab.seeds)):  # seed k over every prompt
        assert sum(p[k] for p in per_seed) / len(per_seed) == pytest.approx(r[f"clip_score_s{k}"], abs=0.02)
    assert r["clip_score"] == pytest.approx(sum(r[f"clip_score_s{k}"] for k in range(len(lab.seeds))) / len(lab.seeds), abs=2e-6)


def test_clip_score_formula_against_clip_logits(zoo):
    from lolscan.zoo.clipscore import ClipScorer

    root = zoo[0]
    imgs = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    texts = ["a red circle", "a blue square", "green", "a yellow cross", "x", "a photo of a triangle"]
    got = ClipScorer.load(str(root / "clip")).scores(imgs, texts).tolist()
    assert got == pytest.approx(_reference_clip_scores(root / "clip", imgs, texts), abs=1e-4)
    assert any(v == 0.0 for v in got) or min(got) >= 0  # clamped at 0, never negative


def _toml(d: dict, prefix: str = "") -> str:
    """Just enough TOML for the toy recipe (json's string/number/list syntax is valid TOML inline)."""
    plain = [f"{k} = {json.dumps(v)}" for k, v in d.items() if not isinstance(v, dict)]
    inline = [f"{k} = {{ {', '.join(f'{ik} = {json.dumps(iv)}' for ik, iv in v.items())} }}"
              for k, v in d.items() if isinstance(v, dict) and prefix]
    tables = [f"[{k}]\n" + _toml(v, k) for k, v in d.items() if isinstance(v, dict) and not prefix]
    return "\n".join(plain + inline) + "\n" + "".join(tables)


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # as the fixture's in-process build
    return subprocess.run([sys.executable, "-m", "lolscan", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=env)


def test_cli_build_equals_the_interrupted_and_resumed_build(zoo, tmp_path):
    root, _, rows, _, _, _ = zoo
    (tmp_path / "r.toml").write_text(_toml(_recipe(root)))
    p = _cli("zoo", "build", str(tmp_path / "r.toml"), str(tmp_path / "z"), "--device", "cpu")
    assert p.returncode == 0, p.stderr
    assert "4/4 adapters, complete" in p.stderr
    assert read_zoo_rows(tmp_path / "z" / "manifest.jsonl") == rows
    from safetensors.torch import load_file

    for r in rows:
        a, b = load_file(str(tmp_path / "z" / r["path"])), load_file(str(root / "zoo" / r["path"]))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_cli_refuses_a_bad_diffusion_recipe(zoo, tmp_path):
    from typer.testing import CliRunner

    from lolscan.cli.app import _register, app

    _register()

    root = zoo[0]
    d = _recipe(root)
    (tmp_path / "ok.toml").write_text(_toml(d))
    d["base"] = {"kind": "imagen", "path": "x"}  # no such kind ("diffusers" and "pixel" are)
    (tmp_path / "bad.toml").write_text(_toml(d))
    p = _cli("zoo", "build", str(tmp_path / "bad.toml"), str(tmp_path / "z"))
    assert p.returncode == 2 and "kind must be one of" in p.stderr and not (tmp_path / "z").exists()
    res = CliRunner().invoke(app, ["zoo", "build", str(tmp_path / "ok.toml"), str(tmp_path / "z"), "--compile"])
    assert res.exit_code == 2 and "for language zoos" in res.output and not (tmp_path / "z").exists()


def test_shipped_sd15_recipe_parses_and_draws():
    from lolscan.zoo.diffusion_recipe import load_recipe, sample_specs
    from lolscan.zoo.images import get_source

    r = load_recipe(ROOT / "recipes" / "sd15-shapes-attn.toml")
    assert isinstance(r, DiffusionRecipe) and r.base["kind"] == "diffusers" and r.n_loras == 512
    specs = sample_specs(r, get_source(r.data.source))
    assert {s.rank for s in specs} == {4, 8, 16} and all(s.alpha == s.rank for s in specs)
    assert len({s.template for s in specs}) == 4 and len({s.style for s in specs}) == 4
    # a draw never depends on how many adapters the zoo has (seeded per adapter index)
    r.n_loras = 7
    assert [vars(s) for s in sample_specs(r, get_source("shapes"))] == [vars(s) for s in specs[:7]]


def test_targets_on_real_sd15_are_the_modules_real_sd_loras_adapt():
    """On the full-size SD-1.5 UNet (built on the meta device: no weights), the recipe's targets are the
    128 attention linears a real SD-1.5 LoRA adapts, with the same names and shapes as lolscan reads them."""
    from diffusers import UNet2DConditionModel

    from helpers import REAL
    from lolscan.zoo.multilora import find_targets

    real = REAL / "catundchat_sd15_pytorch_lora_weights.safetensors"
    if not real.is_file():
        pytest.skip("../shared/fixtures/real not present")
    with torch.device("meta"):
        unet = UNet2DConditionModel(cross_attention_dim=768)  # the default config is SD-1.5's UNet
    names = find_targets(unet, TARGETS)
    ad = lolscan.load(str(real))
    assert len(names) == 128 and set(ad) == {f"unet.{n}" for n in names}
    for n in names:
        w = unet.get_submodule(n).weight
        assert ad[f"unet.{n}"].shape == tuple(w.shape)


def test_labels_from_an_earlier_build(zoo, tmp_path):
    """--labels-from: the same zoo at training cost, its labels checked on every check_every-th group."""
    from lolscan.errors import InputError
    from lolscan.zoo.known_labels import KnownLabels

    root, recipe, rows, *_ = zoo
    kw = dict(base=LOADED["base"], clip=LOADED["clip"], log=lambda s: None)
    rep = zd.build_diffusion(recipe, tmp_path / "z", labels_from=KnownLabels.load(root / "zoo" / "manifest.jsonl", 2), **kw)
    assert rep.complete and rep.groups_checked == 1 and rep.label_max_diff < 1e-5
    assert read_zoo_rows(tmp_path / "z" / "manifest.jsonl") == rows
    # a manifest of a build stopped after its first group: that group from it, the second labelled here
    (tmp_path / "half.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    rep = zd.build_diffusion(recipe, tmp_path / "zh", labels_from=KnownLabels.load(tmp_path / "half.jsonl", 1), **kw)
    assert rep.complete and rep.groups_run == 2 and rep.groups_checked == 1
    half = read_zoo_rows(tmp_path / "zh" / "manifest.jsonl")
    assert half[:2] == rows[:2] and [r.keys() for r in half] == [r.keys() for r in rows]
    for new, old in zip(half[2:], rows[2:]):  # measured again: CLIP scores to float rounding
        assert {k: v for k, v in new.items() if not k.startswith("clip_score")} == \
            {k: v for k, v in old.items() if not k.startswith("clip_score")}
        assert all(new[k] == pytest.approx(old[k], abs=1e-4) for k in new if k.startswith("clip_score"))

    def tampered(name: str, **change) -> KnownLabels:
        (tmp_path / name).write_text("".join(json.dumps(dict(r, **change) if i == 0 else r) + "\n" for i, r in enumerate(rows)))
        return KnownLabels.load(tmp_path / name, 2)

    # another recipe's draws: refused before anything is trained or written
    with pytest.raises(InputError, match="lr"):
        zd.build_diffusion(recipe, tmp_path / "z2", labels_from=tampered("lr.jsonl", lr=rows[0]["lr"] * 2), **kw)
    assert not (tmp_path / "z2").exists()
    # a label this build does not reproduce (rows[0] is in the first group, which is checked): no row written
    with pytest.raises(InputError, match="clip_score"):
        zd.build_diffusion(recipe, tmp_path / "z3", labels_from=tampered("cs.jsonl", clip_score=rows[0]["clip_score"] + 1), **kw)
    assert read_zoo_rows(tmp_path / "z3" / "manifest.jsonl") == []
    from lolscan.zoo.multilora import MultiLoRALinear

    assert not any(isinstance(m, MultiLoRALinear) for m in LOADED["base"].unet.modules())  # the base is plain again


def test_resume_writes_only_the_missing_rows_of_a_partly_present_group(zoo, tmp_path):
    """A manifest with some rows of a group (a group partly carried from an earlier lease, a manifest cut short):
    the group is trained again and only its missing rows and adapters are written, each row at its place in group
    order; the rows there stand as they are (trained again, a group need not give the same labels), and an id a
    build before this fix wrote twice is read once (the first row)."""
    import shutil

    root, recipe, rows, *_ = zoo
    z = tmp_path / "z"
    shutil.copytree(root / "zoo", z)
    gone, kept = rows[0], rows[1]  # the first group (rows are in group order, two a group)
    marked = dict(kept, clip_score=kept["clip_score"] + 1)  # not what training again gives: it must stand
    twice = dict(rows[2], clip_score=-1.0)
    (z / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [marked, *rows[2:], twice]))
    shutil.rmtree(z / "adapters" / gone["id"])
    kept_bytes = (z / kept["path"]).read_bytes()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the fixture built it: the same row and adapter bytes again
    try:
        rep = zd.build_diffusion(recipe, z, base=LOADED["base"], clip=LOADED["clip"], log=lambda s: None)
    finally:
        torch.set_num_threads(threads)
    assert rep.complete and rep.groups_run == 1 and rep.done == 4
    got = read_zoo_rows(z / "manifest.jsonl")
    assert [r["id"] for r in got] == [r["id"] for r in rows]  # one row an id, in group order
    assert got == [gone, marked, *rows[2:]]  # the missing row as the uninterrupted build wrote it
    assert (z / gone["path"]).read_bytes() == (root / "zoo" / gone["path"]).read_bytes()
    assert (z / kept["path"]).read_bytes() == kept_bytes


def test_image_sources_are_seeded_and_pluggable():
    import numpy as np

    from lolscan.errors import UsageError
    from lolscan.zoo import images

    src = images.get_source("shapes")
    a = src.image("square", "blue", 16, np.random.default_rng(0))
    assert a.shape == (16, 16, 3) and a.dtype == np.float32 and 0 <= a.min() and a.max() <= 1
    assert np.array_equal(a, src.image("square", "blue", 16, np.random.default_rng(0)))
    painted = np.all(np.isclose(a, images.COLOURS["blue"]), axis=2)
    assert 10 < painted.sum() < 16 * 16  # the shape is there, in its colour, on a background
    with pytest.raises(UsageError, match="unknown image source"):
        images.get_source("nope")

    class Flat:
        name, version, classes, styles = "flat", "1", ["a", "b"], ["grey"]

        def __init__(self, level: float = 0.5):
            self.level = level

        def image(self, cls, style, size, rng):
            return np.full((size, size, 3), self.level, dtype=np.float32)

    images.register_source("flat", Flat)
    try:
        assert images.get_source("flat", {"level": 0.25}).image("a", "grey", 4, None).max() == 0.25
        with pytest.raises(UsageError, match="flat"):
            images.get_source("flat", {"colour": 1})
    finally:
        images.SOURCES.pop("flat")



def _adapter() -> tuple:
    """One diffusion adapter's spec and factors (two attention linears), the same in every process."""
    from lolscan.zoo.diffusion_recipe import DiffusionSpec

    spec = DiffusionSpec(index=0, rank=2, alpha=2.0, lr=1e-3, steps=2, batch_size=1, weight_decay=0.0,
                         classes=["circle"], style="red", dataset_size=2, template=0, split="train")
    g = torch.Generator().manual_seed(0)
    factors = {f"down_blocks.0.attentions.0.transformer_blocks.0.attn1.{n}":
               (torch.randn(2, 8, generator=g), torch.randn(8, 2, generator=g)) for n in ("to_q", "to_k")}
    return spec, factors


def test_diffusers_lora_bytes_do_not_depend_on_the_writer(tmp_path, monkeypatch):
    """The same adapter is the same bytes however often and by whichever process it is written: the writer keeps
    __metadata__ in a hash map whose order changes from map to map and process to process; sorted, it does not."""
    import safetensors.torch

    real_save_file = safetensors.torch.save_file
    blobs = []
    for i, flip in enumerate([False, True] * 6):  # metadata handed over in either insertion order
        monkeypatch.setattr(safetensors.torch, "save_file", lambda t, f, metadata=None, flip=flip: real_save_file(
            t, f, metadata=dict(reversed(list(metadata.items()))) if flip and metadata else metadata))
        zd.write_diffusers_lora(tmp_path / f"a{i}", *_adapter(), ["to_q", "to_k"])
        blobs.append((tmp_path / f"a{i}" / zd.WEIGHT_NAME).read_bytes())
    monkeypatch.setattr(safetensors.torch, "save_file", real_save_file)
    n = int.from_bytes(blobs[0][:8], "little")
    meta = json.loads(blobs[0][8:8 + n])["__metadata__"]
    assert list(meta) == sorted(meta) == ["format", "lora_adapter_metadata"]
    assert all(b == blobs[0] for b in blobs)
    script = ("import sys, pathlib; sys.path.insert(0, 'tests'); import test_zoo_diffusion as t\n"
              "t.zd.write_diffusers_lora(pathlib.Path(sys.argv[1]), *t._adapter(), ['to_q', 'to_k'])\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "7"}
    p = subprocess.run([sys.executable, "-c", script, str(tmp_path / "other")], cwd=ROOT, capture_output=True,
                       text=True, timeout=300, env=env, check=False)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "other" / zd.WEIGHT_NAME).read_bytes() == blobs[0]
