"""Weight-only int8 models: the layers, the on-disk format and the loader.

A quantized model folder holds the usual ``config.json``, tokenizer and chat template, plus

- ``model-int8.safetensors``: every ``nn.Linear`` and the token embedding as int8 weights with one
  float32 scale per output row (symmetric, ``w ≈ int8 * scale``); everything else (norms) float32;
- ``atalaia-quant.json``: the method and format version, written last (marks a complete folder).

Only weights are quantized; activations stay in floating point. Dynamic activation quantization
(``torch.ao`` ``quantize_dynamic``) was measured to raise SmolLM2-135M's perplexity from 14.7 to
37-40; weight-only int8 keeps it within about 1 % (see ``bench/quantize.py``).

Kernels, chosen once per process by what this torch offers:

- :class:`Int8Linear` multiplies with ``torch.ops.aten._weight_int8pack_mm`` on bfloat16
  activations (the CPU kernel for float32 activations is several times slower than a float32
  matmul, the bfloat16 one faster), and falls back to dequantize-then-matmul elsewhere;
- the output projection (``lm_head``, 49,152 × 576: a third of the per-token matmul time) is
  dequantized once at load into an fbgemm fp16 packed matrix
  (``torch.ops.quantized.linear_dynamic_fp16``, float32 activations), or bfloat16 where fbgemm is
  missing. Tied embeddings are stored once and the head is derived from them.

Examples
--------
>>> import torch
>>> layer = Int8Linear.from_linear(torch.nn.Linear(64, 32, bias=True))
>>> layer(torch.randn(2, 5, 64)).shape
torch.Size([2, 5, 32])
>>> emb = Int8Embedding.from_embedding(torch.nn.Embedding(10, 8))
>>> emb(torch.tensor([[1, 2]])).shape
torch.Size([1, 2, 8])
"""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from atalaia.models.manifest import read_format_manifest

logger = logging.getLogger(__name__)

QUANT_MANIFEST = "atalaia-quant.json"
QUANT_WEIGHTS = "model-int8.safetensors"
QUANT_FORMAT = 1
#: The weight-only int8 method (per-row symmetric scales).
INT8_WEIGHT_ONLY = "int8-weight-only"
METHODS = (INT8_WEIGHT_ONLY,)


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 quantization with one scale per row.

    Parameters
    ----------
    weight
        A 2-D floating point matrix (rows are output channels or vocabulary entries).

    Returns
    -------
    (int8 matrix, float32 scales)
        ``weight ≈ q.float() * scale[:, None]``; values are in -127..127 (never -128, so that
        negating a row cannot overflow).

    Examples
    --------
    >>> q, s = quantize_rows(torch.tensor([[1.0, -0.5], [0.0, 0.0]]))
    >>> q.tolist(), [round(v, 5) for v in s.tolist()]
    ([[127, -64], [0, 0]], [0.00787, 1.0])
    """
    w = weight.detach().float()
    amax = w.abs().amax(dim=1)
    # An all-zero row gets scale 1 (its values stay 0) instead of a division by zero.
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.contiguous(), scale.contiguous()


@functools.cache
def _int8pack_available() -> bool:
    """Whether this torch has a working CPU ``_weight_int8pack_mm`` for bfloat16 activations."""
    try:
        out = torch.ops.aten._weight_int8pack_mm(
            torch.ones(1, 8, dtype=torch.bfloat16),
            torch.ones(4, 8, dtype=torch.int8),
            torch.ones(4, dtype=torch.bfloat16),
        )
        return bool(out.shape == (1, 4))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


@functools.cache
def _fbgemm_fp16_available() -> bool:
    """Whether fbgemm's fp16 packed linear works here (x86 with AVX2)."""
    try:
        packed = torch.ops.quantized.linear_prepack_fp16(torch.ones(4, 8), None)
        return bool(torch.ops.quantized.linear_dynamic_fp16(torch.ones(1, 8), packed).shape == (1, 4))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


