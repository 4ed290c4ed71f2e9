"""Local rating throughput: our transformers backend vs the reference approach, on the same model and prompts.

Reference (the DS2 authors' local rating loop): HF `generate` WITHOUT a KV cache (`use_cache=False`), batches of 30,
128 new tokens, sampling. Ours (`llm_curate.rate_local.LocalEngine`, what `TransformersRater` runs): length-sorted
batches, left padding, KV cache, the rubric prefix's KV cache computed once and reused, rows leaving the batch at EOS;
JSON mode = greedy generation up to 128 tokens; logprob mode = one forward pass per batch, no generation.

    python benchmarks/rate_local.py                       # CPU, SmolLM2-135M-Instruct (bundled GGUF), a few batches
    python benchmarks/rate_local.py --model llama-8b      # GPU, Llama-3.1-8B-shaped model with random weights (no download)
    python benchmarks/rate_local.py --scaling 600         # CPU: the demo's logprob rating, 1 process vs worker processes

--scaling N rates N pool samples the way `llm_curate demo` does (logprob mode, 'Overall rating: ' prefill, samples cut to
96 tokens, bfloat16 where the CPU has it) with TransformersRater three ways, each timed from a fresh rater to the last
stored rating (model loading included): one process of 1 thread, one process of all the CPU's threads, and worker
processes of 1 thread each (`workers=`). torch's threads spin-wait for each other, so one process of many threads
slows down badly when anything else runs; separate processes share a busy CPU gracefully.

The prompts are the DS2 rubric over samples of the bundled 5k pool, cut in the middle to --sample-tokens tokens.
On CPU the reference is slow (every new token re-reads the whole prompt): by default it runs --ref-steps new tokens
of one batch and its time for 128 tokens is extrapolated with its exact cost model (step t costs a forward pass over
prompt + t tokens, measured per token); pass --ref-steps 128 to measure it in full.
"""
import argparse, os, sys, time
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
import numpy as np


def build_model(name, device, dtype, layers=None):
    import torch
    from llm_curate.models import load_causal_lm
    m, tok = load_causal_lm('smollm2', dtype=dtype, device='cpu' if name != 'smollm2' else device)
    if name == 'smollm2': return m, tok
    from transformers import LlamaConfig, LlamaForCausalLM
    # Llama-3.1-8B's shape (config only, random weights); SmolLM2's tokenizer stands in (ids < its vocabulary)
    cfg = LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=layers or 32,
                      num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192, rope_theta=500000.0,
                      rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    if name == 'llama-tiny': cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads, cfg.num_key_value_heads = 256, 512, 8, 2
    torch.manual_seed(0)
    with torch.device(device):
        big = LlamaForCausalLM(cfg).to(getattr(torch, dtype))
    big.eval(); big.generation_config.pad_token_id = tok.pad_token_id
    del m
    return big, tok


def prompts(tok, n, sample_tokens):
    from importlib import resources
    from llm_curate.data import load_samples
    from llm_curate.rubric import DS2_RUBRIC
    ds = load_samples(str(resources.files('llm_curate').joinpath('assets', 't0_pool_5k.jsonl.gz')), progress=False)
    count = lambda s: len(tok.encode(s, add_special_tokens=False))
    js = [DS2_RUBRIC.messages(ds[i]['messages'], 'json', sample_tokens, count)[0] for i in range(n)]
    lp = [DS2_RUBRIC.messages(ds[i]['messages'], 'logprob', sample_tokens, count)[0] for i in range(n)]
    return js, lp


def sync(device):
    import torch
    if str(device).startswith('cuda'): torch.cuda.synchronize()


def reference(m, tok, convs, batch, new_tokens, steps, device):
    "HF generate without KV cache, sampling; returns (seconds for all convs with `new_tokens`, measured?, details)."
    import torch
    tok.padding_side = 'left'
    batches = [convs[i:i + batch] for i in range(0, len(convs), batch)]
    total, details = 0.0, []
    for b in batches:
        enc = tok.apply_chat_template(b, add_generation_prompt=True, return_tensors='pt', padding=True, return_dict=True).to(device)
        P = enc['input_ids'].shape[1]
        sync(device); t0 = time.perf_counter()
        with torch.inference_mode():
            out = m.generate(**enc, max_new_tokens=steps, min_new_tokens=steps, do_sample=True, temperature=1.0,
                             use_cache=False, pad_token_id=tok.pad_token_id)
        sync(device); dt = time.perf_counter() - t0
        # cost model: step t forwards the whole sequence of P + t tokens
        done_cost = sum(P + t for t in range(steps)); full_cost = sum(P + t for t in range(new_tokens))
        total += dt * full_cost / done_cost
        details.append((len(b), P, steps, round(dt, 2)))
        if steps < new_tokens: break   # extrapolating: one batch gives the per-token cost
    if steps < new_tokens: total *= len(batches)  # the same (padded) cost for every batch of this size
    return total, steps >= new_tokens, details


