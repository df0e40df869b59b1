#!/usr/bin/env python3
"""Deterministic stratified train/validation splits of the development datasets.

Reads the shared datasets (never copied into the repository) and writes
data/eval/<name>_{train,val}.csv with the same columns. Per label, rows are ordered by
a hash of their text and the first VAL_FRACTION go to validation, so the split does
not depend on file order and never changes between runs. Rows with the same
(case-insensitive, whitespace-collapsed) text always land on the same side, so no
validation text is seen in training.

Usage: python3 eval/split.py [--datasets ../shared/datasets] [--out data/eval]
"""

import argparse
import csv
import hashlib
import os
import sys
from collections import defaultdict

VAL_FRACTION = 0.15
SEED = "kefu-eval-v1"

# name -> (folder, label column)
DATASETS = {
    "banking77": ("banking77", "intent"),
    "airline": ("airline_sentiment", "sentiment"),
    "waimai": ("waimai_sentiment", "sentiment"),
}


def key(text):
    return " ".join(text.lower().split())


def rank(text):
    return hashlib.sha256((SEED + "\0" + key(text)).encode("utf-8")).hexdigest()


def split_rows(rows, label_col):
    by_label = defaultdict(list)
    for row in rows:
        by_label[row[label_col]].append(row)
    val_keys = set()
    for label in sorted(by_label):
        group = sorted(by_label[label], key=lambda r: rank(r["text"]))
        n_val = max(1, round(len(group) * VAL_FRACTION))
        for row in group[:n_val]:
            val_keys.add(key(row["text"]))
    train = [r for r in rows if key(r["text"]) not in val_keys]
    val = [r for r in rows if key(r["text"]) in val_keys]
    return train, val


def write(path, fieldnames, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fieldnames, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    repo = os.path.dirname(here)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default=os.path.join(repo, "..", "shared", "datasets"))
    p.add_argument("--out", default=os.path.join(repo, "data", "eval"))
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for name, (folder, label_col) in DATASETS.items():
        src = os.path.join(args.datasets, folder, "train.csv")
        if not os.path.isfile(src):
            print(f"missing {src}", file=sys.stderr)
            return 1
        with open(src, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            fieldnames = reader.fieldnames
            rows = [r for r in reader if r.get("text") and r.get(label_col)]
        train, val = split_rows(rows, label_col)
        write(os.path.join(args.out, f"{name}_train.csv"), fieldnames, train)
        write(os.path.join(args.out, f"{name}_val.csv"), fieldnames, val)
        print(f"{name}: train={len(train)} val={len(val)} labels={len({r[label_col] for r in rows})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
