#!/usr/bin/env python
"""k-NN search and score curation (the score curation of the DS2 paper, Pang et al., ICLR 2025) at scale, side by side with faiss exact search: prints one table.

Data, each case in a fresh child process (so its peak RSS is its own):
- `real`: MiniLM embeddings of the shared real texts (T0, Alpaca, Dolly, Code Alpaca, LIMA in ../shared/data; texts whose first
  `--max-seq-length` tokens agree are kept once), embedded with the bundled all-MiniLM-L6-v2 (PyTorch backend) the first time
  into `--real` (default under ~/.cache/llm_curate/benchmarks, resumable: rows already embedded are cached) and read from it;
  run three times: as `knn_graph` decides, with an approximate search forced (`exact=False`), and with the full-space HNSW
  forced (`method='hnsw'`, the best index before the cell join, for comparison);
- `realistic_real_size`: the generator at the real rows' own size and dimension (384), so the two can be compared on the
  very plan the cost model makes (cells, spill, probes, recall);
- `realistic`: `llm_curate.knn.realistic_embeddings`, the generator fitted to those real embeddings (spectrum stretched to d;
  parameters fitted at d itself where the geometry has them, `params_by_dim`);
- `lifted` (`--lifted N`): the generator at the dimension it was fitted at (384, where it matches the real neighbour statistics
  best) rotated into `--dim` by a random orthonormal map (`realistic_embeddings(lift=True)`): every inner product, so every
  neighbour statistic, is that of the 384-dim fit, at the cost of d-dimensional products (its spectrum is the 384-dim one);
- `realistic_fixed_density` (`--fixed-density N`): the same generator forced to clusters of a fixed size (`cluster_growth` 1:
  neighbourhoods no denser at 1M rows than at the fitted size), for a geometry whose fit lets the clusters grow with N;
- `easy`: the old generator (tight clusters, 20 rows each): an EASY case, kept to show how much the data matter.
Ratings: 6 levels from the embedding (quantiles of a random projection, so neighbours share levels), 30% of them corrupted
by a known ordinal transition matrix.

Per case: our `knn_graph` (cost model, chosen method, its recall@10 on held-out queries), then `ScoreCurator.fit` on it
(end-to-end time = k-NN + curation). Exact search (`knn_graph(exact=True)`, faiss IndexFlatIP kernel) is run in full up to
`--exact-max` rows (its curation is compared: max |T_ours - T_exact| and the Jaccard overlap of the flags, each next to its noise floor, the
same comparison for the exact graph of the rows stored as float16 (it differs from exact in ~0.02% of its entries), and next to the noise
and the quality of both against the truth the ratings were corrupted from: mean |T - T_true| and the F1 of the flags
against the ratings known to be wrong); above, its time is extrapolated from one block
of the exact search (its time on the 1,000 recall queries, scaled to N; marked ~). Peak RSS is the child's maximum resident
set size after our curation (before any exact comparison), divided by the float32 size of the embedding matrix. The 1-minute
load average (`uptime`) is recorded at the start and end of each case: the machine is shared.

    python benchmarks/curation_speed.py --embed-only                              # once: embed the real texts (slow on 2 cores)
    python benchmarks/curation_speed.py --sizes 100000,300000,1000000 --lifted 100000,300000,1000000 --easy 100000   # the table
    python benchmarks/curation_speed.py --sizes 100000                                 # quick
    python benchmarks/curation_speed.py --sizes '' --fit-geometry llm_curate/assets/minilm_real_geometry.json  # refit the generator
"""
import argparse, json, math, os, resource, shlex, subprocess, sys, time

import numpy as np

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get('LLM_CURATE_SHARED_DATA') or next(
    (p for p in (os.path.join(_ROOT, '..', 'shared', 'data'), os.path.join(_ROOT, '..', '..', 'shared', 'data')) if os.path.isdir(p)),
    os.path.join(_ROOT, '..', 'shared', 'data'))   # the repository's sibling `shared/data` (or a worktree's, one level up)
