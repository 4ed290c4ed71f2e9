"k-NN graph: faiss methods and the cost model, exact-duplicate semantics, float16 / memory maps, the realistic generator (Ray shards: test_ray.py)."
import numpy as np
import pytest

from llm_curate.knn import (knn_graph, dedupe_rows, check_embeddings, neighbour_stats, realistic_embeddings, bundled_geometry,
                            fit_geometry, _recall, _cell_join, _refine, _reverse, _coverage, _shared,
                            _query_cells, _kmeans_cells)
from llm_curate.curate import curate_scores


def clustered(n, d, n_clusters, spread, seed=0):
    r = np.random.default_rng(seed)
    C = r.normal(size=(n_clusters, d)).astype(np.float32)
    return C[r.integers(0, n_clusters, n)] + spread * r.normal(size=(n, d)).astype(np.float32)


@pytest.fixture(scope='module')
def pool():
    X = clustered(12000, 48, 200, 1.1, seed=3)
    Xd = np.concatenate([X, X[:300], X[:100]])          # rows 0..99 three times, 100..299 twice
    return Xd, knn_graph(Xd, k=10, exact=True)


@pytest.mark.parametrize('method', ['cell-join', 'pca-flat', 'pca-ivf', 'pca-hnsw', 'hnsw'])
def test_methods_keep_exact_semantics(pool, method):
    Xd, ge = pool
    g = knn_graph(Xd, k=10, method=method, n_eval=300)
    grp, _ = dedupe_rows(check_embeddings(Xd))
    assert g.method == method and g.n_unique == 12000
    assert not (grp[g.indices] == grp[:, None]).any()                 # never itself nor an exact duplicate
    srt = np.sort(g.indices, 1)
    assert (srt[:, 1:] != srt[:, :-1]).all()                          # no neighbour twice (the cell join finds a pair in several cells)
    np.testing.assert_array_equal(g.indices[0], g.indices[12000])     # duplicates share their neighbours
    U = check_embeddings(Xd)
    np.testing.assert_allclose(g.distances, 1 - np.einsum('nd,nkd->nk', U, U[g.indices]), atol=1e-5)  # re-ranked exactly
    assert (np.diff(g.distances, axis=1) >= -1e-6).all()
    true = _recall(g.indices, ge.indices)
    assert true >= 0.94 and abs(g.recall - true) < 0.03              # the stored recall is what a full comparison gives
    keys = {'cell-join': ('cells', 'probes'), 'hnsw': ('candidates', 'efSearch')}.get(method, ('candidates', 'pca_dim'))
    for key in ('tuned_recall', 'exact_est_s') + keys: assert key in g.params


def test_cell_join_plan_is_the_cheapest_reaching_the_target(pool):
    "The cost model plans the cell join first: the chosen (cells, probes) is the cheapest tried plan whose recall reaches the aim."
    Xd, ge = pool
    g = knn_graph(Xd, k=10, exact=False, n_eval=300)
    plan = g.params['join_plan']
    assert g.method == 'cell-join' and len(plan) >= 2 and 'cost_model_s' not in g.params   # the join sufficed: no index was built
    ok = [r for r in plan if r['ok']]
    best = min(ok, key=lambda r: r['cost_s'])
    assert (g.params['cells'], g.params['probes']) == (best['cells'], best['probes'])
    assert all(r['probes'] == 1 or not r['ok'] or r['recall'] >= (0.95 if not r['refine_rounds'] else 0.92) for r in plan)   # refined: within 0.03
    assert abs(g.params['tuned_recall'] - _recall(g.indices, ge.indices)) < 0.03   # the plan's recall is what the whole graph gets
    g1 = knn_graph(Xd, k=10, method='cell-join', target_recall=0.5, n_eval=300)      # a low target: fewer cells shared
    assert g1.params['probes'] <= g.params['probes'] and _recall(g1.indices, ge.indices) >= 0.5


def test_cost_model_records_its_choice(pool):
    Xd, ge = pool
    g = knn_graph(Xd, k=10, exact=False, n_eval=300, pilot=4000, join=False)
    assert set(g.params['cost_model_s']) == {'flat', 'ivf', 'hnsw', 'full-hnsw'} and g.method in ('pca-flat', 'pca-ivf', 'pca-hnsw', 'hnsw')
    kind = 'full-hnsw' if g.method == 'hnsw' else g.method[4:]
    assert g.params['cost_model_s'][kind] == min(g.params['cost_model_s'].values())
    g2 = knn_graph(Xd, k=10, exact=None, exact_max_flops=0, n_eval=300, pilot=4000)  # the cost model may pick exact
    assert g2.method == 'exact' or g2.recall >= 0.94
    if g2.method != 'cell-join': assert 2 * min(r['cost_s'] for r in g2.params['join_plan'] if r['ok']) >= g2.params['exact_est_s']
    assert knn_graph(Xd[:1500], k=5).method == 'exact'                 # small pools: exact, nothing measured


