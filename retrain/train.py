"""Step 2 of a retraining run: LoRA fine-tuning of the active model, then merging the adapter.

:func:`train_lora` fine-tunes low-rank adapters (peft) on a :class:`~retrain.dataset.DatasetVersion`
with the loss on the answer tokens only (the prompt is the ChatML conversation the generator
sees without retrieval: the default system message, then the question), saves the adapter, merges
it into the weights and saves the merged model as an ordinary model folder that
:meth:`atalaia.models.generator.Generator.load` serves and :func:`retrain.quantize.quantize_model`
quantizes.

On a CUDA device the model trains there with bf16 autocast (fp16 with loss scaling where bf16 is
not supported); otherwise on the CPU in float32. The losses go to ``loss_curve.csv`` and a chart
(``loss_curve.png`` with matplotlib installed, otherwise ``loss_curve.svg``, drawn here).

Examples
--------
>>> select_device(cuda_available=False)
('cpu', 'fp32')
>>> select_device(cuda_available=True, bf16_supported=False)
('cuda', 'fp16')
"""

from __future__ import annotations

import csv
import json
import logging
import os
import random
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from atalaia.charts.svg import step_chart
from retrain.dataset import DatasetVersion

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

    from atalaia.settings import Settings

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
IM_END = "<|im_end|>"
#: Files of the base model folder copied into the merged folder when ``save_pretrained`` of the
#: tokenizer does not write them (the chat template lives in its own file in transformers 5).
_TOKENIZER_EXTRAS = ("chat_template.jinja", "generation_config.json")


