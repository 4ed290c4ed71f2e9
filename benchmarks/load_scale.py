"""Load a generated 1M-row JSONL pool and report time and peak RSS (target: peak RSS < 1.5 GB).

    python benchmarks/load_scale.py [--rows 1000000] [--format alpaca|messages]

The load runs in a fresh child process so that its peak RSS (ru_maxrss) is its own. Also measured
side by side in the same run: `datasets.load_dataset('json', ...)` on the same file (no normalization,
no validation) as a reference point for speed and memory.
"""
import argparse, json, os, random, resource, subprocess, sys, tempfile, time
from pathlib import Path

CHILD = r'''
import json, resource, sys, time
t = time.perf_counter()
mode, path, cache = sys.argv[1:4]
if mode == 'llm_curate':
    from llm_curate.data import load_samples
    ds = load_samples(path, cache_dir=cache, progress=False)
    n = len(ds); first = ds[0]['id']
else:
    import datasets
    ds = datasets.load_dataset('json', data_files=path, split='train', cache_dir=cache)
    n = len(ds); first = None
print(json.dumps({'rows': n, 'seconds': time.perf_counter() - t,
                  'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
'''


def generate(path: Path, rows: int, fmt: str, seed: int = 0):
    rnd = random.Random(seed)
    words = 'the of and to in a is that for it as was with be by on not he this are or his from at which'.split()
    with open(path, 'w', encoding='utf-8') as f:
        for i in range(rows):
            q = ' '.join(rnd.choices(words, k=rnd.randint(8, 40))) + f' #{i}?'
            a = ' '.join(rnd.choices(words, k=rnd.randint(20, 120))) + '.'
            rec = ({'instruction': q, 'input': '', 'output': a} if fmt == 'alpaca' else
                   {'messages': [{'role': 'user', 'content': q}, {'role': 'assistant', 'content': a}]})
            f.write(json.dumps(rec) + '\n')


def run(mode, path, cache):
    out = subprocess.run([sys.executable, '-c', CHILD, mode, str(path), str(cache)], capture_output=True, text=True)
    if out.returncode: sys.exit(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--rows', type=int, default=1_000_000)
    ap.add_argument('--format', default='alpaca', choices=['alpaca', 'messages'])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        d = Path(d); path = d / 'pool.jsonl'
        t = time.perf_counter(); generate(path, args.rows, args.format)
        print(f"generated {args.rows:,} rows ({path.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t:.1f} s")
        ours = run('llm_curate', path, d / 'c1')
        ref = run('datasets', path, d / 'c2')
    print(f"{'loader':<28}{'rows':>10}{'seconds':>10}{'peak RSS MB':>14}")
    for name, r in (('llm_curate.load_samples', ours), ("datasets.load_dataset('json')", ref)):
        print(f"{name:<28}{r['rows']:>10,}{r['seconds']:>10.1f}{r['peak_rss_mb']:>14.0f}")
    print(f"peak RSS target < 1536 MB: {'PASS' if ours['peak_rss_mb'] < 1536 else 'FAIL'}; "
          f"time ratio ours/datasets = {ours['seconds'] / ref['seconds']:.2f} (ours also validates, normalizes and hashes)")


if __name__ == '__main__':
    main()
