"""Models brought as they are: hf:PATH (a tiny BERT and its WordPiece tokenizer, built and saved offline)."""

import json

import pytest
import torch
from typer.testing import CliRunner

from autoopt.cli import app

transformers = pytest.importorskip("transformers")
runner = CliRunner()
WORDS = ("the a committee neighbour engineer council announced questioned rebuilt described plan trains survey "
         "bridge report river yesterday debate morning protests cheaper results oldest pollution on of for").split()


def save_tiny_bert(folder, kind: str = "encoder"):
    """A 2-layer BERT of hidden size 32 and its tokenizer, saved as save_pretrained would for a real one."""
    folder.mkdir()
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, "."]) + "\n")
    tokenizer = transformers.BertTokenizerFast(vocab_file=str(vocab))
    config = transformers.BertConfig(vocab_size=len(WORDS) + 6, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=64, num_labels=3)
    torch.manual_seed(0)
    model = {"encoder": transformers.BertModel, "classifier": transformers.BertForSequenceClassification,
             "decoder": transformers.GPT2LMHeadModel}[kind]
    if kind == "decoder":
        config = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=len(WORDS) + 6)
    model(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def texts(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("\n".join(f"the {a} {b} the {c} yesterday ." for a in WORDS[2:6] for b in WORDS[6:10]
                              for c in WORDS[10:14]) + "\n")
    return path


def search(*args):
    return runner.invoke(app, ["search", *args, "--min-time", "0.05s", "--no-warm-start"])


@pytest.mark.slow
def test_hf_encoder_searches_exports_a_verified_bundle_and_saves_its_pipeline(tmp_path, texts):
    model = save_tiny_bert(tmp_path / "bert")
    saved = tmp_path / "pipeline_bert.py"
    space = tmp_path / "space.yaml"
    space.write_text("batch_size: [1, 8]\ncompile_mode: [eager, onnxruntime]\n")
    done = search(f"hf:{model}", "--texts", str(texts), "--trials", "4", "--space", str(space), "--export", "onnx",
                  "--out", str(tmp_path / "b"), "--save-pipeline", str(saved), "--tracking-uri", str(tmp_path / "store"),
                  "--seed", "0")
    assert done.exit_code == 0, done.output
    manifest = json.loads((tmp_path / "b" / "autoopt.json").read_text())
    assert manifest["format"] == "onnx" and manifest["verification"]["accuracy"] > 0.99
    assert manifest["padding"]["mask"] == "attention_mask"  # how a server must pad, said in the bundle
    assert manifest["padding"]["sequence_axis"] == "fixed: every input padded to 9 positions, as timed"
    text = saved.read_text()
    assert f"MODEL_DIR = {str(model)!r}" in text and "TASK = 'encode'" in text and "SEQ_LEN = 9" in text
    # The saved file is a pipeline like any other: the same search runs from it.
    again = search(str(saved), "--trials", "2", "--space", str(space), "--tracking-uri", str(tmp_path / "store2"))
    assert again.exit_code == 0, again.output


def test_a_classifier_gets_label_agreement_and_true_labels_give_an_accuracy(tmp_path, texts):
    from autoopt.pipeline import load_pipeline
    from autoopt.sources import pipeline_file

    model = save_tiny_bert(tmp_path / "cls", "classifier")
    pipe = load_pipeline(pipeline_file(f"hf:{model}", {"texts": str(texts)}))
    reference = pipe.build_model().eval()
    with torch.inference_mode():
        assert pipe.evaluate(reference) == 1.0  # agreement of the original with itself
        logits = reference(*pipe.make_inputs(4))
    assert logits.shape == (4, 3)
    lines = texts.read_text().splitlines()
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(["0", "1", "2"][i % 3] for i in range(len(lines))) + "\n")
    truth = load_pipeline(pipeline_file(f"hf:{model}", {"texts": str(texts), "labels": str(labels)}))
    with torch.inference_mode():
        accuracy = truth.evaluate(truth.build_model().eval())
    assert 0.0 <= accuracy < 1.0  # a random model does not know the true labels


@pytest.mark.parametrize("args, message", [
    (["hf:{tmp}/nowhere"], "hf:{tmp}/nowhere: not a local directory, and not in the local Hugging Face cache. autoopt "
                           "downloads nothing"),
    (["hf:{tmp}/gpt"], "is a gpt2 model (GPT2LMHeadModel). Expected one of: encoders"),
    (["hf:{tmp}/bert", "--texts", "{tmp}/missing.txt"], "--texts {tmp}/missing.txt: cannot read it"),
    (["hf:{tmp}/bert", "--seq-len", "65"], "--seq-len 65 is longer than hf:{tmp}/bert takes (64 tokens)"),
    (["hf:{tmp}/bert", "--labels", "{tmp}/t.txt", "--texts", "{tmp}/t.txt"], "--labels {tmp}/t.txt is for sequence "
                                                                            "classification models"),
    (["hf:{tmp}/cls", "--labels", "{tmp}/few.txt", "--texts", "{tmp}/t.txt"], "--labels {tmp}/few.txt has 1 labels for "),
    (["digits_cnn", "--texts", "{tmp}/t.txt"], "--texts belongs to a model brought as hf:PATH"),
    (["hf:{tmp}/bert", "--save-pipeline", "{tmp}/p.txt"], "--save-pipeline {tmp}/p.txt: expected a .py file name"),
])
def test_a_wrong_brought_model_or_setting_is_one_error_line(tmp_path, texts, args, message):
    save_tiny_bert(tmp_path / "bert")
    save_tiny_bert(tmp_path / "cls", "classifier")
    save_tiny_bert(tmp_path / "gpt", "decoder")
    (tmp_path / "few.txt").write_text("0\n")
    done = search(*[a.replace("{tmp}", str(tmp_path)) for a in args], "--tracking-uri", str(tmp_path / "store"),
                  "--dry-run")
    assert done.exit_code == 2, done.output
    assert message.replace("{tmp}", str(tmp_path)) in " ".join(done.output.split()), done.output
