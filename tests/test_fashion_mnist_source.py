"""The ``fashion_mnist`` image source against independent truth: tiny IDX files written here byte by byte
(so no Debian package is needed), PIL's nearest resize for the fitting, the dataset's published facts
(60,000 + 10,000 images, 6,000 / 1,000 per class, first training image an ankle boot) and a hand decode of
the installed package's gzip bytes when it is there."""
from __future__ import annotations

import gzip
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from diffusion_toy import write_tiny_fashion_mnist

from lolscan.errors import EXIT_BAD_INPUT, InputError
from lolscan.zoo.images import COLOURS, FASHION_MNIST_DIR, get_source

ROOT = Path(__file__).resolve().parent.parent
NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


@pytest.fixture()
def tiny(tmp_path):
    """30 distinct random 28×28 images, 3 of each class, labels shuffled; images gzipped, labels plain."""
    images, labels = write_tiny_fashion_mnist(tmp_path)
    return tmp_path, images, labels


def test_classes_and_images_are_the_files_images_of_that_class(tiny):
    root, images, labels = tiny
    src = get_source("fashion_mnist", {"data_root": str(root)})
    assert src.classes == NAMES and src.name == "fashion_mnist" and "grey" in src.styles
    rng = np.random.default_rng(0)
    seen = set()
    for k, cls in enumerate(NAMES):
        for _ in range(8):
            img = src.image(cls, "grey", 28, rng)
            assert img.shape == (28, 28, 3) and img.dtype == np.float32 and 0 <= img.min() and img.max() <= 1
            assert np.array_equal(img[..., 0], img[..., 2])  # grey: three equal channels
            raw = np.rint(img[..., 0] * 255).astype(np.uint8)
            hits = [i for i in range(len(images)) if np.array_equal(images[i], raw)]
            assert len(hits) == 1 and labels[hits[0]] == k  # one of the file's images of this class
            seen.add(hits[0])
    assert len(seen) > 15  # draws vary over a class's images
    a = src.image("Bag", "red", 28, np.random.default_rng(3))
    b = src.image("Bag", "red", 28, np.random.default_rng(3))
    assert np.array_equal(a, b)  # the generator decides


def test_fitting_to_the_recipes_size_and_tint(tiny):
    from PIL import Image

    root, images, labels = tiny
    src = get_source("fashion_mnist", {"data_root": str(root)})

    def grey(size, seed=1):
        return np.rint(src.image("Coat", "grey", size, np.random.default_rng(seed))[..., 0] * 255).astype(np.uint8)

    x = grey(28)
    g32 = grey(32)  # padded: 2 px of black each side
    assert np.array_equal(g32[2:30, 2:30], x) and g32.sum() == x.sum()
    g64 = grey(64)  # ×2 nearest, then 4 px each side
    assert np.array_equal(g64[4:60, 4:60], np.asarray(Image.fromarray(x).resize((56, 56), Image.NEAREST)))
    assert g64.sum() == 4 * x.sum()
    assert np.array_equal(grey(16), np.asarray(Image.fromarray(x).resize((16, 16), Image.NEAREST)))
    red = src.image("Coat", "red", 32, np.random.default_rng(1))
    assert np.allclose(red, (g32.astype(np.float32) / 255)[..., None] * np.array(COLOURS["red"], np.float32))


def test_missing_files_exit_3_naming_the_package(tmp_path, monkeypatch):
    monkeypatch.delenv("LOLSCAN_FASHION_MNIST", raising=False)
    src = get_source("fashion_mnist", {"data_root": str(tmp_path / "nowhere")})
    with pytest.raises(InputError) as e:
        src.check()
    assert e.value.exit_code == EXIT_BAD_INPUT == 3
    assert "apt install dataset-fashion-mnist" in str(e.value) and "nowhere" in str(e.value)
    monkeypatch.setenv("LOLSCAN_FASHION_MNIST", str(tmp_path / "elsewhere"))
    assert "elsewhere" in str(pytest.raises(InputError, get_source("fashion_mnist").check).value)
    assert get_source("fashion_mnist", {"data_root": "/x"}).root == Path("/x")  # the recipe's wins


