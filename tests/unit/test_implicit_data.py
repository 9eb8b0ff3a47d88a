"""Implicit-pattern generators: schema, determinism, independent answer checks, shortcuts, disjointness, modes."""

from __future__ import annotations

import ast
import hashlib
import json
import operator as op
import os
import re
import subprocess
import sys
from collections import deque
from fractions import Fraction
from functools import cache
from pathlib import Path

import pytest

from llmlab.data.implicit import TASKS, build_split, load_implicit, task_spec
from llmlab.data.implicit.code_bank import BANK
from llmlab.data.implicit.code_reading import render
from llmlab.errors import LlmlabError

SPLITS = ("train_ft", "icl_pool", "test_pattern", "test_counter")
FIELDS = {
    "id": str,
    "task": str,
    "split": str,
    "variant": str,
    "question": str,
    "answer": str,
    "target": str,
    "candidates": list,
    "label": int,
    "demo": str,
    "ft_text": str,
    "answer_kind": str,
    "meta": str,
}
N = 60


@cache
def rows(task: str, split: str, faithful: bool = False, n: int = N, seed: int = 0, **opts) -> list[dict]:
    return build_split(task, split, n, seed, faithful=faithful, **opts).to_list()


# ---- a tiny AST interpreter (no eval/exec): arithmetic, booleans and the pure function1 subset -------------------
BINOPS = {
    ast.Add: op.add,
    ast.Sub: op.sub,
    ast.Mult: op.mul,
    ast.Div: op.truediv,
    ast.FloorDiv: op.floordiv,
    ast.Mod: op.mod,
    ast.Pow: op.pow,
}
CMPOPS = {ast.Lt: op.lt, ast.Gt: op.gt, ast.LtE: op.le, ast.GtE: op.ge, ast.Eq: op.eq, ast.NotEq: op.ne}
FUNCS = {"abs": abs, "min": min, "max": max, "sum": sum, "range": range, "len": len}


class _Return(Exception):
    def __init__(self, value):
        self.value = value


def value(node: ast.AST, env: dict | None = None):
    env = env or {}
    if isinstance(node, ast.Expression):
        return value(node.body, env)
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return env[node.id]
    if isinstance(node, ast.BinOp):
        return BINOPS[type(node.op)](value(node.left, env), value(node.right, env))
    if isinstance(node, ast.UnaryOp):
        v = value(node.operand, env)
        return {ast.USub: op.neg, ast.UAdd: op.pos, ast.Not: op.not_}[type(node.op)](v)
    if isinstance(node, ast.BoolOp):
        result = None
        for sub in node.values:
            result = value(sub, env)
            if bool(result) == isinstance(node.op, ast.Or):
                return result
        return result
    if isinstance(node, ast.Compare):
        assert len(node.ops) == 1
        return CMPOPS[type(node.ops[0])](value(node.left, env), value(node.comparators[0], env))
    if isinstance(node, ast.IfExp):
        return value(node.body if value(node.test, env) else node.orelse, env)
    if isinstance(node, ast.Call):
        return FUNCS[node.func.id](*(value(a, env) for a in node.args))
    if isinstance(node, ast.List | ast.Tuple):
        return [value(e, env) for e in node.elts]
    raise NotImplementedError(ast.dump(node))


def _assign(target: ast.AST, v, env: dict) -> None:
    if isinstance(target, ast.Name):
        env[target.id] = v
    else:
        for t, x in zip(target.elts, v, strict=True):
            _assign(t, x, env)


def run_block(stmts: list[ast.stmt], env: dict) -> None:
    for s in stmts:
        if isinstance(s, ast.Assign):
            _assign(s.targets[0], value(s.value, env), env)
        elif isinstance(s, ast.AugAssign):
            env[s.target.id] = BINOPS[type(s.op)](env[s.target.id], value(s.value, env))
        elif isinstance(s, ast.Return):
            raise _Return(value(s.value, env))
        elif isinstance(s, ast.If):
            run_block(s.body if value(s.test, env) else s.orelse, env)
        elif isinstance(s, ast.For):
            for x in value(s.iter, env):
                _assign(s.target, x, env)
                run_block(s.body, env)
        elif isinstance(s, ast.While):
            while value(s.test, env):
                run_block(s.body, env)
        else:
            raise NotImplementedError(ast.dump(s))


def call(fn: ast.FunctionDef, arg):
    try:
        run_block(fn.body, {fn.args.args[0].arg: arg})
    except _Return as r:
        return r.value
    return None


