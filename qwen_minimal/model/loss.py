"""Next-token cross-entropy whose gradient is computed during the forward pass, a slice
of the vocabulary at a time.

With a 50k-token vocabulary the logits of a batch are large ([tokens, vocab]: 200 MB for
1024 tokens in fp32), and F.cross_entropy makes three more tensors of that size: the
log-probabilities it keeps for the backward pass, then the gradients of the
log-probabilities and of the logits. Yet the gradient of the mean cross-entropy with
respect to the logits is simply

    d loss / d logits[i, v] = (softmax(logits[i])[v] - [v == target_i]) / n,

so, once every row's log-sum-exp is known, each slice of vocabulary columns gives its
slice of that gradient, which goes straight into the gradient of the output matrix (its
rows for those tokens) and into the gradient of the hidden states x. The backward pass
then only scales the two. Same loss and gradients, up to rounding (compare
Liger-Kernel's fused linear cross-entropy; here the logits are still returned).
"""

import torch
import torch.nn.functional as F

# temporaries of at most this many logits (16 MB in fp32) at a time
ELEMENTS_PER_CHUNK = 1 << 22


class _CrossEntropyWithGradients(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, logits, targets):
        # x [N, H], weight [V, H], logits [N, V] = x @ weight^T (detached), targets [N]
        # (-100: ignored)
        N, V = logits.shape
        valid = targets != -100
        scale = (valid / valid.sum())[:, None]  # d(mean loss) / d(each row's loss)
        # ignored rows: any index will do, their scale is 0
        targets = targets.clamp(min=0)[:, None]
        height, width = max(1, ELEMENTS_PER_CHUNK // V), max(1, ELEMENTS_PER_CHUNK // N)
        lse = torch.cat(
            [
                torch.logsumexp(rows, dim=-1, keepdim=True)
                for rows in logits.split(height)
            ]
        )
        loss = ((lse - logits.gather(1, targets)) * scale).sum()
        # exp(logit - shift) = softmax * scale (0 on ignored rows)
        shift = lse - scale.log()
        grad_x, grad_weight = torch.zeros_like(x), torch.empty_like(weight)
        for start in range(0, V, width):
            cols = slice(start, start + width)
            grad_logits = (
                logits[:, cols] - shift
            ).exp_()  # softmax / n on these columns
            # minus one_hot(target) / n, for the rows whose target lies in these columns
            in_slice = (targets >= start) & (targets < start + width)
            grad_logits.scatter_add_(
                1,
                (targets - start).clamp(0, grad_logits.shape[1] - 1),
                -scale * in_slice,
            )
            torch.mm(grad_logits.t(), x, out=grad_weight[cols])
            grad_x.addmm_(grad_logits, weight[cols])
        ctx.save_for_backward(grad_x, grad_weight)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_x, grad_weight = ctx.saved_tensors
        return grad_x * grad_loss, grad_weight * grad_loss, None, None


def cross_entropy(
    x: torch.Tensor, weight: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """Mean cross-entropy of logits = x @ weight^T against targets (-100 is ignored),
    differentiable in x and weight. x [..., H], weight [V, H], logits [..., V], targets
    [...].

    The sliced gradient is used when training in fp32; otherwise (no gradient needed, or
    bf16 autocast) this is F.cross_entropy.
    """
    logits, targets = logits.flatten(0, -2), targets.flatten()
    if logits.dtype != torch.float32 or not (
        torch.is_grad_enabled() and logits.requires_grad
    ):
        return F.cross_entropy(logits.float(), targets, ignore_index=-100)
    return _CrossEntropyWithGradients.apply(
        x.flatten(0, -2), weight, logits.detach(), targets
    )
