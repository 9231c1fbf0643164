"""``unoflux bench``: seconds per step, end-to-end time, peak memory, tokens and FLOP per step of one generation
setting, and with ``--against-reference UNO_CHECKOUT`` the same for bytedance/UNO's own pipeline on the same
weights, interleaved in one run, with the ratios and whether the images match.

Each implementation runs in a fresh worker process (``python -m unoflux.bench``), so a process's peak memory (peak
RSS on CPU, CUDA's max allocated on a GPU) is its own; workers alternate (ours, reference, ours, ...) so a busy
machine slows both alike. Per-step time is the transformer's forward (hooks around it, CUDA synchronised), the
median over the timed runs; warm-up runs are not timed. FLOP per step are counted on one forward at the benchmark's
shapes with ``torch.utils.flop_counter`` (attention included).

``--size tiny|mid`` builds random weights in FLUX's layouts (BFL files, T5/CLIP folders, an XLabs LoRA) so anyone can
compare without real weights: ``mid`` is FLUX's head shape (6 heads of 128, rope axes 16/56/56), 2 double + 4 single
blocks (about 80 M parameters) and a UNO LoRA of rank 128 (UNO's 512 at width 3072, scaled to width 768).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from .errors import UnofluxError
from .options import SamplingOptions

SIZES = {
    "tiny": dict(transformer={}, lora_rank=4),
    "mid": dict(
        transformer=dict(
            num_attention_heads=6,
            attention_head_dim=128,
            axes_dims_rope=[16, 56, 56],
            num_layers=2,
            num_single_layers=4,
        ),
        lora_rank=128,
    ),
}
# dense bf16 peak TFLOP/s by device name (vendor data sheets), for MFU; devices not listed get none
PEAK_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0,
               "RTX 4090": 165.2, "RTX 3090": 71.0}  # fmt: skip


# ------------------------------------------------------------------------------------------------ the weights
def write_random_model(size: str, root: Path, gguf: str | None = None) -> dict:
    """Random weights of ``size`` in the official layouts under ``root`` -> paths and facts for the workers;
    ``gguf``: the transformer also as a GGUF file of that quantization (``paths["gguf"]``)."""
    import transformers

    from .testing import random_uno_lora, save_official_layout, tiny_components

    transformers.utils.logging.disable_progress_bar()  # "Writing model shards" bars
    spec = SIZES[size]
    components = tiny_components(seed=0, **spec["transformer"])
    transformer = components["transformer"]
    lora = random_uno_lora(transformer, rank=spec["lora_rank"], std=0.02)
    paths = save_official_layout(components, root, lora=lora)
    files = {k: v for k, v in vars(paths).items() if v}
    if gguf:
        from .checkpoints.gguf import write_gguf_transformer

        files["gguf"] = str(write_gguf_transformer(transformer, root / f"flux-{gguf}.gguf", gguf))
    return {
        "size": size,
        "paths": files,
        "parameters": sum(p.numel() for p in transformer.parameters()),
        "lora_rank": spec["lora_rank"],
        "lora_parameters": sum(t.numel() for t in lora.values()),
    }


def reference_images(count: int, side: int):
    """Seeded random references (smooth colours), ``side`` x ``side``."""
    import numpy as np
    from PIL import Image

    images = []
    for k in range(count):
        rng = np.random.default_rng(100 + k)
        y, x = np.mgrid[0:side, 0:side] / side
        channels = [np.sin(x * rng.uniform(2, 9) + rng.uniform(0, 6)) * np.cos(y * rng.uniform(2, 9)) for _ in range(3)]
        images.append(Image.fromarray(((np.stack(channels, -1) + 1) * 127.5).astype(np.uint8), "RGB"))
    return images


# ------------------------------------------------------------------------------------------------ measuring
class StepTimer:
    """Wall time of every forward of ``module`` (CUDA synchronised on both sides), and the inputs of its largest
    forward (``last_inputs``: the most image tokens; fast mode's reusing steps run on fewer)."""

    def __init__(self, module, device):
        import torch

        self.device, self.times, self.last_inputs, self._start = torch.device(device), [], None, 0.0
        self._sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        module.register_forward_pre_hook(self._before, with_kwargs=True)
        module.register_forward_hook(self._after)

    def _before(self, module, args, kwargs):
        if self.last_inputs is None or _image_tokens(kwargs) >= _image_tokens(self.last_inputs[1]):
            self.last_inputs = (args, kwargs)
        self._sync()
        self._start = time.perf_counter()

    def _after(self, module, args, output):
        self._sync()
        self.times.append(time.perf_counter() - self._start)


def _image_tokens(kwargs: dict) -> int:
    """Image tokens of a forward's keyword inputs (diffusers' ``hidden_states``, UNO's own model's ``img``)."""
    image = kwargs.get("hidden_states", kwargs.get("img"))
    return 0 if image is None else int(image.shape[1])


def count_flops(module, inputs) -> int:
    """FLOP of one ``module`` forward on ``inputs`` (matmuls and attention, as torch's flop counter counts them)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    register_cpu_attention_flops()
    args, kwargs = inputs
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(*args, **kwargs)
    return int(counter.get_total_flops())


def register_cpu_attention_flops() -> None:
    """torch counts SDPA's CUDA kernels but not its CPU flash kernel; give that one the same formula (2 matmuls of
    L x S x E per head: 4 * B * H * L * S * E)."""
    import torch
    from torch.utils.flop_counter import flop_registry, register_flop_formula

    op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    if op in flop_registry or op.default in flop_registry:
        return

    @register_flop_formula(op)
    def _cpu_attention(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        b, h, length, e = query_shape
        s, ev = key_shape[2], value_shape[3]
        return 2 * b * h * length * s * e + 2 * b * h * length * s * ev


def peak_memory(device) -> tuple[int, str]:
    """(bytes, what): CUDA's max allocated since the last reset, else this process's peak RSS."""
    import torch

    if torch.device(device).type == "cuda":
        return int(torch.cuda.max_memory_allocated()), "CUDA max allocated"
    return peak_rss(), "peak RSS (whole process)"


def peak_rss() -> int:
    """This process's peak resident memory in bytes. Linux's ``VmHWM`` belongs to the address space, which exec
    starts afresh; ``ru_maxrss`` survives fork and exec, so a worker would report its parent's peak (the bench's
    own, from building the random weights) whenever that was higher than its own."""
    import resource

    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # (kB on Linux)


def _timed_runs(generate, timer, runs: int, warmup: int, device) -> dict:
    import torch

    for _ in range(warmup):
        generate()
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    timer.times.clear()
    ends = []
    image = None
    for _ in range(runs):
        start = time.perf_counter()
        image = generate()
        ends.append(time.perf_counter() - start)
    memory, memory_kind = peak_memory(device)
    return {
        "step_s": statistics.median(timer.times),
        "steps_timed": len(timer.times),
        "end_to_end_s": statistics.median(ends),
        "peak_memory_bytes": memory,
        "peak_memory_kind": memory_kind,
        "image": image,
    }


def run_ours(config: dict) -> dict:
    import torch

    from .checkpoints import ModelPaths, load_pipeline

    paths = dict(config["paths"])
    gguf_file = paths.pop("gguf", None)
    if config.get("gguf"):
        paths["flux"] = gguf_file
    pipe = load_pipeline(
        ModelPaths(**paths),
        device=config["device"],
        dtype=config["dtype"],
        use_environment=False,
        fuse_lora=config["fuse_lora"],
        quantize=config.get("quantize"),
        compile_blocks=config.get("compile", False),
    )
    pipe.set_progress_bar_config(disable=True)
    timer = StepTimer(pipe.transformer, config["device"])
    refs = reference_images(config["refs"], config["ref_size"])
    options = dict(width=config["width"], height=config["height"], steps=config["steps"], guidance=config["guidance"],
                   seed=config["seed"], reference_long_side=config["ref_size"], **config.get("speed", {}))  # fmt: skip

    def generate():
        with torch.no_grad():
            return pipe(config["prompt"], refs, **options).images[0]

    result = _timed_runs(generate, timer, config["runs"], config["warmup"], config["device"])
    result["flops_per_step"] = count_flops(pipe.transformer, timer.last_inputs)
    args, kwargs = timer.last_inputs
    result["tokens"] = {"image+references": int(kwargs["hidden_states"].shape[1]),
                        "text": int(kwargs["encoder_hidden_states"].shape[1])}  # fmt: skip
    return result


def run_reference(config: dict) -> dict:
    import os

    os.environ.setdefault("TQDM_DISABLE", "1")
    import torch

    from .uno_reference import (
        ReferenceRunner,
        build_reference_ae,
        build_reference_flux,
        flux_params,
        import_reference,
    )

    if config["device"] != "cpu" or config["dtype"] != "fp32":
        raise UnofluxError("--against-reference runs the reference in float32 on the CPU only (--device cpu)")
    ref = import_reference(Path(config["reference"]).resolve())
    from .testing import TINY_TRANSFORMER, TINY_VAE

    # the configs the weights were written with (as plain values: building the models would cost their memory)
    transformer_config = SimpleNamespace(**{**TINY_TRANSFORMER, **SIZES[config["size"]]["transformer"]})
    vae_config = SimpleNamespace(**TINY_VAE)
    paths = config["paths"]
    model = build_reference_flux(ref, flux_params(ref, transformer_config), paths["flux"], paths["lora"],
                                 SIZES[config["size"]]["lora_rank"])  # fmt: skip
    ae = build_reference_ae(ref, paths["ae"], vae_config)
    t5 = ref.HFEmbedder(paths["t5"], max_length=512, torch_dtype=torch.float32)
    clip = ref.HFEmbedder(paths["clip"], max_length=77, torch_dtype=torch.float32)
    runner = ReferenceRunner(ref, model, ae, t5, clip)
    timer = StepTimer(model, "cpu")
    refs = reference_images(config["refs"], config["ref_size"])

    def generate():
        with torch.no_grad():
            _, image = runner(config["prompt"], refs, config["ref_size"], "d", width=config["width"],
                              height=config["height"], steps=config["steps"], guidance=config["guidance"],
                              seed=config["seed"])  # fmt: skip
        return image

    result = _timed_runs(generate, timer, config["runs"], config["warmup"], "cpu")
    result["flops_per_step"] = count_flops(model, timer.last_inputs)
    return result


def worker(config_path: str, implementation: str, out_png: str) -> None:
    """One implementation's measurement in this fresh process; prints one JSON line."""
    import torch

    config = json.loads(Path(config_path).read_text())
    if config.get("threads"):
        torch.set_num_threads(config["threads"])
    if implementation == "reference":
        result = run_reference(config)
    else:  # "exact": ours with fast mode's switches off, to compare against
        result = run_ours(
            config if implementation == "ours" else {**config, "speed": {}, "gguf": None, "quantize": None}
        )
    result.pop("image").save(out_png)
    print("BENCH " + json.dumps(result))


