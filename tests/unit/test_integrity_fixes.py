"""Run integrity: W&B without a network, PDDL comments, fp64 `lm` attention, the bool variant of `faithful=true`."""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
import types

import pytest
import torch
from omegaconf import OmegaConf

from tests.helpers import compose

# ------------------------------------------------------------------------------------- 11. W&B online, no network


def closed_port() -> int:
    """A local port nothing listens on (bound, then closed): connections are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wandb_cfg(mode: str = "online"):
    return OmegaConf.create(
        {
            "logger": {"backend": "wandb", "mode": mode, "project": "p", "entity": None, "group": None, "tags": []},
            "tags": [],
        }
    )


def fake_run_dir(path):
    return types.SimpleNamespace(path=path, file=lambda name: path / name)


def notices(capsys) -> list[str]:
    return [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("llmlab:")]


@pytest.fixture
def no_network_wandb(tmp_path, monkeypatch):
    """The real wandb, logged in (an API key), its server a closed local port; wandb.init calls are recorded."""
    import wandb

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "20")  # bounds the old online attempt when run on the unfixed code
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(var, raising=False)
    for key in ("DIR", "CONFIG_DIR", "CACHE_DIR", "DATA_DIR"):
        monkeypatch.setenv(f"WANDB_{key}", str(tmp_path / "wandb-env" / key.lower()))
    calls, real_init = [], wandb.init

    def init(*args, **kwargs):
        calls.append((kwargs.get("mode"), kwargs.get("id")))
        return real_init(*args, **kwargs)

    monkeypatch.setattr(wandb, "init", init)
    return calls


def test_wandb_online_without_network_goes_offline_at_once_under_a_fresh_id(tmp_path, no_network_wandb, capsys):
    from llmlab.tracking import Tracker

    run = tmp_path / "run"
    run.mkdir()
    (run / "wandb_id").write_text("oldonline123")  # the id an online attempt would use (a resumed run)
    start = time.monotonic()
    t = Tracker(wandb_cfg(), fake_run_dir(run), name="t")
    assert time.monotonic() - start < 10  # not wandb's 90 s init timeout
    new_id = (run / "wandb_id").read_text().strip()
    assert no_network_wandb == [("offline", new_id)] and t.run is not None  # never tried online
    assert new_id and new_id != "oldonline123"
    (line,) = notices(capsys)
    assert "unreachable" in line and "logging offline" in line and new_id in line and "in use" not in line
    t.log({"integrity_metric": 1.5}, step=1)
    t.finish()
    assert not notices(capsys)  # logging went on
    (offline,) = (run / "wandb").glob("offline-run-*")
    assert offline.name.endswith(new_id)
    deadline = time.monotonic() + 30  # wandb's service writes the run file in the background
    while b"integrity_metric" not in (offline / f"run-{new_id}.wandb").read_bytes():
        assert time.monotonic() < deadline, "the metric never reached the offline run"
        time.sleep(0.1)

    # a resume, still without a network, continues that offline run instead of starting another
    t = Tracker(wandb_cfg(), fake_run_dir(run), name="t")
    assert no_network_wandb[1:] == [("offline", new_id)] and t.run is not None
    t.finish()
    assert (run / "wandb_id").read_text().strip() == new_id and len(notices(capsys)) == 1


def test_wandb_online_init_failure_falls_back_offline_under_a_fresh_id(tmp_path, monkeypatch, capsys):
    """The server answers the probe but `wandb.init(mode="online")` fails: the offline run does not reuse the id the
    failed online run may still hold."""
    calls = []

    def init(mode, id, **kwargs):
        calls.append((mode, id))
        if mode == "online":
            raise RuntimeError("run initialization has timed out after 90.0 sec")
        return types.SimpleNamespace(log=lambda *a, **k: None, finish=lambda exit_code=0: None)

    module = types.SimpleNamespace(
        init=init, login=lambda prompt, verify: True, run=None, Settings=lambda **kw: kw, Table=None
    )
    monkeypatch.setitem(sys.modules, "wandb", module)
    (tmp_path / "wandb_id").write_text("oldonline123")
    from llmlab.tracking import Tracker

    t = Tracker(wandb_cfg(), fake_run_dir(tmp_path), name="t")
    new_id = (tmp_path / "wandb_id").read_text().strip()
    assert calls == [("online", "oldonline123"), ("offline", new_id)] and new_id != "oldonline123"
    (line,) = notices(capsys)
    assert "timed out" in line and "logging offline" in line and new_id in line
    assert t.run is not None


def test_wandb_reachability_probe_is_bounded(monkeypatch):
    """A network that drops packets (connect hangs) is judged unreachable within the probe's timeout."""
    import wandb

    from llmlab.tracking import _wandb_unreachable

    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example:8443")
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(var, raising=False)
    seen, released = [], threading.Event()

    def hang(address, timeout):  # a dropped SYN: no answer until the test ends
        seen.append(address)
        released.wait(30)
        raise OSError("timed out")

    monkeypatch.setattr(socket, "create_connection", hang)
    start = time.monotonic()
    try:
        reason = _wandb_unreachable(wandb, timeout=0.3)
    finally:
        released.set()
    assert time.monotonic() - start < 3 and seen == [("wandb.example", 8443)]
    assert "wandb.example:8443" in reason and "unreachable" in reason


