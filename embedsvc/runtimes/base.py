"""Which executor serves a strategy: ``ServiceConfig.runtime`` (torch | onnx | onnx-int8).

``serving_strategy(name, config)`` returns the strategy instance the engine serves: the shared
torch instance, or -- for an ONNX runtime -- an instance of its own whose executor runs the
exported graph. Nothing here exports: the export is an explicit step (``embedsvc export``, or
the engine's start-up before health turns SERVING), so a request never waits for one; a
strategy without an export is refused with the command that makes it.
"""

from __future__ import annotations

import threading
from typing import Any

from embedsvc.errors import FailedPrecondition, InvalidArgument
from embedsvc.strategies import Strategy, create_strategy, get_strategy

#: ServiceConfig.runtime values, and whether the ONNX ones use the int8 model
RUNTIMES = {"torch": None, "onnx": False, "onnx-int8": True}
#: the most STS-B dev Spearman the int8 model may lose against fp32 (``Strategy.int8_sts_delta``)
INT8_GATE = 0.5

_INSTANCES: dict[tuple[str, str], Strategy] = {}
_LOCK = threading.Lock()


def check_runtime(runtime: str) -> None:
    if runtime not in RUNTIMES:
        valid = ", ".join(RUNTIMES)
        raise InvalidArgument(f"unknown runtime {runtime!r}; valid: {valid}", field="runtime")


def int8_refusal(cls: type[Strategy]) -> str | None:
    """Why ``onnx-int8`` must not serve strategy class ``cls`` (None: it may)."""
    delta = cls.int8_sts_delta
    if delta is None:
        return (
            f"strategy {cls.name!r}: its int8 model was never measured against fp32 on STS-B "
            "dev; serve it with runtime 'onnx' (fp32)"
        )
    if delta < -INT8_GATE:
        return (
            f"strategy {cls.name!r}: its int8 model loses {-delta:.2f} STS-B dev Spearman "
            f"points against fp32 (gate: {INT8_GATE}; docs/results/issue7.md); serve it with "
            "runtime 'onnx' (fp32)"
        )
    return None


def runtime_of(cls: type[Strategy], runtime: str) -> str:
    """What serves strategy class ``cls`` under ``runtime`` (``ListStrategies`` reports it)."""
    if cls.build_core is Strategy.build_core:
        return "none (model-free)"
    if runtime == "onnx-int8" and int8_refusal(cls) is not None:
        return "refused (int8 below the STS gate: serve with onnx)"
    return runtime


def check_servable(name: str, runtime: str) -> None:
    """FailedPrecondition when ``runtime`` refuses strategy ``name`` (the int8 gate)."""
    from embedsvc.strategies import strategy_class

    cls = strategy_class(name)
    if runtime == "onnx-int8" and cls.build_core is not Strategy.build_core:
        reason = int8_refusal(cls)
        if reason is not None:
            raise FailedPrecondition(f"runtime onnx-int8 refuses {reason}", field="strategy")


def onnx_folder(strategy: Strategy, config: Any) -> Any:
    """The start-up export folder of ``strategy`` under ``config.cache_dir``."""
    from embedsvc.runtimes.onnx import export_dir

    return export_dir(config.cache_dir, strategy.name, strategy.model_fingerprint)


def serving_strategy(name: str, config: Any) -> Strategy:
    """The instance of strategy ``name`` that ``config.runtime`` serves (cached per process)."""
    runtime = config.runtime
    check_runtime(runtime)
    check_servable(name, runtime)
    base = get_strategy(name)
    if not base.exportable:
        # model-free strategies (debug) have no graph: they are served as they are
        return base
    if runtime == "torch":
        from embedsvc.runtimes.pytorch import device, torch_executor

        if device() != "cpu" and base.executor.name == "torch" and base.executor.device == "cpu":
            with _LOCK:  # the shared instance moves to the GPU once
                if base.executor.device == "cpu":
                    base.use_executor(torch_executor(base))
        return base
    key = (name, runtime)
    inst = _INSTANCES.get(key)
    if inst is not None:
        return inst
    from embedsvc.runtimes.onnx import has_export, onnx_executor

    int8 = bool(RUNTIMES[runtime])
    folder = onnx_folder(base, config)
    if not has_export(folder, int8):
        raise FailedPrecondition(
            f"strategy {name!r} has no {runtime} export in {folder}: exports run at start-up "
            f"for preload_strategies (add {name!r} there), or `embedsvc export -s {name} -o "
            f"{folder}{' --int8' if int8 else ''}`; a request never exports",
            field="strategy",
        )
    with _LOCK:
        inst = _INSTANCES.get(key)
        if inst is None:
            inst = create_strategy(name)
            inst.use_executor(onnx_executor(folder, int8=int8, threads=config.torch_threads))
            _INSTANCES[key] = inst
    return inst


def load_export(directory: Any, *, int8: bool = False, threads: int | None = None) -> Strategy:
    """Serve an ``embedsvc export`` folder: the strategy rebuilt from its manifest's name and
    config, with the folder's graph as its executor (pre and post stay the strategy's)."""
    import logging

    from embedsvc.runtimes.onnx import onnx_executor, read_manifest

    info = read_manifest(directory)["strategy"]
    inst = create_strategy(info["name"], **info["config"])
    if inst.model_fingerprint != info["fingerprint"]:
        logging.getLogger(__name__).warning(
            "%s was exported from weights/config %s; the local strategy is %s",
            directory,
            info["fingerprint"],
            inst.model_fingerprint,
        )
    inst.use_executor(onnx_executor(directory, int8=int8, threads=threads))
    return inst