# ------------------------------------------------------------------------------------------------ the command
def _spawn(config_path: Path, implementation: str, out_png: Path) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "unoflux.bench", str(config_path), implementation, str(out_png)],
        capture_output=True,
        text=True,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("BENCH ")]
    if done.returncode != 0 or not lines:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise UnofluxError(f"the {implementation} benchmark worker failed: {last}")
    return json.loads(lines[-1].removeprefix("BENCH "))


def max_pixel_difference(a: Path, b: Path) -> int:
    import numpy as np
    from PIL import Image

    x, y = (np.asarray(Image.open(p).convert("RGB"), dtype=np.int16) for p in (a, b))
    return 10**6 if x.shape != y.shape else int(np.abs(x - y).max())


def run_bench(
    settings: dict,
    rounds: int = 1,
    reference: str | None = None,
    workdir: str | None = None,
    against_exact: bool = False,
) -> dict:
    """Write the random weights, run the workers (alternating when there is more than one) -> the report.
    ``against_exact``: ours also without ``settings["speed"]``'s switches and GGUF weights (against exact mode)."""
    from . import __version__

    with tempfile.TemporaryDirectory(prefix="unoflux-bench-", dir=workdir) as tmp:
        root = Path(tmp)
        model = write_random_model(settings["size"], root / "weights", settings.get("gguf"))
        config = {**settings, "paths": model["paths"], "reference": reference}
        config_path = root / "config.json"
        config_path.write_text(json.dumps(config))
        implementations = ["ours"] + (["exact"] if against_exact else []) + (["reference"] if reference else [])
        results: dict[str, list[dict]] = {name: [] for name in implementations}
        for r in range(rounds):
            for implementation in implementations:
                results[implementation].append(_spawn(config_path, implementation, root / f"{implementation}{r}.png"))
        matches = max_pixel_difference(root / "ours0.png", root / "reference0.png") if reference else None
        exact_psnr = psnr(root / "ours0.png", root / "exact0.png") if against_exact else None
    report = {"settings": settings, "model": {k: v for k, v in model.items() if k != "paths"},
              "unoflux_version": __version__, "rounds": rounds}  # fmt: skip
    for implementation in implementations:
        runs = results[implementation]
        step = statistics.median(r["step_s"] for r in runs)
        report[implementation] = {
            "step_s": step,
            "end_to_end_s": statistics.median(r["end_to_end_s"] for r in runs),
            "peak_memory_bytes": int(statistics.median(r["peak_memory_bytes"] for r in runs)),
            "peak_memory_kind": runs[0]["peak_memory_kind"],
            "flops_per_step": runs[0]["flops_per_step"],
            # (a full step's FLOP; with fast mode's switches most steps do less, so no rate is claimed)
            "tflops_per_s": None
            if implementation == "ours" and settings.get("speed")
            else runs[0]["flops_per_step"] / step / 1e12,
            "per_round": [{k: r[k] for k in ("step_s", "end_to_end_s", "peak_memory_bytes")} for r in runs],
        }
    report["ours"]["tokens"] = results["ours"][0]["tokens"]
    tflops = report["ours"]["tflops_per_s"]
    report["ours"]["mfu"] = None if tflops is None else mfu(tflops, settings["device"], settings["dtype"])
    if reference:
        ours, ref = report["ours"], report["reference"]
        report["ratios"] = {
            "step_time": ours["step_s"] / ref["step_s"],
            "end_to_end": ours["end_to_end_s"] / ref["end_to_end_s"],
            "peak_memory": ours["peak_memory_bytes"] / ref["peak_memory_bytes"],
        }
        report["images"] = {"max_pixel_difference": matches, "equal_within_1_255": matches <= 1}
    if against_exact:
        ours, exact = report["ours"], report["exact"]
        report["against_exact"] = {
            "speedup_end_to_end": exact["end_to_end_s"] / ours["end_to_end_s"],
            "speedup_step": exact["step_s"] / ours["step_s"],
            "peak_memory": ours["peak_memory_bytes"] / exact["peak_memory_bytes"],
            "psnr_db": exact_psnr,
        }
    return report


