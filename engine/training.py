"""Training: the run behind ``train_2d.py`` and ``train_3d.py`` (one code path for both).

Modes, chosen by the flags (see ``utils.cli.train_parser``):

- ``--config_file C``: a new experiment with the next free number.
- ``--exp_num N``: restart experiment N from scratch with the ``config.json`` stored in its
  folder; the previous run's checkpoints, weights, plots and history move to
  ``previous_runs/run<k>/`` and its TensorBoard logs stay in ``logs/run<k>/``.
- ``--exp_num N --ckpt_epoch E``: resume from the checkpoint of epoch E (model, optimizer, LR
  schedule, RNG, epoch and step counters, metric history); TensorBoard continues the same run.
- ``--config_file C`` with ``--exp_num N`` (the paper's command lines): the stored config still
  trains; C is only compared with it, and a notice names the ``model_name``, ``model_config`` and
  ``train_config`` keys in which they differ.

``--cuda_graphs`` (any mode) replays the training step's forward and backward pass from CUDA
graphs (:mod:`utils.training_graphs`); the trainer then calls the model through that wrapper.

This module sets a run up (devices, config, data, model, optimizer, resume state, experiment
folder); the epoch loop, its determinism and its handling of interruptions are in
:mod:`engine.train_loop`.
"""

import sys

import torch
from torch.nn.parallel import DistributedDataParallel

from data.dataset import load_splits
from data.resize import shape_for_size
from engine import experiment as xp
from engine.batches import DeviceSplit
from engine.checkpoint import load_checkpoint
from engine.config import load_config, resolve_config, stored_config
from engine.train_config import build_optimizer, build_scheduler
from engine.train_loop import TrainingLoop
from losses import RegistrationLoss
from models import build_model, count_parameters
from utils.device import cuda_graphs_on, select_device
from utils.distributed import broadcast_object, gather_object, init_distributed
from utils.errors import ConfigError, UserError
from utils.fileio import read_json, write_json
from utils.precision import check_device_supports
from utils.process import process_alive
from utils.training_graphs import TrainingGraphs


def _training_now(folder, exp_num):
    """Why a restart or resume must wait (a live run of the experiment on this host), or None.

    Either would move the live run's files away under it.
    """
    try:
        runs = xp.read_metadata(folder).get("runs") or []
    except ConfigError:
        return None  # no metadata: the restart reports it before anything moves
    last = runs[-1] if runs else {}
    if last.get("status") == "running" and process_alive(last.get("pid"), last.get("host")):
        return (f"experiment {exp_num} is training now (process {last['pid']}, started {last.get('start_time')}); "
                "wait for it to finish or stop it (Ctrl-C saves a checkpoint) before restarting or resuming")
    return None


