"""Throughput of the `openai` rating backend vs the reference approach (16 threads, blocks of 1,024 with a barrier).

Both rate the same samples against the same scripted OpenAI-compatible server (its own process, lognormal service
time with median 300 ms and p99 3 s, the same capacity for both). Run: python benchmarks/rate_api.py [--n 5000]
"""
import argparse, concurrent.futures, statistics, sys, tempfile, time

from llm_curate.rubric import DS2_RUBRIC
from llm_curate.parse import parse_rating
from llm_curate.openai_rate import OpenAIRater
from llm_curate.testing import spawn_scripted


def samples(n):
    return [{'id': f's{i}', 'messages': [{'role': 'user', 'content': f'Explain topic number {i} in two sentences.'},
                                         {'role': 'assistant', 'content': f'Topic {i} is about item {i * 31 % 997}. It matters.'}]}
            for i in range(n)]


def reference(url, s, threads=16, block=1024):
    "The reference's approach: a pool of 16 threads over blocks of 1,024 samples, waiting for each block to finish."
    import openai
    client = openai.OpenAI(base_url=url, api_key='unused', max_retries=2, timeout=60)
    def one(x):
        msgs, _ = DS2_RUBRIC.messages(x['messages'])
        r = client.chat.completions.create(model='scripted', messages=msgs, max_tokens=256, temperature=0)
        return parse_rating(r.choices[0].message.content)
    out = []
    for i in range(0, len(s), block):
        with concurrent.futures.ThreadPoolExecutor(threads) as ex: out += list(ex.map(one, s[i:i + block]))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument('--n', type=int, default=5000, help='samples')
    ap.add_argument('--concurrency', type=int, default=256, help='requests in flight of our backend')
    ap.add_argument('--capacity', type=int, default=256, help='requests the server serves at once (both runs)')
    ap.add_argument('--median', type=float, default=0.3); ap.add_argument('--p99', type=float, default=3.0)
    a = ap.parse_args(argv)
    s = samples(a.n)
    with spawn_scripted(latency=(a.median, a.p99), max_concurrency=a.capacity) as url:
        with tempfile.TemporaryDirectory() as d:
            t = time.perf_counter()
            df = OpenAIRater('scripted', base_url=url, concurrency=a.concurrency, timeout=60).rate(s, out=d, progress=False)
            ours = time.perf_counter() - t
        assert len(df) == a.n and (df.status == 'ok').all(), df.status.value_counts()
        t = time.perf_counter()
        ref = reference(url, s)
        theirs = time.perf_counter() - t
        assert sum(r['status'] == 'ok' for r in ref) == a.n
    print(f'server: lognormal latency median {a.median} s, p99 {a.p99} s, capacity {a.capacity}; {a.n} samples')
    print(f'ours (openai backend, concurrency {a.concurrency}, crash-safe store): {ours:7.1f} s  {a.n / ours:7.1f} samples/s')
    print(f'reference (16 threads, blocks of 1,024):                  {theirs:7.1f} s  {a.n / theirs:7.1f} samples/s')
    print(f'throughput ratio: {theirs / ours:.1f}x (target >= 5x)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
