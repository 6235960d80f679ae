"""What a checkpoint predicts: one `Target` per label column, with its kind and encoding.

Kinds: ``regression`` (one standardised output), ``binary`` (one logit), ``multiclass``
(one logit per class, softmax), ``multilabel`` (one logit per label, independent sigmoids) and
``count``: a multilabel head trained on another column's label sets (``source``) whose value is
``per_label`` × the number of labels called present. A class-subset zoo's dataset size is such a count
(a fixed number of images a class): a regression or a class over the size reads it far worse than the
classes it is made of do (bench/RESULTS.md, "The ensemble size chosen on validation").
A target knows how to turn raw column values into training tensors, how to compute its loss,
and how to turn model outputs back into user-facing predictions.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import UsageError

if TYPE_CHECKING:  # torch is imported where it is used: `lolscan --help`, `models` start without it
    import torch

KINDS = ("regression", "binary", "multiclass", "multilabel", "count")
LABEL_SETS = ("multilabel", "count")  # kinds whose outputs are independent per-label sigmoids
# Regression: what is standardised. "none": the value; "log": log(value), for positive labels spread over
# orders of magnitude (`lolscan.training` tries it where validation can choose; see LOG_TAIL_RATIO there).
TRANSFORMS = ("none", "log")
MAX_LOG = 88.0  # a log-space prediction is capped here before exp (float32 overflows just above 88.7)
MAX_CLASSES = 50  # more distinct strings than this is not inferred as multiclass
_TRUE = {"1", "true", "yes"}
_FALSE = {"0", "false", "no"}


@dataclass
class Target:
    name: str
    kind: str
    labels: list[str] = field(default_factory=list)  # class / label names (binary: [negative, positive])
    units: str = ""
    mean: float = 0.0  # regression normalisation (training split)
    std: float = 1.0
    offset: int = 0  # this target's slice of the model output
    width: int = 1
    # Fitted on the validation split after training (lolscan.evaluation.calibration); the defaults are what
    # cards written before these fields existed mean: raw probabilities and no interval.
    temperature: float = 1.0  # classes: logits are divided by it
    interval: float | None = None  # regression: split-conformal half-width, in units
    interval_level: float = 0.9
    # Regression: "log" standardises log(value) (mean/std above are then of the logs) and its interval is
    # fitted on log residuals: [value·e^−q, value·e^q]. Cards written before the field existed mean "none".
    transform: str = "none"
    # Count: the column of label sets it is trained on, and what one label called present is worth.
    source: str = ""
    per_label: float = 1.0
    # Regression: the range of the training split's labels (user units); `scores` keeps predictions inside it,
    # as trees do. A metanetwork extrapolates linearly past the LoRAs it has seen: on the Qwen v3 zoo one
    # test LoRA more damaged than any in training was predicted at ARC-C accuracy −0.12 (true 0.225), a
    # quarter of the split's R² (bench/RESULTS.md, "Predictions kept within the training labels' range").
    # None (cards written before the fields existed, a target fitted on its log, whose heavy tail's training
    # maximum is no bound, or `lolscan train --no-clamp`): not clamped.
    low: float | None = None
    high: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UsageError(f"target {self.name!r}: unknown kind {self.kind!r} (expected one of {', '.join(KINDS)})")
        if self.transform not in TRANSFORMS:
            raise UsageError(f"target {self.name!r}: unknown transform {self.transform!r} (expected one of {', '.join(TRANSFORMS)})")
        if self.transform != "none" and self.kind != "regression":
            raise UsageError(f"target {self.name!r}: transform {self.transform!r} is for regression targets, not {self.kind}")
        if self.kind == "count" and not (self.source and isinstance(self.per_label, (int, float))
                                         and math.isfinite(self.per_label) and self.per_label > 0):
            raise UsageError(f"target {self.name!r}: a count needs a source column and a positive per_label")

    @property
    def out_slice(self) -> slice:
        return slice(self.offset, self.offset + self.width)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        if self.transform == "none":  # what a card without the field means: untransformed cards stay as they were
            del data["transform"]
        if self.kind != "count":  # the same for the count's fields
            del data["source"], data["per_label"]
        if self.low is None and self.high is None:  # and for the range
            del data["low"], data["high"]
        return data

    @property
    def column(self) -> str:
        """The manifest column this target is trained and scored on (a count's source, else its name)."""
        return self.source if self.kind == "count" else self.name

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Target:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)

    # ---- encoding -------------------------------------------------------------------------
    def encode(self, values: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw column values -> (y, mask). y is [N, width] float ([N, 1] class index for multiclass);
        mask [N] is False where the value is missing.

        Regression values are standardised with this target's mean/std.
        """
        import torch

        n = len(values)
        y = torch.zeros(n, 1 if self.kind == "multiclass" else self.width)  # multiclass: the class index
        mask = torch.zeros(n, dtype=torch.bool)
        for i, v in enumerate(values):
            if self.missing(v):
                continue
            mask[i] = True
            if self.kind == "regression":
                y[i, 0] = (self.forward(to_float(v, self.name)) - self.mean) / self.std
            elif self.kind == "binary":
                y[i, 0] = float(self._binary_index(v))
            elif self.kind == "multiclass":
                y[i, 0] = float(self._class_index(v))
            else:
                for label in split_set(v):
                    y[i, self._class_index(label)] = 1.0
        return y, mask

    def true_values(self, values: Sequence[Any]) -> list[Any]:
        """Raw values normalised to what `decode` reports (floats, label names, label lists)."""
        out: list[Any] = []
        for v in values:
            if self.missing(v):
                out.append(None)
            elif self.kind == "regression":
                out.append(to_float(v, self.name))
            elif self.kind == "binary":
                out.append(self.labels[self._binary_index(v)])
            elif self.kind == "multiclass":
                out.append(self.labels[self._class_index(v)])
            elif self.kind == "count":
                out.append(self.count_value(len(split_set(v))))
            else:
                out.append(split_set(v))
        return out

    def count_value(self, n: int) -> float | int:
        """A count target's value for ``n`` labels present (an int where per_label is whole)."""
        v = n * self.per_label
        return int(v) if float(self.per_label).is_integer() else v

    def missing(self, v: Any) -> bool:
        """Multilabel, count: an empty cell is the empty label set; only null/NaN is missing."""
        if self.kind in LABEL_SETS:
            return v is None or (isinstance(v, float) and math.isnan(v))
        return is_missing(v)

    def _binary_index(self, v: Any) -> int:
        s = label_str(v)
        if s in self.labels:
            return self.labels.index(s)
        low = s.lower()
        if self.labels == ["0", "1"] and (low in _TRUE or low in _FALSE):
            return 1 if low in _TRUE else 0
        try:
            f = float(s)
        except ValueError:
            f = math.nan
        if self.labels == ["0", "1"] and f in (0.0, 1.0):
            return int(f)
        raise UsageError(f"target {self.name!r}: value {s!r} is not one of {self.labels}")

    def _class_index(self, v: Any) -> int:
        s = label_str(v)
        if s not in self.labels:
            raise UsageError(f"target {self.name!r}: label {s!r} was not seen in training (labels: {', '.join(self.labels)})")
        return self.labels.index(s)

    # ---- the regression transform -----------------------------------------------------------
    def forward(self, x: float) -> float:
        """A regression value in user units -> the space it is standardised in (itself, or its log)."""
        if self.transform == "none":
            return x
        if not x > 0:
            raise UsageError(f"target {self.name!r} is log-transformed (a checkpoint trained on positive values) "
                             f"and needs values > 0, got {x!r}")
        return math.log(x)

    def to_units(self, z: torch.Tensor) -> torch.Tensor:
        """Standardised values (model outputs, or `encode`'s y) -> user units."""
        v = z * self.std + self.mean
        return v if self.transform == "none" else v.clamp(max=MAX_LOG).exp()

    def residuals(self, pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
        """Prediction minus truth (both in user units) in the space the interval is fitted in: the
        values' own, or their logs (log pred − log true) for a log target."""
        if self.transform == "none":
            return pred - true
        return pred.double().log() - true.double().log()

    def bounds(self, value: float) -> tuple[float, float] | None:
        """The calibrated interval around one prediction (user units), or None without one:
        [v − q, v + q]; for a log target [exp(log v − q), exp(log v + q)] = [v·e^−q, v·e^q]."""
        q = self.interval
        if q is None or not math.isfinite(q):
            return None
        if self.transform == "none":
            return value - q, value + q
        return value * math.exp(-q), value * math.exp(min(q, 700.0))  # 700: exp stays a float

    def covers(self, value: float, true: float) -> bool:
        """Whether the interval `bounds` gives around ``value`` holds ``true``."""
        if self.transform == "none":
            return abs(value - true) <= self.interval  # the form coverage has always been counted in
        b = self.bounds(value)
        return b is not None and b[0] <= true <= b[1]

    # ---- training -------------------------------------------------------------------------
    def loss(self, out: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean loss over the rows where this target is labelled (0 if none are)."""
        import torch.nn.functional as F

        if not bool(mask.any()):
            return out.sum() * 0.0
        o, t = out[mask][:, self.out_slice], y[mask]
        if self.kind == "regression":
            return F.mse_loss(o, t)
        if self.kind in ("binary", *LABEL_SETS):
            return F.binary_cross_entropy_with_logits(o, t)
        return F.cross_entropy(o, t[:, 0].long())

    def row_losses(self, out: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Each row's term of `loss` in float64 (0 where the target is unlabelled): `loss` is their mean over the
        labelled rows. Apart from `loss`, which training calls with its fused means so that runs replay exactly."""
        import torch
        import torch.nn.functional as F

        o = out[:, self.out_slice].double()
        if self.kind == "regression":
            per = ((o - torch.nan_to_num(y.double())) ** 2).mean(1)
        elif self.kind in ("binary", *LABEL_SETS):
            per = F.binary_cross_entropy_with_logits(o, torch.nan_to_num(y.double()), reduction="none").mean(1)
        else:
            per = F.cross_entropy(o, torch.nan_to_num(y[:, 0]).long().clamp(0, self.width - 1), reduction="none")
        return torch.where(mask.bool(), per, torch.zeros_like(per))

    # ---- prediction -----------------------------------------------------------------------
    def scores(self, out: torch.Tensor) -> torch.Tensor:
        """Model outputs [N, *] -> this target's scores in user units: values or probabilities."""
        import torch

        o = out[:, self.out_slice].float()
        if self.kind == "regression":
            v = self.to_units(o)
            return v if self.low is None and self.high is None else v.clamp(min=self.low, max=self.high)
        if self.temperature != 1.0:
            o = o / self.temperature
        if self.kind == "multiclass":
            return torch.softmax(o, dim=1)
        return torch.sigmoid(o)

    def decode(self, scores_row: Sequence[float]) -> dict[str, Any]:
        """One row of `scores` -> {"value": …, "probabilities": {...}} for reports."""
        s = [float(x) for x in scores_row]
        if self.kind == "regression":
            b = self.bounds(s[0])
            if b is None:
                return {"value": s[0]}
            return {"value": s[0], "interval": list(b), "interval_level": self.interval_level}
        if self.kind == "binary":
            p = s[0]
            return {"value": self.labels[1] if p >= 0.5 else self.labels[0], "probability": p}
        probs = dict(zip(self.labels, s))
        if self.kind == "multiclass":
            best = max(range(len(s)), key=lambda i: s[i])
            return {"value": self.labels[best], "probability": s[best], "probabilities": probs}
        called = [lab for lab, p in probs.items() if p >= 0.5]
        if self.kind == "count":
            return {"value": self.count_value(len(called)), "labels": called, "probabilities": probs}
        return {"value": called, "probabilities": probs}

    def describe(self) -> str:
        if self.kind == "count":
            each = f"{self.per_label:g}" + (f" {self.units}" if self.units else "")
            return f"{self.name} (count: {each} for each {self.source} label called: {', '.join(self.labels)})"
        if self.kind == "regression":
            extra = (", " + self.units if self.units else "") + (", fitted on its log" if self.transform == "log" else "")
            if self.low is not None and self.high is not None:
                extra += f", predictions within {self.low:g}–{self.high:g}"
            return f"{self.name} (regression{extra})"
        return f"{self.name} ({self.kind}: {', '.join(self.labels)})"


# ---- raw value helpers ----------------------------------------------------------------------
def is_missing(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    return isinstance(v, str) and v.strip() in ("", "NA", "N/A", "nan", "NaN", "null", "None")


def label_str(v: Any) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v).strip()


def to_float(v: Any, name: str) -> float:
    if isinstance(v, bool):
        return float(v)
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise UsageError(f"target {name!r}: value {v!r} is not a number (regression)") from None
    if not math.isfinite(f):
        raise UsageError(f"target {name!r}: value {v!r} is not finite")
    return f


def split_set(v: Any) -> list[str]:
    """A multilabel cell: a JSON list, or a '|'-separated string ('' = no labels)."""
    if isinstance(v, (list, tuple)):
        items = [label_str(x) for x in v]
    else:
        s = str(v).strip()
        items = [x.strip() for x in s.split("|")] if s else []
    return sorted({x for x in items if x})


def _is_number(v: Any) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, (int, float)):
        return True
    try:
        float(str(v))
        return True
    except ValueError:
        return False


def infer_kind(name: str, values: Sequence[Any]) -> str:
    """floats -> regression; 0/1 (or true/false) -> binary; lists or '|' sets -> multilabel;
    a few distinct strings -> multiclass."""
    present = [v for v in values if not is_missing(v)]
    if not present:
        raise UsageError(f"target column {name!r} has no values")
    if any(isinstance(v, (list, tuple)) for v in present) or any(isinstance(v, str) and "|" in v for v in present):
        return "multilabel"
    if any(isinstance(v, bool) for v in present):
        return "binary"
    if all(_is_number(v) for v in present):
        return "binary" if {float(v) for v in present} <= {0.0, 1.0} else "regression"
    if {label_str(v).lower() for v in present} <= _TRUE | _FALSE:
        return "binary"
    distinct = {label_str(v) for v in present}
    if len(distinct) <= MAX_CLASSES and len(distinct) < max(2, len(present)):
        return "multiclass"
    raise UsageError(
        f"target column {name!r}: cannot infer its kind ({len(distinct)} distinct text values); "
        f"pass --kind {name}=multiclass or another kind"
    )


def parse_count(name: str, spec: str) -> tuple[str, float]:
    """``--count NAME=SOURCE[:PER_LABEL]``'s right side as ``(source, per_label)`` (per_label 1 when left out)."""
    source, colon, per = spec.partition(":")
    try:
        k = float(per) if colon else 1.0
    except ValueError:
        k = math.nan
    if not source.strip() or not (0 < k < math.inf):
        raise UsageError(f"--count {name}={spec}: expected NAME=COLUMN[:PER_LABEL], e.g. dataset_size=classes:7")
    return source.strip(), k


def make_target(name: str, values: Sequence[Any], kind: str | None = None, units: str = "",
                count: tuple[str, float] | None = None) -> Target:
    """Build a target from a column's values (kind inferred unless given). Normalisation is fitted later.
    ``count=(source, per_label)``: a count target; ``values`` are then the source column's label sets."""
    if count is not None:
        if kind not in (None, "count"):
            raise UsageError(f"--kind {name}={kind} and --count {name}=…: a count is its own kind")
        sets = [v for v in values if not is_missing(v)]
        if sets and all(_is_number(v) for v in sets):
            raise UsageError(f"--count {name}={count[0]}:…: column {count[0]!r} holds numbers, not label sets "
                             f"(lists, or labels joined by '|')")
        kind = "count"
    elif kind == "count":
        raise UsageError(f"--kind {name}=count: say what it counts with --count {name}=COLUMN:PER_LABEL")
    kind = kind or infer_kind(name, values)
    if kind not in KINDS:
        raise UsageError(f"--kind {name}={kind}: unknown kind (expected one of {', '.join(KINDS)})")
    present = [v for v in values if not is_missing(v)]
    if not present:
        raise UsageError(f"target column {name!r} has no values")
    if kind == "regression":
        for v in present:
            to_float(v, name)
        return Target(name, kind, units=units)
    if kind == "binary":
        distinct = sorted({label_str(v) for v in present})
        low = {d.lower() for d in distinct}
        numeric01 = all(_is_number(d) and float(d) in (0.0, 1.0) for d in distinct)
        if numeric01 or low <= (_TRUE | _FALSE):
            labels = ["0", "1"]
        elif len(distinct) <= 2:
            labels = distinct if len(distinct) == 2 else [distinct[0], f"not {distinct[0]}"]
        else:
            raise UsageError(f"target {name!r}: binary needs two values, found {len(distinct)} ({', '.join(distinct[:5])}…)")
        return Target(name, kind, labels=labels, units=units)
    if kind == "multiclass":
        labels = sorted({label_str(v) for v in present}, key=_natural_key)
        if len(labels) < 2:
            raise UsageError(f"target {name!r}: multiclass needs at least two classes, found {labels}")
        return Target(name, kind, labels=labels, width=len(labels), units=units)
    labels = sorted({x for v in present for x in split_set(v)}, key=_natural_key)
    if not labels:
        raise UsageError(f"target {name!r}: {'column ' + repr(count[0]) + ' (its count source)' if count else 'multilabel column'} has no labels")
    if count is not None:
        return Target(name, kind, labels=labels, width=len(labels), units=units, source=count[0], per_label=float(count[1]))
    return Target(name, kind, labels=labels, width=len(labels), units=units)


def _natural_key(s: str) -> tuple:
    try:
        return (0, float(s), s)
    except ValueError:
        return (1, 0.0, s)


def layout(targets: list[Target]) -> int:
    """Assign each target its slice of the output vector; return the total output width."""
    off = 0
    for t in targets:
        t.offset = off
        off += t.width
    return off


def label_range(target: Target, values: Sequence[Any]) -> tuple[float | None, float | None]:
    """A regression target's (lowest, highest) labelled value (user units); (None, None) for other kinds or
    without labels."""
    xs = [to_float(v, target.name) for v in values if not is_missing(v)] if target.kind == "regression" else []
    return (min(xs), max(xs)) if xs else (None, None)


def fit_normalisation(target: Target, values: Sequence[Any]) -> None:
    """Regression: mean/std from the training split's labelled values (std 1 if degenerate); of their
    logs for a log-transformed target."""
    if target.kind != "regression":
        return
    xs = [target.forward(to_float(v, target.name)) for v in values if not is_missing(v)]
    if not xs:
        raise UsageError(f"target {target.name!r} has no labelled rows in the training split")
    mean = sum(xs) / len(xs)
    var = sum((x - mean) ** 2 for x in xs) / max(len(xs) - 1, 1)
    target.mean, target.std = mean, (math.sqrt(var) if var > 0 else 1.0)
