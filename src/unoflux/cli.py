"""``unoflux`` command line: one typed function per subcommand, all thin shells over the Python API."""

from __future__ import annotations

import argparse
import functools
import importlib
import importlib.util
import os
import re
import sys
from pathlib import Path

from .devices import check_device  # noqa: F401  (re-exported: the app's and evaluate's CLIs)
from .errors import UnofluxError
from .options import POSITION_MODES, SCHEDULES  # noqa: F401  (re-exported: evaluate's CLI and the app use them)
from .references import IDENTITY, STYLE, SUBJECT, Reference


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "model (local files only; explicit flags win over FLUX_DEV, AE, T5, CLIP, LORA, PROJECTION_MODEL, SIGLIP_PATH)"
    )
    g.add_argument(
        "--model", metavar="DIR", help="a diffusers FLUX folder (model_index.json); default: the embedded model"
    )
    g.add_argument(
        "--flux",
        metavar="PATH",
        help="FLUX transformer: BFL flux1-dev.safetensors, a GGUF file (kept quantized) or a diffusers transformer/ folder",
    )
    g.add_argument("--ae", metavar="PATH", help="VAE: BFL ae.safetensors or a diffusers vae/ folder")
    g.add_argument("--t5", metavar="DIR", help="T5 encoder folder (transformers layout, tokenizer beside)")
    g.add_argument("--clip", metavar="DIR", help="CLIP-L text encoder folder (transformers layout, tokenizer beside)")
    g.add_argument(
        "--lora",
        metavar="PATH",
        help="UNO or USO LoRA: dit_lora.safetensors (XLabs layout) or a diffusers LoRA "
        "(replaces the LoRA a model folder ships, as the embedded model does)",
    )
    g.add_argument(
        "--uso-projector",
        metavar="PATH",
        help="USO's projector.safetensors: with --siglip, style references (--style) and method uso at 1024 px",
    )
    g.add_argument("--siglip", metavar="DIR", help="SigLIP folder for USO (google/siglip-so400m-patch14-384)")
    g.add_argument(
        "--dreamo",
        metavar="DIR",
        help="a folder with ByteDance/DreamO's files (dreamo.safetensors, dreamo_cfg_distill.safetensors, v1.1/...): "
        "method dreamo at 1024 px; or a DreamO training run's final/ folder",
    )
    g.add_argument("--dreamo-version", choices=("v1.1", "v1"), default="v1.1", help="DreamO's quality LoRAs (v1.1)")
    g.add_argument("--turbo", metavar="PATH", help="FLUX.1-Turbo-Alpha's LoRA file for DreamO: 12 steps by default")
    g.add_argument(
        "--fuse-lora", action="store_true", help="fuse the LoRAs into the weights (faster; DreamO's own choice)"
    )
    g.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the transformer's repeated blocks (about 1.4x faster per image after the first, which "
        "compiles for 30-90 s; nearly the same image)",
    )
    g.add_argument(
        "--face-detector",
        metavar="DIR",
        help="an object-detection model folder (transformers, a 'face' label) for DreamO's --id images: the face is "
        "cropped to 512 x 512 (no face: an error)",
    )
    g.add_argument(
        "--face-parser",
        metavar="DIR",
        help="a face-parsing model folder (transformers, CelebAMask-HQ labels) for DreamO's --id images: background, "
        "neck, clothes and hat painted white as DreamO does",
    )
    g.add_argument(
        "--background-remover",
        metavar="DIR",
        help="a segmentation model folder (transformers, with a 'background' label) for DreamO's subject images: "
        "the background painted white, as DreamO composites BEN2's foreground",
    )
    g.add_argument(
        "--base-only",
        action="store_true",
        help="leave out the LoRA the model folder ships: its text-to-image base alone",
    )
    g = p.add_argument_group("device and memory")
    g.add_argument("--device", help="cuda, cuda:1, cpu, ... (default: cuda if available)")
    g.add_argument(
        "--dtype", choices=("bf16", "fp16", "fp32"), help="compute dtype (default: bf16 on GPU, fp32 on CPU)"
    )
    g.add_argument(
        "--offload",
        choices=("none", "model", "sequential", "group"),
        default="none",
        help="keep models on the CPU and move each (model) or each layer (sequential; group: the same with the "
        "copies overlapping compute on a CUDA stream) to the GPU while it runs",
    )
    g.add_argument(
        "--vae-tiling",
        action="store_true",
        help="encode and decode images in overlapping tiles, one image at a time: less memory for large outputs "
        "(slightly changes the image)",
    )
    g.add_argument("--weights-dtype", choices=("fp8",), help="store transformer weights as float8, compute in --dtype")
    g.add_argument(
        "--quantize",
        choices=("int8", "fp8"),
        help="quantize the transformer with torchao: int8 weights (any device, about half bf16's memory) or fp8 "
        "weights and matmuls (Ada/Hopper GPUs); slightly changes the image",
    )


