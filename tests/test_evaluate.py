"""llm_curate.evaluate: the real benchmark files of ../shared/data/eval converted and read offline by lm-eval's own
task configs; SmolLM2-135M-Instruct scored on one real item of each of the five benchmarks (results JSON in the
layout llm_curate.report reads); bad inputs; the CLI."""
import gzip, json, os
from pathlib import Path
import pytest

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('HF_DATASETS_OFFLINE', '1')
import lm_eval, torch  # noqa: F401  (CI installs every extra: a missing one must fail, not skip)

from llm_curate.evaluate import (BENCHMARKS, evaluate, model_name, prepare_mmlu, prepare_truthfulqa, prepare_tydiqa,
                                 task_dir, make_lm)

EVAL = Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'eval'
if not EVAL.exists(): EVAL = Path('/work/shared/data/eval')
needs_data = pytest.mark.skipif(not EVAL.exists(), reason='shared eval data folder not present')
SMOKE = {'mmlu': ['mmlu_anatomy'], 'bbh': ['bbh_cot_fewshot_boolean_expressions'], 'tydiqa': ['tydiqa_goldp_en']}


@needs_data
def test_prepare_local_files(tmp_path):
    mm = prepare_mmlu(EVAL, tmp_path)
    assert len(mm) == 57
    count = lambda p: sum(1 for _ in open(p, encoding='utf-8'))
    assert sum(count(v['test']) for v in mm.values()) == 14042
    assert sum(count(v['dev']) for v in mm.values()) == 285
    row = json.loads(open(mm['anatomy']['test'], encoding='utf-8').readline())
    assert set(row) == {'question', 'subject', 'choices', 'answer'} and len(row['choices']) == 4 and row['answer'] in range(4)
    tq = [json.loads(l) for l in open(prepare_truthfulqa(EVAL, tmp_path), encoding='utf-8')]
    assert len(tq) == 817
    for q in tq:   # true answers first, exactly one true MC1 answer
        for k in ('mc1_targets', 'mc2_targets'):
            labels = q[k]['labels']
            assert labels == sorted(labels, reverse=True) and labels[0] == 1 and 0 in labels
        assert sum(q['mc1_targets']['labels']) == 1
    ty = prepare_tydiqa(EVAL, tmp_path)
    assert count(ty['validation']) == 5077 and count(ty['train']) == 3696


@needs_data
def test_local_tasks_read_real_files(tmp_path):
    "lm-eval builds every benchmark's tasks from the local files, with the documented sizes and shots."
    import lm_eval.tasks as tasks_mod
    td = task_dir(list(BENCHMARKS), EVAL, cache_dir=tmp_path)
    assert task_dir(list(BENCHMARKS), EVAL, cache_dir=tmp_path) == td   # cached
    tm = tasks_mod.TaskManager(include_path=str(td), include_defaults=False)
    for t in ('mmlu', 'truthfulqa_mc2', 'gsm8k_cot', 'bbh_cot_fewshot', 'tydiqa_goldp_all'): assert t in tm.all_tasks
    names = ['mmlu_anatomy', 'truthfulqa_mc2', 'gsm8k_cot', 'bbh_cot_fewshot_navigate', 'tydiqa_goldp_sw', 'tydiqa_goldp_en']
    d = tm.load(names)['tasks']          # TaskManager.load (get_task_dict is the legacy loader)
    docs = {n: list(d[n].eval_docs) for n in names}
    sizes = {n: len(v) for n, v in docs.items()}
    assert sizes['mmlu_anatomy'] == 135 and sizes['truthfulqa_mc2'] == 817 and sizes['gsm8k_cot'] == 1319
    assert sizes['bbh_cot_fewshot_navigate'] == 250 and sizes['tydiqa_goldp_en'] == 440
    assert sizes['tydiqa_goldp_sw'] > 100
    assert {n: d[n].config.num_fewshot for n in ('gsm8k_cot', 'bbh_cot_fewshot_navigate', 'tydiqa_goldp_sw')} == \
        {'gsm8k_cot': 8, 'bbh_cot_fewshot_navigate': 3, 'tydiqa_goldp_sw': 1}
    assert not d['mmlu_anatomy'].config.num_fewshot
    assert docs['tydiqa_goldp_sw'][0]['id'].startswith('swahili-')


