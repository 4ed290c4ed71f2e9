"""Multi-rater curation: identifiability edge cases, invariances (hypothesis), recovery of known noise, report and selection."""
import logging

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st, HealthCheck
from hypothesis.extra.numpy import arrays

from llm_curate.curate import CurationReport
from llm_curate.synthetic import draw_ratings, empirical_T, rater_like_T, synthetic_pool
from llm_curate.multi_rater import (MultiRaterCurator, check_ratings, curate_raters, curate_rating_tables,
                                    majority_vote, rater_accuracy, ratings_matrix, rating_patterns)
from llm_curate.select import select

K = 6
T3 = [rater_like_T(K, bias=0.5, width=0.55), rater_like_T(K, bias=-0.5, width=0.55), rater_like_T(K, bias=0.0, width=1.0)]


@pytest.fixture(scope='module')
def gen():
    rng = np.random.default_rng(0)
    y = rng.choice(K, size=30000, p=[0.05, 0.15, 0.3, 0.3, 0.15, 0.05])
    S = draw_ratings(y, T3, seed=1)
    return y, S, np.stack([empirical_T(y, S[:, r].astype(int), K) for r in range(3)])


ratings = arrays(np.int64, st.tuples(st.integers(1, 60), st.integers(2, 4)), elements=st.integers(-1, K - 1))


@given(ratings)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_ratings_give_a_proper_posterior(L):
    logging.getLogger('llm_curate.multi_rater').setLevel(logging.ERROR)
    cur = MultiRaterCurator(max_iter=300).fit(L)
    Q = cur.posterior_
    assert Q.shape == (len(L), K) and np.isfinite(Q).all()
    np.testing.assert_allclose(Q.sum(1), 1, atol=1e-9)
    np.testing.assert_array_equal(cur.curated_scores_, Q.argmax(1))
    np.testing.assert_allclose(cur.confidence_, Q.max(1))
    np.testing.assert_allclose(cur.transition_matrices_.sum(2), 1, atol=1e-9)
    assert ((cur.rater_accuracy_ >= 0) & (cur.rater_accuracy_ <= 1)).all()
    none = (L < 0).all(1)  # unrated samples get the prior
    np.testing.assert_allclose(Q[none], np.broadcast_to(cur.prior_, (none.sum(), K)), atol=1e-9)


@given(ratings, st.randoms(use_true_random=False))
@settings(max_examples=30, deadline=None)
def test_rater_and_sample_order_do_not_matter(L, rnd):
    logging.getLogger('llm_curate.multi_rater').setLevel(logging.ERROR)
    rows, cols = list(range(len(L))), list(range(L.shape[1]))
    rnd.shuffle(rows); rnd.shuffle(cols)
    a = MultiRaterCurator(max_iter=300).fit(L)
    b = MultiRaterCurator(max_iter=300).fit(L[rows][:, cols])
    np.testing.assert_allclose(b.posterior_, a.posterior_[rows], atol=1e-6)
    np.testing.assert_allclose(b.transition_matrices_, a.transition_matrices_[cols], atol=1e-6)


@given(arrays(np.float64, st.tuples(st.integers(1, 30), st.integers(2, 4)),
              elements=st.one_of(st.integers(-1, K - 1).map(float), st.just(np.nan))))
def test_check_ratings_maps_nan_and_minus_one_to_missing(S):
    L = check_ratings(S, K)
    np.testing.assert_array_equal(L, np.where(np.isnan(S), -1, S).astype(int))
    U, inv, cnt = rating_patterns(L)
    np.testing.assert_array_equal(U[inv], L)
    assert cnt.sum() == len(L) and len(np.unique(U, axis=0)) == len(U)


def test_three_raters_recover_T_and_beat_majority_vote(gen):
    y, S, Te = gen
    cur = MultiRaterCurator().fit(S)
    assert cur.identifiable_ and cur.converged_
    assert np.abs(cur.transition_matrices_ - Te).mean((1, 2)).max() <= 0.03
    np.testing.assert_allclose(cur.rater_accuracy_, (S == y[:, None]).mean(0), atol=0.02)
    assert (cur.curated_scores_ == y).mean() >= (cur.majority_ == y).mean() + 0.05