class Int8Linear(nn.Module):
    """A linear layer with int8 weights and per-output-row scales; activations stay floating point.

    Parameters
    ----------
    in_features, out_features
        As for :class:`torch.nn.Linear`.
    bias
        Whether the layer has a (float32) bias.
    """

    weight_int8: torch.Tensor
    weight_scale: torch.Tensor

    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.register_buffer("weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=torch.float32))
        self.bias: nn.Parameter | None = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None
        self._scale_bf16: torch.Tensor | None = None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        """Quantize an ``nn.Linear``."""
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None)
        q, s = quantize_rows(linear.weight)
        layer.weight_int8, layer.weight_scale = q, s
        if linear.bias is not None and layer.bias is not None:
            layer.bias.data = linear.bias.detach().float().clone()
        return layer

    def dequantized(self) -> torch.Tensor:
        """The float32 weight the int8 values stand for."""
        return self.weight_int8.float() * self.weight_scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ W.T + b`` with the int8 weight."""
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if x2.device.type == "cpu" and _int8pack_available():
            if self._scale_bf16 is None:
                self._scale_bf16 = self.weight_scale.to(torch.bfloat16)
            y = torch.ops.aten._weight_int8pack_mm(x2.to(torch.bfloat16), self.weight_int8, self._scale_bf16)
            y = y.to(x.dtype)  # a no-op when the model runs in bfloat16, as loaded models do
        else:
            y = nn.functional.linear(x2, self.dequantized().to(device=x.device, dtype=x.dtype))
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*shape[:-1], self.out_features)

    def _apply(self, fn: Any, recurse: bool = True) -> Int8Linear:
        self._scale_bf16 = None  # moved or cast: rebuild the bfloat16 copy from the new scales
        return super()._apply(fn, recurse)  # type: ignore[return-value]

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Int8Embedding(nn.Module):
    """A token embedding with int8 rows and per-row scales; looked-up rows are dequantized.

    Parameters
    ----------
    num_embeddings, embedding_dim
        As for :class:`torch.nn.Embedding`.
    """

    weight_int8: torch.Tensor
    weight_scale: torch.Tensor

    def __init__(self, num_embeddings: int, embedding_dim: int) -> None:
        super().__init__()
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.register_buffer("weight_int8", torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(num_embeddings, dtype=torch.float32))
        #: dtype of the looked-up rows, i.e. of the whole residual stream (see load_quantized_model).
        self.out_dtype = torch.float32

    @classmethod
    def from_embedding(cls, embedding: nn.Embedding) -> Int8Embedding:
        """Quantize an ``nn.Embedding``."""
        layer = cls(embedding.num_embeddings, embedding.embedding_dim)
        layer.weight_int8, layer.weight_scale = quantize_rows(embedding.weight)
        return layer

    def dequantized(self) -> torch.Tensor:
        """The float32 table the int8 values stand for."""
        return self.weight_int8.float() * self.weight_scale[:, None]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows of ``ids``, in :attr:`out_dtype`."""
        return (self.weight_int8[ids].float() * self.weight_scale[ids].unsqueeze(-1)).to(self.out_dtype)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}"


