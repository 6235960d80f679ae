"""kohya/LyCORIS LoKr on Conv1d/Conv2d layers, read end to end from safetensors files.

The reference below is written from LyCORIS's own weight rebuild (KohakuBlueleaf/LyCORIS,
``lycoris/modules/lokr.py:LokrModule.get_weight`` and ``lycoris/functional/lokr.py:make_kron``,
``lycoris/functional/general.py:rebuild_tucker``), not from lolscan's code:

* W₁ = ``lokr_w1`` or ``lokr_w1_a @ lokr_w1_b`` (always 2-D, [a, c]);
* W₂ = ``lokr_w2`` as stored ([b, d, *k]), or ``rebuild_tucker(t2, w2_a, w2_b)`` =
  ``einsum('i j ..., i p, j r -> p r ...')`` ([b, d, *k]), or ``w2_a @ w2_b`` (2-D, [b, d·Πk]);
* ``make_kron``: W₁ gets trailing singleton dims until it has W₂'s ndim, then
  ``torch.kron(W₁, W₂) * scale``; ``get_weight`` views the result as the conv weight [out, in, *k];
* scale = alpha / lora_dim (alpha None or 0 ⇒ alpha = lora_dim), and 1 when both W₁ and W₂ are
  stored full, whatever alpha says.

lolscan reports ΔW = U Vᵀ as ``weight.reshape(out, -1)`` (README, "What it reads"), so
``layer.delta().reshape(out, in, *k)`` must equal the reference conv weight. (When these tests
were written, the same cases were also compared, in a scratch run outside the suite, with
``LokrModule.get_weight`` of the lycoris-lora 4.1.3 wheel on real nn.Conv1d/nn.Conv2d modules:
equal to float32 rounding, same scales. lycoris-lora is not a test dependency.)
"""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import lolscan

PREFIX = "lora_unet_down_blocks_0_resnets_0_"


def lycoris_weight(t: dict[str, torch.Tensor], shape: tuple[int, ...]) -> torch.Tensor:
    """ΔW as LyCORIS builds it (float64), in the conv weight layout ``shape``."""
    t = {k: v.double() for k, v in t.items()}
    full_w1, full_w2 = "lokr_w1" in t, "lokr_w2" in t
    w1 = t["lokr_w1"] if full_w1 else t["lokr_w1_a"] @ t["lokr_w1_b"]
    if full_w2:
        w2 = t["lokr_w2"]
    elif "lokr_t2" in t:
        w2 = torch.einsum("i j ..., i p, j r -> p r ...", t["lokr_t2"], t["lokr_w2_a"], t["lokr_w2_b"])
    else:
        w2 = t["lokr_w2_a"] @ t["lokr_w2_b"]
    # lora_dim as LyCORIS trained it: the inner size of whichever factor is decomposed
    lora_dim = t["lokr_w1_b"].shape[0] if not full_w1 else (t["lokr_w2_b"].shape[0] if not full_w2 else None)
    alpha = float(t["alpha"]) if "alpha" in t else None
    if full_w1 and full_w2:
        scale = 1.0
    else:
        alpha = lora_dim if alpha is None or alpha == 0 else alpha
        scale = alpha / lora_dim
    while w1.dim() < w2.dim():
        w1 = w1.unsqueeze(-1)
    return (torch.kron(w1, w2.contiguous()) * scale).view(shape)


def load_one(tmp_path, t: dict[str, torch.Tensor], module: str = "conv1"):
    save_file({PREFIX + module + "." + k: v.contiguous() for k, v in t.items()}, tmp_path / "lokr.safetensors",
              metadata={"ss_network_module": "lycoris.kohya", "ss_network_args": json.dumps({"algo": "lokr"})})
    adapter = lolscan.load(str(tmp_path / "lokr.safetensors"))
    assert adapter.format == "lycoris"
    (layer,) = adapter.values()
    assert layer.algo == "lokr"
    return layer


def check(layer, t, shape):
    ref = lycoris_weight(t, shape)
    assert tuple(layer.shape) == shape and layer.kind == "conv"
    got = layer.delta().double().reshape(shape)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))
    # ...and the same convolution output (the layout is the conv weight's, not just the same numbers)
    x = torch.randn(2, shape[1], *[k + 4 for k in shape[2:]], dtype=torch.float64)
    conv = F.conv2d if len(shape) == 4 else F.conv1d
    torch.testing.assert_close(conv(x, got), conv(x, ref), rtol=1e-5, atol=1e-4 * float(ref.abs().max()))


# a, c: W₁ [out_l, in_m]; b, d: W₂ [out_k, in_n]; out = a·b, in = c·d
A, C, B, D = 2, 3, 4, 5


@pytest.mark.parametrize("kernel", [(3, 3), (3, 2), (1, 3)])
@pytest.mark.parametrize("alpha", [None, 4.0])
def test_conv2d_full_w1_full_4d_w2_scale_one(tmp_path, kernel, alpha):
    """LyCORIS ``use_w1 and use_w2`` ⇒ alpha = lora_dim, scale 1 whatever the stored alpha."""
    torch.manual_seed(0)
    t = {"lokr_w1": torch.randn(A, C), "lokr_w2": torch.randn(B, D, *kernel)}
    if alpha is not None:
        t["alpha"] = torch.tensor(alpha)
    layer = load_one(tmp_path, t)
    assert layer.scale == 1.0
    check(layer, t, (A * B, C * D, *kernel))


