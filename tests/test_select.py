"""Selection methods: properties on generated pools, hand-made cases, bad input, the CLI end to end."""
import json, subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st, HealthCheck

from llm_curate.select import (METHODS, Selection, select, register_method, Picked, _rank, diversity_walk,
                               oracle_selection)
from llm_curate.synthetic import synthetic_pool, selection_quality, kmeans_labels


def fake_report(sp, fix=0.7, seed=0):
    "A curation-report frame for a synthetic pool: a share `fix` of the wrong ratings corrected."
    rng = np.random.default_rng(seed)
    cur = np.where((sp.rated != sp.true) & (rng.random(len(sp.true)) < fix), sp.true, sp.rated)
    d = 1 - np.sort(sp.X @ sp.X.T, axis=1)[:, -11:-1].mean(1)
    return pd.DataFrame({'id': [s['id'] for s in sp.samples], 'score': sp.rated, 'error_prob': 0.0,
                         'flagged': cur != sp.rated, 'suggested': cur, 'confidence': 0.0, 'curated_score': cur,
                         'longtail': 2 / (1 + np.exp(-d)) - 1})


@pytest.fixture(scope='module')
def sp():
    return synthetic_pool(600, n_clusters=40, seed=3)


@pytest.fixture(scope='module')
def rep(sp):
    return fake_report(sp)


CHEAP = ['ds2', 'ds2_raw', 'random', 'completion_length', 'knn', 'alpagasus', 'alpagasus_curated', 'deita', 'deita_curated']


def kwargs(method, sp, rep):
    return dict(report=rep, X=sp.X)


@pytest.mark.parametrize('method', CHEAP)
def test_exact_budget_subset_no_duplicates_deterministic(method, sp, rep):
    kw = kwargs(method, sp, rep)
    if method.startswith('deita'): kw['tau'] = 0.02
    a = select(sp.samples, method, 60, seed=7, **kw)
    b = select(sp.samples, method, 60, seed=7, **kw)
    pool = {s['id'] for s in sp.samples}
    assert len(a.ids) == 60 and len(set(a.ids)) == 60 and set(a.ids) <= pool
    assert a.ids == b.ids and a.hash == b.hash and len(a.reasons) == 60 and len(a.signal) == 60
    assert all(isinstance(r, str) and r for r in a.reasons)


def test_full_and_seed_changes_random(sp):
    f = select(sp.samples, 'full', None)
    assert f.ids == [s['id'] for s in sp.samples]
    assert select(sp.samples, 'random', 50, seed=1).ids != select(sp.samples, 'random', 50, seed=2).ids


def test_ties_depend_on_seed_not_on_file_order():
    samples = [{'id': f'x{i}', 'messages': []} for i in range(20)]
    X = np.eye(20, dtype=np.float32)
    rep = pd.DataFrame({'id': [s['id'] for s in samples], 'score': 3, 'curated_score': 3, 'longtail': 0.5})
    a = select(samples, 'ds2', 5, report=rep, seed=0)
    b = select(samples[::-1], 'ds2', 5, report=rep.iloc[::-1], seed=0)
    assert b.ids == a.ids                       # the reversed file selects the same ids, in the same order
    assert a.ids == select(samples, 'ds2', 5, report=rep, seed=0).ids
    assert select(samples, 'ds2', 5, report=rep, seed=1).ids != a.ids
    assert len(set(a.ids)) == 5


@pytest.mark.parametrize('method', CHEAP + ['full'])
def test_same_subset_whatever_the_file_order(method, sp, rep):
    "A reversed or shuffled pool (its embeddings and report alike) selects the same ids, in the same order."
    kw = {'tau': 0.02} if method.startswith('deita') else {}
    budget = None if method == 'full' else 60
    a = select(sp.samples, method, budget, report=rep, X=sp.X, seed=5, **kw)
    for perm in (np.arange(len(sp.samples))[::-1], np.random.default_rng(1).permutation(len(sp.samples))):
        b = select([sp.samples[i] for i in perm], method, budget, report=rep.iloc[perm], X=sp.X[perm], seed=5, **kw)
        if method == 'full': assert sorted(b.ids) == sorted(a.ids)   # the whole pool, in file order by definition
        else: assert b.ids == a.ids and b.hash == a.hash