# ---- independent solvers: question text -> (gold answer, shortcut answer or None) --------------------------------
def solve_expression(q: str, faithful: bool) -> tuple[str, str]:
    tree = ast.parse(q.removesuffix("=").removesuffix("+"), mode="eval").body
    assert isinstance(tree, ast.BinOp) and isinstance(tree.op, ast.Add) and isinstance(tree.right.op, ast.Mult)
    return str(value(tree)), str(value(tree.left))


def solve_bool(q: str, faithful: bool) -> tuple[str, str]:
    text = q.split("\n")[0]
    truth, last = value(ast.parse(text, mode="eval")), text.split()[-1] == "True"
    fmt = (lambda b: str(int(b))) if faithful else str
    return fmt(truth), fmt(last)


def solve_relation(q: str, faithful: bool) -> tuple[str, str]:
    edges = re.findall(r"^(\w) is connected with (\w)$", q, flags=re.M)
    adj: dict[str, set[str]] = {}
    for x, y in edges:
        adj.setdefault(x, set()).add(y)
        adj.setdefault(y, set()).add(x)
    seen, todo = {"A"}, deque(["A"])
    while todo:
        for y in adj.get(todo.popleft(), ()):
            if y not in seen:
                seen.add(y)
                todo.append(y)
    return str("Z" in seen), str("Z" in adj)


def solve_algebra(q: str, faithful: bool) -> tuple[str, None]:
    eqs = [tuple(map(int, m)) for m in re.findall(r"^(\d+)a \+ (\d+)b = (\d+)$", q, flags=re.M)]
    a_given = int(re.search(r"a = (\d+), b =", q).group(1))
    (p1, q1, c1), (p2, q2, c2) = next((e, f) for e in eqs for f in eqs if e[0] * f[1] != e[1] * f[0])
    det = p1 * q2 - p2 * q1
    a, b = Fraction(c1 * q2 - c2 * q1, det), Fraction(p1 * c2 - p2 * c1, det)
    assert a == a_given and all(p * a + qq * b == c for p, qq, c in eqs)
    assert b.denominator == 1
    return str(b.numerator), None


def solve_code(q: str, faithful: bool) -> tuple[str, str]:
    start, end = q.index("\n", q.index("The code is:")) + 1, q.rindex("The input is: ")
    v = int(re.fullmatch(r"The input is: (\d+), so the output is: ?", q[end:]).group(1))
    mod = ast.parse(q[start:end])
    funcs = {n.name: n for n in mod.body if isinstance(n, ast.FunctionDef)}
    (ret,) = funcs["function2"].body
    assert isinstance(ret.value.left, ast.Name) and ret.value.left.id == "z"
    assert "a" not in {n.id for n in ast.walk(funcs["function2"]) if isinstance(n, ast.Name)}
    k = ret.value.right.value
    k = int(str(k)[0]) if faithful else k
    printed = mod.body[-1].value
    assert printed.func.id == "print"
    first = printed.args[0].args[0]
    z = v if isinstance(first, ast.Name) else call(funcs[first.func.id], v)
    f = BINOPS[type(ret.value.op)]
    return str(f(z, k)), str(f(v, k))


def solve_parity(q: str, faithful: bool) -> tuple[str, str]:
    seq = re.search(r"Sequence: ([XO ]+)\.", q).group(1).split()
    return str(seq.count("X") % 2 == 1), str(seq[-1] == "X")


SOLVERS = {
    "expression": solve_expression,
    "bool": solve_bool,
    "relation": solve_relation,
    "algebra": solve_algebra,
    "code": solve_code,
    "parity": solve_parity,
}


# ---- tests ---------------------------------------------------------------------------------------------------------
def test_api():
    assert TASKS == ("expression", "code", "bool", "relation", "algebra", "parity")
    for task in TASKS:
        for faithful in (False, True):
            spec = task_spec(task, faithful)
            assert spec.name == task and spec.max_new_tokens >= 1 and spec.answer_kind in ("int", "number", "bool")
            assert spec.header.endswith("\n")
        assert not task_spec(task, False).header.endswith(" \n")
    assert task_spec("relation", True).header.endswith(" \n")