def scaling(n, sample_tokens=96, workers=None):
    "Samples/s of the demo's logprob rating: one process (1 thread, all threads) vs worker processes of 1 thread."
    from llm_curate.data import load_samples
    from llm_curate.pipeline import demo_pool
    from llm_curate.rate_local import TransformersRater
    cpus = os.cpu_count() or 1
    w = workers or min(4, cpus)
    ds = load_samples(str(demo_pool()), progress=False).select(range(n))
    kw = dict(mode='logprob', max_sample_tokens=sample_tokens, logprob_prefill='Overall rating: ', name='smollm2:demo')
    TransformersRater('smollm2', **kw).tokenizer()   # converts the GGUF file once, outside the timings
    ways = [('1 process x 1 thread', dict(num_threads=1)), (f'1 process x {cpus} threads', dict(num_threads=cpus)),
            (f'{w} processes x 1 thread', dict(workers=w, num_threads=1))]
    print(f'demo rating of {n} samples (cut to {sample_tokens} tokens), {cpus} CPUs, load {os.getloadavg()[0]:.1f}:')
    base = None
    for label, extra in ways:
        t0 = time.perf_counter()
        df = TransformersRater('smollm2', **kw, **extra).rate(ds, progress=False)
        dt = time.perf_counter() - t0
        base = base or dt
        print(f'  {label:<24}: {n / dt:7.1f} samples/s  {dt:6.1f} s  ({base / dt:.2f}x the first; {int((df.status == "ok").sum())} ok; '
              f'load {os.getloadavg()[0]:.1f})', flush=True)
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--model', default='smollm2', choices=['smollm2', 'llama-8b', 'llama-tiny'])
    ap.add_argument('--device', default=None)
    ap.add_argument('--dtype', default='bfloat16')
    ap.add_argument('--samples', type=int, default=None, help='default 60 on CPU, 300 on GPU')
    ap.add_argument('--sample-tokens', type=int, default=128, help='samples cut in the middle to this many tokens')
    ap.add_argument('--batch', type=int, default=30, help='reference batch size')
    ap.add_argument('--new-tokens', type=int, default=128)
    ap.add_argument('--ref-steps', type=int, default=None, help='reference tokens actually generated (default 16 on CPU, all on GPU)')
    ap.add_argument('--our-batch', type=int, default=None, help='our prompts per forward pass (default 8 CPU / 64 GPU)')
    ap.add_argument('--threads', type=int, default=None, help='torch CPU threads (1 is far faster on a busy shared machine)')
    ap.add_argument('--layers', type=int, default=None, help='override the Llama layer count (smoke tests)')
    ap.add_argument('--scaling', type=int, default=None, metavar='N', help='only the CPU process/thread comparison on N samples')
    ap.add_argument('--workers', type=int, default=None, help='worker processes for --scaling (default min(4, CPUs))')
    a = ap.parse_args(argv)
    if a.scaling: return scaling(a.scaling, workers=a.workers)
    import torch
    if a.threads: torch.set_num_threads(a.threads)
    device = a.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    gpu = device.startswith('cuda')
    n = a.samples or (300 if gpu else 60)
    steps = a.ref_steps or (a.new_tokens if gpu else 16)
    from llm_curate.rate_local import LocalEngine
    m, tok = build_model(a.model, device, a.dtype, a.layers)
    js, lp = prompts(tok, n, a.sample_tokens)
    print(f'model {a.model} on {device} ({a.dtype}, {torch.get_num_threads()} threads), {n} samples cut to {a.sample_tokens} tokens')
    eng = LocalEngine(m, tok, batch_size=a.our_batch or (64 if gpu else 8), max_batch_tokens=65536 if gpu else 8192)
    eng.generate(js[:2], max_new_tokens=2); eng.score(lp[:2])  # warm-up
    for k in eng.stats: eng.stats[k] = 0 if k != 'seconds' else 0.0
    sync(device); t0 = time.perf_counter()
    gen = eng.generate(js, max_new_tokens=a.new_tokens)
    sync(device); t_json = time.perf_counter() - t0
    st = dict(eng.stats)
    sync(device); t0 = time.perf_counter()
    sc = eng.score(lp)
    sync(device); t_lp = time.perf_counter() - t0
    ptoks = sum(g['prompt_tokens'] for g in gen); gtoks = sum(g['completion_tokens'] for g in gen)
    print(f'ours json    : {n / t_json:8.2f} samples/s  {t_json:7.1f} s  prompt {ptoks / t_json:8.0f} tok/s, generated {gtoks / t_json:7.0f} tok/s '
          f'({gtoks / n:.0f} tokens/sample; prefix reused for {st["reused_tokens"]} of {st["prompt_tokens"]} prompt tokens)')
    lpt = sum(s['prompt_tokens'] for s in sc)
    print(f'ours logprob : {n / t_lp:8.2f} samples/s  {t_lp:7.1f} s  prompt {lpt / t_lp:8.0f} tok/s  '
          f'(unreadable: {sum(s["score_probs"] is None for s in sc)})')
    t_ref, measured, details = reference(m, tok, js, a.batch, a.new_tokens, steps, device)
    print(f'reference    : {n / t_ref:8.2f} samples/s  {t_ref:7.1f} s  ({"measured" if measured else f"extrapolated from {steps} of {a.new_tokens} tokens"}; '
          f'batches (rows, padded prompt, tokens, s): {details})')
    print(f'speed-up     : json {t_ref / t_json:.1f}x, logprob {t_ref / t_lp:.1f}x (samples/s ours / reference)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
