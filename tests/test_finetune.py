"""llm_curate.finetune on SmolLM2-135M-Instruct (CPU, offline) with 32 real conversations of the bundled pool:
assistant-only masking checked token by token (ours and the labels TRL builds from it), a 3-step run with finite
losses, the loss falling over repeated steps on one batch, adapter save / reload / merge (same logits), resume
from a checkpoint, bad inputs and the CLI."""
import json, math, os
from dataclasses import replace
from pathlib import Path
import pytest

os.environ.setdefault('HF_HUB_OFFLINE', '1')
import torch, trl, peft  # noqa: F401  (CI installs every extra: a missing one must fail, not skip)

from llm_curate.data import load_samples, save_samples
from llm_curate.models import load_causal_lm
from llm_curate.finetune import (TULU_LORA, Recipe, as_messages_dataset, assistant_spans, finetune, load_finetuned,
                                 merge_adapter, set_chat_template, sft_dataset, tokenize_conversation)

ASSET = Path(__file__).resolve().parents[1] / 'llm_curate' / 'assets' / 't0_pool_5k.jsonl.gz'
TINY = dict(effective_batch=1, per_device_batch=1, lora_r=8, max_length=80, gradient_checkpointing=False,
            logging_steps=1, learning_rate=1e-3)


@pytest.fixture(scope='module')
def pool(tmp_path_factory):
    "32 short real conversations (so a CPU step takes a second)."
    ds = load_samples(ASSET, progress=False, cache_dir=tmp_path_factory.mktemp('cache')).select(range(400))
    keep = [i for i, m in enumerate(ds['messages']) if sum(len(t['content']) for t in m) < 160][:32]
    assert len(keep) == 32
    return ds.select(keep)


@pytest.fixture(scope='module')
def tok():
    return set_chat_template(load_causal_lm('smollm2')[1])


def _expected_mask(text, messages, ids, tokenizer):
    "Independent of the prefix-rendering method: find each ChatML assistant block by string search, then walk the tokens."
    regions, pos = [], 0
    for m in messages:
        if m['role'] != 'assistant': continue
        block = '<|im_start|>assistant\n' + m['content'] + '<|im_end|>\n'
        start = text.index(block, pos) + len('<|im_start|>assistant\n')
        pos = start + len(block) - len('<|im_start|>assistant\n')
        regions.append((start, pos))
    out, char = [], 0
    for j in range(len(ids)):
        out.append(int(any(a <= char < b for a, b in regions)))
        char = len(tokenizer.decode(ids[:j + 1]))
    return out


def test_mask_token_by_token(pool, tok):
    n_assist = 0
    for ex in pool:
        enc = tokenize_conversation(ex['messages'], tok)
        text, _ = assistant_spans(ex['messages'], tok)
        ids, mask = enc['input_ids'], enc['assistant_masks']
        assert tok.decode(ids) == text
        assert mask == _expected_mask(text, ex['messages'], ids, tok), ex['id']
        kept = tok.decode([t for t, m in zip(ids, mask) if m])
        assert kept == ''.join(m['content'] + '<|im_end|>\n' for m in ex['messages'] if m['role'] == 'assistant')
        n_assist += sum(mask)
    assert n_assist > 32


def test_trl_labels_follow_mask(pool, tok, tmp_path):
    "The labels TRL builds from our masks are the input ids on assistant tokens and -100 elsewhere."
    model, _ = load_causal_lm('smollm2')
    train, dropped = sft_dataset(pool, tok, max_length=80)
    cfg = trl.SFTConfig(output_dir=str(tmp_path), max_length=80, report_to='none', use_cpu=True, max_steps=1)
    tr = trl.SFTTrainer(model=model, args=cfg, train_dataset=train, processing_class=tok,
                        peft_config=peft.LoraConfig(r=4, target_modules='all-linear', task_type='CAUSAL_LM'))
    got = tr.train_dataset
    assert len(got) == len(train)
    for i in range(len(got)):
        want = [t if m else -100 for t, m in zip(train[i]['input_ids'], train[i]['assistant_masks'])]
        assert got[i]['labels'] == want
    batch = tr.data_collator([got[0], got[1]])
    assert (batch['labels'][batch['attention_mask'] == 0] == -100).all()


