#!/usr/bin/env python3
"""Deterministic stratified train/validation splits of the development datasets.

Reads the shared datasets (never copied into the repository) and writes
data/eval/<name>_{train,val}.csv with the same columns. Per label, rows are ordered by
a hash of their text and the first VAL_FRACTION go to validation, so the split does
not depend on file order and never changes between runs. Rows with the same
(case-insensitive, whitespace-collapsed) text always land on the same side, so no
validation text is seen in training.

It also builds a Chinese FAQ retrieval set from the test split of the BQ bank
question-matching corpus (data/eval/bq_faq_{docs.jsonl,queries.csv}): every distinct first
question is an FAQ entry (the non-matching pairs make many of them near-duplicates of each
other), and the second question of a matching pair, asked in other words, is a query whose
answer is its first question's entry. The Chinese encoder trains on BQ's dev split only,
without any pair that shares a text with this set (`bq_validation_texts`).

Usage: python3 eval/split.py [--datasets ../shared/datasets] [--out data/eval]
"""

import argparse
import csv
import hashlib
import json
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


BQ_PAIRS = os.path.join("zh_pairs", "bq_corpus.csv")
# Enough queries for a stable MRR@10, few enough for `make eval` to stay short.
BQ_QUERIES = 2000
BQ_VALIDATION_SPLIT = "test"


def bq_validation_pairs(datasets):
    with open(os.path.join(datasets, BQ_PAIRS), newline="", encoding="utf-8") as f:
        return [
            r
            for r in csv.DictReader(f)
            if r["split"] == BQ_VALIDATION_SPLIT and r["text_a"].strip() and r["text_b"].strip()
        ]


def bq_validation_texts(datasets):
    """The keys of every text in the BQ validation set: training leaves them out."""
    return {key(r[side]) for r in bq_validation_pairs(datasets) for side in ("text_a", "text_b")}


def bq_faq(datasets, out):
    """Writes the BQ FAQ set; returns (entries, queries)."""
    pairs = bq_validation_pairs(datasets)
    entries = {}
    for pair in pairs:
        entries.setdefault(key(pair["text_a"]), pair["text_a"].strip())
    ids = {k: f"bq-{i}" for i, k in enumerate(sorted(entries, key=rank))}
    queries = {}
    for pair in pairs:
        asked = key(pair["text_b"])
        # a paraphrase that is itself an entry would find itself
        if pair["label"] == "1" and asked not in entries and asked != key(pair["text_a"]):
            queries.setdefault(asked, (pair["text_b"].strip(), ids[key(pair["text_a"])]))
    chosen = sorted(queries, key=rank)[:BQ_QUERIES]
    with open(os.path.join(out, "bq_faq_docs.jsonl"), "w", encoding="utf-8") as f:
        for k in sorted(entries, key=lambda k: ids[k]):
            f.write(json.dumps({"id": ids[k], "title": entries[k], "text": entries[k]}, ensure_ascii=False) + "\n")
    write(
        os.path.join(out, "bq_faq_queries.csv"),
        ["text", "doc_id"],
        [{"text": queries[k][0], "doc_id": queries[k][1]} for k in chosen],
    )
    return len(entries), len(chosen)


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
    entries, queries = bq_faq(args.datasets, args.out)
    print(f"bq_faq: entries={entries} queries={queries}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
