"""Causal-LM recipe (E2E data-to-text, instruction tuning) on tiny GPT-2 / Llama models built from configs."""

import json

import pytest
import torch

pytest.importorskip("sacrebleu")
pytest.importorskip("rouge_score")

from fourierft.recipes import cli  # noqa: E402
from fourierft.layer import FourierFTLayer  # noqa: E402
from fourierft.recipes import causal_lm as lm  # noqa: E402
from fourierft.recipes.data import DataError  # noqa: E402

WORDS = "name area food eatType pub restaurant coffee shop the is a in city centre riverside serves cheap italian french english near family friendly not The Vaults Alimentum [ ] , . instruction say hello world yes no".split()


def word_tokenizer(directory, chat: bool = False):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "<s>", "</s>"] + sorted(set(WORDS)))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.decoder = decoders.WordPiece(prefix="##")  # joins tokens with spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    if chat:
        fast.chat_template = "{% for m in messages %}<s> {{ m['content'] }} </s>{% endfor %}{% if add_generation_prompt %} say{% endif %}"
    fast.save_pretrained(directory)
    return len(vocab)


@pytest.fixture(scope="module")
def tiny_gpt2_dir(tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel

    d = tmp_path_factory.mktemp("gpt2")
    n = word_tokenizer(d)
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=n, n_positions=128, bos_token_id=2, eos_token_id=3, pad_token_id=0)).save_pretrained(d)
    return str(d)


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    d = tmp_path_factory.mktemp("llama")
    n = word_tokenizer(d, chat=True)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=n, max_position_embeddings=128, bos_token_id=2, eos_token_id=3, pad_token_id=0)).save_pretrained(d)
    return str(d)


@pytest.fixture
def e2e_files(tmp_path):
    rows = [
        ("name[The Vaults], eatType[pub]", "The Vaults is a pub ."),
        ("name[The Vaults], eatType[pub]", "The Vaults is a pub in the city centre .\nnear riverside"),
        ("name[Alimentum], food[italian]", "Alimentum serves italian food ."),
        ("name[Alimentum], food[french]", "Alimentum serves french food ."),
    ]
    import csv

    for split in ("train", "dev"):
        with open(tmp_path / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["mr", "ref"])
            w.writerows(rows * (6 if split == "train" else 1))
    return tmp_path / "train.csv", tmp_path / "dev.csv"


def test_e2e_reader_keeps_multiline_references(e2e_files):
    rows = lm.read_e2e(e2e_files[1])
    assert len(rows) == 4 and rows[1][1] == "The Vaults is a pub in the city centre .\nnear riverside"
    (e2e_files[0].parent / "bad.csv").write_text("meaning,text\na,b\n")
    with pytest.raises(DataError, match="E2E files need the columns mr and ref"):
        lm.read_e2e(e2e_files[0].parent / "bad.csv")


def test_loss_is_on_the_response_only(tiny_gpt2_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_gpt2_dir)
    prompt = lm.build_prompt(tok, "e2e", "name[The Vaults]")
    enc = lm.encode_pair(tok, prompt, " The Vaults is a pub .", 64, templated=False)
    n_prompt = len(tok(prompt)["input_ids"])
    assert enc["labels"][:n_prompt] == [-100] * n_prompt
    assert enc["labels"][n_prompt:] == enc["input_ids"][n_prompt:] and enc["input_ids"][-1] == tok.eos_token_id
    assert len(lm.encode_pair(tok, prompt, " The Vaults is a pub .", 5, templated=False)["input_ids"]) == 5


