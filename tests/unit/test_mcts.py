"""MCTS (UCT, back-propagation, search), rewards (JSD, scorer), model pairs, speculative decoding, MCTS runner."""

from __future__ import annotations

import contextlib
import json
import math

import pytest
import torch

from llmlab.blocksworld.domain import generate_problems, optimal_plan
from llmlab.blocksworld.search import RuleWorld
from llmlab.errors import LlmlabError
from llmlab.search.mcts import MCTS, MCTSSettings, Node, dump_tree, refined_return, uct
from llmlab.search.rewards import ActionScorer, Normaliser, jsd, jsd_code
from tests.helpers import runner_setup


@pytest.fixture(scope="module")
def tiny():
    from llmlab.hardware import Hardware
    from llmlab.models.loading import load_model
    from llmlab.models.partners import named_model_config

    return load_model(named_model_config("tiny-random"), Hardware(torch.device("cpu"), torch.float32), "/tmp", seed=0)


# ---------------------------------------------------------------- UCT and back-propagation by hand


def test_uct_by_hand():
    parent = Node(0, returns=[0.0] * 4)
    visited = Node(1, returns=[1.0, 3.0])  # Q = 2, N = 2
    fresh = Node(2, fast_reward=0.5)
    assert uct(parent, visited, 1.0, True) == pytest.approx(2 + math.sqrt(math.log(4) / 2))  # 2.83255
    assert uct(parent, fresh, 1.0, True) == pytest.approx(0.5 + math.sqrt(math.log(4)))  # 1.67741
    assert uct(parent, fresh, 1.0, False) == math.inf
    assert uct(parent, visited, 0.0, True) == 2.0


def _path(rewards):
    nodes = [Node(0)]
    for i, r in enumerate(rewards, 1):
        nodes.append(Node(i, parent=nodes[-1], depth=i, reward=r))
    return nodes


def test_sum_mean_backprop_by_hand():
    path = _path([1.0, 2.0, 3.0])
    MCTS(None, None, MCTSSettings()).backprop(path)
    assert [n.returns for n in path] == [[6.0], [6.0], [5.0], [3.0]]
    MCTS(None, None, MCTSSettings()).backprop(path)
    assert path[1].visits == 2 and path[1].q == 6.0


def test_refined_backprop_by_hand():
    # values p = [0, 1, 0.5, 2]; f(1) = 1, f(-0.5) = 0.5 * max(-0.5, -0.1) = -0.05, f(1.5) = 1.5; lambda = 0.1
    path = _path([1.0, 0.5, 2.0])
    MCTS(None, None, MCTSSettings(backprop="refined", bp_lambda=0.1)).backprop(path)
    assert path[3].returns[0] == pytest.approx(1.5 - 0.1)  # [0.5, 2], 1 node
    assert path[2].returns[0] == pytest.approx(-0.05 + 1.5 - 0.2)  # [1, 0.5, 2], 2 nodes
    assert path[1].returns[0] == pytest.approx(1 - 0.05 + 1.5 - 0.3)  # [0, 1, 0.5, 2], 3 nodes
    assert path[0].returns[0] == pytest.approx(1 - 0.05 + 1.5 - 0.4)
    assert refined_return([0.0, -1.0], 1, 0.0) == pytest.approx(-0.05)  # drops are capped


# ---------------------------------------------------------------- search on toy worlds


class ToyWorld:
    """Sequences over {a, b, c} of length 3; only b, c, a pays (scripted reward at the leaf)."""

    def init_state(self):
        return ()

    def step(self, state, action):
        return state + (action,), {}

    def is_terminal(self, state):
        return len(state) == 3


class ToySearch:
    def __init__(self, hint: bool):
        self.hint, self.calls = hint, 0

    def actions(self, state):
        return ["a", "b", "c"]

    def fast_rewards(self, state, actions):
        self.calls += 1
        good = "bca"[len(state)]
        return [(1.0 if self.hint and a == good else 0.0, {}) for a in actions]

    def reward(self, state, action, aux, fast_parts):
        return (10.0 if state + (action,) == ("b", "c", "a") else 0.0), {}


