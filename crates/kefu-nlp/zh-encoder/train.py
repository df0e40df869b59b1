#!/usr/bin/env python3
"""Trains kefu's Chinese sentence encoder from ../shared/datasets (`make zh-model`).

The model is a small BERT (2 layers, 192 dimensions, 4 heads) over Chinese characters and
English word pieces, shaped like all-MiniLM-L6-v2 so that kefu's own forward pass
(crates/kefu-nlp/src/bert) runs it: mean pooling over the tokens, L2-normalised.

1. A WordPiece vocabulary: every Chinese character that occurs a few times, and English
   word pieces for mixed text ("我的iPhone充不进电").
2. Masked-language pretraining on all the Chinese text at hand (the sentiment corpora and
   both sides of every sentence pair), so that the characters mean something before the
   pairs arrive.
3. Contrastive training on the sentence pairs (paraphrases, similar sentences,
   entailments): each sentence must pick its partner out of the batch, with the pair
   sets' non-matching partners as hard negatives.

BQ's test split is kefu's Chinese FAQ validation set (eval/split.py); no pair that shares
a text with it is used here. Fixed seed and step counts; the run
takes about 28 minutes on 2 cores. The WordPiece trainer of `tokenizers` breaks ties
between equally frequent tokens in hash order, so a retrain is an equivalent model, not
the same bits. Writes config.json, tokenizer.json,
model.safetensors (half precision) and reference.json (a few texts' embeddings, for
kefu's test that it reads the model as PyTorch does) to --out.
"""

import argparse
import csv
import json
import os
import random
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tokenizers import BertWordPieceTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, "..", "..", ".."))
sys.path.insert(0, os.path.join(REPO, "eval"))
import split  # noqa: E402  (the BQ validation set is defined there, once)

HIDDEN, LAYERS, HEADS, INTERMEDIATE = 192, 2, 4, 768
MAX_TOKENS = 128
VOCAB = 7000
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# Embedded here and again by kefu (reference.json): a test checks that both agree.
REFERENCE_TEXTS = ["我的银行卡丢了怎么办", "退款三个星期了还没到账，你们到底管不管？", "我的iPhone充不进电了",
                   "谢谢，问题解决了", "客服态度很好" * 30]


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def corpora(datasets):
    """Chinese texts for the vocabulary and pretraining, English texts for word pieces,
    and the positive pairs with their hard negatives."""
    held_out = split.bq_validation_texts(datasets)
    pairs_dir = os.path.join(datasets, "zh_pairs")
    texts, english = [], []
    for name in ("weibo_emotion_smp2020", "weibo_emotion_nlpcc2013", "car_reviews_bdci2018"):
        texts += [r["text"] for r in rows(os.path.join(datasets, "zh_sentiment", name + ".csv"))]
    for r in rows(os.path.join(datasets, "zh_sentiment", "helpdesk_satisfaction_stc3.csv")):
        texts += [t.split(":", 1)[-1].strip() for t in r["text"].split(" || ")]
    texts += [r["text"] for r in rows(os.path.join(datasets, "waimai_sentiment", "train.csv"))]
    for folder, name in (("banking77", "train"), ("airline_sentiment", "train")):
        english += [r["text"] for r in rows(os.path.join(datasets, folder, name + ".csv"))]
    english += [r["text"] for r in rows(os.path.join(datasets, "en_tweets", "semeval2017_task4a.csv"))]

    positives, negatives = [], {}
    seen = set()

    def keep(a, b):
        a, b = a.strip(), b.strip()
        if not a or not b or split.key(a) in held_out or split.key(b) in held_out:
            return None
        return a, b

    for f in sorted(os.listdir(pairs_dir)):
        for r in rows(os.path.join(pairs_dir, f)):
            if f == "bq_corpus.csv" and r["split"] == split.BQ_VALIDATION_SPLIT:
                continue
            pair = keep(r["text_a"], r["text_b"])
            if pair is None:
                continue
            for t in pair:
                if t not in seen:
                    seen.add(t)
                    texts.append(t)
            label = r["label"]
            if label in ("1", "entailment") or (f.endswith("sts.csv") or f.endswith("stsb.csv")) and float(label) >= 4:
                positives.append(pair)
            elif label in ("0", "contradiction"):
                negatives.setdefault(pair[0], []).append(pair[1])
    return texts, english, positives, negatives


