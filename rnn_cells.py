"""LSTM and GRU stacks on get_variable, with the variable names of TF1's legacy cells.

TensorFlow's legacy RNN cells need Keras 2 (gone with Keras 3), but the 2018
LstmModel/GruModel checkpoints name their variables after them:
``rnn/multi_rnn_cell/cell_{l}/basic_lstm_cell/{kernel,bias}`` and
``rnn/multi_rnn_cell/cell_{l}/gru_cell/{gates,candidate}/{kernel,bias}``.

:func:`dynamic_rnn` computes what ``tf.nn.dynamic_rnn`` computed over a
``MultiRNNCell`` with ``sequence_length``: past a video's length the state is
frozen and the output is zero.  It runs the layers one after the other over
the whole sequence (the same numbers as stepping every layer per frame), so
each layer's input projection for all frames is one matmul outside the loop
and the loop itself only does the recurrent matmul.
"""
from typing import List, Sequence, Tuple

import tensorflow as tf

import core_fp16

_V1 = tf.compat.v1
State = Tuple[tf.Tensor, ...]


class BasicLSTMCell:
    """TF1 ``BasicLSTMCell``: gates i, j, f, o; c' = c s(f + forget_bias) + s(i) tanh(j).

    Its state, flattened as in ``state_is_tuple=False``, is [c, h].
    """

    scope_name = "basic_lstm_cell"

    def __init__(self, num_units: int, forget_bias: float = 1.0):
        self.num_units = num_units
        self.forget_bias = forget_bias

    def build(self, input_size: int) -> None:
        """Creates ``kernel`` [in + H, 4H] (glorot) and ``bias`` [4H] (zeros) here."""
        units = 4 * self.num_units
        kernel = _V1.get_variable("kernel", [input_size + self.num_units, units],
                                  initializer=_V1.glorot_uniform_initializer())
        self._bias = _V1.get_variable("bias", [units], initializer=_V1.zeros_initializer())
        self._input_kernel, self._state_kernel = kernel[:input_size], kernel[input_size:]

    def project(self, inputs: tf.Tensor) -> tf.Tensor:
        """The input's share of the gate pre-activations, for all frames at once."""
        return core_fp16.matmul_last_axis(inputs, self._input_kernel) + self._bias

    def zero_state(self, batch_size: tf.Tensor) -> State:
        zeros = tf.zeros(tf.stack([batch_size, self.num_units]))
        return zeros, zeros

    def step(self, projected: tf.Tensor, state: State) -> Tuple[tf.Tensor, State]:
        """(output, new state) for one frame."""
        c, h = state
        i, j, f, o = tf.split(projected + tf.matmul(h, self._state_kernel), 4, axis=1)
        new_c = c * tf.sigmoid(f + self.forget_bias) + tf.sigmoid(i) * tf.tanh(j)
        new_h = tf.tanh(new_c) * tf.sigmoid(o)
        return new_h, (new_c, new_h)