@pytest.mark.parametrize("backprop", ["sum_mean", "refined"])
def test_mcts_finds_the_optimum_with_an_uninformative_fast_reward(backprop):
    s = MCTSSettings(n_iters=60, depth_limit=3, w_exp=1.0, uct_with_fast_reward=False, backprop=backprop)
    result = MCTS(ToyWorld(), ToySearch(hint=False), s).run()
    assert [n.action for n in result.path[1:]] == ["b", "c", "a"]
    tree = dump_tree(result)
    assert json.loads(json.dumps(tree))["answer"] == [n.id for n in result.path]


def test_mcts_follows_an_informative_fast_reward_in_one_iteration():
    for output in ("max_reward", "follow_max", "max_visit"):
        s = MCTSSettings(n_iters=1, depth_limit=3, output=output)
        result = MCTS(ToyWorld(), ToySearch(hint=True), s).run()
        assert [n.action for n in result.path[1:]] == ["b", "c", "a"]


def test_mcts_solves_blocksworld_with_an_oracle_reward():
    problem, plan = generate_problems(1, 4, seed=5)[0]

    class Oracle:  # fast reward 1 for actions that keep an optimal plan within reach
        def actions(self, state):
            from llmlab.blocksworld.domain import legal_actions

            return legal_actions(state.atoms, problem.blocks)

        def fast_rewards(self, state, actions):
            from dataclasses import replace

            from llmlab.blocksworld.domain import apply

            left = 4 - state.step
            out = []
            for a in actions:
                sub = replace(problem, init=apply(state.atoms, a))
                out.append((1.0 if len(optimal_plan(sub)) == left - 1 else 0.0, {}))
            return out

        def reward(self, state, action, aux, fast_parts):
            return (100.0 if aux["goal_reached"] else aux["goal_fraction"]), {}

    result = MCTS(RuleWorld(problem, 4), Oracle(), MCTSSettings(n_iters=2, depth_limit=4)).run()
    from llmlab.blocksworld.domain import validate

    assert validate(problem, [n.action for n in result.path[1:]]).valid


# ---------------------------------------------------------------- rewards


def test_jsd_matches_a_direct_computation():
    g = torch.Generator().manual_seed(0)
    p = torch.randn(5, 11, generator=g).log_softmax(-1)
    q = torch.randn(5, 11, generator=g).log_softmax(-1)
    P, Q = p.exp().double(), q.exp().double()
    M = (P + Q) / 2
    direct = 0.5 * (P * (P / M).log()).sum(-1) + 0.5 * (Q * (Q / M).log()).sum(-1)
    assert torch.allclose(jsd(p, q).double(), direct, atol=1e-6)
    assert torch.allclose(jsd(p, q), jsd(q, p)) and (jsd(p, q) <= math.log(2)).all()
    assert jsd(p, p).abs().max() < 1e-6
    kl = torch.nn.functional.kl_div  # the released code: kl_div(input=log P, target=M) = KL(M || P)
    code = 0.5 * (kl(p, M.float(), reduction="none").sum(-1) + kl(q, M.float(), reduction="none").sum(-1))
    assert torch.allclose(jsd_code(p, q), code, atol=1e-6)


def test_normaliser_welford_and_regions():
    z = Normaliser(online=False)
    for v in (1.0, 2.0, 3.0, 4.0):
        z.add(v)
    assert z.mean[0] == 2.5 and z.std(0) == pytest.approx(math.sqrt(1.25))
    assert z(2.5) == 0.0 and z(2.5 + math.sqrt(1.25)) == pytest.approx(1.0)
    multi = Normaliser([0.0, 10.0, 100.0], online=True)
    for v in (1.0, 3.0, 20.0, 40.0):
        multi.add(v)
    assert multi.region(5.0) == 0 and multi.region(50.0) == 1 and multi.region(500.0) == 1
    assert multi.mean == [2.0, 30.0]
    assert multi(30.0) == 0.0 and multi.n == [2, 3]  # online update of region 1