def default_image_size(pipe) -> int:
    """The model's native size (``unoflux.json`` ``image_size``), FLUX's 512 otherwise."""
    from .pipeline import model_defaults_of

    return int(model_defaults_of(pipe)["width"])


def model_paths(args: argparse.Namespace):
    from .checkpoints import ModelPaths

    return ModelPaths(
        model=args.model,
        flux=args.flux,
        ae=args.ae,
        t5=args.t5,
        clip=args.clip,
        lora=args.lora,
        projector=getattr(args, "uso_projector", None),
        siglip=getattr(args, "siglip", None),
        dreamo=getattr(args, "dreamo", None),
        turbo=getattr(args, "turbo", None),
        face_detector=getattr(args, "face_detector", None),
        face_parser=getattr(args, "face_parser", None),
        background_remover=getattr(args, "background_remover", None),
    )


# model flags by what they name (cli.add_model_args): a weights file, a folder, or either (BFL file / diffusers folder)
_FILE_FLAGS = ("lora", "uso_projector", "turbo")
_FOLDER_FLAGS = ("model", "t5", "clip", "siglip", "dreamo", "face_detector", "face_parser", "background_remover")
_FILE_OR_FOLDER_FLAGS = ("flux", "ae")


def check_model_files(args: argparse.Namespace) -> None:
    """Every model path given as a flag exists and is a file or a folder as its flag needs: checked without torch,
    not after minutes of loading the models before it. What the files hold is checked as each one loads."""
    for name in (*_FILE_OR_FOLDER_FLAGS, *_FILE_FLAGS, *_FOLDER_FLAGS):
        value = getattr(args, name, None)
        if value is None:
            continue
        flag, path = "--" + name.replace("_", "-"), Path(value)
        if not path.exists():
            raise UnofluxError(f"{flag} {value!r} does not exist")
        if name in _FOLDER_FLAGS and not path.is_dir():
            raise UnofluxError(f"{flag} {value!r} is a file; it must be a folder")
        if name in _FILE_FLAGS and path.is_dir():
            raise UnofluxError(f"{flag} {value!r} is a folder; it must be a weights file (.safetensors)")


def load_pipeline_from_args(args: argparse.Namespace, device: str | None = None):
    """The pipeline the model flags describe, and a record of them for output metadata; a device this machine
    lacks, or a model path that does not exist, is refused before anything loads."""
    check_model_files(args)
    check_device(device or args.device)
    import diffusers
    import transformers

    from .checkpoints import load_pipeline

    transformers.utils.logging.disable_progress_bar()  # weight-loading bars; our own bars stay
    diffusers.utils.logging.disable_progress_bar()
    paths = model_paths(args)
    base_only = getattr(args, "base_only", False)  # only commands with model flags have it
    pipe = load_pipeline(
        paths,
        device=device or args.device,
        dtype=args.dtype,
        offload=args.offload,
        weights_dtype=args.weights_dtype,
        model_lora=not base_only,
        dreamo_version=getattr(args, "dreamo_version", "v1.1"),
        fuse_lora=getattr(args, "fuse_lora", False),
        compile_blocks=getattr(args, "compile", False),
        quantize=getattr(args, "quantize", None),
        vae_tiling=getattr(args, "vae_tiling", False),
    )
    model = {k: str(Path(v).resolve()) for k, v in vars(paths.with_environment()).items() if v} or {"model": "embedded"}
    if base_only:
        model["base_only"] = True
    if paths.dreamo:
        model["dreamo_version"] = args.dreamo_version
    if getattr(args, "fuse_lora", False):
        model["fuse_lora"] = True
    if getattr(args, "compile", False):
        model["compile"] = True
    if getattr(args, "quantize", None):
        model["quantize"] = args.quantize
    if getattr(args, "vae_tiling", False):
        model["vae_tiling"] = True
    model.update(dtype=str(pipe.transformer.dtype).removeprefix("torch."), weights_dtype=args.weights_dtype)
    return pipe, model


