"""Score curation that does no harm (issue 12): a graded confidence, calibration, low clusterability on real text, gold labels."""
import json
from pathlib import Path
import numpy as np
import pandas as pd
import pytest

from llm_curate.curate import (ScoreCurator, curate_scores, make_noisy_scores, fit_noise_model, gold_transition, summary, add_cli,
                               empirical_T, ordinal_noise, LOW_CLUSTERABILITY)
from llm_curate.knn import knn_graph
from llm_curate.synthetic import synthetic_pool, rater_like_T, lenient_noise, noisy_ratings

FIXTURE = Path(__file__).parent / 'data' / 't0_families_minilm.npz'
TEMPLATES = Path(__file__).parent / 'data' / 't0_templates_minilm.npz'


@pytest.fixture(scope='module')
def weak():
    sp = synthetic_pool(8000, n_clusters=150, subtopics=30, T=rater_like_T(6, width=0.6), seed=0)
    return sp, ScoreCurator().fit(sp.X, sp.rated)


def _real(path, label):
    "Embeddings (float32), true labels and the k-NN graph of a real-text fixture."
    f = np.load(path)
    X, y = f['X'].astype(np.float32), f[label].astype(np.int64)
    return X, y, knn_graph(X, k=10)


@pytest.fixture(scope='module')
def t0():
    return _real(FIXTURE, 'family')


def test_threshold_is_a_monotone_knob(weak):
    sp, cur = weak
    ths = np.linspace(0, 1, 21)
    n = [int((np.where(cur.confidence_ >= t, cur.suggested_, sp.rated) != sp.rated).sum()) for t in ths]
    assert all(a >= b for a, b in zip(n, n[1:]))
    assert len(set(n)) >= 10                       # graded: not two values as with the rank rule on one pool
    assert n[0] == len(sp.rated) and n[-1] < n[10] / 5
    for t in (0.3, 0.5, 0.7):                      # the fitted threshold is the same rule
        c = ScoreCurator(confidence=t).fit(sp.X, sp.rated, graph=cur.graph_)
        assert int((c.curated_scores_ != sp.rated).sum()) == n[int(round(t * 20))]


def _bins(pred, hit, nbins=5, min_n=200):
    "(predicted, observed, n) of each probability bin with at least min_n samples."
    b = np.clip(np.digitize(pred, np.linspace(0, 1, nbins + 1)) - 1, 0, nbins - 1)
    return [(pred[b == i].mean(), hit[b == i].mean(), int((b == i).sum())) for i in range(nbins) if (b == i).sum() >= min_n]


def _calibrated(cur, rated, true, min_bins, tol, tol_cautious=None):
    "predicted - observed <= tol (the side that changes right ratings) and observed - predicted <= tol_cautious (default tol) in every bin of >= 200 samples."
    for pred, hit in ((cur.error_prob_, rated != true), (cur.confidence_, cur.suggested_ == true)):
        bins = _bins(pred, hit)
        assert len(bins) >= min_bins, bins
        assert all(-(tol if tol_cautious is None else tol_cautious) <= a - b <= tol for a, b, _ in bins), bins


def test_default_error_probability_and_confidence_are_calibrated():
    "Under the default settings (noise bound included): among samples whose probability is in a bin, that share is truly mis-rated."
    sp = synthetic_pool(20000, n_clusters=375, subtopics=30, T=rater_like_T(6, width=0.6), seed=0)   # the benchmark's weak set
    cur = ScoreCurator().fit(sp.X, sp.rated)
    _calibrated(cur, sp.rated, sp.true, min_bins=5, tol=0.1)      # measured: <= 0.05
    assert 0 < cur.error_prob_.min() and cur.error_prob_.max() < 1 and len(np.unique(cur.error_prob_)) > 1000


def test_default_is_calibrated_on_real_text(t0):
    """On the real-text fixture: over-confident by at most 0.06 (held to 0.1), under-confident in the mid-range bins by up to 0.15
    (the tempered neighbour evidence, and at 40% the posterior averaged over two noise levels that predict alike): held to 0.2."""
    X, y, g = t0
    for eta, nb in ((0.25, 2), (0.4, 3)):
        r = noisy_ratings(y, lenient_noise(8, eta))
        _calibrated(ScoreCurator(n_scores=8).fit(X, r, graph=g), r, y, min_bins=nb, tol=0.1, tol_cautious=0.2)


