"""Reward signals for tree search: log-likelihood and expert/amateur Jensen-Shannon divergence of candidate actions,
self-evaluation, and the Multi-RM normalisation (regions with running statistics).

`ActionScorer` scores many continuations after their contexts in batched forwards. The KV cache of stable prefixes
(the few-shot block of a prompt) is computed once and reused; the common prefix of one call's contexts is computed
once; the head is applied only at the positions of the continuation tokens. `llmlab.scoring.Scorer` returns only
summed log-likelihoods; the JSD needs both models' full next-token distributions, hence this scorer.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from llmlab.config import RewardConfig, choices_of
from llmlab.decoding.prefix_cache import PrefixCache
from llmlab.decoding.sdpa import grouped_query_sdpa
from llmlab.errors import LlmlabError
from llmlab.scoring import Request, Scorer
from llmlab.search.regions import region_cuts

LN2 = math.log(2.0)


def jsd(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence per row of two log-distributions (nats, in [0, ln 2])."""
    logm = torch.logaddexp(logp, logq) - LN2
    return 0.5 * (logp.exp() * (logp - logm)).sum(-1) + 0.5 * (logq.exp() * (logq - logm)).sum(-1)


def jsd_code(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """The released code's term: `0.5 * (kl_div(logp, M) + kl_div(logq, M))` = 1/2 [KL(M||P) + KL(M||Q)] per row."""
    logm = torch.logaddexp(logp, logq) - LN2
    m = logm.exp()
    return 0.5 * (m * (logm - logp)).sum(-1) + 0.5 * (m * (logm - logq)).sum(-1)


@dataclass
class ContScore:
    ll: float  # sum of log p_expert(continuation tokens)
    jsd: float | None  # paper: mean JSD over the continuation tokens; code: summed 1/2 [KL(M||Pe) + KL(M||Pa)]
    n_tokens: int


class ActionScorer:
    """Expert log-likelihoods (and expert/amateur divergences) of continuations, with prefix KV reuse.
    `amateur` is ("early_exit", layer): the expert's own hidden state after `layer` layers through its final norm and
    head; ("model", model): a separate model on the same tokens; or None."""

    def __init__(
        self,
        model: PreTrainedModel,
        tok,
        amateur=None,
        jsd_impl: str = "paper",
        batch_size: int = 16,
        max_prefixes: int = 8,
    ):
        if jsd_impl not in choices_of(RewardConfig, "jsd_impl"):  # as the config check, for direct callers
            raise LlmlabError(f"reward.jsd_impl must be paper or code, got '{jsd_impl}'")
        if batch_size < 1:
            raise LlmlabError(f"method.batch_size must be >= 1, got {batch_size}")
        self.model, self.tok, self.amateur, self.jsd_impl = model, tok, amateur, jsd_impl
        self.batch_size = batch_size
        self.encoder = Scorer(model, tok)  # its tokenization of context + continuation
        self.prefixes = {0: PrefixCache(max_prefixes), 1: PrefixCache(max_prefixes)}  # model index -> prefix KV
        self.stats = {"forward_tokens": 0, "calls": 0}

    # ------------------------------------------------------------ prefix KV store

    @torch.inference_mode()
    def warm(self, text: str) -> None:
        """Keep the KV cache of `text` (less its last two tokens, which may merge with what follows)."""
        ids = self.tok(text, add_special_tokens=True).input_ids[:-2]
        for which, model in self._models():
            self.prefixes[which].put(ids, self._extend(which, model, ids))

    def _models(self):
        yield 0, self.model
        if self.amateur is not None and self.amateur[0] == "model":
            yield 1, self.amateur[1]

    def _extend(self, which: int, model: PreTrainedModel, ids: list[int]):
        """A fresh KV cache of `ids`: a copy of the stored cache sharing the longest prefix with it, extended."""
        n, cache = self.prefixes[which].lookup(ids, keep_last=0)
        rest = ids[n:]
        if rest:
            out = model.model(input_ids=torch.tensor([rest], device=model.device), cache=cache, use_cache=True)
            cache = out.cache
            self.stats["forward_tokens"] += len(rest)
        return cache

    # ------------------------------------------------------------ scoring

    @torch.inference_mode()
    def score(self, contexts: list[str], conts: list[str], want_jsd: bool = False) -> list[ContScore]:
        """Score `conts[i]` after `contexts[i]` for every i."""
        if want_jsd and self.amateur is None:
            raise LlmlabError("the jsd reward needs an amateur (method.amateur)")
        self.stats["calls"] += 1
        enc = [self.encoder.encode(Request(c, [x])) for c, x in zip(contexts, conts)]
        ctx_ids = [e[0] for e in enc]
        cont_ids = [e[1][0] for e in enc]
        n = 0  # common prefix, leaving every context at least one own token
        shortest = min(len(c) for c in ctx_ids)
        while n < shortest - 1 and all(c[n] == ctx_ids[0][n] for c in ctx_ids):
            n += 1
        common = ctx_ids[0][:n]
        out: list[ContScore] = []
        for start in range(0, len(enc), self.batch_size):
            rows = [(ctx_ids[i][n:], cont_ids[i]) for i in range(start, min(start + self.batch_size, len(enc)))]
            out.extend(self._score_rows(common, rows, want_jsd))
        return out

    def _logprobs(self, which: int, model: PreTrainedModel, common: list[int], rows, layer: int | None = None):
        """Per row, log-distributions (T_i x V) predicting each continuation token; with `layer`, also the early-exit
        ones from the same forward."""
        cache = self._extend(which, model, common) if common else None
        b = len(rows)
        seqs = [ctx + cont[:-1] for ctx, cont in rows]
        width = max(len(s) for s in seqs)
        pad = self.encoder.pad_id
        ids = torch.full((b, width), pad, dtype=torch.long)
        for r, s in enumerate(seqs):
            ids[r, : len(s)] = torch.tensor(s)
        if cache is not None:
            cache.batch_repeat_interleave(b)
        pos = (len(common) + torch.arange(width))[None].expand(b, -1)
        # right padding: pads follow every real token, so causal attention needs no mask
        with grouped_query_sdpa(model):
            out = model.model(
                input_ids=ids.to(model.device),
                position_ids=pos.to(model.device),
                cache=cache,
                use_cache=cache is not None,
                output_hidden_states=layer is not None,
            )
        self.stats["forward_tokens"] += sum(len(s) for s in seqs)
        rr = torch.cat([torch.full((len(cont),), r) for r, (_, cont) in enumerate(rows)])
        cc = torch.cat([len(ctx) - 1 + torch.arange(len(cont)) for ctx, cont in rows])
        head = model.get_output_embeddings()
        main = self._head(model, head, out.last_hidden_state[rr, cc])
        early = None
        if layer is not None:
            early = self._head(model, head, model.model.norm(out.hidden_states[layer][rr, cc]))
        return main, early

    @staticmethod
    def _head(model, head, hidden: torch.Tensor) -> torch.Tensor:
        logits = head(hidden).float()
        cap = getattr(model.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits.log_softmax(-1)

    def _score_rows(self, common: list[int], rows, want_jsd: bool) -> list[ContScore]:
        layer = self.amateur[1] if want_jsd and self.amateur[0] == "early_exit" else None
        logp, logq = self._logprobs(0, self.model, common, rows, layer)
        if want_jsd and self.amateur[0] == "model":
            logq, _ = self._logprobs(1, self.amateur[1], common, rows)
            logq = logq.to(logp.device)
        targets = torch.cat([torch.tensor(cont) for _, cont in rows]).to(logp.device)
        tok_ll = logp.gather(-1, targets[:, None])[:, 0]
        div = None
        if want_jsd:
            div = jsd(logp, logq) if self.jsd_impl == "paper" else jsd_code(logp, logq)
        out, k = [], 0
        for _, cont in rows:
            sl = slice(k, k + len(cont))
            d = None
            if div is not None:
                d = float(div[sl].mean() if self.jsd_impl == "paper" else div[sl].sum())
            out.append(ContScore(float(tok_ll[sl].sum()), d, len(cont)))
            k += len(cont)
        return out

    @torch.inference_mode()
    def context_loglik(self, text: str) -> float:
        """Sum of log p of every context token after the first (the released code's LL includes the prompt)."""
        ids = self.tok(text, add_special_tokens=True).input_ids
        t = torch.tensor([ids], device=self.model.device)
        logp = self.model(input_ids=t).logits[0, :-1].float().log_softmax(-1)
        self.stats["forward_tokens"] += len(ids)
        return float(logp.gather(-1, t[0, 1:, None]).sum())


class Normaliser:
    """Multi-RM normalisation of one reward component (paper Eq. 1-2, Alg. 3): values fall into regions cut at
    `boundaries` (none: one region = a z-score); each region keeps a running mean and standard deviation (Welford),
    seeded from prior samples and, with `online`, updated by every new value."""

    def __init__(self, boundaries: list[float] | None = None, online: bool = True):
        self.cuts = sorted(boundaries or [])
        self.online = online
        k = max(1, len(self.cuts) - 1) if self.cuts else 1
        self.n, self.mean, self.m2 = [0] * k, [0.0] * k, [0.0] * k

    def region(self, v: float) -> int:
        if len(self.cuts) < 2:
            return 0
        k = sum(1 for b in self.cuts[1:-1] if v >= b)  # k* = max{k : b_k <= v}, clamped to the outer regions
        return min(k, len(self.n) - 1)

    def add(self, v: float) -> None:
        k = self.region(v)
        self.n[k] += 1
        delta = v - self.mean[k]
        self.mean[k] += delta / self.n[k]
        self.m2[k] += delta * (v - self.mean[k])

    def std(self, k: int) -> float:
        return math.sqrt(self.m2[k] / self.n[k]) if self.n[k] > 1 else 1.0

    def __call__(self, v: float) -> float:
        k = self.region(v)
        z = (v - self.mean[k]) / max(self.std(k), 1e-6)
        if self.online:
            self.add(v)
        return z

    def state(self) -> dict:
        return {"cuts": self.cuts, "n": self.n, "mean": self.mean, "m2": self.m2}

    @classmethod
    def from_state(cls, state: dict, online: bool = True) -> Normaliser:
        norm = cls(state["cuts"], online)
        norm.n, norm.mean, norm.m2 = list(state["n"]), list(state["mean"]), list(state["m2"])
        return norm


COMPONENTS = choices_of(RewardConfig, "components")


class RewardModel:
    """Raw reward components of candidate actions (cached per (context, action)), their normalisation and their
    combination into the fast reward (before stepping) and the real reward (with the goal term).

    - paper: intuition = sum_c w_c * norm_c(raw_c); code: intuition = sum_c raw_c, plus self-eval once more when all
      of ll, se and jsd are on (the released `sc_mcts` mode counts it twice).
    - fast reward = alpha * intuition; real reward = alpha * intuition + (1 - alpha) * goal_scale * goal term, the goal
      term being goal_bonus when the goal holds, else the fraction of goal atoms met (goal_partial) or 0.
    """

    def __init__(self, cfg, scorer: ActionScorer | None, seed: int = 0):
        comps = list(cfg.components)
        bad = [c for c in comps if c not in COMPONENTS]
        if bad or not comps:
            raise LlmlabError(f"reward.components must be a non-empty subset of {list(COMPONENTS)}, got {comps}")
        for key in ("normalise", "combine", "ll_impl"):  # as the config check, for direct callers
            value, options = getattr(cfg, key), choices_of(RewardConfig, key)
            if value not in options:
                raise LlmlabError(f"reward.{key} must be one of {', '.join(options)}, got '{value}'")
        self.cfg, self.comps, self.scorer, self.seed = cfg, comps, scorer, seed
        if cfg.fit_regions and (cfg.normalise != "multimode" or cfg.boundaries):
            raise LlmlabError("reward.fit_regions needs reward.normalise=multimode and no reward.boundaries")
        cuts = dict(cfg.boundaries) if cfg.normalise == "multimode" else {}
        self.norms = (
            {c: Normaliser(list(cuts.get(c, [])), cfg.online_update) for c in comps} if cfg.normalise != "none" else {}
        )
        self.cache: dict[tuple[str, str], tuple[float, dict]] = {}
        self.prompt_ll: dict[str, float] = {}

    def raw(self, context: str, se_contexts: list[str], actions: list[str]) -> list[dict]:
        """Raw components of each action after `context` (`se_contexts[i]`: its self-evaluation prompt)."""
        n = len(actions)
        rows: list[dict] = [{} for _ in range(n)]
        if "ll" in self.comps or "jsd" in self.comps:
            scores = self.scorer.score([context] * n, actions, want_jsd="jsd" in self.comps)
            extra = 0.0
            if "ll" in self.comps and self.cfg.ll_impl == "code":
                if context not in self.prompt_ll:
                    self.prompt_ll[context] = self.scorer.context_loglik(context)
                extra = self.prompt_ll[context]
            for row, s in zip(rows, scores):
                if "ll" in self.comps:
                    row["ll"] = s.ll + extra
                if "jsd" in self.comps:
                    row["jsd"] = s.jsd
        if "se" in self.comps:
            for row, s in zip(rows, self.scorer.score(se_contexts, ["good"] * n)):
                row["se"] = s.ll
        if "random" in self.comps:
            for row, a in zip(rows, actions):
                row["random"] = random.Random(f"{self.seed}|{context}|{a}").random()
        return rows

    def combine(self, raw: dict) -> tuple[float, dict]:
        parts = dict(raw)
        if self.cfg.combine == "code":
            intuition = sum(raw.values())
            if {"ll", "se", "jsd"} <= set(raw):
                intuition += raw["se"]
        else:
            intuition = 0.0
            for c, v in raw.items():
                z = self.norms[c](v) if self.norms else v
                parts[f"z_{c}"] = z
                intuition += float(self.cfg.weights.get(c, 1.0)) * z
        parts["intuition"] = intuition
        return self.cfg.alpha * intuition, parts

    def fast(self, context: str, se_contexts: list[str], actions: list[str]) -> list[tuple[float, dict]]:
        """Fast rewards of `actions` after `context`, computing only those not cached, in one batch."""
        todo = [i for i, a in enumerate(actions) if (context, a) not in self.cache]
        if todo:
            raws = self.raw(context, [se_contexts[i] for i in todo], [actions[i] for i in todo])
            for i, raw in zip(todo, raws):
                self.cache[(context, actions[i])] = self.combine(raw)
        return [self.cache[(context, a)] for a in actions]

    def real(self, fast_parts: dict, goal_reached: bool, goal_fraction: float) -> tuple[float, dict]:
        c = self.cfg
        goal = c.goal_bonus if goal_reached else (goal_fraction if c.goal_partial else 0.0)
        reward = c.alpha * fast_parts.get("intuition", 0.0) + (1 - c.alpha) * c.goal_scale * goal
        return reward, {**fast_parts, "goal": goal}

    def fit_regions(self, samples: list[dict]) -> None:
        """Multi-RM regions per component fitted to prior samples (`llmlab.search.regions`), statistics reset."""
        for c in self.norms:
            self.norms[c] = Normaliser(region_cuts([s[c] for s in samples if c in s]), self.cfg.online_update)

    def add_prior(self, raw: dict) -> None:
        for c, v in raw.items():
            if c in self.norms:
                self.norms[c].add(v)

    def norm_state(self) -> dict:
        return {c: n.state() for c, n in self.norms.items()}

    def load_norm_state(self, state: dict) -> None:
        for c, s in state.items():
            if c in self.norms:
                self.norms[c] = Normaliser.from_state(s, self.cfg.online_update)
