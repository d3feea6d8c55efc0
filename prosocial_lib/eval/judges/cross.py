"""Fine-tuned cross-encoder judges: MiniLM read end to end over a context, or a (context, reply) pair.

The architecture of ProsocialDialog's Canary and of sentence-transformers' ``CrossEncoder``: the encoder reads
the context (and the reply after a ``[SEP]``) as one sequence and a linear layer predicts the class; every weight
is fine-tuned (Hugging Face ``Trainer``, cross-entropy). The linear layer reads the *mean* of the token vectors,
the pooling all-MiniLM-L6-v2 was trained with (its ``[CLS]`` vector was never trained to mean anything), and
starts as a linear probe on the frozen encoder (LP-FT), so a few hundred steps on a CPU are enough to learn.
When a pair is too long, the longer of context and reply is cut first, from the left, so the user's last turn
and the end of the reply stay in view. After training, one temperature (Guo et al., 2017) is fitted on held-out
calibration examples so the probabilities can be read as probabilities.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .encoder import JudgeError, encoder_path


def _mean_pool_classifier_class():
    import torch
    from transformers.modeling_outputs import SequenceClassifierOutput

    class _MeanPoolClassifier(torch.nn.Module):
        """A transformers encoder, mean pooling over the attention mask, dropout and a linear layer.

        ``forward`` takes the tokenizer's tensors (and ``labels``) and returns a ``SequenceClassifierOutput``
        (cross-entropy loss when labels are given), so ``transformers.Trainer`` trains it as it trains
        ``AutoModelForSequenceClassification``."""

        def __init__(self, encoder, num_labels: int, dropout: float = 0.1):
            super().__init__()
            self.encoder = encoder
            self.dropout = torch.nn.Dropout(dropout)
            self.classifier = torch.nn.Linear(encoder.config.hidden_size, num_labels)
            torch.nn.init.zeros_(self.classifier.weight)
            torch.nn.init.zeros_(self.classifier.bias)

        def pool(self, input_ids, attention_mask, token_type_ids=None):
            """``(batch, hidden)`` mean of the encoder's token vectors over the attention mask."""
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                                  token_type_ids=token_type_ids).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

        def forward(self, input_ids, attention_mask, token_type_ids=None, labels=None):
            logits = self.classifier(self.dropout(self.pool(input_ids, attention_mask, token_type_ids)))
            loss = torch.nn.functional.cross_entropy(logits, labels) if labels is not None else None
            return SequenceClassifierOutput(loss=loss, logits=logits)

    return _MeanPoolClassifier


def mean_pool_classifier(model_dir: str | os.PathLike, num_labels: int, device: str = "cpu"):
    """The encoder in ``model_dir`` (transformers ``AutoModel``) with a new mean-pooling linear classifier of
    ``num_labels`` outputs (zero-initialised; :func:`train_cross_encoder` then sets it to a linear probe)."""
    from transformers import AutoModel

    return _mean_pool_classifier_class()(AutoModel.from_pretrained(str(model_dir)), num_labels).to(device)


@dataclass(frozen=True)
class CrossEncoderSettings:
    """How a cross-encoder judge is fine-tuned (the ``judges`` config section fills it)."""

    epochs: float = 2.0  # passes over the training examples
    learning_rate: float = 5e-5  # the encoder's AdamW peak learning rate (linear warm-up over 10% of the steps)
    head_learning_rate: float = 5e-4  # the classifier's (it starts from the linear probe, see train_cross_encoder)
    probe_C: float = 1.0  # inverse L2 strength of the linear probe that initialises the classifier
    batch_size: int = 32  # examples per step
    max_length: int = 128  # word pieces per example (the longer of context and reply is cut first, from the left)
    max_steps: int = -1  # > 0 overrides epochs (the smoke preset)
    seed: int = 0