def test_weakly_clustered_generated_set_is_helped(weak):
    sp, cur = weak
    wrong = sp.rated != sp.true
    f1 = 2 * (cur.flagged_ & wrong).sum() / (cur.flagged_.sum() + wrong.sum())
    assert (cur.curated_scores_ == sp.true).mean() >= (sp.rated == sp.true).mean() + 0.12
    assert f1 >= 0.6
    assert abs(cur.clusterability_ - (sp.true == sp.true[cur.graph_.indices[:, 0]]).mean()) < 0.1


def test_no_harm_on_real_text(t0):
    X, y, g = t0
    true_share = (y == y[g.indices[:, 0]]).mean()
    for eta in (0.0, 0.25, 0.4):
        r = noisy_ratings(y, lenient_noise(8, eta))
        rep = curate_scores(X, r, n_scores=8, graph=g)
        cs = rep.frame.curated_score.to_numpy()
        if eta == 0: assert (cs != r).mean() <= 0.02
        else: assert (cs == y).mean() >= (r == y).mean()
        assert abs(rep.params['clusterability'] - true_share) < 0.15


def test_low_clusterability_is_said_and_changes_little():
    # many small overlapping clusters: the nearest neighbour shares the true score only ~40% of the time
    X, y, rated = make_noisy_scores(4000, n_clusters=1000, spread=1.2, seed=12)
    g = knn_graph(X, k=10)
    assert (y == y[g.indices[:, 0]]).mean() < 0.45
    clean = curate_scores(X, y, graph=g)
    assert clean.params['clusterability'] < LOW_CLUSTERABILITY
    assert clean.params['changed'] <= 0.02 * len(y)
    assert any('share a sample' in w for w in clean.params['warnings'])
    assert 'warning: Neighbours share' in summary(clean)
    noisy = curate_scores(X, rated, graph=g)
    assert (noisy.frame.curated_score == y).mean() >= (rated == y).mean() - 0.005
    # without the bound by the closest pairs (and the model checks), the same curator lowers the accuracy (0.696 -> 0.647 with the
    # converged HOC fit of issue 13; 0.59 with the old constant-step fit)
    loose = curate_scores(X, rated, graph=g, near_pairs=None, noise_z=None, pairs_z=None)
    assert (loose.frame.curated_score == y).mean() < (rated == y).mean() - 0.03


def test_noise_model_recovers_share_probability():
    T, p = ordinal_noise(6, 0.65), np.array([.1, .15, .25, .25, .15, .1])
    m1 = p @ T
    M2, M3 = np.einsum('k,ki,kj->ij', p, T, T), np.einsum('k,ki,kj,kl->ijl', p, T, T, T)
    for rho in (0.5, 0.9):
        c = (m1, rho * M2 + (1 - rho) * np.outer(m1, m1), rho * M3 + (1 - rho) * np.einsum('i,j,l->ijl', m1, m1, m1))
        Th, ph, rh, _ = fit_noise_model(c)
        assert abs(rh - rho) < 0.03 and np.abs(Th - T).max() < 0.03 and np.abs(ph - p).max() < 0.03


def test_reference_procedure_is_kept_and_seeded():
    X, y, rated = make_noisy_scores(3000, n_clusters=150, seed=13)
    kw = dict(procedure='reference', sample_size=1500, hoc_rounds=4, detect_rounds=6, random_state=3)
    a, b = curate_scores(X, rated, **kw), curate_scores(X, rated, **kw)
    pd.testing.assert_frame_equal(a.frame, b.frame)
    c = curate_scores(X, rated, **{**kw, 'random_state': 4})
    assert not a.frame.error_prob.equals(c.frame.error_prob)            # the seed drives the subsets
    assert (a.frame.flagged <= (a.frame.error_prob >= 0.5)).all()   # never-sampled samples sit at 0.5 and are not flagged
    wrong = rated != y
    assert 2 * (a.frame.flagged & wrong).sum() / (a.frame.flagged.sum() + wrong.sum()) >= 0.85
    d = curate_scores(X, rated, random_state=3)
    pd.testing.assert_frame_equal(d.frame, curate_scores(X, rated, random_state=3).frame)


