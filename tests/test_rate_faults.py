"""Fault injection and crash recovery of the rating engine (issue 3): 2,000 samples each, against scripted servers
running in their own process, with small latencies so the suite stays fast."""
import collections, json, os, random, signal, subprocess, sys, time
from pathlib import Path

import pandas as pd
import pytest

from llm_curate.data import render_conversation
from llm_curate.rubric import DS2_RUBRIC
from llm_curate.store import RatingStore, export_ratings
from llm_curate.openai_rate import OpenAIRater
from llm_curate.testing import Faults, fake_rating, read_log, sample_key, spawn_scripted

SECRET = 'sk-crash-test-SECRET-9f8e7d6c5b4a'
N = 2000


def _samples(n):
    return [{'id': f'id{i:05d}', 'messages': [{'role': 'user', 'content': f'Task {i}: summarise item {i * 7919 % 1000}.'},
                                               {'role': 'assistant', 'content': f'Item {i} summary, {i % 13} words.'}]} for i in range(n)]


def test_fault_run_every_sample_has_a_status_and_reason(tmp_path):
    s = _samples(N)
    faults = Faults(p429=0.10, p500=0.05, pstall=0.05, pmalformed=0.10, ptruncated=0.02, pbadjson=0.02, retry_after=0.05, stall_s=3.0, seed=7)
    with spawn_scripted(faults=faults, latency=0.01, log_path=tmp_path / 'log.jsonl') as url:
        r = OpenAIRater('scripted', base_url=url, concurrency=64, timeout=1.0, max_retries=3, backoff=0.02, max_backoff=0.2, max_reasks=1)
        t = time.time()
        df = r.rate(s, out=tmp_path / 'run', progress=False)
        took = time.time() - t
    log = read_log(tmp_path / 'log.jsonl')
    kinds = collections.Counter(x['fault'] for x in log)
    assert all(kinds[k] > 0 for k in ('429', '500', 'stall', 'malformed', 'truncated', 'badjson')), kinds
    # every sample exactly once, with a status and, unless ok, a reason
    assert len(df) == N and df.id.is_unique and set(df.id) == {x['id'] for x in s}
    assert set(df.status) <= {'ok', 'unparsed', 'failed'}
    assert df.loc[df.status != 'ok', 'error'].notna().all()
    assert df.loc[df.status == 'unparsed', 'raw_text'].notna().all()
    assert df.loc[df.status != 'ok', 'score'].isna().all()
    # an ok score is the scripted judge's, never a default
    ok = df.status == 'ok'
    want = {x['id']: DS2_RUBRIC.to_level(fake_rating(sample_key(render_conversation(x['messages'])))) for x in s}
    assert (df.loc[ok, 'score'] == df.loc[ok, 'id'].map(want)).all()
    assert ok.mean() > 0.95, df.status.value_counts()
    # the same in the store's export
    ex = export_ratings(tmp_path / 'run')
    assert len(ex) == N and ex.id.is_unique
    print(f'fault run: {N} samples in {took:.1f} s, {len(log)} requests, faults {dict(kinds)}, statuses {df.status.value_counts().to_dict()}')


def _cli_cmd(pool, url, out, cache, concurrency):
    code = 'import sys; from llm_curate.cli import main; sys.exit(main(sys.argv[1:]))'
    return [sys.executable, '-c', code, 'rate', str(pool), '--rater', 'scripted', '--base-url', url, '--out', str(out),
            '--concurrency', str(concurrency), '--cache-dir', str(cache), '-q', '--timeout', '10']


def test_crash_run_sigkill_five_times_then_complete(tmp_path):
    s = _samples(N)
    pool = tmp_path / 'pool.jsonl'
    pd.DataFrame(s).to_json(pool, orient='records', lines=True)
    conc, rng = 16, random.Random(0)
    env = {**os.environ, 'OPENAI_API_KEY': SECRET, 'HF_HUB_OFFLINE': '1'}
    logp = tmp_path / 'server.jsonl'
    kills = 0
    with spawn_scripted(latency=0.03, log_path=logp) as url:
        cmd = _cli_cmd(pool, url, tmp_path / 'run', tmp_path / 'cache', conc)
        for k in range(5):
            before = len(read_log(logp))
            target = before + rng.randint(40, 250)
            p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            t0 = time.time()
            while len(read_log(logp)) < target and p.poll() is None and time.time() - t0 < 120: time.sleep(0.02)
            assert p.poll() is None, f'run {k} ended before it could be killed: {p.stderr.read()[-1000:]}'
            p.send_signal(signal.SIGKILL); p.wait(); p.stderr.close(); kills += 1
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-2000:]
    df = export_ratings(tmp_path / 'run')
    assert len(df) == N and df.id.is_unique and set(df.status) == {'ok'}
    keys = {sample_key(render_conversation(x['messages'])): x['id'] for x in s}
    per = collections.Counter(x['sample'] for x in read_log(logp))
    assert set(per) == set(keys)
    twice = sum(c - 1 for c in per.values())
    assert twice <= conc * kills, (twice, conc * kills)
    for f in tmp_path.rglob('*'):
        if f.is_file(): assert SECRET.encode() not in f.read_bytes(), f
    print(f'crash run: {kills} SIGKILLs, {sum(per.values())} requests for {N} samples, {twice} repeated (limit {conc * kills})')
