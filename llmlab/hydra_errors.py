"""Hydra's and OmegaConf's errors as one line: the one place that depends on the wording of their messages.

The text is Hydra's (hydra-core as pinned in constraints.txt); tests/cli/test_hydra_errors.py triggers each kind
of error with the pinned version and checks the line, so an upgrade that changes the text fails there.
"""

from __future__ import annotations

import os

from omegaconf.errors import OmegaConfBaseException

from llmlab.paths import conf_dir


def one_line(exc: BaseException) -> str:
    """A Hydra/OmegaConf/llmlab error as a single line: the message, its cause, and the key or options involved."""
    text = str(exc).split("\nConfig search path")[0]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("To append")]
    msg = lines[0] if lines else type(exc).__name__
    if len(lines) > 1 and lines[1].startswith("Available options"):
        group = lines[1].split("'")[1] if lines[1].count("'") >= 2 else ""
        missing = str(getattr(exc, "missing_cfg_file", None) or "")
        if group and missing.startswith(f"{group}/"):  # `group=sub/typo`: the options under `sub`, and the closest
            options, close = group_choices(group, missing[len(group) + 1 :])
            lines[2:] = options or lines[2:]
            msg += f" (did you mean {group}={close}?)" if close else ""
        msg += f"; available: {', '.join(lines[2:])}"
    cause = exc.__cause__
    if isinstance(cause, OmegaConfBaseException):
        clines = [ln.strip() for ln in str(cause).splitlines() if ln.strip()]
        key = next((ln.split(":", 1)[1].strip() for ln in clines if ln.startswith("full_key:")), None)
        msg = f"{clines[0]}" + (f" (key: {key})" if key else "") + f" [{msg}]"
    return msg


def sweep_hint(msg: str, argv: list[str]) -> str:
    """For `Could not override 'g.k'` in a multirun that sweeps the group `g`: Hydra composes the shared config with
    g's default option, which may lack `k`; `++g.k=v` sets it in every job instead. "" otherwise."""
    if "Could not override '" not in msg or not {"-m", "--multirun"} & set(argv):
        return ""
    key = msg.split("Could not override '", 1)[1].split("'", 1)[0]
    group = key.split(".", 1)[0]
    if not any(a.startswith(f"{group}=") and "," in a for a in argv):
        return ""
    return f"; {group} is swept and the sweep's shared config holds its default option: write ++{key}=... instead"


def group_choices(group: str, name: str) -> tuple[list[str], str | None]:
    """The options of config group `group` under the deepest existing subgroup of `name` (nested ones as `sub/opt`),
    and the one closest to `name`; ([], None) when Hydra cannot list them."""
    import difflib
    from contextlib import nullcontext

    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.object_type import ObjectType

    try:
        ready = GlobalHydra.instance().is_initialized()
        with nullcontext() if ready else initialize_config_dir(str(conf_dir()), version_base="1.3"):
            loader = GlobalHydra.instance().config_loader()

            def listing(sub: str) -> list[str]:
                path = f"{group}/{sub}".rstrip("/")
                out = [f"{sub}{o}" for o in loader.get_group_options(path, ObjectType.CONFIG)]
                for child in loader.get_group_options(path, ObjectType.GROUP):
                    out += listing(f"{sub}{child}/")
                return out

            base = ""
            for part in name.split("/")[:-1]:
                if part not in loader.get_group_options(f"{group}/{base}".rstrip("/"), ObjectType.GROUP):
                    break
                base += f"{part}/"
            options = sorted(listing(base))
    except Exception:  # only a better message is lost
        return [], None
    close = difflib.get_close_matches(name, options, n=1)
    if not close:  # `dataset=bool`: match the option's last part
        tails = {o.rsplit("/", 1)[-1]: o for o in options}
        close = [tails[t] for t in difflib.get_close_matches(name.rsplit("/", 1)[-1], list(tails), n=1)]
    return options, close[0] if close else None


def raised_by_hydra(exc: BaseException) -> bool:
    """Whether the innermost frame of `exc` is Hydra's (its argument checks), not a runner's."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and f"{os.sep}hydra{os.sep}" in tb.tb_frame.f_code.co_filename