def test_ds2_orders_by_curated_then_longtail(sp, rep):
    sel = select(sp.samples, 'ds2', 200, report=rep)
    f = rep.set_index('id').loc[sel.ids]
    key = list(zip(-f['curated_score'], -f['longtail']))
    assert key == sorted(key)
    # ds2 is ds2_raw on curated scores
    assert sel.ids == select(sp.samples, 'ds2_raw', 200, report=rep, curated=True).ids


def test_curation_improves_true_score():
    "With a real curation report (not one copied from the truth), curated DS2 picks truly better samples than raw DS2."
    from llm_curate.curate import curate_scores
    big = synthetic_pool(3000, n_clusters=75, seed=4)
    real = curate_scores(big.X, big.rated, ids=[s['id'] for s in big.samples])
    assert (real.frame['curated_score'] == big.true).mean() > (big.rated == big.true).mean() + 0.05
    sels = {m: select(big.samples, m, 300, report=real, X=big.X, seed=0) for m in ['ds2', 'ds2_raw', 'random']}
    q = selection_quality(big, sels, n_clusters=20)['mean_true_score']
    assert q['ds2'] > q['ds2_raw'] + 0.05 and q['ds2_raw'] > q['random'] + 0.5


def test_oracle_is_the_quality_ceiling_and_metrics_are_exact(sp, rep):
    sels = {m: select(sp.samples, m, 60, report=rep, X=sp.X, seed=0) for m in ['ds2', 'alpagasus', 'random']}
    sels['oracle'] = oracle_selection(sp, 60)
    q = selection_quality(sp, sels, n_clusters=20)
    assert (q.loc['oracle', 'mean_true_score'] >= q['mean_true_score']).all()
    top = sp.true >= sp.true.max() - 1
    pos = {s['id']: i for i, s in enumerate(sp.samples)}
    idx = np.array([pos[i] for i in sels['oracle'].ids])
    assert q.loc['oracle', 'share_top'] == min(1, top.sum() / 60) == top[idx].mean()   # all truly top ones first
    lab = kmeans_labels(sp.X, 20, 0)
    for name, sel in sels.items():   # top_coverage counts only truly top samples: recomputed by hand
        idx = np.array([pos[i] for i in sel.ids])
        expect = len(set(lab[idx[top[idx]]])) / len(set(lab[top]))
        assert abs(q.loc[name, 'top_coverage'] - expect) < 1e-12


def test_subtopics_vary_quality_inside_topics_and_keep_neighbours_alike():
    flat, sub = synthetic_pool(3000, n_clusters=30, seed=1), synthetic_pool(3000, n_clusters=30, subtopics=4, within=1.5, seed=1)
    spread_in_topic = lambda p: np.mean([p.true[p.topic == t].std() for t in np.unique(p.topic)])
    assert spread_in_topic(flat) == 0 and spread_in_topic(sub) > 0.5
    # nearest neighbour (not itself) shares the true score far more often than a random sample of its topic
    S = sub.X @ sub.X.T; np.fill_diagonal(S, -2)
    nn_same = (sub.true[S.argmax(1)] == sub.true).mean()
    topic_same = np.mean([(sub.true[sub.topic == sub.topic[i]] == sub.true[i]).mean() for i in range(0, 3000, 10)])
    assert nn_same > topic_same + 0.2
    assert synthetic_pool(500, subtopics=4, seed=2).true.tolist() == synthetic_pool(500, subtopics=4, seed=2).true.tolist()
    assert synthetic_pool(500, seed=2).true.tolist() == synthetic_pool(500, subtopics=1, within=3.0, seed=2).true.tolist()


def test_alpagasus_draws_dataset_positions():
    # top level at positions 50..59; in-bucket positions 0..9 would be rated 0
    scores = [0] * 50 + [5] * 10 + [2] * 40
    samples = [{'id': f'i{i}', 'messages': []} for i in range(100)]
    for seed in range(10):
        s = select(samples, 'alpagasus', 15, scores=scores, seed=seed)
        got = sorted(int(i[1:]) for i in s.ids)
        assert got[:10] == list(range(50, 60)) and all(60 <= g < 100 for g in got[10:])
    assert select(samples, 'alpagasus', 15, scores=scores, threshold=5).ids.__len__() == 10