class CrossEncoderJudge:
    """A fine-tuned sequence classifier over texts (``kind="text"``) or (context, reply) pairs (``kind="pair"``).

    Attributes: ``model`` (the encoder with its mean-pooling classifier, :func:`mean_pool_classifier`),
    ``tokenizer``, ``labels`` (the class names, in output order), ``kind``, ``temperature`` (divides the logits;
    1.0 until calibrated), ``max_length`` and ``batch_size`` (scoring).
    """

    def __init__(self, model, tokenizer, labels: Sequence, kind: str, *, temperature: float = 1.0,
                 max_length: int = 128, batch_size: int = 64):
        if kind not in ("text", "pair"):
            raise JudgeError(f"cross-encoder kind must be 'text' or 'pair', got {kind!r}")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.labels, self.kind = list(labels), kind
        self.temperature, self.max_length, self.batch_size = float(temperature), int(max_length), int(batch_size)

    # -------------------------------------------------------------- scoring
    def _encode(self, inputs: Sequence, batch: bool = True):
        """Tokenise texts or (context, reply) pairs, cut to :attr:`max_length`: padded tensors (``batch``) or
        unpadded lists (a training set, padded per batch by the collator)."""
        kwargs = {"max_length": self.max_length, **({"padding": True, "return_tensors": "pt"} if batch else {})}
        if self.kind == "pair":
            return self.tokenizer([c for c, _ in inputs], [r for _, r in inputs], truncation="longest_first",
                                  **kwargs)
        return self.tokenizer(list(inputs), truncation=True, **kwargs)

    def _batched(self, inputs: Sequence, forward, width: int) -> np.ndarray:
        """``(n, width)`` float32 rows of ``forward(tokenised batch)``, batched longest first (little padding),
        without gradients, in input order."""
        import torch

        inputs = list(inputs)
        out = np.zeros((len(inputs), width), dtype=np.float32)
        order = sorted(range(len(inputs)), key=lambda i: -sum(len(t) for t in _parts(inputs[i])))
        device = next(self.model.parameters()).device
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                idx = order[start: start + self.batch_size]
                out[idx] = forward(self._encode([inputs[i] for i in idx]).to(device)).float().cpu().numpy()
        return out

    def logits(self, inputs: Sequence) -> np.ndarray:
        """Raw ``(n, len(labels))`` logits (float32), batched longest first so little padding is computed.

        Args:
            inputs: texts (``kind="text"``) or ``(context, reply)`` tuples (``kind="pair"``).
        """
        return self._batched(inputs, lambda enc: self.model(**enc).logits, len(self.labels))

    def predict_proba(self, inputs: Sequence) -> np.ndarray:
        """``(n, len(labels))`` calibrated class probabilities: ``softmax(logits / temperature)``."""
        return softmax(self.logits(inputs) / self.temperature)

    def fit_temperature(self, inputs: Sequence, labels: Sequence) -> float:
        """Fit :attr:`temperature` by minimising the negative log-likelihood of held-out examples (Guo et al.,
        2017, "On Calibration of Modern Neural Networks"; ``scipy.optimize.minimize_scalar`` on log T).

        Args:
            inputs: held-out examples the judge did not train on.
            labels: their classes (each in :attr:`labels`).

        Returns:
            The fitted temperature (also stored); 1.0 when there are no examples.
        """
        if not len(inputs):
            return self.temperature
        from scipy.optimize import minimize_scalar

        z = self.logits(inputs).astype(np.float64)
        y = np.array([self.labels.index(lab) for lab in labels])

        def nll(log_t: float) -> float:
            p = softmax(z / np.exp(log_t))
            return float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None)).mean())

        self.temperature = float(np.exp(minimize_scalar(nll, bounds=(-3.0, 3.0), method="bounded").x))
        return self.temperature

    # -------------------------------------------------------------- persistence
    def save(self, folder: str | os.PathLike) -> None:
        """Write the encoder and tokenizer (``save_pretrained``), the classifier (``classifier.pt``) and
        ``judge.json`` (labels, kind, temperature)."""
        import torch

        folder = Path(folder)
        self.model.encoder.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        torch.save({k: v.cpu() for k, v in self.model.classifier.state_dict().items()}, folder / "classifier.pt")
        (folder / "judge.json").write_text(json.dumps(
            {"labels": [str(x) for x in self.labels], "kind": self.kind, "temperature": self.temperature,
             "max_length": self.max_length}, indent=1))

    @classmethod
    def load(cls, folder: str | os.PathLike, device: str = "cpu") -> "CrossEncoderJudge":
        """The judge :meth:`save` wrote into ``folder``.

        Raises:
            JudgeError: no ``judge.json`` there.
        """
        from transformers import AutoTokenizer

        from ...modeling.loading import load_state_dict

        folder = Path(folder)
        meta_path = folder / "judge.json"
        if not meta_path.is_file():
            raise JudgeError(f"{folder}: no judge.json (not a saved cross-encoder judge)")
        meta = json.loads(meta_path.read_text())
        model = mean_pool_classifier(folder, len(meta["labels"]))
        model.classifier.load_state_dict(load_state_dict(folder / "classifier.pt"))
        model.to(device)
        tok = AutoTokenizer.from_pretrained(str(folder))
        return cls(model, tok, meta["labels"], meta["kind"], temperature=meta["temperature"],
                   max_length=meta["max_length"])


def _linear_probe_init(model, judge: "CrossEncoderJudge", inputs: list, targets: list[int], C: float, seed: int
                       ) -> None:
    """Set the classifier to a logistic regression (scikit-learn, lbfgs) on the frozen mean-pooled vectors."""
    import torch
    from sklearn.linear_model import LogisticRegression

    model.eval()
    pooled = judge._batched(inputs, lambda enc: model.pool(**enc), model.classifier.in_features)
    probe = LogisticRegression(C=C, max_iter=2000, random_state=seed).fit(pooled, targets)
    coef = np.zeros((model.classifier.out_features, pooled.shape[1]), dtype=np.float32)
    bias = np.full(model.classifier.out_features, -10.0, dtype=np.float32)  # a class absent from the data
    rows = probe.coef_ if len(probe.classes_) > 2 else np.vstack([-probe.coef_[0] / 2, probe.coef_[0] / 2])
    icpt = probe.intercept_ if len(probe.classes_) > 2 else np.array([-probe.intercept_[0] / 2,
                                                                      probe.intercept_[0] / 2])
    for k, cls in enumerate(probe.classes_):
        coef[int(cls)], bias[int(cls)] = rows[k], icpt[k]
    with torch.no_grad():
        model.classifier.weight.copy_(torch.from_numpy(coef))
        model.classifier.bias.copy_(torch.from_numpy(bias))
    model.train()


