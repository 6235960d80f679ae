"""Packaging beyond what pyproject.toml can say: the bundled checkpoints travel inside the wheel.

The checkpoints live at the top of the repository in ``models/`` (scripts and the design card
rely on that). At build time setuptools maps that folder onto the package ``lolscan._models``, so
a wheel carries ``lolscan/_models/<name>/{card.json, model.safetensors (or its shards and index), domain.safetensors,
pred_vs_true.png}`` and
`lolscan.checkpoint.bundled_dir` finds them in an installed wheel as well as in a checkout. The
example LoRAs (``models/examples*``) stay in the repository only.
"""
from setuptools import find_packages, setup

CHECKPOINT_FILES = ["*/card.json", "*/model.safetensors", "*/model-*-of-*.safetensors", "*/model.safetensors.index.json",
                    "*/domain.safetensors", "*/pred_vs_true.png"]

setup(
    packages=find_packages(include=["lolscan", "lolscan.*"]) + ["lolscan._models"],
    package_dir={"lolscan._models": "models"},
    package_data={"lolscan": ["data/*", "data/**/*"], "lolscan._models": CHECKPOINT_FILES},
)