DEFAULT_REAL = os.path.join(os.environ.get('LLM_CURATE_CACHE', os.path.expanduser('~/.cache/llm_curate')), 'benchmarks', 'real_minilm_64tok.npy')
SOURCES = [('alpaca', 'instruct/alpagasus/random_9k.json'), ('dolly', 'instruct/alpagasus/dolly_3k.json'),
           ('codealpaca', 'instruct/codealpaca/code_alpaca_2k.json'), ('lima', 'instruct/lima/lima_train_1029.json'),
           ('t0', 't0_train_50k/t0_train_50k.jsonl.gz')]


def real_texts(max_seq_length: int = 64):
    "Every shared real text (uniformly shuffled, so any prefix mixes the sources), duplicates removed: two texts whose first `max_seq_length` tokens agree embed identically, so only the first is kept."
    from llm_curate.data import load_samples, render_conversation
    from llm_curate.embed import load_embedder
    from llm_curate.models import minilm_path
    texts, src = [], []
    for name, f in SOURCES:
        for r in load_samples(os.path.join(SHARED, f), on_error='skip'): texts.append(render_conversation(r['messages'])); src.append(name)
    order = np.random.default_rng(0).permutation(len(texts))
    tok = load_embedder(minilm_path()).tokenizer
    seen, keep = set(), []
    for s in range(0, len(order), 4096):
        ids = tok([texts[i] for i in order[s:s + 4096]], truncation=True, max_length=max_seq_length)['input_ids']
        for i, t in zip(order[s:s + 4096], ids):
            if (t := tuple(t)) not in seen: seen.add(t); keep.append(i)
    return [texts[i] for i in keep], [src[i] for i in keep], len(texts)


def embed_real(out: str, max_seq_length: int = 64, cache_dir: str | None = None, step: int = 4096) -> np.ndarray:
    "Embed the deduplicated shared real texts with the bundled MiniLM (PyTorch backend) into `out` (.npy, float32), saving every `step` rows; rows already in `cache_dir` are not embedded again."
    from llm_curate.embed import embed_texts
    from llm_curate.models import minilm_path
    texts, src, n_all = real_texts(max_seq_length)
    print(f'{n_all:,} real texts, {len(texts):,} distinct in their first {max_seq_length} tokens', file=sys.stderr, flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out + '.sources.json', 'w') as f: json.dump(src, f)
    cache_dir = cache_dir or out + '.cache'
    t = time.perf_counter()
    for s in range(0, len(texts), step):
        X = embed_texts(texts[:s + step], model=minilm_path(), cache_dir=cache_dir, progress=False, chunk_size=1024,
                        max_seq_length=max_seq_length, backend='torch')
        tmp = out[:-4] + '.tmp.npy'
        np.save(tmp, X.astype(np.float32)); os.replace(tmp, out)
        print(f'{len(X):,} rows, {time.perf_counter() - t:.0f} s', file=sys.stderr, flush=True)
    return X


def ensure_real(path: str, max_seq_length: int = 64, cache_dir: str | None = None) -> int:
    "Rows of the real-text matrix at `path`, embedding the shared texts first when the file is missing or has fewer rows than its texts."
    src = path + '.sources.json'
    if os.path.exists(path) and os.path.exists(src):
        with open(src) as f: n_src = len(json.load(f))
        n = len(np.load(path, mmap_mode='r'))
        if n >= n_src: return n
    return len(embed_real(path, max_seq_length, cache_dir))


