"""Stage ``filter-vlm``: a vision-language model rates each surviving pair's subject consistency from 0 to 4.

UNO filters in two steps: DINOv2 similarity first, then a VLM's chain-of-thought consistency score on the pairs
DINOv2 kept. So this stage reads ``filtered.jsonl`` and scores only its kept pairs (the VLM is the expensive
filter; rejected pairs never reach it). The VLM sees the reference crop and the target crop with
:data:`PROMPT`: compare appearance, details and attributes step by step, then end with ``SCORE: <0-4>``, which
:func:`parse_reply` reads strictly. Each record of ``vlm.jsonl`` is the filtered record plus ``vlm_score`` (an
integer 0-4, or None), ``rationale`` (the reasoning, or the whole reply when it did not parse), ``vlm_attempts``,
``attempt_errors`` (each failed attempt's error, also when a later attempt succeeded), ``error`` (None, or one
sentence saying what failed) and ``kept`` (``vlm_score >= vlm_threshold``: the pair passed both filters).

Backends (``vlm`` in the config):

- ``world``: the exact checker's truth mapped to 0-4 (:func:`world_vlm_score`), a perfect VLM's upper bound;
- ``local``: a ``transformers`` vision-language model from a local folder (``AutoProcessor`` +
  ``AutoModelForImageTextToText``), greedy decoding with at most ``vlm_max_new_tokens``, ``vlm_batch_size``
  pairs per ``generate`` call. Its failures (out of memory, a wrong folder) stop the run, since they are not transient
  and the re-run resumes; a reply without a valid score is an error record;
- ``http``: an OpenAI-compatible ``/chat/completions`` endpoint (vLLM, TGI, a hosted API), the crops sent as
  base64 PNG data URLs, ``vlm_batch_size`` requests at a time, each retried ``vlm_attempts`` times with exponential
  backoff on timeouts, 408/429/5xx answers, bad JSON and unparsable replies (not one cut off at
  ``vlm_max_new_tokens``: the same budget would cut it again); a pair that fails every attempt is an error record
  listing each attempt's error, and the run goes on.

Pairs go through in fixed batches of the kept list (a batch a kill interrupted is scored again whole), so a
resumed run sends every pair in the same batch as an uninterrupted one, and error records are final like any
other (delete their lines to try them again).
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from ..errors import UnofluxError
from .config import SynthConfig
from .filter import FILTERED
from .generate import stage_inputs
from .manifest import Manifest

VLM = "vlm.jsonl"

PROMPT = """\
Image 1 is the reference: a crop of the subject. Image 2 is a crop of the subject in another scene.{subject}
Decide whether both images show the same individual subject. Ignore the background, pose, lighting and size.
Reason step by step, one short paragraph for each:
1. Appearance: overall shape, main colour, pattern.
2. Details: markings, emblems, logos, texture, small parts.
3. Attributes: anything else that makes it this subject and not a look-alike (proportions, secondary colours).
Then rate the consistency:
4 = the same subject, every detail matches;
3 = the same subject, one minor detail differs;
2 = the same kind of subject, several details differ;
1 = only the category is the same;
0 = different subjects, or a subject is missing.
End your reply with exactly one line of the form:
SCORE: <0-4>"""

# a line that is only "SCORE: n", markdown emphasis or backticks around it allowed (models like to add them)
_SCORE_LINE = re.compile(r"^[\s*_`#]*SCORE\s*:(?P<value>.*)$", re.IGNORECASE)


class ReplyError(ValueError):
    """A reply without exactly one valid ``SCORE: <0-4>`` line (the message says which way it is wrong)."""


def vlm_prompt(subject: str | None) -> str:
    """:data:`PROMPT` for a pair whose subject was prompted as ``subject`` (None: no description given)."""
    return PROMPT.format(subject=f" The subject was asked for as: {subject}." if subject else "")


def parse_reply(reply: str) -> tuple[int, str]:
    """(score, rationale) of a reply that ends with one ``SCORE: <0-4>`` line; the rationale is the text before it.

    Strict, since a misread score silently lets a bad pair through: exactly one SCORE line, the last non-empty
    line of the reply, holding one integer from 0 to 4."""
    lines = reply.strip().splitlines()
    found = [(i, m) for i, line in enumerate(lines) if (m := _SCORE_LINE.match(line))]
    if not found:
        raise ReplyError("the reply has no 'SCORE: <0-4>' line")
    if len(found) > 1:
        raise ReplyError(f"the reply has {len(found)} SCORE lines, not one")
    index, match = found[0]
    if index != len(lines) - 1:
        raise ReplyError("the SCORE line is not the reply's last line")
    value = match["value"].strip(" \t*_`")
    if not re.fullmatch(r"[+-]?\d+", value):
        raise ReplyError(f"SCORE {value!r} is not an integer from 0 to 4")
    if not 0 <= int(value) <= 4:
        raise ReplyError(f"SCORE {value} is outside 0-4")
    return int(value), "\n".join(lines[:index]).strip()


@dataclass(frozen=True)
class Verdict:
    score: int | None
    rationale: str | None
    attempts: int = 1
    errors: tuple[str, ...] = ()  # each failed attempt's error
    error: str | None = None  # what failed, when no attempt gave a score


def _cut(err: ReplyError, limit: int) -> str:
    """The parse error of a reply that ran out of tokens, saying so (its score line may never have come)."""
    return f"{err} (it stopped at vlm_max_new_tokens = {limit}; raise it)"


def _from_reply(reply: str, cut_at: int | None = None) -> Verdict:
    """One greedy reply's verdict (another try would give the same reply, so there is one attempt); ``cut_at``:
    the token budget the reply ran out of, if it did."""
    try:
        score, rationale = parse_reply(reply)
    except ReplyError as err:
        what = str(err) if cut_at is None else _cut(err, cut_at)
        return Verdict(None, reply, 1, (f"attempt 1: {what}",), f"unparsable reply: {what}")
    return Verdict(score, rationale)


# --------------------------------------------------------------------------------------------------- world
def world_vlm_score(truth: dict) -> int:
    """The exact checker's truth on the 0-4 scale of :data:`PROMPT`, each level one more check passed:
    0 a panel's subject not found; 1 found, but the two looks (shape, colour, pattern) differ; 2 the same look,
    but not the same identity (the details differ); 3 the same look and identity, but not the prompted look;
    4 consistent (the prompted look, the same look and the same identity in both panels)."""
    if not truth["found"]:
        return 0
    if not truth["same_look"]:
        return 1
    if not truth["same_identity"]:
        return 2
    return 4 if truth["consistent"] else 3


_WORLD_REASONS = (
    "a panel's subject was not found",
    "the two panels show different looks",
    "the same look, but the details single out different identities",
    "the same look and identity, but not the prompted look",
    "the prompted look, the same look and the same identity in both panels",
)


class WorldJudge:
    """The exact checker as the VLM: the truth filter-similarity recorded for each world pair."""

    def __init__(self, config: SynthConfig) -> None:
        pass  # nothing to load: the truth is in the records

    def __call__(self, records: list[dict], out: Path) -> list[Verdict]:
        verdicts = []
        for record in records:
            if record.get("truth") is None:
                raise UnofluxError(
                    f"pair {record['key']!r} in {FILTERED} has no checker truth; vlm world needs the world's prompts "
                    "scored by filter-similarity"
                )
            score = world_vlm_score(record["truth"])
            verdicts.append(Verdict(score, f"exact checker: {_WORLD_REASONS[score]}"))
        return verdicts


def _crops(record: dict, out: Path) -> list[Image.Image]:
    images = []
    for name in ("reference", "target_crop"):
        with Image.open(out / record[name]) as image:
            images.append(image.convert("RGB"))
    return images


# --------------------------------------------------------------------------------------------------- local
class LocalVLM:
    """A ``transformers`` image-text-to-text model from ``config.vlm_model``, decoding greedily."""

    def __init__(self, config: SynthConfig) -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.max_new_tokens = config.vlm_max_new_tokens
        self.processor = AutoProcessor.from_pretrained(config.vlm_model)
        # decoder-only batches pad on the left, so that every reply starts right after its own prompt
        self.processor.tokenizer.padding_side = "left"
        self.model = AutoModelForImageTextToText.from_pretrained(config.vlm_model, dtype="auto").to(self.device)
        self.model.eval()

    def messages(self, record: dict) -> list[dict]:
        content = [
            {"type": "text", "text": "Image 1:"},
            {"type": "image"},
            {"type": "text", "text": "Image 2:"},
            {"type": "image"},
            {"type": "text", "text": vlm_prompt(record.get("subject"))},
        ]
        return [{"role": "user", "content": content}]

    def __call__(self, records: list[dict], out: Path) -> list[Verdict]:
        import torch

        texts = [self.processor.apply_chat_template(self.messages(r), add_generation_prompt=True) for r in records]
        images = [_crops(r, out) for r in records]  # per prompt: [reference, target crop]
        inputs = self.processor(images=images, text=texts, return_tensors="pt", padding=True)
        inputs = inputs.to(self.model.device, dtype=self.model.dtype)  # pixels in the model's dtype (bf16 on GPUs)
        with torch.inference_mode():
            tokens = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        new = tokens[:, inputs["input_ids"].shape[1] :]
        replies = self.processor.batch_decode(new, skip_special_tokens=True)
        eos = self.model.generation_config.eos_token_id
        eos = torch.tensor(eos if isinstance(eos, list) else [eos])
        ended = torch.isin(new.cpu(), eos).any(dim=1).tolist()  # False: it ran out of tokens before its end
        return [_from_reply(r, None if done else self.max_new_tokens) for r, done in zip(replies, ended, strict=True)]


# ---------------------------------------------------------------------------------------------------- http
class AttemptError(Exception):
    """One failed request; ``retry`` says whether another attempt may go better."""

    def __init__(self, message: str, retry: bool = True) -> None:
        super().__init__(message)
        self.retry = retry


RETRIED_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}  # the server may answer the same request later


def data_url(image: Image.Image) -> str:
    """``image`` as a base64 PNG data URL (what OpenAI-style ``image_url`` content parts take)."""
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class HttpVLM:
    """An OpenAI-compatible chat-completions endpoint: ``POST {vlm_url}/chat/completions``."""

    def __init__(self, config: SynthConfig) -> None:
        url = config.vlm_url.rstrip("/")
        self.url = url if url.endswith("/chat/completions") else url + "/chat/completions"
        self.model, self.timeout = config.vlm_model, config.vlm_timeout
        self.attempts, self.backoff = config.vlm_attempts, config.vlm_backoff
        self.max_tokens, self.workers = config.vlm_max_new_tokens, config.vlm_batch_size or config.batch_size
        self.headers = {"Content-Type": "application/json"}
        if config.vlm_api_key_env is not None:  # only the variable the user named is read, and only its value sent
            key = os.environ.get(config.vlm_api_key_env)
            if not key:
                raise UnofluxError(
                    f"vlm_api_key_env {config.vlm_api_key_env!r} names an environment variable that is not set; set "
                    "it to the API key, or set vlm_api_key_env to null to send no key"
                )
            self.headers["Authorization"] = f"Bearer {key}"

    def body(self, record: dict, out: Path) -> bytes:
        reference, target = (data_url(image) for image in _crops(record, out))
        content = [
            {"type": "text", "text": "Image 1:"},
            {"type": "image_url", "image_url": {"url": reference}},
            {"type": "text", "text": "Image 2:"},
            {"type": "image_url", "image_url": {"url": target}},
            {"type": "text", "text": vlm_prompt(record.get("subject"))},
        ]
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": self.max_tokens,
            "temperature": 0,  # greedy, as the local backend: the same pair gets the same judgement
        }
        return json.dumps(body).encode("utf-8")

    def request(self, body: bytes) -> tuple[str, bool]:
        """One attempt: (the reply's text, whether it stopped at ``max_tokens``), or :class:`AttemptError` saying
        what went wrong."""
        request = urllib.request.Request(self.url, data=body, headers=self.headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as err:
            detail = err.read()[:200].decode("utf-8", "replace").strip()
            raise AttemptError(f"HTTP {err.code} {err.reason}: {detail!r}", err.code in RETRIED_STATUS) from None
        except TimeoutError:  # socket.timeout is TimeoutError
            raise AttemptError(f"no reply within {self.timeout:g} s") from None
        except urllib.error.URLError as err:
            if isinstance(err.reason, TimeoutError):
                raise AttemptError(f"no reply within {self.timeout:g} s") from None
            raise AttemptError(f"cannot reach {self.url}: {err.reason}") from None
        except (OSError, http.client.HTTPException) as err:  # a connection reset, or closed mid-reply
            raise AttemptError(f"connection to {self.url} failed: {type(err).__name__} {err}") from None
        try:
            reply = json.loads(raw)
        except ValueError as err:
            raise AttemptError(f"the answer is not JSON ({err}): {raw[:80]!r}") from None
        try:
            text = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise AttemptError(f"the answer has no choices[0].message.content: {raw[:120]!r}") from None
        if not isinstance(text, str):
            raise AttemptError(f"choices[0].message.content is {type(text).__name__}, not text")
        return text, reply["choices"][0].get("finish_reason") == "length"

    def judge(self, record: dict, out: Path) -> Verdict:
        body, errors, reply = self.body(record, out), [], None
        for attempt in range(1, self.attempts + 1):
            cut = False
            try:
                reply, cut = self.request(body)
                score, rationale = parse_reply(reply)
                return Verdict(score, rationale, attempt, tuple(errors))
            except (AttemptError, ReplyError) as err:
                errors.append(f"attempt {attempt}: {_cut(err, self.max_tokens) if cut else err}")
                if cut or (isinstance(err, AttemptError) and not err.retry):  # the same budget would cut it again
                    break
            if attempt < self.attempts:
                time.sleep(self.backoff * 2 ** (attempt - 1))
        what = (
            f"{len(errors)} of {self.attempts} attempts failed at {self.url}; the last: {errors[-1].split(': ', 1)[1]}"
        )
        return Verdict(None, reply, len(errors), tuple(errors), what)

    def __call__(self, records: list[dict], out: Path) -> list[Verdict]:
        with ThreadPoolExecutor(max_workers=min(self.workers, len(records))) as pool:  # a server batches them
            return list(pool.map(lambda r: self.judge(r, out), records))


BACKENDS = {"world": WorldJudge, "local": LocalVLM, "http": HttpVLM}


def run_filter_vlm(config: SynthConfig, progress: bool = True) -> Path:
    """Write ``vlm.jsonl``: every pair ``filter-similarity`` kept, with its VLM score, rationale and ``kept``."""
    if config.vlm is None:
        raise UnofluxError(
            "stage filter-vlm needs a vlm backend for your own vocabulary: set vlm to local (a transformers VLM "
            "folder) or http (an OpenAI-compatible endpoint)"
        )
    out = Path(config.output_dir)
    survivors = [r for r in stage_inputs(config, FILTERED, "filter-vlm") if r["kept"]]
    manifest = Manifest(out / VLM)
    size = config.vlm_batch_size or config.batch_size
    batches = [survivors[i : i + size] for i in range(0, len(survivors), size)]
    todo = [batch for batch in batches if any(r["key"] not in manifest for r in batch)]
    judge = BACKENDS[config.vlm](config) if todo else None  # a finished stage loads no model
    for batch in tqdm(todo, desc="filter-vlm", unit="batch", disable=not progress):
        for record, verdict in zip(batch, judge(batch, out), strict=True):
            if record["key"] in manifest:
                continue
            manifest.append(
                {
                    **record,
                    "vlm": config.vlm,
                    "vlm_score": verdict.score,
                    "rationale": verdict.rationale,
                    "vlm_attempts": verdict.attempts,
                    "attempt_errors": list(verdict.errors),
                    "error": verdict.error,
                    "kept": verdict.score is not None and verdict.score >= config.vlm_threshold,
                }
            )
    return manifest.path