def psnr(a: Path, b: Path) -> float:
    """Pixel PSNR of two 8-bit images in dB (inf when equal)."""
    import numpy as np
    from PIL import Image

    x, y = (np.asarray(Image.open(p).convert("RGB"), dtype=np.float64) / 255 for p in (a, b))
    mse = float(np.mean((x - y) ** 2))
    return float("inf") if mse == 0 else 10 * float(np.log10(1 / mse))


def mfu(tflops_per_s: float, device: str, dtype: str) -> float | None:
    """Achieved / peak TFLOP/s where the device's bf16 peak is known (CUDA, bf16 or fp16), else None."""
    import torch

    if torch.device(device).type != "cuda" or dtype not in ("bf16", "fp16"):
        return None
    name = torch.cuda.get_device_name(torch.device(device))
    peak = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    return None if peak is None else tflops_per_s / peak


def print_report(report: dict) -> None:
    s, m = report["settings"], report["model"]
    print(
        f"unoflux bench: size {m['size']} ({m['parameters'] / 1e6:.1f} M parameters, LoRA rank {m['lora_rank']}), "
        f"{s['width']}x{s['height']} + {s['refs']} reference(s) at {s['ref_size']} px, {s['steps']} steps, "
        f"{s['dtype']} on {s['device']}, {s['runs']} timed run(s) after {s['warmup']} warm-up, {report['rounds']} round(s)"
        + (", ours with the LoRA fused" if s["fuse_lora"] else "")
        + (", ours compiled" if s.get("compile") else "")
        + (f", ours with {s['speed']}" if s.get("speed") else "")
        + (f", ours from a {s['gguf']} GGUF file" if s.get("gguf") else "")
        + (f", ours quantized to {s['quantize']} (torchao)" if s.get("quantize") else "")
    )
    tokens = report["ours"]["tokens"]
    print(f"tokens per step: {tokens['image+references']} image + references, {tokens['text']} text")
    print(f"{'':<12} {'step (median)':>14} {'end to end':>11} {'peak memory':>12} {'GFLOP/step':>11} {'TFLOP/s':>8}")
    for name in ("ours", "exact", "reference"):
        if name in report:
            r = report[name]
            print(
                f"{name:<12} {r['step_s'] * 1000:>11.1f} ms {r['end_to_end_s']:>9.2f} s "
                f"{r['peak_memory_bytes'] / 2**30:>9.2f} GiB {r['flops_per_step'] / 1e9:>11.1f} "
                + ("       -" if r["tflops_per_s"] is None else f"{r['tflops_per_s']:>8.3f}")
            )
    print(f"peak memory: {report['ours']['peak_memory_kind']}")
    if report["ours"].get("mfu") is not None:
        print(f"MFU (ours): {report['ours']['mfu'] * 100:.1f}% of the device's bf16 peak")
    if "ratios" in report:
        r, images = report["ratios"], report["images"]
        print(
            f"ours / reference: step time {r['step_time']:.2f}x, end to end {r['end_to_end']:.2f}x, "
            f"peak memory {r['peak_memory']:.2f}x; images: max pixel difference {images['max_pixel_difference']} "
            f"({'equal' if images['equal_within_1_255'] else 'NOT equal'} within 1/255)"
        )
    if "against_exact" in report:
        r = report["against_exact"]
        print(
            f"ours / exact mode: {r['speedup_end_to_end']:.2f}x faster end to end ({r['speedup_step']:.2f}x per "
            f"step), peak memory {r['peak_memory']:.2f}x; image PSNR to exact mode {r['psnr_db']:.1f} dB"
        )


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bench",
        help="seconds per step, peak memory and FLOP of a generation setting; --against-reference: UNO's own code",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--size", choices=tuple(SIZES), default="mid", help="random weights to build (default mid)")
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--refs", type=int, default=1, help="reference images (default 1)")
    p.add_argument("--ref-size", type=int, default=512, help="reference side in px (default 512)")
    p.add_argument("--steps", type=int, default=4, help="denoising steps per image (default 4)")
    p.add_argument("--runs", type=int, default=2, help="timed images per worker (default 2)")
    p.add_argument("--warmup", type=int, default=1, help="untimed images first (default 1)")
    p.add_argument("--rounds", type=int, default=1, help="workers per implementation, alternating (default 1)")
    p.add_argument("--guidance", type=float, default=4.0)
    p.add_argument("--seed", type=int, default=3407)
    p.add_argument("--prompt", default="a red clock on a wooden table")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32")
    p.add_argument("--threads", type=int, help="torch threads per worker (default: torch's)")
    p.add_argument(
        "--fuse-lora",
        action="store_true",
        help="ours with the LoRA fused into the weights (the same image to rounding)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="ours with its repeated blocks compiled (torch.compile; compiled in the warm-up, which is not timed)",
    )
    p.add_argument(
        "--against-reference",
        metavar="UNO_CHECKOUT",
        help="a local bytedance/UNO checkout: its pipeline on the same weights (needs einops), fp32 CPU",
    )
    p.add_argument(
        "--fast",
        action="store_true",
        help="ours in fast mode (the preset's switches, at --steps: the steps are yours here; the switches below win)",
    )
    p.add_argument("--step-cache", type=float, metavar="T", help="ours with this First Block Cache threshold")
    p.add_argument("--taylorseer", type=int, metavar="N", help="ours with TaylorSeer: one full step in every N")
    p.add_argument("--magcache", type=float, metavar="T", help="ours with MagCache at this error threshold")
    p.add_argument("--reference-refresh", type=int, metavar="N", help="ours reusing reference features (N steps)")
    p.add_argument(
        "--gguf",
        metavar="TYPE",
        help="ours from the transformer written as a GGUF file of this quantization (Q8_0, Q4_K, Q5_K, Q6_K, ...)",
    )
    p.add_argument("--quantize", choices=("int8", "fp8"), help="ours with the transformer quantized by torchao")
    p.add_argument(
        "--against-exact",
        action="store_true",
        help="ours in exact mode too, alternating: the speed-up and memory of the switches above (or --gguf, "
        "--quantize) and their image PSNR",
    )
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the report as JSON")
    p.add_argument("--workdir", help="where the random weights are written (default: the system's temp folder)")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    from .cli import check_device

    for name in ("width", "height", "ref_size", "steps", "runs", "rounds"):
        if getattr(args, name) < 1:
            raise UnofluxError(f"--{name.replace('_', '-')} {getattr(args, name)} must be at least 1")
    if args.refs < 0 or args.warmup < 0:
        raise UnofluxError("--refs and --warmup must be 0 or more")
    if args.compile and args.warmup < 1:
        raise UnofluxError("--compile needs --warmup 1 or more: the blocks compile during the first image")
    if args.against_reference and not (Path(args.against_reference) / "uno" / "flux" / "pipeline.py").is_file():
        raise UnofluxError(
            f"--against-reference {args.against_reference!r} is not a bytedance/UNO checkout (no uno/flux/pipeline.py)"
        )
    if args.against_reference and (args.device != "cpu" or args.dtype != "fp32"):
        raise UnofluxError(
            "--against-reference runs UNO's code in float32 on the CPU only; use --device cpu --dtype fp32"
        )
    check_device(args.device)
    speed = {
        k: getattr(args, k)
        for k in ("fast", "step_cache", "taylorseer", "magcache", "reference_refresh")
        if getattr(args, k) is not None and getattr(args, k) is not False  # (0 == False: a refresh of 0 counts)
    }
    SamplingOptions(**speed).validate()
    if args.against_exact and not (speed or args.gguf or args.quantize):
        raise UnofluxError(
            "--against-exact compares with exact mode; give --fast, a speed switch, --gguf or --quantize"
        )
    if args.quantize and args.gguf:
        raise UnofluxError(f"--gguf {args.gguf} is already quantized; give --gguf or --quantize, not both")
    if args.quantize:
        from .checkpoints.quantize import check_quantization

        check_quantization(args.quantize, args.device)
    if args.gguf:
        import gguf

        if args.gguf not in gguf.GGMLQuantizationType.__members__:
            raise UnofluxError(f"--gguf {args.gguf!r} is not a GGUF quantization type, e.g. Q8_0, Q4_K, Q6_K")
    settings = {k: getattr(args, k) for k in ("size", "width", "height", "refs", "ref_size", "steps", "runs",
                                               "warmup", "guidance", "seed", "prompt", "device", "dtype", "threads",
                                               "fuse_lora", "compile", "gguf", "quantize")} | {"speed": speed}  # fmt: skip
    report = run_bench(settings, args.rounds, args.against_reference, args.workdir, args.against_exact)
    print_report(report)
    if args.json:
        from .images import save_json

        save_json(report, args.json)
        print(f"report: {args.json}")
    return 0


if __name__ == "__main__":  # a worker: python -m unoflux.bench CONFIG.json ours|exact|reference OUT.png
    worker(*sys.argv[1:4])