def test_bad_parameters():
    X = clustered(100, 8, 5, 1.0)
    with pytest.raises(ValueError, match="'method' parameter of knn_graph must be one of"): knn_graph(X, method='ivf')
    with pytest.raises(ValueError, match="'target_recall' parameter"): knn_graph(X, target_recall=0)
    import faiss
    if not (hasattr(faiss, 'StandardGpuResources') and faiss.get_num_gpus() > 0):
        with pytest.raises(ValueError, match='gpu=True but faiss has no GPU'): knn_graph(X, gpu=True)


def _gpu():
    import faiss
    return hasattr(faiss, 'StandardGpuResources') and faiss.get_num_gpus() > 0


@pytest.mark.gpu
@pytest.mark.skipif(not _gpu(), reason='needs a GPU and the faiss GPU build')
def test_exact_gpu_matches_cpu(pool):
    Xd, ge = pool
    g = knn_graph(Xd, k=10, gpu=True)
    assert g.method == 'exact-gpu' and _recall(g.indices, ge.indices) >= 0.999


def test_float16_memmap(tmp_path, pool):
    Xd, ge = pool
    np.save(tmp_path / 'x.npy', check_embeddings(Xd).astype(np.float16))
    Xm = np.load(tmp_path / 'x.npy', mmap_mode='r')
    assert check_embeddings(Xm) is Xm
    g = knn_graph(Xm, k=10, exact=True)
    assert g.params['dtype'] == 'float16' and g.n_unique == 12000
    assert _recall(g.indices, ge.indices) >= 0.97
    ga = knn_graph(Xm, k=10, method='pca-ivf', n_eval=300)
    assert _recall(ga.indices, ge.indices) >= 0.93
    gj = knn_graph(Xm, k=10, method='cell-join', n_eval=300)
    assert gj.method == 'cell-join' and _recall(gj.indices, ge.indices) >= 0.93


def test_report_records_the_knn_search(pool):
    Xd, _ = pool
    r = np.random.default_rng(0).integers(0, 4, len(Xd))
    rep = curate_scores(Xd, r, n_scores=4, steps=50, knn_kw={'method': 'pca-ivf', 'n_eval': 300})
    kn = rep.params['knn']
    assert kn['method'] == 'pca-ivf' and 0.9 <= kn['recall'] <= 1 and {'pca_dim', 'candidates', 'nprobe', 'nlist'} <= set(kn)


# ---------- the realistic generator ----------
def _cum(s):
    s = np.asarray(s); return np.cumsum(s) / s.sum()


