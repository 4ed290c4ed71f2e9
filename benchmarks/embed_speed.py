"""Embedding speed on CPU and what a faster backend changes downstream, side by side in one run.

Backends (all the bundled all-MiniLM-L6-v2, on the bundled T0 pool of real prompt/completion text):
  torch      sentence-transformers under PyTorch, float32 (the reference)
  torch-bf16 the same model under CPU bfloat16 autocast (the default on CPUs with native bfloat16: AMX / AVX512-BF16)
  onnx-int8  `llm_curate.embed.onnx_int8_model`: ONNX export, MatMul weights int8 per channel, ONNX Runtime
  model2vec  (--model2vec) a static model distilled offline from the same MiniLM (`model2vec.distill`, minutes once;
             cached under <llm_curate cache>/models/model2vec)

Speed: texts/s on the same --speed-n texts, backends interleaved (--reps rounds, best round kept), no cache.
Agreement with torch on --n texts: cosine of the rows, neighbour overlap@10 of the exact k-NN graphs, and the
curation report (DS2 ScoreCurator, same ratings): transition matrix (max |dT|), flagged samples (Jaccard), curated
scores (share equal). The ratings are real text's template turned into a score (each T0 template one level, so
neighbours share quality, as curation assumes) with --noise of them replaced at random; the clean control
(--noise 0) is where nothing should change. A torch-vs-torch repeat row checks the metrics themselves (1.0).

    python benchmarks/embed_speed.py                 # 2,000 texts for agreement, 400 for speed
    python benchmarks/embed_speed.py --n 5000 --model2vec
"""
import argparse, hashlib, os, sys, time
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
import numpy as np


def texts_and_templates(n):
    from llm_curate.data import load_samples, render_conversation
    from llm_curate.pipeline import demo_pool
    ds = load_samples(demo_pool(), progress=False).select(range(n))
    return [render_conversation(m) for m in ds['messages']], list(ds['template'])


def model2vec_model(progress=True):
    from llm_curate.data import default_cache_dir
    from llm_curate.models import minilm_path
    d = default_cache_dir() / 'models' / 'model2vec' / 'all-MiniLM-L6-v2-pca256'
    from model2vec import StaticModel
    if (d / 'config.json').exists(): return StaticModel.from_pretrained(str(d))
    from model2vec.distill import distill
    t = time.perf_counter()
    m = distill(model_name=minilm_path(), pca_dims=256)
    m.save_pretrained(str(d))
    print(f"(model2vec: distilled once in {time.perf_counter() - t:.0f} s -> {d})", file=sys.stderr)
    return m


def encoder(name):
    "A function texts -> (N, d) unit rows."
    from llm_curate.embed import embed_texts
    if name == 'model2vec':
        m = model2vec_model()
        def enc(texts):
            E = np.asarray(m.encode(list(texts)), np.float32)
            return E / np.maximum(np.linalg.norm(E, axis=1, keepdims=True), 1e-12)
        return enc
    embed_texts(['warm up'], backend=name, cache_dir=False, progress=False)  # load (and export once) outside the timing
    return lambda texts: embed_texts(list(texts), backend=name, cache_dir=False, progress=False)


def knn(X, k=10):
    S = X @ X.T
    np.fill_diagonal(S, -np.inf)
    return np.argpartition(-S, k, axis=1)[:, :k]


def overlap(A, B):
    return float(np.mean([len(set(a) & set(b)) / len(a) for a, b in zip(A, B)]))


def ratings(templates, noise, seed=0):
    "A score per template (its hash mod 6), then a `noise` share of them replaced by a random level."
    true = np.array([int(hashlib.sha1(t.encode()).hexdigest(), 16) % 6 for t in templates])
    rng = np.random.default_rng(seed)
    y = true.copy(); flip = rng.random(len(y)) < noise
    y[flip] = rng.integers(0, 6, flip.sum())
    return y, true


def curate(X, y):
    from llm_curate.curate import curate_scores
    return curate_scores(X, y, k=10, random_state=0)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--n', type=int, default=2000, help='texts for the agreement measures (the pool has 5,000)')
    ap.add_argument('--speed-n', type=int, default=400, help='texts timed per backend and round')
    ap.add_argument('--reps', type=int, default=2, help='interleaved timing rounds (best kept)')
    ap.add_argument('--noise', type=float, default=0.3, help='share of ratings replaced at random')
    ap.add_argument('--model2vec', action='store_true', help='also the distilled static model (distils once: minutes)')
    args = ap.parse_args()
    names = ['torch', 'torch-bf16', 'onnx-int8'] + (['model2vec'] if args.model2vec else [])
    texts, templates = texts_and_templates(args.n)
    print(f"load: {os.getloadavg()[0]:.1f} (1 min) on {os.cpu_count()} cores; {args.n:,} texts of the bundled T0 pool "
          f"(median {int(np.median([len(t) for t in texts]))} characters)")
    encs = {n: encoder(n) for n in names}
    rng = np.random.default_rng(1)
    speed_texts = [texts[i] for i in rng.choice(len(texts), min(args.speed_n, len(texts)), replace=False)]
    best = {n: np.inf for n in names}
    for _ in range(args.reps):
        for n in names:
            t = time.perf_counter(); encs[n](speed_texts); best[n] = min(best[n], time.perf_counter() - t)
    print(f"load after timing: {os.getloadavg()[0]:.1f}")
    X = {n: encs[n](texts) for n in names}
    X['torch (repeat)'] = encs['torch'](texts)
    G = {n: knn(x) for n, x in X.items()}
    rows = []
    for noise in (args.noise, 0.0):
        y, true = ratings(templates, noise)
        reps = {n: curate(x, y) for n, x in X.items()}
        ref = reps['torch'].frame
        for n in X:
            f = reps[n].frame
            fa, fb = set(ref.id[ref.flagged]), set(f.id[f.flagged])
            rows.append(dict(
                backend=n, noise=noise,
                texts_s=len(speed_texts) / best[n] if n in best else np.nan,
                speedup=best['torch'] / best[n] if n in best else np.nan,
                cos=float(np.mean(np.sum(X[n] * X['torch'], 1))) if X[n].shape == X['torch'].shape else np.nan,
                overlap10=overlap(G[n], G['torch']),
                dT=float(np.abs(np.asarray(reps[n].transition_matrix) - np.asarray(reps['torch'].transition_matrix)).max()),
                flagged=int(f.flagged.sum()),
                flag_jaccard=len(fa & fb) / max(len(fa | fb), 1),
                curated_equal=float((f.curated_score.to_numpy() == ref.curated_score.to_numpy()).mean()),
                changed=int((f.curated_score != f.score).sum()),
                acc_rated=float((y == true).mean()), acc_curated=float((f.curated_score.to_numpy() == true).mean())))
    import pandas as pd
    tab = pd.DataFrame(rows)
    pd.set_option('display.width', 200)
    print(tab.to_string(index=False, float_format=lambda v: f'{v:.3f}'))
    print("texts_s: texts per second (best of the rounds); cos: mean cosine to the torch row; overlap10: share of the 10 nearest "
          "neighbours shared with torch's graph; dT: largest change of a transition-matrix entry; flag_jaccard / curated_equal: "
          "flagged set and curated scores vs torch's; acc_*: share equal to the template's score before / after curation.")


if __name__ == '__main__':
    main()