def _parts(x) -> tuple:
    return x if isinstance(x, tuple) else (x,)


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``(n, k)`` logits (float64, stable)."""
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def train_cross_encoder(inputs: Sequence, labels: Sequence, classes: Sequence, kind: str,
                        settings: CrossEncoderSettings = CrossEncoderSettings(), *, device: str = "cpu",
                        progress: bool = False, model_dir: str | os.PathLike | None = None) -> CrossEncoderJudge:
    """Fine-tune all-MiniLM-L6-v2 (or ``model_dir``) with a new classification layer on labelled examples.

    Uses ``transformers.Trainer`` (AdamW, linear schedule, 10% warm-up, weight decay 0.01, examples grouped by
    length, no checkpoints: a judge trains in minutes and is saved whole by its caller). The new classifier
    starts as a *linear probe* - a logistic regression fitted on the frozen encoder's mean-pooled vectors of the
    training examples - and everything is then fine-tuned ("LP-FT", Kumar et al. 2022): a few hundred steps on a
    CPU start from the frozen-embedding baseline instead of from chance. The classifier learns at
    ``head_learning_rate``, the pretrained encoder at ``learning_rate``.

    Args:
        inputs: texts (``kind="text"``) or ``(context, reply)`` tuples (``kind="pair"``).
        labels: one class per input, each in ``classes``.
        classes: the class names, in output order.
        kind: ``"text"`` or ``"pair"``.
        settings: epochs, learning rate, batch size, cut length, seed.
        device: where to train ("cpu", "cuda", ...).
        progress: show the Trainer's progress bar.
        model_dir: the encoder to start from (default: the packaged all-MiniLM-L6-v2).

    Returns:
        The trained :class:`CrossEncoderJudge` (temperature 1.0; see :meth:`CrossEncoderJudge.fit_temperature`).

    Raises:
        JudgeError: no inputs, lengths differ, a label outside ``classes``, or fewer than two classes present.

    References:
        Kim et al. (2022), ProsocialDialog's Canary; Reimers & Gurevych (2019), sentence-transformers'
        ``CrossEncoder``; Wang et al. (2020), MiniLM.
    """
    import datasets
    import torch
    from transformers import AutoTokenizer, DataCollatorWithPadding, Trainer, TrainingArguments

    inputs, labels, classes = list(inputs), list(labels), list(classes)
    if not inputs or len(inputs) != len(labels):
        raise JudgeError(f"a cross-encoder needs examples with one label each: got {len(inputs)} inputs and "
                         f"{len(labels)} labels")
    unknown = sorted({str(y) for y in labels} - {str(c) for c in classes})
    if unknown:
        raise JudgeError(f"labels {unknown} are not among the judge's classes {classes}")
    if len(set(labels)) < 2:
        raise JudgeError(f"a judge needs at least two classes in its training data, got only {sorted(set(labels))}")
    path = str(model_dir or encoder_path())
    tok = AutoTokenizer.from_pretrained(path)
    tok.truncation_side = "left"  # keep the end of a long context: the turn being answered
    model = mean_pool_classifier(path, len(classes), device=device)
    judge = CrossEncoderJudge(model, tok, classes, kind, max_length=settings.max_length)
    index = {c: i for i, c in enumerate(classes)}
    feats = judge._encode(inputs, batch=False)
    targets = [index[y] for y in labels]
    _linear_probe_init(model, judge, inputs, targets, settings.probe_C, settings.seed)
    ds = datasets.Dataset.from_dict({**feats, "labels": targets})
    with tempfile.TemporaryDirectory(prefix="judge-train-") as tmp:
        args = TrainingArguments(
            output_dir=tmp, num_train_epochs=settings.epochs, max_steps=settings.max_steps,
            per_device_train_batch_size=settings.batch_size, learning_rate=settings.learning_rate,
            warmup_steps=0.1, weight_decay=0.01, lr_scheduler_type="linear", train_sampling_strategy="group_by_length",
            save_strategy="no", report_to=[], logging_strategy="steps" if progress else "no", logging_steps=10,
            seed=settings.seed, data_seed=settings.seed,
            disable_tqdm=not progress, use_cpu=str(device) == "cpu", dataloader_num_workers=0)
        head = list(model.classifier.parameters())
        optimizer = torch.optim.AdamW(
            [{"params": [p for n, p in model.named_parameters() if not n.startswith("classifier.")],
              "lr": settings.learning_rate},
             {"params": head, "lr": settings.head_learning_rate}], weight_decay=0.01)
        Trainer(model=model, args=args, train_dataset=ds, data_collator=DataCollatorWithPadding(tok),
                optimizers=(optimizer, None)).train()
    model.to(device).eval()
    return judge
