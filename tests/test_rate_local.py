"""Local rating backends (llm_curate.rate_local): the engine, score-token reading, TransformersRater on the real
SmolLM2-135M-Instruct judge, RayRater on a local Ray instance, VLLMRater (GPU only)."""
import json, os
import numpy as np
import pytest
from hypothesis import given, settings, strategies as hst

from llm_curate.rubric import DS2_RUBRIC
from llm_curate.store import export_ratings

import torch, transformers   # the embed/train extras: installed wherever tests run
from llm_curate.rate_local import (ScoreTokens, score_tokens, score_distribution, chat_ids, common_prefix_len,
                                   LocalEngine, TransformersRater, RayRater, VLLMRater, rubric_json_schema, _batches)

POOL = None


def pool(n):
    global POOL
    if POOL is None:
        from importlib import resources
        from llm_curate.data import load_samples
        POOL = load_samples(str(resources.files('llm_curate').joinpath('assets', 't0_pool_5k.jsonl.gz')), progress=False)
    return POOL.select(range(n))


@pytest.fixture(scope='module')
def smol():
    "SmolLM2-135M-Instruct in float32 (exact comparisons), loaded once for the module."
    from llm_curate.models import load_causal_lm
    torch.set_num_threads(1)  # shared CI boxes: spinning OpenMP threads stall each other
    return load_causal_lm('smollm2', dtype='float32', device='cpu')


# --- score tokens -------------------------------------------------------------------------------------------
def _wordlevel_tokenizer():
    "A tiny tokenizer that has a single token '10' (like Llama-3) besides the ten digits."
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {'[UNK]': 0, 'x': 1, 'word': 2, **{str(d): 3 + d for d in range(10)}, '10': 13}
    tk = Tokenizer(models.WordLevel(vocab, unk_token='[UNK]'))
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Split(Regex(r'10|\d'), 'isolated')])
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token='[UNK]')


def test_score_tokens_single_token_ten():
    tok = _wordlevel_tokenizer()
    assert tok.tokenize('x10') == ['x', '10'] and tok.tokenize('x1') == ['x', '1']
    st = score_tokens(tok)
    assert st.single[9] == [13] and st.second[9] == 3 and st.lead_id == 4
    # P("10") = .2 read directly, plus P("1")·P("0"|"1") = .4·.5; P(1) = .4·(1 - .5 - .1 (another digit))
    pf = torch.zeros(1, 14); pf[0, 13], pf[0, 4], pf[0, 2] = 0.2, 0.4, 0.4
    pa = torch.zeros(1, 14); pa[0, 3], pa[0, 5], pa[0, 2] = 0.5, 0.1, 0.4
    probs, mass = score_distribution(st, pf, pa)
    np.testing.assert_allclose(mass, [0.2 + 0.2 + 0.16])
    np.testing.assert_allclose(probs[0, [0, 9]], np.array([0.16, 0.4]) / 0.56)


def test_score_tokens_smollm2_splits_ten(smol):
    _, tok = smol
    st = score_tokens(tok)
    assert tok.tokenize('10') == ['1', '0'] and st.single[9] == [] and st.lead_id == tok.convert_tokens_to_ids('1')
    assert [tok.decode(ids) for ids in st.single[:9]] == [str(v) for v in range(1, 10)]
    with pytest.raises(ValueError, match='raw_min < raw_max'): score_tokens(tok, 3, 2)


@settings(max_examples=60, deadline=None)
@given(hst.lists(hst.floats(0, 1), min_size=12, max_size=12), hst.lists(hst.floats(0, 1), min_size=12, max_size=12))
def test_score_distribution_is_a_distribution(a, b):
    toy = ScoreTokens(values=list(range(1, 11)), single=[[d] for d in range(1, 10)] + [[]], second=[None] * 9 + [0],
                      lead_id=1, lead_value=1, digit_ids=list(range(10)))
    pf, pa = torch.tensor([a]) + 1e-9, torch.tensor([b]) + 1e-9
    pf, pa = pf / pf.sum(), pa / pa.sum()
    probs, mass = score_distribution(toy, pf, pa, top_k=12)
    assert 0 <= mass[0] <= 1 + 1e-6   # float32 inputs
    assert np.all(probs >= -1e-12) and abs(probs.sum() - 1) < 1e-9
    np.testing.assert_allclose(probs[0, 9] * mass[0], pf[0, 1].item() * pa[0, 0].item(), rtol=1e-6, atol=1e-12)