def test_alpagasus_threshold_and_empty_levels():
    samples = [{'id': f'i{i}', 'messages': []} for i in range(6)]
    s = select(samples, 'alpagasus', 4, scores=[5, 0, 5, 0, 1, 0], seed=0)
    assert set(s.ids[:3]) == {'i0', 'i2', 'i4'} and s.ids[3] in {'i1', 'i3', 'i5'}


def test_deita_nearest_not_mean_of_farthest():
    # selected: e (0 deg), n (90 deg); c at 3 deg is near e but its mean distance to {e, n} is large
    ang = np.deg2rad([0, 90, 3, 200, 100])
    X = np.stack([np.cos(ang), np.sin(ang)], 1)
    samples = [{'id': k, 'messages': []} for k in ['e', 'n', 'c', 'w', 'n10']]
    s = select(samples, 'deita', 3, scores=[5, 4, 3, 2, 1], X=X, tau=0.05)
    assert s.ids == ['e', 'n', 'w']


def test_diversity_walk_blocks_equal_sequential():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(700, 5)).astype(np.float32)
    order = rng.permutation(700)
    ref, _ = diversity_walk(X, order, 10_000, tau=0.3, block=1)
    for b in (7, 64, 1000):
        got, _ = diversity_walk(X, order, 10_000, tau=0.3, block=b)
        assert got.tolist() == ref.tolist()


def test_missing_scores_never_selected():
    samples = [{'id': f'i{i}', 'messages': []} for i in range(5)]
    table = pd.DataFrame({'id': [f'i{i}' for i in range(5)], 'score': [5, None, 4, 3, 5],
                          'status': ['ok', 'unparsed', 'ok', 'ok', 'failed']})
    s = select(samples, 'alpagasus', 3, scores=table)
    assert set(s.ids) == {'i0', 'i2', 'i3'}
    with pytest.raises(ValueError, match='only 3 samples have a score'):
        select(samples, 'alpagasus', 4, scores=table)


@pytest.mark.parametrize('call, msg', [
    (lambda S, R: select(S, 'ds2', 10, report=R.iloc[3:]), "3 of the 8 pool ids are missing from the curation report (e.g. 'p0', 'p1', 'p2')"),
    (lambda S, R: select(S, 'ds2', 9, report=R), 'exceeds the pool (8 samples)'),
    (lambda S, R: select(S, 'ds2', -1, report=R), "'budget' parameter of select"),
    (lambda S, R: select(S, 'ds2', 1.5, report=R), "'budget' parameter of select"),
    (lambda S, R: select(S, 'random', None), "'budget' parameter of select is required"),
    (lambda S, R: select(S, 'knn', 3), 'needs knn: pass X='),
    (lambda S, R: select(S, 'deita', 3, scores=[1] * 8), 'needs X'),
    (lambda S, R: select(S, 'alpagasus', 3), 'needs scores'),
    (lambda S, R: select(S, 'ds2', 3, scores=[1] * 7, report=R), "one score per sample of the pool (8). Got 7"),
    (lambda S, R: select(S, 'alpagasus', 3, scores={'p0': 1}), '7 of the 8 pool ids are missing from the scores'),
    (lambda S, R: select(S, 'deita', 3, scores=[1] * 8, X=np.ones((8, 2)), tau=-1), "'tau' parameter of deita"),
    (lambda S, R: select(S, 'knn', 3, X=np.ones((7, 2))), "'X' must be an (N, d) array"),
    (lambda S, R: select([{'messages': []}], 'random', 1), "Sample 0 has no 'id' field"),
    (lambda S, R: select(S + S[:1], 'random', 1), 'duplicate ids'),
    (lambda S, R: select(S, 'alpagasus', 3, scores=pd.DataFrame({'id': ['p0', 'p0'], 'score': [1, 2], 'rater': ['a', 'b']})), 'holds 2 raters'),
])
def test_bad_input_messages(call, msg):
    S = [{'id': f'p{i}', 'messages': []} for i in range(8)]
    R = pd.DataFrame({'id': [s['id'] for s in S], 'score': 1, 'curated_score': 1, 'longtail': 0.1})
    with pytest.raises((ValueError, TypeError), match=None) as e:
        call(S, R)
    assert msg in str(e.value), str(e.value)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(2, 60), frac=st.floats(0.01, 1.0), seed=st.integers(0, 2**16),
       method=st.sampled_from(['ds2', 'ds2_raw', 'alpagasus', 'random', 'knn', 'deita']),
       levels=st.integers(1, 6))