def test_fitted_regions_split_a_bimodal_reward_and_keep_one_region_otherwise():
    import numpy as np

    from llmlab.search.regions import fit_gmm, region_cuts

    rng = np.random.default_rng(0)
    bimodal = np.concatenate([rng.normal(-5.0, 1.0, 300), rng.normal(5.0, 1.0, 200)])
    cuts = region_cuts(bimodal.tolist())
    assert len(cuts) == 3 and cuts[0] == bimodal.min() and cuts[-1] == bimodal.max()
    assert abs(cuts[1]) < 0.6  # equal-width modes cross near 0 (shifted a little toward the lighter mode)
    w, mu, var, _ = fit_gmm(bimodal, 2)
    assert sorted(np.round(mu).tolist()) == [-5.0, 5.0] and sorted(np.round(w, 1).tolist()) == [0.4, 0.6]
    assert region_cuts(rng.normal(0.0, 1.0, 500).tolist()) == []  # BIC keeps one Gaussian
    assert region_cuts([1.0, 2.0, 3.0] * 20) == []  # too few distinct values
    norm = Normaliser(cuts, online=False)
    for v in bimodal:
        norm.add(float(v))
    assert norm.n == [300, 200] and abs(norm(-5.0)) < 0.2 and abs(norm(5.0)) < 0.2  # z-scored within each mode


def test_fit_regions_setting_is_checked():
    from omegaconf import OmegaConf

    from llmlab.config import RewardConfig
    from llmlab.search.rewards import RewardModel

    cfg = OmegaConf.structured(RewardConfig(components=["random"], normalise="zscore", fit_regions=True))
    with pytest.raises(LlmlabError, match="fit_regions needs reward.normalise=multimode"):
        RewardModel(cfg, None)
    cfg.normalise = "multimode"
    rewards = RewardModel(cfg, None)
    rewards.fit_regions([{"random": v} for v in [0.1 * i for i in range(40)] + [50.0 + 0.1 * i for i in range(40)]])
    assert len(rewards.norms["random"].cuts) == 3


def test_action_scorer_matches_direct_forward(tiny):
    model, tok = tiny
    ctx = "As initial conditions I have that, the red block is clear.\n[PLAN]\n"
    conts = ["pick up the red block", "put down the blue block"]
    scorer = ActionScorer(model, tok, ("early_exit", 1), "paper", batch_size=1)
    scorer.warm(ctx[:30])  # a stored prefix must not change the numbers
    got = scorer.score([ctx, ctx], conts, want_jsd=True)
    for cont, s in zip(conts, got):
        ids = tok(ctx + cont).input_ids
        n_ctx = len(tok(ctx).input_ids)
        with torch.no_grad():
            out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
        logp = out.logits[0, n_ctx - 1 : -1].log_softmax(-1)
        tgt = torch.tensor(ids[n_ctx:])
        assert s.ll == pytest.approx(float(logp.gather(-1, tgt[:, None]).sum()), abs=1e-3)
        with torch.no_grad():
            early = model.lm_head(model.model.norm(out.hidden_states[1][0, n_ctx - 1 : -1])).log_softmax(-1)
        assert s.jsd == pytest.approx(float(jsd(logp, early).mean()), abs=1e-4)
    from llmlab.scoring import Request, Scorer

    ref = Scorer(model, tok).score([Request(ctx, conts)])[0].loglik
    assert [s.ll for s in got] == pytest.approx(ref, abs=1e-3)


# ---------------------------------------------------------------- model pairs and speculative decoding


def test_early_exit_model_shares_weights_and_equals_hidden_state_exit(tiny):
    from llmlab.models.partners import early_exit_model, lowp_copy, rtn_copy

    model, tok = tiny
    small = early_exit_model(model, 1)
    assert small.lm_head.weight is model.lm_head.weight and small.model.layers[0] is model.model.layers[0]
    ids = torch.tensor([tok("stack the red block").input_ids])
    with torch.no_grad():
        ref = model.lm_head(model.model.norm(model(input_ids=ids, output_hidden_states=True).hidden_states[1]))
        assert torch.allclose(small(input_ids=ids).logits, ref, atol=1e-5)
    with pytest.raises(LlmlabError, match="early exit layer"):
        early_exit_model(model, 2)
    assert next(lowp_copy(model, "bfloat16").parameters()).dtype == torch.bfloat16
    q = rtn_copy(model, 2, 32)
    w, wq = model.model.layers[0].mlp.up_proj.weight, q.model.layers[0].mlp.up_proj.weight
    assert w.shape == wq.shape and not torch.equal(w, wq)
    groups = wq.detach().reshape(-1, 32)
    assert max(len(g.unique()) for g in groups[:50]) <= 4  # 2 bits: at most 4 levels per group


