"""llm_curate.report: results folder -> tables, plots, HTML; missing metrics; CLI; agreement statistics."""
import json, math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from llm_curate import report as R
from llm_curate.cli import main as cli_main

BENCH = ['mmlu', 'truthfulqa', 'gsm8k', 'bbh', 'tydiqa']


def _write(root: Path, model, bench, score, **kw):
    p = root / model / f'{bench}.json'
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps({'model': model, 'benchmark': bench, 'score': score, 'metric': 'acc', **kw}))
    return p


@pytest.fixture
def run(tmp_path):
    "A run folder: 3 methods × 2 seeds × 2 budgets, one metric missing (file absent) and one null."
    run = tmp_path / 'run'
    base = {'ds2': 0.60, 'random': 0.55, 'full': 0.57}
    for method, b in base.items():
        for budget in (5000, 10000):
            for seed in (0, 1):
                for i, bench in enumerate(BENCH):
                    if method == 'full' and bench == 'tydiqa': continue          # never evaluated
                    score = None if (method == 'random' and bench == 'gsm8k' and budget == 5000) else \
                        b + 0.01 * i + 0.02 * (budget == 10000) + 0.002 * seed
                    _write(run / 'eval', f'{method}_{budget}_s{seed}', bench, score, method=method, budget=budget, seed=seed)
    j = run / 'judge'; j.mkdir(parents=True)
    for ps, (w, t, l) in {'vicuna': (0.5, 0.3, 0.2), 'mt_bench': (0.4, 0.4, 0.2)}.items():
        (j / f'{ps}.json').write_text(json.dumps({'kind': 'pairwise_judge', 'prompt_set': ps, 'model_a': 'ds2', 'model_b': 'lima',
                                                   'n': 80, 'win': w, 'tie': t, 'lose': l, 'ci': {'win': [w - .1, w + .1]}}))
    pd.DataFrame({'id': ['a', 'b', 'c', 'a', 'b', 'c'], 'rater': ['g'] * 3 + ['m'] * 3,
                  'score': pd.array([1, None, 5, 2, 2, 3], dtype='Int64'),
                  'status': ['ok', 'unparsed', 'ok', 'ok', 'ok', 'ok']}).to_parquet(run / 'ratings.parquet')
    (run / 'curation' / 'gpt').mkdir(parents=True)
    np.save(run / 'curation' / 'gpt' / 'transition_matrix.npy', np.eye(6) * 0.7 + 0.05)
    (run / 'notes.json').write_text(json.dumps({'unrelated': True}))            # ignored
    return run


def test_collect_results_missing_metric_is_nan_not_zero(run):
    long = R.load_results(run / 'eval')
    assert len(long) == 3 * 2 * 2 * 5 - 4                      # full/tydiqa absent
    assert long.score.isna().sum() == 2                        # the two null random/gsm8k/5000 results
    t = R.collect_results(run / 'eval')
    assert t.index.names == ['method', 'budget']
    assert list(t.columns) == BENCH + ['average']
    full = t.loc[('full', 10000)]
    assert math.isnan(full['tydiqa']) and math.isnan(full['average'])        # never 0
    assert math.isnan(t.loc[('random', 5000), 'gsm8k']) and math.isnan(t.loc[('random', 5000), 'average'])
    ds2 = t.loc[('ds2', 10000)]
    assert ds2['mmlu'] == pytest.approx(62.1)                   # mean of seeds 62.0, 62.2
    assert ds2['average'] == pytest.approx(np.mean([62.1, 63.1, 64.1, 65.1, 66.1]))
    # the reference's mistake would have been an average of 4/5 of the sum
    assert full['mmlu'] > 0
    a = R.collect_results(run / 'eval', average='available')
    assert a.loc[('full', 10000), 'n_missing'] == 1
    assert a.loc[('full', 10000), 'average'] == pytest.approx(np.mean([59.1, 60.1, 61.1, 62.1]))
    s = R.collect_results(run / 'eval', stat='std')
    assert s.loc[('ds2', 10000), 'mmlu'] == pytest.approx(np.std([62.0, 62.2], ddof=1))


def test_exports_mark_missing(run):
    t = R.collect_results(run / 'eval')
    md = R.to_markdown(t)
    assert md.splitlines()[0] == '| method / budget | MMLU | TruthfulQA | GSM8K | BBH | TyDiQA | Average |'
    full_line = next(l for l in md.splitlines() if l.startswith('| full @ 10000'))
    assert full_line.endswith('| – | – |') and ' 0.0 ' not in full_line
    tex = R.to_latex(t)
    assert tex.count(r'\\') == 1 + len(t) and '-- & --' in tex and r'\toprule' in tex
    avail = R.to_markdown(R.collect_results(run / 'eval', average='available'), bold_best=False)
    assert '| full @ 10000 | 59.1 | 60.1 | 61.1 | 62.1 | – | 60.6* |' in avail


