"""Selection on real text against a real judge's verdict (issue 5, item 6).

`../shared/data/instruct/alpagasus/random_9k.json` is a uniform sample of 9,229 Alpaca items; 935 of them also
appear in `claude_t45.json` (Claude scored them >= 4.5; matched on instruction, input and output). We rate the items
with the offline SmolLM2-135M judge (logprob mode: the distribution over the overall score, one forward pass per
item), embed them with MiniLM, curate the scores (DS2), let each method take 10% and report the share of
Claude-approved items in each subset (random: ~10%). Ratings and embeddings are cached, so a run can be resumed
or grown with a larger --limit.

    python benchmarks/alpagasus_claude.py --limit 1000 [--out DIR] [--device cuda] [--rater smollm2] [--levels quantile]
(05_select reports `--limit 0 --levels quantile`.)
--limit takes a seeded uniform sample (the approved share stays ~10%); the full 9,229 (--limit 0) took 10 min on a
2-core CPU with SmolLM2 (rating 494 s, embedding 107 s) and should take a few minutes on a GPU.
"""
import argparse, json, logging, os, sys, time
from pathlib import Path

import numpy as np
import pandas as pd

DATA = Path(os.environ.get('LLM_CURATE_SHARED', Path(__file__).resolve().parents[2] / 'shared')) / 'data' / 'instruct' / 'alpagasus'
METHODS = ['ds2', 'ds2_raw', 'alpagasus_curated', 'alpagasus', 'deita_curated', 'deita', 'knn', 'completion_length', 'random']


def load(limit=None, seed=0):
    "The items (alpaca records with a `claude` label), a uniform sample of `limit` of them when given."
    items = json.loads((DATA / 'random_9k.json').read_text())
    good = {(r['instruction'], r.get('input', ''), r['output']) for r in json.loads((DATA / 'claude_t45.json').read_text())}
    for i, r in enumerate(items):
        r['claude'] = (r['instruction'], r.get('input', ''), r['output']) in good
        r['id'] = f'alpaca{i:05d}'
    if limit and limit < len(items):
        keep = np.sort(np.random.default_rng(seed).permutation(len(items))[:limit])  # nested: a larger limit reuses the ratings
        items = [items[i] for i in keep]
    return items


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--limit', type=int, default=1000, help='items rated (uniform sample; 0 = all 9,229)')
    p.add_argument('--out', default=str(Path.home() / '.cache' / 'llm_curate' / 'bench_alpagasus'), help='cache folder (ratings, embeddings)')
    p.add_argument('--rater', default='smollm2', help='rater preset or model (llm_curate.rate.make_rater)')
    p.add_argument('--device', default=None, help='torch device for rating and embedding')
    p.add_argument('--budget', type=float, default=0.1, help='fraction selected')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--clusters', type=int, default=100, help='k-means clusters of the embeddings for the coverage column')
    p.add_argument('--levels', choices=['rubric', 'quantile'], default='rubric',
                   help="rubric: the DS2 levels of the rating; quantile: 6 equal-frequency levels of the expected score "
                        "(for a small judge whose ratings pile up in one level)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from llm_curate.data import load_samples, render_conversation
    from llm_curate.rate import make_rater
    from llm_curate.embed import embed_texts
    from llm_curate.curate import curate_scores
    from llm_curate.select import select
from llm_curate.synthetic import kmeans_labels
    from llm_curate.pipeline import quantile_levels

    t0 = time.perf_counter()
    items = load(a.limit or None, a.seed)
    recs = [{'id': r['id'], 'instruction': r['instruction'], 'input': r.get('input', ''), 'output': r['output']} for r in items]
    samples = load_samples(recs, format='alpaca', id_field='id', on_error='skip', progress=False)  # a few Alpaca outputs are empty
    label = pd.Series([r['claude'] for r in items], index=[r['id'] for r in items])
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)

    t = time.perf_counter()
    rater = make_rater(None, a.rater, **({'device': a.device} if a.device else {}))
    table = rater.rate(samples, out=out / f'ratings_{a.rater}', progress=True)
    t_rate = time.perf_counter() - t
    ok = table['status'].eq('ok').to_numpy()
    print(f"rated {len(table)} items with {a.rater} in {t_rate:.0f} s: {ok.sum()} ok, {(~ok).sum()} not ok (left out)")

    t = time.perf_counter()
    texts = [render_conversation(m) for m in samples['messages']]
    X = embed_texts(texts, ids=list(samples['id']), device=a.device, cache_dir=out / 'embeddings', progress=False)
    t_emb = time.perf_counter() - t

    keep = np.flatnonzero(ok)
    pool = samples.select(keep)
    if a.levels == 'quantile': table = quantile_levels(table)  # the pipeline's `rate.calibrate: quantile`
    scores = table['score'].to_numpy()[keep].astype(int)
    Xk = X[keep]
    rep = curate_scores(Xk, scores, ids=list(pool['id']))
    y = label.loc[list(pool['id'])].to_numpy()
    print(f"embedded in {t_emb:.0f} s; pool {len(pool)}, Claude-approved {y.mean():.1%}; "
          f"{int((rep.frame['curated_score'] != rep.frame['score']).sum())} scores changed by curation")
    print('rated levels:', np.bincount(scores, minlength=6).tolist(), ' curated:', np.bincount(rep.frame['curated_score'], minlength=6).tolist())
    # how well does the judge alone separate approved from not approved? (AUC of the expected score)
    er = pd.to_numeric(table['expected_raw'], errors='coerce').to_numpy(dtype=float)[keep]
    er = np.where(np.isfinite(er), er, scores)
    r = pd.Series(er).rank().to_numpy()
    auc = (r[y].sum() - y.sum() * (y.sum() + 1) / 2) / max(y.sum() * (~y).sum(), 1)
    clusters = kmeans_labels(Xk, a.clusters, seed=a.seed)   # coverage: share of these k-means clusters a subset hits
    rows = []
    for m in METHODS:
        sel = select(pool, m, a.budget, report=rep, X=Xk, seed=a.seed)
        rows.append({'method': m, 'n': len(sel), 'claude_approved': float(label.loc[sel.ids].mean()),
                     'coverage': len(np.unique(clusters[sel.positions])) / a.clusters})
    res = pd.DataFrame(rows).set_index('method')
    print(f"AUC of the judge's expected score for Claude approval: {auc:.3f} (0.5 = chance)")
    print(res.round(3).to_markdown())
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == '__main__':
    sys.exit(main())