def test_a_rater_missing_on_some_samples(gen):
    y, S, Te = gen
    Sm = S.copy(); Sm[np.random.default_rng(3).random(len(S)) < 0.5, 1] = np.nan
    Sm[:100, 0] = -1  # -1 means missing too
    cur = MultiRaterCurator().fit(Sm)
    np.testing.assert_array_equal(cur.n_ratings_, (~np.isnan(Sm) & (Sm != -1)).sum(1))
    assert np.abs(cur.transition_matrices_ - Te).mean() <= 0.04
    assert np.isnan(cur.error_probabilities()[np.isnan(Sm[:, 1]), 1]).all()
    assert (cur.curated_scores_ == y).mean() > (majority_vote(check_ratings(Sm, K), K) == y).mean()


@pytest.mark.parametrize('level', [0, 3])
def test_a_constant_rater_has_no_influence(gen, level, caplog):
    y, S, _ = gen
    base = MultiRaterCurator().fit(S)
    with caplog.at_level(logging.WARNING, 'llm_curate.multi_rater'):
        cur = MultiRaterCurator(raters=['a', 'b', 'c', 'const']).fit(np.c_[S, np.full(len(S), level)])
    assert "'const' gives one level only" in caplog.text
    assert cur.informative_.tolist() == [True, True, True, False]
    np.testing.assert_array_equal(cur.curated_scores_, base.curated_scores_)
    np.testing.assert_allclose(cur.posterior_, base.posterior_, atol=1e-6)
    np.testing.assert_allclose(cur.transition_matrices_[3][:, level], 1, atol=1e-3)  # every row: the rater's own marginal


def test_a_constant_rater_cannot_dominate_two_raters(gen, caplog):
    "Two informative raters and a constant one: the constant rater adds nothing, and the model says it is not identifiable."
    y, S, _ = gen
    with caplog.at_level(logging.WARNING, 'llm_curate.multi_rater'):
        cur = MultiRaterCurator().fit(np.c_[S[:, :2], np.full(len(S), 5)])
    assert not cur.identifiable_ and 'Only 2 informative raters' in caplog.text
    assert (cur.curated_scores_ == 5).mean() < 0.2


def test_all_raters_constant_or_absent_does_not_break(caplog):
    with caplog.at_level(logging.WARNING, 'llm_curate.multi_rater'):
        cur = MultiRaterCurator().fit(np.c_[np.full(50, 2), np.full(50, np.nan)])
    assert 'gives no rating' in caplog.text and not cur.identifiable_
    assert (cur.curated_scores_ == 2).all()


def test_two_raters_warn_and_neighbours_identify(caplog):
    pool = synthetic_pool(4000, spread=0.5, seed=0)  # well clustered: neighbours are a good third view
    S = draw_ratings(pool.true, T3[:2], seed=1)
    Te = np.stack([empirical_T(pool.true, S[:, r].astype(int), K) for r in range(2)])
    with caplog.at_level(logging.WARNING, 'llm_curate.multi_rater'):
        two = MultiRaterCurator().fit(S)
    assert not two.identifiable_ and 'are not' in caplog.text and 'an assumption, not a measurement' in caplog.text
    two_x = MultiRaterCurator().fit(S, pool.X)
    assert two_x.identifiable_ and two_x.clusterability_ > 0.8
    assert np.abs(two_x.transition_matrices_ - Te).mean() < np.abs(two.transition_matrices_ - Te).mean()
    assert (two_x.curated_scores_ == pool.true).mean() > (two.curated_scores_ == pool.true).mean() + 0.1
    again = MultiRaterCurator().fit(S, pool.X)
    np.testing.assert_array_equal(again.posterior_, two_x.posterior_)  # seeded and deterministic


def test_neighbours_do_nothing_when_they_share_nothing():
    rng = np.random.default_rng(0)
    y = rng.integers(0, K, 3000)
    X = rng.normal(size=(3000, 16)).astype(np.float32)  # embeddings unrelated to the truth
    S = draw_ratings(y, T3, seed=2)
    a, b = MultiRaterCurator().fit(S), MultiRaterCurator().fit(S, X)
    assert abs(b.clusterability_ - 1 / K) < 0.03                                   # shares only by chance
    np.testing.assert_allclose(b.neighbour_matrix_, np.broadcast_to(b.prior_, (K, K)), atol=0.08)  # neighbour's level ~ prior
    assert abs((a.curated_scores_ == y).mean() - (b.curated_scores_ == y).mean()) < 0.02


