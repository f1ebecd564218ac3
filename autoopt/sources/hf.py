"""`hf:PATH`: a Hugging Face model (a `save_pretrained` directory, or a name already in the local Hugging Face
cache) and its tokenizer, as a pipeline file (hf_template.py with the settings filled in). Nothing is
downloaded: autoopt runs where a search's machine may have no internet.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from ..errors import ConfigError, option

TEMPLATE = Path(__file__).with_name("hf_template.py")
SETTINGS_BLOCK = re.compile(r"# --- settings \(written by autoopt\) ---\n.*?# --- end of settings ---\n", re.S)
TASKS = {"ForSequenceClassification": "classify", "ForTokenClassification": "token"}
SUPPORTED = ("encoders (BERT-like models that AutoModelForMaskedLM knows: feature extraction, pooled embeddings), "
             "sequence classification and token classification")
INSTALL = 'pip install -e ".[hf]" (or pip install transformers)'


def pipeline_text(ref: str, texts=None, seq_len=None, labels=None) -> str:
    """The pipeline file's text for model `ref`, with `texts` (a file, one text a line), `seq_len` (tokens;
    default: the longest text's, capped by the model) and `labels` (classify: a file of labels) filled in."""
    try:
        import transformers
    except ImportError:
        raise ConfigError(f"hf:{ref} needs transformers, which is not installed. Run: {INSTALL}") from None
    model_dir = _model_dir(ref)
    config = transformers.AutoConfig.from_pretrained(model_dir, local_files_only=True)
    task = _task(ref, config)
    lines = _lines(texts, "texts")
    if lines is None:
        logging.getLogger("autoopt").warning(
            "hf:%s without --texts: the inputs, calibration and metric use autoopt's 64 built-in English sentences, "
            "and the figures depend on them. Give --texts FILE (one text a line) with what the model will serve.", ref)
    elif len(lines) < 2:
        raise ConfigError(f"{option('texts', str(texts))} has {len(lines)} non-empty line(s). Expected at least 2 "
                          "(the metric and the calibration take disjoint halves): give more texts.")
    if labels is not None:
        _check_labels(labels, lines, texts, task, config)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    limit = min(x for x in (getattr(tokenizer, "model_max_length", None), getattr(config, "max_position_embeddings", None),
                            10**6) if x)
    if seq_len is None:
        from .hf_template import BUILT_IN_TEXTS

        seq_len = min(limit, max(len(tokenizer(t)["input_ids"]) for t in (lines or BUILT_IN_TEXTS)))
    elif seq_len > limit:
        raise ConfigError(f"{option('seq_len', seq_len)} is longer than hf:{ref} takes ({limit} tokens). "
                          f"Give --seq-len {limit} or less.")
    settings = {"NAME": re.sub(r"\W+", "_", Path(ref).name or "hf_model").strip("_") or "hf_model",
                "MODEL_DIR": str(model_dir), "TASK": task,
                "TEXTS_FILE": None if texts is None else str(Path(texts).resolve()), "SEQ_LEN": int(seq_len),
                "LABELS_FILE": None if labels is None else str(Path(labels).resolve())}
    block = "# --- settings (written by autoopt) ---\n" + "".join(f"{k} = {v!r}\n" for k, v in settings.items()) \
        + "# --- end of settings ---\n"
    return SETTINGS_BLOCK.sub(lambda _: block, TEMPLATE.read_text(), count=1)


def _model_dir(ref: str) -> Path:
    """A local directory, or the snapshot of `ref` in the local Hugging Face cache."""
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"hf:{ref}: the directory has no config.json. Expected a directory written by "
                              "save_pretrained (config.json, the weights, the tokenizer's files).")
        return path.resolve()
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(ref, local_files_only=True))
    except Exception:  # noqa: BLE001 - not a repo id, or not cached: one message either way
        raise ConfigError(f"hf:{ref}: not a local directory, and not in the local Hugging Face cache. autoopt downloads "
                          f"nothing: save the model with save_pretrained(DIR) (or `hf download {ref}` where there is "
                          "internet) and give hf:DIR.") from None


def _task(ref: str, config) -> str:
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    architectures = config.architectures or []
    for suffix, task in TASKS.items():
        if any(a.endswith(suffix) for a in architectures):
            return task
    if config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not config.is_encoder_decoder:
        return "encode"
    raise ConfigError(f"hf:{ref} is a {config.model_type} model ({', '.join(architectures) or 'no architecture named'}). "
                      f"Expected one of: {SUPPORTED}. For another kind, write a pipeline file (README, "
                      "\"The pipeline contract\").")


def _lines(path, name: str) -> list[str] | None:
    if path is None:
        return None
    try:
        return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{option(name, str(path))}: cannot read it ({getattr(exc, 'strerror', None) or exc}). "
                          "Expected a UTF-8 text file, one entry a line.") from None


def _check_labels(labels, lines, texts, task: str, config) -> None:
    if task != "classify":
        raise ConfigError(f"{option('labels', str(labels))} is for sequence classification models; this one's task is "
                          f"{task}. Drop --labels: the metric is then agreement with the original model.")
    given = _lines(labels, "labels")
    if lines is None or len(given) != len(lines):
        raise ConfigError(f"{option('labels', str(labels))} has {len(given)} labels for "
                          f"{'no --texts' if lines is None else f'{len(lines)} texts in {texts}'}. Expected one label a "
                          "line for each text of --texts.")
    names = config.label2id or {}
    bad = [x for x in given if not (x.lstrip("-").isdigit() and 0 <= int(x) < config.num_labels) and x not in names]
    if bad:
        raise ConfigError(f"{option('labels', str(labels))}: {bad[0]!r} is not a label of this model. Expected an index "
                          f"0..{config.num_labels - 1} or one of {sorted(names)}.")