def test_tulu_format_and_truncation(pool):
    tok = set_chat_template(load_causal_lm('smollm2')[1], 'tulu')
    conv = [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'Hi'},
            {'role': 'assistant', 'content': 'Hello.'}]
    text, spans = assistant_spans(conv, tok)
    assert text == f'<|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\nHello.{tok.eos_token}\n'
    assert [text[a:b] for a, b in spans] == [f'Hello.{tok.eos_token}\n']
    long = [{'role': 'user', 'content': 'word ' * 200}, {'role': 'assistant', 'content': 'ok'}]
    ds, dropped = sft_dataset(list(pool.select(range(3))) + [{'messages': long}], tok, max_length=64)
    assert dropped == 1 and len(ds) == 3


def test_three_steps_adapter_merge_resume(pool, tmp_path):
    r = finetune(pool, 'smollm2', output_dir=tmp_path, max_steps=3, save_steps=3, progress=False, **TINY)
    losses = [h['loss'] for h in r.log_history if 'loss' in h]
    assert r.steps == 3 and len(losses) == 3 and all(math.isfinite(x) for x in losses)
    assert r.n_train + r.n_dropped == 32 and r.n_dropped == 0
    man = json.loads((tmp_path / 'finetune.json').read_text())
    assert man['steps'] == 3 and man['recipe']['lora_r'] == 8 and man['recipe']['lora_alpha'] == 16
    assert (r.adapter_dir / 'adapter_config.json').exists() and (r.merged_dir / 'config.json').exists()
    # reload the adapter on its base and compare with the merged weights
    pm, ptok = load_finetuned(r.adapter_dir, device='cpu')
    assert type(pm).__name__ == 'PeftModelForCausalLM'
    mm, _ = load_finetuned(tmp_path, device='cpu')
    x = ptok('<|im_start|>user\nName a colour.<|im_end|>\n', return_tensors='pt')
    with torch.no_grad():
        a, b = pm(**x).logits, mm(**x).logits
        with pm.disable_adapter(): c = pm(**x).logits
    assert torch.allclose(a, b, atol=1e-3), (a - b).abs().max()
    assert not torch.allclose(a, c, atol=1e-3)   # the adapter changed the model
    # resume: continue from checkpoint-3 to step 4
    r2 = finetune(pool, 'smollm2', output_dir=tmp_path, max_steps=4, resume=True, merge=False, progress=False, **TINY)
    assert r2.steps == 4
    assert json.loads((tmp_path / 'finetune.json').read_text())['resumed_from'].endswith('checkpoint-3')


def test_loss_falls_on_one_batch(pool, tmp_path):
    one = pool.select(range(1))
    r = finetune(one, 'smollm2', output_dir=tmp_path, max_steps=4, merge=False, progress=False,
                 **{**TINY, 'learning_rate': 5e-3, 'lora_dropout': 0.0,
                    'warmup_ratio': 0.0})
    losses = [h['loss'] for h in r.log_history if 'loss' in h]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.7 * losses[0], losses


def test_bad_inputs(pool):
    with pytest.raises(ValueError, match="no 'messages' column"): as_messages_dataset(pool.remove_columns('messages'))
    with pytest.raises(FileNotFoundError, match='Training data not found'): as_messages_dataset('/nonexistent/subset.jsonl')
    with pytest.raises(TypeError, match='Cannot train on'): as_messages_dataset(42)
    with pytest.raises(ValueError, match="'lora_r' parameter of Recipe"): replace(TULU_LORA, lora_r=0).validate()
    with pytest.raises(ValueError, match="'bf16' parameter"): replace(TULU_LORA, bf16='yes').validate()
    with pytest.raises(ValueError, match="'lora_dropout'"): finetune(pool, 'smollm2', lora_dropout=2.0)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match='needs a CUDA GPU'): finetune(pool, 'smollm2', qlora=True)


class _Sel:
    "Stands in for a Selection: anything with .to_dataset()."
    def __init__(self, ds): self.ds = ds
    def to_dataset(self): return self.ds


def test_selection_like_and_file(pool, tmp_path):
    assert len(as_messages_dataset(_Sel(pool))) == 32
    p = tmp_path / 'subset.jsonl'
    save_samples(pool, p)
    assert len(as_messages_dataset(p)) == 32


def test_cli(pool, tmp_path, capsys):
    from llm_curate.cli import main
    p = tmp_path / 'subset.jsonl'
    save_samples(pool.select(range(4)), p)
    rc = main(['finetune', str(p), '--base-model', 'smollm2', '--output-dir', str(tmp_path / 'run'), '--max-steps', '1',
               '--effective-batch', '1', '--per-device-batch', '1', '--max-length', '80', '--lora-r', '4', '--no-merge',
               '--gradient-checkpointing', '0'])
    assert rc == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out['steps'] == 1 and out['merged'] is None
    assert (tmp_path / 'run' / 'adapter' / 'adapter_config.json').exists()