def test_generator_matches_real_geometry():
    "Spectrum, neighbour distances and clusterability of nested samples of generated rows vs those of the real MiniLM ones (bundled fit), tolerances stated; the pool densifies as it grows as the real one does."
    geo = bundled_geometry()
    X = realistic_embeddings(geo['fit_n'], seed=7)
    order = np.random.default_rng(0).permutation(len(X))
    st = {n: neighbour_stats(X[np.sort(order[:n])], k=geo['k']) for n in geo['fit_sizes']}
    top = st[geo['fit_n']]
    assert np.abs(_cum(top['spectrum']) - _cum(geo['spectrum'])).max() <= 0.08          # cumulative variance within 8 points
    assert abs(top['dims_for_90pct'] - geo['dims_for_90pct']) <= 0.15 * geo['dims_for_90pct']
    for n in geo['fit_sizes']:
        r = geo['fit_real_by_n'][str(n)]
        for f in ('d1', f"d{geo['k']}"):                                               # NN distance quantiles within 0.1
            assert np.abs(np.subtract(st[n][f], r[f])).max() <= 0.1, (n, f, st[n][f], r[f])
        for f, tol in (('ivf', 0.2), ('join', 0.2)):                                  # clusterability, cell sharing
            assert np.abs(np.subtract(st[n][f], r[f])).max() <= tol, (n, f, st[n][f], r[f])
    dens = lambda a, b: a['d1'][3] / b['d1'][3]
    real_small, real_full = (geo['fit_real_by_n'][str(n)] for n in (geo['fit_sizes'][0], geo['fit_n']))
    assert 2 <= dens(st[geo['fit_sizes'][0]], top) <= 2 * dens(real_small, real_full)
    # the easy case (tight clusters) fails, and so do near copies without families: the test can tell
    E = check_embeddings(clustered(geo['fit_n'], geo['dim'], geo['fit_n'] // 20, 0.7))
    assert np.abs(np.subtract(neighbour_stats(E, k=geo['k'])['d1'], real_full['d1'])).max() > 0.1
    old = realistic_embeddings(geo['fit_n'], geometry={**geo, 'params': {**geo['params'], 'near_dup': 0.16, 'family_size': 1}}, seed=7)
    so = [neighbour_stats(old[np.sort(order[:n])], k=geo['k'], ivf_probes=(), join_spills=()) for n in (geo['fit_sizes'][0], geo['fit_n'])]
    assert dens(*so) < 2


def test_generator_shapes_and_dtypes():
    X, cl = realistic_embeddings(5000, d=1024, seed=1, dtype=np.float16, return_clusters=True)
    assert X.shape == (5000, 1024) and X.dtype == np.float16 and cl.shape == (5000,)
    np.testing.assert_allclose(np.linalg.norm(X.astype(np.float32), axis=1), 1, atol=2e-3)
    np.testing.assert_array_equal(realistic_embeddings(300, seed=2), realistic_embeddings(300, seed=2))


def test_cell_join_forced_on_a_small_pool():
    "method='cell-join' on a pool too small for the cell-size grid still plans (fewer, larger cells) instead of failing."
    X = clustered(400, 16, 20, 1.0, seed=5)
    g = knn_graph(X, k=10, method='cell-join', n_eval=50)
    ge = knn_graph(X, k=10, exact=True)
    assert g.method == 'cell-join' and g.params['cells'] >= 2 and _recall(g.indices, ge.indices) >= 0.9


def test_cell_join_with_every_cell_is_exact():
    "A row in every cell meets every pair in every cell: the merge (each row's lists, the row itself and pairs met in several cells dropped) must give exact search's answer."
    X = check_embeddings(clustered(600, 16, 12, 1.0, seed=4))
    cent = check_embeddings(clustered(6, 16, 6, 1.0, seed=9))
    S, I = _cell_join(X, cent, len(cent), 10)
    ge = knn_graph(X, k=10, exact=True)
    np.testing.assert_array_equal(I, ge.indices)
    np.testing.assert_allclose(1 - S, ge.distances, atol=1e-5)
    S2, I2 = _cell_join(X, cent, 2, 10)                 # fewer cells a row: still no row itself, no id twice
    assert not (I2 == np.arange(len(X))[:, None]).any() and all(len(set(r)) == 10 for r in I2.tolist())
    S3, I3 = _cell_join(X, cent, len(cent), 10, spill=len(cent))   # the spill form: every row in every cell, one product a cell
    np.testing.assert_array_equal(I3, ge.indices)
    S4, I4 = _cell_join(X, cent, 2, 10, spill=2)
    assert not (I4 == np.arange(len(X))[:, None]).any() and all(len(set(r)) == 10 for r in I4.tolist())


def test_refined_join_reaches_the_target(pool, monkeypatch):
    "A plan that joins short of the aim and refines (made the cheapest here by pricing refinement at zero and allowing it far below the aim): the rounds run until the tuning recall reaches the aim, and the graph keeps exact semantics."
    import functools
    import llm_curate.knn as K
    Xd, ge = pool
    monkeypatch.setattr(K, '_refine_cost', lambda *a, **kw: 0.0)
    monkeypatch.setattr(K, '_plan_join', functools.partial(K._plan_join, refine_gap=0.2, refine_rounds=3))
    g = knn_graph(Xd, k=10, method='cell-join', n_eval=300)
    chosen = [r for r in g.params['join_plan'] if (r['cells'], r['probes']) == (g.params['cells'], g.params['probes'])][0]
    assert chosen['refine_rounds'] == 3 and chosen['recall'] < 0.95 and g.params['refine_rounds'] >= 1
    assert g.params['tuned_recall'] >= 0.95 and _recall(g.indices, ge.indices) >= 0.94
    srt = np.sort(g.indices, 1)
    assert (srt[:, 1:] != srt[:, :-1]).all()
    U = check_embeddings(Xd)
    np.testing.assert_allclose(g.distances, 1 - np.einsum('nd,nkd->nk', U, U[g.indices]), atol=1e-5)


@pytest.mark.parametrize('form', ['probes', 'spill'])
def test_cell_join_recall_is_known_before_it_runs(form):
    "The share of true pairs the rule meets (`_coverage` for probes, `_shared` for the spill), computed from cell assignments alone, is the recall the join then gets, query by query."
    X = check_embeddings(clustered(4000, 24, 80, 1.3, seed=8))
    rng = np.random.default_rng(2)
    cent = _kmeans_cells(X, 40, rng)
    ge = knn_graph(X, k=10, exact=True)
    q = rng.choice(len(X), 300, replace=False)
    Aq, At = _query_cells(X, q, ge.indices[q], cent, 4)
    for p in (1, 2, 4):
        S, I = _cell_join(X, cent, p, 10, spill=1 if form == 'probes' else p)
        got = _recall(I[q], ge.indices[q])
        want = (_coverage if form == 'probes' else _shared)(Aq, At, p)
        assert abs(got - want) < 2e-3, (p, got, want)      # (ties at the k-th within rounding only)
        assert want < 0.999 or p == 4


def test_reverse_lists_the_nearest_rows_listing_each_row():
    rng = np.random.default_rng(0)
    I = np.stack([rng.choice(np.delete(np.arange(50), i), 4, replace=False) for i in range(50)])
    S = -np.sort(rng.random((50, 4)), 1)
    R = _reverse(S, I, 3)
    for v in range(50):
        listers = sorted(((S[i, j], i) for i in range(50) for j in range(4) if I[i, j] == v), reverse=True)
        expect = [i for _, i in listers[:3]]
        assert R[v].tolist() == expect + [-1] * (3 - len(expect)), v


def test_refine_repairs_a_damaged_graph_and_never_worsens_a_list():
    "Half the neighbours of every row replaced by random rows: one round of the local join finds most back (neighbours of neighbours), no row's list gets worse, and the lists stay valid."
    X = check_embeddings(clustered(3000, 32, 60, 0.8, seed=6))
    ge = knn_graph(X, k=10, exact=True)
    rng = np.random.default_rng(1)
    I = ge.indices.copy()
    for i in range(len(X)):                                           # 5 distinct random rows, neither the row nor its first 5
        I[i, 5:] = rng.choice(np.setdiff1d(np.arange(len(X)), np.r_[i, I[i, :5]]), 5, replace=False)
    S = np.einsum('nd,nkd->nk', X, X[I]); o = np.argsort(-S, 1); S, I = np.take_along_axis(S, o, 1), np.take_along_axis(I, o, 1)
    before = _recall(I, ge.indices)
    S2, I2, changed = _refine(X, S, I)
    after = _recall(I2, ge.indices)
    assert before < 0.55 and after > 0.9 and len(changed) > 0.5 * len(X)
    assert (S2 >= S - 1e-6).all()                                     # the k best never get worse, rank by rank
    np.testing.assert_allclose(S2, np.einsum('nd,nkd->nk', X, X[I2]), atol=1e-5)
    assert not (I2 == np.arange(len(X))[:, None]).any() and all(len(set(r)) == 10 for r in I2.tolist())
    S3, I3, ch3 = _refine(X, (1 - ge.distances).astype(np.float32), ge.indices)   # the exact graph: nothing to improve
    assert len(ch3) <= 0.01 * len(X) and _recall(I3, ge.indices) > 0.999         # (ties at the k-th within rounding only)
    Sa, Ia, _ = _refine(X, S2, I2)                                    # a second round over every neighbourhood ...
    Sb, Ib, _ = _refine(X, S2, I2, changed=changed)                   # ... or only over those the first round changed: the same
    assert (Ia != I2).any() and (Ia == Ib).mean() > 0.999


def test_bundled_fit_at_1024_is_closer_to_real_text():
    "The parameters fitted at 1024 dimensions (params_by_dim) match the real statistics of the smallest nested sample better than the 384-dim parameters on the stretched spectrum, as the fit found on the same rows."
    from llm_curate.knn import _nested_stats, _stats_loss
    geo = bundled_geometry()
    n = geo['fit_sizes'][0]
    real = geo['fit_real_by_n'][str(n)]
    loss = lambda g: _stats_loss(_nested_stats(realistic_embeddings(geo['fit_n'], d=1024, geometry=g, seed=1), [n], geo['k'], 0)[n], real, geo['k'])
    assert '1024' in geo['params_by_dim']
    fitted, stretched = loss(geo), loss({**geo, 'params_by_dim': {}})
    assert fitted < 0.75 * stretched, (fitted, stretched)


def test_lift_keeps_every_inner_product():
    "lift=True rotates the rows of the fitted dimension into d: the same Gram matrix (so the same neighbours), unit rows, its own dimension; d below the fitted one is refused."
    X0, c0 = realistic_embeddings(1500, seed=3, return_clusters=True)
    X, c = realistic_embeddings(1500, d=1024, seed=3, lift=True, return_clusters=True)
    assert X.shape == (1500, 1024) and X0.shape[1] == bundled_geometry()['dim']
    np.testing.assert_array_equal(c, c0)
    np.testing.assert_allclose(X @ X[:200].T, X0 @ X0[:200].T, atol=2e-6)
    g, g0 = knn_graph(X, k=5, exact=True), knn_graph(X0, k=5, exact=True)
    np.testing.assert_allclose(g.distances, g0.distances, atol=2e-6)     # the same neighbours, up to ties at float32 rounding
    assert _recall(g.indices, g0.indices) > 0.99
    with pytest.raises(ValueError, match='lift=True'): realistic_embeddings(10, d=100, lift=True)


def test_fit_geometry_recovers_how_clusters_grow():
    "Rows drawn with clusters growing as N^0.4 (denser neighbourhoods in a larger pool): a fit started from clusters of a fixed size finds the growth from the two pool sizes, and gets closer."
    from llm_curate.knn import _stats_loss
    geo = bundled_geometry()
    truth = {**geo['params'], 'cluster_growth': 0.4, 'n_ref': 6000, 'per_cluster': 16}
    X = realistic_embeddings(6000, geometry={**geo, 'params': truth, 'params_by_dim': {}}, seed=3)
    start = {**truth, 'cluster_growth': 1.0}
    grid = {'cluster_growth': [1.0, 0.85, 0.7, 0.55, 0.4, 0.25], 'per_cluster': [16, 8, 32]}   # ties keep the start: a growth found is read off the data
    fit = fit_geometry(X, sizes=(0.25, 1.0), rounds=1, init=start, dims=(64,), grid=grid, nested=False)   # a pool per size: the growth is fitted
    assert fit['fit_sizes'] == [1500, 6000] and set(fit['fit_real_by_n']) == {'1500', '6000'}
    assert fit['params']['cluster_growth'] <= 0.7, fit['params']                  # the growth is read off the trend in N
    real = {n: fit['fit_real_by_n'][str(n)] for n in fit['fit_sizes']}
    st0 = {n: neighbour_stats(realistic_embeddings(n, geometry={**fit, 'params': start, 'params_by_dim': {}}, seed=1)) for n in real}
    assert fit['fit']['loss'] < sum(_stats_loss(st0[n], real[n], 10) for n in real)
    assert set(fit['params_by_dim']) == {'64'} and realistic_embeddings(100, d=64, geometry=fit).shape == (100, 64)


def test_fit_geometry_reads_families_off_nested_samples():
    "Near copies in families (a templated prompt, its variants): a pool's nested samples get denser as they grow, because a sample keeps fewer of each family; a nested fit reads the family size and share off that trend."
    geo = bundled_geometry()
    truth = {**geo['params'], 'near_dup': 0.5, 'family_size': 5, 'dup_eps': 0.35, 'dup_sigma': 0.5, 'family_sigma': 0.5}
    X = realistic_embeddings(4000, geometry={**geo, 'params': truth, 'params_by_dim': {}}, seed=3)
    part = neighbour_stats(X[:1000], ivf_probes=(), join_spills=())['d1'][3]
    assert neighbour_stats(X, ivf_probes=(), join_spills=())['d1'][3] < 0.6 * part        # denser as the pool grows: the families fill in
    grid = {'near_dup': [0.16, 0.3, 0.5, 0.7], 'family_size': [1, 2, 5, 16]}   # the share first: from copies without families, more of them fit better
    fit = fit_geometry(X, sizes=(0.25, 1.0), rounds=1, init={**truth, 'near_dup': 0.16, 'family_size': 1}, grid=grid)
    assert fit['fit_options']['nested'] and 'cluster_growth' not in grid
    assert (fit['params']['family_size'], fit['params']['near_dup']) == (5, 0.5), fit['params']


def test_join_curve_grows_with_the_spill():
    "neighbour_stats' cell-sharing curve: recall grows with the spill, and reaches 1 when every row is in every cell."
    X = check_embeddings(clustered(3000, 16, 60, 1.0, seed=2))
    st = neighbour_stats(X, join_spills=(1, 2, 4), rows_per_cell=500, ivf_probes=())
    assert st['join_cells'] >= 2 and np.all(np.diff(st['join']) >= 0) and st['join'][0] < 1
    full = neighbour_stats(X, join_spills=(1, st['join_cells']), rows_per_cell=500, ivf_probes=())
    assert full['join'][-1] == 1.0