# ------------------------------------------------------------------------------------------ 13. PDDL ; comments

COMMENTED = """; PlanBench-style instance with comments
(define (problem BW-rand-4) ; four blocks
(:domain blocksworld-4ops)
(:objects a b c d) ; e f
(:init (handempty) ; was (on a b)
 (ontable a) (ontable b) (on c a) (ontable d) (clear b) (clear c) (clear d))
(:goal (and (on b d) ; (on d a)
 (on c a))))
"""


def test_parse_pddl_ignores_semicolon_comments():
    from llmlab.blocksworld.domain import parse_pddl

    p = parse_pddl(COMMENTED, "commented.pddl")
    assert p.blocks == ("a", "b", "c", "d")
    assert ("on", "a", "b") not in p.init and ("on", "c", "a") in p.init and ("handempty",) in p.init
    assert p.goal == {("on", "b", "d"), ("on", "c", "a")}


# ------------------------------------------------------------------------------------------ 14. fp64 `lm` forward

COMBOS = [
    (a, p, i) for a in ("softmax", "stablemask") for p in ("rope", "alibi", "none") for i in ("sdpa", "reference")
]


@pytest.mark.parametrize("attention,position,impl", COMBOS)
def test_lm_forward_in_fp64(attention, position, impl):
    from llmlab.config import LMArch
    from llmlab.models.lm import LM

    arch = LMArch(
        n_layer=2,
        d_model=32,
        n_head=4,
        ffn_hidden=48,
        max_seq_len=64,
        attention=attention,
        position=position,
        attn_impl=impl,
    )
    torch.manual_seed(0)
    model = LM(arch, 50, 16).eval()
    ids = torch.randint(0, 50, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out32 = model(ids)
        model.double()
        out64 = model(ids)
        model.set_window(6)  # the dense path
        windowed = model(ids)
        maps = model.attention_maps(ids)
    assert out32.dtype == torch.float32 and out64.dtype == torch.float64 and windowed.dtype == torch.float64
    torch.testing.assert_close(out64.float(), out32, atol=1e-4, rtol=1e-3)
    assert all(probs.dtype == torch.float64 for probs, _ in maps)


# --------------------------------------------------------------------------- 15. implicit/bool with faithful=true


def bool_rows(*overrides: str) -> list[dict]:
    from llmlab.data.loading import load_eval_data

    cfg = compose(
        ["dataset=implicit/bool", "dataset.n_test=40", "dataset.n_icl_pool=4", "dataset.n_train_ft=4", *overrides]
    )
    return load_eval_data(cfg.dataset, 0).tests["pattern"].to_list()


def shortcut_suffix(row: dict) -> bool:
    return row["question"].split("\n")[0].endswith(("or True", "and False"))


def test_bool_config_variant_follows_faithful():
    from llmlab.data.implicit import load_implicit

    faithful = bool_rows("dataset.faithful=true")
    assert {json.loads(r["meta"])["bool_variant"] for r in faithful} == {"random"}  # the released `randoms`
    assert not any(shortcut_suffix(r) for r in faithful)
    assert (
        faithful
        == load_implicit("bool", 0, faithful=True, n_test=40, n_train_ft=4, n_icl_pool=4)["test_pattern"].to_list()
    )  # the CLI and the Python API agree

    clean = bool_rows()
    assert {json.loads(r["meta"])["bool_variant"] for r in clean} == {"shortcut"} and all(map(shortcut_suffix, clean))
    explicit = bool_rows("dataset.faithful=true", "dataset.options.bool_variant=shortcut")
    assert {json.loads(r["meta"])["bool_variant"] for r in explicit} == {"shortcut"}
