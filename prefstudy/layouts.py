"""Record layouts: the ways people publish preference data, and how one record becomes a pair.

`LAYOUTS` is the one registry of layouts (filled by `@layout`, in recognition order: the most
specific first); names, `--layout` help and the tests all read it. A record is a mapping: a JSON
object, or one row of a table or dataset with its missing cells already removed. `parse` turns it
into (prompt, chosen, rejected, meta, layout name).

Rules every layout follows:

- Malformed (a missing or wrong-typed field, a label value the layout does not define, a record
  no layout recognises) is a `DataError` naming where, the field and what was found.
- Parsed but no pair (a tie, no label, a multi-turn record whose sides differ before the last
  reply, …) is an `UnusableRecord` with a short `kind` for counting; the loader skips it.
- Empty texts, chosen == rejected and lone surrogates are not checked here: the loader checks
  them once, after `parse`, for every layout.
- The order of the two answers in a record never decides which is chosen: swapping the answers
  and the label gives the same pair and the same meta. So the per-side fields (model_a, score_A,
  generator_1, …) become chosen_… / rejected_… meta, and the label fields (winner_*, labels,
  preference) are consumed, never copied into meta.
- meta = the record's own "meta" field (`_meta`), then every field the layout does not consume
  (except "pair_id" and "meta"), then what the layout derives (which wins).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import numbers
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import PrefstudyError

ROLES = ("system", "user", "assistant")
HH_HUMAN, HH_ASSISTANT = "\n\nHuman:", "\n\nAssistant:"

Message = Mapping[str, str]
Prompt = str | tuple[Message, ...]


class DataError(PrefstudyError):
    """A record that cannot be read; the message names the source, the line and the field."""


class UnusableRecord(Exception):
    """A record that parsed but cannot serve as a pair (skipped and counted unless strict).
    reason: what is wrong with it (str(e)); kind: a short category to count skips by."""

    def __init__(self, reason: str, kind: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.kind = kind or reason


@dataclass(frozen=True)
class Layout:
    """One record layout, as `@layout` registers it."""

    name: str
    description: str  # one line, for docs and `--layout` help: the parser's docstring's first
    consumes: tuple[str, ...]  # the record fields the layout reads: never copied into meta
    recognise: Callable[[Mapping], bool]  # from the record's field names, not their values
    # (record, where, seed) → prompt, chosen, rejected, the meta the layout derives
    parse: Callable[[Mapping, str, int], tuple[Prompt, str, str, dict]]


LAYOUTS: dict[str, Layout] = {}


def layout(name: str, *, consumes: tuple[str, ...], recognise: Callable[[Mapping], bool]):
    """Decorator: add `fn(record, where, seed)` to LAYOUTS under `name`, after those already
    there (recognition order). Checks that the name is new and that `fn` has a docstring."""

    def decorator(fn):
        if name in LAYOUTS:
            raise ValueError(f"layout {name!r} is already registered")
        doc = inspect.getdoc(fn)
        if not doc:
            raise ValueError(f"layout {name!r}: {fn.__name__} needs a docstring")
        LAYOUTS[name] = Layout(name, doc.splitlines()[0], tuple(consumes), recognise, fn)
        return fn

    return decorator


# --------------------------------------------------------------------------- field readers


def _missing(value: Any) -> bool:
    """None or NaN: no value (a null in JSON, a missing cell)."""
    return value is None or (isinstance(value, float) and value != value)


def _field(record: Mapping, name: str, where: str, kinds=(str,)) -> Any:
    if name not in record:
        raise DataError(f"{where}: missing field {name!r} (fields present: {sorted(record)})")
    value = record[name]
    if not isinstance(value, kinds):
        wanted = " or ".join(k.__name__ for k in kinds)
        raise DataError(f"{where}: field {name!r} must be {wanted}, got {type(value).__name__}")
    return value


def _messages(value: list, name: str, where: str) -> tuple[dict[str, str], ...]:
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, Mapping) or not isinstance(m.get("content"), str):
            raise DataError(f"{where}: {name}[{i}] must be a {{'role', 'content'}} message "
                            f"with string content, got {m!r:.80}")
        if m.get("role") not in ROLES:
            raise DataError(f"{where}: {name}[{i}] has role {m.get('role')!r}; allowed: {ROLES}")
        out.append({"role": m["role"], "content": m["content"]})
    return tuple(out)


def _meta(value: Any, where: str) -> dict:
    """A record's meta as a dict: a mapping, a JSON object written as text (as a CSV cell holds
    it), or a list of (key, value) pairs (a parquet map column); {} where it is missing.
    DataError for anything else. Blank text is no meta, as a missing value is."""
    if _missing(value) or (isinstance(value, str) and not value.strip()):
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (json.JSONDecodeError, RecursionError):
            raise DataError(f"{where}: field 'meta' must be a JSON object, got text that is not "
                            f"JSON: {value!r:.80}") from None
    elif isinstance(value, list) and all(isinstance(kv, list | tuple) and len(kv) == 2
                                         for kv in value):
        value = dict(value)
    if not isinstance(value, Mapping):
        raise DataError(f"{where}: field 'meta' must be an object, got {type(value).__name__}")
    return dict(value)


def _number(value: Any) -> float | None:
    """`value` as a float: a real number (not a bool), or text holding one as a CSV cell does;
    None for anything else."""
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    return None


def _label(record: Mapping, name: str, where: str, *, bools: bool = False) -> float | None:
    """The number in the label field `name`; None where it is missing (absent, None, NaN or
    blank text). DataError for a value that is no number (a bool is one where `bools`)."""
    value = record.get(name)
    if _missing(value) or (isinstance(value, str) and not value.strip()):
        return None
    if bools and isinstance(value, str) and value.strip().lower() in ("true", "false"):
        value = value.strip().lower() == "true"  # a bool column as a CSV writes it
    number = float(value) if bools and isinstance(value, bool) else _number(value)
    if number is None:
        raise DataError(f"{where}: field {name!r} must be a number, got {value!r:.80}")
    return None if math.isnan(number) else number


def _by_label(a: Any, b: Any, a_wins: bool) -> tuple[Any, Any]:
    """(chosen, rejected) of the two sides: the label alone decides, never their order."""
    return (a, b) if a_wins else (b, a)


def _sides(record: Mapping, a_wins: bool, **fields: tuple[str, str]) -> dict:
    """Meta from per-side fields: key=(field of side a, field of side b) → chosen_key and
    rejected_key, by the label; a side whose field is missing is left out."""
    meta = {}
    for key, (field_a, field_b) in fields.items():
        chosen, rejected = _by_label(field_a, field_b, a_wins)
        for role, name in (("chosen", chosen), ("rejected", rejected)):
            if not _missing(record.get(name)):
                meta[f"{role}_{key}"] = record[name]
    return meta


def _last_reply(messages: tuple[dict[str, str], ...], name: str) -> str:
    if not messages or messages[-1]["role"] != "assistant":
        raise UnusableRecord(f"{name} does not end with an assistant message", "no final reply")
    return messages[-1]["content"]


# --------------------------------------------------------------------------- labelled layouts

ARENA_WINNERS = {"model_a": True, "model_b": False, "tie": None, "tie (bothbad)": None}


@layout("arena_conversations",
        consumes=("conversation_a", "conversation_b", "winner", "model_a", "model_b"),
        recognise=lambda r: "conversation_a" in r and "conversation_b" in r)
def _arena_conversations(record: Mapping, where: str, seed: int) -> tuple:
    """Chatbot Arena conversations (lmsys/chatbot_arena_conversations): two judged conversations.

    conversation_a, conversation_b: lists of {"role", "content"} messages, each ending with its
    model's reply; winner: "model_a" | "model_b" | "tie" | "tie (bothbad)"; model_a, model_b.
    Prompt: the messages both sides share before their last replies (skip "multi-turn" where
    earlier turns differ). Meta: chosen_model, rejected_model (judge and the rest stay meta).
    """
    a = _messages(_field(record, "conversation_a", where, (list,)), "conversation_a", where)
    b = _messages(_field(record, "conversation_b", where, (list,)), "conversation_b", where)
    winner = record.get("winner")
    if _missing(winner):
        raise UnusableRecord("no winner given", "no label")
    if not isinstance(winner, str) or winner not in ARENA_WINNERS:
        raise DataError(f"{where}: field 'winner' must be one of {list(ARENA_WINNERS)}, "
                        f"got {winner!r:.80}")
    if ARENA_WINNERS[winner] is None:
        raise UnusableRecord(f"winner is {winner!r}: a tie is not a preference", "tie")
    _last_reply(a, "conversation_a"), _last_reply(b, "conversation_b")
    if a[:-1] != b[:-1]:
        raise UnusableRecord("conversation_a and conversation_b differ before their last "
                             "replies", "multi-turn")
    if not a[:-1]:
        raise UnusableRecord("empty prompt", "empty prompt")
    prompt, a_wins = a[:-1], ARENA_WINNERS[winner]
    chosen, rejected = _by_label(a[-1]["content"], b[-1]["content"], a_wins)
    return prompt, chosen, rejected, _sides(record, a_wins, model=("model_a", "model_b"))


ARENA_LABELS = ("winner_model_a", "winner_model_b", "winner_tie")


def _turns(record: Mapping, name: str, where: str) -> list[str | None]:
    """The turns of an arena text: a JSON list of texts (null items kept as None), else the
    text itself as one turn; a list (a dataset that decoded it) is taken as it is. DataError
    for a list without turns, or a given list of anything but texts and nulls."""
    value = _field(record, name, where, (str, list))
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (json.JSONDecodeError, RecursionError):
            return [record[name]]
        if not isinstance(value, list) or not all(t is None or isinstance(t, str)
                                                  for t in value):
            return [record[name]]  # JSON, but no list of turns: the text itself
    if not value or not all(t is None or isinstance(t, str) for t in value):
        raise DataError(f"{where}: field {name!r} must be a non-empty list of texts, "
                        f"got {value!r:.80}")
    return list(value)


def _arena_winner(record: Mapping, where: str) -> bool:
    """Whether response_a won, from the three 0/1 label fields (DataError for another value)."""
    values = {name: _label(record, name, where, bools=True) for name in ARENA_LABELS}
    for name, value in values.items():
        if value not in (0.0, 1.0, None):
            raise DataError(f"{where}: field {name!r} must be 0 or 1, got {record[name]!r:.80}")
    if any(v is None for v in values.values()):
        missing = [n for n, v in values.items() if v is None]
        raise UnusableRecord(f"label field(s) {missing} missing", "no label")
    winners = [n for n, v in values.items() if v == 1.0]
    if not winners:
        raise UnusableRecord("none of the label fields is set", "no label")
    if len(winners) > 1:
        raise UnusableRecord(f"label fields {winners} are set together", "conflicting label")
    if winners == ["winner_tie"]:
        raise UnusableRecord("winner_tie is set: a tie is not a preference", "tie")
    return winners == ["winner_model_a"]


@layout("arena", consumes=("prompt", "response_a", "response_b", *ARENA_LABELS,
                           "model_a", "model_b"),
        recognise=lambda r: "response_a" in r and "response_b" in r)
def _arena(record: Mapping, where: str, seed: int) -> tuple:
    """Chatbot Arena export (lmsys-arena-human-preference-55k): prompt and two judged responses.

    prompt, response_a, response_b: JSON-encoded lists of turns ('["Hi"]', items may be null),
    or plain text (one turn); winner_model_a, winner_model_b, winner_tie: 0/1 (int, bool,
    float or text), exactly one set; model_a, model_b. One turn: the prompt is that text. Several:
    a conversation, when every earlier reply is the same on both sides (else skip "multi-turn").
    Meta: chosen_model, rejected_model (id and the rest stay meta).
    """
    prompt, a, b = (_turns(record, name, where) for name in ("prompt", "response_a", "response_b"))
    if not len(prompt) == len(a) == len(b):
        raise DataError(f"{where}: prompt, response_a and response_b must have as many turns, "
                        f"got {len(prompt)}, {len(a)} and {len(b)}")
    a_wins = _arena_winner(record, where)
    if None in a or None in b:
        raise UnusableRecord("a response has a null turn", "empty response")
    if None in prompt:
        raise UnusableRecord("the prompt has a null turn", "empty prompt")
    if a[:-1] != b[:-1]:
        raise UnusableRecord("response_a and response_b differ before their final replies",
                             "multi-turn")
    chosen, rejected = _by_label(a[-1], b[-1], a_wins)
    meta = _sides(record, a_wins, model=("model_a", "model_b"))
    if len(prompt) == 1:
        return prompt[0], chosen, rejected, meta
    turns = [(role, text) for user, reply in zip(prompt, a[:-1])
             for role, text in (("user", user), ("assistant", reply))]
    turns.append(("user", prompt[-1]))
    return tuple({"role": r, "content": t} for r, t in turns), chosen, rejected, meta


@layout("shp", consumes=("history", "human_ref_A", "human_ref_B", "labels", "score_A", "score_B",
                         "c_root_id_A", "c_root_id_B"),
        recognise=lambda r: "human_ref_A" in r and "human_ref_B" in r)
def _shp(record: Mapping, where: str, seed: int) -> tuple:
    """Stanford SHP: a post and two human comments, the one with more votes preferred.

    history: the post (the prompt); human_ref_A, human_ref_B: the comments; labels: 1 (A
    preferred) or 0 (B preferred). score_A/B and c_root_id_A/B become chosen_score,
    rejected_score, chosen_id, rejected_id by the label (post_id, domain, … stay meta).
    """
    prompt = _field(record, "history", where)
    a, b = _field(record, "human_ref_A", where), _field(record, "human_ref_B", where)
    label = _label(record, "labels", where, bools=True)
    if label is None:
        raise UnusableRecord("no label", "no label")
    if 0 < label < 1:
        raise UnusableRecord(f"labels is {label}, not 0 or 1", "fractional label")
    if label not in (0.0, 1.0):
        raise DataError(f"{where}: field 'labels' must be 0 or 1, got {record['labels']!r:.80}")
    a_wins = label == 1.0
    chosen, rejected = _by_label(a, b, a_wins)
    meta = _sides(record, a_wins, score=("score_A", "score_B"), id=("c_root_id_A", "c_root_id_B"))
    return prompt, chosen, rejected, meta


def _alpaca_first_wins(record: Mapping, where: str) -> bool:
    """Whether output_1 won, from `preference` (1 or 2; the skips and errors `_alpaca` lists)."""
    value = _label(record, "preference", where)
    if value is None:
        raise UnusableRecord("no preference given", "no label")
    if value == 0:
        raise UnusableRecord("preference is 0: the judge gave none", "no preference")
    if value == 1.5:
        raise UnusableRecord("preference is 1.5: a tie is not a preference", "tie")
    if 1 < value < 2:
        raise UnusableRecord(f"preference is {value}, between 1 and 2", "fractional label")
    if value not in (1.0, 2.0):
        raise DataError(f"{where}: field 'preference' must be 1 or 2 (1.5 a tie, 0 none), "
                        f"got {record['preference']!r:.80}")
    return value == 1.0


@layout("alpaca_eval", consumes=("instruction", "input", "output_1", "output_2", "preference",
                                 "generator_1", "generator_2", "annotator"),
        recognise=lambda r: "output_1" in r and "output_2" in r)
def _alpaca_eval(record: Mapping, where: str, seed: int) -> tuple:
    """AlpacaEval annotations: an instruction, two outputs and the judge's preference.

    instruction, input?: the prompt (instruction + "\\n\\n" + input where input is not blank);
    output_1, output_2; preference: 1 or 2 (int, float or text), 1.5 a tie, 0 none, between 1
    and 2 fractional. generator_1/2 become chosen_model / rejected_model by the label, annotator
    becomes judge (dataset, price_per_example, … stay meta).
    """
    prompt = _field(record, "instruction", where)
    extra = record.get("input")
    if not _missing(extra) and not isinstance(extra, str):
        raise DataError(f"{where}: field 'input' must be str, got {type(extra).__name__}")
    if extra and extra.strip():
        prompt = f"{prompt}\n\n{extra}"
    a, b = _field(record, "output_1", where), _field(record, "output_2", where)
    a_wins = _alpaca_first_wins(record, where)
    chosen, rejected = _by_label(a, b, a_wins)
    meta = _sides(record, a_wins, model=("generator_1", "generator_2"))
    if not _missing(record.get("annotator")):
        meta["judge"] = record["annotator"]
    return prompt, chosen, rejected, meta


SCORE_KEYS = ("fine-grained_score", "overall_score", "score", "rating")  # first present is used
TEXT_KEYS = ("response", "text", "content")


def _scored(completions: list, where: str) -> list[tuple[float, str, Any]]:
    """(score, text, model) of each completion with a text and a usable score, scored by the
    first of SCORE_KEYS that any completion of the record has (so one record never mixes
    scales); a score that is no finite number, or a missing text, leaves a completion out."""
    for i, c in enumerate(completions):
        if not isinstance(c, Mapping):
            raise DataError(f"{where}: completions[{i}] must be an object, got {c!r:.80}")
    key = next((k for k in SCORE_KEYS if any(not _missing(c.get(k)) for c in completions)), None)
    out = []
    for i, c in enumerate(completions):
        text = next((c[k] for k in TEXT_KEYS if not _missing(c.get(k))), None)
        if text is not None and not isinstance(text, str):
            raise DataError(f"{where}: completions[{i}] text must be str, got "
                            f"{type(text).__name__}")
        score = _number(c.get(key)) if key else None
        if text is not None and score is not None and math.isfinite(score):
            out.append((score, text, c.get("model")))
    return out


@layout("ultrafeedback", consumes=("instruction", "prompt", "completions"),
        recognise=lambda r: "completions" in r)
def _ultrafeedback(record: Mapping, where: str, seed: int) -> tuple:
    """UltraFeedback (openbmb): an instruction and scored completions, binarised.

    instruction (or prompt as text); completions: [{"response" | "text" | "content", "model",
    "fine-grained_score" | "overall_score" | "score" | "rating"}]. Chosen: the top-scored
    completion (skip "score tie" where the top score is shared); rejected: one with a lower
    score drawn with random.Random(f"{seed}:{sha256(prompt)}") over them sorted by (score,
    text, model), so neither row order nor completion order changes it. Meta: chosen_model,
    rejected_model, chosen_score, rejected_score.
    """
    name = "instruction" if "instruction" in record else "prompt"
    prompt = _field(record, name, where)
    scored = _scored(_field(record, "completions", where, (list,)), where)
    if len(scored) < 2:
        raise UnusableRecord(f"{len(scored)} scored completion(s); a pair needs two",
                             "too few completions")
    scored.sort(key=lambda c: (c[0], c[1], str(c[2])))
    best = scored[-1]
    if scored[-2][0] == best[0]:
        raise UnusableRecord(f"the top score {best[0]:g} is shared", "score tie")
    digest = hashlib.sha256(prompt.encode("utf-8", "surrogatepass")).hexdigest()
    worse = random.Random(f"{seed}:{digest}").choice([c for c in scored if c[0] < best[0]])
    meta = {"chosen_model": best[2], "rejected_model": worse[2], "chosen_score": best[0],
            "rejected_score": worse[0]}
    return prompt, best[1], worse[1], {k: v for k, v in meta.items() if not _missing(v)}


# --------------------------------------------------------------------------- pair layouts


@layout("messages", consumes=("prompt", "chosen", "rejected"),
        recognise=lambda r: isinstance(r.get("chosen"), list))
def _from_messages(record: Mapping, where: str, seed: int) -> tuple:
    """TRL conversational: chosen and rejected as lists of {"role", "content"} messages.

    prompt?: messages; without it (or with the prompt as text, as UltraFeedback-binarized has
    it) the messages both sides share are the prompt; a text prompt with one-message sides is
    the user turn. Each side ends with its assistant reply.
    """
    chosen = _messages(_field(record, "chosen", where, (list,)), "chosen", where)
    rejected = _messages(_field(record, "rejected", where, (list,)), "rejected", where)
    if isinstance(record.get("prompt"), list):
        prompt = _messages(_field(record, "prompt", where, (list,)), "prompt", where)
    else:  # implicit prompt: the messages both sides share, before their final replies
        prompt, shared = chosen[:-1], rejected[:-1]
        if prompt != shared:
            raise UnusableRecord("chosen and rejected conversations do not share a prompt",
                                 "no shared prompt")
        if not prompt and isinstance(record.get("prompt"), str):  # prompt text + replies
            prompt = ({"role": "user", "content": record["prompt"]},)
    if not prompt:
        raise UnusableRecord("empty prompt", "empty prompt")
    return prompt, _last_reply(chosen, "chosen"), _last_reply(rejected, "rejected"), {}


def _hh_turns(transcript: str) -> tuple[dict[str, str], ...]:
    turns, text = [], transcript
    marks = {HH_HUMAN: "user", HH_ASSISTANT: "assistant"}
    while text:
        starts = {m: text.find(m) for m in marks if text.find(m) >= 0}
        if not starts:
            break
        mark = min(starts, key=starts.get)
        text = text[starts[mark] + len(mark):]
        nxt = [text.find(m) for m in marks if text.find(m) >= 0]
        end = min(nxt) if nxt else len(text)
        turns.append({"role": marks[mark], "content": text[:end].strip()})
        text = text[end:]
    return tuple(turns)


def _has_hh_marker(record: Mapping) -> bool:
    sides = f"{record.get('chosen', '')}{record.get('rejected', '')}"
    return "prompt" not in record and (HH_ASSISTANT in sides or HH_HUMAN in sides)


@layout("hh", consumes=("chosen", "rejected"), recognise=_has_hh_marker)
def _from_hh(record: Mapping, where: str, seed: int) -> tuple:
    """Anthropic HH: chosen and rejected as whole "\\n\\nHuman:" / "\\n\\nAssistant:" transcripts.

    No prompt field: everything up to the last assistant turn (the same on both sides) is the
    prompt, as messages; what follows it is the answer.
    """
    chosen = _field(record, "chosen", where)
    rejected = _field(record, "rejected", where)
    cut_c, cut_r = chosen.rfind(HH_ASSISTANT), rejected.rfind(HH_ASSISTANT)
    if cut_c < 0 or cut_r < 0:
        raise UnusableRecord("an HH transcript has no '\\n\\nAssistant:' turn",
                             "no assistant turn")
    head = len(HH_ASSISTANT)
    if chosen[: cut_c + head] != rejected[: cut_r + head]:
        raise UnusableRecord("chosen and rejected HH transcripts do not share a prompt",
                             "no shared prompt")
    prompt = _hh_turns(chosen[:cut_c])
    if not prompt:
        raise UnusableRecord("HH transcript has no human turn before the last assistant turn",
                             "no human turn")
    return prompt, chosen[cut_c + head:].strip(), rejected[cut_r + head:].strip(), {}


@layout("implicit", consumes=("chosen", "rejected"),
        recognise=lambda r: "chosen" in r and "rejected" in r and "prompt" not in r)
def _implicit(record: Mapping, where: str, seed: int) -> tuple:
    """TRL standard with implicit prompt: chosen and rejected texts that begin with the prompt.

    The prompt is their longest common prefix cut back to before its last run of whitespace,
    which goes with the answers (TRL's `extract_prompt` moves one space; this also never cuts a
    word); an empty prompt is skip "no shared prompt".
    """
    chosen, rejected = _field(record, "chosen", where), _field(record, "rejected", where)
    shared = next((i for i, (x, y) in enumerate(zip(chosen, rejected)) if x != y),
                  min(len(chosen), len(rejected)))
    space = next((i for i in range(shared - 1, -1, -1) if chosen[i].isspace()), 0)
    prompt = chosen[:space].rstrip()
    if not prompt.strip():
        raise UnusableRecord("chosen and rejected share no prompt before a space",
                             "no shared prompt")
    return prompt, chosen[len(prompt):], rejected[len(prompt):], {}


@layout("plain", consumes=("prompt", "chosen", "rejected"),
        recognise=lambda r: "prompt" in r and ("chosen" in r or "rejected" in r))
def _from_plain(record: Mapping, where: str, seed: int) -> tuple:
    """TRL standard: prompt, chosen and rejected as texts."""
    return (_field(record, "prompt", where), _field(record, "chosen", where),
            _field(record, "rejected", where), {})


@layout("unpaired", consumes=("prompt", "completion", "label"),
        recognise=lambda r: "completion" in r and "label" in r)
def _unpaired(record: Mapping, where: str, seed: int) -> tuple:
    """TRL unpaired preference (KTO): prompt, completion, label; refused, it holds no pair."""
    raise DataError(f"{where}: unpaired preference data (one completion with a label): a pair "
                    "needs two answers to compare")


# --------------------------------------------------------------------------- entry points


def recognise(record: Mapping) -> str | None:
    """The name of the first layout (in LAYOUTS order) that recognises `record`; None if none."""
    return next((name for name, spec in LAYOUTS.items() if spec.recognise(record)), None)


def _layout_of(record: Mapping, where: str, name: str) -> Layout:
    """The Layout named `name`, or the one `recognise` finds for "auto"; DataError where none."""
    if name == "auto":
        found = recognise(record)
        if found is None:
            raise DataError(f"{where}: no layout recognises a record with fields "
                            f"{sorted(record)}; layouts known: {', '.join(LAYOUTS)}")
        return LAYOUTS[found]
    if name not in LAYOUTS:
        raise DataError(f"{where}: unknown layout {name!r}; known: 'auto', {', '.join(LAYOUTS)}")
    return LAYOUTS[name]


def parse(record: Mapping, where: str, layout: str = "auto", *,
          seed: int = 0) -> tuple[Prompt, str, str, dict, str]:
    """One record → (prompt, chosen, rejected, meta, layout name).

    layout: a name in LAYOUTS, or "auto" (the first that recognises the record). seed: for the
    layouts that draw (ultrafeedback's rejected answer). meta: the record's "meta" field, then
    every field the layout does not consume (except "pair_id" and "meta"), then what the layout
    derives. Raises DataError (malformed) or UnusableRecord (skippable); empty texts and
    chosen == rejected are left to the caller.
    """
    if not isinstance(record, Mapping):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    spec = _layout_of(record, where, layout)
    prompt, chosen, rejected, derived = spec.parse(record, where, seed)
    meta = _meta(record.get("meta"), where)
    meta.update({k: v for k, v in record.items()
                 if k not in spec.consumes and k not in ("pair_id", "meta")})
    meta.update(derived)
    return prompt, chosen, rejected, meta, spec.name


def canonical_names() -> tuple[str, ...]:
    """Every field name some layout reads (the union of their `consumes`), sorted."""
    return tuple(sorted({name for spec in LAYOUTS.values() for name in spec.consumes}))


def _column_item(item: str) -> tuple[str, str]:
    canonical, eq, column = item.partition("=")
    if not eq or "=" in column:
        raise ValueError(f"column map item {item.strip()!r} must be canonical=column, "
                         "e.g. prompt=question")
    return canonical, column


def column_map(spec: str | Mapping[str, str] | None) -> dict[str, str]:
    """{canonical name: file column} from "prompt=question,chosen=good" or a mapping.

    None or blank text: {}. ValueError (one line) for an item that is not canonical=column, an
    empty name, a canonical name no layout reads (`canonical_names`), a canonical name given
    twice, or one column mapped to two canonical names.
    """
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        return {}
    items = spec.items() if isinstance(spec, Mapping) else map(_column_item, spec.split(","))
    out: dict[str, str] = {}
    for canonical, column in items:
        if not all(isinstance(n, str) and n.strip() for n in (canonical, column)):
            raise ValueError(f"column map item {canonical!r}={column!r}: both names must be "
                             "non-empty text")
        canonical, column = canonical.strip(), column.strip()
        if canonical not in canonical_names():
            raise ValueError(f"column map: {canonical!r} is no field a layout reads; known: "
                             f"{', '.join(canonical_names())}")
        if canonical in out:
            raise ValueError(f"column map: {canonical!r} is given twice")
        if column in out.values():
            raise ValueError(f"column map: column {column!r} is mapped to two names "
                             f"({next(k for k, v in out.items() if v == column)!r} and "
                             f"{canonical!r})")
        out[canonical] = column
    return out


def renamed(record: Mapping, columns: Mapping[str, str], where: str) -> dict:
    """`record` with each mapped file column renamed to its canonical name (`column_map`), in
    the record's order. DataError where a mapped column is absent, or where a canonical name is
    already a field of the record that the map does not rename away (one would be lost)."""
    to_canonical = {column: canonical for canonical, column in columns.items()}
    for canonical, column in columns.items():
        if column not in record:
            raise DataError(f"{where}: column {column!r} (mapped to {canonical!r}) is missing "
                            f"(fields present: {sorted(record)})")
        if canonical in record and canonical not in to_canonical:
            raise DataError(f"{where}: column {column!r} is mapped to {canonical!r}, which is "
                            f"already a field (fields present: {sorted(record)})")
    return {to_canonical.get(k, k): v for k, v in record.items()}