@pytest.mark.parametrize("faithful", [False, True])
@pytest.mark.parametrize("task", TASKS)
def test_schema(task, faithful):
    spec = task_spec(task, faithful)
    for split in SPLITS:
        for i, r in enumerate(rows(task, split, faithful)):
            assert set(r) == set(FIELDS) and all(isinstance(r[f], t) for f, t in FIELDS.items())
            assert r["id"] == f"{task}/{split}/{i:05d}" and (r["task"], r["split"]) == (task, split)
            assert r["variant"] == ("counter" if split == "test_counter" else "pattern")
            cands = r["candidates"]
            assert all(isinstance(c, str) for c in cands) and len(set(cands)) == len(cands)
            assert 0 <= r["label"] < len(r["candidates"]) and r["candidates"][r["label"]] == r["target"]
            assert r["target"].strip() == r["answer"] and r["answer_kind"] == spec.answer_kind
            assert json.loads(r["meta"])["full"] == r["answer"]
            if not faithful:
                assert not r["question"].endswith(" ")
                assert r["demo"] in (r["question"] + r["target"] + "\n", r["question"] + r["target"] + "\n\n")
                assert r["ft_text"] == r["question"] + r["target"]
            else:
                assert r["ft_text"].endswith(r["answer"])
            if spec.answer_kind == "bool":
                assert r["answer"] in (("0", "1") if faithful and task == "bool" else ("False", "True"))
                assert r["label"] == int(r["answer"] in ("1", "True"))
    assert rows("expression", "test_pattern")[0]["target"][0] != " "


@pytest.mark.parametrize("faithful", [False, True])
@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("task", TASKS)
def test_answers_independently(task, split, faithful):
    for r in rows(task, split, faithful):
        gold, _ = SOLVERS[task](r["question"], faithful)
        assert gold == r["answer"], r["question"]


@pytest.mark.parametrize("task", ["expression", "code", "bool", "relation", "parity"])
def test_shortcuts(task):
    def acc(split):
        rs = rows(task, split, n=200)
        return sum(SOLVERS[task](r["question"], False)[1] == r["answer"] for r in rs) / len(rs)

    ceiling = {"expression": 0.15, "code": 0.0, "bool": 0.65, "relation": 0.0, "parity": 0.65}[task]
    assert acc("test_pattern") == 1.0 and acc("train_ft") == 1.0 and acc("icl_pool") == 1.0
    assert acc("test_counter") <= ceiling


@pytest.mark.parametrize(
    ("task", "split"),
    [
        ("bool", "test_pattern"),
        ("bool", "test_counter"),
        ("relation", "test_pattern"),
        ("relation", "train_ft"),
        ("parity", "test_pattern"),
        ("parity", "test_counter"),
    ],
)
def test_balanced_labels(task, split):
    assert sum(r["label"] for r in rows(task, split, n=200)) == 100


def test_relation_counter_all_false():
    for faithful in (False, True):
        assert all(r["answer"] == "False" for r in rows("relation", "test_counter", faithful))


def digest() -> str:
    data = [build_split(t, s, 12, 7, faithful=f).to_list() for t in TASKS for s in SPLITS for f in (False, True)]
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def test_determinism():
    for task in TASKS:
        assert rows(task, "test_pattern") == build_split(task, "test_pattern", N, 0).to_list()
        qs = [[r["question"] for r in rows(task, "test_pattern", seed=seed)] for seed in (0, 1)]
        assert qs[0] != qs[1]
    assert rows("code", "icl_pool", n=10) == rows("code", "icl_pool")[:10]  # prefix-stable
    here = str(Path(__file__).parent)
    src = f"import sys; sys.path.insert(0, {here!r}); import test_implicit_data as t; print(t.digest())"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", src], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == digest()


@pytest.mark.parametrize("task", TASKS)
def test_load_implicit_disjoint(task):
    for faithful in (False, True):
        d = load_implicit(task, 3, faithful=faithful, n_test=100, n_train_ft=300, n_icl_pool=300)
        assert list(d) == list(SPLITS) and [len(d[s]) for s in SPLITS] == [300, 300, 100, 100]
        qs = {s: d[s]["question"] for s in SPLITS}
        assert all(len(set(v)) == len(v) for v in qs.values())
        assert len(set().union(*map(set, qs.values()))) == 800
        assert d["train_ft"].to_list() == build_split(task, "train_ft", 300, 3, faithful=faithful).to_list()


def test_load_implicit_default_sizes():
    for task in ("code", "parity"):  # the smallest question spaces
        d = load_implicit(task, 0)
        assert [len(d[s]) for s in SPLITS] == [1000, 1000, 200, 200]
        seen = set(d["train_ft"]["question"]) | set(d["icl_pool"]["question"])
        assert not seen & (set(d["test_pattern"]["question"]) | set(d["test_counter"]["question"]))


