"""Record layouts: one small hand-written record per layout, its pair, its skips and errors."""

import hashlib
import random

import pytest

from prefstudy.errors import PrefstudyError
from prefstudy.layouts import (
    LAYOUTS,
    DataError,
    UnusableRecord,
    canonical_names,
    column_map,
    parse,
    recognise,
    renamed,
)

WHERE = "data.jsonl:3"


def user(text):
    return {"role": "user", "content": text}


def bot(text):
    return {"role": "assistant", "content": text}


ARENA_CONV = {
    "question_id": "q1", "model_a": "alpha", "model_b": "beta", "winner": "model_a",
    "judge": "arena_user_7", "turn": 1, "language": "English",
    "conversation_a": [user("What is 2+2?"), bot("4")],
    "conversation_b": [user("What is 2+2?"), bot("5")],
}
ARENA = {
    "id": 7, "model_a": "alpha", "model_b": "beta", "prompt": '["Hi there"]',
    "response_a": '["Hello!"]', "response_b": '["Go away."]',
    "winner_model_a": 1, "winner_model_b": 0, "winner_tie": 0,
}
SHP = {
    "post_id": "p1", "domain": "askscience", "upvote_ratio": 0.9,
    "history": "Why is the sky blue?", "human_ref_A": "Rayleigh scattering.",
    "human_ref_B": "Because.", "labels": 1, "score_A": 52, "score_B": 3,
    "c_root_id_A": "ca", "c_root_id_B": "cb",
}
ALPACA = {  # the keys of a real AlpacaEval annotation
    "instruction": "Name a colour.", "output_1": "Blue.", "generator_1": "gpt4",
    "dataset": "helpful_base", "output_2": "Dog.", "generator_2": "tiny",
    "annotator": "weighted_alpaca_eval_gpt4_turbo", "preference": 1,
    "price_per_example": 0.01, "time_per_example": 1.2,
}
ULTRA = {
    "source": "evol", "instruction": "Write a haiku.",
    "completions": [
        {"model": "m1", "response": "Top.", "fine-grained_score": 4.5, "overall_score": 8},
        {"model": "m2", "response": "Low.", "fine-grained_score": 2.0, "overall_score": 3},
    ],
}
MESSAGES = {"chosen": [user("Hi"), bot("Hello!")], "rejected": [user("Hi"), bot("Go.")]}
HH = {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!",
      "rejected": "\n\nHuman: Hi\n\nAssistant: Go away."}
IMPLICIT = {"chosen": "Q: sky colour? A: blue", "rejected": "Q: sky colour? A: green"}
PLAIN = {"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away.", "lang": "en"}
UNPAIRED = {"prompt": "Hi", "completion": "Hello!", "label": True}

GOOD = {"arena_conversations": ARENA_CONV, "arena": ARENA, "shp": SHP, "alpaca_eval": ALPACA,
        "ultrafeedback": ULTRA, "messages": MESSAGES, "hh": HH, "implicit": IMPLICIT,
        "plain": PLAIN, "unpaired": UNPAIRED}


def read(record, layout="auto", seed=0):
    return parse(record, WHERE, layout, seed=seed)


def skip_kind(record, layout="auto"):
    with pytest.raises(UnusableRecord) as caught:
        read(record, layout)
    return caught.value.kind


# --------------------------------------------------------------------------- the registry


def test_registry_order_and_descriptions():
    assert list(LAYOUTS) == ["arena_conversations", "arena", "shp", "alpaca_eval",
                             "ultrafeedback", "messages", "hh", "implicit", "plain", "unpaired"]
    for name, spec in LAYOUTS.items():
        assert spec.name == name and spec.description and "\n" not in spec.description
    assert {"prompt", "chosen", "rejected", "winner_tie", "completions"} <= set(canonical_names())


@pytest.mark.parametrize("name", list(GOOD))
def test_each_layout_is_recognised_from_its_fields(name):
    assert recognise(GOOD[name]) == name