def test_no_score_token_is_unreadable():
    toy = ScoreTokens(values=[1, 2, 3], single=[[1], [2], [3]], second=[None] * 3, lead_id=None, lead_value=None, digit_ids=list(range(10)))
    pf = torch.zeros(2, 12); pf[0, 11] = 0.9; pf[0, 2] = 0.1; pf[1, 11] = 1.0
    probs, _ = score_distribution(toy, pf, top_k=1)
    assert np.isnan(probs).all()                 # top-1 is a word in both rows
    probs, _ = score_distribution(toy, pf, top_k=2)
    assert probs[0, 1] == 1 and np.isnan(probs[1]).all()  # row 2 has no score mass at all


# --- engine ---------------------------------------------------------------------------------------------------
def test_batches_bounded_and_sorted():
    lengths = list(np.random.default_rng(0).integers(1, 300, 200))
    bs = _batches(lengths, 16, 2000)
    assert sorted(i for b in bs for i in b) == list(range(200))
    for b in bs:
        assert len(b) <= 16 and (len(b) == 1 or max(lengths[i] for i in b) * len(b) <= 2000)
        assert [lengths[i] for i in b] == sorted((lengths[i] for i in b), reverse=True)


def _judge(texts):
    sys = {'role': 'system', 'content': 'You rate answers for a quality study. Give a rating from 1 to 10. Reply with the number only.'}
    return [[sys, {'role': 'user', 'content': f'Answer: {t}\nRating:'}] for t in texts]


def test_prefix_cache_matches_plain_forward(smol):
    m, tok = smol
    convs = _judge(['Paris.', 'The answer is 42 because six times seven is 42.', 'no', 'A cat is a small mammal kept as a pet.'])
    ids = chat_ids(tok, convs)
    assert common_prefix_len(ids) > 16
    fast = LocalEngine(m, tok, batch_size=3)
    a = fast.score(convs)
    b = LocalEngine(m, tok, batch_size=1, prefix_cache=False).score(convs)
    for x, y in zip(a, b): np.testing.assert_allclose(x['score_probs'], y['score_probs'], atol=1e-4)
    assert fast.stats['reused_tokens'] > 0 and fast.stats['computed_tokens'] < sum(map(len, ids)) + 4
    # the exact reference: the next-token distribution of each prompt alone through the model
    with torch.inference_mode(): p = torch.softmax(m(torch.tensor([ids[0]])).logits[0, -1].float(), -1)
    digits = [p[tok.convert_tokens_to_ids(str(d))].item() for d in range(2, 10)]
    np.testing.assert_allclose(np.array(a[0]['score_probs'][1:9]) * a[0]['mass'], digits, rtol=1e-3)


def test_generate_greedy_and_sampling(smol):
    m, tok = smol
    convs = _judge(['Paris.', 'Nine is prime.', 'Water boils at 100 degrees Celsius at sea level.'])
    eng = LocalEngine(m, tok, batch_size=2)
    got = eng.generate(convs, max_new_tokens=10)
    ref = [tok.decode(m.generate(torch.tensor([r]), max_new_tokens=10, do_sample=False)[0, len(r):], skip_special_tokens=True)
           for r in chat_ids(tok, convs)]
    assert [g['text'] for g in got] == ref
    s1 = eng.generate(convs, max_new_tokens=8, temperature=1.0, seed=3)
    s2 = eng.generate(convs, max_new_tokens=8, temperature=1.0, seed=3)
    assert [x['text'] for x in s1] == [x['text'] for x in s2]
    assert all(x['completion_tokens'] <= 8 for x in s1)


def test_long_prompt_cut_in_the_middle(smol):
    m, tok = smol
    convs = _judge(['word ' * 200, 'short'])
    limit = len(chat_ids(tok, convs[1:])[0]) + 4
    eng = LocalEngine(m, tok, max_prompt_tokens=limit)
    res = eng.score(convs)
    assert res[0]['truncated'] and not res[1]['truncated'] and res[0]['prompt_tokens'] == limit
    assert res[0]['score_probs'] is not None       # the answer cue at the end survives the cut


# --- TransformersRater ----------------------------------------------------------------------------------------
def test_rater_logprob_and_resume(smol, tmp_path):
    r = TransformersRater(smol, mode='logprob', max_sample_tokens=128, name='smol:logprob')
    df = r.rate(pool(5), out=tmp_path, progress=False)
    assert list(df.status) == ['ok'] * 5 and df.score.between(0, 5).all()
    for p, e in zip(df.score_probs, df.expected_raw):
        assert len(p) == 10 and abs(sum(p) - 1) < 1e-6 and abs(np.dot(p, np.arange(1, 11)) - e) < 1e-6
    calls = []
    r._complete = lambda reqs: calls.append(reqs) or []
    again = r.rate(pool(5), out=tmp_path, progress=False)       # everything stored: no new request
    assert calls == [] and list(again.id) == list(df.id)
    assert len(export_ratings(tmp_path)) == 5


