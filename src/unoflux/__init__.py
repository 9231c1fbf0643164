"""unoflux: universal image customization (UNO) on FLUX-family diffusion transformers.

from unoflux import load_pipeline, ModelPaths
pipe = load_pipeline(ModelPaths(flux="flux1-dev.safetensors", ae="ae.safetensors",
                                t5="t5_dir", clip="clip_dir", lora="dit_lora.safetensors"))
image = pipe("a clock on the beach", ["clock.png"], seed=0).images[0]
"""

__version__ = "0.1.0"

# Exported names resolve lazily so that `unoflux -h` and the torch-free parts (e.g. unoflux.world)
# do not pay for importing diffusers.
_EXPORTS = {
    "ModelPaths": "unoflux.checkpoints",
    "load_pipeline": "unoflux.checkpoints",
    "UnoFluxPipeline": "unoflux.pipeline",
    "UnoOutput": "unoflux.pipeline",
    "UnofluxError": "unoflux.errors",
    "SamplingOptions": "unoflux.options",
    "GenerationRequest": "unoflux.options",
}
__all__ = list(_EXPORTS)


def _quiet_torchao_import() -> None:
    """With torchao installed (``--quantize``), diffusers imports it with every model load, and a CPU-only torch
    then gets three lines of noise about GPU kernels and deprecations nobody asked about; drop just those."""
    import logging
    import sys

    def not_cpu_kernel_noise(record: logging.LogRecord) -> bool:
        torch = sys.modules.get("torch")
        cpu_only = torch is not None and not torch.cuda.is_available()
        message = record.getMessage()
        return not cpu_only or not message.startswith(("Failed to load", "Unable to import `torchao` Tensor"))

    def not_enum_deprecation(record: logging.LogRecord) -> bool:
        return "is an Enum subclass and is now natively supported" not in record.getMessage()

    logging.getLogger("torchao").addFilter(not_cpu_kernel_noise)
    logging.getLogger("diffusers.quantizers.torchao.torchao_quantizer").addFilter(not_cpu_kernel_noise)
    logging.getLogger("torch.utils._pytree").addFilter(not_enum_deprecation)


_quiet_torchao_import()


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'unoflux' has no attribute {name!r}")