def test_recognition_picks_the_most_specific_layout():
    assert recognise({"prompt": "x", "chosen": "a"}) == "plain"  # then: missing 'rejected'
    assert recognise({"chosen": "a", "rejected": "b"}) == "implicit"
    assert recognise({"chosen": "\n\nHuman: a", "rejected": "b"}) == "hh"
    with_prompt = {"prompt": "\n\nHuman: a", "chosen": "\n\nHuman: a", "rejected": "b"}
    assert recognise(with_prompt) == "plain"
    assert recognise({"prompt": "x", "completions": []}) == "ultrafeedback"
    assert recognise({"foo": 1}) is None


def test_unrecognised_unknown_and_non_object_records_are_data_errors():
    with pytest.raises(DataError, match=r"data.jsonl:3: no layout recognises a record with "
                                        r"fields \['foo'\]; layouts known: arena_conversations"):
        read({"foo": 1})
    with pytest.raises(DataError, match=r"data.jsonl:3: unknown layout 'arenna'; known: 'auto'"):
        read(PLAIN, "arenna")
    with pytest.raises(DataError, match=r"data.jsonl:3: expected a JSON object, got list"):
        read([1, 2])
    assert issubclass(DataError, PrefstudyError)


def test_unusable_record_reason_and_kind():
    e = UnusableRecord("winner_tie is set", "tie")
    assert (str(e), e.reason, e.kind) == ("winner_tie is set", "winner_tie is set", "tie")
    assert UnusableRecord("empty prompt").kind == "empty prompt"


@pytest.mark.parametrize("name", [n for n in GOOD if n != "unpaired"])
def test_no_consumed_field_reaches_meta(name):
    *_, meta, layout = read(GOOD[name])
    assert layout == name and set(meta).isdisjoint(LAYOUTS[name].consumes)


def test_meta_is_own_meta_then_other_fields_then_derived():
    record = {**SHP, "pair_id": "x", "meta": '{"chosen_score": -1, "src": "file"}'}
    *_, meta, _ = read(record)
    assert meta == {"src": "file", "post_id": "p1", "domain": "askscience", "upvote_ratio": 0.9,
                    "chosen_score": 52, "rejected_score": 3, "chosen_id": "ca",
                    "rejected_id": "cb"}
    for own in ({"a": 1}, [["a", 1]], '{"a": 1}'):
        assert read({**PLAIN, "meta": own})[3] == {"a": 1, "lang": "en"}
    with pytest.raises(DataError, match=r"data.jsonl:3: field 'meta' must be an object, got int"):
        read({**PLAIN, "meta": 3})


def test_forced_layout_is_used_whatever_recognise_says():
    prompt, chosen, rejected, meta, name = read({**IMPLICIT, "prompt": "P"}, "implicit")
    assert (prompt, chosen, name, meta) == ("Q: sky colour? A:", " blue", "implicit",
                                            {"prompt": "P"})
    with pytest.raises(DataError, match=r"data.jsonl:3: missing field 'chosen'"):
        read(ARENA, "plain")


# --------------------------------------------------------------------------- labelled layouts


def swap(record, pairs, label):
    """`record` with each (a, b) field pair exchanged and the label fields set as `label`."""
    out = dict(record)
    for a, b in pairs:
        out[a], out[b] = record[b], record[a]
    return {**out, **label}


SWAPS = {
    "arena_conversations": swap(ARENA_CONV, [("conversation_a", "conversation_b"),
                                             ("model_a", "model_b")], {"winner": "model_b"}),
    "arena": swap(ARENA, [("response_a", "response_b"), ("model_a", "model_b")],
                  {"winner_model_a": 0, "winner_model_b": 1}),
    "shp": swap(SHP, [("human_ref_A", "human_ref_B"), ("score_A", "score_B"),
                      ("c_root_id_A", "c_root_id_B")], {"labels": 0}),
    "alpaca_eval": swap(ALPACA, [("output_1", "output_2"), ("generator_1", "generator_2")],
                        {"preference": 2}),
    "ultrafeedback": {**ULTRA, "completions": ULTRA["completions"][::-1]},
}
TIES = {
    "arena_conversations": {"winner": "tie"},
    "arena": {"winner_model_a": 0, "winner_model_b": 0, "winner_tie": 1},
    "shp": {"labels": None},
    "alpaca_eval": {"preference": 1.5},
    "ultrafeedback": {"completions": [{**c, "fine-grained_score": 3}
                                      for c in ULTRA["completions"]]},
}


