"""Selection quality without fine-tuning: which method picks truly good and diverse samples?

On a generated pool (llm_curate.synthetic.synthetic_pool) the true quality of every sample is known: topics of
Zipf-distributed sizes, clusterable embeddings, a true score per topic (rarer topics better on average), and
ratings drawn from a realistic noise matrix (diagonal ~0.5, skewed upward, `rater_like_T`). Each method selects
10% of the pool; we report the mean true score of the subset, the share of truly top-rated samples, and the
coverage of the embedding space (share of k-means clusters of the pool the subset hits), the same coverage counting
only truly top samples, and the share of topics hit, averaged over seeds. The `oracle` row is DS2's ordering applied
to the true scores (a perfect judge): the quality ceiling, and the coverage a perfect judge would have.

    python benchmarks/selection_quality.py [--n 10000] [--seeds 3] [--budget 0.1] [--clusters 100] [--subtopics 4]
--subtopics S (> 1) makes quality vary inside topics (S sub-topics per topic, each with its own quality).
Expected (issue 5): ds2 >= ds2_raw >= alpagasus > random on true score; ds2 >= alpagasus on coverage.
"""
import argparse, logging, sys, time

import numpy as np
import pandas as pd

from llm_curate.curate import curate_scores
from llm_curate.select import select, oracle_selection
from llm_curate.synthetic import synthetic_pool, selection_quality

METHODS = ['ds2', 'ds2_raw', 'alpagasus_curated', 'alpagasus', 'deita_curated', 'deita', 'knn', 'completion_length', 'random']


def run(n=10_000, seeds=(0, 1, 2), budget=0.1, n_clusters=100, n_topics=None, tau=0.1, subtopics=1, progress=False):
    "One table (methods x metrics), averaged over seeds; also the per-seed tables."
    tables = []
    for seed in seeds:
        sp = synthetic_pool(n, n_clusters=n_topics or max(50, n // 40), subtopics=subtopics, seed=seed)
        t = time.perf_counter()
        rep = curate_scores(sp.X, sp.rated, ids=[s["id"] for s in sp.samples], random_state=seed)
        t_cur = time.perf_counter() - t
        sels = {}
        for m in METHODS:
            kw = {'tau': tau} if m.startswith('deita') else {}
            sels[m] = select(sp.samples, m, budget, report=rep, X=sp.X, seed=seed, **kw)
        sels['oracle'] = oracle_selection(sp, budget, seed=seed)
        q = selection_quality(sp, sels, n_clusters=n_clusters, seed=seed)
        q['rated_accuracy'] = float((sp.rated == sp.true).mean())
        q['curated_accuracy'] = float((rep.frame['curated_score'].to_numpy() == sp.true).mean())
        q['curate_s'] = t_cur
        tables.append(q)
    mean = sum(tables) / len(tables)
    return mean, tables


def check(mean: pd.DataFrame) -> list[str]:
    "The expected orderings that do not hold (empty when all hold)."
    s, c = mean['mean_true_score'], mean['coverage']
    fails = []
    if not s['ds2'] >= s['ds2_raw']: fails.append('ds2 >= ds2_raw on true score')
    if not s['ds2_raw'] >= s['alpagasus']: fails.append('ds2_raw >= alpagasus on true score')
    if not s['alpagasus'] > s['random']: fails.append('alpagasus > random on true score')
    if not c['ds2'] >= c['alpagasus']: fails.append('ds2 >= alpagasus on coverage')
    return fails


def diagnose(mean: pd.DataFrame) -> list[str]:
    "Where the coverage goes: a perfect judge, and the long-tail order at equal scores."
    c, t = mean['coverage'], mean['topics_hit']
    return [f"a perfect judge (oracle) covers {c['oracle']:.3f} of the clusters, alpagasus on raw ratings {c['alpagasus']:.3f}, "
            f"random {c['random']:.3f}: " + ('the coverage alpagasus has beyond the oracle comes from picking wrongly rated samples everywhere'
                                             if c['oracle'] < c['alpagasus'] else 'a perfect judge loses no coverage here'),
            f"long-tail order vs uniform at equal scores: coverage ds2 {c['ds2']:.3f} vs alpagasus_curated {c['alpagasus_curated']:.3f}, "
            f"ds2_raw {c['ds2_raw']:.3f} vs alpagasus {c['alpagasus']:.3f}; topics hit ds2 {t['ds2']:.3f} vs {t['alpagasus_curated']:.3f}, "
            f"ds2_raw {t['ds2_raw']:.3f} vs {t['alpagasus']:.3f}",
            f"coverage by truly top samples: ds2 {mean['top_coverage']['ds2']:.3f}, alpagasus {mean['top_coverage']['alpagasus']:.3f}, "
            f"oracle {mean['top_coverage']['oracle']:.3f}"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--n', type=int, default=10_000, help='pool size')
    p.add_argument('--seeds', type=int, default=3, help='number of seeds to average')
    p.add_argument('--budget', type=float, default=0.1, help='fraction of the pool selected')
    p.add_argument('--clusters', type=int, default=100, help='k-means clusters for the coverage')
    p.add_argument('--subtopics', type=int, default=1, help='sub-topics per topic, each with its own quality (1: quality per topic)')
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    t = time.perf_counter()
    mean, tables = run(a.n, tuple(range(a.seeds)), a.budget, a.clusters, subtopics=a.subtopics)
    cols = ['n', 'mean_true_score', 'share_top', 'coverage', 'top_coverage', 'topics_hit']
    print(f"pool {a.n} ({'quality per topic' if a.subtopics <= 1 else f'{a.subtopics} sub-topics per topic'}), budget {a.budget:.1%}, {a.seeds} seeds; rating accuracy {mean['rated_accuracy'].iloc[0]:.3f}, "
          f"after curation {mean['curated_accuracy'].iloc[0]:.3f}; curation {mean['curate_s'].iloc[0]:.1f} s per pool")
    print(mean[cols].round(3).to_markdown() if hasattr(mean, 'to_markdown') else mean[cols].round(3))
    fails = check(mean)
    print('expected orderings: ' + ('all hold' if not fails else 'NOT holding: ' + '; '.join(fails)))
    for line in diagnose(mean): print('- ' + line)
    print(f"total {time.perf_counter() - t:.1f} s")
    return 0


if __name__ == '__main__':
    sys.exit(main())
