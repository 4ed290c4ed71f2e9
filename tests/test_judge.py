"""llm_curate.judge: prompt sets, strict verdicts, both orders, rates and bootstrap intervals, answer generation."""
import json, os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from llm_curate import judge as J

SHARED = Path(__file__).resolve().parents[2] / 'shared' / 'data'
LIMA_TEST = SHARED / 'eval' / 'judge_sets' / 'lima_test_set.jsonl'


def test_shipped_prompt_sets():
    vic, mtb = J.load_prompt_set('vicuna'), J.load_prompt_set('mt_bench')
    assert (len(vic), len(mtb)) == (80, 80)
    assert all(len(p['turns']) == 1 for p in vic) and all(len(p['turns']) == 2 for p in mtb)
    assert sum('reference' in p for p in mtb) > 0
    assert len({p['id'] for p in vic}) == 80
    assert J.load_prompt_set('mt_bench', limit=3) == mtb[:3]
    # shipped with attribution, as package data
    readme = Path(J.__file__).parent / 'assets' / 'judge_prompts' / 'README.md'
    assert 'Apache License 2.0' in readme.read_text() and 'FastChat' in readme.read_text()


@pytest.mark.skipif(not LIMA_TEST.exists(), reason='shared data folder not present')
def test_lima_test_set_from_path():
    lima = J.load_prompt_set(LIMA_TEST)
    assert len(lima) == 300 and all(len(p['turns']) == 1 and p['turns'][0].strip() for p in lima)


def test_bad_prompt_files(tmp_path):
    f = tmp_path / 'p.jsonl'
    f.write_text('{"text": "ok"}\n{"text": \n')
    with pytest.raises(ValueError, match=r'p.jsonl:2: not valid JSON'): J.load_prompt_set(f)
    f.write_text('{"answer": "no prompt here"}\n')
    with pytest.raises(ValueError, match="line 1 has no prompt"): J.load_prompt_set(f)
    f.write_text('{"turns": []}\n')
    with pytest.raises(ValueError, match="non-empty list"): J.load_prompt_set(f)
    f.write_text('{"instruction": "Sum", "input": "1 2", "output": "3"}\n')
    assert J.load_prompt_set(f)[0]['turns'] == ['Sum\n\n1 2']
    with pytest.raises(FileNotFoundError, match='neither a shipped set'): J.load_prompt_set(tmp_path / 'nope.jsonl')


@pytest.mark.parametrize('text, verdict', [
    ('[[A]]', 'A'), ('reasoning...\nFinal verdict: [[B]]', 'B'), ('[[C]]', 'C'), ('[[ A ]]', 'A'),
    ('[[A]] [[A]]', 'A'), ('[[A]] ... no wait [[B]]', None), ('A is better', None), ('[A]', None), ('[[D]]', None),
    ('', None), (None, None)])
def test_parse_verdict_strict(text, verdict):
    assert J.parse_verdict(text) == verdict


V = st.sampled_from(['A', 'B', 'C', None])


@given(V, V)
def test_pair_outcome_swap_symmetry(v1, v2):
    "Swapping which model is A turns a win into a loss: outcome(B vs A) mirrors outcome(A vs B)."
    swap = {'A': 'B', 'B': 'A', 'C': 'C', None: None}
    o, o_swapped = J.pair_outcome(v1, v2), J.pair_outcome(swap[v1], swap[v2])
    mirror = {'win': 'lose', 'lose': 'win', 'tie': 'tie', None: None}
    assert o_swapped == mirror[o]
    if v1 and v2 and {v1, v2} == {'A', 'B'} and v1 == v2: assert o == 'tie'


@settings(max_examples=30, deadline=None)
@given(st.lists(st.sampled_from(['win', 'tie', 'lose']), min_size=1, max_size=80), st.integers(0, 10))
def test_bootstrap_intervals_bracket_the_rates(outcomes, seed):
    ci = J.bootstrap_rates(outcomes, n_boot=300, seed=seed)
    for o in J.OUTCOMES:
        r = outcomes.count(o) / len(outcomes)
        lo, hi = ci[o]
        assert 0 <= lo <= hi <= 1 and lo - 1e-12 <= r <= hi + 1e-12
    assert ci == J.bootstrap_rates(outcomes, n_boot=300, seed=seed)


def test_bootstrap_width_shrinks_with_n():
    small = J.bootstrap_rates(['win', 'lose'] * 10, seed=0)['win']
    big = J.bootstrap_rates(['win', 'lose'] * 500, seed=0)['win']
    assert (big[1] - big[0]) < (small[1] - small[0]) / 4
    assert big[0] < 0.5 < big[1]


def test_judge_pairwise_bad_inputs():
    class NoChat: pass
    with pytest.raises(TypeError, match='chat'): J.judge_pairwise(['p'], ['a'], ['b'], NoChat())
    class Short:
        def chat(self, convs, max_tokens=1, temperature=0.0): return ['[[A]]']
    with pytest.raises(RuntimeError, match='returned 1 replies for 2'): J.judge_pairwise(['p'], ['a'], ['b'], Short())
    with pytest.raises(ValueError, match="'unparsed' parameter"): J.judge_pairwise(['p'], ['a'], ['b'], Short(), unparsed='x')


@pytest.fixture(scope='module')
def smollm2():
    pytest.importorskip('transformers'); pytest.importorskip('gguf')
    from llm_curate.models import load_causal_lm
    try: return load_causal_lm('smollm2')
    except (ImportError, FileNotFoundError) as e: pytest.skip(f'SmolLM2 not available: {e}')


