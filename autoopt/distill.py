"""Knowledge distillation: a pruned model (the student) learns to reproduce the original (the teacher).

The teacher is the pipeline's reference model (`build_reference`, else `build_model`), fp32, in eval
mode (no dropout); the student is the model right after pruning, before quantization, precision and
the runtime, trained in train mode (its dropout and batch norm as the model defines them).
Loss, per output tensor of the model's structure: on logits (an output whose name says "logit", or
a bare 2-D output) the KL divergence of the temperature-softened distributions (x T^2); on other
floating outputs (embeddings, features) the MSE over the teacher output's mean square, so that each
output weighs the same whatever its scale. Where the pipeline has labels (`make_batch` + `loss_fn`,
the training contract) its task loss is added. AdamW, a linear warm-up over the first 10% of the
steps, then cosine decay; seeded, so a build is repeatable.
Data (`distill_data`): the pipeline's `distill_data()`, else its labelled `make_batch` batches, else
`calibration_data()`, else seeded `make_inputs` batches; fewer than MIN_SAMPLES distinct samples is
said in the trial's note.
The student's weights are cached (cache.ArtifactCache("distilled")) by the fingerprints of the
student and the teacher, the steps, the data and RECIPE: the batch size, threads, quantization and
runtime variations of one pruning reuse it, and so does a resumed search.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import time
from dataclasses import dataclass

RECIPE = 1  # bump when the loss, optimizer, schedule or data handling changes: cached students go stale
LR = 5e-4
WEIGHT_DECAY = 0.01
WARMUP = 0.1  # fraction of the steps
TEMPERATURE = 2.0
BATCH = 32  # of the make_batch and make_inputs fallbacks
MAX_BATCHES = 256  # read from the pipeline's data
MIN_SAMPLES = 512  # distinct samples below which the data are too few to trust
TEACHER_MEMO_MB = 256  # the teacher's outputs kept per batch, up to this much memory


@dataclass
class Data:
    batches: list[tuple]  # the model's inputs, then the targets when `labeled`
    labeled: bool
    samples: int  # distinct samples among the batches
    source: str  # which pipeline function gave them

    def note(self) -> str | None:
        if self.samples >= MIN_SAMPLES:
            return None
        return (f"distillation saw only {self.samples} distinct samples (from {self.source}); fewer than "
                f"{MIN_SAMPLES} are too few to trust: give the pipeline distill_data()")

    def fingerprint(self) -> str:
        h = hashlib.sha256(f"{self.labeled}:{self.source}:{len(self.batches)}".encode())
        for batch in self.batches:
            for t in batch:
                h.update(t.detach().contiguous().reshape(-1).view(-1).numpy().tobytes())
        return h.hexdigest()[:16]


def distill_data(pipeline) -> Data:
    """The batches distillation trains on (see the module's docstring for the order)."""
    import torch

    from .pipeline import call_user

    if pipeline.distill_data is not None:
        batches = call_user(pipeline, "distill_data()",
                            lambda: [tuple(b) for b in itertools.islice(pipeline.distill_data(), MAX_BATCHES)])
        return Data(batches, False, _distinct(batches, len(batches[0]) if batches else 0), "distill_data()")
    n_inputs = pipeline.n_inputs()
    if pipeline.make_batch is not None and pipeline.loss_fn is not None:
        torch.manual_seed(0)
        batches = [tuple(call_user(pipeline, "make_batch", pipeline.make_batch, BATCH)) for _ in range(MAX_BATCHES)]
        return Data(batches, True, _distinct(batches, n_inputs), "make_batch()")
    if pipeline.calibration_data is not None:
        batches = call_user(pipeline, "calibration_data()",
                            lambda: [tuple(b) for b in itertools.islice(pipeline.calibration_data(), MAX_BATCHES)])
        return Data(batches, False, _distinct(batches, n_inputs), "calibration_data()")
    batches = []
    for seed in range(16):
        torch.manual_seed(seed)
        batches.append(tuple(pipeline.make_inputs(BATCH)))
    return Data(batches, False, _distinct(batches, n_inputs), "make_inputs()")


def _distinct(batches: list[tuple], n_inputs: int) -> int:
    seen = set()
    for batch in batches:
        rows = [t.detach().contiguous().reshape(t.shape[0], -1).numpy() for t in batch[:n_inputs]]
        for i in range(len(rows[0]) if rows else 0):
            seen.add(hashlib.sha1(b"".join(r[i].tobytes() for r in rows)).digest())
    return len(seen)


def loss(student_out, teacher_out):
    """The distillation loss of one batch: KL on logits, scaled MSE on other floating outputs (averaged)."""
    import torch
    import torch.nn.functional as F
    from torch.utils import _pytree as pytree

    s_leaves, spec = pytree.tree_flatten_with_path(student_out)
    t_leaves = pytree.tree_leaves(teacher_out)
    bare = spec.num_leaves == 1 and not s_leaves[0][0]
    terms = []
    for (path, s), t in zip(s_leaves, t_leaves):
        if not (isinstance(s, torch.Tensor) and s.is_floating_point()):
            continue
        s, t = s.float(), t.float()
        if "logit" in pytree.keystr(path).lower() or (bare and s.dim() == 2):
            terms.append(F.kl_div(F.log_softmax(s / TEMPERATURE, dim=-1), F.log_softmax(t / TEMPERATURE, dim=-1),
                                  reduction="batchmean", log_target=True) * TEMPERATURE ** 2)
        else:
            terms.append(F.mse_loss(s, t) / t.pow(2).mean().clamp(min=1e-8))
    return torch.stack(terms).mean()


def train(student, teacher, data: Data, steps: int, n_inputs: int, task_loss=None):
    """`steps` optimizer steps of the student against the teacher on `data`; returns the student in eval mode."""
    import torch
    from torch.utils import _pytree as pytree

    torch.manual_seed(0)
    teacher.eval()
    student.train()
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LR, weight_decay=WEIGHT_DECAY)
    warmup = max(1, int(WARMUP * steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(
        (step + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, steps - warmup))))))
    order, targets, kept_bytes = [], {}, 0
    for _ in range(steps):
        if not order:
            order = torch.randperm(len(data.batches)).tolist()
        index = order.pop()
        batch = data.batches[index]
        inputs = batch[:n_inputs]
        target = targets.get(index)
        if target is None:
            with torch.no_grad():
                target = teacher(*inputs)
            size = sum(t.numel() * t.element_size() for t in pytree.tree_leaves(target) if isinstance(t, torch.Tensor))
            if kept_bytes + size <= TEACHER_MEMO_MB * 1e6:  # the data repeat: each batch's targets computed once
                targets[index], kept_bytes = target, kept_bytes + size
        out = student(*inputs)
        value = loss(out, target)
        if data.labeled and task_loss is not None:
            value = value + task_loss(out, batch)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
        schedule.step()
    return student.eval()


