"""Convert a float32 Hugging Face causal LM folder to an OpenVINO IR that OpenVINO GenAI serves.

Done here rather than by ``optimum-intel`` because optimum-intel 2.2 pins ``transformers<5.6``
(the project runs 5.17). The steps are the ones optimum-intel takes for a decoder with past:

1. trace the torch model with ``openvino.convert_model`` through a wrapper that takes the KV
   cache as flat tensors (``past_key_values.<layer>.key|value``) and returns ``logits`` and the
   new cache (``present.<layer>.key|value``), with SDPA attention so the IR holds
   ``ScaledDotProductAttention`` ops (OpenVINO GenAI turns them into PagedAttention);
2. add the ``beam_idx`` input and hide the cache in the model as state (``ReadValue``/``Assign``
   pairs, zero-initialised per batch) — the stateful form ``LLMPipeline`` expects;
3. compress the weights with NNCF (``int8``: asymmetric per-channel; ``int4``: asymmetric,
   groups of 64 since SmolLM2's 576 channels do not divide by NNCF's default 128; ``fp32``:
   none).

Measured on the prepared SmolLM2 (BENCHMARKS.md, *OpenVINO GenAI*): the int8 IR this writes
has the same holdout perplexity and speed as optimum-intel's export of the same folder.

Run in a subprocess by :func:`atalaia.models.ovgenai.export_ov` (tracing holds ~1 GB)::

    python -m atalaia.models.ov_convert SRC_DIR OUT_DIR int8
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

#: Weight formats :func:`convert` writes.
PRECISIONS = ("int8", "int4", "fp32")
#: NNCF's int4 group size; must divide the hidden size (576 for SmolLM2).
INT4_GROUP_SIZE = 64
IR_NAME = "openvino_model.xml"


def kv_names(layers: int) -> tuple[list[str], list[str]]:
    """Names of the cache inputs and outputs, in the wrapper's order.

    >>> kv_names(1)
    (['past_key_values.0.key', 'past_key_values.0.value'], ['present.0.key', 'present.0.value'])
    """
    inputs = [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    return inputs, [name.replace("past_key_values", "present") for name in inputs]


def trace(src_dir: Path) -> Any:
    """The stateless IR of ``src_dir`` (KV cache as inputs and outputs), traced on CPU."""
    import openvino as ov
    import torch
    from transformers import AutoModelForCausalLM, DynamicCache

    model = AutoModelForCausalLM.from_pretrained(
        src_dir, dtype=torch.float32, attn_implementation="sdpa", local_files_only=True
    ).eval()
    config = model.config
    layers = int(config.num_hidden_layers)
    heads = int(config.num_key_value_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)

    class _WithFlatCache(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, position_ids: Any, *past: Any) -> tuple[Any, ...]:
            cache = DynamicCache(config=config)
            # Filled directly: DynamicLayer's lazy start concatenates onto an empty 1-D tensor,
            # which the tracer records with the wrong rank.
            layer: Any
            for i, layer in enumerate(cache.layers):
                layer.dtype, layer.device = past[0].dtype, past[0].device
                layer.keys, layer.values, layer.is_initialized = past[2 * i], past[2 * i + 1], True
            out = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=cache,
                use_cache=True,
                return_dict=True,
            )
            flat = [out.logits]
            for layer in out.past_key_values.layers:
                flat += [layer.keys, layer.values]
            return tuple(flat)

    # Example shapes with a non-empty past and a multi-token step, so that no branch the
    # tracer records is the one-token or empty-cache special case.
    past_len, step = 3, 2
    example = [
        torch.ones(1, step, dtype=torch.long),
        torch.ones(1, past_len + step, dtype=torch.long),
        torch.arange(past_len, past_len + step).unsqueeze(0),
    ] + [torch.zeros(1, heads, past_len, head_dim) for _ in range(2 * layers)]
    shapes = [ov.PartialShape([-1, -1])] * 3 + [ov.PartialShape([-1, heads, -1, head_dim])] * (2 * layers)
    types = [ov.Type.i64] * 3 + [ov.Type.f32] * (2 * layers)
    inputs = list(zip(shapes, types, strict=True))
    with torch.no_grad():
        ir = ov.convert_model(_WithFlatCache(), example_input=tuple(example), input=inputs)
    kv_in, kv_out = kv_names(layers)
    for port, name in zip(ir.inputs, ["input_ids", "attention_mask", "position_ids", *kv_in], strict=True):
        port.get_tensor().set_names({name})
    for port, name in zip(ir.outputs, ["logits", *kv_out], strict=True):
        port.get_tensor().set_names({name})
    return ir, layers


def make_stateful(ir: Any, layers: int) -> None:
    """Add ``beam_idx`` and turn the cache inputs/outputs into zero-initialised model state."""
    import numpy as np
    import openvino as ov
    from openvino import opset13
    from openvino._offline_transformations import apply_make_stateful_transformation

    kv_in, kv_out = kv_names(layers)
    batch = ir.input("input_ids").get_partial_shape()[0]
    beam_idx = opset13.parameter(name="beam_idx", dtype=ov.Type.i32, shape=ov.PartialShape([batch]))
    beam_idx.output(0).get_tensor().add_names({"beam_idx"})
    ir.add_parameters([beam_idx])
    # The pipeline reorders the cache between beams by gathering along the batch axis.
    for name in kv_in:
        port = ir.input(name)
        consumers = port.get_target_inputs()
        gather = opset13.gather(port, beam_idx, opset13.constant(0))
        for consumer in consumers:
            consumer.replace_source_output(gather.output(0))
    ir.validate_nodes_and_infer_types()
    apply_make_stateful_transformation(ir, dict(zip(kv_in, kv_out, strict=True)))
    # Each state starts as zeros of shape [batch, heads, 0, head_dim] for the request's batch.
    ids = ir.input("input_ids")
    batch_size = opset13.gather(opset13.shape_of(ids, output_type="i64"), opset13.constant([0]), opset13.constant(0))
    for op in ir.get_ops():
        if op.get_type_name() == "ReadValue":
            dims: list[Any] = [d.min_length for d in list(op.get_output_partial_shape(0))]
            dims[0] = batch_size
            dims = [opset13.constant(np.array([d], dtype=np.int64)) if isinstance(d, int) else d for d in dims]
            zeros = opset13.broadcast(
                opset13.constant(0.0, dtype=op.get_output_element_type(0)), opset13.concat(dims, axis=0)
            )
            op.set_arguments([zeros])
    ir.validate_nodes_and_infer_types()


def compress(ir: Any, precision: str) -> Any:
    """``ir`` with NNCF weight compression for ``precision`` (``fp32``: unchanged)."""
    if precision == "fp32":
        return ir
    import nncf

    if precision == "int8":
        return nncf.compress_weights(ir, mode=nncf.CompressWeightsMode.INT8_ASYM)
    return nncf.compress_weights(ir, mode=nncf.CompressWeightsMode.INT4_ASYM, group_size=INT4_GROUP_SIZE)


def convert(src_dir: Path | str, out_dir: Path | str, precision: str = "int8") -> Path:
    """Write ``out_dir/openvino_model.xml`` (+ ``.bin``) from the float32 folder ``src_dir``.

    Raises
    ------
    ValueError
        Unknown precision.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    import openvino as ov

    ir, layers = trace(Path(src_dir))
    make_stateful(ir, layers)
    ir = compress(ir, precision)
    out = Path(out_dir) / IR_NAME
    out.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(ir, str(out), compress_to_fp16=False)
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m atalaia.models.ov_convert SRC OUT PRECISION``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        print("usage: python -m atalaia.models.ov_convert SRC_DIR OUT_DIR int8|int4|fp32", file=sys.stderr)
        return 2
    convert(args[0], args[1], args[2])
    return 0


if __name__ == "__main__":
    sys.exit(main())
