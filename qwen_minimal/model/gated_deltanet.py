"""Gated DeltaNet: the linear-attention layer of the Qwen3-Next and Qwen3.5 hybrids.

Softmax attention keeps every past key and value; a linear-attention layer keeps a
fixed-size matrix instead, per head a state S of shape [Dk, Dv] that maps keys to
values, and reads it with the query: o_t = S_t^T q_t. What makes the layer "gated" and
"delta" is how S is written (a_t = exp(g_t) in (0, 1] is the decay):

    S_t = a_t S_{t-1} + beta_t k_t (v_t - a_t S_{t-1}^T k_t)^T

`recurrent_gated_delta_rule` applies this one token at a time (the decoding step);
`chunked_gated_delta_rule` gives the same numbers with a few matrix products per chunk
of tokens (training and prefill). `GatedDeltaNet` is the whole layer around the rule:
projections, a short causal convolution, the decay and learning-rate gates, a gated
RMSNorm and the output projection. Its parameter names and shapes are those of
transformers' Qwen3.5 layer; Qwen3-Next fuses the same projections in another row
order, which `GatedDeltaNet.projections_from_qwen3_next` undoes.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from .rmsnorm import RMSNorm


def _compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """float32, or float64 if an input is float64: the state sums many small updates,
    which bf16 would lose, and float64 stays available for exact checks."""
    result = torch.float32
    for dtype in dtypes:
        result = torch.promote_types(result, dtype)
    return result


def _check_rule_inputs(q, k, v, g, beta, initial_state) -> None:
    """InputError unless the shapes fit together (see recurrent_gated_delta_rule)."""
    if q.dim() != 4 or q.shape != k.shape:
        raise InputError(
            f"q and k must both be [batch, time, heads, key_dim], got {tuple(q.shape)} "
            f"and {tuple(k.shape)}"
        )
    B, T, H, Dk = q.shape
    if v.dim() != 4 or v.shape[:3] != (B, T, H):
        raise InputError(
            f"v must be [batch, time, heads, value_dim] = [{B}, {T}, {H}, Dv] like q, "
            f"got {tuple(v.shape)} (repeat q and k heads to the value heads first)"
        )
    for name, gate in (("g", g), ("beta", beta)):
        if gate.shape != (B, T, H):
            raise InputError(
                f"{name} must be [batch, time, heads] = {[B, T, H]}, got "
                f"{tuple(gate.shape)}"
            )
    if T < 1:
        raise InputError("the sequence is empty: give at least one token")
    if initial_state is not None and initial_state.shape != (B, H, Dk, v.shape[-1]):
        raise InputError(
            "initial_state must be [batch, heads, key_dim, value_dim] = "
            f"{[B, H, Dk, v.shape[-1]]}, got {tuple(initial_state.shape)}"
        )


def recurrent_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The gated delta rule, one token at a time.

    q, k: [B, T, H, Dk], already L2-normalised over Dk (the layer does it, with
    `l2_normalize`: the rule is plain linear algebra, and a unit key is what makes
    beta = 1 an exact overwrite, below); v: [B, T, H, Dv]; g (log-decay, <= 0) and beta
    (learning rate, in (0, 1)): [B, T, H]; initial_state: [B, H, Dk, Dv], None for
    zeros. Returns out [B, T, H, Dv] in v's dtype and the final state [B, H, Dk, Dv] in
    float32 (float64 for float64 inputs), the dtype all the sums are done in.

    The state as an online regression. S maps a key to a value: S^T k should predict v.
    Each token first forgets, S' = exp(g_t) S_{t-1}, then takes one gradient step of
    size beta_t on the squared error of its own pair:

        L(S) = 1/2 |S^T k_t - v_t|^2,           dL/dS = k_t (S^T k_t - v_t)^T
        S_t  = S' - beta_t dL/dS(S') = S' + k_t u_t^T,  u_t = beta_t (v_t - S'^T k_t)

    u_t is the correction: only the part of v_t that the state does not already predict
    is written ("delta"). With |k_t| = 1 and beta_t = 1 the step solves the regression
    exactly: S_t^T k_t = v_t. The output reads the updated state,
    o_t = S_t^T q_t / sqrt(Dk); the 1/sqrt(Dk) on q is applied here, as in transformers
    and flash-linear-attention.
    """
    _check_rule_inputs(q, k, v, g, beta, initial_state)
    B, T, H, Dk = q.shape
    out_dtype, dtype = v.dtype, _compute_dtype(q.dtype, k.dtype, v.dtype)
    q = q.to(dtype) / math.sqrt(Dk)
    k, v, g, beta = (x.to(dtype) for x in (k, v, g, beta))
    if initial_state is None:
        state = q.new_zeros(B, H, Dk, v.shape[-1])
    else:
        state = initial_state.to(dtype)
    outputs = []
    for t in range(T):
        state = state * g[:, t].exp()[..., None, None]
        prediction = torch.einsum("bhk,bhkv->bhv", k[:, t], state)
        u = beta[:, t, :, None] * (v[:, t] - prediction)
        state = state + k[:, t, :, :, None] * u[:, :, None, :]
        outputs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], state))
    return torch.stack(outputs, dim=1).to(out_dtype), state


