"""SavedModels for serving (train.py --export_saved_model).

Two signatures over one graph, both taking serialized tf.train.Example /
SequenceExample records, so a serving system needs neither this toolkit's
reader nor its flags:

- ``toolkit``: input ``serialized_examples`` [N]; outputs ``video_ids`` [N],
  ``classes`` [N, k], ``scores`` [N, k];
- ``predict_2018``: the 2018 starter's, input ``example_bytes`` [N]; outputs
  ``video_id`` [N, 1], ``class_indexes`` [N, 1, k], ``predictions`` [N, 1, k].

``serving_default`` is the one --saved_model_signature names (toolkit unless
told).  Batch-norm moving statistics are variables of the graph and are
exported with the rest.
"""
import posixpath
import uuid

import tensorflow as tf

import checkpoint_utils
import input_pipeline
import model_config
import model_graph

SIGNATURE_KEY = tf.compat.v1.saved_model.signature_constants.DEFAULT_SERVING_SIGNATURE_DEF_KEY
SIGNATURES = {"toolkit": "toolkit", "2018": "predict_2018"}  # --saved_model_signature -> key


def export_saved_model(checkpoint: str, config: model_config.ModelConfig, export_dir: str,
                       top_k: int = 20, default_signature: str = "toolkit") -> str:
    """Writes the inference graph restored from ``checkpoint`` as a SavedModel.

    The model is built under a temporary name beside ``export_dir`` and renamed
    when complete.
    """
    graph = tf.Graph()
    with graph.as_default():
        checkpoint_utils.create_global_step()
        serialized = tf.compat.v1.placeholder(tf.string, [None], name="serialized_examples")
        batch = input_pipeline.reader_for(config.data).prepare_serialized_examples(serialized)
        outputs = model_graph.build_predictions(batch["video_matrix"], batch["num_frames"],
                                                config, is_training=False)
        scores, classes = tf.nn.top_k(outputs.predictions, k=min(top_k, config.num_classes))
        saver = tf.compat.v1.train.Saver(model_graph.model_variables())
        predict = tf.compat.v1.saved_model.signature_def_utils.predict_signature_def
        signatures = {
            "toolkit": predict(
                inputs={"serialized_examples": serialized},
                outputs={"video_ids": batch["video_ids"], "classes": classes, "scores": scores}),
            "predict_2018": predict(
                inputs={"example_bytes": serialized},
                outputs={"video_id": tf.expand_dims(batch["video_ids"], 1),
                         "class_indexes": tf.expand_dims(classes, 1),
                         "predictions": tf.expand_dims(scores, 1)}),
        }
        signatures[SIGNATURE_KEY] = signatures[SIGNATURES[default_signature]]
        temporary = posixpath.join(posixpath.dirname(export_dir.rstrip("/")),
                                   f".tmp-{uuid.uuid4().hex}")
        with tf.compat.v1.Session(graph=graph) as sess:
            saver.restore(sess, checkpoint)
            builder = tf.compat.v1.saved_model.Builder(temporary)
            builder.add_meta_graph_and_variables(
                sess, [tf.compat.v1.saved_model.tag_constants.SERVING],
                signature_def_map=signatures, strip_default_attrs=True)
            builder.save()
    if tf.io.gfile.exists(export_dir):
        tf.io.gfile.rmtree(export_dir)
    tf.io.gfile.rename(temporary, export_dir)
    return export_dir
