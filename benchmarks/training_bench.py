"""Benchmark 1: NetVLADModelLF training throughput and model FLOP utilisation (MFU).

The training graph is train.py's own (train.build_training_graph), fed two
ways: from memory (the first parsed batch cached and repeated, so no input
pipeline runs) and end to end from the TFRecords.  MFU = analytic matmul
FLOPs per example (benchmarks/flops.py) x examples/sec / the FLOP/s of a
large float32 matmul measured in the same process with the same session
settings.  The machine may be shared, so each figure is the best of several
timed blocks of steps (the median is reported too), and the matmul rate is
measured before, between and after the training blocks.
"""
import os
import time
from typing import Callable, Dict, List

import tensorflow as tf

import app_flags
import model_config
import performance
import train
from benchmarks import common, flops

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
    """FLOP/s of a large dense matmul, sampled whenever asked (best of the samples wins)."""

    def __init__(self, size: int, dtype: tf.DType = tf.float32):
        self.size = size
        graph, self._fetch, init = _matmul(size, dtype)
        self._session = _V1.Session(graph=graph, config=performance.session_config())
        self._session.run(init)
        self._session.run(self._fetch)
        self.samples: List[float] = []

    def sample(self, repeats: int = 3) -> None:
        for _ in range(repeats):
            start = time.perf_counter()
            self._session.run(self._fetch)
            self.samples.append(2 * self.size ** 3 / (time.perf_counter() - start))

    def close(self) -> None:
        self._session.close()


def _cached_batch(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """The first batch, parsed once and then repeated from memory."""
    return dataset.take(1).cache().repeat()


def _time_steps(settings: common.Settings, config: model_config.ModelConfig,
                files: List[str], transform: Callable | None,
                between_blocks: Callable[[], None]) -> Dict[str, object]:
    """Examples/sec of timed blocks of training steps (after warm-up steps)."""
    tg = train.build_training_graph(config, files, dataset_transform=transform)
    fetches = [tg.step_after_train, tg.label_loss]
    rates, cpu = [], []
    with _V1.Session(graph=tg.graph, config=performance.session_config()) as sess:
        sess.run(tg.init_op)
        tg.graph.finalize()
        for _ in range(settings.warmup_steps):
            sess.run(fetches)
        for _ in range(settings.rounds):
            between_blocks()
            times = os.times()
            start = time.perf_counter()
            for _ in range(settings.steps):
                sess.run(fetches)
            seconds = time.perf_counter() - start
            used = os.times()
            cpu.append((used.user - times.user + used.system - times.system) / settings.steps)
            rates.append(settings.steps * tg.examples_per_step / seconds)
    return dict(common.summarise(rates), cpu_seconds_per_step=min(cpu))


def measure(settings: common.Settings, files: List[str]) -> Dict[str, object]:
    """Training from memory and from TFRecords at ``settings`` (flags already parsed)."""
    config = model_config.from_flags()
    shape = flops.NetVLADShape(frames=settings.iterations, cluster_size=settings.cluster_size,
                               hidden_size=settings.hidden_size,
                               num_classes=settings.num_classes,
                               mixtures=app_flags.value("moe_num_mixtures"))
    matmul = MatmulRate(settings.matmul_size)
    try:
        matmul.sample()
        memory = _time_steps(settings, config, files, _cached_batch, matmul.sample)
        records = _time_steps(settings, config, files, None, matmul.sample)
        matmul.sample()
    finally:
        matmul.close()
    peak = max(matmul.samples)
    per_example = flops.training_flops(shape)
    for feed in (memory, records):
        feed["mfu"] = per_example * feed["best"] / peak
    return {
        "mixed_precision": app_flags.value("mixed_precision"),
        "batch_size": settings.batch_size,
        "flops_per_example": per_example,
        "matmul_size": settings.matmul_size,
        "matmul_flops_per_sec": common.summarise(matmul.samples),
        "memory_examples_per_sec": memory,
        "records_examples_per_sec": records,
        "mfu": memory["mfu"],
        "records_over_memory": records["best"] / memory["best"],
    }
