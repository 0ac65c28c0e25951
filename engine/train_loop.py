"""The epoch loop of a training run: steps, validation, logging, checkpoints, interruption.

:class:`TrainingLoop` holds the part of :class:`engine.training.Trainer` that runs once the run is
set up (the setup, the resume state and the experiment folder are in :mod:`engine.training`).

Determinism: the order of training pairs in epoch ``e`` is a permutation drawn from a generator
seeded with ``(seed, e)`` alone, and checkpoints hold every other piece of state, so on the CPU
training E epochs in one go and training with a resume half-way give identical weights.
An interruption (Ctrl-C, SIGTERM) stops at the next step boundary and writes a checkpoint of the
current epoch that records how many of its steps were done; resuming from it continues that
epoch exactly where it stopped.
"""

import dataclasses
import math
import signal
import sys
import time
from contextlib import contextmanager

import torch
from tqdm import tqdm

from engine import experiment as xp
from engine.checkpoint import checkpoint_path, list_checkpoint_epochs, save_checkpoint, save_weights
from engine.multires import multires_batch
from engine.metrics import folding_percent, mean_dice
from engine.plotting import TRAIN_COLUMNS, plot_history, registration_panel
from losses import one_hot
from models import to_pixel_units, warp
from models.spectral import weight_cache
from utils.distributed import any_rank, barrier, mean_over_ranks, shutdown
from utils.errors import EXIT_INTERRUPTED
from utils.fileio import write_json
from utils.precision import network_field
from utils.training_graphs import TrainingGraphs

PLOT_INTERVAL_S = 60


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