def build_tokenizer(texts, english, out_dir):
    """WordPiece over characters and English words. No [CLS] or [SEP] is added: a text's
    embedding is the mean of its own tokens."""
    tok = BertWordPieceTokenizer(clean_text=True, handle_chinese_chars=True, strip_accents=True, lowercase=True)
    tok.train_from_iterator(
        texts + english, vocab_size=VOCAB, min_frequency=3, limit_alphabet=5500, special_tokens=SPECIAL,
        show_progress=False,
    )
    tok.enable_truncation(MAX_TOKENS)
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    return tok


class Layer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.query = torch.nn.Linear(HIDDEN, HIDDEN)
        self.key = torch.nn.Linear(HIDDEN, HIDDEN)
        self.value = torch.nn.Linear(HIDDEN, HIDDEN)
        self.attn_out = torch.nn.Linear(HIDDEN, HIDDEN)
        self.ln1 = torch.nn.LayerNorm(HIDDEN, eps=1e-12)
        self.inter = torch.nn.Linear(HIDDEN, INTERMEDIATE)
        self.out = torch.nn.Linear(INTERMEDIATE, HIDDEN)
        self.ln2 = torch.nn.LayerNorm(HIDDEN, eps=1e-12)

    def forward(self, x, pad):
        b, n, _ = x.shape
        split_heads = lambda t: t.view(b, n, HEADS, HIDDEN // HEADS).transpose(1, 2)
        q, k, v = split_heads(self.query(x)), split_heads(self.key(x)), split_heads(self.value(x))
        mask = (~pad)[:, None, None, :]
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.1 if self.training else 0.0)
        a = a.transpose(1, 2).reshape(b, n, HIDDEN)
        x = self.ln1(x + F.dropout(self.attn_out(a), 0.1, self.training))
        return self.ln2(x + F.dropout(self.out(F.gelu(self.inter(x))), 0.1, self.training))


class Encoder(torch.nn.Module):
    def __init__(self, vocab):
        super().__init__()
        self.word = torch.nn.Embedding(vocab, HIDDEN, padding_idx=0)
        self.position = torch.nn.Embedding(MAX_TOKENS, HIDDEN)
        self.token_type = torch.nn.Embedding(2, HIDDEN)
        self.ln = torch.nn.LayerNorm(HIDDEN, eps=1e-12)
        self.layers = torch.nn.ModuleList(Layer() for _ in range(LAYERS))
        # masked-language head, tied to the word embeddings; not exported
        self.mlm = torch.nn.Sequential(torch.nn.Linear(HIDDEN, HIDDEN), torch.nn.GELU(), torch.nn.LayerNorm(HIDDEN))
        self.mlm_bias = torch.nn.Parameter(torch.zeros(vocab))
        for p in self.parameters():
            if p.dim() > 1:
                torch.nn.init.normal_(p, std=0.02)

    def hidden(self, ids):
        pad = ids == 0
        pos = torch.arange(ids.shape[1])[None, :]
        x = self.word(ids) + self.position(pos) + self.token_type.weight[0]
        x = F.dropout(self.ln(x), 0.1, self.training)
        for layer in self.layers:
            x = layer(x, pad)
        return x, pad

    def embed(self, ids):
        x, pad = self.hidden(ids)
        keep = (~pad).unsqueeze(-1).float()
        v = (x * keep).sum(1) / keep.sum(1)
        return F.normalize(v, dim=-1)

    def mlm_logits(self, x):
        return self.mlm(x) @ self.word.weight.T + self.mlm_bias

    def export(self):
        """The weights under all-MiniLM-L6-v2's tensor names, in half precision."""
        t = {
            "embeddings.word_embeddings.weight": self.word.weight,
            "embeddings.position_embeddings.weight": self.position.weight,
            "embeddings.token_type_embeddings.weight": self.token_type.weight,
            "embeddings.LayerNorm.weight": self.ln.weight,
            "embeddings.LayerNorm.bias": self.ln.bias,
        }
        names = {
            "query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
            "attn_out": "attention.output.dense", "ln1": "attention.output.LayerNorm",
            "inter": "intermediate.dense", "out": "output.dense", "ln2": "output.LayerNorm",
        }
        for i, layer in enumerate(self.layers):
            for attr, name in names.items():
                m = getattr(layer, attr)
                t[f"encoder.layer.{i}.{name}.weight"] = m.weight
                t[f"encoder.layer.{i}.{name}.bias"] = m.bias
        return {k: v.detach().to(torch.float16).contiguous() for k, v in t.items()}


