"""The MLLM judge's prompt, its request body, and the reading of its answer (SPEC S2).

Two modes:

- ``json``: the judge answers three integers 0-100 — instruction following, edit quality, preservation of what
  should not change — as a JSON object. With ``json_schema`` the request carries a ``response_format`` JSON schema
  (OpenAI structured outputs, vLLM and SGLang guided decoding); without it the answer is read tolerantly: the first
  JSON object in the text (after any ``<think>`` block or markdown fence), else ``key: value`` pairs.
- ``logprobs``: the judge answers three single digits 0-9 and the request asks for ``logprobs`` with
  ``top_logprobs``; each criterion is the expected digit under the judge's distribution at that answer position,
  renormalised over the ten digit tokens. A 0-9 scale is used because one digit is one token in every common
  tokenizer (Qwen2.5 splits numbers into single digits; GPT-4o's tokenizer merges up to three), so the whole
  distribution of a criterion sits at one position; "10" or "85" would need a multi-token expectation that
  ``top_logprobs`` cannot give. The expectation is smoother than the sampled integer, which GRPO's within-group
  advantages need when a group's edits differ a little.

Every criterion is mapped to ``[0, 1]`` (``/100`` or ``/9``) and combined with the configured weights. Anything
not readable is a :class:`Verdict` with a reason and no scores, never a guessed value.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["CRITERIA", "Verdict", "build_messages", "read_answer", "read_json_scores", "read_logprob_scores"]

CRITERIA = ("instruction_following", "edit_quality", "preservation")
DIGITS = tuple(str(d) for d in range(10))

_SYSTEM = (
    "You are an expert evaluator of instruction-based image edits. You compare a source image with the edited "
    "image that an editing model produced from it, and you score the edit strictly and consistently."
)
_CRITERIA_TEXT = (
    "- instruction_following: how completely and precisely the edited image carries out the instruction "
    "({lo}: ignored or contradicted; {hi}: exactly as asked).\n"
    "- edit_quality: how clean and natural the edited image is: no distortion, blur, seams, artifacts or "
    "implausible content ({lo}: broken image; {hi}: flawless).\n"
    "- preservation: how well everything the instruction does not ask to change stays identical to the source "
    "image: layout, background, other objects, colours, identity, details ({lo}: unrelated image; "
    "{hi}: all of it unchanged).\n"
    "Score each criterion independently of the others."
)
_JSON_FORMAT = (
    "Answer with only a JSON object and no other text, in this form: "
    '{"instruction_following": <integer 0-100>, "edit_quality": <integer 0-100>, "preservation": <integer 0-100>}'
)
_DIGIT_FORMAT = (
    "Answer with only three digits separated by single spaces, one per criterion in the order "
    "instruction_following, edit_quality, preservation, and nothing else."
)


@dataclass(frozen=True)
class Verdict:
    """One judge answer: the three criteria in ``[0, 1]`` (in :data:`CRITERIA` order), or the reason there are none."""

    scores: tuple[float, float, float] | None = None
    reason: str | None = None

    def combined(self, weights: Sequence[float]) -> float:
        """Weighted mean of the criteria in ``[0, 1]``; NaN without scores."""
        if self.scores is None:
            return math.nan
        return sum(w * s for w, s in zip(weights, self.scores, strict=True)) / sum(weights)


def build_messages(instruction: str, source_url: str, edited_url: str, mode: str) -> list[dict[str, Any]]:
    """Chat messages: system prompt, then the user turn with both images (data URLs) and the scoring rubric."""
    scale = "an integer from 0 to 100" if mode == "json" else "a single digit from 0 (worst) to 9 (best)"
    lo, hi = ("0", "100") if mode == "json" else ("0", "9")
    rubric = (
        f"Score the edit on three criteria, each {scale}:\n"
        + _CRITERIA_TEXT.format(lo=lo, hi=hi)
        + "\n"
        + (_JSON_FORMAT if mode == "json" else _DIGIT_FORMAT)
    )
    user = [
        {"type": "text", "text": f"Editing instruction: {json.dumps(instruction, ensure_ascii=False)}"},
        {"type": "text", "text": "Source image:"},
        {"type": "image_url", "image_url": {"url": source_url}},
        {"type": "text", "text": "Edited image:"},
        {"type": "image_url", "image_url": {"url": edited_url}},
        {"type": "text", "text": rubric},
    ]
    return [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": user}]


def json_schema_format() -> dict[str, Any]:
    """The ``response_format`` that constrains the answer to the three integer scores."""
    score = {"type": "integer", "minimum": 0, "maximum": 100}
    schema = {
        "type": "object",
        "properties": dict.fromkeys(CRITERIA, score),
        "required": list(CRITERIA),
        "additionalProperties": False,
    }
    return {"type": "json_schema", "json_schema": {"name": "edit_scores", "strict": True, "schema": schema}}


# --- reading the answer ------------------------------------------------------------------------------------------

_THINK = re.compile(r"<think>.*?(</think>|$)", re.DOTALL | re.IGNORECASE)


def _normal_key(key: str) -> str:
    return re.sub(r"[\s\-]+", "_", key.strip().lower())


def _score_value(value: Any, key: str) -> tuple[float | None, str | None]:
    """A 0-100 score from an int, float or numeric string; else the reason it is not one."""
    if isinstance(value, bool) or value is None:
        return None, f"{key} is {value!r}, not a number"
    if isinstance(value, str):
        match = re.fullmatch(r"\s*([-+]?\d+(?:\.\d+)?)\s*(?:/\s*100\s*)?%?\s*", value)
        if match is None:
            return None, f"{key} is {value[:40]!r}, not a number"
        value = float(match.group(1))
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return None, f"{key} is {value!r}, not a finite number"
    if not 0 <= value <= 100:
        return None, f"{key}={value} is outside 0-100"
    return float(value), None


def _first_json_object(text: str) -> dict[str, Any] | None:
    """The first JSON object in ``text`` that holds a score key (else the first object at all), or None."""
    decoder = json.JSONDecoder()
    first: dict[str, Any] | None = None
    for match in re.finditer(r"\{", text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except ValueError:
            continue
        if isinstance(value, dict):
            if any(_normal_key(str(k)) in CRITERIA for k in value):
                return value
            first = first if first is not None else value
    return first


def _key_value_pairs(text: str) -> dict[str, str]:
    """``criterion: 87``-style pairs (quoted or not, ``:`` or ``=``), for answers that are not valid JSON."""
    found: dict[str, str] = {}
    for key in CRITERIA:
        pattern = key.replace("_", r"[\s_\-]?")
        match = re.search(rf"['\"]?{pattern}['\"]?\s*[:=]\s*['\"]?([-+]?\d+(?:\.\d+)?)", text, re.IGNORECASE)
        if match:
            found[key] = match.group(1)
    return found


def read_json_scores(text: str) -> Verdict:
    """The three 0-100 scores in a judge's text answer, as ``[0, 1]`` values; or the reason they are not there.

    Accepts ints, floats and numeric strings (``"85"``, ``"85/100"``); rejects values outside 0-100, booleans,
    missing keys and text without any score.
    """
    text = _THINK.sub("", text)
    obj = _first_json_object(text)
    values: Mapping[str, Any] = {_normal_key(str(k)): v for k, v in obj.items()} if obj else _key_value_pairs(text)
    if not values:
        snippet = " ".join(text.split())[:80]
        return Verdict(reason=f"no JSON object with scores in the answer ({snippet!r})")
    missing = [key for key in CRITERIA if key not in values]
    if missing:
        return Verdict(reason=f"answer lacks {', '.join(missing)}")
    scores = []
    for key in CRITERIA:
        value, problem = _score_value(values[key], key)
        if problem is not None:
            return Verdict(reason=problem)
        scores.append(value / 100.0)
    return Verdict(scores=(scores[0], scores[1], scores[2]))


def _digit_distribution(position: Mapping[str, Any]) -> tuple[dict[int, float], float]:
    """Probability of each digit at one answer position (summing tokens that strip to the same digit), and the
    total probability of digit tokens."""
    candidates = list(position.get("top_logprobs") or [])
    if not any(c.get("token") == position.get("token") for c in candidates):
        candidates.append({"token": position.get("token"), "logprob": position.get("logprob")})
    probs: dict[int, float] = {}
    for candidate in candidates:
        token, logprob = str(candidate.get("token", "")).strip(), candidate.get("logprob")
        if token in DIGITS and isinstance(logprob, (int, float)) and math.isfinite(logprob):
            probs[int(token)] = probs.get(int(token), 0.0) + math.exp(logprob)
    return probs, sum(probs.values())


def _is_separator(token: str) -> bool:
    return token.strip(" \t\r\n,;:|/") == ""


def read_logprob_scores(logprobs: Any, min_mass: float) -> Verdict:
    """Expected digit (0-9, mapped to ``[0, 1]``) at each of the first three answer positions.

    Answer positions are the generated tokens that are not blank or separators (``,;:|/``). At each, the
    probabilities of the ten digit tokens (``"7"`` and ``" 7"`` count as one) are renormalised and averaged.

    Args:
        logprobs: ``choices[0].logprobs`` of a chat completion (``{"content": [{token, logprob, top_logprobs}]}``).
        min_mass: least total probability the digit tokens must hold at a position; below it (the judge was not
            answering with a digit there) the verdict is a failure rather than an expectation over noise.
    """
    content = logprobs.get("content") if isinstance(logprobs, Mapping) else None
    if not content:
        return Verdict(reason="server returned no logprobs; enable them on the server or use mode 'json'")
    entries = [p for p in content if isinstance(p, Mapping)]
    positions = [p for p in entries if not _is_separator(str(p.get("token", "")))]
    if len(positions) < len(CRITERIA):
        answer = "".join(str(p.get("token", "")) for p in entries)
        return Verdict(reason=f"answer {answer[:40]!r} has {len(positions)} score positions, 3 needed")
    scores = []
    for key, position in zip(CRITERIA, positions, strict=False):
        probs, mass = _digit_distribution(position)
        if mass < min_mass:
            return Verdict(reason=f"{key}: only {mass:.2f} probability on digit tokens (< {min_mass})")
        scores.append(sum(d * p for d, p in probs.items()) / mass / 9.0)
    return Verdict(scores=(scores[0], scores[1], scores[2]))


def _message_text(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}, ...]
        parts = [p.get("text", "") for p in content if isinstance(p, Mapping) and isinstance(p.get("text"), str)]
        return "".join(parts) if parts else None
    return None


def read_answer(response: Any, mode: str, min_mass: float) -> Verdict:
    """Read a chat-completions response body (decoded JSON) into a :class:`Verdict`."""
    if not isinstance(response, Mapping):
        return Verdict(reason=f"response is a JSON {type(response).__name__}, not an object")
    choices = response.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
        error = response.get("error")
        detail = f" (error: {str(error.get('message', error) if isinstance(error, Mapping) else error)[:120]})"
        return Verdict(reason="response has no choices" + (detail if error else ""))
    choice = choices[0]
    finish = choice.get("finish_reason")
    message = choice.get("message") if isinstance(choice.get("message"), Mapping) else {}
    if finish == "content_filter":
        return Verdict(reason="the server's content filter blocked the answer")
    if mode == "logprobs":
        verdict = read_logprob_scores(choice.get("logprobs"), min_mass)
    else:
        text = _message_text(message.get("content"))
        if text is None:
            refusal = message.get("refusal")
            return Verdict(reason=f"judge refused: {str(refusal)[:120]}" if refusal else "answer has no text content")
        verdict = read_json_scores(text)
    if verdict.scores is None and finish == "length":
        return Verdict(reason=f"answer cut off at max_tokens (finish_reason=length): {verdict.reason}")
    return verdict
