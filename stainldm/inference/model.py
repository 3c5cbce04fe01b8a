"""A trained model ready to stain: loading, input normalisation and canvas sampling.

    model = StainModel.load("runs/ldm", device="cuda", precision="bf16")
    outs = model.stain_batch([x1, x2], StainConfig(steps=10), seeds=[3, 4])  # [(K, 3, H1, W1), (K, 3, H2, W2)]

A canvas (a tissue region read at the model's mpp) is sampled on one latent canvas
(:mod:`stainldm.inference.canvas`): noise drawn once per canvas from its seed, overlapping windows
predicted in batches and fused at every denoising step, tiled decoding with blending. Several
canvases (and the K samples of each) are sampled together: their windows share network calls, which
keeps a GPU busy when each TMA core is a single window. The windows are chosen by the network's
cost (:func:`~stainldm.inference.canvas.choose_window`), which counts attention.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from stainldm.device import autocast, bf16_supported, resolve_precision
from stainldm.errors import CheckpointError, InputError
from stainldm.inference.canvas import WindowCost, axis_window, choose_window, decode_tiled, window_grid
from stainldm.inference.config import StainConfig
from stainldm.inference.sampling import WindowDenoiser, predict_baseline
from stainldm.seeds import Stream, derive_seed
from stainldm.wsi.channels import missing_channels, select_channels
from stainldm.wsi.metadata import default_channel_names
from stainldm.wsi.slide import SlideReader

SKIP_MARGIN_PX = 32  # windows farther than this from tissue are skipped (beyond the decoder's reach)
#: the sampling fields of :class:`StainConfig` a model.json's ``stain_defaults`` may set
SAMPLING_KEYS = ("sampler", "steps", "guidance", "eta")
ATTENTION_BUDGET = 2 << 30  # bytes the math attention path may hold per call (SDPA needs no budget)


class StainModel:
    """A trained ldm (with its autoencoder) or baseline, ready to stain."""

    def __init__(self, kind: str, meta: dict, net: torch.nn.Module, ae: torch.nn.Module | None, path: Path,
                 device: torch.device, precision: str = "fp32"):
        self.kind, self.meta, self.net, self.ae, self.path, self.device = kind, meta, net, ae, path, device
        self.precision = precision
        self.sdpa = True  # the models are built with SDPA attention
        self.in_channels = int(meta["in_channels"])
        #: the unstained channels' names the model was trained on (empty for models trained before)
        self.channel_names = tuple(meta.get("channel_names") or ())
        #: sampling settings chosen for this model (model.json ``stain_defaults``, from its sweep of
        #: benchmarks/steps.py): what staining uses where the caller does not say
        self.stain_defaults = {k: v for k, v in (meta.get("stain_defaults") or {}).items() if k in SAMPLING_KEYS}
        self.mpp = float(meta["mpp"]) if meta.get("mpp") else None
        self.tile_px = int(meta["tile_px"])
        stats = meta["input_stats"]
        self.low = torch.tensor(stats["low"], dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.high = torch.tensor(stats["high"], dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.f = int(meta.get("downsampling", 1)) if kind == "ldm" else 1
        if kind == "ldm":
            self.multiple = 2 ** (len(meta["config"]["denoiser"]["channels"]) - 1)
            self.latent_scale = float(meta["latent_scale"])
        else:
            self.multiple = 16  # BasicUNet: four 2× poolings
            self.latent_scale = 1.0
        self._cost: WindowCost | None = None

    def stain_config(self, **given) -> StainConfig:
        """How to stain with this model: the fields ``given`` (None: not given), else the model's
        :attr:`stain_defaults` (sampler, steps, guidance, eta), else :class:`StainConfig`'s."""
        return StainConfig(**{**self.stain_defaults, **{k: v for k, v in given.items() if v is not None}})

    def choose_channels(self, slide: SlideReader, channels: str | None = None) -> SlideReader:
        """The channels of ``slide`` this model stains from, in the order it was trained on.

        Args:
            slide: the open unstained slide.
            channels: names or indices of the slide's channels that stand for the model's inputs, in
                the model's order (a scanner that names them otherwise); None: the slide's channels
                of the names the model was trained on. A slide whose file names no channels, or a
                model that records none, is taken as it is (the channel count is checked later).

        Raises:
            InputError: the slide lacks channels the model was trained on (naming the missing ones
                and the slide's), or ``channels`` names one the slide lacks.
        """
        if channels is not None:
            return select_channels(slide, channels)
        names, have = self.channel_names, tuple(slide.channel_names)
        if not names or have == names or have == default_channel_names(slide.channels):
            return slide
        missing = missing_channels(have, names)
        if missing:
            raise InputError(f"{slide.name}: lacks the channels {', '.join(missing)} that the model was trained on "
                             f"({', '.join(names)}); it has {', '.join(have)}; pass `channels` to say which of its "
                             "channels stand for them, in that order")
        return select_channels(slide, list(names))

    @classmethod
    def load(cls, path: str | Path, *, device: str | torch.device = "cpu", precision: str = "fp32") -> StainModel:
        """Loads an ldm or baseline run folder (or its model.json).

        Args:
            device: where to compute (a resolved device, see :func:`stainldm.device.resolve_device`).
            precision: ``fp32``, ``bf16``, ``fp16`` or ``auto`` (bf16 on a GPU, fp32 on a CPU).

        Raises:
            CheckpointError: missing/corrupt files, or an autoencoder (which cannot stain).
            InputError: a precision the device cannot compute in.
        """
        from stainldm.models.runs import load_run, read_model_json

        path = Path(path)
        device = torch.device(device)
        precision = resolve_precision(precision, device, bf16_supported=bf16_supported(device), where="precision")
        kind = read_model_json(path).get("kind")
        if kind not in ("ldm", "baseline"):  # refused before any weights are read
            folder = path if path.is_dir() else path.parent
            raise CheckpointError(f"{folder}: is a {kind} checkpoint; staining needs an ldm or baseline run")
        run = load_run(path, kind=kind, device=device)
        if not run.meta.get("mpp"):
            raise CheckpointError(f"{run.folder}: model.json does not record the tile mpp it was trained at")
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # a slide's windows have few sizes: pick the fastest kernels
        return cls(run.kind, run.meta, run.model, run.autoencoder, run.folder, device, precision)

    def set_attention(self, *, sdpa: bool) -> None:
        """SDPA attention (the default) or MONAI's math path, in the denoiser and the autoencoder."""
        from stainldm.models._runtime import set_sdpa

        for module in (self.net, self.ae):
            if module is not None:
                set_sdpa(module, sdpa)
        self.sdpa = sdpa

    def autocast(self):
        """The autocast context of this model's precision (a no-op for fp32)."""
        return autocast(self.device, self.precision)

    def normalise(self, u: np.ndarray) -> torch.Tensor:
        """``(H, W, C)`` slide pixels -> ``(1, C, H, W)`` model input in ~[-1, 1]."""
        x = torch.from_numpy(np.ascontiguousarray(u.transpose(2, 0, 1))).to(self.device, torch.float32)[None]
        return ((x - self.low) / (self.high - self.low)).clamp(0, 1.5) * 2 - 1

    # -- geometry -------------------------------------------------------------------------------
    def padded_size(self, h: int, w: int) -> tuple[int, int]:
        """The canvas size (output px) that ``h × w`` is padded to: at least a training tile, a
        multiple of the network's stride."""
        unit = self.f * self.multiple
        out = []
        for n in (h, w):
            pad = max((-n) % unit, self.tile_px - n, 0)
            out.append(n + pad + (-(n + pad)) % unit)
        return out[0], out[1]

    @property
    def window_cost(self) -> WindowCost | None:
        """FLOPs of one denoiser evaluation against the window's area (ldm; None for the baseline),
        counted on the real architecture without computing (meta tensors)."""
        if self.kind != "ldm":
            return None
        if self._cost is None:
            self._cost = _count_window_cost(self.meta, f=self.f, tile=self.tile_px // self.f, multiple=self.multiple)
        return self._cost

    def ldm_windows(self, h: int, w: int, cfg: StainConfig) -> tuple[tuple[int, int], int]:
        """Window size ``(wy, wx)`` and overlap, in latent px, for an ``h × w`` latent canvas.

        The layout that costs the fewest FLOPs (:func:`~stainldm.inference.canvas.choose_window`
        with :attr:`window_cost`): the whole canvas as one window (no borders) when its sides are at
        most ``cfg.single_window_scale`` tiles and attention does not make it dearer, else windows
        of 1–1.5 tiles whose borders move at every step. The overlap is ``cfg.overlap_px`` in latent
        px, at most an eighth of a tile."""
        tile = self.tile_px // self.f
        overlap = max(1, min(math.ceil(cfg.overlap_px / self.f), tile // 8))
        per_call = cfg.batch_size * (1 if cfg.guidance == 1.0 else 2)
        win = choose_window((h, w), tile=tile, overlap=overlap, multiple=self.multiple, cost=self.window_cost,
                            whole_max=int(cfg.single_window_scale * tile), batch=per_call,
                            memory_budget=None if self.sdpa else ATTENTION_BUDGET)
        return win, overlap

    def decode_tiles(self, h: int, w: int) -> tuple[tuple[int, int], int]:
        """Decode tile size ``(th, tw)`` and overlap, in latent px, for an ``h × w`` latent canvas:
        the fewest tiles of 1–1.5× the training tile (the decoder's attention, when it has one,
        grows with the square of the tile's area)."""
        tile = max(self.tile_px // self.f, 16)
        overlap = max(2, tile // 8)
        return tuple(axis_window(n, window=tile, overlap=overlap) for n in (h, w)), overlap

    def windows_per_canvas(self, h: int, w: int, cfg: StainConfig) -> int:
        """Network evaluations per step (per sample) of an ``h × w`` (output px, padded) canvas."""
        if self.kind == "ldm":
            win, overlap = self.ldm_windows(h // self.f, w // self.f, cfg)
            return len(window_grid((h // self.f, w // self.f), window=win, overlap=overlap))
        win = self.baseline_window(h, w, cfg)
        return len(window_grid((h, w), window=win, overlap=cfg.overlap_px))

    def canvases_per_call(self, h: int, w: int, cfg: StainConfig) -> int:
        """How many ``h × w`` (output px, padded) canvases, with their samples, fill one network call
        of ``cfg.batch_size`` windows (at least one)."""
        return max(1, cfg.batch_size // (self.windows_per_canvas(h, w, cfg) * cfg.samples))

    def baseline_window(self, h: int, w: int, cfg: StainConfig) -> tuple[int, int]:
        """Baseline window size ``(wy, wx)`` for an ``h × w`` (output px, padded) canvas: about a
        training tile, the network's stride a divisor, overlapping by ``cfg.overlap_px``."""
        return (axis_window(h, window=self.tile_px, overlap=cfg.overlap_px, multiple=16),
                axis_window(w, window=self.tile_px, overlap=cfg.overlap_px, multiple=16))

    # -- canvases -------------------------------------------------------------------------------
    @torch.no_grad()
    def stain_canvas(self, x: torch.Tensor, cfg: StainConfig, *, seed: int, tissue: np.ndarray | None = None
                     ) -> torch.Tensor:
        """``(1, C_in, H, W)`` input -> ``(K, 3, H, W)`` H&E in [-1, 1] (K = cfg.samples).

        ``tissue``: optional ``(H, W)`` weight, 0 on glass; windows with no tissue near them are not
        run through the network (background skipping) — their pixels are left for the caller to
        paint as glass, and come back as 0 (mid-grey)."""
        return self.stain_batch([x], cfg, seeds=[seed], tissues=[tissue])[0]

    @torch.no_grad()
    def stain_batch(self, xs: list[torch.Tensor], cfg: StainConfig, *, seeds: list[int],
                    tissues: list[np.ndarray | None] | None = None) -> list[torch.Tensor]:
        """Stains several canvases together: :meth:`stain_canvas` of each, their windows (and
        samples) sharing network calls. The canvases are padded to one size, so they should be of
        similar sizes (``stain_slide`` groups them so).

        Returns:
            per canvas, ``(K, 3, H_i, W_i)`` float32 in [-1, 1].
        """
        tissues = tissues if tissues is not None else [None] * len(xs)
        sizes = [tuple(x.shape[-2:]) for x in xs]
        padded = [self.padded_size(*s) for s in sizes]
        hp, wp = max(p[0] for p in padded), max(p[1] for p in padded)
        x = torch.cat([_pad_to(xi, hp, wp) for xi in xs])  # (N, C_in, hp, wp)
        near, shown = [], []
        for (h, w), tissue in zip(sizes, tissues, strict=True):
            n = s = None
            if tissue is not None and (tissue > 0).any():
                import cv2

                s = np.zeros((hp, wp), bool)
                s[:h, :w] = tissue > 0
                k = 2 * SKIP_MARGIN_PX + 1
                n = cv2.dilate(s.view(np.uint8), np.ones((k, k), np.uint8)).astype(bool)
            near.append(n)
            shown.append(s)
        if self.kind == "baseline":
            out = predict_baseline(self, x, cfg, near=near)  # (N, 3, hp, wp)
            return [out[i : i + 1, :, :h, :w].expand(cfg.samples, -1, -1, -1) for i, (h, w) in enumerate(sizes)]
        # one item per canvas and sample: the K samples of a canvas are batched like canvases
        canvas_of = [i for i in range(len(xs)) for _ in range(cfg.samples)]
        item_seeds = [derive_seed(seeds[i], Stream.SAMPLE, k) for i in range(len(xs)) for k in range(cfg.samples)]
        own = [(p[0] // self.f, p[1] // self.f) for p in padded]  # each canvas's latent size alone
        out = self._ldm_batch(x, cfg, canvas_of=canvas_of, seeds=item_seeds, near=near, shown=shown, own=own)
        k = cfg.samples
        return [out[i * k : (i + 1) * k, :, :h, :w] for i, (h, w) in enumerate(sizes)]

    def _ldm_batch(self, x: torch.Tensor, cfg: StainConfig, *, canvas_of: list[int], seeds: list[int],
                   near: list, shown: list, own: list[tuple[int, int]]) -> torch.Tensor:
        """Samples items (a canvas of ``x`` each, with its own seed) -> ``(items, 3, H, W)``.
        ``near``: per canvas, pixels whose windows must run (tissue and a margin); ``shown``: pixels
        the caller keeps (tissue weight > 0), the only ones decoded; ``own``: per canvas, its latent
        size alone, where its noise is what it would be alone."""
        from stainldm.diffusion.samplers import sample as run_sampler

        ldm, f = self.net, self.f
        h, w = x.shape[-2] // f, x.shape[-1] // f
        win, overlap = self.ldm_windows(h, w, cfg)
        denoiser = WindowDenoiser(self, x, cfg, canvas_of=canvas_of, seeds=seeds, near=near, window=win,
                                  overlap=overlap)
        gens = [torch.Generator(device=x.device).manual_seed(s) for s in seeds]
        noise = torch.cat([_noise((ldm.latent_channels, h, w), own[canvas_of[n]], g) for n, g in enumerate(gens)])
        kwargs = {"eta": cfg.eta} if cfg.sampler == "ddim" else {}
        # DDIM's η > 0 noise continues the first item's generator (alone, exactly as if unbatched)
        z0 = run_sampler(cfg.sampler, denoiser, ldm.schedule, noise, steps=cfg.steps, generator=gens[0], **kwargs)
        dec_tile, dec_overlap = self.decode_tiles(h, w)
        outs = []
        for n in range(len(seeds)):
            s = shown[canvas_of[n]]
            keep = None if s is None else torch.from_numpy(s.reshape(h, f, w, f).any(axis=(1, 3)))
            outs.append(decode_tiled(self._decode, z0[n : n + 1], tile=dec_tile, overlap=dec_overlap, scale=f,
                                     keep=keep, batch=self._decode_batch(cfg)).clamp(-1, 1))
        return torch.cat(outs)

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents ``(n, C, h, w)`` (scaled) -> images ``(n, 3, h·f, w·f)`` in ~[-1, 1]."""
        with self.autocast():
            return self.ae.decode(z / self.latent_scale)

    def _decode_batch(self, cfg: StainConfig) -> int:
        """Decode tiles per call: ``batch_size`` on a GPU; one on a CPU, where the decoder's
        full-resolution activations make batches slower per pixel (8 tiles of 80² latent px: 83 µs
        per latent px against 50 µs one at a time, demo model, one thread)."""
        return cfg.batch_size if self.device.type == "cuda" else 1


def _noise(shape: tuple[int, int, int], own_hw: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """``(1, C, h, w)`` N(0, I) noise whose top-left ``own_hw`` is the noise a canvas of that size
    draws alone from ``generator``; the padding of a batch gets further draws."""
    c, h, w = shape
    dev = generator.device
    z = torch.randn((1, c, *own_hw), generator=generator, device=dev)
    if own_hw == (h, w):
        return z
    full = torch.randn((1, c, h, w), generator=generator, device=dev)
    full[:, :, : own_hw[0], : own_hw[1]] = z
    return full


def _pad_to(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Pads ``(1, C, h0, w0)`` at the bottom and right to ``h × w``: reflected, or replicated where
    the canvas is too small to reflect."""
    pad_h, pad_w = h - x.shape[-2], w - x.shape[-1]
    if not (pad_h or pad_w):
        return x
    mode = "reflect" if pad_h < x.shape[-2] and pad_w < x.shape[-1] else "replicate"
    return torch.nn.functional.pad(x, (0, pad_w, 0, pad_h), mode=mode)


def _count_window_cost(meta: dict, *, f: int, tile: int, multiple: int) -> WindowCost:
    """Counts the denoiser's FLOPs (torch's FlopCounterMode, on meta tensors: no compute) for windows
    of ½, 1 and 2 training tiles and fits :class:`WindowCost` through them."""
    from torch.utils.flop_counter import FlopCounterMode

    from stainldm.config import from_dict
    from stainldm.models.ldm import LatentDiffusion, LDMConfig

    cfg = from_dict(LDMConfig, meta["config"], where="ldm")
    with torch.device("meta"):
        net = LatentDiffusion(cfg, in_channels=int(meta["in_channels"]), latent_channels=int(meta["latent_channels"]),
                              downsampling=f).eval()
    sides = sorted({max(multiple, round(tile * s / multiple) * multiple) for s in (0.5, 1.0, 2.0)})
    while len(sides) < 3:
        sides.append(sides[-1] + multiple)
    flops = []
    with torch.no_grad():
        for side in sides:
            z = torch.zeros((1, net.latent_channels, side, side), device="meta")
            cond = net.encode_condition(torch.zeros((1, int(meta["in_channels"]), side * f, side * f), device="meta"))
            with FlopCounterMode(display=False) as counter:
                net(z, torch.zeros(1, dtype=torch.long, device="meta"), cond)
            flops.append(counter.get_total_flops())
    d = cfg.denoiser
    heads = [(c // d.num_head_channels, level) for level, (c, a) in enumerate(zip(d.channels, d.attention_levels, strict=True))
             if a or level == len(d.channels) - 1]  # the middle block always attends
    attention_px2 = max((n / 16**level for n, level in heads), default=0.0)  # (A / 4^l)² tokens² per A²
    return WindowCost.fit([s * s for s in sides], flops, attention_px2=attention_px2)
