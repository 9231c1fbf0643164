"""The family's VAE: diffusers' ``AutoencoderKL`` (FLUX's class, 16 latent channels, 8x downsampling) at a
tiny width, trained on world images. Resumable: state is saved atomically every N steps.

Loss: pixel MSE + L1 + a small KL term (the KL only keeps the posterior well-behaved; no GAN/LPIPS: the
world is flat colours and simple textures). After training, the latent shift/scale are set from data
so that latents are zero-mean and unit-variance, as FLUX's 0.1159 / 0.3611 are for its VAE.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL
from PIL import Image
from tqdm.auto import tqdm

from ..checkpoints.loading import default_device
from ..conditioning import LATENT_CHANNELS
from ..errors import UnofluxError


@dataclass
class VAETrainConfig:
    steps: int = 3000
    batch_size: int = 8
    learning_rate: float = 1e-3
    kl_weight: float = 1e-6
    checkpoint_every: int = 250
    seed: int = 0
    crop_size: int = 64  # random crops (smaller ones train faster but leave border artefacts at full size)
    block_out_channels: list[int] = field(default_factory=lambda: [16, 32, 64, 64])  # 4 levels: 8x down
    layers_per_block: int = 1
    norm_num_groups: int = 16
    # Fine-tuning an existing VAE (``family tune-vae``): train the decoder only, so the latent space (and
    # every transformer trained on it) stays valid, as Stable Diffusion's ft-MSE decoder did.
    decoder_only: bool = False

    def model_config(self) -> dict:
        """The ``AutoencoderKL`` config; refuses widths that are not 4 levels (FLUX's 8x downsampling, which the
        pipeline's 2x2-packed token grid assumes)."""
        levels = len(self.block_out_channels)
        if levels != 4:
            raise UnofluxError(
                f"the VAE needs 4 levels of widths (FLUX's 8x downsampling), got {levels}: "
                f"{list(self.block_out_channels)}"
            )
        return dict(
            in_channels=3,
            out_channels=3,
            latent_channels=LATENT_CHANNELS,
            down_block_types=["DownEncoderBlock2D"] * levels,
            up_block_types=["UpDecoderBlock2D"] * levels,
            block_out_channels=list(self.block_out_channels),
            layers_per_block=self.layers_per_block,
            norm_num_groups=self.norm_num_groups,
            use_quant_conv=False,
            use_post_quant_conv=False,
            mid_block_add_attention=False,  # convolutions only: the VAE behaves the same at every image size
            scaling_factor=1.0,
            shift_factor=0.0,
        )


def load_square_images(paths: list[Path], size: int) -> torch.Tensor:
    """(N, 3, size, size) uint8: square images as they are, wider ones (two-panels) cut into squares."""
    tiles = []
    for path in paths:
        array = np.asarray(Image.open(path).convert("RGB"))
        for x in range(0, array.shape[1] - size + 1, size):
            tiles.append(array[:size, x : x + size])
    return torch.from_numpy(np.stack(tiles)).permute(0, 3, 1, 2).contiguous()


def load_images_by_size(paths: list[Path]) -> list[torch.Tensor]:
    """Whole images, one (N, 3, H, W) uint8 tensor per size (squares first): two-panels stay whole, so a VAE
    tuned on them learns the statistics of a whole two-panel image (its GroupNorms see both panels at once)."""
    groups: dict[tuple[int, int], list[np.ndarray]] = {}
    for path in paths:
        array = np.asarray(Image.open(path).convert("RGB"))
        groups.setdefault(array.shape[:2], []).append(array)
    order = sorted(groups, key=lambda hw: (hw[0] != hw[1], hw))
    return [torch.from_numpy(np.stack(groups[hw])).permute(0, 3, 1, 2).contiguous() for hw in order]


def to_unit_range(batch: torch.Tensor) -> torch.Tensor:
    return batch.float() / 127.5 - 1.0


def _save_atomic(obj, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train_vae(
    images: torch.Tensor | list[torch.Tensor],
    config: VAETrainConfig,
    work_dir: Path,
    device: torch.device | None = None,
    init: AutoencoderKL | None = None,
) -> AutoencoderKL:
    """Train (or resume from ``work_dir/vae_state.pt``) on ``device`` (a GPU when there is one) and return the
    VAE in eval mode: a new one, or ``init`` fine-tuned (its decoder only with ``config.decoder_only``).
    ``images``: one (N, 3, H, W) tensor, or one per image size (each batch comes from one, chosen in proportion
    to its count; crops keep its aspect ratio). Batches, crops and noise come from one CPU generator, so a
    run's data does not depend on the device."""
    device = torch.device(device or default_device())
    work_dir.mkdir(parents=True, exist_ok=True)
    state_path = work_dir / "vae_state.pt"
    torch.manual_seed(config.seed)
    vae = (AutoencoderKL(**config.model_config()) if init is None else init.float()).to(device)
    trained = vae.decoder if config.decoder_only else vae
    vae.requires_grad_(False)
    trained.requires_grad_(True)
    groups = [g.to(device) for g in ([images] if isinstance(images, torch.Tensor) else images)]
    counts = torch.tensor([len(g) for g in groups], dtype=torch.float)
    optimizer = torch.optim.AdamW(trained.parameters(), lr=config.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min(1.0, (s + 1) / 100) * 0.5 * (1 + math.cos(math.pi * min(s, config.steps) / config.steps)),
    )
    generator = torch.Generator().manual_seed(config.seed)
    step = 0
    if state_path.is_file():
        state = torch.load(state_path, weights_only=False, map_location="cpu")  # the generator state stays on the CPU
        vae.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        generator.set_state(state["generator"])
        step = state["step"]
    vae.train()
    if config.decoder_only:
        vae.encoder.eval()
    bar = tqdm(total=config.steps, initial=step, desc="VAE decoder" if config.decoder_only else "VAE")
    while step < config.steps:
        images = groups[0] if len(groups) == 1 else groups[torch.multinomial(counts, 1, generator=generator).item()]
        index = torch.randint(len(images), (config.batch_size,), generator=generator).to(device)
        height, width = images.shape[-2:]
        crop_h, crop_w = min(config.crop_size, height), min(config.crop_size * width // height, width)
        if height == width:  # squares: one draw for both offsets, as every earlier run drew them
            top, left = torch.randint(width - crop_w + 1, (2,), generator=generator).tolist()
        else:
            top, left = (
                torch.randint(n, (1,), generator=generator).item() for n in (height - crop_h + 1, width - crop_w + 1)
            )
        x = to_unit_range(images[index, :, top : top + crop_h, left : left + crop_w])
        with torch.set_grad_enabled(not config.decoder_only):
            posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator).to(device)
        recon = vae.decode(z).sample
        loss = (recon - x).pow(2).mean() + 0.1 * (recon - x).abs().mean() + config.kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        step += 1
        bar.update()
        if step % 25 == 0:  # reading the loss waits for the GPU: not every step
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % config.checkpoint_every == 0 or step == config.steps:
            _save_atomic(
                {
                    "model": vae.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict(),
                    "generator": generator.get_state(),
                    "step": step,
                    "config": asdict(config),
                },
                state_path,
            )
    bar.close()
    return vae.cpu().eval().requires_grad_(False)


@torch.no_grad()
def calibrate_and_measure(vae: AutoencoderKL, images: torch.Tensor, count: int = 512, calibrate: bool = True) -> dict:
    """Set shift/scale so latents are zero-mean unit-variance (unless ``calibrate`` is false: a fine-tuned
    decoder keeps the latent space, and its normalisation, that transformers were trained on); return PSNR
    on ``count`` images."""
    x = to_unit_range(images[:count])
    device = next(vae.parameters()).device
    latents = torch.cat([vae.encode(chunk.to(device)).latent_dist.mode() for chunk in x.split(64)])
    if calibrate:
        shift, scale = latents.mean().item(), 1.0 / latents.std().item()
        vae.register_to_config(shift_factor=round(shift, 4), scaling_factor=round(scale, 4))
    recon = torch.cat([vae.decode(chunk).sample.cpu() for chunk in latents.split(64)]).clamp(-1, 1)
    mse = ((recon - x) / 2).pow(2).mean(dim=(1, 2, 3))
    psnr = (10 * torch.log10(1 / mse)).mean().item()
    return {
        "psnr_db": round(psnr, 2),
        "shift_factor": vae.config.shift_factor,
        "scaling_factor": vae.config.scaling_factor,
    }
