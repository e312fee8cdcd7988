"""float16-stored variables train through float32 masters."""
import numpy as np
import tensorflow as tf

import checkpoint_utils
import fp16_training


def _variable(graph, name):
    return next(v for v in graph.get_collection(tf.compat.v1.GraphKeys.GLOBAL_VARIABLES)
                if v.op.name == name)


def _graph(lr=0.1):
    graph = tf.Graph()
    with graph.as_default():
        step = checkpoint_utils.create_global_step()
        w16 = tf.compat.v1.get_variable("w16", initializer=np.full([3], 0.5, np.float16))
        w32 = tf.compat.v1.get_variable("w32", initializer=np.full([3], 0.5, np.float32))
        target = tf.constant([1e-3, -2e-3, 3e-3])
        loss = tf.reduce_sum((tf.cast(w16, tf.float32) - target) ** 2 + (w32 - target) ** 2)
        opt = tf.compat.v1.train.AdamOptimizer(lr)
        grads = [(tf.cast(g, tf.float32), v) for g, v in opt.compute_gradients(loss)]
        train_op, sync = fp16_training.apply_gradients(opt, grads, step)
        init = tf.compat.v1.global_variables_initializer()
    return graph, train_op, sync, init, w16, w32, loss


def test_float16_variable_follows_its_float32_twin():
    graph, train_op, _, init, w16, w32, loss = _graph()
    with tf.compat.v1.Session(graph=graph) as sess:
        sess.run(init)
        for _ in range(200):
            sess.run(train_op)
        v16, v32, final = sess.run([w16, w32, loss])
        master = sess.run(_variable(graph, "w16/fp32_master"))
    assert v16.dtype == np.float16
    assert np.all(np.isfinite(v16)) and np.isfinite(final)
    # Same optimiser on the same gradients: the master tracks the float32 variable,
    # and the stored float16 value is the master rounded to nearest.
    np.testing.assert_allclose(master, v32, atol=1e-5)
    np.testing.assert_array_equal(v16, master.astype(np.float16))
    assert np.abs(v16.astype(np.float32) - 0.5).min() > 0.4


def test_masters_are_training_state_not_model_variables():
    graph, _, sync, init, w16, _, _ = _graph()
    names = [v.op.name for v in graph.get_collection(tf.compat.v1.GraphKeys.GLOBAL_VARIABLES)]
    assert "w16/fp32_master" in names
    model = checkpoint_utils.model_variable_names(names)
    assert sorted(model) == ["w16", "w32"]
    with tf.compat.v1.Session(graph=graph) as sess:
        sess.run(init)
        sess.run(w16.assign(np.float16([0.25, 0.125, -1.0])))
        sess.run(sync)
        master = sess.run(_variable(graph, "w16/fp32_master"))
    np.testing.assert_array_equal(master, np.float32([0.25, 0.125, -1.0]))