def _add_generation_args(p: argparse.ArgumentParser) -> None:
    from .options import add_option_arguments

    g = p.add_argument_group("generation")
    g.add_argument("--prompt", help="what to generate")
    g.add_argument(
        "--ref", action="append", default=[], metavar="IMAGE", help="a subject reference image (repeat for several)"
    )
    # one list for every role, so the command line's order is kept (DreamO numbers its references by it)
    for role, help in (
        (STYLE, "a style reference image (methods uso and dreamo; repeat for several)"),
        (IDENTITY, "a face whose identity to keep (method dreamo: a photo with --face-detector, else its aligned face "
                   "crop; repeat for several)"),
    ):  # fmt: skip
        g.add_argument(
            f"--{role}", action="append", dest="ref", type=functools.partial(Reference, role=role), metavar="IMAGE",
            help=help,
        )  # fmt: skip
    add_option_arguments(g)
    g.add_argument(
        "--noise-device",
        default="cpu",
        metavar="DEVICE",
        help="where the initial noise is drawn: cpu (default; a seed gives the same image on any machine) or cuda "
        "(the noise UNO's and USO's own code draw on a GPU)",
    )
    g.add_argument("--out", help="a .png file, or a folder (default outputs/; batch: outputs/batch)")
    g.add_argument(
        "--save-preprocessed",
        metavar="DIR",
        help="also write each reference as the model saw it (after the method's resize and crop): ref{k}_{role}.png",
    )
    g.add_argument(
        "--batch",
        metavar="FILE.json",
        help="UNO eval JSON: [{prompt, image_paths}, ...]; resumable, shards under accelerate launch",
    )
    g.add_argument(
        "--dry-run",
        action="store_true",
        help="print the peak memory this generation is expected to need (from the files' headers and a "
        "shapes-only run), load nothing and exit",
    )


def resolved_reference(value: str | Reference) -> str | Reference:
    """A reference with an absolute path; a subject stays a plain path (UNO's form)."""
    reference = value if isinstance(value, Reference) else Reference(value)
    path = str(Path(reference.image).resolve())
    return path if reference.role == SUBJECT else Reference(path, reference.role)


def batch_share(device: str | None):
    """(device, process index, process count, accelerate state or None) of this process's share of a batch: under
    ``accelerate launch`` / ``torchrun`` one process per device, else this process alone."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device, 0, 1, None
    from accelerate import PartialState

    from .checkpoints.loading import default_device

    # without cpu=True accelerate only forms a process group on accelerators (gloo on CPU otherwise)
    state = PartialState(cpu=(device or default_device()) == "cpu")
    return device or str(state.device), state.process_index, state.num_processes, state


def dry_run_estimate(args: argparse.Namespace, request):
    """--dry-run: the expected peak of one call of ``request`` with the model flags (unoflux.memory)."""
    from PIL import Image

    from .checkpoints.loading import check_offload, default_device, model_folder, sampling_defaults_from
    from .checkpoints.specs import model_defaults
    from .conditioning import default_reference_long_side, output_size
    from .memory import estimate
    from .references import as_references

    device = args.device or default_device()
    check_offload(args.offload, device)  # as loading would: no estimate for a setting that cannot run
    paths = model_paths(args).with_environment()
    declared = model_defaults(model_folder(paths))
    defaults = sampling_defaults_from(declared)
    references = as_references(request.references)
    long_side = request.reference_long_side
    if long_side is None:
        sides = declared.get("reference_long_side")
        several = len(references) > 1
        long_side = (
            int(sides["several" if several else "one"]) if sides else default_reference_long_side(len(references))
        )
    reference_sides = []
    for reference in references:
        with Image.open(reference.image) as image:
            scale = long_side / max(image.size)
        reference_sides.append(output_size(round(image.size[0] * scale), round(image.size[1] * scale)))
    width, height = output_size(request.width or defaults["width"], request.height or defaults["height"])
    true_cfg = request.true_cfg if request.true_cfg is not None else defaults["true_cfg"]
    return estimate(
        paths,
        device=device,
        dtype=args.dtype,
        width=width,
        height=height,
        reference_sides=reference_sides,
        images=request.num_images,
        guidance_passes=2 if true_cfg > 1 else 1,
        offload=args.offload,
        weights_dtype=args.weights_dtype,
        quantize=args.quantize,
        vae_tiling=args.vae_tiling,
    )


def cmd_generate(args: argparse.Namespace) -> int:
    """Generate images from a prompt and reference images (or a batch file)."""
    from .generation import check_output, check_output_folder, read_batch
    from .options import GenerationRequest, options_from_args

    if (args.prompt is None) == (args.batch is None):
        raise UnofluxError("give either --prompt or --batch FILE.json")
    request = options_from_args(
        args,
        GenerationRequest,
        prompt="(from the batch file)" if args.batch else args.prompt,
        references=[resolved_reference(r) for r in args.ref],
    )
    request.validate()  # bad input fails here, before minutes of model loading (and before torch is imported)
    if not re.fullmatch(r"cpu|cuda(:\d+)?", args.noise_device):
        raise UnofluxError(f"noise device {args.noise_device!r} is not one of: cpu, cuda, cuda:N")
    if request.method is not None:  # (None: the model's, known once it is loaded)
        from .methods import get_method
        from .references import as_references

        get_method(request.method).check(as_references(request.references))
    items = read_batch(args.batch, method=request.method) if args.batch else None
    # an output that cannot be written fails now, not after the model has loaded and the images are made
    if items is None:
        check_output(args.out)
    else:
        check_output_folder(args.out or "outputs/batch")
    check_model_files(args)
    # The checks above import no torch (except a --method's), so bad input is reported in a moment; the device
    # checks import it, still minutes before the model loads.
    check_device(args.device)
    check_device(args.noise_device, "noise device", "--noise-device")

    if args.dry_run:
        if items is not None:
            raise UnofluxError("--dry-run sizes one --prompt call; give --prompt with its references, not --batch")
        print(dry_run_estimate(args, request).describe())
        return 0

    device, process_index, num_processes, _ = (
        batch_share(args.device) if items is not None else (args.device, 0, 1, None)
    )
    pipe, model = load_pipeline_from_args(args, device=device)

    if items is not None:
        from .generation import run_batch

        out = Path(args.out or "outputs/batch")
        made, skipped = run_batch(
            pipe,
            items,
            request,
            out,
            model,
            process_index,
            num_processes,
            noise_device=args.noise_device,
            save_preprocessed=args.save_preprocessed,
        )
        print(f"{made} images written to {out}/ ({skipped} already there)")
        return 0

    from .generation import generate_to_files

    kept = dict(noise_device=args.noise_device, save_preprocessed=args.save_preprocessed)
    for path in generate_to_files(pipe, request, args.out, model, **kept):
        print(path)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Generate a few held-out prompts of the synthetic world (the embedded model by default) and print
    each image's path with the exact checker's verdict."""
    from .demo import run_demo

    pipe, _ = load_pipeline_from_args(args)
    pipe.set_progress_bar_config(disable=True)
    run_demo(pipe, Path(args.out), size=default_image_size(pipe))
    return 0


