"""Fine-tuning rows of the MRE ablation (spec 3.3): per condition, what the input carries and what the model must
write, in the OIELLM grammar. The other level's gold information is appended to the input; the target holds only
the current level (joint: both).

    tl_only      {text}/{TASK}                 -> {TL}
    tl_plus_wli  {text}/{TASK}/{WL}            -> {TL}        (_shuffled: WL of another example)
    wl_only      {text}/{TASK}                 -> {WL}
    wl_plus_tli  {text}/{TASK}/{TL}            -> {WL}        (_shuffled: TL of another example)
    joint        {text}/{TASK}                 -> {TL}/{TASK}/{WL}
    tl_neutral   {text}/{TASK}/unknown         -> {TL}        (format-matched placeholder)
    wl_neutral   {text}/{TASK}/unknown         -> {WL}

A row's `ft_text` is `prompt + target` with prompt = input + newline and target = output + newline (generation is
cut at the first newline), the schema the finetune runner reads.
"""

from __future__ import annotations

from llmlab.config import MRE_CONDITIONS
from llmlab.data.mre.format import write_output, write_wl
from llmlab.errors import LlmlabError
from llmlab.seeding import make_rng

CONDITIONS = MRE_CONDITIONS  # the schema's choices (llmlab.config) are the one list


def target_level(condition: str) -> str:
    """tl, wl or joint: what the condition's model writes."""
    return "joint" if condition == "joint" else condition[:2]


def partners(n: int, seed: int, split: str) -> list[int]:
    """A seeded derangement: example i takes its injected information from example partners[i] != i."""
    if n < 2:
        return list(range(n))
    perm = list(range(n))
    make_rng(seed, "mre-shuffle", split).shuffle(perm)
    out = [0] * n
    for k, i in enumerate(perm):
        out[i] = perm[(k + 1) % n]
    return out


def condition_pair(condition: str, row: dict, partner: dict) -> tuple[str, str]:
    """(prompt, target) of `row` under `condition`."""
    if condition not in CONDITIONS:
        raise LlmlabError(f"unknown MRE ablation condition {condition!r}; choose from {', '.join(CONDITIONS)}")
    task, wl = row["task"], [tuple(w) for w in row["wl"]]
    base = f"{row['text']}/{task}"
    extra = {
        "tl_plus_wli": "/" + write_wl(task, wl),
        "wl_plus_tli": "/" + row["tl"],
        "tl_plus_wli_shuffled": "/" + write_wl(task, [tuple(w) for w in partner["wl"]]),
        "wl_plus_tli_shuffled": "/" + partner["tl"],
        "tl_neutral": "/unknown",
        "wl_neutral": "/unknown",
    }
    target = {"tl": row["tl"], "wl": write_wl(task, wl), "joint": write_output(row["tl"], task, wl)}
    return base + extra.get(condition, "") + "\n", target[target_level(condition)] + "\n"


def condition_rows(rows: list[dict], condition: str, seed: int, split: str) -> list[dict]:
    """`rows` with `prompt`, `target` and `ft_text` for `condition`."""
    mate = partners(len(rows), seed, split)
    out = []
    for i, r in enumerate(rows):
        prompt, target = condition_pair(condition, r, rows[mate[i]])
        out.append({**r, "prompt": prompt, "target": target, "ft_text": prompt + target})
    return out


def training_rows(dataset_cfg, seed: int) -> list[dict]:
    """The finetune runner's rows for an MRE dataset: its train split under `dataset.options.condition`."""
    from llmlab.data.mre.loader import load_mre

    condition = dict(dataset_cfg.options).get("condition")
    if condition is None:
        raise LlmlabError(
            f"dataset '{dataset_cfg.name}': fine-tuning on MRE data needs dataset.options.condition "
            f"(one of {', '.join(CONDITIONS)}); method=mre_ablation sets it per arm"
        )
    return condition_rows(load_mre(dataset_cfg, seed).train, condition, seed, "train")
