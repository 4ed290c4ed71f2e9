"""`llm_curate run`: config validation, the plan, a real end-to-end run, skipping and resuming."""
import json, subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

import llm_curate
from llm_curate.pipeline import Pipeline, Manifest, demo_pool

ASSET = Path(llm_curate.__file__).parent / 'assets' / 't0_pool_5k.jsonl.gz'


def cli(*args, **kw):
    return subprocess.run(['llm_curate', *map(str, args)], capture_output=True, text=True, timeout=600, **kw)


@pytest.fixture(scope='module')
def scores_file(tmp_path_factory):
    "Ratings of the bundled pool from an 'external' rater: score = template quality + noise (a real ids table)."
    from llm_curate.data import load_samples
    d = tmp_path_factory.mktemp('scores')
    ds = load_samples(ASSET, progress=False, cache_dir=d / 'cache')
    rng = np.random.default_rng(0)
    tpl = pd.Series(ds['template'])
    base = tpl.map({t: rng.integers(1, 5) for t in tpl.unique()}).to_numpy()
    noisy = np.where(rng.random(len(base)) < 0.2, rng.integers(0, 6, len(base)), base)
    p = d / 'ratings.parquet'
    pd.DataFrame({'id': ds['id'], 'score': noisy, 'rater': 'external'}).to_parquet(p)
    return p


def config(tmp_path, scores_file, **over):
    cfg = {'run_dir': str(tmp_path / 'run'), 'data': {'source': str(ASSET), 'limit': 500},
           'rate': {'scores': str(scores_file)}, 'embed': {'batch_size': 128},
           'select': {'method': 'ds2', 'budget': 0.1, 'compare': ['random', 'alpagasus']}}
    for k, v in over.items(): cfg[k] = {**cfg.get(k, {}), **v}
    return cfg


def test_bad_config_lists_every_problem_and_writes_nothing(tmp_path):
    bad = tmp_path / 'bad.yaml'
    bad.write_text(yaml.safe_dump({'run_dir': str(tmp_path / 'run'), 'data': {'source': str(tmp_path / 'nope.jsonl')},
                                   'rate': {'concurency': 4}, 'select': {'budget': -1}, 'colour': 'blue'}))
    r = cli('run', bad)
    assert r.returncode == 1
    for part in ('4 problems', 'data.source: file or folder not found', "rate.concurency: unknown key (did you mean 'concurrency'?)",
                 'select.budget: expected a fraction', 'colour: unknown key'):
        assert part in r.stderr, (part, r.stderr)
    assert not (tmp_path / 'run').exists()
    (tmp_path / 'broken.yaml').write_text('data: [unclosed\n')
    r = cli('run', tmp_path / 'broken.yaml')
    assert r.returncode == 1 and 'not valid YAML' in r.stderr


def test_dry_run_prints_the_plan(tmp_path, scores_file):
    f = tmp_path / 'c.yaml'; f.write_text(yaml.safe_dump(config(tmp_path, scores_file)))
    r = cli('run', f, '--dry-run')
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()[1:]
    assert [l.split()[0] for l in lines] == ['data', 'rate', 'embed', 'curate', 'select', 'report']
    assert all(' run ' in l and 'not run yet' in l for l in lines)
    assert not (tmp_path / 'run').exists()


def test_end_to_end_skip_and_change(tmp_path, scores_file):
    cfg = config(tmp_path, scores_file)
    steps = Pipeline(cfg, progress=False).run()
    assert [s.action for s in steps] == ['ran'] * 6
    run = tmp_path / 'run'
    for rel in ('samples.parquet', 'ratings.parquet', 'embeddings', 'curation', 'selection', 'comparison.json', 'report/report.html', 'manifest.json'):
        assert (run / rel).exists(), rel
    comp = json.loads((run / 'comparison.json').read_text())
    assert comp['pool'] == 500 and comp['budget'] == 50 and comp['group_column'] == 'template'
    assert [m['method'] for m in comp['methods']] == ['ds2', 'random', 'alpagasus']
    ds2, rnd = comp['methods'][0], comp['methods'][1]
    assert ds2['mean_curated_score'] > rnd['mean_curated_score']
    page = (run / 'report' / 'report.html').read_text()
    for h in ('Curation', 'rated score to each curated score', 'Selection', 'Mix of the selected subset by template',
              'What was picked and why', 'Scores curation changed most', 'ranks by the curated score'):
        assert h in page, h
    assert 'Transition matrices' not in page      # T is drawn once, in the curation figure
    assert (run / 'report' / 'report.html').stat().st_mode & 0o044 == 0o044   # readable by others under the usual umask
    # a re-run does nothing
    assert [s.action for s in Pipeline(cfg, progress=False).run()] == ['skip'] * 6
    # a new budget redoes the selection and the report only
    cfg2 = config(tmp_path, scores_file, select={'budget': 0.2})
    plan = Pipeline(cfg2, progress=False).plan()
    assert [(s.stage, s.action) for s in plan] == [('data', 'skip'), ('rate', 'skip'), ('embed', 'skip'), ('curate', 'skip'),
                                                    ('select', 'run'), ('report', 'run')]
    assert [s.action for s in Pipeline(cfg2, progress=False).run()] == ['skip'] * 4 + ['ran'] * 2
    assert json.loads((run / 'comparison.json').read_text())['budget'] == 100