@dataclass(frozen=True)
class LoraConfig:
    """Hyper-parameters of a LoRA fine-tuning run; defaults are the settings' defaults.

    Attributes
    ----------
    rank, alpha, dropout
        LoRA rank ``r``, scaling ``alpha`` (updates are scaled by ``alpha / r``) and input dropout.
    target_modules
        Names of the linear layers that get adapters.
    steps, lr, batch_size
        Optimizer steps, peak learning rate (AdamW; 5 % linear warm-up, then linear decay to 0)
        and examples per step.
    max_seq_len
        Longest example in tokens; longer answers are cut (the closing ``<|im_end|>`` is kept).
    gradient_checkpointing
        Recompute activations during the backward pass (less memory, slower).
    seed
        Seed of adapter initialisation, dropout and batch order.
    feedback_share
        Expected share of each batch drawn from users' corrected answers (``source ==
        "feedback"``), which are then repeated more often than the other examples; 0 draws every
        example equally often.
    """

    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    steps: int = 60
    lr: float = 1e-3
    batch_size: int = 8
    max_seq_len: int = 128
    gradient_checkpointing: bool = False
    seed: int = 0
    feedback_share: float = 0.0

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> LoraConfig:
        """The configuration of ``ATALAIA_LORA_*`` settings, with keyword ``overrides``.

        >>> from atalaia.settings import Settings
        >>> LoraConfig.from_settings(Settings(), steps=5).steps
        5
        """
        values: dict[str, Any] = {
            "rank": settings.lora_rank,
            "alpha": settings.lora_alpha,
            "dropout": settings.lora_dropout,
            "target_modules": tuple(t for t in settings.lora_targets.split(",") if t),
            "steps": settings.lora_steps,
            "lr": settings.lora_lr,
            "batch_size": settings.lora_batch_size,
            "max_seq_len": settings.lora_max_seq_len,
            "gradient_checkpointing": settings.lora_gradient_checkpointing,
            "seed": settings.lora_seed,
            "feedback_share": settings.lora_feedback_share,
        }
        values.update(overrides)
        return cls(**values)


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train_lora` produced.

    Attributes
    ----------
    adapter_dir
        The peft adapter (``adapter_config.json``, ``adapter_model.safetensors``).
    merged_dir
        The merged float32 model folder (config, safetensors, tokenizer, chat template).
    losses
        Training loss of every step.
    loss_curve_path
        The loss chart (PNG or SVG); the numbers are in ``loss_curve.csv`` beside it.
    steps, seconds
        Optimizer steps run and wall time of the whole call (training, saving, merging).
    device, dtype
        Where and in which precision it trained: ``"cuda"``/``"cpu"``, ``"bf16"``/``"fp16"``/``"fp32"``.
    val_loss_before, val_loss_after
        Mean answer-token loss on the validation split before and after training (``None``
        without a validation split).
    trainable_params
        Parameters of the adapters.
    """

    adapter_dir: Path
    merged_dir: Path
    losses: list[float]
    loss_curve_path: Path
    steps: int
    seconds: float
    device: str
    dtype: str
    val_loss_before: float | None = None
    val_loss_after: float | None = None
    trainable_params: int = 0


def select_device(cuda_available: bool | None = None, bf16_supported: bool | None = None) -> tuple[str, str]:
    """Device and precision for training: CUDA with bf16 (else fp16) when a GPU is there, else CPU fp32.

    Parameters
    ----------
    cuda_available, bf16_supported
        Override the detection (for tests); ``None`` asks torch.

    Returns
    -------
    (device, dtype)
        ``("cuda", "bf16")``, ``("cuda", "fp16")`` or ``("cpu", "fp32")``.

    Examples
    --------
    >>> select_device(cuda_available=True, bf16_supported=True)
    ('cuda', 'bf16')
    """
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    if not cuda_available:
        return "cpu", "fp32"
    if bf16_supported is None:
        import torch

        bf16_supported = bool(torch.cuda.is_bf16_supported())
    return "cuda", ("bf16" if bf16_supported else "fp16")


# --------------------------------------------------------------------------------------------------
# Examples


def user_messages(question: str) -> list[dict[str, str]]:
    """The conversation the model is trained on for ``question`` (and evaluated on without RAG)."""
    return [{"role": "user", "content": question}]


def encode_example(
    tokenizer: Any, messages: list[dict[str, str]], answer: str, max_seq_len: int
) -> tuple[list[int], list[int]] | None:
    """Token ids and labels of one example: labels are ``-100`` on the prompt, the answer's ids after.

    The prompt is the chat template with the assistant header; the answer is followed by
    ``<|im_end|>`` so that the model learns where to stop. When the whole does not fit
    ``max_seq_len``, the answer is cut (keeping ``<|im_end|>``); when not even the prompt and
    four answer tokens fit, the example is skipped.

    Returns
    -------
    (input_ids, labels) or None
    """
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    prompt_ids = list(prompt["input_ids"])
    eos = tokenizer.convert_tokens_to_ids(IM_END)
    answer_ids = list(tokenizer(answer, add_special_tokens=False)["input_ids"])
    room = max_seq_len - len(prompt_ids) - 1
    if room < 4:
        return None
    answer_ids = [*answer_ids[:room], eos]
    return prompt_ids + answer_ids, [IGNORE_INDEX] * len(prompt_ids) + answer_ids


def collate(examples: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch to its longest example: ``input_ids``, ``attention_mask``, ``labels``."""
    import torch

    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (ids, labs) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(labs)] = torch.tensor(labs)
        mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


class ExampleOrder:
    """The order in which training examples are drawn: epochs of fresh shuffles, optionally two pools.

    With ``share`` 0 (or one pool empty) every example comes once per epoch. Otherwise each draw
    takes the next example of the ``preferred`` pool with probability ``share`` and of the other
    pool otherwise; each pool runs through its own shuffled epochs.

    Examples
    --------
    >>> order = ExampleOrder(range(4), preferred=[0], share=0.5, rng=random.Random(0))
    >>> draws = [order.next() for _ in range(400)]
    >>> 150 < draws.count(0) < 250
    True
    >>> plain = ExampleOrder(range(3), rng=random.Random(0))
    >>> sorted(plain.next() for _ in range(3))
    [0, 1, 2]
    """

    def __init__(
        self,
        indices: Iterable[int],
        *,
        preferred: Iterable[int] = (),
        share: float = 0.0,
        rng: random.Random,
    ) -> None:
        chosen = set(preferred)
        everything = list(indices)
        self._preferred = [i for i in everything if i in chosen]
        self._other = [i for i in everything if i not in chosen]
        self.mixed = 0 < share < 1 and bool(self._preferred) and bool(self._other)
        if not self.mixed:
            self._other = everything
        self._share = share
        self._rng = rng
        self._queues: dict[str, list[int]] = {"preferred": [], "other": []}

    def _draw(self, pool: str, items: list[int]) -> int:
        queue = self._queues[pool]
        if not queue:  # a new epoch of this pool: every member once, in a fresh order
            queue.extend(items)
            self._rng.shuffle(queue)
        return queue.pop()

    def next(self) -> int:
        """The index of the next example to train on."""
        if self.mixed and self._rng.random() < self._share:
            return self._draw("preferred", self._preferred)
        return self._draw("other", self._other)


def lr_at(step: int, steps: int, peak: float) -> float:
    """Linear warm-up over the first 5 % of steps (at least one), then linear decay to 0.

    >>> [round(lr_at(s, 20, 1.0), 2) for s in (0, 1, 10, 19)]
    [1.0, 0.95, 0.5, 0.05]
    """
    warmup = max(1, steps // 20)
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * max(0.0, (steps - step) / max(1, steps - warmup + 1)) if steps > warmup else peak


# --------------------------------------------------------------------------------------------------
# Loss curve


def write_loss_curve(losses: Sequence[float], out_dir: Path) -> Path:
    """Save ``loss_curve.csv`` and a chart in ``out_dir``; return the chart's path.

    A PNG through matplotlib when it is installed, otherwise an SVG polyline drawn here (no
    dependency), so that every run has a picture of its loss.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "loss_curve.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["step", "loss"])
        writer.writerows((i + 1, f"{v:.6f}") for i, v in enumerate(losses))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        path = out_dir / "loss_curve.svg"
        path.write_text(loss_curve_svg(losses), encoding="utf-8")
        return path
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(1, len(losses) + 1), losses, linewidth=1)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("LoRA fine-tuning")
    fig.tight_layout()
    path = out_dir / "loss_curve.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def loss_curve_svg(losses: Sequence[float], width: int = 600, height: int = 320) -> str:
    """An SVG line chart of ``losses`` per step, with axes (the kernel's :func:`atalaia.charts.svg.step_chart`).

    >>> svg = loss_curve_svg([2.0, 1.5, 1.0])
    >>> svg.startswith("<svg") and "polyline" in svg
    True
    """
    return step_chart("LoRA fine-tuning: training loss", losses, "step", width, height)


# --------------------------------------------------------------------------------------------------
# Training


def _mean_loss(model: Any, examples: Sequence[tuple[list[int], list[int]]], pad_id: int, batch: int, ctx: Any) -> float:
    """Mean answer-token loss of ``examples`` (no gradient)."""
    import torch

    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(examples), batch):
            chunk = examples[start : start + batch]
            inputs = {k: v.to(model.device) for k, v in collate(chunk, pad_id).items()}
            with ctx():
                logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
            labels = inputs["labels"][:, 1:]
            losses = torch.nn.functional.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                labels.reshape(-1),
                ignore_index=IGNORE_INDEX,
                reduction="sum",
            )
            total += float(losses)
            count += int((labels != IGNORE_INDEX).sum())
    return total / max(count, 1)


def answer_loss(model: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy over the answer tokens, with the output projection applied to those only.

    Prompt positions make up about two thirds of a batch here; projecting only answer positions
    onto the 49,152-word vocabulary saves that share of the largest matmul and of the softmax.
    Falls back to the model's own loss for architectures without ``lm_head`` and a base model.
    """
    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    body = getattr(base, getattr(base, "base_model_prefix", ""), None)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if body is None or head is None:
        return model(**inputs).loss
    hidden = body(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).last_hidden_state
    labels = inputs["labels"][:, 1:]
    keep = labels != IGNORE_INDEX
    logits = head(hidden[:, :-1][keep])
    return torch.nn.functional.cross_entropy(logits.float(), labels[keep])


def _copy_extras(src: Path, dst: Path) -> None:
    for name in _TOKENIZER_EXTRAS:
        if (src / name).is_file() and not (dst / name).is_file():
            shutil.copy2(src / name, dst / name)


#: Validation examples scored before and after training.
MAX_VAL_EXAMPLES = 24


def train_lora(
    base_model_dir: Path,
    dataset: DatasetVersion,
    out_dir: Path,
    config: LoraConfig,
    *,
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
    threads: int = 0,
) -> TrainResult:
    """Fine-tune LoRA adapters on ``dataset``, save the adapter and the merged model.

    Layout of ``out_dir``: ``adapter/``, ``merged/`` (written under a temporary name and renamed
    when complete), ``loss_curve.csv``, ``loss_curve.svg`` (or ``.png``), ``train.json`` (the
    configuration and results).

    Parameters
    ----------
    base_model_dir
        The model to fine-tune: a float model folder (``settings.generator_path`` or a
        registered version's merged folder), a quantized folder, whose int8 weights are
        dequantized to float32 first, or an exported (ONNX Runtime or OpenVINO GenAI) version,
        trained from its float32 merge (:func:`retrain.quantize.training_folder`).
    dataset
        From :func:`retrain.dataset.build_dataset`.
    out_dir
        Destination folder (created).
    config
        Hyper-parameters.
    progress
        Show a tqdm progress bar with the loss on stderr.
    on_step
        Called after every optimizer step with ``(step, loss)``, steps counted from 1; an exception
        raised there stops training (and propagates), e.g. to abort a run.
    threads
        torch intra-op threads on the CPU (process-wide); 0 keeps torch's default. On a machine
        shared with other busy processes, 1 thread was measured steadier and often faster than 2.

    Returns
    -------
    TrainResult

    Raises
    ------
    ValueError
        When no example of the data set fits ``config.max_seq_len``.
    """
    import torch
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from atalaia.models.prepare import _quiet_transformers_bars, write_manifest
    from atalaia.models.quantized import is_quantized_dir, load_dequantized_model
    from retrain.quantize import training_folder

    t0 = time.perf_counter()
    # An exported version is trained from the float32 merge it keeps (ONNX or IR weights cannot be).
    base_model_dir, out_dir = training_folder(Path(base_model_dir)), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device, dtype_name = select_device()
    if threads > 0:
        torch.set_num_threads(threads)
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)

    with _quiet_transformers_bars():
        tokenizer: Any = AutoTokenizer.from_pretrained(base_model_dir, local_files_only=True)
        if is_quantized_dir(base_model_dir):
            # The active version may be kept only as its int8 artefact: start from its dequantized weights.
            model: Any = load_dequantized_model(base_model_dir)
        else:
            model = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=torch.float32, local_files_only=True)
    pad_id = int(tokenizer.convert_tokens_to_ids(IM_END))

    def encode(records: list[dict[str, Any]]) -> list[tuple[tuple[list[int], list[int]], bool]]:
        """Encoded examples that fit, each with whether it is a user's correction."""
        out = []
        for r in records:
            ex = encode_example(tokenizer, user_messages(r["question"]), r["answer"], config.max_seq_len)
            if ex is not None:
                out.append((ex, r.get("source") == "feedback"))
        return out

    encoded_train = encode(dataset.records("train"))
    train_examples = [ex for ex, _ in encoded_train]
    feedback_train = [i for i, (_, is_feedback) in enumerate(encoded_train) if is_feedback]
    # The validation loss is a before/after check, not a search: a fixed sample of the split keeps
    # its cost bounded (two passes over it) whatever the data set's size.
    val_examples = [ex for ex, _ in encode(dataset.records("val")[:MAX_VAL_EXAMPLES])] if dataset.n_val else []
    if not train_examples:
        raise ValueError(f"no training example of {dataset.path} fits max_seq_len={config.max_seq_len}")

    model.config.use_cache = False
    peft_config = PeftLoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=list(config.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, peft_config)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in trainable)

    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype_name)

    def autocast() -> Any:
        if amp_dtype is None:
            return torch.autocast("cpu", enabled=False)
        return torch.autocast(device, dtype=amp_dtype)

    scaler = torch.amp.GradScaler(device, enabled=dtype_name == "fp16")
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=0.0)
    val_before = _mean_loss(model, val_examples, pad_id, config.batch_size, autocast) if val_examples else None

    order = ExampleOrder(range(len(train_examples)), preferred=feedback_train, share=config.feedback_share, rng=rng)
    logger.info(
        "LoRA fine-tuning on %s (%s): %d examples (%d of them corrections, drawn for %.0f%% of a batch; %d val), "
        "%d steps of %d, %d trainable parameters",
        device,
        dtype_name,
        len(train_examples),
        len(feedback_train),
        100 * config.feedback_share if order.mixed else 100 * len(feedback_train) / len(train_examples),
        len(val_examples),
        config.steps,
        config.batch_size,
        n_trainable,
    )
    losses: list[float] = []
    bar: Any = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.steps, desc="LoRA fine-tuning", unit="step", dynamic_ncols=True)
    try:
        model.train()
        for step in range(config.steps):
            batch_idx = [order.next() for _ in range(config.batch_size)]
            inputs = {k: v.to(device) for k, v in collate([train_examples[i] for i in batch_idx], pad_id).items()}
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, config.steps, config.lr)
            with autocast():
                loss = answer_loss(model, inputs)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            value = float(loss.detach())
            losses.append(value)
            if bar is not None:
                bar.set_postfix(loss=f"{value:.3f}")
                bar.update(1)
            if on_step is not None:
                on_step(step + 1, value)
    finally:
        if bar is not None:
            bar.close()
    val_after = _mean_loss(model, val_examples, pad_id, config.batch_size, autocast) if val_examples else None
    curve = write_loss_curve(losses, out_dir)

    adapter_dir = out_dir / "adapter"
    model.save_pretrained(adapter_dir)
    merged = model.merge_and_unload().to("cpu", dtype=torch.float32)
    merged.config.use_cache = True
    merged_dir = out_dir / "merged"
    tmp = out_dir / f".merged.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        _copy_extras(base_model_dir, tmp)
        write_manifest(
            tmp,
            {
                "manifest_version": 1,
                "name": merged_dir.name,
                "format": "safetensors",
                "dtype": "float32",
                "architecture": type(merged).__name__,
                "parent": str(base_model_dir),
                "dataset_hash": dataset.content_hash,
                "lora": {**asdict(config), "target_modules": list(config.target_modules)},
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
        )
        shutil.rmtree(merged_dir, ignore_errors=True)
        os.replace(tmp, merged_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    seconds = time.perf_counter() - t0
    result = TrainResult(
        adapter_dir=adapter_dir,
        merged_dir=merged_dir,
        losses=losses,
        loss_curve_path=curve,
        steps=len(losses),
        seconds=seconds,
        device=device,
        dtype=dtype_name,
        val_loss_before=val_before,
        val_loss_after=val_after,
        trainable_params=n_trainable,
    )
    summary = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(result).items() if k != "losses"}
    summary["config"] = {**asdict(config), "target_modules": list(config.target_modules)}
    summary["dataset_hash"] = dataset.content_hash
    (out_dir / "train.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    logger.info(
        "LoRA fine-tuning done in %.1f s: loss %.3f -> %.3f, val loss %s -> %s",
        seconds,
        losses[0],
        losses[-1],
        f"{val_before:.3f}" if val_before is not None else "-",
        f"{val_after:.3f}" if val_after is not None else "-",
    )
    return result