class Trainer(TrainingLoop):
    """Everything one training run needs, set up from the command-line arguments.

    Parameters
    ----------
    dim : int
        2 or 3.
    args : argparse.Namespace
        ``config_file``, ``gpu_num``, ``exp_num``, ``ckpt_epoch``, ``size``, ``cuda_graphs``.
    """

    def __init__(self, dim, args):
        self.dim = dim
        self.dist = init_distributed(use_cuda=args.gpu_num is not None and args.gpu_num >= 0
                                     and torch.cuda.is_available())
        self.main = self.dist.is_main
        if self.dist.enabled and torch.cuda.is_available() and args.gpu_num >= 0:
            self.device = torch.device(f"cuda:{self.dist.local_rank}")
            torch.cuda.set_device(self.device)
        else:
            self.device = select_device(args.gpu_num, quiet=not self.main)
        self._resolve_mode(args)
        tc = self.config["train_config"]
        if tc["batch_size"] % self.dist.world_size:
            raise ConfigError(f"train_config.batch_size {tc['batch_size']} must be divisible by the number of "
                              f"processes ({self.dist.world_size})")

        # Validate the data before any folder is created, so a bad path leaves nothing behind.
        splits = load_splits(self.config["data_config"], dim, ("train", "val"))
        for split in splits.values():
            warning = split.missing_labels_warning()
            if warning and self.main:
                print(warning, file=sys.stderr)
        # A split with fewer pairs than batch_size trains in batches of all its pairs (epoch_order):
        # each process must still get an equal share, or DDP would weight some pairs more.
        batch = min(tc["batch_size"], len(splits["train"].pairs))
        if batch % self.dist.world_size:
            raise ConfigError(f"the training split has {len(splits['train'].pairs)} pairs, so batches of {batch}, "
                              f"which {self.dist.world_size} processes cannot share equally; add training subjects "
                              "or change the number of processes")
        full_shape = tuple(splits["train"].images.shape[2:])
        size = tc["multires"]["max_size"] if tc["multires"] else tc["size"]  # multires: held at max_size
        self.train_shape = shape_for_size(size, full_shape) if size is not None else full_shape
        if self.resume_state is not None:
            flag = self.resume_size is not None
            given = shape_for_size(self.resume_size, full_shape) if flag else self.train_shape
            if tuple(self.resume_state["train_size"]) != given:
                raise UserError(f"checkpoint was trained at {tuple(self.resume_state['train_size'])} but "
                                f"{'--size gives' if flag else 'the config gives'} {given}; resume without --size "
                                "or restart the experiment")
        antialias = self.config["data_config"]["antialias"]
        self.train = DeviceSplit(splits["train"], self.train_shape, self.device, antialias)
        self.val = DeviceSplit(splits["val"], self.train_shape, self.device, antialias) if len(splits["val"].pairs) \
            else None
        self.loss_fn = RegistrationLoss.from_config(tc)
        if self.loss_fn.uses_labels and (self.train.labels is None or not bool(self.train.has_labels.all())):
            raise ConfigError("train_config.seg_param > 0 needs a label map for every training subject; "
                              "set seg_param to 0 or use a label scheme the data has")
        self.label_ids = splits["train"].label_ids

        check_device_supports(tc["mixed_precision"], self.device)
        torch.manual_seed(tc["seed"])
        self.model = build_model(self.config["model_name"], self.config["model_config"], dim).to(self.device)
        self.n_params = count_parameters(self.model)
        if hasattr(self.model, "check_input_shape"):  # a size the model cannot take: before any folder exists
            self.model.check_input_shape(self.train_shape)
        self.optimizer = build_optimizer(self.model.parameters(), tc["lr"])
        self.scheduler = build_scheduler(self.optimizer, tc, tc["epochs"])
        self.history = {}
        self.start_epoch, self.start_step, self.partial_sums = 0, 0, None
        restored = self._load_state(self.resume_state) if self.resume_state is not None else False
        if self.dist.rank > 0 and not restored:
            # Random layers (TransMorph's stochastic depth) need their own draws on every process;
            # rank 0 keeps the seeded (or checkpointed) stream, so one process trains as before.
            torch.manual_seed(rank_seed(tc["seed"], self.dist.rank, self.start_epoch, self.start_step))
        self.net = self.model
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids)
        if cuda_graphs_on(args.cuda_graphs, self.device):
            # multires: a new input shape nearly every step, and a capture costs about 20 eager steps (H200)
            why_not = ("several processes (DistributedDataParallel)" if self.dist.enabled else
                       "activation checkpointing" if getattr(self.model, "checkpointing", False) else
                       "train_config.multires (a new input shape nearly every step)" if tc["multires"] else None)
            if why_not:
                if self.main:
                    print(f"notice: --cuda_graphs is not used with {why_not}; training eagerly", file=sys.stderr)
            else:
                self.net = TrainingGraphs(self.model)
        self._prepare_folder()

    # ----------------------------------------------------------------------------- setup
    def _resolve_mode(self, args):
        self.resume_state = None
        self.resume_size = None  # --size given with --ckpt_epoch: checked against the checkpoint
        if args.size is not None and args.size < 2:
            raise ConfigError(f"--size must be at least 2 (the smallest side of the training shape: 160 full, 80 "
                              f"half resolution), got {args.size}; omit --size to train at the data's own size")
        if args.exp_num is None:
            if args.ckpt_epoch is not None:
                raise UserError("--ckpt_epoch needs --exp_num (the experiment to resume)")
            if not args.config_file:
                raise UserError("give --config_file CONFIG for a new experiment, or --exp_num N to restart one")
            self.config, _ = load_config(args.config_file, self.dim)
            self.mode, self.folder, self.exp_num = "start", None, None
        else:
            self.folder = xp.experiment_dir(self.dim, args.exp_num)
            self.exp_num = args.exp_num
            # Rank 0 decides for all: it writes the new run entry, which another rank could read.
            busy = broadcast_object(_training_now(self.folder, args.exp_num) if self.dist.is_main else None,
                                    self.dist)
            if busy:
                raise UserError(busy)
            path = self.folder / "config.json"
            self.config = resolve_config(stored_config(read_json(path)), self.dim, source=str(path))
            if args.config_file:
                given, given_path = load_config(args.config_file, self.dim)
                differing = config_differences(given, self.config)
                if differing and self.dist.is_main:
                    print(f"notice: {given_path} differs from experiment {args.exp_num}'s stored config in "
                          f"{', '.join(differing)}; the stored {path} is used (edit it to change settings)",
                          file=sys.stderr)
            self.mode = "restart" if args.ckpt_epoch is None else "resume"
            if args.ckpt_epoch is not None:
                self.resume_state = load_checkpoint(self.folder, args.ckpt_epoch)
                self._check_resumable(args.ckpt_epoch, path)
        self.resume_epoch = args.ckpt_epoch
        if args.size is not None:
            if self.config["train_config"]["multires"]:
                raise UserError("--size does not apply to a config with train_config.multires (its min_size..max_size "
                                "range sets the training sizes); drop --size or set multires to null")
            if self.mode == "resume":
                # The checkpoint fixes the size; --size is only checked against it. Written into
                # the config here it would reach the next checkpoints but not config.json, and the
                # next resume would take that for an edit.
                self.resume_size = args.size
            else:
                self.config["train_config"]["size"] = args.size

    def _check_resumable(self, epoch, path):
        """Refuse a resume whose edited ``config.json`` would mix with the checkpoint's settings."""
        if self.resume_state.get("config") is None:
            return
        try:
            trained = resolve_config(stored_config(self.resume_state["config"]), self.dim,
                                     source=f"checkpoint epoch {epoch}")
        except ConfigError as err:  # written by a version with other config keys: nothing to compare
            if self.dist.is_main:
                print(f"notice: cannot compare {path} with checkpoint epoch {epoch}'s config ({err})", file=sys.stderr)
            return
        blocking, allowed = resume_changes(self.config, trained)
        if blocking:
            key = blocking[0]
            raise ConfigError(
                f"{path} was edited after checkpoint epoch {epoch} was written: {', '.join(blocking)} differ ({key}: "
                f"{_dotted(self.config, key)!r} now, {_dotted(trained, key)!r} then), and a resume would mix the two "
                f"configs; undo the edit, restart the experiment (--exp_num {self.exp_num} without --ckpt_epoch) or "
                "start a new one (--config_file)")
        if allowed and self.dist.is_main:
            print(f"notice: resuming with {path}'s " + ", ".join(
                f"{k} = {_dotted(self.config, k)!r} (was {_dotted(trained, k)!r})" for k in allowed), file=sys.stderr)

    def _prepare_folder(self):
        if self.main:
            if self.mode == "start":
                self.exp_num, self.folder = xp.create_experiment(self.dim)
                write_json(self.folder / "config.json", self.config)
                xp.write_metadata(self.folder, xp.new_metadata(self.exp_num, self.config, self.n_params,
                                                               self.train_shape, self.device))
            elif self.mode == "restart":
                archived = xp.archive_previous_run(self.folder)
                if archived:
                    print(f"restart: previous run kept in {archived}", file=sys.stderr)
                write_json(self.folder / "config.json", self.config)
                # The edited config may describe another model: metadata.json follows it.
                meta = xp.read_metadata(self.folder)
                meta.update(description=self.config["description"], model_name=self.config["model_name"])
                xp.write_metadata(self.folder, meta)
            elif self.mode == "resume":
                # A partial checkpoint (an interruption's) becomes the whole epoch's: its evaluations go too.
                archived = xp.archive_after(self.folder, self.resume_epoch, partial=self.start_step > 0)
                if archived:
                    print(f"resume: what the run wrote after epoch {self.resume_epoch} (checkpoints, weights, "
                          f"evaluations) kept in {archived}", file=sys.stderr)
            (self.folder / "checkpoints").mkdir(exist_ok=True)
            self.run_index = xp.start_run(self.folder, self.mode, self.start_epoch, self.device,
                                          self.train_shape, self.n_params)
            if self.dist.enabled:
                meta = xp.read_metadata(self.folder)
                meta["runs"][-1]["world_size"] = self.dist.world_size
                xp.write_metadata(self.folder, meta)
        self.exp_num, self.folder = broadcast_object((self.exp_num, self.folder), self.dist)
        self.writer = None
        if self.main:
            from torch.utils.tensorboard import SummaryWriter

            log_dir = self.folder / "logs" / f"run{xp.log_run_number(self.folder)}"
            # On resume, drop events written after the checkpoint so the curves continue cleanly.
            purge = self.start_epoch + 1 if self.mode == "resume" else None
            self.writer = SummaryWriter(str(log_dir), purge_step=purge)

    def _load_state(self, state):
        """Restore a checkpoint; True when this process's own random stream was restored too."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        # Every process's stream when the checkpoint has one per process of this job's size
        # (written since 2026-11-30); otherwise rank 0's, and the others reseed (rank_seed).
        ranks = state["rng"].get("ranks") or []
        restored = len(ranks) == self.dist.world_size
        rng = ranks[self.dist.rank] if restored else state["rng"]
        if self.dist.rank == 0 or restored:
            torch.set_rng_state(rng["torch"])
            if torch.cuda.is_available() and rng.get("cuda") is not None:
                torch.cuda.set_rng_state_all(rng["cuda"])
        self.history = state["history"]
        self.start_epoch = state["epoch"]
        self.start_step = state.get("step", 0)
        self.partial_sums = state.get("epoch_sums")
        # The folding penalty's term was named "folding" before 2026-11-30 (val_folding was, and is, the %).
        if "train_folding" in self.history:
            self.history["train_folding_penalty"] = self.history.pop("train_folding")
        if self.partial_sums and "folding" in self.partial_sums:
            self.partial_sums["folding_penalty"] = self.partial_sums.pop("folding")
        return restored

    def _gather_rng(self):
        """Every process's random streams, in rank order; every rank calls it before a save."""
        own = {"torch": torch.get_rng_state(),
               "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
        return gather_object(own, self.dist)

    def _state(self, epoch, rank_rng, step=0, epoch_sums=None):
        """The checkpoint; ``rank_rng``: :meth:`_gather_rng`'s list, every process's streams."""
        return {
            "model": self.model.state_dict(),
            "model_name": self.config["model_name"],
            "model_config": self.config["model_config"],
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            # "torch" and "cuda": rank 0's, as before; "ranks": every process's, in rank order.
            "rng": {**rank_rng[0], "ranks": rank_rng},
            # epoch = completed epochs; step > 0: that many steps of epoch + 1 are done too.
            "epoch": epoch,
            "step": step,
            "epoch_sums": epoch_sums,
            "history": self.history,
            "train_size": list(self.train_shape),
            "config": self.config,
        }


def rank_seed(seed, rank, epoch, step):
    """Seed of process ``rank``'s random stream from a start at (``epoch``, ``step``) of run ``seed``.

    For ranks above 0 at the start of a run, and on resuming from a checkpoint without every
    process's stream (written before 2026-11-30, or by a job of another size): the resumed run is
    then reproducible, and its random layers' draws differ from an uninterrupted run's on ranks
    above 0 only.
    """
    return (((seed * 1_000_003 + rank) * 1_000_033 + epoch) * 1_000_037 + step) % 2**63


# Settings a resume may change: they steer what is still to come without touching what was done.
RESUMABLE_CHANGES = ("train_config.ckpt_freq", "train_config.val_freq", "train_config.image_log_freq",
                     "train_config.val_batch_size", "data_config.root")


def resume_changes(current, trained):
    """Keys in which ``current`` (``config.json`` now) differs from a checkpoint's ``trained`` config.

    Returns
    -------
    (list of str, list of str)
        Those that would make the resumed run a mix of two configs (the model, the loss, the
        optimizer and schedule, the data), and those a resume may take up
        (:data:`RESUMABLE_CHANGES`, a moved data root, and more ``epochs`` unless a cosine schedule
        was fitted to the old count).
    """
    changed = config_differences(current, trained, ("model_name", "model_config", "train_config", "data_config"))
    allowed = set(RESUMABLE_CHANGES)
    if (trained["train_config"].get("lr_schedule") or {}).get("type") != "cosine":
        allowed.add("train_config.epochs")
    return [k for k in changed if k not in allowed], [k for k in changed if k in allowed]


def _dotted(config, key):
    section, _, name = key.partition(".")
    value = config.get(section)
    return value.get(name) if name and isinstance(value, dict) else value


def config_differences(given, stored, sections=("model_name", "model_config", "train_config")):
    """Dotted names of the keys in which two resolved configs differ, within ``sections``.

    Parameters
    ----------
    given, stored : dict
        Resolved configs (:func:`engine.config.resolve_config`).
    sections : sequence of str
        Top-level keys to compare; a dict section is compared key by key.

    Returns
    -------
    list of str
        E.g. ``["model_config.n_layers", "train_config.lr"]``; empty when they agree.
    """
    out = []
    for section in sections:
        a, b = given.get(section), stored.get(section)
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{section}.{k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif a != b:
            out.append(section)
    return out


def train_main(dim, argv=None):
    """Entry point shared by ``train_2d.py`` and ``train_3d.py``."""
    from utils.cli import train_parser

    args = train_parser(dim).parse_args(argv)
    return Trainer(dim, args).run()