def test_property_subset_of_budget(n, frac, seed, method, levels):
    rng = np.random.default_rng(seed)
    samples = [{'id': f'h{i}', 'messages': [{'role': 'assistant', 'content': 'x' * int(rng.integers(0, 9))}]} for i in range(n)]
    X = rng.normal(size=(n, 4)).astype(np.float32)
    sc = rng.integers(0, levels, n)
    rep = pd.DataFrame({'id': [s['id'] for s in samples], 'score': sc, 'curated_score': rng.integers(0, levels, n),
                        'longtail': rng.random(n)})
    b = max(1, int(frac * n))
    s = select(samples, method, b, report=rep, X=X, seed=seed, **({'tau': 0.0} if method == 'deita' else {}))
    assert len(s.ids) == b and len(set(s.ids)) == b and set(s.ids) <= {x['id'] for x in samples}
    assert s.ids == select(samples, method, b, report=rep, X=X, seed=seed, **({'tau': 0.0} if method == 'deita' else {})).ids


def test_register_method_and_registry():
    @register_method('every_other')
    def every_other(pool, budget, rng):
        "Every second sample."
        idx = np.arange(0, pool.n, 2)[:budget]
        return Picked(idx, np.zeros(len(idx)), ['even position'] * len(idx))
    try:
        s = select([{'id': str(i)} for i in range(10)], 'every_other', 3)
        assert s.ids == ['0', '2', '4'] and METHODS['every_other'].doc == 'Every second sample.'
    finally:
        del METHODS['every_other']
    with pytest.raises(ValueError, match="'needs' parameter"):
        register_method('x', needs=('gpu',))


def test_save_load_roundtrip_parquet_and_gzip(tmp_path, sp, rep):
    s = select(sp.samples, 'ds2', 25, report=rep)
    for name in ('sub.jsonl.gz', 'sub.parquet'):
        p = s.save(tmp_path / name)
        back = Selection.load(p)
        assert back.ids == s.ids and back.hash == s.hash and back.method == 'ds2' and back.params['budget'] == 25
        assert back.to_dataset()['id'] == s.ids
    m = json.loads((tmp_path / 'sub.manifest.json').read_text())
    assert m['n_selected'] == 25 and m['pool_size'] == 600
    with pytest.raises(FileNotFoundError, match='no selection manifest'):
        Selection.load(tmp_path / 'other.jsonl')


def test_selection_with_datasets_and_dataframe(sp, rep):
    import datasets
    ds = datasets.Dataset.from_list(sp.samples)
    a = select(ds, 'ds2', 30, report=rep)
    b = select(pd.DataFrame(sp.samples), 'ds2', 30, report=rep)
    assert a.ids == b.ids == select(sp.samples, 'ds2', 30, report=rep).ids
    assert a.to_dataset()['id'] == a.ids and b.to_dataset()['id'] == a.ids


def run_cli(*args):
    return subprocess.run(['llm_curate', *map(str, args)], capture_output=True, text=True, timeout=300)