def test_rater_accuracy_by_group(gen):
    y, S, _ = gen
    S = S.copy(); S[np.random.default_rng(4).random(len(S)) < 0.3, 2] = np.nan  # accuracy over the rated samples only
    cur = MultiRaterCurator().fit(S)
    g = np.where(np.arange(len(y)) % 2, 'odd', 'even')
    est = rater_accuracy(cur.posterior_, S, groups=g, raters=['l', 'h', 'n'])
    true = pd.DataFrame({n: pd.Series(S[:, r] == y)[~np.isnan(S[:, r])].groupby(g[~np.isnan(S[:, r])]).mean() for r, n in enumerate('lhn')})
    np.testing.assert_allclose(est.sort_index().to_numpy(), true.sort_index().to_numpy(), atol=0.03)
    assert list(rater_accuracy(cur.posterior_, S).index) == ['all']


def test_bad_parameters_and_input():
    with pytest.raises(ValueError, match="The 'neighbours' parameter of MultiRaterCurator must be an int >= 0. Got -1 instead."):
        MultiRaterCurator(neighbours=-1).fit(np.zeros((5, 3)))
    with pytest.raises(ValueError, match="'raters' parameter"):
        MultiRaterCurator(raters=['a']).fit(np.zeros((5, 3)))
    with pytest.raises(ValueError, match="R >= 2"):
        MultiRaterCurator().fit(np.zeros((5, 1)))
    with pytest.raises(ValueError, match=r"S\[1, 2\] is 7.0"):
        MultiRaterCurator().fit([[0, 1, 2], [0, 1, 7]])
    with pytest.raises(ValueError, match="graph has shape"):
        from llm_curate.knn import knn_graph
        X = np.random.default_rng(0).normal(size=(30, 4))
        MultiRaterCurator().fit(np.zeros((20, 3)), graph=knn_graph(X, k=10))


def test_report_roundtrip_and_selection_on_the_joint_score(tmp_path, gen):
    pool = synthetic_pool(3000, spread=1.5, seed=0)
    S = draw_ratings(pool.true, T3, seed=1)
    ids = [s['id'] for s in pool.samples]
    rep = curate_raters(S, X=pool.X, ids=ids, raters=['lenient', 'harsh', 'noisy'])
    back = CurationReport.load(rep.save(tmp_path / 'joint'))
    pd.testing.assert_frame_equal(back.frame.drop(columns='posterior'), rep.frame.drop(columns='posterior'))
    np.testing.assert_allclose(np.stack(back.frame['posterior']), np.stack(rep.frame['posterior']))
    assert np.shape(back.transition_matrix) == (3, K, K) and back.params['raters'] == ['lenient', 'harsh', 'noisy']
    assert {'rating_lenient', 'error_prob_noisy', 'longtail', 'curated_score'} <= set(back.frame.columns)
    sel = select(pool.samples, 'ds2', 300, report=tmp_path / 'joint', seed=0)
    chosen = pd.Index(ids).get_indexer(sel.ids)
    np.testing.assert_array_equal(np.sort(rep.frame['curated_score'].to_numpy()[chosen])[::-1],
                                  np.sort(rep.frame['curated_score'].to_numpy())[::-1][:300])  # the top joint scores
    assert pool.true[chosen].mean() > pool.true.mean() + 1


def test_ratings_matrix_joins_by_id():
    a = pd.DataFrame({'id': ['1', '2', '3'], 'score': [1, 2, 3], 'status': ['ok', 'failed', 'ok'], 'rater': 'A'})
    b = pd.DataFrame({'id': ['3', '4'], 'score': [5, 0], 'rater': 'B'})
    ids, M, names, counts = ratings_matrix([a, b])
    assert ids == ['1', '3', '4'] and names == ['A', 'B'] and counts['A']['excluded'] == {'failed': 1}
    np.testing.assert_array_equal(np.nan_to_num(M, nan=-1), [[1, -1], [3, 5], [-1, 0]])
    with pytest.raises(ValueError, match="appears in more than one table"):
        ratings_matrix([a, a])