def chunked_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    chunk_size: int = 64,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same rule as recurrent_gated_delta_rule (same arguments and results),
    computed chunk by chunk: T / chunk_size sequential steps of matrix products instead
    of T steps of vector ones.

    Take one chunk of C tokens r = 1..C that starts from the state S_0. Cumulative
    decay: G_r = g_1 + ... + g_r and gamma_r = exp(G_r), so the decay from token j to
    token r is D_rj = gamma_r / gamma_j = exp(G_r - G_j) <= 1 for j <= r (built from
    the difference, never from 1 / gamma_j, which overflows). Unrolling the recurrence:

        S_r = gamma_r S_0 + sum_{j<=r} D_rj k_j u_j^T                             (1)

    1. Corrections. Put (1) for S_{r-1}, decayed, into u_r = beta_r (v_r - S'^T k_r):

        u_r + sum_{j<r} beta_r D_rj (k_r . k_j) u_j
            = beta_r v_r - beta_r gamma_r S_0^T k_r

       For all r at once: (I + A) U = diag(beta) V - diag(beta gamma) K S_0, with A
       strictly lower triangular, A_rj = beta_r D_rj (k_r . k_j). So U = U~ - W S_0 with
       the pseudo-values U~ = (I + A)^-1 diag(beta) V and W = (I + A)^-1
       diag(beta gamma) K: neither depends on S_0, so every chunk gets them at once (the
       WY / UT form); only U = U~ - W S_0 waits for the chunk before.
    2. Solving. I + A is unit lower triangular, so torch.linalg.solve_triangular solves
       it by forward substitution, x_r = b_r - sum_{j<r} A_rj x_j: the corrections one
       token after another, as the recurrence computes them, without the error of an
       explicit inverse or any pivoting; one batched LAPACK / cuBLAS call, and autograd
       knows its derivative.
    3. Output. o_r = S_r^T q_r, from (1), where causal is j <= r (diagonal included):

        O = (Q * gamma) S_0 + (Q K^T * D * causal) U

       the first term reads the state the chunk inherited, the second is attention
       inside the chunk.
    4. The state passed on is (1) at r = C: S_C = gamma_C S_0 + (K * D_Cj)^T U.

    Any T: the sequence is padded to a multiple of C with k = v = 0, beta = 0, g = 0. A
    padded token has u = 0 and decay 1, so it changes no state, and it comes after every
    real token, so no real output sees it: the results are the unpadded sequence's.
    """
    _check_rule_inputs(q, k, v, g, beta, initial_state)
    if chunk_size < 1:
        raise InputError(f"chunk_size must be at least 1, got {chunk_size}")
    B, T, H, Dk = q.shape
    Dv, C = v.shape[-1], chunk_size
    out_dtype, dtype = v.dtype, _compute_dtype(q.dtype, k.dtype, v.dtype)
    pad = -T % C
    n_chunks = (T + pad) // C

    def chunks(x: torch.Tensor) -> torch.Tensor:
        """[B, T, H, ...] -> [B, H, n_chunks, C, ...], compute dtype, zero-padded."""
        x = x.to(dtype).movedim(2, 1)
        x = F.pad(x, (0, 0, 0, pad)) if x.dim() == 4 else F.pad(x, (0, pad))
        return x.reshape(B, H, n_chunks, C, *x.shape[3:])

    q, k, v, g, beta = (chunks(x) for x in (q, k, v, g, beta))
    q = q / math.sqrt(Dk)
    G = g.cumsum(-1)  # [B, H, N, C]
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    # -inf above the diagonal before exp: there G_r - G_j > 0 could overflow, and
    # inf * 0 = nan.
    D = (G[..., :, None] - G[..., None, :]).masked_fill(~causal, -math.inf).exp()
    k_beta = k * beta[..., None]
    A = ((k_beta @ k.transpose(-1, -2)) * D).tril(-1)
    # unitriangular=True: the solver takes the diagonal as ones and reads only A's
    # strict lower triangle, so A stands for I + A. Both right-hand sides in one call.
    rhs = torch.cat([v * beta[..., None], k_beta * G.exp()[..., None]], dim=-1)
    U_tilde, W = torch.linalg.solve_triangular(
        A, rhs, upper=False, unitriangular=True
    ).split([Dv, Dk], dim=-1)
    intra = (q @ k.transpose(-1, -2)) * D
    q_from_start = q * G.exp()[..., None]
    k_to_end = k * (G[..., -1:] - G).exp()[..., None]
    chunk_decay = G[..., -1].exp()[..., None, None]  # [B, H, N, 1, 1]

    if initial_state is None:
        state = q.new_zeros(B, H, Dk, Dv)
    else:
        state = initial_state.to(dtype)
    outputs = []
    for n in range(n_chunks):
        U = U_tilde[:, :, n] - W[:, :, n] @ state
        outputs.append(q_from_start[:, :, n] @ state + intra[:, :, n] @ U)
        state = chunk_decay[:, :, n] * state + k_to_end[:, :, n].transpose(-1, -2) @ U
    out = torch.cat(outputs, dim=2)[:, :, :T]  # [B, H, T, Dv]
    return out.movedim(1, 2).to(out_dtype), state


def l2_normalize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x / sqrt(|x|^2 + eps) over the last dimension, in float32. The eps inside the
    square root (not F.normalize's max(|x|, eps)) is flash-linear-attention's, which the
    checkpoints were trained with."""
    x = x.to(_compute_dtype(x.dtype))
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + eps)