def test_e2e_gpt2_trains_scores_and_generates(tiny_gpt2_dir, e2e_files, tmp_path, capsys):
    cfg = lm.LMConfig(model=tiny_gpt2_dir, task="e2e", train_file=str(e2e_files[0]), eval_file=str(e2e_files[1]), output_dir=str(tmp_path / "run"),
                      n_frequency=200, epochs=3, batch_size=8, max_new_tokens=8, logging_steps=1, label_smoothing=0.1)  # default lr, scaling
    result = lm.train(cfg, quiet=True)
    layers = [m for m in result["model"].modules() if isinstance(m, FourierFTLayer)]
    assert len(layers) == 2 and all(m.specs["default"].slices == ((0, 32), (64, 96)) for m in layers)  # q and v of c_attn
    assert {"bleu", "chrf", "rougeL", "eval_loss"} <= set(result) and result["generated"] == 3  # 3 distinct MRs
    rows = [json.loads(line) for line in (tmp_path / "run" / "generations.jsonl").read_text().splitlines()]
    assert len(rows[0]["references"]) == 2 and all(isinstance(r["generated"], str) for r in rows)
    capsys.readouterr()
    cli.main(["generate", "--adapter", str(tmp_path / "run" / "adapter"), "--prompt", "name[Alimentum], food[italian]", "--max-new-tokens", "4"])
    printed = capsys.readouterr().out.splitlines()
    tok, model, _ = lm.load_for_generation(str(tmp_path / "run" / "adapter"))
    expected = lm.generate(model, tok, [lm.build_prompt(tok, "e2e", "name[Alimentum], food[italian]")], max_new_tokens=4)
    assert printed == expected
    full = lm.generate(result["model"], tok, [lm.build_prompt(tok, "e2e", "name[Alimentum], food[italian]")], max_new_tokens=4)
    assert full == expected  # the reloaded adapter generates what the trained one does


def test_instruction_tuning_with_chat_template_via_cli(tiny_llama_dir, tmp_path, capsys):
    records = [{"instruction": "say hello", "input": "", "output": "hello world"}, {"instruction": "say yes", "input": "world", "output": "yes"}] * 8
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "dev.json").write_text(json.dumps(records[:2]))
    cli.main(["train", "--model", tiny_llama_dir, "--task", "instruction", "--train-file", str(tmp_path / "train.jsonl"), "--eval-file", str(tmp_path / "dev.json"),
              "--output-dir", str(tmp_path / "run"), "n_frequency=100", "scaling=20", "epochs=1", "batch_size=4", "max_new_tokens=4", "logging_steps=1"])
    printed = capsys.readouterr().out
    results = json.loads(printed[printed.rindex('{\n  "train_seconds"') :])
    assert results["generated"] == 2
    # the reported ROUGE-L is the best-reference F1 of the written generations, recomputed here
    from rouge_score import rouge_scorer

    rows = [json.loads(line) for line in (tmp_path / "run" / "generations.jsonl").read_text().splitlines()]
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    want = 100 * sum(max(scorer.score(r, row["generated"])["rougeL"].fmeasure for r in row["references"]) for row in rows) / len(rows)
    assert len(rows) == 2 and results["rougeL"] == pytest.approx(want)
    # the same interface as every recipe: eval and predict through the CLI, routed by the adapter's run info
    cli.main(["eval", "--adapter", str(tmp_path / "run" / "adapter"), "--data", str(tmp_path / "dev.json")])
    printed = capsys.readouterr().out
    assert json.loads(printed[printed.index("{"):])["rougeL"] == pytest.approx(results["rougeL"])
    cli.main(["predict", "--adapter", str(tmp_path / "run" / "adapter"), "--data", str(tmp_path / "dev.json"), "--out", str(tmp_path / "gen.jsonl")])
    assert [json.loads(line)["generated"] for line in (tmp_path / "gen.jsonl").read_text().splitlines()] == [r["generated"] for r in rows]
    (tmp_path / "bad.jsonl").write_text(json.dumps({"prompt": "x"}) + "\n")
    with pytest.raises(DataError, match="record 1 needs the keys instruction and output"):
        lm.read_instructions(tmp_path / "bad.jsonl")


@pytest.mark.parametrize("method", ["lora", "full"])
def test_lm_comparison_methods(tiny_gpt2_dir, e2e_files, tmp_path, method):
    cfg = lm.LMConfig(model=tiny_gpt2_dir, task="e2e", train_file=str(e2e_files[0]), eval_file=str(e2e_files[1]), output_dir=str(tmp_path / method),
                      method=method, lr=1e-3, epochs=1, batch_size=8, max_new_tokens=4)
    result = lm.train(cfg, quiet=True)
    if method == "lora":
        assert result["trainable_parameters"] == 2 * 8 * (32 + 96)  # c_attn: 32 -> 96, two layers
    else:
        assert result["trainable_parameters"] == sum(p.numel() for p in result["model"].parameters())
    assert "bleu" in result and result["saved_bytes"] > 0


