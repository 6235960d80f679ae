"""GL-net (arXiv 2410.04207): GL(r)-equivariant layers on LoRA factors, then an invariant head.

Layer i with factors (Uᵢ, Vᵢ), ΔWᵢ = Uᵢ Vᵢᵀ, has the gauge symmetry (Uᵢ R, Vᵢ R⁻ᵀ), R ∈ GL(r).
Equivariant linear maps act on the left: (Φᵢ Uᵢ, Ψᵢ Vᵢ), Φᵢ ∈ R^{d×n}, Ψᵢ ∈ R^{d×m}. Between
equivariant layers the GL gate scales row j of U by σ(row-sum j of U Vᵀ) and row j of V by
σ(column-sum j of U Vᵀ); both sums come from r-vectors (U (Vᵀ1), V (Uᵀ1)), never from U Vᵀ.
The head reads the invariant d×d products Ũᵢ Ṽᵢᵀ, concatenated over layers (or mean-pooled),
optionally squashed elementwise (asinh) first: a function of invariants is invariant.
Layers of one shape are processed together (bmm over the group's layer axis; see `GLNet._trunk`).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..adapter import Adapter
from .batch import FactorBatch, index_tensor
from .common import MetaNet, _chunks, make_mlp
from .spec import LayerSpec
from .svd import SUMMARIES, all_spectra, batch_spectra, log_magnitudes, median_top, spectral_summaries

POOLS = ("concat", "mean")
# How fit() sets input_scale: "rms" = from the mean square entry of ΔW over all training adapters
# (a few huge adapters then shrink everyone else's); "median" = from the median over training
# adapters of each one's RMS entry (robust to them).
SCALES = ("rms", "median")
SQUASHES = ("none", "asinh")  # elementwise map of the invariants before the head
# Ridge of `GLNet.fit_skip` per labelled row, on standardised features: small against their unit variance,
# enough to make the solve well-posed where features are constant (zero past a rank) or collinear.
SKIP_RIDGE = 1e-3


def gl_gate(U: torch.Tensor, V: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """GL-equivariant nonlinearity on ``U: [..., d, r]``, ``V: [..., d, r]``."""
    row_sums = (U @ V.sum(-2).unsqueeze(-1)).squeeze(-1)  # (U Vᵀ) 1 = U (Vᵀ 1): [..., d]
    col_sums = (V @ U.sum(-2).unsqueeze(-1)).squeeze(-1)  # (U Vᵀ)ᵀ 1 = V (Uᵀ 1): [..., d]
    return U * torch.sigmoid(row_sums).unsqueeze(-1), V * torch.sigmoid(col_sums).unsqueeze(-1)


def _span(indices: tuple[int, ...]) -> tuple[int, int] | None:
    """``(start, stop)`` if ``indices`` are ``start, start+1, …, stop-1``, else None."""
    start = indices[0]
    return (start, start + len(indices)) if indices == tuple(range(start, start + len(indices))) else None


class GLNet(MetaNet):
    """Hyperparameters: ``d`` hidden width, ``depth`` equivariant layers (≥1), ``pool`` concat|mean,
    ``hidden``/``layers``/``dropout`` of the head MLP, ``scale`` rms|median (how `fit` sets the
    per-layer input scale), ``squash`` none|asinh (applied elementwise to the invariants before
    pooling and the head), ``spectral`` (top singular values per layer the head also reads), ``products``
    (False: the head reads the spectral features alone), ``skip`` (with ``products=False``: a linear map
    from the standardised spectral features to the output, added to the head's), ``log_spectra`` (the spectral
    magnitudes read as log(σ / ref): `log_magnitudes`). ``d=1, pool="mean"`` is the paper's CLIP-score head.

    The defaults of ``scale``, ``squash``, ``spectral`` and ``skip`` are the original behaviour and must
    stay so: checkpoint cards and configs written before these keys existed are rebuilt through
    ``build_model(**hparams)``, i.e. through these defaults, and must predict as they did.
    On a zoo where a minority of adapters has far larger ΔW, ``squash="asinh"`` keeps them from
    dominating the head; ``scale="median"`` without a squash lets their invariants grow by the
    same factor (bench/RESULTS.md, "GL-net on heavy-tailed zoos")."""

    arch = "glnet"

    def __init__(
        self,
        spec: LayerSpec,
        out_dim: int,
        *,
        d: int = 32,
        depth: int = 1,
        pool: str = "concat",
        hidden: int = 64,
        layers: int = 2,
        dropout: float = 0.0,
        scale: str = "rms",
        squash: str = "none",
        spectral: int = 0,
        head_norm: bool = False,
        products: bool = True,
        skip: bool = False,
        summaries: bool = False,
        log_spectra: bool = False,
    ):
        if d <= 0 or depth < 1:
            raise ValueError(f"glnet needs d >= 1 and depth >= 1, got d={d}, depth={depth}")
        if pool not in POOLS:
            raise ValueError(f"glnet pool must be one of {POOLS}, got {pool!r}")
        if scale not in SCALES:
            raise ValueError(f"glnet scale must be one of {SCALES}, got {scale!r}")
        if squash not in SQUASHES:
            raise ValueError(f"glnet squash must be one of {SQUASHES}, got {squash!r}")
        if isinstance(spectral, bool) or not isinstance(spectral, int) or spectral < 0:
            raise ValueError(f"glnet spectral must be an int >= 0 (singular values per layer), got {spectral!r}")
        hp = {"d": int(d), "depth": int(depth), "pool": pool, "hidden": int(hidden), "layers": int(layers), "dropout": float(dropout),
              "scale": scale, "squash": squash, "spectral": int(spectral), "head_norm": bool(head_norm),
              "products": bool(products)}
        if bool(skip) and int(spectral) > 0 and not products:
            hp["skip"] = True  # recorded only when on: a card without the key is read by lolscan versions before it
        if bool(summaries) and int(spectral) > 0 and not products:
            # likewise; with the products the head keeps the top singular values alone: on the invariant suite
            # the summaries there cost a cross-layer trace 0.021 R² and a heavy-tailed functional 0.07
            hp["summaries"] = True
        if bool(log_spectra) and int(spectral) > 0:
            hp["log_spectra"] = True  # likewise recorded only when on
        super().__init__(spec, out_dim, hp)
        self.d, self.depth, self.pool, self.scale, self.squash = int(d), int(depth), pool, scale, squash
        self.spectral = int(spectral)
        self.products = bool(products)
        self.skip = bool(self.hparams.get("skip", False))
        self.summaries = bool(self.hparams.get("summaries", False))
        self.log_spectra = bool(self.hparams.get("log_spectra", False))
        # spectral features per layer: the top `spectral` singular values, then `spectral_summaries`
        self._per_layer = self.spectral + (SUMMARIES if self.summaries else 0)
        if not self.products and not self.spectral:
            raise ValueError("glnet with products=False needs spectral >= 1 (the head would read nothing)")
        # Φ init ~ N(0, 1/n): Φ ΔW Ψᵀ entries then have the scale of ΔW's RMS entry, whatever n, m.
        self.phi = nn.ParameterList(
            nn.Parameter(torch.randn(len(g.indices), d, g.n) / math.sqrt(g.n)) for g in spec.groups
        )
        self.psi = nn.ParameterList(
            nn.Parameter(torch.randn(len(g.indices), d, g.m) / math.sqrt(g.m)) for g in spec.groups
        )
        # Hidden equivariant maps, d×d per layer and depth step: [depth-1, L_g, d, d] (none if depth=1).
        hidden_groups = spec.groups if depth > 1 else ()
        self.phi_hidden = nn.ParameterList(
            nn.Parameter(torch.randn(depth - 1, len(g.indices), d, d) * math.sqrt(2.0 / d)) for g in hidden_groups
        )
        self.psi_hidden = nn.ParameterList(
            nn.Parameter(torch.randn(depth - 1, len(g.indices), d, d) * math.sqrt(2.0 / d)) for g in hidden_groups
        )
        # Per-layer scalar multiplying both factors (so ΔWᵢ by its square); scalars commute with
        # GL(r), so this keeps equivariance. Set by fit() so ΔW's RMS entry is ~1 per layer
        # (for the typical training adapter with scale="median", on mean square with "rms").
        self.register_buffer("input_scale", torch.ones(len(spec)))
        head_in = (len(spec) if pool == "concat" else 1) * d * d if self.products else 0
        if self.spectral:
            # Per layer: σⱼ / ref for the top `spectral` singular values (with ``summaries``, then the
            # energy past them / ref and two scale-free shapes of the whole spectrum: `spectral_summaries`),
            # standardised with training statistics (all set by fit()). Functions of the singular
            # values are GL-invariant, so the model stays exactly invariant.
            self.register_buffer("spec_ref", torch.ones(len(spec)))
            self.register_buffer("spec_mean", torch.zeros(len(spec) * self._per_layer))
            self.register_buffer("spec_std", torch.ones(len(spec) * self._per_layer))
            head_in += len(spec) * self._per_layer
            # The products enter the head multiplied by this learned scalar, zero at the start: the
            # model starts as a function of the spectra alone (which 100-1,000 adapters suffice
            # to learn) and takes in the equivariant features only as far as the loss asks for them.
            self.prod_gate = nn.Parameter(torch.zeros(()))
        self.head = make_mlp(head_in, out_dim, hidden, layers, dropout, norm=bool(head_norm))
        if self.skip:
            # The spectral-only head (products=False) plus a linear map from the standardised spectral
            # features straight to the output: labels linear in the singular values (a nuclear norm, σ₁,
            # σ₂) are then exactly representable rather than approximated by GELUs, and training starts
            # it at the least-squares fit (`fit_skip`). Zero here, drawing no random numbers, so on a given
            # seed everything else initialises as without it. A function of singular values: invariance
            # stays exact. Not with the products: started at the fit there, the skip cost a linear
            # functional on a heavy-tailed zoo its R² (0.95 → −1.8, bench/results/glnet_suite.md): the
            # spectra's fit to a label they do not determine is ruled by the few huge adapters.
            self.spec_skip = nn.Parameter(torch.zeros(out_dim, len(spec) * self._per_layer))
        # Constant layout facts of the spec, so the forward pass does no per-call index work:
        # each group's spec positions as a (start, stop) range when contiguous, and the
        # group-order -> spec-order permutation (None when it is the identity).
        self._spans = [_span(g.indices) for g in spec.groups]
        inverse = spec.group_inverse
        self._spec_order = None if inverse == tuple(range(len(spec))) else inverse

    def _trunk(self, batch: FactorBatch) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per group ``(Ũᵀ, Ṽᵀ)`` as ``[L_g·B, r_g, d]`` tensors (layer-major): the equivariant trunk's output.

        Kept transposed so every step is one ``bmm`` over the group's layers on free views: the
        packed inputs ``[L_g, n, B, r]`` read as ``[L_g, B·r, n]``, times ``Φᵀ: [L_g, n, d]``; the
        invariant products then come out of one bmm over ``L_g·B``. No einsum and no copies of the
        inputs: at small model sizes a GPU forward is launch-bound, so it is kept to few ops.
        """
        self._check_batch(batch)
        out = []
        for gi, g in enumerate(batch.groups):
            L, B, r = g.num_layers, g.U.shape[0], g.U.shape[-1]
            scale = self._group_scale(gi, g.U.device)
            # [B, L, n, r] -> [L, B·r, n]: a view for collate()'s layout, a copy otherwise.
            u = torch.bmm(g.U.permute(1, 0, 3, 2).reshape(L, B * r, g.n), self.phi[gi].mT).mul_(scale)
            v = torch.bmm(g.V.permute(1, 0, 3, 2).reshape(L, B * r, g.m), self.psi[gi].mT).mul_(scale)
            for k in range(self.depth - 1):
                # gl_gate on [L, B, d, r] views; the gated factors keep the transposed layout.
                gu, gv = gl_gate(u.view(L, B, r, self.d).mT, v.view(L, B, r, self.d).mT)
                u = torch.bmm(gu.mT.reshape(L, B * r, self.d), self.phi_hidden[gi][k].mT)
                v = torch.bmm(gv.mT.reshape(L, B * r, self.d), self.psi_hidden[gi][k].mT)
            out.append((u.view(L * B, r, self.d), v.view(L * B, r, self.d)))
        return out

    def _group_scale(self, gi: int, device: torch.device) -> torch.Tensor:
        """``input_scale`` of group ``gi``'s layers as ``[L_g, 1, 1]`` (a view when they are a range)."""
        span = self._spans[gi]
        if span is None:
            return self.input_scale.index_select(0, index_tensor(self.spec.groups[gi].indices, device)).view(-1, 1, 1)
        if span[1] - span[0] == len(self.input_scale):
            return self.input_scale.view(-1, 1, 1)
        return self.input_scale[span[0] : span[1]].view(-1, 1, 1)

    def squash_invariants(self, x: torch.Tensor) -> torch.Tensor:
        """The elementwise map (``squash``) the head's inputs go through; identity for "none"."""
        return torch.asinh(x) if self.squash == "asinh" else x

    def _products(self, batch: FactorBatch) -> list[torch.Tensor]:
        """Per group the invariants Ũᵢ Ṽᵢᵀ as ``[L_g, B, d·d]``: one bmm over all layers and adapters."""
        B = batch.batch_size
        return [torch.bmm(u.mT, v).view(-1, B, self.d * self.d) for u, v in self._trunk(batch)]

    def equivariant(self, batch: FactorBatch) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per group ``(Ũ [B, L_g, d, r_g], Ṽ [B, L_g, d, r_g])``: the equivariant trunk's output."""
        B, d = batch.batch_size, self.d
        out = []
        for u, v in self._trunk(batch):
            r = u.shape[1]
            out.append((u.view(-1, B, r, d).permute(1, 0, 3, 2), v.view(-1, B, r, d).permute(1, 0, 3, 2)))
        return out

    def invariants(self, batch: FactorBatch) -> torch.Tensor:
        """``[B, L, d, d]`` in spec order: Ũᵢ Ṽᵢᵀ, unchanged by any GL(r) gauge of the inputs."""
        B, d = batch.batch_size, self.d
        return batch.to_spec_order([p.transpose(0, 1).view(B, -1, d, d) for p in self._products(batch)])

    def forward(self, batch: FactorBatch) -> torch.Tensor:
        if not self.products:  # the spectral invariants alone
            self._check_batch(batch)
            z = self.standardised_spectra(batch)
            return self.head(z) + z @ self.spec_skip.mT if self.skip else self.head(z)
        products = self._products(batch)  # per group [L_g, B, d·d]
        if self.squash != "none":
            products = [self.squash_invariants(p) for p in products]
        B = batch.batch_size
        if self.pool == "mean":  # order-free: no need to put layers in spec order
            x = (products[0] if len(products) == 1 else torch.cat(products)).mean(0)
        elif len(products) == 1:
            x = products[0].transpose(0, 1).reshape(B, -1)  # the one copy, into [B, L·d·d]
        else:
            x = torch.cat([p.transpose(0, 1) for p in products], dim=1)  # [B, L, d·d], group order
            if self._spec_order is not None:
                x = x.index_select(1, index_tensor(self._spec_order, x.device))
            x = x.view(B, -1)
        if self.spectral:
            x = torch.cat([x * self.prod_gate, self.standardised_spectra(batch)], dim=1)
        return self.head(x)

    @torch.no_grad()
    def fit_skip(self, batch: FactorBatch, y: torch.Tensor, mask: torch.Tensor, *, ridge: float = SKIP_RIDGE) -> None:
        """Set the skip of the output columns that ``mask [N, out_dim]`` marks (labelled rows per column) to the
        least-squares fit of what the model's head leaves of ``y [N, out_dim]`` on ``batch``'s N adapters,
        intercept included (added to the head's last bias): the model then starts as the best linear function
        of the standardised spectral features (plus the head at its initialisation) under a squared error, and
        training moves on from there. Ridge ``ridge`` · (labelled rows) on the weights, not the intercept, so
        that features constant over the rows (zero padding past a rank) get weight 0. Columns with fewer than
        two labelled rows are left alone. Needs ``skip``; in float64; leaves train/eval mode as it was."""
        if not self.skip:
            raise ValueError("fit_skip needs a glnet with skip=True")
        was_training = self.training
        self.eval()
        try:  # the head's part of the output (`forward` without the skip), read once on the spectral features
            self._check_batch(batch)
            z = self.standardised_spectra(batch)
            head = self.head(z).double()
        finally:
            self.train(was_training)
        z = z.double()
        x = torch.cat([z, torch.ones_like(z[:, :1])], dim=1)
        penalty = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
        penalty[-1, -1] = 0.0
        for j in range(self.out_dim):
            rows = mask[:, j].to(x.device)
            n = int(rows.sum())
            if n < 2:
                continue
            xj, rj = x[rows], (y[rows, j].to(x) - head[rows, j])
            w = torch.linalg.solve(xj.mT @ xj + ridge * n * penalty, xj.mT @ rj)
            self.spec_skip[j].copy_(w[:-1].to(self.spec_skip))
            self.head[-1].bias[j] += w[-1].to(self.head[-1].bias)

    @torch.no_grad()
    def _raw_spectral(self, batch: FactorBatch) -> torch.Tensor:
        """``[B, L, f]``: the top singular values of every ΔWᵢ in spec order, from r×r cores (`all_spectra`,
        computed once per batch in float64 and shared with the domain score), then with ``summaries`` the
        module's `spectral_summaries`; in the batch's dtype."""
        sv = batch_spectra(batch, self.spectral)
        if self.summaries:  # from the same cached singular values
            sv = torch.cat([sv, spectral_summaries(all_spectra(batch), self.spectral)], dim=-1)
        return sv.to(batch.dtype)

    def _scaled(self, raw: torch.Tensor) -> torch.Tensor:
        """``[B, L·f]`` from `_raw_spectral`'s ``[B, L, f]``: magnitudes (singular values, the energy past
        them) divided by each layer's reference σ₁ (with ``log_spectra`` then their logs), the scale-free shapes as
        they are."""
        mags = self.spectral + (1 if self.summaries else 0)  # the top k, then the energy past them
        ref = self.spec_ref.view(1, -1, 1).to(raw)
        scaled = raw[..., :mags] / ref
        if self.log_spectra:
            scaled = log_magnitudes(scaled)
        return torch.cat([scaled, raw[..., mags:]], dim=-1).flatten(1)

    @torch.no_grad()
    def standardised_spectra(self, batch: FactorBatch) -> torch.Tensor:
        """``[B, L·f]``: `spectral_features` standardised by the training split's statistics, as the head reads them."""
        return (self.spectral_features(batch) - self.spec_mean) / self.spec_std

    def spectral_features(self, batch: FactorBatch) -> torch.Tensor:
        """``[B, L·f]``: per layer σ₁..ₖ / ref (with ``summaries`` then the energy past σₖ / ref and the two
        shapes of `spectral_summaries`), before standardising. (asinh(σ/ref), log ‖ΔW‖_F and
        ‖ΔW‖_F as extra inputs were tried on the invariant suite and cost R², e.g. 0.985 and 0.995
        against 0.999 on a Frobenius norm, 0.81 against 0.99 on heavy tails: bench/RESULTS.md.)
        Read from ``batch.cache`` when `cache_features` put them there (training does, once per split)."""
        cached = batch.cache.get("glnet_spectral")
        if cached is not None:
            return cached
        return self._scaled(self._raw_spectral(batch))

    @torch.no_grad()
    def cache_features(self, batch: FactorBatch, chunk: int = 256) -> FactorBatch:
        """``batch`` with its spectral invariants computed once into ``batch.cache`` (fit() first:
        they depend on the fitted references). Training calls this per split instead of per step."""
        if self.spectral:
            batch.cache.pop("glnet_spectral", None)
            batch.cache["glnet_spectral"] = torch.cat(
                [self.spectral_features(batch.select(slice(i, i + chunk))) for i in range(0, batch.batch_size, chunk)])
        return batch

    @torch.no_grad()
    def _fit_spectral(self, sv: torch.Tensor) -> None:
        """From the training adapters' `_raw_spectral` ``[N, L, f]`` (this model's dtype): ref = median over
        adapters of each layer's non-zero σ₁ (`median_top`), then the features' mean and std."""
        self.spec_ref.copy_(median_top(sv[..., 0]).to(self.spec_ref))
        x = self._scaled(sv).double()  # = spectral_features, per adapter (ref moved to sv's device)
        mean, std = x.mean(0), x.std(0, correction=0)
        std = torch.where(std > 1e-6, std, torch.ones_like(std))
        self.spec_mean.copy_(mean.to(self.spec_mean))
        self.spec_std.copy_(std.to(self.spec_std))

    @torch.no_grad()
    def fit(self, adapters: Sequence[Adapter], *, batch_size: int = 32) -> GLNet:
        """Set ``input_scale`` so each layer's ΔW has RMS entry ~1 over the training adapters.

        ``scale="rms"``: ~1 in mean square over the adapters holding the layer. ``scale="median"``:
        the median, over the adapters holding the layer with a non-zero ΔW, of each one's RMS entry
        is 1, so a minority of adapters with huge updates does not shrink all the others'."""
        adapters = list(adapters)
        if not adapters:
            raise ValueError("fit needs at least one training adapter")
        L = len(self.spec)
        sq = torch.zeros(L, dtype=torch.float64)
        count = torch.zeros(L, dtype=torch.float64)
        per_adapter: list[torch.Tensor] = []  # [B, L] mean square entries, NaN where absent or zero
        spectra: list[torch.Tensor] = []  # [B, L, f] `_raw_spectral`, when the head reads them
        for chunk in _chunks(adapters, batch_size):
            batch = self.collate(chunk)
            if self.spectral:
                spectra.append(self._raw_spectral(batch).cpu())
            per_group = []
            for g in batch.groups:
                u, v = g.U.double(), g.V.double()
                # ‖U Vᵀ‖_F² = Σ (UᵀU) ⊙ (VᵀV): r×r work only.
                fro2 = ((u.transpose(-1, -2) @ u) * (v.transpose(-1, -2) @ v)).sum((-1, -2))
                per_group.append(fro2 / (g.n * g.m))
            ms = batch.to_spec_order(per_group).cpu()  # [B, L] mean square entry
            present = batch.ranks() > 0
            sq += torch.where(present, ms, torch.zeros_like(ms)).sum(0)
            count += present.sum(0)
            if self.scale == "median":
                per_adapter.append(torch.where(present & (ms > 0), ms, torch.full_like(ms, math.nan)))
        if self.scale == "median":
            # median of the per-adapter RMS entries; NaN where no adapter holds a non-zero ΔW
            rms = torch.cat(per_adapter).sqrt().nanquantile(0.5, dim=0)
            count = torch.where(rms.isnan(), torch.zeros_like(count), count)
            rms = rms.nan_to_num(0.0)
        else:
            rms = (sq / count.clamp_min(1)).sqrt()
        scale = torch.where((count > 0) & (rms > 0), rms.clamp_min(1e-30) ** -0.5, torch.ones_like(rms))
        self.input_scale.copy_(scale.to(self.input_scale))
        if self.spectral:
            self._fit_spectral(torch.cat(spectra))
        return self