@pytest.mark.parametrize("name", list(SWAPS))
def test_the_order_of_the_answers_never_decides_the_pair(name):
    assert read(GOOD[name]) == read(SWAPS[name])
    assert read(SWAPS[name])[4] == name
    with pytest.raises(UnusableRecord):  # a tie or a missing label is never a pair
        read({**GOOD[name], **TIES[name]})
    with pytest.raises(UnusableRecord):
        read({**SWAPS[name], **TIES[name]})


def test_arena_conversations_pair_and_meta():
    assert read(ARENA_CONV)[:4] == ((user("What is 2+2?"),), "4", "5", {
        "question_id": "q1", "judge": "arena_user_7", "turn": 1, "language": "English",
        "chosen_model": "alpha", "rejected_model": "beta"})
    shared = [user("Hi"), bot("Hello"), user("2+2?")]
    two = {**ARENA_CONV, "conversation_a": [*shared, bot("4")],
           "conversation_b": [*shared, bot("5")]}
    assert read(two)[:3] == (tuple(shared), "4", "5")


@pytest.mark.parametrize("change, kind", [
    ({"winner": "tie (bothbad)"}, "tie"),
    ({"winner": None}, "no label"),
    ({"conversation_b": [user("Hi"), bot("Yo"), user("2+2?"), bot("5")],
      "conversation_a": [user("Hi"), bot("Hello"), user("2+2?"), bot("4")]}, "multi-turn"),
    ({"conversation_a": [user("What is 2+2?")]}, "no final reply"),
    ({"conversation_a": [bot("4")], "conversation_b": [bot("5")]}, "empty prompt"),
])
def test_arena_conversations_skips(change, kind):
    assert skip_kind({**ARENA_CONV, **change}) == kind


def test_arena_conversations_errors():
    with pytest.raises(DataError, match=r"data.jsonl:3: field 'winner' must be one of "
                                        r"\['model_a', 'model_b', 'tie', 'tie \(bothbad\)'\], "
                                        r"got 'a'"):
        read({**ARENA_CONV, "winner": "a"})
    with pytest.raises(DataError, match=r"data.jsonl:3: field 'conversation_b' must be list"):
        read({**ARENA_CONV, "conversation_b": "5"})
    with pytest.raises(DataError, match=r"conversation_a\[1\] has role 'gpt'"):
        read({**ARENA_CONV, "conversation_a": [user("x"), {"role": "gpt", "content": "4"}]})


def test_arena_pair_meta_and_label_spellings():
    assert read(ARENA)[:4] == ("Hi there", "Hello!", "Go away.",
                               {"id": 7, "chosen_model": "alpha", "rejected_model": "beta"})
    for a, b, tie in ((True, False, False), (1.0, 0.0, 0.0), ("1", "0", "0"), (" 1 ", "0", "0")):
        labels = {"winner_model_a": a, "winner_model_b": b, "winner_tie": tie}
        assert read({**ARENA, **labels})[1] == "Hello!"
    plain_text = {**ARENA, "prompt": "Hi there", "response_a": "Hello!",
                  "response_b": "Go away."}
    assert read(plain_text)[:3] == ("Hi there", "Hello!", "Go away.")
    assert read({**ARENA, "prompt": '"quoted"'})[0] == '"quoted"'  # JSON, but no list of turns
    decoded = {**ARENA, "prompt": ["Hi there"], "response_a": ["Hello!"], "response_b": ["Go."]}
    assert read(decoded)[:3] == ("Hi there", "Hello!", "Go.")