def test_corrupt_idx_is_input_error(tiny):
    root, images, labels = tiny
    (root / "train-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 31) + bytes(30))
    with pytest.raises(InputError, match="header says"):
        get_source("fashion_mnist", {"data_root": str(root)}).image("Bag", "grey", 28, np.random.default_rng(0))


def _recipe_toml(tmp_path: Path, source: str) -> Path:
    recipe = tmp_path / f"{source}.toml"
    recipe.write_text(
        'name = "fm"\nseed = 0\nn_loras = 2\n[base]\nkind = "diffusers"\npath = "no/such-pipeline"\n'
        '[hparams]\nlr = 1e-4\nsteps = 2\nbatch_size = 1\nweight_decay = 0.0\n'
        f'[data]\nsource = "{source}"\ntemplates = ["a photo of a {{cls}}"]\n')
    return recipe


def test_cli_zoo_build_without_the_data_exits_3(tmp_path):
    """--data-root reaches the source (no data there: exit 3 naming that folder and the package), before the
    base model loads (the recipe's base does not exist)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, "-m", "lolscan", "zoo", "build", str(_recipe_toml(tmp_path, "fashion_mnist")),
                        str(tmp_path / "zoo"), "--data-root", str(tmp_path / "nowhere")],
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 3, p.stderr
    text = " ".join(p.stderr.replace("│", " ").split())
    assert "apt install dataset-fashion-mnist" in text and "nowhere" in text and "Traceback" not in p.stderr


def test_data_root_is_refused_for_a_source_without_files(tmp_path):
    from lolscan.errors import UsageError
    from lolscan.zoo.diffusion import build_diffusion
    from lolscan.zoo.diffusion_recipe import load_recipe

    with pytest.raises(UsageError, match="reads no files"):
        build_diffusion(load_recipe(_recipe_toml(tmp_path, "shapes")), tmp_path / "zoo", data_root=str(tmp_path))


REAL = Path(os.environ.get("LOLSCAN_FASHION_MNIST") or FASHION_MNIST_DIR)


@pytest.mark.skipif(not (REAL / "train-images-idx3-ubyte.gz").is_file(), reason="dataset-fashion-mnist not installed")
@pytest.mark.parametrize("split,n", [("train", 60000), ("test", 10000)])
def test_the_installed_debian_package(split, n):
    src = get_source("fashion_mnist", {"split": split})
    src.check()
    images, per_class = src.load()
    assert images.shape == (n, 28, 28) and [len(ix) for ix in per_class] == [n // 10] * 10
    stem = "train" if split == "train" else "t10k"
    raw = gzip.decompress((REAL / f"{stem}-images-idx3-ubyte.gz").read_bytes())
    lab = gzip.decompress((REAL / f"{stem}-labels-idx1-ubyte.gz").read_bytes())
    first = np.frombuffer(raw[16:16 + 784], dtype=np.uint8).reshape(28, 28)
    assert np.array_equal(images[0], first) and lab[8] == 9 and 0 in per_class[9]  # an ankle boot
    img = src.image("Ankle boot", "grey", 32, np.random.default_rng(0))
    assert img.shape == (32, 32, 3) and img[:2].max() == 0 and img.max() > 0.5


def test_shipped_inhouse_fashion_recipe_draws_class_subsets():
    from lolscan.zoo.diffusion_recipe import DiffusionRecipe, load_recipe, sample_specs

    r = load_recipe(ROOT / "recipes" / "inhouse-fashion-classes.toml")
    assert isinstance(r, DiffusionRecipe) and r.base["kind"] == "pixel" and r.data.source == "fashion_mnist"
    src = get_source(r.data.source, r.data.source_options)  # no files read to draw the specs
    assert [p.removeprefix("a photo of a ") for p in r.labels.prompts] == NAMES  # one prompt per class, in order
    specs = sample_specs(r, src)
    assert len(specs) == r.n_loras
    sizes = np.array([len(s.classes) for s in specs])
    assert sizes.min() >= 1 and abs(sizes.mean() - 10 * 0.3) < 0.3  # Bernoulli(0.3) per class, at least one
    for k, c in enumerate(NAMES):  # each class in about 30 % of the subsets
        assert abs(np.mean([c in s.classes for s in specs]) - 0.3) < 0.05
    assert {s.style for s in specs} == {"grey"} and {s.dataset_size for s in specs} <= set(range(4, 65))
