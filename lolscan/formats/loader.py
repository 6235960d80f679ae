"""Format detection and the single entry point `load_adapter` (re-exported by `lolscan.formats`)."""
from __future__ import annotations

from pathlib import Path

from ..adapter import Adapter
from ..errors import InputError, UnsupportedFormat
from .tensorfile import TensorFile, read_tensor_file
from . import cloneofsimo, diffusers, kohya, peft
from .scheme import scheme_of

FORMATS = ("peft", "kohya", "lycoris", "diffusers", "cloneofsimo")
# the file diffusers' `save_lora_weights(folder)` writes and `load_lora_weights(folder)` reads
DIFFUSERS_WEIGHT_NAME = "pytorch_lora_weights.safetensors"


def from_tensor_file(tf: TensorFile, *, source: str | None = None) -> Adapter:
    """Detect the key scheme of a loaded tensor file and read it (detection order of docs/FORMATS.md §2)."""
    source = source or tf.path
    if not tf.tensors:
        raise UnsupportedFormat("holds no tensors", path=tf.path)
    scheme = scheme_of(tf.tensors, tf.metadata)
    if scheme == "kohya":
        return kohya.from_tensors(tf, source=source)
    if scheme == "cloneofsimo":
        return cloneofsimo.from_tensors(tf, source=source)
    if scheme == "diffusers":
        return diffusers.from_tensors(tf, source=source)
    # base_model.model. keys, or any other PEFT-style dotted keys (e.g. saved without that wrapper).
    return peft.from_tensors(tf, None, source=source)


def load_path(path: Path, *, allow_pickle: bool = False) -> Adapter:
    if path.is_dir():
        if peft.is_peft_folder(path):
            return peft.load_peft_folder(path, allow_pickle=allow_pickle)
        if (path / DIFFUSERS_WEIGHT_NAME).is_file():  # a diffusers LoRA folder, as pipelines load it
            return load_path(path / DIFFUSERS_WEIGHT_NAME, allow_pickle=allow_pickle)
        raise InputError(f"is a folder without adapter_config.json or {DIFFUSERS_WEIGHT_NAME} (not a PEFT or "
                         "diffusers LoRA folder)", path=path)
    if not path.exists():
        raise InputError("no such file or folder", path=path)
    tf = read_tensor_file(path, allow_pickle=allow_pickle)
    sibling = path.parent / peft.CONFIG_NAME
    if path.name in peft.WEIGHT_NAMES and sibling.is_file():
        config = peft.read_config(sibling)
        peft.check_peft_type(config, sibling)
        return peft.from_tensors(tf, config, source=str(path))
    return from_tensor_file(tf)


def load_adapter(target: str | Path, *, allow_pickle: bool = False, **source_options) -> Adapter:
    """Read a local file/folder, or a remote URI (hf://, civitai:, …) through lolscan.sources."""
    text = str(target)
    from ..sources import is_remote, resolve

    if is_remote(text):
        resolved = resolve(text, **source_options)
        adapter = load_path(resolved.path, allow_pickle=allow_pickle)
        adapter.source = resolved.uri
        adapter.metadata["source"] = resolved.metadata
        return adapter
    return load_path(Path(text).expanduser(), allow_pickle=allow_pickle)