def test_arena_several_turns_become_a_conversation():
    record = {**ARENA, "prompt": '["Hi", "And 2+2?"]', "response_a": '["Hello", "4"]',
              "response_b": '["Hello", "5"]'}
    assert read(record)[:3] == ((user("Hi"), bot("Hello"), user("And 2+2?")), "4", "5")


@pytest.mark.parametrize("change, kind", [
    ({"winner_model_a": 0, "winner_tie": 1}, "tie"),
    ({"winner_model_a": 0}, "no label"),
    ({"winner_tie": None}, "no label"),
    ({"winner_model_b": 1}, "conflicting label"),
    ({"response_a": "[null]"}, "empty response"),
    ({"prompt": "[null]"}, "empty prompt"),
    ({"prompt": '["Hi", "2+2?"]', "response_a": '["Hello", "4"]', "response_b": '["Yo", "5"]'},
     "multi-turn"),
])
def test_arena_skips(change, kind):
    assert skip_kind({**ARENA, **change}) == kind


def test_arena_absent_label_is_no_label():
    record = {k: v for k, v in ARENA.items() if k != "winner_tie"}
    assert skip_kind(record) == "no label"


@pytest.mark.parametrize("change, message", [
    ({"winner_model_a": 2}, r"data.jsonl:3: field 'winner_model_a' must be 0 or 1, got 2"),
    ({"winner_tie": "yes"}, r"data.jsonl:3: field 'winner_tie' must be a number, got 'yes'"),
    ({"response_b": 3}, r"data.jsonl:3: field 'response_b' must be str or list, got int"),
    ({"response_b": '["a", "b"]'}, r"data.jsonl:3: prompt, response_a and response_b must "
                                   r"have as many turns, got 1, 1 and 2"),
    ({"response_b": []}, r"data.jsonl:3: field 'response_b' must be a non-empty list of texts"),
])
def test_arena_errors(change, message):
    with pytest.raises(DataError, match=message):
        read({**ARENA, **change})


def test_shp_pair_and_meta():
    assert read(SHP)[:4] == ("Why is the sky blue?", "Rayleigh scattering.", "Because.", {
        "post_id": "p1", "domain": "askscience", "upvote_ratio": 0.9, "chosen_score": 52,
        "rejected_score": 3, "chosen_id": "ca", "rejected_id": "cb"})
    assert read({**SHP, "labels": "0"})[1:3] == ("Because.", "Rayleigh scattering.")


@pytest.mark.parametrize("change, kind", [
    ({"labels": None}, "no label"), ({"labels": float("nan")}, "no label"),
    ({"labels": 0.5}, "fractional label"),
])
def test_shp_skips(change, kind):
    assert skip_kind({**SHP, **change}) == kind
    assert skip_kind({k: v for k, v in SHP.items() if k != "labels"}) == "no label"


@pytest.mark.parametrize("change, message", [
    ({"labels": 2}, r"data.jsonl:3: field 'labels' must be 0 or 1, got 2"),
    ({"labels": "A"}, r"data.jsonl:3: field 'labels' must be a number, got 'A'"),
    ({"history": None}, r"data.jsonl:3: field 'history' must be str, got NoneType"),
])
def test_shp_errors(change, message):
    with pytest.raises(DataError, match=message):
        read({**SHP, **change})


def test_alpaca_eval_pair_meta_and_input():
    assert read(ALPACA)[:4] == ("Name a colour.", "Blue.", "Dog.", {
        "dataset": "helpful_base", "price_per_example": 0.01, "time_per_example": 1.2,
        "chosen_model": "gpt4", "rejected_model": "tiny",
        "judge": "weighted_alpaca_eval_gpt4_turbo"})
    for value in (1.0, "1", 2, 2.0, " 2 "):
        chosen = "Blue." if float(value) == 1 else "Dog."
        assert read({**ALPACA, "preference": value})[1] == chosen
    assert read({**ALPACA, "input": "Pick one."})[0] == "Name a colour.\n\nPick one."
    assert read({**ALPACA, "input": "  "})[0] == "Name a colour."


