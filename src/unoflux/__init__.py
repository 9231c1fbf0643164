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


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'unoflux' has no attribute {name!r}")