def test_write_report_and_cli(run, tmp_path, capsys):
    out = tmp_path / 'rep'
    assert cli_main(['report', str(run), '--out', str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out / 'report.html')
    names = sorted(p.name for p in out.iterdir())
    assert names == ['data_scale.png', 'judge.csv', 'report.html', 'results.csv', 'results.md', 'results.png', 'results.tex',
                     'score_distributions.png', 'transition_matrices.png', 'win_tie_lose.png']
    page = (out / 'report.html').read_text()
    assert page.count('src="data:image/png;base64,') == 5 and 'Not in this run' not in page
    assert '<td>–</td>' in page                                         # missing metric in the HTML table
    csv = pd.read_csv(out / 'results.csv')
    assert csv.loc[(csv.method == 'full') & (csv.budget == 10000), 'tydiqa'].isna().all()
    # deterministic images: a second report writes the same bytes
    res = R.write_report(run, out=tmp_path / 'rep2')
    for n in ('results.png', 'data_scale.png', 'win_tie_lose.png', 'transition_matrices.png', 'score_distributions.png'):
        assert (out / n).read_bytes() == res[n.removesuffix('.png')].read_bytes(), n
    # the default output folder is RUN_DIR/report and is not read back as input on a rerun
    R.write_report(run); r2 = R.write_report(run)
    assert r2['skipped'] == []


def test_report_of_partial_run(tmp_path):
    _write(tmp_path / 'r', 'm', 'mmlu', 0.5)
    res = R.write_report(tmp_path / 'r')
    assert len(res['skipped']) == 3
    page = res['report.html'].read_text()
    assert 'Not in this run' in page and 'no judge comparison' in page and page.count('<img') == 1


@pytest.mark.parametrize('content, msg', [
    ('{"model": "m", "benchmark": "mmlu", "score": 63.4}', 'fraction in [0, 1]'),
    ('{"model": "m", "benchmark": "mmlu"}', "no 'score' field"),
    ('{"benchmark": "mmlu", "score": 0.5}', "no 'model' field"),
    ('{"model": "m", "benchmark": "mmlu", "score": "high"}', 'must be a number or null'),
    ('{"model": "m", "benchmark": ', 'not valid JSON'),
])
def test_bad_result_files(tmp_path, content, msg):
    (tmp_path / 'x.json').write_text(content)
    with pytest.raises(ValueError) as e: R.load_results(tmp_path)
    assert msg in str(e.value) and 'x.json' in str(e.value)


def test_percent_scale_and_errors(tmp_path):
    _write(tmp_path, 'm', 'mmlu', 63.4, scale=100)
    assert R.load_results(tmp_path).score.iloc[0] == pytest.approx(63.4)
    with pytest.raises(FileNotFoundError, match='not found'): R.load_results(tmp_path / 'nope')
    with pytest.raises(ValueError, match='No benchmark results'): R.collect_results([])
    with pytest.raises(FileNotFoundError): R.write_report(tmp_path / 'nope')


# ---- agreement statistics against reference implementations and properties ----
ints = st.lists(st.integers(0, 5), min_size=2, max_size=60)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_kappa_properties(data):
    a = np.array(data.draw(ints))
    b = np.array(data.draw(st.lists(st.integers(0, 5), min_size=len(a), max_size=len(a))))
    for w in (None, 'linear', 'quadratic'):
        k = R.cohen_kappa(a, b, w, n_classes=6)
        if not math.isnan(k):
            assert -1 - 1e-9 <= k <= 1 + 1e-9
            assert k == pytest.approx(R.cohen_kappa(b, a, w, n_classes=6))           # symmetric
        if len(set(a)) > 1: assert R.cohen_kappa(a, a, w) == pytest.approx(1.0)
    assert R.confusion_matrix(a, b, 6).sum() == len(a)
    assert R.agreement(a, b) <= R.agreement(a, b, 1) <= 1


def test_against_sklearn_and_scipy():
    sk = pytest.importorskip('sklearn.metrics'); ss = pytest.importorskip('scipy.stats')
    rng = np.random.default_rng(1)
    a = rng.integers(0, 6, 400); b = np.clip(a + rng.integers(-2, 3, 400), 0, 5)
    for w in (None, 'linear', 'quadratic'):
        assert R.cohen_kappa(a, b, w) == pytest.approx(sk.cohen_kappa_score(a, b, weights=w))
    assert R.spearman(a, b) == pytest.approx(ss.spearmanr(a, b).statistic)
    assert np.array_equal(R.confusion_matrix(a, b), sk.confusion_matrix(a, b))


def test_agreement_table_skips_missing_pairs():
    f = pd.DataFrame({'x': [0, 1, 2, None], 'y': [0, 1, 1, 3], 'z': [None, 1, 2, 3]})
    t = R.agreement_table(f)
    assert t.n.tolist() == [3, 2, 3]
    assert t.exact.tolist() == pytest.approx([2 / 3, 1.0, 2 / 3])
    with pytest.raises(KeyError, match="no column 'w'"): R.agreement_table(f, ['x', 'w'])