@pytest.mark.parametrize("method", ["fourierft", "lora"])
def test_all_linear_targets_in_the_recipe(tiny_gpt2_dir, e2e_files, tmp_path, method):
    """`target_modules=all-linear` on the command line (a one-item list) means PEFT's shorthand for every method."""
    from fourierft.recipes.config import coerce

    targets = coerce("target_modules", "all-linear", lm.LMConfig)
    cfg = lm.LMConfig(model=tiny_gpt2_dir, task="e2e", train_file=str(e2e_files[0]), eval_file=str(e2e_files[1]), output_dir=str(tmp_path / method),
                      method=method, target_modules=targets, n_frequency=50, lr=1e-3, epochs=1, batch_size=8, max_new_tokens=4)
    result = lm.train(cfg, quiet=True)
    per_layer = 8 * ((32 + 96) + (32 + 32) + (32 + 128) + (128 + 32)) if method == "lora" else 4 * 50  # c_attn, attn c_proj, c_fc, mlp c_proj
    assert result["trainable_parameters"] == 2 * per_layer


def test_only_the_main_process_writes_the_run_outputs(tiny_gpt2_dir, e2e_files, tmp_path, monkeypatch):
    """Under torchrun every process runs train(); only rank 0 may write the adapter, results and plots."""
    from transformers import Trainer

    monkeypatch.setattr(Trainer, "is_world_process_zero", lambda self: False)
    cfg = lm.LMConfig(model=tiny_gpt2_dir, task="e2e", train_file=str(e2e_files[0]), eval_file=str(e2e_files[1]), output_dir=str(tmp_path / "run"),
                      n_frequency=50, scaling=20.0, lr=1e-3, epochs=1, batch_size=8, max_new_tokens=4)
    result = lm.train(cfg, quiet=True)
    assert result["saved_bytes"] is None
    for name in ("adapter", "results.json", "plots", "generations.jsonl"):
        assert not (tmp_path / "run" / name).exists(), name


def test_two_processes_finish_one_run(tiny_gpt2_dir, e2e_files, tmp_path):
    """torchrun with 2 CPU processes (gloo): the run completes and its outputs are written once, whole."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import fourierft
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(fourierft.__file__).parents[1])}
    out = tmp_path / "two"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "fourierft.cli", "train",
         "--task", "e2e", "--model", tiny_gpt2_dir, "--train-file", str(e2e_files[0]), "--eval-file", str(e2e_files[1]), "--output-dir", str(out),
         "n_frequency=50", "scaling=20", "epochs=1", "batch_size=4", "max_new_tokens=4", "mixed_precision=no"],
        capture_output=True, text=True, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count('"train_seconds"') == 2  # both processes finish and report
    assert json.loads((out / "results.json").read_text())["generated"] == 3
    assert len((out / "generations.jsonl").read_text().splitlines()) == 3
    from fourierft import read_adapter_files

    read_adapter_files(out / "adapter")  # complete and consistent


def test_int8_base_through_the_recipe(tiny_llama_dir, tmp_path):
    """quantize=int8: torchao int8 weight-only linear layers (not lm_head) under the adapters; the run trains and saves."""
    pytest.importorskip("torchao")
    records = [{"instruction": "say hello", "input": "", "output": "hello world"}] * 8
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    cfg = lm.LMConfig(model=tiny_llama_dir, task="instruction", train_file=str(tmp_path / "train.jsonl"), output_dir=str(tmp_path / "run"),
                      n_frequency=50, scaling=20.0, epochs=2, batch_size=4, quantize="int8", target_modules=["q_proj", "v_proj"])
    result = lm.train(cfg, quiet=True)
    layers = [m for m in result["model"].modules() if getattr(m, "quantized", None)]
    assert len(layers) == 4 and all(m.quantized == "torchao" for m in layers)
    assert type(result["model"].model.lm_head.weight).__module__.startswith("torch")  # the head is left alone
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").exists()
    with pytest.raises(ValueError, match="quantize='int4'"):
        lm.train(lm.LMConfig(model=tiny_llama_dir, task="instruction", train_file=str(tmp_path / "train.jsonl"), output_dir=str(tmp_path / "bad"), quantize="int4"), quiet=True)