def test_rater_json_mode(smol):
    r = TransformersRater(smol, mode='json', max_sample_tokens=96, max_tokens=40, max_reasks=1)
    df = r.rate(pool(2), progress=False)
    assert set(df.status) <= {'ok', 'unparsed'} and df.raw_text.notna().all()
    assert (df.completion_tokens > 0).all()
    ok = df[df.status == 'ok']
    assert ok.score.between(0, 5).all()


def test_rater_unparsed_when_no_score_token(smol):
    r = TransformersRater(smol, mode='logprob', max_sample_tokens=64, top_k=1)  # SmolLM2's top token is "The", not a digit
    df = r.rate(pool(3), progress=False)
    assert (df.status == 'unparsed').all() and df.score.isna().all() and df.score_probs.isna().all()
    assert df.error.str.contains('score tokens').all()


def test_rater_logprob_prefill(smol):
    r = TransformersRater(smol, mode='logprob', max_sample_tokens=64, logprob_prefill='Overall rating: ')
    reqs = [{'key': 'a', 'messages': [{'role': 'user', 'content': 'Rate this: hello'}], 'mode': 'logprob', 'max_tokens': 2}]
    res = r._complete(reqs)
    assert res[0]['score_probs'] is not None and res[0]['text'][0].isdigit()   # the judge now writes a number first
    assert reqs[0]['messages'][-1]['role'] == 'user'                           # the caller's request is not modified
    df = r.rate(pool(3), progress=False)
    assert (df.status == 'ok').all()


def test_rater_batch_failure_is_failed_not_a_score(smol):
    r = TransformersRater(smol, mode='logprob', max_sample_tokens=64)
    eng = r.engine()
    eng.score = lambda *a, **k: (_ for _ in ()).throw(RuntimeError('out of memory'))
    df = r.rate(pool(2), progress=False)
    assert (df.status == 'failed').all() and df.error.str.contains('out of memory').all() and df.score.isna().all()


def test_rater_workers_match_in_process(smol, tmp_path):
    "Two worker processes give the in-process ratings (float32: only batch-shape rounding differs) and store them the same way."
    kw = dict(mode='logprob', max_sample_tokens=64, logprob_prefill='Overall rating: ', name='smol:lp')
    here = TransformersRater(smol, **kw).rate(pool(10), progress=False)
    r = TransformersRater('smollm2', dtype='float32', workers=2, num_threads=1, **kw)
    there = r.rate(pool(10), out=tmp_path, progress=False)
    assert r._engine is None                       # the parent loaded the tokenizer only; the workers held the model
    assert list(there.id) == list(here.id) and (there.status == 'ok').all()
    np.testing.assert_allclose(np.stack(there.score_probs), np.stack(here.score_probs), atol=1e-4)
    assert list(there.score) == list(here.score)
    assert len(export_ratings(tmp_path)) == 10


def test_rater_workers_failure_is_failed_and_retried(tmp_path):
    "Workers that cannot load the model fail their samples with the reason (the run ends); a fixed rerun rates them."
    kw = dict(mode='logprob', max_sample_tokens=64, logprob_prefill='Overall rating: ', name='smol:lp')
    bad = TransformersRater('smollm2', dtype='no_such_dtype', workers=2, num_threads=1, **kw).rate(pool(4), out=tmp_path, progress=False)
    assert (bad.status == 'failed').all() and bad.error.str.contains('could not load the model').all()
    good = TransformersRater('smollm2', dtype='float32', workers=2, num_threads=1, **kw).rate(pool(4), out=tmp_path, progress=False)
    assert (good.status == 'ok').all()
    with pytest.raises(ValueError, match="'workers' parameter of TransformersRater must be None or an int >= 1"):
        TransformersRater('smollm2', workers=0).rate(pool(1), progress=False)
    with pytest.raises(ValueError, match='not a loaded'):
        TransformersRater((object(), object()), workers=2).rate(pool(1), progress=False)


def test_rater_chat(smol):
    r = TransformersRater(smol)
    out = r.chat([[{'role': 'user', 'content': 'What is the capital of France?'}]], max_tokens=12)
    assert len(out) == 1 and 'Paris' in out[0]


def test_make_rater_resolves_backend():
    from llm_curate.rate import make_rater
    r = make_rater(None, 'smollm2')
    assert isinstance(r, TransformersRater) and r.mode == 'logprob' and r._engine is None  # lazy: nothing loaded