def easy(n: int, d: int, seed: int = 0, per_cluster: int = 20, spread: float = 0.7) -> np.ndarray:
    "The old generator: topics -> tight clusters of ~20 rows; an easy case for any index."
    rng = np.random.default_rng(seed)
    n_clusters = max(n // per_cluster, 2)
    topics = rng.standard_normal((max(n_clusters // 50, 2), d), dtype=np.float32)
    topics /= np.linalg.norm(topics, axis=1, keepdims=True)
    cl_topic = rng.integers(0, len(topics), n_clusters)
    cl = rng.integers(0, n_clusters, n)
    X = np.empty((n, d), np.float32)
    for s in range(0, n, 32768):
        c = cl[s:s + 32768]
        u, pos = np.unique(c, return_inverse=True)
        cen = np.stack([np.random.default_rng((seed, int(j))).standard_normal(d, dtype=np.float32) for j in u])
        cen /= np.linalg.norm(cen, axis=1, keepdims=True)
        blk = topics[cl_topic[c]] + 0.8 * cen[pos] + spread * rng.standard_normal((len(c), d), dtype=np.float32) / np.float32(np.sqrt(d))
        X[s:s + 32768] = blk / np.linalg.norm(blk, axis=1, keepdims=True)
    return X


def ratings(X: np.ndarray, seed: int = 0, K: int = 6, noise: float = 0.7):
    "True levels = quantile bins of a random projection (smooth in embedding space); rated = levels through a known T."
    from llm_curate.synthetic import ordinal_noise
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(X.shape[1]).astype(np.float32)
    proj = np.concatenate([np.asarray(X[s:s + 65536], np.float32) @ w for s in range(0, len(X), 65536)])
    y = np.searchsorted(np.quantile(proj, np.linspace(0, 1, K + 1)[1:-1]), proj)
    T = ordinal_noise(K, noise)
    rated = (rng.random(len(y))[:, None] > np.cumsum(T, axis=1)[y]).sum(1).clip(0, K - 1)
    return y, rated


def _f1(flags: np.ndarray, wrong: np.ndarray) -> float:
    "F1 of the flags against the ratings known to be wrong."
    tp = float((flags & wrong).sum())
    return 2 * tp / max(float(flags.sum() + wrong.sum()), 1.0)


def child(kind: str, n: int, d: int, k: int, real: str | None, exact_max: int, dtype: str) -> dict:
    from llm_curate.curate import ScoreCurator
    from llm_curate.synthetic import empirical_T
    from llm_curate.knn import knn_graph, realistic_embeddings, bundled_geometry, generator_params, _recall
    load0 = os.getloadavg()[0]
    t = time.perf_counter()
    if kind in ('real', 'real_approx', 'real_hnsw'):
        X = np.load(real, mmap_mode='r')
        X = np.ascontiguousarray(X[:n] if n else X, np.float32)
    elif kind in ('realistic', 'realistic_real_size'): X = realistic_embeddings(n, d=d or None, seed=0)
    elif kind == 'lifted': X = realistic_embeddings(n, d=d, seed=0, lift=True)
    elif kind == 'realistic_fixed_density':
        geo = bundled_geometry()
        X = realistic_embeddings(n, d=d, geometry={**geo, 'params': {**generator_params(geo, d), 'cluster_growth': 1.0}, 'params_by_dim': {}}, seed=0)
    else: X = easy(n, d)
    if dtype == 'float16': X = X.astype(np.float16)
    n, d = X.shape
    gen_s = time.perf_counter() - t
    y, rated = ratings(X)
    x_bytes = n * d * 4                                     # the float32 matrix, whatever the storage
    cpu = lambda: sum(resource.getrusage(resource.RUSAGE_SELF)[:2])  # user + system CPU seconds: what the load cannot inflate
    t0, c0 = time.perf_counter(), cpu()
    g = knn_graph(X, k=k, exact=False if kind == 'real_approx' else None, method='hnsw' if kind == 'real_hnsw' else 'auto')
    knn_s, knn_cpu = time.perf_counter() - t0, cpu() - c0
    cur = ScoreCurator(k=k).fit(X, rated, graph=g)
    total_s, total_cpu = time.perf_counter() - t0, cpu() - c0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    out = {'kind': kind, 'N': n, 'd': d, 'dtype': dtype, 'n_unique': g.n_unique, 'method': g.method, 'recall': g.recall,
           'params': {kk: v for kk, v in g.params.items() if kk in ('pca_dim', 'candidates', 'nlist', 'nprobe', 'efSearch', 'cost_model_s',
                                                                     'cells', 'spill', 'probes', 'refine_rounds', 'tuned_recall', 'rows_per_cell', 'pairs_frac', 'join_plan')
                      or kk.endswith('_s')},
           'knn_s': knn_s, 'total_s': total_s, 'knn_cpu_s': knn_cpu, 'total_cpu_s': total_cpu, 'peak_rss_gb': rss / 2**30, 'rss_over_X': rss / x_bytes, 'gen_s': gen_s,
           'T_mae_truth': float(np.abs(cur.transition_matrix_ - empirical_T(y, rated)).mean()), 'n_flagged': int(cur.flagged_.sum())}
    out['flag_f1'] = _f1(cur.flagged_, rated != y)              # flags against the ratings known to be corrupted
    if g.method.startswith('exact'):
        out.update(exact_s=knn_s, exact_measured=True, true_recall=1.0, T_diff=0.0, flag_jaccard=1.0)
    elif g.n_unique <= exact_max:
        t = time.perf_counter(); ge = knn_graph(X, k=k, exact=True); exact_s = time.perf_counter() - t
        ce = ScoreCurator(k=k).fit(X, rated, graph=ge)
        a, b = cur.flagged_, ce.flagged_
        out.update(exact_s=exact_s, exact_measured=True, true_recall=_recall(g.indices, ge.indices),
                   T_diff=float(np.abs(cur.transition_matrix_ - ce.transition_matrix_).max()),
                   flag_jaccard=float((a & b).sum() / max((a | b).sum(), 1)), n_flagged_exact=int(b.sum()))
        out.update(T_mae_truth_exact=float(np.abs(ce.transition_matrix_ - empirical_T(y, rated)).mean()), flag_f1_exact=_f1(b, rated != y))
        g16 = knn_graph(X.astype(np.float16), k=k, exact=True)          # the noise floor: the exact graph of the same rows in float16
        cs = ScoreCurator(k=k).fit(X, rated, graph=g16)                   # (a graph that differs from exact in ~0.02% of its entries)
        out.update(T_diff_seed=float(np.abs(cs.transition_matrix_ - ce.transition_matrix_).max()),
                   flag_jaccard_seed=float((cs.flagged_ & b).sum() / max((cs.flagged_ | b).sum(), 1)))
    else:
        out.update(exact_s=g.params['exact_est_s'], exact_measured=False)
    out['load'] = (round(load0, 1), round(os.getloadavg()[0], 1))
    return out


def fmt_table(rows) -> str:
    head = ('| data | N | d | kNN method (params) | recall@10 (held-out) | kNN s | exact s | exact/ours | end-to-end s (CPU s) | peak RSS GB | RSS/X | '
            'max ΔT vs exact (fp16 exact) | flags Jaccard vs exact (fp16 exact) | T error / flag F1 vs truth | load start→end |\n|:--|---:|---:|:--|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:--|')
    lines = [head]
    for r in rows:
        if 'error' in r:
            lines.append(f"| {r['kind']} | {r['N']:,} | {r['d']} | failed: {r['error']} |" + ' |' * 10); continue
        p = r['params']
        shown = {'hnsw': ('candidates', 'efSearch'), 'cell-join': ('cells', 'spill', 'probes', 'refine_rounds')}.get(r['method'], ('pca_dim', 'candidates', 'nprobe', 'efSearch'))
        par = ', '.join(f'{kk}={p[kk]}' for kk in shown if p.get(kk) is not None)
        m = r['method'] + (f' ({par})' if par else '')
        rec = '1 (exact)' if r['recall'] is None else f"{r['recall']:.3f}" + (f" (all rows {r['true_recall']:.3f})" if 'true_recall' in r and r['recall'] is not None else '')
        ex = ('' if r['exact_measured'] else '~') + f"{r['exact_s']:.1f}"
        td = (f"{r['T_diff']:.4f}" if 'T_diff' in r else 'n/a') + (f" (fp16 {r['T_diff_seed']:.4f})" if 'T_diff_seed' in r else '')
        fj = (f"{r['flag_jaccard']:.3f}" if 'flag_jaccard' in r else 'n/a') + (f" (fp16 {r['flag_jaccard_seed']:.3f})" if 'flag_jaccard_seed' in r else '')
        q = (f"{r['T_mae_truth']:.3f} / {r['flag_f1']:.3f}" if 'flag_f1' in r else f"{r['T_mae_truth']:.3f}") + \
            (f" (exact {r['T_mae_truth_exact']:.3f} / {r['flag_f1_exact']:.3f})" if 'flag_f1_exact' in r else '')
        label = {'easy': 'easy (old generator)', 'real': 'real text (MiniLM)', 'real_approx': 'real text, approximate forced',
                 'real_hnsw': 'real text, hnsw forced', 'realistic': 'realistic generator',
                 'realistic_real_size': 'realistic generator, real size', 'realistic_fixed_density': 'realistic, clusters of a fixed size',
                 'lifted': 'real-text structure, lifted'}[r['kind']]
        lines.append(f"| {label} | {r['N']:,} | {r['d']} | {m} | {rec} | {r['knn_s']:.1f} | {ex} | {r['exact_s'] / r['knn_s']:.2f} | "
                     f"{r['total_s']:.1f}" + (f" ({r['total_cpu_s']:.0f})" if 'total_cpu_s' in r else '') + f" | {r['peak_rss_gb']:.2f} | {r['rss_over_X']:.2f} | {td} | {fj} | {q} | {r['load'][0]}→{r['load'][1]} |")
    return '\n'.join(lines)


def phases(rows) -> str:
    "Where each case's time went: the k-NN phases (from KNNGraph.params) and the curation."
    keys = ('dedupe_s', 'truth_s', 'join_plan_s', 'pca_s', 'pilot_s', 'build_s', 'tune_s', 'approx_search_s')
    out = ['| data | N | ' + ' | '.join(k[:-2] for k in keys) + ' | exact search | curation |', '|:--|---:|' + '---:|' * (len(keys) + 2)]
    for r in rows:
        if 'error' in r: continue
        p = r['params']
        ex = f"{r['knn_s']:.1f}" if r['method'].startswith('exact') else ''
        out.append(f"| {r['kind']} | {r['N']:,} | " + ' | '.join(f'{p[k]:.1f}' if k in p else '' for k in keys) + f" | {ex} | {r['total_s'] - r['knn_s']:.1f} |")
    return '\n'.join(out)


def plans(rows) -> str:
    "The cell-join plans the cost model tried on each case: rows per cell, cells, the spill and probes it chose (refine rounds planned), their recall before refining and cost."
    out = ['| data | N | d | rows/cell | cells | spill | probes | refine rounds | recall (tuning rows, joined) | pairs / N^2 | k-means s | predicted s |',
           '|:--|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|']
    for r in rows:
        for pl in r.get('params', {}).get('join_plan', []):
            out.append(f"| {r['kind']} | {r['N']:,} | {r['d']} | {pl['rows_per_cell']} | {pl['cells']:,} | {pl.get('spill', '')} | {pl['probes']} | {pl.get('refine_rounds', 0)} | {pl['recall']:.3f} | "
                       f"{pl['pairs_frac']:.4f} | {pl['train_s']:.1f} | {pl['cost_s']:.1f} |")
    return '\n'.join(out) if len(out) > 2 else ''


def growth(rows) -> str:
    out = []
    for kind in ('realistic', 'lifted'):
        rr = sorted([r for r in rows if r.get('kind') == kind and 'error' not in r], key=lambda r: r['N'])
        if len(rr) < 2: continue
        a, b = rr[0], rr[-1]
        g = b['N'] / a['N']
        out.append(f"Growth of {kind} {a['N']:,} -> {b['N']:,} (x{g:.0f}): k-NN time x{b['knn_s'] / a['knn_s']:.1f}, end-to-end x{b['total_s'] / a['total_s']:.1f}; "
                   f"N log N would be x{g * math.log(b['N']) / math.log(a['N']):.1f}, N^1.5 x{g ** 1.5:.1f}, N^2 (exact) x{g * g:.0f}.")
    return '\n'.join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--real', default=DEFAULT_REAL, help='.npy of the real-text embeddings: built here (embedding the shared texts, resumable) '
                    'when missing or incomplete (default: %(default)s)')
    ap.add_argument('--no-real', action='store_true', help='skip the real-text cases')
    ap.add_argument('--embed-cache', help='embedding cache folder of --real (default: REAL.cache)')
    ap.add_argument('--real-n', type=int, default=0, help='use the first N real rows (0: all)')
    ap.add_argument('--sizes', default='100000,300000,1000000', help='comma-separated N of the realistic generator ("" for none)')
    ap.add_argument('--easy', default='', help='comma-separated N of the easy (old) generator')
    ap.add_argument('--lifted', default='', help='comma-separated N of the 384-dim fit rotated into --dim (neighbour structure of the real-text fit, cost of d)')
    ap.add_argument('--fixed-density', default='', help='comma-separated N of the generator with clusters of a fixed size (pessimistic)')
    ap.add_argument('--dim', type=int, default=1024, help='dimension of the generated embeddings')
    ap.add_argument('--dtype', default='float32', choices=['float32', 'float16'], help='storage of the embedding matrix')
    ap.add_argument('--k', type=int, default=10, help='neighbours')
    ap.add_argument('--exact-max', type=int, default=120000, help='run exact search in full up to this many rows (above: extrapolated)')
    ap.add_argument('--timeout', type=float, default=3600, help='seconds per case')
    ap.add_argument('--json', help='also write the rows as JSON to this file')
    ap.add_argument('--table', metavar='JSON', help='print the tables of a finished (or partial) --json run and exit')
    ap.add_argument('--log', metavar='PREFIX', help="write each case's log (k-NN phases) to PREFIX.KIND_N.log")
    ap.add_argument('--embed-only', action='store_true', help='build --real and exit')
    ap.add_argument('--max-seq-length', type=int, default=64, help='tokens per text when embedding the real texts')
    ap.add_argument('--fit-geometry', metavar='OUT', help='fit the realistic generator to --real and write its JSON to OUT, then exit')
    ap.add_argument('--fit-rounds', type=int, default=2, help='--fit-geometry: passes of coordinate search')
    ap.add_argument('--fit-init', help='--fit-geometry: starting parameters (JSON object)')
    ap.add_argument('--fit-dims', default='1024', help='--fit-geometry: other dimensions to fit the generator at (comma-separated, "" for none)')
    ap.add_argument('--fit-sizes', default='0.125,0.25,0.5,1', help='--fit-geometry: pool sizes compared (fractions of the real rows)')
    ap.add_argument('--fit-grid', help='--fit-geometry: {parameter: values} searched (JSON object; default: all of knn._FIT_GRID)')
    ap.add_argument('--fit-dims-grid', help='--fit-geometry: the grid searched at --fit-dims, from the fit at 384 (JSON object; default: --fit-grid)')
    ap.add_argument('--fit-fresh', action='store_true', help='--fit-geometry: generate a pool per size (fits cluster_growth) instead of nested samples of one pool')
    ap.add_argument('--child', nargs=3, metavar=('KIND', 'N', 'D'), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.table:
        with open(a.table) as f: rows = json.load(f)
        print(fmt_table(rows) + '\n\nWhere the time went (wall seconds):\n' + phases(rows) + '\n\nCell-join plans:\n' + plans(rows)); gr = growth(rows)
        if gr: print(gr)
        return 0
    if a.no_real: a.real = None
    if a.real and not a.child: ensure_real(a.real, a.max_seq_length, a.embed_cache)
    if a.embed_only: return 0
    if a.fit_geometry:
        import logging
        from llm_curate.knn import fit_geometry
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format='%(asctime)s %(name)s %(message)s')
        X = np.load(a.real)
        geo = fit_geometry(X[:a.real_n] if a.real_n else X, rounds=a.fit_rounds, init=json.loads(a.fit_init) if a.fit_init else None,
                           sizes=tuple(float(f) for f in a.fit_sizes.split(',')), dims=tuple(int(x) for x in a.fit_dims.split(',') if x),
                           grid=json.loads(a.fit_grid) if a.fit_grid else None, nested=not a.fit_fresh,
                           dims_grid=json.loads(a.fit_dims_grid) if a.fit_dims_grid else None)
        geo['source'] = ('MiniLM (all-MiniLM-L6-v2, first %d tokens) embeddings of the shared real texts: ' % a.max_seq_length
                         + ', '.join(s for s, _ in SOURCES))
        geo['fit_procedure'] = 'python benchmarks/curation_speed.py ' + shlex.join(sys.argv[1:] if argv is None else argv)
        with open(a.fit_geometry, 'w') as f: json.dump(geo, f, indent=None, separators=(',', ':'))
        print({kk: geo[kk] for kk in ('n', 'dim', 'dims_for_90pct', 'd1', 'd10', 'fit_real_by_n', 'params', 'fit', 'params_by_dim')})
        return 0
    if a.child:
        import logging
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format='%(asctime)s %(name)s %(message)s')
        print(json.dumps(child(a.child[0], int(a.child[1]), int(a.child[2]), a.k, a.real, a.exact_max, a.dtype)))
        return 0
    n_real = (a.real_n or len(np.load(a.real, mmap_mode='r'))) if a.real else 0
    cases = ([('real', a.real_n, 0), ('real_approx', a.real_n, 0), ('real_hnsw', a.real_n, 0), ('realistic_real_size', n_real, 0)] if a.real else []) + \
            [('easy', int(n), a.dim) for n in a.easy.split(',') if n] + \
            [('realistic_fixed_density', int(n), a.dim) for n in a.fixed_density.split(',') if n] + \
            [('realistic', int(n), a.dim) for n in a.sizes.split(',') if n] + \
            [('lifted', int(n), a.dim) for n in a.lifted.split(',') if n]
    rows = []
    for kind, n, d in cases:
        cmd = [sys.executable, __file__, '--child', kind, str(n), str(d), '--k', str(a.k), '--exact-max', str(a.exact_max), '--dtype', a.dtype]
        if a.real: cmd += ['--real', a.real]
        try:
            log = f'{a.log}.{kind}_{n}.log' if a.log else os.devnull   # the child's log (its phases), readable while it runs
            with open(log, 'w') as lf: p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=lf, text=True, timeout=a.timeout)
            if p.returncode < 0: rows.append({'kind': kind, 'N': n, 'd': d, 'error': f'killed by signal {-p.returncode}'})
            elif p.returncode: rows.append({'kind': kind, 'N': n, 'd': d, 'error': f'exit {p.returncode} (see {log})'})
            else: rows.append(json.loads(p.stdout.strip().splitlines()[-1]))
        except subprocess.TimeoutExpired:
            rows.append({'kind': kind, 'N': n, 'd': d, 'error': f'timeout {a.timeout:.0f}s'})
        print(f"done {kind} N={n:,} d={d}: {rows[-1]}", file=sys.stderr, flush=True)
        if a.json:                                  # the table so far, in case a later (larger) case does not finish
            with open(a.json, 'w') as f: json.dump(rows, f, indent=1)
            with open(a.json + '.md', 'w') as f: f.write(fmt_table(rows) + '\n\n' + phases(rows) + '\n')
    print(f"k={a.k}, K=6 levels (30% corrupted), {os.cpu_count()} CPU cores (shared: see the load column; CPU s = user+system seconds of the case), {a.dtype} storage; "
          f"~ = exact time extrapolated from the exact search of the 1,000 recall queries; times exclude generating or loading the embeddings.")
    print(fmt_table(rows))
    print('\nWhere the time went (wall seconds):\n' + phases(rows))
    print('\nCell-join plans (the cost model tries cell sizes from 256 rows, larger past 2,048 cells, towards the cheaper side):\n' + plans(rows))
    gr = growth(rows)
    if gr: print(gr)
    if a.json:
        with open(a.json, 'w') as f: json.dump(rows, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