class GatedRMSNorm(RMSNorm):
    """RMSNorm(x) * weight * SiLU(gate), the output gate of the layer. Normalised in
    float32 and cast back before the gain, then the gate product in float32 and one
    final cast: transformers' order, so that bf16 results agree with it."""

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)
        return (self.weight * normed * F.silu(gate.float())).to(x.dtype)


@dataclass
class LinearAttentionState:
    """What a Gated DeltaNet layer carries from one call to the next, allocated once and
    written in place (as a KV cache is, gpt-fast style).

    conv_state: [B, conv_channels, kernel - 1], the last kernel - 1 inputs of the causal
    convolution (projected q, k, v before the convolution), in the activations' dtype.
    recurrent_state: [B, value_heads, key_dim, value_dim], the delta-rule state S, in
    float32.
    """

    conv_state: torch.Tensor
    recurrent_state: torch.Tensor

    def reset(self) -> None:
        """Zero both, to start a new batch of sequences."""
        self.conv_state.zero_()
        self.recurrent_state.zero_()


class GatedDeltaNet(nn.Module):
    """The Gated DeltaNet layer of Qwen3-Next and Qwen3.5: x [B, T, hidden] -> same.

    Per token: project x to q, k, v (fused: in_proj_qkv), the output gate z, and two
    per-head scalars b and a; run q, k, v through a depthwise causal convolution of
    `conv_kernel_size` taps and SiLU; L2-normalise q and k per head. beta = sigmoid(b)
    is the delta rule's learning rate and g = -exp(A_log) * softplus(a + dt_bias) its
    log-decay, a Mamba-style discretised time step: softplus(a + dt_bias) > 0 is the
    step and exp(A_log) > 0 the rate, so g < 0 and the decay exp(g) lies in (0, 1). Each
    key head serves num_value_heads / num_key_heads consecutive value heads. The rule's
    output is normalised per value head, gated by SiLU(z) and projected by out_proj.
    """

    def __init__(
        self,
        hidden_size: int,
        num_key_heads: int,
        num_value_heads: int,
        key_head_dim: int,
        value_head_dim: int,
        conv_kernel_size: int = 4,
        rms_norm_eps: float = 1e-6,
        chunk_size: int = 64,
    ):
        super().__init__()
        sizes = {
            "hidden_size": hidden_size,
            "num_key_heads": num_key_heads,
            "num_value_heads": num_value_heads,
            "key_head_dim": key_head_dim,
            "value_head_dim": value_head_dim,
            "conv_kernel_size": conv_kernel_size,
            "chunk_size": chunk_size,
        }
        for name, value in sizes.items():
            if value < 1:
                raise InputError(
                    f"GatedDeltaNet: {name} must be at least 1, got {value}"
                )
        if num_value_heads % num_key_heads:
            raise InputError(
                f"GatedDeltaNet: num_value_heads={num_value_heads} must be a multiple "
                f"of num_key_heads={num_key_heads} (each key head serves a whole group "
                "of value heads): change one of them"
            )
        self.hidden_size = hidden_size
        self.num_key_heads, self.num_value_heads = num_key_heads, num_value_heads
        self.key_head_dim, self.value_head_dim = key_head_dim, value_head_dim
        self.conv_kernel_size, self.chunk_size = conv_kernel_size, chunk_size
        self.key_dim = num_key_heads * key_head_dim
        self.value_dim = num_value_heads * value_head_dim
        self.conv_channels = 2 * self.key_dim + self.value_dim

        self.in_proj_qkv = nn.Linear(hidden_size, self.conv_channels, bias=False)
        self.in_proj_z = nn.Linear(hidden_size, self.value_dim, bias=False)
        self.in_proj_b = nn.Linear(hidden_size, num_value_heads, bias=False)
        self.in_proj_a = nn.Linear(hidden_size, num_value_heads, bias=False)
        # Depthwise: one filter of conv_kernel_size taps per channel. The padding is
        # ours (zeros on the left, or the cached inputs): the module holds the weight.
        self.conv1d = nn.Conv1d(
            self.conv_channels,
            self.conv_channels,
            conv_kernel_size,
            groups=self.conv_channels,
            bias=False,
        )
        self.A_log = nn.Parameter(torch.empty(num_value_heads))
        self.dt_bias = nn.Parameter(torch.empty(num_value_heads))
        self.reset_decay_parameters()
        self.norm = GatedRMSNorm(value_head_dim, rms_norm_eps)
        self.out_proj = nn.Linear(self.value_dim, hidden_size, bias=False)

    def reset_decay_parameters(self) -> None:
        """Decay rates A = exp(A_log) spread over (0.01, 16) so that heads forget at
        different speeds; A_log keeps A positive. dt_bias = 1: softplus(a + 1)."""
        with torch.no_grad():
            self.A_log.copy_(torch.empty_like(self.A_log).uniform_(0.01, 16).log())
            self.dt_bias.fill_(1.0)

    def empty_state(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> LinearAttentionState:
        """A zero state for `batch_size` sequences; device and dtype (the activations')
        default to the parameters'. The recurrent state is float32 (float64 for
        float64)."""
        weight = self.in_proj_qkv.weight
        device = weight.device if device is None else device
        dtype = weight.dtype if dtype is None else dtype
        conv_shape, recurrent_shape = self._state_shapes(batch_size)
        return LinearAttentionState(
            conv_state=torch.zeros(conv_shape, device=device, dtype=dtype),
            recurrent_state=torch.zeros(
                recurrent_shape, device=device, dtype=_compute_dtype(dtype)
            ),
        )

    def _state_shapes(self, batch_size: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The shapes of conv_state and recurrent_state."""
        return (
            (batch_size, self.conv_channels, self.conv_kernel_size - 1),
            (batch_size, self.num_value_heads, self.key_head_dim, self.value_head_dim),
        )

    def projections_from_qwen3_next(
        self, in_proj_qkvz: torch.Tensor, in_proj_ba: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """This layer's in_proj_qkv, in_proj_z, in_proj_b and in_proj_a weights (under
        their state-dict names) from Qwen3-Next's fused ones.

        Qwen3-Next groups the rows per key head h: in_proj_qkvz is [q_h, k_h, v_h, z_h]
        for h = 1..num_key_heads, with q_h, k_h of key_head_dim rows and v_h, z_h of
        (num_value_heads / num_key_heads) * value_head_dim rows (the value heads of
        group h); in_proj_ba is [b_h, a_h], num_value_heads / num_key_heads rows each.
        Regrouping the rows by kind gives this layer's layout (Qwen3.5's), the same
        linear maps.
        """
        r = self.num_value_heads // self.num_key_heads
        Dk, Dv, hidden = self.key_head_dim, self.value_head_dim, self.hidden_size
        expected = {
            "in_proj_qkvz": (
                in_proj_qkvz,
                (2 * self.key_dim + 2 * self.value_dim, hidden),
            ),
            "in_proj_ba": (in_proj_ba, (2 * self.num_value_heads, hidden)),
        }
        for name, (weight, shape) in expected.items():
            if tuple(weight.shape) != shape:
                raise InputError(
                    f"Qwen3-Next {name} weight has shape {tuple(weight.shape)}, this "
                    f"layer needs {shape}: build the layer with the checkpoint's head "
                    "counts and dims"
                )
        per_head = in_proj_qkvz.reshape(self.num_key_heads, 2 * Dk + 2 * r * Dv, hidden)
        q, k, v, z = per_head.split([Dk, Dk, r * Dv, r * Dv], dim=1)
        b, a = in_proj_ba.reshape(self.num_key_heads, 2 * r, hidden).split(
            [r, r], dim=1
        )

        def rows(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(-1, hidden)

        return {
            "in_proj_qkv.weight": torch.cat([rows(q), rows(k), rows(v)]),
            "in_proj_z.weight": rows(z),
            "in_proj_b.weight": rows(b),
            "in_proj_a.weight": rows(a),
        }

    def projections_to_qwen3_next(
        self, weights: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """The inverse of projections_from_qwen3_next: Qwen3-Next's in_proj_qkvz and
        in_proj_ba weights (under their names) from this layer's in_proj_qkv,
        in_proj_z, in_proj_b and in_proj_a weights in `weights` (by state-dict name)."""
        hidden = self.hidden_size
        q, k, v = weights["in_proj_qkv.weight"].split(
            [self.key_dim, self.key_dim, self.value_dim]
        )
        z, b, a = (weights[f"in_proj_{x}.weight"] for x in "zba")

        def per_key_head(*parts: torch.Tensor) -> torch.Tensor:
            """Each part's rows split into num_key_heads groups, the groups of all
            parts interleaved: [part1_h, part2_h, ...] for h = 1..num_key_heads."""
            grouped = [x.reshape(self.num_key_heads, -1, hidden) for x in parts]
            return torch.cat(grouped, dim=1).reshape(-1, hidden)

        return {
            "in_proj_qkvz.weight": per_key_head(q, k, v, z),
            "in_proj_ba.weight": per_key_head(b, a),
        }

    def _causal_conv(
        self, qkv: torch.Tensor, state: LinearAttentionState | None
    ) -> torch.Tensor:
        """SiLU(depthwise causal conv) of qkv [B, T, channels]. Output t sees inputs
        t-K+1..t: the K-1 before the first token are zeros, or the state's; the state
        then keeps the last K-1 inputs (for one token, a roll: drop the oldest column,
        append the new one)."""
        x = qkv.transpose(1, 2)  # [B, channels, T]
        if state is None:
            window = F.pad(x, (self.conv_kernel_size - 1, 0))
        else:
            window = torch.cat([state.conv_state, x], dim=-1)
            state.conv_state.copy_(
                window[..., window.shape[-1] - state.conv_state.shape[-1] :]
            )
        weight = self.conv1d.weight
        # In the weight's dtype, then back, as transformers does.
        out = F.conv1d(window.to(weight.dtype), weight, groups=self.conv_channels)
        return F.silu(out).to(qkv.dtype).transpose(1, 2)

    def _check_forward_inputs(
        self, x: torch.Tensor, state: LinearAttentionState | None
    ) -> None:
        if x.dim() != 3 or x.shape[-1] != self.hidden_size:
            raise InputError(
                f"GatedDeltaNet input must be [batch, time, {self.hidden_size}], got "
                f"{tuple(x.shape)}"
            )
        if state is None:
            return
        names = ("conv_state", "recurrent_state")
        for name, shape in zip(names, self._state_shapes(x.shape[0])):
            got = tuple(getattr(state, name).shape)
            if got != shape:
                raise InputError(
                    f"state.{name} has shape {got}, this layer needs {shape} for a "
                    f"batch of {x.shape[0]}: make the state with "
                    f"GatedDeltaNet.empty_state({x.shape[0]})"
                )

    def forward(
        self, x: torch.Tensor, state: LinearAttentionState | None = None
    ) -> torch.Tensor:
        """x [B, T, hidden] -> [B, T, hidden]. Without a state: the whole sequence from
        zeros, chunked. With one (from empty_state), x continues the state's sequence
        and the state is updated in place: T > 1 (prefill) runs the chunked rule,
        T == 1 (decoding) the recurrent step.
        """
        self._check_forward_inputs(x, state)
        B, T, _ = x.shape
        Hk, Hv = self.num_key_heads, self.num_value_heads
        qkv = self._causal_conv(self.in_proj_qkv(x), state)
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.value_dim], dim=-1)
        q = l2_normalize(q.reshape(B, T, Hk, self.key_head_dim))
        k = l2_normalize(k.reshape(B, T, Hk, self.key_head_dim))
        v = v.reshape(B, T, Hv, self.value_head_dim)
        if Hv != Hk:
            q = q.repeat_interleave(Hv // Hk, dim=2)
            k = k.repeat_interleave(Hv // Hk, dim=2)
        beta = self.in_proj_b(x).sigmoid()
        # In float32 even for fp16 weights, where exp(A_log) can overflow.
        g = -self.A_log.float().exp() * F.softplus(
            self.in_proj_a(x).float() + self.dt_bias
        )

        initial = None if state is None else state.recurrent_state
        if state is not None and T == 1:
            out, final = recurrent_gated_delta_rule(q, k, v, g, beta, initial)
        else:
            out, final = chunked_gated_delta_rule(
                q, k, v, g, beta, self.chunk_size, initial
            )
        if state is not None:
            state.recurrent_state.copy_(final)

        z = self.in_proj_z(x).reshape(B, T, Hv, self.value_head_dim)
        return self.out_proj(self.norm(out, z).reshape(B, T, self.value_dim))
