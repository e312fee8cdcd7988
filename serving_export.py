"""SavedModels for serving (train.py --export_saved_model).

The signature takes serialized tf.train.Example / SequenceExample records and
returns video ids with each video's top-k classes and scores, so a serving
system needs neither this toolkit's reader nor its flags.  Batch-norm moving
statistics are variables of the graph and are exported with the rest.
"""
import posixpath
import uuid

import tensorflow as tf

import checkpoint_utils
import input_pipeline
import model_config
import model_graph

SIGNATURE_KEY = tf.compat.v1.saved_model.signature_constants.DEFAULT_SERVING_SIGNATURE_DEF_KEY


def export_saved_model(checkpoint: str, config: model_config.ModelConfig, export_dir: str,
                       top_k: int = 20) -> str:
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
        signature = tf.compat.v1.saved_model.signature_def_utils.predict_signature_def(
            inputs={"serialized_examples": serialized},
            outputs={"video_ids": batch["video_ids"], "classes": classes, "scores": scores})
        temporary = posixpath.join(posixpath.dirname(export_dir.rstrip("/")),
                                   f".tmp-{uuid.uuid4().hex}")
        with tf.compat.v1.Session(graph=graph) as sess:
            saver.restore(sess, checkpoint)
            builder = tf.compat.v1.saved_model.Builder(temporary)
            builder.add_meta_graph_and_variables(
                sess, [tf.compat.v1.saved_model.tag_constants.SERVING],
                signature_def_map={SIGNATURE_KEY: signature}, strip_default_attrs=True)
            builder.save()
    if tf.io.gfile.exists(export_dir):
        tf.io.gfile.rmtree(export_dir)
    tf.io.gfile.rename(temporary, export_dir)
    return export_dir
