"""A bidirectional LSTM layer: two plain scans (reference), or both directions fused into
one scan with a hand-written backward pass (tuned for XLA:CPU).

Both take the same arguments (torch's gate order i, f, g, o; the two directions'
weights stacked on axis 0) and return ``[steps, sequences, 2H]``. With ``lengths`` the
backward direction of each sequence starts at its last real step (:func:`reverse_time`),
which keeps a padded batch's rows equal to their exact-length runs.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp

from galr_jax.kernels.scheduling import scan_in_place, scan_into_own_buffers, tied_to

NUM_GATES = 4  # input, forget, cell candidate, output: torch's order
NUM_DIRECTIONS = 2


def reverse_time(x: jnp.ndarray, lengths: Optional[jnp.ndarray]) -> jnp.ndarray:
    """Reverses each sequence of ``x`` ``[steps, sequences, ...]`` within its length.

    Step t < length of a sequence goes to ``length - 1 - t``; the steps past the length
    stay where they are, so the backward direction starts at each sequence's last real
    step and reaches the padding only after its real steps (their outputs are padding
    too). An involution, like ``x[::-1]``, which it is when ``lengths`` is None.
    """
    if lengths is None:
        return x[::-1]
    steps = jnp.arange(x.shape[0], dtype=lengths.dtype)[:, None]  # [steps, 1]
    order = jnp.where(steps < lengths[None, :], lengths[None, :] - 1 - steps, steps)
    order = order.reshape(order.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, order, axis=0)


def _activations(z: jnp.ndarray):
    """Gate activations of pre-activations ``[..., 4H]``: sigmoid(i), sigmoid(f), tanh(g), sigmoid(o)."""
    i, f, g, o = jnp.split(z, NUM_GATES, axis=-1)
    return jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o)


def _lstm_scan(x, kernel_ih, kernel_hh, bias, h0, c0, unroll):
    """One direction: the LSTM cell over ``x`` ``[steps, sequences, features]`` from
    ``(h0, c0)`` ``[sequences, H]``; returns every step's ``h`` ``[steps, sequences, H]``
    (float32)."""
    compute_dtype = kernel_hh.dtype

    def cell(carry, x_t):
        h, c = carry
        z = (jnp.dot(x_t, kernel_ih, preferred_element_type=jnp.float32)
             + jnp.dot(h.astype(compute_dtype), kernel_hh, preferred_element_type=jnp.float32)
             + bias)
        i, f, g, o = _activations(z)
        c = f * c + i * g
        h = o * jnp.tanh(c)
        return (h, c), h

    return jax.lax.scan(cell, (h0, c0), x, unroll=unroll)[1]


def reference_bilstm(x, kernel_ih, kernel_hh, bias, h0, c0, lengths, unroll):
    """Bidirectional LSTM as two ``lax.scan`` loops of the cell, differentiated by JAX.

    Args:
      x: ``[sequences, steps, features]`` inputs, in the compute dtype.
      kernel_ih: ``[2, features, 4H]``; kernel_hh: ``[2, H, 4H]``; bias: ``[2, 4H]`` float32.
      h0, c0: ``[2, sequences, H]`` float32 initial states.
      lengths: int32 ``[sequences]``, the real steps of each sequence (the backward
        direction starts at the last of them, :func:`reverse_time`), or None: all steps.
      unroll: ``lax.scan`` unroll factor.

    Returns:
      ``[steps, sequences, 2H]`` in the compute dtype: the forward direction's states,
      then the backward direction's, both in natural time order.
    """
    time_major = jnp.swapaxes(x, 0, 1)
    forward = _lstm_scan(time_major, kernel_ih[0], kernel_hh[0], bias[0], h0[0], c0[0], unroll)
    backward = _lstm_scan(reverse_time(time_major, lengths), kernel_ih[1], kernel_hh[1], bias[1],
                          h0[1], c0[1], unroll)
    out = jnp.concatenate([forward, reverse_time(backward, lengths)], axis=-1)
    return out.astype(kernel_hh.dtype)


# ---------------------------------------------------------------------------------------
# Tuned for XLA:CPU: both directions in one loop, the backward pass written out.


def _scan_forward(x_forward, x_backward, kernel_ih, kernel_hh, bias, h0, c0, unroll,
                  save_residuals):
    """The recurrence of both directions; optionally keeps what the backward pass needs.

    Each step is a single batched product ``[x_t, h] @ [W_ih; W_hh]`` over the two
    directions. The input projection stays inside the loop: on CPU this beats one
    large product before the loop, whose ``[steps, 2, sequences, 4H]`` result costs
    more memory traffic than it saves.
    """
    compute_dtype = kernel_hh.dtype
    kernel = jnp.concatenate([kernel_ih, kernel_hh], axis=1)  # [2, F + H, 4H]
    inputs = jnp.stack([x_forward, x_backward], axis=1)  # [steps, 2, sequences, F]

    def step(carry, x_t):
        h, c = carry
        xh = jnp.concatenate([x_t, h.astype(compute_dtype)], axis=-1)
        z = jnp.einsum("dnk,dkg->dng", xh, kernel,
                       preferred_element_type=jnp.float32) + bias[:, None, :]
        i, f, g, o = _activations(z)
        c_new = f * c + i * g
        h_new = o * jnp.tanh(c_new)
        outputs = (h_new[0], h_new[1])
        if not save_residuals:
            return (h_new, c_new), outputs
        gates = jnp.concatenate([i, f, g, o], axis=-1)  # [2, sequences, 4H]
        return (h_new, c_new), (*outputs, gates[0], gates[1], c)

    return scan_into_own_buffers(step, (h0, c0), inputs, x_forward, unroll=unroll)[1]


@functools.partial(jax.custom_vjp, nondiff_argnums=(7,))
def fused_bilstm(x, kernel_ih, kernel_hh, bias, h0, c0, lengths, unroll):
    """:func:`reference_bilstm` with both directions in one loop and an explicit backward
    pass: each step is a single batched product over the stacked ``[2, ...]`` kernels
    instead of two sequential scans. Arguments and result as :func:`reference_bilstm`.

    The backward pass runs one recurrent product per step and leaves the weight and
    input gradients to large products after the loop, where automatic differentiation
    of the scan would accumulate them step by step. Each direction's gate gradients are
    separate ``[steps, sequences, 4H]`` arrays, so those products read them as plain
    matrices, without transposes.
    """
    return _bilstm(x, kernel_ih, kernel_hh, bias, h0, c0, lengths, unroll, False)[0]


def _bilstm(x, kernel_ih, kernel_hh, bias, h0, c0, lengths, unroll, save_residuals):
    """The layer's output and, optionally, each direction's gates and the cell states of
    every step."""
    time_major = jnp.swapaxes(x, 0, 1)  # [steps, sequences, features]
    h_forward, h_backward, *gates_and_cells = _scan_forward(
        time_major, reverse_time(time_major, lengths), kernel_ih, kernel_hh, bias, h0, c0,
        unroll, save_residuals)
    out = jnp.concatenate([h_forward, reverse_time(h_backward, lengths)], axis=-1)
    return out.astype(kernel_hh.dtype), gates_and_cells


def _bilstm_forward(x, kernel_ih, kernel_hh, bias, h0, c0, lengths, unroll):
    """Forward rule of :func:`fused_bilstm`.

    Keeps each direction's activated gates as one ``[steps, sequences, 4H]`` array, the
    shape of its gate gradients, which the backward loop writes over them; the previous
    cell states; and the layer's input and output as they are: the output is also what
    the projection after the layer keeps for its weight gradient, so one buffer serves
    both, and the backward pass rebuilds each direction's previous states and
    time-major inputs from them (see :func:`_bilstm_backward`).
    """
    out, gates_and_cells = _bilstm(x, kernel_ih, kernel_hh, bias, h0, c0, lengths, unroll, True)
    return out, (x, out, kernel_ih, kernel_hh, h0, lengths, gates_and_cells)


def _bilstm_backward(unroll, residuals, d_out):
    """Backward rule of :func:`fused_bilstm`.

    With c = f c_prev + i g and h = o tanh(c), the step's pre-activation gradients are
    dz = [dc g i(1-i), dc c_prev f(1-f), dc i (1-g^2), dh tanh(c) o(1-o)], where
    dc = dc_next + dh o (1 - tanh(c)^2); the states' gradients flow back as
    dh_prev = dz W_hh^T and dc_prev = dc f.

    The previous states and the time-major inputs that the weight gradients need are
    rebuilt from the layer's output and input after the loop, tied to its result: left
    free, XLA computes them in the forward pass, and each block's copies stay live until
    its backward (galr_1.5m at 4 s: 42 MB a layer).
    """
    x, out, kernel_ih, kernel_hh, h0, lengths, (gates_forward, gates_backward, c_prevs) = residuals
    compute_dtype = kernel_hh.dtype
    hidden = kernel_hh.shape[1]
    d_time_major = d_out.astype(jnp.float32)  # [steps, sequences, 2H]
    d_outputs = (d_time_major[..., :hidden], reverse_time(d_time_major[..., hidden:], lengths))

    def step(carry, per_step, gates):
        dh_next, dc_next = carry
        dh_forward, dh_backward, c_prev = per_step
        i, f, g, o = jnp.split(jnp.stack(gates), NUM_GATES, axis=-1)
        tanh_c = jnp.tanh(f * c_prev + i * g)
        dh = jnp.stack([dh_forward, dh_backward]) + dh_next
        dc = dc_next + dh * o * (1 - tanh_c * tanh_c)
        dz = jnp.concatenate([dc * g * i * (1 - i), dc * c_prev * f * (1 - f),
                              dc * i * (1 - g * g), dh * tanh_c * o * (1 - o)], axis=-1)
        dh_prev = jnp.einsum("dng,dhg->dnh", dz.astype(compute_dtype), kernel_hh,
                             preferred_element_type=jnp.float32)
        return (dh_prev, dc * f), (dz[0], dz[1])

    zeros = jnp.zeros_like(h0)
    # Each step's gate gradients overwrite its gates, which nothing reads afterwards: no
    # buffer to allocate (and fill) for them while every block's residuals are live.
    (dh0, dc0), dz = scan_in_place(step, (zeros, zeros), (*d_outputs, c_prevs),
                                   (gates_forward, gates_backward), reverse=True, unroll=unroll)
    states = tied_to(out, dz[0])  # [steps, sequences, 2H]
    inputs = jnp.swapaxes(tied_to(x, dz[1]), 0, 1)  # [steps, sequences, features]
    # Each direction in its own time order; its state before step 0 is h0.
    own_order = ((states[:-1, :, :hidden], inputs),
                 (reverse_time(states[..., hidden:], lengths)[:-1], reverse_time(inputs, lengths)))
    d_kernel_ih, d_kernel_hh, d_bias, d_inputs = [], [], [], []
    for direction, (earlier_states, direction_inputs) in enumerate(own_order):
        # [steps, sequences, k] -> [steps * sequences, k]: contiguous, a plain reshape.
        dz_rows = dz[direction].reshape(-1, dz[direction].shape[-1])
        h_prev = jnp.concatenate([h0[direction][None].astype(compute_dtype),
                                  earlier_states], axis=0)
        h_rows = h_prev.reshape(-1, hidden)
        x_rows = direction_inputs.reshape(-1, direction_inputs.shape[-1])
        dz_compute = dz_rows.astype(compute_dtype)
        d_kernel_hh.append(jnp.einsum("kh,kg->hg", h_rows, dz_compute,
                                      preferred_element_type=jnp.float32))
        d_kernel_ih.append(jnp.einsum("kf,kg->fg", x_rows, dz_compute,
                                      preferred_element_type=jnp.float32))
        d_inputs.append(jnp.einsum("kg,fg->kf", dz_compute, kernel_ih[direction],
                                   preferred_element_type=jnp.float32)
                        .reshape(direction_inputs.shape))
        d_bias.append(jnp.sum(dz_rows, axis=0))
    d_x = jnp.swapaxes(d_inputs[0] + reverse_time(d_inputs[1], lengths), 0, 1).astype(x.dtype)
    return (d_x, jnp.stack(d_kernel_ih).astype(kernel_ih.dtype),
            jnp.stack(d_kernel_hh).astype(kernel_hh.dtype), jnp.stack(d_bias), dh0, dc0, None)


fused_bilstm.defvjp(_bilstm_forward, _bilstm_backward)


BILSTM = {"reference": reference_bilstm, "tuned": fused_bilstm}
