#!/usr/bin/env python
"""Speed and memory of score curation (SPEC.md step 2) on generated embeddings: prints one table.

For each size N and dimension d, a fresh child process generates N clusterable unit-norm float32 embeddings
(topics -> clusters -> samples, 20 samples per cluster) with K=6 ordinal ratings, 30% of them corrupted by a known
transition matrix, then times: the k-NN graph (k=10), HOC (transition matrix), detection (SimiFeat-rank), the
long-tail score, and the whole `ScoreCurator.fit`. Peak RSS is the child's maximum resident set size (it includes
the embedding matrix itself and the interpreter with numpy/pandas/faiss, ~0.2 GB); `RSS/X` divides it by the size
of the embedding matrix. kNN recall@10 is measured against exact search on 1,000 held-out queries.

    python benchmarks/curation_speed.py                       # N = 20k,100k,300k,1M x d = 1024,384
    python benchmarks/curation_speed.py --sizes 20000 --dims 384   # quick run
    python benchmarks/curation_speed.py --sizes 300000 --dims 1024 --spread 1.2   # less clustered: more probes
"""
import argparse, json, os, resource, subprocess, sys, time

import numpy as np


def generate(n: int, d: int, seed: int = 0, noise: float = 0.3, per_cluster: int = 20, spread: float = 0.7):
    "Clusterable unit-norm embeddings (float32, built in chunks), true levels and noisy ratings."
    from llm_curate.synthetic import ordinal_noise
    rng = np.random.default_rng(seed)
    K = 6
    n_clusters = max(n // per_cluster, 2)
    n_topics = max(n_clusters // 50, 2)
    topics = rng.standard_normal((n_topics, d), dtype=np.float32)
    topics /= np.linalg.norm(topics, axis=1, keepdims=True)
    cl_topic = rng.integers(0, n_topics, n_clusters)
    cl_y = rng.integers(0, K, n_clusters)
    cl = rng.integers(0, n_clusters, n)
    X = np.empty((n, d), np.float32)
    for s in range(0, n, 32768):
        c = cl[s:s + 32768]
        # cluster centres are derived from a per-cluster seed, so no (n_clusters, d) matrix is kept
        cen = np.stack([np.random.default_rng((seed, int(j))).standard_normal(d, dtype=np.float32) for j in np.unique(c)])
        pos = np.searchsorted(np.unique(c), c)
        cen /= np.linalg.norm(cen, axis=1, keepdims=True)
        blk = topics[cl_topic[c]] + 0.8 * cen[pos] + spread * rng.standard_normal((len(c), d), dtype=np.float32) / np.float32(np.sqrt(d))
        X[s:s + 32768] = blk / np.linalg.norm(blk, axis=1, keepdims=True)
    y = cl_y[cl]
    T = ordinal_noise(K, 0.7)
    rated = (rng.random(n)[:, None] > np.cumsum(T, axis=1)[y]).sum(1).clip(0, K - 1)
    return X, y, rated


def child(n: int, d: int, k: int, spread: float = 0.7) -> dict:
    from llm_curate.curate import ScoreCurator
    from llm_curate.synthetic import empirical_T
    from llm_curate.knn import knn_graph
    t = time.perf_counter()
    X, y, rated = generate(n, d, spread=spread)
    gen_s = time.perf_counter() - t
    t0 = time.perf_counter()
    g = knn_graph(X, k=k)
    knn_s = time.perf_counter() - t0
    cur = ScoreCurator(k=k).fit(X, rated, graph=g)
    total = time.perf_counter() - t0
    tm = cur.timings_
    t = time.perf_counter(); cur.longtail_ = __import__('llm_curate.curate', fromlist=['x']).longtail_score(g.distances)
    lt_s = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    wrong = rated != y
    f1 = 2 * (cur.flagged_ & wrong).sum() / max(cur.flagged_.sum() + wrong.sum(), 1)
    return {'N': n, 'd': d, 'knn_s': knn_s, 'hoc_s': tm['hoc_s'], 'detect_s': tm['detect_s'], 'longtail_s': lt_s,
            'total_s': total, 'peak_rss_gb': rss / 2**30, 'rss_over_X': rss / X.nbytes, 'method': g.method,
            'recall': g.recall, 'nprobe': g.params.get('nprobe'), 'n_cells': g.params.get('n_cells'),
            'T_mae': float(np.abs(cur.transition_matrix_ - empirical_T(y, rated)).mean()), 'flag_f1': float(f1),
            'acc_rated': float((rated == y).mean()), 'acc_curated': float((cur.curated_scores_ == y).mean()), 'gen_s': gen_s}


def fmt_table(rows) -> str:
    head = ('| N | d | kNN s | HOC s | detect s | long-tail s | total s | peak RSS GB | RSS/X | kNN | recall@10 | T MAE | flag F1 | acc rated→curated |\n'
            '|---:|---:|---:|---:|---:|---:|---:|---:|---:|:--|---:|---:|---:|:--|')
    lines = [head]
    for r in rows:
        if 'error' in r:
            lines.append(f"| {r['N']:,} | {r['d']} | failed: {r['error']} |" + ' |' * 11); continue
        knn = r['method'] + (f" ({r['nprobe']}/{r['n_cells']} cells)" if r['nprobe'] else '')
        rec = '1 (exact)' if r['recall'] is None else f"{r['recall']:.3f}"
        lines.append(f"| {r['N']:,} | {r['d']} | {r['knn_s']:.1f} | {r['hoc_s']:.2f} | {r['detect_s']:.2f} | {r['longtail_s']:.3f} | "
                     f"{r['total_s']:.1f} | {r['peak_rss_gb']:.2f} | {r['rss_over_X']:.2f} | {knn} | {rec} | {r['T_mae']:.4f} | "
                     f"{r['flag_f1']:.3f} | {r['acc_rated']:.3f}→{r['acc_curated']:.3f} |")
    return '\n'.join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--sizes', default='20000,100000,300000,1000000', help='comma-separated N values')
    ap.add_argument('--dims', default='1024,384', help='comma-separated embedding dimensions')
    ap.add_argument('--k', type=int, default=10, help='neighbours')
    ap.add_argument('--spread', type=float, default=0.7, help='within-cluster noise of the generated embeddings (larger = harder k-NN)')
    ap.add_argument('--timeout', type=float, default=1800, help='seconds per (N, d) run')
    ap.add_argument('--json', help='also write the rows as JSON to this file')
    ap.add_argument('--child', nargs=2, type=int, metavar=('N', 'D'), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(child(a.child[0], a.child[1], a.k, a.spread)))
        return 0
    rows = []
    for d in [int(x) for x in a.dims.split(',')]:
        for n in [int(x) for x in a.sizes.split(',')]:
            try:
                p = subprocess.run([sys.executable, __file__, '--child', str(n), str(d), '--k', str(a.k), '--spread', str(a.spread)],
                                   capture_output=True, text=True, timeout=a.timeout)
                if p.returncode < 0: rows.append({'N': n, 'd': d, 'error': f'killed by signal {-p.returncode}'})
                elif p.returncode: rows.append({'N': n, 'd': d, 'error': (p.stderr.strip().splitlines() or ['?'])[-1][:80]})
                else: rows.append(json.loads(p.stdout.strip().splitlines()[-1]))
            except subprocess.TimeoutExpired:
                rows.append({'N': n, 'd': d, 'error': f'timeout {a.timeout:.0f}s'})
            print(f"done N={n:,} d={d}", file=sys.stderr, flush=True)
    print(f"K=6, k={a.k}, spread={a.spread}, {os.cpu_count()} CPU cores, float32; times exclude generating the embeddings.")
    print(fmt_table(rows))
    if a.json:
        with open(a.json, 'w') as f: json.dump(rows, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