@pytest.mark.parametrize("value, kind", [
    (1.5, "tie"), ("1.5", "tie"), (0, "no preference"), (None, "no label"),
    (float("nan"), "no label"), (1.25, "fractional label"), (1.9, "fractional label"),
])
def test_alpaca_eval_skips(value, kind):
    assert skip_kind({**ALPACA, "preference": value}) == kind


def test_alpaca_eval_absent_preference_is_no_label():
    assert skip_kind({k: v for k, v in ALPACA.items() if k != "preference"}) == "no label"


@pytest.mark.parametrize("value, message", [
    (3, r"field 'preference' must be 1 or 2 \(1.5 a tie, 0 none\), got 3"),
    (0.5, r"field 'preference' must be 1 or 2 .*got 0.5"),
    (-1, r"field 'preference' must be 1 or 2 .*got -1"),
    ("first", r"field 'preference' must be a number, got 'first'"),
    (True, r"field 'preference' must be a number, got True"),
])
def test_alpaca_eval_errors(value, message):
    with pytest.raises(DataError, match="data.jsonl:3: " + message):
        read({**ALPACA, "preference": value})


def test_ultrafeedback_pair_and_meta():
    assert read(ULTRA)[:4] == ("Write a haiku.", "Top.", "Low.", {
        "source": "evol", "chosen_model": "m1", "rejected_model": "m2", "chosen_score": 4.5,
        "rejected_score": 2.0})
    other_keys = {"prompt": "Write a haiku.", "completions": [
        {"model": "a", "text": "Top.", "rating": "5"}, {"content": "Low.", "rating": 1}]}
    assert read(other_keys)[:4] == ("Write a haiku.", "Top.", "Low.", {
        "chosen_model": "a", "chosen_score": 5.0, "rejected_score": 1.0})


@pytest.mark.parametrize("completions, kind", [
    ([{"model": "m", "response": "a", "score": 5}, {"response": "b", "score": 5},
      {"response": "c", "score": 1}], "score tie"),
    ([{"response": "a", "score": 5}], "too few completions"),
    ([{"response": "a", "score": 5}, {"response": "b", "score": "N/A"}], "too few completions"),
    ([{"response": "a", "score": 5}, {"response": "b"}], "too few completions"),
    # one record never mixes scales: the first score key any completion has is used
    ([{"response": "a", "fine-grained_score": 4}, {"response": "b", "overall_score": 9}],
     "too few completions"),
    ([], "too few completions"),
])
def test_ultrafeedback_skips(completions, kind):
    assert skip_kind({"instruction": "Q", "completions": completions}) == kind


@pytest.mark.parametrize("record, message", [
    ({"instruction": "Q", "completions": "none"}, r"field 'completions' must be list, got str"),
    ({"instruction": "Q", "completions": [3]}, r"completions\[0\] must be an object, got 3"),
    ({"instruction": "Q", "completions": [{"response": 3, "score": 1}]},
     r"completions\[0\] text must be str, got int"),
    ({"completions": []}, r"missing field 'prompt'"),
    ({"prompt": [user("Q")], "completions": []}, r"field 'prompt' must be str, got list"),
])
def test_ultrafeedback_errors(record, message):
    with pytest.raises(DataError, match="data.jsonl:3: " + message):
        read(record)


def many_lower(prompt, order=range(5)):
    """A top answer (score 4) and four lower ones, listed in `order`."""
    completions = [{"model": f"m{i}", "response": f"answer {i}", "score": i} for i in range(5)]
    return {"instruction": prompt, "completions": [completions[i] for i in order]}


