"""Training loss of the reference (train.py): 0.5 * BCE(pos_weight=1.5) + 0.5 * dice, on logits."""

import jax
import jax.numpy as jnp


def weighted_binary_cross_entropy(logits, targets, pos_weight: float = 1.5):
  """torch.nn.BCEWithLogitsLoss(pos_weight) averaged over all pixels:
  (1 - y) x + (1 + (w - 1) y) log(1 + exp(-x)), computed stably."""
  return jnp.mean((1 - targets) * logits + (1 + (pos_weight - 1) * targets) * jax.nn.softplus(-logits))


def dice_loss(logits, targets, clamp: float = 1e-4):
  """mean over samples of 1 - (2 sum(p y) + 1) / (sum(p) + sum(y) + 1), p = clamp(sigmoid(x), 1e-4, 1 - 1e-4)."""
  probabilities = jnp.clip(jax.nn.sigmoid(logits), clamp, 1 - clamp)
  axes = tuple(range(1, logits.ndim))
  overlap = jnp.sum(probabilities * targets, axes)
  total = jnp.sum(probabilities, axes) + jnp.sum(targets, axes)
  return jnp.mean(1 - (2 * overlap + 1) / (total + 1))


def segmentation_loss(logits, targets, *, bce_weight: float = 0.5, dice_weight: float = 0.5,
                      pos_weight: float = 1.5):
  """Returns (loss, {'bce': ..., 'dice': ...}) for logits and binary targets of shape [B, H, W]."""
  targets = targets.astype(logits.dtype)
  bce = weighted_binary_cross_entropy(logits, targets, pos_weight)
  dice = dice_loss(logits, targets)
  return bce_weight * bce + dice_weight * dice, {'bce': bce, 'dice': dice}
