"""Training the LSTM-VAE: the optimiser loop, the plateau check and the training report (see
:mod:`streamwatch.detectors.lstm_vae` for the model and the score).

The loss first sits on a plateau where the decoder ignores ``z`` and predicts each step's
marginal Normal: about ``window × ½·log(2πe)`` nats for standardised data (1.42 a step). A
model still there after training is in effect a per-reading Gaussian, blind to shape
anomalies (flatlines, frequency changes, gaps), and Keras does not warn. So:

- the KL term is annealed in: its weight rises linearly from 0 to 1 over the first
  :data:`KL_WARMUP_STEPS` steps of each round (the standard remedy for posterior collapse,
  Bowman et al. 2016), so the encoder can put information in ``z`` before the prior pulls it
  back; the validation loss is always the full negative ELBO;
- after training, the best validation loss is compared with :func:`plateau_level`, the
  validation loss of a decoder that predicts the training data's marginal at every step; a
  model within :data:`PLATEAU_MARGIN` nats a step of it gets up to :data:`ESCAPE_ROUNDS`
  more rounds of training, each with the KL warm-up again;
- a round stops when the validation loss has not improved for ``patience`` epochs, after
  ``min_steps`` steps; before that, up to :data:`LR_CUTS` times, the learning rate is cut by
  :data:`LR_CUT` and the round goes on, so it ends near a minimum rather than wherever the
  noise of the last epochs left it, and trainings with different seeds end closer together;
  a round may run up to ``min_steps`` more steps than planned while its loss still falls;
- the outcome, plateau or not, is a :class:`TrainReport`, which the detector keeps and
  ``streamwatch train`` writes into the bundle's ``trained_on``.

Training is repeatable for a seed on one machine: weights are initialised from seeded
initialisers, batches are drawn from a seeded numpy generator and the reparameterisation
noise from a seeded ``tf.random.Generator``; nothing else in the model is random.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from streamwatch.config import LSTMVAEConfig
from streamwatch.detectors.lstm_vae_net import Net, tf_module
from streamwatch.tfquiet import filtered_native_stderr

log = logging.getLogger(__name__)

PLATEAU_MARGIN = 0.05
"""Nats a step: a best validation loss above ``plateau_level - window × PLATEAU_MARGIN`` is
on the plateau."""
KL_WARMUP_STEPS = 500
"""Steps over which the KL weight rises from 0 to 1 at the start of every round (at most half
the round's planned steps)."""
ESCAPE_ROUNDS = 2
"""Extra rounds of training for a model that ends on the plateau."""
LR_CUTS = 2
"""Times a round cuts its learning rate instead of stopping early."""
LR_CUT = 0.2
"""Factor of each cut."""


@dataclass
class TrainReport:
    """How one network's training went."""

    plateau: bool
    val_loss: float
    plateau_level: float
    steps: int
    epochs: int
    rounds: int
    seconds: float
    seed: int

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (floats rounded for the manifest)."""
        out = asdict(self)
        for key in ("val_loss", "plateau_level"):
            out[key] = round(float(out[key]), 4) if math.isfinite(out[key]) else None
        out["seconds"] = round(self.seconds, 1)
        return out


def plateau_level(train: np.ndarray, val: np.ndarray) -> float:
    """The validation loss (negative ELBO, nats per window) of a model that ignores ``z``
    and predicts each step's marginal: a Normal fitted to the standardised training
    windows, evaluated on the validation windows (of one feature, (N, W), or several,
    (N, W, F), each step and feature its own Normal)."""
    x = np.asarray(train, dtype=np.float64)
    mean = x.mean(axis=0)
    var = np.maximum(x.var(axis=0), 1e-12)
    v = np.asarray(val, dtype=np.float64)
    nll = 0.5 * np.log(2.0 * np.pi * var) + 0.5 * (v - mean) ** 2 / var
    return float(nll.reshape(len(v), -1).sum(axis=1).mean())


def on_plateau(val_loss: float, level: float, window: int) -> bool:
    """Whether a best validation loss is within the margin of the plateau (or not finite)."""
    return not math.isfinite(val_loss) or val_loss > level - window * PLATEAU_MARGIN


class Trainer:
    """Trains one :class:`Net` on standardised windows, in rounds, with a KL warm-up."""

    def __init__(
        self, cfg: LSTMVAEConfig, window: int, seed: int, what: str, features: int = 1
    ) -> None:
        tf = tf_module()
        import keras

        self.cfg = cfg
        self.window = window
        self.features = features
        self.seed = seed
        self.what = what
        self.net = Net(cfg, window, seed, features)
        self.opt = keras.optimizers.Adam(learning_rate=cfg.learning_rate)
        variables = self.net.vae.trainable_variables
        self.opt.build(variables)
        self.rng = np.random.default_rng(seed)
        noise = tf.random.Generator.from_seed(seed)
        self.beta = tf.Variable(1.0, trainable=False, dtype=tf.float32)
        net = self.net
        shape = [window] if features == 1 else [window, features]
        spec = [tf.TensorSpec([None, *shape], tf.float32)]

        def neg_elbo(x: Any, training: bool, beta: Any) -> Any:
            mean, logvar = net.encode(x, training=training)
            z = mean + tf.exp(0.5 * logvar) * noise.normal(tf.shape(mean))
            nll = net.step_nll(z, x)
            recon = tf.reduce_sum(tf.reshape(nll, [tf.shape(nll)[0], -1]), axis=-1)
            kl = 0.5 * tf.reduce_sum(tf.exp(logvar) + tf.square(mean) - 1.0 - logvar, axis=-1)
            return tf.reduce_mean(recon + beta * kl)

        @tf.function(input_signature=spec)
        def train_step(x: Any) -> Any:
            with tf.GradientTape() as tape:
                loss = neg_elbo(x, True, self.beta)
            grads = tape.gradient(loss, variables)
            self.opt.apply_gradients(zip(grads, variables, strict=True))
            return loss

        @tf.function(input_signature=spec)
        def val_step(x: Any) -> Any:
            return neg_elbo(x, False, 1.0)

        self._train_step = train_step
        self._val_step = val_step
        self.steps = 0
        self.epochs = 0

    def _val_loss(self, val: np.ndarray) -> float:
        bs = self.cfg.batch_size
        total = sum(
            float(self._val_step(val[i : i + bs])) * len(val[i : i + bs])
            for i in range(0, len(val), bs)
        )
        return total / len(val)

    def fit(self, train: np.ndarray, val: np.ndarray) -> TrainReport:
        """Train (escape rounds included), restore the best weights, report."""
        cfg = self.cfg
        started = time.monotonic()
        level = plateau_level(train, val)
        per_epoch = math.ceil(len(train) / cfg.batch_size)
        epochs = max(cfg.epochs, math.ceil(cfg.min_steps / per_epoch))
        # Overtime: a model that left the plateau late is not cut off while its loss still
        # falls (early stopping, after ``patience`` epochs without improvement, ends it).
        limit = epochs + math.ceil(cfg.min_steps / per_epoch)
        log.info(
            "training %s: %d train / %d validation windows, %d epochs (%d steps each; up to "
            "%d while it still improves); plateau at val_loss %.2f",
            self.what,
            len(train),
            len(val),
            epochs,
            per_epoch,
            limit,
            level,
        )
        best, weights = self._round(train, val, epochs, limit, math.inf, None)
        rounds = 1
        cells = self.window * self.features  # the margin is per step and feature
        while on_plateau(best, level, cells) and rounds <= ESCAPE_ROUNDS:
            log.info(
                "%s: best val_loss %.4f is on the plateau (%.2f); training round %d of at most %d",
                self.what,
                best,
                level,
                rounds + 1,
                ESCAPE_ROUNDS + 1,
            )
            best, weights = self._round(train, val, epochs, limit, best, weights)
            rounds += 1
        if weights is not None:
            self.net.vae.set_weights(weights)
        report = TrainReport(
            plateau=on_plateau(best, level, cells),
            val_loss=best,
            plateau_level=level,
            steps=self.steps,
            epochs=self.epochs,
            rounds=rounds,
            seconds=time.monotonic() - started,
            seed=self.seed,
        )
        log.log(
            logging.WARNING if report.plateau else logging.INFO,
            "%s trained%s: best val_loss %.4f, plateau level %.2f, %d steps in %d round(s), "
            "%.1fs, seed %d",
            self.what,
            " BUT NOT BELOW THE PLATEAU (no better than predicting each step's marginal, "
            "blind to the window's shape; more data or steps may help)"
            if report.plateau
            else "",
            best,
            level,
            report.steps,
            rounds,
            report.seconds,
            self.seed,
        )
        return report

    def _round(
        self,
        train: np.ndarray,
        val: np.ndarray,
        epochs: int,
        limit: int,
        best: float,
        best_weights: list[Any] | None,
    ) -> tuple[float, list[Any] | None]:
        """One round of ``epochs`` epochs (up to ``limit`` while the validation loss
        improves) with the KL warm-up; early stopping waits for ``min_steps`` steps of the
        round. Returns the best validation loss so far and
        its weights (``best_weights`` if no epoch improved on ``best``)."""
        bs = self.cfg.batch_size
        first = self.steps
        warmup = min(KL_WARMUP_STEPS, epochs * math.ceil(len(train) / bs) // 2)
        stale = 0
        cuts = 0
        self.opt.learning_rate.assign(self.cfg.learning_rate)
        started = time.monotonic()
        for epoch in range(1, limit + 1):
            self.epochs += 1
            order = self.rng.permutation(len(train))
            total = 0.0
            for i in range(0, len(train), bs):
                done = self.steps - first
                self.beta.assign(min(1.0, done / warmup) if warmup else 1.0)
                self.steps += 1
                batch = train[order[i : i + bs]]
                if self.steps == 1:
                    # The first step traces and compiles; oneDNN says there, on fd 2, that
                    # it cannot do int32 on this CPU: keep that off the terminal.
                    with filtered_native_stderr():
                        loss = float(self._train_step(batch))
                else:
                    loss = float(self._train_step(batch))
                total += loss * len(batch)
            val_loss = self._val_loss(val)
            elapsed = time.monotonic() - started
            log.info(
                "%s epoch %d/%d: loss %.4f, val_loss %.4f (%.1fs, ETA %.0fs at most)",
                self.what,
                epoch,
                limit,
                total / len(train),
                val_loss,
                elapsed,
                elapsed / epoch * (limit - epoch),
            )
            if not math.isfinite(val_loss):
                log.warning("%s: validation loss is not finite; stopping", self.what)
                break
            if val_loss < best:
                best, stale = val_loss, 0
                best_weights = self.net.vae.get_weights()
            elif self.steps - first >= max(self.cfg.min_steps, warmup):
                # No early stop before min_steps: the first few hundred steps sit on the
                # plateau before the loss drops by an order of magnitude.
                stale += 1
                if stale >= self.cfg.patience and cuts < LR_CUTS:
                    cuts += 1
                    stale = 0
                    lr = self.cfg.learning_rate * LR_CUT**cuts
                    self.opt.learning_rate.assign(lr)
                    log.info(
                        "%s: no better for %d epochs; learning rate %.2g",
                        self.what,
                        self.cfg.patience,
                        lr,
                    )
                elif stale >= self.cfg.patience:
                    log.info("%s: early stop, best val_loss %.4f", self.what, best)
                    break
        return best, best_weights