def test_failure_keeps_finished_stages_and_resumes(tmp_path, scores_file):
    with pytest.raises(ValueError, match="select.method: unknown 'no_such_method'"):   # a bad name stops before any stage
        Pipeline(config(tmp_path, scores_file, select={'method': 'no_such_method'}), progress=False)
    assert not (tmp_path / 'run').exists()
    cfg = config(tmp_path, scores_file, select={'options': {'no_such_option': 1}})   # fails only when select runs
    with pytest.raises(Exception, match='no_such_option'):
        Pipeline(cfg, progress=False).run()
    done = Manifest(tmp_path / 'run').stages
    assert set(done) == {'data', 'rate', 'embed', 'curate'}
    assert not (tmp_path / 'run' / 'selection').exists()
    steps = Pipeline(config(tmp_path, scores_file), progress=False).run()
    assert [s.action for s in steps] == ['skip'] * 4 + ['ran'] * 2


def test_modified_artifact_is_rebuilt(tmp_path, scores_file):
    cfg = config(tmp_path, scores_file, select={'compare': []})
    Pipeline(cfg, progress=False).run()
    man = tmp_path / 'run' / 'curation'
    victim = sorted(p for p in man.rglob('*') if p.is_file())[0]
    victim.write_bytes(b'garbage')
    plan = Pipeline(cfg, progress=False).plan()
    assert [(s.stage, s.action, s.reason) for s in plan][3] == ('curate', 'run', 'outputs missing or modified')
    steps = Pipeline(cfg, progress=False).run()
    assert [(s.stage, s.action) for s in steps][:4] == [('data', 'skip'), ('rate', 'skip'), ('embed', 'skip'), ('curate', 'ran')]
    # the rebuilt report holds new timings, so select and report follow; then everything is consistent again
    assert [s.action for s in Pipeline(cfg, progress=False).run()] == ['skip'] * 6


def test_demo_pool_is_bundled():
    assert demo_pool().exists() and demo_pool() == ASSET


EVAL = Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'eval'


@pytest.mark.skipif(not EVAL.exists(), reason='shared benchmark files not present')
def test_finetune_evaluate_and_report(tmp_path, scores_file):
    "The whole chain on SmolLM2: 2 LoRA steps on the selection, one real MMLU item, results in the report."
    cfg = config(tmp_path, scores_file, data={'limit': 200}, select={'budget': 16, 'compare': []})
    cfg['finetune'] = {'base_model': 'smollm2', 'max_steps': 2,
                       'recipe': {'effective_batch': 2, 'per_device_batch': 2, 'max_length': 256, 'lora_r': 8, 'gradient_checkpointing': False}}
    cfg['evaluate'] = {'tasks': ['mmlu'], 'data_dir': str(EVAL), 'limit': 1,
                       'options': {'subsets': {'mmlu': ['mmlu_anatomy']}, 'batch_size': 1}}
    steps = Pipeline(cfg, progress=False).run()
    assert [s.stage for s in steps] == ['data', 'rate', 'embed', 'curate', 'select', 'finetune', 'evaluate', 'report']
    run = tmp_path / 'run'
    assert (run / 'model' / 'adapter').exists() and (run / 'model' / 'merged').exists()
    res = json.loads(next((run / 'eval').rglob('mmlu.json')).read_text())
    assert res['benchmark'] == 'mmlu' and 0 <= res['score'] <= 1 and res['method'] == 'ds2' and res['budget'] == 16
    assert 'Benchmark results' in (run / 'report' / 'report.html').read_text()
    # a changed evaluation setting reuses the fine-tuned model
    cfg['evaluate']['limit'] = 2
    assert [(s.stage, s.action) for s in Pipeline(cfg, progress=False).plan()][5:] == [
        ('finetune', 'skip'), ('evaluate', 'run'), ('report', 'run')]


