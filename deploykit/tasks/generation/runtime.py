"""The torch-free generation runtime: a decoder's ONNX graph with its key/value cache, sampling,
stop conditions and an iteration-level scheduler.

It reads a ``text-generation`` artifact by its manifest alone (every file's size and sha256
checked before anything loads, the variant chosen by ``Manifest.pick``), tokenizes with the
``tokenizers`` library and renders chat templates with jinja2's sandbox (as transformers does).

How a batch runs (``Scheduler``): sequences wait in a queue; between two decoding steps the
scheduler admits waiting ones while the batch has room (``max_batch_size``) and the cache stays
within ``max_cache_tokens``, runs their prompts through the graph together (prefill, left
padded), and appends their caches to the running batch's; then one decoding step feeds every
running sequence's last token. A finished or cancelled sequence leaves the batch before the next
step. Every row of the batch cache is right-aligned (left padded, masked out), positions are each
sequence's own, and each sequence samples with its own random generator, so a sequence's tokens
do not depend on its batch mates (up to float rounding, which flips a greedy choice only on a
near tie).

Why hand-written rather than onnxruntime-genai: its model builder needs a newer transformers
than the exporter allows (docs/architecture.md), and ``ORTModelForCausalLM`` needs torch.

Imports only numpy, onnxruntime, tokenizers, jinja2, the standard library and deploykit's
errors, manifest, session and the task's head: never torch, transformers or datasets.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from deploykit.errors import BadInputError
from deploykit.manifest import TOKENIZER, Manifest, device_of
from deploykit.session import session
from deploykit.tasks.generation.head import Generation

log = logging.getLogger(__name__)

_NP_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
FINISH_REASONS = ("stop", "length", "cancelled")


@dataclass(frozen=True)
class Sampling:
    """How one sequence picks its tokens and when it stops.

    ``temperature`` 0 is greedy; otherwise tokens are drawn from the softmax of logits /
    temperature restricted to the ``top_k`` most likely (0: all) and to the smallest set whose
    probability reaches ``top_p``, with the sequence's own ``numpy`` generator seeded by ``seed``
    (None: fresh entropy). Generation stops at an EOS id (unless ``ignore_eos``), at the first of
    the ``stop`` strings (which is not part of the text), or after ``max_new_tokens``.
    """

    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False

    def check(self) -> "Sampling":
        """Raises BadInputError naming the setting that is out of range."""
        if self.max_new_tokens < 1:
            raise BadInputError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if not 0 <= self.temperature <= 100:
            raise BadInputError(f"temperature must be in [0, 100], got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise BadInputError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise BadInputError(f"top_k must be >= 0 (0: no limit), got {self.top_k}")
        if self.seed is not None and self.seed < 0:  # numpy's generators take non-negative seeds only
            raise BadInputError(f"seed must be a non-negative integer, got {self.seed}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise BadInputError("stop strings must be non-empty strings")
        return self


@dataclass
class Completion:
    """What one prompt produced."""

    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


@dataclass
class Seq:
    """One sequence in the scheduler: its prompt, sampling, progress and the text emitted so far.

    ``delta`` collects the text that became final since the last ``Scheduler.step`` (stop
    strings are held back until they can no longer start, partial UTF-8 until complete).
    """

    prompt: list[int]
    sampling: Sampling
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    emitted: int = 0
    finish_reason: str | None = None
    cancelled: bool = False
    rng: Any = None
    tag: Any = None  # the caller's handle (the service's request)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def length(self) -> int:
        return len(self.prompt) + len(self.tokens)

    @property
    def final_length(self) -> int:
        """The most tokens this sequence can hold in the cache."""
        return len(self.prompt) + self.sampling.max_new_tokens

    def completion(self) -> Completion:
        return Completion(self.text, list(self.tokens), self.finish_reason or "length", len(self.prompt))


@dataclass
class Event:
    """What one step did to one sequence: a token (None for a cancellation), its final text
    delta, and whether the sequence finished."""

    seq: Seq
    token: int | None
    delta: str
    finished: bool


class Generator:
    """A text-generation artifact loaded for inference: verified files, tokenizer, one session.

    Args:
        artifact: The artifact folder.
        variant: The variant to serve (default: ``Manifest.pick``'s choice for the device).
        threads: onnxruntime intra-op threads (default: the CPUs this process may use).
        providers: Execution providers in order of preference (default: CPU).
        max_batch_size: Most sequences decoded together.
        max_cache_tokens: Bound on the batch cache, in tokens: sequences x the longest one may
            grow to (prompt + max_new_tokens); a sequence waits until it fits.
        spin: Let idle intra-op threads busy-wait between the graph's operators and calls
            (onnxruntime's own default; ``deploykit.session.session``). A decoding step is
            hundreds of small operators called back to back, and waking the pool thread for
            each costs: one cached step of the 135M-parameter benchmark model at batch 8 took
            32 ms spinning vs 46-52 ms not (docs/benchmarks.md).

    Raises:
        BadInputError: Not a text-generation artifact, unknown or unservable variant, a graph
            whose inputs or outputs contradict the manifest, a bad budget.
        IntegrityError: A file does not match the manifest.
    """

    def __init__(self, artifact: str | Path, variant: str | None = None, *, threads: int | None = None,
                 providers: Sequence[str] | None = None, max_batch_size: int = 32,
                 max_cache_tokens: int = 65536, spin: bool = False) -> None:
        manifest = Manifest.verify(artifact)
        manifest.head_as(Generation)  # refuses another task before anything loads
        chosen = manifest.pick(variant, device_of(providers))
        self._setup(Path(artifact), manifest, chosen.name, threads=threads, providers=providers,
                    max_batch_size=max_batch_size, max_cache_tokens=max_cache_tokens, spin=spin)

    @classmethod
    def of_variant(cls, folder: str | Path, manifest: Manifest, variant: str, *,
                   threads: int | None = None, max_batch_size: int = 64) -> "Generator":
        """One variant as served, servable or not, without re-hashing files (export's parity)."""
        generator = cls.__new__(cls)
        generator._setup(Path(folder), manifest, variant, threads=threads, max_batch_size=max_batch_size)
        return generator

    def _setup(self, folder: Path, manifest: Manifest, variant: str, *, threads: int | None = None,
               providers: Sequence[str] | None = None, max_batch_size: int = 32,
               max_cache_tokens: int = 65536, spin: bool = False) -> None:
        if max_batch_size < 1 or max_cache_tokens < 1:
            raise BadInputError("max_batch_size and max_cache_tokens must be positive "
                                "(DEPLOYKIT_MAX_BATCH_SIZE / DEPLOYKIT_MAX_CACHE_TOKENS)")
        self.manifest = manifest
        self.head = manifest.head_as(Generation)
        self.name, self.variant = manifest.name, variant
        self.max_length = manifest.max_length
        self.max_batch_size, self.max_cache_tokens = int(max_batch_size), int(max_cache_tokens)
        self.eos = frozenset(self.head.eos_token_ids)
        model_file = folder / manifest.variants[variant].file
        self.session = session(model_file, manifest, threads=threads, providers=providers, spin=spin)
        graph_inputs = {i.name: i for i in self.session.get_inputs()}
        if set(graph_inputs) != set(manifest.inputs):
            raise BadInputError(f"{model_file} takes inputs {sorted(graph_inputs)} but the manifest lists "
                                f"{list(manifest.inputs)}; re-export the artifact")
        outputs = {o.name: o.shape for o in self.session.get_outputs()}
        cache = self.head.cache
        missing = [n for n in [self.head.output, *cache.present_names()] if n not in outputs]
        if missing:
            raise BadInputError(f"{model_file} lacks the outputs {missing} its manifest describes; re-export")
        width = (outputs[self.head.output] or [None])[-1]
        if isinstance(width, int) and width != self.head.vocab_size:
            raise BadInputError(f"{model_file} gives {width} logits per token but the manifest says the "
                                f"vocabulary has {self.head.vocab_size}; re-export the artifact")
        self.past_names, self.present_names = cache.past_names(), cache.present_names()
        self.cache_dtype = _NP_TYPES.get(graph_inputs[self.past_names[0]].type, np.float32)
        self.has_positions = "position_ids" in graph_inputs
        self.tokenizer = self._load_tokenizer(folder / TOKENIZER)
        self._template = None
        log.info("loaded %s variant %s (%s) for generation with %s", self.name, variant, model_file.name,
                 self.session.get_providers())

    @staticmethod
    def _load_tokenizer(path: Path) -> Any:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(path))
        tokenizer.no_padding()  # prompts are padded per batch on the left, by the scheduler
        tokenizer.no_truncation()  # a prompt longer than the context is refused, never cut silently
        return tokenizer

    # --- prompts ---------------------------------------------------------------------------

    def render_chat(self, messages: Sequence[dict[str, str]]) -> str:
        """The prompt text of a conversation: the artifact's chat template, up to the assistant's turn.

        Raises:
            BadInputError: The artifact has no chat template, or the messages are malformed.
        """
        if not self.head.chat_template:
            raise BadInputError(f"model {self.name} has no chat template; send a plain prompt "
                                "(/generate or /v1/completions) instead of chat messages")
        if self._template is None:
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            # transformers renders chat templates the same way: sandboxed, trimmed blocks.
            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            env.globals["raise_exception"] = _template_error
            self._template = env.from_string(self.head.chat_template)
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise BadInputError(f"message {i} must be an object with string 'role' and 'content'")
        special = {"bos_token": self._token_text(self.head.bos_token_id),
                   "eos_token": self._token_text(self.head.eos_token_ids[0])}
        try:
            return self._template.render(messages=list(messages), add_generation_prompt=True, **special)
        except BadInputError:
            raise
        except Exception as exc:  # a template error is the request's fault (its roles/order)
            raise BadInputError(f"the chat template refused these messages: {exc}") from None

    def _token_text(self, token: int | None) -> str:
        return "" if token is None else (self.tokenizer.id_to_token(token) or "")

    def encode(self, prompt: str | Sequence[dict[str, str]]) -> list[int]:
        """Token ids of a prompt: a plain string (with the tokenizer's special tokens, e.g. BOS,
        as in training) or chat messages rendered by the chat template (which holds its own)."""
        if isinstance(prompt, str):
            return list(self.tokenizer.encode(prompt).ids)
        return list(self.tokenizer.encode(self.render_chat(prompt), add_special_tokens=False).ids)

    def decode(self, tokens: Sequence[int]) -> str:
        return self.tokenizer.decode(list(tokens), skip_special_tokens=True)

    def sampling(self, **settings: Any) -> Sampling:
        """A ``Sampling`` from the given settings, the manifest's generation defaults for the rest."""
        values = {**self.head.defaults, **{k: v for k, v in settings.items() if v is not None}}
        stop = values.pop("stop", ()) or ()
        return Sampling(stop=(stop,) if isinstance(stop, str) else tuple(stop), **values).check()

    def check_fits(self, prompt_tokens: int, sampling: Sampling) -> None:
        """Refuse a prompt that cannot run: empty, or longer than the context or the cache bound allow.

        Raises:
            BadInputError: Naming the sizes and what to change.
        """
        if prompt_tokens < 1:
            raise BadInputError("the prompt is empty; send at least one token of text")
        total = prompt_tokens + sampling.max_new_tokens
        limit = min(self.max_length, self.max_cache_tokens)
        if total > limit:
            raise BadInputError(f"the prompt has {prompt_tokens} tokens; with max_new_tokens "
                                f"{sampling.max_new_tokens} that is {total}, over the limit of {limit} "
                                f"({'the model context' if limit == self.max_length else 'DEPLOYKIT_MAX_CACHE_TOKENS'}); "
                                "shorten the prompt or lower max_new_tokens")

    # --- the model -------------------------------------------------------------------------

    def forward(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray,
                past: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """One call of the graph: last-position logits [batch, vocab] and the new cache."""
        feeds = {"input_ids": ids, "attention_mask": mask, **dict(zip(self.past_names, past))}
        if self.has_positions:
            feeds["position_ids"] = positions
        out = self.session.run([self.head.output, *self.present_names], feeds)
        return out[0][:, -1, :], out[1:]

    def empty_cache(self, rows: int) -> list[np.ndarray]:
        c = self.head.cache
        return [np.zeros((rows, c.kv_heads, 0, c.head_size), self.cache_dtype) for _ in self.past_names]

    # --- convenience ------------------------------------------------------------------------

    def scheduler(self, max_batch_size: int | None = None) -> "Scheduler":
        """A fresh scheduler over this model."""
        return Scheduler(self, max_batch_size=max_batch_size or self.max_batch_size,
                         max_cache_tokens=self.max_cache_tokens)

    def generate_ids(self, prompts: Sequence[Sequence[int]], sampling: Sampling | Sequence[Sampling]) -> list[Completion]:
        """Generate for token-id prompts on one scheduler (all submitted at once).

        Args:
            prompts: Each prompt's token ids.
            sampling: One ``Sampling`` for all, or one per prompt.

        Returns:
            One ``Completion`` per prompt, in order.
        """
        settings = [sampling] * len(prompts) if isinstance(sampling, Sampling) else list(sampling)
        scheduler = self.scheduler()
        seqs = [scheduler.submit(list(p), s) for p, s in zip(prompts, settings)]
        scheduler.run()
        return [s.completion() for s in seqs]

    def generate(self, prompts: Sequence[str | Sequence[dict[str, str]]], max_new_tokens: int | None = None,
                 temperature: float | None = None, top_p: float | None = None, top_k: int | None = None,
                 seed: int | None = None, stop: str | Sequence[str] | None = None,
                 ignore_eos: bool = False) -> list[Completion]:
        """Complete prompts (strings, or chat messages), batched by the iteration-level scheduler.

        Args:
            prompts: Plain prompts or conversations.
            max_new_tokens, temperature, top_p, top_k: Sampling settings (default: the manifest's).
            seed: Seed of sampling; prompt ``i`` samples with ``seed + i`` (None: not reproducible).
            stop: Stop string(s).
            ignore_eos: Keep generating past EOS (benchmarks).

        Returns:
            One ``Completion`` per prompt, in order.

        Raises:
            BadInputError: A setting out of range, or a prompt that does not fit.
        """
        ids = [self.encode(p) for p in prompts]
        settings = [self.sampling(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                  top_k=top_k, seed=None if seed is None else seed + i, stop=stop,
                                  ignore_eos=ignore_eos) for i in range(len(prompts))]
        for tokens, s in zip(ids, settings):
            self.check_fits(len(tokens), s)
        return self.generate_ids(ids, settings)


def _template_error(message: str) -> None:
    raise BadInputError(f"the chat template refused these messages: {message}")


# --- sampling --------------------------------------------------------------------------------

def choose(logits: np.ndarray, sampling: Sampling, rng: Any) -> int:
    """The next token from one row of logits (greedy, or sampled with the sequence's generator)."""
    if sampling.temperature == 0:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / sampling.temperature
    order = np.argsort(-scaled, kind="stable")
    if sampling.top_k:
        order = order[:sampling.top_k]
    probs = np.exp(scaled[order] - scaled[order[0]])
    probs /= probs.sum()
    if sampling.top_p < 1:
        keep = int(np.searchsorted(np.cumsum(probs), sampling.top_p)) + 1
        order, probs = order[:keep], probs[:keep] / probs[:keep].sum()
    index = int(np.searchsorted(np.cumsum(probs), rng.random() * probs.sum(), side="right"))
    return int(order[min(index, len(order) - 1)])


def _held_back(text: str, stops: Iterable[str]) -> int:
    """How many trailing characters of ``text`` could be the start of a stop string."""
    held = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), held, -1):
            if text.endswith(stop[:n]):
                held = n
                break
    return held


# --- the iteration-level scheduler -------------------------------------------------------------

class Scheduler:
    """Continuous batching over one ``Generator``: sequences join and leave between steps.

    ``submit`` and ``cancel`` may be called from any thread; ``step`` from one thread at a time
    (the service's worker). Admission is FIFO and bounded by ``max_batch_size`` sequences and
    ``max_cache_tokens`` (sequences x the longest final length: the most the right-aligned batch
    cache can grow to before someone leaves), so memory never exceeds the bound.

    Args:
        generator: The loaded model.
        max_batch_size: Most sequences decoded together.
        max_cache_tokens: The cache bound, in tokens.
    """

    def __init__(self, generator: Generator, *, max_batch_size: int, max_cache_tokens: int) -> None:
        self.g = generator
        self.max_batch_size, self.max_cache_tokens = max_batch_size, max_cache_tokens
        self._waiting: deque[Seq] = deque()
        self._lock = threading.Lock()
        self.running: list[Seq] = []
        self._cache: list[np.ndarray] = []
        self._mask = np.zeros((0, 0), np.int64)

    # --- from any thread -------------------------------------------------------------------

    def submit(self, prompt: list[int], sampling: Sampling, tag: Any = None) -> Seq:
        """Queue a sequence; it joins the batch at a coming step.

        Raises:
            BadInputError: The prompt does not fit (see ``Generator.check_fits``).
        """
        self.g.check_fits(len(prompt), sampling)
        seq = Seq(list(prompt), sampling, rng=np.random.default_rng(sampling.seed), tag=tag)
        with self._lock:
            self._waiting.append(seq)
        return seq

    def cancel(self, seq: Seq) -> None:
        """Drop a sequence (its client left): it leaves the batch, freeing its cache, at the next step."""
        seq.cancelled = True

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def pending(self) -> list[Seq]:
        """The sequences waiting for a place, oldest first (a copy)."""
        with self._lock:
            return list(self._waiting)

    def abort(self) -> list[Event]:
        """Cancel every running and waiting sequence now (after a failed step: the batch cache
        may be half updated); returns their final events."""
        with self._lock:
            seqs = [*self.running, *self._waiting]
            self._waiting.clear()
        self.running, self._cache, self._mask = [], [], np.zeros((0, 0), np.int64)
        for seq in seqs:
            seq.finish_reason = seq.finish_reason or "cancelled"
        return [Event(seq, None, "", True) for seq in seqs]

    @property
    def busy(self) -> bool:
        return bool(self.running or self._waiting)

    @property
    def cache_tokens(self) -> int:
        """Tokens the batch cache holds now (rows x width, padding included)."""
        return int(self._mask.size)

    # --- the worker --------------------------------------------------------------------------

    def run(self) -> None:
        """Step until every submitted sequence has finished."""
        while self.busy:
            self.step()

    def step(self) -> list[Event]:
        """Admit waiting sequences (prefill gives their first token), then decode one token for
        every sequence that was running; finished and cancelled sequences leave.

        Returns:
            One event per sequence that got a token, finished or was dropped.
        """
        events = self._drop_cancelled()
        joined = self._admit()
        decoding = [s for s in self.running if s not in joined]
        if decoding:
            events += self._decode(decoding)
        if joined:
            events += self._prefill(joined)
        self._leave()
        return events

    def _drop_cancelled(self) -> list[Event]:
        events = []
        with self._lock:
            for seq in [s for s in self._waiting if s.cancelled]:
                self._waiting.remove(seq)
                seq.finish_reason = "cancelled"
                events.append(Event(seq, None, "", True))
        for seq in self.running:
            if seq.cancelled and not seq.finished:
                seq.finish_reason = "cancelled"
                events.append(Event(seq, None, "", True))
        self._leave()
        return events

    def _admit(self) -> list[Seq]:
        """Pop waiting sequences (FIFO) while the batch size and the cache bound allow."""
        joined: list[Seq] = []
        with self._lock:
            while self._waiting and len(self.running) + len(joined) < self.max_batch_size:
                rows = self.running + joined + [self._waiting[0]]
                if len(rows) * max(s.final_length for s in rows) > self.max_cache_tokens and (self.running or joined):
                    break
                joined.append(self._waiting.popleft())
        return joined

    def _prefill(self, joined: list[Seq]) -> list[Event]:
        """Run the joiners' prompts together (left padded) and append their caches to the batch's."""
        width = max(len(s.prompt) for s in joined)
        ids = np.full((len(joined), width), self.g.head.pad_token_id, np.int64)
        mask = np.zeros((len(joined), width), np.int64)
        for i, s in enumerate(joined):
            ids[i, width - len(s.prompt):] = s.prompt
            mask[i, width - len(s.prompt):] = 1
        # Positions count real tokens only, as transformers' generate computes them.
        positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
        logits, cache = self.g.forward(ids, mask, positions, self.g.empty_cache(len(joined)))
        self._append(joined, cache, mask)
        return [self._advance(s, row) for s, row in zip(joined, logits)]

    def _decode(self, rows: list[Seq]) -> list[Event]:
        """One token for every running sequence (they are the batch's rows, in order)."""
        ids = np.array([[s.tokens[-1]] for s in self.running], np.int64)
        positions = np.array([[s.length - 1] for s in self.running], np.int64)
        mask = np.concatenate([self._mask, np.ones((len(self.running), 1), np.int64)], axis=1)
        logits, self._cache = self.g.forward(ids, mask, positions, self._cache)
        self._mask = mask
        return [self._advance(s, row) for s, row in zip(self.running, logits) if s in rows]

    def _append(self, joined: list[Seq], cache: list[np.ndarray], mask: np.ndarray) -> None:
        """Append rows to the batch cache, left-padding whichever side is narrower."""
        if not self.running:
            self._cache, self._mask = cache, mask
        else:
            width = max(self._mask.shape[1], mask.shape[1])
            self._cache = [np.concatenate([_left_pad(a, width), _left_pad(b, width)], axis=0)
                           for a, b in zip(self._cache, cache)]
            self._mask = np.concatenate([_left_pad_mask(self._mask, width), _left_pad_mask(mask, width)], axis=0)
        self.running = self.running + joined

    def _leave(self) -> None:
        """Remove finished rows from the batch, then the columns that are padding in every row."""
        keep = [i for i, s in enumerate(self.running) if not s.finished]
        if len(keep) == len(self.running):
            return
        self.running = [self.running[i] for i in keep]
        if not keep:
            self._cache, self._mask = [], np.zeros((0, 0), np.int64)
            return
        mask = self._mask[keep]
        start = int(np.argmax(mask.any(axis=0)))  # first column some row still uses
        self._mask = np.ascontiguousarray(mask[:, start:])
        self._cache = [np.ascontiguousarray(c[keep][:, :, start:]) for c in self._cache]

    def _advance(self, seq: Seq, logits: np.ndarray) -> Event:
        """Pick the sequence's next token, extend its text, and decide whether it stops."""
        token = choose(logits, seq.sampling, seq.rng)
        s = seq.sampling
        if token in self.g.eos and not s.ignore_eos:
            seq.finish_reason = "stop"
            return Event(seq, token, self._flush(seq), True)
        seq.tokens.append(token)
        seq.text = self.g.decode(seq.tokens)
        if s.stop:
            hits = [i for i in (seq.text.find(stop, max(0, seq.emitted - len(stop))) for stop in s.stop) if i >= 0]
            if hits:
                seq.text = seq.text[:min(hits)]
                seq.finish_reason = "stop"
                return Event(seq, token, self._flush(seq), True)
        if len(seq.tokens) >= s.max_new_tokens or seq.length >= self.g.max_length:
            seq.finish_reason = "length"
            return Event(seq, token, self._flush(seq), True)
        ready = len(seq.text) - (_held_back(seq.text, s.stop) if s.stop else 0)
        if seq.text.endswith("\ufffd"):  # a character whose bytes are not all generated yet
            ready = min(ready, len(seq.text) - 1)
        delta = seq.text[seq.emitted:max(ready, seq.emitted)]
        seq.emitted += len(delta)
        return Event(seq, token, delta, False)

    @staticmethod
    def _flush(seq: Seq) -> str:
        delta = seq.text[seq.emitted:]
        seq.emitted = len(seq.text)
        return delta


def _left_pad(cache: np.ndarray, width: int) -> np.ndarray:
    missing = width - cache.shape[2]
    if missing == 0:
        return cache
    return np.pad(cache, ((0, 0), (0, 0), (missing, 0), (0, 0)))


def _left_pad_mask(mask: np.ndarray, width: int) -> np.ndarray:
    return np.pad(mask, ((0, 0), (width - mask.shape[1], 0)))