def test_gold_report_and_fit():
    sp = synthetic_pool(6000, n_clusters=120, subtopics=30, T=rater_like_T(6, width=0.6), seed=1)
    ids = [s['id'] for s in sp.samples]
    gi = np.arange(0, 6000, 20)
    gold = {ids[i]: int(sp.true[i]) for i in gi}
    rep = curate_scores(sp.X, sp.rated, ids=ids, gold=gold)
    g = rep.params['gold']
    assert g['n'] == len(gi) and g['not_curated'] == 0
    assert g['accuracy_before'] == pytest.approx((sp.rated[gi] == sp.true[gi]).mean())
    assert g['accuracy_after'] == pytest.approx((rep.frame.curated_score.to_numpy()[gi] == sp.true[gi]).mean())
    assert g['changed_right'] - g['changed_wrong'] == round((g['accuracy_after'] - g['accuracy_before']) * g['n'])
    Tg = np.array([[np.nan if v is None else v for v in r] for r in g['transition_gold']])
    np.testing.assert_allclose(Tg, empirical_T(sp.true[gi], sp.rated[gi]), atol=1e-4)
    fit = curate_scores(sp.X, sp.rated, ids=ids, gold=gold, fit_gold=True)
    Te = empirical_T(sp.true, sp.rated)
    assert np.abs(fit.transition_matrix - Te).mean() <= np.abs(rep.transition_matrix - Te).mean() + 0.01
    assert fit.params['gold']['fit_gold'] and fit.params['transition'] is not None
    with pytest.raises(ValueError, match='gold levels must be integers in \\[0, 6\\)'):
        curate_scores(sp.X, sp.rated, ids=ids, gold={ids[0]: 6})
    with pytest.raises(ValueError, match='none of the 1 gold ids'):
        curate_scores(sp.X, sp.rated, ids=ids, gold={'nope': 1})


def test_gold_transition_shrinks_toward_prior():
    r, g = np.array([0, 0, 1, 1]), np.array([0, 0, 1, 0])
    T = gold_transition(r, g, 2, strength=0)
    np.testing.assert_allclose(T, [[2 / 3, 1 / 3], [0, 1]])
    np.testing.assert_allclose(gold_transition(r, g, 2, strength=1e9), np.eye(2), atol=1e-6)


def test_cli_gold_and_procedure_options(tmp_path, capsys):
    import argparse
    from llm_curate.embed import save_embeddings
    X, y, rated = make_noisy_scores(1500, n_clusters=80, seed=14)
    ids = [f's{i}' for i in range(1500)]
    save_embeddings(tmp_path / 'emb', X, ids, 'generated')
    pd.DataFrame({'id': ids, 'rater': 'r', 'status': 'ok', 'score': rated}).to_parquet(tmp_path / 'ratings.parquet')
    pd.DataFrame({'id': ids[::10], 'score': y[::10]}).to_csv(tmp_path / 'gold.csv', index=False)
    parser = argparse.ArgumentParser(prog='llm_curate'); add_cli(parser.add_subparsers())
    args = parser.parse_args(['curate', '--scores', str(tmp_path / 'ratings.parquet'), '--embeddings', str(tmp_path / 'emb'),
                              '--out', str(tmp_path / 'rep'), '--gold', str(tmp_path / 'gold.csv'), '--procedure', 'reference',
                              '--hoc-rounds', '3', '--sample-size', '1000', '--detect-rounds', '5'])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert 'clusterability' in out and 'gold (150 samples): accuracy' in out
    meta = json.loads((tmp_path / 'rep' / 'report.json').read_text())
    p = meta['params']
    assert (p['procedure'], p['hoc_rounds'], p['sample_size'], p['detect_rounds']) == ('reference', 3, 1000, 5)
    assert p['gold']['n'] == 150 and 0 <= p['clusterability'] <= 1
    # the model checks: on by default (a line of the summary), off with -1
    args = parser.parse_args(['curate', '--scores', str(tmp_path / 'ratings.parquet'), '--embeddings', str(tmp_path / 'emb'), '--out', str(tmp_path / 'rep2')])
    assert args.func(args) == 0
    assert 'model check: the closest pairs of samples are rated alike' in capsys.readouterr().out
    p2 = json.loads((tmp_path / 'rep2' / 'report.json').read_text())['params']
    assert (p2['noise_z'], p2['pairs_z']) == (1.0, 2.5) and p2['model_check']['contradicted'] is False
    args = parser.parse_args(['curate', '--scores', str(tmp_path / 'ratings.parquet'), '--embeddings', str(tmp_path / 'emb'), '--out', str(tmp_path / 'rep3'),
                              '--noise-z', '-1', '--pairs-z', '-1'])
    assert args.func(args) == 0
    assert 'model check' not in capsys.readouterr().out
    p3 = json.loads((tmp_path / 'rep3' / 'report.json').read_text())['params']
    assert (p3['noise_z'], p3['pairs_z'], p3['model_check']) == (None, None, {})