def test_ultrafeedback_draw_is_the_documented_seeded_one():
    for seed in (0, 1, 7):
        prompt, chosen, rejected, meta, _ = read(many_lower("Say hi."), seed=seed)
        digest = hashlib.sha256(b"Say hi.").hexdigest()
        expected = random.Random(f"{seed}:{digest}").choice([f"answer {i}" for i in range(4)])
        assert (chosen, rejected, meta["rejected_model"]) == ("answer 4", expected,
                                                              expected.replace("answer ", "m"))


def test_ultrafeedback_draw_ignores_order_and_varies_with_seed():
    prompts = [f"Prompt {i}" for i in range(40)]
    draws = {seed: [read(many_lower(p), seed=seed)[2] for p in prompts] for seed in (0, 1)}
    for order in ([4, 3, 2, 1, 0], [3, 0, 4, 2, 1]):
        assert [read(many_lower(p, order))[2] for p in prompts] == draws[0]
    random.seed(123)  # the global random state plays no part
    assert [read(many_lower(p))[2] for p in prompts] == draws[0]
    assert draws[0] != draws[1]
    assert len(set(draws[0])) == 4  # every lower answer is drawn for some prompt
    assert read(many_lower("\ud800 lone"))[1] == "answer 4"  # the draw survives a bad prompt


# --------------------------------------------------------------------------- pair layouts


def test_messages_explicit_implicit_and_text_prompt():
    assert read(MESSAGES)[:4] == ((user("Hi"),), "Hello!", "Go.", {})
    explicit = {"prompt": [user("Hi")], "chosen": [bot("Hello!")], "rejected": [bot("Go.")]}
    assert read(explicit)[:3] == ((user("Hi"),), "Hello!", "Go.")
    text = {"prompt": "Hi", "chosen": [bot("Hello!")], "rejected": [bot("Go.")]}
    assert read(text)[:3] == ((user("Hi"),), "Hello!", "Go.")


@pytest.mark.parametrize("record, kind", [
    ({"chosen": [user("Hi"), bot("a")], "rejected": [user("Yo"), bot("b")]}, "no shared prompt"),
    ({"chosen": [user("Hi")], "rejected": [user("Hi")]}, "empty prompt"),
    ({"chosen": [user("Hi"), bot("a"), user("?")], "rejected": [user("Hi"), bot("b"), user("?")]},
     "no shared prompt"),
    ({"chosen": [user("Hi"), user("a")], "rejected": [user("Hi"), user("b")]}, "no final reply"),
    ({"chosen": [bot("a")], "rejected": [bot("b")]}, "empty prompt"),
])
def test_messages_skips(record, kind):
    assert skip_kind(record) == kind


def test_hh_pair_and_skips():
    assert read(HH)[:4] == ((user("Hi"),), "Hello!", "Go away.", {})
    mismatch = {"chosen": HH["chosen"], "rejected": "\n\nHuman: Yo\n\nAssistant: b"}
    assert skip_kind(mismatch) == "no shared prompt"
    no_reply = {"chosen": "\n\nHuman: Hi", "rejected": "\n\nHuman: Hi"}
    assert skip_kind(no_reply) == "no assistant turn"
    no_human = {"chosen": "\n\nAssistant: a", "rejected": "\n\nAssistant: b"}
    assert skip_kind(no_human) == "no human turn"


def test_implicit_prompt_is_cut_at_a_word_boundary():
    assert read(IMPLICIT)[:4] == ("Q: sky colour? A:", " blue", " green", {})
    mid_word = {"chosen": "The sky is blue.", "rejected": "The sky is black."}
    assert read(mid_word)[:3] == ("The sky is", " blue.", " black.")
    runs = {"chosen": "Question?\n\nBlue.", "rejected": "Question?\n\nGreen."}
    assert read(runs)[:3] == ("Question?", "\n\nBlue.", "\n\nGreen.")
    longer = {"chosen": "Say it: yes", "rejected": "Say it: yes please"}
    assert read(longer)[:3] == ("Say it:", " yes", " yes please")


@pytest.mark.parametrize("chosen, rejected", [("Yes", "No"), ("Paris", "Parma"),
                                              (" Yes", " No")])
