"""C-WGAN-GP for the classes with more than 1000 images (REFERENCE.md, "C-WGAN-GP for
classes with more than 1000 images").

Three players: one conditional generator G(z, y) over all the classes routed to it, a
WGAN-GP critic D, and a classifier trained beforehand on real images only
(``hemaflow.synth.real_classifier``) and frozen while the GAN trains. The generator minimizes
``-D(G(z, y)) + lambda_class * CE(classifier(G(z, y)), y)``: the critic judges realism,
the classifier whether the image shows the class asked for. As in the paper the critic is
unconditional by default; ``critic_conditioning="projection"`` makes it a projection
critic (Miyato & Koyama 2018), which also penalizes a fake that is realistic but of the
wrong class's distribution (the classifier only asks that the class be recognisable).

The trainer runs on ``hemaflow.train.loop.train_and_save`` (atomic checkpoints with every
RNG state, resume bit for bit on CPU, the loss CSV, the model file written once complete).
Batches of real images are class-balanced (``hemaflow.train.labelled.BalancedRows``):
each draws its classes uniformly, then images within each class, under a random symmetry
of the square. The generator keeps an exponential moving average of its weights
(``ema_decay``, with stylegan2-ada's ramp-up: the half-life is at most ``ema_rampup``
times the iterations so far), and the model file holds that average. With ``snapshots``
> 0 it also keeps copies of the average at evenly spaced iterations
(``hemaflow.train.snapshots``), in its checkpoints and the model file, for the curve of
quality against training time (``hemaflow.synth.curve``)."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hemaflow.models.cwgan import CRITIC_CONDITIONINGS, CWGANGenerator, ResidualCritic
from hemaflow.models.dcgan import DCCritic, DCGenerator
from hemaflow.models.fewshot import diff_augment, parse_policy
from hemaflow.models.projected import CRITICS, ProjectedCritic, check_projected_option
from hemaflow.synth.real_classifier import check_image_size, load_real_classifier
from hemaflow.train.amp import MixedPrecision
from hemaflow.train.ema import RAMPUP, MovingAverage
from hemaflow.train.labelled import BalancedRows, check_labelled
from hemaflow.train.loop import (
    EXTENDABLE,
    RESUMABLE_CHANGES,
    ImageSampler,
    fingerprint,
    from_model_range,
    resize_float,
    resize_images,
    resolve_device,
    seed_everything,
    set_requires_grad,
    train_and_save,
    training_device,
)
from hemaflow.train.losses import (
    gradient_penalty,
    hinge_critic_loss,
    mode_seeking_loss,
    r1_penalty,
    wgan_generator_loss,
    wgan_gp_critic_loss,
)
from hemaflow.train.model_file import read_model_file
from hemaflow.train.options import TrainingOptions
from hemaflow.train.snapshots import Snapshots, module_copy

CWGAN_LOSS_COLUMNS = (
    "iteration",
    "loss_G",
    "loss_G_adv",
    "loss_G_class",
    "loss_G_ms",
    "loss_twin",
    "loss_D",
    "gp",
    "wasserstein",
    "class_acc_fake",
    "lr",
    "seconds",
)
CWGAN_FILE_KIND = "cwgan"
# logged as of the classifier term's latest (lazy) step
CLASS_TERMS = ("loss_G_class", "class_acc_fake", "loss_twin")
ARCHITECTURES = ("residual", "dcgan")
LOSSES = ("wgan", "hinge")
PENALTIES = ("gp", "r1")


# ------------------------------------------------------------------------------- options


@dataclass(frozen=True)
class CWGANOptions(TrainingOptions):
    """Everything that defines a C-WGAN-GP run. Defaults are the paper's values at the
    ``paper`` preset's scale (64 px): WGAN-GP with lambda 10, 5 critic steps per generator
    step, Adam 1e-4 with betas (0, 0.9), generator blocks (2, 4), critic blocks (2, 4, 4),
    width 64. ``iterations`` counts generator steps. ``amp`` (float16 autocast +
    GradScaler) is used only on CUDA; the gradient penalty stays in float32. ``cpu_bf16``:
    bfloat16 autocast on the CPU (``hemaflow.train.amp``), the losses in float32.
    ``lambda_ms``: weight of MSGAN's mode-seeking term in the generator's loss (0 = off):
    the generator's batch is drawn as pairs of one class and two noise vectors, and the
    term charges a pair for images closer together than their noise. ``twin_classifier``:
    TAC-GAN's twin classifier (Gong et al. 2019). The guide's cross-entropy alone also
    rewards images that are easy to classify, far from every other class, which narrows
    each class (AC-GAN's known loss of diversity). The twin, a copy of the guide trained on
    the generator's own images and the classes asked for, estimates how easy they are
    already; the generator's loss subtracts its cross-entropy with the same weight, which
    cancels that reward and leaves the guide's pull towards the real class. ``snapshots``:
    how many copies of G_ema to keep, at evenly spaced generator steps up to the last
    (0 = none). ``minibatch_std``: a group size (>= 2) for ProGAN's minibatch standard
    deviation in the ``dcgan`` critic (0 = off). ``critic="projected"``: the critic is
    ``hemaflow.models.projected.ProjectedCritic`` (``projected_taps``, ``projected_input``;
    docs/synthesis.md has what it did at the CPU budget)."""

    image_size: int = 64
    z_dim: int = 128
    embed_dim: int = 32
    width: int = 64
    g_blocks_low: int = 2
    g_blocks_high: int = 4
    d_blocks_1: int = 2
    d_blocks_2: int = 4
    d_blocks_3: int = 4
    critic_conditioning: str = "none"
    architecture: str = "residual"
    critic: str = "own"
    minibatch_std: int = 0
    projected_taps: int = 3
    projected_input: int = 128
    loss: str = "wgan"
    penalty: str = "gp"
    lambda_gp: float = 10.0
    r1_gamma: float = 1.0
    r1_every: int = 1
    diffaugment: str = ""
    lr_critic: float = 0.0
    n_critic: int = 5
    lambda_class: float = 1.0
    class_every: int = 1
    lambda_ms: float = 0.0
    twin_classifier: bool = False
    lr: float = 1e-4
    beta1: float = 0.0
    beta2: float = 0.9
    ema_decay: float = 0.999
    ema_rampup: float = RAMPUP
    batch_size: int = 64
    iterations: int = 100_000
    checkpoint_every: int = 2_500
    log_every: int = 100
    snapshots: int = 0
    seed: int = 0
    amp: bool = True
    cpu_bf16: bool = False

    KIND: ClassVar[str] = "cwgan"
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "critic_conditioning": CRITIC_CONDITIONINGS,
        "architecture": ARCHITECTURES,
        "critic": CRITICS,
        "loss": LOSSES,
        "penalty": PENALTIES,
    }
    POSITIVE: ClassVar[frozenset[str]] = frozenset(
        {
            "z_dim",
            "embed_dim",
            "width",
            "n_critic",
            "r1_every",
            "class_every",
            "projected_taps",
            "projected_input",
            "lr",
            "batch_size",
            "iterations",
            "checkpoint_every",
            "log_every",
        }
    )
    NON_NEGATIVE: ClassVar[frozenset[str]] = frozenset(
        {
            "g_blocks_low",
            "g_blocks_high",
            "d_blocks_1",
            "d_blocks_2",
            "d_blocks_3",
            "lambda_gp",
            "r1_gamma",
            "lambda_class",
            "lambda_ms",
            "lr_critic",
            "snapshots",
        }
    )
    FRACTIONS: ClassVar[frozenset[str]] = frozenset({"beta1", "beta2", "ema_decay", "ema_rampup"})

    def check_field(self, name: str, value: Any) -> str | None:
        if name == "image_size":
            return check_image_size(value)
        if name == "diffaugment":
            try:
                parse_policy(value)
            except ValueError as error:
                return str(error)
        if problem := check_projected_option(name, value):
            return problem
        if name == "minibatch_std" and (value < 0 or value == 1):
            return "must be 0 (off) or a group size >= 2"
        return super().check_field(name, value)

    @property
    def generator_blocks(self) -> tuple[int, int]:
        return (self.g_blocks_low, self.g_blocks_high)

    @property
    def critic_blocks(self) -> tuple[int, int, int]:
        return (self.d_blocks_1, self.d_blocks_2, self.d_blocks_3)


CWGAN_PRESETS: dict[str, CWGANOptions] = {
    # 64 px on a 2-core CPU: the DCGAN-shaped networks (hemaflow.models.dcgan, width 32:
    # 1.0 M generator and 0.7 M critic parameters), hinge loss with one critic step per
    # generator step, a lazy R1 penalty and a lazy classifier term (every 4th step, weighted
    # up by 4), DiffAugment colour and translation, Adam 2e-4 (0.5, 0.999), bfloat16 autocast
    # (0.32 s per step at one thread beside another run, against 0.48 in float32, with the
    # same quality per step), so 1,200 steps take about 6-7 minutes; 60 minutes buy about
    # 11,000 steps and KID 0.12 (docs/synthesis.md: the curve of quality against time).
    # The residual networks of the paper at width 16 with 5 critic steps took 0.7-2 s per
    # step and drew blobs after 300.
    "cpu": CWGANOptions(
        image_size=64,
        architecture="dcgan",
        width=32,
        z_dim=64,
        loss="hinge",
        penalty="r1",
        r1_gamma=0.1,
        r1_every=4,
        n_critic=1,
        lambda_class=0.3,
        class_every=4,
        lr=2e-4,
        beta1=0.5,
        beta2=0.999,
        diffaugment="color,translation",
        batch_size=32,
        iterations=1_200,
        checkpoint_every=200,
        log_every=20,
        snapshots=5,
        cpu_bf16=True,
    ),
    # the paper's networks at 64 px: width 64, blocks (2, 4) / (2, 4, 4), 100k generator
    # steps of 64 images; GPU
    "paper": CWGANOptions(
        image_size=64,
        width=64,
        batch_size=64,
        iterations=100_000,
        checkpoint_every=2_500,
        log_every=100,
        snapshots=5,
    ),
}
CWGANOptions.PRESETS = CWGAN_PRESETS


# ---------------------------------------------------------------------------- networks


def build_generator(options: CWGANOptions, n_classes: int) -> CWGANGenerator | DCGenerator:
    if options.architecture == "dcgan":
        return DCGenerator(
            n_classes, z_dim=options.z_dim, image_size=options.image_size, width=options.width
        )
    return CWGANGenerator(
        n_classes,
        z_dim=options.z_dim,
        image_size=options.image_size,
        width=options.width,
        embed_dim=options.embed_dim,
        blocks=options.generator_blocks,
    )


def build_critic(
    options: CWGANOptions, n_classes: int
) -> ResidualCritic | DCCritic | ProjectedCritic:
    projection = n_classes if options.critic_conditioning == "projection" else 0
    if options.critic == "projected":
        return ProjectedCritic(
            image_size=options.image_size,
            width=options.width,
            n_classes=projection,
            taps=options.projected_taps,
            input_side=options.projected_input,
            seed=options.seed,
        )
    if options.architecture == "dcgan":
        return DCCritic(
            image_size=options.image_size,
            width=options.width,
            n_classes=projection,
            minibatch_std=options.minibatch_std,
        )
    return ResidualCritic(
        1,
        image_size=options.image_size,
        width=options.width,
        blocks=options.critic_blocks,
        n_classes=projection,
    )


# ------------------------------------------------------------------------------- the GAN


class CWGANModel(MixedPrecision):
    """G, its moving average G_ema, the critic D, the frozen classifier, optimizers and
    gradient scalers, the snapshots of G_ema taken so far, and one training iteration
    (``n_critic`` critic steps, then one generator step), with ``twin_classifier`` the twin
    and its optimizer (one step on the generator's batch after each step of the guide's
    term)."""

    SCALERS: ClassVar[tuple[str, ...]] = ("scaler_G", "scaler_D", "scaler_twin")

    def __init__(
        self,
        options: CWGANOptions,
        n_classes: int,
        classifier: nn.Module,
        class_map: torch.Tensor,
        device: torch.device,
        rng: np.random.Generator,
    ):
        self.options = options
        self.n_classes = n_classes
        self.init_amp(device, options.amp, options.cpu_bf16)
        self.rng = rng
        self.sampler: ImageSampler | None = None  # set before training
        self.balanced: BalancedRows | None = None
        self.G = build_generator(options, n_classes).to(device)
        self.D = build_critic(options, n_classes).to(device)
        self.ema = MovingAverage(self.G, options.ema_decay, options.ema_rampup)
        self.G_ema = self.ema.average
        self.classifier = classifier.to(device).eval()
        set_requires_grad([self.classifier], False)
        self.class_map = class_map.to(device)
        betas = (options.beta1, options.beta2)
        self.optimizer_G = torch.optim.Adam(self.G.parameters(), lr=options.lr, betas=betas)
        # the twin starts as the guide (eval mode: its batch-norm statistics stay the real
        # images'); only its weights learn
        self.twin: nn.Module | None = None
        if options.twin_classifier and options.lambda_class > 0:
            self.twin = copy.deepcopy(self.classifier)
            set_requires_grad([self.twin], True)
            self.optimizer_twin = torch.optim.Adam(
                self.twin.parameters(), lr=options.lr, betas=betas
            )
        lr_critic = options.lr_critic or options.lr
        self.optimizer_D = torch.optim.Adam(self.D.parameters(), lr=lr_critic, betas=betas)
        self.augment = options.diffaugment if parse_policy(options.diffaugment) else ""
        self.snapshots = Snapshots(options.iterations, options.snapshots)
        # the lazy classifier term's latest values, logged on the steps between
        self.class_terms = dict.fromkeys(CLASS_TERMS, float("nan"))

    def modules(self) -> list[nn.Module]:
        # the classifier stays in eval mode (no dropout), G_ema is never run in training
        return [self.G, self.D]

    def _z(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.options.z_dim, device=self.device)

    def critic(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The critic's score of ``x`` seen through the differentiable augmentation."""
        return self.D(diff_augment(x, self.augment) if self.augment else x, y)

    def train_iteration(self) -> dict[str, torch.Tensor]:
        o = self.options
        amp = self.autocast()
        totals = {"loss_D": 0.0, "gp": 0.0, "wasserstein": 0.0}
        # lazy regularization (stylegan2): the R1 penalty and the classifier's term every
        # r1_every / class_every generator steps, weighted up by as much
        step = self.ema.steps
        r1_now = o.penalty == "r1" and o.r1_gamma > 0 and step % o.r1_every == 0
        class_now = o.lambda_class > 0 and step % o.class_every == 0
        for _ in range(o.n_critic):
            rows, classes = self.balanced.draw(self.rng, o.batch_size)
            real = self.sampler.sample_rows(self.rng, rows)
            y = torch.from_numpy(classes).to(self.device)
            with torch.no_grad(), amp:
                fake = self.G(self._z(o.batch_size), y)
            fake = fake.float()
            self.optimizer_D.zero_grad(set_to_none=True)
            if r1_now:
                real = real.detach().requires_grad_(True)
            with amp:
                scores_real, scores_fake = self.critic(real, y), self.critic(fake, y)
            wasserstein = scores_real.float().mean() - scores_fake.float().mean()
            if o.loss == "hinge":
                loss_D = hinge_critic_loss(scores_real, scores_fake)
            else:
                loss_D = wgan_gp_critic_loss(scores_real, scores_fake)
            if r1_now:
                gp = r1_penalty(scores_real, real, o.r1_gamma * o.r1_every)
            elif o.penalty == "gp" and o.lambda_gp > 0 and o.n_critic > 0:
                # real and fake of a pair share their class, so a projection critic
                # sees one label along the line between them
                gp = gradient_penalty(lambda x, y=y: self.critic(x, y), real, fake, o.lambda_gp)
            else:
                gp = torch.zeros((), device=self.device)
            self.optimizer_step(loss_D + gp, self.optimizer_D, self.scaler_D)
            totals["loss_D"] = totals["loss_D"] + loss_D.detach() / o.n_critic
            totals["gp"] = totals["gp"] + gp.detach() / o.n_critic
            totals["wasserstein"] = totals["wasserstein"] + wasserstein.detach() / o.n_critic

        y = torch.from_numpy(self.rng.integers(0, self.n_classes, size=o.batch_size))
        half = o.batch_size // 2 if o.lambda_ms > 0 else 0
        y[half : 2 * half] = y[:half].clone()  # mode seeking: rows k and k + half pair up
        y = y.to(self.device)
        z = self._z(o.batch_size)
        set_requires_grad([self.D], False)
        self.optimizer_G.zero_grad(set_to_none=True)
        twin_now = class_now and self.twin is not None
        if twin_now:
            set_requires_grad([self.twin], False)
        with amp:
            fake = self.G(z, y)
            loss_adv = wgan_generator_loss(self.critic(fake, y))
            if class_now:
                size = self.classifier.image_size
                seen = resize_float(fake, (size, size))
                logits = self.classifier(seen).float()
                if twin_now:
                    twin_logits = self.twin(seen).float()
        loss_G = loss_adv
        if class_now:
            target = self.class_map[y]
            loss_class = F.cross_entropy(logits, target)
            terms = {
                "loss_G_class": loss_class,
                "class_acc_fake": (logits.detach().argmax(dim=1) == target).float().mean(),
            }
            if twin_now:
                # TAC-GAN: the guide's term less the twin's, on the same images
                terms["loss_twin"] = loss_twin = F.cross_entropy(twin_logits, target)
                loss_class = loss_class - loss_twin
            loss_G = loss_adv + o.lambda_class * o.class_every * loss_class
            # detached tensors, not floats: no device sync on the hot path (the loop
            # converts what it logs; the checkpoint stores floats)
            self.class_terms |= {name: value.detach() for name, value in terms.items()}
        if half:
            pair = slice(half, 2 * half)
            loss_ms = mode_seeking_loss(fake[:half], fake[pair], z[:half], z[pair])
            loss_G = loss_G + o.lambda_ms * loss_ms
        else:  # off: no term (0 in the log)
            loss_ms = torch.zeros((), device=self.device)
        self.optimizer_step(loss_G, self.optimizer_G, self.scaler_G)
        set_requires_grad([self.D], True)
        if twin_now:
            self._twin_step(seen.detach(), target)
        self.ema.update()
        if self.snapshots.due(self.ema.steps):
            self.snapshots.add(self.ema.steps, module_copy(self.G_ema))
        # the classifier's term as of its latest step (nan before the first; without a twin
        # its column stays empty); tensors or floats, the loop takes float() of what it logs
        terms = dict(self.class_terms)
        if self.twin is None:
            del terms["loss_twin"]
        return {
            "loss_G": loss_G.detach(),
            "loss_G_adv": loss_adv.detach(),
            "loss_G_ms": loss_ms.detach(),
            **totals,
            **terms,
        }

    def _twin_step(self, seen: torch.Tensor, target: torch.Tensor) -> None:
        """One step of the twin on the generator's images (already at the classifiers'
        size, detached) and the classes they were asked for."""
        set_requires_grad([self.twin], True)
        self.optimizer_twin.zero_grad(set_to_none=True)
        with self.autocast():
            logits = self.twin(seen).float()
        self.optimizer_step(F.cross_entropy(logits, target), self.optimizer_twin, self.scaler_twin)

    def _parts(self) -> tuple[str, ...]:
        twin = ("twin", "optimizer_twin") if self.twin is not None else ()
        return ("G", "G_ema", "D", "optimizer_G", "optimizer_D", *twin)

    def state_dict(self) -> dict[str, Any]:
        state = {name: getattr(self, name).state_dict() for name in self._parts()}
        state |= self.scaler_state()
        state["ema_steps"] = self.ema.steps
        state["snapshots"] = self.snapshots.state_dict()
        state["class_terms"] = {name: float(value) for name, value in self.class_terms.items()}
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        missing = [name for name in self._parts() if name not in state]
        if missing:
            raise ValueError(f"the checkpoint has no {', '.join(missing)}: written by another run")
        for name in self._parts():
            getattr(self, name).load_state_dict(state[name])
        self.load_scaler_state(state)
        self.ema.steps = int(state["ema_steps"])
        self.snapshots.load_state_dict(state.get("snapshots", []), self.ema.steps)
        self.class_terms |= state.get("class_terms", {})


def _classifier_fingerprint(net: nn.Module) -> str:
    return fingerprint(*[t.detach().cpu().numpy() for t in net.state_dict().values()])


def train_cwgan(
    images: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    classifier_path: str | Path,
    options: CWGANOptions,
    state_dir: str | Path,
    out_model: str | Path,
    log_csv: str | Path | None = None,
    device: str | None = None,
    max_iterations_this_run: int | None = None,
) -> dict[str, Any]:
    """Train ONE conditional C-WGAN-GP over the classes routed to it (``class_names``;
    ``labels`` index them) on uint8 NHWC real images (resized to ``options.image_size``
    if needed), with the frozen real-data classifier at ``classifier_path`` (from
    ``train_real_classifier``; its classes may be a superset, matched by name).

    Checkpoints go to ``state_dir`` every ``options.checkpoint_every`` generator steps
    (and at the end); a run finding one there resumes from it, and one written with other
    options, classes, classifier or images is refused. ``iterations`` and ``snapshots``
    may grow: nothing in a step depends on how many follow, so a finished run asked for
    more steps trains on from its last checkpoint (its snapshots so far are kept; one that
    the new spacing wants before that checkpoint is refused as missing). The run stops after
    ``max_iterations_this_run`` steps if given (as if killed: no model written);
    otherwise it writes ``out_model`` (options, class_names, G_ema, iterations, and the
    snapshots of G_ema: a list of ``{"iteration", "state"}``) atomically. Returns
    ``train_and_save``'s summary."""
    where = "train_cwgan"
    if not isinstance(options, CWGANOptions):
        raise ValueError(f"{where}: options must be CWGANOptions, got {type(options)}")
    images, labels, names = check_labelled(images, labels, class_names, where)
    classifier_path = Path(classifier_path)
    if not classifier_path.is_file():
        raise FileNotFoundError(f"{where}: classifier_path {classifier_path} does not exist")
    torch_device = training_device(device, "cwgan training")
    # before seeding: building the classifier draws (discarded) initial weights
    classifier, classifier_names, _ = load_real_classifier(classifier_path, torch_device)
    missing = [name for name in names if name not in classifier_names]
    if missing:
        raise ValueError(
            f"{where}: class {', '.join(repr(m) for m in missing)} is not among the classes "
            f"of the classifier {classifier_path} ({', '.join(classifier_names)})"
        )
    class_map = torch.tensor([classifier_names.index(name) for name in names])
    images = resize_images(images, options.image_size)

    rng = seed_everything(options.seed)
    model = CWGANModel(options, len(names), classifier, class_map, torch_device, rng)
    model.sampler = ImageSampler(images, torch_device)
    model.balanced = BalancedRows(labels, len(names))
    return train_and_save(
        model,
        kind=CWGAN_FILE_KIND,
        options=options,
        run_options={
            **asdict(options),
            "class_names": names,
            "classifier": _classifier_fingerprint(classifier),
        },
        total_iterations=options.iterations,
        data_fingerprint=fingerprint(images, labels),
        rng=rng,
        device=torch_device,
        state_dir=state_dir,
        out_model=out_model,
        log_csv=log_csv,
        loss_columns=CWGAN_LOSS_COLUMNS,
        lr_of=lambda: model.optimizer_G.param_groups[0]["lr"],
        max_iterations_this_run=max_iterations_this_run,
        resumable_changes=RESUMABLE_CHANGES | EXTENDABLE,
        model_file=lambda summary: {
            "kind": CWGAN_FILE_KIND,
            "options": asdict(options),
            "class_names": names,
            "G_ema": model.G_ema.state_dict(),
            "iterations": summary["iterations"],
            "snapshots": model.snapshots.state_dict(),
        },
    )


# ------------------------------------------------------------------------------ inference


def load_cwgan(
    path: str | Path, device: str | None = None
) -> tuple[CWGANGenerator, list[str], CWGANOptions]:
    """The averaged generator (eval mode, on ``device``; default CUDA if available), its
    class names and options, from a file written by ``train_cwgan``."""
    payload, options = read_model_file(
        path, CWGAN_FILE_KIND, CWGANOptions, required=("class_names", "G_ema")
    )
    names = list(payload["class_names"])
    return _generator(options, names, payload["G_ema"], device), names, options


def _generator(
    options: CWGANOptions, names: Sequence[str], state: Mapping[str, Any], device: str | None
) -> CWGANGenerator | DCGenerator:
    generator = build_generator(options, len(names))
    generator.load_state_dict(state)
    return generator.to(resolve_device(device)).eval()


def load_cwgan_snapshots(
    path: str | Path, device: str | None = None
) -> tuple[list[tuple[int, CWGANGenerator | DCGenerator]], list[str], CWGANOptions]:
    """(iteration, averaged generator) of every snapshot in a file written by
    ``train_cwgan`` (``options.snapshots`` > 0), by ascending iteration, with the class
    names and options; a file without snapshots gives its final generator alone, at its
    last iteration. Generators in eval mode, on ``device`` (default CUDA if available)."""
    payload, options = read_model_file(
        path,
        CWGAN_FILE_KIND,
        CWGANOptions,
        required=("class_names", "G_ema", "iterations"),
        what="load_cwgan_snapshots",
    )
    names = list(payload["class_names"])
    taken = payload.get("snapshots") or [
        {"iteration": payload["iterations"], "state": payload["G_ema"]}
    ]
    generators = [
        (int(snapshot["iteration"]), _generator(options, names, snapshot["state"], device))
        for snapshot in sorted(taken, key=lambda snapshot: snapshot["iteration"])
    ]
    return generators, names, options


@torch.no_grad()
def generate_cwgan(
    generator: CWGANGenerator, class_index: int, n: int, seed: int, batch_size: int = 256
) -> np.ndarray:
    """``n`` uint8 NHWC images of class ``class_index`` (an index into the model's
    class_names), in eval mode. The latent vectors come from a local CPU
    ``torch.Generator`` seeded with ``seed``, so the images depend on the seed only (not
    on the global RNG, the batch size or, up to float rounding, the device)."""
    where = "generate_cwgan"
    for name, value, low in (("n", n, 0), ("batch_size", batch_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
            raise ValueError(f"{where}: {name} must be an int >= {low}, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise ValueError(f"{where}: seed must be an int, got {seed!r}")
    n_classes = generator.n_classes
    if (
        isinstance(class_index, bool)
        or not isinstance(class_index, int | np.integer)
        or not 0 <= class_index < n_classes
    ):
        raise ValueError(
            f"{where}: class_index must be an int in [0, {n_classes}), got {class_index!r}"
        )
    device = next(generator.parameters()).device
    size = generator.image_size
    z = torch.randn(int(n), generator.z_dim, generator=torch.Generator().manual_seed(int(seed)))
    out = np.empty((int(n), size, size, 3), np.uint8)
    was_training = generator.training
    generator.eval()
    try:
        for begin in range(0, int(n), int(batch_size)):
            chunk = z[begin : begin + int(batch_size)].to(device)
            y = torch.full((len(chunk),), int(class_index), dtype=torch.long, device=device)
            images = generator(chunk, y).float().clamp(-1, 1)
            out[begin : begin + len(chunk)] = from_model_range(images).cpu().numpy()
    finally:
        generator.train(was_training)
    return out