@pytest.fixture(scope='module')
def templates():
    return _real(TEMPLATES, 'level')


def test_no_harm_when_the_closest_pairs_disagree(templates):
    "Real text whose truth the nearest neighbours mostly do not share (a level per T0 template, the same passage under several templates)."
    X, y, g = templates
    o = np.argsort(g.distances[:, 0])
    assert (y[o[:400]] == y[g.indices[o[:400], 0]]).mean() < 0.3 < (y == y[g.indices[:, 0]]).mean()   # the closest pairs share the truth least
    reps = {}
    for eta in (0.0, 0.25, 0.4):
        r = noisy_ratings(y, lenient_noise(6, eta))
        reps[eta] = rep = curate_scores(X, r, graph=g)
        cs = rep.frame.curated_score.to_numpy()
        if eta == 0: assert (cs != r).mean() <= 0.02
        assert (cs == y).mean() >= (r == y).mean(), eta
    for rep in reps.values():   # the model check is what says so, in the report and the summary
        mc = rep.params['model_check']
        assert mc['contradicted'] and mc['closest_agreement'] < mc['farther_agreement']
        assert 'warning: The closest pairs of samples are rated alike less often' in summary(rep)
    # without the check the same curator rewrites correct ratings (measured: 15% of a clean labelling, accuracy 1.0 -> 0.85)
    loose = curate_scores(X, y, graph=g, pairs_z=None, noise_z=None)
    assert (loose.frame.curated_score != y).mean() > 0.1


def test_closest_pairs_check_is_quiet_where_neighbours_share_the_truth(t0):
    "On the T0 families fixture (the nearest neighbour shares the family 97% of the time) curation keeps changing scores, and helps."
    X, y, g = t0
    for eta in (0.25, 0.4):
        r = noisy_ratings(y, lenient_noise(8, eta))
        rep = curate_scores(X, r, n_scores=8, graph=g)
        assert not rep.params['model_check']['contradicted']
        assert (rep.frame.curated_score == y).mean() >= (r == y).mean() + 0.15


def test_predictive_noise_scale_lowers_only_the_noise_the_data_cannot_support():
    "Clean ratings on weakly clustered data: HOC reads neighbours that differ in truth as noise; the predictive check takes most of it back."
    X, y, rated = make_noisy_scores(4000, n_clusters=1000, spread=1.2, seed=12)
    g = knn_graph(X, k=10)
    cur = ScoreCurator(pairs_z=None).fit(X, y, graph=g)
    assert cur.model_check_['noise_scale'] <= 0.6
    n_hoc = 1 - (np.diag(cur.hoc_transition_matrix_) * cur.prior_).sum()
    assert 1 - (np.diag(cur.transition_matrix_) * cur.prior_).sum() < n_hoc - 0.05
    # where the noise is real and neighbours share the truth (generated, 30% ordinal noise), it is kept as fitted
    Xw, yw, rw = make_noisy_scores(4000, n_clusters=200, seed=3)
    cw = ScoreCurator().fit(Xw, rw)
    assert cw.model_check_['noise_scale'] == 1.0 and not cw.model_check_['contradicted']