def test_conv2d_decomposed_w1_full_4d_w2(tmp_path):
    """``decompose_both`` with a large rank: W₁ = w1_a @ w1_b, W₂ stored full; scale alpha / r."""
    torch.manual_seed(1)
    r = 2
    t = {"lokr_w1_a": torch.randn(A, r), "lokr_w1_b": torch.randn(r, C), "lokr_w2": torch.randn(B, D, 3, 3),
         "alpha": torch.tensor(3.0)}
    layer = load_one(tmp_path, t)
    assert layer.scale == pytest.approx(1.5)
    check(layer, t, (A * B, C * D, 3, 3))


@pytest.mark.parametrize("kernel", [(3, 3), (3, 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_conv2d_tucker_t2(tmp_path, kernel, dtype):
    """``use_tucker``: lokr_t2 [r, r, kh, kw], lokr_w2_a [r, b], lokr_w2_b [r, d]; scale alpha / r."""
    torch.manual_seed(2)
    r = 3
    t = {"lokr_w1": torch.randn(A, C), "lokr_t2": torch.randn(r, r, *kernel), "lokr_w2_a": torch.randn(r, B),
         "lokr_w2_b": torch.randn(r, D), "alpha": torch.tensor(1.5)}
    t = {k: v.to(dtype) for k, v in t.items()}
    layer = load_one(tmp_path, t)
    assert layer.scale == pytest.approx(0.5)
    assert layer.rank == min(A, C) * r
    check(layer, t, (A * B, C * D, *kernel))


def test_conv2d_tucker_t2_decomposed_w1(tmp_path):
    torch.manual_seed(3)
    r = 2
    t = {"lokr_w1_a": torch.randn(A, r), "lokr_w1_b": torch.randn(r, C), "lokr_t2": torch.randn(r, r, 3, 3),
         "lokr_w2_a": torch.randn(r, B), "lokr_w2_b": torch.randn(r, D), "alpha": torch.tensor(8.0)}
    layer = load_one(tmp_path, t)
    assert layer.scale == pytest.approx(4.0)
    check(layer, t, (A * B, C * D, 3, 3))


@pytest.mark.parametrize("w1", ["full", "decomposed"])
def test_conv1d_full_3d_w2(tmp_path, w1):
    """LyCORIS LoKr supports conv1d: a full lokr_w2 is [b, d, k] and make_kron unsqueezes W₁ to
    [a, c, 1] (so not PEFT's Conv1d layout, where torch.kron sees W₁ as [1, a, c])."""
    torch.manual_seed(4)
    k, r = 3, 2
    t = {"lokr_w2": torch.randn(B, D, k), "alpha": torch.tensor(5.0)}
    if w1 == "full":
        t["lokr_w1"] = torch.randn(A, C)
    else:
        t["lokr_w1_a"], t["lokr_w1_b"] = torch.randn(A, r), torch.randn(r, C)
    layer = load_one(tmp_path, t)
    assert layer.scale == (1.0 if w1 == "full" else pytest.approx(2.5))
    check(layer, t, (A * B, C * D, k))


def test_conv1d_tucker_t2(tmp_path):
    """Conv1d Tucker: lokr_t2 [r, r, k] (LyCORIS allocates [r, r, *kernel_size])."""
    torch.manual_seed(5)
    k, r = 5, 2
    t = {"lokr_w1": torch.randn(A, C), "lokr_t2": torch.randn(r, r, k), "lokr_w2_a": torch.randn(r, B),
         "lokr_w2_b": torch.randn(r, D), "alpha": torch.tensor(1.0)}
    layer = load_one(tmp_path, t)
    assert layer.scale == pytest.approx(0.5)
    check(layer, t, (A * B, C * D, k))


def test_conv2d_flat_w2b_same_matrix(tmp_path):
    """No Tucker, W₂ decomposed: LyCORIS stores lokr_w2_b [r, d·kh·kw] (2-D), so the kernel size is
    not in the file; the flattened update is still the conv weight's ``reshape(out, -1)``."""
    torch.manual_seed(6)
    r, kernel = 2, (3, 3)
    t = {"lokr_w1": torch.randn(A, C), "lokr_w2_a": torch.randn(B, r), "lokr_w2_b": torch.randn(r, D * 9),
         "alpha": torch.tensor(1.0)}
    layer = load_one(tmp_path, t)
    ref = lycoris_weight(t, (A * B, C * D, *kernel)).reshape(A * B, -1)
    torch.testing.assert_close(layer.delta().double(), ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


@pytest.mark.parametrize("module", ["conv1", "conv2"])
def test_2023_layout_unet_3x3_conv_is_a_conv_with_its_kernel(tmp_path, module):
    """LyCORIS's 2023 LoKr layout stores a 3×3 conv's decomposed W₂ flat (lokr_w2_b [r, d·9]); on a UNet
    module that is a 3×3 conv in every SD UNet the layer is a conv [out, in, 3, 3] (not linear out×in·9),
    and its ΔW is LyCORIS's conv weight: same numbers, same convolution output."""
    torch.manual_seed(7)
    r = 2
    t = {"lokr_w1": torch.randn(A, C), "lokr_w2_a": torch.randn(B, r), "lokr_w2_b": torch.randn(r, D * 9), "alpha": torch.tensor(3.0)}
    layer = load_one(tmp_path, t, module=module)
    assert layer.scale == pytest.approx(1.5)
    check(layer, t, (A * B, C * D, 3, 3))


def test_2023_layout_elsewhere_keeps_the_flat_shape(tmp_path):
    """A module that is no 3×3 conv of the UNet (here the 1×1 conv_shortcut) keeps the shape the file gives."""
    torch.manual_seed(8)
    t = {"lokr_w1": torch.randn(A, C), "lokr_w2_a": torch.randn(B, 2), "lokr_w2_b": torch.randn(2, D * 9), "alpha": torch.tensor(2.0)}
    layer = load_one(tmp_path, t, module="conv_shortcut")
    assert layer.shape == (A * B, C * D * 9) and layer.kind == "linear"
