"""Benchmark 1: NetVLADModelLF training throughput and model FLOP utilisation (MFU).

The training graph is train.py's own (train.build_training_graph), fed two
ways: from memory (the first parsed batch cached and repeated, so no input
pipeline runs) and end to end from the TFRecords.  MFU = analytic matmul
FLOPs per example (benchmarks/flops.py) x examples/sec / the FLOP/s of a
large float32 matmul measured in the same process with the same session
settings.  The machine may be shared, so each figure is the best of several
timed steps (the median is reported too); see :func:`measure` for the order.
"""
import os
import statistics
import time
from typing import Callable, Dict, List

import tensorflow as tf

import app_flags
import model_config
import performance
import train
from benchmarks import common, flops, step_profile

_V1 = tf.compat.v1


def _matmul(size: int, dtype: tf.DType):
    """A graph timing one [size, size] @ [size, size] product (fetching one element)."""
    graph = tf.Graph()
    with graph.as_default():
        a = tf.Variable(tf.cast(tf.random.normal([size, size]), dtype))
        b = tf.Variable(tf.cast(tf.random.normal([size, size]), dtype))
        fetch = tf.matmul(a, b)[0, 0]
        init = _V1.global_variables_initializer()
    return graph, fetch, init


class MatmulRate:
    """FLOP/s of a large dense matmul, sampled in blocks of about one training step's length.

    A block as long as a step sees the same share of a busy machine as the step
    does, so their ratio (MFU) holds up better than a burst of short samples.
    """

    def __init__(self, size: int, dtype: tf.DType = tf.float32):
        self.size = size
        graph, self._fetch, init = _matmul(size, dtype)
        config = performance.session_config(app_flags.training_config())
        self._session = _V1.Session(graph=graph, config=config)
        self._session.run(init)
        self._session.run(self._fetch)
        self.samples: List[float] = []

    def sample(self, seconds: float) -> float:
        count, start = 0, time.perf_counter()
        while count == 0 or time.perf_counter() - start < seconds:
            self._session.run(self._fetch)
            count += 1
        self.samples.append(count * 2 * self.size ** 3 / (time.perf_counter() - start))
        return self.samples[-1]

    def close(self) -> None:
        self._session.close()


def _cached_batch(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """The first batch, parsed once and then repeated from memory."""
    return dataset.take(1).cache().repeat()


class _Trainer:
    """train.py's training graph in a session, after warm-up steps; times single steps."""

    def __init__(self, settings: common.Settings, config: model_config.ModelConfig,
                 files: List[str], transform: Callable | None,
                 session_config: _V1.ConfigProto | None = None):
        self.tg = train.build_training_graph(config, app_flags.training_config(), files,
                                            dataset_transform=transform)
        self._fetches = [self.tg.step_after_train, self.tg.label_loss]
        self._session = _V1.Session(graph=self.tg.graph,
                                    config=session_config or performance.session_config(
                                        app_flags.training_config()))
        self._session.run(self.tg.init_op)
        self.tg.graph.finalize()
        for _ in range(settings.warmup_steps):
            self._session.run(self._fetches)
        self.rates: List[float] = []
        self.cpu: List[float] = []
        self.seconds = 0.0

    def step(self) -> float:
        """Runs one step; returns its examples/sec."""
        times, start = os.times(), time.perf_counter()
        self._session.run(self._fetches)
        seconds, used = time.perf_counter() - start, os.times()
        self.cpu.append(used.user - times.user + used.system - times.system)
        self.rates.append(self.tg.examples_per_step / seconds)
        self.seconds = seconds
        return self.rates[-1]

    def traced_seconds(self, steps: int) -> Dict[str, float]:
        """Kernel seconds by kind in the fastest of ``steps`` traced steps
        (benchmarks/step_profile.py); the machine may be busy during some."""
        traces = [step_profile.traced_seconds(self._session, self._fetches)
                  for _ in range(steps)]
        return min(traces, key=lambda seconds: sum(seconds.values()))

    def summary(self) -> Dict[str, object]:
        return dict(common.summarise(self.rates), cpu_seconds_per_step=min(self.cpu))

    def close(self) -> None:
        self._session.close()


def _traced_step(settings: common.Settings, config: model_config.ModelConfig,
                 files: List[str], per_example: int):
    """Kernel seconds by kind of a memory-fed step run one op at a time, and its FLOPs.

    Traced before the timed trainers exist, so nothing else of this process runs.
    """
    serial = performance.session_config(app_flags.training_config())
    serial.inter_op_parallelism_threads = 1
    traced = _Trainer(settings, config, files, _cached_batch, serial)
    try:
        return (traced.traced_seconds(settings.rounds),
                per_example * traced.tg.examples_per_step)
    finally:
        traced.close()


def measure(settings: common.Settings, files: List[str]) -> Dict[str, object]:
    """Training from memory and from TFRecords at ``settings`` (flags already parsed).

    Each round times a matmul block, then ``steps`` steps fed from the records,
    then as many fed from memory: the records' pipeline refills its buffer
    during the first memory-fed step after them, so the memory-fed figure is
    the best, not the first, of its steps.  MFU pairs each round's step rate
    with that round's matmul rate (median over rounds) and also divides the
    best step rate by the best matmul rate.  First, steps fed from memory are
    traced op by op (benchmarks/step_profile.py) to say where the time goes.
    """
    config = app_flags.model_config()
    shape = flops.NetVLADShape(frames=settings.iterations, cluster_size=settings.cluster_size,
                               hidden_size=settings.hidden_size,
                               num_classes=settings.num_classes,
                               mixtures=app_flags.value("moe_num_mixtures"))
    per_example = flops.training_flops(shape)
    seconds, step_flops = _traced_step(settings, config, files, per_example)
    matmul = MatmulRate(settings.matmul_size)
    memory = _Trainer(settings, config, files, _cached_batch)
    records = _Trainer(settings, config, files, None)
    paired = []
    try:
        for _ in range(settings.rounds):
            rate = matmul.sample(max(memory.seconds, 0.2))
            for _ in range(settings.steps):
                records.step()
            paired.append(per_example * max(memory.step() for _ in range(settings.steps)) / rate)
    finally:
        for closable in (matmul, memory, records):
            closable.close()
    peak = max(matmul.samples)
    results = {"memory_examples_per_sec": memory.summary(),
               "records_examples_per_sec": records.summary()}
    for feed in results.values():
        feed["mfu"] = per_example * feed["best"] / peak
    return {
        "mixed_precision": app_flags.value("mixed_precision"),
        "batch_size": settings.batch_size,
        "flops_per_example": per_example,
        "matmul_size": settings.matmul_size,
        "matmul_flops_per_sec": common.summarise(matmul.samples),
        **results,
        "mfu": results["memory_examples_per_sec"]["mfu"],
        "mfu_paired_median": statistics.median(paired),
        "records_over_memory": (results["records_examples_per_sec"]["best"]
                                / results["memory_examples_per_sec"]["best"]),
        "step_breakdown": step_profile.breakdown(
            seconds, step_flops, peak),
    }