def test_cli_select_end_to_end(tmp_path, sp, rep):
    pool = tmp_path / 'pool.jsonl'
    pool.write_text(''.join(json.dumps(s) + '\n' for s in sp.samples))
    table = pd.DataFrame({'id': rep['id'], 'rater': 'r1', 'status': 'ok', 'score': rep['score']})
    table.to_parquet(tmp_path / 'ratings.parquet')
    np.save(tmp_path / 'X.npy', sp.X)
    out = tmp_path / 'sub.jsonl'
    r = run_cli('select', pool, '--id-field', 'id', '--method', 'deita', '--budget', '40', '--scores', tmp_path / 'ratings.parquet',
                '--embeddings', tmp_path / 'X.npy', '--param', 'tau=0.02', '--out', out)
    assert r.returncode == 0, r.stderr
    assert 'wrote 40 of 600 samples' in r.stdout
    lines = [json.loads(l) for l in out.read_text().splitlines()]
    assert len(lines) == 40 and lines[0]['messages'][0]['role'] == 'user'
    m = json.loads((tmp_path / 'sub.manifest.json').read_text())
    assert m['method'] == 'deita' and m['params']['tau'] == 0.02
    expect = select(sp.samples, 'deita', 40, scores=table, X=sp.X, tau=0.02)
    assert m['ids'] == expect.ids
    from llm_curate.embed import save_embeddings
    perm = np.random.default_rng(0).permutation(len(sp.X))                 # an embeddings folder in another row order
    save_embeddings(tmp_path / 'emb', sp.X[perm], [sp.samples[i]['id'] for i in perm], 'test')
    r = run_cli('select', pool, '--id-field', 'id', '--method', 'knn', '--budget', '40', '--embeddings', tmp_path / 'emb',
                '--out', tmp_path / 'k.jsonl')
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / 'k.manifest.json').read_text())['ids'] == select(sp.samples, 'knn', 40, X=sp.X).ids
    r = run_cli('select', pool, '--method', 'random', '--budget', '0.05', '--out', tmp_path / 'r.jsonl')
    assert r.returncode == 0 and 'wrote 30 of 600' in r.stdout
    r = run_cli('select', pool, '--method', 'ds2', '--budget', '10', '--out', tmp_path / 'x.jsonl')
    assert r.returncode == 1 and "needs a curation report: --report DIR" in r.stderr
    r = run_cli('select', pool, '--method', 'random', '--budget', '1000', '--out', tmp_path / 'x.jsonl')
    assert r.returncode == 1 and 'exceeds the pool (600 samples)' in r.stderr



def test_cli_bad_scores_tables_name_file_and_fix(tmp_path, sp):
    pool = tmp_path / 'pool.jsonl'
    pool.write_text(''.join(json.dumps(s) + '\n' for s in sp.samples[:50]))
    pd.DataFrame({'id': [s['id'] for s in sp.samples[:50]], 'rating': 3}).to_csv(tmp_path / 'r.csv', index=False)
    (tmp_path / 'r.txt').write_text('id score\n')
    for bad, msg in [('r.csv', "r.csv: the scores table needs columns ['id', 'score']; missing ['score']"),
                     ('r.txt', 'r.txt: unsupported file type for the scores table'),
                     ('gone.parquet', 'gone.parquet: no such file; expected the scores table')]:
        out = tmp_path / 'sub.jsonl'
        r = run_cli('select', pool, '--id-field', 'id', '--method', 'ds2_raw', '--budget', '5', '--scores', tmp_path / bad, '--out', out)
        assert r.returncode != 0 and msg in r.stderr, r.stderr
        assert 'Traceback' not in r.stderr and not out.exists()
    r = run_cli('curate', '--scores', tmp_path / 'r.csv', '--embeddings', tmp_path / 'none', '--out', tmp_path / 'cur')
    assert r.returncode != 0 and "r.csv: the rating table (from `llm_curate rate --export`) needs columns ['id', 'score']" in r.stderr, r.stderr
    assert not (tmp_path / 'cur').exists()


def test_with_real_curation_report(sp, tmp_path):
    from llm_curate.curate import curate_scores
    rep = curate_scores(sp.X, sp.rated, ids=[s['id'] for s in sp.samples])
    a = select(sp.samples, 'knn', 50, report=rep)          # reuses the report's k-NN distances
    b = select(sp.samples, 'knn', 50, X=sp.X)              # computes the graph
    assert a.ids == b.ids
    rep.save(tmp_path / 'rep')
    c = select(sp.samples, 'ds2', 50, report=tmp_path / 'rep')   # a report folder works too
    assert c.ids == select(sp.samples, 'ds2', 50, report=rep).ids
    with pytest.raises(ValueError, match="needs knn"):
        select(sp.samples, 'knn', 5, report=rep.frame)     # a bare frame has no k recorded


