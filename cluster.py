"""Which task of a between-graph replicated training cluster this process is (TF_CONFIG).

Vertex AI custom jobs (like ml-engine before them) set ``TF_CONFIG`` on every
replica::

    {"cluster": {"chief": ["host:port"], "worker": [...], "ps": [...]},
     "task": {"type": "worker", "index": 0}}

(older runtimes say ``master`` instead of ``chief``; ``evaluator`` tasks are
not part of the cluster).  Without TF_CONFIG, or with a cluster of one task,
training runs in one process.  Otherwise every task starts a
``tf.distribute.Server`` on TensorFlow's own runtime: ps tasks hold the
variables and serve until they are killed; the chief and the workers build
the same graph under ``replica_device_setter`` (variables on the ps tasks,
everything else, the input pipeline included, on the task itself) and each
runs its own training steps against the shared variables.  Without ps tasks
the chief holds the variables.
"""
import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Dict, List, Sequence

import tensorflow as tf
from absl import logging

from errors import UsageError

CHIEF_JOBS = ("chief", "master")
WORKER_JOB = "worker"
PS_JOB = "ps"
EVALUATOR_JOB = "evaluator"
POLL_SECS = 0.5
LOG_EVERY_SECS = 30.0


@dataclass(frozen=True)
class Task:
    """This process's place in the cluster; the default is a single process."""

    job: str = "chief"
    index: int = 0
    cluster: Dict[str, List[str]] = field(default_factory=dict)  # empty: one process

    @property
    def distributed(self) -> bool:
        return bool(self.cluster)

    @property
    def is_ps(self) -> bool:
        return self.job == PS_JOB

    @property
    def is_evaluator(self) -> bool:
        return self.job == EVALUATOR_JOB

    @property
    def chief_job(self) -> str:
        """``chief`` or ``master``; without either, worker 0 is the chief (as in TF)."""
        return next((job for job in CHIEF_JOBS if job in self.cluster), WORKER_JOB)

    @property
    def is_chief(self) -> bool:
        """The task that initialises, writes checkpoints, summaries and model_flags.json."""
        if not self.distributed:
            return not self.is_evaluator
        return self.job == self.chief_job and self.index == 0

    @property
    def device(self) -> str:
        return f"/job:{self.job}/task:{self.index}"

    @property
    def num_training_tasks(self) -> int:
        """Tasks that run training steps: the chief and the workers."""
        if not self.distributed:
            return 1
        return sum(len(self.cluster.get(job, [])) for job in CHIEF_JOBS + (WORKER_JOB,))

    @property
    def training_rank(self) -> int:
        """0 for the chief, then the workers in order."""
        if not self.distributed or self.job in CHIEF_JOBS:
            return self.index
        return self.index + (0 if self.chief_job == WORKER_JOB else 1)

    def _variable_device(self) -> str:
        return f"/job:{PS_JOB}" if PS_JOB in self.cluster else f"/job:{self.chief_job}/task:0"

    def device_function(self) -> Callable | None:
        """Places variables on the ps tasks (round robin) and other ops on this task."""
        if not self.distributed:
            return None
        if PS_JOB in self.cluster:
            return tf.compat.v1.train.replica_device_setter(
                cluster=tf.train.ClusterSpec(self.cluster), worker_device=self.device)
        return tf.compat.v1.train.replica_device_setter(
            ps_tasks=1, ps_device=f"/job:{self.chief_job}", worker_device=self.device)

    def graph_device_scope(self, graph: tf.Graph) -> ContextManager:
        """``graph.device(device_function())``, or nothing in a single process."""
        function = self.device_function()
        return graph.device(function) if function else contextlib.nullcontext()

    def input_device_scope(self) -> ContextManager:
        """Keeps the input pipeline on this task, never on a ps (its py_function runs here)."""
        return tf.device(self.device) if self.distributed else contextlib.nullcontext()

    def session_config(self, base: tf.compat.v1.ConfigProto) -> tf.compat.v1.ConfigProto:
        """``base`` seeing only the variables' tasks and this one, in a cluster.

        So a worker neither waits for nor depends on the other workers.
        """
        config = tf.compat.v1.ConfigProto()
        config.CopyFrom(base)
        if self.distributed:
            config.device_filters.extend([self._variable_device(), self.device])
        return config

    def start_server(self, config: tf.compat.v1.ConfigProto) -> tf.distribute.Server:
        logging.info("Starting %s task %d of cluster %s", self.job, self.index,
                     json.dumps(self.cluster, sort_keys=True))
        return tf.distribute.Server(tf.train.ClusterSpec(self.cluster), job_name=self.job,
                                    task_index=self.index, config=config, start=True)

    def shard_files(self, files: Sequence[str]) -> List[str]:
        """This training task's share of ``files`` (all of them if there are too few)."""
        count = self.num_training_tasks
        if count == 1:
            return list(files)
        if len(files) < count:
            logging.warning("%d files for %d training tasks: every task reads all of them.",
                            len(files), count)
            return list(files)
        return list(files[self.training_rank::count])


