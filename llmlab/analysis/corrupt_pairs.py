"""Clean/corrupt prompt pairs for patching, built from the pattern test items of the implicit tasks.

The clean prompt is a pattern item; the corrupt one breaks the shortcut with the smallest edit that changes the gold:
- bool: make the last literal the other value, so that the shortcut and the gold both flip: flip the literal alone
  (`(E) and False` -> `(E) and True` where E is True), else with its operator (`(E) and False` -> `(E) or True`), else
  swap it with an inner literal of the other value (the same characters: the same length for a byte tokenizer);
- expression: change one digit of the reducible factor Z so that Z != 0 (and the answer changes);
- relation: a True item's edge `a - Z` becomes `a - X` for a letter X that is not in the graph (gold -> False).
Both prompts get the same header and demonstrations (drawn per item, seeded, from the ICL pool; a k-shot prompt uses
the first k). A pair is kept only if, for every requested k, the two prompts have the same token length and the two
answers differ in a token after a shared prefix; that prefix (e.g. the space before " True"/" False" with a byte
tokenizer) is appended to both prompts and the answers are compared on their first differing tokens.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from llmlab.errors import LlmlabError
from llmlab.seeding import make_rng

TASKS = ("bool", "expression", "relation")


@dataclass(frozen=True)
class Pair:
    id: str
    clean: str  # question texts (no header, no demonstrations)
    corrupt: str
    clean_target: str
    corrupt_target: str
    demos: tuple[str, ...]


@dataclass(frozen=True)
class Encoded:
    clean: list[int]  # token ids of the whole prompt (+ the answers' shared prefix)
    corrupt: list[int]
    answers: tuple[int, int]  # first differing token of the clean and of the corrupt answer


def bool_value(text: str) -> bool:
    """Value of a Python-style expression of True/False, and/or (`and` binds tighter) and parentheses."""
    toks, pos = re.findall(r"\(|\)|True|False|and|or", text), 0

    def disjunction() -> bool:
        nonlocal pos
        value = conjunction()
        while pos < len(toks) and toks[pos] == "or":
            pos += 1
            value = conjunction() or value  # parse the right side even when the value is already known
        return value

    def conjunction() -> bool:
        nonlocal pos
        value = atom()
        while pos < len(toks) and toks[pos] == "and":
            pos += 1
            value = atom() and value
        return value

    def atom() -> bool:
        nonlocal pos
        pos += 1
        if toks[pos - 1] == "(":
            value = disjunction()
            pos += 1  # ")"
            return value
        return toks[pos - 1] == "True"

    return disjunction()


def _bool_corruptions(row: dict, rng: random.Random) -> Iterator[tuple[str, bool]]:
    """Edits that make the last literal the other value; the caller keeps those that change the gold."""
    expr = json.loads(row["meta"])["expr"]
    rest = row["question"][len(expr) :]
    lits = list(re.finditer(r"True|False", expr))
    last = lits[-1]
    flip = "False" if last.group() == "True" else "True"
    texts = [expr[: last.start()] + flip + expr[last.end() :]]
    tail = re.search(r"(and|or) (True|False)$", expr)
    if tail:  # the operator too: `(E) and False` -> `(E) or True`
        texts.append(expr[: tail.start()] + {"and": "or", "or": "and"}[tail.group(1)] + " " + flip)
    for inner in reversed(lits[:-1]):  # swap the last literal with an inner one of the other value
        if inner.group() == flip:
            texts.append(
                expr[: inner.start()] + last.group() + expr[inner.end() : last.start()] + flip + expr[last.end() :]
            )
    for text in texts:
        yield text + rest, bool_value(text)


def _signed_sum(text: str) -> int:
    return sum(int(t) for t in re.findall(r"[+-]?\d+", text))


def _expression_corruptions(row: dict, rng: random.Random) -> Iterator[tuple[str, int]]:
    meta = json.loads(row["meta"])
    z, vs, vc = meta["Z"], meta["vs"], meta["vc"]
    digits = [m.start() for m in re.finditer(r"\d", z)]
    rng.shuffle(digits)
    for i in digits:
        leading = i == 0 or not z[i - 1].isdigit()
        multi = i + 1 < len(z) and z[i + 1].isdigit()
        for d in rng.sample("0123456789", 10):
            if d == z[i] or (d == "0" and leading and multi):
                continue
            new = z[:i] + d + z[i + 1 :]
            if _signed_sum(new) != 0:
                yield row["question"].replace(f")+({z})*(", f")+({new})*(", 1), vs + _signed_sum(new) * vc


def _relation_corruptions(row: dict, rng: random.Random) -> Iterator[tuple[str, bool]]:
    question = row["question"]
    edge = question.rfind("with Z\n")
    if edge < 0:  # a False pattern item: no Z edge to break
        return
    for letter in rng.sample("KLMNOPQRSTUVWXY", 15):
        yield question[:edge] + f"with {letter}\n" + question[edge + len("with Z\n") :], False


CORRUPTIONS = {"bool": _bool_corruptions, "expression": _expression_corruptions, "relation": _relation_corruptions}


def corruptions(task: str, row: dict, rng: random.Random) -> Iterator[tuple[str, str]]:
    """Corrupt (question, target) candidates for one pattern row, best first, each with a different gold."""
    if task not in CORRUPTIONS:
        raise LlmlabError(f"circuit_shift supports the implicit tasks {', '.join(TASKS)}; got '{task}'")
    for question, gold in CORRUPTIONS[task](row, rng):
        if task == "expression":
            target = str(gold)
        else:  # binary tasks: candidates are [no, yes]
            target = row["candidates"][int(gold)]
        if target != row["target"]:
            yield question, target


def encode(tok, header: str, pair: Pair, shots: int) -> Encoded | None:
    """Token ids of the k-shot clean and corrupt prompts and their answer tokens; None if the pair is unusable."""
    demos = "".join(pair.demos[:shots])
    clean, c_ans = _prompt_and_answer(tok, header + demos + pair.clean, pair.clean_target)
    corrupt, k_ans = _prompt_and_answer(tok, header + demos + pair.corrupt, pair.corrupt_target)
    n = 0
    while n < min(len(c_ans), len(k_ans)) and c_ans[n] == k_ans[n]:
        n += 1
    if len(clean) != len(corrupt) or n == min(len(c_ans), len(k_ans)):
        return None
    return Encoded(clean + c_ans[:n], corrupt + k_ans[:n], (c_ans[n], k_ans[n]))


def _prompt_and_answer(tok, prompt: str, target: str) -> tuple[list[int], list[int]]:
    """Prompt ids and what tokenizing prompt + target adds after them (as the scorer does)."""
    ids = tok(prompt, add_special_tokens=True).input_ids
    whole = tok(prompt + target, add_special_tokens=True).input_ids
    answer = whole[len(ids) :] if whole[: len(ids)] == ids else tok(target, add_special_tokens=False).input_ids
    return ids, answer


def build_pairs(
    task: str, rows: Sequence[dict], pool: Sequence[str], header: str, tok, n: int, shots: Sequence[int], seed: int
) -> list[Pair]:
    """Up to `n` pairs from the pattern rows, in row order, usable at every k in `shots`."""
    if max(shots) > len(pool):
        raise LlmlabError(f"{max(shots)} demonstrations requested but the ICL pool has {len(pool)}")
    pairs: list[Pair] = []
    for row in rows:
        if len(pairs) == n:
            break
        rng = make_rng(seed, "circuit_shift", row["id"])
        demos = tuple(pool[j] for j in rng.sample(range(len(pool)), max(shots)))
        for question, target in corruptions(task, row, rng):
            pair = Pair(row["id"], row["question"], question, row["target"], target, demos)
            if all(encode(tok, header, pair, k) is not None for k in shots):
                pairs.append(pair)
                break
    return pairs