def test_hub_configs_keep_hub_datasets(tmp_path):
    td = task_dir(['gsm8k', 'tydiqa'], None, cache_dir=tmp_path)
    g = (td / 'gsm8k' / 'gsm8k-cot.yaml').read_text()
    assert 'llm_curate overrides' not in g and 'openai/gsm8k' in g
    c = (td / 'tydiqa' / '_tydiqa_goldp_common_yaml').read_text()
    assert 'num_fewshot: 1' in c and '"json"' not in c


@needs_data
def test_evaluate_smollm2_five_benchmarks(tmp_path):
    "One real item of each benchmark through lm-eval with SmolLM2; results in the report's layout."
    df = evaluate('smollm2', list(BENCHMARKS), EVAL, limit=1, out=tmp_path, cache_dir=tmp_path, batch_size=2,
                  max_gen_toks=16, subsets=SMOKE, tags={'method': 'base', 'seed': 0}, progress=False)
    assert list(df.benchmark) == list(BENCHMARKS)
    assert list(df.n) == [1] * 5
    assert df.score.notna().all() and df.score.between(0, 1).all()
    assert list(df.metric) == ['acc', 'mc2', 'exact_match', 'exact_match', 'f1']
    for b in BENCHMARKS:
        rec = json.loads((tmp_path / 'smollm2' / f'{b}.json').read_text())
        assert rec['model'] == 'smollm2' and rec['benchmark'] == b and rec['method'] == 'base' and rec['data'] == 'local'
        assert 0 <= rec['score'] <= 1 and rec['limit'] == 1
    raw = json.loads(gzip.decompress((tmp_path / 'smollm2' / 'lm_eval_results.json.gz').read_bytes()))
    assert 'gsm8k_cot' in raw['results'] and 'tydiqa_goldp_en' in raw['results']
    import llm_curate.report as report
    got = report.load_results(tmp_path)
    assert sorted(got.benchmark) == sorted(BENCHMARKS) and len(got) == 5   # the raw .json.gz is not double counted


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="'benchmarks' parameter of evaluate"): evaluate('smollm2', ['hellaswag'])
    with pytest.raises(ValueError, match="'backend' parameter of evaluate"): make_lm('smollm2', backend='tgi')
    with pytest.raises(ValueError, match="'subsets' parameter"): evaluate('smollm2', ['gsm8k'], subsets={'mmlu': ['mmlu_anatomy']})
    with pytest.raises(FileNotFoundError, match='MMLU zip not found'): task_dir(['mmlu'], tmp_path, cache_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match='is not a folder'): task_dir(['mmlu'], tmp_path / 'nope', cache_dir=tmp_path)
    with pytest.raises(TypeError, match='Cannot evaluate'): make_lm(42)
    assert model_name('runs/x/llama/merged') == 'llama' and model_name('org/m') == 'org__m'


@needs_data
def test_unknown_subset_task(tmp_path):
    with pytest.raises(ValueError, match='Unknown lm-eval tasks'):
        evaluate('smollm2', ['mmlu'], EVAL, subsets={'mmlu': ['mmlu_astrology']}, cache_dir=tmp_path)


@needs_data
def test_cli(tmp_path, capsys):
    from llm_curate.cli import main
    rc = main(['evaluate', 'smollm2', '--benchmarks', 'mmlu', '--data-dir', str(EVAL), '--limit', '1',
               '--subset', 'mmlu=mmlu_anatomy', '--out', str(tmp_path), '--method', 'base', '--budget', '0'])
    assert rc == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row['benchmark'] == 'mmlu' and row['n'] == 1
    rec = json.loads((tmp_path / 'smollm2' / 'mmlu.json').read_text())
    assert rec['method'] == 'base' and rec['budget'] == 0 and rec['task'] == ['mmlu_anatomy']
    assert main(['evaluate', 'smollm2', '--benchmarks', 'mmlu', '--subset', 'mmlu']) == 1   # bad --subset: error, exit 1
