"""Convert the ERC literature's feature pickles (IEMOCAP_features.pkl, MELD_features*.pkl, as
released with DialogueRNN / DialogueGCN and used by SUMMER's baselines) into summerd's native
training format, so that anyone holding them can train and evaluate with `summerd train`.

The pickle holds, per dialogue id: utterance ids, speakers (letters such as 'M'/'F', or one-hot
vectors), labels (class indices), text, audio and visual vectors; plus the train and test
dialogue ids. Accepted layouts: a dict with the keys videoIDs, videoSpeakers, videoLabels,
videoText, videoAudio, videoVisual, trainVid, testVid; or a tuple/list in that order, with
videoSentence allowed after videoVisual (9 items) and extra trailing items ignored.

    python models/convert_erc_pickle.py IEMOCAP_features.pkl OUTDIR \
        --classes happy,sad,neutral,angry,excited,frustrated [--dev-fraction 0.1]

writes OUTDIR/{train,dev,test}.safetensors with their .json sidecars. The dev split is the last
--dev-fraction of the train dialogues (sorted by id), so the test split is only used for testing.
"""

import argparse
import json
import pickle
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

KEYS = ["videoIDs", "videoSpeakers", "videoLabels", "videoText", "videoAudio", "videoVisual",
        "trainVid", "testVid"]


def unpack(obj):
    if isinstance(obj, dict):
        missing = [k for k in KEYS if k not in obj]
        if missing:
            sys.exit(f"the pickle's dict lacks {missing}")
        return {k: obj[k] for k in KEYS}
    if isinstance(obj, (tuple, list)):
        items = list(obj)
        if len(items) >= 9 and isinstance(items[6], dict) and not isinstance(items[7], dict):
            # videoSentence at 6: drop it
            items = items[:6] + items[7:]
        if len(items) < 8:
            sys.exit(f"a tuple of {len(items)} items: expected at least 8 ({', '.join(KEYS)})")
        return dict(zip(KEYS, items[:8]))
    sys.exit(f"unexpected pickle content: {type(obj).__name__}")


def speaker_indices(values):
    out, names = [], []
    for v in values:
        if isinstance(v, str):
            if v not in names:
                names.append(v)
            out.append(names.index(v))
        else:
            out.append(int(np.argmax(np.asarray(v))))
    return out


def write(path, vids, d, classes, source, dims):
    text, audio, visual, spk, lab, offsets = [], [], [], [], [], [0]
    for v in vids:
        n = len(d["videoLabels"][v])
        for name, acc in (("videoText", text), ("videoAudio", audio), ("videoVisual", visual)):
            m = np.asarray(d[name][v], dtype=np.float32).reshape(n, -1)
            acc.append(m)
        spk.extend(speaker_indices(d["videoSpeakers"][v]))
        lab.extend(int(x) for x in d["videoLabels"][v])
        offsets.append(offsets[-1] + n)
    tensors = {
        "offsets": np.asarray(offsets, dtype=np.int64),
        "speaker": np.asarray(spk, dtype=np.int64),
        "label": np.asarray(lab, dtype=np.int64),
    }
    features = {}
    present = []
    for name, key, acc in (("text", "videoText", text), ("audio", "videoAudio", audio),
                           ("visual", "videoVisual", visual)):
        if dims[name] > 0:
            tensors[name] = np.concatenate(acc).astype(np.float32)
            features[name] = {"extractor": f"erc-pickle/{key}", "dim": dims[name]}
        else:
            features[name] = None
        present.append(dims[name] > 0)
    n = offsets[-1]
    tensors["present"] = np.tile(np.asarray(present, dtype=np.uint8), (n, 1))
    if max(lab, default=0) >= len(classes):
        sys.exit(f"label {max(lab)} but only {len(classes)} classes given")
    save_file(tensors, str(path))
    sidecar = {
        "format": "summerd-dataset/1",
        "classes": classes,
        "features": features,
        "dialogues": [str(v) for v in vids],
        "groups": [str(v) for v in vids],
        "source": source,
    }
    Path(str(path) + ".json").write_text(json.dumps(sidecar, indent=2) + "\n")
    print(f"{path}: {n} utterances in {len(vids)} dialogues")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pickle")
    ap.add_argument("out")
    ap.add_argument("--classes", required=True, help="class names in label order, comma-separated")
    ap.add_argument("--dev-fraction", type=float, default=0.1)
    a = ap.parse_args()
    with open(a.pickle, "rb") as f:
        d = unpack(pickle.load(f, encoding="latin1"))
    classes = a.classes.split(",")
    train = sorted(d["trainVid"], key=str)
    test = sorted(d["testVid"], key=str)
    n_dev = max(1, int(round(len(train) * a.dev_fraction)))
    train, dev = train[:-n_dev], train[-n_dev:]
    first = train[0]
    n0 = len(d["videoLabels"][first])
    dims = {name: int(np.asarray(d[key][first], dtype=np.float32).reshape(n0, -1).shape[1])
            for name, key in (("text", "videoText"), ("audio", "videoAudio"), ("visual", "videoVisual"))}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    src = Path(a.pickle).name
    for split, vids in (("train", train), ("dev", dev), ("test", test)):
        write(out / f"{split}.safetensors", vids, d, classes, f"{src} ({split})", dims)


if __name__ == "__main__":
    main()
