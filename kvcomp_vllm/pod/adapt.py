"""`kvcomp-vllm pod-adapt`: fine-tune a model to PoD's shared distant keys (LoRA via peft, or full).

Each step trains on sequences of a local corpus with the serving-time geometry (`attention`): the
loss is the continuation's, whose queries see distant tokens through their owners' keys; by default
(`objective: distill`) its KL divergence from the original model's full-attention predictions, so the
model learns to predict with shared keys what it predicted without them (`lm`: the text's cross-entropy). State (trained
weights, optimizer, step) is saved every `save_every` steps and at the end of a run, so runs resume
where the last stopped (`--minutes` bounds one run); every run ends by writing an ordinary checkpoint
(LoRA merged) with the geometry it was adapted for (`geometry.GEOMETRY_FILE`).
"""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from ..config import KVPolicyConfig
from .attention import PoDGeometry, pod_forward
from .geometry import geometry, write_geometry
from .samples import corpus_tokens, window

STATE_FILE = "kvcomp_adapt_state.pt"
LOG_FILE = "kvcomp_adapt_log.jsonl"
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


@dataclass(frozen=True)
class AdaptSettings:
    """One adaptation's recipe; `lora_rank` 0 fine-tunes every weight."""

    steps: int = 300
    minutes: float | None = None
    seq_len: int = 4096
    continuation: int = 512
    batch: int = 1
    lr: float = 2e-4
    lora_rank: int = 16
    objective: Literal["distill", "lm"] = "distill"
    save_every: int = 50
    corpus: str | None = None
    seed: int = 0
    device: str = "cpu"

    @property
    def prompt_len(self) -> int:
        """Prompt tokens of each training sequence (the rest is the continuation)."""
        return self.seq_len - self.continuation


def trainable_model(model_dir: str, settings: AdaptSettings):
    """(model to train, the transformers model under it): LoRA adapters on the attention projections, or all weights."""
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(settings.device)
    if not settings.lora_rank:
        return base, base
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(settings.seed)  # the adapters' initial weights
    lora = LoraConfig(r=settings.lora_rank, lora_alpha=2 * settings.lora_rank, lora_dropout=0.0,
                      target_modules=LORA_TARGETS, bias="none")
    return get_peft_model(base, lora), base


def continuation_logits(model, ids: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """`[batch, continuation, vocab]` float logits predicting `ids[:, prompt_len:]` (the model's attention as set)."""
    autocast = torch.autocast("cuda", torch.bfloat16) if ids.is_cuda else nullcontext()
    with autocast:
        logits = model(input_ids=ids, use_cache=False, logits_to_keep=ids.shape[1] - prompt_len + 1).logits
    return logits[:, :-1].float()


Teacher = Callable[[torch.Tensor], torch.Tensor]  # ids -> full-attention continuation logits


def pod_loss(model, base, geo: PoDGeometry, ids: torch.Tensor, prompt_len: int,
             teacher: Teacher | None = None) -> torch.Tensor:
    """The continuation's loss under PoD attention: its cross-entropy, or with `teacher` the KL divergence
    from the teacher's next-token distributions (self-distillation: keep what full attention predicts)."""
    with pod_forward(base, geo, prompt_len):
        student = continuation_logits(model, ids, prompt_len).flatten(0, 1)
    if teacher is None:
        return F.cross_entropy(student, ids[:, prompt_len:].flatten())
    with torch.no_grad():
        target = teacher(ids).flatten(0, 1).log_softmax(-1)
    return F.kl_div(student.log_softmax(-1), target, log_target=True, reduction="batchmean")


def make_teacher(model, model_dir: str, settings: AdaptSettings) -> Teacher | None:
    """The full-attention original model for `objective: distill`: LoRA's base with its adapters off, or a
    frozen copy when every weight trains; None for `objective: lm`."""
    if settings.objective == "lm":
        return None
    if settings.lora_rank:
        def teacher(ids: torch.Tensor) -> torch.Tensor:
            with model.disable_adapter():
                return continuation_logits(model, ids, settings.prompt_len)

        return teacher
    from transformers import AutoModelForCausalLM

    frozen = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(settings.device).eval()
    return lambda ids: continuation_logits(frozen, ids, settings.prompt_len)


def _save_state(path: Path, model, optimizer, step: int, record: dict) -> None:
    trained = {k: v.detach().cpu() for k, v in model.named_parameters() if v.requires_grad}
    torch.save({"step": step, "trained": trained, "optimizer": optimizer.state_dict(), **record}, path)


def _export(out: Path, model, model_dir: str, config: KVPolicyConfig, num_layers: int, record: dict) -> None:
    """Write the merged model, its tokenizer and its geometry to `out`, in the base checkpoint's dtype."""
    from transformers import AutoConfig, AutoTokenizer

    dtype = getattr(AutoConfig.from_pretrained(model_dir), "dtype", None) or torch.float32
    merged = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
    merged.to(dtype if isinstance(dtype, torch.dtype) else getattr(torch, str(dtype))).save_pretrained(out)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)
    write_geometry(out, config, num_layers, adapted_from=record["base"], steps=record["steps"],
                   recipe=record["settings"])


def adapt(model_dir: str, out: str | Path, config: KVPolicyConfig, settings: AdaptSettings, log=print) -> dict:
    """Train (resuming `out`'s saved state) until `settings.steps` or `settings.minutes`, then export."""
    from transformers import AutoTokenizer

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    model, base = trainable_model(model_dir, settings)
    layers = base.config.num_hidden_layers
    config.check_model(layers)
    geo = PoDGeometry.from_config(config, layers)
    record = {"base": str(model_dir), "geometry": geometry(config, layers), "settings": asdict(settings)}
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=0.0)
    step, state_path = 0, out / STATE_FILE
    if state_path.exists():
        state = torch.load(state_path, map_location=settings.device, weights_only=False)
        for key in ("base", "geometry"):
            if state[key] != record[key]:
                raise ValueError(f"{state_path}: saved for {key} {state[key]}, not {record[key]}; use another --out")
        missing = set(state["trained"]) - {k for k, v in model.named_parameters() if v.requires_grad}
        if missing:
            raise ValueError(f"{state_path}: trained weights {sorted(missing)[:3]} are not in this model "
                             "(another --lora-rank?)")
        model.load_state_dict(state["trained"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        step = state["step"]
        log(f"pod-adapt: resuming at step {step}")
    _, ids = corpus_tokens(AutoTokenizer.from_pretrained(model_dir), settings.corpus, settings.seed, settings.seq_len)
    teacher = make_teacher(model, model_dir, settings)
    model.train()
    with (out / LOG_FILE).open("a") as journal:
        in_time = lambda: settings.minutes is None or time.monotonic() - started < 60 * settings.minutes  # noqa: E731
        while step < settings.steps and in_time():
            rows = [window(ids, settings.seq_len, step * settings.batch + b, settings.seed)
                    for b in range(settings.batch)]
            loss = pod_loss(model, base, geo, torch.tensor(rows, device=settings.device), settings.prompt_len, teacher)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            journal.write(json.dumps({"step": step, "loss": round(loss.item(), 6)}) + "\n")
            if step % settings.save_every == 0:
                _save_state(state_path, model, optimizer, step, record)
                log(f"pod-adapt: step {step} loss {loss.item():.4f}")
    _save_state(state_path, model, optimizer, step, record)
    model.eval()
    _export(out, model, model_dir, config, layers, {**record, "steps": step})
    return {"steps": step, "out": str(out), "finished": step >= settings.steps}