def test_implicit_without_shared_prompt_is_skipped(chosen, rejected):
    assert skip_kind({"chosen": chosen, "rejected": rejected}) == "no shared prompt"


def test_plain_pair_and_errors():
    assert read(PLAIN)[:4] == ("Hi", "Hello!", "Go away.", {"lang": "en"})
    with pytest.raises(DataError, match=r"data.jsonl:3: missing field 'rejected' \(fields "
                                        r"present: \['chosen', 'prompt'\]\)"):
        read({"prompt": "x", "chosen": "y"})
    with pytest.raises(DataError, match=r"data.jsonl:3: field 'chosen' must be str, got int"):
        read({"prompt": "x", "chosen": 3, "rejected": "z"})


def test_unpaired_data_is_refused():
    with pytest.raises(DataError, match=r"data.jsonl:3: unpaired preference data \(one "
                                        r"completion with a label\): a pair needs two answers"):
        read(UNPAIRED)


# --------------------------------------------------------------------------- column maps


def test_column_map_from_text_and_mapping():
    expected = {"prompt": "question", "chosen": "good", "rejected": "bad"}
    assert column_map("prompt=question, chosen=good,rejected = bad") == expected
    assert column_map(expected) == expected
    assert column_map(None) == column_map("  ") == {}


@pytest.mark.parametrize("spec, message", [
    ("prompt", r"column map item 'prompt' must be canonical=column"),
    ("prompt=a=b", r"column map item 'prompt=a=b' must be canonical=column"),
    ("prompt=q,", r"column map item '' must be canonical=column"),
    ("=q", r"column map item ''='q': both names must be non-empty text"),
    ("prompt= ", r"both names must be non-empty text"),
    ({"prompt": 3}, r"column map item 'prompt'=3: both names must be non-empty text"),
    ("promt=q", r"column map: 'promt' is no field a layout reads; known: .*'?prompt"),
    ("prompt=q,prompt=r", r"column map: 'prompt' is given twice"),
    ("prompt=q,chosen=q", r"column map: column 'q' is mapped to two names \('prompt' and "
                          r"'chosen'\)"),
])
def test_column_map_refuses_bad_specs_in_one_line(spec, message):
    with pytest.raises(ValueError, match=message) as caught:
        column_map(spec)
    assert "\n" not in str(caught.value)


def test_renamed_maps_columns_to_canonical_names():
    columns = column_map("prompt=question,chosen=good,rejected=bad")
    record = {"question": "Hi", "good": "Hello!", "x": 1, "bad": "Go."}
    out = renamed(record, columns, WHERE)
    assert list(out.items()) == [("prompt", "Hi"), ("chosen", "Hello!"), ("x", 1),
                                 ("rejected", "Go.")]
    assert read(out)[:5] == ("Hi", "Hello!", "Go.", {"x": 1}, "plain")
    flipped = renamed(PLAIN, column_map("chosen=rejected,rejected=chosen"), WHERE)
    assert (flipped["chosen"], flipped["rejected"]) == ("Go away.", "Hello!")


def test_renamed_errors_name_where_and_the_column():
    with pytest.raises(DataError, match=r"data.jsonl:3: column 'question' \(mapped to 'prompt'\) "
                                        r"is missing \(fields present: \['chosen', 'q'\]\)"):
        renamed({"q": "Hi", "chosen": "a"}, {"prompt": "question"}, WHERE)
    with pytest.raises(DataError, match=r"data.jsonl:3: column 'q' is mapped to 'prompt', which "
                                        r"is already a field"):
        renamed({"q": "Hi", "prompt": "Yo"}, {"prompt": "q"}, WHERE)


def test_nan_is_missing_everywhere():  # NaN: the stand-in a table gives for a missing cell
    assert skip_kind({**ARENA, "winner_tie": float("nan")}) == "no label"
    assert "chosen_model" not in read({**ARENA, "model_a": float("nan")})[3]