@given(ratings)
@settings(max_examples=50, deadline=None)
def test_majority_vote_takes_a_most_voted_level_and_the_middle_of_ties(L):
    mv = majority_vote(L, K)
    for row, m in zip(L, mv):
        votes = np.bincount(row[row >= 0], minlength=K)
        if votes.sum() == 0: assert m == -1; continue
        tied = np.flatnonzero(votes == votes.max())
        assert m == tied[(len(tied) - 1) // 2]


def test_curate_rating_tables_with_an_embeddings_folder(tmp_path):
    from llm_curate.embed import save_embeddings
    pool = synthetic_pool(1500, spread=1.5, seed=1)
    ids = [s['id'] for s in pool.samples]
    S = draw_ratings(pool.true, T3, missing=0.1, seed=2)
    tabs = [pd.DataFrame({'id': ids, 'rater': n, 'score': S[:, r]}).dropna() for r, n in enumerate(['l', 'h', 'n'])]
    save_embeddings(tmp_path / 'emb', pool.X[::-1], ids[::-1], 'generated')  # another order: aligned by id
    rep = curate_rating_tables(tabs, tmp_path / 'emb')
    rated = (~np.isnan(S)).any(1)                # a sample nobody rated is not in the report
    assert len(rep.frame) == rated.sum() < len(S)
    f = rep.frame.set_index('id').loc[np.array(ids)[rated]]
    assert rep.params['embedding_model'] == 'generated' and rep.params['clusterability'] > 0.5
    np.testing.assert_array_equal(f['n_ratings'], (~np.isnan(S[rated])).sum(1))
    assert f['longtail'].notna().all()
    save_embeddings(tmp_path / 'few', pool.X[:100], ids[:100], 'generated')
    with pytest.raises(ValueError, match='have no embedding'):
        curate_rating_tables(tabs, tmp_path / 'few')


def _cli(*args, **kw):
    import subprocess
    return subprocess.run(['llm_curate', *map(str, args)], capture_output=True, text=True, timeout=300, **kw)


def test_cli_curates_several_tables_jointly(tmp_path):
    pool = synthetic_pool(2000, spread=1.5, seed=0)
    ids = [s['id'] for s in pool.samples]
    S = draw_ratings(pool.true, T3, missing=0.05, seed=1)
    files = []
    for r, n in enumerate(['gpt', 'llama', 'mistral']):
        ok = ~np.isnan(S[:, r])
        t = pd.DataFrame({'id': ids, 'score': np.nan_to_num(S[:, r]).astype(int), 'status': np.where(ok, 'ok', 'unparsed')})
        t.to_parquet(tmp_path / f'{n}.parquet'); files.append(tmp_path / f'{n}.parquet')
    r = _cli('curate', '--scores', *files, '--out', tmp_path / 'joint')
    assert r.returncode == 0, r.stderr
    assert 'joint curation of 3 raters' in r.stdout and 'estimated accuracy gpt' in r.stdout
    rep = CurationReport.load(tmp_path / 'joint')
    assert rep.params['raters'] == ['gpt', 'llama', 'mistral'] and rep.params['ratings']['gpt']['excluded'] == {'unparsed': int(np.isnan(S[:, 0]).sum())}
    np.testing.assert_array_equal(rep.frame.set_index('id').loc[ids, 'rating_llama'], np.where(np.isnan(S[:, 1]), -1, S[:, 1]))
    # one table holding all raters, --joint: the same report
    pd.concat([pd.read_parquet(f).assign(rater=f.stem) for f in files]).to_parquet(tmp_path / 'all.parquet')
    r2 = _cli('curate', '--scores', tmp_path / 'all.parquet', '--joint', '--out', tmp_path / 'joint2')
    assert r2.returncode == 0, r2.stderr
    pd.testing.assert_frame_equal(CurationReport.load(tmp_path / 'joint2').frame.drop(columns='posterior'),
                                  rep.frame.drop(columns='posterior'))


def test_cli_bad_input_says_what_and_writes_nothing(tmp_path):
    pd.DataFrame({'id': ['a', 'b'], 'score': [1, 2], 'rater': 'x'}).to_parquet(tmp_path / 'one.parquet')
    r = _cli('curate', '--scores', tmp_path / 'one.parquet', '--out', tmp_path / 'rep')
    assert r.returncode == 1 and '--embeddings is required for single-rater curation' in r.stderr and 'Traceback' not in r.stderr
    r = _cli('curate', '--scores', tmp_path / 'one.parquet', '--joint', '--out', tmp_path / 'rep')
    assert r.returncode == 1 and 'needs ratings from >= 2 raters' in r.stderr
    assert not (tmp_path / 'rep').exists()


def test_pipeline_with_three_raters_curates_jointly_and_selects_on_the_joint_score(tmp_path):
    "rate.scores lists three raters' files: the curate stage runs the joint curator, select and the report read its report."
    import json
    from pathlib import Path
    import llm_curate
    from llm_curate.data import load_samples
    from llm_curate.pipeline import Manifest, Pipeline, validate_config
    asset = Path(llm_curate.__file__).parent / 'assets' / 't0_pool_5k.jsonl.gz'
    ds = load_samples(asset, progress=False, cache_dir=tmp_path / 'cache').select(range(300))
    rng = np.random.default_rng(0)
    tpl = pd.Series(ds['template'])
    true = tpl.map({t: int(rng.integers(0, 6)) for t in tpl.unique()}).to_numpy()
    S = draw_ratings(true, T3, seed=3)
    files = []
    for r, n in enumerate(['lenient', 'harsh', 'noisy']):
        pd.DataFrame({'id': ds['id'], 'score': S[:, r].astype(int)}).to_parquet(tmp_path / f'{n}.parquet')
        files.append(str(tmp_path / f'{n}.parquet'))
    cfg = {'run_dir': str(tmp_path / 'run'), 'data': {'source': str(asset), 'limit': 300}, 'rate': {'scores': files},
           'embed': {'batch_size': 128}, 'select': {'method': 'ds2', 'budget': 30, 'compare': ['random']}}
    with pytest.raises(ValueError, match='rate.scores: not found'):
        validate_config({**cfg, 'rate': {'scores': files + [str(tmp_path / 'nope.parquet')]}})
    Pipeline(cfg, progress=False).run()
    msg = Manifest(tmp_path / 'run').stages['curate']['summary']
    assert '300 samples curated jointly from 3 raters' in msg, msg
    rep = CurationReport.load(tmp_path / 'run' / 'curation')
    assert rep.params['kind'] == 'multi_rater' and rep.params['raters'] == ['lenient', 'harsh', 'noisy']
    picked = json.loads((tmp_path / 'run' / 'selection' / 'subset.manifest.json').read_text())['ids']
    f = rep.frame.set_index('id')
    assert sorted(f.loc[picked, 'curated_score'], reverse=True) == sorted(f['curated_score'], reverse=True)[:30]
    html = (tmp_path / 'run' / 'report' / 'report.html').read_text()
    assert 'Curation (joint, several raters)' in html             # the joint section draws one matrix per rater...
    assert '<h2>Transition matrices</h2>' not in html              # ...so the report does not draw them a second time
    from llm_curate.report import _matrices
    mats = _matrices(tmp_path / 'run')                  # one matrix per rater of the joint report
    assert {'curation: lenient', 'curation: harsh', 'curation: noisy'} <= set(mats) and mats['curation: harsh'].shape == (6, 6)
    cfg_single = {**cfg, 'run_dir': str(tmp_path / 'run2'), 'curate': {'joint': False}}
    with pytest.raises(ValueError, match='curate.joint is false'):
        Pipeline(cfg_single, progress=False).run()


def test_selection_on_a_joint_report_without_embeddings(caplog):
    "Curated from ratings alone, the report has no long-tail score: ds2 takes it from X when given, else orders ties at random."
    pool = synthetic_pool(1500, spread=1.5, seed=2)
    rep = curate_raters(draw_ratings(pool.true, T3, seed=1), ids=[s['id'] for s in pool.samples])
    assert rep.frame['longtail'].isna().all()
    with caplog.at_level(logging.WARNING, 'llm_curate.select'):
        a = select(pool.samples, 'ds2', 100, report=rep, seed=0)
    assert 'no long-tail score' in caplog.text
    b = select(pool.samples, 'ds2', 100, report=rep, X=pool.X, seed=0)
    top = np.sort(rep.frame['curated_score'].to_numpy())[::-1][:100]
    for sel in (a, b):
        np.testing.assert_array_equal(np.sort(rep.frame.set_index('id').loc[list(sel.ids), 'curated_score'].to_numpy())[::-1], top)
    assert 'long-tail nan' not in ' '.join(b.reasons)