def batch_ids(tok, texts):
    enc = tok.encode_batch(texts)
    n = max(len(e.ids) for e in enc)
    out = torch.zeros(len(enc), n, dtype=torch.long)
    for i, e in enumerate(enc):
        out[i, : len(e.ids)] = torch.tensor(e.ids)
    return out


def optimizer_step(opt, loss, lr):
    """One update at learning rate `lr`; returns the loss."""
    for g in opt.param_groups:
        g["lr"] = lr
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


def pretrain(model, tok, texts, steps, rng):
    """Masked-language modelling: 15% of the tokens (not [CLS]/[SEP]), 80% of them masked,
    10% replaced by a random token, 10% kept."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    mask_id, vocab = tok.token_to_id("[MASK]"), tok.get_vocab_size()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    batches = [order[i : i + 128] for i in range(0, len(order), 128)]
    rng.shuffle(batches)
    start, losses = time.time(), []
    model.train()
    for step in range(steps):
        ids = batch_ids(tok, [texts[i] for i in batches[step % len(batches)]])
        inner = ids > 4
        chosen = (torch.rand(ids.shape) < 0.15) & inner
        labels = torch.where(chosen, ids, torch.full_like(ids, -100))
        r = torch.rand(ids.shape)
        ids = torch.where(chosen & (r < 0.8), torch.full_like(ids, mask_id), ids)
        ids = torch.where(chosen & (r >= 0.8) & (r < 0.9), torch.randint(5, vocab, ids.shape), ids)
        x, _ = model.hidden(ids)
        sel = labels != -100
        loss = F.cross_entropy(model.mlm_logits(x[sel]), labels[sel])
        losses.append(optimizer_step(opt, loss, 1e-3 * min(1.0, (step + 1) / 200)))
        if (step + 1) % 100 == 0:
            log(f"pretraining: step {step + 1}/{steps}, loss {np.mean(losses[-100:]):.3f}, {time.time() - start:.0f} s")


def contrast(model, tok, positives, negatives, steps, rng, batch=96, temperature=0.05):
    """In-batch contrastive training: a sentence's partner against the other partners and
    the hard negatives in the batch, in both directions."""
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.01)
    order = list(range(len(positives)))
    start, losses = time.time(), []
    model.train()
    for step in range(steps):
        if step * batch % len(order) < batch:
            rng.shuffle(order)
        at = step * batch % len(order)
        chunk = [positives[i] for i in order[at : at + batch]]
        a = [p[0] for p in chunk]
        b = [p[1] for p in chunk]
        hard = [rng.choice(negatives[x]) for x in a if x in negatives]
        ea = model.embed(batch_ids(tok, a))
        eb = model.embed(batch_ids(tok, b + hard))
        logits = ea @ eb.T / temperature
        target = torch.arange(len(a))
        loss = F.cross_entropy(logits, target) + F.cross_entropy(logits[:, : len(a)].T, target)
        losses.append(optimizer_step(opt, loss, 5e-4 * min(1.0, (step + 1) / 100) * max(0.05, 1 - step / steps)))
        if (step + 1) % 50 == 0:
            log(f"pairs: step {step + 1}/{steps}, loss {np.mean(losses[-50:]):.3f}, {time.time() - start:.0f} s")
    log(f"pairs: {steps * batch / len(order):.1f} passes over {len(order)} pairs")


@torch.no_grad()
def bq_mrr(model, tok, datasets):
    """MRR@10 of the dense encoder alone on the BQ FAQ validation set."""
    out = os.path.join(REPO, "data", "eval")
    os.makedirs(out, exist_ok=True)
    split.bq_faq(datasets, out)
    docs = [json.loads(l) for l in open(os.path.join(out, "bq_faq_docs.jsonl"), encoding="utf-8")]
    queries = rows(os.path.join(out, "bq_faq_queries.csv"))
    model.eval()
    embed = lambda ts: torch.cat([model.embed(batch_ids(tok, ts[i : i + 256])) for i in range(0, len(ts), 256)])
    d = embed([x["text"] for x in docs])
    q = embed([r["text"] for r in queries])
    top = (q @ d.T).topk(10, dim=1).indices
    ids = [x["id"] for x in docs]
    rr = []
    for r, t in zip(queries, top.tolist()):
        hits = [i for i, j in enumerate(t) if ids[j] == r["doc_id"]]
        rr.append(1 / (hits[0] + 1) if hits else 0.0)
    return float(np.mean(rr)), len(queries), len(docs)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default=os.path.join(REPO, "..", "shared", "datasets"))
    p.add_argument("--out", default=HERE)
    p.add_argument("--mlm-steps", type=int, default=3000, help="masked-language steps of 128 texts")
    p.add_argument("--pair-steps", type=int, default=1300, help="contrastive steps of 96 pairs")
    p.add_argument("--seed", type=int, default=20261206)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)

    texts, english, positives, negatives = corpora(args.datasets)
    log(f"{len(texts)} Chinese texts, {len(english)} English texts, {len(positives)} positive pairs, "
        f"{sum(map(len, negatives.values()))} hard negatives")
    tok = build_tokenizer(texts, english, args.out)
    log(f"vocabulary: {tok.get_vocab_size()} tokens")
    model = Encoder(tok.get_vocab_size())
    pretrain(model, tok, texts, args.mlm_steps, rng)
    contrast(model, tok, positives, negatives, args.pair_steps, rng)
    mrr, nq, nd = bq_mrr(model, tok, args.datasets)
    log(f"BQ FAQ validation: MRR@10 {mrr:.4f} ({nq} queries, {nd} entries), dense alone")

    save_file(model.export(), os.path.join(args.out, "model.safetensors"))
    with torch.no_grad():
        model.eval()
        vectors = model.embed(batch_ids(tok, REFERENCE_TEXTS))
    with open(os.path.join(args.out, "reference.json"), "w", encoding="utf-8") as f:
        json.dump([{"text": t, "embedding": [round(x, 5) for x in v.tolist()]} for t, v in zip(REFERENCE_TEXTS, vectors)],
                  f, ensure_ascii=False)
    config = {
        "architectures": ["BertModel"], "model_type": "bert", "hidden_act": "gelu",
        "hidden_size": HIDDEN, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
        "intermediate_size": INTERMEDIATE, "max_position_embeddings": MAX_TOKENS,
        "type_vocab_size": 2, "vocab_size": tok.get_vocab_size(), "layer_norm_eps": 1e-12,
        "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "initializer_range": 0.02,
        "pad_token_id": 0, "position_embedding_type": "absolute",
    }
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    size = sum(os.path.getsize(os.path.join(args.out, n)) for n in ("model.safetensors", "tokenizer.json", "config.json"))
    log(f"wrote {args.out}: {size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