def distilled(student, pipeline, steps: int, example_inputs: tuple, workdir: str):
    """The student trained by distillation (from the cache when this one was trained before) and a
    report: distill_s (training seconds; 0.0 on a cache hit), distill_samples, and the data's note."""
    import torch

    from .cache import ArtifactCache, model_fingerprint
    from .pipeline import call_user

    teacher = call_user(pipeline, "build_reference()" if pipeline.build_reference else "build_model()",
                        pipeline.reference_model).float().eval()
    data = distill_data(pipeline)
    key = model_fingerprint(student, example_inputs, teacher=model_fingerprint(teacher, example_inputs),
                            steps=steps, data=data.fingerprint(), recipe=RECIPE, torch=torch.__version__)
    started, trained = time.perf_counter(), []

    def build():
        train(student, teacher, data, steps, len(example_inputs), pipeline.loss_fn)
        trained.append(True)
        path = os.path.join(workdir, "student.pt")
        torch.save(student.state_dict(), path)
        return path, {"samples": data.samples, "source": data.source}

    path, _ = ArtifactCache("distilled").get_or_build(key, "student.pt", build, workdir)
    if not trained:
        student.load_state_dict(torch.load(path, weights_only=True))
    report = {"distill_s": time.perf_counter() - started if trained else 0.0, "distill_samples": data.samples}
    return student.eval(), report, data.note()
