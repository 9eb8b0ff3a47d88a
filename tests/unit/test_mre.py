"""MRE (issue #7): OIELLM format, synthetic generator, loaders and their errors, saliency, verbalizer, ablation."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from llmlab.data.mre.ablation import condition_pair, partners
from llmlab.data.mre.format import FormatError, MreRecord, parse_input, parse_output, parse_pair, write_output
from llmlab.data.mre.loader import read_records
from llmlab.data.mre.synthetic import SUBSETS, generate, split_sha256
from llmlab.errors import LlmlabError
from tests.helpers import runner_setup

HAND = [
    (
        "Marlon Brando starred in On the Waterfront by Kazan./NER",
        "Literature/NER/:Person;Marlon Brando:Product Name;On the Waterfront:Person;Kazan",
    ),
    ("Nothing to see here./NER", "Nature/NER/"),
    (
        "The screen was not good. I love it./Sentiment Relation Word",
        "negative/Sentiment Relation Word/:negative;good:positive;love",
    ),
    (
        "Kelvo Ran plays for Tamsik Club./Relation Extraction",
        "Sports/Relation Extraction/:Kelvo Ran;plays_for;Tamsik Club",
    ),
    ("A review with no adjectives./Sentiment Adj", "positive/Sentiment Adj/"),
]


# ---- format -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("inp,out", HAND)
def test_hand_written_examples_round_trip(inp, out):
    rec = parse_pair(inp, out)
    row = rec.as_row()
    assert (row["input"], row["output"]) == (inp, out)
    assert parse_pair(row["input"], row["output"]) == rec


def test_parsed_fields():
    rec = parse_pair(*HAND[0])
    assert rec.tl == "Literature" and rec.task == "NER" and rec.text.endswith("by Kazan.")
    assert rec.wl == [("Person", "Marlon Brando"), ("Product Name", "On the Waterfront"), ("Person", "Kazan")]
    assert parse_pair(*HAND[1]).wl == []
    assert parse_pair(*HAND[3]).wl == [("Kelvo Ran", "plays_for", "Tamsik Club")]
    # a trailing ':' (relations drawn `:E1;L;E2:`) is accepted on reading
    assert parse_output("Sports/Relation Extraction/:A;r;B:")[2] == [("A", "r", "B")]


@pytest.mark.parametrize(
    "out,needle",
    [
        ("Literature NER :Person;X", "missing the 'TL/TASK/' separators"),
        ("Literature/NER", "missing the '/' after the task word"),
        ("Literature/Parsing/:Person;X", "unknown task word 'Parsing'"),
        ("Literature/NER/Person;X", "must start with ':'"),
        ("Literature/NER/:Person", "2 non-empty"),
        ("Sports/Relation Extraction/:A;B", "3 non-empty"),
    ],
)
def test_malformed_outputs_say_what_is_wrong(out, needle):
    with pytest.raises(FormatError, match=needle):
        parse_output(out)


def test_malformed_inputs_and_unwritable_fields():
    with pytest.raises(FormatError, match="unknown task word 'POS'"):
        parse_input("some text/POS")
    with pytest.raises(FormatError, match="missing the '/TASK'"):
        parse_input("no separator at all")
    with pytest.raises(FormatError, match="separator"):
        write_output("positive", "Sentiment Adj", [("positive", "a;b")])
    with pytest.raises(FormatError, match="differ"):
        parse_pair("x/NER", "Sports/Sentiment Adj/")


# ---- files: errors name file and line ----------------------------------------------------------------------------


def write_json_array(path, pairs):
    path.write_text("[\n" + ",\n".join(json.dumps({"input": i, "output": o}) for i, o in pairs) + "\n]\n")
    return path


def test_json_array_jsonl_and_csv_files_load(tmp_path):
    rows, skipped = read_records(write_json_array(tmp_path / "a.json", HAND[:3]))
    assert [r["output"] for r in rows] == [o for _, o in HAND[:3]] and skipped == []
    (tmp_path / "b.jsonl").write_text("".join(json.dumps({"input": i, "output": o}) + "\n" for i, o in HAND))
    assert len(read_records(tmp_path / "b.jsonl")[0]) == len(HAND)
    import csv

    with open(tmp_path / "c.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["input", "output"])
        w.writerows(HAND)
    assert [r["tl"] for r in read_records(tmp_path / "c.csv")[0]] == [parse_output(o)[0] for _, o in HAND]


def test_bad_line_names_file_and_line_and_skip_counts(tmp_path):
    bad = HAND[:2] + [("broken text/NER", "Literature NER")] + HAND[2:3] + [("x/Dance", "Sports/Dance/")]
    path = write_json_array(tmp_path / "bad.json", bad)
    with pytest.raises(LlmlabError, match=rf"{path}:4: output 'Literature NER' is missing"):
        read_records(path)
    rows, skipped = read_records(path, skip=True)
    assert len(rows) == 3 and len(skipped) == 2
    assert skipped[0].startswith(f"{path}:4:") and skipped[1].startswith(f"{path}:6:")
    (tmp_path / "bad.jsonl").write_text(json.dumps({"input": "a/NER", "output": "Sports/NER/"}) + "\n{oops\n")
    with pytest.raises(LlmlabError, match=r"bad.jsonl:2: invalid JSON"):
        read_records(tmp_path / "bad.jsonl")


def test_empty_file_and_unseen_test_label(tmp_path):
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(LlmlabError, match="empty.json: no MRE records"):
        read_records(tmp_path / "empty.json")
    train = write_json_array(tmp_path / "train.json", [("a b/NER", "Sports/NER/"), ("c d/NER", "Nature/NER/")])
    test = write_json_array(tmp_path / "test.json", [("e/NER", "Sports/NER/"), ("f/NER", "Politics/NER/")])
    cfg, _ = runner_setup(
        tmp_path, "method=verbalizer", "dataset=mre/file", f"dataset.path={test}", f"dataset.pool_path={train}"
    )
    from llmlab.data.mre.loader import load_mre

    with pytest.raises(LlmlabError, match=r"test.json:3: test label 'Politics' does not occur in the training"):
        load_mre(cfg.dataset, 0)


def test_hub_offline_is_one_line(tmp_path, monkeypatch):
    import huggingface_hub

    def offline(*a, **k):
        raise OSError("We couldn't connect to 'https://huggingface.co'\nmore detail")

    monkeypatch.setattr(huggingface_hub, "list_repo_files", offline)
    cfg, _ = runner_setup(tmp_path, "method=verbalizer", "dataset=mre/mmm_en")
    from llmlab.data.mre.loader import load_mre

    with pytest.raises(LlmlabError) as info:
        load_mre(cfg.dataset, 0)
    assert "\n" not in str(info.value) and "cannot fetch MMM files" in str(info.value)


# ---- synthetic generator ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SUBSETS))
def test_generator_is_deterministic_valid_and_balanced(name):
    a, b = generate(name, "train", 200, 0), generate(name, "train", 200, 0)
    assert split_sha256(a) == split_sha256(b) and a == b
    assert split_sha256(generate(name, "train", 200, 1)) != split_sha256(a)
    assert generate(name, "train", 50, 0) == a[:50]  # per-example RNG: independent of n
    for r in a:
        assert r["input"] == f"{r['text']}/{r['task']}"
        rec = parse_pair(r["input"], r["output"])
        assert rec.tl == r["tl"] and [list(w) for w in rec.wl] == r["wl"]
        for item in r["wl"]:
            spans = [item[0], item[2]] if len(item) == 3 else [item[1]]
            assert all(s in r["text"] for s in spans)
    counts = Counter(r["tl"] for r in a)
    assert max(counts.values()) - min(counts.values()) <= 0.05 * len(a)


def chi2_p(rows: list[dict]) -> float:
    """p-value of independence between TL and the majority WL label (examples with WL items)."""
    from scipy.stats import chi2_contingency

    table = Counter()
    for r in rows:
        labels = [w[1] if len(w) == 3 else w[0] for w in r["wl"]]
        if labels:
            table[r["tl"], Counter(labels).most_common(1)[0][0]] += 1
    tls, wls = sorted({k[0] for k in table}), sorted({k[1] for k in table})
    return chi2_contingency([[table[t, w] for w in wls] for t in tls])[1]


@pytest.mark.parametrize("name", ["scpos_adjn", "scnm", "tcree"])
def test_coupling_knob_and_decoupled_control(name):
    coupled = generate(name, "train", 400, 0, coupling=0.85)
    control = generate(name, "train", 400, 0, decoupled_control=True)
    assert chi2_p(coupled) < 1e-6
    assert chi2_p(control) > 0.01


def test_coupling_sets_agreement_rate():
    def agreement(rows):
        return sum(Counter(w[0] for w in r["wl"]).most_common(1)[0][0] == r["tl"] for r in rows) / len(rows)

    # scpos_rw annotates every clause, so the WL majority is the implied label exactly
    assert agreement(generate("scpos_rw", "train", 600, 0, coupling=1.0)) == 1.0
    assert 0.4 < agreement(generate("scpos_rw", "train", 600, 0, coupling=0.5)) < 0.6


# ---- ablation rows --------------------------------------------------------------------------------------------------


def test_ablation_conditions_follow_the_grammar():
    row = MreRecord("The soup was good.", "Sentiment Adj", "positive", [("positive", "good")]).as_row()
    other = MreRecord("Bad.", "Sentiment Adj", "negative", [("negative", "bad")]).as_row()
    base = "The soup was good./Sentiment Adj"
    assert condition_pair("tl_only", row, other) == (base + "\n", "positive\n")
    assert condition_pair("tl_plus_wli", row, other) == (base + "/:positive;good\n", "positive\n")
    assert condition_pair("tl_plus_wli_shuffled", row, other) == (base + "/:negative;bad\n", "positive\n")
    assert condition_pair("wl_plus_tli", row, other) == (base + "/positive\n", ":positive;good\n")
    assert condition_pair("wl_neutral", row, other) == (base + "/unknown\n", ":positive;good\n")
    assert condition_pair("joint", row, other)[1] == "positive/Sentiment Adj/:positive;good\n"
    mates = partners(7, 0, "train")
    assert sorted(mates) == list(range(7)) and all(m != i for i, m in enumerate(mates))


# ---- saliency ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny64():
    """The tiny random Llama in float64 with eager attention (a private copy)."""
    from omegaconf import OmegaConf

    from llmlab.config import ModelConfig
    from llmlab.hardware import Hardware
    from llmlab.models.loading import load_model

    cfg = OmegaConf.merge(OmegaConf.structured(ModelConfig), {"name": "tiny-random", "source": "random"})
    model, tok = load_model(cfg, Hardware(torch.device("cpu"), torch.float64), "/tmp", "eager", 0, reuse=False)
    return model, tok


def test_saliency_matches_finite_differences(tiny64, monkeypatch):
    """dL/d(eps) when A[l, :, i, j] is scaled by (1 + eps) in every head is sum_h A * dL/dA = +-I_l(i, j)."""
    from transformers.models.llama import modeling_llama

    from llmlab.analysis.saliency import attention_saliency

    model, tok = tiny64
    seq = tok("Review: the soup was good\nSentiment:").input_ids
    labels, gold = [10, 20, 30], [1]
    sal, _ = attention_saliency(model, [seq], labels, gold)
    n, scale = len(seq), {}

    def scaled_eager(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
        k = modeling_llama.repeat_kv(key, module.num_key_value_groups)
        v = modeling_llama.repeat_kv(value, module.num_key_value_groups)
        w = torch.matmul(query, k.transpose(2, 3)) * scaling
        if attention_mask is not None:
            w = w + attention_mask
        w = torch.softmax(w, dim=-1)
        if module.layer_idx in scale:
            w = w * scale[module.layer_idx]
        return torch.matmul(w, v).transpose(1, 2).contiguous(), w

    monkeypatch.setattr(modeling_llama, "eager_attention_forward", scaled_eager)

    def loss(layer, i, j, eps):
        m = torch.ones(n, n, dtype=torch.float64)
        m[i, j] = 1 + eps
        scale.clear()
        scale[layer] = m
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([seq])).logits[0, -1, labels]
        return -logits.log_softmax(-1)[gold[0]].item()

    checked = 0
    for layer, i, j in [(0, n - 1, 0), (0, n - 1, n - 3), (1, n - 1, 2), (1, n - 1, n - 2), (0, n - 2, 1)]:
        # Llama's RMSNorm runs in float32 even in a float64 model, so the step cannot be tiny.
        eps = 1e-3
        fd = abs(loss(layer, i, j, eps) - loss(layer, i, j, -eps)) / (2 * eps)
        assert fd == pytest.approx(float(sal[0][layer, i, j]), rel=1e-2, abs=2e-5)
        checked += fd > 1e-3
    assert checked >= 3  # most checked entries are non-trivial
    assert float(sal[0][0, n - 1, n - 1]) == 0.0  # diagonal zeroed


def test_batched_saliency_equals_per_example_and_naive(tiny64):
    from llmlab.analysis.saliency import attention_saliency, naive_saliency

    model, tok = tiny64
    texts = [
        "Review: good\nSentiment:",
        "Review: the delivery was slow and bad\nSentiment:",
        "Text: x\nTopic:",
        "Review: I love the battery, it lasts\nSentiment:",
    ]
    seqs = [tok(t).input_ids for t in texts]
    labels, gold = [40, 50], [0, 1, 1, 0]
    batched, logp_b = attention_saliency(model, seqs, labels, gold, batch_size=3, pad_id=tok.pad_token_id)
    for k, s in enumerate(seqs):
        single, logp_s = attention_saliency(model, [s], labels, [gold[k]])
        naive = naive_saliency(model, s, labels, gold[k])
        assert batched[k].shape == (2, len(s), len(s))
        scale = single[0].abs().max()
        assert (batched[k] - single[0]).abs().max() <= 1e-5 * scale
        assert (naive - single[0]).abs().max() <= 1e-5 * scale
        assert torch.allclose(logp_b[k], logp_s[0], atol=1e-6)
    assert all(p.requires_grad for p in model.parameters())  # frozen() restored the flags


# ---- verbalizer ---------------------------------------------------------------------------------------------------


def test_knowledgeable_verbalizer_ranks_class_words():
    from llmlab.runners.verbalizer import build_verbalizer, log_mean_exp

    rows = (
        [{"tl": "positive", "wl": [["positive", "great"], ["positive", "good"]]}] * 3
        + [{"tl": "negative", "wl": [["negative", "awful"], ["positive", "good"]]}] * 2
        + [{"tl": "negative", "wl": [["negative", "slow"]]}]
    )
    v = build_verbalizer(rows, ["negative", "positive"], top_k=5, rank="tfidf", words="spans", min_count=1)
    assert v["positive"] == ["positive", "great"]  # "good" is in both classes: tf-idf weight 0
    assert v["negative"] == ["negative", "awful", "slow"]
    freq = build_verbalizer(rows, ["negative", "positive"], top_k=1, rank="freq", words="spans", min_count=1)
    assert freq["positive"] == ["positive", "good"]
    # pmi keeps a shared word in the class where it is over-represented (good: 3 of 5 in positive)
    pmi = build_verbalizer(rows, ["negative", "positive"], top_k=5, words="spans", min_count=1)
    assert pmi["positive"] == ["positive", "great", "good"] and pmi["negative"] == ["negative", "awful", "slow"]
    words_only = build_verbalizer(rows, ["negative", "positive"], top_k=5, words="spans", min_count=1, label_name=False)
    assert words_only["positive"] == ["great", "good"]
    assert log_mean_exp([0.0, 0.0]) == pytest.approx(0.0)


def test_verbalizer_word_scores_are_label_word_logprobs(tmp_path):
    from llmlab.models.loading import load_model
    from llmlab.runners.verbalizer import WordScorer
    from llmlab.scoring import Scorer

    cfg, ctx = runner_setup(tmp_path, "method=verbalizer")
    model, tok = load_model(cfg.model, ctx.hw, cfg.cache_dir, "sdpa", 0)
    words = ["good", "bad", "fine"]
    for mode in ("first_token", "full"):
        ws = WordScorer(Scorer(model, tok, batch_size=2), "x\nThe sentiment of this review is", words, mode)
        prompts = ["soup\nThe sentiment of this review is", "a longer review text\nThe sentiment of this review is"]
        got = ws.score(prompts)
        for p, g in zip(prompts, got):
            ctx_ids = tok(p).input_ids
            for w in words:
                cont = tok(p + " " + w).input_ids[len(ctx_ids) :]
                with torch.no_grad():
                    logp = model(input_ids=torch.tensor([ctx_ids + cont])).logits[0].log_softmax(-1)
                steps = cont[:1] if mode == "first_token" else cont
                ref = sum(logp[len(ctx_ids) - 1 + t, c].item() for t, c in enumerate(steps))
                assert g[w] == pytest.approx(ref, abs=1e-4)


# ---- runners in tiny mode ---------------------------------------------------------------------------------------


def test_info_flow_runner_tiny(tmp_path):
    from llmlab.runners import info_flow

    cfg, ctx = runner_setup(
        tmp_path,
        "method=info_flow",
        "dataset=mre/scpos_adj",
        "method.limit=3",
        "dataset.n_train_ft=6",
        "dataset.n_icl_pool=1",
    )
    res = info_flow.run(cfg, ctx)
    gold = res["conditions"]["gold"]
    assert set(res["conditions"]) == {"gold", "shuffled", "none"}
    assert len(gold["flows"]["S_wq"]["mean"]) == 2 and gold["flows"]["S_wq"]["mean"][-1] > 0
    assert res["conditions"]["none"]["flows"]["S_wq"] is None  # no Words line in the query
    assert (tmp_path / "run" / "info_flow.png").stat().st_size > 0
    assert json.loads((tmp_path / "run" / "results.json").read_text())["n_queries"] == 3
    # per-query rows whose means are the reported values, so `llmlab report` can bootstrap over queries and seeds
    rows = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 9 and {r["variant"] for r in rows} == {"gold", "shuffled", "none"}
    mets = res["metrics"]
    assert mets["gold"]["accuracy"] == pytest.approx(gold["tl_accuracy"]) and mets["gold"]["n"] == 3
    assert mets["gold"]["shallow_S_tw"] == pytest.approx(gold["flows"]["S_tw"]["thirds"][0])
    assert gold["flows"]["S_wq"]["thirds"][2] is None and "deep_S_wq" not in mets["gold"]  # 2 layers: no deep third
    shuffled = res["conditions"]["shuffled"]
    assert mets["shuffled"]["gold_logprob_vs_gold"] == pytest.approx(shuffled["delta_vs_gold"]["gold_logprob"])
    assert "shallow_S_tw" in mets["none"] and "p_not_lower" not in shuffled["delta_vs_gold"]
    from llmlab import runs_table

    keys, table = runs_table.aggregate(runs_table.load_runs(tmp_path)[0])
    assert table[0]["accuracy"][3] == "bootstrap"  # intervals from the kept per-query rows
    from llmlab.analysis.mre_report import report

    text = report(tmp_path)
    assert "| tiny-random | mre/scpos_adj | 1 | 3 |" in text and (tmp_path / "mre_report.md").is_file()


def test_pair_masks_cover_disjoint_causal_sets():
    from llmlab.runners.info_flow import FLOWS, pair_masks

    sets = {("T", 0): [0, 1], ("W", 0): [2], ("P", 0): [3], ("T", 1): [4, 5], ("W", 1): [6]}
    masks = pair_masks(8, sets, query_block=1)
    assert masks["S_wq"][7, 6] and masks["S_tq"][7, 4] and masks["S_pq"][7, 3] and masks["S_wp"][3, 2]
    assert masks["S_tw"][2, 0] and masks["S_tw"][6, 5] and not masks["S_tw"][6, 0]  # same block only
    total = sum(masks[f].long() for f in FLOWS)
    assert bool((total == torch.ones(8, 8, dtype=torch.long).tril(-1)).all())  # a partition of the causal pairs


@pytest.mark.slow  # the CLI smoke of experiment=mre (tests/cli/test_configs.py) runs every condition already
def test_ablation_runner_tiny(tmp_path):
    from llmlab.runners import mre_ablation

    cfg, ctx = runner_setup(
        tmp_path,
        "method=mre_ablation",
        "dataset=mre/scnm",
        "dataset.n_train_ft=8",
        "method.limit=2",
        "method.max_new_tokens=4",
        "method.conditions=[tl_only,wl_only,joint]",
    )
    res = mre_ablation.run(cfg, ctx)
    assert set(res["conditions"]) == {"tl_only", "wl_only", "joint"}
    assert {"tl_macro_f1", "wl_f1", "all"} <= set(res["conditions"]["joint"])
    assert "joint-tl_only" in res["deltas"]
    assert (tmp_path / "run" / "tl_only" / "model").is_dir()


def test_verbalizer_runner_tiny_without_label_names(tmp_path):
    from llmlab.runners import verbalizer

    cfg, ctx = runner_setup(
        tmp_path,
        "method=verbalizer",
        "dataset=mre/scpos_rw",
        "method.limit=4",
        "method.shots=[0,1]",
        "method.label_name=false",
        "method.min_count=1",
    )
    res = verbalizer.run(cfg, ctx)
    assert [r["shots"] for r in res["table"]] == [0, 1]
    assert all(0.0 <= r[arm]["macro_f1"] <= 1.0 for r in res["table"] for arm in ("baseline", "kv"))
    assert all(c not in res["verbalizer_top10"][c] for c in res["labels"])  # WL words only
    assert len((tmp_path / "run" / "predictions.jsonl").read_text().splitlines()) == 2 * 2 * 4
