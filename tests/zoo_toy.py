"""Toy ingredients for the zoo tests: a tiny random Llama, a character tokenizer, synthetic MC data."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import torch


class CharTokenizer:
    """Enough of a HF tokenizer for the zoo: __call__ -> {"input_ids"}, bos/eos ids."""

    bos_token_id, eos_token_id, pad_token_id = 1, 2, 0

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        ids = [3 + (ord(c) % 61) for c in text]
        return {"input_ids": ([self.bos_token_id] if add_special_tokens else []) + ids}


def tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()
    model.config.attn_implementation = "eager"
    return model


WORDS = ["red", "blue", "cat", "dog", "sun", "moon", "tree", "rock", "fish", "bird", "salt", "iron"]


def peft_with_zoo_init(base, targets: list[str], spec, ranks: dict[str, int], seed: int, **config):
    """A peft copy of `base` (``LoraConfig(r=spec.rank, lora_alpha=spec.alpha, …, **config)`` on k/v) whose
    A factors are the stacked trainer's own init for adapter `spec` (`multilora.kaiming_init_A` from
    ``adapter_seed(seed, spec.index, 2)``, drawn module by module in `targets` order at `ranks`), so the two
    start alike; returns (peft model, its inner model)."""
    import copy

    from peft import LoraConfig, get_peft_model

    from lolscan.zoo.multilora import adapter_seed, kaiming_init_A

    cfg = LoraConfig(r=spec.rank, lora_alpha=spec.alpha, target_modules=["k_proj", "v_proj"], lora_dropout=0.0,
                     task_type="CAUSAL_LM", **config)
    pm = get_peft_model(copy.deepcopy(base), cfg)
    gen = torch.Generator().manual_seed(adapter_seed(seed, spec.index, 2))
    inner = pm.base_model.model
    with torch.no_grad():
        for n in targets:  # the same init, drawn in the same order
            mod = inner.get_submodule(n)
            mod.lora_A["default"].weight.copy_(kaiming_init_A((ranks[n], mod.in_features), gen))
    return pm, inner


def peft_causal_lm_steps(pm, batches, opt, sched=None) -> list[float]:
    """The plain way to finetune a peft model, step by step: each batch of token lists padded
    (`multilora.pad_batch`), padding masked out of HF's causal-LM loss (-100), backward, ``opt.step()``, then
    ``sched.step()`` if given; the per-step losses. The reference the stacked trainers are compared with."""
    from lolscan.zoo.multilora import pad_batch

    losses = []
    pm.train()
    for rows in batches:
        ids, lengths = pad_batch(rows)
        labels = ids.clone()
        labels[torch.arange(ids.shape[1]).unsqueeze(0) >= lengths.unsqueeze(1)] = -100
        loss = pm(input_ids=ids, labels=labels).loss
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
    return losses


def write_toy_data(root: Path, n: int = 24) -> None:
    """Three sources in the three field layouts the real data uses, plus an MC request file."""
    g = torch.Generator().manual_seed(0)

    def pick(k: int) -> list[str]:
        return [WORDS[int(i)] for i in torch.randint(len(WORDS), (k,), generator=g)]

    mmlu = [{"question": " ".join(pick(3)) + "?", "choices": pick(4), "answer": int(i % 4)} for i in range(n)]
    sciq = [dict(zip(["question", "correct_answer", "distractor1", "distractor2", "distractor3"],
                     [" ".join(pick(2)) + "?"] + pick(4))) for _ in range(n)]
    arc = [{"question": " ".join(pick(4)), "choices": {"text": pick(4), "label": list("ABCD")},
            "answerKey": "ABCD"[i % 4]} for i in range(n)]
    for name, rows in (("mm", mmlu), ("sq", sciq), ("ae", arc)):
        (root / name).mkdir(parents=True, exist_ok=True)
        with open(root / name / "data.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    reqs = []
    for d in range(6):
        ctx = f"Question: {' '.join(pick(3))}\n A. x\n B. y\n C. z\nAnswer:"
        for i, letter in enumerate("ABC"):
            reqs.append({"doc_id": d, "idx": i, "label": d % 3, "request": {"context": ctx, "continuation": f" {letter}"}})
        # a ranked-classification doc with multi-token continuations
    for d in range(6, 9):
        ctx = f"Question: {' '.join(pick(2))}\nAnswer:"
        for i, opt in enumerate(pick(3)):
            reqs.append({"doc_id": d, "idx": i, "label": 1, "request": {"context": ctx, "continuation": " " + opt}})
    with gzip.open(root / "requests.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in reqs)


def toy_recipe(root: Path, **over) -> dict:
    d = {
        "name": "toy", "seed": 7, "n_loras": 5, "group_size": 2, "data_root": str(root),
        "base": {"path": "unused", "name": "tiny-llama"},
        "lora": {"target_modules": ["k_proj", "v_proj"], "rank": 2, "alpha": "2r"},
        "hparams": {"lr": {"loguniform": [1e-3, 1e-2]}, "steps": {"int_uniform": [2, 4]},
                    "batch_size": {"choice": [2, 3]}, "dropout": 0.0, "weight_decay": {"choice": [0.0, 0.1]}},
        "lr_schedule": "linear",
        "data": {"max_length": 40, "val_per_source": 3, "membership_p": 0.5, "sources": [
            {"name": "mm", "files": ["mm/*.jsonl"]},
            {"name": "sq", "files": ["sq/*.jsonl"], "choices": ["correct_answer", "distractor1", "distractor2", "distractor3"],
             "answer": 0, "shuffle_choices": True},
            {"name": "ae", "files": ["ae/*.jsonl"], "answer": "answerKey"},
        ]},
        "eval": [{"name": "toymc", "requests": "requests.jsonl.gz"}],
    }
    d.update(over)
    return d


def save_tiny_hf_base(folder: Path) -> None:
    """A tiny Llama + a character-level fast tokenizer saved as a normal HF folder (AutoModel/AutoTokenizer)."""
    from tokenizers import Tokenizer, models, processors
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for c in [chr(i) for i in range(32, 127)] + ["\n"]:
        vocab[c] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                     unk_token="<unk>")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=False)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    hf_tok.save_pretrained(folder)


def recipe_toml(d: dict) -> str:
    """Just enough TOML for the toy recipe (json's string/number/list syntax is valid TOML inline)."""
    lines, tables = [], []
    for k, v in d.items():
        if isinstance(v, dict):
            tables.append((k, v))
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            tables += [(f"[{k}]", x) for x in v]
        else:
            lines.append(f"{k} = {json.dumps(v)}")
    for name, t in tables:
        head = f"[{name}]"
        sub = {k: v for k, v in t.items() if not (isinstance(v, list) and v and isinstance(v[0], dict))}
        lines.append(head)
        for k, v in sub.items():
            if isinstance(v, dict):
                inner = ", ".join(f"{ik} = {json.dumps(iv)}" for ik, iv in v.items())
                lines.append(f"{k} = {{ {inner} }}")
            else:
                lines.append(f"{k} = {json.dumps(v)}")
        for k, v in t.items():
            if isinstance(v, list) and v and isinstance(v[0], dict):
                for x in v:
                    lines.append(f"[[{name}.{k}]]")
                    lines += [f"{ik} = {json.dumps(iv)}" for ik, iv in x.items()]
    return "\n".join(lines) + "\n"