def test_curate_stage_goes_through_curate_ratings(tmp_path):
    "The pipeline's curate stage uses curate_ratings: ok rows only, aligned by id, and a repeated id is an error."
    from llm_curate.pipeline import _stage_curate, RunContext
    from llm_curate.embed import save_embeddings
    from llm_curate.synthetic import make_noisy_scores
    from llm_curate.curate import curate_ratings, CurationReport
    X, y, rated = make_noisy_scores(600, n_clusters=60, seed=1)
    ids = [f's{i}' for i in range(600)]
    save_embeddings(tmp_path / 'embeddings', X, ids, 'test')
    table = pd.DataFrame({'id': ids, 'score': rated, 'rater': 'r', 'status': ['failed' if i % 10 == 0 else 'ok' for i in range(600)]})
    cfg = {'curate': {'k': 10, 'confidence': 0.5, 'random_state': 0, 'options': {}}}
    table.to_parquet(tmp_path / 'ratings.parquet')
    msg = _stage_curate(cfg, RunContext(tmp_path, progress=False))
    assert msg.startswith('540 curated (60 without an ok rating left out)')
    got = CurationReport.load(tmp_path / 'curation').frame
    pd.testing.assert_frame_equal(got, curate_ratings(table, tmp_path / 'embeddings', k=10, confidence=0.5, random_state=0).frame)
    pd.concat([table, table.iloc[[5]]]).to_parquet(tmp_path / 'ratings.parquet')
    with pytest.raises(ValueError, match="'s5' is rated more than once"):
        _stage_curate(cfg, RunContext(tmp_path, progress=False))


def test_embed_backend_checked_and_recorded(tmp_path, scores_file):
    "embed.backend: a misspelt backend is refused before any stage with a did-you-mean; the chosen one names the embeddings."
    from llm_curate.pipeline import validate_config
    from llm_curate.embed import load_embeddings
    with pytest.raises(ValueError, match=r"embed.backend: unknown 'torch-bf61' \(did you mean 'torch-bf16'\?\)"):
        validate_config(config(tmp_path, scores_file, embed={'backend': 'torch-bf61'}))
    cfg = config(tmp_path, scores_file, embed={'backend': 'torch-bf16'}, data={'limit': 60}, select={'compare': []})
    Pipeline(cfg, progress=False).run()
    _, ids, meta = load_embeddings(tmp_path / 'run' / 'embeddings')
    assert len(ids) == 60 and meta['model'].endswith('@torch-bf16')


def test_quantile_calibration_follows_the_ratings_rubric(tmp_path):
    "rate.calibrate: quantile bins into as many levels as the ratings' rubric has (4 here), not DS2's 6."
    from llm_curate.rubric import Rubric
    from llm_curate.store import RatingStore, _row_from_attempts, export_ratings
    from llm_curate.data import load_samples
    r4 = Rubric(name='four', system='', user_template='{conversation}', criteria=['Overall rating'], n_levels=4, cuts=(3, 6, 8))
    ids = list(load_samples(str(ASSET), progress=False).select(range(80))['id'])
    rng = np.random.default_rng(0)
    with RatingStore(tmp_path / 'rating') as st:
        st.add_rubric(r4)
        for i in ids:
            R = rng.dirichlet(np.ones(10)).tolist()
            att = [{'attempt': 0, 'mode': 'logprob', 'score_probs': R}]
            st.put(_row_from_attempts(i, 'm:logprob', r4.version, r4, att, False), att)
    export_ratings(tmp_path / 'rating', tmp_path / 'r4.parquet')
    cfg = {'run_dir': str(tmp_path / 'run'), 'data': {'source': str(ASSET), 'limit': 80},
           'rate': {'scores': str(tmp_path / 'r4.parquet'), 'calibrate': 'quantile'}, 'embed': {'batch_size': 128},
           'select': {'method': 'ds2', 'budget': 0.1, 'compare': []}, 'report': False}
    Pipeline(cfg, progress=False).run()
    levels = pd.read_parquet(tmp_path / 'run' / 'ratings.parquet')['score']
    assert sorted(levels.unique()) == [0, 1, 2, 3] and (levels.value_counts() == 20).all()


def test_curate_model_checks_are_config_keys(tmp_path, scores_file):
    "curate.noise_z / curate.pairs_z are config keys (numbers or null, the checks off), checked before any stage runs."
    from llm_curate.pipeline import validate_config
    validate_config(config(tmp_path, scores_file, curate={'noise_z': None, 'pairs_z': 3}))
    with pytest.raises(ValueError, match=r"curate\.pairs_z"):
        validate_config(config(tmp_path, scores_file, curate={'pairs_z': 'high'}))
