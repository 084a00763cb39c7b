"""Write a Fashion-MNIST image folder (PNG files, one sub-folder per class) for ``optin-deploy build --data``.

    python benchmarks/fashion_image_folder.py --out /tmp/fashion-folder --train 2000 --validation 500 --test 2000

Layout: ``OUT/{train,validation,test}/<label>/<index>.png`` (``/`` in a label becomes ``-``: ``T-shirt-top``), the same seeded splits as the built-in
``fashion-mnist`` (55k train / 5k validation from the official training set, the official test set),
each cut to the first N images of its (seeded, shuffled) order. Nothing in OUT is overwritten: the
folder must not exist yet.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--train", type=int, default=2000)
    p.add_argument("--validation", type=int, default=500)
    p.add_argument("--test", type=int, default=2000)
    args = p.parse_args(argv)
    from PIL import Image

    from optin_deploy.data.builtin import FASHION_LABELS, SEED, _fashion_arrays, stratified_split

    out = Path(args.out)
    if out.exists():
        sys.exit(f"{out} exists; pass a new folder")
    xtr, ytr, xte, yte, _ = _fashion_arrays()
    tr, va = stratified_split(ytr, len(ytr), fractions=(55, 5), seed=SEED)
    splits = {"train": (xtr, ytr, tr[: args.train]), "validation": (xtr, ytr, va[: args.validation]),
              "test": (xte, yte, np.arange(len(yte))[: args.test])}
    tmp = out.with_name(f".{out.name}.tmp")
    for split, (x, y, idx) in splits.items():
        for i in idx:
            # the class folders are named after the labels ("/" cannot be in a folder name: "T-shirt-top");
            # build matches them to the model's id2label by name
            d = tmp / split / FASHION_LABELS[int(y[i])].replace("/", "-")
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.asarray(x[i, 0], dtype=np.uint8), mode="L").save(d / f"{int(i):05d}.png")
        print(f"{split}: {len(idx)} images", file=sys.stderr)
    tmp.rename(out)
    print(out)


if __name__ == "__main__":
    main()