def test_pool_built_once_serves_many_selections(sp, rep, tmp_path, monkeypatch):
    from llm_curate.select import Pool, write_subsets
    import llm_curate.knn
    pool = Pool(sp.samples, report=rep, X=sp.X)
    for m in ['knn', 'ds2', 'deita', 'random']:
        assert select(pool, m, 40, seed=1).ids == select(sp.samples, m, 40, report=rep, X=sp.X, seed=1).ids
    with pytest.raises(ValueError, match='select got a Pool and report/scores/X'): select(pool, 'ds2', 10, report=rep)
    calls, real = [], llm_curate.knn.knn_graph
    monkeypatch.setattr(llm_curate.knn, 'knn_graph', lambda *a, **k: calls.append(1) or real(*a, **k))
    table = pd.DataFrame({'id': rep['id'], 'score': rep['score']})
    got = write_subsets(sp.samples, ['knn', 'ds2_raw'], [20, 40, 80], tmp_path, scores=table, X=sp.X, progress=False)
    assert len(got) == 6 and len(calls) == 1   # the k-NN graph is computed once for all methods and sizes
    assert got.set_index(['method', 'size']).loc[('knn', 40), 'hash'] == select(sp.samples, 'knn', 40, scores=table, X=sp.X).hash


def test_write_subsets_resumes(tmp_path, sp, rep):
    from llm_curate.select import write_subsets
    t = write_subsets(sp.samples, ['ds2', 'random'], [10, 20], tmp_path, report=rep, progress=False)
    assert t['written'].all() and (t['n'] == t['size']).all()
    assert sorted(p.name for p in (tmp_path / 'ds2').iterdir()) == ['10.jsonl', '10.manifest.json', '20.jsonl', '20.manifest.json']
    (tmp_path / 'random' / '20.jsonl').unlink()                # an interrupted run
    t2 = write_subsets(sp.samples, ['ds2', 'random'], [10, 20], tmp_path, report=rep, progress=False)
    assert t2['written'].tolist() == [False, False, False, True]
    assert (t2['hash'] == t['hash']).all()


# ---- model-based methods on SmolLM2-135M (real forward/backward passes; ~15 s together) ----
def conv(q, a): return [{'role': 'user', 'content': q}, {'role': 'assistant', 'content': a}]


@pytest.fixture(scope='module')
def smol():
    from llm_curate.models import load_causal_lm
    return load_causal_lm('smollm2', device='cpu')


def test_encode_masks_only_assistant_content(smol):
    from llm_curate.signals import _encode
    _, tok = smol
    msgs = conv('Hi there', 'Hello!') + [{'role': 'user', 'content': 'Again'}, {'role': 'assistant', 'content': 'Sure thing'}]
    ids, mask = _encode(tok, msgs, 1000)
    assert tok.decode([t for t, k in zip(ids, mask) if k]) == 'Hello!\nSure thing\n'
    ids2, mask2 = _encode(tok, msgs, 5)
    assert ids2 == ids[-5:] and mask2 == mask[-5:]


def test_perplexity_batched_equals_single_and_cached(smol, tmp_path, monkeypatch):
    from llm_curate import signals as S
    pool = [{'id': 'a', 'messages': conv('What is 2+2?', '2+2 is 4.')},
            {'id': 'b', 'messages': conv('Name a colour.', 'Blue is a colour that many people like a lot.')},
            {'id': 'c', 'messages': conv('Say nothing.', 'zebra quantum pickle seventeen')},
            {'id': 'd', 'messages': [{'role': 'user', 'content': 'no answer'}]}]
    one = S.response_perplexity(pool, smol, batch_size=1, cache_dir=False, progress=False)
    four = S.response_perplexity(pool, smol, batch_size=4, cache_dir=False, progress=False)
    np.testing.assert_allclose(one[:3], four[:3], rtol=1e-3)
    assert np.isnan(one[3]) and one[2] > one[0]
    S.response_perplexity(pool[:2], 'smollm2', cache_dir=tmp_path, progress=False)
    calls = []
    real = S._as_model
    monkeypatch.setattr(S, '_as_model', lambda m, d: calls.append(m) or real(smol, d))
    again = S.response_perplexity(pool, 'smollm2', cache_dir=tmp_path, progress=False)  # only c and d are new
    assert len(calls) == 1
    np.testing.assert_allclose(again[:3], four[:3], rtol=1e-3)
    calls.clear()
    S.response_perplexity(pool, 'smollm2', cache_dir=tmp_path, progress=False)
    assert calls == []
    sel = select(pool, 'perplexity', 2, cache_dir=tmp_path, progress=False)
    assert sel.ids == ['c', 'b'] and 'perplexity' in sel.reasons[0]
    with pytest.raises(ValueError, match='only 3 samples have an assistant response'):
        select(pool, 'perplexity', 4, cache_dir=tmp_path, progress=False)