class ArgumentParser(argparse.ArgumentParser):
    """argparse with its errors on one line, as ours are ("unoflux generate: error: argument --width: invalid int
    value: 'abc'"), and where to read more instead of the whole usage block. Subcommands' parsers are of this class
    too (argparse builds them from the parent's)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} -h)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="unoflux", description="Subject-driven image generation (UNO) on FLUX-family transformers."
    )
    parser.add_argument("--version", action="version", version=f"unoflux {__import__('unoflux').__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser(
        "generate", help="generate images from a prompt and 0..N reference images", description=cmd_generate.__doc__
    )
    _add_generation_args(p)
    add_model_args(p)
    p.set_defaults(func=cmd_generate)
    p = sub.add_parser(
        "demo",
        help="held-out prompts through the model, with the checker's verdicts (make run)",
        description=cmd_demo.__doc__,
    )
    p.add_argument("--out", default="outputs/demo", help="folder for the images (default outputs/demo)")
    add_model_args(p)
    p.set_defaults(func=cmd_demo)
    from .bench import register as register_bench

    register_bench(sub)
    for module in ("world", "family", "train", "synth", "evaluate", "app"):  # each subpackage adds its own commands
        if importlib.util.find_spec(f"unoflux.{module}") and importlib.util.find_spec(f"unoflux.{module}.cli"):
            importlib.import_module(f"unoflux.{module}.cli").register(sub)
    return parser


def _quiet_libraries() -> None:
    """Library chatter (loading bars, dtype notes) hides our own messages; keep their errors only."""
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub: everything is local
    warnings.filterwarnings("ignore", category=FutureWarning)
    # one line per warning ("unoflux: warning: the prompt has 90 T5 tokens; ..."), not a file, line and source line
    warnings.showwarning = lambda message, category, *args, **kwargs: print(
        f"unoflux: warning: {message}", file=sys.stderr
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    try:
        return args.func(args) or 0
    except UnofluxError as err:
        print(f"unoflux: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("unoflux: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