def _bad(message: str) -> UsageError:
    return UsageError(f"TF_CONFIG: {message}")


def _parse_cluster(cluster) -> Dict[str, List[str]]:
    if not isinstance(cluster, dict):
        raise _bad(f"'cluster' must map job names to address lists, got {cluster!r}")
    parsed = {}
    for job, addresses in cluster.items():
        if job == EVALUATOR_JOB:
            continue
        if job not in CHIEF_JOBS + (WORKER_JOB, PS_JOB):
            raise _bad(f"unknown job {job!r} in 'cluster' (expected chief or master, worker, "
                       "ps, evaluator)")
        if not (isinstance(addresses, list) and all(isinstance(a, str) for a in addresses)):
            raise _bad(f"cluster job {job!r} must list 'host:port' strings, got {addresses!r}")
        if addresses:
            parsed[job] = addresses
    if all(job in parsed for job in CHIEF_JOBS):
        raise _bad("the cluster has both a 'chief' and a 'master' job")
    return parsed


def parse(text: str | None) -> Task:
    """The task that the TF_CONFIG json ``text`` describes (a single process when empty)."""
    if not text or not text.strip():
        return Task()
    try:
        config = json.loads(text)
    except ValueError as e:
        raise _bad(f"not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise _bad(f"expected a JSON object, got {text!r}")
    cluster = _parse_cluster(config.get("cluster") or {})
    task = config.get("task") or {}
    job, index = task.get("type"), task.get("index", 0)
    if job == EVALUATOR_JOB:
        return Task(job=job, index=int(index), cluster=cluster)
    if sum(len(addresses) for addresses in cluster.values()) <= 1:
        return Task()
    if job not in cluster:
        raise _bad(f"task type {job!r} is not a job of the cluster {sorted(cluster)}")
    if not isinstance(index, int) or not 0 <= index < len(cluster[job]):
        raise _bad(f"task index {index!r} out of range for job {job!r} "
                   f"({len(cluster[job])} tasks)")
    return Task(job=job, index=index, cluster=cluster)


def from_environment() -> Task:
    return parse(os.environ.get("TF_CONFIG"))


@dataclass
class SyncOps:
    """How the chief and the workers meet: two variables kept where the variables are.

    Local variables, so checkpoints never hold them; only the chief
    initialises them (with everything else).
    """

    uninitialized: tf.Tensor
    chief_ready: tf.Tensor
    mark_chief_ready: tf.Operation
    workers_done: tf.Tensor
    mark_worker_done: tf.Operation


def build_sync_ops() -> SyncOps:
    """Builds the sync ops; call after every other variable of the graph exists."""
    def counter(name: str) -> tf.Variable:
        return tf.compat.v1.get_variable(
            f"cluster_sync/{name}", shape=[], dtype=tf.int32,
            initializer=tf.compat.v1.zeros_initializer(), trainable=False,
            collections=[tf.compat.v1.GraphKeys.LOCAL_VARIABLES])

    ready, done = counter("chief_ready"), counter("workers_done")
    uninitialized = tf.compat.v1.report_uninitialized_variables()
    uninitialized.mark_used()  # only the workers run it
    return SyncOps(uninitialized=uninitialized,
                   chief_ready=ready.read_value(), mark_chief_ready=ready.assign(1).op,
                   workers_done=done.read_value(), mark_worker_done=done.assign_add(1).op)


def poll_until(condition: Callable[[], bool], what: str) -> None:
    """Calls ``condition`` every POLL_SECS until it is true, logging now and then."""
    start = last_log = time.time()
    logging.info("Waiting for %s.", what)
    while not condition():
        if time.time() - last_log >= LOG_EVERY_SECS:
            logging.info("Still waiting for %s (%.0f s).", what, time.time() - start)
            last_log = time.time()
        time.sleep(POLL_SECS)


def wait_for_chief(sess: tf.compat.v1.Session, ops: SyncOps) -> None:
    """A worker's start: every variable initialised and the chief's restore done."""
    poll_until(lambda: len(sess.run(ops.uninitialized)) == 0 and sess.run(ops.chief_ready) == 1,
          "the chief to initialise the variables")