class GRUCell:
    """TF1 ``GRUCell``: r, u = s([x, h] W_g + b_g); c = tanh([x, r h] W_c + b_c);
    h' = u h + (1 - u) c.  The gate bias starts at 1.0."""

    scope_name = "gru_cell"

    def __init__(self, num_units: int):
        self.num_units = num_units

    def build(self, input_size: int) -> None:
        """Creates ``gates/{kernel,bias}`` [in + H, 2H] and ``candidate/{kernel,bias}`` here."""
        rows = input_size + self.num_units
        with _V1.variable_scope("gates"):
            gate_kernel = _V1.get_variable("kernel", [rows, 2 * self.num_units],
                                           initializer=_V1.glorot_uniform_initializer())
            gate_bias = _V1.get_variable("bias", [2 * self.num_units],
                                         initializer=_V1.constant_initializer(1.0))
        with _V1.variable_scope("candidate"):
            candidate_kernel = _V1.get_variable("kernel", [rows, self.num_units],
                                                initializer=_V1.glorot_uniform_initializer())
            candidate_bias = _V1.get_variable("bias", [self.num_units],
                                              initializer=_V1.zeros_initializer())
        # Both input shares come from one matmul: [x W_g,x | x W_c,x] + [b_g | b_c].
        self._input_kernel = tf.concat([gate_kernel[:input_size], candidate_kernel[:input_size]],
                                       axis=1)
        self._bias = tf.concat([gate_bias, candidate_bias], axis=0)
        self._gate_state_kernel = gate_kernel[input_size:]
        self._candidate_state_kernel = candidate_kernel[input_size:]

    def project(self, inputs: tf.Tensor) -> tf.Tensor:
        return core_fp16.matmul_last_axis(inputs, self._input_kernel) + self._bias

    def zero_state(self, batch_size: tf.Tensor) -> State:
        return (tf.zeros(tf.stack([batch_size, self.num_units])),)

    def step(self, projected: tf.Tensor, state: State) -> Tuple[tf.Tensor, State]:
        (h,) = state
        gate_input, candidate_input = tf.split(
            projected, [2 * self.num_units, self.num_units], axis=1)
        r, u = tf.split(tf.sigmoid(gate_input + tf.matmul(h, self._gate_state_kernel)), 2, axis=1)
        candidate = tf.tanh(candidate_input + tf.matmul(r * h, self._candidate_state_kernel))
        new_h = u * h + (1 - u) * candidate
        return new_h, (new_h,)


def _run_layer(cell, projected: tf.Tensor, lengths: tf.Tensor,
               steps: tf.Tensor) -> Tuple[tf.Tensor, State]:
    """Steps ``cell`` over time-major ``projected`` [T, B, G] for ``steps`` frames.

    Returns the outputs [steps, B, H] (zero past each length) and the final state.
    """
    inputs = tf.TensorArray(projected.dtype, size=tf.shape(projected)[0]).unstack(projected)
    outputs = tf.TensorArray(projected.dtype, size=steps,
                             element_shape=tf.TensorShape([None, cell.num_units]))

    def body(t, state, outputs):
        output, new_state = cell.step(inputs.read(t), state)
        alive = tf.expand_dims(t < lengths, 1)
        state = tuple(tf.where(alive, new, old) for new, old in zip(new_state, state,
                                                                    strict=True))
        return t + 1, state, outputs.write(t, tf.where(alive, output, tf.zeros_like(output)))

    _, state, outputs = tf.while_loop(
        lambda t, *_: t < steps, body,
        (tf.constant(0), cell.zero_state(tf.shape(projected)[1]), outputs))
    return outputs.stack(), state


def dynamic_rnn(cells: Sequence, inputs: tf.Tensor,
                sequence_length: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """Runs the stacked ``cells`` over batch-major ``inputs`` [B, T, F].

    Variables go to ``rnn/multi_rnn_cell/cell_{l}/<cell scope>/`` in the current
    scope.  Returns the last layer's outputs [B, T, H] and the final states of
    all layers concatenated in layer order, [B, sum of state sizes] (for LSTM
    layers [c_0, h_0, c_1, h_1, ...], as ``state_is_tuple=False``).
    """
    frames = tf.shape(inputs)[1]
    lengths = tf.cast(sequence_length, tf.int32)
    steps = tf.maximum(tf.minimum(tf.reduce_max(lengths), frames), 0)
    layer_input = tf.transpose(inputs, [1, 0, 2])  # time-major
    states: List[tf.Tensor] = []
    with _V1.variable_scope("rnn"), _V1.variable_scope("multi_rnn_cell"):
        for layer, cell in enumerate(cells):
            with _V1.variable_scope(f"cell_{layer}"), _V1.variable_scope(cell.scope_name):
                cell.build(int(layer_input.shape[-1]))
            layer_input, state = _run_layer(cell, cell.project(layer_input), lengths, steps)
            states.extend(state)
    outputs = tf.pad(layer_input, [[0, frames - steps], [0, 0], [0, 0]])
    return tf.transpose(outputs, [1, 0, 2]), tf.concat(states, axis=1)