def test_less_end_to_end_prefers_target_task():
    "Real LoRA warm-up, per-sample gradients, Adam preconditioning and projection on SmolLM2-135M."
    import time
    t = time.time()
    math_q = [conv(f'What is {a} plus {b}?', f'{a} plus {b} is {a + b}.') for a, b in [(2, 3), (7, 5), (10, 4), (6, 6), (9, 1), (3, 8)]]
    cook_q = [conv(q, a) for q, a in [('How do I boil an egg?', 'Put the egg in boiling water for nine minutes.'),
                                       ('How do I make toast?', 'Put sliced bread in a toaster until golden.'),
                                       ('How long to bake bread?', 'Bake the loaf for about forty minutes at 220 C.'),
                                       ('How do I cook rice?', 'Simmer one cup of rice in two cups of water.'),
                                       ('How do I make tea?', 'Steep the tea bag in hot water for three minutes.'),
                                       ('How to fry an onion?', 'Slice it and fry it in oil until soft and brown.')]]
    pool = [{'id': f'm{i}', 'messages': c} for i, c in enumerate(math_q)] + [{'id': f'c{i}', 'messages': c} for i, c in enumerate(cook_q)]
    target = [{'id': 't0', 'messages': conv('What is 4 plus 4?', '4 plus 4 is 8.')}]
    kw = dict(target=target, warmup_fraction=0.34, warmup_epochs=2, lr=1e-4, lora_r=4, lora_alpha=8,
              target_modules=('v_proj',), proj_dim=512, max_length=64, progress=False)
    sel = select(pool, 'less', 6, **kw)
    assert sorted(sel.ids) == [f'm{i}' for i in range(6)]
    assert np.all(np.diff(sel.signal) <= 0) and sel.params['proj_dim'] == 512 and sel.params['target'] == '<list of 1>'
    print(f'LESS end to end: {time.time() - t:.1f} s')  # ~5 s on an idle 2-core CPU
    with pytest.raises(ValueError, match='needs a target set'):
        select(pool, 'less', 3)


def test_project_is_a_seeded_rademacher_map():
    import torch
    from llm_curate.signals import _project
    torch.manual_seed(0)
    G = torch.randn(3, 1000)
    G[1] = 0.8 * G[0] + 0.6 * G[1]; G[2] = -0.5 * G[0] + 0.87 * G[2]   # rows at cosine ~0.8 and ~-0.5
    a, b = _project(torch, G, 64, seed=1, block=256), _project(torch, G, 64, seed=1, block=256)
    assert torch.equal(a, b) and a.shape == (3, 64)
    # linear, and the same map when the input is projected in one block per row-chunk
    np.testing.assert_allclose(_project(torch, 2 * G, 64, 1, 256), 2 * a, rtol=1e-5)
    # inner products preserved on average (JL): relative error small for a big projection
    big = _project(torch, G, 4096, seed=0)
    # error of each inner product relative to the norms (JL: about 1/sqrt(4096) ~ 0.016), off-diagonal ones included
    n = G.norm(dim=1)
    err = ((big @ big.T) - (G @ G.T)).abs() / (n[:, None] * n[None, :])
    assert err.max() < 0.05, err


def test_less_warmup_slice_follows_ids_not_file_order():
    "LESS's warm-up LoRA trains on the same samples whatever the file order (the slice is drawn by id key, not position)."
    from llm_curate.signals import _warmup_slice
    ids = [f's{i}' for i in range(200)]
    a = {ids[i] for i in _warmup_slice(ids, 10, 0)}
    rev = ids[::-1]
    assert {rev[i] for i in _warmup_slice(rev, 10, 0)} == a and len(a) == 10
    assert {ids[i] for i in _warmup_slice(ids, 10, 1)} != a   # the seed still matters
