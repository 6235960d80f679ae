"""Build a model by architecture name; rebuild one from its stored config."""
from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from .common import MetaNet
from .dense import DenseMLP
from .glnet import GLNet
from .mlp import FactorMLP
from .names import ARCHITECTURES
from .oalign import OAlignMLP
from .spec import LayerSpec
from .svd import SVDMLP

_MODELS: dict[str, type[MetaNet]] = {cls.arch: cls for cls in (GLNet, FactorMLP, OAlignMLP, SVDMLP, DenseMLP)}
assert set(ARCHITECTURES) == set(_MODELS)


def hparam_names(arch: str) -> tuple[str, ...]:
    """The keyword hyperparameters ``arch`` accepts."""
    cls = _model_class(arch)
    params = inspect.signature(cls.__init__).parameters.values()
    return tuple(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)


def _model_class(arch: str) -> type[MetaNet]:
    try:
        return _MODELS[arch]
    except KeyError:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}") from None


def build_model(arch: str, spec: LayerSpec, out_dim: int, **hparams: Any) -> MetaNet:
    """A freshly initialised model; ``model.hparams`` then holds every hyperparameter, defaults included."""
    cls = _model_class(arch)
    known = hparam_names(arch)
    unknown = sorted(set(hparams) - set(known))
    if unknown:
        raise ValueError(f"unknown hyperparameter(s) {', '.join(unknown)} for {arch}; it takes {', '.join(known)}")
    return cls(spec, out_dim, **hparams)


def model_from_config(config: Mapping[str, Any]) -> MetaNet:
    """Inverse of ``model.config()`` (weights not included: load the state_dict afterwards)."""
    try:
        arch, out_dim, hparams, spec = config["arch"], config["out_dim"], config["hparams"], config["spec"]
    except (KeyError, TypeError):
        raise ValueError("model config needs arch, out_dim, hparams and spec") from None
    return build_model(arch, LayerSpec.from_json(spec), out_dim, **dict(hparams))