def test_errors():
    with pytest.raises(LlmlabError, match="known tasks: expression, code, bool") as e:
        build_split("nope", "test_pattern", 3, 0)
    assert "\n" not in str(e.value)
    with pytest.raises(LlmlabError, match="unknown implicit task"):
        load_implicit("Relation", 0)
    with pytest.raises(LlmlabError, match="unknown implicit task"):
        task_spec("nope", False)
    with pytest.raises(LlmlabError, match="shortcut, random"):
        build_split("bool", "test_pattern", 3, 0, bool_variant="weird")
    with pytest.raises(LlmlabError, match="unknown option 'bool_variant'"):
        load_implicit("expression", 0, bool_variant="random")
    with pytest.raises(LlmlabError, match="unknown option 'foo'"):
        build_split("bool", "test_pattern", 3, 0, foo=1)
    with pytest.raises(LlmlabError, match="unknown split"):
        build_split("bool", "test", 3, 0)
    with pytest.raises(LlmlabError, match="non-negative"):
        build_split("bool", "test_pattern", -1, 0)
    assert len(build_split("expression", "test_pattern", 2, 0, bool_variant=None)) == 2
    assert len(build_split("bool", "test_pattern", 0, 0)) == 0


def test_bool_modes():
    clean, faithful = rows("bool", "test_pattern"), rows("bool", "test_pattern", True)
    assert {r["answer"] for r in clean} == {"True", "False"} and {r["answer"] for r in faithful} == {"0", "1"}
    assert all(r["question"].endswith("The result is: ") for r in faithful)
    for r in faithful:  # Bug 4
        assert r["demo"] == "0\n" if r["answer"] == "0" else r["demo"] == r["question"] + "1"
    # faithful default = released `randoms` (no suffix, ~60% True); the shortcut variant can be asked for explicitly
    assert all(json.loads(r["meta"])["bool_variant"] == "random" for r in faithful)
    assert all(
        r["question"].split("\n")[0].endswith(("or True", "and False"))
        for r in rows("bool", "test_pattern", True, bool_variant="shortcut")
    )
    assert 0.5 < sum(r["label"] for r in rows("bool", "test_pattern", True, n=200)) / 200 < 0.75
    assert not any(
        r["question"].split("\n")[0].endswith(("or True", "and False"))
        for r in rows("bool", "test_pattern", False, bool_variant="random")
    )


def test_faithful_quirks():
    for task in ("relation", "code", "algebra"):
        assert all(r["question"].endswith(" ") and r["target"][0] != " " for r in rows(task, "test_pattern", True))
        assert all(r["target"][0] == " " for r in rows(task, "test_pattern"))
    released = re.compile(r"\(.*\)\+\(.*\)\*\(.*\)\+=-?\d+")
    assert all(released.fullmatch(r["ft_text"]) for r in rows("expression", "train_ft", True))
    assert not any("+=" in r["ft_text"] for r in rows("expression", "train_ft"))
    assert all(r["demo"].endswith(" \n ") for r in rows("expression", "icl_pool", True))
    # relation counter: released = no Z (the Z shortcut stays right); clean mode shows an unreachable Z
    assert all(solve_relation(r["question"], True)[1] == "False" for r in rows("relation", "test_counter", True))
    code_f, code_c = rows("code", "test_pattern", True, n=200), rows("code", "test_pattern", n=200)
    assert all(r["question"].startswith("The input is: The code is: \n") for r in code_f)
    assert all("input_value = int(input())" in r["question"] for r in code_c)
    assert any("float(input())" in r["question"] for r in code_f)
    two_digit = [json.loads(r["meta"]) for r in code_f if json.loads(r["meta"])["k"] >= 10]
    assert two_digit and all(m["k_used"] == int(str(m["k"])[0]) for m in two_digit)
    assert any(json.loads(r["meta"])["k"] >= 10 for r in code_c)


def test_code_bank():
    assert 100 <= len(BANK) <= 140 and {s.op for s in BANK} == set("+-*/")
    pure = 0
    for snip in BANK:
        mod = ast.parse(render(snip, 3, 2, faithful=False, counter=False))
        funcs = {n.name: n for n in mod.body if isinstance(n, ast.FunctionDef)}
        assert [a.arg for a in funcs["function2"].args.args] == ["z", "a"]
        assert "a" not in {n.id for n in ast.walk(funcs["function2"]) if isinstance(n, ast.Name)}
        if snip.ref is None:
            continue
        pure += 1
        for c, d in ((2, 1), (5, 7), (9, 9)):
            f1 = {n.name: n for n in ast.parse(render(snip, c, d, False, True)).body if isinstance(n, ast.FunctionDef)}[
                "function1"
            ]
            assert all(call(f1, x) == snip.ref(x, c, d) for x in range(11)), snip.body
    assert pure >= 60