# --- Ray ------------------------------------------------------------------------------------------------------
def test_ray_local(tmp_path):
    import ray
    started = not ray.is_initialized()
    if started: ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        r = RayRater('smollm2', mode='logprob', max_sample_tokens=64, replicas=2, batch_size=2, engine_kw={'num_threads': 1})
        df = r.rate(pool(5), out=tmp_path, progress=False)
        assert list(df.status) == ['ok'] * 5 and df.id.is_unique and r.rater_id == 'smollm2:logprob'
        assert all(abs(sum(p) - 1) < 1e-6 for p in df.score_probs)
        assert len(export_ratings(tmp_path)) == 5
        assert len(r.chat([[{'role': 'user', 'content': 'Say hi.'}]], max_tokens=4)) == 1
    finally:
        if started: ray.shutdown()


# --- vLLM (GPU only) ------------------------------------------------------------------------------------------
def test_rubric_json_schema():
    s = rubric_json_schema(DS2_RUBRIC)
    assert s['required'] == DS2_RUBRIC.criteria and s['properties']['Rarity']['maximum'] == 10


@pytest.fixture(scope='module')
def smol_dir():
    "SmolLM2 as a Hugging Face folder (the de-quantised GGUF conversion), which vLLM can load offline."
    from llm_curate.models import load_causal_lm, resolve_model, _gguf_cache_dir
    load_causal_lm('smollm2', device='cpu')
    return str(_gguf_cache_dir(*resolve_model('smollm2')))


@pytest.mark.gpu
def test_vllm_logprob_and_json(smol_dir):
    pytest.importorskip('vllm')
    r = VLLMRater(smol_dir, mode='logprob', max_sample_tokens=256, gpu_memory_utilization=0.3, max_model_len=2048)
    df = r.rate(pool(8), progress=False)
    assert set(df.status) <= {'ok', 'unparsed'} and (df.status == 'ok').any()
    for p in df.score_probs.dropna(): assert abs(sum(p) - 1) < 1e-6
    r.mode = 'json'
    js = r.rate(pool(4), progress=False)
    assert (js.status == 'ok').all()          # guided decoding: always the rubric's JSON
    assert len(r.chat([[{'role': 'user', 'content': 'Say hi.'}]], max_tokens=8)) == 1


def test_vllm_failed_forced_one_pass_is_said_not_counted_as_one():
    "vLLM path: when the extra pass that reads P('0' | '1') fails, the rating says P(10) is unknown (no score when 1 is the mode)."
    r = VLLMRater('some/model', mode='logprob')
    r._params = lambda mode, max_tokens, temperature=0.0: None
    r._chat = lambda convs, params: [RuntimeError('CUDA error: out of memory') for _ in convs]
    one_first = [0.6, 0.1, 0.1, 0.1, 0.1, 0, 0, 0, 0, 0]      # "1" is the mode: a 1 or the start of a 10
    nine_first = [0.2, 0, 0, 0, 0, 0, 0, 0, 0.8, 0]           # 9 is the mode, the "1" share stays a 1 with a note
    req = {'key': 'a', 'messages': [{'role': 'user', 'content': 'rate'}], 'mode': 'logprob', 'max_tokens': 2}
    out = [{'key': 'a', 'score_probs': list(one_first), 'error': None}, {'key': 'b', 'score_probs': list(nine_first), 'error': None}]
    r._after_one([(0, req, [{'1': -0.5}], ['The']), (1, {**req, 'key': 'b'}, [{'9': -0.2}], ['The'])], out)
    assert out[0]['score_probs'] is None and 'P(10) unknown' in out[0]['error'] and 'out of memory' in out[0]['error']
    assert out[1]['score_probs'] == nine_first and 'counted as a 1' in out[1]['error']


def test_rater_worker_dead_before_send_fails_its_share_only():
    "A worker process that died between chunks: its share fails with the reason, the other worker's share is rated."
    from llm_curate.rate_local import _Worker
    r = TransformersRater('smollm2', dtype='float32', workers=2, num_threads=1, mode='logprob', max_sample_tokens=64,
                          logprob_prefill='Overall rating: ')
    r.tokenizer()
    r._pool = [_Worker(r._worker_kw()) for _ in range(2)]
    try:
        r._pool[0].p.kill(); r._pool[0].p.wait()
        reqs = [r._job(s['id'], s['messages'])['request'] for s in pool(4)]
        out = {x['key']: x for x in r._complete_in_workers(reqs)}
    finally:
        for w in r._pool: w.close()
    assert set(out) == {q['key'] for q in reqs}
    failed = [x for x in out.values() if x['error']]
    assert len(failed) == 2 and all('worker process failed' in x['error'] for x in failed)
    assert all(x['score_probs'] is not None for x in out.values() if not x['error'])