@pytest.mark.parametrize("n_draft", [1, 3, 5])
def test_speculative_decoding_equals_plain_greedy(tiny, n_draft):
    from llmlab.decoding.speculative import greedy, speculative, stopper
    from llmlab.models.partners import early_exit_model

    model, tok = tiny
    draft = early_exit_model(model, 1)
    for prompt in (
        "[STATE 0] I have that, the red block is clear.\n[ACTION] Pick up the red block.\n[CHANGE]",
        "hello",
    ):
        ids = tok(prompt).input_ids
        for stop in (stopper(tok, 30), stopper(tok, 30, ("e",))):
            plain, _ = greedy(model, ids, stop)
            fast, stats = speculative(model, draft, ids, stop, n_draft)
            assert fast == plain
            assert 0.0 <= stats.acceptance <= 1.0 and stats.target_forwards <= len(plain)


def test_prompt_lookup_and_prefix_cache_keep_greedy_output(tiny):
    """Lookup drafts (prompt + earlier outputs) and prefix caching on both sides: still exactly plain greedy."""
    from llmlab.decoding.prefix_cache import PrefixCache
    from llmlab.decoding.speculative import PromptLookup, greedy, speculative, stopper

    model, tok = tiny
    head = "[STATE 0] I have that, the red block is clear, the blue block is on the table.\n"
    prompts = [
        head + f"[ACTION] {a}.\n[CHANGE]"
        for a in ("Pick up the red block", "Pick up the blue block", "Put down the red block")
    ]
    draft, cached, fresh = PromptLookup(ngram=4, history=8), PrefixCache(), PrefixCache()
    for prompt in prompts:
        ids = tok(prompt).input_ids
        stop = stopper(tok, 24)
        plain, _ = greedy(model, ids, stop)
        assert greedy(model, ids, stop, cached)[0] == plain
        fast, stats = speculative(model, draft, ids, stop, 8, fresh)
        assert fast == plain and stats.target_forwards <= len(plain)
    assert cached.hits == fresh.hits == 2 and cached.reused_tokens >= 2 * len(tok(head).input_ids) - 4
    assert list(draft.outputs)[0] == fast  # the newest output is searched first


def test_prompt_lookup_proposes_from_prompt_then_history():
    from llmlab.decoding.speculative import PromptLookup

    draft = PromptLookup(ngram=3, history=2)
    assert draft.propose([1, 2, 3, 9, 1, 2], 2) == [3, 9]  # the prompt's own earlier "1 2" -> "3 9"
    assert draft.propose([5, 6], 4) == []
    draft.remember([7, 5, 6, 8, 4])
    assert draft.propose([5, 6], 4) == [8, 4]  # found in an earlier output
    draft.remember([5, 6, 1])
    assert draft.propose([5, 6], 4) == [1]  # the newest output wins
    draft.remember([0])
    assert len(draft.outputs) == 2


def test_prefix_cache_continuation_equals_full_forward(tiny):
    from llmlab.decoding.prefix_cache import PrefixCache

    model, tok = tiny
    a, b = tok("the red block is on the table").input_ids, tok("the red block is clear").input_ids
    store = PrefixCache(size=1)
    with torch.inference_mode():
        store.put(a, model(input_ids=torch.tensor([a]), use_cache=True).cache)
        n, cache = store.lookup(b)
        shared = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
        assert n == shared and cache.get_seq_length() == n
        tail = model(input_ids=torch.tensor([b[n:]]), cache=cache, use_cache=True).logits[0]
        full = model(input_ids=torch.tensor([b])).logits[0, n:]
    torch.testing.assert_close(tail, full, rtol=1e-4, atol=1e-5)
    assert store.lookup(a[:1]) == (0, None)  # keep_last=1: nothing left to reuse for a one-token prompt
    store.put(b, cache)
    assert [key for key, _ in store.entries] == [tuple(b)]  # size 1: the newest entry evicts a