def test_generate_answers_transformers(smollm2):
    vic, mtb = J.load_prompt_set('vicuna'), J.load_prompt_set('mt_bench')
    prompts = ['What is 2+2?', vic[0], mtb[0]]
    ans = J.generate_answers(smollm2, prompts, backend='transformers', max_new_tokens=12, batch_size=3, progress=False)
    assert isinstance(ans[0], str) and isinstance(ans[1], list) and len(ans[2]) == 2
    assert all(a.strip() for a in [ans[0], *ans[1], *ans[2]])
    # left padding + greedy: a batched answer equals the same prompt answered alone
    alone = J.generate_answers(smollm2, ['What is 2+2?'], backend='transformers', max_new_tokens=12, batch_size=1, progress=False)
    assert alone[0] == ans[0]
    with pytest.raises(ValueError, match="'backend' parameter"): J.generate_answers(smollm2, ['x'], backend='tgi')


def test_judge_pairwise_against_a_local_openai_server(monkeypatch):
    "A real HTTP server with scripted verdicts, the real OpenAI client: both orders, position bias, ties, unparsed."
    from llm_curate.rate import OpenAIRater
    from llm_curate.testing import ScriptedServer
    import re

    def verdict(body):
        user = body['messages'][-1]['content']
        a = re.search(r"### Assistant A:\n(.*?)\n\[The end of assistant A", user, re.S).group(1)
        b = re.search(r"### Assistant B:\n(.*?)\n\[The end of assistant B", user, re.S).group(1)
        if 'garble' in user: return 'I cannot decide.'
        if 'biased' in user: return 'The first one. [[A]]'              # always the first shown: inconsistent -> tie
        if ('good' in a) == ('good' in b): return 'Equally good. [[C]]'
        return 'A is better. [[A]]' if 'good' in a else 'B is better. [[B]]'

    monkeypatch.setenv('OPENAI_API_KEY', 'sk-test')
    prompts = [f'question {i}' for i in range(10)] + ['biased question', 'garble question']
    answers_a = ['good answer'] * 6 + ['bad answer'] * 2 + ['good answer'] * 2 + ['x', 'y']
    answers_b = ['bad answer'] * 6 + ['good answer'] * 2 + ['good answer'] * 2 + ['z', 'w']
    with ScriptedServer(verdict) as srv:
        judge = OpenAIRater('scripted', base_url=srv.url, concurrency=4)
        res = J.judge_pairwise(prompts, answers_a, answers_b, judge, n_boot=500, model_a='ds2', model_b='lima')
        calls = len(srv.log)
    assert res.n == 11 and res.n_unparsed == 1 and res.n_inconsistent == 1      # the garbled pair is dropped
    assert (res.win, res.tie, res.lose) == pytest.approx((6 / 11, 3 / 11, 2 / 11))
    assert res.ci['win'][0] < 6 / 11 < res.ci['win'][1]
    assert list(res.verdicts['outcome'][:8]) == ['win'] * 6 + ['lose'] * 2
    assert calls == 2 * len(prompts)                                              # every pair judged in both orders, once


LIMA_TRAIN = SHARED / 'instruct' / 'lima' / 'lima_train_1029.json'


@pytest.mark.skipif(not LIMA_TRAIN.exists(), reason='shared data folder not present')
def test_compare_end_to_end(tmp_path, monkeypatch):
    "`compare`: fine-tune SmolLM2 on a DS2-style subset and on LIMA, answer a prompt set with both, judge both orders."
    import re
    from llm_curate.data import load_samples, save_samples
    from llm_curate.finetune import TULU_LORA
    from llm_curate.rate import OpenAIRater
    from llm_curate.testing import ScriptedServer
    import llm_curate
    monkeypatch.setenv('HF_HUB_OFFLINE', '1'); monkeypatch.setenv('OPENAI_API_KEY', 'sk-test')
    pool = load_samples(Path(llm_curate.__file__).parent / 'assets' / 't0_pool_5k.jsonl.gz', progress=False)
    save_samples(pool.select(range(4)), tmp_path / 'ds2.jsonl')
    save_samples(load_samples(LIMA_TRAIN, progress=False).select(range(4)), tmp_path / 'lima.jsonl')
    recipe = TULU_LORA.__class__(**{**TULU_LORA.__dict__, 'epochs': 1, 'effective_batch': 4, 'per_device_batch': 4,
                                    'max_length': 128, 'lora_r': 4, 'gradient_checkpointing': False})
    longer = lambda body: '[[A]]' if len(re.search(r"Assistant A:\n(.*?)\n\[The end", body['messages'][-1]['content'], re.S).group(1)) >= \
                                     len(re.search(r"Assistant B:\n(.*?)\n\[The end", body['messages'][-1]['content'], re.S).group(1)) else '[[B]]'
    with ScriptedServer(longer) as srv:
        res = J.compare(OpenAIRater('scripted', base_url=srv.url), subset=tmp_path / 'ds2.jsonl', reference=tmp_path / 'lima.jsonl',
                        base_model='smollm2', out_dir=tmp_path / 'cmp', prompt_sets=['vicuna'], recipe=recipe, limit=2,
                        max_new_tokens=8, backend='transformers', progress=False)
        assert len(srv.log) == 2 * 2
    r = res['vicuna']
    assert r.n + r.n_unparsed == 2 and abs(r.win + r.tie + r.lose - 1) < 1e-9
    for name in ('ds2', 'lima'):
        assert (tmp_path / 'cmp' / 'models' / name / 'adapter').exists()
        assert len(json.loads((tmp_path / 'cmp' / 'answers' / name / 'vicuna.json').read_text())['answers']) == 2
    saved = json.loads((tmp_path / 'cmp' / 'judge' / 'vicuna.json').read_text())
    assert saved['kind'] == 'pairwise_judge' and saved['model_a'] == 'ds2' and saved['model_b'] == 'lima'