class PackedHead(nn.Module):
    """The output projection from a dequantized float weight: fbgemm fp16 packed, else bfloat16.

    Built at load time from int8 weights (it is never saved); float32 in, float32 out.

    Parameters
    ----------
    weight
        ``(vocab, hidden)`` float weight.
    """

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self._packed: Any = None
        self.register_buffer("weight_bf16", torch.empty(0, dtype=torch.bfloat16), persistent=False)
        if _fbgemm_fp16_available():
            self._packed = torch.ops.quantized.linear_prepack_fp16(weight.detach().float().contiguous(), None)
        else:
            self.weight_bf16 = weight.detach().to(torch.bfloat16).contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Float32 logits of ``x`` (whatever its dtype)."""
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if self._packed is not None and x2.device.type == "cpu":
            y = torch.ops.quantized.linear_dynamic_fp16(x2.float().contiguous(), self._packed)
        else:
            y = nn.functional.linear(x2.to(torch.bfloat16), self.weight_bf16.to(x2.device)).float()
        return y.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        kernel = "fbgemm-fp16" if self._packed is not None else "bf16"
        return f"in_features={self.in_features}, out_features={self.out_features}, kernel={kernel}"


def _swap_modules(model: nn.Module, *, skip_head: bool, quantize: bool = True) -> list[str]:
    """Replace every ``nn.Linear`` (but the head) and ``nn.Embedding`` of ``model`` in place.

    With ``quantize=False`` the new modules are empty shells of the right shapes (to load a saved
    state dict into) instead of quantized copies of the old weights.

    Returns the names of the replaced modules.
    """
    lm: Any = model
    head = lm.get_output_embeddings() if skip_head else None
    replaced = []
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            full = f"{parent_name}.{name}" if parent_name else name
            if child is head:
                continue
            if isinstance(child, nn.Linear):
                linear = (
                    Int8Linear.from_linear(child)
                    if quantize
                    else Int8Linear(child.in_features, child.out_features, bias=child.bias is not None)
                )
                setattr(parent, name, linear)
                replaced.append(full)
            elif isinstance(child, nn.Embedding):
                emb = (
                    Int8Embedding.from_embedding(child)
                    if quantize
                    else Int8Embedding(child.num_embeddings, child.embedding_dim)
                )
                setattr(parent, name, emb)
                replaced.append(full)
    return replaced


def _ties_head(model: Any) -> bool:
    head = model.get_output_embeddings()
    emb = model.get_input_embeddings()
    return head is not None and emb is not None and head.weight is emb.weight


def quantize_module(model: nn.Module) -> dict[str, Any]:
    """Quantize ``model`` (a transformers causal LM in float) in place, weight-only int8.

    The head, when tied to the input embedding, is left to be derived from the int8 embedding at
    load time (stored once); an untied head is quantized like any linear layer.

    Parameters
    ----------
    model
        A ``PreTrainedModel`` with ``get_input_embeddings`` / ``get_output_embeddings``.

    Returns
    -------
    dict
        Manifest entries: ``tied_head`` and the ``modules`` replaced.
    """
    tied = _ties_head(model)
    replaced = _swap_modules(model, skip_head=tied)
    if tied:
        # The head's weight is the embedding's, now int8: derive it (PackedHead saves nothing).
        lm: Any = model
        lm.set_output_embeddings(PackedHead(lm.get_input_embeddings().dequantized()))
    return {"tied_head": tied, "modules": replaced}


def _run_in_bfloat16(model: nn.Module) -> None:
    """Make the residual stream bfloat16: the int8 kernel takes bfloat16, so no casts per layer.

    The embedding returns bfloat16 rows and the remaining float parameters (RMSNorm weights) are
    cast; buffers (rotary frequencies) stay float32, the head takes float32 and returns float32
    logits. Measured on SmolLM2-135M: about 2 ms less per token than casting around every int8
    matmul, and the same holdout perplexity within 0.1 %.
    """
    for module in model.modules():
        if isinstance(module, Int8Embedding):
            module.out_dtype = torch.bfloat16
    for param in model.parameters():
        if param.is_floating_point():
            param.data = param.data.to(torch.bfloat16)


def is_quantized_dir(path: Path | str) -> bool:
    """Whether ``path`` holds a quantized model written by ``retrain.quantize``."""
    return (Path(path) / QUANT_MANIFEST).is_file()


def read_quant_manifest(path: Path | str) -> dict[str, Any]:
    """The ``atalaia-quant.json`` of a quantized folder.

    Raises
    ------
    ValueError
        When it is unreadable, of another format version or of an unknown method.
    """
    return read_format_manifest(Path(path) / QUANT_MANIFEST, QUANT_FORMAT, "method", METHODS, "quantization")


def _no_init() -> Any:
    # Skip the random initialisation of weights that are replaced right away (about 2 s).
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers 4.x
        from transformers.modeling_utils import no_init_weights  # type: ignore[attr-defined,no-redef]
    return no_init_weights()


def load_quantized_model(path: Path | str, *, bfloat16_stream: bool = True) -> Any:
    """Load a quantized model folder as a transformers causal LM (CPU, eval mode).

    The architecture is built from ``config.json`` without initialising weights, its layers are
    swapped for the int8 ones, and the int8 state dict is loaded into them.

    Parameters
    ----------
    path
        Folder with ``config.json``, ``model-int8.safetensors`` and ``atalaia-quant.json``.
    bfloat16_stream
        Run the residual stream in bfloat16 where the int8 kernel takes it (see
        :func:`_run_in_bfloat16`); ``False`` keeps float32 activations throughout.

    Returns
    -------
    transformers.PreTrainedModel

    Raises
    ------
    ValueError
        When the manifest or the weights do not match the architecture.
    """
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    manifest = read_quant_manifest(path)
    t0 = time.perf_counter()
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    with _no_init():
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tied = bool(manifest.get("tied_head"))
    _swap_modules(model, skip_head=tied, quantize=False)
    if tied:
        model.set_output_embeddings(nn.Identity())
    state = load_file(str(path / QUANT_WEIGHTS))
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    # Non-persistent buffers (rotary frequencies) are not in a state dict and are fine to miss.
    persistent = set(model.state_dict())
    missing = [k for k in missing if k in persistent]
    if missing or unexpected:
        raise ValueError(
            f"{path / QUANT_WEIGHTS} does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    if tied:
        emb = model.get_input_embeddings()
        model.set_output_embeddings(PackedHead(emb.dequantized()))
    if bfloat16_stream and _int8pack_available():
        _run_in_bfloat16(model)
    model.eval()
    logger.info("quantized model (%s) loaded from %s in %.2f s", manifest["method"], path, time.perf_counter() - t0)
    return model


def load_dequantized_model(path: Path | str) -> Any:
    """Load a quantized folder as an ordinary float32 model (int8 weights times their scales).

    For fine-tuning a version that was only kept quantized: the result has plain ``nn.Linear``
    and ``nn.Embedding`` layers (and a tied head), so peft can wrap it and ``save_pretrained``
    writes a normal model folder. The weights carry the int8 rounding of the quantized model.

    Parameters
    ----------
    path
        A folder written by ``retrain.quantize.quantize_model``.

    Returns
    -------
    transformers.PreTrainedModel
        In float32, eval mode.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    tied = bool(read_quant_manifest(path).get("tied_head"))
    quantized = load_quantized_model(path, bfloat16_stream=False)
    state: dict[str, torch.Tensor] = {}
    for name, module in quantized.named_modules():
        if isinstance(module, Int8Linear | Int8Embedding):
            state[f"{name}.weight"] = module.dequantized()
    for name, param in quantized.named_parameters():  # norms, biases
        state[name] = param.detach().float()
    config = AutoConfig.from_pretrained(Path(path), local_files_only=True)
    with _no_init():
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(state, strict=False)
    persistent = set(model.state_dict())
    # A tied head has no weight of its own: tie_weights() below points it at the embedding.
    missing = [k for k in missing if k in persistent and not (tied and k.startswith("lm_head."))]
    if missing or unexpected:
        raise ValueError(f"cannot dequantize {path}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if tied:
        model.tie_weights()
    return model.eval()