def test_grouped_query_sdpa_matches_default_attention_and_restores_the_flag(tiny, monkeypatch):
    import os

    from llmlab.decoding.sdpa import grouped_query_sdpa

    model, tok = tiny
    ids = tok("the red block is on the table and the blue block is clear").input_ids
    monkeypatch.delenv("TRANSFORMERS_SDPA_FORCE_GQA", raising=False)
    with torch.inference_mode():
        outs = []
        for gqa in (False, True):
            cache = model(input_ids=torch.tensor([ids[:6]]), use_cache=True).cache
            with grouped_query_sdpa(model) if gqa else contextlib.nullcontext():
                assert os.environ.get("TRANSFORMERS_SDPA_FORCE_GQA") == ("1" if gqa else None)
                outs.append(model(input_ids=torch.tensor([ids[6:]]), cache=cache, use_cache=True).logits)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-6)
    assert "TRANSFORMERS_SDPA_FORCE_GQA" not in os.environ


# ---------------------------------------------------------------- runner

MCTS_TINY = (
    "method=sc_mcts",
    "dataset=blocksworld/generated",
    "dataset.options.n=2",
    "method.n_iters=2",
    "method.amateur.layer=1",
    "method.reward.prior_problems=1",
)


def test_mcts_runner_end_to_end_with_trees_and_node_text(tmp_path):
    from llmlab.runners import mcts

    cfg, ctx = runner_setup(
        tmp_path,
        *MCTS_TINY,
        "method.node_text=generate",
        "method.node_max_new_tokens=6",
        "method.draft.kind=early_exit",
        "method.draft.layer=1",
    )
    result = mcts.run(cfg, ctx)
    m = result["metrics"]["blocksworld/generated"]
    assert m["n"] == 2 and m["mean_s_per_node"] > 0 and 0 <= m["mean_acceptance"] <= 1
    tree = json.loads((tmp_path / "run" / "trees" / "gen-s2-0.json").read_text())
    expanded = [n for n in tree["nodes"] if n["expanded"] and n["parent"] is not None]
    assert expanded and all({"ll", "se", "jsd", "z_ll", "intuition"} <= set(n["parts"]) for n in expanded)
    assert all("change" in n for n in expanded)
    prior = json.loads((tmp_path / "run" / "reward_prior.json").read_text())
    assert prior["stats"]["ll"]["n"][0] == len(prior["samples"]) > 0


def test_mcts_runner_with_fitted_regions(tmp_path):
    from llmlab.runners import mcts

    cfg, ctx = runner_setup(
        tmp_path,
        *MCTS_TINY,
        "method.reward.normalise=multimode",
        "method.reward.fit_regions=true",
        "method.reward.prior_rollouts=4",
        "dataset.options.n=1",
    )
    assert mcts.run(cfg, ctx)["metrics"]["blocksworld/generated"]["n"] == 1
    prior = json.loads((tmp_path / "run" / "reward_prior.json").read_text())
    for c in ("jsd", "ll", "se"):
        cuts, n = prior["stats"][c]["cuts"], prior["stats"][c]["n"]
        assert cuts == sorted(cuts) and len(n) == max(1, len(cuts) - 1) and sum(n) == len(prior["samples"])


def test_mcts_runner_resumes_at_the_next_unsolved_problem(tmp_path, monkeypatch):
    from llmlab.runners import mcts

    cfg, ctx = runner_setup(
        tmp_path, "method=mcts_rap", "dataset=blocksworld/generated", "dataset.options.n=3", "method.n_iters=1"
    )
    real, seen = mcts.solve, []

    def flaky(row, *args):
        seen.append(row["id"])
        if len(seen) == 2:
            raise KeyboardInterrupt
        return real(row, *args)

    monkeypatch.setattr(mcts, "solve", flaky)
    with pytest.raises(KeyboardInterrupt):
        mcts.run(cfg, ctx)
    seen.clear()
    monkeypatch.setattr(mcts, "solve", lambda row, *a: (seen.append(row["id"]), real(row, *a))[1])
    result = mcts.run(cfg, ctx)
    assert seen == ["gen-s2-1", "gen-s2-2"] and result["metrics"]["blocksworld/generated"]["n"] == 3