def epoch_order(n_pairs, batch_size, steps_per_epoch, seed, epoch):
    """Pair indices of epoch ``epoch`` in training order, as a (steps, batch) tensor.

    Drawn from a generator seeded by ``(seed, epoch)`` only, so any epoch can be replayed. With
    ``steps_per_epoch`` the permutation is extended with further permutations when needed.
    An incomplete last batch is dropped (one pass over 40,200 2D pairs in batches of 8 is 5,025 steps).
    """
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    batch = min(batch_size, n_pairs)
    steps = steps_per_epoch or max(1, n_pairs // batch)
    need = steps * batch
    perms = [torch.randperm(n_pairs, generator=gen) for _ in range(math.ceil(need / n_pairs))]
    return torch.cat(perms)[:need].view(steps, batch)


class _StopFlag:
    """Set by SIGINT / SIGTERM; a second Ctrl-C aborts at once."""

    def __init__(self):
        self.signum = None

    def __call__(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\n{signal.Signals(signum).name} received: finishing the current step and saving a checkpoint "
              "(Ctrl-C again to abort without saving)", file=sys.stderr)


@contextmanager
def _catch_signals(flag):
    old = {s: signal.signal(s, flag) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


class TrainingLoop:
    """The epoch loop, run by :meth:`run`; a base class of :class:`engine.training.Trainer`.

    It reads what the trainer's setup provides: ``config``, ``dim``, ``dist``, ``main``,
    ``device``, ``train`` and ``val`` (:class:`engine.batches.DeviceSplit`), ``loss_fn``,
    ``label_ids``, ``model``, ``net``, ``optimizer``, ``scheduler``, ``history``,
    ``start_epoch``, ``start_step``, ``partial_sums``, ``folder``, ``exp_num``, ``run_index``,
    ``writer``, ``n_params``, ``train_shape``, ``_gather_rng()`` and ``_state(epoch, rank_rng, step, sums)``.
    """

    # ----------------------------------------------------------------------------- steps
    def _loss(self, net, batch, loss_fn=None):
        # Mixed precision covers the network only: the loss and its warps stay in float32.
        flow = network_field(net, batch.moving, batch.fixed, self.config["train_config"]["mixed_precision"])
        warped = warp(batch.moving, flow)
        total, terms = self._objective(loss_fn or self.loss_fn, batch, flow, warped)
        return total, terms, flow, warped

    def _objective(self, loss_fn, batch, flow, warped):
        """``loss_fn`` on a registered batch; the soft-Dice one-hot maps only when it uses labels."""
        onehots = ()
        if loss_fn.uses_labels:
            onehots = (one_hot(batch.fixed_labels, self.label_ids),
                       warp(one_hot(batch.moving_labels, self.label_ids), flow))
        return loss_fn(batch.fixed, warped, flow, *onehots)

    def _train_epoch(self, epoch, first_step, sums):
        tc = self.config["train_config"]
        order = epoch_order(len(self.train), tc["batch_size"], tc["steps_per_epoch"], tc["seed"], epoch)
        order = order.to(self.train.index_device)  # once an epoch, not a host copy every step
        rank, world = self.dist.rank, self.dist.world_size
        self.net.train()
        bar = tqdm(total=len(order), initial=first_step, desc=f"epoch {epoch}/{tc['epochs']}", leave=False,
                   disable=not self.main, dynamic_ncols=True)
        sums = sums if sums is not None else {}
        device_sums = {k: torch.tensor(v, device=self.device, dtype=torch.float64) for k, v in sums.items()}
        bad = torch.zeros((), dtype=torch.bool, device=self.device)
        first_bad = torch.full((), -1, dtype=torch.long, device=self.device)  # 1-based step, kept on the device
        step = first_step
        try:
            for step in range(first_step, len(order)):
                if any_rank(self.stop.signum is not None, self.dist):
                    # An interruption must not save weights a recent, not yet checked, step broke.
                    self._check_finite(bad, first_bad, epoch)
                    return step, self._host(device_sums), True
                batch = multires_batch(self.train.batch(order[step][rank::world]), tc["multires"], tc["seed"], epoch,
                                       step, self.config["data_config"]["antialias"])
                total, terms, _, _ = self._loss(self.net, batch)
                self.optimizer.zero_grad(set_to_none=True)
                total.backward()
                if tc["grad_clip"]:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc["grad_clip"])
                self.optimizer.step()
                for name, value in [("loss", total), *terms.items(), ("steps", torch.ones(()))]:
                    device_sums[name] = device_sums.get(name, 0.0) + value.detach().double()
                nonfinite = ~torch.isfinite(total.detach())
                first_bad = torch.where(nonfinite & (first_bad < 0), step + 1, first_bad)
                bad |= nonfinite
                # Read back to the host only every few steps: a GPU keeps running ahead meanwhile.
                if step % 10 == 0 or step == len(order) - 1:
                    self._check_finite(bad, first_bad, epoch)
                    # Every rank is here at the same steps: the bar shows the whole batch's mean, as logged.
                    shown = mean_over_ranks({"loss": float(device_sums["loss"]), "steps": float(device_sums["steps"])},
                                            self.dist, self.device)
                    bar.set_postfix(loss=f"{shown['loss'] / shown['steps']:.4g}")
                bar.update(1)
        finally:
            bar.close()
        return len(order), self._host(device_sums), False

    def _check_finite(self, bad, first_bad, epoch):
        """Raise :class:`TrainingDiverged` if any rank's loss was non-finite since the epoch began.

        Decided on all ranks together: a rank that stopped alone would leave the others waiting in
        the next collective. The message names the first bad step of this rank.
        """
        if any_rank(bool(bad), self.dist):
            where = f"step {int(first_bad)}" if bool(bad) else "a step on another rank"
            raise TrainingDiverged(f"non-finite training loss at epoch {epoch}, {where}")

    def _host(self, device_sums):
        """The epoch's sums on the host, averaged over ranks under DDP.

        Each rank sums its own share of every global batch; the average over ranks, divided by
        the steps, is the mean over the whole batch, which is what is logged and checkpointed
        (a resumed epoch's sums then continue identically on every rank). Every rank calls this
        at the same step (the stop decision is taken by all ranks together).
        """
        return mean_over_ranks({k: float(v) for k, v in device_sums.items()}, self.dist, self.device)

    @torch.inference_mode()
    def _validate(self):
        """Loss terms, Dice before/after and folding on the validation pairs at the training shape.

        Runs inside :func:`models.spectral.weight_cache`, freed on return (no memory is held
        during training). Each loss term is averaged over the pairs it applies to (the soft-Dice
        term over the pairs with label maps only) and ``loss`` is the loss's weighted sum of
        those means. Pairs without label maps count towards the image terms and folding only;
        without any labelled pair ``dice``, ``dice_before`` and ``dice_loss`` are absent.
        """
        with weight_cache(self.model):
            return self._validate_pairs()

    def _validate_pairs(self):
        tc = self.config["train_config"]
        self.model.eval()
        sums, counts = {}, {}
        dice_before, dice_after, folds = [], [], []
        image_terms = dataclasses.replace(self.loss_fn, seg_param=0.0)
        for _, batch in self.val.batches(tc["val_batch_size"] or tc["batch_size"]):
            flow = self.model(batch.moving, batch.fixed)
            warped = warp(batch.moving, flow)
            # Each term over the pairs it applies to: the Dice term over the labelled ones only.
            labelled = (batch.has_labels if batch.has_labels is not None and batch.moving_labels is not None
                        else torch.zeros(len(flow), dtype=torch.bool, device=flow.device))
            for rows, loss_fn in ((labelled, self.loss_fn), (~labelled, image_terms)):
                n = int(rows.sum())
                if n == 0:
                    continue
                _, terms = self._objective(loss_fn, batch.select(rows), flow[rows], warped[rows])
                for name, value in terms.items():
                    sums[name] = sums.get(name, 0.0) + float(value) * n
                    counts[name] = counts.get(name, 0) + n
            folds.append(folding_percent(flow))
            if batch.moving_labels is not None and bool(batch.has_labels.any()):
                keep = batch.has_labels
                warped_labels = warp(batch.moving_labels, flow)
                dice_after.append(mean_dice(warped_labels[keep], batch.fixed_labels[keep], self.label_ids))
                dice_before.append(mean_dice(batch.moving_labels[keep], batch.fixed_labels[keep], self.label_ids))
        out = {k: v / counts[k] for k, v in sums.items()}
        out["loss"] = float(self.loss_fn.combine(out))
        out["folding"] = float(torch.cat(folds).mean())
        if dice_after and torch.cat(dice_after).numel():
            out["dice"] = float(torch.nanmean(torch.cat(dice_after)))
            out["dice_before"] = float(torch.nanmean(torch.cat(dice_before)))
        return out

    @torch.inference_mode()
    def _log_panel(self, epoch):
        self.model.eval()
        batch = self.val.batch(torch.tensor([0]))
        with weight_cache(self.model):
            flow = self.model(batch.moving, batch.fixed)
        warped = warp(batch.moving, flow)
        fig = registration_panel(batch.fixed[0, 0], batch.moving[0, 0], warped[0, 0], to_pixel_units(flow)[0],
                                 columns=TRAIN_COLUMNS, title=f"validation pair 0, epoch {epoch}")
        self.writer.add_figure("Registration/val_pair0", fig, epoch)

    # ----------------------------------------------------------------------------- loop
    def _record(self, epoch, train_means, val, seconds, lr):
        """Log epoch ``epoch``: history, TensorBoard, the console line; ``lr`` is the LR it trained with."""
        h = self.history
        h.setdefault("epoch", []).append(epoch)
        h.setdefault("lr", []).append(lr)
        h.setdefault("time_s", []).append(seconds)
        for name, value in train_means.items():
            h.setdefault(f"train_{name}" if name != "loss" else "train_loss", []).append(value)
        w = self.writer
        w.add_scalar("Loss/train", train_means["loss"], epoch)
        for name, value in train_means.items():
            if name != "loss":
                w.add_scalar(f"Loss/train_{name}", value, epoch)
        w.add_scalar("LR", lr, epoch)
        w.add_scalar("Time/epoch_s", seconds, epoch)
        line = f"epoch {epoch}: train loss {train_means['loss']:.5g} (" + ", ".join(
            f"{k} {v:.4g}" for k, v in train_means.items() if k != "loss") + ")"
        if val is not None:
            h.setdefault("val_epoch", []).append(epoch)
            for name, value in val.items():
                if name == "dice_before":
                    h["initial_val_dice"] = value
                    continue
                h.setdefault("val_loss" if name == "loss" else f"val_{name}", []).append(value)
            w.add_scalar("Loss/val", val["loss"], epoch)
            for name in ("similarity", "smoothness", "dice_loss", "folding_penalty"):
                if name in val:
                    w.add_scalar(f"Loss/val_{name}", val[name], epoch)
            if "dice" in val:
                w.add_scalar("Dice/val", val["dice"], epoch)
            w.add_scalar("Folding/val", val["folding"], epoch)
            line += f" | val loss {val['loss']:.5g}"
            if "dice" in val:
                line += f", Dice {val['dice']:.4f} (before {val['dice_before']:.4f})"
            line += f", folding {val['folding']:.3f}%"
        line += f" | lr {lr:.3g} | {seconds:.1f}s"
        tqdm.write(line)
        w.flush()
        write_json(self.folder / "history.json", self.history)

    def _plot(self, force=False):
        # Drawing takes about a second; refresh at most every PLOT_INTERVAL_S, and always at the end.
        if force or time.monotonic() - self._last_plot > PLOT_INTERVAL_S:
            plot_history(self.history, self.folder / "plots", self.history.get("initial_val_dice"))
            self._last_plot = time.monotonic()

    def run(self):
        """Train to ``epochs``; returns the process exit status (0, or 130 when interrupted)."""
        tc = self.config["train_config"]
        self.stop = _StopFlag()
        self._last_plot = -math.inf
        epoch = self.start_epoch
        status, message = "failed", None
        if self.main:
            print(f"experiment {self.exp_num} ({self.dim}D): {self.folder}\n"
                  f"model {self.config['model_name']} with {self.n_params:,} parameters, training at "
                  f"{'x'.join(map(str, self.train_shape))} on {self.device}, {len(self.train)} training pairs",
                  file=sys.stderr)
        try:
            with _catch_signals(self.stop):
                first_step, sums = self.start_step, self.partial_sums
                for epoch in range(self.start_epoch + 1, tc["epochs"] + 1):
                    started = time.perf_counter()
                    lr = self.optimizer.param_groups[0]["lr"]  # this epoch's; the scheduler steps after it
                    done, sums, stopped = self._train_epoch(epoch, first_step, sums)
                    if stopped:
                        self._save_interrupted(epoch, done, sums)
                        status = "interrupted"
                        return EXIT_INTERRUPTED
                    means = {k: v / sums["steps"] for k, v in sums.items() if k != "steps"}
                    if self.scheduler is not None:
                        self.scheduler.step()
                    val = None
                    if self.main and self.val is not None and (epoch % tc["val_freq"] == 0 or epoch == tc["epochs"]):
                        val = self._validate()
                    if self.main:
                        self._record(epoch, means, val, time.perf_counter() - started, lr)
                        self._plot(force=epoch % tc["ckpt_freq"] == 0)
                        if epoch % tc["image_log_freq"] == 0 or epoch == tc["epochs"]:
                            if self.val is not None:
                                self._log_panel(epoch)
                    rank_rng = self._gather_rng()  # every rank, after all that rank 0 ran above
                    if self.main:
                        # An interruption's checkpoint of this epoch (part of it) becomes the whole epoch's.
                        if (epoch % tc["ckpt_freq"] == 0 or epoch == tc["epochs"]
                                or checkpoint_path(self.folder, epoch).exists()):
                            save_checkpoint(self.folder, epoch, self._state(epoch, rank_rng))
                    barrier(self.dist)
                    first_step, sums = 0, None
                if self.main:
                    self._plot(force=True)
                    save_weights(self.folder, self.model, epoch, self.train_shape, self.config)
                    print(f"finished: weights in {self.folder / 'weights.pth'}", file=sys.stderr)
                status = "finished"
                return 0
        except TrainingDiverged as exc:
            last = list_checkpoint_epochs(self.folder)
            kept = f"the last good checkpoint is epoch {last[-1]}" if last else "no checkpoint was written yet"
            message = f"{exc}; training stopped ({kept}). Lower train_config.lr or check the data."
            status = "diverged"  # not "failed": a rerun would diverge again, a crashed one may not
            if self.main:
                print(f"error: {message}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            status, message = "interrupted", "aborted by a second Ctrl-C without saving"
            raise
        except Exception as exc:  # a crash (out of memory, a lost device, ...): marked failed, resumable
            message = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            if self.main:
                end_epoch = epoch if status == "finished" else (self.history.get("epoch") or [self.start_epoch])[-1]
                xp.end_run(self.folder, self.run_index, status, end_epoch, message, **self._run_fields())
                if self.writer is not None:
                    self.writer.close()
            shutdown(self.dist)

    def _run_fields(self):
        """What the run's metadata entry records at its end: with ``--cuda_graphs``, what the graphs did."""
        return {"cuda_graphs": self.net.usage()} if isinstance(self.net, TrainingGraphs) else {}

    def _save_interrupted(self, epoch, done_steps, sums):
        rank_rng = self._gather_rng()  # every rank stops at the same step (any_rank), so all are here
        if self.main:
            # done_steps == 0: nothing of this epoch ran, so this is the state after epoch - 1.
            if done_steps == 0:
                path = save_checkpoint(self.folder, epoch - 1, self._state(epoch - 1, rank_rng))
                resume_epoch = epoch - 1
            else:
                path = save_checkpoint(self.folder, epoch, self._state(epoch - 1, rank_rng, done_steps, sums))
                resume_epoch = epoch
            print(f"interrupted: saved {path} ({done_steps} steps of epoch {epoch} done); resume with "
                  f"--exp_num {self.exp_num} --ckpt_epoch {resume_epoch}", file=sys.stderr)
        # torchrun stops the other processes once one has exited: none may exit before the save.
        barrier(self.dist)