def test_an_unknown_backprop_is_refused_before_the_run():
    from llmlab.config import validate_config
    from tests.helpers import compose

    with pytest.raises(LlmlabError, match="method.backprop must be one of sum_mean, refined, got 'foo'"):
        validate_config(compose([*MCTS_TINY, "method.backprop=foo"]))


@pytest.mark.parametrize(
    "override,needle",
    [("method.amateur.layer=7", "amateur.layer must be"), ("method.reward.components=[ll,xx]", "reward.components")],
)
def test_mcts_runner_bad_settings_are_one_line_errors(tmp_path, override, needle):
    from llmlab.runners import mcts

    cfg, ctx = runner_setup(tmp_path, *MCTS_TINY, override)
    with pytest.raises(LlmlabError, match=needle):
        mcts.run(cfg, ctx)


def test_tree_picture_from_a_dump(tmp_path):
    from llmlab.analysis.mcts_tree import layout, main

    node = {"expanded": True, "visits": 1, "q": 0.5}
    nodes = [
        {**node, "id": 0, "parent": None, "depth": 0, "action": None},
        {**node, "id": 1, "parent": 0, "depth": 1, "action": "('pick-up', 'a')"},
        {**node, "id": 2, "parent": 0, "depth": 1, "action": "('unstack', 'b', 'a')", "expanded": False, "visits": 0},
        {**node, "id": 3, "parent": 1, "depth": 2, "action": "('stack', 'a', 'b')"},
    ]
    pos = layout(nodes)
    assert pos[0][0] == (pos[1][0] + pos[2][0]) / 2 and pos[3] == (pos[1][0], 2)
    src = tmp_path / "t.json"
    src.write_text(json.dumps({"answer": [0, 1, 3], "iterations": [[0, 1, 3]], "nodes": nodes}))
    assert main([str(src), str(tmp_path / "t.png")]) == 0 and (tmp_path / "t.png").stat().st_size > 1000
    src.write_text("{")
    assert main([str(src), str(tmp_path / "u.png")]) == 2 and not (tmp_path / "u.png").exists()


def test_paired_runs_mcnemar(tmp_path):
    from llmlab.analysis.paired_runs import compare, main, mcnemar_exact

    assert mcnemar_exact(0, 5) == 0.0625 and mcnemar_exact(3, 3) == 1.0 and mcnemar_exact(0, 0) == 1.0
    assert abs(mcnemar_exact(1, 9) - 2 * 11 / 1024) < 1e-12
    for name, flags in (("a", [1, 1, 0, 1]), ("b", [0, 1, 0, 0])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "predictions.jsonl").write_text(
            "".join(json.dumps({"id": f"p{i}", "correct": bool(f)}) + "\n" for i, f in enumerate(flags))
        )
    r = compare(tmp_path / "a", tmp_path / "b")
    assert (r["n"], r["acc_a"], r["acc_b"], r["only_a"], r["only_b"]) == (4, 0.75, 0.25, 2, 0)
    lo, hi = r["diff_ci95"]  # per-problem B - A = [-1, 0, 0, -1]: resampled means lie in [-1, 0]
    assert -1.0 <= lo < -0.5 < hi <= 0.0
    assert main([str(tmp_path / "a"), str(tmp_path / "missing")]) == 2
    import gzip  # collected results keep the rows gzipped

    for name in ("a", "b"):
        rows = tmp_path / name / "predictions.jsonl"
        (tmp_path / name / "predictions.jsonl.gz").write_bytes(gzip.compress(rows.read_bytes()))
        rows.unlink()
    assert compare(tmp_path / "a", tmp_path / "b")["only_a"] == 2
